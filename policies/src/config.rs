//! The policy file: TOML, read with serde, checked in full before use.
//!
//! [`Policy::parse`] turns a file's text into a [`Policy`] or one
//! [`ConfigError`] naming the file, line, column and key. Every setting has
//! a default; a section left out means its rule is off. [`Policy`] is the
//! file as written (plus defaults) and prints back as TOML
//! ([`Policy::to_toml`], for `fuseproxy --check`); [`crate::Rules::compile`]
//! turns it into the fixed tables the engine looks things up in.
//!
//! Durations are strings with a unit (`"200ms"`, `"1s"`, `"5m"`, `"0"`),
//! errnos and opcodes their names (`"EROFS"`; `READ` or `FUSE_READ`), INIT
//! capabilities their `fuse.h` names (`FUSE_ASYNC_READ`).

use std::collections::BTreeMap;
use std::fmt;

use fuseproxy_protocol::flags::{init_flag_names, INIT_FLAGS_KNOWN};
use fuseproxy_protocol::Opcode;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::errno;
use crate::Duration;

/// A policy file that cannot be used, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given.
    pub file: String,
    /// 1-based line, 0 when the error has no position (the file as a whole).
    pub line: usize,
    /// 1-based column, 0 when unknown.
    pub column: usize,
    /// The key's dotted path (`deadlines.READ`), empty when none applies.
    pub key: String,
    /// What is wrong, in a few words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A duration written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// `"200ms"` → 200 ms. Units: ns, us, ms, s, m, h; `"0"` alone needs none.
    pub fn parse(s: &str) -> Result<Dur, String> {
        let t = s.trim();
        if t == "0" {
            return Ok(Dur(Duration::from_nanos(0)));
        }
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("\"{s}\" has no unit (write e.g. \"200ms\" or \"1s\")"))?;
        let (num, unit) = t.split_at(split);
        let mult: f64 = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" | "min" => 60e9,
            "h" => 3600e9,
            _ => {
                return Err(format!(
                    "\"{s}\": unknown unit \"{unit}\" (use ns, us, ms, s, m or h)"
                ))
            }
        };
        let n: f64 = num
            .parse()
            .map_err(|_| format!("\"{s}\" is not a duration (write e.g. \"200ms\")"))?;
        let ns = n * mult;
        if !(0.0..=(u64::MAX as f64)).contains(&ns) || ns.is_nan() {
            return Err(format!("\"{s}\" is out of range"));
        }
        Ok(Dur(Duration::from_nanos(ns as u64)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        for (unit, per) in [
            ("h", 3_600_000_000_000u64),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if ns >= per && ns.is_multiple_of(per) {
                return write!(f, "{}{unit}", ns / per);
            }
        }
        if ns == 0 {
            f.write_str("0")
        } else {
            write!(f, "{ns}ns")
        }
    }
}

/// Reads a string with `parse`; a number gets an error saying what to write
/// instead (`hint`).
fn named_value<'de, D, T>(
    d: D,
    hint: &'static str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T> {
        hint: &'static str,
        parse: fn(&str) -> Result<T, String>,
    }
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.hint)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.parse)(v).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            Err(E::custom(format!(
                "{v} is a bare number: write {}",
                self.hint
            )))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            Err(E::custom(format!(
                "{v} is a bare number: write {}",
                self.hint
            )))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
            Err(E::custom(format!(
                "{v} is a bare number: write {}",
                self.hint
            )))
        }
    }
    d.deserialize_any(V { hint, parse })
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        named_value(
            d,
            "a duration with a unit, e.g. \"200ms\" or \"1s\"",
            Dur::parse,
        )
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An errno by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    fn named(name: &str) -> Result<Errno, String> {
        errno::by_name(name).map(Errno).ok_or_else(|| {
            format!(
                "unknown errno \"{name}\" (write its C name, e.g. \"EIO\", \"EROFS\", \"EPERM\")"
            )
        })
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match errno::name_of(self.0) {
            Some(n) => f.write_str(n),
            None => write!(f, "{}", self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        named_value(d, "an errno's name, e.g. \"EIO\"", Errno::named)
    }
}

impl Serialize for Errno {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An opcode by name: `READ` or `FUSE_READ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OpName(pub Opcode);

impl OpName {
    /// The opcode `name` names, if any.
    pub fn parse(name: &str) -> Option<OpName> {
        let bare = name.strip_prefix("FUSE_").unwrap_or(name);
        (1..64u32)
            .map(Opcode::from)
            .find(|op| {
                op.kernel_name()
                    .is_some_and(|k| k.strip_prefix("FUSE_") == Some(bare))
            })
            .map(OpName)
    }
}

impl fmt::Display for OpName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = self.0.kernel_name().unwrap_or("UNKNOWN");
        f.write_str(k.strip_prefix("FUSE_").unwrap_or(k))
    }
}

impl Serialize for OpName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An INIT capability by its `fuse.h` name (`FUSE_WRITEBACK_CACHE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitFlag(pub u64);

impl<'de> Deserialize<'de> for InitFlag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let full = if s.starts_with("FUSE_") {
            s.clone()
        } else {
            format!("FUSE_{s}")
        };
        (0..64)
            .map(|b| 1u64 << b)
            .filter(|bit| bit & INIT_FLAGS_KNOWN != 0)
            .find(|bit| init_flag_names(*bit).next() == Some(full.as_str()))
            .map(InitFlag)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "unknown INIT capability \"{s}\" (write its fuse.h name, e.g. \"FUSE_ASYNC_READ\")"
                ))
            })
    }
}

