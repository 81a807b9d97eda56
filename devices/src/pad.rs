//! The `pad` device: a Unix stream socket that plays the guest's output to,
//! and records the guest's input from, whichever host process connects.
//!
//! Modelled on NetBSD's pad(4). The wire protocol, as a client sees it:
//! - One client at a time. Another connection gets the single line
//!   `vsound: pad NAME is busy\n` and is closed (but see "pipe" below: a
//!   client that hung up with input still to record is followed by the
//!   next one).
//! - Connecting **attaches** the device; closing the connection (or an
//!   `EPIPE`/`ECONNRESET` on it) **detaches** it. A client that only shuts
//!   down its write side (`shutdown(SHUT_WR)`, EOF on our read) stays
//!   attached and keeps receiving playback; its capture input is over.
//! - Playback: the guest's interleaved PCM bytes exactly as the guest sent
//!   them, whole frames only. With `header = "wav"` the frames of each new
//!   format on a connection (a sink opening with parameters the client has
//!   not been told yet, or a client connecting while a sink is open) start
//!   with a 44-byte canonical WAV header whose RIFF and data sizes are
//!   `0xFFFF_FFFF` ("streaming, length unknown"). With `fill = "silence"`,
//!   while the guest plays nothing the client gets silence in the last
//!   playback format, in real time, so its timeline is the guest's.
//! - Capture: the client writes raw interleaved PCM in the capture stream's
//!   format (never a header); byte 0 after connecting starts a frame.
//!   `capture = "pipe"` (the default) is lossless: the pad reads from the
//!   client only as fast as the guest records (a writer that is ahead
//!   blocks, as with any pipe); what it writes before the guest records
//!   waits (in a 256 KiB inbox and the socket's buffer); after the client
//!   closes, what it wrote is still recorded before the pad detaches.
//!   `capture = "live"` is for live sources: never block the writer; a
//!   bounded ring per capture stream keeps the newest frames (the oldest
//!   are dropped and counted) and input is discarded while nothing records.
//!
//! The guest's clock rules: a slow or absent client never stalls the
//! guest. The playback ring is bounded and preallocated when the stream
//! opens; when it is full the *oldest* whole frames are dropped and
//! counted. While no client is connected playback is discarded and capture
//! is silence, both answered with [`DeviceError::Gone`]; a capture that
//! finds no input has silence (an underrun, counted).
//!
//! Threads: one pad thread per device owns the listening socket and the
//! client connection (non-blocking, driven by `poll` with a wake eventfd).
//! Sinks and sources only touch the rings under the device's state lock;
//! the thread copies a chunk out of (or into) a ring under that lock and
//! does the socket I/O with the lock released. The listener is called from
//! the pad thread, with no lock held, strictly alternating
//! attached/detached.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::eventfd::EventFd;
#[cfg(test)]
use crate::unix_socket::MAX_SOCKET_PATH;
use crate::{
    unix_socket, CaptureSource, Clock, DeviceError, DeviceListener, Format, HostDevice,
    PlaybackSink, StreamDirection, StreamParams,
};

/// Smallest ring per direction: a third of a second of 48 kHz S16 stereo,
/// slack for a client that is scheduled late.
const MIN_RING_BYTES: u64 = 64 * 1024;
/// Largest ring per direction. `buffer_bytes` comes from the guest; this
/// caps what a guest can make us allocate (about 5 s of 8-channel FLOAT at
/// 96 kHz).
const MAX_RING_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes the pad thread moves per socket call.
const IO_CHUNK: usize = 16 * 1024;
/// Socket calls per direction per wakeup, so one busy direction (a client
/// flooding capture input) cannot starve the other or a shutdown request.
const BURST: usize = 16;
/// Length of the canonical WAV header (RIFF + 16-byte `fmt ` + `data`).
const WAV_HEADER_LEN: usize = 44;
/// Pause after an `accept` error other than "nothing pending" (EMFILE...),
/// so a listening socket that stays readable does not spin the thread.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// What a `capture = "pipe"` pad reads ahead of the guest (on top of the
/// socket's own buffer): about 1.4 s of 48 kHz S16 stereo.
const INBOX_BYTES: u64 = 256 * 1024;
/// `fill = "silence"`: silence is sent up to this long before now, so that
/// a playback write that is a little late is not preceded by silence that
/// overlaps it.
const FILL_SLACK: Duration = Duration::from_millis(20);
/// How often the pad thread tops up the silence.
const FILL_TICK: Duration = Duration::from_millis(10);

/// What a pad sends its client ahead of playback frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Header {
    /// Nothing: raw interleaved PCM.
    #[default]
    Raw,
    /// A 44-byte WAV header at the start of each playback stream.
    Wav,
}

/// How a pad takes the capture input its client writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaptureMode {
    /// Like a pipe: every byte the client writes reaches the guest, in
    /// order; the pad reads only as fast as the guest records, so a writer
    /// that is ahead blocks; what it wrote before closing is still recorded.
    #[default]
    Pipe,
    /// For live sources (a microphone): never block the writer, keep the
    /// newest frames when the guest is behind, discard while nothing
    /// records.
    Live,
}

/// What a pad sends its client while the guest plays nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fill {
    /// Nothing: the client gets the guest's frames only.
    #[default]
    None,
    /// Silence in the last playback stream's format, in real time, so the
    /// client's timeline is the guest's (a 1 s gap stays a 1 s gap).
    Silence,
}

/// Options of a `kind = "pad"` device.
///
/// ```toml
/// [devices.pad0]
/// kind = "pad"
/// path = "/tmp/vsound-pad0.sock"   # required
/// mode = "0660"                    # or 0o660; default 0600
/// owner = "alice"                  # user name or uid; default: the daemon's
/// group = "audio"                  # group name or gid; default: the daemon's
/// header = "wav"                   # "raw" (default) | "wav"
/// capture = "live"                 # "pipe" (default) | "live"
/// fill = "silence"                 # "none" (default) | "silence"
/// allow_format_changes = true      # raw pads: see `vsound check-config`
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PadOptions {
    #[serde(deserialize_with = "unix_socket::de_path")]
    path: PathBuf,
    #[serde(default = "default_mode", deserialize_with = "unix_socket::de_mode")]
    mode: u32,
    #[serde(default, deserialize_with = "unix_socket::de_owner")]
    owner: Option<u32>,
    #[serde(default, deserialize_with = "unix_socket::de_group")]
    group: Option<u32>,
    #[serde(default)]
    header: Header,
    #[serde(default)]
    capture: CaptureMode,
    #[serde(default)]
    fill: Fill,
    /// Read by the config check (a raw pad whose stream offers several
    /// formats): the pad itself needs nothing.
    #[serde(default)]
    allow_format_changes: bool,
}

impl PadOptions {
    /// Where the socket lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket file's permission bits.
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// Who may connect to the socket.
    pub fn access(&self) -> unix_socket::Access {
        unix_socket::Access {
            mode: self.mode,
            owner: self.owner,
            group: self.group,
        }
    }

    /// What playback starts with.
    pub fn header(&self) -> Header {
        self.header
    }

    /// How capture input is taken.
    pub fn capture(&self) -> CaptureMode {
        self.capture
    }

    /// What the client gets while the guest plays nothing.
    pub fn fill(&self) -> Fill {
        self.fill
    }

    /// A raw pad may carry streams of several formats (`check-config` warns
    /// instead of refusing).
    pub fn allow_format_changes(&self) -> bool {
        self.allow_format_changes
    }
}

fn default_mode() -> u32 {
    unix_socket::DEFAULT_MODE
}

/// Why a pad could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PadError {
    /// The socket could not be created (see [`unix_socket::listen`]).
    #[error(transparent)]
    Socket(#[from] unix_socket::SocketError),
    /// The listening socket could not be set up.
    #[error("Cannot listen on {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The eventfd or the pad thread could not be created.
    #[error("Cannot start the pad thread")]
    Thread(#[source] io::Error),
}

/// A snapshot of a pad's counters (see [`PadDevice::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PadStats {
    /// A client is connected now.
    pub attached: bool,
    /// Clients that attached since the device was built.
    pub clients: u64,
    /// Connections turned away because a client was already connected.
    pub refused: u64,
    /// Playback bytes sent to clients (WAV headers included).
    pub playback_bytes: u64,
    /// Sink writes that found the playback ring full.
    pub playback_overflows: u64,
    /// Playback bytes dropped (oldest first) because the ring was full.
    pub playback_dropped_bytes: u64,
    /// Playback bytes written while no client was connected.
    pub playback_discarded_bytes: u64,
    /// Capture bytes received from clients (also while no source was open).
    pub capture_bytes: u64,
    /// Client reads that found the capture ring full.
    pub capture_overflows: u64,
    /// Capture bytes dropped (oldest first) because the ring was full.
    pub capture_dropped_bytes: u64,
    /// Source reads, with a client connected, that were padded with silence.
    pub capture_underruns: u64,
    /// Silence bytes handed to sources (with or without a client).
    pub capture_silence_bytes: u64,
    /// Silence bytes sent to the client while the guest played nothing
    /// (`fill = "silence"`).
    pub playback_fill_bytes: u64,
}

#[derive(Default)]
struct Counters {
    clients: AtomicU64,
    refused: AtomicU64,
    playback_bytes: AtomicU64,
    playback_overflows: AtomicU64,
    playback_dropped_bytes: AtomicU64,
    playback_discarded_bytes: AtomicU64,
    capture_bytes: AtomicU64,
    capture_overflows: AtomicU64,
    capture_dropped_bytes: AtomicU64,
    capture_underruns: AtomicU64,
    capture_silence_bytes: AtomicU64,
    playback_fill_bytes: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self, attached: bool) -> PadStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PadStats {
            attached,
            clients: get(&self.clients),
            refused: get(&self.refused),
            playback_bytes: get(&self.playback_bytes),
            playback_overflows: get(&self.playback_overflows),
            playback_dropped_bytes: get(&self.playback_dropped_bytes),
            playback_discarded_bytes: get(&self.playback_discarded_bytes),
            capture_bytes: get(&self.capture_bytes),
            capture_overflows: get(&self.capture_overflows),
            capture_dropped_bytes: get(&self.capture_dropped_bytes),
            capture_underruns: get(&self.capture_underruns),
            capture_silence_bytes: get(&self.capture_silence_bytes),
            playback_fill_bytes: get(&self.playback_fill_bytes),
        }
    }
}

fn round_down(x: u64, frame: u64) -> u64 {
    x - x % frame
}

fn round_up(x: u64, frame: u64) -> u64 {
    x.div_ceil(frame).saturating_mul(frame)
}

/// Rings up to this size are zeroed (touched) when they are made; larger
/// ones are left to the allocator (see [`zeroed`]).
const EAGER_ZERO_BYTES: usize = 1 << 20;

