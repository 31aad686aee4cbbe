//! `[deadlines]`: how long a request may wait for the backend before its
//! caller is answered with an errno (EIO unless the policy names another).
//!
//! A silent or stuck backend then costs one failed call instead of a hung
//! process. (The kernel's own request timeout, 6.14+, aborts the whole
//! connection instead.)
//!
//! # What the engine does
//! - When a kernel request that expects a reply enters the in-flight table
//!   and its scope's [`DeadlineRule`](crate::rules::DeadlineRule) has a limit
//!   for its opcode, its due time (`now + limit`) and errno are registered in
//!   [`Deadlines`], a fixed-capacity indexed min-heap. The in-flight entry
//!   keeps the heap handle ([`DeadlineId`]), so every way an entry leaves the
//!   table (its reply, a bad reply, a re-send, a send failure, the backend
//!   gone) removes its deadline at once: nothing is deleted lazily, and the
//!   heap never holds more than the requests in flight.
//! - At the due time the request is answered with the errno and its entry is
//!   removed. If it is still held by the engine (behind a flush of times or a
//!   `[fault]` delay), it is taken out of the held list and its arena slot is
//!   freed: the backend never sees it.
//! - A request that had been sent is remembered in [`Expired`], a ring of the
//!   last [`EXPIRED_REMEMBERED`] such requests. Its reply, when it comes, is
//!   dropped and counted as late, not treated as a reply naming an unknown
//!   unique (kernel uniques are never reused, so the ring cannot confuse two
//!   requests). A late *successful* reply may have left state in the backend
//!   that the kernel will never release, because it never saw the reply; the
//!   engine undoes it with requests of its own ([`undo_for`]): a FORGET of
//!   one lookup for a node a LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE or
//!   TMPFILE returned, a RELEASE of the handle an OPEN, CREATE or TMPFILE
//!   returned, a RELEASEDIR of the handle an OPENDIR returned.
//! - The due time and errno are fixed when the request arrives: a reload of
//!   the policy applies to requests read after it.
//!
//! # What it means per opcode
//! - **WRITE** (and every other request that changes something): the caller
//!   gets the errno, but the request has been sent and the backend may still
//!   apply it later; the errno means "not known to have happened", not "did
//!   not happen". The same holds for CREATE, UNLINK, RENAME, SETATTR... Since
//!   the proxy then no longer knows what the backend holds, it empties its
//!   attribute cache (local time answers are made from it) when such a request
//!   expires and again when its late reply comes. A RENAME whose reply comes
//!   late is not followed by the `[[paths]]` table; the node's new name is
//!   learned at its next LOOKUP.
//! - **INIT** is exempt: answering it with an error ends the session.
//! - **DESTROY** is exempt: the session is ending, and the proxy waits for the
//!   backend's answer to its own DESTROY with its own grace period.
//! - **FORGET**, **BATCH_FORGET** (and NOTIFY_REPLY) get no reply, so there is
//!   nothing to wait for and nothing to answer.
//! - **INTERRUPT** gets no reply of its own either; the request it interrupts
//!   keeps its deadline. A reply to an INTERRUPT that comes after the
//!   interrupted request expired is dropped as late.
//! - **The proxy's own requests** (the flushes of acknowledged times, its
//!   FORGETs, RELEASEs and DESTROY) have no deadline: they are asynchronous,
//!   no caller waits on them directly. A kernel request held behind a flush
//!   waits under its *own* deadline, which is what bounds its caller's wait;
//!   past it the request is answered and never sent, and the flush goes on.
//! - A request re-sent by the kernel (`FUSE_UNIQUE_RESEND`) gets a new
//!   deadline from the time it is re-sent.
//!
//! # Limits
//! - At most `capacity` deadlines (the engine sizes it to `max_inflight`, the
//!   kernel requests it lets in flight); a request arriving when it is full,
//!   which only happens when the proxy ignores `can_accept_request`, runs
//!   without a deadline.
//! - The ring remembers the last [`EXPIRED_REMEMBERED`] expired requests; the
//!   late reply of an older one is counted as an unknown unique.
//! - A late READDIRPLUS is dropped without undoing the lookups the backend may
//!   have counted for its entries (libfuse counts one per entry); those stay
//!   until the backend ends.

use fuseproxy_protocol::abi::{EntryOut, OpenOut};
use fuseproxy_protocol::{NodeId, Opcode, Unique};
use zerocopy::FromBytes;

