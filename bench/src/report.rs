//! Samples → medians and ratios → the table on stdout, and the same as JSON
//! and CSV in the results folder.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::mounts::Config;
use crate::procs::{self, Res};
use crate::workloads::{Measured, Sizes, Workload};

/// One (round, workload, callers, config) result.
pub struct Sample {
    pub round: u32,
    pub workload: Workload,
    /// Parallel callers (1 for the workloads that run with one only).
    pub callers: u32,
    pub config: Config,
    pub result: Result<Measured, String>,
}

/// A failure: a workload, a mount or an unmount that went wrong.
pub struct Failure {
    pub round: u32,
    pub config: Config,
    pub what: String,
    pub message: String,
}

/// Medians over the rounds of one (workload, callers, config).
pub struct Row {
    pub workload: Workload,
    pub callers: u32,
    pub config: Config,
    pub ok: usize,
    pub failed: usize,
    pub median_s: Option<f64>,
    pub min_s: Option<f64>,
    pub max_s: Option<f64>,
    pub ratio: Option<f64>,
    pub rate: Option<f64>,
    pub unit: &'static str,
    pub layer_cpu_s: Option<f64>,
    pub layer_peak_rss_kib: Option<u64>,
    pub backend_cpu_s: Option<f64>,
    pub backend_peak_rss_kib: Option<u64>,
    /// CPU seconds the whole machine was busy during the timed part (every
    /// process: callers, kernel, daemons, the proxy).
    pub machine_cpu_s: Option<f64>,
    /// CPUs busy on average during the timed part (machine CPU / time): at the
    /// number of CPUs, the workload is bound by CPU time, and the ratio of
    /// two configurations is about the ratio of their machine CPU.
    pub busy_cpus: Option<f64>,
    /// Context switches the whole machine made per operation of the
    /// workload during the timed part (median over the rounds).
    pub switches_per_op: Option<f64>,
    pub msgs_per_s: Option<f64>,
    pub requests: Option<f64>,
    pub replies: Option<f64>,
    /// The proxy's CPU time per request the kernel sent it, in µs (median
    /// over the rounds of layer CPU / requests).
    pub cpu_us_per_request: Option<f64>,
}

pub fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The proxy's CPU time (utime + stime, all its threads) per request the
/// kernel sent it, in µs: what a request and its reply cost the proxy.
/// `None` without the proxy's counters or without requests.
pub fn cpu_us_per_request(m: &Measured) -> Option<f64> {
    match (m.usage.layer, m.usage.counters) {
        (Some(l), Some(c)) if c.requests > 0 => Some(l.cpu_s * 1e6 / c.requests as f64),
        _ => None,
    }
}

/// CPUs the machine kept busy on average during the timed part.
pub fn busy_cpus(m: &Measured) -> Option<f64> {
    m.machine_busy_s
        .filter(|_| m.seconds > 0.0)
        .map(|b| b / m.seconds)
}

/// Messages the proxy carried (requests in + replies out) per second of the
/// workload's window.
pub fn msgs_per_s(m: &Measured) -> Option<f64> {
    m.usage
        .counters
        .map(|c| (c.requests + c.replies) as f64 / m.window_s.max(1e-9))
}

/// One row per (workload, callers, config): workloads in the given order,
/// then the caller counts found in the samples (ascending), then the
/// configurations. The ratio is to direct's median at the same workload and
/// callers.
pub fn summarize(
    samples: &[Sample],
    workloads: &[Workload],
    configs: &[Config],
    z: &Sizes,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for &w in workloads {
        let mut levels: Vec<u32> = samples
            .iter()
            .filter(|s| s.workload == w)
            .map(|s| s.callers)
            .collect();
        levels.sort_unstable();
        levels.dedup();
        for p in levels {
            summarize_level(samples, w, p, configs, z, &mut rows);
        }
    }
    rows
}

