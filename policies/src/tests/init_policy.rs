//! `[init]` in the engine: the offer the backend sees, the answer the kernel
//! gets, and OPEN/CREATE under forced writeback.

use fuseproxy_protocol::abi::{CreateIn, InitIn, InitOut, OpenIn};
use fuseproxy_protocol::flags::{
    FUSE_ASYNC_READ, FUSE_FLOCK_LOCKS, FUSE_INIT_EXT, FUSE_MAX_PAGES, FUSE_PASSTHROUGH,
    FUSE_POSIX_ACL, FUSE_WRITEBACK_CACHE,
};
use fuseproxy_protocol::{InitInView, InitOutView, Opcode};
use zerocopy::IntoBytes;

use super::{drain, events, reply, request, Buf, T0, WALL};
use crate::init_rule::DEVICE_ONLY_FLAGS;
use crate::rules::Rules;
use crate::{Action, Config, Engine, Event, Policy, SlotId};

const O_WRONLY: u32 = 0o1;
const O_RDWR: u32 = 0o2;
const O_CREAT: u32 = 0o100;
const O_APPEND: u32 = 0o2000;

/// What the kernel on these machines offers (7.45, flags2 included).
const OFFERED: u64 = 0x73ff_fffb | FUSE_INIT_EXT | FUSE_PASSTHROUGH | (1 << 33);

fn engine_with(policy: &str) -> Engine {
    let rules = Rules::compile(&Policy::parse("t.toml", policy).unwrap());
    Engine::with_rules(
        Config {
            max_inflight: 8,
            ..Config::default()
        },
        rules,
    )
}

/// Sends the kernel's INIT offering `offered`; returns the flags the
/// backend receives.
fn offer(e: &mut Engine, offered: u64) -> u64 {
    let init = InitIn {
        major: 7,
        minor: 45,
        max_readahead: 128 * 1024,
        flags: offered as u32,
        flags2: (offered >> 32) as u32,
        ..InitIn::default()
    };
    let mut b = Buf::new();
    let n = request(&mut b, Opcode::Init, 2, 0, init.as_bytes());
    e.handle_request(T0, WALL, SlotId(0), &mut b.0[..n]);
    assert!(matches!(drain(e)[..], [Action::ForwardRequest(SlotId(0))]));
    InitInView::parse(&b.0[40..n]).unwrap().flags()
}

/// The backend's answer `out` to the INIT of [`offer`]; returns what the
/// kernel gets.
fn answer(e: &mut Engine, out: InitOut) -> InitOutView {
    let mut r = Buf::new();
    let n = reply(&mut r, 2, out.as_bytes());
    e.handle_reply(T0, SlotId(1), &mut r.0[..n], n);
    assert!(matches!(drain(e)[..], [Action::DeliverReply(SlotId(1))]));
    assert!(e.is_initialized());
    InitOutView::parse(&r.0[16..n]).unwrap()
}

/// libfuse's usual answer: 64 bytes, asynchronous reads, 1 MiB writes.
fn libfuse_answer(flags: u64) -> InitOut {
    InitOut {
        major: 7,
        minor: 38,
        max_readahead: 128 * 1024,
        flags: (flags | FUSE_INIT_EXT | FUSE_MAX_PAGES) as u32,
        flags2: (flags >> 32) as u32,
        max_write: 1 << 20,
        max_pages: 256,
        ..InitOut::default()
    }
}

fn negotiated(e: &mut Engine) -> Event {
    events(e)
        .into_iter()
        .find(|ev| matches!(ev, Event::Negotiated { .. }))
        .expect("a Negotiated event")
}

/// An OPEN (or CREATE) with `flags`; returns the flags the backend gets.
fn open(e: &mut Engine, op: Opcode, unique: u64, flags: u32) -> u32 {
    let mut b = Buf::new();
    let n = if op == Opcode::Create {
        let arg = CreateIn {
            flags,
            mode: 0o100644,
            ..CreateIn::default()
        };
        let mut body = arg.as_bytes().to_vec();
        body.extend_from_slice(b"f\0");
        request(&mut b, op, unique, 1, &body)
    } else {
        let arg = OpenIn {
            flags,
            open_flags: 0,
        };
        request(&mut b, op, unique, 5, arg.as_bytes())
    };
    e.handle_request(T0, WALL, SlotId(7), &mut b.0[..n]);
    assert!(matches!(drain(e)[..], [Action::ForwardRequest(SlotId(7))]));
    u32::from_ne_bytes(b.0[40..44].try_into().unwrap())
}

