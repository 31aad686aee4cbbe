//! The workloads: what each does, its untimed preparation, its timed run (a
//! child process: fio, tar, find | xargs stat, or our own worker), and the
//! check of its result.
//!
//! Cache policy. Every workload that reads what an earlier one wrote starts
//! with `sync` and `echo 3 > /proc/sys/vm/drop_caches` (so the FUSE mount's
//! page, dentry and attribute caches are cold and every access reaches the
//! daemon), then re-reads the backing directory directly, not through the
//! mount (so the backing file system's caches are warm and the disk is not
//! what is measured). Workloads that write start with `sync` only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::mounts::{Config, Mounted};
use crate::procs::{self, Res};
use crate::tree::{self, Tree};
use crate::worker;

/// Every workload, in run order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    MetaCreate,
    MetaStat,
    MetaUnlink,
    SmallWrite,
    SmallRead,
    SeqWrite,
    SeqRead,
    RandRead,
    Utime,
    TarX,
    FindStat,
}

pub const ALL: [Workload; 11] = [
    Workload::MetaCreate,
    Workload::MetaStat,
    Workload::MetaUnlink,
    Workload::SmallWrite,
    Workload::SmallRead,
    Workload::SeqWrite,
    Workload::SeqRead,
    Workload::RandRead,
    Workload::Utime,
    Workload::TarX,
    Workload::FindStat,
];

/// Workloads that share one mount, in order: a later one uses what an
/// earlier one left (a group runs whole if any member is selected; members
/// not selected run but are not reported).
pub const GROUPS: [&[Workload]; 5] = [
    &[
        Workload::MetaCreate,
        Workload::MetaStat,
        Workload::MetaUnlink,
    ],
    &[Workload::SmallWrite, Workload::SmallRead],
    &[Workload::SeqWrite, Workload::SeqRead, Workload::RandRead],
    &[Workload::Utime],
    &[Workload::TarX, Workload::FindStat],
];

/// The workloads that `--callers P` runs with P parallel callers, the work
/// split among them (the total stays the same, so times compare across P):
/// meta-stat's stats of each batch, small-read's files, rand-read's reads
/// (each caller over its own region of the file, so no caller reads a block
/// another one brought into the page cache). The others run with one caller
/// only: a sequential stream, an archive extraction or a storm on a fixed
/// round robin of files is one caller's work by nature.
pub const PARALLEL: [Workload; 3] = [Workload::MetaStat, Workload::SmallRead, Workload::RandRead];

/// The workloads of `group` that run on a mount whose parallel workloads
/// have `callers` callers: with one, the whole group, as without
/// `--callers`; with more, the selected parallel workloads and what they
/// need (the earlier members that make their files, and meta-unlink, which
/// empties each metadata batch before the next is created), but not the
/// members reported at one caller only (seq-read).
pub fn to_run(group: &[Workload], selected: &[Workload], callers: u32) -> Vec<Workload> {
    if callers == 1 {
        return group.to_vec();
    }
    let mut want: Vec<Workload> = Vec::new();
    for &w in group {
        if w.is_parallel() && selected.contains(&w) {
            want.push(w);
            want.extend_from_slice(w.needs());
        }
    }
    group.iter().copied().filter(|w| want.contains(w)).collect()
}

/// The caller counts a group runs at: every level of `--callers` if it has
/// a selected parallel workload, plus one caller if it has a selected
/// workload that runs at one caller only; just one caller otherwise.
pub fn levels(group: &[Workload], selected: &[Workload], callers: &[u32]) -> Vec<u32> {
    let sel = |f: fn(Workload) -> bool| group.iter().any(|&w| selected.contains(&w) && f(w));
    if !sel(Workload::is_parallel) {
        return vec![1];
    }
    let mut v = callers.to_vec();
    if sel(|w| !w.is_parallel()) && !v.contains(&1) {
        v.insert(0, 1);
    }
    v
}

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub meta_files: usize,
    /// The metadata files go in batches of this many (create all, stat all,
    /// unlink all, next batch): passthrough_ll holds one descriptor per
    /// inode the kernel knows, so the batch bounds its open files.
    pub meta_batch: usize,
    pub small_files: usize,
    pub small_size: u64,
    pub seq_bytes: u64,
    pub seq_block: u64,
    pub rand_bytes: u64,
    pub rand_block: u64,
    pub utime_calls: usize,
    pub utime_files: usize,
    pub tree_files: usize,
}