fn summarize_level(
    samples: &[Sample],
    w: Workload,
    p: u32,
    configs: &[Config],
    z: &Sizes,
    rows: &mut Vec<Row>,
) {
    let mut direct_median = None;
    for &c in configs {
        let all: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.workload == w && s.callers == p && s.config == c)
            .collect();
        let ok: Vec<&Measured> = all.iter().filter_map(|s| s.result.as_ref().ok()).collect();
        let col = |f: &dyn Fn(&Measured) -> Option<f64>| {
            let mut v: Vec<f64> = ok.iter().filter_map(|m| f(m)).collect();
            median(&mut v)
        };
        let med = col(&|m| Some(m.seconds));
        if c == Config::Direct {
            direct_median = med;
        }
        let (ops, unit) = w.ops(z);
        rows.push(Row {
            workload: w,
            callers: p,
            config: c,
            ok: ok.len(),
            failed: all.len() - ok.len(),
            median_s: med,
            min_s: ok.iter().map(|m| m.seconds).min_by(|a, b| a.total_cmp(b)),
            max_s: ok.iter().map(|m| m.seconds).max_by(|a, b| a.total_cmp(b)),
            ratio: None,
            rate: med.filter(|&s| s > 0.0).map(|s| ops / s),
            unit,
            layer_cpu_s: col(&|m| m.usage.layer.map(|l| l.cpu_s)),
            layer_peak_rss_kib: ok
                .iter()
                .filter_map(|m| m.usage.layer.map(|l| l.peak_rss_kib))
                .max(),
            backend_cpu_s: col(&|m| Some(m.usage.backend.cpu_s)),
            backend_peak_rss_kib: ok.iter().map(|m| m.usage.backend.peak_rss_kib).max(),
            machine_cpu_s: col(&|m| m.machine_busy_s),
            busy_cpus: col(&busy_cpus),
            switches_per_op: col(&|m| m.machine_switches.map(|n| n / ops.max(1.0))),
            msgs_per_s: col(&msgs_per_s),
            requests: col(&|m| m.usage.counters.map(|c| c.requests as f64)),
            replies: col(&|m| m.usage.counters.map(|c| c.replies as f64)),
            cpu_us_per_request: col(&cpu_us_per_request),
        });
    }
    // Ratios once the direct median of this workload and level is known.
    let start = rows.len() - configs.len();
    for r in &mut rows[start..] {
        r.ratio = match (r.median_s, direct_median) {
            (Some(s), Some(d)) if d > 0.0 => Some(s / d),
            _ => None,
        };
    }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// The table for the terminal.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<12} {:<11} {:>2} {:>9} {:>6} {:>9} {:>9} {:>17} {:>11} {:>12} {:>11} {:>9} {:>5} {:>6} {:>11} {:>12} {:>10}",
        "workload",
        "config",
        "P",
        "median s",
        "ratio",
        "min s",
        "max s",
        "rate",
        "layer CPU s",
        "layer RSS MiB",
        "backend CPU",
        "all CPU s",
        "busy",
        "sw/op",
        "proxy reqs",
        "proxy msg/s",
        "CPU µs/req"
    );
    let mut last = None;
    for r in rows {
        let name = if last == Some(r.workload) {
            ""
        } else {
            r.workload.name()
        };
        last = Some(r.workload);
        let rate = r
            .rate
            .map_or("-".into(), |x| format!("{} {}", thousands(x), r.unit));
        let fails = if r.failed > 0 {
            format!("  ({} FAILED)", r.failed)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "{:<12} {:<11} {:>2} {:>9} {:>6} {:>9} {:>9} {:>17} {:>11} {:>12} {:>11} {:>9} {:>5} {:>6} {:>11} {:>12} {:>10}{fails}",
            name,
            r.config.name(),
            r.callers,
            opt(r.median_s, 3),
            opt(r.ratio, 2),
            opt(r.min_s, 3),
            opt(r.max_s, 3),
            rate,
            opt(r.layer_cpu_s, 2),
            opt(r.layer_peak_rss_kib.map(|k| k as f64 / 1024.0), 1),
            opt(r.backend_cpu_s, 2),
            opt(r.machine_cpu_s, 2),
            opt(r.busy_cpus, 2),
            opt(r.switches_per_op, 1),
            r.requests.map_or("-".into(), thousands),
            r.msgs_per_s.map_or("-".into(), thousands),
            opt(r.cpu_us_per_request, 1),
        );
    }
    s
}

