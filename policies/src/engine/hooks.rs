//! Where the policy's rules meet the engine: the fixed points at which a
//! request, a reply or the clock is shown to them.
//!
//! Each rule decides in its own module ([`crate::deny`], [`crate::fault`],
//! [`crate::cache`], [`crate::paths`], [`crate::deadlines`],
//! [`crate::init_rule`]); this file only calls them in order and carries
//! out what they decide with the engine's own means (answer, hold, rewrite
//! in place, count).

use fuseproxy_protocol::abi::{
    fuse_rec_align, Direntplus, EntryOut, ForgetIn, InHeader, ReleaseIn,
    FUSE_NAME_OFFSET_DIRENTPLUS,
};
use fuseproxy_protocol::{encode, NodeId, Opcode, Operation, Request, Unique};
use zerocopy::{FromBytes, IntoBytes};

use super::{Engine, ACTION_QUEUE, IN_HEADER, OUT_HEADER};
use crate::action::{Action, DecisionKind, Event, Inline, SlotId, INLINE_MAX};
use crate::deadlines::{self, Gone, Undo};
use crate::fault::FaultDecision;
use crate::inflight::Entry;
use crate::init_rule;
use crate::paths::name_hash;
use crate::{Duration, Instant, Rules};

const ENOENT: i32 = 2;

/// A RENAME waiting for its reply, so that the path table can follow it.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingRename {
    unique: Unique,
    olddir: u64,
    old: u64,
    newdir: u64,
    new: u64,
}

/// RENAMEs in flight the path table follows at most; beyond it a rename is
/// still forwarded, and the table learns the node's new name at its next
/// LOOKUP.
pub(super) const MAX_RENAMES: usize = 64;

/// What the request rules decided.
pub(super) enum Verdict {
    /// Go on (possibly held until `not_before`), with a `[deadlines]`
    /// limit and errno if one applies.
    Pass {
        not_before: Option<Instant>,
        deadline: Option<(Duration, i32)>,
    },
    /// Answered and freed; nothing else to do.
    Done,
}

