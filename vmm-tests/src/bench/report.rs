//! A run's results: JSON (serde) and a human table.

use std::fmt::{self, Write as _};
use std::fs;

use serde::Serialize;

use super::control::ControlReport;
use super::cpu::CpuReport;
use super::memory::MemoryReport;
use super::pacing::PacingReport;
use super::procfs::Memory;
use super::stats::Summary;
use super::target::TargetSpec;
use super::teardown::TeardownReport;

/// The machine the run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs available.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads this machine's description.
    pub fn this() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned()),
        }
    }
}

/// Everything a run measured; absent scenarios did not run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// The daemon: "spawned" or the socket path.
    pub target: String,
    /// A smoke run (figures not meant as measurements).
    pub smoke: bool,
    /// `pacing`.
    pub pacing: Option<PacingReport>,
    /// `cpu`.
    pub cpu: Option<CpuReport>,
    /// `control`.
    pub control: Option<ControlReport>,
    /// `teardown`.
    pub teardown: Option<TeardownReport>,
    /// `memory`.
    pub memory: Option<MemoryReport>,
}

impl Report {
    /// An empty report for this machine.
    pub fn new(target: &TargetSpec, smoke: bool) -> Report {
        Report {
            machine: Machine::this(),
            target: match target {
                TargetSpec::Spawn { .. } => "spawned".into(),
                TargetSpec::Peer { name, .. } => format!("peer {name}"),
                TargetSpec::Socket { path, .. } => path.display().to_string(),
            },
            smoke,
            pacing: None,
            cpu: None,
            control: None,
            teardown: None,
            memory: None,
        }
    }

    /// Takes the scenarios `other` ran (a run of one scenario).
    pub fn merge(&mut self, other: Report) {
        self.pacing = other.pacing.or(self.pacing.take());
        self.cpu = other.cpu.or(self.cpu.take());
        self.control = other.control.or(self.control.take());
        self.teardown = other.teardown.or(self.teardown.take());
        self.memory = other.memory.or(self.memory.take());
    }

    /// Peak RSS of every scenario that knows it, in KiB.
    pub fn peak_rss(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut add = |name: String, m: Option<&Memory>| {
            if let Some(m) = m {
                out.push((name, m.peak_rss_kib));
            }
        };
        if let Some(p) = &self.pacing {
            add(
                format!("pacing ({} out, {} in)", p.outputs, p.inputs),
                p.memory.as_ref(),
            );
        }
        for r in self.cpu.iter().flat_map(|c| &c.runs) {
            add(format!("cpu ({} streams)", r.streams), Some(&r.memory));
        }
        if let Some(c) = &self.control {
            add("control".into(), c.memory.as_ref());
        }
        for r in self.teardown.iter().flat_map(|t| &t.runs) {
            add(
                format!("teardown ({} removed + {})", r.removed, r.bystanders),
                r.memory.as_ref(),
            );
        }
        if let Some(m) = &self.memory {
            add("memory (idle)".into(), Some(&m.idle));
            add(format!("memory ({} streams)", m.streams), Some(&m.loaded));
        }
        out
    }
}

fn row(f: &mut String, name: &str, s: &Summary) {
    let _ = writeln!(
        f,
        "  {name:<22} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        s.n, s.p50, s.p99, s.p999, s.max
    );
}

fn header(f: &mut String, unit: &str) {
    let _ = writeln!(
        f,
        "  {:<22} {:>8} {:>9} {:>9} {:>9} {:>9}",
        unit, "n", "p50", "p99", "p99.9", "max"
    );
}

