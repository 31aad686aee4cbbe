//! Decisions: each local answer, coalescing, hold, release, flush and
//! rewrite is reported with the message it concerns, and the counters in
//! `Stats` agree with the decisions reported.

use std::collections::BTreeMap;

use fuseproxy_protocol::abi::{EntryOut, GetattrIn, ReleaseIn};
use fuseproxy_protocol::flags::*;
use fuseproxy_protocol::NodeId;
use zerocopy::IntoBytes;

use super::times::*;
use super::*;
use crate::config::Policy;
use crate::{Decision, DecisionKind, Duration, Rules, Stats};

/// An engine past INIT with FILE cached, decisions on from its first input.
fn recording(rules: Rules) -> Engine {
    let mut e = Engine::with_rules(config(), rules);
    e.set_decisions(true);
    started(e)
}

fn decisions(e: &mut Engine) -> Vec<Decision> {
    std::iter::from_fn(|| e.poll_decision()).collect()
}

fn kinds(d: &[Decision]) -> Vec<DecisionKind> {
    d.iter().map(|d| d.kind).collect()
}

/// Counting decisions by kind gives the counters: the invariant the
/// capture tools rely on.
pub(super) fn assert_agree(s: &Stats, all: &[Decision]) {
    let mut count: BTreeMap<DecisionKind, u64> = BTreeMap::new();
    let mut sum: BTreeMap<DecisionKind, u64> = BTreeMap::new();
    for d in all {
        *count.entry(d.kind).or_default() += 1;
        let s = sum.entry(d.kind).or_default();
        *s = s.wrapping_add(d.detail);
    }
    let n = |k| count.get(&k).copied().unwrap_or(0);
    let total = |k| sum.get(&k).copied().unwrap_or(0);
    use DecisionKind as K;
    let t = s.times;
    let p = s.policy;
    let errors: u64 = all.iter().filter(|d| d.kind.is_error_answer()).count() as u64;
    assert_eq!(t.acked_locally, n(K::TimesAcked), "acked {all:?}");
    assert_eq!(t.coalesced, n(K::TimesCoalesced), "coalesced");
    assert_eq!(t.forwarded_sync, n(K::TimesForwarded), "forwarded_sync");
    assert_eq!(t.flushes, n(K::FlushSent), "flushes");
    assert_eq!(t.flush_errors, n(K::FlushFailed), "flush_errors");
    assert_eq!(t.flush_moot, n(K::FlushMoot), "flush_moot");
    assert_eq!(t.held, n(K::HeldBehindFlush), "held");
    assert_eq!(p.denied, n(K::Denied) + n(K::ReadOnly), "denied");
    assert_eq!(p.faulted, n(K::Faulted), "faulted");
    assert_eq!(p.delayed, n(K::Delayed), "delayed");
    assert_eq!(p.deadlines_hit, n(K::DeadlineExpired), "deadlines");
    assert_eq!(p.late_replies, n(K::LateReplyDropped), "late");
    assert_eq!(p.flush_retries, n(K::FlushRetry), "retries");
    assert_eq!(p.flush_gave_up, n(K::FlushGaveUp), "gave up");
    assert_eq!(
        p.init_rewrites,
        total(K::InitOfferRewritten) + total(K::InitAnswerRewritten),
        "init"
    );
    assert_eq!(p.writeback_opens, n(K::WritebackOpen), "writeback");
    assert_eq!(p.cache_changed, total(K::CacheRewritten), "cache");
    assert_eq!(p.negative_entries, n(K::NegativeEntry), "negative");
    assert_eq!(s.answered_with_error, errors, "answered_with_error");
    assert_eq!(s.bad.total(), n(K::BadReplyDropped), "bad replies");
}

#[test]
fn codes_round_trip_and_names_are_distinct() {
    let mut names = std::collections::HashSet::new();
    for k in DecisionKind::ALL {
        assert_eq!(DecisionKind::from_code(k.code()), Some(*k));
        assert!(names.insert(k.name()));
    }
    assert_eq!(DecisionKind::from_code(0), None);
}

#[test]
fn off_by_default_reports_nothing() {
    let mut e = session(config());
    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
    assert_eq!(e.poll_decision(), None);
}