#[test]
fn mask_removes_named_capabilities_from_the_offer() {
    let mut e = engine_with("[init]\nmask = [\"FUSE_POSIX_ACL\", \"FLOCK_LOCKS\"]\n");
    let sent = offer(&mut e, OFFERED);
    assert_eq!(
        sent & (FUSE_POSIX_ACL | FUSE_FLOCK_LOCKS | FUSE_PASSTHROUGH),
        0
    );
    assert_eq!(
        sent,
        OFFERED & !(FUSE_POSIX_ACL | FUSE_FLOCK_LOCKS | DEVICE_ONLY_FLAGS)
    );
    assert!(matches!(
        events(&mut e)[..],
        [Event::InitOffered { removed, .. }] if removed == OFFERED & DEVICE_ONLY_FLAGS
    ));
    assert_eq!(e.stats().policy.init_rewrites, 1);

    // A backend taking a masked flag anyway does not get it to the kernel.
    let out = answer(&mut e, libfuse_answer(FUSE_ASYNC_READ | FUSE_FLOCK_LOCKS));
    assert_eq!(
        out.flags(),
        FUSE_INIT_EXT | FUSE_MAX_PAGES | FUSE_ASYNC_READ
    );
    assert!(matches!(
        negotiated(&mut e),
        Event::Negotiated { masked, forced: 0, denied: 0, answered, .. }
            if masked == FUSE_POSIX_ACL | FUSE_FLOCK_LOCKS && answered & FUSE_FLOCK_LOCKS != 0
    ));
    assert_eq!(e.stats().policy.init_rewrites, 2);
}

#[test]
fn deny_removes_writeback_from_the_offer_and_the_answer() {
    let mut e = engine_with("[init]\nwriteback_cache = \"deny\"\n");
    let sent = offer(&mut e, OFFERED);
    assert_eq!(sent & FUSE_WRITEBACK_CACHE, 0);
    assert_eq!(sent, OFFERED & !(FUSE_WRITEBACK_CACHE | DEVICE_ONLY_FLAGS));
    let out = answer(&mut e, libfuse_answer(FUSE_WRITEBACK_CACHE));
    assert_eq!(out.flags() & FUSE_WRITEBACK_CACHE, 0);
    assert!(matches!(
        negotiated(&mut e),
        Event::Negotiated {
            denied: FUSE_WRITEBACK_CACHE,
            forced: 0,
            ..
        }
    ));
    // Denied writeback forces nothing on OPEN.
    assert_eq!(
        open(&mut e, Opcode::Open, 3, O_WRONLY | O_APPEND),
        O_WRONLY | O_APPEND
    );
}

#[test]
fn force_sets_writeback_in_the_answer_when_offered() {
    let mut e = engine_with("[init]\nwriteback_cache = \"force\"\n");
    let sent = offer(&mut e, OFFERED);
    assert_ne!(sent & FUSE_WRITEBACK_CACHE, 0, "the backend sees the offer");
    let out = answer(&mut e, libfuse_answer(FUSE_ASYNC_READ));
    assert_eq!(
        out.flags(),
        FUSE_INIT_EXT | FUSE_MAX_PAGES | FUSE_ASYNC_READ | FUSE_WRITEBACK_CACHE
    );
    assert!(matches!(
        negotiated(&mut e),
        Event::Negotiated { forced: FUSE_WRITEBACK_CACHE, answered, flags, .. }
            if answered & FUSE_WRITEBACK_CACHE == 0 && flags & FUSE_WRITEBACK_CACHE != 0
    ));
    assert_eq!(e.stats().policy.init_rewrites, 1);
}

