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
//! A fixed table ([`ByUnique`]): a request that finds it full, or is longer
//! than a copy holds, is not kept (it gets EIO at a death, as without the
//! table).

use fuseproxy_protocol::{Opcode, Unique};

use crate::action::INLINE_MAX;
use crate::by_unique::ByUnique;

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

/// A copy: the bytes and how many there are.
type Copy = ([u8; INLINE_MAX], u16);

/// The copies, by unique.
pub(super) struct Copies {
    table: ByUnique<Copy>,
}

impl Copies {
    /// Room for `capacity` copies.
    pub(super) fn new(capacity: usize) -> Copies {
        Copies {
            table: ByUnique::new(capacity, ([0; INLINE_MAX], 0)),
        }
    }

    /// Keeps a copy of `msg` under `unique`; false if it does not fit.
    pub(super) fn insert(&mut self, unique: Unique, msg: &[u8]) -> bool {
        if msg.len() > INLINE_MAX {
            return false;
        }
        let mut copy = ([0; INLINE_MAX], msg.len() as u16);
        copy.0[..msg.len()].copy_from_slice(msg);
        self.table.insert(unique.0, copy)
    }

    /// Takes the copy of `unique` out into `out`; its length, if kept.
    pub(super) fn take(&mut self, unique: Unique, out: &mut [u8; INLINE_MAX]) -> Option<usize> {
        let (bytes, n) = self.table.remove(unique.0)?;
        *out = bytes;
        Some(n as usize)
    }

    /// Whether a copy of `unique` is kept.
    pub(super) fn contains(&self, unique: Unique) -> bool {
        self.table.get(unique.0).is_some()
    }

    /// Forgets the copy of `unique` (answered).
    pub(super) fn remove(&mut self, unique: Unique) {
        self.table.remove(unique.0);
    }

    /// Copies kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_come_back_once_and_the_table_never_grows() {
        let mut c = Copies::new(4);
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
    }
}
