//! Time-only SETATTR through fuseproxy, end to end, over libfuse's
//! passthrough_ll.
//!
//! - `same_times_as_a_direct_mount`: one sequence of utimensat (explicit,
//!   UTIME_OMIT, UTIME_NOW), `touch`, writes, mmap writes, closes, links and
//!   "write then set the times" (what tar, `cp -p` and rsync do) runs in
//!   lockstep on a direct mount and through the proxy, under four backend
//!   configurations (attribute timeout 0 or 3600 s, with and without
//!   writeback cache). After every call, `stat` through each mount must show
//!   the times (and size and link count) the call set; after both unmounts
//!   the backing files must hold exactly what the mount showed, and the two
//!   backing directories must agree (exactly for explicit times, within 2 s
//!   for times taken from a clock).
//! - `time_updates_return_while_the_backend_is_stopped`: the deadlock of the
//!   seed thread. With the backend SIGSTOPped, 1,000 utimensat calls on
//!   known files all return (the proxy answers them) and `stat` shows the new
//!   times; after SIGCONT and unmount every update is in the backing files.
//!   With `--times=forward` the same calls stay blocked until SIGCONT.
//! - `kernel_time_flush_is_answered_locally`: on a writeback-cache mount,
//!   the kernel's time flush at close never reaches the backend under a
//!   kernel unique; the proxy's own SETATTR (unique >= 2^62) does, before
//!   the FLUSH; LOOKUP, OPEN and FLUSH still arrive as the kernel sent them.
//!   A `--times=forward` run of the same steps shows the kernel's SETATTR.
//! - `fewer_setattrs_on_a_writeback_mount`: 1,000 links, renames and
//!   unlinks on a writeback-cache mount: the SETATTRs that reach the backend
//!   are counted (`-d` log) with `--times=forward` and with the default, and
//!   the backing trees and the view through the mount are compared with a
//!   direct mount's.
//!
//! The tests of this file run one at a time (`serial()`): one of them stops
//! a backend, and the request counts of another must not depend on what
//! runs beside it.

mod common;

use common::clock::{atime_of, mtime_of, show, time_ceiling, time_floor, Ts};

use common::policy::{passthrough_backend, stop_backend};

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::stats::{dump_stats, stat_field};
use common::sys::{self, ts};
use common::tree::{self, SnapOpts};
use common::{wait_until, Mode, Mount, MountBuilder};

/// Uniques of the proxy's own requests have bit 62 set.
const PROXY_UNIQUE: u64 = 1 << 62;
/// How long an unmount and the process's exit may take.
const EXIT_BOUND: Duration = Duration::from_secs(15);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Helpers shared by the tests.

/// O_PATH descriptors on `paths`: they keep the kernel's dentries and
/// inodes (and so its cached entries and attributes) from being evicted,
/// without any FUSE request (no OPEN, no FLUSH at close). Any program may
/// drop the kernel's caches while a test runs (the project's own benchmark
/// writes /proc/sys/vm/drop_caches between batches): the kernel then
/// FORGETs the evicted nodes and the next path walk asks the backend again
/// (LOOKUP), which a stopped backend never answers, and which refreshes the
/// attributes a test relies on being cached. Dropped before unmount (they
/// keep the mount busy).
fn pin(paths: &[PathBuf]) -> Vec<OwnedFd> {
    paths
        .iter()
        .map(|p| {
            sys::open(p, libc::O_PATH, 0)
                .unwrap_or_else(|e| panic!("open(O_PATH) {}: {e}", p.display()))
        })
        .collect()
}

/// `fuseproxy PROXY_ARGS {mnt} -- passthrough_ll -f -o source={backing}
/// EXTRA... {mnt}`, in Proxy mode whatever `FUSEPROXY_TEST_MODE` says: these
/// tests observe the proxy itself.
fn proxy_over_passthrough(proxy_args: &[&str], extra: &[&str]) -> MountBuilder {
    let pll = common::passthrough_ll().to_str().expect("UTF-8 path");
    let mut args: Vec<&str> = proxy_args.to_vec();
    args.extend(["{mnt}", "--", pll, "-f", "-o", "source={backing}"]);
    args.extend(extra);
    args.push("{mnt}");
    MountBuilder::new(Mode::Proxy, Vec::<&str>::new()).raw_proxy_args(args)
}

/// The stats line once nothing waits for the backend (bounded wait), so
/// that every request forwarded so far is in the backend's debug log.
fn quiet_stats(m: &mut Mount) -> String {
    let mut line = String::new();
    let quiet = wait_until(Duration::from_secs(5), || {
        line = dump_stats(m);
        stat_field(&line, "inflight") == 0
    });
    assert!(quiet, "requests still in flight after 5 s: {line}");
    line
}

/// Ends a mount as its user would ([`Mount::end_as_its_user`]) and checks
/// that the proxy applied every time update it acknowledged. Returns the
/// proxy's last stats line (empty for a direct mount).
fn unmount(m: &mut Mount) -> String {
    let last = m.end_as_its_user(EXIT_BOUND);
    if m.mode() == Mode::Proxy {
        assert!(!last.is_empty(), "no final stats line:\n{}", m.proxy_log());
        assert_eq!(
            stat_field(&last, "times_flush_errors"),
            0,
            "the backend refused time updates: {last}\n{}",
            m.proxy_log()
        );
        assert_eq!(stat_field(&last, "times_pending"), 0, "{last}");
    }
    last
}

fn seconds_between(a: Ts, b: Ts) -> f64 {
    ((a.0 - b.0) as f64 + (a.1 - b.1) as f64 * 1e-9).abs()
}

/// One request as libfuse's `-d` prints it when it reads it:
/// `unique: N, opcode: NAME (N), nodeid: N, insize: N, pid: N`.
#[derive(Clone, Debug)]
struct Req {
    unique: u64,
    op: String,
    node: u64,
    insize: usize,
    pid: u32,
}

impl Req {
    fn is_kernels(&self) -> bool {
        self.unique < PROXY_UNIQUE
    }
}

