//! The forwarding threads: with several readers (`--threads N`), readers of
//! the kernel's requests, one per device clone, and the reader of the
//! backend's replies; with one, a single thread for both sides.
//!
//! Each reader blocks in its read(2)/recv(2) with a whole arena slot lent to it,
//! then takes the session's lock, hands the message to the engine, carries
//! out the actions (sends to the backend are non-blocking; a full socket
//! queues them for the main thread), and goes back to reading. So a message
//! costs exactly its read, and never a poll or a read that finds nothing.
//!
//! With `--threads 1` (the default up to 4 CPUs) one thread does both
//! sides instead (`forward_both`): it reads whichever descriptor
//! is ready, non-blocking, and sleeps in poll(2) on both when neither is,
//! after `--spin-us` of polling without sleeping. It reads each side
//! until EAGAIN, except while exactly one request is in flight (one caller
//! waiting for the daemon): then it asks poll(2) at once, the next message
//! being that reply (`Shared::read_on`): 7 system calls per request with
//! one caller, not 8.
//!
//! Two threads that each sleep in their read cost two wake-ups per round
//! trip that this one thread, awake between a request and its reply, does
//! not pay; measured here, that made one caller up to 25% slower (create,
//! small writes, tar).
//!
//! A reader first waits (on the session's condition) until it may read: a
//! kernel reader while messages wait for room on the socket, the engine is
//! full, or one slot is all that is left (it stays for the backend's
//! replies, which free the others); the backend's reader while a
//! notification is parked. Readers of the kernel return once the device is
//! given up or the connection has ended (ENODEV); the backend's once the
//! backend is gone or the proxy shut the socket.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::arena::Lent;
use crate::channel;
use crate::device;
use crate::event_loop::{Locked, Shared};
use crate::kernel_ring::{Arrival, KernelRing, RingConfig, RingError};
use crate::origins::Route;
use crate::outbox::Outbox;

/// What a forwarding thread writes and sends to outside the lock: every
/// reader's device (by reader index) and the backend's socket.
pub struct Io {
    pub devices: Vec<std::sync::Arc<File>>,
    pub socket: std::sync::Arc<OwnedFd>,
    /// Wakes each queue's ring thread (`--kernel-transport uring`).
    pub ring_wakes: Vec<std::sync::Arc<nix::sys::eventfd::EventFd>>,
}

/// The end of a turn: the lock is let go, the turn's I/O carried out, and
/// the lock taken again to give back its slots and act on the outcomes.
/// Returns `Shared::read_on` after it.
fn finish_turn(
    shared: &Locked,
    mut s: std::sync::MutexGuard<'_, Shared>,
    outbox: &mut Outbox,
    io: &Io,
    ring: Option<&mut KernelRing>,
) -> bool {
    s.end_turn(outbox);
    if outbox.is_empty() {
        s.after_turn(&shared.room);
        return s.read_on();
    }
    // Waiters and the main thread are told once, after the I/O: its slots
    // are only free then, and a deadline can wait the microseconds it takes.
    drop(s);
    let device = |r: u8| io.devices.get(r as usize).map(|d| &**d);
    outbox.carry_out(device, Some(&io.socket), ring);
    let mut s = shared.lock();
    s.turn_done(outbox);
    s.after_turn(&shared.room);
    s.read_on()
}

/// What one read gave (a message, or why there was none) handed to the
/// engine as a turn; returns `Shared::read_on` after it.
fn take_turn(
    shared: &Locked,
    io: &Io,
    outbox: &mut Outbox,
    buf: Lent,
    got: Got,
    ring: Option<&mut KernelRing>,
) -> bool {
    let mut s = shared.lock();
    s.begin_turn();
    match got {
        Got::Request(r, reader) => s.request_read(buf, r, reader),
        // Received on a socket replaced since: the old backend's.
        Got::Reply(_, swaps) if swaps != s.socket_swaps() => s.give_back(buf),
        Got::Reply(r, _) => s.reply_received(buf, r),
    }
    finish_turn(shared, s, outbox, io, ring)
}

/// What a read gave, and from which side.
#[derive(Clone, Copy)]
enum Got {
    Request(device::Read, Route),
    /// With the swap count of the socket it came from, which may have been
    /// replaced meanwhile (see `Shared::backend_socket`).
    Reply(channel::Recv, u64),
}

