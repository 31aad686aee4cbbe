//! The time-update rule's side of the engine: time-only SETATTRs answered
//! from the attribute cache and kept per node (`crate::times`), flushed as
//! SETATTRs of the proxy's own (retried under `on_flush_error = "retry"`),
//! the barriers that keep every other request on a node behind its times,
//! and the bookkeeping that keeps the cache true to what the backend says
//! (sizes, link counts, names) so that local answers never invent anything.
//!
//! The engine calls these at its fixed points: a request read
//! (`try_acknowledge`, `barrier`, `note_request`, `note_readers`,
//! `defer_forget`), a reply received (`observe_reply`, `flush_answered`),
//! and a timer (`flush_node` at a record's due time).

use fuseproxy_protocol::abi::{
    AttrOut, Direntplus, EntryOut, ForgetIn, ForgetOne, InHeader, SetattrIn,
    FUSE_NAME_OFFSET_DIRENTPLUS,
};
use fuseproxy_protocol::{encode, NodeId, Opcode, Operation, Request, Unique};
use zerocopy::{FromBytes, IntoBytes};

use super::{Engine, ENOENT, IN_HEADER, OUT_HEADER};
use crate::action::{Action, DecisionKind, Event, Inline, INLINE_MAX};
use crate::attr_cache::Cached;
use crate::inflight::Entry;
use crate::names::{self, Known};
use crate::times::{Retry, Stamps, Times, Timespec};
use crate::Instant;

/// open(2)'s O_TRUNC, as the kernel passes it in `fuse_open_in.flags`.
const O_TRUNC: u32 = 0o1000;
/// A stale file handle: what sshfs answers for a path that is gone.
const ESTALE: i32 = 116;
/// renameat2(2)'s RENAME_EXCHANGE.
const RENAME_EXCHANGE: u32 = 2;

impl Engine {
    /// Answers a time-only SETATTR from the cache and records it as pending.
    /// `false` when it must go to the backend instead.
    pub(super) fn try_acknowledge(
        &mut self,
        now: Instant,
        wall: Timespec,
        unique: Unique,
        node: NodeId,
        caller: u32,
        t: &Times,
    ) -> bool {
        let Some(cached) = self.attrs.get(node).copied() else {
            return false;
        };
        // Without default_permissions the backend is the one that checks;
        // vouch only for what utimensat allows anyone with explicit times:
        // root, or the owner.
        let trusted = self.config.default_permissions || self.rules.times.trust_any;
        if !trusted && caller != 0 && caller != cached.attr.uid {
            return false;
        }
        // After a write the backend's mtime is its own clock's: only an
        // update that sets mtime leaves nothing unknown in the answer (ctime
        // is the kernel's when it sends one, and "now" otherwise, as the
        // backend will make it).
        if cached.times_unknown && t.stamps.mtime.is_none() {
            return false;
        }
        // The record keeps the rules in force now: a reload changes neither
        // its deadline nor its retries.
        let rule = &self.rules.times;
        let retry = Retry::new(rule.retries, rule.retry_backoff);
        let Some(coalesced) = self.times.acknowledge(now + rule.max_delay, retry, node, t) else {
            return false;
        };
        self.stats.times.acked_locally += 1;
        self.note(DecisionKind::TimesAcked, unique, node, 0);
        if coalesced {
            self.stats.times.coalesced += 1;
            self.note(DecisionKind::TimesCoalesced, unique, node, 0);
        }
        let mut attr = cached.attr;
        set_times(&mut attr, &t.stamps);
        if t.stamps.ctime.is_none() {
            (attr.ctime, attr.ctimensec) = (wall.0 as u64, wall.1);
        }
        self.attrs.insert(
            node,
            Cached {
                attr,
                times_unknown: false,
                ..cached
            },
        );
        // Attributes the proxy adjusted itself are good enough for this
        // answer, not for the kernel to keep: it asks again on its next stat.
        let (attr_valid, attr_valid_nsec) = if cached.derived {
            (0, 0)
        } else {
            (cached.attr_valid, cached.attr_valid_nsec)
        };
        let out = AttrOut {
            attr_valid,
            attr_valid_nsec,
            dummy: 0,
            attr,
        };
        let mut bytes = [0u8; INLINE_MAX];
        if let Some(n) = encode::encode_reply(&mut bytes, unique, &[out.as_bytes()]) {
            self.actions
                .push_back(Action::Answer(Inline::new(bytes, n)));
        }
        while self.times.pending() > self.config.max_pending {
            let Some((oldest, _)) = self.times.oldest() else {
                break;
            };
            self.flush_node(oldest);
        }
        true
    }

