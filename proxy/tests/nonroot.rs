//! fuseproxy run as `nobody`, without capabilities: it mounts through the
//! real (setuid) fusermount3, serves the same workload with the same
//! results as nobody's own direct mount of passthrough_ll, unmounts with
//! `fusermount3 -u` on SIGTERM and ends when nobody runs `fusermount3 -u`
//! itself; RLIMIT_MEMLOCK cuts the locked arena or stops the proxy with
//! one line; `allow_other` is refused as fusermount3 refuses it.
//!
//! Both channels a user has: `--channel fd` (the proxy mounts before the
//! daemon starts) and, what `auto` takes, the seccomp channel (the daemon's
//! own mount(2) is trapped and made through fusermount3): bindfs (libfuse
//! 2, which cannot take /dev/fd/N) and passthrough_ll work through it as
//! nobody, with the same mount and workload transcript as their direct
//! mounts by nobody, and end with status 0 on SIGTERM and on nobody's
//! `fusermount3 -u`, the daemon gone too.
//!
//! How nobody gets FUSE here: a user can mount only if it may open
//! /dev/fuse (fusermount3 opens it with the caller's file-system uid), and
//! Debian's is 0666 but a container's may be root's alone (0600). The
//! host's device is never changed (other tests check that nobody cannot
//! open it): each run starts in a mount namespace of its own where a 0666
//! node of the same device (made in a root-only directory of the test) is
//! bound over /dev/fuse, then becomes nobody (`setpriv`, no capabilities,
//! no groups) with `prlimit --memlock`. The test's directory is a shared
//! mount ([`MountBuilder::shared_dir`]) whose copy in the namespace is its
//! peer, so the FUSE mount made inside appears on the host, where the
//! workload runs as nobody and the guard can remove it.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use common::{mount_info, passthrough_ll, proxy_bin, run_bounded, Mode, Mount, MountBuilder};
use common::{MOUNT_TIMEOUT, NOBODY};

const NOGROUP: u32 = 65534;
const SLOT: u64 = 1024 * 1024 + 4096;
const END_WAIT: Duration = Duration::from_secs(20);
/// RLIMIT_MEMLOCK of most runs: Debian's default (8 MiB), which a
/// container without CAP_SYS_RESOURCE cannot raise for its processes; it
/// holds 7 slots of the default arena's 22.
const LIMIT: u64 = 8 << 20;

/// Enters the namespace, puts the 0666 device in place, and execs "$@" as
/// nobody with RLIMIT_MEMLOCK "$2" (bytes, soft and hard).
const AS_NOBODY: &str = r#"set -e
dir=$1; memlock=$2; shift 2
umask 077
mkdir "$dir/dev"
mknod -m 666 "$dir/dev/fuse" c 10 229
mount --bind "$dir/dev/fuse" /dev/fuse
exec prlimit --memlock="$memlock:$memlock" \
    setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all "$@""#;

/// `COMMAND...` (placeholders allowed) run as nobody in its namespace, with
/// the test directories owned by nobody.
fn as_nobody(memlock: u64, command: &[&str]) -> MountBuilder {
    let mut args: Vec<String> = [
        "--mount",
        "--propagation",
        "unchanged",
        "sh",
        "-c",
        AS_NOBODY,
        "sh",
        "{dir}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(memlock.to_string());
    args.extend(command.iter().map(|s| s.to_string()));
    MountBuilder::new(Mode::Proxy, ["unused"])
        .program("unshare")
        .raw_proxy_args(args)
        .shared_dir()
        .dirs_owned_by(NOBODY, NOGROUP)
}

fn pll() -> String {
    passthrough_ll().to_str().expect("UTF-8 path").to_string()
}

fn proxy() -> String {
    proxy_bin().to_str().expect("UTF-8 path").to_string()
}

/// `fuseproxy [OPTS] {mnt} -- passthrough_ll -f -o source={backing}[,EXTRA] {mnt}`
/// as nobody.
fn proxied(memlock: u64, opts: &[&str], extra: &str) -> MountBuilder {
    let (pll, proxy) = (pll(), proxy());
    let source = format!("source={{backing}}{extra}");
    let mut cmd: Vec<&str> = vec![&proxy];
    cmd.extend(opts);
    cmd.extend(["{mnt}", "--", &pll, "-f", "-o", &source, "{mnt}"]);
    as_nobody(memlock, &cmd)
}

/// nobody's own mount of passthrough_ll, through libfuse and fusermount3.
fn direct(memlock: u64) -> MountBuilder {
    let pll = pll();
    as_nobody(memlock, &[&pll, "-f", "-o", "source={backing}", "{mnt}"])
}

/// Runs `script` with sh as nobody on the host (where the mount has
/// propagated), bounded; its status, stdout and stderr.
fn run_as_nobody(script: &str, args: &[&Path]) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=-all",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .args(args);
    run_bounded(&mut cmd, MOUNT_TIMEOUT).expect("a command as nobody did not finish")
}

