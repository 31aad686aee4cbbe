//! What the engine asks the proxy to do, and what it tells it happened.

use fuseproxy_protocol::{NodeId, Opcode, Unique};

/// A handle to a message buffer owned by the proxy (an arena slot).
///
/// The engine only passes it back in an [`Action`]; it never sees the memory
/// behind it outside the call that handed it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId(pub u32);

/// The largest message the engine builds itself: a request of its own (a
/// DESTROY, a SETATTR, a FORGET, a LOOKUP of a name up to 255 bytes after a
/// restart) or a local answer (`fuse_attr_out`).
pub const INLINE_MAX: usize = 304;

/// A message the engine encoded itself: a request of the proxy's own for the
/// backend, or an answer for the kernel. 8-aligned like an arena slot, so
/// that its bytes parse.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub struct Inline {
    bytes: [u8; INLINE_MAX],
    len: u16,
}

impl Inline {
    /// Wraps `len` encoded bytes.
    ///
    /// # Panics
    /// If `len` exceeds [`INLINE_MAX`]; the engine only builds requests that fit.
    pub(crate) fn new(bytes: [u8; INLINE_MAX], len: usize) -> Self {
        assert!(len <= INLINE_MAX);
        Inline {
            bytes,
            len: len as u16,
        }
    }

    /// The request's bytes, header included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl core::fmt::Debug for Inline {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Inline({} bytes)", self.len)
    }
}

/// One instruction for the proxy. Carry them out in the order
/// [`Engine::poll_action`](crate::Engine::poll_action) returns them.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Send the request in this slot to the backend, then free the slot.
    ForwardRequest(SlotId),
    /// Write the reply or notification in this slot to the device, then free the slot.
    DeliverReply(SlotId),
    /// Free this slot; nothing is sent.
    Free(SlotId),
    /// Write a reply carrying only `-errno` for `unique` to the device.
    AnswerError {
        /// The kernel's request to answer.
        unique: Unique,
        /// A positive errno.
        errno: i32,
    },
    /// Send this request of the proxy's own to the backend.
    Inject(Inline),
    /// Write this reply, made by the engine, to the device.
    Answer(Inline),
    /// Keep the request in this slot and hand it to
    /// [`Engine::handle_request`](crate::Engine::handle_request) again once
    /// [`Engine::can_accept_request`](crate::Engine::can_accept_request)
    /// says so: it was read while a restart of the backend was under way
    /// (by a reader already waiting in its read).
    Retry(SlotId),
}

