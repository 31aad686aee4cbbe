//! The seccomp channel (`--channel seccomp`): daemons run with their command
//! line unchanged and mount MOUNTPOINT themselves; the proxy traps the call,
//! hands them its socket and makes the mount with what they asked for.
//!
//! - passthrough_ll (libfuse3) works, and its mount reads in /proc/mounts
//!   as a direct mount's; `auto` picks this channel here and says why.
//! - bindfs (libfuse2: cannot take /dev/fd/N) works: write, read, mkdir,
//!   rename, stat; same /proc/mounts line as direct; after SIGTERM to the
//!   proxy it exits 0; its own unmount (SIGTERM to the daemon) is answered
//!   with success, the proxy then removes the mount and exits 0.
//! - fuse-overlayfs sets `default_permissions,allow_other,noatime` in code:
//!   the proxy's mount has them, as the direct one does.
//! - rclone mount (bazil.org/fuse: runs fusermount with `_FUSE_COMMFD`)
//!   works, and its mount reads as a direct one; skipped, with a message,
//!   when rclone is not installed.
//! - A backend that mounts or unmounts anything else is refused with EPERM
//!   and the proxy logs it; a backend that exits before mounting is one
//!   clear line and exit status 1.
//!
//! Daemons other than passthrough_ll are skipped with a message when their
//! Debian package is missing (scripts/setup.sh installs them).

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{wait_until, Mode, Mount, MountBuilder, Signal};

const SECCOMP: [&str; 2] = ["--channel", "seccomp"];
const EXIT_BOUND: Duration = Duration::from_secs(15);

/// The fields of a /proc/mounts line that must match: source, type,
/// options (the mount point differs).
fn proc_mounts_line(m: &Mount) -> String {
    let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let mp = m.mountpoint().to_string_lossy().into_owned();
    let line = mounts
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(1) == Some(mp.as_str()))
        .unwrap_or_else(|| panic!("{mp} not in /proc/mounts"));
    let f: Vec<&str> = line.split(' ').collect();
    // The source may name the test's own directory: make it relative.
    let source = f[0].replace(&*m.dir().to_string_lossy(), "{dir}");
    format!("{source} {} {}", f[2], f[3])
}

/// Direct and proxied mounts of `backend` read the same in /proc/mounts.
fn assert_same_mount(direct: &Mount, proxied: &Mount) {
    let d = proc_mounts_line(direct);
    let p = proc_mounts_line(proxied);
    eprintln!("direct: {d}\nproxy:  {p}");
    assert_eq!(p, d, "/proc/mounts: proxy vs direct");
}

/// SIGTERM to the proxy: it unmounts and exits 0. Returns the backend's
/// exit status as the proxy logged it ("exited with status N").
fn stop(m: &mut Mount) -> String {
    m.send_signal(Signal::SIGTERM).unwrap();
    assert!(m.wait_unmounted(EXIT_BOUND), "still mounted after SIGTERM");
    let st = m.wait_exit(EXIT_BOUND).expect("the proxy did not exit");
    let log = m.proxy_log();
    assert_eq!(st.code(), Some(0), "proxy exit status {st}; log:\n{log}");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("backend (pid "))
        .unwrap_or_else(|| panic!("no backend line in the log:\n{log}"));
    line[line.find("backend (pid ").unwrap()..].to_string()
}

/// Write, read back, mkdir, rename, stat, through the mount and on `backing`.
fn workload(m: &Mount, backing: &Path) {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(m.path("file"), &data).expect("write");
    assert_eq!(fs::read(m.path("file")).expect("read"), data);
    fs::create_dir(m.path("dir")).expect("mkdir");
    fs::rename(m.path("file"), m.path("dir/moved")).expect("rename");
    let md = fs::metadata(m.path("dir/moved")).expect("stat");
    assert_eq!(md.len(), data.len() as u64);
    assert!(!m.path("file").exists());
    assert_eq!(fs::read(backing.join("dir/moved")).expect("backing"), data);
}

