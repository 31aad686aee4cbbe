//! Real sessions, replayed through the engine: the requests the kernel
//! sent and the replies the backend gave, as `fuseproxy --record` caught
//! them (every `fixtures/captures/*.fcap`), go into a fresh engine
//! at their recorded times, and what the engine does must be what the
//! proxy did then, message for message and in the same order: each reply
//! written to the kernel (relayed, overlaid, or the proxy's own local
//! answer) and each request of the proxy's own sent to the backend (the
//! rewritten INIT, the time flush, DESTROY).
//!
//! Only the wall clock is not in a capture: a local answer's ctime, and a
//! time the kernel asked to be set to "now" (`FATTR_ATIME_NOW`,
//! `FATTR_MTIME_NOW`), are the proxy's clock at the time, so those fields
//! are left out of the comparison: in the local answer, and in the proxy's
//! flush of that file's times.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use fuseproxy_fixtures::{Direction, Kind, Reader};
use fuseproxy_policies::{Action, Config, Engine, Instant, SlotId};
use fuseproxy_protocol::abi::InHeader;
use fuseproxy_protocol::flags::{FATTR_ATIME_NOW, FATTR_MTIME_NOW};
use fuseproxy_protocol::{encode, Opcode};
use zerocopy::{FromBytes, IntoBytes};

/// A message as the engine gets it: 8-aligned, as an arena slot is.
struct Msg {
    words: Vec<u64>,
    len: usize,
}

impl Msg {
    fn new(bytes: &[u8]) -> Msg {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        words.as_mut_bytes()[..bytes.len()].copy_from_slice(bytes);
        Msg {
            words,
            len: bytes.len(),
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.words.as_mut_bytes()[..self.len]
    }

    fn bytes(&self) -> &[u8] {
        &self.words.as_bytes()[..self.len]
    }
}

/// What the engine did that a capture records.
#[derive(Debug, PartialEq, Eq)]
struct Out {
    kind: Kind,
    synthesized: bool,
    bytes: Vec<u8>,
}

/// The engine with the proxy's configuration at the recording (defaults,
/// a 32 MiB arena), and the messages its slots hold.
struct Replay {
    engine: Engine,
    slots: HashMap<u32, Msg>,
    next_slot: u32,
    outs: VecDeque<Out>,
    /// Opcode of each kernel request, by unique, to know what a reply answers.
    opcodes: HashMap<u64, Opcode>,
    /// The `FATTR_*_NOW` bits of each kernel SETATTR, by unique.
    now_bits: HashMap<u64, u32>,
    /// Nodes with a `*_NOW` time not yet flushed, and which bits.
    now_nodes: HashMap<u64, u32>,
}

impl Replay {
    fn new() -> Replay {
        Replay {
            engine: Engine::new(Config {
                max_held: 29,
                ..Config::default()
            }),
            slots: HashMap::new(),
            next_slot: 0,
            outs: VecDeque::new(),
            opcodes: HashMap::new(),
            now_bits: HashMap::new(),
            now_nodes: HashMap::new(),
        }
    }

    fn slot(&mut self, bytes: &[u8]) -> SlotId {
        self.next_slot += 1;
        self.slots.insert(self.next_slot, Msg::new(bytes));
        SlotId(self.next_slot)
    }

