//! A read-only, libfuse3 daemon other than passthrough_ll: `squashfuse`
//! through the proxy serves exactly the tree the image was made from.
//!
//! The source tree has nested directories, files from 0 bytes to 3 MiB,
//! assorted modes and owners, symlinks (relative, absolute, dangling, to a
//! directory), a hard link, user.* xattrs, and explicit mtimes (whole
//! seconds: squashfs keeps no nanoseconds). `mksquashfs SRC IMG -noappend`
//! packs it; the tests compare the mounted tree with the source, pread
//! windows of the big files, and the errors a read-only file system gives,
//! against a direct squashfuse mount of the same image.

mod common;

use common::tree::collect;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::sys::{self, ts};
use common::tree::{self, pattern, Digest, SnapOpts};
use common::{run_bounded, Mode, Mount, MountBuilder, NOBODY};

/// Files: (relative path, size, mode, seed).
const FILES: &[(&str, usize, u32, u64)] = &[
    ("empty", 0, 0o644, 0),
    ("one", 1, 0o600, 1),
    ("a/page-1", 4095, 0o644, 2),
    ("a/page", 4096, 0o444, 3),
    ("a/page+1", 4097, 0o640, 4),
    ("a/b/128k", 128 * 1024, 0o644, 5),
    ("a/b/c/1m+123", (1 << 20) + 123, 0o755, 6),
    ("a/b/c/d/e/deep", 777, 0o604, 7),
    ("big/3m", 3 << 20, 0o644, 8),
    ("big/setuid", 10, 0o4755, 9),
    ("big/sticky-ish", 10, 0o1644, 10),
    ("with space/and-ünïcödé", 100, 0o644, 11),
];

/// Symlinks: (relative path, target).
const SYMLINKS: &[(&str, &str)] = &[
    ("link-rel", "a/page"),
    ("a/b/link-up", "../../one"),
    ("link-abs", "/etc/hostname"),
    ("link-dangling", "does/not/exist"),
    ("link-dir", "a/b"),
];

/// Directories with explicit modes (others are 0755).
const DIRS: &[(&str, u32)] = &[
    ("a", 0o755),
    ("a/b", 0o750),
    ("a/b/c", 0o700),
    ("a/b/c/d", 0o755),
    ("a/b/c/d/e", 0o711),
    ("big", 0o755),
    ("emptydir", 0o755),
    ("with space", 0o755),
];

/// Builds the source tree under `src` and returns the paths, depth first.
fn make_source(src: &Path) {
    for (d, mode) in DIRS {
        let p = src.join(d);
        fs::create_dir_all(&p).expect("mkdir");
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).expect("chmod dir");
    }
    for (f, size, mode, seed) in FILES {
        let p = src.join(f);
        fs::write(&p, pattern(*seed, *size)).expect("write file");
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).expect("chmod file");
    }
    for (l, target) in SYMLINKS {
        std::os::unix::fs::symlink(target, src.join(l)).expect("symlink");
    }
    fs::hard_link(src.join("a/page+1"), src.join("hardlink-to-page+1")).expect("link");
    sys::lchown(&src.join("one"), NOBODY, NOBODY).expect("chown");
    sys::lchown(&src.join("a/b/c"), 1000, 100).expect("chown");
    sys::setxattr(&src.join("one"), "user.colour", b"blue", 0).expect("setxattr");
    sys::setxattr(&src.join("a"), "user.dir", &pattern(12, 200), 0).expect("setxattr");

    // Explicit mtimes, children before parents so directory times stick.
    let mut all = Vec::new();
    collect(src, Path::new(""), &mut all);
    all.reverse();
    for (i, rel) in all.iter().enumerate() {
        let i = i as i64;
        sys::utimensat(
            &src.join(rel),
            ts(1_600_000_000 + i, 0),
            ts(1_500_000_000 + 3600 * i, 0),
            libc::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap_or_else(|e| panic!("utimensat {}: {e}", rel.display()));
    }
}

