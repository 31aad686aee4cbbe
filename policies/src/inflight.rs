//! Requests awaiting a reply from the backend, keyed by unique id.
//!
//! A fixed-capacity open-addressing table (linear probing, backward-shift
//! deletion, so no tombstones accumulate). It is allocated once by
//! [`Inflight::with_capacity`] and never grows: the proxy asks
//! [`Inflight::is_full`] before it reads another request and stops reading
//! the device instead (backpressure).
//!
//! The kernel numbers its requests with even uniques from a 64-bit counter
//! (`FUSE_INT_REQ_BIT`, bit 0, marks interrupt replies) and sets bit 63
//! (`FUSE_UNIQUE_RESEND`, 7.40) on requests it re-sends after
//! FUSE_NOTIFY_RESEND. The proxy's own requests take uniques with bit 62 set
//! and bit 63 clear: the kernel's counter never reaches 2^62, so no kernel
//! unique, re-sent or not, falls in that range.

use fuseproxy_protocol::{NodeId, Opcode, Unique};

use crate::deadlines::{DeadlineId, Deadlines};
use crate::Instant;

/// The first unique of the proxy's own requests; see the module doc.
pub const INJECTED_UNIQUE_BASE: u64 = 1 << 62;

/// Who sent a request in flight, and so who gets its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The kernel: the reply goes back to /dev/fuse.
    Kernel,
    /// The proxy itself: the reply is consumed by the engine.
    Proxy,
}

/// What the engine remembers of a request until its reply arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The request's unique id.
    pub unique: Unique,
    /// Its opcode, to validate and interpret the reply.
    pub opcode: Opcode,
    /// The node it concerns.
    pub node: NodeId,
    /// Who waits for the reply.
    pub origin: Origin,
    /// What the engine needs from the request to interpret the reply (the
    /// offset of a WRITE, the victims of an UNLINK or RENAME); see
    /// `Engine::note_request`.
    pub aux: [u64; 4],
    /// Its `[deadlines]` due time, if it has one. Set only by
    /// [`Inflight::arm`]; build entries with [`DeadlineId::NONE`]
    /// ([`Inflight::insert`] ignores what is given).
    pub deadline: DeadlineId,
}

/// The table; see the module doc.
pub struct Inflight {
    /// INVARIANT: `slots.len()` is a power of two and at least twice `capacity`,
    /// so a probe always ends at an empty slot.
    slots: Vec<Option<Entry>>,
    capacity: usize,
    len: usize,
    /// Due times of entries with a deadline. INVARIANT: an entry's
    /// `deadline` is registered here exactly while the entry is in the table.
    deadlines: Deadlines,
}

impl Inflight {
    /// A table for at most `capacity` requests at once, as many with a
    /// deadline; allocates here only.
    pub fn with_capacity(capacity: usize) -> Self {
        Inflight::with_deadlines(capacity, capacity)
    }

    /// A table for at most `capacity` requests at once, of which at most
    /// `deadlines` have a deadline; allocates here only.
    pub fn with_deadlines(capacity: usize, deadlines: usize) -> Self {
        let capacity = capacity.max(1);
        let slots = (capacity * 2).next_power_of_two();
        Inflight {
            slots: vec![None; slots],
            capacity,
            len: 0,
            deadlines: Deadlines::with_capacity(deadlines),
        }
    }

