//! With `--restart`: copies of the kernel's requests that are safe to send
//! twice, kept while they are with the backend, so that those a dead
//! backend never answered go to the new one instead of failing.
//!
//! Safe to send twice: what reads and changes nothing (LOOKUP, GETATTR,
//! STATX, READ, READDIR, READDIRPLUS, READLINK, STATFS, GETXATTR,
//! LISTXATTR, ACCESS, LSEEK), and OPEN/OPENDIR (the dead daemon may have
//! opened the file, but its handle died with it; an O_TRUNC done twice
//! leaves the same empty file). The copy is the request as the kernel sent
//! it, in the kernel's ids; it is translated for the new backend when sent.
//!
//! A fixed table: open addressing by unique, linear probing, removal by
//! shifting back (no tombstones). INVARIANT: `keys.len()` is a power of two
//! and at least twice `capacity`, so a probe always ends at an empty bucket;
//! nothing is allocated after `new`. A request that finds the table full,
//! or is longer than a copy holds, is not kept (it gets EIO at a death, as
//! without the table).

use fuseproxy_protocol::{Opcode, Unique};

use crate::action::INLINE_MAX;

/// Whether `op` may be sent to a new backend after the old one died with it.
pub(super) fn is_safe_to_resend(op: Opcode) -> bool {
    matches!(
        op,
        Opcode::Lookup
            | Opcode::Getattr
            | Opcode::Statx
            | Opcode::Read
            | Opcode::Readdir
            | Opcode::Readdirplus
            | Opcode::Readlink
            | Opcode::Statfs
            | Opcode::Getxattr
            | Opcode::Listxattr
            | Opcode::Access
            | Opcode::Lseek
            | Opcode::Open
            | Opcode::Opendir
    )
}

/// The copies, by unique.
pub(super) struct Copies {
    /// 0: empty (the kernel never uses unique 0 for a request).
    keys: Vec<u64>,
    lens: Vec<u16>,
    bytes: Vec<[u8; INLINE_MAX]>,
    len: usize,
    capacity: usize,
}

impl Copies {
    /// Room for `capacity` copies.
    pub(super) fn new(capacity: usize) -> Copies {
        let buckets = (capacity.max(8) * 2).next_power_of_two();
        Copies {
            keys: vec![0; buckets],
            lens: vec![0; buckets],
            bytes: vec![[0; INLINE_MAX]; buckets],
            len: 0,
            capacity,
        }
    }

    fn bucket(&self, key: u64) -> usize {
        ((key >> 1) as usize) & (self.keys.len() - 1)
    }

    /// Keeps a copy of `msg` under `unique`; false if it does not fit.
    pub(super) fn insert(&mut self, unique: Unique, msg: &[u8]) -> bool {
        if unique.0 == 0 || msg.len() > INLINE_MAX || self.len >= self.capacity {
            return false;
        }
        let mask = self.keys.len() - 1;
        let mut i = self.bucket(unique.0);
        while self.keys[i] != 0 && self.keys[i] != unique.0 {
            i = (i + 1) & mask;
        }
        if self.keys[i] == 0 {
            self.len += 1;
        }
        self.keys[i] = unique.0;
        self.lens[i] = msg.len() as u16;
        self.bytes[i][..msg.len()].copy_from_slice(msg);
        true
    }

    /// Takes the copy of `unique` out into `out`; its length, if kept.
    pub(super) fn take(&mut self, unique: Unique, out: &mut [u8; INLINE_MAX]) -> Option<usize> {
        let i = self.find(unique.0)?;
        let n = self.lens[i] as usize;
        out[..n].copy_from_slice(&self.bytes[i][..n]);
        self.remove_at(i);
        Some(n)
    }

    /// Whether a copy of `unique` is kept.
    pub(super) fn contains(&self, unique: Unique) -> bool {
        self.find(unique.0).is_some()
    }

    /// Forgets the copy of `unique` (answered).
    pub(super) fn remove(&mut self, unique: Unique) {
        if let Some(i) = self.find(unique.0) {
            self.remove_at(i);
        }
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

    fn remove_at(&mut self, mut hole: usize) {
        let mask = self.keys.len() - 1;
        self.keys[hole] = 0;
        self.len -= 1;
        let mut i = (hole + 1) & mask;
        while self.keys[i] != 0 {
            let home = self.bucket(self.keys[i]);
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.keys[hole] = self.keys[i];
                self.lens[hole] = self.lens[i];
                self.bytes[hole] = self.bytes[i];
                self.keys[i] = 0;
                hole = i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Copies kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_come_back_once_and_the_table_never_grows() {
        let mut c = Copies::new(4);
        let cap = c.keys.capacity();
        for u in [2u64, 4, 6, 8] {
            assert!(c.insert(Unique(u), &u.to_ne_bytes()));
        }
        assert!(!c.insert(Unique(10), b"full"), "beyond capacity");
        assert!(!c.insert(Unique(12), &[0; INLINE_MAX + 1]));
        let mut out = [0u8; INLINE_MAX];
        assert_eq!(c.take(Unique(4), &mut out), Some(8));
        assert_eq!(&out[..8], &4u64.to_ne_bytes());
        assert_eq!(c.take(Unique(4), &mut out), None);
        c.remove(Unique(2));
        assert_eq!(c.len(), 2);
        assert_eq!(c.take(Unique(8), &mut out), Some(8));
        assert_eq!(&out[..8], &8u64.to_ne_bytes());
        assert_eq!(c.keys.capacity(), cap);
    }
}
