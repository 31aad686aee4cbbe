//! `--kernel-transport uring`: the kernel's requests come through
//! FUSE-over-io_uring, one queue per possible CPU, and the answers go back
//! through the ring entry that carried each request.
//!
//! The kernel offers the transport only while the module parameter
//! `fuse.enable_uring` is on when the mount is made. Each test sets it as it
//! needs and puts the old value back when it ends, passing or not; the
//! tests of this file take turns (one lock), since the parameter is
//! global. Where the parameter does not exist or cannot be written, they
//! say so and pass without testing anything.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::policy::passthrough_backend;
use common::stats::{dump_stats, stat_field};
use common::{uring_param, Mode, Mount, MountBuilder, Signal};

const CALLERS: usize = 8;
const ROUNDS: usize = 200;
/// Generous: the whole workload takes well under a second here.
const BOUND: Duration = Duration::from_secs(60);

static TURN: Mutex<()> = Mutex::new(());

/// The module parameter set to `value` for the guard's life, and the tests'
/// turn (the old value goes back first); `None` (with a line saying why)
/// where it cannot be set.
struct Param {
    _set: uring_param::Set,
    _turn: MutexGuard<'static, ()>,
}

impl Param {
    fn set(value: &str) -> Option<Param> {
        let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        Some(Param {
            _set: uring_param::Set::new(value)?,
            _turn: turn,
        })
    }
}

/// passthrough_ll with `cache=never` (every call reaches the daemon) behind
/// the proxy, asked to use the ring.
fn mount() -> Mount {
    MountBuilder::passthrough(Mode::Proxy, &["-o", "cache=never"])
        .proxy_args(["--kernel-transport", "uring"])
        .mount()
}

/// Pins the calling thread to `cpu`, so that its requests go to that CPU's
/// queue.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it,
    // and sched_setaffinity only reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Eight callers, spread over the CPUs, each writing, reading back,
