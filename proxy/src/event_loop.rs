//! The session: the threads that forward, and the loop that runs the rest.
//!
//! Forwarding threads take the session's lock once per message (see
//! `forwarders`): with `--threads 1` one thread that reads both sides and
//! sleeps in poll(2) when neither has anything; with more, readers of the
//! kernel's requests, each blocking on its own clone of the device, and one
//! reader of the backend's replies. The
//! main thread waits in mio for what is not a message (signals, the engine's
//! deadlines, the seccomp listener, room on a full socket, the helper
//! threads' wake-ups) and handles it under the same lock.
//!
//! All state is in [`Shared`], behind one mutex: the engine sees one message
//! at a time in the order the lock was taken, exactly as with one thread, so
//! its guarantees (per-file ordering of time updates and what is held behind
//! them, one flush in flight per file, shutdown) do not depend on how many
//! threads forward. Answers go back to the clone that read the request
//! (`origins`).

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use slog::{debug, error, info, warn, Logger};

use fuseproxy_policies::{Action, Engine, Event, Inline, Instant, SlotId, Stats};
use fuseproxy_protocol::{flags, unique_of, Request, Unique};

use crate::alloc_count;
use crate::arena::{Arena, Lent};
use crate::backend::{describe, Backend};
use crate::channel::{self, Recv, Send};
use crate::device::{self, Read, Write};
use crate::error::Error;
use crate::kernel_ring::RingConfig;
use crate::memory::Pinning;
use crate::mount::{self as mounting, Mount};
use crate::notifier::Notifier;
use crate::origins::{Origins, Route};
use crate::outbox::{self, Item, Msg, Outbox};
use crate::policy_file::{PolicySource, Reloader};
use crate::recorder::{self, Recorder};

/// The backend's socket, watched for room only while messages wait for it.
const BACKEND: Token = Token(1);
const SIGNALS: Token = Token(2);
/// The policy reload thread or the notification writer has something back
/// (one waker for both: mio allows one per Poll).
const WAKE: Token = Token(3);
/// The seccomp channel's listener: the backend's mount and umount calls.
const SECCOMP: Token = Token(4);
/// The fusermount channel's guard (the daemon's own mount calls).
const GUARD: Token = Token(6);

/// How long the backend gets to answer DESTROY, and the kernel to end the
/// connection after the proxy's unmount, before the proxy stops waiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Bad replies after the first are summed up at most this often.
const BAD_REPLY_REPORT: Duration = Duration::from_secs(1);
/// Free slots a notification may not take from the loop: one to read a
/// request, one to read the backend's reply to it (see `deliver_notification`).
const NOTIFY_RESERVE: usize = 2;
/// How long a notification may wait for a slot to come back from the writer,
/// with the backend's channel unread, before it is dropped.
const NOTIFY_STALL: Duration = Duration::from_secs(1);
/// How long a session whose backend died waits for its EIO answers to be
/// submitted to the rings before it aborts the connection.
const RING_DRAIN: Duration = Duration::from_millis(500);
/// How long an upgrade (SIGUSR2) waits for the backend's requests.
const UPGRADE_GRACE: Duration = Duration::from_secs(5);
/// How long the notification writer gets to end at the end of the session
/// before the connection is aborted under it.
const NOTIFY_GRACE: Duration = Duration::from_secs(1);

/// Where the session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Forwarding.
    Running,
    /// A signal asked to stop; the unmount is under way and the proxy keeps
    /// forwarding (the unmount may flush dirty data) until the kernel ends the
    /// connection.
    Unmounting,
    /// The kernel's side is gone; the backend is being told (DESTROY).
    KernelGone,
    /// The backend is gone.
    BackendGone,
}

/// A message waiting for room on the backend's socket.
// Unboxed on purpose: a box would be an allocation per message, and the
// queue is allocated once at its full size.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy)]
enum Pending {
    Slot(SlotId),
    Injected(Inline),
}

/// What the start-up line needs that only `main` knows.
pub struct Startup {
    /// The effective mount options, as text.
    pub options: String,
    /// The channel, and for `auto` why, as text.
    pub channel: String,
    /// What took effect of mlockall / PR_SET_IO_FLUSHER.
    pub pinning: Pinning,
    /// How long to keep polling without sleeping after traffic.
    pub spin: Duration,
    /// The policy file, when there is one: SIGHUP reloads it.
    pub policy: Option<PolicySource>,
    /// `--trace` / `-vv`: every message decoded on stderr.
    pub trace: bool,
    /// Readers of the kernel's requests (`--threads`).
    pub threads: usize,
    /// `--kernel-transport uring` where this kernel allows it: entries per
    /// queue (`--ring-depth`).
    pub ring_depth: Option<usize>,
}

/// FUSE-over-io_uring toward the kernel, seen from the session. Each of
/// the kernel's queues (one per possible CPU) has its own ring, made by and
/// belonging to its own forwarding thread (`forwarders::ring_thread`),
/// which alone may submit to it.
pub(crate) struct RingState {
    stage: RingStage,
    depth: usize,
    /// By queue: what reaches its thread from the others.
    links: Vec<RingLink>,
    /// Queue threads whose ring is set up.
    ready: usize,
    /// Answers queued for a queue's thread (`commit_later`) and not yet
    /// submitted to its ring: a session that ends waits for them (at most
    /// RING_DRAIN), or their callers would see the abort instead.
    uncommitted: usize,
    /// Requests from the rings waiting for their answer: while there are
    /// none, the first queue's thread receives the backend's messages (its
    /// own requests' answers, the proxy's, notifications), else the threads
    /// holding requests do (see `forwarders`).
    waiting: usize,
}

/// What reaches one queue's thread from the others.
pub(crate) struct RingLink {
    /// Answers for its entries made on another thread (see
    /// `Shared::commit_later`). INVARIANT: capacity is its entry count,
    /// allocated once; an entry has at most one answer.
    backlog: VecDeque<(u32, Msg)>,
    /// Wakes the thread; its ring watches it.
    pub(crate) wake: Arc<EventFd>,
}

/// Where the ring stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RingStage {
    /// Asked for; INIT not answered yet.
    Wanted,
    /// INIT accepted it: the forwarding thread sets it up now (the kernel
    /// holds every new request until it has).
    Start(RingConfig),
    /// Serving the kernel's requests.
    Running,
}

/// One FUSE session: the main thread's poll, and the state every thread
/// shares.
pub struct Session {
    poll: Poll,
    shared: Arc<Locked>,
    /// The first reader's device (the one mounted) and the clones.
    readers: Vec<Arc<File>>,
    socket: Arc<OwnedFd>,
}

/// The session's state and the condition its threads wait on for room
/// (a free slot, an empty queue to the backend, a notification taken back).
pub(crate) struct Locked {
    pub(crate) state: Mutex<Shared>,
    pub(crate) room: Condvar,
}