/// Stack of each forwarding thread: their frames are the engine's, which
/// keeps its tables on the heap; locked with the rest by mlockall.
const STACK: usize = 256 * 1024;

/// Starts a forwarding thread.
pub fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    let b = std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(STACK);
    crate::threads::spawn_started(b, body).map(drop)
}

/// Clears O_NONBLOCK: the descriptor's reader waits in read(2).
pub fn set_blocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK),
    )
    .map(drop)
}

/// Waits until `fd` is readable or `spin` has passed, without sleeping
/// (`--spin-us`): the next request of a caller in a loop is caught awake.
/// Only the kernel's readers spin: with the backend's reader spinning too,
/// two spinning threads took the CPU the callers and the daemon need (on 2
/// CPUs: CPU per request 4x, every ratio worse), while one spinner gains
/// the wake-up it saves.
fn spin_until_readable(fd: BorrowedFd<'_>, spin: Duration) {
    if spin.is_zero() {
        return;
    }
    let until = Instant::now() + spin;
    let mut pfd = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
    while Instant::now() < until {
        if nix::poll::poll(&mut pfd, nix::poll::PollTimeout::ZERO).unwrap_or(1) > 0 {
            return;
        }
        std::hint::spin_loop();
    }
}

/// A whole slot to read into once `may` allows it, waiting on the session's
/// condition meanwhile, with what `with` reads of the session at the same
/// moment; `None` once `done` says the reader is finished.
fn wait_for_buffer<T>(
    shared: &Locked,
    done: fn(&Shared) -> bool,
    may: fn(&Shared) -> bool,
    with: fn(&Shared) -> T,
) -> Option<(Lent, T)> {
    let mut s = shared.lock();
    loop {
        if done(&s) {
            return None;
        }
        if may(&s) {
            if let Some(b) = s.take_buffer() {
                return Some((b, with(&s)));
            }
        }
        s.waiting += 1;
        s = shared.room.wait(s).unwrap_or_else(|e| e.into_inner());
        s.waiting -= 1;
    }
}

/// One reader of the kernel's requests, on `fd` (reader number `reader`).
pub fn read_kernel(shared: &Locked, io: &Io, reader: u8, spin: Duration) {
    let fd = &*io.devices[reader as usize];
    let mut outbox = Outbox::default();
    let mut spun = false;
    loop {
        let Some((mut buf, ())) = wait_for_buffer(
            shared,
            Shared::readers_done,
            Shared::may_read_request,
            |_| (),
        ) else {
            return;
        };
        if spun {
            spin_until_readable(fd.as_fd(), spin);
        }
        let got = device::read(fd.as_fd(), buf.bytes_mut());
        spun = matches!(got, device::Read::Message(_));
        let got = Got::Request(got, Route::Reader(reader));
        take_turn(shared, io, &mut outbox, buf, got, None);
    }
}

/// The reader of the backend's replies and notifications.
pub fn read_backend(shared: &Locked, io: &Io) {
    let mut outbox = Outbox::default();
    loop {
        let Some((mut buf, (socket, swaps))) = wait_for_buffer(
            shared,
            Shared::backend_done,
            Shared::may_receive,
            Shared::backend_socket,
        ) else {
            return;
        };
        let got = channel::recv(socket.as_fd(), buf.bytes_mut());
        take_turn(shared, io, &mut outbox, buf, Got::Reply(got, swaps), None);
        // Closed: over, unless the backend is being started again.
        if matches!(got, channel::Recv::Closed(_)) && shared.lock().backend_done() {
            return;
        }
    }
}

/// What one attempt at one side gave.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// A message moved.
    Moved,
    /// Nothing to read now.
    Empty,
    /// Not allowed to read now (no slot, the socket full, a notification
    /// parked): try again after a short sleep.
    Held,
    /// This side is over.
    Over,
    /// INIT accepted FUSE-over-io_uring: set the ring up before anything
    /// else.
    Ring(RingConfig),
}

/// Which side a step reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The device.
    Kernel,
    /// The backend's socket.
    Backend,
    /// The backend's socket, unless requests from the rings wait for
    /// answers: their threads receive then (the first queue's thread, when
    /// it holds none itself).
    BackendIfIdle,
}

