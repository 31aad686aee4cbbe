//! What a node's times state lays over replies, and when it ends: times
//! are laid only over replies to requests sent while they were pending or
//! being flushed (replies that may predate the flush), never over replies
//! to requests sent after the flush was answered; a FORGET goes as soon as
//! no flush of the node is pending or in flight, and the state ends with
//! it, so that nothing carries over to a reused node id. (The first three
//! tests are the stress test's reproductions, asserting the fix.)

use fuseproxy_protocol::abi::{
    Attr, AttrOut, CreateIn, EntryOut, GetattrIn, MknodIn, ReadIn, WriteIn, WriteOut,
};
use fuseproxy_protocol::flags::*;
use zerocopy::{FromBytes, IntoBytes};

use super::times::*;
use super::*;
use crate::Duration;

fn readdirplus(e: &mut Engine, unique: u64) {
    let arg = ReadIn {
        size: 4096,
        ..ReadIn::default()
    };
    submit(e, Opcode::Readdirplus, unique, 1, arg.as_bytes(), SlotId(6));
    assert!(matches!(drain(e)[..], [Action::ForwardRequest(SlotId(6))]));
}

/// The backend fails the listing `unique` (in slot 6).
fn fail_listing(e: &mut Engine, unique: u64) -> Vec<Action> {
    let mut b = Buf::new();
    let n = raw_reply(&mut b, 16, -5, unique, 16);
    e.handle_reply(T0, SlotId(6), &mut b.0[..n], n);
    drain(e)
}

/// The requests of the proxy's own in `acts`, as (opcode, node).
fn injected_ops(acts: &[Action]) -> Vec<(u32, u64)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Inject(r) => {
                let h = InHeader::read_from_prefix(r.as_bytes()).unwrap().0;
                Some((h.opcode, h.nodeid))
            }
            _ => None,
        })
        .collect()
}

fn injected_forgets(acts: &[Action]) -> usize {
    injected_ops(acts)
        .iter()
        .filter(|(op, n)| *op == u32::from(Opcode::Forget) && *n == FILE)
        .count()
}

/// The kernel forgets FILE (one lookup) from slot 3.
fn forget(e: &mut Engine, unique: u64) -> Vec<Action> {
    let mut b = Buf::new();
    let n = request(&mut b, Opcode::Forget, unique, FILE, &1u64.to_ne_bytes());
    e.handle_request(T0, WALL, SlotId(3), &mut b.0[..n]);
    drain(e)
}

/// FILE's attributes as the backend answers for them now.
fn attr(atime: u64, mtime: u64) -> Attr {
    Attr {
        ino: FILE,
        mode: 0o100644,
        nlink: 1,
        atime,
        mtime,
        ..Attr::default()
    }
}

/// A GETATTR of FILE in slot 5, not answered yet.
fn send_getattr(e: &mut Engine, unique: u64) {
    submit(
        e,
        Opcode::Getattr,
        unique,
        FILE,
        GetattrIn::default().as_bytes(),
        SlotId(5),
    );
    assert!(matches!(drain(e)[..], [Action::ForwardRequest(SlotId(5))]));
}

/// The backend answers GETATTR `unique` with `a`; returns the attributes
/// delivered.
fn answer_getattr(e: &mut Engine, unique: u64, a: Attr) -> Attr {
    let mut b = Buf::new();
    let out = AttrOut {
        attr: a,
        ..AttrOut::default()
    };
    let n = reply(&mut b, unique, out.as_bytes());
    e.handle_reply(T0, SlotId(5), &mut b.0[..n], n);
    drain(e);
    AttrOut::read_from_bytes(&b.0[16..n]).unwrap().attr
}

