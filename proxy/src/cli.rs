//! The command line: options, the backend's command, and the rewrite of its
//! MOUNTPOINT argument to `/dev/fd/N`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::{ArgAction, Parser, ValueEnum};

use crate::error::Error;

const ABOUT: &str = "Mount a FUSE filesystem through a protocol-level proxy.";

const LONG_ABOUT: &str = "\
fuseproxy mounts MOUNTPOINT itself on its own /dev/fuse and runs BACKEND_COMMAND, \
an unmodified FUSE daemon, on one end of a socket pair that the daemon uses as if \
it were /dev/fuse. Every FUSE message between the kernel and the daemon passes \
through the proxy, which forwards it unchanged except where a policy says otherwise.

Write BACKEND_COMMAND exactly as you would run it without the proxy, MOUNTPOINT \
included; it is an error if no argument names MOUNTPOINT. How the daemon gets the \
socket is the channel (--channel). With the seccomp channel (the default where the \
kernel supports it) the daemon runs unchanged and mounts as it would alone: the \
proxy traps that mount(2), hands the daemon its socket in place of /dev/fuse, and \
makes the mount itself with the daemon's source, type, flags and options, so \
/proc/mounts reads as with the daemon alone. The fusermount channel (kernels before \
5.9) gets the same by standing in for the fusermount program the daemon's library \
runs. With the fd channel the argument \
naming MOUNTPOINT is replaced by /dev/fd/N (libfuse >= 3.3 and go-fuse take that \
as \"already mounted\"), and the proxy mounts first. Then mount options in \
the backend's own -o arguments (allow_other, default_permissions, ro, fsname=, \
subtype=, ...) are applied by the proxy to its mount, since a daemon given /dev/fd/N \
mounts nothing; they also stay in the backend's command for it to see. With every \
channel the proxy's own -o overrides the daemon's options. Defaults are libfuse's: nosuid,nodev; no allow_other; type \
fuse.PROGRAM and source PROGRAM unless fsname= or subtype= is given.

Every message buffer lives in one fixed arena, locked in memory, so that forwarding \
never allocates and the proxy cannot itself be stalled by memory reclaim; as root \
(CAP_IPC_LOCK) all of the proxy is locked (mlockall) and it is marked an I/O flusher.

Without root (no CAP_SYS_ADMIN) the proxy mounts the way libfuse does: it runs the \
setuid fusermount3 (-o OPTIONS -- MOUNTPOINT, the device coming back over \
_FUSE_COMMFD) and unmounts with fusermount3 -u. With the seccomp channel (what auto \
takes where the kernel has it, as for root) the daemon's trapped mount(2) is made that \
way, with the daemon's options, and the /dev/fuse fusermount3 passes back is the \
proxy's: daemons that mount by themselves (libfuse 2: bindfs, unionfs-fuse, fuse-zip) \
work as a user. The daemon then runs under no_new_privs (the kernel's condition for a \
user's seccomp filter), so a setuid fusermount it ran would stay the user; it has no \
need to, since its own mount(2) succeeds. With the fd channel the proxy mounts through \
fusermount3 before the daemon starts. --channel fusermount and --backend-user need \
root and are refused (exit status 2). fusermount3's rules for users apply: the mount is nosuid,nodev (-o \
suid or dev is not applied, with a warning), MOUNTPOINT must be the user's to write, \
and allow_other needs user_allow_other in /etc/fuse.conf (a refusal is one line that \
says so). The mount is then the user's (user_id=UID): without allow_other no one else, \
root included, may use it. Locking is bounded by RLIMIT_MEMLOCK without CAP_IPC_LOCK: \
mlockall is not used (it counts the whole process against the limit), only the arena \
is locked, cut to the whole slots the limit holds (a warning says so); below the \
fewest slots the proxy needs (5 with one thread) it refuses with one line naming the \
limit and the fixes (ulimit -l, LimitMEMLOCK= under systemd). PR_SET_IO_FLUSHER needs \
CAP_SYS_RESOURCE and is off. The start-up line says what is and is not locked \
(mlockall=, io_flusher=, arena=... locked).

Replies from the daemon are checked before they reach the kernel: a reply the \
kernel would reject while leaving its caller waiting forever (wrong length, error \
out of range, unknown request) is dropped, counted, and the request it names is \
answered with EIO.

A policy file (--policy FILE, TOML) says what the proxy changes in the traffic: \
time updates ([times]), how long a request may wait for the daemon ([deadlines]), the \
INIT negotiation ([init]: masked capabilities, writeback cache forced or denied, \
caps), cache timeouts and open flags in replies ([cache]), requests answered with an \
errno ([deny], read_only = true), injected delays and failures ([fault]), and any of \
these only under some paths ([[paths]]). Durations are written with a unit (\"200ms\", \
\"1s\"), errnos and opcodes by name (\"EROFS\", READ). Every setting has a default \
and a section left out is a rule that is off; `fuseproxy --check --policy FILE` \
validates a file and prints it with every default filled in. An unknown key, a wrong \
type or an out-of-range value is an error naming file, line, column and key, and the \
proxy does not start. Command-line options override single settings of the file. \
The format is described with an annotated example in fuseproxy-policy(5) \
(docs/policy-file.md) and in policies/examples/.

Life cycle: SIGINT or SIGTERM unmount the filesystem, send the daemon a DESTROY, \
make its reads fail with ENODEV as after a direct unmount (so that it ends as it \
would alone), wait for it to exit and end with status 0; so does `umount MOUNTPOINT`. SIGHUP \
reloads the policy file when one is given (a valid file applies to requests read \
after it, time updates already acknowledged keep the rules they were made under, \
and a broken file is refused with its error in the log while the old policy stays \
in force); without a policy file SIGHUP unmounts like SIGTERM, except under systemd. \
If the daemon dies, every request waiting on it is answered with EIO, the mount is \
removed and the proxy exits with status 1 (with --restart on-failure a new daemon \
takes over instead, and SIGUSR2 replaces it on purpose); a daemon that ends by \
itself with status 0 and nothing waiting (it unmounted MOUNTPOINT itself, or closed \
its channel) ends the proxy with status 0. SIGUSR1 logs the counters, per rule \
included.

Under systemd (NOTIFY_SOCKET set): READY=1 once the mount answers, STATUS= with \
the counters then and on each SIGUSR1, STOPPING=1 when it ends; SIGHUP is a reload \
and never stops the mount; the daemon does not get NOTIFY_SOCKET.

From /etc/fstab and mount(8): for a line of type fuse.fuseproxy, mount.fuse3 runs \
`fuseproxy SOURCE MOUNTPOINT -o OPTIONS`, the mount-helper form (two operands, -o, \
no --). backend=PROGRAM (required) names the daemon; policy=, channel=, \
backend_user=, restart= (no or on-failure[:max=N][:window=D]), times=, threads=, log_level=, cpu_latency=, idle_poll= and \
record= are the options of the same names; log=FILE sends the proxy's and the \
daemon's stderr to FILE (otherwise both keep mount(8)'s); backend_foreground=no \
leaves out the daemon's -f. Any of these may be written fuseproxy.NAME=VALUE (an \
unknown NAME is an error), and backend.NAME=VALUE passes NAME=VALUE to the daemon. \
Every other option is the daemon's: it runs as `PROGRAM -f SOURCE MOUNTPOINT -o \
OTHERS`, without SOURCE when it is `none`. The proxy goes to the background once \
the mount answers, so that mount(8) returns then with status 0, or prints the one \
error line and fails with nothing mounted; -f keeps it in the foreground. mount(8) \
runs helpers without PATH: fuseproxy and a PROGRAM given by name are looked for in \
/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; elsewhere, write the \
type as fuse./path/to/fuseproxy (a path without dots). `umount MOUNTPOINT` ends it.";

const AFTER_HELP: &str = "\
EXAMPLES:
    Wrap libfuse's passthrough example over /srv/data:
        fuseproxy /mnt/data -- passthrough_ll -f -o source=/srv/data /mnt/data

    Wrap sshfs, keeping its mount options:
        fuseproxy /mnt/host -- sshfs -f -o allow_other,default_permissions user@host:/ /mnt/host

    Wrap a read-only squashfs image:
        fuseproxy /mnt/img -- squashfuse -f image.sqfs /mnt/img

    A read-only view of a read-write daemon, reloadable with SIGHUP:
        printf '[deny]\\nread_only = true\\n' > ro.toml
        fuseproxy --policy ro.toml /mnt/data -- passthrough_ll -f -o source=/srv/data /mnt/data

    Run the daemon as nobody, without capabilities or access to /dev/fuse
    (the mount is then nobody's: add -o allow_other for other users, root
    included):
        chown nobody /srv/data
        fuseproxy --backend-user nobody /mnt/data -- passthrough_ll -f -o source=/srv/data /mnt/data

    Check a policy file without mounting (prints it with every default):
        fuseproxy --check --policy policies/examples/never-hang.toml

    An /etc/fstab line for bindfs through the proxy (then `mount /mnt/data`,
    `umount /mnt/data`), and one for passthrough_ll, which takes no source:
        /srv/data /mnt/data fuse.fuseproxy backend=bindfs,policy=/etc/ro.toml 0 0
        none      /mnt/pt   fuse.fuseproxy backend=passthrough_ll,source=/srv/data 0 0

    Run the backend in the foreground (-f): the proxy stays in the foreground
    itself and ends when the mount ends. A backend that daemonizes still works;
    its socket, not its pid, tells the proxy whether it is alive.

EXIT STATUS:
    0  unmounted on a signal or by umount; with --check, the policy is valid;
       in the mount-helper form, the mount is up (the proxy runs on in the
       background)
    1  the daemon died, or a run-time error (the last line says which); with
       --check, the policy is not valid
    2  the command line or the policy file is wrong";

/// Time-only SETATTR handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TimesArg {
    /// Answer at once, apply asynchronously (the default).
    Async,
    /// Forward and wait, as without the proxy.
    Forward,
}

/// How the backend gets its end of the proxy (`--channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChannelArg {
    /// seccomp when the kernel supports it, else fusermount when a
    /// fusermount program exists (root only), else fd.
    Auto,
    /// The daemon mounts; the proxy traps the call and makes the mount.
    Seccomp,
    /// The daemon mounts through fusermount; the proxy's stand-in answers.
    Fusermount,
    /// The daemon is given /dev/fd/N; the proxy mounts with its -o options.
    Fd,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// Start-up, shutdown and summaries (the default).
    Info,
    /// Per-event detail, off the hot path.
    Debug,
    /// Everything.
    Trace,
}

/// The parsed command line.
#[derive(Debug, Parser)]
#[command(
    name = "fuseproxy",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_HELP,
    override_usage = "fuseproxy [OPTIONS] MOUNTPOINT -- BACKEND_COMMAND...\n       fuseproxy SOURCE MOUNTPOINT -o backend=PROGRAM[,OPTIONS] [-f]\n       fuseproxy --check --policy FILE [OPTIONS]"
)]
pub struct Cli {
    /// Mount options, comma-separated, in libfuse's -o convention (allow_other,
    /// default_permissions, ro, rw, suid, dev, exec, noatime, sync, dirsync,
    /// fsname=NAME, subtype=TYPE, max_read=N). May be repeated; they override
    /// the mount options found in the backend's own -o. [default: none]
    #[arg(short = 'o', value_name = "OPTIONS", action = ArgAction::Append)]
    pub options: Vec<String>,

