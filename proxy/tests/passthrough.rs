//! The same file-system workload on a plain reference directory and through
//! fuseproxy over passthrough_ll: every operation's result (return value,
//! errno, bytes, deterministic stat fields) must be equal, then the final
//! trees (type, mode, owner, size, content, symlink target, nlink, mtime,
//! user.* xattrs) must be equal, and every file's stat through the mount
//! must equal its stat in the backing directory.
//!
//! `workload_direct_mount_matches_reference` runs the same check on a direct
//! passthrough_ll mount: when only the proxy test fails, the proxy is at
//! fault, not the workload.

mod common;

use common::tree::collect;

use std::fmt::Debug;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::sys::{self, ts, Errno, Res};
use common::tree::{self, pattern, Digest, SnapOpts};
use common::{Mode, Mount, MountBuilder};

/// passthrough_ll options: xattrs and flock are off by default in it.
const BACKEND_OPTS: &[&str] = &["-o", "xattr,flock"];

/// Records the outcome of each operation as one line.
struct Rec(Vec<String>);

impl Rec {
    fn r<T: Debug>(&mut self, label: &str, v: T) {
        self.0.push(format!("{label} -> {v:?}"));
    }
}

/// The deterministic part of a stat: type+permissions, size, nlink, owner.
fn st_summary(st: &libc::stat) -> String {
    format!(
        "mode={:o} size={} nlink={} uid={} gid={}",
        st.st_mode, st.st_size, st.st_nlink, st.st_uid, st.st_gid
    )
}

fn stat_r(p: &Path) -> Res<String> {
    sys::stat(p).map(|st| st_summary(&st))
}

fn lstat_r(p: &Path) -> Res<String> {
    sys::lstat(p).map(|st| st_summary(&st))
}

fn times_r(p: &Path) -> Res<String> {
    sys::lstat(p).map(|st| {
        format!(
            "atime={}.{:09} mtime={}.{:09}",
            st.st_atime, st.st_atime_nsec, st.st_mtime, st.st_mtime_nsec
        )
    })
}

fn digest(r: Res<Vec<u8>>) -> Res<Digest> {
    r.map(|b| Digest::of(&b))
}

/// Sorted (name, type) pairs of a directory, or the errno.
fn listing(p: &Path) -> Res<Vec<(String, &'static str)>> {
    let rd = fs::read_dir(p).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        let ft = e
            .file_type()
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        let t = if ft.is_dir() {
            "d"
        } else if ft.is_symlink() {
            "l"
        } else if ft.is_file() {
            "f"
        } else {
            "?"
        };
        v.push((e.file_name().to_string_lossy().into_owned(), t));
    }
    v.sort();
    Ok(v)
}

