//! `--record FILE`: every message of the session, with its time, in the
//! capture format of `fixtures/FORMAT.md` (version 2), written while the
//! mount runs.
//!
//! The forwarding thread never waits for a disk and never allocates: it
//! encodes each record into a ring of `--record-size` bytes allocated (and
//! locked) at start ([`crate::ring`]), and a writer thread drains the ring
//! into the files ([`crate::record_files`]). The writer wakes every
//! [`PERIOD`] and drains what is there, so a record reaches the file (the
//! page cache: a SIGKILLed proxy loses nothing written) at most about that
//! long after it was made; the loop unparks it early only when the ring
//! passes half full, one futex wake per half ring at most, never one per
//! record.
//!
//! A record that does not fit the free space is dropped and counted; the
//! next record that fits is preceded by a gap record with the count, so the
//! file says where records are missing and how many, and the end record
//! (and the log) says how many in all. FILE is created at start, mode 0600,
//! so that a bad path fails before anything is mounted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuseproxy_fixtures::format::{
    emit_gap, pad8, DecisionRecord, DECISION_RECORD_LEN, GAP_RECORD_LEN, RECORD_HEADER_LEN,
    VERSION_GAPS,
};
use fuseproxy_fixtures::writer::plan_record;
use fuseproxy_fixtures::{Direction, Header, Kind};
use fuseproxy_protocol::abi::{InHeader, OutHeader};
use fuseproxy_protocol::{InitInView, Opcode};
use zerocopy::FromBytes;

use crate::error::Error;
use crate::record_files::{Failure, FileWriter, Names, Rotation, Summary};
use crate::ring::{self, Consumer, Producer};

/// How often the writer thread drains the ring when nobody wakes it.
pub const PERIOD: Duration = Duration::from_millis(50);

/// Smallest `--record-size`: room for a few small records.
pub const MIN_RING: usize = 4096;

/// Smallest `--record-file-size`.
pub const MIN_FILE_SIZE: u64 = 64 * 1024;

/// How long the end of the session waits for the writer to finish.
const FINISH_GRACE: Duration = Duration::from_secs(30);

/// Padding source: records are padded to 8 bytes.
const ZEROS: [u8; 8] = [0; 8];

/// State shared by the loop's side and the writer thread, all atomics.
#[derive(Default)]
pub struct Control {
    /// Set (release) by the loop after its last push: the writer drains
    /// the ring, ends the file and exits.
    pub closing: AtomicBool,
    /// Drops after the last gap the loop wrote, handed over at close.
    pub unreported: AtomicU64,
    /// The kernel's protocol `major << 32 | minor` from INIT; 0 unknown.
    pub protocol: AtomicU64,
    /// The writer stopped on an error: its errno (-1 if none) ...
    pub failed_errno: AtomicI32,
    /// ... and the file it concerned; `failed` is set last (release).
    pub failed_seq: AtomicU64,
    /// See `failed_errno`.
    pub failed: AtomicBool,
}

/// The capture of one session: the loop's side of the ring, and the
/// writer thread once started.
///
/// Lifecycle: [`create`](Self::create) before the mount (creates FILE);
/// [`start`](Self::start) when the session begins; the record methods
/// while it runs; [`finish`](Self::finish) at its end. Dropped before
/// `start`, it removes FILE.
pub struct Recorder {
    path: PathBuf,
    ring: Producer,
    ctl: Arc<Control>,
    start: Instant,
    big_endian: bool,
    snaplen: Option<usize>,
    /// The kernel's INIT has set the protocol version.
    saw_init: bool,
    /// Records pushed, and dropped, in all; dropped since the last gap.
    records: u64,
    dropped: u64,
    unreported: u64,
    /// Ring bytes filled after the previous push, to wake the writer when
    /// the ring passes half full.
    last_fill: usize,
    /// Until `start`: the writer's half, waiting for its thread.
    idle: Option<(FileWriter, Consumer)>,
    thread: Option<JoinHandle<Result<Summary, Failure>>>,
    /// Names of the files, for messages.
    names: Names,
    /// The writer's failure has been reported by `failure`.
    failure_told: bool,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.idle.is_some() {
            // Never started: the session never began.
            let _ = std::fs::remove_file(&self.path);
        } else if self.thread.is_some() {
            // Not finished (an error path): let the writer end the file.
            self.close();
            let _ = self.wait(Duration::from_secs(2));
        }
    }
}

