//! fuseproxy-bench: the cost of fuseproxy against a direct mount of the same
//! backend, with and without a cache policy, over FUSE-over-io_uring, and
//! against a stacked FUSE layer (bindfs), as ratios.
//!
//! One run mounts libfuse3's `passthrough_ll` (built at run time from the
//! libfuse3-dev examples) over a directory on local disk in each selected
//! way (four by default) and runs
//! the same workloads on each. Each (round, workload group, configuration)
//! gets a fresh mount and a fresh backing directory; within a round the
//! configurations alternate (their order rotates from round to round and
//! group to group) so that machine drift falls on all of them alike. The
//! report is the median over the rounds and the ratio to direct.
#![deny(unsafe_code)]

mod busy;
mod handoff;
mod mounts;
mod procs;
mod report;
mod tree;
mod uring_param;
mod worker;
mod workloads;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use serde_json::json;

use mounts::{Config, Mounted, Tools};
use procs::Res;
use report::{Failure, Sample};
use workloads::{Sizes, Workload, GROUPS};

const LONG_ABOUT: &str = "\
Mounts libfuse3's passthrough_ll over a directory on local disk in each selected way \
(--configs; the first four by default) and runs the same workloads on each:

  direct       passthrough_ll -f -o source=BACKING MNT
  proxy        fuseproxy MNT -- passthrough_ll -f -o source=BACKING MNT
  proxy-cache  fuseproxy --policy FILE MNT -- passthrough_ll -f -o source=BACKING MNT
               (FILE: [cache] min_entry_timeout = min_attr_timeout = --cache-floor)
  stacked      passthrough_ll -f -o source=BACKING LOWER, then bindfs -f -o big_writes LOWER MNT
  proxy-uring  fuseproxy --kernel-transport uring MNT -- passthrough_ll -f -o source=BACKING MNT
               (not in the default list) what FUSE-over-io_uring toward the kernel saves or costs \
against proxy's read(2)/write(2) on /dev/fuse; sets /sys/module/fuse/parameters/enable_uring \
to Y for the run and restores it.

passthrough_ll runs with its defaults (cache=auto: 1 s entry/attribute timeout, no \
keep_cache; no writeback; multithreaded) in every configuration; --backend-opt adds \
options to all of them alike (--backend-opt cache=never makes its timeouts 0, where \
proxy-cache's floor matters most).

Each (round, workload group, configuration) gets a fresh mount; within a round the \
configurations alternate, in an order that rotates from round to round. The table \
gives the median over the rounds of each workload's timed part and its ratio to \
direct; for the proxy and bindfs it adds their CPU time and peak RSS (VmHWM) per \
workload, and for the proxy the requests the kernel sent it, the messages it carried per \
second (requests + replies, from its SIGUSR1 counters) and its CPU time per request. \
--callers adds a dimension: meta-stat, small-read and rand-read with P parallel callers. JSON (with every sample and the machine) and CSV go to the \
results folder, named with the date and the commit.

Needs root, /dev/fuse, fio, bindfs, tar, gcc, pkg-config and libfuse3-dev (scripts/setup.sh \
installs them), and the release proxy: cargo build --release -p fuseproxy. Exits 1 if \
any workload failed on any configuration (wrong byte count, wrong file, an error), \
2 if the run could not start.";

#[derive(Debug, Parser)]
#[command(
    name = "fuseproxy-bench",
    version,
    about = "Benchmark fuseproxy (with and without a cache policy) against a direct and a stacked FUSE mount.",
    long_about = LONG_ABOUT
)]
struct Cli {
    /// Rounds per (workload, configuration); the report is the median.
    /// [default: 5, or 1 with --smoke]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rounds: Option<u32>,

    /// Tiny sizes and one round: proves the harness works, in seconds. Not
    /// a measurement.
    #[arg(long)]
    smoke: bool,

