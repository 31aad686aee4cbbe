//! Thin wrappers over libc file-system calls that keep the errno visible:
//! every call returns `Result<_, Errno>` (`Errno` prints as `EEXIST` ...),
//! so a workload can record exactly what each operation returned.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub use nix::errno::Errno;

pub type Res<T> = Result<T, Errno>;

/// A path as a C string. Test paths never contain NUL.
pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn cname(n: &str) -> CString {
    CString::new(n).expect("name without NUL")
}

fn cvt(r: libc::c_int) -> Res<()> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn cvt_size(r: libc::ssize_t) -> Res<usize> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r as usize)
    }
}

pub fn open(p: &Path, flags: libc::c_int, mode: libc::mode_t) -> Res<OwnedFd> {
    let c = cpath(p);
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // the mode argument is read only when O_CREAT/O_TMPFILE is in flags and
    // is passed as the variadic `unsigned int` open(2) expects.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` was just returned by open(2), is valid and owned by no
    // one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn write(fd: &OwnedFd, buf: &[u8]) -> Res<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call.
    cvt_size(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
}

pub fn pwrite(fd: &OwnedFd, buf: &[u8], off: i64) -> Res<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call.
    cvt_size(unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off) })
}

/// One read(2) of at most `len` bytes.
pub fn read(fd: &OwnedFd, len: usize) -> Res<Vec<u8>> {
    let mut v = vec![0u8; len];
    // SAFETY: `v` is valid for writes of `len` bytes for the call.
    let n = cvt_size(unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), len) })?;
    v.truncate(n);
    Ok(v)
}

/// One pread(2) of at most `len` bytes at `off`.
pub fn pread(fd: &OwnedFd, len: usize, off: i64) -> Res<Vec<u8>> {
    let mut v = vec![0u8; len];
    // SAFETY: `v` is valid for writes of `len` bytes for the call.
    let n = cvt_size(unsafe { libc::pread(fd.as_raw_fd(), v.as_mut_ptr().cast(), len, off) })?;
    v.truncate(n);
    Ok(v)
}

/// Reads from the current offset until EOF.
pub fn read_to_end(fd: &OwnedFd) -> Res<Vec<u8>> {
    let mut all = Vec::new();
    loop {
        let chunk = read(fd, 64 * 1024)?;
        if chunk.is_empty() {
            return Ok(all);
        }
        all.extend_from_slice(&chunk);
    }
}

