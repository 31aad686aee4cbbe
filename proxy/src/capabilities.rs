//! The proxy's own privileges, read once where a decision depends on them:
//! whether it can mount by itself, lock memory past RLIMIT_MEMLOCK, or be
//! an I/O flusher.

/// `CAP_IPC_LOCK` (linux/capability.h): mlock past RLIMIT_MEMLOCK.
pub const CAP_IPC_LOCK: u32 = 14;
/// `CAP_SYS_ADMIN`: mount(2) and umount2(2).
pub const CAP_SYS_ADMIN: u32 = 21;

/// Whether capability `bit` is in the process's effective set, as
/// `CapEff` in /proc/self/status shows it (hex, one bit per capability).
/// Unreadable means no: the caller then takes the unprivileged path, which
/// works for root too.
pub fn effective(bit: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|set| set & (1u64 << bit) != 0)
}

/// Whether the proxy can mount and unmount by itself (mount(2) needs
/// CAP_SYS_ADMIN; root has it unless it was dropped). Without it, the
/// mount goes through fusermount3 ([`crate::user_mount`]).
pub fn can_mount() -> bool {
    effective(CAP_SYS_ADMIN)
}