/// renaming and touching its own file; `Err` with the first wrong result.
fn workload(m: &Mount) -> Result<(), String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let dir = m.mountpoint().to_path_buf();
            std::thread::spawn(move || -> Result<(), String> {
                pin_to(c % cpus);
                let (a, b) = (dir.join(format!("f{c}")), dir.join(format!("g{c}")));
                let f = fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&a)
                    .map_err(|e| format!("open {}: {e}", a.display()))?;
                for r in 0..ROUNDS {
                    let data = format!("caller {c} round {r}\n");
                    let at = (r * 64) as u64;
                    f.write_all_at(data.as_bytes(), at)
                        .map_err(|e| format!("write {c}/{r}: {e}"))?;
                    let mut back = vec![0u8; data.len()];
                    f.read_exact_at(&mut back, at)
                        .map_err(|e| format!("read {c}/{r}: {e}"))?;
                    if back != data.as_bytes() {
                        return Err(format!("caller {c} round {r}: read back {back:?}"));
                    }
                    let (from, to) = if r % 2 == 0 { (&a, &b) } else { (&b, &a) };
                    fs::rename(from, to).map_err(|e| format!("rename {c}/{r}: {e}"))?;
                    let t = filetime_secs(1_000_000 + r as i64);
                    set_mtime(to, t).map_err(|e| format!("touch {c}/{r}: {e}"))?;
                    let got = fs::metadata(to)
                        .map_err(|e| format!("stat {c}/{r}: {e}"))?
                        .modified()
                        .map_err(|e| e.to_string())?;
                    if got != t {
                        return Err(format!("caller {c} round {r}: mtime {got:?}, set {t:?}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let started = Instant::now();
    for (c, h) in callers.into_iter().enumerate() {
        while !h.is_finished() {
            if started.elapsed() > BOUND {
                return Err(format!("caller {c} not done within {BOUND:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        h.join().map_err(|_| format!("caller {c} panicked"))??;
    }
    Ok(())
}

fn filetime_secs(s: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(s as u64)
}

fn set_mtime(path: &std::path::Path, t: std::time::SystemTime) -> std::io::Result<()> {
    fs::File::options().write(true).open(path)?.set_modified(t)
}

#[test]
fn the_ring_carries_every_cpus_requests_and_every_result_is_right() {
    let Some(_param) = Param::set("Y") else {
        return;
    };
    let mut m = mount();
    let log = m.proxy_log();
    assert!(
        log.contains("FUSE-over-io_uring: ") && log.contains("one thread per queue"),
        "the ring was not set up:\n{log}"
    );
    // One thread per queue: the first is the forwarding thread itself.
    let queues = fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|p| {
            let (lo, hi) = p.trim().split_once('-')?;
            Some(hi.parse::<usize>().ok()? - lo.parse::<usize>().ok()? + 1)
        })
        .unwrap_or(1);
    let names: Vec<String> = fs::read_dir(format!("/proc/{}/task", m.pid()))
        .unwrap()
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("ring-"))
        .collect();
    assert_eq!(names.len(), queues - 1, "ring threads {names:?}");
    workload(&m).unwrap_or_else(|e| panic!("{e}\n{}", m.proxy_log()));
    let stats = dump_stats(&mut m);
    let through_ring = stat_field(&stats, "ring_requests");
    let requests = stat_field(&stats, "requests");
    // Every one of the workload's requests reaches the proxy (cache=never):
    // all of them come through the ring, only FORGETs through the device.
    let least = WORKLOAD_LEAST;
    assert!(
        through_ring >= least && through_ring <= requests,
        "{through_ring} of {requests} requests came through the ring, expected {least} or more:\n{stats}"
    );
    assert_eq!(stat_field(&stats, "rejected_writes"), 0, "{stats}");
    // The backing tree holds what the callers wrote.
    for c in 0..CALLERS {
        let name = if ROUNDS % 2 == 1 { "g" } else { "f" };
        let got = fs::read(m.backing().join(format!("{name}{c}"))).unwrap();
        let last = format!("caller {c} round {}\n", ROUNDS - 1);
        let at = (ROUNDS - 1) * 64;
        assert_eq!(&got[at..at + last.len()], last.as_bytes());
    }
}

#[test]
fn without_the_module_parameter_it_says_why_and_reads_the_device() {
    let Some(_param) = Param::set("N") else {
        return;
    };
    let mut m = mount();
    workload(&m).unwrap_or_else(|e| panic!("{e}\n{}", m.proxy_log()));
    let log = m.proxy_log();
    let why: Vec<_> = log
        .lines()
        .filter(|l| l.contains("FUSE-over-io_uring not used"))
        .collect();
    assert_eq!(why.len(), 1, "one line saying why:\n{log}");
    assert!(
        why[0].contains("enable_uring") && why[0].contains("read(2)"),
        "{}",
        why[0]
    );
    let stats = dump_stats(&mut m);
    assert_eq!(stat_field(&stats, "ring_requests"), 0, "{stats}");
}

/// Requests the workload sends through the ring at least: a write, a read,
/// a rename, a SETATTR and a GETATTR per round and caller (`cache=never`).
const WORKLOAD_LEAST: u64 = (CALLERS * ROUNDS * 4) as u64;

/// `ring_requests` now, and the stats line it came from.
fn ring_requests(m: &mut Mount) -> (u64, String) {
    let stats = dump_stats(m);
    (stat_field(&stats, "ring_requests"), stats)
}

/// `--restart` with the ring: after a restart (the daemon killed) and an
/// upgrade (SIGUSR2, with callers on every CPU meanwhile) the kernel's
/// requests still come through the ring and are answered through it. The
/// new daemon's socket is put at the old one's number; a ring thread whose
/// poll went on watching the old socket would never see the new daemon's
/// answer to INIT, and the restart would hang.
#[test]
fn a_restarted_and_an_upgraded_daemon_are_served_through_the_ring() {
    let Some(_param) = Param::set("Y") else {
        return;
    };
    let mut m = MountBuilder::passthrough(Mode::Proxy, &["-o", "cache=never"])
        .proxy_args(["--kernel-transport", "uring", "--restart", "on-failure"])
        .mount();
    let log = m.proxy_log();
    assert!(
        log.contains("FUSE-over-io_uring: "),
        "the ring was not set up:\n{log}"
    );
    workload(&m).unwrap_or_else(|e| panic!("{e}\n{}", m.proxy_log()));
    let (first, _) = ring_requests(&mut m);
    assert!(first >= WORKLOAD_LEAST, "{first} through the ring");

    passthrough_backend(&m).signal(Signal::SIGKILL);
    common::wait_taken_over(&m, 1, BOUND);
    workload(&m).unwrap_or_else(|e| panic!("after the restart: {e}\n{}", m.proxy_log()));
    let (restarted, stats) = ring_requests(&mut m);
    assert!(
        restarted - first >= WORKLOAD_LEAST,
        "{} through the ring after the restart:\n{stats}",
        restarted - first
    );

    // The upgrade while the callers run: none of them sees an error.
    let old = passthrough_backend(&m);
    let pid = m.pid();
    let signaller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        common::send_signal(pid, Signal::SIGUSR2)
    });
    let during = workload(&m);
    signaller.join().unwrap().expect("SIGUSR2 to the proxy");
    during.unwrap_or_else(|e| panic!("during the upgrade: {e}\n{}", m.proxy_log()));
    common::wait_taken_over(&m, 2, BOUND);
    assert!(
        m.proxy_log().contains("was ended for an upgrade"),
        "{}",
        m.proxy_log()
    );
    assert!(
        !old.is_alive() || passthrough_backend(&m).pid != old.pid,
        "the old daemon is still the backend"
    );
    workload(&m).unwrap_or_else(|e| panic!("after the upgrade: {e}\n{}", m.proxy_log()));
    let (upgraded, stats) = ring_requests(&mut m);
    assert!(
        upgraded - restarted >= 2 * WORKLOAD_LEAST,
        "{} through the ring across the upgrade:\n{stats}",
        upgraded - restarted
    );
    assert_eq!(stat_field(&stats, "rejected_writes"), 0, "{stats}");
    assert!(m.is_mounted(), "the mount is gone");
}