/// Runs the workload under `root` (an empty directory) and returns the
/// record of every operation.
fn workload(root: &Path) -> Vec<String> {
    let mut rec = Rec(Vec::new());
    let p = |rel: &str| root.join(rel);
    let rw = libc::O_RDWR;

    // mkdir / create, and their EEXIST.
    rec.r("mkdir d1", sys::mkdir(&p("d1"), 0o755));
    rec.r("mkdir d1/sub", sys::mkdir(&p("d1/sub"), 0o700));
    rec.r("mkdir d1 again", sys::mkdir(&p("d1"), 0o755));
    rec.r("mkdir nodir/x", sys::mkdir(&p("nodir/x"), 0o755));
    rec.r("stat d1", stat_r(&p("d1")));
    rec.r("stat d1/sub", stat_r(&p("d1/sub")));
    let f1 = sys::open(&p("f1"), libc::O_CREAT | libc::O_EXCL | rw, 0o644).expect("create f1");
    rec.r(
        "create f1 O_EXCL again",
        sys::open(&p("f1"), libc::O_CREAT | libc::O_EXCL | rw, 0o644).map(|_| ()),
    );
    rec.r(
        "open missing",
        sys::open(&p("missing"), libc::O_RDONLY, 0).map(|_| ()),
    );
    rec.r(
        "open f1 O_DIRECTORY",
        sys::open(&p("f1"), libc::O_RDONLY | libc::O_DIRECTORY, 0).map(|_| ()),
    );
    rec.r("fstat f1 new", sys::fstat(&f1).map(|s| st_summary(&s)));

    // write, read, pread at offsets.
    let a = pattern(1, 100_000);
    rec.r("write f1 100000", sys::write(&f1, &a));
    rec.r("fstat f1 written", sys::fstat(&f1).map(|s| st_summary(&s)));
    rec.r("read at eof", digest(sys::read(&f1, 4096)));
    for (off, len) in [
        (0i64, 4096usize),
        (4095, 10),
        (65_536, 8192),
        (99_990, 100),
        (100_000, 10),
        (200_000, 10),
    ] {
        rec.r(
            &format!("pread f1 {len}@{off}"),
            digest(sys::pread(&f1, len, off)),
        );
    }
    rec.r("lseek f1 0", sys::lseek(&f1, 0, libc::SEEK_SET));
    let mut chunks = Vec::new();
    loop {
        match sys::read(&f1, 8192) {
            Ok(b) if b.is_empty() => break,
            Ok(b) => chunks.push(Digest::of(&b)),
            Err(e) => {
                chunks.clear();
                rec.r("sequential read error", e);
                break;
            }
        }
    }
    rec.r("sequential read chunks", &chunks);
    rec.r("pwrite f1 hello@5000", sys::pwrite(&f1, b"hello", 5000));
    rec.r("pread f1 20@4990", sys::pread(&f1, 20, 4990));
    rec.r("whole f1", digest(sys::pread(&f1, 200_000, 0)));
    rec.r(
        "pread negative offset",
        sys::pread(&f1, 10, -1).map(|v| v.len()),
    );

    // O_APPEND.
    let f2 = sys::open(
        &p("f2"),
        libc::O_CREAT | libc::O_WRONLY | libc::O_APPEND,
        0o640,
    )
    .expect("create f2");
    rec.r("append line1", sys::write(&f2, b"line1\n"));
    rec.r("append line2", sys::write(&f2, b"line2\n"));
    rec.r("pwrite O_APPEND @0", sys::pwrite(&f2, b"pw\n", 0));
    drop(f2);
    let f2 = sys::open(&p("f2"), libc::O_WRONLY | libc::O_APPEND, 0).expect("reopen f2");
    rec.r("append line3 reopened", sys::write(&f2, b"line3\n"));
    drop(f2);
    rec.r("f2 content", fs::read(p("f2")).map_err(|e| e.kind()));
    rec.r("stat f2", stat_r(&p("f2")));

    // ftruncate / truncate.
    rec.r("ftruncate f1 50000", sys::ftruncate(&f1, 50_000));
    rec.r("fstat f1 50000", sys::fstat(&f1).map(|s| st_summary(&s)));
    rec.r("ftruncate f1 150000", sys::ftruncate(&f1, 150_000));
    rec.r("pread f1 zeros", digest(sys::pread(&f1, 4096, 140_000)));
    rec.r(
        "pread f1 tail of data",
        digest(sys::pread(&f1, 100, 49_950)),
    );
    rec.r("truncate f1 1234", sys::truncate(&p("f1"), 1234));
    rec.r("fstat f1 1234", sys::fstat(&f1).map(|s| st_summary(&s)));
    rec.r("whole f1 1234", digest(sys::pread(&f1, 4096, 0)));
    rec.r("truncate dir", sys::truncate(&p("d1"), 0));
    rec.r("truncate missing", sys::truncate(&p("missing"), 0));
    rec.r("ftruncate negative", sys::ftruncate(&f1, -1));

    // O_TRUNC.
    rec.r(
        "write f3",
        fs::write(p("f3"), pattern(3, 7000)).map_err(|e| e.kind()),
    );
    let f3 = sys::open(&p("f3"), libc::O_WRONLY | libc::O_TRUNC, 0).expect("open f3 O_TRUNC");
    rec.r(
        "fstat f3 after O_TRUNC",
        sys::fstat(&f3).map(|s| st_summary(&s)),
    );
    rec.r("write f3 new", sys::write(&f3, b"fresh content"));
    drop(f3);
    rec.r("f3 content", fs::read(p("f3")).map_err(|e| e.kind()));
    rec.r(
        "O_CREAT|O_TRUNC existing",
        sys::open(&p("f3"), libc::O_CREAT | libc::O_TRUNC | rw, 0o600).map(|_| ()),
    );
    rec.r("stat f3 truncated", stat_r(&p("f3")));

    // rename, including over an existing file and of directories.
    rec.r(
        "write r1",
        fs::write(p("r1"), b"r1 data").map_err(|e| e.kind()),
    );
    rec.r(
        "write r2",
        fs::write(p("r2"), b"r2 old").map_err(|e| e.kind()),
    );
    rec.r("rename r1 r1b", sys::rename(&p("r1"), &p("r1b")));
    rec.r("stat r1 gone", stat_r(&p("r1")));
    rec.r("rename r1b over r2", sys::rename(&p("r1b"), &p("r2")));
    rec.r("r2 content", fs::read(p("r2")).map_err(|e| e.kind()));
    rec.r("stat r1b gone", stat_r(&p("r1b")));
    rec.r("rename missing", sys::rename(&p("missing"), &p("x")));
    rec.r(
        "rename into missing dir",
        sys::rename(&p("r2"), &p("nodir/r2")),
    );
    rec.r("rename r2 d1/r2", sys::rename(&p("r2"), &p("d1/r2")));
    rec.r(
        "rename d1/sub d1/sub2",
        sys::rename(&p("d1/sub"), &p("d1/sub2")),
    );
    rec.r("mkdir e1", sys::mkdir(&p("e1"), 0o755));
    rec.r("mkdir e2", sys::mkdir(&p("e2"), 0o755));
    rec.r(
        "write e2/x",
        fs::write(p("e2/x"), b"x").map_err(|e| e.kind()),
    );
    rec.r("rename dir over nonempty", sys::rename(&p("e1"), &p("e2")));
    rec.r(
        "rename dir into itself",
        sys::rename(&p("e2"), &p("e2/inner")),
    );
    rec.r("rename file over dir", sys::rename(&p("f3"), &p("e1")));
    rec.r("rename dir over file", sys::rename(&p("e1"), &p("f3")));
    rec.r("mkdir e3", sys::mkdir(&p("e3"), 0o755));
    rec.r("rename dir over empty dir", sys::rename(&p("e3"), &p("e1")));
    rec.r("stat e3 gone", stat_r(&p("e3")));

    // link.
    rec.r("link f1 d1/f1hard", sys::link(&p("f1"), &p("d1/f1hard")));
    rec.r("stat f1 nlink 2", stat_r(&p("f1")));
    rec.r("fstat f1 nlink 2", sys::fstat(&f1).map(|s| st_summary(&s)));
    rec.r("link over existing", sys::link(&p("f1"), &p("f2")));
    rec.r("link dir", sys::link(&p("d1"), &p("d1link")));
    rec.r("link missing", sys::link(&p("missing"), &p("x")));
    rec.r("link f2 tmp", sys::link(&p("f2"), &p("f2tmp")));
    rec.r("unlink f2tmp", sys::unlink(&p("f2tmp")));
    rec.r("stat f2 nlink 1", stat_r(&p("f2")));
    rec.r(
        "hardlink content",
        digest(
            fs::read(p("d1/f1hard")).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0))),
        ),
    );

    // symlink / readlink.
    rec.r("symlink s1 -> f1", sys::symlink(Path::new("f1"), &p("s1")));
    rec.r(
        "symlink dangling",
        sys::symlink(Path::new("../nowhere/at/all"), &p("d1/dangling")),
    );
    rec.r("symlink exists", sys::symlink(Path::new("f2"), &p("s1")));
    rec.r("readlink s1", sys::readlink(&p("s1")));
    rec.r("readlink dangling", sys::readlink(&p("d1/dangling")));
    rec.r("readlink regular", sys::readlink(&p("f1")));
    rec.r("readlink missing", sys::readlink(&p("missing")));
    rec.r("lstat s1", lstat_r(&p("s1")));
    rec.r("stat s1 follows", stat_r(&p("s1")));
    rec.r("stat dangling", stat_r(&p("d1/dangling")));
    rec.r(
        "read through symlink",
        digest(fs::read(p("s1")).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))),
    );
    let long_target = "t/".repeat(500) + "end";
    rec.r(
        "symlink long",
        sys::symlink(Path::new(&long_target), &p("slong")),
    );
    rec.r(
        "readlink long",
        sys::readlink(&p("slong")).map(|t| t.as_os_str().len()),
    );

    // mkdir / rmdir.
    rec.r("mkdir d2", sys::mkdir(&p("d2"), 0o755));
    rec.r(
        "write d2/x",
        fs::write(p("d2/x"), b"x").map_err(|e| e.kind()),
    );
    rec.r("rmdir nonempty", sys::rmdir(&p("d2")));
    rec.r("unlink dir", sys::unlink(&p("d2")));
    rec.r("rmdir file", sys::rmdir(&p("d2/x")));
    rec.r("unlink d2/x", sys::unlink(&p("d2/x")));
    rec.r("unlink d2/x again", sys::unlink(&p("d2/x")));
    rec.r("rmdir d2", sys::rmdir(&p("d2")));
    rec.r("rmdir d2 again", sys::rmdir(&p("d2")));
    rec.r("stat d1 nlink", stat_r(&p("d1")));

    // readdir of 2,000 entries.
    rec.r("mkdir big", sys::mkdir(&p("big"), 0o755));
    let mut created = 0;
    for i in 0..2000 {
        let name = format!("big/entry-{i:04}-{}", "x".repeat(i % 40));
        let ok = if i % 100 == 0 {
            sys::mkdir(&p(&name), 0o755).is_ok()
        } else {
            sys::open(
                &p(&name),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                0o644,
            )
            .is_ok()
        };
        created += usize::from(ok);
    }
    rec.r("created in big", created);
    let big = listing(&p("big"));
    assert_eq!(
        big.as_ref().map(Vec::len),
        Ok(2000),
        "readdir of big under {}",
        root.display()
    );
    rec.r("readdir big", big);
    for i in (0..2000).step_by(2) {
        let name = format!("big/entry-{i:04}-{}", "x".repeat(i % 40));
        let _ = if i % 100 == 0 {
            sys::rmdir(&p(&name))
        } else {
            sys::unlink(&p(&name))
        };
    }
    rec.r(
        "readdir big halved",
        listing(&p("big")).map(|v| (v.len(), v)),
    );
    rec.r("readdir root", listing(root));
    rec.r("readdir file", listing(&p("f1")));
    rec.r("readdir missing", listing(&p("missing")));

    // chmod.
    rec.r("chmod f1 0600", sys::chmod(&p("f1"), 0o600));
    rec.r("stat f1 0600", stat_r(&p("f1")));
    rec.r("fchmod f1 0751", sys::fchmod(&f1, 0o751));
    rec.r("fstat f1 0751", sys::fstat(&f1).map(|s| st_summary(&s)));
    rec.r("chmod via symlink 0640", sys::chmod(&p("s1"), 0o640));
    rec.r("lstat s1 after chmod", lstat_r(&p("s1")));
    rec.r("stat f1 0640", stat_r(&p("f1")));
    rec.r("chmod setgid+sticky dir", sys::chmod(&p("d1/sub2"), 0o3711));
    rec.r("stat d1/sub2", stat_r(&p("d1/sub2")));
    rec.r("chmod missing", sys::chmod(&p("missing"), 0o644));
    rec.r("lchown f2", sys::lchown(&p("f2"), 65534, 65534));
    rec.r("stat f2 chowned", stat_r(&p("f2")));

    // utimensat: explicit times, UTIME_OMIT, UTIME_NOW.
    let t_a = ts(1_000_000_000, 123_456_789);
    let t_m = ts(1_100_000_000, 987_654_321);
    rec.r(
        "utimensat f1 explicit",
        sys::utimensat(&p("f1"), t_a, t_m, 0),
    );
    rec.r("times f1 explicit", times_r(&p("f1")));
    rec.r(
        "utimensat f1 OMIT atime",
        sys::utimensat(&p("f1"), ts(0, libc::UTIME_OMIT), ts(1_200_000_000, 5), 0),
    );
    rec.r("times f1 after OMIT atime", times_r(&p("f1")));
    rec.r(
        "utimensat f1 OMIT mtime",
        sys::utimensat(&p("f1"), ts(900_000_000, 7), ts(0, libc::UTIME_OMIT), 0),
    );
    rec.r("times f1 after OMIT mtime", times_r(&p("f1")));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    rec.r(
        "utimensat f2 NOW",
        sys::utimensat(&p("f2"), ts(0, libc::UTIME_NOW), ts(0, libc::UTIME_NOW), 0),
    );
    rec.r(
        "f2 mtime is now",
        sys::stat(&p("f2")).map(|st| st.st_mtime >= before - 1 && st.st_mtime <= before + 60),
    );
    rec.r(
        "utimensat symlink nofollow",
        sys::utimensat(
            &p("s1"),
            ts(1_300_000_000, 1),
            ts(1_300_000_001, 2),
            libc::AT_SYMLINK_NOFOLLOW,
        ),
    );
    rec.r(
        "times s1",
        times_r(&p("s1")).map(|s| s.split(' ').nth(1).map(str::to_owned)),
    );
    rec.r(
        "futimens f1",
        sys::futimens(&f1, ts(0, libc::UTIME_OMIT), ts(1_234_567_890, 42)),
    );
    rec.r(
        "mtime f1 after futimens",
        times_r(&p("f1")).map(|s| s.split(' ').nth(1).map(str::to_owned)),
    );
    rec.r(
        "utimensat missing",
        sys::utimensat(&p("missing"), t_a, t_m, 0),
    );

    // xattrs (user.*).
    let xf = p("f1");
    rec.r(
        "setxattr user.a",
        sys::setxattr(&xf, "user.a", b"value-a", 0),
    );
    rec.r(
        "setxattr user.b CREATE",
        sys::setxattr(&xf, "user.b", &pattern(9, 300), libc::XATTR_CREATE),
    );
    rec.r(
        "setxattr user.b CREATE again",
        sys::setxattr(&xf, "user.b", b"x", libc::XATTR_CREATE),
    );
    rec.r(
        "setxattr user.zz REPLACE missing",
        sys::setxattr(&xf, "user.zz", b"x", libc::XATTR_REPLACE),
    );
    rec.r(
        "setxattr user.a REPLACE",
        sys::setxattr(&xf, "user.a", b"value-a2", libc::XATTR_REPLACE),
    );
    rec.r(
        "setxattr user.empty",
        sys::setxattr(&xf, "user.empty", b"", 0),
    );
    rec.r(
        "getxattr user.a len",
        sys::getxattr(&xf, "user.a", 0).map(|v| v.len()),
    );
    rec.r("getxattr user.a", sys::getxattr(&xf, "user.a", 64));
    rec.r("getxattr user.a small buf", sys::getxattr(&xf, "user.a", 2));
    rec.r("getxattr user.b", digest(sys::getxattr_all(&xf, "user.b")));
    rec.r("getxattr user.empty", sys::getxattr(&xf, "user.empty", 16));
    rec.r("getxattr missing", sys::getxattr(&xf, "user.nope", 16));
    rec.r(
        "listxattr f1",
        sys::listxattr(&xf).map(|v| {
            v.into_iter()
                .filter(|n| n.starts_with("user."))
                .collect::<Vec<_>>()
        }),
    );
    rec.r("listxattr small buf", sys::listxattr_size(&xf, 3));
    rec.r("removexattr user.a", sys::removexattr(&xf, "user.a"));
    rec.r("getxattr removed", sys::getxattr(&xf, "user.a", 16));
    rec.r("removexattr again", sys::removexattr(&xf, "user.a"));
    rec.r(
        "setxattr on dir",
        sys::setxattr(&p("d1"), "user.dir", b"dirval", 0),
    );
    rec.r("getxattr on dir", sys::getxattr(&p("d1"), "user.dir", 64));
    rec.r(
        "setxattr on symlink",
        sys::setxattr(&p("s1"), "user.sym", b"v", 0),
    );
    rec.r(
        "setxattr bad namespace",
        sys::setxattr(&xf, "bogus.ns", b"v", 0),
    );
    rec.r(
        "setxattr on missing",
        sys::setxattr(&p("missing"), "user.a", b"v", 0),
    );

    // statfs: values differ between file systems; only sanity is compared.
    rec.r(
        "statfs",
        sys::statfs(root).map(|s| {
            let bs = s.f_bsize as u64;
            (bs > 0 && bs.is_power_of_two() && bs <= 1 << 20, s.f_namelen)
        }),
    );
    rec.r("statfs missing", sys::statfs(&p("missing")).map(|_| ()));

    // mmap write + msync.
    let f5 = sys::open(&p("f5"), libc::O_CREAT | rw, 0o644).expect("create f5");
    let mlen = 3 * 4096 + 100;
    rec.r("ftruncate f5", sys::ftruncate(&f5, mlen as i64));
    let mdata = pattern(5, 5000);
    rec.r("mmap write f5", sys::mmap_write(&f5, mlen, 3000, &mdata));
    rec.r(
        "pread f5 after msync",
        digest(sys::pread(&f5, mlen + 10, 0)),
    );
    rec.r("pread f5 mapped part", digest(sys::pread(&f5, 5000, 3000)));
    rec.r("mmap read f5", digest(sys::mmap_read(&f5, mlen)));
    rec.r("fsync f5", sys::fsync(&f5));
    drop(f5);

    // fsync / fdatasync.
    rec.r("fsync f1", sys::fsync(&f1));
    rec.r("fdatasync f1", sys::fdatasync(&f1));
    let dfd = sys::open(&p("d1"), libc::O_RDONLY | libc::O_DIRECTORY, 0).expect("open d1");
    rec.r("fsync dir", sys::fsync(&dfd));
    drop(dfd);

    // flock.
    let l1 = sys::open(&p("f1"), libc::O_RDONLY, 0).expect("open f1 for lock");
    let l2 = sys::open(&p("f1"), libc::O_RDONLY, 0).expect("open f1 for lock 2");
    rec.r(
        "flock l1 EX|NB",
        sys::flock(&l1, libc::LOCK_EX | libc::LOCK_NB),
    );
    rec.r(
        "flock l2 EX|NB",
        sys::flock(&l2, libc::LOCK_EX | libc::LOCK_NB),
    );
    rec.r(
        "flock l2 SH|NB",
        sys::flock(&l2, libc::LOCK_SH | libc::LOCK_NB),
    );
    rec.r("flock l1 UN", sys::flock(&l1, libc::LOCK_UN));
    rec.r(
        "flock l2 SH|NB after UN",
        sys::flock(&l2, libc::LOCK_SH | libc::LOCK_NB),
    );
    rec.r(
        "flock l1 SH|NB shared",
        sys::flock(&l1, libc::LOCK_SH | libc::LOCK_NB),
    );
    rec.r(
        "flock l1 EX|NB vs shared",
        sys::flock(&l1, libc::LOCK_EX | libc::LOCK_NB),
    );
    drop(l2);
    // Closing l2 releases its lock with the RELEASE request, which FUSE
    // sends asynchronously: the lock goes away soon, not at once.
    let mut after_close = sys::flock(&l1, libc::LOCK_EX | libc::LOCK_NB);
    common::wait_until(Duration::from_secs(5), || {
        after_close = sys::flock(&l1, libc::LOCK_EX | libc::LOCK_NB);
        after_close != Err(Errno::EAGAIN)
    });
    rec.r("flock l1 EX|NB after close (eventually)", after_close);
    drop(l1);
    drop(f1);

    // Unlink while open: the open file stays readable.
    fs::write(p("tmpfile"), b"still here").expect("write tmpfile");
    let t = sys::open(&p("tmpfile"), libc::O_RDONLY, 0).expect("open tmpfile");
    rec.r("unlink open file", sys::unlink(&p("tmpfile")));
    rec.r("read unlinked file", sys::pread(&t, 64, 0));
    rec.r("fstat unlinked file", sys::fstat(&t).map(|s| s.st_nlink));
    drop(t);

    // Deterministic times for everything, so the final trees compare mtime.
    let mut all = Vec::new();
    collect(root, Path::new(""), &mut all);
    for (i, rel) in all.iter().enumerate() {
        let i = i as i64;
        let r = sys::utimensat(
            &root.join(rel),
            ts(1_500_000_000 + i, i * 1000 + 1),
            ts(1_400_000_000 + i, i * 1000 + 7),
            libc::AT_SYMLINK_NOFOLLOW,
        );
        rec.r(&format!("final utimensat {}", rel.display()), r);
    }
    rec.0
}

