//! Writing messages into a caller's buffer, without allocating.
//!
//! Each function writes one whole message at the start of `buf` and returns
//! its length, or `None` (leaving `buf` in an unspecified state) when it does
//! not fit or would exceed `u32::MAX` bytes. Buffers need no alignment.
//! The output of each passes [`crate::Request::parse`] /
//! [`crate::Reply::parse`] when its parts are well-formed.

use zerocopy::IntoBytes;

use crate::abi::{InHeader, OutHeader};
use crate::ids::Unique;
use crate::opcode::NotifyCode;
use crate::reply::OUT_HEADER_SIZE;
use crate::request::IN_HEADER_SIZE;

/// Total length of a header plus parts, if it fits in `u32`.
fn total(header: usize, parts: &[&[u8]]) -> Option<u32> {
    let len = parts
        .iter()
        .try_fold(header, |acc, p| acc.checked_add(p.len()))?;
    u32::try_from(len).ok()
}

/// Writes `header` then each part, back to back.
fn emit(buf: &mut [u8], header: &[u8], parts: &[&[u8]], len: u32) -> Option<usize> {
    let len = len as usize;
    let out = buf.get_mut(..len)?;
    let (h, mut rest) = out.split_at_mut(header.len());
    h.copy_from_slice(header);
    for part in parts {
        let (dst, tail) = rest.split_at_mut(part.len());
        dst.copy_from_slice(part);
        rest = tail;
    }
    Some(len)
}

/// Writes an error reply: a bare [`OutHeader`] with `error = -errno`.
///
/// `errno` is positive (`libc::EIO`). The kernel accepts 1..=511; this
/// function does not check, so that tests can build bad replies.
#[must_use]
pub fn encode_error_reply(buf: &mut [u8], unique: Unique, errno: i32) -> Option<usize> {
    let header = OutHeader {
        len: OUT_HEADER_SIZE as u32,
        error: errno.wrapping_neg(),
        unique: unique.0,
    };
    emit(buf, header.as_bytes(), &[], header.len)
}

/// Writes a successful reply (error 0) whose body is `body_parts` joined.
#[must_use]
pub fn encode_reply(buf: &mut [u8], unique: Unique, body_parts: &[&[u8]]) -> Option<usize> {
    let len = total(OUT_HEADER_SIZE, body_parts)?;
    let header = OutHeader {
        len,
        error: 0,
        unique: unique.0,
    };
    emit(buf, header.as_bytes(), body_parts, len)
}

/// Writes a notification (unique 0, `error` = the code).
#[must_use]
pub fn encode_notify(buf: &mut [u8], code: NotifyCode, body_parts: &[&[u8]]) -> Option<usize> {
    let len = total(OUT_HEADER_SIZE, body_parts)?;
    let header = OutHeader {
        len,
        error: i32::from(code),
        unique: 0,
    };
    emit(buf, header.as_bytes(), body_parts, len)
}

/// Writes a request: `header_template` with `len` filled in, then
/// `body_parts` joined. Every other header field, `total_extlen` included, is
/// taken as given; extensions, if any, are the caller's last part.
#[must_use]
pub fn encode_request(
    buf: &mut [u8],
    header_template: &InHeader,
    body_parts: &[&[u8]],
) -> Option<usize> {
    let len = total(IN_HEADER_SIZE, body_parts)?;
    let header = InHeader {
        len,
        ..*header_template
    };
    emit(buf, header.as_bytes(), body_parts, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{AttrOut, SetattrIn};
    use crate::flags::{FATTR_CTIME, FATTR_FH, FATTR_MTIME};
    use crate::opcode::Opcode;
    use crate::request::Operation;
    use crate::{Reply, ReplyKind, Request};

    #[repr(align(8))]
    struct Aligned<const N: usize>([u8; N]);

    #[test]
    fn error_reply_round_trips() {
        let mut buf = Aligned([0xffu8; 32]);
        let n = encode_error_reply(&mut buf.0, Unique(0x10), 5).unwrap();
        assert_eq!(n, 16);
        let r = Reply::parse(&buf.0[..n]).unwrap();
        assert_eq!(
            (r.unique(), r.error(), r.kind()),
            (Unique(0x10), -5, ReplyKind::Reply)
        );
        assert_eq!(encode_error_reply(&mut buf.0[..15], Unique(0x10), 5), None);
    }

    #[test]
    fn reply_from_parts() {
        let attr = AttrOut::default();
        let mut buf = Aligned([0u8; 128]);
        let (a, b) = attr.as_bytes().split_at(40);
        let n = encode_reply(&mut buf.0, Unique(0x22), &[a, b]).unwrap();
        assert_eq!(n, 120);
        let r = Reply::parse(&buf.0[..n]).unwrap();
        assert_eq!(r.body(), attr.as_bytes());
        assert_eq!(encode_reply(&mut buf.0[..119], Unique(0x22), &[a, b]), None);
    }

    #[test]
    fn notify_round_trips() {
        let mut buf = Aligned([0u8; 64]);
        let n = encode_notify(&mut buf.0, NotifyCode::InvalInode, &[&[0u8; 24]]).unwrap();
        let r = Reply::parse(&buf.0[..n]).unwrap();
        assert_eq!(r.notify_code(), Some(NotifyCode::InvalInode));
    }

    #[test]
    fn request_round_trips() {
        let template = InHeader {
            len: 0,
            opcode: Opcode::Setattr.into(),
            unique: 0x40,
            nodeid: 7,
            uid: 0,
            gid: 0,
            pid: 99,
            total_extlen: 0,
            padding: 0,
        };
        let arg = SetattrIn {
            valid: FATTR_MTIME | FATTR_FH | FATTR_CTIME,
            mtime: 1_700_000_000,
            mtimensec: 5,
            fh: 3,
            ..SetattrIn::default()
        };
        let mut buf = Aligned([0u8; 256]);
        let n = encode_request(&mut buf.0, &template, &[arg.as_bytes()]).unwrap();
        assert_eq!(n, 128);
        let req = Request::parse(&buf.0[..n]).unwrap();
        let Operation::Setattr(s) = req.operation() else {
            panic!("not setattr")
        };
        assert_eq!(s.mtime(), Some((1_700_000_000, 5)));
        assert_eq!(s.atime(), None);
        assert_eq!(req.pid(), 99);
    }
}