/// The source tree and its image, in a temporary directory.
struct Image {
    _dir: tempfile::TempDir,
    src: PathBuf,
    img: PathBuf,
}

fn make_image() -> Image {
    common::require_root_and_fuse();
    let dir = tempfile::Builder::new()
        .prefix("fuseproxy-squash.")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let src = dir.path().join("src");
    fs::create_dir(&src).expect("mkdir src");
    make_source(&src);
    // The root's own mtime too.
    sys::utimensat(&src, ts(1_700_000_000, 0), ts(1_450_000_000, 0), 0).expect("utimensat");
    let img = dir.path().join("tree.sqfs");
    let out = run_bounded(
        Command::new("mksquashfs").arg(&src).arg(&img).args([
            "-noappend",
            "-no-progress",
            "-xattrs",
        ]),
        Duration::from_secs(120),
    )
    .expect("mksquashfs (Debian package squashfs-tools) timed out");
    assert!(out.0.success(), "mksquashfs failed: {}\n{}", out.1, out.2);
    Image {
        _dir: dir,
        src,
        img,
    }
}

fn mount_squashfuse(mode: Mode, img: &Path) -> Mount {
    MountBuilder::new(
        mode,
        [
            Path::new("squashfuse").as_os_str(),
            "-f".as_ref(),
            img.as_os_str(),
            "{mnt}".as_ref(),
        ],
    )
    .mount()
}

const OPTS: SnapOpts = SnapOpts {
    mtime: true,
    dir_mtime: true,
    nlink: true,
    xattrs: true,
};

#[test]
fn squashfuse_tree_matches_source() {
    let image = make_image();
    let m = mount_squashfuse(Mode::Proxy, &image.img);
    let want = tree::snapshot(&image.src, OPTS);
    let got = tree::snapshot(m.mountpoint(), OPTS);
    let names: Vec<_> = want.iter().map(|e| e.rel.clone()).collect();
    assert_eq!(
        want.len(),
        DIRS.len() + FILES.len() + SYMLINKS.len() + 1,
        "unexpected source tree: {names:?}"
    );
    tree::assert_same(
        "tree: source (left) vs squashfuse via proxy (right)",
        &want,
        &got,
    );

    // The root directory itself.
    let (s, r) = (
        fs::symlink_metadata(&image.src).expect("stat src"),
        fs::symlink_metadata(m.mountpoint()).expect("stat mount root"),
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (s.mode(), s.mtime(), s.uid(), s.gid()),
        (r.mode(), r.mtime(), r.uid(), r.gid()),
        "root directory: source (left) vs mount (right)"
    );
    assert!(m.is_mounted());
}

#[test]
fn squashfuse_preads_match_source() {
    let image = make_image();
    let m = mount_squashfuse(Mode::Proxy, &image.img);
    for (f, size, _, _) in FILES.iter().filter(|f| f.1 > 0) {
        let want = fs::read(image.src.join(f)).expect("read source");
        assert_eq!(want.len(), *size);
        let fd = sys::open(&m.path(f), libc::O_RDONLY, 0)
            .unwrap_or_else(|e| panic!("open {f} through the proxy: {e}"));
        let offsets = [
            0,
            1,
            size / 3,
            size.saturating_sub(1),
            size.saturating_sub(4096),
            4095,
            4096,
            65535,
            131_072 + 5,
            (1 << 20) - 3,
            (2 << 20) + 17,
            *size,
            size + 4096,
        ];
        for off in offsets {
            for len in [1usize, 100, 4096, 65536, 1 << 20] {
                let got = sys::pread(&fd, len, off as i64)
                    .unwrap_or_else(|e| panic!("pread {f} {len}@{off}: {e}"));
                let end = (off + len).min(*size);
                let exp = if off >= *size {
                    &[][..]
                } else {
                    &want[off..end]
                };
                assert!(
                    got == exp,
                    "pread {f} {len}@{off}: got {:?}, want {:?}",
                    Digest::of(&got),
                    Digest::of(exp)
                );
            }
        }
        // Sequential reads of odd sizes to the end.
        let mut all = Vec::new();
        loop {
            let chunk = sys::read(&fd, 12_345).expect("read");
            if chunk.is_empty() {
                break;
            }
            all.extend_from_slice(&chunk);
        }
        assert!(all == want, "sequential read of {f} differs");
        // And mmap.
        let mapped = sys::mmap_read(&fd, *size).expect("mmap");
        assert!(mapped == want, "mmap of {f} differs");
    }
}

