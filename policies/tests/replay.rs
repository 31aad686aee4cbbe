//! Real sessions, replayed through the engine: the requests the kernel
//! sent and the replies the backend gave, as `fuseproxy --record` caught
//! them (every `fixtures/captures/*.fcap`), go into a fresh engine
//! at their recorded times, and what the engine does must be what the
//! proxy did then, message for message and in the same order: each reply
//! written to the kernel (relayed, overlaid, or the proxy's own local
//! answer) and each request of the proxy's own sent to the backend (the
//! rewritten INIT, the time flush, DESTROY).
//!
//! A capture that holds a restart of the backend (`--restart on-failure`)
//! replays too: where the proxy recorded `restart_began` the engine is
//! told the backend died, where it recorded `restart_launched` that the
//! new one's channel is up, and the new backend's recorded replies go in
//! as any other. Its INIT, the LOOKUPs and OPENs that find the kernel's
//! nodes and files again, the requests sent again, the EIO and ESTALE
//! answers and every request after it (recorded as the backend got it,
//! in its ids) must be what the proxy sent; the restart's own decisions
//! (`node_found` ... `restart_done`) must be the recorded ones, in order.
//!
//! Only the wall clock is not in a capture: a local answer's ctime, and a
//! time the kernel asked to be set to "now" (`FATTR_ATIME_NOW`,
//! `FATTR_MTIME_NOW`), are the proxy's clock at the time, so those fields
//! are left out of the comparison: in the local answer, and in the proxy's
//! flush of that file's times.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use fuseproxy_fixtures::format::DecisionRecord;
use fuseproxy_fixtures::{Direction, Kind, Reader};
use fuseproxy_policies::{Action, Config, Engine, Event, Instant, SlotId};
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
    /// Requests the engine asked to be handed again (read during a
    /// restart), in order, as the proxy keeps them.
    retry: VecDeque<SlotId>,
    /// The engine's decisions about a restart (`RESTART_CODES`), in order.
    restart_decisions: Vec<Decided>,
}

/// A decision as compared: code, unique, node, detail.
type Decided = (u16, u64, u64, u64);

/// The decisions of a restart compared with the recorded ones: `stale`
/// (29), `restart_began` (30) ... `restart_launched` (38). The others are
/// checked through the messages they shape.
const RESTART_CODES: std::ops::RangeInclusive<u16> = 29..=38;

/// The recorded decisions that stand for what the proxy told the engine:
/// the backend died, the new one's channel is up.
const RESTART_BEGAN: u16 = 30;
const RESTART_LAUNCHED: u16 = 38;

impl Replay {
    /// An engine as the proxy had it; `restart` as with `--restart
    /// on-failure` (its node map and copies of requests to send again).
    fn new(restart: bool) -> Replay {
        let mut engine = Engine::new(Config {
            max_held: 29,
            restart,
            ..Config::default()
        });
        // As when recording (the proxy turns them on for a capture).
        engine.set_decisions(true);
        Replay {
            engine,
            slots: HashMap::new(),
            next_slot: 0,
            outs: VecDeque::new(),
            opcodes: HashMap::new(),
            now_bits: HashMap::new(),
            now_nodes: HashMap::new(),
            retry: VecDeque::new(),
            restart_decisions: Vec::new(),
        }
    }

    fn slot(&mut self, bytes: &[u8]) -> SlotId {
        self.next_slot += 1;
        self.slots.insert(self.next_slot, Msg::new(bytes));
        SlotId(self.next_slot)
    }

    /// What the proxy's `run_actions` does: carries out the actions, then
    /// hands the engine again the requests it asked to retry, once it
    /// takes them.
    fn run_actions(&mut self, now: Instant, wall: (i64, u32)) {
        loop {
            self.carry_out_actions(now);
            if self.retry.is_empty() || !self.engine.can_accept_request() {
                return;
            }
            while self.engine.can_accept_request() {
                let Some(s) = self.retry.pop_front() else {
                    break;
                };
                let mut m = self.slots.remove(&s.0).expect("a live slot");
                self.engine.handle_request(now, wall, s, m.bytes_mut());
                self.slots.insert(s.0, m);
            }
        }
    }

    /// Carries out the engine's actions, keeps its restart decisions, and
    /// reacts to its events as the proxy does.
    fn carry_out_actions(&mut self, now: Instant) {
        loop {
            self.carry_out_queued(now);
            let mut refused = false;
            while let Some(ev) = self.engine.poll_event() {
                refused |= matches!(ev, Event::RestartRefused { .. });
            }
            if !refused {
                return;
            }
            // The proxy then ends as if the backend had died for good.
            self.engine.handle_backend_gone(now);
        }
    }

