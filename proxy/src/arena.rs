//! The arena: every message buffer the proxy uses, allocated once.
//!
//! One anonymous mapping, locked in memory and touched page by page at start,
//! cut into equal slots each large enough for the largest FUSE message. A
//! message is read straight into a slot and written or sent from it; nothing
//! on the forwarding path allocates. When no slot is free the proxy stops
//! reading (backpressure) instead of allocating.
//!
//! A slot can be lent to another thread ([`Arena::lend`]): the notification
//! writer writes a backend's notification to the device from it while the
//! loop goes on. A lent slot is out of the arena's reach until it comes back
//! ([`Arena::reclaim`]): every accessor refuses it, and the mapping outlives
//! it.
#![allow(unsafe_code)]

use std::ptr::NonNull;

use memmap2::MmapMut;

use fuseproxy_policies::SlotId;

use crate::error::Error;

/// Bytes in one slot: the largest message the kernel sends with the default
/// `max_pages` limit of 256 (1 MiB of data) plus a page for the headers. The
/// engine clamps INIT's `max_write` so that no message is larger.
pub const SLOT_SIZE: usize = 1024 * 1024 + 4096;

/// Fewest slots: one per direction, one kept for the backend's replies
/// while requests are read, and one to lend to the notification writer.
pub const MIN_SLOTS: usize = 4;

/// Fixed slots over one locked mapping.
pub struct Arena {
    /// Owns the mapping; `None` only while dropping. Never dereferenced
    /// after `new`: every access goes through `base`, one slot at a time,
    /// so that no reference ever covers a slot lent to another thread.
    map: Option<MmapMut>,
    /// INVARIANT: the start of `map`, valid for reads and writes of
    /// `slots() * SLOT_SIZE` bytes for as long as `map` is mapped, and
    /// 8-aligned (page-aligned).
    base: NonNull<u8>,
    /// Bytes of a message held in each slot.
    lens: Vec<usize>,
    /// Free slots, used as a stack. INVARIANT: capacity == slot count, and
    /// each slot id appears at most once, so pushes never reallocate.
    free: Vec<u32>,
    /// INVARIANT: `lent[i]` while a [`Lent`] for slot `i` exists; no
    /// reference into a lent slot is made by the arena.
    lent: Vec<bool>,
    /// Slots lent now.
    lent_count: usize,
    locked: bool,
}

/// A slot's message, lent to another thread: the only handle to those bytes
/// until it goes back through [`Arena::reclaim`].
pub struct Lent {
    /// INVARIANT: `len` bytes inside the arena's mapping, in slot `slot`,
    /// which the arena marks lent (no reference into it exists elsewhere, no
    /// writer touches it) and keeps mapped while this handle lives.
    ptr: NonNull<u8>,
    len: usize,
    slot: SlotId,
}

// SAFETY: a `Lent` is a unique handle to bytes no other thread reads or
// writes (the arena refuses a lent slot, see `Arena::slot_ptr`) and that stay
// mapped while it exists (`Arena`'s `Drop` leaks the mapping if any slot is
// still lent). Moving it to another thread therefore moves sole access.
unsafe impl Send for Lent {}

