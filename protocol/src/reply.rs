//! [`Reply`]: a validated view of one message from the daemon, either a
//! reply to a request or an unsolicited notification.
//!
//! [`Reply::parse`] applies the header rules of the kernel's
//! `fuse_dev_do_write`, in its order. A message that fails them is one the
//! kernel would refuse with EINVAL: for a reply, the request then stays
//! pending forever, so a relay should answer it itself (with EIO, say;
//! [`unique_of`] recovers the id). Body sizes depend on the request, so they
//! are checked separately with [`expected_reply_size`].

use core::mem::size_of;

use zerocopy::{ConvertError, FromBytes};

use crate::abi::*;
use crate::error::ParseError;
use crate::ids::{Unique, FUSE_INT_REQ_BIT};
use crate::opcode::{NotifyCode, Opcode};

/// Size of [`OutHeader`].
pub const OUT_HEADER_SIZE: usize = size_of::<OutHeader>();

/// The most negative error the kernel accepts: errors must be in
/// `-511..=0` (`oh.error <= -512 || oh.error > 0` is EINVAL).
pub const MIN_ERROR: i32 = -511;

/// What a [`Reply`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// An answer to the request with this unique; `error` 0 or a negated
    /// errno.
    Reply,
    /// An answer to an INTERRUPT (unique has [`FUSE_INT_REQ_BIT`]): a bare
    /// header, normally EAGAIN ("interrupt again later") or ENOSYS
    /// ("interrupts unsupported").
    InterruptReply,
    /// A notification (unique 0); the code came in `error`.
    Notify(NotifyCode),
}

/// A message from the daemon, validated at the header level.
///
/// # Contract
/// Once [`parse`](Self::parse) returns `Ok`, no accessor panics, `len`
/// equals the bytes received, a reply's error is in `-511..=0`, an error
/// reply and an interrupt reply have no body, and a notification's code is
/// positive. The view borrows the buffer.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    bytes: &'a [u8],
    header: &'a OutHeader,
    body: &'a [u8],
    kind: ReplyKind,
}

impl<'a> Reply<'a> {
    /// Validates one whole message as received from the daemon.
    ///
    /// # Errors
    /// In the kernel's order:
    /// - [`ParseError::ShortHeader`]: fewer than 16 bytes.
    /// - [`ParseError::LengthMismatch`]: `len` is not `buf.len()`.
    /// - [`ParseError::Misaligned`]: `buf` is not 8-byte aligned.
    /// - [`ParseError::BadNotifyCode`]: unique 0 with a code ≤ 0.
    /// - [`ParseError::BadError`]: error positive or ≤ -512.
    /// - [`ParseError::InterruptReplyWithBody`]: an interrupt reply longer
    ///   than 16 bytes.
    /// - [`ParseError::ErrorWithBody`]: error ≠ 0 and a body (the kernel
    ///   completes the request with EIO).
    pub fn parse(buf: &'a [u8]) -> Result<Reply<'a>, ParseError> {
        // Read `len` by copy first, so a misaligned buffer still gets the
        // length checks the kernel does before anything else.
        let Ok((copy, _)) = OutHeader::read_from_prefix(buf) else {
            return Err(ParseError::ShortHeader {
                got: buf.len(),
                need: OUT_HEADER_SIZE,
            });
        };
        if copy.len as usize != buf.len() {
            return Err(ParseError::LengthMismatch {
                header: copy.len,
                received: buf.len(),
            });
        }
        let (header, body) = OutHeader::ref_from_prefix(buf).map_err(|e| match e {
            ConvertError::Alignment(_) => ParseError::Misaligned(buf.as_ptr() as usize % 8),
            ConvertError::Size(_) => ParseError::ShortHeader {
                got: buf.len(),
                need: OUT_HEADER_SIZE,
            },
            ConvertError::Validity(never) => match never {},
        })?;
        let kind = if header.unique == 0 {
            if header.error <= 0 {
                return Err(ParseError::BadNotifyCode(header.error));
            }
            ReplyKind::Notify(NotifyCode::from(header.error))
        } else {
            if header.error > 0 || header.error < MIN_ERROR {
                return Err(ParseError::BadError(header.error));
            }
            if header.unique & FUSE_INT_REQ_BIT != 0 {
                if !body.is_empty() {
                    return Err(ParseError::InterruptReplyWithBody(buf.len()));
                }
                ReplyKind::InterruptReply
            } else {
                if header.error != 0 && !body.is_empty() {
                    return Err(ParseError::ErrorWithBody {
                        error: header.error,
                        len: buf.len(),
                    });
                }
                ReplyKind::Reply
            }
        };
        Ok(Reply {
            bytes: buf,
            header,
            body,
            kind,
        })
    }

    /// The header.
    pub fn header(&self) -> &'a OutHeader {
        self.header
    }

