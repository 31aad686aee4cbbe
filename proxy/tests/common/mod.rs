//! Shared harness for fuseproxy's end-to-end tests: real mounts, as root.
//!
//! Every test binary that says `mod common;` gets:
//!
//! - [`require_root_and_fuse`]: panics (never skips) unless we are root and
//!   `/dev/fuse` opens. [`MountBuilder::mount`] and [`MountBuilder::start`]
//!   call it for you.
//! - [`passthrough_ll`]: libfuse's `passthrough_ll` example, built once per
//!   test binary into `CARGO_TARGET_TMPDIR` (atomic rename, so parallel test
//!   binaries don't race).
//! - [`proxy_bin`]: the `fuseproxy` binary under test (`FUSEPROXY_TEST_BIN`
//!   overrides cargo's).
//! - [`Mode`]: `Direct` runs the backend on the mountpoint itself (the
//!   reference), `Proxy` runs `fuseproxy [PROXY_ARGS] MNT -- BACKEND...`.
//!   Setting `FUSEPROXY_TEST_MODE=direct` in the environment turns every
//!   `Mode::Proxy` into `Mode::Direct` (to tell a workload bug from a proxy
//!   bug); tests that only make sense through the proxy check
//!   [`Mount::mode`].
//! - `FUSEPROXY_TEST_THREADS=N` in the environment adds `--threads N` to
//!   the proxy's arguments of every Proxy-mode mount built from parts
//!   (backend command plus `.proxy_args`), unless the builder set
//!   `.threads(n)` itself or its proxy arguments already name `--threads`.
//!   Mounts with `.raw_proxy_args` (the whole argv given) get it too when
//!   they run a backend (contain `--`); Direct mode never.
//! - `FUSEPROXY_TEST_TRANSPORT=uring` adds `--kernel-transport uring` the
//!   same way, except where the proxy gets more than one thread (uring is
//!   served by one) or its arguments name `--kernel-transport` or
//!   `--threads`. The module parameter `fuse.enable_uring` must be
//!   on for the ring to be used (CI's uring pass sets it); otherwise the
//!   proxy logs why and reads the device.
//! - [`MountBuilder`]: a fresh temporary directory (mode 0755, so `nobody`
//!   can traverse it) holding `mnt/` (the mountpoint), `backing/` (the
//!   backend's source directory) and the child's `stderr.log`/`stdout.log`.
//!   Backend arguments and raw proxy arguments may contain the placeholders
//!   `{mnt}`, `{backing}` and `{dir}` (the temporary directory), which are
//!   replaced anywhere inside each argument.
//!   - `.mount()` spawns and waits (bounded, [`MOUNT_TIMEOUT`]) until the
//!     mountpoint is a `fuse`/`fuse.*` mount in /proc/self/mountinfo AND a
//!     stat of it succeeds; it panics with the child's log otherwise.
//!   - `.try_mount()` is the same but returns `Err(Box<MountFailure>)`
//!     (the guard plus the reason) instead of panicking.
//!   - `.start()` spawns without waiting (for tests of failures).
//!   - `MountBuilder::passthrough(mode, &["-o", "xattr"])` is the common case:
//!     `passthrough_ll -f -o source={backing} [EXTRA...] {mnt}`.
//!   - `.raw_proxy_args(args)` replaces the whole proxy argv (CLI tests).
//!   - `.threads(n)` adds `--threads n` (Proxy mode, not with
//!     `.raw_proxy_args`), whatever `FUSEPROXY_TEST_THREADS` says.
//!   - `.dirs_owned_by(uid, gid)` chowns `mnt/` and `backing/` before the
//!     start (a backend run as another user).
//! - [`Mount`]: the guard. Accessors `mountpoint()`, `backing()`, `dir()`,
//!   `path(rel)`, `pid()`, `mode()`; the log via `proxy_log()`/`log_path()`;
//!   `send_signal(sig)`, `wait_exit(timeout) -> Option<ExitStatus>`,
//!   `exit_status()`, `is_mounted()`, `wait_mounted(t)`, `wait_unmounted(t)`,
//!   `umount()` (a user's plain `umount MNT`), `descendants()`.
//!   On drop it ALWAYS cleans up, panicking or not: `umount -l` while the
//!   mountpoint is still mounted, SIGTERM to the child by pid, SIGKILL after
//!   [`KILL_TIMEOUT`], SIGKILL to any descendant (e.g. the proxy's backend)
//!   still alive and still the same process (pid + start time), then removes
//!   the temporary directory (never while something is still mounted on it).
//!   When the test is panicking, drop prints the child's log to stderr.
//! - Free helpers: [`wait_until`], [`is_mounted`], [`mount_info`],
//!   [`stat_with_timeout`], [`send_signal`], [`descendants`],
//!   [`run_proxy`] (run fuseproxy to completion, bounded, with its output),
//!   [`run_bounded`] (any command).
//! - [`sys`]: libc wrappers returning `Result<_, Errno>` (open, pread,
//!   xattrs, utimensat, flock, mmap ...), so workloads can record errnos;
//!   `PageBuf` (page-aligned buffer for direct I/O); `as_user(uid, gid, op)`
//!   runs one operation as another user in a forked child.
//! - [`tree`]: `snapshot(root, opts)` of a directory tree (type, mode, owner,
//!   size, content digest, symlink target, mtime, nlink, xattrs),
//!   `pattern(seed, len)` bytes, `Digest`, and `assert_same` which prints
//!   only the first differences.
//!
//! Every wait is bounded; polling is every [`POLL_INTERVAL`].
#![allow(dead_code)]