/// What a finished capture holds.
pub struct Written {
    /// Records in the files.
    pub records: u64,
    /// Records dropped because the ring was full.
    pub dropped: u64,
    /// Bytes written to the files (deleted ones included).
    pub bytes: u64,
    /// Names of the first and last files kept, when there are several.
    pub files: Option<(String, String)>,
    /// Old files that could not be deleted.
    pub undeleted: u64,
}

impl Recorder {
    /// Creates (or truncates) `path`, mode 0600, with the file header, and a
    /// ring of `size` bytes; `snaplen` keeps at most that many bytes of each
    /// message (never less than its FUSE header); `rotation` splits the
    /// capture into files. `note` says how the capture was made.
    ///
    /// # Errors
    /// A usage error naming the option: a ring below [`MIN_RING`], a file
    /// size below [`MIN_FILE_SIZE`], a path that cannot be created.
    pub fn create(
        path: &Path,
        size: usize,
        snaplen: Option<usize>,
        note: &str,
        rotation: Option<Rotation>,
    ) -> Result<Recorder, Error> {
        if size < MIN_RING {
            return Err(Error::Usage(format!(
                "--record-size {size}: the ring needs at least {MIN_RING} bytes"
            )));
        }
        if let Some(r) = rotation {
            if r.file_size < MIN_FILE_SIZE {
                return Err(Error::Usage(format!(
                    "--record-file-size {}: files need at least {MIN_FILE_SIZE} bytes",
                    r.file_size
                )));
            }
        }
        let created_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        let header = Header {
            created_unix_ns,
            ..Header::new(note)
        };
        let mut bytes = vec![0u8; header.encoded_len()];
        header
            .emit(VERSION_GAPS, &mut bytes)
            .map_err(|e| Error::Usage(format!("--record {}: {e}", path.display())))?;
        let (producer, consumer) = ring::ring(size);
        // Last: every error before this one leaves no file behind.
        let writer = FileWriter::create(path, bytes, rotation)
            .map_err(|e| Error::Usage(format!("--record {}: {e}", path.display())))?;
        Ok(Recorder {
            path: path.to_path_buf(),
            ring: producer,
            ctl: Arc::new(Control {
                failed_errno: AtomicI32::new(-1),
                ..Control::default()
            }),
            start: Instant::now(),
            big_endian: header.big_endian,
            snaplen,
            saw_init: false,
            records: 0,
            dropped: 0,
            unreported: 0,
            last_fill: 0,
            names: Names::new(path),
            idle: Some((writer, consumer)),
            thread: None,
            failure_told: false,
        })
    }

