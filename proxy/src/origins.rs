//! Which device clone, or which io_uring entry, carried each request still
//! waiting for its answer.
//!
//! The kernel finds the request a reply answers in the processing queue of
//! the device file the reply is written to (`fuse_dev_do_write` looks in
//! `fud->pq`), so with several readers, each on its own clone
//! (FUSE_DEV_IOC_CLONE), an answer must go back to the clone that read the
//! request. With FUSE-over-io_uring an answer is committed to the ring
//! entry that carried the request. This table remembers where from the read
//! to the answer.
//!
//! Open addressing with linear probing over a power-of-two array allocated
//! once; removal shifts the following entries back, so there are no
//! tombstones and a lookup never walks further than the cluster it hashes
//! into. The kernel hands out uniques in steps of two from one counter, so
//! `unique >> 1` spreads live requests over consecutive buckets.
//!
//! INVARIANT: `keys.len()` is a power of two and at least twice the number
//! of requests that can be waiting at once (the caller sizes it), so an
//! insert always finds an empty bucket and probes stay short.

/// Bit the kernel sets in an INTERRUPT's unique (and in the reply to it):
/// the request it refers to has the same unique without it.
const INT_REQ_BIT: u64 = 1;

/// Where a request came from, and so where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Read from this reader's device clone (0: the mounted device).
    Reader(u8),
    /// Carried by this entry of the kernel's io_uring.
    Ring(u32),
}

/// Where each waiting request came from, by unique.
pub struct Origins {
    /// 0 = empty (the kernel never uses unique 0 for a request).
    keys: Vec<u64>,
    readers: Vec<Route>,
    len: usize,
}

impl Origins {
    /// Room for `waiting` requests at once.
    pub fn new(waiting: usize) -> Origins {
        let cap = (waiting.max(16) * 2).next_power_of_two();
        Origins {
            keys: vec![0; cap],
            readers: vec![Route::Reader(0); cap],
            len: 0,
        }
    }

    fn bucket(&self, key: u64) -> usize {
        ((key >> 1) as usize) & (self.keys.len() - 1)
    }

    /// Remembers that `reader` read the request `unique`. Returns false (and
    /// remembers nothing) only if the table is full, which its sizing rules
    /// out; the answer then goes to the first reader.
    pub fn insert(&mut self, unique: u64, reader: Route) -> bool {
        let key = unique & !INT_REQ_BIT;
        if key == 0 || self.len + 1 >= self.keys.len() {
            return false;
        }
        let mask = self.keys.len() - 1;
        let mut i = self.bucket(key);
        loop {
            if self.keys[i] == 0 || self.keys[i] == key {
                if self.keys[i] == 0 {
                    self.len += 1;
                }
                self.keys[i] = key;
                self.readers[i] = reader;
                return true;
            }
            i = (i + 1) & mask;
        }
    }

    fn find(&self, key: u64) -> Option<usize> {
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

    /// Where the answer to `unique` goes. An INTERRUPT's reply goes where
    /// the interrupted request was read, except that a ring takes no such
    /// reply (the kernel reads it from the device only, as it sends
    /// INTERRUPT there). `take` forgets it: the request's own answer is the
    /// last word on it.
    pub fn reader(&mut self, unique: u64, take: bool) -> Option<Route> {
        let key = unique & !INT_REQ_BIT;
        if key == 0 {
            return None;
        }
        let i = self.find(key)?;
        let reader = self.readers[i];
        if unique & INT_REQ_BIT != 0 {
            return Some(match reader {
                Route::Ring(_) => Route::Reader(0),
                r => r,
            });
        }
        if take {
            self.remove_at(i);
        }
        Some(reader)
    }

    /// Empties bucket `i` and moves back every entry after it in the cluster
    /// that would no longer be found past the hole.
    fn remove_at(&mut self, mut hole: usize) {
        let mask = self.keys.len() - 1;
        self.keys[hole] = 0;
        self.len -= 1;
        let mut i = (hole + 1) & mask;
        while self.keys[i] != 0 {
            let home = self.bucket(self.keys[i]);
            // Distance from home to i and to the hole, along the probe order.
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.keys[hole] = self.keys[i];
                self.readers[hole] = self.readers[i];
                self.keys[i] = 0;
                hole = i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Requests remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_go_to_their_reader_and_are_forgotten() {
        let mut o = Origins::new(8);
        assert!(o.insert(2, Route::Reader(0)));
        assert!(o.insert(4, Route::Reader(3)));
        assert!(o.insert(6, Route::Ring(9)));
        // An INTERRUPT's reply goes to the interrupted request's reader and
        // does not end it; for a request from the ring, to the device.
        assert_eq!(o.reader(4 | INT_REQ_BIT, true), Some(Route::Reader(3)));
        assert_eq!(o.reader(6 | INT_REQ_BIT, true), Some(Route::Reader(0)));
        assert_eq!(o.reader(4, true), Some(Route::Reader(3)));
        assert_eq!(o.reader(4, true), None);
        assert_eq!(o.reader(6, true), Some(Route::Ring(9)));
        assert_eq!(o.reader(2, false), Some(Route::Reader(0)));
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn collisions_and_removals_keep_every_entry_findable() {
        // A deterministic shuffle of inserts and removals over a small table,
        // checked against a plain model.
        let mut o = Origins::new(16);
        let cap = o.keys.len() as u64;
        let mut model: Vec<(u64, Route)> = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Keys that collide often: few buckets' worth of uniques.
            let key = ((x % (cap * 3)) + 1) * 2;
            if model.len() < 16 && x & 1 == 0 && !model.iter().any(|&(k, _)| k == key) {
                let r = match step % 3 {
                    0 => Route::Ring(step),
                    _ => Route::Reader((step % 7) as u8),
                };
                assert!(o.insert(key, r));
                model.push((key, r));
            } else if let Some(pos) = (!model.is_empty()).then(|| (x >> 8) as usize % model.len()) {
                let (k, r) = model.swap_remove(pos);
                assert_eq!(o.reader(k, true), Some(r), "step {step}");
            }
            for &(k, r) in &model {
                assert_eq!(o.reader(k, false), Some(r), "step {step}");
            }
            assert_eq!(o.len(), model.len());
        }
    }
}
