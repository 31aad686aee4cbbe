//! The seccomp channel: the daemon mounts, the proxy makes the mount.
//!
//! The backend is started with its command line unchanged (its real
//! MOUNTPOINT) under a seccomp filter ([`crate::seccomp_filter`]) that sends
//! its mount(2), umount2(2) and umount(2) calls, and those of everything it
//! runs (fusermount3 included), to a user-notification listener held here.
//! Nothing else is trapped, so the daemon's steady state runs at full speed.
//!
//! For the one FUSE mount (`fuse`, `fuse.*`, `fuseblk`, `fuseblk.*`) whose
//! target is MOUNTPOINT, the [`Supervisor`]:
//! 1. reads the call's strings from the caller's memory (process_vm_readv),
//!    a relative target against the caller's `/proc/PID/cwd`, then checks
//!    `SECCOMP_IOCTL_NOTIF_ID_VALID` before trusting them (the caller could
//!    have died and its pid been reused between receiving and reading);
//! 2. checks that the caller's fd named by `fd=N` is a FUSE device (under
//!    `--backend-user`, /dev/null, which stands at /dev/fuse in the daemon's
//!    mount namespace: see [`crate::backend_user`]), and puts
//!    the backend's end of the socketpair in its place
//!    (`SECCOMP_IOCTL_NOTIF_ADDFD` with `SECCOMP_ADDFD_FLAG_SETFD`, which
//!    closes the caller's /dev/fuse), keeping its close-on-exec flag;
//! 3. mounts the proxy's own /dev/fuse on MOUNTPOINT with the caller's
//!    source, type, flags and data, `fd=` rewritten, and the proxy's `-o`
//!    applied on top; and answers the call with 0, or the mount's errno.
//!    A proxy that is not root cannot call mount(2): it has fusermount3
//!    make the same mount instead (nosuid,nodev forced, `allow_other` only
//!    as /etc/fuse.conf allows), and the /dev/fuse fusermount3 opened and
//!    passed back becomes the session's device ([`MountContext::fusermount`]).
//!    The daemon runs under `NO_NEW_PRIVS` then (the kernel's condition for
//!    an unprivileged filter), so it could not run a setuid fusermount
//!    itself: it need not, since its own mount(2) succeeds.
//!
//! The daemon (or fusermount3, which passes the fd on over `_FUSE_COMMFD`)
//! then reads FUSE requests from the socket as it would from /dev/fuse.
//! An unmount of MOUNTPOINT by the daemon (libfuse does it at exit, rclone
//! runs `fusermount -u`) is answered 0 and leaves the real mount alone: the
//! proxy unmounts at its own end. Any other mount or unmount, a second FUSE
//! mount included, is refused with EPERM and logged in one line.
//!
//! After the mount the supervisor never touches a path at or under
//! MOUNTPOINT (a stat there would be a FUSE request to the very loop that
//! is handling the call): targets are then compared lexically.
//!
//! # Why `auto` prefers seccomp
//!
//! When the kernel supports it (user notification with fd injection, 5.9+),
//! `--channel auto` takes this channel even for daemons that accept
//! `/dev/fd/N` (libfuse3, go-fuse): the daemon then mounts as it does alone,
//! with the options and source it sets in its own code (fuse-overlayfs's
//! `default_permissions,allow_other,noatime`, sshfs's `user@host:/path`),
//! which the fd channel cannot see; and libfuse2 daemons, ntfs-3g and
//! bazil.org/fuse (fusermount) work at all. The fd channel stays for older
//! kernels and for backends written for the proxy that only speak
//! `/dev/fd/N` and never mount (`--channel fd`).
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;
use slog::{info, warn, Logger};

use crate::mount::Mount;
use crate::mount_options::MountOptions;
use crate::seccomp_filter::{trapped, Trapped};

/// The oldest kernel with `SECCOMP_IOCTL_NOTIF_ADDFD` (5.9).
const ADDFD_SINCE: (u32, u32) = (5, 9);

/// Longest string read from a caller: a path (PATH_MAX) or a page of data
/// (the kernel copies at most a page of mount(2) data).
const MAX_STRING: usize = 4096;

/// The misc device /dev/fuse is: major 10, minor 229.
const FUSE_DEV: (u64, u64) = (10, 229);

/// /dev/null: major 1, minor 3. With `--backend-user` it stands at
/// /dev/fuse in the daemon's mount namespace ([`crate::backend_user`]), so
/// the fd named by `fd=` is /dev/null there.
const NULL_DEV: (u64, u64) = (1, 3);