pub mod clock;
pub mod policy;
pub mod stats;
pub mod sys;
pub mod tree;
pub mod uring_param;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// How long a mount may take to appear (or disappear).
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process gets after SIGTERM before SIGKILL.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Polling period of every wait.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Uid/gid of `nobody` on Debian.
pub const NOBODY: u32 = 65534;

/// Polls `cond` every [`POLL_INTERVAL`] until it returns true (then true) or
/// `timeout` has passed (then false; `cond` is tried one last time).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Waits up to `bound` until the proxy's log says a new daemon took over
/// (`--restart`, or SIGUSR2) for the `n`-th time; panics with the log if not.
pub fn wait_taken_over(m: &Mount, n: usize, bound: Duration) {
    let done = wait_until(bound, || {
        m.proxy_log()
            .matches("answered INIT as the first did")
            .count()
            >= n
    });
    assert!(done, "no new daemon within {bound:?}:\n{}", m.proxy_log());
}

/// Panics unless we run as root and `/dev/fuse` can be opened. These tests
/// never skip silently.
pub fn require_root_and_fuse() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "fuseproxy's integration tests must run as root (they mount FUSE filesystems)"
    );
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        panic!("cannot open /dev/fuse ({e}): the integration tests need FUSE");
    }
}

/// The `fuseproxy` binary under test: cargo's, or `FUSEPROXY_TEST_BIN` if
/// set (to test a release build or an installed binary).
pub fn proxy_bin() -> PathBuf {
    match std::env::var_os("FUSEPROXY_TEST_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_fuseproxy")),
    }
}

