//! A clean end for the daemon: after the unmount, its reads fail with
//! ENODEV, as they do on /dev/fuse after a direct `umount`.
//!
//! libfuse 3, go-fuse and bazil.org/fuse leave their session loop without
//! an error only when read(2) on the device fails with ENODEV. On the
//! proxy's socket the end would be EOF ("short read on fuse device", exit
//! status 1 or worse) or a signal (which libfuse 3 records as the session's
//! error), so a service manager would see a failure the direct mount never
//! shows. Nothing but a FUSE device gives ENODEV, so at the end the proxy
//! puts one in place of the socket, at the same fd number, in every process
//! that holds the backend's end:
//!
//! 1. Before the backend starts, [`EndDevice::new`] opens /dev/fuse, mounts
//!    it on a private temporary directory and unmounts it at once: the
//!    kernel aborts the connection, and from then on every read and write
//!    on that file fails with ENODEV. The backend inherits it (one more fd,
//!    which it never uses; under `--backend-user` it is still unable to
//!    open /dev/fuse or mount anything).
//! 2. At the end, [`hand_over`] finds each process holding the backend's
//!    socket (by its inode, in `/proc/PID/fd`), stops its threads with
//!    `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, and has one thread that was
//!    waiting in a system call run `dup3(END, N, flags)` — N being the
//!    socket's fd, `flags` its close-on-exec flag — before restarting the
//!    call it was in. The threads blocked in read(N) restart their read when
//!    released (an interrupted read is restarted by the kernel, and a
//!    restarted call looks its fd up afresh), now on the aborted device:
//!    ENODEV, and the daemon ends as after a direct unmount.
//!
//! Only x86-64 is done (the registers are per-architecture); elsewhere, and
//! when ptrace is refused, the proxy logs one line and ends the daemon as
//! before (SIGTERM, then EOF).
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// An aborted FUSE connection's device file: reads and writes fail with
/// ENODEV.
pub struct EndDevice {
    file: File,
}