    /// How the backend is connected to the proxy.
    ///
    /// `seccomp`: the backend runs with its command line unchanged, under a
    /// seccomp filter that hands its mount(2) and umount(2) calls (and those
    /// of anything it runs, such as fusermount3) to the proxy; nothing else
    /// is trapped. When the daemon mounts MOUNTPOINT with a FUSE type, the
    /// proxy puts its socket in the daemon in place of the daemon's
    /// /dev/fuse, mounts its own /dev/fuse with the daemon's source, type,
    /// flags and options (the proxy's -o on top), and tells the daemon it
    /// worked. The mount is then exactly the one the daemon asked for, and
    /// daemons that cannot take /dev/fd/N (libfuse2, ntfs-3g, those that run
    /// fusermount) work. The daemon's unmount of MOUNTPOINT is answered with
    /// success and leaves the mount to the proxy; any other mount or unmount
    /// is refused with EPERM and logged. The daemon must mount within 30 s.
    /// Needs Linux 5.9+ (seccomp user notification with fd injection);
    /// refused with exit status 2 where the kernel lacks it.
    ///
    /// `fusermount`: for kernels without seccomp fd injection. The backend
    /// runs with its command line unchanged in a mount namespace of its
    /// own where this executable stands in for every fusermount program
    /// (fusermount3, fusermount, mergerfs-fusermount), and without
    /// CAP_SYS_ADMIN, so that its library's own mount(2) fails and it runs
    /// fusermount (libfuse 2 and 3 then, go-fuse and bazil.org/fuse
    /// always). The stand-in passes the request to the proxy, which makes
    /// the one mount of MOUNTPOINT with the options fusermount was given
    /// (and its own -o on top) and hands back its socket, which the
    /// stand-in passes on over _FUSE_COMMFD. An unmount of MOUNTPOINT is
    /// answered with success; anything else is refused and logged. Daemons
    /// that mount with mount(2) only (ntfs-3g) fail. The daemon sees its
    /// mount in its namespace only if MOUNTPOINT is on a shared mount
    /// (go-fuse needs that); the proxy warns when it is not.
    ///
    /// `fd`: the proxy mounts first, with the mount options found in the
    /// backend's -o arguments and its own -o, and the backend's MOUNTPOINT
    /// argument is replaced by /dev/fd/N. Only daemons that take /dev/fd/N
    /// work (libfuse >= 3.3, go-fuse); options a daemon sets in its own code
    /// are not seen.
    ///
    /// `auto` takes seccomp when the kernel supports it, else fusermount
    /// when a fusermount program exists, else fd, and says which and why at
    /// start-up. A channel named here that the system cannot give is
    /// refused with one line (exit status 2). Without root (no
    /// CAP_SYS_ADMIN) every mount is made by the setuid fusermount3:
    /// `seccomp` has it make the daemon's trapped mount(2) (its
    /// /dev/fuse becomes the proxy's), `fd` has it mount before the daemon
    /// starts; `auto` takes seccomp where the kernel has it, else fd, and
    /// says why. `fusermount` needs root (its stand-in is bound over the
    /// real programs in a mount namespace, which a user cannot make) and is
    /// refused. A backend that speaks only /dev/fd/N and never mounts needs
    /// `--channel fd`.
    #[arg(long, value_enum, default_value_t = ChannelArg::Auto, value_name = "CHANNEL")]
    pub channel: ChannelArg,

