//! `[deadlines]` end to end, over libfuse's passthrough_ll: a backend
//! stopped with SIGSTOP under a 1 s default deadline makes `stat` fail with
//! EIO after a second or two instead of hanging, the late replies are
//! dropped when the backend runs again, and the mount then works as before.
//!
//! Why up to two seconds: with entry timeouts 0 the kernel first revalidates
//! the cached name with a LOOKUP; when that fails (EIO at its deadline) it
//! drops the name and looks it up afresh, a second LOOKUP with its own
//! deadline. Measured here: 2.0 s, two deadlines hit, two late replies,
//! and two FORGETs of the proxy's own for the lookups the backend counted.
//!
//! The backend is always sent SIGCONT on the way out, a failing assertion
//! included (`ContOnDrop`), and every call that could block on the stopped
//! backend runs in a thread waited for with a bounded timeout.

mod common;

use common::policy::{passthrough_backend, stop_backend, PolicyFile};

use std::fs;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::stats::{dump_stats, stat_field};
use common::{wait_until, Mode, MountBuilder};

const EIO: i32 = 5;

/// Entry and attribute timeouts 0: every stat is a LOOKUP and a GETATTR.
/// The kernel revalidates the name with a LOOKUP; when that fails (EIO at
/// the deadline) it looks the name up once more, and that LOOKUP waits its
/// own deadline: two deadlines, about 2 s.
#[test]
fn a_stopped_backend_costs_one_eio_after_the_deadline_and_the_mount_recovers() {
    stopped_backend(
        "[deadlines]\ndefault = \"1s\"\n",
        Duration::from_millis(1800)..Duration::from_secs(5),
        Undo::Forgets,
    );
}

/// With names cached (`[cache]` entry_timeout), a stat is one GETATTR: the
/// caller gets EIO after one deadline, about 1 s.
#[test]
fn with_names_cached_a_stat_fails_after_one_deadline() {
    stopped_backend(
        "[deadlines]\ndefault = \"1s\"\n[cache]\nentry_timeout = \"1h\"\n",
        Duration::from_millis(800)..Duration::from_millis(1800),
        Undo::Nothing,
    );
}

/// What the proxy must undo in the backend after the late replies.
#[derive(PartialEq)]
enum Undo {
    /// Late LOOKUPs counted lookups the kernel never saw: one FORGET each.
    Forgets,
    /// A late GETATTR left nothing behind.
    Nothing,
}

/// SIGSTOPs the backend under `policy`, checks that a stat fails with EIO
/// after a time in `expected`, then SIGCONTs it and checks the mount works
/// and what the proxy undid.
fn stopped_backend(policy: &str, expected: std::ops::Range<Duration>, undo: Undo) {
    let policy = PolicyFile::new(policy);
    let mut m = MountBuilder::passthrough(Mode::Proxy, &["-o", "cache=never"])
        .proxy_args(["--policy", policy.arg()])
        .mount();
    fs::write(m.backing_path("f"), b"before").unwrap();
    assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 6);

    // Opens the window of the allocation count: from here on, expiry, late
    // replies and the requests that undo them allocate nothing.
    dump_stats(&mut m);
    let backend = passthrough_backend(&m);
    let cont = stop_backend(backend);

    let (tx, rx) = mpsc::channel();
    let path = m.path("f");
    std::thread::spawn(move || {
        let started = Instant::now();
        let r = fs::metadata(&path);
        let _ = tx.send((started.elapsed(), r.map(|md| md.len())));
    });
    let (took, result) = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("stat on a stopped backend still blocked after 15 s: no deadline");
    let errno = result.as_ref().err().and_then(|e| e.raw_os_error());
    assert_eq!(
        errno,
        Some(EIO),
        "stat with the backend stopped: {result:?} after {took:?}"
    );
    assert!(
        expected.contains(&took),
        "stat failed after {took:?}, expected {expected:?}"
    );
    let s = dump_stats(&mut m);
    let hit = stat_field(&s, "deadlines_hit");
    assert!(hit >= 1, "{s}");
    assert_eq!(stat_field(&s, "allocations"), 0, "{s}");

    // The backend runs again: it answers what it had read, late, and the
    // proxy drops those replies (and forgets the lookups they counted).
    drop(cont);
    let mut s = String::new();
    let all_late = wait_until(Duration::from_secs(5), || {
        s = dump_stats(&mut m);
        assert_eq!(stat_field(&s, "allocations"), 0, "{s}");
        stat_field(&s, "late_replies") >= hit
    });
    assert!(
        all_late,
        "{hit} requests expired, not all replies came late within 5 s:\n{s}"
    );
    assert_eq!(stat_field(&s, "bad_replies"), 0, "{s}");
    // Each late LOOKUP succeeded in the backend, which counted a lookup the
    // kernel never saw: the proxy sent a FORGET of its own for each.
    match undo {
        Undo::Forgets => assert!(stat_field(&s, "injected") >= hit, "{s}"),
        Undo::Nothing => assert_eq!(stat_field(&s, "injected"), 0, "{s}"),
    }
    let (tx, rx) = mpsc::channel();
    let (f, g) = (m.path("f"), m.path("g"));
    std::thread::spawn(move || {
        let r = (|| {
            let len = fs::metadata(&f)?.len();
            fs::write(&g, b"after")?;
            Ok::<_, std::io::Error>((len, fs::read(&g)?))
        })();
        let _ = tx.send(r);
    });
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the mount still blocked 10 s after SIGCONT");
    let (len, bytes) = r.expect("the mount works again after SIGCONT");
    assert_eq!((len, bytes.as_slice()), (6, &b"after"[..]));
    assert_eq!(fs::read(m.backing_path("g")).unwrap(), b"after");
    // The kernel sends RELEASE after close returns: wait for it too.
    let mut s = String::new();
    let idle = wait_until(Duration::from_secs(5), || {
        s = dump_stats(&mut m);
        assert_eq!(stat_field(&s, "allocations"), 0, "{s}");
        stat_field(&s, "inflight") == 0
    });
    assert!(idle, "requests still in flight 5 s later: {s}");
    eprintln!("stat failed with EIO after {took:?}; {s}");
}
