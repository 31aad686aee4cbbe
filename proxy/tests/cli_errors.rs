//! fuseproxy's answers to a wrong command line or an unusable setup.
//!
//! Each error gives one clear line on stderr that names the problem, a
//! non-zero exit status (2 for command-line errors, whose line starts with
//! `fuseproxy: `), and leaves no new mount on the test's mountpoint. A
//! backend that exits at once is found only after the proxy has mounted:
//! the mount is removed and the proxy exits with 1 and a last line saying
//! the backend exited before answering INIT. `--help` exits 0 and documents
//! every option, an example and the exit statuses.

mod common;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use common::{mount_table, Mode, Mount, MountBuilder};

/// No error case may take longer than this (the proxy's shutdown grace is
/// 5 s; none of these should need it).
const EXIT_BOUND: Duration = Duration::from_secs(20);

/// Runs `fuseproxy ARGS` (placeholders `{mnt}`, `{dir}`, `{backing}`) in a
/// fresh temporary directory and waits for it to exit. The guard removes
/// any mount and process left behind, even if an assertion fails.
fn run(args: &[&str]) -> (Mount, ExitStatus) {
    let mut m = MountBuilder::new(Mode::Proxy, Vec::<&str>::new())
        .raw_proxy_args(args)
        .start();
    let st = m
        .wait_exit(EXIT_BOUND)
        .unwrap_or_else(|| panic!("fuseproxy {args:?} still runs after {EXIT_BOUND:?}"));
    (m, st)
}

/// Entries of /proc/self/mountinfo on or under the test's directory.
fn mounts_under(m: &Mount) -> Vec<PathBuf> {
    mount_table()
        .into_iter()
        .filter(|e| e.mount_point.starts_with(m.dir()))
        .map(|e| e.mount_point)
        .collect()
}

/// The one line `stderr` must consist of.
fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1 && !lines[0].trim().is_empty(),
        "stderr is not one non-empty line:\n{stderr}"
    );
    lines[0]
}

/// The last non-empty line of `stderr`.
fn last_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("stderr is empty"))
}

fn assert_names(line: &str, words: &[&str]) {
    for w in words {
        assert!(line.contains(w), "{line:?} does not mention {w:?}");
    }
}

/// A command-line error: status 2, one line `fuseproxy: ...` naming it,
/// nothing mounted. Returns the run's guard, to look at its directory.
fn usage_error(args: &[&str], words: &[&str]) -> Mount {
    let (m, st) = run(args);
    let err = m.proxy_log();
    assert_eq!(
        st.code(),
        Some(2),
        "fuseproxy {args:?}: {st}; stderr:\n{err}"
    );
    let line = one_line(&err);
    assert!(
        line.starts_with("fuseproxy: "),
        "a command-line error should read \"fuseproxy: ...\", got {line:?}"
    );
    assert_names(line, words);
    assert_eq!(mounts_under(&m), Vec::<PathBuf>::new(), "mounted");
    m
}

/// An error found before mounting: non-zero status, one line naming it,
/// nothing mounted on `mnt`.
fn setup_error(args: &[&str], words: &[&str]) {
    let (m, st) = run(args);
    let err = m.proxy_log();
    assert!(
        !st.success(),
        "fuseproxy {args:?} succeeded; stderr:\n{err}"
    );
    assert_ne!(st.code(), None, "killed by a signal: {st}");
    assert_names(one_line(&err), words);
    assert_eq!(mounts_under(&m), Vec::<PathBuf>::new(), "mounted");
}

#[test]
fn threads_beyond_the_arena_are_refused_before_mounting() {
    usage_error(
        &["--threads", "0", "{mnt}", "--", "/bin/true", "{mnt}"],
        &["--threads", "0"],
    );
    // The default arena has 22 slots; 30 readers cannot each keep one.
    setup_error(
        &["--threads", "30", "{mnt}", "--", "/bin/true", "{mnt}"],
        &["--threads 30", "--arena-size 35M", "22"],
    );
}

#[test]
fn the_ring_with_several_threads_is_refused_before_mounting() {
    usage_error(
        &[
            "--kernel-transport",
            "uring",
            "--threads",
            "2",
            "{mnt}",
            "--",
            "/bin/true",
            "{mnt}",
        ],
        &["--kernel-transport uring", "--threads 2"],
    );
    usage_error(
        &[
            "--kernel-transport",
            "io_uring",
            "{mnt}",
            "--",
            "/bin/true",
            "{mnt}",
        ],
        &["io_uring", "--kernel-transport"],
    );
}

