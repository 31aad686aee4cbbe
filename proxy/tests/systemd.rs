//! Under systemd: readiness and stopping over `NOTIFY_SOCKET` (a datagram
//! socket of the test's own stands for systemd), SIGUSR1's status, and
//! SIGHUP as a reload that does not stop the mount.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{wait_until, Mode, MountBuilder, Signal};

const BOUND: Duration = Duration::from_secs(20);

/// The next notification within BOUND.
fn next(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(BOUND)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification within the bound");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_after_the_mount_answers_status_on_sigusr1_stopping_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let b = MountBuilder::passthrough(Mode::Proxy, &[]).env("NOTIFY_SOCKET", &path);
    if b.mode() != Mode::Proxy {
        return;
    }
    let mut m = b.start();

    let ready = next(&sock);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=mounted "), "{ready:?}");
    // Ready means the mount answers now.
    let started = Instant::now();
    assert!(m.is_mounted(), "READY=1 before the mount exists");
    std::fs::metadata(m.mountpoint()).expect("a stat of the mount once READY=1 came");
    assert!(started.elapsed() < BOUND);
    std::fs::write(m.path("f"), b"x").unwrap();

    m.send_signal(Signal::SIGUSR1).unwrap();
    let status = next(&sock);
    assert!(
        status.starts_with("STATUS=mounted ") && status.contains(" requests, "),
        "{status:?}"
    );

    // A reload with no policy file: the mount stays.
    m.send_signal(Signal::SIGHUP).unwrap();
    assert!(
        wait_until(BOUND, || m
            .proxy_log()
            .contains("SIGHUP: no policy file to reload")),
        "{}",
        m.proxy_log()
    );
    assert!(m.is_mounted(), "SIGHUP under systemd stopped the mount");
    assert_eq!(std::fs::read(m.path("f")).unwrap(), b"x");

    m.send_signal(Signal::SIGTERM).unwrap();
    let stopping = next(&sock);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let st = m.wait_exit(BOUND).expect("the proxy ends");
    assert!(st.success(), "{st:?}\n{}", m.proxy_log());
    // The daemon was not given the socket: only the proxy spoke on it.
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        let s = String::from_utf8_lossy(&buf[..n]);
        assert!(
            s.contains("STATUS=mounted") || s.contains("STOPPING=1"),
            "{s:?}"
        );
    }
}