fn parse_request(line: &str) -> Option<Req> {
    let rest = line.strip_prefix("unique: ")?;
    let (unique, rest) = rest.split_once(", opcode: ")?;
    let (op, rest) = rest.split_once(" (")?;
    let (_, rest) = rest.split_once("), nodeid: ")?;
    let (node, rest) = rest.split_once(", insize: ")?;
    let (insize, pid) = rest.split_once(", pid: ")?;
    Some(Req {
        unique: unique.parse().ok()?,
        op: op.to_string(),
        node: node.parse().ok()?,
        insize: insize.parse().ok()?,
        pid: pid.trim().parse().ok()?,
    })
}

/// The requests in a stretch of the backend's debug log, in log order.
fn backend_requests(log: &str) -> Vec<Req> {
    log.lines().filter_map(parse_request).collect()
}

/// The node id passthrough_ll gave `name` in the root directory, from its
/// debug line `  1/NAME -> NODEID`.
fn node_of(log: &str, name: &str) -> Option<u64> {
    let pat = format!("  1/{name} -> ");
    log.lines()
        .filter_map(|l| l.strip_prefix(&pat))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
}

fn count_setattrs(reqs: &[Req]) -> (usize, usize) {
    let s = reqs.iter().filter(|r| r.op == "SETATTR");
    let kernel = s.clone().filter(|r| r.is_kernels()).count();
    (kernel, s.count() - kernel)
}

// ---------------------------------------------------------------------------
// 1. The same times as a direct mount.

const A1: Ts = (2_000_000_000, 111_111_111);
const M1: Ts = (1_000_000_000, 222_222_222);
const A2: Ts = (2_000_100_000, 333_333_333);
const M2: Ts = (1_100_000_000, 444_444_444);
const M3: Ts = (1_200_000_000, 555_555_555);

/// One field of a utimensat call.
#[derive(Clone, Copy, Debug)]
enum Set {
    To(Ts),
    Now,
    Omit,
}

impl Set {
    fn timespec(self) -> libc::timespec {
        match self {
            Set::To(t) => ts(t.0, t.1),
            Set::Now => ts(0, libc::UTIME_NOW),
            Set::Omit => ts(0, libc::UTIME_OMIT),
        }
    }
}