pub fn row_json(r: &Row) -> Value {
    json!({
        "workload": r.workload.name(),
        "callers": r.callers,
        "config": r.config.name(),
        "rounds_ok": r.ok,
        "rounds_failed": r.failed,
        "median_s": r.median_s,
        "min_s": r.min_s,
        "max_s": r.max_s,
        "ratio_to_direct": r.ratio,
        "rate": r.rate,
        "rate_unit": r.unit,
        "layer": r.config.layer_name(),
        "layer_cpu_s": r.layer_cpu_s,
        "layer_peak_rss_kib": r.layer_peak_rss_kib,
        "backend_cpu_s": r.backend_cpu_s,
        "backend_peak_rss_kib": r.backend_peak_rss_kib,
        "machine_cpu_s": r.machine_cpu_s,
        "busy_cpus": r.busy_cpus,
        "switches_per_op": r.switches_per_op,
        "proxy_msgs_per_s": r.msgs_per_s,
        "proxy_requests": r.requests,
        "proxy_replies": r.replies,
        "proxy_cpu_us_per_request": r.cpu_us_per_request,
    })
}

pub fn sample_json(s: &Sample) -> Value {
    let mut v = json!({
        "round": s.round,
        "workload": s.workload.name(),
        "callers": s.callers,
        "config": s.config.name(),
        "ok": s.result.is_ok(),
    });
    match &s.result {
        Err(e) => v["error"] = json!(e),
        Ok(m) => {
            v["seconds"] = json!(m.seconds);
            v["window_s"] = json!(m.window_s);
            v["backend_cpu_s"] = json!(m.usage.backend.cpu_s);
            v["backend_peak_rss_kib"] = json!(m.usage.backend.peak_rss_kib);
            v["machine_cpu_s"] = json!(m.machine_busy_s);
            v["busy_cpus"] = json!(busy_cpus(m));
            v["machine_switches"] = json!(m.machine_switches);
            if let Some(l) = m.usage.layer {
                v["layer_cpu_s"] = json!(l.cpu_s);
                v["layer_peak_rss_kib"] = json!(l.peak_rss_kib);
            }
            if let Some(c) = m.usage.counters {
                v["proxy"] = json!({
                    "requests": c.requests,
                    "forwarded": c.forwarded,
                    "replies": c.replies,
                    "answered_with_error": c.answered_with_error,
                    "bad_replies": c.bad_replies,
                    "allocations": c.allocations,
                    "cache_changed": c.cache_changed,
                    "msgs_per_s": msgs_per_s(m),
                    "cpu_us_per_request": cpu_us_per_request(m),
                });
            }
            v["detail"] = m.detail.clone();
        }
    }
    v
}

pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "workload,callers,config,rounds_ok,rounds_failed,median_s,ratio_to_direct,min_s,max_s,rate,rate_unit,\
         layer,layer_cpu_s,layer_peak_rss_kib,backend_cpu_s,backend_peak_rss_kib,machine_cpu_s,busy_cpus,switches_per_op,proxy_msgs_per_s,\
         proxy_requests,proxy_replies,proxy_cpu_us_per_request\n",
    );
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
    let u = |v: Option<u64>| v.map_or(String::new(), |x| x.to_string());
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.workload.name(),
            r.callers,
            r.config.name(),
            r.ok,
            r.failed,
            f(r.median_s),
            f(r.ratio),
            f(r.min_s),
            f(r.max_s),
            f(r.rate),
            r.unit,
            r.config.layer_name().unwrap_or(""),
            f(r.layer_cpu_s),
            u(r.layer_peak_rss_kib),
            f(r.backend_cpu_s),
            u(r.backend_peak_rss_kib),
            f(r.machine_cpu_s),
            f(r.busy_cpus),
            f(r.switches_per_op),
            f(r.msgs_per_s),
            f(r.requests),
            f(r.replies),
            f(r.cpu_us_per_request),
        );
    }
    s
}

