//! The mount-helper form through the system's own tools: an fstab-format
//! file of the test's own, `mount -T FILE MNT` (util-linux's mount(8), which
//! runs fuse3's `mount.fuse3`, which runs the proxy), and `umount MNT`. The
//! system's /etc/fstab is never read or touched.
//!
//! The line's type names the binary under test by its absolute path,
//! `fuse./tmp/fuseproxy-fstab-XXXXXX/bin/fuseproxy` (a symlink to it):
//! mount(8) runs its helpers without PATH, so a bare `fuse.fuseproxy` would
//! find only an installed fuseproxy in sh's default path. mount.fuse3 runs
//! what follows `fuse.` exactly as for `fuse.fuseproxy`; mount(8) cuts the
//! type at its last dot to find `mount.fuse`, hence a directory without
//! dots.
//!
//! Checked: bindfs (`SRC MNT ... backend=bindfs`) and libfuse's
//! passthrough_ll (`none MNT ... backend=PATH,source=DIR`) mount through
//! the proxy, mount(8) returns once the mount answers, files written
//! through it land in the source, `umount MNT` ends the proxy and its
//! daemon; a bad option in the line makes mount(8) fail with one line
//! naming the option and the line, and leaves nothing mounted or running.
//! Every wait is bounded; the guard unmounts (lazily) and kills, by pid,
//! whatever is left of the line's processes, failing or not.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use common::{mount_info, passthrough_ll, proxy_bin, run_bounded, wait_until, ProcId, Signal};

/// mount(8) and umount(8) get this long.
const COMMAND_BOUND: Duration = Duration::from_secs(30);
/// The proxy and its daemon get this long to end after the unmount.
const EXIT_BOUND: Duration = Duration::from_secs(10);

/// A temporary directory with `src/`, `mnt/`, `bin/fuseproxy` (a symlink to
/// the binary under test) and `fstab`. Dropping it unmounts `mnt/` (lazily)
/// and SIGKILLs every process whose command line names the directory.
struct Line {
    dir: tempfile::TempDir,
}

