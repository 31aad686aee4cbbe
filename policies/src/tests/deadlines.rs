//! `[deadlines]` as the engine applies it, with a made-up clock.

use super::*;
use crate::config::Policy;
use crate::{Duration, Rules};
use fuseproxy_protocol::abi::{
    Attr, EntryOut, ForgetIn, GetattrIn, InitIn, InitOut, OpenOut, ReadIn, ReleaseIn,
};
use zerocopy::FromBytes;

const EIO: i32 = 5;
const ETIMEDOUT: i32 = 110;

fn engine_with(policy: &str) -> Engine {
    Engine::with_rules(
        Config {
            max_inflight: 64,
            max_held: 8,
            ..Config::default()
        },
        Rules::compile(&Policy::parse("test.toml", policy).unwrap()),
    )
}

fn ms(n: u64) -> Instant {
    T0 + Duration::from_millis(n)
}

fn getattr_at(e: &mut Engine, now: Instant, unique: u64, slot: u32) {
    let body = GetattrIn::default();
    submit_at(
        e,
        now,
        Opcode::Getattr,
        unique,
        5,
        body.as_bytes(),
        SlotId(slot),
    );
}

fn deliver(e: &mut Engine, now: Instant, unique: u64, body: &[u8], slot: u32) -> Vec<Action> {
    let mut b = Buf::new();
    let n = reply(&mut b, unique, body);
    e.handle_reply(now, SlotId(slot), &mut b.0[..n], n);
    drain(e)
}

/// The requests of the proxy's own among `acts`: (opcode, node, body).
fn injected(acts: &[Action]) -> Vec<(Opcode, u64, Vec<u8>)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Inject(i) => {
                let (h, body) = InHeader::read_from_prefix(i.as_bytes()).unwrap();
                Some((Opcode::from(h.opcode), h.nodeid, body.to_vec()))
            }
            _ => None,
        })
        .collect()
}