/// Whether this kernel supports the seccomp channel; the reason when not.
///
/// Looked at, cheapest first: `user_notif` in
/// `/proc/sys/kernel/seccomp/actions_avail`; `SECCOMP_GET_NOTIF_SIZES`
/// answering with structures no larger than this build's (5.0+); and the
/// kernel release at least 5.9, the first with fd injection
/// (`SECCOMP_IOCTL_NOTIF_ADDFD`), which has no probe short of installing a
/// filter.
pub fn support() -> Result<(), String> {
    let actions = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").ok();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    judge(actions.as_deref(), &release, notif_sizes())
}

/// Whether this kernel can trap calls to the proxy at all (user
/// notification, 5.0+), without fd injection: what the fusermount channel
/// needs to refuse and log the daemon's own mount calls. The reason when
/// not.
pub fn can_trap() -> Result<(), String> {
    let actions = std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").ok();
    judge_notification(actions.as_deref(), notif_sizes())
}

/// [`support`]'s decision from what it read; separate to be tested.
pub fn judge(
    actions_avail: Option<&str>,
    release: &str,
    sizes: Result<libc::seccomp_notif_sizes, Errno>,
) -> Result<(), String> {
    judge_notification(actions_avail, sizes)?;
    match parse_release(release) {
        Some(v) if v >= ADDFD_SINCE => Ok(()),
        Some((a, b)) => Err(format!(
            "kernel {a}.{b} lacks seccomp fd injection (SECCOMP_IOCTL_NOTIF_ADDFD, Linux {}.{}+)",
            ADDFD_SINCE.0, ADDFD_SINCE.1
        )),
        None => Err(format!("cannot tell the kernel version from '{release}'")),
    }
}

/// The user-notification part of [`judge`]: `user_notif` among the
/// actions, and structures no larger than this build's.
fn judge_notification(
    actions_avail: Option<&str>,
    sizes: Result<libc::seccomp_notif_sizes, Errno>,
) -> Result<(), String> {
    let Some(actions) = actions_avail else {
        return Err("the kernel has no seccomp filters \
                    (/proc/sys/kernel/seccomp/actions_avail is missing)"
            .into());
    };
    if !actions.split_whitespace().any(|a| a == "user_notif") {
        return Err("the kernel's seccomp lacks user notification \
                    (no user_notif in /proc/sys/kernel/seccomp/actions_avail; Linux 5.0+)"
            .into());
    }
    match sizes {
        Err(e) => {
            return Err(format!(
                "seccomp(SECCOMP_GET_NOTIF_SIZES) failed: {}",
                e.desc()
            ))
        }
        Ok(s) => {
            if usize::from(s.seccomp_notif) > std::mem::size_of::<libc::seccomp_notif>()
                || usize::from(s.seccomp_data) > std::mem::size_of::<libc::seccomp_data>()
            {
                return Err(format!(
                    "the kernel's seccomp_notif is {} bytes, larger than the {} this build knows",
                    s.seccomp_notif,
                    std::mem::size_of::<libc::seccomp_notif>()
                ));
            }
        }
    }
    Ok(())
}

/// "6.18.44-fc-v657" → (6, 18).
fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn notif_sizes() -> Result<libc::seccomp_notif_sizes, Errno> {
    let mut sizes = libc::seccomp_notif_sizes {
        seccomp_notif: 0,
        seccomp_notif_resp: 0,
        seccomp_data: 0,
    };
    // SAFETY: seccomp(SECCOMP_GET_NOTIF_SIZES, 0, &sizes) writes one struct
    // seccomp_notif_sizes (three u16, the layout of libc's definition) to
    // the pointer, which is valid and exclusively borrowed for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_NOTIF_SIZES,
            0,
            &mut sizes as *mut libc::seccomp_notif_sizes,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(sizes)
    }
}

/// A trapped call, read from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Which call.
    pub kind: Trapped,
    /// mount's source (NULL: `None`).
    pub source: Option<String>,
    /// The target, made absolute against the caller's cwd (`None`: NULL or
    /// unreadable).
    pub target: Option<PathBuf>,
    /// mount's filesystem type.
    pub fstype: Option<String>,
    /// mount's or umount2's flags.
    pub flags: u64,
    /// mount's data.
    pub data: Option<String>,
}

impl std::fmt::Display for Call {
    /// The call as strace would show it, for the log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = |s: &Option<String>| match s {
            Some(s) => format!("{s:?}"),
            None => "NULL".into(),
        };
        let t = q(&self.target.as_ref().map(|p| p.display().to_string()));
        match self.kind {
            Trapped::Mount => write!(
                f,
                "mount({}, {t}, {}, {:#x}, {})",
                q(&self.source),
                q(&self.fstype),
                self.flags,
                q(&self.data)
            ),
            Trapped::Umount2 => write!(f, "umount2({t}, {:#x})", self.flags),
            Trapped::Umount => write!(f, "umount({t})"),
        }
    }
}

