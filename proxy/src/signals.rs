//! Signals as readable events: a signalfd registered with the event loop.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::error::Error;

/// The signals the proxy handles.
///
/// - INT, TERM: unmount and shut down in order. HUP: reload the policy
///   file; without one, the same as TERM, except under systemd
///   (`NOTIFY_SOCKET` set), where it is a reload with nothing to reload.
/// - USR1: log the counters.
/// - USR2: with `--restart`, replace the backend by a new start of its
///   command (an upgrade), with nothing in flight.
/// - CHLD: reap the backend (its death is noticed on the socket).
const HANDLED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGCHLD,
];

/// Blocks the handled signals in this thread (call before any thread or
/// child exists, so all inherit the mask; std's spawn clears it in the child)
/// and returns a non-blocking signalfd that receives them.
pub fn install() -> Result<SignalFd, Error> {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(|e| Error::Setup(format!("sigprocmask: {}", e.desc())))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::Setup(format!("signalfd: {}", e.desc())))
}
