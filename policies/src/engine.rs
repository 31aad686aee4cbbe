//! The engine: one FUSE session's state between the kernel and the backend.

mod hooks;

use std::collections::VecDeque;

use fuseproxy_protocol::abi::{
    AttrOut, Direntplus, EntryOut, ForgetIn, ForgetOne, InHeader, SetattrIn,
    FUSE_NAME_OFFSET_DIRENTPLUS,
};
use fuseproxy_protocol::{
    encode, reply, NodeId, Opcode, Operation, ParseError, Reply, ReplyKind, Request, Unique,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::action::{Action, BadReplyReason, Event, Inline, SlotId, INLINE_MAX};
use crate::attr_cache::{AttrCache, Cached};
use crate::deadlines::{DeadlineId, Expired};
use crate::fault::Rng;
use crate::inflight::{Entry, Inflight, Origin, INJECTED_UNIQUE_BASE};
use crate::init_rule::{limits_for, Negotiation, DEVICE_ONLY_FLAGS};
use crate::names::{self, Known, Names};
use crate::paths::PathTable;
use crate::times::{is_time_only, Retry, Stamps, Times, TimesTable, Timespec};
use crate::{Duration, Instant, Rules, Stats};
use hooks::{PendingRename, Verdict, MAX_RENAMES};

/// What to do with time-only SETATTRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimesMode {
    /// Answer them at once, coalesce per node, apply them asynchronously.
    Async,
    /// Forward them like any other request.
    Forward,
}

/// How an engine is sized and what its rules do.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Requests in flight at most; the in-flight table is allocated once with
    /// this capacity, and the proxy stops reading the device when it is full.
    pub max_inflight: usize,
    /// The largest message the proxy can carry (its arena slot size). INIT's
    /// `max_write`/`max_pages` are lowered to fit.
    pub max_message: usize,
    /// INIT flags removed from the kernel's offer.
    pub clear_init_flags: u64,
    /// Time-only SETATTR handling.
    pub times: TimesMode,
    /// A node's acknowledged times are sent to the backend at most this long
    /// after the first of them.
    pub max_delay: Duration,
    /// Nodes with unsent times at most; beyond it the oldest is sent at once.
    pub max_pending: usize,
    /// Nodes whose attributes are cached (for local answers).
    pub attr_cache: usize,
    /// Requests held behind a flush at most (each holds an arena slot).
    pub max_held: usize,
    /// The mount has `default_permissions`: the kernel has already checked
    /// the caller, so any time update may be acknowledged locally.
    pub default_permissions: bool,
    /// Nodes whose names the path table keeps (for `[[paths]]`); 0 when
    /// the policy has no path rules.
    pub path_nodes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_inflight: 4096,
            max_message: 1024 * 1024 + 4096,
            clear_init_flags: DEVICE_ONLY_FLAGS,
            times: TimesMode::Async,
            max_delay: Duration::from_millis(1000),
            max_pending: 65_536,
            attr_cache: 16_384,
            max_held: 64,
            default_permissions: false,
            path_nodes: 0,
        }
    }
}

/// Actions queued by one `handle_*` call are a few; the queue is allocated
/// with this room once, and the contract (drain after every input) keeps it
/// from growing.
const ACTION_QUEUE: usize = 256;
const EVENT_QUEUE: usize = 64;
pub(crate) const OUT_HEADER: usize = 16;
pub(crate) const IN_HEADER: usize = 40;
const EIO: i32 = 5;
const ENOENT: i32 = 2;
/// open(2)'s O_TRUNC, as the kernel passes it in `fuse_open_in.flags`.
const O_TRUNC: u32 = 0o1000;
/// renameat2(2)'s RENAME_EXCHANGE.
const RENAME_EXCHANGE: u32 = 2;
const EAGAIN: i32 = 11;

/// A request waiting for flushes before it may go to the backend.
#[derive(Debug, Clone, Copy)]
struct Held {
    slot: SlotId,
    /// The kernel's request it is (for `[deadlines]`, which may answer it
    /// while it waits).
    unique: Unique,
    /// Not sent before this (a `[fault]` delay).
    not_before: Option<Instant>,
    /// (node, generation) pairs that must be answered first.
    deps: [(NodeId, u32); 2],
    ndeps: usize,
    /// Wait until no times are outstanding at all (DESTROY).
    all: bool,
}