/// The core workload, as nobody inside the mount: each step's command, exit
/// status and output, one per line. Nothing in it depends on when it runs
/// (no directory times, fixed file times) or on the mountpoint's path.
const WORKLOAD: &str = r#"cd "$1" || exit 99
r() { out=$("$@" 2>&1); rc=$?; echo "$* => $rc $(printf %s "$out" | tr '\n' '|')"; }
r sh -c 'printf hello > f1'
r cat f1
r sh -c 'printf " world" >> f1'
r cat f1
r mkdir d1
r mv f1 d1/f2
r cat f1
r touch -d '2001-02-03 04:05:06 UTC' d1/f2
r stat -c '%n %s %a %Y %X %U %G %h %F' d1/f2
r stat -c '%n %a %U %G %F' d1
r ln -s d1/f2 s1
r readlink s1
r cat s1
r ln d1/f2 h1
r stat -c '%n %h' d1/f2 h1
r chmod 600 d1/f2
r stat -c '%n %a' d1/f2
r sh -c 'head -c 4194304 /dev/zero | tr "\0" x > big'
r sha256sum big
r truncate -s 10 big
r stat -c '%n %s' big
r cat big
r rmdir d1
r rm h1 s1 d1/f2
r rmdir d1
r mkdir d1
r ls -1A
r sh -c 'echo data > d1/g; sync d1/g'
r rm -r d1 big
r ls -1A
r cat missing
"#;

fn workload(mnt: &Path) -> String {
    let (st, out, err) = run_as_nobody(WORKLOAD, &[mnt]);
    assert!(st.success(), "workload: {st}\n{out}\n{err}");
    out
}

/// Starts `b` and waits (bounded) until its mount is in mountinfo and
/// answers a stat by nobody: root may not use a user's mount without
/// allow_other, so the harness's own wait (a stat as root) cannot be used.
fn started(b: &MountBuilder) -> Mount {
    let mut m = b.start();
    let live = common::wait_until(MOUNT_TIMEOUT, || {
        m.is_mounted() && run_as_nobody("stat \"$1\"", &[m.mountpoint()]).0.success()
    });
    if !live {
        panic!(
            "not mounted within {MOUNT_TIMEOUT:?} (exit status {:?})\n{}",
            m.exit_status(),
            m.proxy_log()
        );
    }
    m
}

/// `VmLck` of /proc/PID/status, in KiB.
fn locked_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmLck in /proc/PID/status")
}