impl Locked {
    /// The state, also after a thread panicked holding it (its invariants
    /// are those of one message's handling, and ending the session cleanly
    /// matters more than the panicked thread's work).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Everything the session's threads share, under [`Locked`].
pub(crate) struct Shared {
    log: Logger,
    /// The mounted device; `None` once given up (the clones go with it).
    device: Option<Arc<File>>,
    /// The other readers' clones, by reader index - 1.
    clones: Vec<Arc<File>>,
    /// Which reader read each request waiting for its answer (several
    /// readers, or the ring, only).
    origins: Option<Origins>,
    /// `--kernel-transport uring`, until it turns out it cannot be used.
    ring: Option<RingState>,
    /// Requests that came through the ring.
    ring_requests: u64,
    /// Requests read while the backend was being restarted, handed to the
    /// engine again once it takes requests. INVARIANT: capacity the arena's
    /// slot count, allocated once.
    retry: VecDeque<SlotId>,
    /// systemd's notification socket (`NOTIFY_SOCKET`), if any.
    systemd: Option<crate::systemd::Notify>,
    /// When a session whose backend is gone stops waiting for the rings'
    /// answers to be submitted.
    ring_drain_until: Option<std::time::Instant>,
    /// SIGUSR2's upgrade waits for the backend's requests until then.
    upgrade_until: Option<std::time::Instant>,
    /// `--restart`: starts the backend again when it dies.
    restarter: Option<crate::restarter::Restarter>,
    /// The backend died and the main thread is starting it again; its
    /// socket is not read meanwhile.
    relaunching: bool,
    socket: Option<Arc<OwnedFd>>,
    /// To watch the socket for room while `pending` is not empty.
    registry: mio::Registry,
    watching_room: bool,
    waker: Arc<mio::Waker>,
    /// When the main thread wakes by itself next (`None`: not before an
    /// event); a thread that brings a deadline earlier wakes it.
    main_wakes_at: Option<std::time::Instant>,
    /// A forwarding thread changed what the main thread must look at
    /// (the session's phase): wake it.
    wake_main: bool,
    /// Threads waiting on [`Locked::room`].
    pub(crate) waiting: usize,
    /// A forwarding thread's turn: I/O goes to `outbox`, carried out after
    /// the lock is let go.
    defer: bool,
    outbox: Outbox,
    signals: SignalFd,
    engine: Engine,
    arena: Arena,
    mount: Mount,
    backend: Backend,
    startup: Startup,
    clock: std::time::Instant,
    /// Messages for the backend that found its socket full, in order.
    /// INVARIANT: its capacity is the arena's slot count plus the injected
    /// room, allocated once; at most one per slot can be pending.
    pending: VecDeque<Pending>,
    phase: Phase,
    /// The reason the backend is considered gone, once it is.
    backend_end: Option<String>,
    /// Requests the backend left unanswered when it went (answered EIO).
    left_unanswered: usize,
    /// Deadline of the current shutdown step.
    grace_until: Option<std::time::Instant>,
    signalled: u32,
    unmounter: Option<std::thread::JoinHandle<Result<(), Error>>>,
    /// Bad replies already logged, and when the next summary is due.
    bad_reported: u64,
    bad_report_at: Option<std::time::Instant>,
    /// Write errors from the device, counted (not logged per message).
    stale_writes: u64,
    rejected_writes: u64,
    /// Writes the backend's notifications, off this thread.
    notifier: Notifier,
    /// A notification waiting for the writer to give back a slot; the
    /// backend's channel is not read meanwhile. At most one.
    parked: Option<SlotId>,
    /// When `parked` is dropped if no slot has come back.
    park_until: Option<std::time::Instant>,
    /// A notification was dropped after NOTIFY_STALL: the writer is stuck in
    /// the kernel. Until it gives a slot back, notifications that find no
    /// slot are dropped at once.
    notify_stalled: bool,
    /// Notifications dropped because the writer was stuck.
    dropped_notifications: u64,
    /// The mount's FUSE connection (/sys/fs/fuse/connections), once mounted:
    /// to abort it under a writer stuck in the kernel at the end.
    connection: Option<u64>,
    /// The allocation counter at the end of the previous stats dump.
    alloc_mark: u64,
    /// `--record`: the session's messages, through a ring to a writer thread.
    recorder: Option<Recorder>,
    /// `--trace`: each message decoded on stderr (see `trace`).
    trace: Option<crate::trace::Trace>,
    /// Reads the policy file again on SIGHUP, off this thread.
    reloader: Option<Reloader>,
}

impl Session {
    /// Assembles a session around a mount, its device and a started backend:
    /// clones the device for each reader beyond the first and sets up the
    /// main thread's poll. The threads start in [`Session::run`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        log: Logger,
        device: File,
        socket: OwnedFd,
        signals: SignalFd,
        mut engine: Engine,
        arena: Arena,
        mount: Mount,
        backend: Backend,
        mut recorder: Option<Recorder>,
        startup: Startup,
        restarter: Option<crate::restarter::Restarter>,
    ) -> Result<Session, Error> {
        // The capture carries the engine's decisions; without one they are
        // not even queued.
        engine.set_decisions(recorder.is_some() || startup.trace);
        let trace = startup.trace.then(|| crate::trace::Trace::new(log.clone()));
        let threads = startup.threads.max(1);
        check_slots(threads, arena.slots())?;
        // Several readers block in read and recv; one thread polls both
        // (see `forwarders`). Sends stay non-blocking (MSG_DONTWAIT) either
        // way, so a full socket queues instead.
        if threads > 1 {
            crate::forwarders::set_blocking(device.as_fd())
                .and_then(|()| crate::forwarders::set_blocking(socket.as_fd()))
                .map_err(|e| Error::Setup(format!("fcntl: {e}")))?;
        }
        let mut clones = Vec::with_capacity(threads - 1);
        for _ in 1..threads {
            clones.push(Arc::new(device::clone_device(&device).map_err(|e| {
                Error::Device(format!(
                    "cannot clone /dev/fuse for --threads {threads}: {e}"
                ))
            })?));
        }
        let poll = Poll::new().map_err(|e| Error::Setup(format!("epoll: {e}")))?;
        let reg = |fd: i32, token, interest| {
            poll.registry()
                .register(&mut SourceFd(&fd), token, interest)
                .map_err(|e| Error::Setup(format!("epoll_ctl: {e}")))
        };
        reg(signals.as_raw_fd(), SIGNALS, Interest::READABLE)?;
        if let Some(fd) = backend.listener_fd() {
            // Daemons unmount at exit and may run helpers that mount.
            reg(fd, SECCOMP, Interest::READABLE)?;
        }
        if let Some(fd) = backend.guard_fd() {
            reg(fd, GUARD, Interest::READABLE)?;
        }
        let waker = Arc::new(
            mio::Waker::new(poll.registry(), WAKE)
                .map_err(|e| Error::Setup(format!("eventfd: {e}")))?,
        );
        let registry = poll
            .registry()
            .try_clone()
            .map_err(|e| Error::Setup(format!("epoll: {e}")))?;
        let notifier = Notifier::start(&device, arena.slots(), waker.clone())
            .map_err(|e| Error::Setup(format!("notification writer: {e}")))?;
        if let Some(r) = recorder.as_mut() {
            let waker = waker.clone();
            r.start(move || {
                let _ = waker.wake();
            })
            .map_err(|e| Error::Setup(format!("--record writer thread: {e}")))?;
        }
        let reloader = match &startup.policy {
            Some(source) => {
                let waker = waker.clone();
                let wake = move || {
                    let _ = waker.wake();
                };
                Some(
                    Reloader::start(source.clone(), wake)
                        .map_err(|e| Error::Setup(format!("policy reload thread: {e}")))?,
                )
            }
            None => None,
        };
        let pending = VecDeque::with_capacity(arena.slots() + 64);
        let retry = VecDeque::with_capacity(arena.slots());
        // Waiting for an answer at once: what the engine lets in flight and
        // holds, plus one being read by each reader.
        let origins = (threads > 1 || startup.ring_depth.is_some())
            .then(|| Origins::new(engine.waiting_capacity() + arena.slots() + threads));
        let ring = match startup.ring_depth {
            Some(depth) => {
                let queues = crate::kernel_ring::queue_count().map_err(|e| {
                    Error::Setup(format!("counting the kernel's io_uring queues: {e}"))
                })?;
                let mut links = Vec::with_capacity(queues);
                for _ in 0..queues {
                    let wake = EventFd::from_value_and_flags(
                        0,
                        EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
                    )
                    .map_err(|e| Error::Setup(format!("eventfd: {e}")))?;
                    links.push(RingLink {
                        backlog: VecDeque::with_capacity(depth),
                        wake: Arc::new(wake),
                    });
                }
                Some(RingState {
                    stage: RingStage::Wanted,
                    depth,
                    links,
                    ready: 0,
                    uncommitted: 0,
                    waiting: 0,
                })
            }
            None => None,
        };
        let device = Arc::new(device);
        let socket = Arc::new(socket);
        let mut readers = vec![device.clone()];
        readers.extend(clones.iter().cloned());
        let shared = Shared {
            log,
            device: Some(device),
            clones,
            origins,
            ring,
            ring_requests: 0,
            restarter,
            systemd: crate::systemd::Notify::from_env()?,
            ring_drain_until: None,
            upgrade_until: None,
            relaunching: false,
            retry,
            socket: Some(socket.clone()),
            registry,
            watching_room: false,
            waker,
            main_wakes_at: None,
            wake_main: false,
            waiting: 0,
            defer: false,
            outbox: Outbox::default(),
            signals,
            engine,
            arena,
            mount,
            backend,
            startup,
            clock: std::time::Instant::now(),
            pending,
            phase: Phase::Running,
            backend_end: None,
            left_unanswered: 0,
            grace_until: None,
            signalled: 0,
            unmounter: None,
            bad_reported: 0,
            bad_report_at: None,
            stale_writes: 0,
            rejected_writes: 0,
            notifier,
            parked: None,
            park_until: None,
            notify_stalled: false,
            dropped_notifications: 0,
            connection: None,
            alloc_mark: alloc_count::allocations(),
            recorder,
            trace,
            reloader,
        };
        Ok(Session {
            poll,
            shared: Arc::new(Locked {
                state: Mutex::new(shared),
                room: Condvar::new(),
            }),
            readers,
            socket,
        })
    }

    /// Starts the forwarding threads and runs the main thread's loop until
    /// the session ends. `Ok` for an orderly end (signal, umount), `Err`
    /// with the reason when the backend died or something failed.
    pub fn run(self) -> Result<(), Error> {
        let Session {
            mut poll,
            shared,
            readers,
            socket,
        } = self;
        let spin = shared.lock().startup.spin;
        let ring_wakes = shared.lock().ring.as_ref().map_or_else(Vec::new, |r| {
            r.links.iter().map(|l| l.wake.clone()).collect()
        });
        let io = Arc::new(crate::forwarders::Io {
            devices: readers,
            socket,
            ring_wakes,
        });
        if io.devices.len() == 1 {
            let (mine, io) = (shared.clone(), io.clone());
            let started = crate::forwarders::spawn("forward", move || {
                crate::forwarders::forward(&mine, &io, spin)
            });
            if let Err(e) = started {
                return shared.lock().fail_start(e);
            }
        }
        for i in (0..io.devices.len()).filter(|_| io.devices.len() > 1) {
            let (mine, io) = (shared.clone(), io.clone());
            let started = crate::forwarders::spawn(&format!("kernel-{i}"), move || {
                crate::forwarders::read_kernel(&mine, &io, i as u8, spin)
            });
            if let Err(e) = started {
                return shared.lock().fail_start(e);
            }
        }
        if io.devices.len() > 1 {
            let (mine, io) = (shared.clone(), io.clone());
            let started = crate::forwarders::spawn("backend", move || {
                crate::forwarders::read_backend(&mine, &io)
            });
            if let Err(e) = started {
                return shared.lock().fail_start(e);
            }
        }
        let mut events = Events::with_capacity(8);
        loop {
            let timeout = {
                let mut s = shared.lock();
                let at = s.next_wake();
                s.main_wakes_at = at;
                s.wake_main = false;
                at.map(|t| t.saturating_duration_since(std::time::Instant::now()))
            };
            if let Err(e) = poll.poll(&mut events, timeout) {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Error::Setup(format!("epoll_wait: {e}")));
                }
            }
            let mut s = shared.lock();
            // Awake: nobody needs to wake this thread until it sleeps again.
            s.main_wakes_at = Some(std::time::Instant::now());
            for ev in events.iter() {
                match ev.token() {
                    // Room on the socket: flush_pending below.
                    BACKEND => {}
                    SIGNALS => s.handle_signals(),
                    // What came back from the writer is taken by pump().
                    WAKE => {
                        s.policy_reloaded();
                        s.recorder_failed();
                    }
                    // Off the forwarding path: only mount and umount calls.
                    SECCOMP | GUARD => {
                        s.backend.handle_notifications();
                    }
                    t => warn!(s.log, "event for unknown token {}", t.0),
                }
            }
            s.upgrade_if_quiet();
            // Again while a new backend fails at once (bounded by --restart).
            while s.relaunching {
                s.relaunch();
            }
            s.handle_deadlines();
            s.pump();
            if s.waiting > 0 {
                shared.room.notify_all();
            }
            if let Some(end) = s.finished() {
                let result = s.finish(end);
                // Readers waiting for room see the end and return; readers
                // in read(2) got ENODEV or are in a connection that is
                // aborted; the process exits after this.
                shared.room.notify_all();
                return result;
            }
        }
    }
}