impl Line {
    fn new() -> Line {
        common::require_root_and_fuse();
        // Under /tmp, not TMPDIR: the path must have no dot and no space.
        let dir = tempfile::Builder::new()
            .prefix("fuseproxy-fstab-")
            .tempdir_in("/tmp")
            .expect("create a temporary directory");
        let p = dir.path();
        let bin = p.to_str().expect("a UTF-8 temporary path");
        assert!(
            !bin.contains('.') && !bin.contains(char::is_whitespace),
            "{bin}: the fstab type needs a path without dots or spaces"
        );
        for d in ["src", "mnt", "bin"] {
            fs::create_dir(p.join(d)).expect("create a directory");
        }
        std::os::unix::fs::symlink(proxy_bin(), p.join("bin/fuseproxy"))
            .expect("symlink the binary under test");
        Line { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn mnt(&self) -> PathBuf {
        self.path("mnt")
    }

    /// Writes the fstab file: one line `SOURCE MNT fuse.BIN OPTIONS 0 0`.
    fn write(&self, source: &str, options: &str) -> String {
        let bin = self.path("bin/fuseproxy");
        self.write_typed(source, &bin.to_string_lossy(), options)
    }

    /// Writes the fstab file: one line `SOURCE MNT fuse.SUBTYPE OPTIONS 0 0`.
    fn write_typed(&self, source: &str, subtype: &str, options: &str) -> String {
        let line = format!(
            "{source} {} fuse.{subtype} {options} 0 0\n",
            self.mnt().display()
        );
        let text = format!("# fuseproxy's fstab test\n{line}");
        fs::write(self.path("fstab"), text).expect("write the fstab file");
        line
    }

    /// `mount -T FSTAB MNT`, bounded: status, stdout, stderr.
    fn mount(&self) -> (ExitStatus, String, String) {
        run_bounded(
            Command::new("mount")
                .arg("-T")
                .arg(self.path("fstab"))
                .arg(self.mnt()),
            COMMAND_BOUND,
        )
        .unwrap_or_else(|| panic!("mount -T did not return within {COMMAND_BOUND:?}"))
    }

    /// `umount MNT`, bounded.
    fn umount(&self) -> (ExitStatus, String) {
        let (st, _, err) = run_bounded(Command::new("umount").arg(self.mnt()), COMMAND_BOUND)
            .unwrap_or_else(|| panic!("umount did not return within {COMMAND_BOUND:?}"));
        (st, err)
    }

    /// Live processes whose command line names this directory: the proxy
    /// (its first argument is `bin/fuseproxy`) and its daemon.
    fn processes(&self) -> Vec<(ProcId, Vec<String>)> {
        common::processes_naming(self.dir.path().as_os_str().as_bytes())
    }

    /// The proxy's process: one, whose first argument is the symlink (or
    /// `fuseproxy`, found in sh's path).
    fn proxy(&self) -> ProcId {
        let bin = self.path("bin/fuseproxy").to_string_lossy().into_owned();
        let all = self.processes();
        let found: Vec<ProcId> = all
            .iter()
            .filter(|(_, argv)| argv.first().is_some_and(|a| *a == bin || a == "fuseproxy"))
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(found.len(), 1, "not one proxy among {all:?}");
        found[0]
    }

    /// The other processes naming the directory (the daemon).
    fn daemons(&self, proxy: &ProcId) -> Vec<ProcId> {
        self.processes()
            .into_iter()
            .filter(|(p, _)| p != proxy)
            .map(|(p, _)| p)
            .collect()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("log")).unwrap_or_default()
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let mnt = self.mnt();
        for _ in 0..8 {
            if mount_info(&mnt).is_none() {
                break;
            }
            let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
        }
        for (p, _) in self.processes() {
            p.signal(Signal::SIGKILL);
        }
        if std::thread::panicking() {
            eprintln!("--- proxy log ---\n{}", self.log());
        }
    }
}

/// mount(8) succeeded and, as it returned, the mount answered already.
fn assert_mounted(line: &Line, fstab: &str, (st, out, err): (ExitStatus, String, String)) {
    assert!(
        st.success(),
        "mount -T with {fstab:?}: {st}\nstdout: {out}\nstderr: {err}\nlog: {}",
        line.log()
    );
    let info = mount_info(&line.mnt()).unwrap_or_else(|| {
        panic!(
            "mount(8) returned 0 but nothing is mounted on {}",
            line.mnt().display()
        )
    });
    assert!(info.is_fuse(), "not a FUSE mount: {info:?}");
    // Answers at once: the proxy went to the background only when INIT was
    // answered.
    let md = common::stat_with_timeout(&line.mnt(), Duration::from_secs(5));
    assert!(
        matches!(md, Some(Ok(ref m)) if m.is_dir()),
        "the mount does not answer a stat: {md:?}"
    );
}

/// `umount MNT` succeeds, the mount goes, and so do the proxy and daemons.
fn assert_umount_ends_it(line: &Line, proxy: &ProcId, daemons: &[ProcId]) {
    let (st, err) = line.umount();
    assert!(st.success(), "umount: {st}: {err}");
    assert_eq!(mount_info(&line.mnt()), None, "still mounted after umount");
    assert!(
        wait_until(EXIT_BOUND, || proxy.is_gone()),
        "the proxy (pid {}) still runs {EXIT_BOUND:?} after umount",
        proxy.pid
    );
    for d in daemons {
        assert!(
            wait_until(EXIT_BOUND, || d.is_gone()),
            "the daemon (pid {}) still runs {EXIT_BOUND:?} after umount",
            d.pid
        );
    }
}

#[test]
fn bindfs_from_an_fstab_line() {
    let line = Line::new();
    fs::write(line.path("src/before"), b"in the source").unwrap();
    let log = line.path("log");
    let fstab = line.write(
        &line.path("src").to_string_lossy(),
        &format!("backend=bindfs,log={}", log.display()),
    );
    assert_mounted(&line, &fstab, line.mount());
    let info = mount_info(&line.mnt()).unwrap();
    // bindfs names its source; with the seccomp channel the mount is the
    // one bindfs asked for.
    assert_eq!(
        info.source,
        line.path("src").to_string_lossy(),
        "the mount's source: {info:?}"
    );

    let proxy = line.proxy();
    let daemons = line.daemons(&proxy);
    assert_eq!(daemons.len(), 1, "one bindfs expected: {daemons:?}");
    // Detached: not mount(8)'s child any more, in a session of its own.
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(proxy.pid))).unwrap();
    assert_eq!(sid.as_raw(), proxy.pid, "the proxy did not call setsid");

    assert_eq!(fs::read(line.path("mnt/before")).unwrap(), b"in the source");
    fs::write(line.path("mnt/through"), b"through the proxy").unwrap();
    assert_eq!(
        fs::read(line.path("src/through")).unwrap(),
        b"through the proxy"
    );

    assert_umount_ends_it(&line, &proxy, &daemons);
    let text = line.log();
    assert!(
        text.contains(&format!(
            "backend (pid {}) exited with status 0",
            daemons[0].pid
        )),
        "the log does not say bindfs ended with status 0:\n{text}"
    );
    assert!(!text.contains("CRIT"), "the log reports a failure:\n{text}");
}

