//! The backend: its socketpair, its launch (with an inherited fd, or under
//! the seccomp channel's filter), its reaping.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};

use crate::error::Error;
use crate::seccomp::{Handled, MountContext, Supervisor};

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

/// How the backend's end of the socketpair reaches a supervised backend.
pub enum Handoff {
    /// Seccomp channel: the proxy keeps it (close-on-exec) until the
    /// daemon's mount puts it in the daemon's process.
    Hold(OwnedFd),
    /// Fd channel: inherited at its number (`/dev/fd/N` on the command
    /// line); the proxy has mounted already.
    Inherit(OwnedFd),
}

/// The running backend, as far as the proxy can know it.
pub struct Backend {
    child: Child,
    /// How it ended, once reaped. A backend that daemonizes ends here at once
    /// with status 0 while its daemon lives on: only the socket tells whether
    /// the backend is alive.
    exit: Option<ExitStatus>,
    /// What answers the backend's mounts (seccomp or fusermount channel).
    warden: Option<Warden>,
    /// The aborted device the backend inherited, and the inode of its
    /// socket: what [`Backend::end_cleanly`] swaps.
    end: Option<(crate::clean_end::EndDevice, u64)>,
}

/// What answers a supervised backend's mount and unmount requests.
enum Warden {
    /// Its mount(2) and umount2(2) calls, trapped.
    Seccomp(Supervisor),
    /// Its fusermount runs, served; and where the kernel can trap, its
    /// own mount calls, refused and logged (the guard).
    Fusermount(crate::fusermount::Server, Option<Supervisor>),
}

impl Warden {
    fn fd(&self) -> i32 {
        match self {
            Warden::Seccomp(s) => s.fd(),
            Warden::Fusermount(s, _) => s.fd(),
        }
    }

    /// The guard's listener, for the event loop.
    fn guard_fd(&self) -> Option<i32> {
        match self {
            Warden::Fusermount(_, Some(g)) => Some(g.fd()),
            _ => None,
        }
    }

    fn poll(&self, timeout: std::time::Duration) -> (bool, bool) {
        match self {
            Warden::Seccomp(s) => s.poll(timeout),
            Warden::Fusermount(s, None) => s.poll(timeout),
            Warden::Fusermount(s, Some(g)) => {
                // Short slices on each, so that the guard's trapped mount
                // (the daemon waits in it) is answered within milliseconds.
                let end = std::time::Instant::now() + timeout;
                loop {
                    let slice = std::time::Duration::from_millis(5);
                    if g.poll(std::time::Duration::ZERO).0 || s.poll(slice).0 {
                        return (true, false);
                    }
                    if std::time::Instant::now() >= end {
                        return (false, false);
                    }
                }
            }
        }
    }

    fn handle_one(&mut self, ctx: Option<&MountContext<'_>>) -> Handled {
        match self {
            Warden::Seccomp(s) => s.handle_one(ctx),
            Warden::Fusermount(s, guard) => {
                if let Some(g) = guard.as_mut() {
                    g.handle_pending();
                }
                if !s.poll(std::time::Duration::ZERO).0 {
                    return Handled::Nothing;
                }
                let h = s.handle_one(ctx);
                if let (Handled::Mounted(..), Some(g)) = (&h, guard.as_mut()) {
                    g.set_mounted();
                }
                h
            }
        }
    }

    fn handle_pending(&mut self) -> bool {
        match self {
            Warden::Seccomp(s) => s.handle_pending(),
            Warden::Fusermount(s, guard) => {
                let by_guard = guard.as_mut().is_some_and(Supervisor::handle_pending);
                s.handle_pending() | by_guard
            }
        }
    }

    fn backend_unmounted(&self) -> bool {
        match self {
            Warden::Seccomp(s) => s.backend_unmounted(),
            Warden::Fusermount(s, guard) => {
                s.backend_unmounted() || guard.as_ref().is_some_and(Supervisor::backend_unmounted)
            }
        }
    }
}