impl Sizes {
    pub const FULL: Sizes = Sizes {
        meta_files: 20_000,
        meta_batch: 10_000,
        small_files: 5_000,
        small_size: 4096,
        seq_bytes: 512 << 20,
        seq_block: 1 << 20,
        rand_bytes: 128 << 20,
        rand_block: 4096,
        utime_calls: 50_000,
        utime_files: 1_000,
        tree_files: 4_000,
    };
    pub const SMOKE: Sizes = Sizes {
        meta_files: 300,
        meta_batch: 100,
        small_files: 100,
        small_size: 4096,
        seq_bytes: 16 << 20,
        seq_block: 1 << 20,
        rand_bytes: 1 << 20,
        rand_block: 4096,
        utime_calls: 1_000,
        utime_files: 50,
        tree_files: 200,
    };

    pub fn to_json(self) -> Value {
        json!({
            "meta_files": self.meta_files,
            "meta_batch": self.meta_batch,
            "small_files": self.small_files,
            "small_size": self.small_size,
            "seq_bytes": self.seq_bytes,
            "seq_block": self.seq_block,
            "rand_bytes": self.rand_bytes,
            "rand_block": self.rand_block,
            "utime_calls": self.utime_calls,
            "utime_files": self.utime_files,
            "tree_files": self.tree_files,
        })
    }
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::MetaCreate => "meta-create",
            Workload::MetaStat => "meta-stat",
            Workload::MetaUnlink => "meta-unlink",
            Workload::SmallWrite => "small-write",
            Workload::SmallRead => "small-read",
            Workload::SeqWrite => "seq-write",
            Workload::SeqRead => "seq-read",
            Workload::RandRead => "rand-read",
            Workload::Utime => "utime",
            Workload::TarX => "tar-x",
            Workload::FindStat => "find-stat",
        }
    }

    pub fn from_name(s: &str) -> Option<Workload> {
        ALL.iter().copied().find(|w| w.name() == s)
    }

    /// Whether it runs with `--callers` parallel callers (see [`PARALLEL`]).
    pub fn is_parallel(self) -> bool {
        PARALLEL.contains(&self)
    }

    /// The members of its group that must run on the same mount for it to
    /// run (before it, or, for meta-unlink, after it in each batch).
    pub fn needs(self) -> &'static [Workload] {
        match self {
            Workload::MetaStat => &[Workload::MetaCreate, Workload::MetaUnlink],
            Workload::MetaUnlink => &[Workload::MetaCreate],
            Workload::SmallRead => &[Workload::SmallWrite],
            Workload::SeqRead | Workload::RandRead => &[Workload::SeqWrite],
            Workload::FindStat => &[Workload::TarX],
            _ => &[],
        }
    }

    /// Operations done, and their unit, for the rate column.
    pub fn ops(self, z: &Sizes) -> (f64, &'static str) {
        match self {
            Workload::MetaCreate | Workload::MetaStat | Workload::MetaUnlink => {
                (z.meta_files as f64, "files/s")
            }
            Workload::SmallWrite | Workload::SmallRead => (z.small_files as f64, "files/s"),
            Workload::SeqWrite | Workload::SeqRead => {
                (z.seq_bytes as f64 / (1 << 20) as f64, "MiB/s")
            }
            Workload::RandRead => ((z.rand_bytes / z.rand_block) as f64, "reads/s"),
            Workload::Utime => (z.utime_calls as f64, "calls/s"),
            Workload::TarX | Workload::FindStat => (z.tree_files as f64, "files/s"),
        }
    }

    /// What the workload does exactly, for the report.
    pub fn describe(self, z: &Sizes) -> String {
        let k = |b: u64| {
            if b >= 1 << 20 {
                format!("{} MiB", b >> 20)
            } else {
                format!("{} KiB", b >> 10)
            }
        };
        match self {
            Workload::MetaCreate => format!(
                "create {} empty files in one directory, in batches of {} (openat O_CREAT|O_EXCL + close each; own loop)",
                z.meta_files, z.meta_batch
            ),
            Workload::MetaStat => format!(
                "after each batch's create and a drop_caches: fstatat each file of the batch (every LOOKUP reaches the daemon; own loop); {} in all",
                z.meta_files
            ),
            Workload::MetaUnlink => format!(
                "after each batch's stat and a drop_caches: unlinkat each file of the batch (own loop); {} in all",
                z.meta_files
            ),
            Workload::SmallWrite => format!(
                "fio: create and write {} files of {} (rw=write bs={} create_on_open=1 openfiles=1, psync)",
                z.small_files,
                k(z.small_size),
                k(z.small_size)
            ),
            Workload::SmallRead => format!(
                "after drop_caches: fio reads the {} files back (rw=read bs={}, psync)",
                z.small_files,
                k(z.small_size)
            ),
            Workload::SeqWrite => format!(
                "fio: write a {} file in {} blocks (rw=write, psync, fallocate=none, no fsync)",
                k(z.seq_bytes),
                k(z.seq_block)
            ),
            Workload::SeqRead => format!(
                "after drop_caches: fio reads the {} file in {} blocks (rw=read, psync)",
                k(z.seq_bytes),
                k(z.seq_block)
            ),
            Workload::RandRead => format!(
                "after drop_caches: fio, {} preads of {} at random offsets of the {} file (rw=randread, io_size={}, psync)",
                z.rand_bytes / z.rand_block,
                k(z.rand_block),
                k(z.seq_bytes),
                k(z.rand_bytes)
            ),
            Workload::Utime => format!(
                "after drop_caches: {} utimensat calls with explicit times, round robin over {} files (own loop)",
                z.utime_calls, z.utime_files
            ),
            Workload::TarX => format!(
                "tar -xf of a {}-file tree (~{} dirs, sizes 0-8 KiB, times preserved, symlinks) into the mount",
                z.tree_files,
                z.tree_files.div_ceil(20) + z.tree_files.div_ceil(100)
            ),
            Workload::FindStat => {
                "after drop_caches: find . -print0 | xargs -0 stat over the extracted tree, checked against the archive"
                    .to_string()
            }
        }
    }
}