#[test]
fn bad_restart_policies_are_refused_before_mounting() {
    usage_error(
        &["--restart", "always", "{mnt}", "--", "/bin/true", "{mnt}"],
        &["--restart", "always", "on-failure"],
    );
    usage_error(
        &[
            "--restart",
            "on-failure,max=0",
            "{mnt}",
            "--",
            "/bin/true",
            "{mnt}",
        ],
        &["max=\"0\""],
    );
}

#[test]
fn backend_command_without_double_dash() {
    usage_error(
        &["{mnt}", "/bin/true", "{mnt}"],
        &["unexpected argument", "/bin/true"],
    );
}

#[test]
fn missing_backend_command_is_named() {
    // clap's message for this spans lines; its one-line form must still say
    // what is missing.
    usage_error(&["{mnt}"], &["BACKEND_COMMAND"]);
    usage_error(&["{mnt}", "--"], &["BACKEND_COMMAND"]);
}

#[test]
fn backend_command_without_the_mountpoint() {
    usage_error(
        &["{mnt}", "--", "/bin/true", "{dir}/elsewhere"],
        &["mountpoint", "mnt"],
    );
}

#[test]
fn bad_option_values() {
    usage_error(
        &["--arena-size", "12Q", "{mnt}", "--", "/bin/true", "{mnt}"],
        &["--arena-size", "12Q"],
    );
    usage_error(
        &["--max-inflight", "0", "{mnt}", "--", "/bin/true", "{mnt}"],
        &["--max-inflight"],
    );
    usage_error(
        &["--log-level", "loud", "{mnt}", "--", "/bin/true", "{mnt}"],
        &["--log-level", "loud"],
    );
}

#[test]
fn bad_recording_options() {
    usage_error(
        &[
            "--record",
            "{dir}/absent/s.fcap",
            "{mnt}",
            "--",
            "/bin/true",
            "{mnt}",
        ],
        &["--record", "absent/s.fcap", "No such file"],
    );
    usage_error(
        &["--record-size", "1M", "{mnt}", "--", "/bin/true", "{mnt}"],
        &["--record"],
    );
    let m = usage_error(
        &[
            "--record",
            "{dir}/s.fcap",
            "--record-size",
            "16",
            "{mnt}",
            "--",
            "/bin/true",
            "{mnt}",
        ],
        &["--record-size", "16"],
    );
    assert!(
        !m.dir().join("s.fcap").exists(),
        "a refused recording left its file behind"
    );
    // Rotation: a limit on files needs a file size, which has a minimum.
    usage_error(
        &[
            "--record",
            "{dir}/s.fcap",
            "--record-files",
            "3",
            "{mnt}",
            "--",
            "/bin/true",
            "{mnt}",
        ],
        &["--record-file-size"],
    );
    let m = usage_error(
        &[
            "--record",
            "{dir}/s.fcap",
            "--record-file-size",
            "1K",
            "{mnt}",
            "--",
            "/bin/true",
            "{mnt}",
        ],
        &["--record-file-size", "1024", "65536"],
    );
    assert!(!m.dir().join("s.fcap").exists());
}

#[test]
fn unknown_mount_option() {
    usage_error(
        &["-o", "no_such_option", "{mnt}", "--", "/bin/true", "{mnt}"],
        &["no_such_option"],
    );
}

#[test]
fn mountpoint_does_not_exist() {
    setup_error(
        &["{dir}/absent", "--", "/bin/true", "{dir}/absent"],
        &["mountpoint", "absent", "No such file"],
    );
}

#[test]
fn mountpoint_already_mounted() {
    common::require_root_and_fuse();
    let dir = tempfile::Builder::new()
        .prefix("fuseproxy-test.")
        .tempdir()
        .unwrap();
    let mnt = dir.path().join("mnt");
    let _tmpfs = common::Tmpfs::mount(&mnt, "1m");
    let m = mnt.to_str().unwrap();
    let (st, out, err) =
        common::run_proxy([m, "--", "/bin/true", m], EXIT_BOUND).expect("fuseproxy did not exit");
    assert!(
        !st.success(),
        "fuseproxy succeeded; stdout {out:?} stderr:\n{err}"
    );
    assert_ne!(st.code(), None, "killed by a signal: {st}");
    assert_names(one_line(&err), &["mountpoint", "already a mount point"]);
    let on = mount_table();
    let on: Vec<_> = on.iter().filter(|e| e.mount_point == mnt).collect();
    assert!(
        on.len() == 1 && on[0].fstype == "tmpfs",
        "mounts on {}: {on:?}",
        mnt.display()
    );
}

