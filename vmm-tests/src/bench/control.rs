//! `control`: round trips of PCM_INFO and of a whole
//! SET_PARAMS / PREPARE / START / STOP / RELEASE cycle on an idle stream.
//!
//! A round trip is [`ControlReply::elapsed`]: from the kick to the
//! completion being seen after the call eventfd fired.

use std::time::Duration;

use serde::Serialize;

use super::floor;
use super::load::{BUFFER_PERIODS, PERIOD_BYTES};
use super::procfs::{self, Memory};
use super::stats::Summary;
use super::target::{Layout, Target, TargetSpec};
use super::{pick_streams, Error, Result};
use crate::snd::constants::{code, size};
use crate::snd::wire::{pcm_hdr, query_info};
use crate::snd::{ControlReply, PcmFormat, PcmRate, SetParams, SndDriver, Status};

/// Iterations run first and not counted (caches, page faults, lazy setup).
const WARMUP: usize = 20;

/// What `control` runs.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Measured iterations of each request.
    pub iterations: usize,
}

impl ControlOptions {
    /// 2000 iterations (20 for a smoke run).
    pub fn new(smoke: bool) -> ControlOptions {
        ControlOptions {
            iterations: if smoke { 20 } else { 2000 },
        }
    }
}

/// What `control` measured; round trips in µs.
#[derive(Debug, Clone, Serialize)]
pub struct ControlReport {
    /// Measured iterations.
    pub iterations: usize,
    /// Streams asked for in each PCM_INFO.
    pub pcm_info_streams: u32,
    /// PCM_INFO.
    pub pcm_info: Summary,
    /// PCM_SET_PARAMS.
    pub set_params: Summary,
    /// PCM_PREPARE.
    pub prepare: Summary,
    /// PCM_START.
    pub start: Summary,
    /// PCM_STOP.
    pub stop: Summary,
    /// PCM_RELEASE.
    pub release: Summary,
    /// The five requests of one cycle, back to back.
    pub cycle: Summary,
    /// An eventfd ping-pong between two bench threads on one CPU.
    pub wakeup_floor_same_cpu: Summary,
    /// The same across two CPUs (absent on one CPU): the machine's floor
    /// under a kick-then-call round trip between a guest and a daemon.
    pub wakeup_floor_cross_cpu: Option<Summary>,
    /// The daemon's memory at the end.
    pub memory: Option<Memory>,
}

fn timed(snd: &mut SndDriver, request: &[u8], response: usize) -> Result<Duration> {
    let reply: ControlReply = snd.control(request, response)?;
    match reply.status() {
        Some(Status::Ok) => Ok(reply.elapsed),
        other => Err(Error::Protocol(format!(
            "control request {:#x} answered {other:?}",
            u32::from_le_bytes([request[0], request[1], request[2], request[3]])
        ))),
    }
}

/// Runs `control`.
pub fn run(spec: &TargetSpec, opts: &ControlOptions) -> Result<ControlReport> {
    let mut target = Target::open(spec, &Layout::null(1, 1))?;
    if let Some(pid) = target.pid() {
        procfs::reset_peak_rss(pid);
    }
    let mut snd = target.connect()?;
    let streams = snd.config().streams;
    let (stream, _) = pick_streams(&mut snd, 1, 0)?[0];
    let info = query_info(code::PCM_INFO, 0, streams, size::PCM_INFO as u32);
    let info_len = size::HDR + size::PCM_INFO * streams as usize;
    let params = SetParams {
        stream_id: stream,
        buffer_bytes: BUFFER_PERIODS * PERIOD_BYTES,
        period_bytes: PERIOD_BYTES,
        features: 0,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: PcmRate::R48000.code(),
        padding: 0,
    }
    .encode();
    let cycle_requests: [&[u8]; 5] = [
        &params,
        &pcm_hdr(code::PCM_PREPARE, stream),
        &pcm_hdr(code::PCM_START, stream),
        &pcm_hdr(code::PCM_STOP, stream),
        &pcm_hdr(code::PCM_RELEASE, stream),
    ];

    let mut info_us = Vec::with_capacity(opts.iterations);
    let mut steps_us: [Vec<f64>; 5] = Default::default();
    let mut cycle_us = Vec::with_capacity(opts.iterations);
    let as_us = |d: Duration| d.as_secs_f64() * 1e6;
    for i in 0..WARMUP + opts.iterations {
        let t = timed(&mut snd, &info, info_len)?;
        let mut cycle = Duration::ZERO;
        let mut steps = [Duration::ZERO; 5];
        for (step, req) in steps.iter_mut().zip(cycle_requests) {
            *step = timed(&mut snd, req, size::HDR)?;
            cycle += *step;
        }
        if i >= WARMUP {
            info_us.push(as_us(t));
            for (v, s) in steps_us.iter_mut().zip(steps) {
                v.push(as_us(s));
            }
            cycle_us.push(as_us(cycle));
        }
    }
    let memory = target.pid().map(procfs::memory).transpose()?;
    snd.disconnect()?;
    target.check_alive()?;
    let wakeup_floor_same_cpu = floor::wakeup_round_trip(opts.iterations, (0, 0))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let wakeup_floor_cross_cpu = if cpus > 1 {
        Some(floor::wakeup_round_trip(opts.iterations, (0, 1))?)
    } else {
        None
    };
    let [set_params, prepare, start, stop, release] = steps_us.map(|mut v| Summary::of(&mut v));
    Ok(ControlReport {
        iterations: opts.iterations,
        pcm_info_streams: streams,
        pcm_info: Summary::of(&mut info_us),
        set_params,
        prepare,
        start,
        stop,
        release,
        cycle: Summary::of(&mut cycle_us),
        wakeup_floor_same_cpu,
        wakeup_floor_cross_cpu,
        memory,
    })
}
