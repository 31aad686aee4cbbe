//! The session's FUSE-over-io_uring state: whether the rings are wanted,
//! being set up or serving, and the answers that reach a queue's thread from
//! the others.
//!
//! Invariants that matter here: only a queue's own forwarding thread submits
//! to its ring, so an answer made anywhere else goes through that queue's
//! backlog (`commit_later`) and the thread is woken; a backlog is allocated
//! once at the queue's entry count and an entry has at most one answer, so
//! queuing never allocates. `RingState::uncommitted` counts the answers not
//! yet submitted: a session whose backend died waits for them (at most
//! RING_DRAIN) before it aborts the connection. Once the rings are given up
//! (`ring` is `None`), their entries are out of service and answers for them
//! are dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar};

use nix::sys::eventfd::{EfdFlags, EventFd};
use slog::{debug, error, info, warn};

use fuseproxy_protocol::flags;

use super::Shared;
use crate::error::Error;
use crate::kernel_ring::RingConfig;
use crate::origins::Route;
use crate::outbox::{Item, Msg};

/// FUSE-over-io_uring toward the kernel, seen from the session. Each of
/// the kernel's queues (one per possible CPU) has its own ring, made by and
/// belonging to its own forwarding thread (`forwarders::ring_thread`),
/// which alone may submit to it.
pub(super) struct RingState {
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
    /// holding requests do (see `forwarders`). Counted up as a request is
    /// read (`request_read`), down as its answer is routed (`reader_of`).
    pub(super) waiting: usize,
    /// The first queue's thread found `waiting` above 0 and left the
    /// socket to the holders: when `waiting` falls to 0 it is woken to
    /// receive again. Else a message that arrived while a holder was the
    /// receiver, and that the holder left behind as its own answer made it
    /// stop, would wait for a next wake-up that may never come (seen: the
    /// answer to DESTROY at the end, after a RELEASE through the ring).
    home_waits_for_idle: bool,
    /// A queue's thread ended holding requests: their answers are received
    /// by the first queue's thread from then on (see `rings_idle`).
    holder_left: bool,
}

/// What reaches one queue's thread from the others.
struct RingLink {
    /// Answers for its entries made on another thread (see
    /// `Shared::commit_later`). INVARIANT: capacity is its entry count,
    /// allocated once; an entry has at most one answer.
    backlog: VecDeque<(u32, Msg)>,
    /// Wakes the thread; its ring watches it.
    wake: Arc<EventFd>,
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

impl RingState {
    /// A link for each of the kernel's queues, each backlog allocated at its
    /// full size (`depth` entries) now, none later.
    pub(super) fn new(depth: usize) -> Result<RingState, Error> {
        let queues = crate::kernel_ring::queue_count()
            .map_err(|e| Error::Setup(format!("counting the kernel's io_uring queues: {e}")))?;
        let mut links = Vec::with_capacity(queues);
        for _ in 0..queues {
            let wake =
                EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                    .map_err(|e| Error::Setup(format!("eventfd: {e}")))?;
            links.push(RingLink {
                backlog: VecDeque::with_capacity(depth),
                wake: Arc::new(wake),
            });
        }
        Ok(RingState {
            stage: RingStage::Wanted,
            depth,
            links,
            ready: 0,
            uncommitted: 0,
            waiting: 0,
            home_waits_for_idle: false,
            holder_left: false,
        })
    }

    /// What wakes each queue's thread, by queue (for `forwarders::Io`).
    pub(super) fn wakes(&self) -> Vec<Arc<EventFd>> {
        self.links.iter().map(|l| l.wake.clone()).collect()
    }
}

impl Shared {
    /// A reply for a ring entry, from outside the ring's thread (the main
    /// thread, or the end of a session): queued for that thread, which
    /// alone may commit, and the thread woken. Dropped once the ring is
    /// gone: its entries are then out of service.
    pub(super) fn commit_later(&mut self, entry: u32, msg: Msg) {
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
    pub(super) fn ring_negotiated(
        &mut self,
        flags: u64,
        offered: u64,
        max_write: u32,
        max_pages: u16,
    ) {
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

    /// How many times the backend's socket was replaced at its number: a
    /// ring thread that sees it change watches the socket again.
    pub(crate) fn socket_swaps(&self) -> u64 {
        self.socket_swaps
    }

    /// Wakes every queue's thread (after the socket was replaced).
    pub(super) fn wake_rings(&self) {
        for link in self.ring.iter().flat_map(|r| &r.links) {
            let _ = link.wake.write(1);
        }
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
        self.ring
            .as_ref()
            .is_none_or(|r| r.waiting == 0 || r.holder_left)
    }

    /// A queue's thread ended (its ring is over) while holding requests:
    /// nobody else would receive their answers, which the backend still
    /// sends (and DESTROY's after them), so the first queue's thread is
    /// woken to receive from now on.
    pub(crate) fn ring_holder_left(&mut self) {
        if let Some(r) = self.ring.as_mut() {
            r.holder_left = true;
            if let Some(home) = r.links.first() {
                let _ = home.wake.write(1);
            }
        }
    }

    /// The first queue's thread does not receive now (`rings_idle` is
    /// false): it is to be woken once it should.
    pub(crate) fn home_waits_for_idle(&mut self) {
        if let Some(r) = self.ring.as_mut() {
            r.home_waits_for_idle = true;
        }
    }

    /// A ring request's answer was routed: the last one wakes the first
    /// queue's thread if it is waiting to receive.
    pub(super) fn ring_request_answered(&mut self) {
        if let Some(r) = self.ring.as_mut() {
            r.waiting = r.waiting.saturating_sub(1);
            if r.waiting == 0 && std::mem::take(&mut r.home_waits_for_idle) {
                if let Some(home) = r.links.first() {
                    let _ = home.wake.write(1);
                }
            }
        }
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
    pub(super) fn ring_answers_pending(&self) -> bool {
        self.ring.as_ref().is_some_and(|r| r.uncommitted > 0)
            && self
                .ring_drain_until
                .is_none_or(|t| std::time::Instant::now() < t)
    }
}
