//! FUSE-over-io_uring toward the kernel: the transport that replaces
//! `read(2)`/`write(2)` on `/dev/fuse` for ordinary requests once INIT has
//! accepted `FUSE_OVER_IO_URING`.
//!
//! [`KernelRing`] owns one io_uring and every ring entry of the connection.
//! It hands out requests in the `/dev/fuse` wire format and takes replies in
//! that format, so the rest of the proxy sees the same bytes whichever
//! transport carried them ([`fuseproxy_protocol::uring`] does the
//! conversion). It does no policy and knows no backend. The kernel behaviour
//! it relies on is set out below, each fact with the kernel function it
//! comes from (`fs/fuse/dev_uring.c` unless named otherwise, Linux 6.14 to
//! 6.18).
//!
//! # Setting up
//! - The module parameter `enable_uring` (`/sys/module/fuse/parameters/`)
//!   must be on when the kernel reads the INIT reply: `process_init_reply`
//!   (`fs/fuse/inode.c`) sets `fc->io_uring` only if the reply's flags (bit
//!   41, i.e. `flags2` bit 9 with `FUSE_INIT_EXT`) carry `FUSE_OVER_IO_URING`
//!   and `fuse_uring_enabled()`. A command on a connection without
//!   `fc->io_uring` while the parameter is off fails with EOPNOTSUPP
//!   (`fuse_uring_cmd`); once INIT has enabled it, turning the parameter off
//!   does not affect the connection.
//! - Commands are `IORING_OP_URING_CMD` on the `/dev/fuse` fd with a
//!   `fuse_uring_cmd_req` in the SQE's 80-byte command area, so the ring
//!   must be created with `IORING_SETUP_SQE128` (`fuse_uring_cmd`: EINVAL
//!   otherwise). They are refused with EAGAIN until INIT has been answered
//!   (`fc->initialized`), ECONNABORTED on an aborted connection and ENOTCONN
//!   on a disconnected one.
//! - REGISTER takes an iovec array of exactly two elements in
//!   `sqe->addr`/`sqe->len` (`fuse_uring_get_iovec_from_sqe`): the header
//!   buffer (at least 288 bytes) and the payload buffer, at least
//!   `max(FUSE_MIN_READ_BUFFER, max_write, max_pages * PAGE_SIZE)` bytes
//!   (`fuse_uring_create`, `fuse_uring_create_ring_ent`; see
//!   [`fuseproxy_protocol::uring::ring_payload_size`]). The kernel keeps the
//!   two user addresses for the life of the connection.
//!
//! # Queues, and when the ring is ready
//! - There is one queue per *possible* CPU: `nr_queues =
//!   num_possible_cpus()` (`fuse_uring_create`), which is the count in
//!   `/sys/devices/system/cpu/possible` ([`queue_count`]), not the online or
//!   affinity count. A `qid` at or above it is refused with EINVAL.
//! - A request goes to the queue of the CPU its caller runs on at that
//!   moment, `task_cpu(current)` (`fuse_uring_task_to_queue`, for
//!   foreground and background requests alike). No queue takes over from
//!   another: a queue's requests wait for that queue's entries.
//! - The ring becomes ready when every queue has at least one registered
//!   entry (`is_ring_ready`, checked at each REGISTER by
//!   `fuse_uring_do_register`); the connection's queue operations then switch
//!   to `fuse_io_uring_ops`. From INIT until then, new requests *block*
//!   (`fuse_block_alloc` in `fs/fuse/dev.c`: `fc->io_uring && fc->connected
//!   && !fuse_uring_ready(fc)`). A failed REGISTER clears `fc->io_uring` and
//!   wakes them, and the connection goes on over `/dev/fuse`
//!   (`fuse_uring_cmd`). The tests check the blocking: with one queue of
//!   two registered, a stat reaches neither the ring nor the device.
//!
//! # What still uses `/dev/fuse`
//! `fuse_io_uring_ops` sends only ordinary requests through the ring
//! (`send_req = fuse_uring_queue_fuse_req`): FORGET and BATCH_FORGET
//! (`send_forget = fuse_dev_queue_forget`) and INTERRUPT (`send_interrupt =
//! fuse_dev_queue_interrupt`) are still read from `/dev/fuse`, and so is a
//! request queued there before the ring became ready. In the other
//! direction, notifications (unique 0) and replies to INTERRUPT must be
//! written to `/dev/fuse`: a commit with unique 0 fails the request with
//! EINVAL ("notify through fuse-io-uring not supported",
//! `fuse_uring_out_header_has_err`). NOTIFY_REPLY, the kernel's answer to a
//! RETRIEVE, is an ordinary request and comes through the ring. So a proxy
//! using the ring keeps reading and writing `/dev/fuse` as well.
//!
//! # Lengths
//! The kernel puts the in-header and the first argument (the op struct) in
//! the header buffer and the other arguments in the payload, and writes
//! `payload_sz`; the op struct's length is `len - 40 - payload_sz`, `len`
//! being the in-header's, which counts every argument as on `/dev/fuse`
//! (`fuse_uring_args_to_ring`, `fuse_send_one`). A reply's body length is
//! the `payload_sz` the daemon writes; the out-header's `len` is not read
//! (`fuse_uring_commit`, `fuse_uring_copy_from_ring`).
//!
//! # Threads: who copies, who may commit
//! A request reaches an entry through `io_uring_cmd_complete_in_task`
//! (`fuse_uring_dispatch_ent`): the copy into the entry's buffers
//! (`fuse_uring_send_in_task`) runs as task work, in the context of the task
//! that submitted the entry's pending command (`io_req_normal_work_add`,
//! `io_uring/io_uring.c`), or with `IORING_SETUP_DEFER_TASKRUN` in the ring's
//! submitter task while it waits in `io_uring_enter` with GETEVENTS
//! (`io_req_local_work_add`). If that task is exiting, the command completes
//! with ECANCELED and the request is not copied (`IO_URING_F_TASK_DEAD`).
//! COMMIT_AND_FETCH itself checks no thread: it finds the entry by `qid` and
//! `commit_id` (`fuse_uring_commit_fetch`), so on a plain ring any thread
//! may submit it and then receives that entry's next copy as task work
//! (interrupting whatever it is blocked in). This type uses `SQE128 |
//! SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG`: every copy happens inside
//! [`KernelRing::wait`], on the thread that created the ring, and the kernel
//! refuses submissions from any other thread (EEXIST). `KernelRing` is
//! therefore not `Send`: create it on the thread that drives it.
//!
//! # The end of the connection
//! An unmount or abort tears the ring down (`fuse_abort_conn` ->
//! `fuse_uring_abort` -> `fuse_uring_stop_queues` ->
//! `fuse_uring_entry_teardown`): each entry waiting for a request completes
//! with ENOTCONN; an entry the daemon holds gets no completion (its request
//! ends with ECONNABORTED for the caller) and its later COMMIT_AND_FETCH
//! fails with ENOTCONN (`fuse_uring_commit_fetch`; the source has
//! ECONNABORTED for an aborted connection in `fuse_uring_cmd`, but after an
//! abort through fusectl 6.18 was measured returning ENOTCONN too). These
//! come out of [`KernelRing::poll_arrival`] as [`Arrival::Gone`] with a
//! [`Gone`] reason.
//! Closing the io_uring while the connection lives cancels the waiting
//! entries (`fuse_uring_cancel`, ENOTCONN) but the connection keeps using
//! the ring ("Once a connection has io-uring enabled on it, it can't be
//! disabled", `fuse_uring_cmd`): later requests queue with no entry to take
//! them until the connection is aborted. A `KernelRing` must outlive its
//! mount.
//!
//! # Memory
//! Every entry's header and payload buffer lie in one anonymous mapping
//! made, locked and touched in [`KernelRing::new`]; nothing allocates after
//! registration. INVARIANT: an entry's buffers are touched by this module
//! only while the caller holds the entry (between its arrival and its
//! commit), and by the kernel only while the entry is with the kernel. The
//! mapping outlives the ring's fd (field order), and it is leaked rather
//! than unmapped if an entry is still with the kernel when the ring is
//! dropped, so that no late kernel copy can land in reused memory.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use memmap2::MmapMut;
use zerocopy::{FromBytes, IntoBytes};

use fuseproxy_protocol::abi::{OutHeader, FUSE_MIN_READ_BUFFER};
use fuseproxy_protocol::uring::{
    reply_to_ring, request_from_ring, UringCmdReq, UringError, UringReqHeader,
    FUSE_IO_URING_CMD_COMMIT_AND_FETCH, FUSE_IO_URING_CMD_REGISTER, FUSE_URING_CMD_AREA_SZ,
    FUSE_URING_IOV_SEGS, FUSE_URING_OP_IN_OUT_SZ, FUSE_URING_REQ_HEADER_SZ,
};

