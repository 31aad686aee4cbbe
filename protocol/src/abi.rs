//! Every struct and size constant of the kernel's `include/uapi/linux/fuse.h`
//! at protocol 7.45, as `#[repr(C)]` Rust types.
//!
//! Names follow the kernel in CamelCase (`fuse_setattr_in` is [`SetattrIn`]);
//! field names keep the kernel's spelling, `padding`, `dummy` and `unused4`
//! included. Each struct derives zerocopy's `FromBytes` and `IntoBytes`, since
//! a proxy both reads and writes every message; `IntoBytes` refuses implicit
//! padding, so the derive doubles as a layout check. The `const` assertion
//! beside each struct pins its size to the header's.
//!
//! Integers are in the host's byte order, as on `/dev/fuse`. Field types are
//! the header's exactly; where the kernel's meaning differs from the declared
//! type (times declared `uint64_t` but carrying a signed `time64_t`), a `NOTE:`
//! says so and the typed views in [`crate::request`] do the conversion.
//!
//! Items without a version annotation exist since protocol 7.9 or earlier, in
//! the layout given here.

use core::mem::size_of;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `FUSE_KERNEL_VERSION`: the major protocol version.
pub const FUSE_KERNEL_VERSION: u32 = 7;

/// `FUSE_KERNEL_MINOR_VERSION`: the minor version these definitions follow.
pub const FUSE_KERNEL_MINOR_VERSION: u32 = 45;

/// `FUSE_MIN_READ_BUFFER`: a read of `/dev/fuse` must offer at least this
/// many bytes, or the kernel fails it with EINVAL.
pub const FUSE_MIN_READ_BUFFER: usize = 8192;

/// `FUSE_COMPAT_ENTRY_OUT_SIZE`: `fuse_entry_out` for minor < 9 (no
/// `attr.blksize`, `attr.flags`).
pub const FUSE_COMPAT_ENTRY_OUT_SIZE: usize = 120;

/// `FUSE_COMPAT_ATTR_OUT_SIZE`: `fuse_attr_out` for minor < 9.
pub const FUSE_COMPAT_ATTR_OUT_SIZE: usize = 96;

/// `FUSE_COMPAT_MKNOD_IN_SIZE`: `fuse_mknod_in` for minor < 12 (no `umask`).
pub const FUSE_COMPAT_MKNOD_IN_SIZE: usize = 8;

/// `FUSE_COMPAT_WRITE_IN_SIZE`: `fuse_write_in` for minor < 9.
pub const FUSE_COMPAT_WRITE_IN_SIZE: usize = 24;

/// `FUSE_COMPAT_STATFS_SIZE`: `fuse_statfs_out` for minor < 4 (no `frsize`).
pub const FUSE_COMPAT_STATFS_SIZE: usize = 48;

/// `FUSE_COMPAT_SETXATTR_IN_SIZE`: `fuse_setxattr_in` as the kernel sends it
/// unless the daemon accepted `FUSE_SETXATTR_EXT` (7.33).
pub const FUSE_COMPAT_SETXATTR_IN_SIZE: usize = 8;

/// `fuse_init_in` before 7.36: `major`, `minor`, `max_readahead`, `flags`.
///
/// NOTE: not a kernel name; the kernel grew the struct in 7.36 without
/// defining a constant for the old size. libfuse reads only the first 8 bytes
/// when minor < 6.
pub const FUSE_COMPAT_INIT_IN_SIZE: usize = 16;

/// `FUSE_COMPAT_INIT_OUT_SIZE`: `fuse_init_out` for minor < 5 (`major`,
/// `minor` only).
pub const FUSE_COMPAT_INIT_OUT_SIZE: usize = 8;

/// `FUSE_COMPAT_22_INIT_OUT_SIZE`: `fuse_init_out` for minor < 23 (up to
/// `max_write`).
pub const FUSE_COMPAT_22_INIT_OUT_SIZE: usize = 24;

/// `CUSE_INIT_INFO_MAX`: the largest device info string after
/// `cuse_init_out`.
pub const CUSE_INIT_INFO_MAX: usize = 4096;

/// `FUSE_URING_IN_OUT_HEADER_SZ` (7.42).
pub const FUSE_URING_IN_OUT_HEADER_SZ: usize = 128;

/// `FUSE_URING_OP_IN_OUT_SZ` (7.42).
pub const FUSE_URING_OP_IN_OUT_SZ: usize = 128;

/// `FUSE_DEV_IOC_MAGIC`: the ioctl type of `/dev/fuse`.
pub const FUSE_DEV_IOC_MAGIC: u32 = 229;