/// Something the proxy should know about, mostly to log it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The kernel's INIT was seen; `removed` are the capability bits taken out
    /// of its offer before the backend saw it because they need the real
    /// device (what `[init]` removed is in [`Event::Negotiated`]).
    InitOffered {
        /// The kernel's protocol minor.
        minor: u32,
        /// The flags the kernel offered (flags | flags2 << 32), before removal.
        offered: u64,
        /// The device-only flags removed.
        removed: u64,
    },
    /// The backend answered INIT; the session runs with these values.
    /// Flags are `flags | flags2 << 32`; a `max_pages` of 0 means
    /// `FUSE_MAX_PAGES` is not in effect.
    Negotiated {
        /// Protocol major of the backend's reply.
        major: u32,
        /// Protocol minor the backend chose.
        minor: u32,
        /// max_write sent to the kernel (after `[init]` and the arena's limit).
        max_write: u32,
        /// max_write the backend asked for.
        backend_max_write: u32,
        /// max_readahead sent to the kernel.
        max_readahead: u32,
        /// max_readahead the backend answered.
        backend_max_readahead: u32,
        /// max_pages sent to the kernel.
        max_pages: u16,
        /// max_pages the backend answered.
        backend_max_pages: u16,
        /// Flags the kernel offered, before the proxy's changes.
        offered: u64,
        /// Flags the backend answered.
        answered: u64,
        /// Flags sent to the kernel: the session runs with these.
        flags: u64,
        /// Removed from the offer by `[init]`'s `mask`.
        masked: u64,
        /// Removed from the offer by `writeback_cache = "deny"`.
        denied: u64,
        /// Set in the answer by the proxy (`writeback_cache = "force"`).
        forced: u64,
    },
    /// The backend refused INIT or sent a reply the proxy cannot read.
    InitFailed {
        /// The errno it answered with (positive), or EIO for an unreadable reply.
        errno: i32,
    },
    /// A request of the proxy's own was answered.
    InjectedReply {
        /// What it was.
        opcode: Opcode,
        /// Its unique.
        unique: Unique,
        /// The backend's error (0 = success, otherwise negative errno).
        error: i32,
    },
    /// A flush of locally acknowledged times failed in the backend, and it
    /// will not be sent again (`on_flush_error = "log"`, or its retries are
    /// used up): its times are given up. Its caller was answered long ago,
    /// so the log is the only place it shows.
    FlushFailed {
        /// The node.
        node: NodeId,
        /// The backend's error (negative errno).
        error: i32,
        /// The atime it tried to apply.
        atime: Option<(i64, u32)>,
        /// The mtime it tried to apply.
        mtime: Option<(i64, u32)>,
        /// Times these times were sent (1 when nothing was retried).
        attempts: u32,
    },
    /// A flush failed in the backend and will be sent again
    /// (`on_flush_error = "retry"`).
    FlushRetrying {
        /// The node.
        node: NodeId,
        /// The backend's error (negative errno).
        error: i32,
        /// Times its times have been refused so far.
        attempts: u32,
        /// Retries still allowed.
        left: u32,
        /// When it goes again unless something on the node needs it sooner.
        after: crate::Duration,
    },
    /// The backend died and a new one is being started (`--restart`).
    BackendRestarting {
        /// Requests it had in flight, answered EIO (the kernel's) or kept
        /// (time updates).
        inflight: usize,
        /// Nodes with time updates it has not applied, kept for the next.
        times_pending: usize,
    },
    /// The new backend answered INIT as the first one did; the session goes
    /// on with it.
    BackendRestarted {
        /// Requests the dead backend never answered that were safe to send
        /// twice, sent to the new one.
        resent: usize,
        /// Nodes whose time updates are sent to it now.
        times_pending: usize,
        /// Nodes the kernel holds, found again (or never lost).
        nodes: usize,
        /// Open files reopened.
        handles: usize,
        /// Nodes lost, in all restarts so far: they answer ESTALE.
        lost_nodes: u64,
        /// Open files lost, in all restarts so far: they answer ESTALE.
        lost_handles: u64,
    },
    /// The new backend cannot stand in for the old one; the session ends
    /// as if the backend had died for good.
    RestartRefused {
        /// Why.
        why: &'static str,
    },
    /// The backend went away with time updates it never applied.
    TimesLost {
        /// Nodes whose acknowledged times are lost.
        nodes: usize,
    },
    /// A request waited past its `[deadlines]` limit and was answered with
    /// `errno`.
    DeadlineExpired {
        /// The kernel's request.
        unique: Unique,
        /// What it was.
        opcode: Opcode,
        /// The node it concerned.
        node: NodeId,
        /// The errno its caller got (positive).
        errno: i32,
        /// Whether the backend had it (`false`: it was still held by the
        /// proxy, and was never sent).
        sent: bool,
    },
    /// The backend answered a request after its deadline; the reply was
    /// dropped.
    LateReply {
        /// The request.
        unique: Unique,
        /// What it was.
        opcode: Opcode,
        /// The backend's error (0 = success, otherwise negative errno).
        error: i32,
        /// Requests of the proxy's own sent to undo what the reply left in
        /// the backend (a FORGET of the lookup, a RELEASE of the handle).
        undone: u8,
    },
    /// A reply was dropped as invalid; the stats count it by reason.
    BadReply {
        /// Why, in a few words.
        reason: BadReplyReason,
        /// The request it named, if it named one in flight (answered with EIO).
        unique: Option<Unique>,
    },
}

/// Why a reply from the backend was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadReplyReason {
    /// Shorter than `fuse_out_header`.
    ShortHeader,
    /// `len` differs from the bytes received.
    LengthMismatch,
    /// Error outside the kernel's range.
    BadError,
    /// An error reply with a body.
    ErrorWithBody,
    /// Larger than the largest legal reply.
    Oversized,
    /// Names no request in flight.
    UnknownUnique,
}

impl BadReplyReason {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BadReplyReason::ShortHeader => "short header",
            BadReplyReason::LengthMismatch => "length mismatch",
            BadReplyReason::BadError => "error out of range",
            BadReplyReason::ErrorWithBody => "error with body",
            BadReplyReason::Oversized => "oversized",
            BadReplyReason::UnknownUnique => "unknown unique",
        }
    }
}