    /// Reply, interrupt reply or notification.
    pub fn kind(&self) -> ReplyKind {
        self.kind
    }

    /// The unique answered (0 for a notification).
    pub fn unique(&self) -> Unique {
        Unique(self.header.unique)
    }

    /// The `error` field: 0 or a negated errno for a reply, the code for a
    /// notification.
    pub fn error(&self) -> i32 {
        self.header.error
    }

    /// The body after the header: empty for error and interrupt replies.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The whole message, for forwarding.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Bytes in the message (equal to `header().len`). Never 0.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether this answers an INTERRUPT (unique has [`FUSE_INT_REQ_BIT`]),
    /// e.g. with EAGAIN; legal, and not an answer to the interrupted request.
    pub fn is_interrupt_reply(&self) -> bool {
        self.kind == ReplyKind::InterruptReply
    }

    /// Whether this is a notification (unique 0).
    pub fn is_notification(&self) -> bool {
        matches!(self.kind, ReplyKind::Notify(_))
    }

    /// The notification code, for a notification.
    pub fn notify_code(&self) -> Option<NotifyCode> {
        match self.kind {
            ReplyKind::Notify(code) => Some(code),
            _ => None,
        }
    }
}

/// The unique of a message from the daemon that may have failed
/// [`Reply::parse`], so the request it names can be answered anyway.
///
/// `None` below 16 bytes, or when the unique is 0 (a notification names no
/// request). The value is only as trustworthy as the message; check it
/// against the requests in flight.
pub fn unique_of(buf: &[u8]) -> Option<Unique> {
    let (h, _) = OutHeader::read_from_prefix(buf).ok()?;
    (h.unique != 0).then_some(Unique(h.unique))
}

/// The body size the kernel accepts in a successful reply (error 0) to an
/// opcode; an error reply always has no body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplySize {
    /// Exactly this many bytes (the kernel's fixed `out_args`).
    Exact(usize),
    /// Up to this many bytes (the kernel's `out_argvar`).
    AtMost(usize),
    /// Bounded only by the request (READ's `size`, GETXATTR's `size` ...);
    /// the caller checks against the request if it wants to.
    Any,
    /// The kernel expects no reply at all (FORGET, BATCH_FORGET,
    /// NOTIFY_REPLY, INTERRUPT other than the EAGAIN/ENOSYS header).
    None,
}

impl ReplySize {
    /// Whether a body of `len` bytes fits.
    pub fn admits(self, len: usize) -> bool {
        match self {
            ReplySize::Exact(n) => len == n,
            ReplySize::AtMost(n) => len <= n,
            ReplySize::Any => true,
            ReplySize::None => false,
        }
    }