/// Reads one message from the device or the socket, if allowed; once one
/// moved, `read_on` is `Shared::read_on` after it.
fn step(
    shared: &Locked,
    io: &Io,
    outbox: &mut Outbox,
    side: Side,
    ring: Option<&mut KernelRing>,
    read_on: &mut bool,
) -> Step {
    let kernel = side == Side::Kernel;
    let (mut buf, socket) = {
        let mut s = shared.lock();
        // Over read(2) only: once the rings serve, the other queues' threads
        // may still be setting theirs up.
        if let Some(config) = s.ring_to_start().filter(|_| ring.is_none()) {
            return Step::Ring(config);
        }
        if side == Side::BackendIfIdle && !s.rings_idle() {
            s.home_waits_for_idle();
            return Step::Empty;
        }
        let (done, may) = if kernel {
            (s.readers_done(), s.may_read_request())
        } else {
            (s.backend_done(), s.may_receive())
        };
        if done {
            return Step::Over;
        }
        match may.then(|| s.take_buffer()).flatten() {
            // The socket as `read_backend` takes it: a receive that a
            // relaunch overtakes is dropped, not taken for the new daemon's.
            Some(b) => (b, (!kernel).then(|| s.backend_socket())),
            None => return Step::Held,
        }
    };
    let got = match socket {
        None => Got::Request(
            device::read(io.devices[0].as_fd(), buf.bytes_mut()),
            Route::Reader(0),
        ),
        Some((socket, swaps)) => Got::Reply(channel::recv(socket.as_fd(), buf.bytes_mut()), swaps),
    };
    if matches!(
        got,
        Got::Request(device::Read::WouldBlock, _) | Got::Reply(channel::Recv::WouldBlock, _)
    ) {
        shared.lock().give_back(buf);
        return Step::Empty;
    }
    *read_on = take_turn(shared, io, outbox, buf, got, ring);
    Step::Moved
}

/// The one forwarding thread of `--threads 1`: both sides, on non-blocking
/// descriptors (see the module doc), over read(2) or, once INIT has
/// accepted it, over the kernel's io_uring: then it serves the first queue
/// and starts a thread for each other one.
pub fn forward(shared: &Arc<Locked>, io: &Arc<Io>, spin: Duration) {
    let Some(config) = forward_both(shared, io, spin) else {
        return;
    };
    for q in 1..config.queues {
        let (mine, io) = (shared.clone(), io.clone());
        let started = spawn(&format!("ring-{q}"), move || {
            ring_thread(&mine, &io, spin, config, q)
        });
        if let Err(e) = started {
            // The kernel holds every request until each queue has entries.
            shared
                .lock()
                .ring_started(Err(RingError::Thread(e.raw_os_error().unwrap_or(0))));
        }
    }
    ring_thread(shared, io, spin, config, 0);
    // The rings given up, or failed: the rest over read(2) (they are set
    // up at most once). After an ordinary end both sides are over already.
    let _ = forward_both(shared, io, spin);
}

/// The thread of queue `q`: on its CPU, with its own ring (made on this
/// thread, the only one that may submit to it), for as long as the rings
/// serve.
fn ring_thread(shared: &Locked, io: &Io, spin: Duration, config: RingConfig, q: usize) {
    pin_to_cpu(q);
    let mine = RingConfig {
        first_queue: q,
        queues: 1,
        ..config
    };
    let ring = KernelRing::new(io.devices[0].as_fd(), mine);
    let started = shared.lock().ring_started(ring.as_ref().map_err(|e| *e));
    if let Some(ring) = ring.ok().filter(|_| started) {
        let held = forward_ring(shared, io, spin, ring, q);
        let mut s = shared.lock();
        if held > 0 {
            s.ring_holder_left();
        }
        // Queue 0's thread goes on over read(2), and sleeps on its own CPU.
        if q > 0 {
            s.idle_poll_left(q);
        }
    }
}

/// Keeps the calling thread on `cpu`, whose requests its ring's queue
/// gets: a caller's request, its answer and its next request then pass
/// between threads of one CPU, which costs microseconds, where a hand-off
/// to a sleeping CPU costs tens (see the README). A CPU that is possible
/// but not online refuses; the thread then runs anywhere.
#[allow(unsafe_code)]
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it
    // (it ignores a CPU beyond the set's size), and sched_setaffinity only
    // reads it, for the calling thread (0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Both sides over read(2), until they are over (`None`) or the ring is to
