//! `--record FILE`: every message of the session, with its time, in the
//! capture format of `fixtures/FORMAT.md`.
//!
//! Records go into one buffer allocated (and so locked) at start; a record
//! that does not fit is counted as dropped, and so is every later one, so
//! that the file holds an exact prefix of the session and says how much is
//! missing. The loop never waits for a disk: the buffer is written to FILE
//! when the session ends, after the unmount, when nothing waits on the
//! proxy any more. FILE is created at start, so that a bad path fails
//! before anything is mounted.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fuseproxy_fixtures::format::END_RECORD_LEN;
use fuseproxy_fixtures::{Direction, Header, Kind, Writer};
use fuseproxy_protocol::abi::{InHeader, OutHeader};
use fuseproxy_protocol::{InitInView, Opcode};
use zerocopy::FromBytes;

use crate::error::Error;

/// The capture of one session, until it is written.
pub struct Recorder {
    path: PathBuf,
    file: File,
    writer: Writer<Vec<u8>>,
    start: Instant,
    /// The kernel's INIT has set the header's protocol version.
    saw_init: bool,
    /// Written: the file stays. A recorder dropped before (the session
    /// never started) removes the empty file it created.
    written: bool,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.written {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What a written capture holds.
pub struct Written {
    /// Records in the file.
    pub records: u64,
    /// Records that did not fit the buffer (the tail of the session).
    pub dropped: u64,
    /// Bytes of the file.
    pub bytes: usize,
}

impl Recorder {
    /// Creates (or truncates) `path` and a buffer of `size` bytes; `snaplen`
    /// keeps at most that many bytes of each message (never less than its
    /// FUSE header). `note` says how the capture was made.
    pub fn create(
        path: &Path,
        size: usize,
        snaplen: Option<usize>,
        note: &str,
    ) -> Result<Recorder, Error> {
        let created_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        let header = Header {
            created_unix_ns,
            ..Header::new(note)
        };
        let mut writer = Writer::with_capacity(size, &header)
            .map_err(|e| Error::Usage(format!("--record-size {size}: {e}")))?;
        writer.set_snaplen(snaplen);
        // Last: every error before this one leaves no file behind.
        let file = File::create(path)
            .map_err(|e| Error::Usage(format!("--record {}: {e}", path.display())))?;
        Ok(Recorder {
            path: path.to_path_buf(),
            file,
            writer,
            start: Instant::now(),
            saw_init: false,
            written: false,
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A request read from `/dev/fuse`, before the engine sees (or rewrites) it.
    pub fn request_from_kernel(&mut self, msg: &[u8]) {
        if !self.saw_init && opcode(msg) == Some(Opcode::Init) {
            let body = msg.get(size_of::<InHeader>()..).unwrap_or_default();
            if let Ok(init) = InitInView::parse(body) {
                self.writer.set_protocol(init.major(), init.minor());
                self.saw_init = true;
            }
        }
        let t = self.now_ns();
        self.writer.push_with(
            Kind::RequestFromKernel,
            Direction::FromKernel,
            false,
            t,
            msg,
        );
    }

    /// A request sent to the backend that is not the kernel's as read: one
    /// the engine rewrote (`synthesized` false) or made (`true`).
    pub fn request_to_backend(&mut self, msg: &[u8], synthesized: bool) {
        let t = self.now_ns();
        self.writer.push_with(
            Kind::RequestToBackend,
            Direction::ToBackend,
            synthesized,
            t,
            msg,
        );
    }

    /// A reply or notification received from the backend, as received.
    pub fn reply_from_backend(&mut self, msg: &[u8]) {
        self.reply(msg, Direction::FromBackend, Kind::ReplyFromBackend, false);
    }

    /// A reply or notification written to `/dev/fuse`; `synthesized` when
    /// the proxy made it (a local answer, an EIO of its own).
    pub fn reply_to_kernel(&mut self, msg: &[u8], synthesized: bool) {
        self.reply(msg, Direction::ToKernel, Kind::ReplyToKernel, synthesized);
    }

    fn reply(&mut self, msg: &[u8], direction: Direction, kind: Kind, synthesized: bool) {
        let notification = OutHeader::read_from_prefix(msg).is_ok_and(|(h, _)| h.unique == 0);
        let kind = if notification {
            Kind::Notification
        } else {
            kind
        };
        let t = self.now_ns();
        self.writer.push_with(kind, direction, synthesized, t, msg);
    }

    /// Writes the capture to its file.
    pub fn finish(mut self) -> Result<Written, Error> {
        let (records, dropped) = (self.writer.records(), self.writer.dropped());
        // Whatever happens now, what reached the file stays.
        self.written = true;
        let len = self.writer.as_partial().len() + END_RECORD_LEN;
        self.writer
            .write_to(&mut self.file)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::Setup(format!("writing --record {}: {e}", self.path.display())))?;
        Ok(Written {
            records,
            dropped,
            bytes: len,
        })
    }

    /// The file being recorded to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn opcode(msg: &[u8]) -> Option<Opcode> {
    let (h, _) = InHeader::read_from_prefix(msg).ok()?;
    Some(Opcode::from(h.opcode))
}

/// Whether the engine may have rewritten a request of this opcode in place
/// before forwarding it (the INIT offer, a BATCH_FORGET with entries held
/// back), so that the capture shows what the backend got too.
pub fn may_be_rewritten(msg: &[u8]) -> bool {
    matches!(opcode(msg), Some(Opcode::Init | Opcode::BatchForget))
}
