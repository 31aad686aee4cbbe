//! Bit flags of protocol 7.45, with their kernel names.
//!
//! INIT flags are `u64`: bits 0..31 travel in `flags`, bits 32..63 in
//! `flags2` (7.36), which counts only when `FUSE_INIT_EXT` is set. This is the
//! kernel's own convention ("bits 32..63 get shifted down 32 bits into the
//! flags2 field"); [`crate::init`] does the split and the join.

// ---- fuse_setattr_in.valid ----

/// `FATTR_MODE`: `mode` is valid.
pub const FATTR_MODE: u32 = 1 << 0;
/// `FATTR_UID`: `uid` is valid.
pub const FATTR_UID: u32 = 1 << 1;
/// `FATTR_GID`: `gid` is valid.
pub const FATTR_GID: u32 = 1 << 2;
/// `FATTR_SIZE`: `size` is valid (truncate).
pub const FATTR_SIZE: u32 = 1 << 3;
/// `FATTR_ATIME`: `atime`/`atimensec` are valid.
pub const FATTR_ATIME: u32 = 1 << 4;
/// `FATTR_MTIME`: `mtime`/`mtimensec` are valid.
pub const FATTR_MTIME: u32 = 1 << 5;
/// `FATTR_FH`: `fh` is valid.
pub const FATTR_FH: u32 = 1 << 6;
/// `FATTR_ATIME_NOW` (7.9): set atime to the daemon's current time. The
/// kernel sends it together with `FATTR_ATIME`.
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
/// `FATTR_MTIME_NOW` (7.9): set mtime to the daemon's current time. The
/// kernel sends it together with `FATTR_MTIME`.
pub const FATTR_MTIME_NOW: u32 = 1 << 8;
/// `FATTR_LOCKOWNER` (7.9): `lock_owner` is valid.
pub const FATTR_LOCKOWNER: u32 = 1 << 9;
/// `FATTR_CTIME` (7.23): `ctime`/`ctimensec` are valid.
pub const FATTR_CTIME: u32 = 1 << 10;
/// `FATTR_KILL_SUIDGID` (7.33): clear suid/sgid (with `FUSE_HANDLE_KILLPRIV_V2`).
pub const FATTR_KILL_SUIDGID: u32 = 1 << 11;

/// The `FATTR_*` bits that set a time (the three times and the two
/// "now" forms). Not in the kernel's header: a grouping of its bits.
pub const FATTR_TIMES: u32 =
    FATTR_ATIME | FATTR_MTIME | FATTR_CTIME | FATTR_ATIME_NOW | FATTR_MTIME_NOW;

/// The `FATTR_*` bits that name the open file the change comes through
/// (`fh`, `lock_owner`) and change nothing themselves. Not in the kernel's
/// header: a grouping of its bits.
pub const FATTR_HANDLE: u32 = FATTR_FH | FATTR_LOCKOWNER;

/// `FATTR_*` names, lowest bit first, for logging.
pub const FATTR_NAMES: &[(u32, &str)] = &[
    (FATTR_MODE, "FATTR_MODE"),
    (FATTR_UID, "FATTR_UID"),
    (FATTR_GID, "FATTR_GID"),
    (FATTR_SIZE, "FATTR_SIZE"),
    (FATTR_ATIME, "FATTR_ATIME"),
    (FATTR_MTIME, "FATTR_MTIME"),
    (FATTR_FH, "FATTR_FH"),
    (FATTR_ATIME_NOW, "FATTR_ATIME_NOW"),
    (FATTR_MTIME_NOW, "FATTR_MTIME_NOW"),
    (FATTR_LOCKOWNER, "FATTR_LOCKOWNER"),
    (FATTR_CTIME, "FATTR_CTIME"),
    (FATTR_KILL_SUIDGID, "FATTR_KILL_SUIDGID"),
];

// ---- fuse_open_out.open_flags ----

