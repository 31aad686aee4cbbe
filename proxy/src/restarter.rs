//! `--restart on-failure`: the backend's command started again under the
//! live mount, at most `max` times within a sliding `window`.
//!
//! The kernel never sees the daemon die: the proxy holds `/dev/fuse`. What
//! it takes to go on is a new channel of the same kind with a new daemon on
//! it ([`Launch`], built by `main` for the channel in use), put at the old
//! socket's descriptor number (`dup2`) so that every thread that reads or
//! writes the socket goes on with the same number; the engine then replays
//! INIT and checks the answer (`Engine::handle_backend_restarted`).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::backend::Backend;
use crate::cli::RestartPolicy;
use crate::error::Error;

/// Starts the backend's command again on a new channel: the backend and the
/// proxy's end of the channel. Blocks until the daemon has its channel (for
/// the seccomp channel: until it has asked to mount, bounded).
pub type Launch =
    Box<dyn FnMut(&nix::sys::signalfd::SignalFd) -> Result<(Backend, OwnedFd), Error> + Send>;

/// Restarts so far and how to make one.
pub struct Restarter {
    policy: RestartPolicy,
    /// When each restart within the window was made. INVARIANT: at most
    /// `policy.max` entries, allocated once.
    recent: VecDeque<Instant>,
    launch: Launch,
}

impl Restarter {
    pub fn new(policy: RestartPolicy, launch: Launch) -> Restarter {
        Restarter {
            policy,
            recent: VecDeque::with_capacity(policy.max as usize),
            launch,
        }
    }

    /// Whether one more restart is allowed at `now`: `Ok(n)`, this being
    /// the n-th within the window (counted), or why not.
    pub fn allow(&mut self, now: Instant) -> Result<u32, String> {
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.policy.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.policy.max as usize {
            return Err(format!(
                "{} restarts within {} already",
                self.recent.len(),
                show(self.policy.window)
            ));
        }
        self.recent.push_back(now);
        Ok(self.recent.len() as u32)
    }

    /// The policy's limit, for the log.
    pub fn describe(&self) -> String {
        format!(
            "at most {} within {}",
            self.policy.max,
            show(self.policy.window)
        )
    }

    /// Starts the backend again (see [`Launch`]).
    pub fn launch(
        &mut self,
        signals: &nix::sys::signalfd::SignalFd,
    ) -> Result<(Backend, OwnedFd), Error> {
        (self.launch)(signals)
    }
}

/// Puts `new` at `old`'s descriptor number, closing what was there: the
/// threads holding `old`'s number use the new channel from their next call.
pub fn replace_socket(old: &OwnedFd, new: OwnedFd) -> Result<(), Error> {
    // The target keeps its close-on-exec flag through dup3.
    nix::unistd::dup3(
        new.as_raw_fd(),
        old.as_raw_fd(),
        nix::fcntl::OFlag::O_CLOEXEC,
    )
    .map(drop)
    .map_err(|e| Error::Setup(format!("dup3 of the new backend's socket: {}", e.desc())))
}

fn show(d: Duration) -> String {
    if d.as_secs() > 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_counted_in_a_sliding_window() {
        let policy = RestartPolicy {
            max: 2,
            window: Duration::from_secs(10),
        };
        let mut r = Restarter::new(policy, Box::new(|_| Err(Error::Setup("unused".into()))));
        let room = r.recent.capacity();
        let t0 = Instant::now();
        assert_eq!(r.allow(t0), Ok(1));
        assert_eq!(r.allow(t0 + Duration::from_secs(1)), Ok(2));
        let e = r.allow(t0 + Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("2 restarts within 10s"), "{e}");
        // The first has left the window.
        assert_eq!(r.allow(t0 + Duration::from_secs(10)), Ok(2));
        assert_eq!(r.recent.len(), 2);
        assert_eq!(r.recent.capacity(), room, "the history never grows");
    }
}
