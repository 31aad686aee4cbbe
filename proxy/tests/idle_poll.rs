//! `--idle-poll own` (the default with one forwarding thread) end to end,
//! over libfuse's passthrough_ll: while `stat` calls flow through the
//! mount, one CPU's resume latency request is "n/a" (poll); shortly after
//! they stop every CPU has its value back; a proxy killed with SIGKILL
//! leaves none polling (its guard puts them back); a value someone else set
//! is left as it is; with the ring, the CPUs its threads wait on poll.
//! These are machine-wide settings: each test saves every CPU's value (and
//! `fuse.enable_uring`) and writes it back when it ends, a failure
//! included, and the tests of this file run one at a time.

mod common;

use std::fs;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::stats::{dump_stats, stat_field};
use common::{uring_param, wait_until, Mode, Mount, MountBuilder};
use nix::sys::signal::Signal;

/// The proxy lets go 20-40 ms after the last request; its guard acts as
/// soon as the proxy is gone.
const RELEASE_BOUND: Duration = Duration::from_secs(5);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn path(cpu: usize) -> String {
    format!("/sys/devices/system/cpu/cpu{cpu}/power/pm_qos_resume_latency_us")
}

/// Every CPU's value as it was; written back on drop.
struct Saved(Vec<(usize, String)>);

impl Saved {
    /// `None` (and a line saying so) where the machine has no such files.
    fn take() -> Option<Saved> {
        let saved: Vec<_> = (0..4096)
            .map_while(|cpu| Some((cpu, fs::read_to_string(path(cpu)).ok()?)))
            .map(|(cpu, v)| (cpu, v.trim().to_string()))
            .collect();
        if saved.is_empty() {
            println!("skipping: no CPU has {}", path(0));
            return None;
        }
        Some(Saved(saved))
    }

    fn set_all(&self, v: &str) {
        for (cpu, _) in &self.0 {
            fs::write(path(*cpu), v).unwrap();
        }
    }

    fn current(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(cpu, _)| fs::read_to_string(path(*cpu)).unwrap().trim().to_string())
            .collect()
    }

    fn polling(&self) -> usize {
        self.current().iter().filter(|v| *v == "n/a").count()
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        for (cpu, v) in &self.0 {
            let _ = fs::write(path(*cpu), v);
        }
    }
}

/// For a test of the read(2) path: [`take_turn`], except in the pass of
/// the tests over the ring.
fn begin() -> Option<(std::sync::MutexGuard<'static, ()>, Saved)> {
    if common::env_transport() == Some("uring") {
        println!("skipping: this test is of read(2), this pass uses the ring");
        return None;
    }
    take_turn()
}

/// Takes the tests' turn and every CPU's value, all "no constraint"
/// first (another test binary's proxies have let go by then).
fn take_turn() -> Option<(std::sync::MutexGuard<'static, ()>, Saved)> {
    common::require_root_and_fuse();
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let saved = Saved::take()?;
    if let Some(v) = saved.0.iter().find(|(_, v)| v != "0" && v != "n/a") {
        println!(
            "skipping: CPU {} has a resume latency request of its own ({})",
            v.0, v.1
        );
        return None;
    }
    assert!(
        wait_until(RELEASE_BOUND, || saved.current().iter().all(|v| v == "0")),
        "CPUs' resume latency requests are {:?}, not all 0 (no constraint) before the test",
        saved.current()
    );
    Some((turn, saved))
}

fn mount() -> Mount {
    mount_with(1, &[])
}

fn mount_with(threads: u32, args: &[&str]) -> Mount {
    let m = MountBuilder::passthrough(Mode::Proxy, &["-o", "cache=never"])
        .threads(threads)
        .proxy_args(args)
        .mount();
    fs::write(m.backing_path("f"), b"hello").unwrap();
    m
}

/// Stats for `d`, sampling how many CPUs poll after every 20.
fn stat_loop(m: &Mount, saved: &Saved, d: Duration) -> Vec<usize> {
    let mut seen = Vec::new();
    let until = Instant::now() + d;
    while Instant::now() < until {
        for _ in 0..20 {
            assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 5);
        }
        seen.push(saved.polling());
    }
    seen
}