impl Shared {
    pub(crate) fn now(&self) -> Instant {
        Instant::from_nanos(self.clock.elapsed().as_nanos() as u64)
    }

    /// A forwarding thread could not be started: end as any failure does.
    fn fail_start(&mut self, e: std::io::Error) -> Result<(), Error> {
        error!(self.log, "cannot start a forwarding thread: {e}");
        self.abort_connection();
        self.kernel_gone();
        let _ = self.finish(Phase::KernelGone);
        Err(Error::Setup(format!("forwarding thread: {e}")))
    }

    /// The earliest of: the engine's deadline, a shutdown step's, the next
    /// bad-reply summary, a parked notification's.
    fn next_wake(&self) -> Option<std::time::Instant> {
        let now = std::time::Instant::now();
        let engine = self.engine.poll_timeout().map(|t| {
            let ns = t.as_nanos().saturating_sub(self.now().as_nanos());
            now + Duration::from_nanos(ns)
        });
        [
            engine,
            self.upgrade_until,
            self.ring_drain_until
                .filter(|_| self.ring_answers_pending()),
            self.grace_until,
            self.bad_report_at,
            self.park_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// After a forwarding thread's turn: wakes the threads waiting for room
    /// (a slot may be free, the queue empty), and the main thread if the
    /// phase changed or a deadline now comes before it would wake.
    pub(crate) fn after_turn(&mut self, room: &Condvar) {
        if self.waiting > 0 {
            room.notify_all();
        }
        let wake = self.wake_main
            || self.finished().is_some()
            || (self.upgrade_until.is_some() && self.engine.is_quiesced())
            || match (self.next_wake(), self.main_wakes_at) {
                (Some(t), Some(at)) => t < at,
                (Some(_), None) => true,
                (None, _) => false,
            };
        if wake {
            self.wake_main = false;
            self.main_wakes_at = Some(std::time::Instant::now());
            let _ = self.waker.wake();
        }
    }

    fn handle_deadlines(&mut self) {
        let wall = std::time::Instant::now();
        let now = self.now();
        if self.engine.poll_timeout().is_some_and(|t| t <= now) {
            self.engine.handle_timeout(now);
            self.run_actions();
        }
        if self.park_until.is_some_and(|t| t <= wall) {
            self.park_until = None;
            self.notify_stall();
        }
        if self.bad_report_at.is_some_and(|t| t <= wall) {
            self.bad_report_at = None;
            self.report_bad_replies();
        }
        if self.grace_until.is_some_and(|t| t <= wall) {
            self.grace_until = None;
            if self.phase == Phase::Unmounting {
                // The mount is detached but still in use: abort the
                // connection.
                warn!(
                    self.log,
                    "the kernel kept the connection {}s after the unmount; aborting it",
                    SHUTDOWN_GRACE.as_secs()
                );
                self.abort_connection();
                self.kernel_gone();
            } else if self.phase == Phase::KernelGone {
                warn!(
                    self.log,
                    "the backend did not answer DESTROY within {}s",
                    SHUTDOWN_GRACE.as_secs()
                );
                self.grace_until = Some(wall);
            }
        }
    }

    /// What the main thread moves: notifications back from their writer,
    /// and messages that waited for room on the socket.
    fn pump(&mut self) {
        while self.notifications_back() | self.flush_pending() {}
    }

    /// Whether a reader of the kernel's requests may take a slot and read:
    /// nothing waits for the socket, the engine has room, a slot stays for
    /// the backend's replies (which free the rest), and the device is live.
    pub(crate) fn may_read_request(&self) -> bool {
        self.pending.is_empty() && self.engine.can_accept_request() && self.arena.free() > 1
    }

    /// Whether readers of the kernel's requests are done: the device is
    /// given up or the connection is over.
    pub(crate) fn readers_done(&self) -> bool {
        self.device.is_none() || matches!(self.phase, Phase::KernelGone | Phase::BackendGone)
    }

    /// Whether the backend's reader is done.
    pub(crate) fn backend_done(&self) -> bool {
        self.backend_end.is_some() || self.socket.is_none()
    }

    /// Whether the backend's reader may take a slot and receive: a parked
    /// notification holds the channel until the writer gives a slot back or
    /// NOTIFY_STALL passes.
    pub(crate) fn may_receive(&self) -> bool {
        self.parked.is_none() && self.arena.free() > 0 && !self.relaunching
    }

    /// A whole slot to read a message into, outside the lock.
    pub(crate) fn take_buffer(&mut self) -> Option<Lent> {
        self.arena.lend_whole()
    }

    /// A slot taken to read into that got nothing.
    pub(crate) fn give_back(&mut self, buf: Lent) {
        let slot = self.arena.reclaim(buf);
        self.arena.release(slot);
    }

    /// A reader of the kernel's requests is back from read(2) with `got`.
    pub(crate) fn request_read(&mut self, buf: Lent, got: Read, reader: Route) {
        let slot = self.arena.reclaim(buf);
        match got {
            Read::Message(n) => {
                self.arena.set_len(slot, n);
                if matches!(reader, Route::Ring(_)) {
                    self.ring_requests += 1;
                    if let Some(r) = self.ring.as_mut() {
                        r.waiting += 1;
                    }
                }
                if let Some(o) = self.origins.as_mut() {
                    let msg = self.arena.msg(slot);
                    if let Some(u) = unique_of(msg).filter(|_| expects_answer(msg)) {
                        o.insert(u.0, reader);
                    }
                }
                if let Some(r) = self.recorder.as_mut() {
                    r.request_from_kernel(self.arena.msg(slot));
                }
                if let Some(t) = self.trace.as_mut() {
                    t.request_from_kernel(self.arena.msg(slot));
                }
                let (now, wall) = (self.now(), wall_clock());
                self.engine
                    .handle_request(now, wall, slot, self.arena.msg_mut(slot));
                self.run_actions();
            }
            Read::WouldBlock | Read::Retry => self.arena.release(slot),
            Read::Gone => {
                self.arena.release(slot);
                self.kernel_gone();
            }
            Read::Failed(e) => {
                self.arena.release(slot);
                if self.device.is_some() {
                    error!(self.log, "reading /dev/fuse failed: {}", e.desc());
                    self.abort_connection();
                }
                self.kernel_gone();
            }
        }
    }

    /// The backend's reader is back from recv(2) with `got`.
    pub(crate) fn reply_received(&mut self, buf: Lent, got: Recv) {
        let slot = self.arena.reclaim(buf);
        match got {
            Recv::Message { len, real_len } => {
                self.arena.set_len(slot, len);
                if let Some(r) = self.recorder.as_mut() {
                    r.reply_from_backend(self.arena.msg(slot));
                }
                if let Some(t) = self.trace.as_mut() {
                    t.reply_from_backend(self.arena.msg(slot));
                }
                let now = self.now();
                self.engine
                    .handle_reply(now, slot, self.arena.msg_mut(slot), real_len);
                self.run_actions();
            }
            Recv::WouldBlock => self.arena.release(slot),
            // The proxy shut the socket itself at the end of the session.
            Recv::Closed(_) if self.socket.is_none() || self.relaunching || self.stale_close() => {
                self.arena.release(slot)
            }
            Recv::Closed(errno) => {
                self.arena.release(slot);
                let how = match errno {
                    None => "closed its channel".to_string(),
                    Some(e) => format!("channel failed ({})", e.desc()),
                };
                self.backend_gone(how);
            }
        }
    }
    /// Sends what waited for room on the socket, in order.
    fn flush_pending(&mut self) -> bool {
        let mut progress = false;
        while let Some(&p) = self.pending.front() {
            match self.send(&p) {
                Some(false) => break,
                Some(true) | None => {
                    if let Some(Pending::Slot(s)) = self.pending.pop_front() {
                        self.arena.release(s);
                    }
                    progress = true;
                }
            }
        }
        if progress {
            // A send that failed may have queued answers.
            self.run_actions();
        }
        if self.pending.is_empty() {
            self.watch_room(false);
        }
        progress
    }

    /// Watches the socket for room in the main thread's poll while messages
    /// wait for it, and only then: a watched socket would wake the main
    /// thread each time the backend reads.
    fn watch_room(&mut self, on: bool) {
        if on == self.watching_room {
            return;
        }
        let Some(fd) = self.socket.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        let mut src = SourceFd(&fd);
        let done = if on {
            self.registry
                .register(&mut src, BACKEND, Interest::WRITABLE)
        } else {
            self.registry.deregister(&mut src)
        };
        match done {
            Ok(()) => self.watching_room = on,
            Err(e) => error!(self.log, "epoll_ctl on the backend's socket: {e}"),
        }
    }

    /// Sends one message: `Some(true)` sent, `Some(false)` socket full,
    /// `None` dropped (the backend is gone, or it can never fit).
    fn send(&mut self, p: &Pending) -> Option<bool> {
        let sock = self.socket.as_ref()?;
        if self.backend_end.is_some() {
            return None;
        }
        let msg = match p {
            Pending::Slot(s) => request_bytes(self.arena.msg(*s)),
            Pending::Injected(i) => i.as_bytes(),
        };
        let outcome = channel::send(sock.as_fd(), msg);
        let unique = unique_if_too_big(outcome, msg);
        self.sent(outcome, msg.len(), unique)
    }

    /// Acts on a send's outcome: `Some(true)` sent, `Some(false)` socket
    /// full, `None` dropped (the backend is gone, or it can never fit).
    fn sent(&mut self, outcome: Send, len: usize, unique: Option<Unique>) -> Option<bool> {
        match outcome {
            Send::Sent => Some(true),
            Send::WouldBlock => Some(false),
            Send::TooBig => {
                // Cannot happen with the forced buffers; answer, never hang.
                error!(
                    self.log,
                    "a {len}-byte message does not fit the backend's socket"
                );
                let now = self.now();
                if let Some(u) = unique {
                    // Its EIO is queued; the caller's run_actions writes it.
                    self.engine.handle_send_failure(now, u);
                }
                None
            }
            Send::Closed(_) if self.socket.is_none() => None,
            Send::Closed(e) => {
                self.backend_gone(format!("channel failed ({})", e.desc()));
                None
            }
        }
    }

    /// Carries out what the turn has deferred so far, under the lock, and
    /// defers nothing more: the session is ending, and its last answers
    /// must reach the kernel before the main thread aborts the connection.
    fn stop_deferring(&mut self) {
        self.defer = false;
        if self.outbox.is_empty() {
            return;
        }
        // Once per session: the one allocation here is not per message.
        let mut out = std::mem::take(&mut self.outbox);
        let socket = self.socket.clone();
        out.carry_out(|r| self.reader_device(r), socket.as_deref(), None);
        self.turn_done(&mut out);
        self.outbox = out;
    }

    /// Starts a forwarding thread's turn: its I/O is deferred.
    pub(crate) fn begin_turn(&mut self) {
        self.defer = true;
    }

    /// Ends the turn: what it deferred moves to the thread's `outbox`.
    pub(crate) fn end_turn(&mut self, outbox: &mut Outbox) {
        self.defer = false;
        std::mem::swap(&mut self.outbox, outbox);
    }

    /// Takes back a turn's I/O, carried out: slots back to the arena,
    /// outcomes counted, sends that found the socket full queued in order,
    /// failures handed to the engine.
    pub(crate) fn turn_done(&mut self, outbox: &mut Outbox) {
        let mut queue_rest = false;
        for item in outbox.drain() {
            match item {
                Item::Write {
                    msg,
                    reader: Route::Ring(entry),
                    done: None,
                } => self.commit_later(entry, msg),
                Item::Write { msg, done, .. } => {
                    if let Some(w) = done {
                        self.count_write(w);
                    }
                    if let Msg::Slot(lent) = msg {
                        let slot = self.arena.reclaim(lent);
                        self.arena.release(slot);
                    }
                }
                Item::Send { msg, done } => {
                    let pending = match msg {
                        Msg::Slot(lent) => Pending::Slot(self.arena.reclaim(lent)),
                        Msg::Inline(i) => Pending::Injected(i),
                        // Sends are requests, never error answers.
                        Msg::Error { .. } => continue,
                    };
                    let sent = match done {
                        Some(outcome) if !queue_rest => {
                            let (len, unique) = {
                                let b = match &pending {
                                    Pending::Slot(s) => request_bytes(self.arena.msg(*s)),
                                    Pending::Injected(i) => i.as_bytes(),
                                };
                                (b.len(), unique_if_too_big(outcome, b))
                            };
                            self.sent(outcome, len, unique)
                        }
                        _ => Some(false),
                    };
                    if sent == Some(false) && self.backend_end.is_none() && self.socket.is_some() {
                        queue_rest = true;
                        self.pending.push_back(pending);
                        self.watch_room(true);
                    } else if let Pending::Slot(s) = pending {
                        self.arena.release(s);
                    }
                }
            }
        }
        // Failed sends may have queued answers.
        self.run_actions();
    }

    fn forward(&mut self, p: Pending) {
        if self.pending.is_empty()
            && self.defer
            && self.outbox.has_room()
            && self.socket.is_some()
            && self.backend_end.is_none()
        {
            let msg = match p {
                Pending::Slot(s) => Msg::Slot(self.arena.lend(s)),
                Pending::Injected(i) => Msg::Inline(i),
            };
            self.outbox.push(Item::Send { msg, done: None });
            return;
        }
        if self.pending.is_empty() && self.send(&p) != Some(false) {
            if let Pending::Slot(s) = p {
                self.arena.release(s);
            }
            return;
        }
        self.pending.push_back(p);
        self.watch_room(true);
    }

    /// The reader that read the request `unique`: its answer must be
    /// written to that reader's device. `take`: this is the answer itself.
    fn reader_of(&mut self, unique: u64, take: bool) -> Route {
        let route = match self.origins.as_mut() {
            Some(o) => o.reader(unique, take).unwrap_or(Route::Reader(0)),
            None => Route::Reader(0),
        };
        if let (Route::Ring(_), true, Some(r)) = (route, take, self.ring.as_mut()) {
            r.waiting = r.waiting.saturating_sub(1);
        }
        route
    }

    /// A reply for a ring entry, from outside the ring's thread (the main
    /// thread, or the end of a session): queued for that thread, which
    /// alone may commit, and the thread woken. Dropped once the ring is
    /// gone: its entries are then out of service.
    fn commit_later(&mut self, entry: u32, msg: Msg) {
        let link = self.ring.as_mut().and_then(|r| {
            let q = entry as usize / r.depth;
            r.links.get_mut(q)
        });
        match link {
            Some(link) if link.backlog.len() < link.backlog.capacity() => {
                link.backlog.push_back((entry, msg));
                let _ = link.wake.write(1);
                if let Some(r) = self.ring.as_mut() {
                    r.uncommitted += 1;
                }
            }
            _ => {
                if let Msg::Slot(lent) = msg {
                    let slot = self.arena.reclaim(lent);
                    self.arena.release(slot);
                }
            }
        }
    }

    /// INIT is answered: the ring is set up next if the kernel took it,
    /// else the session goes on over read(2), saying why in one line.
    fn ring_negotiated(&mut self, flags: u64, offered: u64, max_write: u32, max_pages: u16) {
        let Some(ring) = self.ring.as_mut().filter(|r| r.stage == RingStage::Wanted) else {
            return;
        };
        if flags & flags::FUSE_OVER_IO_URING != 0 {
            // 0: FUSE_MAX_PAGES not in effect, the kernel's default.
            let pages = if max_pages == 0 { 32 } else { max_pages };
            ring.stage = RingStage::Start(RingConfig {
                first_queue: 0,
                queues: ring.links.len(),
                depth: ring.depth,
                payload: fuseproxy_protocol::uring::ring_payload_size(max_write, pages, 4096),
            });
            return;
        }
        let why = if offered & flags::FUSE_OVER_IO_URING == 0 {
            "the kernel did not offer it (fuse.enable_uring was off when the mount was made)"
        } else {
            "the backend's INIT answer could not be made to carry it"
        };
        warn!(
            self.log,
            "FUSE-over-io_uring not used: {why}; requests come through read(2)"
        );
        self.ring = None;
    }

    /// Whether the rings are (still) to be served: not once they have been
    /// given up for read(2).
    pub(crate) fn ring_in_use(&self) -> bool {
        self.ring.is_some()
    }

    /// Whether the first queue's thread should receive the backend's
    /// messages although it holds no request: no ring request is waiting
    /// for its answer, so no other thread is receiving.
    pub(crate) fn rings_idle(&self) -> bool {
        self.ring.as_ref().is_none_or(|r| r.waiting == 0)
    }

    /// The ring the forwarding thread must set up now, once.
    pub(crate) fn ring_to_start(&self) -> Option<RingConfig> {
        match self.ring.as_ref()?.stage {
            RingStage::Start(c) => Some(c),
            _ => None,
        }
    }

    /// A queue thread's attempt at its ring. Refused by the kernel at once,
    /// the connection goes on over /dev/fuse (the kernel says so by
    /// clearing its io_uring mode, and no request has come through any
    /// ring, which is ready only once every queue has entries); any other
    /// failure leaves the kernel holding every request for a ring that
    /// will not come, so the connection is aborted. Returns whether the
    /// thread serves its ring.
    pub(crate) fn ring_started(
        &mut self,
        done: Result<&crate::kernel_ring::KernelRing, crate::kernel_ring::RingError>,
    ) -> bool {
        use crate::kernel_ring::RingError;
        match done {
            Ok(r) => {
                let Some(ring) = self.ring.as_mut() else {
                    // Given up meanwhile by another queue's thread.
                    return false;
                };
                ring.ready += 1;
                if ring.ready == ring.links.len() {
                    ring.stage = RingStage::Running;
                    info!(
                        self.log,
                        "FUSE-over-io_uring: {} queues of {} entries, {} KiB each{}, \
                         one thread per queue",
                        ring.links.len(),
                        ring.depth,
                        r.max_request_len() / 1024,
                        if r.is_locked() {
                            ", locked"
                        } else {
                            ", NOT locked"
                        }
                    );
                }
                return true;
            }
            Err(_) if self.ring.is_none() => {}
            Err(e @ RingError::Register { .. }) => {
                warn!(
                    self.log,
                    "FUSE-over-io_uring not used: {e}; requests come through read(2)"
                );
                self.ring = None;
            }
            Err(e) => {
                error!(
                    self.log,
                    "cannot set up the io_uring the kernel was told to use ({e}); \
                     the connection is aborted"
                );
                self.ring = None;
                self.abort_connection();
                self.kernel_gone();
            }
        }
        false
    }

    /// The ring gave back an entry without a request. Out of service for
    /// good: at the end of the connection that is every entry, and else the
    /// kernel's queue that lost it waits on its other entries.
    pub(crate) fn ring_trouble(&mut self, what: crate::kernel_ring::Arrival) {
        use crate::kernel_ring::Arrival;
        match what {
            Arrival::Gone { entry, why } => {
                debug!(self.log, "io_uring entry {} ended: {why:?}", entry.0)
            }
            Arrival::Failed { entry, errno } => error!(
                self.log,
                "io_uring entry {} failed: {}; it is out of service",
                entry.0,
                std::io::Error::from_raw_os_error(errno)
            ),
            Arrival::Invalid { unique, error, .. } => error!(
                self.log,
                "a request from the io_uring cannot be read ({error:?}); answered EIO (unique {unique:#x})"
            ),
            Arrival::Request { .. } => {}
        }
    }

    /// Waiting on the ring failed: the kernel's requests cannot be taken
    /// any more, so the connection is aborted.
    pub(crate) fn ring_failed(&mut self, e: crate::kernel_ring::RingError) {
        error!(self.log, "io_uring: {e}; the connection is aborted");
        self.abort_connection();
        self.kernel_gone();
    }

    /// Whether answers wait for queue `q`'s thread (see `commit_later`).
    pub(crate) fn has_ring_backlog(&self, q: usize) -> bool {
        self.ring
            .as_ref()
            .and_then(|r| r.links.get(q))
            .is_some_and(|l| !l.backlog.is_empty())
    }

    /// Answers waiting for queue `q`'s thread, moved to its turn's I/O up to
    /// the room there (a turn must have begun: they are carried out at its
    /// end, on that thread).
    /// Returns how many were taken.
    pub(crate) fn take_ring_backlog(&mut self, q: usize) -> usize {
        debug_assert!(self.defer, "outside a turn");
        let Some(link) = self.ring.as_mut().and_then(|r| r.links.get_mut(q)) else {
            return 0;
        };
        let mut n = 0;
        while self.outbox.has_room() {
            let Some((entry, msg)) = link.backlog.pop_front() else {
                break;
            };
            self.outbox.push(Item::Write {
                msg,
                reader: Route::Ring(entry),
                done: None,
            });
            n += 1;
        }
        n
    }

    /// `n` answers taken from a backlog are submitted to their ring.
    pub(crate) fn ring_committed(&mut self, n: usize, room: &Condvar) {
        if let Some(r) = self.ring.as_mut() {
            r.uncommitted = r.uncommitted.saturating_sub(n);
        }
        self.after_turn(room);
    }

    /// Whether answers for the rings still wait to be submitted, and the
    /// session may wait for them.
    fn ring_answers_pending(&self) -> bool {
        self.ring.as_ref().is_some_and(|r| r.uncommitted > 0)
            && self
                .ring_drain_until
                .is_none_or(|t| std::time::Instant::now() < t)
    }

    /// A reader's device, while the device is kept.
    fn reader_device(&self, reader: u8) -> Option<&File> {
        let dev = self.device.as_deref()?;
        Some(match reader {
            0 => dev,
            i => self.clones.get(i as usize - 1).map_or(dev, |c| &**c),
        })
    }

    /// Carries out the engine's actions, then logs its events; then hands
    /// the engine again the requests it asked to retry, once it takes them.
    fn run_actions(&mut self) {
        loop {
            self.carry_out_actions();
            if self.retry.is_empty() || !self.engine.can_accept_request() {
                return;
            }
            while self.engine.can_accept_request() {
                let Some(slot) = self.retry.pop_front() else {
                    break;
                };
                let (now, wall) = (self.now(), wall_clock());
                self.engine
                    .handle_request(now, wall, slot, self.arena.msg_mut(slot));
            }
        }
    }

    fn carry_out_actions(&mut self) {
        let now = self.now();
        while let Some(action) = self.engine.poll_action(now) {
            match action {
                Action::ForwardRequest(slot) => {
                    if let Some(r) = self.recorder.as_mut() {
                        let msg = request_bytes(self.arena.msg(slot));
                        if recorder::may_be_rewritten(msg, self.engine.stats().restarts > 0) {
                            r.request_to_backend(msg, false);
                        }
                    }
                    if let Some(t) = self.trace.as_mut() {
                        t.request_to_backend(request_bytes(self.arena.msg(slot)), false);
                    }
                    self.forward(Pending::Slot(slot))
                }
                Action::Inject(req) => {
                    if let Some(r) = self.recorder.as_mut() {
                        r.request_to_backend(req.as_bytes(), true);
                    }
                    if let Some(t) = self.trace.as_mut() {
                        t.request_to_backend(req.as_bytes(), true);
                    }
                    self.forward(Pending::Injected(req))
                }
                Action::DeliverReply(slot) if unique_of(self.arena.msg(slot)).is_none() => {
                    self.deliver_notification(slot)
                }
                Action::DeliverReply(slot) => {
                    if let Some(slot) = self.write_device_slot(slot) {
                        self.arena.release(slot);
                    }
                }
                Action::Free(slot) => self.arena.release(slot),
                Action::AnswerError { unique, errno } => self.answer_error(unique, errno),
                Action::Answer(reply) => self.write_device(Msg::Inline(reply)),
                Action::Retry(slot) => {
                    // At most one per slot: the queue has a place for each.
                    debug_assert!(self.retry.len() < self.retry.capacity());
                    self.retry.push_back(slot);
                }
            }
            // Drained after each action too: a gone backend's answers come
            // one per poll_action, each with its decision, and the queue
            // keeps the room it was allocated with.
            self.record_decisions();
        }
        self.record_decisions();
        while let Some(ev) = self.engine.poll_event() {
            self.log_event(ev);
        }
    }

    /// Writes the engine's decisions to the capture (they are queued only
    /// when recording). A decision may land just before the message it
    /// concerns (a flush's, recorded as the flush is sent); the capture
    /// tools pair them by unique.
    fn record_decisions(&mut self) {
        while let Some(d) = self.engine.poll_decision() {
            if let Some(r) = self.recorder.as_mut() {
                r.decision(d.unique.0, d.node.0, d.kind.code(), d.detail);
            }
            if let Some(t) = self.trace.as_mut() {
                t.decision(d.unique.0, d.node.0, d.kind.code(), d.detail);
            }
        }
    }

    /// Writes a reply in a slot, or defers it; gives the slot back when it
    /// is done with it (not when deferred: the turn's end releases it).
    fn write_device_slot(&mut self, slot: SlotId) -> Option<SlotId> {
        if self.device.is_none() {
            return Some(slot);
        }
        if let Some(r) = self.recorder.as_mut() {
            r.reply_to_kernel(self.arena.msg(slot), false);
        }
        if let Some(t) = self.trace.as_mut() {
            t.reply_to_kernel(self.arena.msg(slot), false);
        }
        let unique = unique_of(self.arena.msg(slot)).map_or(0, |u| u.0);
        let reader = self.reader_of(unique, true);
        if self.defer && self.outbox.has_room() {
            let msg = Msg::Slot(self.arena.lend(slot));
            self.outbox.push(Item::Write {
                msg,
                reader,
                done: None,
            });
            return None;
        }
        match reader {
            Route::Ring(entry) => {
                let msg = Msg::Slot(self.arena.lend(slot));
                self.commit_later(entry, msg);
                return None;
            }
            Route::Reader(r) => {
                if let Some(dev) = self.reader_device(r) {
                    let outcome = device::write(dev.as_fd(), self.arena.msg(slot));
                    self.count_write(outcome);
                }
            }
        }
        Some(slot)
    }

    /// A notification (unique 0) goes to the writer thread: written here, it
    /// could wait in the kernel for a lock held by a caller that waits for a
    /// reply only this thread can deliver (see `notifier`).
    ///
    /// Why this cannot deadlock on slots: a notification is lent only while
    /// NOTIFY_RESERVE slots stay free, so lent notifications never take the
    /// slots the loop needs to read a request and the backend's reply to it.
    /// Otherwise it is parked (one at most) and the backend's channel is not
    /// read until a slot comes back, which the writer does within
    /// microseconds unless a write is stuck in the kernel. Stuck means waiting
    /// for a reply behind the parked notification on the channel, so after
    /// NOTIFY_STALL the parked one is dropped (counted, logged) and so is
    /// every notification that finds no slot until the writer moves again:
    /// replies keep flowing, and the stuck write ends once they are
    /// delivered. Holding, or writing inline, would hang the mount instead.
    fn deliver_notification(&mut self, slot: SlotId) {
        if self.device.is_none() {
            self.arena.release(slot);
        } else if self.arena.free() >= NOTIFY_RESERVE {
            self.lend_notification(slot);
        } else if self.notify_stalled || self.parked.is_some() {
            self.arena.release(slot);
            self.dropped_notifications += 1;
        } else {
            self.parked = Some(slot);
            self.park_until = Some(std::time::Instant::now() + NOTIFY_STALL);
        }
    }

    fn lend_notification(&mut self, slot: SlotId) {
        if let Some(r) = self.recorder.as_mut() {
            r.reply_to_kernel(self.arena.msg(slot), false);
        }
        if let Some(t) = self.trace.as_mut() {
            t.reply_to_kernel(self.arena.msg(slot), false);
        }
        let lent = self.arena.lend(slot);
        if let Err(lent) = self.notifier.hand(lent) {
            // The writer is closed (the device is being given up) or gone.
            let slot = self.arena.reclaim(lent);
            self.arena.release(slot);
            self.dropped_notifications += 1;
        }
    }

    /// Takes back what the writer has written, counts the outcomes, and
    /// hands it a parked notification if there is room now.
    fn notifications_back(&mut self) -> bool {
        let mut progress = false;
        while let Some((lent, outcome)) = self.notifier.take() {
            let slot = self.arena.reclaim(lent);
            self.arena.release(slot);
            self.count_write(outcome);
            self.notify_stalled = false;
            progress = true;
        }
        if let Some(slot) = self.parked {
            if self.arena.free() >= NOTIFY_RESERVE || self.device.is_none() {
                self.parked = None;
                self.park_until = None;
                self.deliver_notification(slot);
                progress = true;
            }
        }
        progress
    }

    /// No slot came back within NOTIFY_STALL: the writer is stuck in the
    /// kernel, most likely waiting for a reply queued behind the parked
    /// notification. Drop it so that the channel is read again.
    fn notify_stall(&mut self) {
        let Some(slot) = self.parked.take() else {
            return;
        };
        self.arena.release(slot);
        self.dropped_notifications += 1;
        self.notify_stalled = true;
        warn!(
            self.log,
            "a notification has been in the kernel for over {}s ({} waiting behind it); \
             notifications that find no free slot are dropped until it returns ({} so far)",
            NOTIFY_STALL.as_secs(),
            self.notifier.outstanding().saturating_sub(1),
            self.dropped_notifications
        );
    }

    /// Gives up the device: the connection ends once every descriptor of it
    /// is closed (the writer's, and the readers' when they return).
    fn close_device(&mut self) {
        self.device = None;
        self.clones.clear();
        self.notifier.close();
    }

    /// Ends the connection now. Closing descriptors is not enough: readers
    /// blocked in read(2) hold the device open, so through fusectl, which
    /// wakes them with ENODEV. Before the connection is known (INIT not
    /// answered), the unmount that follows ends it.
    fn abort_connection(&mut self) {
        self.close_device();
        if let Some(id) = self.connection {
            match mounting::abort_connection(id) {
                Ok(()) => info!(self.log, "connection {id} aborted through fusectl"),
                Err(e) => debug!(self.log, "aborting connection {id} through fusectl: {e}"),
            }
        }
    }

    /// Ends the writer at the end of the session. A writer stuck in the
    /// kernel keeps the device open, so closing descriptors cannot abort the
    /// connection that would release it: abort it through fusectl.
    fn stop_notifier(&mut self) {
        self.close_device();
        if !self.notifier.wait(NOTIFY_GRACE) {
            match self.connection.map(mounting::abort_connection) {
                Some(Ok(())) => warn!(
                    self.log,
                    "a notification was still in the kernel {}s after the end; \
                     connection aborted through fusectl",
                    NOTIFY_GRACE.as_secs()
                ),
                Some(Err(e)) => error!(
                    self.log,
                    "a notification is stuck in the kernel and the connection \
                     cannot be aborted through fusectl: {e}"
                ),
                None => error!(
                    self.log,
                    "a notification is stuck in the kernel and the mount's connection \
                     is unknown (abort it in /sys/fs/fuse/connections)"
                ),
            }
            if !self.notifier.wait(SHUTDOWN_GRACE) {
                error!(
                    self.log,
                    "the notification writer is still stuck; exiting without it"
                );
            }
        }
        self.notifications_back();
        if let Some(slot) = self.parked.take() {
            self.arena.release(slot);
        }
    }

    fn answer_error(&mut self, unique: Unique, errno: i32) {
        self.write_device(Msg::Error { unique, errno });
    }

    /// Writes a reply the proxy made itself, or defers it.
    fn write_device(&mut self, msg: Msg) {
        if self.device.is_none() {
            return;
        }
        let unique = outbox::with_bytes(&msg, |b| {
            if let Some(r) = self.recorder.as_mut() {
                r.reply_to_kernel(b, true);
            }
            if let Some(t) = self.trace.as_mut() {
                t.reply_to_kernel(b, true);
            }
            unique_of(b).map_or(0, |u| u.0)
        });
        let reader = self.reader_of(unique, true);
        if self.defer && self.outbox.has_room() {
            self.outbox.push(Item::Write {
                msg,
                reader,
                done: None,
            });
            return;
        }
        let r = match reader {
            Route::Ring(entry) => return self.commit_later(entry, msg),
            Route::Reader(r) => r,
        };
        let Some(dev) = self.reader_device(r) else {
            return;
        };
        let outcome = outbox::with_bytes(&msg, |b| device::write(dev.as_fd(), b));
        self.count_write(outcome);
    }

    fn count_write(&mut self, outcome: Write) {
        match outcome {
            Write::Done => {}
            Write::Stale => self.stale_writes += 1,
            Write::Rejected(e) => {
                self.rejected_writes += 1;
                debug!(self.log, "the kernel rejected a reply: {}", e.desc());
            }
            // The readers' next read reports ENODEV and ends the session
            // through the one path that handles it.
            Write::Gone => {}
        }
    }

    fn log_event(&mut self, ev: Event) {
        match ev {
            Event::InitOffered {
                minor,
                offered,
                removed,
            } => {
                debug!(
                    self.log,
                    "kernel offers protocol 7.{minor}, flags {offered:#x}"
                );
                if removed != 0 {
                    info!(
                        self.log,
                        "removed from the kernel's INIT offer (they need the real device): {}",
                        flags::init_flag_names(removed)
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                }
            }
            Event::Negotiated {
                major,
                minor,
                max_write,
                backend_max_write,
                max_readahead,
                backend_max_readahead,
                max_pages,
                backend_max_pages,
                offered,
                answered,
                flags: f,
                masked,
                denied,
                forced,
            } => {
                // Mounted by now, whichever the channel.
                self.connection = mounting::connection_id(self.mount.path());
                let p = self.startup.pinning;
                info!(
                    self.log,
                    "mounted {} ({}), channel {}, backend pid {}, protocol {major}.{minor}, \
                     max_write={max_write}, threads={}, mlockall={}, io_flusher={}, arena={}x{}B{}",
                    self.mount.path().display(),
                    self.startup.options,
                    self.startup.channel,
                    self.backend.pid(),
                    self.startup.threads.max(1),
                    p.mlockall_text(),
                    p.io_flusher_text(),
                    self.arena.slots(),
                    crate::arena::SLOT_SIZE,
                    if self.arena.is_locked() {
                        " locked"
                    } else {
                        " NOT locked"
                    },
                );
                self.ring_negotiated(f, offered, max_write, max_pages);
                self.tell_systemd("READY=1\n");
                if !crate::background::ready() {
                    warn!(
                        self.log,
                        "the mount helper that started the proxy is gone; the mount stays"
                    );
                }
                // The three flag sets in one line; their names only at debug,
                // what the proxy changed by name at info.
                let names = |bits: u64| flags::init_flag_names(bits).collect::<Vec<_>>().join(" ");
                let changes = [
                    ("forced", forced),
                    ("denied", denied),
                    ("masked", masked),
                    // A backend accepting what it was not offered.
                    ("removed from the backend's answer", answered & !f),
                ]
                .iter()
                .filter(|(_, bits)| *bits != 0)
                .map(|(what, bits)| format!("{what}: {}", names(*bits)))
                .collect::<Vec<_>>()
                .join("; ");
                let changes = if changes.is_empty() {
                    String::new()
                } else {
                    format!(" ({changes})")
                };
                info!(
                    self.log,
                    "INIT: kernel offered {offered:#x}, backend answered {answered:#x}, \
                     sent to the kernel {f:#x}{changes}"
                );
                debug!(
                    self.log,
                    "INIT flags offered by the kernel: {}",
                    names(offered)
                );
                debug!(
                    self.log,
                    "INIT flags answered by the backend: {}",
                    names(answered)
                );
                debug!(self.log, "INIT flags sent to the kernel: {}", names(f));
                if backend_max_write != max_write {
                    info!(self.log, "max_write lowered from {backend_max_write} to {max_write} (policy and arena slots)");
                }
                if backend_max_readahead != max_readahead {
                    info!(self.log, "max_readahead lowered from {backend_max_readahead} to {max_readahead} by the policy");
                }
                if backend_max_pages != max_pages {
                    info!(self.log, "max_pages lowered from {backend_max_pages} to {max_pages} (policy and arena slots)");
                }
            }
            Event::FlushFailed {
                node,
                error,
                atime,
                mtime,
                attempts,
            } => {
                // Its caller was answered long ago: the log is all there is.
                let tail = if attempts > 1 {
                    format!("; gave up after {attempts} attempts")
                } else {
                    String::new()
                };
                error!(
                    self.log,
                    "applying times to node {} failed in the backend: {} (atime {}, mtime {}){tail}",
                    node.0,
                    nix::errno::Errno::from_raw(-error).desc(),
                    show_time(atime),
                    show_time(mtime)
                );
            }
            Event::FlushRetrying {
                node,
                error,
                attempts,
                left,
                after,
            } => {
                warn!(
                    self.log,
                    "applying times to node {} failed in the backend: {} (attempt {attempts}); \
                     retrying in {} ms ({left} retries left)",
                    node.0,
                    nix::errno::Errno::from_raw(-error).desc(),
                    after.as_nanos() / 1_000_000
                );
            }
            Event::BackendRestarting {
                inflight,
                times_pending,
            } => info!(
                self.log,
                "{inflight} requests were with the dead backend (the kernel's answered EIO \
                 unless safe to send again); \
                 time updates of {times_pending} nodes kept for the next"
            ),
            Event::BackendRestarted {
                resent,
                times_pending,
                nodes,
                handles,
                lost_nodes,
                lost_handles,
            } => info!(
                self.log,
                "the new backend answered INIT as the first did and found {nodes} nodes and \
                 {handles} open files again ({lost_nodes} nodes and {lost_handles} open files \
                 lost so far answer ESTALE); going on: {resent} requests the dead one never \
                 answered sent to it again, time updates of {times_pending} nodes sent to it"
            ),
            Event::RestartRefused { why } => {
                self.restarter = None;
                self.backend_gone(format!("was started again, but {why}"));
            }
            Event::TimesLost { nodes } => {
                error!(
                    self.log,
                    "the backend went away before applying the times of {nodes} nodes"
                );
            }
            Event::InitFailed { errno } => {
                error!(self.log, "the backend refused INIT (errno {errno})");
            }
            Event::InjectedReply {
                opcode,
                unique,
                error,
            } => {
                debug!(
                    self.log,
                    "{opcode} {:#x} of the proxy's own answered: {error}", unique.0
                );
            }
            Event::DeadlineExpired {
                unique,
                opcode,
                node,
                errno,
                sent,
            } => {
                debug!(
                    self.log,
                    "{opcode} {:#x} on node {} past its deadline: answered with {}{}",
                    unique.0,
                    node.0,
                    nix::errno::Errno::from_raw(errno).desc(),
                    if sent { "" } else { " (never sent)" }
                );
            }
            Event::LateReply {
                unique,
                opcode,
                error,
                undone,
            } => {
                debug!(
                    self.log,
                    "late reply to {opcode} {:#x} dropped ({error}); {undone} request(s) sent to undo it",
                    unique.0
                );
            }
            Event::BadReply { reason, unique } => {
                let total = self.engine.stats().bad.total();
                if self.bad_reported == 0 {
                    // The first one in detail; later ones as summed counts.
                    match unique {
                        Some(u) => warn!(
                            self.log,
                            "bad reply from the backend ({}); request {:#x} answered with EIO",
                            reason.as_str(),
                            u.0
                        ),
                        None => warn!(
                            self.log,
                            "bad reply from the backend ({}); dropped",
                            reason.as_str()
                        ),
                    }
                    self.bad_reported = total;
                } else if self.bad_report_at.is_none() {
                    self.bad_report_at = Some(std::time::Instant::now() + BAD_REPLY_REPORT);
                }
            }
        }
    }

    fn report_bad_replies(&mut self) {
        let s = self.engine.stats();
        let total = s.bad.total();
        if total > self.bad_reported {
            warn!(
                self.log,
                "{} more bad replies from the backend dropped ({} in all: {})",
                total - self.bad_reported,
                total,
                bad_summary(&s)
            );
            self.bad_reported = total;
        }
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGUSR1) => {
                    self.log_stats();
                    self.tell_systemd("");
                }
                Ok(Signal::SIGUSR2) => self.upgrade_requested(),
                Ok(Signal::SIGCHLD) => {
                    if let Some(st) = self.backend.try_reap() {
                        debug!(
                            self.log,
                            "backend process {} {}",
                            self.backend.pid(),
                            describe(st)
                        );
                    }
                }
                Ok(Signal::SIGHUP) if self.reloader.is_some() => {
                    if let Some(r) = self.reloader.as_mut() {
                        r.request();
                    }
                }
                // Under systemd SIGHUP means reload (`systemctl reload`),
                // never stop.
                Ok(Signal::SIGHUP) if self.systemd.is_some() => {
                    info!(self.log, "SIGHUP: no policy file to reload");
                }
                Ok(sig) => self.stop_requested(sig),
                Err(_) => {}
            }
        }
    }