/// `FOPEN_DIRECT_IO` (7.2): bypass the page cache for this open file.
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// `FOPEN_KEEP_CACHE` (7.2): don't invalidate the data cache on open.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FOPEN_NONSEEKABLE` (7.10): the file is not seekable.
pub const FOPEN_NONSEEKABLE: u32 = 1 << 2;
/// `FOPEN_CACHE_DIR` (7.28): allow caching this directory.
pub const FOPEN_CACHE_DIR: u32 = 1 << 3;
/// `FOPEN_STREAM` (7.31): the file is stream-like (no file position).
pub const FOPEN_STREAM: u32 = 1 << 4;
/// `FOPEN_NOFLUSH` (7.35): don't flush the data cache on close (unless
/// `FUSE_WRITEBACK_CACHE`).
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
/// `FOPEN_PARALLEL_DIRECT_WRITES` (7.38): concurrent direct writes on one
/// inode.
pub const FOPEN_PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
/// `FOPEN_PASSTHROUGH` (7.40): reads and writes go to the backing file
/// (`backing_id`).
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

// ---- INIT flags (u64: flags | flags2 << 32) ----

/// `FUSE_ASYNC_READ`: asynchronous read requests.
pub const FUSE_ASYNC_READ: u64 = 1 << 0;
/// `FUSE_POSIX_LOCKS`: remote locking for POSIX file locks.
pub const FUSE_POSIX_LOCKS: u64 = 1 << 1;
/// `FUSE_FILE_OPS`: kernel sends file handle for fstat etc. (not supported).
pub const FUSE_FILE_OPS: u64 = 1 << 2;
/// `FUSE_ATOMIC_O_TRUNC` (7.9): the daemon handles O_TRUNC in open.
pub const FUSE_ATOMIC_O_TRUNC: u64 = 1 << 3;
/// `FUSE_EXPORT_SUPPORT` (7.10): the daemon handles lookups of "." and "..".
pub const FUSE_EXPORT_SUPPORT: u64 = 1 << 4;
/// `FUSE_BIG_WRITES` (7.9): writes larger than 4 KiB.
pub const FUSE_BIG_WRITES: u64 = 1 << 5;
/// `FUSE_DONT_MASK` (7.12): don't apply umask on create.
pub const FUSE_DONT_MASK: u64 = 1 << 6;
/// `FUSE_SPLICE_WRITE` (7.14): kernel supports splice write on the device.
pub const FUSE_SPLICE_WRITE: u64 = 1 << 7;
/// `FUSE_SPLICE_MOVE` (7.14): kernel supports splice move on the device.
pub const FUSE_SPLICE_MOVE: u64 = 1 << 8;
/// `FUSE_SPLICE_READ` (7.14): kernel supports splice read on the device.
pub const FUSE_SPLICE_READ: u64 = 1 << 9;
/// `FUSE_FLOCK_LOCKS` (7.17): remote locking for BSD style locks.
pub const FUSE_FLOCK_LOCKS: u64 = 1 << 10;
/// `FUSE_HAS_IOCTL_DIR` (7.18): ioctl on directories.
pub const FUSE_HAS_IOCTL_DIR: u64 = 1 << 11;
/// `FUSE_AUTO_INVAL_DATA` (7.20): automatically invalidate cached pages.
pub const FUSE_AUTO_INVAL_DATA: u64 = 1 << 12;
/// `FUSE_DO_READDIRPLUS` (7.21): do READDIRPLUS.
pub const FUSE_DO_READDIRPLUS: u64 = 1 << 13;
/// `FUSE_READDIRPLUS_AUTO` (7.21): adaptive readdirplus.
pub const FUSE_READDIRPLUS_AUTO: u64 = 1 << 14;
/// `FUSE_ASYNC_DIO` (7.22): asynchronous direct I/O submission.
pub const FUSE_ASYNC_DIO: u64 = 1 << 15;
/// `FUSE_WRITEBACK_CACHE` (7.23): writeback cache for buffered writes.
pub const FUSE_WRITEBACK_CACHE: u64 = 1 << 16;
/// `FUSE_NO_OPEN_SUPPORT` (7.23): zero-message opens.
pub const FUSE_NO_OPEN_SUPPORT: u64 = 1 << 17;
/// `FUSE_PARALLEL_DIROPS` (7.25): parallel lookups and readdir.
pub const FUSE_PARALLEL_DIROPS: u64 = 1 << 18;
/// `FUSE_HANDLE_KILLPRIV` (7.26): the daemon kills suid/sgid/caps.
pub const FUSE_HANDLE_KILLPRIV: u64 = 1 << 19;
/// `FUSE_POSIX_ACL` (7.26): POSIX ACLs.
pub const FUSE_POSIX_ACL: u64 = 1 << 20;
/// `FUSE_ABORT_ERROR` (7.27): reading an aborted device gives ECONNABORTED.
pub const FUSE_ABORT_ERROR: u64 = 1 << 21;
/// `FUSE_MAX_PAGES` (7.28): `init_out.max_pages` is valid.
pub const FUSE_MAX_PAGES: u64 = 1 << 22;
/// `FUSE_CACHE_SYMLINKS` (7.28): cache READLINK replies.
pub const FUSE_CACHE_SYMLINKS: u64 = 1 << 23;
/// `FUSE_NO_OPENDIR_SUPPORT` (7.29): zero-message opendir.
pub const FUSE_NO_OPENDIR_SUPPORT: u64 = 1 << 24;
/// `FUSE_EXPLICIT_INVAL_DATA` (7.30): invalidate pages only on request.
pub const FUSE_EXPLICIT_INVAL_DATA: u64 = 1 << 25;
/// `FUSE_MAP_ALIGNMENT` (7.31): `init_out.map_alignment` is valid.
pub const FUSE_MAP_ALIGNMENT: u64 = 1 << 26;
/// `FUSE_SUBMOUNTS` (7.32): auto-mounted submounts.
pub const FUSE_SUBMOUNTS: u64 = 1 << 27;
/// `FUSE_HANDLE_KILLPRIV_V2` (7.33): the daemon kills suid/sgid/caps, VFS
/// rules.
pub const FUSE_HANDLE_KILLPRIV_V2: u64 = 1 << 28;
/// `FUSE_SETXATTR_EXT` (7.33): the extended `fuse_setxattr_in`.
pub const FUSE_SETXATTR_EXT: u64 = 1 << 29;
/// `FUSE_INIT_EXT` (7.36): the extended `fuse_init_in`; `flags2` is valid.
pub const FUSE_INIT_EXT: u64 = 1 << 30;
/// `FUSE_INIT_RESERVED` (7.36): reserved, do not use.
pub const FUSE_INIT_RESERVED: u64 = 1 << 31;
/// `FUSE_SECURITY_CTX` (7.36): security context on create, mkdir, symlink,
/// mknod.
pub const FUSE_SECURITY_CTX: u64 = 1 << 32;
/// `FUSE_HAS_INODE_DAX` (7.36): per-inode DAX.
pub const FUSE_HAS_INODE_DAX: u64 = 1 << 33;
/// `FUSE_CREATE_SUPP_GROUP` (7.38): supplementary group on create etc.
pub const FUSE_CREATE_SUPP_GROUP: u64 = 1 << 34;
/// `FUSE_HAS_EXPIRE_ONLY` (7.38): expiry-only entry invalidation.
pub const FUSE_HAS_EXPIRE_ONLY: u64 = 1 << 35;
/// `FUSE_DIRECT_IO_ALLOW_MMAP` (7.39): shared mmap with `FOPEN_DIRECT_IO`.
pub const FUSE_DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
/// `FUSE_DIRECT_IO_RELAX`: obsolete alias of [`FUSE_DIRECT_IO_ALLOW_MMAP`].
pub const FUSE_DIRECT_IO_RELAX: u64 = FUSE_DIRECT_IO_ALLOW_MMAP;
/// `FUSE_PASSTHROUGH` (7.40): passthrough I/O to backing files.
pub const FUSE_PASSTHROUGH: u64 = 1 << 37;
/// `FUSE_NO_EXPORT_SUPPORT` (7.40): explicitly disable export support.
pub const FUSE_NO_EXPORT_SUPPORT: u64 = 1 << 38;
/// `FUSE_HAS_RESEND` (7.40): kernel resends pending requests; unique bit 63
/// marks a resend.
pub const FUSE_HAS_RESEND: u64 = 1 << 39;
/// `FUSE_ALLOW_IDMAP` (7.41): idmapped mounts.
pub const FUSE_ALLOW_IDMAP: u64 = 1 << 40;
/// `FUSE_OVER_IO_URING` (7.42): the daemon supports io_uring transport.
pub const FUSE_OVER_IO_URING: u64 = 1 << 41;
/// `FUSE_REQUEST_TIMEOUT` (7.43): `init_out.request_timeout` is valid.
pub const FUSE_REQUEST_TIMEOUT: u64 = 1 << 42;

