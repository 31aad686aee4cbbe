//! The backend's channel: one SOCK_SEQPACKET datagram per FUSE message.
//!
//! A backend that dies with requests unread makes recv() fail with
//! ECONNRESET rather than return 0, and send() then fails with EPIPE
//! (fuse-notes "Lifecycle"): all of these mean the backend is gone.

use std::os::fd::AsRawFd;
use std::os::fd::BorrowedFd;

use nix::errno::Errno;
use nix::sys::socket::{recv as sys_recv, send as sys_send, MsgFlags};

/// What a receive gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// A datagram: `len` bytes landed in the buffer, of `real_len` sent. A
    /// larger `real_len` means it was truncated (MSG_TRUNC reports it).
    Message {
        /// Bytes in the buffer.
        len: usize,
        /// Bytes the backend sent.
        real_len: usize,
    },
    /// Nothing to receive now.
    WouldBlock,
    /// The backend is gone: EOF, or the errno of the failure.
    Closed(Option<Errno>),
}

/// Receives one datagram; on a blocking socket (the backend's reader
/// thread) waits for it, on a non-blocking one says `WouldBlock`.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Recv {
    loop {
        return match sys_recv(fd.as_raw_fd(), buf, MsgFlags::MSG_TRUNC) {
            Ok(0) => Recv::Closed(None),
            Ok(n) => Recv::Message {
                len: n.min(buf.len()),
                real_len: n,
            },
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => Recv::WouldBlock,
            Err(e) => Recv::Closed(Some(e)),
        };
    }
}

/// What a send gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// The whole message is queued on the socket.
    Sent,
    /// The socket is full; try again when writable.
    WouldBlock,
    /// The message can never be sent (larger than the socket buffer).
    TooBig,
    /// The backend is gone.
    Closed(Errno),
}

/// Sends one message as one datagram.
pub fn send(fd: BorrowedFd<'_>, msg: &[u8]) -> Send {
    loop {
        return match sys_send(
            fd.as_raw_fd(),
            msg,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(_) => Send::Sent,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => Send::WouldBlock,
            Err(Errno::EMSGSIZE) => Send::TooBig,
            Err(e) => Send::Closed(e),
        };
    }
}
