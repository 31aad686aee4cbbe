//! `--backend-user USER[:GROUP]`: the daemon runs as that user, without
//! capabilities and without access to the real /dev/fuse; the proxy alone
//! mounts.
//!
//! - passthrough_ll (libfuse3) and bindfs (libfuse2) as `nobody` through the
//!   seccomp channel mount and work (write, read back; the files in the
//!   backing directory are nobody's). The daemon's process (found among the
//!   proxy's descendants) has uid and gid 65534 in all four slots, no
//!   supplementary groups, every capability set empty and no_new_privs; in
//!   its mount namespace /dev/fuse is /dev/null (1:3: checked from outside
//!   with `nsenter -m`, and from inside by a wrapper that runs as the
//!   daemon's user first: opening /dev/fuse gives 1:3, and mknod of a
//!   10:229 node fails with EPERM), while the host's is 10:229.
//! - rclone mount (bazil.org/fuse, runs the setuid fusermount, which runs
//!   as nobody under no_new_privs) works the same way; skipped, with a
//!   message, when rclone is not installed.
//! - passthrough_ll through `--channel fd` (no namespace: it is given
//!   /dev/fd/N) works as nobody; its open of the real /dev/fuse fails.
//! - With either channel, a mount(2) of a tmpfs and an umount2("/") by the
//!   daemon's user are refused with EPERM, and the proxy logs both.
//! - An unknown user or group is one line and exit status 2; root is
//!   refused the same way.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run_bounded, run_proxy, wait_until, Mode, Mount, MountBuilder, ProcId, Signal};

const NOBODY: u32 = common::NOBODY;
/// nogroup, nobody's primary group on Debian.
const NOGROUP: u32 = 65534;
const EXIT_BOUND: Duration = Duration::from_secs(15);

/// These tests mean nothing without the proxy (`FUSEPROXY_TEST_MODE=direct`).
fn proxied() -> bool {
    let yes = Mode::Proxy.effective() == Mode::Proxy;
    if !yes {
        eprintln!("SKIPPED: FUSEPROXY_TEST_MODE=direct");
    }
    yes
}

/// The proxy's arguments: the channel, the user, and allow_other (the
/// mount is nobody's, user_id=65534: without it root, the test, could not
/// use it, as with a direct mount by nobody).
fn proxy_args(channel: &str) -> Vec<String> {
    [
        "--channel",
        channel,
        "--backend-user",
        "nobody",
        "-o",
        "allow_other",
    ]
    .map(String::from)
    .to_vec()
}

/// The daemon: the proxy's descendant whose comm is `comm`.
fn daemon(m: &Mount, comm: &str) -> ProcId {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = m.descendants().into_iter().find(|p| {
            fs::read_to_string(format!("/proc/{}/comm", p.pid)).is_ok_and(|c| c.trim() == comm)
        });
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no {comm} among the proxy's descendants"))
}

