//! The fusermount stand-in: what runs when the daemon runs fusermount under
//! the fusermount channel ([`crate::fusermount`]).
//!
//! It is the fuseproxy executable itself, bind-mounted over the fusermount
//! programs in the daemon's mount namespace, and recognised by its name
//! (`fusermount`, `fusermount3`, `mergerfs-fusermount`). It sends its arguments and working
//! directory to the proxy listening for its mount namespace
//! ([`crate::fusermount::socket_name`]), and for a
//! mount passes the socket it gets back on to the daemon over
//! `_FUSE_COMMFD`, as fusermount passes the /dev/fuse fd. It decides
//! nothing: the proxy checks and makes the mount.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    connect, sendmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessage, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use nix::sys::time::TimeVal;

use crate::fusermount::{socket_name, MAGIC};

/// Whether this process was started as a fusermount program.
pub fn invoked_as_fusermount() -> Option<String> {
    let arg0 = std::env::args_os().next()?;
    let name = std::path::Path::new(&arg0)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    // fusermount, fusermount3, mergerfs-fusermount; never fuseproxy.
    name.contains("fusermount").then_some(name)
}

/// Runs the stand-in; `name` is what it was called (for its messages, which
/// read like fusermount's).
pub fn run(name: &str) -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "{name}: fuseproxy's stand-in for fusermount (fuseproxy --channel fusermount).\n\
             It passes mount and unmount requests to the proxy that started this \
             process's FUSE daemon; the proxy checks them and makes the mount."
        );
        return 0;
    }
    if args.iter().any(|a| a == "-V" || a == "--version") {
        println!(
            "{name} version: fuseproxy {} stand-in",
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    }
    match ask_proxy(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{name}: {e}");
            1
        }
    }
}

/// How long the proxy may take to answer (it mounts meanwhile).
const ANSWER_WAIT: i64 = 30;

/// How long the stand-in keeps trying to reach the proxy: it starts
/// listening just after the daemon starts, and a daemon quick to mount may
/// come first.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn ask_proxy(args: &[String]) -> Result<(), String> {
    let ns = std::fs::read_link("/proc/self/ns/mnt")
        .map_err(|e| format!("reading /proc/self/ns/mnt: {e}"))?;
    let name = socket_name(ns.as_os_str());
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {}", e.desc()))?;
    let addr = UnixAddr::new_abstract(name.as_bytes())
        .map_err(|e| format!("socket name @{name}: {}", e.desc()))?;
    let deadline = std::time::Instant::now() + CONNECT_WAIT;
    loop {
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => break,
            Err(nix::errno::Errno::ECONNREFUSED) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                return Err(format!(
                    "this is fuseproxy standing in for fusermount, and no proxy listens \
                     for this mount namespace (@{name}: {}); it only works for a daemon \
                     started by fuseproxy --channel fusermount",
                    e.desc()
                ))
            }
        }
    }
    setsockopt(
        &sock,
        sockopt::ReceiveTimeout,
        &TimeVal::new(ANSWER_WAIT, 0),
    )
    .map_err(|e| format!("setsockopt: {}", e.desc()))?;
    let cwd = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;
    let mut req = Vec::new();
    req.extend_from_slice(MAGIC.as_bytes());
    req.push(0);
    req.extend_from_slice(cwd.to_string_lossy().as_bytes());
    for a in args {
        req.push(0);
        req.extend_from_slice(a.as_bytes());
    }
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&req)],
        &[],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| format!("sending the request to the proxy: {}", e.desc()))?;
    let (answer, fd) = receive(&sock)?;
    match answer.split_first() {
        Some((0, _)) => {}
        Some((_, why)) => return Err(String::from_utf8_lossy(why).into_owned()),
        None => return Err("the proxy closed the connection without answering".into()),
    }
    let Some(fd) = fd else {
        return Ok(()); // an unmount
    };
    let commfd: RawFd = std::env::var("_FUSE_COMMFD")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or("old style mounting not supported (_FUSE_COMMFD is not set)")?;
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        commfd,
        &[IoSlice::new(&[0u8])],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| {
        format!(
            "passing the channel over _FUSE_COMMFD={commfd}: {}",
            e.desc()
        )
    })?;
    Ok(())
}

/// One answer and the fd that came with it, if any.
fn receive(sock: &OwnedFd) -> Result<(Vec<u8>, Option<OwnedFd>), String> {
    let mut buf = vec![0u8; 4096];
    let (n, fd) = crate::fd_passing::recv_with_fd(sock.as_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| format!("waiting for the proxy's answer: {}", e.desc()))?;
    Ok((buf[..n].to_vec(), fd))
}
