//! `--restart on-failure`: the daemon is killed under a live mount and a new
//! one takes its place; the mount, its open files and the kernel's cached
//! nodes go on. passthrough_ll names nodes by the addresses of its own
//! structures, so a cached node id that reached the new daemon untranslated
//! would crash it: these tests fail loudly if the map is wrong.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::policy::passthrough_backend;
use common::{wait_until, Mode, Mount, MountBuilder, Signal};

/// Generous: a restart takes milliseconds here.
const BOUND: Duration = Duration::from_secs(20);

/// passthrough_ll behind the proxy with `--restart`, and the usual caches
/// (entries and attributes cached: the kernel keeps using the node ids it
/// was given before the restart).
fn mount(restart: &str) -> Mount {
    MountBuilder::passthrough(Mode::Proxy, &[])
        .proxy_args(["--restart", restart])
        .mount()
}

/// Kills the daemon and waits for the proxy to say the new one found the
/// kernel's nodes again (the `n`-th time).
fn kill_and_wait_restarted(m: &Mount, n: usize) {
    let backend = passthrough_backend(m);
    backend.signal(Signal::SIGKILL);
    common::wait_taken_over(m, n, BOUND);
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// An error of a round, for the loop's list: EIO as `"EIO"`, the only one
/// a request in flight at a kill may get.
fn failed(what: String, e: std::io::Error) -> String {
    if errno_of(&e) == libc::EIO {
        "EIO".into()
    } else {
        format!("{what}: {e}")
    }
}

/// Runs `round(i)` for i = 0, 1, ... every 2 ms on a thread of its own
/// until `stop` is set; gives the rounds that went right and the errors.
fn looping(
    stop: &Arc<AtomicBool>,
    mut round: impl FnMut(u32) -> Result<(), String> + Send + 'static,
) -> std::thread::JoinHandle<(Vec<u32>, Vec<String>)> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        let (mut ok, mut errors) = (Vec::new(), Vec::new());
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            match round(i) {
                Ok(()) => ok.push(i),
                Err(e) => errors.push(e),
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        (ok, errors)
    })
}

#[test]
fn a_killed_daemon_is_replaced_and_open_files_and_cached_nodes_go_on() {
    let m = mount("on-failure");
    if m.mode() != Mode::Proxy {
        return;
    }
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/held"), b"0123456789").unwrap();
    // An open file and a directory kept open (a working directory is one),
    // both from before the restart.
    let held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("dir/held"))
        .unwrap();
    let dir = fs::File::open(m.path("dir")).unwrap();
    // And a process whose working directory is inside (ended on drop).
    struct Resident(std::process::Child);
    impl Drop for Resident {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let resident = Resident(
        std::process::Command::new("sleep")
            .arg("60")
            .current_dir(m.path("dir"))
            .spawn()
            .unwrap(),
    );

    // A loop of creates, writes, reads and stats across the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let root = m.mountpoint().to_path_buf();
    let looper = looping(&stop, move |i| {
        let p = root.join(format!("dir/f{i}"));
        let body = format!("file {i}\n");
        let back = fs::write(&p, &body)
            .and_then(|()| fs::read(&p))
            .and_then(|back| fs::metadata(&p).map(|_| back))
            .map_err(|e| failed(format!("f{i}"), e))?;
        match back == body.as_bytes() {
            true => Ok(()),
            false => Err(format!("f{i}: read back {back:?}")),
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    kill_and_wait_restarted(&m, 1);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (made, errors) = looper.join().unwrap();

    // At most the calls in flight at the kill failed, and only with EIO.
    let other: Vec<_> = errors.iter().filter(|e| *e != "EIO").collect();
    assert!(
        other.is_empty(),
        "errors other than EIO: {other:?}\n{}",
        m.proxy_log()
    );
    assert!(
        errors.len() <= 3,
        "{} calls failed: {errors:?}",
        errors.len()
    );
    assert!(made.len() > 20, "only {} files made", made.len());

    // The file opened before the restart reads and writes on the new
    // daemon.
    held.write_all_at(b"AB", 2).unwrap();
    let mut back = [0u8; 10];
    held.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(&back, b"01AB456789");
    // The directory opened before: a name looked up through it.
    let name = CString::new("held").unwrap();
    // SAFETY: all-zero bytes are a valid `stat` (integers only).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory fd, a NUL-terminated name and a stat buffer.
    let r = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, 0) };
    assert_eq!(
        r, 0,
        "fstatat through the directory opened before the restart"
    );
    assert_eq!(st.st_size, 10);
    // The working directory: a name looked up from it.
    let through_cwd = fs::read(format!("/proc/{}/cwd/held", resident.0.id()));
    drop(resident);
    assert_eq!(
        through_cwd.unwrap(),
        b"01AB456789",
        "through the working directory"
    );

    // The backing tree is what the callers were told.
    assert_eq!(
        fs::read(m.backing().join("dir/held")).unwrap(),
        b"01AB456789"
    );
    for i in &made {
        let got = fs::read(m.backing().join(format!("dir/f{i}"))).unwrap();
        assert_eq!(got, format!("file {i}\n").as_bytes(), "f{i}");
    }
    assert!(m.is_mounted(), "the mount is gone");
}

#[test]
fn time_updates_acknowledged_while_stopped_land_on_the_new_daemon() {
    let m = mount("on-failure");
    if m.mode() != Mode::Proxy {
        return;
    }
    fs::write(m.path("t"), b"x").unwrap();
    fs::metadata(m.path("t")).unwrap();
    let backend = passthrough_backend(&m);
    stop(&backend);
    // Answered by the proxy while the daemon cannot (by path: an open
    // would wait for the daemon).
    let started = Instant::now();
    let path = CString::new(m.path("t").into_os_string().into_encoded_bytes()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 0,
        },
    ];
    // SAFETY: a NUL-terminated path and two timespecs, as utimensat reads.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0, "utimensat while the daemon is stopped");
    assert!(started.elapsed() < BOUND);
    kill_and_wait_restarted(&m, 1);
    let applied = wait_until(BOUND, || {
        fs::metadata(m.backing().join("t")).is_ok_and(|md| md.mtime() == 1_000_000)
    });
    assert!(
        applied,
        "the new daemon did not get the time update:\n{}",
        m.proxy_log()
    );
}

