//! `[cache]`: the cache timeouts and open flags in the backend's replies.
//!
//! Entry and attribute timeouts are replaced (`entry_timeout`,
//! `attr_timeout`) or raised to a floor (`min_*`) in every reply that
//! carries them: LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE, GETATTR,
//! SETATTR and each READDIRPLUS record. `negative_timeout` turns a LOOKUP
//! answered ENOENT into a negative entry (node 0) the kernel keeps that
//! long, as libfuse's own option does. `keep_cache` and `direct_io` set or
//! clear the FOPEN bits of OPEN and CREATE replies. Rewrites happen in
//! place in the reply's buffer; the number of values changed is returned
//! for the counters.

use fuseproxy_protocol::abi::{
    fuse_rec_align, AttrOut, Direntplus, EntryOut, OpenOut, FUSE_NAME_OFFSET_DIRENTPLUS,
};
use fuseproxy_protocol::flags::{FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE};
use fuseproxy_protocol::Opcode;
use zerocopy::FromBytes;

use crate::config::CacheSection;
use crate::Duration;

/// One timeout's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timeout {
    Backend,
    Fixed(u64, u32),
    Min(u64, u32),
}

impl Timeout {
    fn from(fixed: Option<Duration>, floor: Option<Duration>) -> Timeout {
        let split = |d: Duration| {
            (
                d.as_nanos() / 1_000_000_000,
                (d.as_nanos() % 1_000_000_000) as u32,
            )
        };
        match (fixed, floor) {
            (Some(d), _) => {
                let (s, n) = split(d);
                Timeout::Fixed(s, n)
            }
            (None, Some(d)) => {
                let (s, n) = split(d);
                Timeout::Min(s, n)
            }
            (None, None) => Timeout::Backend,
        }
    }

    /// Applies the rule to a (seconds, nanoseconds) pair; true if changed.
    fn apply(self, secs: &mut u64, nsec: &mut u32) -> bool {
        let want = match self {
            Timeout::Backend => return false,
            Timeout::Fixed(s, n) => (s, n),
            Timeout::Min(s, n) => (*secs, *nsec).max((s, n)),
        };
        if (*secs, *nsec) == want {
            return false;
        }
        (*secs, *nsec) = want;
        true
    }
}

/// `[cache]` compiled.
#[derive(Debug, Clone, Copy)]
pub struct CacheRule {
    entry: Timeout,
    attr: Timeout,
    negative: Option<Duration>,
    keep_cache: Option<bool>,
    direct_io: Option<bool>,
}

impl CacheRule {
    /// Replies pass unchanged.
    pub const OFF: CacheRule = CacheRule {
        entry: Timeout::Backend,
        attr: Timeout::Backend,
        negative: None,
        keep_cache: None,
        direct_io: None,
    };

    /// Compiles the section.
    pub fn compile(s: &CacheSection) -> CacheRule {
        CacheRule {
            entry: Timeout::from(
                s.entry_timeout.map(|d| d.0),
                s.min_entry_timeout.map(|d| d.0),
            ),
            attr: Timeout::from(s.attr_timeout.map(|d| d.0), s.min_attr_timeout.map(|d| d.0)),
            negative: s.negative_timeout.map(|d| d.0),
            keep_cache: s.keep_cache,
            direct_io: s.direct_io,
        }
    }

    /// Whether the rule changes anything at all.
    pub fn is_off(&self) -> bool {
        self.entry == Timeout::Backend
            && self.attr == Timeout::Backend
            && self.negative.is_none()
            && self.keep_cache.is_none()
            && self.direct_io.is_none()
    }

    /// How long an ENOENT from LOOKUP is to be cached as a negative entry.
    pub fn negative(&self) -> Option<Duration> {
        self.negative
    }