/// The module parameter that allows FUSE-over-io_uring.
pub const ENABLE_URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Bytes between two entries' header buffers in the mapping: 288 rounded up
/// so that every header is 8-aligned (the mapping is page-aligned).
const HEADER_STRIDE: usize = 512;

const PAGE: usize = 4096;

/// `user_data` bit of a watch's poll (the low byte is its token, the next
/// its serial: see [`Watch`]); an entry's commands carry the entry's index,
/// always below 2^15.
const WATCH: u64 = 1 << 63;

/// `user_data` of the removal of a watch's stale poll
/// ([`KernelRing::rewatch`]): its completion reports nothing.
const UNWATCH: u64 = 1 << 62;

/// Watches at most (tokens are bits of a `u64`; the submission queue keeps
/// two slots for each beside the entries': its poll, and the removal of a
/// stale one).
pub const MAX_WATCHES: usize = 8;

/// A descriptor watched for input.
#[derive(Debug, Clone, Copy)]
struct Watch {
    /// -1: not watched.
    fd: i32,
    /// A poll is queued or with the kernel.
    armed: bool,
    multishot: bool,
    /// Counts the polls armed on other files at this number
    /// ([`KernelRing::rewatch`]): a completion of an older one is stale and
    /// re-arms nothing.
    serial: u8,
}

impl Watch {
    const NONE: Watch = Watch {
        fd: -1,
        armed: false,
        multishot: false,
        serial: 0,
    };

    /// The `user_data` of this watch's poll under `token`.
    fn user_data(&self, token: usize) -> u64 {
        WATCH | u64::from(self.serial) << 8 | token as u64
    }
}

/// Largest `fuse_in_header` + op struct in front of the payload.
const REQUEST_OVERHEAD: usize = 40 + FUSE_URING_OP_IN_OUT_SZ;

/// Where `len` sits in an SQE (`struct io_uring_sqe`: opcode, flags, ioprio,
/// fd, off, addr, then len at byte 24).
const SQE_LEN_OFFSET: usize = 24;

/// The shape of a ring: which queues, entries per queue, and payload bytes
/// per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// The first queue this ring registers entries for.
    pub first_queue: usize,
    /// Queues to register, from `first_queue`. Every queue of the kernel's
    /// count ([`queue_count`]) needs entries in some ring: until then the
    /// ring is not ready, and the connection's requests are held.
    pub queues: usize,
    /// Entries per queue: how many requests of one CPU can be with the
    /// proxy at once.
    pub depth: usize,
    /// Payload bytes per entry, at least the kernel's
    /// [`fuseproxy_protocol::uring::ring_payload_size`] for the connection.
    pub payload: usize,
}

/// An entry of the connection's rings: `qid * depth + index in queue`, the
/// same in every ring of one connection (each holds the ids of its queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId(pub u32);

/// Why the kernel gave an entry back for good: the connection is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Gone {
    /// ENOTCONN: the connection was unmounted or aborted (entry teardown,
    /// or a commit after it), or the ring was cancelled.
    NotConnected,
    /// ECONNABORTED: a command on an aborted connection (`fuse_uring_cmd`;
    /// not seen on 6.18, which answered ENOTCONN after a fusectl abort).
    Aborted,
    /// ECANCELED: the task that would have received the request is exiting.
    Canceled,
    /// ENODEV: what `read(2)` on `/dev/fuse` returns at the end; not seen
    /// from the ring in the kernel source, kept so that it reads as an end.
    NoDevice,
}

impl Gone {
    /// The reason for a negated errno, if it means the connection is gone.
    pub fn from_errno(errno: i32) -> Option<Gone> {
        match errno {
            libc::ENOTCONN => Some(Gone::NotConnected),
            libc::ECONNABORTED => Some(Gone::Aborted),
            libc::ECANCELED => Some(Gone::Canceled),
            libc::ENODEV => Some(Gone::NoDevice),
            _ => None,
        }
    }
}

/// What [`KernelRing::poll_arrival`] found.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A request, `len` bytes at the start of the caller's buffer in
    /// `/dev/fuse` wire format. The caller holds `entry` until it commits a
    /// reply with [`KernelRing::commit`].
    Request {
        /// The entry holding it.
        entry: EntryId,
        /// Bytes in the caller's buffer.
        len: usize,
    },
    /// The kernel filled `entry` in a way that does not convert (a kernel
    /// this module does not know). The caller holds the entry and should
    /// answer `unique` with an error ([`KernelRing::commit_error`]).
    Invalid {
        /// The entry.
        entry: EntryId,
        /// The request's unique (the entry's commit id).
        unique: u64,
        /// What did not fit.
        error: UringError,
    },
    /// The connection is gone; the entry is out of service.
    Gone {
        /// The entry.
        entry: EntryId,
        /// Which end.
        why: Gone,
    },
    /// A command failed for another reason (REGISTER refused, commit id
    /// unknown); the entry is out of service.
    Failed {
        /// The entry.
        entry: EntryId,
        /// The positive errno, or `-res` for an unexpected positive result.
        errno: i32,
    },
}

/// Why a ring could not be set up or driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// The configuration cannot work; the text says which bound.
    Config(&'static str),
    /// The entries' buffers could not be mapped.
    Map {
        /// Bytes asked for.
        bytes: usize,
        /// errno of mmap.
        errno: i32,
    },
    /// The `/dev/fuse` fd could not be duplicated.
    Device(i32),
    /// `io_uring_setup` failed.
    Setup(i32),
    /// The kernel refused an entry's REGISTER at once. It has cleared
    /// `fc->io_uring` and the connection goes on over `/dev/fuse`.
    Register {
        /// The entry.
        entry: EntryId,
        /// The errno (EOPNOTSUPP: parameter off; EAGAIN: INIT not answered;
        /// EINVAL: payload buffer below the kernel's size or ring without
        /// SQE128).
        errno: i32,
    },
    /// `io_uring_enter` failed.
    Enter(i32),
    /// The thread that would serve a queue could not be started.
    Thread(i32),
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RingError::Config(what) => write!(f, "bad io_uring ring configuration: {what}"),
            RingError::Map { bytes, errno } => write!(
                f,
                "cannot map {bytes} bytes for the ring's buffers: {}",
                io::Error::from_raw_os_error(errno)
            ),
            RingError::Device(errno) => write!(
                f,
                "cannot duplicate the /dev/fuse fd: {}",
                io::Error::from_raw_os_error(errno)
            ),
            RingError::Setup(errno) => write!(
                f,
                "io_uring_setup failed: {}",
                io::Error::from_raw_os_error(errno)
            ),
            RingError::Register { entry, errno } => write!(
                f,
                "FUSE_IO_URING_CMD_REGISTER of entry {} refused: {}",
                entry.0,
                io::Error::from_raw_os_error(errno)
            ),
            RingError::Enter(errno) => write!(
                f,
                "io_uring_enter failed: {}",
                io::Error::from_raw_os_error(errno)
            ),
            RingError::Thread(errno) => write!(
                f,
                "cannot start a queue's thread: {}",
                io::Error::from_raw_os_error(errno)
            ),
        }
    }
}

/// Why [`KernelRing::commit`] did not queue a reply. The entry is still held
/// and can be committed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitError {
    /// The caller does not hold this entry (never arrived, already
    /// committed, or gone).
    NotHeld(EntryId),
    /// The reply's unique is not the request's; the kernel would end the
    /// request with ENOENT.
    Unique {
        /// The request's unique.
        expected: u64,
        /// The reply's.
        got: u64,
    },
    /// The reply is malformed or too large for the entry.
    Reply(UringError),
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CommitError::NotHeld(e) => write!(f, "ring entry {} is not held", e.0),
            CommitError::Unique { expected, got } => {
                write!(
                    f,
                    "reply unique {got:#x} does not answer request {expected:#x}"
                )
            }
            CommitError::Reply(e) => e.fmt(f),
        }
    }
}

/// Where an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A command is pending; the kernel may write the buffers.
    Kernel,
    /// A request arrived; the caller owes a reply to `commit_id`.
    Held { commit_id: u64 },
    /// Out of service.
    Dead,
}

