//! Processes: spawning, bounded waits, /proc readings, and the harness's own
//! interruption (SIGINT/SIGTERM/SIGHUP read from a signalfd, so that a ^C
//! unwinds through the mount guards instead of killing the harness mid-run).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

/// Errors are sentences: every failure ends up as one line of the report.
pub type Res<T> = Result<T, String>;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SIGNALS: OnceLock<SignalFd> = OnceLock::new();

/// Blocks SIGINT, SIGTERM and SIGHUP in this process (every thread started
/// later inherits the mask; children get a clean one from std's spawn) and
/// opens a non-blocking signalfd for them. Call first thing in `main`.
pub fn catch_signals() -> Res<()> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGHUP);
    mask.thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;
    let _ = SIGNALS.set(fd);
    Ok(())
}

/// True once the harness was asked to stop.
pub fn interrupted() -> bool {
    if INTERRUPTED.load(Ordering::Relaxed) {
        return true;
    }
    if let Some(fd) = SIGNALS.get() {
        if let Ok(Some(_)) = fd.read_signal() {
            INTERRUPTED.store(true, Ordering::Relaxed);
            return true;
        }
    }
    false
}

/// Fails with "interrupted" once a stop signal came.
pub fn check_interrupt() -> Res<()> {
    if interrupted() {
        Err("interrupted by a signal".into())
    } else {
        Ok(())
    }
}

/// Sleeps `d`, in slices, returning early (with an error) on interruption.
pub fn sleep(d: Duration) -> Res<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Starts `cmd` in its own process group (a ^C on the terminal reaches only
/// the harness, which then stops everything in order), stdin from /dev/null,
/// stdout and stderr to the given files (appended).
pub fn spawn(cmd: &mut Command, stdout: &Path, stderr: &Path) -> Res<Child> {
    use std::os::unix::process::CommandExt;
    let open = |p: &Path| {
        File::options()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("opening {}: {e}", p.display()))
    };
    let (out, err) = (open(stdout)?, open(stderr)?);
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    cmd.spawn()
        .map_err(|e| format!("cannot start {}: {e}", describe(cmd)))
}

/// The command line, for messages; an argument longer than 200 characters
/// is cut short, with its length.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        match a.char_indices().nth(200) {
            Some((i, _)) => s.push_str(&format!("{}…({} chars)", &a[..i], a.chars().count())),
            None => s.push_str(&a),
        }
    }
    s
}

/// Waits at most `timeout` for `child` to exit. Returns its status and the
/// instant it exited (taken by a waiter thread the moment the kernel reported
/// the exit, so wall times are not rounded to a polling period), or `None` on
/// time-out, leaving the child running. The waiter uses WNOWAIT: the child
/// stays unreaped, so its pid cannot be reused before we reap it ourselves,
/// and killing it by pid stays safe.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Res<Option<(ExitStatus, Instant)>> {
    if let Some(st) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
        return Ok(Some((st, Instant::now())));
    }
    let pid = Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = loop {
            match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.map(|_| Instant::now()),
            }
        };
        let _ = tx.send(r);
    });
    let end = Instant::now() + timeout;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(None);
        }
        match rx.recv_timeout((end - now).min(Duration::from_millis(100))) {
            Ok(Ok(at)) => {
                let st = child.wait().map_err(|e| format!("wait: {e}"))?;
                return Ok(Some((st, at)));
            }
            Ok(Err(e)) => return Err(format!("waitid: {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if interrupted() {
                    return Err("interrupted by a signal".into());
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err("waiter thread died".into()),
        }
    }
}

/// Stops a child we started: SIGTERM, up to `grace` to exit, then SIGKILL
/// and a bounded wait. By pid of our own unreaped child only. Returns whether
/// it is gone.
pub fn stop_child(child: &mut Child, grace: Duration) -> bool {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return true;
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    if poll_exit(child, grace) {
        return true;
    }
    let _ = child.kill();
    poll_exit(child, Duration::from_secs(5))
}

fn poll_exit(child: &mut Child, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Runs a short command to completion (bounded), returning its stdout.
/// Fails with its stderr if it fails.
pub fn run_output(cmd: &mut Command, timeout: Duration) -> Res<String> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let what = describe(cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        let r = r.map(|mut r| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        });
        move || {
            r.and_then(|h| h.join().ok())
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default()
        }
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    match wait_bounded(&mut child, timeout) {
        Ok(Some((st, _))) => {
            let (out, err) = (out(), err());
            if st.success() {
                Ok(out)
            } else {
                Err(format!("{what}: {st}: {}", err.trim()))
            }
        }
        Ok(None) => {
            stop_child(&mut child, Duration::from_secs(1));
            Err(format!("{what}: still running after {timeout:?}, killed"))
        }
        Err(e) => {
            stop_child(&mut child, Duration::from_secs(1));
            Err(format!("{what}: {e}"))
        }
    }
}