    /// Rewrites the body of a successful reply to `op` in place; returns
    /// how many values it changed.
    pub fn rewrite(&self, op: Opcode, body: &mut [u8]) -> u32 {
        if self.is_off() {
            return 0;
        }
        match op {
            Opcode::Lookup | Opcode::Mknod | Opcode::Mkdir | Opcode::Symlink | Opcode::Link => {
                EntryOut::mut_from_prefix(body).map_or(0, |(e, _)| self.entry(e))
            }
            Opcode::Create => match EntryOut::mut_from_prefix(body) {
                Ok((e, rest)) => {
                    self.entry(e) + OpenOut::mut_from_prefix(rest).map_or(0, |(o, _)| self.open(o))
                }
                Err(_) => 0,
            },
            Opcode::Getattr | Opcode::Setattr => AttrOut::mut_from_prefix(body)
                .map_or(0, |(a, _)| {
                    u32::from(self.attr.apply(&mut a.attr_valid, &mut a.attr_valid_nsec))
                }),
            Opcode::Open => OpenOut::mut_from_prefix(body).map_or(0, |(o, _)| self.open(o)),
            Opcode::Readdirplus => {
                let mut changed = 0;
                let mut at = 0;
                while at + FUSE_NAME_OFFSET_DIRENTPLUS <= body.len() {
                    let Ok((d, _)) = Direntplus::mut_from_prefix(&mut body[at..]) else {
                        break;
                    };
                    let rec =
                        fuse_rec_align(FUSE_NAME_OFFSET_DIRENTPLUS + d.dirent.namelen as usize);
                    if d.entry_out.nodeid != 0 {
                        changed += self.entry(&mut d.entry_out);
                    }
                    at += rec;
                }
                changed
            }
            _ => 0,
        }
    }

    fn entry(&self, e: &mut EntryOut) -> u32 {
        u32::from(
            self.entry
                .apply(&mut e.entry_valid, &mut e.entry_valid_nsec),
        ) + u32::from(self.attr.apply(&mut e.attr_valid, &mut e.attr_valid_nsec))
    }

    fn open(&self, o: &mut OpenOut) -> u32 {
        let before = o.open_flags;
        for (want, bit) in [
            (self.keep_cache, FOPEN_KEEP_CACHE),
            (self.direct_io, FOPEN_DIRECT_IO),
        ] {
            match want {
                Some(true) => o.open_flags |= bit,
                Some(false) => o.open_flags &= !bit,
                None => {}
            }
        }
        u32::from(before != o.open_flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use zerocopy::IntoBytes;

    fn rule(text: &str) -> CacheRule {
        CacheRule::compile(Policy::parse("t", text).unwrap().cache.as_ref().unwrap())
    }

    #[test]
    fn a_floor_raises_zero_timeouts_and_leaves_longer_ones() {
        let r = rule("[cache]\nmin_attr_timeout = \"5s\"\nmin_entry_timeout = \"1.5s\"\n");
        let mut e = EntryOut {
            nodeid: 7,
            ..EntryOut::default()
        };
        assert_eq!(r.rewrite(Opcode::Lookup, e.as_mut_bytes()), 2);
        assert_eq!((e.entry_valid, e.entry_valid_nsec), (1, 500_000_000));
        assert_eq!((e.attr_valid, e.attr_valid_nsec), (5, 0));
        let mut a = AttrOut {
            attr_valid: 60,
            ..AttrOut::default()
        };
        assert_eq!(r.rewrite(Opcode::Getattr, a.as_mut_bytes()), 0);
        assert_eq!(a.attr_valid, 60);
    }

    #[test]
    fn a_fixed_value_replaces_and_open_flags_follow() {
        let r = rule("[cache]\nattr_timeout = \"0\"\nkeep_cache = true\ndirect_io = false\n");
        let mut a = AttrOut {
            attr_valid: 60,
            ..AttrOut::default()
        };
        assert_eq!(r.rewrite(Opcode::Setattr, a.as_mut_bytes()), 1);
        assert_eq!(a.attr_valid, 0);
        let mut o = OpenOut {
            open_flags: FOPEN_DIRECT_IO,
            ..OpenOut::default()
        };
        assert_eq!(r.rewrite(Opcode::Open, o.as_mut_bytes()), 1);
        assert_eq!(o.open_flags, FOPEN_KEEP_CACHE);
        assert!(CacheRule::OFF.is_off());
        assert_eq!(CacheRule::OFF.rewrite(Opcode::Open, o.as_mut_bytes()), 0);
    }
}
