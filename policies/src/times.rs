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
//! A pending record keeps the rules it was acknowledged under: its due time
//! (acknowledgement + `max_delay`) and its retry budget are stored with it,
//! so a reload changes neither. A flush the backend refuses goes back to
//! the node's pending record ([`TimesTable::requeue`], merged under newer
//! times) with a due time after its back-off, while retries are left.
//!
//! Capacity is fixed at start: a slab of node states with an index and a
//! binary heap of the unscheduled pending records ordered by due time,
//! which gives both the next deadline and the victim when `max_pending` is
//! exceeded (the record due first).

use fuseproxy_protocol::flags::{
    FATTR_ATIME, FATTR_CTIME, FATTR_FH, FATTR_HANDLE, FATTR_LOCKOWNER, FATTR_MTIME, FATTR_TIMES,
};
use fuseproxy_protocol::{NodeId, Setattr, Unique};

use crate::index_heap::{IndexHeap, Slots, NIL};
use crate::{Duration, Instant};

/// A time as the wire carries it: seconds and nanoseconds.
pub type Timespec = (i64, u32);

/// Bits a SETATTR may carry and still be "time-only": times, and the
/// open file they come through.
pub const TIME_ONLY_MASK: u32 = FATTR_TIMES | FATTR_HANDLE;

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

/// The longest wait between two attempts of one flush, however many
/// doublings the back-off has had (the longest configurable back-off).
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// A pending record's retry budget, fixed when it is acknowledged
/// (6 bytes: packed, so that it takes no more room in a [`NodeTimes`]
/// than the list links it replaced).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C, packed(2))]
pub struct Retry {
    /// Sends still allowed after a failure (0: a failure is final).
    pub left: u8,
    /// Times the record has been sent and refused so far.
    pub sent: u8,
    /// The first back-off, in microseconds; doubled per retry.
    pub backoff_us: u32,
}

impl Retry {
    /// The budget a record acknowledged under `retries` and `backoff` gets.
    pub fn new(retries: u32, backoff: Duration) -> Retry {
        Retry {
            left: retries.min(u32::from(u8::MAX - 1)) as u8,
            sent: 0,
            backoff_us: (backoff.as_nanos() / 1_000).min(u64::from(u32::MAX)) as u32,
        }
    }

    /// The wait before the next send after `sent` refusals: the back-off
    /// times 2^(sent-1), at most [`MAX_BACKOFF`].
    pub fn backoff(&self) -> Duration {
        let shift = u32::from(self.sent.max(1) - 1).min(40);
        let us = u64::from(self.backoff_us).saturating_mul(1 << shift);
        Duration::from_nanos(us.saturating_mul(1_000).min(MAX_BACKOFF.as_nanos()))
    }

    /// Merges the budget of newer times into this record's: each update
    /// keeps at least the retries it was promised.
    fn absorb(&mut self, newer: &Retry) {
        if newer.left > self.left {
            self.left = newer.left;
            self.backoff_us = newer.backoff_us;
        }
    }
}

/// A flush sent and not yet answered (88 bytes, as a tuple of its first
/// three fields was: the retry counters fill what was padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushing {
    /// The unique of the proxy's SETATTR.
    pub unique: Unique,
    /// The times it carries.
    pub stamps: Stamps,
    /// The generation it applies.
    pub gen: u32,
    /// Retries left should it be refused.
    pub left: u8,
    /// Which send of its times this is (1: the first).
    pub sent: u8,
    /// It named a file handle (kept, with the caller, in the flush's
    /// in-flight entry for a retry).
    pub fh_set: bool,
    /// It named a lock owner.
    pub lock_owner_set: bool,
}

