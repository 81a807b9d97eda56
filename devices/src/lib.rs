//! Host audio devices for vsound.
//!
//! A *host device* is what a guest PCM stream is bound to on the host: an ALSA
//! PCM, a `pad` socket, or the `null` device. Every device implements
//! [`HostDevice`]; the daemon opens a [`PlaybackSink`] or a [`CaptureSource`]
//! on it for a stream's negotiated [`StreamParams`] when the guest prepares the
//! stream, and closes it (by dropping it) on release.
//!
//! Devices are plugins: [`registry::build`] turns a `[devices.NAME]` table of
//! the config file into a device by its `kind`. Adding a plugin means adding a
//! file here and one entry in [`registry::PLUGINS`]; nothing in the daemon.
//!
//! Contracts every device keeps (they are what lets the daemon keep the
//! guest's clock whatever the host does):
//! - I/O never blocks: `write`/`read` move what they can now and return.
//! - Close is final: dropping a sink or source frees everything, whatever
//!   error came before.
//! - A device that goes away says so with [`DeviceError::Gone`].

pub mod alsa;
pub mod alsa_log;
pub mod attach;
pub mod dll;
mod eventfd;
mod format;
pub mod mix;
pub mod null;
pub mod pad;
pub mod registry;
pub mod unix_socket;

pub use format::{Format, Sample, StreamParams, VIRTIO_RATES};

/// The threads devices run, as told to [`set_thread_hook`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceThread {
    /// A pad's socket thread (`pad-NAME`).
    Pad,
    /// An ALSA device's monitor thread (`alsa-NAME`).
    AlsaMonitor,
    /// An open ALSA stream's I/O thread (`alsa-io`).
    AlsaIo,
}

static THREAD_HOOK: std::sync::OnceLock<fn(DeviceThread)> = std::sync::OnceLock::new();

/// Sets what every device thread calls first, on itself (the daemon's
/// seccomp sandbox installs the thread's filter). Only the first call
/// counts; returns whether this one did.
pub fn set_thread_hook(hook: fn(DeviceThread)) -> bool {
    THREAD_HOOK.set(hook).is_ok()
}

/// Called by a device thread before anything else.
fn thread_started(kind: DeviceThread) {
    if let Some(hook) = THREAD_HOOK.get() {
        hook(kind);
    }
}

/// Which way a stream's frames go, seen from the host device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamDirection {
    /// Guest output: frames go to the device.
    Playback,
    /// Guest input: frames come from the device.
    Capture,
}

/// Who keeps time for a stream bound to a device.
/// How full a device on its own clock is, in frames (see
/// [`PlaybackSink::fill_frames`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    /// Playback: queued, not yet played; capture: captured, not yet read.
    pub frames: i64,
    /// Playback: room for more frames now; capture: frames it can still
    /// capture before it overruns.
    pub room: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The daemon paces completions on `CLOCK_MONOTONIC` (null, pad).
    Daemon,
    /// The device consumes and produces frames at its own rate (ALSA): a
    /// playback buffer completes once the device has played it
    /// ([`PlaybackSink::position`]), capture is paced by the device's fill
    /// level; the daemon still never runs more than 2,000 ppm faster than
    /// the stream's nominal rate (a PCM without a clock, alsa-lib's `null`,
    /// would take a guest's buffers as fast as it sends them).
    Device,
}

/// Errors a host device reports.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device cannot take these stream parameters; the guest may retry
    /// with others (answered `NOT_SUPP`).
    #[error("Parameters not supported: {0}")]
    Unsupported(String),
    /// The device is not there (detached, unplugged, no client connected).
    #[error("Device is gone")]
    Gone,
    /// Any other host I/O error.
    #[error("Host I/O error")]
    Io(#[source] std::io::Error),
}

/// Told when a device comes and goes. Called from the device's own thread:
/// implementations must return quickly and never block.
pub trait DeviceListener: Send + Sync {
    /// The device is present again (a pad client connected, an ALSA PCM
    /// reopened).
    fn attached(&self);
    /// The device went away (a pad client closed, an ALSA card vanished).
    fn detached(&self);
}