    /// [`admits`](Self::admits) as a `Result`, for a reply to `opcode`.
    ///
    /// # Errors
    /// [`ParseError::ShortBody`] or [`ParseError::LongBody`]; the kernel
    /// would complete the request with EIO. For [`ReplySize::None`], a
    /// `LongBody` with `max` 0.
    pub fn check(self, opcode: Opcode, len: usize) -> Result<(), ParseError> {
        let opcode = u32::from(opcode);
        match self {
            ReplySize::Exact(n) if len < n => Err(ParseError::ShortBody {
                opcode,
                need: n,
                got: len,
            }),
            ReplySize::Exact(n) | ReplySize::AtMost(n) if len > n => Err(ParseError::LongBody {
                opcode,
                max: n,
                got: len,
            }),
            ReplySize::None => Err(ParseError::LongBody {
                opcode,
                max: 0,
                got: len,
            }),
            _ => Ok(()),
        }
    }
}

/// The body size of a successful reply to `op` at negotiated minor `minor`,
/// as the kernel's body-level check (`copy_out_args`) applies it.
pub fn expected_reply_size(op: Opcode, minor: u32) -> ReplySize {
    use ReplySize::{Any, AtMost, Exact};
    let entry = if minor < 9 {
        FUSE_COMPAT_ENTRY_OUT_SIZE
    } else {
        size_of::<EntryOut>()
    };
    let attr = if minor < 9 {
        FUSE_COMPAT_ATTR_OUT_SIZE
    } else {
        size_of::<AttrOut>()
    };
    match op {
        Opcode::Lookup | Opcode::Mknod | Opcode::Mkdir | Opcode::Symlink | Opcode::Link => {
            Exact(entry)
        }
        Opcode::Getattr | Opcode::Setattr => Exact(attr),
        Opcode::Create | Opcode::TmpFile => Exact(entry + size_of::<OpenOut>()),
        Opcode::Open | Opcode::Opendir => Exact(size_of::<OpenOut>()),
        Opcode::Write | Opcode::CopyFileRange => Exact(size_of::<WriteOut>()),
        Opcode::CopyFileRange64 => Exact(size_of::<CopyFileRangeOut>()),
        Opcode::Statfs => Exact(if minor < 4 {
            FUSE_COMPAT_STATFS_SIZE
        } else {
            size_of::<StatfsOut>()
        }),
        Opcode::Getlk => Exact(size_of::<LkOut>()),
        Opcode::Bmap => Exact(size_of::<BmapOut>()),
        Opcode::Poll => Exact(size_of::<PollOut>()),
        Opcode::Lseek => Exact(size_of::<LseekOut>()),
        Opcode::Statx => Exact(size_of::<StatxOut>()),
        Opcode::Init => AtMost(size_of::<InitOut>()),
        Opcode::Readlink
        | Opcode::Read
        | Opcode::Readdir
        | Opcode::Readdirplus
        | Opcode::Getxattr
        | Opcode::Listxattr
        | Opcode::Ioctl
        | Opcode::CuseInit
        | Opcode::Unknown(_) => Any,
        Opcode::Unlink
        | Opcode::Rmdir
        | Opcode::Rename
        | Opcode::Rename2
        | Opcode::Release
        | Opcode::Releasedir
        | Opcode::Fsync
        | Opcode::Fsyncdir
        | Opcode::Flush
        | Opcode::Setxattr
        | Opcode::Removexattr
        | Opcode::Access
        | Opcode::Setlk
        | Opcode::Setlkw
        | Opcode::Fallocate
        | Opcode::Syncfs
        | Opcode::Destroy
        | Opcode::SetupMapping
        | Opcode::RemoveMapping => Exact(0),
        Opcode::Forget | Opcode::BatchForget | Opcode::NotifyReply | Opcode::Interrupt => {
            ReplySize::None
        }
    }
}

