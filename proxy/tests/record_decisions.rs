//! `--record` carries the proxy's decisions: a real session over
//! passthrough_ll whose time updates the proxy answers locally, coalesces,
//! flushes (at their deadline, and early for a request that must see them,
//! which is held meanwhile). The capture, read back with the fixtures
//! crate, must agree with the proxy's own counters (its last `stats:` log
//! line): its decoded requests with `requests=` and `injected=`, its
//! decisions with `times_acked=`, `times_coalesced=`, `times_flushes=`,
//! `held=` and the others; and `decode` must show every decision on the
//! line of a message, none on a line of its own.
//!
//! Proxy mode is forced (`raw_proxy_args`): a direct mount records nothing.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use fuseproxy_fixtures::decision;
use fuseproxy_fixtures::{decode_capture, End, Filter, Format, Reader, Stats};

use common::stats::{stat_field, stats_lines};
use common::{sys, Mode, MountBuilder};

/// A decision code, by the name the capture tools print.
fn code(name: &str) -> u16 {
    decision::CODES
        .iter()
        .find(|c| c.1 == name)
        .unwrap_or_else(|| panic!("no decision {name}"))
        .0
}

#[test]
fn decisions_in_the_capture_agree_with_the_proxys_counters() {
    let pll = common::passthrough_ll().to_str().unwrap().to_owned();
    let args = vec![
        "--record",
        "{dir}/session.fcap",
        "{mnt}",
        "--",
        &pll,
        "-f",
        "-o",
        "source={backing}",
        "{mnt}",
    ];
    let mut m = MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args(args)
        .mount();

    // CREATE's reply gives the proxy the file's attributes: the time
    // updates after it are answered locally, the later ones merged into
    // the first (root may set any file's times).
    for name in ["a", "b"] {
        fs::write(m.path(name), b"times").unwrap();
        for i in 0..5 {
            let t = sys::ts(1_600_000_000 + i, 0);
            sys::utimensat(&m.path(name), t, t, 0).expect("utimensat");
        }
    }
    // A chmod of "a" must see its times applied first: the proxy flushes
    // them now and holds the chmod until the flush is answered.
    fs::set_permissions(m.path("a"), fs::Permissions::from_mode(0o600)).unwrap();
    // "b"'s times go at their deadline (1 s after the first).
    std::thread::sleep(Duration::from_millis(1500));
    let meta = fs::metadata(m.backing().join("b")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::mtime(&meta),
        1_600_000_004,
        "b's last update reached the backing file"
    );
    let log = m.umount_and_exit();
    let stats_line = stats_lines(&log).pop().expect("a final stats line");
    let counter = |key| stat_field(&stats_line, key);

    let capture = fs::read(m.dir().join("session.fcap")).expect("the capture file");
    let mut reader = Reader::new(&capture).expect("a capture");
    let stats = Stats::from_reader(&mut reader).expect("no corrupt record");
    let Some(End::Complete { dropped: 0, .. }) = reader.end() else {
        panic!("not complete, or records dropped: {:?}", reader.end());
    };

    // The workload did what it is for.
    assert!(counter("times_acked") >= 8, "{stats_line}");
    assert!(counter("times_coalesced") >= 6, "{stats_line}");
    assert!(counter("times_flushes") >= 2, "{stats_line}");
    assert!(counter("held") >= 1, "{stats_line}");

    // Decoded messages against the proxy's counts: every request read from
    // the kernel, plus the proxy's own (its rewrites of the kernel's are
    // not counted twice).
    let decoded: u64 = stats.opcodes().map(|(_, s)| s.requests).sum();
    let per_opcode: Vec<String> = stats
        .opcodes()
        .map(|(op, s)| format!("{op:?}={}", s.requests))
        .collect();
    assert_eq!(
        decoded,
        counter("requests") + counter("injected"),
        "decoded per opcode: {per_opcode:?}\n{stats_line}\n--- proxy's log ---\n{log}"
    );
    let t = stats.time_updates();
    assert_eq!(t.answered_locally, counter("times_acked"), "{stats_line}");
    assert_eq!(t.flushes, counter("times_flushes"), "{stats_line}");

    // Decisions against the counters they stand for.
    for (name, key) in [
        ("times_acked", "times_acked"),
        ("times_coalesced", "times_coalesced"),
        ("times_forwarded", "times_forwarded"),
        ("held_behind_flush", "held"),
        ("flush_sent", "times_flushes"),
        ("flush_failed", "times_flush_errors"),
        ("flush_moot", "times_flush_moot"),
        ("delayed", "delayed"),
        ("deadline_expired", "deadlines_hit"),
        ("late_reply_dropped", "late_replies"),
        ("flush_retry", "flush_retries"),
        ("flush_gave_up", "flush_gave_up"),
        ("writeback_open", "writeback_opens"),
        ("negative_entry", "negative_entries"),
        ("bad_reply_dropped", "bad_replies"),
    ] {
        assert_eq!(
            stats.decision(code(name)),
            counter(key),
            "decision {name} against {key}: {stats_line}"
        );
    }
    let error_answers: u64 = stats
        .decisions()
        .filter(|(c, _)| decision::is_error_answer(*c))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        error_answers,
        counter("answered_with_error"),
        "{stats_line}"
    );
    // Every held request was released, and every flush answered.
    assert_eq!(
        stats.decision(code("released")),
        counter("held") + counter("delayed")
    );
    assert_eq!(
        stats.decision(code("flush_ok"))
            + stats.decision(code("flush_failed"))
            + stats.decision(code("flush_moot")),
        counter("times_flushes")
    );

    // `decode` shows each decision on its message's line.
    let mut out = Vec::new();
    decode_capture(&capture, &Filter::default(), Format::Text, &mut out)
        .unwrap()
        .expect("complete");
    let text = String::from_utf8(out).unwrap();
    let on_lines = |s: &str| text.lines().filter(|l| l.contains(s)).count() as u64;
    if std::env::var_os("SHOW_DECODE").is_some() {
        eprintln!("{text}");
    }
    let acked_lines = text
        .lines()
        .filter(|l| l.contains("[answered locally: times async]"))
        .collect::<Vec<_>>();
    assert_eq!(acked_lines.len() as u64, counter("times_acked"), "{text}");
    assert!(
        acked_lines.iter().all(|l| l.contains(" K> FUSE_SETATTR ")),
        "{text}"
    );
    let held: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("[held behind flush 0x"))
        .collect();
    assert_eq!(held.len() as u64, counter("held"), "{text}");
    for line in &held {
        let flush = line
            .split("[held behind flush ")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .unwrap();
        assert!(
            text.lines()
                .any(|l| l.contains(&format!(" B> FUSE_SETATTR unique={flush} "))
                    && l.contains("[flush of node")),
            "the flush {flush} a request waits for is in the capture: {text}"
        );
    }
    assert_eq!(
        on_lines("[flush ok]"),
        stats.decision(code("flush_ok")),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.contains(" -- [")),
        "a decision on a line of its own: {text}"
    );
}