/// What the proxy holds for one node.
#[derive(Debug, Clone, Copy)]
pub struct NodeTimes {
    /// The node.
    pub node: NodeId,
    /// Acknowledged, not yet sent.
    pub pending: Option<Times>,
    /// When the pending record is to be sent: its first acknowledgement
    /// plus the `max_delay` then in force, or a retry's back-off; a later
    /// update can only bring it forward.
    pub pending_due: Instant,
    /// Generation of the pending record.
    pub pending_gen: u32,
    /// The pending record's retry budget, fixed when acknowledged.
    pub pending_retry: Retry,
    /// Sent, awaiting the backend's reply.
    pub flushing: Option<Flushing>,
    /// The last generation the backend has answered.
    pub done_gen: u32,
    /// Someone waits for the pending record: send it as soon as the flush in
    /// flight is answered, instead of at its deadline.
    pub urgent: bool,
    /// FORGET counts the kernel sent while times were pending or being
    /// flushed, to be passed on once they are applied (the state ends
    /// then: nonzero only with `pending` or `flushing`).
    pub deferred_forget: u64,
    /// GETATTRs of this node, and LOOKUPs of a name known to be it, sent to
    /// the backend while this state existed and not yet answered: the
    /// backend may answer them with times from before a flush, so the state
    /// (and `applied`) stays to overlay their replies, until the node is
    /// forgotten.
    pub readers: u32,
    /// What the backend has applied since the state was made, for the
    /// replies of those readers.
    pub applied: Option<Stamps>,
    /// When each field of `applied` (atime, mtime, ctime) was applied, on
    /// the table's clock: only replies to requests sent before then may
    /// predate it (see [`overlay`](Self::overlay)).
    pub applied_at: [u64; 3],
    /// When the state was made, on the table's clock: a request sent
    /// before then was not counted among its readers.
    pub born: u64,
    /// Idle, but kept for a listing in flight (the engine's `kept` list).
    pub kept: bool,
    /// The file's last name was removed (its cached link count reached 0):
    /// a flush that fails with ENOENT or ESTALE is moot, not an error.
    pub unlinked: bool,
    /// Position in the table's due-time heap; `NIL` when not in it.
    heap_pos: u32,
}

impl NodeTimes {
    fn new(node: NodeId) -> Self {
        NodeTimes {
            node,
            pending: None,
            pending_due: Instant::default(),
            pending_gen: 0,
            pending_retry: Retry::default(),
            flushing: None,
            done_gen: 0,
            urgent: false,
            deferred_forget: 0,
            readers: 0,
            applied: None,
            applied_at: [0; 3],
            born: 0,
            kept: false,
            unlinked: false,
            heap_pos: NIL,
        }
    }

    /// The generation a request arriving now must see applied, if any.
    pub fn barrier_gen(&self) -> Option<u32> {
        if self.pending.is_some() {
            Some(self.pending_gen)
        } else {
            self.flushing.map(|f| f.gen)
        }
    }

    /// The times to lay over the reply to a request sent at `sent` (the
    /// table's [`clock`](TimesTable::clock) then), field by field: pending
    /// over flushing, over what was applied after the request was sent.
    /// What `stat` must show until the backend has them. Times applied
    /// before the request was sent are the backend's own by then, and its
    /// reply may show newer ones (a write's mtime): they are not laid over.
    pub fn overlay(&self, sent: u64) -> Stamps {
        let mut t = Stamps::default();
        if let Some(a) = &self.applied {
            let [at, mt, ct] = self.applied_at;
            t.atime = a.atime.filter(|_| sent < at);
            t.mtime = a.mtime.filter(|_| sent < mt);
            t.ctime = a.ctime.filter(|_| sent < ct);
        }
        if let Some(f) = &self.flushing {
            t.merge(&f.stamps);
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
    /// Slab indices of the nodes with a pending record not yet scheduled,
    /// ordered by (`pending_due`, slab index).
    heap: IndexHeap,
    /// Nodes with a pending record, scheduled or not.
    pending: usize,
    /// Counts the events requests are ordered against: states made and
    /// flushes answered. A request notes it when sent (see
    /// [`NodeTimes::overlay`]).
    clock: u64,
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
            heap: IndexHeap::with_capacity(capacity),
            pending: 0,
            clock: 0,
        }
    }