/// Asserts that `pid` runs as nobody:nogroup in every id slot, without
/// supplementary groups, capabilities, or a way to gain them. Returns the
/// lines checked, for the test's output.
fn assert_unprivileged(pid: i32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    let (nobody, nogroup) = (NOBODY.to_string(), NOGROUP.to_string());
    assert_eq!(field("Uid"), [nobody.as_str(); 4], "{status}");
    assert_eq!(field("Gid"), [nogroup.as_str(); 4], "{status}");
    assert!(field("Groups").is_empty(), "supplementary groups: {status}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(cap), ["0000000000000000"], "{cap}: {status}");
    }
    assert_eq!(field("NoNewPrivs"), ["1"], "{status}");
    status
        .lines()
        .filter(|l| {
            ["Uid:", "Gid:", "Groups:", "Cap", "NoNewPrivs:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `stat -c %t:%T /dev/fuse` in `pid`'s mount namespace (or ours).
fn dev_fuse_numbers(pid: Option<i32>) -> String {
    let mut cmd = match pid {
        Some(p) => {
            let mut c = Command::new("nsenter");
            c.args(["-t", &p.to_string(), "-m", "stat"]);
            c
        }
        None => Command::new("stat"),
    };
    cmd.args(["-c", "%t:%T", "/dev/fuse"]);
    let (st, out, err) = run_bounded(&mut cmd, Duration::from_secs(10)).expect("stat timed out");
    assert!(st.success(), "{cmd:?}: {err}");
    out.trim().to_string()
}

/// Write and read back through the mount; the backing file is nobody's.
fn write_read(m: &Mount) {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(m.path("file"), &data).expect("write through the mount");
    assert_eq!(fs::read(m.path("file")).expect("read back"), data);
    fs::create_dir(m.path("dir")).expect("mkdir");
    fs::rename(m.path("file"), m.path("dir/moved")).expect("rename");
    assert_eq!(
        fs::read(m.backing_path("dir/moved")).expect("backing"),
        data
    );
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(m.backing_path("dir/moved")).unwrap();
    assert_eq!(
        (md.uid(), md.gid()),
        (NOBODY, NOGROUP),
        "the daemon wrote as nobody"
    );
}

/// SIGTERM to the proxy: it unmounts and exits 0.
fn stop(m: &mut Mount) {
    m.send_signal(Signal::SIGTERM).unwrap();
    assert!(m.wait_unmounted(EXIT_BOUND), "still mounted after SIGTERM");
    let st = m.wait_exit(EXIT_BOUND).expect("the proxy did not exit");
    assert_eq!(
        st.code(),
        Some(0),
        "exit status {st}; log:\n{}",
        m.proxy_log()
    );
}

/// A shell that first probes /dev/fuse as the daemon's user (on stdout),
/// then execs passthrough_ll on "$2".
fn probing_passthrough(channel: &str) -> MountBuilder {
    let pll = common::passthrough_ll().to_str().unwrap().to_string();
    let script = format!(
        "echo \"id $(id -u):$(id -g)\"; \
         echo \"path $(stat -c %t:%T /dev/fuse)\"; \
         python3 -c \"$3\"; \
         mknod \"$1/backing/node\" c 10 229 2>&1 | sed 's/^/mknod: /'; \
         exec {pll} -f -o source=\"$1/backing\" \"$2\""
    );
    // Opens /dev/fuse read-write as libfuse does, and says what it got.
    let probe = "import os\n\
                 try:\n    fd = os.open('/dev/fuse', os.O_RDWR)\n    \
                 r = os.fstat(fd).st_rdev\n    \
                 print('open %d:%d' % (os.major(r), os.minor(r)))\n\
                 except OSError as e:\n    print('open failed: ' + e.strerror)\n";
    MountBuilder::new(
        Mode::Proxy,
        ["sh", "-c", &script, "sh", "{dir}", "{mnt}", probe],
    )
    .proxy_args(proxy_args(channel))
    .dirs_owned_by(NOBODY, NOGROUP)
}

#[test]
fn passthrough_ll_seccomp_as_nobody_without_caps_or_dev_fuse() {
    if !proxied() {
        return;
    }
    let mut m = probing_passthrough("seccomp").mount();
    let log = m.proxy_log();
    assert!(
        log.contains("the backend runs as nobody (uid 65534), group nogroup (gid 65534)"),
        "{log}"
    );
    // The daemon's mount(2) was trapped and made by the proxy, with its
    // own user_id; the fd it named was the stand-in.
    assert!(
        log.contains("user_id=65534,group_id=65534") && log.contains("made on the proxy's"),
        "{log}"
    );
    let info = m.mount_info().expect("mounted");
    assert!(
        info.super_options.contains("user_id=65534"),
        "{}",
        info.super_options
    );
    write_read(&m);

    let d = daemon(&m, "passthrough_ll");
    let status = assert_unprivileged(d.pid);
    let inside = dev_fuse_numbers(Some(d.pid));
    let host = dev_fuse_numbers(None);
    eprintln!("daemon pid {}: {status}", d.pid);
    eprintln!("/dev/fuse in the daemon's namespace: {inside}; on the host: {host}");
    assert_eq!(
        inside, "1:3",
        "/dev/null stands at /dev/fuse for the daemon"
    );
    assert_eq!(host, "a:e5", "the host's /dev/fuse is 10:229");

    // What the daemon's user saw before exec, in the daemon's namespace.
    let out = m.stdout_log();
    eprintln!("probe as the daemon's user:\n{out}");
    assert!(out.contains("id 65534:65534"), "{out}");
    assert!(out.contains("path 1:3"), "{out}");
    assert!(out.contains("open 1:3"), "opening /dev/fuse gave: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("mknod: ") && l.contains("Operation not permitted")),
        "mknod of 10:229: {out}"
    );
    assert!(!m.backing_path("node").exists(), "mknod made a node");
    stop(&mut m);
}

#[test]
fn passthrough_ll_fd_channel_as_nobody() {
    if !proxied() {
        return;
    }
    let mut m = probing_passthrough("fd").mount();
    let log = m.proxy_log();
    assert!(log.contains("channel fd"), "{log}");
    write_read(&m);
    let d = daemon(&m, "passthrough_ll");
    let status = assert_unprivileged(d.pid);
    eprintln!("daemon pid {}: {status}", d.pid);
    // No namespace with the fd channel: the path is the real device, which
    // the daemon's user cannot open.
    let out = m.stdout_log();
    eprintln!("probe as the daemon's user:\n{out}");
    assert!(out.contains("id 65534:65534"), "{out}");
    assert!(out.contains("path a:e5"), "{out}");
    assert!(out.contains("open failed: Permission denied"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("mknod: ") && l.contains("Operation not permitted")),
        "{out}"
    );
    stop(&mut m);
}

#[test]
fn passthrough_ll_fusermount_channel_as_nobody() {
    if !proxied() {
        return;
    }
    let mut m = probing_passthrough("fusermount").mount();
    let log = m.proxy_log();
    assert!(log.contains("channel fusermount"), "{log}");
    // libfuse's own mount(2) failed (no capability), it ran fusermount3,
    // which here is the proxy's stand-in; the mount has the user's ids.
    assert!(
        log.contains("(fusermount3): made on the proxy's /dev/fuse"),
        "{log}"
    );
    let info = m.mount_info().expect("mounted");
    assert!(
        info.super_options.contains("user_id=65534,group_id=65534"),
        "{}",
        info.super_options
    );
    write_read(&m);
    let d = daemon(&m, "passthrough_ll");
    let status = assert_unprivileged(d.pid);
    eprintln!("daemon pid {}: {status}", d.pid);
    assert_eq!(dev_fuse_numbers(Some(d.pid)), "1:3");
    let out = m.stdout_log();
    eprintln!("probe as the daemon's user:\n{out}");
    assert!(out.contains("id 65534:65534"), "{out}");
    assert!(out.contains("open 1:3"), "opening /dev/fuse gave: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("mknod: ") && l.contains("Operation not permitted")),
        "mknod of 10:229: {out}"
    );
    stop(&mut m);
}

#[test]
fn bindfs_libfuse2_seccomp_as_nobody() {
    if !proxied() {
        return;
    }
    if !common::installed("bindfs") {
        return;
    }
    let mut m = MountBuilder::new(Mode::Proxy, ["bindfs", "-f", "{backing}", "{mnt}"])
        .proxy_args(proxy_args("seccomp"))
        .dirs_owned_by(NOBODY, NOGROUP)
        .mount();
    write_read(&m);
    let d = daemon(&m, "bindfs");
    let status = assert_unprivileged(d.pid);
    eprintln!("bindfs pid {}: {status}", d.pid);
    assert_eq!(dev_fuse_numbers(Some(d.pid)), "1:3");
    stop(&mut m);
}

#[test]
fn rclone_mount_seccomp_as_nobody_through_fusermount() {
    if !proxied() {
        return;
    }
    if !common::installed("rclone") {
        return;
    }
    // fusermount checks, as the user, that the mountpoint is writable by
    // them: dirs_owned_by gives it to nobody, as a direct mount would need.
    let mut m = MountBuilder::new(Mode::Proxy, ["rclone", "mount", "{backing}", "{mnt}"])
        .env("RCLONE_CONFIG", "/dev/null")
        .proxy_args(proxy_args("seccomp"))
        .dirs_owned_by(NOBODY, NOGROUP)
        .mount_timeout(Duration::from_secs(20))
        .mount();
    let log = m.proxy_log();
    assert!(
        log.contains("(fusermount): made on the proxy's /dev/fuse"),
        "fusermount made the call:\n{log}"
    );
    fs::write(m.path("r"), b"through rclone").unwrap();
    assert_eq!(fs::read(m.path("r")).unwrap(), b"through rclone");
    assert!(
        wait_until(Duration::from_secs(10), || fs::read(m.backing_path("r"))
            .is_ok_and(|d| d == b"through rclone")),
        "rclone did not write the file to its backing directory"
    );
    let d = daemon(&m, "rclone");
    let status = assert_unprivileged(d.pid);
    eprintln!("rclone pid {}: {status}", d.pid);
    assert_eq!(dev_fuse_numbers(Some(d.pid)), "1:3");
    stop(&mut m);
}

#[test]
fn other_mounts_and_unmounts_are_refused_and_logged_on_every_channel() {
    if !proxied() {
        return;
    }
    let pll = common::passthrough_ll().to_str().unwrap().to_string();
    // mount(8) as a user refuses before calling mount(2); call it directly.
    let calls = "import ctypes, os, sys\n\
                 libc = ctypes.CDLL(None, use_errno=True)\n\
                 r = libc.mount(b'none', sys.argv[1].encode(), b'tmpfs', 0, None)\n\
                 print('mount', r, os.strerror(ctypes.get_errno()) if r else 'ok')\n\
                 r = libc.umount2(b'/', 0)\n\
                 print('umount2', r, os.strerror(ctypes.get_errno()) if r else 'ok')\n";
    let script = format!(
        "mkdir \"$1/backing/x\"; python3 -c \"$3\" \"$1/backing/x\"; \
         exec {pll} -f -o source=\"$1/backing\" \"$2\""
    );
    for channel in ["seccomp", "fusermount", "fd"] {
        let mut m = MountBuilder::new(
            Mode::Proxy,
            ["sh", "-c", &script, "sh", "{dir}", "{mnt}", calls],
        )
        .proxy_args(proxy_args(channel))
        .dirs_owned_by(NOBODY, NOGROUP)
        .mount();
        let out = m.stdout_log();
        eprintln!("{channel}: the daemon's user got:\n{out}");
        assert!(
            out.contains("mount -1 Operation not permitted"),
            "{channel}: {out}"
        );
        assert!(
            out.contains("umount2 -1 Operation not permitted"),
            "{channel}: {out}"
        );
        let x = m.backing_path("x");
        assert!(common::mount_info(&x).is_none(), "{channel}: x got mounted");
        let log = m.proxy_log();
        let xs = x.to_string_lossy().into_owned();
        let refused = log
            .lines()
            .find(|l| l.contains("refused mount(") && l.contains(&format!("\"{xs}\", \"tmpfs\"")))
            .unwrap_or_else(|| panic!("{channel}: no refusal of the tmpfs mount:\n{log}"));
        assert!(refused.contains("EPERM"), "{refused}");
        assert!(
            log.lines()
                .any(|l| l.contains("refused umount2(\"/\"") && l.contains("EPERM")),
            "{channel}: no refusal of the unmount:\n{log}"
        );
        // And the daemon that followed works.
        fs::write(m.path("ok"), b"fine").unwrap();
        assert_eq!(fs::read(m.backing_path("ok")).unwrap(), b"fine");
        stop(&mut m);
    }
}

#[test]
fn unknown_users_and_root_are_one_line_and_exit_2() {
    common::require_root_and_fuse();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap();
    for (spec, want) in [
        (
            "no-such-user-fuseproxy",
            "no user 'no-such-user-fuseproxy' in the password database",
        ),
        (
            "nobody:no-such-group-fuseproxy",
            "no group 'no-such-group-fuseproxy' in the group database",
        ),
        ("root", "root (uid 0)"),
        ("4242", "user id 4242 has no password entry"),
    ] {
        if spec == "4242"
            && nix::unistd::User::from_uid(4242.into())
                .ok()
                .flatten()
                .is_some()
        {
            continue;
        }
        let (st, out, err) = run_proxy(
            ["--backend-user", spec, mnt, "--", "true", mnt],
            Duration::from_secs(10),
        )
        .expect("the proxy did not exit");
        assert_eq!(st.code(), Some(2), "{spec}: {err}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{spec}: {err}");
        assert!(err.contains(want), "{spec}: {err}");
        assert!(err.contains("--backend-user"), "{spec}: {err}");
    }
    assert!(!common::is_mounted(Path::new(mnt)));
}
