//! fuseproxy: a protocol-level FUSE proxy.
//!
//! It opens /dev/fuse, mounts the filesystem itself, starts an unmodified
//! FUSE daemon on one end of a socketpair, and forwards every message
//! between the two through the policy engine of `fuseproxy-policies`. This
//! crate is the only one with system calls: it builds the pieces, runs the
//! event loop, and turns the outcome into one line and an exit status.
#![deny(unsafe_code)]
// slog's macros recurse once per argument; the stats line has many.
#![recursion_limit = "256"]

mod alloc_count;
mod arena;
mod backend;
mod backend_user;
mod background;
mod capabilities;
mod channel;
mod clean_end;
mod cli;
mod cpu_latency;
mod device;
mod error;
mod event_loop;
mod fd_passing;
mod forwarders;
mod fusermount;
mod fusermount_helper;
mod helper_form;
mod idle_poll;
mod kernel_ring;
mod man_pages;
mod memory;
mod mount;
mod mount_options;
mod notifier;
mod origins;
mod outbox;
mod policy_file;
mod record_files;
mod recorder;
mod restarter;
mod ring;
mod seccomp;
mod seccomp_filter;
mod signals;
mod systemd;
mod threads;
mod trace;
mod user_mount;

use std::os::fd::AsRawFd;

use clap::Parser;
use slog::{o, Drain, Logger};

use fuseproxy_policies::{Config, Engine, Rules, TimesMode};

use crate::cli::{ChannelArg, Cli, LogLevel};
use crate::error::Error;
use crate::mount_options::{option_lists, MountOptions};

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

fn main() {
    // The fusermount channel's stand-in is this executable under that name.
    if let Some(name) = fusermount_helper::invoked_as_fusermount() {
        std::process::exit(fusermount_helper::run(&name));
    }
    if std::env::args_os()
        .next()
        .is_some_and(|a| a == idle_poll::GUARD_NAME)
    {
        std::process::exit(idle_poll::guard());
    }
    // `fuseproxy --man DIR` (hidden): write the man pages, for packaging.
    let argv0: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(status) = fuseproxy_manpage::man_request("fuseproxy", &argv0, man_pages::pages) {
        std::process::exit(status);
    }
    // mount(8) runs its helpers without PATH; execvp would then search
    // sh's default path, and so does the search for the backend.
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", helper_form::DEFAULT_PATH);
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let helper = match helper_form::recognise(&args) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            eprintln!("fuseproxy: {e}");
            std::process::exit(e.exit_code());
        }
    };
    let parsed = match helper.as_ref().map(helper_form::HelperForm::parse) {
        Some(Ok(cli)) => Ok(cli),
        Some(Err(e)) => {
            eprintln!("fuseproxy: {e}");
            std::process::exit(e.exit_code());
        }
        None => Cli::try_parse(),
    };
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            let hint = if e.kind() == ErrorKind::UnknownArgument {
                "; write MOUNTPOINT -- BACKEND_COMMAND..."
            } else {
                ""
            };
            let msg = one_line(&e.render().to_string());
            eprintln!("fuseproxy: {msg}{hint} (see fuseproxy --help)");
            std::process::exit(2);
        }
    };
    let source = policy_file::PolicySource {
        path: cli.policy.clone(),
        overrides: cli.overrides(),
    };
    if cli.check {
        match source.load() {
            Ok(p) => {
                print!("{}", p.to_toml());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("fuseproxy: {e}");
                std::process::exit(1);
            }
        }
    }
    let policy = match source.load() {
        Ok(p) => p,
        Err(e) => {
            match &helper {
                Some(h) => eprintln!("fuseproxy: {}: option policy=: {e}", h.line()),
                None => eprintln!("fuseproxy: {e}"),
            }
            std::process::exit(2);
        }
    };
    if let Some(h) = &helper {
        // Still one process with no thread: the fork's precondition.
        if let Err(e) = background::start(h) {
            eprintln!("fuseproxy: {e}");
            std::process::exit(e.exit_code());
        }
    }
    // Started from a mount helper, the proxy outlives whoever reads its
    // stderr: a log line that cannot be written is dropped, never fatal.
    let log = logger(cli.level(), helper.is_some());
    match run(&cli, &log, source, &policy) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let code = e.exit_code();
            // Before the mount answered, the waiting parent prints it on
            // the stderr this would use (unless the log goes to a file).
            let told_parent = background::failed(&e.to_string(), code);
            if !told_parent || helper.as_ref().is_some_and(|h| h.log.is_some()) {
                match e {
                    Error::Usage(_) => eprintln!("fuseproxy: {e}"),
                    _ => slog::crit!(log, "{e}"),
                }
            }
            drop(log);
            std::process::exit(code);
        }
    }
}