impl EndDevice {
    /// Opens /dev/fuse (blocking, like a daemon's own), mounts it on a fresh
    /// private directory, unmounts it, and checks that a read now fails
    /// with ENODEV.
    ///
    /// Without the right to mount (not root), fusermount3 makes and removes
    /// the throw-away mount instead, as it makes the proxy's own.
    pub fn new() -> Result<EndDevice, String> {
        use std::os::unix::fs::OpenOptionsExt;
        if !crate::capabilities::can_mount() {
            return Self::through_fusermount();
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/fuse")
            .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
        let dir = TempDir::new()?;
        let data = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            file.as_raw_fd()
        );
        nix::mount::mount(
            Some("fuseproxy-end"),
            &dir.0,
            Some("fuse"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some(data.as_str()),
        )
        .map_err(|e| format!("mount(2) of a throw-away FUSE mount: {}", e.desc()))?;
        nix::mount::umount2(&dir.0, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| format!("umount2(2) of the throw-away FUSE mount: {}", e.desc()))?;
        drop(dir);
        Self::check_aborted(file)
    }

    /// [`EndDevice::new`] for a user: the mount and unmount by fusermount3.
    fn through_fusermount() -> Result<EndDevice, String> {
        let program = crate::user_mount::program()
            .ok_or("not root, and no fusermount3 to make a throw-away FUSE mount")?;
        let dir = TempDir::new()?;
        let mut opts = crate::mount_options::MountOptions::default();
        opts.apply("noexec,fsname=fuseproxy-end", true)
            .map_err(|e| e.to_string())?;
        let quiet = slog::Logger::root(slog::Discard, slog::o!());
        let (file, mut mount) = crate::user_mount::mount(&quiet, &program, &dir.0, &mut opts)
            .map_err(|e| format!("a throw-away FUSE mount through fusermount3: {e}"))?;
        mount.detach();
        if crate::mount::is_mount_point(&dir.0) {
            return Err("fusermount3 -u -z left the throw-away FUSE mount in place".into());
        }
        drop(dir);
        Self::check_aborted(file)
    }

    /// The end device once its mount is gone: a read must fail with ENODEV.
    fn check_aborted(file: File) -> Result<EndDevice, String> {
        // The device refuses (EINVAL) a buffer too small for a request of
        // max_write bytes before it looks at the connection.
        let mut buf = vec![0u8; (1 << 20) + (64 << 10)];
        match nix::unistd::read(file.as_raw_fd(), &mut buf) {
            Err(Errno::ENODEV) => Ok(EndDevice { file }),
            other => Err(format!(
                "a read on the aborted FUSE connection gave {other:?}, not ENODEV"
            )),
        }
    }

    /// Its fd in the proxy, inherited by the backend at the same number.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let template = std::env::temp_dir().join("fuseproxy-end-XXXXXX");
        nix::unistd::mkdtemp(&template)
            .map(TempDir)
            .map_err(|e| format!("mkdtemp in {}: {}", template.display(), e.desc()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// What [`hand_over`] did.
#[derive(Debug, Default)]
pub struct HandOver {
    /// Processes whose socket fd now refers to the aborted device.
    pub swapped: usize,
    /// Why a holder could not be changed, one entry per holder.
    pub failed: Vec<String>,
}

/// Why `swap_in` found no thread to run dup3, and how often it tries again
/// (every 2 ms) before giving up.
const NOT_WAITING: &str = "no thread waiting in a restartable system call";
const NOT_WAITING_TRIES: u32 = 25;

/// How long one holder may take to stop under ptrace.
const STOP_WAIT: Duration = Duration::from_millis(500);

/// Puts `end` in place of the socket with inode `socket_ino` in every
/// process that holds it (see the module doc).
pub fn hand_over(socket_ino: u64, end: &EndDevice) -> HandOver {
    let mut out = HandOver::default();
    let me = std::process::id() as i32;
    for (pid, fds) in socket_holders(socket_ino) {
        if pid == me {
            continue;
        }
        let Some(end_fd) = find_same_file(pid, end.fd()) else {
            out.failed.push(format!(
                "pid {pid} no longer holds the aborted device it inherited"
            ));
            continue;
        };
        // A daemon that has just answered DESTROY may be between its reply
        // and its next read: give it a moment to get back into one.
        let mut tries = 0;
        let done = loop {
            match swap_in(Pid::from_raw(pid), end_fd, &fds) {
                Err(e) if e == NOT_WAITING && tries < NOT_WAITING_TRIES => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                other => break other,
            }
        };
        match done {
            Ok(()) => out.swapped += 1,
            Err(e) => out.failed.push(format!("pid {pid}: {e}")),
        }
    }
    out
}

/// Every process with an fd on `socket:[ino]`, and those fds.
fn socket_holders(ino: u64) -> Vec<(i32, Vec<RawFd>)> {
    let want = format!("socket:[{ino}]");
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let mut mine = Vec::new();
        for f in fds.flatten() {
            if std::fs::read_link(f.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                if let Some(n) = f.file_name().to_str().and_then(|s| s.parse().ok()) {
                    mine.push(n);
                }
            }
        }
        if !mine.is_empty() {
            out.push((pid, mine));
        }
    }
    out
}

/// The fd in `pid` that is the same open file as our `fd`: at the same
/// number if the daemon left it there, else found by comparing.
fn find_same_file(pid: i32, fd: RawFd) -> Option<RawFd> {
    if same_file(pid, fd, fd) {
        return Some(fd);
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.flatten()
        .filter_map(|f| f.file_name().to_str().and_then(|s| s.parse().ok()))
        .find(|&theirs| same_file(pid, fd, theirs))
}

/// kcmp(2) KCMP_FILE: whether our `ours` and `pid`'s `theirs` are one file.
fn same_file(pid: i32, ours: RawFd, theirs: RawFd) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only integers and reads no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::c_long::from(std::process::id() as i32),
            libc::c_long::from(pid),
            KCMP_FILE,
            libc::c_long::from(ours),
            libc::c_long::from(theirs),
        )
    };
    r == 0
}

/// The threads of `pid`.
fn threads(pid: Pid) -> Vec<Pid> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|t| t.file_name().to_str().and_then(|s| s.parse().ok()))
                .map(Pid::from_raw)
                .collect()
        })
        .unwrap_or_default()
}

/// A thread held in a ptrace stop, and the signal its stop withheld.
struct Held {
    tid: Pid,
    pending: Option<Signal>,
}

