//! FUSE-over-io_uring (protocol 7.42): the ring entry's layout, and the
//! conversion between a ring entry and the `/dev/fuse` wire format.
//!
//! With io_uring the kernel does not hand the daemon one contiguous message.
//! Each ring entry is two buffers the daemon registered: a header buffer
//! laid out as [`UringReqHeader`] and a payload buffer. For a request the
//! kernel writes (`fs/fuse/dev_uring.c`, `fuse_uring_copy_to_ring` and
//! `fuse_uring_args_to_ring`):
//! - `in_out`: the `fuse_in_header`, whose `len` counts every argument as
//!   on `/dev/fuse` (set in `fs/fuse/dev.c`, `fuse_send_one`);
//! - `op_in`: the first argument (the per-opcode struct, `in_args[0]`), or
//!   nothing when the opcode has none (its first argument is then empty,
//!   `fuse_set_zero_arg0`);
//! - the payload buffer: every further argument (names, write data,
//!   extensions), back to back;
//! - `ring_ent_in_out`: `commit_id` (the request's unique) and `payload_sz`
//!   (bytes written to the payload buffer).
//!
//! The op-argument length is therefore not sent; it is `len - 40 -
//! payload_sz`. For a reply the kernel reads the `fuse_out_header` from
//! `in_out` (its `len` is not checked) and, when `error` is 0, `payload_sz`
//! bytes of body from the payload buffer (`fuse_uring_commit`,
//! `fuse_uring_copy_from_ring`).
//!
//! [`request_from_ring`] and [`reply_to_ring`] turn these into the
//! `/dev/fuse` wire format and back, so that the rest of a relay sees the
//! same bytes whichever transport carried them. Neither allocates.

use core::fmt;
use core::mem::size_of;

use zerocopy::FromBytes;

use crate::abi::{InHeader, OutHeader, FUSE_MIN_READ_BUFFER};
pub use crate::abi::{
    UringCmdReq, UringEntInOut, UringReqHeader, FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
    FUSE_IO_URING_CMD_INVALID, FUSE_IO_URING_CMD_REGISTER, FUSE_URING_IN_OUT_HEADER_SZ,
    FUSE_URING_OP_IN_OUT_SZ,
};
pub use crate::flags::FUSE_OVER_IO_URING;
use crate::reply::OUT_HEADER_SIZE;
use crate::request::IN_HEADER_SIZE;

/// Bytes of a [`UringReqHeader`]: the smallest header buffer the kernel
/// accepts at REGISTER (`fuse_uring_create_ring_ent`).
pub const FUSE_URING_REQ_HEADER_SZ: usize = size_of::<UringReqHeader>();

/// Buffers of one ring entry, given to REGISTER as an iovec array of exactly
/// this many elements in `sqe->addr`/`sqe->len` (header, then payload).
///
/// NOTE: not in the uapi header; the kernel's `FUSE_URING_IOV_SEGS` in
/// `fs/fuse/dev_uring.c`, checked by `fuse_uring_get_iovec_from_sqe`.
pub const FUSE_URING_IOV_SEGS: u32 = 2;

/// Bytes of the command area of a 128-byte SQE (`IORING_SETUP_SQE128`),
/// where a [`UringCmdReq`] goes. The kernel refuses a FUSE command from a
/// ring without SQE128 (EINVAL, `fuse_uring_cmd`).
pub const FUSE_URING_CMD_AREA_SZ: usize = 80;

const _: () = assert!(FUSE_URING_REQ_HEADER_SZ == 288);
const _: () = assert!(size_of::<UringCmdReq>() <= FUSE_URING_CMD_AREA_SZ);
const _: () = assert!(IN_HEADER_SIZE <= FUSE_URING_IN_OUT_HEADER_SZ);

/// The payload size the kernel requires of every entry:
/// `max(FUSE_MIN_READ_BUFFER, max_write, max_pages * page_size)`, from the
/// connection's values after INIT (`fuse_uring_create`). A REGISTER whose
/// payload buffer is smaller fails with EINVAL.
///
/// `max_pages` is the INIT reply's when it set `FUSE_MAX_PAGES`, else the
/// kernel's default of 32 (`FUSE_DEFAULT_MAX_PAGES_PER_REQ`); the kernel
/// also caps it at its `max_pages_limit` (256 by default).
pub fn ring_payload_size(max_write: u32, max_pages: u16, page_size: usize) -> usize {
    FUSE_MIN_READ_BUFFER
        .max(max_write as usize)
        .max(max_pages as usize * page_size)
}

