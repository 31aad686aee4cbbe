//! Notifications from the backend never block the proxy's loop.
//!
//! The kernel's handling of FUSE_NOTIFY_INVAL_ENTRY (fuse_reverse_inval_entry)
//! takes the parent directory's inode lock exclusively. A caller looking up
//! an uncached name holds that lock shared while it waits for the LOOKUP
//! reply (lookup_slow). A proxy that wrote the notification from the thread
//! that forwards replies would wait in write(2) for the lock, never forward
//! the reply that releases it, and hang the mount (seen with `rclone mount`,
//! whose bazil.org/fuse sends entry invalidations).
//!
//! libfuse's `notify_inval_entry` example sends an invalidation of the root's
//! single entry every second from a thread of its own, once that entry has
//! been looked up. Four threads here look up missing names in the root
//! without pause (ENOENT is not cached: every stat is a LOOKUP), so one is
//! nearly always in flight when a notification arrives. Every stat must keep
//! completing for several notifications in a row.
//!
//! When the mount hangs anyway, the test aborts the connection through
//! fusectl (the only way out: the stuck proxy cannot be killed) before it
//! fails, so that nothing is left behind.

mod common;

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stats::{dump_stats, stat_field};
use common::Mode;

/// How long the lookups run: at least this many notifications are sent.
const RUN: Duration = Duration::from_secs(6);
/// No stat completing for this long is a hang.
const STALL: Duration = Duration::from_secs(4);
const WORKERS: usize = 4;

/// `/sys/fs/fuse/connections/N/abort` for the mount at `mnt`: N is the
/// superblock's device number in the kernel's encoding (major << 20 | minor).
fn fusectl_abort(mnt: &std::path::Path) -> Option<PathBuf> {
    let info = common::mount_info(mnt)?;
    let (major, minor) = info.dev.split_once(':')?;
    let dev = (major.parse::<u64>().ok()? << 20) | minor.parse::<u64>().ok()?;
    Some(PathBuf::from(format!(
        "/sys/fs/fuse/connections/{dev}/abort"
    )))
}

/// The root's entry, by READDIR; then a LOOKUP of it, which makes the
/// example send an invalidation of it when it renames it (every second).
fn look_up_the_entry(mnt: &std::path::Path) -> std::io::Result<()> {
    let name = fs::read_dir(mnt)?
        .next()
        .ok_or(std::io::ErrorKind::NotFound)??
        .file_name();
    // Mode 0000, but without default_permissions a stat needs no access.
    fs::symlink_metadata(mnt.join(name)).map(|_| ())
}

/// The kernel stacks of the proxy's threads (root reads them).
fn proxy_stacks(pid: i32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return String::new();
    };
    tasks
        .flatten()
        .map(|t| {
            let stack = fs::read_to_string(t.path().join("stack")).unwrap_or_default();
            format!("task {}:\n{stack}", t.file_name().to_string_lossy())
        })
        .collect()
}