impl Serialize for InitFlag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(init_flag_names(self.0).next().unwrap_or("?"))
    }
}

/// A whole policy file, defaults filled in.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Time-only SETATTR handling (always on; the section tunes it).
    #[serde(default)]
    pub times: TimesSection,
    /// How long a request may wait for the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadlines: Option<DeadlinesSection>,
    /// Rewrites of the INIT negotiation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSection>,
    /// Cache timeouts and open flags in the backend's replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSection>,
    /// Requests answered locally with an errno.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<DenySection>,
    /// Delays and failures injected for tests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultSection>,
    /// Rules that apply only under named paths of the mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathSection>,
}

/// `[times]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimesSection {
    /// `async` (answer at once, apply later) or `forward`.
    pub mode: TimesModeName,
    /// Longest wait between acknowledging times and sending them.
    pub max_delay: Dur,
    /// Files with unsent times at most (fixed at start).
    pub max_pending: u32,
    /// Files whose attributes are cached for local answers (fixed at start).
    pub attr_cache: u32,
    /// Without `default_permissions`, whose updates are answered locally:
    /// `owner` (root and the file's owner) or `any`.
    pub trust_callers: TrustCallers,
    /// What a refused or failed flush leads to.
    pub on_flush_error: OnFlushError,
    /// Under `retry`: attempts after the first, at most.
    pub retries: u32,
    /// Under `retry`: the wait before the first retry; doubled each time.
    pub retry_backoff: Dur,
}

impl Default for TimesSection {
    fn default() -> Self {
        TimesSection {
            mode: TimesModeName::Async,
            max_delay: Dur(Duration::from_millis(1000)),
            max_pending: 8_192,
            attr_cache: 16_384,
            trust_callers: TrustCallers::Owner,
            on_flush_error: OnFlushError::Log,
            retries: 5,
            retry_backoff: Dur(Duration::from_millis(100)),
        }
    }
}

/// `times.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TimesModeName {
    /// Answer at once, coalesce, apply asynchronously.
    Async,
    /// Forward and wait.
    Forward,
}

/// `times.trust_callers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustCallers {
    /// Root and the file's owner (what utimensat allows with explicit times).
    Owner,
    /// Anyone: the backend does no permission checks of its own.
    Any,
}

/// `times.on_flush_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFlushError {
    /// Log the file, the times and the errno; count it.
    Log,
    /// Send again after a back-off, up to `retries` times; then log.
    Retry,
}

/// `[deadlines]`: a default and per-opcode limits.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadlinesSection {
    /// For every opcode not named.
    pub default: Option<Dur>,
    /// What the caller gets past the deadline.
    pub errno: Errno,
    /// Per opcode; `"0"` means none for that opcode.
    pub ops: BTreeMap<OpName, Dur>,
}

impl Default for DeadlinesSection {
    fn default() -> Self {
        DeadlinesSection {
            default: None,
            errno: Errno(5),
            ops: BTreeMap::new(),
        }
    }
}

/// `[init]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitSection {
    /// Capabilities removed from the kernel's offer, so the backend never
    /// sees them.
    pub mask: Vec<InitFlag>,
    /// `backend` (as it answers), `force` or `deny`.
    pub writeback_cache: Writeback,
    /// Caps on the backend's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_write: Option<u32>,
    /// Cap on max_readahead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_readahead: Option<u32>,
    /// Cap on max_pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pages: Option<u16>,
}