/// Seizes and stops every thread of `pid`, has one of them replace each of
/// `targets` with `end_fd`, and lets them all go.
///
/// Every thread seized is released before this returns, whatever failed: a
/// traced thread that exits stays a zombie until its tracer reaps it, and
/// its process could then never be reaped.
fn swap_in(pid: Pid, end_fd: RawFd, targets: &[RawFd]) -> Result<(), String> {
    let mut seized: Vec<Pid> = Vec::new();
    let mut held: Vec<Held> = Vec::new();
    let result = (|| {
        for tid in threads(pid) {
            if let Some(h) = seize_and_stop(tid, &mut seized)? {
                held.push(h);
            }
        }
        let injector = held
            .iter_mut()
            .find(|h| regs::restartable(h.tid))
            .ok_or(NOT_WAITING)?;
        for &target in targets {
            let flags = cloexec_of(pid, target);
            let r = regs::call(
                injector,
                libc::SYS_dup3,
                [end_fd as u64, target as u64, flags],
            )?;
            if r < 0 {
                return Err(format!(
                    "dup3 in the daemon failed: {}",
                    Errno::from_raw(-r as i32).desc()
                ));
            }
        }
        regs::restart(injector.tid)
    })();
    // Threads that appeared while we worked were not interrupted; one
    // blocked in read(N) would still wait on the socket. Kick each once.
    if result.is_ok() {
        for tid in threads(pid) {
            if !seized.contains(&tid) {
                if let Ok(Some(h)) = seize_and_stop(tid, &mut seized) {
                    held.push(h);
                }
            }
        }
    }
    for tid in seized {
        let pending = held.iter().find(|h| h.tid == tid).and_then(|h| h.pending);
        release(tid, pending);
    }
    result
}

/// Seizes `tid` (noting it in `seized`) and waits, bounded, for its
/// interrupt stop. `None` if the thread is gone.
fn seize_and_stop(tid: Pid, seized: &mut Vec<Pid>) -> Result<Option<Held>, String> {
    match ptrace::seize(tid, ptrace::Options::PTRACE_O_TRACESYSGOOD) {
        Ok(()) => seized.push(tid),
        Err(Errno::ESRCH) => return Ok(None),
        Err(e) => return Err(format!("PTRACE_SEIZE of thread {tid}: {}", e.desc())),
    }
    let mut held = Held { tid, pending: None };
    ptrace::interrupt(tid)
        .map_err(|e| format!("PTRACE_INTERRUPT of thread {tid}: {}", e.desc()))?;
    let deadline = Instant::now() + STOP_WAIT;
    loop {
        match wait_until(tid, deadline)? {
            WaitStatus::PtraceEvent(_, _, ev) if ev == libc::PTRACE_EVENT_STOP => {
                return Ok(Some(held));
            }
            // A signal arrived first: keep it for the release, let the
            // thread run on to the interrupt's stop.
            WaitStatus::Stopped(_, sig) => {
                held.pending = held.pending.or(Some(sig));
                let _ = ptrace::cont(tid, None);
            }
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => return Ok(None),
            _ => {}
        }
    }
}