    fn carry_out_queued(&mut self, now: Instant) {
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
                    // the engine may have rewritten it: after a restart,
                    // every one (its ids are the new backend's).
                    let restarted = self.engine.stats().restarts > 0;
                    if restarted
                        || matches!(Opcode::from(h.opcode), Opcode::Init | Opcode::BatchForget)
                    {
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
                // Read while the backend was being restarted.
                Action::Retry(s) => self.retry.push_back(s),
            }
        }
        while let Some(d) = self.engine.poll_decision() {
            let code = d.kind.code();
            if RESTART_CODES.contains(&code) {
                self.restart_decisions
                    .push((code, d.unique.0, d.node.0, d.detail));
            }
        }
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
        "passthrough_ll_restart",
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
            // The WRITE in flight at the kill, answered EIO.
            "passthrough_ll_restart" => assert!(local >= 1, "{name}: {local} local"),
            _ => {}
        }
    }
}

/// The decision the proxy records for a request it sent again to a new
/// backend (`resent`).
const RESENT: u16 = 35;

/// The restart fixture: passthrough_ll SIGKILLed under `--restart
/// on-failure` (fixtures/README.md). The engine goes through the whole
/// restart as the proxy did, and the session goes on after it.
#[test]
fn a_restart_replays_to_the_same_messages() {
    let file = std::fs::read(restart_fixture()).unwrap();
    let r = replay_bytes(&file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.restarts, 1);
    // INIT, five LOOKUPs, two OPENs, two requests sent again, and the
    // session after them.
    assert!(r.after_restart >= 40, "{r:?}");
}

/// A copy of the restart fixture with one reply of the new backend
/// changed (the last byte of the answer to a request the proxy sent
/// again) stops there: a harness that skipped the restart, or stopped at
/// it, would not see the difference.
#[test]
fn a_restart_replay_that_diverges_names_the_first_difference() {
    let mut file = std::fs::read(restart_fixture()).unwrap();
    let mut reader = Reader::new(&file).unwrap();
    let (mut resent, mut changed, mut relayed) = (Vec::new(), None, None);
    while let Some(rec) = reader.next().unwrap() {
        match rec.kind {
            Kind::Decision => {
                let d = DecisionRecord::read(rec.bytes).unwrap();
                if d.code == RESENT {
                    resent.push(d.unique);
                }
            }
            Kind::ReplyFromBackend | Kind::ReplyToKernel if rec.bytes.len() > 16 => {
                let unique = u64::from_ne_bytes(rec.bytes[8..16].try_into().unwrap());
                if !resent.contains(&unique) {
                    continue;
                }
                if rec.kind == Kind::ReplyFromBackend && changed.is_none() {
                    // Its last byte; the message follows the record header.
                    changed = Some((unique, rec.offset as usize + 16 + rec.bytes.len() - 1));
                } else if rec.kind == Kind::ReplyToKernel
                    && changed.is_some_and(|(u, _)| u == unique)
                {
                    relayed = Some(rec.offset);
                    break;
                }
            }
            _ => {}
        }
    }
    let (Some((unique, at)), Some(relayed)) = (changed, relayed) else {
        panic!("no request sent again and answered with a body: the fixture no longer shows it");
    };
    file[at] ^= 0x80;
    let err = replay_bytes(&file).expect_err("a changed reply after the restart");
    assert!(
        err.starts_with(&format!(
            "record at offset {relayed} (ReplyToKernel, unique {unique:#x})"
        )),
        "{err}"
    );

    // Without the moment the new backend came up (as recorded before the
    // proxy kept it), the harness says so instead of guessing.
    let mut file = std::fs::read(restart_fixture()).unwrap();
    let mut reader = Reader::new(&file).unwrap();
    let mut launched = None;
    while let Some(rec) = reader.next().unwrap() {
        if rec.kind == Kind::Decision
            && DecisionRecord::read(rec.bytes).unwrap().code == RESTART_LAUNCHED
        {
            launched = Some(rec.offset as usize);
        }
    }
    // The code, 24 bytes into the decision's payload, made unknown.
    let code = launched.expect("restart_launched in the fixture") + 16 + 24;
    file[code..code + 2].copy_from_slice(&999u16.to_le_bytes());
    let err = replay_bytes(&file).expect_err("no restart_launched");
    assert!(err.contains("restart_launched"), "{err}");
}

fn restart_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/captures/passthrough_ll_restart.fcap")
}

/// Replays the capture at `path`; returns the outputs compared and how many
/// of them were the proxy's own answers. Panics with the first difference.
fn replay(path: &str) -> (u32, u32) {
    let file = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let r = replay_bytes(&file).unwrap_or_else(|e| panic!("{path}: {e}"));
    eprintln!(
        "{path}: replayed {} inputs, {} outputs compared, {} local answers, {} restarts",
        r.fed, r.compared, r.local, r.restarts
    );
    (r.compared, r.local)
}

/// What a replay went through.
#[derive(Debug, Default)]
struct Replayed {
    fed: u32,
    compared: u32,
    local: u32,
    /// Restarts of the backend the engine was told of.
    restarts: u32,
    /// Outputs compared after the first restart began.
    after_restart: u32,
}

/// The recorded decision in `rec`, if it is one.
fn decision(rec: &fuseproxy_fixtures::Record<'_>) -> Option<DecisionRecord> {
    (rec.kind == Kind::Decision)
        .then(|| DecisionRecord::read(rec.bytes))
        .flatten()
}

