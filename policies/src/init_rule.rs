//! The INIT rule: what the proxy removes from the kernel's offer, and the
//! limits it puts on the backend's answer.
//!
//! The backend talks to a socket, not to /dev/fuse. Capabilities that work
//! only on the real device must not be negotiated, or the kernel and the
//! backend would each believe the other does something neither can.

use fuseproxy_protocol::flags::{
    FUSE_OVER_IO_URING, FUSE_PASSTHROUGH, FUSE_SPLICE_MOVE, FUSE_SPLICE_READ, FUSE_SPLICE_WRITE,
};

/// INIT flags that need the backend to hold the real device.
///
/// - `FUSE_PASSTHROUGH` (7.40): the backend registers backing files with
///   `FUSE_DEV_IOC_BACKING_OPEN` on /dev/fuse; an ioctl on the socket fails.
/// - `FUSE_OVER_IO_URING` (7.42): requests move to io_uring queues registered
///   on /dev/fuse, bypassing the proxy entirely.
/// - `FUSE_SPLICE_WRITE`/`MOVE`/`READ`: splice to or from /dev/fuse; on the
///   socket they mean nothing, and the proxy reads with read(2) by design.
pub const DEVICE_ONLY_FLAGS: u64 =
    FUSE_PASSTHROUGH | FUSE_OVER_IO_URING | FUSE_SPLICE_WRITE | FUSE_SPLICE_MOVE | FUSE_SPLICE_READ;

/// Room a request needs besides its data: `fuse_in_header` + `fuse_write_in`.
pub const REQUEST_OVERHEAD: usize = 40 + 40;

const PAGE: usize = 4096;

/// The largest `max_write` and `max_pages` whose messages fit in `max_message`
/// bytes (one arena slot): data pages plus headers.
pub fn limits_for(max_message: usize) -> (u32, u16) {
    let pages = max_message.saturating_sub(REQUEST_OVERHEAD) / PAGE;
    let pages = pages.min(u16::MAX as usize);
    ((pages * PAGE).min(u32::MAX as usize) as u32, pages as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_of_1mib_plus_a_page_carries_1mib_writes() {
        assert_eq!(limits_for(1024 * 1024 + 4096), (1024 * 1024, 256));
        assert_eq!(limits_for(1024 * 1024), (1024 * 1024 - 4096, 255));
    }
}