/// How long the seccomp channel waits for the backend's mount.
pub const MOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Backend {
    /// Starts `argv` with `theirs` inherited (close-on-exec cleared just for
    /// this spawn) in a process group of its own, so that a Ctrl-C on the
    /// terminal reaches the proxy, which then shuts the backend down in order.
    ///
    /// With `user` (`--backend-user`), the child drops to those ids, with no
    /// supplementary groups and no capabilities, before exec
    /// ([`crate::backend_user::drop_to`]).
    pub fn spawn(
        argv: &[OsString],
        theirs: OwnedFd,
        user: Option<crate::backend_user::Ids>,
        end: Option<crate::clean_end::EndDevice>,
    ) -> Result<Backend, Error> {
        let mut cmd = command(argv)?;
        let fd = theirs.as_raw_fd();
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
            .map_err(|e| Error::Setup(format!("fcntl: {}", e.desc())))?;
        let (end, end_fd) = end_for(end, &theirs);
        // SAFETY: the closure runs in the child between fork and exec: the
        // functions make raw system calls (fcntl, sigprocmask, setgroups,
        // setres[ug]id, capset, prctl) on stack memory only
        // (async-signal-safe, no allocation); `ids` and `end_fd` are Copy,
        // moved in.
        unsafe {
            cmd.pre_exec(move || {
                inherit(end_fd)?;
                match user {
                    Some(ids) => {
                        crate::seccomp_filter::unblock_all_signals()?;
                        crate::backend_user::drop_to(ids)
                    }
                    None => Ok(()),
                }
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Error::Backend(format!(
                "cannot start '{}': {e}",
                cmd.get_program().to_string_lossy()
            ))
        })?;
        // Our copy of their end must go, or we would never see their EOF.
        drop(theirs);
        Ok(Backend {
            child,
            exit: None,
            warden: None,
            end,
        })
    }

    /// Starts `argv` unchanged under the seccomp channel's filter
    /// ([`crate::seccomp_filter`]), in a process group of its own. The
    /// listener comes back over a socketpair made for the purpose; `theirs`
    /// stays with the proxy (close-on-exec) until the daemon's mount puts it
    /// in the daemon ([`Backend::wait_for_mount`]).
    ///
    /// With [`Handoff::Inherit`] (the fd channel with `--backend-user`) the
    /// socket is inherited instead and the mount exists already: the filter
    /// is there only to refuse and log every mount and unmount the daemon
    /// tries.
    ///
    /// With `user`, the child first enters a private mount namespace where
    /// /dev/null stands at /dev/fuse (seccomp channel only), installs the
    /// filter while still root, then drops to the user's ids without
    /// groups or capabilities ([`crate::backend_user`]).
    pub fn spawn_supervised(
        argv: &[OsString],
        handoff: Handoff,
        log: slog::Logger,
        mountpoint: &std::path::Path,
        user: Option<crate::backend_user::Ids>,
        end: Option<crate::clean_end::EndDevice>,
    ) -> Result<Backend, Error> {
        let mut cmd = command(argv)?;
        let (ours, child_end) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::Setup(format!("socketpair: {}", e.desc())))?;
        let prog = crate::seccomp_filter::program();
        let listener_out = child_end.as_raw_fd();
        let stand_in = user.is_some() && matches!(handoff, Handoff::Hold(_));
        if let Handoff::Inherit(theirs) = &handoff {
            fcntl(theirs.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty()))
                .map_err(|e| Error::Setup(format!("fcntl: {}", e.desc())))?;
        }
        let (Handoff::Hold(socket) | Handoff::Inherit(socket)) = &handoff;
        let (end, end_fd) = end_for(end, socket);
        // Without CAP_SYS_ADMIN the kernel installs a filter only under
        // NO_NEW_PRIVS (read here: the child may not allocate).
        let no_new_privs = !crate::capabilities::can_mount();
        // SAFETY: the closure runs in the child between fork and exec, where
        // only async-signal-safe code may run: `hide_fuse_device`,
        // `set_no_new_privs`, `install` and `drop_to` make raw system calls (unshare, mount, seccomp,
        // sendmsg, close, setgroups, setresgid, setresuid, capset, prctl,
        // capget) on memory that exists in the child (the program, moved
        // into the closure and built before the fork; static strings; stack
        // buffers) and allocate nothing. `listener_out` is open in the
        // child: it is inherited across fork (close-on-exec closes it only
        // at the exec). The order matters: the namespace's mounts before
        // the filter (which traps mount(2)), the filter while still root
        // (or, for a proxy that is not root, after NO_NEW_PRIVS).
        unsafe {
            cmd.pre_exec(move || {
                inherit(end_fd)?;
                if stand_in {
                    crate::backend_user::hide_fuse_device()?;
                }
                if no_new_privs {
                    crate::seccomp_filter::set_no_new_privs()?;
                }
                crate::seccomp_filter::install(&prog, listener_out)?;
                match user {
                    Some(ids) => crate::backend_user::drop_to(ids),
                    None => Ok(()),
                }
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Error::Backend(format!(
                "cannot start '{}' under the seccomp filter: {e}",
                cmd.get_program().to_string_lossy()
            ))
        })?;
        drop(child_end);
        let mut backend = Backend {
            child,
            exit: None,
            warden: None,
            end,
        };
        // The child sent it before exec, and spawn returns after the exec.
        let listener = match receive_fd(&ours) {
            Ok(fd) => fd,
            Err(e) => {
                backend.stop(std::time::Duration::ZERO);
                return Err(Error::Setup(format!(
                    "receiving the seccomp listener from the backend: {e}"
                )));
            }
        };
        backend.warden = Some(Warden::Seccomp(match handoff {
            Handoff::Hold(theirs) => {
                Supervisor::new(log, listener, mountpoint.to_path_buf(), theirs, stand_in)
            }
            Handoff::Inherit(theirs) => {
                // Our copy of their end must go, or we would never see
                // their EOF.
                drop(theirs);
                Supervisor::already_mounted(log, listener, mountpoint.to_path_buf())
            }
        }));
        Ok(backend)
    }

    /// Starts `argv` unchanged for the fusermount channel
    /// ([`crate::fusermount`]): in a mount namespace of its own where this
    /// executable stands at every fusermount program in `targets`, without
    /// CAP_SYS_ADMIN (with `user`: as that user, without any capability,
    /// /dev/null at /dev/fuse). `theirs` stays with the proxy until the
    /// stand-in asks for it.
    pub fn spawn_fusermount(
        argv: &[OsString],
        theirs: OwnedFd,
        log: slog::Logger,
        mountpoint: &std::path::Path,
        user: Option<crate::backend_user::Ids>,
        end: Option<crate::clean_end::EndDevice>,
        targets: &[std::path::PathBuf],
    ) -> Result<Backend, Error> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = command(argv)?;
        let (end, end_fd) = end_for(end, &theirs);
        if !crate::fusermount::on_shared_mount(mountpoint) {
            slog::warn!(
                log,
                "{} is on a private mount: the daemon will not see its own mount in its \
                 namespace (go-fuse daemons fail); make the mount it is on shared \
                 (mount --make-shared) if the daemon needs that",
                mountpoint.display()
            );
        }
        let server_log = log.clone();
        let mut server =
            crate::fusermount::Server::new(log.clone(), mountpoint.to_path_buf(), theirs)?;
        let exe = std::env::current_exe()
            .map_err(|e| Error::Setup(format!("finding the proxy's own executable: {e}")))?;
        let cstr = |p: &std::path::Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| Error::Setup(format!("a NUL in {}", p.display())))
        };
        let exe = cstr(&exe)?;
        let targets = targets
            .iter()
            .map(|t| cstr(t))
            .collect::<Result<Vec<CString>, Error>>()?;
        // The guard: where the kernel can trap calls, the daemon's own
        // mount calls come to the proxy too, to be refused and logged.
        let guard = match crate::seccomp::can_trap() {
            Ok(()) => Some(
                socketpair(
                    AddressFamily::Unix,
                    SockType::Stream,
                    None,
                    SockFlag::SOCK_CLOEXEC,
                )
                .map_err(|e| Error::Setup(format!("socketpair: {}", e.desc())))?,
            ),
            Err(why) => {
                slog::info!(
                    log,
                    "the daemon's own mount calls fail in the kernel unseen ({why}); \
                     what it runs through fusermount is logged"
                );
                None
            }
        };
        let listener_out = guard.as_ref().map(|(_, child_end)| child_end.as_raw_fd());
        let prog = crate::seccomp_filter::program();
        // SAFETY: the closure runs in the child between fork and exec: the
        // functions it calls make raw system calls (fcntl, unshare, mount,
        // seccomp, sendmsg, prctl, capget, capset, setgroups, setres[ug]id)
        // on strings and the filter made before the fork (moved in) and on
        // stack memory; nothing allocates. The filter goes in while still
        // root (before the capability goes), after the binds (it traps
        // mount(2)).
        unsafe {
            cmd.pre_exec(move || {
                inherit(end_fd)?;
                if user.is_some() {
                    crate::backend_user::hide_fuse_device()?;
                } else {
                    crate::backend_user::private_namespace()?;
                }
                for t in &targets {
                    crate::backend_user::bind(&exe, t)?;
                }
                if let Some(fd) = listener_out {
                    crate::seccomp_filter::install(&prog, fd)?;
                }
                match user {
                    Some(ids) => {
                        crate::seccomp_filter::unblock_all_signals()?;
                        crate::backend_user::drop_to(ids)
                    }
                    None => crate::backend_user::drop_mount_capability(),
                }
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Error::Backend(format!(
                "cannot start '{}' for the fusermount channel: {e}",
                cmd.get_program().to_string_lossy()
            ))
        })?;
        let mut backend = Backend {
            child,
            exit: None,
            warden: None,
            end,
        };
        if let Err(e) = server.listen_for(backend.pid()) {
            backend.stop(std::time::Duration::ZERO);
            return Err(e);
        }
        let guard = match guard {
            Some((ours, child_end)) => {
                drop(child_end);
                // The child sent it before exec, and spawn returns after it.
                match receive_fd(&ours) {
                    Ok(listener) => Some(Supervisor::for_fusermount(
                        server_log.clone(),
                        listener,
                        mountpoint.to_path_buf(),
                    )),
                    Err(e) => {
                        backend.stop(std::time::Duration::ZERO);
                        return Err(Error::Setup(format!(
                            "receiving the seccomp listener from the backend: {e}"
                        )));
                    }
                }
            }
            None => None,
        };
        backend.warden = Some(Warden::Fusermount(server, guard));
        Ok(backend)
    }

    /// The seccomp listener's fd, when the backend runs under it.
    pub fn listener_fd(&self) -> Option<i32> {
        self.warden.as_ref().map(Warden::fd)
    }

    /// The fusermount channel's guard listener, when there is one.
    pub fn guard_fd(&self) -> Option<i32> {
        self.warden.as_ref().and_then(Warden::guard_fd)
    }

    /// Answers the seccomp calls waiting now. Returns whether the daemon
    /// unmounted MOUNTPOINT among them.
    pub fn handle_notifications(&mut self) -> bool {
        self.warden.as_mut().is_some_and(Warden::handle_pending)
    }

    /// Whether the daemon unmounted MOUNTPOINT itself (seccomp channel).
    pub fn unmounted_itself(&self) -> bool {
        self.warden.as_ref().is_some_and(Warden::backend_unmounted)
    }

    /// Seccomp channel: waits up to [`MOUNT_WAIT`] for the daemon's mount of
    /// MOUNTPOINT and makes it; with the device fusermount3 passed when it
    /// made the mount ([`MountContext::fusermount`]). Ends early, with one
    /// line, when the backend exits and nothing it started is left to
    /// mount, when fusermount3 refuses the mount (the backend is stopped),
    /// or on SIGINT, SIGTERM or SIGHUP (read from `signals`).
    pub fn wait_for_mount(
        &mut self,
        signals: &nix::sys::signalfd::SignalFd,
        ctx: &MountContext<'_>,
        mountpoint: &std::path::Path,
    ) -> Result<
        (
            crate::mount::Mount,
            crate::mount_options::MountOptions,
            Option<std::fs::File>,
        ),
        Error,
    > {
        let deadline = std::time::Instant::now() + MOUNT_WAIT;
        let tick = std::time::Duration::from_millis(50);
        loop {
            let Some(sup) = self.warden.as_mut() else {
                return Err(Error::Setup("no mount listener".into()));
            };
            let (readable, hung_up) = sup.poll(tick);
            if readable {
                match sup.handle_one(Some(ctx)) {
                    Handled::Mounted(m, opts, device) => return Ok((m, opts, device)),
                    Handled::Fatal(e) => {
                        // Answered EACCES: it gives up by itself.
                        self.stop(std::time::Duration::from_secs(2));
                        return Err(e);
                    }
                    Handled::Nothing | Handled::Unmounted => continue,
                }
            }
            while let Ok(Some(info)) = signals.read_signal() {
                use nix::sys::signal::Signal;
                let sig = Signal::try_from(info.ssi_signo as i32);
                if let Ok(s @ (Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP)) = sig {
                    let st = self.stop(std::time::Duration::ZERO);
                    return Err(Error::Backend(format!(
                        "{} before the backend mounted {}; backend (pid {}) {}",
                        s.as_str(),
                        mountpoint.display(),
                        self.pid(),
                        st.map_or("did not stop".into(), describe)
                    )));
                }
            }
            if let Some(st) = self.try_reap() {
                // A daemon that forked before mounting may still mount; the
                // listener hangs up once no process is left under the filter.
                if hung_up || !st.success() {
                    return Err(Error::Backend(format!(
                        "the backend (pid {}) {} before mounting {}",
                        self.pid(),
                        describe(st),
                        mountpoint.display()
                    )));
                }
            }
            if std::time::Instant::now() >= deadline {
                let st = self.stop(std::time::Duration::ZERO);
                return Err(Error::Backend(format!(
                    "the backend did not mount {} within {} s (stopped: {})",
                    mountpoint.display(),
                    MOUNT_WAIT.as_secs(),
                    st.map_or("did not stop".into(), describe)
                )));
            }
        }
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

    /// Ends the daemon as a direct unmount would: its socket becomes an
    /// aborted FUSE device, whose reads fail with ENODEV
    /// ([`crate::clean_end`]). Returns false, having logged why, when that
    /// cannot be done; the caller then ends it with [`Backend::terminate`].
    pub fn end_cleanly(&mut self, log: &slog::Logger) -> bool {
        let Some((end, ino)) = &self.end else {
            return false;
        };
        let done = crate::clean_end::hand_over(*ino, end);
        for f in &done.failed {
            slog::warn!(
                log,
                "cannot give the backend its end of session (ENODEV): {f}"
            );
        }
        slog::debug!(
            log,
            "the backend's socket is an aborted FUSE device in {} process(es)",
            done.swapped
        );
        done.swapped > 0 && done.failed.is_empty()
    }

    /// Waits, answering the backend's trapped calls, until it exits; SIGINT
    /// or SIGTERM (read from `signals`) are passed on to it.
    pub fn wait_until_exit(&mut self, signals: &nix::sys::signalfd::SignalFd) -> ExitStatus {
        loop {
            if let Some(st) = self.wait_for(std::time::Duration::from_millis(50)) {
                return st;
            }
            while let Ok(Some(info)) = signals.read_signal() {
                use nix::sys::signal::Signal;
                if let Ok(s @ (Signal::SIGINT | Signal::SIGTERM)) =
                    Signal::try_from(info.ssi_signo as i32)
                {
                    let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
                    let _ = nix::sys::signal::kill(pid, s);
                }
            }
        }
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
            // A daemon unmounting at exit waits for its answer.
            self.handle_notifications();
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

/// The socket inherited at `fd` (`--hand-off-fd`), taken over: duplicated
/// close-on-exec and the original closed, so that the backend gets it only
/// where its mount puts it.
pub fn inherited_socket(fd: std::os::fd::RawFd) -> Result<OwnedFd, Error> {
    let bad = |why: String| Error::Usage(format!("--hand-off-fd {fd}: {why}"));
    let st = nix::sys::stat::fstat(fd).map_err(|e| bad(e.desc().to_string()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("not a socket".into()));
    }
    let dup = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(|e| bad(e.desc().to_string()))?;
    let _ = nix::unistd::close(fd);
    // SAFETY: F_DUPFD_CLOEXEC just returned `dup`, a new descriptor that
    // nothing else in this process knows.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) })
}

/// `argv` as a command in a process group of its own, so that a Ctrl-C on
/// the terminal reaches the proxy, which then shuts the backend down in
/// order.
fn command(argv: &[OsString]) -> Result<Command, Error> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::Usage("no backend command after '--'".into()))?;
    let mut cmd = Command::new(program);
    // The supervisor's socket is the proxy's to speak on, not the daemon's.
    cmd.args(args).process_group(0).env_remove("NOTIFY_SOCKET");
    Ok(cmd)
}

