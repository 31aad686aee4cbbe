//! INIT, whose layout depends on the protocol minor.
//!
//! Request (`fuse_init_in`): 16 bytes before 7.36 ([`FUSE_COMPAT_INIT_IN_SIZE`](crate::abi::FUSE_COMPAT_INIT_IN_SIZE);
//! 8 before 7.6), 64 bytes since. `flags2` holds INIT flag bits 32..63 and
//! counts only when `flags` has `FUSE_INIT_EXT`; libfuse and fuse-backend-rs
//! both read it that way, and a kernel may set INIT_EXT without sending the
//! longer form, in which case `flags2` reads as 0.
//!
//! Reply (`fuse_init_out`): a daemon sizes it by the *kernel's* minor: 8 bytes
//! ([`FUSE_COMPAT_INIT_OUT_SIZE`]) below 7.5, 24
//! ([`FUSE_COMPAT_22_INIT_OUT_SIZE`]) below 7.23, 64 since (libfuse's
//! `_do_init`). The kernel takes any reply of at most 64 bytes and zero-fills
//! the rest, so the views here copy what is present into a zeroed struct and
//! absent fields read as 0, as the kernel would see them.
//!
//! The rewriting helpers change the message in place and never its length.

use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::abi::{InitIn, InitOut, FUSE_COMPAT_22_INIT_OUT_SIZE, FUSE_COMPAT_INIT_OUT_SIZE};
use crate::error::ParseError;
use crate::flags::{FUSE_INIT_EXT, FUSE_MAX_PAGES};

/// The smallest INIT request body: `major` and `minor` (before 7.6).
pub const INIT_IN_MIN_SIZE: usize = 8;

/// Offset of `max_pages` in `fuse_init_out`; a body must reach past it.
const INIT_OUT_MAX_PAGES_END: usize = 30;

/// `FUSE_INIT`, for error variants (`From<Opcode>` is not `const`).
const INIT: u32 = 26;

/// Copies up to `size_of::<T>()` bytes of `body` into a zeroed `T`.
pub(crate) fn zero_filled<T: FromBytes + IntoBytes>(body: &[u8]) -> T {
    let mut v = T::new_zeroed();
    let dst = v.as_mut_bytes();
    let n = body.len().min(dst.len());
    dst[..n].copy_from_slice(&body[..n]);
    v
}

/// Writes back the first `body.len()` bytes of `v` (at most all of it).
fn write_prefix<T: IntoBytes + Immutable>(v: &T, body: &mut [u8]) {
    let src = v.as_bytes();
    let n = body.len().min(src.len());
    body[..n].copy_from_slice(&src[..n]);
}

/// Joins `flags` and `flags2` the way the kernel defines: `flags2` counts
/// only with `FUSE_INIT_EXT`.
fn join_flags(flags: u32, flags2: u32) -> u64 {
    let lo = u64::from(flags);
    if lo & FUSE_INIT_EXT != 0 {
        lo | u64::from(flags2) << 32
    } else {
        lo
    }
}

/// The protocol minor both sides use: the smaller of the two, per fuse.h's
/// "Version negotiation" (when the majors match).
pub fn negotiated_minor(kernel_minor: u32, daemon_minor: u32) -> u32 {
    kernel_minor.min(daemon_minor)
}

/// A copy of an INIT request body (`fuse_init_in`), any of its forms.
///
/// Holds the bytes present in a zeroed [`InitIn`]; never borrows the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitInView {
    arg: InitIn,
    len: usize,
}

impl InitInView {
    /// Reads an INIT request body (the bytes after the 40-byte header and
    /// before any extensions).
    ///
    /// # Errors
    /// [`ParseError::ShortBody`] below 8 bytes. Longer bodies than 64 bytes
    /// are accepted; the excess is ignored.
    pub fn parse(body: &[u8]) -> Result<InitInView, ParseError> {
        if body.len() < INIT_IN_MIN_SIZE {
            return Err(ParseError::ShortBody {
                opcode: INIT,
                need: INIT_IN_MIN_SIZE,
                got: body.len(),
            });
        }
        Ok(InitInView {
            arg: zero_filled(body),
            len: body.len(),
        })
    }

    /// Major version.
    pub fn major(&self) -> u32 {
        self.arg.major
    }

