//! `--record FILE`: a real session over passthrough_ll, read back with the
//! fixtures crate. The capture must be Complete and hold every request the
//! proxy counted, each answered exactly once toward the kernel, with the
//! proxy's own messages (a time update answered locally, its flush) marked
//! as made by the proxy. The recorder streams through a ring to a writer
//! thread: a ring too small drops records and counts them, a killed proxy
//! leaves a capture cut short but readable, files rotate at a size and are
//! readable by their owner only.
//!
//! Proxy mode is forced (`raw_proxy_args`): a direct mount records nothing.

mod common;

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

use fuseproxy_fixtures::{AlignedBuf, Direction, End, Kind, Reader, Stats};
use fuseproxy_protocol::abi::{InHeader, OutHeader, SetattrIn};
use fuseproxy_protocol::{flags, Opcode};
use zerocopy::FromBytes;

use common::stats::{stat_field, stats_lines};
use common::{sys, Mode, Mount, MountBuilder};

/// Mounts passthrough_ll through `fuseproxy --record {dir}/session.fcap
/// EXTRA...`.
fn recording(extra: &[&str]) -> Mount {
    let pll = common::passthrough_ll().to_str().unwrap().to_owned();
    let mut args = vec!["--record", "{dir}/session.fcap"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["{mnt}", "--", &pll, "-f", "-o", "source={backing}", "{mnt}"]);
    MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args(args)
        .mount()
}

/// A little of everything: create, write, read, a time update, rename,
/// mkdir, a listing, unlink.
fn workload(m: &Mount) {
    fs::write(m.path("a"), b"hello through the proxy").unwrap();
    assert_eq!(fs::read(m.path("a")).unwrap(), b"hello through the proxy");
    sys::utimensat(
        &m.path("a"),
        sys::ts(1_600_000_000, 0),
        sys::ts(1_600_000_000, 0),
        0,
    )
    .expect("utimensat");
    fs::rename(m.path("a"), m.path("b")).unwrap();
    fs::create_dir(m.path("d")).unwrap();
    let names: Vec<_> = fs::read_dir(m.mountpoint()).unwrap().collect();
    assert_eq!(names.len(), 2);
    fs::remove_file(m.path("b")).unwrap();
}

fn header<T: FromBytes>(bytes: &[u8]) -> T {
    T::read_from_prefix(bytes).expect("a FUSE header").0
}