impl Lent {
    /// The message.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: by the field invariant, `ptr..ptr+len` lies in one slot of
        // a live mapping that nothing else accesses while this handle lives,
        // and the borrow of `self` ties the slice to the handle's life.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, writable: a reader thread receives a message into a slot
    /// lent whole ([`Arena::lend_whole`]).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only reference
        // through the handle, and no other exists (the slot is lent).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

// SAFETY: the arena owns its mapping (`base` points into `map`, which
// moves with it) and gives access to a slot only through `&self`/`&mut self`
// or a `Lent`; moving the arena to another thread, or sharing it behind the
// session's mutex, moves or serializes that access with it.
unsafe impl Send for Arena {}

impl Drop for Arena {
    fn drop(&mut self) {
        if self.lent_count > 0 {
            // A thread may still read a lent slot (a notification stuck in
            // the kernel at exit): leave the mapping in place for it.
            std::mem::forget(self.map.take());
        }
    }
}

impl Arena {
    /// Maps `size` bytes (rounded down to whole slots, at least
    /// [`MIN_SLOTS`]), locks them and touches every page.
    pub fn new(size: usize) -> Result<Arena, Error> {
        let slots = (size / SLOT_SIZE).max(MIN_SLOTS);
        let mut map = MmapMut::map_anon(slots * SLOT_SIZE)
            .map_err(|e| Error::Setup(format!("cannot map a {size}-byte arena: {e}")))?;
        let locked = map.lock().is_ok();
        for page in map.chunks_mut(4096) {
            page[0] = 0;
        }
        let base = NonNull::new(map.as_mut_ptr()).expect("mmap never returns null");
        Ok(Arena {
            map: Some(map),
            base,
            lens: vec![0; slots],
            free: (0..slots as u32).rev().collect(),
            lent: vec![false; slots],
            lent_count: 0,
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
    ///
    /// # Panics
    ///
    /// If the slot is lent.
    pub fn release(&mut self, slot: SlotId) {
        debug_assert!(!self.free.contains(&slot.0), "slot {} freed twice", slot.0);
        assert!(!self.lent[slot.0 as usize], "slot {} is lent", slot.0);
        self.lens[slot.0 as usize] = 0;
        self.free.push(slot.0);
    }

    /// Start of a slot that is not lent.
    ///
    /// # Panics
    ///
    /// If the slot is lent or out of range: either is a bug of the caller.
    fn slot_ptr(&self, slot: SlotId) -> *mut u8 {
        let i = slot.0 as usize;
        assert!(!self.lent[i], "slot {i} is lent");
        // SAFETY: `i < slots()` (the index above would have panicked), so the
        // offset stays inside the mapping `base` points to.
        unsafe { self.base.as_ptr().add(i * SLOT_SIZE) }
    }

    /// The whole slot, to receive a message into.
    #[cfg(test)]
    pub fn buf_mut(&mut self, slot: SlotId) -> &mut [u8] {
        let p = self.slot_ptr(slot);
        // SAFETY: `p..p+SLOT_SIZE` is one whole slot of the live mapping
        // (`slot_ptr`); it is not lent, so no other thread accesses it, and
        // the `&mut self` borrow excludes any other reference the arena
        // handed out. Slots never overlap.
        unsafe { std::slice::from_raw_parts_mut(p, SLOT_SIZE) }
    }

    /// Records that the slot holds a message of `len` bytes.
    pub fn set_len(&mut self, slot: SlotId, len: usize) {
        self.lens[slot.0 as usize] = len.min(SLOT_SIZE);
    }

    /// The message held in the slot.
    pub fn msg(&self, slot: SlotId) -> &[u8] {
        let p = self.slot_ptr(slot);
        // SAFETY: as in `buf_mut`, for `lens[slot] <= SLOT_SIZE` bytes; the
        // `&self` borrow excludes a `&mut` from `buf_mut`/`msg_mut`.
        unsafe { std::slice::from_raw_parts(p, self.lens[slot.0 as usize]) }
    }

    /// The message held in the slot, writable (the engine rewrites INIT).
    pub fn msg_mut(&mut self, slot: SlotId) -> &mut [u8] {
        let p = self.slot_ptr(slot);
        // SAFETY: as in `buf_mut`, for `lens[slot] <= SLOT_SIZE` bytes.
        unsafe { std::slice::from_raw_parts_mut(p, self.lens[slot.0 as usize]) }
    }

    /// Lends the message in a slot in use: the arena refuses the slot until
    /// [`Arena::reclaim`] takes the handle back.
    pub fn lend(&mut self, slot: SlotId) -> Lent {
        let ptr = self.slot_ptr(slot);
        self.lent[slot.0 as usize] = true;
        self.lent_count += 1;
        Lent {
            // `slot_ptr` offsets a non-null base inside the mapping.
            ptr: NonNull::new(ptr).expect("a slot's address is not null"),
            len: self.lens[slot.0 as usize],
            slot,
        }
    }

    /// Takes a free slot and lends all of it, to receive a message into
    /// outside the session's lock; `None` when no slot is free. Its length
    /// is set by [`Arena::set_len`] once it is reclaimed.
    pub fn lend_whole(&mut self) -> Option<Lent> {
        let slot = self.alloc()?;
        self.lens[slot.0 as usize] = SLOT_SIZE;
        Some(self.lend(slot))
    }

    /// Takes a lent slot back; it is in use again (release it to free it).
    pub fn reclaim(&mut self, lent: Lent) -> SlotId {
        let i = lent.slot.0 as usize;
        debug_assert!(self.lent[i], "slot {i} reclaimed but not lent");
        self.lent[i] = false;
        self.lent_count -= 1;
        lent.slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_slot_comes_back_with_its_message() {
        let mut a = Arena::new(0).unwrap();
        assert_eq!(a.slots(), MIN_SLOTS);
        let s = a.alloc().unwrap();
        a.buf_mut(s)[..3].copy_from_slice(b"abc");
        a.set_len(s, 3);
        let lent = a.lend(s);
        assert_eq!(a.lent_count, 1);
        let back = std::thread::spawn(move || {
            assert_eq!(lent.bytes(), b"abc");
            lent
        })
        .join()
        .unwrap();
        assert_eq!(a.reclaim(back), s);
        assert_eq!(a.msg(s), b"abc");
        a.release(s);
        assert_eq!(a.free(), MIN_SLOTS);
    }

    #[test]
    #[should_panic(expected = "is lent")]
    fn a_lent_slot_is_refused() {
        let mut a = Arena::new(0).unwrap();
        let s = a.alloc().unwrap();
        let _lent = a.lend(s);
        let _ = a.msg(s);
    }
}