/// FUSE-over-io_uring for one connection, driven by one thread.
///
/// # Lifecycle
/// 1. Answer INIT with `FUSE_OVER_IO_URING` through `/dev/fuse`.
/// 2. [`KernelRing::new`] registers every entry of every queue.
/// 3. Loop: [`wait`](KernelRing::wait), then
///    [`poll_arrival`](KernelRing::poll_arrival) until `None`; answer each
///    [`Arrival::Request`] with [`commit`](KernelRing::commit) (sent at the
///    next `wait`). Keep serving `/dev/fuse` too (FORGET, INTERRUPT,
///    notifications; see the module doc).
/// 4. After the unmount every entry comes back as [`Arrival::Gone`] (held
///    entries once committed).
///
/// Not `Send` on purpose: the kernel copies requests in the creating
/// thread's `io_uring_enter` and refuses submissions from any other.
pub struct KernelRing {
    /// Dropped first (fields drop in order): closing it cancels the
    /// pending commands before the buffers go.
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// A duplicate of the connection's `/dev/fuse` fd, the target of every
    /// command.
    dev: OwnedFd,
    /// Owns the buffers' mapping; `None` once leaked at drop. Never
    /// dereferenced after `new`: every access goes through `base`, one held
    /// entry at a time.
    map: Option<MmapMut>,
    /// INVARIANT: the start of `map`, page-aligned, valid for reads and
    /// writes of `headers_len + entries * payload_stride` bytes while `map`
    /// is mapped. Entry `i`'s header is at `i * HEADER_STRIDE`, its payload
    /// at `headers_len + i * payload_stride` (`payload` bytes).
    base: NonNull<u8>,
    headers_len: usize,
    payload_stride: usize,
    payload: usize,
    /// REGISTER's iovec pairs, read by the kernel when it issues each
    /// REGISTER; never moved or written after `new`.
    iovecs: Box<[[libc::iovec; 2]]>,
    /// INVARIANT: `states[i]` is `Held` exactly while the caller holds entry
    /// `i`; only then are its buffers touched from here.
    states: Box<[State]>,
    /// Completions reaped and not yet polled: (entry, result). INVARIANT:
    /// capacity is the entry count, and each entry has at most one command
    /// pending, so it never grows.
    ready: VecDeque<(u32, i32)>,
    /// The global id of this ring's first entry: ids are global
    /// ([`EntryId`]), indices into `states` local.
    first: usize,
    depth: usize,
    locked: bool,
    /// Entries held (requests owed a reply).
    holding: usize,
    /// Descriptors watched for input, by token.
    watches: [Watch; MAX_WATCHES],
    /// Tokens whose descriptor became readable since the last
    /// [`KernelRing::take_woken`], as bits.
    woken: u64,
}

impl KernelRing {
    /// Whether this kernel lets this process use FUSE-over-io_uring, or a
    /// one-line reason why not.
    pub fn available() -> Result<(), String> {
        match std::fs::read_to_string(ENABLE_URING_PARAM) {
            Ok(v) if v.trim() == "Y" => {}
            Ok(v) => {
                return Err(format!(
                    "FUSE-over-io_uring is off ({ENABLE_URING_PARAM} is {}; root can write Y)",
                    v.trim()
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(if std::path::Path::new("/sys/module/fuse").exists() {
                    "this kernel has no FUSE-over-io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING)"
                        .to_string()
                } else {
                    "the fuse module is not loaded".to_string()
                })
            }
            Err(e) => return Err(format!("cannot read {ENABLE_URING_PARAM}: {e}")),
        }
        if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
            match v.trim() {
                "2" => return Err("io_uring is disabled (kernel.io_uring_disabled = 2)".into()),
                "1" if nix::unistd::geteuid().as_raw() != 0 => {
                    return Err(
                        "io_uring is restricted to kernel.io_uring_group (io_uring_disabled = 1)"
                            .into(),
                    )
                }
                _ => {}
            }
        }
        let ring = Self::builder()
            .build(1)
            .map_err(|e| format!("cannot create an io_uring with SQE128 and DEFER_TASKRUN: {e}"))?;
        let mut probe = io_uring::Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| format!("cannot probe io_uring opcodes: {e}"))?;
        if !probe.is_supported(opcode::UringCmd80::CODE) {
            return Err("io_uring has no IORING_OP_URING_CMD".into());
        }
        Ok(())
    }

    /// The ring's setup flags (see the module doc for why each).
    fn builder() -> io_uring::Builder<squeue::Entry128, cqueue::Entry> {
        let mut b = IoUring::<squeue::Entry128, cqueue::Entry>::builder();
        b.setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag();
        b
    }

    /// Creates the ring on the calling thread, maps and locks the buffers,
    /// and registers every entry of every queue on `dev`, the connection's
    /// `/dev/fuse` fd (it is duplicated; `dev` may be closed later).
    ///
    /// Call it after the INIT reply accepting `FUSE_OVER_IO_URING` has been
    /// written. No request arrives before the first [`KernelRing::wait`].
    ///
    /// # Errors
    ///
    /// [`RingError::Register`] if the kernel refuses an entry at once; the
    /// kernel then carries on over `/dev/fuse`. Other variants for a bad
    /// configuration, a failed mapping or a failed io_uring setup. On error
    /// after some entries were registered, their buffers are leaked (see
    /// Memory in the module doc).
    pub fn new(dev: impl AsFd, config: RingConfig) -> Result<KernelRing, RingError> {
        let RingConfig {
            first_queue,
            queues,
            depth,
            payload,
        } = config;
        if queues == 0 || depth == 0 {
            return Err(RingError::Config("queues and depth must be at least 1"));
        }
        if first_queue + queues > usize::from(u16::MAX) + 1 {
            return Err(RingError::Config("a queue id is 16 bits"));
        }
        if payload < FUSE_MIN_READ_BUFFER || payload > u32::MAX as usize / 2 {
            return Err(RingError::Config(
                "payload must be at least FUSE_MIN_READ_BUFFER (8192) and below 2 GiB",
            ));
        }
        let entries = queues
            .checked_mul(depth)
            .filter(|&n| n <= 32768)
            .ok_or(RingError::Config("at most 32768 entries in all"))?;
        let dev = dev
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| RingError::Device(e.raw_os_error().unwrap_or(0)))?;

        let headers_len = (entries * HEADER_STRIDE).next_multiple_of(PAGE);
        let payload_stride = payload.next_multiple_of(PAGE);
        let bytes = entries
            .checked_mul(payload_stride)
            .and_then(|n| n.checked_add(headers_len))
            .ok_or(RingError::Config("buffers larger than the address space"))?;
        let map_err = |e: io::Error| RingError::Map {
            bytes,
            errno: e.raw_os_error().unwrap_or(0),
        };
        let mut map = MmapMut::map_anon(bytes).map_err(map_err)?;
        let locked = map.lock().is_ok();
        for page in map.chunks_mut(PAGE) {
            page[0] = 0;
        }
        let base = NonNull::new(map.as_mut_ptr()).expect("mmap never returns null");

        let ring = Self::builder()
            .build((entries + 2 * MAX_WATCHES) as u32)
            .map_err(|e| RingError::Setup(e.raw_os_error().unwrap_or(0)))?;
        let iovecs: Box<[[libc::iovec; 2]]> = (0..entries)
            .map(|i| {
                // Offsets inside the mapping (see the `base` invariant); the
                // kernel only stores these addresses.
                let header = base.as_ptr().wrapping_add(i * HEADER_STRIDE);
                let data = base.as_ptr().wrapping_add(headers_len + i * payload_stride);
                [
                    libc::iovec {
                        iov_base: header.cast(),
                        iov_len: FUSE_URING_REQ_HEADER_SZ,
                    },
                    libc::iovec {
                        iov_base: data.cast(),
                        iov_len: payload,
                    },
                ]
            })
            .collect();

