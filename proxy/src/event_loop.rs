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
//!
//! This file holds the session's state, its start and main loop, and the
//! forwarding path (reads, sends, the engine's actions, writes to the
//! device). The rest of [`Shared`]'s methods are in submodules, one concern
//! each: `ring_session` (FUSE-over-io_uring), `notifications` (the
//! backend's notifications toward their writer), `restart_session`
//! (`--restart` and SIGUSR2), `shutdown` (how the session ends) and
//! `session_log` (log lines, stats, systemd's status). Being children of
//! this module, they see [`Shared`]'s fields, which stay private to it.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use slog::{debug, error, info, warn, Logger};

use fuseproxy_policies::{Action, Engine, Inline, Instant, SlotId};
use fuseproxy_protocol::{unique_of, Request, Unique};

use crate::alloc_count;
use crate::arena::{Arena, Lent};
use crate::backend::{describe, Backend};
use crate::channel::{self, Recv, Send};
use crate::device::{self, Read, Write};
use crate::error::Error;
use crate::memory::Pinning;
use crate::mount::Mount;
use crate::notifier::Notifier;
use crate::origins::{Origins, Route};
use crate::outbox::{self, Item, Msg, Outbox};
use crate::policy_file::{PolicySource, Reloader};
use crate::recorder::{self, Recorder};

mod notifications;
mod restart_session;
mod ring_session;
mod session_log;
mod shutdown;

