//! How a session ends: a signal (unmount, then wait for the kernel), the
//! kernel's side gone (DESTROY to the backend), the backend gone (its
//! requests answered EIO, unless `--restart` starts it again), and the end
//! itself (`finish`): the backend stopped, the mount removed, the last lines
//! logged.
//!
//! Invariants: the phase only moves forward (Running, Unmounting,
//! KernelGone or BackendGone), and every step that waits is bounded
//! (SHUTDOWN_GRACE for the kernel and for DESTROY, RING_DRAIN for answers on
//! their way to the rings), so a stuck kernel or backend cannot keep the
//! proxy alive. Once the session ends, a forwarding thread's turn stops
//! deferring its I/O (`stop_deferring`): its last answers reach the kernel
//! before the connection is aborted.

use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::signal::Signal;
use slog::{debug, error, info, warn};

use super::{Phase, Shared};
use crate::backend::describe;
use crate::error::Error;

/// How long the backend gets to answer DESTROY, and the kernel to end the
/// connection after the proxy's unmount, before the proxy stops waiting.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a session whose backend died waits for its EIO answers to be
/// submitted to the rings before it aborts the connection.
const RING_DRAIN: Duration = Duration::from_millis(500);

impl Shared {
    /// A forwarding thread could not be started: end as any failure does.
    pub(super) fn fail_start(&mut self, e: std::io::Error) -> Result<(), Error> {
        error!(self.log, "cannot start a forwarding thread: {e}");
        self.abort_connection();
        self.kernel_gone();
        let _ = self.finish(Phase::KernelGone);
        Err(Error::Setup(format!("forwarding thread: {e}")))
    }

    /// Gives up the device: the connection ends once every descriptor of it
    /// is closed (the writer's, and the readers' when they return).
    pub(super) fn close_device(&mut self) {
        self.device = None;
        self.clones.clear();
        self.notifier.close();
    }

    /// Ends the connection now. Closing descriptors is not enough: readers
    /// blocked in read(2) hold the device open, so through fusectl, which
    /// wakes them with ENODEV. Before the connection is known (INIT not
    /// answered), the unmount that follows ends it.
    pub(super) fn abort_connection(&mut self) {
        self.close_device();
        if let Some(c) = self.connection {
            match c.abort() {
                Ok(()) => info!(self.log, "connection {} aborted through fusectl", c.id),
                Err(e) => debug!(
                    self.log,
                    "aborting connection {} through fusectl: {e}", c.id
                ),
            }
        }
    }

    pub(super) fn stop_requested(&mut self, sig: Signal) {
        self.signalled += 1;
        if self.signalled > 1 || self.phase != Phase::Running {
            if self.device.is_some() && self.phase != Phase::BackendGone {
                warn!(self.log, "{} again: aborting the connection", sig.as_str());
                self.abort_connection();
                self.kernel_gone();
            }
            return;
        }
        info!(
            self.log,
            "{}: unmounting {}",
            sig.as_str(),
            self.mount.path().display()
        );
        self.tell_systemd("STOPPING=1\n");
        self.phase = Phase::Unmounting;
        self.grace_until = Some(std::time::Instant::now() + SHUTDOWN_GRACE);
        // In a thread of its own: the unmount may flush dirty pages, which
        // the kernel sends as WRITE requests that this loop must forward.
        self.unmounter = Some(self.mount.unmount_in_background());
    }

    /// The kernel's side of the session has ended (ENODEV, or the proxy
    /// closed the device). Tell the backend with a DESTROY of the proxy's own.
    pub(super) fn kernel_gone(&mut self) {
        if matches!(self.phase, Phase::KernelGone | Phase::BackendGone) {
            return;
        }
        self.phase = Phase::KernelGone;
        self.stop_deferring();
        self.wake_main = true;
        self.mount.detach();
        let now = self.now();
        self.engine.handle_shutdown(now);
        self.run_actions();
        self.grace_until = Some(std::time::Instant::now() + SHUTDOWN_GRACE);
    }

    pub(super) fn backend_gone(&mut self, how: String) {
        if self.backend_end.is_some() || self.relaunching {
            return;
        }
        if self.phase == Phase::Running && self.engine.is_initialized() {
            let allowed = self
                .restarter
                .as_mut()
                .map(|r| r.allow(std::time::Instant::now()));
            match allowed {
                Some(Ok(n)) => return self.restart_backend(&how, n),
                Some(Err(why)) => warn!(
                    self.log,
                    "backend (pid {}) {how}; not started again: {why}",
                    self.backend.pid()
                ),
                None => {}
            }
        }
        self.backend_end = Some(how);
        self.ring_drain_until = Some(std::time::Instant::now() + RING_DRAIN);
        self.stop_deferring();
        self.wake_main = true;
        self.left_unanswered = self.engine.inflight();
        let now = self.now();
        self.engine.handle_backend_gone(now);
        self.run_actions();
        if self.phase != Phase::KernelGone {
            self.phase = Phase::BackendGone;
        }
    }

