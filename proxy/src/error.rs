//! The proxy's errors: what failed and where, for one line from `main`.

use std::fmt;
use std::path::PathBuf;

/// Everything that ends the proxy with a message.
#[derive(Debug)]
pub enum Error {
    /// The command line is wrong; exit status 2.
    Usage(String),
    /// The mountpoint cannot be used.
    Mountpoint {
        /// As given.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// mount(2) or umount(2) failed.
    Mount {
        /// The mountpoint.
        path: PathBuf,
        /// What the kernel said.
        reason: String,
    },
    /// /dev/fuse failed.
    Device(String),
    /// The backend could not be started, or died.
    Backend(String),
    /// Setting up the proxy's own resources failed.
    Setup(String),
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) => write!(f, "{m}"),
            Error::Mountpoint { path, reason } => {
                write!(f, "mountpoint {}: {reason}", path.display())
            }
            Error::Mount { path, reason } => write!(f, "mount on {}: {reason}", path.display()),
            Error::Device(m) => write!(f, "{m}"),
            Error::Backend(m) => write!(f, "backend: {m}"),
            Error::Setup(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {}
