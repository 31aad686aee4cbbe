//! `--trace` (and `-vv`): every message that crosses the proxy, decoded on
//! stderr as `fuseproxy-capture decode` prints it, with the engine's
//! decisions (`[answered locally: times async]` ...) on lines of their own.
//! For a FUSE developer it is libfuse's `-d` seen from between the kernel
//! and the daemon, without a capture file.
//!
//! Off, it costs the forwarding path one `Option` test per message. On, it
//! formats and allocates per message: a debugging aid, not a mode to run
//! in production (the allocation counter then counts its lines).

use std::time::Instant;

use fuseproxy_fixtures::format::{DecisionRecord, RECORD_SYNTHESIZED};
use fuseproxy_fixtures::{Decoder, Direction, Kind, Record};
use slog::{trace, Logger};

/// The decoder and the session's start, for the `+SECONDS` column.
pub struct Trace {
    log: Logger,
    decoder: Decoder,
    start: Instant,
}

impl Trace {
    /// Starts the clock now.
    pub fn new(log: Logger) -> Trace {
        Trace {
            log,
            decoder: Decoder::native(),
            start: Instant::now(),
        }
    }

    /// A request read from /dev/fuse (`K>`).
    pub fn request_from_kernel(&mut self, msg: &[u8]) {
        self.line(Kind::RequestFromKernel, Direction::FromKernel, false, msg);
    }

    /// A request sent to the backend (`B>`): the proxy's own or one it
    /// rewrote (`synthesized`), or the kernel's as forwarded.
    pub fn request_to_backend(&mut self, msg: &[u8], synthesized: bool) {
        self.line(
            Kind::RequestToBackend,
            Direction::ToBackend,
            synthesized,
            msg,
        );
    }

    /// A reply or notification received from the backend (`B<`).
    pub fn reply_from_backend(&mut self, msg: &[u8]) {
        let kind = reply_kind(msg, Kind::ReplyFromBackend);
        self.line(kind, Direction::FromBackend, false, msg);
    }

    /// A reply or notification written to /dev/fuse (`K<`).
    pub fn reply_to_kernel(&mut self, msg: &[u8], synthesized: bool) {
        let kind = reply_kind(msg, Kind::ReplyToKernel);
        self.line(kind, Direction::ToKernel, synthesized, msg);
    }

    /// One of the engine's decisions.
    pub fn decision(&mut self, unique: u64, node: u64, code: u16, detail: u64) {
        let d = DecisionRecord {
            unique,
            nodeid: node,
            detail,
            code,
        };
        let bytes = d.to_bytes();
        self.line(Kind::Decision, Direction::Internal, false, &bytes);
    }

    fn line(&mut self, kind: Kind, direction: Direction, synthesized: bool, bytes: &[u8]) {
        let rec = Record {
            kind,
            direction,
            flags: if synthesized { RECORD_SYNTHESIZED } else { 0 },
            time_ns: self.start.elapsed().as_nanos() as u64,
            bytes,
            wire_len: bytes.len() as u32,
            offset: 0,
        };
        let msg = self.decoder.message(&rec);
        trace!(self.log, "{msg}");
    }
}

/// `reply`, or a notification when the message's unique is 0.
fn reply_kind(msg: &[u8], reply: Kind) -> Kind {
    match msg.get(8..16) {
        Some(u) if u.iter().all(|&b| b == 0) => Kind::Notification,
        _ => reply,
    }
}
