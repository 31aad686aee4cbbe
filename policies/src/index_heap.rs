//! An indexed binary min-heap of slot numbers, for the engine's two timers:
//! the `[deadlines]` of requests in flight and the due times of acknowledged
//! time updates.
//!
//! The slots live in their owner's fixed table; each remembers its position
//! in the heap ([`Slots::pos`]), so that a slot can be removed or re-ordered
//! in O(log n) without a search and without lazy deletion. The heap is
//! allocated once with its capacity and never grows.

/// The position of a slot that is not in the heap.
pub const NIL: u32 = u32::MAX;

/// The table a heap orders: a key per slot, and the slot's position.
pub trait Slots {
    /// What orders the slots (smallest first); ties must not exist, so
    /// owners include the slot's own number or another unique value.
    type Key: Ord;
    /// The key of `slot`.
    fn key(&self, slot: u32) -> Self::Key;
    /// Where `slot` stands in the heap (meaningful only while it is in it).
    fn pos(&self, slot: u32) -> u32;
    /// Records where `slot` stands; [`NIL`] when it leaves.
    fn set_pos(&mut self, slot: u32, pos: u32);
}

/// The heap; see the module doc.
pub struct IndexHeap {
    /// Slot numbers; INVARIANT: `slots.pos(heap[i]) == i` for every `i`,
    /// and the length never exceeds the capacity given at creation (a
    /// slot is in it at most once).
    heap: Vec<u32>,
}

impl IndexHeap {
    /// Room for `capacity` slots; allocates here only.
    pub fn with_capacity(capacity: usize) -> Self {
        IndexHeap {
            heap: Vec::with_capacity(capacity),
        }
    }

    /// Slots in the heap.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The slot with the smallest key.
    pub fn first(&self) -> Option<u32> {
        self.heap.first().copied()
    }

    /// Whether `slot` is in the heap (its recorded position names it).
    pub fn holds<S: Slots + ?Sized>(&self, slots: &S, slot: u32) -> bool {
        let pos = slots.pos(slot);
        pos != NIL && self.heap.get(pos as usize) == Some(&slot)
    }

    /// Adds `slot`, whose position must be [`NIL`]; a slot already in the
    /// heap is left where it is.
    pub fn push<S: Slots + ?Sized>(&mut self, slots: &mut S, slot: u32) {
        if slots.pos(slot) != NIL {
            return;
        }
        self.heap.push(slot);
        let at = self.heap.len() - 1;
        slots.set_pos(slot, at as u32);
        self.sift_up(slots, at);
    }

    /// Takes `slot` out; a slot not in the heap is ignored.
    pub fn remove<S: Slots + ?Sized>(&mut self, slots: &mut S, slot: u32) {
        if !self.holds(slots, slot) {
            return;
        }
        let at = slots.pos(slot) as usize;
        slots.set_pos(slot, NIL);
        let Some(last) = self.heap.pop() else {
            return;
        };
        if at == self.heap.len() {
            return;
        }
        self.place(slots, at, last);
        self.fix(slots, last);
    }

    /// Restores the order after `slot`'s key changed.
    pub fn fix<S: Slots + ?Sized>(&mut self, slots: &mut S, slot: u32) {
        if self.holds(slots, slot) {
            self.sift_up(slots, slots.pos(slot) as usize);
            self.sift_down(slots, slots.pos(slot) as usize);
        }
    }

    fn place<S: Slots + ?Sized>(&mut self, slots: &mut S, at: usize, slot: u32) {
        self.heap[at] = slot;
        slots.set_pos(slot, at as u32);
    }

    fn swap<S: Slots + ?Sized>(&mut self, slots: &mut S, a: usize, b: usize) {
        let (sa, sb) = (self.heap[a], self.heap[b]);
        self.place(slots, a, sb);
        self.place(slots, b, sa);
    }

    fn sift_up<S: Slots + ?Sized>(&mut self, slots: &mut S, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if slots.key(self.heap[parent]) <= slots.key(self.heap[at]) {
                break;
            }
            self.swap(slots, parent, at);
            at = parent;
        }
    }

    fn sift_down<S: Slots + ?Sized>(&mut self, slots: &mut S, mut at: usize) {
        loop {
            let (l, r) = (2 * at + 1, 2 * at + 2);
            let mut least = at;
            for c in [l, r] {
                if c < self.heap.len() && slots.key(self.heap[c]) < slots.key(self.heap[least]) {
                    least = c;
                }
            }
            if least == at {
                break;
            }
            self.swap(slots, at, least);
            at = least;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys with positions, as an owner's table would hold them.
    struct Table(Vec<(u64, u32)>);

    impl Slots for Table {
        type Key = (u64, u32);
        fn key(&self, slot: u32) -> (u64, u32) {
            (self.0[slot as usize].0, slot)
        }
        fn pos(&self, slot: u32) -> u32 {
            self.0[slot as usize].1
        }
        fn set_pos(&mut self, slot: u32, pos: u32) {
            self.0[slot as usize].1 = pos;
        }
    }

    #[test]
    fn pops_in_key_order_through_removes_and_fixes() {
        let mut t = Table((0..64u64).map(|i| ((i * 37) % 64, NIL)).collect());
        let mut h = IndexHeap::with_capacity(64);
        for s in 0..64 {
            h.push(&mut t, s);
            h.push(&mut t, s);
        }
        assert_eq!(h.len(), 64, "a slot is in it once");
        for s in (0..64).step_by(3) {
            h.remove(&mut t, s);
            h.remove(&mut t, s);
        }
        t.0[1].0 = 1000;
        h.fix(&mut t, 1);
        let mut last = None;
        while let Some(s) = h.first() {
            let k = t.key(s);
            assert!(last.is_none_or(|l| l < k));
            last = Some(k);
            h.remove(&mut t, s);
            assert_eq!(t.pos(s), NIL);
        }
        assert_eq!(last.map(|k| k.1), Some(1), "the raised key comes last");
    }
}
