//! `pacing`: N output and M input streams for T seconds; each completion's
//! distance from its ideal time (START + k periods), and the drift at the end.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::floor;
use super::load::{Load, Sample, StreamInfo, PERIOD};
use super::procfs::{self, Memory};
use super::stats::{us, Summary};
use super::target::{Layout, Target, TargetSpec};
use super::{pick_streams, Result};
use crate::snd::Direction;

/// Completions averaged at each end of a stream's run for its drift.
const DRIFT_WINDOW: usize = 100;
/// Longest measurement of each floor. Each runs for half the run's length
/// up to this: a p99 from a few hundred samples (5 s) swung by 170 µs
/// between runs on this machine's VM, against the run's thousands.
const FLOOR_TIME: Duration = Duration::from_secs(30);

/// What `pacing` runs.
#[derive(Debug, Clone)]
pub struct PacingOptions {
    /// Output streams.
    pub outputs: u32,
    /// Input streams.
    pub inputs: u32,
    /// How long they run.
    pub duration: Duration,
}

impl PacingOptions {
    /// One output and one input, for 10 s (1 s for a smoke run).
    pub fn new(smoke: bool) -> PacingOptions {
        PacingOptions {
            outputs: 1,
            inputs: 1,
            duration: Duration::from_secs(if smoke { 1 } else { 10 }),
        }
    }
}

/// What `pacing` measured. Errors are in µs.
#[derive(Debug, Clone, Serialize)]
pub struct PacingReport {
    /// Output streams.
    pub outputs: u32,
    /// Input streams.
    pub inputs: u32,
    /// Seconds run.
    pub seconds: f64,
    /// |error| of every completion.
    pub all: Summary,
    /// |error| of output completions.
    pub output: Summary,
    /// |error| of input completions.
    pub input: Summary,
    /// |error − the stream's median error|: the variation around a constant
    /// lateness (the wake-up path's), which a guest cannot tell from a
    /// slightly later START.
    pub jitter: Summary,
    /// Signed error: mean (bias) and extremes.
    pub signed_mean_us: f64,
    /// Most negative signed error (earliest completion).
    pub signed_min_us: f64,
    /// Per stream: the drift over the whole run, from a least-squares line
    /// through its errors (slope × run length): how far its completions
    /// moved against the ideal schedule, wake-up jitter averaged out.
    pub drift_us: Vec<f64>,
    /// Largest |drift| over the streams.
    pub drift_max_abs_us: f64,
    /// Per stream: mean error of its last 100 completions (1 s) minus
    /// that of its first ones.
    pub drift_window_us: Vec<f64>,
    /// Per stream: signed error of its last completion.
    pub final_error_us: Vec<f64>,
    /// Periods the daemon skipped (ran dry).
    pub missed_periods: u64,
    /// Completions not answered OK.
    pub not_ok: usize,
    /// START round trips: the uncertainty of each stream's reference instant
    /// is half of it.
    pub start_rtt: Summary,
    /// Per stream: how much earlier than the middle of START's round trip
    /// its completions proved its schedule started ([`Load::rebase_starts`]).
    pub start_shift_us: Vec<f64>,
    /// How late a bench thread wakes on the same absolute 10 ms schedule
    /// (measured before the streams run): the machine's floor under the
    /// pacing error.
    pub timer_floor: Summary,
    /// The same schedule's timer wake-up and one notification of a thread
    /// waiting in `poll` ([`floor::timer_notify_lateness`]): the floor
    /// under a completion as the frontend sees it.
    #[serde(default)]
    pub notify_floor: Summary,
    /// The daemon's memory at the end (peak RSS), when its pid is known.
    pub memory: Option<Memory>,
    /// Every signed error, for the plot.
    #[serde(skip)]
    pub errors_us: Vec<f64>,
    /// Every timer-floor lateness, for the plot.
    #[serde(skip)]
    pub timer_floor_us: Vec<f64>,
    /// Every completion as CSV rows (`stream,dir,k,at_s,error_us,ok`, time
    /// from the first START), for `--samples`.
    #[serde(skip)]
    pub csv: String,
}

/// Runs `pacing`.
pub fn run(spec: &TargetSpec, opts: &PacingOptions) -> Result<PacingReport> {
    let timer_floor_us = floor::timer_lateness(PERIOD, (opts.duration / 2).min(FLOOR_TIME))?;
    let mut notify_floor_us =
        floor::timer_notify_lateness(PERIOD, (opts.duration / 2).min(FLOOR_TIME))?;
    let mut target = Target::open(spec, &Layout::null(opts.outputs, opts.inputs))?;
    if let Some(pid) = target.pid() {
        procfs::reset_peak_rss(pid);
    }
    let mut snd = target.connect()?;
    let plan = pick_streams(&mut snd, opts.outputs, opts.inputs)?;
    let mut load = Load::prepare(&mut snd, &plan)?;
    load.start()?;
    let began = Instant::now();
    load.run_until(began + opts.duration)?;
    let seconds = began.elapsed().as_secs_f64();
    load.rebase_starts();
    let streams = load.streams().to_vec();
    let samples = load.release()?;
    let memory = target.pid().map(procfs::memory).transpose()?;
    snd.disconnect()?;
    target.check_alive()?;
    let mut report = summarize(opts, seconds, &streams, &samples, memory);
    report.timer_floor = Summary::of(&mut timer_floor_us.clone());
    report.notify_floor = Summary::of(&mut notify_floor_us);
    report.timer_floor_us = timer_floor_us;
    Ok(report)
}

