//! Kernel-level mount options in libfuse's `-o` convention.
//!
//! A backend given `/dev/fd/N` as its mountpoint mounts nothing, so the
//! options its command line carries for the mount (`allow_other`,
//! `default_permissions`, `ro`, `fsname=` ...) would silently be lost; a lost
//! `default_permissions` switches off the kernel's permission checks. The
//! proxy therefore reads them from the backend's `-o` arguments (leaving them
//! in place for the backend), lets its own `-o` override them, and applies the
//! result to the mount it makes. Defaults follow libfuse's `lib/mount.c`.

use std::fmt;

use nix::mount::MsFlags;

/// What the mount will look like: flags for mount(2), the fuse-specific data
/// options, and the source and type shown in /proc/mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// mount(2) flags; libfuse starts from `nosuid,nodev`.
    pub flags: MsFlags,
    /// Let users other than the mounting one access the mount.
    pub allow_other: bool,
    /// Have the kernel check permissions from the file modes.
    pub default_permissions: bool,
    /// The mount's source as /proc/mounts shows it.
    pub fsname: Option<String>,
    /// The type's suffix: the type is `fuse.SUBTYPE`, or `fuse` without one.
    pub subtype: Option<String>,
    /// `max_read=`, passed to the kernel.
    pub max_read: Option<u32>,
    /// `blksize=` (only meaningful for fuseblk; passed through).
    pub blksize: Option<u32>,
    /// The type is `fuseblk` (`fuseblk.SUBTYPE`): set only from a daemon's
    /// own mount(2) call (seccomp channel), never from `-o blkdev`.
    pub blkdev: bool,
    /// Data options of a daemon's own mount(2) call passed to the kernel as
    /// given (`rootmode=`, `user_id=`, `group_id=`, and any the proxy does not
    /// know); empty for the fd channel.
    pub extra: Vec<String>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            allow_other: false,
            default_permissions: false,
            fsname: None,
            subtype: None,
            max_read: None,
            blksize: None,
            blkdev: false,
            extra: Vec::new(),
        }
    }
}

/// A mount option the proxy cannot apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    /// The option as written.
    pub option: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mount option '{}': {}", self.option, self.reason)
    }
}

/// Flag options: (name, flag, set?). The same table as libfuse's `mount_flags`.
const FLAG_OPTIONS: &[(&str, MsFlags, bool)] = &[
    ("rw", MsFlags::MS_RDONLY, false),
    ("ro", MsFlags::MS_RDONLY, true),
    ("suid", MsFlags::MS_NOSUID, false),
    ("nosuid", MsFlags::MS_NOSUID, true),
    ("dev", MsFlags::MS_NODEV, false),
    ("nodev", MsFlags::MS_NODEV, true),
    ("exec", MsFlags::MS_NOEXEC, false),
    ("noexec", MsFlags::MS_NOEXEC, true),
    ("async", MsFlags::MS_SYNCHRONOUS, false),
    ("sync", MsFlags::MS_SYNCHRONOUS, true),
    ("atime", MsFlags::MS_NOATIME, false),
    ("noatime", MsFlags::MS_NOATIME, true),
    ("diratime", MsFlags::MS_NODIRATIME, false),
    ("nodiratime", MsFlags::MS_NODIRATIME, true),
    ("lazytime", MsFlags::MS_LAZYTIME, true),
    ("nolazytime", MsFlags::MS_LAZYTIME, false),
    ("relatime", MsFlags::MS_RELATIME, true),
    ("norelatime", MsFlags::MS_RELATIME, false),
    ("strictatime", MsFlags::MS_STRICTATIME, true),
    ("nostrictatime", MsFlags::MS_STRICTATIME, false),
    ("dirsync", MsFlags::MS_DIRSYNC, true),
];

impl MountOptions {
    /// Applies one comma-separated `-o` string. With `strict`, options that
    /// are not mount options are an error (the proxy's own `-o`); without it
    /// they are left to the backend (a backend's `-o` also carries its own
    /// options such as `source=` or `writeback`).
    pub fn apply(&mut self, list: &str, strict: bool) -> Result<(), OptionError> {
        for opt in split_options(list) {
            self.apply_one(&opt, strict)?;
        }
        Ok(())
    }

