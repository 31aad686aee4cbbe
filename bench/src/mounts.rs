//! The ways of mounting the backend, and the guard that owns a mount:
//! every process it started, every mountpoint, the backing directory. Its
//! `Drop` always cleans up (lazy unmount, then the processes by pid).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::procs::{self, Known, Res};

/// How long a mount may take to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an unmount, a daemon's exit or the proxy's shutdown may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the proxy gets to log its counters after SIGUSR1.
const STATS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the proxy gets to log whether its FUSE-over-io_uring queues are
/// in service, once the mount answered.
const RING_TIMEOUT: Duration = Duration::from_secs(10);

/// The start of the proxy's line when its io_uring queues are in service
/// (`FUSE-over-io_uring: 2 queues of 2 entries, 1028 KiB each, locked`).
const RING_USED: (&str, &str) = ("FUSE-over-io_uring: ", "queues of");
/// The proxy's line when it fell back to read(2).
const RING_NOT_USED: &str = "FUSE-over-io_uring not used:";

/// One of the configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Config {
    /// `passthrough_ll` mounted on MNT by libfuse itself: the reference.
    Direct,
    /// `fuseproxy MNT -- passthrough_ll ... MNT`.
    Proxy,
    /// `fuseproxy --policy FILE MNT -- passthrough_ll ... MNT`, FILE raising
    /// the backend's entry and attribute timeouts to a floor (`[cache]`).
    ProxyCache,
    /// `fuseproxy --kernel-transport uring MNT -- passthrough_ll ... MNT`:
    /// the kernel's requests through FUSE-over-io_uring instead of
    /// read(2)/write(2) on /dev/fuse. Needs the fuse module parameter
    /// `enable_uring` at `Y` (the harness sets it for the run), and one
    /// forwarding thread (no `--threads`).
    ProxyUring,
    /// `passthrough_ll` mounted on LOWER, `bindfs -o big_writes LOWER MNT`
    /// on top: the cost of a second FUSE layer, for comparison.
    Stacked,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::Proxy => "proxy",
            Config::ProxyCache => "proxy-cache",
            Config::ProxyUring => "proxy-uring",
            Config::Stacked => "stacked",
        }
    }

    /// Whether fuseproxy is the layer (stopped by SIGTERM, counted by
    /// SIGUSR1).
    pub fn is_proxy(self) -> bool {
        matches!(
            self,
            Config::Proxy | Config::ProxyCache | Config::ProxyUring
        )
    }

    /// The process between the kernel and the backend, if any.
    pub fn layer_name(self) -> Option<&'static str> {
        match self {
            Config::Direct => None,
            Config::Proxy | Config::ProxyCache | Config::ProxyUring => Some("fuseproxy"),
            Config::Stacked => Some("bindfs"),
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What every mount needs to know, fixed for the run.
pub struct Tools {
    /// The passthrough_ll binary built for this run.
    pub passthrough: PathBuf,
    /// The fuseproxy binary (a copy taken at start, so that a rebuild by
    /// someone else during the run changes nothing).
    pub proxy: PathBuf,
    /// Extra `-o` options for passthrough_ll, the same in every config.
    pub backend_opts: Vec<String>,
    /// Extra arguments for fuseproxy, before MOUNTPOINT.
    pub proxy_args: Vec<String>,
    /// The policy file of `proxy-cache` (written by the harness into the
    /// run folder, checked with `fuseproxy --check` at start).
    pub cache_policy: PathBuf,
}

impl Tools {
    fn backend_cmd(&self, backing: &Path, mnt: &Path) -> Command {
        let mut c = Command::new(&self.passthrough);
        c.args(self.backend_args(backing, mnt));
        c
    }

    /// fuseproxy's own arguments (before MOUNTPOINT) in a proxy
    /// configuration: `--proxy-arg`s, `--policy FILE` for proxy-cache, and
    /// `--kernel-transport uring` for proxy-uring (whose `--proxy-arg`s lose
    /// any `--threads` and `--kernel-transport`: the proxy refuses the ring
    /// with more than one thread, and the transport is the configuration's).
    fn proxy_own_args(&self, config: Config) -> Vec<String> {
        match config {
            Config::ProxyCache => {
                let mut v = self.proxy_args.clone();
                v.push("--policy".into());
                v.push(self.cache_policy.display().to_string());
                v
            }
            Config::ProxyUring => {
                let (mut v, _) = without_options(&self.proxy_args, URING_OWN);
                v.push("--kernel-transport".into());
                v.push("uring".into());
                v
            }
            _ => self.proxy_args.clone(),
        }
    }

    fn backend_args(&self, backing: &Path, mnt: &Path) -> Vec<String> {
        let mut v = vec![
            "-f".to_string(),
            "-o".into(),
            format!("source={}", backing.display()),
        ];
        for o in &self.backend_opts {
            v.push("-o".into());
            v.push(o.clone());
        }
        v.push(mnt.display().to_string());
        v
    }

    /// The command lines of a configuration, with placeholders, for the
    /// report.
    pub fn describe(&self, config: Config) -> Vec<String> {
        let pll = |mnt: &str| {
            format!(
                "passthrough_ll {}",
                self.backend_args(Path::new("{backing}"), Path::new(mnt))
                    .join(" ")
            )
        };
        match config {
            Config::Direct => vec![pll("{mnt}")],
            Config::Proxy | Config::ProxyCache | Config::ProxyUring => {
                let mut p = String::from("fuseproxy");
                for a in &self.proxy_own_args(config) {
                    p.push(' ');
                    p.push_str(a);
                }
                vec![format!("{p} {{mnt}} -- {}", pll("{mnt}"))]
            }
            Config::Stacked => vec![
                pll("{lower}"),
                "bindfs -f -o big_writes {lower} {mnt}".into(),
            ],
        }
    }
}

/// A process of a mount, with its role.
struct Proc {
    role: &'static str,
    child: Child,
    log: PathBuf,
}

/// CPU and memory of one process over one workload.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcUsage {
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
}