/// The least-squares slope of `points` (y per x).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

/// Builds the report from a run's samples.
pub fn summarize(
    opts: &PacingOptions,
    seconds: f64,
    streams: &[StreamInfo],
    samples: &[Sample],
    memory: Option<Memory>,
) -> PacingReport {
    let abs_of = |dir: Option<Direction>| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| dir.is_none_or(|d| streams[s.stream].dir == d))
            .map(|s| us(s.err_ns).abs())
            .collect()
    };
    let errors_us: Vec<f64> = samples.iter().map(|s| us(s.err_ns)).collect();
    let origin = streams.iter().filter_map(|s| s.start).min();
    let mut csv = String::from("stream,dir,k,at_s,error_us,ok\n");
    let mut k = vec![0u64; streams.len()];
    for s in samples {
        k[s.stream] += 1;
        let at = origin.map_or(0.0, |o| s.at.saturating_duration_since(o).as_secs_f64());
        let st = &streams[s.stream];
        let dir = if st.dir == Direction::Output {
            "out"
        } else {
            "in"
        };
        let _ = writeln!(
            csv,
            "{},{dir},{},{at:.6},{:.1},{}",
            st.id,
            k[s.stream],
            us(s.err_ns),
            s.ok
        );
    }
    let mut drift_us = Vec::new();
    let mut drift_window_us = Vec::new();
    let mut final_error_us = Vec::new();
    for i in 0..streams.len() {
        let points: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.stream == i)
            .map(|s| {
                let t = origin.map_or(0.0, |o| s.at.saturating_duration_since(o).as_secs_f64());
                (t, us(s.err_ns))
            })
            .collect();
        if points.len() >= 2 {
            let errs: Vec<f64> = points.iter().map(|p| p.1).collect();
            let w = DRIFT_WINDOW.min(errs.len() / 2).max(1);
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            drift_window_us.push(mean(&errs[errs.len() - w..]) - mean(&errs[..w]));
            let span = points[points.len() - 1].0 - points[0].0;
            drift_us.push(slope(&points) * span);
        }
        if let Some(&(_, last)) = points.last() {
            final_error_us.push(last);
        }
    }
    let mut jitter = Vec::with_capacity(samples.len());
    for i in 0..streams.len() {
        let mut errs: Vec<f64> = samples
            .iter()
            .filter(|s| s.stream == i)
            .map(|s| us(s.err_ns))
            .collect();
        if errs.is_empty() {
            continue;
        }
        let median = Summary::of(&mut errs).p50;
        jitter.extend(errs.iter().map(|e| (e - median).abs()));
    }
    let mut rtts: Vec<f64> = streams
        .iter()
        .map(|s| s.start_rtt.as_secs_f64() * 1e6)
        .collect();
    PacingReport {
        outputs: opts.outputs,
        inputs: opts.inputs,
        seconds,
        all: Summary::of(&mut abs_of(None)),
        output: Summary::of(&mut abs_of(Some(Direction::Output))),
        input: Summary::of(&mut abs_of(Some(Direction::Input))),
        jitter: Summary::of(&mut jitter),
        signed_mean_us: errors_us.iter().sum::<f64>() / errors_us.len().max(1) as f64,
        signed_min_us: errors_us.iter().copied().reduce(f64::min).unwrap_or(0.0),
        drift_max_abs_us: drift_us.iter().map(|d| d.abs()).fold(0.0, f64::max),
        drift_us,
        drift_window_us,
        final_error_us,
        missed_periods: streams.iter().map(|s| s.missed).sum(),
        not_ok: samples.iter().filter(|s| !s.ok).count(),
        start_rtt: Summary::of(&mut rtts),
        start_shift_us: streams
            .iter()
            .map(|s| s.start_shift.as_secs_f64() * 1e6)
            .collect(),
        timer_floor: Summary::default(),
        notify_floor: Summary::default(),
        memory,
        errors_us,
        timer_floor_us: Vec::new(),
        csv,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|i| (f64::from(i), 3.0 * f64::from(i) + 1.0))
            .collect();
        assert!((slope(&pts) - 3.0).abs() < 1e-9);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 5.0)]), 0.0);
    }
}
