//! Policy files for tests, and the backend a test stops under one.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use std::time::Duration;

use super::{all_threads_stopped, send_signal, wait_until, Mount, ProcId, Signal};

/// A policy file in its own temporary directory, removed when dropped.
pub struct PolicyFile {
    _dir: tempfile::TempDir,
    /// The file.
    pub path: PathBuf,
}

impl PolicyFile {
    /// Writes `text` to a new file.
    pub fn new(text: &str) -> PolicyFile {
        let dir = tempfile::Builder::new()
            .prefix("fuseproxy-policy.")
            .tempdir()
            .unwrap();
        let path = dir.path().join("policy.toml");
        fs::write(&path, text).unwrap();
        PolicyFile { _dir: dir, path }
    }

    /// The path as `--policy` takes it.
    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Replaces the text: written whole, then renamed, so that a reload
    /// never reads half a file.
    pub fn rewrite(&self, text: &str) {
        let tmp = self.path.with_extension("new");
        fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .unwrap();
        fs::rename(&tmp, &self.path).unwrap();
    }
}

/// The proxy's backend: its one passthrough_ll descendant.
pub fn passthrough_backend(m: &Mount) -> ProcId {
    let found: Vec<ProcId> = m
        .descendants()
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{}/comm", p.pid))
                .is_ok_and(|c| c.trim() == "passthrough_ll")
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one passthrough_ll under the proxy (pid {}), found {found:?}",
        m.pid()
    );
    found[0]
}

/// Sends SIGCONT to a stopped backend when dropped, so that a failing test
/// never leaves it stopped (and the callers blocked on it hung). Declare it
/// after the `Mount`, so that it drops first.
pub struct ContOnDrop(pub ProcId);

impl Drop for ContOnDrop {
    fn drop(&mut self) {
        self.0.signal(Signal::SIGCONT);
    }
}

/// SIGSTOPs `backend` and waits (bounded) until every thread of it has
/// stopped (SIGSTOP is delivered asynchronously); the guard SIGCONTs it.
pub fn stop_backend(backend: ProcId) -> ContOnDrop {
    send_signal(backend.pid, Signal::SIGSTOP).expect("SIGSTOP the backend");
    let cont = ContOnDrop(backend);
    assert!(
        wait_until(Duration::from_secs(5), || all_threads_stopped(backend.pid)),
        "the backend's threads did not all stop within 5 s"
    );
    cont
}
