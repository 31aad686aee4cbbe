//! `--record FILE`: a real session over passthrough_ll, read back with the
//! fixtures crate. The capture must be Complete and hold every request the
//! proxy counted, each answered exactly once toward the kernel, with the
//! proxy's own messages (a time update answered locally, its flush) marked
//! as made by the proxy. A buffer too small for the session keeps an exact
//! prefix and says how much it lost.
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

#[test]
fn a_full_buffer_keeps_a_prefix_and_counts_the_rest() {
    let mut m = recording(&["--record-size", "4K"]);
    workload(&m);
    let log = m.umount_and_exit();
    assert!(log.contains("did not fit --record-size"), "{log}");
    let capture = fs::read(m.dir().join("session.fcap")).unwrap();
    assert!(capture.len() <= 4096);
    let mut reader = Reader::new(&capture).unwrap();
    let mut kinds = Vec::new();
    while let Some(rec) = reader.next().expect("no corrupt record") {
        kinds.push(rec.kind);
    }
    let Some(End::Complete { records, dropped }) = reader.end() else {
        panic!("not complete: {:?}", reader.end());
    };
    assert_eq!(records, kinds.len() as u64);
    assert!(
        records >= 2 && dropped > 0,
        "{records} kept, {dropped} dropped"
    );
    assert_eq!(kinds[0], Kind::RequestFromKernel);
}

#[test]
fn a_capture_that_cannot_be_written_fails_the_run_and_says_why() {
    common::require_root_and_fuse();
    // A 64 KiB tmpfs: the file is created at start, the session written at
    // the end does not fit.
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