/// Sends `op` (in slot 8) for a name in directory 1 and answers it with
/// FILE's node id for a new file (ino 99, times 1); returns the times
/// delivered.
fn new_file_at_files_id(e: &mut Engine, op: Opcode, unique: u64, body: &[u8]) -> (u64, u64) {
    submit(e, op, unique, 1, body, SlotId(8));
    assert!(
        matches!(drain(e)[..], [Action::ForwardRequest(SlotId(8))]),
        "{op:?} goes at once"
    );
    let mut b = Buf::new();
    let entry = EntryOut {
        nodeid: FILE,
        attr: Attr {
            ino: 99,
            ..attr(1, 1)
        },
        ..EntryOut::default()
    };
    let mut body = entry.as_bytes().to_vec();
    if op == Opcode::Create {
        // fuse_open_out follows the entry.
        body.extend_from_slice(&[0u8; 16]);
    }
    let n = reply(&mut b, unique, &body);
    e.handle_reply(T0, SlotId(8), &mut b.0[..n], n);
    drain(e);
    let got = EntryOut::read_from_prefix(&b.0[16..n]).unwrap().0.attr;
    (got.atime, got.mtime)
}

/// Finding 2: a FORGET for a node whose state is only kept (for a listing)
/// was deferred and never sent, and DESTROY never either. It now goes at
/// once, and DESTROY goes at shutdown.
#[test]
fn a_forget_of_a_kept_state_goes_at_once_and_destroy_follows() {
    let mut e = session(config());
    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
    readdirplus(&mut e, 12);
    e.handle_timeout(T0 + Duration::from_millis(1000));
    let f = flushes(&drain(&mut e));
    answer_flush(&mut e, f[0].0, 0);
    let a1 = forget(&mut e, 14);
    assert!(
        matches!(a1[..], [Action::ForwardRequest(SlotId(3))]),
        "the kernel's FORGET is passed on at once: {a1:?}"
    );
    let a2 = fail_listing(&mut e, 12);
    e.handle_timeout(T0 + Duration::from_millis(5000));
    let a3 = drain(&mut e);
    e.handle_shutdown(T0 + Duration::from_millis(5000));
    let a4 = drain(&mut e);
    let all: Vec<Action> = a2.into_iter().chain(a3).chain(a4).collect();
    let inj = injected_ops(&all);
    assert_eq!(
        inj,
        [(u32::from(Opcode::Destroy), 0)],
        "no second FORGET, and DESTROY at shutdown: {all:?}"
    );
}

/// Finding 1b: after the deferred FORGET is sent, the backend may reuse
/// the node id for another file; its LOOKUP reply must not get the
/// forgotten file's times, though a listing is still in flight.
#[test]
fn a_reused_node_id_does_not_get_the_forgotten_files_times() {
    let mut e = session(config());
    setattr(
        &mut e,
        T0,
        10,
        0,
        times_arg(FATTR_ATIME | FATTR_MTIME, 100, 200),
    );
    let f = flushes(&forget(&mut e, 12));
    assert_eq!(f.len(), 1);
    readdirplus(&mut e, 14);
    let after = answer_flush(&mut e, f[0].0, 0);
    assert_eq!(injected_forgets(&after), 1, "{after:?}");
    // The backend frees node 7 and gives the id to a new file "h".
    let got = new_file_at_files_id(&mut e, Opcode::Lookup, 16, b"h\0");
    assert_eq!(
        got,
        (1, 1),
        "the new file 'h' shows the forgotten file's times"
    );
}