/// Run-wide things the workloads need.
pub struct Ctx {
    pub sizes: Sizes,
    /// Per-workload time limit.
    pub timeout: Duration,
    /// Where logs and fio's JSON go (local disk, outside every mount).
    pub logs: PathBuf,
    pub tree: Tree,
    /// This binary, for the worker loops.
    pub me: PathBuf,
}

/// One workload's measurement on one mount.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The timed part: fio's job_runtime, the worker's loop, or the wall
    /// time of tar / find | xargs stat.
    pub seconds: f64,
    /// Wall time from just before the child started to its exit (the window
    /// over which the daemons' CPU and messages are counted).
    pub window_s: f64,
    pub usage: crate::mounts::Usage,
    /// CPU seconds the whole machine was busy during the timed part (every
    /// process: callers, kernel, daemons, the proxy); `None` if /proc/stat
    /// could not be sampled.
    pub machine_busy_s: Option<f64>,
    /// Context switches the whole machine made during the timed part.
    pub machine_switches: Option<f64>,
    /// Workload-specific numbers (fio's bandwidth, IOPS, latency).
    pub detail: Value,
}

/// `sync` + drop every clean cache.
pub fn drop_caches() -> Res<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("echo 3 > /proc/sys/vm/drop_caches: {e}"))
}

/// Reads everything under `root` (files fully, everything lstat'ed).
fn warm(root: &Path) -> Res<()> {
    let mut err = None;
    let mut buf = vec![0u8; 1 << 20];
    tree::walk(root, &mut |p, m| {
        if m.is_file() && err.is_none() {
            if let Err(e) = read_all(p, &mut buf) {
                err = Some(e);
            }
        }
    })?;
    err.map_or(Ok(()), Err)
}

fn read_all(p: &Path, buf: &mut [u8]) -> Res<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()))?;
    let mut n = 0u64;
    loop {
        match f.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read {}: {e}", p.display())),
        }
    }
}

/// Cold FUSE caches, warm backing directory (see the module's doc).
fn cold_mount(backing_subdir: &Path) -> Res<()> {
    drop_caches()?;
    warm(backing_subdir)
}

