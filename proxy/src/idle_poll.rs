//! `--idle-poll own`: while requests flow, the CPU a forwarding thread
//! waits on polls in the kernel's idle loop instead of halting: the one
//! thread's over read(2), or each ring thread's (`--kernel-transport uring`,
//! a thread kept to each CPU).
//!
//! Why: a proxied request wakes the proxy twice (the caller's request, the
//! daemon's reply). Where an idle CPU halts at once (a VM whose guest does
//! not halt-poll, as here), each wake-up of a sleeping proxy is an
//! interrupt and an exit to the hypervisor, tens of µs, paid in latency and
//! in the proxy's CPU; `--spin-us` hid it by keeping the proxy awake, at
//! the cost of that CPU. Asking for a zero resume latency on the one CPU
//! the proxy sleeps on gets the same wake-up for free: the idle loop polls
//! a flag, so the wake-up needs no interrupt, and unlike the proxy's spin
//! it yields at once to any task. The cost is the spin's: one CPU polls
//! while requests flow, and for [`HOLD`] after.
//!
//! The knob is the CPU's device PM QoS request from user space,
//! `/sys/devices/system/cpu/cpuN/power/pm_qos_resume_latency_us` ("n/a" is
//! a zero latency, "0" no constraint). It is one value per CPU, not a
//! request that ends with a descriptor, so proxies share it through
//! [`REGISTRY`], a file in which byte N stands for CPU N:
//! - a holder keeps a read lock (OFD) on the byte; the lock goes with the
//!   descriptor however the proxy ends;
//! - the byte's content is 1 while the "n/a" there is ours to undo;
//! - whoever gets the byte's write lock finds no holder: the last holder
//!   to leave, or a sweep after a holder died, puts "0" back.
//!
//! A CPU that has any other value (set by its administrator or a tuning
//! daemon) is left alone. A guard process started with the proxy sweeps
//! when the proxy is gone however it ended (SIGKILL included); the next
//! proxy's start sweeps too, should the guard have been killed with it.
//!
//! Nothing on the forwarding path allocates: the files are opened at
//! start, values are read and written through stack buffers.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use crate::cpu_latency::Flow;

/// The proxies' shared record of which CPUs they hold (see the module doc).
pub const REGISTRY: &str = "/run/fuseproxy/idle-poll";

/// How long without a request before the hold goes (at most twice this):
/// any loop of requests comes back well within it; sporadic traffic pays
/// this much polling per burst, and the main thread wakes this often while
/// requests flow.
pub const HOLD: Duration = Duration::from_millis(20);

/// The guard's name: `main` runs [`guard`] when called so.
pub const GUARD_NAME: &str = "fuseproxy-idle-poll-guard";

/// A CPU's user-space resume latency request.
fn resume_latency_path(cpu: usize) -> String {
    format!("/sys/devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us")
}

/// What a CPU's request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value {
    /// "0": no constraint, the kernel's default.
    Unconstrained,
    /// "n/a": wake at once, i.e. poll.
    Poll,
    /// Anything else: someone's own setting.
    Other,
}

fn read_value(f: &File) -> std::io::Result<Value> {
    let mut b = [0u8; 16];
    let n = f.read_at(&mut b, 0)?;
    Ok(match b[..n].trim_ascii() {
        b"0" => Value::Unconstrained,
        b"n/a" => Value::Poll,
        _ => Value::Other,
    })
}

fn write_value(f: &File, v: &[u8]) -> std::io::Result<()> {
    f.write_at(v, 0)?;
    // The tests' stand-ins are regular files, which keep a longer old value's
    // tail (sysfs takes each write whole).
    #[cfg(test)]
    f.set_len(v.len() as u64)?;
    Ok(())
}

/// The registry and every CPU's request file, opened once.
struct Files {
    registry: File,
    /// By CPU number; `None` where the CPU has no such file.
    cpus: Vec<Option<File>>,
}