use crate::index_heap::{IndexHeap, Slots, NIL};
use crate::Instant;

/// Expired requests remembered for their late replies.
pub const EXPIRED_REMEMBERED: usize = 4096;

/// Whether requests with `op` never get a deadline, whatever the policy
/// says (see the module doc for why each).
pub fn is_exempt(op: Opcode) -> bool {
    !op.needs_reply() || matches!(op, Opcode::Init | Opcode::Destroy)
}

/// A handle to a registered deadline, kept in the request's in-flight entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineId(u32);

impl DeadlineId {
    /// No deadline.
    pub const NONE: DeadlineId = DeadlineId(u32::MAX);

    /// Whether this names a deadline.
    pub fn is_some(self) -> bool {
        self != DeadlineId::NONE
    }
}

/// One registered deadline.
#[derive(Debug, Clone, Copy)]
struct Node {
    due: Instant,
    unique: Unique,
    errno: i32,
    /// While registered: its position in `heap`. While free: the next
    /// free node, or `u32::MAX`.
    link: u32,
}

/// Due times of requests in flight: an indexed binary min-heap over a fixed
/// pool of nodes. Insert, remove by handle and pop are O(log n); nothing
/// allocates after [`Deadlines::with_capacity`].
pub struct Deadlines {
    /// INVARIANT: `nodes.len()` is the capacity and never changes.
    nodes: Vec<Node>,
    /// Node indices ordered by `(due, unique)`; a node's `link` is its
    /// position there while registered.
    heap: IndexHeap,
    /// Head of the free list through `Node::link`, or `u32::MAX`.
    free: u32,
}

impl Deadlines {
    /// Room for `capacity` deadlines at once; allocates here only.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize - 1);
        let nodes = (0..capacity)
            .map(|i| Node {
                due: Instant::default(),
                unique: Unique(0),
                errno: 0,
                link: if i + 1 < capacity {
                    i as u32 + 1
                } else {
                    u32::MAX
                },
            })
            .collect();
        Deadlines {
            nodes,
            heap: IndexHeap::with_capacity(capacity),
            free: 0,
        }
    }

    /// Deadlines registered.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Registers `unique`'s deadline; `None` when full.
    pub fn insert(&mut self, due: Instant, unique: Unique, errno: i32) -> Option<DeadlineId> {
        if self.free == u32::MAX {
            return None;
        }
        let id = self.free;
        let node = &mut self.nodes[id as usize];
        self.free = node.link;
        *node = Node {
            due,
            unique,
            errno,
            link: NIL,
        };
        self.heap.push(&mut self.nodes[..], id);
        Some(DeadlineId(id))
    }

    /// Removes a registered deadline; `NONE` or a stale handle is ignored.
    pub fn remove(&mut self, id: DeadlineId) {
        if (id.0 as usize) >= self.nodes.len() || !self.heap.holds(&self.nodes[..], id.0) {
            return;
        }
        self.heap.remove(&mut self.nodes[..], id.0);
        self.nodes[id.0 as usize].link = self.free;
        self.free = id.0;
    }

    /// The earliest deadline: (due, unique, errno, handle).
    pub fn peek(&self) -> Option<(Instant, Unique, i32, DeadlineId)> {
        let id = self.heap.first()?;
        let n = &self.nodes[id as usize];
        Some((n.due, n.unique, n.errno, DeadlineId(id)))
    }

    /// Removes every deadline.
    pub fn clear(&mut self) {
        while let Some((.., id)) = self.peek() {
            self.remove(id);
        }
    }
}

impl Slots for [Node] {
    type Key = (Instant, u64);
    fn key(&self, slot: u32) -> (Instant, u64) {
        let n = &self[slot as usize];
        (n.due, n.unique.0)
    }
    fn pos(&self, slot: u32) -> u32 {
        self[slot as usize].link
    }
    fn set_pos(&mut self, slot: u32, pos: u32) {
        self[slot as usize].link = pos;
    }
}

/// A request answered at its deadline after it had been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    /// Its unique.
    pub unique: Unique,
    /// Its opcode, to undo what a late success left in the backend.
    pub opcode: Opcode,
    /// The node it concerned.
    pub node: NodeId,
}

/// The last [`EXPIRED_REMEMBERED`] expired requests, for their late replies.
pub struct Expired {
    /// INVARIANT: length [`EXPIRED_REMEMBERED`]; unique 0 marks a free place.
    ring: Vec<Gone>,
    next: usize,
    /// Places holding a request (not yet taken, not overwritten).
    live: usize,
}