    /// The reload thread has read the policy file again: put it in force,
    /// or say why not and keep the old one.
    /// The recorder's writer thread stopped on an error (it woke us): say
    /// so once; records are dropped from now on.
    fn recorder_failed(&mut self) {
        if let Some(msg) = self.recorder.as_mut().and_then(Recorder::failure) {
            error!(self.log, "{msg}");
        }
    }

    fn policy_reloaded(&mut self) {
        let Some(loaded) = self.reloader.as_ref().and_then(Reloader::take) else {
            return;
        };
        let file = self
            .startup
            .policy
            .as_ref()
            .and_then(|p| p.path())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match loaded {
            Ok((_, rules)) => {
                if let Some(why) = rules.reload_conflict(self.engine.rules()) {
                    error!(
                        self.log,
                        "SIGHUP: policy {file} not reloaded: {why}; the old policy stays in force"
                    );
                    return;
                }
                let init_changed = rules.init != self.engine.rules().init;
                let old = self.engine.set_rules(rules);
                drop(old);
                info!(
                    self.log,
                    "SIGHUP: policy {file} reloaded; it applies to requests read from now on"
                );
                if init_changed && self.engine.is_initialized() {
                    // INIT happens once per connection.
                    warn!(
                        self.log,
                        "SIGHUP: [init] changed, but INIT was negotiated at mount: the session \
                         keeps what it was given (the new values apply from the next mount)"
                    );
                }
            }
            Err(e) => error!(
                self.log,
                "SIGHUP: policy not reloaded: {e}; the old policy stays in force"
            ),
        }
    }