/// One decision the engine took about one message, as data: what a capture
/// records beside the messages so that a reader sees why the proxy did
/// what it did (`fixtures/FORMAT.md`, record kind 7).
///
/// `Copy` and heap-free: ids and a code only. Drained with
/// [`Engine::poll_decision`](crate::Engine::poll_decision) once enabled by
/// [`Engine::set_decisions`](crate::Engine::set_decisions).
///
/// # Agreement with [`Stats`](crate::Stats)
/// While decisions are enabled, every counter increment that concerns one
/// message has exactly one decision, so counting decisions by kind gives
/// the counters' increments over the same span (see
/// [`DecisionKind`] for which counter each kind stands for). Counters a
/// message record already shows (requests, forwarded, replies, injected,
/// notifications) and those about no message (cache clears, reloads) have
/// none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The message concerned: the kernel's request, or for a flush the
    /// unique of the proxy's own SETATTR.
    pub unique: Unique,
    /// The node concerned, 0 when none applies.
    pub node: NodeId,
    /// What was decided.
    pub kind: DecisionKind,
    /// A number whose meaning the kind gives (an errno, the flush a
    /// request waits for, a count); 0 when the kind has none.
    pub detail: u64,
}

macro_rules! decision_kinds {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $text:literal;)*) => {
        /// What a [`Decision`] says. The codes are stable: a capture stores
        /// them (`fixtures/FORMAT.md`, "Decision record"), and a code is
        /// never reused for another meaning.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum DecisionKind {
            $($(#[$doc])* $name = $code,)*
        }

        impl DecisionKind {
            /// Every kind, in code order.
            pub const ALL: &'static [DecisionKind] = &[$(DecisionKind::$name,)*];

            /// The kind stored as `code`, if this version knows it.
            pub fn from_code(code: u16) -> Option<DecisionKind> {
                match code {
                    $($code => Some(DecisionKind::$name),)*
                    _ => None,
                }
            }

            /// A short name, the same one `fuseproxy-capture` prints.
            pub fn name(self) -> &'static str {
                match self {
                    $(DecisionKind::$name => $text,)*
                }
            }
        }
    };
}

