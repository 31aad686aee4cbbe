//! Newtypes for the ids in FUSE headers, named after the header fields.

use core::fmt;

/// `FUSE_INT_REQ_BIT`: bit 0 of `unique`. The kernel numbers requests in
/// steps of 2, so bit 0 is free; it is set on an INTERRUPT request's unique
/// and on a daemon's reply to that INTERRUPT (EAGAIN or ENOSYS).
pub const FUSE_INT_REQ_BIT: u64 = 1;

/// `FUSE_UNIQUE_RESEND` (7.40): bit 63 of `unique` marks a request the kernel
/// resent after NOTIFY_RESEND.
pub const FUSE_UNIQUE_RESEND: u64 = 1 << 63;

/// `FUSE_ROOT_ID`: the node id of the mount's root.
pub const FUSE_ROOT_ID: u64 = 1;

/// A request id (`fuse_in_header.unique`), echoed in its reply.
///
/// # Lifecycle
/// The kernel picks it; it is live from the request until the reply (or,
/// for FORGET and BATCH_FORGET, never answered). 0 is never a request: an
/// out header with unique 0 is a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Unique(pub u64);

impl Unique {
    /// Whether bit 0 ([`FUSE_INT_REQ_BIT`]) is set: on a reply, it answers an
    /// INTERRUPT rather than the interrupted request.
    pub fn is_interrupt_reply(self) -> bool {
        self.0 & FUSE_INT_REQ_BIT != 0
    }

    /// The unique with bit 0 cleared: the interrupted request's id.
    #[must_use]
    pub fn without_int_bit(self) -> Unique {
        Unique(self.0 & !FUSE_INT_REQ_BIT)
    }

    /// Whether bit 63 ([`FUSE_UNIQUE_RESEND`]) is set.
    pub fn is_resend(self) -> bool {
        self.0 & FUSE_UNIQUE_RESEND != 0
    }
}

/// A node id (`fuse_in_header.nodeid`, `fuse_entry_out.nodeid`).
///
/// # Reference counting
/// Each successful LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE or TMPFILE
/// reply adds one lookup; FORGET/BATCH_FORGET drop `nlookup` of them. The id
/// may be reused once the count reaches zero. [`FUSE_ROOT_ID`] is never
/// forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub u64);

impl NodeId {
    /// The root, [`FUSE_ROOT_ID`].
    pub const ROOT: NodeId = NodeId(FUSE_ROOT_ID);
}

/// A file handle chosen by the daemon (`fuse_open_out.fh`).
///
/// # Lifecycle
/// Valid from the OPEN/OPENDIR/CREATE reply until the matching
/// RELEASE/RELEASEDIR; the kernel echoes it in READ, WRITE, FLUSH, FSYNC,
/// SETATTR (`FATTR_FH`) and friends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Fh(pub u64);

impl fmt::Display for Unique {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Fh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupt_bit() {
        let u = Unique(0x2a);
        assert!(!u.is_interrupt_reply());
        let i = Unique(0x2b);
        assert!(i.is_interrupt_reply());
        assert_eq!(i.without_int_bit(), u);
        assert!(Unique(FUSE_UNIQUE_RESEND | 2).is_resend());
        assert_eq!(Unique(0x2a).to_string(), "0x2a");
        assert_eq!(NodeId::ROOT.to_string(), "1");
    }
}
