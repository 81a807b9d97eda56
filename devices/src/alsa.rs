//! The `alsa` device: a guest stream plays to, or records from, an ALSA PCM
//! (`pcm = "default"`, `"hw:0,0"`, `"plughw:1"`: any name alsa-lib knows).
//!
//! The stream's lane never calls into ALSA: each open stream has an I/O
//! thread of its own ([`io`]) that opens the PCM, moves frames between it
//! and a wait-free ring the lane pushes into or pops from, and closes it.
//! The thread's calls never block either: the PCM is opened non-blocking,
//! a write hands over the whole frames the PCM has room for, a read takes
//! what the PCM has captured. Under- and overruns
//! are recovered on the spot, without `snd_pcm_recover`, which sleeps while a
//! suspended card resumes. A stream keeps a cushion in the PCM (a period,
//! or a sound server's quantum, and [`CUSHION_MS`]): playback puts that
//! much silence ahead of the guest's frames whenever the PCM (re)starts
//! (and reports it as [`Position::keep`]: what the PCM must hold to play
//! on), and capture reads nothing until the PCM holds that much more than
//! asked for.
//!
//! # The device's clock
//!
//! A PCM keeps its own time (a card's crystal, a sound server's graph).
//! Playback reports its position (`position`: frames taken since the open,
//! and of them played, `taken` less `snd_pcm_delay`), and the daemon
//! completes each guest buffer once its last frame has played. Capture
//! reports its fill level (`fill_frames`: captured frames not yet read),
//! and the daemon paces the guest to keep it level (`device_clock.rs` in
//! the daemon). Either way the guest plays and records at the device's
//! rate. STOP (or a VM pause) pauses the PCM (`snd_pcm_pause`; a capture
//! PCM that cannot pause is dropped and starts with a new cushion, a
//! playback one plays out what it holds) so that no underrun follows.
//!
//! # Capabilities
//!
//! What the PCM accepts (each virtio-snd format and rate it takes with
//! interleaved access, and the channel counts with them) is read when the
//! device is probed, at startup and at every attach, by refining its
//! configuration space without setting one. `check_params` (the guest's
//! SET_PARAMS, answered on the vhost-user queue thread) reads that and
//! never opens the PCM: an open of a sound server's PCM takes tens of
//! milliseconds, and one that hangs would hang the guest's control queue.
//!
//! # Closing
//!
//! A playback PCM is drained when the stream closes: what the guest played
//! is heard to its end. The drain runs on the device's monitor thread,
//! which closes the PCM once its frames have played (or after the buffer's
//! length and [`DRAIN_SLACK`]), so closing never blocks the stream.
//!
//! # Attach and detach
//!
//! The device is in one of two states (`Shared::attached`):
//!
//! - **attached**: the PCM opened and took a configuration the last time it
//!   was tried. Nothing probes it, so an open stream is never disturbed.
//! - **detached**: the PCM could not be opened (missing at startup, or
//!   failing with an error that means the card or sound server went away:
//!   `ENODEV`, `ENOENT`, `EBADFD`, `EIO`, ...). A stream, or an open, that
//!   hits such an error returns [`DeviceError::Gone`] and moves the device
//!   here.
//!
//! One monitor thread per device does the rest: while detached it probes the
//! PCM (opens it, applies any configuration, closes it) with a backoff
//! doubling from `retry_ms` to [`MAX_RETRY`]; when a probe succeeds the
//! device is attached again. Every [`DeviceListener`] call is made from that
//! thread, never from the I/O path, so a listener may take the daemon's
//! locks and wait for the stream that reported the error to let go of the
//! device. A missing PCM is never fatal: the device is built detached.

use std::ffi::CString;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use alsa::pcm::{Access, Format as AlsaFormat, HwParams, PCM};
use alsa::{Direction, ValueOr};
use serde::Deserialize;

use crate::{
    CaptureSource, DeviceError, DeviceListener, Format, HostDevice, PlaybackSink, Position,
    StreamDirection, StreamParams,
};

mod io;

/// The first delay before probing a detached PCM again, unless `retry_ms`
/// says otherwise.
const DEFAULT_RETRY_MS: u64 = 500;

/// The longest delay between two probes of a detached PCM (the backoff
/// doubles up to it, or stays at `retry_ms` if that is longer): a card
/// plugged back or a sound server restarted is noticed within a second.
/// A probe is an open and a close; alsa-lib's complaints about the missing
/// PCM are rate-limited ([`crate::alsa_log`]).
pub const MAX_RETRY: Duration = Duration::from_secs(1);

/// The least cushion a stream keeps in its PCM, in milliseconds: what the
/// device takes at a time (a period of its own, or a sound server's
/// quantum, [`SERVER_QUANTUM`]), and this much slack for a late wake-up of
/// the daemon.
pub const CUSHION_MS: u32 = 30;

/// The quantum the daemon asks a sound server for, as `frames/rate`: the
/// node latency of every PipeWire stream the daemon opens (through the
/// `pipewire` ALSA plugin), unless its environment sets `PIPEWIRE_LATENCY`
/// (see [`set_server_latency`]). The plugin would ask for the guest's
/// period, which PipeWire rounds down to a power of two: 256 frames (5 ms)
/// for a 10 ms period. The plugin's thread in the daemon must answer each
/// graph cycle within a quantum, and on a busy host without a real-time
/// priority a thread late by 5 ms is common: PipeWire then plays a quantum
/// of silence in the middle of the guest's sound. A quantum of 1,024
/// frames (21 ms) gives it four times as long.
pub const SERVER_QUANTUM: (u32, u32) = (1024, 48_000);

/// Sets `PIPEWIRE_LATENCY` to [`SERVER_QUANTUM`] unless it is set already
/// (an operator's choice wins). Call it before any thread starts: the
/// environment is not thread-safe.
pub fn set_server_latency() {
    const VAR: &str = "PIPEWIRE_LATENCY";
    if std::env::var_os(VAR).is_none() {
        let (frames, rate) = SERVER_QUANTUM;
        std::env::set_var(VAR, format!("{frames}/{rate}"));
    }
}

/// What the device takes from (or gives to) its PCM at a time, in frames,
/// at the least: a sound server's quantum ([`SERVER_QUANTUM`]) at `rate`,
/// rounded up.
fn server_quantum_frames(rate: u32) -> u64 {
    let (frames, at) = SERVER_QUANTUM;
    (u64::from(rate) * u64::from(frames)).div_ceil(u64::from(at))
}

/// How long a draining PCM may take beyond the length of its buffer.
pub const DRAIN_SLACK: Duration = Duration::from_millis(250);

/// How long a drained PCM stays open after its last frame left the PCM's
/// buffer: a sound server's plugin still holds a quantum or two of them.
const DRAIN_TAIL: Duration = Duration::from_millis(100);

/// How often the monitor thread looks at PCMs being drained.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// Options of a `kind = "alsa"` device.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlsaOptions {
    /// The ALSA PCM name (`"default"`, `"hw:0,0"`, `"plughw:1"`, ...).
    pub pcm: String,
    /// Milliseconds before the first attempt to reopen a missing PCM; the
    /// delay then doubles up to 10 s.
    #[serde(default = "default_retry_ms")]
    pub retry_ms: u64,
}