/// The errors and answers of a read-only file system, through the proxy
/// and on a direct mount of the same image.
fn probe(m: &Mount) -> Vec<String> {
    let p = |rel: &str| m.path(rel);
    let mut out = Vec::new();
    let mut r = |label: &str, v: &dyn std::fmt::Debug| out.push(format!("{label} -> {v:?}"));
    r(
        "open O_WRONLY",
        &sys::open(&p("one"), libc::O_WRONLY, 0).map(|_| ()),
    );
    r(
        "open O_CREAT",
        &sys::open(&p("new"), libc::O_CREAT | libc::O_WRONLY, 0o644).map(|_| ()),
    );
    r("mkdir", &sys::mkdir(&p("newdir"), 0o755));
    r("unlink", &sys::unlink(&p("one")));
    r("rmdir", &sys::rmdir(&p("emptydir")));
    r("rename", &sys::rename(&p("one"), &p("two")));
    r("chmod", &sys::chmod(&p("one"), 0o600));
    r("truncate", &sys::truncate(&p("one"), 0));
    r("symlink", &sys::symlink(Path::new("x"), &p("newlink")));
    r("link", &sys::link(&p("one"), &p("newhard")));
    r("setxattr", &sys::setxattr(&p("one"), "user.x", b"y", 0));
    r("removexattr", &sys::removexattr(&p("one"), "user.colour"));
    r("getxattr", &sys::getxattr(&p("one"), "user.colour", 64));
    r(
        "getxattr missing",
        &sys::getxattr(&p("one"), "user.none", 64),
    );
    r(
        "getxattr small",
        &sys::getxattr(&p("one"), "user.colour", 1),
    );
    r("listxattr", &sys::listxattr(&p("one")));
    r("readlink", &sys::readlink(&p("link-rel")));
    r("readlink regular", &sys::readlink(&p("one")));
    r("readlink missing", &sys::readlink(&p("nope")));
    r(
        "stat through dir link",
        &sys::stat(&p("link-dir/128k")).map(|s| s.st_size),
    );
    r("stat dangling", &sys::stat(&p("link-dangling")).map(|_| ()));
    r(
        "open dir O_RDONLY|O_DIRECTORY",
        &sys::open(&p("a"), libc::O_RDONLY | libc::O_DIRECTORY, 0).map(|_| ()),
    );
    r(
        "open file O_DIRECTORY",
        &sys::open(&p("one"), libc::O_RDONLY | libc::O_DIRECTORY, 0).map(|_| ()),
    );
    r(
        "statfs",
        &sys::statfs(m.mountpoint()).map(|s| (s.f_bsize, s.f_blocks, s.f_files, s.f_namelen)),
    );
    r("flags", &m.mount_info().map(|i| i.mount_options));
    out
}

#[test]
fn squashfuse_errors_match_direct_mount() {
    let image = make_image();
    let direct = mount_squashfuse(Mode::Direct, &image.img);
    let proxied = mount_squashfuse(Mode::Proxy, &image.img);
    let want = probe(&direct);
    let got = probe(&proxied);
    println!("direct squashfuse: {want:#?}");
    tree::assert_same("direct squashfuse (left) vs via proxy (right)", &want, &got);
    // Sanity of the reference itself: it is read-only.
    assert!(
        want[0].contains("EROFS"),
        "expected EROFS for a write open: {want:#?}"
    );
}