    /// Minor version.
    pub fn minor(&self) -> u32 {
        self.arg.minor
    }

    /// Largest readahead (0 before 7.6).
    pub fn max_readahead(&self) -> u32 {
        self.arg.max_readahead
    }

    /// INIT flags as `u64`: `flags | flags2 << 32` when `FUSE_INIT_EXT` is
    /// set, else `flags`.
    pub fn flags(&self) -> u64 {
        join_flags(self.arg.flags, self.arg.flags2)
    }

    /// Whether the body is the 64-byte form (7.36) and so carries `flags2`.
    pub fn is_extended(&self) -> bool {
        self.len >= core::mem::size_of::<InitIn>()
    }

    /// Bytes in the body as received.
    pub fn body_len(&self) -> usize {
        self.len
    }

    /// The struct, zero-filled past the received bytes.
    pub fn arg(&self) -> &InitIn {
        &self.arg
    }
}

/// Clears `clear` from the INIT flags of a request body, in place; returns
/// the bits that were set and are now gone.
///
/// Works on every form: `flags` when the body holds it (16 bytes or more),
/// `flags2` when it holds that too (20 bytes or more). The returned bits are
/// those of [`InitInView::flags`] before the change, so bits of `flags2`
/// count only under `FUSE_INIT_EXT`. Clearing `FUSE_INIT_EXT` itself makes
/// `flags2` meaningless to the reader, though its bits are cleared as asked.
///
/// # Errors
/// [`ParseError::ShortBody`] below 8 bytes; the body is unchanged.
pub fn rewrite_init_in_flags(body: &mut [u8], clear: u64) -> Result<u64, ParseError> {
    let view = InitInView::parse(body)?;
    let removed = view.flags() & clear;
    let mut arg = view.arg;
    // Truncation keeps bits 0..31 and 32..63 in turn, as the kernel splits.
    arg.flags &= !(clear as u32);
    arg.flags2 &= !((clear >> 32) as u32);
    write_prefix(&arg, body);
    Ok(removed)
}

/// A copy of an INIT reply body (`fuse_init_out`), any of its forms.
///
/// Holds the bytes present in a zeroed [`InitOut`]; absent fields read as 0,
/// as the kernel sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOutView {
    arg: InitOut,
    len: usize,
}

impl InitOutView {
    /// Reads an INIT reply body (after the 16-byte out header).
    ///
    /// # Errors
    /// [`ParseError::ShortBody`] below 8 bytes ([`FUSE_COMPAT_INIT_OUT_SIZE`]);
    /// [`ParseError::LongBody`] above 64, which the kernel rejects.
    pub fn parse(body: &[u8]) -> Result<InitOutView, ParseError> {
        let max = core::mem::size_of::<InitOut>();
        if body.len() < FUSE_COMPAT_INIT_OUT_SIZE {
            return Err(ParseError::ShortBody {
                opcode: INIT,
                need: FUSE_COMPAT_INIT_OUT_SIZE,
                got: body.len(),
            });
        }
        if body.len() > max {
            return Err(ParseError::LongBody {
                opcode: INIT,
                max,
                got: body.len(),
            });
        }
        Ok(InitOutView {
            arg: zero_filled(body),
            len: body.len(),
        })
    }

    /// Major version.
    pub fn major(&self) -> u32 {
        self.arg.major
    }

    /// Minor version.
    pub fn minor(&self) -> u32 {
        self.arg.minor
    }

    /// Largest readahead (0 if absent).
    pub fn max_readahead(&self) -> u32 {
        self.arg.max_readahead
    }

    /// INIT flags as `u64`: `flags | flags2 << 32` when `FUSE_INIT_EXT` is
    /// set, else `flags`.
    pub fn flags(&self) -> u64 {
        join_flags(self.arg.flags, self.arg.flags2)
    }

    /// Background request limit (7.13; 0 if absent).
    pub fn max_background(&self) -> u16 {
        self.arg.max_background
    }

    /// Congestion threshold (7.13; 0 if absent).
    pub fn congestion_threshold(&self) -> u16 {
        self.arg.congestion_threshold
    }

    /// Largest WRITE payload (0 if absent; the kernel then uses 4096, and it
    /// never goes below 4096).
    pub fn max_write(&self) -> u32 {
        self.arg.max_write
    }