/// What to do with a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The daemon's FUSE mount of MOUNTPOINT: make it.
    Mount,
    /// An unmount of MOUNTPOINT after the mount: answer 0, touch nothing.
    UnmountOk,
    /// Answer with this errno, logging the reason.
    Refuse(Errno, &'static str),
}

/// mount(2) flags that make a call something other than a new mount.
const NOT_A_NEW_MOUNT: u64 = libc::MS_REMOUNT
    | libc::MS_BIND
    | libc::MS_MOVE
    | libc::MS_SHARED
    | libc::MS_PRIVATE
    | libc::MS_SLAVE
    | libc::MS_UNBINDABLE;

/// `MS_MGC_VAL` in the top half of the flags, which old callers still pass.
const MS_MGC_MSK: u64 = 0xffff_0000;
const MS_MGC_VAL: u64 = 0xc0ed_0000;

/// mount(2) flags without the magic old callers put in the top half.
pub fn mount_flags(flags: u64) -> u64 {
    if flags & MS_MGC_MSK == MS_MGC_VAL {
        flags & !MS_MGC_MSK
    } else {
        flags
    }
}

fn is_fuse_type(t: &str) -> bool {
    let base = t.split_once('.').map_or(t, |(b, _)| b);
    base == "fuse" || base == "fuseblk"
}

/// The policy: one FUSE mount of MOUNTPOINT; unmounts of it once mounted;
/// nothing else. `is_mountpoint` says whether a target is MOUNTPOINT.
pub fn decide(call: &Call, mounted: bool, is_mountpoint: impl Fn(&Path) -> bool) -> Verdict {
    let at_mountpoint = call.target.as_deref().is_some_and(is_mountpoint);
    match call.kind {
        Trapped::Mount => {
            if !at_mountpoint {
                return Verdict::Refuse(Errno::EPERM, "only MOUNTPOINT may be mounted");
            }
            if mount_flags(call.flags) & NOT_A_NEW_MOUNT != 0 {
                return Verdict::Refuse(
                    Errno::EPERM,
                    "remounts, binds, moves and propagation changes are not allowed",
                );
            }
            if !call.fstype.as_deref().is_some_and(is_fuse_type) {
                return Verdict::Refuse(Errno::EPERM, "only a FUSE filesystem may be mounted");
            }
            if mounted {
                return Verdict::Refuse(
                    Errno::EPERM,
                    "MOUNTPOINT is mounted already (one per session)",
                );
            }
            Verdict::Mount
        }
        Trapped::Umount2 | Trapped::Umount => {
            if !at_mountpoint {
                Verdict::Refuse(Errno::EPERM, "only MOUNTPOINT may be unmounted")
            } else if !mounted {
                Verdict::Refuse(Errno::EINVAL, "MOUNTPOINT is not mounted yet")
            } else {
                Verdict::UnmountOk
            }
        }
    }
}

/// `path` made absolute against `cwd` and normalized without touching the
/// filesystem: `.` and `..` removed, slashes collapsed.
pub fn lexical(cwd: Option<&Path>, path: &Path) -> Option<PathBuf> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd?.join(path)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// What one notification came to, for the caller's bookkeeping.
pub enum Handled {
    /// Nothing that changes the session (refused, answered, or gone).
    Nothing,
    /// The daemon's mount was made; with the device fusermount3 passed
    /// when it made the mount ([`MountContext::fusermount`]).
    Mounted(Mount, MountOptions, Option<File>),
    /// The mount could not be made and the session cannot go on
    /// (fusermount3 refused: its reason, in one line). The daemon was
    /// answered EACCES, not EPERM: EPERM would send libfuse to fusermount.
    Fatal(crate::error::Error),
    /// The daemon unmounted MOUNTPOINT (answered 0; the mount stays).
    Unmounted,
}

/// Why the daemon's mount was not made.
enum Failure {
    /// Answered with this errno, logged with the reason; the session waits
    /// on (the daemon may give up or try again).
    Answer(Errno, String),
    /// The session cannot go on ([`Handled::Fatal`]).
    Fatal(crate::error::Error),
}

impl From<(Errno, String)> for Failure {
    fn from((errno, why): (Errno, String)) -> Self {
        Failure::Answer(errno, why)
    }
}

