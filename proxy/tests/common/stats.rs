//! The proxy's `stats:` log lines (SIGUSR1 dumps), read by tests.

use std::time::Duration;

use super::{wait_until, Mount, Signal};

/// Lines of the `stats:` dumps so far.
pub fn stats_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("stats: requests="))
        .map(str::to_owned)
        .collect()
}

/// `key=N` from a stats line.
pub fn stat_field(line: &str, key: &str) -> u64 {
    let pat = format!(" {key}=");
    let at = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    line[at + pat.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("bad {key}= in {line:?}"))
}

/// SIGUSR1, then the new stats line (bounded wait).
pub fn dump_stats(m: &mut Mount) -> String {
    let before = stats_lines(&m.proxy_log()).len();
    m.send_signal(Signal::SIGUSR1)
        .expect("SIGUSR1 to the proxy");
    assert!(
        wait_until(Duration::from_secs(5), || stats_lines(&m.proxy_log()).len()
            > before),
        "no stats line within 5 s of SIGUSR1"
    );
    stats_lines(&m.proxy_log()).pop().unwrap()
}