/// One call of the sequence, applied to the same file on every mount.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Create (or truncate) and write LEN bytes, close.
    Create(&'static str, usize),
    /// utimensat(AT_FDCWD, path, [atime, mtime], 0).
    Utime(&'static str, Set, Set),
    /// `touch FILE`: utimensat(NULL) on an open fd (UTIME_NOW for both).
    Touch(&'static str),
    /// open(O_RDWR), kept open.
    Open(&'static str),
    /// pwrite(LEN bytes at OFF) on the open fd.
    Write(&'static str, usize, usize),
    /// mmap(MAP_SHARED) of the open fd, write LEN bytes at OFF, msync, munmap.
    Mmap(&'static str, usize, usize),
    /// close the open fd.
    Close(&'static str),
    /// Create (or truncate), write LEN bytes, close, then set explicit
    /// times, with nothing in between: what tar, `cp -p` and rsync do.
    Extract(&'static str, usize, Ts, Ts),
    /// link(FILE, NEW).
    Link(&'static str, &'static str),
    /// unlink(NAME), a hard link of FILE.
    Unlink(&'static str, &'static str),
}

impl Step {
    fn file(&self) -> &'static str {
        match *self {
            Step::Create(f, _)
            | Step::Utime(f, _, _)
            | Step::Touch(f)
            | Step::Open(f)
            | Step::Write(f, _, _)
            | Step::Mmap(f, _, _)
            | Step::Close(f)
            | Step::Extract(f, _, _, _)
            | Step::Link(f, _)
            | Step::Unlink(_, f) => f,
        }
    }
}

fn scenario() -> Vec<Step> {
    use Set::*;
    use Step::*;
    vec![
        // touch -d
        Create("explicit", 100),
        Utime("explicit", To(A1), To(M1)),
        // UTIME_OMIT for one field
        Create("omit_mtime", 100),
        Utime("omit_mtime", To(A1), To(M1)),
        Utime("omit_mtime", To(A2), Omit),
        Create("omit_atime", 100),
        Utime("omit_atime", To(A1), To(M1)),
        Utime("omit_atime", Omit, To(M2)),
        // UTIME_NOW
        Create("touch", 100),
        Utime("touch", To(A1), To(M1)),
        Touch("touch"),
        Create("atime_now", 100),
        Utime("atime_now", To(A1), To(M1)),
        Utime("atime_now", Now, Omit),
        // writes followed by close (the kernel's time flush on writeback)
        Create("write", 0),
        Utime("write", To(A1), To(M1)),
        Open("write"),
        Write("write", 0, 5000),
        Close("write"),
        Create("write_utime", 0),
        Utime("write_utime", To(A1), To(M1)),
        Open("write_utime"),
        Write("write_utime", 0, 3000),
        Utime("write_utime", To(A2), To(M2)),
        Close("write_utime"),
        Create("write_omit", 0),
        Utime("write_omit", To(A1), To(M1)),
        Open("write_omit"),
        Write("write_omit", 0, 7000),
        Write("write_omit", 7000, 100),
        Close("write_omit"),
        Utime("write_omit", Omit, To(M3)),
        // mmap write + munmap
        Create("mmap", 8192),
        Utime("mmap", To(A1), To(M1)),
        Open("mmap"),
        Mmap("mmap", 100, 50),
        Close("mmap"),
        Create("mmap_utime", 8192),
        Utime("mmap_utime", To(A1), To(M1)),
        Open("mmap_utime"),
        Mmap("mmap_utime", 4000, 200),
        Utime("mmap_utime", To(A2), To(M2)),
        Close("mmap_utime"),
        Create("mmap_omit", 8192),
        Utime("mmap_omit", To(A1), To(M1)),
        Open("mmap_omit"),
        Mmap("mmap_omit", 5000, 10),
        Close("mmap_omit"),
        Utime("mmap_omit", Omit, To(M3)),
        // write, then set the times (tar -x, cp -p, rsync)
        Extract("extract", 6000, A1, M1),
        Create("rewrite", 100),
        Utime("rewrite", To(A1), To(M1)),
        Extract("rewrite", 9000, A2, M2),
        // the link count in the answer to a time update
        Create("linked", 10),
        Utime("linked", To(A1), To(M1)),
        Link("linked", "linked2"),
        Unlink("linked2", "linked"),
        Utime("linked", To(A2), Omit),
    ]
}

/// What one time field of a file must be.
#[derive(Clone, Copy, Debug)]
enum Field {
    Exact(Ts),
    /// Taken from a clock during a step that ran between `lo` and `hi`;
    /// `seen` is what the mount first showed, which must not change after.
    Fresh {
        lo: Ts,
        hi: Ts,
        seen: Option<Ts>,
    },
}

impl Field {
    fn fresh(lo: Ts, hi: Ts) -> Field {
        Field::Fresh { lo, hi, seen: None }
    }

    fn set(&mut self, s: Set, lo: Ts, hi: Ts) {
        match s {
            Set::To(t) => *self = Field::Exact(t),
            Set::Now => *self = Field::fresh(lo, hi),
            Set::Omit => {}
        }
    }

    /// Checks what the mount shows, pinning a fresh value at first sight.
    fn observe(&mut self, got: Ts) -> Result<(), String> {
        match self {
            Field::Exact(t) if got == *t => Ok(()),
            Field::Exact(t) => Err(format!("{} instead of {}", show(got), show(*t))),
            Field::Fresh { seen: Some(s), .. } if got == *s => Ok(()),
            Field::Fresh { seen: Some(s), .. } => {
                Err(format!("{} after the mount showed {}", show(got), show(*s)))
            }
            Field::Fresh { lo, hi, seen } => {
                if *lo <= got && got <= *hi {
                    *seen = Some(got);
                    Ok(())
                } else {
                    Err(format!(
                        "{} outside [{}, {}], when the call ran",
                        show(got),
                        show(*lo),
                        show(*hi)
                    ))
                }
            }
        }
    }

    /// Checks the backing file after unmount: exactly what the mount showed.
    fn settled(&self, got: Ts) -> Result<(), String> {
        match *self {
            Field::Exact(t) | Field::Fresh { seen: Some(t), .. } if got == t => Ok(()),
            Field::Exact(t) | Field::Fresh { seen: Some(t), .. } => Err(format!(
                "{} in the backing file, the mount showed {}",
                show(got),
                show(t)
            )),
            Field::Fresh { lo, hi, seen: None } if lo <= got && got <= hi => Ok(()),
            Field::Fresh { lo, hi, .. } => Err(format!(
                "{} in the backing file, outside [{}, {}]",
                show(got),
                show(lo),
                show(hi)
            )),
        }
    }

    fn value(&self) -> Option<Ts> {
        match *self {
            Field::Exact(t) => Some(t),
            Field::Fresh { seen, .. } => seen,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Expect {
    atime: Field,
    mtime: Field,
    size: u64,
    nlink: u64,
}

/// The sequence on one mount, with what each file must look like.
struct Run {
    label: String,
    m: Mount,
    expect: BTreeMap<&'static str, Expect>,
    open: BTreeMap<&'static str, OwnedFd>,
    /// O_PATH descriptors of every file made (see `pin`).
    pins: Vec<OwnedFd>,
    failures: Vec<String>,
}

impl Run {
    fn new(label: String, m: Mount) -> Self {
        Run {
            label,
            m,
            expect: BTreeMap::new(),
            open: BTreeMap::new(),
            pins: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, what: String) {
        self.failures.push(format!("{}: {what}", self.label));
    }

    fn apply(&mut self, step: Step) {
        let f = step.file();
        let p = self.m.path(f);
        let lo = time_floor();
        let done: Result<(), String> = match step {
            Step::Create(_, len) => {
                fs::write(&p, tree::pattern(len as u64, len)).map_err(|e| e.to_string())
            }
            Step::Utime(_, a, m) => {
                sys::utimensat(&p, a.timespec(), m.timespec(), 0).map_err(|e| e.to_string())
            }
            Step::Touch(_) => {
                match common::run_bounded(Command::new("touch").arg(&p), Duration::from_secs(10)) {
                    Some((st, _, _)) if st.success() => Ok(()),
                    Some((st, _, err)) => Err(format!("touch: {st}: {err}")),
                    None => Err("touch did not return within 10 s".into()),
                }
            }
            Step::Open(_) => sys::open(&p, libc::O_RDWR, 0)
                .map(|fd| {
                    self.open.insert(f, fd);
                })
                .map_err(|e| e.to_string()),
            Step::Write(_, off, len) => {
                let fd = self.open.get(f).expect("Write on an open file");
                match sys::pwrite(fd, &tree::pattern(off as u64 + 7, len), off as i64) {
                    Ok(n) if n == len => Ok(()),
                    Ok(n) => Err(format!("short write: {n} of {len}")),
                    Err(e) => Err(e.to_string()),
                }
            }
            Step::Mmap(_, off, len) => {
                let fd = self.open.get(f).expect("Mmap on an open file");
                let size = self.expect[f].size as usize;
                sys::mmap_write(fd, size, off, &tree::pattern(off as u64 + 9, len))
                    .map_err(|e| e.to_string())
            }
            Step::Close(_) => {
                drop(self.open.remove(f));
                Ok(())
            }
            Step::Extract(_, len, a, m) => fs::write(&p, tree::pattern(len as u64 + 3, len))
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    sys::utimensat(&p, ts(a.0, a.1), ts(m.0, m.1), 0).map_err(|e| e.to_string())
                }),
            Step::Link(_, new) => sys::link(&p, &self.m.path(new)).map_err(|e| e.to_string()),
            Step::Unlink(name, _) => sys::unlink(&self.m.path(name)).map_err(|e| e.to_string()),
        };
        let hi = time_ceiling();
        if let Err(e) = done {
            self.fail(format!("{step:?} failed: {e}"));
            return;
        }
        let fresh = Field::fresh(lo, hi);
        if !self.expect.contains_key(f) {
            self.pins.extend(pin(&[p]));
        }
        let e = self.expect.entry(f).or_insert(Expect {
            atime: fresh,
            mtime: fresh,
            size: 0,
            nlink: 1,
        });
        match step {
            Step::Create(_, len) => {
                (e.atime, e.mtime, e.size) = (fresh, fresh, len as u64);
            }
            Step::Utime(_, a, m) => {
                e.atime.set(a, lo, hi);
                e.mtime.set(m, lo, hi);
            }
            Step::Touch(_) => (e.atime, e.mtime) = (fresh, fresh),
            Step::Write(_, off, len) => {
                e.mtime = fresh;
                e.size = e.size.max((off + len) as u64);
            }
            Step::Mmap(..) => e.mtime = fresh,
            Step::Extract(_, len, a, m) => {
                (e.atime, e.mtime, e.size) = (Field::Exact(a), Field::Exact(m), len as u64);
            }
            Step::Link(..) => e.nlink += 1,
            Step::Unlink(..) => e.nlink -= 1,
            Step::Open(_) | Step::Close(_) => {}
        }
        self.check(f, &format!("after {step:?}"));
    }

    /// `stat` through the mount must show what the calls so far set.
    fn check(&mut self, f: &'static str, when: &str) {
        let st = match sys::stat(&self.m.path(f)) {
            Ok(st) => st,
            Err(e) => return self.fail(format!("{when}: stat {f}: {e}")),
        };
        let mut e = self.expect[f];
        let mut bad = Vec::new();
        if let Err(s) = e.atime.observe(atime_of(&st)) {
            bad.push(format!("atime {s}"));
        }
        if let Err(s) = e.mtime.observe(mtime_of(&st)) {
            bad.push(format!("mtime {s}"));
        }
        if st.st_size as u64 != e.size {
            bad.push(format!("size {} instead of {}", st.st_size, e.size));
        }
        if st.st_nlink != e.nlink {
            bad.push(format!("nlink {} instead of {}", st.st_nlink, e.nlink));
        }
        self.expect.insert(f, e);
        if !bad.is_empty() {
            self.fail(format!(
                "{when}: stat {f} through the mount: {}",
                bad.join("; ")
            ));
        }
    }

    /// Reading through the mount returns as many bytes as were written.
    /// Only files whose atime is explicit and in the future: a read by the
    /// backend leaves those alone (relatime), so the backing checks after
    /// unmount still hold.
    fn check_reads(&mut self) {
        let now = time_ceiling();
        let files: Vec<&'static str> = self.expect.keys().copied().collect();
        for f in files {
            let e = self.expect[f];
            if !matches!(e.atime, Field::Exact(t) if t > now) {
                continue;
            }
            match fs::read(self.m.path(f)) {
                Ok(b) if b.len() as u64 == e.size => {}
                Ok(b) => self.fail(format!(
                    "read {f} through the mount: {} bytes, {} were written",
                    b.len(),
                    e.size
                )),
                Err(err) => self.fail(format!("read {f} through the mount: {err}")),
            }
        }
    }

    /// After unmount: the backing files hold what the mount showed.
    fn check_backing(&mut self) {
        let files: Vec<&'static str> = self.expect.keys().copied().collect();
        for f in files {
            let e = self.expect[f];
            let st = match sys::stat(&self.m.backing_path(f)) {
                Ok(st) => st,
                Err(err) => {
                    self.fail(format!("backing {f}: {err}"));
                    continue;
                }
            };
            let mut bad = Vec::new();
            if let Err(s) = e.atime.settled(atime_of(&st)) {
                bad.push(format!("atime {s}"));
            }
            if let Err(s) = e.mtime.settled(mtime_of(&st)) {
                bad.push(format!("mtime {s}"));
            }
            if st.st_size as u64 != e.size {
                bad.push(format!("size {} instead of {}", st.st_size, e.size));
            }
            if !bad.is_empty() {
                self.fail(format!("backing {f} after unmount: {}", bad.join("; ")));
            }
        }
    }
}

/// Runs the scenario in lockstep on a direct mount and through the proxy
/// with passthrough_ll's `extra` options; returns the failures.
fn same_times(config: &str, extra: &[&str]) -> Vec<String> {
    let direct = MountBuilder::passthrough(Mode::Direct, extra).mount();
    let proxy = MountBuilder::passthrough(Mode::Proxy, extra).mount();
    let proxy_label = match proxy.mode() {
        Mode::Proxy => format!("[{config}] proxy"),
        Mode::Direct => format!("[{config}] proxy (FUSEPROXY_TEST_MODE=direct)"),
    };
    let mut runs = [
        Run::new(format!("[{config}] direct"), direct),
        Run::new(proxy_label, proxy),
    ];
    for step in scenario() {
        for r in runs.iter_mut() {
            r.apply(step);
        }
    }
    // Again once every acknowledged update has been sent (max delay 1 s),
    // and still mounted.
    std::thread::sleep(Duration::from_millis(1500));
    for r in runs.iter_mut() {
        let files: Vec<&'static str> = r.expect.keys().copied().collect();
        for f in files {
            r.check(f, "1.5 s after the sequence");
        }
        r.open.clear();
        r.check_reads();
        r.pins.clear();
    }
    for r in runs.iter_mut() {
        let last = unmount(&mut r.m);
        if r.m.mode() == Mode::Proxy {
            eprintln!(
                "[{config}] proxy: times_acked={} times_coalesced={} times_flushes={} times_forwarded={} held={}",
                stat_field(&last, "times_acked"),
                stat_field(&last, "times_coalesced"),
                stat_field(&last, "times_flushes"),
                stat_field(&last, "times_forwarded"),
                stat_field(&last, "held")
            );
            assert!(
                stat_field(&last, "times_acked") > 0,
                "[{config}] no time update was answered by the proxy: {last}"
            );
        }
        r.check_backing();
    }
    // Direct against proxy: explicit times are checked exactly by each run;
    // times from a clock must agree within 2 s (the calls ran side by side).
    let [d, p] = &runs;
    let mut failures: Vec<String> = d.failures.iter().chain(&p.failures).cloned().collect();
    for (f, de) in &d.expect {
        let Some(pe) = p.expect.get(f) else { continue };
        for (what, a, b) in [("atime", de.atime, pe.atime), ("mtime", de.mtime, pe.mtime)] {
            if let (Some(x), Some(y)) = (a.value(), b.value()) {
                if seconds_between(x, y) > 2.0 {
                    failures.push(format!(
                        "[{config}] {f}: {what} {} through the proxy, {} on the direct mount",
                        show(y),
                        show(x)
                    ));
                }
            }
        }
    }
    failures
}

#[test]
fn same_times_as_a_direct_mount() {
    let _serial = serial();
    let started = Instant::now();
    let mut failures = Vec::new();
    for (config, extra) in [
        // Every stat asks the backend: GETATTR/LOOKUP replies carry the
        // proxy's pending times (overlay).
        ("timeout=0", ["-o", "timeout=0"]),
        // stat is served from the kernel's cache, i.e. from the answers the
        // proxy gave to the time updates.
        ("timeout=3600", ["-o", "timeout=3600"]),
        // The kernel keeps mtime itself and flushes it at close and munmap
        // (SETATTR valid 0x460).
        ("writeback,timeout=0", ["-o", "writeback,timeout=0"]),
        ("writeback,timeout=3600", ["-o", "writeback,timeout=3600"]),
    ] {
        failures.extend(same_times(config, &extra));
    }
    eprintln!("same_times_as_a_direct_mount: {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} differences:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// 2. The deadlock: time updates while the backend cannot answer.

const FILES: usize = 1000;

/// The times the stopped-backend test gives file `i`.
fn new_times(i: usize) -> (Ts, Ts) {
    let i = i as i64;
    (
        (1_900_000_000 + i, i * 1_000_001 % 1_000_000_000),
        (1_000_000_000 + i, (i * 999_983 + 1) % 1_000_000_000),
    )
}

/// stat of each path in a helper thread; `None` if they did not all return
/// within `bound` (the thread is left behind, blocked in the kernel, until
/// the backend runs again).
fn stat_all_bounded(paths: &[PathBuf], bound: Duration) -> Option<Vec<sys::Res<libc::stat>>> {
    let (tx, rx) = mpsc::channel();
    let paths = paths.to_vec();
    std::thread::spawn(move || {
        let _ = tx.send(paths.iter().map(|p| sys::stat(p)).collect());
    });
    rx.recv_timeout(bound).ok()
}

/// Every file shows (through the mount, or in the backing directory) the
/// times `new_times` gave it; the first differences otherwise.
fn check_new_times(what: &str, stats: &[sys::Res<libc::stat>]) -> Result<(), String> {
    let bad: Vec<String> = stats
        .iter()
        .enumerate()
        .filter_map(|(i, st)| {
            let (a, m) = new_times(i);
            match st {
                Ok(st) if atime_of(st) == a && mtime_of(st) == m => None,
                Ok(st) => Some(format!(
                    "f{i:04}: atime {} mtime {}, expected {} {}",
                    show(atime_of(st)),
                    show(mtime_of(st)),
                    show(a),
                    show(m)
                )),
                Err(e) => Some(format!("f{i:04}: {e}")),
            }
        })
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{what}: {} of {} files wrong, first: {:#?}",
        bad.len(),
        stats.len(),
        &bad[..bad.len().min(5)]
    ))
}

/// What the worker thread reports when its calls have all returned.
type WorkerDone = (Duration, Vec<String>);

fn stopped_backend_run(forward: bool) {
    let label = if forward { "--times=forward" } else { "async" };
    let proxy_args: &[&str] = if forward { &["--times=forward"] } else { &[] };
    // Entries and attributes cached for an hour: path walks never ask the
    // backend, so the only request of a utimensat is its SETATTR.
    let mut m = proxy_over_passthrough(proxy_args, &["-o", "timeout=3600"]).mount();
    let paths: Vec<PathBuf> = (0..FILES).map(|i| m.path(format!("f{i:04}"))).collect();
    let backing: Vec<PathBuf> = (0..FILES)
        .map(|i| m.backing_path(format!("f{i:04}")))
        .collect();
    for p in &paths {
        fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    }
    for p in &paths {
        fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
    }
    let pins = pin(&paths);
    let backend = passthrough_backend(&m);
    let before = quiet_stats(&mut m);

    let cont = stop_backend(backend);

    let done = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<WorkerDone>();
    let worker = {
        let paths = paths.clone();
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut errors = Vec::new();
            for (i, p) in paths.iter().enumerate() {
                let (a, m) = new_times(i);
                if let Err(e) = sys::utimensat(p, ts(a.0, a.1), ts(m.0, m.1), 0) {
                    errors.push(format!("utimensat {}: {e}", p.display()));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            let _ = tx.send((started.elapsed(), errors));
        })
    };

    if forward {
        // Forwarded, the first SETATTR waits in the stopped backend.
        std::thread::sleep(Duration::from_secs(2));
        let n = done.load(Ordering::SeqCst);
        assert!(
            n == 0 && rx.try_recv().is_err() && !worker.is_finished(),
            "{label}: {n} of {FILES} utimensat calls returned while the backend was stopped"
        );
        assert!(common::all_threads_stopped(backend.pid));
        let resumed = Instant::now();
        drop(cont);
        let (took, errors) = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "{label}: only {} of {FILES} calls returned within 20 s of SIGCONT",
                    done.load(Ordering::SeqCst)
                )
            });
        assert!(errors.is_empty(), "{label}: {errors:#?}");
        eprintln!(
            "{label}: {FILES} utimensat calls returned {:?} after SIGCONT ({took:?} in all)",
            resumed.elapsed()
        );
        worker.join().expect("worker");
        let stats = stat_all_bounded(&paths, Duration::from_secs(10))
            .expect("stat through the mount did not return");
        check_new_times("through the mount", &stats).unwrap_or_else(|e| panic!("{label}: {e}"));
        let after = dump_stats(&mut m);
        assert_eq!(
            stat_field(&after, "times_acked"),
            stat_field(&before, "times_acked"),
            "{label}: the proxy answered time updates itself: {after}"
        );
    } else {
        let (took, errors) = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "{label}: only {} of {FILES} utimensat calls returned within 20 s while the \
                 backend was stopped",
                    done.load(Ordering::SeqCst)
                )
            });
        assert!(errors.is_empty(), "{label}: {errors:#?}");
        eprintln!("{label}: {FILES} utimensat calls returned in {took:?} with the backend stopped");
        worker.join().expect("worker");
        let stats = stat_all_bounded(&paths, Duration::from_secs(10)).unwrap_or_else(|| {
            panic!("{label}: stat through the mount did not return while the backend was stopped")
        });
        check_new_times("through the mount, backend stopped", &stats)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        // Nothing was applied yet: the answers came from the proxy.
        let untouched = backing
            .iter()
            .enumerate()
            .filter(|(i, p)| sys::stat(p).is_ok_and(|st| mtime_of(&st) != new_times(*i).1))
            .count();
        assert_eq!(
            untouched, FILES,
            "{label}: backing files changed while the backend was stopped"
        );
        assert!(
            common::all_threads_stopped(backend.pid),
            "{label}: the backend ran while it should have been stopped"
        );
        let after = dump_stats(&mut m);
        eprintln!("{label}, backend stopped: {after}");
        let acked = stat_field(&after, "times_acked") - stat_field(&before, "times_acked");
        assert!(
            acked >= FILES as u64,
            "{label}: only {acked} time updates answered by the proxy: {after}"
        );
        assert_eq!(
            stat_field(&after, "times_forwarded"),
            stat_field(&before, "times_forwarded"),
            "{label}: some time updates were forwarded synchronously: {after}"
        );
        // Past --times-max-delay the proxy sends its flushes to the stopped
        // backend; the mount keeps answering meanwhile.
        let mut sent = String::new();
        let flushed = wait_until(Duration::from_secs(5), || {
            sent = dump_stats(&mut m);
            stat_field(&sent, "times_flushes") - stat_field(&before, "times_flushes")
                >= FILES as u64
        });
        assert!(
            flushed,
            "{label}: the proxy did not send its flushes within 5 s: {sent}"
        );
        let stats = stat_all_bounded(&paths, Duration::from_secs(10)).unwrap_or_else(|| {
            panic!("{label}: stat through the mount hung while the flushes were in flight")
        });
        check_new_times("through the mount, flushes in flight", &stats)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert!(common::all_threads_stopped(backend.pid));
        eprintln!("{label}, flushes sent to the stopped backend: {sent}");
        let resumed = Instant::now();
        drop(cont);
        // The flushes in the backend's socket are applied once it runs.
        let mut stats = Vec::new();
        let applied = wait_until(Duration::from_secs(10), || {
            stats = backing.iter().map(|p| sys::stat(p)).collect();
            check_new_times("", &stats).is_ok()
        });
        assert!(
            applied,
            "{label}: {}",
            check_new_times("backing files 10 s after SIGCONT", &stats).unwrap_err()
        );
        eprintln!(
            "{label}: all {FILES} updates in the backing files {:?} after SIGCONT",
            resumed.elapsed()
        );
    }

    drop(pins);
    let last = unmount(&mut m);
    eprintln!("{label}, after unmount: {last}");
    let stats: Vec<sys::Res<libc::stat>> = backing.iter().map(|p| sys::stat(p)).collect();
    check_new_times("backing files after unmount", &stats)
        .unwrap_or_else(|e| panic!("{label}: {e}"));
}

#[test]
fn time_updates_return_while_the_backend_is_stopped() {
    let _serial = serial();
    let started = Instant::now();
    stopped_backend_run(false);
    stopped_backend_run(true);
    eprintln!(
        "time_updates_return_while_the_backend_is_stopped: {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 3. The kernel's time flush at close, seen from the backend.

/// What the backend saw of one write+close, and what the proxy counted.
struct FlushWindow {
    node: u64,
    reqs: Vec<Req>,
    acked: u64,
    held: u64,
    /// FORGETs the proxy sent of its own (the kernel's, deferred while
    /// times were outstanding; each hides one kernel unique at most).
    deferred_forgets: usize,
    /// Kernel uniques between the first and the last the backend saw that
    /// it never saw.
    missing: Vec<u64>,
}

fn flush_window(forward: bool) -> FlushWindow {
    let label = if forward { "--times=forward" } else { "async" };
    let proxy_args: &[&str] = if forward { &["--times=forward"] } else { &[] };
    let mut m = proxy_over_passthrough(proxy_args, &["-d", "-o", "writeback,timeout=3600"]).mount();
    // Made behind the mount's back, so that the kernel must look it up.
    let backing = m.backing_path("flushed");
    fs::write(&backing, tree::pattern(3, 10_000)).expect("write the backing file");
    sys::utimensat(&backing, ts(A1.0, A1.1), ts(M1.0, M1.1), 0).expect("utimensat backing");

    let before = quiet_stats(&mut m);
    let mark = m.proxy_log().len();
    let lo = time_floor();
    {
        let fd = sys::open(&m.path("flushed"), libc::O_WRONLY, 0).expect("open through the mount");
        assert_eq!(sys::pwrite(&fd, &tree::pattern(4, 4096), 0), Ok(4096));
        // close(2): the kernel writes the page back, flushes mtime/ctime
        // (SETATTR valid 0x460), then sends FLUSH.
    }
    let hi = time_ceiling();
    let shown = sys::stat(&m.path("flushed")).expect("stat through the mount");
    let stored = sys::stat(&backing).expect("stat the backing file");
    assert!(
        lo <= mtime_of(&shown) && mtime_of(&shown) <= hi,
        "{label}: mtime {} through the mount, the write ran in [{}, {}]",
        show(mtime_of(&shown)),
        show(lo),
        show(hi)
    );
    // FLUSH waits for the times (forwarded, or the proxy's flush), so they
    // are in the backing file when close returns.
    assert_eq!(
        mtime_of(&stored),
        mtime_of(&shown),
        "{label}: the backing file's mtime is not the one the mount shows after close"
    );
    assert_eq!(atime_of(&stored), A1, "{label}: atime changed");
    let after = quiet_stats(&mut m);
    let log = m.proxy_log();
    let window = &log[mark..];
    let node = node_of(window, "flushed").unwrap_or_else(|| {
        panic!("{label}: no lookup of 'flushed' in the backend's log:\n{window}")
    });
    let reqs = backend_requests(window);
    let mut kernel: Vec<u64> = reqs
        .iter()
        .filter(|r| r.is_kernels())
        .map(|r| r.unique)
        .collect();
    kernel.sort_unstable();
    // The kernel numbers its requests 2, 4, 6 ... (FUSE_REQ_ID_STEP).
    let missing = match (kernel.first(), kernel.last()) {
        (Some(&first), Some(&last)) => (first..=last)
            .step_by(2)
            .filter(|u| kernel.binary_search(u).is_err())
            .collect(),
        _ => Vec::new(),
    };
    eprintln!(
        "{label}: the backend saw, for write+close of 'flushed' (node {node}):\n  {}\n  kernel uniques it never saw: {missing:?}",
        reqs.iter()
            .map(|r| format!(
                "{} unique={}{} node={} insize={} pid={}",
                r.op,
                r.unique,
                if r.is_kernels() { "" } else { " (proxy)" },
                r.node,
                r.insize,
                r.pid
            ))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    unmount(&mut m);
    let deferred_forgets = reqs
        .iter()
        .filter(|r| r.op == "FORGET" && !r.is_kernels())
        .count();
    FlushWindow {
        node,
        reqs,
        acked: stat_field(&after, "times_acked") - stat_field(&before, "times_acked"),
        held: stat_field(&after, "held") - stat_field(&before, "held"),
        deferred_forgets,
        missing,
    }
}

#[test]
fn kernel_time_flush_is_answered_locally() {
    let _serial = serial();
    let started = Instant::now();

    let on = |w: &FlushWindow, op: &str, kernel: bool| -> Vec<usize> {
        w.reqs
            .iter()
            .enumerate()
            .filter(|(_, r)| r.op == op && r.node == w.node && r.is_kernels() == kernel)
            .map(|(i, _)| i)
            .collect()
    };

    // Baseline: forwarded, the kernel's own SETATTR reaches the backend
    // between the write-back and FLUSH.
    let fwd = flush_window(true);
    let fwd_setattr = on(&fwd, "SETATTR", true);
    let fwd_flush = on(&fwd, "FLUSH", true);
    assert!(
        !fwd_setattr.is_empty()
            && !fwd_flush.is_empty()
            && fwd_setattr[0] < *fwd_flush.last().unwrap(),
        "--times=forward: expected the kernel's SETATTR before FLUSH: {:#?}",
        fwd.reqs
    );
    assert!(on(&fwd, "SETATTR", false).is_empty());
    assert_eq!(fwd.acked, 0);
    assert!(
        fwd.missing.is_empty(),
        "--times=forward: kernel requests that never reached the backend: {:?}",
        fwd.missing
    );

    let w = flush_window(false);
    for op in ["OPEN", "FLUSH"] {
        assert!(
            !on(&w, op, true).is_empty(),
            "no {op} from the kernel reached the backend: {:#?}",
            w.reqs
        );
    }
    assert!(
        w.reqs
            .iter()
            .any(|r| r.op == "LOOKUP" && r.node == 1 && r.is_kernels()),
        "no LOOKUP from the kernel reached the backend: {:#?}",
        w.reqs
    );
    let kernel_setattrs: Vec<&Req> = w
        .reqs
        .iter()
        .filter(|r| r.op == "SETATTR" && r.is_kernels())
        .collect();
    assert!(
        kernel_setattrs.is_empty(),
        "the kernel's time flush reached the backend: {kernel_setattrs:#?}"
    );
    let ours = on(&w, "SETATTR", false);
    let flushes = on(&w, "FLUSH", true);
    assert!(
        !ours.is_empty(),
        "no SETATTR of the proxy's own (unique >= 2^62) reached the backend: {:#?}",
        w.reqs
    );
    assert!(
        ours[0] < *flushes.last().unwrap(),
        "the proxy's SETATTR did not precede the last FLUSH: {:#?}",
        w.reqs
    );
    assert!(w.acked >= 1, "times_acked did not grow");
    assert!(w.held >= 1, "no request was held behind the proxy's flush");
    // Every kernel request the backend never saw is a time update the proxy
    // answered (or a FORGET it deferred, if the machine dropped its caches
    // meanwhile).
    let missing = w.missing.len() as u64;
    assert!(
        w.acked <= missing && missing <= w.acked + w.deferred_forgets as u64,
        "kernel uniques that never reached the backend {:?} are not the {} updates the proxy \
         answered (+ {} deferred FORGETs)",
        w.missing,
        w.acked,
        w.deferred_forgets
    );
    eprintln!(
        "kernel_time_flush_is_answered_locally: forward: {} kernel SETATTR(s); async: 0 kernel, {} proxy SETATTR(s), times_acked +{}, held +{}, unanswered kernel uniques {:?}; {:?}",
        fwd_setattr.len(),
        ours.len(),
        w.acked,
        w.held,
        w.missing,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 4. Fewer SETATTRs for link, rename and unlink on a writeback mount.

/// The order of the 3,000 operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// link f→h, rename f→g, unlink g, file after file.
    PerFile,
    /// All links, then all renames, then all unlinks.
    Phases,
}

/// What the backend saw and what was left.
struct Churn {
    kernel_setattrs: usize,
    proxy_setattrs: usize,
    backing: Vec<tree::Entry>,
    /// (name, size, mode, nlink, mtime) of each remaining file through the
    /// mount, by name (no readdir: READDIRPLUS would refresh attributes).
    view: Vec<(String, u64, u32, u64, Ts)>,
    took: Duration,
}

fn churn(times: Option<&str>, order: Order) -> Churn {
    let extra = ["-d", "-o", "writeback,timeout=3600"];
    let builder = match times {
        None => MountBuilder::passthrough(Mode::Direct, &extra),
        Some("async") => proxy_over_passthrough(&[], &extra),
        Some(t) => proxy_over_passthrough(&[&format!("--times={t}")], &extra),
    };
    let mut m = builder.mount();
    // The files are made behind the mount's back, with known times and
    // modes: only the operations below go through it.
    for i in 0..FILES {
        let p = m.backing_path(format!("f{i:04}"));
        fs::write(&p, tree::pattern(i as u64, 1 + i * 37 % 5000)).expect("write backing file");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600 | (i as u32 % 8) << 3))
            .expect("chmod");
        let (a, mt) = new_times(i);
        sys::utimensat(&p, ts(a.0, a.1), ts(mt.0, mt.1), 0).expect("utimensat");
    }
    let name = |prefix: char, i: usize| m.path(format!("{prefix}{i:04}"));
    let started = Instant::now();
    let link = |i: usize| sys::link(&name('f', i), &name('h', i)).expect("link");
    let rename = |i: usize| sys::rename(&name('f', i), &name('g', i)).expect("rename");
    let unlink = |i: usize| sys::unlink(&name('g', i)).expect("unlink");
    match order {
        Order::PerFile => {
            for i in 0..FILES {
                link(i);
                rename(i);
                unlink(i);
            }
        }
        Order::Phases => {
            (0..FILES).for_each(link);
            (0..FILES).for_each(rename);
            (0..FILES).for_each(unlink);
        }
    }
    let took = started.elapsed();
    let view = (0..FILES)
        .map(|i| {
            let st = sys::lstat(&name('h', i)).expect("lstat through the mount");
            (
                format!("h{i:04}"),
                st.st_size as u64,
                st.st_mode,
                st.st_nlink,
                mtime_of(&st),
            )
        })
        .collect();
    unmount(&mut m);
    let (kernel_setattrs, proxy_setattrs) = count_setattrs(&backend_requests(&m.proxy_log()));
    let backing = tree::snapshot(
        m.backing(),
        SnapOpts {
            mtime: true,
            dir_mtime: false,
            nlink: true,
            xattrs: false,
        },
    );
    Churn {
        kernel_setattrs,
        proxy_setattrs,
        backing,
        view,
        took,
    }
}

#[test]
fn fewer_setattrs_on_a_writeback_mount() {
    let _serial = serial();
    let started = Instant::now();
    let direct = churn(None, Order::PerFile);
    let forward = churn(Some("forward"), Order::PerFile);
    let default = churn(Some("async"), Order::PerFile);
    let phases = churn(Some("async"), Order::Phases);
    let forward_count = forward.kernel_setattrs + forward.proxy_setattrs;
    let async_count = default.kernel_setattrs + default.proxy_setattrs;
    let phases_count = phases.kernel_setattrs + phases.proxy_setattrs;
    eprintln!(
        "SETATTRs reaching the backend: forward={forward_count} async={async_count} \
         (direct mount {}, async with the operations in phases {phases_count})",
        direct.kernel_setattrs
    );
    eprintln!(
        "3,000 operations took: direct {:?}, forward {:?}, async {:?}, async in phases {:?}",
        direct.took, forward.took, default.took, phases.took
    );

    // --times=forward changes nothing: the kernel's own SETATTRs, as many
    // as on a direct mount (one per operation).
    assert_eq!(forward.proxy_setattrs, 0);
    assert_eq!(
        forward.kernel_setattrs, direct.kernel_setattrs,
        "--times=forward sent a different number of SETATTRs than a direct mount"
    );
    assert!(
        direct.kernel_setattrs >= 3 * FILES,
        "the direct mount sent {} SETATTRs for {} operations: the kernel no longer flushes \
         ctime on link/rename/unlink, this test measures nothing",
        direct.kernel_setattrs,
        3 * FILES
    );
    // The default answers every one of them and sends its own, coalesced:
    // at least one per file (each file's ctime changed), and with the three
    // operations of a file back to back, little more. One per file, a third
    // of forward's, is the floor.
    for (what, c) in [("per file", &default), ("in phases", &phases)] {
        assert_eq!(
            c.kernel_setattrs, 0,
            "async {what}: kernel SETATTRs reached the backend"
        );
        assert!(
            c.proxy_setattrs >= FILES,
            "async {what}: only {} SETATTRs for {FILES} files",
            c.proxy_setattrs
        );
    }
    assert!(
        async_count * 5 <= forward_count * 2,
        "async sent {async_count} SETATTRs, forward {forward_count}: not far fewer"
    );
    assert!(
        phases_count < forward_count,
        "async in phases sent {phases_count} SETATTRs, forward {forward_count}"
    );

    // Same trees: names, sizes, contents, modes, link counts, file mtimes.
    for (what, c) in [
        ("forward", &forward),
        ("async", &default),
        ("async in phases", &phases),
    ] {
        tree::assert_same(
            &format!("backing tree, direct vs {what}"),
            &direct.backing,
            &c.backing,
        );
    }
    // And the same view through the mount before unmount.
    for (what, c) in [
        ("forward", &forward),
        ("async", &default),
        ("async in phases", &phases),
    ] {
        tree::assert_same(
            &format!("lstat through the mount (name, size, mode, nlink, mtime), direct vs {what}"),
            &direct.view,
            &c.view,
        );
    }
    eprintln!(
        "fewer_setattrs_on_a_writeback_mount: {:?}",
        started.elapsed()
    );
}