    /// How many requests are in flight.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no request is in flight.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether another request would exceed the capacity.
    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    fn home(&self, unique: Unique) -> usize {
        // Fibonacci hashing of the unique without its interrupt bit; the
        // kernel's uniques step by 2, so bit 0 carries no information.
        let h = (unique.0 >> 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> (64 - self.slots.len().trailing_zeros())) as usize & self.mask()
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn find(&self, unique: Unique) -> Option<usize> {
        let mut i = self.home(unique);
        loop {
            match &self.slots[i] {
                None => return None,
                Some(e) if e.unique == unique => return Some(i),
                Some(_) => i = (i + 1) & self.mask(),
            }
        }
    }

    /// Records a request. Returns `false` (and records nothing) when the table
    /// is full. A unique already present is replaced: the kernel re-sends a
    /// request under its old unique after FUSE_NOTIFY_RESEND.
    pub fn insert(&mut self, mut entry: Entry) -> bool {
        entry.deadline = DeadlineId::NONE;
        if let Some(i) = self.find(entry.unique) {
            if let Some(old) = self.slots[i] {
                self.deadlines.remove(old.deadline);
            }
            self.slots[i] = Some(entry);
            return true;
        }
        if self.is_full() {
            return false;
        }
        let mut i = self.home(entry.unique);
        while self.slots[i].is_some() {
            i = (i + 1) & self.mask();
        }
        self.slots[i] = Some(entry);
        self.len += 1;
        true
    }

    /// The entry for `unique`, if it is in flight.
    pub fn get(&self, unique: Unique) -> Option<&Entry> {
        self.find(unique).and_then(|i| self.slots[i].as_ref())
    }

    /// The entry for `unique`, to change its `aux` in place.
    pub fn get_mut(&mut self, unique: Unique) -> Option<&mut Entry> {
        self.find(unique).and_then(|i| self.slots[i].as_mut())
    }

    /// Removes and returns the entry for `unique`.
    pub fn remove(&mut self, unique: Unique) -> Option<Entry> {
        let mut hole = self.find(unique)?;
        let removed = self.slots[hole].take();
        if let Some(e) = removed {
            self.deadlines.remove(e.deadline);
        }
        self.len -= 1;
        // Backward-shift: pull later members of the probe run into the hole
        // when the hole lies between their home and their current slot.
        let mut i = (hole + 1) & self.mask();
        while let Some(e) = self.slots[i] {
            let home = self.home(e.unique);
            let dist_home = i.wrapping_sub(home) & self.mask();
            let dist_hole = i.wrapping_sub(hole) & self.mask();
            if dist_home >= dist_hole {
                self.slots[hole] = self.slots[i].take();
                hole = i;
            }
            i = (i + 1) & self.mask();
        }
        removed
    }

    /// Gives `unique`, in flight, a deadline at `due`, past which it is to be
    /// answered with `errno`. Returns `false` (no deadline) when it is not in
    /// flight or the deadlines are full.
    pub fn arm(&mut self, unique: Unique, due: Instant, errno: i32) -> bool {
        let Some(i) = self.find(unique) else {
            return false;
        };
        let Some(id) = self.deadlines.insert(due, unique, errno) else {
            return false;
        };
        if let Some(e) = self.slots[i].as_mut() {
            self.deadlines.remove(e.deadline);
            e.deadline = id;
        }
        true
    }

    /// The earliest deadline of the requests in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|(due, ..)| due)
    }

