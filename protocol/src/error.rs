//! [`ParseError`]: why a message was rejected.

use core::fmt;

/// Why [`crate::Request::parse`], [`crate::Reply::parse`] or an INIT helper
/// rejected a message. Each variant carries the numbers that decided it, so
/// tests can match the exact variant and logs can quote them.
///
/// "Unknown" is never an error here: unknown opcodes and notification codes
/// parse, so that a relay can forward them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParseError {
    /// The message is shorter than its header (40 bytes for a request, 16 for
    /// a reply).
    ShortHeader {
        /// Bytes received.
        got: usize,
        /// Size of the header.
        need: usize,
    },
    /// The header's `len` is not the number of bytes received. The kernel
    /// rejects such a reply with EINVAL and leaves the request pending.
    LengthMismatch {
        /// `len` in the header.
        header: u32,
        /// Bytes received.
        received: usize,
    },
    /// The buffer is not 8-byte aligned, so the headers (which hold `u64`s)
    /// cannot be viewed in place. Carries the address modulo 8. Buffers from
    /// the proxy's arena are always aligned; copy anything else first.
    Misaligned(usize),
    /// `total_extlen * 8` is more than the bytes after the header.
    ExtensionTooLong {
        /// `total_extlen` in the header (8-byte units).
        total_extlen: u16,
        /// Bytes after the header.
        available: usize,
    },
    /// The body is shorter than the opcode's fixed part (or than the entries
    /// that `count` promises, for BATCH_FORGET).
    ShortBody {
        /// The request's opcode, or for a reply body the answered opcode.
        opcode: u32,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        got: usize,
    },
    /// The body is longer than the opcode allows (an INIT reply above 64
    /// bytes).
    LongBody {
        /// The opcode.
        opcode: u32,
        /// Most bytes allowed.
        max: usize,
        /// Bytes present.
        got: usize,
    },
    /// A name the opcode carries is not NUL-terminated inside the body.
    MissingNul {
        /// The request's opcode.
        opcode: u32,
    },
    /// SETXATTR: the name and `size` bytes of value do not add up to the
    /// body, in either the 8-byte or the 16-byte form of `fuse_setxattr_in`.
    XattrSize {
        /// `size` in the header.
        size: u32,
        /// Bytes in the body.
        body: usize,
    },
    /// A reply's error is positive or ≤ -512. The kernel rejects it with
    /// EINVAL and leaves the request pending.
    BadError(i32),
    /// A reply carries an error and a body. The kernel completes the request
    /// with EIO.
    ErrorWithBody {
        /// The error.
        error: i32,
        /// Bytes in the message.
        len: usize,
    },
    /// A reply to an INTERRUPT (unique with `FUSE_INT_REQ_BIT`) has a body;
    /// the kernel accepts only a bare 16-byte header.
    InterruptReplyWithBody(usize),
    /// A notification (unique 0) with a code ≤ 0.
    BadNotifyCode(i32),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParseError::ShortHeader { got, need } => write!(
                f,
                "message of {got} bytes is shorter than its {need}-byte header"
            ),
            ParseError::LengthMismatch { header, received } => write!(
                f,
                "header says {header} bytes but {received} were received"
            ),
            ParseError::Misaligned(rem) => write!(
                f,
                "buffer address is {rem} bytes past an 8-byte boundary"
            ),
            ParseError::ExtensionTooLong {
                total_extlen,
                available,
            } => write!(
                f,
                "total_extlen {total_extlen} ({} bytes) exceeds the {available} bytes after the header",
                u32::from(total_extlen) * 8
            ),
            ParseError::ShortBody { opcode, need, got } => write!(
                f,
                "body of opcode {opcode} has {got} bytes, needs at least {need}"
            ),
            ParseError::LongBody { opcode, max, got } => write!(
                f,
                "body of opcode {opcode} has {got} bytes, at most {max} allowed"
            ),
            ParseError::MissingNul { opcode } => {
                write!(f, "name in opcode {opcode} is not NUL-terminated")
            }
            ParseError::XattrSize { size, body } => write!(
                f,
                "setxattr value size {size} does not fit a {body}-byte body after the name"
            ),
            ParseError::BadError(e) => write!(
                f,
                "error {e} is outside the kernel's range (-511..=0)"
            ),
            ParseError::ErrorWithBody { error, len } => write!(
                f,
                "error reply ({error}) has a body: {len} bytes instead of 16"
            ),
            ParseError::InterruptReplyWithBody(len) => write!(
                f,
                "reply to an INTERRUPT has {len} bytes instead of 16"
            ),
            ParseError::BadNotifyCode(c) => {
                write!(f, "notification code {c} is not positive")
            }
        }
    }
}

impl std::error::Error for ParseError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_numbers() {
        assert_eq!(
            ParseError::ShortHeader { got: 12, need: 16 }.to_string(),
            "message of 12 bytes is shorter than its 16-byte header"
        );
        assert_eq!(
            ParseError::BadError(-600).to_string(),
            "error -600 is outside the kernel's range (-511..=0)"
        );
    }
}