/// `len` zero bytes, or `None` if they cannot be had. A small ring is
/// zeroed here, at once (microseconds: its memory is committed up front,
/// as it always was). A large one is zeroed by the allocator (`calloc`:
/// fresh pages from the kernel, touched only as the ring fills), not by a
/// loop in the device's open: filling 16 MiB there (the ring of a stream
/// with 4 MiB periods) could outlast the 50 ms the daemon gives a device
/// call before it takes the device as hung (seen in a debug build on two
/// busy cores).
fn zeroed(len: usize) -> Option<Vec<u8>> {
    if len <= EAGER_ZERO_BYTES {
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).ok()?;
        buf.resize(len, 0);
        return Some(buf);
    }
    let layout = std::alloc::Layout::array::<u8>(len).ok()?;
    // SAFETY: `layout` has a non-zero size (`len > EAGER_ZERO_BYTES`).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: `ptr` comes from the global allocator with `layout`, which is
    // the layout of `len` bytes (align 1) a `Vec<u8>` of capacity `len`
    // frees with; all `len` bytes are initialized (zero).
    Some(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

/// A byte ring that only ever hands out, and drops, whole frames.
///
/// Positions are absolute byte offsets in the stream (`head` = bytes pushed
/// so far); a frame starts at every multiple of the frame size, and the byte
/// at position `p` lives at `buf[p % capacity]`. `tail` is always on a frame
/// boundary. `tail > head` means "skip pushed bytes up to `tail`": the rest
/// of a frame whose start was cleared away.
struct Ring {
    buf: Vec<u8>,
    frame: u64,
    head: u64,
    tail: u64,
}

impl Ring {
    /// Allocates a ring of at least `bytes` (rounded up to whole frames,
    /// capped at [`MAX_RING_BYTES`]).
    fn new(bytes: u64, frame_bytes: u32) -> Result<Ring, DeviceError> {
        let frame = u64::from(frame_bytes);
        if frame == 0 {
            return Err(DeviceError::Unsupported("zero-byte frames".into()));
        }
        let cap = round_up(bytes.clamp(1, MAX_RING_BYTES), frame);
        let len = usize::try_from(cap)
            .map_err(|_| DeviceError::Unsupported(format!("{cap}-byte ring")))?;
        let buf = zeroed(len).ok_or_else(|| {
            DeviceError::Unsupported(format!("cannot allocate a {len}-byte ring"))
        })?;
        Ok(Ring {
            buf,
            frame,
            head: 0,
            tail: 0,
        })
    }

    fn capacity(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Bytes queued (including a trailing partial frame).
    fn len(&self) -> u64 {
        self.head.saturating_sub(self.tail)
    }

    /// Bytes queued in whole frames.
    fn frames_len(&self) -> u64 {
        round_down(self.head, self.frame).saturating_sub(self.tail)
    }

    /// Forgets what is queued; the next frame boundary starts afresh.
    fn clear(&mut self) {
        self.tail = self.tail.max(round_up(self.head, self.frame));
    }

    /// Empties the ring and makes `pos` the position of the next push.
    fn reset_at(&mut self, pos: u64) {
        self.head = pos;
        self.tail = round_up(pos, self.frame);
    }

    /// Accounts for `n` bytes that were not kept (no client).
    fn discard(&mut self, n: u64) {
        self.head = self.head.saturating_add(n);
        self.clear();
    }

    /// Appends `data`, dropping the oldest whole frames if it does not fit.
    /// Returns how many bytes were dropped.
    fn push(&mut self, data: &[u8]) -> u64 {
        let cap = self.capacity();
        let start = self.head;
        let end = start.saturating_add(data.len() as u64);
        self.head = end;
        let mut dropped = 0;
        let min_tail = round_up(end.saturating_sub(cap), self.frame);
        if min_tail > self.tail {
            dropped = min_tail - self.tail;
            self.tail = min_tail;
        }
        // Bytes before `tail` are skipped (or were just dropped).
        let from = self.tail.max(start);
        let skip = usize::try_from(from - start.min(from)).unwrap_or(usize::MAX);
        if let Some(src) = data.get(skip..) {
            self.copy_in(from, src);
        }
        dropped
    }

    /// Moves whole frames, as many as fit in `out`, to the front of `out`.
    /// Returns the byte count.
    fn pop(&mut self, out: &mut [u8]) -> usize {
        let room = round_down(out.len() as u64, self.frame);
        let n = self.frames_len().min(room);
        let n_usize = usize::try_from(n).unwrap_or(0);
        if let Some(dst) = out.get_mut(..n_usize) {
            self.copy_out(self.tail, dst);
            self.tail += n;
            n_usize
        } else {
            0
        }
    }

    fn index(&self, pos: u64) -> usize {
        usize::try_from(pos % self.capacity()).unwrap_or(0)
    }

    fn copy_in(&mut self, pos: u64, src: &[u8]) {
        let at = self.index(pos);
        let first = src.len().min(self.buf.len() - at);
        let (a, b) = src.split_at(first);
        if let Some(dst) = self.buf.get_mut(at..at + a.len()) {
            dst.copy_from_slice(a);
        }
        if let Some(dst) = self.buf.get_mut(..b.len()) {
            dst.copy_from_slice(b);
        }
    }

    fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let at = self.index(pos);
        let first = dst.len().min(self.buf.len() - at);
        let (a, b) = dst.split_at_mut(first);
        if let Some(src) = self.buf.get(at..at + a.len()) {
            a.copy_from_slice(src);
        }
        if let Some(src) = self.buf.get(..b.len()) {
            b.copy_from_slice(src);
        }
    }
}

/// Ring capacity for a stream: at least its buffer, four periods, and
/// [`MIN_RING_BYTES`].
fn ring_bytes(params: &StreamParams) -> u64 {
    u64::from(params.buffer_bytes)
        .max(u64::from(params.period_bytes).saturating_mul(4))
        .max(MIN_RING_BYTES)
}

/// The WAV `fmt ` tag and bits per sample for formats a canonical 44-byte
/// header describes truthfully; `None` for the others (signed 8-bit,
/// unsigned multi-byte, 18/20/24 bits LSB-justified in a larger container,
/// DSD, IEC958), which the pad refuses in `wav` mode rather than label
/// wrongly.
fn wav_format(format: Format) -> Option<(u16, u16)> {
    const PCM: u16 = 1;
    const IEEE_FLOAT: u16 = 3;
    const ALAW: u16 = 6;
    const MULAW: u16 = 7;
    match format {
        Format::U8 => Some((PCM, 8)),
        Format::S16 => Some((PCM, 16)),
        Format::S24_3 => Some((PCM, 24)),
        Format::S32 => Some((PCM, 32)),
        Format::Float => Some((IEEE_FLOAT, 32)),
        Format::Float64 => Some((IEEE_FLOAT, 64)),
        Format::ALaw => Some((ALAW, 8)),
        Format::MuLaw => Some((MULAW, 8)),
        _ => None,
    }
}

/// The canonical 44-byte WAV header for a stream of unknown length.
///
/// Always the plain `WAVEFORMATEX`-sized `fmt ` chunk, also for more than
/// two channels: sox, ffmpeg and libsndfile read it, and
/// `WAVE_FORMAT_EXTENSIBLE` would need a speaker mask the pad does not know.
fn wav_header(params: &StreamParams) -> Option<[u8; WAV_HEADER_LEN]> {
    let (tag, bits) = wav_format(params.format)?;
    let frame = params.frame_bytes();
    let block_align = u16::try_from(frame).ok()?;
    let byte_rate = params.rate.saturating_mul(frame);
    let unknown = u32::MAX.to_le_bytes();
    let fields: [&[u8]; 13] = [
        b"RIFF",
        &unknown,
        b"WAVE",
        b"fmt ",
        &16u32.to_le_bytes(),
        &tag.to_le_bytes(),
        &u16::from(params.channels).to_le_bytes(),
        &params.rate.to_le_bytes(),
        &byte_rate.to_le_bytes(),
        &block_align.to_le_bytes(),
        &bits.to_le_bytes(),
        b"data",
        &unknown,
    ];
    let mut header = [0u8; WAV_HEADER_LEN];
    let mut at = 0;
    for field in fields {
        header.get_mut(at..at + field.len())?.copy_from_slice(field);
        at += field.len();
    }
    (at == WAV_HEADER_LEN).then_some(header)
}

/// `send` that neither blocks nor raises `SIGPIPE`.
fn send_nonblocking(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call and
    // `fd` is an open socket borrowed for its duration.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
    let ms = timeout.map_or(-1, |t| {
        libc::c_int::try_from(t.as_millis().max(1)).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `fds` is an exclusively borrowed array of `n` pollfd structs,
    // valid for the whole call.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), n, ms) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the data
    // is still consistent byte counts, so carry on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The open playback stream.
struct Playback {
    ring: Ring,
    header: Option<[u8; WAV_HEADER_LEN]>,
    /// The header is due before the next frames.
    header_pending: bool,
    /// The sink was closed: what is queued is still sent, then this goes.
    closing: bool,
}

impl Playback {
    fn has_output(&self) -> bool {
        self.header_pending || self.ring.frames_len() > 0
    }
}

/// Everything the sinks, sources and the pad thread share, under one lock.
struct State {
    /// A client is connected (the authoritative flag for I/O).
    connected: bool,
    /// Bytes the client wrote since it connected: positions capture frames.
    client_in: u64,
    playback: Option<Playback>,
    /// `capture = "live"`: the open capture stream's ring.
    capture: Option<Ring>,
    /// `capture = "pipe"`: what the client wrote and the guest has not
    /// recorded yet (per connection, whether a capture stream is open or
    /// not; byte-granular).
    inbox: Option<Ring>,
    /// The frame size of the open capture stream (pipe mode pops whole
    /// frames).
    capture_frame: Option<u32>,
    /// The client's input is over (EOF).
    input_done: bool,
    /// The client can no longer take playback (hung up, or a write failed).
    output_closed: bool,
    /// The WAV header last sent on this connection.
    last_header: Option<[u8; WAV_HEADER_LEN]>,
    /// `fill = "silence"`: the format and time the client has been sent.
    fill: Option<FillClock>,
}

/// `fill = "silence"`: what to send while the guest plays nothing.
struct FillClock {
    format: Format,
    frame: u64,
    bytes_per_second: u64,
    header: Option<[u8; WAV_HEADER_LEN]>,
    /// The client's timeline: what it was sent (frames or silence) lasts
    /// until then.
    covered_until: Instant,
    /// The pad has been sending silence since the last frames (the guest
    /// is idle): the next frames are preceded by the silence the slack
    /// left out, so a pause keeps its exact length.
    idle: bool,
}

impl FillClock {
    fn duration_of(&self, bytes: u64) -> Duration {
        let ns = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_second.max(1));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn bytes_in(&self, d: Duration) -> u64 {
        let b = d.as_nanos() * u128::from(self.bytes_per_second) / 1_000_000_000;
        round_down(u64::try_from(b).unwrap_or(u64::MAX), self.frame.max(1))
    }

    /// Frames of `bytes` are sent now.
    fn cover(&mut self, now: Instant, bytes: u64) {
        self.covered_until = self.covered_until.max(now) + self.duration_of(bytes);
    }
}

struct Shared {
    name: String,
    header: Header,
    capture_mode: CaptureMode,
    fill: Fill,
    state: Mutex<State>,
    listener: Mutex<Option<Arc<dyn DeviceListener>>>,
    /// Mirrors `State::connected` for lock-free `is_attached`.
    attached: AtomicBool,
    stop: AtomicBool,
    wake: EventFd,
    counters: Counters,
}

impl Shared {
    fn notify(&self, attached: bool) {
        let listener = lock(&self.listener).clone();
        if let Some(l) = listener {
            if attached {
                l.attached();
            } else {
                l.detached();
            }
        }
    }
}

/// A pad device: one listening socket, at most one client.
pub struct PadDevice {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Dropped after the thread is joined (field order), removing the file.
    socket: unix_socket::SocketFile,
}

impl PadDevice {
    /// Creates the listening socket (replacing a stale socket file, never
    /// anything else), sets its mode and starts the pad thread.
    pub fn from_options(name: &str, opts: PadOptions) -> Result<PadDevice, PadError> {
        let (listener, socket) = unix_socket::listen(&opts.path, &opts.access())?;
        listener
            .set_nonblocking(true)
            .map_err(|source| PadError::Bind {
                path: socket.path().to_owned(),
                source,
            })?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            header: opts.header,
            capture_mode: opts.capture,
            fill: opts.fill,
            state: Mutex::new(State {
                connected: false,
                client_in: 0,
                playback: None,
                capture: None,
                inbox: None,
                capture_frame: None,
                input_done: false,
                output_closed: false,
                last_header: None,
                fill: None,
            }),
            listener: Mutex::new(None),
            attached: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: EventFd::new().map_err(PadError::Thread)?,
            counters: Counters::default(),
        });
        let worker = PadThread::new(Arc::clone(&shared), listener);
        // Thread names cannot hold NUL (a quoted TOML key can).
        let thread_name: String = format!("pad-{name}")
            .chars()
            .filter(|&c| c != '\0')
            .collect();
        let thread = thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                crate::thread_started(crate::DeviceThread::Pad);
                worker.run()
            })
            .map_err(PadError::Thread)?;
        log::info!("pad {name}: listening on {}", socket.path().display());
        Ok(PadDevice {
            shared,
            thread: Some(thread),
            socket,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PadStats {
        let attached = self.shared.attached.load(Ordering::Acquire);
        self.shared.counters.snapshot(attached)
    }
}

impl Drop for PadDevice {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.signal();
        if let Some(t) = self.thread.take() {
            // A listener holding the last reference could drop us on the
            // pad thread itself; it exits on its own after the callback.
            if t.thread().id() != thread::current().id() && t.join().is_err() {
                log::error!("pad {}: pad thread panicked", self.shared.name);
            }
        }
    }
}

impl HostDevice for PadDevice {
    fn kind(&self) -> &'static str {
        "pad"
    }

    fn is_attached(&self) -> bool {
        self.shared.attached.load(Ordering::Acquire)
    }

    /// Never: a pad's I/O is a copy into its rings, under a short lock.
    fn may_block(&self) -> bool {
        false
    }

    /// Does not replay the current state: read [`HostDevice::is_attached`]
    /// after setting a listener.
    fn set_listener(&self, listener: Arc<dyn DeviceListener>) {
        *lock(&self.shared.listener) = Some(listener);
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("client_connected", u64::from(s.attached)),
            ("clients", s.clients),
            ("refused", s.refused),
            ("playback_bytes", s.playback_bytes),
            ("playback_overflows", s.playback_overflows),
            ("playback_dropped_bytes", s.playback_dropped_bytes),
            ("playback_discarded_bytes", s.playback_discarded_bytes),
            ("playback_fill_bytes", s.playback_fill_bytes),
            ("capture_bytes", s.capture_bytes),
            ("capture_overflows", s.capture_overflows),
            ("capture_dropped_bytes", s.capture_dropped_bytes),
            ("capture_underruns", s.capture_underruns),
            ("capture_silence_bytes", s.capture_silence_bytes),
        ]
    }

    fn check_params(&self, dir: StreamDirection, params: &StreamParams) -> Result<(), DeviceError> {
        if params.channels == 0 {
            return Err(DeviceError::Unsupported("zero channels".into()));
        }
        // Only playback carries a header; capture is always raw.
        if dir == StreamDirection::Playback
            && self.shared.header == Header::Wav
            && wav_header(params).is_none()
        {
            return Err(DeviceError::Unsupported(format!(
                "pad {} sends WAV headers, which cannot describe {}",
                self.shared.name, params.format
            )));
        }
        Ok(())
    }

    fn open_playback(&self, params: &StreamParams) -> Result<Box<dyn PlaybackSink>, DeviceError> {
        self.check_params(StreamDirection::Playback, params)?;
        let header = match self.shared.header {
            Header::Raw => None,
            Header::Wav => wav_header(params),
        };
        let ring = Ring::new(ring_bytes(params), params.frame_bytes())?;
        let mut st = lock(&self.shared.state);
        if st.playback.as_ref().is_some_and(|p| !p.closing) {
            return Err(DeviceError::Unsupported(format!(
                "pad {} already has a playback stream open",
                self.shared.name
            )));
        }
        // A new header only when the client has not been told this format
        // (a stream restarted with the same parameters goes on in the same
        // WAV stream).
        let header_pending = st.connected && header.is_some() && header != st.last_header;
        let replaced = st.playback.replace(Playback {
            ring,
            header,
            header_pending,
            closing: false,
        });
        if let Some(old) = replaced.as_ref().filter(|p| p.has_output()) {
            bump(
                &self.shared.counters.playback_dropped_bytes,
                old.ring.frames_len(),
            );
        }
        if self.shared.fill == Fill::Silence {
            let now = Instant::now();
            // The client's timeline goes on: a pause being filled stays one
            // (its held-back part is sent before the new stream's frames).
            let (covered_until, idle) = st
                .fill
                .as_ref()
                .map_or((now, false), |f| (f.covered_until, f.idle));
            st.fill = Some(FillClock {
                format: params.format,
                frame: u64::from(params.frame_bytes()),
                bytes_per_second: params.bytes_per_second(),
                header,
                covered_until,
                idle,
            });
        }
        drop(st);
        log::info!(
            "pad {}: playback stream {} {} Hz {} ch{}",
            self.shared.name,
            params.format,
            params.rate,
            params.channels,
            if header_pending {
                ", new WAV header"
            } else {
                ""
            }
        );
        if header_pending || self.shared.fill == Fill::Silence {
            self.shared.wake.signal();
        }
        Ok(Box::new(PadSink {
            shared: Arc::clone(&self.shared),
        }))
    }

    fn open_capture(&self, params: &StreamParams) -> Result<Box<dyn CaptureSource>, DeviceError> {
        self.check_params(StreamDirection::Capture, params)?;
        let live = self.shared.capture_mode == CaptureMode::Live;
        let ring = match live {
            true => Some(Ring::new(ring_bytes(params), params.frame_bytes())?),
            false => None,
        };
        let mut st = lock(&self.shared.state);
        if st.capture_frame.is_some() {
            return Err(DeviceError::Unsupported(format!(
                "pad {} already has a capture stream open",
                self.shared.name
            )));
        }
        if let Some(mut ring) = ring {
            // Mid-connection, the first frame starts at the client's next
            // frame boundary.
            ring.reset_at(st.client_in);
            st.capture = Some(ring);
        }
        st.capture_frame = Some(params.frame_bytes());
        drop(st);
        log::info!(
            "pad {}: capture stream {} {} Hz {} ch ({})",
            self.shared.name,
            params.format,
            params.rate,
            params.channels,
            if live { "live" } else { "pipe" }
        );
        // A pipe pad may have been waiting with a full inbox.
        self.shared.wake.signal();
        Ok(Box::new(PadSource {
            shared: Arc::clone(&self.shared),
            format: params.format,
            frame: params.frame_bytes(),
        }))
    }
}