/// INIT flag names, lowest bit first, for logging. Aliases are left out.
pub const INIT_FLAG_NAMES: &[(u64, &str)] = &[
    (FUSE_ASYNC_READ, "FUSE_ASYNC_READ"),
    (FUSE_POSIX_LOCKS, "FUSE_POSIX_LOCKS"),
    (FUSE_FILE_OPS, "FUSE_FILE_OPS"),
    (FUSE_ATOMIC_O_TRUNC, "FUSE_ATOMIC_O_TRUNC"),
    (FUSE_EXPORT_SUPPORT, "FUSE_EXPORT_SUPPORT"),
    (FUSE_BIG_WRITES, "FUSE_BIG_WRITES"),
    (FUSE_DONT_MASK, "FUSE_DONT_MASK"),
    (FUSE_SPLICE_WRITE, "FUSE_SPLICE_WRITE"),
    (FUSE_SPLICE_MOVE, "FUSE_SPLICE_MOVE"),
    (FUSE_SPLICE_READ, "FUSE_SPLICE_READ"),
    (FUSE_FLOCK_LOCKS, "FUSE_FLOCK_LOCKS"),
    (FUSE_HAS_IOCTL_DIR, "FUSE_HAS_IOCTL_DIR"),
    (FUSE_AUTO_INVAL_DATA, "FUSE_AUTO_INVAL_DATA"),
    (FUSE_DO_READDIRPLUS, "FUSE_DO_READDIRPLUS"),
    (FUSE_READDIRPLUS_AUTO, "FUSE_READDIRPLUS_AUTO"),
    (FUSE_ASYNC_DIO, "FUSE_ASYNC_DIO"),
    (FUSE_WRITEBACK_CACHE, "FUSE_WRITEBACK_CACHE"),
    (FUSE_NO_OPEN_SUPPORT, "FUSE_NO_OPEN_SUPPORT"),
    (FUSE_PARALLEL_DIROPS, "FUSE_PARALLEL_DIROPS"),
    (FUSE_HANDLE_KILLPRIV, "FUSE_HANDLE_KILLPRIV"),
    (FUSE_POSIX_ACL, "FUSE_POSIX_ACL"),
    (FUSE_ABORT_ERROR, "FUSE_ABORT_ERROR"),
    (FUSE_MAX_PAGES, "FUSE_MAX_PAGES"),
    (FUSE_CACHE_SYMLINKS, "FUSE_CACHE_SYMLINKS"),
    (FUSE_NO_OPENDIR_SUPPORT, "FUSE_NO_OPENDIR_SUPPORT"),
    (FUSE_EXPLICIT_INVAL_DATA, "FUSE_EXPLICIT_INVAL_DATA"),
    (FUSE_MAP_ALIGNMENT, "FUSE_MAP_ALIGNMENT"),
    (FUSE_SUBMOUNTS, "FUSE_SUBMOUNTS"),
    (FUSE_HANDLE_KILLPRIV_V2, "FUSE_HANDLE_KILLPRIV_V2"),
    (FUSE_SETXATTR_EXT, "FUSE_SETXATTR_EXT"),
    (FUSE_INIT_EXT, "FUSE_INIT_EXT"),
    (FUSE_INIT_RESERVED, "FUSE_INIT_RESERVED"),
    (FUSE_SECURITY_CTX, "FUSE_SECURITY_CTX"),
    (FUSE_HAS_INODE_DAX, "FUSE_HAS_INODE_DAX"),
    (FUSE_CREATE_SUPP_GROUP, "FUSE_CREATE_SUPP_GROUP"),
    (FUSE_HAS_EXPIRE_ONLY, "FUSE_HAS_EXPIRE_ONLY"),
    (FUSE_DIRECT_IO_ALLOW_MMAP, "FUSE_DIRECT_IO_ALLOW_MMAP"),
    (FUSE_PASSTHROUGH, "FUSE_PASSTHROUGH"),
    (FUSE_NO_EXPORT_SUPPORT, "FUSE_NO_EXPORT_SUPPORT"),
    (FUSE_HAS_RESEND, "FUSE_HAS_RESEND"),
    (FUSE_ALLOW_IDMAP, "FUSE_ALLOW_IDMAP"),
    (FUSE_OVER_IO_URING, "FUSE_OVER_IO_URING"),
    (FUSE_REQUEST_TIMEOUT, "FUSE_REQUEST_TIMEOUT"),
];