/// Linux's generic `_IOC(dir, type, nr, size)`.
///
/// NOTE: the generic encoding (x86, arm, riscv ...); alpha, mips, powerpc
/// and sparc place the direction bits differently.
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (FUSE_DEV_IOC_MAGIC << 8) | nr
}

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`; clones a session onto a
/// new `/dev/fuse` fd.
pub const FUSE_DEV_IOC_CLONE: u32 = ioc(2, 0, 4);
/// `FUSE_DEV_IOC_BACKING_OPEN` (7.40): `_IOW(229, 1, struct fuse_backing_map)`.
pub const FUSE_DEV_IOC_BACKING_OPEN: u32 = ioc(1, 1, size_of::<BackingMap>());
/// `FUSE_DEV_IOC_BACKING_CLOSE` (7.40): `_IOW(229, 2, uint32_t)`.
pub const FUSE_DEV_IOC_BACKING_CLOSE: u32 = ioc(1, 2, 4);
/// `FUSE_DEV_IOC_SYNC_INIT`: `_IO(229, 3)`.
pub const FUSE_DEV_IOC_SYNC_INIT: u32 = ioc(0, 3, 0);

/// `FUSE_IO_URING_CMD_INVALID` (7.42): `enum fuse_uring_cmd`.
pub const FUSE_IO_URING_CMD_INVALID: u32 = 0;
/// `FUSE_IO_URING_CMD_REGISTER` (7.42): register a buffer and fetch a
/// request.
pub const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
/// `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` (7.42): commit a reply and fetch the
/// next request.
pub const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;

/// `FUSE_REC_ALIGN`: rounds `x` up to the 8-byte alignment of directory
/// records. Saturates instead of overflowing near `usize::MAX`.
pub const fn fuse_rec_align(x: usize) -> usize {
    match x.checked_add(7) {
        Some(v) => v & !7,
        None => usize::MAX & !7,
    }
}

/// `FUSE_NAME_OFFSET`: where the name starts in a `fuse_dirent`.
pub const FUSE_NAME_OFFSET: usize = size_of::<Dirent>();

/// `FUSE_NAME_OFFSET_DIRENTPLUS`: where the name starts in a
/// `fuse_direntplus`.
pub const FUSE_NAME_OFFSET_DIRENTPLUS: usize = size_of::<Direntplus>();

/// Derives shared by every ABI struct.
macro_rules! abi_struct {
    ($(#[$m:meta])* pub struct $name:ident $body:tt size $size:expr;) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
        pub struct $name $body
        const _: () = assert!(size_of::<$name>() == $size);
    };
}

abi_struct! {
    /// `struct fuse_attr`: a node's attributes, inside replies.
    ///
    /// NOTE: `atime`, `mtime` and `ctime` are declared `uint64_t` but carry
    /// the kernel's signed `time64_t`; read them `as i64`. `flags` was
    /// `padding` before 7.32.
    pub struct Attr {
        /// Inode number.
        pub ino: u64,
        /// Size in bytes.
        pub size: u64,
        /// Blocks of 512 bytes.
        pub blocks: u64,
        /// Access time, seconds (signed, see NOTE).
        pub atime: u64,
        /// Modification time, seconds (signed, see NOTE).
        pub mtime: u64,
        /// Change time, seconds (signed, see NOTE).
        pub ctime: u64,
        /// Access time, nanoseconds.
        pub atimensec: u32,
        /// Modification time, nanoseconds.
        pub mtimensec: u32,
        /// Change time, nanoseconds.
        pub ctimensec: u32,
        /// File type and permissions.
        pub mode: u32,
        /// Link count.
        pub nlink: u32,
        /// Owner.
        pub uid: u32,
        /// Group.
        pub gid: u32,
        /// Device number (`new_encode_dev`).
        pub rdev: u32,
        /// Preferred I/O size (7.9).
        pub blksize: u32,
        /// `FUSE_ATTR_*` (7.32).
        pub flags: u32,
    }
    size 88;
}

abi_struct! {
    /// `struct fuse_sx_time` (7.39): a `statx` timestamp.
    pub struct SxTime {
        /// Seconds (signed, as in `statx(2)`).
        pub tv_sec: i64,
        /// Nanoseconds.
        pub tv_nsec: u32,
        /// The kernel's `__reserved`.
        pub reserved: i32,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_statx` (7.39): bit for bit the `statx(2)` ABI.
    ///
    /// NOTE: the kernel's `__spare0` and `__spare2` are named `spare0` and
    /// `spare2` here.
    pub struct Statx {
        /// `STATX_*` fields present.
        pub mask: u32,
        /// Preferred I/O size.
        pub blksize: u32,
        /// `STATX_ATTR_*`.
        pub attributes: u64,
        /// Link count.
        pub nlink: u32,
        /// Owner.
        pub uid: u32,
        /// Group.
        pub gid: u32,
        /// File type and permissions.
        pub mode: u16,
        /// `__spare0`.
        pub spare0: [u16; 1],
        /// Inode number.
        pub ino: u64,
        /// Size in bytes.
        pub size: u64,
        /// Blocks of 512 bytes.
        pub blocks: u64,
        /// Which `attributes` bits are supported.
        pub attributes_mask: u64,
        /// Access time.
        pub atime: SxTime,
        /// Birth time.
        pub btime: SxTime,
        /// Change time.
        pub ctime: SxTime,
        /// Modification time.
        pub mtime: SxTime,
        /// Device major (for device files).
        pub rdev_major: u32,
        /// Device minor (for device files).
        pub rdev_minor: u32,
        /// Containing device major.
        pub dev_major: u32,
        /// Containing device minor.
        pub dev_minor: u32,
        /// `__spare2`.
        pub spare2: [u64; 14],
    }
    size 256;
}