/// clap's message in one line: its first paragraph, without the usage block
/// ("the following required arguments were not provided:" is followed by the
/// arguments on the next lines).
fn one_line(text: &str) -> String {
    let para: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = para.join(" ");
    joined
        .strip_prefix("error: ")
        .unwrap_or(&joined)
        .to_string()
}

/// The logger on stderr. `lossy`: a line that cannot be written is dropped
/// (otherwise the failure ends the proxy).
fn logger(level: LogLevel, lossy: bool) -> Logger {
    let level = match level {
        LogLevel::Error => slog::Level::Error,
        LogLevel::Warn => slog::Level::Warning,
        LogLevel::Info => slog::Level::Info,
        LogLevel::Debug => slog::Level::Debug,
        LogLevel::Trace => slog::Level::Trace,
    };
    // Synchronous on purpose: no logging thread that allocates behind the
    // allocation counter's back, and nothing lost at exit.
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let format = slog_term::FullFormat::new(decorator).build();
    if lossy {
        Logger::root(
            slog::LevelFilter::new(format.ignore_res(), level).fuse(),
            o!(),
        )
    } else {
        Logger::root(slog::LevelFilter::new(format.fuse(), level).fuse(), o!())
    }
}

fn run(
    cli: &Cli,
    log: &Logger,
    source: policy_file::PolicySource,
    policy: &fuseproxy_policies::Policy,
) -> Result<(), Error> {
    // Before any thread or child exists, so that all inherit the mask.
    let signals = signals::install()?;

    let (Some(mountpoint), false) = (cli.mountpoint.as_ref(), cli.backend.is_empty()) else {
        return Err(Error::Usage(
            "MOUNTPOINT and BACKEND_COMMAND are required (write MOUNTPOINT -- BACKEND_COMMAND...)"
                .into(),
        ));
    };
    let canonical = mount::check_mountpoint(mountpoint)?;
    if let Some(fd) = cli.hand_off_fd {
        let code = hand_off(cli, log, fd, &signals, &canonical)?;
        std::process::exit(code);
    }
    // Without CAP_SYS_ADMIN the mount goes through fusermount3: before the
    // daemon starts (fd channel), or when its trapped mount(2) asks (seccomp
    // channel); see "Without root" in the README.
    let can_mount = capabilities::can_mount();
    let (chosen, channel) = choose_channel(cli.channel, can_mount)?;
    if !can_mount && cli.backend_user.is_some() {
        return Err(Error::Usage(
            "--backend-user needs root (the proxy changes the daemon's user); without root \
              the daemon runs as the proxy's user"
                .into(),
        ));
    }
    if chosen != Chosen::Seccomp && cli.channel == ChannelArg::Auto {
        // A fallback: said before anything can fail, not only in the
        // start-up line that follows the mount.
        slog::info!(log, "channel {channel}");
    }
    let seccomp = chosen == Chosen::Seccomp;
    // The daemon mounts itself (its options are its own, seen when it asks).
    let daemon_mounts = chosen != Chosen::Fd;
    let mut opts = MountOptions::default();
    let backend_args: Vec<String> = cli
        .backend
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    for list in option_lists(&backend_args[1..]) {
        opts.apply(list, false)
            .map_err(|e| Error::Usage(format!("in the backend's command: {e}")))?;
    }
    for list in &cli.options {
        opts.apply(list, true)
            .map_err(|e| Error::Usage(e.to_string()))?;
    }
    opts.default_subtype(&cli::program_name(&cli.backend));

    let pair = backend::channel()?;
    // Every channel needs MOUNTPOINT on the backend's command line: the fd
    // channel replaces it, the others leave it for the daemon.
    let rewritten = cli::rewrite_mountpoint(
        &cli.backend,
        mountpoint,
        &canonical,
        pair.theirs.as_raw_fd(),
    )?;
    let argv = if daemon_mounts {
        cli.backend.clone()
    } else {
        rewritten
    };
    let program = &argv[0];
    if which(program).is_none() {
        return Err(Error::Backend(format!(
            "cannot start '{}': no such program",
            program.to_string_lossy()
        )));
    }

    let uring = cli.kernel_transport == cli::KernelTransport::Uring;
    let threads = match cli.threads {
        Some(n) if uring && n > 1 => {
            return Err(Error::Usage(format!(
                "--kernel-transport uring serves each CPU's queue with its own thread; \
                 it cannot be combined with --threads {n}"
            )))
        }
        _ if uring => 1,
        Some(n) => n as usize,
        None => cli::default_threads(),
    };
    // Without CAP_IPC_LOCK, RLIMIT_MEMLOCK bounds what can be locked: the
    // arena is cut to fit, or the proxy refuses (memory.rs).
    let budget = memory::budget();
    let arena_size = memory::fit_arena(cli.arena_size, event_loop::least_slots(threads), budget)?;
    let arena = arena::Arena::new(arena_size)?;
    if let memory::Budget::Limited(limit) = budget {
        let asked = (cli.arena_size / arena::SLOT_SIZE).max(arena::MIN_SLOTS);
        if arena.slots() < asked {
            slog::warn!(
                log,
                "RLIMIT_MEMLOCK is {} KiB without CAP_IPC_LOCK: the arena is cut from {asked} \
                 to {} slots ({} KiB) so that all of it is locked; raise the limit (ulimit -l, \
                  LimitMEMLOCK=) for the whole --arena-size",
                limit / 1024,
                arena.slots(),
                arena.slots() * arena::SLOT_SIZE / 1024
            );
        }
    }
    event_loop::check_slots(threads, arena.slots())?;
    if cli.restart.enabled() && matches!(chosen, Chosen::Fusermount(_)) {
        return Err(Error::Usage(
            "--restart works with the seccomp and fd channels, not --channel fusermount".into(),
        ));
    }
    // Checked before the mount: once INIT has accepted the ring, the kernel
    // holds every request until the ring is set up.
    let ring_depth = match uring.then(kernel_ring::KernelRing::available) {
        Some(Ok(())) => Some(cli.ring_depth as usize),
        Some(Err(why)) => {
            slog::warn!(
                log,
                "FUSE-over-io_uring not used: {why}; requests come through read(2)"
            );
            None
        }
        None => None,
    };
    let cpu_latency = cli
        .cpu_latency
        .and_then(|us| match cpu_latency::CpuLatency::open(us) {
            Ok(l) => {
                slog::info!(
                log,
                "--cpu-latency {us}: while requests flow, CPUs are asked to wake within {us} µs \
                 (PM QoS, {}); released {} ms after the last request",
                cpu_latency::DEVICE,
                cpu_latency::HOLD.as_millis()
            );
                Some(l)
            }
            Err(e) => {
                slog::warn!(
                    log,
                    "--cpu-latency {us} not in force: cannot open {}: {e}; idle CPUs may halt \
                 between requests",
                    cpu_latency::DEVICE
                );
                None
            }
        });
    let build = |opts: &MountOptions| {
        let rules = Rules::compile(policy);
        Engine::with_rules(
            Config {
                max_inflight: cli.max_inflight as usize,
                max_message: arena::SLOT_SIZE,
                times: if rules.times.asynchronous {
                    TimesMode::Async
                } else {
                    TimesMode::Forward
                },
                max_delay: rules.times.max_delay,
                max_pending: rules.times.max_pending,
                attr_cache: rules.times.attr_cache,
                // Each held request keeps its slot; two stay free for the
                // traffic that releases them.
                max_held: arena.slots().saturating_sub(2).max(1),
                default_permissions: opts.default_permissions,
                // Room for the nodes of a large tree; only with path rules (a
                // reload cannot add the first ones).
                path_nodes: if policy.paths.is_empty() { 0 } else { 65_536 },
                kernel_uring: ring_depth.is_some(),
                restart: cli.restart.enabled(),
                ..Config::default()
            },
            rules,
        )
    };

    // Before the backend starts, so that a bad path leaves nothing behind,
    // and before pinning, so that its buffer is locked with the rest. With
    // the seccomp channel the options are the daemon's, not known yet.
    let recorder = {
        let shown = if daemon_mounts {
            let mut s = if seccomp && !can_mount {
                "the backend's own mount(2) (seccomp channel), made through fusermount3".to_string()
            } else if seccomp {
                "the backend's own mount(2) (seccomp channel)".to_string()
            } else {
                "the backend's fusermount (fusermount channel)".to_string()
            };
            for l in &cli.options {
                s.push_str(&format!(", then -o {l}"));
            }
            s
        } else {
            opts.to_string()
        };
        match &cli.record {
            Some(path) => {
                let mut note = format!(
                    "fuseproxy {} on {}; backend: {}; mount options: {shown}",
                    env!("CARGO_PKG_VERSION"),
                    canonical.display(),
                    backend_args.join(" "),
                );
                if note.len() > 4096 {
                    let cut = (0..=4096).rev().find(|&i| note.is_char_boundary(i));
                    note.truncate(cut.unwrap_or(0));
                }
                let rotation = cli.record_file_size.map(|size| record_files::Rotation {
                    file_size: size as u64,
                    files: cli.record_files,
                });
                Some(recorder::Recorder::create(
                    path,
                    cli.record_size,
                    cli.record_snaplen,
                    &note,
                    rotation,
                )?)
            }
            None => None,
        }
    };
    let user = cli
        .backend_user
        .as_ref()
        .map(backend_user::BackendUser::ids);
    if let Some(u) = &cli.backend_user {
        slog::info!(
            log,
            "the backend runs as {u}, without supplementary groups or capabilities{}",
            if daemon_mounts {
                ", with /dev/null at /dev/fuse in a mount namespace of its own"
            } else {
                ""
            }
        );
    }
    // Before the mount: finding MOUNTPOINT among the backend's arguments may
    // resolve paths.
    let restarter = match cli.restart.enabled() {
        true => {
            let launch = relauncher(cli, log, &chosen, &canonical, mountpoint, user)?;
            Some(restarter::Restarter::new(cli.restart, launch))
        }
        false => None,
    };
    let end = match clean_end::EndDevice::new() {
        Ok(e) => Some(e),
        Err(e) => {
            slog::info!(
                log,
                "no aborted FUSE device for the backend's end ({e}): it will be ended \
                 with SIGTERM and EOF"
            );
            None
        }
    };
    let (engine, pinning, device, mount, backend, opts) = if daemon_mounts {
        let pinning = memory::pin(budget);
        // As root the proxy mounts its own /dev/fuse; without, fusermount3
        // opens one, mounts it and passes it back (choose_channel checked
        // that there is one).
        let (own, fusermount) = if can_mount {
            (Some(mount::open_device()?), None)
        } else {
            let program = user_mount::program()
                .ok_or_else(|| Error::Setup("not root, and no fusermount3 to mount with".into()))?;
            (None, Some(program))
        };
        let mut backend = match &chosen {
            Chosen::Fusermount(targets) => backend::Backend::spawn_fusermount(
                &argv,
                pair.theirs,
                log.clone(),
                &canonical,
                user,
                end,
                targets,
            )?,
            _ => backend::Backend::spawn_supervised(
                &argv,
                backend::Handoff::Hold(pair.theirs),
                log.clone(),
                &canonical,
                user,
                end,
            )?,
        };
        slog::debug!(
            log,
            "started backend pid {} under the seccomp filter: {:?}",
            backend.pid(),
            argv
        );
        let ctx = seccomp::MountContext {
            device: own.as_ref(),
            fusermount: fusermount.as_deref(),
            overrides: &cli.options,
        };
        let (mount, opts, passed) = backend.wait_for_mount(&signals, &ctx, &canonical)?;
        let Some(device) = own.or(passed) else {
            return Err(Error::Setup(
                "fusermount3 made the mount but passed no device".into(),
            ));
        };
        // After the mount, with MCL_FUTURE in force: locked as they come.
        let engine = build(&opts);
        (engine, pinning, device, mount, backend, opts)
    } else {
        let engine = build(&opts);
        let pinning = memory::pin(budget);
        let (device, mount) = mount_fd_channel(log, &canonical, &mut opts, can_mount)?;
        slog::debug!(log, "mounted {} with {opts}", canonical.display());
        // From here on the mount exists; `mount`'s Drop removes it on any error.
        let backend = match (user, seccomp::support()) {
            // Unprivileged, the daemon cannot mount anyway; under the filter
            // its attempts are also refused in the proxy's log.
            (Some(_), Ok(())) => backend::Backend::spawn_supervised(
                &argv,
                backend::Handoff::Inherit(pair.theirs),
                log.clone(),
                &canonical,
                user,
                end,
            )?,
            _ => backend::Backend::spawn(&argv, pair.theirs, user, end)?,
        };
        slog::debug!(log, "started backend pid {}: {:?}", backend.pid(), argv);
        (engine, pinning, device, mount, backend, opts)
    };

    // Once everything else is set up: a command that fails starts no
    // guard and says nothing of it.
    let idle_poll = (cpu_latency.is_none())
        .then(|| open_idle_poll(cli, threads, ring_depth.is_some(), log))
        .flatten();
    // Spinning only adds CPU once idle CPUs poll (README, "CPU latency").
    let spin_us = cli
        .spin_us
        .unwrap_or(if cpu_latency.is_some() || idle_poll.is_some() {
            0
        } else {
            50
        });
    let session = event_loop::Session::new(
        log.clone(),
        device,
        pair.ours,
        signals,
        engine,
        arena,
        mount,
        backend,
        recorder,
        event_loop::Startup {
            options: opts.to_string(),
            channel,
            pinning,
            spin: std::time::Duration::from_micros(spin_us),
            cpu_latency,
            idle_poll,
            policy: source.path().is_some().then_some(source),
            trace: cli.tracing(),
            threads,
            ring_depth,
        },
        restarter,
    )?;
    session.run()
}