/// A FUSE session seen from the middle.
///
/// # Call protocol
/// 1. Feed one input: [`handle_request`](Self::handle_request) for a message
///    read from the device, [`handle_reply`](Self::handle_reply) for one
///    received from the backend, [`handle_timeout`](Self::handle_timeout)
///    when [`poll_timeout`](Self::poll_timeout) is reached,
///    [`handle_backend_gone`](Self::handle_backend_gone) or
///    [`handle_shutdown`](Self::handle_shutdown).
/// 2. Call [`poll_action`](Self::poll_action) until it returns `None`, carrying
///    out each action in order; then [`poll_event`](Self::poll_event) likewise.
/// 3. Before reading the next request, ask [`can_accept_request`](Self::can_accept_request).
///
/// `now` must never decrease between calls. The engine reads no clock, does
/// no I/O, and allocates only in [`Engine::new`].
pub struct Engine {
    config: Config,
    inflight: Inflight,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    stats: Stats,
    pub(crate) attrs: AttrCache,
    names: Names,
    times: TimesTable,
    /// INVARIANT: capacity `config.max_held`, never exceeded.
    held: Vec<Held>,
    /// LOOKUPs of unknown names and READDIRPLUSes in flight that were sent
    /// while times were outstanding (see `note_readers`).
    listings: u32,
    /// Idle states kept for those; INVARIANT: capacity that of `times`.
    kept: Vec<NodeId>,
    /// Protocol minor of the session, once INIT is answered (0 before).
    minor: u32,
    /// What `[init]` did to the session's INIT.
    negotiation: Negotiation,
    backend_gone: bool,
    next_injected: u64,
    shutting_down: bool,
    /// The unique of our DESTROY, while it waits for its reply.
    destroy_pending: Option<Unique>,
    destroy_done: bool,
    /// The policy in force.
    rules: Rules,
    /// `[fault]`'s draws.
    rng: Rng,
    /// Which `[[paths]]` scope each node is in.
    paths: PathTable,
    /// Requests answered at their deadline after they were sent, for their
    /// late replies.
    expired: Expired,
    /// RENAMEs in flight the path table follows. INVARIANT: capacity
    /// `MAX_RENAMES`, never exceeded.
    renames: Vec<PendingRename>,
    /// The latest `now` handed in.
    now: Instant,
}

impl Engine {
    /// An engine with its tables allocated for `config`, and the rules of
    /// an empty policy file with `config`'s time settings.
    pub fn new(config: Config) -> Self {
        let mut rules = Rules::default();
        rules.times.asynchronous = config.times == TimesMode::Async;
        rules.times.max_delay = config.max_delay;
        rules.times.max_pending = config.max_pending;
        rules.times.attr_cache = config.attr_cache;
        Engine::with_rules(config, rules)
    }

