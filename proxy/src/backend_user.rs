//! `--backend-user USER[:GROUP]`: the daemon runs as that user, without
//! root, without capabilities and without access to the real /dev/fuse;
//! the proxy alone mounts.
//!
//! Resolution ([`parse`]) happens on the command line, in the parent: names
//! through getpwnam(3)/getgrnam(3), numbers as they are; the group defaults
//! to the user's primary group; root (uid 0) is refused. Everything that runs
//! in the child between fork and exec ([`hide_fuse_device`], [`drop_to`]) is
//! raw system calls on static or stack memory: async-signal-safe, no
//! allocation, as `Command::pre_exec` requires.
//!
//! # Why a private mount namespace (seccomp channel)
//!
//! /dev/fuse is `crw------- root root`, so a daemon without root cannot open
//! it, and libfuse 2 and 3 open it *before* calling mount(2) and give up
//! when the open fails: the trapped mount would never come. So, still as
//! root in the child, before exec:
//! 1. `unshare(CLONE_NEWNS)`, and `/` made recursively a slave, so that
//!    nothing mounted in the daemon's namespace reaches the host's while
//!    mounts of the host (the proxy's FUSE mount included, where the host's
//!    `/` is shared) still propagate in;
//! 2. `/dev/null` bind-mounted over `/dev/fuse` there. The daemon's (or its
//!    fusermount's) open of /dev/fuse succeeds on a harmless stand-in; its
//!    mount(2) is trapped as usual, and the proxy puts its socket in place
//!    of that fd (the supervisor accepts /dev/null's 1:3 as the fd named by
//!    `fd=` for this reason only). The real device has no path in that
//!    namespace, and its node elsewhere is root's 0600 anyway;
//! 3. the seccomp filter is installed (while still root, which the kernel
//!    requires of a filter installed without `NO_NEW_PRIVS`);
//! 4. [`drop_to`]: no supplementary groups, the group, the user (real,
//!    effective and saved), every capability set emptied (effective,
//!    permitted and ambient go with the uid change; inheritable is cleared
//!    explicitly), and `NO_NEW_PRIVS` set. `Command::uid`/`gid` are not
//!    used: std applies them before `pre_exec` closures run, and the
//!    namespace and filter need root.
//!
//! Without CAP_SYS_ADMIN the daemon can mount nothing itself (the kernel
//! answers EPERM), and without CAP_MKNOD it cannot make a node of its own
//! for 10:229.
//!
//! # Why `NO_NEW_PRIVS`, although fusermount is setuid root
//!
//! With it, nothing the daemon runs regains root or a capability: setuid
//! bits and file capabilities are ignored at exec, so a setuid fusermount
//! (bazil.org/fuse's `rclone mount` always runs it; libfuse does when its
//! own mount(2) fails) runs as the plain user. That is enough: it opens
//! /dev/fuse (the stand-in, readable and writable by anyone), makes its
//! checks as the user (which it does with a setuid fusermount too: the
//! mountpoint must be writable by the user, `allow_other` needs
//! `user_allow_other` in /etc/fuse.conf), and its mount(2) is trapped by
//! the filter before any permission check, so the proxy makes the mount
//! and passes the socket back as for root. Measured with rclone mount 1.60
//! and fusermount3 3.14 (tests/backend_user.rs). Without `NO_NEW_PRIVS` it
//! would work the same, but a setuid fusermount (or any other setuid
//! program the daemon can reach) would be root inside the daemon's
//! process tree.
#![allow(unsafe_code)]

use std::fmt;
use std::io;

use nix::unistd::{Gid, Group, Uid, User};

/// The user and group the backend runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUser {
    /// The user's name, or its number when it has no password entry.
    pub user: String,
    /// The group's name, or its number when it has no group entry.
    pub group: String,
    /// The uid set (real, effective, saved).
    pub uid: u32,
    /// The gid set (real, effective, saved); no supplementary groups.
    pub gid: u32,
}

impl fmt::Display for BackendUser {
    /// "nobody (uid 65534), group nogroup (gid 65534)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (uid {}), group {} (gid {})",
            self.user, self.uid, self.group, self.gid
        )
    }
}

/// The ids alone, copied into the child's `pre_exec` closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl BackendUser {
    /// The ids to switch to.
    pub fn ids(&self) -> Ids {
        Ids {
            uid: self.uid,
            gid: self.gid,
        }
    }
}