    fn apply_one(&mut self, opt: &str, strict: bool) -> Result<(), OptionError> {
        let err = |reason| OptionError {
            option: opt.to_string(),
            reason,
        };
        if let Some(&(_, flag, set)) = FLAG_OPTIONS.iter().find(|(n, _, _)| *n == opt) {
            self.flags.set(flag, set);
            return Ok(());
        }
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("allow_other", None) => self.allow_other = true,
            ("default_permissions", None) => self.default_permissions = true,
            ("fsname", Some(v)) if !v.is_empty() => self.fsname = Some(v.to_string()),
            ("subtype", Some(v)) if !v.is_empty() => self.subtype = Some(v.to_string()),
            ("fsname" | "subtype", _) => return Err(err("needs a non-empty value")),
            ("max_read", Some(v)) => {
                self.max_read = Some(v.parse().map_err(|_| err("needs a number"))?)
            }
            ("blksize", Some(v)) => {
                self.blksize = Some(v.parse().map_err(|_| err("needs a number"))?)
            }
            ("allow_root", None) => {
                return Err(err(
                    "is implemented by fusermount, not the kernel; use allow_other",
                ))
            }
            // Options of libfuse's mount helper that have no kernel meaning
            // here: accepted so that a backend's command line works unchanged.
            ("nonempty" | "auto_unmount" | "blkdev", None) => {}
            _ if strict => return Err(err("is not a mount option this proxy knows")),
            _ => {}
        }
        Ok(())
    }

    /// libfuse's default when neither `fsname` nor `subtype` is given: the
    /// type becomes `fuse.PROGRAM` and the source `PROGRAM` (seen on a direct
    /// mount of passthrough_ll here: `pll /mnt fuse.pll`).
    pub fn default_subtype(&mut self, program: &str) {
        if self.fsname.is_none() && self.subtype.is_none() && !program.is_empty() {
            self.subtype = Some(program.to_string());
        }
    }

    /// The source argument of mount(2).
    pub fn source(&self) -> &str {
        self.fsname
            .as_deref()
            .or(self.subtype.as_deref())
            .unwrap_or("/dev/fuse")
    }

    /// The filesystem type argument of mount(2).
    pub fn fstype(&self) -> String {
        let base = if self.blkdev { "fuseblk" } else { "fuse" };
        match &self.subtype {
            Some(s) => format!("{base}.{s}"),
            None => base.to_string(),
        }
    }

    /// The options of a daemon's own mount(2) call (seccomp channel): its
    /// source, type, flags and data, with the data's `fd=N` returned apart.
    /// `rootmode=`, `user_id=`, `group_id=` and options unknown here are kept
    /// as given in [`MountOptions::extra`]; the known ones land in their
    /// fields, so that the proxy's `-o`, applied after, overrides them.
    ///
    /// # Errors
    /// A type that is not `fuse`, `fuse.*`, `fuseblk` or `fuseblk.*`, a
    /// data string without a numeric `fd=`, or a bad number.
    pub fn from_call(
        source: Option<&str>,
        fstype: &str,
        flags: MsFlags,
        data: &str,
    ) -> Result<(MountOptions, i32), OptionError> {
        let err = |option: &str, reason| OptionError {
            option: option.to_string(),
            reason,
        };
        let (blkdev, subtype) = match fstype.split_once('.') {
            Some(("fuse", s)) if !s.is_empty() => (false, Some(s.to_string())),
            Some(("fuseblk", s)) if !s.is_empty() => (true, Some(s.to_string())),
            None if fstype == "fuse" => (false, None),
            None if fstype == "fuseblk" => (true, None),
            _ => return Err(err(fstype, "is not a FUSE filesystem type")),
        };
        let mut m = MountOptions {
            flags,
            // The kernel shows "none" for a NULL source; so does this.
            fsname: Some(source.unwrap_or("none").to_string()),
            subtype,
            blkdev,
            ..MountOptions::default()
        };
        let mut fd = None;
        // The kernel splits mount(2) data at commas, without escapes.
        for opt in data.split(',').filter(|o| !o.is_empty()) {
            let number = |v: &str| v.parse::<u32>().map_err(|_| err(opt, "needs a number"));
            match opt.split_once('=') {
                Some(("fd", v)) => {
                    fd = Some(v.parse::<i32>().map_err(|_| err(opt, "needs a number"))?)
                }
                Some(("max_read", v)) => m.max_read = Some(number(v)?),
                Some(("blksize", v)) => m.blksize = Some(number(v)?),
                None if opt == "allow_other" => m.allow_other = true,
                None if opt == "default_permissions" => m.default_permissions = true,
                _ => m.extra.push(opt.to_string()),
            }
        }
        let fd = fd.ok_or_else(|| err(data, "has no fd= (the FUSE device)"))?;
        Ok((m, fd))
    }

    /// The data argument of mount(2) for options from [`MountOptions::from_call`]:
    /// `fd=` names the proxy's device, everything else as the daemon gave
    /// it, with the proxy's `-o` applied.
    pub fn data_as_given(&self, fd: i32) -> String {
        let mut d = format!("fd={fd}");
        for o in &self.extra {
            d.push(',');
            d.push_str(o);
        }
        self.push_kernel_options(&mut d);
        d
    }

    /// Appends the options the fuse filesystem itself takes that the proxy
    /// may override (`-o`): permission checks, other users, read size,
    /// block size.
    fn push_kernel_options(&self, d: &mut String) {
        if self.default_permissions {
            d.push_str(",default_permissions");
        }
        if self.allow_other {
            d.push_str(",allow_other");
        }
        if let Some(n) = self.max_read {
            d.push_str(&format!(",max_read={n}"));
        }
        if let Some(n) = self.blksize {
            d.push_str(&format!(",blksize={n}"));
        }
    }

    /// The data argument of mount(2) for the fuse filesystem.
    pub fn data(&self, fd: i32, rootmode: u32, uid: u32, gid: u32) -> String {
        let mut d = format!("fd={fd},rootmode={rootmode:o},user_id={uid},group_id={gid}");
        self.push_kernel_options(&mut d);
        d
    }
}