fn injected_unique(acts: &[Action], op: Opcode) -> u64 {
    acts.iter()
        .find_map(|a| match a {
            Action::Inject(i) => {
                let (h, _) = InHeader::read_from_prefix(i.as_bytes()).unwrap();
                (Opcode::from(h.opcode) == op).then_some(h.unique)
            }
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_getattr_past_its_deadline_is_answered_at_the_due_time_and_not_before() {
    let mut e = engine_with("[deadlines]\ndefault = \"1s\"\n");
    getattr_at(&mut e, T0, 2, 3);
    assert!(matches!(
        drain(&mut e)[..],
        [Action::ForwardRequest(SlotId(3))]
    ));
    assert_eq!(e.poll_timeout(), Some(ms(1000)));
    e.handle_timeout(T0 + Duration::from_nanos(999_999_999));
    e.handle_timeout(ms(999));
    assert!(drain(&mut e).is_empty(), "answered early");
    assert_eq!(e.inflight(), 1);
    e.handle_timeout(ms(1000));
    assert_answered(&mut e, 2, EIO);
    assert_eq!((e.inflight(), e.poll_timeout()), (0, None));
    assert_eq!(e.stats().policy.deadlines_hit, 1);
    assert!(matches!(
        events(&mut e)[..],
        [Event::DeadlineExpired {
            unique: Unique(2),
            opcode: Opcode::Getattr,
            errno: EIO,
            sent: true,
            ..
        }]
    ));
    // Spurious calls later do nothing.
    e.handle_timeout(ms(5000));
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_late_reply_is_dropped_and_counted_once() {
    let mut e = engine_with("[deadlines]\ndefault = \"1s\"\n");
    getattr_at(&mut e, T0, 2, 3);
    drain(&mut e);
    e.handle_timeout(ms(1000));
    drain(&mut e);
    events(&mut e);
    let acts = deliver(&mut e, ms(1500), 2, &[0u8; 104], 4);
    assert!(matches!(acts[..], [Action::Free(SlotId(4))]), "{acts:?}");
    let s = e.stats();
    assert_eq!(
        (s.policy.late_replies, s.bad.unknown_unique, s.replies),
        (1, 0, 0)
    );
    assert!(matches!(
        events(&mut e)[..],
        [Event::LateReply {
            unique: Unique(2),
            opcode: Opcode::Getattr,
            error: 0,
            undone: 0
        }]
    ));
    // A second reply under the same unique is garbage, not late.
    let acts = deliver(&mut e, ms(1600), 2, &[0u8; 104], 4);
    assert!(matches!(acts[..], [Action::Free(SlotId(4))]));
    let s = e.stats();
    assert_eq!((s.policy.late_replies, s.bad.unknown_unique), (1, 1));
}

#[test]
fn a_reply_in_time_cancels_the_deadline() {
    let mut e = engine_with("[deadlines]\ndefault = \"1s\"\n");
    getattr_at(&mut e, T0, 2, 3);
    drain(&mut e);
    let acts = deliver(&mut e, ms(999), 2, &[0u8; 104], 4);
    assert!(matches!(acts[..], [Action::DeliverReply(SlotId(4))]));
    assert_eq!(e.poll_timeout(), None);
    e.handle_timeout(ms(1000));
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.stats().policy.deadlines_hit, 0);
}

#[test]
fn per_opcode_limits_override_the_default_and_zero_means_none() {
    let mut e = engine_with(
        "[deadlines]\ndefault = \"1s\"\nerrno = \"ETIMEDOUT\"\nREAD = \"30s\"\nGETATTR = \"0\"\n",
    );
    getattr_at(&mut e, T0, 2, 1);
    submit(
        &mut e,
        Opcode::Read,
        4,
        5,
        ReadIn::default().as_bytes(),
        SlotId(2),
    );
    submit(&mut e, Opcode::Lookup, 6, 1, b"x\0", SlotId(3));
    assert_eq!(drain(&mut e).len(), 3);
    assert_eq!(e.poll_timeout(), Some(ms(1000)));
    e.handle_timeout(ms(1000));
    assert_answered(&mut e, 6, ETIMEDOUT);
    assert_eq!(e.poll_timeout(), Some(ms(30_000)));
    e.handle_timeout(ms(29_999));
    assert!(drain(&mut e).is_empty());
    e.handle_timeout(ms(30_000));
    assert_answered(&mut e, 4, ETIMEDOUT);
    // The GETATTR has no deadline at all.
    assert_eq!((e.poll_timeout(), e.inflight()), (None, 1));
    e.handle_timeout(ms(3_600_000));
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_held_request_expires_and_its_slot_is_freed() {
    let mut e = engine_with("[deadlines]\ndefault = \"1s\"\n[fault.GETATTR]\ndelay = \"5s\"\n");
    getattr_at(&mut e, T0, 2, 7);
    assert!(drain(&mut e).is_empty(), "held by the fault delay");
    assert_eq!(e.poll_timeout(), Some(ms(1000)));
    e.handle_timeout(ms(1000));
    let acts = drain(&mut e);
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert!(acts.iter().any(|a| matches!(a, Action::Free(SlotId(7)))));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::AnswerError {
            unique: Unique(2),
            errno: EIO
        }
    )));
    assert!(matches!(
        events(&mut e)[..],
        [Event::DeadlineExpired { sent: false, .. }]
    ));
    // Nothing is left to release when the delay ends: the backend never
    // sees it.
    assert_eq!((e.poll_timeout(), e.inflight()), (None, 0));
    e.handle_timeout(ms(5000));
    assert!(drain(&mut e).is_empty());
    assert!(e.can_accept_request());
    assert_eq!(e.stats().policy.deadlines_hit, 1);
}

#[test]
fn a_late_lookup_is_forgotten_and_a_late_open_released() {
    let mut e = engine_with("[deadlines]\ndefault = \"1s\"\n");
    submit(&mut e, Opcode::Lookup, 2, 1, b"x\0", SlotId(1));
    submit(&mut e, Opcode::Open, 4, 9, &[0u8; 8], SlotId(2));
    submit(
        &mut e,
        Opcode::Create,
        6,
        1,
        b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0y\0",
        SlotId(3),
    );
    submit(&mut e, Opcode::Opendir, 8, 10, &[0u8; 8], SlotId(4));
    submit(&mut e, Opcode::Lookup, 10, 1, b"z\0", SlotId(5));
    assert_eq!(drain(&mut e).len(), 5);
    e.handle_timeout(ms(1000));
    assert_eq!(drain(&mut e).len(), 5);
    assert_eq!(e.stats().policy.deadlines_hit, 5);

    let entry = EntryOut {
        nodeid: 42,
        attr: Attr {
            ino: 42,
            mode: 0o100644,
            ..Attr::default()
        },
        ..EntryOut::default()
    };
    let acts = deliver(&mut e, ms(2000), 2, entry.as_bytes(), 6);
    assert!(matches!(acts.last(), Some(Action::Free(SlotId(6)))));
    let forget = ForgetIn { nlookup: 1 };
    assert_eq!(
        injected(&acts),
        [(Opcode::Forget, 42, forget.as_bytes().to_vec())]
    );

    let open = OpenOut {
        fh: 0xf00,
        ..OpenOut::default()
    };
    let acts = deliver(&mut e, ms(2000), 4, open.as_bytes(), 6);
    let release = ReleaseIn {
        fh: 0xf00,
        ..ReleaseIn::default()
    };
    assert_eq!(
        injected(&acts),
        [(Opcode::Release, 9, release.as_bytes().to_vec())]
    );
    // The RELEASE's own reply is the engine's, not the kernel's.
    let ours = injected_unique(&acts, Opcode::Release);
    assert_eq!(e.inflight(), 1);
    let acts = deliver(&mut e, ms(2001), ours, &[], 6);
    assert!(matches!(acts[..], [Action::Free(SlotId(6))]));
    assert_eq!(e.inflight(), 0);

    let mut created = entry.as_bytes().to_vec();
    created.extend_from_slice(open.as_bytes());
    let acts = deliver(&mut e, ms(2000), 6, &created, 6);
    assert_eq!(
        injected(&acts),
        [
            (Opcode::Release, 42, release.as_bytes().to_vec()),
            (Opcode::Forget, 42, forget.as_bytes().to_vec())
        ]
    );

    let acts = deliver(&mut e, ms(2000), 8, open.as_bytes(), 6);
    assert_eq!(
        injected(&acts),
        [(Opcode::Releasedir, 10, release.as_bytes().to_vec())]
    );

    // A late failure left nothing behind.
    let mut b = Buf::new();
    let n = raw_reply(&mut b, 16, -2, 10, 16);
    e.handle_reply(ms(2000), SlotId(6), &mut b.0[..n], n);
    assert!(matches!(drain(&mut e)[..], [Action::Free(SlotId(6))]));
    let p = e.stats().policy;
    assert_eq!((p.late_replies, e.stats().bad.total()), (5, 0));
}

#[test]
fn init_forget_and_interrupt_never_expire() {
    let mut e = engine_with("[deadlines]\ndefault = \"1s\"\n");
    let init = InitIn {
        major: 7,
        minor: 45,
        ..InitIn::default()
    };
    submit(&mut e, Opcode::Init, 2, 0, init.as_bytes(), SlotId(1));
    submit(&mut e, Opcode::Forget, 4, 9, &1u64.to_ne_bytes(), SlotId(2));
    submit(
        &mut e,
        Opcode::Interrupt,
        7,
        0,
        &2u64.to_ne_bytes(),
        SlotId(3),
    );
    assert_eq!(drain(&mut e).len(), 3);
    assert_eq!(e.poll_timeout(), None);
    e.handle_timeout(ms(60_000));
    assert!(drain(&mut e).is_empty());
    let out = InitOut {
        major: 7,
        minor: 45,
        max_write: 131072,
        ..InitOut::default()
    };
    let acts = deliver(&mut e, ms(60_000), 2, out.as_bytes(), 4);
    assert!(matches!(acts[..], [Action::DeliverReply(SlotId(4))]));
    assert!(e.is_initialized());
    // DESTROY too, which the kernel sends for fuseblk mounts.
    submit(&mut e, Opcode::Destroy, 6, 0, &[], SlotId(5));
    drain(&mut e);
    assert_eq!(e.poll_timeout(), None);
    assert_eq!(e.stats().policy.deadlines_hit, 0);
}

#[test]
fn the_deadlines_stay_bounded_by_what_is_in_flight() {
    let mut e = engine_with("[deadlines]\ndefault = \"1s\"\n");
    let mut now = T0;
    let mut unique = 2;
    // Thousands of requests answered in time, 32 at once, and every tenth
    // batch left to expire, with its late replies after.
    for round in 0..200u64 {
        let first = unique;
        for i in 0..32 {
            getattr_at(&mut e, now, unique, i);
            unique += 2;
        }
        assert_eq!(drain(&mut e).len(), 32);
        assert_eq!(e.poll_timeout(), Some(now + Duration::from_secs(1)));
        if round % 10 == 9 {
            now = now + Duration::from_secs(1);
            e.handle_timeout(now);
            assert_eq!(drain(&mut e).len(), 32);
        } else {
            now = now + Duration::from_millis(10);
        }
        for u in (first..unique).step_by(2) {
            let acts = deliver(&mut e, now, u, &[0u8; 104], 40);
            assert_eq!(acts.len(), 1);
        }
        assert_eq!((e.inflight(), e.poll_timeout()), (0, None));
    }
    let s = e.stats();
    assert_eq!(
        (s.policy.deadlines_hit, s.policy.late_replies, s.replies),
        (640, 640, 5760)
    );
}

#[test]
fn a_reload_keeps_the_deadlines_of_requests_in_flight() {
    let mut e = engine_with("[deadlines]\ndefault = \"1s\"\n");
    getattr_at(&mut e, T0, 2, 1);
    drain(&mut e);
    e.set_rules(Rules::compile(
        &Policy::parse(
            "t",
            "[deadlines]\ndefault = \"10s\"\nerrno = \"ETIMEDOUT\"\n",
        )
        .unwrap(),
    ));
    getattr_at(&mut e, ms(500), 4, 2);
    drain(&mut e);
    e.set_rules(Rules::default());
    getattr_at(&mut e, ms(600), 6, 3);
    drain(&mut e);
    e.handle_timeout(ms(1000));
    assert_answered(&mut e, 2, EIO);
    assert_eq!(e.poll_timeout(), Some(ms(10_500)));
    e.handle_timeout(ms(10_500));
    assert_answered(&mut e, 4, ETIMEDOUT);
    assert_eq!((e.poll_timeout(), e.inflight()), (None, 1));
}

#[test]
fn a_gone_backend_leaves_no_deadline_behind() {
    let mut e = engine_with("[deadlines]\ndefault = \"1s\"\n");
    getattr_at(&mut e, T0, 2, 1);
    drain(&mut e);
    e.handle_backend_gone(ms(10));
    assert_eq!(e.poll_timeout(), None);
    assert_answered(&mut e, 2, EIO);
    e.handle_timeout(ms(1000));
    assert!(drain(&mut e).is_empty());
    assert_eq!(e.stats().policy.deadlines_hit, 0);
}

#[test]
fn many_expiring_at_once_never_overflow_the_action_queue() {
    let mut e = Engine::with_rules(
        Config {
            max_inflight: 1000,
            ..Config::default()
        },
        Rules::compile(&Policy::parse("t", "[deadlines]\ndefault = \"1s\"\n").unwrap()),
    );
    for u in 0..1000 {
        getattr_at(&mut e, T0, 2 + 2 * u, 1);
        drain(&mut e);
    }
    let mut answered = 0;
    let mut calls = 0;
    while e.poll_timeout().is_some_and(|t| t <= ms(1000)) {
        e.handle_timeout(ms(1000));
        let acts = drain(&mut e);
        assert!(acts.len() <= 128, "{}", acts.len());
        answered += acts.len();
        calls += 1;
    }
    assert_eq!((answered, e.inflight()), (1000, 0));
    assert!(calls > 1);
}

/// A chmod held behind a flush of acknowledged times waits under its own
/// deadline; the flush, the proxy's own, has none and goes on.
#[test]
fn a_request_held_behind_a_time_flush_expires_but_the_flush_does_not() {
    use fuseproxy_protocol::abi::SetattrIn;
    const FILE: u64 = 7;
    let mut e = super::times::session(super::times::config());
    e.set_rules(Rules::compile(
        &Policy::parse("t", "[deadlines]\ndefault = \"1s\"\n").unwrap(),
    ));
    let setattr = |e: &mut Engine, unique: u64, valid: u32, slot: u32| {
        let arg = SetattrIn {
            valid,
            mtime: 9,
            mode: 0o100600,
            ..SetattrIn::default()
        };
        submit(
            e,
            Opcode::Setattr,
            unique,
            FILE,
            arg.as_bytes(),
            SlotId(slot),
        );
        drain(e)
    };
    // MTIME | CTIME from root: acknowledged locally.
    let acts = setattr(&mut e, 10, 0x420, 2);
    assert!(
        matches!(acts[..], [Action::Answer(_), Action::Free(_)]),
        "{acts:?}"
    );
    // A chmod must wait for the times: the flush goes, the chmod is held.
    let acts = setattr(&mut e, 12, 0x1, 3);
    let flush = injected_unique(&acts, Opcode::Setattr);
    assert!(!acts.iter().any(|a| matches!(a, Action::ForwardRequest(_))));
    assert_eq!(e.poll_timeout(), Some(T0 + Duration::from_secs(1)));
    e.handle_timeout(ms(1000));
    let acts = drain(&mut e);
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert!(acts.iter().any(|a| matches!(a, Action::Free(SlotId(3)))));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::AnswerError {
            unique: Unique(12),
            errno: EIO
        }
    )));
    // The flush is still waited for, and its answer releases nothing.
    assert_eq!((e.inflight(), e.poll_timeout()), (1, None));
    let acts = deliver(&mut e, ms(5000), flush, &[0u8; 104], 4);
    assert!(matches!(acts[..], [Action::Free(SlotId(4))]), "{acts:?}");
    assert_eq!(e.inflight(), 0);
    assert_eq!(e.stats().policy.deadlines_hit, 1);
}

