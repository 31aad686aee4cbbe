//! The engine: one FUSE session's state between the kernel and the backend.

use std::collections::VecDeque;

use fuseproxy_protocol::abi::InHeader;
use fuseproxy_protocol::{
    encode, init, reply, NodeId, Opcode, ParseError, Reply, ReplyKind, Request, Unique,
};

use crate::action::{Action, BadReplyReason, Event, Injected, SlotId, INJECTED_MAX};
use crate::inflight::{Entry, Inflight, Origin, INJECTED_UNIQUE_BASE};
use crate::init_rule::{limits_for, DEVICE_ONLY_FLAGS};
use crate::{Instant, Stats};

/// How an engine is sized and what it removes from INIT.
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_inflight: 4096,
            max_message: 1024 * 1024 + 4096,
            clear_init_flags: DEVICE_ONLY_FLAGS,
        }
    }
}

/// Actions queued by one `handle_*` call are at most a few; the queue is
/// allocated with this room once and the contract (drain after every input)
/// keeps it from growing.
const ACTION_QUEUE: usize = 64;
const EVENT_QUEUE: usize = 64;

/// A FUSE session seen from the middle.
///
/// # Call protocol
/// 1. Feed one input: [`handle_request`](Self::handle_request) for a message
///    read from the device, [`handle_reply`](Self::handle_reply) for one
///    received from the backend, [`handle_backend_gone`](Self::handle_backend_gone),
///    [`handle_shutdown`](Self::handle_shutdown) or
///    [`handle_timeout`](Self::handle_timeout).
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
    /// Protocol minor of the session, once INIT is answered (0 before).
    minor: u32,
    backend_gone: bool,
    next_injected: u64,
    /// The unique of our DESTROY, while it waits for its reply.
    destroy_pending: Option<Unique>,
    destroy_done: bool,
}

