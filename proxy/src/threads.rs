//! Spawning the proxy's threads so that they have started when the spawn
//! returns.
//!
//! A new thread allocates as it starts (its name for the stack-overflow
//! handler, its thread-local state) whenever the scheduler first runs it,
//! which under load can be long after `spawn` returned: seen as a policy
//! reloader's start-up counted inside a test's window of "no allocation on
//! the forwarding path". Waiting for the thread's first step puts that
//! start-up where it belongs, before the session serves.

use std::sync::mpsc::sync_channel;
use std::thread::{Builder, JoinHandle};

/// `builder.spawn(body)`, returning once the thread runs `body`.
pub fn spawn_started<T, F>(builder: Builder, body: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (started, wait) = sync_channel::<()>(1);
    let handle = builder.spawn(move || {
        let _ = started.send(());
        drop(started);
        body()
    })?;
    // Err only if the thread ended without sending, which it cannot
    // before running `body`.
    let _ = wait.recv();
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// The body runs, on the thread named by the builder. That the spawn
    /// returns only once the thread runs is not shown here: a plain spawn
    /// also passes, unless the thread is late to start, which a test cannot
    /// arrange; the loaded `deadlines` loop of 7507a22 showed it.
    #[test]
    fn the_body_runs_on_the_named_thread() {
        let release = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&release);
        let h = spawn_started(Builder::new().name("t".into()), move || {
            while !r.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            std::thread::current().name().map(str::to_owned)
        })
        .unwrap();
        release.store(true, Ordering::Release);
        assert_eq!(h.join().unwrap().as_deref(), Some("t"));
    }
}