    /// Run the backend as USER (a name or a number), in GROUP if given, else
    /// in USER's primary group; never as root.
    ///
    /// The daemon then has that uid and gid as its real, effective and saved
    /// ids, no supplementary groups, and no capabilities at all (effective,
    /// permitted, inheritable and ambient sets empty): it cannot mount or
    /// unmount anything, and cannot open the real /dev/fuse (root's, mode
    /// 0600). The proxy alone mounts, and only the one FUSE mount at
    /// MOUNTPOINT; any other mount or unmount the daemon or anything it runs
    /// asks for is refused with EPERM and logged. Recommended whenever the
    /// daemon does not need root for its own work: a compromised or buggy
    /// daemon then holds no more than that user's rights.
    ///
    /// With the seccomp channel every daemon works this way: it is started
    /// in a private mount namespace (its `/` a slave of the host's) where
    /// /dev/null is bind-mounted over /dev/fuse, so that libfuse's (or
    /// fusermount's) open of /dev/fuse succeeds on that stand-in before its
    /// mount(2), which the proxy traps as usual; the filter is installed
    /// while still root, then the ids are dropped and no_new_privs is set,
    /// so that nothing the daemon runs regains root: a setuid fusermount
    /// (which bazil.org/fuse daemons such as rclone mount always run) runs
    /// as USER, and its mount(2) is trapped all the same. fusermount makes
    /// its own checks as USER, as it would without the proxy: the
    /// mountpoint must be writable by USER, and allow_other among the
    /// daemon's options needs user_allow_other in /etc/fuse.conf (the
    /// proxy's own -o allow_other does not). The mount has the daemon's
    /// user_id=UID: without allow_other only USER can use it, root
    /// included, as with a direct mount by USER.
    ///
    /// With the fd channel the daemon is given /dev/fd/N and needs no
    /// namespace; only daemons that take /dev/fd/N work. Its mount and
    /// unmount calls are also trapped, refused and logged where the kernel
    /// supports the seccomp channel.
    ///
    /// An unknown user or group is an error (exit status 2). [default: the
    /// backend runs as the proxy's user, root]
    #[arg(long, value_name = "USER[:GROUP]", value_parser = crate::backend_user::parse)]
    pub backend_user: Option<crate::backend_user::BackendUser>,