/// The playback side; dropping it closes the stream.
struct PadSink {
    shared: Arc<Shared>,
}

impl PlaybackSink for PadSink {
    fn clock(&self) -> Clock {
        Clock::Daemon
    }

    fn write(&mut self, frames: &[u8]) -> Result<(), DeviceError> {
        let shared = &*self.shared;
        let mut st = lock(&shared.state);
        let connected = st.connected;
        let output_closed = st.output_closed;
        let State { playback, fill, .. } = &mut *st;
        let Some(pb) = playback.as_mut() else {
            return Err(DeviceError::Gone);
        };
        let len = frames.len() as u64;
        if !connected {
            pb.ring.discard(len);
            drop(st);
            bump(&shared.counters.playback_discarded_bytes, len);
            return Err(DeviceError::Gone);
        }
        if output_closed {
            // The client hung up but still has capture input to record: the
            // pad stays attached, its playback goes nowhere (counted).
            drop(st);
            bump(&shared.counters.playback_discarded_bytes, len);
            return Ok(());
        }
        let was_idle = !pb.has_output();
        let mut dropped = 0;
        if let Some(f) = fill.as_mut() {
            let now = Instant::now();
            if f.idle && now > f.covered_until {
                // The rest of the pause, which the fill's slack held back.
                let mut owed = f.bytes_in(now - f.covered_until);
                let mut silence = [0u8; 4096];
                let chunk = round_down(silence.len() as u64, f.frame.max(1)) as usize;
                f.format.fill_silence(&mut silence[..chunk]);
                while owed > 0 {
                    let n = owed.min(chunk as u64) as usize;
                    dropped += pb.ring.push(&silence[..n]);
                    owed -= n as u64;
                }
                f.covered_until = now;
            }
            f.idle = false;
            f.cover(now, len);
        }
        dropped += pb.ring.push(frames);
        let wake = was_idle && pb.has_output();
        drop(st);
        if dropped > 0 {
            bump(&shared.counters.playback_overflows, 1);
            bump(&shared.counters.playback_dropped_bytes, dropped);
        }
        if wake {
            shared.wake.signal();
        }
        Ok(())
    }

