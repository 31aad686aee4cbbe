//! The proxy mounts exactly as the backend would have: a direct mount of
//! `passthrough_ll -o default_permissions,allow_other` and the proxy
//! wrapping the same command show the same fstype, source, per-mount options
//! and super-block options in /proc/self/mountinfo; and the permission
//! checks those options ask of the kernel behave the same for an
//! unprivileged user (`nobody`).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::sys::{self, as_user, Errno, UserOp};
use common::{Mode, Mount, MountBuilder, NOBODY};

const OPTS: &[&str] = &["-o", "default_permissions,allow_other"];
const OP_TIMEOUT: Duration = Duration::from_secs(10);

fn mount(mode: Mode) -> Mount {
    MountBuilder::passthrough(mode, OPTS).mount()
}

#[test]
fn mountinfo_matches_direct_mount() {
    let direct = mount(Mode::Direct);
    let proxied = mount(Mode::Proxy);
    let d = direct.mount_info().expect("direct mount in mountinfo");
    let p = proxied.mount_info().expect("proxy mount in mountinfo");
    println!("direct: {d:?}\nproxy:  {p:?}");
    assert!(d.is_fuse() && p.is_fuse());
    assert_eq!(p.fstype, d.fstype, "fstype");
    assert_eq!(p.source, d.source, "source (fsname)");
    assert_eq!(p.mount_options, d.mount_options, "per-mount options");
    assert_eq!(p.super_options, d.super_options, "super-block options");
    assert_eq!(p.root, d.root, "root");
    for want in [
        "default_permissions",
        "allow_other",
        "user_id=0",
        "group_id=0",
    ] {
        assert!(
            p.super_options.split(',').any(|o| o == want),
            "{want} missing from the proxy's super options {:?}",
            p.super_options
        );
    }
    // /proc/mounts says the same in its own format.
    let line = |m: &Mount| {
        let mounts = fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
        let mp = m.mountpoint().to_string_lossy().into_owned();
        mounts
            .lines()
            .rev()
            .find(|l| l.split(' ').nth(1) == Some(mp.as_str()))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                format!("{} {} {} {} {}", f[0], f[2], f[3], f[4], f[5])
            })
            .expect("mount in /proc/mounts")
    };
    assert_eq!(line(&proxied), line(&direct), "/proc/mounts");
}

/// Files in the backing directory: `rootfile` (root, 0644) and `userfile`
/// (nobody, 0644), in a directory `nobody` may write to (`open`, 0777) and
/// one it may not (`closed`, 0755).
fn populate(m: &Mount) {
    let b = m.backing();
    fs::write(b.join("rootfile"), b"root's").expect("write rootfile");
    fs::write(b.join("userfile"), b"nobody's").expect("write userfile");
    fs::set_permissions(b.join("rootfile"), fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::set_permissions(b.join("userfile"), fs::Permissions::from_mode(0o644)).expect("chmod");
    sys::lchown(&b.join("userfile"), NOBODY, NOBODY).expect("chown userfile");
    fs::create_dir(b.join("open")).expect("mkdir open");
    fs::set_permissions(b.join("open"), fs::Permissions::from_mode(0o777)).expect("chmod");
    fs::create_dir(b.join("closed")).expect("mkdir closed");
    fs::set_permissions(b.join("closed"), fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The operations `nobody` tries, with their results.
fn as_nobody(mnt: &Path) -> Vec<(String, Result<(), Errno>)> {
    let ops = [
        UserOp::Stat(mnt.join("rootfile")),
        UserOp::Chmod(mnt.join("rootfile"), 0o600),
        UserOp::Chmod(mnt.join("userfile"), 0o600),
        UserOp::Open(mnt.join("rootfile"), libc::O_RDONLY),
        UserOp::Open(mnt.join("rootfile"), libc::O_WRONLY),
        UserOp::Open(mnt.join("userfile"), libc::O_WRONLY),
        UserOp::Open(mnt.join("closed/new"), libc::O_CREAT | libc::O_WRONLY),
        UserOp::Open(mnt.join("open/new"), libc::O_CREAT | libc::O_WRONLY),
        UserOp::Mkdir(mnt.join("closed/dir"), 0o755),
        UserOp::Mkdir(mnt.join("open/dir"), 0o755),
        UserOp::Unlink(mnt.join("rootfile")),
    ];
    ops.iter()
        .map(|op| {
            let label = format!("{op:?}").replace(&*mnt.to_string_lossy(), "MNT");
            (label, as_user(NOBODY, NOBODY, op, OP_TIMEOUT))
        })
        .collect()
}

#[test]
fn unprivileged_permission_checks_match_direct_mount() {
    let direct = mount(Mode::Direct);
    let proxied = mount(Mode::Proxy);
    populate(&direct);
    populate(&proxied);
    let want = as_nobody(direct.mountpoint());
    let got = as_nobody(proxied.mountpoint());
    common::tree::assert_same(
        "nobody's results: direct (left) vs proxy (right)",
        &want,
        &got,
    );

    // And they are what default_permissions means.
    let result = |label: &str| {
        got.iter()
            .find(|(l, _)| l.starts_with(label))
            .map(|(_, r)| *r)
            .unwrap_or_else(|| panic!("no result for {label}"))
    };
    assert_eq!(result("Chmod(\"MNT/rootfile\""), Err(Errno::EPERM));
    assert_eq!(result("Chmod(\"MNT/userfile\""), Ok(()));
    assert_eq!(result("Stat(\"MNT/rootfile\""), Ok(()));
    assert_eq!(result("Open(\"MNT/rootfile\", 0)"), Ok(()));
    assert_eq!(result("Open(\"MNT/rootfile\", 1)"), Err(Errno::EACCES));
    assert_eq!(result("Open(\"MNT/userfile\", 1)"), Ok(()));
    assert_eq!(result("Unlink(\"MNT/rootfile\""), Err(Errno::EACCES));
    assert_eq!(result("Mkdir(\"MNT/closed/dir\""), Err(Errno::EACCES));
    assert_eq!(result("Mkdir(\"MNT/open/dir\""), Ok(()));

    // What reached the backing directories is the same too (passthrough_ll
    // creates files with its own, root, identity: compare, don't assume).
    let mut outcome = Vec::new();
    for m in [&direct, &proxied] {
        let st = |rel: &str| {
            sys::lstat(&m.backing_path(rel)).map(|st| (st.st_mode & 0o7777, st.st_uid, st.st_gid))
        };
        assert_eq!(
            st("rootfile"),
            Ok((0o644, 0, 0)),
            "{:?}: rootfile changed",
            m.mode()
        );
        assert_eq!(
            st("userfile"),
            Ok((0o600, NOBODY, NOBODY)),
            "{:?}: userfile",
            m.mode()
        );
        assert!(st("open/new").is_ok(), "{:?}: open/new missing", m.mode());
        assert!(st("open/dir").is_ok(), "{:?}: open/dir missing", m.mode());
        assert_eq!(
            st("closed/new"),
            Err(Errno::ENOENT),
            "{:?}: closed/new",
            m.mode()
        );
        assert_eq!(
            st("closed/dir"),
            Err(Errno::ENOENT),
            "{:?}: closed/dir",
            m.mode()
        );
        outcome.push(["rootfile", "userfile", "open/new", "open/dir"].map(st));
    }
    assert_eq!(
        outcome[0], outcome[1],
        "backing files: direct (left) vs proxy (right)"
    );
}
