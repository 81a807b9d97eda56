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
                "\ncpu: daemon CPU and wakeups (streams half output, half input)"
            );
            let _ = writeln!(
                f,
                "  {:>7} {:>9} {:>9} {:>11} {:>12} {:>10} {:>12} {:>8} {:>9} {:>7} {:>9}",
                "streams",
                "cpu %",
                "stat %",
                "% /stream",
                "µs/stream·s",
                "wakeups/s",
                "wk/stream·s",
                "threads",
                "p99 µs",
                "missed",
                "bench %"
            );
            for r in &c.runs {
                let _ = writeln!(
                    f,
                    "  {:>7} {:>9.3} {:>9.2} {:>11.4} {:>12.1} {:>10.0} {:>12.1} {:>8} {:>9.1} {:>7} {:>9.2}",
                    r.streams,
                    r.cpu_pct,
                    r.cpu_pct_stat,
                    r.cpu_pct_per_stream,
                    r.cpu_us_per_stream_second,
                    r.usage.wakeups_per_s,
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