#[test]
fn a_session_is_recorded_whole() {
    let mut m = recording(&[]);
    workload(&m);
    let log = m.umount_and_exit();
    let capture = fs::read(m.dir().join("session.fcap")).expect("the capture file");
    let stats_line = stats_lines(&log).pop().expect("a final stats line");
    assert!(log.contains("recorded "), "{log}");

    let mut reader = Reader::new(&capture).expect("a capture");
    let (note, protocol) = (reader.header().note.to_owned(), reader.header().protocol);
    assert!(note.contains("passthrough_ll"), "note: {note}");
    let (major, minor) = protocol.expect("the kernel's INIT version");
    assert!(major == 7 && minor >= 31, "protocol {major}.{minor}");

    let mut scratch = AlignedBuf::new();
    // unique -> opcode of kernel requests not yet answered toward the kernel.
    let mut open: HashMap<u64, Opcode> = HashMap::new();
    let (mut requests, mut to_kernel) = (0u64, 0u64);
    let mut local_time_answers = 0;
    let mut flushed_mtime = None;
    let mut created_a = false;
    let mut first = None;
    while let Some(rec) = reader.next().expect("no corrupt record") {
        first.get_or_insert(rec.kind);
        let msg = scratch.load(rec.bytes);
        match (rec.kind, rec.direction) {
            (Kind::RequestFromKernel, Direction::FromKernel) => {
                requests += 1;
                let h: InHeader = header(msg);
                let op = Opcode::from(h.opcode);
                if matches!(op, Opcode::Create | Opcode::Mknod) && msg.ends_with(b"a\0") {
                    created_a = true;
                }
                if op.needs_reply() {
                    assert!(
                        open.insert(h.unique, op).is_none(),
                        "unique {} twice",
                        h.unique
                    );
                }
            }
            (Kind::ReplyToKernel, Direction::ToKernel) => {
                to_kernel += 1;
                let h: OutHeader = header(msg);
                let op = open
                    .remove(&h.unique)
                    .unwrap_or_else(|| panic!("a reply to unknown unique {}", h.unique));
                if op == Opcode::Setattr && rec.is_synthesized() {
                    local_time_answers += 1;
                }
            }
            (Kind::RequestToBackend, Direction::ToBackend) => {
                let h: InHeader = header(msg);
                if Opcode::from(h.opcode) == Opcode::Setattr {
                    assert!(
                        rec.is_synthesized(),
                        "the proxy's flush is marked as its own"
                    );
                    let arg = SetattrIn::read_from_prefix(&msg[40..]).unwrap().0;
                    assert_ne!(arg.valid & flags::FATTR_MTIME, 0);
                    flushed_mtime = Some(arg.mtime);
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        reader.end(),
        Some(End::Complete {
            records: reader.records_read(),
            dropped: 0
        })
    );
    assert_eq!(first, Some(Kind::RequestFromKernel), "INIT comes first");
    assert_eq!(
        requests,
        stat_field(&stats_line, "requests"),
        "requests in the capture against the proxy's count: {stats_line}"
    );
    assert!(open.is_empty(), "requests never answered: {open:?}");
    assert!(to_kernel >= 20, "only {to_kernel} replies to the kernel");
    assert!(created_a, "no CREATE/MKNOD of \"a\" in the capture");
    assert!(
        local_time_answers >= 1,
        "no time update answered by the proxy"
    );
    assert_eq!(
        flushed_mtime,
        Some(1_600_000_000),
        "the flush carries the time set"
    );

    // The fixtures' statistics agree: nothing pending, nothing unmatched.
    let stats = Stats::from_reader(&mut Reader::new(&capture).unwrap()).unwrap();
    assert_eq!(
        (
            stats.pending(),
            stats.unmatched_replies(),
            stats.unparsable()
        ),
        (0, 0, 0)
    );
    assert_eq!(stats.opcode(Opcode::Create).map(|s| s.requests), Some(1));
}

/// Reads every record of `capture`; none may be corrupt. Returns the
/// records' kinds and how the file ended.
fn read_all(capture: &[u8]) -> (Vec<Kind>, End, u64) {
    let mut reader = Reader::new(capture).expect("a capture");
    let mut kinds = Vec::new();
    while let Some(rec) = reader.next().expect("no corrupt record") {
        kinds.push(rec.kind);
    }
    (kinds, reader.end().expect("an end"), reader.dropped())
}

/// A ring smaller than the messages the workload makes (64 KiB WRITEs into
/// a 4 KiB ring, among small requests): the writes' records are dropped,
/// the file marks each gap and counts them all, the log says so, and the
/// mount works throughout.
#[test]
fn a_tiny_ring_drops_records_counts_them_and_the_mount_works() {
    let mut m = recording(&["--record-size", "4K"]);
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    for i in 0..20 {
        fs::write(m.path(format!("w{i}")), &data).unwrap();
        assert!(fs::symlink_metadata(m.path(format!("missing-{i}"))).is_err());
    }
    for i in 0..20 {
        assert!(fs::read(m.path(format!("w{i}"))).unwrap() == data, "w{i}");
    }
    let log = m.umount_and_exit();
    let stats_line = stats_lines(&log).pop().expect("a final stats line");
    let logged_drops = stat_field(&stats_line, "record_dropped");
    assert!(logged_drops >= 20, "{stats_line}");
    assert!(
        log.contains(&format!("{logged_drops} were dropped")),
        "no warning with the drops: {log}"
    );

    let capture = fs::read(m.dir().join("session.fcap")).unwrap();
    let (kinds, end, gaps) = read_all(&capture);
    let End::Complete { records, dropped } = end else {
        panic!("not complete: {end:?}");
    };
    assert_eq!(records, kinds.len() as u64);
    assert_eq!(records, stat_field(&stats_line, "recorded"), "{stats_line}");
    assert_eq!(dropped, logged_drops, "the file and the log agree");
    assert_eq!(gaps, dropped, "every drop is in a gap record");
    assert_eq!(kinds[0], Kind::RequestFromKernel);
    assert!(records > 100, "only {records} records kept");
}

/// A proxy killed outright while recording: the capture holds everything
/// the writer drained, whole, and reads as cut short, not corrupt. 2000
/// look-ups of distinct missing names are made and given time to drain;
/// more traffic runs while the proxy is killed.
#[test]
fn a_killed_proxy_leaves_a_partial_capture_of_what_was_drained() {
    let mut m = recording(&[]);
    const LOOKUPS: usize = 2000;
    for i in 0..LOOKUPS {
        assert!(fs::symlink_metadata(m.path(format!("missing-{i}"))).is_err());
    }
    // Well past the writer's period (50 ms).
    std::thread::sleep(Duration::from_millis(500));
    let mnt = m.mountpoint().to_owned();
    let busy = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        let mut i = 0u64;
        while t0.elapsed() < Duration::from_secs(10) {
            match fs::symlink_metadata(mnt.join(format!("late-{i}"))) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => i += 1,
                _ => break,
            }
        }
        i
    });
    std::thread::sleep(Duration::from_millis(100));
    m.send_signal(common::Signal::SIGKILL).unwrap();
    assert!(m.wait_exit(Duration::from_secs(10)).is_some());
    let late = busy.join().unwrap();
    assert!(late > 0, "no traffic while the proxy was killed");

    let capture = fs::read(m.dir().join("session.fcap")).unwrap();
    let mut reader = Reader::new(&capture).expect("a capture");
    assert!(
        reader.header().protocol.is_some(),
        "the header has INIT's version"
    );
    let mut scratch = AlignedBuf::new();
    let (mut lookups, mut answered) = (0usize, 0usize);
    let mut open: HashMap<u64, ()> = HashMap::new();
    while let Some(rec) = reader.next().expect("no corrupt record") {
        let msg = scratch.load(rec.bytes);
        match rec.kind {
            Kind::RequestFromKernel => {
                let h: InHeader = header(msg);
                if Opcode::from(h.opcode) == Opcode::Lookup && msg[40..].starts_with(b"missing-") {
                    lookups += 1;
                    open.insert(h.unique, ());
                }
            }
            Kind::ReplyToKernel => {
                let h: OutHeader = header(msg);
                if open.remove(&h.unique).is_some() && h.error == -libc::ENOENT {
                    answered += 1;
                }
            }
            _ => {}
        }
    }
    let Some(End::Partial { records, offset }) = reader.end() else {
        panic!("a killed recording is not Partial: {:?}", reader.end());
    };
    eprintln!(
        "{records} records in {offset} of {} bytes; {late} late look-ups",
        capture.len()
    );
    assert!(
        lookups >= LOOKUPS && answered >= LOOKUPS,
        "{lookups} look-ups and {answered} answers of {LOOKUPS} survived"
    );
}