decision_kinds! {
    /// A time-only SETATTR answered by the proxy (`times.acked_locally`).
    TimesAcked = 1, "times_acked";
    /// That answer merged its times into the node's pending record
    /// (`times.coalesced`).
    TimesCoalesced = 2, "times_coalesced";
    /// A time-only SETATTR sent to the backend and waited for
    /// (`times.forwarded_sync`).
    TimesForwarded = 3, "times_forwarded";
    /// A request held until a flush is answered (`times.held`); `detail`
    /// is the flush's unique, 0 when it waits for all of them (DESTROY).
    HeldBehindFlush = 4, "held_behind_flush";
    /// A request held by `[fault]`'s delay (`policy.delayed`); `detail` is
    /// the delay in ns.
    Delayed = 5, "delayed";
    /// A held request sent to the backend at last.
    Released = 6, "released";
    /// A SETATTR of the proxy's own applying a node's acknowledged times
    /// (`times.flushes`); `unique` is its own, `detail` the attempt (1 first).
    FlushSent = 7, "flush_sent";
    /// That flush is a retry after a refusal (`policy.flush_retries`).
    FlushRetry = 8, "flush_retry";
    /// The backend applied a flush.
    FlushOk = 9, "flush_ok";
    /// The backend refused a flush (`times.flush_errors`); `detail` is the
    /// errno (positive).
    FlushFailed = 10, "flush_failed";
    /// A flush refused because the file's last name is gone: nobody can
    /// see the times (`times.flush_moot`); `detail` is the errno.
    FlushMoot = 11, "flush_moot";
    /// A flush given up after its last retry (`policy.flush_gave_up`).
    FlushGaveUp = 12, "flush_gave_up";
    /// Answered by `[deny]` (`policy.denied`, `answered_with_error`);
    /// `detail` is the errno.
    Denied = 13, "denied";
    /// Answered EROFS by `[deny] read_only` (`policy.denied`,
    /// `answered_with_error`); `detail` is the errno.
    ReadOnly = 14, "read_only";
    /// Failed by `[fault]` (`policy.faulted`, `answered_with_error`);
    /// `detail` is the errno.
    Faulted = 15, "faulted";
    /// Answered at its `[deadlines]` limit (`policy.deadlines_hit`,
    /// `answered_with_error`); `detail` is the errno.
    DeadlineExpired = 16, "deadline_expired";
    /// A reply after its request's deadline, dropped (`policy.late_replies`).
    LateReplyDropped = 17, "late_reply_dropped";
    /// A LOOKUP's ENOENT turned into a negative entry by `[cache]`
    /// (`policy.negative_entries`).
    NegativeEntry = 18, "negative_entry";
    /// A reply's cache timeouts or open flags changed by `[cache]`
    /// (`policy.cache_changed`, by `detail`: the values changed).
    CacheRewritten = 19, "cache_rewritten";
    /// The kernel's INIT offer changed by `[init]` (`policy.init_rewrites`,
    /// by `detail`).
    InitOfferRewritten = 20, "init_offer_rewritten";
    /// The backend's INIT answer changed (`policy.init_rewrites`, by
    /// `detail`: the values changed).
    InitAnswerRewritten = 21, "init_answer_rewritten";
    /// OPEN/CREATE/TMPFILE flags rewritten for forced writeback
    /// (`policy.writeback_opens`).
    WritebackOpen = 22, "writeback_open";
    /// A request the engine could not parse, answered EIO
    /// (`answered_with_error`).
    Malformed = 23, "malformed";
    /// Answered EIO because the backend is gone (`answered_with_error`).
    BackendGone = 24, "backend_gone";
    /// Answered EAGAIN: the in-flight table was full (`answered_with_error`).
    Busy = 25, "busy";
    /// Answered EIO because the backend's reply to it was invalid
    /// (`answered_with_error`).
    BadReplyAnswered = 26, "bad_reply_answered";
    /// Answered EIO because it could not be sent to the backend
    /// (`answered_with_error`).
    SendFailed = 27, "send_failed";
    /// A reply from the backend dropped as invalid (`bad`, by reason);
    /// `detail` is the [`BadReplyReason`] code.
    BadReplyDropped = 28, "bad_reply_dropped";
    /// Answered ESTALE: its node or open file did not survive a restart of
    /// the backend (`answered_with_error`).
    Stale = 29, "stale";
    /// The backend died and is being started again (`--restart`);
    /// `detail` is the requests it had in flight.
    RestartBegan = 30, "restart_began";
    /// A node the kernel holds was found again in the new backend
    /// (`node`); `detail` is the new backend's id for it.
    NodeFound = 31, "node_found";
    /// A node the kernel holds could not be found again (`node`); it
    /// answers ESTALE.
    NodeLost = 32, "node_lost";
    /// An open file was opened again in the new backend (`node`);
    /// `detail` is the new handle.
    HandleReopened = 33, "handle_reopened";
    /// An open file could not be opened again (`node`); it answers ESTALE.
    HandleLost = 34, "handle_lost";
    /// A request the dead backend never answered sent to the new one
    /// (`unique` is the kernel's).
    Resent = 35, "resent";
    /// The new backend took over; `detail` is the requests sent again.
    RestartDone = 36, "restart_done";
    /// The new backend was refused (it answered INIT otherwise).
    RestartRefused = 37, "restart_refused";
    /// The new backend's channel is up; it is sent the kernel's INIT again.
    /// Recorded before that INIT, so that a capture says when the proxy
    /// told the engine (what a replay through the engine needs).
    RestartLaunched = 38, "restart_launched";
}

impl DecisionKind {
    /// The code a capture stores.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Whether this kind answered a request with an error of the proxy's
    /// own, i.e. counts in `Stats::answered_with_error`.
    pub fn is_error_answer(self) -> bool {
        use DecisionKind::*;
        matches!(
            self,
            Denied
                | ReadOnly
                | Faulted
                | DeadlineExpired
                | Malformed
                | BackendGone
                | Busy
                | BadReplyAnswered
                | SendFailed
                | Stale
        )
    }
}

impl BadReplyReason {
    /// A stable number for [`DecisionKind::BadReplyDropped`]'s detail.
    pub fn code(self) -> u64 {
        match self {
            BadReplyReason::ShortHeader => 1,
            BadReplyReason::LengthMismatch => 2,
            BadReplyReason::BadError => 3,
            BadReplyReason::ErrorWithBody => 4,
            BadReplyReason::Oversized => 5,
            BadReplyReason::UnknownUnique => 6,
        }
    }
}