/// `init.writeback_cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Writeback {
    /// Whatever the backend answers.
    #[default]
    Backend,
    /// On, if the kernel offers it, whatever the backend answers.
    Force,
    /// Off.
    Deny,
}

/// `[cache]`: timeouts and open flags in the backend's replies.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Entry timeout, replacing the backend's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry_timeout: Option<Dur>,
    /// Entry timeout at least this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_entry_timeout: Option<Dur>,
    /// Attribute timeout, replacing the backend's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attr_timeout: Option<Dur>,
    /// Attribute timeout at least this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_attr_timeout: Option<Dur>,
    /// A LOOKUP answered ENOENT becomes a negative entry cached this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_timeout: Option<Dur>,
    /// Set (true) or clear (false) FOPEN_KEEP_CACHE on OPEN/CREATE replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_cache: Option<bool>,
    /// Set or clear FOPEN_DIRECT_IO on OPEN/CREATE replies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct_io: Option<bool>,
}

/// `[deny]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DenySection {
    /// Every mutating request answered with EROFS.
    pub read_only: bool,
    /// Per opcode, the errno it is answered with.
    pub ops: BTreeMap<OpName, Errno>,
}

/// `[fault]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FaultSection {
    /// Seed of the generator; the same seed and requests give the same faults.
    pub seed: u64,
    /// Per opcode.
    pub ops: BTreeMap<OpName, FaultSpec>,
}

/// `[fault.OPCODE]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSpec {
    /// Held this long before it goes to the backend.
    pub delay: Dur,
    /// Plus a random part up to this.
    pub jitter: Dur,
    /// Chance (0 to 1) of being answered with `errno` instead.
    pub probability: f64,
    /// The errno of a failed request.
    pub errno: Errno,
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec {
            delay: Dur::default(),
            jitter: Dur::default(),
            probability: 0.0,
            errno: Errno(5),
        }
    }
}

/// `[[paths]]`: rules for one subtree of the mount.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PathSection {
    /// Absolute, inside the mount (`/` is its root).
    pub path: String,
    /// Replaces the file's `[deny]` under this path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<DenySection>,
    /// Replaces `[fault]` (its seed stays the file's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultSection>,
    /// Replaces `[cache]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSection>,
    /// Replaces `[deadlines]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadlines: Option<DeadlinesSection>,
}

/// Requests no rule may answer or delay: the session's own life cycle,
/// and the ones that get no reply.
pub const UNTOUCHABLE: &[Opcode] = &[
    Opcode::Init,
    Opcode::Destroy,
    Opcode::Forget,
    Opcode::BatchForget,
    Opcode::Interrupt,
];

/// Reads a table whose keys are a few fixed names or opcode names; `fixed`
/// handles a fixed key (returns false when it is not one).
fn op_table<'de, A, T>(
    mut map: A,
    section: &str,
    fixed_names: &str,
    mut fixed: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<BTreeMap<OpName, T>, A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    let mut ops = BTreeMap::new();
    while let Some(key) = map.next_key::<String>()? {
        if fixed(&key, &mut map)? {
            continue;
        }
        let Some(op) = OpName::parse(&key) else {
            return Err(keyed(
                &key,
                format!(
                    "unknown key `{key}` in [{section}]: expected {fixed_names} or an opcode name \
                     (READ, GETATTR, UNLINK, ...)"
                ),
            ));
        };
        if UNTOUCHABLE.contains(&op.0) {
            return Err(keyed(
                &key,
                format!(
                    "{op} cannot have a {section} rule: the session needs it as the kernel sent it"
                ),
            ));
        }
        if ops.insert(op, map.next_value()?).is_some() {
            return Err(keyed(
                &key,
                format!("{op} is given twice in [{section}] (as {key})"),
            ));
        }
    }
    Ok(ops)
}

/// Marks an error found inside a table by a visitor of ours with the key
/// it concerns, which serde's path does not yet hold; [`Policy::parse`]
/// takes the mark off and finds the key's line.
const KEY_MARK: char = '\u{1}';

fn keyed<E: de::Error>(key: &str, message: String) -> E {
    E::custom(format!("{KEY_MARK}{key}{KEY_MARK}{message}"))
}

