//! The forwarding path never allocates, measured: fuseproxy counts its heap
//! allocations (a counting global allocator) and its SIGUSR1 stats line
//! reports those made since the previous dump. Over passthrough_ll with
//! `cache=never` (entry and attribute timeouts 0, direct I/O), every stat
//! is a LOOKUP and a GETATTR and every pread/pwrite a READ/WRITE that
//! crosses the proxy. After a warm-up, a window of 10,000 stats plus 64 KiB
//! reads and writes must show `requests=` grown by at least 10,000 and
//! `allocations=0`, with time updates answered locally and flushed in it.
//!
//! Proxy mode is forced (`raw_proxy_args`): there is nothing to count in a
//! direct mount.

mod common;

use common::stats::{dump_stats, stat_field};

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::tree::pattern;
use common::{sys, Mode, Mount, MountBuilder};
use std::os::unix::fs::MetadataExt;

const FILES: usize = 100;
const CHUNK: usize = 64 * 1024;
const DATA_LEN: usize = 16 * CHUNK;

/// `n` stats of the files, each fourth preceded by a utimensat of it (a
/// time-only SETATTR the proxy answers itself and flushes later), `io`
/// 64 KiB preads and pwrites of `data` (chunk `k` gets pattern `seed + k`),
/// each checked.
fn workload(m: &Mount, data: &fs::File, n: usize, io: usize, seed: u64) {
    for i in 0..n {
        let path = m.path(format!("f{}", i % FILES));
        let mtime = seed as i64 * 100_000 + i as i64;
        if i % 4 == 0 {
            sys::utimensat(&path, sys::ts(mtime, 0), sys::ts(mtime, 0), 0).expect("utimensat");
        }
        let md = fs::metadata(&path).expect("stat");
        assert_eq!(md.len(), (i % FILES) as u64);
        if i % 4 == 0 {
            assert_eq!(md.mtime(), mtime, "stat shows the time just set");
        }
    }
    for k in 0..io {
        let off = ((k % (DATA_LEN / CHUNK)) * CHUNK) as u64;
        let want = pattern(seed + k as u64, CHUNK);
        assert_eq!(data.write_at(&want, off).expect("pwrite"), CHUNK);
        let mut got = vec![0u8; CHUNK];
        assert_eq!(data.read_at(&mut got, off).expect("pread"), CHUNK);
        assert!(got == want, "chunk {k} at {off} read back wrong");
    }
}

#[test]
fn forwarding_does_not_allocate() {
    no_allocations(&[]);
}

/// Recording copies every message into the ring, and the writer thread
/// drains it to the file while the window runs (the count is the whole
/// process's): neither side may allocate.
#[test]
fn recording_does_not_allocate() {
    no_allocations(&["--record", "{dir}/session.fcap", "--record-size", "8M"]);
}

/// As above, with a ring too small for the 64 KiB WRITEs (their records
/// are dropped and gap records written) and files rotated every 1 MiB,
/// the oldest deleted: many rotations happen inside the window.
#[test]
fn recording_with_drops_and_rotation_does_not_allocate() {
    no_allocations(&[
        "--record",
        "{dir}/session.fcap",
        "--record-size",
        "32K",
        "--record-file-size",
        "1M",
        "--record-files",
        "2",
    ]);
}

/// A policy with rules that look at every request and reply (path scopes,
/// deny and cache tables, deadlines), put in force by SIGHUP before the
/// window: neither the rules nor the reload leave the forwarding path
/// allocating.
#[test]
fn forwarding_under_a_reloaded_policy_does_not_allocate() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    let text = |errno: &str| {
        format!(
            "[deny]\nMKNOD = \"{errno}\"\n[cache]\nkeep_cache = false\n\
             [deadlines]\ndefault = \"60s\"\n\
             [[paths]]\npath = \"/no/such/dir\"\n[paths.deny]\nread_only = true\n"
        )
    };
    std::fs::write(&policy, text("EPERM")).unwrap();
    let path = policy.to_str().unwrap().to_string();
    no_allocations_with(&["--policy", &path], |m| {
        std::fs::write(&policy, text("EACCES")).unwrap();
        let before = m.proxy_log().matches("SIGHUP: policy").count();
        m.send_signal(common::Signal::SIGHUP).unwrap();
        assert!(
            common::wait_until(Duration::from_secs(5), || m
                .proxy_log()
                .matches("SIGHUP: policy")
                .count()
                > before),
            "no reload line"
        );
        assert!(m.proxy_log().contains("reloaded"), "{}", m.proxy_log());
    });
}

/// The window described in the module doc, with `extra` fuseproxy options.
fn no_allocations(extra: &[&str]) {
    no_allocations_with(extra, |_| {});
}

