//! /dev/fuse: read(2) a request into a slot, write(2) a reply from one.
//!
//! The errno classes follow the kernel's fuse_dev_do_read/write and fuser's
//! `receive_retrying`: ENOENT (the request was interrupted and withdrawn
//! while being read), EINTR and EAGAIN are transient; ENODEV means the
//! connection is gone (unmounted or aborted) and ends the session normally.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// What a read of the device gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// A request of this many bytes.
    Message(usize),
    /// Nothing to read now.
    WouldBlock,
    /// Read again (the request vanished, or a signal).
    Retry,
    /// The connection is gone.
    Gone,
    /// Anything else: the buffer is too small, or a bug.
    Failed(Errno),
}

/// Reads one request. The kernel never splits or joins requests.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Read {
    match nix::unistd::read(fd.as_raw_fd(), buf) {
        Ok(n) => Read::Message(n),
        Err(Errno::EAGAIN) => Read::WouldBlock,
        Err(Errno::ENOENT | Errno::EINTR) => Read::Retry,
        Err(Errno::ENODEV | Errno::ECONNABORTED) => Read::Gone,
        Err(e) => Read::Failed(e),
    }
}

/// What a write to the device gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Accepted.
    Done,
    /// The request it answers no longer exists (interrupted, or answered).
    Stale,
    /// The kernel refused it (EINVAL and others); the errno says why.
    Rejected(Errno),
    /// The connection is gone.
    Gone,
}

/// Writes one reply or notification.
pub fn write(fd: BorrowedFd<'_>, msg: &[u8]) -> Write {
    loop {
        return match nix::unistd::write(fd, msg) {
            Ok(_) => Write::Done,
            Err(Errno::EINTR) => continue,
            Err(Errno::ENOENT) => Write::Stale,
            Err(Errno::ENODEV | Errno::ECONNABORTED) => Write::Gone,
            Err(e) => Write::Rejected(e),
        };
    }
}

/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)` in the kernel's fuse.h.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

/// A new descriptor of the mounted connection: requests are read from the
/// connection's one input queue by whichever clone reads first, and each
/// clone has its own queue of requests being processed (answers must go to
/// the clone that read the request).
#[allow(unsafe_code)]
pub fn clone_device(device: &std::fs::File) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let clone = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    let mut session_fd: u32 = device.as_raw_fd() as u32;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the fd to clone) from the
    // pointer, which points to a live local of that type; the descriptor
    // `clone` is open for the duration of the call.
    let r = unsafe {
        libc::ioctl(
            clone.as_raw_fd(),
            FUSE_DEV_IOC_CLONE,
            &mut session_fd as *mut u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(clone)
}
