//! [`ByUnique`]: a fixed table of values keyed by a request's unique, for
//! what must be remembered from a request until its answer (where its
//! answer goes, a copy to send again).
//!
//! Open addressing with linear probing over a power-of-two array allocated
//! once; removal shifts the following entries back, so there are no
//! tombstones and a lookup never walks further than the cluster it hashes
//! into. The kernel hands out uniques in steps of two from one counter, so
//! `unique >> 1` spreads live requests over consecutive buckets.
//!
//! INVARIANT: the bucket count is a power of two and at least twice the
//! capacity, so an insert always finds an empty bucket and probes stay
//! short; nothing is allocated after [`ByUnique::new`].

/// Values by unique (0 is never a key: the kernel never uses it for a
/// request).
pub struct ByUnique<V> {
    keys: Vec<u64>,
    values: Vec<V>,
    len: usize,
    capacity: usize,
}

impl<V: Copy> ByUnique<V> {
    /// Room for `capacity` entries; `empty` fills the unused buckets.
    pub fn new(capacity: usize, empty: V) -> ByUnique<V> {
        let buckets = (capacity.max(8) * 2).next_power_of_two();
        ByUnique {
            keys: vec![0; buckets],
            values: vec![empty; buckets],
            len: 0,
            capacity,
        }
    }

    fn bucket(&self, key: u64) -> usize {
        ((key >> 1) as usize) & (self.keys.len() - 1)
    }

    /// Sets `key`'s value. False (nothing kept) for key 0, or a new key
    /// when `capacity` entries are held.
    pub fn insert(&mut self, key: u64, value: V) -> bool {
        if key == 0 {
            return false;
        }
        let mask = self.keys.len() - 1;
        let mut i = self.bucket(key);
        while self.keys[i] != 0 && self.keys[i] != key {
            i = (i + 1) & mask;
        }
        if self.keys[i] == 0 {
            if self.len >= self.capacity {
                return false;
            }
            self.len += 1;
        }
        self.keys[i] = key;
        self.values[i] = value;
        true
    }

    fn find(&self, key: u64) -> Option<usize> {
        if key == 0 {
            return None;
        }
        let mask = self.keys.len() - 1;
        let mut i = self.bucket(key);
        loop {
            match self.keys[i] {
                0 => return None,
                k if k == key => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// `key`'s value, if held.
    pub fn get(&self, key: u64) -> Option<&V> {
        self.find(key).map(|i| &self.values[i])
    }

    /// Takes `key`'s value out.
    pub fn remove(&mut self, key: u64) -> Option<V> {
        let mut hole = self.find(key)?;
        let value = self.values[hole];
        let mask = self.keys.len() - 1;
        self.keys[hole] = 0;
        self.len -= 1;
        let mut i = (hole + 1) & mask;
        while self.keys[i] != 0 {
            let home = self.bucket(self.keys[i]);
            // Distance from home to i and to the hole, along the probe order.
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.keys[hole] = self.keys[i];
                self.values[hole] = self.values[i];
                self.keys[i] = 0;
                hole = i;
            }
            i = (i + 1) & mask;
        }
        Some(value)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collisions_and_removals_keep_every_entry_findable() {
        // A deterministic shuffle of inserts and removals over a small
        // table, checked against a plain model.
        let mut t = ByUnique::new(16, 0u32);
        let buckets = t.keys.len() as u64;
        let mut model: Vec<(u64, u32)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Keys that collide often: few buckets' worth of uniques.
            let key = ((x % (buckets * 3)) + 1) * 2;
            if model.len() < 16 && x & 1 == 0 && !model.iter().any(|&(k, _)| k == key) {
                assert!(t.insert(key, step));
                model.push((key, step));
            } else if let Some(pos) = (!model.is_empty()).then(|| (x >> 8) as usize % model.len()) {
                let (k, v) = model.swap_remove(pos);
                assert_eq!(t.remove(k), Some(v), "step {step}");
            }
            for &(k, v) in &model {
                assert_eq!(t.get(k), Some(&v), "step {step}");
            }
            assert_eq!(t.len(), model.len());
        }
    }

    #[test]
    fn capacity_is_kept_and_the_table_never_grows() {
        let mut t = ByUnique::new(2, 0u8);
        let cap = t.keys.capacity();
        assert!(t.insert(2, 1));
        assert!(t.insert(4, 2));
        assert!(!t.insert(6, 3), "full");
        assert!(t.insert(4, 5), "an update of a held key");
        assert!(!t.insert(0, 1), "key 0");
        assert_eq!(t.remove(4), Some(5));
        assert!(t.insert(6, 3));
        assert_eq!(t.keys.capacity(), cap);
    }
}