/// Finding 1a: a kept state's applied times were painted over a reply that
/// reflects a later WRITE.
#[test]
fn applied_times_are_not_painted_over_a_later_write() {
    let mut e = session(config());
    setattr(
        &mut e,
        T0,
        10,
        0,
        times_arg(FATTR_ATIME | FATTR_MTIME, 100, 200),
    );
    readdirplus(&mut e, 12);
    let mut b = Buf::new();
    let body: Vec<u8> = [
        WriteIn {
            offset: 0,
            size: 10,
            ..WriteIn::default()
        }
        .as_bytes(),
        &[0u8; 10],
    ]
    .concat();
    let n = request(&mut b, Opcode::Write, 14, FILE, &body);
    e.handle_request(T0, WALL, SlotId(4), &mut b.0[..n]);
    let f = flushes(&drain(&mut e));
    assert_eq!(f.len(), 1, "the write waits for the flush");
    let after = answer_flush(&mut e, f[0].0, 0);
    assert!(released(&after, 4));
    let n = reply(
        &mut b,
        14,
        WriteOut {
            size: 10,
            padding: 0,
        }
        .as_bytes(),
    );
    e.handle_reply(T0, SlotId(4), &mut b.0[..n], n);
    drain(&mut e);
    // stat after the write returned: the backend's mtime is the write's.
    send_getattr(&mut e, 16);
    let got = answer_getattr(&mut e, 16, attr(100, 999));
    assert_eq!(
        got.mtime, 999,
        "the write's mtime was replaced by the flushed one"
    );
}

/// Rule: a reply to a request sent while the times were being flushed may
/// predate the flush, and gets them, though it comes after the flush's
/// reply; one sent after that reply, while the state is still kept for it,
/// gets the backend's times as they are.
#[test]
fn only_replies_that_may_predate_the_flush_get_the_applied_times() {
    let mut e = session(config());
    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
    readdirplus(&mut e, 12);
    e.handle_timeout(T0 + Duration::from_millis(1000));
    let f = flushes(&drain(&mut e));
    send_getattr(&mut e, 14);
    answer_flush(&mut e, f[0].0, 0);
    assert_eq!(
        answer_getattr(&mut e, 14, attr(1, 1)).mtime,
        5,
        "sent while flushing"
    );
    // The state is kept for the listing; a GETATTR now is answered from the
    // backend's own times (another client set mtime 3 meanwhile).
    send_getattr(&mut e, 16);
    assert_eq!(
        answer_getattr(&mut e, 16, attr(1, 3)).mtime,
        3,
        "sent after"
    );
}

/// Rule, field by field: a request sent after one flush was answered and
/// before another is, gets the second's fields, not the first's.
#[test]
fn each_applied_field_counts_from_its_own_flush() {
    let mut e = session(config());
    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 200));
    readdirplus(&mut e, 12);
    e.handle_timeout(T0 + Duration::from_millis(1000));
    let f = flushes(&drain(&mut e));
    answer_flush(&mut e, f[0].0, 0);
    // The file is written to: the backend's mtime is 999 now.
    send_getattr(&mut e, 14);
    assert_eq!(answer_getattr(&mut e, 14, attr(1, 999)).mtime, 999);
    // atime 300, flushed while a GETATTR is in flight.
    setattr(&mut e, T0, 16, 0, times_arg(FATTR_ATIME, 300, 0));
    send_getattr(&mut e, 18);
    e.handle_timeout(T0 + Duration::from_millis(2000));
    let f = flushes(&drain(&mut e));
    assert_eq!(f.len(), 1);
    answer_flush(&mut e, f[0].0, 0);
    let got = answer_getattr(&mut e, 18, attr(1, 999));
    assert_eq!((got.atime, got.mtime), (300, 999));
}