/// What the mount needs that the proxy holds.
pub struct MountContext<'a> {
    /// The proxy's /dev/fuse; `None` for a hand-off only (`--hand-off-fd`:
    /// the daemon gets its socket and is told its mount worked, and nothing
    /// is mounted).
    pub device: Option<&'a File>,
    /// Not root (no CAP_SYS_ADMIN): this fusermount3 makes the mount, and
    /// the device it passes back is the session's (`device` is `None`).
    pub fusermount: Option<&'a Path>,
    /// The proxy's own `-o` lists, applied over the daemon's options.
    pub overrides: &'a [String],
}

/// The proxy's end of the listener; see the module doc.
pub struct Supervisor {
    log: Logger,
    listener: OwnedFd,
    /// Canonical.
    mountpoint: PathBuf,
    /// The backend's end of the socketpair, until it is put in the daemon.
    socket: Option<OwnedFd>,
    mounted: bool,
    /// The daemon has unmounted MOUNTPOINT itself (and was told it worked).
    unmounted: bool,
    /// `--backend-user`: /dev/null stands at /dev/fuse for the daemon, and
    /// is accepted as the fd named by `fd=`.
    stand_in: bool,
    /// The fusermount channel's guard: the mount is made through the
    /// fusermount stand-in, so every mount(2) is refused (libfuse then
    /// falls back to fusermount) and logged.
    through_fusermount: bool,
}

impl Supervisor {
    /// Takes the listener received from the child and the backend's end of
    /// the socketpair (close-on-exec: the backend never inherits it).
    /// `stand_in`: the daemon runs with /dev/null at /dev/fuse
    /// (`--backend-user`), so its device fd is /dev/null.
    pub fn new(
        log: Logger,
        listener: OwnedFd,
        mountpoint: PathBuf,
        socket: OwnedFd,
        stand_in: bool,
    ) -> Self {
        Supervisor {
            log,
            listener,
            mountpoint,
            socket: Some(socket),
            mounted: false,
            unmounted: false,
            stand_in,
            through_fusermount: false,
        }
    }

    /// The fusermount channel's guard ([`crate::fusermount`]): every
    /// mount(2) is refused with EPERM and logged (a library's own attempt
    /// included: it then runs fusermount, which is the proxy's stand-in);
    /// an unmount of MOUNTPOINT is answered with success once
    /// [`Supervisor::set_mounted`] says the mount exists; anything else is
    /// refused and logged.
    pub fn for_fusermount(log: Logger, listener: OwnedFd, mountpoint: PathBuf) -> Self {
        Supervisor {
            log,
            listener,
            mountpoint,
            socket: None,
            mounted: false,
            unmounted: false,
            stand_in: false,
            through_fusermount: true,
        }
    }

    /// The session's mount exists (made through the stand-in).
    pub fn set_mounted(&mut self) {
        self.mounted = true;
    }

    /// For a daemon given `/dev/fd/N` after the proxy mounted (the fd
    /// channel with `--backend-user`): every FUSE mount is refused (one per
    /// session, made already), and so is anything else but an unmount of
    /// MOUNTPOINT; each refusal is logged.
    pub fn already_mounted(log: Logger, listener: OwnedFd, mountpoint: PathBuf) -> Self {
        Supervisor {
            log,
            listener,
            mountpoint,
            socket: None,
            mounted: true,
            unmounted: false,
            stand_in: false,
            through_fusermount: false,
        }
    }

    /// The listener, to register with the event loop (readable when a call
    /// waits; hung up once no process uses the filter).
    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Whether the daemon has unmounted MOUNTPOINT itself.
    pub fn backend_unmounted(&self) -> bool {
        self.unmounted
    }