    /// Configurations, comma-separated: direct, proxy, proxy-cache, stacked,
    /// proxy-uring (not a default: it needs the fuse module parameter
    /// enable_uring, which the harness sets to Y for the run).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,proxy,proxy-cache,stacked"
    )]
    configs: Vec<Config>,

    /// The floor proxy-cache's policy puts under the backend's entry and
    /// attribute timeouts (min_entry_timeout, min_attr_timeout), as the
    /// policy file writes durations.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    cache_floor: String,

    /// Workloads, comma-separated, or "all": meta-create, meta-stat,
    /// meta-unlink, small-write, small-read, seq-write, seq-read, rand-read,
    /// utime, tar-x, find-stat. A workload's prerequisites in its group run
    /// too (unreported).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    workloads: Vec<String>,

    /// Parallel callers, comma-separated levels (e.g. 1,2,4,8): meta-stat,
    /// small-read and rand-read run at each level with that many callers
    /// sharing the same total work (threads of the worker for meta-stat,
    /// fio jobs for the others), each level on its own fresh mounts. The
    /// other workloads run with one caller only. With --smoke, the first
    /// two levels only.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "1",
        value_parser = clap::value_parser!(u32).range(1..=64)
    )]
    callers: Vec<u32>,

    /// Where the backing directories and mountpoints go (local disk); a
    /// fuseproxy-bench/run-* folder is made in it and removed at the end.
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    dir: PathBuf,

    /// Results folder. [default: bench/results in the source tree]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Do not write the JSON and CSV files.
    #[arg(long)]
    no_save: bool,

    /// The fuseproxy binary. [default: fuseproxy next to this binary, i.e.
    /// target/release/fuseproxy: run `cargo build --release -p fuseproxy`]
    #[arg(long, value_name = "PATH")]
    proxy: Option<PathBuf>,

    /// An extra -o option for passthrough_ll in every configuration (e.g.
    /// writeback). May be repeated.
    #[arg(long = "backend-opt", value_name = "OPT")]
    backend_opts: Vec<String>,

    /// An extra argument for fuseproxy, before MOUNTPOINT (e.g.
    /// --proxy-arg=--arena-size=64M). May be repeated. proxy-uring leaves
    /// out --threads and --kernel-transport (one thread serves the ring).
    #[arg(long = "proxy-arg", value_name = "ARG", allow_hyphen_values = true)]
    proxy_args: Vec<String>,

    /// Hold a CPU latency limit of US microseconds (a PM QoS request
    /// through /dev/cpu_dma_latency, root only) for the whole run, every
    /// configuration included, as fuseproxy's --cpu-latency does while
    /// requests flow: to compare that option against a direct mount given
    /// the same. Released when the run ends, however it ends.
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    cpu_latency: Option<u32>,

    /// Time limit of one workload, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    timeout: u64,

    /// Stop at the first failure instead of finishing the run.
    #[arg(long)]
    fail_fast: bool,

    /// Keep the run folder (logs, fio's JSON) even when everything passed.
    #[arg(long)]
    keep: bool,

    #[command(subcommand)]
    sub: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// (internal) one of the own-loop workloads, run by the harness.
    #[command(hide = true)]
    Worker(worker::Args),
}

