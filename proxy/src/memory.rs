//! Keeping the proxy out of memory reclaim: mlockall and PR_SET_IO_FLUSHER.
//!
//! The deadlock fuseproxy exists for is a FUSE server that allocates while
//! the kernel's writeback waits on it. The proxy's own pages are locked, so
//! it never faults in the middle of a message, and it is marked as an I/O
//! flusher, so any allocation it does make is served with GFP_NOIO semantics
//! instead of entering filesystem reclaim.
#![allow(unsafe_code)]

/// `PR_SET_IO_FLUSHER` from linux/prctl.h (Linux 5.6); the libc crate lacks it.
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// What took effect, for the start-up line.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// `mlockall(MCL_CURRENT | MCL_FUTURE)` succeeded.
    pub mlockall: bool,
    /// `prctl(PR_SET_IO_FLUSHER, 1)` succeeded (needs CAP_SYS_RESOURCE);
    /// the errno when it failed.
    pub io_flusher: Result<(), nix::errno::Errno>,
}

/// Applies both; failure of either is reported, not fatal.
pub fn pin() -> Pinning {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    // One malloc arena for every thread: each thread that allocates would
    // otherwise reserve an arena of its own (64 MiB of address space), and
    // under MCL_FUTURE every reservation counts against RLIMIT_MEMLOCK.
    // The forwarding path does not allocate, so nothing contends for it.
    // SAFETY: mallopt takes two integers and changes a malloc setting; it is
    // called before the proxy starts any thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let mlockall = mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).is_ok();
    // SAFETY: prctl(PR_SET_IO_FLUSHER) takes four integer arguments and
    // dereferences no pointer; the unused ones must be zero (prctl(2)). It
    // only changes a flag of the calling process.
    let rc = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) };
    Pinning {
        mlockall,
        io_flusher: if rc == 0 {
            Ok(())
        } else {
            Err(nix::errno::Errno::last())
        },
    }
}
