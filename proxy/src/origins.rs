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
//! A fixed table ([`ByUnique`]) sized by the caller for every request that
//! can wait at once.

use fuseproxy_policies::by_unique::ByUnique;

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
    table: ByUnique<Route>,
}

impl Origins {
    /// Room for `waiting` requests at once.
    pub fn new(waiting: usize) -> Origins {
        Origins {
            table: ByUnique::new(waiting.max(16), Route::Reader(0)),
        }
    }

    /// Remembers that `reader` read the request `unique`. Returns false (and
    /// remembers nothing) only if the table is full, which its sizing rules
    /// out; the answer then goes to the first reader.
    pub fn insert(&mut self, unique: u64, reader: Route) -> bool {
        self.table.insert(unique & !INT_REQ_BIT, reader)
    }

    /// Where the answer to `unique` goes. An INTERRUPT's reply goes where
    /// the interrupted request was read, except that a ring takes no such
    /// reply (the kernel reads it from the device only, as it sends
    /// INTERRUPT there). `take` forgets it: the request's own answer is the
    /// last word on it.
    pub fn reader(&mut self, unique: u64, take: bool) -> Option<Route> {
        let key = unique & !INT_REQ_BIT;
        if unique & INT_REQ_BIT != 0 {
            return self.table.get(key).map(|r| match *r {
                Route::Ring(_) => Route::Reader(0),
                r => r,
            });
        }
        if take {
            self.table.remove(key)
        } else {
            self.table.get(key).copied()
        }
    }

    /// Requests remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.len()
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
}