    /// Waits up to `timeout` for the listener: `(readable, hung up)`. Hung
    /// up means no process is left under the filter: no call can come.
    pub fn poll(&self, timeout: std::time::Duration) -> (bool, bool) {
        let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, ms) {
            Ok(n) if n > 0 => {
                let r = fds[0].revents().unwrap_or(PollFlags::empty());
                (
                    r.contains(PollFlags::POLLIN),
                    r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR),
                )
            }
            _ => (false, false),
        }
    }

    /// Handles every call waiting now, without blocking; after the mount
    /// (a FUSE mount is refused: one per session).
    pub fn handle_pending(&mut self) -> bool {
        let mut unmounted = false;
        while self.poll(std::time::Duration::ZERO).0 {
            if let Handled::Unmounted = self.handle_one(None) {
                unmounted = true;
            }
        }
        unmounted
    }

    /// Receives one notification (call only when [`Supervisor::poll`] says
    /// readable: the receive blocks otherwise) and answers it. `ctx` is
    /// given while the mount is awaited.
    pub fn handle_one(&mut self, ctx: Option<&MountContext<'_>>) -> Handled {
        let Some(n) = self.receive() else {
            return Handled::Nothing;
        };
        let pid = Pid::from_raw(n.pid as i32);
        let Some(kind) = trapped(n.data.arch, n.data.nr) else {
            // The filter sends nothing else; answer rather than hang.
            self.respond(n.id, Err(Errno::ENOSYS));
            return Handled::Nothing;
        };
        let call = self.read_call(pid, kind, &n.data.args);
        if !self.id_valid(n.id) {
            // The caller is gone: what was read may be another process's.
            return Handled::Nothing;
        }
        let mounted = self.mounted;
        let verdict = decide(&call, mounted, |t| self.is_mountpoint(t));
        let who = describe_caller(pid);
        match verdict {
            Verdict::Refuse(errno, why) => {
                warn!(
                    self.log,
                    "refused {call} by {who}: {why} (answered {})",
                    errno_name(errno)
                );
                self.respond(n.id, Err(errno));
                Handled::Nothing
            }
            Verdict::UnmountOk => {
                info!(
                    self.log,
                    "{call} by {who}: answered success; the mount stays until the proxy ends"
                );
                self.unmounted = true;
                self.respond(n.id, Ok(()));
                Handled::Unmounted
            }
            Verdict::Mount if self.through_fusermount => {
                // The library's own attempt, expected: it falls back to
                // fusermount on EPERM. Said, not warned about.
                info!(
                    self.log,
                    "{call} by {who}: answered EPERM, so that its library runs fusermount \
                     (the fusermount channel mounts only through it)"
                );
                self.respond(n.id, Err(Errno::EPERM));
                Handled::Nothing
            }
            Verdict::Mount => match ctx {
                None => {
                    warn!(
                        self.log,
                        "refused {call} by {who}: the session's mount is made"
                    );
                    self.respond(n.id, Err(Errno::EPERM));
                    Handled::Nothing
                }
                Some(ctx) => match self.mount(pid, n.id, &call, ctx) {
                    Ok((m, opts, passed)) => {
                        if ctx.device.is_some() {
                            info!(self.log, "{call} by {who}: made on the proxy's /dev/fuse");
                        } else if passed.is_some() {
                            info!(
                                self.log,
                                "{call} by {who}: made through fusermount3 (not root), on the \
                                 /dev/fuse it passed to the proxy"
                            );
                        } else {
                            info!(
                                self.log,
                                "{call} by {who}: channel handed over, nothing mounted"
                            );
                        }
                        self.respond(n.id, Ok(()));
                        Handled::Mounted(m, opts, passed)
                    }
                    Err(Failure::Fatal(e)) => {
                        // Said once, by whoever ends the session with it.
                        slog::debug!(self.log, "{call} by {who}: answered EACCES: {e}");
                        self.respond(n.id, Err(Errno::EACCES));
                        Handled::Fatal(e)
                    }
                    Err(Failure::Answer(errno, why)) => {
                        warn!(
                            self.log,
                            "{call} by {who} failed: {why} (answered {})",
                            errno_name(errno)
                        );
                        self.respond(n.id, Err(errno));
                        Handled::Nothing
                    }
                },
            },
        }
    }

    /// Whether `target` is MOUNTPOINT: lexically always; before the mount
    /// also after resolving symlinks (nothing of ours is mounted there yet,
    /// so the lookup cannot reach this proxy).
    fn is_mountpoint(&self, target: &Path) -> bool {
        if target == self.mountpoint {
            return true;
        }
        !self.mounted && target.canonicalize().is_ok_and(|c| c == self.mountpoint)
    }

    /// The daemon's FUSE mount: its socket in place of its device fd, then
    /// the real mount with its options. Through fusermount3 the mount comes
    /// first, so that a refusal leaves the daemon's fd alone.
    fn mount(
        &mut self,
        pid: Pid,
        id: u64,
        call: &Call,
        ctx: &MountContext<'_>,
    ) -> Result<(Mount, MountOptions, Option<File>), Failure> {
        let flags = MsFlags::from_bits_retain(mount_flags(call.flags) as libc::c_ulong);
        let (mut opts, fd) = MountOptions::from_call(
            call.source.as_deref(),
            call.fstype.as_deref().unwrap_or(""),
            flags,
            call.data.as_deref().unwrap_or(""),
        )
        .map_err(|e| (Errno::EINVAL, e.to_string()))?;
        for list in ctx.overrides {
            opts.apply(list, true)
                .map_err(|e| (Errno::EINVAL, e.to_string()))?;
        }
        let fd_path = format!("/proc/{pid}/fd/{fd}");
        // The fd is replaced whatever it is, so check it is the device the
        // daemon opened for this mount and not some other file of its own.
        // Under --backend-user the daemon's /dev/fuse is /dev/null (it
        // cannot open the real one): that is the device fd then.
        match std::fs::metadata(&fd_path) {
            Ok(m)
                if m.file_type().is_char_device()
                    && (dev_pair(m.rdev()) == FUSE_DEV
                        || (self.stand_in && dev_pair(m.rdev()) == NULL_DEV)) => {}
            _ => return Err((Errno::EINVAL, format!("its fd {fd} is not /dev/fuse")).into()),
        }
        // Dropped on any error below: fusermount3 -u -z then removes it.
        let through = match ctx.fusermount {
            Some(program) => Some(self.mount_through(program, &mut opts)?),
            None => None,
        };
        let cloexec = fd_is_cloexec(pid, fd);
        let socket = self.socket.as_ref().ok_or((
            Errno::EPERM,
            "the socket was handed out already".to_string(),
        ))?;
        self.add_fd(id, socket.as_raw_fd(), fd, cloexec)
            .map_err(|e| {
                (
                    e,
                    format!("putting the proxy's socket at its fd {fd}: {}", e.desc()),
                )
            })?;
        // The daemon holds it now; ours must go, or its end would never
        // read as closed.
        self.socket = None;
        if let Some((device, m)) = through {
            self.mounted = true;
            return Ok((m, opts, Some(device)));
        }
        let Some(device) = ctx.device else {
            self.mounted = true;
            return Ok((Mount::none(&self.mountpoint), opts, None));
        };
        let data = opts.data_as_given(device.as_raw_fd());
        let m = Mount::with_data(&self.mountpoint, &opts, &data)
            .map_err(|e| (e, format!("mount(2) with '{data}': {}", e.desc())))?;
        self.mounted = true;
        Ok((m, opts, None))
    }

    /// The daemon's mount made by `program` (fusermount3), by its rules for
    /// users: nosuid,nodev forced (one warning when the daemon or `-o`
    /// asked for suid or dev), and only the options it takes: the kernel
    /// data it computes itself (`rootmode=`, `user_id=`, `group_id=`) is
    /// left out, any other option it would refuse is dropped with a
    /// warning. Returns the device it passed and the mount, which it
    /// unmounts; its refusal (`allow_other` without `user_allow_other`...)
    /// ends the session.
    fn mount_through(
        &self,
        program: &Path,
        opts: &mut MountOptions,
    ) -> Result<(File, Mount), Failure> {
        let computed = ["rootmode=", "user_id=", "group_id="];
        let unknown: Vec<&str> = opts
            .extra
            .iter()
            .map(String::as_str)
            .filter(|o| !computed.iter().any(|c| o.starts_with(c)))
            .collect();
        if !unknown.is_empty() {
            warn!(
                self.log,
                "not root: the daemon's mount options {} are not passed to fusermount3, \
                 which does not take them",
                unknown.join(",")
            );
        }
        opts.extra.clear();
        crate::user_mount::mount(&self.log, program, &self.mountpoint, opts).map_err(Failure::Fatal)
    }

    fn read_call(&self, pid: Pid, kind: Trapped, args: &[u64; 6]) -> Call {
        let cwd = || std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
        let target = |addr: u64| {
            read_string(pid, addr)
                .map(|s| PathBuf::from(OsString::from_vec(s)))
                .and_then(|p| lexical(cwd().as_deref(), &p))
        };
        let text =
            |addr: u64| read_string(pid, addr).map(|s| String::from_utf8_lossy(&s).into_owned());
        match kind {
            Trapped::Mount => Call {
                kind,
                source: text(args[0]),
                target: target(args[1]),
                fstype: text(args[2]),
                flags: args[3],
                data: text(args[4]),
            },
            Trapped::Umount2 | Trapped::Umount => Call {
                kind,
                source: None,
                target: target(args[0]),
                fstype: None,
                flags: if kind == Trapped::Umount2 { args[1] } else { 0 },
                data: None,
            },
        }
    }

    fn receive(&self) -> Option<libc::seccomp_notif> {
        // SAFETY: seccomp_notif is plain data; the kernel requires it zeroed.
        let mut n: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: SECCOMP_IOCTL_NOTIF_RECV writes one struct seccomp_notif
            // to the pointer: `n` is that struct (libc's layout, no smaller
            // than the kernel's, checked by `support`), valid and exclusively
            // borrowed for the call. The listener is open (owned by self).
            let rc = unsafe {
                libc::ioctl(
                    self.listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_RECV,
                    &mut n as *mut libc::seccomp_notif,
                )
            };
            if rc == 0 {
                return Some(n);
            }
            match Errno::last() {
                Errno::EINTR => continue,
                // ENOENT: the caller was killed or interrupted meanwhile.
                Errno::ENOENT => return None,
                e => {
                    warn!(
                        self.log,
                        "seccomp: receiving a notification failed: {}",
                        e.desc()
                    );
                    return None;
                }
            }
        }
    }

    fn id_valid(&self, id: u64) -> bool {
        // SAFETY: SECCOMP_IOCTL_NOTIF_ID_VALID reads one u64 from the
        // pointer, which points to `id` on this stack frame.
        let rc = unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
                &id as *const u64,
            )
        };
        rc == 0
    }

    fn add_fd(&self, id: u64, src: RawFd, newfd: i32, cloexec: bool) -> Result<(), Errno> {
        let add = libc::seccomp_notif_addfd {
            id,
            flags: libc::SECCOMP_ADDFD_FLAG_SETFD as u32,
            srcfd: src as u32,
            newfd: newfd as u32,
            newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
        };
        // SAFETY: SECCOMP_IOCTL_NOTIF_ADDFD reads one struct
        // seccomp_notif_addfd (libc's layout) from the pointer, which points
        // to `add` on this stack frame. `src` is an open fd of ours (the
        // socket, borrowed by the caller); the kernel takes its own reference
        // to the file and installs it in the target at `newfd`.
        let rc = unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_ADDFD,
                &add as *const libc::seccomp_notif_addfd,
            )
        };
        if rc < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }

    fn respond(&self, id: u64, result: Result<(), Errno>) {
        let resp = libc::seccomp_notif_resp {
            id,
            val: 0,
            error: match result {
                Ok(()) => 0,
                Err(e) => -(e as i32),
            },
            flags: 0,
        };
        // SAFETY: SECCOMP_IOCTL_NOTIF_SEND reads one struct
        // seccomp_notif_resp (libc's layout) from the pointer, which points
        // to `resp` on this stack frame.
        let rc = unsafe {
            libc::ioctl(
                self.listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &resp as *const libc::seccomp_notif_resp,
            )
        };
        if rc < 0 && Errno::last() != Errno::ENOENT {
            warn!(
                self.log,
                "seccomp: answering a call failed: {}",
                Errno::last().desc()
            );
        }
    }
}

