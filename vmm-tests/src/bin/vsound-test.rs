//! `vsound-test`: the vsound daemon plus plugins that exist only for tests.
//!
//! - `kind = "test-hang"`: a device whose I/O works for `hang_after_ms`
//!   after each open, then blocks forever (a host device that hangs); each
//!   open takes `open_ms` first (a sound server that is slow to connect,
//!   or, with a very large value, an open that never returns).
//! - `kind = "test-clock"`: a device on a clock of its own that runs `ppm`
//!   parts per million fast (or slow) against `CLOCK_MONOTONIC`, as a sound
//!   card's crystal does: playback frames leave its buffer at that rate into
//!   the file `record` (when closed, it plays out what it holds); capture
//!   frames arrive at that rate, each the next `u32` of a counter from 1.
//!   It keeps a cushion of `cushion_ms` after the guest's period (an ALSA
//!   PCM keeps more); an underrun, an overrun or a frame that does not fit
//!   is counted as an xrun, so a stream that loses or makes up a frame
//!   shows it.
//!
//! The shipped `vsound` binary has none of these.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use vsound_devices::registry::{self, Plugin};
use vsound_devices::{
    CaptureSource, Clock, DeviceError, Fill, HostDevice, PlaybackSink, Position, StreamDirection,
    StreamParams,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HangOptions {
    #[serde(default = "default_hang_after")]
    hang_after_ms: u64,
    #[serde(default)]
    open_ms: u64,
}

fn default_hang_after() -> u64 {
    200
}

struct HangDevice {
    hang_after: Duration,
    open: Duration,
}

impl HangDevice {
    fn open(&self) -> HangEnd {
        std::thread::sleep(self.open);
        HangEnd {
            opened: Instant::now(),
            hang_after: self.hang_after,
        }
    }
}

struct HangEnd {
    opened: Instant,
    hang_after: Duration,
}

impl HangEnd {
    fn io(&self) -> Result<(), DeviceError> {
        if self.opened.elapsed() >= self.hang_after {
            // Blocks forever, like a driver stuck in the kernel.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Ok(())
    }
}

impl PlaybackSink for HangEnd {
    fn clock(&self) -> Clock {
        Clock::Daemon
    }
    fn write(&mut self, _frames: &[u8]) -> Result<(), DeviceError> {
        self.io()
    }
    fn latency_bytes(&self) -> u32 {
        0
    }
}

impl CaptureSource for HangEnd {
    fn clock(&self) -> Clock {
        Clock::Daemon
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<(), DeviceError> {
        buf.fill(0);
        self.io()
    }
    fn latency_bytes(&self) -> u32 {
        0
    }
}

impl HostDevice for HangDevice {
    fn kind(&self) -> &'static str {
        "test-hang"
    }
    fn is_attached(&self) -> bool {
        true
    }
    fn check_params(&self, _dir: StreamDirection, _p: &StreamParams) -> Result<(), DeviceError> {
        Ok(())
    }
    fn open_playback(&self, _p: &StreamParams) -> Result<Box<dyn PlaybackSink>, DeviceError> {
        Ok(Box::new(self.open()))
    }
    fn open_capture(&self, _p: &StreamParams) -> Result<Box<dyn CaptureSource>, DeviceError> {
        Ok(Box::new(self.open()))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockOptions {
    /// How much faster than `CLOCK_MONOTONIC` the device's clock runs.
    ppm: f64,
    #[serde(default = "default_cushion")]
    cushion_ms: u32,
    #[serde(default = "default_buffer")]
    buffer_ms: u32,
    /// Where playback frames go.
    record: Option<PathBuf>,
}

fn default_cushion() -> u32 {
    5
}

fn default_buffer() -> u32 {
    100
}

struct ClockDevice {
    opts: ClockOptions,
}

/// The device's clock: frames it moved since `since`, at its rate, on top
/// of `base`; stands still while paused.
struct DeviceTime {
    rate: f64,
    base: u64,
    since: Option<Instant>,
}

impl DeviceTime {
    fn position(&self, now: Instant) -> u64 {
        match self.since {
            Some(s) => {
                self.base + (now.saturating_duration_since(s).as_secs_f64() * self.rate) as u64
            }
            None => self.base,
        }
    }
    fn run(&mut self, now: Instant) {
        if self.since.is_none() {
            self.since = Some(now);
        }
    }
    fn hold(&mut self, now: Instant) {
        self.base = self.position(now);
        self.since = None;
    }
}

/// What both directions share: the clock, the buffer, the counts.
struct ClockEnd {
    time: DeviceTime,
    frame: usize,
    buffer: VecDeque<u8>,
    capacity: usize,
    cushion: usize,
    primed: bool,
    /// Frames moved through the buffer by the device so far.
    moved: u64,
    xruns: u64,
    /// Playback: frames put in the buffer or dropped for want of room,
    /// since the open (the cushion included).
    taken: u64,
}

impl ClockEnd {
    fn new(o: &ClockOptions, p: &StreamParams) -> ClockEnd {
        let frame = p.frame_bytes().max(1) as usize;
        let rate = f64::from(p.rate) * (1.0 + o.ppm * 1e-6);
        let frames_of = |ms: u32| (u64::from(p.rate) * u64::from(ms) / 1000) as usize;
        let period = p.period_bytes as usize / frame;
        let capacity = frames_of(o.buffer_ms).max(4 * period);
        ClockEnd {
            time: DeviceTime {
                rate,
                base: 0,
                since: None,
            },
            frame,
            buffer: VecDeque::with_capacity(capacity * frame),
            capacity,
            cushion: period + frames_of(o.cushion_ms),
            primed: false,
            moved: 0,
            xruns: 0,
            taken: 0,
        }
    }
    fn frames(&self) -> usize {
        self.buffer.len() / self.frame
    }
    /// Frames the device moved since last looked at.
    fn due(&self, now: Instant) -> u64 {
        self.time.position(now).saturating_sub(self.moved)
    }
    fn pause(&mut self, paused: bool) {
        let now = Instant::now();
        if paused {
            self.time.hold(now);
        } else if self.primed {
            self.time.run(now);
        }
    }
}

struct ClockSink {
    end: ClockEnd,
    out: Option<BufWriter<File>>,
}

impl ClockSink {
    /// Plays what fell due (into the file); an empty buffer stops the
    /// device (an underrun).
    fn play_due(&mut self, now: Instant) {
        let due = self.end.due(now);
        let have = self.end.frames() as u64;
        let n = due.min(have) as usize * self.end.frame;
        if let Some(out) = self.out.as_mut() {
            let (a, b) = self.end.buffer.as_slices();
            let a_n = n.min(a.len());
            let _ = out.write_all(&a[..a_n]);
            let _ = out.write_all(&b[..n - a_n]);
        }
        self.end.buffer.drain(..n);
        self.end.moved += due.min(have);
        if due > have && self.end.primed {
            self.end.xruns += 1;
            self.end.primed = false;
            self.end.time = DeviceTime {
                rate: self.end.time.rate,
                base: 0,
                since: None,
            };
            self.end.moved = 0;
        }
    }
}

impl PlaybackSink for ClockSink {
    fn clock(&self) -> Clock {
        Clock::Device
    }
    fn write(&mut self, frames: &[u8]) -> Result<(), DeviceError> {
        let now = Instant::now();
        self.play_due(now);
        let e = &mut self.end;
        if !e.primed {
            e.buffer.extend(std::iter::repeat_n(0, e.cushion * e.frame));
            e.taken += e.cushion as u64;
            e.primed = true;
            e.time.run(now);
        }
        let room = e.capacity.saturating_sub(e.frames()) * e.frame;
        let whole = frames.len() / e.frame * e.frame;
        if whole > room {
            e.xruns += 1;
        }
        e.buffer.extend(&frames[..whole.min(room)]);
        e.taken += (whole / e.frame) as u64;
        Ok(())
    }
    fn position(&self) -> Option<Position> {
        let e = &self.end;
        let due = if e.time.since.is_some() {
            e.due(Instant::now())
        } else {
            0
        };
        let queued = (e.frames() as u64).saturating_sub(due);
        Some(Position {
            taken: e.taken,
            played: e.taken.saturating_sub(queued),
            keep: e.cushion as u64,
        })
    }
    fn latency_bytes(&self) -> u32 {
        self.end.buffer.len() as u32
    }
    fn xruns(&self) -> u64 {
        self.end.xruns
    }
    fn set_paused(&mut self, paused: bool) -> Result<(), DeviceError> {
        self.play_due(Instant::now());
        self.end.pause(paused);
        Ok(())
    }
    fn fill_frames(&self) -> Option<Fill> {
        if !self.end.primed || self.end.time.since.is_none() {
            return None;
        }
        let queued = (self.end.frames() as u64).saturating_sub(self.end.due(Instant::now()));
        Some(Fill {
            frames: queued as i64,
            room: (self.end.capacity as u64).saturating_sub(queued) as i64,
        })
    }
}

impl Drop for ClockSink {
    fn drop(&mut self) {
        // Closing plays out what the device holds.
        let rest: Vec<u8> = self.end.buffer.drain(..).collect();
        if let Some(out) = self.out.as_mut() {
            let _ = out.write_all(&rest);
            let _ = out.flush();
        }
    }
}

struct ClockSource {
    end: ClockEnd,
    /// The next counter value the device captures.
    next: u32,
}

impl ClockSource {
    /// Captures what fell due; a full buffer drops its oldest frame (an
    /// overrun).
    fn capture_due(&mut self, now: Instant) {
        let due = self.end.due(now);
        let e = &mut self.end;
        let mut overran = false;
        for _ in 0..due {
            if e.frames() >= e.capacity {
                e.buffer.drain(..e.frame);
                overran = true;
            }
            let word = self.next.to_le_bytes();
            self.next = self.next.wrapping_add(1);
            e.buffer.extend((0..e.frame).map(|i| word[i % 4]));
        }
        e.moved += due;
        if overran {
            e.xruns += 1;
        }
    }
}

impl CaptureSource for ClockSource {
    fn clock(&self) -> Clock {
        Clock::Device
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.read_part(buf, 0).map(|_| ())
    }
    fn read_part(&mut self, buf: &mut [u8], more: usize) -> Result<usize, DeviceError> {
        let now = Instant::now();
        self.end.time.run(now);
        self.capture_due(now);
        let e = &mut self.end;
        let whole = buf.len() / e.frame * e.frame;
        if !e.primed {
            if e.frames() < (whole + more) / e.frame + e.cushion {
                buf.fill(0);
                return Ok(0);
            }
            e.primed = true;
        }
        let n = whole.min(e.buffer.len());
        for (d, s) in buf.iter_mut().zip(e.buffer.drain(..n)) {
            *d = s;
        }
        buf[n..].fill(0);
        if n < whole {
            // Silence made up: a gap the guest hears.
            e.xruns += 1;
            e.primed = false;
        }
        Ok(n)
    }
    fn latency_bytes(&self) -> u32 {
        self.end.buffer.len() as u32
    }
    fn xruns(&self) -> u64 {
        self.end.xruns
    }
    fn set_paused(&mut self, paused: bool) -> Result<(), DeviceError> {
        self.capture_due(Instant::now());
        self.end.pause(paused);
        if !paused {
            // Started again: what it holds is stale, and it primes again.
            self.end.time.run(Instant::now());
        }
        Ok(())
    }
    fn fill_frames(&self) -> Option<Fill> {
        if !self.end.primed || self.end.time.since.is_none() {
            return None;
        }
        let have =
            (self.end.frames() as u64 + self.end.due(Instant::now())).min(self.end.capacity as u64);
        Some(Fill {
            frames: have as i64,
            room: (self.end.capacity as u64).saturating_sub(have) as i64,
        })
    }
}

impl HostDevice for ClockDevice {
    fn kind(&self) -> &'static str {
        "test-clock"
    }
    fn is_attached(&self) -> bool {
        true
    }
    fn check_params(&self, _dir: StreamDirection, _p: &StreamParams) -> Result<(), DeviceError> {
        Ok(())
    }
    fn open_playback(&self, p: &StreamParams) -> Result<Box<dyn PlaybackSink>, DeviceError> {
        let out = match &self.opts.record {
            Some(path) => Some(BufWriter::new(File::create(path).map_err(DeviceError::Io)?)),
            None => None,
        };
        Ok(Box::new(ClockSink {
            end: ClockEnd::new(&self.opts, p),
            out,
        }))
    }
    fn open_capture(&self, p: &StreamParams) -> Result<Box<dyn CaptureSource>, DeviceError> {
        Ok(Box::new(ClockSource {
            end: ClockEnd::new(&self.opts, p),
            next: 1,
        }))
    }
}

fn parse_clock(opts: &toml::Table) -> Result<ClockOptions, String> {
    let o = ClockOptions::deserialize(opts.clone()).map_err(|e| e.message().to_owned())?;
    if !(-10_000.0..=10_000.0).contains(&o.ppm) {
        return Err("`ppm` must be within ±10000".into());
    }
    Ok(o)
}

fn parse(opts: &toml::Table) -> Result<HangOptions, String> {
    HangOptions::deserialize(opts.clone()).map_err(|e| e.message().to_owned())
}

fn main() -> std::process::ExitCode {
    registry::register(Plugin {
        kind: "test-hang",
        validate: |opts| parse(opts).map(drop),
        build: |_name, opts| {
            let o = parse(&opts)?;
            Ok(Arc::new(HangDevice {
                hang_after: Duration::from_millis(o.hang_after_ms),
                open: Duration::from_millis(o.open_ms),
            }) as Arc<dyn HostDevice>)
        },
    });
    registry::register(Plugin {
        kind: "test-clock",
        validate: |opts| parse_clock(opts).map(drop),
        build: |_name, opts| {
            let opts = parse_clock(&opts)?;
            Ok(Arc::new(ClockDevice { opts }) as Arc<dyn HostDevice>)
        },
    });
    vsound::cli::run()
}