impl Default for Expired {
    fn default() -> Self {
        Expired {
            ring: vec![
                Gone {
                    unique: Unique(0),
                    opcode: Opcode::Getattr,
                    node: NodeId(0),
                };
                EXPIRED_REMEMBERED
            ],
            next: 0,
            live: 0,
        }
    }
}

impl Expired {
    /// Remembers `g`, forgetting the oldest when full.
    pub fn push(&mut self, g: Gone) {
        if self.ring[self.next].unique.0 == 0 {
            self.live += 1;
        }
        self.ring[self.next] = g;
        self.next = (self.next + 1) % self.ring.len();
    }

    /// Takes the request named `unique` out, if remembered. A linear scan,
    /// done only for replies no request in flight claims, and none at all
    /// while nothing has expired.
    pub fn take(&mut self, unique: Unique) -> Option<Gone> {
        if self.live == 0 || unique.0 == 0 {
            return None;
        }
        let at = self.ring.iter().position(|g| g.unique == unique)?;
        self.live -= 1;
        let g = self.ring[at];
        self.ring[at].unique = Unique(0);
        Some(g)
    }

    /// Whether `unique` is remembered (without taking it).
    pub fn contains(&self, unique: Unique) -> bool {
        self.live > 0 && unique.0 != 0 && self.ring.iter().any(|g| g.unique == unique)
    }
}

/// A request of the proxy's own that undoes what a late reply left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undo {
    /// FORGET one lookup of the node.
    Forget(NodeId),
    /// RELEASE (or RELEASEDIR, as `opcode` says) the handle on the node.
    Release {
        /// `Opcode::Release` or `Opcode::Releasedir`.
        opcode: Opcode,
        /// The node the handle is open on.
        node: NodeId,
        /// The handle.
        fh: u64,
    },
}

/// What must be undone after the late successful reply `body` (after the out
/// header) to a request `opcode` on `node`, in the order to send it: a handle
/// is released before the node's lookup is forgotten.
pub fn undo_for(opcode: Opcode, node: NodeId, body: &[u8]) -> [Option<Undo>; 2] {
    let entry = || {
        EntryOut::read_from_prefix(body)
            .ok()
            .map(|(e, _)| e.nodeid)
            .filter(|&n| n != 0)
    };
    let open_at = |at: usize| {
        body.get(at..)
            .and_then(|b| OpenOut::read_from_prefix(b).ok())
            .map(|(o, _)| o.fh)
    };
    match opcode {
        Opcode::Lookup | Opcode::Mknod | Opcode::Mkdir | Opcode::Symlink | Opcode::Link => {
            [entry().map(|n| Undo::Forget(NodeId(n))), None]
        }
        Opcode::Create | Opcode::TmpFile => match entry() {
            Some(n) => [
                open_at(size_of::<EntryOut>()).map(|fh| Undo::Release {
                    opcode: Opcode::Release,
                    node: NodeId(n),
                    fh,
                }),
                Some(Undo::Forget(NodeId(n))),
            ],
            None => [None, None],
        },
        Opcode::Open | Opcode::Opendir => [
            open_at(0).map(|fh| Undo::Release {
                opcode: if opcode == Opcode::Open {
                    Opcode::Release
                } else {
                    Opcode::Releasedir
                },
                node,
                fh,
            }),
            None,
        ],
        _ => [None, None],
    }
}

