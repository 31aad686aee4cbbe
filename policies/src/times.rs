//! Time-only SETATTR: one record per node of what was acknowledged locally
//! and not yet applied by the backend.
//!
//! Each node has at most one *pending* record (acknowledged, not sent) and at
//! most one *flushing* record (sent as a SETATTR of the proxy's own, not yet
//! answered). Only one flush per node is ever in flight, so the backend
//! applies a node's updates in the order the kernel sent them, whatever its
//! threading. Records are numbered per node (`gen`); a request that must see
//! the times applied waits for a generation to be done.
//!
//! Capacity is fixed at start: a slab of node states with an index and an
//! intrusive list in acknowledgement order, which gives both the next
//! deadline (oldest first) and the victim when `max_pending` is exceeded.

use fuseproxy_protocol::flags::{
    FATTR_ATIME, FATTR_ATIME_NOW, FATTR_CTIME, FATTR_FH, FATTR_LOCKOWNER, FATTR_MTIME,
    FATTR_MTIME_NOW,
};
use fuseproxy_protocol::{NodeId, Setattr, Unique};

use crate::Instant;

/// A time as the wire carries it: seconds and nanoseconds.
pub type Timespec = (i64, u32);

/// Bits a SETATTR may carry and still be "time-only".
pub const TIME_ONLY_MASK: u32 = FATTR_ATIME
    | FATTR_MTIME
    | FATTR_CTIME
    | FATTR_ATIME_NOW
    | FATTR_MTIME_NOW
    | FATTR_FH
    | FATTR_LOCKOWNER;

/// Bits of which at least one must be present for a SETATTR to be about times.
const TIME_BITS: u32 = FATTR_ATIME | FATTR_MTIME | FATTR_CTIME;

/// Whether a SETATTR only changes times (the masks the kernel sends: 0x460
/// from the flush at close/writeback, 0x430 from utimensat, plus `*_NOW`).
pub fn is_time_only(valid: u32) -> bool {
    valid & !TIME_ONLY_MASK == 0 && valid & TIME_BITS != 0
}

/// The times one or more updates set, without who sent them: all that a
/// flush in flight and the applied record keep (72 bytes, where a whole
/// [`Times`] takes 120; the table holds one of each per node).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamps {
    /// New atime, if any update set it (`*_NOW` resolved at receipt).
    pub atime: Option<Timespec>,
    /// New mtime.
    pub mtime: Option<Timespec>,
    /// New ctime (the kernel's, with FATTR_CTIME).
    pub ctime: Option<Timespec>,
}

impl Stamps {
    /// Per field, `later`'s value if it has one.
    pub fn merge(&mut self, later: &Stamps) {
        self.atime = later.atime.or(self.atime);
        self.mtime = later.mtime.or(self.mtime);
        self.ctime = later.ctime.or(self.ctime);
    }
}

/// The fields of one or more time updates to one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Times {
    /// The times.
    pub stamps: Stamps,
    /// The file handle of the latest update that named one.
    pub fh: Option<u64>,
    /// The lock owner of the latest update that named one.
    pub lock_owner: Option<u64>,
    /// Caller of the latest update, for the header of the flush.
    pub uid: u32,
    /// Its gid.
    pub gid: u32,
    /// Its pid.
    pub pid: u32,
}

impl Times {
    /// The update one SETATTR asks for, with `*_NOW` resolved to `wall`.
    pub fn from_setattr(s: &Setattr<'_>, wall: Timespec, uid: u32, gid: u32, pid: u32) -> Times {
        Times {
            stamps: Stamps {
                atime: if s.atime_now() { Some(wall) } else { s.atime() },
                mtime: if s.mtime_now() { Some(wall) } else { s.mtime() },
                ctime: s.ctime(),
            },
            fh: s.fh().map(|f| f.0),
            lock_owner: s.lock_owner(),
            uid,
            gid,
            pid,
        }
    }

    /// Merges a later update: per field the later value wins, and the
    /// result carries the union of the fields.
    pub fn merge(&mut self, later: &Times) {
        self.stamps.merge(&later.stamps);
        self.fh = later.fh.or(self.fh);
        self.lock_owner = later.lock_owner.or(self.lock_owner);
        self.uid = later.uid;
        self.gid = later.gid;
        self.pid = later.pid;
    }

