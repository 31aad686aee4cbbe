//! `--restart`: the backend died and a new one is started under the live
//! mount. The engine's part, in order:
//!
//! 1. [`Engine::handle_backend_restarting`]: the old backend is gone. What
//!    it had in flight is answered EIO (a WRITE may or may not have
//!    happened; nothing is sent twice yet), what waited behind a flush too;
//!    time updates acknowledged but not applied stay pending, and a flush
//!    that was in flight goes back to its node's pending record. No request
//!    is read from the device until the new backend is ready: the kernel
//!    keeps them, and their callers wait.
//! 2. [`Engine::handle_backend_restarted`]: the new backend's channel is up.
//!    It is sent the kernel's INIT again, as the first backend got it.
//! 3. Its answer, edited as the first one was, must tell the kernel nothing
//!    new: the same flags and the same limits, or the restart is refused
//!    ([`Event::RestartRefused`]); the proxy then ends as if the backend had
//!    died for good.
//! 4. The nodes the kernel holds are found again (see `node_map`), and the
//!    session goes on: pending time updates are sent to the new backend.

use fuseproxy_protocol::abi::InHeader;
use fuseproxy_protocol::{InitOutView, NodeId, Opcode, Unique};
use zerocopy::{FromBytes, IntoBytes};

use super::{Engine, EIO, IN_HEADER, OUT_HEADER};

/// What a request on a node or file that did not survive a restart gets.
const ESTALE: i32 = 116;
use crate::action::{Action, DecisionKind, Event};
use crate::inflight::{Entry, Origin};
use crate::init_rule::limits_for;

/// Bytes of the kernel's INIT kept for a replay: the header and the largest
/// `fuse_init_in` (64 bytes since 7.36).
pub(super) const INIT_COPY: usize = IN_HEADER + 64;

/// Where the backend is, for a session that restarts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Backend {
    /// Serving.
    #[default]
    Live,
    /// An upgrade was asked for: no request is taken, time updates are
    /// sent, and the backend is replaced once nothing is in flight.
    Quiescing,
    /// Dead; its in-flight requests are being answered, a new one is being
    /// started.
    Down,
    /// The new one has been sent the INIT with this unique.
    Reinit(Unique),
    /// It answered INIT; the kernel's nodes and open files are being found
    /// again.
    Recovering,
}

impl Engine {
    /// The backend died (or its channel failed) and the proxy starts a new
    /// one: see the module doc, step 1. Its answers come from
    /// [`poll_action`](Self::poll_action) as for
    /// [`handle_backend_gone`](Self::handle_backend_gone), the held requests'
    /// at once.
    pub fn handle_backend_restarting(&mut self, now: crate::Instant) {
        self.now = now;
        if self.backend_gone || !matches!(self.backend, Backend::Live | Backend::Quiescing) {
            return;
        }
        self.backend = Backend::Down;
        self.draining = true;
        self.inflight.clear_deadlines();
        while let Some(h) = self.held.pop() {
            self.stats.answered_with_error += 1;
            self.note(DecisionKind::BackendGone, h.unique, h.node, EIO as u64);
            self.actions.push_back(Action::AnswerError {
                unique: h.unique,
                errno: EIO,
            });
            self.actions.push_back(Action::Free(h.slot));
        }
        self.stats.restarts += 1;
        let n = self.inflight.len() as u64;
        self.note(DecisionKind::RestartBegan, Unique(0), NodeId(0), n);
        self.push_event(Event::BackendRestarting {
            inflight: self.inflight.len(),
            times_pending: self.times.len(),
        });
    }

    /// An upgrade of the backend was asked for: no request is taken from
    /// now on and every pending time update is sent, so that the backend
    /// can be replaced with nothing in flight
    /// ([`is_quiesced`](Self::is_quiesced)), then as after a death.
    pub fn handle_upgrade(&mut self, now: crate::Instant) {
        self.now = now;
        if self.backend_gone || self.backend != Backend::Live || !self.is_initialized() {
            return;
        }
        self.backend = Backend::Quiescing;
        self.flush_all();
    }

    /// Whether an upgrade may replace the backend now: nothing in flight,
    /// held, or waiting to be applied.
    pub fn is_quiesced(&self) -> bool {
        self.backend == Backend::Quiescing
            && self.inflight.is_empty()
            && self.held.is_empty()
            && self.times.pending() == 0
    }

    /// Whether the backend has been started again at least once (its ids
    /// are then translated): without copying the counters.
    pub fn has_restarted(&self) -> bool {
        self.stats.restarts > 0
    }