    /// The generation a request on `node` must wait for, flushing what is
    /// pending (now, or as soon as the flush in flight is answered).
    pub(super) fn barrier(&mut self, node: NodeId) -> Option<u32> {
        let gen = self.times.get(node)?.barrier_gen()?;
        self.flush_node(node);
        Some(gen)
    }

    /// Sends `node`'s pending times now, or marks them urgent when a flush
    /// for the node is already in flight.
    pub(super) fn flush_node(&mut self, node: NodeId) {
        let unique = Unique(self.next_injected);
        let Some((t, retry)) = self.times.start_flush(node, unique) else {
            self.times.make_urgent(node);
            return;
        };
        let attempt = u64::from(retry.sent);
        if retry.sent > 1 {
            self.stats.policy.flush_retries += 1;
            self.note(DecisionKind::FlushRetry, unique, node, attempt);
        }
        let arg = SetattrIn {
            valid: t.valid(),
            fh: t.fh.unwrap_or(0),
            lock_owner: t.lock_owner.unwrap_or(0),
            atime: t.stamps.atime.map_or(0, |a| a.0 as u64),
            atimensec: t.stamps.atime.map_or(0, |a| a.1),
            mtime: t.stamps.mtime.map_or(0, |m| m.0 as u64),
            mtimensec: t.stamps.mtime.map_or(0, |m| m.1),
            ctime: t.stamps.ctime.map_or(0, |c| c.0 as u64),
            ctimensec: t.stamps.ctime.map_or(0, |c| c.1),
            ..SetattrIn::default()
        };
        let header = InHeader {
            opcode: Opcode::Setattr.into(),
            unique: unique.0,
            nodeid: node.0,
            uid: t.uid,
            gid: t.gid,
            pid: t.pid,
            ..InHeader::default()
        };
        self.stats.times.flushes += 1;
        self.note(DecisionKind::FlushSent, unique, node, attempt);
        // What a retry needs besides the times the node's state keeps rides
        // in the flush's in-flight entry (see `resend_times`).
        let aux = [
            t.fh.unwrap_or(0),
            t.lock_owner.unwrap_or(0),
            u64::from(t.uid) | u64::from(t.gid) << 32,
            u64::from(t.pid) | u64::from(retry.backoff_us) << 32,
        ];
        self.inject_with(header, arg.as_bytes(), Some(aux));
    }

    pub(super) fn flush_all(&mut self) {
        while let Some((node, _)) = self.times.oldest() {
            self.flush_node(node);
        }
    }

    /// A FORGET for a node with times pending or being flushed waits until
    /// they are applied: the backend may drop the node on FORGET. Returns
    /// whether it was deferred. Otherwise it goes now, and the node's state
    /// (kept for readers, or with readers in flight) ends with it: the
    /// backend may give the id to another file, which must not get this
    /// one's times (the caller then calls [`forgotten`](Self::forgotten)).
    pub(super) fn defer_forget(&mut self, node: NodeId, nlookup: u64) -> bool {
        let Some(e) = self.times.get(node) else {
            return false;
        };
        if e.pending.is_none() && e.flushing.is_none() {
            self.end_state(node);
            return false;
        }
        // No caller waits for a FORGET: a retry waiting for its back-off
        // keeps waiting (the kernel forgets idle inodes at any time; that
        // must not use up a refused flush's retries in a burst).
        let retry_waits = e.pending.is_some() && e.pending_retry.sent > 0;
        if !retry_waits {
            self.flush_node(node);
        }
        if let Some(e) = self.times.get_mut(node) {
            e.deferred_forget += nlookup;
        }
        true
    }