#[test]
fn acknowledged_coalesced_held_flushed_and_released() {
    let mut e = recording(Rules::default());
    let mut all = decisions(&mut e);
    let file = NodeId(FILE);

    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
    let d = decisions(&mut e);
    assert_eq!(kinds(&d), [DecisionKind::TimesAcked]);
    assert_eq!((d[0].unique, d[0].node), (Unique(10), file));
    all.extend(d);

    setattr(&mut e, T0, 12, 0, times_arg(FATTR_ATIME, 7, 0));
    let d = decisions(&mut e);
    assert_eq!(
        kinds(&d),
        [DecisionKind::TimesAcked, DecisionKind::TimesCoalesced]
    );
    assert!(d.iter().all(|d| d.unique == Unique(12) && d.node == file));
    all.extend(d);

    // A RELEASE on the node flushes the times and waits for the flush.
    submit(
        &mut e,
        Opcode::Release,
        14,
        FILE,
        ReleaseIn::default().as_bytes(),
        SlotId(5),
    );
    let f = flushes(&drain(&mut e));
    assert_eq!(f.len(), 1);
    let flush = f[0].0;
    let d = decisions(&mut e);
    assert_eq!(
        d,
        [
            Decision {
                unique: Unique(flush),
                node: file,
                kind: DecisionKind::FlushSent,
                detail: 1
            },
            Decision {
                unique: Unique(14),
                node: file,
                kind: DecisionKind::HeldBehindFlush,
                detail: flush
            },
        ]
    );
    all.extend(d);

    let after = answer_flush(&mut e, flush, 0);
    assert!(released(&after, 5));
    let d = decisions(&mut e);
    assert_eq!(
        kinds(&d),
        [DecisionKind::FlushOk, DecisionKind::Released],
        "{d:?}"
    );
    assert_eq!((d[0].unique, d[1].unique), (Unique(flush), Unique(14)));
    all.extend(d);
    assert_agree(&e.stats(), &all);
}

#[test]
fn failed_and_moot_flushes_and_forwarded_updates() {
    let mut e = recording(Rules::default());
    let mut all = decisions(&mut e);
    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
    e.handle_timeout(T0 + Duration::from_millis(1000));
    let f = flushes(&drain(&mut e));
    answer_flush(&mut e, f[0].0, -13);
    all.extend(decisions(&mut e));
    let failed = all.iter().find(|d| d.kind == DecisionKind::FlushFailed);
    assert_eq!(
        failed.map(|d| (d.unique, d.detail)),
        Some((Unique(f[0].0), 13))
    );

    // An update by a caller who does not own the file goes to the backend.
    let acts = setattr(&mut e, T0, 20, 4321, times_arg(FATTR_MTIME, 0, 6));
    assert!(matches!(acts[..], [Action::ForwardRequest(_)]));
    let d = decisions(&mut e);
    assert_eq!(kinds(&d), [DecisionKind::TimesForwarded]);
    all.extend(d);

    // Acknowledged, then the file's last name goes: the flush is moot.
    setattr(&mut e, T0, 30, 0, times_arg(FATTR_MTIME, 0, 7));
    let mut b = Buf::new();
    let n = request(&mut b, Opcode::Unlink, 32, 1, b"f\0");
    e.handle_request(T0, WALL, SlotId(4), &mut b.0[..n]);
    drain(&mut e);
    let n = raw_reply(&mut b, 16, 0, 32, 16);
    e.handle_reply(T0, SlotId(5), &mut b.0[..n], n);
    drain(&mut e);
    e.handle_timeout(T0 + Duration::from_millis(2000));
    let f = flushes(&drain(&mut e));
    answer_flush(&mut e, f[0].0, -2);
    let d = decisions(&mut e);
    assert!(
        d.iter()
            .any(|d| d.kind == DecisionKind::FlushMoot && d.unique == Unique(f[0].0)),
        "{d:?}"
    );
    all.extend(d);
    assert_agree(&e.stats(), &all);
}

fn with_policy(policy: &str) -> Engine {
    let mut e = Engine::with_rules(
        Config {
            max_inflight: 64,
            max_held: 8,
            ..Config::default()
        },
        Rules::compile(&Policy::parse("test.toml", policy).unwrap()),
    );
    e.set_decisions(true);
    e
}