#[test]
fn what_cannot_be_found_again_answers_estale_and_the_rest_goes_on() {
    let m = mount("on-failure");
    if m.mode() != Mode::Proxy {
        return;
    }
    for n in ["open-deleted", "removed-behind", "kept"] {
        fs::write(m.path(n), n.as_bytes()).unwrap();
    }
    let open_deleted = fs::File::open(m.path("open-deleted")).unwrap();
    fs::remove_file(m.path("open-deleted")).unwrap();
    // Open, then removed where the proxy cannot see it: its node cannot be
    // found again by its name.
    let removed_behind = fs::File::open(m.path("removed-behind")).unwrap();
    fs::remove_file(m.backing().join("removed-behind")).unwrap();

    kill_and_wait_restarted(&m, 1);

    let mut buf = [0u8; 4];
    let e = open_deleted.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ESTALE,
        "read of a file deleted while open: {e}"
    );
    let e = removed_behind.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ESTALE,
        "read of a file removed behind the proxy: {e}"
    );
    // By its name, the kernel looks it up again after ESTALE: gone.
    match fs::read(m.path("removed-behind")) {
        Err(e) => assert!(
            [libc::ESTALE, libc::ENOENT].contains(&errno_of(&e)),
            "a name removed behind the proxy: {e}"
        ),
        Ok(b) => panic!("read {b:?} from a file that is gone"),
    }
    assert_eq!(fs::read(m.path("kept")).unwrap(), b"kept");
    fs::write(m.path("new"), b"new").unwrap();
    assert_eq!(fs::read(m.backing().join("new")).unwrap(), b"new");
    assert!(
        m.proxy_log().contains("lost so far answer ESTALE"),
        "{}",
        m.proxy_log()
    );
}

#[test]
fn a_daemon_that_dies_at_once_is_given_up_after_max_restarts() {
    // Starts passthrough_ll the first time only; after that it exits at once.
    let pll = common::passthrough_ll().to_str().unwrap().to_string();
    let script = format!(
        "if [ -e \"$2/started\" ]; then exit 3; fi; touch \"$2/started\"; \
         exec {pll} -f -o source=\"$2/backing\" \"$1\""
    );
    let mut m = MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args([
            "--restart",
            "on-failure,max=2,window=60s",
            "{mnt}",
            "--",
            "sh",
            "-c",
            &script,
            "sh",
            "{mnt}",
            "{dir}",
        ])
        .mount();
    if m.mode() != Mode::Proxy {
        return;
    }
    fs::write(m.path("f"), b"f").unwrap();
    // A lookup waiting in the daemon when it dies: kept for the next one,
    // then answered EIO when there is none.
    let daemon = passthrough_backend(&m);
    stop(&daemon);
    let p = m.path("never-seen");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(fs::metadata(p).map(drop)));
    // Killed only once the lookup waits in it (a fixed sleep let a loaded
    // machine kill first: the lookup then met the unmounted directory).
    let waiting = wait_until(BOUND, || {
        common::stats::stat_field(&common::stats::dump_stats(&mut m), "inflight") > 0
    });
    assert!(waiting, "the lookup never reached the stopped daemon");
    daemon.signal(Signal::SIGKILL);
    let e = rx
        .recv_timeout(BOUND)
        .expect("the waiting lookup never returned")
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::EIO, "the waiting lookup: {e}");
    let st = m.wait_exit(BOUND).expect("the proxy did not give up");
    assert_eq!(st.code(), Some(1), "{}", m.proxy_log());
    assert!(m.wait_unmounted(BOUND), "still mounted");
    let log = m.proxy_log();
    assert!(
        log.contains("not started again: 2 restarts within 60s"),
        "{log}"
    );
}