    /// Drops `node`'s state, whatever readers it was kept for: the node is
    /// forgotten, and nothing of it may carry over to its id's next life.
    /// (A listing still in flight that the backend read before it applied
    /// the node's last flush then shows the node's old times: the price of
    /// never showing them on a new file with the same id, and of a FORGET
    /// that no stream of listings holds back.)
    fn end_state(&mut self, node: NodeId) {
        if let Some(e) = self.times.remove(node) {
            if e.kept {
                if let Some(i) = self.kept.iter().position(|n| *n == node) {
                    self.kept.swap_remove(i);
                }
            }
        }
    }

    /// After a FORGET was passed on (or deferred): when no node has any
    /// state left, what waits for all of them may go.
    pub(super) fn forgotten(&mut self) {
        if self.times.is_empty() {
            self.release_held();
            if self.shutting_down {
                self.send_destroy_when_idle();
            }
        }
    }

    /// Removes from a BATCH_FORGET (in place) the nodes whose forgets must
    /// wait; returns how many entries remain.
    pub(super) fn filter_batch_forget(&mut self, msg: &mut [u8]) -> usize {
        let body_at = IN_HEADER + 8;
        let Some(count) = msg.get(IN_HEADER..IN_HEADER + 4) else {
            return 0;
        };
        let count = u32::from_ne_bytes(count.try_into().unwrap_or([0; 4])) as usize;
        let mut kept = 0;
        for i in 0..count {
            let at = body_at + i * 16;
            let Ok((one, _)) = ForgetOne::read_from_prefix(&msg[at..]) else {
                break;
            };
            self.attrs.remove(NodeId(one.nodeid));
            if !self.defer_forget(NodeId(one.nodeid), one.nlookup) {
                let to = body_at + kept * 16;
                msg.copy_within(at..at + 16, to);
                kept += 1;
            }
        }
        if kept != count {
            msg[IN_HEADER..IN_HEADER + 4].copy_from_slice(&(kept as u32).to_ne_bytes());
            let len = (body_at + kept * 16) as u32;
            msg[..4].copy_from_slice(&len.to_ne_bytes());
        }
        kept
    }

    /// What a forwarded request may change of the attributes the cache
    /// holds, noted before it goes; the reply confirms it
    /// ([`observe_reply`](Self::observe_reply)). Returns the entry's `aux`.
    pub(super) fn note_request(&mut self, req: &Request<'_>) -> [u64; 4] {
        let node = req.nodeid();
        match req.operation() {
            Operation::Write { arg, .. } => [arg.offset, 0, 0, 0],
            Operation::Open(arg) => [u64::from(arg.flags & O_TRUNC != 0), 0, 0, 0],
            Operation::Lookup { name } => [names::key(node.0, name), 0, 0, 0],
            // The directory changes (size, times, link count): its cached
            // attributes go; the entry's key identifies the reply's node.
            Operation::Create { name, .. }
            | Operation::Mknod { name, .. }
            | Operation::Mkdir { name, .. }
            | Operation::Link { name, .. }
            | Operation::Symlink { name, .. }
            | Operation::Unlink { name, .. } => {
                self.attrs.remove(node);
                [names::key(node.0, name), 0, 0, 0]
            }
            Operation::Rmdir { name } => {
                self.attrs.remove(node);
                let k = names::key(node.0, name);
                if let Known::Node(child) = self.names.get(k) {
                    self.attrs.remove(NodeId(child));
                }
                self.names.remove(k);
                [0; 4]
            }
            Operation::Rename { arg, old, new } => {
                self.attrs.remove(node);
                self.attrs.remove(NodeId(arg.newdir));
                [names::key(node.0, old), names::key(arg.newdir, new), 0, 0]
            }
            Operation::Rename2 { arg, old, new } => {
                self.attrs.remove(node);
                self.attrs.remove(NodeId(arg.newdir));
                let (ko, kn) = (names::key(node.0, old), names::key(arg.newdir, new));
                if arg.flags & RENAME_EXCHANGE != 0 {
                    // Both names stay, naming each other's node: forget both.
                    for k in [ko, kn] {
                        if let Known::Node(n) = self.names.get(k) {
                            self.attrs.remove(NodeId(n));
                        }
                        self.names.remove(k);
                    }
                    return [0; 4];
                }
                [ko, kn, 0, 0]
            }
            Operation::Fallocate(_) => {
                self.attrs.remove(node);
                [0; 4]
            }
            Operation::CopyFileRange(arg) | Operation::CopyFileRange64(arg) => {
                self.attrs.remove(NodeId(arg.nodeid_out));
                [0; 4]
            }
            Operation::Setxattr(_) | Operation::Removexattr { .. } => {
                if let Some(c) = self.attrs.get_mut(node) {
                    c.times_unknown = true;
                }
                [0; 4]
            }
            _ => [0; 4],
        }
    }

