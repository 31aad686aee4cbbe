//! The mount-helper form: `fuseproxy SOURCE MOUNTPOINT -o backend=PROGRAM[,...]`.
//!
//! It is what `mount.fuse3` runs for an /etc/fstab line of type
//! `fuse.fuseproxy` (mount(8) runs `mount.fuse SOURCE MOUNTPOINT -o OPTIONS
//! -t fuse.fuseproxy`, which runs `fuseproxy SOURCE MOUNTPOINT -o OPTIONS`
//! through /bin/sh). This module only translates that argv into the ordinary
//! form, `fuseproxy [PROXY_OPTIONS] MOUNTPOINT -- PROGRAM -f [SOURCE]
//! MOUNTPOINT [-o REST]`, which then runs as if typed: the options named in
//! [`PROXY_OPTIONS`] are taken out of the `-o` lists and become the proxy's
//! options, every other one goes to the backend in its `-o`, in order.
//!
//! Invariant: a translation that succeeds names an existing backend program
//! and proxy options that the ordinary command line accepts, so every
//! mistake in an fstab line is reported here, before anything is mounted or
//! forked, in one line naming the option and the line's source and
//! mountpoint.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use clap::Parser;

use crate::cli::Cli;
use crate::error::Error;

/// Where sh looks for a program when PATH is unset. mount(8) removes PATH
/// from the environment of its helpers, so `mount.fuse3` finds `fuseproxy`
/// in sh's default path, and the proxy, run without PATH, looks for the
/// backend in the same directories.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `-o` options that are the proxy's, and the ordinary command line's
/// option each becomes (`None`: handled here).
pub const PROXY_OPTIONS: &[(&str, Option<&str>)] = &[
    ("backend", None),
    ("backend_foreground", None),
    ("log", None),
    ("policy", Some("--policy")),
    ("channel", Some("--channel")),
    ("backend_user", Some("--backend-user")),
    ("restart", Some("--restart")),
    ("times", Some("--times")),
    ("threads", Some("--threads")),
    ("log_level", Some("--log-level")),
    ("cpu_latency", Some("--cpu-latency")),
    ("idle_poll", Some("--idle-poll")),
    ("record", Some("--record")),
];

/// A proxy option may also be written with this prefix (`fuseproxy.policy=`);
/// an unknown name after it is an error, not a backend option.
const OWN_PREFIX: &str = "fuseproxy.";

/// `backend.NAME[=VALUE]` passes `NAME[=VALUE]` to the backend even when
/// NAME is one of the proxy's options.
const PASS_PREFIX: &str = "backend.";

/// The recognised mount-helper form.
#[derive(Debug)]
pub struct HelperForm {
    /// The line's source, as given (`none`: the backend gets none).
    pub source: OsString,
    /// The line's mountpoint, as given.
    pub mountpoint: OsString,
    /// `-f`: stay in the foreground (for debugging) instead of detaching
    /// once the mount is up.
    pub foreground: bool,
    /// `log=FILE`: the proxy's and the backend's stderr.
    pub log: Option<PathBuf>,
    /// The ordinary form's argv, program name first.
    pub argv: Vec<OsString>,
    /// Each proxy option as written, with the arguments it became (to name
    /// the option a command-line error comes from).
    given: Vec<(String, Vec<OsString>)>,
}

/// The mount-helper form, if `args` (without the program name) is written
/// in it: no `--`, and either a `-o` list naming `backend=`, or exactly two
/// operands and a `-o` (how mount.fuse3 runs every helper). `None`: the
/// ordinary form, for clap. `Some(Err)`: the form, with a mistake.
pub fn recognise(args: &[OsString]) -> Option<Result<HelperForm, Error>> {
    let special = ["--", "-h", "--help", "-V", "--version"];
    if args.iter().any(|a| special.iter().any(|s| a == *s)) {
        return None;
    }
    let mut lists = Vec::new();
    let mut operands = Vec::new();
    let mut foreground = false;
    let mut flags = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let bytes = a.as_encoded_bytes();
        if a == "-o" {
            match args.get(i + 1) {
                Some(list) => lists.push(list.to_string_lossy().into_owned()),
                None => flags.push("-o without its OPTIONS".to_string()),
            }
            i += 2;
            continue;
        }
        if let Some(list) = bytes.strip_prefix(b"-o") {
            lists.push(String::from_utf8_lossy(list).into_owned());
        } else if a == "-f" {
            foreground = true;
        } else if bytes.starts_with(b"-") && bytes.len() > 1 {
            flags.push(a.to_string_lossy().into_owned());
        } else {
            operands.push(a.clone());
        }
        i += 1;
    }
    let names_backend = lists
        .iter()
        .flat_map(|l| l.split(','))
        .any(|o| is_backend(o.split('=').next().unwrap_or("")));
    let as_mount_fuse3_runs = operands.len() == 2 && !lists.is_empty();
    if !(names_backend || as_mount_fuse3_runs) {
        return None;
    }
    Some(translate(lists, operands, foreground, &flags))
}