/// SIGSTOP, and a bounded wait until every thread of it has stopped (a
/// thread still running could answer the request meant to wait in it).
fn stop(daemon: &common::ProcId) {
    daemon.signal(Signal::SIGSTOP);
    assert!(
        wait_until(BOUND, || common::all_threads_stopped(daemon.pid)),
        "the daemon (pid {}) did not stop",
        daemon.pid
    );
}

/// The one process named `comm` under the proxy.
fn daemon(m: &Mount, comm: &str) -> common::ProcId {
    let found: Vec<_> = m
        .descendants()
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{}/comm", p.pid)).is_ok_and(|c| c.trim() == comm)
        })
        .collect();
    assert_eq!(found.len(), 1, "one {comm} under the proxy: {found:?}");
    found[0]
}

/// Reads of `names` (and stats) in a loop across a kill of `comm`, and a
/// file held open from before: every read right and none failed (a read in
/// flight at the kill is sent again to the new daemon).
fn reads_go_on_across_a_restart(m: &Mount, comm: &str, names: &[(&str, &[u8])]) -> fs::File {
    let held = fs::File::open(m.path(names[0].0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let files: Vec<(std::path::PathBuf, Vec<u8>)> =
        names.iter().map(|(n, b)| (m.path(n), b.to_vec())).collect();
    let looper = looping(&stop, move |_| {
        for (p, want) in &files {
            let b = fs::read(p)
                .and_then(|b| fs::metadata(p).map(|_| b))
                .map_err(|e| failed(p.display().to_string(), e))?;
            if &b != want {
                return Err(format!("{}: {b:?}", p.display()));
            }
        }
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(150));
    daemon(m, comm).signal(Signal::SIGKILL);
    let restarted = wait_until(BOUND, || {
        m.proxy_log().contains("answered INIT as the first did")
    });
    assert!(restarted, "no restart within {BOUND:?}:\n{}", m.proxy_log());
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (ok, errors) = looper.join().unwrap();
    assert!(
        errors.is_empty(),
        "{comm}: reads failed: {errors:?}\n{}",
        m.proxy_log()
    );
    assert!(ok.len() > 20, "{comm}: only {} rounds of reads", ok.len());
    let mut back = vec![0u8; names[0].1.len()];
    held.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(
        back, names[0].1,
        "{comm}: the file held open across the restart"
    );
    held
}

#[test]
fn bindfs_a_libfuse_2_daemon_is_replaced_too() {
    let b = MountBuilder::new(Mode::Proxy, ["bindfs", "-f", "{backing}", "{mnt}"])
        .proxy_args(["--restart", "on-failure"]);
    let m = b.mount();
    if m.mode() != Mode::Proxy {
        return;
    }
    fs::create_dir(m.backing().join("sub")).unwrap();
    fs::write(m.backing().join("sub/a"), b"alpha").unwrap();
    fs::write(m.backing().join("b"), b"beta").unwrap();
    let held = reads_go_on_across_a_restart(&m, "bindfs", &[("sub/a", b"alpha"), ("b", b"beta")]);
    drop(held);
    fs::write(m.path("sub/c"), b"gamma").unwrap();
    assert_eq!(fs::read(m.backing().join("sub/c")).unwrap(), b"gamma");
}

#[test]
fn squashfuse_a_read_only_daemon_is_replaced_too() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/a"), b"alpha").unwrap();
    fs::write(src.join("b"), b"beta").unwrap();
    let img = dir.path().join("t.sqfs");
    let out = common::run_bounded(
        std::process::Command::new("mksquashfs")
            .arg(&src)
            .arg(&img)
            .args(["-noappend", "-no-progress"]),
        BOUND,
    )
    .expect("mksquashfs");
    assert!(out.0.success(), "mksquashfs: {}", out.2);
    let img = img.to_str().unwrap();
    let m = MountBuilder::new(Mode::Proxy, ["squashfuse", "-f", img, "{mnt}"])
        .proxy_args(["--restart", "on-failure"])
        .mount();
    if m.mode() != Mode::Proxy {
        return;
    }
    reads_go_on_across_a_restart(&m, "squashfuse", &[("sub/a", b"alpha"), ("b", b"beta")]);
}

#[test]
fn an_upgrade_on_sigusr2_costs_the_loop_no_error() {
    let mut m = mount("on-failure");
    if m.mode() != Mode::Proxy {
        return;
    }
    fs::create_dir(m.path("dir")).unwrap();
    let held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("dir/held"))
        .unwrap();
    let old = passthrough_backend(&m);
    let stop = Arc::new(AtomicBool::new(false));
    let root = m.mountpoint().to_path_buf();
    let looper = looping(&stop, move |i| {
        let p = root.join(format!("dir/u{i}"));
        let body = format!("u{i}");
        let b = fs::write(&p, &body)
            .and_then(|()| fs::read(&p))
            .map_err(|e| failed(format!("u{i}"), e))?;
        match b == body.as_bytes() {
            true => Ok(()),
            false => Err(format!("u{i}: {b:?}")),
        }
    });
    std::thread::sleep(Duration::from_millis(150));
    m.send_signal(Signal::SIGUSR2)
        .expect("SIGUSR2 to the proxy");
    let replaced = wait_until(BOUND, || {
        m.proxy_log().contains("answered INIT as the first did")
    });
    assert!(replaced, "no upgrade within {BOUND:?}:\n{}", m.proxy_log());
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (made, errors) = looper.join().unwrap();
    assert!(
        errors.is_empty(),
        "the loop saw errors: {errors:?}\n{}",
        m.proxy_log()
    );
    assert!(made.len() > 20, "only {} files", made.len());
    assert!(
        !old.is_alive() || passthrough_backend(&m).pid != old.pid,
        "the old daemon is still the backend"
    );
    held.write_all_at(b"after", 0).unwrap();
    assert_eq!(fs::read(m.backing().join("dir/held")).unwrap(), b"after");
    for i in made {
        let got = fs::read(m.backing().join(format!("dir/u{i}"))).unwrap();
        assert_eq!(got, format!("u{i}").as_bytes());
    }
    assert!(
        m.proxy_log().contains("was ended for an upgrade"),
        "{}",
        m.proxy_log()
    );
}

#[test]
fn a_read_in_flight_at_the_kill_is_sent_to_the_new_daemon() {
    let mut m = MountBuilder::passthrough(Mode::Proxy, &["-o", "cache=never"])
        .proxy_args(["--restart", "on-failure"])
        .mount();
    if m.mode() != Mode::Proxy {
        return;
    }
    fs::write(m.path("r"), b"read me").unwrap();
    let backend = passthrough_backend(&m);
    stop(&backend);
    let p = m.path("r");
    let reader = std::thread::spawn(move || fs::read(p));
    // The read's first request waits in the stopped daemon.
    let waiting = wait_until(BOUND, || {
        common::stats::stat_field(&common::stats::dump_stats(&mut m), "inflight") > 0
    });
    assert!(waiting, "nothing in flight to the stopped daemon");
    backend.signal(Signal::SIGKILL);
    let got = reader.join().unwrap();
    assert_eq!(got.unwrap(), b"read me", "{}", m.proxy_log());
    let log = m.proxy_log();
    assert!(
        log.lines()
            .any(|l| l.contains("answered INIT as the first did") && !l.contains(": 0 requests")),
        "no request was sent again:\n{log}"
    );
}

#[test]
fn the_capture_shows_the_restart() {
    let capture = tempfile::tempdir().unwrap();
    let file = capture.path().join("r.fcap");
    let f = file.to_str().unwrap();
    let mut m = MountBuilder::passthrough(Mode::Proxy, &["-o", "cache=never"])
        .proxy_args(["--restart", "on-failure", "--record", f])
        .mount();
    if m.mode() != Mode::Proxy {
        return;
    }
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/f"), b"x").unwrap();
    let held = fs::File::open(m.path("d/f")).unwrap();
    kill_and_wait_restarted(&m, 1);
    let mut back = [0u8; 1];
    held.read_exact_at(&mut back, 0).unwrap();
    drop(held);
    m.send_signal(Signal::SIGTERM).unwrap();
    assert!(m.wait_exit(BOUND).is_some(), "the proxy did not end");
    let mut out = Vec::new();
    let bytes = fs::read(&file).unwrap();
    fuseproxy_fixtures::decode_capture(
        &bytes,
        &fuseproxy_fixtures::Filter::default(),
        fuseproxy_fixtures::Format::Text,
        &mut out,
    )
    .unwrap()
    .expect("a complete capture");
    let text = String::from_utf8(out).unwrap();
    for said in [
        "backend died with",
        "found again as",
        "opened again as",
        "new backend took over",
    ] {
        assert!(
            text.contains(said),
            "the capture does not say {said:?}:\n{text}"
        );
    }
}