#[test]
fn mounts_through_fusermount3_and_matches_a_direct_user_mount() {
    let d = started(&direct(LIMIT));
    let p = started(&proxied(LIMIT, &["--channel", "fd"], ""));
    let di = d.mount_info().expect("direct mount");
    let pi = p.mount_info().expect("proxy mount");
    println!("direct: {di:?}\nproxy:  {pi:?}");
    // fusermount3 made it for nobody: its user_id, nosuid,nodev; and it
    // reads as nobody's own mount does.
    assert!(
        pi.super_options.split(',').any(|o| o == "user_id=65534"),
        "{}",
        pi.super_options
    );
    assert!(pi.mount_options.contains("nosuid") && pi.mount_options.contains("nodev"));
    assert_eq!(pi.fstype, di.fstype, "fstype");
    assert_eq!(pi.source, di.source, "source");
    assert_eq!(pi.mount_options, di.mount_options, "per-mount options");
    assert_eq!(pi.super_options, di.super_options, "super-block options");
    // The proxy runs as nobody, without capabilities.
    let status = fs::read_to_string(format!("/proc/{}/status", p.pid())).expect("status");
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    let log = p.proxy_log();
    assert!(log.contains("), channel fd, backend pid"), "{log}");
    // The proxy made the mount and serves it (the daemon got /dev/fd/N).
    assert!(
        log.contains(&format!("mounted {} (", p.mountpoint().display())),
        "{log}"
    );
    // The arena cut to the limit and locked, the rest said not to be.
    assert!(
        log.contains("the arena is cut from 22 to 7 slots (7196 KiB)"),
        "{log}"
    );
    assert!(log.contains("arena=7x1052672B locked"), "{log}");
    assert!(
        log.contains("mlockall=no (RLIMIT_MEMLOCK 8192 KiB without CAP_IPC_LOCK"),
        "{log}"
    );
    assert!(
        log.contains("io_flusher=no (EPERM: needs CAP_SYS_RESOURCE)"),
        "{log}"
    );
    let lck = locked_kib(p.pid());
    assert!((7 * SLOT / 1024..8192).contains(&lck), "VmLck {lck} kB");

    same_workload(&d, &p);
}

/// The workload as nobody through the direct mount `d` and the proxy's
/// `p`: it did what it says, the two transcripts are equal, and the proxy's
/// backing directory is left empty (the workload removes what it made).
fn same_workload(d: &Mount, p: &Mount) {
    let want = workload(d.mountpoint());
    let got = workload(p.mountpoint());
    println!("direct:\n{want}\nproxy:\n{got}");
    assert!(want.contains("cat f1 => 0 hello world\n"), "{want}");
    assert!(want.contains("stat -c %n %s big => 0 big 10\n"), "{want}");
    assert!(want.contains("cat missing => 1 "), "{want}");
    assert_eq!(got, want, "the same workload through the proxy");
    assert!(fs::read_dir(p.backing()).expect("backing").next().is_none());
}

#[test]
fn sigterm_unmounts_with_fusermount3_and_exits_0() {
    let mut p = started(&proxied(LIMIT, &["--channel", "fd"], ""));
    let log = sigterm_ends_with_0(&mut p);
    // The daemon ended as after a direct unmount (the end device was made
    // through fusermount3 too).
    assert!(log.contains("exited with status 0"), "{log}");
}

