//! Keeping the proxy out of memory reclaim: mlockall and PR_SET_IO_FLUSHER.
//!
//! The deadlock fuseproxy exists for is a FUSE server that allocates while
//! the kernel's writeback waits on it. The proxy's own pages are locked, so
//! it never faults in the middle of a message, and it is marked as an I/O
//! flusher, so any allocation it does make is served with GFP_NOIO semantics
//! instead of entering filesystem reclaim.
//!
//! Without CAP_IPC_LOCK (a normal user) locked memory is bounded by
//! RLIMIT_MEMLOCK, and mlockall counts the whole address space against it
//! (code, libraries, thread stacks, malloc's reservations): with
//! MCL_FUTURE, every later mapping past the limit would fail. So under a
//! finite limit only the arena is locked (mlock on its mapping, cut to the
//! whole slots the limit holds), and mlockall is not used.
#![allow(unsafe_code)]

use crate::arena::SLOT_SIZE;
use crate::error::Error;

/// `PR_SET_IO_FLUSHER` from linux/prctl.h (Linux 5.6); the libc crate lacks it.
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// How much the proxy may lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// CAP_IPC_LOCK, or an unlimited RLIMIT_MEMLOCK: everything is locked
    /// (mlockall).
    Unbounded,
    /// RLIMIT_MEMLOCK's soft limit, in bytes, without CAP_IPC_LOCK: only the
    /// arena is locked, and it must fit.
    Limited(u64),
}

/// The budget of this process, read once before the arena is made.
pub fn budget() -> Budget {
    if crate::capabilities::effective(crate::capabilities::CAP_IPC_LOCK) {
        return Budget::Unbounded;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `struct rlimit` through the pointer,
    // which points to a live local of that type.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        // Unreadable: try as before; what took effect is reported anyway.
        return Budget::Unbounded;
    }
    Budget::Limited(lim.rlim_cur)
}

/// The arena size to map under `budget`: `wanted` as given when nothing
/// bounds it, else cut to the whole slots RLIMIT_MEMLOCK holds. `least` is
/// the fewest slots the proxy can run with (never below
/// [`crate::arena::MIN_SLOTS`]).
///
/// # Errors
/// One line naming the limit and the fixes when not even `least` slots fit.
pub fn fit_arena(wanted: usize, least: usize, budget: Budget) -> Result<usize, Error> {
    let Budget::Limited(limit) = budget else {
        return Ok(wanted);
    };
    let least = least.max(crate::arena::MIN_SLOTS);
    let wanted_slots = (wanted / SLOT_SIZE).max(least);
    let fits = usize::try_from(limit / SLOT_SIZE as u64).unwrap_or(usize::MAX);
    if fits >= wanted_slots {
        return Ok(wanted_slots * SLOT_SIZE);
    }
    if fits >= least {
        return Ok(fits * SLOT_SIZE);
    }
    let need_kib = (least * SLOT_SIZE).div_ceil(1024);
    let need_mib = need_kib.div_ceil(1024);
    Err(Error::Setup(format!(
        "RLIMIT_MEMLOCK is {} KiB, and without CAP_IPC_LOCK fuseproxy must lock its \
         arena of at least {least} slots ({need_kib} KiB) within it: raise the limit \
         (`ulimit -l {need_kib}` or more in the shell that starts it, within the hard \
         limit that root sets in /etc/security/limits.conf; LimitMEMLOCK={need_mib}M \
         in a systemd unit), or run it as root",
        limit / 1024
    )))
}

/// What took effect, for the start-up line.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// `mlockall(MCL_CURRENT | MCL_FUTURE)` succeeded.
    pub mlockall: bool,
    /// `prctl(PR_SET_IO_FLUSHER, 1)` succeeded (needs CAP_SYS_RESOURCE);
    /// the errno when it failed.
    pub io_flusher: Result<(), nix::errno::Errno>,
    /// RLIMIT_MEMLOCK in bytes when it bounded locking (no mlockall tried).
    pub limit: Option<u64>,
}

impl Pinning {
    /// `mlockall=` of the start-up line: `yes`, `no`, or why only the
    /// arena is locked.
    pub fn mlockall_text(&self) -> String {
        match (self.mlockall, self.limit) {
            (true, _) => "yes".into(),
            (false, Some(limit)) => format!(
                "no (RLIMIT_MEMLOCK {} KiB without CAP_IPC_LOCK: only the arena is locked; \
                 code, heap, stacks and other buffers are not)",
                limit / 1024
            ),
            (false, None) => "no".into(),
        }
    }

    /// `io_flusher=` of the start-up line.
    pub fn io_flusher_text(&self) -> String {
        match self.io_flusher {
            Ok(()) => "yes".into(),
            Err(nix::errno::Errno::EPERM) => "no (EPERM: needs CAP_SYS_RESOURCE)".into(),
            Err(e) => format!("no ({e})"),
        }
    }
}

/// Applies both as `budget` allows; failure of either is reported, not
/// fatal.
pub fn pin(budget: Budget) -> Pinning {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    // One malloc arena for every thread: each thread that allocates would
    // otherwise reserve an arena of its own (64 MiB of address space), and
    // under MCL_FUTURE every reservation counts against RLIMIT_MEMLOCK.
    // The forwarding path does not allocate, so nothing contends for it.
    // SAFETY: mallopt takes two integers and changes a malloc setting; it is
    // called before the proxy starts any thread.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let (mlockall, limit) = match budget {
        Budget::Unbounded => (
            mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE).is_ok(),
            None,
        ),
        Budget::Limited(limit) => (false, Some(limit)),
    };
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
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arena_is_cut_to_the_limit_or_refused() {
        let slot = SLOT_SIZE as u64;
        assert_eq!(fit_arena(23 << 20, 5, Budget::Unbounded).unwrap(), 23 << 20);
        // 8 MiB holds 7 slots of 1 MiB + 4 KiB.
        assert_eq!(
            fit_arena(23 << 20, 5, Budget::Limited(8 << 20)).unwrap(),
            7 * SLOT_SIZE
        );
        // A small arena that fits is kept as asked.
        assert_eq!(
            fit_arena(6 * SLOT_SIZE, 5, Budget::Limited(8 << 20)).unwrap(),
            6 * SLOT_SIZE
        );
        assert_eq!(
            fit_arena(0, 5, Budget::Limited(5 * slot)).unwrap(),
            5 * SLOT_SIZE
        );
        let e = fit_arena(23 << 20, 5, Budget::Limited(5 * slot - 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("RLIMIT_MEMLOCK is") && e.contains("ulimit -l 5140"),
            "{e}"
        );
        assert!(e.contains("LimitMEMLOCK=6M"), "{e}");
    }
}