impl Engine {
    /// An engine with its tables allocated for `config`.
    pub fn new(config: Config) -> Self {
        Engine {
            config,
            inflight: Inflight::with_capacity(config.max_inflight),
            actions: VecDeque::with_capacity(ACTION_QUEUE),
            events: VecDeque::with_capacity(EVENT_QUEUE),
            stats: Stats::default(),
            minor: 0,
            backend_gone: false,
            next_injected: INJECTED_UNIQUE_BASE,
            destroy_pending: None,
            destroy_done: false,
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Requests waiting for the backend.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether the session's INIT has been answered.
    pub fn is_initialized(&self) -> bool {
        self.minor != 0
    }

    /// Whether another request may be read from the device now. When `false`,
    /// the proxy leaves the device unread until a reply frees room.
    pub fn can_accept_request(&self) -> bool {
        !self.inflight.is_full() && self.actions.len() < ACTION_QUEUE / 2
    }

    /// Whether the DESTROY sent by [`handle_shutdown`](Self::handle_shutdown)
    /// has been answered, or no answer can come (nothing sent, backend gone).
    pub fn is_shutdown_complete(&self) -> bool {
        self.destroy_done || self.backend_gone || self.destroy_pending.is_none()
    }

    /// The next deadline at which [`handle_timeout`](Self::handle_timeout)
    /// must be called. Changes after any `handle_*` call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Time has reached a deadline from [`poll_timeout`](Self::poll_timeout).
    /// Spurious calls are harmless.
    pub fn handle_timeout(&mut self, _now: Instant) {}

    /// A request read from the device into `slot`; `msg` is its bytes, which
    /// the engine may rewrite in place (INIT). Queues exactly one action for
    /// `slot` (forward it, or free it after answering).
    pub fn handle_request(&mut self, _now: Instant, slot: SlotId, msg: &mut [u8]) {
        self.stats.requests += 1;
        let (unique, opcode, node) = match Request::parse(msg) {
            Ok(req) => (req.unique(), req.opcode(), req.nodeid()),
            Err(_) => {
                // The kernel never sends this; answer what the header names
                // rather than pass on bytes the backend may choke on.
                if let Some(h) = header_of(msg) {
                    if Opcode::from(h.opcode).needs_reply() {
                        self.answer_error(Unique(h.unique), libc_eio());
                    }
                }
                self.actions.push_back(Action::Free(slot));
                return;
            }
        };
        if self.backend_gone {
            if opcode.needs_reply() {
                self.answer_error(unique, libc_eio());
            }
            self.actions.push_back(Action::Free(slot));
            return;
        }
        if opcode == Opcode::Init {
            self.rewrite_init(msg);
        }
        if unique.is_resend() {
            // The kernel re-sends a request under its old unique with bit 63
            // set; the old entry will never be answered under its old name.
            self.inflight.remove(Unique(
                unique.0 & !fuseproxy_protocol::ids::FUSE_UNIQUE_RESEND,
            ));
        }
        if opcode.needs_reply()
            && !self.inflight.insert(Entry {
                unique,
                opcode,
                node,
                origin: Origin::Kernel,
            })
        {
            // Only when the proxy ignored can_accept_request().
            self.answer_error(unique, EAGAIN);
            self.actions.push_back(Action::Free(slot));
            return;
        }
        self.stats.forwarded += 1;
        self.actions.push_back(Action::ForwardRequest(slot));
    }

    fn rewrite_init(&mut self, msg: &mut [u8]) {
        let body = &mut msg[core::mem::size_of::<InHeader>()..];
        let (minor, offered) = match init::InitInView::parse(body) {
            Ok(v) => (v.minor(), v.flags()),
            Err(_) => return,
        };
        let removed = init::rewrite_init_in_flags(body, self.config.clear_init_flags).unwrap_or(0);
        self.push_event(Event::InitOffered {
            minor,
            offered,
            removed,
        });
    }

    /// A datagram received from the backend into `slot`. `msg` is what fit in
    /// the slot; `received` is the datagram's real length (larger than
    /// `msg.len()` when it was truncated). Queues actions that deliver or free
    /// `slot`, and answers with EIO the request a bad reply names.
    pub fn handle_reply(&mut self, _now: Instant, slot: SlotId, msg: &mut [u8], received: usize) {
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
                    ParseError::BadError(_) => BadReplyReason::BadError,
                    ParseError::ErrorWithBody { .. } => BadReplyReason::ErrorWithBody,
                    _ => BadReplyReason::BadError,
                };
                self.bad_reply(reason, reply::unique_of(msg));
                self.actions.push_back(Action::Free(slot));
                return;
            }
        };
        let (unique, error) = (parsed.unique(), parsed.error());
        if let ReplyKind::Notify(_) = parsed.kind() {
            self.stats.notifications += 1;
            self.actions.push_back(Action::DeliverReply(slot));
            return;
        }
        if parsed.kind() == ReplyKind::InterruptReply {
            // A reply to an INTERRUPT (EAGAIN: "send it again", ENOSYS: "I
            // don't do interrupts") is legal while the interrupted request is
            // in flight; the kernel acts on it.
            if self.inflight.get(unique.without_int_bit()).is_some() {
                self.stats.replies += 1;
                self.actions.push_back(Action::DeliverReply(slot));
            } else {
                self.bad_reply(BadReplyReason::UnknownUnique, None);
                self.actions.push_back(Action::Free(slot));
            }
            return;
        }
        let Some(entry) = self.inflight.remove(unique) else {
            self.bad_reply(BadReplyReason::UnknownUnique, None);
            self.actions.push_back(Action::Free(slot));
            return;
        };
        if entry.origin == Origin::Proxy {
            self.injected_reply(entry, error);
            self.actions.push_back(Action::Free(slot));
            return;
        }
        if entry.opcode == Opcode::Init {
            self.negotiate(msg, error);
        }
        self.stats.replies += 1;
        self.actions.push_back(Action::DeliverReply(slot));
    }

    fn negotiate(&mut self, msg: &mut [u8], error: i32) {
        if error != 0 {
            self.push_event(Event::InitFailed { errno: -error });
            return;
        }
        let body = &mut msg[OUT_HEADER..];
        let Ok(view) = init::InitOutView::parse(body) else {
            self.push_event(Event::InitFailed { errno: libc_eio() });
            return;
        };
        let (major, minor, backend_max_write, flags) =
            (view.major(), view.minor(), view.max_write(), view.flags());
        let (max_write, max_pages) = limits_for(self.config.max_message);
        let max_write = init::clamp_init_out(body, max_write, max_pages)
            .map(|(w, _)| w)
            .unwrap_or(backend_max_write);
        self.minor = minor.max(1);
        self.push_event(Event::Negotiated {
            major,
            minor,
            max_write,
            backend_max_write,
            flags,
        });
    }

    fn injected_reply(&mut self, entry: Entry, error: i32) {
        if Some(entry.unique) == self.destroy_pending {
            self.destroy_pending = None;
            self.destroy_done = true;
        }
        self.push_event(Event::InjectedReply {
            opcode: entry.opcode,
            unique: entry.unique,
            error,
        });
    }

    /// The backend is gone (its socket closed or reset). Every request it
    /// owed a reply is answered with EIO, and later requests are answered
    /// the same way without being forwarded.
    pub fn handle_backend_gone(&mut self, _now: Instant) {
        self.backend_gone = true;
        // The answers are produced lazily by poll_action, one per call, so
        // that a full table needs no queue of its size.
    }

    /// A request could not be handed to the backend (it can never fit the
    /// channel). It is answered with EIO if the kernel waits for it.
    pub fn handle_send_failure(&mut self, _now: Instant, unique: Unique) {
        if let Some(e) = self.inflight.remove(unique) {
            if e.origin == Origin::Kernel {
                self.answer_error(unique, libc_eio());
            } else if Some(unique) == self.destroy_pending {
                self.destroy_pending = None;
                self.destroy_done = true;
            }
        }
    }

    /// The session is ending (signal, or the kernel side is gone). Sends the
    /// backend a DESTROY of the proxy's own, since the kernel sends none for
    /// a `fuse` mount; [`is_shutdown_complete`](Self::is_shutdown_complete)
    /// tells when it has been answered.
    pub fn handle_shutdown(&mut self, _now: Instant) {
        if self.backend_gone
            || !self.is_initialized()
            || self.destroy_pending.is_some()
            || self.destroy_done
        {
            return;
        }
        if let Some(unique) = self.inject(Opcode::Destroy, NodeId(0), &[]) {
            self.destroy_pending = Some(unique);
        }
    }

    /// Encodes and queues a request of the proxy's own; records it in flight.
    fn inject(&mut self, opcode: Opcode, node: NodeId, body: &[u8]) -> Option<Unique> {
        let unique = Unique(self.next_injected);
        let header = InHeader {
            len: 0,
            opcode: opcode.into(),
            unique: unique.0,
            nodeid: node.0,
            ..InHeader::default()
        };
        let mut bytes = [0u8; INJECTED_MAX];
        let len = encode::encode_request(&mut bytes, &header, &[body])?;
        if !self.inflight.insert(Entry {
            unique,
            opcode,
            node,
            origin: Origin::Proxy,
        }) {
            return None;
        }
        self.next_injected += 2;
        self.stats.injected += 1;
        self.actions
            .push_back(Action::Inject(Injected::new(bytes, len)));
        Some(unique)
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
                if entry.origin == Origin::Kernel {
                    self.stats.answered_with_error += 1;
                    return Some(Action::AnswerError {
                        unique: entry.unique,
                        errno: libc_eio(),
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
        let answered = named
            .map(Unique::without_int_bit)
            .filter(|u| {
                self.inflight
                    .get(*u)
                    .is_some_and(|e| e.origin == Origin::Kernel)
            })
            .inspect(|u| {
                self.inflight.remove(*u);
            });
        if let Some(u) = answered {
            self.answer_error(u, libc_eio());
        }
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

const OUT_HEADER: usize = 16;
const EAGAIN: i32 = 11;

fn libc_eio() -> i32 {
    5
}

fn header_of(msg: &[u8]) -> Option<InHeader> {
    use zerocopy::FromBytes;
    InHeader::read_from_prefix(msg).ok().map(|(h, _)| h)
}