#[test]
fn passthrough_ll_with_source_none() {
    let line = Line::new();
    let backend = passthrough_ll();
    let fstab = line.write(
        "none",
        &format!(
            "backend={},source={}",
            backend.display(),
            line.path("src").display()
        ),
    );
    // No log=: the proxy keeps mount(8)'s stderr, where its start-up lines
    // go (a file here, so nothing waits for it to close).
    let (st, out, err) = line.mount();
    assert!(
        err.contains("INFO mounted"),
        "the start-up line is not on mount's stderr: {err}"
    );
    assert_mounted(&line, &fstab, (st, out, err));

    let proxy = line.proxy();
    let daemons = line.daemons(&proxy);
    assert_eq!(daemons.len(), 1, "one passthrough_ll expected: {daemons:?}");
    // SOURCE `none` is not given to the daemon; its source is in -o.
    let argv = fs::read(format!("/proc/{}/cmdline", daemons[0].pid)).unwrap();
    let argv: Vec<&[u8]> = argv.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
    assert!(
        !argv.contains(&&b"none"[..]),
        "passthrough_ll was given the source none: {argv:?}"
    );

    fs::create_dir(line.path("mnt/d")).unwrap();
    fs::write(line.path("mnt/d/f"), b"passthrough").unwrap();
    assert_eq!(fs::read(line.path("src/d/f")).unwrap(), b"passthrough");

    assert_umount_ends_it(&line, &proxy, &daemons);
}

/// mount(8) fails with one line from the proxy containing every word, and
/// nothing is left mounted or running.
fn refused(source: &str, options: &str, words: &[&str]) {
    let line = Line::new();
    let fstab = line.write(source, options);
    let (st, out, err) = line.mount();
    assert!(!st.success(), "mount -T with {fstab:?} succeeded");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line for {fstab:?}:\n{err}{out}");
    let l = lines[0];
    let named = format!("fuseproxy: {source} on {}: ", line.mnt().display());
    assert!(l.starts_with(&named), "{l:?} does not start with {named:?}");
    for w in words {
        assert!(l.contains(w), "{l:?} does not mention {w:?}");
    }
    assert_eq!(mount_info(&line.mnt()), None, "{fstab:?} left a mount");
    let left = line.processes();
    assert!(
        wait_until(EXIT_BOUND, || line.processes().is_empty()),
        "{fstab:?} left processes: {left:?}"
    );
}

#[test]
fn no_backend_is_one_clear_error() {
    refused("/srv", "allow_other", &["no backend=PROGRAM"]);
    refused(
        "/srv",
        "backend=,ro",
        &["option backend=:", "needs a value"],
    );
}

#[test]
fn an_unknown_backend_program_is_one_clear_error() {
    refused(
        "none",
        "backend=fuseproxy-test-no-such-daemon,source=/srv",
        &[
            "option backend=fuseproxy-test-no-such-daemon",
            "no such program",
        ],
    );
}

#[test]
fn a_bad_proxy_option_is_one_clear_error() {
    refused(
        "none",
        "backend=bindfs,channel=pigeon",
        &["option channel=pigeon", "possible values"],
    );
    refused(
        "none",
        "backend=bindfs,fuseproxy.polciy=/p.toml",
        &["option fuseproxy.polciy=/p.toml", "no such proxy option"],
    );
    refused(
        "none",
        "backend=bindfs,policy=/nonexistent/fuseproxy-test.toml",
        &["option policy=", "/nonexistent/fuseproxy-test.toml"],
    );
}

#[test]
fn a_daemon_that_fails_is_reported_through_mount() {
    // bindfs refuses a source that does not exist, after the proxy has
    // gone to the background: the child's error reaches mount(8) through
    // the waiting parent.
    let line = Line::new();
    let missing = line.path("missing");
    refused_after_start(&line, &missing.to_string_lossy());
}

fn refused_after_start(line: &Line, source: &str) {
    let fstab = line.write(source, "backend=bindfs");
    let (st, _, err) = line.mount();
    assert_eq!(st.code(), Some(1), "mount -T with {fstab:?}: {st}\n{err}");
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    let named = format!("fuseproxy: {source} on {}: backend: ", line.mnt().display());
    assert!(
        last.starts_with(&named) && last.contains("exited with status 1"),
        "the last line of mount's stderr is {last:?}:\n{err}"
    );
    assert_eq!(mount_info(&line.mnt()), None, "a mount was left");
    assert!(
        wait_until(EXIT_BOUND, || line.processes().is_empty()),
        "processes were left: {:?}",
        line.processes()
    );
}

