//! The policy's rules as the engine applies them, with a made-up clock:
//! deny, fault, cache and paths, and a reload.

use super::*;
use crate::config::Policy;
use crate::{Duration, Rules};
use fuseproxy_protocol::abi::{Attr, EntryOut, GetattrIn, RenameIn, SetattrIn};
use zerocopy::FromBytes;

fn engine_with(policy: &str) -> Engine {
    Engine::with_rules(
        Config {
            max_inflight: 64,
            max_held: 8,
            path_nodes: 64,
            ..Config::default()
        },
        Rules::compile(&Policy::parse("test.toml", policy).unwrap()),
    )
}

fn submit_name(e: &mut Engine, op: Opcode, unique: u64, node: u64, body: &[u8], slot: u32) {
    submit(e, op, unique, node, body, SlotId(slot));
}

/// A LOOKUP of `name` in `dir` answered with `child` (attribute timeout 0).
fn looked_up(e: &mut Engine, unique: u64, dir: u64, name: &str, child: u64) {
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    submit_name(e, Opcode::Lookup, unique, dir, &body, 1);
    assert!(matches!(drain(e)[..], [Action::ForwardRequest(_)]));
    let out = EntryOut {
        nodeid: child,
        attr: Attr {
            ino: child,
            mode: 0o40755,
            ..Attr::default()
        },
        ..EntryOut::default()
    };
    let mut b = Buf::new();
    let n = reply(&mut b, unique, out.as_bytes());
    e.handle_reply(T0, SlotId(2), &mut b.0[..n], n);
    assert!(matches!(drain(e)[..], [Action::DeliverReply(_)]));
}

fn answered_with(actions: &[Action]) -> Option<i32> {
    match actions {
        [Action::AnswerError { errno, .. }, Action::Free(_)] => Some(*errno),
        _ => None,
    }
}

#[test]
fn a_denied_request_is_answered_and_never_forwarded() {
    let mut e = engine_with("[deny]\nUNLINK = \"EPERM\"\n");
    submit_name(&mut e, Opcode::Unlink, 2, 1, b"f\0", 0);
    assert_eq!(answered_with(&drain(&mut e)), Some(1));
    assert_eq!(e.inflight(), 0);
    submit_name(&mut e, Opcode::Rmdir, 4, 1, b"d\0", 0);
    assert!(matches!(drain(&mut e)[..], [Action::ForwardRequest(_)]));
    assert_eq!(e.stats().policy.denied, 1);
}

#[test]
fn a_fault_delay_holds_the_request_until_its_time() {
    let mut e = engine_with("[fault.GETATTR]\ndelay = \"200ms\"\n");
    submit_name(
        &mut e,
        Opcode::Getattr,
        2,
        5,
        GetattrIn::default().as_bytes(),
        3,
    );
    assert!(drain(&mut e).is_empty(), "held");
    assert_eq!(e.poll_timeout(), Some(T0 + Duration::from_millis(200)));
    // Other opcodes pass meanwhile.
    submit_name(&mut e, Opcode::Lookup, 4, 1, b"x\0", 4);
    assert!(matches!(
        drain(&mut e)[..],
        [Action::ForwardRequest(SlotId(4))]
    ));
    e.handle_timeout(T0 + Duration::from_millis(199));
    assert!(drain(&mut e).is_empty(), "released early");
    e.handle_timeout(T0 + Duration::from_millis(200));
    assert!(matches!(
        drain(&mut e)[..],
        [Action::ForwardRequest(SlotId(3))]
    ));
    assert_eq!(e.poll_timeout(), None);
    assert_eq!(e.stats().policy.delayed, 1);
}

#[test]
fn a_certain_fault_fails_the_request_with_its_errno() {
    let mut e = engine_with("[fault.READ]\nprobability = 1.0\nerrno = \"ENOSPC\"\n");
    submit_name(&mut e, Opcode::Read, 2, 5, &[0u8; 40], 0);
    assert_eq!(answered_with(&drain(&mut e)), Some(28));
    assert_eq!(e.stats().policy.faulted, 1);
}

#[test]
fn cache_floors_rewrite_replies_and_enoent_becomes_a_negative_entry() {
    let mut e = engine_with("[cache]\nmin_attr_timeout = \"5s\"\nnegative_timeout = \"2s\"\n");
    submit_name(&mut e, Opcode::Lookup, 2, 1, b"f\0", 0);
    drain(&mut e);
    let out = EntryOut {
        nodeid: 9,
        attr_valid: 0,
        ..EntryOut::default()
    };
    let mut b = Buf::new();
    let n = reply(&mut b, 2, out.as_bytes());
    e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
    assert!(matches!(
        drain(&mut e)[..],
        [Action::DeliverReply(SlotId(1))]
    ));
    let (sent, _) = EntryOut::read_from_prefix(&b.0[16..n]).unwrap();
    assert_eq!((sent.attr_valid, sent.entry_valid), (5, 0));

    submit_name(&mut e, Opcode::Lookup, 4, 1, b"nope\0", 0);
    drain(&mut e);
    let n = raw_reply(&mut b, 16, -2, 4, 16);
    e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
    let acts = drain(&mut e);
    let [Action::Answer(inline), Action::Free(SlotId(1))] = acts[..] else {
        panic!("{acts:?}");
    };
    let bytes = inline.as_bytes();
    assert_eq!(i32::from_ne_bytes(bytes[4..8].try_into().unwrap()), 0);
    let (neg, _) = EntryOut::read_from_prefix(&bytes[16..]).unwrap();
    assert_eq!((neg.nodeid, neg.entry_valid), (0, 2));
    let p = e.stats().policy;
    assert_eq!((p.cache_changed, p.negative_entries), (1, 1));
}