    /// Print every message that crosses the proxy, decoded as
    /// `fuseproxy-capture decode` prints it (`+SECONDS LINK MESSAGE`: K> a
    /// request read from /dev/fuse, B> one sent to the daemon, B< a reply
    /// from the daemon, K< one written to /dev/fuse), with the proxy's
    /// decisions (time updates answered locally, coalesced, held ...), on
    /// stderr at log level trace, which it implies. As libfuse's -d, but
    /// seen between the kernel and an unmodified daemon. It formats every
    /// message: for debugging, not for production (off, it costs nothing).
    /// Also turned on by -vv.
    #[arg(long)]
    pub trace: bool,

    /// Hand the socket inherited at fd N to the backend in place of its
    /// /dev/fuse when it mounts MOUNTPOINT (seccomp channel), answer the
    /// mount with success, mount nothing, forward nothing, and exit with
    /// the backend's status when it exits. For `fuseproxy-capture replay
    /// --hand-off`, which speaks FUSE to the daemon itself: it lets a daemon
    /// that mounts by itself (libfuse 2) be replayed without a kernel.
    #[arg(long, value_name = "N")]
    pub hand_off_fd: Option<i32>,

    /// Log more: -v for debug, -vv for trace. Adds to --log-level.
    #[arg(short = 'v', long = "verbose", action = ArgAction::Count)]
    pub verbose: u8,

    /// Log level of messages on stderr.
    #[arg(long, value_enum, default_value_t = LogLevel::Info, value_name = "LEVEL")]
    pub log_level: LogLevel,

    /// Bytes of message buffers, allocated and locked at start (suffixes K, M,
    /// G). Cut into slots of 1 MiB + 4 KiB, the largest FUSE message; at least
    /// four slots are made (22 at the default). When all are busy the proxy
    /// stops reading requests until one frees up. The default, with the
    /// other tables at theirs, keeps a mount's locked memory under 40 MiB.
    /// Without CAP_IPC_LOCK (not root) the arena is cut to the whole slots
    /// RLIMIT_MEMLOCK holds (7 under Debian's 8 MiB), with a warning, and the
    /// proxy refuses to start when fewer than it needs fit.
    #[arg(long, value_name = "SIZE", default_value = "23M", value_parser = parse_size)]
    pub arena_size: usize,

    /// Requests in flight to the backend at most; the table is allocated at
    /// start. When it is full the proxy stops reading requests.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_inflight: u32,

