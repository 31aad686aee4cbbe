//! [`Request`]: a validated view of one message from the kernel.
//!
//! A request is a 40-byte [`InHeader`], the opcode's body, and
//! `total_extlen * 8` bytes of extensions (7.38). [`Request::parse`] checks
//! the header, the body's fixed part and every name the opcode carries, once;
//! [`Request::operation`] then hands out a typed, borrowed view per opcode
//! (fuser's `AnyRequest::operation`). Nothing is copied but INIT's and
//! SETXATTR's small fixed parts, whose size depends on the negotiated
//! protocol.
//!
//! Bodies are parsed as the kernel sends them at minor 9 and later. Below
//! minor 9 a WRITE's fixed part was 24 bytes ([`crate::abi::FUSE_COMPAT_WRITE_IN_SIZE`]);
//! this crate does not handle that form.

use core::mem::{align_of, size_of};

use zerocopy::{ConvertError, FromBytes, Immutable, KnownLayout};

use crate::abi::*;
use crate::error::ParseError;
use crate::flags::*;
use crate::ids::{Fh, NodeId, Unique};
use crate::init::{zero_filled, InitInView};
use crate::opcode::Opcode;

/// Size of [`InHeader`].
pub const IN_HEADER_SIZE: usize = size_of::<InHeader>();

/// Views a `T` at the start of `bytes`.
fn fetch<T: FromBytes + KnownLayout + Immutable>(
    opcode: u32,
    bytes: &[u8],
) -> Result<(&T, &[u8]), ParseError> {
    if bytes.len() < size_of::<T>() {
        return Err(ParseError::ShortBody {
            opcode,
            need: size_of::<T>(),
            got: bytes.len(),
        });
    }
    T::ref_from_prefix(bytes).map_err(|e| match e {
        ConvertError::Alignment(_) => {
            ParseError::Misaligned(bytes.as_ptr() as usize % align_of::<T>())
        }
        ConvertError::Size(_) => ParseError::ShortBody {
            opcode,
            need: size_of::<T>(),
            got: bytes.len(),
        },
        ConvertError::Validity(never) => match never {},
    })
}

/// Splits a NUL-terminated name off the start of `bytes`; the name excludes
/// the NUL.
fn fetch_name(opcode: u32, bytes: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    match bytes.iter().position(|&b| b == 0) {
        Some(i) => Ok((&bytes[..i], &bytes[i + 1..])),
        None => Err(ParseError::MissingNul { opcode }),
    }
}

/// A request from the kernel, validated.
///
/// # Contract
/// Once [`parse`](Self::parse) returns `Ok`, no accessor of this type or of
/// the views [`operation`](Self::operation) returns can panic: `len` equals
/// the bytes received, the body holds the opcode's fixed part, and every
/// name is NUL-terminated inside the body.
///
/// The view borrows the buffer; copy out what must outlive it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    bytes: &'a [u8],
    header: &'a InHeader,
    body: &'a [u8],
    extensions: &'a [u8],
    operation: Operation<'a>,
}

impl<'a> Request<'a> {
    /// Validates one whole message as read from `/dev/fuse`.
    ///
    /// Unknown opcodes parse, with their body as [`Operation::Other`].
    ///
    /// # Errors
    /// - [`ParseError::ShortHeader`]: fewer than 40 bytes.
    /// - [`ParseError::LengthMismatch`]: `len` is not `buf.len()`.
    /// - [`ParseError::Misaligned`]: `buf` is not 8-byte aligned.
    /// - [`ParseError::ExtensionTooLong`]: `total_extlen` runs past the end.
    /// - [`ParseError::ShortBody`], [`ParseError::MissingNul`],
    ///   [`ParseError::XattrSize`]: the body does not fit the opcode.
    pub fn parse(buf: &'a [u8]) -> Result<Request<'a>, ParseError> {
        if buf.len() < IN_HEADER_SIZE {
            return Err(ParseError::ShortHeader {
                got: buf.len(),
                need: IN_HEADER_SIZE,
            });
        }
        let (header, rest) = InHeader::ref_from_prefix(buf).map_err(|e| match e {
            ConvertError::Alignment(_) => ParseError::Misaligned(buf.as_ptr() as usize % 8),
            ConvertError::Size(_) => ParseError::ShortHeader {
                got: buf.len(),
                need: IN_HEADER_SIZE,
            },
            ConvertError::Validity(never) => match never {},
        })?;
        if header.len as usize != buf.len() {
            return Err(ParseError::LengthMismatch {
                header: header.len,
                received: buf.len(),
            });
        }
        let ext_len = usize::from(header.total_extlen) * 8;
        let Some(split) = rest.len().checked_sub(ext_len) else {
            return Err(ParseError::ExtensionTooLong {
                total_extlen: header.total_extlen,
                available: rest.len(),
            });
        };
        let (body, extensions) = rest.split_at(split);
        let operation = Operation::parse(header.opcode, body)?;
        Ok(Request {
            bytes: buf,
            header,
            body,
            extensions,
            operation,
        })
    }

    /// The header.
    pub fn header(&self) -> &'a InHeader {
        self.header
    }

