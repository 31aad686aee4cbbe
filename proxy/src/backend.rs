//! The backend: its socketpair, its launch with an inherited fd, its reaping.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};

use crate::error::Error;

/// Socket buffer size forced on both ends of the pair.
///
/// A SOCK_SEQPACKET message larger than the send buffer fails with EMSGSIZE,
/// and the default (212,992 bytes here) is far below the largest FUSE message
/// (1 MiB of data plus headers; fuse-notes "Socket buffer limit"). As root,
/// SO_SNDBUFFORCE/SO_RCVBUFFORCE lift `wmem_max`; 8 MiB was verified to carry
/// 1 MiB + 4 KiB messages.
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// The proxy's end and the backend's end of the channel.
pub struct Pair {
    /// Ours: non-blocking, close-on-exec.
    pub ours: OwnedFd,
    /// The backend's: blocking (libfuse reads it like /dev/fuse), inherited.
    pub theirs: OwnedFd,
}

/// Creates the socketpair with buffers large enough for any FUSE message.
pub fn channel() -> Result<Pair, Error> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::Setup(format!("socketpair: {}", e.desc())))?;
    for fd in [&ours, &theirs] {
        force_buffers(fd)?;
    }
    let fl = fcntl(ours.as_raw_fd(), FcntlArg::F_GETFL)
        .map_err(|e| Error::Setup(format!("fcntl: {}", e.desc())))?;
    fcntl(
        ours.as_raw_fd(),
        FcntlArg::F_SETFL(
            nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK,
        ),
    )
    .map_err(|e| Error::Setup(format!("fcntl: {}", e.desc())))?;
    Ok(Pair { ours, theirs })
}

fn force_buffers(fd: &OwnedFd) -> Result<(), Error> {
    let forced = setsockopt(fd, sockopt::SndBufForce, &SOCKET_BUFFER)
        .and_then(|_| setsockopt(fd, sockopt::RcvBufForce, &SOCKET_BUFFER));
    if forced.is_err() {
        // Without CAP_NET_ADMIN the force variants fail; the plain ones are
        // capped at wmem_max, which may still be enough. Check what we got.
        let _ = setsockopt(fd, sockopt::SndBuf, &SOCKET_BUFFER);
        let _ = setsockopt(fd, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    let got = nix::sys::socket::getsockopt(fd, sockopt::SndBuf).unwrap_or(0);
    // The kernel reports twice the value set (room for its bookkeeping).
    if got < SOCKET_BUFFER {
        return Err(Error::Setup(format!(
            "socket send buffer is {got} bytes, below the {SOCKET_BUFFER} needed for 1 MiB \
             FUSE messages (run as root, or raise net.core.wmem_max)"
        )));
    }
    Ok(())
}

/// The running backend, as far as the proxy can know it.
pub struct Backend {
    child: Child,
    /// How it ended, once reaped. A backend that daemonizes ends here at once
    /// with status 0 while its daemon lives on: only the socket tells whether
    /// the backend is alive.
    exit: Option<ExitStatus>,
}

impl Backend {
    /// Starts `argv` with `theirs` inherited (close-on-exec cleared just for
    /// this spawn) in a process group of its own, so that a Ctrl-C on the
    /// terminal reaches the proxy, which then shuts the backend down in order.
    pub fn spawn(argv: &[OsString], theirs: OwnedFd) -> Result<Backend, Error> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| Error::Usage("no backend command after '--'".into()))?;
        let fd = theirs.as_raw_fd();
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|e| Error::Setup(format!("fcntl: {}", e.desc())))?;
        let child = Command::new(program)
            .args(args)
            .process_group(0)
            .spawn()
            .map_err(|e| {
                Error::Backend(format!("cannot start '{}': {e}", program.to_string_lossy()))
            })?;
        // Our copy of their end must go, or we would never see their EOF.
        drop(theirs);
        Ok(Backend { child, exit: None })
    }

    /// The backend's pid (of the process started; a daemonizing backend's
    /// daemon has another).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reaps the child if it has exited; returns its status once known.
    pub fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
            }
        }
        self.exit
    }

    /// Asks the child to stop (SIGTERM, which libfuse turns into an orderly
    /// exit of its session loop) and waits up to `timeout`. Returns whether
    /// it has exited. A backend that daemonized has already exited here; its
    /// daemon ends when the proxy closes the socket.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> bool {
        if self.try_reap().is_some() {
            return true;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.wait_for(timeout).is_some()
    }

    /// Waits up to `timeout` for the child to exit, then SIGTERM, then SIGKILL.
    /// Only the process the proxy started is signalled, by pid.
    pub fn stop(&mut self, timeout: std::time::Duration) -> Option<ExitStatus> {
        if self.wait_for(timeout).is_some() {
            return self.exit;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if self.wait_for(std::time::Duration::from_secs(2)).is_some() {
            return self.exit;
        }
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
        self.exit
    }

    fn wait_for(&mut self, timeout: std::time::Duration) -> Option<ExitStatus> {
        let end = std::time::Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_reap() {
                return Some(st);
            }
            if std::time::Instant::now() >= end {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// "exited with status 1", "was killed by signal 9 (SIGKILL)".
pub fn describe(st: ExitStatus) -> String {
    if let Some(code) = st.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = st.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("?");
        format!("was killed by signal {sig} ({name})")
    } else {
        format!("ended ({st})")
    }
}