#[test]
fn passthrough_ll_mounts_itself_like_direct() {
    let opts = ["-o", "default_permissions,allow_other"];
    let direct = MountBuilder::passthrough(Mode::Direct, &opts).mount();
    let mut proxied = MountBuilder::passthrough(Mode::Proxy, &opts)
        .proxy_args(SECCOMP)
        .mount();
    if proxied.mode() == Mode::Proxy {
        let log = proxied.proxy_log();
        assert!(log.contains("channel seccomp"), "{log}");
        assert!(
            log.contains("by pid ") && log.contains("mount(\"passthrough_ll\""),
            "{log}"
        );
    }
    assert_same_mount(&direct, &proxied);
    let d = direct.mount_info().unwrap();
    let p = proxied.mount_info().unwrap();
    assert_eq!(p.super_options, d.super_options);
    workload(&proxied, proxied.backing());
    if proxied.mode() == Mode::Proxy {
        eprintln!("passthrough_ll: {}", stop(&mut proxied));
    }
}

#[test]
fn auto_takes_seccomp_here_and_says_why() {
    let m = MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args([
            "{mnt}",
            "--",
            common::passthrough_ll().to_str().unwrap(),
            "-f",
            "-o",
            "source={backing}",
            "{mnt}",
        ])
        .mount();
    let log = m.proxy_log();
    assert!(
        log.contains("channel seccomp (auto: the kernel has seccomp user notification"),
        "{log}"
    );
}

fn bindfs(mode: Mode) -> MountBuilder {
    MountBuilder::new(mode, ["bindfs", "-f", "{backing}", "{mnt}"]).proxy_args(SECCOMP)
}

#[test]
fn bindfs_libfuse2_works_and_matches_direct() {
    if !common::installed("bindfs") {
        return;
    }
    let direct = bindfs(Mode::Direct).mount();
    let mut proxied = bindfs(Mode::Proxy).mount();
    assert_same_mount(&direct, &proxied);
    workload(&proxied, proxied.backing());
    workload(&direct, direct.backing());
    if proxied.mode() == Mode::Proxy {
        let backend = stop(&mut proxied);
        eprintln!("bindfs: {backend}");
        assert!(backend.contains("exited with status 0"), "{backend}");
    }
}

#[test]
fn bindfs_own_unmount_is_answered_and_the_proxy_ends_cleanly() {
    if !common::installed("bindfs") {
        return;
    }
    let mut m = bindfs(Mode::Proxy).mount();
    if m.mode() != Mode::Proxy {
        return;
    }
    fs::write(m.path("f"), b"x").unwrap();
    let daemon = m
        .descendants()
        .into_iter()
        .find(|p| {
            fs::read_to_string(format!("/proc/{}/comm", p.pid)).is_ok_and(|c| c.trim() == "bindfs")
        })
        .expect("the bindfs process");
    // The daemon alone gets SIGTERM: it unmounts (umount2, trapped and
    // answered 0) and exits; the proxy then removes the mount itself.
    daemon.signal(Signal::SIGTERM);
    let st = m.wait_exit(EXIT_BOUND).expect("the proxy did not exit");
    let log = m.proxy_log();
    assert_eq!(st.code(), Some(0), "exit status {st}; log:\n{log}");
    let mnt = m.mountpoint().to_string_lossy().into_owned();
    let answered = log
        .find(&format!("umount2(\"{mnt}\", 0x2) by pid {}", daemon.pid))
        .unwrap_or_else(|| panic!("the daemon's umount2 is not logged:\n{log}"));
    let ended = log
        .find("unmounted")
        .and_then(|_| log.find("itself and exited with status 0"))
        .unwrap_or_else(|| panic!("no clean end:\n{log}"));
    assert!(answered < ended, "{log}");
    assert!(log.contains("answered success"), "{log}");
    assert!(!m.is_mounted(), "still mounted");
}

#[test]
fn fuse_overlayfs_keeps_the_options_it_sets_in_code() {
    if !common::installed("fuse-overlayfs") {
        return;
    }
    // fuse-overlayfs checks its directories at start: a shell makes them,
    // then execs the daemon (its mount(2) is what the proxy sees).
    let script = "mkdir -p \"$1/upper\" \"$1/work\" && exec fuse-overlayfs -f -o \
                  lowerdir=\"$1/backing\",upperdir=\"$1/upper\",workdir=\"$1/work\" \"$2\"";
    let b = |mode| {
        MountBuilder::new(mode, ["sh", "-c", script, "sh", "{dir}", "{mnt}"]).proxy_args(SECCOMP)
    };
    let direct = b(Mode::Direct).mount();
    let mut proxied = b(Mode::Proxy).mount();
    assert_same_mount(&direct, &proxied);
    let p = proc_mounts_line(&proxied);
    for want in ["default_permissions", "allow_other", "noatime"] {
        assert!(p.contains(want), "{want} missing: {p}");
    }
    fs::write(proxied.path("new"), b"upper").unwrap();
    assert_eq!(fs::read(proxied.dir().join("upper/new")).unwrap(), b"upper");
    if proxied.mode() == Mode::Proxy {
        eprintln!("fuse-overlayfs: {}", stop(&mut proxied));
    }
}

