//! The workloads fio has no job for, run as a child process of the harness
//! (`fuseproxy-bench worker ...`, hidden) so that the harness can bound and
//! kill them like fio. Each times itself, checks every call, and prints one
//! JSON line `{"seconds": S, "ops": N}`; any failed call ends it with
//! status 1 and one line on stderr.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

use nix::fcntl::{open, OFlag};
use nix::sys::stat::{fstatat, utimensat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{close, unlinkat, UnlinkatFlags};

/// Which loop.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    /// Create COUNT empty files (open O_CREAT|O_EXCL, close).
    MetaCreate,
    /// fstatat each of the COUNT files; each must be an empty regular file.
    MetaStat,
    /// unlink each of the COUNT files.
    MetaUnlink,
    /// COUNT utimensat calls with explicit times over FILES existing files.
    Utime,
}

/// `fuseproxy-bench worker KIND DIR COUNT [--files N] [--first I] [--callers P]`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_enum)]
    pub kind: Kind,
    pub dir: PathBuf,
    pub count: usize,
    #[arg(long, default_value_t = 1000)]
    pub files: usize,
    /// Index of the first metadata file (batches).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// meta-stat only: parallel callers (threads of this process), each
    /// stat'ing its own contiguous share of the COUNT files. The time is
    /// from their common start to the last one's end.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub callers: u32,
}

/// Name of the i-th file of the metadata workloads.
pub fn meta_name(i: usize) -> String {
    format!("f{i:06}")
}

/// Name of the i-th file of the utime workload.
pub fn utime_name(i: usize) -> String {
    format!("u{i:04}")
}

/// The times the k-th utimensat call sets (atime = mtime): distinct seconds
/// and nanoseconds per call, so that the final state proves the last call
/// of each file arrived.
pub fn utime_time(k: usize) -> (i64, i64) {
    (
        1_000_000_000 + k as i64,
        ((k as i64) * 7919) % 1_000_000_000,
    )
}

/// The index of the last call that touches file `i` of `files`, out of
/// `calls` (round robin).
pub fn utime_last_call(i: usize, files: usize, calls: usize) -> Option<usize> {
    (i < calls).then(|| i + files * ((calls - 1 - i) / files))
}

pub fn main(a: &Args) -> i32 {
    match run(a) {
        Ok((secs, ops)) => {
            println!("{}", serde_json::json!({"seconds": secs, "ops": ops}));
            0
        }
        Err(e) => {
            eprintln!("worker {:?}: {e}", a.kind);
            1
        }
    }
}

fn names(first: usize, n: usize, f: fn(usize) -> String) -> Vec<CString> {
    (first..first + n)
        .map(|i| CString::new(f(i)).expect("no NUL in generated names"))
        .collect()
}

