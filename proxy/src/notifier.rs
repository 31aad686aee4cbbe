//! The notification writer: a thread that writes the backend's
//! notifications (unique 0) to /dev/fuse, so that the loop never waits on
//! one.
//!
//! The kernel carries out some notifications inside write(2) and takes locks
//! to do so: FUSE_NOTIFY_INVAL_ENTRY and FUSE_NOTIFY_DELETE take the parent
//! directory's inode lock (fuse_reverse_inval_entry), FUSE_NOTIFY_INVAL_INODE
//! and FUSE_NOTIFY_STORE may wait for page locks. A caller can hold that lock
//! while it waits for the reply to a request the proxy forwarded (a LOOKUP
//! in that directory holds it shared). Written from the loop, the
//! notification would wait for the caller, and the caller for a reply the
//! blocked loop never reads: the mount hangs. libfuse gives daemons the same
//! rule (fuse_lowlevel.h: notifications must not be sent from the thread
//! that answers requests). Replies are still written by the loop: the kernel
//! never takes such locks to accept one.
//!
//! The loop lends the notification's arena slot ([`crate::arena::Lent`]) over
//! a bounded channel, the writer writes it with its own descriptor of the
//! device and sends it back with the write's outcome over a second one, then
//! wakes the loop. Both channels hold as many messages as the arena has
//! slots, so a send never waits, and std's bounded channel is an array
//! allocated at start: nothing allocates per notification. Notifications
//! keep their order among themselves; a reply may now overtake a
//! notification the backend sent before it (as between a libfuse daemon's
//! notifying thread and its workers).

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Waker;

use crate::arena::Lent;
use crate::device::{self, Write};

/// The writer thread and the two channels to it.
///
/// Lifecycle: [`Notifier::start`] with the session; [`Notifier::hand`] and
/// [`Notifier::take`] while it runs; [`Notifier::close`] when the loop gives
/// up the device, then [`Notifier::wait`] for the thread to end.
pub struct Notifier {
    /// `None` once closed: the writer ends when it has sent back what it has.
    queue: Option<SyncSender<Lent>>,
    returned: Receiver<(Lent, Write)>,
    /// Set by `close`: what is still queued is sent back unwritten.
    closing: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Handed and not yet taken back.
    out: usize,
}

impl Notifier {
    /// Starts the writer with a descriptor of its own for `device` (a dup: one
    /// open file, so the connection ends when both are closed). `slots` is
    /// the arena's slot count; `wake` wakes the loop.
    ///
    /// # Errors
    ///
    /// When the descriptor cannot be duplicated or the thread not started.
    pub fn start(device: &File, slots: usize, wake: Arc<Waker>) -> std::io::Result<Notifier> {
        let device = device.try_clone()?;
        let (queue, incoming) = sync_channel::<Lent>(slots);
        let (done, returned) = sync_channel::<(Lent, Write)>(slots);
        let closing = Arc::new(AtomicBool::new(false));
        let closing_w = Arc::clone(&closing);
        let thread = crate::threads::spawn_started(
            std::thread::Builder::new()
                .name("notify-writer".into())
                // mlockall locks its stack too; a write needs little.
                .stack_size(64 * 1024),
            move || {
                // Ends when the loop drops its sender (close) or its receiver.
                while let Ok(lent) = incoming.recv() {
                    let outcome = if closing_w.load(Ordering::Acquire) {
                        Write::Gone
                    } else {
                        device::write(device.as_fd(), lent.bytes())
                    };
                    // Never full: at most `slots` are lent.
                    if done.send((lent, outcome)).is_err() {
                        break;
                    }
                    let _ = wake.wake();
                }
            },
        )?;
        Ok(Notifier {
            queue: Some(queue),
            returned,
            closing,
            thread: Some(thread),
            out: 0,
        })
    }

    /// Queues a notification for the writer. It comes back from
    /// [`Notifier::take`] once written; `Err` gives it back at once when the
    /// writer is closed or gone.
    pub fn hand(&mut self, lent: Lent) -> Result<(), Lent> {
        let Some(q) = self.queue.as_ref() else {
            return Err(lent);
        };
        match q.try_send(lent) {
            Ok(()) => {
                self.out += 1;
                Ok(())
            }
            Err(TrySendError::Full(l) | TrySendError::Disconnected(l)) => Err(l),
        }
    }

    /// A written (or, after close, skipped) notification with the outcome
    /// of its write, or `None` when none is back yet.
    pub fn take(&mut self) -> Option<(Lent, Write)> {
        let back = self.returned.try_recv().ok()?;
        self.out -= 1;
        Some(back)
    }

    /// Notifications handed and not taken back.
    pub fn outstanding(&self) -> usize {
        self.out
    }

    /// No more notifications: those still queued are sent back unwritten,
    /// and the writer ends (closing its descriptor) once it is idle.
    pub fn close(&mut self) {
        self.closing.store(true, Ordering::Release);
        self.queue = None;
    }

    /// Waits up to `bound` for the writer to end after [`Notifier::close`].
    /// `false`: it is still inside a write (stuck in the kernel).
    pub fn wait(&mut self, bound: Duration) -> bool {
        let until = Instant::now() + bound;
        while let Some(t) = self.thread.as_ref() {
            if t.is_finished() {
                let _ = self.thread.take().map(JoinHandle::join);
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}