fn default_retry_ms() -> u64 {
    DEFAULT_RETRY_MS
}

impl AlsaOptions {
    /// Checks what serde cannot: a usable PCM name and a non-zero delay.
    pub fn check(&self) -> Result<(), String> {
        if self.pcm.is_empty() {
            return Err("`pcm` must not be empty".to_owned());
        }
        if self.pcm.contains('\0') {
            return Err("`pcm` must not contain a NUL character".to_owned());
        }
        if self.retry_ms == 0 {
            return Err("`retry_ms` must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// An ALSA PCM as a host device.
pub struct AlsaDevice {
    pcm: CString,
    shared: Arc<Shared>,
    monitor: Option<JoinHandle<()>>,
}

impl AlsaDevice {
    /// Builds the device named `name` (the config table's key). Fails only
    /// on bad options or if the monitor thread cannot start: a PCM that does
    /// not open now gives a detached device.
    pub fn new(name: &str, opts: AlsaOptions) -> Result<Self, String> {
        opts.check()?;
        crate::alsa_log::install();
        let pcm = CString::new(opts.pcm.as_str())
            .map_err(|_| "`pcm` must not contain a NUL character".to_owned())?;
        let (attached, caps) = probe_pcm(&pcm);
        let shared = Arc::new(Shared::new(
            describe(name, &opts.pcm),
            attached,
            Duration::from_millis(opts.retry_ms),
        ));
        *lock(&shared.caps) = caps;
        if attached {
            log::info!("{}: present", shared.name);
        } else {
            log::warn!("{}: not present, will retry", shared.name);
        }
        let (probed, caps_of) = (pcm.clone(), Arc::clone(&shared));
        let monitor = spawn_monitor(name, Arc::clone(&shared), move || {
            let (present, caps) = probe_pcm(&probed);
            if present {
                *lock(&caps_of.caps) = caps;
            }
            present
        })?;
        Ok(AlsaDevice {
            pcm,
            shared,
            monitor: Some(monitor),
        })
    }

    /// The ALSA PCM name this device opens.
    pub fn pcm_name(&self) -> &str {
        self.pcm.to_str().unwrap_or("?")
    }

    /// What an I/O thread needs to open this device's PCM.
    fn opener(&self) -> Opener {
        Opener {
            pcm: self.pcm.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Opens a device's PCM for a stream: what its I/O thread ([`io`]) is
/// given, so that the open runs there.
#[derive(Clone)]
struct Opener {
    pcm: CString,
    shared: Arc<Shared>,
}

impl Opener {
    fn pcm_name(&self) -> &str {
        self.pcm.to_str().unwrap_or("?")
    }

    /// Runs `f`, which opens the PCM; if it finds the PCM gone, the device
    /// is detached (nothing else would notice while no stream is open).
    fn watching<T>(&self, f: impl FnOnce(u64) -> Result<T, DeviceError>) -> Result<T, DeviceError> {
        // Read before opening: if the device detaches and comes back while
        // this runs, its errors must not detach the new attachment.
        let generation = self.shared.generation.load(Ordering::SeqCst);
        let result = f(generation);
        match &result {
            Ok(_) => self.shared.request_probe(),
            Err(DeviceError::Gone) => self.shared.report_gone(generation),
            Err(_) => {}
        }
        result
    }

    fn open(&self, params: &StreamParams, dir: Direction) -> Result<Stream, DeviceError> {
        self.watching(|generation| self.try_open_stream(params, dir, generation))
    }

    fn try_open_stream(
        &self,
        params: &StreamParams,
        dir: Direction,
        generation: u64,
    ) -> Result<Stream, DeviceError> {
        let pcm = match PCM::open(&self.pcm, dir, true) {
            // A PCM that takes one opener (`hw:`) still draining the last
            // stream's end: the new stream comes first, the drain is cut.
            Err(e) if e.errno() == libc::EBUSY && self.shared.cut_drains() => {
                PCM::open(&self.pcm, dir, true).map_err(|e| open_error(&e))?
            }
            r => r.map_err(|e| open_error(&e))?,
        };
        let geometry = configure_hw(&pcm, params, self.pcm_name())?;
        configure_sw(&pcm, dir, geometry.period).map_err(|e| setup_error(&e))?;
        let period = usize::try_from(geometry.period).unwrap_or(0);
        let buffer = usize::try_from(geometry.buffer).unwrap_or(0);
        let cushion = cushion_frames(params, period, buffer);
        pcm.prepare().map_err(|e| setup_error(&e))?;
        if dir == Direction::Capture {
            pcm.start().map_err(|e| setup_error(&e))?;
        }
        Ok(Stream {
            pcm: ManuallyDrop::new(pcm),
            dir,
            shared: Arc::clone(&self.shared),
            generation,
            frame_bytes: frame_bytes(params)?,
            period,
            buffer,
            cushion,
            can_pause: geometry.can_pause,
            paused: Paused::No,
            rate: params.rate,
            primed: false,
            gone: false,
            xruns: 0,
            lost_frames: 0,
            taken: 0,
            silence: 0,
            silence_end: 0,
        })
    }
}

impl Drop for AlsaDevice {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(monitor) = self.monitor.take() {
            // A listener that drops the last reference to its device runs on
            // the monitor thread: it cannot join itself, and it returns on
            // its own once it sees `stop`.
            if monitor.thread().id() != thread::current().id() && monitor.join().is_err() {
                log::error!("{}: monitor thread panicked", self.shared.name);
            }
        }
    }
}

impl HostDevice for AlsaDevice {
    fn probe_now(&self) -> bool {
        if self.is_attached() {
            return false;
        }
        self.shared.request_probe();
        true
    }

    fn kind(&self) -> &'static str {
        "alsa"
    }

    fn is_attached(&self) -> bool {
        self.shared.attached.load(Ordering::SeqCst)
    }

    fn set_listener(&self, listener: Arc<dyn DeviceListener>) {
        *lock(&self.shared.listener) = Some(listener);
    }

    /// Checks the parameters against what the PCM accepted when it was last
    /// probed ([`Caps`], read at every attach), without opening it: this
    /// runs on the vhost-user queue thread, and an open can take long (a
    /// sound server that hangs would hang the guest's control queue). A
    /// direction whose capabilities could not be read (the PCM was busy)
    /// passes, and the open at START tells. A detached device is `Gone`.
    fn check_params(&self, dir: StreamDirection, params: &StreamParams) -> Result<(), DeviceError> {
        frames_of(params)?;
        if !self.is_attached() {
            return Err(DeviceError::Gone);
        }
        let caps = lock(&self.shared.caps);
        let known = match dir {
            StreamDirection::Playback => caps.playback.as_deref(),
            StreamDirection::Capture => caps.capture.as_deref(),
        };
        match known {
            None => Ok(()),
            Some(accepts) if accepts.iter().any(|a| a.takes(params)) => Ok(()),
            Some(accepts) => Err(DeviceError::Unsupported(refusal(
                params,
                accepts,
                self.pcm_name(),
            ))),
        }
    }

    /// Never blocks: the PCM is opened, and then served, by the stream's
    /// own I/O thread ([`io`]).
    fn may_block(&self) -> bool {
        false
    }

    /// A detached device is `Gone`, parameters its probe refused are
    /// `Unsupported`, at once; the rest is the open on the stream's I/O
    /// thread, whose failure the sink reports as `Gone`.
    fn open_playback(&self, params: &StreamParams) -> Result<Box<dyn PlaybackSink>, DeviceError> {
        self.check_params(StreamDirection::Playback, params)?;
        Ok(Box::new(io::playback(self.opener(), *params)?))
    }

    fn open_capture(&self, params: &StreamParams) -> Result<Box<dyn CaptureSource>, DeviceError> {
        self.check_params(StreamDirection::Capture, params)?;
        Ok(Box::new(io::capture(self.opener(), *params)?))
    }
}

/// The ALSA sample format for a virtio-snd one. Every virtio-snd format has
/// one: all are little-endian; `S20`/`S24` (and unsigned) are LSB-justified
/// in a 32-bit container, `S24_3` and friends are packed in 3 bytes.
fn alsa_format(format: Format) -> AlsaFormat {
    match format {
        Format::MuLaw => AlsaFormat::MuLaw,
        Format::ALaw => AlsaFormat::ALaw,
        Format::S8 => AlsaFormat::S8,
        Format::U8 => AlsaFormat::U8,
        Format::S16 => AlsaFormat::S16LE,
        Format::U16 => AlsaFormat::U16LE,
        Format::S18_3 => AlsaFormat::S183LE,
        Format::U18_3 => AlsaFormat::U183LE,
        Format::S20_3 => AlsaFormat::S203LE,
        Format::U20_3 => AlsaFormat::U203LE,
        Format::S24_3 => AlsaFormat::S243LE,
        Format::U24_3 => AlsaFormat::U243LE,
        Format::S20 => AlsaFormat::S20LE,
        Format::U20 => AlsaFormat::U20LE,
        Format::S24 => AlsaFormat::S24LE,
        Format::U24 => AlsaFormat::U24LE,
        Format::S32 => AlsaFormat::S32LE,
        Format::U32 => AlsaFormat::U32LE,
        Format::Float => AlsaFormat::FloatLE,
        Format::Float64 => AlsaFormat::Float64LE,
        Format::DsdU8 => AlsaFormat::DSDU8,
        Format::DsdU16 => AlsaFormat::DSDU16LE,
        Format::DsdU32 => AlsaFormat::DSDU32LE,
        Format::Iec958Subframe => AlsaFormat::IEC958SubframeLE,
    }
}

fn frame_bytes(params: &StreamParams) -> Result<usize, DeviceError> {
    match usize::try_from(params.frame_bytes()) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(DeviceError::Unsupported(format!(
            "{} channels",
            params.channels
        ))),
    }
}

/// Period and buffer sizes, in frames, as the PCM chose them.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    period: i64,
    buffer: i64,
    /// The PCM can pause (`snd_pcm_pause`).
    can_pause: bool,
}

/// Sets the hardware parameters for `params`. Access, format, channels and
/// rate must be exactly the stream's; period and buffer sizes are the
/// nearest the PCM takes (the daemon reads what it chose).
fn configure_hw(pcm: &PCM, params: &StreamParams, name: &str) -> Result<Geometry, DeviceError> {
    let (period, _) = frames_of(params)?;
    let buffer = buffer_frames(params)?;
    let refused = |what: String| move |e: alsa::Error| param_error(&e, what, name);
    let hw = HwParams::any(pcm).map_err(|e| setup_error(&e))?;
    hw.set_access(Access::RWInterleaved)
        .map_err(refused("interleaved access".to_owned()))?;
    hw.set_format(alsa_format(params.format))
        .map_err(refused(format!("format {}", params.format)))?;
    hw.set_channels(u32::from(params.channels))
        .map_err(refused(format!("{} channels", params.channels)))?;
    let rate = || format!("rate {} Hz", params.rate);
    hw.set_rate(params.rate, ValueOr::Nearest)
        .map_err(refused(rate()))?;
    match hw.get_rate() {
        Ok(r) if r == params.rate => {}
        Ok(r) => {
            return Err(DeviceError::Unsupported(format!(
                "{} (ALSA PCM `{name}` offers {r} Hz)",
                rate()
            )))
        }
        Err(e) => return Err(param_error(&e, rate(), name)),
    }
    let sizes = || format!("period of {period} frames, buffer of {buffer} frames");
    hw.set_period_size_near(period, ValueOr::Nearest)
        .map_err(refused(sizes()))?;
    hw.set_buffer_size_near(buffer).map_err(refused(sizes()))?;
    pcm.hw_params(&hw).map_err(|e| {
        if e.errno() == libc::EBUSY {
            setup_error(&e)
        } else {
            param_error(&e, sizes(), name)
        }
    })?;
    let chosen = Geometry {
        period: hw.get_period_size().map_err(|e| setup_error(&e))?,
        buffer: hw.get_buffer_size().map_err(|e| setup_error(&e))?,
        can_pause: hw.can_pause(),
    };
    if chosen.period != period || chosen.buffer != buffer {
        log::debug!(
            "ALSA PCM `{name}`: period of {} frames, buffer of {} frames instead of {period}, {buffer}",
            chosen.period,
            chosen.buffer
        );
    }
    Ok(chosen)
}

/// The PCM buffer a stream asks for, in frames: room for the guest's whole
/// buffer (the daemon hands each guest buffer over as soon as it fits, and
/// completes it once played) behind the cushion, and what the device takes
/// at a time still to be taken, with slack (see [`cushion_frames`]). The
/// ring between the stream's lane and its I/O thread is as large.
fn buffer_frames(params: &StreamParams) -> Result<i64, DeviceError> {
    let (period, guest_buffer) = frames_of(params)?;
    let slack = i64::from(params.rate) * i64::from(CUSHION_MS) / 1000;
    let take = period.max(i64::try_from(server_quantum_frames(params.rate)).unwrap_or(i64::MAX));
    Ok(guest_buffer.saturating_add(
        take.saturating_mul(2)
            .saturating_add(period)
            .saturating_add(slack.saturating_mul(2)),
    ))
}

/// The guest's period and buffer in frames, if they make sense (a period
/// of at least a frame, no longer than the buffer).
fn frames_of(params: &StreamParams) -> Result<(i64, i64), DeviceError> {
    let frame = params.frame_bytes();
    if frame == 0 {
        return Err(DeviceError::Unsupported(format!(
            "{} channels",
            params.channels
        )));
    }
    let period = i64::from(params.period_bytes / frame);
    let guest_buffer = i64::from(params.buffer_bytes / frame);
    if period == 0 || guest_buffer < period {
        return Err(DeviceError::Unsupported(format!(
            "period of {} bytes in a buffer of {} bytes",
            params.period_bytes, params.buffer_bytes
        )));
    }
    Ok((period, guest_buffer))
}

/// The cushion a stream keeps in its PCM, in frames: the device takes a
/// period (or a sound server's quantum, if longer) at a time, so the fill
/// drops by that much at once, and a wake-up of the daemon may be
/// [`CUSHION_MS`] late; never more than leaves room in the buffer for a
/// guest period on top (a tick hands one over) and a take not yet taken.
fn cushion_frames(params: &StreamParams, period: usize, buffer: usize) -> usize {
    let slack = u64::from(params.rate) * u64::from(CUSHION_MS) / 1000;
    let take =
        period.max(usize::try_from(server_quantum_frames(params.rate)).unwrap_or(usize::MAX));
    let guest_period = params.period_bytes / params.frame_bytes().max(1);
    let room = usize::try_from(guest_period)
        .unwrap_or(usize::MAX)
        .saturating_add(take);
    take.saturating_add(usize::try_from(slack).unwrap_or(usize::MAX))
        .min(buffer.saturating_sub(room))
        .max(1)
}

/// Playback starts as soon as a period is queued; a poll would wake once a
/// period can move.
fn configure_sw(pcm: &PCM, dir: Direction, period: i64) -> alsa::Result<()> {
    let sw = pcm.sw_params_current()?;
    if dir == Direction::Playback {
        sw.set_start_threshold(period)?;
    }
    sw.set_avail_min(period)?;
    // `snd_pcm_status` then says when its numbers held, on the daemon's
    // clock (the I/O thread's delay-locked loop, `dll.rs`). A PCM that
    // cannot is read as of the call.
    let _ = sw
        .set_tstamp_mode(true)
        .and_then(|()| sw.set_tstamp_type(alsa::pcm::TstampType::Monotonic));
    pcm.sw_params(&sw)
}

/// Whether an errno from an open PCM means the card (or the sound server
/// behind the PCM) went away, rather than a passing condition. (`EPIPE` and
/// `ESTRPIPE`, xruns and suspends, are dealt with before this is asked.)
fn is_gone(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENODEV
            | libc::ENXIO
            | libc::ENOENT
            | libc::EBADFD
            | libc::EIO
            | libc::ENOTCONN
            | libc::ESHUTDOWN
            | libc::ECONNRESET
            | libc::ECONNREFUSED
    )
}

fn io_error(e: &alsa::Error) -> DeviceError {
    DeviceError::Io(std::io::Error::from_raw_os_error(e.errno()))
}

/// `snd_pcm_open` failed: the PCM is not there, unless it is only busy or
/// the host is out of resources.
fn open_error(e: &alsa::Error) -> DeviceError {
    match e.errno() {
        libc::EBUSY | libc::ENOMEM | libc::EMFILE | libc::ENFILE => io_error(e),
        _ => DeviceError::Gone,
    }
}

/// A setup call other than a parameter choice failed.
fn setup_error(e: &alsa::Error) -> DeviceError {
    if is_gone(e.errno()) {
        DeviceError::Gone
    } else {
        io_error(e)
    }
}

/// The PCM refused a parameter (or vanished while being asked).
fn param_error(e: &alsa::Error, what: String, name: &str) -> DeviceError {
    if is_gone(e.errno()) {
        DeviceError::Gone
    } else {
        DeviceError::Unsupported(format!("{what} (ALSA PCM `{name}`: {e})"))
    }
}

/// Whether the PCM opens and takes a configuration now, in either direction
/// (a microphone has no playback side). Busy counts as present: someone
/// holds it.
/// Whether the PCM is present (it opens and takes a configuration in a
/// direction, or is busy), and what it accepts in each direction that
/// opened ([`Caps`]). Opens and closes it, once per direction.
fn probe_pcm(pcm: &CString) -> (bool, Caps) {
    let mut present = false;
    let mut caps = Caps::default();
    for dir in [Direction::Playback, Direction::Capture] {
        match PCM::open(pcm, dir, true) {
            Ok(opened) => {
                // Read before `takes_a_configuration` sets one.
                let accepts = read_caps(&opened);
                if takes_a_configuration(&opened) {
                    present = true;
                    match dir {
                        Direction::Playback => caps.playback = accepts,
                        Direction::Capture => caps.capture = accepts,
                    }
                }
            }
            Err(e) => present |= e.errno() == libc::EBUSY,
        }
    }
    (present, caps)
}

/// What a PCM accepted when it was last probed, per direction: `None` when
/// it could not be read (the PCM busy, or not opening that way).
#[derive(Clone, Debug, Default)]
struct Caps {
    playback: Option<Vec<Accepts>>,
    capture: Option<Vec<Accepts>>,
}

/// A format and rate the PCM takes together (interleaved), with the
/// channel counts it takes with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Accepts {
    format: Format,
    rate: u32,
    channels: (u32, u32),
}

impl Accepts {
    fn takes(&self, p: &StreamParams) -> bool {
        self.format == p.format
            && self.rate == p.rate
            && (self.channels.0..=self.channels.1).contains(&u32::from(p.channels))
    }
}

/// Every virtio-snd format and rate `pcm` takes with interleaved access,
/// with their channel ranges (`snd_pcm_hw_params` refinement only: nothing
/// is set on the PCM). `None` if the PCM gives no configuration space.
fn read_caps(pcm: &PCM) -> Option<Vec<Accepts>> {
    let any = HwParams::any(pcm).ok()?;
    any.set_access(Access::RWInterleaved).ok()?;
    // Scratch spaces, refined from `any` for each format, then each rate.
    let mut with_format = HwParams::any(pcm).ok()?;
    let mut with_rate = HwParams::any(pcm).ok()?;
    let mut out = Vec::new();
    for format in Format::ALL {
        let alsa = alsa_format(format);
        with_format.copy_from(&any);
        if with_format.set_format(alsa).is_err() {
            continue;
        }
        for rate in crate::VIRTIO_RATES {
            with_rate.copy_from(&with_format);
            if with_rate.set_rate(rate, ValueOr::Nearest).is_err() {
                continue;
            }
            if let (Ok(lo), Ok(hi)) = (with_rate.get_channels_min(), with_rate.get_channels_max()) {
                out.push(Accepts {
                    format,
                    rate,
                    channels: (lo, hi),
                });
            }
        }
    }
    Some(out)
}

/// Why `accepts` does not take `p`, in the guest's terms.
fn refusal(p: &StreamParams, accepts: &[Accepts], pcm: &str) -> String {
    let what = format!("{} at {} Hz with {} channels", p.format, p.rate, p.channels);
    let why = if !accepts.iter().any(|a| a.format == p.format) {
        format!("format {}", p.format)
    } else if !accepts
        .iter()
        .any(|a| a.format == p.format && a.rate == p.rate)
    {
        format!("rate {} Hz with {}", p.rate, p.format)
    } else {
        format!("{} channels", p.channels)
    };
    format!("{what}: ALSA PCM `{pcm}` does not take {why}")
}

/// Some PCMs open while what is behind them is missing (the `pipewire` PCM
/// while the server has no sink fails only at `snd_pcm_hw_params`, with
/// `ENOENT`): only a configuration tells. Any one the PCM offers will do.
fn takes_a_configuration(pcm: &PCM) -> bool {
    let Ok(hw) = HwParams::any(pcm) else {
        return false;
    };
    // Preferences only: a PCM that refuses them gets its own choice.
    let _ = hw.set_access(Access::RWInterleaved);
    let _ = hw.set_rate_near(48000, ValueOr::Nearest);
    pcm.hw_params(&hw).is_ok()
}

fn describe(name: &str, pcm: &str) -> String {
    format!("ALSA device `{name}` (PCM `{pcm}`)")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the device, its streams and its monitor thread share.
struct Shared {
    /// For log lines.
    name: String,
    /// The attach state (see the module doc).
    attached: AtomicBool,
    /// Bumped at every attach, so that a stream opened before a detach
    /// cannot detach the device again after it came back.
    generation: AtomicU64,
    control: Mutex<Control>,
    wake: Condvar,
    listener: Mutex<Option<Arc<dyn DeviceListener>>>,
    first_retry: Duration,
    /// What the PCM accepted at its last attach (`check_params` reads it).
    caps: Mutex<Caps>,
}

/// A closed playback PCM playing its last frames.
struct Draining {
    pcm: PCM,
    /// Its buffer size in frames: `avail` reaches it when it is empty.
    buffer: i64,
    /// When it is closed at the latest.
    deadline: Instant,
    /// When its buffer was first seen empty.
    empty_since: Option<Instant>,
}

/// Requests to the monitor thread, under [`Shared::control`]. The lock is
/// only ever held to flip these flags and move PCMs in and out of
/// `draining`.
#[derive(Default)]
struct Control {
    /// Closed playback PCMs still playing their last frames.
    draining: Vec<Draining>,
    stop: bool,
    /// A stream found the PCM gone; the listener is still to be told.
    detach_pending: bool,
    /// Something opened the PCM while detached: probe without waiting.
    probe_now: bool,
}

/// What the monitor thread does next.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Stop,
    Detached,
    Probe,
    /// Look at the PCMs being drained.
    Drain,
}

impl Shared {
    fn new(name: String, attached: bool, first_retry: Duration) -> Self {
        Shared {
            name,
            attached: AtomicBool::new(attached),
            generation: AtomicU64::new(0),
            control: Mutex::new(Control::default()),
            wake: Condvar::new(),
            listener: Mutex::new(None),
            first_retry,
            caps: Mutex::new(Caps::default()),
        }
    }

