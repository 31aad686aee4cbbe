//! Receiving a descriptor sent over a unix socket (SCM_RIGHTS): the seccomp
//! channel's listener from the backend's child, the channel the proxy hands
//! the fusermount stand-in, and the /dev/fuse fusermount3 passes back.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Receives one message into `buf` and the first descriptor sent with it,
/// close-on-exec; any further descriptor is closed. `flags` are added to
/// MSG_CMSG_CLOEXEC (MSG_DONTWAIT, say). Returns the message's length.
pub fn recv_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> nix::Result<(usize, Option<OwnedFd>)> {
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let n = msg.bytes;
    let mut first = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for f in fds {
                // SAFETY: the kernel has just installed `f` in this process
                // for this message; nothing else owns it, and wrapping it
                // closes it exactly once (an extra one is dropped here).
                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                first.get_or_insert(owned);
            }
        }
    }
    Ok((n, first))
}
