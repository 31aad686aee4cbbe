//! The INIT rule: what the proxy removes from the kernel's offer, and the
//! limits it puts on the backend's answer.
//!
//! The backend talks to a socket, not to /dev/fuse. Capabilities that work
//! only on the real device must not be negotiated, or the kernel and the
//! backend would each believe the other does something neither can.
//!
//! On top of that, `[init]` ([`InitRule`]):
//! - `mask`: the named capabilities are removed from the kernel's offer, so
//!   the backend never sees them.
//! - `writeback_cache = "deny"`: `FUSE_WRITEBACK_CACHE` is removed from the
//!   offer. `"force"`: if the kernel offered it and the backend's answer
//!   lacks it, the proxy sets it in the answer the kernel gets.
//! - `max_write`, `max_readahead`, `max_pages`: the backend's answer is
//!   lowered to them, never raised (`max_pages` only where `FUSE_MAX_PAGES`
//!   is in effect; the kernel's default of 32 pages is not the proxy's to
//!   change). `max_write` is also bounded by the arena's slots, as always.
//!
//! A flag the proxy removed from the offer is also removed from the answer,
//! should the backend accept it anyway (libfuse never does; the kernel
//! would take it).
//!
//! # Forced writeback
//! Under writeback caching the kernel reads pages of files opened
//! write-only (to fill the rest of a page a write covers in part) and does
//! `O_APPEND` itself, sending WRITEs at the offsets it computed. A backend
//! that asked for writeback prepares for both (libfuse's `passthrough_ll`
//! opens `O_WRONLY` as `O_RDWR` and drops `O_APPEND`); one that did not
//! would fail those READs with EBADF, and its `O_APPEND` descriptor would
//! put every WRITE at its own end of file. So once writeback is forced,
//! every OPEN, CREATE and TMPFILE sent to the backend has `O_WRONLY` made
//! `O_RDWR` and `O_APPEND` removed ([`rewrite_open_flags`]). As with
//! libfuse's example, opening for reading needs read permission on the
//! backing file: a write-only file (mode 0200) cannot be opened for writing
//! by a backend that is not root, and appends lose their atomicity against
//! writers that bypass the mount.
//!
//! Nothing else needs the backend's knowledge: WRITEs from the page cache
//! carry `FUSE_WRITE_CACHE` and the handle of some writable open of the
//! file, both ordinary to a backend that does `pwrite` on the handle; the
//! mtime/ctime the kernel then keeps itself come as time-only SETATTRs,
//! which the `[times]` rule answers or forwards like any other.
//!
//! INIT happens once per mount: a reload changes none of this for the
//! running session, and forced writeback stays in force until the end.

use fuseproxy_protocol::flags::{
    FUSE_OVER_IO_URING, FUSE_PASSTHROUGH, FUSE_SPLICE_MOVE, FUSE_SPLICE_READ, FUSE_SPLICE_WRITE,
    FUSE_WRITEBACK_CACHE,
};
use fuseproxy_protocol::init::{edit_init_out, rewrite_init_in_flags, InitInView, InitOutEdit};
use fuseproxy_protocol::{InitOutView, ParseError};

use crate::action::Event;
use crate::config::Writeback;
use crate::rules::InitRule;

/// INIT flags that need the backend to hold the real device.
///
/// - `FUSE_PASSTHROUGH` (7.40): the backend registers backing files with
///   `FUSE_DEV_IOC_BACKING_OPEN` on /dev/fuse; an ioctl on the socket fails.
/// - `FUSE_OVER_IO_URING` (7.42): requests move to io_uring queues registered
///   on /dev/fuse, bypassing the proxy entirely.
/// - `FUSE_SPLICE_WRITE`/`MOVE`/`READ`: splice to or from /dev/fuse; on the
///   socket they mean nothing, and the proxy reads with read(2) by design.
pub const DEVICE_ONLY_FLAGS: u64 =
    FUSE_PASSTHROUGH | FUSE_OVER_IO_URING | FUSE_SPLICE_WRITE | FUSE_SPLICE_MOVE | FUSE_SPLICE_READ;

