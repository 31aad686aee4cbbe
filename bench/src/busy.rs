//! How busy the whole machine was during a workload's timed part, and how
//! many context switches it made: a thread reads /proc/stat's busy ticks and
//! switch count every few milliseconds while the workload runs, and the
//! timed part is taken as the last `seconds` before the child's exit (fio,
//! the worker, tar and find each end their timing just before they exit;
//! fio does not say when its jobs started).
//!
//! With every CPU busy, a workload is bound by CPU time: then the ratio of
//! two configurations' times is about the ratio of the CPU they cost the
//! machine per operation, whatever the latency of one request; the switches
//! per operation show the hand-offs between threads that much of it pays
//! for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::procs::{self, Counts};

/// Time between two readings of /proc/stat (which counts in 10 ms ticks).
const EVERY: Duration = Duration::from_millis(5);

/// A reading: when, and the machine's counters then.
type Reading = (Instant, Counts);

/// The running sampler; `stop` ends it and gives its readings.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Reading>>>,
}

impl Sampler {
    /// Starts reading at once. `None` if /proc/stat cannot be read.
    pub fn start() -> Option<Sampler> {
        let first = (Instant::now(), procs::machine_counters().ok()?);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut v = vec![first];
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(EVERY);
                match procs::machine_counters() {
                    Ok(t) => v.push((Instant::now(), t)),
                    Err(_) => break,
                }
            }
            v
        });
        Some(Sampler {
            stop,
            thread: Some(thread),
        })
    }

    /// Ends the sampler (one last reading first).
    pub fn stop(mut self) -> Readings {
        self.finish()
    }

    fn finish(&mut self) -> Readings {
        self.stop.store(true, Ordering::Relaxed);
        let mut v = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        if let Ok(t) = procs::machine_counters() {
            v.push((Instant::now(), t));
        }
        Readings(v)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.finish();
        }
    }
}

/// The readings of one workload, in time order.
pub struct Readings(Vec<Reading>);

impl Readings {
    /// CPU seconds the machine was busy from `from` to `to`, with the ticks
    /// at each end interpolated between the readings around it; `None`
    /// unless readings surround both ends.
    pub fn busy_s(&self, from: Instant, to: Instant, ticks_per_s: f64) -> Option<f64> {
        let busy = self.between(from, to, |c| c.busy_ticks)?;
        Some(busy / ticks_per_s)
    }

    /// Context switches the machine made from `from` to `to`, interpolated
    /// as `busy_s`.
    pub fn switches(&self, from: Instant, to: Instant) -> Option<f64> {
        self.between(from, to, |c| c.switches)
    }

    fn between(&self, from: Instant, to: Instant, count: fn(&Counts) -> u64) -> Option<f64> {
        let (a, b) = (self.at(from, count)?, self.at(to, count)?);
        Some((b - a).max(0.0))
    }

    fn at(&self, at: Instant, count: fn(&Counts) -> u64) -> Option<f64> {
        let i = self.0.iter().position(|r| r.0 >= at)?;
        let (t1, k1) = (self.0[i].0, count(&self.0[i].1) as f64);
        if t1 == at {
            return Some(k1);
        }
        let (t0, c0) = self.0.get(i.checked_sub(1)?)?;
        let k0 = count(c0) as f64;
        let f = (at - *t0).as_secs_f64() / (t1 - *t0).as_secs_f64();
        Some(k0 + f * (k1 - k0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_interpolated_between_readings() {
        let t = Instant::now();
        let ms = |m: u64| t + Duration::from_millis(m);
        // 100 ticks per second: 2 CPUs busy from 0 to 100 ms, 1 after;
        // 1,000 switches in the first 100 ms, none after.
        let c = |busy_ticks, switches| Counts {
            busy_ticks,
            switches,
        };
        let r = Readings(vec![
            (ms(0), c(1000, 5000)),
            (ms(100), c(1020, 6000)),
            (ms(200), c(1030, 6000)),
        ]);
        let busy = r.busy_s(ms(50), ms(150), 100.0).unwrap();
        assert!((busy - 0.15).abs() < 1e-9, "{busy}");
        assert_eq!(r.busy_s(ms(0), ms(200), 100.0), Some(0.3));
        // Outside the readings: unknown, not a guess.
        assert_eq!(r.busy_s(ms(50), ms(250), 100.0), None);
        assert_eq!(r.busy_s(t - Duration::from_millis(1), ms(50), 100.0), None);
        assert_eq!(r.switches(ms(50), ms(150)), Some(500.0));
        assert_eq!(r.switches(ms(100), ms(200)), Some(0.0));
        assert_eq!(r.switches(ms(50), ms(250)), None);
    }

    #[test]
    fn a_sampler_reads_this_machine() {
        let s = Sampler::start().expect("/proc/stat");
        let from = Instant::now();
        let end = from + Duration::from_millis(60);
        while Instant::now() < end {
            std::hint::spin_loop();
        }
        let to = Instant::now();
        let r = s.stop();
        let busy = r.busy_s(from, to, procs::clk_tck() as f64).unwrap();
        // This thread spun the whole time: at least about one CPU's worth,
        // within /proc/stat's 10 ms ticks.
        assert!(busy >= 0.03, "{busy}");
        // The sampler's own thread slept and woke about 12 times meanwhile.
        let switches = r.switches(from, to).unwrap();
        assert!(switches >= 5.0, "{switches}");
    }
}