    fn stop(&self) {
        lock(&self.control).stop = true;
        self.wake.notify_all();
    }

    /// Hands a playback PCM over to be closed once it has played what it
    /// holds, or at `deadline` (see [`Shared::drained`]).
    fn drain(&self, pcm: PCM, buffer: usize, deadline: Instant) {
        let mut control = lock(&self.control);
        if control.stop {
            return;
        }
        control.draining.push(Draining {
            pcm,
            buffer: i64::try_from(buffer).unwrap_or(i64::MAX),
            deadline,
            empty_since: None,
        });
        drop(control);
        self.wake.notify_all();
    }

    /// Closes every draining PCM now; whether there was one.
    fn cut_drains(&self) -> bool {
        let draining = std::mem::take(&mut lock(&self.control).draining);
        let any = !draining.is_empty();
        if any {
            log::debug!("{}: drain cut short: the PCM is opened again", self.name);
        }
        drop(draining);
        any
    }

    /// Closes the draining PCMs that have played their frames (or run out
    /// of time); the others are looked at again in [`DRAIN_POLL`].
    fn drained(&self) {
        let mut draining = std::mem::take(&mut lock(&self.control).draining);
        let now = Instant::now();
        draining.retain_mut(|d| {
            // The PCM's buffer is empty once `avail` is all of it (`delay`
            // may keep a sound server's own latency in it).
            let playing = d.pcm.state() == alsa::pcm::State::Running
                && d.pcm.avail().is_ok_and(|avail| avail < d.buffer);
            if now >= d.deadline {
                log::warn!("{}: drain took too long; closed", self.name);
                return false;
            }
            if playing {
                return true;
            }
            let since = *d.empty_since.get_or_insert(now);
            now.saturating_duration_since(since) < DRAIN_TAIL
        });
        if !draining.is_empty() {
            lock(&self.control).draining.append(&mut draining);
        }
    }