/// Why a ring entry or a reply could not be converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UringError {
    /// `ring_ent_in_out.payload_sz` is more than the payload buffer holds.
    PayloadSize {
        /// `payload_sz` in the header.
        payload_sz: u32,
        /// Bytes in the payload buffer.
        buffer: usize,
    },
    /// The in-header's `len` is below `40 + payload_sz`, or leaves more than
    /// the 128 bytes of `op_in` for the op argument.
    RequestLen {
        /// `len` in the `fuse_in_header`.
        len: u32,
        /// `payload_sz` in the header.
        payload_sz: u32,
    },
    /// The caller's buffer cannot hold the assembled request.
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes offered.
        have: usize,
    },
    /// A reply shorter than a `fuse_out_header`.
    ShortReply(usize),
    /// A reply whose header `len` is not its length.
    ReplyLen {
        /// `len` in the `fuse_out_header`.
        header: u32,
        /// Bytes in the reply.
        actual: usize,
    },
    /// A reply body larger than the payload buffer.
    ReplyTooLong {
        /// Bytes of body.
        body: usize,
        /// Bytes in the payload buffer.
        max: usize,
    },
}

impl fmt::Display for UringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UringError::PayloadSize { payload_sz, buffer } => write!(
                f,
                "ring entry payload_sz {payload_sz} exceeds its {buffer}-byte payload buffer"
            ),
            UringError::RequestLen { len, payload_sz } => write!(
                f,
                "ring request len {len} does not fit header (40) + op argument (<= 128) + payload ({payload_sz})"
            ),
            UringError::BufferTooSmall { need, have } => {
                write!(f, "request of {need} bytes does not fit a {have}-byte buffer")
            }
            UringError::ShortReply(n) => {
                write!(f, "reply of {n} bytes is shorter than its header (16)")
            }
            UringError::ReplyLen { header, actual } => {
                write!(f, "reply header says {header} bytes, {actual} given")
            }
            UringError::ReplyTooLong { body, max } => {
                write!(f, "reply body of {body} bytes exceeds the {max}-byte payload buffer")
            }
        }
    }
}

