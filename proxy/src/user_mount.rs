//! Mounting without root: the real fusermount3, run as libfuse runs it
//! when its own mount(2) is not allowed.
//!
//! Not to be confused with [`crate::fusermount`], the proxy's *stand-in*
//! for the fusermount programs a daemon runs under the fusermount channel:
//! here the proxy is fusermount3's client, for its own mount.
//!
//! The protocol (libfuse `lib/mount.c`, `util/fusermount.c`): the caller
//! makes a unix stream socketpair, starts `fusermount3 -o OPTIONS --
//! MOUNTPOINT` with one end's number in `_FUSE_COMMFD`, and fusermount3
//! (setuid root) checks the options against its rules for users (nosuid
//! and nodev forced, `allow_other` only with `user_allow_other` in
//! /etc/fuse.conf, a mountpoint the user may write), opens /dev/fuse,
//! mounts with `user_id`/`group_id` of the caller, and sends the device fd
//! over the socket as SCM_RIGHTS with one byte of data. Without
//! `auto_unmount` it then exits; the proxy never asks for `auto_unmount`
//! (which keeps fusermount3 waiting for the socket's end), since it
//! unmounts by itself at the end: `fusermount3 -u MOUNTPOINT`, or `-u -z`
//! to detach.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use slog::Logger;

use crate::error::Error;
use crate::mount::Mount;
use crate::mount_options::MountOptions;

/// How long fusermount3 may take to mount (it stats the mountpoint, which
/// can hang on a dead network filesystem); then it is killed.
const MOUNT_WAIT: Duration = Duration::from_secs(30);

/// How long fusermount3 may take to exit once it has passed the device,
/// or to unmount.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// The fusermount program to use: libfuse 3's where Debian's fuse3 puts it,
/// else the first `fusermount3` then `fusermount` (libfuse 2's, same
/// protocol) in PATH, as libfuse looks for it.
pub fn program() -> Option<PathBuf> {
    let fixed = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .map(PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let searched = ["fusermount3", "fusermount"]
        .into_iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)));
    fixed.chain(searched).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a user's mount cannot have: fusermount3 mounts nosuid,nodev for
/// anyone but root. Sets both in `opts` and returns what was asked
/// otherwise (for one warning), so that the start-up line tells the truth.
fn force_user_flags(opts: &mut MountOptions) -> Vec<&'static str> {
    use nix::mount::MsFlags;
    let mut dropped = Vec::new();
    for (flag, name) in [(MsFlags::MS_NOSUID, "suid"), (MsFlags::MS_NODEV, "dev")] {
        if !opts.flags.contains(flag) {
            dropped.push(name);
            opts.flags.insert(flag);
        }
    }
    dropped
}

/// fusermount3's `-o` for `opts`: every flag spelled out (`rw` or `ro`,
/// then each flag that is set), as libfuse writes it, then the kernel's
/// options and the source and type (commas and backslashes escaped, which
/// fusermount3 undoes).
pub fn options(opts: &MountOptions) -> String {
    // The Display form is this list up to `,fsname=...,type=...`.
    let shown = opts.to_string();
    let mut list = match shown.find(",fsname=") {
        Some(i) => shown[..i].to_string(),
        None => shown,
    };
    if let Some(n) = opts.blksize {
        list.push_str(&format!(",blksize={n}"));
    }
    let escape = |v: &str| v.replace('\\', "\\\\").replace(',', "\\,");
    if let Some(f) = &opts.fsname {
        list.push_str(&format!(",fsname={}", escape(f)));
    }
    if let Some(s) = &opts.subtype {
        list.push_str(&format!(",subtype={}", escape(s)));
    }
    list
}

/// Mounts `path` (canonical) with `opts` through `program` and returns the
/// device (non-blocking, close-on-exec) and the mount, which `program`
/// unmounts. `opts` become what fusermount3 makes (nosuid,nodev: a `suid`
/// or `dev` asked for is not applied, with one warning). Nothing is left
/// mounted on error.
///
/// # Errors
/// fusermount3's refusal in one line (with how to get `allow_other` when
/// that is what it refused), or a socket error.
pub fn mount(
    log: &Logger,
    program: &Path,
    path: &Path,
    opts: &mut MountOptions,
) -> Result<(File, Mount), Error> {
    let dropped = force_user_flags(opts);
    if !dropped.is_empty() {
        slog::warn!(
            log,
            "through fusermount3 the mount is nosuid,nodev (its rule for users): {} not applied",
            dropped.join(", ")
        );
    }
    let list = options(opts);
    let shown = format!("{} -o {list} -- {}", program.display(), path.display());
    let setup = |what: &str, e: nix::errno::Errno| Error::Setup(format!("{what}: {}", e.desc()));
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| setup("socketpair", e))?;
    // fusermount3's end must outlive exec; no other thread starts a program
    // meanwhile, and the proxy closes its copy right after the spawn.
    fcntl(theirs.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| setup("fcntl", e))?;
    let mut child = Command::new(program)
        .arg("-o")
        .arg(&list)
        .arg("--")
        .arg(path)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Mount {
            path: path.to_path_buf(),
            reason: format!("cannot run {}: {e}", program.display()),
        })?;
    drop(theirs);
    slog::debug!(log, "started {shown} (pid {})", child.id());

    let device = match receive_device(&ours, Instant::now() + MOUNT_WAIT) {
        Ok(Some(fd)) => fd,
        Err(Some(e)) => {
            let _ = finish(&mut child);
            Mount::by_fusermount(path, program).detach();
            return Err(Error::Mount {
                path: path.to_path_buf(),
                reason: format!("{shown}: receiving the device: {}", e.desc()),
            });
        }
        got @ (Ok(None) | Err(None)) => {
            // Closed without a device (it refused: its message says why),
            // or too slow. Only the wait tells which: a refusing
            // fusermount3 closes its end as it exits, before it can be
            // reaped, so its state at this moment does not.
            let late = got.is_err();
            let (status, said) = finish(&mut child);
            let mut m = Mount::by_fusermount(path, program);
            // It mounted nothing, or what it mounted has no device left.
            m.detach();
            return Err(refusal(path, program, opts, &shown, status, &said, late));
        }
    };
    drop(ours);
    // From here on the mount exists; `mount`'s Drop removes it on error.
    let mount = Mount::by_fusermount(path, program);
    let (status, said) = finish(&mut child);
    for line in said.lines().filter(|l| !l.trim().is_empty()) {
        slog::warn!(log, "{}: {line}", program.display());
    }
    if !status.is_some_and(|s| s.success()) {
        return Err(Error::Mount {
            path: path.to_path_buf(),
            reason: format!(
                "{shown} passed the device but then failed ({})",
                describe(status)
            ),
        });
    }
    let fl = fcntl(device.as_raw_fd(), FcntlArg::F_GETFL).map_err(|e| setup("fcntl", e))?;
    fcntl(
        device.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| setup("fcntl", e))?;
    Ok((File::from(device), mount))
}

