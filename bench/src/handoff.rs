//! What one hand-off between two processes costs on this machine: the
//! floor under every FUSE round trip, which the proxy pays twice more than
//! a direct mount (kernel → proxy → backend → proxy → kernel).
//!
//! Two threads bounce a byte over a pair of pipes, pinned to one CPU, then
//! to two. A thread switch and a process switch cost the same here (checked
//! with a forked echo), and threads need no clean-up. Beside the time, the
//! CPU the bouncing thread spends per round trip: one wake-up it makes and
//! one wait it is woken from. Under load, where no idle CPU hides it, that
//! is what each hand-off costs the machine; on a VM whose idle vCPUs halt,
//! a wake-up across CPUs is an interrupt through the hypervisor, paid
//! partly by the waker.

use std::fs::File;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Round trips per measurement; a few hundred milliseconds at worst.
const TRIPS: u32 = 20_000;

/// What `measure` gives, in µs.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    /// Time per one-way hand-off.
    pub latency: f64,
    /// CPU time of one of the two threads per round trip.
    pub cpu: f64,
}

/// The cost of a hand-off with both threads on `a` and `b` (the same CPU or
/// two). `None` if a CPU or the thread's CPU clock cannot be used.
fn measure(a: usize, b: usize) -> Option<Cost> {
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
        let cpu0 = thread_cpu()?;
        let start = Instant::now();
        for _ in 0..TRIPS {
            to_echo_w.write_all(&byte).ok()?;
            back_r.read_exact(&mut byte).ok()?;
        }
        Some((start.elapsed(), thread_cpu()? - cpu0))
    })();
    // On failure the pipe closes and the echo thread ends on EOF.
    drop(to_echo_w);
    let echoed = echo.join().ok().flatten();
    let (took, cpu): (Duration, Duration) = result?;
    echoed?;
    let per_trip = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(TRIPS);
    Some(Cost {
        latency: per_trip(took) / 2.0,
        cpu: per_trip(cpu),
    })
}

/// CPU time of the calling thread so far.
fn thread_cpu() -> Option<Duration> {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
        .ok()
        .map(Duration::from)
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

/// Hand-off cost on one CPU and across two (CPUs 0 and 1). Runs on helper
/// threads, so the caller's own affinity is untouched.
pub fn probe() -> (Option<Cost>, Option<Cost>) {
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