fn run(a: &Args) -> Result<(f64, usize), String> {
    let dir = std::fs::File::open(&a.dir).map_err(|e| format!("open {}: {e}", a.dir.display()))?;
    let dfd = dir.as_raw_fd();
    let at = |p: &CString| Path::new(p.to_str().unwrap_or("?")).to_path_buf();
    match a.kind {
        Kind::MetaCreate => {
            let names = names(a.first, a.count, meta_name);
            let t = Instant::now();
            for n in &names {
                let fd = nix::fcntl::openat(
                    Some(dfd),
                    n.as_c_str(),
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .map_err(|e| format!("create {}: {e}", at(n).display()))?;
                close(fd).map_err(|e| format!("close {}: {e}", at(n).display()))?;
            }
            Ok((t.elapsed().as_secs_f64(), a.count))
        }
        Kind::MetaStat => {
            let names = names(a.first, a.count, meta_name);
            let stat_all = |names: &[CString]| -> Result<(), String> {
                for n in names {
                    let st = fstatat(
                        Some(dfd),
                        n.as_c_str(),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| format!("stat {}: {e}", at(n).display()))?;
                    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size != 0 {
                        return Err(format!(
                            "stat {}: mode {:o}, size {} (expected an empty regular file)",
                            at(n).display(),
                            st.st_mode,
                            st.st_size
                        ));
                    }
                }
                Ok(())
            };
            if a.callers == 1 {
                let t = Instant::now();
                stat_all(&names)?;
                return Ok((t.elapsed().as_secs_f64(), a.count));
            }
            // Every thread waits at the barrier, so the clock starts when all
            // of them are ready, not while the later ones are being created.
            let p = a.callers as usize;
            let start = Barrier::new(p + 1);
            let (secs, results) = std::thread::scope(|s| {
                let handles: Vec<_> = (0..p)
                    .map(|i| {
                        let (first, n) = share(names.len(), p, i);
                        let mine = &names[first..first + n];
                        let start = &start;
                        let stat_all = &stat_all;
                        s.spawn(move || {
                            start.wait();
                            stat_all(mine)
                        })
                    })
                    .collect();
                start.wait();
                let t = Instant::now();
                let results: Vec<Result<(), String>> = handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err("a caller thread panicked".into()))
                    })
                    .collect();
                (t.elapsed().as_secs_f64(), results)
            });
            results.into_iter().collect::<Result<Vec<()>, String>>()?;
            Ok((secs, a.count))
        }
        Kind::MetaUnlink => {
            let names = names(a.first, a.count, meta_name);
            let t = Instant::now();
            for n in &names {
                unlinkat(Some(dfd), n.as_c_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| format!("unlink {}: {e}", at(n).display()))?;
            }
            Ok((t.elapsed().as_secs_f64(), a.count))
        }
        Kind::Utime => {
            if a.files == 0 {
                return Err("--files must be at least 1".into());
            }
            let names = names(0, a.files, utime_name);
            let t = Instant::now();
            for k in 0..a.count {
                let n = &names[k % a.files];
                let (s, ns) = utime_time(k);
                let ts = TimeSpec::new(s, ns);
                utimensat(
                    Some(dfd),
                    n.as_c_str(),
                    &ts,
                    &ts,
                    UtimensatFlags::FollowSymlink,
                )
                .map_err(|e| format!("utimensat {} (call {k}): {e}", at(n).display()))?;
            }
            Ok((t.elapsed().as_secs_f64(), a.count))
        }
    }
}

/// Caller `i`'s share of `total` operations split among `parts` callers:
/// (first index, count). Shares differ by one at most, the first ones take
/// the remainder, and together they cover `0..total` exactly once.
pub fn share(total: usize, parts: usize, i: usize) -> (usize, usize) {
    let parts = parts.max(1);
    let (base, rem) = (total / parts, total % parts);
    (i * base + i.min(rem), base + usize::from(i < rem))
}

/// Creates the utime workload's files (untimed set-up, through the mount).
pub fn make_utime_files(dir: &Path, files: usize) -> Result<(), String> {
    for i in 0..files {
        let p = dir.join(utime_name(i));
        let fd = open(
            &p,
            OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| format!("create {}: {e}", p.display()))?;
        close(fd).map_err(|e| format!("close {}: {e}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_call_is_round_robin() {
        // 10 calls over 3 files: file 0 gets 0,3,6,9; file 1: 1,4,7; file 2: 2,5,8.
        assert_eq!(utime_last_call(0, 3, 10), Some(9));
        assert_eq!(utime_last_call(1, 3, 10), Some(7));
        assert_eq!(utime_last_call(2, 3, 10), Some(8));
        assert_eq!(utime_last_call(5, 10, 3), None);
    }

    #[test]
    fn shares_cover_everything_once() {
        for (total, parts) in [(10_000, 1), (10_000, 3), (5_000, 8), (7, 4), (100, 2)] {
            let mut next = 0;
            for i in 0..parts {
                let (first, n) = share(total, parts, i);
                assert_eq!(first, next, "{total}/{parts} share {i}");
                assert!(n == total / parts || n == total / parts + 1);
                next += n;
            }
            assert_eq!(next, total);
        }
    }
}