    /// Keeps the cache true to what a reply says or implies.
    pub(super) fn observe_reply(&mut self, entry: &Entry, error: i32, msg: &mut [u8]) {
        let [a0, a1, ..] = entry.aux;
        match entry.opcode {
            Opcode::Lookup if error == -ENOENT => self.names.insert(a0, 0),
            Opcode::Write if error == 0 => {
                let written = msg
                    .get(OUT_HEADER..OUT_HEADER + 4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u32::from_ne_bytes);
                if let Some(c) = self.attrs.get_mut(entry.node) {
                    c.attr.size = c.attr.size.max(a0.saturating_add(u64::from(written)));
                    c.times_unknown = true;
                    c.derived = true;
                }
            }
            Opcode::Open if error == 0 && a0 != 0 => {
                if let Some(c) = self.attrs.get_mut(entry.node) {
                    c.attr.size = 0;
                    c.times_unknown = true;
                    c.derived = true;
                }
            }
            Opcode::Unlink if error == 0 => {
                self.unlinked(a0);
                self.names.insert(a0, 0);
            }
            Opcode::Rename | Opcode::Rename2 if error == 0 => {
                let moved = self.names.get(a0);
                if let Known::Node(n) = moved {
                    if let Some(c) = self.attrs.get_mut(NodeId(n)) {
                        c.times_unknown = true;
                    }
                }
                // Whatever the new name named loses a link.
                self.unlinked(a1);
                self.names.insert(a0, 0);
                match moved {
                    Known::Node(n) => self.names.insert(a1, n),
                    _ => self.names.remove(a1),
                }
            }
            _ => {}
        }
        if error == 0 {
            let sent = entry.aux[2] >> 1;
            self.observe_attrs(entry.opcode, entry.node, entry.aux[0], sent, msg);
        }
        self.readers_done(entry);
    }

    /// LOOKUP and READDIRPLUS answer with the attributes of nodes other than
    /// the one they name. Sent while times are outstanding, the backend may
    /// read those attributes before it applies a flush and answer after the
    /// flush's reply, when the node's state would be gone; so, as GETATTR
    /// does for its node, they keep the states their replies may need. The
    /// kernel itself discards attributes from a request that started before
    /// an update it saw complete, so only requests sent while some state
    /// exists need this. A LOOKUP of a known name counts on that node
    /// (`aux[1]`); one of an unknown name, and a READDIRPLUS, keep every
    /// state that goes idle until no such request is left (bit 0 of
    /// `aux[2]`; the other bits are when the request was sent).
    pub(super) fn note_readers(&mut self, opcode: Opcode, aux: &mut [u64; 4]) {
        if self.times.is_empty() {
            return;
        }
        match opcode {
            Opcode::Lookup => match self.names.get(aux[0]) {
                Known::Node(n) => {
                    if let Some(e) = self.times.get_mut(NodeId(n)) {
                        e.readers += 1;
                        aux[1] = n;
                    }
                }
                Known::Absent => {}
                Known::Unknown => {
                    self.listings += 1;
                    aux[2] = 1;
                }
            },
            Opcode::Readdirplus => {
                self.listings += 1;
                aux[2] = 1;
            }
            _ => {}
        }
    }

