//! fuseproxy against a backend that sends garbage (`backends/bad_backend.py`).
//!
//! For each kind of bad reply the script aims at the LOOKUP of "bad", the
//! test checks that:
//! - the proxy survives, and the mount still serves "good" properly;
//! - the call the garbage was aimed at is answered: with EIO by the proxy
//!   when the garbage names the request (length mismatch, error out of
//!   range, error with body, oversized), or by the script's proper reply
//!   that follows garbage naming no request (short header, unknown unique);
//! - the first bad reply is logged in detail (naming the request the script
//!   says it garbled), the second is summed up within about a second with
//!   the right category count, the SIGUSR1 stats line counts both, and the
//!   kernel never saw the garbage (`stale_writes=0 rejected_writes=0`);
//! - SIGTERM still ends the session with status 0 and final stats.
//!
//! A reply to a FORGET (which the kernel never answers) is dropped as an
//! unknown unique. The `correct` mode is the control: no bad replies.
//!
//! Proxy mode is forced (`raw_proxy_args`): the script can only speak to a
//! proxy, through the `/dev/fd/N` the proxy gives it; it never mounts, so
//! it runs with `--channel fd`.

mod common;

use common::stats::{dump_stats, stat_field, stats_lines};

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{stat_with_timeout, wait_until, Mode, Mount, MountBuilder, Signal};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/backends/bad_backend.py");

/// A stat the proxy must answer: well within this.
const CALL_BOUND: Duration = Duration::from_secs(5);

fn mount_bad(mode: &str) -> Mount {
    MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args([
            "--channel",
            "fd",
            "--record",
            "{dir}/session.fcap",
            "{mnt}",
            "--",
            "python3",
            SCRIPT,
            mode,
            "{mnt}",
        ])
        .mount()
}

/// A stat that must return (the thread is left behind if it does not; the
/// Mount guard's cleanup ends the connection and frees it).
fn stat(p: &Path) -> io::Result<fs::Metadata> {
    stat_with_timeout(p, CALL_BOUND)
        .unwrap_or_else(|| panic!("stat {} did not return within {CALL_BOUND:?}", p.display()))
}

/// "good" is a 4-byte regular file with mode 0644, and the proxy still runs.
fn assert_usable(m: &mut Mount) {
    assert_eq!(
        m.exit_status(),
        None,
        "the proxy exited:\n{}",
        m.proxy_log()
    );
    let md = stat(&m.path("good")).expect("stat good");
    assert!(md.is_file(), "good: {md:?}");
    assert_eq!(md.len(), 4);
    assert_eq!(md.permissions().mode() & 0o7777, 0o644);
}

/// The uniques the script says it sent garbage for, in order.
fn garbled_uniques(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.strip_prefix("bad_backend: LOOKUP bad (unique "))
        .filter_map(|r| r.split(')').next())
        .map(str::to_owned)
        .collect()
}

fn line_with<'a>(log: &'a str, needle: &str) -> Option<&'a str> {
    log.lines().find(|l| l.contains(needle))
}

/// SIGTERM: exit 0, and the final stats line counts `bad` bad replies.
fn assert_clean_exit(m: &mut Mount, bad: u64) {
    m.send_signal(Signal::SIGTERM).unwrap();
    let st = m
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy did not exit after SIGTERM");
    let log = m.proxy_log();
    assert_eq!(st.code(), Some(0), "exit status {st}; log:\n{log}");
    assert!(!m.is_mounted());
    let last = stats_lines(&log).pop().expect("no final stats line");
    assert_eq!(stat_field(&last, "bad_replies"), bad, "final stats: {last}");
}

/// One kind of garbage, aimed at the LOOKUP of "bad" twice.
fn garbage_case(mode: &str, reason: &str, names_the_request: bool) {
    let mut m = mount_bad(mode);
    assert_usable(&mut m);

    let check_call = |m: &Mount, round: u32| {
        let got = stat(&m.path("bad"));
        if names_the_request {
            let e = got.expect_err("stat bad succeeded despite the garbage");
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EIO),
                "round {round}: stat bad gave {e}, not EIO"
            );
        } else {
            let md = got.unwrap_or_else(|e| {
                panic!("round {round}: stat bad failed ({e}) though a proper reply followed")
            });
            assert!(md.is_file() && md.len() == 0, "bad: {md:?}");
        }
    };

    check_call(&m, 1);
    assert_usable(&mut m);
    let log = m.proxy_log();
    let first = garbled_uniques(&log);
    assert_eq!(first.len(), 1, "the script garbled {first:?}:\n{log}");
    let detail = if names_the_request {
        format!(
            "bad reply from the backend ({reason}); request {} answered with EIO",
            first[0]
        )
    } else {
        format!("bad reply from the backend ({reason}); dropped")
    };
    assert!(
        m.wait_log(&detail, Duration::from_secs(2)),
        "no {detail:?} in the log:\n{}",
        m.proxy_log()
    );

    // The second is not logged by itself but summed up within a second.
    check_call(&m, 2);
    assert_usable(&mut m);
    let summary = "1 more bad replies from the backend dropped (2 in all: ";
    assert!(
        m.wait_log(summary, Duration::from_secs(3)),
        "no summary {summary:?} within 3 s:\n{}",
        m.proxy_log()
    );
    let log = m.proxy_log();
    let line = line_with(&log, summary).unwrap();
    assert!(
        line.contains(&format!("{reason} 2")),
        "the summary does not count 2 x {reason}: {line}"
    );
    assert_eq!(
        log.matches("bad reply from the backend (").count(),
        1,
        "more than one detailed line:\n{log}"
    );

    let stats = dump_stats(&mut m);
    assert_eq!(stat_field(&stats, "bad_replies"), 2, "{stats}");
    let answered = if names_the_request { 2 } else { 0 };
    assert_eq!(
        stat_field(&stats, "answered_with_error"),
        answered,
        "{stats}"
    );
    // Nothing of the garbage reached the kernel.
    assert_eq!(stat_field(&stats, "rejected_writes"), 0, "{stats}");
    assert_eq!(stat_field(&stats, "stale_writes"), 0, "{stats}");
    assert_eq!(stat_field(&stats, "inflight"), 0, "{stats}");

    assert_clean_exit(&mut m, 2);
    assert_recorded(&m, if names_the_request { 2 } else { 0 });
}