    fn latency_bytes(&self) -> u32 {
        let st = lock(&self.shared.state);
        let n = st.playback.as_ref().map_or(0, |pb| pb.ring.len());
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl Drop for PadSink {
    /// What the guest played and the client has not been sent yet is still
    /// sent (the pad thread removes the stream once it is out).
    fn drop(&mut self) {
        let old = {
            let mut st = lock(&self.shared.state);
            let sending = st.connected && !st.output_closed;
            match st.playback.as_mut() {
                Some(pb) if sending && pb.has_output() => {
                    pb.closing = true;
                    None
                }
                _ => st.playback.take(),
            }
        };
        if old.is_none() {
            self.shared.wake.signal();
        }
        drop(old);
    }
}

/// The capture side; dropping it closes the stream.
struct PadSource {
    shared: Arc<Shared>,
    format: Format,
    frame: u32,
}

impl CaptureSource for PadSource {
    fn clock(&self) -> Clock {
        Clock::Daemon
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.read_part(buf, 0).map(|_| ())
    }

    /// One underrun per read, however many parts: a part that finds the
    /// input short ends the read (the daemon makes the `more` bytes after
    /// it silence, counted here as silence of this read).
    fn read_part(&mut self, buf: &mut [u8], more: usize) -> Result<usize, DeviceError> {
        let shared = &*self.shared;
        let mut st = lock(&shared.state);
        let connected = st.connected;
        let input_done = st.input_done;
        let mut wake = false;
        let n = if !connected {
            0
        } else if let Some(inbox) = st.inbox.as_mut() {
            // Pipe: whole frames of this stream, oldest first; room made
            // lets the pad thread read on (it stops when the inbox is full).
            let was_full = inbox.len() >= inbox.capacity();
            let frame = u64::from(self.frame.max(1));
            let whole = round_down(inbox.len().min(buf.len() as u64), frame);
            let n = inbox.pop(buf.get_mut(..whole as usize).unwrap_or_default());
            wake = (was_full && n > 0) || (input_done && inbox.len() < frame);
            n
        } else {
            match st.capture.as_mut() {
                Some(ring) => ring.pop(buf),
                None => 0,
            }
        };
        drop(st);
        if wake {
            shared.wake.signal();
        }
        let rest = buf.get_mut(n..).unwrap_or_default();
        if !rest.is_empty() {
            self.format.fill_silence(rest);
            // The read ends here: what is left of it is silence too.
            let silence = (rest.len() as u64).saturating_add(more as u64);
            bump(&shared.counters.capture_silence_bytes, silence);
            if connected && !input_done {
                bump(&shared.counters.capture_underruns, 1);
            }
        }
        if connected {
            Ok(n)
        } else {
            Err(DeviceError::Gone)
        }
    }

    fn latency_bytes(&self) -> u32 {
        let st = lock(&self.shared.state);
        let n = st
            .capture
            .as_ref()
            .or(st.inbox.as_ref())
            .map_or(0, Ring::len);
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl Drop for PadSource {
    fn drop(&mut self) {
        let old = {
            let mut st = lock(&self.shared.state);
            st.capture_frame = None;
            st.capture.take()
        };
        drop(old);
    }
}

/// The connected client, as the pad thread sees it.
struct Client {
    stream: UnixStream,
    /// Still reading capture input (false after the client's EOF).
    reading: bool,
    /// The client hung up (pipe mode keeps it until its input is recorded).
    hup: bool,
}

/// The pad thread: accepts clients and moves bytes between them and the
/// rings. Owns every socket; its buffers are allocated once.
struct PadThread {
    shared: Arc<Shared>,
    listener: UnixListener,
    client: Option<Client>,
    busy_line: Vec<u8>,
    /// Playback bytes taken from the ring, `out[out_start..out_end]` unsent.
    out: Vec<u8>,
    out_start: usize,
    out_end: usize,
    input: Vec<u8>,
}

impl PadThread {
    fn new(shared: Arc<Shared>, listener: UnixListener) -> PadThread {
        let busy_line = format!("vsound: pad {} is busy\n", shared.name).into_bytes();
        PadThread {
            shared,
            listener,
            client: None,
            busy_line,
            out: vec![0; IO_CHUNK],
            out_start: 0,
            out_end: 0,
            input: vec![0; IO_CHUNK],
        }
    }

    fn run(mut self) {
        while !self.shared.stop.load(Ordering::Acquire) {
            let client = self.client.as_ref().map(|c| {
                let mut events = 0;
                if c.reading && self.has_room() {
                    events |= libc::POLLIN;
                }
                if self.wants_to_send() {
                    events |= libc::POLLOUT;
                }
                // A hung-up socket always polls POLLHUP: leave it out while
                // there is nothing to do with it (the wake eventfd says when
                // the guest made room).
                let fd = if c.hup && events == 0 {
                    -1
                } else {
                    c.stream.as_raw_fd()
                };
                (fd, events)
            });
            let (client_fd, client_events) = client.unwrap_or((-1, 0));
            let mut fds = [
                pollfd(self.shared.wake.raw(), libc::POLLIN),
                pollfd(client_fd, client_events),
                pollfd(self.listener.as_raw_fd(), libc::POLLIN),
            ];
            let timeout = self.fill_active().then_some(FILL_TICK);
            if let Err(e) = poll(&mut fds, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("pad {}: poll: {e}", self.shared.name);
                    thread::sleep(ACCEPT_BACKOFF);
                }
                continue;
            }
            let [wake, client, listener] = fds.map(|f| f.revents);
            if wake != 0 {
                self.shared.wake.drain();
            }
            // The client first, so one that closes and one that connects in
            // the same round are a reconnect, not a busy refusal.
            if client != 0 {
                self.client_ready(client);
            }
            if listener != 0 {
                self.accept();
            }
            self.fill_silence();
            self.end_if_drained();
        }
        if self.client.is_some() {
            self.disconnect("the pad is shutting down");
        }
    }

    fn wants_to_send(&self) -> bool {
        if self.client.as_ref().is_some_and(|c| c.hup) {
            return false;
        }
        let st = lock(&self.shared.state);
        !st.output_closed
            && (self.out_start < self.out_end
                || st.playback.as_ref().is_some_and(Playback::has_output))
    }

    /// Capture input can be taken now (a pipe pad's inbox has room).
    fn has_room(&self) -> bool {
        match self.shared.capture_mode {
            CaptureMode::Live => true,
            CaptureMode::Pipe => lock(&self.shared.state)
                .inbox
                .as_ref()
                .is_some_and(|r| r.len() < r.capacity()),
        }
    }

    /// `fill = "silence"` with a client that takes playback and a format.
    fn fill_active(&self) -> bool {
        self.shared.fill == Fill::Silence
            && self.client.as_ref().is_some_and(|c| !c.hup)
            && lock(&self.shared.state).fill.is_some()
    }

    /// Tops up the client's timeline with silence while the guest plays
    /// nothing (`fill = "silence"`).
    fn fill_silence(&mut self) {
        if self.out_start < self.out_end || !self.fill_active() {
            return;
        }
        let wav = self.shared.header == Header::Wav;
        let mut st = lock(&self.shared.state);
        if st.output_closed || st.playback.as_ref().is_some_and(Playback::has_output) {
            return;
        }
        let last_header = st.last_header;
        let Some(f) = st.fill.as_mut() else {
            return;
        };
        let Some(until) = Instant::now().checked_sub(FILL_SLACK) else {
            return;
        };
        if until <= f.covered_until {
            return;
        }
        let header = f.header.filter(|h| wav && Some(*h) != last_header);
        let mut len = 0;
        if let (Some(h), Some(dst)) = (header, self.out.get_mut(..WAV_HEADER_LEN)) {
            dst.copy_from_slice(&h);
            len = WAV_HEADER_LEN;
        }
        let room = round_down((self.out.len() - len) as u64, f.frame.max(1));
        let bytes = f.bytes_in(until - f.covered_until).min(room);
        let end = len + usize::try_from(bytes).unwrap_or(0);
        if let Some(dst) = self.out.get_mut(len..end) {
            f.format.fill_silence(dst);
        }
        f.covered_until += f.duration_of(bytes);
        f.idle = true;
        if header.is_some() {
            st.last_header = header;
        }
        drop(st);
        self.out_start = 0;
        self.out_end = end;
        bump(&self.shared.counters.playback_fill_bytes, bytes);
    }

    /// A pipe pad whose client hung up stays attached until everything the
    /// client wrote was recorded; then it detaches.
    fn end_if_drained(&mut self) {
        let Some(c) = self.client.as_ref() else {
            return;
        };
        if self.shared.capture_mode != CaptureMode::Pipe || c.reading {
            return;
        }
        // Recorded: nothing left but (with a capture stream open) less than
        // one of its frames, which no recording can take.
        // A client that only half-closed stays attached (it may listen to
        // playback; detaching would also be a removal for the guest's
        // capture): only one that hung up is let go.
        let drained = {
            let st = lock(&self.shared.state);
            let frame = u64::from(st.capture_frame.unwrap_or(1).max(1));
            let left = st.inbox.as_ref().map_or(0, Ring::len);
            st.output_closed && (left == 0 || (st.capture_frame.is_some() && left < frame))
        };
        if drained {
            self.disconnect("the client closed; everything it wrote was recorded");
        }
    }

    fn client_ready(&mut self, revents: libc::c_short) {
        if revents & libc::POLLIN != 0 && !self.receive() {
            return;
        }
        if revents & libc::POLLHUP != 0 {
            if self.shared.capture_mode == CaptureMode::Live {
                self.disconnect("the client closed the connection");
                return;
            }
            // Pipe: what it wrote is still recorded first.
            if let Some(c) = self.client.as_mut() {
                c.hup = true;
            }
            self.close_output();
            return;
        }
        if revents & libc::POLLERR != 0 {
            self.disconnect("error on the connection");
            return;
        }
        if revents & libc::POLLOUT != 0 {
            self.send();
        }
    }

    /// Reads capture input; false if the client is gone.
    fn receive(&mut self) -> bool {
        for _ in 0..BURST {
            let room = match self.shared.capture_mode {
                CaptureMode::Live => self.input.len(),
                CaptureMode::Pipe => {
                    let st = lock(&self.shared.state);
                    let room = st
                        .inbox
                        .as_ref()
                        .map_or(0, |r| r.capacity().saturating_sub(r.len()));
                    usize::try_from(room)
                        .unwrap_or(usize::MAX)
                        .min(self.input.len())
                }
            };
            if room == 0 {
                return true;
            }
            let Some(c) = self.client.as_mut() else {
                return false;
            };
            match (&c.stream).read(self.input.get_mut(..room).unwrap_or_default()) {
                Ok(0) => {
                    // Half-close: the client still reads playback.
                    c.reading = false;
                    lock(&self.shared.state).input_done = true;
                    return true;
                }
                Ok(n) => self.deliver(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A client that closed with playback unread in its buffer
                // resets the connection: in pipe mode that is its end of
                // input, and what it wrote is still recorded.
                Err(e)
                    if self.shared.capture_mode == CaptureMode::Pipe
                        && e.kind() == io::ErrorKind::ConnectionReset =>
                {
                    c.reading = false;
                    c.hup = true;
                    lock(&self.shared.state).input_done = true;
                    self.close_output();
                    return true;
                }
                Err(e) => {
                    self.disconnect(&format!("read error: {e}"));
                    return false;
                }
            }
        }
        true
    }

    /// Queues `input[..n]` for the capture source, if one is open.
    fn deliver(&mut self, n: usize) {
        let data = self.input.get(..n).unwrap_or_default();
        let len = data.len() as u64;
        let mut st = lock(&self.shared.state);
        st.client_in = st.client_in.saturating_add(len);
        let dropped = match st.inbox.as_mut() {
            // Pipe: `receive` read no more than there is room for.
            Some(inbox) => inbox.push(data),
            None => st.capture.as_mut().map_or(0, |ring| ring.push(data)),
        };
        drop(st);
        let counters = &self.shared.counters;
        bump(&counters.capture_bytes, len);
        if dropped > 0 {
            bump(&counters.capture_overflows, 1);
            bump(&counters.capture_dropped_bytes, dropped);
        }
    }

    /// Sends playback until the socket is full or nothing is queued.
    fn send(&mut self) {
        for _ in 0..BURST {
            if self.out_start == self.out_end && !self.refill() {
                return;
            }
            let Some(c) = self.client.as_ref() else {
                return;
            };
            let chunk = self
                .out
                .get(self.out_start..self.out_end)
                .unwrap_or_default();
            match send_nonblocking(c.stream.as_fd(), chunk) {
                Ok(n) => {
                    self.out_start += n;
                    bump(&self.shared.counters.playback_bytes, n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if self.keeps_input() {
                        log::info!(
                            "pad {}: the client takes no more playback ({e}); recording what it wrote",
                            self.shared.name
                        );
                        self.close_output();
                    } else {
                        self.disconnect(&format!("write error: {e}"));
                    }
                    return;
                }
            }
        }
    }

    /// A pipe pad whose client still has capture input for the guest.
    fn keeps_input(&self) -> bool {
        self.shared.capture_mode == CaptureMode::Pipe
            && (self.client.as_ref().is_some_and(|c| c.reading)
                || lock(&self.shared.state)
                    .inbox
                    .as_ref()
                    .is_some_and(|r| r.len() > 0))
    }

    /// The client takes no more playback: what is queued for it goes.
    fn close_output(&mut self) {
        let mut st = lock(&self.shared.state);
        st.output_closed = true;
        if let Some(pb) = st.playback.as_mut() {
            pb.ring.clear();
            pb.header_pending = false;
        }
        drop(st);
        self.out_start = 0;
        self.out_end = 0;
    }

    /// Moves the pending header and whole frames from the ring to `out`.
    fn refill(&mut self) -> bool {
        let mut st = lock(&self.shared.state);
        let connected = st.connected;
        let Some(pb) = st.playback.as_mut().filter(|_| connected) else {
            return false;
        };
        let mut len = 0;
        let mut sent_header = None;
        if let (true, Some(h)) = (pb.header_pending, pb.header.as_ref()) {
            if let Some(dst) = self.out.get_mut(..h.len()) {
                dst.copy_from_slice(h);
                len = h.len();
                sent_header = Some(*h);
            }
        }
        pb.header_pending = false;
        len += pb.ring.pop(self.out.get_mut(len..).unwrap_or_default());
        let gone = pb.closing && !pb.has_output();
        if sent_header.is_some() {
            st.last_header = sent_header;
        }
        let old = if gone { st.playback.take() } else { None };
        drop(st);
        drop(old);
        self.out_start = 0;
        self.out_end = len;
        len > 0
    }

    fn accept(&mut self) {
        for _ in 0..BURST {
            match self.listener.accept() {
                // A pipe pad's hung-up client whose input waits to be
                // recorded: the newcomer goes on after it, like `cat a b`.
                Ok((stream, _)) if self.client.as_ref().is_some_and(|c| c.hup) => {
                    self.take_over(stream)
                }
                Ok((stream, _)) if self.client.is_some() => self.refuse(&stream),
                Ok((stream, _)) => self.connect(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    log::warn!("pad {}: accept: {e}", self.shared.name);
                    thread::sleep(ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    fn refuse(&self, stream: &UnixStream) {
        // Best effort: a fresh socket's buffer takes one short line.
        let _ = send_nonblocking(stream.as_fd(), &self.busy_line);
        bump(&self.shared.counters.refused, 1);
        log::info!("pad {}: busy, refused a second client", self.shared.name);
    }

    /// A new client after a hung-up one (pipe mode): its input follows the
    /// old one's, and it takes playback from here on. The pad stays
    /// attached throughout.
    fn take_over(&mut self, stream: UnixStream) {
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("pad {}: cannot use client socket: {e}", self.shared.name);
            return;
        }
        let wav = self.shared.header == Header::Wav;
        let mut st = lock(&self.shared.state);
        st.input_done = false;
        st.output_closed = false;
        st.last_header = None;
        if let Some(pb) = st.playback.as_mut() {
            pb.ring.clear();
            pb.header_pending = wav && pb.header.is_some();
        }
        if let Some(f) = st.fill.as_mut() {
            f.covered_until = Instant::now();
        }
        drop(st);
        self.out_start = 0;
        self.out_end = 0;
        self.client = Some(Client {
            stream,
            reading: true,
            hup: false,
        });
        bump(&self.shared.counters.clients, 1);
        log::info!(
            "pad {}: a new client follows the one that hung up",
            self.shared.name
        );
    }

    fn connect(&mut self, stream: UnixStream) {
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("pad {}: cannot use client socket: {e}", self.shared.name);
            return;
        }
        let wav = self.shared.header == Header::Wav;
        let inbox = match self.shared.capture_mode {
            CaptureMode::Pipe => match Ring::new(INBOX_BYTES, 1) {
                Ok(r) => Some(r),
                Err(e) => {
                    log::warn!("pad {}: no capture inbox: {e}", self.shared.name);
                    None
                }
            },
            CaptureMode::Live => None,
        };
        let mut st = lock(&self.shared.state);
        st.connected = true;
        st.client_in = 0;
        st.inbox = inbox;
        st.input_done = false;
        st.output_closed = false;
        st.last_header = None;
        if let Some(pb) = st.playback.as_mut() {
            pb.ring.clear();
            pb.header_pending = wav && pb.header.is_some();
        }
        if let Some(ring) = st.capture.as_mut() {
            ring.reset_at(0);
        }
        if let Some(f) = st.fill.as_mut() {
            f.covered_until = Instant::now();
        }
        self.shared.attached.store(true, Ordering::Release);
        drop(st);
        self.out_start = 0;
        self.out_end = 0;
        self.client = Some(Client {
            stream,
            reading: true,
            hup: false,
        });
        bump(&self.shared.counters.clients, 1);
        log::info!("pad {}: client attached", self.shared.name);
        self.shared.notify(true);
    }

    fn disconnect(&mut self, why: &str) {
        self.client = None;
        let mut st = lock(&self.shared.state);
        st.connected = false;
        if st.playback.as_ref().is_some_and(|p| p.closing) {
            st.playback = None;
        }
        let unrecorded = st.inbox.take().map_or(0, |r| r.len());
        st.input_done = false;
        st.output_closed = false;
        st.last_header = None;
        if unrecorded > 0 {
            bump(&self.shared.counters.capture_dropped_bytes, unrecorded);
        }
        if let Some(pb) = st.playback.as_mut() {
            pb.ring.clear();
            pb.header_pending = false;
        }
        if let Some(ring) = st.capture.as_mut() {
            ring.clear();
        }
        self.shared.attached.store(false, Ordering::Release);
        drop(st);
        self.out_start = 0;
        self.out_end = 0;
        log::info!("pad {}: client detached: {why}", self.shared.name);
        self.shared.notify(false);
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::fs;
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    use super::*;

    type TestResult = Result<(), Box<dyn Error>>;

    /// Long enough for a loaded 2-core CI machine; conditions are polled.
    const TIMEOUT: Duration = Duration::from_secs(20);

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> TestResult {
        let deadline = Instant::now() + TIMEOUT;
        while !cond() {
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {what}").into());
            }
            thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    fn options(path: &Path, extra: &str) -> Result<PadOptions, Box<dyn Error>> {
        let text = format!("path = {:?}\n{extra}", path.display().to_string());
        Ok(PadOptions::deserialize(toml::from_str::<toml::Table>(
            &text,
        )?)?)
    }

    fn params(format: Format, rate: u32, channels: u8) -> StreamParams {
        let frame = format.sample_bytes() * u32::from(channels);
        StreamParams {
            format,
            rate,
            channels,
            period_bytes: frame * rate / 100,
            buffer_bytes: frame * rate / 25,
        }
    }

    /// A byte pattern whose period (251) is no multiple of any frame size,
    /// so a lost, repeated or shifted byte shows.
    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i + seed) % 251) as u8).collect()
    }

    #[derive(Default)]
    struct Recorder {
        attached: AtomicUsize,
        detached: AtomicUsize,
    }

    impl DeviceListener for Recorder {
        fn attached(&self) {
            self.attached.fetch_add(1, Ordering::SeqCst);
        }
        fn detached(&self) {
            self.detached.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Recorder {
        fn counts(&self) -> (usize, usize) {
            (
                self.attached.load(Ordering::SeqCst),
                self.detached.load(Ordering::SeqCst),
            )
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        pad: PadDevice,
        events: Arc<Recorder>,
    }

    fn pad_with(extra: &str) -> Result<Fixture, Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pad.sock");
        let pad = PadDevice::from_options("pad0", options(&path, extra)?)?;
        let events = Arc::new(Recorder::default());
        pad.set_listener(events.clone());
        Ok(Fixture {
            _dir: dir,
            path,
            pad,
            events,
        })
    }

    impl Fixture {
        /// Connects a client and waits until the pad has attached it.
        fn connect(&self) -> Result<UnixStream, Box<dyn Error>> {
            let attached_before = self.pad.stats().clients;
            let client = UnixStream::connect(&self.path)?;
            client.set_read_timeout(Some(TIMEOUT))?;
            client.set_write_timeout(Some(TIMEOUT))?;
            wait_for("the client to attach", || {
                self.pad.stats().clients > attached_before && self.pad.is_attached()
            })?;
            Ok(client)
        }
    }

    /// Reads exactly `len` bytes on another thread.
    fn read_on_thread(
        client: &UnixStream,
        len: usize,
    ) -> Result<JoinHandle<io::Result<Vec<u8>>>, Box<dyn Error>> {
        let mut client = client.try_clone()?;
        Ok(thread::spawn(move || {
            let mut got = vec![0; len];
            client.read_exact(&mut got)?;
            Ok(got)
        }))
    }

    fn joined<T>(handle: JoinHandle<io::Result<T>>) -> Result<T, Box<dyn Error>> {
        Ok(handle.join().map_err(|_| "reader thread panicked")??)
    }

    /// Writes `data` through `sink` one period at a time, letting the pad
    /// drain each period so nothing overflows however slow the machine.
    fn play_paced(sink: &mut dyn PlaybackSink, data: &[u8], period: usize) -> TestResult {
        for chunk in data.chunks(period) {
            sink.write(chunk)?;
            wait_for("the ring to drain", || sink.latency_bytes() == 0)?;
        }
        Ok(())
    }

    fn playback_is_bit_exact(p: StreamParams) -> TestResult {
        let fx = pad_with("")?;
        let client = fx.connect()?;
        let mut sink = fx.pad.open_playback(&p)?;
        let data = pattern(p.bytes_per_second() as usize / 2, 0);
        let reader = read_on_thread(&client, data.len())?;
        play_paced(sink.as_mut(), &data, p.period_bytes as usize)?;
        assert!(joined(reader)? == data, "playback bytes differ");
        // The thread counts after `send` returns, maybe after the client read.
        let sent = data.len() as u64;
        wait_for("the byte count", || fx.pad.stats().playback_bytes == sent)?;
        assert_eq!(fx.pad.stats().playback_overflows, 0);
        Ok(())
    }

    #[test]
    fn playback_s16_stereo_48k_is_bit_exact() -> TestResult {
        playback_is_bit_exact(params(Format::S16, 48000, 2))
    }

    #[test]
    fn playback_float_8_channels_is_bit_exact() -> TestResult {
        playback_is_bit_exact(params(Format::Float, 48000, 8))
    }

    /// The `fmt ` fields: tag, channels, rate, byte rate, block align, bits.
    type WavFmt = (u16, u16, u32, u32, u16, u16);

    fn parse_wav(h: &[u8]) -> Result<WavFmt, Box<dyn Error>> {
        let u16_at = |i: usize| -> Result<u16, Box<dyn Error>> {
            Ok(u16::from_le_bytes(
                h.get(i..i + 2).ok_or("short")?.try_into()?,
            ))
        };
        let u32_at = |i: usize| -> Result<u32, Box<dyn Error>> {
            Ok(u32::from_le_bytes(
                h.get(i..i + 4).ok_or("short")?.try_into()?,
            ))
        };
        assert_eq!(h.len(), 44);
        assert_eq!(h.get(0..4), Some(&b"RIFF"[..]));
        assert_eq!(u32_at(4)?, 0xFFFF_FFFF, "RIFF size: streaming");
        assert_eq!(h.get(8..16), Some(&b"WAVEfmt "[..]));
        assert_eq!(u32_at(16)?, 16, "fmt chunk size");
        assert_eq!(h.get(36..40), Some(&b"data"[..]));
        assert_eq!(u32_at(40)?, 0xFFFF_FFFF, "data size: streaming");
        // tag, channels, rate, byte rate, block align, bits
        Ok((
            u16_at(20)?,
            u16_at(22)?,
            u32_at(24)?,
            u32_at(28)?,
            u16_at(32)?,
            u16_at(34)?,
        ))
    }

    #[test]
    fn wav_header_describes_the_stream_and_precedes_the_frames() -> TestResult {
        let fx = pad_with("header = \"wav\"")?;
        // Sink opened while a client is connected.
        let mut client = fx.connect()?;
        let p = params(Format::S16, 48000, 2);
        let mut sink = fx.pad.open_playback(&p)?;
        let data = pattern(1920, 3);
        sink.write(&data)?;
        let mut got = vec![0; 44 + data.len()];
        client.read_exact(&mut got)?;
        let (header, frames) = got.split_at(44);
        assert_eq!(parse_wav(header)?, (1, 2, 48000, 192_000, 4, 16));
        assert_eq!(frames, &data[..]);
        drop(sink);

        // Float, 8 channels, and a client connecting while the sink is open.
        let p = params(Format::Float, 44100, 8);
        let mut sink = fx.pad.open_playback(&p)?;
        drop(client);
        wait_for("the detach", || !fx.pad.is_attached())?;
        let mut client = fx.connect()?;
        sink.write(&data)?;
        let mut got = vec![0; 44 + data.len()];
        client.read_exact(&mut got)?;
        let (header, frames) = got.split_at(44);
        assert_eq!(parse_wav(header)?, (3, 8, 44100, 44100 * 32, 32, 32));
        assert_eq!(frames, &data[..]);

        // Formats a 44-byte header cannot describe truthfully are refused.
        let s24 = params(Format::S24, 48000, 2);
        assert!(matches!(
            fx.pad.check_params(StreamDirection::Playback, &s24),
            Err(DeviceError::Unsupported(_))
        ));
        Ok(())
    }

    #[test]
    fn capture_is_bit_exact_then_silence() -> TestResult {
        let fx = pad_with("")?;
        let mut client = fx.connect()?;
        let p = params(Format::U16, 48000, 2);
        let mut source = fx.pad.open_capture(&p)?;
        let data = pattern(4 * p.period_bytes as usize, 5);
        client.write_all(&data)?;
        wait_for("the capture bytes", || {
            source.latency_bytes() as usize == data.len()
        })?;
        let mut got = vec![0; data.len()];
        source.read(&mut got)?;
        assert!(got == data, "capture bytes differ");
        assert_eq!(fx.pad.stats().capture_underruns, 0);

        // The client stops writing: silence in the stream's format.
        let mut got = vec![7; 8];
        source.read(&mut got)?;
        assert_eq!(got, [0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80]);
        assert_eq!(fx.pad.stats().capture_underruns, 1);
        Ok(())
    }

    /// A read the daemon makes in parts (a large guest message, in chunks)
    /// counts as one read: the same bytes, one underrun, the same silence.
    #[test]
    fn a_capture_read_in_parts_counts_as_one_read() -> TestResult {
        let fx = pad_with("")?;
        let mut client = fx.connect()?;
        let p = params(Format::U16, 48000, 2);
        let mut source = fx.pad.open_capture(&p)?;
        // 750 frames of input for a read of 1,024 frames in parts of 256.
        let data = pattern(3000, 9);
        client.write_all(&data)?;
        wait_for("the capture bytes", || {
            source.latency_bytes() as usize == data.len()
        })?;
        let total = 4096;
        let mut got = vec![7u8; total];
        let mut at = 0;
        for part in got.chunks_mut(1024) {
            at += part.len();
            let filled = source.read_part(part, total - at)?;
            if filled < part.len() {
                // Short: the read ends (the daemon fills the rest).
                assert_eq!(filled, 3000 - (at - 1024));
                break;
            }
        }
        assert_eq!(at, 3072, "the short part ended the read");
        assert!(got[..3000] == data[..], "capture bytes differ");
        assert!(got[3000..3072].chunks(2).all(|s| s == [0, 0x80]));
        let stats = fx.pad.stats();
        assert_eq!(stats.capture_underruns, 1, "one read, one underrun");
        assert_eq!(stats.capture_silence_bytes, (total - 3000) as u64);

        // The same read in one part counts the same.
        client.write_all(&data)?;
        wait_for("the capture bytes", || {
            source.latency_bytes() as usize == data.len()
        })?;
        let mut whole = vec![7u8; total];
        source.read(&mut whole)?;
        assert!(whole[..3000] == data[..]);
        let stats = fx.pad.stats();
        assert_eq!(stats.capture_underruns, 2);
        assert_eq!(stats.capture_silence_bytes, 2 * (total - 3000) as u64);
        Ok(())
    }

    #[test]
    fn capture_never_hands_out_half_a_frame() -> TestResult {
        let fx = pad_with("")?;
        let mut client = fx.connect()?;
        let p = params(Format::S32, 48000, 2);
        let mut source = fx.pad.open_capture(&p)?;
        let frame = pattern(8, 1);
        let (first, second) = frame.split_at(5);
        client.write_all(first)?;
        wait_for("the partial frame", || fx.pad.stats().capture_bytes == 5)?;
        let mut got = [9u8; 8];
        source.read(&mut got)?;
        assert_eq!(got, [0; 8], "a partial frame is not handed out");
        client.write_all(second)?;
        wait_for("the whole frame", || fx.pad.stats().capture_bytes == 8)?;
        source.read(&mut got)?;
        assert_eq!(got[..], frame[..]);
        Ok(())
    }

    #[test]
    fn capture_opened_mid_frame_starts_at_the_next_frame() -> TestResult {
        let fx = pad_with("capture = \"live\"")?;
        let mut client = fx.connect()?;
        // 6 bytes (1.5 frames of S16 stereo) while no source is open.
        client.write_all(&[1, 2, 3, 4, 5, 6])?;
        wait_for("the early bytes", || fx.pad.stats().capture_bytes == 6)?;
        let mut source = fx.pad.open_capture(&params(Format::S16, 48000, 2))?;
        client.write_all(&[7, 8, 10, 11, 12, 13])?;
        wait_for("the late bytes", || fx.pad.stats().capture_bytes == 12)?;
        let mut got = [0xAAu8; 8];
        source.read(&mut got)?;
        assert_eq!(got, [10, 11, 12, 13, 0, 0, 0, 0]);
        Ok(())
    }

    /// Reads `total` bytes through `source`, one period at a time, as the
    /// daemon would (without its clock: as fast as the pad delivers).
    fn record(source: &mut dyn CaptureSource, total: usize, period: usize) -> Vec<u8> {
        let mut got = Vec::with_capacity(total);
        let mut buf = vec![0u8; period];
        let deadline = Instant::now() + TIMEOUT * 4;
        while got.len() < total && Instant::now() < deadline {
            if source.latency_bytes() == 0 {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            let n = (source.latency_bytes() as usize)
                .min(period)
                .min(total - got.len());
            let n = n - n % 4;
            if n == 0 {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            source.read(&mut buf[..n]).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[test]
    fn pipe_capture_records_what_was_written_before_it_opened_from_the_first_byte() -> TestResult {
        let fx = pad_with("")?;
        let client = fx.connect()?;
        // More than the inbox and the socket buffer hold: the writer blocks
        // until the guest records (back-pressure), and nothing is dropped.
        let data = pattern(3 << 20, 5);
        let mut writer = client.try_clone()?;
        let to_write = data.clone();
        let writer = thread::spawn(move || writer.write_all(&to_write));
        thread::sleep(Duration::from_millis(100));
        assert!(!writer.is_finished(), "a 3 MiB write did not block");
        let p = params(Format::S16, 48000, 2);
        let mut source = fx.pad.open_capture(&p)?;
        let got = record(source.as_mut(), data.len(), p.period_bytes as usize);
        joined(writer)?;
        assert_eq!(got.len(), data.len(), "bytes recorded");
        assert!(got == data, "capture bytes differ");
        let st = fx.pad.stats();
        assert_eq!((st.capture_dropped_bytes, st.capture_overflows), (0, 0));
        Ok(())
    }

    #[test]
    fn pipe_capture_records_everything_a_client_wrote_before_it_closed() -> TestResult {
        let fx = pad_with("")?;
        let client = fx.connect()?;
        let data = pattern(600 * 1024, 9);
        let mut writer = client.try_clone()?;
        let to_write = data.clone();
        let writer = thread::spawn(move || {
            writer.write_all(&to_write)?;
            // The client is gone as soon as it has written.
            writer.shutdown(std::net::Shutdown::Both)
        });
        drop(client);
        let p = params(Format::S16, 48000, 2);
        let mut source = fx.pad.open_capture(&p)?;
        let got = record(source.as_mut(), data.len(), p.period_bytes as usize);
        joined(writer)?;
        assert!(
            got == data,
            "capture bytes differ ({} of {})",
            got.len(),
            data.len()
        );
        // Only now, with everything recorded, is the pad detached.
        wait_for("the detach", || !fx.pad.is_attached())?;
        assert_eq!(fx.events.counts(), (1, 1));
        assert_eq!(fx.pad.stats().capture_dropped_bytes, 0);
        Ok(())
    }

    #[test]
    fn a_new_client_after_one_that_hung_up_goes_on_after_its_input() -> TestResult {
        let fx = pad_with("")?;
        let p = params(Format::S16, 48000, 2);
        let first = fx.connect()?;
        (&first).write_all(&pattern(4000, 1)[..4000])?;
        first.shutdown(std::net::Shutdown::Both)?;
        drop(first);
        wait_for("the bytes", || fx.pad.stats().capture_bytes == 4000)?;
        let second = UnixStream::connect(&fx.path)?;
        wait_for("the second client", || fx.pad.stats().clients == 2)?;
        (&second).write_all(&pattern(4000, 2))?;
        wait_for("its bytes", || fx.pad.stats().capture_bytes == 8000)?;
        let mut source = fx.pad.open_capture(&p)?;
        let got = record(source.as_mut(), 8000, p.period_bytes as usize);
        let mut want = pattern(4000, 1);
        want.extend(pattern(4000, 2));
        assert!(got == want, "capture bytes differ");
        assert!(fx.pad.is_attached());
        assert_eq!(fx.events.counts(), (1, 0), "one attachment throughout");
        Ok(())
    }

    #[test]
    fn live_capture_keeps_the_newest_frames_and_never_blocks_the_writer() -> TestResult {
        let fx = pad_with("capture = \"live\"")?;
        let client = fx.connect()?;
        let p = params(Format::S16, 48000, 2);
        let mut source = fx.pad.open_capture(&p)?;
        let data = pattern(2 << 20, 3);
        (&client).write_all(&data)?;
        wait_for("the bytes", || {
            fx.pad.stats().capture_bytes == data.len() as u64
        })?;
        assert!(fx.pad.stats().capture_dropped_bytes > 0, "nothing dropped");
        let mut got = vec![0u8; 4];
        source.read(&mut got)?;
        let queued = source.latency_bytes() as usize + 4;
        let tail = &data[data.len() - queued..];
        assert_eq!(&got[..], &tail[..4], "the oldest kept frame");
        Ok(())
    }

    #[test]
    fn fill_silence_keeps_a_gap_in_playback_a_gap_of_the_same_length() -> TestResult {
        let fx = pad_with("fill = \"silence\"")?;
        let client = fx.connect()?;
        let p = params(Format::S16, 48000, 2);
        let rate = p.bytes_per_second() as usize;
        let period = p.period_bytes as usize;
        // A listener that keeps reading, as `aplay` would.
        let total = 2 * period + rate / 2 + rate / 5;
        let reader = read_on_thread(&client, total)?;
        let mut sink = fx.pad.open_playback(&p)?;
        let tone = vec![0x55u8; period];
        // One period, a 500 ms gap (the stream stopped), one period.
        sink.write(&tone)?;
        thread::sleep(Duration::from_millis(10) + Duration::from_millis(500));
        sink.write(&tone)?;
        wait_for("the second period to be sent", || sink.latency_bytes() == 0)?;
        drop(sink);
        let got = joined(reader)?;
        let first = got.iter().position(|&b| b == 0x55).ok_or("no tone")?;
        let end_first = first
            + got[first..]
                .iter()
                .position(|&b| b != 0x55)
                .ok_or("one tone")?;
        let second = end_first
            + got[end_first..]
                .iter()
                .position(|&b| b == 0x55)
                .ok_or("no second tone")?;
        let gap_ms = (second - end_first) as f64 * 1000.0 / rate as f64;
        assert!(
            (470.0..=530.0).contains(&gap_ms),
            "a 500 ms gap came out as {gap_ms:.1} ms of silence"
        );
        // The silence goes on after the stream closed.
        assert!(got[second + period..].iter().all(|&b| b == 0));
        assert!(fx.pad.stats().playback_fill_bytes > 0);
        Ok(())
    }

    /// A pause that ends with a new stream (RELEASE, then PREPARE/START)
    /// keeps its length too.
    #[test]
    fn fill_silence_keeps_a_pause_between_two_streams_its_length() -> TestResult {
        let fx = pad_with("fill = \"silence\"")?;
        let client = fx.connect()?;
        let p = params(Format::S16, 48000, 2);
        let rate = p.bytes_per_second() as usize;
        let period = p.period_bytes as usize;
        let total = 2 * period + rate / 2 + rate / 5;
        let reader = read_on_thread(&client, total)?;
        let tone = vec![0x55u8; period];
        let mut sink = fx.pad.open_playback(&p)?;
        sink.write(&tone)?;
        wait_for("sent", || sink.latency_bytes() == 0)?;
        drop(sink);
        thread::sleep(Duration::from_millis(500));
        // A new stream writes at once, before the next fill tick.
        let mut sink = fx.pad.open_playback(&p)?;
        sink.write(&tone)?;
        wait_for("sent", || sink.latency_bytes() == 0)?;
        let got = joined(reader)?;
        let first = got.iter().position(|&b| b == 0x55).ok_or("no tone")?;
        let end_first = first
            + got[first..]
                .iter()
                .position(|&b| b != 0x55)
                .ok_or("one tone")?;
        let second = end_first
            + got[end_first..]
                .iter()
                .position(|&b| b == 0x55)
                .ok_or("no second tone")?;
        let gap_ms = (second - end_first) as f64 * 1000.0 / rate as f64;
        // The pause starts when the first period ends (10 ms after it was
        // written) and ends when the second is written: the 500 ms sleep
        // minus those 10 ms plus the few ms to see it sent. Without the
        // held-back silence it came out 20-30 ms shorter.
        assert!(
            (485.0..=520.0).contains(&gap_ms),
            "a 500 ms pause between two streams came out as {gap_ms:.1} ms"
        );
        Ok(())
    }

    #[test]
    fn a_wav_header_starts_each_new_format_and_only_then() -> TestResult {
        let fx = pad_with("header = \"wav\"")?;
        let client = fx.connect()?;
        let a = params(Format::S16, 48000, 2);
        let b = params(Format::S16, 44100, 2);
        let mut want = Vec::new();
        for (p, byte) in [(a, 1u8), (a, 2), (b, 3)] {
            let mut sink = fx.pad.open_playback(&p)?;
            let frames = vec![byte; p.period_bytes as usize];
            sink.write(&frames)?;
            wait_for("the ring to drain", || sink.latency_bytes() == 0)?;
            if byte != 2 {
                want.extend_from_slice(&wav_header(&p).ok_or("header")?);
            }
            want.extend_from_slice(&frames);
        }
        let mut got = vec![0u8; want.len()];
        (&client).read_exact(&mut got)?;
        assert!(
            got == want,
            "the same format twice is one WAV stream, a new one a new header"
        );
        Ok(())
    }

    #[test]
    fn one_pad_is_full_duplex_and_one_stream_per_direction() -> TestResult {
        let fx = pad_with("")?;
        let client = fx.connect()?;
        let p = params(Format::S16, 48000, 2);
        let mut sink = fx.pad.open_playback(&p)?;
        let mut source = fx.pad.open_capture(&p)?;
        assert!(matches!(
            fx.pad.open_playback(&p),
            Err(DeviceError::Unsupported(_))
        ));
        assert!(matches!(
            fx.pad.open_capture(&p),
            Err(DeviceError::Unsupported(_))
        ));

        let out = pattern(8 * p.period_bytes as usize, 11);
        let input = pattern(4 * p.period_bytes as usize, 13);
        let reader = read_on_thread(&client, out.len())?;
        let mut writer = client.try_clone()?;
        let to_write = input.clone();
        let writer = thread::spawn(move || writer.write_all(&to_write));
        play_paced(sink.as_mut(), &out, p.period_bytes as usize)?;
        assert!(joined(reader)? == out, "playback bytes differ");
        joined(writer)?;
        wait_for("the capture bytes", || {
            source.latency_bytes() as usize == input.len()
        })?;
        let mut got = vec![0; input.len()];
        source.read(&mut got)?;
        assert!(got == input, "capture bytes differ");

        // Closing a stream frees its direction for the next open.
        drop(sink);
        drop(fx.pad.open_playback(&p)?);
        Ok(())
    }

    #[test]
    fn a_second_client_is_told_the_pad_is_busy() -> TestResult {
        let fx = pad_with("")?;
        let _first = fx.connect()?;
        let mut second = UnixStream::connect(&fx.path)?;
        second.set_read_timeout(Some(TIMEOUT))?;
        let mut line = String::new();
        second.read_to_string(&mut line)?;
        assert_eq!(line, "vsound: pad pad0 is busy\n");
        assert!(fx.pad.is_attached());
        let stats = fx.pad.stats();
        assert_eq!((stats.clients, stats.refused), (1, 1));
        assert_eq!(fx.events.counts(), (1, 0));
        Ok(())
    }

    #[test]
    fn disconnect_detaches_and_streams_stay_valid() -> TestResult {
        let fx = pad_with("")?;
        let client = fx.connect()?;
        let p = params(Format::U8, 8000, 1);
        let mut sink = fx.pad.open_playback(&p)?;
        let mut source = fx.pad.open_capture(&p)?;
        assert_eq!(fx.events.counts(), (1, 0));
        drop(client);
        wait_for("the detach", || fx.events.counts() == (1, 1))?;
        assert!(!fx.pad.is_attached());
        assert!(matches!(sink.write(&[1, 2, 3]), Err(DeviceError::Gone)));
        assert_eq!(sink.latency_bytes(), 0);
        let mut got = [0u8; 4];
        assert!(matches!(source.read(&mut got), Err(DeviceError::Gone)));
        assert_eq!(got, [0x80; 4]);
        let stats = fx.pad.stats();
        assert_eq!(stats.playback_discarded_bytes, 3);
        assert_eq!(stats.capture_underruns, 0, "no client, no underrun");
        Ok(())
    }

    #[test]
    fn a_client_that_closes_its_write_side_still_gets_playback() -> TestResult {
        let fx = pad_with("")?;
        let mut client = fx.connect()?;
        let mut sink = fx.pad.open_playback(&params(Format::S16, 48000, 2))?;
        client.shutdown(Shutdown::Write)?;
        wait_for("the half-close", || {
            // Still attached, so writes keep succeeding.
            sink.write(&[0; 4]).is_ok() && fx.pad.stats().playback_bytes >= 4
        })?;
        assert!(fx.pad.is_attached());
        assert_eq!(fx.events.counts(), (1, 0));
        let mut got = [1u8; 4];
        client.read_exact(&mut got)?;
        assert_eq!(got, [0; 4]);
        Ok(())
    }

    /// A sink closed right after its last write: those frames still reach
    /// the client.
    #[test]
    fn frames_written_just_before_the_sink_closes_are_still_sent() -> TestResult {
        let fx = pad_with("")?;
        let client = fx.connect()?;
        let p = params(Format::S16, 48000, 2);
        let data = pattern(p.period_bytes as usize * 4, 6);
        let reader = read_on_thread(&client, data.len())?;
        let mut sink = fx.pad.open_playback(&p)?;
        sink.write(&data)?;
        drop(sink);
        assert!(joined(reader)? == data, "the tail was lost");
        // The closed stream is gone once sent: a new one opens.
        wait_for("the stream to go", || fx.pad.open_playback(&p).is_ok())?;
        Ok(())
    }

    #[test]
    fn a_reconnecting_client_gets_fresh_audio() -> TestResult {
        let fx = pad_with("")?;
        let p = params(Format::S16, 48000, 2);
        let mut sink = fx.pad.open_playback(&p)?;
        let mut source = fx.pad.open_capture(&p)?;
        assert!(matches!(sink.write(&[9; 64]), Err(DeviceError::Gone)));

        let first = fx.connect()?;
        drop(first);
        wait_for("the detach", || fx.events.counts() == (1, 1))?;
        assert!(matches!(sink.write(&[9; 64]), Err(DeviceError::Gone)));

        let mut second = fx.connect()?;
        assert_eq!(fx.events.counts(), (2, 1));
        let data = pattern(p.period_bytes as usize, 17);
        sink.write(&data)?;
        let mut got = vec![0; data.len()];
        second.read_exact(&mut got)?;
        assert!(got == data, "reconnected playback differs");
        second.write_all(&data)?;
        wait_for("capture", || source.latency_bytes() as usize == data.len())?;
        source.read(&mut got)?;
        assert!(got == data, "reconnected capture differs");
        Ok(())
    }

    #[test]
    fn a_client_that_does_not_read_loses_the_oldest_frames() -> TestResult {
        let fx = pad_with("")?;
        let mut client = fx.connect()?;
        // One frame = a 32-bit counter, as S16 stereo.
        let p = params(Format::S16, 48000, 2);
        let mut sink = fx.pad.open_playback(&p)?;
        let frames_per_write = p.period_bytes / 4;
        let writes = 2000; // 20 s of audio: far beyond ring + socket buffer.
        let mut buf = Vec::with_capacity(p.period_bytes as usize);
        let mut counter = 0u32;
        for _ in 0..writes {
            buf.clear();
            for _ in 0..frames_per_write {
                buf.extend_from_slice(&counter.to_le_bytes());
                counter += 1;
            }
            let started = Instant::now();
            sink.write(&buf)?;
            assert!(started.elapsed() < TIMEOUT, "write blocked");
        }
        let last = counter - 1;
        let stats = fx.pad.stats();
        assert!(stats.playback_overflows > 0, "{stats:?}");
        assert!(
            stats.playback_dropped_bytes % 4 == 0,
            "whole frames dropped"
        );
        let ring_frames = u64::from(sink.latency_bytes()) / 4;
        assert!(ring_frames > 0);

        // Now read everything: counters only go up, the newest frames come
        // through unbroken, and the very last one is the last written.
        let mut received = Vec::new();
        let mut frame = [0u8; 4];
        loop {
            client.read_exact(&mut frame)?;
            let n = u32::from_le_bytes(frame);
            if let Some(&prev) = received.last() {
                assert!(n > prev, "frame {n} after {prev}");
            }
            received.push(n);
            if n == last {
                break;
            }
        }
        assert!(received.len() < counter as usize, "something was dropped");
        let tail = received.iter().rev().take(ring_frames as usize);
        assert!(
            tail.zip((0..=last).rev()).all(|(&got, want)| got == want),
            "the newest {ring_frames} frames arrive unbroken"
        );
        Ok(())
    }

    #[test]
    fn a_stale_socket_is_replaced_and_other_files_are_not() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pad.sock");
        drop(UnixListener::bind(&path)?); // leaves the file behind
        let pad = PadDevice::from_options("pad0", options(&path, "mode = \"0640\"")?)?;
        let client = UnixStream::connect(&path)?;
        wait_for("the attach", || pad.is_attached())?;
        assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o640);

        // A live pad is not clobbered by a second one.
        let err = PadDevice::from_options("pad1", options(&path, "")?).err();
        assert!(
            matches!(
                err,
                Some(PadError::Socket(unix_socket::SocketError::InUse { .. }))
            ),
            "{err:?}"
        );
        drop(client);
        drop(pad);

        let file = dir.path().join("file");
        fs::write(&file, b"keep me")?;
        let err = PadDevice::from_options("pad0", options(&file, "")?).err();
        assert!(
            matches!(
                err,
                Some(PadError::Socket(
                    unix_socket::SocketError::NotASocket { .. }
                ))
            ),
            "{err:?}"
        );
        assert_eq!(fs::read(&file)?, b"keep me");
        Ok(())
    }

    #[test]
    fn dropping_the_pad_removes_the_socket_and_detaches() -> TestResult {
        let fx = pad_with("")?;
        let _client = fx.connect()?;
        let mut sink = fx.pad.open_playback(&params(Format::S16, 48000, 2))?;
        let Fixture {
            _dir,
            path,
            pad,
            events,
        } = fx;
        assert!(path.exists());
        drop(pad);
        assert!(!path.exists(), "socket file removed");
        assert_eq!(events.counts(), (1, 1));
        assert!(matches!(sink.write(&[0; 4]), Err(DeviceError::Gone)));
        Ok(())
    }

    #[test]
    fn the_registry_builds_pads_and_validates_without_side_effects() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pad.sock");
        let mut opts = toml::Table::new();
        opts.insert("path".into(), path.display().to_string().into());
        crate::registry::validate("pad", &opts)?;
        assert!(!path.exists(), "validation creates nothing");
        let pad = crate::registry::build("pad0", "pad", opts)?;
        assert_eq!(pad.kind(), "pad");
        assert!(path.exists());
        drop(pad);
        assert!(!path.exists());

        let mut bad = toml::Table::new();
        bad.insert("path".into(), dir.path().display().to_string().into());
        let err = crate::registry::build("pad0", "pad", bad)
            .err()
            .ok_or("built")?;
        assert!(err.contains("not a socket"), "{err}");
        Ok(())
    }

    #[test]
    fn options_are_checked() -> TestResult {
        let ok: &[(&str, u32, Header)] = &[
            ("path = \"/p\"", 0o600, Header::Raw),
            ("path = \"/p\"\nmode = \"0660\"", 0o660, Header::Raw),
            ("path = \"/p\"\nmode = \"660\"", 0o660, Header::Raw),
            ("path = \"/p\"\nmode = \"0o666\"", 0o666, Header::Raw),
            ("path = \"/p\"\nmode = 0o640", 0o640, Header::Raw),
            ("path = \"/p\"\nheader = \"wav\"", 0o600, Header::Wav),
            ("path = \"/p\"\nheader = \"raw\"", 0o600, Header::Raw),
        ];
        for &(text, mode, header) in ok {
            let o = PadOptions::deserialize(toml::from_str::<toml::Table>(text)?)?;
            assert_eq!(
                (o.mode(), o.header(), o.path()),
                (mode, header, Path::new("/p"))
            );
        }
        let long = format!("path = \"/{}\"", "x".repeat(MAX_SOCKET_PATH));
        let bad: &[(&str, &str)] = &[
            ("", "path"),
            ("path = \"\"", "empty"),
            (&long, "at most"),
            ("path = \"/p\"\nmode = \"0888\"", "not octal"),
            ("path = \"/p\"\nmode = \"rw\"", "not octal"),
            ("path = \"/p\"\nmode = \"04755\"", "0o777"),
            ("path = \"/p\"\nmode = 660", "0o777"),
            ("path = \"/p\"\nmode = -1", "negative"),
            ("path = \"/p\"\nmode = true", "octal"),
            ("path = \"/p\"\nheader = \"aiff\"", "aiff"),
            ("path = \"/p\"\nbogus = 1", "bogus"),
        ];
        for &(text, needle) in bad {
            let table = toml::from_str::<toml::Table>(text)?;
            let err = crate::registry::validate("pad", &table).err().ok_or(text)?;
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        Ok(())
    }

    #[test]
    fn the_ring_keeps_whole_frames_and_drops_the_oldest() -> TestResult {
        let mut ring = Ring::new(12, 4)?;
        let mut out = [0u8; 16];
        assert_eq!(ring.push(&[1, 2, 3]), 0);
        assert_eq!((ring.len(), ring.frames_len()), (3, 0));
        assert_eq!(ring.pop(&mut out), 0, "no partial frame");
        // 13 bytes in a 12-byte ring: the oldest whole frame goes.
        assert_eq!(ring.push(&[4, 5, 6, 7, 8, 9, 10, 11, 12, 13]), 4);
        assert_eq!(ring.push(&[14]), 0);
        assert_eq!(ring.push(&[15, 16, 17]), 4);
        assert_eq!(ring.pop(&mut out[..7]), 4, "only whole frames fit");
        assert_eq!(out[..4], [9, 10, 11, 12]);
        assert_eq!(ring.pop(&mut out), 4);
        assert_eq!(out[..4], [13, 14, 15, 16]);
        assert_eq!(ring.len(), 1);
        // Clearing mid-frame skips the rest of that frame.
        ring.clear();
        assert_eq!(ring.push(&[18, 19, 20, 21, 22, 23, 24]), 0);
        assert_eq!(ring.pop(&mut out), 4);
        assert_eq!(out[..4], [21, 22, 23, 24]);
        // A push larger than the ring keeps its newest whole frames.
        let big: Vec<u8> = (0..28).collect();
        assert_eq!(ring.push(&big), 16);
        assert_eq!(ring.pop(&mut out), 12);
        assert_eq!(out[..12], big[16..28]);
        Ok(())
    }

    #[test]
    fn a_new_ring_is_zeroed() {
        for len in [0, 1, 4095, EAGER_ZERO_BYTES, EAGER_ZERO_BYTES + 1, 16 << 20] {
            let buf = zeroed(len).unwrap();
            assert_eq!((buf.len(), buf.capacity()), (len, len));
            assert!(buf.iter().all(|&b| b == 0));
        }
        assert!(zeroed(usize::MAX).is_none(), "an impossible size fails");
    }

    #[test]
    fn ring_capacity_is_bounded() -> TestResult {
        let mut p = params(Format::S16, 48000, 2);
        p.buffer_bytes = u32::MAX;
        let ring = Ring::new(ring_bytes(&p), p.frame_bytes())?;
        assert!(ring.capacity() <= MAX_RING_BYTES + 4);
        let p = params(Format::S24_3, 48000, 5); // 15-byte frames
        let ring = Ring::new(ring_bytes(&p), p.frame_bytes())?;
        assert_eq!(ring.capacity() % 15, 0);
        assert!(ring.capacity() >= MIN_RING_BYTES);
        Ok(())
    }
}
