//! The fusermount channel: the daemon mounts through fusermount, and the
//! fusermount it runs is the proxy's stand-in.
//!
//! For kernels without seccomp fd injection (before 5.9: the 4.19 and 5.4
//! trees this project exists for), where the seccomp channel cannot put the
//! socket in the daemon. Every FUSE library mounts through a fusermount
//! program when it may not mount itself: libfuse 2 and 3 when their own
//! mount(2) fails with EPERM, go-fuse by default, bazil.org/fuse always.
//! fusermount hands the device fd back over the socket named by
//! `_FUSE_COMMFD`, which is where the proxy's socket can go instead. So the
//! backend is started ([`crate::backend::Backend::spawn_fusermount`]):
//! 1. in a private mount namespace (`/` a recursive slave of the host's) in
//!    which the fuseproxy executable is bind-mounted over every fusermount
//!    program found ([`stand_in_targets`]);
//! 2. without CAP_SYS_ADMIN (dropped from its bounding set, so no exec gives
//!    it back; under `--backend-user` every capability goes), so its own
//!    mount(2) fails with EPERM and the library falls back to fusermount;
//!
//! The stand-in ([`crate::fusermount_helper`]) finds the proxy by its own
//! mount namespace: the proxy listens on the abstract unix socket
//! [`socket_name`] of the backend's namespace, which the stand-in, running
//! in that namespace, reads from `/proc/self/ns/mnt`. No path the daemon's
//! user must reach and no environment variable (go-fuse runs fusermount
//! with an environment of `_FUSE_COMMFD` alone) are involved. It sends its
//! command line and working directory to the [`Server`]. The server takes requests only from
//! processes in the backend's mount namespace (checked on the peer's pid
//! from `SO_PEERCRED`), and only these: one FUSE mount of MOUNTPOINT, made
//! by the proxy on its own /dev/fuse with the options of the command line
//! (as fusermount would: `nosuid,nodev` unless root asks otherwise, the
//! caller's uid and gid as `user_id`/`group_id`, `allow_other` for a user
//! other than root only with `user_allow_other` in /etc/fuse.conf) and the
//! proxy's own `-o` on top, after which the proxy's socket is passed back
//! to the stand-in, which passes it on to the daemon over `_FUSE_COMMFD`;
//! and unmounts of MOUNTPOINT, answered with success while the mount stays
//! until the proxy ends. Anything else is refused and logged.
//!
//! The daemon sees its mount at MOUNTPOINT in its own namespace only if the
//! mount MOUNTPOINT lives on is shared (systemd makes `/` shared; many
//! containers leave it private): mounts made in the host's namespace reach
//! a slave namespace only from a shared mount. Most daemons never look, but
//! go-fuse opens a file there right after INIT and fails without it. The
//! proxy warns at start when MOUNTPOINT is on a private mount
//! ([`on_shared_mount`]). It does not make a shared mount itself: a bind
//! of MOUNTPOINT on itself would show as "already mounted" to daemons that
//! check (rclone), and one of its parent would capture whatever the user
//! mounts beside it during the session.
//!
//! Where the kernel can trap calls (seccomp user notification, 5.0+; the
//! fd injection of 5.9 is not needed), the daemon also runs under the
//! seccomp filter as a guard ([`crate::seccomp::Supervisor::for_fusermount`]):
//! its own mount(2) calls are answered EPERM and logged (a library's
//! attempt on MOUNTPOINT at INFO: it then runs fusermount), and its unmount
//! of MOUNTPOINT is answered with success once mounted. Without it those
//! calls fail in the kernel, unseen.
//!
//! What this channel cannot do: a daemon that mounts with mount(2) only and
//! never runs fusermount (ntfs-3g's own FUSE) fails at start with EPERM, as
//! it would run unprivileged; and the stand-in does not keep running for
//! `auto_unmount` (the proxy unmounts when the daemon dies anyway).
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    accept4, bind, getsockopt, listen, recv, sendmsg, socket, sockopt, AddressFamily, Backlog,
    ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use slog::{info, warn, Logger};

use crate::error::Error;
use crate::mount::Mount;
use crate::mount_options::MountOptions;
use crate::seccomp::{lexical, Handled, MountContext};

/// The abstract unix socket name (without its leading NUL) the proxy
/// listens on for the processes of the mount namespace `ns`, as
/// `/proc/PID/ns/mnt` reads (`mnt:[4026532123]`).
pub fn socket_name(ns: &std::ffi::OsStr) -> String {
    let digits: String = ns
        .to_string_lossy()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    format!("fuseproxy-fusermount-{digits}")
}