fn is_backend(name: &str) -> bool {
    name == "backend" || name == "fuseproxy.backend"
}

fn translate(
    lists: Vec<String>,
    operands: Vec<OsString>,
    foreground: bool,
    flags: &[String],
) -> Result<HelperForm, Error> {
    let [source, mountpoint] = <[OsString; 2]>::try_from(operands).map_err(|o| {
        Error::Usage(format!(
            "the mount-helper form takes two operands, SOURCE and MOUNTPOINT, and {} {} \
             given (write fuseproxy SOURCE MOUNTPOINT -o backend=PROGRAM[,OPTIONS], or \
             fuseproxy [OPTIONS] MOUNTPOINT -- BACKEND_COMMAND...)",
            o.len(),
            if o.len() == 1 { "was" } else { "were" }
        ))
    })?;
    let line = format!(
        "{} on {}",
        source.to_string_lossy(),
        mountpoint.to_string_lossy()
    );
    let bad = |what: String| Error::Usage(format!("{line}: {what}"));
    if let Some(f) = flags.first() {
        return Err(bad(format!(
            "{f}: the mount-helper form takes only -o and -f; give the proxy's options \
             inside -o ({})",
            PROXY_OPTIONS
                .iter()
                .map(|(n, _)| format!("{n}="))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if mountpoint.as_encoded_bytes().starts_with(b"/dev/fd/") {
        return Err(bad(format!(
            "the mountpoint is {}: mount.fuse3's drop_privileges mounts before the proxy \
             runs, which the proxy cannot take over; remove drop_privileges (backend_user=USER \
             runs the daemon without privileges)",
            mountpoint.to_string_lossy()
        )));
    }

    let mut backend: Option<String> = None;
    let mut backend_f = true;
    let mut log = None;
    let mut given: Vec<(String, Vec<OsString>)> = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    for opt in lists.iter().flat_map(|l| l.split(',')) {
        if opt.is_empty() {
            continue;
        }
        if let Some(passed) = opt.strip_prefix(PASS_PREFIX) {
            if passed.is_empty() {
                return Err(bad(format!("option {opt}: nothing after {PASS_PREFIX}")));
            }
            rest.push(passed.to_string());
            continue;
        }
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        let own = name.strip_prefix(OWN_PREFIX);
        let bare = own.unwrap_or(name);
        let Some((_, flag)) = PROXY_OPTIONS.iter().find(|(n, _)| *n == bare) else {
            if own.is_some() {
                return Err(bad(format!(
                    "option {opt}: no such proxy option (known: {})",
                    known_names()
                )));
            }
            rest.push(opt.to_string());
            continue;
        };
        let value = match value {
            Some(v) if !v.is_empty() => v,
            _ => return Err(bad(format!("option {opt}: {bare}= needs a value"))),
        };
        if given.iter().any(|(g, _)| option_name(g) == bare) {
            return Err(bad(format!("option {opt}: {bare}= is given twice")));
        }
        let args: Vec<OsString> = match (bare, flag) {
            ("backend", _) => {
                backend = Some(value.to_string());
                Vec::new()
            }
            ("backend_foreground", _) => {
                backend_f = match value {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(bad(format!("option {opt}: expected yes or no"))),
                };
                Vec::new()
            }
            ("log", _) => {
                log = Some(PathBuf::from(value));
                Vec::new()
            }
            // fstab's commas separate options: restart's own list is
            // written with colons (on-failure:max=3:window=2m).
            ("restart", Some(flag)) => vec![(*flag).into(), value.replace(':', ",").into()],
            (_, Some(flag)) => vec![(*flag).into(), value.into()],
            (_, None) => unreachable!("every option without a flag is handled above"),
        };
        given.push((opt.to_string(), args));
    }
    let Some(program) = backend else {
        return Err(bad(
            "no backend=PROGRAM among the -o options: the mount-helper form needs the FUSE \
             daemon to run (e.g. backend=bindfs); the ordinary form is MOUNTPOINT -- \
             BACKEND_COMMAND..."
                .into(),
        ));
    };
    if crate::which(OsStr::new(&program)).is_none() {
        return Err(bad(format!(
            "option backend={program}: no such program{}",
            if program.contains('/') {
                String::new()
            } else {
                format!(
                    " in {}",
                    std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into())
                )
            }
        )));
    }

    let mut argv: Vec<OsString> = vec!["fuseproxy".into()];
    argv.extend(given.iter().flat_map(|(_, a)| a.iter().cloned()));
    argv.push(mountpoint.clone());
    argv.push("--".into());
    argv.push(program.into());
    if backend_f {
        argv.push("-f".into());
    }
    if source != "none" {
        argv.push(source.clone());
    }
    argv.push(mountpoint.clone());
    if !rest.is_empty() {
        argv.push("-o".into());
        argv.push(rest.join(",").into());
    }
    Ok(HelperForm {
        source,
        mountpoint,
        foreground,
        log,
        argv,
        given,
    })
}

fn option_name(opt: &str) -> &str {
    let name = opt.split('=').next().unwrap_or(opt);
    name.strip_prefix(OWN_PREFIX).unwrap_or(name)
}

fn known_names() -> String {
    PROXY_OPTIONS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

impl HelperForm {
    /// "SOURCE on MOUNTPOINT", how errors name the fstab line.
    pub fn line(&self) -> String {
        format!(
            "{} on {}",
            self.source.to_string_lossy(),
            self.mountpoint.to_string_lossy()
        )
    }

    /// Parses the translated command line. A value the ordinary command
    /// line refuses is reported with the `-o` option it came from, and
    /// clap's reason.
    pub fn parse(&self) -> Result<Cli, Error> {
        let e = match Cli::try_parse_from(&self.argv) {
            Ok(cli) => return Ok(cli),
            Err(e) => e,
        };
        // Each option alone, on an otherwise valid line, finds the culprit.
        let culprit = self.given.iter().find(|(_, args)| {
            let mut alone: Vec<OsString> = vec!["fuseproxy".into()];
            alone.extend(args.iter().cloned());
            alone.extend(["/m", "--", "fs", "/m"].map(OsString::from));
            Cli::try_parse_from(alone).is_err()
        });
        let reason = crate::one_line(&e.render().to_string());
        Err(Error::Usage(match culprit {
            Some((opt, _)) => format!("{}: option {opt}: {reason}", self.line()),
            None => format!("{}: {reason}", self.line()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn form(v: &[&str]) -> HelperForm {
        recognise(&os(v)).expect("the helper form").expect("valid")
    }

    fn error(v: &[&str]) -> String {
        recognise(&os(v))
            .expect("the helper form")
            .expect_err("an error")
            .to_string()
    }

    #[test]
    fn the_ordinary_form_is_left_to_clap() {
        for v in [
            &["/m", "--", "bindfs", "/s", "/m"][..],
            &["-o", "ro", "/m", "--", "fs", "/m"],
            &["/m", "fs", "/m"],
            &["/m"],
            &["--help"],
            &["--check", "--policy", "p.toml"],
            &["-o", "backend=sh", "--", "x"],
        ] {
            assert!(recognise(&os(v)).is_none(), "{v:?}");
        }
    }

    #[test]
    fn what_mount_fuse3_runs_becomes_the_ordinary_form() {
        let h = form(&[
            "/srv/a",
            "/mnt/a",
            "-o",
            "rw,backend=sh,allow_other,dev,suid",
        ]);
        assert_eq!(
            h.argv,
            os(&[
                "fuseproxy",
                "/mnt/a",
                "--",
                "sh",
                "-f",
                "/srv/a",
                "/mnt/a",
                "-o",
                "rw,allow_other,dev,suid"
            ])
        );
        assert!(!h.foreground);
        assert_eq!(h.log, None);
        assert_eq!(h.line(), "/srv/a on /mnt/a");
    }

    #[test]
    fn proxy_options_are_taken_out_in_any_list() {
        let h = form(&[
            "-f",
            "-o",
            "policy=/etc/p.toml,ro",
            "host:/x",
            "/mnt/b",
            "-ofuseproxy.channel=fd,backend=/bin/sh,log=/tmp/l,threads=2,backend.log=7",
        ]);
        assert!(h.foreground);
        assert_eq!(h.log, Some(PathBuf::from("/tmp/l")));
        assert_eq!(
            h.argv,
            os(&[
                "fuseproxy",
                "--policy",
                "/etc/p.toml",
                "--channel",
                "fd",
                "--threads",
                "2",
                "/mnt/b",
                "--",
                "/bin/sh",
                "-f",
                "host:/x",
                "/mnt/b",
                "-o",
                "ro,log=7"
            ])
        );
    }

    #[test]
    fn source_none_is_not_given_and_the_f_can_be_left_out() {
        let h = form(&[
            "none",
            "/m",
            "-o",
            "backend=sh,source=/srv,backend_foreground=no",
        ]);
        assert_eq!(
            h.argv,
            os(&["fuseproxy", "/m", "--", "sh", "/m", "-o", "source=/srv"])
        );
        let h = form(&["none", "/m", "-o", "backend=sh"]);
        assert_eq!(h.argv, os(&["fuseproxy", "/m", "--", "sh", "-f", "/m"]));
    }

    #[test]
    fn the_translation_parses() {
        let h = form(&[
            "/s",
            "/m",
            "-o",
            "backend=sh,times=forward,restart=on-failure:max=3:window=2m,cpu_latency=0,idle_poll=off",
        ]);
        let cli = h.parse().unwrap();
        assert_eq!(cli.times, Some(crate::cli::TimesArg::Forward));
        assert_eq!(cli.cpu_latency, Some(0));
        assert_eq!(cli.idle_poll, crate::cli::IdlePoll::Off);
        assert!(cli.restart.enabled());
        assert_eq!(cli.restart.max, 3);
        assert_eq!(cli.restart.window, std::time::Duration::from_secs(120));
        assert_eq!(cli.backend, os(&["sh", "-f", "/s", "/m"]));
    }

    #[test]
    fn mistakes_name_the_option_and_the_line() {
        let e = error(&["/s", "/m", "-o", "allow_other,dev,suid"]);
        assert!(
            e.contains("/s on /m") && e.contains("backend=PROGRAM"),
            "{e}"
        );
        let e = error(&["/s", "/m", "-o", "backend="]);
        assert!(e.contains("option backend=: backend= needs a value"), "{e}");
        let e = error(&["/s", "/m", "-o", "backend=fuseproxy-test-no-such-program"]);
        assert!(
            e.contains("backend=fuseproxy-test-no-such-program: no such program in /"),
            "{e}"
        );
        let e = error(&["/s", "/m", "-o", "backend=/nonexistent/fs"]);
        assert!(e.ends_with("no such program"), "{e}");
        let e = error(&["/s", "/m", "-o", "backend=sh,fuseproxy.polcy=x"]);
        assert!(e.contains("fuseproxy.polcy=x: no such proxy option"), "{e}");
        let e = error(&["/s", "/m", "-o", "backend=sh,policy=a,policy=b"]);
        assert!(e.contains("policy=b: policy= is given twice"), "{e}");
        let e = error(&["/s", "/m", "-o", "backend=sh,backend_foreground=maybe"]);
        assert!(e.contains("expected yes or no"), "{e}");
        let e = error(&["-v", "/s", "/m", "-o", "backend=sh"]);
        assert!(
            e.contains("-v: the mount-helper form takes only -o and -f"),
            "{e}"
        );
        let e = error(&["/m", "-o", "backend=sh"]);
        assert!(e.contains("two operands") && e.contains("1 was"), "{e}");
        let e = error(&["/s", "/dev/fd/3", "-o", "backend=sh"]);
        assert!(e.contains("drop_privileges"), "{e}");
    }

    #[test]
    fn a_value_clap_refuses_is_named_by_its_option() {
        let e = form(&["/s", "/m", "-o", "backend=sh,channel=pigeon"])
            .parse()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/s on /m: option channel=pigeon: "), "{e}");
        assert!(e.contains("pigeon"), "{e}");
        let e = form(&["/s", "/m", "-o", "backend=sh,threads=0"])
            .parse()
            .unwrap_err()
            .to_string();
        assert!(e.contains("option threads=0: "), "{e}");
    }
}