/// The proxy's counters, from its SIGUSR1 line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub forwarded: u64,
    pub replies: u64,
    pub answered_with_error: u64,
    pub bad_replies: u64,
    pub allocations: u64,
    /// Timeouts or open flags the `[cache]` rule changed in replies (0
    /// without a policy).
    pub cache_changed: u64,
}

/// Readings taken before a workload.
pub struct Before {
    layer_ticks: Option<u64>,
    backend_ticks: u64,
    counters: Option<Counters>,
}

/// What one workload cost the mount's processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub layer: Option<ProcUsage>,
    pub backend: ProcUsage,
    /// Deltas of the proxy's counters (proxy config only).
    pub counters: Option<Counters>,
}

/// A live mount of one configuration. Drop cleans up whatever is left.
pub struct Mounted {
    pub config: Config,
    /// Holds backing/, mnt/ and, stacked, lower/ and the daemons' logs.
    root: PathBuf,
    pub mnt: PathBuf,
    pub backing: PathBuf,
    /// Mountpoints, top first.
    mounts: Vec<PathBuf>,
    /// Processes we started, top first.
    procs: Vec<Proc>,
    /// The proxy's backend (its child, not ours).
    foreign: Option<Known>,
    layer_pid: Option<i32>,
    backend_pid: i32,
    proxy_log: Option<PathBuf>,
    stopped: bool,
}

