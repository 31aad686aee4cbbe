//! `on_flush_error = "retry"`, and records keeping the rules they were
//! acknowledged under.

use fuseproxy_protocol::abi::{ReadIn, SetattrIn};
use fuseproxy_protocol::flags::*;
use zerocopy::{FromBytes, IntoBytes};

use super::times::*;
use super::*;
use crate::{Duration, Rules};

const EACCES: i32 = -13;

fn ms(m: u64) -> Instant {
    T0 + Duration::from_millis(m)
}

/// Rules with `retries` retries, 100 ms apart at first.
fn retrying(retries: u32) -> Rules {
    let mut r = Rules::default();
    r.times.retries = retries;
    r.times.retry_backoff = Duration::from_millis(100);
    r
}

/// FILE's atime and mtime set at T0, its flush sent at the deadline;
/// returns the flush's unique.
fn flushed_at_deadline(e: &mut Engine) -> u64 {
    answered(&setattr(
        e,
        T0,
        10,
        0,
        times_arg(FATTR_ATIME | FATTR_MTIME, 7, 8),
    ));
    e.handle_timeout(ms(1000));
    let f = flushes(&std::iter::from_fn(|| e.poll_action(ms(1000))).collect::<Vec<_>>());
    assert_eq!(f.len(), 1);
    f[0].0
}

fn timeout(e: &mut Engine, now: Instant) -> Vec<Action> {
    e.handle_timeout(now);
    std::iter::from_fn(|| e.poll_action(now)).collect()
}

fn read_at(e: &mut Engine, now: Instant, unique: u64, slot: u32) -> Vec<Action> {
    submit_at(
        e,
        now,
        Opcode::Read,
        unique,
        FILE,
        ReadIn::default().as_bytes(),
        SlotId(slot),
    );
    std::iter::from_fn(|| e.poll_action(now)).collect()
}

fn times_of(arg: &SetattrIn) -> (u32, u64, u64) {
    (arg.valid, arg.atime, arg.mtime)
}

#[test]
fn a_refused_flush_is_sent_again_after_the_backoff_with_the_same_times() {
    let mut e = session_with(config(), retrying(3));
    let u = flushed_at_deadline(&mut e);
    events(&mut e);
    let acts = answer_flush_at(&mut e, ms(1000), u, EACCES);
    assert!(flushes(&acts).is_empty(), "not at once: {acts:?}");
    let s = e.stats();
    assert_eq!((s.times.flush_errors, s.policy.flush_retries), (1, 0));
    let ev = events(&mut e);
    assert!(
        ev.iter().any(|x| matches!(x,
            Event::FlushRetrying { error: EACCES, attempts: 1, left: 2, after, .. }
                if *after == Duration::from_millis(100))),
        "{ev:?}"
    );
    assert_eq!(
        e.poll_timeout(),
        Some(ms(1100)),
        "retry due after the back-off"
    );
    assert_eq!(e.pending_times(), 1);
    assert!(timeout(&mut e, ms(1099)).is_empty());
    let f = flushes(&timeout(&mut e, ms(1100)));
    assert_eq!(f.len(), 1);
    assert_eq!(
        times_of(&f[0].1),
        (FATTR_ATIME | FATTR_MTIME, 7, 8),
        "the same times"
    );
    assert_eq!(e.stats().policy.flush_retries, 1);
    answer_flush_at(&mut e, ms(1100), f[0].0, 0);
    assert_eq!((e.poll_timeout(), e.pending_times()), (None, 0));
    assert_eq!(e.stats().policy.flush_gave_up, 0);
}

#[test]
fn newer_times_win_per_field_over_a_refused_flush() {
    // Newer times acknowledged while the flush is in flight.
    let mut e = session_with(config(), retrying(3));
    let u = flushed_at_deadline(&mut e);
    answered(&setattr(
        &mut e,
        ms(1000),
        12,
        0,
        times_arg(FATTR_MTIME, 0, 9),
    ));
    answer_flush_at(&mut e, ms(1010), u, EACCES);
    // The newer record was due at 2000; the retry brings it to 1110.
    assert_eq!(e.poll_timeout(), Some(ms(1110)));
    let f = flushes(&timeout(&mut e, ms(1110)));
    assert_eq!(times_of(&f[0].1), (FATTR_ATIME | FATTR_MTIME, 7, 9));
    answer_flush_at(&mut e, ms(1110), f[0].0, 0);
    assert_eq!(e.poll_timeout(), None);

    // Newer times acknowledged while the retry waits for its back-off.
    let mut e = session_with(config(), retrying(3));
    let u = flushed_at_deadline(&mut e);
    answer_flush_at(&mut e, ms(1000), u, EACCES);
    answered(&setattr(
        &mut e,
        ms(1050),
        12,
        0,
        times_arg(FATTR_MTIME, 0, 9),
    ));
    assert_eq!(e.poll_timeout(), Some(ms(1100)), "not pushed back");
    let f = flushes(&timeout(&mut e, ms(1100)));
    assert_eq!(times_of(&f[0].1), (FATTR_ATIME | FATTR_MTIME, 7, 9));
}