use notifications::NOTIFY_RESERVE;
use ring_session::RingState;
use shutdown::SHUTDOWN_GRACE;

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
    /// `--cpu-latency`, where the device could be opened.
    pub cpu_latency: Option<crate::cpu_latency::CpuLatency>,
    /// `--idle-poll own`, where it applies.
    pub idle_poll: Option<crate::idle_poll::IdlePoll>,
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
    /// `--idle-poll own`: times its hold followed the forwarding thread to
    /// another CPU (a few system calls each).
    idle_poll_moves: u64,
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
    /// How many times a new backend's socket was put at the socket's number
    /// (`relaunch`): a ring thread that watches the socket watches it again
    /// when this changes (see `KernelRing::rewatch`).
    socket_swaps: u64,
    /// The current backend's socket as a file of its own (a duplicate),
    /// for the blocking reader of `--threads N`: a receive that started on
    /// a socket since replaced (`relaunch` puts the new one at the shared
    /// number) ends on the old file, and its result, tagged with the
    /// `socket_swaps` it was taken at, is dropped instead of being taken for
    /// the new backend's (seen: the old socket's end-of-file made the proxy
    /// shut the new one, then spin on it).
    backend_socket: Arc<OwnedFd>,
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
    connection: Option<crate::mount::Connection>,
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
            Some(depth) => Some(RingState::new(depth)?),
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
            idle_poll_moves: 0,
            restarter,
            systemd: crate::systemd::Notify::from_env()?,
            ring_drain_until: None,
            upgrade_until: None,
            relaunching: false,
            socket_swaps: 0,
            // A close-on-exec duplicate (F_DUPFD_CLOEXEC).
            backend_socket: Arc::new(
                socket
                    .try_clone()
                    .map_err(|e| Error::Setup(format!("duplicating the backend's socket: {e}")))?,
            ),
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
        let ring_wakes = shared
            .lock()
            .ring
            .as_ref()
            .map_or_else(Vec::new, RingState::wakes);
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
                // The CPU held, let go here: the process exits without
                // dropping what the threads share (the guard would too).
                s.startup.idle_poll = None;
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
    /// The backend's current socket (its own file) and the swap count it
    /// belongs to: see `backend_socket`.
    pub(crate) fn backend_socket(&self) -> (Arc<OwnedFd>, u64) {
        (self.backend_socket.clone(), self.socket_swaps)
    }

    pub(crate) fn now(&self) -> Instant {
        Instant::from_nanos(self.clock.elapsed().as_nanos() as u64)
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
            self.startup.cpu_latency.as_ref().and_then(|l| l.check_at()),
            self.startup.idle_poll.as_ref().and_then(|p| p.check_at()),
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

    /// A request came: `--idle-poll`'s hold and `--cpu-latency`'s limit
    /// are kept, or the limit is taken if not held (their release checks
    /// join `next_wake`). A failed write gives the limit up for the
    /// session, in one line.
    fn request_flows(&mut self) {
        if let Some(p) = self.startup.idle_poll.as_mut() {
            p.request_seen();
        }
        if let Some(Err(e)) = self.startup.cpu_latency.as_mut().map(|l| l.request_seen()) {
            self.cpu_latency_failed(e);
        }
    }

    /// `--idle-poll own`: forwarding thread `waiter` (0 over read(2), or
    /// the ring thread of that queue) is about to sleep.
    pub(crate) fn idle_poll_before_sleep(&mut self, waiter: usize) {
        match self
            .startup
            .idle_poll
            .as_mut()
            .map(|p| p.before_sleep(waiter))
        {
            Some(Ok(moved)) => self.idle_poll_moves += u64::from(moved),
            Some(Err(e)) => self.idle_poll_failed(&e),
            None => {}
        }
    }

    /// `--idle-poll own`: forwarding thread `waiter` ends (a ring thread,
    /// the rings given up); the CPU it held goes.
    pub(crate) fn idle_poll_left(&mut self, waiter: usize) {
        if let Some(Err(e)) = self.startup.idle_poll.as_mut().map(|p| p.release(waiter)) {
            self.idle_poll_failed(&e);
        }
    }

    /// A failed system call gives `--idle-poll` up for the session, in one
    /// line (what it held is put back as it is dropped, or by the guard).
    fn idle_poll_failed(&mut self, e: &std::io::Error) {
        warn!(
            self.log,
            "--idle-poll own: {e}; given up, the proxy sleeps without it"
        );
        self.startup.idle_poll = None;
    }

    fn cpu_latency_failed(&mut self, e: std::io::Error) {
        warn!(
            self.log,
            "--cpu-latency: writing {} failed: {e}; given up (the kernel drops the request)",
            crate::cpu_latency::DEVICE
        );
        self.startup.cpu_latency = None;
    }

    fn handle_deadlines(&mut self) {
        let wall = std::time::Instant::now();
        if let Some(Err(e)) = self.startup.cpu_latency.as_mut().map(|l| l.tick(wall)) {
            self.cpu_latency_failed(e);
        }
        if let Some(Err(e)) = self.startup.idle_poll.as_mut().map(|p| p.tick(wall)) {
            self.idle_poll_failed(&e);
        }
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

    /// Whether the one forwarding thread (`--threads 1`) should, after a
    /// message, try both sides again at once rather than poll(2) first.
    /// With exactly one request in flight (one caller, waiting for the
    /// daemon) the next message is that reply, which takes the daemon its
    /// time: a read of either side at once would only say EAGAIN. With
    /// none, the caller's next request (or a FORGET) often follows within
    /// the microseconds a read takes, and a sleep and wake-up cost more
    /// (measured: unlinks slower when the thread polled first then too);
    /// with several, messages are likely waiting; and a ring to start must
    /// be set up before anything else.
    pub(crate) fn read_on(&self) -> bool {
        self.engine.inflight() != 1 || self.ring_to_start().is_some()
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
                self.request_flows();
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
        if let (Route::Ring(_), true) = (route, take) {
            self.ring_request_answered();
        }
        route
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
                        if recorder::may_be_rewritten(msg, self.engine.has_restarted()) {
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

    /// The recorder's writer thread stopped on an error (it woke us): say
    /// so once; records are dropped from now on.
    fn recorder_failed(&mut self) {
        if let Some(msg) = self.recorder.as_mut().and_then(Recorder::failure) {
            error!(self.log, "{msg}");
        }
    }

    /// The reload thread has read the policy file again: put it in force,
    /// or say why not and keep the old one.
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