    /// Closes the proxy's end of the channel: the backend reads EOF, and the
    /// backend's reader, blocked in recv(2) on the same socket, returns.
    pub(super) fn close_socket(&mut self) {
        self.watch_room(false);
        if let Some(s) = self.socket.take() {
            let _ = nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }

    pub(super) fn finished(&self) -> Option<Phase> {
        match self.phase {
            // The EIO answers on their way to the rings go first: the abort
            // that follows would reach their callers before them.
            Phase::BackendGone if self.ring_answers_pending() => None,
            Phase::BackendGone => Some(Phase::BackendGone),
            Phase::KernelGone
                if self.engine.is_shutdown_complete()
                    || self.backend_end.is_some()
                    || self
                        .grace_until
                        .is_some_and(|t| t <= std::time::Instant::now()) =>
            {
                Some(Phase::KernelGone)
            }
            _ => None,
        }
    }

    pub(super) fn finish(&mut self, end: Phase) -> Result<(), Error> {
        self.tell_systemd("STOPPING=1\n");
        let result = match end {
            Phase::BackendGone => {
                // Every waiting request has been answered (run_actions after
                // handle_backend_gone). Abort the connection so that nothing
                // new waits on a dead backend, then remove the mount.
                self.abort_connection();
                self.stop_notifier();
                self.mount.detach();
                let st = self.backend.stop(Duration::from_millis(500));
                let how = self.backend_end.take().unwrap_or_default();
                let success = st.is_some_and(|s| s.success());
                if success && self.backend.unmounted_itself() {
                    // The daemon unmounted MOUNTPOINT (trapped or through
                    // the stand-in) and ended cleanly, as it does alone
                    // after a signal of its own.
                    info!(
                        self.log,
                        "backend (pid {}) unmounted {} itself and exited with status 0; \
                         mount removed",
                        self.backend.pid(),
                        self.mount.path().display()
                    );
                    Ok(())
                } else if success && self.left_unanswered == 0 && self.engine.is_initialized() {
                    // It ended cleanly with nothing left waiting: its own
                    // decision (a root daemon's umount2 under the fusermount
                    // channel fails in the kernel unseen, then it exits 0).
                    info!(
                        self.log,
                        "backend (pid {}) closed its channel and exited with status 0, \
                         nothing waiting; mount removed",
                        self.backend.pid()
                    );
                    Ok(())
                } else {
                    let msg = match st {
                        Some(st) => format!(
                            "backend (pid {}) {}; {how}",
                            self.backend.pid(),
                            describe(st)
                        ),
                        None => format!("backend (pid {}) {how}", self.backend.pid()),
                    };
                    let when = if self.engine.is_initialized() {
                        ""
                    } else {
                        " before answering INIT"
                    };
                    Err(Error::Backend(format!(
                        "{msg}{when}; {} waiting requests answered with EIO, mount {} removed",
                        self.engine.stats().answered_with_error,
                        self.mount.path().display()
                    )))
                }
            }
            _ => {
                self.stop_notifier();
                // DESTROY is answered (or will not be). The daemon's reads
                // now fail with ENODEV, as after a direct unmount; failing
                // that, SIGTERM. Closing the channel then ends whatever
                // still holds it (a daemonized backend included).
                if !self.backend.end_cleanly(&self.log) {
                    self.backend.terminate(Duration::from_millis(100));
                }
                self.close_socket();
                let st = self.backend.stop(SHUTDOWN_GRACE);
                if let Some(st) = st {
                    info!(
                        self.log,
                        "backend (pid {}) {}",
                        self.backend.pid(),
                        describe(st)
                    );
                }
                Ok(())
            }
        };
        if let Some(h) = self.unmounter.take() {
            if h.is_finished() {
                if let Ok(Err(e)) = h.join() {
                    warn!(self.log, "{e}");
                }
            }
        }
        self.report_bad_replies();
        self.log_stats();
        if let Some(r) = self.recorder.take() {
            let path = r.path().display().to_string();
            match r.finish() {
                Ok(w) => {
                    let where_ = match &w.files {
                        Some((first, last)) => format!("files {first} to {last}"),
                        None => path,
                    };
                    if w.dropped > 0 {
                        warn!(
                            self.log,
                            "recorded {} messages to {where_} ({} bytes); {} were dropped \
                             because the writer fell behind (the ring of --record-size was full)",
                            w.records,
                            w.bytes,
                            w.dropped
                        );
                    } else {
                        info!(
                            self.log,
                            "recorded {} messages to {where_} ({} bytes)", w.records, w.bytes
                        );
                    }
                    if w.undeleted > 0 {
                        warn!(
                            self.log,
                            "{} old --record files could not be deleted", w.undeleted
                        );
                    }
                }
                // The session's own failure, if any, is the last line;
                // this one is logged before it.
                Err(e) if result.is_err() => error!(self.log, "{e}"),
                Err(e) => return Err(e),
            }
        }
        result
    }
}
