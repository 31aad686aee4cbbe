//! How a fuseproxy session ends, over libfuse's passthrough_ll.
//!
//! - The backend is SIGKILLed while requests wait in it (it was SIGSTOPped
//!   first; a stat, a pread and a pwrite per thread are shown in flight by
//!   the stats line): every waiting caller gets EIO within 2 s, the mount
//!   disappears, and the proxy exits with status 1 and a last line naming
//!   the signal and the number of requests answered.
//! - A user's `umount MOUNTPOINT`, SIGTERM, SIGINT or SIGHUP: the mount
//!   disappears, the backend process is gone, and the proxy exits with 0.
//! - A backend that daemonizes (passthrough_ll without `-f`): the process
//!   the proxy started exits at once, yet the mount works through its
//!   daemon, and SIGTERM still ends the proxy and the daemon.
//!
//! Each test forces Proxy mode (`raw_proxy_args`), whatever
//! `FUSEPROXY_TEST_MODE` says: a direct mount has no proxy to observe.

mod common;

use common::stats::{dump_stats, stat_field};

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::{wait_until, Mode, Mount, MountBuilder, ProcId, Signal};

/// How long a caller blocked in the backend may wait for its error once
/// the backend is killed.
const ANSWER_BOUND: Duration = Duration::from_secs(2);
/// How long the proxy may take to exit after the session ends: its
/// shutdown grace (5 s) plus a margin.
const EXIT_BOUND: Duration = Duration::from_secs(10);

/// Held for writing by the test that stops its backend, for reading by the
/// others. While a backend is stopped, every FUSE file the test process has
/// open on it hangs a close(2) in FLUSH, and an exec(2) closes the
/// close-on-exec ones: a proxy that another test of this binary spawns
/// then sits in exec, and reading its /proc/PID/stat (the harness does)
/// blocks too.
static STOPPING: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    STOPPING.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    STOPPING.write().unwrap_or_else(|e| e.into_inner())
}

/// SIGKILLs the backend on drop (if it is still the same process): a test
/// that fails while the backend is stopped must not leave the closes of its
/// files waiting forever. Declared after those files, so it drops first.
struct KillOnDrop(ProcId);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.signal(Signal::SIGKILL);
    }
}

/// `fuseproxy {mnt} -- passthrough_ll [-f] -o source={backing} EXTRA... {mnt}`.
fn proxy_over_passthrough(foreground: bool, extra: &[&str]) -> MountBuilder {
    let pll = common::passthrough_ll().to_str().expect("UTF-8 path");
    let mut args = vec!["{mnt}", "--", pll];
    if foreground {
        args.push("-f");
    }
    args.extend(["-o", "source={backing}"]);
    args.extend(extra);
    args.push("{mnt}");
    MountBuilder::new(Mode::Proxy, Vec::<&str>::new()).raw_proxy_args(args)
}

/// The backend's pid from the start-up line (`..., backend pid N, ...`).
fn backend_pid(log: &str) -> i32 {
    let line = log
        .lines()
        .find(|l| l.contains("mounted ") && l.contains("backend pid "))
        .unwrap_or_else(|| panic!("no start-up line in the proxy's log:\n{log}"));
    let rest = &line[line.find("backend pid ").unwrap() + "backend pid ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {line:?}"))
}

/// The backend as a [`ProcId`] (pid + start time), checked to be a child of
/// the proxy, so that a recycled pid is never mistaken for it.
fn backend_proc(m: &Mount) -> ProcId {
    let pid = backend_pid(&m.proxy_log());
    m.descendants()
        .into_iter()
        .find(|p| p.pid == pid)
        .unwrap_or_else(|| panic!("backend pid {pid} is not a descendant of the proxy"))
}

/// The last non-empty line of the log.
fn last_line(log: &str) -> &str {
    log.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

fn errno_name(e: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(e))
}

/// What a blocked caller got, and when.
struct Outcome {
    what: String,
    result: Result<(), i32>,
    at: Instant,
}