#[test]
fn inval_entry_during_lookups_does_not_hang() {
    let mut m = common::notify_inval_entry_mount();
    let mnt = m.mountpoint().to_path_buf();
    let abort = fusectl_abort(&mnt).expect("the mount's fusectl entry");
    look_up_the_entry(&mnt).expect("lookup of the root's entry");

    let done = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (done, stats, mnt) = (done.clone(), stats.clone(), mnt.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let e = fs::symlink_metadata(mnt.join(format!("missing-{w}-{i}")));
                    // ENOENT, or ENOTCONN once the test aborts a hung mount.
                    assert!(e.is_err());
                    stats.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .chain(std::iter::once({
            // Keeps the current entry looked up: each name the example gives
            // it is invalidated once, when it is replaced.
            let (done, mnt) = (done.clone(), mnt.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let _ = look_up_the_entry(&mnt);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        }))
        .collect();

    let start = Instant::now();
    let (mut last, mut last_change) = (0, Instant::now());
    let mut hung = None;
    while start.elapsed() < RUN {
        std::thread::sleep(Duration::from_millis(100));
        let now = stats.load(Ordering::Relaxed);
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() >= STALL {
            hung = Some(last);
            break;
        }
    }
    if let Some(n) = hung {
        // Where the proxy's threads wait, then release them and the workers
        // before failing.
        let stacks = proxy_stacks(m.pid());
        let _ = fs::write(&abort, "1");
        done.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.join();
        }
        panic!(
            "the mount hung after {n} lookups ({:?} in): no lookup completed for {STALL:?} \
             while the backend sent entry invalidations; connection aborted through {}; the proxy's threads were in:\n{stacks}",
            start.elapsed(),
            abort.display()
        );
    }
    done.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a lookup thread failed");
    }
    let stats = dump_stats(&mut m);
    let notifications = stat_field(&stats, "notifications");
    eprintln!("{last} lookups in {RUN:?}; {stats}");
    assert!(last > 100, "only {last} lookups in {RUN:?}");
    assert!(
        notifications >= 3,
        "only {notifications} notifications reached the kernel: {stats}"
    );
    // The writer thread ends with the session: SIGTERM unmounts and exits.
    let t0 = Instant::now();
    m.send_signal(common::Signal::SIGTERM).unwrap();
    let st = m.wait_exit(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "no clean exit within 10 s of SIGTERM: {st:?}\n{}",
        m.proxy_log()
    );
    eprintln!("exited {:?} after SIGTERM", t0.elapsed());
}

/// A notification stuck in the kernel when the session ends cannot be
/// released by closing descriptors (its write holds the device open), so the
/// proxy aborts the connection through fusectl and exits.
///
/// The stuck write is made on purpose: after the entry's lookup, a reloaded
/// policy holds every LOOKUP for a minute, one lookup of a missing name
/// keeps the root's lock (shared) meanwhile, and the example's next
/// invalidation waits for it in the writer. Then two SIGTERMs abort the
/// session.
#[test]
fn a_stuck_notification_does_not_keep_the_proxy_from_exiting() {
    let policy = common::policy::PolicyFile::new("");
    let mut m = common::notify_inval_entry()
        .proxy_args(["--policy", policy.arg()])
        .mount();
    if m.mode() != Mode::Proxy {
        return;
    }
    let mnt = m.mountpoint().to_path_buf();
    look_up_the_entry(&mnt).expect("lookup of the root's entry");

    policy.rewrite("[fault]\nseed = 1\n[fault.LOOKUP]\ndelay = \"60s\"\n");
    m.send_signal(common::Signal::SIGHUP).unwrap();
    assert!(
        m.wait_log("reloaded", Duration::from_secs(5)),
        "no reload:\n{}",
        m.proxy_log()
    );
    let held_mnt = mnt.clone();
    let held = std::thread::spawn(move || fs::symlink_metadata(held_mnt.join("missing")));
    let pid = m.pid();
    assert!(
        common::wait_until(Duration::from_secs(10), || proxy_stacks(pid)
            .contains("fuse_reverse_inval_entry")),
        "no notification got stuck in the kernel; the proxy's threads:\n{}",
        proxy_stacks(pid)
    );

    let t0 = Instant::now();
    m.send_signal(common::Signal::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    m.send_signal(common::Signal::SIGTERM).unwrap();
    let st = m.wait_exit(Duration::from_secs(15));
    let log = m.proxy_log();
    assert!(st.is_some(), "the proxy did not exit:\n{log}");
    eprintln!("exited {:?} after the signals: {st:?}", t0.elapsed());
    assert!(
        log.contains("aborted through fusectl"),
        "no abort through fusectl:\n{log}"
    );
    let r = held.join().unwrap();
    assert!(r.is_err(), "the held lookup succeeded: {r:?}");
    assert!(m.wait_unmounted(Duration::from_secs(5)), "still mounted");
}
