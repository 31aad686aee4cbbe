//! Engine tests: a fake kernel and a fake backend exchanging encoded bytes.

mod init_policy;

use fuseproxy_protocol::abi::{GetattrIn, InHeader, InitIn, InitOut};
use fuseproxy_protocol::flags::{
    FUSE_INIT_EXT, FUSE_MAX_PAGES, FUSE_OVER_IO_URING, FUSE_PASSTHROUGH, FUSE_SPLICE_READ,
    FUSE_WRITEBACK_CACHE,
};
use fuseproxy_protocol::{encode, InitInView, InitOutView, Opcode, Unique};
use zerocopy::IntoBytes;

use crate::inflight::INJECTED_UNIQUE_BASE;
use crate::{Action, BadReplyReason, Config, Engine, Event, Instant, SlotId};

/// An 8-aligned message buffer, as an arena slot is.
#[repr(align(8))]
struct Buf([u8; 512]);

impl Buf {
    fn new() -> Self {
        Buf([0; 512])
    }
}

const T0: Instant = Instant::from_nanos(1_000);
const WALL: (i64, u32) = (1_700_000_000, 0);

fn request(buf: &mut Buf, opcode: Opcode, unique: u64, node: u64, body: &[u8]) -> usize {
    let h = InHeader {
        opcode: opcode.into(),
        unique,
        nodeid: node,
        ..InHeader::default()
    };
    encode::encode_request(&mut buf.0, &h, &[body]).unwrap()
}

fn reply(buf: &mut Buf, unique: u64, body: &[u8]) -> usize {
    encode::encode_reply(&mut buf.0, Unique(unique), &[body]).unwrap()
}

fn raw_reply(buf: &mut Buf, len: u32, error: i32, unique: u64, actual: usize) -> usize {
    buf.0[..4].copy_from_slice(&len.to_ne_bytes());
    buf.0[4..8].copy_from_slice(&error.to_ne_bytes());
    buf.0[8..16].copy_from_slice(&unique.to_ne_bytes());
    actual
}

/// Encodes a request and hands it to the engine in `slot`.
fn submit(e: &mut Engine, op: Opcode, unique: u64, node: u64, body: &[u8], slot: SlotId) {
    submit_at(e, T0, op, unique, node, body, slot);
}

/// [`submit`] at `now`.
fn submit_at(
    e: &mut Engine,
    now: Instant,
    op: Opcode,
    unique: u64,
    node: u64,
    body: &[u8],
    slot: SlotId,
) {
    let mut b = Buf::new();
    let n = request(&mut b, op, unique, node, body);
    e.handle_request(now, WALL, slot, &mut b.0[..n]);
}

fn drain(e: &mut Engine) -> Vec<Action> {
    std::iter::from_fn(|| e.poll_action(T0)).collect()
}

fn events(e: &mut Engine) -> Vec<Event> {
    std::iter::from_fn(|| e.poll_event()).collect()
}

fn engine() -> Engine {
    Engine::new(Config {
        max_inflight: 8,
        ..Config::default()
    })
}

/// Sends a GETATTR through the engine; returns its unique.
fn getattr(e: &mut Engine, unique: u64, slot: u32) -> u64 {
    let mut b = Buf::new();
    let n = request(
        &mut b,
        Opcode::Getattr,
        unique,
        5,
        GetattrIn::default().as_bytes(),
    );
    e.handle_request(T0, WALL, SlotId(slot), &mut b.0[..n]);
    assert!(matches!(drain(e)[..], [Action::ForwardRequest(SlotId(s))] if s == slot));
    unique
}

#[test]
fn a_request_and_its_reply_pass_through() {
    let mut e = engine();
    getattr(&mut e, 2, 0);
    assert_eq!(e.inflight(), 1);
    let mut b = Buf::new();
    let n = reply(&mut b, 2, &[0u8; 104]);
    e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
    assert!(matches!(
        drain(&mut e)[..],
        [Action::DeliverReply(SlotId(1))]
    ));
    assert_eq!(e.inflight(), 0);
    let s = e.stats();
    assert_eq!(
        (s.requests, s.forwarded, s.replies, s.bad.total()),
        (1, 1, 1, 0)
    );
}

#[test]
fn init_offer_loses_device_only_flags_and_reply_is_clamped() {
    let mut e = engine();
    let offered =
        0x73ff_fffb_u64 | ((FUSE_PASSTHROUGH | FUSE_OVER_IO_URING | (1 << 33)) & !0xffff_ffff);
    let init = InitIn {
        major: 7,
        minor: 45,
        max_readahead: 131072,
        flags: offered as u32,
        flags2: (offered >> 32) as u32,
        ..InitIn::default()
    };
    let mut b = Buf::new();
    let n = request(&mut b, Opcode::Init, 2, 0, init.as_bytes());
    assert_eq!(n, 104);
    e.handle_request(T0, WALL, SlotId(0), &mut b.0[..n]);
    assert!(matches!(drain(&mut e)[..], [Action::ForwardRequest(_)]));
    let sent = InitInView::parse(&b.0[40..n]).unwrap().flags();
    assert_eq!(
        sent & (FUSE_PASSTHROUGH | FUSE_OVER_IO_URING | FUSE_SPLICE_READ),
        0
    );
    assert_eq!(sent, offered & !crate::init_rule::DEVICE_ONLY_FLAGS);
    assert!(matches!(
        events(&mut e)[..],
        [Event::InitOffered { minor: 45, removed, .. }] if removed == offered & !sent
    ));

    // The backend asks for more than a slot can carry.
    let out = InitOut {
        major: 7,
        minor: 38,
        flags: (FUSE_INIT_EXT | FUSE_MAX_PAGES | FUSE_WRITEBACK_CACHE) as u32,
        max_write: 4 << 20,
        max_pages: 1024,
        ..InitOut::default()
    };
    let mut r = Buf::new();
    let n = reply(&mut r, 2, out.as_bytes());
    e.handle_reply(T0, SlotId(1), &mut r.0[..n], n);
    assert!(matches!(
        drain(&mut e)[..],
        [Action::DeliverReply(SlotId(1))]
    ));
    let view = InitOutView::parse(&r.0[16..n]).unwrap();
    assert_eq!((view.max_write(), view.max_pages()), (1 << 20, 256));
    assert!(e.is_initialized());
    assert!(matches!(
        events(&mut e)[..],
        [Event::Negotiated {
            minor: 38,
            max_write: 1048576,
            backend_max_write: 4194304,
            ..
        }]
    ));
}