fn io_result<T>(r: std::io::Result<T>) -> Result<(), i32> {
    r.map(|_| ()).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

#[test]
fn backend_killed_with_requests_in_flight() {
    // Entries and attributes cached for a day: the directories walked
    // through are never revalidated, so each blocked call below has exactly
    // one request in the backend (a LOOKUP of a never-seen name, a READ of
    // pages a fresh open dropped, a write-through WRITE) and nothing is
    // re-sent after the proxy's EIO. Each new name is looked up in its own
    // directory: without FUSE_PARALLEL_DIROPS (passthrough_ll does not ask
    // for it) the kernel holds the directory's lock for a whole LOOKUP.
    let _alone = exclusive();
    let b = proxy_over_passthrough(true, &["-o", "timeout=86400"]);
    let mut m = b.mount();
    const N: usize = 3;
    for i in 0..N {
        fs::create_dir(m.path(format!("d{i}"))).unwrap();
        fs::write(m.path(format!("r{i}")), vec![b'r'; 65536]).unwrap();
        fs::write(m.path(format!("w{i}")), b"").unwrap();
    }
    // The directories' entries are cached from here on.
    for i in 0..N {
        fs::metadata(m.path(format!("d{i}"))).unwrap();
    }
    let readers: Vec<fs::File> = (0..N)
        .map(|i| fs::File::open(m.path(format!("r{i}"))).unwrap())
        .collect();
    // One write each now: the first write to a file also asks the backend
    // for security.capability, which would be the request left waiting.
    let writers: Vec<fs::File> = (0..N)
        .map(|i| {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(m.path(format!("w{i}")))
                .unwrap();
            f.write_at(b"warm", 0).unwrap();
            f
        })
        .collect();

    let backend = backend_proc(&m);
    let inflight_before = stat_field(&dump_stats(&mut m), "inflight");
    common::send_signal(backend.pid, Signal::SIGSTOP).expect("SIGSTOP the backend");
    let _killer = KillOnDrop(backend);
    assert!(
        wait_until(Duration::from_secs(5), || common::all_threads_stopped(
            backend.pid
        )),
        "the backend's threads did not all stop within 5 s"
    );

    let (tx, rx) = mpsc::channel::<Outcome>();
    let mut launched = 0;
    for i in 0..N {
        let p = m.path(format!("d{i}/new{i}"));
        let tx1 = tx.clone();
        std::thread::spawn(move || {
            let result = io_result(fs::metadata(&p));
            let _ = tx1.send(Outcome {
                what: format!("stat {}", p.display()),
                result,
                at: Instant::now(),
            });
        });
        let f = readers[i].try_clone().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let result = io_result(f.read_at(&mut buf, 0));
            let _ = tx2.send(Outcome {
                what: format!("pread r{i}"),
                result,
                at: Instant::now(),
            });
        });
        let f = writers[i].try_clone().unwrap();
        let tx3 = tx.clone();
        std::thread::spawn(move || {
            let result = io_result(f.write_at(&[b'w'; 4096], 0));
            let _ = tx3.send(Outcome {
                what: format!("pwrite w{i}"),
                result,
                at: Instant::now(),
            });
        });
        launched += 3;
    }
    drop(tx);

    // Every call must reach the stopped backend: the proxy keeps reading
    // the device and counts them in flight.
    let want = inflight_before + launched as u64;
    let mut inflight = 0;
    let all_sent = wait_until(Duration::from_secs(5), || {
        inflight = stat_field(&dump_stats(&mut m), "inflight");
        inflight >= want
    });
    assert!(
        all_sent,
        "only {inflight} requests in flight after 5 s, expected at least {want}"
    );
    let early: Vec<Outcome> = rx.try_iter().collect();
    assert!(
        early.is_empty(),
        "calls returned while the backend was stopped: {:?}",
        early
            .iter()
            .map(|o| (&o.what, o.result))
            .collect::<Vec<_>>()
    );

    let killed_at = Instant::now();
    common::send_signal(backend.pid, Signal::SIGKILL).expect("SIGKILL the backend");

    let mut outcomes = Vec::new();
    while outcomes.len() < launched {
        let left = (killed_at + ANSWER_BOUND).saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(o) => outcomes.push(o),
            Err(_) => break,
        }
    }
    let summary: Vec<String> = outcomes
        .iter()
        .map(|o| {
            format!(
                "{} -> {} after {:?}",
                o.what,
                match o.result {
                    Ok(()) => "Ok".to_string(),
                    Err(e) => errno_name(e),
                },
                o.at - killed_at
            )
        })
        .collect();
    eprintln!(
        "blocked callers after SIGKILL of the backend:\n  {}",
        summary.join("\n  ")
    );
    assert_eq!(
        outcomes.len(),
        launched,
        "only {} of {launched} blocked callers returned within {ANSWER_BOUND:?}: {summary:#?}",
        outcomes.len()
    );
    // The contract: every request waiting on the dead backend is answered
    // with EIO by the proxy (ECONNABORTED or ENOTCONN would mean the kernel
    // aborted the connection first and the proxy's answer came too late).
    for o in &outcomes {
        assert_eq!(
            o.result,
            Err(libc::EIO),
            "{} got {:?}; all: {summary:#?}",
            o.what,
            o.result.map_err(errno_name)
        );
    }

    assert!(
        m.wait_unmounted(ANSWER_BOUND),
        "{} still mounted after the backend died",
        m.mountpoint().display()
    );
    let st = m.wait_exit(EXIT_BOUND).expect("the proxy did not exit");
    let log = m.proxy_log();
    assert_eq!(st.code(), Some(1), "exit status {st}; log:\n{log}");
    let last = last_line(&log);
    let named = format!(
        "backend (pid {}) was killed by signal 9 (SIGKILL)",
        backend.pid
    );
    assert!(
        last.contains(&named) && last.contains("answered with EIO") && last.contains("removed"),
        "last line {last:?} does not say {named:?}"
    );
    let answered = count_before(last, " waiting requests answered with EIO");
    assert!(
        answered >= launched as u64,
        "the last line says {answered} requests were answered, {launched} were blocked: {last:?}"
    );
    assert!(ProcId::is_gone(&backend));
}

