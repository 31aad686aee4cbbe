//! The mount itself: /dev/fuse, mount(2) with `fd=`, and unmounting.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags};

use crate::error::Error;
use crate::mount_options::MountOptions;

/// A live fuse mount made by the proxy. Unmounting is explicit
/// ([`Mount::unmount`]); `Drop` detaches it as a last resort so that no path
/// out of the proxy leaves a dead mount behind.
pub struct Mount {
    path: PathBuf,
    mounted: bool,
    /// The fusermount program that made the mount, when the proxy could
    /// not mount by itself: it also unmounts (`-u`), since umount2(2) needs
    /// the CAP_SYS_ADMIN the proxy lacks.
    fusermount: Option<PathBuf>,
}

/// Checks that `path` can be mounted on: it exists, is a directory or a
/// file, and is not already a mount point. Returns its canonical form.
pub fn check_mountpoint(path: &Path) -> Result<PathBuf, Error> {
    let canon = path.canonicalize().map_err(|e| Error::Mountpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let meta = std::fs::metadata(&canon).map_err(|e| Error::Mountpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !(meta.is_dir() || meta.is_file()) {
        return Err(Error::Mountpoint {
            path: path.to_path_buf(),
            reason: "not a directory or regular file".into(),
        });
    }
    if is_mount_point(&canon) {
        return Err(Error::Mountpoint {
            path: path.to_path_buf(),
            reason: "already a mount point (unmount it first)".into(),
        });
    }
    Ok(canon)
}

/// Whether `path` (canonical) is listed as a mount point in
/// /proc/self/mountinfo.
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_encoded_bytes();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| unescape_octal(p).as_slice() == want)
}

/// A FUSE connection's control directory in fusectl
/// (/sys/fs/fuse/connections/N), told apart from a later one of the same
/// number.
///
/// N is the superblock's device number (`major << 20 | minor`,
/// fs/fuse/control.c), which the kernel gives to the next mount once this
/// one's superblock is gone: an abort by number alone, after the mount went
/// away, ends whichever mount took the number since (seen: a parallel test's
/// fresh mount ended 40 ms after it was made). The directory's inode number
/// is the witness: fusectl makes a new inode for every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub id: u64,
    ino: u64,
}

const FUSECTL: &str = "/sys/fs/fuse/connections";

impl Connection {
    /// The connection of the mount at `path` (canonical), read from
    /// /proc/self/mountinfo, never from the mount itself; `None` when it is
    /// not mounted or fusectl is not.
    pub fn of_mount(path: &Path) -> Option<Connection> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let want = path.as_os_str().as_encoded_bytes();
        // The topmost mount at the path: mountinfo lists mounts in order.
        let dev = info
            .lines()
            .rev()
            .find(|l| {
                let fields: Vec<&str> = l.split(' ').collect();
                let fstype = l.split(" - ").nth(1).and_then(|r| r.split(' ').next());
                fields
                    .get(4)
                    .is_some_and(|p| unescape_octal(p).as_slice() == want)
                    && fstype.is_some_and(|t| t == "fuse" || t.starts_with("fuse."))
            })?
            .split(' ')
            .nth(2)?;
        let (major, minor) = dev.split_once(':')?;
        let id = (major.parse::<u64>().ok()? << 20) | minor.parse::<u64>().ok()?;
        let ino = std::fs::metadata(format!("{FUSECTL}/{id}")).ok()?.ino();
        Some(Connection { id, ino })
    }

    /// Aborts the connection, as `echo 1 > .../abort` does: every request
    /// waiting in it ends with ENOTCONN. Refused (ENOENT) when the number
    /// now names another connection. The check cannot race: the abort file
    /// is opened through the directory already checked, and a removed
    /// directory has no entries.
    pub fn abort(&self) -> std::io::Result<()> {
        let dir = File::open(format!("{FUSECTL}/{}", self.id))?;
        if dir.metadata()?.ino() != self.ino {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{FUSECTL}/{} is another connection now (this one has ended)",
                    self.id
                ),
            ));
        }
        // Through the checked directory's descriptor (a magic link to the
        // same dentry), not its name again.
        let mut abort = OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}/abort", dir.as_raw_fd()))?;
        std::io::Write::write_all(&mut abort, b"1")
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Opens /dev/fuse, non-blocking and close-on-exec (the backend must never
/// hold the device: everything it sees comes through the proxy).
pub fn open_device() -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| Error::Device(format!("cannot open /dev/fuse: {e}")))
}