/// A host device, shared by every stream bound to it.
pub trait HostDevice: Send + Sync {
    /// The plugin kind (`"null"`, `"pad"`, `"alsa"`).
    fn kind(&self) -> &'static str;

    /// Whether the device is present now (a jack is "connected" when it is).
    fn is_attached(&self) -> bool;

    /// Whether a call into the device (open, write, read) may block or
    /// take long (a sound server, a kernel driver). The daemon serves the
    /// streams of devices that never do (null, pad, ALSA, whose calls go
    /// to a thread of its own per stream) from one shared reactor thread,
    /// and gives each stream of any other device a thread of its own, so
    /// that a device that hangs stalls only its streams. The default is
    /// the safe answer.
    fn may_block(&self) -> bool {
        true
    }

    /// Registers who to tell when the device attaches or detaches (the
    /// daemon sets one listener per device at startup; a later call replaces
    /// it). Devices that never change (null) ignore it.
    fn set_listener(&self, _listener: std::sync::Arc<dyn DeviceListener>) {}

    /// Checks that the device could take these parameters in this
    /// direction (used at `PCM_SET_PARAMS`, so the guest can fall back on
    /// `NOT_SUPP`). It may open the device briefly (ALSA) but must not
    /// block. An absent device answers `Gone`; PREPARE decides then.
    fn check_params(&self, dir: StreamDirection, params: &StreamParams) -> Result<(), DeviceError>;

    /// Opens a playback sink for a stream's negotiated parameters.
    fn open_playback(&self, params: &StreamParams) -> Result<Box<dyn PlaybackSink>, DeviceError>;

    /// Opens a capture source for a stream's negotiated parameters.
    fn open_capture(&self, params: &StreamParams) -> Result<Box<dyn CaptureSource>, DeviceError>;

    /// Probes an absent device now rather than at the end of its backoff
    /// (SIGHUP, `vsound ctl attach`). Returns false if the device cannot
    /// be probed (it is present, or it comes back by itself: a pad's
    /// client connects).
    fn probe_now(&self) -> bool {
        false
    }

    /// What the device counts (drops, overflows, underruns, clients...),
    /// as (name, value) pairs, for `vsound ctl status`.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Where a playback stream's frames go. Dropping it closes it.
pub trait PlaybackSink: Send {
    /// Who keeps time for this sink.
    fn clock(&self) -> Clock;
    /// Hands over interleaved frames in the negotiated format. Never blocks;
    /// frames the device cannot take now are dropped and counted by the
    /// device (the daemon keeps the guest's clock).
    ///
    /// A guest message larger than the daemon's copy buffer comes in
    /// several calls, in order, back to back, each a whole number of frames
    /// but the last (a message need not end on a frame): they must add up
    /// to what one call with the whole message would do. An error ends the
    /// message: the daemon does not hand over the rest.
    fn write(&mut self, frames: &[u8]) -> Result<(), DeviceError>;
    /// Bytes queued in the host path ahead of what the guest just wrote.
    fn latency_bytes(&self) -> u32;
    /// Underruns the device itself had (and recovered from) so far; the
    /// daemon reports new ones to the guest as PCM_XRUN.
    fn xruns(&self) -> u64 {
        0
    }
    /// Holds the device's clock (`true`: the guest stopped the stream, or
    /// the VM paused) or lets it run again, keeping what it holds. Never
    /// blocks. A sink without a clock of its own has nothing to hold.
    fn set_paused(&mut self, paused: bool) -> Result<(), DeviceError> {
        let _ = paused;
        Ok(())
    }
    /// The device's rate against `CLOCK_MONOTONIC` (ppm), as its own clock
    /// was measured (a delay-locked loop on its readings, `dll.rs`), once
    /// known. `None` for a sink with no clock of its own.
    fn rate_ppm(&self) -> Option<f64> {
        None
    }
    /// The guest stopped the stream with nothing more queued: its sound
    /// ended (Linux sends STOP when a drain ends, RELEASE only when the PCM
    /// is closed). What the sink holds, the sound's end, plays out now
    /// rather than waiting, held, for the next START or the RELEASE; an
    /// underrun after it is no xrun. `set_paused(false)` runs it again.
    /// By default the sink is held, as by `set_paused(true)`.
    fn play_out(&mut self) -> Result<(), DeviceError> {
        self.set_paused(true)
    }
    /// For a sink on its own clock ([`Clock::Device`]): the frames queued in
    /// it, not yet played, as of now, and its room for more (the daemon
    /// hands a guest buffer over when it fits).
    fn fill_frames(&self) -> Option<Fill> {
        None
    }
    /// For a sink on its own clock ([`Clock::Device`]): how far it has got,
    /// in frames since it was opened (see [`Position`]). The daemon
    /// completes a guest buffer once the device has played its last frame.
    fn position(&self) -> Option<Position> {
        None
    }
}

/// Where a playback sink on its own clock is, in frames counted from its
/// open: everything it was handed or made itself (its cushion of silence,
/// frames it had no room for), and of that what it has played or dropped
/// (`taken` less what it still holds). `played` never passes `taken`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Position {
    pub taken: u64,
    pub played: u64,
    /// What it must hold, not yet played, to play on without a gap: what
    /// it takes at a time (a period, a sound server's quantum) and slack
    /// for a late wake-up of the daemon (the cushion it starts with).
    pub keep: u64,
}