    /// Starts the writer thread; `wake` is called if it stops on an error,
    /// so that the loop reports it ([`failure`](Self::failure)).
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(&mut self, wake: impl Fn() + Send + 'static) -> std::io::Result<()> {
        let Some((writer, consumer)) = self.idle.take() else {
            return Ok(());
        };
        let ctl = Arc::clone(&self.ctl);
        let thread = crate::threads::spawn_started(
            std::thread::Builder::new()
                .name("record-writer".into())
                // mlockall locks its stack too; writes need little.
                .stack_size(128 * 1024),
            move || {
                let r = writer.run(consumer, &ctl, PERIOD);
                if let Err(f) = &r {
                    ctl.failed_errno
                        .store(f.error.raw_os_error().unwrap_or(-1), Ordering::Relaxed);
                    ctl.failed_seq.store(f.seq, Ordering::Relaxed);
                    ctl.failed.store(true, Ordering::Release);
                    wake();
                }
                r
            },
        )?;
        self.thread = Some(thread);
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A request read from `/dev/fuse`, before the engine sees (or rewrites) it.
    pub fn request_from_kernel(&mut self, msg: &[u8]) {
        if !self.saw_init && opcode(msg) == Some(Opcode::Init) {
            let body = msg.get(size_of::<InHeader>()..).unwrap_or_default();
            if let Ok(init) = InitInView::parse(body) {
                let p = u64::from(init.major()) << 32 | u64::from(init.minor());
                self.ctl.protocol.store(p, Ordering::Release);
                self.saw_init = true;
            }
        }
        self.push(Kind::RequestFromKernel, Direction::FromKernel, false, msg);
    }

    /// A request sent to the backend that is not the kernel's as read: one
    /// the engine rewrote (`synthesized` false) or made (`true`).
    pub fn request_to_backend(&mut self, msg: &[u8], synthesized: bool) {
        self.push(
            Kind::RequestToBackend,
            Direction::ToBackend,
            synthesized,
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
        self.push(kind, direction, synthesized, msg);
    }

    /// A decision the engine took about the message with `unique` (a
    /// decision record, kind 7: see `fuseproxy_policies::DecisionKind` for
    /// the codes). Like every record it may be dropped when the ring is
    /// full. No allocation, no wait.
    pub fn decision(&mut self, unique: u64, nodeid: u64, code: u16, detail: u64) {
        let t = self.now_ns();
        let mut rec = [0u8; DECISION_RECORD_LEN];
        DecisionRecord {
            unique,
            nodeid,
            detail,
            code,
        }
        .emit(&mut rec, t);
        let pushed = self.push_parts(t, [&rec, &[], &[]]);
        self.pushed(pushed);
    }

    /// Pushes one record's parts, after a gap record if records were
    /// dropped since the last one; `false` if the ring has no room.
    fn push_parts(&mut self, t: u64, parts: [&[u8]; 3]) -> bool {
        if self.unreported > 0 {
            let mut gap = [0u8; GAP_RECORD_LEN];
            emit_gap(&mut gap, t, self.unreported);
            self.ring.push(&[&gap, parts[0], parts[1], parts[2]])
        } else {
            self.ring.push(&parts)
        }
    }

    /// Encodes one record into the ring, after a gap record if records were
    /// dropped since the last one; or counts it dropped. No allocation, no
    /// wait.
    fn push(&mut self, kind: Kind, direction: Direction, synthesized: bool, msg: &[u8]) {
        let t = self.now_ns();
        let planned = plan_record(
            kind,
            direction,
            synthesized,
            t,
            msg,
            self.big_endian,
            self.snaplen,
        );
        let pushed = planned.is_some_and(|(h, stored)| {
            let mut head = [0u8; RECORD_HEADER_LEN];
            h.emit(&mut head);
            let len = h.record_len as usize;
            let pad = &ZEROS[..pad8(len).unwrap_or(len) - len];
            self.push_parts(t, [&head, stored, pad])
        });
        self.pushed(pushed);
    }

    /// Counts a record pushed or dropped, and wakes the writer when the
    /// ring passes half full.
    fn pushed(&mut self, pushed: bool) {
        if pushed {
            self.records += 1;
            self.unreported = 0;
        } else {
            self.dropped += 1;
            self.unreported += 1;
        }
        let half = self.ring.capacity() / 2;
        let fill = self.ring.filled();
        if fill >= half && self.last_fill < half {
            if let Some(t) = self.thread.as_ref() {
                // A futex wake only if the writer is parked.
                t.thread().unpark();
            }
        }
        self.last_fill = fill;
    }

    /// Records pushed into the ring so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Records dropped so far because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Once, after the writer thread stopped on an error: what to log.
    pub fn failure(&mut self) -> Option<String> {
        if self.failure_told || !self.ctl.failed.load(Ordering::Acquire) {
            return None;
        }
        self.failure_told = true;
        let errno = self.ctl.failed_errno.load(Ordering::Relaxed);
        let seq = self.ctl.failed_seq.load(Ordering::Relaxed);
        Some(format!(
            "writing --record {} failed: {}; the rest of the session is not recorded",
            self.names.show(seq),
            std::io::Error::from_raw_os_error(errno)
        ))
    }

    fn close(&mut self) {
        self.ctl
            .unreported
            .store(self.unreported, Ordering::Release);
        self.ctl.closing.store(true, Ordering::Release);
        if let Some(t) = self.thread.as_ref() {
            t.thread().unpark();
        }
    }

    /// Waits up to `bound` for the writer thread to end.
    fn wait(&mut self, bound: Duration) -> Option<std::thread::Result<Result<Summary, Failure>>> {
        let until = Instant::now() + bound;
        let t = self.thread.as_ref()?;
        while !t.is_finished() {
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.thread.take().map(JoinHandle::join)
    }

    /// Ends the capture: the writer drains the ring, writes the drops not
    /// yet in a gap record and the end record, syncs, and exits.
    ///
    /// # Errors
    /// The writer's I/O error, naming the file; or a writer still busy
    /// after 30 s (the file is then left cut short).
    pub fn finish(mut self) -> Result<Written, Error> {
        if let Some((writer, consumer)) = self.idle.take() {
            // Never started (no session): finish on this thread.
            self.close();
            let r = writer.run(consumer, &self.ctl, PERIOD);
            return self.written(r);
        }
        self.close();
        match self.wait(FINISH_GRACE) {
            Some(Ok(r)) => self.written(r),
            Some(Err(_)) => Err(Error::Setup(format!(
                "the --record writer for {} panicked",
                self.path.display()
            ))),
            None => Err(Error::Setup(format!(
                "writing --record {}: still writing after {}s; the capture is cut short there",
                self.path.display(),
                FINISH_GRACE.as_secs()
            ))),
        }
    }

    fn written(&self, r: Result<Summary, Failure>) -> Result<Written, Error> {
        match r {
            Ok(s) => Ok(Written {
                records: s.records,
                dropped: self.dropped,
                bytes: s.bytes,
                files: (s.last > 0).then(|| (self.names.show(s.first), self.names.show(s.last))),
                undeleted: s.undeleted,
            }),
            Err(f) => Err(Error::Setup(format!(
                "writing --record {}: {}",
                self.names.show(f.seq),
                f.error
            ))),
        }
    }

    /// The file being recorded to (the first, with rotation).
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
/// back), so that the capture shows what the backend got too. After a
/// restart of the backend (`restarted`) every request may have been: its
/// ids are translated into the new backend's.
pub fn may_be_rewritten(msg: &[u8], restarted: bool) -> bool {
    restarted || matches!(opcode(msg), Some(Opcode::Init | Opcode::BatchForget))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuseproxy_fixtures::{End, Reader};

    fn request(len: usize) -> Vec<u8> {
        let mut m = vec![0u8; len];
        m[..4].copy_from_slice(&(len as u32).to_ne_bytes());
        m
    }

    /// The engine's decision codes and the capture tools' table are one
    /// table: same codes, same names, same error answers.
    #[test]
    fn decision_codes_agree_with_the_capture_tools() {
        use fuseproxy_fixtures::decision;
        use fuseproxy_policies::DecisionKind;
        for k in DecisionKind::ALL {
            assert_eq!(decision::name(k.code()), Some(k.name()), "{k:?}");
            assert_eq!(decision::is_error_answer(k.code()), k.is_error_answer());
        }
        assert_eq!(decision::CODES.len(), DecisionKind::ALL.len());
    }

    /// Decisions are records of kind 7 in the file, after a gap if one is
    /// due.
    #[test]
    fn decisions_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.fcap");
        let mut r = Recorder::create(&path, MIN_RING, None, "test", None).unwrap();
        r.request_from_kernel(&request(40));
        r.decision(2, 5, 1, 0);
        r.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut reader = Reader::new(&bytes).unwrap();
        assert!(reader.next().unwrap().is_some());
        let rec = reader.next().unwrap().unwrap();
        assert_eq!(rec.kind, Kind::Decision);
        assert_eq!(
            DecisionRecord::read(rec.bytes),
            Some(DecisionRecord {
                unique: 2,
                nodeid: 5,
                detail: 0,
                code: 1
            })
        );
        assert_eq!(reader.next(), Ok(None));
    }

    /// A ring too small for the traffic drops records, marks each gap,
    /// and the file says so; then the counts all agree.
    #[test]
    fn drops_are_gaps_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.fcap");
        let mut r = Recorder::create(&path, MIN_RING, None, "test", None).unwrap();
        // Before the writer starts: 3 records of 16 + 1024 bytes fit the
        // 4 KiB ring, the next 3 do not.
        for _ in 0..6 {
            r.request_from_kernel(&request(1024));
        }
        assert_eq!((r.records(), r.dropped()), (3, 3));
        r.start(|| {}).unwrap();
        std::thread::sleep(PERIOD * 4);
        r.request_from_kernel(&request(40));
        // Dropped again, and never followed by a record: the writer puts
        // their gap before the end record.
        for _ in 0..2 {
            r.request_from_kernel(&request(8192));
        }
        let dropped = r.dropped();
        assert_eq!(dropped, 5);
        let w = r.finish().unwrap();
        assert_eq!(w.dropped, dropped);
        let bytes = std::fs::read(&path).unwrap();
        let mut reader = Reader::new(&bytes).unwrap();
        let mut n = 0;
        while reader.next().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(reader.dropped(), dropped);
        assert_eq!(
            reader.end(),
            Some(End::Complete {
                records: n,
                dropped
            })
        );
        assert_eq!(n, w.records);
    }
}
