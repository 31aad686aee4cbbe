//! Attributes the backend last reported for each node.
//!
//! Fed by every reply that carries a `fuse_attr` (LOOKUP, GETATTR, SETATTR,
//! CREATE, MKNOD, MKDIR, SYMLINK, LINK, READDIRPLUS) and dropped on FORGET,
//! so that a time-only SETATTR can be answered with real attributes. Never
//! invented: a node that is not here is simply forwarded.
//!
//! Fixed capacity, allocated once: a 4-way set-associative table. A full set
//! evicts its least recently stored entry, which costs that node nothing but
//! a synchronous round trip on its next time update.

use fuseproxy_protocol::abi::Attr;
use fuseproxy_protocol::NodeId;

const WAYS: usize = 4;

/// A cached `fuse_attr` and how long the backend said it stays valid.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cached {
    /// The attributes (times already overlaid with the proxy's pending ones).
    pub attr: Attr,
    /// `attr_valid` seconds from the reply that stored it.
    pub attr_valid: u64,
    /// `attr_valid_nsec` from that reply.
    pub attr_valid_nsec: u32,
    /// The backend may have changed mtime/ctime since (a WRITE, an
    /// O_TRUNC open, an unlink): only an update that sets mtime can be
    /// answered from here.
    pub times_unknown: bool,
    /// Size or link count were adjusted by the proxy (WRITE, UNLINK) rather
    /// than reported: an answer built on them tells the kernel not to keep
    /// them (`attr_valid` 0), so its next `stat` asks the backend.
    pub derived: bool,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    /// 0 = empty (node 0 is never a real node).
    node: u64,
    stamp: u64,
    /// The cache's epoch when stored; an older one reads as empty.
    epoch: u64,
    value: Cached,
}

/// The cache; see the module doc.
pub struct AttrCache {
    /// INVARIANT: `slots.len()` is a power of two times `WAYS`.
    slots: Vec<Slot>,
    clock: u64,
    /// Bumped by [`clear`](Self::clear): O(1) however large the cache.
    epoch: u64,
}

impl AttrCache {
    /// A cache for about `capacity` nodes (rounded up to a power of two).
    pub fn with_capacity(capacity: usize) -> Self {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        AttrCache {
            slots: vec![Slot::default(); sets * WAYS],
            clock: 0,
            epoch: 1,
        }
    }

    fn set(&self, node: NodeId) -> core::ops::Range<usize> {
        let sets = self.slots.len() / WAYS;
        let h = node.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let s = (h as usize) & (sets - 1);
        s * WAYS..s * WAYS + WAYS
    }

    /// The cached attributes of `node`.
    pub fn get(&self, node: NodeId) -> Option<&Cached> {
        let epoch = self.epoch;
        self.slots[self.set(node)]
            .iter()
            .find(|s| s.node == node.0 && node.0 != 0 && s.epoch == epoch)
            .map(|s| &s.value)
    }

    /// The cached attributes of `node`, to update in place.
    pub fn get_mut(&mut self, node: NodeId) -> Option<&mut Cached> {
        let (r, epoch) = (self.set(node), self.epoch);
        self.slots[r]
            .iter_mut()
            .find(|s| s.node == node.0 && node.0 != 0 && s.epoch == epoch)
            .map(|s| &mut s.value)
    }

    /// Stores (or replaces) `node`'s attributes.
    pub fn insert(&mut self, node: NodeId, value: Cached) {
        if node.0 == 0 {
            return;
        }
        self.clock += 1;
        let stamp = self.clock;
        let r = self.set(node);
        let set = &mut self.slots[r];
        let epoch = self.epoch;
        let i = set
            .iter()
            .position(|s| s.node == node.0)
            .or_else(|| set.iter().position(|s| s.node == 0 || s.epoch != epoch))
            .unwrap_or_else(|| {
                let (i, _) = set
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| s.stamp)
                    .unwrap_or((0, &set[0]));
                i
            });
        set[i] = Slot {
            node: node.0,
            stamp,
            epoch,
            value,
        };
    }

    /// Forgets everything, in O(1): entries of an older epoch read as empty.
    pub fn clear(&mut self) {
        self.epoch += 1;
    }

    /// Forgets `node` (FORGET: the kernel no longer knows it).
    pub fn remove(&mut self, node: NodeId) {
        let r = self.set(node);
        if let Some(s) = self.slots[r].iter_mut().find(|s| s.node == node.0) {
            *s = Slot::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(ino: u64) -> Cached {
        Cached {
            attr: Attr {
                ino,
                ..Attr::default()
            },
            ..Cached::default()
        }
    }

    #[test]
    fn store_get_remove() {
        let mut c = AttrCache::with_capacity(16);
        c.insert(NodeId(7), cached(70));
        assert_eq!(c.get(NodeId(7)).unwrap().attr.ino, 70);
        c.insert(NodeId(7), cached(71));
        assert_eq!(c.get(NodeId(7)).unwrap().attr.ino, 71);
        c.remove(NodeId(7));
        assert!(c.get(NodeId(7)).is_none());
        c.insert(NodeId(0), cached(1));
        assert!(c.get(NodeId(0)).is_none());
        c.insert(NodeId(8), cached(80));
        c.clear();
        assert!(c.get(NodeId(8)).is_none());
        c.insert(NodeId(9), cached(90));
        assert_eq!(c.get(NodeId(9)).unwrap().attr.ino, 90);
    }

    #[test]
    fn a_full_cache_evicts_and_never_grows() {
        let mut c = AttrCache::with_capacity(8);
        let before = c.slots.len();
        for n in 1..=1000u64 {
            c.insert(NodeId(n), cached(n));
            assert_eq!(
                c.get(NodeId(n)).unwrap().attr.ino,
                n,
                "the newest is always there"
            );
        }
        assert_eq!(c.slots.len(), before);
        let present = (1..=1000u64)
            .filter(|n| c.get(NodeId(*n)).is_some())
            .count();
        assert_eq!(present, before);
    }
}