/// Assembles the request held by a ring entry into `out`, exactly as
/// `read(2)` on `/dev/fuse` would have returned it: in-header, op argument,
/// payload. Returns its length.
///
/// # Errors
///
/// [`UringError::PayloadSize`] or [`UringError::RequestLen`] when the header
/// does not describe a request that fits the entry (a kernel this module
/// does not know), [`UringError::BufferTooSmall`] when `out` is short.
pub fn request_from_ring(
    header: &UringReqHeader,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, UringError> {
    let payload_sz = header.ring_ent_in_out.payload_sz;
    let payload = payload
        .get(..payload_sz as usize)
        .ok_or(UringError::PayloadSize {
            payload_sz,
            buffer: payload.len(),
        })?;
    let (in_header, _) = InHeader::read_from_prefix(&header.in_out[..])
        .expect("in_out (128 bytes) holds a fuse_in_header (40)");
    let len = in_header.len as usize;
    let op_len = len
        .checked_sub(IN_HEADER_SIZE + payload.len())
        .filter(|&n| n <= FUSE_URING_OP_IN_OUT_SZ)
        .ok_or(UringError::RequestLen {
            len: in_header.len,
            payload_sz,
        })?;
    let have = out.len();
    let out = out
        .get_mut(..len)
        .ok_or(UringError::BufferTooSmall { need: len, have })?;
    let (h, rest) = out.split_at_mut(IN_HEADER_SIZE);
    h.copy_from_slice(&header.in_out[..IN_HEADER_SIZE]);
    let (op, data) = rest.split_at_mut(op_len);
    op.copy_from_slice(&header.op_in[..op_len]);
    data.copy_from_slice(payload);
    Ok(len)
}

/// Lays a reply in `/dev/fuse` wire format (out-header and body, as written
/// to `/dev/fuse`) into a ring entry's buffers: the out-header into `in_out`,
/// the body into `payload`, its length into `payload_sz`.
///
/// The header's `unique` is copied as it is; the kernel ends the request
/// with ENOENT if it is not the request's. A notification (`unique` 0)
/// cannot go through the ring: the kernel refuses it with EINVAL, so it must
/// be written to `/dev/fuse`.
///
/// # Errors
///
/// [`UringError::ShortReply`], [`UringError::ReplyLen`] (the checks
/// `fuse_dev_do_write` makes and the ring path does not), or
/// [`UringError::ReplyTooLong`]. Nothing is written then.
pub fn reply_to_ring(
    reply: &[u8],
    header: &mut UringReqHeader,
    payload: &mut [u8],
) -> Result<(), UringError> {
    let (out_header, body) =
        OutHeader::read_from_prefix(reply).map_err(|_| UringError::ShortReply(reply.len()))?;
    if out_header.len as usize != reply.len() {
        return Err(UringError::ReplyLen {
            header: out_header.len,
            actual: reply.len(),
        });
    }
    let max = payload.len();
    let dst = payload
        .get_mut(..body.len())
        .ok_or(UringError::ReplyTooLong {
            body: body.len(),
            max,
        })?;
    dst.copy_from_slice(body);
    header.in_out[..OUT_HEADER_SIZE].copy_from_slice(&reply[..OUT_HEADER_SIZE]);
    // `body.len() <= max`, and a payload buffer is far below 4 GiB.
    header.ring_ent_in_out.payload_sz = u32::try_from(body.len()).unwrap_or(u32::MAX);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use zerocopy::{FromZeros, IntoBytes};

    use crate::abi::GetattrIn;
    use crate::ids::Unique;
    use crate::opcode::Opcode;
    use crate::request::{Operation, Request};

    #[test]
    fn layouts_match_the_uapi_header() {
        // struct fuse_uring_req_header
        assert_eq!(offset_of!(UringReqHeader, in_out), 0);
        assert_eq!(offset_of!(UringReqHeader, op_in), 128);
        assert_eq!(offset_of!(UringReqHeader, ring_ent_in_out), 256);
        assert_eq!(size_of::<UringReqHeader>(), 288);
        // struct fuse_uring_ent_in_out
        assert_eq!(offset_of!(UringEntInOut, flags), 0);
        assert_eq!(offset_of!(UringEntInOut, commit_id), 8);
        assert_eq!(offset_of!(UringEntInOut, payload_sz), 16);
        assert_eq!(offset_of!(UringEntInOut, padding), 20);
        assert_eq!(offset_of!(UringEntInOut, reserved), 24);
        assert_eq!(size_of::<UringEntInOut>(), 32);
        // struct fuse_uring_cmd_req
        assert_eq!(offset_of!(UringCmdReq, flags), 0);
        assert_eq!(offset_of!(UringCmdReq, commit_id), 8);
        assert_eq!(offset_of!(UringCmdReq, qid), 16);
        assert_eq!(offset_of!(UringCmdReq, padding), 18);
        assert_eq!(size_of::<UringCmdReq>(), 24);
        // enum fuse_uring_cmd
        assert_eq!(FUSE_IO_URING_CMD_INVALID, 0);
        assert_eq!(FUSE_IO_URING_CMD_REGISTER, 1);
        assert_eq!(FUSE_IO_URING_CMD_COMMIT_AND_FETCH, 2);
        assert_eq!(FUSE_OVER_IO_URING, 1 << 41);
    }

    #[test]
    fn payload_size_follows_the_kernel() {
        assert_eq!(ring_payload_size(0, 0, 4096), 8192);
        assert_eq!(ring_payload_size(128 * 1024, 32, 4096), 128 * 1024);
        assert_eq!(ring_payload_size(4096, 256, 4096), 1024 * 1024);
    }

    /// A ring entry as the kernel fills it for `req` (a well-formed request
    /// whose op argument is `op_len` bytes).
    fn entry_for(req: &[u8], op_len: usize) -> (UringReqHeader, [u8; 64]) {
        let mut h = UringReqHeader::new_zeroed();
        let mut payload = [0xeeu8; 64];
        h.in_out[..40].copy_from_slice(&req[..40]);
        h.op_in[..op_len].copy_from_slice(&req[40..40 + op_len]);
        let rest = &req[40 + op_len..];
        payload[..rest.len()].copy_from_slice(rest);
        h.ring_ent_in_out.payload_sz = rest.len() as u32;
        h.ring_ent_in_out.commit_id = 0x10;
        (h, payload)
    }

    #[repr(align(8))]
    struct Aligned<const N: usize>([u8; N]);

    #[test]
    fn a_lookup_comes_out_as_on_the_device() {
        // LOOKUP has no op struct: the name is all payload.
        let req: [u8; 45] = [
            45, 0, 0, 0, 1, 0, 0, 0, // len, opcode LOOKUP
            0x10, 0, 0, 0, 0, 0, 0, 0, // unique
            1, 0, 0, 0, 0, 0, 0, 0, // nodeid
            0, 0, 0, 0, 0, 0, 0, 0, // uid, gid
            7, 0, 0, 0, 0, 0, 0, 0, // pid, total_extlen, padding
            b'f', b'i', b'l', b'e', 0, // name
        ];
        let (h, payload) = entry_for(&req, 0);
        let mut out = Aligned([0u8; 128]);
        let n = request_from_ring(&h, &payload, &mut out.0).unwrap();
        assert_eq!(&out.0[..n], &req[..]);
        let parsed = Request::parse(&out.0[..n]).unwrap();
        assert_eq!(parsed.opcode(), Opcode::Lookup);
        assert_eq!(parsed.operation(), Operation::Lookup { name: b"file" });
    }

    #[test]
    fn a_getattr_puts_its_struct_in_op_in() {
        let mut req = [0u8; 56];
        req[0] = 56;
        req[4] = 3; // GETATTR
        req[8] = 0x10;
        req[16] = 1;
        let arg = GetattrIn {
            getattr_flags: 1,
            dummy: 0,
            fh: 9,
        };
        req[40..].copy_from_slice(arg.as_bytes());
        let (h, payload) = entry_for(&req, 16);
        assert_eq!(h.ring_ent_in_out.payload_sz, 0);
        let mut out = Aligned([0u8; 64]);
        let n = request_from_ring(&h, &payload, &mut out.0).unwrap();
        assert_eq!(&out.0[..n], &req[..]);
        assert_eq!(
            Request::parse(&out.0[..n]).unwrap().operation(),
            Operation::Getattr(&arg)
        );
        // Too small a buffer is refused whole.
        assert_eq!(
            request_from_ring(&h, &payload, &mut out.0[..55]),
            Err(UringError::BufferTooSmall { need: 56, have: 55 })
        );
    }

    #[test]
    fn inconsistent_entries_are_refused() {
        let mut h = UringReqHeader::new_zeroed();
        h.in_out[0] = 40;
        h.ring_ent_in_out.payload_sz = 65;
        let mut out = [0u8; 512];
        assert_eq!(
            request_from_ring(&h, &[0; 64], &mut out),
            Err(UringError::PayloadSize {
                payload_sz: 65,
                buffer: 64
            })
        );
        h.ring_ent_in_out.payload_sz = 8;
        assert_eq!(
            request_from_ring(&h, &[0; 64], &mut out),
            Err(UringError::RequestLen {
                len: 40,
                payload_sz: 8
            })
        );
        // An op argument longer than op_in cannot be.
        h.in_out[..2].copy_from_slice(&(40u16 + 129 + 8).to_le_bytes());
        assert!(matches!(
            request_from_ring(&h, &[0; 64], &mut out),
            Err(UringError::RequestLen { .. })
        ));
    }

    #[test]
    fn a_reply_is_split_into_header_and_payload() {
        let mut buf = [0u8; 64];
        let body = [7u8; 24];
        let n = crate::encode_reply(&mut buf, Unique(0x10), &[&body]).unwrap();
        let mut h = UringReqHeader::new_zeroed();
        let mut payload = [0u8; 32];
        reply_to_ring(&buf[..n], &mut h, &mut payload).unwrap();
        assert_eq!(&h.in_out[..16], &buf[..16]);
        assert_eq!(h.ring_ent_in_out.payload_sz, 24);
        assert_eq!(&payload[..24], &body);

        let n = crate::encode_error_reply(&mut buf, Unique(0x12), 2 /* ENOENT */).unwrap();
        reply_to_ring(&buf[..n], &mut h, &mut payload).unwrap();
        assert_eq!(h.ring_ent_in_out.payload_sz, 0);
        assert_eq!(&h.in_out[..16], &buf[..16]);
    }

    #[test]
    fn bad_replies_are_refused() {
        let mut h = UringReqHeader::new_zeroed();
        let mut payload = [0u8; 8];
        assert_eq!(
            reply_to_ring(&[0; 10], &mut h, &mut payload),
            Err(UringError::ShortReply(10))
        );
        let mut buf = [0u8; 64];
        let n = crate::encode_reply(&mut buf, Unique(2), &[&[1; 9]]).unwrap();
        assert_eq!(
            reply_to_ring(&buf[..n], &mut h, &mut payload),
            Err(UringError::ReplyTooLong { body: 9, max: 8 })
        );
        assert_eq!(
            reply_to_ring(&buf[..n - 1], &mut h, &mut payload),
            Err(UringError::ReplyLen {
                header: 25,
                actual: 24
            })
        );
        assert_eq!(h, UringReqHeader::new_zeroed(), "nothing written on error");
    }
}
