//! Stress: eight callers at once through fuseproxy over libfuse's
//! passthrough_ll (`-o cache=never`: entry and attribute timeouts 0 and
//! direct I/O, so every call reaches the backend), default `--times async`,
//! while the test stops the backend (SIGSTOP) for 300 ms and resumes it
//! (SIGCONT), five times.
//!
//! Each caller works in its own subdirectory `cN` with a seeded random mix:
//! create a file and write it (content from the seed), write at a random
//! offset, rename (to a new name, or over another of its files), set
//! explicit atime/mtime with utimensat (both, or one with UTIME_OMIT for the
//! other: each value used once, so a lost or reordered update shows), by
//! path or with futimens on a descriptor it keeps open, and stat. Each
//! caller keeps a model of its directory: names, contents, and the times it
//! set last (or, after a write, the window in which the backend's clock
//! stamped the mtime, pinned to what the first stat through the mount
//! showed). Every stat through the mount is checked against the model.
//!
//! The stops are timed by progress, not by the clock: each comes once every
//! caller has completed 100 more calls since the last resume (which proves
//! the mount works again after SIGCONT). While the backend is stopped the
//! callers block within a millisecond or so (expected: with timeouts 0 even
//! a utimensat by path first revalidates the path with a LOOKUP); so in
//! Proxy mode the test itself calls futimens on a probe file it holds open,
//! once per stop, and that must return within 5 s with the backend stopped
//! (the proxy answers it); the backend's threads must still all be stopped
//! at the end of each stop.
//!
//! At the end: SIGTERM to the proxy (it flushes the pending times and must
//! exit 0, its final stats showing time updates acknowledged locally, none
//! pending, no flush errors, every time-only SETATTR either acknowledged or
//! forwarded); then the BACKING directory must match the models exactly: no
//! extra or missing file, every content byte, and exactly the last explicit
//! atime/mtime set on each file. Differences seen through the mount while
//! the callers ran are reported together with the backing directory's, each
//! with the file's history, and a time this test set says whose it is.
//!
//! Run with `--threads 1` and `--threads 4` (`MountBuilder::threads`), one
//! test at a time. `FUSEPROXY_STRESS_SEED=N` replaces the seeds (printed by
//! each run). `FUSEPROXY_TEST_MODE=direct` runs the same workload on a
//! direct mount (the checks that need the proxy are skipped): a failure
//! there is the workload's, not the proxy's.

mod common;

use common::clock::{atime_of, mtime_of, show, time_ceiling, time_floor, Ts};

use common::policy::{passthrough_backend, ContOnDrop};
use common::stats::stat_field;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::sys::{self, ts};
use common::tree::{self, Digest};
use common::{wait_until, Mode, Mount, MountBuilder, ProcId, Signal};

/// Parallel callers, one subdirectory each.
const CALLERS: usize = 8;
/// How many times the backend is stopped and resumed.
const STOPS: usize = 5;
/// How long each stop lasts (the one deliberate sleep of the test).
const STOP_FOR: Duration = Duration::from_millis(300);
/// Calls each caller completes before the first stop, between stops, and
/// after the last resume.
const CALLS_BETWEEN: usize = 100;
/// Files a caller keeps at most (beyond, a create becomes a rename over
/// another file).
const MAX_FILES: usize = 40;
/// Largest first content and largest write.
const MAX_CREATE: u64 = 16 * 1024;
const MAX_WRITE: u64 = 8 * 1024;
/// Bound of each wait for the callers' progress.
const PROGRESS_BOUND: Duration = Duration::from_secs(30);
/// Bound of the probe's futimens with the backend stopped.
const PROBE_BOUND: Duration = Duration::from_secs(5);
/// How long an unmount and the process's exit may take.
const EXIT_BOUND: Duration = Duration::from_secs(15);
/// Failures a caller records before it stops.
const MAX_FAILURES: usize = 20;
/// Seconds of the times caller C's K-th update sets: BASE + C * 10^7 + K
/// (each value used once); the probe's K-th: PROBE_* + K.
const ATIME_BASE: i64 = 1_600_000_000;
const MTIME_BASE: i64 = 1_200_000_000;
const PROBE_ATIME: i64 = 1_700_000_000;
const PROBE_MTIME: i64 = 1_300_000_000;

