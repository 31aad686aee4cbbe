//! `--cpu-latency`: while the kernel's requests flow, a CPU latency request
//! (PM QoS, /dev/cpu_dma_latency) that keeps idle CPUs from sleeping deeper
//! than the given wake-up latency.
//!
//! Why: every request crosses four hand-offs (caller, proxy, daemon, proxy,
//! caller), and a hand-off to a CPU that halted costs a wake-up from halt;
//! in a VM that is an exit to the hypervisor on both sides (measured here:
//! 32-44 µs of latency, and most of the proxy's CPU per request). A limit
//! of 0 makes idle CPUs poll in the kernel's idle loop instead: a wake-up
//! is a flag seen by the polling CPU, no interrupt, and the polling is
//! idle time that yields at once to any task, unlike the proxy's own
//! `--spin-us`. The cost is power, on every CPU: hence only while requests
//! flow, released after [`HOLD`] to [`2 * HOLD`] without one, and off by
//! default.
//!
//! The request lives as long as the descriptor: however the proxy ends,
//! the kernel drops it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

/// The device of the kernel's global CPU latency requests.
pub const DEVICE: &str = "/dev/cpu_dma_latency";

/// How long without a request before the limit is released (at most twice
/// this: see [`CpuLatency::tick`]).
pub const HOLD: Duration = Duration::from_millis(100);

/// The kernel's "no limit" (PM_QOS_CPU_LATENCY_DEFAULT_VALUE, 2000 s in
/// µs): what an open descriptor asks for until it writes.
const NO_LIMIT: i32 = 2_000_000_000;

/// Whether requests still flow, for a setting held while they do: the
/// forwarding side [`keep`](Self::keep)s it (a flag) or
/// [`start`](Self::start)s it, the main thread looks at
/// [`check_at`](Self::check_at) and [`tick`](Self::tick) says when no
/// request came for one to two `hold`s.
pub struct Flow {
    hold: Duration,
    /// A request came since the last check.
    busy: bool,
    /// While held: when to look whether requests stopped.
    check_at: Option<Instant>,
}

impl Flow {
    pub const fn new(hold: Duration) -> Flow {
        Flow {
            hold,
            busy: false,
            check_at: None,
        }
    }

    /// A request, while the setting is held: keeps it. False when it is
    /// not held (then [`start`](Self::start) once it is taken).
    pub fn keep(&mut self) -> bool {
        self.busy = self.check_at.is_some();
        self.busy
    }

    /// The setting was just taken: the first check is one `hold` away.
    pub fn start(&mut self, now: Instant) {
        self.busy = false;
        self.check_at = Some(now + self.hold);
    }

    /// While held: when the main thread must call [`tick`](Self::tick).
    pub fn check_at(&self) -> Option<Instant> {
        self.check_at
    }

    /// True when the setting is to go: no request since the last check.
    /// Otherwise looks again one `hold` later (or not yet due).
    pub fn tick(&mut self, now: Instant) -> bool {
        if self.check_at.is_none_or(|t| t > now) {
            return false;
        }
        if std::mem::take(&mut self.busy) {
            self.check_at = Some(now + self.hold);
            return false;
        }
        self.check_at = None;
        true
    }
}

/// The proxy's latency request and when it is held. Driven under the
/// session's lock: [`request_seen`](Self::request_seen) by the forwarding
/// threads for every request (a flag, and one write(2) when the limit is
/// taken), [`tick`](Self::tick) by the main thread at
/// [`check_at`](Self::check_at). Neither allocates.
pub struct CpuLatency {
    file: File,
    limit_us: i32,
    flow: Flow,
}