    fn run_actions(&mut self, now: Instant) {
        while let Some(a) = self.engine.poll_action(now) {
            let out = |kind, synthesized, bytes: &[u8]| Out {
                kind,
                synthesized,
                bytes: bytes.to_vec(),
            };
            match a {
                Action::ForwardRequest(s) => {
                    let m = self.slots.remove(&s.0).expect("a live slot");
                    let h = InHeader::read_from_prefix(m.bytes()).unwrap().0;
                    // The proxy records a forwarded request again only if
                    // the engine may have rewritten it.
                    if matches!(Opcode::from(h.opcode), Opcode::Init | Opcode::BatchForget) {
                        let len = h.len as usize;
                        self.outs
                            .push_back(out(Kind::RequestToBackend, false, &m.bytes()[..len]));
                    }
                }
                Action::Inject(r) => {
                    self.outs
                        .push_back(out(Kind::RequestToBackend, true, r.as_bytes()))
                }
                Action::DeliverReply(s) => {
                    let m = self.slots.remove(&s.0).expect("a live slot");
                    self.outs
                        .push_back(out(Kind::ReplyToKernel, false, m.bytes()));
                }
                Action::Answer(r) => {
                    self.outs
                        .push_back(out(Kind::ReplyToKernel, true, r.as_bytes()))
                }
                Action::AnswerError { unique, errno } => {
                    let mut buf = [0u8; 16];
                    let n = encode::encode_error_reply(&mut buf, unique, errno).unwrap();
                    self.outs
                        .push_back(out(Kind::ReplyToKernel, true, &buf[..n]));
                }
                Action::Free(s) => {
                    self.slots.remove(&s.0);
                }
                // Only while the backend is being restarted, which a capture
                // replayed through the engine never shows.
                Action::Retry(_) => panic!("a retry without a restart"),
            }
        }
        while self.engine.poll_event().is_some() {}
    }
}

/// `a` and `b`, two replies to the kernel, are the same but for what the
/// wall clock made: the ctime in a SETATTR answered locally, and the times
/// its request (`now`: its `FATTR_*_NOW` bits) asked to be set to "now".
fn same_reply(a: &[u8], b: &[u8], answers: Option<Opcode>, now: u32) -> bool {
    if a == b {
        return true;
    }
    if answers != Some(Opcode::Setattr) || a.len() != b.len() || a.len() < REPLY_CTIMENSEC.end {
        return false;
    }
    let strip = |m: &[u8]| {
        let mut m = m.to_vec();
        m[REPLY_CTIME].fill(0);
        m[REPLY_CTIMENSEC].fill(0);
        if now & FATTR_ATIME_NOW != 0 {
            m[REPLY_ATIME].fill(0);
            m[REPLY_ATIMENSEC].fill(0);
        }
        if now & FATTR_MTIME_NOW != 0 {
            m[REPLY_MTIME].fill(0);
            m[REPLY_MTIMENSEC].fill(0);
        }
        m
    };
    strip(a) == strip(b)
}

/// `a` and `b`, two requests of the proxy's own, are the same but for the
/// wall clock: in a time flush of a node whose update asked for "now"
/// (`now`), that time.
fn same_request(a: &[u8], b: &[u8], now: u32) -> bool {
    if a == b {
        return true;
    }
    if now == 0 || a.len() != b.len() || a.len() < SETATTR_MTIMENSEC.end {
        return false;
    }
    let strip = |m: &[u8]| {
        let mut m = m.to_vec();
        if now & FATTR_ATIME_NOW != 0 {
            m[SETATTR_ATIME].fill(0);
            m[SETATTR_ATIMENSEC].fill(0);
        }
        if now & FATTR_MTIME_NOW != 0 {
            m[SETATTR_MTIME].fill(0);
            m[SETATTR_MTIMENSEC].fill(0);
        }
        m
    };
    strip(a) == strip(b)
}

/// Where `fuse_attr_out.attr`'s times sit in a reply: after the 16-byte
/// `fuse_out_header` and the 16 bytes of validity.
const REPLY_ATIME: std::ops::Range<usize> = 16 + 16 + 24..16 + 16 + 32;
const REPLY_MTIME: std::ops::Range<usize> = 16 + 16 + 32..16 + 16 + 40;
const REPLY_CTIME: std::ops::Range<usize> = 16 + 16 + 40..16 + 16 + 48;
const REPLY_ATIMENSEC: std::ops::Range<usize> = 16 + 16 + 48..16 + 16 + 52;
const REPLY_MTIMENSEC: std::ops::Range<usize> = 16 + 16 + 52..16 + 16 + 56;
const REPLY_CTIMENSEC: std::ops::Range<usize> = 16 + 16 + 56..16 + 16 + 60;

/// Where `fuse_setattr_in`'s `valid` and times sit in a request: after the
/// 40-byte `fuse_in_header`.
const SETATTR_VALID: std::ops::Range<usize> = 40..44;
const SETATTR_ATIME: std::ops::Range<usize> = 40 + 32..40 + 40;
const SETATTR_MTIME: std::ops::Range<usize> = 40 + 40..40 + 48;
const SETATTR_ATIMENSEC: std::ops::Range<usize> = 40 + 56..40 + 60;
const SETATTR_MTIMENSEC: std::ops::Range<usize> = 40 + 60..40 + 64;

/// The checked-in captures, by name.
fn captures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/captures");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "fcap"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_recorded_session_replays_to_the_same_messages() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/captures/passthrough_ll.fcap"
    );
    let (compared, local) = replay(path);
    assert!(
        compared >= 40 && local >= 1,
        "{compared} compared, {local} local"
    );
    // A capture of one's own (made with fuseproxy's default options).
    if let Some(own) = std::env::var_os("FUSEPROXY_REPLAY") {
        replay(own.to_str().expect("a UTF-8 path"));
    }
}

/// Every checked-in capture (all recorded with the proxy's defaults; see
/// fixtures/README.md), whatever its daemon: libfuse 2 ones too, which
/// cannot be replayed against their daemon.
#[test]
fn every_checked_in_capture_replays_to_the_same_messages() {
    let files = captures();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "bindfs",
        "passthrough_ll",
        "passthrough_ll_build",
        "passthrough_ll_stopped",
        "squashfuse_ll",
    ] {
        assert!(names.iter().any(|n| n == want), "{want}.fcap in {names:?}");
    }
    for (path, name) in files.iter().zip(&names) {
        let (compared, local) = replay(path.to_str().expect("a UTF-8 path"));
        assert!(compared > 0, "{name}: nothing compared");
        // What each session shows (fixtures/README.md).
        match name.as_str() {
            // Four touches while the daemon was stopped, all answered.
            "passthrough_ll_stopped" => assert!(local >= 4, "{name}: {local} local"),
            // The writeback cache's time flushes, tar's and touch's.
            "passthrough_ll_build" => assert!(local >= 10, "{name}: {local} local"),
            "squashfuse_ll" => assert_eq!(local, 0, "{name}: read-only"),
            _ => {}
        }
    }
}