#[test]
fn dash_f_stays_in_the_foreground() {
    // What one runs to debug an fstab line: the same form, with -f.
    let line = Line::new();
    let log = line.path("log");
    let mut child = Command::new(line.path("bin/fuseproxy"))
        .arg("-f")
        .arg(line.path("src"))
        .arg(line.mnt())
        .arg("-o")
        .arg(format!("backend=bindfs,log={}", log.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start fuseproxy -f");
    assert!(
        wait_until(common::MOUNT_TIMEOUT, || common::is_mounted_and_live(
            &line.mnt()
        )),
        "not mounted within {:?}; log:\n{}",
        common::MOUNT_TIMEOUT,
        line.log()
    );
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "fuseproxy -f did not stay in the foreground"
    );
    fs::write(line.path("mnt/f"), b"foreground").unwrap();
    assert_eq!(fs::read(line.path("src/f")).unwrap(), b"foreground");
    let (st, err) = line.umount();
    assert!(st.success(), "umount: {st}: {err}");
    let mut status = None;
    wait_until(EXIT_BOUND, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let status =
        status.unwrap_or_else(|| panic!("fuseproxy -f runs on {EXIT_BOUND:?} after umount"));
    assert!(status.success(), "fuseproxy -f: {status}\n{}", line.log());
    assert!(!line.log().contains("CRIT"), "{}", line.log());
}

/// The mountinfo line of `mnt` in the mount namespace of `pid`.
fn mountinfo_of(pid: i32, mnt: &Path) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    let field = mnt.to_str()?;
    text.lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(field))
        .map(str::to_string)
}

#[test]
fn the_type_fuse_fuseproxy_runs_fuseproxy_from_the_default_path() {
    // The line exactly as a user writes it, `fuse.fuseproxy`: mount.fuse3
    // runs `fuseproxy` with sh's default path (mount(8) removed PATH). The
    // binary under test is put there without touching the system: in a
    // private mount namespace of its own, bin/ (holding the symlink) is
    // bind-mounted over /usr/local/sbin, the first directory of that path.
    // The FUSE mount then exists in that namespace only; it is looked at
    // through /proc/PID of the proxy, and unmounted by umount(8) entered
    // into it. When the proxy and its daemon end, the namespace goes.
    let line = Line::new();
    let fstab = line.write_typed(
        &line.path("src").to_string_lossy(),
        "fuseproxy",
        "backend=bindfs",
    );
    let script = format!(
        "mount --bind {} /usr/local/sbin && exec mount -T {} {}",
        line.path("bin").display(),
        line.path("fstab").display(),
        line.mnt().display()
    );
    let (st, out, err) = run_bounded(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script),
        COMMAND_BOUND,
    )
    .unwrap_or_else(|| panic!("unshare ... mount -T did not return within {COMMAND_BOUND:?}"));
    assert!(
        st.success(),
        "{fstab:?} in a namespace: {st}\nstdout: {out}\nstderr: {err}"
    );
    let proxy = line.proxy();
    let daemons = line.daemons(&proxy);
    assert_eq!(daemons.len(), 1, "one bindfs expected: {daemons:?}");
    let info = mountinfo_of(proxy.pid, &line.mnt()).unwrap_or_else(|| {
        panic!(
            "nothing on {} in the proxy's namespace",
            line.mnt().display()
        )
    });
    assert!(info.contains(" - fuse"), "not a FUSE mount: {info}");
    assert_eq!(
        mount_info(&line.mnt()),
        None,
        "the mount leaked out of the private namespace"
    );
    let inside = PathBuf::from(format!("/proc/{}/root{}", proxy.pid, line.mnt().display()));
    fs::write(inside.join("f"), b"default path").unwrap();
    assert_eq!(fs::read(line.path("src/f")).unwrap(), b"default path");

    let (st, _, err) = run_bounded(
        Command::new("nsenter")
            .arg("-t")
            .arg(proxy.pid.to_string())
            .arg("-m")
            .arg("umount")
            .arg(line.mnt()),
        COMMAND_BOUND,
    )
    .unwrap_or_else(|| panic!("umount did not return within {COMMAND_BOUND:?}"));
    assert!(st.success(), "umount in the namespace: {st}: {err}");
    assert!(
        wait_until(EXIT_BOUND, || ProcId::is_gone(&proxy)),
        "the proxy (pid {}) still runs {EXIT_BOUND:?} after umount",
        proxy.pid
    );
    assert!(
        wait_until(EXIT_BOUND, || ProcId::is_gone(&daemons[0])),
        "bindfs (pid {}) still runs {EXIT_BOUND:?} after umount",
        daemons[0].pid
    );
}

