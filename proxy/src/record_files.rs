//! The files of `--record`, written by the recorder's writer thread: their
//! names, their creation (mode 0600: they hold file contents), and
//! rotation at `--record-file-size` keeping at most `--record-files`.
//!
//! Names: FILE is the first file; when it is full the next is FILE.1, then
//! FILE.2, and so on, numbers only growing, so the newest file has the
//! highest number and a reader never sees a name change meaning. With a
//! limit of N files, beginning file k deletes file k - N (FILE for 0).
//! (tcpdump's -C/-W instead reuse names in a cycle, which leaves the order
//! to the files' times.)
//!
//! Each file is a capture of its own: the header, its records, and an end
//! record counting its records and drops, written (and synced) when the
//! next file begins or the session ends. A file stops short of
//! `--record-file-size` at a record boundary, its end record included,
//! unless a single record is larger than that (it then has a file to
//! itself).
//!
//! Nothing here allocates after [`FileWriter::create`]: names are built in
//! a buffer reserved there (std copies a path below 384 bytes to the stack
//! to make its C string; a longer FILE costs an allocation per rotation),
//! and I/O errors from the kernel carry only their errno.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use fuseproxy_fixtures::format::{
    emit_end, emit_gap, pad8, read_gap, RawFileHeader, RawRecordHeader, END_RECORD_LEN,
    GAP_RECORD_LEN, KIND_GAP, RECORD_HEADER_LEN,
};

use crate::recorder::Control;
use crate::ring::Consumer;

/// Mode of every capture file: owner only.
pub const MODE: u32 = 0o600;

/// `--record-file-size` and `--record-files`.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Bytes a file may reach, its end record included.
    pub file_size: u64,
    /// Files kept at most; `None` keeps them all.
    pub files: Option<u64>,
}

/// FILE, FILE.1, FILE.2 ... built without allocating.
pub struct Names {
    base: Vec<u8>,
    /// INVARIANT: capacity `base.len() + 21`, room for "." and any `u64`.
    scratch: Vec<u8>,
}

impl Names {
    /// Names derived from `path`.
    pub fn new(path: &Path) -> Names {
        let base = path.as_os_str().as_bytes().to_vec();
        let scratch = Vec::with_capacity(base.len() + 21);
        Names { base, scratch }
    }

    /// The name of file number `seq`.
    pub fn get(&mut self, seq: u64) -> &Path {
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.base);
        if seq > 0 {
            // Within the reserved capacity: no reallocation.
            let _ = write!(self.scratch, ".{seq}");
        }
        Path::new(OsStr::from_bytes(&self.scratch))
    }

    /// The name of file number `seq`, for a message (allocates).
    pub fn show(&self, seq: u64) -> String {
        let base = Path::new(OsStr::from_bytes(&self.base)).display();
        if seq == 0 {
            base.to_string()
        } else {
            format!("{base}.{seq}")
        }
    }
}

/// Creates (or truncates) a capture file, mode 0600 whatever it was.
fn create(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(MODE)
        .open(path)?;
    // An existing file keeps its mode through O_TRUNC.
    file.set_permissions(Permissions::from_mode(MODE))?;
    Ok(file)
}

/// What the writer thread wrote, once it has ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Records written, in all files, gap records not counted.
    pub records: u64,
    /// Records the gap records say were dropped.
    pub dropped: u64,
    /// Bytes written, in all files (deleted ones included).
    pub bytes: u64,
    /// Numbers of the first and last files on disk.
    pub first: u64,
    /// See `first`.
    pub last: u64,
    /// Old files that could not be deleted.
    pub undeleted: u64,
}

/// Why the writer thread stopped before the end: an I/O error and the
/// number of the file it concerned.
#[derive(Debug)]
pub struct Failure {
    /// The error.
    pub error: io::Error,
    /// Number of the file (see [`Names`]).
    pub seq: u64,
}