/// Whether a request with `op` only reads: when one expires, what the proxy
/// knows of the backend's state stays true whether or not it is carried out.
pub fn is_read_only(op: Opcode) -> bool {
    matches!(
        op,
        Opcode::Lookup
            | Opcode::Getattr
            | Opcode::Readlink
            | Opcode::Read
            | Opcode::Statfs
            | Opcode::Getxattr
            | Opcode::Listxattr
            | Opcode::Opendir
            | Opcode::Readdir
            | Opcode::Readdirplus
            | Opcode::Releasedir
            | Opcode::Access
            | Opcode::Getlk
            | Opcode::Bmap
            | Opcode::Poll
            | Opcode::Lseek
            | Opcode::Statx
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuseproxy_protocol::abi::{Attr, EntryOut, OpenOut};
    use zerocopy::IntoBytes;

    fn at(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    /// Pops everything in order, checking the heap's invariants on the way.
    fn drain(d: &mut Deadlines) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some((due, u, _, id)) = d.peek() {
            let held = (0..d.nodes.len() as u32).filter(|&n| d.heap.holds(&d.nodes[..], n));
            assert_eq!(held.clone().count(), d.len());
            for n in held {
                assert!(d.nodes[..].key(n) >= (due, u.0));
            }
            d.remove(id);
            out.push(u.0);
        }
        out
    }

    #[test]
    fn pops_in_due_order_and_removes_by_handle() {
        let mut d = Deadlines::with_capacity(8);
        let dues = [50, 10, 40, 30, 20, 60, 70, 5];
        let ids: Vec<_> = dues
            .iter()
            .map(|&ms| d.insert(at(ms), Unique(ms), 5).unwrap())
            .collect();
        assert!(d.insert(at(1), Unique(1), 5).is_none(), "full");
        d.remove(ids[2]); // 40
        d.remove(ids[7]); // 5, the minimum
        d.remove(ids[7]); // stale: ignored
        d.remove(DeadlineId::NONE);
        assert_eq!(d.len(), 6);
        assert_eq!(drain(&mut d), [10, 20, 30, 50, 60, 70]);
        assert!(d.is_empty());
        // Every node is free again.
        for i in 0..8 {
            d.insert(at(i), Unique(i), 5).unwrap();
        }
        d.clear();
        assert!(d.is_empty() && d.insert(at(1), Unique(1), 5).is_some());
    }

    #[test]
    fn random_interleavings_keep_the_heap_ordered_and_bounded() {
        let mut d = Deadlines::with_capacity(64);
        let mut live: Vec<(u64, DeadlineId)> = Vec::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for round in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if live.len() < 64 && x & 3 != 0 {
                let id = d.insert(at(x % 1000), Unique(round), 5).unwrap();
                live.push((round, id));
            } else if !live.is_empty() {
                let (_, id) = live.swap_remove((x as usize / 3) % live.len());
                d.remove(id);
            }
            assert_eq!(d.len(), live.len());
        }
        let got = drain(&mut d);
        assert_eq!(got.len(), live.len());
    }

    #[test]
    fn the_ring_forgets_the_oldest_and_each_reply_is_taken_once() {
        let mut r = Expired::default();
        let g = |u| Gone {
            unique: Unique(u),
            opcode: Opcode::Read,
            node: NodeId(1),
        };
        assert_eq!(r.take(Unique(2)), None);
        for u in 1..=(EXPIRED_REMEMBERED as u64 + 10) {
            r.push(g(2 * u));
        }
        assert_eq!(r.take(Unique(2)), None, "overwritten");
        assert!(r.contains(Unique(40)));
        assert_eq!(r.take(Unique(40)), Some(g(40)));
        assert_eq!(r.take(Unique(40)), None);
        assert_eq!(r.live, EXPIRED_REMEMBERED - 1);
    }

    #[test]
    fn undo_after_late_successes() {
        let e = EntryOut {
            nodeid: 77,
            attr: Attr::default(),
            ..EntryOut::default()
        };
        let o = OpenOut {
            fh: 9,
            ..OpenOut::default()
        };
        let n = NodeId(3);
        assert_eq!(
            undo_for(Opcode::Lookup, n, e.as_bytes()),
            [Some(Undo::Forget(NodeId(77))), None]
        );
        let mut create = e.as_bytes().to_vec();
        create.extend_from_slice(o.as_bytes());
        assert_eq!(
            undo_for(Opcode::Create, n, &create),
            [
                Some(Undo::Release {
                    opcode: Opcode::Release,
                    node: NodeId(77),
                    fh: 9
                }),
                Some(Undo::Forget(NodeId(77)))
            ]
        );
        assert_eq!(
            undo_for(Opcode::Opendir, n, o.as_bytes()),
            [
                Some(Undo::Release {
                    opcode: Opcode::Releasedir,
                    node: n,
                    fh: 9
                }),
                None
            ]
        );
        // A negative entry (node 0) holds no lookup.
        let neg = EntryOut::default();
        assert_eq!(undo_for(Opcode::Lookup, n, neg.as_bytes()), [None, None]);
        assert_eq!(undo_for(Opcode::Getattr, n, &[0; 104]), [None, None]);
    }

    #[test]
    fn exempt_opcodes() {
        for op in [
            Opcode::Init,
            Opcode::Destroy,
            Opcode::Forget,
            Opcode::BatchForget,
            Opcode::Interrupt,
        ] {
            assert!(is_exempt(op), "{op}");
        }
        assert!(!is_exempt(Opcode::Write));
    }
}