#[test]
fn setuid_runs_the_proxy_as_that_user_through_fusermount3() {
    // `setuid=USER` in the line: mount.fuse3 runs fuseproxy as USER (with
    // su), which then mounts as that user does, through fusermount3 (README
    // "Without root"). A user may mount only if it may open /dev/fuse,
    // which is root's alone on some machines (this one: 0600), so as in
    // tests/nonroot.rs the run happens in a private mount namespace where a
    // 0666 node of the same device stands over /dev/fuse; the host's device
    // is untouched. The mount is looked at through /proc/PID of the proxy.
    use std::os::unix::fs::{chown, PermissionsExt};
    let line = Line::new();
    fs::set_permissions(line.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(line.path("log"), b"").unwrap();
    for d in ["src", "mnt", "log"] {
        chown(line.path(d), Some(common::NOBODY), Some(common::NOBODY)).unwrap();
    }
    fs::create_dir(line.path("dev")).unwrap();
    let fstab = line.write(
        "none",
        &format!(
            "backend={},source={},setuid=nobody,log={}",
            passthrough_ll().display(),
            line.path("src").display(),
            line.path("log").display()
        ),
    );
    let script = format!(
        "mknod -m 666 {dev}/fuse c 10 229 && mount --bind {dev}/fuse /dev/fuse \
         && mount -T {fstab} {mnt} && touch {dev}/mounted && exec sleep 600",
        dev = line.path("dev").display(),
        fstab = line.path("fstab").display(),
        mnt = line.mnt().display()
    );
    // The namespace lives as long as `holder` (one process: unshare execs
    // sh, which execs sleep), killed by pid when the test ends either way.
    let mut holder = Killed(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start unshare"),
    );
    let mounted = wait_until(COMMAND_BOUND, || {
        line.path("dev/mounted").exists() || matches!(holder.0.try_wait(), Ok(Some(_)))
    });
    let ended = holder.0.try_wait().ok().flatten();
    assert!(
        mounted && ended.is_none(),
        "{fstab:?}: mount -T failed ({ended:?})\n{}",
        line.log()
    );
    let proxy = line.proxy();
    let status = fs::read_to_string(format!("/proc/{}/status", proxy.pid)).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65534"),
        "the proxy does not run as nobody: {uid}"
    );
    let info = mountinfo_of(proxy.pid, &line.mnt()).expect("no mount in the namespace");
    assert!(
        info.contains("user_id=65534") && info.contains("nosuid") && info.contains("nodev"),
        "not nobody's fusermount3 mount: {info}"
    );
    assert!(
        line.log().contains("made through fusermount3"),
        "{}",
        line.log()
    );
    // nobody's own write, inside the namespace (no allow_other: root may not).
    let (st, _, err) = run_bounded(
        Command::new("nsenter")
            .args(["-t", &proxy.pid.to_string(), "-m", "setpriv"])
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg("echo as-nobody > \"$1/f\"")
            .arg("sh")
            .arg(line.mnt()),
        COMMAND_BOUND,
    )
    .expect("the write as nobody did not finish");
    assert!(st.success(), "write as nobody: {st}: {err}");
    assert_eq!(fs::read(line.path("src/f")).unwrap(), b"as-nobody\n");

    let daemons = line.daemons(&proxy);
    let (st, _, err) = run_bounded(
        Command::new("nsenter")
            .args(["-t", &proxy.pid.to_string(), "-m", "umount"])
            .arg(line.mnt()),
        COMMAND_BOUND,
    )
    .expect("umount did not finish");
    assert!(st.success(), "umount in the namespace: {st}: {err}");
    assert!(
        wait_until(EXIT_BOUND, || proxy.is_gone()),
        "the proxy still runs after umount\n{}",
        line.log()
    );
    assert!(
        wait_until(EXIT_BOUND, || daemons.iter().all(ProcId::is_gone)),
        "the daemon still runs after umount"
    );
    assert!(!line.log().contains("CRIT"), "{}", line.log());
}

/// A child of the test's, killed (by its pid) and reaped when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