impl Mounted {
    /// Mounts `config` in the fresh directory `root` (which must not exist),
    /// and waits until the mount answers.
    pub fn start(tools: &Tools, config: Config, root: &Path) -> Res<Mounted> {
        std::fs::create_dir_all(root).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
        let backing = root.join("backing");
        let mnt = root.join("mnt");
        for d in [&backing, &mnt] {
            std::fs::create_dir(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let mut m = Mounted {
            config,
            root: root.to_path_buf(),
            mnt: mnt.clone(),
            backing: backing.clone(),
            mounts: Vec::new(),
            procs: Vec::new(),
            foreign: None,
            layer_pid: None,
            backend_pid: 0,
            proxy_log: None,
            stopped: false,
        };
        match config {
            Config::Direct => {
                let mut cmd = tools.backend_cmd(&backing, &mnt);
                m.launch("passthrough_ll", &mut cmd, &mnt)?;
                m.backend_pid = m.procs[0].child.id() as i32;
            }
            Config::Proxy | Config::ProxyCache | Config::ProxyUring => {
                let mut cmd = Command::new(&tools.proxy);
                cmd.args(tools.proxy_own_args(config))
                    .arg(&mnt)
                    .arg("--")
                    .arg(&tools.passthrough)
                    .args(tools.backend_args(&backing, &mnt));
                m.launch("fuseproxy", &mut cmd, &mnt)?;
                let proxy = m.procs[0].child.id() as i32;
                m.layer_pid = Some(proxy);
                m.proxy_log = Some(m.procs[0].log.clone());
                // The backend is the proxy's only child; it exists once the
                // mount answered (INIT went through it).
                let end = Instant::now() + MOUNT_TIMEOUT;
                let backend = loop {
                    if let Some(k) = procs::children_of(proxy)
                        .first()
                        .and_then(|&p| Known::new(p))
                    {
                        break k;
                    }
                    if Instant::now() >= end {
                        return Err(format!(
                            "fuseproxy (pid {proxy}) has no backend child{}",
                            m.log_tail()
                        ));
                    }
                    procs::sleep(Duration::from_millis(10))?;
                };
                m.foreign = Some(backend);
                m.backend_pid = backend.pid;
                if config == Config::ProxyCache {
                    // The mount's first stat (in `launch`) got a reply with
                    // passthrough_ll's timeouts: the floor must have raised
                    // them, or this configuration would measure plain proxy.
                    let c = m.proxy_counters()?;
                    if c.cache_changed == 0 {
                        return Err(format!(
                            "fuseproxy --policy {} changed no cache timeout in the mount's first replies \
                             (is the backend's own timeout already at or above the floor?){}",
                            tools.cache_policy.display(),
                            m.log_tail()
                        ));
                    }
                }
                if config == Config::ProxyUring {
                    // Otherwise this configuration would measure plain
                    // proxy under another name.
                    m.ring_in_service()?;
                }
            }
            Config::Stacked => {
                let lower = root.join("lower");
                std::fs::create_dir(&lower)
                    .map_err(|e| format!("mkdir {}: {e}", lower.display()))?;
                let mut cmd = tools.backend_cmd(&backing, &lower);
                m.launch("passthrough_ll", &mut cmd, &lower)?;
                m.backend_pid = m.procs[0].child.id() as i32;
                let mut cmd = Command::new("bindfs");
                cmd.args(["-f", "-o", "big_writes"]).arg(&lower).arg(&mnt);
                m.launch("bindfs", &mut cmd, &mnt)?;
                m.layer_pid = Some(m.procs[0].child.id() as i32);
            }
        }
        Ok(m)
    }

    /// Starts one daemon and waits until `at` is a FUSE mount that answers.
    /// The newest process and mount go first in the lists (top first).
    fn launch(&mut self, role: &'static str, cmd: &mut Command, at: &Path) -> Res<()> {
        let log = self.root.join(format!("{role}.log"));
        let child = procs::spawn(cmd, &log, &log)?;
        self.procs.insert(0, Proc { role, child, log });
        let end = Instant::now() + MOUNT_TIMEOUT;
        loop {
            procs::check_interrupt()?;
            if let Ok(Some(st)) = self.procs[0].child.try_wait() {
                return Err(format!(
                    "{role} exited ({st}) before {} was mounted{}",
                    at.display(),
                    self.log_tail()
                ));
            }
            if is_fuse_mount(at) {
                if !self.mounts.iter().any(|m| m == at) {
                    self.mounts.insert(0, at.to_path_buf());
                }
                let p = at.to_path_buf();
                if procs::bounded(Duration::from_secs(5), "stat", move || {
                    std::fs::metadata(p).is_ok()
                })
                .unwrap_or(false)
                {
                    return Ok(());
                }
            }
            if Instant::now() >= end {
                return Err(format!(
                    "{} not mounted after {MOUNT_TIMEOUT:?}{}",
                    at.display(),
                    self.log_tail()
                ));
            }
            procs::sleep(Duration::from_millis(5))?;
        }
    }

    /// The last lines of every daemon log, for error messages.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(8);
            if lines.is_empty() {
                continue;
            }
            s.push_str(&format!("\n  --- {} log ({}):", p.role, p.log.display()));
            for l in &lines[from..] {
                s.push_str("\n  ");
                s.push_str(l);
            }
        }
        s
    }