        let mut this = KernelRing {
            ring,
            dev,
            map: Some(map),
            base,
            headers_len,
            payload_stride,
            payload,
            iovecs,
            states: vec![State::Dead; entries].into_boxed_slice(),
            ready: VecDeque::with_capacity(entries),
            first: first_queue * depth,
            depth,
            locked,
            holding: 0,
            watches: [Watch::NONE; MAX_WATCHES],
            woken: 0,
        };
        for i in 0..entries {
            let sqe = register_sqe(
                this.dev.as_raw_fd(),
                this.cmd_area(i, 0),
                this.iovecs[i].as_ptr() as u64,
                i as u64,
            );
            this.push(&sqe);
            this.states[i] = State::Kernel;
        }
        this.ring
            .submit()
            .map_err(|e| RingError::Enter(e.raw_os_error().unwrap_or(0)))?;
        this.reap();
        // A REGISTER refused at issue completes at once; one accepted
        // completes only when a request arrives (result 0).
        if let Some(&(i, res)) = this.ready.iter().find(|&&(_, res)| res < 0) {
            return Err(RingError::Register {
                entry: this.global(i as usize),
                errno: -res,
            });
        }
        Ok(this)
    }

    /// Submits every queued commit, then waits until at least `min`
    /// completions are ready or `timeout` passes (no timeout: wait for
    /// `min`), and moves them to the list [`poll_arrival`] reads. This is
    /// the only call in which the kernel copies requests into entries.
    /// Returns the completions ready to poll.
    ///
    /// A timeout or a signal (EINTR) is not an error: fewer than `min` are
    /// ready then.
    ///
    /// # Errors
    ///
    /// [`RingError::Enter`] for any other failure of `io_uring_enter`.
    ///
    /// [`poll_arrival`]: KernelRing::poll_arrival
    pub fn wait(&mut self, min: usize, timeout: Option<Duration>) -> Result<usize, RingError> {
        let submitter = self.ring.submitter();
        let res = match timeout {
            None => submitter.submit_and_wait(min),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                submitter.submit_with_args(min, &args)
            }
        };
        match res.map_err(|e| e.raw_os_error().unwrap_or(0)) {
            Ok(_) | Err(libc::ETIME | libc::EINTR | libc::EBUSY) => {}
            Err(errno) => return Err(RingError::Enter(errno)),
        }
        self.reap();
        Ok(self.ready.len())
    }

    /// Submits the queued commits (and re-armed watches) without waiting,
    /// if there are any: before spinning on [`KernelRing::has_work`], whose
    /// next request may be the answer to one of them.
    ///
    /// # Errors
    ///
    /// As [`KernelRing::wait`].
    pub fn flush(&mut self) -> Result<(), RingError> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.wait(0, Some(Duration::ZERO)).map(drop)
    }

    /// Moves the completion queue's entries to `ready`.
    fn reap(&mut self) {
        let mut rearm = 0u64;
        for cqe in self.ring.completion() {
            let data = cqe.user_data();
            if data == UNWATCH {
                continue;
            }
            if data & WATCH != 0 {
                let token = (data & 0xff) as usize;
                // A stale poll's (`rewatch`) watched a file no longer there.
                if self.watches[token].user_data(token) != data {
                    continue;
                }
                // Woken also on an error: the reader's own call says what.
                self.woken |= 1 << token;
                if !cqueue::more(cqe.flags()) {
                    rearm |= 1 << token;
                }
                continue;
            }
            debug_assert!(self.ready.len() < self.ready.capacity());
            self.ready.push_back((cqe.user_data() as u32, cqe.result()));
        }
        for token in (0..MAX_WATCHES).filter(|t| rearm & (1 << t) != 0) {
            self.watches[token].armed = false;
            if self.watches[token].multishot {
                self.arm(token);
            }
        }
    }

    /// Watches `fd` for input: from the next [`KernelRing::wait`] on, the
    /// wait also ends when it becomes readable, and
    /// [`KernelRing::take_woken`] reports `token`. The poll is multishot
    /// and re-armed when the kernel ends it; it reports a change to
    /// readable, so the caller reads until the descriptor is empty before
    /// relying on it. `fd` must stay open while the ring lives.
    ///
    /// # Panics
    ///
    /// If `token` is [`MAX_WATCHES`] or more.
    pub fn watch(&mut self, fd: BorrowedFd<'_>, token: usize) {
        assert!(token < MAX_WATCHES, "watch token {token}");
        self.watches[token] = Watch {
            fd: fd.as_raw_fd(),
            armed: false,
            multishot: true,
            ..self.watches[token]
        };
        self.arm(token);
    }

    /// Watches `fd` for input once: the next time it is readable (at
    /// once if it is) [`KernelRing::take_woken`] reports `token`; call
    /// again to watch again. Calling it while the watch is armed does
    /// nothing.
    ///
    /// # Panics
    ///
    /// If `token` is [`MAX_WATCHES`] or more.
    pub fn watch_once(&mut self, fd: BorrowedFd<'_>, token: usize) {
        assert!(token < MAX_WATCHES, "watch token {token}");
        if self.watches[token].armed {
            return;
        }
        self.watches[token] = Watch {
            fd: fd.as_raw_fd(),
            armed: false,
            multishot: false,
            ..self.watches[token]
        };
        self.arm(token);
    }

    /// Watches `fd` under `token` again, as before (multishot, or once if
    /// that poll is still armed), after another file was put at the watched
    /// number (dup3): a poll holds the file it was armed on, so the armed
    /// one would go on watching the old file, which nothing makes readable
    /// any more. That poll is removed (its last completion, stale, re-arms
    /// nothing) and both commands are submitted now. `token` is reported
    /// woken: the new file may hold input already. Nothing for a token not
    /// watched.
    ///
    /// # Errors
    ///
    /// As [`KernelRing::wait`].
    ///
    /// # Panics
    ///
    /// If `token` is [`MAX_WATCHES`] or more.
    pub fn rewatch(&mut self, fd: BorrowedFd<'_>, token: usize) -> Result<(), RingError> {
        assert!(token < MAX_WATCHES, "watch token {token}");
        let old = self.watches[token];
        if old.fd < 0 {
            return Ok(());
        }
        if old.armed {
            let sqe: squeue::Entry128 = opcode::PollRemove::new(old.user_data(token))
                .build()
                .user_data(UNWATCH)
                .into();
            self.push(&sqe);
        }
        self.watches[token] = Watch {
            fd: fd.as_raw_fd(),
            armed: false,
            multishot: old.multishot,
            serial: old.serial.wrapping_add(1),
        };
        if old.multishot || old.armed {
            self.arm(token);
        }
        self.woken |= 1 << token;
        self.flush()
    }

    fn arm(&mut self, token: usize) {
        let w = self.watches[token];
        if w.armed || w.fd < 0 {
            return;
        }
        let sqe = opcode::PollAdd::new(types::Fd(w.fd), libc::POLLIN as u32)
            .multi(w.multishot)
            .build()
            .user_data(w.user_data(token));
        let sqe: squeue::Entry128 = sqe.into();
        self.push(&sqe);
        self.watches[token].armed = true;
    }

    /// The tokens woken since the last call, as bits (`1 << token`).
    pub fn take_woken(&mut self) -> u64 {
        std::mem::take(&mut self.woken)
    }

    /// Whether a [`KernelRing::wait`] would find something at once:
    /// completions reaped or posted, or task work (a request to copy, a
    /// watch to report) waiting for the ring's thread. Reads shared memory
    /// only, no system call: what a spinning caller checks.
    pub fn has_work(&mut self) -> bool {
        !self.ready.is_empty()
            || self.woken != 0
            || self.ring.submission().taskrun()
            || !self.ring.completion().is_empty()
    }

    /// The next completion reaped by [`KernelRing::wait`]; a request is
    /// assembled into `buf` in `/dev/fuse` wire format. `None` when there is
    /// none left until the next `wait`.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`KernelRing::max_request_len`].
    pub fn poll_arrival(&mut self, buf: &mut [u8]) -> Option<Arrival> {
        assert!(
            buf.len() >= self.max_request_len(),
            "request buffer of {} bytes, {} needed",
            buf.len(),
            self.max_request_len()
        );
        let (i, res) = self.ready.pop_front()?;
        let i = i as usize;
        let entry = self.global(i);
        debug_assert_eq!(self.states[i], State::Kernel);
        if res != 0 {
            self.states[i] = State::Dead;
            let errno = -res;
            return Some(match Gone::from_errno(errno) {
                Some(why) => Arrival::Gone { entry, why },
                None => Arrival::Failed { entry, errno },
            });
        }
        // The kernel completes an entry's command after copying the
        // request, and writes the buffers again only after the commit.
        self.states[i] = State::Held { commit_id: 0 };
        self.holding += 1;
        let (commit_id, converted) = {
            let (header, payload) = self.held_bufs(i);
            let id = header.ring_ent_in_out.commit_id;
            (id, request_from_ring(header, payload, buf))
        };
        self.states[i] = State::Held { commit_id };
        Some(match converted {
            Ok(len) => Arrival::Request { entry, len },
            Err(error) => Arrival::Invalid {
                entry,
                unique: commit_id,
                error,
            },
        })
    }

    /// Lays `reply` (a `fuse_out_header` and body, as written to
    /// `/dev/fuse`) into the held `entry` and queues COMMIT_AND_FETCH for it,
    /// sent at the next [`KernelRing::wait`]. The entry is then with the
    /// kernel again, waiting for its next request.
    ///
    /// # Errors
    ///
    /// [`CommitError`]; nothing is queued and the entry stays held.
    pub fn commit(&mut self, entry: EntryId, reply: &[u8]) -> Result<(), CommitError> {
        let Some(i) = self.local(entry) else {
            return Err(CommitError::NotHeld(entry));
        };
        let Some(State::Held { commit_id }) = self.states.get(i).copied() else {
            return Err(CommitError::NotHeld(entry));
        };
        if let Ok((h, _)) = OutHeader::read_from_prefix(reply) {
            if h.unique != commit_id {
                return Err(CommitError::Unique {
                    expected: commit_id,
                    got: h.unique,
                });
            }
        }
        {
            let (header, payload) = self.held_bufs(i);
            reply_to_ring(reply, header, payload).map_err(CommitError::Reply)?;
        }
        let sqe = opcode::UringCmd80::new(
            types::Fd(self.dev.as_raw_fd()),
            FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
        )
        .cmd(self.cmd_area(i, commit_id))
        .build()
        .user_data(i as u64);
        self.push(&sqe);
        self.states[i] = State::Kernel;
        self.holding -= 1;
        Ok(())
    }

    /// Commits an error reply (`-errno`, no body) to the held `entry`: for an
    /// [`Arrival::Invalid`], or a request the caller cannot forward.
    ///
    /// # Errors
    ///
    /// [`CommitError::NotHeld`].
    pub fn commit_error(&mut self, entry: EntryId, errno: i32) -> Result<(), CommitError> {
        let Some(State::Held { commit_id }) = self.local(entry).map(|i| self.states[i]) else {
            return Err(CommitError::NotHeld(entry));
        };
        let header = OutHeader {
            len: 16,
            error: errno.wrapping_neg(),
            unique: commit_id,
        };
        self.commit(entry, header.as_bytes())
    }

    /// The command area of entry `i`'s SQEs: its queue, and the commit id.
    fn cmd_area(&self, i: usize, commit_id: u64) -> [u8; FUSE_URING_CMD_AREA_SZ] {
        let req = UringCmdReq {
            flags: 0,
            commit_id,
            // `new` bounds queue ids by 2^16.
            qid: ((self.first + i) / self.depth) as u16,
            padding: [0; 6],
        };
        let mut area = [0u8; FUSE_URING_CMD_AREA_SZ];
        area[..size_of::<UringCmdReq>()].copy_from_slice(req.as_bytes());
        area
    }

    /// Queues an SQE.
    ///
    /// # Panics
    ///
    /// If the submission queue is full, which the sizing rules out: it has a
    /// slot per entry and two per watch, an entry has at most one SQE
    /// queued, and a watch its poll and at most one removal (`rewatch`
    /// submits what it queues).
    fn push(&mut self, sqe: &squeue::Entry128) {
        // SAFETY: the SQE's pointers are the entry's buffers in the mapping
        // and (REGISTER) its iovec pair in `iovecs`. Both stay valid until
        // the command completes: they live as long as `self`, are dropped
        // after `ring` (field order), and the mapping is leaked if an entry
        // is still with the kernel at drop. No reference to the buffers
        // exists while the entry is with the kernel (`states` invariant).
        let pushed = unsafe { self.ring.submission().push(sqe) };
        pushed.expect("the submission queue has a slot for every entry");
    }

    /// The header and payload buffers of entry `i`, which the caller holds.
    fn held_bufs(&mut self, i: usize) -> (&mut UringReqHeader, &mut [u8]) {
        assert!(
            matches!(self.states[i], State::Held { .. }),
            "entry {i} is not held"
        );
        let base = self.base.as_ptr();
        // SAFETY: `i < states.len()` (indexed above), so by the `base`
        // invariant both ranges lie inside the live mapping, and they do not
        // overlap each other or any other entry's. The entry is held, so the
        // kernel does not access them until its commit is submitted, which
        // needs `&mut self` again; the `&mut self` borrow excludes any other
        // reference made here.
        let (header, payload) = unsafe {
            (
                std::slice::from_raw_parts_mut(base.add(i * HEADER_STRIDE), HEADER_STRIDE),
                std::slice::from_raw_parts_mut(
                    base.add(self.headers_len + i * self.payload_stride),
                    self.payload,
                ),
            )
        };
        let header = UringReqHeader::mut_from_bytes(&mut header[..FUSE_URING_REQ_HEADER_SZ])
            .expect("headers are 8-aligned in a page-aligned mapping");
        (header, payload)
    }

    /// Bytes a buffer given to [`KernelRing::poll_arrival`] must hold:
    /// in-header, the largest op struct, and a full payload.
    pub fn max_request_len(&self) -> usize {
        REQUEST_OVERHEAD + self.payload
    }

    /// Entries in all.
    #[cfg(test)]
    pub fn entries(&self) -> usize {
        self.states.len()
    }

    /// Queues registered.
    #[cfg(test)]
    pub fn queues(&self) -> usize {
        self.states.len() / self.depth
    }

    /// Entries the caller holds (requests owed a reply).
    pub fn held(&self) -> usize {
        self.holding
    }

    /// Whether `entry` is one of this ring's.
    pub fn owns(&self, entry: EntryId) -> bool {
        self.local(entry).is_some()
    }

    /// The index in `states` of a global entry id, if this ring has it.
    fn local(&self, entry: EntryId) -> Option<usize> {
        (entry.0 as usize)
            .checked_sub(self.first)
            .filter(|&i| i < self.states.len())
    }

    /// The global id of local entry `i`.
    fn global(&self, i: usize) -> EntryId {
        // `new` bounds entries by 2^15 per ring and queue ids by 2^16.
        EntryId((self.first + i) as u32)
    }

    /// Whether every entry is out of service: the connection is over, or
    /// the ring can carry nothing more.
    #[cfg(test)]
    pub fn is_ended(&self) -> bool {
        self.states.iter().all(|s| *s == State::Dead)
    }

    /// Whether mlock took effect on the buffers.
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Drop for KernelRing {
    fn drop(&mut self) {
        if self.states.contains(&State::Kernel) {
            // The kernel still has addresses in the mapping; its cancel
            // runs after the ring's fd is closed. Leave the memory mapped.
            std::mem::forget(self.map.take());
        }
    }
}