#[test]
fn force_does_nothing_when_not_offered_or_already_answered() {
    // Not offered: the kernel cannot take it.
    let mut e = engine_with("[init]\nwriteback_cache = \"force\"\n");
    offer(&mut e, OFFERED & !FUSE_WRITEBACK_CACHE);
    let out = answer(&mut e, libfuse_answer(FUSE_ASYNC_READ));
    assert_eq!(out.flags() & FUSE_WRITEBACK_CACHE, 0);
    assert!(matches!(
        negotiated(&mut e),
        Event::Negotiated { forced: 0, .. }
    ));
    assert_eq!(open(&mut e, Opcode::Open, 3, O_WRONLY), O_WRONLY);

    // The backend asked for it itself: it handles its opens.
    let mut e = engine_with("[init]\nwriteback_cache = \"force\"\n");
    offer(&mut e, OFFERED);
    let out = answer(&mut e, libfuse_answer(FUSE_WRITEBACK_CACHE));
    assert_ne!(out.flags() & FUSE_WRITEBACK_CACHE, 0);
    assert!(matches!(
        negotiated(&mut e),
        Event::Negotiated { forced: 0, .. }
    ));
    assert_eq!(
        open(&mut e, Opcode::Open, 3, O_WRONLY | O_APPEND),
        O_WRONLY | O_APPEND
    );
    assert_eq!(e.stats().policy.init_rewrites, 0);
}

#[test]
fn opens_become_read_write_without_append_after_forced_writeback() {
    let mut e = engine_with("[init]\nwriteback_cache = \"force\"\n");
    // Before INIT is answered nothing is forced yet.
    offer(&mut e, OFFERED);
    answer(&mut e, libfuse_answer(FUSE_ASYNC_READ));
    assert_eq!(open(&mut e, Opcode::Open, 3, O_WRONLY | O_APPEND), O_RDWR);
    assert_eq!(open(&mut e, Opcode::Open, 4, O_RDWR | O_APPEND), O_RDWR);
    assert_eq!(open(&mut e, Opcode::Open, 5, 0), 0, "read-only stays");
    assert_eq!(
        open(&mut e, Opcode::Create, 6, O_WRONLY | O_CREAT | O_APPEND),
        O_RDWR | O_CREAT
    );
    assert_eq!(e.stats().policy.writeback_opens, 3);

    // A reload cannot take back what the kernel was told.
    e.set_rules(Rules::default());
    assert_eq!(open(&mut e, Opcode::Open, 7, O_WRONLY), O_RDWR);
}

#[test]
fn opens_are_unchanged_without_the_rule() {
    let mut e = engine_with("");
    offer(&mut e, OFFERED);
    answer(&mut e, libfuse_answer(FUSE_ASYNC_READ));
    assert_eq!(
        open(&mut e, Opcode::Open, 3, O_WRONLY | O_APPEND),
        O_WRONLY | O_APPEND
    );
    assert_eq!(
        open(&mut e, Opcode::Create, 4, O_WRONLY | O_CREAT | O_APPEND),
        O_WRONLY | O_CREAT | O_APPEND
    );
    assert_eq!(e.stats().policy.writeback_opens, 0);
}

#[test]
fn caps_lower_the_answer_and_never_raise_it() {
    let policy = "[init]\nmax_write = 65536\nmax_readahead = 32768\nmax_pages = 16\n";
    let mut e = engine_with(policy);
    offer(&mut e, OFFERED);
    let out = answer(&mut e, libfuse_answer(FUSE_ASYNC_READ));
    assert_eq!(
        (out.max_write(), out.max_readahead(), out.max_pages()),
        (65536, 32768, 16)
    );
    assert!(matches!(
        negotiated(&mut e),
        Event::Negotiated {
            max_write: 65536,
            backend_max_write: 1048576,
            max_readahead: 32768,
            backend_max_readahead: 131072,
            max_pages: 16,
            backend_max_pages: 256,
            ..
        }
    ));
    assert_eq!(e.stats().policy.init_rewrites, 3);

    // Caps above what the backend asks for change nothing.
    let policy = "[init]\nmax_write = 8388608\nmax_readahead = 1048576\nmax_pages = 1024\n";
    let mut e = engine_with(policy);
    offer(&mut e, OFFERED);
    let small = InitOut {
        max_write: 4096,
        max_readahead: 4096,
        max_pages: 1,
        ..libfuse_answer(0)
    };
    let out = answer(&mut e, small);
    assert_eq!(
        (out.max_write(), out.max_readahead(), out.max_pages()),
        (4096, 4096, 1)
    );
    assert_eq!(e.stats().policy.init_rewrites, 0);

    // The arena's limit still holds under a higher cap, and is not counted.
    let mut e = engine_with(policy);
    offer(&mut e, OFFERED);
    let big = InitOut {
        max_write: 4 << 20,
        max_pages: 1024,
        ..libfuse_answer(0)
    };
    let out = answer(&mut e, big);
    assert_eq!((out.max_write(), out.max_pages()), (1 << 20, 256));
    assert_eq!(e.stats().policy.init_rewrites, 0);
}

