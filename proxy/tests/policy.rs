//! Policy files end to end, over libfuse's passthrough_ll: what a user of
//! each rule would check (errnos seen by callers, the backing directory
//! untouched, the time a stat takes, the requests that reach the backend),
//! SIGHUP reloads, and `--check` on every example of `policies/examples/`.

mod common;

use common::policy::PolicyFile;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::stats::{dump_stats, stat_field};
use common::{sys, wait_until, Mode, Mount, MountBuilder, Signal};

/// passthrough_ll with entry and attribute timeouts 0 (every stat reaches
/// it), through the proxy with `policy`.
fn mount_with(policy: &PolicyFile) -> Mount {
    let p = policy.path.to_str().unwrap();
    MountBuilder::passthrough(Mode::Proxy, &["-o", "cache=never"])
        .proxy_args(["--policy", p])
        .mount()
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

const EROFS: i32 = 30;
const EPERM: i32 = 1;

/// SIGHUP, then wait for the reload's log line; returns it.
fn reload(m: &mut Mount) -> String {
    let before = reload_lines(&m.proxy_log()).len();
    m.send_signal(Signal::SIGHUP).expect("SIGHUP to the proxy");
    assert!(
        wait_until(Duration::from_secs(5), || reload_lines(&m.proxy_log())
            .len()
            > before),
        "no reload line within 5 s of SIGHUP:\n{}",
        m.proxy_log()
    );
    reload_lines(&m.proxy_log()).pop().unwrap()
}

fn reload_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("SIGHUP: policy"))
        .map(str::to_owned)
        .collect()
}