/// The file being written and the bookkeeping for its end record.
///
/// Lifecycle: [`create`](Self::create) on the main thread (the first
/// file, with its header, so that a bad path fails before the mount), then
/// [`run`](Self::run) on the writer thread until the recorder closes.
pub struct FileWriter {
    names: Names,
    rotation: Option<Rotation>,
    /// The file header as this session writes it (note, protocol once
    /// known); each file gets a copy with its own creation time.
    header: Vec<u8>,
    file: File,
    /// Number of the current file; `oldest` of the first one on disk.
    seq: u64,
    oldest: u64,
    /// This file: bytes written, records, drops, time of the last record,
    /// and whether its header has the protocol yet.
    bytes: u64,
    records: u64,
    dropped: u64,
    last_time_ns: u64,
    has_protocol: bool,
    total: Summary,
}

impl FileWriter {
    /// Creates the first file (FILE) and writes `header` to it.
    ///
    /// # Errors
    /// When the file cannot be created or written.
    pub fn create(
        path: &Path,
        header: Vec<u8>,
        rotation: Option<Rotation>,
    ) -> io::Result<FileWriter> {
        let mut names = Names::new(path);
        let mut file = create(names.get(0))?;
        file.write_all(&header)?;
        let bytes = header.len() as u64;
        Ok(FileWriter {
            names,
            rotation,
            header,
            file,
            seq: 0,
            oldest: 0,
            bytes,
            records: 0,
            dropped: 0,
            last_time_ns: 0,
            has_protocol: false,
            total: Summary {
                bytes,
                ..Summary::default()
            },
        })
    }

    /// Drains `ring` into the files every `period`, or sooner when
    /// unparked, until `ctl` says the recorder is closing; then writes what
    /// is left, the drops not yet in a gap record, and the end record.
    ///
    /// # Errors
    /// The first I/O error, with the file it concerned: the thread stops
    /// there and the ring fills up (the recorder counts the drops).
    pub fn run(
        mut self,
        mut ring: Consumer,
        ctl: &Control,
        period: std::time::Duration,
    ) -> Result<Summary, Failure> {
        loop {
            // Read before draining: whatever was pushed before the close
            // is then drained below.
            let closing = ctl.closing.load(Ordering::Acquire);
            self.drain(&mut ring, ctl).map_err(|e| self.failure(e))?;
            if closing {
                let unreported = ctl.unreported.load(Ordering::Acquire);
                let seq = self.seq;
                return self
                    .finish(unreported)
                    .map_err(|error| Failure { error, seq });
            }
            std::thread::park_timeout(period);
        }
    }

    fn failure(&self, error: io::Error) -> Failure {
        Failure {
            error,
            seq: self.seq,
        }
    }

    /// Writes every whole record published, beginning new files as they
    /// fill.
    fn drain(&mut self, ring: &mut Consumer, ctl: &Control) -> io::Result<()> {
        self.write_protocol(ctl)?;
        loop {
            let avail = ring.len();
            if avail == 0 {
                return Ok(());
            }
            let mut n = 0;
            let mut full = false;
            while n < avail {
                let mut h = [0u8; GAP_RECORD_LEN];
                ring.peek(n, &mut h[..RECORD_HEADER_LEN]);
                let rh = RawRecordHeader::read(&h);
                let len = pad8(rh.record_len as usize).unwrap_or(usize::MAX);
                // The recorder pushes whole records only (ring::push is
                // all or nothing), each at least a header long.
                assert!(
                    len >= RECORD_HEADER_LEN && len <= avail - n,
                    "a record of {len} bytes at {n} of {avail} in the ring"
                );
                if let Some(r) = self.rotation {
                    let used = self.bytes + n as u64;
                    let has_record = used > self.header.len() as u64;
                    if has_record && used + (len + END_RECORD_LEN) as u64 > r.file_size {
                        full = true;
                        break;
                    }
                }
                if rh.kind == KIND_GAP {
                    ring.peek(n, &mut h);
                    self.dropped += read_gap(&h);
                } else {
                    self.records += 1;
                }
                self.last_time_ns = rh.time_ns;
                n += len;
            }
            if n > 0 {
                let (a, b) = ring.slices(n);
                self.file.write_all(a)?;
                self.file.write_all(b)?;
                ring.consume(n);
                self.bytes += n as u64;
                self.total.bytes += n as u64;
            }
            if full {
                self.next_file()?;
                self.write_protocol(ctl)?;
            }
        }
    }