fn main() {
    let cli = Cli::parse();
    if let Some(Sub::Worker(a)) = &cli.sub {
        std::process::exit(worker::main(a));
    }
    if let Err(e) = procs::catch_signals() {
        eprintln!("fuseproxy-bench: {e}");
        std::process::exit(2);
    }
    let code = match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("\nfuseproxy-bench: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// The progress line on stderr: rewritten in place on a terminal, one line
/// per step otherwise.
struct Progress {
    start: Instant,
    total: usize,
    done: usize,
    tty: bool,
}

impl Progress {
    fn show(&self, msg: &str) {
        let e = self.start.elapsed().as_secs();
        let line = format!(
            "[{:>2}:{:02}] {}/{} {msg}",
            e / 60,
            e % 60,
            self.done + 1,
            self.total
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn note(&self, msg: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K");
        }
        let _ = writeln!(err, "{msg}");
    }

    fn clear(&self) {
        if self.tty {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}

/// The policy file of the proxy-cache configuration: the backend's entry and
/// attribute timeouts raised to `floor` (see bench/README.md for why 10 s).
/// Nothing else: no negative entries, no keep_cache, so that what is
/// measured is the timeouts alone, and every other rule stays off.
fn cache_policy_toml(floor: &str) -> String {
    // A TOML basic string: the floor is checked by `fuseproxy --check`.
    let q = floor.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "# Written by fuseproxy-bench for the proxy-cache configuration.\n\
         [cache]\n\
         min_entry_timeout = \"{q}\"\n\
         min_attr_timeout = \"{q}\"\n"
    )
}

fn check_tool(name: &str, arg: &str) -> Res<()> {
    procs::run_output(Command::new(name).arg(arg), Duration::from_secs(30))
        .map(drop)
        .map_err(|e| format!("{name} is needed (bash scripts/setup.sh installs it): {e}"))
}

/// Builds passthrough_ll from the libfuse3-dev examples into `dir`.
fn build_passthrough(dir: &Path) -> Res<PathBuf> {
    let src = Path::new("/usr/share/doc/libfuse3-dev/examples/passthrough_ll.c");
    if !src.exists() {
        return Err(format!(
            "{} is missing: install libfuse3-dev",
            src.display()
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let flags = procs::run_output(
        Command::new("pkg-config").args(["fuse3", "--cflags", "--libs"]),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("pkg-config fuse3: {e}"))?;
    let out = dir.join("passthrough_ll");
    let tmp = dir.join(format!("passthrough_ll.{}.tmp", std::process::id()));
    procs::run_output(
        Command::new("gcc")
            .args(["-O2", "-Wall", "-o"])
            .arg(&tmp)
            .arg(src)
            .args(flags.split_whitespace()),
        Duration::from_secs(120),
    )
    .map_err(|e| format!("building passthrough_ll: {e}"))?;
    std::fs::rename(&tmp, &out).map_err(|e| format!("rename to {}: {e}", out.display()))?;
    Ok(out)
}

/// Open files allowed to the harness and every process it starts: the soft
/// limit is raised to the hard one (raising the hard limit needs
/// CAP_SYS_RESOURCE, which root does not have everywhere). passthrough_ll
/// keeps an O_PATH descriptor open for every inode the kernel knows; when it
/// runs out, its FLUSH fails with EBADF and its CREATE with EMFILE. That is
/// why the metadata files go in batches.
fn raise_nofile(need: u64) -> Res<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit: {e}"))?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| format!("setrlimit NOFILE {hard}: {e}"))?;
    }
    if hard < need {
        return Err(format!(
            "the open-file limit is {hard}; passthrough_ll needs about {need} here (one descriptor per inode \
             the kernel holds: a metadata batch of files plus the rest): raise `ulimit -Hn`, or run --smoke"
        ));
    }
    Ok(())
}

fn run(cli: &Cli) -> Res<i32> {
    let started = SystemTime::now();
    let t_start = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (it mounts FUSE file systems and drops the page cache)".into());
    }
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| format!("/dev/fuse: {e}"))?;
    std::fs::File::options()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .map_err(|e| format!("/proc/sys/vm/drop_caches must be writable: {e}"))?;

    let sizes = if cli.smoke { Sizes::SMOKE } else { Sizes::FULL };
    raise_nofile(
        sizes
            .meta_batch
            .max(sizes.small_files)
            .max(sizes.tree_files * 2) as u64
            + 1024,
    )?;
    let rounds = cli.rounds.unwrap_or(if cli.smoke { 1 } else { 5 });
    let mut configs: Vec<Config> = Vec::new();
    for c in &cli.configs {
        if !configs.contains(c) {
            configs.push(*c);
        }
    }
    let selected: Vec<Workload> = if cli.workloads.iter().any(|w| w == "all") {
        workloads::ALL.to_vec()
    } else {
        let mut v = Vec::new();
        for name in &cli.workloads {
            let w = Workload::from_name(name.trim()).ok_or_else(|| {
                let all: Vec<&str> = workloads::ALL.iter().map(|w| w.name()).collect();
                format!("unknown workload '{name}' (known: {})", all.join(", "))
            })?;
            if !v.contains(&w) {
                v.push(w);
            }
        }
        v.sort();
        v
    };
    let groups: Vec<&[Workload]> = GROUPS
        .iter()
        .copied()
        .filter(|g| g.iter().any(|w| selected.contains(w)))
        .collect();
    let mut callers: Vec<u32> = Vec::new();
    for &p in &cli.callers {
        if !callers.contains(&p) {
            callers.push(p);
        }
    }
    if cli.smoke && callers.len() > 2 {
        eprintln!(
            "fuseproxy-bench: --smoke: callers {} only (the first two levels)",
            callers[..2]
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        callers.truncate(2);
    }
    // Every caller gets at least one operation of each parallel workload.
    let least = sizes
        .meta_batch
        .min(sizes.small_files)
        .min((sizes.rand_bytes / sizes.rand_block) as usize);
    if let Some(&p) = callers.iter().find(|&&p| p as usize > least) {
        return Err(format!(
            "--callers {p}: more callers than operations to share ({least} in the smallest workload)"
        ));
    }
    let parallel_note = (callers != [1]
        && selected.iter().any(|w| !w.is_parallel())
        && selected.iter().any(|w| w.is_parallel()))
    .then(|| {
        format!(
            "--callers applies to {}; {} ran with one caller only (P = 1)",
            workloads::PARALLEL
                .iter()
                .map(|w| w.name())
                .collect::<Vec<_>>()
                .join(", "),
            selected
                .iter()
                .filter(|w| !w.is_parallel())
                .map(|w| w.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });

    // Tools.
    check_tool("fio", "--version")?;
    check_tool("tar", "--version")?;
    check_tool("gcc", "--version")?;
    check_tool("pkg-config", "--version")?;
    if configs.contains(&Config::Stacked) {
        check_tool("bindfs", "--version")?;
    }
    let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let exe_dir = me
        .parent()
        .ok_or("current_exe has no parent")?
        .to_path_buf();
    let proxy_src = cli
        .proxy
        .clone()
        .unwrap_or_else(|| exe_dir.join("fuseproxy"));
    let any_proxy = configs.iter().any(|c| c.is_proxy());
    if any_proxy && !proxy_src.is_file() {
        return Err(format!(
            "no fuseproxy binary at {}: build it first with `cargo build --release -p fuseproxy`, or pass --proxy PATH",
            proxy_src.display()
        ));
    }
    if cfg!(debug_assertions) || proxy_src.components().any(|c| c.as_os_str() == "debug") {
        eprintln!(
            "fuseproxy-bench: warning: a debug build is being measured; use `cargo run --release -p fuseproxy-bench` and the release fuseproxy"
        );
    }
    let target_dir = exe_dir.parent().unwrap_or(&exe_dir).join("fuseproxy-bench");
    // proxy-uring: the kernel offers FUSE-over-io_uring only while the
    // parameter is Y. Set here, before any round; dropping the guard (the
    // end of this function, whichever way it returns, ^C included) puts the
    // old value back.
    let enable_uring = if configs.contains(&Config::ProxyUring) {
        let g = uring_param::EnableUring::set(Path::new(uring_param::ENABLE_URING))?;
        if g.old() != "Y" {
            eprintln!(
                "fuseproxy-bench: proxy-uring: {} set to Y for the run (it was {}; restored at the end)",
                uring_param::ENABLE_URING,
                g.old()
            );
        }
        let dropped = mounts::uring_dropped_args(&cli.proxy_args);
        if !dropped.is_empty() {
            eprintln!(
                "fuseproxy-bench: proxy-uring: without --proxy-arg {} (the ring is served by one thread, with the configuration's transport)",
                dropped.join(" ")
            );
        }
        Some(g)
    } else {
        None
    };

    // Held until this function returns; the kernel drops the request with
    // the descriptor.
    let _cpu_latency = match cli.cpu_latency {
        Some(us) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/cpu_dma_latency")
                .map_err(|e| format!("--cpu-latency: cannot open /dev/cpu_dma_latency: {e}"))?;
            std::io::Write::write_all(&mut f, &(us.min(i32::MAX as u32) as i32).to_ne_bytes())
                .map_err(|e| format!("--cpu-latency: writing /dev/cpu_dma_latency: {e}"))?;
            eprintln!(
                "fuseproxy-bench: a CPU latency limit of {us} µs is held for the whole run (every configuration)"
            );
            Some(f)
        }
        None => None,
    };

    // The run folder.
    let base = cli.dir.join("fuseproxy-bench");
    let stale = mounts::mounts_under(&base);
    if !stale.is_empty() {
        eprintln!(
            "fuseproxy-bench: warning: mounts left under {} (an earlier run killed hard, or a run in progress): {}",
            base.display(),
            stale.join(" ")
        );
    }
    let run_dir = base.join(format!(
        "run-{}-{}",
        report::stamp(started),
        std::process::id()
    ));
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("mkdir {}: {e}", logs.display()))?;

    let passthrough = build_passthrough(&target_dir)?;
    // A copy of the proxy, so that a rebuild during the run changes nothing.
    let proxy = run_dir.join("fuseproxy");
    if any_proxy {
        std::fs::copy(&proxy_src, &proxy)
            .map_err(|e| format!("copy {}: {e}", proxy_src.display()))?;
    }
    // proxy-cache's policy, in the run folder, checked by the proxy itself.
    let cache_policy = run_dir.join("proxy-cache.toml");
    let cache_policy_text = cache_policy_toml(&cli.cache_floor);
    if configs.contains(&Config::ProxyCache) {
        std::fs::write(&cache_policy, &cache_policy_text)
            .map_err(|e| format!("write {}: {e}", cache_policy.display()))?;
        procs::run_output(
            Command::new(&proxy)
                .arg("--check")
                .arg("--policy")
                .arg(&cache_policy),
            Duration::from_secs(30),
        )
        .map_err(|e| format!("fuseproxy --check --policy {}: {e}", cache_policy.display()))?;
    }
    let tools = Tools {
        passthrough: passthrough.clone(),
        proxy: proxy.clone(),
        backend_opts: cli.backend_opts.clone(),
        proxy_args: cli.proxy_args.clone(),
        cache_policy: cache_policy.clone(),
    };
    let tree = if groups.iter().any(|g| g.contains(&Workload::TarX)) {
        tree::generate(&run_dir, sizes.tree_files)?
    } else {
        tree::Tree {
            tarball: PathBuf::new(),
            entries: Default::default(),
            files: 0,
            bytes: 0,
        }
    };
    let ctx = workloads::Ctx {
        sizes,
        timeout: Duration::from_secs(cli.timeout),
        logs: logs.clone(),
        tree,
        me: me.clone(),
    };
    let machine = report::machine(if any_proxy { &proxy } else { &proxy_src });
    let (sha, dirty) = report::git_commit();

    // The rounds.
    let steps: usize = groups
        .iter()
        .map(|g| {
            workloads::levels(g, &selected, &callers)
                .iter()
                .map(|&p| workloads::to_run(g, &selected, p).len())
                .sum::<usize>()
        })
        .sum::<usize>()
        * configs.len()
        * rounds as usize;
    let mut progress = Progress {
        start: t_start,
        total: steps,
        done: 0,
        tty: std::io::stderr().is_terminal(),
    };
    progress.note(&format!(
        "fuseproxy-bench: {} round(s) of {} workload(s) on {}{}{}; work in {}",
        rounds,
        selected.len(),
        configs
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", "),
        if callers == [1] {
            String::new()
        } else {
            format!(
                ", callers {}",
                callers
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        },
        if cli.smoke { " (smoke sizes)" } else { "" },
        run_dir.display()
    ));
    let mut samples: Vec<Sample> = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    let mut orders = Vec::new();
    'rounds: for round in 1..=rounds {
        for (gi, group) in groups.iter().enumerate() {
            for (pi, &p) in workloads::levels(group, &selected, &callers)
                .iter()
                .enumerate()
            {
                let mut order = configs.clone();
                let n = order.len();
                order.rotate_left((round as usize - 1 + gi + pi) % n);
                orders.push(json!({
                    "round": round,
                    "group": group.iter().map(|w| w.name()).collect::<Vec<_>>(),
                    "callers": p,
                    "order": order.iter().map(|c| c.name()).collect::<Vec<_>>(),
                }));
                let members = workloads::to_run(group, &selected, p);
                for &config in &order {
                    let root = run_dir.join(if p == 1 {
                        format!("r{round}-g{gi}-{}", config.name())
                    } else {
                        format!("r{round}-g{gi}-p{p}-{}", config.name())
                    });
                    let before = failures.len();
                    run_group(
                        &ctx,
                        &tools,
                        config,
                        (round, rounds),
                        p,
                        &members,
                        &selected,
                        &root,
                        &mut progress,
                        &mut samples,
                        &mut failures,
                    );
                    if failures.len() > before {
                        for f in &failures[before..] {
                            progress.note(&format!(
                                "FAILED: round {} {} on {}: {}",
                                f.round, f.what, f.config, f.message
                            ));
                        }
                        if cli.fail_fast {
                            break 'rounds;
                        }
                    }
                    if procs::interrupted() {
                        break 'rounds;
                    }
                }
            }
        }
    }
    progress.clear();
    let interrupted = procs::interrupted();

    // The report.
    let rows = report::summarize(&samples, &selected, &configs, &sizes);
    let duration = t_start.elapsed();
    println!(
        "fuseproxy-bench {}: {} round(s){}, commit {sha}{}, {} CPUs ({}), kernel {}, {:.0} s",
        report::iso(started),
        rounds,
        if cli.smoke {
            ", SMOKE sizes (not a measurement)"
        } else {
            ""
        },
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        duration.as_secs_f64()
    );
    let us = |v: &serde_json::Value| v.as_f64().map_or("?".into(), |x| format!("{x:.1} µs"));
    println!(
        "hand-off between two processes (the floor of each FUSE round trip; the proxy adds two): {} on one CPU, {} across CPUs; \
         CPU of one side per round trip (a wake-up made, a wait woken from): {} on one CPU, {} across",
        us(&machine["handoff_us"]["same_cpu"]),
        us(&machine["handoff_us"]["cross_cpu"]),
        us(&machine["handoff_cpu_us"]["same_cpu"]),
        us(&machine["handoff_cpu_us"]["cross_cpu"]),
    );
    println!(
        "medians over the rounds; P = parallel callers; ratio = median / direct's median at the same P; \
         layer = fuseproxy (proxy, proxy-cache, proxy-uring) or bindfs (stacked); layer RSS = its peak resident memory (VmHWM) \
         during the workload; CPU µs/req = the proxy's CPU time / proxy reqs"
    );
    if configs.contains(&Config::ProxyCache) {
        println!(
            "proxy-cache: fuseproxy --policy with [cache] min_entry_timeout = min_attr_timeout = \"{}\"{}",
            cli.cache_floor,
            if cli.backend_opts.is_empty() {
                String::new()
            } else {
                format!("; backend options: {}", cli.backend_opts.join(" "))
            }
        );
    }
    if let Some(g) = &enable_uring {
        println!(
            "proxy-uring: fuseproxy --kernel-transport uring (the kernel's requests over FUSE-over-io_uring; \
             a mount where the proxy fell back to read(2) fails); {} was {} before the run, Y during it",
            uring_param::ENABLE_URING,
            g.old()
        );
    }
    print!("{}", report::table(&rows));
    let mut notes = Vec::new();
    if configs.contains(&Config::Stacked) && selected.contains(&Workload::FindStat) {
        notes.push(workloads::STACKED_TIMES_NOTE);
    }
    if let Some(n) = &parallel_note {
        notes.push(n);
    }
    for n in &notes {
        println!("note: {n}");
    }

    let mut code = 0;
    if !failures.is_empty() || interrupted {
        code = 1;
        eprintln!("\nFAILURES:");
        for l in report::failure_lines(&failures) {
            eprintln!("  {l}");
        }
        if interrupted {
            eprintln!("  interrupted by a signal");
        }
        eprintln!("logs kept in {}", run_dir.display());
    }

    if !cli.no_save {
        let out = cli
            .out
            .clone()
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
        let name = format!(
            "{}-{sha}{}{}",
            report::stamp(started),
            if dirty { "-dirty" } else { "" },
            if cli.smoke { "-smoke" } else { "" }
        );
        let describe: serde_json::Map<String, serde_json::Value> = workloads::ALL
            .iter()
            .map(|w| (w.name().to_string(), json!(w.describe(&sizes))))
            .collect();
        let doc = json!({
            "schema": 1,
            "tool": "fuseproxy-bench",
            "started": report::iso(started),
            "duration_s": duration.as_secs_f64(),
            "smoke": cli.smoke,
            "rounds": rounds,
            "callers": callers,
            "parallel_workloads": workloads::PARALLEL.iter().map(|w| w.name()).collect::<Vec<_>>(),
            "git": {"commit": sha, "dirty": dirty},
            "machine": machine,
            "load_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
            "sizes": sizes.to_json(),
            "proxy_binary": proxy_src.display().to_string(),
            "proxy_sha256": procs::run_output(Command::new("sha256sum").arg(&proxy_src), Duration::from_secs(30))
                .ok()
                .and_then(|s| s.split_whitespace().next().map(str::to_owned)),
            "passthrough_ll": passthrough.display().to_string(),
            "backend_opts": cli.backend_opts,
            "proxy_args": cli.proxy_args,
            "cpu_latency_us_held": cli.cpu_latency,
            "proxy_cache_policy": configs.contains(&Config::ProxyCache).then_some(&cache_policy_text),
            "enable_uring": enable_uring.as_ref().map(|g| json!({
                "param": uring_param::ENABLE_URING,
                "before": g.old(),
                "during": "Y",
            })),
            "timeout_s": cli.timeout,
            "configs": configs.iter().map(|c| (c.name().to_string(), json!(tools.describe(*c)))).collect::<serde_json::Map<_, _>>(),
            "workloads": selected.iter().map(|w| w.name()).collect::<Vec<_>>(),
            "workload_descriptions": describe,
            "mount_policy": "fresh mount and backing directory per (round, workload group, configuration); configuration order rotates per round and group",
            "seconds": "fio workloads: fio's job_runtime (with several callers, the longest job's); own loops: the loop's time (with several callers, from their common start to the last one's end); tar-x and find-stat: wall time of the command",
            "orders": orders,
            "summary": rows.iter().map(report::row_json).collect::<Vec<_>>(),
            "samples": samples.iter().map(report::sample_json).collect::<Vec<_>>(),
            "failures": failures.iter().map(|f| json!({
                "round": f.round, "config": f.config.name(), "what": f.what, "message": f.message,
            })).collect::<Vec<_>>(),
            "interrupted": interrupted,
            "notes": notes,
        });
        let (j, c) = report::save(&out, &name, &doc, &rows)?;
        println!("results: {} and {}", j.display(), c.display());
    }
    if code == 0 && !cli.keep {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(code)
}

/// One workload group on one configuration with `callers` parallel callers:
/// a fresh mount, its workloads (`group`: those of the group that run at
/// this level) in order, an orderly unmount. Records a sample per selected
/// workload reported at this level (every one at 1 caller, the parallel ones
/// at more) and a failure for anything that went wrong.
#[allow(clippy::too_many_arguments)]
fn run_group(
    ctx: &workloads::Ctx,
    tools: &Tools,
    config: Config,
    (round, rounds): (u32, u32),
    callers: u32,
    group: &[Workload],
    selected: &[Workload],
    root: &Path,
    progress: &mut Progress,
    samples: &mut Vec<Sample>,
    failures: &mut Vec<Failure>,
) {
    let fail = |failures: &mut Vec<Failure>, what: &str, message: String| {
        failures.push(Failure {
            round,
            config,
            what: what.to_string(),
            message,
        })
    };
    let reported = |w: Workload| selected.contains(&w) && (callers == 1 || w.is_parallel());
    let at = if callers == 1 {
        String::new()
    } else {
        format!(" · P={callers}")
    };
    progress.show(&format!(
        "round {round}/{rounds} · {config}{at} · mounting for {}",
        group[0].name()
    ));
    let mut m = match Mounted::start(tools, config, root) {
        Ok(m) => m,
        Err(e) => {
            fail(failures, "mount", e.clone());
            for &w in group {
                if reported(w) {
                    samples.push(Sample {
                        round,
                        workload: w,
                        callers,
                        config,
                        result: Err(format!("no mount: {e}")),
                    });
                }
                progress.done += 1;
            }
            return;
        }
    };
    let mut broken: Option<&str> = None;
    let batches = workloads::batches(group, &ctx.sizes);
    let mut results: Vec<Option<Result<workloads::Measured, String>>> = vec![None; group.len()];
    for b in 0..batches {
        for (i, &w) in group.iter().enumerate() {
            let reported = reported(w);
            progress.show(&format!(
                "round {round}/{rounds} · {}{} · {config}{at}{}",
                w.name(),
                if batches > 1 {
                    format!(" (batch {}/{batches})", b + 1)
                } else {
                    String::new()
                },
                if reported { "" } else { " (prerequisite)" }
            ));
            let r = match broken {
                Some(prev) => Err(format!("not run: {prev} failed before it")),
                None => {
                    let tag = format!("r{round}-{config}-p{callers}-{}-b{b}", w.name());
                    let r = workloads::run(ctx, &mut m, w, b, callers, &tag);
                    if let Err(e) = &r {
                        broken = Some(w.name());
                        fail(failures, w.name(), e.clone());
                    }
                    r
                }
            };
            results[i] = Some(match (results[i].take(), r) {
                (None, r) => r,
                (Some(Err(e)), _) => Err(e),
                (Some(Ok(_)), Err(e)) => Err(e),
                (Some(Ok(mut acc)), Ok(x)) => {
                    acc.add(&x);
                    Ok(acc)
                }
            });
        }
    }
    for (i, &w) in group.iter().enumerate() {
        if reported(w) {
            samples.push(Sample {
                round,
                workload: w,
                callers,
                config,
                result: results[i].take().unwrap_or_else(|| Err("not run".into())),
            });
        }
        progress.done += 1;
    }
    if broken.is_some() {
        m.abort();
        return;
    }
    if let Err(e) = m.stop() {
        fail(failures, "unmount", e);
        return;
    }
    for &w in group {
        if let Err(e) = workloads::after_unmount(ctx, config, w, &m.backing) {
            fail(failures, w.name(), e.clone());
            if let Some(s) = samples.iter_mut().rev().find(|s| {
                s.round == round && s.config == config && s.workload == w && s.callers == callers
            }) {
                s.result = Err(e);
            }
        }
    }
}