    /// Whether a restart is under way: the device is not read meanwhile.
    pub fn is_restarting(&self) -> bool {
        self.backend != Backend::Live
    }

    /// One in-flight request of the dead backend, drained by `poll_action`:
    /// the kernel's get EIO, a time flush goes back to its node's pending
    /// record, the proxy's others are dropped.
    pub(super) fn drain_one(&mut self, entry: Entry) -> Option<Action> {
        if entry.origin == Origin::Kernel {
            if !entry.opcode.needs_reply() {
                return None;
            }
            if self.has_copy(entry.unique) && self.to_resend.len() < self.to_resend.capacity() {
                // Sent again to the new backend once it is ready.
                self.to_resend.push(entry);
                return None;
            }
            self.stats.answered_with_error += 1;
            self.note(
                DecisionKind::BackendGone,
                entry.unique,
                entry.node,
                EIO as u64,
            );
            return Some(Action::AnswerError {
                unique: entry.unique,
                errno: EIO,
            });
        }
        if entry.opcode == Opcode::Setattr {
            self.requeue_flush(entry.node, entry.aux);
        }
        None
    }

    /// The new backend's channel is up: it is sent the kernel's INIT again
    /// (step 2). Refused at once (no INIT was ever answered) with
    /// [`Event::RestartRefused`].
    pub fn handle_backend_restarted(&mut self, now: crate::Instant) {
        self.now = now;
        if self.backend != Backend::Down {
            return;
        }
        self.note(DecisionKind::RestartLaunched, Unique(0), NodeId(0), 0);
        self.draining = false;
        let (len, body) = (self.init_copy.1, self.init_copy.0);
        let header = InHeader::read_from_prefix(&body[..len])
            .ok()
            .map(|(h, _)| h);
        let Some(mut header) = header.filter(|_| self.told.is_some() && len > IN_HEADER) else {
            self.backend = Backend::Live;
            self.backend_gone = true;
            self.push_event(Event::RestartRefused {
                why: "the first backend never answered INIT",
            });
            return;
        };
        header.unique = self.next_injected;
        header.len = len as u32;
        let arg = &body[IN_HEADER..len];
        match self.inject(header, arg, true) {
            Some(u) => self.backend = Backend::Reinit(u),
            None => {
                self.backend_gone = true;
                self.push_event(Event::RestartRefused {
                    why: "no room to send INIT",
                });
            }
        }
    }

    /// The new backend answered the replayed INIT (step 3).
    pub(super) fn replayed_init_answered(&mut self, error: i32, msg: &mut [u8]) {
        let why = if error != 0 {
            Some("the new backend refused INIT")
        } else {
            self.same_as_told(msg)
        };
        if let Some(why) = why {
            self.backend = Backend::Live;
            self.backend_gone = true;
            self.fail_resends();
            self.note(DecisionKind::RestartRefused, Unique(0), NodeId(0), 0);
            self.push_event(Event::RestartRefused { why });
            return;
        }
        self.backend = Backend::Recovering;
        if let Some(map) = self.nodes.as_mut() {
            map.begin_recovery();
        }
        self.recover();
    }

    /// Sends the recovery's next LOOKUPs (every node whose parent is found)
    /// and, once no node is left, its OPENs; when all are answered, the
    /// session goes on (step 4).
    fn recover(&mut self) {
        loop {
            let mut name = [0u8; 256];
            let next = self.nodes.as_mut().and_then(|m| {
                let l = m.poll_lookup()?;
                let n = l.name.len().min(255);
                name[..n].copy_from_slice(&l.name[..n]);
                Some((l.node, l.daemon_parent, n + 1))
            });
            let Some((node, parent, len)) = next else {
                break;
            };
            let header = InHeader {
                opcode: Opcode::Lookup.into(),
                unique: self.next_injected,
                nodeid: parent.0,
                ..InHeader::default()
            };
            if !self.inject_raw(header, &name[..len], [node.0, 0, 0, 0]) {
                if let Some(m) = self.nodes.as_mut() {
                    m.handle_not_found(node);
                }
            }
        }
        if self.recovering == 0 {
            while let Some(r) = self.nodes.as_mut().and_then(|m| m.poll_reopen()) {
                let op = if r.is_dir {
                    Opcode::Opendir
                } else {
                    Opcode::Open
                };
                let header = InHeader {
                    opcode: op.into(),
                    unique: self.next_injected,
                    nodeid: r.daemon_node.0,
                    ..InHeader::default()
                };
                let arg = fuseproxy_protocol::abi::OpenIn {
                    flags: r.flags,
                    open_flags: 0,
                };
                if !self.inject_raw(header, arg.as_bytes(), [u64::from(r.handle.0), 0, 0, 0]) {
                    if let Some(m) = self.nodes.as_mut() {
                        m.handle_reopen_failed(r.handle);
                    }
                }
            }
        }
        let done = self.recovering == 0 && self.nodes.as_ref().is_none_or(|m| m.is_recovered());
        if done && self.backend == Backend::Recovering {
            self.backend = Backend::Live;
            let resent = self.resend_all();
            self.note(
                DecisionKind::RestartDone,
                Unique(0),
                NodeId(0),
                resent as u64,
            );
            let s = self.nodes.as_ref().map(|m| m.stats()).unwrap_or_default();
            self.push_event(Event::BackendRestarted {
                resent,
                times_pending: self.times.len(),
                nodes: s.nodes,
                handles: s.handles,
                lost_nodes: s.lost_nodes,
                lost_handles: s.lost_handles,
            });
            self.after_restart();
        }
    }