/// be set up.
fn forward_both(shared: &Locked, io: &Io, spin: Duration) -> Option<RingConfig> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut outbox = Outbox::default();
    // Whether each side may have something: tried until it reads nothing,
    // then left to poll(2) to say.
    let (mut kernel_ready, mut backend_ready) = (true, true);
    let mut last = Instant::now();
    let mut read_on = true;
    loop {
        let k = if kernel_ready {
            step(shared, io, &mut outbox, Side::Kernel, None, &mut read_on)
        } else {
            Step::Empty
        };
        if let Step::Ring(config) = k {
            return Some(config);
        }
        let b = if backend_ready {
            step(shared, io, &mut outbox, Side::Backend, None, &mut read_on)
        } else {
            Step::Empty
        };
        if let Step::Ring(config) = b {
            return Some(config);
        }
        if k == Step::Over && b == Step::Over {
            return None;
        }
        let moved = k == Step::Moved || b == Step::Moved;
        if moved {
            last = Instant::now();
        }
        // Unless `read_on`, the next message is the daemon's reply, which
        // takes it a while: poll(2) both sides at once rather than read
        // each until it says EAGAIN.
        let polled = |x: Step| match x {
            Step::Moved if !read_on => Step::Empty,
            x => x,
        };
        let (k, b) = (polled(k), polled(b));
        kernel_ready &= k != Step::Empty;
        backend_ready &= b != Step::Empty;
        if k == Step::Moved || b == Step::Moved {
            continue;
        }
        let timeout = if k == Step::Held || b == Step::Held {
            // Room comes back through the main thread; look again soon.
            PollTimeout::from(1u8)
        } else if last.elapsed() < spin {
            PollTimeout::ZERO
        } else {
            shared.lock().idle_poll_before_sleep(0);
            PollTimeout::NONE
        };
        // Only the sides waiting for data are polled: a side that is over
        // (an aborted device, a shut socket) would report POLLERR/POLLHUP
        // at once, every time.
        let mut fds = [
            PollFd::new(io.devices[0].as_fd(), PollFlags::POLLIN),
            PollFd::new(io.socket.as_fd(), PollFlags::POLLIN),
        ];
        let (first, n) = match (k == Step::Empty, b == Step::Empty) {
            (true, true) => (0, 2),
            (true, false) => (0, 1),
            (false, true) => (1, 1),
            (false, false) => (0, 0),
        };
        if poll(&mut fds[first..first + n], timeout).is_err() {
            continue;
        }
        let woke = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        kernel_ready |= (k == Step::Empty && woke(&fds[0])) || k == Step::Held;
        backend_ready |= (b == Step::Empty && woke(&fds[1])) || b == Step::Held;
    }
}

/// Tokens of the descriptors the ring watches beside its entries.
const WATCH_DEVICE: usize = 0;
const WATCH_SOCKET: usize = 1;
const WATCH_WAKE: usize = 2;

/// Takes the next request the ring has brought, if allowed, and hands it
/// to the engine; first watches the socket again if a restart replaced it
/// since `swaps`, and commits what other threads left for queue `q`.
fn ring_step(
    shared: &Locked,
    io: &Io,
    outbox: &mut Outbox,
    ring: &mut KernelRing,
    q: usize,
    swaps: &mut u64,
) -> Step {
    let mut buf = {
        let mut s = shared.lock();
        if s.socket_swaps() != *swaps {
            *swaps = s.socket_swaps();
            if let Err(e) = ring.rewatch(io.socket.as_fd(), WATCH_SOCKET) {
                s.ring_failed(e);
                return Step::Over;
            }
        }
        if s.has_ring_backlog(q) {
            s.begin_turn();
            let n = s.take_ring_backlog(q);
            finish_turn(shared, s, outbox, io, Some(ring));
            // Submitted now: the session may be waiting for them to end.
            if let Err(e) = ring.flush() {
                shared.lock().ring_failed(e);
            }
            shared.lock().ring_committed(n, &shared.room);
            return Step::Moved;
        }
        if s.readers_done() || !s.ring_in_use() {
            return Step::Over;
        }
        match s.may_read_request().then(|| s.take_buffer()).flatten() {
            Some(b) => b,
            None => return Step::Held,
        }
    };
    match ring.poll_arrival(buf.bytes_mut()) {
        None => {
            shared.lock().give_back(buf);
            Step::Empty
        }
        Some(Arrival::Request { entry, len }) => {
            let got = Got::Request(device::Read::Message(len), Route::Ring(entry.0));
            take_turn(shared, io, outbox, buf, got, Some(ring));
            Step::Moved
        }
        Some(other) => {
            let mut s = shared.lock();
            s.give_back(buf);
            s.ring_trouble(other);
            if let Arrival::Invalid { entry, .. } = other {
                // Answered, or the caller would wait for ever.
                let _ = ring.commit_error(entry, libc::EIO);
            }
            Step::Moved
        }
    }
}

