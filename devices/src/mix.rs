//! Mixing: several guest streams of one direction on one host device.
//!
//! [`MixDevice`] wraps a device that takes one opener per direction (a
//! pad, an ALSA `hw:` PCM) so that several streams can share it:
//!
//! - Playback: every stream's sink is a [`MixInput`] that queues its
//!   frames in its own bounded FIFO. The *bus* owns the one inner sink. On
//!   every write it emits the frames due on its own timeline (`rate` frames
//!   per second since the first frame, [`lag`](PlayBus::lag) behind, so
//!   that a stream whose tick comes a little late is still in time),
//!   summing one frame from each FIFO (an empty one is silence) with
//!   saturation for integer formats. An input's first frames (and its
//!   frames after a pause) are placed where the bus is *now*: no burst.
//!   One input alone passes bit-exact. What is queued when the last input
//!   closes is written out; then the inner sink is closed.
//! - Capture: every stream's source reads from one shared ring with its
//!   own cursor; the bus reads the inner source when the most advanced
//!   reader needs frames, so every reader gets the same frames. A reader
//!   that falls more than the ring behind skips ahead (counted).
//!
//! Every stream on a mixed direction must use the same format, rate and
//! channel count (the config checks it; an open that differs is
//! `Unsupported`). Nothing is allocated per period: the FIFOs, the ring
//! and the mix buffers are made at open.

use crate::Sample;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{
    CaptureSource, Clock, DeviceError, DeviceListener, Format, HostDevice, PlaybackSink,
    StreamDirection, StreamParams,
};

/// Frames mixed per inner write.
const CHUNK_FRAMES: usize = 1024;
/// The least the playback bus runs behind the clock (a stream's period
/// tick may come this late and still be mixed in time).
const MIN_LAG: Duration = Duration::from_millis(30);

/// Whether the mixer can sum frames of this format (linear PCM: integers
/// with saturation, floats summed).
pub fn format_mixes(format: Format) -> bool {
    sample_kind(format).is_some()
}

fn sample_kind(format: Format) -> Option<Sample> {
    format.sample()
}

impl Sample {
    fn bytes(self) -> usize {
        match self {
            Sample::Int { bytes, .. } => bytes,
            Sample::F32 => 4,
            Sample::F64 => 8,
        }
    }

    /// The sample as a value centred on zero (exact: f64 holds every
    /// 32-bit integer, and sums of many).
    fn decode(self, b: &[u8]) -> f64 {
        match self {
            Sample::Int {
                bytes,
                bits,
                signed,
            } => {
                let mut raw = 0u64;
                for (i, x) in b.iter().take(bytes).enumerate() {
                    raw |= u64::from(*x) << (8 * i);
                }
                let mask = (1u64 << bits) - 1;
                let v = raw & mask;
                let v = if signed {
                    if v & (1u64 << (bits - 1)) != 0 {
                        (v | !mask) as i64
                    } else {
                        v as i64
                    }
                } else {
                    v as i64 - (1i64 << (bits - 1))
                };
                v as f64
            }
            Sample::F32 => {
                let mut a = [0u8; 4];
                for (d, s) in a.iter_mut().zip(b) {
                    *d = *s;
                }
                f64::from(f32::from_le_bytes(a))
            }
            Sample::F64 => {
                let mut a = [0u8; 8];
                for (d, s) in a.iter_mut().zip(b) {
                    *d = *s;
                }
                f64::from_le_bytes(a)
            }
        }
    }