/// A REGISTER SQE for the entry whose iovec pair is at `iovecs`.
///
/// io-uring's `UringCmd80` cannot set `sqe->len`, which REGISTER needs to be
/// [`FUSE_URING_IOV_SEGS`] (tokio-rs/io-uring issue 374 asks for raw SQE
/// access); the field is written into the built entry's bytes.
fn register_sqe(
    fd: i32,
    cmd: [u8; FUSE_URING_CMD_AREA_SZ],
    iovecs: u64,
    user_data: u64,
) -> squeue::Entry128 {
    let sqe = opcode::UringCmd80::new(types::Fd(fd), FUSE_IO_URING_CMD_REGISTER)
        .cmd(cmd)
        .addr(Some(iovecs))
        .build()
        .user_data(user_data);
    // SAFETY: `Entry128` is `#[repr(C)]` around `Entry` (`#[repr(C)]` around
    // the kernel's 64-byte `io_uring_sqe`) and 64 command bytes, 128 bytes
    // with no padding, so it has no uninitialized byte to read and byte `k`
    // of the array is byte `k` of the SQE. It has no `Drop`.
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    bytes[SQE_LEN_OFFSET..SQE_LEN_OFFSET + 4].copy_from_slice(&FUSE_URING_IOV_SEGS.to_ne_bytes());
    // SAFETY: same layout as above; every field of the SQE is an integer or
    // a union of integers, so any byte pattern is a valid `Entry128`.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(bytes) }
}

/// The kernel's queue count: one per possible CPU, counted in
/// `/sys/devices/system/cpu/possible` (`0-1`, `0,2-5`).
///
/// # Errors
///
/// If the file cannot be read or parsed.
pub fn queue_count() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse the possible CPUs {:?}", text.trim()),
        )
    })
}

/// Counts the CPUs of a kernel CPU list.
fn parse_cpu_list(list: &str) -> Option<usize> {
    list.split(',').try_fold(0usize, |n, part| {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<usize>().ok()?, hi.parse::<usize>().ok()?),
            None => {
                let c = part.parse::<usize>().ok()?;
                (c, c)
            }
        };
        Some(n + hi.checked_sub(lo)? + 1)
    })
}

#[cfg(test)]
mod tests {
    //! Unit tests, and a real mount served through the ring. The mount tests
    //! need root and a writable `enable_uring`; they skip with a message
    //! otherwise. Names start with `kernel_ring_` so that `cargo test -p
    //! fuseproxy kernel_ring` selects them wherever this module is compiled.

    use super::*;

    use std::fs::{File, OpenOptions};
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::PathBuf;
    use std::sync::{Mutex, MutexGuard};
    use std::thread::JoinHandle;
    use std::time::Instant;

    use nix::errno::Errno;
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::stat::stat;

    use fuseproxy_protocol::abi::{Attr, AttrOut, EntryOut, InitOut};
    use fuseproxy_protocol::flags::{FUSE_INIT_EXT, FUSE_OVER_IO_URING};
    use fuseproxy_protocol::uring::ring_payload_size;
    use fuseproxy_protocol::{encode_error_reply, encode_reply, Operation, Request};