impl fmt::Display for MountOptions {
    /// The effective options in `-o` form, for the start-up log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<&str> = Vec::new();
        parts.push(if self.flags.contains(MsFlags::MS_RDONLY) {
            "ro"
        } else {
            "rw"
        });
        for (name, flag, set) in FLAG_OPTIONS.iter().skip(2) {
            if *set && self.flags.contains(*flag) {
                parts.push(name);
            }
        }
        if self.default_permissions {
            parts.push("default_permissions");
        }
        if self.allow_other {
            parts.push("allow_other");
        }
        write!(f, "{}", parts.join(","))?;
        if let Some(n) = self.max_read {
            write!(f, ",max_read={n}")?;
        }
        write!(f, ",fsname={},type={}", self.source(), self.fstype())
    }
}

/// Splits an `-o` list at commas; `\,` escapes a comma, as in libfuse.
fn split_options(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `-o` option lists in a command line: `-o LIST` and `-oLIST`, up to a
/// `--` that ends the options.
pub fn option_lists<S: AsRef<str>>(args: &[S]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut it = args.iter().map(AsRef::as_ref);
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        } else if a == "-o" {
            if let Some(v) = it.next() {
                out.push(v);
            }
        } else if let Some(v) = a.strip_prefix("-o") {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_libfuse() {
        let mut m = MountOptions::default();
        m.default_subtype("passthrough_ll");
        assert_eq!(m.source(), "passthrough_ll");
        assert_eq!(m.fstype(), "fuse.passthrough_ll");
        assert_eq!(m.flags, MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(
            m.data(5, 0o40000, 0, 0),
            "fd=5,rootmode=40000,user_id=0,group_id=0"
        );
    }

    #[test]
    fn backend_options_then_proxy_overrides() {
        let args = [
            "-f",
            "-o",
            "source=/x,allow_other,default_permissions",
            "-oro",
            "/mnt",
        ];
        let mut m = MountOptions::default();
        for l in option_lists(&args) {
            m.apply(l, false).unwrap();
        }
        m.apply("rw,suid,fsname=data", true).unwrap();
        m.default_subtype("prog");
        assert!(m.allow_other && m.default_permissions);
        assert!(!m.flags.contains(MsFlags::MS_RDONLY));
        assert!(!m.flags.contains(MsFlags::MS_NOSUID));
        assert_eq!((m.source(), m.fstype().as_str()), ("data", "fuse"));
        assert_eq!(
            m.data(3, 0o40000, 0, 0),
            "fd=3,rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other"
        );
    }

    #[test]
    fn strict_refuses_unknown_and_bad_values() {
        let mut m = MountOptions::default();
        assert_eq!(
            m.apply("allow_other,bogus", true).unwrap_err().option,
            "bogus"
        );
        assert!(m.apply("max_read=x", true).is_err());
        assert!(m.apply("fsname=", true).is_err());
        assert!(m.apply("bogus,writeback", false).is_ok());
    }

    #[test]
    fn a_daemons_call_then_proxy_overrides() {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME;
        let (mut m, fd) = MountOptions::from_call(
            Some("/srv/src"),
            "fuse.bindfs",
            flags,
            "fd=7,rootmode=40000,user_id=0,group_id=0,allow_other,max_read=131072",
        )
        .unwrap();
        assert_eq!(fd, 7);
        assert_eq!(
            (m.source(), m.fstype().as_str()),
            ("/srv/src", "fuse.bindfs")
        );
        assert_eq!(m.flags, flags);
        assert!(m.allow_other && !m.default_permissions);
        assert_eq!(
            m.data_as_given(3),
            "fd=3,rootmode=40000,user_id=0,group_id=0,allow_other,max_read=131072"
        );
        m.apply("default_permissions,ro,fsname=data", true).unwrap();
        assert!(m.flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOATIME));
        assert_eq!(m.source(), "data");
        assert_eq!(
            m.data_as_given(3),
            "fd=3,rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other,\
             max_read=131072"
        );
        let (b, _) = MountOptions::from_call(None, "fuseblk", flags, "fd=4,blksize=4096").unwrap();
        assert_eq!((b.source(), b.fstype().as_str()), ("none", "fuseblk"));
        assert_eq!(b.blksize, Some(4096));
        assert!(MountOptions::from_call(None, "tmpfs", flags, "fd=4").is_err());
        assert!(MountOptions::from_call(None, "fuse.x", flags, "rootmode=40000").is_err());
        assert!(MountOptions::from_call(None, "fuse.", flags, "fd=4").is_err());
    }

    #[test]
    fn escaped_commas_stay_in_values() {
        assert_eq!(split_options(r"fsname=a\,b,ro"), vec!["fsname=a,b", "ro"]);
    }
}