fn mkdir(p: &Path) -> Res<()> {
    std::fs::create_dir(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

/// The subdirectory a workload group uses, relative to the mount root.
fn subdir(w: Workload) -> &'static str {
    match w {
        Workload::MetaCreate | Workload::MetaStat | Workload::MetaUnlink => "meta",
        Workload::SmallWrite | Workload::SmallRead => "small",
        Workload::SeqWrite | Workload::SeqRead | Workload::RandRead => "seq",
        Workload::Utime => "utime",
        Workload::TarX | Workload::FindStat => "tree",
    }
}

/// What the timed child is.
enum Job {
    /// fio with these arguments, `jobs` jobs (one per caller); its JSON
    /// goes to `json`.
    Fio {
        args: Vec<String>,
        json: PathBuf,
        jobs: usize,
    },
    /// Our worker; its JSON line on stdout.
    Worker(Command),
    /// Any command, wall-timed, stdout kept.
    Wall(Command),
}

/// Runs workload `w` on mount `m`: prepare, time, check. A parallel
/// workload (see [`PARALLEL`]) runs with `callers` callers; the others
/// ignore it. `tag` names the log files (round, config, workload).
pub fn run(
    ctx: &Ctx,
    m: &mut Mounted,
    w: Workload,
    batch: usize,
    callers: u32,
    tag: &str,
) -> Res<Measured> {
    let z = &ctx.sizes;
    let dir = m.mnt.join(subdir(w));
    let bdir = m.backing.join(subdir(w));
    // One fio job per caller, each given its whole option list (one job,
    // named after the workload, with one caller). fio starts the jobs of
    // one invocation together.
    let fio = |jobs: &[Vec<String>]| -> Job {
        let json = ctx.logs.join(format!("{tag}.fio.json"));
        let mut args = vec![
            "--output-format=json".to_string(),
            format!("--output={}", json.display()),
        ];
        for (i, extra) in jobs.iter().enumerate() {
            args.push(if jobs.len() == 1 {
                format!("--name={}", w.name())
            } else {
                format!("--name={}.{i}", w.name())
            });
            args.push("--ioengine=psync".into());
            args.push("--fallocate=none".into());
            args.extend(extra.iter().cloned());
        }
        Job::Fio {
            args,
            json,
            jobs: jobs.len(),
        }
    };
    let p = callers as usize;
    let big = dir.join("big");
    let (first, count) = meta_range(z, batch);
    let worker = |kind: &str, count: usize| -> Job {
        let mut c = Command::new(&ctx.me);
        c.arg("worker").arg(kind).arg(&dir).arg(count.to_string());
        if kind.starts_with("meta") {
            c.arg("--first").arg(first.to_string());
        }
        if kind == "meta-stat" {
            c.arg("--callers").arg(callers.to_string());
        }
        if kind == "utime" {
            c.arg("--files").arg(z.utime_files.to_string());
        }
        Job::Worker(c)
    };

    // Untimed preparation, and the job.
    nix::unistd::sync();
    let job = match w {
        Workload::MetaCreate => {
            if batch == 0 {
                mkdir(&dir)?;
            }
            worker("meta-create", count)
        }
        Workload::MetaStat => {
            cold_mount(&bdir)?;
            worker("meta-stat", count)
        }
        Workload::MetaUnlink => {
            cold_mount(&bdir)?;
            worker("meta-unlink", count)
        }
        Workload::SmallWrite | Workload::SmallRead => {
            let write = w == Workload::SmallWrite;
            // One caller: the 5,000 files in `small/`, as ever. P callers:
            // in P subdirectories `small/cI/` (I < P) holding each caller's
            // share, so that every fio job names its files by fio's own
            // numbering (a list of names in `filename=` is limited to 4,096
            // characters). small-write then runs P jobs one after the other
            // (`stonewall`: still one caller), small-read P jobs at once.
            let job = |sub: Option<usize>, n: usize| {
                let d = sub.map_or(dir.clone(), |i| dir.join(format!("c{i}")));
                let mut a = vec![
                    format!("--directory={}", d.display()),
                    "--filename_format=f.$filenum".into(),
                    format!("--nrfiles={n}"),
                    format!("--filesize={}", z.small_size),
                    format!("--size={}", z.small_size * n as u64),
                    format!("--bs={}", z.small_size),
                    "--openfiles=1".into(),
                    "--file_service_type=sequential".into(),
                    format!("--rw={}", if write { "write" } else { "read" }),
                ];
                if write {
                    a.push("--create_on_open=1".into());
                    if sub.is_some_and(|i| i > 0) {
                        a.push("--stonewall".into());
                    }
                }
                a
            };
            if write {
                mkdir(&dir)?;
                if p > 1 {
                    for i in 0..p {
                        mkdir(&dir.join(format!("c{i}")))?;
                    }
                }
            } else {
                cold_mount(&bdir)?;
            }
            let jobs: Vec<Vec<String>> = if p == 1 {
                vec![job(None, z.small_files)]
            } else {
                (0..p)
                    .map(|i| job(Some(i), worker::share(z.small_files, p, i).1))
                    .collect()
            };
            fio(&jobs)
        }
        Workload::SeqWrite | Workload::SeqRead => {
            let write = w == Workload::SeqWrite;
            if write {
                mkdir(&dir)?;
            } else {
                cold_mount(&bdir)?;
            }
            fio(&[vec![
                format!("--filename={}", big.display()),
                format!("--size={}", z.seq_bytes),
                format!("--bs={}", z.seq_block),
                format!("--rw={}", if write { "write" } else { "read" }),
            ]])
        }
        Workload::RandRead => {
            cold_mount(&bdir)?;
            if p == 1 {
                fio(&[vec![
                    format!("--filename={}", big.display()),
                    format!("--size={}", z.seq_bytes),
                    format!("--io_size={}", z.rand_bytes),
                    format!("--bs={}", z.rand_block),
                    "--rw=randread".into(),
                    "--randrepeat=1".into(),
                ]])
            } else {
                // Caller i reads its share of the blocks at random offsets
                // of its own 1/P of the file: fio never reads a block twice
                // within a job (its random map), and with disjoint regions
                // no job reads a block another one brought into the page
                // cache, so the reads that reach the daemon are as many as
                // with one caller.
                let blocks = z.seq_bytes / z.rand_block;
                let jobs: Vec<Vec<String>> = (0..p)
                    .map(|i| {
                        let (b0, nb) = worker::share(blocks as usize, p, i);
                        let (_, n) = worker::share((z.rand_bytes / z.rand_block) as usize, p, i);
                        vec![
                            format!("--filename={}", big.display()),
                            format!("--offset={}", b0 as u64 * z.rand_block),
                            format!("--size={}", nb as u64 * z.rand_block),
                            format!("--io_size={}", n as u64 * z.rand_block),
                            format!("--bs={}", z.rand_block),
                            "--rw=randread".into(),
                            "--randrepeat=1".into(),
                        ]
                    })
                    .collect();
                fio(&jobs)
            }
        }
        Workload::Utime => {
            mkdir(&dir)?;
            worker::make_utime_files(&dir, z.utime_files)?;
            cold_mount(&bdir)?;
            worker("utime", z.utime_calls)
        }
        Workload::TarX => {
            mkdir(&dir)?;
            // The archive (local disk) and tar itself in the page cache.
            read_all(&ctx.tree.tarball, &mut vec![0u8; 1 << 20])?;
            procs::run_output(
                Command::new("tar").arg("--version"),
                Duration::from_secs(30),
            )?;
            let mut c = Command::new("tar");
            c.arg("-xf").arg(&ctx.tree.tarball).arg("-C").arg(&dir);
            Job::Wall(c)
        }
        Workload::FindStat => {
            cold_mount(&bdir)?;
            for t in ["find", "xargs", "stat"] {
                procs::run_output(Command::new(t).arg("--version"), Duration::from_secs(30))?;
            }
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg("find . -print0 | xargs -0 stat --printf '%n\\t%F\\t%s\\t%Y\\n'")
                .current_dir(&dir);
            Job::Wall(c)
        }
    };
    procs::check_interrupt()?;
    m.check_alive()?;

    // Timed.
    let out = ctx.logs.join(format!("{tag}.out"));
    let err = ctx.logs.join(format!("{tag}.err"));
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&err);
    let mut cmd = match &job {
        Job::Fio { args, .. } => {
            let mut c = Command::new("fio");
            c.args(args);
            c
        }
        Job::Worker(c) | Job::Wall(c) => rebuild(c),
    };
    let before = m.before()?;
    let sampler = crate::busy::Sampler::start();
    let t0 = Instant::now();
    let mut child = procs::spawn(&mut cmd, &out, &err)?;
    let status = match procs::wait_bounded(&mut child, ctx.timeout) {
        Ok(Some((st, at))) => Ok((st, at)),
        Ok(None) => Err(format!(
            "{} did not finish within {:?} (killed){}",
            procs::describe(&cmd),
            ctx.timeout,
            m.log_tail()
        )),
        Err(e) => Err(e),
    };
    let (status, t1) = match status {
        Ok(x) => x,
        Err(e) => {
            // Kill the daemons first: that aborts the FUSE connection, so a
            // child blocked in it returns and can be reaped.
            m.abort();
            procs::stop_child(&mut child, Duration::from_secs(2));
            return Err(e);
        }
    };
    let window_s = (t1 - t0).as_secs_f64();
    let readings = sampler.map(crate::busy::Sampler::stop);
    let usage = m.after(&before)?;
    let stderr_text = std::fs::read_to_string(&err).unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "{} failed ({status}): {}{}",
            procs::describe(&cmd),
            last_lines(&stderr_text, 6),
            m.log_tail()
        ));
    }
    m.check_alive()?;

    // Result and its check.
    let (seconds, detail) = match &job {
        Job::Fio { json, jobs, .. } => fio_result(w, z, json, *jobs)?,
        Job::Worker(_) => {
            let v: Value = serde_json::from_str(
                std::fs::read_to_string(&out)
                    .map_err(|e| format!("{}: {e}", out.display()))?
                    .trim(),
            )
            .map_err(|e| format!("worker output: {e}"))?;
            let secs = v["seconds"].as_f64().ok_or("worker output: no seconds")?;
            (secs, v)
        }
        Job::Wall(_) => (window_s, json!({})),
    };
    verify(ctx, m.config, w, count, &dir, &bdir, &out)?;
    // The timed part ends as the child exits; it cannot have begun before
    // the child started.
    let from = t1
        .checked_sub(Duration::from_secs_f64(seconds.clamp(0.0, window_s)))
        .unwrap_or(t0)
        .max(t0);
    let tck = procs::clk_tck() as f64;
    let machine_busy_s = readings.as_ref().and_then(|r| r.busy_s(from, t1, tck));
    let machine_switches = readings.and_then(|r| r.switches(from, t1));
    Ok(Measured {
        seconds,
        window_s,
        usage,
        machine_busy_s,
        machine_switches,
        detail,
    })
}