#[test]
fn rules_report_what_they_answered_and_rewrote() {
    let mut e = with_policy(
        "[deny]\nread_only = true\nMKDIR = \"EPERM\"\n\
         [fault.READ]\nprobability = 1.0\nerrno = \"ENOSPC\"\n\
         [fault.GETATTR]\ndelay = \"200ms\"\n\
         [cache]\nmin_attr_timeout = \"5s\"\nnegative_timeout = \"2s\"\n",
    );
    submit(&mut e, Opcode::Unlink, 2, 1, b"f\0", SlotId(0));
    submit(&mut e, Opcode::Mkdir, 4, 1, &[0u8; 9], SlotId(0));
    submit(&mut e, Opcode::Read, 6, 5, &[0u8; 40], SlotId(0));
    drain(&mut e);
    let d = decisions(&mut e);
    assert_eq!(
        d.iter()
            .map(|d| (d.kind, d.unique.0, d.detail))
            .collect::<Vec<_>>(),
        [
            (DecisionKind::ReadOnly, 2, 30),
            (DecisionKind::Denied, 4, 1),
            (DecisionKind::Faulted, 6, 28)
        ]
    );
    let mut all = d;

    submit(
        &mut e,
        Opcode::Getattr,
        8,
        5,
        GetattrIn::default().as_bytes(),
        SlotId(3),
    );
    e.handle_timeout(T0 + Duration::from_millis(200));
    drain(&mut e);
    let d = decisions(&mut e);
    assert_eq!(
        d.iter().map(|d| (d.kind, d.unique.0)).collect::<Vec<_>>(),
        [(DecisionKind::Delayed, 8), (DecisionKind::Released, 8)]
    );
    assert_eq!(d[0].detail, 200_000_000);
    all.extend(d);

    submit(&mut e, Opcode::Lookup, 10, 1, b"g\0", SlotId(1));
    drain(&mut e);
    let mut b = Buf::new();
    let out = EntryOut {
        nodeid: 9,
        ..EntryOut::default()
    };
    let n = reply(&mut b, 10, out.as_bytes());
    e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
    submit(&mut e, Opcode::Lookup, 12, 1, b"nope\0", SlotId(1));
    drain(&mut e);
    let n = raw_reply(&mut b, 16, -2, 12, 16);
    e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
    drain(&mut e);
    let d = decisions(&mut e);
    assert_eq!(
        d.iter().map(|d| (d.kind, d.unique.0)).collect::<Vec<_>>(),
        [
            (DecisionKind::CacheRewritten, 10),
            (DecisionKind::NegativeEntry, 12)
        ]
    );
    all.extend(d);

    // A reply nobody asked for is dropped, with the unique it carried.
    let n = raw_reply(&mut b, 16, 0, 99, 16);
    e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
    drain(&mut e);
    let d = decisions(&mut e);
    assert_eq!(
        d.iter()
            .map(|d| (d.kind, d.unique.0, d.detail))
            .collect::<Vec<_>>(),
        [(DecisionKind::BadReplyDropped, 99, 6)]
    );
    all.extend(d);
    assert_agree(&e.stats(), &all);
}

#[test]
fn deadlines_late_replies_and_a_gone_backend() {
    let mut e = with_policy("[deadlines]\ndefault = \"1s\"\n");
    submit(
        &mut e,
        Opcode::Getattr,
        2,
        5,
        GetattrIn::default().as_bytes(),
        SlotId(0),
    );
    drain(&mut e);
    e.handle_timeout(T0 + Duration::from_secs(1));
    drain(&mut e);
    let mut b = Buf::new();
    let n = raw_reply(&mut b, 16, -2, 2, 16);
    e.handle_reply(T0 + Duration::from_secs(2), SlotId(1), &mut b.0[..n], n);
    drain(&mut e);
    let mut all = decisions(&mut e);
    assert_eq!(
        all.iter()
            .map(|d| (d.kind, d.unique.0, d.node.0))
            .collect::<Vec<_>>(),
        [
            (DecisionKind::DeadlineExpired, 2, 5),
            (DecisionKind::LateReplyDropped, 2, 5)
        ]
    );

    submit(
        &mut e,
        Opcode::Getattr,
        4,
        6,
        GetattrIn::default().as_bytes(),
        SlotId(0),
    );
    drain(&mut e);
    e.handle_backend_gone(T0);
    drain(&mut e);
    submit(
        &mut e,
        Opcode::Getattr,
        6,
        7,
        GetattrIn::default().as_bytes(),
        SlotId(0),
    );
    drain(&mut e);
    let d = decisions(&mut e);
    assert_eq!(
        d.iter().map(|d| (d.kind, d.unique.0)).collect::<Vec<_>>(),
        [
            (DecisionKind::BackendGone, 4),
            (DecisionKind::BackendGone, 6)
        ]
    );
    all.extend(d);
    assert_agree(&e.stats(), &all);
}