/// Replays the capture at `path`; returns the outputs compared and how many
/// of them were the proxy's own answers.
fn replay(path: &str) -> (u32, u32) {
    let file = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut reader = Reader::new(&file).unwrap();
    let created = reader.header().created_unix_ns;
    let mut r = Replay::new();
    let (mut fed, mut compared, mut local) = (0u32, 0u32, 0u32);
    while let Some(rec) = reader.next().unwrap() {
        let now = Instant::from_nanos(rec.time_ns);
        let ns = created + rec.time_ns;
        let wall = ((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as u32);
        match (rec.kind, rec.direction) {
            (Kind::RequestFromKernel, Direction::FromKernel) => {
                // The proxy checks its deadlines before it reads.
                r.engine.handle_timeout(now);
                r.run_actions(now);
                let h = InHeader::read_from_prefix(rec.bytes).unwrap().0;
                r.opcodes.insert(h.unique, Opcode::from(h.opcode));
                if Opcode::from(h.opcode) == Opcode::Setattr && rec.bytes.len() >= SETATTR_VALID.end
                {
                    let valid = u32::from_ne_bytes(rec.bytes[SETATTR_VALID].try_into().unwrap());
                    let now = valid & (FATTR_ATIME_NOW | FATTR_MTIME_NOW);
                    if now != 0 {
                        r.now_bits.insert(h.unique, now);
                        *r.now_nodes.entry(h.nodeid).or_default() |= now;
                    }
                }
                let s = r.slot(rec.bytes);
                let mut m = r.slots.remove(&s.0).unwrap();
                r.engine.handle_request(now, wall, s, m.bytes_mut());
                r.slots.insert(s.0, m);
                r.run_actions(now);
                fed += 1;
            }
            (Kind::ReplyFromBackend | Kind::Notification, Direction::FromBackend) => {
                let s = r.slot(rec.bytes);
                let mut m = r.slots.remove(&s.0).unwrap();
                r.engine
                    .handle_reply(now, s, m.bytes_mut(), rec.bytes.len());
                r.slots.insert(s.0, m);
                r.run_actions(now);
                fed += 1;
            }
            (kind @ (Kind::ReplyToKernel | Kind::Notification | Kind::RequestToBackend), _) => {
                if r.outs.is_empty() {
                    // What the proxy did on its own: a deadline, or the
                    // end of the session (its DESTROY).
                    r.engine.handle_timeout(now);
                    r.run_actions(now);
                }
                if r.outs.is_empty() {
                    r.engine.handle_shutdown(now);
                    r.run_actions(now);
                }
                let got = r.outs.pop_front().unwrap_or_else(|| {
                    panic!(
                        "the proxy sent {kind:?} at {} ns; the engine nothing",
                        rec.time_ns
                    )
                });
                let want_kind = if kind == Kind::Notification {
                    Kind::ReplyToKernel
                } else {
                    kind
                };
                let unique = u64::from_ne_bytes(rec.bytes[8..16].try_into().unwrap());
                let answers = r.opcodes.get(&unique).copied();
                assert_eq!(
                    (got.kind, got.synthesized),
                    (want_kind, rec.is_synthesized()),
                    "record at offset {}",
                    rec.offset
                );
                let same = if kind == Kind::RequestToBackend {
                    // A time flush: the node's "now" times go with it.
                    let h = InHeader::read_from_prefix(rec.bytes).unwrap().0;
                    let now = if Opcode::from(h.opcode) == Opcode::Setattr {
                        r.now_nodes.remove(&h.nodeid).unwrap_or(0)
                    } else {
                        0
                    };
                    same_request(&got.bytes, rec.bytes, now)
                } else {
                    let now = r.now_bits.get(&unique).copied().unwrap_or(0);
                    same_reply(&got.bytes, rec.bytes, answers, now)
                };
                assert!(
                    same,
                    "record at offset {} ({kind:?}, unique {unique:#x}):\n  recorded {:?}\n  replayed {:?}",
                    rec.offset, rec.bytes, got.bytes
                );
                if rec.is_synthesized() && kind == Kind::ReplyToKernel {
                    local += 1;
                }
                compared += 1;
            }
            _ => {}
        }
    }
    assert!(r.outs.is_empty(), "the engine did more: {:?}", r.outs);
    assert_eq!(r.engine.inflight(), 0);
    eprintln!("{path}: replayed {fed} inputs, {compared} outputs compared, {local} local answers");
    (compared, local)
}