/// A fresh Command with the same program, args and cwd (Command is not
/// Clone).
fn rebuild(c: &Command) -> Command {
    let mut n = Command::new(c.get_program());
    n.args(c.get_args());
    if let Some(d) = c.get_current_dir() {
        n.current_dir(d);
    }
    n
}

fn last_lines(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join(" | ")
}

/// fio's JSON: the runtime and the byte/IO counts, checked. With several
/// jobs (one per caller, started together) the time is the longest job's
/// `job_runtime`, and the counts are the jobs' sums, checked against the
/// whole workload's.
fn fio_result(w: Workload, z: &Sizes, path: &Path, jobs: usize) -> Res<(f64, Value)> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // fio may print warnings before the JSON document.
    let start = text.find('{').ok_or("fio wrote no JSON")?;
    let v: Value = serde_json::from_str(&text[start..]).map_err(|e| format!("fio's JSON: {e}"))?;
    let all = v["jobs"].as_array().ok_or("fio's JSON has no jobs")?;
    if all.len() != jobs {
        return Err(format!("fio reports {} jobs, expected {jobs}", all.len()));
    }
    for job in all {
        if job["error"].as_i64() != Some(0) {
            return Err(format!(
                "fio {} reports error {}",
                job["jobname"], job["error"]
            ));
        }
    }
    let (dir, want_bytes, want_ios) = match w {
        Workload::SmallWrite => (
            "write",
            z.small_size * z.small_files as u64,
            z.small_files as u64,
        ),
        Workload::SmallRead => (
            "read",
            z.small_size * z.small_files as u64,
            z.small_files as u64,
        ),
        Workload::SeqWrite => ("write", z.seq_bytes, z.seq_bytes / z.seq_block),
        Workload::SeqRead => ("read", z.seq_bytes, z.seq_bytes / z.seq_block),
        Workload::RandRead => ("read", z.rand_bytes, z.rand_bytes / z.rand_block),
        _ => return Err(format!("{} is not a fio workload", w.name())),
    };
    let sum =
        |f: &dyn Fn(&Value) -> Option<f64>| all.iter().filter_map(|j| f(&j[dir])).sum::<f64>();
    let bytes: u64 = all
        .iter()
        .map(|j| j[dir]["io_bytes"].as_u64().unwrap_or(0))
        .sum();
    let ios: u64 = all
        .iter()
        .map(|j| j[dir]["total_ios"].as_u64().unwrap_or(0))
        .sum();
    if bytes != want_bytes || ios != want_ios {
        return Err(format!(
            "fio {dir}: {bytes} bytes in {ios} I/Os, expected {want_bytes} bytes in {want_ios}"
        ));
    }
    let mut runtime_ms = 0.0f64;
    for job in all {
        let r = job["job_runtime"]
            .as_f64()
            .ok_or("fio's JSON has no job_runtime")?;
        runtime_ms = runtime_ms.max(r);
    }
    let max = |f: &dyn Fn(&Value) -> Option<f64>| {
        all.iter()
            .filter_map(f)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let detail = json!({
        "fio_runtime_ms": runtime_ms,
        "fio_jobs": jobs,
        "bw_kib_s": sum(&|d| d["bw"].as_f64()),
        "iops": sum(&|d| d["iops"].as_f64()),
        // Mean over all I/Os of all jobs; the worst job's p99.
        "lat_mean_us": (ios > 0).then(|| sum(&|d| Some(d["lat_ns"]["mean"].as_f64()? * d["total_ios"].as_f64()?)) / ios as f64 / 1000.0),
        "clat_p99_us": max(&|j| j[dir]["clat_ns"]["percentile"]["99.000000"].as_f64()).map(|n| n / 1000.0),
        "usr_cpu_pct": all.iter().filter_map(|j| j["usr_cpu"].as_f64()).sum::<f64>(),
        "sys_cpu_pct": all.iter().filter_map(|j| j["sys_cpu"].as_f64()).sum::<f64>(),
    });
    Ok((runtime_ms / 1000.0, detail))
}