/// Where a capture stream's frames come from. Dropping it closes it.
pub trait CaptureSource: Send {
    /// Who keeps time for this source.
    fn clock(&self) -> Clock;
    /// Fills `buf` completely with interleaved frames in the negotiated
    /// format; what the device has not produced is silence. Never blocks.
    fn read(&mut self, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// One part of a read the daemon makes in parts: a guest message larger
    /// than the daemon's copy buffer is recorded in chunks of whole frames,
    /// in order, back to back, `more` bytes of the same read still to come
    /// after this part (0: the last part, or a read in one part).
    ///
    /// Fills `buf` as [`read`](Self::read) does and returns how many of its
    /// bytes are captured frames (a whole number of frames); the rest of
    /// `buf` is silence. A part that comes back short (fewer bytes than
    /// `buf` holds whole frames) ends the read: the daemon makes the `more`
    /// bytes after it silence itself, without calling again, as one read
    /// would have ended with silence once the device had nothing more. An
    /// error ends the read too (the message is then answered IO_ERR).
    ///
    /// The default reads each part on its own and counts it all captured;
    /// a device whose read depends on its whole size (ALSA waits for that
    /// read plus a period before the first one; the pad counts one
    /// underrun per read) overrides it.
    fn read_part(&mut self, buf: &mut [u8], more: usize) -> Result<usize, DeviceError> {
        let _ = more;
        self.read(buf).map(|()| buf.len())
    }
    /// Bytes captured and waiting in the host path.
    fn latency_bytes(&self) -> u32;
    /// Overruns the device itself had (and recovered from) so far; the
    /// daemon reports new ones to the guest as PCM_XRUN.
    fn xruns(&self) -> u64 {
        0
    }
    /// The device's rate against `CLOCK_MONOTONIC` (ppm), as its own clock
    /// was measured, once known (see [`PlaybackSink::rate_ppm`]).
    fn rate_ppm(&self) -> Option<f64> {
        None
    }
    /// Holds the device's clock (`true`: the guest stopped the stream, or
    /// the VM paused) or lets it run again. Never blocks.
    fn set_paused(&mut self, paused: bool) -> Result<(), DeviceError> {
        let _ = paused;
        Ok(())
    }
    /// For a source on its own clock ([`Clock::Device`]): the frames it
    /// captured that were not read yet, as of now (kept level, as for
    /// [`PlaybackSink::fill_frames`]).
    fn fill_frames(&self) -> Option<Fill> {
        None
    }
}
