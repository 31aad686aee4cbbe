//! INIT, as the engine rewrites it: the kernel's offer (device-only
//! capabilities and `[init]`'s mask and writeback rule) and the backend's
//! answer (clamps to the arena and `[init]`'s caps, writeback forced or
//! denied); see `crate::init_rule` for the decisions.

use super::{Engine, EIO, IN_HEADER, OUT_HEADER};
use crate::action::{DecisionKind, Event};
use crate::init_rule::limits_for;
use fuseproxy_protocol::flags::{FUSE_INIT_EXT, FUSE_OVER_IO_URING};
use fuseproxy_protocol::init::{edit_init_out, InitOutEdit, InitOutView};
use fuseproxy_protocol::{NodeId, Unique};

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

    pub(super) fn negotiate(&mut self, unique: Unique, msg: &mut [u8], error: i32) {
        if error != 0 {
            self.push_event(Event::InitFailed { errno: -error });
            return;
        }
        let body = &mut msg[OUT_HEADER..];
        let arena = limits_for(self.config.max_message);
        let Ok(mut a) = self
            .rules
            .init
            .handle_answer(&mut self.negotiation, arena, body)
        else {
            self.push_event(Event::InitFailed { errno: EIO });
            return;
        };
        if self.config.kernel_uring {
            a.after = accept_uring(self.negotiation.offered, body).unwrap_or(a.after);
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
        self.push_event(a.event(&self.negotiation));
    }
}

/// Sets `FUSE_OVER_IO_URING` (and `FUSE_INIT_EXT`, which makes the kernel
/// read bits 32..63) in the backend's INIT answer when the kernel offered
/// both; returns the answer as the kernel will read it, or `None` if it was
/// not offered. An answer too short to hold `flags2` (a daemon of protocol
/// 7.35 or older) is left as it is: the returned flags then lack the bit,
/// and the proxy stays on read(2).
fn accept_uring(offered: u64, body: &mut [u8]) -> Option<InitOutView> {
    let want = FUSE_OVER_IO_URING | FUSE_INIT_EXT;
    if offered & want != want || body.len() < FLAGS2_END {
        return None;
    }
    let edit = InitOutEdit {
        set: want,
        ..InitOutEdit::default()
    };
    edit_init_out(body, &edit).ok()
}

/// Bytes of `fuse_init_out` up to the end of `flags2`.
const FLAGS2_END: usize = 40;