    /// Fails if a daemon of this mount has exited.
    pub fn check_alive(&mut self) -> Res<()> {
        for i in 0..self.procs.len() {
            if let Ok(Some(st)) = self.procs[i].child.try_wait() {
                let role = self.procs[i].role;
                return Err(format!(
                    "{role} exited during the workload ({st}){}",
                    self.log_tail()
                ));
            }
        }
        if let Some(k) = self.foreign {
            if !k.alive() {
                return Err(format!(
                    "the proxy's backend (pid {}) is gone{}",
                    k.pid,
                    self.log_tail()
                ));
            }
        }
        Ok(())
    }

    /// Readings before a workload: peak RSS reset, CPU ticks, the proxy's
    /// counters.
    pub fn before(&mut self) -> Res<Before> {
        let mut layer_ticks = None;
        if let Some(p) = self.layer_pid {
            procs::reset_peak_rss(p)?;
            layer_ticks = Some(procs::cpu_ticks(p)?);
        }
        procs::reset_peak_rss(self.backend_pid)?;
        let backend_ticks = procs::cpu_ticks(self.backend_pid)?;
        let counters = if self.config.is_proxy() {
            Some(self.proxy_counters()?)
        } else {
            None
        };
        Ok(Before {
            layer_ticks,
            backend_ticks,
            counters,
        })
    }

    /// Readings after a workload, as deltas from `before`.
    pub fn after(&mut self, before: &Before) -> Res<Usage> {
        let tck = procs::clk_tck() as f64;
        let layer = match (self.layer_pid, before.layer_ticks) {
            (Some(p), Some(t0)) => Some(ProcUsage {
                cpu_s: procs::cpu_ticks(p)?.saturating_sub(t0) as f64 / tck,
                peak_rss_kib: procs::peak_rss_kib(p)?,
            }),
            _ => None,
        };
        let backend = ProcUsage {
            cpu_s: procs::cpu_ticks(self.backend_pid)?.saturating_sub(before.backend_ticks) as f64
                / tck,
            peak_rss_kib: procs::peak_rss_kib(self.backend_pid)?,
        };
        let counters = match before.counters {
            Some(c0) => {
                let c1 = self.proxy_counters()?;
                Some(Counters {
                    requests: c1.requests.saturating_sub(c0.requests),
                    forwarded: c1.forwarded.saturating_sub(c0.forwarded),
                    replies: c1.replies.saturating_sub(c0.replies),
                    answered_with_error: c1
                        .answered_with_error
                        .saturating_sub(c0.answered_with_error),
                    bad_replies: c1.bad_replies.saturating_sub(c0.bad_replies),
                    // Already a delta: the proxy reports allocations since
                    // its previous dump.
                    allocations: c1.allocations,
                    cache_changed: c1.cache_changed.saturating_sub(c0.cache_changed),
                })
            }
            None => None,
        };
        Ok(Usage {
            layer,
            backend,
            counters,
        })
    }