#[test]
fn backend_program_missing() {
    setup_error(
        &["{mnt}", "--", "{dir}/no-such-backend", "{mnt}"],
        &["no-such-backend", "no such program"],
    );
    setup_error(
        &["{mnt}", "--", "fuseproxy-test-no-such-backend", "{mnt}"],
        &["fuseproxy-test-no-such-backend", "no such program"],
    );
}

/// The backend exits before answering INIT: with the fd channel the proxy
/// has mounted by then, so it must remove the mount and exit with 1, saying
/// so on its last line. (With the seccomp channel the backend dies before
/// mounting: tests/seccomp_channel.rs.)
fn backend_dies_at_start(args: &[&str], status: &str) -> String {
    let args: Vec<&str> = ["--channel", "fd"].iter().chain(args).copied().collect();
    let (m, st) = run(&args);
    let err = m.proxy_log();
    assert_eq!(st.code(), Some(1), "exit status {st}; stderr:\n{err}");
    assert_names(
        last_line(&err),
        &["backend (pid ", status, "before answering INIT", "removed"],
    );
    assert_eq!(mounts_under(&m), Vec::<PathBuf>::new(), "still mounted");
    err
}

#[test]
fn backend_exits_at_once() {
    backend_dies_at_start(
        &["{mnt}", "--", "/bin/false", "{mnt}"],
        "exited with status 1",
    );
    // At log level error, nothing but that line.
    let err = backend_dies_at_start(
        &["--log-level", "error", "{mnt}", "--", "/bin/false", "{mnt}"],
        "exited with status 1",
    );
    one_line(&err);
}

#[test]
fn passthrough_with_an_invalid_option() {
    let pll = common::passthrough_ll().to_str().unwrap();
    let err = backend_dies_at_start(
        &["{mnt}", "--", pll, "-f", "-o", "no_such_option", "{mnt}"],
        "exited with status 1",
    );
    // The backend's own complaint reaches the same stderr.
    assert!(err.contains("no_such_option"), "stderr:\n{err}");
}

#[test]
fn passthrough_with_a_missing_source() {
    let pll = common::passthrough_ll().to_str().unwrap();
    backend_dies_at_start(
        &[
            "{mnt}",
            "--",
            pll,
            "-f",
            "-o",
            "source={dir}/no-such-source",
            "{mnt}",
        ],
        "exited with status 1",
    );
}

#[test]
fn help_documents_options_examples_and_exit_statuses() {
    let (st, out, err) =
        common::run_proxy(["--help"], EXIT_BOUND).expect("fuseproxy --help did not exit");
    assert!(st.success(), "--help: {st}; stderr:\n{err}");
    assert!(err.is_empty(), "--help wrote to stderr:\n{err}");
    for opt in [
        "-o <OPTIONS>",
        "-v, --verbose",
        "--log-level",
        "--arena-size",
        "--max-inflight",
        "-h, --help",
        "-V, --version",
        "MOUNTPOINT",
        "BACKEND_COMMAND",
        "SIGUSR1",
    ] {
        assert!(out.contains(opt), "--help does not mention {opt:?}:\n{out}");
    }
    assert!(out.contains("EXAMPLES"), "no examples:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("fuseproxy /") && l.contains(" -- ")),
        "no example command line:\n{out}"
    );
    let statuses = &out[out.find("EXIT STATUS").expect("no EXIT STATUS section")..];
    for code in ["0", "1", "2"] {
        assert!(
            statuses
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "exit status {code} is not documented:\n{statuses}"
        );
    }
}

/// `--hand-off-fd N` (for `fuseproxy-capture replay --hand-off`) with an
/// fd that is not open, or not a socket: one line naming it, exit 2.
#[test]
fn hand_off_fd_must_be_an_open_socket() {
    usage_error(
        &["--hand-off-fd", "77", "{mnt}", "--", "/bin/true", "{mnt}"],
        &["--hand-off-fd 77: Bad file"],
    );
    // Its stdin is /dev/null.
    usage_error(
        &["--hand-off-fd", "0", "{mnt}", "--", "/bin/true", "{mnt}"],
        &["--hand-off-fd 0", "not a socket"],
    );
}