/// close(2), with its result: a FUSE daemon may report a failed write
/// only at FLUSH, which dropping an `OwnedFd` would hide.
pub fn close(fd: OwnedFd) -> Res<()> {
    use std::os::fd::IntoRawFd;
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` was owned by `fd`, which gave up ownership: it is
    // closed exactly once, here.
    cvt(unsafe { libc::close(raw) })
}

pub fn lseek(fd: &OwnedFd, off: i64, whence: libc::c_int) -> Res<i64> {
    // SAFETY: lseek takes no pointers.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

pub fn ftruncate(fd: &OwnedFd, len: i64) -> Res<()> {
    // SAFETY: ftruncate takes no pointers.
    cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })
}

pub fn truncate(p: &Path, len: i64) -> Res<()> {
    let c = cpath(p);
    // SAFETY: `c` is a valid C string for the duration of the call.
    cvt(unsafe { libc::truncate(c.as_ptr(), len) })
}

pub fn fsync(fd: &OwnedFd) -> Res<()> {
    // SAFETY: fsync takes no pointers.
    cvt(unsafe { libc::fsync(fd.as_raw_fd()) })
}

pub fn fdatasync(fd: &OwnedFd) -> Res<()> {
    // SAFETY: fdatasync takes no pointers.
    cvt(unsafe { libc::fdatasync(fd.as_raw_fd()) })
}

pub fn flock(fd: &OwnedFd, op: libc::c_int) -> Res<()> {
    // SAFETY: flock takes no pointers.
    cvt(unsafe { libc::flock(fd.as_raw_fd(), op) })
}

pub fn rename(from: &Path, to: &Path) -> Res<()> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: both are valid C strings for the duration of the call.
    cvt(unsafe { libc::rename(a.as_ptr(), b.as_ptr()) })
}

pub fn link(from: &Path, to: &Path) -> Res<()> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: both are valid C strings for the duration of the call.
    cvt(unsafe { libc::link(a.as_ptr(), b.as_ptr()) })
}

pub fn symlink(target: &Path, at: &Path) -> Res<()> {
    let (a, b) = (cpath(target), cpath(at));
    // SAFETY: both are valid C strings for the duration of the call.
    cvt(unsafe { libc::symlink(a.as_ptr(), b.as_ptr()) })
}

pub fn readlink(p: &Path) -> Res<PathBuf> {
    let c = cpath(p);
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `c` is a valid C string; `buf` is valid for writes of
    // `buf.len()` bytes for the call.
    let n = cvt_size(unsafe { libc::readlink(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    buf.truncate(n);
    Ok(PathBuf::from(
        <std::ffi::OsString as OsStringExt>::from_vec(buf),
    ))
}

pub fn mkdir(p: &Path, mode: libc::mode_t) -> Res<()> {
    let c = cpath(p);
    // SAFETY: `c` is a valid C string for the duration of the call.
    cvt(unsafe { libc::mkdir(c.as_ptr(), mode) })
}

pub fn rmdir(p: &Path) -> Res<()> {
    let c = cpath(p);
    // SAFETY: `c` is a valid C string for the duration of the call.
    cvt(unsafe { libc::rmdir(c.as_ptr()) })
}

pub fn unlink(p: &Path) -> Res<()> {
    let c = cpath(p);
    // SAFETY: `c` is a valid C string for the duration of the call.
    cvt(unsafe { libc::unlink(c.as_ptr()) })
}

pub fn chmod(p: &Path, mode: libc::mode_t) -> Res<()> {
    let c = cpath(p);
    // SAFETY: `c` is a valid C string for the duration of the call.
    cvt(unsafe { libc::chmod(c.as_ptr(), mode) })
}

pub fn fchmod(fd: &OwnedFd, mode: libc::mode_t) -> Res<()> {
    // SAFETY: fchmod takes no pointers.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })
}

pub fn lchown(p: &Path, uid: u32, gid: u32) -> Res<()> {
    let c = cpath(p);
    // SAFETY: `c` is a valid C string for the duration of the call.
    cvt(unsafe { libc::lchown(c.as_ptr(), uid, gid) })
}

/// A timespec; `nsec` may be `libc::UTIME_NOW` or `libc::UTIME_OMIT`.
pub fn ts(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

/// utimensat(AT_FDCWD, p, [atime, mtime], flags).
pub fn utimensat(
    p: &Path,
    atime: libc::timespec,
    mtime: libc::timespec,
    flags: libc::c_int,
) -> Res<()> {
    let c = cpath(p);
    let times = [atime, mtime];
    // SAFETY: `c` is a valid C string and `times` an array of two timespecs,
    // both live for the duration of the call.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) })
}

pub fn futimens(fd: &OwnedFd, atime: libc::timespec, mtime: libc::timespec) -> Res<()> {
    let times = [atime, mtime];
    // SAFETY: `times` is an array of two timespecs live for the call.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
}

pub fn stat(p: &Path) -> Res<libc::stat> {
    let c = cpath(p);
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c` is a valid C string; `st` is valid for writes of one
    // `struct stat`.
    cvt(unsafe { libc::stat(c.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: stat(2) succeeded, so it initialised `st`.
    Ok(unsafe { st.assume_init() })
}

pub fn lstat(p: &Path) -> Res<libc::stat> {
    let c = cpath(p);
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c` is a valid C string; `st` is valid for writes of one
    // `struct stat`.
    cvt(unsafe { libc::lstat(c.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: lstat(2) succeeded, so it initialised `st`.
    Ok(unsafe { st.assume_init() })
}

pub fn fstat(fd: &OwnedFd) -> Res<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `struct stat`.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat(2) succeeded, so it initialised `st`.
    Ok(unsafe { st.assume_init() })
}

pub fn statfs(p: &Path) -> Res<libc::statfs> {
    let c = cpath(p);
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a valid C string; `st` is valid for writes of one
    // `struct statfs`.
    cvt(unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statfs(2) succeeded, so it initialised `st`.
    Ok(unsafe { st.assume_init() })
}

/// lsetxattr (does not follow a final symlink).
pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> Res<()> {
    let (c, n) = (cpath(p), cname(name));
    // SAFETY: `c` and `n` are valid C strings and `value` is valid for reads
    // of `value.len()` bytes, all for the duration of the call.
    cvt(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// lgetxattr into a buffer of `size` bytes (`size == 0` asks for the length,
/// returned as a vector of that many zero bytes).
pub fn getxattr(p: &Path, name: &str, size: usize) -> Res<Vec<u8>> {
    let (c, n) = (cpath(p), cname(name));
    let mut v = vec![0u8; size];
    // SAFETY: `c` and `n` are valid C strings; `v` is valid for writes of
    // `size` bytes (a null-size query writes nothing).
    let r = cvt_size(unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            n.as_ptr(),
            if size == 0 {
                std::ptr::null_mut()
            } else {
                v.as_mut_ptr().cast()
            },
            size,
        )
    })?;
    if size == 0 {
        return Ok(vec![0; r]);
    }
    v.truncate(r);
    Ok(v)
}

/// The full value of an xattr (length query, then read).
pub fn getxattr_all(p: &Path, name: &str) -> Res<Vec<u8>> {
    let len = getxattr(p, name, 0)?.len();
    if len == 0 {
        return Ok(Vec::new());
    }
    getxattr(p, name, len)
}

/// llistxattr: the names, sorted.
pub fn listxattr(p: &Path) -> Res<Vec<String>> {
    let c = cpath(p);
    // SAFETY: `c` is a valid C string; a null buffer of size 0 asks for the
    // length only.
    let len = cvt_size(unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) })?;
    let mut v = vec![0u8; len];
    if len > 0 {
        // SAFETY: `v` is valid for writes of `len` bytes.
        let n = cvt_size(unsafe { libc::llistxattr(c.as_ptr(), v.as_mut_ptr().cast(), len) })?;
        v.truncate(n);
    }
    let mut names: Vec<String> = v
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// llistxattr with an explicit buffer size (to provoke ERANGE); returns the
/// byte count.
pub fn listxattr_size(p: &Path, size: usize) -> Res<usize> {
    let c = cpath(p);
    let mut v = vec![0u8; size.max(1)];
    // SAFETY: `v` is valid for writes of at least `size` bytes.
    cvt_size(unsafe {
        libc::llistxattr(
            c.as_ptr(),
            if size == 0 {
                std::ptr::null_mut()
            } else {
                v.as_mut_ptr().cast()
            },
            size,
        )
    })
}

pub fn removexattr(p: &Path, name: &str) -> Res<()> {
    let (c, n) = (cpath(p), cname(name));
    // SAFETY: both are valid C strings for the duration of the call.
    cvt(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) })
}

/// Maps `len` bytes of `fd` shared and writable, copies `data` to
/// `offset` in the mapping, msync(MS_SYNC)s and unmaps.
pub fn mmap_write(fd: &OwnedFd, len: usize, offset: usize, data: &[u8]) -> Res<()> {
    assert!(offset + data.len() <= len, "write past the mapping");
    // SAFETY: a fresh shared mapping of a valid fd at a kernel-chosen
    // address; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // SAFETY: `p` is a live mapping of `len` bytes, and
    // `offset + data.len() <= len` (asserted above); `data` cannot overlap a
    // mapping created just now.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>().add(offset), data.len()) };
    // SAFETY: `p`/`len` describe the mapping created above.
    let synced = cvt(unsafe { libc::msync(p, len, libc::MS_SYNC) });
    // SAFETY: `p`/`len` describe the mapping created above, which nothing
    // references any more.
    let unmapped = cvt(unsafe { libc::munmap(p, len) });
    synced.and(unmapped)
}

/// Reads a mapping of `len` bytes of `fd` (MAP_SHARED, read-only).
pub fn mmap_read(fd: &OwnedFd, len: usize) -> Res<Vec<u8>> {
    // SAFETY: a fresh shared read-only mapping at a kernel-chosen address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Errno::last());
    }
    // SAFETY: `p` is a live, readable mapping of `len` bytes.
    let v = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec();
    // SAFETY: `p`/`len` describe the mapping created above; `v` is a copy.
    cvt(unsafe { libc::munmap(p, len) })?;
    Ok(v)
}

/// One file-system operation to run under another identity (see [`as_user`]).
#[derive(Clone, Debug)]
pub enum UserOp {
    Chmod(PathBuf, libc::mode_t),
    /// open(path, flags, 0o644) and close.
    Open(PathBuf, libc::c_int),
    Stat(PathBuf),
    Unlink(PathBuf),
    Mkdir(PathBuf, libc::mode_t),
}

/// Runs `op` in a forked child whose uids and gids are all `uid`/`gid` and
/// whose supplementary groups are cleared; returns what the call returned.
/// `Err(ETIMEDOUT)` if the child did not finish within `timeout` (it is then
/// killed); panics if the child could not drop privileges.
pub fn as_user(uid: u32, gid: u32, op: &UserOp, timeout: std::time::Duration) -> Res<()> {
    // Everything the child needs is prepared here: after fork() in a
    // multi-threaded process the child may only make async-signal-safe calls
    // (no allocation).
    let (code, path, arg): (i32, CString, libc::c_long) = match op {
        UserOp::Chmod(p, m) => (0, cpath(p), *m as libc::c_long),
        UserOp::Open(p, f) => (1, cpath(p), *f as libc::c_long),
        UserOp::Stat(p) => (2, cpath(p), 0),
        UserOp::Unlink(p) => (3, cpath(p), 0),
        UserOp::Mkdir(p, m) => (4, cpath(p), *m as libc::c_long),
    };
    const PRIV_FAILED: i32 = 250;
    // SAFETY: fork() has no memory-safety preconditions; the child below
    // only makes raw system calls (async-signal-safe) on data prepared
    // before the fork, then _exit()s without unwinding or running
    // destructors.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Errno::last());
    }
    if pid == 0 {
        // SAFETY: raw syscalls with integer arguments and a valid C string
        // (`path`, owned by this frame, which never returns); a zeroed
        // `struct stat` on the stack is a valid output buffer.
        unsafe {
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
            {
                libc::_exit(PRIV_FAILED);
            }
            let p = path.as_ptr();
            let r = match code {
                0 => libc::chmod(p, arg as libc::mode_t),
                1 => {
                    let fd = libc::open(p, arg as libc::c_int, 0o644 as libc::c_uint);
                    if fd >= 0 {
                        libc::close(fd);
                        0
                    } else {
                        -1
                    }
                }
                2 => {
                    let mut st: libc::stat = std::mem::zeroed();
                    libc::stat(p, &mut st)
                }
                3 => libc::unlink(p),
                _ => libc::mkdir(p, arg as libc::mode_t),
            };
            libc::_exit(if r == 0 { 0 } else { *libc::__errno_location() });
        }
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid output location; `pid` is our child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            assert!(libc::WIFEXITED(status), "as_user child died: {status:#x}");
            return match libc::WEXITSTATUS(status) {
                0 => Ok(()),
                PRIV_FAILED => panic!("as_user: could not become uid {uid} gid {gid}"),
                e => Err(Errno::from_raw(e)),
            };
        }
        if r < 0 {
            return Err(Errno::last());
        }
        if std::time::Instant::now() >= deadline {
            // SAFETY: `pid` is our own unreaped child, so it cannot have
            // been recycled; waitpid's `status` argument may be null.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(Errno::ETIMEDOUT);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A zeroed, page-aligned (4096) heap buffer. With direct I/O the kernel
/// maps the caller's pages, so only an aligned 1 MiB buffer travels as one
/// 1 MiB FUSE message (max_pages 256); a `Vec` usually spans 257 pages.
pub struct PageBuf {
    /// INVARIANT: allocated with `layout`, zero-initialised, `layout.size()`
    /// bytes, never null.
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl PageBuf {
    pub fn zeroed(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(1), 4096).expect("layout");
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        PageBuf { ptr, layout }
    }

    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = Self::zeroed(data.len());
        b.copy_from_slice(data);
        b
    }
}

impl std::ops::Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: per the INVARIANT, `ptr` points to `layout.size()`
        // initialised bytes owned by `self`, borrowed immutably here.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl std::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with `layout` and is freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// One read(2) into a page-aligned buffer of `len` bytes.
pub fn read_aligned(fd: &OwnedFd, len: usize) -> Res<Vec<u8>> {
    let mut b = PageBuf::zeroed(len);
    // SAFETY: `b` is valid for writes of `len` bytes for the call.
    let n = cvt_size(unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), len) })?;
    Ok(b[..n].to_vec())
}

/// One pread(2) into a page-aligned buffer of `len` bytes.
pub fn pread_aligned(fd: &OwnedFd, len: usize, off: i64) -> Res<Vec<u8>> {
    let mut b = PageBuf::zeroed(len);
    // SAFETY: `b` is valid for writes of `len` bytes for the call.
    let n = cvt_size(unsafe { libc::pread(fd.as_raw_fd(), b.as_mut_ptr().cast(), len, off) })?;
    Ok(b[..n].to_vec())
}