    /// SIGUSR1 to the proxy, and its new `stats:` line, parsed.
    fn proxy_counters(&mut self) -> Res<Counters> {
        let log = self.proxy_log.clone().ok_or("no proxy log")?;
        let pid = self.layer_pid.ok_or("no proxy pid")?;
        let count = |text: &str| text.matches(" stats: ").count();
        let seen = count(&std::fs::read_to_string(&log).unwrap_or_default());
        nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGUSR1)
            .map_err(|e| format!("SIGUSR1 to fuseproxy: {e}"))?;
        let end = Instant::now() + STATS_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if count(&text) > seen {
                let line = text
                    .lines()
                    .rfind(|l| l.contains(" stats: "))
                    .unwrap_or_default();
                return parse_counters(line);
            }
            self.check_alive()?;
            if Instant::now() >= end {
                return Err(format!(
                    "fuseproxy logged no stats line within {STATS_TIMEOUT:?} of SIGUSR1{}",
                    self.log_tail()
                ));
            }
            procs::sleep(Duration::from_millis(2))?;
        }
    }

    /// proxy-uring: waits for the proxy's line saying whether its
    /// FUSE-over-io_uring queues are in service (the proxy logs one or the
    /// other once INIT is answered, which the mount's first stat waited
    /// for). An error if it fell back to read(2), or said nothing.
    fn ring_in_service(&mut self) -> Res<()> {
        let log = self.proxy_log.clone().ok_or("no proxy log")?;
        let end = Instant::now() + RING_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains(RING_NOT_USED)) {
                return Err(format!(
                    "proxy-uring: fuseproxy fell back to read(2) on /dev/fuse, so this mount would \
                     measure plain proxy: {}",
                    l.trim()
                ));
            }
            if text.lines().any(|l| {
                l.find(RING_USED.0)
                    .is_some_and(|i| l[i + RING_USED.0.len()..].contains(RING_USED.1))
            }) {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() >= end {
                return Err(format!(
                    "proxy-uring: fuseproxy logged neither \"{}... {}\" nor \"{RING_NOT_USED}\" \
                     within {RING_TIMEOUT:?} of the mount (is it a build without --kernel-transport uring?){}",
                    RING_USED.0,
                    RING_USED.1,
                    self.log_tail()
                ));
            }
            procs::sleep(Duration::from_millis(2))?;
        }
    }

    /// Orderly end: unmount (SIGTERM for the proxy) and wait for every daemon.
    /// An error means the configuration misbehaved on the way out.
    pub fn stop(&mut self) -> Res<()> {
        let r = self.stop_inner();
        self.stopped = r.is_ok();
        r
    }

    fn stop_inner(&mut self) -> Res<()> {
        match self.config {
            Config::Proxy | Config::ProxyCache | Config::ProxyUring => {
                let proc = &mut self.procs[0];
                nix::sys::signal::kill(Pid::from_raw(proc.child.id() as i32), Signal::SIGTERM)
                    .map_err(|e| format!("SIGTERM to fuseproxy: {e}"))?;
                match procs::wait_bounded(&mut proc.child, STOP_TIMEOUT)? {
                    Some((st, _)) if st.success() => {}
                    Some((st, _)) => {
                        return Err(format!(
                            "fuseproxy exited with {st} after SIGTERM (expected 0){}",
                            self.log_tail()
                        ))
                    }
                    None => {
                        return Err(format!(
                            "fuseproxy still running {STOP_TIMEOUT:?} after SIGTERM{}",
                            self.log_tail()
                        ))
                    }
                }
                if is_fuse_mount(&self.mnt) {
                    return Err(format!(
                        "fuseproxy exited but {} is still mounted",
                        self.mnt.display()
                    ));
                }
                if let Some(k) = self.foreign {
                    let end = Instant::now() + STOP_TIMEOUT;
                    while k.alive() {
                        if Instant::now() >= end {
                            return Err(format!(
                                "the proxy's backend (pid {}) still runs {STOP_TIMEOUT:?} after the proxy exited",
                                k.pid
                            ));
                        }
                        procs::sleep(Duration::from_millis(10))?;
                    }
                }
            }
            Config::Direct | Config::Stacked => {
                // Top first: bindfs, then the passthrough_ll under it.
                for i in 0..self.procs.len() {
                    let at = self.mounts[i].clone();
                    let role = self.procs[i].role;
                    let p = at.clone();
                    procs::bounded(STOP_TIMEOUT, "umount", move || {
                        umount2(&p, MntFlags::empty())
                    })?
                    .map_err(|e| format!("umount {}: {e}", at.display()))?;
                    match procs::wait_bounded(&mut self.procs[i].child, STOP_TIMEOUT)? {
                        Some((st, _)) if st.success() => {}
                        Some((st, _)) => {
                            return Err(format!(
                                "{role} exited with {st} after umount{}",
                                self.log_tail()
                            ))
                        }
                        None => {
                            return Err(format!(
                                "{role} still running {STOP_TIMEOUT:?} after umount {}",
                                at.display()
                            ))
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.abort();
        // 4. The directory, unless something is still mounted in it.
        if self.mounts.iter().any(|m| is_fuse_mount(m)) {
            eprintln!(
                "\nfuseproxy-bench: leaving {} in place: still mounted",
                self.root.display()
            );
        } else if self.stopped {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            // Keep the logs of a failed mount; drop the data.
            let _ = std::fs::remove_dir_all(&self.backing);
        }
    }
}

impl Mounted {
    /// Tears everything down now, without asking: what `Drop` does on any
    /// failure. Idempotent.
    pub fn abort(&mut self) {
        // 1. Detach every mount still there (never blocks on the daemon).
        for m in &self.mounts {
            if is_fuse_mount(m) {
                let _ = umount2(m, MntFlags::MNT_DETACH);
            }
        }
        // 2. Our own processes, by their (unreaped) pid: SIGTERM, then SIGKILL.
        //    A killed daemon closes its /dev/fuse: the connection is aborted
        //    and anything blocked on it returns.
        for p in &mut self.procs {
            if !procs::stop_child(&mut p.child, Duration::from_secs(3)) {
                eprintln!(
                    "\nfuseproxy-bench: {} (pid {}) did not exit after SIGKILL",
                    p.role,
                    p.child.id()
                );
            }
        }
        // 3. The proxy's backend, if it outlived the proxy.
        if let Some(k) = self.foreign {
            if k.alive() && !k.kill(Duration::from_secs(5)) {
                eprintln!(
                    "\nfuseproxy-bench: the proxy's backend (pid {}) survived SIGKILL",
                    k.pid
                );
            }
        }
    }
}

/// fuseproxy's options that proxy-uring sets itself (each takes a value).
const URING_OWN: &[&str] = &["--threads", "--kernel-transport"];

/// `args` without the long options named in `names` (as `--name=V` or
/// `--name V`, each taking a value), and the ones removed.
pub fn without_options(args: &[String], names: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let name = a.split_once('=').map_or(a.as_str(), |(n, _)| n);
        if !names.contains(&name) {
            kept.push(a.clone());
            continue;
        }
        dropped.push(a.clone());
        if !a.contains('=') {
            if let Some(v) = it.next() {
                dropped.push(v.clone());
            }
        }
    }
    (kept, dropped)
}

/// The `--proxy-arg`s proxy-uring leaves out (see `Tools::proxy_own_args`).
pub fn uring_dropped_args(args: &[String]) -> Vec<String> {
    without_options(args, URING_OWN).1
}

/// True if `path` is a fuse / fuse.* mount point in this namespace.
pub fn is_fuse_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            return false;
        };
        f.get(4).is_some_and(|mp| unescape(mp) == want)
            && f.get(sep + 1)
                .is_some_and(|t| *t == "fuse" || t.starts_with("fuse."))
    })
}