    /// Puts the kernel's protocol version into the current file's header
    /// once the recorder has seen INIT.
    fn write_protocol(&mut self, ctl: &Control) -> io::Result<()> {
        if self.has_protocol {
            return Ok(());
        }
        let p = ctl.protocol.load(Ordering::Acquire);
        if p == 0 {
            return Ok(());
        }
        RawFileHeader::emit_protocol(&mut self.header, (p >> 32) as u32, p as u32);
        let range = RawFileHeader::PROTOCOL_RANGE;
        self.file
            .write_all_at(&self.header[range.clone()], range.start as u64)?;
        self.has_protocol = true;
        Ok(())
    }

    /// Ends the current file and begins the next, deleting the oldest
    /// beyond the limit first.
    fn next_file(&mut self) -> io::Result<()> {
        self.end_file()?;
        self.seq += 1;
        if let Some(max) = self.rotation.and_then(|r| r.files) {
            while self.seq - self.oldest + 1 > max {
                match std::fs::remove_file(self.names.get(self.oldest)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(_) => self.total.undeleted += 1,
                }
                self.oldest += 1;
            }
        }
        self.file = create(self.names.get(self.seq))?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
        RawFileHeader::emit_created(&mut self.header, created);
        self.file.write_all(&self.header)?;
        self.bytes = self.header.len() as u64;
        self.total.bytes += self.bytes;
        self.records = 0;
        self.dropped = 0;
        // The template has it if it was known.
        self.has_protocol = RawFileHeader::read(&self.header).proto_major != 0;
        Ok(())
    }

    /// Writes the current file's end record and syncs it.
    fn end_file(&mut self) -> io::Result<()> {
        let mut end = [0u8; END_RECORD_LEN];
        emit_end(&mut end, self.last_time_ns, self.records, self.dropped);
        self.file.write_all(&end)?;
        self.file.sync_all()?;
        self.bytes += END_RECORD_LEN as u64;
        self.total.bytes += END_RECORD_LEN as u64;
        self.total.records += self.records;
        self.total.dropped += self.dropped;
        Ok(())
    }

    /// The last file: a gap record for `unreported` drops after the last
    /// record, then its end record.
    fn finish(mut self, unreported: u64) -> io::Result<Summary> {
        if unreported > 0 {
            let mut gap = [0u8; GAP_RECORD_LEN];
            emit_gap(&mut gap, self.last_time_ns, unreported);
            self.file.write_all(&gap)?;
            self.bytes += GAP_RECORD_LEN as u64;
            self.total.bytes += GAP_RECORD_LEN as u64;
            self.dropped += unreported;
        }
        self.end_file()?;
        self.total.first = self.oldest;
        self.total.last = self.seq;
        Ok(self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_count_up_from_the_file_itself() {
        let mut n = Names::new(Path::new("/tmp/s.fcap"));
        assert_eq!(n.get(0), Path::new("/tmp/s.fcap"));
        assert_eq!(n.get(12), Path::new("/tmp/s.fcap.12"));
        let cap = n.scratch.capacity();
        assert_eq!(
            n.get(u64::MAX),
            Path::new("/tmp/s.fcap.18446744073709551615")
        );
        assert_eq!(n.scratch.capacity(), cap, "no reallocation");
        assert_eq!(n.show(3), "/tmp/s.fcap.3");
    }
}