/// The checks that read the backing directory (the daemon's side) or the
/// workload's output.
#[allow(clippy::too_many_arguments)]
fn verify(
    ctx: &Ctx,
    config: Config,
    w: Workload,
    batch_files: usize,
    dir: &Path,
    bdir: &Path,
    out: &Path,
) -> Res<()> {
    let z = &ctx.sizes;
    let count_files = |d: &Path, size: Option<u64>| -> Res<usize> {
        let mut n = 0;
        let mut bad = None;
        tree::walk(d, &mut |p, md| {
            if md.is_file() {
                n += 1;
                if size.is_some_and(|s| md.len() != s) && bad.is_none() {
                    bad = Some(format!("{} has {} bytes", p.display(), md.len()));
                }
            }
        })?;
        bad.map_or(Ok(n), Err)
    };
    match w {
        Workload::MetaCreate => {
            let n = count_files(bdir, Some(0))?;
            if n != batch_files {
                return Err(format!(
                    "{n} files in the backing directory, expected {batch_files}"
                ));
            }
        }
        Workload::MetaUnlink => {
            let n = count_files(bdir, None)?;
            if n != 0 {
                return Err(format!(
                    "{n} files left in the backing directory after unlink"
                ));
            }
        }
        Workload::SmallWrite => {
            let n = count_files(bdir, Some(z.small_size))?;
            if n != z.small_files {
                return Err(format!(
                    "{n} files in the backing directory, expected {}",
                    z.small_files
                ));
            }
        }
        Workload::SeqWrite => {
            let len = std::fs::metadata(bdir.join("big"))
                .map_err(|e| format!("backing file: {e}"))?
                .len();
            if len != z.seq_bytes {
                return Err(format!(
                    "backing file has {len} bytes, expected {}",
                    z.seq_bytes
                ));
            }
        }
        Workload::Utime => {
            // What applications see: fresh LOOKUPs and GETATTRs through the
            // mount. The backing directory is checked after the unmount
            // (`after_unmount`): a daemon or proxy may apply time updates
            // late, but not lose them.
            drop_caches()?;
            check_utime_times(z, dir)?;
        }
        Workload::TarX => ctx.tree.check_backing(bdir)?,
        Workload::FindStat => {
            let listing =
                std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
            ctx.tree.check_listing(&listing, times_kept(config))?;
        }
        // Checked by the worker itself (every stat) or by fio's byte counts.
        Workload::MetaStat | Workload::SmallRead | Workload::SeqRead | Workload::RandRead => {}
    }
    Ok(())
}

