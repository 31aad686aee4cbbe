//! Going to the background once the mount answers, as a libfuse daemon does
//! without `-f`: what the mount-helper form needs, since mount(8) waits for
//! mount.fuse3, which waits for the proxy.
//!
//! [`detach`] forks before anything else exists (no thread, no signal mask,
//! no locked memory, no logger). The parent waits on a pipe and exits with
//! what the child reports there: 0 once [`ready`] says the mount answers,
//! else the child's error line (printed as `fuseproxy: SOURCE on
//! MOUNTPOINT: ...`) and its exit status. The child goes on as the proxy,
//! with stdin and stdout on /dev/null and stderr on the log file if one is
//! given (otherwise the inherited stderr, whatever mount(8) had). It stays
//! in its parent's session until [`ready`]: a Ctrl-C on a mount that never
//! comes up reaches both (the child then unmounts as on any SIGINT); then it
//! calls setsid(2), so that no terminal's hangup or signal reaches the
//! running mount.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{dup2, fork, pipe2, setsid, ForkResult, Pid};

use crate::error::Error;

/// The child's end of the pipe until it has reported; `None` in the parent,
/// in a proxy that did not detach, and once reported.
static REPORT: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// The pipe's message when the mount answers.
const READY: &[u8] = b"ready\n";

/// Forks. Returns in the child only; the parent exits with the child's
/// report. `log`: the file that becomes the child's stderr (opened by the
/// caller, so that a bad path is reported before the fork). `line` names
/// the fstab line in the parent's messages.
pub fn detach(log: Option<File>, line: &str) -> Result<(), Error> {
    // So that neither the pipe nor /dev/null below lands on 0, 1 or 2
    // (then replaced or closed by the dup2s).
    std_fds_open()?;
    let (read, write) = pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::Setup(format!("pipe: {}", e.desc())))?;
    // SAFETY: called from main before any thread exists (the caller's
    // invariant: no logger, no signal thread, nothing spawned), so the
    // child is a complete copy and may run any code.
    match unsafe { fork() } {
        Err(e) => Err(Error::Setup(format!("fork: {}", e.desc()))),
        Ok(ForkResult::Parent { child }) => {
            drop(write);
            std::process::exit(wait_for_report(read, child, line));
        }
        Ok(ForkResult::Child) => {
            drop(read);
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| Error::Setup(format!("/dev/null: {e}")))?;
            let mut targets = vec![(null.as_raw_fd(), 0), (null.as_raw_fd(), 1)];
            if let Some(f) = &log {
                targets.push((f.as_raw_fd(), 2));
            }
            for (from, to) in targets {
                dup2(from, to).map_err(|e| Error::Setup(format!("dup2: {}", e.desc())))?;
            }
            *REPORT.lock().unwrap_or_else(|p| p.into_inner()) = Some(write);
            Ok(())
        }
    }
}

/// The mount answers: tells the waiting parent (which then exits 0) and
/// leaves its session. Only the first call does anything; without a
/// waiting parent, nothing. Returns false if the parent was gone (the
/// mount stays; the caller logs it).
pub fn ready() -> bool {
    let Some(fd) = REPORT.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return true;
    };
    let told = File::from(fd).write_all(READY).is_ok();
    // Not a process group leader (a forked child), so this cannot fail
    // with EPERM; any other failure leaves it in the old session, harmless.
    let _ = setsid();
    told
}

/// The proxy fails before the mount answered: hands `message` and `code` to
/// the waiting parent, which prints them. False if no parent waits (the
/// caller prints it itself).
pub fn failed(message: &str, code: i32) -> bool {
    let Some(fd) = REPORT.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return false;
    };
    let one_line = message.replace('\n', " ");
    File::from(fd)
        .write_all(format!("error {code} {one_line}\n").as_bytes())
        .is_ok()
}

/// The parent's side: reads the child's report to its end and returns the
/// exit status to end with. A child that ends without a report (killed,
/// or ended without mounting) is reported with its status.
fn wait_for_report(read: OwnedFd, child: Pid, line: &str) -> i32 {
    let mut report = String::new();
    // EOF comes when the child reports (it closes its end) or ends; the
    // pipe is close-on-exec, so no daemon it starts keeps it open.
    let _ = File::from(read).read_to_string(&mut report);
    if report.as_bytes() == READY {
        return 0;
    }
    if let Some(rest) = report.strip_prefix("error ") {
        let (code, msg) = rest.trim_end().split_once(' ').unwrap_or(("1", rest));
        eprintln!("fuseproxy: {line}: {msg}");
        return code.parse().unwrap_or(1);
    }
    // No report: the child has ended (or is about to); its status, if it
    // comes within a second.
    let deadline = Instant::now() + Duration::from_secs(1);
    let how = loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => break format!("exited with status {c}"),
            Ok(WaitStatus::Signaled(_, s, _)) => break format!("was killed by {s}"),
            _ if Instant::now() >= deadline => break "closed its report pipe".to_string(),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    eprintln!(
        "fuseproxy: {line}: the proxy (pid {child}) {how} before the mount was up (see its log)"
    );
    1
}

/// The mount-helper form's start: `log=FILE` opened (a bad path is the
/// line's error, before anything runs), then with `-f` the proxy stays in
/// the foreground with its stderr on that file, and without it detaches.
/// Call with no thread running.
pub fn start(h: &crate::helper_form::HelperForm) -> Result<(), Error> {
    let log = match &h.log {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|e| {
                    Error::Usage(format!("{}: option log={}: {e}", h.line(), path.display()))
                })?,
        ),
        None => None,
    };
    if !h.foreground {
        return detach(log, &h.line());
    }
    if let Some(f) = log {
        dup2(f.as_raw_fd(), 2).map_err(|e| Error::Setup(format!("dup2: {}", e.desc())))?;
    }
    Ok(())
}

/// Opens /dev/null on each of 0, 1 and 2 that is closed (a helper may be
/// run so), and leaves it open there.
fn std_fds_open() -> Result<(), Error> {
    use std::os::fd::IntoRawFd;
    for fd in 0..3 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            // The lowest free descriptor: `fd` itself, kept open for good.
            let _ = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| Error::Setup(format!("/dev/null: {e}")))?
                .into_raw_fd();
        }
    }
    Ok(())
}