macro_rules! table_visitor {
    ($ty:ident, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<$ty, A::Error> {
                        $ty::visit(map)
                    }
                }
                d.deserialize_map(V)
            }
        }
    };
}

impl DeadlinesSection {
    fn visit<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut s = DeadlinesSection::default();
        let ops = op_table(map, "deadlines", "default, errno", |k, m| {
            match k {
                "default" => s.default = Some(m.next_value()?),
                "errno" => s.errno = m.next_value()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        s.ops = ops;
        Ok(s)
    }
}
table_visitor!(DeadlinesSection, "a table of durations by opcode");

impl DenySection {
    fn visit<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut s = DenySection::default();
        let ops = op_table(map, "deny", "read_only", |k, m| {
            if k == "read_only" {
                s.read_only = m.next_value()?;
                return Ok(true);
            }
            Ok(false)
        })?;
        s.ops = ops;
        Ok(s)
    }
}
table_visitor!(DenySection, "a table of errnos by opcode");

impl FaultSection {
    fn visit<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut s = FaultSection::default();
        let ops: BTreeMap<OpName, FaultSpec> = op_table(map, "fault", "seed", |k, m| {
            if k == "seed" {
                s.seed = m.next_value()?;
                return Ok(true);
            }
            Ok(false)
        })?;
        for (op, f) in &ops {
            if !(0.0..=1.0).contains(&f.probability) {
                return Err(keyed(
                    &format!("{op}.probability"),
                    format!(
                        "{} is out of range: it must be between 0 and 1",
                        f.probability
                    ),
                ));
            }
        }
        s.ops = ops;
        Ok(s)
    }
}
table_visitor!(FaultSection, "a table of faults by opcode");

/// Writes a table: the fixed keys `fixed` writes, then one key per opcode.
fn serialize_op_table<S: Serializer, T: Serialize>(
    s: S,
    ops: &BTreeMap<OpName, T>,
    fixed: impl FnOnce(&mut S::SerializeMap) -> Result<(), S::Error>,
) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(None)?;
    fixed(&mut m)?;
    for (k, v) in ops {
        m.serialize_entry(k, v)?;
    }
    m.end()
}

impl Serialize for DeadlinesSection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_op_table(s, &self.ops, |m| {
            if let Some(d) = &self.default {
                m.serialize_entry("default", d)?;
            }
            m.serialize_entry("errno", &self.errno)
        })
    }
}

impl Serialize for DenySection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_op_table(s, &self.ops, |m| {
            m.serialize_entry("read_only", &self.read_only)
        })
    }
}

impl Serialize for FaultSection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_op_table(s, &self.ops, |m| m.serialize_entry("seed", &self.seed))
    }
}

impl Policy {
    /// Reads a policy from `text`; `file` names it in errors.
    ///
    /// # Errors
    /// The first thing wrong: TOML syntax, an unknown key, a wrong type, a
    /// value out of range, an unknown name, or settings that contradict
    /// each other.
    pub fn parse(file: &str, text: &str) -> Result<Policy, ConfigError> {
        let de = toml::Deserializer::new(text);
        let policy: Policy = serde_path_to_error::deserialize(de).map_err(|e| {
            let mut key = e.path().to_string();
            if key == "." {
                key.clear();
            }
            let inner = e.into_inner();
            let mut message = inner.message().trim().replace('\n', "; ");
            let (mut line, mut column) = inner
                .span()
                .map(|s| line_col(text, s.start))
                .unwrap_or((0, 0));
            if let Some(rest) = message.strip_prefix(KEY_MARK) {
                if let Some((sub, msg)) = rest.split_once(KEY_MARK) {
                    key = format!("{key}.{sub}");
                    if let Some(at) = locate(text, &key) {
                        (line, column) = at;
                    }
                    message = msg.to_string();
                }
            }
            ConfigError {
                file: file.to_string(),
                line,
                column,
                key,
                message,
            }
        })?;
        policy.validate().map_err(|(key, message)| {
            let (line, column) = locate(text, &key).unwrap_or((0, 0));
            ConfigError {
                file: file.to_string(),
                line,
                column,
                key,
                message,
            }
        })?;
        Ok(policy)
    }

