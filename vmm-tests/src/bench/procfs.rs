//! What `/proc` says about the daemon process: CPU time, context switches
//! (wakeups) and memory.
//!
//! CPU time is read two ways. `utime + stime` from `/proc/PID/stat` counts
//! exited threads too but has clock-tick resolution (10 ms at `USER_HZ` 100,
//! too coarse for one idle stream over a few seconds); the sum of the first
//! field of `/proc/PID/task/*/schedstat` is in nanoseconds but forgets
//! threads that exited. Both are reported.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

/// One reading of the process's counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When it was read.
    pub at: Instant,
    /// `utime + stime` of `/proc/PID/stat`, in nanoseconds.
    pub stat_cpu_ns: u64,
    /// Sum over live threads of the schedstat run time, in nanoseconds.
    pub sched_cpu_ns: u64,
    /// Sum over live threads of voluntary + nonvoluntary context switches.
    pub ctx_switches: u64,
    /// Live threads.
    pub threads: usize,
}

/// The process's activity between two samples.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Wall-clock seconds between the samples.
    pub wall_s: f64,
    /// CPU seconds from `/proc/PID/stat` (tick resolution).
    pub cpu_stat_s: f64,
    /// CPU seconds from the threads' schedstat (ns resolution).
    pub cpu_sched_s: f64,
    /// Context switches per wall-clock second.
    pub wakeups_per_s: f64,
    /// Live threads at the end.
    pub threads: usize,
}

impl ProcSample {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &ProcSample) -> Usage {
        let wall_s = self.at.duration_since(earlier.at).as_secs_f64();
        let secs = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e9;
        Usage {
            wall_s,
            cpu_stat_s: secs(self.stat_cpu_ns, earlier.stat_cpu_ns),
            cpu_sched_s: secs(self.sched_cpu_ns, earlier.sched_cpu_ns),
            wakeups_per_s: self.ctx_switches.saturating_sub(earlier.ctx_switches) as f64
                / wall_s.max(1e-9),
            threads: self.threads,
        }
    }
}

/// The process's memory, in KiB (`/proc/PID/status`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// Peak resident set size (`VmHWM`).
    pub peak_rss_kib: u64,
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Anonymous memory now (`RssAnon`): heap and stacks.
    pub rss_anon_kib: u64,
    /// Shared memory now (`RssShmem`): mostly the guest memory the daemon touched.
    pub rss_shmem_kib: u64,
}

fn proc_path(pid: u32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("Cannot parse {what}"))
}

/// Nanoseconds per clock tick.
fn tick_ns() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// `utime + stime` in clock ticks, from the text of `/proc/PID/stat`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields restart
    // after the last ')'. utime and stime are fields 14 and 15 (1-based), so
    // 11 and 12 counting from field 3 (the state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// A `Key:   123 kB` (or bare number) field of a status file.
fn status_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

/// Reads the process's CPU and context-switch counters.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let at = Instant::now();
    let stat = fs::read_to_string(proc_path(pid, "stat"))?;
    let ticks = parse_stat_ticks(&stat).ok_or_else(|| bad("/proc/PID/stat"))?;
    let mut sched_cpu_ns = 0;
    let mut ctx_switches = 0;
    let mut threads = 0;
    for entry in fs::read_dir(proc_path(pid, "task"))? {
        let dir = entry?.path();
        // A thread may exit between the listing and the read.
        let (Ok(status), Ok(schedstat)) = (
            fs::read_to_string(dir.join("status")),
            fs::read_to_string(dir.join("schedstat")),
        ) else {
            continue;
        };
        threads += 1;
        ctx_switches += status_field(&status, "voluntary_ctxt_switches").unwrap_or(0)
            + status_field(&status, "nonvoluntary_ctxt_switches").unwrap_or(0);
        sched_cpu_ns += schedstat
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(ProcSample {
        at,
        stat_cpu_ns: ticks * tick_ns(),
        sched_cpu_ns,
        ctx_switches,
        threads,
    })
}

/// Reads the process's memory figures.
pub fn memory(pid: u32) -> io::Result<Memory> {
    let status = fs::read_to_string(proc_path(pid, "status"))?;
    let get = |k: &str| status_field(&status, k).ok_or_else(|| bad(k));
    Ok(Memory {
        peak_rss_kib: get("VmHWM")?,
        rss_kib: get("VmRSS")?,
        rss_anon_kib: status_field(&status, "RssAnon").unwrap_or(0),
        rss_shmem_kib: status_field(&status, "RssShmem").unwrap_or(0),
    })
}

/// Resets the process's peak RSS to its current RSS (`clear_refs` 5), so a
/// long-running daemon's `VmHWM` covers one scenario. Returns whether it worked
/// (it needs permission over the process).
pub fn reset_peak_rss(pid: u32) -> bool {
    fs::write(proc_path(pid, "clear_refs"), "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0";
        assert_eq!(parse_stat_ticks(stat), Some(10));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let s = sample(pid).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.threads >= 1);
        let m = memory(pid).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.peak_rss_kib >= m.rss_anon_kib);
        assert_eq!(status_field("VmHWM:\t  1234 kB\n", "VmHWM"), Some(1234));
    }
}