/// `--record-file-size 64K --record-files 3`: about 1 MiB of 4 KiB writes
/// makes many files; the newest three remain, numbered in sequence, each
/// a complete capture within the size, the older ones deleted.
#[test]
fn rotation_keeps_the_newest_files_each_complete() {
    let mut m = recording(&["--record-file-size", "64K", "--record-files", "3"]);
    let data = vec![b'r'; 4096];
    for i in 0..250 {
        fs::write(m.path(format!("f{i}")), &data).unwrap();
    }
    let log = m.umount_and_exit();
    let mut names: Vec<String> = fs::read_dir(m.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("session.fcap"))
        .collect();
    names.sort_by_key(|n| {
        n.strip_prefix("session.fcap.")
            .map_or(0, |k| k.parse::<u64>().unwrap())
    });
    assert_eq!(names.len(), 3, "files: {names:?}\n{log}");
    let last: u64 = names[2]
        .strip_prefix("session.fcap.")
        .unwrap()
        .parse()
        .unwrap();
    assert!(last >= 10, "only {} files for 1 MiB", last + 1);
    assert_eq!(
        names,
        [last - 2, last - 1, last].map(|k| format!("session.fcap.{k}")),
    );
    assert!(
        log.contains(&format!("files {}", m.dir().join(&names[0]).display())),
        "{log}"
    );
    let mut prev_end = 0;
    for n in &names {
        let capture = fs::read(m.dir().join(n)).unwrap();
        assert!(capture.len() <= 64 * 1024, "{n}: {} bytes", capture.len());
        let mut reader = Reader::new(&capture).unwrap();
        assert!(reader.header().protocol.is_some(), "{n} has the protocol");
        let mut times = Vec::new();
        while let Some(rec) = reader.next().expect("no corrupt record") {
            times.push(rec.time_ns);
        }
        assert!(
            matches!(reader.end(), Some(End::Complete { dropped: 0, .. })),
            "{n}: {:?}",
            reader.end()
        );
        assert!(times.len() > 10, "{n}: {} records", times.len());
        assert!(
            times[0] >= prev_end,
            "{n} goes on where the last one stopped"
        );
        prev_end = *times.last().unwrap();
    }
}

