//! `--restart` and SIGUSR2: the backend started again in place of one that
//! died or was told to make way, on the same channel, under the same mount.
//!
//! Invariants: the forwarding threads never start a backend; they set
//! `relaunching` (the backend's channel is then not read) and wake the main
//! thread, which alone stops the old process and starts the new one
//! (`relaunch`). What waited for room on the dead channel is dropped here and
//! answered or sent again by the engine, in the new backend's ids. An
//! upgrade takes no request once asked for and replaces the backend only
//! when nothing is in flight or UPGRADE_GRACE has passed. With the rings,
//! answers to requests held in ring entries go through their entries as
//! any answer does; the rings' polls on the socket hold the old socket's
//! file, so a swap is counted (`socket_swaps`) and the rings' threads are
//! woken to watch the new one (`KernelRing::rewatch`).

use std::os::fd::AsFd;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::Interest;
use slog::{error, info, warn};

use super::shutdown::SHUTDOWN_GRACE;
use super::{Pending, Phase, Shared, GUARD, SECCOMP};
use crate::backend::describe;
use crate::error::Error;

/// How long an upgrade (SIGUSR2) waits for the backend's requests.
const UPGRADE_GRACE: Duration = Duration::from_secs(5);

impl Shared {
    /// Whether a receive that saw the channel closed saw the old channel of
    /// a restart: a reader blocked in recv(2) when the socket was replaced
    /// stays on the old one until it ends. The one in place then still has
    /// its peer.
    pub(super) fn stale_close(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let (Some(_), Some(socket)) = (self.restarter.as_ref(), self.socket.as_ref()) else {
            return false;
        };
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::empty())];
        // A closed peer shows as POLLHUP whatever is asked for.
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// `--restart`: the backend died with the kernel's side live. Its
    /// in-flight requests are answered, reading stops, and the main thread
    /// starts it again (`relaunch`), off the forwarding threads.
    pub(super) fn restart_backend(&mut self, how: &str, n: u32) {
        self.relaunching = true;
        self.stop_deferring();
        self.wake_main = true;
        // What waited for room on the dead channel is the dead backend's:
        // the engine answers or resends it (in the new backend's ids).
        while let Some(p) = self.pending.pop_front() {
            if let Pending::Slot(s) = p {
                self.arena.release(s);
            }
        }
        self.watch_room(false);
        match n {
            // An upgrade.
            0 => info!(
                self.log,
                "backend (pid {}) {how}; starting it again",
                self.backend.pid()
            ),
            n => warn!(
                self.log,
                "backend (pid {}) {how}; starting it again (restart {n}, {})",
                self.backend.pid(),
                self.restarter
                    .as_ref()
                    .map_or(String::new(), |r| r.describe())
            ),
        }
        let now = self.now();
        self.engine.handle_backend_restarting(now);
        // Its decision (restart_began) goes in the capture before what the
        // restart does: a replay tells the engine of the death there.
        self.record_decisions();
        self.run_actions();
    }

    /// SIGUSR2: replace the backend with a new start of its command. No
    /// request is taken from now on; once nothing is in flight (or after
    /// UPGRADE_GRACE), the old one is ended as a direct unmount would end
    /// it, and the new one started as after a death, without counting
    /// against `--restart`'s limit.
    pub(super) fn upgrade_requested(&mut self) {
        if self.restarter.is_none() {
            warn!(
                self.log,
                "SIGUSR2 ignored: an upgrade needs --restart on-failure"
            );
            return;
        }
        if self.phase != Phase::Running || self.relaunching || self.upgrade_until.is_some() {
            warn!(
                self.log,
                "SIGUSR2 ignored: the backend is being replaced or the session ends"
            );
            return;
        }
        info!(
            self.log,
            "SIGUSR2: replacing the backend (pid {}) once its requests are answered",
            self.backend.pid()
        );
        let now = self.now();
        self.engine.handle_upgrade(now);
        self.run_actions();
        self.upgrade_until = Some(std::time::Instant::now() + UPGRADE_GRACE);
    }

    /// The upgrade's old backend has nothing in flight, or UPGRADE_GRACE has
    /// passed: end it and start the new one.
    pub(super) fn upgrade_if_quiet(&mut self) {
        let Some(until) = self.upgrade_until else {
            return;
        };
        let late = std::time::Instant::now() >= until;
        if !self.engine.is_quiesced() && !late {
            return;
        }
        self.upgrade_until = None;
        if late {
            warn!(
                self.log,
                "the backend still had requests after {}s; replacing it anyway (they get EIO)",
                UPGRADE_GRACE.as_secs()
            );
        }
        // Its reads fail with ENODEV, as after a direct unmount; failing
        // that, SIGTERM.
        self.relaunching = true;
        if !self.backend.end_cleanly(&self.log) {
            self.backend.terminate(Duration::from_millis(100));
        }
        let _ = self.backend.stop(SHUTDOWN_GRACE);
        self.relaunching = false;
        self.restart_backend("was ended for an upgrade (SIGUSR2)", 0);
    }

    /// Starts the backend again and puts its channel in place of the old
    /// one (main thread). A failure counts as the new backend's death.
    pub(super) fn relaunch(&mut self) {
        let old = self.backend.pid();
        if let Some(st) = self.backend.stop(Duration::from_millis(200)) {
            info!(self.log, "backend (pid {old}) {}", describe(st));
        }
        for fd in [self.backend.listener_fd(), self.backend.guard_fd()]
            .into_iter()
            .flatten()
        {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
        let launched = match (self.restarter.as_mut(), self.socket.clone()) {
            (Some(r), Some(socket)) => r.launch(&self.signals).and_then(|(backend, ours)| {
                let own = ours.try_clone().map_err(|e| {
                    Error::Setup(format!("duplicating the new backend's socket: {e}"))
                })?;
                crate::restarter::replace_socket(&socket, ours)?;
                self.backend_socket = std::sync::Arc::new(own);
                Ok(backend)
            }),
            _ => Err(Error::Setup("no channel to restart on".into())),
        };
        self.relaunching = false;
        match launched {
            Ok(backend) => {
                self.backend = backend;
                // The rings' polls on the socket still watch the old one.
                self.socket_swaps += 1;
                self.wake_rings();
                for (fd, token) in [
                    (self.backend.listener_fd(), SECCOMP),
                    (self.backend.guard_fd(), GUARD),
                ] {
                    if let Some(fd) = fd {
                        if let Err(e) =
                            self.registry
                                .register(&mut SourceFd(&fd), token, Interest::READABLE)
                        {
                            error!(self.log, "epoll_ctl on the new backend's listener: {e}");
                        }
                    }
                }
                info!(
                    self.log,
                    "backend started again (pid {}); sending it the kernel's INIT",
                    self.backend.pid()
                );
                let now = self.now();
                self.engine.handle_backend_restarted(now);
                // restart_launched before the INIT it causes (as above).
                self.record_decisions();
                self.run_actions();
            }
            Err(e) => self.backend_gone(format!("could not be started again: {e}")),
        }
    }
}
