//! Counters the engine keeps and the proxy reads and logs.

/// What the engine has seen and decided since it was created.
///
/// Plain counters: the proxy copies them out (`Engine::stats`) to log them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests read from the kernel.
    pub requests: u64,
    /// Requests forwarded to the backend.
    pub forwarded: u64,
    /// Replies from the backend delivered to the kernel.
    pub replies: u64,
    /// Notifications (unique 0) from the backend delivered to the kernel.
    pub notifications: u64,
    /// Replies to an INTERRUPT whose request had been answered already
    /// (dropped: the kernel has nothing to act on).
    pub stale_interrupt_replies: u64,
    /// Times the backend was started again under the mount (`--restart`).
    pub restarts: u64,
    /// Requests the engine answered itself with an error (malformed, backend gone).
    pub answered_with_error: u64,
    /// Requests of the proxy's own sent to the backend.
    pub injected: u64,
    /// Bad replies dropped, by reason.
    pub bad: BadReplies,
    /// Time-only SETATTR handling.
    pub times: TimesStats,
    /// What the policy's rules did.
    pub policy: PolicyStats,
}

/// What each rule of the policy did, since start (reloads included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyStats {
    /// Requests answered by `[deny]`.
    pub denied: u64,
    /// Requests failed by `[fault]`.
    pub faulted: u64,
    /// Requests delayed by `[fault]`.
    pub delayed: u64,
    /// Requests answered with an errno by `[deadlines]`.
    pub deadlines_hit: u64,
    /// Replies that came after their request's deadline, dropped.
    pub late_replies: u64,
    /// Flushes of times sent again under `on_flush_error = "retry"`.
    pub flush_retries: u64,
    /// Flushes given up after the last retry.
    pub flush_gave_up: u64,
    /// INIT values or flags changed by `[init]`.
    pub init_rewrites: u64,
    /// OPEN/CREATE/TMPFILE flags rewritten because writeback was forced.
    pub writeback_opens: u64,
    /// Timeouts and open flags changed by `[cache]`.
    pub cache_changed: u64,
    /// LOOKUPs answered ENOENT turned into negative entries by `[cache]`.
    pub negative_entries: u64,
    /// Policies put in force by a reload.
    pub reloads: u64,
}

/// What became of time-only SETATTRs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimesStats {
    /// Answered by the proxy at once.
    pub acked_locally: u64,
    /// Of those, merged into a record already pending for the node.
    pub coalesced: u64,
    /// Forwarded and waited for as before: no cached attributes, a caller
    /// the proxy may not vouch for, or a full table.
    pub forwarded_sync: u64,
    /// SETATTRs of the proxy's own sent to apply pending times.
    pub flushes: u64,
    /// Of those, answered with an error.
    pub flush_errors: u64,
    /// Of those, answered ENOENT or ESTALE after the file's last name was
    /// removed: nobody can see the times any more (not counted as errors).
    pub flush_moot: u64,
    /// Requests held until a flush was answered.
    pub held: u64,
    /// Times the attribute cache was emptied because a removed name was not
    /// known (its node, whose link count changed, could be any).
    pub cache_clears: u64,
}

/// Replies from the backend that never reached the kernel, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BadReplies {
    /// Shorter than the 16-byte `fuse_out_header`.
    pub short_header: u64,
    /// `len` differs from the bytes received.
    pub length_mismatch: u64,
    /// Error outside -511..=0, or a notification code the header cannot carry.
    pub bad_error: u64,
    /// An error reply that also carries a body.
    pub error_with_body: u64,
    /// Larger than any legal reply (truncated on receipt).
    pub oversized: u64,
    /// Names no request in flight (including replies to FORGET).
    pub unknown_unique: u64,
}

impl BadReplies {
    /// All bad replies together.
    pub fn total(&self) -> u64 {
        self.short_header
            + self.length_mismatch
            + self.bad_error
            + self.error_with_body
            + self.oversized
            + self.unknown_unique
    }
}