#[test]
fn max_pages_is_left_alone_when_not_in_effect() {
    let mut e = engine_with("[init]\nmax_pages = 16\n");
    offer(&mut e, OFFERED);
    let out = InitOut {
        flags: (FUSE_INIT_EXT | FUSE_ASYNC_READ) as u32,
        max_pages: 256,
        ..libfuse_answer(0)
    };
    let out = answer(&mut e, out);
    assert_eq!((out.max_pages(), out.max_pages_in_effect()), (256, 0));
    assert_eq!(e.stats().policy.init_rewrites, 0);
}

#[test]
fn kernel_uring_is_accepted_for_the_kernel_and_never_offered_to_the_backend() {
    use fuseproxy_protocol::flags::FUSE_OVER_IO_URING;
    let with = |kernel_uring: bool| {
        Engine::with_rules(
            Config {
                max_inflight: 8,
                kernel_uring,
                ..Config::default()
            },
            Rules::compile(&Policy::parse("t.toml", "").unwrap()),
        )
    };
    let offered = OFFERED | FUSE_OVER_IO_URING;
    // On: the backend is not offered it, the kernel's answer has it.
    let mut e = with(true);
    assert_eq!(offer(&mut e, offered) & FUSE_OVER_IO_URING, 0);
    let got = answer(&mut e, libfuse_answer(FUSE_ASYNC_READ));
    assert_eq!(got.flags() & FUSE_OVER_IO_URING, FUSE_OVER_IO_URING);
    // Off: neither.
    let mut e = with(false);
    assert_eq!(offer(&mut e, offered) & FUSE_OVER_IO_URING, 0);
    let got = answer(&mut e, libfuse_answer(FUSE_ASYNC_READ));
    assert_eq!(got.flags() & FUSE_OVER_IO_URING, 0);
    // On, but the kernel did not offer it (module parameter off): not set.
    let mut e = with(true);
    offer(&mut e, OFFERED);
    let got = answer(&mut e, libfuse_answer(FUSE_ASYNC_READ));
    assert_eq!(got.flags() & FUSE_OVER_IO_URING, 0);
    // On, and a libfuse 2 answer (24 bytes, no flags2): the kernel gets a
    // whole fuse_init_out instead, the same in its first 24 bytes.
    let mut e = with(true);
    offer(&mut e, offered);
    let out = InitOut {
        minor: 26,
        flags: FUSE_ASYNC_READ as u32,
        ..libfuse_answer(0)
    };
    let mut r = Buf::new();
    let n = reply(&mut r, 2, &out.as_bytes()[..24]);
    e.handle_reply(T0, SlotId(1), &mut r.0[..n], n);
    let actions = drain(&mut e);
    let [Action::Free(SlotId(1)), Action::Answer(grown)] = &actions[..] else {
        panic!("{actions:?}");
    };
    let b = grown.as_bytes();
    assert_eq!(b.len(), 16 + 64);
    assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), 80, "len");
    assert_eq!(
        u64::from_ne_bytes(b[8..16].try_into().unwrap()),
        2,
        "unique"
    );
    let got = InitOutView::parse(&b[16..]).unwrap();
    assert_eq!(
        got.flags(),
        FUSE_ASYNC_READ | FUSE_OVER_IO_URING | FUSE_INIT_EXT
    );
    assert_eq!(
        &b[16 + 16..16 + 24],
        &out.as_bytes()[16..24],
        "max_write and the rest"
    );
    assert_eq!(got.minor(), 26);
}