/// Whether a configuration keeps the mtimes tar sets. bindfs links libfuse 2,
/// whose high-level API drops a SETATTR that sets mtime but not atime (what
/// `utimensat` with `UTIME_OMIT` for atime sends, and GNU tar extracts with):
/// through the stacked configuration tar's times are silently lost. That is
/// the comparison layer's bug, not a measurement error, so it is reported as
/// a note instead of failing every run.
pub fn times_kept(config: Config) -> bool {
    config != Config::Stacked
}

/// The note the report prints for configurations that lose tar's times.
pub const STACKED_TIMES_NOTE: &str = "stacked: bindfs (libfuse 2 high-level API) ignores a SETATTR of mtime alone \
     (utimensat with UTIME_OMIT for atime, as GNU tar sends), so tar -x does not keep times through it; \
     find-stat checks types, sizes and names there, not mtimes";

/// Every utime file has the times of the last call that touched it.
fn check_utime_times(z: &Sizes, dir: &Path) -> Res<()> {
    for i in 0..z.utime_files {
        let Some(k) = worker::utime_last_call(i, z.utime_files, z.utime_calls) else {
            continue;
        };
        let (s, ns) = worker::utime_time(k);
        let p = dir.join(worker::utime_name(i));
        let st = nix::sys::stat::lstat(&p).map_err(|e| format!("lstat {}: {e}", p.display()))?;
        if st.st_mtime != s || st.st_mtime_nsec != ns || st.st_atime != s || st.st_atime_nsec != ns
        {
            return Err(format!(
                "{}: atime {}.{:09}, mtime {}.{:09}; the last utimensat set {s}.{ns:09}",
                p.display(),
                st.st_atime,
                st.st_atime_nsec,
                st.st_mtime,
                st.st_mtime_nsec
            ));
        }
    }
    Ok(())
}