/// The capture (`--record`) holds the session whole, the garbage as it came
/// (`B<`), and the proxy's `eio` EIO answers marked as its own (`K<`).
fn assert_recorded(m: &Mount, eio: usize) {
    use fuseproxy_fixtures::{Direction, End, Kind, Reader};
    let file = fs::read(m.dir().join("session.fcap")).expect("the capture");
    let mut r = Reader::new(&file).expect("a capture");
    let (mut from_backend, mut own_eio) = (0, 0);
    while let Some(rec) = r.next().expect("no corrupt record") {
        match (rec.kind, rec.direction) {
            (Kind::ReplyFromBackend, Direction::FromBackend) => from_backend += 1,
            (Kind::ReplyToKernel, Direction::ToKernel) if rec.is_synthesized() => {
                let error = i32::from_ne_bytes(rec.bytes[4..8].try_into().unwrap());
                if error == -libc::EIO {
                    own_eio += 1;
                }
            }
            _ => {}
        }
    }
    assert!(
        matches!(r.end(), Some(End::Complete { dropped: 0, .. })),
        "{:?}",
        r.end()
    );
    assert!(
        from_backend >= 4,
        "only {from_backend} replies from the backend recorded"
    );
    assert_eq!(
        own_eio, eio,
        "EIO answers of the proxy's own in the capture"
    );
}

#[test]
fn correct_backend_control() {
    let mut m = mount_bad("correct");
    assert_usable(&mut m);
    let md = stat(&m.path("bad")).expect("stat bad");
    assert!(md.is_file());
    let e = stat(&m.path("missing")).expect_err("missing exists");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    let stats = dump_stats(&mut m);
    assert_eq!(stat_field(&stats, "bad_replies"), 0, "{stats}");
    assert!(!m.proxy_log().contains("bad reply"));
    assert_clean_exit(&mut m, 0);
    assert_recorded(&m, 0);
}

#[test]
fn short_header_is_dropped() {
    garbage_case("short-header", "short header", false);
}

#[test]
fn unknown_unique_is_dropped() {
    garbage_case("unknown-unique", "unknown unique", false);
}

#[test]
fn length_mismatch_answers_eio() {
    garbage_case("length-mismatch", "length mismatch", true);
}

#[test]
fn positive_error_answers_eio() {
    garbage_case("error-positive", "error out of range", true);
}

#[test]
fn too_negative_error_answers_eio() {
    garbage_case("error-too-negative", "error out of range", true);
}

#[test]
fn error_with_body_answers_eio() {
    garbage_case("error-with-body", "error with body", true);
}

#[test]
fn oversized_datagram_answers_eio() {
    garbage_case("oversized", "oversized", true);
}

#[test]
fn reply_to_forget_is_dropped() {
    // Each LOOKUP of "bad" gives a new node id, so the kernel forgets the
    // previous one (FORGET or BATCH_FORGET), which the script answers.
    let mut m = mount_bad("forget-reply");
    assert_usable(&mut m);
    let detail = "bad reply from the backend (unknown unique); dropped";
    let mut rounds = 0;
    let seen = wait_until(Duration::from_secs(10), || {
        rounds += 1;
        let md = stat(&m.path("bad")).expect("stat bad");
        assert!(md.is_file());
        m.proxy_log().contains(detail)
    });
    assert!(
        seen,
        "no {detail:?} after {rounds} lookups:\n{}",
        m.proxy_log()
    );
    assert_usable(&mut m);
    // Every reply the script sent to a FORGET is counted, none delivered.
    let mut stats = String::new();
    let mut replied = 0;
    let counted = wait_until(Duration::from_secs(3), || {
        replied = m
            .proxy_log()
            .lines()
            .filter(|l| l.starts_with("bad_backend: replying to "))
            .count() as u64;
        stats = dump_stats(&mut m);
        stat_field(&stats, "bad_replies") == replied
    });
    assert!(
        counted && replied >= 1,
        "script replied to {replied} FORGETs; proxy: {stats}"
    );
    assert_eq!(stat_field(&stats, "stale_writes"), 0, "{stats}");
    assert_eq!(stat_field(&stats, "rejected_writes"), 0, "{stats}");
    assert_eq!(stat_field(&stats, "answered_with_error"), 0, "{stats}");
    let bad = stat_field(&stats, "bad_replies");
    // The final count may grow if the kernel forgets more before the end.
    m.send_signal(Signal::SIGTERM).unwrap();
    let st = m
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy did not exit after SIGTERM");
    assert_eq!(st.code(), Some(0), "log:\n{}", m.proxy_log());
    let last = stats_lines(&m.proxy_log()).pop().unwrap();
    assert!(stat_field(&last, "bad_replies") >= bad, "{last}");
}