impl fmt::Display for Report {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = String::new();
        let m = &self.machine;
        let _ = writeln!(
            f,
            "vsound-bench{} on {} CPUs ({}), kernel {}, daemon {}",
            if self.smoke { " (smoke run)" } else { "" },
            m.nproc,
            m.cpu_model,
            m.kernel,
            self.target
        );
        if let Some(p) = &self.pacing {
            let _ = writeln!(
                f,
                "\npacing: {} output + {} input streams, {:.1} s, 48 kHz stereo S16, 10 ms periods",
                p.outputs, p.inputs, p.seconds
            );
            header(&mut f, "|error| (µs)");
            row(&mut f, "all", &p.all);
            row(&mut f, "output", &p.output);
            row(&mut f, "input", &p.input);
            row(&mut f, "jitter (|err − median|)", &p.jitter);
            row(&mut f, "START round trip", &p.start_rtt);
            row(&mut f, "timer lateness (floor)", &p.timer_floor);
            row(&mut f, "timer + notification (floor)", &p.notify_floor);
            let list = |v: &[f64]| -> String {
                if v.len() <= 8 {
                    format!("{:?}", v.iter().map(|e| e.round()).collect::<Vec<_>>())
                } else {
                    let max = v.iter().map(|e| e.abs()).fold(0.0, f64::max);
                    format!("max |{max:.0}| over {} streams", v.len())
                }
            };
            let _ = writeln!(
                f,
                "  signed mean {:.1} µs, min {:.1} µs; missed periods {}; not OK {}",
                p.signed_mean_us, p.signed_min_us, p.missed_periods, p.not_ok
            );
            let _ = writeln!(
                f,
                "  drift over the run (least-squares fit) {} µs; last − first second {} µs; final errors {} µs",
                list(&p.drift_us),
                list(&p.drift_window_us),
                list(&p.final_error_us)
            );
            let _ = writeln!(
                f,
                "  START reference moved earlier by {} µs (completions are never early)",
                list(&p.start_shift_us)
            );
        }
        if let Some(c) = &self.cpu {
            let _ = writeln!(
                f,
                "\ncpu: daemon CPU and wakeups (streams half output, half input); floor / intv / +notif: \
                 one bare thread waking as often as the daemon did, on a timerfd re-armed at each \
                 wake-up / armed once with an interval / re-armed and writing an eventfd another thread \
                 waits on as often as the daemon notified, per stream"
            );
            let _ = writeln!(
                f,
                "  {:>7} {:>9} {:>9} {:>11} {:>12} {:>9} {:>9} {:>9} {:>10} {:>9} {:>12} {:>8} {:>9} {:>7} {:>9}",
                "streams",
                "cpu %",
                "stat %",
                "% /stream",
                "µs/stream·s",
                "floor µs",
                "intv µs",
                "+notif µs",
                "wakeups/s",
                "notif/s",
                "wk/stream·s",
                "threads",
                "p99 µs",
                "missed",
                "bench %"
            );
            for r in &c.runs {
                let _ = writeln!(
                    f,
                    "  {:>7} {:>9.3} {:>9.2} {:>11.4} {:>12.1} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>9.0} {:>12.1} {:>8} {:>9.1} {:>7} {:>9.2}",
                    r.streams,
                    r.cpu_pct,
                    r.cpu_pct_stat,
                    r.cpu_pct_per_stream,
                    r.cpu_us_per_stream_second,
                    r.floor_us_per_stream_second,
                    r.floor_interval_us_per_stream_second,
                    r.floor_notify_us_per_stream_second,
                    r.usage.wakeups_per_s,
                    r.notifications_per_s,
                    r.wakeups_per_stream_s,
                    r.usage.threads,
                    r.pacing.p99,
                    r.missed_periods,
                    r.bench_cpu_pct
                );
            }
            for s in &c.skipped {
                let _ = writeln!(f, "  skipped: {s}");
            }
        }
        if let Some(c) = &self.control {
            let _ = writeln!(
                f,
                "\ncontrol: round trips, {} iterations (PCM_INFO of {} streams)",
                c.iterations, c.pcm_info_streams
            );
            header(&mut f, "round trip (µs)");
            for (name, s) in [
                ("PCM_INFO", &c.pcm_info),
                ("SET_PARAMS", &c.set_params),
                ("PREPARE", &c.prepare),
                ("START", &c.start),
                ("STOP", &c.stop),
                ("RELEASE", &c.release),
                ("whole cycle", &c.cycle),
                ("ping-pong, 1 CPU", &c.wakeup_floor_same_cpu),
            ] {
                row(&mut f, name, s);
            }
            if let Some(s) = &c.wakeup_floor_cross_cpu {
                row(&mut f, "ping-pong, 2 CPUs", s);
            }
        }
        if let Some(t) = &self.teardown {
            let _ = writeln!(f, "\nteardown: {}", t.status);
            for r in &t.runs {
                let _ = writeln!(
                    f,
                    "  {} removed ({} buffers held; {} OK + {} IO_ERR after; returns {:?}), {} bystanders",
                    r.removed, r.held, r.after_ok, r.after_io_err, r.returns, r.bystanders
                );
                header(&mut f, "µs from the removal");
                row(&mut f, "JACK_DISCONNECTED", &r.jack_event);
                row(&mut f, "floor: hang-up fan-out", &r.jack_floor);
                row(&mut f, "first IO_ERR", &r.first_io_err);
                row(&mut f, "last buffer back", &r.drained);
                row(&mut f, "bystanders |err| before", &r.bystanders_before);
                row(&mut f, "bystanders |err| during", &r.bystanders_during);
            }
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                f,
                "\nmemory: idle peak {} KiB (anon {}, shmem {}); {} streams peak {} KiB (anon {}, shmem {})",
                m.idle.peak_rss_kib,
                m.idle.rss_anon_kib,
                m.idle.rss_shmem_kib,
                m.streams,
                m.loaded.peak_rss_kib,
                m.loaded.rss_anon_kib,
                m.loaded.rss_shmem_kib
            );
        }
        let peaks = self.peak_rss();
        if !peaks.is_empty() {
            let _ = writeln!(f, "\npeak RSS (VmHWM) by scenario");
            for (name, kib) in peaks {
                let _ = writeln!(f, "  {name:<34} {kib:>8} KiB");
            }
        }
        out.write_str(&f)
    }
}