#[test]
fn unknown_unique_and_forget_replies_are_dropped() {
    let mut e = engine();
    let mut b = Buf::new();
    let n = request(&mut b, Opcode::Forget, 4, 9, &1u64.to_ne_bytes());
    e.handle_request(T0, WALL, SlotId(0), &mut b.0[..n]);
    assert!(matches!(drain(&mut e)[..], [Action::ForwardRequest(_)]));
    assert_eq!(e.inflight(), 0, "FORGET expects no reply");
    let n = reply(&mut b, 4, &[]);
    e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
    assert!(matches!(drain(&mut e)[..], [Action::Free(SlotId(1))]));
    assert_eq!(e.stats().bad.unknown_unique, 1);
    assert!(matches!(
        events(&mut e)[..],
        [Event::BadReply {
            reason: BadReplyReason::UnknownUnique,
            unique: None
        }]
    ));
}

#[test]
fn header_level_garbage_naming_a_request_answers_it_with_eio() {
    // (len in header, error, bytes actually received, reason)
    let cases = [
        (200u32, 0i32, 16usize, BadReplyReason::LengthMismatch),
        (16, 5, 16, BadReplyReason::BadError),
        (16, -512, 16, BadReplyReason::BadError),
        (24, -2, 24, BadReplyReason::ErrorWithBody),
    ];
    for (len, error, actual, reason) in cases {
        let mut e = engine();
        getattr(&mut e, 6, 0);
        let mut b = Buf::new();
        let n = raw_reply(&mut b, len, error, 6, actual);
        e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
        let acts = drain(&mut e);
        assert!(
            matches!(
                acts[..],
                [
                    Action::AnswerError {
                        unique: Unique(6),
                        errno: 5
                    },
                    Action::Free(SlotId(1))
                ]
            ),
            "{reason:?}: {acts:?}"
        );
        assert_eq!(e.inflight(), 0);
        assert_eq!(e.stats().bad.total(), 1);
        assert!(
            matches!(events(&mut e)[..], [Event::BadReply { reason: r, unique: Some(Unique(6)) }] if r == reason)
        );
    }
}

#[test]
fn short_header_and_truncated_datagrams() {
    let mut e = engine();
    getattr(&mut e, 8, 0);
    let mut b = Buf::new();
    e.handle_reply(T0, SlotId(1), &mut b.0[..10], 10);
    assert!(matches!(drain(&mut e)[..], [Action::Free(SlotId(1))]));
    assert_eq!(e.stats().bad.short_header, 1);
    assert_eq!(e.inflight(), 1, "a short header names no request");

    // 2 MiB sent, 512 bytes received: the header names unique 8.
    let n = raw_reply(&mut b, 2 << 20, 0, 8, 512);
    e.handle_reply(T0, SlotId(2), &mut b.0[..n], 2 << 20);
    assert!(matches!(
        drain(&mut e)[..],
        [
            Action::AnswerError {
                unique: Unique(8),
                errno: 5
            },
            Action::Free(SlotId(2))
        ]
    ));
    assert_eq!(e.stats().bad.oversized, 1);
}

#[test]
fn interrupt_replies_pass_only_while_the_request_is_in_flight() {
    let mut e = engine();
    getattr(&mut e, 10, 0);
    let mut b = Buf::new();
    let n = raw_reply(&mut b, 16, -11, 10 | 1, 16);
    e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
    assert!(matches!(
        drain(&mut e)[..],
        [Action::DeliverReply(SlotId(1))]
    ));
    assert_eq!(e.inflight(), 1, "the interrupted request still waits");
    let n = raw_reply(&mut b, 16, -11, 12 | 1, 16);
    e.handle_reply(T0, SlotId(2), &mut b.0[..n], n);
    assert!(matches!(drain(&mut e)[..], [Action::Free(SlotId(2))]));
    // One whose request was answered already is stale, not a bad reply: a
    // backend that got the INTERRUPT first (several readers) says EAGAIN.
    assert_eq!(e.stats().stale_interrupt_replies, 1);
    assert_eq!(e.stats().bad.total(), 0);
    assert!(e.poll_event().is_none(), "no bad-reply event");
}

#[test]
fn notifications_are_delivered() {
    let mut e = engine();
    let mut b = Buf::new();
    let n = encode::encode_notify(
        &mut b.0,
        fuseproxy_protocol::NotifyCode::InvalInode,
        &[&[0u8; 24]],
    )
    .unwrap();
    e.handle_reply(T0, SlotId(3), &mut b.0[..n], n);
    assert!(matches!(
        drain(&mut e)[..],
        [Action::DeliverReply(SlotId(3))]
    ));
    assert_eq!(e.stats().notifications, 1);
}

