//! `--threads N`: N readers of the kernel's requests, each on its own clone
//! of the device, and answers written back to the clone that read them.
//!
//! Eight callers read and write their own files at once through
//! passthrough_ll `cache=never` (every call reaches the daemon); every
//! result must be right, and every reader thread must have taken part: its
//! clone read requests and got their answers (a reply written to another
//! clone would be refused by the kernel and its caller would hang, which
//! the bounded joins below would catch).

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::{Mode, MountBuilder};

const READERS: u32 = 3;
const CALLERS: usize = 8;
const ROUNDS: usize = 300;
/// Generous: the whole workload takes well under a second here.
const BOUND: Duration = Duration::from_secs(60);

/// Context switches of each of the proxy's `kernel-N` threads, by name.
fn reader_switches(pid: i32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in fs::read_dir(format!("/proc/{pid}/task")).expect("the proxy's threads") {
        let t = t.expect("a thread").path();
        let name = fs::read_to_string(t.join("comm")).unwrap_or_default();
        let name = name.trim().to_string();
        if !name.starts_with("kernel-") {
            continue;
        }
        let status = fs::read_to_string(t.join("status")).unwrap_or_default();
        let switches = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        out.push((name, switches));
    }
    out.sort();
    out
}

#[test]
fn every_reader_forwards_and_answers_on_its_own_clone() {
    let m = MountBuilder::passthrough(Mode::Proxy, &["-o", "cache=never"])
        .threads(READERS)
        .mount();
    if m.mode() != Mode::Proxy {
        return;
    }
    let log = m.proxy_log();
    assert!(
        log.contains(&format!("threads={READERS}")),
        "the start-up line does not say threads={READERS}:\n{log}"
    );
    let before = reader_switches(m.pid());
    assert_eq!(
        before.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        (0..READERS)
            .map(|i| format!("kernel-{i}"))
            .collect::<Vec<_>>(),
        "one kernel-N thread per reader"
    );

    let started = Instant::now();
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let path = m.path(format!("f{c}"));
            std::thread::spawn(move || -> Result<(), String> {
                let f = fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("open {}: {e}", path.display()))?;
                for r in 0..ROUNDS {
                    let want = [(c * 31 + r) as u8; 512];
                    let at = (r % 16 * 512) as u64;
                    f.write_all_at(&want, at)
                        .map_err(|e| format!("write: {e}"))?;
                    let mut got = [0u8; 512];
                    f.read_exact_at(&mut got, at)
                        .map_err(|e| format!("read: {e}"))?;
                    if got != want {
                        return Err(format!("caller {c} round {r}: read back other bytes"));
                    }
                    fs::metadata(&path).map_err(|e| format!("stat: {e}"))?;
                }
                Ok(())
            })
        })
        .collect();
    for (c, h) in callers.into_iter().enumerate() {
        while !h.is_finished() {
            assert!(
                started.elapsed() < BOUND,
                "caller {c} still runs after {BOUND:?}: an answer went astray?\n{}",
                m.proxy_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        h.join().expect("caller panicked").unwrap();
    }

    let after = reader_switches(m.pid());
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        // Each request read blocks the reader again: a reader that took
        // part switched many times; an idle one about never.
        assert!(
            a - b >= 50,
            "{name} hardly ran ({} context switches over {} calls): before {before:?}, after {after:?}",
            a - b,
            CALLERS * ROUNDS * 3
        );
    }
    eprintln!("context switches per reader: before {before:?}, after {after:?}");
}