/// A NUL-terminated string at `addr` in `pid`'s memory, up to
/// [`MAX_STRING`] bytes; `None` for NULL, unreadable or unterminated.
/// Read page by page, so that a string ending just before an unmapped page
/// is still read.
fn read_string(pid: Pid, addr: u64) -> Option<Vec<u8>> {
    if addr == 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut at = addr as usize;
    let mut page = [0u8; 4096];
    while out.len() < MAX_STRING {
        let len = (4096 - at % 4096).min(MAX_STRING - out.len());
        let got = process_vm_readv(
            pid,
            &mut [IoSliceMut::new(&mut page[..len])],
            &[RemoteIoVec { base: at, len }],
        )
        .ok()?;
        if got == 0 {
            return None;
        }
        if let Some(end) = page[..got].iter().position(|&b| b == 0) {
            out.extend_from_slice(&page[..end]);
            return Some(out);
        }
        out.extend_from_slice(&page[..got]);
        at += got;
    }
    None
}

fn dev_pair(rdev: u64) -> (u64, u64) {
    (
        libc::major(rdev as libc::dev_t) as u64,
        libc::minor(rdev as libc::dev_t) as u64,
    )
}

/// Whether the caller's fd has close-on-exec (`flags:` in fdinfo, octal).
fn fd_is_cloexec(pid: Pid, fd: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .is_some_and(|f| f & libc::O_CLOEXEC as u32 != 0)
}