    /// Keeps a copy of a request of the kernel's that is safe to send twice,
    /// as the kernel sent it (before any translation).
    pub(super) fn keep_copy(&mut self, unique: Unique, opcode: Opcode, msg: &[u8]) -> bool {
        match self.copies.as_mut() {
            Some(c) if super::resend::is_safe_to_resend(opcode) => c.insert(unique, msg),
            _ => false,
        }
    }

    /// The request was answered: its copy goes.
    pub(super) fn forget_copy(&mut self, unique: Unique) {
        if let Some(c) = self.copies.as_mut() {
            c.remove(unique);
        }
    }

    fn has_copy(&self, unique: Unique) -> bool {
        self.copies.as_ref().is_some_and(|c| c.contains(unique))
    }

    /// Sends the dead backend's safe requests to the new one, translated;
    /// returns how many went.
    fn resend_all(&mut self) -> usize {
        let mut sent = 0;
        while let Some(entry) = self.to_resend.pop() {
            let mut bytes = [0u8; crate::action::INLINE_MAX];
            let n = self
                .copies
                .as_mut()
                .and_then(|c| c.take(entry.unique, &mut bytes));
            let Some(n) = n else {
                self.answer_error(entry.unique, entry.node, EIO, DecisionKind::BackendGone);
                continue;
            };
            let mapped = self
                .nodes
                .as_mut()
                .is_none_or(|m| m.handle_request(&mut bytes[..n]).is_ok());
            if !mapped {
                self.answer_error(entry.unique, entry.node, ESTALE, DecisionKind::Stale);
                continue;
            }
            if !self.inflight.insert(entry) {
                self.answer_error(entry.unique, entry.node, EIO, DecisionKind::BackendGone);
                continue;
            }
            self.note(DecisionKind::Resent, entry.unique, entry.node, 0);
            self.actions
                .push_back(Action::Inject(crate::action::Inline::new(bytes, n)));
            sent += 1;
        }
        sent
    }

    /// No backend will answer the requests kept to be sent again: EIO.
    pub(super) fn fail_resends(&mut self) {
        while let Some(entry) = self.to_resend.pop() {
            self.forget_copy(entry.unique);
            self.answer_error(entry.unique, entry.node, EIO, DecisionKind::BackendGone);
        }
    }

    /// A request of the recovery's, already in the new backend's ids.
    fn inject_raw(&mut self, header: InHeader, body: &[u8], aux: [u64; 4]) -> bool {
        self.raw_injection = true;
        let sent = self.inject_with(header, body, Some(aux)).is_some();
        self.raw_injection = false;
        if sent {
            self.recovering += 1;
        }
        sent
    }

