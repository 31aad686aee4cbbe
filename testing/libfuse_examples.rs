//! libfuse's examples, built at test time: shared by the test suites of
//! the proxy and of the capture tools (included by `#[path]` from each
//! crate's `tests/common`, since neither crate's tests can depend on the
//! other's).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where libfuse3-dev ships its examples (Debian package `libfuse3-dev`).
pub const EXAMPLES_DIR: &str = "/usr/share/doc/libfuse3-dev/examples";

/// libfuse's `passthrough_ll` example, compiled once per test binary.
///
/// Needs `gcc`, `pkg-config` and `libfuse3-dev`.
pub fn passthrough_ll() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_example("passthrough_ll"))
}

/// Compiles `EXAMPLES_DIR/NAME.c` into `CARGO_TARGET_TMPDIR/NAME` unless it
/// is already there. The output is written under a unique name and renamed
/// into place, so concurrent test binaries (and tests) never see a partial
/// file.
pub fn build_example(name: &str) -> PathBuf {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&out_dir).expect("create CARGO_TARGET_TMPDIR");
    let out = out_dir.join(name);
    if out.exists() {
        return out;
    }
    let src = Path::new(EXAMPLES_DIR).join(format!("{name}.c"));
    assert!(
        src.exists(),
        "{} is missing: install the Debian package libfuse3-dev",
        src.display()
    );
    let flags = Command::new("pkg-config")
        .args(["fuse3", "--cflags", "--libs"])
        .output()
        .expect("run pkg-config (install the Debian package pkg-config)");
    assert!(
        flags.status.success(),
        "pkg-config fuse3 failed: {}",
        String::from_utf8_lossy(&flags.stderr)
    );
    let flags = String::from_utf8(flags.stdout).expect("pkg-config output is UTF-8");
    // Unique per process and per call: two tests of one binary may build
    // the same example at once, and the last rename simply wins.
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out_dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let gcc = Command::new("gcc")
        .arg("-O2")
        .arg("-I")
        .arg(EXAMPLES_DIR)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .args(flags.split_whitespace())
        .output()
        .expect("run gcc (install the Debian package gcc)");
    assert!(
        gcc.status.success(),
        "building {name} failed:\n{}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    fs::rename(&tmp, &out).expect("rename the built example into place");
    out
}
