//! A byte ring for one producer thread and one consumer thread, allocated
//! once: the recorder's loop side appends whole records, the writer thread
//! takes them to the file.
//!
//! Positions are byte counts since the start (`u64`, never wrapping in
//! practice: 2^64 bytes); a position's place in the buffer is `pos % cap`.
//! The producer owns `[head, tail + cap)` (free space) and publishes with a
//! release store of `head`; the consumer owns `[tail, head)` (filled space)
//! and gives it back with a release store of `tail`. Each side reads the
//! other's counter with acquire, so the bytes behind a counter are visible
//! before the counter is. Neither side ever waits for the other: a push
//! that does not fit fails, and the consumer sees whatever was published.
//!
//! The only `unsafe` in the recorder is here: copies into and slices of
//! the shared buffer, each confined to the range its side owns.
#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The buffer and the two counters.
struct Shared {
    /// INVARIANT: its length `cap` never changes. Bytes in the producer's
    /// range are written only through `Producer` and bytes in the
    /// consumer's range only read through `Consumer` (see the module doc),
    /// so no byte is read and written at once.
    buf: Box<[UnsafeCell<u8>]>,
    /// Bytes ever published by the producer.
    head: AtomicU64,
    /// Bytes ever given back by the consumer. INVARIANT:
    /// `tail <= head <= tail + cap`.
    tail: AtomicU64,
}

// SAFETY: the cells are accessed from two threads only in disjoint ranges
// (module doc, `Shared::buf`), and the counters that move the boundary are
// atomics with release/acquire ordering, which orders every byte access
// before the hand-over.
unsafe impl Sync for Shared {}

impl Shared {
    fn cap(&self) -> usize {
        self.buf.len()
    }

    /// Start of the buffer, for raw access.
    fn base(&self) -> *mut u8 {
        // UnsafeCell<u8> has u8's layout, so the slice is `cap` bytes.
        UnsafeCell::raw_get(self.buf.as_ptr())
    }
}

/// The appending side: lives on the forwarding thread.
pub struct Producer {
    shared: Arc<Shared>,
    /// Our own copy of `head` (only we store it).
    head: u64,
}

/// The draining side: lives on the writer thread.
pub struct Consumer {
    shared: Arc<Shared>,
    /// Our own copy of `tail` (only we store it).
    tail: u64,
}

/// A ring of `cap` bytes (at least 1), zeroed and allocated here, once.
pub fn ring(cap: usize) -> (Producer, Consumer) {
    let bytes: Box<[u8]> = vec![0u8; cap.max(1)].into_boxed_slice();
    // SAFETY: `UnsafeCell<u8>` is `repr(transparent)` over `u8`, so the
    // slice's layout and length are the same; the box is moved, not shared.
    let buf = unsafe { Box::from_raw(Box::into_raw(bytes) as *mut [UnsafeCell<u8>]) };
    let shared = Arc::new(Shared {
        buf,
        head: AtomicU64::new(0),
        tail: AtomicU64::new(0),
    });
    (
        Producer {
            shared: Arc::clone(&shared),
            head: 0,
        },
        Consumer { shared, tail: 0 },
    )
}

impl Producer {
    /// Bytes of the ring.
    pub fn capacity(&self) -> usize {
        self.shared.cap()
    }

    /// Bytes published and not yet taken by the consumer.
    pub fn filled(&self) -> usize {
        let tail = self.shared.tail.load(Ordering::Acquire);
        (self.head - tail) as usize
    }