/// A file written as nobody, SIGTERM: the proxy exits 0 with the mount gone
/// (fusermount3 -u removed it: umount2 is refused to nobody), no warning
/// but the arena's cut, and the file in the backing directory. The log.
fn sigterm_ends_with_0(p: &mut Mount) -> String {
    let (st, out, err) = run_as_nobody("echo kept > \"$1/f\" && cat \"$1/f\"", &[p.mountpoint()]);
    assert!(st.success() && out == "kept\n", "{st} {out} {err}");
    p.send_signal(Signal::SIGTERM).expect("SIGTERM");
    let st = p.wait_exit(END_WAIT).expect("the proxy did not exit");
    let log = p.proxy_log();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(mount_info(p.mountpoint()).is_none(), "still mounted\n{log}");
    assert!(log.contains("SIGTERM: unmounting"), "{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && !l.contains("the arena is cut"))
        .collect();
    assert!(warnings.is_empty(), "{log}");
    assert_eq!(
        fs::read_to_string(p.backing_path("f")).expect("backing file"),
        "kept\n"
    );
    log
}

#[test]
fn the_users_fusermount3_u_ends_the_proxy_with_0() {
    let mut p = started(&proxied(LIMIT, &["--channel", "fd"], ""));
    let (st, out, err) = run_as_nobody("fusermount3 -u \"$1\"", &[p.mountpoint()]);
    assert!(st.success(), "fusermount3 -u: {st} {out} {err}");
    let st = p.wait_exit(END_WAIT).expect("the proxy did not exit");
    let log = p.proxy_log();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(mount_info(p.mountpoint()).is_none(), "{log}");
    assert!(log.contains("exited with status 0"), "{log}");
}

#[test]
fn memlock_below_the_arena_cuts_it_and_says_so() {
    // 6 MiB holds 5 slots of 1 MiB + 4 KiB: the fewest one thread needs.
    let p = started(&proxied(6 << 20, &["--channel", "fd"], ""));
    let log = p.proxy_log();
    assert!(
        log.contains(
            "RLIMIT_MEMLOCK is 6144 KiB without CAP_IPC_LOCK: the arena is cut from 22 to 5 \
             slots (5140 KiB) so that all of it is locked"
        ),
        "{log}"
    );
    assert!(log.contains("arena=5x1052672B locked"), "{log}");
    assert!(
        log.contains("mlockall=no (RLIMIT_MEMLOCK 6144 KiB without CAP_IPC_LOCK"),
        "{log}"
    );
    let lck = locked_kib(p.pid());
    assert!((5140..6144).contains(&lck), "VmLck {lck} kB");
    let (st, out, err) = run_as_nobody(
        "head -c 3000000 /dev/zero > \"$1/z\" && stat -c %s \"$1/z\"",
        &[p.mountpoint()],
    );
    assert!(st.success() && out == "3000000\n", "{st} {out} {err}");
}

#[test]
fn memlock_below_the_smallest_arena_refuses_in_one_line() {
    let mut p = proxied(4 << 20, &["--channel", "fd"], "").start();
    let st = p.wait_exit(END_WAIT).expect("the proxy did not exit");
    let log = p.proxy_log();
    assert_eq!(st.code(), Some(1), "{log}");
    let crit: Vec<&str> = log.lines().filter(|l| l.contains("CRIT")).collect();
    assert_eq!(crit.len(), 1, "{log}");
    for want in [
        "RLIMIT_MEMLOCK is 4096 KiB",
        "at least 5 slots (5140 KiB)",
        "ulimit -l 5140",
        "LimitMEMLOCK=6M",
    ] {
        assert!(crit[0].contains(want), "{want}: {log}");
    }
    assert!(mount_info(p.mountpoint()).is_none(), "{log}");
}

#[test]
fn allow_other_follows_fusermount3s_rule() {
    let allowed = user_allow_other();
    let b = proxied(LIMIT, &["--channel", "fd"], ",allow_other");
    if allowed {
        let p = started(&b);
        let info = p.mount_info().expect("mounted");
        assert!(info.super_options.contains("allow_other"), "{info:?}");
        return;
    }
    let mut p = b.start();
    let log = refused_allow_other(&mut p);
    // The daemon never started.
    assert!(!log.contains("backend pid"), "{log}");
}

#[test]
fn options_that_need_root_are_refused() {
    let mut p = proxied(LIMIT, &["--channel", "fusermount"], "").start();
    let st = p.wait_exit(END_WAIT).expect("the proxy did not exit");
    let log = p.proxy_log();
    assert_eq!(st.code(), Some(2), "{log}");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        log.contains("--channel fusermount: needs root")
            && log.contains("use --channel seccomp or fd (or auto)"),
        "{log}"
    );
    assert!(mount_info(p.mountpoint()).is_none(), "{log}");
    let mut p = proxied(LIMIT, &["--backend-user", "nobody"], "").start();
    let st = p.wait_exit(END_WAIT).expect("the proxy did not exit");
    let log = p.proxy_log();
    assert_eq!(st.code(), Some(2), "{log}");
    assert!(log.contains("--backend-user needs root"), "{log}");
    assert!(mount_info(p.mountpoint()).is_none(), "{log}");
}

/// Whether /etc/fuse.conf lets users mount with allow_other.
/// The proxy refused `allow_other` as fusermount3 does: exit status 1, one
/// CRIT line saying how to allow it, nothing mounted. The log.
fn refused_allow_other(p: &mut Mount) -> String {
    let st = p.wait_exit(END_WAIT).expect("the proxy did not exit");
    let log = p.proxy_log();
    assert_eq!(st.code(), Some(1), "{log}");
    let crit: Vec<&str> = log.lines().filter(|l| l.contains("CRIT")).collect();
    assert_eq!(crit.len(), 1, "{log}");
    assert!(
        crit[0].contains("fusermount3 refused allow_other")
            && crit[0].contains("/etc/fuse.conf has the line user_allow_other"),
        "{log}"
    );
    assert!(mount_info(p.mountpoint()).is_none(), "{log}");
    log
}