/// Queue `q`'s thread once the kernel's requests come through `ring`: as
/// `forward_both`, with the ring's wait in place of poll(2). One
/// io_uring_enter both sends the answers made since the last one and waits
/// for whatever comes next: a request, a wake-up from another thread, the
/// socket. The backend's messages are received by the threads holding
/// requests (a thread watches the socket while it holds some), and by the
/// first queue's thread while no thread holds any (the answers to the
/// proxy's own requests, notifications); it also reads the device, which
/// still carries FORGET, INTERRUPT and the end of the connection. Returns
/// how many requests the thread still held when its ring ended.
fn forward_ring(shared: &Locked, io: &Io, spin: Duration, mut ring: KernelRing, q: usize) -> usize {
    let home = q == 0;
    let mut outbox = Outbox::default();
    // Read before the socket is watched: a swap after it is seen.
    let mut swaps = shared.lock().socket_swaps();
    if home {
        ring.watch(io.devices[0].as_fd(), WATCH_DEVICE);
        ring.watch(io.socket.as_fd(), WATCH_SOCKET);
    }
    if let Some(w) = io.ring_wakes.get(q) {
        ring.watch(w.as_fd(), WATCH_WAKE);
    }
    let (mut kernel_ready, mut backend_ready) = (home, true);
    let mut last = Instant::now();
    loop {
        let r = ring_step(shared, io, &mut outbox, &mut ring, q, &mut swaps);
        let k = if kernel_ready {
            step(
                shared,
                io,
                &mut outbox,
                Side::Kernel,
                Some(&mut ring),
                &mut true,
            )
        } else {
            Step::Empty
        };
        let side = match (ring.held() > 0, home) {
            (true, _) => Some(Side::Backend),
            (false, true) => Some(Side::BackendIfIdle),
            (false, false) => None,
        };
        let b = match side.filter(|_| backend_ready) {
            Some(side) => step(shared, io, &mut outbox, side, Some(&mut ring), &mut true),
            None => Step::Empty,
        };
        kernel_ready &= k != Step::Empty;
        backend_ready &= b != Step::Empty;
        let over = r == Step::Over && (!home || (k == Step::Over && b == Step::Over));
        if over || (r == Step::Over && !shared.lock().ring_in_use()) {
            // Sends the last answers before the ring goes.
            let _ = ring.wait(0, Some(Duration::ZERO));
            return ring.held();
        }
        if [r, k, b].contains(&Step::Moved) {
            last = Instant::now();
            continue;
        }
        if !home && ring.held() > 0 {
            ring.watch_once(io.socket.as_fd(), WATCH_SOCKET);
        }
        let held = [r, k, b].contains(&Step::Held);
        if !held && last.elapsed() < spin {
            // The answers made since the last wait go first: their callers'
            // next requests are what the spin waits for.
            if let Err(e) = ring.flush() {
                shared.lock().ring_failed(e);
                return ring.held();
            }
            // Spinning reads the ring's shared memory only: a request or a
            // watched descriptor shows as task work waiting.
            let until = last + spin;
            while !ring.has_work() && Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        let timeout = if held {
            // Room comes back through the main thread; look again soon.
            Some(Duration::from_millis(1))
        } else if ring.has_work() {
            Some(Duration::ZERO)
        } else {
            None
        };
        if timeout.is_none() {
            shared.lock().idle_poll_before_sleep(q);
        }
        let min = usize::from(timeout != Some(Duration::ZERO));
        if let Err(e) = ring.wait(min, timeout) {
            shared.lock().ring_failed(e);
            return ring.held();
        }
        let woken = ring.take_woken();
        kernel_ready |= woken & (1 << WATCH_DEVICE) != 0 || k == Step::Held;
        // A wake-up may also say that the rings went idle: the first
        // queue's thread receives again (`home_waits_for_idle`).
        backend_ready |= woken & ((1 << WATCH_SOCKET) | (1 << WATCH_WAKE)) != 0 || b == Step::Held;
        if woken & (1 << WATCH_WAKE) != 0 {
            if let Some(w) = io.ring_wakes.get(q) {
                let _ = w.read();
            }
        }
    }
}