static SERIAL: Mutex<()> = Mutex::new(());

/// The tests of this file run one at a time: a stopped backend hangs the
/// close of any file open on it, including the close-on-exec ones an exec
/// of another test's proxy would close; and two stress runs on two CPUs
/// would each measure the other.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Times.

/// Where a time this test sets comes from (see `Caller::touch` and the
/// probe), to tell at a glance a time of another file from a stale one.
fn origin(t: Ts) -> String {
    let per_caller = 10_000_000;
    let limit = CALLERS as i64 * per_caller;
    for (base, field) in [(ATIME_BASE, "atime"), (MTIME_BASE, "mtime")] {
        if (base..base + limit).contains(&t.0) {
            let (c, k) = ((t.0 - base) / per_caller, (t.0 - base) % per_caller);
            return format!(" (the {field} of caller {c}'s time update {k})");
        }
    }
    for (base, field) in [(PROBE_ATIME, "atime"), (PROBE_MTIME, "mtime")] {
        if (base..base + STOPS as i64).contains(&t.0) {
            return format!(" (the probe's {field} {})", t.0 - base);
        }
    }
    String::new()
}

/// `show(t)` and where it comes from.
fn shown(t: Ts) -> String {
    format!("{}{}", show(t), origin(t))
}

/// What one time field of a file must be.
#[derive(Clone, Copy, Debug)]
enum Field {
    /// Set explicitly by the caller.
    Exact(Ts),
    /// Stamped by a clock during a call that ran between `lo` and `hi`;
    /// `seen` is what the mount first showed, which must not change after.
    Clock { lo: Ts, hi: Ts, seen: Option<Ts> },
}

impl Field {
    fn clock(lo: Ts, hi: Ts) -> Field {
        Field::Clock { lo, hi, seen: None }
    }

    /// Checks what the mount shows, pinning a clock value at first sight.
    fn observe(&mut self, got: Ts) -> Result<(), String> {
        match self {
            Field::Exact(t) if got == *t => Ok(()),
            Field::Exact(t) => Err(format!("{} instead of {}", shown(got), show(*t))),
            Field::Clock { seen: Some(s), .. } if got == *s => Ok(()),
            Field::Clock { seen: Some(s), .. } => Err(format!(
                "{} after the mount showed {}",
                shown(got),
                show(*s)
            )),
            Field::Clock { lo, hi, seen } => {
                if *lo <= got && got <= *hi {
                    *seen = Some(got);
                    Ok(())
                } else {
                    Err(format!(
                        "{} outside [{}, {}], when the call ran",
                        shown(got),
                        show(*lo),
                        show(*hi)
                    ))
                }
            }
        }
    }