    /// The request of `entry` is over (answered, failed, or replaced): the
    /// states it kept may go.
    pub(super) fn readers_done(&mut self, entry: &Entry) {
        if matches!(entry.opcode, Opcode::Rename | Opcode::Rename2) {
            self.rename_dropped(entry.unique);
        }
        let reader = match entry.opcode {
            Opcode::Getattr if entry.aux[0] == 1 => Some(entry.node),
            Opcode::Lookup if entry.aux[1] != 0 => Some(NodeId(entry.aux[1])),
            _ => None,
        };
        if let Some(node) = reader {
            // Not a state made after the request was sent: the one it
            // counted on ended (FORGET) and the id names another file now.
            let sent = entry.aux[2] >> 1;
            if let Some(e) = self.times.get_mut(node).filter(|e| e.born <= sent) {
                e.readers = e.readers.saturating_sub(1);
            }
            self.settle(node);
        }
        let listing = matches!(entry.opcode, Opcode::Lookup | Opcode::Readdirplus);
        if listing && entry.aux[2] & 1 == 1 {
            self.listings = self.listings.saturating_sub(1);
            if self.listings == 0 {
                while let Some(node) = self.kept.pop() {
                    if let Some(e) = self.times.get_mut(node) {
                        e.kept = false;
                    }
                    self.settle(node);
                }
            }
        }
    }

    /// The node `key` named lost that name: one link fewer. When the name is
    /// not known, any cached node might have been it, so nothing cached can
    /// be trusted for its link count.
    pub(super) fn unlinked(&mut self, key: u64) {
        match self.names.get(key) {
            Known::Node(n) => {
                if let Some(c) = self.attrs.get_mut(NodeId(n)) {
                    c.attr.nlink = c.attr.nlink.saturating_sub(1);
                    c.times_unknown = true;
                    c.derived = true;
                    if c.attr.nlink == 0 {
                        if let Some(e) = self.times.get_mut(NodeId(n)) {
                            e.unlinked = true;
                        }
                    }
                }
            }
            Known::Absent => {}
            Known::Unknown => {
                self.stats.times.cache_clears += 1;
                self.attrs.clear()
            }
        }
    }

    /// Caches the attributes a reply carries, with pending times laid over
    /// them (in the reply too, so that `stat` shows what the caller set).
    /// `name_key` is the entry's name for replies that create or find one;
    /// `sent` when the request was sent (the times table's clock).
    pub(super) fn observe_attrs(
        &mut self,
        opcode: Opcode,
        node: NodeId,
        name_key: u64,
        sent: u64,
        msg: &mut [u8],
    ) {
        let body = &mut msg[OUT_HEADER..];
        match opcode {
            Opcode::Getattr | Opcode::Setattr => {
                if let Ok((out, _)) = AttrOut::mut_from_prefix(body) {
                    self.overlay_and_cache(
                        node,
                        &mut out.attr,
                        out.attr_valid,
                        out.attr_valid_nsec,
                        sent,
                    );
                }
            }
            Opcode::Lookup
            | Opcode::Create
            | Opcode::Mknod
            | Opcode::Mkdir
            | Opcode::Symlink
            | Opcode::Link => {
                if let Ok((e, _)) = EntryOut::mut_from_prefix(body) {
                    self.names.insert(name_key, e.nodeid);
                    self.entry_attrs(e, sent);
                }
            }
            Opcode::Readdirplus => {
                let mut at = 0;
                while at + FUSE_NAME_OFFSET_DIRENTPLUS <= body.len() {
                    let Ok((d, _)) = Direntplus::mut_from_prefix(&mut body[at..]) else {
                        break;
                    };
                    let namelen = d.dirent.namelen as usize;
                    let rec = fuseproxy_protocol::abi::fuse_rec_align(
                        FUSE_NAME_OFFSET_DIRENTPLUS + namelen,
                    );
                    self.entry_attrs(&mut d.entry_out, sent);
                    let start = at + FUSE_NAME_OFFSET_DIRENTPLUS;
                    let nodeid = d.entry_out.nodeid;
                    if let Some(name) = body.get(start..start + namelen) {
                        if nodeid != 0 && name != b"." && name != b".." {
                            self.names.insert(names::key(node.0, name), nodeid);
                        }
                    }
                    at += rec;
                }
            }
            _ => {}
        }
    }