/// A WRITE past its deadline: the caller gets EIO, yet the backend may
/// still apply it, so the attributes the proxy keeps for local time answers
/// are no longer trusted: the next time update goes to the backend.
#[test]
fn an_expired_write_empties_the_attribute_cache() {
    use fuseproxy_protocol::abi::{SetattrIn, WriteIn};
    const FILE: u64 = 7;
    let mut e = super::times::session(super::times::config());
    e.set_rules(Rules::compile(
        &Policy::parse("t", "[deadlines]\ndefault = \"1s\"\n").unwrap(),
    ));
    let arg = WriteIn {
        size: 4,
        ..WriteIn::default()
    };
    let mut body = arg.as_bytes().to_vec();
    body.extend_from_slice(b"data");
    submit(&mut e, Opcode::Write, 10, FILE, &body, SlotId(2));
    assert!(matches!(drain(&mut e)[..], [Action::ForwardRequest(_)]));
    let clears = e.stats().times.cache_clears;
    e.handle_timeout(ms(1000));
    assert_answered(&mut e, 10, EIO);
    assert_eq!(e.stats().times.cache_clears, clears + 1);
    let times = SetattrIn {
        valid: 0x420,
        mtime: 9,
        ..SetattrIn::default()
    };
    submit(
        &mut e,
        Opcode::Setattr,
        12,
        FILE,
        times.as_bytes(),
        SlotId(3),
    );
    assert!(matches!(
        drain(&mut e)[..],
        [Action::ForwardRequest(SlotId(3))]
    ));
    // The write's late success is dropped like any late reply.
    let acts = deliver(&mut e, ms(3000), 10, &[4, 0, 0, 0, 0, 0, 0, 0], 4);
    assert!(matches!(acts[..], [Action::Free(SlotId(4))]));
    assert_eq!(e.stats().policy.late_replies, 1);
}

/// The only action is an error answer to `unique` with `errno`.
fn assert_answered(e: &mut Engine, unique: u64, errno: i32) {
    let acts = drain(e);
    assert!(
        matches!(acts[..], [Action::AnswerError { unique: Unique(u), errno: x }] if u == unique && x == errno),
        "expected only an answer to {unique} with errno {errno}: {acts:?}"
    );
}