    /// Checks the backing file after unmount.
    fn settled(&self, got: Ts) -> Result<(), String> {
        match *self {
            Field::Exact(t) | Field::Clock { seen: Some(t), .. } if got == t => Ok(()),
            Field::Exact(t) => Err(format!("{} instead of {}", shown(got), show(t))),
            Field::Clock { seen: Some(t), .. } => Err(format!(
                "{} in the backing file, the mount showed {}",
                shown(got),
                show(t)
            )),
            Field::Clock { lo, hi, seen: None } if lo <= got && got <= hi => Ok(()),
            Field::Clock { lo, hi, .. } => Err(format!(
                "{} outside [{}, {}], when the call ran",
                shown(got),
                show(lo),
                show(hi)
            )),
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Field::Exact(t) => write!(f, "{}", show(t)),
            Field::Clock { seen: Some(t), .. } => write!(f, "clock, seen {}", show(t)),
            Field::Clock { lo, hi, seen: None } => {
                write!(f, "clock in [{}, {}]", show(lo), show(hi))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The callers.

/// splitmix64: a small deterministic generator (no dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// What the test and the callers share.
struct Shared {
    /// Set when the callers must finish.
    stop: AtomicBool,
    /// Calls completed by each caller.
    calls: Vec<AtomicUsize>,
    /// Set by a caller when it has returned (finished or failed).
    exited: Vec<AtomicBool>,
}

/// Sets the callers' stop flag when dropped: a failing test must not leave
/// them running against a bare mountpoint. Declared after the `Mount`.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// One file of a caller's model.
struct File {
    content: Vec<u8>,
    atime: Field,
    mtime: Field,
    /// A descriptor the caller keeps open (O_RDWR) on the file.
    fd: Option<OwnedFd>,
    /// The calls made on the file, to explain a difference.
    history: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    creates: usize,
    writes: usize,
    renames: usize,
    renames_over: usize,
    touches: usize,
    touches_fd: usize,
    stats: usize,
}

/// What a caller hands back.
struct Report {
    id: usize,
    seed: u64,
    files: BTreeMap<String, File>,
    counts: Counts,
    failures: Vec<String>,
}

struct Caller {
    id: usize,
    seed: u64,
    dir: PathBuf,
    rng: Rng,
    files: BTreeMap<String, File>,
    next_name: u64,
    calls: usize,
    counts: Counts,
    failures: Vec<String>,
}

/// pwrite of all of `data` at `off`.
fn pwrite_all(fd: &OwnedFd, data: &[u8], off: usize) -> Result<(), String> {
    let mut done = 0;
    while done < data.len() {
        match sys::pwrite(fd, &data[done..], (off + done) as i64) {
            Ok(0) => return Err(format!("pwrite at {} returned 0", off + done)),
            Ok(n) => done += n,
            Err(e) => return Err(format!("pwrite at {}: {e}", off + done)),
        }
    }
    Ok(())
}

impl Caller {
    fn new(id: usize, seed: u64, dir: PathBuf) -> Self {
        Caller {
            id,
            seed,
            dir,
            rng: Rng(seed),
            files: BTreeMap::new(),
            next_name: 0,
            calls: 0,
            counts: Counts::default(),
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, what: String) {
        self.failures
            .push(format!("caller {} (seed {}): {what}", self.id, self.seed));
    }

    /// A random name of the model.
    fn pick(&mut self) -> String {
        let i = self.rng.below(self.files.len() as u64) as usize;
        self.files.keys().nth(i).cloned().expect("a file")
    }

    fn fresh_name(&mut self, prefix: char) -> String {
        self.next_name += 1;
        format!("{prefix}{:05}", self.next_name)
    }

    fn run(mut self, shared: &Shared) -> Report {
        while !shared.stop.load(Ordering::SeqCst) && self.failures.len() < MAX_FAILURES {
            if let Err(e) = self.step() {
                // The model no longer says what the directory holds.
                self.fail(format!("call #{}: {e}", self.calls));
                break;
            }
            self.calls += 1;
            shared.calls[self.id].fetch_add(1, Ordering::SeqCst);
        }
        // Close the kept descriptors (FLUSH, RELEASE) before reporting: the
        // mount must be idle when the test ends it.
        let held: Vec<(String, OwnedFd)> = self
            .files
            .iter_mut()
            .filter_map(|(n, f)| f.fd.take().map(|fd| (n.clone(), fd)))
            .collect();
        for (n, fd) in held {
            if let Err(e) = sys::close(fd) {
                self.fail(format!("close {n}: {e}"));
            }
        }
        Report {
            id: self.id,
            seed: self.seed,
            files: self.files,
            counts: self.counts,
            failures: self.failures,
        }
    }

    /// One call; what went wrong with a call that changes the directory
    /// (a stat's differences are recorded as failures by `stat`).
    fn step(&mut self) -> Result<(), String> {
        let r = self.rng.below(100);
        if self.files.is_empty() || r < 15 {
            if self.files.len() >= MAX_FILES {
                self.rename(true)
            } else {
                self.create()
            }
        } else if r < 35 {
            self.write()
        } else if r < 50 {
            let over = self.files.len() >= 2 && self.rng.one_in(3);
            self.rename(over)
        } else if r < 80 {
            self.touch()
        } else {
            self.stat();
            Ok(())
        }
    }

    fn create(&mut self) -> Result<(), String> {
        let name = self.fresh_name('f');
        let len = self.rng.below(MAX_CREATE + 1) as usize;
        let content = tree::pattern(self.rng.next(), len);
        let keep = self.rng.one_in(2);
        let p = self.dir.join(&name);
        let lo = time_floor();
        let fd = sys::open(&p, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o644)
            .map_err(|e| format!("create {name}: {e}"))?;
        pwrite_all(&fd, &content, 0).map_err(|e| format!("create {name}: {e}"))?;
        let fd = if keep {
            Some(fd)
        } else {
            sys::close(fd).map_err(|e| format!("close {name}: {e}"))?;
            None
        };
        let hi = time_ceiling();
        self.counts.creates += 1;
        let history = vec![format!(
            "#{} create {len} bytes{}",
            self.calls,
            if keep { ", kept open" } else { "" }
        )];
        self.files.insert(
            name,
            File {
                content,
                atime: Field::clock(lo, hi),
                mtime: Field::clock(lo, hi),
                fd,
                history,
            },
        );
        Ok(())
    }

    fn write(&mut self) -> Result<(), String> {
        let name = self.pick();
        let size = self.files[&name].content.len() as u64;
        let off = self.rng.below(size + 1) as usize;
        let len = 1 + self.rng.below(MAX_WRITE) as usize;
        let data = tree::pattern(self.rng.next(), len);
        let p = self.dir.join(&name);
        let f = self.files.get_mut(&name).expect("picked");
        let lo = time_floor();
        match &f.fd {
            Some(fd) => pwrite_all(fd, &data, off),
            None => {
                let fd = sys::open(&p, libc::O_WRONLY, 0).map_err(|e| format!("open: {e}"))?;
                pwrite_all(&fd, &data, off)?;
                sys::close(fd).map_err(|e| format!("close: {e}"))
            }
        }
        .map_err(|e| format!("write {len} bytes at {off} of {name}: {e}"))?;
        let hi = time_ceiling();
        if f.content.len() < off + len {
            f.content.resize(off + len, 0);
        }
        f.content[off..off + len].copy_from_slice(&data);
        f.mtime = Field::clock(lo, hi);
        f.history.push(format!(
            "#{} write {len} bytes at {off}{}",
            self.calls,
            if f.fd.is_some() { " (kept fd)" } else { "" }
        ));
        self.counts.writes += 1;
        Ok(())
    }

    fn rename(&mut self, over: bool) -> Result<(), String> {
        let from = self.pick();
        let to = if over {
            loop {
                let t = self.pick();
                if t != from {
                    break t;
                }
            }
        } else {
            self.fresh_name('r')
        };
        sys::rename(&self.dir.join(&from), &self.dir.join(&to))
            .map_err(|e| format!("rename {from} -> {to}: {e}"))?;
        let mut f = self.files.remove(&from).expect("picked");
        if let Some(victim) = self.files.remove(&to) {
            if let Some(fd) = victim.fd {
                sys::close(fd).map_err(|e| format!("close {to}, replaced by {from}: {e}"))?;
            }
            self.counts.renames_over += 1;
        }
        f.history.push(format!(
            "#{} rename {from} -> {to}{}",
            self.calls,
            if over { " (over it)" } else { "" }
        ));
        self.files.insert(to, f);
        self.counts.renames += 1;
        Ok(())
    }

    fn touch(&mut self) -> Result<(), String> {
        let name = self.pick();
        // Every value is used once: seconds count the caller's touches.
        let k = self.counts.touches as i64;
        let id = self.id as i64;
        let a: Ts = (
            ATIME_BASE + id * 10_000_000 + k,
            self.rng.below(1_000_000_000) as i64,
        );
        let m: Ts = (
            MTIME_BASE + id * 10_000_000 + k,
            self.rng.below(1_000_000_000) as i64,
        );
        let (set_a, set_m) = match self.rng.below(100) {
            0..=69 => (true, true),
            70..=84 => (true, false),
            _ => (false, true),
        };
        let spec = |set: bool, t: Ts| {
            if set {
                ts(t.0, t.1)
            } else {
                ts(0, libc::UTIME_OMIT)
            }
        };
        let p = self.dir.join(&name);
        let by_fd = self.files[&name].fd.is_some() && self.rng.one_in(2);
        let f = self.files.get_mut(&name).expect("picked");
        let r = match (&f.fd, by_fd) {
            (Some(fd), true) => sys::futimens(fd, spec(set_a, a), spec(set_m, m)),
            _ => sys::utimensat(&p, spec(set_a, a), spec(set_m, m), 0),
        };
        let what = format!(
            "{} atime {} mtime {}",
            if by_fd { "futimens" } else { "utimensat" },
            if set_a { show(a) } else { "OMIT".into() },
            if set_m { show(m) } else { "OMIT".into() },
        );
        r.map_err(|e| format!("{what} on {name}: {e}"))?;
        if set_a {
            f.atime = Field::Exact(a);
        }
        if set_m {
            f.mtime = Field::Exact(m);
        }
        f.history.push(format!("#{} {what}", self.calls));
        self.counts.touches += 1;
        if by_fd {
            self.counts.touches_fd += 1;
        }
        Ok(())
    }

    /// stat through the mount: size and times as the model says. A
    /// difference is recorded; the model is unchanged by it.
    fn stat(&mut self) {
        let name = self.pick();
        self.counts.stats += 1;
        let call = self.calls;
        let st = match sys::stat(&self.dir.join(&name)) {
            Ok(st) => st,
            Err(e) => return self.fail(format!("call #{call}: stat {name}: {e}")),
        };
        let f = self.files.get_mut(&name).expect("picked");
        let mut bad = Vec::new();
        if st.st_size as usize != f.content.len() {
            bad.push(format!(
                "size {} instead of {}",
                st.st_size,
                f.content.len()
            ));
        }
        if let Err(e) = f.atime.observe(atime_of(&st)) {
            bad.push(format!("atime {e}"));
        }
        if let Err(e) = f.mtime.observe(mtime_of(&st)) {
            bad.push(format!("mtime {e}"));
        }
        f.history.push(format!("#{call} stat"));
        if !bad.is_empty() {
            let history = f.history.join("; ");
            self.fail(format!(
                "call #{call}: stat {name} through the mount: {}; history: {history}",
                bad.join(", ")
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// The test.

/// The backend to stop: the proxy's passthrough_ll, or on a direct mount
/// the process the harness started.
fn backend_of(m: &Mount) -> ProcId {
    match m.mode() {
        Mode::Proxy => passthrough_backend(m),
        Mode::Direct => common::descendants(std::process::id() as i32)
            .into_iter()
            .find(|p| p.pid == m.pid())
            .unwrap_or_else(|| panic!("the backend {} is not our child", m.pid())),
    }
}

/// Waits (bounded) until every caller has completed `n` calls since
/// `marks`, or one of them has returned. Returns the new marks, or panics.
fn wait_progress(shared: &Shared, marks: &[usize], n: usize, what: &str) -> Vec<usize> {
    let calls = || -> Vec<usize> {
        shared
            .calls
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    };
    let ok = wait_until(PROGRESS_BOUND, || {
        calls()
            .iter()
            .zip(marks)
            .enumerate()
            .all(|(i, (c, m))| c - m >= n || shared.exited[i].load(Ordering::SeqCst))
    });
    let now = calls();
    assert!(
        ok,
        "{what}: not every caller completed {n} calls within {PROGRESS_BOUND:?}: \
         calls so far {now:?}, at the last mark {marks:?}"
    );
    now
}

/// Compares one backing directory with a model; the differences.
fn compare_backing(dir: &Path, files: &BTreeMap<String, File>, label: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let on_disk: BTreeSet<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("readdir")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(e) => return vec![format!("{label}: read_dir {}: {e}", dir.display())],
    };
    let model: BTreeSet<String> = files.keys().cloned().collect();
    for extra in on_disk.difference(&model) {
        bad.push(format!(
            "{label}/{extra}: in the backing directory, not in the model"
        ));
    }
    for (name, f) in files {
        if !on_disk.contains(name) {
            bad.push(format!(
                "{label}/{name}: missing from the backing directory; history: {}",
                f.history.join("; ")
            ));
            continue;
        }
        let p = dir.join(name);
        // Times first: reading the content must not touch them (and it
        // opens with O_NOATIME anyway).
        let st = match sys::lstat(&p) {
            Ok(st) => st,
            Err(e) => {
                bad.push(format!("{label}/{name}: lstat: {e}"));
                continue;
            }
        };
        let mut diffs = Vec::new();
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            diffs.push(format!("mode {:o}, not a regular file", st.st_mode));
        }
        if st.st_size as usize != f.content.len() {
            diffs.push(format!(
                "size {} instead of {}",
                st.st_size,
                f.content.len()
            ));
        }
        if let Err(e) = f.atime.settled(atime_of(&st)) {
            diffs.push(format!("atime {e}"));
        }
        if let Err(e) = f.mtime.settled(mtime_of(&st)) {
            diffs.push(format!("mtime {e}"));
        }
        match sys::open(&p, libc::O_RDONLY | libc::O_NOATIME, 0)
            .and_then(|fd| sys::read_to_end(&fd))
        {
            Ok(b) if b == f.content => {}
            Ok(b) => {
                let at = b
                    .iter()
                    .zip(&f.content)
                    .position(|(x, y)| x != y)
                    .unwrap_or(b.len().min(f.content.len()));
                diffs.push(format!(
                    "content {:?} instead of {:?}, first difference at byte {at}",
                    Digest::of(&b),
                    Digest::of(&f.content)
                ));
            }
            Err(e) => diffs.push(format!("read: {e}")),
        }
        if !diffs.is_empty() {
            bad.push(format!(
                "{label}/{name}: {} (expected atime {}, mtime {}); history: {}",
                diffs.join(", "),
                f.atime,
                f.mtime,
                f.history.join("; ")
            ));
        }
    }
    bad
}

/// The base seed of a run: `FUSEPROXY_STRESS_SEED`, or one per thread
/// count.
fn base_seed(threads: u32) -> u64 {
    match std::env::var("FUSEPROXY_STRESS_SEED") {
        Ok(s) if !s.is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("FUSEPROXY_STRESS_SEED={s:?}: expected a number")),
        _ => 0x5EED_0000 + u64::from(threads),
    }
}

fn stress(threads: u32) {
    let _serial = serial();
    let started = Instant::now();
    let seed = base_seed(threads);
    let builder = MountBuilder::passthrough(Mode::Proxy, &["-o", "cache=never"]).threads(threads);
    let mut m = builder.mount();
    let proxy = m.mode() == Mode::Proxy;
    let label = if proxy {
        format!("--threads {threads}")
    } else {
        "direct mount (FUSEPROXY_TEST_MODE=direct)".to_string()
    };
    if proxy {
        let argv: Vec<String> = m
            .argv()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            argv.windows(2)
                .any(|w| w[0] == "--threads" && w[1] == threads.to_string()),
            "{label}: the proxy was not given --threads {threads}: {argv:?}"
        );
    }
    eprintln!("stress {label}: seed {seed}, {CALLERS} callers, {STOPS} stops of {STOP_FOR:?}");

    for i in 0..CALLERS {
        fs::create_dir(m.path(format!("c{i}"))).expect("mkdir through the mount");
    }
    fs::create_dir(m.path("probe")).expect("mkdir probe");
    let probe_path = m.path("probe/p");
    let probe = Arc::new(
        sys::open(
            &probe_path,
            libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
            0o644,
        )
        .expect("create the probe file"),
    );
    let mut probe_times: Option<(Ts, Ts)> = None;
    let backend = backend_of(&m);

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        calls: (0..CALLERS).map(|_| AtomicUsize::new(0)).collect(),
        exited: (0..CALLERS).map(|_| AtomicBool::new(false)).collect(),
    });
    let _stop_callers = StopOnDrop(Arc::clone(&shared));
    let (tx, rx) = mpsc::channel::<Report>();
    let workers: Vec<_> = (0..CALLERS)
        .map(|i| {
            let caller = Caller::new(
                i,
                seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
                m.path(format!("c{i}")),
            );
            let shared = Arc::clone(&shared);
            let tx = tx.clone();
            std::thread::spawn(move || {
                let report = caller.run(&shared);
                shared.exited[i].store(true, Ordering::SeqCst);
                let _ = tx.send(report);
            })
        })
        .collect();
    drop(tx);

    let mut marks = wait_progress(
        &shared,
        &[0; CALLERS],
        CALLS_BETWEEN,
        &format!("{label}: before the first stop"),
    );
    let mut probes = 0usize;
    let mut stopped_for = Vec::new();
    for cycle in 0..STOPS {
        if shared.exited.iter().any(|e| e.load(Ordering::SeqCst)) {
            break;
        }
        assert!(backend.is_alive(), "{label}: the backend is gone");
        backend.signal(Signal::SIGSTOP);
        // SIGCONT on every way out of this block, panics included.
        let cont = ContOnDrop(backend);
        assert!(
            wait_until(Duration::from_secs(5), || common::all_threads_stopped(
                backend.pid
            )),
            "{label}: the backend's threads did not all stop within 5 s"
        );
        let stopped = Instant::now();
        if proxy {
            // The proxy answers a time update itself: it returns with the
            // backend stopped.
            let k = cycle as i64;
            let t = ((PROBE_ATIME + k, 100 + k), (PROBE_MTIME + k, 200 + k));
            let fd = Arc::clone(&probe);
            let (ptx, prx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = ptx.send(sys::futimens(&fd, ts(t.0 .0, t.0 .1), ts(t.1 .0, t.1 .1)));
            });
            match prx.recv_timeout(PROBE_BOUND) {
                Ok(Ok(())) => probe_times = Some(t),
                Ok(Err(e)) => panic!("{label}: stop {cycle}: futimens on the probe: {e}"),
                Err(_) => panic!(
                    "{label}: stop {cycle}: futimens on the probe did not return within \
                     {PROBE_BOUND:?} with the backend stopped"
                ),
            }
            probes += 1;
        }
        // The deliberate stop.
        std::thread::sleep(STOP_FOR.saturating_sub(stopped.elapsed()));
        assert!(
            common::all_threads_stopped(backend.pid),
            "{label}: stop {cycle}: a thread of the backend ran while it was stopped"
        );
        stopped_for.push(stopped.elapsed());
        drop(cont);
        marks = wait_progress(
            &shared,
            &marks,
            CALLS_BETWEEN,
            &format!("{label}: after SIGCONT {cycle}"),
        );
    }
    shared.stop.store(true, Ordering::SeqCst);

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reports: Vec<Report> = Vec::new();
    while reports.len() < CALLERS {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => reports.push(r),
            Err(_) => panic!(
                "{label}: {} of {CALLERS} callers did not finish within 60 s of the stop flag",
                CALLERS - reports.len()
            ),
        }
    }
    for w in workers {
        w.join().expect("caller thread");
    }
    reports.sort_by_key(|r| r.id);
    // Checked after the unmount, with the backing directory: a difference
    // seen through the mount and the state the backend was left in, side
    // by side.
    let failures: Vec<&String> = reports.iter().flat_map(|r| &r.failures).collect();
    // Closing the probe sends FLUSH and RELEASE: bounded like every call
    // that needs the backend.
    let probe = Arc::try_unwrap(probe).expect("no probe call left running");
    let (ctx, crx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = ctx.send(sys::close(probe));
    });
    match crx.recv_timeout(Duration::from_secs(10)) {
        Ok(r) => r.expect("close the probe file"),
        Err(_) => panic!("{label}: closing the probe file did not return within 10 s"),
    }
    let ran = started.elapsed();

    let unmounting = Instant::now();
    let last = m.end_as_its_user(EXIT_BOUND);
    let unmount_took = unmounting.elapsed();
    // Not a failure here (the exit status and the final state are what
    // this test checks), but worth seeing: the proxy's warnings, e.g. a
    // DESTROY it waited for in vain.
    let log = m.proxy_log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERRO "))
        .collect();
    if !warnings.is_empty() {
        eprintln!(
            "stress {label}: the proxy warned (unmount took {unmount_took:?}):\n  {}",
            warnings.join("\n  ")
        );
    }

    let mut total = Counts::default();
    for r in &reports {
        let c = r.counts;
        total.creates += c.creates;
        total.writes += c.writes;
        total.renames += c.renames;
        total.renames_over += c.renames_over;
        total.touches += c.touches;
        total.touches_fd += c.touches_fd;
        total.stats += c.stats;
    }
    eprintln!(
        "stress {label}: {} calls: {} creates, {} writes, {} renames ({} over a file), {} \
         time updates ({} by fd), {} stats; {probes} probes answered with the backend \
         stopped; stops {stopped_for:?}",
        marks.iter().sum::<usize>(),
        total.creates,
        total.writes,
        total.renames,
        total.renames_over,
        total.touches,
        total.touches_fd,
        total.stats
    );
    // The backing directory: exactly the models, plus the probe.
    let mut bad = Vec::new();
    let top: BTreeSet<String> = fs::read_dir(m.backing())
        .expect("read the backing directory")
        .map(|e| {
            e.expect("readdir")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let mut expected_top: BTreeSet<String> = (0..CALLERS).map(|i| format!("c{i}")).collect();
    expected_top.insert("probe".into());
    if top != expected_top {
        bad.push(format!(
            "top of the backing directory: {top:?}, expected {expected_top:?}"
        ));
    }
    for r in &reports {
        let label = format!("c{} (seed {})", r.id, r.seed);
        bad.extend(compare_backing(
            &m.backing_path(format!("c{}", r.id)),
            &r.files,
            &label,
        ));
    }
    if let Some((a, mt)) = probe_times {
        match sys::lstat(&m.backing_path("probe/p")) {
            Ok(st) if atime_of(&st) == a && mtime_of(&st) == mt => {}
            Ok(st) => bad.push(format!(
                "probe/p: atime {} mtime {}, expected {} {}",
                shown(atime_of(&st)),
                shown(mtime_of(&st)),
                show(a),
                show(mt)
            )),
            Err(e) => bad.push(format!("probe/p: {e}")),
        }
    }
    let files: usize = reports.iter().map(|r| r.files.len()).sum();
    let first = |v: &[&String]| {
        v.iter()
            .take(20)
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    };
    assert!(
        failures.is_empty() && bad.is_empty(),
        "{label} (seed {seed}): {} failures while the callers ran:\n  {}\n\
         and the backing directory differs from the model in {} places:\n  {}",
        failures.len(),
        first(&failures),
        bad.len(),
        first(&bad.iter().collect::<Vec<_>>()),
    );

    // The workload did what it is for.
    assert!(
        total.creates > 0
            && total.writes > 0
            && total.renames_over > 0
            && total.renames > total.renames_over
            && total.touches_fd > 0
            && total.touches > total.touches_fd
            && total.stats > 0,
        "{label}: some kind of call never ran: {total:?}"
    );

    if proxy {
        eprintln!("stress {label}: final {last}");
        assert!(!last.is_empty(), "no final stats line:\n{}", m.proxy_log());
        let f = |k: &str| stat_field(&last, k);
        assert!(
            f("times_acked") > 0,
            "{label}: no time update answered by the proxy: {last}"
        );
        // Every time-only SETATTR the kernel sent (one per utimensat and
        // futimens) was either answered by the proxy or forwarded.
        let updates = (total.touches + probes) as u64;
        assert_eq!(
            f("times_acked") + f("times_forwarded"),
            updates,
            "{label}: {updates} time updates made, the proxy counted otherwise: {last}"
        );
        for k in [
            "times_pending",
            "times_flush_errors",
            "answered_with_error",
            "bad_replies",
            "rejected_writes",
        ] {
            assert_eq!(f(k), 0, "{label}: {k} in {last}\n{}", m.proxy_log());
        }
    }
    eprintln!(
        "stress {label}: {files} files as the callers left them; workload {ran:?}, unmount \
         {unmount_took:?}, in all {:?}",
        started.elapsed()
    );
}

#[test]
fn stress_one_thread() {
    stress(1);
}

#[test]
fn stress_four_threads() {
    stress(4);
}