#[path = "../../../testing/libfuse_examples.rs"]
mod libfuse_examples;
pub use libfuse_examples::{build_example, passthrough_ll};

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `major:minor`
    pub dev: String,
    pub root: String,
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,nodev,relatime`).
    pub mount_options: String,
    /// Optional fields (`shared:N` ...), space-separated.
    pub optional: String,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options (`rw,user_id=0,group_id=0,...`).
    pub super_options: String,
}

impl MountInfo {
    /// Is this a FUSE mount (`fuse`, `fuse.*`, `fuseblk`)?
    pub fn is_fuse(&self) -> bool {
        self.fstype == "fuse" || self.fstype.starts_with("fuse.") || self.fstype == "fuseblk"
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space ...).
fn unescape_mountinfo(s: &str) -> OsString {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsStr::from_bytes(&out).to_owned()
}

fn parse_mountinfo_line(line: &str) -> Option<MountInfo> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    if l.len() < 6 || r.len() < 3 {
        return None;
    }
    Some(MountInfo {
        mount_id: l[0].parse().ok()?,
        parent_id: l[1].parse().ok()?,
        dev: l[2].to_string(),
        root: unescape_mountinfo(l[3]).to_string_lossy().into_owned(),
        mount_point: PathBuf::from(unescape_mountinfo(l[4])),
        mount_options: l[5].to_string(),
        optional: l[6..].join(" "),
        fstype: r[0].to_string(),
        source: unescape_mountinfo(r[1]).to_string_lossy().into_owned(),
        super_options: r[2..].join(" "),
    })
}

/// All entries of /proc/self/mountinfo.
pub fn mount_table() -> Vec<MountInfo> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// The topmost mountinfo entry whose mount point is `path`, if any.
pub fn mount_info(path: &Path) -> Option<MountInfo> {
    mount_table()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

/// True if `path` is a FUSE mount point per /proc/self/mountinfo. Never
/// touches the filesystem itself, so it cannot hang on a dead daemon.
pub fn is_mounted(path: &Path) -> bool {
    mount_info(path).is_some_and(|m| m.is_fuse())
}

/// `stat(path)` in a helper thread; `None` if it did not return within
/// `timeout` (the thread is left behind, blocked in the kernel, until the
/// FUSE connection goes away).
pub fn stat_with_timeout(path: &Path, timeout: Duration) -> Option<io::Result<fs::Metadata>> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(fs::metadata(&p));
    });
    rx.recv_timeout(timeout).ok()
}

/// Mounted (per mountinfo) and a stat of it succeeds within a second.
pub fn is_mounted_and_live(path: &Path) -> bool {
    is_mounted(path) && matches!(stat_with_timeout(path, Duration::from_secs(1)), Some(Ok(_)))
}

/// A tmpfs of `size` (mount's `size=`, e.g. `1m`) on the directory `path`,
/// made here; unmounted (lazily, as often as something is mounted there)
/// on drop, whatever the test did.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).expect("create the tmpfs mountpoint");
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mount a tmpfs");
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..8 {
            if mount_info(&self.0).is_none() {
                break;
            }
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Sends `sig` to `pid`.
pub fn send_signal(pid: i32, sig: Signal) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
}

/// Field 22 (start time) and field 4 (ppid) of /proc/PID/stat.
fn proc_stat(pid: i32) -> Option<(i32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // rest starts at field 3 (state).
    let ppid = f.get(1)?.parse().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// A process identified by pid and start time, so that a recycled pid is
/// never signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcId {
    /// Is the same process still there (zombies count as alive)?
    pub fn is_alive(&self) -> bool {
        proc_stat(self.pid).is_some_and(|(_, st)| st == self.start_time)
    }

    /// Gone, or a zombie nobody has reaped yet (pid 1 of a container may be
    /// slow to): either way it runs no more.
    pub fn is_gone(&self) -> bool {
        !self.is_alive() || proc_state(self.pid) == Some('Z')
    }

    /// Sends `sig` if the same process is still there.
    pub fn signal(&self, sig: Signal) {
        if self.is_alive() {
            let _ = send_signal(self.pid, sig);
        }
    }
}

fn proc_state(pid: i32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].chars().next()
}

/// Running processes (zombies left out) whose command line contains
/// `needle` (a test's unique temporary path), with their arguments. A read
/// of /proc/N/cmdline can wait while N execs, so the scan runs in a helper
/// thread and gives up (returning an empty list) after two seconds.
pub fn processes_naming(needle: &[u8]) -> Vec<(ProcId, Vec<String>)> {
    let needle = needle.to_vec();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(scan_cmdlines(&needle));
    });
    rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()
}

fn scan_cmdlines(needle: &[u8]) -> Vec<(ProcId, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !cmdline.windows(needle.len()).any(|w| w == needle) {
            continue;
        }
        let Some((_, start_time)) = proc_stat(pid) else {
            continue;
        };
        let id = ProcId { pid, start_time };
        if id.is_gone() {
            continue;
        }
        let argv = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((id, argv));
    }
    out
}

/// All live descendants of `pid` (children, grandchildren ...).
///
/// This kernel has no /proc/PID/task/TID/children, so every /proc/N/stat is
/// read; a read can block while process N is in the middle of an exec, so
/// the scan runs in a helper thread and gives up (returning an empty list)
/// after two seconds.
pub fn descendants(pid: i32) -> Vec<ProcId> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(scan_descendants(pid));
    });
    rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default()
}

fn scan_descendants(pid: i32) -> Vec<ProcId> {
    let mut all = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) {
                if let Some((ppid, st)) = proc_stat(p) {
                    all.push((p, ppid, st));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, ppid, st) in &all {
            if ppid == parent {
                out.push(ProcId {
                    pid: p,
                    start_time: st,
                });
                frontier.push(p);
            }
        }
    }
    out
}

/// How the filesystem under test is mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The backend mounts the mountpoint itself (the reference).
    Direct,
    /// `fuseproxy [PROXY_ARGS] MNT -- BACKEND...`
    Proxy,
}

impl Mode {
    /// `self`, except that `FUSEPROXY_TEST_MODE=direct` turns `Proxy` into
    /// `Direct`.
    pub fn effective(self) -> Mode {
        match std::env::var("FUSEPROXY_TEST_MODE").as_deref() {
            Ok("direct") => Mode::Direct,
            _ => self,
        }
    }
}

fn substitute(arg: &OsStr, dir: &Path, mnt: &Path, backing: &Path) -> OsString {
    let Some(s) = arg.to_str() else {
        return arg.to_owned();
    };
    if !s.contains('{') {
        return arg.to_owned();
    }
    let s = s
        .replace("{mnt}", &mnt.to_string_lossy())
        .replace("{backing}", &backing.to_string_lossy())
        .replace("{dir}", &dir.to_string_lossy());
    OsString::from(s)
}

/// Describes a mount to make; see the module doc.
#[derive(Clone, Debug)]
pub struct MountBuilder {
    mode: Mode,
    proxy_args: Vec<OsString>,
    raw_proxy_args: Option<Vec<OsString>>,
    backend: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    mount_timeout: Duration,
    owner: Option<(u32, u32)>,
    shared: bool,
    program: Option<OsString>,
    threads: Option<u32>,
}

/// `FUSEPROXY_TEST_THREADS`, if set and not empty; panics on anything but
/// a positive number (a typo must not silently test the default).
pub fn env_threads() -> Option<u32> {
    let v = std::env::var_os("FUSEPROXY_TEST_THREADS")?;
    if v.is_empty() {
        return None;
    }
    match v.to_str().and_then(|s| s.trim().parse::<u32>().ok()) {
        Some(n) if n > 0 => Some(n),
        _ => panic!("FUSEPROXY_TEST_THREADS={v:?}: expected a positive number"),
    }
}

/// `FUSEPROXY_TEST_TRANSPORT`, if set and not empty: `uring` or `read`;
/// panics on anything else (a typo must not silently test the default).
pub fn env_transport() -> Option<&'static str> {
    let v = std::env::var_os("FUSEPROXY_TEST_TRANSPORT")?;
    match v.to_str().map(str::trim) {
        Some("") => None,
        Some("uring") => Some("uring"),
        Some("read") => Some("read"),
        _ => panic!("FUSEPROXY_TEST_TRANSPORT={v:?}: expected uring or read"),
    }
}

/// Whether `args` already give fuseproxy `--threads`.
fn names_threads(args: &[OsString]) -> bool {
    names_option(args, "--threads")
}

/// Whether `args` already give fuseproxy the long option `name`.
fn names_option(args: &[OsString], name: &str) -> bool {
    args.iter().any(|a| {
        a.to_str()
            .is_some_and(|s| s == name || s.strip_prefix(name).is_some_and(|r| r.starts_with('=')))
    })
}

impl MountBuilder {
    /// A mount with the given backend command (placeholders allowed). The
    /// backend command must contain `{mnt}` where the daemon takes its
    /// mountpoint.
    pub fn new<I, S>(mode: Mode, backend: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        MountBuilder {
            mode: mode.effective(),
            proxy_args: Vec::new(),
            raw_proxy_args: None,
            backend: backend.into_iter().map(|s| s.as_ref().to_owned()).collect(),
            env: Vec::new(),
            mount_timeout: MOUNT_TIMEOUT,
            owner: None,
            shared: false,
            program: None,
            threads: None,
        }
    }

    /// `passthrough_ll -f -o source={backing} EXTRA... {mnt}`.
    pub fn passthrough(mode: Mode, extra: &[&str]) -> Self {
        let mut cmd: Vec<OsString> = vec![
            passthrough_ll().as_os_str().to_owned(),
            "-f".into(),
            "-o".into(),
            "source={backing}".into(),
        ];
        cmd.extend(extra.iter().map(OsString::from));
        cmd.push("{mnt}".into());
        Self::new(mode, cmd)
    }

    /// Options for fuseproxy, placed before MOUNTPOINT (Proxy mode only).
    pub fn proxy_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.proxy_args
            .extend(args.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Replaces fuseproxy's whole argv (after argv[0]); placeholders allowed.
    /// Forces Proxy mode.
    pub fn raw_proxy_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.mode = Mode::Proxy;
        self.raw_proxy_args = Some(args.into_iter().map(|s| s.as_ref().to_owned()).collect());
        self
    }

    /// Runs `program` with the proxy's arguments instead of the proxy (a
    /// wrapper that execs it, such as setarch).
    pub fn program(mut self, program: impl AsRef<OsStr>) -> Self {
        self.program = Some(program.as_ref().to_owned());
        self
    }

    /// `--threads n` for the proxy (Proxy mode, not with
    /// [`raw_proxy_args`](Self::raw_proxy_args)), overriding
    /// `FUSEPROXY_TEST_THREADS`.
    pub fn threads(mut self, n: u32) -> Self {
        self.threads = Some(n);
        self
    }

    /// The `--threads` this builder will add to the proxy's arguments: its
    /// own, else `FUSEPROXY_TEST_THREADS`'s; `None` in Direct mode, with
    /// raw proxy arguments, or when the proxy arguments already name
    /// `--threads` (with either of the last two, `.threads(n)` panics).
    pub fn effective_threads(&self) -> Option<u32> {
        if self.mode != Mode::Proxy {
            return None;
        }
        if let Some(raw) = &self.raw_proxy_args {
            assert!(
                self.threads.is_none(),
                ".threads() with .raw_proxy_args(): put --threads in the raw arguments"
            );
            // A whole command line that runs a backend takes the variable
            // too; one that does not (--help, --check) is left alone.
            // Not through a wrapper program: its own options come first.
            let runs_backend = raw.iter().any(|a| a == "--") && self.program.is_none();
            return (runs_backend && !names_threads(raw))
                .then(env_threads)
                .flatten();
        }
        if names_threads(&self.proxy_args) {
            assert!(
                self.threads.is_none(),
                "--threads both in .proxy_args and in .threads()"
            );
            return None;
        }
        self.threads.or_else(env_threads)
    }

    /// The `--kernel-transport` this builder will add: `FUSEPROXY_TEST_TRANSPORT`'s,
    /// where `FUSEPROXY_TEST_THREADS` would reach the proxy (see
    /// [`effective_threads`](Self::effective_threads)), and only with one
    /// forwarding thread and no `--kernel-transport` or `--threads` given.
    pub fn effective_transport(&self) -> Option<&'static str> {
        if self.mode != Mode::Proxy {
            return None;
        }
        let given = match &self.raw_proxy_args {
            Some(raw) => {
                let runs_backend = raw.iter().any(|a| a == "--") && self.program.is_none();
                if !runs_backend {
                    return None;
                }
                raw
            }
            None => &self.proxy_args,
        };
        if names_option(given, "--kernel-transport") || names_threads(given) {
            return None;
        }
        if self.effective_threads().is_some_and(|n| n > 1) {
            return None;
        }
        env_transport()
    }

    /// An environment variable for the spawned process.
    pub fn env(mut self, key: impl AsRef<OsStr>, val: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), val.as_ref().to_owned()));
        self
    }

    /// Gives `mnt/` and `backing/` to `uid:gid` before the process starts
    /// (for a backend run as that user: `--backend-user`).
    /// The test's directory becomes a shared mount (bound on itself), as
    /// `/` is on a systemd host, so that mounts made in it propagate into
    /// the slave mount namespaces of daemons (the fusermount channel).
    /// Removed with the directory.
    pub fn shared_dir(mut self) -> Self {
        self.shared = true;
        self
    }

    pub fn dirs_owned_by(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }

    /// How long `mount()` waits (default [`MOUNT_TIMEOUT`]).
    pub fn mount_timeout(mut self, t: Duration) -> Self {
        self.mount_timeout = t;
        self
    }

    /// The mode this builder will use (after `FUSEPROXY_TEST_MODE`).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Spawns the process without waiting for the mount.
    pub fn start(&self) -> Mount {
        require_root_and_fuse();
        let tmp = tempfile::Builder::new()
            .prefix("fuseproxy-test.")
            .tempdir()
            .expect("create a temporary directory");
        let dir = tmp.path().to_owned();
        let mnt = dir.join("mnt");
        let backing = dir.join("backing");
        for d in [&dir, &mnt, &backing] {
            fs::create_dir_all(d).expect("create test directories");
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        }
        if self.shared {
            use nix::mount::{mount, MsFlags};
            mount(
                Some(&dir),
                &dir,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .expect("bind the test directory on itself");
            mount(
                None::<&str>,
                &dir,
                None::<&str>,
                MsFlags::MS_SHARED,
                None::<&str>,
            )
            .expect("make the test directory's bind mount shared");
        }
        if let Some((uid, gid)) = self.owner {
            for d in [&mnt, &backing] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).expect("chown");
            }
        }
        let sub = |a: &OsString| substitute(a, &dir, &mnt, &backing);
        let backend: Vec<OsString> = self.backend.iter().map(sub).collect();
        let (program, args): (OsString, Vec<OsString>) = match self.mode {
            Mode::Direct => {
                assert!(!backend.is_empty(), "empty backend command");
                (backend[0].clone(), backend[1..].to_vec())
            }
            Mode::Proxy => {
                // What the environment asks for comes first.
                let mut a: Vec<OsString> = Vec::new();
                if let Some(n) = self.effective_threads() {
                    a.push("--threads".into());
                    a.push(n.to_string().into());
                }
                if let Some(t) = self.effective_transport() {
                    a.push("--kernel-transport".into());
                    a.push(t.into());
                }
                let args = match &self.raw_proxy_args {
                    Some(raw) => {
                        a.extend(raw.iter().map(sub));
                        a
                    }
                    None => {
                        a.extend(self.proxy_args.iter().map(sub));
                        a.push(mnt.clone().into_os_string());
                        a.push("--".into());
                        a.extend(backend.iter().cloned());
                        a
                    }
                };
                let program = self
                    .program
                    .clone()
                    .unwrap_or_else(|| proxy_bin().into_os_string());
                (program, args)
            }
        };
        let log_path = dir.join("stderr.log");
        let out_path = dir.join("stdout.log");
        let stderr = fs::File::create(&log_path).expect("create stderr.log");
        let stdout = fs::File::create(&out_path).expect("create stdout.log");
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // A test run under systemd must not hand the proxy its
            // supervisor (SIGHUP would not stop it); tests that want one set it.
            .env_remove("NOTIFY_SOCKET");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program:?}: {e}"));
        let pid = child.id() as i32;
        let mut argv = vec![program];
        argv.extend(args);
        Mount {
            mode: self.mode,
            dir,
            mnt,
            backing,
            log_path,
            out_path,
            argv,
            pid,
            child: Some(child),
            status: None,
            tmp: Some(tmp),
            shared: self.shared,
        }
    }

    /// Spawns the process and waits (bounded) until the mount is live.
    /// Returns the guard, or the guard and a description of what went wrong.
    pub fn try_mount(&self) -> Result<Mount, Box<MountFailure>> {
        let mut m = self.start();
        let deadline = Instant::now() + self.mount_timeout;
        loop {
            if is_mounted(&m.mnt) {
                let left = deadline.saturating_duration_since(Instant::now());
                match stat_with_timeout(&m.mnt, left.max(POLL_INTERVAL)) {
                    // Still mounted after the stat: the stat was answered by
                    // the mount, not by the bare directory of one a failing
                    // process has just removed.
                    Some(Ok(_)) if is_mounted(&m.mnt) => {
                        return self.ring_settled(m, deadline);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) => {}
                    None => {
                        let msg = format!(
                            "{} is mounted but stat() did not return within {:?}",
                            m.mnt.display(),
                            self.mount_timeout
                        );
                        return Err(Box::new(MountFailure {
                            mount: m,
                            reason: msg,
                        }));
                    }
                }
            }
            if let Some(st) = m.exit_status() {
                let msg = format!("{:?} exited ({st}) before the mount was live", m.argv);
                return Err(Box::new(MountFailure {
                    mount: m,
                    reason: msg,
                }));
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "{} not mounted within {:?} by {:?}",
                    m.mnt.display(),
                    self.mount_timeout,
                    m.argv
                );
                return Err(Box::new(MountFailure {
                    mount: m,
                    reason: msg,
                }));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// With the io_uring transport added, the mount is live once the proxy
    /// has set its rings up or said why not: until then requests come
    /// through read(2) while the queue threads set up (and allocate), which
    /// a test counting allocations or ring requests would see.
    fn ring_settled(&self, m: Mount, deadline: Instant) -> Result<Mount, Box<MountFailure>> {
        if self.effective_transport() != Some("uring") {
            return Ok(m);
        }
        let settled = |log: &str| {
            log.contains("FUSE-over-io_uring: ")
                || log.contains("FUSE-over-io_uring not used")
                || log.contains("io_uring the kernel was told to use")
        };
        if wait_until(deadline.saturating_duration_since(Instant::now()), || {
            settled(&m.proxy_log())
        }) {
            return Ok(m);
        }
        let reason = format!(
            "{} is mounted but the proxy did not say within {:?} whether it serves \
             FUSE-over-io_uring",
            m.mnt.display(),
            self.mount_timeout
        );
        Err(Box::new(MountFailure { mount: m, reason }))
    }

    /// Like [`try_mount`](Self::try_mount) but panics, with the log, on
    /// failure.
    pub fn mount(&self) -> Mount {
        match self.try_mount() {
            Ok(m) => m,
            Err(f) => {
                let log = f.mount.proxy_log();
                panic!("{}\n--- stderr of {:?} ---\n{log}", f.reason, f.mount.argv);
            }
        }
    }
}

/// What [`MountBuilder::try_mount`] returns when the mount did not come up.
pub struct MountFailure {
    /// The guard: the process may still run (or have exited: see
    /// `exit_status`), and dropping it cleans up as usual.
    pub mount: Mount,
    pub reason: String,
}

/// A running mount (or attempt); cleans everything up on drop.
pub struct Mount {
    mode: Mode,
    dir: PathBuf,
    mnt: PathBuf,
    backing: PathBuf,
    log_path: PathBuf,
    out_path: PathBuf,
    argv: Vec<OsString>,
    pid: i32,
    child: Option<Child>,
    status: Option<ExitStatus>,
    tmp: Option<tempfile::TempDir>,
    /// `dir` is a shared bind mount of itself ([`MountBuilder::shared_dir`]).
    shared: bool,
}

impl Mount {
    /// A user's `umount`, then the proxy's exit, which must be status 0
    /// (bounded waits); returns the proxy's log.
    pub fn umount_and_exit(&mut self) -> String {
        let st = self.umount().expect("umount did not return");
        assert!(st.success(), "umount {}: {st}", self.mountpoint().display());
        let st = self
            .wait_exit(Duration::from_secs(20))
            .expect("the proxy did not exit after umount");
        let log = self.proxy_log();
        assert!(st.success(), "proxy: {st}\n{log}");
        log
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn mountpoint(&self) -> &Path {
        &self.mnt
    }
    pub fn backing(&self) -> &Path {
        &self.backing
    }
    /// The temporary directory holding mnt/, backing/ and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `mountpoint().join(rel)`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }
    /// `backing().join(rel)`.
    pub fn backing_path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.backing.join(rel)
    }
    /// Pid of the process the harness started (fuseproxy, or the backend in
    /// Direct mode).
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// The argv the harness ran.
    pub fn argv(&self) -> &[OsString] {
        &self.argv
    }
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    /// Everything the child wrote to stderr so far.
    pub fn proxy_log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log_path) {
            let mut b = Vec::new();
            let _ = f.read_to_end(&mut b);
            s = String::from_utf8_lossy(&b).into_owned();
        }
        s
    }
    /// Everything the child wrote to stdout so far.
    pub fn stdout_log(&self) -> String {
        fs::read(&self.out_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
    /// Waits (bounded) until `proxy_log()` contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.proxy_log().contains(needle))
    }
    /// Sends `sig` to the child (unless it was already reaped).
    pub fn send_signal(&mut self, sig: Signal) -> nix::Result<()> {
        if self.exit_status().is_some() {
            return Err(nix::errno::Errno::ESRCH);
        }
        send_signal(self.pid, sig)
    }
    /// The child's exit status if it has exited (non-blocking).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.status = Some(st);
                }
            }
        }
        self.status
    }
    /// Waits (bounded) for the child to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_until(timeout, || self.exit_status().is_some());
        self.status
    }
    /// Is the mountpoint a FUSE mount (mountinfo only)?
    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mnt)
    }
    /// The mountinfo entry of the mountpoint.
    pub fn mount_info(&self) -> Option<MountInfo> {
        mount_info(&self.mnt)
    }
    pub fn wait_mounted(&self, timeout: Duration) -> bool {
        wait_until(timeout, || is_mounted_and_live(&self.mnt))
    }
    pub fn wait_unmounted(&self, timeout: Duration) -> bool {
        wait_until(timeout, || !is_mounted(&self.mnt))
    }
    /// Ends the mount the way its user would and waits for the process,
    /// each step within `bound`: the proxy gets SIGTERM and must exit 0 (it
    /// flushes pending times before DESTROY); a direct mount gets `umount`.
    /// Returns the proxy's last stats line (empty for a direct mount).
    pub fn end_as_its_user(&mut self, bound: Duration) -> String {
        match self.mode() {
            Mode::Proxy => {
                self.send_signal(Signal::SIGTERM)
                    .expect("SIGTERM to the proxy");
                let st = self.wait_exit(bound).unwrap_or_else(|| {
                    panic!("the proxy did not exit within {bound:?} of SIGTERM")
                });
                assert_eq!(
                    st.code(),
                    Some(0),
                    "proxy exit status {st}; log:\n{}",
                    self.proxy_log()
                );
            }
            Mode::Direct => {
                let st = self.umount().expect("umount did not return");
                assert!(st.success(), "umount {}: {st}", self.mnt.display());
                self.wait_exit(bound).unwrap_or_else(|| {
                    panic!("the backend did not exit within {bound:?} of umount")
                });
            }
        }
        assert!(
            self.wait_unmounted(bound),
            "{} still mounted",
            self.mnt.display()
        );
        stats::stats_lines(&self.proxy_log())
            .pop()
            .unwrap_or_default()
    }

    /// A user's `umount MOUNTPOINT` (util-linux), bounded; its exit status.
    pub fn umount(&self) -> Option<ExitStatus> {
        run_bounded(Command::new("umount").arg(&self.mnt), MOUNT_TIMEOUT).map(|o| o.0)
    }
    /// Live descendants of the child (the proxy's backend ...).
    pub fn descendants(&self) -> Vec<ProcId> {
        descendants(self.pid)
    }

    /// Unmounts (lazily) and stops the child and its descendants.
    fn stop(&mut self) {
        let kids = descendants(self.pid);
        // Lazy unmount first: it aborts an idle connection, so the daemon's
        // read fails and it exits. Stacked mounts are peeled one by one.
        for _ in 0..8 {
            if mount_info(&self.mnt).is_none() {
                break;
            }
            if nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
        if self.exit_status().is_none() {
            let _ = send_signal(self.pid, Signal::SIGTERM);
            if self.wait_exit(KILL_TIMEOUT).is_none() {
                let _ = send_signal(self.pid, Signal::SIGKILL);
                if self.wait_exit(KILL_TIMEOUT).is_none() {
                    eprintln!("harness: pid {} survived SIGKILL", self.pid);
                }
            }
        }
        // A backend notices the proxy's end closing and exits by itself;
        // give it a moment, then make sure.
        wait_until(Duration::from_secs(2), || {
            kids.iter().all(|k| !k.is_alive() || is_zombie(k.pid))
        });
        for k in &kids {
            if !is_zombie(k.pid) {
                k.signal(Signal::SIGKILL);
            }
        }
    }

    /// Removes the temporary directory, unless something is still mounted
    /// on the mountpoint (then it is left in place and reported).
    fn remove_dir(&mut self) {
        let Some(t) = self.tmp.take() else { return };
        if self.shared && mount_info(&self.mnt).is_none() {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
        if mount_info(&self.mnt).is_some() {
            eprintln!(
                "harness: {} is still mounted; leaving {} in place",
                self.mnt.display(),
                self.dir.display()
            );
            let _ = t.keep();
        } else if let Err(e) = t.close() {
            eprintln!("harness: removing {}: {e}", self.dir.display());
        }
    }
}

/// Is `pid` a zombie (exited, not yet reaped by its parent)?
fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s[s.rfind(')')? + 2..].starts_with('Z')))
        .unwrap_or(false)
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of {:?} (exit status {:?}) ---\n{}--- end of stderr ---",
                self.argv,
                self.status,
                self.proxy_log()
            );
        }
        self.remove_dir();
    }
}

/// Runs `cmd` with stdout/stderr captured; kills it after `timeout`.
/// Returns (status, stdout, stderr), or `None` on timeout.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Option<(ExitStatus, String, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_p = dir.path().join("out");
    let err_p = dir.path().join("err");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_p).expect("create out"))
        .stderr(fs::File::create(&err_p).expect("create err"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    Some((status, read(&out_p), read(&err_p)))
}

/// Runs `fuseproxy ARGS...` to completion (bounded by `timeout`; killed
/// after it). Returns (status, stdout, stderr), or `None` on timeout. For
/// command-line tests that never mount anything.
pub fn run_proxy<I, S>(args: I, timeout: Duration) -> Option<(ExitStatus, String, String)>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_bounded(Command::new(proxy_bin()).args(args), timeout)
}

/// Whether every thread of `pid` is stopped (state T): SIGSTOP is delivered
/// asynchronously, and a backend thread may still serve a request or two.
pub fn all_threads_stopped(pid: i32) -> bool {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    rd.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| s[s.rfind(')')? + 2..].chars().next())
            == Some('T')
    })
}

/// Whether `program` is on PATH; says SKIPPED and why when it is not.
pub fn installed(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: {program} is not installed (Debian package; see scripts/setup.sh)");
    }
    found
}

/// libfuse's `notify_inval_entry` example through the proxy: it sends an
/// INVAL_ENTRY notification every second from a thread of its own.
pub fn notify_inval_entry_mount() -> Mount {
    notify_inval_entry().mount()
}

/// [`notify_inval_entry_mount`]'s builder, for tests that add proxy options.
pub fn notify_inval_entry() -> MountBuilder {
    let example = build_example("notify_inval_entry");
    MountBuilder::new(
        Mode::Proxy,
        [
            example.to_str().unwrap(),
            "-f",
            "--update-interval=1",
            "--timeout=30",
            "{mnt}",
        ],
    )
}