    /// After traffic, keep polling for this many microseconds before
    /// sleeping: with one thread (--threads 1) it polls both sides, with
    /// several the kernel's readers poll the device. A caller in a loop
    /// sends its next request within microseconds; catching it awake saves
    /// two cross-CPU wake-ups per call (up to 2x on metadata-heavy work,
    /// and what keeps a storm of time updates at 0.65x a direct mount), at
    /// the cost of up to this much CPU per burst. 0 turns it off: about
    /// half the CPU per request with one caller, and up to 3x slower.
    /// [default: 50, or 0 while --idle-poll or --cpu-latency is in force]
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub spin_us: Option<u64>,

    /// While requests flow, let the CPU the forwarding thread sleeps on
    /// poll in the kernel's idle loop instead of halting, so that the
    /// caller's next request and the daemon's reply wake the proxy without
    /// an interrupt (in a VM, without an exit to the hypervisor). `own`: a
    /// zero resume latency on that one CPU
    /// (/sys/devices/system/cpu/cpuN/power/pm_qos_resume_latency_us, root
    /// only), moved with the thread, let go 20-40 ms after the last
    /// request, put back by a guard process however the proxy ends, and
    /// shared with other proxies through /run/fuseproxy/idle-poll; a CPU
    /// whose value someone else set is left alone. It replaces the spin
    /// (--spin-us defaults to 0 with it) at about the spin's cost, one CPU
    /// polling while requests flow, but the polling yields at once to any
    /// task and is not the proxy's CPU time: on a 2-vCPU VM whose idle
    /// vCPUs halt at once, a stat loop took 40% of the time at a quarter of
    /// the proxy's CPU (README, "Idle polling"). With --kernel-transport
    /// uring each ring thread holds the CPU it keeps to, so every CPU whose
    /// queue carries requests polls while they flow: there a stat loop took
    /// 59% of the time of the ring's spin at a fifth of the proxy's CPU.
    /// Used with --threads 1 and without --cpu-latency; elsewhere, and
    /// without root, one log line says so and --spin-us keeps its default.
    /// `off`: the CPUs idle as the machine has them.
    #[arg(long, value_enum, default_value_t = IdlePoll::Own, value_name = "WHERE")]
    pub idle_poll: IdlePoll,

    /// While requests flow, ask the kernel to keep every CPU's wake-up
    /// latency at most US microseconds (a PM QoS request through
    /// /dev/cpu_dma_latency, which needs root), released 100-200 ms after
    /// the last request and dropped by the kernel however the proxy ends.
    /// With 0, idle CPUs poll in the kernel's idle loop instead of halting,
    /// so the four hand-offs of a proxied request find their CPUs awake
    /// without the proxy spinning: on a 2-vCPU VM whose idle vCPUs halt at
    /// once, a stat took a third of the time at a fifth of the proxy's CPU
    /// (README, "CPU latency"). The cost is power and, in a VM, host CPU:
    /// every idle CPU of the machine polls while requests flow (it
    /// supersedes --idle-poll, which polls one). Without the device (not
    /// root) one log line says so and --spin-us keeps its default.
    /// [default: off]
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub cpu_latency: Option<u32>,

    /// Forwarding threads. 1: one thread reads both the device and the
    /// backend's socket, whichever has something, and sleeps in poll(2)
    /// when neither has. N > 1: N readers of the kernel's requests, each on
    /// its own clone of the device (FUSE_DEV_IOC_CLONE) and answering on
    /// it, and one reader of the backend's replies, all blocking in their
    /// read (four system calls per request). The engine is one state
    /// machine under a lock either way, so its ordering guarantees do not
    /// depend on the count. Each reader keeps one arena slot while it waits
    /// and a 256 KiB stack. On 2 CPUs several readers made one caller up to
    /// 25% slower (a wake-up of a sleeping thread per side); they are for
    /// machines with cores to spare.
    /// [default: 1 up to 4 CPUs, then one per 4 CPUs, at most 8]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub threads: Option<u32>,

    /// How the kernel's requests reach the proxy. `read`: read(2) and
    /// write(2) on /dev/fuse. `uring`: FUSE-over-io_uring (Linux 6.14+, with
    /// the module parameter fuse.enable_uring=Y when the mount is made). The
    /// kernel keeps one queue per possible CPU and puts each request on its
    /// caller's CPU's queue; the proxy serves each queue with a thread kept
    /// on that CPU, which answers a request and waits for the next in one
    /// system call. FORGET, INTERRUPT and notifications still go through
    /// /dev/fuse. It replaces --threads, works with --restart, and where
    /// the kernel or io_uring
    /// cannot do it (parameter off, io_uring disabled) one log line says
    /// why and read(2) is used. The cost: a request holds its ring entry
    /// until it is answered, so at most --ring-depth requests per CPU reach
    /// the proxy at once and the rest wait in the kernel, time updates
    /// included (over read(2) the proxy takes up to --max-inflight); and
    /// each entry locks a buffer of the mount's max_write (1 MiB).
    #[arg(long, value_enum, default_value_t = KernelTransport::Read, value_name = "HOW")]
    pub kernel_transport: KernelTransport,

