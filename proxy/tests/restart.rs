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
    let restarted = wait_until(BOUND, || {
        m.proxy_log().matches("found").filter(|_| true).count() >= n
            && m.proxy_log()
                .matches("answered INIT as the first did")
                .count()
                >= n
    });
    assert!(restarted, "no restart within {BOUND:?}:\n{}", m.proxy_log());
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
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

    // A loop of creates, writes, reads and stats across the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let root = m.mountpoint().to_path_buf();
    let looper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut made = Vec::new();
            let mut errors = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let p = root.join(format!("dir/f{i}"));
                let body = format!("file {i}\n");
                let r = fs::write(&p, &body)
                    .and_then(|()| fs::read(&p))
                    .and_then(|back| {
                        fs::metadata(&p)?;
                        Ok(back)
                    });
                match r {
                    Ok(back) if back == body.as_bytes() => made.push(i),
                    Ok(back) => errors.push(format!("f{i}: read back {back:?}")),
                    Err(e) if errno_of(&e) == libc::EIO => errors.push("EIO".into()),
                    Err(e) => errors.push(format!("f{i}: {e}")),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            (made, errors)
        })
    };
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
    backend.signal(Signal::SIGSTOP);
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
    // Cached by the kernel, then removed where the proxy cannot see it.
    fs::metadata(m.path("removed-behind")).unwrap();
    fs::remove_file(m.backing().join("removed-behind")).unwrap();

    kill_and_wait_restarted(&m, 1);

    let mut buf = [0u8; 4];
    let e = open_deleted.read_at(&mut buf, 0).unwrap_err();
    assert_eq!(
        errno_of(&e),
        libc::ESTALE,
        "read of a file deleted while open: {e}"
    );
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
    passthrough_backend(&m).signal(Signal::SIGKILL);
    let st = m.wait_exit(BOUND).expect("the proxy did not give up");
    assert_eq!(st.code(), Some(1), "{}", m.proxy_log());
    assert!(m.wait_unmounted(BOUND), "still mounted");
    let log = m.proxy_log();
    assert!(
        log.contains("not started again: 2 restarts within 60s"),
        "{log}"
    );
}
