//! systemd's readiness protocol (`sd_notify(3)`), written against the
//! protocol: one datagram of `KEY=VALUE` lines to the unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). No library.
//!
//! What the proxy says: `READY=1` once the mount answers (INIT answered),
//! `STATUS=` with its counters then and on each SIGUSR1, `STOPPING=1` when
//! it starts to end. A send that fails is logged once at debug and
//! otherwise ignored: the mount does not depend on its supervisor.

use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::error::Error;

/// The supervisor's notification socket, when there is one.
pub struct Notify {
    socket: UnixDatagram,
    to: SocketAddr,
}

impl Notify {
    /// From `NOTIFY_SOCKET`: `None` when unset or empty.
    ///
    /// # Errors
    ///
    /// A name that is not a socket address, or no datagram socket.
    pub fn from_env() -> Result<Option<Notify>, Error> {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let bytes = name.as_encoded_bytes();
        let to = match bytes.strip_prefix(b"@") {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name)
            }
            None => SocketAddr::from_pathname(&name),
        }
        .map_err(|e| Error::Setup(format!("NOTIFY_SOCKET={}: {e}", name.to_string_lossy())))?;
        let socket = UnixDatagram::unbound()
            .map_err(|e| Error::Setup(format!("a socket for NOTIFY_SOCKET: {e}")))?;
        Ok(Some(Notify { socket, to }))
    }

    /// Sends `state` (`KEY=VALUE` lines); `false` if it could not be sent.
    pub fn send(&self, state: &str) -> bool {
        self.socket.send_to_addr(state.as_bytes(), &self.to).is_ok()
    }
}