/// Room a request needs besides its data: `fuse_in_header` + `fuse_write_in`.
pub const REQUEST_OVERHEAD: usize = 40 + 40;

const PAGE: usize = 4096;

/// The largest `max_write` and `max_pages` whose messages fit in `max_message`
/// bytes (one arena slot): data pages plus headers.
pub fn limits_for(max_message: usize) -> (u32, u16) {
    let pages = max_message.saturating_sub(REQUEST_OVERHEAD) / PAGE;
    let pages = pages.min(u16::MAX as usize);
    ((pages * PAGE).min(u32::MAX as usize) as u32, pages as u16)
}

/// `open(2)` flags as the kernel passes them (asm-generic values).
const O_ACCMODE: u32 = 0o3;
const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
const O_APPEND: u32 = 0o2000;

/// What the proxy did to one session's INIT negotiation. The engine keeps
/// it from the kernel's INIT to the end of the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Negotiation {
    /// Flags the kernel offered (`flags | flags2 << 32`), before any change.
    pub offered: u64,
    /// Removed from the offer because they need the real device.
    pub device_only: u64,
    /// Removed from the offer by `mask`.
    pub masked: u64,
    /// Removed from the offer by `writeback_cache = "deny"`.
    pub denied: u64,
    /// Set by the proxy in the backend's answer (`writeback_cache = "force"`).
    pub forced: u64,
}

impl Negotiation {
    /// Every flag the proxy took out of the kernel's offer.
    pub fn removed(&self) -> u64 {
        self.device_only | self.masked | self.denied
    }

    /// Whether the kernel runs with writeback caching the backend did not
    /// ask for: OPEN, CREATE and TMPFILE then go through
    /// [`rewrite_open_flags`].
    pub fn is_writeback_forced(&self) -> bool {
        self.forced & FUSE_WRITEBACK_CACHE != 0
    }
}

/// The backend's INIT answer before and after the proxy's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// As the backend sent it.
    pub before: InitOutView,
    /// As the kernel gets it.
    pub after: InitOutView,
    /// Changes made to the answer (for `init_rewrites`): one per kind
    /// (flags forced, flags stripped, each value lowered by a cap), the
    /// arena's own limit not counted.
    pub changes: u32,
}

impl Answer {
    /// The event that reports the negotiation.
    pub fn event(&self, n: &Negotiation) -> Event {
        let (before, after) = (self.before, self.after);
        Event::Negotiated {
            major: before.major(),
            minor: before.minor(),
            max_write: after.max_write(),
            backend_max_write: before.max_write(),
            max_readahead: after.max_readahead(),
            backend_max_readahead: before.max_readahead(),
            max_pages: after.max_pages_in_effect(),
            backend_max_pages: before.max_pages_in_effect(),
            offered: n.offered,
            answered: before.flags(),
            flags: after.flags(),
            masked: n.masked,
            denied: n.denied,
            forced: n.forced,
        }
    }
}

impl InitRule {
    /// The flags this rule takes out of the kernel's offer.
    pub fn offer_clear(&self) -> u64 {
        let deny = match self.writeback {
            Writeback::Deny => FUSE_WRITEBACK_CACHE,
            Writeback::Backend | Writeback::Force => 0,
        };
        self.mask | deny
    }

    /// The kernel's INIT request body: removes `device_only` and this rule's
    /// flags from the offer, in place. Returns the protocol minor and what
    /// was done, or `None` (body unchanged) if it is shorter than any INIT.
    pub fn handle_offer(&self, device_only: u64, body: &mut [u8]) -> Option<(u32, Negotiation)> {
        let view = InitInView::parse(body).ok()?;
        let offered = view.flags();
        let removed = rewrite_init_in_flags(body, device_only | self.offer_clear()).ok()?;
        let device_only = removed & device_only;
        let denied = removed & !device_only & self.offer_clear() & !self.mask;
        Some((
            view.minor(),
            Negotiation {
                offered,
                device_only,
                masked: removed & !device_only & self.mask,
                denied,
                forced: 0,
            },
        ))
    }