/// The first field of every request: the stand-in and the proxy are the
/// same executable, but a stale bind mount could pair two versions.
pub const MAGIC: &str = "fuseproxy-fusermount-1";

/// Where fusermount programs are looked for, in this order.
const DIRS: [&str; 6] = [
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
];

/// The names of fusermount programs: libfuse 3's and 2's, and the copy of
/// libfuse 2's that mergerfs ships (its bundled libfuse runs it).
const NAMES: [&str; 3] = ["fusermount3", "fusermount", "mergerfs-fusermount"];

/// The fusermount programs on this system, as the files they resolve to
/// (`/bin/fusermount` is often a symlink to `fusermount3`): the targets of
/// the stand-in's bind mounts. Empty when there is none, and then the
/// channel cannot be used: nothing would run the stand-in.
pub fn stand_in_targets() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in DIRS {
        for name in NAMES {
            let Ok(real) = Path::new(dir).join(name).canonicalize() else {
                continue;
            };
            if real.is_file() && !out.contains(&real) {
                out.push(real);
            }
        }
    }
    out
}

/// A fusermount command line, as libfuse, go-fuse and bazil.org/fuse write
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `fusermount3 [-o OPTS]... [--auto-unmount] [--] MOUNTPOINT`.
    Mount {
        /// The `-o` lists joined with commas.
        options: String,
        /// As given (relative to the caller's directory if not absolute).
        mountpoint: PathBuf,
    },
    /// `fusermount3 -u [-z] [-q] [--] MOUNTPOINT`.
    Unmount {
        /// As given.
        mountpoint: PathBuf,
    },
}

/// Parses fusermount's arguments (without the program name). `-h` and `-V`
/// are the stand-in's own business and not accepted here.
pub fn parse_args(args: &[String]) -> Result<Request, String> {
    let mut options: Vec<&str> = Vec::new();
    let mut unmount = false;
    let mut mountpoint: Option<&str> = None;
    let mut it = args.iter();
    let mut rest_are_paths = false;
    while let Some(a) = it.next() {
        let a = a.as_str();
        if rest_are_paths || !a.starts_with('-') || a == "-" {
            if mountpoint.replace(a).is_some() {
                return Err(format!("extra argument '{a}'"));
            }
            continue;
        }
        match a {
            "--" => rest_are_paths = true,
            "-o" | "--options" => {
                options.push(it.next().ok_or("option '-o' needs a value")?);
            }
            "-u" | "--unmount" => unmount = true,
            // Lazy and quiet unmounts are unmounts; auto-unmount is the
            // proxy's business (it unmounts when the daemon dies).
            "-z" | "--lazy" | "-q" | "--quiet" | "--auto-unmount" => {}
            _ if a.starts_with("-o") => options.push(&a[2..]),
            _ if a.starts_with("--options=") => options.push(&a["--options=".len()..]),
            // Clustered short flags, as getopt allows: -uz, -uqz.
            _ if !a.starts_with("--") && a[1..].chars().all(|c| "uzq".contains(c)) => {
                unmount |= a.contains('u');
            }
            _ => return Err(format!("unknown option '{a}'")),
        }
    }
    let mountpoint = PathBuf::from(mountpoint.ok_or("missing mountpoint argument")?);
    if unmount {
        if !options.is_empty() {
            return Err("'-o' is not taken with '-u'".into());
        }
        return Ok(Request::Unmount { mountpoint });
    }
    Ok(Request::Mount {
        options: options
            .into_iter()
            .filter(|o| !o.is_empty())
            .collect::<Vec<_>>()
            .join(","),
        mountpoint,
    })
}

/// Whether an option list spells out every mount flag, as libfuse's does
/// when its own mount(2) failed and it falls back to fusermount: it starts
/// with `rw` or `ro` and names each flag that is set (`nosuid`, `nodev`,
/// `noatime` ...), so a flag it does not name is clear, as in the mount(2)
/// it would have made itself as root (fuse-overlayfs: `rw,nodev,noatime`,
/// no `nosuid`). Other callers (go-fuse, bazil.org/fuse) name only what
/// they change and get fusermount's `nosuid,nodev` defaults, as they do
/// when they run the real one, root or not.
fn spells_out_flags(options: &str) -> bool {
    options.split(',').any(|o| o == "rw" || o == "ro")
}

/// Whether /etc/fuse.conf has `user_allow_other` (fusermount's rule for
/// `allow_other` asked by a user other than root).
fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf").is_ok_and(|t| {
        t.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| l == "user_allow_other")
    })
}