/// Every INIT flag bit protocol 7.45 defines.
pub const INIT_FLAGS_KNOWN: u64 = (FUSE_REQUEST_TIMEOUT << 1) - 1;

/// The names of the INIT flags set in `flags`, lowest bit first, for logging.
/// Bits 7.45 does not define are skipped; `flags & !INIT_FLAGS_KNOWN` gives
/// them.
pub fn init_flag_names(flags: u64) -> impl Iterator<Item = &'static str> {
    INIT_FLAG_NAMES
        .iter()
        .filter(move |(bit, _)| flags & bit != 0)
        .map(|(_, name)| *name)
}

/// The names of the `FATTR_*` bits set in `valid`, lowest bit first.
pub fn fattr_names(valid: u32) -> impl Iterator<Item = &'static str> {
    FATTR_NAMES
        .iter()
        .filter(move |(bit, _)| valid & bit != 0)
        .map(|(_, name)| *name)
}

// ---- other request flags ----

/// `CUSE_UNRESTRICTED_IOCTL`: CUSE INIT flag, unrestricted ioctl.
pub const CUSE_UNRESTRICTED_IOCTL: u32 = 1 << 0;

/// `FUSE_RELEASE_FLUSH` (7.8): flush before release.
pub const FUSE_RELEASE_FLUSH: u32 = 1 << 0;
/// `FUSE_RELEASE_FLOCK_UNLOCK` (7.17): drop BSD locks on release.
pub const FUSE_RELEASE_FLOCK_UNLOCK: u32 = 1 << 1;

