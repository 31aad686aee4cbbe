//! A policy compiled into fixed tables: what the engine looks up per message.
//!
//! [`Rules::compile`] runs once per load (at start, and on each reload, off
//! the forwarding path); afterwards every decision is an index into an
//! array by opcode, so the hot path neither allocates nor searches. Rules
//! that differ by path live in [`Scope`]s: scope 0 is the whole mount, and
//! each `[[paths]]` entry adds one (see [`crate::paths`] for how a node
//! finds its scope).

use fuseproxy_protocol::Opcode;

use crate::cache::CacheRule;
use crate::config::{self, OnFlushError, Policy, TimesModeName, TrustCallers, Writeback};
use crate::deny::DenyRule;
use crate::fault::FaultRule;
use crate::paths::PathRules;
use crate::Duration;

/// Opcodes below this have table entries; the rest (CUSE_INIT, unknown)
/// match no rule.
pub const OPS: usize = 64;

/// The table index of `op`, if it has one.
pub fn op_index(op: Opcode) -> Option<usize> {
    let n: u32 = op.into();
    (n < OPS as u32).then_some(n as usize)
}

/// `[deadlines]` compiled: per opcode, how long a request may wait.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineRule {
    /// Per opcode; `None`: no deadline.
    pub limit: [Option<Duration>; OPS],
    /// Positive errno the caller gets past the deadline.
    pub errno: i32,
}

impl DeadlineRule {
    /// No deadlines.
    pub const OFF: DeadlineRule = DeadlineRule {
        limit: [None; OPS],
        errno: 5,
    };

    fn compile(s: &config::DeadlinesSection) -> DeadlineRule {
        let mut r = DeadlineRule::OFF;
        r.errno = s.errno.0;
        let nonzero = |d: config::Dur| (d.0.as_nanos() > 0).then_some(d.0);
        if let Some(d) = s.default {
            for (i, l) in r.limit.iter_mut().enumerate() {
                if !config::UNTOUCHABLE.contains(&Opcode::from(i as u32)) {
                    *l = nonzero(d);
                }
            }
        }
        for (op, d) in &s.ops {
            if let Some(i) = op_index(op.0) {
                r.limit[i] = nonzero(*d);
            }
        }
        r
    }

    /// The deadline of a request with opcode `op`, if any.
    pub fn limit(&self, op: Opcode) -> Option<Duration> {
        op_index(op).and_then(|i| self.limit[i])
    }
}

/// The rules that may differ under a path.
#[derive(Debug, Clone)]
pub struct Scope {
    /// `[deny]`.
    pub deny: DenyRule,
    /// `[fault]`.
    pub fault: FaultRule,
    /// `[cache]`.
    pub cache: CacheRule,
    /// `[deadlines]`.
    pub deadlines: DeadlineRule,
}

/// `[times]` compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimesRule {
    /// Answer time-only SETATTRs at once (`async`).
    pub asynchronous: bool,
    /// Longest wait before acknowledged times are sent.
    pub max_delay: Duration,
    /// Table sizes (fixed at start; a reload may not change them).
    pub max_pending: usize,
    /// Attribute cache size (fixed at start).
    pub attr_cache: usize,
    /// Acknowledge any caller's update, not only root's and the owner's.
    pub trust_any: bool,
    /// Retries of a failed flush (0 under `on_flush_error = "log"`).
    pub retries: u32,
    /// First back-off, doubled per retry.
    pub retry_backoff: Duration,
}

/// `[init]` compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InitRule {
    /// Capabilities removed from the kernel's offer (besides the
    /// device-only ones the engine always removes).
    pub mask: u64,
    /// Writeback cache: as the backend answers, forced, or denied.
    pub writeback: Writeback,
    /// Caps on the backend's answer (0: none).
    pub max_write: u32,
    /// Cap on max_readahead (0: none).
    pub max_readahead: u32,
    /// Cap on max_pages (0: none).
    pub max_pages: u16,
}

/// A whole policy, compiled.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `[times]`.
    pub times: TimesRule,
    /// `[init]`.
    pub init: InitRule,
    /// Scope 0: the whole mount; then one per `[[paths]]` entry, in order.
    pub scopes: Vec<Scope>,
    /// Which scope a node is in.
    pub paths: PathRules,
    /// Seed of the fault generator.
    pub fault_seed: u64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules::compile(&Policy::default())
    }
}

impl Rules {
    /// Compiles a checked policy. Allocates; call it off the forwarding path.
    pub fn compile(p: &Policy) -> Rules {
        let t = &p.times;
        let times = TimesRule {
            asynchronous: t.mode == TimesModeName::Async,
            max_delay: t.max_delay.0,
            max_pending: t.max_pending as usize,
            attr_cache: t.attr_cache as usize,
            trust_any: t.trust_callers == TrustCallers::Any,
            retries: if t.on_flush_error == OnFlushError::Retry {
                t.retries
            } else {
                0
            },
            retry_backoff: t.retry_backoff.0,
        };
        let init = p.init.as_ref().map_or(InitRule::default(), |i| InitRule {
            mask: i.mask.iter().fold(0, |m, f| m | f.0),
            writeback: i.writeback_cache,
            max_write: i.max_write.unwrap_or(0),
            max_readahead: i.max_readahead.unwrap_or(0),
            max_pages: i.max_pages.unwrap_or(0),
        });
        let whole = Scope {
            deny: p.deny.as_ref().map_or(DenyRule::OFF, DenyRule::compile),
            fault: p.fault.as_ref().map_or(FaultRule::OFF, FaultRule::compile),
            cache: p.cache.as_ref().map_or(CacheRule::OFF, CacheRule::compile),
            deadlines: p
                .deadlines
                .as_ref()
                .map_or(DeadlineRule::OFF, DeadlineRule::compile),
        };
        let mut scopes = vec![whole.clone()];
        for ps in &p.paths {
            scopes.push(Scope {
                deny: ps.deny.as_ref().map_or(whole.deny, DenyRule::compile),
                fault: ps.fault.as_ref().map_or(whole.fault, FaultRule::compile),
                cache: ps.cache.as_ref().map_or(whole.cache, CacheRule::compile),
                deadlines: ps
                    .deadlines
                    .as_ref()
                    .map_or(whole.deadlines, DeadlineRule::compile),
            });
        }
        Rules {
            times,
            init,
            scopes,
            paths: PathRules::compile(p.paths.iter().map(|ps| ps.path.as_str())),
            fault_seed: p.fault.as_ref().map_or(0, |f| f.seed),
        }
    }

    /// Scope `i`, or the whole mount's if `i` is out of range.
    pub fn scope(&self, i: usize) -> &Scope {
        self.scopes.get(i).unwrap_or(&self.scopes[0])
    }

    /// Why `self` cannot replace `old` in a running session, if it cannot:
    /// settings that size tables or pick the time mode are fixed at start.
    pub fn reload_conflict(&self, old: &Rules) -> Option<String> {
        let (a, b) = (&old.times, &self.times);
        let fixed = [
            ("times.mode", a.asynchronous != b.asynchronous),
            ("times.max_pending", a.max_pending != b.max_pending),
            ("times.attr_cache", a.attr_cache != b.attr_cache),
        ];
        if let Some((key, _)) = fixed.iter().find(|(_, changed)| *changed) {
            return Some(format!("{key} cannot change without a restart"));
        }
        if old.paths.is_empty() && !self.paths.is_empty() {
            return Some(
                "[[paths]] cannot be added by a reload: the proxy started without any, so it \
                 keeps no names (restart it with the new file)"
                    .into(),
            );
        }
        None
    }
}
