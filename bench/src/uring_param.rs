//! The fuse module parameter that lets a mount use FUSE-over-io_uring, for
//! the `proxy-uring` configuration: the kernel offers the ring in INIT only
//! when it reads `Y` at mount time. The harness sets it for the run and puts
//! the old value back when the guard is dropped: at the end of the run, on
//! an error return, and after ^C or SIGTERM (the harness reads those from a
//! signalfd and unwinds; see `procs::catch_signals`). Only SIGKILL, or a
//! crash that skips destructors, leaves it changed; the harness says at
//! start what it was.

use std::path::{Path, PathBuf};

use crate::procs::Res;

/// Where the kernel keeps it (fs/fuse/dev_uring.c, `enable_uring`).
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Owns the parameter while the run needs it `Y`.
#[derive(Debug)]
pub struct EnableUring {
    path: PathBuf,
    /// The value read before the run, as the kernel printed it (`N` or `Y`).
    old: String,
}

impl EnableUring {
    /// Checks that `path` exists and can be written, remembers its value
    /// and writes `Y`. The error is one sentence naming the file and why.
    pub fn set(path: &Path) -> Res<EnableUring> {
        let shown = path.display();
        let old = match std::fs::read_to_string(path) {
            Ok(v) => v.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "proxy-uring needs {shown}, which does not exist: {}",
                    if Path::new("/sys/module/fuse").exists() {
                        "this kernel has no FUSE-over-io_uring (Linux 6.14+ built with CONFIG_FUSE_IO_URING)"
                    } else {
                        "the fuse module is not loaded"
                    }
                ))
            }
            Err(e) => {
                return Err(format!(
                    "proxy-uring needs {shown}, which cannot be read: {e}"
                ))
            }
        };
        // Opened for writing before anything is written: a read-only /sys
        // (a container) or missing privileges fail here, with nothing
        // changed.
        std::fs::File::options()
            .write(true)
            .open(path)
            .map_err(|e| {
                format!(
                    "proxy-uring needs {shown} writable (it must be Y when a mount is made; it is {old}): {e}"
                )
            })?;
        if old != "Y" {
            write(path, "Y").map_err(|e| format!("writing Y to {shown} (it is {old}): {e}"))?;
        }
        // From here on the old value is put back, whatever happens.
        let guard = EnableUring {
            path: path.to_path_buf(),
            old,
        };
        // Read back: the kernel may refuse the value without an error.
        let now = std::fs::read_to_string(path)
            .map_err(|e| format!("{shown}: {e}"))?
            .trim()
            .to_string();
        if now != "Y" {
            return Err(format!("{shown} reads {now} after writing Y"));
        }
        Ok(guard)
    }

    /// The value before the run.
    pub fn old(&self) -> &str {
        &self.old
    }
}

fn write(path: &Path, v: &str) -> std::io::Result<()> {
    std::fs::write(path, format!("{v}\n"))
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        if self.old == "Y" {
            return;
        }
        if let Err(e) = write(&self.path, &self.old) {
            eprintln!(
                "\nfuseproxy-bench: could not restore {} to {}: {e}; it is still Y (write {} to it by hand)",
                self.path.display(),
                self.old,
                self.old
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "fuseproxy-bench-uring-param.{}.{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn set_then_restored_on_drop() {
        let d = temp("restore");
        let p = d.join("enable_uring");
        std::fs::write(&p, "N\n").unwrap();
        {
            let g = EnableUring::set(&p).unwrap();
            assert_eq!(g.old(), "N");
            assert_eq!(std::fs::read_to_string(&p).unwrap().trim(), "Y");
        }
        assert_eq!(std::fs::read_to_string(&p).unwrap().trim(), "N");
        // Already Y: left Y.
        std::fs::write(&p, "Y\n").unwrap();
        drop(EnableUring::set(&p).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap().trim(), "Y");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_file_is_named() {
        let d = temp("missing");
        let p = d.join("enable_uring");
        let e = EnableUring::set(&p).unwrap_err();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("does not exist"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