#[test]
fn it_gives_up_after_the_last_retry_and_says_so() {
    let mut e = session_with(config(), retrying(2));
    let mut u = flushed_at_deadline(&mut e);
    let mut now = ms(1000);
    for (attempt, backoff) in [(1u32, 100u64), (2, 200)] {
        answer_flush_at(&mut e, now, u, EACCES);
        assert_eq!(e.poll_timeout(), Some(now + Duration::from_millis(backoff)));
        now = now + Duration::from_millis(backoff);
        let f = flushes(&timeout(&mut e, now));
        assert_eq!(f.len(), 1, "retry {attempt}");
        assert_eq!(times_of(&f[0].1), (FATTR_ATIME | FATTR_MTIME, 7, 8));
        u = f[0].0;
    }
    events(&mut e);
    let acts = answer_flush_at(&mut e, now, u, EACCES);
    assert!(flushes(&acts).is_empty());
    let s = e.stats();
    assert_eq!(
        (
            s.times.flush_errors,
            s.policy.flush_retries,
            s.policy.flush_gave_up
        ),
        (3, 2, 1)
    );
    let ev = events(&mut e);
    assert!(
        ev.iter().any(|x| matches!(x,
            Event::FlushFailed { node, error: EACCES, atime: Some((7, 0)), mtime: Some((8, 0)), attempts: 3 }
                if node.0 == FILE)),
        "{ev:?}"
    );
    assert_eq!((e.poll_timeout(), e.pending_times()), (None, 0));
    // Nothing is left to wait for.
    assert!(released(&read_at(&mut e, now, 20, 9), 9));
}

#[test]
fn under_log_a_refused_flush_is_given_up_at_once() {
    let mut e = session(config());
    let u = flushed_at_deadline(&mut e);
    events(&mut e);
    answer_flush_at(&mut e, ms(1000), u, EACCES);
    let s = e.stats();
    assert_eq!(
        (
            s.times.flush_errors,
            s.policy.flush_retries,
            s.policy.flush_gave_up
        ),
        (1, 0, 0)
    );
    assert!(matches!(
        events(&mut e)[..],
        [Event::FlushFailed { attempts: 1, .. }, ..]
    ));
    assert_eq!(e.poll_timeout(), None);
}

/// The rule for requests behind a refused flush: they are never released
/// before the times are applied (or given up), and they never wait out a
/// back-off: a retry something waits for goes at once.
#[test]
fn a_request_on_the_node_sends_a_waiting_retry_at_once() {
    // A READ arriving while the retry waits for its back-off.
    let mut e = session_with(config(), retrying(3));
    let u = flushed_at_deadline(&mut e);
    answer_flush_at(&mut e, ms(1000), u, EACCES);
    let acts = read_at(&mut e, ms(1010), 20, 9);
    let f = flushes(&acts);
    assert_eq!(f.len(), 1, "the retry goes at once: {acts:?}");
    assert!(!released(&acts, 9), "the READ waits for it");
    // Refused again: retried at once, the READ still waiting.
    let acts = answer_flush_at(&mut e, ms(1011), f[0].0, EACCES);
    let f = flushes(&acts);
    assert_eq!(f.len(), 1, "{acts:?}");
    assert!(!released(&acts, 9));
    let acts = answer_flush_at(&mut e, ms(1012), f[0].0, 0);
    assert!(released(&acts, 9), "{acts:?}");
    assert_eq!(e.stats().policy.flush_retries, 2);

    // A READ held behind the first attempt: its refusal retries at once.
    let mut e = session_with(config(), retrying(1));
    let u = flushed_at_deadline(&mut e);
    assert!(!released(&read_at(&mut e, ms(1000), 20, 9), 9));
    let acts = answer_flush_at(&mut e, ms(1001), u, EACCES);
    let f = flushes(&acts);
    assert_eq!(f.len(), 1, "{acts:?}");
    // The last retry refused: given up, and the READ goes.
    let acts = answer_flush_at(&mut e, ms(1002), f[0].0, EACCES);
    assert!(released(&acts, 9), "{acts:?}");
    assert_eq!(e.stats().policy.flush_gave_up, 1);
}