/// The stat fields a mount must pass through unchanged from the backing
/// file (atime and ctime excluded: reads and the kernel's own bookkeeping
/// move them).
fn stat_key(p: &Path) -> String {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    format!(
        "ino={} mode={:o} nlink={} uid={} gid={} size={} mtime={}.{:09} rdev={}",
        md.ino(),
        md.mode(),
        md.nlink(),
        md.uid(),
        md.gid(),
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        md.rdev()
    )
}

fn run_against_reference(m: &Mount) {
    let reference = tempfile::Builder::new()
        .prefix("fuseproxy-ref.")
        .tempdir()
        .expect("reference tempdir");
    let expected = workload(reference.path());
    let got = workload(m.mountpoint());
    if let Ok(dir) = std::env::var("FUSEPROXY_TEST_DUMP") {
        fs::write(format!("{dir}/reference.txt"), expected.join("\n")).expect("dump");
        fs::write(format!("{dir}/mount.txt"), got.join("\n")).expect("dump");
    }
    tree::assert_same(
        &format!(
            "operation results: reference (left) vs {:?} mount (right)",
            m.mode()
        ),
        &expected,
        &got,
    );

    let opts = SnapOpts {
        mtime: true,
        dir_mtime: true,
        nlink: true,
        xattrs: true,
    };
    let ref_tree = tree::snapshot(reference.path(), opts);
    let mnt_tree = tree::snapshot(m.mountpoint(), opts);
    assert!(
        ref_tree.len() > 1000,
        "the reference tree is suspiciously small"
    );
    tree::assert_same(
        "final tree: reference (left) vs mount (right)",
        &ref_tree,
        &mnt_tree,
    );

    // Through the mount vs straight in the backing directory.
    let backing_tree = tree::snapshot(m.backing(), opts);
    tree::assert_same(
        "final tree: backing (left) vs mount (right)",
        &backing_tree,
        &mnt_tree,
    );
    let in_backing: Vec<String> = backing_tree
        .iter()
        .map(|e| format!("{}: {}", e.rel.display(), stat_key(&m.backing_path(&e.rel))))
        .collect();
    let in_mount: Vec<String> = backing_tree
        .iter()
        .map(|e| format!("{}: {}", e.rel.display(), stat_key(&m.path(&e.rel))))
        .collect();
    tree::assert_same(
        "stat: backing (left) vs mount (right)",
        &in_backing,
        &in_mount,
    );
}

#[test]
fn workload_through_proxy_matches_reference() {
    let m = MountBuilder::passthrough(Mode::Proxy, BACKEND_OPTS).mount();
    run_against_reference(&m);
    assert!(m.is_mounted(), "the mount went away during the workload");
}

#[test]
fn workload_direct_mount_matches_reference() {
    let m = MountBuilder::passthrough(Mode::Direct, BACKEND_OPTS).mount();
    run_against_reference(&m);
}
