//! The engine: one FUSE session's state between the kernel and the backend.

mod hooks;
mod init;
mod resend;
mod restart;
mod times_rule;

use std::collections::VecDeque;

use fuseproxy_protocol::abi::InHeader;
use fuseproxy_protocol::{
    encode, reply, NodeId, Opcode, Operation, ParseError, Reply, ReplyKind, Request, Unique,
};
use zerocopy::FromBytes;

use crate::action::{
    Action, BadReplyReason, Decision, DecisionKind, Event, Inline, SlotId, INLINE_MAX,
};
use crate::attr_cache::AttrCache;

use crate::deadlines::{DeadlineId, Expired};
use crate::fault::Rng;
use crate::inflight::{Entry, Inflight, Origin, INJECTED_UNIQUE_BASE};
use crate::init_rule::{Negotiation, DEVICE_ONLY_FLAGS};
use crate::names::Names;
use crate::paths::PathTable;
use crate::times::{is_time_only, Times, TimesTable, Timespec};
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
    /// `--restart`: the node and handle map that lets a new backend stand
    /// in for a dead one is kept (`node_map`).
    pub restart: bool,
    /// Accept `FUSE_OVER_IO_URING` toward the kernel when it offers it: the
    /// proxy, not the backend, serves the kernel's io_uring queues, so the
    /// flag is set in the answer the kernel gets (the backend never sees it
    /// offered).
    pub kernel_uring: bool,
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
            kernel_uring: false,
            restart: false,
        }
    }
}

/// Actions queued by one `handle_*` call are a few; the queue is allocated
/// with this room once, and the contract (drain after every input) keeps it
/// from growing.
const ACTION_QUEUE: usize = 256;
/// `--restart`'s tables: nodes and open files the kernel may hold, and the
/// bytes of their names (64 per node on average).
const RESTART_NODES: usize = 65_536;
const RESTART_HANDLES: usize = 16_384;
const RESTART_NAME_BYTES: usize = 4 << 20;
/// Requests kept to be sent again after a restart, at most.
const RESEND_COPIES: usize = 1024;
const EVENT_QUEUE: usize = 64;
pub(crate) const OUT_HEADER: usize = 16;
pub(crate) const IN_HEADER: usize = 40;
pub(crate) const EIO: i32 = 5;
pub(crate) const ENOENT: i32 = 2;
const EAGAIN: i32 = 11;
/// What a backend answers an INTERRUPT it does not do.
const ENOSYS: i32 = 38;

/// A request waiting for flushes before it may go to the backend.
#[derive(Debug, Clone, Copy)]
struct Held {
    slot: SlotId,
    /// The kernel's request it is (for `[deadlines]`, which may answer it
    /// while it waits).
    unique: Unique,
    /// The node it names (for its decisions).
    node: NodeId,
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
///    out each action in order; then [`poll_decision`](Self::poll_decision)
///    (if enabled) and [`poll_event`](Self::poll_event) likewise.
/// 3. Before reading the next request, ask [`can_accept_request`](Self::can_accept_request).
///
/// `now` must never decrease between calls. The engine reads no clock, does
/// no I/O, and allocates only in [`Engine::new`].
pub struct Engine {
    config: Config,
    inflight: Inflight,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    /// Decisions not yet polled; empty unless `decisions_on`. Allocated
    /// with the action queue's room; drained as often as it is, it grows
    /// only where the action queue grows too (a flush of every node).
    decisions: VecDeque<Decision>,
    decisions_on: bool,
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
    /// `--restart`: where the backend is.
    backend: restart::Backend,
    /// The dead backend's in-flight requests are being answered.
    draining: bool,
    /// The kernel's INIT as the backend got it, and its length.
    init_copy: ([u8; restart::INIT_COPY], usize),
    /// What the kernel was told in answer to it.
    told: Option<fuseproxy_protocol::InitOutView>,
    /// `--restart`: the kernel's nodes and handles and how to find them
    /// again.
    nodes: Option<crate::node_map::NodeMap>,
    /// The proxy's own LOOKUPs and OPENs of a recovery, in flight.
    recovering: u32,
    /// The request being injected names the new backend's ids already.
    raw_injection: bool,
    /// `--restart`: copies of the kernel's requests safe to send twice.
    copies: Option<resend::Copies>,
    /// The dead backend's requests that go to the new one. INVARIANT:
    /// capacity that of `copies`, never exceeded (one per copy).
    to_resend: Vec<Entry>,
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
            decisions: VecDeque::with_capacity(ACTION_QUEUE),
            decisions_on: false,
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
            backend: restart::Backend::Live,
            draining: false,
            init_copy: ([0; restart::INIT_COPY], 0),
            told: None,
            nodes: config.restart.then(|| {
                crate::node_map::NodeMap::new(
                    RESTART_NODES,
                    RESTART_HANDLES,
                    RESTART_NAME_BYTES,
                    config.max_inflight,
                )
            }),
            recovering: 0,
            raw_injection: false,
            copies: config
                .restart
                .then(|| resend::Copies::new(config.max_inflight.min(RESEND_COPIES))),
            to_resend: Vec::with_capacity(if config.restart {
                config.max_inflight.min(RESEND_COPIES)
            } else {
                0
            }),
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
            && !self.is_restarting()
    }