    /// The opcode.
    pub fn opcode(&self) -> Opcode {
        Opcode::from(self.header.opcode)
    }

    /// The request id.
    pub fn unique(&self) -> Unique {
        Unique(self.header.unique)
    }

    /// The node the request is about (0 for INIT, DESTROY, INTERRUPT ...).
    pub fn nodeid(&self) -> NodeId {
        NodeId(self.header.nodeid)
    }

    /// Caller's uid.
    pub fn uid(&self) -> u32 {
        self.header.uid
    }

    /// Caller's gid.
    pub fn gid(&self) -> u32 {
        self.header.gid
    }

    /// Caller's tgid; 0 when a kernel thread (e.g. writeback) sent it.
    pub fn pid(&self) -> u32 {
        self.header.pid
    }

    /// The opcode's body: after the header, before the extensions.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    /// The extensions (`total_extlen * 8` bytes at the end, 7.38): a sequence
    /// of [`ExtHeader`]-led records. Empty for most requests.
    pub fn extensions(&self) -> &'a [u8] {
        self.extensions
    }

    /// The whole message, header included, for forwarding.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Bytes in the message (equal to `header().len`). Never 0.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The typed view of the body.
    pub fn operation(&self) -> Operation<'a> {
        self.operation
    }
}

/// A request's body, typed by opcode. Names exclude their NUL.
///
/// Opcodes without a view of their own (SETUPMAPPING, REMOVEMAPPING,
/// TMPFILE, CUSE_INIT and unknown ones) are [`Operation::Other`]; they are
/// checked only for the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // Variants and fields are named after the opcode and fuse.h.
pub enum Operation<'a> {
    Lookup {
        name: &'a [u8],
    },
    Forget(&'a ForgetIn),
    Getattr(&'a GetattrIn),
    Setattr(Setattr<'a>),
    Readlink,
    /// `name` is the new entry, `target` what it points to.
    Symlink {
        name: &'a [u8],
        target: &'a [u8],
    },
    Mknod {
        arg: &'a MknodIn,
        name: &'a [u8],
    },
    Mkdir {
        arg: &'a MkdirIn,
        name: &'a [u8],
    },
    Unlink {
        name: &'a [u8],
    },
    Rmdir {
        name: &'a [u8],
    },
    /// `old` in the header's node, `new` in `arg.newdir`.
    Rename {
        arg: &'a RenameIn,
        old: &'a [u8],
        new: &'a [u8],
    },
    /// The header's node is the new parent, `arg.oldnodeid` the target.
    Link {
        arg: &'a LinkIn,
        name: &'a [u8],
    },
    Open(&'a OpenIn),
    Read(&'a ReadIn),
    /// `data` is the rest of the body (normally `arg.size` bytes).
    Write {
        arg: &'a WriteIn,
        data: &'a [u8],
    },
    Statfs,
    Release(&'a ReleaseIn),
    Fsync(&'a FsyncIn),
    Setxattr(Setxattr<'a>),
    Getxattr {
        arg: &'a GetxattrIn,
        name: &'a [u8],
    },
    Listxattr(&'a GetxattrIn),
    Removexattr {
        name: &'a [u8],
    },
    Flush(&'a FlushIn),
    Init(InitInView),
    Opendir(&'a OpenIn),
    Readdir(&'a ReadIn),
    Releasedir(&'a ReleaseIn),
    Fsyncdir(&'a FsyncIn),
    Getlk(&'a LkIn),
    Setlk(&'a LkIn),
    Setlkw(&'a LkIn),
    Access(&'a AccessIn),
    Create {
        arg: &'a CreateIn,
        name: &'a [u8],
    },
    Interrupt(&'a InterruptIn),
    Bmap(&'a BmapIn),
    Destroy,
    /// `data` is the ioctl input (normally `arg.in_size` bytes).
    Ioctl {
        arg: &'a IoctlIn,
        data: &'a [u8],
    },
    Poll(&'a PollIn),
    /// The data answering a NOTIFY_RETRIEVE; no reply.
    NotifyReply {
        arg: &'a NotifyRetrieveIn,
        data: &'a [u8],
    },
    /// `items` holds exactly `arg.count` entries; no reply.
    BatchForget {
        arg: &'a BatchForgetIn,
        items: &'a [ForgetOne],
    },
    Fallocate(&'a FallocateIn),
    Readdirplus(&'a ReadIn),
    Rename2 {
        arg: &'a Rename2In,
        old: &'a [u8],
        new: &'a [u8],
    },
    Lseek(&'a LseekIn),
    CopyFileRange(&'a CopyFileRangeIn),
    CopyFileRange64(&'a CopyFileRangeIn),
    Syncfs(&'a SyncfsIn),
    Statx(&'a StatxIn),
    Other {
        opcode: Opcode,
        body: &'a [u8],
    },
}

impl<'a> Operation<'a> {
    /// Types `body` by opcode, checking what the accessors rely on.
    fn parse(opcode: u32, body: &'a [u8]) -> Result<Operation<'a>, ParseError> {
        use Operation as O;
        let op = opcode;
        let name_only = |body| fetch_name(op, body).map(|(name, _)| name);
        Ok(match Opcode::from(opcode) {
            Opcode::Lookup => O::Lookup {
                name: name_only(body)?,
            },
            Opcode::Forget => O::Forget(fetch(op, body)?.0),
            Opcode::Getattr => O::Getattr(fetch(op, body)?.0),
            Opcode::Setattr => O::Setattr(Setattr {
                arg: fetch(op, body)?.0,
            }),
            Opcode::Readlink => O::Readlink,
            Opcode::Symlink => {
                let (name, rest) = fetch_name(op, body)?;
                let (target, _) = fetch_name(op, rest)?;
                O::Symlink { name, target }
            }
            Opcode::Mknod => {
                let (arg, rest) = fetch(op, body)?;
                O::Mknod {
                    arg,
                    name: name_only(rest)?,
                }
            }
            Opcode::Mkdir => {
                let (arg, rest) = fetch(op, body)?;
                O::Mkdir {
                    arg,
                    name: name_only(rest)?,
                }
            }
            Opcode::Unlink => O::Unlink {
                name: name_only(body)?,
            },
            Opcode::Rmdir => O::Rmdir {
                name: name_only(body)?,
            },
            Opcode::Rename => {
                let (arg, rest) = fetch(op, body)?;
                let (old, rest) = fetch_name(op, rest)?;
                let (new, _) = fetch_name(op, rest)?;
                O::Rename { arg, old, new }
            }
            Opcode::Link => {
                let (arg, rest) = fetch(op, body)?;
                O::Link {
                    arg,
                    name: name_only(rest)?,
                }
            }
            Opcode::Open => O::Open(fetch(op, body)?.0),
            Opcode::Read => O::Read(fetch(op, body)?.0),
            Opcode::Write => {
                let (arg, data) = fetch(op, body)?;
                O::Write { arg, data }
            }
            Opcode::Statfs => O::Statfs,
            Opcode::Release => O::Release(fetch(op, body)?.0),
            Opcode::Fsync => O::Fsync(fetch(op, body)?.0),
            Opcode::Setxattr => O::Setxattr(Setxattr::parse(body)?),
            Opcode::Getxattr => {
                let (arg, rest) = fetch(op, body)?;
                O::Getxattr {
                    arg,
                    name: name_only(rest)?,
                }
            }
            Opcode::Listxattr => O::Listxattr(fetch(op, body)?.0),
            Opcode::Removexattr => O::Removexattr {
                name: name_only(body)?,
            },
            Opcode::Flush => O::Flush(fetch(op, body)?.0),
            Opcode::Init => O::Init(InitInView::parse(body)?),
            Opcode::Opendir => O::Opendir(fetch(op, body)?.0),
            Opcode::Readdir => O::Readdir(fetch(op, body)?.0),
            Opcode::Releasedir => O::Releasedir(fetch(op, body)?.0),
            Opcode::Fsyncdir => O::Fsyncdir(fetch(op, body)?.0),
            Opcode::Getlk => O::Getlk(fetch(op, body)?.0),
            Opcode::Setlk => O::Setlk(fetch(op, body)?.0),
            Opcode::Setlkw => O::Setlkw(fetch(op, body)?.0),
            Opcode::Access => O::Access(fetch(op, body)?.0),
            Opcode::Create => {
                let (arg, rest) = fetch(op, body)?;
                O::Create {
                    arg,
                    name: name_only(rest)?,
                }
            }
            Opcode::Interrupt => O::Interrupt(fetch(op, body)?.0),
            Opcode::Bmap => O::Bmap(fetch(op, body)?.0),
            Opcode::Destroy => O::Destroy,
            Opcode::Ioctl => {
                let (arg, data) = fetch(op, body)?;
                O::Ioctl { arg, data }
            }
            Opcode::Poll => O::Poll(fetch(op, body)?.0),
            Opcode::NotifyReply => {
                let (arg, data) = fetch(op, body)?;
                O::NotifyReply { arg, data }
            }
            Opcode::BatchForget => {
                let (arg, rest): (&BatchForgetIn, _) = fetch(op, body)?;
                let count = arg.count as usize;
                let short = || ParseError::ShortBody {
                    opcode: op,
                    need: count
                        .saturating_mul(size_of::<ForgetOne>())
                        .saturating_add(size_of::<BatchForgetIn>()),
                    got: body.len(),
                };
                let items = match <[ForgetOne]>::ref_from_prefix_with_elems(rest, count) {
                    Ok((items, _)) => items,
                    Err(ConvertError::Alignment(_)) => {
                        return Err(ParseError::Misaligned(rest.as_ptr() as usize % 8))
                    }
                    Err(ConvertError::Size(_)) => return Err(short()),
                    Err(ConvertError::Validity(never)) => match never {},
                };
                O::BatchForget { arg, items }
            }
            Opcode::Fallocate => O::Fallocate(fetch(op, body)?.0),
            Opcode::Readdirplus => O::Readdirplus(fetch(op, body)?.0),
            Opcode::Rename2 => {
                let (arg, rest) = fetch(op, body)?;
                let (old, rest) = fetch_name(op, rest)?;
                let (new, _) = fetch_name(op, rest)?;
                O::Rename2 { arg, old, new }
            }
            Opcode::Lseek => O::Lseek(fetch(op, body)?.0),
            Opcode::CopyFileRange => O::CopyFileRange(fetch(op, body)?.0),
            Opcode::CopyFileRange64 => O::CopyFileRange64(fetch(op, body)?.0),
            Opcode::Syncfs => O::Syncfs(fetch(op, body)?.0),
            Opcode::Statx => O::Statx(fetch(op, body)?.0),
            other @ (Opcode::SetupMapping
            | Opcode::RemoveMapping
            | Opcode::TmpFile
            | Opcode::CuseInit
            | Opcode::Unknown(_)) => O::Other {
                opcode: other,
                body,
            },
        })
    }
}

/// SETATTR's body. Accessors return `Some` only when `valid` has the
/// field's `FATTR_*` bit.
///
/// NOTE: times are declared `uint64_t` in fuse.h but carry a signed
/// `time64_t`; the accessors return `i64` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setattr<'a> {
    arg: &'a SetattrIn,
}

impl<'a> Setattr<'a> {
    fn has(&self, bit: u32) -> bool {
        self.arg.valid & bit != 0
    }

    /// The raw struct.
    pub fn arg(&self) -> &'a SetattrIn {
        self.arg
    }

    /// The `FATTR_*` bits.
    pub fn valid(&self) -> u32 {
        self.arg.valid
    }

    /// New mode, if `FATTR_MODE`.
    pub fn mode(&self) -> Option<u32> {
        self.has(FATTR_MODE).then_some(self.arg.mode)
    }

    /// New owner, if `FATTR_UID`.
    pub fn uid(&self) -> Option<u32> {
        self.has(FATTR_UID).then_some(self.arg.uid)
    }

    /// New group, if `FATTR_GID`.
    pub fn gid(&self) -> Option<u32> {
        self.has(FATTR_GID).then_some(self.arg.gid)
    }

    /// New size, if `FATTR_SIZE`.
    pub fn size(&self) -> Option<u64> {
        self.has(FATTR_SIZE).then_some(self.arg.size)
    }

    /// New atime `(seconds, nanoseconds)`, if `FATTR_ATIME`. With
    /// [`atime_now`](Self::atime_now) the daemon should use its own clock
    /// instead.
    pub fn atime(&self) -> Option<(i64, u32)> {
        self.has(FATTR_ATIME)
            .then_some((self.arg.atime as i64, self.arg.atimensec))
    }

    /// Whether `FATTR_ATIME_NOW` is set.
    pub fn atime_now(&self) -> bool {
        self.has(FATTR_ATIME_NOW)
    }

    /// New mtime `(seconds, nanoseconds)`, if `FATTR_MTIME`. With
    /// [`mtime_now`](Self::mtime_now) the daemon should use its own clock
    /// instead.
    pub fn mtime(&self) -> Option<(i64, u32)> {
        self.has(FATTR_MTIME)
            .then_some((self.arg.mtime as i64, self.arg.mtimensec))
    }

    /// Whether `FATTR_MTIME_NOW` is set.
    pub fn mtime_now(&self) -> bool {
        self.has(FATTR_MTIME_NOW)
    }

    /// New ctime `(seconds, nanoseconds)`, if `FATTR_CTIME` (7.23).
    pub fn ctime(&self) -> Option<(i64, u32)> {
        self.has(FATTR_CTIME)
            .then_some((self.arg.ctime as i64, self.arg.ctimensec))
    }

    /// File handle, if `FATTR_FH`.
    pub fn fh(&self) -> Option<Fh> {
        self.has(FATTR_FH).then_some(Fh(self.arg.fh))
    }

    /// Lock owner, if `FATTR_LOCKOWNER`.
    pub fn lock_owner(&self) -> Option<u64> {
        self.has(FATTR_LOCKOWNER).then_some(self.arg.lock_owner)
    }

    /// Whether `FATTR_KILL_SUIDGID` (7.33) is set.
    pub fn kill_suidgid(&self) -> bool {
        self.has(FATTR_KILL_SUIDGID)
    }
}

/// SETXATTR's body: `fuse_setxattr_in`, the name, then `size` bytes of value.
///
/// The fixed part is 8 bytes ([`FUSE_COMPAT_SETXATTR_IN_SIZE`]) unless the
/// daemon accepted `FUSE_SETXATTR_EXT` (7.33), then 16. The request does not
/// say which, so [`Request::parse`] tries the 8-byte form and then the
/// 16-byte one, taking the form in which name and value end exactly at the
/// end of the body. The kernel zeroes the 16-byte form's `padding`, so the
/// 8-byte reading of a 16-byte body always finds a NUL too early and fails;
/// the choice is unambiguous for anything the kernel sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setxattr<'a> {
    arg: SetxattrIn,
    extended: bool,
    name: &'a [u8],
    value: &'a [u8],
}

impl<'a> Setxattr<'a> {
    fn parse(body: &'a [u8]) -> Result<Setxattr<'a>, ParseError> {
        const OP: u32 = 21;
        let Some(fixed) = body.get(..FUSE_COMPAT_SETXATTR_IN_SIZE) else {
            return Err(ParseError::ShortBody {
                opcode: OP,
                need: FUSE_COMPAT_SETXATTR_IN_SIZE,
                got: body.len(),
            });
        };
        let mut size = [0u8; 4];
        size.copy_from_slice(&fixed[..4]);
        let size = u32::from_ne_bytes(size);
        let split = |offset: usize| -> Option<(&'a [u8], &'a [u8])> {
            let (name, value) = fetch_name(OP, body.get(offset..)?).ok()?;
            (value.len() == size as usize).then_some((name, value))
        };
        let forms = [
            (FUSE_COMPAT_SETXATTR_IN_SIZE, false),
            (size_of::<SetxattrIn>(), true),
        ];
        for (offset, extended) in forms {
            if let Some((name, value)) = split(offset) {
                return Ok(Setxattr {
                    arg: zero_filled(&body[..offset]),
                    extended,
                    name,
                    value,
                });
            }
        }
        // Neither form adds up: say whether the name or the size is at fault.
        fetch_name(OP, &body[FUSE_COMPAT_SETXATTR_IN_SIZE..])?;
        Err(ParseError::XattrSize {
            size,
            body: body.len(),
        })
    }

    /// The fixed part; `setxattr_flags` is 0 in the 8-byte form.
    pub fn arg(&self) -> &SetxattrIn {
        &self.arg
    }

    /// Whether the 16-byte form (`FUSE_SETXATTR_EXT`, 7.33) was sent.
    pub fn is_extended(&self) -> bool {
        self.extended
    }

    /// Bytes of value.
    pub fn size(&self) -> u32 {
        self.arg.size
    }

    /// `XATTR_CREATE` / `XATTR_REPLACE`.
    pub fn flags(&self) -> u32 {
        self.arg.flags
    }

    /// `FUSE_SETXATTR_*` flags, in the 16-byte form only.
    pub fn setxattr_flags(&self) -> Option<u32> {
        self.extended.then_some(self.arg.setxattr_flags)
    }

    /// The attribute's name, without its NUL.
    pub fn name(&self) -> &'a [u8] {
        self.name
    }

    /// The value, exactly [`size`](Self::size) bytes.
    pub fn value(&self) -> &'a [u8] {
        self.value
    }
}

// Wire bytes below are little-endian, as on the machines these came from.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::init::rewrite_init_in_flags;

    #[repr(align(8))]
    struct AlignedData<T>(T);

    /// INIT as kernel 6.18 sends it: 40-byte header + 64-byte `fuse_init_in`.
    const KERNEL_INIT: AlignedData<[u8; 104]> = AlignedData([
        104, 0, 0, 0, 26, 0, 0, 0, // len, opcode
        2, 0, 0, 0, 0, 0, 0, 0, // unique
        0, 0, 0, 0, 0, 0, 0, 0, // nodeid
        0, 0, 0, 0, 0, 0, 0, 0, // uid, gid
        0, 0, 0, 0, 0, 0, 0, 0, // pid, total_extlen, padding
        7, 0, 0, 0, 45, 0, 0, 0, // major, minor
        0, 0, 2, 0, 0xfb, 0xff, 0xff, 0x73, // max_readahead, flags
        0xfd, 0x07, 0, 0, 0, 0, 0, 0, // flags2, unused[0]
        0, 0, 0, 0, 0, 0, 0, 0, // unused
        0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, 0, 0, 0, //
    ]);

    /// SETATTR from the writeback flush: valid = MTIME | FH | CTIME.
    const SETATTR_TIMES: AlignedData<[u8; 128]> = AlignedData([
        128, 0, 0, 0, 4, 0, 0, 0, // len, opcode
        0x60, 0, 0, 0, 0, 0, 0, 0, // unique
        5, 0, 0, 0, 0, 0, 0, 0, // nodeid
        0, 0, 0, 0, 0, 0, 0, 0, // uid, gid
        0, 0, 0, 0, 0, 0, 0, 0, // pid 0 (writeback), total_extlen, padding
        0x60, 0x04, 0, 0, 0, 0, 0, 0, // valid, padding
        3, 0, 0, 0, 0, 0, 0, 0, // fh
        0, 0, 0, 0, 0, 0, 0, 0, // size
        0, 0, 0, 0, 0, 0, 0, 0, // lock_owner
        0, 0, 0, 0, 0, 0, 0, 0, // atime
        0x00, 0xf1, 0x53, 0x65, 0, 0, 0, 0, // mtime 1700000000
        0x00, 0xf1, 0x53, 0x65, 0, 0, 0, 0, // ctime
        0, 0, 0, 0, 9, 0, 0, 0, // atimensec, mtimensec
        10, 0, 0, 0, 0, 0, 0, 0, // ctimensec, mode
        0, 0, 0, 0, 0, 0, 0, 0, // unused4, uid
        0, 0, 0, 0, 0, 0, 0, 0, // gid, unused5
    ]);

    /// RENAME "a" -> "bc", newdir 9.
    const RENAME: AlignedData<[u8; 56]> = AlignedData([
        56, 0, 0, 0, 12, 0, 0, 0, // len, opcode
        0x10, 0, 0, 0, 0, 0, 0, 0, // unique
        1, 0, 0, 0, 0, 0, 0, 0, // nodeid
        0, 0, 0, 0, 0, 0, 0, 0, // uid, gid
        0, 0, 0, 0, 0, 0, 0, 0, // pid, total_extlen, padding
        9, 0, 0, 0, 0, 0, 0, 0, // newdir
        b'a', 0, b'b', b'c', 0, 0, 0, 0, // old, new, slack
    ]);

    fn header(len: u32, opcode: u32, extlen: u16) -> [u8; 40] {
        let mut h = [0u8; 40];
        h[0..4].copy_from_slice(&len.to_le_bytes());
        h[4..8].copy_from_slice(&opcode.to_le_bytes());
        h[8] = 0x20;
        h[36..38].copy_from_slice(&extlen.to_le_bytes());
        h
    }

    /// Builds header + body in an aligned buffer; returns it and the length.
    fn message(opcode: u32, extlen: u16, body: &[u8]) -> (AlignedData<[u8; 256]>, usize) {
        let len = 40 + body.len();
        let mut buf = AlignedData([0u8; 256]);
        buf.0[..40].copy_from_slice(&header(len as u32, opcode, extlen));
        buf.0[40..len].copy_from_slice(body);
        (buf, len)
    }

    #[test]
    fn kernel_init_parses_and_rewrites() {
        let req = Request::parse(&KERNEL_INIT.0).unwrap();
        assert_eq!(req.opcode(), Opcode::Init);
        assert_eq!(req.len(), 104);
        let Operation::Init(init) = req.operation() else {
            panic!("not INIT")
        };
        assert_eq!((init.major(), init.minor()), (7, 45));
        assert_eq!(init.max_readahead(), 128 * 1024);
        assert!(init.is_extended());
        let flags = init.flags();
        assert_eq!(flags as u32, 0x73ff_fffb);
        assert_ne!(flags & FUSE_INIT_EXT, 0);
        assert_ne!(flags & FUSE_PASSTHROUGH, 0);
        assert_ne!(flags & FUSE_OVER_IO_URING, 0);

        let mut buf = AlignedData(KERNEL_INIT.0);
        let removed =
            rewrite_init_in_flags(&mut buf.0[40..], FUSE_PASSTHROUGH | FUSE_OVER_IO_URING).unwrap();
        assert_eq!(removed, FUSE_PASSTHROUGH | FUSE_OVER_IO_URING);
        let Operation::Init(init) = Request::parse(&buf.0).unwrap().operation() else {
            panic!("not INIT")
        };
        assert_eq!(
            init.flags(),
            flags & !(FUSE_PASSTHROUGH | FUSE_OVER_IO_URING)
        );
        assert_eq!(buf.0[..56], KERNEL_INIT.0[..56]);
    }

    #[test]
    fn setattr_time_only() {
        let req = Request::parse(&SETATTR_TIMES.0).unwrap();
        assert_eq!((req.nodeid(), req.pid()), (NodeId(5), 0));
        let Operation::Setattr(s) = req.operation() else {
            panic!("not SETATTR")
        };
        assert_eq!(s.valid(), FATTR_MTIME | FATTR_FH | FATTR_CTIME);
        assert_eq!(s.mtime(), Some((1_700_000_000, 9)));
        assert_eq!(s.ctime(), Some((1_700_000_000, 10)));
        assert_eq!(s.fh(), Some(Fh(3)));
        assert_eq!(s.atime(), None);
        assert_eq!(
            (s.mode(), s.uid(), s.gid(), s.size()),
            (None, None, None, None)
        );
        assert!(!s.atime_now() && !s.mtime_now() && !s.kill_suidgid());
        assert_eq!(s.lock_owner(), None);
    }

    #[test]
    fn rename_names() {
        let req = Request::parse(&RENAME.0).unwrap();
        assert_eq!(
            req.operation(),
            Operation::Rename {
                arg: &RenameIn { newdir: 9 },
                old: b"a",
                new: b"bc"
            }
        );
    }

    #[test]
    fn short_header() {
        assert_eq!(
            Request::parse(&KERNEL_INIT.0[..20]).unwrap_err(),
            ParseError::ShortHeader { got: 20, need: 40 }
        );
    }

    #[test]
    fn length_mismatch() {
        assert_eq!(
            Request::parse(&KERNEL_INIT.0[..96]).unwrap_err(),
            ParseError::LengthMismatch {
                header: 104,
                received: 96
            }
        );
    }

    #[test]
    fn misaligned_is_an_error() {
        let mut buf = AlignedData([0u8; 48]);
        buf.0[1..41].copy_from_slice(&header(40, 38, 0));
        assert_eq!(
            Request::parse(&buf.0[1..41]).unwrap_err(),
            ParseError::Misaligned(1)
        );
    }

    #[test]
    fn missing_nul() {
        let (buf, n) = message(1, 0, b"abc");
        assert_eq!(
            Request::parse(&buf.0[..n]).unwrap_err(),
            ParseError::MissingNul { opcode: 1 }
        );
        // SYMLINK needs two names.
        let (buf, n) = message(6, 0, b"link\0target");
        assert_eq!(
            Request::parse(&buf.0[..n]).unwrap_err(),
            ParseError::MissingNul { opcode: 6 }
        );
        let (buf, n) = message(6, 0, b"link\0target\0");
        assert_eq!(
            Request::parse(&buf.0[..n]).unwrap().operation(),
            Operation::Symlink {
                name: b"link",
                target: b"target"
            }
        );
    }

    #[test]
    fn short_body() {
        let (buf, n) = message(4, 0, &[0; 80]);
        assert_eq!(
            Request::parse(&buf.0[..n]).unwrap_err(),
            ParseError::ShortBody {
                opcode: 4,
                need: 88,
                got: 80
            }
        );
    }

    #[test]
    fn batch_forget_count_must_fit() {
        let mut body = [0u8; 8 + 32];
        body[0] = 3; // count 3, room for 2
        let (buf, n) = message(42, 0, &body);
        assert_eq!(
            Request::parse(&buf.0[..n]).unwrap_err(),
            ParseError::ShortBody {
                opcode: 42,
                need: 56,
                got: 40
            }
        );
        body[0] = 2;
        body[8] = 77; // first nodeid
        let (buf, n) = message(42, 0, &body);
        let Operation::BatchForget { arg, items } =
            Request::parse(&buf.0[..n]).unwrap().operation()
        else {
            panic!("not BATCH_FORGET")
        };
        assert_eq!(arg.count, 2);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].nodeid, 77);
    }

    #[test]
    fn unknown_opcode_is_forwardable() {
        let (buf, n) = message(999, 0, b"whatever");
        let req = Request::parse(&buf.0[..n]).unwrap();
        assert_eq!(req.opcode(), Opcode::Unknown(999));
        assert_eq!(
            req.operation(),
            Operation::Other {
                opcode: Opcode::Unknown(999),
                body: b"whatever"
            }
        );
    }

    #[test]
    fn extensions_are_split_off() {
        // CREATE with an 8-byte extension after the name.
        let mut body = [0u8; 16 + 8 + 8];
        body[16..19].copy_from_slice(b"new");
        body[24..28].copy_from_slice(&8u32.to_le_bytes()); // ext size
        body[28] = 32; // FUSE_EXT_GROUPS
        let (buf, n) = message(35, 1, &body);
        let req = Request::parse(&buf.0[..n]).unwrap();
        assert_eq!(req.body().len(), 24);
        assert_eq!(req.extensions().len(), 8);
        let Operation::Create { name, .. } = req.operation() else {
            panic!("not CREATE")
        };
        assert_eq!(name, b"new");

        let (buf, n) = message(35, 5, &body);
        assert_eq!(
            Request::parse(&buf.0[..n]).unwrap_err(),
            ParseError::ExtensionTooLong {
                total_extlen: 5,
                available: 32
            }
        );
    }

    #[test]
    fn setxattr_both_forms() {
        // 8-byte form: size 3, flags 0, "user.long_name\0", "abc".
        let mut compat = [0u8; 8 + 15 + 3];
        compat[0] = 3;
        compat[8..23].copy_from_slice(b"user.long_name\0");
        compat[23..].copy_from_slice(b"abc");
        let (buf, n) = message(21, 0, &compat);
        let Operation::Setxattr(x) = Request::parse(&buf.0[..n]).unwrap().operation() else {
            panic!("not SETXATTR")
        };
        assert!(!x.is_extended());
        assert_eq!(
            (x.name(), x.value(), x.size()),
            (&b"user.long_name"[..], &b"abc"[..], 3)
        );
        assert_eq!(x.setxattr_flags(), None);

        // 16-byte form with FUSE_SETXATTR_ACL_KILL_SGID.
        let mut ext = [0u8; 16 + 15 + 3];
        ext[0] = 3;
        ext[8] = 1;
        ext[16..31].copy_from_slice(b"user.long_name\0");
        ext[31..].copy_from_slice(b"abc");
        let (buf, n) = message(21, 0, &ext);
        let Operation::Setxattr(x) = Request::parse(&buf.0[..n]).unwrap().operation() else {
            panic!("not SETXATTR")
        };
        assert!(x.is_extended());
        assert_eq!((x.name(), x.value()), (&b"user.long_name"[..], &b"abc"[..]));
        assert_eq!(x.setxattr_flags(), Some(1));

        // A size that fits neither form.
        ext[0] = 9;
        let (buf, n) = message(21, 0, &ext);
        assert_eq!(
            Request::parse(&buf.0[..n]).unwrap_err(),
            ParseError::XattrSize { size: 9, body: 34 }
        );
    }

    #[test]
    fn write_data() {
        let mut body = [0u8; 40 + 5];
        body[16] = 5; // size
        body[40..].copy_from_slice(b"hello");
        let (buf, n) = message(16, 0, &body);
        let Operation::Write { arg, data } = Request::parse(&buf.0[..n]).unwrap().operation()
        else {
            panic!("not WRITE")
        };
        assert_eq!((arg.size, data), (5, &b"hello"[..]));
    }
}