/// The figures of two reports of one run next to each other (vsound, then
/// a peer back-end under the same load), with their ratio where both have
/// one: the way to read them on a noisy machine.
pub fn side_by_side(ours: &Report, peer: &Report) -> String {
    let mut out = String::from("=== side by side (vsound | peer | vsound / peer)\n");
    let mut line = |what: String, a: Option<f64>, b: Option<f64>| {
        let f = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{v:.1}"));
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_owned(),
        };
        let _ = writeln!(out, "{what:<48} {:>10} {:>10} {:>8}", f(a), f(b), ratio);
    };
    if let (Some(a), Some(b)) = (&ours.pacing, &peer.pacing) {
        line(
            "pacing |error| p50 (µs)".into(),
            Some(a.all.p50),
            Some(b.all.p50),
        );
        line(
            "pacing |error| p99 (µs)".into(),
            Some(a.all.p99),
            Some(b.all.p99),
        );
        line(
            "pacing jitter p99 (µs)".into(),
            Some(a.jitter.p99),
            Some(b.jitter.p99),
        );
        line(
            "pacing drift, largest |fit| (µs)".into(),
            Some(a.drift_max_abs_us),
            Some(b.drift_max_abs_us),
        );
        line(
            "timer floor p99 (µs)".into(),
            Some(a.timer_floor.p99),
            Some(b.timer_floor.p99),
        );
        line(
            "timer + notification floor p99 (µs)".into(),
            Some(a.notify_floor.p99),
            Some(b.notify_floor.p99),
        );
    }
    if let (Some(a), Some(b)) = (&ours.cpu, &peer.cpu) {
        for r in &a.runs {
            let p = b.runs.iter().find(|p| p.streams == r.streams);
            line(
                format!("cpu, {} streams: µs per stream-second", r.streams),
                Some(r.cpu_us_per_stream_second),
                p.map(|p| p.cpu_us_per_stream_second),
            );
            line(
                format!("cpu, {} streams: wakeups per stream-second", r.streams),
                Some(r.wakeups_per_stream_s),
                p.map(|p| p.wakeups_per_stream_s),
            );
            line(
                format!("cpu, {} streams: pacing p99 (µs)", r.streams),
                Some(r.pacing.p99),
                p.map(|p| p.pacing.p99),
            );
        }
    }
    if let (Some(a), Some(b)) = (&ours.control, &peer.control) {
        line(
            "control PCM_INFO p99 (µs)".into(),
            Some(a.pcm_info.p99),
            Some(b.pcm_info.p99),
        );
        line(
            "control cycle p99 (µs)".into(),
            Some(a.cycle.p99),
            Some(b.cycle.p99),
        );
    }
    let theirs = peer.peak_rss();
    for (name, a) in ours.peak_rss() {
        if let Some((_, b)) = theirs.iter().find(|(n, _)| *n == name) {
            line(
                format!("{name}: peak RSS (KiB)"),
                Some(a as f64),
                Some(*b as f64),
            );
        }
    }
    out
}