/// Rule: a FORGET for a node with nothing pending or being flushed is not
/// deferred, whatever readers keep its state (here a LOOKUP of its known
/// name); the state ends with it, and the reader's reply, when the id
/// names a new file, gets nothing of the old one's, nor does a new state
/// for the id lose a reader it never had.
#[test]
fn a_forget_with_readers_in_flight_goes_at_once_and_ends_the_state() {
    let mut e = session(config());
    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
    // "f" is known to be FILE: this LOOKUP counts on its state.
    submit(&mut e, Opcode::Lookup, 12, 1, b"f\0", SlotId(9));
    drain(&mut e);
    e.handle_timeout(T0 + Duration::from_millis(1000));
    let f = flushes(&drain(&mut e));
    answer_flush(&mut e, f[0].0, 0);
    let acts = forget(&mut e, 14);
    assert!(
        matches!(acts[..], [Action::ForwardRequest(SlotId(3))]),
        "{acts:?}"
    );
    // The id names a new file, whose times the proxy acknowledges.
    let got = new_file_at_files_id(&mut e, Opcode::Lookup, 16, b"h\0");
    assert_eq!(got, (1, 1));
    setattr(&mut e, T0, 18, 0, times_arg(FATTR_MTIME, 0, 40));
    send_getattr(&mut e, 20);
    // The old LOOKUP is answered (with the new file's pending mtime laid
    // over it, as on any reply while times are pending)...
    let mut b = Buf::new();
    let entry = EntryOut {
        nodeid: FILE,
        attr: attr(1, 1),
        ..EntryOut::default()
    };
    let n = reply(&mut b, 12, entry.as_bytes());
    e.handle_reply(T0, SlotId(9), &mut b.0[..n], n);
    drain(&mut e);
    // ...and the new state still has its reader: flushed and answered, it
    // stays for the GETATTR, which shows mtime 40.
    e.handle_timeout(T0 + Duration::from_millis(3000));
    let f = flushes(&drain(&mut e));
    assert_eq!(f.len(), 1);
    answer_flush(&mut e, f[0].0, 0);
    assert_eq!(answer_getattr(&mut e, 20, attr(1, 1)).mtime, 40);
}

/// Rule: a deferred FORGET goes with the reply to the last flush of its
/// node, once, whatever listings are still in flight; it never overtakes
/// the flush, nor a retry of it.
#[test]
fn a_deferred_forget_goes_once_after_the_flush_whatever_is_in_flight() {
    let mut rules = crate::Rules::default();
    rules.times.retries = 2;
    rules.times.retry_backoff = Duration::from_millis(100);
    let mut e = session_with(config(), rules);
    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
    readdirplus(&mut e, 12);
    let acts = forget(&mut e, 14);
    assert_eq!(injected_forgets(&acts), 0);
    let f = flushes(&acts);
    assert_eq!(f.len(), 1, "{acts:?}");
    // Refused: the retry waits its back-off, and so does the FORGET.
    let acts = answer_flush(&mut e, f[0].0, -13);
    assert_eq!(injected_forgets(&acts), 0, "{acts:?}");
    e.handle_timeout(T0 + Duration::from_millis(100));
    let acts = drain(&mut e);
    assert_eq!(injected_forgets(&acts), 0, "{acts:?}");
    let f = flushes(&acts);
    assert_eq!(f.len(), 1, "the retry: {acts:?}");
    let acts = answer_flush(&mut e, f[0].0, 0);
    assert_eq!(injected_forgets(&acts), 1, "after the flush: {acts:?}");
    // Nothing more of it, whatever comes.
    let mut rest = fail_listing(&mut e, 12);
    e.handle_timeout(T0 + Duration::from_millis(5000));
    rest.extend(drain(&mut e));
    e.handle_shutdown(T0 + Duration::from_millis(5000));
    rest.extend(drain(&mut e));
    assert_eq!(injected_forgets(&rest), 0, "{rest:?}");
    assert_eq!(
        injected_ops(&rest),
        [(u32::from(Opcode::Destroy), 0)],
        "{rest:?}"
    );
}