/// "pid 123 (fusermount3)".
fn describe_caller(pid: Pid) -> String {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(c) => format!("pid {pid} ({})", c.trim_end()),
        Err(_) => format!("pid {pid}"),
    }
}

fn errno_name(e: Errno) -> String {
    format!("{e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Result<libc::seccomp_notif_sizes, Errno> {
        Ok(libc::seccomp_notif_sizes {
            seccomp_notif: 80,
            seccomp_notif_resp: 24,
            seccomp_data: 64,
        })
    }

    const ALL: &str = "kill_process kill_thread trap errno user_notif trace log allow\n";

    #[test]
    fn support_needs_user_notif_addfd_and_sizes() {
        assert_eq!(judge(Some(ALL), "6.18.44-fc-v657", sizes()), Ok(()));
        assert_eq!(judge(Some(ALL), "5.9.0", sizes()), Ok(()));
        let old = judge(Some(ALL), "5.4.0-150-generic", sizes()).unwrap_err();
        assert!(old.contains("5.4") && old.contains("ADDFD"), "{old}");
        let no_notif = judge(Some("kill_process errno trace log allow"), "6.1.0", sizes());
        assert!(no_notif.unwrap_err().contains("user_notif"));
        assert!(judge(None, "6.1.0", sizes())
            .unwrap_err()
            .contains("actions_avail"));
        assert!(judge(Some(ALL), "6.1", Err(Errno::EINVAL))
            .unwrap_err()
            .contains("GET_NOTIF_SIZES"));
        let big = Ok(libc::seccomp_notif_sizes {
            seccomp_notif: 200,
            seccomp_notif_resp: 24,
            seccomp_data: 64,
        });
        assert!(judge(Some(ALL), "6.1", big).is_err());
        assert!(judge(Some(ALL), "weird", sizes()).is_err());
        // This machine: the notes say 6.18 with user_notif.
        if std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail")
            .is_ok_and(|a| a.contains("user_notif"))
        {
            assert_eq!(support(), Ok(()));
        }
    }

    fn call(kind: Trapped, target: &str, fstype: &str, flags: u64) -> Call {
        Call {
            kind,
            source: Some("src".into()),
            target: Some(PathBuf::from(target)),
            fstype: Some(fstype.into()),
            flags,
            data: Some("fd=5,rootmode=40000".into()),
        }
    }

    #[test]
    fn one_fuse_mount_of_the_mountpoint_and_its_unmounts() {
        let mp = |p: &Path| p == Path::new("/m");
        let mount = |t: &str, ty: &str, fl: u64| call(Trapped::Mount, t, ty, fl);
        assert_eq!(decide(&mount("/m", "fuse.x", 6), false, mp), Verdict::Mount);
        assert_eq!(decide(&mount("/m", "fuse", 6), false, mp), Verdict::Mount);
        assert_eq!(
            decide(&mount("/m", "fuseblk", 6), false, mp),
            Verdict::Mount
        );
        let magic = MS_MGC_VAL | 6;
        assert_eq!(
            decide(&mount("/m", "fuse.x", magic), false, mp),
            Verdict::Mount
        );
        let refused = |v: Verdict| matches!(v, Verdict::Refuse(Errno::EPERM, _));
        assert!(refused(decide(&mount("/m", "fuse.x", 6), true, mp)));
        assert!(refused(decide(&mount("/x", "fuse.x", 6), false, mp)));
        assert!(refused(decide(&mount("/m", "tmpfs", 0), false, mp)));
        assert!(refused(decide(&mount("/m", "fuseish", 0), false, mp)));
        for f in [
            libc::MS_REMOUNT,
            libc::MS_BIND,
            libc::MS_MOVE,
            libc::MS_PRIVATE,
        ] {
            assert!(refused(decide(&mount("/m", "fuse.x", f), false, mp)));
        }
        let mut null = mount("/m", "fuse.x", 0);
        null.fstype = None;
        assert!(refused(decide(&null, false, mp)));
        null.target = None;
        assert!(refused(decide(&null, false, mp)));

        let umount2 = call(Trapped::Umount2, "/m", "", 2);
        assert_eq!(decide(&umount2, true, mp), Verdict::UnmountOk);
        assert_eq!(
            decide(&call(Trapped::Umount, "/m", "", 0), true, mp),
            Verdict::UnmountOk
        );
        assert!(matches!(
            decide(&umount2, false, mp),
            Verdict::Refuse(Errno::EINVAL, _)
        ));
        assert!(refused(decide(
            &call(Trapped::Umount2, "/", "", 0),
            true,
            mp
        )));
    }

    #[test]
    fn targets_resolve_against_the_callers_cwd_lexically() {
        let cwd = Path::new("/srv/a");
        assert_eq!(lexical(Some(cwd), Path::new("m")), Some("/srv/a/m".into()));
        assert_eq!(
            lexical(Some(cwd), Path::new("./m/")),
            Some("/srv/a/m".into())
        );
        assert_eq!(
            lexical(Some(cwd), Path::new("../b//m")),
            Some("/srv/b/m".into())
        );
        assert_eq!(lexical(None, Path::new("/x/../../y")), Some("/y".into()));
        assert_eq!(lexical(None, Path::new("m")), None);
    }

    #[test]
    fn calls_print_like_strace() {
        let c = call(Trapped::Mount, "/tmp/x", "tmpfs", 0);
        assert_eq!(
            c.to_string(),
            r#"mount("src", "/tmp/x", "tmpfs", 0x0, "fd=5,rootmode=40000")"#
        );
        assert_eq!(
            call(Trapped::Umount2, "/m", "", 2).to_string(),
            r#"umount2("/m", 0x2)"#
        );
    }

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(parse_release("4.19"), Some((4, 19)));
        assert_eq!(parse_release(""), None);
    }
}