/// The fields of /proc/PID/stat after the command name, 0-based from field 3
/// (state).
fn stat_fields(pid: i32) -> Res<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rest = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    Ok(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: i32) -> Res<u64> {
    let f = stat_fields(pid)?;
    // Fields 14 and 15 of proc(5); index 0 here is field 3.
    let get = |i: usize| -> Res<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {}", i + 3))
    };
    Ok(get(11)? + get(12)?)
}

/// The whole machine's counters in /proc/stat (see `Counts`).
pub fn machine_counters() -> Res<Counts> {
    let s = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    counts(&s)
}

/// What `machine_counters` reads. `busy_ticks`: CPU time the machine spent
/// busy (user, nice, system, irq and softirq of every CPU; guest time is
/// inside user), in clock ticks, from the "cpu" line. `switches`: context
/// switches on every CPU since boot, from the "ctxt" line: each hand-off
/// between a thread that sleeps and one it wakes costs one or two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub busy_ticks: u64,
    pub switches: u64,
}

/// The counts in the text of /proc/stat.
fn counts(s: &str) -> Res<Counts> {
    let line = |name: &str| {
        s.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .ok_or_else(|| format!("/proc/stat: no \"{name}\" line"))
    };
    let cpu = line("cpu")?;
    let busy_ticks =
        busy_ticks(cpu).ok_or_else(|| format!("/proc/stat: unexpected \"cpu\" line: {cpu}"))?;
    let ctxt = line("ctxt")?;
    let switches = ctxt
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("/proc/stat: unexpected \"ctxt\" line: {ctxt}"))?;
    Ok(Counts {
        busy_ticks,
        switches,
    })
}

/// The busy ticks of one "cpu" line of /proc/stat: fields 1, 2, 3, 6, 7.
fn busy_ticks(line: &str) -> Option<u64> {
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let get = |i: usize| f.get(i).copied();
    Some(get(0)? + get(1)? + get(2)? + get(5)? + get(6)?)
}

/// The process's start time (field 22 of /proc/PID/stat): with the pid, it
/// names one process for good.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid).ok()?.get(19)?.parse().ok()
}

/// Clock ticks per second.
pub fn clk_tck() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as u64)
        .unwrap_or(100)
}

/// Resets the process's peak RSS (VmHWM) to its current RSS.
pub fn reset_peak_rss(pid: i32) -> Res<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| format!("/proc/{pid}/clear_refs: {e}"))
}

/// VmHWM of a process, in KiB.
pub fn peak_rss_kib(pid: i32) -> Res<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status: no VmHWM"))
}

/// The direct children of a process.
pub fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A process we did not spawn ourselves (the proxy's backend), named by pid
/// and start time so that a reused pid is never signalled.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    pub pid: i32,
    pub start: u64,
}

impl Known {
    pub fn new(pid: i32) -> Option<Known> {
        start_time(pid).map(|start| Known { pid, start })
    }

    /// Still the same process, and not a zombie.
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
            && stat_fields(self.pid).is_ok_and(|f| f.first().is_some_and(|s| s != "Z"))
    }

    /// SIGKILL if still the same process; then up to `limit` for it to go.
    pub fn kill(&self, limit: Duration) -> bool {
        if self.alive() {
            let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        let end = Instant::now() + limit;
        while self.alive() {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// Runs `f` on a thread and waits at most `timeout` for it. A thread stuck in
/// a system call on a dead FUSE mount is left behind (it returns once the
/// guard aborts the connection); the caller gets an error.
pub fn bounded<T: Send + 'static>(
    timeout: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Res<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout)
        .map_err(|_| format!("{what}: no answer within {timeout:?}"))
}

#[cfg(test)]
mod tests {
    use super::{busy_ticks, counts, Counts};

    #[test]
    fn busy_leaves_out_idle_iowait_and_steal() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let line = "cpu  100 2 30 5000 70 4 5 900 0 0";
        assert_eq!(busy_ticks(line), Some(100 + 2 + 30 + 4 + 5));
        assert_eq!(busy_ticks("cpu  1 2 3"), None);
        assert_eq!(busy_ticks("cpu  1 x 3 4 5 6 7"), None);
    }

    #[test]
    fn counts_take_the_cpu_and_ctxt_lines() {
        let stat = "cpu  100 2 30 5000 70 4 5 900 0 0\n\
                    cpu0 50 1 15 2500 35 2 2 450 0 0\n\
                    intr 12345 0 0\n\
                    ctxt 987654\n\
                    btime 1700000000\n";
        assert_eq!(
            counts(stat),
            Ok(Counts {
                busy_ticks: 141,
                switches: 987654
            })
        );
        let err = counts("cpu  1 2 3 4 5 6 7\nctxt x\n").unwrap_err();
        assert!(err.contains("\"ctxt\" line: ctxt x"), "{err}");
        let err = counts("cpu  1 2 3 4 5 6 7\n").unwrap_err();
        assert!(err.contains("no \"ctxt\" line"), "{err}");
    }
}