/// The fd channel's mount: mount(2) on the proxy's own /dev/fuse when it
/// may mount, else (not root, or mount(2) answered EPERM) through
/// fusermount3, which also hands over the device.
fn mount_fd_channel(
    log: &Logger,
    canonical: &std::path::Path,
    opts: &mut MountOptions,
    can_mount: bool,
) -> Result<(std::fs::File, mount::Mount), Error> {
    if can_mount {
        let device = mount::open_device()?;
        match mount::Mount::attempt(canonical, &device, opts) {
            Ok(m) => return Ok((device, m)),
            Err((nix::errno::Errno::EPERM, e)) if user_mount::program().is_some() => {
                slog::info!(log, "{e}; mounting through fusermount3 instead");
            }
            Err((_, e)) => return Err(e),
        }
    }
    let Some(program) = user_mount::program() else {
        return Err(Error::Mount {
            path: canonical.to_path_buf(),
            reason: "the proxy may not mount by itself (not root, no CAP_SYS_ADMIN) and there \
                      is no fusermount3 to mount for it (install fuse3)"
                .into(),
        });
    };
    user_mount::mount(log, &program, canonical, opts)
}

/// `--hand-off-fd N`: the daemon runs under the seccomp channel as usual,
/// but its mount is only handed the socket inherited at fd N and answered
/// with success; nothing is mounted and nothing is forwarded. What
/// `fuseproxy-capture replay --hand-off` starts, so that a daemon that
/// mounts by itself (libfuse 2) can be replayed without a kernel. Returns
/// the daemon's exit status, as this process's.
fn hand_off(
    cli: &Cli,
    log: &Logger,
    fd: i32,
    signals: &nix::sys::signalfd::SignalFd,
    canonical: &std::path::Path,
) -> Result<i32, Error> {
    if let Err(why) = seccomp::support() {
        return Err(Error::Usage(format!(
            "--hand-off-fd needs the seccomp channel: {why}"
        )));
    }
    let socket = backend::inherited_socket(fd)?;
    let user = cli
        .backend_user
        .as_ref()
        .map(backend_user::BackendUser::ids);
    let mut backend = backend::Backend::spawn_supervised(
        &cli.backend,
        backend::Handoff::Hold(socket),
        log.clone(),
        canonical,
        user,
        None,
    )?;
    let ctx = seccomp::MountContext {
        device: None,
        fusermount: None,
        overrides: &cli.options,
    };
    backend.wait_for_mount(signals, &ctx, canonical)?;
    slog::info!(
        log,
        "handed fd {fd} to the backend (pid {}) as its channel; nothing mounted (--hand-off-fd)",
        backend.pid()
    );
    let st = backend.wait_until_exit(signals);
    slog::info!(
        log,
        "backend (pid {}) {}",
        backend.pid(),
        backend::describe(st)
    );
    Ok(st
        .code()
        .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)))
}