#[test]
fn backend_gone_answers_every_waiting_request_and_later_ones() {
    let mut e = engine();
    for (i, u) in [2u64, 4, 6, 8].iter().enumerate() {
        getattr(&mut e, *u, i as u32);
    }
    e.handle_backend_gone(T0);
    let mut answered: Vec<u64> = drain(&mut e)
        .into_iter()
        .map(|a| match a {
            Action::AnswerError { unique, errno: 5 } => unique.0,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    answered.sort();
    assert_eq!(answered, vec![2, 4, 6, 8]);
    let mut b = Buf::new();
    let n = request(
        &mut b,
        Opcode::Getattr,
        20,
        1,
        GetattrIn::default().as_bytes(),
    );
    e.handle_request(T0, WALL, SlotId(9), &mut b.0[..n]);
    assert!(matches!(
        drain(&mut e)[..],
        [
            Action::AnswerError {
                unique: Unique(20),
                errno: 5
            },
            Action::Free(SlotId(9))
        ]
    ));
}

#[test]
fn shutdown_sends_destroy_of_our_own_and_waits_for_it() {
    let mut e = engine();
    assert!(e.is_shutdown_complete());
    // INIT first: DESTROY before INIT means nothing to a backend.
    let mut b = Buf::new();
    let n = request(
        &mut b,
        Opcode::Init,
        2,
        0,
        InitIn {
            major: 7,
            minor: 45,
            ..InitIn::default()
        }
        .as_bytes(),
    );
    e.handle_request(T0, WALL, SlotId(0), &mut b.0[..n]);
    drain(&mut e);
    let out = InitOut {
        major: 7,
        minor: 31,
        max_write: 131072,
        ..InitOut::default()
    };
    let n = reply(&mut b, 2, out.as_bytes());
    e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
    drain(&mut e);

    e.handle_shutdown(T0);
    let acts = drain(&mut e);
    let [Action::Inject(req)] = acts[..] else {
        panic!("{acts:?}")
    };
    let bytes = req.as_bytes();
    assert_eq!(bytes.len(), 40);
    let r = fuseproxy_protocol::Request::parse(bytes).unwrap();
    assert_eq!(r.opcode(), Opcode::Destroy);
    assert!(
        r.unique().0 >= INJECTED_UNIQUE_BASE,
        "outside the kernel's unique space"
    );
    assert!(!e.is_shutdown_complete());
    let n = reply(&mut b, r.unique().0, &[]);
    e.handle_reply(T0, SlotId(2), &mut b.0[..n], n);
    assert!(
        matches!(drain(&mut e)[..], [Action::Free(SlotId(2))]),
        "our reply never reaches the kernel"
    );
    assert!(e.is_shutdown_complete());
}

#[test]
fn a_full_table_stops_reading() {
    let mut e = engine();
    for u in 0..8u64 {
        assert!(e.can_accept_request());
        getattr(&mut e, 2 * u + 2, u as u32);
    }
    assert!(!e.can_accept_request());
    let mut b = Buf::new();
    let n = reply(&mut b, 2, &[0u8; 104]);
    e.handle_reply(T0, SlotId(20), &mut b.0[..n], n);
    drain(&mut e);
    assert!(e.can_accept_request());
}

// ---- time-only SETATTR ----------------------------------------------------

mod times {
    use super::*;
    use fuseproxy_protocol::abi::{
        Attr, AttrOut, Dirent, Direntplus, EntryOut, ReadIn, ReleaseIn, SetattrIn,
    };
    use fuseproxy_protocol::flags::*;
    use zerocopy::FromBytes;

    pub(super) const FILE: u64 = 7;

    /// An engine past INIT, with FILE's attributes cached by a LOOKUP.
    pub(super) fn session(config: Config) -> Engine {
        started(Engine::new(config))
    }

    /// [`session`] running `rules`.
    pub(super) fn session_with(config: Config, rules: crate::Rules) -> Engine {
        started(Engine::with_rules(config, rules))
    }

    pub(super) fn started(mut e: Engine) -> Engine {
        let mut b = Buf::new();
        let init = InitIn {
            major: 7,
            minor: 45,
            ..InitIn::default()
        };
        let n = request(&mut b, Opcode::Init, 2, 0, init.as_bytes());
        e.handle_request(T0, WALL, SlotId(0), &mut b.0[..n]);
        drain(&mut e);
        let out = InitOut {
            major: 7,
            minor: 31,
            max_write: 131072,
            ..InitOut::default()
        };
        let n = reply(&mut b, 2, out.as_bytes());
        e.handle_reply(T0, SlotId(0), &mut b.0[..n], n);
        drain(&mut e);
        lookup(&mut e, 4, FILE, 1000);
        events(&mut e);
        e
    }

    pub(super) fn config() -> Config {
        Config {
            max_inflight: 64,
            max_pending: 16,
            attr_cache: 64,
            max_held: 8,
            ..Config::default()
        }
    }

    pub(super) fn lookup(e: &mut Engine, unique: u64, node: u64, uid: u32) {
        let mut b = Buf::new();
        let n = request(&mut b, Opcode::Lookup, unique, 1, b"f\0");
        e.handle_request(T0, WALL, SlotId(1), &mut b.0[..n]);
        drain(e);
        let entry = EntryOut {
            nodeid: node,
            attr_valid: 3600,
            attr: Attr {
                ino: node,
                mode: 0o100644,
                nlink: 1,
                uid,
                atime: 1,
                mtime: 1,
                ctime: 1,
                ..Attr::default()
            },
            ..EntryOut::default()
        };
        let n = reply(&mut b, unique, entry.as_bytes());
        e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
        drain(e);
    }

    pub(super) fn setattr(
        e: &mut Engine,
        now: Instant,
        unique: u64,
        uid: u32,
        arg: SetattrIn,
    ) -> Vec<Action> {
        let mut b = Buf::new();
        let h = InHeader {
            opcode: Opcode::Setattr.into(),
            unique,
            nodeid: FILE,
            uid,
            ..InHeader::default()
        };
        let n = encode::encode_request(&mut b.0, &h, &[arg.as_bytes()]).unwrap();
        e.handle_request(now, WALL, SlotId(2), &mut b.0[..n]);
        std::iter::from_fn(|| e.poll_action(now)).collect()
    }

    pub(super) fn times_arg(valid: u32, atime: u64, mtime: u64) -> SetattrIn {
        SetattrIn {
            valid,
            atime,
            mtime,
            ctime: 50,
            ..SetattrIn::default()
        }
    }

    /// The attributes in a local answer.
    pub(super) fn answered(acts: &[Action]) -> Attr {
        let [Action::Answer(r), Action::Free(_)] = acts else {
            panic!("not answered locally: {acts:?}")
        };
        AttrOut::read_from_bytes(&r.as_bytes()[16..]).unwrap().attr
    }

    /// The SETATTR of the proxy's own in `acts`, as (unique, arg).
    pub(super) fn flushes(acts: &[Action]) -> Vec<(u64, SetattrIn)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Inject(r) => {
                    let h = InHeader::read_from_prefix(r.as_bytes()).unwrap().0;
                    (h.opcode == u32::from(Opcode::Setattr)).then(|| {
                        (
                            h.unique,
                            SetattrIn::read_from_bytes(&r.as_bytes()[40..]).unwrap(),
                        )
                    })
                }
                _ => None,
            })
            .collect()
    }

    pub(super) fn answer_flush(e: &mut Engine, unique: u64, error: i32) -> Vec<Action> {
        answer_flush_at(e, T0, unique, error)
    }

    /// [`answer_flush`] at `now`.
    pub(super) fn answer_flush_at(
        e: &mut Engine,
        now: Instant,
        unique: u64,
        error: i32,
    ) -> Vec<Action> {
        let mut b = Buf::new();
        let n = if error == 0 {
            reply(&mut b, unique, AttrOut::default().as_bytes())
        } else {
            raw_reply(&mut b, 16, error, unique, 16)
        };
        e.handle_reply(now, SlotId(30), &mut b.0[..n], n);
        std::iter::from_fn(|| e.poll_action(now)).collect()
    }

    /// The deadline passes: FILE's one pending record is flushed, and the
    /// backend applies it.
    fn flush_at_deadline(e: &mut Engine) {
        e.handle_timeout(T0 + crate::Duration::from_millis(1000));
        let f = flushes(&drain(e));
        assert_eq!(f.len(), 1, "one flush at the deadline");
        answer_flush(e, f[0].0, 0);
    }

    /// Whether `acts` forward the request held in `slot`.
    pub(super) fn released(acts: &[Action], slot: u32) -> bool {
        acts.iter()
            .any(|a| matches!(a, Action::ForwardRequest(SlotId(s)) if *s == slot))
    }

    #[test]
    fn a_time_only_setattr_is_answered_from_the_cache() {
        let mut e = session(config());
        let acts = setattr(
            &mut e,
            T0,
            10,
            0,
            times_arg(FATTR_ATIME | FATTR_MTIME | FATTR_CTIME, 100, 200),
        );
        let a = answered(&acts);
        assert_eq!(
            (a.ino, a.mode, a.atime, a.mtime, a.ctime),
            (FILE, 0o100644, 100, 200, 50)
        );
        assert_eq!(e.pending_times(), 1);
        assert_eq!(e.stats().times.acked_locally, 1);
        assert_eq!(e.inflight(), 0, "nothing went to the backend");
    }

    #[test]
    fn updates_with_different_fields_merge_and_the_latest_value_wins() {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_ATIME, 100, 0));
        // UTIME_NOW resolves to the proxy's wall clock at receipt.
        let a = answered(&setattr(
            &mut e,
            T0,
            12,
            0,
            times_arg(FATTR_MTIME | FATTR_MTIME_NOW, 0, 0),
        ));
        assert_eq!((a.atime, a.mtime), (100, WALL.0 as u64));
        let a = answered(&setattr(&mut e, T0, 14, 0, times_arg(FATTR_ATIME, 300, 0)));
        assert_eq!((a.atime, a.mtime), (300, WALL.0 as u64));
        assert_eq!(e.stats().times.coalesced, 2);
        // One flush with the union of fields, the latest value of each.
        e.handle_timeout(T0 + crate::Duration::from_millis(1000));
        let f = flushes(&drain(&mut e));
        assert_eq!(f.len(), 1);
        let arg = f[0].1;
        assert_eq!(arg.valid, FATTR_ATIME | FATTR_MTIME);
        assert_eq!((arg.atime, arg.mtime), (300, WALL.0 as u64));
        assert!(f[0].0 >= INJECTED_UNIQUE_BASE);
    }

    #[test]
    fn nothing_is_flushed_before_max_delay() {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
        let due = e.poll_timeout().unwrap();
        assert_eq!(due, T0 + crate::Duration::from_millis(1000));
        e.handle_timeout(T0 + crate::Duration::from_millis(999));
        assert!(drain(&mut e).is_empty());
        e.handle_timeout(due);
        assert_eq!(flushes(&drain(&mut e)).len(), 1);
        assert_eq!(e.poll_timeout(), None);
    }

    #[test]
    fn a_chmod_after_a_pending_update_reaches_the_backend_after_the_flush() {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
        let acts = setattr(
            &mut e,
            T0,
            12,
            0,
            SetattrIn {
                valid: FATTR_MODE,
                mode: 0o600,
                ..SetattrIn::default()
            },
        );
        let f = flushes(&acts);
        assert_eq!(f.len(), 1, "the flush goes first: {acts:?}");
        assert!(
            !acts.iter().any(|a| matches!(a, Action::ForwardRequest(_))),
            "chmod held: {acts:?}"
        );
        let after = answer_flush(&mut e, f[0].0, 0);
        assert!(released(&after, 2), "{after:?}");
    }

    #[test]
    fn a_release_is_held_until_the_flush_reply() {
        let mut e = session(config());
        setattr(
            &mut e,
            T0,
            10,
            0,
            times_arg(FATTR_MTIME | FATTR_FH | FATTR_CTIME, 0, 5),
        );
        let mut b = Buf::new();
        submit(
            &mut e,
            Opcode::Release,
            12,
            FILE,
            ReleaseIn::default().as_bytes(),
            SlotId(5),
        );
        let acts = drain(&mut e);
        let f = flushes(&acts);
        assert_eq!(f.len(), 1);
        assert_eq!(acts.len(), 1, "only the flush: {acts:?}");
        // A GETATTR meanwhile is not held, and its reply shows the times.
        submit(
            &mut e,
            Opcode::Getattr,
            14,
            FILE,
            GetattrIn::default().as_bytes(),
            SlotId(6),
        );
        assert!(matches!(
            drain(&mut e)[..],
            [Action::ForwardRequest(SlotId(6))]
        ));
        let stale = AttrOut {
            attr: Attr {
                ino: FILE,
                mtime: 1,
                ..Attr::default()
            },
            ..AttrOut::default()
        };
        let n = reply(&mut b, 14, stale.as_bytes());
        e.handle_reply(T0, SlotId(6), &mut b.0[..n], n);
        drain(&mut e);
        assert_eq!(
            AttrOut::read_from_bytes(&b.0[16..n]).unwrap().attr.mtime,
            5,
            "overlaid"
        );
        let after = answer_flush(&mut e, f[0].0, 0);
        assert!(released(&after, 5), "{after:?}");
    }

    #[test]
    fn a_getattr_answered_after_the_flush_still_shows_the_times() {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
        let mut b = Buf::new();
        submit(
            &mut e,
            Opcode::Getattr,
            12,
            FILE,
            GetattrIn::default().as_bytes(),
            SlotId(6),
        );
        drain(&mut e);
        flush_at_deadline(&mut e);
        // The backend read the times before it applied the flush.
        let stale = AttrOut {
            attr: Attr {
                ino: FILE,
                mtime: 1,
                ..Attr::default()
            },
            ..AttrOut::default()
        };
        let n = reply(&mut b, 12, stale.as_bytes());
        e.handle_reply(T0, SlotId(6), &mut b.0[..n], n);
        drain(&mut e);
        assert_eq!(AttrOut::read_from_bytes(&b.0[16..n]).unwrap().attr.mtime, 5);
        // Nothing outstanding any more: a later reply is the backend's own.
        submit(
            &mut e,
            Opcode::Getattr,
            14,
            FILE,
            GetattrIn::default().as_bytes(),
            SlotId(6),
        );
        drain(&mut e);
        let n = reply(&mut b, 14, stale.as_bytes());
        e.handle_reply(T0, SlotId(6), &mut b.0[..n], n);
        assert_eq!(AttrOut::read_from_bytes(&b.0[16..n]).unwrap().attr.mtime, 1);
    }

    /// FILE's entry as the backend reads it before applying a flush.
    fn stale_entry() -> EntryOut {
        EntryOut {
            nodeid: FILE,
            attr: Attr {
                ino: FILE,
                mode: 0o100644,
                nlink: 1,
                mtime: 1,
                ..Attr::default()
            },
            ..EntryOut::default()
        }
    }

    /// A READDIRPLUS reply with FILE's entry, named "f", read stale.
    fn listing(b: &mut Buf, unique: u64) -> usize {
        let name = b"f";
        let mut body = Direntplus {
            entry_out: stale_entry(),
            dirent: Dirent {
                ino: FILE,
                off: 1,
                namelen: name.len() as u32,
                r#type: 8,
            },
        }
        .as_bytes()
        .to_vec();
        body.extend_from_slice(name);
        body.resize(body.len().next_multiple_of(8), 0);
        reply(b, unique, &body)
    }

    /// Sends `op` on directory 1 while FILE's mtime 5 is pending, flushes
    /// and answers the flush, then answers `op` with what `answer` writes (a
    /// stale mtime 1 for FILE); returns FILE's mtime in the delivered reply,
    /// and that of a second answer to the same request sent once nothing is
    /// outstanding.
    fn stale_reader(op: Opcode, body: &[u8], answer: fn(&mut Buf, u64) -> usize) -> (u64, u64) {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
        submit(&mut e, op, 12, 1, body, SlotId(6));
        assert!(matches!(
            drain(&mut e)[..],
            [Action::ForwardRequest(SlotId(6))]
        ));
        flush_at_deadline(&mut e);
        let mtime_in = |e: &mut Engine, unique| {
            let mut b = Buf::new();
            let n = answer(&mut b, unique);
            e.handle_reply(T0, SlotId(6), &mut b.0[..n], n);
            assert!(matches!(drain(e)[..], [Action::DeliverReply(SlotId(6))]));
            // The entry's attr starts at the same offset in both replies.
            EntryOut::read_from_prefix(&b.0[16..n])
                .unwrap()
                .0
                .attr
                .mtime
        };
        let first = mtime_in(&mut e, 12);
        // The state went with the last reader: the same request now gets
        // the backend's answer as it is.
        submit(&mut e, op, 14, 1, body, SlotId(6));
        drain(&mut e);
        let second = mtime_in(&mut e, 14);
        (first, second)
    }

    #[test]
    fn a_lookup_answered_after_the_flush_still_shows_the_times() {
        let (during, after) = stale_reader(Opcode::Lookup, b"f\0", |b, u| {
            reply(b, u, stale_entry().as_bytes())
        });
        assert_eq!((during, after), (5, 1));
    }

    #[test]
    fn a_lookup_of_an_unknown_name_keeps_the_times_too() {
        // "g" is another name (a hard link) the proxy has not seen.
        let (during, after) = stale_reader(Opcode::Lookup, b"g\0", |b, u| {
            reply(b, u, stale_entry().as_bytes())
        });
        assert_eq!((during, after), (5, 1));
    }

    #[test]
    fn a_readdirplus_answered_after_the_flush_still_shows_the_times() {
        let arg = ReadIn {
            size: 4096,
            ..ReadIn::default()
        };
        let (during, after) = stale_reader(Opcode::Readdirplus, arg.as_bytes(), listing);
        assert_eq!((during, after), (5, 1));
    }

    #[test]
    fn a_failed_listing_lets_kept_states_go() {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
        let arg = ReadIn::default();
        submit(
            &mut e,
            Opcode::Readdirplus,
            12,
            1,
            arg.as_bytes(),
            SlotId(6),
        );
        drain(&mut e);
        flush_at_deadline(&mut e);
        // Kept for the listing: a DESTROY still waits.
        let mut b = Buf::new();
        let n = request(&mut b, Opcode::Destroy, 16, 0, &[]);
        e.handle_request(T0, WALL, SlotId(7), &mut b.0[..n]);
        assert!(drain(&mut e).is_empty());
        let n = raw_reply(&mut b, 16, -5, 12, 16);
        e.handle_reply(T0, SlotId(6), &mut b.0[..n], n);
        let acts = drain(&mut e);
        assert!(
            released(&acts, 7),
            "DESTROY released once the listing failed: {acts:?}"
        );
    }

    #[test]
    fn the_kernels_destroy_waits_for_every_flush() {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
        let mut b = Buf::new();
        let n = request(&mut b, Opcode::Destroy, 12, 0, &[]);
        e.handle_request(T0, WALL, SlotId(7), &mut b.0[..n]);
        let acts = drain(&mut e);
        let f = flushes(&acts);
        assert_eq!(
            (f.len(), acts.len()),
            (1, 1),
            "held behind the flush: {acts:?}"
        );
        let after = answer_flush(&mut e, f[0].0, 0);
        assert!(
            released(&after, 7),
            "DESTROY released once nothing is outstanding: {after:?}"
        );
    }

    #[test]
    fn an_error_reply_to_a_flush_is_counted_and_reported() {
        let mut e = session(config());
        setattr(
            &mut e,
            T0,
            10,
            0,
            times_arg(FATTR_ATIME | FATTR_MTIME, 7, 8),
        );
        e.handle_timeout(T0 + crate::Duration::from_millis(1000));
        let f = flushes(&drain(&mut e));
        events(&mut e);
        answer_flush(&mut e, f[0].0, -13);
        assert_eq!(e.stats().times.flush_errors, 1);
        let ev = events(&mut e);
        assert!(
            ev.iter().any(|x| matches!(x, Event::FlushFailed { node, error: -13, atime: Some((7, 0)), mtime: Some((8, 0)), attempts: 1 } if node.0 == FILE)),
            "{ev:?}"
        );
    }

    #[test]
    fn without_cached_attributes_or_permission_it_is_forwarded() {
        let mut e = session(config());
        let mut b = Buf::new();
        let h = InHeader {
            opcode: Opcode::Setattr.into(),
            unique: 10,
            nodeid: 99,
            ..InHeader::default()
        };
        let n = encode::encode_request(&mut b.0, &h, &[times_arg(FATTR_MTIME, 0, 5).as_bytes()])
            .unwrap();
        e.handle_request(T0, WALL, SlotId(2), &mut b.0[..n]);
        assert!(
            matches!(drain(&mut e)[..], [Action::ForwardRequest(_)]),
            "unknown node"
        );
        // FILE belongs to uid 1000: uid 2000 is not vouched for (no
        // default_permissions), uid 1000 and root are.
        assert!(matches!(
            setattr(&mut e, T0, 12, 2000, times_arg(FATTR_MTIME, 0, 5))[..],
            [Action::ForwardRequest(_)]
        ));
        answered(&setattr(&mut e, T0, 14, 1000, times_arg(FATTR_MTIME, 0, 5)));
        let mut e = session(Config {
            default_permissions: true,
            ..config()
        });
        answered(&setattr(&mut e, T0, 12, 2000, times_arg(FATTR_MTIME, 0, 5)));
    }

    #[test]
    fn forward_mode_never_answers_locally() {
        let mut e = session(Config {
            times: crate::TimesMode::Forward,
            ..config()
        });
        assert!(matches!(
            setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5))[..],
            [Action::ForwardRequest(_)]
        ));
    }

    #[test]
    fn max_pending_flushes_the_oldest_first() {
        let mut e = session(Config {
            max_pending: 2,
            ..config()
        });
        for (i, node) in [20u64, 21, 22].iter().enumerate() {
            lookup(&mut e, 100 + 2 * i as u64, *node, 0);
            let mut b = Buf::new();
            let h = InHeader {
                opcode: Opcode::Setattr.into(),
                unique: 200 + 2 * i as u64,
                nodeid: *node,
                ..InHeader::default()
            };
            let n =
                encode::encode_request(&mut b.0, &h, &[times_arg(FATTR_MTIME, 0, 5).as_bytes()])
                    .unwrap();
            e.handle_request(T0, WALL, SlotId(2), &mut b.0[..n]);
            let acts = drain(&mut e);
            let injected: Vec<u64> = acts
                .iter()
                .filter_map(|a| match a {
                    Action::Inject(r) => {
                        Some(InHeader::read_from_prefix(r.as_bytes()).unwrap().0.nodeid)
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(injected, if i == 2 { vec![20] } else { vec![] });
        }
    }

    #[test]
    fn forget_waits_for_the_flush_and_shutdown_flushes_before_destroy() {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
        let mut b = Buf::new();
        let n = request(&mut b, Opcode::Forget, 12, FILE, &1u64.to_ne_bytes());
        e.handle_request(T0, WALL, SlotId(3), &mut b.0[..n]);
        let acts = drain(&mut e);
        let f = flushes(&acts);
        assert_eq!(f.len(), 1);
        assert!(
            acts.iter().any(|a| matches!(a, Action::Free(SlotId(3)))),
            "the FORGET is not sent now"
        );
        let after = answer_flush(&mut e, f[0].0, 0);
        let forgets: Vec<(u64, u64)> = after
            .iter()
            .filter_map(|a| match a {
                Action::Inject(r) => {
                    let h = InHeader::read_from_prefix(r.as_bytes()).unwrap().0;
                    (h.opcode == u32::from(Opcode::Forget)).then(|| {
                        (
                            h.nodeid,
                            u64::read_from_bytes(&r.as_bytes()[40..48]).unwrap(),
                        )
                    })
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            forgets,
            vec![(FILE, 1)],
            "the FORGET follows the flush: {after:?}"
        );

        // Shutdown: pending times first, DESTROY only after their reply.
        lookup(&mut e, 20, 8, 0);
        let h = InHeader {
            opcode: Opcode::Setattr.into(),
            unique: 22,
            nodeid: 8,
            ..InHeader::default()
        };
        let n = encode::encode_request(&mut b.0, &h, &[times_arg(FATTR_MTIME, 0, 9).as_bytes()])
            .unwrap();
        e.handle_request(T0, WALL, SlotId(2), &mut b.0[..n]);
        drain(&mut e);
        e.handle_shutdown(T0);
        let acts = drain(&mut e);
        let f = flushes(&acts);
        assert_eq!((f.len(), acts.len()), (1, 1), "{acts:?}");
        assert!(!e.is_shutdown_complete());
        let after = answer_flush(&mut e, f[0].0, 0);
        let destroy = after.iter().find_map(|a| match a {
            Action::Inject(r) => Some(InHeader::read_from_prefix(r.as_bytes()).unwrap().0),
            _ => None,
        });
        assert_eq!(destroy.map(|h| h.opcode), Some(u32::from(Opcode::Destroy)));
    }

    #[test]
    fn rename_into_a_directory_with_pending_times_waits_for_its_flush() {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
        let mut b = Buf::new();
        let arg = fuseproxy_protocol::abi::RenameIn { newdir: FILE };
        let body: Vec<u8> = [arg.as_bytes(), b"a\0", b"b\0"].concat();
        let n = request(&mut b, Opcode::Rename, 12, 1, &body);
        e.handle_request(T0, WALL, SlotId(4), &mut b.0[..n]);
        let acts = drain(&mut e);
        assert_eq!(flushes(&acts).len(), 1);
        assert!(!acts.iter().any(|a| matches!(a, Action::ForwardRequest(_))));
    }

    /// An UNLINK of a file with pending times goes at once (the kernel's
    /// own time flush before it, on writeback mounts, is what coalescing
    /// saves); when the flush then finds the last name gone (a backend that
    /// finds files by path answers ENOENT or ESTALE), it is moot: counted,
    /// not reported as a lost update.
    #[test]
    fn a_flush_after_the_last_name_is_gone_is_moot() {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
        let mut b = Buf::new();
        let n = request(&mut b, Opcode::Unlink, 12, 1, b"f\0");
        e.handle_request(T0, WALL, SlotId(4), &mut b.0[..n]);
        let acts = drain(&mut e);
        assert!(flushes(&acts).is_empty(), "{acts:?}");
        assert!(released(&acts, 4), "UNLINK forwarded at once: {acts:?}");
        let n = raw_reply(&mut b, 16, 0, 12, 16);
        e.handle_reply(T0, SlotId(5), &mut b.0[..n], n);
        drain(&mut e);
        events(&mut e);
        e.handle_timeout(T0 + crate::Duration::from_millis(1000));
        let f = flushes(&drain(&mut e));
        assert_eq!(f.len(), 1);
        answer_flush(&mut e, f[0].0, -2);
        let ev = events(&mut e);
        assert!(
            !ev.iter().any(|x| matches!(x, Event::FlushFailed { .. })),
            "{ev:?}"
        );
        let t = e.stats().times;
        assert_eq!((t.flush_moot, t.flush_errors), (1, 0));
        assert_eq!(e.pending_times(), 0);
    }

    /// The same ENOENT while the file still has a name is a failure.
    #[test]
    fn a_flush_refused_while_the_file_has_a_name_is_an_error() {
        let mut e = session(config());
        setattr(&mut e, T0, 10, 0, times_arg(FATTR_MTIME, 0, 5));
        e.handle_timeout(T0 + crate::Duration::from_millis(1000));
        let f = flushes(&drain(&mut e));
        answer_flush(&mut e, f[0].0, -2);
        let ev = events(&mut e);
        assert!(
            ev.iter().any(|x| matches!(x, Event::FlushFailed { .. })),
            "{ev:?}"
        );
        let t = e.stats().times;
        assert_eq!((t.flush_moot, t.flush_errors), (0, 1));
    }

    /// Random sequences of time updates, other requests on the same nodes,
    /// directory listings and clock advances, against a backend that
    /// answers in random order (and the session then shuts down, which
    /// needs every state released):
    /// every acknowledged update reaches the backend, for each node in the
    /// order acknowledged, and no request on a node overtakes its times.
    #[test]
    fn every_acknowledged_update_reaches_the_backend_in_order() {
        ordering_harness(false);
    }

    /// The harness of the test above. With `refuse`, the policy retries
    /// failed flushes (up to 100 times) and the backend refuses about one
    /// flush in four: every update must still reach the backend, once.
    pub(super) fn ordering_harness(refuse: bool) {
        use std::collections::HashMap;
        let mut rules = crate::Rules::default();
        if refuse {
            rules.times.retries = 100;
            rules.times.retry_backoff = crate::Duration::from_millis(100);
        }
        let mut retried = 0;
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _round in 0..200 {
            let mut e = session_with(
                Config {
                    max_pending: 3,
                    ..config()
                },
                rules.clone(),
            );
            // Nothing counted so far concerns a decision (no `[init]`
            // rewrite): from here on the decisions must agree with Stats.
            e.set_decisions(true);
            for node in 20..25u64 {
                lookup(&mut e, 1000 + node * 2, node, 0);
            }
            let mut now = T0;
            let mut unique = 10u64;
            let mut acked: HashMap<u64, Vec<u64>> = HashMap::new(); // node -> mtimes acked
            let mut applied: HashMap<u64, Vec<u64>> = HashMap::new(); // node -> mtimes flushed
            let mut backend: Vec<(u64, u64, Option<u64>)> = Vec::new(); // (unique, node, mtime if flush)
                                                                        // slot -> (unique, node, mtime if a SETATTR) of requests not yet sent
            let mut held_slots: HashMap<u32, (u64, u64, Option<u64>)> = HashMap::new();
            let mut slot_of: HashMap<u32, (u64, u64, Option<u64>)> = HashMap::new();
            // slot -> the last mtime acknowledged on its node before it arrived
            let mut needs: HashMap<u32, u64> = HashMap::new();
            for step in 0..60u32 {
                let next_slot = 100 + step;
                let node = 20 + next() % 5;
                let mut b = Buf::new();
                match next() % 6 {
                    0 | 1 => {
                        let m = u64::from(step) + 1;
                        let h = InHeader {
                            opcode: Opcode::Setattr.into(),
                            unique,
                            nodeid: node,
                            ..InHeader::default()
                        };
                        let n = encode::encode_request(
                            &mut b.0,
                            &h,
                            &[times_arg(FATTR_MTIME, 0, m).as_bytes()],
                        )
                        .unwrap();
                        e.handle_request(now, WALL, SlotId(next_slot), &mut b.0[..n]);
                        // Answered locally, or forwarded when the table is full.
                        acked.entry(node).or_default().push(m);
                        slot_of.insert(next_slot, (unique, node, Some(m)));
                    }
                    2 => {
                        if let Some(m) = acked.get(&node).and_then(|v| v.last()) {
                            needs.insert(next_slot, *m);
                        }
                        let arg = fuseproxy_protocol::abi::ReadIn::default();
                        let slot = SlotId(next_slot);
                        submit_at(
                            &mut e,
                            now,
                            Opcode::Read,
                            unique,
                            node,
                            arg.as_bytes(),
                            slot,
                        );
                        slot_of.insert(next_slot, (unique, node, None));
                    }
                    3 => now = now + crate::Duration::from_millis(400),
                    4 => {
                        // A listing of the directory, which keeps idle
                        // states while it is in flight.
                        let arg = fuseproxy_protocol::abi::ReadIn::default();
                        let slot = SlotId(next_slot);
                        submit_at(
                            &mut e,
                            now,
                            Opcode::Readdirplus,
                            unique,
                            1,
                            arg.as_bytes(),
                            slot,
                        );
                        slot_of.insert(next_slot, (unique, 1, None));
                    }
                    _ => {
                        // The backend answers one request, any of them.
                        if !backend.is_empty() {
                            let i = (next() as usize) % backend.len();
                            let (u, n, m) = backend.remove(i);
                            let refused = refuse && m.is_some() && next() % 4 == 0;
                            if let (Some(m), false) = (m, refused) {
                                applied.entry(n).or_default().push(m);
                            }
                            let len = if refused {
                                raw_reply(&mut b, 16, -5, u, 16)
                            } else if m.is_some() {
                                reply(&mut b, u, AttrOut::default().as_bytes())
                            } else {
                                reply(&mut b, u, b"data")
                            };
                            e.handle_reply(now, SlotId(999), &mut b.0[..len], len);
                        }
                    }
                }
                unique += 2;
                e.handle_timeout(now);
                while let Some(a) = e.poll_action(now) {
                    match a {
                        Action::Inject(r) => {
                            let h = InHeader::read_from_prefix(r.as_bytes()).unwrap().0;
                            if h.opcode == u32::from(Opcode::Setattr) {
                                let arg = SetattrIn::read_from_bytes(&r.as_bytes()[40..]).unwrap();
                                // Never two flushes of one node in flight.
                                assert!(!backend
                                    .iter()
                                    .any(|(_, n, m)| *n == h.nodeid && m.is_some()));
                                backend.push((h.unique, h.nodeid, Some(arg.mtime)));
                            }
                        }
                        Action::ForwardRequest(s) => {
                            if let Some((u, n, m)) =
                                slot_of.remove(&s.0).or_else(|| held_slots.remove(&s.0))
                            {
                                // A request reaches the backend only after the
                                // updates acknowledged before it are applied.
                                if let Some(need) = needs.get(&s.0) {
                                    let done = applied
                                        .get(&n)
                                        .and_then(|v| v.last())
                                        .copied()
                                        .unwrap_or(0);
                                    assert!(done >= *need, "request on node {n} overtook mtime {need} (applied {done})");
                                }
                                backend.push((u, n, m));
                            }
                        }
                        Action::Free(s) => {
                            slot_of.remove(&s.0);
                        }
                        _ => {}
                    }
                }
                for (s, v) in slot_of.drain() {
                    held_slots.insert(s, v);
                }
            }
            // Drain: answer everything, advance time, shut down.
            now = now + crate::Duration::from_millis(5000);
            e.handle_shutdown(now);
            for _ in 0..1000 {
                e.handle_timeout(now);
                while let Some(a) = e.poll_action(now) {
                    if let Action::ForwardRequest(s) = a {
                        if let Some((u, n, m)) = held_slots.remove(&s.0) {
                            backend.push((u, n, m));
                        }
                    }
                    if let Action::Inject(r) = a {
                        let h = InHeader::read_from_prefix(r.as_bytes()).unwrap().0;
                        if h.opcode == u32::from(Opcode::Setattr) {
                            let arg = SetattrIn::read_from_bytes(&r.as_bytes()[40..]).unwrap();
                            backend.push((h.unique, h.nodeid, Some(arg.mtime)));
                        } else {
                            backend.push((h.unique, h.nodeid, None));
                        }
                    }
                }
                let Some((u, n, m)) = backend.pop() else {
                    break;
                };
                let refused = refuse && m.is_some() && next() % 4 == 0;
                if let (Some(m), false) = (m, refused) {
                    applied.entry(n).or_default().push(m);
                }
                let mut b = Buf::new();
                let len = if refused {
                    raw_reply(&mut b, 16, -5, u, 16)
                } else if m.is_some() {
                    reply(&mut b, u, AttrOut::default().as_bytes())
                } else {
                    reply(&mut b, u, &[])
                };
                e.handle_reply(now, SlotId(999), &mut b.0[..len], len);
            }
            assert!(e.is_shutdown_complete());
            let notes: Vec<_> = std::iter::from_fn(|| e.poll_decision()).collect();
            super::decisions::assert_agree(&e.stats(), &notes);
            assert_eq!(
                e.stats().times.forwarded_sync,
                0,
                "every update was acknowledged locally"
            );
            assert_eq!(e.stats().policy.flush_gave_up, 0);
            retried += e.stats().policy.flush_retries;
            for (node, ms) in &acked {
                // Coalescing may skip intermediate values, never the last one,
                // and what is applied only ever moves forward.
                let got = applied.get(node).cloned().unwrap_or_default();
                assert_eq!(
                    got.last(),
                    ms.last(),
                    "node {node}: acked {ms:?}, applied {got:?}"
                );
                assert!(
                    got.windows(2).all(|w| w[0] < w[1]),
                    "node {node}: out of order {got:?}"
                );
            }
        }
        assert_eq!(retried > 0, refuse, "retries: {retried}");
    }
}

mod retry;

mod node_life;

mod names_track {
    use super::*;
    use fuseproxy_protocol::abi::{Attr, EntryOut, LinkIn, RenameIn};

    fn entry(node: u64, nlink: u32) -> EntryOut {
        EntryOut {
            nodeid: node,
            attr_valid: 3600,
            attr: Attr {
                ino: node,
                mode: 0o100644,
                nlink,
                ..Attr::default()
            },
            ..EntryOut::default()
        }
    }

    fn roundtrip(
        e: &mut Engine,
        op: Opcode,
        unique: u64,
        node: u64,
        body: &[u8],
        reply_body: Option<&[u8]>,
        error: i32,
    ) {
        let mut b = Buf::new();
        let n = request(&mut b, op, unique, node, body);
        e.handle_request(T0, WALL, SlotId(1), &mut b.0[..n]);
        drain(e);
        let n = match reply_body {
            Some(r) => reply(&mut b, unique, r),
            None => raw_reply(&mut b, 16, error, unique, 16),
        };
        e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
        drain(e);
    }

    #[test]
    fn link_rename_unlink_keep_the_link_count_true() {
        // Past INIT, node 7 known as "f" in the root; its link count is 1.
        let mut e = super::times::session(super::times::config());
        roundtrip(
            &mut e,
            Opcode::Lookup,
            4,
            1,
            b"f\0",
            Some(entry(7, 1).as_bytes()),
            0,
        );
        roundtrip(&mut e, Opcode::Lookup, 6, 1, b"h\0", None, -2);
        let link: Vec<u8> = [LinkIn { oldnodeid: 7 }.as_bytes(), b"h\0"].concat();
        roundtrip(
            &mut e,
            Opcode::Link,
            8,
            1,
            &link,
            Some(entry(7, 2).as_bytes()),
            0,
        );
        roundtrip(&mut e, Opcode::Lookup, 10, 1, b"g\0", None, -2);
        let ren: Vec<u8> = [RenameIn { newdir: 1 }.as_bytes(), b"f\0", b"g\0"].concat();
        roundtrip(&mut e, Opcode::Rename, 12, 1, &ren, Some(&[]), 0);
        roundtrip(&mut e, Opcode::Unlink, 14, 1, b"g\0", Some(&[]), 0);
        assert_eq!(e.stats().times.cache_clears, 0);
        assert_eq!(
            e.attrs
                .get(fuseproxy_protocol::NodeId(7))
                .unwrap()
                .attr
                .nlink,
            1
        );
    }
}

mod after_write {
    use super::times::{config, session};
    use super::*;
    use fuseproxy_protocol::abi::{AttrOut, SetattrIn, WriteIn, WriteOut};
    use fuseproxy_protocol::flags::*;
    use zerocopy::FromBytes;

    fn setattr(e: &mut Engine, unique: u64, valid: u32) -> Vec<Action> {
        let mut b = Buf::new();
        let arg = SetattrIn {
            valid,
            atime: 11,
            mtime: 12,
            ..SetattrIn::default()
        };
        let n = request(&mut b, Opcode::Setattr, unique, 7, arg.as_bytes());
        e.handle_request(T0, WALL, SlotId(2), &mut b.0[..n]);
        drain(e)
    }

    #[test]
    fn a_write_grows_the_cached_size_and_unknown_mtime_forwards_atime_only_updates() {
        let mut e = session(config());
        let mut b = Buf::new();
        let body: Vec<u8> = [
            WriteIn {
                offset: 4000,
                size: 100,
                ..WriteIn::default()
            }
            .as_bytes(),
            &[0u8; 100],
        ]
        .concat();
        let n = request(&mut b, Opcode::Write, 20, 7, &body);
        e.handle_request(T0, WALL, SlotId(1), &mut b.0[..n]);
        drain(&mut e);
        let n = reply(
            &mut b,
            20,
            WriteOut {
                size: 100,
                padding: 0,
            }
            .as_bytes(),
        );
        e.handle_reply(T0, SlotId(1), &mut b.0[..n], n);
        drain(&mut e);
        // atime alone: the backend's new mtime is unknown here.
        assert!(matches!(
            setattr(&mut e, 22, FATTR_ATIME)[..],
            [Action::ForwardRequest(_)]
        ));
        // Explicit atime and mtime (no CTIME: a mount without writeback).
        let acts = setattr(&mut e, 24, FATTR_ATIME | FATTR_MTIME | FATTR_FH);
        let [Action::Answer(r), Action::Free(_)] = &acts[..] else {
            panic!("{acts:?}")
        };
        let out = AttrOut::read_from_bytes(&r.as_bytes()[16..]).unwrap();
        assert_eq!(out.attr.size, 4100, "the size the write left");
        assert_eq!(
            (out.attr.atime, out.attr.mtime, out.attr.ctime),
            (11, 12, WALL.0 as u64)
        );
        assert_eq!(
            out.attr_valid, 0,
            "adjusted attributes are not for the kernel to keep"
        );
    }
}

mod deadlines;
mod decisions;
mod rules;