    /// The clock now: what a request sent now notes.
    pub fn clock(&self) -> u64 {
        self.clock
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
        self.clock += 1;
        self.slab[s as usize] = NodeTimes {
            born: self.clock,
            ..NodeTimes::new(node)
        };
        let mut i = self.home(node);
        while self.index[i] != NIL {
            i = (i + 1) & self.mask();
        }
        self.index[i] = s;
        Some(s)
    }

    /// Drops `node`'s state if it is idle.
    pub fn remove_if_idle(&mut self, node: NodeId) {
        if self.get(node).is_some_and(NodeTimes::is_idle) {
            self.remove(node);
        }
    }

    /// Drops `node`'s state whatever it holds (the node is forgotten: its
    /// id may name another file next). Returns the state dropped.
    pub fn remove(&mut self, node: NodeId) -> Option<NodeTimes> {
        let (mut hole, s) = self.find(node)?;
        if self.slab[s as usize].pending.is_some() {
            self.pending -= 1;
        }
        self.heap_remove(s);
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
        Some(self.slab[s as usize])
    }

    /// Records a locally acknowledged update, to be sent by `due` and
    /// retried with `retry` (the rules in force now; a record keeps them).
    /// Returns `Some(true)` when it was merged into an existing pending
    /// record (coalesced: the record's due time can only come forward, and
    /// it gets the larger retry budget), `Some(false)` for a new record,
    /// `None` when the table is full.
    pub fn acknowledge(
        &mut self,
        due: Instant,
        retry: Retry,
        node: NodeId,
        t: &Times,
    ) -> Option<bool> {
        let s = self.slot_or_insert(node)?;
        let e = &mut self.slab[s as usize];
        if let Some(p) = &mut e.pending {
            p.merge(t);
            e.pending_retry.absorb(&retry);
            if due < e.pending_due {
                e.pending_due = due;
                self.heap_fix(s);
            }
            return Some(true);
        }
        e.pending = Some(*t);
        e.pending_due = due;
        e.pending_retry = retry;
        e.pending_gen = e.done_gen.max(e.flushing.map_or(0, |f| f.gen)) + 1;
        self.pending += 1;
        self.heap_push(s);
        Some(false)
    }

    /// Takes `node`'s pending record to send it, if it has one and no flush
    /// is in flight for it; the caller sends a SETATTR with `unique`.
    /// Returns the times and their retry budget, `sent` counting this send.
    pub fn start_flush(&mut self, node: NodeId, unique: Unique) -> Option<(Times, Retry)> {
        let (_, s) = self.find(node)?;
        let e = &mut self.slab[s as usize];
        if e.flushing.is_some() {
            return None;
        }
        let t = e.pending.take()?;
        let mut retry = e.pending_retry;
        retry.sent = retry.sent.saturating_add(1);
        e.flushing = Some(Flushing {
            unique,
            stamps: t.stamps,
            gen: e.pending_gen,
            left: retry.left,
            sent: retry.sent,
            fh_set: t.fh.is_some(),
            lock_owner_set: t.lock_owner.is_some(),
        });
        e.urgent = false;
        self.pending -= 1;
        self.heap_remove(s);
        Some((t, retry))
    }

    /// `node`'s flush in flight, if any.
    pub fn flushing(&self, node: NodeId) -> Option<Flushing> {
        self.get(node).and_then(|e| e.flushing)
    }

    /// The backend refused `node`'s flush and it has retries left: its
    /// times (`t`, rebuilt by the caller from the flush) become the pending
    /// record again, under any newer pending times (per field the newer
    /// value wins), with one retry fewer, due after the back-off (or
    /// sooner, if the newer times are due sooner). The generation that was
    /// in flight is not done: what waits on it waits for the retry.
    /// Returns the budget after the refusal and the due time.
    pub fn requeue(
        &mut self,
        now: Instant,
        node: NodeId,
        mut t: Times,
        backoff_us: u32,
    ) -> Option<(Retry, Instant)> {
        let (_, s) = self.find(node)?;
        let e = &mut self.slab[s as usize];
        let f = e.flushing.take()?;
        let retry = Retry {
            left: f.left.saturating_sub(1),
            sent: f.sent,
            backoff_us,
        };
        let due = now + retry.backoff();
        match &mut e.pending {
            Some(newer) => {
                t.merge(newer);
                *newer = t;
                let mut r = retry;
                r.absorb(&e.pending_retry);
                e.pending_retry = r;
                if due < e.pending_due {
                    e.pending_due = due;
                    self.heap_fix(s);
                }
            }
            None => {
                e.pending = Some(t);
                e.pending_due = due;
                e.pending_retry = retry;
                e.pending_gen = f.gen;
                self.pending += 1;
                self.heap_push(s);
            }
        }
        let e = &self.slab[s as usize];
        Some((e.pending_retry, e.pending_due))
    }

