//! Shared by the harness's tests.

use std::path::PathBuf;

/// The harness under test and the debug proxy next to it (`cargo test
/// --workspace` builds both); a missing proxy is one clear failure.
pub fn bench_and_proxy() -> (PathBuf, PathBuf) {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_fuseproxy-bench"));
    let proxy = exe.with_file_name("fuseproxy");
    assert!(
        proxy.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        proxy.display()
    );
    (exe, proxy)
}
