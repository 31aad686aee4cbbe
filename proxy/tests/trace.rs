//! `--trace` (and `-vv`): every message decoded on stderr, as
//! `fuseproxy-capture decode` prints it, with the proxy's decisions; and
//! nothing of the kind without it.

mod common;

use std::fs;

use common::{Mode, MountBuilder};

fn session(args: &[&str]) -> String {
    let mut m = MountBuilder::passthrough(Mode::Proxy, &[])
        .proxy_args(args)
        .mount();
    if m.mode() != Mode::Proxy {
        return String::new();
    }
    fs::write(m.path("f"), b"traced").unwrap();
    // A time-only update: the proxy answers it and flushes it itself.
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_400_000_000);
    fs::File::options()
        .write(true)
        .open(m.path("f"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"traced");
    m.umount_and_exit()
}

#[test]
fn trace_prints_each_message_and_the_decisions() {
    for args in [&["--trace"][..], &["-vv"][..]] {
        let log = session(args);
        if log.is_empty() {
            return;
        }
        let has = |s: &str| log.lines().any(|l| l.contains(s));
        for want in [
            "K> FUSE_INIT unique=",
            "K> FUSE_CREATE unique=",
            "name=\"f\"",
            "B> FUSE_WRITE unique=",
            "B< unique=",
            "K< unique=",
            "K> FUSE_SETATTR unique=",
            "[answered locally: times async]",
            "(synthesized)",
        ] {
            assert!(has(want), "{args:?}: no line with {want:?}:\n{log}");
        }
    }
}

#[test]
fn without_trace_no_message_is_printed() {
    let log = session(&[]);
    assert!(
        !log.lines()
            .any(|l| l.contains(" K> ") || l.contains("TRCE")),
        "{log}"
    );
}