    /// Appends `parts`, one after another, and publishes them together; or,
    /// when they do not fit in the free space, writes nothing and returns
    /// `false`. Never waits and never allocates.
    pub fn push(&mut self, parts: &[&[u8]]) -> bool {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > self.capacity() - self.filled() {
            return false;
        }
        let cap = self.capacity();
        let base = self.shared.base();
        let mut pos = self.head;
        for part in parts {
            let mut src = *part;
            while !src.is_empty() {
                let at = (pos % cap as u64) as usize;
                let n = src.len().min(cap - at);
                // SAFETY: `at + n <= cap`, so the destination lies inside
                // the buffer. It is in `[head, head + total)`, which fits in
                // the free space checked above, `[head, tail + cap)`: the
                // consumer does not read it until `head` is published below
                // (release), and `src` is a caller's slice, not the ring.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(at), n) };
                src = &src[n..];
                pos += n as u64;
            }
        }
        self.head = pos;
        self.shared.head.store(pos, Ordering::Release);
        true
    }
}

impl Consumer {
    /// Bytes published and not yet consumed.
    pub fn len(&self) -> usize {
        (self.shared.head.load(Ordering::Acquire) - self.tail) as usize
    }

    /// The first `n` published bytes as at most two slices (the second is
    /// empty unless they wrap around the end of the buffer).
    ///
    /// # Panics
    /// If `n` is more than [`len`](Self::len): a caller's bug.
    pub fn slices(&self, n: usize) -> (&[u8], &[u8]) {
        assert!(n <= self.len(), "{n} bytes asked, {} published", self.len());
        let cap = self.shared.cap();
        let at = (self.tail % cap as u64) as usize;
        let first = n.min(cap - at);
        let base = self.shared.base();
        // SAFETY: both ranges lie inside the buffer (`at + first <= cap`,
        // `n - first <= at` since `n <= cap`) and within `[tail, tail + n)`,
        // published by the producer (acquire in `len`), which it does not
        // write again until `consume` gives it back; the `&self` borrow
        // ends before `consume` (`&mut self`) can.
        unsafe {
            (
                std::slice::from_raw_parts(base.add(at), first),
                std::slice::from_raw_parts(base, n - first),
            )
        }
    }

    /// Copies the `dst.len()` published bytes at `offset` past the tail
    /// into `dst` (a record header, say).
    ///
    /// # Panics
    /// If they are not all published.
    pub fn peek(&self, offset: usize, dst: &mut [u8]) {
        let (a, b) = self.slices(offset + dst.len());
        for (i, d) in (offset..).zip(dst.iter_mut()) {
            *d = if i < a.len() { a[i] } else { b[i - a.len()] };
        }
    }

    /// Gives the first `n` published bytes back to the producer.
    ///
    /// # Panics
    /// If `n` is more than [`len`](Self::len).
    pub fn consume(&mut self, n: usize) {
        assert!(
            n <= self.len(),
            "{n} bytes consumed, {} published",
            self.len()
        );
        self.tail += n as u64;
        self.shared.tail.store(self.tail, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let (mut p, mut c) = ring(16);
        assert!(p.push(&[b"abcdefghij"]));
        assert!(!p.push(&[b"0123456789"]), "only 6 bytes free");
        c.consume(8);
        assert!(p.push(&[b"01234", b"56789"]));
        assert_eq!(c.len(), 12);
        let (a, b) = c.slices(12);
        assert_eq!([a, b].concat(), b"ij0123456789");
        let mut h = [0u8; 4];
        c.peek(4, &mut h);
        assert_eq!(&h, b"2345");
        c.consume(12);
        assert_eq!(p.filled(), 0);
    }

    #[test]
    fn two_threads_see_every_byte_once() {
        let (mut p, mut c) = ring(1000);
        let n = 200_000u32;
        let t = std::thread::spawn(move || {
            let mut next = 0u32;
            while next < n {
                let len = c.len() / 4 * 4;
                let (a, b) = c.slices(len);
                for w in [a, b].concat().chunks(4) {
                    assert_eq!(u32::from_le_bytes(w.try_into().unwrap()), next);
                    next += 1;
                }
                c.consume(len);
            }
        });
        let mut i = 0u32;
        while i < n {
            if p.push(&[&i.to_le_bytes()]) {
                i += 1;
            } else {
                std::thread::yield_now();
            }
        }
        t.join().unwrap();
    }
}