fn numeric(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses and resolves `USER[:GROUP]` (clap's value parser for
/// `--backend-user`). Names go through getpwnam(3)/getgrnam(3); a number is
/// taken as an id, with or without an entry; without GROUP, the user's
/// primary group from its password entry. Refused: root, an unknown name,
/// an empty part, a number without a password entry and no GROUP.
pub fn parse(spec: &str) -> Result<BackendUser, String> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if u.is_empty() {
        return Err("no user given (write USER or USER:GROUP)".into());
    }
    let entry = match numeric(u) {
        Some(uid) => User::from_uid(Uid::from_raw(uid))
            .map_err(|e| format!("looking up user id {uid}: {}", e.desc()))?,
        None => Some(
            User::from_name(u)
                .map_err(|e| format!("looking up user '{u}': {}", e.desc()))?
                .ok_or_else(|| format!("no user '{u}' in the password database (getpwnam)"))?,
        ),
    };
    let (user, uid, primary) = match (&entry, numeric(u)) {
        (Some(pw), _) => (pw.name.clone(), pw.uid.as_raw(), Some(pw.gid.as_raw())),
        (None, Some(uid)) => (uid.to_string(), uid, None),
        (None, None) => unreachable!("a name without an entry was refused above"),
    };
    if uid == 0 {
        return Err(format!(
            "'{u}' is root (uid 0): the backend would keep root's powers; \
             name an unprivileged user, such as nobody"
        ));
    }
    let gid = match g {
        Some("") => return Err("no group after ':' (write USER or USER:GROUP)".into()),
        Some(g) => match numeric(g) {
            Some(gid) => gid,
            None => Group::from_name(g)
                .map_err(|e| format!("looking up group '{g}': {}", e.desc()))?
                .ok_or_else(|| format!("no group '{g}' in the group database (getgrnam)"))?
                .gid
                .as_raw(),
        },
        None => primary.ok_or_else(|| {
            format!(
                "user id {uid} has no password entry, so no primary group: \
                 write {uid}:GROUP"
            )
        })?,
    };
    let group = Group::from_gid(Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |gr| gr.name);
    Ok(BackendUser {
        user,
        group,
        uid,
        gid,
    })
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// In the child, as root: a private mount namespace whose `/` is a
/// recursive slave of the host's, with /dev/null bind-mounted over
/// /dev/fuse. See the module doc.
///
/// Async-signal-safe: three system calls on static strings.
pub fn hide_fuse_device() -> io::Result<()> {
    private_namespace()?;
    bind(c"/dev/null", c"/dev/fuse")
}

/// In the child, as root: a mount namespace of its own, whose `/` is a
/// recursive slave of the host's (the host's mounts still propagate in,
/// nothing made here propagates out).
///
/// Async-signal-safe: two system calls on static strings.
pub fn private_namespace() -> io::Result<()> {
    // SAFETY: unshare(2) takes a flag word and touches no memory of ours.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
    // SAFETY: mount(2) reads the NUL-terminated static string passed (or
    // NULL where the call ignores the argument); the kernel keeps no pointer.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    })
}

/// In the child: bind-mounts `source` over `target`.
///
/// Async-signal-safe: one system call on strings made before the fork.
pub fn bind(source: &std::ffi::CStr, target: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: mount(2) reads the two NUL-terminated strings (alive for the
    // call: borrowed) and ignores type and data for a bind (NULL).
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
}

/// `CAP_SYS_ADMIN`, the capability mount(2) needs.
const CAP_SYS_ADMIN: u32 = 21;

/// In the child, as root: CAP_SYS_ADMIN out of the bounding set (so that no
/// exec, setuid or not, gives it back) and out of the current sets, so that
/// the daemon's own mount(2) fails with EPERM and its library runs
/// fusermount instead (the fusermount channel). The other capabilities
/// stay: the daemon is still root for its own work.
///
/// Async-signal-safe: raw system calls on stack memory.
pub fn drop_mount_capability() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAPBSET_DROP,
            CAP_SYS_ADMIN as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    })?;
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut caps = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget(2) writes two data structs (version 3) to `caps`, on
    // this stack frame, and may write the header's version.
    check(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            caps.as_mut_ptr(),
        ) as libc::c_int
    })?;
    let bit = !(1u32 << CAP_SYS_ADMIN); // in the first of the two words
    caps[0].effective &= bit;
    caps[0].permitted &= bit;
    caps[0].inheritable &= bit;
    header.version = CAP_V3;
    // SAFETY: capset(2) reads one header and two data structs (version 3),
    // on this stack frame. Lowering sets is always allowed.
    check(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            caps.as_ptr(),
        ) as libc::c_int
    })
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: two `CapData`, 64 capabilities.
const CAP_V3: u32 = 0x2008_0522;