/// The aborted device paired with the inode of the backend's `socket`, and
/// its fd for the child to inherit.
fn end_for(
    end: Option<crate::clean_end::EndDevice>,
    socket: &OwnedFd,
) -> (
    Option<(crate::clean_end::EndDevice, u64)>,
    Option<std::os::fd::RawFd>,
) {
    let end = end.map(|e| (e, socket_inode(socket)));
    let fd = end.as_ref().map(|(e, _)| e.fd());
    (end, fd)
}

/// Clears close-on-exec on `fd` in the child (between fork and exec).
fn inherit(fd: Option<std::os::fd::RawFd>) -> std::io::Result<()> {
    if let Some(fd) = fd {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
    }
    Ok(())
}

/// The inode of a socket, as `/proc/PID/fd` shows it (`socket:[INO]`).
fn socket_inode(fd: &OwnedFd) -> u64 {
    nix::sys::stat::fstat(fd.as_raw_fd()).map_or(0, |st| st.st_ino)
}

/// Receives one fd sent with SCM_RIGHTS on `sock`, without waiting.
fn receive_fd(sock: &OwnedFd) -> Result<OwnedFd, String> {
    use std::os::fd::AsFd;
    let flags = nix::sys::socket::MsgFlags::MSG_DONTWAIT;
    crate::fd_passing::recv_with_fd(sock.as_fd(), &mut [0u8; 1], flags)
        .map_err(|e| e.desc().to_string())?
        .1
        .ok_or_else(|| "no fd in the message".into())
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
