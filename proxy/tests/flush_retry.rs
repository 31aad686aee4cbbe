//! `[times] on_flush_error` end to end, over libfuse's passthrough_ll: the
//! backend refuses a real flush because the backing file is immutable
//! (`chattr +i`: utimensat fails with EPERM). A time update through the
//! mount is answered at once; past `max_delay` the proxy's flush fails.
//! - `retry`: the flush is sent again with a doubling back-off, and once
//!   the file is mutable again its times arrive on the backing file.
//! - `log`: the update is lost, with a log line naming the node, the times
//!   and the errno.
//! - `retry` with the file left immutable: the proxy gives up after the
//!   last retry and says so.
//!
//! The backing directory is a tmpfs of its own, which takes
//! FS_IOC_SETFLAGS (immutable) on the kernels we run, wherever the
//! harness's temporary directory lives.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::stats::{dump_stats, stat_field};
use common::sys::{self, ts};
use common::{wait_until, Mode, Mount, MountBuilder, Signal, Tmpfs};

/// The times the test sets through the mount.
const ATIME: i64 = 1_000_000_000;
const MTIME: i64 = 1_100_000_000;

/// `chattr +i` on a file, undone on drop whatever the test did (or the
/// tmpfs could not be cleaned up).
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        chattr("+i", path).expect("chattr +i on the backing file");
        Immutable(path.to_owned())
    }

    fn clear(&self) {
        chattr("-i", &self.0).expect("chattr -i on the backing file");
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = chattr("-i", &self.0);
    }
}