#[test]
fn rclone_mount_runs_fusermount_and_works() {
    if !common::installed("rclone") {
        return;
    }
    let b = |mode| {
        MountBuilder::new(mode, ["rclone", "mount", "{backing}", "{mnt}"])
            .env("RCLONE_CONFIG", "/dev/null")
            .proxy_args(SECCOMP)
            .mount_timeout(Duration::from_secs(20))
    };
    let direct = b(Mode::Direct).mount();
    let mut proxied = b(Mode::Proxy).mount();
    assert_same_mount(&direct, &proxied);
    fs::write(proxied.path("r"), b"through rclone").unwrap();
    assert_eq!(fs::read(proxied.path("r")).unwrap(), b"through rclone");
    fs::create_dir(proxied.path("d")).unwrap();
    fs::rename(proxied.path("r"), proxied.path("d/r2")).unwrap();
    assert_eq!(fs::metadata(proxied.path("d/r2")).unwrap().len(), 14);
    // Without a VFS cache rclone writes through: the backing has it.
    assert!(
        wait_until(Duration::from_secs(10), || fs::read(
            proxied.backing().join("d/r2")
        )
        .is_ok_and(|d| d == b"through rclone")),
        "rclone did not write the file to its backing directory"
    );
    if proxied.mode() == Mode::Proxy {
        let log = proxied.proxy_log();
        assert!(
            log.contains("(fusermount"),
            "fusermount made the call:\n{log}"
        );
        eprintln!("rclone: {}", stop(&mut proxied));
    }
}

#[test]
fn other_mounts_and_unmounts_are_refused_and_logged() {
    let pll = common::passthrough_ll().to_str().unwrap().to_string();
    let script = format!(
        "mkdir -p \"$1/x\"; mount -t tmpfs none \"$1/x\"; echo $? > \"$1/mount.rc\"; \
         umount \"$1\"; echo $? > \"$1/umount.rc\"; \
         exec {pll} -f -o source=\"$1/backing\" \"$2\""
    );
    let m = MountBuilder::new(Mode::Proxy, ["sh", "-c", &script, "sh", "{dir}", "{mnt}"])
        .proxy_args(SECCOMP)
        .mount();
    if m.mode() != Mode::Proxy {
        return;
    }
    let rc = |f: &str| {
        fs::read_to_string(m.dir().join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_ne!(rc("mount.rc"), "0", "mount(8) of a tmpfs succeeded");
    assert_ne!(rc("umount.rc"), "0", "umount(8) of another path succeeded");
    assert!(
        common::mount_info(&m.dir().join("x")).is_none(),
        "x got mounted"
    );
    let log = m.proxy_log();
    let dir = m.dir().to_string_lossy().into_owned();
    let refused_mount = log
        .lines()
        .find(|l| l.contains("refused mount(") && l.contains(&format!("\"{dir}/x\", \"tmpfs\"")))
        .unwrap_or_else(|| panic!("no refusal of the tmpfs mount:\n{log}"));
    assert!(refused_mount.contains("EPERM"), "{refused_mount}");
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("refused umount2(\"{dir}\"")) && l.contains("EPERM")),
        "no refusal of the unmount:\n{log}"
    );
    // And the daemon that followed works.
    fs::write(m.path("ok"), b"fine").unwrap();
    assert_eq!(fs::read(m.backing_path("ok")).unwrap(), b"fine");
}

#[test]
fn a_backend_that_exits_before_mounting_is_one_line() {
    let mut m = MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args(["--channel", "seccomp", "{mnt}", "--", "/bin/false", "{mnt}"])
        .start();
    let st = m.wait_exit(EXIT_BOUND).expect("the proxy did not exit");
    let log = m.proxy_log();
    assert_eq!(st.code(), Some(1), "{log}");
    let last = log.lines().last().unwrap_or_default();
    let mnt = m.mountpoint().to_string_lossy().into_owned();
    assert!(
        last.contains("the backend (pid ")
            && last.contains(&format!("exited with status 1 before mounting {mnt}")),
        "{log}"
    );
    assert!(!m.is_mounted());
}