/// How `--restart` starts the backend's command again: on a new socketpair,
/// over the channel in use. The new daemon is given a directory of its own
/// in place of MOUNTPOINT: a daemon looks at its mountpoint before it
/// mounts (libfuse stats it), and MOUNTPOINT's requests wait until the new
/// daemon is ready. Seccomp channel: its mount of that directory is answered
/// with the socket and nothing is mounted; fd channel: `/dev/fd/N` names
/// the new socket, as at start.
fn relauncher(
    cli: &Cli,
    log: &Logger,
    chosen: &Chosen,
    canonical: &std::path::Path,
    mountpoint: &std::path::Path,
    user: Option<backend_user::Ids>,
) -> Result<restarter::Launch, Error> {
    // Found now, while nothing is mounted there.
    let at = cli::mountpoint_arg(&cli.backend, mountpoint, canonical)?;
    let log = log.clone();
    let (argv, overrides) = (cli.backend.clone(), cli.options.clone());
    let seccomp = *chosen == Chosen::Seccomp;
    let stand_in = std::env::temp_dir().join(format!("fuseproxy-restart.{}", std::process::id()));
    Ok(Box::new(move |signals| {
        let pair = backend::channel()?;
        let end = clean_end::EndDevice::new().ok();
        let mut argv = argv.clone();
        if seccomp {
            match std::fs::create_dir(&stand_in) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::Setup(format!("{}: {e}", stand_in.display())))
                }
                _ => {}
            }
            argv[at] = stand_in.clone().into_os_string();
            let mut b = backend::Backend::spawn_supervised(
                &argv,
                backend::Handoff::Hold(pair.theirs),
                log.clone(),
                &stand_in,
                user,
                end,
            )?;
            let ctx = seccomp::MountContext {
                device: None,
                fusermount: None,
                overrides: &overrides,
            };
            b.wait_for_mount(signals, &ctx, &stand_in)?;
            return Ok((b, pair.ours));
        }
        argv[at] = format!("/dev/fd/{}", pair.theirs.as_raw_fd()).into();
        let b = backend::Backend::spawn(&argv, pair.theirs, user, end)?;
        Ok((b, pair.ours))
    }))
}

