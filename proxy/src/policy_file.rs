//! The policy file: read at start, and again on SIGHUP by a thread of its
//! own, so that reading, parsing and compiling (which allocate) never run
//! on the forwarding thread.
//!
//! The forwarding thread only writes one byte to a pipe to ask for a
//! reload, and takes the compiled result from a mutex when the thread wakes
//! it (mio's Waker, an eventfd): neither allocates.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fuseproxy_policies::{Policy, Rules};

use crate::cli::Overrides;

/// Where the policy comes from: a file (or none) and the command line's
/// overrides.
#[derive(Debug, Clone)]
pub struct PolicySource {
    /// `--policy`.
    pub path: Option<PathBuf>,
    /// Options given on the command line.
    pub overrides: Overrides,
}

impl PolicySource {
    /// Reads, checks and completes the policy. The error is one line:
    /// `FILE:LINE:COLUMN: KEY: what is wrong`.
    pub fn load(&self) -> Result<Policy, String> {
        let mut policy = match &self.path {
            None => Policy::default(),
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{name}: cannot read the policy file: {e}"))?;
                Policy::parse(&name, &text).map_err(|e| e.to_string())?
            }
        };
        self.overrides.apply(&mut policy);
        policy
            .validate()
            .map_err(|(key, msg)| format!("command line: {key}: {msg}"))?;
        Ok(policy)
    }

    /// The file, for logs.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// What a reload produced.
pub type Loaded = Result<(Policy, Rules), String>;

/// The reloading thread's two ends, as the event loop holds them.
pub struct Reloader {
    trigger: File,
    result: Arc<Mutex<Option<Loaded>>>,
}

impl Reloader {
    /// Starts the thread; `wake` is called when a result is ready.
    ///
    /// # Errors
    /// When the pipe or the thread cannot be made.
    pub fn start(
        source: PolicySource,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<Reloader> {
        let (rx, tx) = nix::unistd::pipe().map_err(std::io::Error::from)?;
        let result: Arc<Mutex<Option<Loaded>>> = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&result);
        crate::threads::spawn_started(
            std::thread::Builder::new()
                .name("policy-reload".into())
                // mlockall locks its stack too: TOML's nesting is shallow.
                .stack_size(512 * 1024),
            move || reload_thread(File::from(rx), source, slot, wake),
        )?;
        Ok(Reloader {
            trigger: File::from(tx),
            result,
        })
    }

    /// Asks for the file to be read again.
    pub fn request(&mut self) {
        // A full pipe means reloads are already queued: nothing lost.
        let _ = self.trigger.write(&[1]);
    }

    /// The latest result, if one is ready.
    pub fn take(&self) -> Option<Loaded> {
        self.result.lock().ok().and_then(|mut r| r.take())
    }
}

fn reload_thread(
    mut trigger: File,
    source: PolicySource,
    slot: Arc<Mutex<Option<Loaded>>>,
    wake: impl Fn(),
) {
    let mut byte = [0u8; 64];
    // Ends when the event loop drops its end of the pipe.
    while matches!(trigger.read(&mut byte), Ok(n) if n > 0) {
        let loaded = source.load().map(|p| {
            let rules = Rules::compile(&p);
            (p, rules)
        });
        if let Ok(mut s) = slot.lock() {
            *s = Some(loaded);
        }
        wake();
    }
}