impl Mount {
    /// Mounts `device` on `path` with `opts`, as libfuse's `fuse_mount_sys`
    /// does. The error comes with mount(2)'s errno: EPERM says the proxy may
    /// not mount by itself (then fusermount3 can).
    pub fn attempt(
        path: &Path,
        device: &File,
        opts: &MountOptions,
    ) -> Result<Mount, (nix::errno::Errno, Error)> {
        let meta = std::fs::metadata(path).map_err(|e| {
            let errno = nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0));
            let err = Error::Mountpoint {
                path: path.to_path_buf(),
                reason: e.to_string(),
            };
            (errno, err)
        })?;
        let rootmode = meta.mode() & libc::S_IFMT;
        let data = opts.data(
            device.as_raw_fd(),
            rootmode,
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        nix::mount::mount(
            Some(opts.source()),
            path,
            Some(opts.fstype().as_str()),
            opts.flags,
            Some(data.as_str()),
        )
        .map_err(|e| {
            let err = Error::Mount {
                path: path.to_path_buf(),
                reason: format!("mount(2) with '{data}' failed: {}", e.desc()),
            };
            (e, err)
        })?;
        Ok(Mount {
            path: path.to_path_buf(),
            mounted: true,
            fusermount: None,
        })
    }

    /// A mount that `program` (fusermount3) made on `path`, which it also
    /// unmounts.
    pub fn by_fusermount(path: &Path, program: &Path) -> Mount {
        Mount {
            path: path.to_path_buf(),
            mounted: true,
            fusermount: Some(program.to_path_buf()),
        }
    }

    /// Mounts on `path` with the source, type and flags of `opts` and the
    /// mount(2) data `data` as is (its `fd=` names the proxy's device): the
    /// seccomp channel's mount, made with what the daemon asked for.
    ///
    /// # Errors
    /// The errno of mount(2), to be answered to the daemon.
    pub fn with_data(
        path: &Path,
        opts: &MountOptions,
        data: &str,
    ) -> Result<Mount, nix::errno::Errno> {
        nix::mount::mount(
            Some(opts.source()),
            path,
            Some(opts.fstype().as_str()),
            opts.flags,
            Some(data),
        )?;
        Ok(Mount {
            path: path.to_path_buf(),
            mounted: true,
            fusermount: None,
        })
    }

    /// A mount that was not made (`--hand-off-fd`): nothing to unmount.
    pub fn none(path: &Path) -> Mount {
        Mount {
            path: path.to_path_buf(),
            mounted: false,
            fusermount: None,
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts: a plain unmount first; a busy mount is detached instead
    /// (`umount -l`), which the kernel completes when the last user leaves.
    /// An already-gone mount (the user's `umount`) is not an error.
    pub fn unmount(&mut self) -> Result<(), Error> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        if let Some(program) = &self.fusermount {
            return crate::user_mount::unmount(program, &self.path);
        }
        match umount2(&self.path, MntFlags::empty()) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EBUSY) => {
                umount2(&self.path, MntFlags::MNT_DETACH).map_err(|e| Error::Mount {
                    path: self.path.clone(),
                    reason: format!("umount -l failed: {}", e.desc()),
                })
            }
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::Mount {
                path: self.path.clone(),
                reason: format!("umount failed: {}", e.desc()),
            }),
        }
    }

    /// Detaches the mount at once, whatever uses it (`umount -l`).
    pub fn detach(&mut self) {
        if self.mounted {
            self.mounted = false;
            match &self.fusermount {
                Some(program) => crate::user_mount::detach(program, &self.path),
                None => {
                    let _ = umount2(&self.path, MntFlags::MNT_DETACH);
                }
            }
        }
    }

    /// Unmounts from a thread of its own, as [`Mount::unmount`] does; this
    /// handle stays as it is (its `Drop` then finds the mount gone).
    ///
    /// The event loop must keep forwarding while the kernel tears the mount
    /// down: unmounting flushes dirty pages, which arrive as WRITE requests,
    /// and a loop blocked in umount(2) would never answer them.
    pub fn unmount_in_background(&self) -> std::thread::JoinHandle<Result<(), Error>> {
        let mut m = Mount {
            path: self.path.clone(),
            mounted: true,
            fusermount: self.fusermount.clone(),
        };
        std::thread::spawn(move || m.unmount())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_octal(r"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(unescape_octal(r"/x\134"), b"/x\\");
        assert_eq!(unescape_octal(r"/x\1"), b"/x\\1");
    }

    #[test]
    fn root_is_a_mount_point() {
        assert!(is_mount_point(Path::new("/")));
    }

    /// A bare fuse mount on a new directory (INIT left unanswered),
    /// detached when dropped, even by a failing assertion.
    struct Bare(tempfile::TempDir, File);

    impl Drop for Bare {
        fn drop(&mut self) {
            let _ = umount2(self.0.path(), MntFlags::MNT_DETACH);
        }
    }

    fn bare_mount() -> Option<Bare> {
        let dev = open_device().ok()?;
        let dir = tempfile::tempdir().unwrap();
        let data = format!("fd={},rootmode=40000,user_id=0,group_id=0", dev.as_raw_fd());
        nix::mount::mount(
            Some("fuseproxy-conn-test"),
            dir.path(),
            Some("fuse.fuseproxy-conn-test"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .ok()?;
        Some(Bare(dir, dev))
    }

    /// Whether the connection behind `dev` still gives requests (INIT is
    /// queued), rather than ENODEV.
    fn connected(dev: &File) -> bool {
        let mut buf = vec![0u8; 1 << 20];
        match nix::unistd::read(dev.as_raw_fd(), &mut buf) {
            Ok(n) => n > 0,
            Err(e) => e != nix::errno::Errno::ENODEV,
        }
    }

    /// The old connection's number given to a new mount: aborting the old
    /// one is refused and leaves the new mount alone.
    #[test]
    fn an_ended_connection_is_not_aborted_under_its_number() {
        let Some(first) = bare_mount() else {
            println!("skipping: cannot mount fuse here (root and /dev/fuse needed)");
            return;
        };
        let canon = first.0.path().canonicalize().unwrap();
        let Some(old) = Connection::of_mount(&canon) else {
            println!("skipping: fusectl is not mounted on {FUSECTL}");
            return;
        };
        drop(first);
        // The kernel hands out the lowest free number; a few tries cover a
        // parallel test taking it first.
        let mut kept = Vec::new();
        let mut reused = false;
        for _ in 0..4 {
            let b = bare_mount().expect("mount again");
            let c = Connection::of_mount(&b.0.path().canonicalize().unwrap()).unwrap();
            assert_ne!(c, old, "a new connection looks like the ended one");
            reused |= c.id == old.id;
            kept.push(b);
            if reused {
                break;
            }
        }
        let e = old.abort().expect_err("the ended connection was aborted");
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
        for Bare(d, dev) in &kept {
            assert!(
                connected(dev),
                "a new mount was aborted under the old number"
            );
            let c = Connection::of_mount(&d.path().canonicalize().unwrap()).unwrap();
            c.abort().expect("abort the new connection");
            assert!(!connected(dev), "abort did not end the new connection");
        }
        if !reused {
            println!("note: the number was not reused in 4 mounts");
        }
    }
}
