//! INIT, as the engine rewrites it: the kernel's offer (device-only
//! capabilities and `[init]`'s mask and writeback rule) and the backend's
//! answer (clamps to the arena and `[init]`'s caps, writeback forced or
//! denied); see `crate::init_rule` for the decisions.

use super::{Engine, EIO, IN_HEADER, OUT_HEADER};
use crate::action::{DecisionKind, Event, Inline, INLINE_MAX};
use crate::init_rule::limits_for;
use fuseproxy_protocol::flags::{FUSE_INIT_EXT, FUSE_OVER_IO_URING};
use fuseproxy_protocol::init::{edit_init_out, InitOutEdit, InitOutView};
use fuseproxy_protocol::{encode_reply, NodeId, Unique};

impl Engine {
    pub(super) fn rewrite_init(&mut self, unique: Unique, msg: &mut [u8]) {
        let body = &mut msg[IN_HEADER..];
        let Some((minor, n)) = self
            .rules
            .init
            .handle_offer(self.config.clear_init_flags, body)
        else {
            return;
        };
        self.negotiation = n;
        self.remember_init(msg);
        if n.masked | n.denied != 0 {
            self.stats.policy.init_rewrites += 1;
            self.note(DecisionKind::InitOfferRewritten, unique, NodeId(0), 1);
        }
        self.push_event(Event::InitOffered {
            minor,
            offered: n.offered,
            removed: n.device_only,
        });
    }

    /// The backend's answer to INIT, edited in place; or, when it must
    /// grow to carry `FUSE_OVER_IO_URING`, the answer to deliver instead.
    pub(super) fn negotiate(
        &mut self,
        unique: Unique,
        msg: &mut [u8],
        error: i32,
    ) -> Option<Inline> {
        if error != 0 {
            self.push_event(Event::InitFailed { errno: -error });
            return None;
        }
        let body = &mut msg[OUT_HEADER..];
        let arena = limits_for(self.config.max_message);
        let Ok(mut a) = self
            .rules
            .init
            .handle_answer(&mut self.negotiation, arena, body)
        else {
            self.push_event(Event::InitFailed { errno: EIO });
            return None;
        };
        let mut grown = None;
        if self.config.kernel_uring {
            if let Some((after, inline)) = accept_uring(self.negotiation.offered, unique, body) {
                a.after = after;
                grown = inline;
            }
        }
        self.stats.policy.init_rewrites += u64::from(a.changes);
        if a.changes > 0 {
            let changes = u64::from(a.changes);
            self.note(
                DecisionKind::InitAnswerRewritten,
                unique,
                NodeId(0),
                changes,
            );
        }
        self.minor = a.before.minor().max(1);
        self.remember_told(a.after);
        self.push_event(a.event(&self.negotiation));
        grown
    }
}

/// Sets `FUSE_OVER_IO_URING` (and `FUSE_INIT_EXT`, which makes the kernel
/// read bits 32..63) in the backend's INIT answer when the kernel offered
/// both; returns the answer as the kernel will read it, or `None` if it was
/// not offered. An answer too short to hold `flags2` (a daemon of protocol
/// 7.35 or older: libfuse 2 sends 24 bytes) is copied into a whole
/// `fuse_init_out`, also returned: the kernel zero-fills a short answer
/// anyway, so the fields it gains read as they did.
fn accept_uring(
    offered: u64,
    unique: Unique,
    body: &mut [u8],
) -> Option<(InitOutView, Option<Inline>)> {
    let want = FUSE_OVER_IO_URING | FUSE_INIT_EXT;
    if offered & want != want {
        return None;
    }
    let edit = InitOutEdit {
        set: want,
        ..InitOutEdit::default()
    };
    if body.len() >= FLAGS2_END {
        return Some((edit_init_out(body, &edit).ok()?, None));
    }
    let mut whole = [0u8; INIT_OUT_SIZE];
    whole[..body.len()].copy_from_slice(body);
    let after = edit_init_out(&mut whole, &edit).ok()?;
    let mut bytes = [0u8; INLINE_MAX];
    let n = encode_reply(&mut bytes, unique, &[&whole])?;
    Some((after, Some(Inline::new(bytes, n))))
}

/// Bytes of `fuse_init_out` up to the end of `flags2`, and in all.
const FLAGS2_END: usize = 40;
const INIT_OUT_SIZE: usize = 64;