/// `FUSE_GETATTR_FH` (7.9): `fuse_getattr_in.fh` is valid.
pub const FUSE_GETATTR_FH: u32 = 1 << 0;

/// `FUSE_LK_FLOCK` (7.9): the lock is a BSD `flock`.
pub const FUSE_LK_FLOCK: u32 = 1 << 0;

/// `FUSE_WRITE_CACHE` (7.9): delayed write from the page cache; the file
/// handle is guessed.
pub const FUSE_WRITE_CACHE: u32 = 1 << 0;
/// `FUSE_WRITE_LOCKOWNER` (7.9): `lock_owner` is valid.
pub const FUSE_WRITE_LOCKOWNER: u32 = 1 << 1;
/// `FUSE_WRITE_KILL_SUIDGID` (7.31 as `FUSE_WRITE_KILL_PRIV`): kill suid and
/// sgid bits.
pub const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `FUSE_WRITE_KILL_PRIV`: obsolete alias of [`FUSE_WRITE_KILL_SUIDGID`].
pub const FUSE_WRITE_KILL_PRIV: u32 = FUSE_WRITE_KILL_SUIDGID;

/// `FUSE_READ_LOCKOWNER` (7.9): `lock_owner` is valid.
pub const FUSE_READ_LOCKOWNER: u32 = 1 << 1;