    /// Writes `v`, saturated to the format's range for integers.
    fn encode(self, v: f64, out: &mut [u8]) {
        match self {
            Sample::Int {
                bytes,
                bits,
                signed,
            } => {
                let half = 1i64 << (bits - 1);
                let v = (v.round() as i64).clamp(-half, half - 1);
                // Signed: two's complement over the whole container (the
                // bits above the significant ones are the sign).
                let raw = if signed { v as u64 } else { (v + half) as u64 };
                for (i, o) in out.iter_mut().take(bytes).enumerate() {
                    *o = (raw >> (8 * i)) as u8;
                }
            }
            Sample::F32 => {
                for (o, s) in out.iter_mut().zip((v as f32).to_le_bytes()) {
                    *o = s;
                }
            }
            Sample::F64 => {
                for (o, s) in out.iter_mut().zip(v.to_le_bytes()) {
                    *o = s;
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn same_shape(a: &StreamParams, b: &StreamParams) -> bool {
    a.format == b.format && a.rate == b.rate && a.channels == b.channels
}

fn shape_mismatch(dir: &str, open: &StreamParams, asked: &StreamParams) -> DeviceError {
    DeviceError::Unsupported(format!(
        "the device mixes its {dir} streams, which must share one format: it runs {} {} Hz {} ch, not {} {} Hz {} ch",
        open.format, open.rate, open.channels, asked.format, asked.rate, asked.channels
    ))
}

/// A byte FIFO of whole frames with a fixed capacity.
struct Fifo {
    buf: Vec<u8>,
    head: usize,
    len: usize,
}

impl Fifo {
    fn new(bytes: usize) -> Fifo {
        Fifo {
            buf: vec![0; bytes],
            head: 0,
            len: 0,
        }
    }

    fn free(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Appends what fits; returns how many bytes did.
    fn push(&mut self, data: &[u8]) -> usize {
        let cap = self.buf.len();
        let n = data.len().min(self.free());
        let tail = (self.head + self.len) % cap.max(1);
        let first = n.min(cap - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..n - first].copy_from_slice(&data[first..n]);
        self.len += n;
        n
    }

    /// Copies `out.len()` bytes from `skip` bytes past the front.
    fn peek(&self, skip: usize, out: &mut [u8]) {
        let cap = self.buf.len();
        let start = (self.head + skip) % cap.max(1);
        let first = out.len().min(cap - start);
        let n = out.len();
        out[..first].copy_from_slice(&self.buf[start..start + first]);
        out[first..].copy_from_slice(&self.buf[..n - first]);
    }

    fn pop(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = (self.head + n) % self.buf.len().max(1);
        self.len -= n;
    }
}

/// One playback stream's place on the bus.
struct Slot {
    id: u64,
    generation: u64,
    open: bool,
    fifo: Fifo,
    /// The bus frame the FIFO's first frame belongs at (never behind
    /// `emitted`).
    start: u64,
}

/// The playback bus of a mixed device.
struct PlayBus {
    inner: Option<Box<dyn PlaybackSink>>,
    params: Option<StreamParams>,
    /// Bumped whenever the inner sink goes: inputs of an older generation
    /// are told `Gone`.
    generation: u64,
    slots: Vec<Slot>,
    next_id: u64,
    /// When the bus's frame 0 was due (the first frame written).
    t0: Option<Instant>,
    /// Bus frames written to (or skipped on) the inner sink.
    emitted: u64,
    /// How far the bus runs behind the clock, in frames.
    lag: u64,
    frame_bytes: usize,
    acc: Vec<f64>,
    out: Vec<u8>,
}

impl PlayBus {
    fn new() -> PlayBus {
        PlayBus {
            inner: None,
            params: None,
            generation: 0,
            slots: Vec::new(),
            next_id: 0,
            t0: None,
            emitted: 0,
            lag: 0,
            frame_bytes: 0,
            acc: Vec::new(),
            out: Vec::new(),
        }
    }

    fn current(&self) -> impl Iterator<Item = &Slot> {
        let g = self.generation;
        self.slots.iter().filter(move |s| s.generation == g)
    }

    /// The bus frame due now (before the lag).
    fn position(&self, now: Instant) -> u64 {
        let (Some(t0), Some(p)) = (self.t0, self.params) else {
            return 0;
        };
        let ns = now.saturating_duration_since(t0).as_nanos();
        u64::try_from(ns * u128::from(p.rate) / 1_000_000_000).unwrap_or(u64::MAX)
    }

    /// The end of what the current FIFOs hold, on the bus's frames.
    fn queued_end(&self) -> u64 {
        let fb = self.frame_bytes.max(1) as u64;
        self.current()
            .filter(|s| s.fifo.len > 0)
            .map(|s| s.start + s.fifo.len as u64 / fb)
            .max()
            .unwrap_or(self.emitted)
    }

    /// Writes the bus frames up to `target` (silence alone is never
    /// written: when no input has frames, the bus skips the time).
    fn emit(&mut self, target: u64) -> Result<(), DeviceError> {
        // Nothing queued before the first input's next frame: skipped.
        let fb = self.frame_bytes.max(1);
        if let Some(first) = self
            .current()
            .filter(|s| s.fifo.len >= fb)
            .map(|s| s.start)
            .min()
        {
            self.emitted = self.emitted.max(first.min(target));
        }
        let end = target.min(self.queued_end());
        let result = self.emit_to(end);
        if result.is_ok() && target > self.emitted {
            self.emitted = target;
        }
        // Closed inputs leave once they are played out.
        self.slots.retain(|s| s.open || s.fifo.len > 0);
        result
    }

    fn emit_to(&mut self, end: u64) -> Result<(), DeviceError> {
        let Some(params) = self.params else {
            return Ok(());
        };
        let Some(kind) = sample_kind(params.format) else {
            return Err(DeviceError::Unsupported(format!(
                "cannot mix {} frames",
                params.format
            )));
        };
        let fb = self.frame_bytes;
        let sb = kind.bytes();
        let generation = self.generation;
        while self.emitted < end {
            let e = self.emitted;
            let n = usize::try_from(end - e)
                .unwrap_or(usize::MAX)
                .min(CHUNK_FRAMES);
            // Which inputs have frames in [e, e + n): (slot, from, count).
            let covers = |s: &Slot| -> Option<(usize, usize)> {
                if s.generation != generation || s.fifo.len == 0 || s.start >= e + n as u64 {
                    return None;
                }
                let from = usize::try_from(s.start.saturating_sub(e)).unwrap_or(0);
                let count = (s.fifo.len / fb).min(n - from);
                (count > 0).then_some((from, count))
            };
            let contributing = self.slots.iter().filter(|s| covers(s).is_some()).count();
            let out = &mut self.out[..n * fb];
            params.format.fill_silence(out);
            if contributing == 1 {
                // One stream alone: its bytes, untouched.
                if let Some((s, (from, count))) = self
                    .slots
                    .iter_mut()
                    .find_map(|s| covers(s).map(|c| (s, c)))
                {
                    s.fifo.peek(0, &mut out[from * fb..(from + count) * fb]);
                    s.fifo.pop(count * fb);
                    s.start = e + (from + count) as u64;
                }
            } else if contributing > 1 {
                let samples = n * fb / sb;
                let acc = &mut self.acc[..samples];
                acc.fill(0.0);
                let mut frame = frame_scratch();
                for s in self.slots.iter_mut() {
                    let Some((from, count)) = covers(s) else {
                        continue;
                    };
                    for f in 0..count {
                        s.fifo.peek(f * fb, &mut frame[..fb]);
                        let base = (from + f) * fb / sb;
                        for (c, b) in frame[..fb].chunks_exact(sb).enumerate() {
                            acc[base + c] += kind.decode(b);
                        }
                    }
                    s.fifo.pop(count * fb);
                    s.start = e + (from + count) as u64;
                }
                for (v, o) in acc.iter().zip(out.chunks_exact_mut(sb)) {
                    kind.encode(*v, o);
                }
            }
            self.emitted = e + n as u64;
            if let Some(sink) = self.inner.as_mut() {
                // Holding the bus's lock across this call is fine only
                // because `PlaybackSink::write` never blocks.
                if let Err(err) = sink.write(&self.out[..n * fb]) {
                    if matches!(err, DeviceError::Gone) {
                        self.gone();
                    }
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// The inner sink went away: every current input is told `Gone`.
    fn gone(&mut self) {
        self.inner = None;
        self.generation += 1;
        self.t0 = None;
        self.emitted = 0;
        self.slots.retain(|s| s.open);
    }
}

/// Room for one frame of any format (at most 8 bytes x 255 channels),
/// on the stack.
fn frame_scratch() -> [u8; 8 * 255] {
    [0u8; 8 * 255]
}

/// The capture bus of a mixed device.
struct CapBus {
    inner: Option<Box<dyn CaptureSource>>,
    params: Option<StreamParams>,
    generation: u64,
    ring: Vec<u8>,
    /// Bytes read from the inner source since it opened.
    end: u64,
    /// (reader id, generation, bytes it has read).
    readers: Vec<(u64, u64, u64)>,
    next_id: u64,
}

impl CapBus {
    /// Reads the inner source on until `want` bytes have been read.
    fn fill_to(&mut self, want: u64) -> Result<(), DeviceError> {
        let cap = self.ring.len() as u64;
        while self.end < want {
            let at = (self.end % cap) as usize;
            let n = usize::try_from(want - self.end)
                .unwrap_or(usize::MAX)
                .min(self.ring.len() - at);
            let Some(src) = self.inner.as_mut() else {
                return Err(DeviceError::Gone);
            };
            if let Err(e) = src.read(&mut self.ring[at..at + n]) {
                if matches!(e, DeviceError::Gone) {
                    self.inner = None;
                    self.generation += 1;
                }
                return Err(e);
            }
            self.end += n as u64;
        }
        Ok(())
    }
}

struct Shared {
    play: Mutex<PlayBus>,
    cap: Mutex<CapBus>,
    play_dropped: AtomicU64,
    cap_skipped: AtomicU64,
}

/// A host device whose streams of one direction (or both) are mixed.
pub struct MixDevice {
    inner: Arc<dyn HostDevice>,
    mix_playback: bool,
    mix_capture: bool,
    shared: Arc<Shared>,
}

impl MixDevice {
    /// Wraps `inner`; the directions not mixed go straight to it.
    pub fn new(inner: Arc<dyn HostDevice>, mix_playback: bool, mix_capture: bool) -> MixDevice {
        MixDevice {
            inner,
            mix_playback,
            mix_capture,
            shared: Arc::new(Shared {
                play: Mutex::new(PlayBus::new()),
                cap: Mutex::new(CapBus {
                    inner: None,
                    params: None,
                    generation: 0,
                    ring: Vec::new(),
                    end: 0,
                    readers: Vec::new(),
                    next_id: 0,
                }),
                play_dropped: AtomicU64::new(0),
                cap_skipped: AtomicU64::new(0),
            }),
        }
    }
}

impl HostDevice for MixDevice {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn is_attached(&self) -> bool {
        self.inner.is_attached()
    }

    /// As the device it mixes onto.
    fn may_block(&self) -> bool {
        self.inner.may_block()
    }

    fn set_listener(&self, listener: Arc<dyn DeviceListener>) {
        self.inner.set_listener(listener);
    }

    fn check_params(&self, dir: StreamDirection, params: &StreamParams) -> Result<(), DeviceError> {
        let mixed = match dir {
            StreamDirection::Playback => self.mix_playback,
            StreamDirection::Capture => self.mix_capture,
        };
        if mixed {
            if !format_mixes(params.format) {
                return Err(DeviceError::Unsupported(format!(
                    "cannot mix {} frames",
                    params.format
                )));
            }
            let open = match dir {
                StreamDirection::Playback => lock(&self.shared.play).params,
                StreamDirection::Capture => lock(&self.shared.cap).params,
            };
            if let Some(open) = open.filter(|o| !same_shape(o, params)) {
                let d = if dir == StreamDirection::Playback {
                    "playback"
                } else {
                    "capture"
                };
                return Err(shape_mismatch(d, &open, params));
            }
        }
        self.inner.check_params(dir, params)
    }

    fn open_playback(&self, params: &StreamParams) -> Result<Box<dyn PlaybackSink>, DeviceError> {
        if !self.mix_playback {
            return self.inner.open_playback(params);
        }
        Ok(Box::new(self.open_input(params)?))
    }

    fn open_capture(&self, params: &StreamParams) -> Result<Box<dyn CaptureSource>, DeviceError> {
        if !self.mix_capture {
            return self.inner.open_capture(params);
        }
        Ok(Box::new(self.open_output(params)?))
    }

    fn probe_now(&self) -> bool {
        self.inner.probe_now()
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut c = self.inner.counters();
        if self.mix_playback {
            c.push((
                "mix_playback_dropped_bytes",
                self.shared.play_dropped.load(Ordering::Relaxed),
            ));
        }
        if self.mix_capture {
            c.push((
                "mix_capture_skipped_bytes",
                self.shared.cap_skipped.load(Ordering::Relaxed),
            ));
        }
        c
    }
}

impl MixDevice {
    fn open_input(&self, params: &StreamParams) -> Result<MixInput, DeviceError> {
        if !format_mixes(params.format) {
            return Err(DeviceError::Unsupported(format!(
                "cannot mix {} frames",
                params.format
            )));
        }
        let mut bus = lock(&self.shared.play);
        let fb = params.frame_bytes() as usize;
        let period_frames = u64::from(params.period_bytes) / fb.max(1) as u64;
        match (&bus.inner, bus.params) {
            (Some(_), Some(open)) if !same_shape(&open, params) => {
                return Err(shape_mismatch("playback", &open, params));
            }
            (Some(_), _) => {}
            (None, _) => {
                let sink = self.inner.open_playback(params)?;
                let min_lag = u64::from(params.rate) * MIN_LAG.as_millis() as u64 / 1000;
                bus.inner = Some(sink);
                bus.params = Some(*params);
                bus.t0 = None;
                bus.emitted = 0;
                bus.lag = min_lag.max(period_frames);
                bus.frame_bytes = fb;
                bus.out = vec![0; CHUNK_FRAMES * fb];
                bus.acc = vec![0.0; CHUNK_FRAMES * usize::from(params.channels)];
                bus.slots.retain(|s| s.open);
            }
        }
        // Room for the lag, two periods and 100 ms more.
        let frames = bus.lag + 2 * period_frames.max(1) + u64::from(params.rate) / 10;
        let id = bus.next_id;
        bus.next_id += 1;
        let generation = bus.generation;
        bus.slots.push(Slot {
            id,
            generation,
            open: true,
            fifo: Fifo::new(usize::try_from(frames).unwrap_or(0) * fb),
            start: 0,
        });
        Ok(MixInput {
            shared: Arc::clone(&self.shared),
            id,
            generation,
        })
    }

    fn open_output(&self, params: &StreamParams) -> Result<MixOutput, DeviceError> {
        let mut bus = lock(&self.shared.cap);
        match (&bus.inner, bus.params) {
            (Some(_), Some(open)) if !same_shape(&open, params) => {
                return Err(shape_mismatch("capture", &open, params));
            }
            (Some(_), _) => {}
            (None, _) => {
                let src = self.inner.open_capture(params)?;
                let fb = u64::from(params.frame_bytes()).max(1);
                let bytes = params
                    .bytes_per_second()
                    .max(4 * u64::from(params.buffer_bytes));
                let bytes = bytes.div_ceil(fb) * fb;
                bus.inner = Some(src);
                bus.params = Some(*params);
                bus.ring = vec![0; usize::try_from(bytes).unwrap_or(0)];
                bus.end = 0;
            }
        }
        let id = bus.next_id;
        bus.next_id += 1;
        let (generation, end) = (bus.generation, bus.end);
        bus.readers.push((id, generation, end));
        Ok(MixOutput {
            shared: Arc::clone(&self.shared),
            id,
            generation,
        })
    }
}

/// A playback stream's sink on a mixed device.
pub struct MixInput {
    shared: Arc<Shared>,
    id: u64,
    generation: u64,
}

impl MixInput {
    fn write_at(&mut self, frames: &[u8], now: Instant) -> Result<(), DeviceError> {
        let mut bus = lock(&self.shared.play);
        if bus.generation != self.generation || bus.inner.is_none() {
            return Err(DeviceError::Gone);
        }
        if bus.t0.is_none() {
            bus.t0 = Some(now);
        }
        let pos = bus.position(now);
        let target = pos.saturating_sub(bus.lag);
        // What is due goes out first: frames an input left queued when it
        // paused are played out as they were, and its new frames start
        // from where the bus is now.
        bus.emit(target)?;
        let emitted = bus.emitted;
        let fb = bus.frame_bytes.max(1);
        let Some(slot) = bus.slots.iter_mut().find(|s| s.id == self.id) else {
            return Err(DeviceError::Gone);
        };
        if slot.fifo.len == 0 {
            // Starting, or after a pause: from where the bus is now.
            slot.start = pos.max(emitted);
        }
        let whole = frames.len() / fb * fb;
        let took = slot.fifo.push(&frames[..whole]);
        if took < frames.len() {
            self.shared
                .play_dropped
                .fetch_add((frames.len() - took) as u64, Ordering::Relaxed);
        }
        bus.emit(target)
    }
}

impl PlaybackSink for MixInput {
    fn clock(&self) -> Clock {
        lock(&self.shared.play)
            .inner
            .as_ref()
            .map_or(Clock::Daemon, |s| s.clock())
    }

    fn write(&mut self, frames: &[u8]) -> Result<(), DeviceError> {
        self.write_at(frames, Instant::now())
    }

    fn latency_bytes(&self) -> u32 {
        let bus = lock(&self.shared.play);
        let own = bus
            .slots
            .iter()
            .find(|s| s.id == self.id)
            .map_or(0, |s| s.fifo.len);
        let inner = bus.inner.as_ref().map_or(0, |s| s.latency_bytes());
        u32::try_from(own).unwrap_or(u32::MAX).saturating_add(inner)
    }

    fn xruns(&self) -> u64 {
        lock(&self.shared.play)
            .inner
            .as_ref()
            .map_or(0, |s| s.xruns())
    }
}

impl Drop for MixInput {
    fn drop(&mut self) {
        let mut bus = lock(&self.shared.play);
        if bus.generation != self.generation {
            bus.slots.retain(|s| s.id != self.id);
            return;
        }
        if let Some(s) = bus.slots.iter_mut().find(|s| s.id == self.id) {
            s.open = false;
        }
        if bus.current().any(|s| s.open) {
            // The others go on; this one's frames are mixed as they fall due.
            return;
        }
        // The last one: what is queued is written, then the sink closes.
        let _ = bus.emit(u64::MAX);
        bus.inner = None;
        bus.params = None;
        bus.t0 = None;
        bus.emitted = 0;
        bus.slots.retain(|s| s.open);
    }
}

/// A capture stream's source on a mixed device.
pub struct MixOutput {
    shared: Arc<Shared>,
    id: u64,
    generation: u64,
}

impl CaptureSource for MixOutput {
    fn clock(&self) -> Clock {
        lock(&self.shared.cap)
            .inner
            .as_ref()
            .map_or(Clock::Daemon, |s| s.clock())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), DeviceError> {
        let mut bus = lock(&self.shared.cap);
        if bus.generation != self.generation || bus.inner.is_none() {
            return Err(DeviceError::Gone);
        }
        let Some(cursor) = bus.readers.iter().find(|r| r.0 == self.id).map(|r| r.2) else {
            return Err(DeviceError::Gone);
        };
        let want = cursor + buf.len() as u64;
        bus.fill_to(want)?;
        let cap = bus.ring.len() as u64;
        let mut cursor = cursor;
        if bus.end - cursor > cap {
            // Fell behind the ring: skip to what it still holds.
            let skip_to = bus.end - cap;
            self.shared
                .cap_skipped
                .fetch_add(skip_to - cursor, Ordering::Relaxed);
            cursor = skip_to;
        }
        let avail = usize::try_from(bus.end - cursor).unwrap_or(usize::MAX);
        let n = buf.len().min(avail);
        let mut done = 0;
        while done < n {
            let at = ((cursor + done as u64) % cap) as usize;
            let k = (n - done).min(bus.ring.len() - at);
            buf[done..done + k].copy_from_slice(&bus.ring[at..at + k]);
            done += k;
        }
        if let Some(p) = bus.params {
            p.format.fill_silence(&mut buf[n..]);
        }
        if let Some(r) = bus.readers.iter_mut().find(|r| r.0 == self.id) {
            r.2 = cursor + n as u64;
        }
        Ok(())
    }

    fn latency_bytes(&self) -> u32 {
        let bus = lock(&self.shared.cap);
        let behind = bus
            .readers
            .iter()
            .find(|r| r.0 == self.id)
            .map_or(0, |r| bus.end.saturating_sub(r.2));
        let inner = bus.inner.as_ref().map_or(0, |s| s.latency_bytes());
        u32::try_from(behind)
            .unwrap_or(u32::MAX)
            .saturating_add(inner)
    }

    fn xruns(&self) -> u64 {
        lock(&self.shared.cap)
            .inner
            .as_ref()
            .map_or(0, |s| s.xruns())
    }
}

impl Drop for MixOutput {
    fn drop(&mut self) {
        let mut bus = lock(&self.shared.cap);
        bus.readers.retain(|r| r.0 != self.id);
        let g = bus.generation;
        if bus.generation == self.generation && !bus.readers.iter().any(|r| r.1 == g) {
            bus.inner = None;
            bus.params = None;
            bus.end = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inner device that records what its one sink gets, and whose
    /// one source counts up.
    #[derive(Default)]
    struct Rec {
        written: Mutex<Vec<u8>>,
        sinks: AtomicU64,
        sources: AtomicU64,
        produced: Mutex<u8>,
        gone: std::sync::atomic::AtomicBool,
    }

    struct RecDev(Arc<Rec>);
    struct RecSink(Arc<Rec>);
    struct RecSource(Arc<Rec>);

    impl HostDevice for RecDev {
        fn kind(&self) -> &'static str {
            "rec"
        }
        fn is_attached(&self) -> bool {
            true
        }
        fn check_params(&self, _: StreamDirection, _: &StreamParams) -> Result<(), DeviceError> {
            Ok(())
        }
        fn open_playback(&self, _: &StreamParams) -> Result<Box<dyn PlaybackSink>, DeviceError> {
            if self.0.sinks.fetch_add(1, Ordering::SeqCst) != 0 {
                return Err(DeviceError::Unsupported("one opener".into()));
            }
            Ok(Box::new(RecSink(self.0.clone())))
        }
        fn open_capture(&self, _: &StreamParams) -> Result<Box<dyn CaptureSource>, DeviceError> {
            if self.0.sources.fetch_add(1, Ordering::SeqCst) != 0 {
                return Err(DeviceError::Unsupported("one opener".into()));
            }
            Ok(Box::new(RecSource(self.0.clone())))
        }
    }

    impl PlaybackSink for RecSink {
        fn clock(&self) -> Clock {
            Clock::Daemon
        }
        fn write(&mut self, frames: &[u8]) -> Result<(), DeviceError> {
            if self.0.gone.load(Ordering::SeqCst) {
                return Err(DeviceError::Gone);
            }
            self.0.written.lock().unwrap().extend_from_slice(frames);
            Ok(())
        }
        fn latency_bytes(&self) -> u32 {
            0
        }
    }

    impl Drop for RecSink {
        fn drop(&mut self) {
            self.0.sinks.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl CaptureSource for RecSource {
        fn clock(&self) -> Clock {
            Clock::Daemon
        }
        fn read(&mut self, buf: &mut [u8]) -> Result<(), DeviceError> {
            let mut p = self.0.produced.lock().unwrap();
            for b in buf {
                *b = *p;
                *p = p.wrapping_add(1);
            }
            Ok(())
        }
        fn latency_bytes(&self) -> u32 {
            0
        }
    }

    impl Drop for RecSource {
        fn drop(&mut self) {
            self.0.sources.fetch_sub(1, Ordering::SeqCst);
        }
    }

    const RATE: u32 = 48000;

    fn params() -> StreamParams {
        // S16 mono, 10 ms periods.
        StreamParams {
            format: Format::S16,
            rate: RATE,
            channels: 1,
            period_bytes: 960,
            buffer_bytes: 3840,
        }
    }

    fn mixer() -> (Arc<Rec>, MixDevice) {
        let rec = Arc::new(Rec::default());
        let dev = MixDevice::new(Arc::new(RecDev(rec.clone())), true, true);
        (rec, dev)
    }

    fn s16(samples: impl IntoIterator<Item = i16>) -> Vec<u8> {
        samples.into_iter().flat_map(i16::to_le_bytes).collect()
    }

    /// Compares without printing thousands of samples.
    fn check(got: &[i16], want: &[i16]) {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        assert!(
            first.is_none() && got.len() == want.len(),
            "{} samples, want {}; first difference at {first:?}: {:?} vs {:?}",
            got.len(),
            want.len(),
            first.map(|i| &got[i..(i + 8).min(got.len())]),
            first.map(|i| &want[i..(i + 8).min(want.len())]),
        );
    }

    fn samples(bytes: &[u8]) -> Vec<i16> {
        bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    /// A pseudo-random full-range signal.
    fn noise(seed: u32) -> impl Fn(u32) -> i16 {
        move |i| {
            let x = i
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            (x >> 16) as u16 as i16
        }
    }

    fn at(t0: Instant, period: u32) -> Instant {
        t0 + Duration::from_millis(10 * u64::from(period))
    }

    fn period(k: u32, signal: &impl Fn(u32) -> i16) -> Vec<u8> {
        s16((0..480).map(|i| signal(k * 480 + i)))
    }

    #[test]
    fn one_input_passes_bit_exact_and_nothing_is_lost_at_close() {
        let (rec, dev) = mixer();
        let sig = noise(1);
        let t0 = Instant::now();
        let mut a = dev.open_input(&params()).unwrap();
        for k in 0..20 {
            a.write_at(&period(k, &sig), at(t0, k)).unwrap();
        }
        // The bus runs behind: the last periods wait for the close.
        assert!(rec.written.lock().unwrap().len() < 20 * 960);
        drop(a);
        let got = samples(&rec.written.lock().unwrap());
        let want: Vec<i16> = (0..20 * 480).map(&sig).collect();
        check(&got, &want);
    }

    #[test]
    fn two_inputs_are_summed_exactly() {
        let (rec, dev) = mixer();
        let sa = |i: u32| ((i % 200) as i16 - 100) * 100;
        let sb = |i: u32| ((i * 7 % 50) as i16 - 25) * 3;
        let t0 = Instant::now();
        let mut a = dev.open_input(&params()).unwrap();
        let mut b = dev.open_input(&params()).unwrap();
        for k in 0..20 {
            a.write_at(&period(k, &sa), at(t0, k)).unwrap();
            b.write_at(&period(k, &sb), at(t0, k)).unwrap();
        }
        drop(a);
        drop(b);
        let got = samples(&rec.written.lock().unwrap());
        let want: Vec<i16> = (0..20 * 480).map(|i| sa(i) + sb(i)).collect();
        check(&got, &want);
    }

    #[test]
    fn sums_saturate_at_the_i16_extremes() {
        let (rec, dev) = mixer();
        let t0 = Instant::now();
        let mut a = dev.open_input(&params()).unwrap();
        let mut b = dev.open_input(&params()).unwrap();
        let up = s16([30000, -30000, 32767, -32768].repeat(120));
        let down = s16([10000, -10000, 1, -1].repeat(120));
        a.write_at(&up, t0).unwrap();
        b.write_at(&down, t0).unwrap();
        drop(b);
        drop(a);
        let got = samples(&rec.written.lock().unwrap());
        assert_eq!(got, [32767, -32768, 32767, -32768].repeat(120));
    }

    #[test]
    fn an_input_that_starts_later_joins_where_the_bus_is() {
        let (rec, dev) = mixer();
        let sa = |i: u32| (i % 1000) as i16 * 10;
        let sb = |i: u32| (i % 13) as i16 + 1;
        let t0 = Instant::now();
        let mut a = dev.open_input(&params()).unwrap();
        let mut b = None;
        for k in 0..20 {
            a.write_at(&period(k, &sa), at(t0, k)).unwrap();
            if k >= 8 {
                // Opens 80 ms in: its first frame is bus frame 3840.
                let b = b.get_or_insert_with(|| dev.open_input(&params()).unwrap());
                b.write_at(&period(k - 8, &sb), at(t0, k)).unwrap();
            }
        }
        drop(b);
        drop(a);
        let got = samples(&rec.written.lock().unwrap());
        let want: Vec<i16> = (0..20 * 480)
            .map(|i| sa(i) + if i >= 3840 { sb(i - 3840) } else { 0 })
            .collect();
        assert_eq!(got.len(), want.len(), "no burst, nothing lost");
        check(&got, &want);
    }

    #[test]
    fn an_input_that_pauses_goes_on_from_where_the_bus_is() {
        let (rec, dev) = mixer();
        let sa = |i: u32| (i % 999) as i16 + 1;
        let t0 = Instant::now();
        let mut a = dev.open_input(&params()).unwrap();
        for k in 0..10 {
            a.write_at(&period(k, &sa), at(t0, k)).unwrap();
        }
        // A 200 ms pause (STOP, START): the queued tail is played out, the
        // next frames wait for their time; no frame is lost or doubled.
        for k in 10..20 {
            a.write_at(&period(k, &sa), at(t0, k + 20)).unwrap();
        }
        drop(a);
        let got = samples(&rec.written.lock().unwrap());
        let want: Vec<i16> = (0..20 * 480).map(sa).collect();
        check(&got, &want);
    }

    #[test]
    fn the_last_close_closes_the_inner_sink_and_other_shapes_are_refused() {
        let (rec, dev) = mixer();
        let a = dev.open_playback(&params()).unwrap();
        let b = dev.open_playback(&params()).unwrap();
        assert_eq!(rec.sinks.load(Ordering::SeqCst), 1, "one inner sink");
        let other = StreamParams {
            rate: 44100,
            ..params()
        };
        assert!(matches!(
            dev.open_playback(&other),
            Err(DeviceError::Unsupported(_))
        ));
        assert!(dev.check_params(StreamDirection::Playback, &other).is_err());
        drop(a);
        assert_eq!(rec.sinks.load(Ordering::SeqCst), 1);
        drop(b);
        assert_eq!(rec.sinks.load(Ordering::SeqCst), 0, "closed with the last");
        // Idle, any shape may open it again.
        let c = dev.open_playback(&other).unwrap();
        assert_eq!(rec.sinks.load(Ordering::SeqCst), 1);
        drop(c);
    }

    #[test]
    fn a_gone_device_is_gone_for_every_input_and_comes_back() {
        let (rec, dev) = mixer();
        let t0 = Instant::now();
        let mut a = dev.open_input(&params()).unwrap();
        let mut b = dev.open_input(&params()).unwrap();
        a.write_at(&period(0, &noise(2)), t0).unwrap();
        rec.gone.store(true, Ordering::SeqCst);
        let late = at(t0, 10);
        assert!(matches!(
            a.write_at(&period(1, &noise(2)), late),
            Err(DeviceError::Gone)
        ));
        assert!(matches!(
            b.write_at(&period(1, &noise(3)), late),
            Err(DeviceError::Gone)
        ));
        // Each stream's worker drops its endpoint and opens again.
        drop(a);
        rec.gone.store(false, Ordering::SeqCst);
        let mut a = dev.open_input(&params()).unwrap();
        assert!(matches!(
            b.write_at(&period(2, &noise(3)), late),
            Err(DeviceError::Gone)
        ));
        drop(b);
        let before = rec.written.lock().unwrap().len();
        a.write_at(&period(0, &noise(4)), late).unwrap();
        drop(a);
        let got = samples(&rec.written.lock().unwrap()[before..]);
        assert_eq!(got, samples(&period(0, &noise(4))));
        assert_eq!(rec.sinks.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn every_capture_reader_gets_the_same_frames() {
        let (rec, dev) = mixer();
        let mut a = dev.open_capture(&params()).unwrap();
        let mut b = dev.open_capture(&params()).unwrap();
        assert_eq!(rec.sources.load(Ordering::SeqCst), 1, "one inner source");
        let (mut x, mut y) = (vec![0u8; 960], vec![0u8; 960]);
        let mut all_a = Vec::new();
        let mut all_b = Vec::new();
        for _ in 0..10 {
            a.read(&mut x).unwrap();
            all_a.extend_from_slice(&x);
            b.read(&mut y[..480]).unwrap();
            b.read(&mut y[480..]).unwrap();
            all_b.extend_from_slice(&y);
        }
        assert_eq!(all_a, all_b);
        // The inner source's bytes, in order, once.
        let want: Vec<u8> = (0..all_a.len()).map(|i| i as u8).collect();
        assert_eq!(all_a, want);
        drop(a);
        assert_eq!(rec.sources.load(Ordering::SeqCst), 1);
        drop(b);
        assert_eq!(rec.sources.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_capture_reader_that_falls_behind_skips_ahead() {
        let (_rec, dev) = mixer();
        let mut a = dev.open_capture(&params()).unwrap();
        let mut b = dev.open_capture(&params()).unwrap();
        let mut x = vec![0u8; 960];
        // The ring holds one second (96000 bytes): A reads 2 s alone.
        for _ in 0..200 {
            a.read(&mut x).unwrap();
        }
        let mut y = vec![0u8; 960];
        b.read(&mut y).unwrap();
        // B skipped to the oldest byte the ring holds: 1 s behind A.
        let expect: Vec<u8> = (0..960)
            .map(|i| ((192_000 - 96_000 + i) % 256) as u8)
            .collect();
        assert_eq!(y, expect);
        assert!(dev
            .counters()
            .contains(&("mix_capture_skipped_bytes", 96_000)));
    }

    #[test]
    fn only_linear_formats_mix() {
        assert!(format_mixes(Format::S16) && format_mixes(Format::Float));
        assert!(!format_mixes(Format::MuLaw) && !format_mixes(Format::DsdU8));
        // Round trips are exact where a value fits.
        for f in [
            Format::S24,
            Format::U24_3,
            Format::S32,
            Format::U8,
            Format::Float,
        ] {
            let k = sample_kind(f).unwrap();
            let mut b = vec![0u8; k.bytes()];
            k.encode(-100.0, &mut b);
            assert_eq!(k.decode(&b), -100.0, "{f}");
        }
        let k = sample_kind(Format::S24).unwrap();
        let mut b = [0u8; 4];
        k.encode(1e9, &mut b);
        assert_eq!(k.decode(&b), f64::from((1 << 23) - 1), "saturated");
    }
}