    /// Timestamp granularity in ns (7.23; 0 if absent).
    pub fn time_gran(&self) -> u32 {
        self.arg.time_gran
    }

    /// The `max_pages` field (7.28; 0 if absent). Counts only when
    /// [`flags`](Self::flags) has `FUSE_MAX_PAGES`.
    pub fn max_pages(&self) -> u16 {
        self.arg.max_pages
    }

    /// `max_pages` as the kernel takes it: the field when the body holds it
    /// and the flags have `FUSE_MAX_PAGES`, else 0 (the kernel then uses its
    /// default of 32 pages).
    pub fn max_pages_in_effect(&self) -> u16 {
        if self.len >= INIT_OUT_MAX_PAGES_END && self.flags() & FUSE_MAX_PAGES != 0 {
            self.arg.max_pages
        } else {
            0
        }
    }

    /// The `map_alignment` field (7.31), if `FUSE_MAP_ALIGNMENT`.
    pub fn map_alignment(&self) -> u16 {
        self.arg.map_alignment
    }

    /// The `max_stack_depth` field (7.40), if `FUSE_PASSTHROUGH`.
    pub fn max_stack_depth(&self) -> u32 {
        self.arg.max_stack_depth
    }

    /// The `request_timeout` field in seconds (7.43), if
    /// `FUSE_REQUEST_TIMEOUT`.
    pub fn request_timeout(&self) -> u16 {
        self.arg.request_timeout
    }

    /// Bytes in the body as received: 8, 24 or 64 from a well-behaved daemon.
    pub fn body_len(&self) -> usize {
        self.len
    }

    /// Whether the body is at most the 7.22 form (24 bytes or fewer).
    pub fn is_compat(&self) -> bool {
        self.len <= FUSE_COMPAT_22_INIT_OUT_SIZE
    }

    /// The struct, zero-filled past the received bytes.
    pub fn arg(&self) -> &InitOut {
        &self.arg
    }
}

/// Changes to make to an INIT reply ([`edit_init_out`]).
///
/// Flags are cleared first, then set. The limits are upper bounds: a value
/// above one is lowered to it, never raised; `u32::MAX` / `u16::MAX` leave a
/// field as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOutEdit {
    /// INIT flag bits to clear.
    pub clear: u64,
    /// INIT flag bits to set.
    pub set: u64,
    /// Upper bound on `max_write`.
    pub max_write: u32,
    /// Upper bound on `max_readahead`.
    pub max_readahead: u32,
    /// Upper bound on `max_pages` (only when `FUSE_MAX_PAGES` is in effect).
    pub max_pages: u16,
}

impl Default for InitOutEdit {
    fn default() -> Self {
        InitOutEdit {
            clear: 0,
            set: 0,
            max_write: u32::MAX,
            max_readahead: u32::MAX,
            max_pages: u16::MAX,
        }
    }
}

/// Edits an INIT reply body in place; returns the view of the result, that
/// is what the kernel will read.
///
/// A field is changed only if the body holds it: `max_readahead` from 12
/// bytes, `flags` from 16, `max_write` from 24, `max_pages` from 30 (and
/// only when the resulting flags have `FUSE_MAX_PAGES`), `flags2` from 36.
/// Bits 32..63 count only when the resulting flags have `FUSE_INIT_EXT`, so
/// setting one in a reply without it changes nothing the kernel reads; the
/// returned view shows which changes took.
///
/// # Errors
/// As [`InitOutView::parse`]; the body is then unchanged.
pub fn edit_init_out(body: &mut [u8], edit: &InitOutEdit) -> Result<InitOutView, ParseError> {
    let view = InitOutView::parse(body)?;
    let mut arg = view.arg;
    let (clear_lo, clear_hi) = split_init_flags(edit.clear);
    let (set_lo, set_hi) = split_init_flags(edit.set);
    arg.flags = (arg.flags & !clear_lo) | set_lo;
    arg.flags2 = (arg.flags2 & !clear_hi) | set_hi;
    arg.max_readahead = arg.max_readahead.min(edit.max_readahead);
    arg.max_write = arg.max_write.min(edit.max_write);
    if join_flags(arg.flags, arg.flags2) & FUSE_MAX_PAGES != 0 {
        arg.max_pages = arg.max_pages.min(edit.max_pages);
    }
    // Fields past the body stay absent: only its own bytes are written back.
    write_prefix(&arg, body);
    InitOutView::parse(body)
}