    /// Checks what the types alone cannot: ranges and combinations. Returns
    /// the key at fault and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let t = &self.times;
        let range = |key: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err((
                    key.to_string(),
                    format!("{v} is out of range: it must be between {lo} and {hi}"),
                ))
            }
        };
        range("times.max_pending", t.max_pending.into(), 1, 4_194_304)?;
        range("times.attr_cache", t.attr_cache.into(), 1, 16_777_216)?;
        range("times.retries", t.retries.into(), 0, 100)?;
        if t.max_delay.0 > Duration::from_secs(3600) {
            return Err((
                "times.max_delay".into(),
                format!("{} is too long: at most 1h", t.max_delay),
            ));
        }
        if t.retry_backoff.0 > Duration::from_secs(600) {
            return Err((
                "times.retry_backoff".into(),
                format!("{} is too long: at most 10m", t.retry_backoff),
            ));
        }
        if let Some(i) = &self.init {
            if let Some(w) = i.max_write {
                range("init.max_write", w.into(), 4096, u32::MAX.into())?;
            }
            if let Some(p) = i.max_pages {
                range("init.max_pages", p.into(), 1, 65535)?;
            }
            let wb = fuseproxy_protocol::flags::FUSE_WRITEBACK_CACHE;
            if i.writeback_cache == Writeback::Force && i.mask.iter().any(|f| f.0 == wb) {
                return Err((
                    "init.writeback_cache".into(),
                    "\"force\" contradicts FUSE_WRITEBACK_CACHE in init.mask (use \"deny\" to \
                     keep it off)"
                        .into(),
                ));
            }
        }
        let scopes = std::iter::once((String::new(), self.cache.as_ref(), self.deadlines.as_ref()))
            .chain(self.paths.iter().enumerate().map(|(i, p)| {
                (
                    format!("paths[{i}]."),
                    p.cache.as_ref(),
                    p.deadlines.as_ref(),
                )
            }));
        for (prefix, cache, deadlines) in scopes {
            if let Some(c) = cache {
                for (fixed, floor, name) in [
                    (c.entry_timeout, c.min_entry_timeout, "entry_timeout"),
                    (c.attr_timeout, c.min_attr_timeout, "attr_timeout"),
                ] {
                    if fixed.is_some() && floor.is_some() {
                        return Err((
                            format!("{prefix}cache.min_{name}"),
                            format!("set either {name} (a fixed value) or min_{name} (a floor), not both"),
                        ));
                    }
                }
            }
            if let Some(d) = deadlines {
                for (op, v) in d
                    .ops
                    .iter()
                    .map(|(o, v)| (o.to_string(), v))
                    .chain(d.default.iter().map(|v| ("default".to_string(), v)))
                {
                    if v.0 > Duration::from_secs(86_400) {
                        return Err((
                            format!("{prefix}deadlines.{op}"),
                            format!("{v} is too long: at most 24h (\"0\" means no deadline)"),
                        ));
                    }
                }
            }
        }
        for (i, p) in self.paths.iter().enumerate() {
            let key = format!("paths[{i}].path");
            if !p.path.starts_with('/') {
                return Err((
                    key,
                    format!(
                        "\"{}\" must be absolute (the mount's root is \"/\")",
                        p.path
                    ),
                ));
            }
            if p.path.split('/').any(|c| c == "." || c == "..") {
                return Err((key, format!("\"{}\" may not contain . or ..", p.path)));
            }
            if p.path.len() > 4096 {
                return Err((key, "longer than PATH_MAX".into()));
            }
            if self.paths[..i]
                .iter()
                .any(|q| normal(&q.path) == normal(&p.path))
            {
                return Err((key, format!("\"{}\" is given twice", p.path)));
            }
        }
        if self.paths.len() > 64 {
            return Err((
                "paths".into(),
                format!("{} path rules: at most 64", self.paths.len()),
            ));
        }
        Ok(())
    }

    /// The policy as TOML, every default written out; sections that are
    /// off appear as comments saying so.
    pub fn to_toml(&self) -> String {
        let mut out = toml::to_string(self).unwrap_or_else(|e| format!("# cannot print: {e}\n"));
        for (name, on, what) in [
            (
                "deadlines",
                self.deadlines.is_some(),
                "requests wait for the backend as long as it takes",
            ),
            (
                "init",
                self.init.is_some(),
                "INIT passes as negotiated (only device-only capabilities are removed)",
            ),
            (
                "cache",
                self.cache.is_some(),
                "the backend's timeouts and open flags pass unchanged",
            ),
            ("deny", self.deny.is_some(), "nothing is denied"),
            ("fault", self.fault.is_some(), "no faults are injected"),
            ("paths", !self.paths.is_empty(), "no per-path rules"),
        ] {
            if !on {
                out.push_str(&format!("\n# [{name}] is off: {what}.\n"));
            }
        }
        out
    }
}