    pub(super) fn entry_attrs(&mut self, e: &mut EntryOut, sent: u64) {
        if e.nodeid != 0 {
            self.overlay_and_cache(
                NodeId(e.nodeid),
                &mut e.attr,
                e.attr_valid,
                e.attr_valid_nsec,
                sent,
            );
        }
    }

    /// Lays over `attr` the times of `node` its reply may predate (the
    /// request was sent at `sent`; see [`crate::times::NodeTimes::overlay`])
    /// and caches the result.
    pub(super) fn overlay_and_cache(
        &mut self,
        node: NodeId,
        attr: &mut fuseproxy_protocol::abi::Attr,
        valid: u64,
        nsec: u32,
        sent: u64,
    ) {
        if let Some(state) = self.times.get(node) {
            set_times(attr, &state.overlay(sent));
        }
        self.attrs.insert(
            node,
            Cached {
                attr: *attr,
                attr_valid: valid,
                attr_valid_nsec: nsec,
                times_unknown: false,
                derived: false,
            },
        );
    }

    /// The backend answered a flush: what waited on it may go; or, refused
    /// with retries left, it goes back to the node's pending record.
    pub(super) fn flush_answered(
        &mut self,
        node: NodeId,
        error: i32,
        aux: [u64; 4],
        msg: &mut [u8],
    ) {
        let Some(flushing) = self.times.flushing(node) else {
            return;
        };
        // The file's last name was removed after the times were
        // acknowledged: a backend that finds files by path (sshfs,
        // gocryptfs, rclone) no longer can, and nobody can see the times.
        let moot = (error == -ENOENT || error == -ESTALE)
            && self.times.get(node).is_some_and(|e| e.unlinked);
        let errno = u64::from(error.unsigned_abs());
        if moot {
            self.stats.times.flush_moot += 1;
            self.note(DecisionKind::FlushMoot, flushing.unique, node, errno);
        } else if error != 0 {
            self.stats.times.flush_errors += 1;
            self.note(DecisionKind::FlushFailed, flushing.unique, node, errno);
            if flushing.left > 0 && !self.backend_gone {
                self.retry_flush(node, error, aux);
                return;
            }
        }
        if error == 0 {
            self.note(DecisionKind::FlushOk, flushing.unique, node, 0);
        }
        let Some((t, _)) = self.times.finish_flush(node) else {
            return;
        };
        if error != 0 && !moot {
            if flushing.sent > 1 {
                self.stats.policy.flush_gave_up += 1;
                self.note(DecisionKind::FlushGaveUp, flushing.unique, node, errno);
            }
            self.push_event(Event::FlushFailed {
                node,
                error,
                atime: t.atime,
                mtime: t.mtime,
                attempts: u32::from(flushing.sent),
            });
        } else if let Some(Ok((out, _))) = msg.get_mut(OUT_HEADER..).map(AttrOut::mut_from_prefix) {
            // The flush's own reply shows what the backend has now, this
            // flush included: only times still pending are laid over it.
            let now = self.times.clock();
            self.overlay_and_cache(
                node,
                &mut out.attr,
                out.attr_valid,
                out.attr_valid_nsec,
                now,
            );
        }
        let (urgent, forget) = match self.times.get(node) {
            Some(e) => (
                e.pending.is_some() && (e.urgent || self.shutting_down || e.deferred_forget > 0),
                e.deferred_forget,
            ),
            None => (false, 0),
        };
        // What waited on this flush goes first; times acknowledged after it
        // arrived are sent next.
        self.release_held();
        if urgent {
            self.flush_node(node);
        } else if forget > 0
            && self
                .times
                .get(node)
                .is_some_and(|e| e.pending.is_none() && e.flushing.is_none())
        {
            let header = InHeader {
                opcode: Opcode::Forget.into(),
                unique: self.next_injected,
                nodeid: node.0,
                ..InHeader::default()
            };
            self.inject(header, ForgetIn { nlookup: forget }.as_bytes(), false);
            // The node is forgotten: its state ends here, kept or not.
            self.end_state(node);
        }
        self.settle(node);
    }