fn chattr(flag: &str, path: &Path) -> Result<(), String> {
    let out = Command::new("chattr")
        .arg(flag)
        .arg(path)
        .output()
        .map_err(|e| format!("run chattr: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A policy file, a tmpfs as the backing store, and the mount over it.
/// Fields drop in order: the mount first, then the tmpfs, then the
/// directory holding both.
struct Setup {
    m: Mount,
    _tmpfs: Tmpfs,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

fn setup(policy: &str) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("fuseproxy-retry.")
        .tempdir()
        .unwrap();
    let policy_path = dir.path().join("policy.toml");
    fs::write(&policy_path, policy).unwrap();
    let store = dir.path().join("store");
    let tmpfs = Tmpfs::mount(&store, "4m");
    fs::write(store.join("f"), b"data").unwrap();
    let source = format!("source={}", store.display());
    let cmd = [
        common::passthrough_ll().to_str().unwrap(),
        "-f",
        "-o",
        &source,
        "-o",
        "cache=never",
        "{mnt}",
    ];
    let m = MountBuilder::new(Mode::Proxy, cmd)
        .proxy_args(["--policy", policy_path.to_str().unwrap()])
        .mount();
    Setup {
        m,
        _tmpfs: tmpfs,
        store,
        _dir: dir,
    }
}

fn times_of(p: &Path) -> (i64, i64) {
    let st = sys::stat(p).expect("stat");
    (st.st_atime, st.st_mtime)
}

/// The file's attributes cached by a stat through the mount, the backing
/// file made immutable, and the update made through the mount: it must be
/// answered at once.
fn refused_update(s: &mut Setup) -> Immutable {
    let through = s.m.path("f");
    sys::stat(&through).expect("stat through the mount");
    let guard = Immutable::set(&s.store.join("f"));
    assert!(
        sys::utimensat(&s.store.join("f"), ts(1, 0), ts(1, 0), 0).is_err(),
        "the immutable backing file still takes utimensat: chattr +i has no effect here"
    );
    sys::utimensat(&through, ts(ATIME, 0), ts(MTIME, 0), 0)
        .expect("utimensat through the mount (answered by the proxy)");
    assert_eq!(
        times_of(&through),
        (ATIME, MTIME),
        "stat through the mount shows the update at once"
    );
    guard
}

fn stop(s: &mut Setup) -> String {
    s.m.send_signal(Signal::SIGTERM).unwrap();
    let st = s.m.wait_exit(Duration::from_secs(15));
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "proxy exit; log:\n{}",
        s.m.proxy_log()
    );
    s.m.proxy_log()
}

#[test]
fn a_refused_flush_is_retried_until_the_backend_takes_it() {
    let mut s = setup(
        "[times]\nmax_delay = \"200ms\"\non_flush_error = \"retry\"\n\
         retries = 8\nretry_backoff = \"300ms\"\n",
    );
    let backing = s.store.join("f");
    let before = times_of(&backing);
    let guard = refused_update(&mut s);

    // The first flush (past 200 ms) fails, and the retry after 300 ms too.
    let mut line = String::new();
    let m = &mut s.m;
    assert!(
        wait_until(Duration::from_secs(10), || {
            line = dump_stats(m);
            stat_field(&line, "flush_retries") >= 1 && stat_field(&line, "times_flush_errors") >= 2
        }),
        "no refused retry within 10 s: {line}\n{}",
        m.proxy_log()
    );
    let log = m.proxy_log();
    assert!(
        log.contains(
            "failed in the backend: Operation not permitted (attempt 1); retrying in 300 ms"
        ),
        "{log}"
    );
    assert!(
        log.contains("(attempt 2); retrying in 600 ms"),
        "the back-off doubles: {log}"
    );
    assert_eq!(times_of(&backing), before, "nothing applied yet");

    // The backend takes the next retry.
    guard.clear();
    assert!(
        wait_until(Duration::from_secs(10), || times_of(&backing)
            == (ATIME, MTIME)),
        "the times never reached the backing file: {:?}\n{}",
        times_of(&backing),
        s.m.proxy_log()
    );
    let line = dump_stats(&mut s.m);
    assert_eq!(stat_field(&line, "flush_gave_up"), 0, "{line}");
    assert_eq!(stat_field(&line, "times_pending"), 0, "{line}");
    let log = stop(&mut s);
    assert!(!log.contains("gave up"), "{log}");
}

#[test]
fn under_log_a_refused_flush_is_lost_with_a_log_line() {
    let mut s = setup("[times]\nmax_delay = \"200ms\"\non_flush_error = \"log\"\n");
    let backing = s.store.join("f");
    let before = times_of(&backing);
    let guard = refused_update(&mut s);
    let m = &mut s.m;
    assert!(
        m.wait_log("failed in the backend", Duration::from_secs(5)),
        "no failure line within 5 s:\n{}",
        m.proxy_log()
    );
    let log = m.proxy_log();
    let failed = log
        .lines()
        .find(|l| l.contains("failed in the backend"))
        .unwrap();
    assert!(
        failed.contains("applying times to node ")
            && failed.contains("Operation not permitted")
            && failed.contains(&format!("atime {ATIME}.000000000, mtime {MTIME}.000000000"))
            && !failed.contains("retrying")
            && !failed.contains("gave up"),
        "{failed}"
    );
    guard.clear();
    // Nothing is sent again: the backing file keeps its old times.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(times_of(&backing), before);
    let line = dump_stats(&mut s.m);
    assert_eq!(
        (
            stat_field(&line, "times_flush_errors"),
            stat_field(&line, "flush_retries"),
            stat_field(&line, "flush_gave_up"),
            stat_field(&line, "times_pending"),
        ),
        (1, 0, 0, 0),
        "{line}"
    );
    stop(&mut s);
}

#[test]
fn retry_gives_up_after_the_last_attempt_and_says_so() {
    let mut s = setup(
        "[times]\nmax_delay = \"100ms\"\non_flush_error = \"retry\"\n\
         retries = 2\nretry_backoff = \"100ms\"\n",
    );
    let backing = s.store.join("f");
    let before = times_of(&backing);
    let _guard = refused_update(&mut s);
    let m = &mut s.m;
    assert!(
        m.wait_log("gave up after 3 attempts", Duration::from_secs(10)),
        "no give-up line within 10 s:\n{}",
        m.proxy_log()
    );
    let log = m.proxy_log();
    let line = log.lines().find(|l| l.contains("gave up")).unwrap();
    assert!(
        line.contains("Operation not permitted")
            && line.contains(&format!("mtime {MTIME}.000000000")),
        "{line}"
    );
    let stats = dump_stats(m);
    assert_eq!(
        (
            stat_field(&stats, "times_flush_errors"),
            stat_field(&stats, "flush_retries"),
            stat_field(&stats, "flush_gave_up"),
            stat_field(&stats, "times_pending"),
        ),
        (3, 2, 1, 0),
        "{stats}"
    );
    assert_eq!(times_of(&backing), before);
    stop(&mut s);
}