/// Captures hold file contents: each file (rotated ones too, and one that
/// existed with mode 0644) is 0600, and a user other than root cannot read
/// it, while a 0644 file beside it can be read (the directory is open).
#[test]
fn captures_are_readable_by_their_owner_only() {
    common::require_root_and_fuse();
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("fuseproxy-test.")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let capture = dir.path().join("session.fcap");
    let control = dir.path().join("control");
    for p in [&capture, &control] {
        fs::write(p, b"readable").unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let pll = common::passthrough_ll().to_str().unwrap().to_owned();
    let cap = capture.to_str().unwrap().to_owned();
    let mut m = MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args([
            "--record",
            &cap,
            "--record-file-size",
            "64K",
            "{mnt}",
            "--",
            &pll,
            "-f",
            "-o",
            "source={backing}",
            "{mnt}",
        ])
        .mount();
    fs::write(m.path("big"), vec![1u8; 200 * 1024]).unwrap();
    m.umount_and_exit();
    let rotated = dir.path().join("session.fcap.1");
    let as_nobody = |p: &std::path::Path| {
        std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", "cat"])
            .arg(p)
            .output()
            .expect("runuser")
    };
    for p in [&capture, &rotated] {
        let mode = fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", p.display());
        let out = as_nobody(p);
        assert!(!out.status.success(), "nobody read {}", p.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Permission denied"), "{err}");
    }
    let out = as_nobody(&control);
    assert!(out.status.success(), "the control file: {out:?}");
    assert_eq!(out.stdout, b"readable");
}

#[test]
fn a_capture_that_cannot_be_written_fails_the_run_and_says_why() {
    common::require_root_and_fuse();
    // A 64 KiB tmpfs: the file is created at start, the session's records
    // fill it while the mount runs.
    let dir = tempfile::Builder::new()
        .prefix("fuseproxy-test.")
        .tempdir()
        .unwrap();
    let small = dir.path().join("small");
    let _tmpfs = common::Tmpfs::mount(&small, "64k");
    let capture = small.join("session.fcap");

    let pll = common::passthrough_ll().to_str().unwrap().to_owned();
    let cap = capture.to_str().unwrap().to_owned();
    let mut m = MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args([
            "--record",
            &cap,
            "{mnt}",
            "--",
            &pll,
            "-f",
            "-o",
            "source={backing}",
            "{mnt}",
        ])
        .mount();
    fs::write(m.path("big"), vec![7u8; 256 * 1024]).unwrap();
    // The writer's failure is told while the mount runs, not only at the
    // end, and the mount goes on working.
    assert!(
        m.wait_log(
            "session.fcap failed: No space left on device",
            Duration::from_secs(5)
        ),
        "{}",
        m.proxy_log()
    );
    assert!(m
        .proxy_log()
        .contains("the rest of the session is not recorded"));
    assert_eq!(fs::read(m.path("big")).unwrap().len(), 256 * 1024);
    assert!(m.umount().is_some_and(|s| s.success()));
    let st = m
        .wait_exit(Duration::from_secs(20))
        .expect("the proxy did not exit after umount");
    let log = m.proxy_log();
    assert_eq!(st.code(), Some(1), "{st}\n{log}");
    let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.contains("writing --record")
            && last.contains("session.fcap")
            && last.contains("No space"),
        "last line: {last}"
    );

    assert!(!m.is_mounted());
}