    /// The `valid` mask of the SETATTR that applies these times.
    pub fn valid(&self) -> u32 {
        let mut v = 0;
        if self.stamps.atime.is_some() {
            v |= FATTR_ATIME;
        }
        if self.stamps.mtime.is_some() {
            v |= FATTR_MTIME;
        }
        if self.stamps.ctime.is_some() {
            v |= FATTR_CTIME;
        }
        if self.fh.is_some() {
            v |= FATTR_FH;
        }
        if self.lock_owner.is_some() {
            v |= FATTR_LOCKOWNER;
        }
        v
    }
}

const NIL: u32 = u32::MAX;

/// What the proxy holds for one node.
#[derive(Debug, Clone, Copy)]
pub struct NodeTimes {
    /// The node.
    pub node: NodeId,
    /// Acknowledged, not yet sent.
    pub pending: Option<Times>,
    /// When the pending record was first acknowledged (its deadline's base).
    pub pending_since: Instant,
    /// Generation of the pending record.
    pub pending_gen: u32,
    /// Sent, awaiting the backend's reply: the flush's unique, times, generation.
    pub flushing: Option<(Unique, Stamps, u32)>,
    /// The last generation the backend has answered.
    pub done_gen: u32,
    /// Someone waits for the pending record: send it as soon as the flush in
    /// flight is answered, instead of at its deadline.
    pub urgent: bool,
    /// FORGET counts the kernel sent while times were outstanding, to be
    /// passed on once they are applied.
    pub deferred_forget: u64,
    /// GETATTRs of this node, and LOOKUPs of a name known to be it, sent to
    /// the backend while this state existed and not yet answered: the
    /// backend may answer them with times from before a flush, so the state
    /// (and `applied`) stays to overlay their replies.
    pub readers: u32,
    /// What the backend has applied since the state was made, for the
    /// replies of those readers.
    pub applied: Option<Stamps>,
    /// Idle, but kept for a listing in flight (the engine's `kept` list).
    pub kept: bool,
    prev: u32,
    next: u32,
    in_list: bool,
}

impl NodeTimes {
    fn new(node: NodeId) -> Self {
        NodeTimes {
            node,
            pending: None,
            pending_since: Instant::default(),
            pending_gen: 0,
            flushing: None,
            done_gen: 0,
            urgent: false,
            deferred_forget: 0,
            readers: 0,
            applied: None,
            kept: false,
            prev: NIL,
            next: NIL,
            in_list: false,
        }
    }

    /// The generation a request arriving now must see applied, if any.
    pub fn barrier_gen(&self) -> Option<u32> {
        if self.pending.is_some() {
            Some(self.pending_gen)
        } else {
            self.flushing.map(|(_, _, g)| g)
        }
    }

    /// The newest times the kernel has been told, field by field: pending
    /// over flushing. What `stat` must show until the backend has them.
    pub fn overlay(&self) -> Stamps {
        let mut t = self.applied.unwrap_or_default();
        if let Some((_, f, _)) = &self.flushing {
            t.merge(f);
        }
        if let Some(p) = &self.pending {
            t.merge(&p.stamps);
        }
        t
    }

    /// Nothing outstanding: the state can go.
    pub fn is_idle(&self) -> bool {
        self.pending.is_none()
            && self.flushing.is_none()
            && self.deferred_forget == 0
            && self.readers == 0
    }
}

/// Node states with a fixed capacity; see the module doc.
pub struct TimesTable {
    slab: Vec<NodeTimes>,
    /// Unused slab indices. INVARIANT: capacity == slab.len().
    free: Vec<u32>,
    /// Open-addressing index node → slab index; 2× the slab, a power of two.
    index: Vec<u32>,
    /// The acknowledgement-ordered list of nodes with a pending record not
    /// yet scheduled (oldest at `head`).
    head: u32,
    tail: u32,
    /// Nodes with a pending record, scheduled or not.
    pending: usize,
}