/// Who sent a request.
#[derive(Debug, Clone, Copy)]
struct Peer {
    pid: i32,
    uid: u32,
    gid: u32,
}

/// The proxy's end of the fusermount channel; see the module doc.
pub struct Server {
    log: Logger,
    listener: OwnedFd,
    /// Canonical.
    mountpoint: PathBuf,
    /// The backend's end of the socketpair, until it is handed out.
    socket: Option<OwnedFd>,
    /// `mnt:[INODE]` of the backend's namespace, once it runs.
    namespace: Option<std::ffi::OsString>,
    /// The namespace itself, kept alive while the socket bears its number.
    pinned: Option<std::fs::File>,
    mounted: bool,
    unmounted: bool,
}

/// How long one stand-in may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(2);

impl Server {
    /// A server for MOUNTPOINT that will hand out `socket`; it listens once
    /// [`Server::listen_for`] knows the backend's namespace.
    pub fn new(log: Logger, mountpoint: PathBuf, socket: OwnedFd) -> Result<Server, Error> {
        let listener =
            socket_seqpacket().map_err(|e| Error::Setup(format!("socket: {}", e.desc())))?;
        Ok(Server {
            log,
            listener,
            mountpoint,
            socket: Some(socket),
            namespace: None,
            pinned: None,
            mounted: false,
            unmounted: false,
        })
    }

    /// Listens for the processes of `pid`'s mount namespace (the backend's,
    /// private to it and what it runs), on that namespace's
    /// [`socket_name`]; takes requests from nobody else.
    pub fn listen_for(&mut self, pid: u32) -> Result<(), Error> {
        let setup = |what: &str, e: Errno| Error::Setup(format!("{what}: {}", e.desc()));
        let path = format!("/proc/{pid}/ns/mnt");
        let fail = |e: std::io::Error| {
            Error::Setup(format!(
                "reading the backend's mount namespace ({path}): {e}"
            ))
        };
        // Held open for the session: a namespace's inode number, which
        // names the socket, is reused once the namespace is gone, and a
        // proxy still ending would then hold the name of a new one.
        self.pinned = Some(std::fs::File::open(&path).map_err(fail)?);
        let ns = std::fs::read_link(&path).map_err(fail)?.into_os_string();
        let name = socket_name(&ns);
        let addr = UnixAddr::new_abstract(name.as_bytes())
            .map_err(|e| setup("abstract socket name", e))?;
        bind(self.listener.as_raw_fd(), &addr)
            .map_err(|e| setup(&format!("bind of the fusermount socket @{name}"), e))?;
        listen(
            &self.listener,
            Backlog::new(16).map_err(|e| setup("listen", e))?,
        )
        .map_err(|e| setup("listen", e))?;
        self.namespace = Some(ns);
        Ok(())
    }

    /// The listening socket, for the event loop.
    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Whether the daemon has unmounted MOUNTPOINT itself.
    pub fn backend_unmounted(&self) -> bool {
        self.unmounted
    }

    /// Waits up to `timeout` for a connection: `(readable, hung up)`; a
    /// listener never hangs up.
    pub fn poll(&self, timeout: Duration) -> (bool, bool) {
        let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match nix::poll::poll(&mut fds, ms) {
            Ok(n) if n > 0 => (true, false),
            _ => (false, false),
        }
    }

    /// Serves every stand-in waiting now, without blocking on the listener;
    /// after the mount. Returns whether the daemon unmounted MOUNTPOINT.
    pub fn handle_pending(&mut self) -> bool {
        let mut unmounted = false;
        // Bounded: a listener that stays readable while accept fails
        // (EMFILE) must not hold the event loop.
        for _ in 0..16 {
            if !self.poll(Duration::ZERO).0 {
                break;
            }
            if let Handled::Unmounted = self.handle_one(None) {
                unmounted = true;
            }
        }
        unmounted
    }

