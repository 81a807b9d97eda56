//! `vsound-bench`: a load generator that plays a guest against any
//! vhost-user virtio-sound daemon and measures it.
//!
//! - [`target`]: the daemon under test (spawned with a generated config, or
//!   an existing socket).
//! - [`load`]: streams driven as Linux drives them, with per-completion
//!   pacing errors.
//! - [`procfs`]: CPU time, wakeups and memory of the daemon process.
//! - [`floor`]: the machine's own wakeup latencies, to read the figures against.
//! - [`pacing`], [`cpu`], [`control`], [`teardown`], [`memory`]: the scenarios.
//! - [`report`]: the results, as a table or JSON; [`plot`]: the SVG.
//! - [`stats`]: percentile summaries.

pub mod control;
pub mod cpu;
pub mod floor;
pub mod load;
pub mod memory;
pub mod pacing;
pub mod plot;
pub mod procfs;
pub mod report;
pub mod stats;
pub mod target;
pub mod teardown;

use std::io;
use std::time::Duration;

use crate::snd::{self, Direction, PcmFormat, PcmRate, SndDriver, Status};
use crate::{daemon, frontend};

pub use report::Report;
pub use target::{Layout, Target, TargetSpec};

/// Errors of the bench.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Spawning or watching the daemon failed.
    #[error("Daemon")]
    Daemon(#[source] Box<daemon::Error>),
    /// The guest driver failed.
    #[error("Guest driver")]
    Snd(#[source] Box<snd::Error>),
    /// A local I/O call failed.
    #[error("I/O")]
    Io(#[from] io::Error),
    /// A request the scenario relies on was refused.
    #[error("{what} on stream {stream} answered {status}")]
    Status {
        /// The request.
        what: &'static str,
        /// The stream.
        stream: u32,
        /// The answer.
        status: Status,
    },
    /// The daemon did something a scenario cannot measure.
    #[error("{0}")]
    Protocol(String),
    /// The scenario cannot run against this target.
    #[error("{0}")]
    Unsupported(String),
    /// Drawing the plot failed.
    #[error("Plot: {0}")]
    Plot(String),
}

impl From<snd::Error> for Error {
    fn from(e: snd::Error) -> Self {
        Error::Snd(Box::new(e))
    }
}

impl From<frontend::Error> for Error {
    fn from(e: frontend::Error) -> Self {
        Error::Snd(Box::new(snd::Error::Frontend(e)))
    }
}

impl From<daemon::Error> for Error {
    fn from(e: daemon::Error) -> Self {
        Error::Daemon(Box::new(e))
    }
}

/// Result type of the bench.
pub type Result<T> = std::result::Result<T, Error>;

/// A scenario, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Pacing error and drift of a few streams.
    Pacing,
    /// CPU time and wakeups per stream, for several stream counts.
    Cpu,
    /// Control request round trips.
    Control,
    /// Device removal under load.
    Teardown,
    /// Peak RSS idle and under load.
    Memory,
    /// Every scenario, in this order.
    All,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The daemon under test.
    pub target: TargetSpec,
    /// Short runs that only check that everything works.
    pub smoke: bool,
    /// `pacing`.
    pub pacing: pacing::PacingOptions,
    /// `cpu`.
    pub cpu: cpu::CpuOptions,
    /// `control`.
    pub control: control::ControlOptions,
    /// `teardown`.
    pub teardown: teardown::TeardownOptions,
    /// `memory`.
    pub memory: memory::MemoryOptions,
}

impl Options {
    /// The defaults (`smoke`: a few seconds in all).
    pub fn new(target: TargetSpec, smoke: bool) -> Options {
        Options {
            target,
            smoke,
            pacing: pacing::PacingOptions::new(smoke),
            cpu: cpu::CpuOptions::new(smoke),
            control: control::ControlOptions::new(smoke),
            teardown: teardown::TeardownOptions::new(smoke),
            memory: memory::MemoryOptions::new(smoke),
        }
    }
}

/// Runs `scenario` and returns what it measured. Progress goes to stderr.
pub fn run(opts: &Options, scenario: Scenario) -> Result<Report> {
    let mut report = Report::new(&opts.target, opts.smoke);
    let wants = |s: Scenario| scenario == s || scenario == Scenario::All;
    if wants(Scenario::Pacing) {
        eprintln!("vsound-bench: pacing ...");
        report.pacing = Some(pacing::run(&opts.target, &opts.pacing)?);
    }
    if wants(Scenario::Cpu) {
        eprintln!("vsound-bench: cpu ...");
        report.cpu = Some(cpu::run(&opts.target, &opts.cpu)?);
    }
    if wants(Scenario::Control) {
        eprintln!("vsound-bench: control ...");
        report.control = Some(control::run(&opts.target, &opts.control)?);
    }
    if wants(Scenario::Teardown) {
        eprintln!("vsound-bench: teardown ...");
        report.teardown = Some(teardown::run(&opts.target, &opts.teardown)?);
    }
    if wants(Scenario::Memory) {
        eprintln!("vsound-bench: memory ...");
        report.memory = Some(memory::run(&opts.target, &opts.memory)?);
    }
    Ok(report)
}

/// Picks `outputs` output and `inputs` input streams that take 48 kHz stereo
/// S16, in id order, from the daemon's PCM_INFO.
pub fn pick_streams(
    snd: &mut SndDriver,
    outputs: u32,
    inputs: u32,
) -> Result<Vec<(u32, Direction)>> {
    const CHUNK: u32 = 64;
    let total = snd.config().streams;
    let mut out = Vec::new();
    let mut inp = Vec::new();
    let mut start = 0;
    while start < total {
        let count = CHUNK.min(total - start);
        for (i, info) in snd.pcm_info(start, count)?.iter().enumerate() {
            let usable = info.formats & PcmFormat::S16.bit() != 0
                && info.rates & PcmRate::R48000.bit() != 0
                && (info.channels_min..=info.channels_max).contains(&2);
            let id = start + i as u32;
            match info.direction() {
                Some(Direction::Output) if usable => out.push((id, Direction::Output)),
                Some(Direction::Input) if usable => inp.push((id, Direction::Input)),
                _ => {}
            }
        }
        start += count;
    }
    if out.len() < outputs as usize || inp.len() < inputs as usize {
        return Err(Error::Unsupported(format!(
            "the daemon has {} output and {} input streams taking 48 kHz stereo S16; {outputs} and {inputs} are needed",
            out.len(),
            inp.len()
        )));
    }
    out.truncate(outputs as usize);
    inp.truncate(inputs as usize);
    out.extend(inp);
    Ok(out)
}

/// Splits `n` streams into outputs and inputs (one more output when odd).
pub fn split_streams(n: u32) -> (u32, u32) {
    (n - n / 2, n / 2)
}

/// `d` in seconds, for reports.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