/// The number just before `suffix` in `line`.
fn count_before(line: &str, suffix: &str) -> u64 {
    let end = line
        .find(suffix)
        .unwrap_or_else(|| panic!("no {suffix:?} in {line:?}"));
    let digits: String = line[..end]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no count in {line:?}"))
}

/// After the session was ended by `how`: the mount goes, the proxy exits 0,
/// the backend it started is gone, and the log tells the backend's end.
fn assert_orderly_end(m: &mut Mount, backend: &ProcId, how: &str, started: Instant) {
    assert!(
        m.wait_unmounted(EXIT_BOUND),
        "{how}: {} still mounted",
        m.mountpoint().display()
    );
    let st = m
        .wait_exit(EXIT_BOUND)
        .unwrap_or_else(|| panic!("{how}: the proxy did not exit within {EXIT_BOUND:?}"));
    let took = started.elapsed();
    let log = m.proxy_log();
    assert_eq!(st.code(), Some(0), "{how}: exit status {st}; log:\n{log}");
    assert!(
        wait_until(Duration::from_secs(2), || backend.is_gone()),
        "{how}: backend pid {} still runs after the proxy exited",
        backend.pid
    );
    assert!(
        log.contains(&format!("backend (pid {})", backend.pid)),
        "{how}: the log does not say how the backend ended:\n{log}"
    );
    assert!(
        !log.contains("CRIT") && !log.contains("did not answer DESTROY"),
        "{how}: the log reports a failure:\n{log}"
    );
    eprintln!("{how}: proxy exited 0 after {took:?}");
}

#[test]
fn umount_by_user_ends_the_proxy() {
    let _shared = shared();
    let mut m = proxy_over_passthrough(true, &[]).mount();
    fs::write(m.path("f"), b"data").unwrap();
    let backend = backend_proc(&m);
    let started = Instant::now();
    let st = m.umount().expect("umount(8) did not finish");
    assert!(
        st.success(),
        "umount {} failed: {st}",
        m.mountpoint().display()
    );
    assert_orderly_end(&mut m, &backend, "umount", started);
    assert_eq!(fs::read(m.backing_path("f")).unwrap(), b"data");
}