    /// Removes and returns a request whose deadline is at or before `now`,
    /// with the errno to answer it with.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(Entry, i32)> {
        let (due, unique, errno, id) = self.deadlines.peek()?;
        if due > now {
            return None;
        }
        if self.get(unique).is_some_and(|e| e.deadline == id) {
            return self.remove(unique).map(|e| (e, errno));
        }
        // Unreachable by the table's invariant; never loop on it.
        debug_assert!(false, "deadline of {unique:?} without its entry");
        self.deadlines.remove(id);
        None
    }

    /// Deadlines registered (as many as requests in flight that have one).
    pub fn deadlines(&self) -> usize {
        self.deadlines.len()
    }

    /// Drops every deadline (the backend is gone: its requests are answered
    /// another way).
    pub fn clear_deadlines(&mut self) {
        for e in self.slots.iter_mut().flatten() {
            e.deadline = DeadlineId::NONE;
        }
        self.deadlines.clear();
    }

    /// Removes and returns any one entry; used to drain the table when the
    /// backend is gone. Costs at most one pass over the slots per call.
    pub fn pop_any(&mut self) -> Option<Entry> {
        let unique = self.slots.iter().flatten().next()?.unique;
        self.remove(unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(u: u64) -> Entry {
        Entry {
            unique: Unique(u),
            opcode: Opcode::Getattr,
            node: NodeId(1),
            origin: Origin::Kernel,
            aux: [0; 4],
            deadline: DeadlineId::NONE,
        }
    }

    #[test]
    fn insert_get_remove_many() {
        let mut t = Inflight::with_capacity(64);
        for u in (2..130).step_by(2) {
            assert!(t.insert(entry(u)));
        }
        assert!(t.is_full());
        assert!(!t.insert(entry(1000)));
        for u in (2..130).step_by(4) {
            assert_eq!(t.remove(Unique(u)).map(|e| e.unique.0), Some(u));
        }
        for u in (2..130).step_by(2) {
            let present = (u - 2) % 4 != 0;
            assert_eq!(t.get(Unique(u)).is_some(), present, "unique {u}");
        }
        assert_eq!(t.len(), 32);
        let mut drained = 0;
        while t.pop_any().is_some() {
            drained += 1;
        }
        assert_eq!(drained, 32);
        assert!(t.is_empty());
    }

    #[test]
    fn colliding_keys_survive_removal_of_their_neighbours() {
        // Uniques far apart in value but in one probe run: remove from the
        // middle and every other key must still be found.
        let mut t = Inflight::with_capacity(8);
        let keys = [2u64, 1 << 40, 1 << 50, INJECTED_UNIQUE_BASE, 6, 8, 10, 12];
        for k in keys {
            assert!(t.insert(entry(k)));
        }
        for (n, k) in keys.iter().enumerate() {
            assert!(t.remove(Unique(*k)).is_some());
            for later in &keys[n + 1..] {
                assert!(
                    t.get(Unique(*later)).is_some(),
                    "lost {later} after removing {k}"
                );
            }
        }
    }

    #[test]
    fn reinsert_replaces() {
        let mut t = Inflight::with_capacity(2);
        assert!(t.insert(entry(4)));
        let mut e = entry(4);
        e.opcode = Opcode::Read;
        assert!(t.insert(e));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(Unique(4)).unwrap().opcode, Opcode::Read);
    }

    #[test]
    fn every_way_out_of_the_table_drops_the_deadline() {
        let ms = |n: u64| Instant::from_nanos(n * 1_000_000);
        let mut t = Inflight::with_deadlines(8, 4);
        for u in [2, 4, 6, 8] {
            assert!(t.insert(entry(u)));
            assert!(t.arm(Unique(u), ms(u), 5));
        }
        assert!(t.insert(entry(10)));
        assert!(!t.arm(Unique(10), ms(1), 5), "deadlines full");
        assert!(!t.arm(Unique(12), ms(1), 5), "not in flight");
        assert_eq!(t.next_deadline(), Some(ms(2)));
        t.remove(Unique(2));
        assert!(t.insert(entry(4)), "a replaced entry loses its deadline");
        t.pop_any();
        assert!(t.deadlines() <= 2);
        while t.pop_any().is_some() {}
        assert_eq!((t.deadlines(), t.next_deadline()), (0, None));

        assert!(t.insert(entry(20)) && t.arm(Unique(20), ms(5), 110));
        assert!(t.pop_expired(ms(4)).is_none());
        let (e, errno) = t.pop_expired(ms(5)).unwrap();
        assert_eq!(
            (e.unique, errno, t.len(), t.deadlines()),
            (Unique(20), 110, 0, 0)
        );
        assert!(t.insert(entry(22)) && t.arm(Unique(22), ms(5), 5));
        t.clear_deadlines();
        assert_eq!((t.len(), t.deadlines()), (1, 0));
        assert!(t.pop_expired(ms(100)).is_none());
    }

    #[test]
    fn an_entry_is_no_larger_for_its_deadline() {
        // The handle fits in the padding after `origin`.
        assert_eq!(core::mem::size_of::<Option<Entry>>(), 64);
    }
}