impl TimesTable {
    /// A table for `capacity` nodes; allocates here only.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let slab = vec![NodeTimes::new(NodeId(0)); capacity];
        let index = vec![NIL; (capacity * 2).next_power_of_two()];
        TimesTable {
            slab,
            free: (0..capacity as u32).rev().collect(),
            index,
            head: NIL,
            tail: NIL,
            pending: 0,
        }
    }

    /// Nodes with a pending (unsent) record.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Nodes with anything outstanding.
    pub fn len(&self) -> usize {
        self.slab.len() - self.free.len()
    }

    /// Whether no node has anything outstanding.
    pub fn is_empty(&self) -> bool {
        self.free.len() == self.slab.len()
    }

    fn mask(&self) -> usize {
        self.index.len() - 1
    }

    fn home(&self, node: NodeId) -> usize {
        (node.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.index.len().trailing_zeros()))
            as usize
            & self.mask()
    }

    fn find(&self, node: NodeId) -> Option<(usize, u32)> {
        let mut i = self.home(node);
        loop {
            let s = self.index[i];
            if s == NIL {
                return None;
            }
            if self.slab[s as usize].node == node {
                return Some((i, s));
            }
            i = (i + 1) & self.mask();
        }
    }

    /// The state of `node`, if it has one.
    pub fn get(&self, node: NodeId) -> Option<&NodeTimes> {
        self.find(node).map(|(_, s)| &self.slab[s as usize])
    }

    /// The state of `node`, to change in place.
    pub fn get_mut(&mut self, node: NodeId) -> Option<&mut NodeTimes> {
        self.find(node).map(|(_, s)| &mut self.slab[s as usize])
    }

    /// The slab index of `node`'s state, created if needed; `None` when the
    /// table is full.
    fn slot_or_insert(&mut self, node: NodeId) -> Option<u32> {
        if let Some((_, s)) = self.find(node) {
            return Some(s);
        }
        let s = self.free.pop()?;
        self.slab[s as usize] = NodeTimes::new(node);
        let mut i = self.home(node);
        while self.index[i] != NIL {
            i = (i + 1) & self.mask();
        }
        self.index[i] = s;
        Some(s)
    }

    /// Drops `node`'s state if it is idle.
    pub fn remove_if_idle(&mut self, node: NodeId) {
        let Some((mut hole, s)) = self.find(node) else {
            return;
        };
        if !self.slab[s as usize].is_idle() {
            return;
        }
        self.unlink(s);
        self.free.push(s);
        self.index[hole] = NIL;
        let mut i = (hole + 1) & self.mask();
        while self.index[i] != NIL {
            let home = self.home(self.slab[self.index[i] as usize].node);
            if (i.wrapping_sub(home) & self.mask()) >= (i.wrapping_sub(hole) & self.mask()) {
                self.index[hole] = self.index[i];
                self.index[i] = NIL;
                hole = i;
            }
            i = (i + 1) & self.mask();
        }
    }

    /// Records a locally acknowledged update. Returns `Some(true)` when it
    /// was merged into an existing pending record (coalesced), `Some(false)`
    /// for a new record, `None` when the table is full.
    pub fn acknowledge(&mut self, now: Instant, node: NodeId, t: &Times) -> Option<bool> {
        let s = self.slot_or_insert(node)?;
        let e = &mut self.slab[s as usize];
        if let Some(p) = &mut e.pending {
            p.merge(t);
            return Some(true);
        }
        e.pending = Some(*t);
        e.pending_since = now;
        e.pending_gen = e.done_gen.max(e.flushing.map_or(0, |(_, _, g)| g)) + 1;
        self.pending += 1;
        self.push_back(s);
        Some(false)
    }

    /// Takes `node`'s pending record to send it, if it has one and no flush
    /// is in flight for it; the caller sends a SETATTR with `unique`.
    pub fn start_flush(&mut self, node: NodeId, unique: Unique) -> Option<Times> {
        let (_, s) = self.find(node)?;
        let e = &mut self.slab[s as usize];
        if e.flushing.is_some() {
            return None;
        }
        let t = e.pending.take()?;
        e.flushing = Some((unique, t.stamps, e.pending_gen));
        e.urgent = false;
        self.pending -= 1;
        self.unlink(s);
        Some(t)
    }

    /// The backend answered `node`'s flush. Returns the times it carried.
    pub fn finish_flush(&mut self, node: NodeId) -> Option<(Stamps, u32)> {
        let e = self.get_mut(node)?;
        let (_, t, g) = e.flushing.take()?;
        e.done_gen = g;
        match &mut e.applied {
            Some(a) => a.merge(&t),
            None => e.applied = Some(t),
        }
        Some((t, g))
    }

    /// Marks `node`'s pending record as wanted now (a flush is in flight, so
    /// it goes when that one is answered) and takes it off the deadline list.
    pub fn make_urgent(&mut self, node: NodeId) {
        if let Some((_, s)) = self.find(node) {
            if self.slab[s as usize].pending.is_some() {
                self.slab[s as usize].urgent = true;
                self.unlink(s);
            }
        }
    }

    /// The node whose pending record was acknowledged first, among those not
    /// yet scheduled, with the time of that acknowledgement.
    pub fn oldest(&self) -> Option<(NodeId, Instant)> {
        (self.head != NIL).then(|| {
            let e = &self.slab[self.head as usize];
            (e.node, e.pending_since)
        })
    }

    fn push_back(&mut self, s: u32) {
        let e = &mut self.slab[s as usize];
        if e.in_list {
            return;
        }
        e.in_list = true;
        e.prev = self.tail;
        e.next = NIL;
        if self.tail != NIL {
            self.slab[self.tail as usize].next = s;
        } else {
            self.head = s;
        }
        self.tail = s;
    }

    fn unlink(&mut self, s: u32) {
        let e = self.slab[s as usize];
        if !e.in_list {
            return;
        }
        if e.prev != NIL {
            self.slab[e.prev as usize].next = e.next;
        } else {
            self.head = e.next;
        }
        if e.next != NIL {
            self.slab[e.next as usize].prev = e.prev;
        } else {
            self.tail = e.prev;
        }
        let e = &mut self.slab[s as usize];
        e.in_list = false;
        e.prev = NIL;
        e.next = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(atime: Option<i64>, mtime: Option<i64>) -> Times {
        Times {
            stamps: Stamps {
                atime: atime.map(|s| (s, 0)),
                mtime: mtime.map(|s| (s, 0)),
                ctime: None,
            },
            ..Times::default()
        }
    }

    #[test]
    fn masks_the_kernel_sends() {
        assert!(is_time_only(0x460));
        assert!(is_time_only(0x430));
        assert!(is_time_only(0x430 | FATTR_ATIME_NOW | FATTR_MTIME_NOW));
        assert!(!is_time_only(0x470 | 0x1), "MODE");
        assert!(!is_time_only(0x438), "SIZE");
        assert!(!is_time_only(0x800 | 0x20), "KILL_SUIDGID");
        assert!(!is_time_only(FATTR_FH), "no time at all");
    }

    #[test]
    fn later_fields_win_and_fields_unite() {
        let mut a = t(Some(1), None);
        a.merge(&t(None, Some(2)));
        assert_eq!(
            (a.stamps.atime, a.stamps.mtime),
            (Some((1, 0)), Some((2, 0)))
        );
        a.merge(&t(Some(3), None));
        assert_eq!(
            (a.stamps.atime, a.stamps.mtime),
            (Some((3, 0)), Some((2, 0)))
        );
        assert_eq!(a.valid(), FATTR_ATIME | FATTR_MTIME);
    }

    #[test]
    fn one_flush_per_node_and_generations() {
        let mut tab = TimesTable::with_capacity(4);
        let n = NodeId(9);
        let t0 = Instant::from_nanos(0);
        assert_eq!(tab.acknowledge(t0, n, &t(Some(1), None)), Some(false));
        assert_eq!(tab.acknowledge(t0, n, &t(None, Some(2))), Some(true));
        assert_eq!(tab.get(n).unwrap().barrier_gen(), Some(1));
        let sent = tab.start_flush(n, Unique(100)).unwrap();
        assert_eq!(sent.valid(), FATTR_ATIME | FATTR_MTIME);
        // A new update while the flush is in flight opens generation 2,
        // which cannot be sent until generation 1 is answered.
        tab.acknowledge(t0, n, &t(Some(5), None));
        assert_eq!(tab.get(n).unwrap().barrier_gen(), Some(2));
        assert!(tab.start_flush(n, Unique(102)).is_none());
        assert_eq!(tab.get(n).unwrap().overlay().atime, Some((5, 0)));
        assert_eq!(tab.get(n).unwrap().overlay().mtime, Some((2, 0)));
        assert_eq!(tab.finish_flush(n).unwrap().1, 1);
        assert!(tab.start_flush(n, Unique(102)).is_some());
        tab.finish_flush(n);
        tab.remove_if_idle(n);
        assert!(tab.is_empty());
    }

    #[test]
    fn oldest_first_and_full_table() {
        let mut tab = TimesTable::with_capacity(3);
        for (i, n) in [3u64, 1, 2].iter().enumerate() {
            tab.acknowledge(Instant::from_nanos(i as u64), NodeId(*n), &t(Some(1), None));
        }
        assert!(tab
            .acknowledge(Instant::from_nanos(9), NodeId(4), &t(Some(1), None))
            .is_none());
        assert_eq!(tab.oldest().unwrap().0, NodeId(3));
        tab.make_urgent(NodeId(3));
        assert_eq!(tab.oldest().unwrap().0, NodeId(1));
        tab.start_flush(NodeId(1), Unique(2));
        assert_eq!(tab.oldest().unwrap().0, NodeId(2));
        assert_eq!(tab.pending(), 2);
    }
}