/// Rule: a BATCH_FORGET naming a kept state is passed on whole.
#[test]
fn a_batch_forget_of_a_kept_state_is_passed_on() {
    let mut e = session(config());
    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
    readdirplus(&mut e, 12);
    e.handle_timeout(T0 + Duration::from_millis(1000));
    let f = flushes(&drain(&mut e));
    answer_flush(&mut e, f[0].0, 0);
    let mut body = Vec::new();
    body.extend_from_slice(&2u32.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    for node in [FILE, 30] {
        body.extend_from_slice(&node.to_ne_bytes());
        body.extend_from_slice(&1u64.to_ne_bytes());
    }
    let mut b = Buf::new();
    let n = request(&mut b, Opcode::BatchForget, 14, 0, &body);
    e.handle_request(T0, WALL, SlotId(3), &mut b.0[..n]);
    let acts = drain(&mut e);
    assert!(
        matches!(acts[..], [Action::ForwardRequest(SlotId(3))]),
        "{acts:?}"
    );
    assert_eq!(u32::from_ne_bytes(b.0[40..44].try_into().unwrap()), 2);
    let got = new_file_at_files_id(&mut e, Opcode::Lookup, 16, b"h\0");
    assert_eq!(got, (1, 1));
}

/// Rule: CREATE and MKNOD replies for a node id whose previous life was
/// forgotten get none of its times.
#[test]
fn create_and_mknod_at_a_forgotten_id_get_no_old_times() {
    for op in [Opcode::Create, Opcode::Mknod] {
        let mut e = session(config());
        setattr(
            &mut e,
            T0,
            10,
            0,
            times_arg(FATTR_ATIME | FATTR_MTIME, 100, 200),
        );
        readdirplus(&mut e, 12);
        let f = flushes(&forget(&mut e, 14));
        assert_eq!(f.len(), 1);
        let after = answer_flush(&mut e, f[0].0, 0);
        assert_eq!(injected_forgets(&after), 1, "{after:?}");
        let body: Vec<u8> = match op {
            Opcode::Create => [CreateIn::default().as_bytes(), b"h\0"].concat(),
            _ => [MknodIn::default().as_bytes(), b"h\0"].concat(),
        };
        let got = new_file_at_files_id(&mut e, op, 16, &body);
        assert_eq!(got, (1, 1), "{op:?}");
    }
}

/// Rule: shutdown with a state kept for a listing sends DESTROY once the
/// listing is answered.
#[test]
fn shutdown_sends_destroy_once_the_kept_states_go() {
    let mut e = session(config());
    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
    readdirplus(&mut e, 12);
    e.handle_shutdown(T0);
    let f = flushes(&drain(&mut e));
    assert_eq!(f.len(), 1);
    let acts = answer_flush(&mut e, f[0].0, 0);
    assert!(
        injected_ops(&acts).is_empty(),
        "kept for the listing: {acts:?}"
    );
    let acts = fail_listing(&mut e, 12);
    assert_eq!(
        injected_ops(&acts),
        [(u32::from(Opcode::Destroy), 0)],
        "{acts:?}"
    );
}

/// Rule: a request held behind a flush is sent after it was answered: its
/// reply (here a time update the proxy may not answer itself, which sets
/// mtime 9 after the acknowledged 5) gets nothing the flush applied.
#[test]
fn a_request_held_behind_the_flush_counts_as_sent_after_it() {
    let mut e = session(config());
    setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
    readdirplus(&mut e, 12);
    // uid 2000 does not own FILE: forwarded, behind the flush of mtime 5.
    let acts = setattr(&mut e, T0, 14, 2000, times_arg(FATTR_MTIME, 0, 9));
    let f = flushes(&acts);
    assert_eq!(f.len(), 1, "{acts:?}");
    assert!(!released(&acts, 2), "held: {acts:?}");
    let acts = answer_flush(&mut e, f[0].0, 0);
    assert!(released(&acts, 2), "{acts:?}");
    let mut b = Buf::new();
    let out = AttrOut {
        attr: attr(1, 9),
        ..AttrOut::default()
    };
    let n = reply(&mut b, 14, out.as_bytes());
    e.handle_reply(T0, SlotId(2), &mut b.0[..n], n);
    drain(&mut e);
    let got = AttrOut::read_from_bytes(&b.0[16..n]).unwrap().attr;
    assert_eq!(
        got.mtime, 9,
        "the flushed mtime laid over the later update's"
    );
}
