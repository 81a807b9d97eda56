//! `memory`: the daemon's peak RSS (`VmHWM`) connected and idle, then with
//! many streams running. Every other scenario reports its own peak too.
//!
//! The RSS counts the guest memory the daemon touched (`RssShmem`: the rings
//! and the buffers it copied) besides its own heap and stacks (`RssAnon`).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::load::Load;
use super::procfs::{self, Memory};
use super::target::{Layout, Target, TargetSpec};
use super::{pick_streams, split_streams, Error, Result};

/// What `memory` runs.
#[derive(Debug, Clone)]
pub struct MemoryOptions {
    /// Streams running in the loaded phase.
    pub streams: u32,
    /// How long they run.
    pub duration: Duration,
}

impl MemoryOptions {
    /// 256 streams for 3 s (16 for 0.3 s in a smoke run).
    pub fn new(smoke: bool) -> MemoryOptions {
        MemoryOptions {
            streams: if smoke { 16 } else { 256 },
            duration: Duration::from_millis(if smoke { 300 } else { 3000 }),
        }
    }
}

/// What `memory` measured.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// Connected, no stream prepared.
    pub idle: Memory,
    /// Streams running in the loaded phase.
    pub streams: u32,
    /// After they ran (peak over the whole run).
    pub loaded: Memory,
}

/// Runs `memory`.
pub fn run(spec: &TargetSpec, opts: &MemoryOptions) -> Result<MemoryReport> {
    let (outputs, inputs) = split_streams(opts.streams);
    let mut target = Target::open(spec, &Layout::null(outputs, inputs))?;
    let pid = target.pid().ok_or_else(|| {
        Error::Unsupported("memory needs the daemon's pid: use --spawn or --pid".into())
    })?;
    procfs::reset_peak_rss(pid);
    let mut snd = target.connect()?;
    let plan = pick_streams(&mut snd, outputs, inputs)?;
    let idle = procfs::memory(pid)?;
    let mut load = Load::prepare(&mut snd, &plan)?;
    load.start()?;
    load.run_until(Instant::now() + opts.duration)?;
    load.release()?;
    let loaded = procfs::memory(pid)?;
    snd.disconnect()?;
    target.check_alive()?;
    Ok(MemoryReport {
        idle,
        streams: opts.streams,
        loaded,
    })
}
