//! What one hand-off between two processes costs on this machine: the
//! floor under every FUSE round trip, which the proxy pays twice more than
//! a direct mount (kernel → proxy → backend → proxy → kernel).
//!
//! Two threads bounce a byte over a pair of pipes, pinned to one CPU, then
//! to two. A thread switch and a process switch cost the same here (checked
//! with a forked echo), and threads need no clean-up.

use std::fs::File;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Round trips per measurement; a few hundred milliseconds at worst.
const TRIPS: u32 = 20_000;

/// Microseconds per one-way hand-off, with both threads on `a` and `b`
/// (the same CPU or two). `None` if a CPU cannot be used.
fn measure(a: usize, b: usize) -> Option<f64> {
    let (mut to_echo_r, mut to_echo_w) = pipe()?;
    let (mut back_r, mut back_w) = pipe()?;
    let echo = std::thread::spawn(move || -> Option<()> {
        pin(b)?;
        let mut byte = [0u8];
        for _ in 0..TRIPS {
            to_echo_r.read_exact(&mut byte).ok()?;
            back_w.write_all(&byte).ok()?;
        }
        Some(())
    });
    let result = (|| {
        pin(a)?;
        let mut byte = [7u8];
        let start = Instant::now();
        for _ in 0..TRIPS {
            to_echo_w.write_all(&byte).ok()?;
            back_r.read_exact(&mut byte).ok()?;
        }
        Some(start.elapsed())
    })();
    // On failure the pipe closes and the echo thread ends on EOF.
    drop(to_echo_w);
    let echoed = echo.join().ok().flatten();
    let took: Duration = result?;
    echoed?;
    Some(took.as_secs_f64() * 1e6 / f64::from(TRIPS) / 2.0)
}

fn pipe() -> Option<(File, File)> {
    let (r, w) = nix::unistd::pipe().ok()?;
    Some((File::from(r), File::from(w)))
}

fn pin(cpu: usize) -> Option<()> {
    let mut set = CpuSet::new();
    set.set(cpu).ok()?;
    sched_setaffinity(Pid::from_raw(0), &set).ok()
}

/// Hand-off cost on one CPU and across two (CPUs 0 and 1), in µs. Runs on
/// helper threads, so the caller's own affinity is untouched.
pub fn probe() -> (Option<f64>, Option<f64>) {
    let on_helper = |a, b| {
        std::thread::spawn(move || measure(a, b))
            .join()
            .ok()
            .flatten()
    };
    let same = on_helper(0, 0);
    let cross = if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        on_helper(0, 1)
    } else {
        None
    };
    (same, cross)
}