    /// What to do when the backend dies or its channel fails. `no`: answer
    /// what waits with EIO, unmount and exit 1. `on-failure`: keep the
    /// mount and start the backend's command again over a new channel of
    /// the same kind, at most `max` times (default 5) within `window`
    /// (default 60s); past that, give up as with `no`. The new daemon is
    /// sent the kernel's INIT again, and refused (as with `no`) if it
    /// answers with capabilities or limits the kernel was not told of.
    /// Requests in flight when the daemon died are answered EIO (or, if
    /// safe to send twice, sent to the new daemon); requests made meanwhile
    /// wait for the new daemon; time updates not yet applied are applied to
    /// it. Works over either --kernel-transport. Example: `--restart
    /// on-failure,max=3,window=10s`.
    #[arg(long, value_name = "WHEN", default_value = "no", value_parser = RestartPolicy::parse)]
    pub restart: RestartPolicy,

    /// Entries per io_uring queue with --kernel-transport uring: how many
    /// requests made on one CPU the proxy holds at once. Each locks 1 MiB
    /// (possible CPUs x depth MiB in all: 32 MiB on 2 CPUs at the default).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub ring_depth: u32,

    /// The policy file (TOML): what the proxy changes in this mount's
    /// traffic. See the description above and policies/examples/. SIGHUP
    /// reloads it. [default: none: time updates async, every other rule off]
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,

    /// Check the policy file given with --policy, print it with every
    /// default filled in (and the command-line overrides applied), and exit:
    /// 0 if it is valid, 1 with the error line if not. Nothing is mounted.
    #[arg(long, requires = "policy")]
    pub check: bool,

    /// What to do with time-only SETATTRs (utimensat, and the kernel's time
    /// flush at close and writeback). `async`: answer them at once from the
    /// attributes the backend last reported, coalesce them per file, and
    /// apply them to the backend within --times-max-delay, before any other
    /// request on that file. `forward`: pass them on and wait, like any
    /// other request. Overrides the policy's times.mode. [default: async]
    #[arg(long, value_enum, value_name = "MODE")]
    pub times: Option<TimesArg>,

    /// Longest time, in milliseconds, between acknowledging a time update and
    /// sending it to the backend. Overrides times.max_delay. [default: 1000]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub times_max_delay: Option<u64>,

    /// Files with acknowledged, unsent times at most; beyond it the oldest
    /// are sent at once. The table is allocated and locked at start, about
    /// 1 KiB per file (room for as many again being flushed): 7.5 MiB at
    /// the default, 64 MiB at 65536. Overrides times.max_pending.
    /// [default: 8192]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4_194_304))]
    pub times_max_pending: Option<u32>,

    /// Files whose attributes are cached to answer time updates; allocated
    /// and locked at start, about 160 bytes per file. A file not in the
    /// cache (the least recently used go first) has its time updates
    /// forwarded. Overrides times.attr_cache. [default: 16384]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub attr_cache: Option<u32>,

    /// Record the session to FILE: every request and reply on both sides,
    /// with its time, in fuseproxy's capture format (fixtures/FORMAT.md;
    /// read it with `fuseproxy-capture decode FILE`). The forwarding thread
    /// puts each record into a ring of --record-size bytes; a writer thread
    /// writes the ring to FILE at least every 50 ms while the mount runs,
    /// so recording never makes the proxy wait for a disk, and a proxy
    /// killed outright leaves a readable capture (reported as cut short)
    /// of all but the last moments. FILE is created (or truncated) at
    /// start with mode 0600, since it holds file contents.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// Bytes of the ring between the forwarding thread and the writer
    /// thread, allocated and locked at start (suffixes K, M, G; at least
    /// 4K). When the writer falls behind and the ring is full, records are
    /// dropped, never waited for: the file marks each gap with the number
    /// of records lost there, its end record holds the total, and the log
    /// says how many (the stats line's record_dropped=). A message larger
    /// than the ring is always dropped.
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size, requires = "record")]
    pub record_size: usize,

    /// Keep at most this many bytes of each recorded message (never less
    /// than its FUSE header): data of READ and WRITE takes the most room.
    /// [default: whole messages]
    #[arg(long, value_name = "BYTES", value_parser = parse_size, requires = "record")]
    pub record_snaplen: Option<usize>,

    /// Split the capture into files of at most SIZE bytes (suffixes K, M,
    /// G; at least 64K), like tcpdump -C. When the next record would take
    /// FILE past SIZE, FILE is completed (end record, synced) and the
    /// recording goes on in FILE.1, then FILE.2, and so on; each file is a
    /// capture of its own. A single record larger than SIZE gets a file to
    /// itself. [default: one file, no limit]
    #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "record")]
    pub record_file_size: Option<usize>,

    /// With --record-file-size, keep at most N files, like tcpdump -W:
    /// beginning file number k deletes number k - N (FILE itself is number
    /// 0), so the newest N remain. Names keep counting up; none is reused.
    /// Files left by an earlier run under the same names are overwritten
    /// when their number comes, not deleted. [default: keep every file]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), requires = "record_file_size")]
    pub record_files: Option<u64>,

    /// Where to mount: an existing directory (or file) that is not already a
    /// mount point.
    #[arg(value_name = "MOUNTPOINT", required_unless_present = "check")]
    pub mountpoint: Option<PathBuf>,

    /// The FUSE daemon's command, written as without the proxy, after `--`.
    #[arg(value_name = "BACKEND_COMMAND", last = true, required_unless_present = "check", num_args = 1..)]
    pub backend: Vec<OsString>,
}