/// The channel taken.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chosen {
    Seccomp,
    /// With the fusermount programs the stand-in will be bound over.
    Fusermount(Vec<std::path::PathBuf>),
    Fd,
}

/// The channel to use, and how it was chosen (for the start-up line).
/// A channel named on the command line that this system cannot give is a
/// usage error, with the reason.
///
/// Without CAP_SYS_ADMIN (`can_mount` false) every mount goes through
/// fusermount3: the seccomp channel's (the daemon's trapped mount(2), made
/// by fusermount3 for the proxy) or the fd channel's (before the daemon
/// starts). `auto` takes seccomp where the kernel has it, as for root, and
/// fd otherwise; the fusermount channel needs root and is refused.
fn choose_channel(arg: ChannelArg, can_mount: bool) -> Result<(Chosen, String), Error> {
    if !can_mount {
        let seccomp = || match (seccomp::support(), user_mount::program()) {
            (Err(why), _) => Err(why),
            (Ok(()), None) => Err("not root, and no fusermount3 to make the daemon's mount \
                                   (install fuse3)"
                .to_string()),
            (Ok(()), Some(_)) => Ok(()),
        };
        return match arg {
            ChannelArg::Fd => Ok((Chosen::Fd, "fd".into())),
            ChannelArg::Seccomp => match seccomp() {
                Ok(()) => Ok((
                    Chosen::Seccomp,
                    "seccomp (not root: the daemon's mount is made through fusermount3)".into(),
                )),
                Err(why) => Err(Error::Usage(format!(
                    "--channel seccomp: {why}; use --channel fd (or auto)"
                ))),
            },
            ChannelArg::Auto => match seccomp() {
                Ok(()) => Ok((
                    Chosen::Seccomp,
                    "seccomp (auto: the kernel has seccomp user notification with fd \
                      injection; not root, so the daemon's mount is made through fusermount3)"
                        .into(),
                )),
                Err(why) => Ok((
                    Chosen::Fd,
                    format!(
                        "fd (auto: {why}; not root, so the proxy mounts through fusermount3 \
                          and the daemon gets /dev/fd/N)"
                    ),
                )),
            },
            ChannelArg::Fusermount => Err(Error::Usage(
                "--channel fusermount: needs root (the proxy binds its stand-in over the \
                  fusermount programs in a mount namespace of the daemon's, which a user \
                  cannot make); without root use --channel seccomp or fd (or auto)"
                    .into(),
            )),
        };
    }
    let fusermount = || {
        let targets = fusermount::stand_in_targets();
        if targets.is_empty() {
            Err("no fusermount program to stand in for (install fuse3's fusermount3)".to_string())
        } else {
            Ok(targets)
        }
    };
    match arg {
        ChannelArg::Fd => Ok((Chosen::Fd, "fd".into())),
        ChannelArg::Seccomp => match seccomp::support() {
            Ok(()) => Ok((Chosen::Seccomp, "seccomp".into())),
            Err(why) => Err(Error::Usage(format!(
                "--channel seccomp: {why}; use --channel fusermount or fd (or auto)"
            ))),
        },
        ChannelArg::Fusermount => match fusermount() {
            Ok(t) => Ok((Chosen::Fusermount(t), "fusermount".into())),
            Err(why) => Err(Error::Usage(format!(
                "--channel fusermount: {why}; use --channel fd (or auto)"
            ))),
        },
        ChannelArg::Auto => match (seccomp::support(), fusermount()) {
            (Ok(()), _) => Ok((
                Chosen::Seccomp,
                "seccomp (auto: the kernel has seccomp user notification with fd injection)".into(),
            )),
            (Err(why), Ok(t)) => {
                let shown = format!("fusermount (auto: {why})");
                Ok((Chosen::Fusermount(t), shown))
            }
            (Err(why), Err(why2)) => Ok((Chosen::Fd, format!("fd (auto: {why}; {why2})"))),
        },
    }
}