abi_struct! {
    /// `struct fuse_kstatfs`: file system statistics.
    pub struct Kstatfs {
        /// Total blocks.
        pub blocks: u64,
        /// Free blocks.
        pub bfree: u64,
        /// Free blocks for unprivileged users.
        pub bavail: u64,
        /// Total inodes.
        pub files: u64,
        /// Free inodes.
        pub ffree: u64,
        /// Block size.
        pub bsize: u32,
        /// Longest name.
        pub namelen: u32,
        /// Fragment size (7.4).
        pub frsize: u32,
        /// Padding.
        pub padding: u32,
        /// Spare.
        pub spare: [u32; 6],
    }
    size 80;
}

abi_struct! {
    /// `struct fuse_file_lock`: a POSIX or BSD lock (7.7).
    pub struct FileLock {
        /// First byte.
        pub start: u64,
        /// Last byte.
        pub end: u64,
        /// `F_RDLCK`, `F_WRLCK` or `F_UNLCK`.
        pub r#type: u32,
        /// Owner's tgid.
        pub pid: u32,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_entry_out`: reply to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK
    /// (and the first part of CREATE's). 120 bytes for minor < 9
    /// ([`FUSE_COMPAT_ENTRY_OUT_SIZE`]).
    pub struct EntryOut {
        /// Inode id; `nodeid:generation` is unique for the fs's lifetime.
        pub nodeid: u64,
        /// Inode generation.
        pub generation: u64,
        /// Cache timeout for the name, seconds.
        pub entry_valid: u64,
        /// Cache timeout for the attributes, seconds.
        pub attr_valid: u64,
        /// Cache timeout for the name, nanoseconds.
        pub entry_valid_nsec: u32,
        /// Cache timeout for the attributes, nanoseconds.
        pub attr_valid_nsec: u32,
        /// The attributes.
        pub attr: Attr,
    }
    size 128;
}

abi_struct! {
    /// `struct fuse_forget_in`: body of FORGET (no reply).
    pub struct ForgetIn {
        /// Lookups to drop.
        pub nlookup: u64,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_forget_one` (7.16): one entry of BATCH_FORGET.
    pub struct ForgetOne {
        /// The node.
        pub nodeid: u64,
        /// Lookups to drop.
        pub nlookup: u64,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_batch_forget_in` (7.16): followed by `count`
    /// [`ForgetOne`]s. No reply.
    pub struct BatchForgetIn {
        /// Number of entries that follow.
        pub count: u32,
        /// Unused.
        pub dummy: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_getattr_in` (7.9): body of GETATTR.
    pub struct GetattrIn {
        /// `FUSE_GETATTR_FH` if `fh` is valid.
        pub getattr_flags: u32,
        /// Unused.
        pub dummy: u32,
        /// File handle.
        pub fh: u64,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_attr_out`: reply to GETATTR and SETATTR. 96 bytes for
    /// minor < 9 ([`FUSE_COMPAT_ATTR_OUT_SIZE`]).
    pub struct AttrOut {
        /// Cache timeout for the attributes, seconds.
        pub attr_valid: u64,
        /// Cache timeout for the attributes, nanoseconds.
        pub attr_valid_nsec: u32,
        /// Unused.
        pub dummy: u32,
        /// The attributes.
        pub attr: Attr,
    }
    size 104;
}

abi_struct! {
    /// `struct fuse_statx_in` (7.39): body of STATX.
    pub struct StatxIn {
        /// `FUSE_GETATTR_FH` if `fh` is valid.
        pub getattr_flags: u32,
        /// Reserved.
        pub reserved: u32,
        /// File handle.
        pub fh: u64,
        /// `AT_STATX_*` flags.
        pub sx_flags: u32,
        /// `STATX_*` fields wanted.
        pub sx_mask: u32,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_statx_out` (7.39): reply to STATX.
    pub struct StatxOut {
        /// Cache timeout for the attributes, seconds.
        pub attr_valid: u64,
        /// Cache timeout for the attributes, nanoseconds.
        pub attr_valid_nsec: u32,
        /// Flags.
        pub flags: u32,
        /// Spare.
        pub spare: [u64; 2],
        /// The attributes.
        pub stat: Statx,
    }
    size 288;
}

abi_struct! {
    /// `struct fuse_mknod_in`: body of MKNOD, followed by the name. The kernel
    /// sends all 16 bytes; libfuse expects 8 ([`FUSE_COMPAT_MKNOD_IN_SIZE`])
    /// when minor < 12.
    pub struct MknodIn {
        /// File type and permissions, umask applied unless `FUSE_DONT_MASK`.
        pub mode: u32,
        /// Device number.
        pub rdev: u32,
        /// The caller's umask (7.12).
        pub umask: u32,
        /// Padding.
        pub padding: u32,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_mkdir_in`: body of MKDIR, followed by the name.
    pub struct MkdirIn {
        /// Permissions.
        pub mode: u32,
        /// The caller's umask (7.12).
        pub umask: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_rename_in`: body of RENAME, followed by the old and new
    /// names.
    pub struct RenameIn {
        /// The new parent.
        pub newdir: u64,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_rename2_in` (7.23): body of RENAME2, followed by the old
    /// and new names.
    pub struct Rename2In {
        /// The new parent.
        pub newdir: u64,
        /// `RENAME_*` flags.
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_link_in`: body of LINK, followed by the new name; the
    /// header's `nodeid` is the new parent.
    pub struct LinkIn {
        /// The node to link.
        pub oldnodeid: u64,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_setattr_in`: body of SETATTR. `valid` says which fields
    /// count (`FATTR_*`).
    ///
    /// NOTE: `atime`, `mtime`, `ctime` are declared `uint64_t` but carry a
    /// signed `time64_t`. `ctime`/`ctimensec` (7.23) were `unused` before;
    /// `lock_owner` is 7.9.
    pub struct SetattrIn {
        /// `FATTR_*` bits.
        pub valid: u32,
        /// Padding.
        pub padding: u32,
        /// File handle, if `FATTR_FH`.
        pub fh: u64,
        /// New size, if `FATTR_SIZE`.
        pub size: u64,
        /// Lock owner, if `FATTR_LOCKOWNER` (7.9).
        pub lock_owner: u64,
        /// Access time, seconds, if `FATTR_ATIME`.
        pub atime: u64,
        /// Modification time, seconds, if `FATTR_MTIME`.
        pub mtime: u64,
        /// Change time, seconds, if `FATTR_CTIME` (7.23).
        pub ctime: u64,
        /// Access time, nanoseconds.
        pub atimensec: u32,
        /// Modification time, nanoseconds.
        pub mtimensec: u32,
        /// Change time, nanoseconds (7.23).
        pub ctimensec: u32,
        /// New mode, if `FATTR_MODE`.
        pub mode: u32,
        /// Unused.
        pub unused4: u32,
        /// New owner, if `FATTR_UID`.
        pub uid: u32,
        /// New group, if `FATTR_GID`.
        pub gid: u32,
        /// Unused.
        pub unused5: u32,
    }
    size 88;
}

abi_struct! {
    /// `struct fuse_open_in`: body of OPEN and OPENDIR.
    pub struct OpenIn {
        /// `open(2)` flags.
        pub flags: u32,
        /// `FUSE_OPEN_*` (7.33; `unused` before).
        pub open_flags: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_create_in`: body of CREATE and TMPFILE, followed by the
    /// name.
    pub struct CreateIn {
        /// `open(2)` flags.
        pub flags: u32,
        /// File type and permissions.
        pub mode: u32,
        /// The caller's umask (7.12).
        pub umask: u32,
        /// `FUSE_OPEN_*` (7.33; `padding` before).
        pub open_flags: u32,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_open_out`: reply to OPEN and OPENDIR (and the second part
    /// of CREATE's).
    pub struct OpenOut {
        /// File handle chosen by the daemon.
        pub fh: u64,
        /// `FOPEN_*` bits.
        pub open_flags: u32,
        /// Backing file for `FOPEN_PASSTHROUGH` (7.40; `padding` before).
        pub backing_id: i32,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_release_in`: body of RELEASE and RELEASEDIR.
    pub struct ReleaseIn {
        /// File handle.
        pub fh: u64,
        /// `open(2)` flags.
        pub flags: u32,
        /// `FUSE_RELEASE_*` (7.8).
        pub release_flags: u32,
        /// Lock owner (7.8).
        pub lock_owner: u64,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_flush_in`: body of FLUSH.
    pub struct FlushIn {
        /// File handle.
        pub fh: u64,
        /// Unused.
        pub unused: u32,
        /// Padding.
        pub padding: u32,
        /// Lock owner.
        pub lock_owner: u64,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_read_in`: body of READ, READDIR and READDIRPLUS.
    pub struct ReadIn {
        /// File handle.
        pub fh: u64,
        /// Offset.
        pub offset: u64,
        /// Bytes wanted; the reply may be shorter, never longer.
        pub size: u32,
        /// `FUSE_READ_*`.
        pub read_flags: u32,
        /// Lock owner (7.9).
        pub lock_owner: u64,
        /// `open(2)` flags (7.9).
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }
    size 40;
}

abi_struct! {
    /// `struct fuse_write_in`: body of WRITE, followed by the data. 24 bytes
    /// for minor < 9 ([`FUSE_COMPAT_WRITE_IN_SIZE`]).
    pub struct WriteIn {
        /// File handle.
        pub fh: u64,
        /// Offset.
        pub offset: u64,
        /// Bytes of data that follow.
        pub size: u32,
        /// `FUSE_WRITE_*`.
        pub write_flags: u32,
        /// Lock owner (7.9).
        pub lock_owner: u64,
        /// `open(2)` flags (7.9).
        pub flags: u32,
        /// Padding.
        pub padding: u32,
    }
    size 40;
}

abi_struct! {
    /// `struct fuse_write_out`: reply to WRITE and COPY_FILE_RANGE.
    pub struct WriteOut {
        /// Bytes written.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_statfs_out`: reply to STATFS. 48 bytes for minor < 4
    /// ([`FUSE_COMPAT_STATFS_SIZE`]).
    pub struct StatfsOut {
        /// The statistics.
        pub st: Kstatfs,
    }
    size 80;
}

abi_struct! {
    /// `struct fuse_fsync_in`: body of FSYNC and FSYNCDIR.
    pub struct FsyncIn {
        /// File handle.
        pub fh: u64,
        /// `FUSE_FSYNC_FDATASYNC`.
        pub fsync_flags: u32,
        /// Padding.
        pub padding: u32,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_setxattr_in`: body of SETXATTR, followed by the name and
    /// the value. The kernel sends only the first 8 bytes
    /// ([`FUSE_COMPAT_SETXATTR_IN_SIZE`]) unless the daemon accepted
    /// `FUSE_SETXATTR_EXT` (7.33).
    pub struct SetxattrIn {
        /// Bytes of value.
        pub size: u32,
        /// `XATTR_*` flags.
        pub flags: u32,
        /// `FUSE_SETXATTR_*` (7.33).
        pub setxattr_flags: u32,
        /// Padding (7.33).
        pub padding: u32,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_getxattr_in`: body of GETXATTR (followed by the name) and
    /// LISTXATTR.
    pub struct GetxattrIn {
        /// Buffer size; 0 asks for the size only.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_getxattr_out`: reply to GETXATTR/LISTXATTR when the
    /// request's `size` was 0.
    pub struct GetxattrOut {
        /// Size the value needs.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_lk_in` (7.7): body of GETLK, SETLK and SETLKW.
    pub struct LkIn {
        /// File handle.
        pub fh: u64,
        /// Lock owner.
        pub owner: u64,
        /// The lock.
        pub lk: FileLock,
        /// `FUSE_LK_FLOCK` (7.9).
        pub lk_flags: u32,
        /// Padding.
        pub padding: u32,
    }
    size 48;
}

abi_struct! {
    /// `struct fuse_lk_out` (7.7): reply to GETLK.
    pub struct LkOut {
        /// The conflicting lock, or `F_UNLCK`.
        pub lk: FileLock,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_access_in` (7.3): body of ACCESS.
    pub struct AccessIn {
        /// `R_OK`/`W_OK`/`X_OK`.
        pub mask: u32,
        /// Padding.
        pub padding: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_init_in`: body of INIT, full form (7.36).
    ///
    /// Before 7.36 the kernel sent only the first 16 bytes
    /// ([`FUSE_COMPAT_INIT_IN_SIZE`]); `flags2` counts only when `flags` has
    /// `FUSE_INIT_EXT`. See [`crate::init`].
    pub struct InitIn {
        /// Major version.
        pub major: u32,
        /// Minor version.
        pub minor: u32,
        /// Largest readahead, bytes (7.6).
        pub max_readahead: u32,
        /// `FUSE_*` init flags, bits 0..31 (7.6).
        pub flags: u32,
        /// Init flags bits 32..63 (7.36).
        pub flags2: u32,
        /// Reserved (7.36).
        pub unused: [u32; 11],
    }
    size 64;
}

abi_struct! {
    /// `struct fuse_init_out`: reply to INIT, full form.
    ///
    /// Short forms: 8 bytes for minor < 5 ([`FUSE_COMPAT_INIT_OUT_SIZE`]),
    /// 24 bytes for minor < 23 ([`FUSE_COMPAT_22_INIT_OUT_SIZE`]). The kernel
    /// accepts any reply up to 64 bytes and zero-fills the rest.
    pub struct InitOut {
        /// Major version.
        pub major: u32,
        /// Minor version.
        pub minor: u32,
        /// Largest readahead, bytes (7.6).
        pub max_readahead: u32,
        /// `FUSE_*` init flags, bits 0..31 (7.5).
        pub flags: u32,
        /// Background request limit (7.13).
        pub max_background: u16,
        /// Congestion threshold (7.13).
        pub congestion_threshold: u16,
        /// Largest WRITE payload (7.5).
        pub max_write: u32,
        /// Timestamp granularity, ns (7.23).
        pub time_gran: u32,
        /// Largest request in pages, if `FUSE_MAX_PAGES` (7.28).
        pub max_pages: u16,
        /// log2 of the DAX mapping alignment, if `FUSE_MAP_ALIGNMENT` (7.31).
        pub map_alignment: u16,
        /// Init flags bits 32..63, if `FUSE_INIT_EXT` (7.36).
        pub flags2: u32,
        /// Passthrough stacking depth, if `FUSE_PASSTHROUGH` (7.40).
        pub max_stack_depth: u32,
        /// Request timeout, seconds, if `FUSE_REQUEST_TIMEOUT` (7.43).
        pub request_timeout: u16,
        /// Reserved.
        pub unused: [u16; 11],
    }
    size 64;
}

abi_struct! {
    /// `struct cuse_init_in`: body of CUSE_INIT.
    pub struct CuseInitIn {
        /// Major version.
        pub major: u32,
        /// Minor version.
        pub minor: u32,
        /// Unused.
        pub unused: u32,
        /// `CUSE_*` flags.
        pub flags: u32,
    }
    size 16;
}

abi_struct! {
    /// `struct cuse_init_out`: reply to CUSE_INIT, followed by the device
    /// info string (at most [`CUSE_INIT_INFO_MAX`]).
    pub struct CuseInitOut {
        /// Major version.
        pub major: u32,
        /// Minor version.
        pub minor: u32,
        /// Unused.
        pub unused: u32,
        /// `CUSE_*` flags.
        pub flags: u32,
        /// Largest READ.
        pub max_read: u32,
        /// Largest WRITE.
        pub max_write: u32,
        /// Character device major.
        pub dev_major: u32,
        /// Character device minor.
        pub dev_minor: u32,
        /// Spare.
        pub spare: [u32; 10],
    }
    size 72;
}

abi_struct! {
    /// `struct fuse_interrupt_in` (7.7): body of INTERRUPT.
    pub struct InterruptIn {
        /// The request to interrupt.
        pub unique: u64,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_bmap_in` (7.8): body of BMAP.
    pub struct BmapIn {
        /// Block in the file.
        pub block: u64,
        /// Block size.
        pub blocksize: u32,
        /// Padding.
        pub padding: u32,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_bmap_out` (7.8): reply to BMAP.
    pub struct BmapOut {
        /// Block on the device.
        pub block: u64,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_ioctl_in` (7.11): body of IOCTL, followed by `in_size`
    /// bytes of input.
    pub struct IoctlIn {
        /// File handle.
        pub fh: u64,
        /// `FUSE_IOCTL_*`.
        pub flags: u32,
        /// The ioctl command.
        pub cmd: u32,
        /// The ioctl argument.
        pub arg: u64,
        /// Bytes of input.
        pub in_size: u32,
        /// Largest output.
        pub out_size: u32,
    }
    size 32;
}

abi_struct! {
    /// `struct fuse_ioctl_iovec` (7.16): one iovec of an unrestricted ioctl
    /// retry.
    pub struct IoctlIovec {
        /// Address.
        pub base: u64,
        /// Length.
        pub len: u64,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_ioctl_out` (7.11): reply to IOCTL, followed by iovecs or
    /// output.
    pub struct IoctlOut {
        /// The ioctl's return value.
        pub result: i32,
        /// `FUSE_IOCTL_*`.
        pub flags: u32,
        /// Input iovecs that follow, on retry.
        pub in_iovs: u32,
        /// Output iovecs that follow, on retry.
        pub out_iovs: u32,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_poll_in` (7.11): body of POLL.
    pub struct PollIn {
        /// File handle.
        pub fh: u64,
        /// Kernel handle for NOTIFY_POLL.
        pub kh: u64,
        /// `FUSE_POLL_*`.
        pub flags: u32,
        /// Requested events (7.21).
        pub events: u32,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_poll_out` (7.11): reply to POLL.
    pub struct PollOut {
        /// Ready events.
        pub revents: u32,
        /// Padding.
        pub padding: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_notify_poll_wakeup_out` (7.11): body of NOTIFY_POLL.
    pub struct NotifyPollWakeupOut {
        /// Kernel handle from POLL.
        pub kh: u64,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_fallocate_in` (7.19): body of FALLOCATE.
    pub struct FallocateIn {
        /// File handle.
        pub fh: u64,
        /// Offset.
        pub offset: u64,
        /// Length.
        pub length: u64,
        /// `FALLOC_FL_*`.
        pub mode: u32,
        /// Padding.
        pub padding: u32,
    }
    size 32;
}

abi_struct! {
    /// `struct fuse_in_header`: starts every request.
    pub struct InHeader {
        /// Bytes in the message, this header included.
        pub len: u32,
        /// `fuse_opcode`.
        pub opcode: u32,
        /// Request id; bit 0 is [`crate::ids::FUSE_INT_REQ_BIT`], bit 63
        /// [`crate::ids::FUSE_UNIQUE_RESEND`].
        pub unique: u64,
        /// The node the request is about.
        pub nodeid: u64,
        /// Caller's uid, or `FUSE_INVALID_UIDGID`.
        pub uid: u32,
        /// Caller's gid, or `FUSE_INVALID_UIDGID`.
        pub gid: u32,
        /// Caller's tgid; 0 for requests from kernel threads.
        pub pid: u32,
        /// Length of extensions at the end, in 8-byte units (7.38; padding
        /// before).
        pub total_extlen: u16,
        /// Padding.
        pub padding: u16,
    }
    size 40;
}

abi_struct! {
    /// `struct fuse_out_header`: starts every reply and notification.
    pub struct OutHeader {
        /// Bytes in the message, this header included.
        pub len: u32,
        /// Reply: 0 or a negated errno in -511..=-1. Notification (`unique`
        /// 0): the `fuse_notify_code`.
        pub error: i32,
        /// The request answered, or 0 for a notification.
        pub unique: u64,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_dirent` without its flexible `name`: one READDIR record.
    /// The record is `fuse_rec_align(FUSE_NAME_OFFSET + namelen)` long.
    pub struct Dirent {
        /// Inode number.
        pub ino: u64,
        /// Offset of the next record.
        pub off: u64,
        /// Bytes of name.
        pub namelen: u32,
        /// `DT_*` type.
        pub r#type: u32,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_direntplus` (7.21) without the dirent's `name`: one
    /// READDIRPLUS record.
    pub struct Direntplus {
        /// As a LOOKUP would reply.
        pub entry_out: EntryOut,
        /// The directory entry.
        pub dirent: Dirent,
    }
    size 152;
}

abi_struct! {
    /// `struct fuse_notify_inval_inode_out` (7.12): body of
    /// NOTIFY_INVAL_INODE.
    pub struct NotifyInvalInodeOut {
        /// The node.
        pub ino: u64,
        /// Start of the range; negative means attributes only.
        pub off: i64,
        /// Length of the range; 0 or less means to the end.
        pub len: i64,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_notify_inval_entry_out` (7.12): body of
    /// NOTIFY_INVAL_ENTRY, followed by the name and a NUL.
    pub struct NotifyInvalEntryOut {
        /// The parent.
        pub parent: u64,
        /// Bytes of name.
        pub namelen: u32,
        /// `FUSE_EXPIRE_ONLY` (7.38; `padding` before).
        pub flags: u32,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_notify_delete_out` (7.18): body of NOTIFY_DELETE,
    /// followed by the name and a NUL.
    pub struct NotifyDeleteOut {
        /// The parent.
        pub parent: u64,
        /// The child.
        pub child: u64,
        /// Bytes of name.
        pub namelen: u32,
        /// Padding.
        pub padding: u32,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_notify_store_out` (7.15): body of NOTIFY_STORE, followed
    /// by the data.
    pub struct NotifyStoreOut {
        /// The node.
        pub nodeid: u64,
        /// Offset.
        pub offset: u64,
        /// Bytes of data.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_notify_retrieve_out` (7.15): body of NOTIFY_RETRIEVE.
    pub struct NotifyRetrieveOut {
        /// Echoed as the `unique` of the NOTIFY_REPLY request.
        pub notify_unique: u64,
        /// The node.
        pub nodeid: u64,
        /// Offset.
        pub offset: u64,
        /// Bytes wanted.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }
    size 32;
}

abi_struct! {
    /// `struct fuse_notify_retrieve_in` (7.15): body of the NOTIFY_REPLY
    /// request, followed by the data. Matches the size of [`WriteIn`].
    pub struct NotifyRetrieveIn {
        /// Unused.
        pub dummy1: u64,
        /// Offset.
        pub offset: u64,
        /// Bytes of data that follow.
        pub size: u32,
        /// Unused.
        pub dummy2: u32,
        /// Unused.
        pub dummy3: u64,
        /// Unused.
        pub dummy4: u64,
    }
    size 40;
}

abi_struct! {
    /// `struct fuse_notify_prune_out` (7.45): body of NOTIFY_PRUNE, followed
    /// by `count` node ids.
    pub struct NotifyPruneOut {
        /// Node ids that follow.
        pub count: u32,
        /// Padding.
        pub padding: u32,
        /// Spare.
        pub spare: u64,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_backing_map` (7.40): argument of the
    /// `FUSE_DEV_IOC_BACKING_OPEN` ioctl.
    pub struct BackingMap {
        /// The backing file.
        pub fd: i32,
        /// Flags.
        pub flags: u32,
        /// Padding.
        pub padding: u64,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_lseek_in` (7.24): body of LSEEK.
    pub struct LseekIn {
        /// File handle.
        pub fh: u64,
        /// Offset.
        pub offset: u64,
        /// `SEEK_*`.
        pub whence: u32,
        /// Padding.
        pub padding: u32,
    }
    size 24;
}

abi_struct! {
    /// `struct fuse_lseek_out` (7.24): reply to LSEEK.
    pub struct LseekOut {
        /// The new offset.
        pub offset: u64,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_copy_file_range_in` (7.28): body of COPY_FILE_RANGE and
    /// COPY_FILE_RANGE_64 (7.45).
    pub struct CopyFileRangeIn {
        /// Source handle.
        pub fh_in: u64,
        /// Source offset.
        pub off_in: u64,
        /// Destination node.
        pub nodeid_out: u64,
        /// Destination handle.
        pub fh_out: u64,
        /// Destination offset.
        pub off_out: u64,
        /// Bytes to copy.
        pub len: u64,
        /// Flags.
        pub flags: u64,
    }
    size 56;
}

abi_struct! {
    /// `struct fuse_copy_file_range_out` (7.45): reply to
    /// COPY_FILE_RANGE_64.
    pub struct CopyFileRangeOut {
        /// Bytes copied.
        pub bytes_copied: u64,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_setupmapping_in` (7.31): body of SETUPMAPPING (virtiofs
    /// DAX).
    pub struct SetupmappingIn {
        /// An open handle.
        pub fh: u64,
        /// Offset in the file.
        pub foffset: u64,
        /// Length.
        pub len: u64,
        /// `FUSE_SETUPMAPPING_FLAG_*`.
        pub flags: u64,
        /// Offset in the memory window.
        pub moffset: u64,
    }
    size 40;
}

abi_struct! {
    /// `struct fuse_removemapping_in` (7.31): body of REMOVEMAPPING, followed
    /// by `count` [`RemovemappingOne`]s at offset 4.
    ///
    /// NOTE: the entries that follow are therefore not 8-aligned; read them
    /// by copy.
    pub struct RemovemappingIn {
        /// Entries that follow.
        pub count: u32,
    }
    size 4;
}

abi_struct! {
    /// `struct fuse_removemapping_one` (7.31).
    pub struct RemovemappingOne {
        /// Offset in the memory window.
        pub moffset: u64,
        /// Length.
        pub len: u64,
    }
    size 16;
}

abi_struct! {
    /// `struct fuse_syncfs_in` (7.34): body of SYNCFS.
    pub struct SyncfsIn {
        /// Padding.
        pub padding: u64,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_secctx` (7.36): one security context, followed by its
    /// name and label.
    pub struct Secctx {
        /// Bytes of label.
        pub size: u32,
        /// Padding.
        pub padding: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_secctx_header` (7.36): starts the security-context
    /// extension; `nr_secctx` is at most `FUSE_MAX_NR_SECCTX`, which makes it
    /// an [`ExtHeader`] with a type below 32.
    pub struct SecctxHeader {
        /// Bytes of all contexts, this header included.
        pub size: u32,
        /// Number of contexts.
        pub nr_secctx: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_ext_header` (7.38): starts each request extension (the
    /// `total_extlen * 8` bytes at the end of a request).
    pub struct ExtHeader {
        /// Bytes of this extension, header included.
        pub size: u32,
        /// `fuse_ext_type`.
        pub r#type: u32,
    }
    size 8;
}

abi_struct! {
    /// `struct fuse_supp_groups` (7.38) without its flexible `groups`: the
    /// `FUSE_EXT_GROUPS` extension, followed by `nr_groups` `u32` gids.
    pub struct SuppGroups {
        /// Group ids that follow.
        pub nr_groups: u32,
    }
    size 4;
}

abi_struct! {
    /// `struct fuse_uring_ent_in_out` (7.42).
    pub struct UringEntInOut {
        /// Flags.
        pub flags: u64,
        /// Commit id for the reply to a ring request.
        pub commit_id: u64,
        /// Size of the payload buffer.
        pub payload_sz: u32,
        /// Padding.
        pub padding: u32,
        /// Reserved.
        pub reserved: u64,
    }
    size 32;
}

abi_struct! {
    /// `struct fuse_uring_cmd_req` (7.42): the 80-byte command area of an
    /// io_uring SQE.
    pub struct UringCmdReq {
        /// Flags.
        pub flags: u64,
        /// Entry id for commits.
        pub commit_id: u64,
        /// Queue index.
        pub qid: u16,
        /// Padding.
        pub padding: [u8; 6],
    }
    size 24;
}

/// `struct fuse_uring_req_header` (7.42): header of every io_uring request.
///
/// NOTE: no `Default` (arrays of 128 have none); use
/// `zerocopy::FromZeros::new_zeroed()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
pub struct UringReqHeader {
    /// A `fuse_in_header` or `fuse_out_header`.
    pub in_out: [u8; FUSE_URING_IN_OUT_HEADER_SZ],
    /// The per-opcode header.
    pub op_in: [u8; FUSE_URING_OP_IN_OUT_SZ],
    /// Ring entry data.
    pub ring_ent_in_out: UringEntInOut,
}
const _: () = assert!(size_of::<UringReqHeader>() == 288);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn field_offsets_match_the_header() {
        assert_eq!(offset_of!(InHeader, total_extlen), 36);
        assert_eq!(offset_of!(InitOut, max_write), 20);
        assert_eq!(offset_of!(InitOut, max_pages), 28);
        assert_eq!(offset_of!(InitOut, flags2), 32);
        assert_eq!(offset_of!(InitOut, request_timeout), 40);
        assert_eq!(offset_of!(InitIn, flags2), 16);
        assert_eq!(offset_of!(SetattrIn, ctimensec), 64);
        assert_eq!(offset_of!(Statx, ino), 32);
        assert_eq!(offset_of!(Statx, rdev_major), 128);
        assert_eq!(FUSE_NAME_OFFSET, 24);
        assert_eq!(FUSE_NAME_OFFSET_DIRENTPLUS, 152);
    }

    #[test]
    fn device_ioctl_numbers() {
        assert_eq!(FUSE_DEV_IOC_CLONE, 0x8004_e500);
        assert_eq!(FUSE_DEV_IOC_BACKING_OPEN, 0x4010_e501);
        assert_eq!(FUSE_DEV_IOC_BACKING_CLOSE, 0x4004_e502);
        assert_eq!(FUSE_DEV_IOC_SYNC_INIT, 0xe503);
    }

    #[test]
    fn rec_align() {
        assert_eq!(fuse_rec_align(0), 0);
        assert_eq!(fuse_rec_align(25), 32);
        assert_eq!(fuse_rec_align(32), 32);
        assert_eq!(fuse_rec_align(usize::MAX), usize::MAX & !7);
    }
}
