//! Request opcodes (`enum fuse_opcode`) and notification codes
//! (`enum fuse_notify_code`) of protocol 7.45.
//!
//! Both enums carry an `Unknown` variant, so a value this crate has never seen
//! converts and converts back unchanged: a relay forwards what it does not
//! understand.

use core::fmt;

/// Defines an enum with an `Unknown(raw)` variant, `From` both ways and a
/// `Display` printing the kernel's name.
macro_rules! enum_with_unknown {
    (
        $(#[$m:meta])*
        pub enum $name:ident($raw:ty) {
            $( $(#[$vm:meta])* $variant:ident = $value:literal => $cname:literal, )+
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vm])* $variant, )+
            /// A value this crate does not know; kept so it round-trips.
            Unknown($raw),
        }

        impl From<$raw> for $name {
            fn from(raw: $raw) -> Self {
                match raw {
                    $( $value => $name::$variant, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for $raw {
            fn from(v: $name) -> Self {
                match v {
                    $( $name::$variant => $value, )+
                    $name::Unknown(other) => other,
                }
            }
        }

        impl $name {
            /// The kernel's name (`FUSE_LOOKUP`), or `None` for `Unknown`.
            pub fn kernel_name(self) -> Option<&'static str> {
                match self {
                    $( $name::$variant => Some($cname), )+
                    $name::Unknown(_) => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.kernel_name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "UNKNOWN({})", <$raw>::from(*self)),
                }
            }
        }
    };
}

enum_with_unknown! {
    /// `enum fuse_opcode`: what a request asks for.
    ///
    /// Converted with `From<u32>` by a `match`, never a transmute: the range
    /// has holes (7 and 19 were never used, CUSE_INIT is 4096) and any `u32`
    /// can arrive, so each value is matched and the rest become `Unknown`.
    /// `CUSE_INIT_BSWAP_RESERVED` and `FUSE_INIT_BSWAP_RESERVED` are not
    /// requests and stay `Unknown`.
    pub enum Opcode(u32) {
        /// `FUSE_LOOKUP`.
        Lookup = 1 => "FUSE_LOOKUP",
        /// `FUSE_FORGET`: no reply.
        Forget = 2 => "FUSE_FORGET",
        /// `FUSE_GETATTR`.
        Getattr = 3 => "FUSE_GETATTR",
        /// `FUSE_SETATTR` (7.1).
        Setattr = 4 => "FUSE_SETATTR",
        /// `FUSE_READLINK`.
        Readlink = 5 => "FUSE_READLINK",
        /// `FUSE_SYMLINK` (7.1).
        Symlink = 6 => "FUSE_SYMLINK",
        /// `FUSE_MKNOD` (7.1).
        Mknod = 8 => "FUSE_MKNOD",
        /// `FUSE_MKDIR` (7.1).
        Mkdir = 9 => "FUSE_MKDIR",
        /// `FUSE_UNLINK` (7.1).
        Unlink = 10 => "FUSE_UNLINK",
        /// `FUSE_RMDIR` (7.1).
        Rmdir = 11 => "FUSE_RMDIR",
        /// `FUSE_RENAME` (7.1).
        Rename = 12 => "FUSE_RENAME",
        /// `FUSE_LINK` (7.1).
        Link = 13 => "FUSE_LINK",
        /// `FUSE_OPEN` (7.1).
        Open = 14 => "FUSE_OPEN",
        /// `FUSE_READ` (7.1).
        Read = 15 => "FUSE_READ",
        /// `FUSE_WRITE` (7.1).
        Write = 16 => "FUSE_WRITE",
        /// `FUSE_STATFS`.
        Statfs = 17 => "FUSE_STATFS",
        /// `FUSE_RELEASE` (7.1).
        Release = 18 => "FUSE_RELEASE",
        /// `FUSE_FSYNC` (7.1).
        Fsync = 20 => "FUSE_FSYNC",
        /// `FUSE_SETXATTR` (7.1).
        Setxattr = 21 => "FUSE_SETXATTR",
        /// `FUSE_GETXATTR` (7.1).
        Getxattr = 22 => "FUSE_GETXATTR",
        /// `FUSE_LISTXATTR` (7.1).
        Listxattr = 23 => "FUSE_LISTXATTR",
        /// `FUSE_REMOVEXATTR` (7.1).
        Removexattr = 24 => "FUSE_REMOVEXATTR",
        /// `FUSE_FLUSH` (7.1).
        Flush = 25 => "FUSE_FLUSH",
        /// `FUSE_INIT`.
        Init = 26 => "FUSE_INIT",
        /// `FUSE_OPENDIR` (7.1).
        Opendir = 27 => "FUSE_OPENDIR",
        /// `FUSE_READDIR` (7.1).
        Readdir = 28 => "FUSE_READDIR",
        /// `FUSE_RELEASEDIR` (7.1).
        Releasedir = 29 => "FUSE_RELEASEDIR",
        /// `FUSE_FSYNCDIR` (7.2).
        Fsyncdir = 30 => "FUSE_FSYNCDIR",
        /// `FUSE_GETLK` (7.7).
        Getlk = 31 => "FUSE_GETLK",
        /// `FUSE_SETLK` (7.7).
        Setlk = 32 => "FUSE_SETLK",
        /// `FUSE_SETLKW` (7.7).
        Setlkw = 33 => "FUSE_SETLKW",
        /// `FUSE_ACCESS` (7.3).
        Access = 34 => "FUSE_ACCESS",
        /// `FUSE_CREATE` (7.3).
        Create = 35 => "FUSE_CREATE",
        /// `FUSE_INTERRUPT` (7.7): no reply expected (see
        /// [`Opcode::needs_reply`]).
        Interrupt = 36 => "FUSE_INTERRUPT",
        /// `FUSE_BMAP` (7.8).
        Bmap = 37 => "FUSE_BMAP",
        /// `FUSE_DESTROY` (7.8).
        Destroy = 38 => "FUSE_DESTROY",
        /// `FUSE_IOCTL` (7.11).
        Ioctl = 39 => "FUSE_IOCTL",
        /// `FUSE_POLL` (7.11).
        Poll = 40 => "FUSE_POLL",
        /// `FUSE_NOTIFY_REPLY` (7.15): the data for a NOTIFY_RETRIEVE; no
        /// reply.
        NotifyReply = 41 => "FUSE_NOTIFY_REPLY",
        /// `FUSE_BATCH_FORGET` (7.16): no reply.
        BatchForget = 42 => "FUSE_BATCH_FORGET",
        /// `FUSE_FALLOCATE` (7.19).
        Fallocate = 43 => "FUSE_FALLOCATE",
        /// `FUSE_READDIRPLUS` (7.21).
        Readdirplus = 44 => "FUSE_READDIRPLUS",
        /// `FUSE_RENAME2` (7.23).
        Rename2 = 45 => "FUSE_RENAME2",
        /// `FUSE_LSEEK` (7.24).
        Lseek = 46 => "FUSE_LSEEK",
        /// `FUSE_COPY_FILE_RANGE` (7.28).
        CopyFileRange = 47 => "FUSE_COPY_FILE_RANGE",
        /// `FUSE_SETUPMAPPING` (7.31).
        SetupMapping = 48 => "FUSE_SETUPMAPPING",
        /// `FUSE_REMOVEMAPPING` (7.31).
        RemoveMapping = 49 => "FUSE_REMOVEMAPPING",
        /// `FUSE_SYNCFS` (7.34).
        Syncfs = 50 => "FUSE_SYNCFS",
        /// `FUSE_TMPFILE` (7.37).
        TmpFile = 51 => "FUSE_TMPFILE",
        /// `FUSE_STATX` (7.39).
        Statx = 52 => "FUSE_STATX",
        /// `FUSE_COPY_FILE_RANGE_64` (7.45).
        CopyFileRange64 = 53 => "FUSE_COPY_FILE_RANGE_64",
        /// `CUSE_INIT`.
        CuseInit = 4096 => "CUSE_INIT",
    }
}

impl Opcode {
    /// Whether a successful reply is a `fuse_entry_out` naming a node
    /// (LOOKUP, MKNOD, MKDIR, SYMLINK, LINK; CREATE and TMPFILE, with a
    /// `fuse_open_out` after it).
    pub fn replies_with_entry(self) -> bool {
        matches!(
            self,
            Opcode::Lookup
                | Opcode::Mknod
                | Opcode::Mkdir
                | Opcode::Symlink
                | Opcode::Link
                | Opcode::Create
                | Opcode::TmpFile
        )
    }

    /// Whether the kernel waits for a reply to this request.
    ///
    /// False for FORGET and BATCH_FORGET (`/* no reply */` in fuse.h), for
    /// NOTIFY_REPLY (the kernel marks it `noreply`) and for INTERRUPT: the
    /// kernel expects no answer, though a daemon MAY reply with EAGAIN (a
    /// reply whose unique has `FUSE_INT_REQ_BIT`, see
    /// [`crate::ids::Unique::is_interrupt_reply`]) to ask for the interrupt
    /// to be queued again, or ENOSYS to turn interrupts off. A relay must
    /// never synthesize a reply for any of these four.
    ///
    /// Unknown opcodes are assumed to want a reply (the kernel would be
    /// waiting; a daemon answers them with ENOSYS).
    pub fn needs_reply(self) -> bool {
        !matches!(
            self,
            Opcode::Forget | Opcode::BatchForget | Opcode::NotifyReply | Opcode::Interrupt
        )
    }
}

enum_with_unknown! {
    /// `enum fuse_notify_code`: the kind of an unsolicited message from the
    /// daemon (an out header with `unique` 0 carries the code in `error`).
    pub enum NotifyCode(i32) {
        /// `FUSE_NOTIFY_POLL` (7.11).
        Poll = 1 => "FUSE_NOTIFY_POLL",
        /// `FUSE_NOTIFY_INVAL_INODE` (7.12).
        InvalInode = 2 => "FUSE_NOTIFY_INVAL_INODE",
        /// `FUSE_NOTIFY_INVAL_ENTRY` (7.12).
        InvalEntry = 3 => "FUSE_NOTIFY_INVAL_ENTRY",
        /// `FUSE_NOTIFY_STORE` (7.15).
        Store = 4 => "FUSE_NOTIFY_STORE",
        /// `FUSE_NOTIFY_RETRIEVE` (7.15): the kernel answers with a
        /// NOTIFY_REPLY request.
        Retrieve = 5 => "FUSE_NOTIFY_RETRIEVE",
        /// `FUSE_NOTIFY_DELETE` (7.18).
        Delete = 6 => "FUSE_NOTIFY_DELETE",
        /// `FUSE_NOTIFY_RESEND` (7.40): the kernel resends pending requests.
        Resend = 7 => "FUSE_NOTIFY_RESEND",
        /// `FUSE_NOTIFY_INC_EPOCH` (7.44).
        IncEpoch = 8 => "FUSE_NOTIFY_INC_EPOCH",
        /// `FUSE_NOTIFY_PRUNE` (7.45).
        Prune = 9 => "FUSE_NOTIFY_PRUNE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_round_trips_and_holes_are_unknown() {
        for raw in 0..=60u32 {
            assert_eq!(u32::from(Opcode::from(raw)), raw);
        }
        assert_eq!(Opcode::from(7), Opcode::Unknown(7));
        assert_eq!(Opcode::from(19), Opcode::Unknown(19));
        assert_eq!(Opcode::from(4096), Opcode::CuseInit);
        assert_eq!(Opcode::from(53), Opcode::CopyFileRange64);
        assert_eq!(Opcode::from(436_207_616), Opcode::Unknown(436_207_616));
    }

    #[test]
    fn display_uses_kernel_names() {
        assert_eq!(Opcode::Setattr.to_string(), "FUSE_SETATTR");
        assert_eq!(Opcode::BatchForget.to_string(), "FUSE_BATCH_FORGET");
        assert_eq!(Opcode::Unknown(99).to_string(), "UNKNOWN(99)");
        assert_eq!(
            NotifyCode::InvalEntry.to_string(),
            "FUSE_NOTIFY_INVAL_ENTRY"
        );
        assert_eq!(NotifyCode::Unknown(-3).to_string(), "UNKNOWN(-3)");
    }

    #[test]
    fn no_reply_opcodes() {
        assert!(!Opcode::Forget.needs_reply());
        assert!(!Opcode::BatchForget.needs_reply());
        assert!(!Opcode::NotifyReply.needs_reply());
        assert!(!Opcode::Interrupt.needs_reply());
        assert!(Opcode::Setattr.needs_reply());
        assert!(Opcode::Unknown(1000).needs_reply());
    }

    #[test]
    fn notify_codes_round_trip() {
        for raw in -2..=12i32 {
            assert_eq!(i32::from(NotifyCode::from(raw)), raw);
        }
        assert_eq!(NotifyCode::from(8), NotifyCode::IncEpoch);
    }
}
