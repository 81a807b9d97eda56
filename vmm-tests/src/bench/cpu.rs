//! `cpu`: the daemon's CPU time and wakeups for 1, 8, 64 and 256 running
//! streams (half outputs, half inputs, all on `null`).
//!
//! With `--spawn` each count gets a fresh daemon whose config declares
//! exactly that many streams; against an existing daemon (`--pid`) the
//! counts it cannot serve are skipped.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::floor;
use super::load::Load;
use super::procfs::{self, Memory, Usage};
use super::stats::{us, Summary};
use super::target::{Layout, Target, TargetSpec};
use super::{pick_streams, split_streams, Error, Result};

/// What `cpu` runs.
#[derive(Debug, Clone)]
pub struct CpuOptions {
    /// Stream counts, one run each.
    pub streams: Vec<u32>,
    /// Running time before measuring.
    pub warmup: Duration,
    /// Measured time per run.
    pub duration: Duration,
}

impl CpuOptions {
    /// 1, 8, 64 and 256 streams for 10 s each (1 and 8 for 0.5 s in a smoke run).
    pub fn new(smoke: bool) -> CpuOptions {
        if smoke {
            CpuOptions {
                streams: vec![1, 8],
                warmup: Duration::from_millis(200),
                duration: Duration::from_millis(500),
            }
        } else {
            CpuOptions {
                streams: vec![1, 8, 64, 256],
                warmup: Duration::from_secs(1),
                duration: Duration::from_secs(10),
            }
        }
    }
}

/// One stream count's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CpuRun {
    /// Running streams.
    pub streams: u32,
    /// Of which outputs.
    pub outputs: u32,
    /// Of which inputs.
    pub inputs: u32,
    /// The daemon's counters over the measured window.
    pub usage: Usage,
    /// Daemon CPU as a percentage of one core (schedstat, ns resolution).
    pub cpu_pct: f64,
    /// The same from `/proc/PID/stat` utime + stime (10 ms resolution).
    pub cpu_pct_stat: f64,
    /// Daemon CPU per stream, as a percentage of one core.
    pub cpu_pct_per_stream: f64,
    /// Daemon CPU µs per second of audio per stream.
    pub cpu_us_per_stream_second: f64,
    /// Daemon context switches per second per stream.
    pub wakeups_per_stream_s: f64,
    /// The bench's own CPU as a percentage of one core (it shares the machine).
    pub bench_cpu_pct: f64,
    /// |pacing error| of the window's completions, µs.
    pub pacing: Summary,
    /// Periods the daemon skipped.
    pub missed_periods: u64,
    /// The daemon's memory at the end of the run.
    pub memory: Memory,
    /// The floor under `cpu_us_per_stream_second`: the CPU of one bare
    /// thread waking as often as all the daemon's threads did (its
    /// wakeups/s) on a timerfd re-armed at each wake-up, as the reactor's
    /// is (`floor::timer_cpu`), per stream, µs per second. Measured right
    /// after the run.
    pub floor_us_per_stream_second: f64,
    /// The same with the timer armed once with an interval (no re-arm).
    pub floor_interval_us_per_stream_second: f64,
    /// The daemon's notifications (txq and rxq call eventfd writes, as
    /// counted by the eventfds) per second.
    pub notifications_per_s: f64,
    /// The floor with the notifications: the re-armed timer thread also
    /// writes an eventfd another thread sleeps on, as often per wake-up as
    /// the daemon notified the bench (`floor::timer_cpu`), per stream, µs
    /// per second.
    pub floor_notify_us_per_stream_second: f64,
}

/// What `cpu` measured.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// One entry per stream count.
    pub runs: Vec<CpuRun>,
    /// Stream counts skipped (the daemon has fewer streams), with why.
    pub skipped: Vec<String>,
}

/// Runs `cpu`.
pub fn run(spec: &TargetSpec, opts: &CpuOptions) -> Result<CpuReport> {
    let mut report = CpuReport {
        runs: Vec::new(),
        skipped: Vec::new(),
    };
    for &n in &opts.streams {
        match run_one(spec, opts, n) {
            Ok(r) => report.runs.push(r),
            Err(Error::Unsupported(why)) if !spec.spawns() => {
                report.skipped.push(format!("{n} streams: {why}"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

fn run_one(spec: &TargetSpec, opts: &CpuOptions, n: u32) -> Result<CpuRun> {
    let (outputs, inputs) = split_streams(n);
    let mut target = Target::open(spec, &Layout::null(outputs, inputs))?;
    let pid = target.pid().ok_or_else(|| {
        Error::Unsupported("cpu needs the daemon's pid: use --spawn or --pid".into())
    })?;
    procfs::reset_peak_rss(pid);
    let mut snd = target.connect()?;
    let plan = pick_streams(&mut snd, outputs, inputs)?;
    let mut load = Load::prepare(&mut snd, &plan)?;
    load.start()?;
    load.run_until(Instant::now() + opts.warmup)?;
    let me = std::process::id();
    let (d0, b0) = (procfs::sample(pid)?, procfs::sample(me)?);
    let n0 = load.notifications();
    load.run_until(d0.at + opts.duration)?;
    let (d1, b1) = (procfs::sample(pid)?, procfs::sample(me)?);
    let notified = load.notifications().saturating_sub(n0);
    load.rebase_starts();
    let mut errs: Vec<f64> = load
        .samples()
        .iter()
        .filter(|s| s.at >= d0.at && s.at < d1.at)
        .map(|s| us(s.err_ns).abs())
        .collect();
    let missed_periods = load.streams().iter().map(|s| s.missed).sum();
    load.release()?;
    let memory = procfs::memory(pid)?;
    snd.disconnect()?;
    target.check_alive()?;

    let usage = d1.since(&d0);
    let bench = b1.since(&b0);
    let notifications_per_s = notified as f64 / usage.wall_s.max(1e-9);
    let floor_for =
        |arming, notify| floor::timer_cpu(usage.wakeups_per_s, opts.duration, arming, notify);
    let floor_each = floor_for(floor::Arming::EachWake, 0.0)?;
    let floor_interval = floor_for(floor::Arming::Interval, 0.0)?;
    let floor_notify = floor_for(
        floor::Arming::EachWake,
        notifications_per_s / usage.wakeups_per_s.max(1.0),
    )?;
    let pct = |cpu_s: f64| 100.0 * cpu_s / usage.wall_s;
    let cpu_pct = pct(usage.cpu_sched_s);
    let nf = f64::from(n);
    Ok(CpuRun {
        streams: n,
        outputs,
        inputs,
        cpu_pct,
        cpu_pct_stat: pct(usage.cpu_stat_s),
        cpu_pct_per_stream: cpu_pct / nf,
        cpu_us_per_stream_second: usage.cpu_sched_s * 1e6 / usage.wall_s / nf,
        wakeups_per_stream_s: usage.wakeups_per_s / nf,
        bench_cpu_pct: 100.0 * bench.cpu_sched_s / bench.wall_s,
        usage,
        pacing: Summary::of(&mut errs),
        missed_periods,
        memory,
        floor_us_per_stream_second: floor_each * 1e6 / nf,
        floor_interval_us_per_stream_second: floor_interval * 1e6 / nf,
        notifications_per_s,
        floor_notify_us_per_stream_second: floor_notify * 1e6 / nf,
    })
}