    /// The backend's INIT reply body: strips what was removed from the
    /// offer, forces writeback if asked, applies the caps together with the
    /// arena's limits (`arena`: the largest `max_write` and `max_pages` a
    /// slot carries). Records what it forced in `n`.
    ///
    /// # Errors
    /// As [`InitOutView::parse`]; the body is then unchanged.
    pub fn handle_answer(
        &self,
        n: &mut Negotiation,
        arena: (u32, u16),
        body: &mut [u8],
    ) -> Result<Answer, ParseError> {
        let before = InitOutView::parse(body)?;
        let answered = before.flags();
        let force = self.writeback == Writeback::Force
            && n.offered & FUSE_WRITEBACK_CACHE != 0
            && answered & FUSE_WRITEBACK_CACHE == 0;
        let cap = |cap: u32| if cap == 0 { u32::MAX } else { cap };
        let edit = InitOutEdit {
            clear: n.removed(),
            set: if force { FUSE_WRITEBACK_CACHE } else { 0 },
            max_write: arena.0.min(cap(self.max_write)),
            max_readahead: cap(self.max_readahead),
            max_pages: if self.max_pages == 0 {
                arena.1
            } else {
                arena.1.min(self.max_pages)
            },
        };
        let after = edit_init_out(body, &edit)?;
        n.forced = after.flags() & !answered;

        // What the arena alone would have left, to count only the rule's part.
        let arena_write = before.max_write().min(arena.0);
        let arena_pages = before.max_pages_in_effect().min(arena.1);
        let changes = [
            n.forced != 0,
            answered & n.removed() != 0,
            after.max_write() < arena_write,
            after.max_readahead() < before.max_readahead(),
            after.max_pages_in_effect() < arena_pages,
        ];
        Ok(Answer {
            before,
            after,
            changes: changes.iter().filter(|c| **c).count() as u32,
        })
    }
}

/// Rewrites, in place, the `open(2)` flags at the start of an OPEN, CREATE
/// or TMPFILE body (`fuse_open_in.flags`, `fuse_create_in.flags`) for a
/// backend under writeback it did not ask for: `O_WRONLY` becomes `O_RDWR`
/// and `O_APPEND` goes (see the module's doc). Returns whether the flags
/// changed; a body shorter than the flags is left alone.
pub fn rewrite_open_flags(body: &mut [u8]) -> bool {
    let Some(field) = body.get_mut(..4) else {
        return false;
    };
    let flags = u32::from_ne_bytes([field[0], field[1], field[2], field[3]]);
    let mut new = flags & !O_APPEND;
    if new & O_ACCMODE == O_WRONLY {
        new = (new & !O_ACCMODE) | O_RDWR;
    }
    field.copy_from_slice(&new.to_ne_bytes());
    new != flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_of_1mib_plus_a_page_carries_1mib_writes() {
        assert_eq!(limits_for(1024 * 1024 + 4096), (1024 * 1024, 256));
        assert_eq!(limits_for(1024 * 1024), (1024 * 1024 - 4096, 255));
    }

    #[test]
    fn open_flags_for_forced_writeback() {
        let rewrite = |flags: u32| {
            let mut body = [0u8; 8];
            body[..4].copy_from_slice(&flags.to_ne_bytes());
            let changed = rewrite_open_flags(&mut body);
            (u32::from_ne_bytes(body[..4].try_into().unwrap()), changed)
        };
        const O_TRUNC: u32 = 0o1000;
        const O_CREAT: u32 = 0o100;
        assert_eq!(rewrite(O_WRONLY | O_APPEND), (O_RDWR, true));
        assert_eq!(rewrite(O_WRONLY | O_TRUNC), (O_RDWR | O_TRUNC, true));
        assert_eq!(
            rewrite(O_RDWR | O_APPEND | O_CREAT),
            (O_RDWR | O_CREAT, true)
        );
        assert_eq!(rewrite(O_RDWR), (O_RDWR, false));
        assert_eq!(rewrite(0), (0, false));
        assert!(!rewrite_open_flags(&mut [1, 0, 0]));
    }
}
