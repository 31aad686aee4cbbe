//! The module parameter `fuse.enable_uring`, which the kernel reads when a
//! mount is made: FUSE-over-io_uring is offered only while it is on. It is
//! global, so a test that sets it takes its binary's turn first and puts
//! the old value back however it ends.

use std::fs;

pub const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// The parameter set for the guard's life; the old value goes back on drop.
pub struct Set {
    old: String,
}

impl Set {
    /// `None`, with a line saying why, where the parameter does not exist
    /// (before Linux 6.14) or cannot be written.
    pub fn new(value: &str) -> Option<Set> {
        let old = match fs::read_to_string(PARAM) {
            Ok(v) => v.trim().to_string(),
            Err(e) => {
                eprintln!("skipped: {PARAM}: {e} (FUSE-over-io_uring needs Linux 6.14+)");
                return None;
            }
        };
        if let Err(e) = fs::write(PARAM, value) {
            eprintln!("skipped: cannot write {PARAM}: {e}");
            return None;
        }
        Some(Set { old })
    }
}

impl Drop for Set {
    fn drop(&mut self) {
        let _ = fs::write(PARAM, &self.old);
    }
}
