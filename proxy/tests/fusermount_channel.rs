//! The fusermount channel (`--channel fusermount`), for kernels without
//! seccomp fd injection: the daemon runs in a mount namespace of its own
//! where the proxy's executable stands at every fusermount program, without
//! CAP_SYS_ADMIN, so that its library falls back to fusermount and the
//! proxy makes the mount.
//!
//! - An old kernel, shown to the proxy with `setarch --uname-2.6` (the
//!   kernel reports release 2.6.x to that process tree): `--channel
//!   seccomp` is refused with one line and exit status 2, and `auto` takes
//!   the fusermount channel, says why, and a libfuse3 daemon works end to
//!   end and exits 0.
//! - Through the stand-in the daemon may mount MOUNTPOINT once and unmount
//!   it; a fusermount of anything else is refused, the daemon sees the
//!   failure, and the proxy logs it. The root daemon has no CAP_SYS_ADMIN.
//! - The stand-in run by hand, outside a proxy's backend, says what it is
//!   and fails.
//!
//! The daemon matrix (tests/daemons.rs) runs every daemon through this
//! channel too, and tests/backend_user.rs runs it under `--backend-user`.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::{run_bounded, Mode, MountBuilder, Signal};

const EXIT_BOUND: Duration = Duration::from_secs(15);

