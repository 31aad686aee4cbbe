//! What the session tells: a log line for each of the engine's events (the
//! start-up line among them, once INIT is negotiated), the bad replies summed
//! up, the stats line (SIGUSR1 and the end), and systemd's status.
//!
//! Invariants: the first bad reply is logged in detail and later ones are
//! summed up at most once per BAD_REPLY_REPORT, so a backend that sends
//! garbage cannot flood the log; the stats line counts allocations since the
//! previous one (`alloc_mark`), so a dump under load shows whether the
//! forwarding path allocates.

use std::time::Duration;

use slog::{debug, error, info, warn};

use fuseproxy_policies::{Event, Stats};
use fuseproxy_protocol::flags;

use super::Shared;
use crate::alloc_count;
use crate::mount as mounting;
use crate::recorder::Recorder;

/// Bad replies after the first are summed up at most this often.
const BAD_REPLY_REPORT: Duration = Duration::from_secs(1);

impl Shared {
    pub(super) fn log_event(&mut self, ev: Event) {
        match ev {
            Event::InitOffered {
                minor,
                offered,
                removed,
            } => {
                debug!(
                    self.log,
                    "kernel offers protocol 7.{minor}, flags {offered:#x}"
                );
                if removed != 0 {
                    info!(
                        self.log,
                        "removed from the kernel's INIT offer (they need the real device): {}",
                        flags::init_flag_names(removed)
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                }
            }
            Event::Negotiated {
                major,
                minor,
                max_write,
                backend_max_write,
                max_readahead,
                backend_max_readahead,
                max_pages,
                backend_max_pages,
                offered,
                answered,
                flags: f,
                masked,
                denied,
                forced,
            } => {
                // Mounted by now, whichever the channel.
                self.connection = mounting::Connection::of_mount(self.mount.path());
                let p = self.startup.pinning;
                info!(
                    self.log,
                    "mounted {} ({}), channel {}, backend pid {}, protocol {major}.{minor}, \
                     max_write={max_write}, threads={}, mlockall={}, io_flusher={}, arena={}x{}B{}",
                    self.mount.path().display(),
                    self.startup.options,
                    self.startup.channel,
                    self.backend.pid(),
                    self.startup.threads.max(1),
                    p.mlockall_text(),
                    p.io_flusher_text(),
                    self.arena.slots(),
                    crate::arena::SLOT_SIZE,
                    if self.arena.is_locked() {
                        " locked"
                    } else {
                        " NOT locked"
                    },
                );
                self.ring_negotiated(f, offered, max_write, max_pages);
                self.tell_systemd("READY=1\n");
                if !crate::background::ready() {
                    warn!(
                        self.log,
                        "the mount helper that started the proxy is gone; the mount stays"
                    );
                }
                // The three flag sets in one line; their names only at debug,
                // what the proxy changed by name at info.
                let names = |bits: u64| flags::init_flag_names(bits).collect::<Vec<_>>().join(" ");
                let changes = [
                    ("forced", forced),
                    ("denied", denied),
                    ("masked", masked),
                    // A backend accepting what it was not offered.
                    ("removed from the backend's answer", answered & !f),
                ]
                .iter()
                .filter(|(_, bits)| *bits != 0)
                .map(|(what, bits)| format!("{what}: {}", names(*bits)))
                .collect::<Vec<_>>()
                .join("; ");
                let changes = if changes.is_empty() {
                    String::new()
                } else {
                    format!(" ({changes})")
                };
                info!(
                    self.log,
                    "INIT: kernel offered {offered:#x}, backend answered {answered:#x}, \
                     sent to the kernel {f:#x}{changes}"
                );
                debug!(
                    self.log,
                    "INIT flags offered by the kernel: {}",
                    names(offered)
                );
                debug!(
                    self.log,
                    "INIT flags answered by the backend: {}",
                    names(answered)
                );
                debug!(self.log, "INIT flags sent to the kernel: {}", names(f));
                if backend_max_write != max_write {
                    info!(self.log, "max_write lowered from {backend_max_write} to {max_write} (policy and arena slots)");
                }
                if backend_max_readahead != max_readahead {
                    info!(self.log, "max_readahead lowered from {backend_max_readahead} to {max_readahead} by the policy");
                }
                if backend_max_pages != max_pages {
                    info!(self.log, "max_pages lowered from {backend_max_pages} to {max_pages} (policy and arena slots)");
                }
            }
            Event::FlushFailed {
                node,
                error,
                atime,
                mtime,
                attempts,
            } => {
                // Its caller was answered long ago: the log is all there is.
                let tail = if attempts > 1 {
                    format!("; gave up after {attempts} attempts")
                } else {
                    String::new()
                };
                error!(
                    self.log,
                    "applying times to node {} failed in the backend: {} (atime {}, mtime {}){tail}",
                    node.0,
                    nix::errno::Errno::from_raw(-error).desc(),
                    show_time(atime),
                    show_time(mtime)
                );
            }
            Event::FlushRetrying {
                node,
                error,
                attempts,
                left,
                after,
            } => {
                warn!(
                    self.log,
                    "applying times to node {} failed in the backend: {} (attempt {attempts}); \
                     retrying in {} ms ({left} retries left)",
                    node.0,
                    nix::errno::Errno::from_raw(-error).desc(),
                    after.as_nanos() / 1_000_000
                );
            }
            Event::BackendRestarting {
                inflight,
                times_pending,
            } => info!(
                self.log,
                "{inflight} requests were with the dead backend (the kernel's answered EIO \
                 unless safe to send again); \
                 time updates of {times_pending} nodes kept for the next"
            ),
            Event::BackendRestarted {
                resent,
                times_pending,
                nodes,
                handles,
                lost_nodes,
                lost_handles,
            } => info!(
                self.log,
                "the new backend answered INIT as the first did and found {nodes} nodes and \
                 {handles} open files again ({lost_nodes} nodes and {lost_handles} open files \
                 lost so far answer ESTALE); going on: {resent} requests the dead one never \
                 answered sent to it again, time updates of {times_pending} nodes sent to it"
            ),
            Event::RestartRefused { why } => {
                self.restarter = None;
                self.backend_gone(format!("was started again, but {why}"));
            }
            Event::TimesLost { nodes } => {
                error!(
                    self.log,
                    "the backend went away before applying the times of {nodes} nodes"
                );
            }
            Event::InitFailed { errno } => {
                error!(self.log, "the backend refused INIT (errno {errno})");
            }
            Event::InjectedReply {
                opcode,
                unique,
                error,
            } => {
                debug!(
                    self.log,
                    "{opcode} {:#x} of the proxy's own answered: {error}", unique.0
                );
            }
            Event::DeadlineExpired {
                unique,
                opcode,
                node,
                errno,
                sent,
            } => {
                debug!(
                    self.log,
                    "{opcode} {:#x} on node {} past its deadline: answered with {}{}",
                    unique.0,
                    node.0,
                    nix::errno::Errno::from_raw(errno).desc(),
                    if sent { "" } else { " (never sent)" }
                );
            }
            Event::LateReply {
                unique,
                opcode,
                error,
                undone,
            } => {
                debug!(
                    self.log,
                    "late reply to {opcode} {:#x} dropped ({error}); {undone} request(s) sent to undo it",
                    unique.0
                );
            }
            Event::BadReply { reason, unique } => {
                let total = self.engine.stats().bad.total();
                if self.bad_reported == 0 {
                    // The first one in detail; later ones as summed counts.
                    match unique {
                        Some(u) => warn!(
                            self.log,
                            "bad reply from the backend ({}); request {:#x} answered with EIO",
                            reason.as_str(),
                            u.0
                        ),
                        None => warn!(
                            self.log,
                            "bad reply from the backend ({}); dropped",
                            reason.as_str()
                        ),
                    }
                    self.bad_reported = total;
                } else if self.bad_report_at.is_none() {
                    self.bad_report_at = Some(std::time::Instant::now() + BAD_REPLY_REPORT);
                }
            }
        }
    }

    pub(super) fn report_bad_replies(&mut self) {
        let s = self.engine.stats();
        let total = s.bad.total();
        if total > self.bad_reported {
            warn!(
                self.log,
                "{} more bad replies from the backend dropped ({} in all: {})",
                total - self.bad_reported,
                total,
                bad_summary(&s)
            );
            self.bad_reported = total;
        }
    }

    /// Sends `state` to systemd with a STATUS= line of the counters.
    pub(super) fn tell_systemd(&mut self, state: &str) {
        let Some(n) = self.systemd.as_ref() else {
            return;
        };
        let s = self.engine.stats();
        let msg = format!(
            "{state}STATUS=mounted {}; {} requests, {} forwarded, {} answered locally with \
             errors, time updates of {} files pending, {} restarts\n",
            self.mount.path().display(),
            s.requests,
            s.forwarded,
            s.answered_with_error,
            self.engine.pending_times(),
            s.restarts
        );
        if !n.send(&msg) {
            debug!(self.log, "NOTIFY_SOCKET: cannot send {state:?}");
        }
    }

    pub(super) fn log_stats(&mut self) {
        let allocations = alloc_count::allocations() - self.alloc_mark;
        let s = self.engine.stats();
        info!(
            self.log,
            "stats: requests={} forwarded={} replies={} notifications={} answered_with_error={} \
             injected={} bad_replies={} inflight={} free_slots={}/{} stale_writes={} rejected_writes={} \
             dropped_notifications={} stale_interrupt_replies={} ring_requests={} idle_poll_moves={} \
             times_acked={} times_coalesced={} times_forwarded={} times_flushes={} times_flush_errors={} \
             times_flush_moot={} times_pending={} held={} cache_clears={} denied={} faulted={} delayed={} \
             deadlines_hit={} late_replies={} flush_retries={} flush_gave_up={} init_rewrites={} \
             writeback_opens={} cache_changed={} negative_entries={} reloads={} \
             recorded={} record_dropped={} allocations={allocations}",
            s.requests,
            s.forwarded,
            s.replies,
            s.notifications,
            s.answered_with_error,
            s.injected,
            s.bad.total(),
            self.engine.inflight(),
            self.arena.free(),
            self.arena.slots(),
            self.stale_writes,
            self.rejected_writes,
            self.dropped_notifications,
            s.stale_interrupt_replies,
            self.ring_requests,
            self.idle_poll_moves,
            s.times.acked_locally,
            s.times.coalesced,
            s.times.forwarded_sync,
            s.times.flushes,
            s.times.flush_errors,
            s.times.flush_moot,
            self.engine.pending_times(),
            s.times.held,
            s.times.cache_clears,
            s.policy.denied,
            s.policy.faulted,
            s.policy.delayed,
            s.policy.deadlines_hit,
            s.policy.late_replies,
            s.policy.flush_retries,
            s.policy.flush_gave_up,
            s.policy.init_rewrites,
            s.policy.writeback_opens,
            s.policy.cache_changed,
            s.policy.negative_entries,
            s.policy.reloads,
            self.recorder.as_ref().map_or(0, Recorder::records),
            self.recorder.as_ref().map_or(0, Recorder::dropped),
        );
        self.alloc_mark = alloc_count::allocations();
    }
}

/// A time the backend failed to apply, as the log shows it.
fn show_time(t: Option<(i64, u32)>) -> String {
    match t {
        Some((s, ns)) => format!("{s}.{ns:09}"),
        None => "unchanged".into(),
    }
}

/// The bad replies so far, by reason.
fn bad_summary(s: &Stats) -> String {
    let b = &s.bad;
    format!(
        "unknown unique {}, short header {}, length mismatch {}, error out of range {}, \
         error with body {}, oversized {}",
        b.unknown_unique,
        b.short_header,
        b.length_mismatch,
        b.bad_error,
        b.error_with_body,
        b.oversized
    )
}