    /// The backend answered `node`'s flush (applied, or refused for the
    /// last time). Returns the times it carried and its generation.
    pub fn finish_flush(&mut self, node: NodeId) -> Option<(Stamps, u32)> {
        let (_, s) = self.find(node)?;
        let clock = self.clock + 1;
        let e = &mut self.slab[s as usize];
        let Flushing {
            stamps: t, gen: g, ..
        } = e.flushing.take()?;
        self.clock = clock;
        e.done_gen = g;
        for (at, set) in
            e.applied_at
                .iter_mut()
                .zip([t.atime.is_some(), t.mtime.is_some(), t.ctime.is_some()])
        {
            if set {
                *at = clock;
            }
        }
        match &mut e.applied {
            Some(a) => a.merge(&t),
            None => e.applied = Some(t),
        }
        Some((t, g))
    }

    /// Marks `node`'s pending record as wanted now (a flush is in flight, so
    /// it goes when that one is answered) and takes it off the deadline heap.
    pub fn make_urgent(&mut self, node: NodeId) {
        if let Some((_, s)) = self.find(node) {
            if self.slab[s as usize].pending.is_some() {
                self.slab[s as usize].urgent = true;
                self.heap_remove(s);
            }
        }
    }

    /// The node whose pending record is due first, among those not yet
    /// scheduled, with its due time.
    pub fn oldest(&self) -> Option<(NodeId, Instant)> {
        self.heap.first().map(|s| {
            let e = &self.slab[s as usize];
            (e.node, e.pending_due)
        })
    }

    fn heap_push(&mut self, s: u32) {
        self.heap.push(&mut self.slab[..], s);
    }

    fn heap_remove(&mut self, s: u32) {
        self.heap.remove(&mut self.slab[..], s);
    }

    /// Restores the heap order after `s`'s due time changed.
    fn heap_fix(&mut self, s: u32) {
        self.heap.fix(&mut self.slab[..], s);
    }
}