fn user_allow_other() -> bool {
    fs::read_to_string("/etc/fuse.conf").is_ok_and(|t| {
        t.lines()
            .any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other")
    })
}

/// bindfs's command: `--no-allow-other` unless `allow_other` (bindfs asks
/// for allow_other by default, which fusermount3 refuses to a user unless
/// /etc/fuse.conf allows it).
fn bindfs_cmd(allow_other: bool) -> Vec<&'static str> {
    let mut c = vec!["bindfs"];
    if !allow_other {
        c.push("--no-allow-other");
    }
    c.extend(["-f", "{backing}", "{mnt}"]);
    c
}

/// nobody's own mount of bindfs: libfuse 2's mount(2) fails with EPERM,
/// and it runs fusermount3.
fn bindfs_direct() -> MountBuilder {
    as_nobody(LIMIT, &bindfs_cmd(false))
}

/// `fuseproxy {mnt} -- bindfs ...` as nobody, with the proxy's default
/// channel.
fn bindfs_proxied(allow_other: bool) -> MountBuilder {
    let proxy = proxy();
    let mut cmd: Vec<&str> = vec![&proxy, "{mnt}", "--"];
    cmd.extend(bindfs_cmd(allow_other));
    as_nobody(LIMIT, &cmd)
}

/// The daemon: the proxy's descendant whose comm is `comm` (bounded wait).
fn daemon(m: &Mount, comm: &str) -> common::ProcId {
    let mut found = None;
    common::wait_until(Duration::from_secs(5), || {
        found = m.descendants().into_iter().find(|p| {
            fs::read_to_string(format!("/proc/{}/comm", p.pid)).is_ok_and(|c| c.trim() == comm)
        });
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no {comm} among the proxy's descendants\n{}", m.proxy_log()))
}

/// The field `name` of /proc/PID/status.
fn status_field(pid: i32, name: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// Checks what every seccomp-channel mount by nobody shows: the channel
/// line, the daemon's mount(2) made through fusermount3 (nobody's
/// user_id, nosuid,nodev), the proxy as nobody without capabilities, and
/// the daemon under the filter with no_new_privs. Returns the daemon.
fn assert_seccomp_as_nobody(p: &Mount, comm: &str) -> common::ProcId {
    let log = p.proxy_log();
    assert!(
        log.contains("channel seccomp (auto: the kernel has seccomp user notification"),
        "{log}"
    );
    assert!(
        log.contains(&format!("by pid {}", daemon(p, comm).pid))
            && log.contains("made through fusermount3 (not root), on the /dev/fuse it passed"),
        "{log}"
    );
    // Nothing the daemon tried was refused (no fallback to fusermount).
    assert!(!log.contains("refused"), "{log}");
    let info = p.mount_info().expect("mounted");
    assert!(
        info.super_options.split(',').any(|o| o == "user_id=65534"),
        "{info:?}"
    );
    assert!(
        info.mount_options.contains("nosuid") && info.mount_options.contains("nodev"),
        "{info:?}"
    );
    assert_eq!(status_field(p.pid(), "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(p.pid(), "CapEff"), "0000000000000000");
    let d = daemon(p, comm);
    assert_eq!(status_field(d.pid, "Uid"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(d.pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(d.pid, "Seccomp"), "2");
    d
}

/// After the proxy's exit: the daemon is gone (bounded wait) and the log
/// says it ended with status 0.
fn assert_daemon_ended(p: &Mount, d: common::ProcId) {
    let log = p.proxy_log();
    assert!(
        common::wait_until(END_WAIT, || d.is_gone()),
        "daemon pid {} still runs\n{log}",
        d.pid
    );
    assert!(
        log.contains(&format!("backend (pid {}) exited with status 0", d.pid)),
        "{log}"
    );
}

#[test]
fn bindfs_libfuse2_through_seccomp_matches_a_direct_user_mount() {
    if !common::installed("bindfs") {
        return;
    }
    let d = started(&bindfs_direct());
    let p = started(&bindfs_proxied(false));
    let di = d.mount_info().expect("direct mount");
    let pi = p.mount_info().expect("proxy mount");
    println!("direct: {di:?}\nproxy:  {pi:?}");
    assert_seccomp_as_nobody(&p, "bindfs");
    // The mount bindfs asked for, as fusermount3 makes it for nobody: the
    // source is each one's own backing directory.
    assert_eq!(pi.fstype, di.fstype, "fstype");
    assert_eq!(Path::new(&di.source), d.backing(), "direct source");
    assert_eq!(Path::new(&pi.source), p.backing(), "proxy source");
    assert_eq!(pi.mount_options, di.mount_options, "per-mount options");
    assert_eq!(pi.super_options, di.super_options, "super-block options");

    same_workload(&d, &p);
}

#[test]
fn bindfs_through_seccomp_ends_on_sigterm_with_0() {
    if !common::installed("bindfs") {
        return;
    }
    let mut p = started(&bindfs_proxied(false));
    let d = assert_seccomp_as_nobody(&p, "bindfs");
    sigterm_ends_with_0(&mut p);
    assert_daemon_ended(&p, d);
}

#[test]
fn bindfs_through_seccomp_ends_on_the_users_fusermount3_u_with_0() {
    if !common::installed("bindfs") {
        return;
    }
    let mut p = started(&bindfs_proxied(false));
    let d = assert_seccomp_as_nobody(&p, "bindfs");
    let (st, out, err) = run_as_nobody("fusermount3 -u \"$1\"", &[p.mountpoint()]);
    assert!(st.success(), "fusermount3 -u: {st} {out} {err}");
    let st = p.wait_exit(END_WAIT).expect("the proxy did not exit");
    let log = p.proxy_log();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(mount_info(p.mountpoint()).is_none(), "{log}");
    assert_daemon_ended(&p, d);
}

#[test]
fn bindfs_allow_other_is_refused_in_one_line_without_user_allow_other() {
    if !common::installed("bindfs") {
        return;
    }
    if user_allow_other() {
        eprintln!("SKIPPED: /etc/fuse.conf has user_allow_other");
        return;
    }
    // bindfs asks for allow_other by default: its trapped mount(2) carries
    // it, and fusermount3 refuses it to nobody.
    let mut p = bindfs_proxied(true).start();
    let log = refused_allow_other(&mut p);
    // bindfs was answered EACCES, not EPERM, so it did not run fusermount
    // (which would have been trapped and refused, and logged).
    assert!(!log.contains("refused mount"), "{log}");
    let left = common::processes_naming(p.mountpoint().as_os_str().as_encoded_bytes());
    assert!(left.is_empty(), "left running: {left:?}\n{log}");
}

#[test]
fn passthrough_ll_libfuse3_through_seccomp_matches_a_direct_user_mount() {
    let d = started(&direct(LIMIT));
    let mut p = started(&proxied(LIMIT, &[], ""));
    let daemon_pid = assert_seccomp_as_nobody(&p, "passthrough_ll");
    let di = d.mount_info().expect("direct mount");
    let pi = p.mount_info().expect("proxy mount");
    println!("direct: {di:?}\nproxy:  {pi:?}");
    assert_eq!(pi.fstype, di.fstype, "fstype");
    assert_eq!(pi.source, di.source, "source");
    assert_eq!(pi.mount_options, di.mount_options, "per-mount options");
    assert_eq!(pi.super_options, di.super_options, "super-block options");
    same_workload(&d, &p);
    p.send_signal(Signal::SIGTERM).expect("SIGTERM");
    let st = p.wait_exit(END_WAIT).expect("the proxy did not exit");
    let log = p.proxy_log();
    assert_eq!(st.code(), Some(0), "{log}");
    assert!(mount_info(p.mountpoint()).is_none(), "still mounted\n{log}");
    assert_daemon_ended(&p, daemon_pid);
}