    fn stop_requested(&mut self, sig: Signal) {
        self.signalled += 1;
        if self.signalled > 1 || self.phase != Phase::Running {
            if self.device.is_some() && self.phase != Phase::BackendGone {
                warn!(self.log, "{} again: aborting the connection", sig.as_str());
                self.abort_connection();
                self.kernel_gone();
            }
            return;
        }
        info!(
            self.log,
            "{}: unmounting {}",
            sig.as_str(),
            self.mount.path().display()
        );
        self.tell_systemd("STOPPING=1\n");
        self.phase = Phase::Unmounting;
        self.grace_until = Some(std::time::Instant::now() + SHUTDOWN_GRACE);
        // In a thread of its own: the unmount may flush dirty pages, which
        // the kernel sends as WRITE requests that this loop must forward.
        self.unmounter = Some(self.mount.unmount_in_background());
    }

    /// The kernel's side of the session has ended (ENODEV, or the proxy
    /// closed the device). Tell the backend with a DESTROY of the proxy's own.
    fn kernel_gone(&mut self) {
        if matches!(self.phase, Phase::KernelGone | Phase::BackendGone) {
            return;
        }
        self.phase = Phase::KernelGone;
        self.stop_deferring();
        self.wake_main = true;
        self.mount.detach();
        let now = self.now();
        self.engine.handle_shutdown(now);
        self.run_actions();
        self.grace_until = Some(std::time::Instant::now() + SHUTDOWN_GRACE);
    }