/// In the child, last before exec: no supplementary groups, `gid` and `uid`
/// as real, effective and saved ids, every capability set empty (checked
/// with capget), and `NO_NEW_PRIVS`. See the module doc.
///
/// Async-signal-safe: raw system calls on stack memory.
pub fn drop_to(ids: Ids) -> io::Result<()> {
    // SAFETY: setgroups(0, NULL) reads no memory (the list is empty).
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain system calls on integers.
    check(unsafe { libc::setresgid(ids.gid, ids.gid, ids.gid) })?;
    // SAFETY: as above. From uid 0 to non-zero ids without SECBIT_KEEP_CAPS
    // the kernel clears the permitted, effective and ambient sets.
    check(unsafe { libc::setresuid(ids.uid, ids.uid, ids.uid) })?;
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let none = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset(2) reads one header and two data structs (version 3),
    // both on this stack frame, laid out as the kernel's (repr(C), u32
    // fields). Lowering every set is always allowed.
    check(unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            none.as_ptr(),
        ) as libc::c_int
    })?;
    // SAFETY: prctl with integer arguments only. The ambient set is empty
    // already (it cannot exceed permitted); this makes it explicit.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    crate::seccomp_filter::set_no_new_privs()?;
    // Check what the kernel now says, rather than trust the rules above.
    let mut got = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    header.version = CAP_V3;
    // SAFETY: capget(2) writes two data structs (version 3) to `got`, on
    // this stack frame, and may write the header's version.
    check(unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            got.as_mut_ptr(),
        ) as libc::c_int
    })?;
    // SAFETY: getuid/geteuid/getgid/getegid cannot fail and touch nothing.
    let ids_ok = unsafe {
        libc::getuid() == ids.uid
            && libc::geteuid() == ids.uid
            && libc::getgid() == ids.gid
            && libc::getegid() == ids.gid
    };
    let caps_empty = got
        .iter()
        .all(|d| d.effective == 0 && d.permitted == 0 && d.inheritable == 0);
    if !ids_ok || !caps_empty {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_groups() {
        // Debian's base system has nobody (65534) in nogroup (65534).
        let Ok(Some(nobody)) = User::from_name("nobody") else {
            return;
        };
        let u = parse("nobody").unwrap();
        assert_eq!(u.uid, nobody.uid.as_raw());
        assert_eq!(u.gid, nobody.gid.as_raw());
        assert_eq!(u.user, "nobody");
        let by_number = parse(&nobody.uid.as_raw().to_string()).unwrap();
        assert_eq!(by_number, u);
        let g = parse("nobody:0").unwrap();
        assert_eq!((g.uid, g.gid), (u.uid, 0));
        assert_eq!(g.group, "root");
        let n = parse("4242:4343").unwrap();
        assert_eq!((n.uid, n.gid), (4242, 4343));
        assert!(n.to_string().contains("uid 4242"), "{n}");
    }

    #[test]
    fn refusals_say_why() {
        let e = parse("no-such-user-here").unwrap_err();
        assert!(e.contains("no user 'no-such-user-here'"), "{e}");
        assert!(parse("root").unwrap_err().contains("root"));
        assert!(parse("0").unwrap_err().contains("uid 0"));
        assert!(parse("").is_err());
        assert!(parse(":x").is_err());
        let e = parse("nobody:").unwrap_err();
        assert!(e.contains("no group"), "{e}");
        let e = parse("nobody:no-such-group-here").unwrap_err();
        assert!(e.contains("no group 'no-such-group-here'"), "{e}");
        // A number without an entry needs its group spelled out.
        if User::from_uid(Uid::from_raw(4242)).ok().flatten().is_none() {
            let e = parse("4242").unwrap_err();
            assert!(e.contains("4242:GROUP"), "{e}");
        }
    }
}