/// Lowers `max_write` and `max_pages` of an INIT reply body in place, if they
/// are larger than the limits; returns the values the body now holds.
///
/// `max_write` is changed only if the body holds it (24 bytes or more);
/// `max_pages` only if the body holds it (30 bytes or more) and the flags
/// have `FUSE_MAX_PAGES`. The returned `max_pages` is 0 when it is not in
/// effect (the kernel then uses its default of 32 pages); the returned
/// `max_write` is 0 when absent (the kernel then uses 4096).
///
/// # Errors
/// As [`InitOutView::parse`]; the body is then unchanged.
pub fn clamp_init_out(
    body: &mut [u8],
    max_write: u32,
    max_pages: u16,
) -> Result<(u32, u16), ParseError> {
    let view = edit_init_out(
        body,
        &InitOutEdit {
            max_write,
            max_pages,
            ..InitOutEdit::default()
        },
    )?;
    Ok((view.max_write(), view.max_pages_in_effect()))
}

/// Splits `u64` INIT flags into the `(flags, flags2)` fields.
pub fn split_init_flags(flags: u64) -> (u32, u32) {
    (flags as u32, (flags >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::FUSE_COMPAT_INIT_IN_SIZE as COMPAT_IN;
    use crate::flags::*;
    use crate::opcode::Opcode;

    #[test]
    fn short_init_in_minor_35() {
        // major 7, minor 35, max_readahead 128 KiB, flags with INIT_EXT unset
        let body: [u8; 16] = [
            7, 0, 0, 0, 35, 0, 0, 0, // major, minor
            0, 0, 2, 0, 0xfb, 0xff, 0xff, 0x33, // max_readahead, flags
        ];
        assert_eq!(body.len(), COMPAT_IN);
        let v = InitInView::parse(&body).unwrap();
        assert_eq!((v.major(), v.minor()), (7, 35));
        assert_eq!(v.max_readahead(), 0x20000);
        assert_eq!(v.flags(), 0x33ff_fffb);
        assert!(!v.is_extended());

        let mut b = body;
        let removed = rewrite_init_in_flags(&mut b, FUSE_ASYNC_READ | FUSE_PASSTHROUGH).unwrap();
        assert_eq!(removed, FUSE_ASYNC_READ);
        assert_eq!(InitInView::parse(&b).unwrap().flags(), 0x33ff_fffa);
        assert_eq!(b.len(), 16);
    }

    #[test]
    fn init_in_too_short() {
        assert_eq!(
            InitInView::parse(&[7, 0, 0, 0]),
            Err(ParseError::ShortBody {
                opcode: 26,
                need: 8,
                got: 4
            })
        );
        let mut b = [0u8; 8];
        assert_eq!(rewrite_init_in_flags(&mut b, u64::MAX), Ok(0));
    }

    #[test]
    fn compat_22_init_out() {
        // 24 bytes: what libfuse sends a kernel below 7.23.
        let mut body: [u8; 24] = [
            7, 0, 0, 0, 22, 0, 0, 0, // major, minor
            0, 0, 2, 0, 0x01, 0, 0x40, 0, // max_readahead, flags (MAX_PAGES set)
            12, 0, 9, 0, 0, 0, 0x10, 0, // max_background, congestion, max_write 1 MiB
        ];
        let v = InitOutView::parse(&body).unwrap();
        assert_eq!(v.minor(), 22);
        assert_eq!(v.max_write(), 0x10_0000);
        assert_eq!(v.max_background(), 12);
        assert_eq!(v.congestion_threshold(), 9);
        assert_eq!(v.time_gran(), 0);
        assert_eq!(v.max_pages(), 0);
        assert!(v.is_compat());
        // max_pages is beyond the body: only max_write changes.
        assert_eq!(
            clamp_init_out(&mut body, 128 * 1024, 4),
            Ok((128 * 1024, 0))
        );
        assert_eq!(InitOutView::parse(&body).unwrap().max_write(), 128 * 1024);
    }

    #[test]
    fn compat_init_out_8_bytes() {
        let mut body = [7, 0, 0, 0, 4, 0, 0, 0];
        let v = InitOutView::parse(&body).unwrap();
        assert_eq!(
            (v.major(), v.minor(), v.max_write(), v.flags()),
            (7, 4, 0, 0)
        );
        assert_eq!(clamp_init_out(&mut body, 4096, 1), Ok((0, 0)));
        assert_eq!(body, [7, 0, 0, 0, 4, 0, 0, 0]);
    }

    #[test]
    fn init_out_bounds() {
        assert_eq!(
            InitOutView::parse(&[0; 7]),
            Err(ParseError::ShortBody {
                opcode: 26,
                need: 8,
                got: 7
            })
        );
        assert_eq!(
            InitOutView::parse(&[0; 65]),
            Err(ParseError::LongBody {
                opcode: 26,
                max: 64,
                got: 65
            })
        );
    }

    #[test]
    fn edit_sets_clears_and_lowers_never_raises() {
        let out = InitOut {
            major: 7,
            minor: 45,
            max_readahead: 128 * 1024,
            flags: (FUSE_INIT_EXT | FUSE_MAX_PAGES | FUSE_ASYNC_READ) as u32,
            flags2: (FUSE_PASSTHROUGH >> 32) as u32,
            max_write: 1 << 20,
            max_pages: 256,
            ..InitOut::default()
        };
        let mut body = [0u8; 64];
        body.copy_from_slice(out.as_bytes());
        let edit = InitOutEdit {
            clear: FUSE_ASYNC_READ | FUSE_PASSTHROUGH,
            set: FUSE_WRITEBACK_CACHE,
            max_write: 64 * 1024,
            max_readahead: 1 << 30,
            max_pages: 16,
        };
        let v = edit_init_out(&mut body, &edit).unwrap();
        assert_eq!(
            v.flags(),
            FUSE_INIT_EXT | FUSE_MAX_PAGES | FUSE_WRITEBACK_CACHE
        );
        assert_eq!(
            (v.max_write(), v.max_readahead(), v.max_pages_in_effect()),
            (64 * 1024, 128 * 1024, 16)
        );
        assert_eq!(v.minor(), 45);

        // Without FUSE_MAX_PAGES the field is left alone and not in effect.
        let mut body = [0u8; 64];
        body.copy_from_slice(
            InitOut {
                max_pages: 300,
                ..out
            }
            .as_bytes(),
        );
        let edit = InitOutEdit {
            clear: FUSE_MAX_PAGES,
            max_pages: 4,
            ..InitOutEdit::default()
        };
        let v = edit_init_out(&mut body, &edit).unwrap();
        assert_eq!((v.max_pages(), v.max_pages_in_effect()), (300, 0));
    }

    #[test]
    fn edit_of_short_forms_writes_only_their_bytes() {
        // 8 bytes: no flags, nothing to set.
        let mut body = [7, 0, 0, 0, 4, 0, 0, 0];
        let edit = InitOutEdit {
            set: FUSE_WRITEBACK_CACHE,
            max_write: 4096,
            ..InitOutEdit::default()
        };
        let v = edit_init_out(&mut body, &edit).unwrap();
        assert_eq!(v.flags(), 0);
        assert_eq!(body, [7, 0, 0, 0, 4, 0, 0, 0]);
        // 24 bytes: flags and max_write, no max_pages.
        let mut body = [0u8; 24];
        body[..4].copy_from_slice(&7u32.to_ne_bytes());
        body[4..8].copy_from_slice(&22u32.to_ne_bytes());
        body[20..24].copy_from_slice(&(1u32 << 20).to_ne_bytes());
        let v = edit_init_out(&mut body, &edit).unwrap();
        assert_eq!((v.flags(), v.max_write()), (FUSE_WRITEBACK_CACHE, 4096));
        assert_eq!(v.body_len(), 24);
    }

    #[test]
    fn init_opcode_constant() {
        assert_eq!(u32::from(Opcode::Init), INIT);
    }

    #[test]
    fn split_and_join() {
        let f = FUSE_INIT_EXT | FUSE_PASSTHROUGH | FUSE_ASYNC_READ;
        let (lo, hi) = split_init_flags(f);
        assert_eq!(join_flags(lo, hi), f);
        assert_eq!(
            join_flags(lo & !(FUSE_INIT_EXT as u32), hi),
            FUSE_ASYNC_READ
        );
        assert_eq!(negotiated_minor(45, 41), 41);
    }
}