/// UTC calendar time of a Unix time: (y, m, d, H, M, S).
pub fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

pub fn iso(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

pub fn stamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// `git rev-parse --short HEAD` of the source tree, and whether it has
/// uncommitted changes.
pub fn git_commit() -> (String, bool) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let t = Duration::from_secs(20);
    let sha = procs::run_output(
        Command::new("git").args(["-C", dir, "rev-parse", "--short", "HEAD"]),
        t,
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "nogit".into());
    let dirty = procs::run_output(
        Command::new("git").args(["-C", dir, "status", "--porcelain"]),
        t,
    )
    .is_ok_and(|s| !s.trim().is_empty());
    (sha, dirty)
}

fn first_line(cmd: &mut Command) -> Value {
    match procs::run_output(cmd, Duration::from_secs(20)) {
        Ok(s) => json!(s.lines().next().unwrap_or("").trim()),
        Err(_) => Value::Null,
    }
}

/// nproc, kernel, CPU model, memory, load, tool versions.
pub fn machine(proxy: &Path) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name")
            .and_then(|r| r.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let mem_kib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    let (same_cpu, cross_cpu) = crate::handoff::probe();
    let halt_poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns");
    json!({
        "handoff_us": {
            "same_cpu": same_cpu.map(|c| c.latency),
            "cross_cpu": cross_cpu.map(|c| c.latency),
        },
        "handoff_cpu_us": {
            "same_cpu": same_cpu.map(|c| c.cpu),
            "cross_cpu": cross_cpu.map(|c| c.cpu),
        },
        "cpuidle_driver": read("/sys/devices/system/cpu/cpuidle/current_driver").trim(),
        "guest_halt_poll_ns": halt_poll.trim().parse::<u64>().ok(),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu_model": cpu_model,
        "mem_total_kib": mem_kib,
        "loadavg": read("/proc/loadavg").trim(),
        "fio": first_line(Command::new("fio").arg("--version")),
        "bindfs": first_line(Command::new("bindfs").arg("--version")),
        "libfuse3": first_line(Command::new("pkg-config").args(["--modversion", "fuse3"])),
        "tar": first_line(Command::new("tar").arg("--version")),
        "fuseproxy": first_line(Command::new(proxy).arg("--version")),
    })
}

/// Writes the JSON and CSV files; returns their paths.
pub fn save(out: &Path, base: &str, doc: &Value, rows: &[Row]) -> Res<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(out).map_err(|e| format!("mkdir {}: {e}", out.display()))?;
    let j = out.join(format!("{base}.json"));
    let c = out.join(format!("{base}.csv"));
    let text = serde_json::to_string_pretty(doc).map_err(|e| format!("JSON: {e}"))?;
    std::fs::write(&j, text + "\n").map_err(|e| format!("{}: {e}", j.display()))?;
    std::fs::write(&c, csv(rows)).map_err(|e| format!("{}: {e}", c.display()))?;
    Ok((j, c))
}

/// Groups failures by message for the end-of-run list.
pub fn failure_lines(f: &[Failure]) -> Vec<String> {
    let mut by: BTreeMap<(String, &str), Vec<u32>> = BTreeMap::new();
    let mut order = Vec::new();
    for x in f {
        let key = (format!("{} on {}", x.what, x.config), x.message.as_str());
        if !by.contains_key(&key) {
            order.push(key.clone());
        }
        by.entry(key).or_default().push(x.round);
    }
    order
        .into_iter()
        .map(|k| {
            let rounds = &by[&k];
            let r: Vec<String> = rounds.iter().map(|r| r.to_string()).collect();
            format!("{} (round {}): {}", k.0, r.join(","), k.1)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn calendar() {
        assert_eq!(civil(UNIX_EPOCH), (1970, 1, 1, 0, 0, 0));
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(iso(t), "2023-11-14T22:13:20Z");
        assert_eq!(stamp(t), "20231114-221320");
    }

    #[test]
    fn grouping_digits() {
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