impl CpuLatency {
    /// Opens the device (root only, normally) for a limit of `limit_us`,
    /// not yet applied.
    pub fn open(limit_us: u32) -> std::io::Result<CpuLatency> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(DEVICE)?;
        Ok(CpuLatency {
            file,
            limit_us: i32::try_from(limit_us).unwrap_or(i32::MAX),
            flow: Flow::new(HOLD),
        })
    }

    /// A request from the kernel: takes the limit if it is not held.
    /// Returns true when it was just taken (the main thread's next check
    /// is then due: see `check_at`).
    pub fn request_seen(&mut self) -> std::io::Result<bool> {
        if self.flow.keep() {
            return Ok(false);
        }
        self.apply(self.limit_us)?;
        self.flow.start(Instant::now());
        Ok(true)
    }

    /// When the main thread must call [`tick`](Self::tick), while held.
    pub fn check_at(&self) -> Option<Instant> {
        self.flow.check_at()
    }

    /// Releases the limit if no request came since the last check, else
    /// looks again after [`HOLD`].
    pub fn tick(&mut self, now: Instant) -> std::io::Result<()> {
        if self.flow.tick(now) {
            return self.apply(NO_LIMIT);
        }
        Ok(())
    }

    /// The kernel takes the new value as a binary s32 of exactly 4 bytes.
    fn apply(&mut self, us: i32) -> std::io::Result<()> {
        self.file.write_all(&us.to_ne_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_ends_at_the_first_check_without_a_request() {
        let hold = Duration::from_millis(100);
        let mut f = Flow::new(hold);
        assert!(!f.keep(), "nothing held yet");
        let t0 = Instant::now();
        f.start(t0);
        assert_eq!(f.check_at(), Some(t0 + hold));
        assert!(f.tick(t0 + hold), "no request since it started: over");
        // A check with no request in between ends it; one with a request
        // puts it off by a hold.
        let mut g = Flow::new(hold);
        g.start(t0);
        assert!(g.keep());
        assert!(!g.tick(t0 + hold - Duration::from_millis(1)), "not due");
        assert!(!g.tick(t0 + hold));
        assert_eq!(g.check_at(), Some(t0 + 2 * hold));
        assert!(g.tick(t0 + 2 * hold));
        assert_eq!(g.check_at(), None);
        assert!(!g.keep(), "over: the next request takes it again");
    }

    /// The limit now in force, from every request on the machine (reading the
    /// device gives it), in µs.
    fn current_limit() -> std::io::Result<i32> {
        let mut b = [0u8; 4];
        std::io::Read::read_exact(&mut File::open(DEVICE)?, &mut b)?;
        Ok(i32::from_ne_bytes(b))
    }

    /// Held from the first request, kept while requests come, released
    /// after a check with none; the machine's limit follows.
    #[test]
    fn the_limit_is_held_while_requests_come_and_released_after() {
        let mut l = match CpuLatency::open(7) {
            Ok(l) => l,
            Err(e) => {
                println!("skipping: cannot open {DEVICE}: {e}");
                return;
            }
        };
        let before = current_limit().unwrap();
        if before <= 7 {
            println!("skipping: another request already holds the limit at {before} µs");
            return;
        }
        assert!(
            l.request_seen().unwrap(),
            "the first request takes the limit"
        );
        assert_eq!(current_limit().unwrap(), 7);
        assert!(!l.request_seen().unwrap(), "taken once");
        let t = l.check_at().expect("a check is due while held");
        l.tick(t).unwrap();
        assert_eq!(
            current_limit().unwrap(),
            7,
            "a request came since: still held"
        );
        let t = l.check_at().expect("checked again later");
        l.tick(t - Duration::from_millis(1)).unwrap();
        assert_eq!(l.check_at(), Some(t), "not due yet: nothing changes");
        l.tick(t).unwrap();
        assert_eq!(l.check_at(), None);
        assert_eq!(
            current_limit().unwrap(),
            before,
            "released after a quiet check"
        );
        assert!(l.request_seen().unwrap(), "taken again by the next request");
        drop(l);
        assert_eq!(
            current_limit().unwrap(),
            before,
            "closing drops the request"
        );
    }
}