/// `FUSE_IOCTL_COMPAT` (7.11): 32-bit compat ioctl on a 64-bit machine.
pub const FUSE_IOCTL_COMPAT: u32 = 1 << 0;
/// `FUSE_IOCTL_UNRESTRICTED` (7.11): not restricted to well-formed ioctls.
pub const FUSE_IOCTL_UNRESTRICTED: u32 = 1 << 1;
/// `FUSE_IOCTL_RETRY` (7.11): retry with new iovecs.
pub const FUSE_IOCTL_RETRY: u32 = 1 << 2;
/// `FUSE_IOCTL_32BIT` (7.16): 32-bit ioctl.
pub const FUSE_IOCTL_32BIT: u32 = 1 << 3;
/// `FUSE_IOCTL_DIR` (7.18): on a directory.
pub const FUSE_IOCTL_DIR: u32 = 1 << 4;
/// `FUSE_IOCTL_COMPAT_X32` (7.30): x32 compat ioctl.
pub const FUSE_IOCTL_COMPAT_X32: u32 = 1 << 5;
/// `FUSE_IOCTL_MAX_IOV`: most `in_iovs + out_iovs`.
pub const FUSE_IOCTL_MAX_IOV: u32 = 256;

/// `FUSE_POLL_SCHEDULE_NOTIFY` (7.11): the daemon should send NOTIFY_POLL.
pub const FUSE_POLL_SCHEDULE_NOTIFY: u32 = 1 << 0;

/// `FUSE_FSYNC_FDATASYNC`: sync data only.
pub const FUSE_FSYNC_FDATASYNC: u32 = 1 << 0;

/// `FUSE_ATTR_SUBMOUNT` (7.32): `fuse_attr.flags`, the node is a submount
/// root.
pub const FUSE_ATTR_SUBMOUNT: u32 = 1 << 0;
/// `FUSE_ATTR_DAX` (7.36): `fuse_attr.flags`, DAX for this file.
pub const FUSE_ATTR_DAX: u32 = 1 << 1;

/// `FUSE_OPEN_KILL_SUIDGID` (7.33): `open_flags` of OPEN/CREATE.
pub const FUSE_OPEN_KILL_SUIDGID: u32 = 1 << 0;

/// `FUSE_SETXATTR_ACL_KILL_SGID` (7.33): clear SGID when setting
/// `system.posix_acl_access`.
pub const FUSE_SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;

/// `FUSE_EXPIRE_ONLY` (7.38): NOTIFY_INVAL_ENTRY only expires the entry.
pub const FUSE_EXPIRE_ONLY: u32 = 1 << 0;

/// `FUSE_SETUPMAPPING_FLAG_WRITE` (7.31).
pub const FUSE_SETUPMAPPING_FLAG_WRITE: u64 = 1 << 0;
/// `FUSE_SETUPMAPPING_FLAG_READ` (7.31).
pub const FUSE_SETUPMAPPING_FLAG_READ: u64 = 1 << 1;

/// `FUSE_MAX_NR_SECCTX` (7.38): extension types 0..=31 are a
/// `fuse_secctx_header`'s `nr_secctx`.
pub const FUSE_MAX_NR_SECCTX: u32 = 31;
/// `FUSE_EXT_GROUPS` (7.38): the `fuse_supp_groups` extension.
pub const FUSE_EXT_GROUPS: u32 = 32;

/// `FUSE_INVALID_UIDGID` (7.41): the header's uid/gid when an idmapped mount
/// cannot map the caller.
pub const FUSE_INVALID_UIDGID: u32 = u32::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sorted_single_bits() {
        let mut prev = 0;
        for (bit, name) in INIT_FLAG_NAMES {
            assert_eq!(bit.count_ones(), 1, "{name}");
            assert!(*bit > prev, "{name}");
            prev = *bit;
        }
        assert_eq!(INIT_FLAG_NAMES.len(), 43);
        assert_eq!(FUSE_PASSTHROUGH, 1 << 37);
        assert_eq!(FUSE_OVER_IO_URING, 1 << 41);
    }

    #[test]
    fn flag_names_for_logging() {
        let names: Vec<_> =
            init_flag_names(FUSE_ASYNC_READ | FUSE_INIT_EXT | FUSE_PASSTHROUGH | (1 << 60))
                .collect();
        assert_eq!(
            names,
            ["FUSE_ASYNC_READ", "FUSE_INIT_EXT", "FUSE_PASSTHROUGH"]
        );
        let names: Vec<_> = fattr_names(0x460).collect();
        assert_eq!(names, ["FATTR_MTIME", "FATTR_FH", "FATTR_CTIME"]);
    }
}