/// Mount points under `dir` (stale mounts of an earlier run).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = format!("{}/", dir.to_string_lossy().trim_end_matches('/'));
    info.lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `... stats: requests=N forwarded=N replies=N ... allocations=N`.
/// Fields are found by ` NAME=` (a space before the name), so that
/// `replies=` is not read out of `late_replies=`, nor `forwarded=` out of
/// `times_forwarded=`; their order does not matter.
pub fn parse_counters(line: &str) -> Res<Counters> {
    let find = |name: &str| -> Option<usize> {
        let key = format!(" {name}=");
        line.find(&key).map(|i| i + key.len())
    };
    let field = |name: &str| -> Res<u64> {
        let i =
            find(name).ok_or_else(|| format!("no {name}= in the proxy's stats line: {line}"))?;
        let rest = &line[i..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end]
            .parse()
            .map_err(|_| format!("bad {name}= in the proxy's stats line: {line}"))
    };
    Ok(Counters {
        requests: field("requests")?,
        forwarded: field("forwarded")?,
        replies: field("replies")?,
        answered_with_error: field("answered_with_error")?,
        bad_replies: field("bad_replies")?,
        allocations: field("allocations")?,
        // Only since policy files: 0 from an older proxy (which takes no
        // --policy, so runs only the plain proxy configuration).
        cache_changed: match find("cache_changed") {
            Some(_) => field("cache_changed")?,
            None => 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse() {
        // Before policy files.
        let l =
            "Nov 25 03:05:01.123 INFO stats: requests=10 forwarded=9 replies=8 notifications=0 \
                 answered_with_error=1 injected=0 bad_replies=2 inflight=0 free_slots=32/32 \
                 stale_writes=0 rejected_writes=0 allocations=0";
        let c = parse_counters(l).unwrap();
        assert_eq!(
            c,
            Counters {
                requests: 10,
                forwarded: 9,
                replies: 8,
                answered_with_error: 1,
                bad_replies: 2,
                allocations: 0,
                cache_changed: 0,
            }
        );
        assert!(parse_counters("stats: nothing").is_err());
    }

    #[test]
    fn counters_parse_with_policy_fields() {
        // The line as fuseproxy logs it with policy files: fields whose names
        // end like the ones read (times_forwarded, late_replies) come after
        // them, and the values differ so a wrong match shows.
        let l =
            "Nov 25 03:05:01.123 INFO stats: requests=10 forwarded=9 replies=8 notifications=0 \
                 answered_with_error=1 injected=0 bad_replies=2 inflight=0 free_slots=32/32 \
                 stale_writes=0 rejected_writes=0 times_acked=5 times_coalesced=0 \
                 times_forwarded=77 times_flushes=1 times_flush_errors=0 times_pending=0 held=0 \
                 cache_clears=0 denied=3 faulted=0 delayed=0 deadlines_hit=0 late_replies=66 \
                 flush_retries=0 flush_gave_up=0 init_rewrites=0 cache_changed=42 \
                 negative_entries=0 reloads=1 allocations=4";
        let c = parse_counters(l).unwrap();
        assert_eq!(
            c,
            Counters {
                requests: 10,
                forwarded: 9,
                replies: 8,
                answered_with_error: 1,
                bad_replies: 2,
                allocations: 4,
                cache_changed: 42,
            }
        );
        // Fields in another order read the same.
        let r = "INFO stats: late_replies=66 times_forwarded=77 allocations=4 cache_changed=42 \
                 bad_replies=2 answered_with_error=1 replies=8 forwarded=9 requests=10";
        assert_eq!(parse_counters(r).unwrap(), c);
    }

    #[test]
    fn uring_args_lose_threads() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let args = v(&["--spin-us=0", "--threads", "2", "-o", "ro", "--threads=3"]);
        let (kept, dropped) = without_options(&args, URING_OWN);
        assert_eq!(kept, v(&["--spin-us=0", "-o", "ro"]));
        assert_eq!(dropped, v(&["--threads", "2", "--threads=3"]));
        let t = Tools {
            passthrough: "pll".into(),
            proxy: "fp".into(),
            backend_opts: vec![],
            proxy_args: v(&["--kernel-transport=read", "--threads=2"]),
            cache_policy: "p.toml".into(),
        };
        assert_eq!(
            t.proxy_own_args(Config::ProxyUring),
            v(&["--kernel-transport", "uring"])
        );
        assert_eq!(
            t.proxy_own_args(Config::Proxy),
            v(&["--kernel-transport=read", "--threads=2"])
        );
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }
}