#[test]
fn a_forget_waits_with_the_retry_and_shutdown_sends_it_at_once() {
    let mut rules = retrying(3);
    rules.times.retry_backoff = Duration::from_secs(60);
    let mut e = session_with(config(), rules);
    let u = flushed_at_deadline(&mut e);
    answer_flush_at(&mut e, ms(1000), u, EACCES);
    // FORGET: deferred; no caller waits for it, so the back-off stands.
    let mut b = Buf::new();
    let n = request(&mut b, Opcode::Forget, 12, FILE, &1u64.to_ne_bytes());
    e.handle_request(ms(1001), WALL, SlotId(3), &mut b.0[..n]);
    let acts: Vec<_> = std::iter::from_fn(|| e.poll_action(ms(1001))).collect();
    assert!(matches!(acts[..], [Action::Free(SlotId(3))]), "{acts:?}");
    assert_eq!(e.poll_timeout(), Some(ms(61_000)));
    // Shutdown sends it at once; refused again, retried at once; DESTROY
    // after the last, the FORGET before it.
    e.handle_shutdown(ms(1002));
    let acts: Vec<_> = std::iter::from_fn(|| e.poll_action(ms(1002))).collect();
    let f = flushes(&acts);
    assert_eq!(f.len(), 1, "{acts:?}");
    let acts = answer_flush_at(&mut e, ms(1003), f[0].0, EACCES);
    let f = flushes(&acts);
    assert_eq!(f.len(), 1, "{acts:?}");
    let acts = answer_flush_at(&mut e, ms(1004), f[0].0, 0);
    let sent: Vec<u32> = acts
        .iter()
        .filter_map(|a| match a {
            Action::Inject(r) => Some(
                fuseproxy_protocol::abi::InHeader::read_from_prefix(r.as_bytes())
                    .unwrap()
                    .0
                    .opcode,
            ),
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        [u32::from(Opcode::Forget), u32::from(Opcode::Destroy)],
        "{acts:?}"
    );
}

#[test]
fn a_reload_leaves_acknowledged_records_their_rules() {
    // max_delay: the record acknowledged under 1 s keeps its deadline
    // whether the reload makes it longer or shorter; new records get the
    // new one.
    for new_delay in [5000, 100] {
        let mut e = session(config());
        answered(&setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5)));
        let mut rules = e.rules().clone();
        rules.times.max_delay = Duration::from_millis(new_delay);
        e.set_rules(rules);
        assert_eq!(e.poll_timeout(), Some(ms(1000)), "new delay {new_delay}");
        lookup(&mut e, 30, 8, 0);
        let mut b = Buf::new();
        let h = fuseproxy_protocol::abi::InHeader {
            opcode: Opcode::Setattr.into(),
            unique: 32,
            nodeid: 8,
            ..Default::default()
        };
        let n = encode::encode_request(&mut b.0, &h, &[times_arg(FATTR_MTIME, 0, 6).as_bytes()])
            .unwrap();
        e.handle_request(ms(10), WALL, SlotId(4), &mut b.0[..n]);
        drain(&mut e);
        assert_eq!(
            e.poll_timeout(),
            Some(ms(1000.min(10 + new_delay))),
            "new delay {new_delay}"
        );
        let f = flushes(&timeout(&mut e, ms(1000)));
        assert_eq!(f.len(), if new_delay == 100 { 2 } else { 1 });
    }

    // on_flush_error: acknowledged under "retry", refused after a reload
    // to "log": still retried.
    let mut e = session_with(config(), retrying(3));
    answered(&setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5)));
    e.set_rules(Rules::default());
    let f = flushes(&timeout(&mut e, ms(1000)));
    answer_flush_at(&mut e, ms(1000), f[0].0, EACCES);
    assert_eq!(e.poll_timeout(), Some(ms(1100)), "retried as acknowledged");
    // And the other way: acknowledged under "log", refused under "retry".
    let mut e = session(config());
    answered(&setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5)));
    e.set_rules(retrying(3));
    let f = flushes(&timeout(&mut e, ms(1000)));
    answer_flush_at(&mut e, ms(1000), f[0].0, EACCES);
    assert_eq!((e.poll_timeout(), e.stats().times.flush_errors), (None, 1));
}

#[test]
fn every_update_reaches_the_backend_once_though_flushes_are_refused() {
    ordering_harness(true);
}

#[test]
fn node_times_stays_small() {
    // Each node state is counted in locked memory (README): retries and
    // per-record rules took no room (328 bytes before them); the `unlinked`
    // flag (moot flushes) took the last 8; when each applied time was
    // applied and when the state was made (so that no reply gets times the
    // backend had before its request was sent, nor a reused node id a
    // forgotten file's) took 32.
    assert!(
        std::mem::size_of::<crate::times::NodeTimes>() == 368,
        "{}",
        std::mem::size_of::<crate::times::NodeTimes>()
    );
}