impl Files {
    /// The machine's: [`REGISTRY`] and every configured CPU's file.
    fn open() -> std::io::Result<Files> {
        let registry = std::path::Path::new(REGISTRY);
        if let Some(dir) = registry.parent() {
            std::fs::create_dir_all(dir)?;
        }
        use nix::unistd::{sysconf, SysconfVar};
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let configured = sysconf(SysconfVar::_NPROCESSORS_CONF).ok().flatten();
        let n = configured
            .and_then(|c| usize::try_from(c).ok())
            .unwrap_or(n)
            .max(n);
        let cpus = (0..n).map(resume_latency_path);
        let files = Files::at(registry, cpus)?;
        if files.cpus.iter().all(Option::is_none) {
            return Err(std::io::Error::new(
                ErrorKind::NotFound,
                "no CPU has a pm_qos_resume_latency_us file",
            ));
        }
        Ok(files)
    }

    /// The registry at `registry` and CPU N's file at the N-th of `cpus`
    /// (one that does not exist: a CPU without one).
    fn at(
        registry: &std::path::Path,
        cpus: impl Iterator<Item = impl AsRef<std::path::Path>>,
    ) -> std::io::Result<Files> {
        let registry = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(registry)?;
        let mut files = Vec::new();
        for path in cpus {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path);
            match f {
                Ok(f) => files.push(Some(f)),
                Err(e) if e.kind() == ErrorKind::NotFound => files.push(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Files {
            registry,
            cpus: files,
        })
    }

    /// Takes (`F_RDLCK`, `F_WRLCK`) or lets go (`F_UNLCK`) CPU `cpu`'s byte;
    /// false when another descriptor's lock is in the way and `wait` is not
    /// set. A read lock changed into a write lock stays a read lock when
    /// that fails (record locks check before they change anything).
    fn lock(&self, cpu: usize, kind: libc::c_short, wait: bool) -> std::io::Result<bool> {
        let fl = libc::flock {
            l_type: kind,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: cpu as libc::off_t,
            l_len: 1,
            l_pid: 0,
        };
        let cmd = || {
            if wait {
                nix::fcntl::FcntlArg::F_OFD_SETLKW(&fl)
            } else {
                nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)
            }
        };
        loop {
            match nix::fcntl::fcntl(self.registry.as_raw_fd(), cmd()) {
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) if !wait => {
                    return Ok(false)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether the "n/a" on `cpu` was put there by a fuseproxy.
    fn ours(&self, cpu: usize) -> std::io::Result<bool> {
        let mut b = [0u8; 1];
        Ok(self.registry.read_at(&mut b, cpu as u64)? == 1 && b[0] == 1)
    }

    fn mark(&self, cpu: usize, ours: bool) -> std::io::Result<()> {
        self.registry
            .write_at(&[u8::from(ours)], cpu as u64)
            .map(drop)
    }

    /// Holds `cpu` polling: true when it is held (now or already by other
    /// proxies), false when its value is someone else's.
    fn take(&self, cpu: usize) -> std::io::Result<bool> {
        let Some(Some(f)) = self.cpus.get(cpu) else {
            return Ok(false);
        };
        if self.lock(cpu, libc::F_WRLCK as _, false)? {
            // No other holder: set it, unless the value is not ours to set.
            let held = match read_value(f)? {
                Value::Unconstrained => true,
                Value::Poll => self.ours(cpu)?,
                Value::Other => false,
            };
            if held {
                self.mark(cpu, true)?;
                write_value(f, b"n/a")?;
                self.lock(cpu, libc::F_RDLCK as _, true)?;
            } else {
                self.lock(cpu, libc::F_UNLCK as _, true)?;
            }
            return Ok(held);
        }
        // Other holders, or one changing it right now: wait for that.
        self.lock(cpu, libc::F_RDLCK as _, true)?;
        if read_value(f)? == Value::Poll && self.ours(cpu)? {
            return Ok(true);
        }
        self.lock(cpu, libc::F_UNLCK as _, true)?;
        Ok(false)
    }

    /// Lets go of `cpu`; the last holder puts "no constraint" back.
    fn release(&self, cpu: usize) -> std::io::Result<()> {
        if self.lock(cpu, libc::F_WRLCK as _, false)? {
            self.undo(cpu)?;
        }
        self.lock(cpu, libc::F_UNLCK as _, true).map(drop)
    }

    /// Under `cpu`'s write lock: puts back what a holder set.
    fn undo(&self, cpu: usize) -> std::io::Result<()> {
        let Some(Some(f)) = self.cpus.get(cpu) else {
            return Ok(());
        };
        if self.ours(cpu)? {
            if read_value(f)? == Value::Poll {
                write_value(f, b"0")?;
            }
            self.mark(cpu, false)?;
        }
        Ok(())
    }

    /// Puts back every CPU that holders left polling and nobody holds now
    /// (after a holder died). Returns how many.
    fn sweep(&self) -> std::io::Result<usize> {
        let mut n = 0;
        for cpu in (0..self.cpus.len()).filter(|&c| self.cpus[c].is_some()) {
            if self.lock(cpu, libc::F_WRLCK as _, false)? {
                n += usize::from(self.ours(cpu)?);
                let undone = self.undo(cpu);
                self.lock(cpu, libc::F_UNLCK as _, true)?;
                undone?;
            }
        }
        Ok(n)
    }
}

/// The holds on the CPUs the forwarding threads wait on. Driven under the
/// session's lock: [`request_seen`](Self::request_seen) for every request
/// (a flag), [`before_sleep`](Self::before_sleep) by a forwarding thread
/// before it sleeps (a `sched_getcpu`, and system calls only when its CPU
/// changed), [`tick`](Self::tick) by the main thread at
/// [`check_at`](Self::check_at). Neither allocates.
///
/// The release is the main thread's, on its timer: a sleep with a timeout
/// of its own would arm a timer on the forwarding thread's CPU at every
/// sleep, and programming the timer is an exit to the hypervisor in a VM
/// (measured: a stat loop 75-113 µs per call that way, 38-42 without).
pub struct IdlePoll {
    files: Files,
    /// The CPU each waiting thread holds, by waiter (the one forwarding
    /// thread over read(2) is 0, ring thread q is q). Waiters on one CPU
    /// share its hold, which goes with the last of them.
    held: Vec<Option<usize>>,
    /// Whether requests flow, hence whether to hold.
    flow: Flow,
    /// CPUs found with someone else's value: not tried again.
    foreign: Vec<bool>,
    /// The guard's end of the pipe: it sweeps once this closes.
    _guard: OwnedFd,
}

impl IdlePoll {
    /// Opens the files (root only, normally), sweeps what dead proxies
    /// left, and starts the guard. Nothing is held yet.
    pub fn open() -> std::io::Result<IdlePoll> {
        let files = Files::open()?;
        files.sweep()?;
        let guard = start_guard()?;
        let foreign = vec![false; files.cpus.len()];
        Ok(IdlePoll {
            held: vec![None; files.cpus.len().max(1)],
            files,
            flow: Flow::new(HOLD),
            foreign,
            _guard: guard,
        })
    }

    /// A request from the kernel: requests flow (again).
    pub fn request_seen(&mut self) {
        if !self.flow.keep() {
            self.flow.start(Instant::now());
        }
    }

    /// When the main thread must call [`tick`](Self::tick).
    pub fn check_at(&self) -> Option<Instant> {
        self.flow.check_at()
    }

    /// Before forwarding thread `waiter` sleeps: while requests flow, holds
    /// the CPU it is on. True when the hold left another CPU for it (the
    /// thread was moved).
    pub fn before_sleep(&mut self, waiter: usize) -> std::io::Result<bool> {
        if self.flow.check_at().is_none() {
            return Ok(false);
        }
        let Ok(cpu) = nix::sched::sched_getcpu() else {
            return Ok(false);
        };
        let Some(&mine) = self.held.get(waiter) else {
            return Ok(false);
        };
        if mine == Some(cpu) {
            return Ok(false);
        }
        // Moved (or first): the old CPU goes, whatever the new one allows.
        self.release(waiter)?;
        if self.foreign.get(cpu).copied().unwrap_or(true) {
            return Ok(mine.is_some());
        }
        if self.held.contains(&Some(cpu)) || self.files.take(cpu)? {
            self.held[waiter] = Some(cpu);
        } else {
            self.foreign[cpu] = true;
        }
        Ok(mine.is_some())
    }

    /// Lets go if no request came since the last check, else looks again
    /// after [`HOLD`].
    pub fn tick(&mut self, now: Instant) -> std::io::Result<()> {
        if self.flow.tick(now) {
            return self.release_all();
        }
        Ok(())
    }

    /// Lets go of the CPU `waiter` holds, if any (a ring thread that ends);
    /// the CPU itself goes unless another waiter holds it too.
    pub fn release(&mut self, waiter: usize) -> std::io::Result<()> {
        match self.held.get_mut(waiter).and_then(Option::take) {
            Some(cpu) if !self.held.contains(&Some(cpu)) => self.files.release(cpu),
            _ => Ok(()),
        }
    }

    fn release_all(&mut self) -> std::io::Result<()> {
        (0..self.held.len()).try_for_each(|w| self.release(w))
    }
}

impl Drop for IdlePoll {
    fn drop(&mut self) {
        let _ = self.release_all();
    }
}

/// Starts the guard: this executable under [`GUARD_NAME`], reading a pipe
/// whose other end only this process holds (close-on-exec: not the
/// backend's), so that its end-of-file means the proxy is gone.
fn start_guard() -> std::io::Result<OwnedFd> {
    use std::os::unix::process::CommandExt;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    std::process::Command::new("/proc/self/exe")
        .arg0(GUARD_NAME)
        .stdin(read)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    Ok(write)
}

/// The guard's body: waits until the proxy is gone (end of file on its
/// standard input), then sweeps. Deaf to the terminal's signals, which
/// reach the proxy too: the proxy ends, and the guard follows.
pub fn guard() -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    // Blocked, they stay pending and never act (the guard has one thread).
    let mut deaf = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        deaf.add(s);
    }
    if let Err(e) = deaf.thread_block() {
        eprintln!("{GUARD_NAME}: cannot block the terminal's signals: {e}");
    }
    let stdin = std::io::stdin();
    let mut b = [0u8; 64];
    loop {
        match nix::unistd::read(stdin.as_fd().as_raw_fd(), &mut b) {
            Ok(0) => break,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    match Files::open().and_then(|f| sweep_after_exit(&f)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{GUARD_NAME}: could not put the CPUs' resume latency back: {e}");
            1
        }
    }
}

/// How long the guard keeps trying a CPU whose byte is still locked.
const GUARD_PATIENCE: Duration = Duration::from_secs(1);

/// The guard's sweep. A dying process closes its descriptors in order, so
/// the pipe may report the end before the registry's descriptor, and with
/// it the proxy's lock, is gone: a CPU marked ours and still locked is
/// tried again for [`GUARD_PATIENCE`] (a live proxy's hold outlasts that,
/// and is then its own to undo).
fn sweep_after_exit(files: &Files) -> std::io::Result<()> {
    let until = Instant::now() + GUARD_PATIENCE;
    loop {
        files.sweep()?;
        let mut left = false;
        for cpu in (0..files.cpus.len()).filter(|&c| files.cpus[c].is_some()) {
            left |= files.ours(cpu)?;
        }
        if !left || Instant::now() >= until {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn values_are_read_as_the_kernel_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v");
        for (text, v) in [
            ("0\n", Value::Unconstrained),
            ("n/a\n", Value::Poll),
            ("25\n", Value::Other),
        ] {
            std::fs::write(&p, text).unwrap();
            assert_eq!(read_value(&File::open(&p).unwrap()).unwrap(), v, "{text:?}");
        }
    }

    /// Stand-ins for two CPUs' files, both "no constraint", and a registry.
    struct Machine {
        dir: tempfile::TempDir,
    }

    impl Machine {
        fn new() -> Machine {
            let dir = tempfile::tempdir().unwrap();
            for cpu in 0..2 {
                std::fs::write(dir.path().join(format!("cpu{cpu}")), "0\n").unwrap();
            }
            Machine { dir }
        }
        fn cpu(&self, cpu: usize) -> PathBuf {
            self.dir.path().join(format!("cpu{cpu}"))
        }
        /// One proxy's view: its own descriptors, so its own locks.
        fn proxy(&self) -> Files {
            let cpus = (0..3).map(|c| self.cpu(c));
            Files::at(&self.dir.path().join("registry"), cpus).unwrap()
        }
        fn value(&self, cpu: usize) -> String {
            std::fs::read_to_string(self.cpu(cpu))
                .unwrap()
                .trim()
                .to_string()
        }
    }

    /// An `IdlePoll` over the stand-ins, requests flowing, without a guard.
    fn holds(files: Files) -> IdlePoll {
        let (_read, write) = nix::unistd::pipe().unwrap();
        let mut p = IdlePoll {
            held: vec![None; files.cpus.len()],
            foreign: vec![false; files.cpus.len()],
            files,
            flow: Flow::new(HOLD),
            _guard: write,
        };
        p.request_seen();
        p
    }

    #[test]
    fn waiters_on_one_cpu_share_its_hold_and_the_last_lets_go() {
        // On CPU 0, so that `sched_getcpu` says 0 (the CPU every machine has).
        let mut cpu0 = nix::sched::CpuSet::new();
        cpu0.set(0).unwrap();
        if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpu0) {
            eprintln!("skipping: this thread may not run on CPU 0 ({e})");
            return;
        }
        let m = Machine::new();
        let mut p = holds(m.proxy());
        // The one thread over read(2) (0) and a ring thread (1) on CPU 0.
        assert!(!p.before_sleep(0).unwrap(), "a first hold is not a move");
        assert!(!p.before_sleep(1).unwrap());
        assert_eq!((m.value(0).as_str(), m.value(1).as_str()), ("n/a", "0"));
        p.release(1).unwrap();
        assert_eq!(m.value(0), "n/a", "still held by waiter 0");
        p.before_sleep(1).unwrap();
        p.release(0).unwrap();
        assert_eq!(m.value(0), "n/a", "still held by waiter 1");
        p.release(1).unwrap();
        assert_eq!(m.value(0), "0", "the last waiter let go");
        // A waiter beyond the table holds nothing.
        assert!(!p.before_sleep(99).unwrap());
        assert_eq!(m.value(0), "0");
        // When requests stop, every hold goes at once.
        p.before_sleep(0).unwrap();
        p.before_sleep(2).unwrap();
        let later = Instant::now() + 3 * HOLD;
        p.tick(later).unwrap();
        p.tick(later + 3 * HOLD).unwrap();
        assert_eq!(m.value(0), "0", "let go once requests stopped");
    }

    #[test]
    fn the_last_holder_to_leave_puts_the_value_back() {
        let m = Machine::new();
        let (a, b) = (m.proxy(), m.proxy());
        assert!(a.take(1).unwrap());
        assert_eq!((m.value(0).as_str(), m.value(1).as_str()), ("0", "n/a"));
        assert!(b.take(1).unwrap(), "a CPU another proxy holds is shared");
        a.release(1).unwrap();
        assert_eq!(m.value(1), "n/a", "still held by the other");
        b.release(1).unwrap();
        assert_eq!(m.value(1), "0");
        assert!(!a.take(2).unwrap(), "a CPU without the file is not held");
    }

    #[test]
    fn a_value_someone_else_set_is_left_alone() {
        let m = Machine::new();
        for (cpu, v) in [(0, "25"), (1, "n/a")] {
            std::fs::write(m.cpu(cpu), v).unwrap();
        }
        let a = m.proxy();
        assert!(!a.take(0).unwrap());
        assert!(!a.take(1).unwrap(), "an n/a that no proxy set is not ours");
        a.release(1).unwrap();
        a.sweep().unwrap();
        assert_eq!((m.value(0).as_str(), m.value(1).as_str()), ("25", "n/a"));
    }

    #[test]
    fn what_a_dead_holder_left_is_swept_unless_another_holds_it() {
        let m = Machine::new();
        let (dead, alive) = (m.proxy(), m.proxy());
        assert!(dead.take(0).unwrap());
        assert!(dead.take(1).unwrap());
        assert!(alive.take(1).unwrap());
        // Its descriptors closed without a release: its locks are gone.
        drop(dead);
        let guard = m.proxy();
        assert_eq!(guard.sweep().unwrap(), 1);
        assert_eq!((m.value(0).as_str(), m.value(1).as_str()), ("0", "n/a"));
        alive.release(1).unwrap();
        assert_eq!(m.value(1), "0");
        // A new holder of a CPU a dead one left polling takes it over.
        let (dead, next) = (m.proxy(), m.proxy());
        assert!(dead.take(0).unwrap());
        drop(dead);
        assert!(next.take(0).unwrap());
        next.release(0).unwrap();
        assert_eq!(m.value(0), "0");
    }

    #[test]
    fn the_registry_is_created_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let f = Files::at(&dir.path().join("r"), std::iter::empty::<&Path>()).unwrap();
        assert_eq!(f.sweep().unwrap(), 0);
        assert!(dir.path().join("r").exists());
    }
}