#[test]
fn one_cpu_polls_while_requests_flow_and_none_after() {
    let Some((_turn, saved)) = begin() else {
        return;
    };
    let m = mount();
    let seen = stat_loop(&m, &saved, Duration::from_millis(500));
    let held = seen.iter().filter(|&&n| n == 1).count();
    assert!(
        held * 10 >= seen.len() * 9 && seen.iter().all(|&n| n <= 1),
        "CPUs polling, sampled while requests flowed: {seen:?}\n{}",
        m.proxy_log()
    );
    let quiet = Instant::now();
    assert!(
        wait_until(RELEASE_BOUND, || saved.polling() == 0),
        "still {:?} {RELEASE_BOUND:?} after the last request\n{}",
        saved.current(),
        m.proxy_log()
    );
    eprintln!("let go {:?} after the last request", quiet.elapsed());
    let log = m.proxy_log();
    assert!(
        log.contains("--idle-poll own: while requests flow"),
        "no start-up line:\n{log}"
    );
}

#[test]
fn a_killed_proxy_leaves_no_cpu_polling() {
    let Some((_turn, saved)) = begin() else {
        return;
    };
    let mut m = mount();
    let seen = stat_loop(&m, &saved, Duration::from_millis(200));
    assert!(
        seen.contains(&1),
        "no CPU polled while requests flowed: {seen:?}"
    );
    // Killed while holding: requests keep coming from another thread.
    let path = m.path("f");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let caller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if fs::metadata(&path).is_err() {
                    break;
                }
            }
        })
    };
    assert!(wait_until(RELEASE_BOUND, || saved.polling() == 1));
    m.send_signal(Signal::SIGKILL).unwrap();
    assert!(
        m.wait_exit(RELEASE_BOUND).is_some(),
        "the proxy did not end on SIGKILL"
    );
    let gone = Instant::now();
    assert!(
        wait_until(RELEASE_BOUND, || saved.polling() == 0),
        "{:?} {RELEASE_BOUND:?} after the proxy was killed",
        saved.current()
    );
    eprintln!("put back {:?} after the proxy was killed", gone.elapsed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(m);
    caller.join().unwrap();
}

#[test]
fn a_value_someone_else_set_is_left_alone() {
    let Some((_turn, saved)) = begin() else {
        return;
    };
    saved.set_all("25");
    let m = mount();
    let seen = stat_loop(&m, &saved, Duration::from_millis(300));
    assert!(
        saved.current().iter().all(|v| v == "25") && seen.iter().all(|&n| n == 0),
        "{:?} after requests flowed (polling samples {seen:?}), where every CPU was 25\n{}",
        saved.current(),
        m.proxy_log()
    );
    drop(m);
    assert!(saved.current().iter().all(|v| v == "25"));
}

#[test]
fn off_or_several_threads_leave_the_cpus_alone() {
    let Some((_turn, saved)) = begin() else {
        return;
    };
    for (threads, args, line) in [
        (1, &["--idle-poll", "off"][..], None),
        (3, &[][..], Some("--idle-poll own not used: --threads 3")),
    ] {
        let m = mount_with(threads, args);
        let seen = stat_loop(&m, &saved, Duration::from_millis(200));
        let log = m.proxy_log();
        assert!(
            seen.iter().all(|&n| n == 0),
            "CPUs polling with --threads {threads} {args:?}: {seen:?}\n{log}"
        );
        assert!(
            !log.contains("--idle-poll own: while") && line.is_none_or(|l| log.contains(l)),
            "start-up lines with --threads {threads} {args:?}:\n{log}"
        );
    }
}

/// With the ring, each ring thread holds the CPU it keeps to while it waits:
/// while a caller's stats flow, the CPU its requests' queue is on polls
/// (most samples show at least one CPU polling; a caller that moved may
/// leave more than one held until the requests stop), the requests came
/// through the ring, and every CPU is put back after.
#[test]
fn with_the_ring_the_cpus_its_threads_wait_on_poll_and_none_after() {
    let Some((_turn, saved)) = take_turn() else {
        return;
    };
    let Some(_param) = uring_param::Set::new("Y") else {
        return;
    };
    let mut m = mount_with(1, &["--kernel-transport", "uring"]);
    let seen = stat_loop(&m, &saved, Duration::from_millis(500));
    let held = seen.iter().filter(|&&n| n >= 1).count();
    assert!(
        held * 10 >= seen.len() * 9,
        "CPUs polling, sampled while requests flowed: {seen:?}\n{}",
        m.proxy_log()
    );
    let stats = dump_stats(&mut m);
    assert!(
        stat_field(&stats, "ring_requests") > 0,
        "the requests did not come through the ring: {stats}\n{}",
        m.proxy_log()
    );
    assert!(
        wait_until(RELEASE_BOUND, || saved.polling() == 0),
        "still {:?} {RELEASE_BOUND:?} after the last request\n{}",
        saved.current(),
        m.proxy_log()
    );
    let log = m.proxy_log();
    assert!(
        log.contains("(with the ring, each ring thread's) polls instead of halting"),
        "no start-up line:\n{log}"
    );
}