    /// `node`'s flush was refused and may be retried: its times go back to
    /// the node's pending record, due after the back-off. Nothing that waits
    /// on them is released. If a caller waits (a request held on the node
    /// or for every node, i.e. the kernel's DESTROY), or the session is
    /// shutting down, or newer times were already wanted, the retry goes at
    /// once instead: a request never waits out a back-off, only the round
    /// trips of at most `retries` refusals. A deferred FORGET, which no
    /// caller waits for, keeps waiting with the retry.
    pub(super) fn retry_flush(&mut self, node: NodeId, error: i32, aux: [u64; 4]) {
        let Some((f, t)) = self.flushed_times(node, aux) else {
            return;
        };
        let Some((retry, due)) = self.times.requeue(self.now, node, t, (aux[3] >> 32) as u32)
        else {
            return;
        };
        self.push_event(Event::FlushRetrying {
            node,
            error,
            attempts: u32::from(f.sent),
            left: u32::from(retry.left),
            after: due - self.now,
        });
        let waited = self.shutting_down
            || self.times.get(node).is_some_and(|e| e.urgent)
            || self
                .held
                .iter()
                .any(|h| h.all || h.deps[..h.ndeps].iter().any(|(n, _)| *n == node));
        if waited {
            self.flush_node(node);
        }
    }

    /// The times of `node`'s flush in flight, rebuilt from its record and
    /// the flush's `aux` (what `flush_node` put there), to send again.
    pub(super) fn flushed_times(
        &self,
        node: NodeId,
        aux: [u64; 4],
    ) -> Option<(crate::times::Flushing, Times)> {
        let f = self.times.flushing(node)?;
        let t = Times {
            stamps: f.stamps,
            fh: f.fh_set.then_some(aux[0]),
            lock_owner: f.lock_owner_set.then_some(aux[1]),
            uid: aux[2] as u32,
            gid: (aux[2] >> 32) as u32,
            pid: aux[3] as u32,
        };
        Some((f, t))
    }

    /// `node` may have nothing outstanding any more: drop its state (or
    /// keep it while listings sent before its last flush was answered may
    /// still need its applied times; a FORGET ends it all the same), and
    /// when no node has any, release what waits for all of them (a held
    /// DESTROY) and send our own DESTROY if shutting down.
    pub(super) fn settle(&mut self, node: NodeId) {
        if self.listings > 0 {
            // A listing in flight may still carry this node's old times.
            // INVARIANT: a node is in `kept` at most once (its `kept` flag),
            // and `kept` holds live states only, so it never outgrows the
            // table it was sized for.
            if let Some(e) = self.times.get_mut(node) {
                if e.is_idle() && !e.kept && self.kept.len() < self.kept.capacity() {
                    e.kept = true;
                    self.kept.push(node);
                    return;
                }
                if e.kept {
                    return;
                }
            }
        }
        self.times.remove_if_idle(node);
        if self.times.is_empty() {
            self.release_held();
            if self.shutting_down {
                self.send_destroy_when_idle();
            }
        }
    }
}

/// Lays the times of `t` that are set over `attr`.
pub(super) fn set_times(attr: &mut fuseproxy_protocol::abi::Attr, t: &Stamps) {
    if let Some((s, ns)) = t.atime {
        (attr.atime, attr.atimensec) = (s as u64, ns);
    }
    if let Some((s, ns)) = t.mtime {
        (attr.mtime, attr.mtimensec) = (s as u64, ns);
    }
    if let Some((s, ns)) = t.ctime {
        (attr.ctime, attr.ctimensec) = (s as u64, ns);
    }
}