/// Checks of the backing directory once the mount is gone (and the daemon,
/// or the proxy, has flushed whatever it held back): the utime workload's
/// times, the extracted tree's sizes and times.
pub fn after_unmount(ctx: &Ctx, config: Config, w: Workload, backing: &Path) -> Res<()> {
    let bdir = backing.join(subdir(w));
    match w {
        Workload::Utime => check_utime_times(&ctx.sizes, &bdir)
            .map_err(|e| format!("after unmount, in the backing directory: {e}")),
        Workload::TarX => ctx
            .tree
            .check_backing_times(&bdir, times_kept(config))
            .map_err(|e| format!("after unmount, in the backing directory: {e}")),
        _ => Ok(()),
    }
}

/// The files of metadata batch `b`: (first index, count).
pub fn meta_range(z: &Sizes, b: usize) -> (usize, usize) {
    let first = b * z.meta_batch;
    (first, z.meta_batch.min(z.meta_files.saturating_sub(first)))
}

/// How many times a group's workloads run, in turn, on one mount.
pub fn batches(group: &[Workload], z: &Sizes) -> usize {
    if group.contains(&Workload::MetaCreate) {
        z.meta_files.div_ceil(z.meta_batch.max(1))
    } else {
        1
    }
}

impl Measured {
    /// Adds another batch of the same workload: times, CPU and counters
    /// add up, peaks take the maximum.
    pub fn add(&mut self, o: &Measured) {
        use crate::mounts::ProcUsage;
        let sum = |a: ProcUsage, b: ProcUsage| ProcUsage {
            cpu_s: a.cpu_s + b.cpu_s,
            peak_rss_kib: a.peak_rss_kib.max(b.peak_rss_kib),
        };
        self.seconds += o.seconds;
        self.window_s += o.window_s;
        self.usage.backend = sum(self.usage.backend, o.usage.backend);
        let add = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        self.machine_busy_s = add(self.machine_busy_s, o.machine_busy_s);
        self.machine_switches = add(self.machine_switches, o.machine_switches);
        self.usage.layer = match (self.usage.layer, o.usage.layer) {
            (Some(a), Some(b)) => Some(sum(a, b)),
            (a, b) => a.or(b),
        };
        self.usage.counters = match (self.usage.counters, o.usage.counters) {
            (Some(a), Some(b)) => Some(crate::mounts::Counters {
                requests: a.requests + b.requests,
                forwarded: a.forwarded + b.forwarded,
                replies: a.replies + b.replies,
                answered_with_error: a.answered_with_error + b.answered_with_error,
                bad_replies: a.bad_replies + b.bad_replies,
                allocations: a.allocations + b.allocations,
                cache_changed: a.cache_changed + b.cache_changed,
            }),
            (a, b) => a.or(b),
        };
        let batches = self.detail["batches"].as_u64().unwrap_or(1) + 1;
        let ops = self.detail["ops"].as_u64().unwrap_or(0) + o.detail["ops"].as_u64().unwrap_or(0);
        self.detail = json!({"batches": batches, "ops": ops, "seconds": self.seconds});
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Workload::*;

    #[test]
    fn what_runs_at_each_level() {
        // One caller: whole groups, as without --callers.
        assert_eq!(to_run(GROUPS[2], &[RandRead], 1), GROUPS[2]);
        // More: the parallel workload and what it needs, not seq-read.
        assert_eq!(
            to_run(GROUPS[2], &[RandRead, SeqRead], 4),
            [SeqWrite, RandRead]
        );
        assert_eq!(
            to_run(GROUPS[0], &[MetaStat], 2),
            [MetaCreate, MetaStat, MetaUnlink]
        );
        assert_eq!(to_run(GROUPS[1], &[SmallRead], 8), [SmallWrite, SmallRead]);
        assert!(to_run(GROUPS[3], &[Utime], 2).is_empty());
    }

    #[test]
    fn levels_of_a_group() {
        assert_eq!(levels(GROUPS[3], &[Utime], &[1, 2, 4]), [1]);
        assert_eq!(levels(GROUPS[1], &[SmallRead], &[2, 4]), [2, 4]);
        // seq-read needs the level of one caller even if not asked for.
        assert_eq!(levels(GROUPS[2], &[SeqRead, RandRead], &[2, 4]), [1, 2, 4]);
        assert_eq!(levels(GROUPS[2], &[SeqRead], &[2, 4]), [1]);
    }
}
