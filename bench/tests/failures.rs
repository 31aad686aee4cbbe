//! The harness's verdict, as the benchmark issue asks: a run where a
//! configuration fails a workload exits 1 and names the workload, the
//! configuration and the error; the same run without the fault exits 0.
//! The fault is a real one: the proxy mounts read-only (`-o ro`), so the
//! small-file workload's first write fails. Smoke sizes: seconds.
//!
//! Measures the debug proxy next to this binary (`cargo test --workspace`
//! builds it); needs root and /dev/fuse, as the harness does.

mod common;

use std::process::{Command, Output};

fn bench(extra: &[&str]) -> Output {
    let (exe, proxy) = common::bench_and_proxy();
    let dir = std::env::temp_dir().join(format!("fuseproxy-bench-test.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(&exe)
        .args([
            "--smoke",
            "--no-save",
            "--configs",
            "proxy",
            "--workloads",
            "small-write",
        ])
        .arg("--proxy")
        .arg(&proxy)
        .arg("--dir")
        .arg(&dir)
        .args(extra)
        .output()
        .expect("run fuseproxy-bench");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

#[test]
fn a_failed_workload_fails_the_run() {
    let out = bench(&["--proxy-arg=-o", "--proxy-arg=ro"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("FAILED:"))
        .unwrap_or_else(|| panic!("no FAILED line:\n{text}"));
    assert!(
        line.contains("small-write on proxy") && line.contains("Read-only file system"),
        "{line}"
    );

    let ok = bench(&[]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(ok.status.code(), Some(0), "{text}");
    assert!(!text.contains("FAILED"), "{text}");
}
