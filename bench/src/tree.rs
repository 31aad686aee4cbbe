//! The source tree of the `tar-x` / `find-stat` workloads: generated once per
//! run on local disk (deterministic names, sizes, contents and times), packed
//! into a tarball, and described by a manifest that the extracted tree is
//! checked against.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::procs::Res;

/// What one entry of the tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64 },
    Symlink,
}

/// One entry: what `find . | xargs stat` must show for it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: Kind,
    /// Seconds since the epoch (checked for files and directories).
    pub mtime: i64,
}

/// The tree: paths as `find .` prints them ("." and "./a/b").
pub struct Tree {
    pub tarball: PathBuf,
    pub entries: BTreeMap<String, Entry>,
    pub files: usize,
    pub bytes: u64,
}

/// splitmix64: deterministic sizes and contents without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Base of the generated mtimes: 2017-07-14, well in the past.
const EPOCH: i64 = 1_500_000_000;

/// Generates `files` files (sizes 0..=8 KiB, a symlink for every 50th) in
/// directories of 20 files, five per top directory, under `dir/src`, packs
/// them into `dir/tree.tar` with GNU tar, and removes the source.
pub fn generate(dir: &Path, files: usize) -> Res<Tree> {
    let src = dir.join("tree-src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).map_err(|e| format!("mkdir {}: {e}", src.display()))?;
    let mut rng = Rng::new(0x07ee_5eed);
    let mut entries = BTreeMap::new();
    let mut bytes = 0u64;
    let mut dirs: Vec<(PathBuf, String, i64)> = Vec::new();
    let mut buf = vec![0u8; 8192];
    let per_leaf = 20;
    let leaves_per_top = 5;
    let leaves = files.div_ceil(per_leaf);
    let mut n = 0usize;
    for leaf in 0..leaves {
        let top = leaf / leaves_per_top;
        let rel_top = format!("./d{top:03}");
        let rel_leaf = format!("{rel_top}/s{}", leaf % leaves_per_top);
        let abs_leaf = src.join(&rel_leaf[2..]);
        if leaf % leaves_per_top == 0 {
            dirs.push((
                src.join(&rel_top[2..]),
                rel_top.clone(),
                EPOCH + 86_400 * top as i64,
            ));
        }
        std::fs::create_dir_all(&abs_leaf)
            .map_err(|e| format!("mkdir {}: {e}", abs_leaf.display()))?;
        dirs.push((
            abs_leaf.clone(),
            rel_leaf.clone(),
            EPOCH + 3_600 * leaf as i64 + 7,
        ));
        for _ in 0..per_leaf {
            if n == files {
                break;
            }
            let name = format!("f{n:05}");
            let size = rng.next() % 8193;
            for chunk in buf[..size as usize].chunks_mut(8) {
                let v = rng.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
            let path = abs_leaf.join(&name);
            let mtime = EPOCH + 1_000 * n as i64 + 123;
            let mut f = std::fs::File::create(&path)
                .map_err(|e| format!("create {}: {e}", path.display()))?;
            f.write_all(&buf[..size as usize])
                .map_err(|e| format!("write {}: {e}", path.display()))?;
            f.set_modified(at(mtime))
                .map_err(|e| format!("set mtime {}: {e}", path.display()))?;
            entries.insert(
                format!("{rel_leaf}/{name}"),
                Entry {
                    kind: Kind::File { size },
                    mtime,
                },
            );
            bytes += size;
            if n % 50 == 0 {
                let link = format!("l{n:05}");
                std::os::unix::fs::symlink(&name, abs_leaf.join(&link))
                    .map_err(|e| format!("symlink in {}: {e}", abs_leaf.display()))?;
                entries.insert(
                    format!("{rel_leaf}/{link}"),
                    Entry {
                        kind: Kind::Symlink,
                        mtime: 0,
                    },
                );
            }
            n += 1;
        }
    }
    // Directory times last, deepest first, once their contents exist.
    dirs.push((src.clone(), ".".into(), EPOCH - 1));
    dirs.sort_by_key(|(_, rel, _)| std::cmp::Reverse(rel.matches('/').count()));
    for (abs, rel, mtime) in dirs {
        let f = std::fs::File::open(&abs).map_err(|e| format!("open {}: {e}", abs.display()))?;
        f.set_modified(at(mtime))
            .map_err(|e| format!("set mtime {}: {e}", abs.display()))?;
        entries.insert(
            rel,
            Entry {
                kind: Kind::Dir,
                mtime,
            },
        );
    }
    let tarball = dir.join("tree.tar");
    crate::procs::run_output(
        std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tarball)
            .arg("-C")
            .arg(&src)
            .arg("."),
        Duration::from_secs(300),
    )?;
    std::fs::remove_dir_all(&src).map_err(|e| format!("rm -r {}: {e}", src.display()))?;
    Ok(Tree {
        tarball,
        entries,
        files,
        bytes,
    })
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

impl Tree {
    /// Checks the output of `find . -print0 | xargs -0 stat --printf
    /// '%n\t%F\t%s\t%Y\n'` against the manifest: the same set of paths, the
    /// same types, and for files the same size and mtime (directories: the
    /// same mtime).
    pub fn check_listing(&self, listing: &str, times: bool) -> Res<()> {
        let mut seen = BTreeMap::new();
        for line in listing.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 4 {
                return Err(format!("unexpected stat output line: {line:?}"));
            }
            seen.insert(f[0].to_string(), (f[1].to_string(), f[2], f[3]));
        }
        if seen.len() != self.entries.len() {
            return Err(format!(
                "find | xargs stat listed {} entries, the archive has {}",
                seen.len(),
                self.entries.len()
            ));
        }
        for (path, e) in &self.entries {
            let (ty, size, mtime) = seen
                .get(path)
                .ok_or_else(|| format!("{path} is missing from the extracted tree"))?;
            let ok = match e.kind {
                Kind::Dir => ty == "directory" && (!times || mtime.parse() == Ok(e.mtime)),
                Kind::Symlink => ty == "symbolic link",
                Kind::File { size: want } => {
                    ty.starts_with("regular")
                        && size.parse() == Ok(want)
                        && (!times || mtime.parse() == Ok(e.mtime))
                }
            };
            if !ok {
                return Err(format!(
                    "{path}: stat says {ty}, size {size}, mtime {mtime}; the archive has {:?}, mtime {}",
                    e.kind, e.mtime
                ));
            }
        }
        Ok(())
    }

    /// Checks the extracted tree in the backing directory: file count and
    /// total size.
    pub fn check_backing(&self, root: &Path) -> Res<()> {
        let (mut files, mut bytes) = (0usize, 0u64);
        walk(root, &mut |_, m| {
            if m.is_file() {
                files += 1;
                bytes += m.len();
            }
        })?;
        if files != self.files || bytes != self.bytes {
            return Err(format!(
                "the backing directory holds {files} files, {bytes} bytes after tar -x; the archive has {} files, {} bytes",
                self.files, self.bytes
            ));
        }
        Ok(())
    }
}

impl Tree {
    /// Checks the extracted tree in the backing directory against the
    /// manifest: every file's size and (if `times`) every file's and
    /// directory's mtime.
    pub fn check_backing_times(&self, root: &Path, times: bool) -> Res<()> {
        for (path, e) in &self.entries {
            let p = if path == "." {
                root.to_path_buf()
            } else {
                root.join(&path[2..])
            };
            let m = std::fs::symlink_metadata(&p)
                .map_err(|err| format!("lstat {}: {err}", p.display()))?;
            use std::os::unix::fs::MetadataExt;
            let ok = match e.kind {
                Kind::Dir => m.is_dir() && (!times || m.mtime() == e.mtime),
                Kind::Symlink => m.file_type().is_symlink(),
                Kind::File { size } => {
                    m.is_file() && m.len() == size && (!times || m.mtime() == e.mtime)
                }
            };
            if !ok {
                return Err(format!(
                    "{}: size {}, mtime {}; the archive has {:?}, mtime {}",
                    p.display(),
                    m.len(),
                    m.mtime(),
                    e.kind,
                    e.mtime
                ));
            }
        }
        Ok(())
    }
}

/// Calls `f` for every entry under `root` (lstat, not following links).
pub fn walk(root: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) -> Res<()> {
    let rd = std::fs::read_dir(root).map_err(|e| format!("readdir {}: {e}", root.display()))?;
    for ent in rd {
        let ent = ent.map_err(|e| format!("readdir {}: {e}", root.display()))?;
        let p = ent.path();
        let m = std::fs::symlink_metadata(&p).map_err(|e| format!("lstat {}: {e}", p.display()))?;
        f(&p, &m);
        if m.is_dir() {
            walk(&p, f)?;
        }
    }
    Ok(())
}