impl Engine {
    /// Replaces the rules. The caller has checked
    /// [`Rules::reload_conflict`]; requests read from now on see the new
    /// rules, requests already held or in flight keep what was decided for
    /// them. Returns the old rules, to be dropped off the forwarding path.
    pub fn set_rules(&mut self, rules: Rules) -> Rules {
        if rules.fault_seed != self.rules.fault_seed {
            self.rng = crate::fault::Rng::new(rules.fault_seed);
        }
        self.paths.invalidate();
        self.stats.policy.reloads += 1;
        std::mem::replace(&mut self.rules, rules)
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// `deny`, `fault` and `deadlines` for a request; notes what `paths`
    /// needs from it.
    pub(super) fn request_rules(
        &mut self,
        now: Instant,
        req: &Request<'_>,
        slot: SlotId,
        aux3: &mut u64,
    ) -> Verdict {
        let (unique, opcode, node) = (req.unique(), req.opcode(), req.nodeid());
        let tracking = self.paths.capacity() > 0;
        // One look at the body for what the path table needs of it.
        let mut rename = None;
        match req.operation() {
            Operation::Lookup { name }
            | Operation::Mknod { name, .. }
            | Operation::Mkdir { name, .. }
            | Operation::Symlink { name, .. }
            | Operation::Link { name, .. }
            | Operation::Create { name, .. }
                if tracking =>
            {
                // Only a path table learns from it: no hashing otherwise.
                *aux3 = name_hash(name)
            }
            Operation::Rename { arg, old, new } if tracking => {
                rename = Some((arg.newdir, old, new));
            }
            Operation::Rename2 { arg, old, new } if tracking => {
                rename = Some((arg.newdir, old, new));
            }
            Operation::Forget(_) => self.paths.forget(node.0),
            Operation::BatchForget { items, .. } => {
                for f in items {
                    self.paths.forget(f.nodeid);
                }
            }
            _ => {}
        }
        let scope = self.paths.scope(node.0, &self.rules.paths);
        let rules = self.rules.scope(scope);
        if let Some((errno, read_only)) = rules.deny.decide_why(req) {
            self.stats.policy.denied += 1;
            let kind = if read_only {
                DecisionKind::ReadOnly
            } else {
                DecisionKind::Denied
            };
            self.answer_error(unique, node, errno, kind);
            self.actions.push_back(Action::Free(slot));
            return Verdict::Done;
        }
        let not_before = match rules.fault.decide(opcode, &mut self.rng) {
            FaultDecision::Pass => None,
            FaultDecision::Fail(errno) => {
                self.stats.policy.faulted += 1;
                self.answer_error(unique, node, errno, DecisionKind::Faulted);
                self.actions.push_back(Action::Free(slot));
                return Verdict::Done;
            }
            FaultDecision::Delay(d) => {
                self.stats.policy.delayed += 1;
                Some(now + d)
            }
        };
        let deadline = match rules.deadlines.limit(opcode) {
            Some(d) if !deadlines::is_exempt(opcode) => Some((d, rules.deadlines.errno)),
            _ => None,
        };
        if let Some(t) = not_before {
            self.note(DecisionKind::Delayed, unique, node, (t - now).as_nanos());
        }
        if let Some((newdir, old, new)) = rename {
            if !self.rules.paths.is_empty() && self.renames.len() < MAX_RENAMES {
                self.renames.push(PendingRename {
                    unique,
                    olddir: node.0,
                    old: name_hash(old),
                    newdir,
                    new: name_hash(new),
                });
            }
        }
        Verdict::Pass {
            not_before,
            deadline,
        }
    }

    /// OPEN, CREATE or TMPFILE on its way to the backend: under writeback
    /// the proxy forced on it, opened for reading and without `O_APPEND`
    /// (see [`crate::init_rule`]).
    pub(super) fn writeback_open(&mut self, unique: Unique, node: NodeId, msg: &mut [u8]) {
        if self.negotiation.is_writeback_forced()
            && init_rule::rewrite_open_flags(&mut msg[IN_HEADER..])
        {
            self.stats.policy.writeback_opens += 1;
            self.note(DecisionKind::WritebackOpen, unique, node, 0);
        }
    }

    /// A reply to one of the kernel's requests: `paths` learns from it,
    /// `cache` rewrites it. Returns false when the rules answered the
    /// request themselves (the reply's slot is then freed by the caller).
    pub(super) fn reply_rules(&mut self, entry: &Entry, error: i32, msg: &mut [u8]) -> bool {
        if matches!(entry.opcode, Opcode::Rename | Opcode::Rename2) {
            if let Some(i) = self.renames.iter().position(|r| r.unique == entry.unique) {
                let r = self.renames.swap_remove(i);
                if error == 0 {
                    self.paths.renamed(r.olddir, r.old, r.newdir, r.new);
                }
            }
        }
        let node = entry.node.0;
        if error == -ENOENT && entry.opcode == Opcode::Lookup {
            let scope = self.paths.scope(node, &self.rules.paths);
            if let Some(t) = self.rules.scope(scope).cache.negative() {
                let out = EntryOut {
                    entry_valid: t.as_nanos() / 1_000_000_000,
                    entry_valid_nsec: (t.as_nanos() % 1_000_000_000) as u32,
                    ..EntryOut::default()
                };
                let mut bytes = [0u8; INLINE_MAX];
                if let Some(n) = encode::encode_reply(&mut bytes, entry.unique, &[out.as_bytes()]) {
                    self.stats.policy.negative_entries += 1;
                    self.note(DecisionKind::NegativeEntry, entry.unique, entry.node, 0);
                    self.actions
                        .push_back(Action::Answer(Inline::new(bytes, n)));
                    return false;
                }
            }
            return true;
        }
        if error != 0 {
            return true;
        }
        let Some(body) = msg.get_mut(OUT_HEADER..) else {
            return true;
        };
        let mut scope = self.paths.scope(node, &self.rules.paths);
        match entry.opcode {
            Opcode::Lookup
            | Opcode::Mknod
            | Opcode::Mkdir
            | Opcode::Symlink
            | Opcode::Link
            | Opcode::Create => {
                if let Ok((e, _)) = EntryOut::ref_from_prefix(body) {
                    let child = e.nodeid;
                    self.paths.learn_hashed(node, entry.aux[3], child);
                    scope = self.paths.scope(child, &self.rules.paths);
                }
            }
            Opcode::Readdirplus if self.paths.capacity() > 0 => {
                self.learn_listing(node, body);
            }
            _ => {}
        }
        let changed = self.rules.scope(scope).cache.rewrite(entry.opcode, body);
        if changed > 0 {
            self.stats.policy.cache_changed += u64::from(changed);
            let n = u64::from(changed);
            self.note(DecisionKind::CacheRewritten, entry.unique, entry.node, n);
        }
        true
    }

    /// READDIRPLUS names nodes too: the path table learns each.
    fn learn_listing(&mut self, dir: u64, body: &[u8]) {
        let mut at = 0;
        while at + FUSE_NAME_OFFSET_DIRENTPLUS <= body.len() {
            let Ok((d, _)) = Direntplus::ref_from_prefix(&body[at..]) else {
                break;
            };
            let namelen = d.dirent.namelen as usize;
            let start = at + FUSE_NAME_OFFSET_DIRENTPLUS;
            if let Some(name) = body.get(start..start + namelen) {
                if d.entry_out.nodeid != 0 && name != b"." && name != b".." {
                    self.paths.learn(dir, name, d.entry_out.nodeid);
                }
            }
            at += fuse_rec_align(FUSE_NAME_OFFSET_DIRENTPLUS + namelen);
        }
    }

    /// A RENAME that will never be answered (bad reply, send failure,
    /// backend gone) no longer needs following.
    pub(super) fn rename_dropped(&mut self, unique: Unique) {
        if let Some(i) = self.renames.iter().position(|r| r.unique == unique) {
            self.renames.swap_remove(i);
        }
    }

    /// Whether a held request with `not_before` may go at `now`.
    pub(super) fn is_due(not_before: Option<Instant>, now: Instant) -> bool {
        not_before.is_none_or(|t| t <= now)
    }

    /// `[deadlines]`: answers the requests whose time is up (see
    /// [`crate::deadlines`]). A request still held is dropped with its slot;
    /// one already sent is remembered for its late reply. Stops while the
    /// action queue is half full; `poll_timeout` then still says it is due.
    pub(super) fn expire_deadlines(&mut self, now: Instant) {
        while self.actions.len() < ACTION_QUEUE / 2 {
            let Some((entry, errno)) = self.inflight.pop_expired(now) else {
                break;
            };
            self.readers_done(&entry);
            let held = self.held.iter().position(|h| h.unique == entry.unique);
            if let Some(i) = held {
                let h = self.held.remove(i);
                self.actions.push_back(Action::Free(h.slot));
            } else {
                self.expired.push(Gone {
                    unique: entry.unique,
                    opcode: entry.opcode,
                    node: entry.node,
                });
                self.may_have_changed(entry.opcode, &entry.aux);
            }
            self.stats.policy.deadlines_hit += 1;
            let kind = DecisionKind::DeadlineExpired;
            self.answer_error(entry.unique, entry.node, errno, kind);
            self.push_event(Event::DeadlineExpired {
                unique: entry.unique,
                opcode: entry.opcode,
                node: entry.node,
                errno,
                sent: held.is_none(),
            });
        }
    }

    /// A reply no request in flight claims: if it answers one that expired,
    /// it is dropped and counted, and a success that left a lookup or an
    /// open handle in the backend is undone. Returns `false` for a reply
    /// that names no expired request either (the caller's slot is freed in
    /// both cases).
    pub(super) fn late_reply(&mut self, unique: Unique, error: i32, msg: &[u8]) -> bool {
        let Some(gone) = self.expired.take(unique) else {
            return false;
        };
        self.stats.policy.late_replies += 1;
        self.note(DecisionKind::LateReplyDropped, unique, gone.node, 0);
        let mut undone = 0;
        if error == 0 {
            self.may_have_changed(gone.opcode, &[0; 4]);
            let body = msg.get(OUT_HEADER..).unwrap_or(&[]);
            let ending = self.destroy_pending.is_some() || self.destroy_done;
            for undo in deadlines::undo_for(gone.opcode, gone.node, body)
                .into_iter()
                .flatten()
                .filter(|_| !ending)
            {
                let (opcode, node, nlookup_or_fh, reply) = match undo {
                    Undo::Forget(node) => (Opcode::Forget, node, 1, false),
                    Undo::Release { opcode, node, fh } => (opcode, node, fh, true),
                };
                let header = InHeader {
                    opcode: opcode.into(),
                    unique: self.next_injected,
                    nodeid: node.0,
                    ..InHeader::default()
                };
                let sent = if reply {
                    let arg = ReleaseIn {
                        fh: nlookup_or_fh,
                        ..ReleaseIn::default()
                    };
                    self.inject(header, arg.as_bytes(), true)
                } else {
                    let arg = ForgetIn {
                        nlookup: nlookup_or_fh,
                    };
                    self.inject(header, arg.as_bytes(), false)
                };
                undone += u8::from(sent.is_some());
            }
        }
        self.push_event(Event::LateReply {
            unique,
            opcode: gone.opcode,
            error,
            undone,
        });
        true
    }

    /// A request that may change the backend's state expired, or its late
    /// success came: the backend may have applied it at any time without the
    /// caches seeing its reply, so what they hold for local time answers is
    /// no longer known to be true. `aux` is the entry's (names it changes).
    fn may_have_changed(&mut self, opcode: Opcode, aux: &[u64; 4]) {
        if deadlines::is_read_only(opcode) || !self.async_times() {
            return;
        }
        match opcode {
            Opcode::Unlink
            | Opcode::Create
            | Opcode::Mknod
            | Opcode::Mkdir
            | Opcode::Symlink
            | Opcode::Link => self.names.remove(aux[0]),
            Opcode::Rename | Opcode::Rename2 => {
                self.names.remove(aux[0]);
                self.names.remove(aux[1]);
            }
            _ => {}
        }
        self.stats.times.cache_clears += 1;
        self.attrs.clear();
    }
}