fn signal_ends_the_proxy(sig: Signal) {
    let _shared = shared();
    let mut m = proxy_over_passthrough(true, &[]).mount();
    fs::write(m.path("f"), b"data").unwrap();
    let backend = backend_proc(&m);
    let started = Instant::now();
    m.send_signal(sig).expect("signal the proxy");
    assert_orderly_end(&mut m, &backend, sig.as_str(), started);
    let log = m.proxy_log();
    assert!(
        log.contains(&format!("{}: unmounting", sig.as_str())),
        "the log does not name {sig}:\n{log}"
    );
}

#[test]
fn sigterm_ends_the_proxy() {
    signal_ends_the_proxy(Signal::SIGTERM);
}

#[test]
fn sigint_ends_the_proxy() {
    signal_ends_the_proxy(Signal::SIGINT);
}

#[test]
fn sighup_ends_the_proxy() {
    signal_ends_the_proxy(Signal::SIGHUP);
}

/// Processes other than the proxy whose command line contains `needle` (a
/// unique temporary path), as [`ProcId`]s. The proxy's own command line
/// names the test's binary first, the backend's (with `/dev/fd/N` under the
/// fd channel, unchanged under seccomp) comes after `--`.
fn find_backends(needle: &Path) -> Vec<ProcId> {
    let proxy = common::proxy_bin().to_string_lossy().into_owned();
    common::processes_naming(needle.as_os_str().as_encoded_bytes())
        .into_iter()
        .filter(|(_, argv)| argv.first() != Some(&proxy))
        .map(|(p, _)| p)
        .collect()
}

/// Kills, by pid and start time, any daemon whose command line names the
/// guarded path and is still running when the test ends. Declared before
/// the [`Mount`] so that it drops after it (the daemon is no descendant of
/// the proxy, so the Mount guard cannot find it).
#[derive(Default)]
struct DaemonGuard {
    needle: Option<PathBuf>,
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        let Some(n) = &self.needle else { return };
        wait_until(Duration::from_secs(2), || {
            find_backends(n).iter().all(ProcId::is_gone)
        });
        for p in find_backends(n) {
            if !p.is_gone() {
                eprintln!("harness: killing leftover daemon pid {}", p.pid);
                p.signal(Signal::SIGKILL);
            }
        }
    }
}

#[test]
fn daemonizing_backend_works_and_ends_on_sigterm() {
    let _shared = shared();
    let mut guard = DaemonGuard::default();
    let b = proxy_over_passthrough(false, &[]);
    let mut m = b.mount();
    guard.needle = Some(m.backing().to_owned());

    // The process the proxy started forks its daemon and exits with 0; the
    // proxy stays, since only its socket tells whether the backend lives.
    let started = backend_pid(&m.proxy_log());
    assert!(
        wait_until(Duration::from_secs(5), || m
            .descendants()
            .iter()
            .all(|p| p.pid != started || p.is_gone())),
        "the backend pid {started} did not exit (did it not daemonize?)"
    );
    let daemons = find_backends(m.backing());
    let daemon = match daemons.as_slice() {
        [d] => *d,
        _ => panic!("expected one passthrough_ll daemon, found {daemons:?}"),
    };
    assert_ne!(daemon.pid, started, "the daemon is the process started");
    assert_eq!(
        m.exit_status(),
        None,
        "the proxy exited with its backend's parent"
    );

    fs::write(m.path("made"), b"through the daemon").unwrap();
    assert_eq!(fs::read(m.path("made")).unwrap(), b"through the daemon");
    assert_eq!(
        fs::read(m.backing_path("made")).unwrap(),
        b"through the daemon"
    );

    let t0 = Instant::now();
    m.send_signal(Signal::SIGTERM).unwrap();
    assert!(m.wait_unmounted(EXIT_BOUND), "still mounted after SIGTERM");
    let st = m.wait_exit(EXIT_BOUND).expect("the proxy did not exit");
    let log = m.proxy_log();
    assert_eq!(st.code(), Some(0), "exit status {st}; log:\n{log}");
    assert!(
        wait_until(Duration::from_secs(5), || ProcId::is_gone(&daemon)),
        "the daemon (pid {}) outlived the proxy by 5 s; log:\n{log}",
        daemon.pid
    );
    eprintln!(
        "daemonized backend: proxy and daemon gone {:?} after SIGTERM",
        t0.elapsed()
    );
}
