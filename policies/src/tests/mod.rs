//! Engine tests: a fake kernel and a fake backend exchanging encoded bytes.

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