    /// An engine with its tables allocated for `config`, running `rules`.
    /// `config`'s time mode and sizes are the ones that count (the proxy
    /// builds both from one policy).
    pub fn with_rules(config: Config, rules: Rules) -> Self {
        let async_times = config.times == TimesMode::Async;
        // Room for max_pending unsent records plus as many being flushed.
        let times_capacity = if async_times {
            2 * config.max_pending + 16
        } else {
            1
        };
        Engine {
            config,
            // Deadlines are for the kernel's requests, of which the proxy
            // lets at most max_inflight in flight.
            inflight: Inflight::with_deadlines(
                config.max_inflight + config.max_pending.min(1 << 20),
                config.max_inflight,
            ),
            actions: VecDeque::with_capacity(ACTION_QUEUE),
            events: VecDeque::with_capacity(EVENT_QUEUE),
            stats: Stats::default(),
            attrs: AttrCache::with_capacity(if async_times { config.attr_cache } else { 1 }),
            // Twice the attribute cache: a lost name costs the whole cache.
            names: Names::with_capacity(if async_times {
                config.attr_cache.saturating_mul(2)
            } else {
                1
            }),
            times: TimesTable::with_capacity(times_capacity),
            held: Vec::with_capacity(config.max_held.max(1)),
            listings: 0,
            kept: Vec::with_capacity(times_capacity),
            minor: 0,
            negotiation: Negotiation::default(),
            backend_gone: false,
            next_injected: INJECTED_UNIQUE_BASE,
            shutting_down: false,
            destroy_pending: None,
            destroy_done: false,
            rng: Rng::new(rules.fault_seed),
            rules,
            paths: PathTable::with_capacity(config.path_nodes),
            renames: Vec::with_capacity(MAX_RENAMES),
            expired: Expired::default(),
            now: Instant::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Requests waiting for the backend (the proxy's own included).
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Nodes with acknowledged times not yet sent to the backend.
    pub fn pending_times(&self) -> usize {
        self.times.pending()
    }

    /// Whether the session's INIT has been answered.
    pub fn is_initialized(&self) -> bool {
        self.minor != 0
    }

    fn async_times(&self) -> bool {
        self.config.times == TimesMode::Async && self.is_initialized() && !self.backend_gone
    }

    /// Whether another request may be read from the device now. When `false`,
    /// the proxy leaves the device unread until a reply frees room.
    pub fn can_accept_request(&self) -> bool {
        // The table has room for max_inflight of the kernel's requests plus
        // one flush per node with pending times; the kernel gets its share.
        self.inflight.len() < self.config.max_inflight
            && self.held.len() < self.held.capacity()
            && self.actions.len() < ACTION_QUEUE / 2
    }

    /// Whether the DESTROY sent after [`handle_shutdown`](Self::handle_shutdown)
    /// has been answered, or no answer can come (nothing to send, backend gone).
    pub fn is_shutdown_complete(&self) -> bool {
        self.destroy_done || self.backend_gone || !self.is_initialized()
    }

    /// The next deadline at which [`handle_timeout`](Self::handle_timeout)
    /// must be called: when the first acknowledged times (or a refused
    /// flush's retry) are due, a held request may go, or a request reaches
    /// its `[deadlines]` limit. Changes after any `handle_*` call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let times = self.times.oldest().map(|(_, due)| due);
        let held = self.held.iter().filter_map(|h| h.not_before).min();
        let deadline = self.inflight.next_deadline();
        [times, held, deadline].into_iter().flatten().min()
    }

    /// Time has reached a deadline from [`poll_timeout`](Self::poll_timeout):
    /// answers the requests past their deadline, sends the times that are
    /// due (retries included). Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.expire_deadlines(now);
        while let Some((node, due)) = self.times.oldest() {
            if due > now {
                break;
            }
            self.flush_node(node);
        }
        self.release_held();
    }

    /// A request read from the device into `slot`; `msg` is its bytes, which
    /// the engine may rewrite in place (INIT, BATCH_FORGET). `wall` is the
    /// real-time clock, to resolve `UTIME_NOW`. Queues the actions that
    /// forward, answer or hold it; `slot` comes back in exactly one action.
    pub fn handle_request(&mut self, now: Instant, wall: Timespec, slot: SlotId, msg: &mut [u8]) {
        self.now = now;
        self.stats.requests += 1;
        let req = match Request::parse(msg) {
            Ok(req) => req,
            Err(_) => {
                // The kernel never sends this; answer what the header names
                // rather than pass on bytes the backend may choke on.
                if let Ok((h, _)) = InHeader::read_from_prefix(msg) {
                    if Opcode::from(h.opcode).needs_reply() {
                        self.answer_error(Unique(h.unique), EIO);
                    }
                }
                self.actions.push_back(Action::Free(slot));
                return;
            }
        };
        let (unique, opcode, node) = (req.unique(), req.opcode(), req.nodeid());
        if self.backend_gone {
            if opcode.needs_reply() {
                self.answer_error(unique, EIO);
            }
            self.actions.push_back(Action::Free(slot));
            return;
        }
        if unique.is_resend() {
            // The kernel re-sends a request under its old unique with bit 63
            // set; the old entry will never be answered under its old name.
            let old = Unique(unique.0 & !fuseproxy_protocol::ids::FUSE_UNIQUE_RESEND);
            if let Some(entry) = self.inflight.remove(old) {
                self.readers_done(&entry);
            }
        }

        let mut name_hash = 0;
        let (not_before, deadline) = match self.request_rules(now, &req, slot, &mut name_hash) {
            Verdict::Done => return,
            Verdict::Pass {
                not_before,
                deadline,
            } => (not_before, deadline),
        };
        if opcode == Opcode::BatchForget {
            self.forget_paths(&req);
        }

        let mut deps = [(NodeId(0), 0u32); 2];
        let mut aux = [0u64; 4];
        let mut ndeps = 0;
        let mut all = false;
        if self.async_times() {
            let mut second = None;
            match req.operation() {
                Operation::Setattr(s) if is_time_only(s.valid()) => {
                    let t = Times::from_setattr(&s, wall, req.uid(), req.gid(), req.pid());
                    if self.try_acknowledge(now, wall, unique, node, req.uid(), &t) {
                        self.actions.push_back(Action::Free(slot));
                        return;
                    }
                    self.stats.times.forwarded_sync += 1;
                }
                Operation::Forget(arg) => {
                    let n = arg.nlookup;
                    self.attrs.remove(node);
                    let deferred = self.defer_forget(node, n);
                    self.forward_unless(deferred, slot);
                    return;
                }
                Operation::BatchForget { .. } => {
                    let all_deferred = self.filter_batch_forget(msg) == 0;
                    self.forward_unless(all_deferred, slot);
                    return;
                }
                Operation::Rename { arg, .. } => second = Some(NodeId(arg.newdir)),
                Operation::Rename2 { arg, .. } => second = Some(NodeId(arg.newdir)),
                Operation::Link { arg, .. } => second = Some(NodeId(arg.oldnodeid)),
                Operation::Destroy => all = !self.times.is_empty(),
                _ => {}
            }
            // Every request on a node with outstanding times sees them
            // applied first; GETATTR instead gets them overlaid on its reply.
            if opcode == Opcode::Getattr {
                if let Some(e) = self.times.get_mut(node) {
                    e.readers += 1;
                    aux[0] = 1;
                }
            } else {
                for n in [Some(node), second].into_iter().flatten() {
                    if let Some(gen) = self.barrier(n) {
                        deps[ndeps] = (n, gen);
                        ndeps += 1;
                    }
                }
                aux = self.note_request(&req);
                self.note_readers(opcode, &mut aux);
            }
            if all {
                self.flush_all();
            }
        }

        aux[3] = name_hash;
        match opcode {
            Opcode::Init => self.rewrite_init(msg),
            Opcode::Open | Opcode::Create | Opcode::TmpFile => self.writeback_open(msg),
            _ => {}
        }
        if opcode.needs_reply()
            && !self.inflight.insert(Entry {
                unique,
                opcode,
                node,
                origin: Origin::Kernel,
                aux,
                deadline: DeadlineId::NONE,
            })
        {
            // Only when the proxy ignored can_accept_request().
            self.answer_error(unique, EAGAIN);
            self.actions.push_back(Action::Free(slot));
            return;
        }
        if let Some((limit, errno)) = deadline {
            self.inflight.arm(unique, now + limit, errno);
        }
        self.stats.forwarded += 1;
        if ndeps > 0 || all || not_before.is_some() {
            if ndeps > 0 || all {
                self.stats.times.held += 1;
            }
            self.held.push(Held {
                slot,
                unique,
                not_before,
                deps,
                ndeps,
                all,
            });
        } else {
            self.actions.push_back(Action::ForwardRequest(slot));
        }
    }

    /// FORGET and BATCH_FORGET, which expect no reply: forwarded now, or
    /// (all of it deferred behind flushes) never in this form.
    fn forward_unless(&mut self, deferred: bool, slot: SlotId) {
        if deferred {
            self.actions.push_back(Action::Free(slot));
        } else {
            self.stats.forwarded += 1;
            self.actions.push_back(Action::ForwardRequest(slot));
        }
    }

    /// Answers a time-only SETATTR from the cache and records it as pending.
    /// `false` when it must go to the backend instead.
    fn try_acknowledge(
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
        if coalesced {
            self.stats.times.coalesced += 1;
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
    fn barrier(&mut self, node: NodeId) -> Option<u32> {
        let gen = self.times.get(node)?.barrier_gen()?;
        self.flush_node(node);
        Some(gen)
    }

    /// Sends `node`'s pending times now, or marks them urgent when a flush
    /// for the node is already in flight.
    fn flush_node(&mut self, node: NodeId) {
        let unique = Unique(self.next_injected);
        let Some((t, retry)) = self.times.start_flush(node, unique) else {
            self.times.make_urgent(node);
            return;
        };
        if retry.sent > 1 {
            self.stats.policy.flush_retries += 1;
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

    fn flush_all(&mut self) {
        while let Some((node, _)) = self.times.oldest() {
            self.flush_node(node);
        }
    }

    /// A FORGET for a node with outstanding times waits until they are
    /// applied: the backend may drop the node on FORGET. Returns whether it
    /// was deferred.
    fn defer_forget(&mut self, node: NodeId, nlookup: u64) -> bool {
        let Some(e) = self.times.get(node) else {
            return false;
        };
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

    /// Removes from a BATCH_FORGET (in place) the nodes whose forgets must
    /// wait; returns how many entries remain.
    fn filter_batch_forget(&mut self, msg: &mut [u8]) -> usize {
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

    fn rewrite_init(&mut self, msg: &mut [u8]) {
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
        }
        self.push_event(Event::InitOffered {
            minor,
            offered: n.offered,
            removed: n.device_only,
        });
    }

    /// A datagram received from the backend into `slot`. `msg` is what fit in
    /// the slot; `received` is the datagram's real length (larger than
    /// `msg.len()` when it was truncated). Queues actions that deliver or free
    /// `slot`, and answers with EIO the request a bad reply names. Replies
    /// carrying attributes feed the cache and show pending times.
    pub fn handle_reply(&mut self, now: Instant, slot: SlotId, msg: &mut [u8], received: usize) {
        self.now = now;
        if received > msg.len() {
            self.bad_reply(BadReplyReason::Oversized, reply::unique_of(msg));
            self.actions.push_back(Action::Free(slot));
            return;
        }
        let parsed = match Reply::parse(msg) {
            Ok(r) => r,
            Err(e) => {
                let reason = match e {
                    ParseError::ShortHeader { .. } => BadReplyReason::ShortHeader,
                    ParseError::LengthMismatch { .. } => BadReplyReason::LengthMismatch,
                    ParseError::ErrorWithBody { .. } => BadReplyReason::ErrorWithBody,
                    _ => BadReplyReason::BadError,
                };
                self.bad_reply(reason, reply::unique_of(msg));
                self.actions.push_back(Action::Free(slot));
                return;
            }
        };
        let (unique, error, kind) = (parsed.unique(), parsed.error(), parsed.kind());
        if let ReplyKind::Notify(_) = kind {
            self.stats.notifications += 1;
            self.actions.push_back(Action::DeliverReply(slot));
            return;
        }
        if kind == ReplyKind::InterruptReply {
            // A reply to an INTERRUPT (EAGAIN: "send it again", ENOSYS: "I
            // don't do interrupts") is legal while the interrupted request is
            // in flight; the kernel acts on it.
            if self.inflight.get(unique.without_int_bit()).is_some() {
                self.stats.replies += 1;
                self.actions.push_back(Action::DeliverReply(slot));
            } else if self.expired.contains(unique.without_int_bit()) {
                self.stats.policy.late_replies += 1;
                self.actions.push_back(Action::Free(slot));
            } else {
                self.bad_reply(BadReplyReason::UnknownUnique, None);
                self.actions.push_back(Action::Free(slot));
            }
            return;
        }
        let Some(entry) = self.inflight.remove(unique) else {
            if !self.late_reply(unique, error, msg) {
                self.bad_reply(BadReplyReason::UnknownUnique, None);
            }
            self.actions.push_back(Action::Free(slot));
            return;
        };
        if entry.origin == Origin::Proxy {
            self.injected_reply(entry, error, msg);
            self.actions.push_back(Action::Free(slot));
            return;
        }
        if entry.opcode == Opcode::Init {
            self.negotiate(msg, error);
            self.stats.replies += 1;
            self.actions.push_back(Action::DeliverReply(slot));
            return;
        }
        // The rules first: what the cache keeps for local answers is what
        // the kernel is told.
        let deliver = self.reply_rules(&entry, error, msg);
        if self.async_times() {
            self.observe_reply(&entry, error, msg);
        }
        if deliver {
            self.stats.replies += 1;
            self.actions.push_back(Action::DeliverReply(slot));
        } else {
            self.actions.push_back(Action::Free(slot));
        }
    }

    /// What a forwarded request may change of the attributes the cache
    /// holds, noted before it goes; the reply confirms it
    /// ([`observe_reply`](Self::observe_reply)). Returns the entry's `aux`.
    fn note_request(&mut self, req: &Request<'_>) -> [u64; 4] {
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
    fn observe_reply(&mut self, entry: &Entry, error: i32, msg: &mut [u8]) {
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
            self.observe_attrs(entry.opcode, entry.node, entry.aux[0], msg);
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
    /// state that goes idle until no such request is left (`aux[2]` = 1).
    fn note_readers(&mut self, opcode: Opcode, aux: &mut [u64; 4]) {
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
    fn readers_done(&mut self, entry: &Entry) {
        if matches!(entry.opcode, Opcode::Rename | Opcode::Rename2) {
            self.rename_dropped(entry.unique);
        }
        let reader = match entry.opcode {
            Opcode::Getattr if entry.aux[0] == 1 => Some(entry.node),
            Opcode::Lookup if entry.aux[1] != 0 => Some(NodeId(entry.aux[1])),
            _ => None,
        };
        if let Some(node) = reader {
            if let Some(e) = self.times.get_mut(node) {
                e.readers = e.readers.saturating_sub(1);
            }
            self.settle(node);
        }
        let listing = matches!(entry.opcode, Opcode::Lookup | Opcode::Readdirplus);
        if listing && entry.aux[2] == 1 {
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
    fn unlinked(&mut self, key: u64) {
        match self.names.get(key) {
            Known::Node(n) => {
                if let Some(c) = self.attrs.get_mut(NodeId(n)) {
                    c.attr.nlink = c.attr.nlink.saturating_sub(1);
                    c.times_unknown = true;
                    c.derived = true;
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
    /// `name_key` is the entry's name for replies that create or find one.
    fn observe_attrs(&mut self, opcode: Opcode, node: NodeId, name_key: u64, msg: &mut [u8]) {
        let body = &mut msg[OUT_HEADER..];
        match opcode {
            Opcode::Getattr | Opcode::Setattr => {
                if let Ok((out, _)) = AttrOut::mut_from_prefix(body) {
                    self.overlay_and_cache(
                        node,
                        &mut out.attr,
                        out.attr_valid,
                        out.attr_valid_nsec,
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
                    self.entry_attrs(e);
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
                    self.entry_attrs(&mut d.entry_out);
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

    fn entry_attrs(&mut self, e: &mut EntryOut) {
        if e.nodeid != 0 {
            self.overlay_and_cache(
                NodeId(e.nodeid),
                &mut e.attr,
                e.attr_valid,
                e.attr_valid_nsec,
            );
        }
    }

    fn overlay_and_cache(
        &mut self,
        node: NodeId,
        attr: &mut fuseproxy_protocol::abi::Attr,
        valid: u64,
        nsec: u32,
    ) {
        if let Some(state) = self.times.get(node) {
            set_times(attr, &state.overlay());
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

    fn negotiate(&mut self, msg: &mut [u8], error: i32) {
        if error != 0 {
            self.push_event(Event::InitFailed { errno: -error });
            return;
        }
        let body = &mut msg[OUT_HEADER..];
        let arena = limits_for(self.config.max_message);
        let Ok(a) = self
            .rules
            .init
            .handle_answer(&mut self.negotiation, arena, body)
        else {
            self.push_event(Event::InitFailed { errno: EIO });
            return;
        };
        self.stats.policy.init_rewrites += u64::from(a.changes);
        self.minor = a.before.minor().max(1);
        self.push_event(a.event(&self.negotiation));
    }

    fn injected_reply(&mut self, entry: Entry, error: i32, msg: &mut [u8]) {
        if Some(entry.unique) == self.destroy_pending {
            self.destroy_pending = None;
            self.destroy_done = true;
        }
        if entry.opcode == Opcode::Setattr {
            self.flush_answered(entry.node, error, entry.aux, msg);
        }
        self.push_event(Event::InjectedReply {
            opcode: entry.opcode,
            unique: entry.unique,
            error,
        });
    }

    /// The backend answered a flush: what waited on it may go; or, refused
    /// with retries left, it goes back to the node's pending record.
    fn flush_answered(&mut self, node: NodeId, error: i32, aux: [u64; 4], msg: &mut [u8]) {
        let Some(flushing) = self.times.flushing(node) else {
            return;
        };
        if error != 0 {
            self.stats.times.flush_errors += 1;
            if flushing.left > 0 && !self.backend_gone {
                self.retry_flush(node, error, aux);
                return;
            }
        }
        let Some((t, _)) = self.times.finish_flush(node) else {
            return;
        };
        if error != 0 {
            if flushing.sent > 1 {
                self.stats.policy.flush_gave_up += 1;
            }
            self.push_event(Event::FlushFailed {
                node,
                error,
                atime: t.atime,
                mtime: t.mtime,
                attempts: u32::from(flushing.sent),
            });
        } else if let Some(Ok((out, _))) = msg.get_mut(OUT_HEADER..).map(AttrOut::mut_from_prefix) {
            self.overlay_and_cache(node, &mut out.attr, out.attr_valid, out.attr_valid_nsec);
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
            if let Some(e) = self.times.get_mut(node) {
                e.deferred_forget = 0;
            }
            let header = InHeader {
                opcode: Opcode::Forget.into(),
                unique: self.next_injected,
                nodeid: node.0,
                ..InHeader::default()
            };
            self.inject(header, ForgetIn { nlookup: forget }.as_bytes(), false);
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
    fn retry_flush(&mut self, node: NodeId, error: i32, aux: [u64; 4]) {
        let Some(f) = self.times.flushing(node) else {
            return;
        };
        let t = Times {
            stamps: f.stamps,
            fh: f.fh_set.then_some(aux[0]),
            lock_owner: f.lock_owner_set.then_some(aux[1]),
            uid: aux[2] as u32,
            gid: (aux[2] >> 32) as u32,
            pid: aux[3] as u32,
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

    /// `node` may have nothing outstanding any more: drop its state, and
    /// when no node has any, release what waits for all of them (a held
    /// DESTROY) and send our own DESTROY if shutting down.
    fn settle(&mut self, node: NodeId) {
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

    /// Forwards, in arrival order, the held requests whose flushes are done.
    fn release_held(&mut self) {
        let mut i = 0;
        while i < self.held.len() {
            let h = self.held[i];
            let ready = Self::is_due(h.not_before, self.now)
                && if h.all {
                    self.times.is_empty()
                } else {
                    h.deps[..h.ndeps]
                        .iter()
                        .all(|(n, g)| self.times.get(*n).is_none_or(|e| e.done_gen >= *g))
                };
            if ready {
                self.held.remove(i);
                self.actions.push_back(Action::ForwardRequest(h.slot));
            } else {
                i += 1;
            }
        }
    }

    /// The backend is gone (its socket closed or reset). Every request it
    /// owed a reply is answered with EIO, held ones included, and later
    /// requests are answered the same way without being forwarded.
    pub fn handle_backend_gone(&mut self, _now: Instant) {
        if self.backend_gone {
            return;
        }
        self.backend_gone = true;
        // What is in flight is answered with EIO below, without waiting.
        self.inflight.clear_deadlines();
        while let Some(h) = self.held.pop() {
            self.actions.push_back(Action::Free(h.slot));
        }
        if !self.times.is_empty() {
            self.push_event(Event::TimesLost {
                nodes: self.times.len(),
            });
        }
        // The answers are produced lazily by poll_action, one per call, so
        // that a full table needs no queue of its size.
    }

    /// The session is ending (signal, or the kernel side is gone). Sends
    /// every pending time update, then the backend a DESTROY of the proxy's
    /// own, since the kernel sends none for a `fuse` mount;
    /// [`is_shutdown_complete`](Self::is_shutdown_complete) tells when it has
    /// been answered.
    pub fn handle_shutdown(&mut self, _now: Instant) {
        if self.backend_gone || !self.is_initialized() || self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.flush_all();
        self.send_destroy_when_idle();
    }

    fn send_destroy_when_idle(&mut self) {
        if self.destroy_pending.is_some() || self.destroy_done || !self.times.is_empty() {
            return;
        }
        let header = InHeader {
            opcode: Opcode::Destroy.into(),
            unique: self.next_injected,
            ..InHeader::default()
        };
        self.destroy_pending = self.inject(header, &[], true);
    }

    /// Encodes and queues a request of the proxy's own (its unique is taken
    /// from `header`, which must be `next_injected`); records it in flight
    /// when a reply is expected.
    fn inject(&mut self, header: InHeader, body: &[u8], expects_reply: bool) -> Option<Unique> {
        self.inject_with(header, body, expects_reply.then_some([0; 4]))
    }

    /// [`inject`](Self::inject), recording it in flight with `aux` when
    /// given (a reply is expected).
    fn inject_with(
        &mut self,
        header: InHeader,
        body: &[u8],
        aux: Option<[u64; 4]>,
    ) -> Option<Unique> {
        debug_assert_eq!(header.unique, self.next_injected);
        let unique = Unique(header.unique);
        let mut bytes = [0u8; INLINE_MAX];
        let len = encode::encode_request(&mut bytes, &header, &[body])?;
        if let Some(aux) = aux {
            if !self.inflight.insert(Entry {
                unique,
                opcode: Opcode::from(header.opcode),
                node: NodeId(header.nodeid),
                origin: Origin::Proxy,
                aux,
                deadline: DeadlineId::NONE,
            }) {
                return None;
            }
        }
        self.next_injected += 2;
        self.stats.injected += 1;
        self.actions
            .push_back(Action::Inject(Inline::new(bytes, len)));
        Some(unique)
    }

    /// A request could not be handed to the backend (it can never fit the
    /// channel). It is answered with EIO if the kernel waits for it.
    pub fn handle_send_failure(&mut self, _now: Instant, unique: Unique) {
        if let Some(e) = self.inflight.remove(unique) {
            self.readers_done(&e);
            if e.origin == Origin::Kernel {
                self.answer_error(unique, EIO);
            } else if Some(unique) == self.destroy_pending {
                self.destroy_pending = None;
                self.destroy_done = true;
            }
        }
    }

    /// The next action to carry out, in order; `None` when there is nothing
    /// more to do until the next input.
    #[must_use]
    pub fn poll_action(&mut self, _now: Instant) -> Option<Action> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        if self.backend_gone {
            while let Some(entry) = self.inflight.pop_any() {
                if entry.origin == Origin::Kernel && entry.opcode.needs_reply() {
                    self.stats.answered_with_error += 1;
                    return Some(Action::AnswerError {
                        unique: entry.unique,
                        errno: EIO,
                    });
                }
            }
        }
        None
    }

    /// The next event to log; `None` when there is none.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn answer_error(&mut self, unique: Unique, errno: i32) {
        self.stats.answered_with_error += 1;
        self.actions
            .push_back(Action::AnswerError { unique, errno });
    }

    fn bad_reply(&mut self, reason: BadReplyReason, named: Option<Unique>) {
        let b = &mut self.stats.bad;
        match reason {
            BadReplyReason::ShortHeader => b.short_header += 1,
            BadReplyReason::LengthMismatch => b.length_mismatch += 1,
            BadReplyReason::BadError => b.bad_error += 1,
            BadReplyReason::ErrorWithBody => b.error_with_body += 1,
            BadReplyReason::Oversized => b.oversized += 1,
            BadReplyReason::UnknownUnique => b.unknown_unique += 1,
        }
        // The kernel would reject such a reply and leave its caller waiting
        // forever (fuse-notes: "header-level rejections"); answer it instead.
        let named = named.map(Unique::without_int_bit);
        let answered = match named.and_then(|u| self.inflight.get(u).copied()) {
            Some(e) if e.origin == Origin::Kernel => {
                self.inflight.remove(e.unique);
                self.readers_done(&e);
                self.answer_error(e.unique, EIO);
                Some(e.unique)
            }
            Some(e) => {
                // A garbled answer to one of our own: treat it as failed.
                self.inflight.remove(e.unique);
                let mut none = [0u8; 0];
                self.injected_reply(e, -EIO, &mut none);
                None
            }
            None => None,
        };
        self.push_event(Event::BadReply {
            reason,
            unique: answered,
        });
    }

    fn push_event(&mut self, e: Event) {
        // Events are for logs; when the proxy falls behind, the oldest go
        // (the counters in Stats stay exact).
        if self.events.len() == EVENT_QUEUE {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }
}

/// Lays the times of `t` that are set over `attr`.
fn set_times(attr: &mut fuseproxy_protocol::abi::Attr, t: &Stamps) {
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
