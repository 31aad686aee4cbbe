//! The arena: every message buffer the proxy uses, allocated once.
//!
//! One anonymous mapping, locked in memory and touched page by page at start,
//! cut into equal slots each large enough for the largest FUSE message. A
//! message is read straight into a slot and written or sent from it; nothing
//! on the forwarding path allocates. When no slot is free the proxy stops
//! reading (backpressure) instead of allocating.

use memmap2::MmapMut;

use fuseproxy_policies::SlotId;

use crate::error::Error;

/// Bytes in one slot: the largest message the kernel sends with the default
/// `max_pages` limit of 256 (1 MiB of data) plus a page for the headers. The
/// engine clamps INIT's `max_write` so that no message is larger.
pub const SLOT_SIZE: usize = 1024 * 1024 + 4096;

/// Fixed slots over one locked mapping.
pub struct Arena {
    map: MmapMut,
    /// Bytes of a message held in each slot.
    lens: Vec<usize>,
    /// Free slots, used as a stack. INVARIANT: capacity == slot count, and
    /// each slot id appears at most once, so pushes never reallocate.
    free: Vec<u32>,
    locked: bool,
}

impl Arena {
    /// Maps `size` bytes (rounded down to whole slots, at least two: one per
    /// direction), locks them and touches every page.
    pub fn new(size: usize) -> Result<Arena, Error> {
        let slots = (size / SLOT_SIZE).max(2);
        let mut map = MmapMut::map_anon(slots * SLOT_SIZE)
            .map_err(|e| Error::Setup(format!("cannot map a {size}-byte arena: {e}")))?;
        let locked = map.lock().is_ok();
        for page in map.chunks_mut(4096) {
            page[0] = 0;
        }
        Ok(Arena {
            map,
            lens: vec![0; slots],
            free: (0..slots as u32).rev().collect(),
            locked,
        })
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Whether mlock took effect on the mapping.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Free slots left.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Takes a free slot, or `None` when all are in use.
    pub fn alloc(&mut self) -> Option<SlotId> {
        self.free.pop().map(SlotId)
    }

    /// Returns a slot to the free list.
    pub fn release(&mut self, slot: SlotId) {
        debug_assert!(!self.free.contains(&slot.0), "slot {} freed twice", slot.0);
        self.lens[slot.0 as usize] = 0;
        self.free.push(slot.0);
    }

    /// The whole slot, to receive a message into.
    pub fn buf_mut(&mut self, slot: SlotId) -> &mut [u8] {
        let start = slot.0 as usize * SLOT_SIZE;
        &mut self.map[start..start + SLOT_SIZE]
    }

    /// Records that the slot holds a message of `len` bytes.
    pub fn set_len(&mut self, slot: SlotId, len: usize) {
        self.lens[slot.0 as usize] = len.min(SLOT_SIZE);
    }

    /// The message held in the slot.
    pub fn msg(&self, slot: SlotId) -> &[u8] {
        let start = slot.0 as usize * SLOT_SIZE;
        &self.map[start..start + self.lens[slot.0 as usize]]
    }

    /// The message held in the slot, writable (the engine rewrites INIT).
    pub fn msg_mut(&mut self, slot: SlotId) -> &mut [u8] {
        let start = slot.0 as usize * SLOT_SIZE;
        let len = self.lens[slot.0 as usize];
        &mut self.map[start..start + len]
    }
}