    #[test]
    fn kernel_ring_cpu_lists_count_like_the_kernel() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-1"), Some(2));
        assert_eq!(parse_cpu_list("0,2-5,7"), Some(6));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list(""), None);
        assert!(queue_count().unwrap() >= 1);
    }

    #[test]
    fn kernel_ring_register_sqe_carries_the_iovec_count() {
        let sqe = register_sqe(7, [0xab; 80], 0x1122_3344_5566_7788, 0x99);
        // SAFETY: as in `register_sqe`: 128 initialized bytes, no padding.
        let bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(bytes[0], opcode::UringCmd80::CODE);
        assert_eq!(&bytes[4..8], &7i32.to_ne_bytes(), "fd");
        assert_eq!(
            &bytes[8..12],
            &FUSE_IO_URING_CMD_REGISTER.to_ne_bytes(),
            "cmd_op"
        );
        assert_eq!(
            &bytes[16..24],
            &0x1122_3344_5566_7788u64.to_ne_bytes(),
            "addr"
        );
        assert_eq!(&bytes[24..28], &2u32.to_ne_bytes(), "len");
        assert_eq!(&bytes[32..40], &0x99u64.to_ne_bytes(), "user_data");
        assert_eq!(&bytes[48..], &[0xab; 80][..], "command area");
    }

    #[test]
    fn kernel_ring_config_bounds() {
        let dev = File::open("/dev/null").unwrap();
        let cfg = RingConfig {
            first_queue: 0,
            queues: 1,
            depth: 1,
            payload: 8192,
        };
        let bad = |c: RingConfig| matches!(KernelRing::new(&dev, c), Err(RingError::Config(_)));
        assert!(bad(RingConfig { depth: 0, ..cfg }));
        assert!(bad(RingConfig { queues: 0, ..cfg }));
        assert!(bad(RingConfig {
            payload: 4096,
            ..cfg
        }));
        assert!(bad(RingConfig {
            first_queue: 0,
            queues: 300,
            depth: 300,
            ..cfg
        }));
    }

    // ---- a real mount -------------------------------------------------

    /// One mount test at a time: they share the module parameter.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// Turns `enable_uring` on and puts the previous value back when dropped
    /// (a failed assertion included).
    struct UringParam {
        old: String,
        _serial: MutexGuard<'static, ()>,
    }

    impl UringParam {
        /// `Err` with the reason to skip.
        fn enable() -> Result<UringParam, String> {
            let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
            if !nix::unistd::geteuid().is_root() {
                return Err("not root".into());
            }
            let old = std::fs::read_to_string(ENABLE_URING_PARAM)
                .map_err(|e| format!("{ENABLE_URING_PARAM}: {e}"))?;
            std::fs::write(ENABLE_URING_PARAM, "Y")
                .map_err(|e| format!("cannot set {ENABLE_URING_PARAM}: {e}"))?;
            let param = UringParam {
                old: old.trim().to_string(),
                _serial: serial,
            };
            KernelRing::available()?;
            Ok(param)
        }
    }

    impl Drop for UringParam {
        fn drop(&mut self) {
            if let Err(e) = std::fs::write(ENABLE_URING_PARAM, &self.old) {
                eprintln!("cannot restore {ENABLE_URING_PARAM} to {}: {e}", self.old);
            }
        }
    }

    macro_rules! skip_unless_uring {
        () => {
            match UringParam::enable() {
                Ok(p) => p,
                Err(why) => {
                    println!("skipping: {why}");
                    return;
                }
            }
        };
    }

    const FILE_INO: u64 = 2;
    const FILE_SIZE: u64 = 12345;
    const MAX_WRITE: u32 = 128 * 1024;
    /// Every wait of these tests ends by then.
    const DEADLINE: Duration = Duration::from_secs(30);

    /// A fuse mount of our own on a temporary directory. Dropping it
    /// detaches the mount, then closes the device, which aborts whatever
    /// is left of the connection.
    struct Mount {
        dir: tempfile::TempDir,
        mounted: bool,
        dev: File,
    }

    impl Mount {
        /// Mounts, then answers INIT on the device, accepting
        /// `FUSE_OVER_IO_URING` if `uring`.
        fn new(uring: bool) -> Mount {
            let dev = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/fuse")
                .expect("open /dev/fuse");
            let dir = tempfile::tempdir().unwrap();
            let opts = format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd());
            mount(
                Some("fuseproxy-ring-test"),
                dir.path(),
                Some("fuse.fuseproxy-ring-test"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .expect("mount");
            let mut m = Mount {
                dir,
                mounted: true,
                dev,
            };
            let mut buf = RequestBuf::new(8192 + 4096);
            let n = m
                .read_dev(&mut buf, Instant::now() + DEADLINE)
                .expect("INIT");
            let req = Request::parse(&buf.bytes()[..n]).unwrap();
            let Operation::Init(init) = req.operation() else {
                panic!("first request is {:?}, not INIT", req.opcode());
            };
            assert_ne!(
                init.flags() & FUSE_OVER_IO_URING,
                0,
                "the kernel offers FUSE_OVER_IO_URING"
            );
            let flags = FUSE_INIT_EXT | if uring { FUSE_OVER_IO_URING } else { 0 };
            let out = InitOut {
                major: 7,
                minor: 45,
                max_readahead: 128 * 1024,
                flags: flags as u32,
                max_background: 16,
                congestion_threshold: 12,
                max_write: MAX_WRITE,
                time_gran: 1,
                flags2: (flags >> 32) as u32,
                ..InitOut::default()
            };
            let mut reply = [0u8; 128];
            let n = encode_reply(&mut reply, req.unique(), &[out.as_bytes()]).unwrap();
            m.dev.write_all(&reply[..n]).expect("INIT reply");
            m
        }

        fn path(&self) -> PathBuf {
            self.dir.path().to_path_buf()
        }

        /// Aborts the connection through fusectl. Only while mounted: the
        /// connection's number is reused once its superblock is gone.
        fn abort(&self) {
            assert!(self.mounted);
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.dev.as_raw_fd()))
                    .unwrap();
            let conn = info
                .lines()
                .find_map(|l| l.strip_prefix("fuse_connection:"))
                .expect("fdinfo names the fuse connection")
                .trim();
            std::fs::write(format!("/sys/fs/fuse/connections/{conn}/abort"), "1").unwrap();
        }

        fn unmount(&mut self) {
            if std::mem::take(&mut self.mounted) {
                umount2(self.dir.path(), MntFlags::MNT_DETACH).expect("umount");
            }
        }

        /// The next request on the device, waiting until `deadline`.
        fn read_dev(&mut self, buf: &mut RequestBuf, deadline: Instant) -> io::Result<usize> {
            loop {
                match self.try_read_dev(buf)? {
                    Some(n) => return Ok(n),
                    None => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(io::ErrorKind::TimedOut.into());
                        }
                        let ms = left.as_millis().min(100) as u16;
                        let mut fds = [PollFd::new(self.dev.as_fd(), PollFlags::POLLIN)];
                        let _ = poll(&mut fds, PollTimeout::from(ms));
                    }
                }
            }
        }

        /// A request from the device if one is there.
        fn try_read_dev(&mut self, buf: &mut RequestBuf) -> io::Result<Option<usize>> {
            match self.dev.read(buf.bytes_mut()) {
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(None),
                Err(e) => Err(e),
            }
        }
    }

    impl Drop for Mount {
        fn drop(&mut self) {
            if self.mounted {
                let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
            }
        }
    }

    /// An 8-aligned buffer, as [`Request::parse`] wants.
    struct RequestBuf(Vec<u64>);

    impl RequestBuf {
        fn new(bytes: usize) -> RequestBuf {
            RequestBuf(vec![0; bytes.div_ceil(8)])
        }
        fn bytes(&self) -> &[u8] {
            self.0.as_bytes()
        }
        fn bytes_mut(&mut self) -> &mut [u8] {
            self.0.as_mut_bytes()
        }
    }

    /// Requests seen, by opcode, on one path.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    struct Seen {
        getattr: usize,
        lookup: usize,
        forget: usize,
        other: usize,
    }

    fn dir_attr() -> Attr {
        Attr {
            ino: 1,
            mode: libc::S_IFDIR | 0o755,
            nlink: 2,
            blksize: 4096,
            ..Attr::default()
        }
    }

    fn file_attr() -> Attr {
        Attr {
            ino: FILE_INO,
            size: FILE_SIZE,
            blocks: FILE_SIZE.div_ceil(512),
            mode: libc::S_IFREG | 0o644,
            nlink: 1,
            blksize: 4096,
            ..Attr::default()
        }
    }

    /// The fake filesystem: a root directory holding `file`. Nothing is
    /// cached (timeouts 0), so each stat is a round trip. Returns the
    /// reply's length, or `None` for requests without a reply.
    fn answer(req: &[u8], out: &mut [u8], seen: &mut Seen) -> Option<usize> {
        let req = Request::parse(req).expect("a well-formed request");
        let unique = req.unique();
        let n = match req.operation() {
            Operation::Getattr(_) => {
                seen.getattr += 1;
                let attr = match req.nodeid().0 {
                    1 => dir_attr(),
                    FILE_INO => file_attr(),
                    _ => return encode_error_reply(out, unique, libc::ENOENT),
                };
                let reply = AttrOut {
                    attr,
                    ..AttrOut::default()
                };
                encode_reply(out, unique, &[reply.as_bytes()])
            }
            Operation::Lookup { name } => {
                seen.lookup += 1;
                if req.nodeid().0 != 1 || name != b"file" {
                    return encode_error_reply(out, unique, libc::ENOENT);
                }
                let reply = EntryOut {
                    nodeid: FILE_INO,
                    generation: 1,
                    attr: file_attr(),
                    ..EntryOut::default()
                };
                encode_reply(out, unique, &[reply.as_bytes()])
            }
            Operation::Forget(_) | Operation::BatchForget { .. } => {
                seen.forget += 1;
                return None;
            }
            Operation::Interrupt(_) => {
                seen.other += 1;
                return None;
            }
            _ => {
                seen.other += 1;
                encode_error_reply(out, unique, libc::ENOSYS)
            }
        };
        Some(n.expect("replies fit"))
    }

    /// Stats the mount and its file `n` times, checking the results; then a
    /// missing name; then, if `drop_caches`, makes the kernel forget the
    /// file's inode. Returns the time the `n` stats took.
    fn client(dir: PathBuf, n: usize, drop_caches: bool) -> Result<Duration, String> {
        let file = dir.join("file");
        let start = Instant::now();
        for _ in 0..n {
            let st = stat(&dir).map_err(|e| format!("stat mountpoint: {e}"))?;
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR || st.st_ino != 1 {
                return Err(format!(
                    "mountpoint: mode {:o} ino {}",
                    st.st_mode, st.st_ino
                ));
            }
            let st = stat(&file).map_err(|e| format!("stat file: {e}"))?;
            if st.st_size as u64 != FILE_SIZE || st.st_ino != FILE_INO {
                return Err(format!("file: size {} ino {}", st.st_size, st.st_ino));
            }
        }
        let took = start.elapsed();
        match stat(&dir.join("missing")) {
            Err(Errno::ENOENT) => {}
            other => return Err(format!("missing name: {other:?}")),
        }
        if drop_caches {
            std::fs::write("/proc/sys/vm/drop_caches", "2")
                .map_err(|e| format!("drop_caches: {e}"))?;
        }
        Ok(took)
    }

    /// Only GETATTRs: `n` stats of the mountpoint.
    fn getattr_client(dir: PathBuf, n: usize) -> Result<Duration, String> {
        let start = Instant::now();
        for _ in 0..n {
            stat(&dir).map_err(|e| format!("stat mountpoint: {e}"))?;
        }
        Ok(start.elapsed())
    }

    /// Serves the mount until `client` has finished: through the ring when
    /// there is one (and the device alongside), else through the device.
    /// Returns what each path carried.
    fn serve(
        mnt: &mut Mount,
        mut ring: Option<&mut KernelRing>,
        client: &JoinHandle<Result<Duration, String>>,
    ) -> (Seen, Seen) {
        let deadline = Instant::now() + DEADLINE;
        let (mut via_ring, mut via_dev) = (Seen::default(), Seen::default());
        let payload = ring.as_ref().map_or(MAX_WRITE as usize, |r| r.payload);
        let mut req = RequestBuf::new(REQUEST_OVERHEAD + payload);
        let mut reply = vec![0u8; 4096];
        loop {
            assert!(Instant::now() < deadline, "the client did not finish");
            let finished = client.is_finished();
            // With a ring, the device is read when the ring is idle (it
            // carries only FORGET and INTERRUPT), and at the end.
            let mut ring_idle = true;
            if let Some(ring) = ring.as_deref_mut() {
                ring_idle = ring.wait(1, Some(Duration::from_millis(20))).unwrap() == 0;
                while let Some(a) = ring.poll_arrival(req.bytes_mut()) {
                    let Arrival::Request { entry, len } = a else {
                        panic!("unexpected {a:?} while mounted");
                    };
                    let n = answer(&req.bytes()[..len], &mut reply, &mut via_ring)
                        .expect("requests through the ring all want a reply");
                    ring.commit(entry, &reply[..n]).unwrap();
                }
            }
            if ring_idle || finished {
                loop {
                    let got = if ring.is_some() {
                        mnt.try_read_dev(&mut req).unwrap()
                    } else {
                        match mnt.read_dev(&mut req, Instant::now() + Duration::from_millis(20)) {
                            Ok(n) => Some(n),
                            Err(e) if e.kind() == io::ErrorKind::TimedOut => None,
                            Err(e) => panic!("reading /dev/fuse: {e}"),
                        }
                    };
                    let Some(len) = got else { break };
                    if let Some(n) = answer(&req.bytes()[..len], &mut reply, &mut via_dev) {
                        mnt.dev.write_all(&reply[..n]).unwrap();
                    }
                }
            }
            // One last pass after the client ended catches what its exit
            // queued (the FORGETs of drop_caches).
            if finished {
                return (via_ring, via_dev);
            }
        }
    }

    fn ring_for(mnt: &Mount, depth: usize) -> KernelRing {
        let config = RingConfig {
            first_queue: 0,
            queues: queue_count().unwrap(),
            depth,
            payload: ring_payload_size(MAX_WRITE, 32, PAGE),
        };
        KernelRing::new(&mnt.dev, config).expect("registering the ring")
    }

    #[test]
    fn kernel_ring_serves_stat_and_reports_the_unmount() {
        let _param = skip_unless_uring!();
        let mut mnt = Mount::new(true);
        let mut ring = ring_for(&mnt, 2);
        assert_eq!(ring.entries(), ring.queues() * 2);
        assert!(ring.is_locked(), "buffers locked");

        let dir = mnt.path();
        let stats = std::thread::spawn(move || client(dir, 200, true));
        let (via_ring, via_dev) = serve(&mut mnt, Some(&mut ring), &stats);
        join_by(stats, Instant::now() + DEADLINE).expect("stat results");
        println!("through the ring: {via_ring:?}; through /dev/fuse: {via_dev:?}");
        assert!(via_ring.getattr >= 200, "GETATTRs come through the ring");
        assert!(via_ring.lookup >= 200, "LOOKUPs come through the ring");
        assert_eq!(via_ring.forget, 0);
        assert_eq!(via_dev.getattr + via_dev.lookup, 0);
        assert!(via_dev.forget >= 1, "FORGET still comes through /dev/fuse");
        assert_eq!(ring.held(), 0);

        // A commit for an entry not held is refused; so is a wrong unique.
        assert_eq!(
            ring.commit(EntryId(0), &[0; 16]),
            Err(CommitError::NotHeld(EntryId(0)))
        );

        mnt.unmount();
        let deadline = Instant::now() + DEADLINE;
        let mut buf = RequestBuf::new(ring.max_request_len());
        let mut gone = Vec::new();
        while !ring.is_ended() {
            assert!(Instant::now() < deadline, "entries left: {gone:?}");
            ring.wait(1, Some(Duration::from_millis(100))).unwrap();
            while let Some(a) = ring.poll_arrival(buf.bytes_mut()) {
                match a {
                    Arrival::Gone { why, .. } => gone.push(why),
                    other => panic!("after the unmount: {other:?}"),
                }
            }
        }
        println!("after the unmount: {gone:?}");
        assert_eq!(gone.len(), ring.entries());
        assert!(gone.iter().all(|&g| g == Gone::NotConnected));
        // The device reports the end its own way.
        let mut seen = Seen::default();
        loop {
            match mnt.read_dev(&mut buf, deadline) {
                Ok(n) => assert!(answer(&buf.bytes()[..n], &mut [0; 256], &mut seen).is_none()),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
                    break;
                }
            }
        }
    }

    /// Waits for a thread to end, at most until `deadline`.
    fn join_by<T>(t: JoinHandle<T>, deadline: Instant) -> T {
        while !t.is_finished() {
            assert!(Instant::now() < deadline, "thread still running");
            std::thread::sleep(Duration::from_millis(10));
        }
        t.join().unwrap()
    }

    #[test]
    fn kernel_ring_held_entry_learns_of_an_abort_from_its_commit() {
        let _param = skip_unless_uring!();
        let mut mnt = Mount::new(true);
        let mut ring = ring_for(&mnt, 1);
        let dir = mnt.path();
        let stat_thread = std::thread::spawn(move || stat(&dir).map(|_| ()));
        let mut buf = RequestBuf::new(ring.max_request_len());
        let deadline = Instant::now() + DEADLINE;
        let (entry, unique) = loop {
            assert!(Instant::now() < deadline, "no request");
            ring.wait(1, Some(Duration::from_millis(100))).unwrap();
            if let Some(a) = ring.poll_arrival(buf.bytes_mut()) {
                let Arrival::Request { entry, len } = a else {
                    panic!("{a:?}")
                };
                break (entry, Request::parse(&buf.bytes()[..len]).unwrap().unique());
            }
        };
        assert_eq!(ring.held(), 1);
        let mut reply = [0u8; 16];
        let wrong = fuseproxy_protocol::Unique(unique.0 + 2);
        let n = encode_error_reply(&mut reply, wrong, libc::EIO).unwrap();
        assert_eq!(
            ring.commit(entry, &reply[..n]),
            Err(CommitError::Unique {
                expected: unique.0,
                got: unique.0 + 2
            })
        );

        // A lazy unmount would wait for the stat, which holds the mount
        // busy: end the connection through fusectl instead.
        mnt.abort();
        assert_eq!(
            join_by(stat_thread, deadline),
            Err(Errno::ECONNABORTED),
            "the held request ends with the connection"
        );
        // The entries waiting for requests are torn down; the held one
        // learns it only from its commit.
        ring.commit_error(entry, libc::EIO).unwrap();
        let mut gone = Vec::new();
        while !ring.is_ended() {
            assert!(Instant::now() < deadline, "entries left: {gone:?}");
            ring.wait(1, Some(Duration::from_millis(100))).unwrap();
            while let Some(a) = ring.poll_arrival(buf.bytes_mut()) {
                let Arrival::Gone { entry: e, why } = a else {
                    panic!("{a:?}")
                };
                gone.push((e, why));
            }
        }
        println!("after the abort: {gone:?}");
        assert_eq!(gone.len(), ring.entries());
        // Measured on 6.18: ENOTCONN for the held entry's commit too, not
        // the ECONNABORTED `fuse_uring_cmd` has for `fc->aborted`.
        assert!(gone.iter().all(|&(_, why)| why == Gone::NotConnected));
        assert!(gone.iter().any(|&(e, _)| e == entry));
        mnt.unmount();
    }

    #[test]
    fn kernel_ring_is_not_ready_until_every_queue_has_an_entry() {
        let _param = skip_unless_uring!();
        if queue_count().unwrap() < 2 {
            println!("skipping: one possible CPU, one queue");
            return;
        }
        let mut mnt = Mount::new(true);
        let config = RingConfig {
            first_queue: 0,
            queues: 1,
            depth: 1,
            payload: ring_payload_size(MAX_WRITE, 32, PAGE),
        };
        let mut ring = KernelRing::new(&mnt.dev, config).unwrap();
        let dir = mnt.path();
        let stat_thread = std::thread::spawn(move || stat(&dir).map(|_| ()));
        // The stat blocks before its request is queued anywhere.
        let mut buf = RequestBuf::new(ring.max_request_len());
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            ring.wait(1, Some(Duration::from_millis(50))).unwrap();
            assert_eq!(ring.poll_arrival(buf.bytes_mut()), None);
            assert_eq!(mnt.try_read_dev(&mut buf).unwrap(), None);
        }
        assert!(!stat_thread.is_finished());
        mnt.abort();
        assert_eq!(
            join_by(stat_thread, Instant::now() + DEADLINE),
            Err(Errno::ENOTCONN)
        );
        let deadline = Instant::now() + DEADLINE;
        while !ring.is_ended() {
            assert!(Instant::now() < deadline, "the entry did not come back");
            ring.wait(1, Some(Duration::from_millis(100))).unwrap();
            while let Some(a) = ring.poll_arrival(buf.bytes_mut()) {
                assert!(matches!(a, Arrival::Gone { .. }), "{a:?}");
            }
        }
        mnt.unmount();
    }

    /// A watch goes on polling the file it was armed on after another is
    /// put at its number, until `rewatch`: then the new file wakes it, the
    /// old poll is removed (which lets the old file go: its peer sees the
    /// hang-up) and its last completion wakes and re-arms nothing.
    #[test]
    fn kernel_ring_rewatch_follows_a_file_put_at_the_watched_number() {
        use nix::sys::socket::{
            recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType,
        };
        use std::os::fd::AsFd;
        let _param = skip_unless_uring!();
        let mut mnt = Mount::new(true);
        let mut ring = ring_for(&mnt, 1);
        let pair = || {
            socketpair(
                AddressFamily::Unix,
                SockType::SeqPacket,
                None,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            )
            .unwrap()
        };
        const TOKEN: usize = 1;
        // What woke the ring within `ms` (a request would be a bug here).
        let woken_within = |ring: &mut KernelRing, ms: u64| {
            ring.wait(1, Some(Duration::from_millis(ms))).unwrap();
            ring.take_woken() & (1 << TOKEN) != 0
        };
        let hung_up = |fd: BorrowedFd<'_>, ms: u16| {
            let mut fds = [PollFd::new(fd, PollFlags::empty())];
            poll(&mut fds, PollTimeout::from(ms)).unwrap() == 1
                && fds[0].revents().unwrap().contains(PollFlags::POLLHUP)
        };
        let (watched, old_peer) = pair();
        ring.watch(watched.as_fd(), TOKEN);
        send(old_peer.as_raw_fd(), b"a", MsgFlags::empty()).unwrap();
        assert!(woken_within(&mut ring, 5000), "the first file wakes it");
        recv(watched.as_raw_fd(), &mut [0; 8], MsgFlags::empty()).unwrap();

        let (new, new_peer) = pair();
        nix::unistd::dup3(
            new.as_raw_fd(),
            watched.as_raw_fd(),
            nix::fcntl::OFlag::O_CLOEXEC,
        )
        .unwrap();
        drop(new);
        send(new_peer.as_raw_fd(), b"b", MsgFlags::empty()).unwrap();
        assert!(
            !woken_within(&mut ring, 200),
            "the poll still watches the old file"
        );
        assert!(!hung_up(old_peer.as_fd(), 0), "the poll holds the old file");

        ring.rewatch(watched.as_fd(), TOKEN).unwrap();
        assert_ne!(ring.take_woken() & (1 << TOKEN), 0, "reported at once");
        assert!(
            woken_within(&mut ring, 5000),
            "the new poll sees the new file's input"
        );
        assert!(hung_up(old_peer.as_fd(), 5000), "the old file is let go");
        recv(watched.as_raw_fd(), &mut [0; 8], MsgFlags::empty()).unwrap();
        assert!(!woken_within(&mut ring, 200), "nothing stale wakes it");
        for _ in 0..3 {
            send(new_peer.as_raw_fd(), b"c", MsgFlags::empty()).unwrap();
            assert!(woken_within(&mut ring, 5000), "still multishot");
            recv(watched.as_raw_fd(), &mut [0; 8], MsgFlags::empty()).unwrap();
        }

        mnt.unmount();
        let deadline = Instant::now() + DEADLINE;
        let mut buf = RequestBuf::new(ring.max_request_len());
        while !ring.is_ended() {
            assert!(Instant::now() < deadline, "entries left after the unmount");
            ring.wait(1, Some(Duration::from_millis(100))).unwrap();
            while let Some(a) = ring.poll_arrival(buf.bytes_mut()) {
                assert!(matches!(a, Arrival::Gone { .. }), "{a:?}");
            }
        }
    }

    /// Round-trip cost: 20,000 stats of the mountpoint (one GETATTR each)
    /// served through the ring, then through read/write on /dev/fuse, with
    /// the threads free and then both on CPU 0. Run with `--ignored
    /// --nocapture`.
    #[test]
    #[ignore = "a measurement; run explicitly"]
    fn kernel_ring_round_trip_cost() {
        let _param = skip_unless_uring!();
        const N: usize = 20_000;
        for pinned in [false, true] {
            for uring in [true, false] {
                if pinned {
                    pin_to_cpu0();
                }
                let mut mnt = Mount::new(uring);
                let mut ring = uring.then(|| ring_for(&mnt, 2));
                let dir = mnt.path();
                let client = std::thread::spawn(move || {
                    if pinned {
                        pin_to_cpu0();
                    }
                    getattr_client(dir, N)
                });
                let (r, d) = serve(&mut mnt, ring.as_mut(), &client);
                let took = join_by(client, Instant::now() + DEADLINE).unwrap();
                println!(
                    "{:>9} {}: {:.2} us per GETATTR round trip ({} via ring, {} via device)",
                    if uring { "io_uring" } else { "/dev/fuse" },
                    if pinned {
                        "both on CPU 0"
                    } else {
                        "threads free"
                    },
                    took.as_secs_f64() * 1e6 / N as f64,
                    r.getattr,
                    d.getattr,
                );
                mnt.unmount();
                if let Some(ring) = ring.as_mut() {
                    let deadline = Instant::now() + DEADLINE;
                    let mut buf = RequestBuf::new(ring.max_request_len());
                    while !ring.is_ended() && Instant::now() < deadline {
                        ring.wait(1, Some(Duration::from_millis(100))).unwrap();
                        while ring.poll_arrival(buf.bytes_mut()).is_some() {}
                    }
                }
            }
        }
    }

    fn pin_to_cpu0() {
        let mut one = nix::sched::CpuSet::new();
        one.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one).unwrap();
    }
}
