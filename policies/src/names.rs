//! Which node a name in a directory refers to, as the backend last said.
//!
//! UNLINK, RMDIR and RENAME name their victims by (directory, name), not by
//! node. To keep the attribute cache honest (an unlinked file has one link
//! fewer; a file renamed over loses one), the engine remembers the answers
//! of LOOKUP, CREATE, MKNOD, MKDIR, SYMLINK, LINK and READDIRPLUS, including
//! negative ones (the name is known to be absent).
//!
//! Keys are a 64-bit hash of (directory, name), so nothing is allocated per
//! name. Fixed capacity, 8-way set-associative; a full set gives up a
//! negative entry first (losing one costs nothing: an UNLINK of a name that
//! was absent fails), then its oldest. A name that is not found is
//! "unknown", and the engine then assumes the worst (it forgets every
//! cached attribute), so the table is kept roomier than the attribute cache
//! and its sets wide: with 4 ways, a few thousand names in one directory
//! already overflowed a set now and then.

const WAYS: usize = 8;

/// A (directory, name) pair as a key.
pub fn key(parent: u64, name: &[u8]) -> u64 {
    // FNV-1a over the parent's bytes, then the name's.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in parent.to_le_bytes().iter().chain(name) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | 1 // never 0: 0 marks an empty slot
}

/// What is known of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// It names this node.
    Node(u64),
    /// It names nothing.
    Absent,
    /// Nothing is known (never seen, or evicted).
    Unknown,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64,
    /// 0 = known absent.
    node: u64,
    stamp: u64,
}

/// The map; see the module doc.
pub struct Names {
    slots: Vec<Slot>,
    clock: u64,
}

impl Names {
    /// A map for about `capacity` names; allocates here only.
    pub fn with_capacity(capacity: usize) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        Names {
            slots: vec![Slot::default(); sets * WAYS],
            clock: 0,
        }
    }

    fn set(&self, key: u64) -> core::ops::Range<usize> {
        let sets = self.slots.len() / WAYS;
        // FNV leaves similar names (g1, g2 ...) close in most bits: spread
        // them with a multiplicative hash and take the top bits.
        let s = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & (sets - 1);
        s * WAYS..s * WAYS + WAYS
    }

    /// What `key` names.
    pub fn get(&self, key: u64) -> Known {
        match self.slots[self.set(key)].iter().find(|s| s.key == key) {
            Some(s) if s.node == 0 => Known::Absent,
            Some(s) => Known::Node(s.node),
            None => Known::Unknown,
        }
    }

    /// Records that `key` names `node` (0: nothing).
    pub fn insert(&mut self, key: u64, node: u64) {
        self.clock += 1;
        let stamp = self.clock;
        let r = self.set(key);
        let set = &mut self.slots[r];
        let i = set
            .iter()
            .position(|s| s.key == key)
            .or_else(|| set.iter().position(|s| s.key == 0))
            .or_else(|| set.iter().position(|s| s.node == 0))
            .unwrap_or_else(|| {
                set.iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.stamp)
                    .map_or(0, |(i, _)| i)
            });
        set[i] = Slot { key, node, stamp };
    }

    /// Forgets `key`: nothing is known of it any more.
    pub fn remove(&mut self, key: u64) {
        let r = self.set(key);
        if let Some(s) = self.slots[r].iter_mut().find(|s| s.key == key) {
            *s = Slot::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_names_do_not_evict_each_other() {
        let mut n = Names::with_capacity(4096);
        for i in 0..1000 {
            n.insert(key(1, format!("g{i}").as_bytes()), i + 10);
        }
        let found = (0..1000)
            .filter(|i| n.get(key(1, format!("g{i}").as_bytes())) == Known::Node(i + 10))
            .count();
        assert!(found > 990, "only {found} of 1000 names kept");
    }

    #[test]
    fn a_full_set_gives_up_negative_entries_first() {
        // One set: 8 slots.
        let mut n = Names::with_capacity(WAYS);
        let k = |i: u64| key(1, format!("n{i}").as_bytes());
        for i in 0..4 {
            n.insert(k(i), 100 + i);
            n.insert(k(50 + i), 0);
        }
        for i in 4..8 {
            n.insert(k(i), 100 + i);
        }
        for i in 0..8 {
            assert_eq!(n.get(k(i)), Known::Node(100 + i), "name {i}");
        }
        // Then the oldest positive goes.
        n.insert(k(8), 108);
        assert_eq!(n.get(k(0)), Known::Unknown);
        assert_eq!(n.get(k(8)), Known::Node(108));
    }

    #[test]
    fn positive_negative_unknown() {
        let mut n = Names::with_capacity(16);
        let a = key(1, b"a");
        assert_ne!(a, key(1, b"b"));
        assert_ne!(a, key(2, b"a"));
        assert_eq!(n.get(a), Known::Unknown);
        n.insert(a, 7);
        assert_eq!(n.get(a), Known::Node(7));
        n.insert(a, 0);
        assert_eq!(n.get(a), Known::Absent);
        n.remove(a);
        assert_eq!(n.get(a), Known::Unknown);
    }
}