impl Slots for [NodeTimes] {
    type Key = (Instant, u32);
    fn key(&self, s: u32) -> (Instant, u32) {
        (self[s as usize].pending_due, s)
    }
    fn pos(&self, s: u32) -> u32 {
        self[s as usize].heap_pos
    }
    fn set_pos(&mut self, s: u32, pos: u32) {
        self[s as usize].heap_pos = pos;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuseproxy_protocol::flags::{FATTR_ATIME_NOW, FATTR_MTIME_NOW};

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
        assert_eq!(
            tab.acknowledge(t0, Retry::default(), n, &t(Some(1), None)),
            Some(false)
        );
        assert_eq!(
            tab.acknowledge(t0, Retry::default(), n, &t(None, Some(2))),
            Some(true)
        );
        assert_eq!(tab.get(n).unwrap().barrier_gen(), Some(1));
        let (sent, _) = tab.start_flush(n, Unique(100)).unwrap();
        assert_eq!(sent.valid(), FATTR_ATIME | FATTR_MTIME);
        // A new update while the flush is in flight opens generation 2,
        // which cannot be sent until generation 1 is answered.
        tab.acknowledge(t0, Retry::default(), n, &t(Some(5), None));
        assert_eq!(tab.get(n).unwrap().barrier_gen(), Some(2));
        assert!(tab.start_flush(n, Unique(102)).is_none());
        assert_eq!(tab.get(n).unwrap().overlay(0).atime, Some((5, 0)));
        assert_eq!(tab.get(n).unwrap().overlay(0).mtime, Some((2, 0)));
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
            tab.acknowledge(
                Instant::from_nanos(i as u64),
                Retry::default(),
                NodeId(*n),
                &t(Some(1), None),
            );
        }
        assert!(tab
            .acknowledge(
                Instant::from_nanos(9),
                Retry::default(),
                NodeId(4),
                &t(Some(1), None)
            )
            .is_none());
        assert_eq!(tab.oldest().unwrap().0, NodeId(3));
        tab.make_urgent(NodeId(3));
        assert_eq!(tab.oldest().unwrap().0, NodeId(1));
        tab.start_flush(NodeId(1), Unique(2));
        assert_eq!(tab.oldest().unwrap().0, NodeId(2));
        assert_eq!(tab.pending(), 2);
    }

    #[test]
    fn due_times_order_the_heap_whatever_the_acknowledgement_order() {
        let mut tab = TimesTable::with_capacity(8);
        // Acknowledged in this order, with dues from different rules.
        for (n, due) in [(1u64, 50u64), (2, 10), (3, 30), (4, 20), (5, 40)] {
            tab.acknowledge(
                Instant::from_nanos(due),
                Retry::default(),
                NodeId(n),
                &t(Some(1), None),
            );
        }
        // A later update can only bring a record forward.
        tab.acknowledge(
            Instant::from_nanos(5),
            Retry::default(),
            NodeId(5),
            &t(Some(2), None),
        );
        tab.acknowledge(
            Instant::from_nanos(99),
            Retry::default(),
            NodeId(2),
            &t(Some(2), None),
        );
        let mut order = Vec::new();
        while let Some((n, due)) = tab.oldest() {
            order.push((n.0, due.as_nanos()));
            tab.start_flush(n, Unique(n.0 * 2)).unwrap();
        }
        assert_eq!(order, [(5, 5), (2, 10), (4, 20), (3, 30), (1, 50)]);
    }

    #[test]
    fn a_refused_flush_goes_back_under_newer_times() {
        let mut tab = TimesTable::with_capacity(4);
        let n = NodeId(9);
        let ms = |m: u64| Instant::from_nanos(m * 1_000_000);
        let retry = Retry::new(2, Duration::from_millis(100));
        tab.acknowledge(ms(1000), retry, n, &t(Some(1), Some(1)));
        let (_, r) = tab.start_flush(n, Unique(100)).unwrap();
        assert_eq!((r.left, r.sent), (2, 1));
        // A newer atime while the flush is in flight.
        tab.acknowledge(ms(5000), retry, n, &t(Some(2), None));
        let (r, due) = tab
            .requeue(ms(1000), n, t(Some(1), Some(1)), r.backoff_us)
            .unwrap();
        assert_eq!((r.left, r.sent, due), (2, 1, ms(1100)), "the larger budget");
        let e = tab.get(n).unwrap();
        let p = e.pending.unwrap().stamps;
        assert_eq!((p.atime, p.mtime), (Some((2, 0)), Some((1, 0))));
        assert_eq!((e.pending_gen, e.done_gen), (2, 0));
        // Alone, the back-off doubles per refusal.
        let (_, r) = tab.start_flush(n, Unique(102)).unwrap();
        assert_eq!((r.left, r.sent), (2, 2));
        let (r, due) = tab
            .requeue(ms(2000), n, t(Some(2), Some(1)), r.backoff_us)
            .unwrap();
        assert_eq!((r.left, r.sent, due), (1, 2, ms(2200)));
        assert_eq!(tab.oldest(), Some((n, ms(2200))));
        assert_eq!(
            tab.get(n).unwrap().pending_gen,
            2,
            "the generation in flight"
        );
        let huge = Retry {
            left: 1,
            sent: 200,
            backoff_us: u32::MAX,
        };
        assert_eq!(huge.backoff(), MAX_BACKOFF);
    }
}