/// The settings the command line overrides in a policy, kept to apply again
/// on each reload.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    /// --times.
    pub times: Option<TimesArg>,
    /// --times-max-delay, ms.
    pub max_delay_ms: Option<u64>,
    /// --times-max-pending.
    pub max_pending: Option<u32>,
    /// --attr-cache.
    pub attr_cache: Option<u32>,
}

impl Overrides {
    /// Applies them to a policy read from a file (or the empty one).
    pub fn apply(&self, p: &mut fuseproxy_policies::Policy) {
        use fuseproxy_policies::config::{Dur, TimesModeName};
        if let Some(t) = self.times {
            p.times.mode = match t {
                TimesArg::Async => TimesModeName::Async,
                TimesArg::Forward => TimesModeName::Forward,
            };
        }
        if let Some(ms) = self.max_delay_ms {
            p.times.max_delay = Dur(fuseproxy_policies::Duration::from_millis(ms));
        }
        if let Some(n) = self.max_pending {
            p.times.max_pending = n;
        }
        if let Some(n) = self.attr_cache {
            p.times.attr_cache = n;
        }
    }
}

impl Cli {
    /// The settings given on the command line that override the policy's.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            times: self.times,
            max_delay_ms: self.times_max_delay,
            max_pending: self.times_max_pending,
            attr_cache: self.attr_cache,
        }
    }

    /// The slog level after -v.
    pub fn level(&self) -> LogLevel {
        let all = [
            LogLevel::Error,
            LogLevel::Warn,
            LogLevel::Info,
            LogLevel::Debug,
            LogLevel::Trace,
        ];
        let i = all.iter().position(|l| *l == self.log_level).unwrap_or(2);
        let level = all[(i + self.verbose as usize).min(all.len() - 1)];
        if self.trace {
            LogLevel::Trace
        } else {
            level
        }
    }

    /// Whether each message is printed decoded: `--trace`, or a log level
    /// of trace (`-vv`).
    pub fn tracing(&self) -> bool {
        self.level() == LogLevel::Trace
    }
}

/// "64M" → 67108864.
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix '{c}' (use K, M or G)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (e.g. 64M)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Replaces the last argument of `argv` (after the program) that names
/// `mountpoint` with `/dev/fd/{fd}`. An argument names it when it is equal as
/// written, or resolves to the same path.
pub fn rewrite_mountpoint(
    argv: &[OsString],
    mountpoint: &Path,
    canonical: &Path,
    fd: i32,
) -> Result<Vec<OsString>, Error> {
    let idx = mountpoint_arg(argv, mountpoint, canonical)?;
    let mut out = argv.to_vec();
    out[idx] = OsString::from(format!("/dev/fd/{fd}"));
    Ok(out)
}

/// The index in `argv` of the last argument (after the program) that names
/// `mountpoint`: equal as written, or resolving to the same path. Call it
/// before the mount exists: resolving a path inside a mount whose backend
/// is not answering would wait for it.
pub fn mountpoint_arg(
    argv: &[OsString],
    mountpoint: &Path,
    canonical: &Path,
) -> Result<usize, Error> {
    let names_it = |a: &OsStr| {
        a == mountpoint.as_os_str()
            || (!a.as_encoded_bytes().starts_with(b"-")
                && Path::new(a).canonicalize().is_ok_and(|c| c == canonical))
    };
    let idx = argv
        .iter()
        .enumerate()
        .skip(1)
        .rev()
        .find(|(_, a)| names_it(a))
        .map(|(i, _)| i)
        .ok_or_else(|| {
            Error::Usage(format!(
                "no argument of the backend command is the mountpoint '{}'; write the \
                 backend command as you would run it without the proxy, mountpoint included",
                mountpoint.display()
            ))
        })?;
    Ok(idx)
}

