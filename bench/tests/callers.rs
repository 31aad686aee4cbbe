//! `--callers`: a smoke run with two levels reports every parallel workload
//! at both, with the ratio to direct at the same level and, on each proxy
//! row, the proxy's CPU time per request; a workload that runs with one
//! caller only is reported at P = 1 alone, with a note saying so. Smoke
//! sizes, bounded: the run is killed after two minutes.
//!
//! Measures the debug proxy next to this binary (`cargo test --workspace`
//! builds it); needs root and /dev/fuse, as the harness does.

use std::io::Read;
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// Runs the harness, killing it (by its pid) if it outlives `LIMIT`.
/// Returns its exit code and stdout + stderr.
fn bench(args: &[&str]) -> (Option<i32>, String) {
    let (exe, proxy) = common::bench_and_proxy();
    let dir = std::env::temp_dir().join(format!("fuseproxy-bench-callers.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_file = dir.join("out");
    let err_file = dir.join("err");
    let mut child = Command::new(&exe)
        .args(args)
        .arg("--proxy")
        .arg(&proxy)
        .arg("--dir")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .expect("run fuseproxy-bench");
    let end = Instant::now() + LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st);
        }
        if Instant::now() >= end {
            // SIGTERM first: the harness unmounts and stops its daemons.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            std::thread::sleep(Duration::from_secs(10));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut text = String::new();
    for f in [&out_file, &err_file] {
        let _ = std::fs::File::open(f).and_then(|mut f| f.read_to_string(&mut text));
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.is_some(), "still running after {LIMIT:?}:\n{text}");
    (status.and_then(|s| s.code()), text)
}

/// The table's rows: (workload, config, P, columns), the workload carried
/// down from the row that names it.
fn rows(text: &str) -> Vec<(String, String, u32, Vec<String>)> {
    let mut out = Vec::new();
    let mut in_table = false;
    let mut workload = String::new();
    for line in text.lines() {
        if line.starts_with("workload ") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        // A row is [workload] config P ...: P is the first number.
        let num = |i: usize| cols.get(i).is_some_and(|c| c.parse::<u32>().is_ok());
        let (w, rest) = if num(1) {
            (None, &cols[..])
        } else if num(2) {
            (Some(cols[0]), &cols[1..])
        } else {
            break;
        };
        if let Some(w) = w {
            workload = w.to_string();
        }
        out.push((
            workload.clone(),
            rest[0].to_string(),
            rest[1].parse().unwrap(),
            rest[2..].iter().map(|s| s.to_string()).collect(),
        ));
    }
    out
}

#[test]
fn two_levels_of_callers_are_reported() {
    let (code, text) = bench(&[
        "--smoke",
        "--no-save",
        "--configs",
        "direct,proxy",
        "--workloads",
        "meta-stat,small-read,rand-read,seq-read",
        "--callers",
        "1,2",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let header = text
        .lines()
        .find(|l| l.starts_with("workload "))
        .unwrap_or_else(|| panic!("no table:\n{text}"));
    assert!(
        header.contains(" P ") && header.ends_with("CPU µs/req"),
        "{header}"
    );
    let rows = rows(&text);
    for w in ["meta-stat", "small-read", "rand-read"] {
        for p in [1, 2] {
            for c in ["direct", "proxy"] {
                let r = rows
                    .iter()
                    .find(|r| r.0 == w && r.1 == c && r.2 == p)
                    .unwrap_or_else(|| panic!("no row {w} {c} P={p}:\n{text}"));
                // median s, ratio, ..., and last the CPU per request: a
                // number on proxy rows, "-" on direct's.
                let cpu = r.3.last().unwrap();
                if c == "proxy" {
                    assert!(cpu.parse::<f64>().is_ok(), "{w} {c} P={p}: {cpu}\n{text}");
                } else {
                    assert_eq!(r.3[1], "1.00", "{w} direct P={p}\n{text}");
                    assert_eq!(cpu, "-", "{w} {c} P={p}\n{text}");
                }
            }
        }
    }
    // seq-read runs with one caller only, and the report says so.
    assert!(rows.iter().any(|r| r.0 == "seq-read" && r.2 == 1), "{text}");
    assert!(
        !rows.iter().any(|r| r.0 == "seq-read" && r.2 == 2),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("note: --callers applies to") && l.contains("seq-read")),
        "{text}"
    );
}