    /// A stream opened at `generation` found the PCM gone. Marks the device
    /// detached at once (so `is_attached` is right when the daemon sees the
    /// error) and leaves the listener call to the monitor thread.
    fn report_gone(&self, generation: u64) {
        if self.generation.load(Ordering::SeqCst) == generation
            && self.attached.swap(false, Ordering::SeqCst)
        {
            lock(&self.control).detach_pending = true;
            self.wake.notify_all();
        }
    }

    /// The PCM was just opened: if the device is detached, probe now
    /// rather than at the end of the backoff.
    fn request_probe(&self) {
        if !self.attached.load(Ordering::SeqCst) {
            lock(&self.control).probe_now = true;
            self.wake.notify_all();
        }
    }

    fn listener(&self) -> Option<Arc<dyn DeviceListener>> {
        lock(&self.listener).clone()
    }

    /// Waits for the next thing to do: forever while attached, at most
    /// `delay` while detached, at most [`DRAIN_POLL`] while a PCM drains.
    fn next_event(&self, delay: Duration) -> Event {
        let start = Instant::now();
        let deadline = start.checked_add(delay);
        let drain_at = start + DRAIN_POLL;
        let mut control = lock(&self.control);
        loop {
            if control.stop {
                control.draining.clear();
                return Event::Stop;
            }
            if control.detach_pending {
                control.detach_pending = false;
                return Event::Detached;
            }
            let now = Instant::now();
            if !control.draining.is_empty() && now >= drain_at {
                return Event::Drain;
            }
            let attached = self.attached.load(Ordering::SeqCst);
            let mut wait = None;
            if attached {
                control.probe_now = false;
            } else {
                if control.probe_now {
                    control.probe_now = false;
                    return Event::Probe;
                }
                let left = match deadline {
                    Some(d) => d.saturating_duration_since(now),
                    None => delay,
                };
                if left.is_zero() {
                    return Event::Probe;
                }
                wait = Some(left);
            }
            if !control.draining.is_empty() {
                let left = drain_at.saturating_duration_since(now);
                wait = Some(wait.map_or(left, |w: Duration| w.min(left)));
            }
            control = match wait {
                None => self
                    .wake
                    .wait(control)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(w) => {
                    self.wake
                        .wait_timeout(control, w)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// The monitor thread: tells the listener about detaches and probes a
    /// detached PCM until it is back.
    fn monitor(&self, probe: impl Fn() -> bool) {
        let mut delay = self.first_retry;
        loop {
            match self.next_event(delay) {
                Event::Stop => return,
                Event::Drain => self.drained(),
                Event::Detached => {
                    log::warn!("{}: gone", self.name);
                    if let Some(listener) = self.listener() {
                        listener.detached();
                    }
                    delay = self.first_retry;
                }
                Event::Probe => {
                    if !probe() {
                        delay = next_delay(delay, self.first_retry);
                        continue;
                    }
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    self.attached.store(true, Ordering::SeqCst);
                    log::info!("{}: back", self.name);
                    if let Some(listener) = self.listener() {
                        listener.attached();
                    }
                    delay = self.first_retry;
                }
            }
        }
    }
}

/// The backoff after a failed probe: double, up to [`MAX_RETRY`] (or the
/// first delay, if that is longer).
fn next_delay(delay: Duration, first: Duration) -> Duration {
    delay.saturating_mul(2).min(MAX_RETRY.max(first))
}

fn spawn_monitor<P>(name: &str, shared: Arc<Shared>, probe: P) -> Result<JoinHandle<()>, String>
where
    P: Fn() -> bool + Send + 'static,
{
    // Thread names may not hold NUL; Linux keeps 15 bytes of them anyway.
    let tag: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(9)
        .collect();
    thread::Builder::new()
        .name(format!("alsa-{tag}"))
        .spawn(move || {
            crate::thread_started(crate::DeviceThread::AlsaMonitor);
            shared.monitor(probe)
        })
        .map_err(|e| format!("cannot start the monitor thread of ALSA device `{name}`: {e}"))
}

/// An open PCM, shared by the sink and the source.
struct Stream {
    /// Taken out only by `drop` (to close it, or to hand it to the monitor
    /// thread to drain).
    pcm: ManuallyDrop<PCM>,
    dir: Direction,
    shared: Arc<Shared>,
    generation: u64,
    frame_bytes: usize,
    /// Period and buffer sizes the PCM chose, in frames.
    period: usize,
    buffer: usize,
    /// The cushion kept in the PCM, in frames ([`cushion_frames`]).
    cushion: usize,
    can_pause: bool,
    paused: Paused,
    rate: u32,
    /// Playback: whether the cushion is in place since the PCM was last
    /// started ([`AlsaSink::prime`]). (Capture waits for its cushion in the
    /// lane's end of the ring, `io::ThreadedSource`.)
    primed: bool,
    /// Set once the PCM failed for good: every later call says `Gone`.
    gone: bool,
    xruns: u64,
    /// Playback frames dropped because the PCM was full.
    lost_frames: u64,
    /// Playback: frames handed to the PCM since the open (its cushion of
    /// silence included) and frames dropped ([`Position::taken`]).
    taken: u64,
    /// Playback: of `taken`, the frames of silence the stream put ahead of
    /// the guest's, and `taken` just after the last of them. Silence goes
    /// in only when the PCM (re)starts, so every frame taken after that is
    /// the guest's.
    silence: u64,
    silence_end: u64,
}

/// How a stream's PCM is held while the guest's stream is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Paused {
    No,
    /// Playback that is not running or cannot pause: not fed, left to play
    /// out what it holds; an underrun meanwhile is no xrun, and it starts
    /// over with a new cushion.
    Idle,
    /// `snd_pcm_pause`: it keeps its frames and resumes where it was.
    Held,
    /// Dropped (the PCM cannot pause): it starts over with a new cushion.
    Dropped,
}

/// What the lane asks of a stream's PCM: to run, to be held while the
/// guest's stream is stopped, or (playback whose guest stopped with
/// nothing more queued: its sound ended) to play out what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Hold {
    Run = 0,
    Keep = 1,
    PlayOut = 2,
}

impl Hold {
    fn from_u8(v: u8) -> Hold {
        match v {
            0 => Hold::Run,
            2 => Hold::PlayOut,
            _ => Hold::Keep,
        }
    }
}

impl Stream {
    fn set_hold(&mut self, hold: Hold) -> Result<(), DeviceError> {
        match hold {
            Hold::Run => self.set_paused(false),
            Hold::Keep => self.set_paused(true),
            Hold::PlayOut => self.play_out(),
        }
    }

    /// Leaves the PCM to play out what it holds, unfed ([`Paused::Idle`]):
    /// the guest's sound ended. A held PCM is let go first; a dropped one
    /// holds nothing.
    fn play_out(&mut self) -> Result<(), DeviceError> {
        if self.gone {
            return Err(DeviceError::Gone);
        }
        match self.paused {
            Paused::Held => self.set_paused(false)?,
            Paused::No => {}
            Paused::Idle | Paused::Dropped => return Ok(()),
        }
        log::debug!(
            "{}: {:?} -> Idle (plays out)",
            self.shared.name,
            self.paused
        );
        self.paused = Paused::Idle;
        Ok(())
    }

    /// Pauses or resumes the PCM (see [`Paused`]).
    fn set_paused(&mut self, pause: bool) -> Result<(), DeviceError> {
        let dir = self.dir;
        if self.gone {
            return Err(DeviceError::Gone);
        }
        let result = match (pause, self.paused) {
            // Playback holds what it was given: the daemon completes a
            // guest buffer once its frames have played, so the PCM holds
            // frames the guest is still waiting for.
            (true, Paused::No)
                if dir == Direction::Playback
                    && !(self.can_pause && self.pcm.state() == alsa::pcm::State::Running) =>
            {
                Ok(Paused::Idle)
            }
            (false, Paused::Idle) => {
                let state = self.pcm.state();
                // A plugin may still say Running after it ran dry: its
                // pointer says so (`EPIPE`), which only a call asks for.
                let ran_dry = self
                    .pcm
                    .avail_update()
                    .is_err_and(|e| e.errno() == libc::EPIPE);
                if ran_dry
                    || matches!(
                        state,
                        alsa::pcm::State::XRun
                            | alsa::pcm::State::Setup
                            | alsa::pcm::State::Draining
                    )
                {
                    self.primed = false;
                    self.pcm.prepare().map(|()| Paused::No)
                } else {
                    Ok(Paused::No)
                }
            }
            (true, Paused::No) => {
                if self.can_pause && self.pcm.state() == alsa::pcm::State::Running {
                    self.pcm.pause(true).map(|()| Paused::Held)
                } else {
                    self.pcm.drop().map(|()| Paused::Dropped)
                }
            }
            (false, Paused::Held) => self.pcm.pause(false).map(|()| Paused::No),
            (false, Paused::Dropped) => {
                self.primed = false;
                let prepared = self.pcm.prepare();
                match (prepared, dir) {
                    (Ok(()), Direction::Capture) => self.pcm.start().map(|()| Paused::No),
                    (r, _) => r.map(|()| Paused::No),
                }
            }
            (_, now) => Ok(now),
        };
        match result {
            Ok(now) => {
                if now != self.paused {
                    log::debug!("{}: {:?} -> {now:?}", self.shared.name, self.paused);
                }
                self.paused = now;
                Ok(())
            }
            Err(e) if is_gone(e.errno()) => Err(self.gone()),
            // The PCM was not in a state to pause (an xrun just then): it
            // starts over, as a dropped one.
            Err(e) => {
                log::debug!("{}: pause({pause}): {e}; starting over", self.shared.name);
                self.paused = if pause { Paused::Dropped } else { Paused::No };
                let _ = self.pcm.drop();
                let _ = self.pcm.prepare();
                if !pause && dir == Direction::Capture {
                    let _ = self.pcm.start();
                }
                self.primed = false;
                Ok(())
            }
        }
    }

    fn gone(&mut self) -> DeviceError {
        if !self.gone {
            self.gone = true;
            self.shared.report_gone(self.generation);
        }
        DeviceError::Gone
    }

    /// Sorts out an error of `writei`/`readi`. `Ok(true)`: the PCM was
    /// recovered from an xrun, try again; `Ok(false)`: nothing moves now.
    fn handle(&mut self, e: alsa::Error, retried: bool) -> Result<bool, DeviceError> {
        match e.errno() {
            libc::EAGAIN | libc::EINTR => Ok(false),
            errno @ (libc::EPIPE | libc::ESTRPIPE) => {
                self.xruns = self.xruns.saturating_add(1);
                log::trace!("{}: xrun ({errno})", self.shared.name);
                if retried {
                    return Ok(false);
                }
                match recover(&self.pcm, errno) {
                    Ok(()) => Ok(true),
                    Err(e) if e.errno() == libc::EAGAIN => Ok(false),
                    Err(_) => Err(self.gone()),
                }
            }
            errno if is_gone(errno) => Err(self.gone()),
            _ => Err(io_error(&e)),
        }
    }

    /// Starts a capture PCM again after an overrun was recovered (it does
    /// not start by itself after a prepare) and waits for a new cushion.
    fn restart_capture(&mut self) -> Result<(), DeviceError> {
        self.primed = false;
        match self.pcm.start() {
            Err(e) if is_gone(e.errno()) => Err(self.gone()),
            _ => Ok(()),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // A playback PCM with frames to play is handed to the monitor
        // thread, which closes it once they have played; closing here
        // (`snd_pcm_close` drops pending frames) would cut the sound's end.
        let mut drain = false;
        if !self.gone && self.dir == Direction::Playback && self.paused != Paused::Dropped {
            if self.paused == Paused::Held {
                let _ = self.pcm.pause(false);
            }
            drain = self.pcm.delay().is_ok_and(|queued| queued > 0);
            if drain && self.pcm.state() == alsa::pcm::State::Prepared {
                let _ = self.pcm.start();
            }
        }
        // SAFETY: `self.pcm` is not used after this (it is being dropped).
        let pcm = unsafe { ManuallyDrop::take(&mut self.pcm) };
        log::debug!(
            "{}: closing; {} ({:?})",
            self.shared.name,
            if drain {
                "draining"
            } else {
                "nothing to drain"
            },
            self.paused
        );
        if drain {
            let frames = u64::try_from(self.buffer.max(1)).unwrap_or(u64::MAX);
            let length = Duration::from_micros(
                frames.saturating_mul(1_000_000) / u64::from(self.rate.max(1)),
            );
            self.shared.drain(
                pcm,
                self.buffer,
                Instant::now() + length.saturating_add(DRAIN_TAIL + DRAIN_SLACK),
            );
        } else {
            drop(pcm);
        }
        if self.xruns > 0 || self.lost_frames > 0 {
            log::debug!(
                "{}: stream closed after {} xruns, {} frames dropped",
                self.shared.name,
                self.xruns,
                self.lost_frames
            );
        }
    }
}

/// One reading of a PCM's clock (`snd_pcm_status`): its delay (playback:
/// frames queued; capture: captured, not yet read), and when it held
/// (`htstamp` on `CLOCK_MONOTONIC`, or `now` if the PCM gives none).
pub(super) fn clock_reading(pcm: &PCM, now: u64) -> Option<(alsa::pcm::Frames, u64)> {
    let status = pcm.status().ok()?;
    let ts = status.get_htstamp();
    let at = u64::try_from(ts.tv_sec)
        .ok()
        .and_then(|s| s.checked_mul(1_000_000_000))
        .and_then(|s| s.checked_add(u64::try_from(ts.tv_nsec).ok()?))
        .filter(|at| *at != 0 && *at <= now)
        .unwrap_or(now);
    Some((status.get_delay(), at))
}

/// Brings the PCM back from an xrun (`EPIPE`) or a suspend (`ESTRPIPE`)
/// without blocking: a suspended PCM that is still resuming answers `EAGAIN`
/// and is tried again at the next call.
fn recover(pcm: &PCM, errno: i32) -> alsa::Result<()> {
    if errno == libc::ESTRPIPE {
        match pcm.resume() {
            Ok(()) => return Ok(()),
            Err(e) if e.errno() == libc::EAGAIN => return Err(e),
            // The PCM cannot resume where it was: start it over.
            Err(_) => {}
        }
    }
    pcm.prepare()
}

struct AlsaSink {
    stream: Stream,
    /// The cushion's silence, made at open.
    silence: Vec<u8>,
}

impl AlsaSink {
    fn new(stream: Stream, format: Format) -> AlsaSink {
        let mut silence = vec![0; stream.cushion.saturating_mul(stream.frame_bytes)];
        format.fill_silence(&mut silence);
        AlsaSink { stream, silence }
    }

    /// Resumes the PCM if it was held, and puts the cushion of silence in
    /// it if it (re)started: what [`write`](AlsaSink::write) does first,
    /// so that the room asked after this is the room for the guest's
    /// frames.
    fn prime(&mut self) -> Result<(), DeviceError> {
        let AlsaSink { stream: s, silence } = self;
        if s.gone {
            return Err(DeviceError::Gone);
        }
        if s.paused != Paused::No {
            s.set_paused(false)?;
        }
        let mut retried = false;
        while !s.primed {
            let written = s.pcm.io_bytes().writei(silence);
            match written {
                Ok(n) => {
                    s.taken = s.taken.saturating_add(n as u64);
                    s.silence = s.silence.saturating_add(n as u64);
                    s.silence_end = s.taken;
                    s.primed = true;
                }
                Err(e) => {
                    if !s.handle(e, retried)? {
                        break;
                    }
                    retried = true;
                }
            }
        }
        Ok(())
    }

    /// How many of the guest's frames (the frames taken but the silence)
    /// have played, how many frames the PCM holds, silence included, and
    /// of those the silence (all of it ahead of the guest's).
    /// Silence is only ever ahead of the guest's frames in the PCM (it goes
    /// in when the PCM (re)starts, empty), so of what the PCM holds, the
    /// guest's are at most the frames taken since the last silence.
    fn guest_played(&self) -> Option<(u64, u64, u64)> {
        let p = self.position()?;
        let s = &self.stream;
        let queued = p.taken.saturating_sub(p.played);
        let guest_queued = queued.min(s.taken.saturating_sub(s.silence_end));
        let guest_taken = s.taken.saturating_sub(s.silence);
        Some((
            guest_taken.saturating_sub(guest_queued),
            queued,
            queued.saturating_sub(guest_queued),
        ))
    }
}

impl AlsaSink {
    /// Hands the PCM what it has room for of `frames` (whole frames; the
    /// rest is dropped and counted), after the cushion of silence if it
    /// (re)started.
    ///
    /// Writes of whole frames add up to one write of them (ALSA counts
    /// frames; the cushion goes ahead of the first only). One difference:
    /// each write recovers one xrun, where a single write gives up on the
    /// rest after its first.
    fn write(&mut self, frames: &[u8]) -> Result<(), DeviceError> {
        let fb = self.stream.frame_bytes;
        let whole = frames.len() / fb * fb;
        let mut rest = frames.get(..whole).unwrap_or_default();
        if rest.is_empty() {
            return Ok(());
        }
        self.prime()?;
        let mut retried = false;
        while !rest.is_empty() {
            let written = self.stream.pcm.io_bytes().writei(rest);
            match written {
                Ok(0) => break,
                Ok(n) => {
                    self.stream.taken = self.stream.taken.saturating_add(n as u64);
                    rest = rest.get(n.saturating_mul(fb)..).unwrap_or_default();
                }
                Err(e) => {
                    if !self.stream.handle(e, retried)? {
                        break;
                    }
                    retried = true;
                    self.stream.primed = false;
                    self.prime()?;
                }
            }
        }
        let s = &mut self.stream;
        let lost = (rest.len() / fb) as u64;
        s.lost_frames = s.lost_frames.saturating_add(lost);
        s.taken = s.taken.saturating_add(lost);
        Ok(())
    }

    /// What the PCM still holds is its delay while it runs (or is paused,
    /// or waits for its start threshold); after an underrun, a suspend or
    /// a drop it holds nothing: those frames are gone, not to be waited for.
    fn position(&self) -> Option<Position> {
        let s = &self.stream;
        if s.gone {
            return None;
        }
        let holds = matches!(
            s.pcm.state(),
            alsa::pcm::State::Running
                | alsa::pcm::State::Paused
                | alsa::pcm::State::Prepared
                | alsa::pcm::State::Draining
        );
        let queued = if holds {
            s.pcm
                .delay()
                .ok()
                .and_then(|d| u64::try_from(d).ok())
                .unwrap_or(0)
        } else {
            0
        };
        Some(Position {
            taken: s.taken,
            played: s.taken.saturating_sub(queued),
            keep: s.cushion as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn parse(text: &str) -> Result<AlsaOptions, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let opts = AlsaOptions::deserialize(table).map_err(|e| e.message().to_owned())?;
        opts.check()?;
        Ok(opts)
    }

    #[test]
    fn options_parse_and_are_checked() {
        let opts = parse(r#"pcm = "hw:0,0""#).unwrap();
        assert_eq!(opts.pcm, "hw:0,0");
        assert_eq!(opts.retry_ms, DEFAULT_RETRY_MS);
        assert_eq!(parse("pcm = \"x\"\nretry_ms = 20").unwrap().retry_ms, 20);

        let failures = [
            ("", "pcm"),
            ("pcm = \"x\"\npath = \"/y\"", "path"),
            ("pcm = \"\"", "empty"),
            ("pcm = \"a\\u0000b\"", "NUL"),
            ("pcm = \"x\"\nretry_ms = 0", "retry_ms"),
            ("pcm = 3", "string"),
        ];
        for (text, needle) in failures {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn every_format_maps_to_an_alsa_format_of_the_same_size() {
        for f in Format::ALL {
            let a = alsa_format(f);
            let bits = a.physical_width().unwrap();
            assert_eq!(bits, (f.sample_bytes() * 8) as i32, "{f} -> {a}");
            if bits > 8 {
                assert!(a.little_endian().unwrap(), "{f} -> {a}");
            }
        }
        assert_eq!(alsa_format(Format::S24).width().unwrap(), 24);
        assert_eq!(alsa_format(Format::S20).width().unwrap(), 20);
        assert_eq!(alsa_format(Format::S24_3).width().unwrap(), 24);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let first = Duration::from_millis(250);
        let mut d = first;
        let mut seen = vec![d];
        for _ in 0..4 {
            d = next_delay(d, first);
            seen.push(d);
        }
        assert_eq!(seen[..3], [250, 500, 1000].map(Duration::from_millis));
        assert!(seen[3..].iter().all(|&x| x == MAX_RETRY));
        // A first delay longer than the cap is kept.
        let long = Duration::from_secs(30);
        assert_eq!(next_delay(long, long), long);
    }

    #[derive(Default)]
    struct Counter {
        attached: AtomicUsize,
        detached: AtomicUsize,
    }

    impl DeviceListener for Counter {
        fn attached(&self) {
            self.attached.fetch_add(1, Ordering::SeqCst);
        }
        fn detached(&self) {
            self.detached.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn monitor_reports_gone_probes_and_reattaches() {
        let shared = Arc::new(Shared::new("test".into(), true, Duration::from_millis(1)));
        let counter = Arc::new(Counter::default());
        *lock(&shared.listener) = Some(counter.clone());
        let present = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(AtomicUsize::new(0));
        let (p, n) = (present.clone(), probes.clone());
        let monitor = spawn_monitor("test\0", shared.clone(), move || {
            n.fetch_add(1, Ordering::SeqCst);
            p.load(Ordering::SeqCst)
        })
        .unwrap();

        // Attached: nothing probes.
        thread::sleep(Duration::from_millis(20));
        assert_eq!(probes.load(Ordering::SeqCst), 0);

        // A stream of the current attachment hits Gone: detached at once,
        // the listener is told once, and the monitor probes.
        let gen0 = shared.generation.load(Ordering::SeqCst);
        shared.report_gone(gen0);
        shared.report_gone(gen0);
        assert!(!shared.attached.load(Ordering::SeqCst));
        wait_for("detached", || counter.detached.load(Ordering::SeqCst) == 1);
        wait_for("probes", || probes.load(Ordering::SeqCst) >= 3);
        assert_eq!(counter.attached.load(Ordering::SeqCst), 0);

        // The PCM comes back.
        present.store(true, Ordering::SeqCst);
        wait_for("attached", || counter.attached.load(Ordering::SeqCst) == 1);
        assert!(shared.attached.load(Ordering::SeqCst));
        let settled = probes.load(Ordering::SeqCst);

        // A stream of the old attachment cannot detach the new one.
        shared.report_gone(gen0);
        assert!(shared.attached.load(Ordering::SeqCst));
        thread::sleep(Duration::from_millis(20));
        assert_eq!(probes.load(Ordering::SeqCst), settled);
        assert_eq!(counter.detached.load(Ordering::SeqCst), 1);

        shared.stop();
        monitor.join().unwrap();
    }

    #[test]
    fn a_probe_request_cuts_the_backoff_short() {
        let shared = Arc::new(Shared::new("test".into(), false, Duration::from_secs(3600)));
        let probes = Arc::new(AtomicUsize::new(0));
        let n = probes.clone();
        let monitor = spawn_monitor("test", shared.clone(), move || {
            n.fetch_add(1, Ordering::SeqCst);
            true
        })
        .unwrap();
        shared.request_probe();
        wait_for("attached", || shared.attached.load(Ordering::SeqCst));
        assert_eq!(probes.load(Ordering::SeqCst), 1);
        // Stopping does not wait for the hour-long backoff.
        shared.stop();
        monitor.join().unwrap();
    }
}