/// The backend program's base name (libfuse's default subtype).
pub fn program_name(argv: &[OsString]) -> String {
    argv.first()
        .map(|p| {
            Path::new(p)
                .file_name()
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default()
}

/// `--restart`: whether, and how often, a dead backend is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within `window`; 0: never restart.
    pub max: u32,
    /// The sliding window the restarts are counted in.
    pub window: std::time::Duration,
}

impl RestartPolicy {
    /// `no`, or `on-failure[,max=N][,window=DURATION]`.
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        let mut parts = s.split(',');
        let mut p = match parts.next().map(str::trim) {
            Some("no") => {
                return match parts.next() {
                    None => Ok(RestartPolicy {
                        max: 0,
                        window: std::time::Duration::ZERO,
                    }),
                    Some(_) => Err(format!("\"{s}\": \"no\" takes no options")),
                }
            }
            Some("on-failure") => RestartPolicy {
                max: 5,
                window: std::time::Duration::from_secs(60),
            },
            _ => {
                return Err(format!(
                    "\"{s}\": expected \"no\" or \"on-failure[,max=N][,window=DURATION]\""
                ))
            }
        };
        for part in parts {
            match part.trim().split_once('=') {
                Some(("max", n)) => {
                    p.max = n
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| format!("max=\"{n}\": expected a count from 1 to 1000"))?;
                }
                Some(("window", d)) => {
                    let d = fuseproxy_policies::config::Dur::parse(d)
                        .map_err(|e| format!("window={e}"))?
                        .0;
                    let d = std::time::Duration::from_nanos(d.as_nanos());
                    if d.is_zero() || d > std::time::Duration::from_secs(86_400) {
                        return Err(format!(
                            "window=\"{}\": expected more than 0 and at most a day",
                            part.trim().trim_start_matches("window=")
                        ));
                    }
                    p.window = d;
                }
                _ => {
                    return Err(format!(
                        "\"{}\": unknown option of on-failure (max=N, window=DURATION)",
                        part.trim()
                    ))
                }
            }
        }
        Ok(p)
    }

    /// Whether the backend is started again at all.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }
}

/// `--idle-poll`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IdlePoll {
    /// The CPU the forwarding thread waits on (each ring thread's, with the
    /// ring) polls while requests flow.
    Own,
    /// CPUs idle as the machine has them.
    Off,
}

/// `--kernel-transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelTransport {
    /// read(2) and write(2) on /dev/fuse.
    Read,
    /// FUSE-over-io_uring, falling back to read(2) where unavailable.
    Uring,
}

/// `--threads` when not given: one reader up to 4 CPUs (there the callers,
/// the daemon and the proxy share the cores, and a second reader only adds
/// hand-offs), then one per 4 CPUs, at most 8.
pub fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / 4).clamp(1, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn restart_policies() {
        use std::time::Duration;
        let p = |s| RestartPolicy::parse(s);
        assert!(!p("no").unwrap().enabled());
        assert_eq!(
            p("on-failure").unwrap(),
            RestartPolicy {
                max: 5,
                window: Duration::from_secs(60)
            }
        );
        assert_eq!(
            p("on-failure,max=3,window=10s").unwrap(),
            RestartPolicy {
                max: 3,
                window: Duration::from_secs(10)
            }
        );
        for bad in [
            "always",
            "no,max=2",
            "on-failure,max=0",
            "on-failure,window=0",
            "on-failure,window=5",
            "on-failure,tries=2",
            "on-failure,max=x",
        ] {
            let e = p(bad).unwrap_err();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn rewrites_the_last_match_only() {
        let argv = os(&["bindfs", "/x/m", "/x/m"]);
        let out =
            rewrite_mountpoint(&argv, Path::new("/x/m"), Path::new("/nonexistent"), 7).unwrap();
        assert_eq!(out, os(&["bindfs", "/x/m", "/dev/fd/7"]));
    }

    #[test]
    fn missing_mountpoint_is_a_usage_error() {
        let argv = os(&["sshfs", "host:/", "/elsewhere"]);
        let err =
            rewrite_mountpoint(&argv, Path::new("/mnt/a"), Path::new("/mnt/a"), 3).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("/mnt/a"));
    }

    #[test]
    fn the_program_itself_is_never_rewritten() {
        let argv = os(&["/mnt/a"]);
        assert!(rewrite_mountpoint(&argv, Path::new("/mnt/a"), Path::new("/mnt/a"), 3).is_err());
    }

    #[test]
    fn command_line_parses() {
        let cli =
            Cli::try_parse_from(["fuseproxy", "-o", "ro", "-v", "/m", "--", "fs", "/m"]).unwrap();
        assert_eq!(cli.options, vec!["ro"]);
        assert_eq!(cli.level(), LogLevel::Debug);
        assert_eq!(cli.backend, os(&["fs", "/m"]));
        assert!(Cli::try_parse_from(["fuseproxy", "/m", "fs", "/m"]).is_err());
        assert!(Cli::try_parse_from(["fuseproxy", "/m", "--"]).is_err());
        assert_eq!(cli.backend_user, None);
        let as_user = |spec: &str| {
            Cli::try_parse_from(["fuseproxy", "--backend-user", spec, "/m", "--", "fs", "/m"])
        };
        if nix::unistd::User::from_name("nobody").is_ok_and(|u| u.is_some()) {
            let u = as_user("nobody").unwrap().backend_user.unwrap();
            assert_eq!(u.user, "nobody");
        }
        let e = as_user("no-such-user-here").unwrap_err().to_string();
        assert!(e.contains("no user 'no-such-user-here'"), "{e}");
    }
}