// Wire bytes below are little-endian, as on the machines these came from.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::flags::{FUSE_INIT_EXT, FUSE_MAX_PAGES};
    use crate::init::{clamp_init_out, InitOutView};

    #[repr(align(8))]
    struct AlignedData<T>(T);

    /// libfuse 3.14's INIT reply: 16-byte header + 64-byte `fuse_init_out`.
    const LIBFUSE_INIT_REPLY: AlignedData<[u8; 80]> = AlignedData([
        80, 0, 0, 0, 0, 0, 0, 0, // len, error
        2, 0, 0, 0, 0, 0, 0, 0, // unique
        7, 0, 0, 0, 38, 0, 0, 0, // major, minor
        0, 0, 2, 0, 0x29, 0xf0, 0x5f, 0x40, // max_readahead, flags
        12, 0, 9, 0, 0, 0, 0x10, 0, // max_background, congestion_threshold, max_write
        1, 0, 0, 0, 0, 1, 0, 0, // time_gran, max_pages 256, map_alignment
        0, 0, 0, 0, 0, 0, 0, 0, // flags2, max_stack_depth
        0, 0, 0, 0, 0, 0, 0, 0, // request_timeout, unused
        0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, //
    ]);

    fn out(len: u32, error: i32, unique: u64) -> AlignedData<[u8; 64]> {
        let mut b = AlignedData([0u8; 64]);
        b.0[0..4].copy_from_slice(&len.to_le_bytes());
        b.0[4..8].copy_from_slice(&error.to_le_bytes());
        b.0[8..16].copy_from_slice(&unique.to_le_bytes());
        b
    }

    #[test]
    fn libfuse_init_reply() {
        let r = Reply::parse(&LIBFUSE_INIT_REPLY.0).unwrap();
        assert_eq!(
            (r.kind(), r.unique(), r.error()),
            (ReplyKind::Reply, Unique(2), 0)
        );
        assert_eq!(r.body().len(), 64);
        assert!(expected_reply_size(Opcode::Init, 45).admits(64));
        let v = InitOutView::parse(r.body()).unwrap();
        assert_eq!((v.major(), v.minor()), (7, 38));
        assert_eq!(v.max_write(), 1 << 20);
        assert_eq!(v.max_pages(), 256);
        assert_eq!(v.time_gran(), 1);
        assert_ne!(v.flags() & FUSE_INIT_EXT, 0);
        assert_ne!(v.flags() & FUSE_MAX_PAGES, 0);

        let mut buf = AlignedData(LIBFUSE_INIT_REPLY.0);
        assert_eq!(
            clamp_init_out(&mut buf.0[16..], 128 * 1024, 32),
            Ok((128 * 1024, 32))
        );
        let v = InitOutView::parse(&buf.0[16..]).unwrap();
        assert_eq!((v.max_write(), v.max_pages()), (128 * 1024, 32));
        // Larger limits change nothing.
        assert_eq!(
            clamp_init_out(&mut buf.0[16..], u32::MAX, u16::MAX),
            Ok((128 * 1024, 32))
        );
    }

    #[test]
    fn interrupt_reply_eagain() {
        let b = out(16, -11, 0x2b);
        let r = Reply::parse(&b.0[..16]).unwrap();
        assert!(r.is_interrupt_reply());
        assert_eq!(r.kind(), ReplyKind::InterruptReply);
        assert_eq!(r.unique().without_int_bit(), Unique(0x2a));
        let b = out(24, 0, 0x2b);
        assert_eq!(
            Reply::parse(&b.0[..24]).unwrap_err(),
            ParseError::InterruptReplyWithBody(24)
        );
    }

    #[test]
    fn notification() {
        let b = out(40, 2, 0);
        let r = Reply::parse(&b.0[..40]).unwrap();
        assert_eq!(r.kind(), ReplyKind::Notify(NotifyCode::InvalInode));
        assert_eq!(r.notify_code(), Some(NotifyCode::InvalInode));
        assert_eq!(r.body().len(), 24);
        let b = out(16, 99, 0);
        assert_eq!(
            Reply::parse(&b.0[..16]).unwrap().notify_code(),
            Some(NotifyCode::Unknown(99))
        );
        let b = out(16, 0, 0);
        assert_eq!(
            Reply::parse(&b.0[..16]).unwrap_err(),
            ParseError::BadNotifyCode(0)
        );
        assert_eq!(unique_of(&b.0[..16]), None);
    }

    #[test]
    fn error_reply_with_body_rejected() {
        let b = out(24, -2, 0x10);
        assert_eq!(
            Reply::parse(&b.0[..24]).unwrap_err(),
            ParseError::ErrorWithBody { error: -2, len: 24 }
        );
        assert_eq!(unique_of(&b.0[..24]), Some(Unique(0x10)));
    }

    #[test]
    fn error_range() {
        let b = out(16, 1, 0x10);
        assert_eq!(
            Reply::parse(&b.0[..16]).unwrap_err(),
            ParseError::BadError(1)
        );
        let b = out(16, -512, 0x10);
        assert_eq!(
            Reply::parse(&b.0[..16]).unwrap_err(),
            ParseError::BadError(-512)
        );
        let b = out(16, -511, 0x10);
        assert_eq!(Reply::parse(&b.0[..16]).unwrap().error(), -511);
    }

    #[test]
    fn length_rules() {
        let b = out(16, 0, 0x10);
        assert_eq!(
            Reply::parse(&b.0[..12]).unwrap_err(),
            ParseError::ShortHeader { got: 12, need: 16 }
        );
        assert_eq!(unique_of(&b.0[..12]), None);
        let b = out(32, 0, 0x10);
        assert_eq!(
            Reply::parse(&b.0[..24]).unwrap_err(),
            ParseError::LengthMismatch {
                header: 32,
                received: 24
            }
        );
    }

    #[test]
    fn misaligned_reply() {
        let mut b = AlignedData([0u8; 24]);
        b.0[1] = 16;
        b.0[9] = 0x10;
        assert_eq!(
            Reply::parse(&b.0[1..17]).unwrap_err(),
            ParseError::Misaligned(1)
        );
    }

    #[test]
    fn reply_sizes() {
        assert_eq!(
            expected_reply_size(Opcode::Getattr, 45),
            ReplySize::Exact(104)
        );
        assert_eq!(
            expected_reply_size(Opcode::Setattr, 8),
            ReplySize::Exact(96)
        );
        assert_eq!(
            expected_reply_size(Opcode::Lookup, 45),
            ReplySize::Exact(128)
        );
        assert_eq!(expected_reply_size(Opcode::Mkdir, 7), ReplySize::Exact(120));
        assert_eq!(
            expected_reply_size(Opcode::Create, 45),
            ReplySize::Exact(144)
        );
        assert_eq!(expected_reply_size(Opcode::Open, 45), ReplySize::Exact(16));
        assert_eq!(expected_reply_size(Opcode::Write, 45), ReplySize::Exact(8));
        assert_eq!(
            expected_reply_size(Opcode::Statfs, 45),
            ReplySize::Exact(80)
        );
        assert_eq!(expected_reply_size(Opcode::Read, 45), ReplySize::Any);
        assert_eq!(
            expected_reply_size(Opcode::Release, 45),
            ReplySize::Exact(0)
        );
        assert_eq!(expected_reply_size(Opcode::Forget, 45), ReplySize::None);
        assert_eq!(expected_reply_size(Opcode::Init, 45), ReplySize::AtMost(64));
        let attr = expected_reply_size(Opcode::Getattr, 45);
        assert_eq!(
            attr.check(Opcode::Getattr, 96),
            Err(ParseError::ShortBody {
                opcode: 3,
                need: 104,
                got: 96
            })
        );
        assert_eq!(
            ReplySize::AtMost(64).check(Opcode::Init, 65),
            Err(ParseError::LongBody {
                opcode: 26,
                max: 64,
                got: 65
            })
        );
        assert_eq!(attr.check(Opcode::Getattr, 104), Ok(()));
    }
}