/// What a user would compare of a tree: names, sizes, modes, mtimes, bytes.
fn snapshot(dir: &Path) -> Vec<(String, u64, u32, i64, Vec<u8>)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let md = e.metadata().unwrap();
            let bytes = if md.is_file() {
                fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (
                e.file_name().to_string_lossy().into_owned(),
                md.len(),
                md.mode(),
                md.mtime(),
                bytes,
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn read_only_fails_every_change_with_erofs_and_leaves_the_backing_store_alone() {
    let policy = PolicyFile::new("[deny]\nread_only = true\n");
    let mut m = mount_with(&policy);
    fs::write(m.backing_path("a"), b"hello").unwrap();
    fs::create_dir(m.backing_path("d")).unwrap();
    fs::write(m.backing_path("d/b"), b"world").unwrap();
    let before = snapshot(m.backing());

    // Reads work.
    assert_eq!(fs::read(m.path("a")).unwrap(), b"hello");
    assert_eq!(fs::read(m.path("d/b")).unwrap(), b"world");
    assert_eq!(fs::read_dir(m.path("d")).unwrap().count(), 1);

    // Every change fails with EROFS.
    let w = fs::OpenOptions::new().write(true).open(m.path("a"));
    assert_eq!(errno_of(w), Some(EROFS), "open for writing");
    assert_eq!(
        errno_of(fs::write(m.path("new"), b"x")),
        Some(EROFS),
        "create"
    );
    assert_eq!(
        errno_of(fs::set_permissions(
            m.path("a"),
            fs::Permissions::from_mode(0o600)
        )),
        Some(EROFS),
        "chmod"
    );
    assert_eq!(errno_of(fs::remove_file(m.path("a"))), Some(EROFS), "rm");
    assert_eq!(
        errno_of(fs::remove_file(m.path("d/b"))),
        Some(EROFS),
        "rm in a dir"
    );
    assert_eq!(errno_of(fs::create_dir(m.path("e"))), Some(EROFS), "mkdir");
    assert_eq!(
        errno_of(fs::rename(m.path("a"), m.path("z"))),
        Some(EROFS),
        "mv"
    );
    assert_eq!(
        sys::utimensat(&m.path("a"), sys::ts(1, 0), sys::ts(1, 0), 0)
            .err()
            .map(|e| e as i32),
        Some(EROFS),
        "touch -d"
    );

    let after = snapshot(m.backing());
    assert_eq!(before, after, "the backing directory changed");
    let stats = dump_stats(&mut m);
    assert!(stat_field(&stats, "denied") >= 8, "{stats}");
}

#[test]
fn a_denied_unlink_gets_eperm_and_the_rest_works() {
    let policy = PolicyFile::new("[deny]\nUNLINK = \"EPERM\"\n");
    let mut m = mount_with(&policy);
    fs::write(m.path("f"), b"data").unwrap();
    assert_eq!(errno_of(fs::remove_file(m.path("f"))), Some(EPERM));
    assert!(m.backing_path("f").exists(), "the backend unlinked it");
    fs::create_dir(m.path("d")).unwrap();
    fs::remove_dir(m.path("d")).unwrap();
    fs::rename(m.path("f"), m.path("g")).unwrap();
    assert_eq!(fs::read(m.backing_path("g")).unwrap(), b"data");
    let stats = dump_stats(&mut m);
    assert_eq!(stat_field(&stats, "denied"), 1, "{stats}");
}

/// `n` stats of `path`, timed.
fn stat_loop(path: &Path, n: usize) -> Duration {
    let t0 = Instant::now();
    for _ in 0..n {
        fs::metadata(path).expect("stat");
    }
    t0.elapsed()
}

#[test]
fn a_getattr_delay_shows_in_a_stat_loop_until_a_reload_removes_it() {
    let policy = PolicyFile::new("[fault.GETATTR]\ndelay = \"200ms\"\n");
    let mut m = mount_with(&policy);
    fs::write(m.backing_path("f"), b"x").unwrap();
    let f = m.path("f");
    let slow = stat_loop(&f, 10);
    assert!(
        slow >= Duration::from_millis(2000),
        "10 stats with a 200 ms GETATTR delay took {slow:?}"
    );
    let stats = dump_stats(&mut m);
    assert!(stat_field(&stats, "delayed") >= 10, "{stats}");

    policy.rewrite("");
    let line = reload(&mut m);
    assert!(line.contains("reloaded"), "{line}");
    let fast = stat_loop(&f, 10);
    eprintln!("10 stats: {slow:?} with the delay, {fast:?} after the reload");
    assert!(
        fast < Duration::from_millis(1000),
        "10 stats took {fast:?} after the delay was removed"
    );
}

#[test]
fn raised_cache_timeouts_cut_the_getattrs_that_reach_the_backend() {
    let policy = PolicyFile::new("");
    let mut m = mount_with(&policy);
    fs::write(m.backing_path("f"), b"x").unwrap();
    let f = m.path("f");
    const N: usize = 500;

    let s0 = dump_stats(&mut m);
    stat_loop(&f, N);
    let s1 = dump_stats(&mut m);
    let uncached = stat_field(&s1, "forwarded") - stat_field(&s0, "forwarded");

    policy.rewrite("[cache]\nmin_entry_timeout = \"60s\"\nmin_attr_timeout = \"60s\"\n");
    assert!(reload(&mut m).contains("reloaded"));
    // The first stat after the reload fetches what the kernel then keeps.
    fs::metadata(&f).unwrap();
    let s2 = dump_stats(&mut m);
    stat_loop(&f, N);
    let s3 = dump_stats(&mut m);
    let cached = stat_field(&s3, "forwarded") - stat_field(&s2, "forwarded");
    eprintln!("{N} stats: {uncached} requests reached the backend with its timeouts of 0, {cached} with 60 s floors");
    assert!(
        uncached >= N as u64,
        "{uncached} forwarded without the policy"
    );
    assert!(
        cached * 20 < uncached,
        "{cached} forwarded with 60 s timeouts against {uncached} without"
    );
    assert!(stat_field(&s3, "cache_changed") > 0, "{s3}");
}

#[test]
fn sighup_switches_read_only_off_and_a_broken_file_keeps_the_old_policy() {
    let policy = PolicyFile::new("[deny]\nread_only = true\n");
    let mut m = mount_with(&policy);
    assert_eq!(errno_of(fs::write(m.path("f"), b"1")), Some(EROFS));

    policy.rewrite("[deny]\nread_only = false\n");
    let line = reload(&mut m);
    assert!(line.contains("reloaded"), "{line}");
    fs::write(m.path("f"), b"2").expect("write after the reload to read-write");
    assert_eq!(fs::read(m.backing_path("f")).unwrap(), b"2");

    // A broken file: refused, with the reason, and the old policy stays.
    policy.rewrite("[deny]\nread_only = true\nUNLIKN = \"EPERM\"\n");
    let line = reload(&mut m);
    assert!(line.contains("not reloaded"), "{line}");
    assert!(line.contains(":3:1: deny.UNLIKN: unknown key"), "{line}");
    assert!(line.contains("the old policy stays"), "{line}");
    fs::write(m.path("f"), b"3").expect("still read-write");

    // And back to read-only, without remounting.
    policy.rewrite("[deny]\nread_only = true\n");
    assert!(reload(&mut m).contains("reloaded"));
    assert_eq!(errno_of(fs::write(m.path("f"), b"4")), Some(EROFS));
    assert_eq!(fs::read(m.backing_path("f")).unwrap(), b"3");
    assert!(m.is_mounted());
    let stats = dump_stats(&mut m);
    assert_eq!(stat_field(&stats, "reloads"), 2, "{stats}");
}

#[test]
fn a_reload_that_changes_a_table_size_is_refused() {
    let policy = PolicyFile::new("[times]\nmax_pending = 1024\n");
    let mut m = mount_with(&policy);
    policy.rewrite("[times]\nmax_pending = 2048\n");
    let line = reload(&mut m);
    assert!(
        line.contains("times.max_pending cannot change without a restart"),
        "{line}"
    );
}

#[test]
fn sighup_without_a_policy_file_still_unmounts() {
    let mut m = MountBuilder::passthrough(Mode::Proxy, &[]).mount();
    m.send_signal(Signal::SIGHUP).unwrap();
    assert!(m.wait_unmounted(Duration::from_secs(10)), "still mounted");
    let st = m.wait_exit(Duration::from_secs(10)).expect("proxy exit");
    assert!(st.success(), "{st:?}");
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples");
    let mut v: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_passes_check_and_prints_back_as_a_valid_policy() {
    let ex = examples();
    assert!(ex.len() >= 5, "{ex:?}");
    for path in ex {
        let (st, out, err) = common::run_proxy(
            ["--check", "--policy", path.to_str().unwrap()],
            Duration::from_secs(10),
        )
        .expect("fuseproxy --check ended");
        assert!(st.success(), "{}: {err}", path.display());
        assert!(out.contains("[times]"), "{}: {out}", path.display());
        // What --check prints is itself a policy that checks.
        let printed = PolicyFile::new(&out);
        let (st, _, err) = common::run_proxy(
            ["--check", "--policy", printed.path.to_str().unwrap()],
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(st.success(), "printed form of {}: {err}", path.display());
    }
}

#[test]
fn check_names_file_line_and_key_and_exits_1() {
    let p = PolicyFile::new("[deadlines]\ndefault = \"1s\"\nREED = \"30s\"\n");
    let (st, out, err) = common::run_proxy(
        ["--check", "--policy", p.path.to_str().unwrap()],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(st.code(), Some(1), "{out}{err}");
    let want = format!(
        "{}:3:1: deadlines.REED: unknown key `REED`",
        p.path.display()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // The proxy refuses to start with it, before mounting anything.
    let (st, _, err) = common::run_proxy(
        [
            "--policy",
            p.path.to_str().unwrap(),
            "/nonexistent-mnt",
            "--",
            "true",
            "/nonexistent-mnt",
        ],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains(&want), "{err}");

    let missing = p.path.with_file_name("absent.toml");
    let (st, _, err) = common::run_proxy(
        ["--check", "--policy", missing.to_str().unwrap()],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(st.code(), Some(1));
    assert!(err.contains("cannot read the policy file"), "{err}");
}

/// The annotated example of docs/policy-file.md (the README's link, and
/// the man page fuseproxy-policy(5)) is a policy that checks.
#[test]
fn the_documented_example_passes_check() {
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policy-file.md"))
            .unwrap();
    let start = doc.find("```toml").expect("a toml block") + 7;
    let end = doc[start..].find("```").unwrap() + start;
    let example = PolicyFile::new(&doc[start..end]);
    let (st, out, err) = common::run_proxy(
        ["--check", "--policy", example.path.to_str().unwrap()],
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(st.success(), "{err}");
    for section in [
        "[deadlines]",
        "[init]",
        "[cache]",
        "[deny]",
        "[fault",
        "[[paths]]",
    ] {
        assert!(out.contains(section), "{section} missing from:\n{out}");
    }
}