    /// Accepts one stand-in and answers it. `ctx` is given while the mount
    /// is awaited.
    pub fn handle_one(&mut self, ctx: Option<&MountContext<'_>>) -> Handled {
        let conn = match accept4(
            self.listener.as_raw_fd(),
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        ) {
            // SAFETY: accept4 returned a new fd that nothing else owns.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(_) => return Handled::Nothing,
        };
        let peer = match getsockopt(&conn, sockopt::PeerCredentials) {
            Ok(c) => Peer {
                pid: c.pid(),
                uid: c.uid(),
                gid: c.gid(),
            },
            Err(e) => {
                warn!(
                    self.log,
                    "fusermount channel: no peer credentials: {}",
                    e.desc()
                );
                return Handled::Nothing;
            }
        };
        let who = describe(peer.pid);
        let ns = std::fs::read_link(format!("/proc/{}/ns/mnt", peer.pid)).ok();
        if self.namespace.is_none() || ns.map(|p| p.into_os_string()) != self.namespace {
            warn!(
                self.log,
                "refused a fusermount request from {who}: not in the backend's mount namespace"
            );
            reply(&conn, Err("not a process of the proxy's backend"), None);
            return Handled::Nothing;
        }
        let Some((cwd, args)) = read_request(&conn) else {
            warn!(
                self.log,
                "fusermount channel: {who} sent no well-formed request"
            );
            reply(&conn, Err("malformed request"), None);
            return Handled::Nothing;
        };
        let line = format!("fusermount {}", args.join(" "));
        let req = match parse_args(&args) {
            Ok(r) => r,
            Err(e) => {
                warn!(self.log, "refused '{line}' by {who}: {e}");
                reply(&conn, Err(&e), None);
                return Handled::Nothing;
            }
        };
        match req {
            Request::Unmount { mountpoint } => {
                let at = lexical(Some(&cwd), &mountpoint).is_some_and(|t| t == self.mountpoint);
                if at && self.mounted {
                    info!(
                        self.log,
                        "'{line}' by {who}: answered success; the mount stays until the proxy ends"
                    );
                    self.unmounted = true;
                    reply(&conn, Ok(()), None);
                    Handled::Unmounted
                } else {
                    let why = if at {
                        "MOUNTPOINT is not mounted yet"
                    } else {
                        "only MOUNTPOINT may be unmounted"
                    };
                    warn!(self.log, "refused '{line}' by {who}: {why}");
                    reply(&conn, Err(why), None);
                    Handled::Nothing
                }
            }
            Request::Mount {
                options,
                mountpoint,
            } => {
                let Some(ctx) = ctx else {
                    warn!(
                        self.log,
                        "refused '{line}' by {who}: the session's mount is made"
                    );
                    reply(&conn, Err("MOUNTPOINT is mounted already"), None);
                    return Handled::Nothing;
                };
                match self.mount(&cwd, &mountpoint, &options, peer, ctx) {
                    Ok((m, opts)) => {
                        let socket = self.socket.take();
                        if !reply(&conn, Ok(()), socket.as_ref()) {
                            warn!(
                                self.log,
                                "'{line}' by {who}: the mount was made but the stand-in \
                                 went away before taking the socket; mount removed"
                            );
                            self.socket = socket;
                            drop(m);
                            return Handled::Nothing;
                        }
                        self.mounted = true;
                        info!(self.log, "'{line}' by {who}: made on the proxy's /dev/fuse");
                        Handled::Mounted(m, opts, None)
                    }
                    Err(why) => {
                        warn!(self.log, "refused '{line}' by {who}: {why}");
                        reply(&conn, Err(&why), None);
                        Handled::Nothing
                    }
                }
            }
        }
    }

    /// fusermount's mount, made by the proxy on its own device.
    fn mount(
        &self,
        cwd: &Path,
        mountpoint: &Path,
        options: &str,
        peer: Peer,
        ctx: &MountContext<'_>,
    ) -> Result<(Mount, MountOptions), String> {
        let target = lexical(Some(cwd), mountpoint).ok_or("a relative mountpoint without cwd")?;
        let at =
            target == self.mountpoint || target.canonicalize().is_ok_and(|c| c == self.mountpoint);
        if !at {
            return Err(format!(
                "only MOUNTPOINT ({}) may be mounted, not {}",
                self.mountpoint.display(),
                target.display()
            ));
        }
        if self.mounted || self.socket.is_none() {
            return Err("MOUNTPOINT is mounted already (one per session)".into());
        }
        let mut opts = MountOptions::default();
        if peer.uid == 0 && spells_out_flags(options) {
            opts.flags = MsFlags::empty();
        }
        opts.apply(options, false).map_err(|e| e.to_string())?;
        if peer.uid != 0 {
            // fusermount's rules for users: no suid or device files, and
            // allow_other only where the administrator allowed it.
            opts.flags |= MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if opts.allow_other && !user_allow_other() {
                return Err(
                    "option allow_other only allowed if 'user_allow_other' is set \
                            in /etc/fuse.conf"
                        .into(),
                );
            }
        }
        for list in ctx.overrides {
            opts.apply(list, true).map_err(|e| e.to_string())?;
        }
        let rootmode = std::fs::metadata(&self.mountpoint)
            .map_err(|e| format!("{}: {e}", self.mountpoint.display()))?
            .mode()
            & libc::S_IFMT;
        let Some(device) = ctx.device else {
            return Ok((Mount::none(&self.mountpoint), opts));
        };
        let data = opts.data(device.as_raw_fd(), rootmode, peer.uid, peer.gid);
        let m = Mount::with_data(&self.mountpoint, &opts, &data)
            .map_err(|e| format!("mount(2) with '{data}': {}", e.desc()))?;
        Ok((m, opts))
    }
}

