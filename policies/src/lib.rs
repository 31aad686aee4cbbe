//! fuseproxy's decision engine: what to do with each FUSE message passing
//! between the kernel and the backend.
//!
//! This crate does no I/O and reads no clock. It is a state machine fed
//! decoded messages and the current time ([`Instant`], supplied by the
//! caller), which answers with [`Action`]s for the caller to carry out, in
//! the manner of quinn-proto. The same engine therefore runs inside the
//! proxy, in unit tests with a made-up clock, and over a recorded capture.
//!
//! # Contract
//! - Call one `handle_*` method per input, then drain
//!   [`Engine::poll_action`] and [`Engine::poll_event`] until `None`.
//! - `now` never decreases from one call to the next.
//! - Every slot handed in comes back in exactly one action
//!   (`ForwardRequest`, `DeliverReply` or `Free`).
//! - After [`Engine::new`], nothing allocates.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod action;
pub mod attr_cache;
pub mod by_unique;
pub mod cache;
pub mod config;
pub mod deadlines;
pub mod deny;
mod engine;
pub mod errno;
pub mod fault;
pub mod index_heap;
pub mod inflight;
pub mod init_rule;
mod instant;
pub mod names;
pub mod node_map;
pub mod paths;
pub mod rules;
mod stats;
pub mod times;

pub use action::{
    Action, BadReplyReason, Decision, DecisionKind, Event, Inline, SlotId, INLINE_MAX,
};
pub use config::{ConfigError, Policy};
pub use engine::{Config, Engine, TimesMode};
pub use instant::{Duration, Instant};
pub use rules::Rules;
pub use stats::{BadReplies, PolicyStats, Stats, TimesStats};

#[cfg(test)]
mod tests;