/// [`no_allocations`], calling `before_window` after the warm-up.
fn no_allocations_with(extra: &[&str], before_window: impl FnOnce(&mut Mount)) {
    let pll = common::passthrough_ll().to_str().unwrap();
    let mut args = extra.to_vec();
    args.extend_from_slice(&[
        "{mnt}",
        "--",
        pll,
        "-f",
        "-o",
        "source={backing},cache=never",
        "{mnt}",
    ]);
    let mut m = MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args(args)
        .mount();
    for i in 0..FILES {
        fs::write(m.backing_path(format!("f{i}")), vec![b'x'; i]).unwrap();
    }
    fs::write(m.backing_path("data"), vec![0u8; DATA_LEN]).unwrap();
    let data = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("data"))
        .unwrap();

    workload(&m, &data, 1_000, 20, 1);
    before_window(&mut m);
    workload(&m, &data, 200, 4, 2);
    let first = dump_stats(&mut m);
    // The counter is live: start-up and the first log lines allocated.
    assert!(
        stat_field(&first, "allocations") > 0,
        "the allocation counter counts nothing: {first}"
    );

    const IO: usize = 200;
    let t0 = Instant::now();
    workload(&m, &data, 10_000, IO, 1_000);
    let took = t0.elapsed();
    // Past --times-max-delay (1 s): the pending times are flushed by the
    // proxy's timer inside the window too.
    std::thread::sleep(Duration::from_millis(1500));

    let second = dump_stats(&mut m);
    eprintln!("window of {took:?}:\n  before: {first}\n  after:  {second}");
    let requests = stat_field(&second, "requests") - stat_field(&first, "requests");
    let replies = stat_field(&second, "replies") - stat_field(&first, "replies");
    assert!(
        requests >= 10_000,
        "only {requests} requests crossed the proxy in the window"
    );
    assert!(replies >= 10_000, "only {replies} replies in the window");
    assert_eq!(stat_field(&second, "bad_replies"), 0, "{second}");
    // Time updates flowed through the engine in the window: answered
    // locally and applied by flushes of the proxy's own.
    let acked = stat_field(&second, "times_acked") - stat_field(&first, "times_acked");
    let flushes = stat_field(&second, "times_flushes") - stat_field(&first, "times_flushes");
    assert!(
        acked >= 2_500,
        "only {acked} time updates answered locally: {second}"
    );
    assert!(flushes > 0, "no time update was flushed: {second}");
    assert_eq!(
        stat_field(&second, "allocations"),
        0,
        "the proxy allocated while forwarding {requests} requests: {second}"
    );
    drop(data);
    // The writes reached the backing file (direct I/O: no cache between).
    let backing = fs::read(m.backing_path("data")).unwrap();
    let chunks = DATA_LEN / CHUNK;
    for c in 0..chunks {
        let last = (0..IO).rev().find(|k| k % chunks == c).unwrap();
        let want = pattern(1_000 + last as u64, CHUNK);
        assert!(
            backing[c * CHUNK..(c + 1) * CHUNK] == want[..],
            "backing chunk {c} is not write #{last}"
        );
    }
}

/// Notifications go to the writer thread over preallocated channels and
/// come back with a wake-up: no allocation on either thread. libfuse's
/// `notify_inval_entry` invalidates the root's entry every second once it has
/// been looked up; lookups of missing names run meanwhile.
#[test]
fn notifications_do_not_allocate() {
    let mut m = common::notify_inval_entry_mount();
    if m.mode() != Mode::Proxy {
        return;
    }
    // Looks up the current entry (so that its rename is notified), then
    // missing names for `d`.
    let run = |m: &Mount, d: Duration| {
        let t0 = Instant::now();
        let mut i = 0u64;
        while t0.elapsed() < d {
            if i.is_multiple_of(500) {
                // The daemon renames its one file every second: a name read
                // just before a rename is gone when looked up; read again.
                let found = (0..5).any(|_| {
                    let name = fs::read_dir(m.mountpoint())
                        .unwrap()
                        .next()
                        .unwrap()
                        .unwrap()
                        .file_name();
                    fs::symlink_metadata(m.path(name)).is_ok()
                });
                assert!(found, "the daemon's file could not be looked up");
            }
            assert!(fs::symlink_metadata(m.path(format!("missing-{i}"))).is_err());
            i += 1;
        }
    };
    run(&m, Duration::from_millis(2500));
    let first = dump_stats(&mut m);
    run(&m, Duration::from_millis(3500));
    let second = dump_stats(&mut m);
    eprintln!("before: {first}\nafter:  {second}");
    let notifications = stat_field(&second, "notifications") - stat_field(&first, "notifications");
    assert!(
        notifications >= 2,
        "only {notifications} notifications: {second}"
    );
    assert_eq!(
        stat_field(&second, "allocations"),
        0,
        "the proxy allocated while delivering {notifications} notifications: {second}"
    );
}