/// `setarch ARCH --uname-2.6 fuseproxy ARGS...`: the proxy (and its
/// backend) see kernel release 2.6.x.
fn old_kernel_proxy_args(args: &[&str]) -> Vec<String> {
    let arch = std::env::consts::ARCH.to_string();
    let mut v = vec![
        arch,
        "--uname-2.6".to_string(),
        common::proxy_bin().to_string_lossy().into_owned(),
    ];
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

fn setarch_works() -> bool {
    let ok = run_bounded(
        Command::new("setarch").args([std::env::consts::ARCH, "--uname-2.6", "uname", "-r"]),
        Duration::from_secs(10),
    )
    .is_some_and(|(st, out, _)| st.success() && out.starts_with("2.6."));
    if !ok {
        eprintln!("SKIPPED: setarch --uname-2.6 does not work here (util-linux)");
    }
    ok
}

#[test]
fn old_kernel_refuses_seccomp_by_name_in_one_line() {
    if !setarch_works() {
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap();
    let args = old_kernel_proxy_args(&["--channel", "seccomp", m, "--", "true", m]);
    let (st, out, err) = run_bounded(Command::new("setarch").args(&args), Duration::from_secs(20))
        .expect("the proxy hung instead of refusing");
    eprintln!("stdout: {out}\nstderr: {err}");
    assert_eq!(st.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    assert!(
        lines[0].contains("--channel seccomp: kernel 2.6 lacks seccomp fd injection"),
        "{err}"
    );
    assert!(!common::is_mounted(mnt.path()));
}

#[test]
fn old_kernel_auto_takes_fusermount_and_libfuse3_works() {
    if !setarch_works() || Mode::Proxy.effective() != Mode::Proxy {
        return;
    }
    let pll = common::passthrough_ll().to_str().unwrap().to_string();
    let mut m = MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args(old_kernel_proxy_args(&[
            "{mnt}",
            "--",
            &pll,
            "-f",
            "-o",
            "source={backing}",
            "{mnt}",
        ]))
        .program("setarch")
        .mount();
    let log = m.proxy_log();
    assert!(
        log.contains("channel fusermount (auto: kernel 2.6 lacks seccomp fd injection"),
        "{log}"
    );
    assert!(log.contains("(fusermount3): made on the proxy's"), "{log}");
    fs::write(m.path("f"), b"old kernel").unwrap();
    assert_eq!(fs::read(m.backing_path("f")).unwrap(), b"old kernel");
    let info = m.mount_info().unwrap();
    assert_eq!(info.fstype, "fuse.passthrough_ll");
    assert_eq!(m.umount().map(|s| s.success()), Some(true));
    let st = m.wait_exit(EXIT_BOUND).expect("the proxy did not exit");
    let log = m.proxy_log();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(log.contains("exited with status 0"), "{log}");
}

#[test]
fn the_stand_in_serves_mountpoint_only_and_the_proxy_logs_refusals() {
    if Mode::Proxy.effective() != Mode::Proxy {
        return;
    }
    let pll = common::passthrough_ll().to_str().unwrap().to_string();
    // As the daemon: fusermount3 for another directory, and an unmount of
    // /, both through the stand-in; then the capability bounding set; then
    // passthrough_ll, which mounts MOUNTPOINT through it.
    let script = format!(
        "mkdir -p \"$1/other\"; \
         fusermount3 -o ro -- \"$1/other\" 2>&1 | sed 's/^/other: /'; \
         fusermount3 -u / 2>&1 | sed 's/^/root: /'; \
         grep CapBnd /proc/self/status; \
         exec {pll} -f -o source=\"$1/backing\" \"$2\""
    );
    let mut m = MountBuilder::new(Mode::Proxy, ["sh", "-c", &script, "sh", "{dir}", "{mnt}"])
        .proxy_args(["--channel", "fusermount"])
        .mount();
    let out = m.stdout_log();
    eprintln!("the daemon saw:\n{out}");
    assert!(out.contains("other: fusermount3: only MOUNTPOINT"), "{out}");
    assert!(
        out.contains("root: fusermount3: only MOUNTPOINT may be unmounted"),
        "{out}"
    );
    let bnd = out
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd line");
    let bnd = u64::from_str_radix(bnd.trim(), 16).unwrap();
    assert_eq!(bnd & (1 << 21), 0, "CAP_SYS_ADMIN is in the bounding set");
    assert!(common::mount_info(&m.dir().join("other")).is_none());
    let log = m.proxy_log();
    assert!(
        log.lines()
            .any(|l| l.contains("refused 'fusermount -o ro -- ")
                && l.contains("/other'")
                && l.contains("only MOUNTPOINT")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("refused 'fusermount -u /'") && l.contains("only MOUNTPOINT")),
        "{log}"
    );
    fs::write(m.path("ok"), b"fine").unwrap();
    assert_eq!(fs::read(m.backing_path("ok")).unwrap(), b"fine");
    m.send_signal(Signal::SIGTERM).unwrap();
    let st = m.wait_exit(EXIT_BOUND).expect("the proxy did not exit");
    assert_eq!(st.code(), Some(0), "{}", m.proxy_log());
}

#[test]
fn the_stand_in_outside_a_proxy_says_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("fusermount3");
    std::os::unix::fs::symlink(common::proxy_bin(), &link).unwrap();
    let (st, _, err) = run_bounded(
        Command::new(&link).args(["-o", "ro", "--", "/nonexistent"]),
        Duration::from_secs(20),
    )
    .expect("the stand-in hung");
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains("fusermount3: this is fuseproxy standing in for fusermount")
            && err.contains("--channel fusermount"),
        "{err}"
    );
    let (st, out, _) = run_bounded(Command::new(&link).arg("-V"), Duration::from_secs(10)).unwrap();
    assert!(st.success() && out.contains("fuseproxy"), "{out}");
}

/// In a private mount namespace (unshare -m) where /dev/null stands over
/// every fusermount program: `--channel fusermount` is refused with one
/// line and exit status 2, and `auto` on an "old kernel" falls back to fd
/// and says both reasons.
#[test]
fn without_a_fusermount_the_channel_is_refused_and_auto_takes_fd() {
    if !setarch_works() {
        return;
    }
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap().to_string();
    let proxy = common::proxy_bin().to_string_lossy().into_owned();
    let arch = std::env::consts::ARCH;
    // Hide each fusermount program that exists (as the proxy looks for
    // them), then run the proxy twice in that namespace.
    let script = format!(
        "for p in /usr/local/bin /usr/bin /bin /usr/local/sbin /usr/sbin /sbin; do \
           for n in fusermount3 fusermount mergerfs-fusermount; do \
             f=\"$p/$n\"; [ -e \"$f\" ] && mount --bind /dev/null \"$(readlink -f \"$f\")\"; \
           done; done; \
         {proxy} --channel fusermount {m} -- true {m}; echo \"exit=$?\"; \
         setarch {arch} --uname-2.6 {proxy} -v {m} -- true {m}; echo \"auto-exit=$?\""
    );
    let (st, out, err) = run_bounded(
        Command::new("unshare").args(["-m", "sh", "-c", &script]),
        Duration::from_secs(30),
    )
    .expect("hung");
    eprintln!("stdout:\n{out}\nstderr:\n{err}");
    assert!(st.success(), "{err}");
    assert!(out.contains("exit=2"), "{out}");
    let refusal: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("--channel fusermount:"))
        .collect();
    assert_eq!(refusal.len(), 1, "{err}");
    assert!(
        refusal[0].contains("no fusermount program to stand in for"),
        "{err}"
    );
    // `true` exits at once, before INIT: a failure (exit 1), whatever its
    // own status. What matters here is the channel auto took, and why.
    assert!(out.contains("auto-exit=1"), "{out}");
    assert!(
        err.contains("channel fd (auto: kernel 2.6 lacks seccomp fd injection")
            && err.contains("no fusermount program to stand in for"),
        "{err}"
    );
    assert!(!common::is_mounted(mnt.path()));
}
