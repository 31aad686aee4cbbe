//! What a forwarding thread's turn decided to write or send, carried out
//! after the session's lock is let go.
//!
//! A send to the backend wakes the daemon and a write to the device wakes
//! the caller; each takes microseconds, and the daemon's reply often comes
//! back while the sender is still in send(2). Made under the lock, they
//! would keep the other threads waiting for it (measured: three futex calls
//! per request with one caller). So during a turn of a forwarding thread the
//! session lends the message's slot (or copies a small answer) into the
//! outbox, and the thread does the I/O once unlocked, then takes the lock
//! again to give the slots back and act on the outcomes, in the order the
//! engine decided them.
//!
//! Order: the items of one turn are carried out in order, and a send that
//! finds the socket full stops the sends after it, which go to the session's
//! queue behind it. Between threads, I/O of turns that overlap may land in
//! either order, as the kernel's concurrent requests may; what the engine
//! needs ordered (a request held behind a time flush) it holds until the
//! flush is answered, which no reordering of sends can overtake.
//!
//! INVARIANT: `items` never grows past the capacity it was made with (the
//! session checks [`Outbox::has_room`] before pushing, and does the I/O
//! under the lock when there is none), so nothing allocates per message.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use fuseproxy_policies::Inline;
use fuseproxy_protocol::{encode, Unique};

use crate::arena::Lent;
use crate::channel::{self, Send};
use crate::device::{self, Write};
use crate::kernel_ring::{CommitError, EntryId, KernelRing};
use crate::origins::Route;

/// Items one turn may defer; beyond, the rest is done under the lock.
pub const CAPACITY: usize = 32;

/// A message to carry out.
// Unboxed on purpose: a box would be an allocation per message (see the
// INVARIANT above).
#[allow(clippy::large_enum_variant)]
pub enum Msg {
    /// In an arena slot lent for the purpose.
    Slot(Lent),
    /// Made by the engine.
    Inline(Inline),
    /// An error answer to `unique`.
    Error { unique: Unique, errno: i32 },
}

/// One deferred piece of I/O and, once carried out, its outcome.
pub enum Item {
    /// A reply for the device of reader `reader`, or for a ring entry;
    /// `None` when not carried out (device given up, or a ring entry and
    /// this is not the ring's thread).
    Write {
        msg: Msg,
        reader: Route,
        done: Option<Write>,
    },
    /// A request for the backend; `None` when not attempted (a send before
    /// it found the socket full).
    Send { msg: Msg, done: Option<Send> },
}

/// The I/O of one turn.
pub struct Outbox {
    items: Vec<Item>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            items: Vec::with_capacity(CAPACITY),
        }
    }
}

impl Outbox {
    pub fn has_room(&self) -> bool {
        self.items.len() < CAPACITY
    }

    pub fn push(&mut self, item: Item) {
        debug_assert!(self.has_room());
        self.items.push(item);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The items, to take back in order under the lock.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Item> {
        self.items.drain(..)
    }

    /// Does the I/O, outside the lock (or, at the end of a session, under
    /// it). `device(i)` is reader i's device, `socket` the backend's, `ring`
    /// the kernel's io_uring when this is its thread (commits are queued,
    /// and go with the ring's next wait).
    pub fn carry_out<'a>(
        &mut self,
        device: impl Fn(u8) -> Option<&'a File>,
        socket: Option<&OwnedFd>,
        mut ring: Option<&mut KernelRing>,
    ) {
        let mut full = false;
        for item in &mut self.items {
            match item {
                Item::Write { msg, reader, done } => {
                    *done = match *reader {
                        Route::Reader(r) => {
                            device(r).map(|dev| with_bytes(msg, |b| device::write(dev.as_fd(), b)))
                        }
                        // Another queue's entry: its thread commits it.
                        Route::Ring(e) => ring
                            .as_deref_mut()
                            .filter(|ring| ring.owns(EntryId(e)))
                            .map(|ring| with_bytes(msg, |b| commit(ring, e, b))),
                    };
                }
                Item::Send { msg, done } => {
                    let Some(socket) = socket.filter(|_| !full) else {
                        continue;
                    };
                    let outcome = with_bytes(msg, |b| {
                        channel::send(socket.as_fd(), crate::event_loop::request_bytes(b))
                    });
                    full = outcome == Send::WouldBlock;
                    *done = Some(outcome);
                }
            }
        }
    }
}

/// Runs `f` over the message's bytes.
pub fn with_bytes<R>(msg: &Msg, f: impl FnOnce(&[u8]) -> R) -> R {
    match msg {
        Msg::Slot(lent) => f(lent.bytes()),
        Msg::Inline(i) => f(i.as_bytes()),
        Msg::Error { unique, errno } => {
            let mut buf = [0u8; 16];
            let n = encode::encode_error_reply(&mut buf, *unique, *errno).unwrap_or(0);
            f(&buf[..n])
        }
    }
}

/// Commits a reply to ring entry `entry`, with the outcome a write of it to
/// the device would have had. A reply the entry cannot take (the device
/// would have refused it too) is replaced by EIO: a held entry must be
/// committed, or its caller waits forever.
pub fn commit(ring: &mut KernelRing, entry: u32, msg: &[u8]) -> Write {
    let entry = EntryId(entry);
    let refused = match ring.commit(entry, msg) {
        Ok(()) => return Write::Done,
        // Gone with its connection, or already answered.
        Err(CommitError::NotHeld(_)) => return Write::Stale,
        Err(CommitError::Unique { .. }) => nix::errno::Errno::ENOENT,
        Err(CommitError::Reply(_)) => nix::errno::Errno::EINVAL,
    };
    let _ = ring.commit_error(entry, libc::EIO);
    Write::Rejected(refused)
}