/// Replays a capture's bytes through a fresh engine; the first difference
/// (an output the engine did not make, or made otherwise) is the error,
/// named by the record's offset.
fn replay_bytes(file: &[u8]) -> Result<Replayed, String> {
    let mut reader = Reader::new(file).map_err(|e| e.to_string())?;
    let created = reader.header().created_unix_ns;
    let mut records = Vec::new();
    while let Some(rec) = reader.next().map_err(|e| e.to_string())? {
        records.push(rec);
    }
    let codes: Vec<u16> = records
        .iter()
        .filter_map(decision)
        .map(|d| d.code)
        .collect();
    let restart = codes.contains(&RESTART_BEGAN);
    if restart && !codes.contains(&RESTART_LAUNCHED) {
        return Err(
            "the capture holds a restart (restart_began) but not when the new backend \
                    was started (restart_launched, recorded since fuseproxy records restarts \
                    for replay): it cannot be replayed through the engine"
                .into(),
        );
    }
    let mut r = Replay::new(restart);
    let mut out = Replayed::default();
    let mut recorded_decisions: Vec<Decided> = Vec::new();
    for rec in &records {
        let now = Instant::from_nanos(rec.time_ns);
        let ns = created + rec.time_ns;
        let wall = ((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as u32);
        match (rec.kind, rec.direction) {
            (Kind::Decision, _) => {
                let Some(d) = decision(rec) else { continue };
                if RESTART_CODES.contains(&d.code) {
                    recorded_decisions.push((d.code, d.unique, d.nodeid, d.detail));
                }
                // What the proxy told the engine, recorded before what it
                // caused.
                match d.code {
                    RESTART_BEGAN => {
                        r.engine.handle_backend_restarting(now);
                        out.restarts += 1;
                    }
                    RESTART_LAUNCHED => r.engine.handle_backend_restarted(now),
                    _ => continue,
                }
                r.run_actions(now, wall);
            }
            (Kind::RequestFromKernel, Direction::FromKernel) => {
                // The proxy checks its deadlines before it reads.
                r.engine.handle_timeout(now);
                r.run_actions(now, wall);
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
                r.run_actions(now, wall);
                out.fed += 1;
            }
            (Kind::ReplyFromBackend | Kind::Notification, Direction::FromBackend) => {
                let s = r.slot(rec.bytes);
                let mut m = r.slots.remove(&s.0).unwrap();
                r.engine
                    .handle_reply(now, s, m.bytes_mut(), rec.bytes.len());
                r.slots.insert(s.0, m);
                r.run_actions(now, wall);
                out.fed += 1;
            }
            (kind @ (Kind::ReplyToKernel | Kind::Notification | Kind::RequestToBackend), _) => {
                if r.outs.is_empty() {
                    // What the proxy did on its own: a deadline, or the
                    // end of the session (its DESTROY).
                    r.engine.handle_timeout(now);
                    r.run_actions(now, wall);
                }
                if r.outs.is_empty() {
                    r.engine.handle_shutdown(now);
                    r.run_actions(now, wall);
                }
                let Some(got) = r.outs.pop_front() else {
                    return Err(format!(
                        "record at offset {}: the proxy sent {kind:?} at {} ns; the engine nothing",
                        rec.offset, rec.time_ns
                    ));
                };
                let want_kind = if kind == Kind::Notification {
                    Kind::ReplyToKernel
                } else {
                    kind
                };
                let unique = u64::from_ne_bytes(rec.bytes[8..16].try_into().unwrap());
                let answers = r.opcodes.get(&unique).copied();
                if (got.kind, got.synthesized) != (want_kind, rec.is_synthesized()) {
                    return Err(format!(
                        "record at offset {}: recorded {want_kind:?} (synthesized {}), replayed \
                         {:?} (synthesized {}): {:?}",
                        rec.offset,
                        rec.is_synthesized(),
                        got.kind,
                        got.synthesized,
                        got.bytes
                    ));
                }
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
                if !same {
                    return Err(format!(
                        "record at offset {} ({kind:?}, unique {unique:#x}):\n  recorded {:?}\n  \
                         replayed {:?}",
                        rec.offset, rec.bytes, got.bytes
                    ));
                }
                if rec.is_synthesized() && kind == Kind::ReplyToKernel {
                    out.local += 1;
                }
                out.compared += 1;
                if out.restarts > 0 {
                    out.after_restart += 1;
                }
            }
            _ => {}
        }
    }
    if !r.outs.is_empty() {
        return Err(format!("the engine did more: {:?}", r.outs));
    }
    if r.engine.inflight() != 0 {
        return Err(format!(
            "{} requests still in flight at the end",
            r.engine.inflight()
        ));
    }
    if r.restart_decisions != recorded_decisions {
        return Err(format!(
            "the restart's decisions (code, unique, node, detail) differ:\n  recorded {:?}\n  \
             replayed {:?}",
            recorded_decisions, r.restart_decisions
        ));
    }
    Ok(out)
}