/// Waits until `deadline` for fusermount3's one byte with the device fd.
/// `Ok(None)`: the socket closed without one (fusermount3 failed);
/// `Err(None)`: the deadline passed; `Err(Some(e))`: the socket failed.
fn receive_device(
    sock: &OwnedFd,
    deadline: Instant,
) -> Result<Option<OwnedFd>, Option<nix::errno::Errno>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if ms == 0 {
            return Err(None);
        }
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(Some(e)),
        }
    }
    crate::fd_passing::recv_with_fd(sock.as_fd(), &mut [0u8; 1], MsgFlags::empty())
        .map(|(_, fd)| fd)
        .map_err(Some)
}

/// Waits (bounded) for `child` to exit, killing it when it does not, and
/// returns its status and what it wrote to stderr.
fn finish(child: &mut Child) -> (Option<std::process::ExitStatus>, String) {
    let deadline = Instant::now() + EXIT_WAIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                // Our own child, by its pid (Child::kill).
                let _ = child.kill();
                break child.wait().ok();
            }
        }
    };
    let mut said = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut said);
    }
    (status, said)
}

fn describe(status: Option<std::process::ExitStatus>) -> String {
    match status {
        Some(s) => s.to_string(),
        None => "no exit status".into(),
    }
}

/// The one line for a mount fusermount3 did not make.
fn refusal(
    path: &Path,
    program: &Path,
    opts: &MountOptions,
    shown: &str,
    status: Option<std::process::ExitStatus>,
    said: &str,
    late: bool,
) -> Error {
    let said = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let name = program.file_name().map_or_else(
        || program.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let reason = if late {
        format!(
            "{shown} did not mount within {}s and was killed",
            MOUNT_WAIT.as_secs()
        )
    } else if opts.allow_other && said.contains("user_allow_other") {
        format!(
            "{name} refused allow_other: a user other than root may mount with allow_other \
             only when /etc/fuse.conf has the line user_allow_other (root adds it); \
             otherwise leave allow_other out ({name} said: {said})"
        )
    } else if said.is_empty() {
        format!("{shown} failed ({})", describe(status))
    } else {
        format!("{shown} failed ({}): {said}", describe(status))
    };
    Error::Mount {
        path: path.to_path_buf(),
        reason,
    }
}

/// `fusermount3 -u MOUNTPOINT`; a busy mount is detached instead (`-u -z`),
/// as [`Mount::unmount`] does with umount2. A mount already gone (the
/// user's own `fusermount3 -u`) is not an error.
pub fn unmount(program: &Path, path: &Path) -> Result<(), Error> {
    let plain = run_unmount(program, path, false);
    if plain.is_ok() || !crate::mount::is_mount_point(path) {
        return Ok(());
    }
    run_unmount(program, path, true).map_err(|said| Error::Mount {
        path: path.to_path_buf(),
        reason: format!("{} -u -z failed: {said}", program.display()),
    })
}

/// `fusermount3 -u -z MOUNTPOINT` when it is still mounted: detaches it
/// whatever uses it. Errors are not reported (a last resort, as `umount -l`
/// is for a root mount).
pub fn detach(program: &Path, path: &Path) {
    if crate::mount::is_mount_point(path) {
        let _ = run_unmount(program, path, true);
    }
}

/// Runs `program -u [-z] -- path`, bounded; its stderr when it fails.
fn run_unmount(program: &Path, path: &Path, lazy: bool) -> Result<(), String> {
    let mut cmd = Command::new(program);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let mut child = cmd
        .arg("--")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let (status, said) = finish(&mut child);
    if status.is_some_and(|s| s.success()) {
        Ok(())
    } else {
        Err(format!("{} {}", describe(status), said.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_spell_out_flags_and_escape_names() {
        let mut m = MountOptions::default();
        m.apply(
            "allow_other,default_permissions,noatime,max_read=4096",
            true,
        )
        .unwrap();
        m.apply(r"fsname=a\,b", true).unwrap();
        m.default_subtype("pll");
        assert_eq!(
            options(&m),
            r"rw,nosuid,nodev,noatime,default_permissions,allow_other,max_read=4096,fsname=a\,b"
        );
        let mut m = MountOptions::default();
        m.apply("suid,ro", true).unwrap();
        m.default_subtype("pll");
        assert_eq!(force_user_flags(&mut m), vec!["suid"]);
        assert_eq!(options(&m), "ro,nosuid,nodev,subtype=pll");
    }
}