/// A path without a trailing slash (except the root).
pub fn normal(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/"
    } else {
        t
    }
}

/// 1-based line and column of byte `at`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Where a key is written, for errors found after serde has returned (or
/// inside our own visitors): the line, at or after the header of the key's
/// table, that assigns its last component. `None` when not found.
fn locate(text: &str, key: &str) -> Option<(usize, usize)> {
    // "paths[0].cache.min_attr_timeout" -> table "paths.cache", "min_attr_timeout"
    let plain: String = {
        let mut out = String::new();
        let mut depth = 0;
        for c in key.chars() {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out
    };
    let (table, last) = plain.rsplit_once('.').unwrap_or(("", plain.as_str()));
    let mut in_table = table.is_empty();
    let mut best = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with('[') {
            let name = t.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or("").trim();
            in_table = name == table || name.starts_with(&format!("{table}."));
            if in_table && name == plain {
                best.get_or_insert((i + 1, line.len() - t.len() + 1));
            }
            continue;
        }
        if !in_table {
            continue;
        }
        let bare = t.trim_start_matches('"');
        if let Some(rest) = bare.strip_prefix(last) {
            let rest = rest.trim_start_matches('"').trim_start();
            if rest.starts_with('=') {
                return Some((i + 1, line.len() - t.len() + 1));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        Policy::parse("p.toml", text).unwrap_err()
    }

    #[test]
    fn an_empty_file_is_todays_behaviour() {
        let p = Policy::parse("p.toml", "").unwrap();
        assert_eq!(p, Policy::default());
        assert_eq!(p.times.max_delay, Dur(Duration::from_millis(1000)));
        assert!(p.deny.is_none() && p.deadlines.is_none() && p.paths.is_empty());
    }

    #[test]
    fn the_issues_example_parses() {
        let p = Policy::parse(
            "p.toml",
            "[deny]\nread_only = true\n\n[deadlines]\ndefault = \"1s\"\nREAD = \"30s\"\n",
        )
        .unwrap();
        assert!(p.deny.as_ref().unwrap().read_only);
        let d = p.deadlines.unwrap();
        assert_eq!(d.default, Some(Dur(Duration::from_secs(1))));
        assert_eq!(d.ops[&OpName(Opcode::Read)], Dur(Duration::from_secs(30)));
        assert_eq!(d.errno, Errno(5));
    }

    #[test]
    fn an_unknown_key_names_file_line_column_and_key() {
        let e = err("[times]\nmode = \"async\"\nmax_dealy = \"1s\"\n");
        assert_eq!((e.file.as_str(), e.line, e.column), ("p.toml", 3, 1));
        assert!(e.message.contains("unknown field `max_dealy`"), "{e}");
        assert!(e.to_string().starts_with("p.toml:3:1: "), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let e = err("[times]\nmax_pending = \"many\"\n");
        assert_eq!((e.line, e.key.as_str()), (2, "times.max_pending"), "{e}");
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn an_out_of_range_value_names_the_key() {
        let e = err("[times]\nmax_pending = 0\n");
        assert_eq!((e.line, e.key.as_str()), (2, "times.max_pending"), "{e}");
        assert!(e.message.contains("out of range"), "{e}");
        let e = err("[fault.GETATTR]\nprobability = 1.5\n");
        assert_eq!(
            (e.line, e.key.as_str()),
            (2, "fault.GETATTR.probability"),
            "{e}"
        );
        assert!(e.message.contains("between 0 and 1"), "{e}");
    }

    #[test]
    fn an_unknown_opcode_errno_or_flag_is_named() {
        let e = err("[deny]\nUNLIKN = \"EPERM\"\n");
        assert_eq!((e.line, e.key.as_str()), (2, "deny.UNLIKN"), "{e}");
        assert!(e.message.contains("unknown key `UNLIKN`"), "{e}");
        let e = err("[deny]\nUNLINK = \"EPRM\"\n");
        assert_eq!((e.line, e.key.as_str()), (2, "deny.UNLINK"), "{e}");
        assert!(e.message.contains("unknown errno \"EPRM\""), "{e}");
        let e = err("[init]\nmask = [\"FUSE_ASYNC_READ\", \"FUSE_NOPE\"]\n");
        assert_eq!((e.line, e.key.as_str()), (2, "init.mask[1]"), "{e}");
        assert!(e.message.contains("FUSE_NOPE"), "{e}");
        let e = err("[deadlines]\nREAD = \"30 parsecs\"\n");
        assert_eq!((e.line, e.key.as_str()), (2, "deadlines.READ"), "{e}");
        assert!(e.message.contains("unknown unit"), "{e}");
    }

    #[test]
    fn life_cycle_requests_cannot_be_ruled() {
        let e = err("[deny]\nFORGET = \"EIO\"\n");
        assert!(e.message.contains("FORGET cannot have a deny rule"), "{e}");
        let e = err("[fault.INIT]\ndelay = \"1s\"\n");
        assert!(e.message.contains("INIT cannot"), "{e}");
    }

    #[test]
    fn contradictions_and_paths_are_checked() {
        let e = err("[cache]\nattr_timeout = \"1s\"\nmin_attr_timeout = \"2s\"\n");
        assert_eq!(e.key, "cache.min_attr_timeout", "{e}");
        assert_eq!(e.line, 3, "{e}");
        let e = err("[[paths]]\npath = \"tmp\"\n");
        assert_eq!((e.key.as_str(), e.line), ("paths[0].path", 2), "{e}");
        let e = err("[times]\nmode = \"sometimes\"\n");
        assert_eq!(e.key, "times.mode", "{e}");
        assert!(e.message.contains("unknown variant"), "{e}");
    }

    #[test]
    fn forcing_a_masked_capability_is_a_contradiction() {
        let e = err("[init]\nmask = [\"FUSE_WRITEBACK_CACHE\"]\nwriteback_cache = \"force\"\n");
        assert_eq!((e.key.as_str(), e.line), ("init.writeback_cache", 3), "{e}");
    }

    #[test]
    fn a_bare_number_for_a_duration_or_errno_says_what_to_write() {
        let e = err("[fault.GETATTR]\ndelay = 5\n");
        assert_eq!((e.line, e.key.as_str()), (2, "fault.GETATTR.delay"), "{e}");
        assert!(e.message.contains("a duration with a unit"), "{e}");
        let e = err("[deny]\nUNLINK = 1\n");
        assert!(e.message.contains("an errno's name"), "{e}");
        let e = err("[deadlines]\ndefault = true\n");
        assert!(e.message.contains("a duration with a unit"), "{e}");
    }

    #[test]
    fn a_syntax_error_has_a_position() {
        let e = err("[times\n");
        assert_eq!(e.line, 1, "{e}");
        assert!(e.key.is_empty());
    }

    #[test]
    fn durations() {
        for (s, ns) in [
            ("200ms", 200_000_000u64),
            ("1s", 1_000_000_000),
            ("1.5s", 1_500_000_000),
            ("0", 0),
            ("5m", 300_000_000_000),
            ("250us", 250_000),
        ] {
            let d = Dur::parse(s).unwrap();
            assert_eq!(d.0.as_nanos(), ns, "{s}");
            assert_eq!(Dur::parse(&d.to_string()), Ok(d), "{s}");
        }
        assert!(Dur::parse("12").is_err());
        assert!(Dur::parse("-1s").is_err());
        assert!(Dur::parse("1 fortnight").is_err());
    }

    #[test]
    fn the_printed_policy_parses_back_to_itself() {
        let text = "[times]\non_flush_error = \"retry\"\n[deadlines]\ndefault = \"1s\"\nREAD = \"30s\"\n\
                    [init]\nwriteback_cache = \"force\"\nmask = [\"FUSE_ASYNC_READ\"]\n\
                    [cache]\nmin_attr_timeout = \"5s\"\nkeep_cache = true\n\
                    [deny]\nUNLINK = \"EPERM\"\n[fault]\nseed = 7\n[fault.GETATTR]\ndelay = \"200ms\"\n\
                    [[paths]]\npath = \"/scratch\"\n[paths.deny]\nread_only = true\n";
        let p = Policy::parse("p.toml", text).unwrap();
        let printed = p.to_toml();
        assert_eq!(Policy::parse("printed", &printed).unwrap(), p, "{printed}");
        assert!(printed.contains("max_pending = 8192"), "{printed}");
    }
}
