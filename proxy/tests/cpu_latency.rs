//! `--cpu-latency US` end to end, over libfuse's passthrough_ll: while
//! `stat` calls flow through the mount, the machine's CPU latency limit (what
//! reading /dev/cpu_dma_latency gives) is US; a little after they stop it is
//! back to what it was; and the mount answers as usual meanwhile. The limit
//! is machine-wide: the test skips when the device cannot be opened or when
//! something else already holds a limit as low, and the proxy's request
//! ends with its descriptor, so nothing is left set, a failure included.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{wait_until, Mode, MountBuilder};

const DEVICE: &str = "/dev/cpu_dma_latency";
/// The proxy releases its limit 100–200 ms after the last request.
const RELEASE_BOUND: Duration = Duration::from_secs(5);

fn current_limit() -> Option<i32> {
    let b = fs::read(DEVICE).ok()?;
    Some(i32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

#[test]
fn the_limit_holds_while_requests_flow_and_is_released_after() {
    common::require_root_and_fuse();
    let Some(before) = current_limit() else {
        println!("skipping: {DEVICE} cannot be read here");
        return;
    };
    if before <= 3 {
        println!("skipping: a limit of {before} µs is already in force on this machine");
        return;
    }
    let m = MountBuilder::passthrough(Mode::Proxy, &["-o", "cache=never"])
        .proxy_args(["--cpu-latency", "3"])
        .mount();
    fs::write(m.backing_path("f"), b"hello").unwrap();
    assert!(
        wait_until(RELEASE_BOUND, || current_limit() == Some(before)),
        "the limit is {:?} after mounting and one request, not {before} again",
        current_limit()
    );

    // Stats in a loop: the limit must be 3 µs while they run.
    let mut seen = Vec::new();
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        for _ in 0..20 {
            assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 5);
        }
        seen.push(current_limit());
    }
    assert!(
        seen.iter().all(|l| *l == Some(3)),
        "limits seen while requests flowed: {seen:?}\n{}",
        m.proxy_log()
    );

    let quiet = Instant::now();
    assert!(
        wait_until(RELEASE_BOUND, || current_limit() == Some(before)),
        "still {:?} {RELEASE_BOUND:?} after the last request (was {before})\n{}",
        current_limit(),
        m.proxy_log()
    );
    eprintln!("released {:?} after the last request", quiet.elapsed());
    let log = m.proxy_log();
    assert!(
        log.contains("--cpu-latency 3: while requests flow"),
        "no start-up line:\n{log}"
    );
}