    fn backend_gone(&mut self, how: String) {
        if self.backend_end.is_some() || self.relaunching {
            return;
        }
        if self.phase == Phase::Running && self.engine.is_initialized() {
            let allowed = self
                .restarter
                .as_mut()
                .map(|r| r.allow(std::time::Instant::now()));
            match allowed {
                Some(Ok(n)) => return self.restart_backend(&how, n),
                Some(Err(why)) => warn!(
                    self.log,
                    "backend (pid {}) {how}; not started again: {why}",
                    self.backend.pid()
                ),
                None => {}
            }
        }
        self.backend_end = Some(how);
        self.ring_drain_until = Some(std::time::Instant::now() + RING_DRAIN);
        self.stop_deferring();
        self.wake_main = true;
        self.left_unanswered = self.engine.inflight();
        let now = self.now();
        self.engine.handle_backend_gone(now);
        self.run_actions();
        if self.phase != Phase::KernelGone {
            self.phase = Phase::BackendGone;
        }
    }

    /// Whether a receive that saw the channel closed saw the old channel of
    /// a restart: a reader blocked in recv(2) when the socket was replaced
    /// stays on the old one until it ends. The one in place then still has
    /// its peer.
    fn stale_close(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let (Some(_), Some(socket)) = (self.restarter.as_ref(), self.socket.as_ref()) else {
            return false;
        };
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::empty())];
        // A closed peer shows as POLLHUP whatever is asked for.
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Sends `state` to systemd with a STATUS= line of the counters.
    fn tell_systemd(&mut self, state: &str) {
        let Some(n) = self.systemd.as_ref() else {
            return;
        };
        let s = self.engine.stats();
        let msg = format!(
            "{state}STATUS=mounted {}; {} requests, {} forwarded, {} answered locally with \
             errors, time updates of {} files pending, {} restarts\n",
            self.mount.path().display(),
            s.requests,
            s.forwarded,
            s.answered_with_error,
            self.engine.pending_times(),
            s.restarts
        );
        if !n.send(&msg) {
            debug!(self.log, "NOTIFY_SOCKET: cannot send {state:?}");
        }
    }

    /// `--restart`: the backend died with the kernel's side live. Its
    /// in-flight requests are answered, reading stops, and the main thread
    /// starts it again (`relaunch`), off the forwarding threads.
    fn restart_backend(&mut self, how: &str, n: u32) {
        self.relaunching = true;
        self.stop_deferring();
        self.wake_main = true;
        // What waited for room on the dead channel is the dead backend's:
        // the engine answers or resends it (in the new backend's ids).
        while let Some(p) = self.pending.pop_front() {
            if let Pending::Slot(s) = p {
                self.arena.release(s);
            }
        }
        self.watch_room(false);
        match n {
            // An upgrade.
            0 => info!(
                self.log,
                "backend (pid {}) {how}; starting it again",
                self.backend.pid()
            ),
            n => warn!(
                self.log,
                "backend (pid {}) {how}; starting it again (restart {n}, {})",
                self.backend.pid(),
                self.restarter
                    .as_ref()
                    .map_or(String::new(), |r| r.describe())
            ),
        }
        let now = self.now();
        self.engine.handle_backend_restarting(now);
        // Its decision (restart_began) goes in the capture before what the
        // restart does: a replay tells the engine of the death there.
        self.record_decisions();
        self.run_actions();
    }

    /// SIGUSR2: replace the backend with a new start of its command. No
    /// request is taken from now on; once nothing is in flight (or after
    /// UPGRADE_GRACE), the old one is ended as a direct unmount would end
    /// it, and the new one started as after a death, without counting
    /// against `--restart`'s limit.
    fn upgrade_requested(&mut self) {
        if self.restarter.is_none() {
            warn!(
                self.log,
                "SIGUSR2 ignored: an upgrade needs --restart on-failure"
            );
            return;
        }
        if self.phase != Phase::Running || self.relaunching || self.upgrade_until.is_some() {
            warn!(
                self.log,
                "SIGUSR2 ignored: the backend is being replaced or the session ends"
            );
            return;
        }
        info!(
            self.log,
            "SIGUSR2: replacing the backend (pid {}) once its requests are answered",
            self.backend.pid()
        );
        let now = self.now();
        self.engine.handle_upgrade(now);
        self.run_actions();
        self.upgrade_until = Some(std::time::Instant::now() + UPGRADE_GRACE);
    }

    /// The upgrade's old backend has nothing in flight, or UPGRADE_GRACE has
    /// passed: end it and start the new one.
    fn upgrade_if_quiet(&mut self) {
        let Some(until) = self.upgrade_until else {
            return;
        };
        let late = std::time::Instant::now() >= until;
        if !self.engine.is_quiesced() && !late {
            return;
        }
        self.upgrade_until = None;
        if late {
            warn!(
                self.log,
                "the backend still had requests after {}s; replacing it anyway (they get EIO)",
                UPGRADE_GRACE.as_secs()
            );
        }
        // Its reads fail with ENODEV, as after a direct unmount; failing
        // that, SIGTERM.
        self.relaunching = true;
        if !self.backend.end_cleanly(&self.log) {
            self.backend.terminate(Duration::from_millis(100));
        }
        let _ = self.backend.stop(SHUTDOWN_GRACE);
        self.relaunching = false;
        self.restart_backend("was ended for an upgrade (SIGUSR2)", 0);
    }

    /// Starts the backend again and puts its channel in place of the old
    /// one (main thread). A failure counts as the new backend's death.
    fn relaunch(&mut self) {
        let old = self.backend.pid();
        if let Some(st) = self.backend.stop(Duration::from_millis(200)) {
            info!(self.log, "backend (pid {old}) {}", describe(st));
        }
        for fd in [self.backend.listener_fd(), self.backend.guard_fd()]
            .into_iter()
            .flatten()
        {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
        let launched = match (self.restarter.as_mut(), self.socket.clone()) {
            (Some(r), Some(socket)) => r.launch(&self.signals).and_then(|(backend, ours)| {
                crate::restarter::replace_socket(&socket, ours).map(|()| backend)
            }),
            _ => Err(Error::Setup("no channel to restart on".into())),
        };
        self.relaunching = false;
        match launched {
            Ok(backend) => {
                self.backend = backend;
                for (fd, token) in [
                    (self.backend.listener_fd(), SECCOMP),
                    (self.backend.guard_fd(), GUARD),
                ] {
                    if let Some(fd) = fd {
                        if let Err(e) =
                            self.registry
                                .register(&mut SourceFd(&fd), token, Interest::READABLE)
                        {
                            error!(self.log, "epoll_ctl on the new backend's listener: {e}");
                        }
                    }
                }
                info!(
                    self.log,
                    "backend started again (pid {}); sending it the kernel's INIT",
                    self.backend.pid()
                );
                let now = self.now();
                self.engine.handle_backend_restarted(now);
                // restart_launched before the INIT it causes (as above).
                self.record_decisions();
                self.run_actions();
            }
            Err(e) => self.backend_gone(format!("could not be started again: {e}")),
        }
    }

    /// Closes the proxy's end of the channel: the backend reads EOF, and the
    /// backend's reader, blocked in recv(2) on the same socket, returns.
    fn close_socket(&mut self) {
        self.watch_room(false);
        if let Some(s) = self.socket.take() {
            let _ = nix::sys::socket::shutdown(s.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }

    fn finished(&self) -> Option<Phase> {
        match self.phase {
            // The EIO answers on their way to the rings go first: the abort
            // that follows would reach their callers before them.
            Phase::BackendGone if self.ring_answers_pending() => None,
            Phase::BackendGone => Some(Phase::BackendGone),
            Phase::KernelGone
                if self.engine.is_shutdown_complete()
                    || self.backend_end.is_some()
                    || self
                        .grace_until
                        .is_some_and(|t| t <= std::time::Instant::now()) =>
            {
                Some(Phase::KernelGone)
            }
            _ => None,
        }
    }

    fn finish(&mut self, end: Phase) -> Result<(), Error> {
        self.tell_systemd("STOPPING=1\n");
        let result = match end {
            Phase::BackendGone => {
                // Every waiting request has been answered (run_actions after
                // handle_backend_gone). Abort the connection so that nothing
                // new waits on a dead backend, then remove the mount.
                self.abort_connection();
                self.stop_notifier();
                self.mount.detach();
                let st = self.backend.stop(Duration::from_millis(500));
                let how = self.backend_end.take().unwrap_or_default();
                let success = st.is_some_and(|s| s.success());
                if success && self.backend.unmounted_itself() {
                    // The daemon unmounted MOUNTPOINT (trapped or through
                    // the stand-in) and ended cleanly, as it does alone
                    // after a signal of its own.
                    info!(
                        self.log,
                        "backend (pid {}) unmounted {} itself and exited with status 0; \
                         mount removed",
                        self.backend.pid(),
                        self.mount.path().display()
                    );
                    Ok(())
                } else if success && self.left_unanswered == 0 && self.engine.is_initialized() {
                    // It ended cleanly with nothing left waiting: its own
                    // decision (a root daemon's umount2 under the fusermount
                    // channel fails in the kernel unseen, then it exits 0).
                    info!(
                        self.log,
                        "backend (pid {}) closed its channel and exited with status 0, \
                         nothing waiting; mount removed",
                        self.backend.pid()
                    );
                    Ok(())
                } else {
                    let msg = match st {
                        Some(st) => format!(
                            "backend (pid {}) {}; {how}",
                            self.backend.pid(),
                            describe(st)
                        ),
                        None => format!("backend (pid {}) {how}", self.backend.pid()),
                    };
                    let when = if self.engine.is_initialized() {
                        ""
                    } else {
                        " before answering INIT"
                    };
                    Err(Error::Backend(format!(
                        "{msg}{when}; {} waiting requests answered with EIO, mount {} removed",
                        self.engine.stats().answered_with_error,
                        self.mount.path().display()
                    )))
                }
            }
            _ => {
                self.stop_notifier();
                // DESTROY is answered (or will not be). The daemon's reads
                // now fail with ENODEV, as after a direct unmount; failing
                // that, SIGTERM. Closing the channel then ends whatever
                // still holds it (a daemonized backend included).
                if !self.backend.end_cleanly(&self.log) {
                    self.backend.terminate(Duration::from_millis(100));
                }
                self.close_socket();
                let st = self.backend.stop(SHUTDOWN_GRACE);
                if let Some(st) = st {
                    info!(
                        self.log,
                        "backend (pid {}) {}",
                        self.backend.pid(),
                        describe(st)
                    );
                }
                Ok(())
            }
        };
        if let Some(h) = self.unmounter.take() {
            if h.is_finished() {
                if let Ok(Err(e)) = h.join() {
                    warn!(self.log, "{e}");
                }
            }
        }
        self.report_bad_replies();
        self.log_stats();
        if let Some(r) = self.recorder.take() {
            let path = r.path().display().to_string();
            match r.finish() {
                Ok(w) => {
                    let where_ = match &w.files {
                        Some((first, last)) => format!("files {first} to {last}"),
                        None => path,
                    };
                    if w.dropped > 0 {
                        warn!(
                            self.log,
                            "recorded {} messages to {where_} ({} bytes); {} were dropped \
                             because the writer fell behind (the ring of --record-size was full)",
                            w.records,
                            w.bytes,
                            w.dropped
                        );
                    } else {
                        info!(
                            self.log,
                            "recorded {} messages to {where_} ({} bytes)", w.records, w.bytes
                        );
                    }
                    if w.undeleted > 0 {
                        warn!(
                            self.log,
                            "{} old --record files could not be deleted", w.undeleted
                        );
                    }
                }
                // The session's own failure, if any, is the last line;
                // this one is logged before it.
                Err(e) if result.is_err() => error!(self.log, "{e}"),
                Err(e) => return Err(e),
            }
        }
        result
    }

    fn log_stats(&mut self) {
        let allocations = alloc_count::allocations() - self.alloc_mark;
        let s = self.engine.stats();
        info!(
            self.log,
            "stats: requests={} forwarded={} replies={} notifications={} answered_with_error={} \
             injected={} bad_replies={} inflight={} free_slots={}/{} stale_writes={} rejected_writes={} \
             dropped_notifications={} stale_interrupt_replies={} ring_requests={} \
             times_acked={} times_coalesced={} times_forwarded={} times_flushes={} times_flush_errors={} \
             times_flush_moot={} times_pending={} held={} cache_clears={} denied={} faulted={} delayed={} \
             deadlines_hit={} late_replies={} flush_retries={} flush_gave_up={} init_rewrites={} \
             writeback_opens={} cache_changed={} negative_entries={} reloads={} \
             recorded={} record_dropped={} allocations={allocations}",
            s.requests,
            s.forwarded,
            s.replies,
            s.notifications,
            s.answered_with_error,
            s.injected,
            s.bad.total(),
            self.engine.inflight(),
            self.arena.free(),
            self.arena.slots(),
            self.stale_writes,
            self.rejected_writes,
            self.dropped_notifications,
            s.stale_interrupt_replies,
            self.ring_requests,
            s.times.acked_locally,
            s.times.coalesced,
            s.times.forwarded_sync,
            s.times.flushes,
            s.times.flush_errors,
            s.times.flush_moot,
            self.engine.pending_times(),
            s.times.held,
            s.times.cache_clears,
            s.policy.denied,
            s.policy.faulted,
            s.policy.delayed,
            s.policy.deadlines_hit,
            s.policy.late_replies,
            s.policy.flush_retries,
            s.policy.flush_gave_up,
            s.policy.init_rewrites,
            s.policy.writeback_opens,
            s.policy.cache_changed,
            s.policy.negative_entries,
            s.policy.reloads,
            self.recorder.as_ref().map_or(0, Recorder::records),
            self.recorder.as_ref().map_or(0, Recorder::dropped),
        );
        self.alloc_mark = alloc_count::allocations();
    }
}

fn show_time(t: Option<(i64, u32)>) -> String {
    match t {
        Some((s, ns)) => format!("{s}.{ns:09}"),
        None => "unchanged".into(),
    }
}

/// CLOCK_REALTIME, to resolve UTIME_NOW as the backend would have.
fn wall_clock() -> (i64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

/// The fewest arena slots `threads` readers run with: one each, one for
/// the backend's replies, the notification reserve, and one spare.
pub fn least_slots(threads: usize) -> usize {
    threads + 1 + NOTIFY_RESERVE + 1
}

/// Each reader of the kernel keeps a slot while it waits, the backend's
/// reader one, and the notification writer needs its reserve: an arena too
/// small for `threads` readers is refused before anything is mounted.
pub fn check_slots(threads: usize, slots: usize) -> Result<(), Error> {
    let least = least_slots(threads);
    if slots < least {
        return Err(Error::Setup(format!(
            "--threads {threads} needs an arena of at least {least} slots \
             (--arena-size {}M or more); --arena-size gives {slots}",
            least + least.div_ceil(256)
        )));
    }
    Ok(())
}

/// The unique of a request that can never fit the socket, which the engine
/// must answer; parsed only then, not for every send.
fn unique_if_too_big(outcome: Send, msg: &[u8]) -> Option<Unique> {
    (outcome == Send::TooBig)
        .then(|| Request::parse(msg).map(|r| r.unique()).ok())
        .flatten()
}

/// Whether the kernel waits for an answer to this request (FORGET and
/// BATCH_FORGET get none; an INTERRUPT's answer is its request's).
fn expects_answer(msg: &[u8]) -> bool {
    use zerocopy::FromBytes;
    fuseproxy_protocol::abi::InHeader::read_from_prefix(msg)
        .is_ok_and(|(h, _)| fuseproxy_protocol::Opcode::from(h.opcode).needs_reply())
}

/// A request as its header says: the engine may have shortened it in place
/// (BATCH_FORGET), and the header's `len` is authoritative once parsed.
pub(crate) fn request_bytes(msg: &[u8]) -> &[u8] {
    let len = msg
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map_or(msg.len(), |b| u32::from_ne_bytes(b) as usize);
    &msg[..len.min(msg.len())]
}

fn bad_summary(s: &Stats) -> String {
    let b = &s.bad;
    format!(
        "unknown unique {}, short header {}, length mismatch {}, error out of range {}, \
         error with body {}, oversized {}",
        b.unknown_unique,
        b.short_header,
        b.length_mismatch,
        b.bad_error,
        b.error_with_body,
        b.oversized
    )
}
