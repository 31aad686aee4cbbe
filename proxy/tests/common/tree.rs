//! Snapshots of directory trees for comparison: relative path, type, mode,
//! owner, size, content digest, symlink target, mtime, and optionally nlink
//! and user.* xattrs. Plus a deterministic byte pattern and a digest.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::sys;

/// A deterministic pseudo-random byte pattern (xorshift64*), `len` bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Length and 64-bit FNV-1a digest of `b`, printed as `len:digest`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Digest {
    pub len: usize,
    pub fnv: u64,
}

impl Digest {
    pub fn of(b: &[u8]) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Digest {
            len: b.len(),
            fnv: h,
        }
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B:{:016x}", self.len, self.fnv)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other(u32),
}

/// One entry of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the snapshot root ("" is the root itself, not included).
    pub rel: PathBuf,
    pub kind: Kind,
    /// Permission bits incl. setuid/setgid/sticky (`st_mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size; `None` for directories (their size is file-system specific).
    pub size: Option<u64>,
    /// Digest of the content of a regular file.
    pub content: Option<Digest>,
    pub target: Option<PathBuf>,
    /// (sec, nsec); `None` when not compared.
    pub mtime: Option<(i64, i64)>,
    pub nlink: Option<u64>,
    /// Sorted user.* xattrs with their values.
    pub xattrs: Option<Vec<(String, Vec<u8>)>>,
}

/// What a snapshot records beyond the always-compared fields.
#[derive(Clone, Copy, Debug)]
pub struct SnapOpts {
    pub mtime: bool,
    /// Also record directory mtimes (off when the directory mtimes are not
    /// deterministic).
    pub dir_mtime: bool,
    pub nlink: bool,
    pub xattrs: bool,
}

impl Default for SnapOpts {
    fn default() -> Self {
        SnapOpts {
            mtime: true,
            dir_mtime: true,
            nlink: true,
            xattrs: false,
        }
    }
}

/// Walks `root` (not following symlinks), sorted by relative path.
pub fn snapshot(root: &Path, opts: SnapOpts) -> Vec<Entry> {
    let mut out = Vec::new();
    walk(root, Path::new(""), opts, &mut out);
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn walk(root: &Path, rel: &Path, opts: SnapOpts, out: &mut Vec<Entry>) {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.expect("readdir entry").file_name())
        .collect();
    names.sort();
    for name in names {
        let r = rel.join(&name);
        let p = root.join(&r);
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let ft = md.file_type();
        let kind = if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other(md.mode() & libc::S_IFMT)
        };
        let content = (kind == Kind::File).then(|| {
            Digest::of(&fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
        });
        let target = (kind == Kind::Symlink).then(|| fs::read_link(&p).expect("readlink"));
        let want_mtime = opts.mtime && (kind != Kind::Dir || opts.dir_mtime);
        let xattrs = opts.xattrs.then(|| {
            sys::listxattr(&p)
                .unwrap_or_else(|e| panic!("listxattr {}: {e}", p.display()))
                .into_iter()
                .filter(|n| n.starts_with("user."))
                .map(|n| {
                    let v = sys::getxattr_all(&p, &n)
                        .unwrap_or_else(|e| panic!("getxattr {} {n}: {e}", p.display()));
                    (n, v)
                })
                .collect()
        });
        out.push(Entry {
            rel: r.clone(),
            kind,
            perm: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: (kind != Kind::Dir).then_some(md.size()),
            content,
            target,
            mtime: want_mtime.then(|| (md.mtime(), md.mtime_nsec())),
            nlink: opts.nlink.then_some(md.nlink()),
            xattrs,
        });
        if kind == Kind::Dir {
            walk(root, &r, opts, out);
        }
    }
}

/// Panics with the first differences (not two walls of text) unless the
/// two sequences are equal.
pub fn assert_same<T: PartialEq + fmt::Debug>(what: &str, left: &[T], right: &[T]) {
    if left == right {
        return;
    }
    let mut msg = format!(
        "{what}: sequences differ (left {} items, right {} items)\n",
        left.len(),
        right.len()
    );
    let mut shown = 0;
    for i in 0..left.len().max(right.len()) {
        let (a, b) = (left.get(i), right.get(i));
        if a != b {
            msg.push_str(&format!("  [{i}]\n    left:  {a:?}\n    right: {b:?}\n"));
            shown += 1;
            if shown == 10 {
                msg.push_str("  ...\n");
                break;
            }
        }
    }
    panic!("{msg}");
}

/// All relative paths under `root`, sorted, depth first.
pub fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let mut names: Vec<_> = fs::read_dir(root.join(rel))
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    for n in names {
        let r = rel.join(n);
        let is_dir = fs::symlink_metadata(root.join(&r)).expect("lstat").is_dir();
        out.push(r.clone());
        if is_dir {
            collect(root, &r, out);
        }
    }
}