    /// The kernel's requests that can wait for an answer at once: in flight
    /// to the backend, or held by the engine (what a proxy sizes per-request
    /// tables of its own for).
    pub fn waiting_capacity(&self) -> usize {
        self.config.max_inflight + self.held.capacity()
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
        if self.is_restarting() {
            self.actions.push_back(Action::Retry(slot));
            return;
        }
        self.stats.requests += 1;
        let req = match Request::parse(msg) {
            Ok(req) => req,
            Err(_) => {
                // The kernel never sends this; answer what the header names
                // rather than pass on bytes the backend may choke on.
                if let Ok((h, _)) = InHeader::read_from_prefix(msg) {
                    if Opcode::from(h.opcode).needs_reply() {
                        let (u, n) = (Unique(h.unique), NodeId(h.nodeid));
                        self.answer_error(u, n, EIO, DecisionKind::Malformed);
                    }
                }
                self.actions.push_back(Action::Free(slot));
                return;
            }
        };
        let (unique, opcode, node) = (req.unique(), req.opcode(), req.nodeid());
        if self.backend_gone {
            if opcode.needs_reply() {
                self.answer_error(unique, node, EIO, DecisionKind::BackendGone);
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
                    self.note(DecisionKind::TimesForwarded, unique, node, 0);
                }
                Operation::Forget(arg) => {
                    let n = arg.nlookup;
                    self.attrs.remove(node);
                    let deferred = self.defer_forget(node, n);
                    self.forward_unless(deferred, slot, msg);
                    self.forgotten();
                    return;
                }
                Operation::BatchForget { .. } => {
                    let all_deferred = self.filter_batch_forget(msg) == 0;
                    self.forward_unless(all_deferred, slot, msg);
                    self.forgotten();
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
                // Not the nodes an UNLINK's or RENAME's names stand for: the
                // kernel's own time flush before each of them (writeback
                // mounts) is what coalescing saves; a flush that then finds
                // the last name gone is moot (see `flush_answered`).
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
        // When it was sent, for the times laid over its reply (bit 0 is the
        // listing flag of `note_readers`); a held request's is set again
        // when it goes (`release_held`).
        aux[2] |= self.times.clock() << 1;
        match opcode {
            Opcode::Init => self.rewrite_init(unique, msg),
            Opcode::Open | Opcode::Create | Opcode::TmpFile => {
                self.writeback_open(unique, node, msg)
            }
            _ => {}
        }
        let copied = self.keep_copy(unique, opcode, msg);
        if !self.map_request(unique, node, opcode, msg) {
            if copied {
                self.forget_copy(unique);
            }
            self.actions.push_back(Action::Free(slot));
            return;
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
            self.answer_error(unique, node, EAGAIN, DecisionKind::Busy);
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
                // The flush it waits for: the first node's, now in flight.
                let flush = if all || ndeps == 0 {
                    0
                } else {
                    self.times.flushing(deps[0].0).map_or(0, |f| f.unique.0)
                };
                self.note(DecisionKind::HeldBehindFlush, unique, node, flush);
            }
            self.held.push(Held {
                slot,
                unique,
                node,
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
    fn forward_unless(&mut self, deferred: bool, slot: SlotId, msg: &mut [u8]) {
        let lost = !deferred && !self.map_request(Unique(0), NodeId(0), Opcode::Forget, msg);
        if deferred || lost {
            self.actions.push_back(Action::Free(slot));
        } else {
            self.stats.forwarded += 1;
            self.actions.push_back(Action::ForwardRequest(slot));
        }
    }

    /// A datagram received from the backend into `slot`. `msg` is what fit in
    /// the slot; `received` is the datagram's real length (larger than
    /// `msg.len()` when it was truncated). Queues actions that deliver or free
    /// `slot`, and answers with EIO the request a bad reply names. Replies
    /// carrying attributes feed the cache and show pending times.
    pub fn handle_reply(&mut self, now: Instant, slot: SlotId, msg: &mut [u8], received: usize) {
        self.now = now;
        if received > msg.len() {
            let named = reply::unique_of(msg);
            self.bad_reply(BadReplyReason::Oversized, named, named);
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
                let named = reply::unique_of(msg);
                self.bad_reply(reason, named, named);
                self.actions.push_back(Action::Free(slot));
                return;
            }
        };
        let (unique, error, kind) = (parsed.unique(), parsed.error(), parsed.kind());
        if let ReplyKind::Notify(_) = kind {
            if !self.map_reply(Opcode::Init, NodeId(0), msg) {
                // Names a node the kernel does not know under that id.
                self.actions.push_back(Action::Free(slot));
                return;
            }
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
                self.note(DecisionKind::LateReplyDropped, unique, NodeId(0), 0);
                self.actions.push_back(Action::Free(slot));
            } else if error == -EAGAIN || error == -ENOSYS {
                // The interrupted request was answered first: the kernel
                // would find nothing to act on either (a backend answers
                // EAGAIN to an INTERRUPT it got before its request, which
                // several readers of the device can cause). Not a bad reply.
                self.stats.stale_interrupt_replies += 1;
                self.actions.push_back(Action::Free(slot));
            } else {
                self.bad_reply(BadReplyReason::UnknownUnique, None, Some(unique));
                self.actions.push_back(Action::Free(slot));
            }
            return;
        }
        let Some(entry) = self.inflight.remove(unique) else {
            if !self.late_reply(unique, error, msg) {
                self.bad_reply(BadReplyReason::UnknownUnique, None, Some(unique));
            }
            self.actions.push_back(Action::Free(slot));
            return;
        };
        if entry.origin == Origin::Proxy {
            if entry.opcode == Opcode::Init {
                self.replayed_init_answered(error, msg);
            } else if !self.recovery_answered(&entry, error, msg) {
                self.injected_reply(entry, error, msg);
            }
            self.actions.push_back(Action::Free(slot));
            return;
        }
        if entry.opcode == Opcode::Init {
            self.stats.replies += 1;
            match self.negotiate(entry.unique, msg, error) {
                Some(grown) => {
                    self.actions.push_back(Action::Free(slot));
                    self.actions.push_back(Action::Answer(grown));
                }
                None => self.actions.push_back(Action::DeliverReply(slot)),
            }
            return;
        }
        self.forget_copy(entry.unique);
        if !self.map_reply(entry.opcode, entry.node, msg) {
            // The new backend handed out an id the map cannot give the
            // kernel: its caller gets EIO.
            self.answer_error(
                entry.unique,
                entry.node,
                EIO,
                DecisionKind::BadReplyAnswered,
            );
            self.actions.push_back(Action::Free(slot));
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
                let clock = self.times.clock();
                if let Some(e) = self.inflight.get_mut(h.unique) {
                    e.aux[2] = e.aux[2] & 1 | clock << 1;
                }
                self.note(DecisionKind::Released, h.unique, h.node, 0);
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
        self.fail_resends();
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
        // The proxy's own requests name the kernel's ids, like the kernel's:
        // translated the same way (a recovery's are not: see `inject_raw`).
        if !self.raw_injection {
            if let Some(map) = self.nodes.as_mut() {
                if map.handle_request(&mut bytes[..len]).is_err() {
                    return None;
                }
            }
        }
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
                self.answer_error(unique, e.node, EIO, DecisionKind::SendFailed);
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
        if self.draining {
            while let Some(entry) = self.inflight.pop_any() {
                if let Some(a) = self.drain_one(entry) {
                    return Some(a);
                }
            }
            self.draining = false;
        }
        if self.backend_gone {
            while let Some(entry) = self.inflight.pop_any() {
                if entry.origin == Origin::Kernel && entry.opcode.needs_reply() {
                    self.stats.answered_with_error += 1;
                    let kind = DecisionKind::BackendGone;
                    self.note(kind, entry.unique, entry.node, EIO as u64);
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

    /// Turns the reporting of [`Decision`]s on or off (off at creation, so
    /// that a caller that never polls them keeps no queue). Switch it on
    /// before the first input for the decisions to agree with all of
    /// [`stats`](Self::stats).
    pub fn set_decisions(&mut self, on: bool) {
        self.decisions_on = on;
        if !on {
            self.decisions.clear();
        }
    }

    /// The next decision taken, in the order taken; `None` when there is
    /// none. Call after [`poll_action`](Self::poll_action) has returned
    /// `None` (calling it between actions is harmless too).
    #[must_use]
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop_front()
    }

    /// Reports a decision, if decisions are on.
    pub(crate) fn note(&mut self, kind: DecisionKind, unique: Unique, node: NodeId, detail: u64) {
        if self.decisions_on {
            self.decisions.push_back(Decision {
                unique,
                node,
                kind,
                detail,
            });
        }
    }

    /// Answers `unique` with `-errno`, counted as `kind` decided it.
    fn answer_error(&mut self, unique: Unique, node: NodeId, errno: i32, kind: DecisionKind) {
        debug_assert!(kind.is_error_answer());
        // What `--restart` keeps of a request until its reply (a name to
        // learn, a copy to resend) goes with the proxy's own answer; a
        // deadline's answer would otherwise leave it until the table is
        // full.
        if let Some(m) = self.nodes.as_mut() {
            m.request_dropped(unique.0);
        }
        self.forget_copy(unique);
        self.note(kind, unique, node, errno as u64);
        self.stats.answered_with_error += 1;
        self.actions
            .push_back(Action::AnswerError { unique, errno });
    }

    /// A reply dropped as invalid. `named` is the request it names when
    /// that can be trusted (answered with EIO if in flight); `seen` the
    /// unique it carried, for the decision.
    fn bad_reply(&mut self, reason: BadReplyReason, named: Option<Unique>, seen: Option<Unique>) {
        let seen = seen.unwrap_or(Unique(0));
        self.note(
            DecisionKind::BadReplyDropped,
            seen,
            NodeId(0),
            reason.code(),
        );
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
                self.answer_error(e.unique, e.node, EIO, DecisionKind::BadReplyAnswered);
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