/// Resolves a program as execvp would: a path with a slash as is, otherwise
/// searched in PATH. Checked before mounting so that a typo leaves no mount.
fn which(program: &std::ffi::OsStr) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let p = std::path::Path::new(program);
    if program.as_encoded_bytes().contains(&b'/') {
        return is_exec(p).then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| is_exec(c))
}

/// `--idle-poll own` where it applies (one forwarding thread, over read(2)
/// or the ring; no `--cpu-latency` in force) and the files open; else one
/// line saying why not.
fn open_idle_poll(
    cli: &cli::Cli,
    threads: usize,
    ring: bool,
    log: &slog::Logger,
) -> Option<idle_poll::IdlePoll> {
    if cli.idle_poll == cli::IdlePoll::Off {
        return None;
    }
    let why_not = if threads > 1 {
        format!("--threads {threads} (it applies to one thread)")
    } else {
        match idle_poll::IdlePoll::open() {
            Ok(p) => {
                slog::info!(
                    log,
                    "--idle-poll own: while requests flow, the CPU the proxy waits on{} polls \
                     instead of halting (its pm_qos_resume_latency_us, released {}-{} ms after \
                     the last request; shared through {})",
                    if ring {
                        " (with the ring, each ring thread's)"
                    } else {
                        ""
                    },
                    idle_poll::HOLD.as_millis(),
                    2 * idle_poll::HOLD.as_millis(),
                    idle_poll::REGISTRY
                );
                return Some(p);
            }
            Err(e) => format!("cannot open its files: {e}"),
        }
    };
    slog::info!(
        log,
        "--idle-poll own not used: {why_not}; the proxy spins instead (--spin-us)"
    );
    None
}