/// Whether the mount `path` lives on (the last mount in mountinfo whose
/// mount point is a prefix of it) has shared propagation.
pub fn on_shared_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let mut best: Option<(usize, bool)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let point = Path::new(point);
        if !path.starts_with(point) {
            continue;
        }
        let depth = point.components().count();
        let shared = fields
            .iter()
            .skip(6)
            .take_while(|f| **f != "-")
            .any(|f| f.starts_with("shared:"));
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, shared));
        }
    }
    best.is_some_and(|(_, shared)| shared)
}

/// A SOCK_SEQPACKET unix socket, close-on-exec and non-blocking.
fn socket_seqpacket() -> Result<OwnedFd, Errno> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
}

/// Reads one request, waiting at most [`REQUEST_WAIT`]: the magic, the
/// caller's directory, its arguments, NUL-separated.
fn read_request(conn: &OwnedFd) -> Option<(PathBuf, Vec<String>)> {
    let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(REQUEST_WAIT).unwrap_or(PollTimeout::MAX);
    if !matches!(nix::poll::poll(&mut fds, ms), Ok(n) if n > 0) {
        return None;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let n = recv(conn.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).ok()?;
    let mut fields = buf[..n].split(|&b| b == 0);
    if fields.next()? != MAGIC.as_bytes() {
        return None;
    }
    let cwd = PathBuf::from(std::str::from_utf8(fields.next()?).ok()?);
    let args = fields
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    Some((cwd, args))
}

/// Sends the answer: `0` and, for a mount, the socket; or `1` and why.
/// Returns whether it was sent.
fn reply(conn: &OwnedFd, result: Result<(), &str>, fd: Option<&OwnedFd>) -> bool {
    let mut msg = Vec::new();
    match result {
        Ok(()) => msg.push(0u8),
        Err(why) => {
            msg.push(1u8);
            msg.extend_from_slice(why.as_bytes());
        }
    }
    let iov = [std::io::IoSlice::new(&msg)];
    let fds: Vec<RawFd> = fd.map(|f| f.as_raw_fd()).into_iter().collect();
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(conn.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).is_ok()
}

/// "pid 1234 (rclone)".
fn describe(pid: i32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("pid {pid} ({})", comm.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn command_lines_of_the_libraries() {
        // libfuse 3: fusermount3 -o OPTS -- MNT; libfuse 2: -o OPTS -- MNT.
        assert_eq!(
            parse_args(&args("-o rw,nosuid,subtype=sshfs,fsname=a@b:/ -- /mnt/x")),
            Ok(Request::Mount {
                options: "rw,nosuid,subtype=sshfs,fsname=a@b:/".into(),
                mountpoint: "/mnt/x".into()
            })
        );
        // go-fuse and bazil: -o OPTS MNT, sometimes several -o.
        assert_eq!(
            parse_args(&args("-o fsname=x -oallow_other mnt")),
            Ok(Request::Mount {
                options: "fsname=x,allow_other".into(),
                mountpoint: "mnt".into()
            })
        );
        // Unmounts: libfuse 3 writes -u -q -z --; bazil -u; clustered.
        for l in ["-u -q -z -- /m", "-u /m", "-uz /m", "--unmount --lazy /m"] {
            assert_eq!(
                parse_args(&args(l)),
                Ok(Request::Unmount {
                    mountpoint: "/m".into()
                }),
                "{l}"
            );
        }
        assert_eq!(
            parse_args(&args("--auto-unmount -o ro -- /m")),
            Ok(Request::Mount {
                options: "ro".into(),
                mountpoint: "/m".into()
            })
        );
    }

    #[test]
    fn bad_command_lines_say_what() {
        assert!(parse_args(&args("-o ro"))
            .unwrap_err()
            .contains("missing mountpoint"));
        assert!(parse_args(&args("/a /b"))
            .unwrap_err()
            .contains("extra argument '/b'"));
        assert!(parse_args(&args("-x /a"))
            .unwrap_err()
            .contains("unknown option '-x'"));
        assert!(parse_args(&args("/a -o"))
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_args(&args("-u -o ro /a")).unwrap_err().contains("-u"));
    }
}