#[test]
fn path_rules_apply_under_their_path_and_follow_a_rename() {
    let mut e = engine_with("[[paths]]\npath = \"/scratch\"\n[paths.deny]\nread_only = true\n");
    looked_up(&mut e, 2, 1, "scratch", 5);
    looked_up(&mut e, 4, 5, "f", 6);
    looked_up(&mut e, 6, 1, "home", 7);
    // Under /scratch: read-only.
    submit_name(&mut e, Opcode::Unlink, 8, 5, b"f\0", 0);
    assert_eq!(answered_with(&drain(&mut e)), Some(30));
    submit_name(
        &mut e,
        Opcode::Setattr,
        10,
        6,
        SetattrIn::default().as_bytes(),
        0,
    );
    assert_eq!(answered_with(&drain(&mut e)), Some(30));
    // Elsewhere: as the file's top level says (nothing denied).
    submit_name(&mut e, Opcode::Unlink, 12, 7, b"g\0", 0);
    assert!(matches!(drain(&mut e)[..], [Action::ForwardRequest(_)]));

    let mut body = RenameIn { newdir: 7 }.as_bytes().to_vec();
    body.extend_from_slice(b"f\0f\0");
    // From inside /scratch it is denied: RENAME is a change.
    submit_name(&mut e, Opcode::Rename, 16, 5, &body, 0);
    assert_eq!(answered_with(&drain(&mut e)), Some(30));
}

#[test]
fn a_rename_out_of_a_scope_moves_the_node() {
    let mut e = engine_with("[[paths]]\npath = \"/a\"\n[paths.deny]\nSETATTR = \"EPERM\"\n");
    looked_up(&mut e, 2, 1, "a", 5);
    looked_up(&mut e, 4, 1, "b", 6);
    looked_up(&mut e, 6, 5, "f", 7);
    submit_name(
        &mut e,
        Opcode::Setattr,
        8,
        7,
        SetattrIn::default().as_bytes(),
        0,
    );
    assert_eq!(answered_with(&drain(&mut e)), Some(1));
    let mut body = RenameIn { newdir: 6 }.as_bytes().to_vec();
    body.extend_from_slice(b"f\0g\0");
    submit_name(&mut e, Opcode::Rename, 10, 5, &body, 0);
    assert!(matches!(drain(&mut e)[..], [Action::ForwardRequest(_)]));
    let mut b = Buf::new();
    let n = raw_reply(&mut b, 16, 0, 10, 16);
    e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
    drain(&mut e);
    submit_name(
        &mut e,
        Opcode::Setattr,
        12,
        7,
        SetattrIn::default().as_bytes(),
        0,
    );
    assert!(
        matches!(drain(&mut e)[..], [Action::ForwardRequest(_)]),
        "/b/g is outside /a"
    );
}

#[test]
fn a_reload_applies_to_requests_read_after_it() {
    let mut e = engine_with("[deny]\nread_only = true\n[fault.GETATTR]\ndelay = \"1s\"\n");
    submit_name(
        &mut e,
        Opcode::Getattr,
        2,
        5,
        GetattrIn::default().as_bytes(),
        3,
    );
    assert!(drain(&mut e).is_empty());
    let old = e.set_rules(Rules::compile(&Policy::parse("t", "").unwrap()));
    assert!(old.reload_conflict(e.rules()).is_none());
    submit_name(&mut e, Opcode::Unlink, 4, 1, b"f\0", 0);
    assert!(matches!(drain(&mut e)[..], [Action::ForwardRequest(_)]));
    // The request delayed under the old rules keeps its time.
    e.handle_timeout(T0 + Duration::from_millis(999));
    assert!(drain(&mut e).is_empty());
    e.handle_timeout(T0 + Duration::from_millis(1000));
    assert!(matches!(
        drain(&mut e)[..],
        [Action::ForwardRequest(SlotId(3))]
    ));
    assert_eq!(e.stats().policy.reloads, 1);
}

#[test]
fn a_reload_may_not_resize_tables_or_add_the_first_paths() {
    let rules = |t: &str| Rules::compile(&Policy::parse("t", t).unwrap());
    let old = rules("");
    assert!(rules("[times]\nmax_pending = 8\n")
        .reload_conflict(&old)
        .unwrap()
        .contains("times.max_pending"));
    assert!(rules("[times]\nmode = \"forward\"\n")
        .reload_conflict(&old)
        .unwrap()
        .contains("times.mode"));
    assert!(rules("[[paths]]\npath = \"/x\"\n")
        .reload_conflict(&old)
        .unwrap()
        .contains("[[paths]]"));
    assert!(
        rules("[times]\nmax_delay = \"5s\"\n[deny]\nread_only = true\n")
            .reload_conflict(&old)
            .is_none()
    );
}