/// The next wait status of traced thread `tid`, polled until `deadline`.
fn wait_until(tid: Pid, deadline: Instant) -> Result<WaitStatus, String> {
    loop {
        match waitpid(tid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            Ok(st) => return Ok(st),
            Err(Errno::ECHILD) => return Ok(WaitStatus::Exited(tid, 0)),
            Err(e) => return Err(format!("waitpid on thread {tid}: {}", e.desc())),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "thread {tid} did not stop within {} ms",
                STOP_WAIT.as_millis()
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Lets a seized thread go, with the signal its stop withheld. One that
/// is running is stopped first (PTRACE_DETACH needs a stopped tracee); one
/// that exited meanwhile is reaped.
fn release(tid: Pid, pending: Option<Signal>) {
    if ptrace::detach(tid, pending).is_ok() {
        return;
    }
    let _ = ptrace::interrupt(tid);
    let deadline = Instant::now() + STOP_WAIT;
    let mut pending = pending;
    while let Ok(st) = wait_until(tid, deadline) {
        match st {
            WaitStatus::Exited(..) | WaitStatus::Signaled(..) => return,
            WaitStatus::Stopped(_, sig) => {
                pending = pending.or(Some(sig));
                if ptrace::detach(tid, pending).is_ok() {
                    return;
                }
            }
            _ => {
                if ptrace::detach(tid, pending).is_ok() {
                    return;
                }
            }
        }
    }
}

/// `O_CLOEXEC` if `pid`'s `fd` has it (from its fdinfo), else 0.
fn cloexec_of(pid: Pid, fd: RawFd) -> u64 {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(0);
    flags & libc::O_CLOEXEC as u64
}

#[cfg(target_arch = "x86_64")]
mod regs {
    //! x86-64: a thread stopped after an interrupted system call has `rip`
    //! just past its `syscall` instruction (0f 05), the call's number in
    //! `orig_rax` and -ERESTART* in `rax`; the kernel restarts it by setting
    //! `rax = orig_rax` and `rip -= 2`. We borrow that instruction.
    use super::{wait_until, Held, STOP_WAIT};
    use nix::sys::ptrace;
    use nix::sys::wait::WaitStatus;
    use nix::unistd::Pid;
    use std::time::Instant;

    /// -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND: restarted by
    /// re-running the same call (not -ERESTART_RESTARTBLOCK, which needs
    /// restart_syscall).
    fn is_restart(rax: u64) -> bool {
        matches!(rax as i64, -514..=-512)
    }

    /// Whether `tid` sits in a call the kernel will restart as it was, at a
    /// `syscall` instruction we can re-enter.
    pub fn restartable(tid: Pid) -> bool {
        let Ok(r) = ptrace::getregs(tid) else {
            return false;
        };
        if (r.orig_rax as i64) < 0 || !is_restart(r.rax) {
            return false;
        }
        let at = (r.rip - 2) as ptrace::AddressType;
        ptrace::read(tid, at).is_ok_and(|w| w & 0xffff == 0x050f)
    }

    /// Runs system call `nr` with `args` in `h`'s thread and returns its
    /// result, leaving the thread's registers as they were before it.
    pub fn call(h: &mut Held, nr: libc::c_long, args: [u64; 3]) -> Result<i64, String> {
        let saved = ptrace::getregs(h.tid).map_err(|e| format!("GETREGS: {}", e.desc()))?;
        let mut r = saved;
        r.rip = saved.rip - 2;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX; // no restart of the interrupted call meanwhile
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        ptrace::setregs(h.tid, r).map_err(|e| format!("SETREGS: {}", e.desc()))?;
        let mut result = None;
        for stop in ["entry", "exit"] {
            ptrace::syscall(h.tid, None).map_err(|e| format!("PTRACE_SYSCALL: {}", e.desc()))?;
            let deadline = Instant::now() + STOP_WAIT;
            loop {
                match wait_until(h.tid, deadline)? {
                    WaitStatus::PtraceSyscall(_) => break,
                    // Withheld until the release; resume toward the call.
                    WaitStatus::Stopped(_, sig) => {
                        h.pending = h.pending.or(Some(sig));
                        ptrace::syscall(h.tid, None)
                            .map_err(|e| format!("PTRACE_SYSCALL: {}", e.desc()))?;
                    }
                    WaitStatus::PtraceEvent(..) => {
                        ptrace::syscall(h.tid, None)
                            .map_err(|e| format!("PTRACE_SYSCALL: {}", e.desc()))?;
                    }
                    other => return Err(format!("thread left during the call ({other:?})")),
                }
            }
            let now = ptrace::getregs(h.tid).map_err(|e| format!("GETREGS: {}", e.desc()))?;
            if stop == "exit" {
                result = Some(now.rax as i64);
            } else if now.orig_rax != nr as u64 {
                return Err(format!("stopped in call {} instead", now.orig_rax as i64));
            }
        }
        // Back to the interrupted state; `restart` re-enters it.
        ptrace::setregs(h.tid, saved).map_err(|e| format!("SETREGS: {}", e.desc()))?;
        result.ok_or_else(|| "no result".into())
    }

    /// Makes `tid` (held at a system-call exit after [`call`]) re-run the
    /// call it was interrupted in, as the kernel's restart would have.
    pub fn restart(tid: Pid) -> Result<(), String> {
        let mut r = ptrace::getregs(tid).map_err(|e| format!("GETREGS: {}", e.desc()))?;
        if is_restart(r.rax) && (r.orig_rax as i64) >= 0 {
            r.rax = r.orig_rax;
            r.rip -= 2;
            r.orig_rax = u64::MAX;
            ptrace::setregs(tid, r).map_err(|e| format!("SETREGS: {}", e.desc()))?;
        }
        Ok(())
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod regs {
    use super::Held;
    use nix::unistd::Pid;

    pub fn restartable(_: Pid) -> bool {
        false
    }
    pub fn call(_: &mut Held, _: libc::c_long, _: [u64; 3]) -> Result<i64, String> {
        Err("only done on x86-64".into())
    }
    pub fn restart(_: Pid) -> Result<(), String> {
        Ok(())
    }
}