    /// The answer to one of the recovery's requests (`false`: not one).
    pub(super) fn recovery_answered(&mut self, entry: &Entry, error: i32, msg: &[u8]) -> bool {
        if self.backend != Backend::Recovering
            || !matches!(
                entry.opcode,
                Opcode::Lookup | Opcode::Open | Opcode::Opendir
            )
        {
            return false;
        }
        self.recovering = self.recovering.saturating_sub(1);
        let body = msg.get(OUT_HEADER..).unwrap_or(&[]);
        let Some(map) = self.nodes.as_mut() else {
            return true;
        };
        let mut forget = None;
        if entry.opcode == Opcode::Lookup {
            let node = NodeId(entry.aux[0]);
            match fuseproxy_protocol::abi::EntryOut::read_from_prefix(body) {
                Ok((e, _)) if error == 0 && e.nodeid != 0 => {
                    if !map.handle_found(node, NodeId(e.nodeid)) {
                        forget = Some(e.nodeid);
                    }
                    self.note(DecisionKind::NodeFound, entry.unique, node, e.nodeid);
                }
                _ => {
                    map.handle_not_found(node);
                    self.note(DecisionKind::NodeLost, entry.unique, node, 0);
                }
            }
        } else {
            let handle = crate::node_map::HandleId(entry.aux[0] as u32);
            let node = NodeId(entry.node.0);
            match fuseproxy_protocol::abi::OpenOut::read_from_prefix(body) {
                Ok((o, _)) if error == 0 => {
                    map.handle_reopened(handle, fuseproxy_protocol::Fh(o.fh));
                    self.note(DecisionKind::HandleReopened, entry.unique, node, o.fh);
                }
                _ => {
                    map.handle_reopen_failed(handle);
                    self.note(DecisionKind::HandleLost, entry.unique, node, 0);
                }
            }
        }
        if let Some(daemon) = forget {
            let header = InHeader {
                opcode: Opcode::Forget.into(),
                unique: self.next_injected,
                nodeid: daemon,
                ..InHeader::default()
            };
            self.raw_injection = true;
            let arg = fuseproxy_protocol::abi::ForgetIn { nlookup: 1 };
            self.inject_with(header, arg.as_bytes(), None);
            self.raw_injection = false;
        }
        self.recover();
        true
    }

    /// Through the node map, a request about to go to the backend: `false`
    /// when its node or open file did not survive a restart (it is then
    /// answered ESTALE, if anyone waits).
    pub(super) fn map_request(
        &mut self,
        unique: Unique,
        node: NodeId,
        opcode: Opcode,
        msg: &mut [u8],
    ) -> bool {
        let Some(map) = self.nodes.as_mut() else {
            return true;
        };
        if map.handle_request(msg).is_ok() {
            return true;
        }
        if opcode.needs_reply() {
            self.answer_error(unique, node, ESTALE, DecisionKind::Stale);
        }
        false
    }

    /// Through the node map, a reply or notification from the backend:
    /// `false` when it names what the kernel cannot be given.
    pub(super) fn map_reply(&mut self, opcode: Opcode, node: NodeId, msg: &mut [u8]) -> bool {
        self.nodes
            .as_mut()
            .is_none_or(|m| m.handle_reply(opcode, node, msg).is_ok())
    }

    /// `None` if the new backend's INIT answer, edited as the first one
    /// was, tells the kernel what it was told; else what differs.
    fn same_as_told(&mut self, msg: &mut [u8]) -> Option<&'static str> {
        let told = self.told?;
        let body = msg.get_mut(OUT_HEADER..)?;
        let mut n = self.negotiation;
        let arena = limits_for(self.config.max_message);
        let Ok(a) = self.rules.init.handle_answer(&mut n, arena, body) else {
            return Some("the new backend's INIT answer cannot be read");
        };
        let (mut new, old) = (a.after.flags(), told.flags());
        // What the proxy itself adds for the kernel is not the backend's.
        new |= old
            & (fuseproxy_protocol::flags::FUSE_OVER_IO_URING
                | fuseproxy_protocol::flags::FUSE_INIT_EXT);
        if new & !old != 0 {
            return Some("the new backend asks for capabilities the kernel was not told of");
        }
        if old & !new != 0 {
            return Some("the new backend lacks capabilities the kernel was told of");
        }
        if a.after.max_write() < told.max_write()
            || a.after.max_pages_in_effect() < told.max_pages_in_effect()
        {
            return Some("the new backend takes smaller requests than the kernel was told");
        }
        if a.after.major() != told.major() || a.after.minor() != told.minor() {
            return Some("the new backend speaks another protocol version");
        }
        None
    }

    /// What the first INIT's answer told the kernel, kept for a restart.
    pub(super) fn remember_told(&mut self, after: InitOutView) {
        self.told = Some(after);
    }

    /// Keeps the kernel's INIT as the backend got it, for a restart.
    pub(super) fn remember_init(&mut self, msg: &[u8]) {
        let n = msg.len().min(INIT_COPY);
        self.init_copy.0[..n].copy_from_slice(&msg[..n]);
        self.init_copy.1 = n;
    }

    /// The session goes on with the new backend: pending time updates are
    /// sent to it.
    fn after_restart(&mut self) {
        if !self.times.is_empty() {
            self.flush_all();
        }
    }

    /// Puts the times of a flush that was in flight back in its node's
    /// pending record, due at once, without spending a retry.
    fn requeue_flush(&mut self, node: NodeId, aux: [u64; 4]) {
        if let Some((_, t)) = self.flushed_times(node, aux) {
            let _ = self.times.requeue(self.now, node, t, 0);
        }
    }
}
