//! `vsound pad record` and `vsound pad play`: host-side clients of a `pad`
//! device (its wire protocol is documented in `vsound_devices::pad`).
//!
//! ```text
//! vsound pad [--config FILE] [--api-socket PATH] record PAD OUT.wav [--seconds N]
//! vsound pad [--config FILE] [--api-socket PATH] play PAD IN.wav [--timeout SECONDS]
//! ```
//!
//! Both find the pad by its device name in the configuration (`--config`,
//! default the embedded one, exactly as the daemon reads it): its socket
//! `path`, its `header` and `capture` options and the stream bound to it in
//! each direction. `play` also talks to the daemon's management API
//! (`--api-socket`, default `[daemon] api_socket` of the configuration) when
//! there is one: the API does not tell a pad's socket path, but it does tell
//! whether the pad still holds a client, which is how `play` learns that the
//! guest recorded everything (see below).
//!
//! **record** connects and writes what the guest plays to `OUT.wav`:
//! - A raw pad sends bare PCM: its format is the output stream's one format,
//!   rate and channel count from the configuration. A raw pad whose output
//!   stream offers several is refused (its client cannot tell which one the
//!   guest picked), so is a format no WAV header describes.
//! - A `header = "wav"` pad starts every new format with a 44-byte streaming
//!   WAV header. The first one's format goes to `OUT.wav`; a header with a
//!   different format finishes that file and starts `OUT-2.wav`, `OUT-3.wav`...
//!   (a line on stdout names each new file and its format); a header equal
//!   to the current format continues the current file. A header arriving
//!   before any frame of the previous format reuses that (empty) file. Headers
//!   are found at frame boundaries (the pad sends whole frames only) by their
//!   exact shape (fixed fields and the pad's `0xFFFF_FFFF` sizes); up to 43
//!   bytes that could be the start of one are held back until the next read.
//! - The files are always valid WAV files: the header is written first with
//!   real sizes, frames are appended, and the RIFF and `data` sizes are
//!   rewritten in place (`pwrite`) at most 100 ms after frames arrive, so the
//!   header never claims bytes that are not there. SIGINT/SIGTERM/SIGHUP end
//!   the recording cleanly (sizes, pad byte); even SIGKILL leaves a readable
//!   file. A file that would pass the WAV size limit (4 GiB) is continued in
//!   the next numbered file.
//! - It stops after `--seconds` of audio (over all files), when the pad
//!   closes the connection, or on a signal.
//!
//! **play** parses `IN.wav` (RIFF/WAVE; `fmt ` and `data` chunks, other
//! chunks skipped; `WAVE_FORMAT_EXTENSIBLE` by its subformat GUID; a `data`
//! size of 0 or `0xFFFF_FFFF` means "until the end of the file"), checks its
//! format against the pad's input stream (format, rate, channel range) and
//! refuses a mismatch naming both. Then it writes the `data` chunk's whole
//! frames to the socket as fast as the pad takes them (a `capture = "pipe"`
//! pad applies back-pressure; a `capture = "live"` pad never does, so for it
//! the frames are paced in real time, 100 ms ahead).
//!
//! How `play` ends, and why it does not simply half-close and wait for the
//! pad to close the connection: a pad keeps a client that only shut down its
//! write side attached (by design, for playback), so it never closes that
//! connection; it records a pipe client's input to the end only after the
//! client hung up completely. So `play` shuts down both directions, drains
//! what the pad sent it (a close with unread bytes in the receive buffer
//! would make the pad's next read fail with `ECONNRESET`, and the pad then
//! drops the input the guest has not recorded yet), closes, and then polls
//! the management API until the pad has no client any more: the pad detaches
//! a hung-up pipe client only once the guest recorded all it wrote. Without
//! an API socket it says that it cannot confirm this and exits 0 (the pad
//! still records everything). It never sends a partial frame: a pipe pad
//! keeps a trailing partial frame forever, which keeps it attached.
//!
//! The busy line (`vsound: pad NAME is busy\n`) is recognised when it is the
//! first thing the pad sends and the connection closes right after it.
//!
//! Why hand-written WAV code rather than `hound`: `hound` reads and writes
//! typed samples (a copy and conversion per sample where we move bytes),
//! knows neither A-law nor mu-law (which the pad sends), refuses the
//! streaming sizes `0xFFFF_FFFF`/0 that the pad and other streaming writers
//! use, and updates its header only through `Seek` on flush/finalize, with
//! no say over the order of data and header writes. What is needed here is
//! the 44-byte canonical header, a chunk walk and a format table: about as
//! much code as the glue around `hound` would be. Every read of `IN.wav` is
//! bounded and every size is checked.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Subcommand;
use serde_json::{json, Value};
use vsound_devices::pad::{CaptureMode, Header, PadOptions};
use vsound_devices::Format;

use crate::config::{Config, StreamConfig};
use crate::constants::Direction;

/// WAV format codes (the `fmt ` chunk's `wFormatTag`), as the pad uses them.
const WAVE_FORMAT_PCM: u16 = 1;
const WAVE_FORMAT_IEEE_FLOAT: u16 = 3;
const WAVE_FORMAT_ALAW: u16 = 6;
const WAVE_FORMAT_MULAW: u16 = 7;
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;
/// `KSDATAFORMAT_SUBTYPE_*` GUIDs are `{TAG-0000-0010-8000-00aa00389b71}`:
/// bytes 2.. of their little-endian form.
const SUBFORMAT_GUID_TAIL: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];
/// Length of the canonical header (RIFF + 16-byte `fmt ` + `data`).
const HEADER_LEN: usize = 44;
/// The pad's "length unknown" RIFF and `data` sizes.
const STREAMING_SIZE: u32 = u32::MAX;
/// The canonical header with its variable fields (20..36) zeroed; [`fixed`]
/// says which bytes every pad header has exactly.
const TEMPLATE: [u8; HEADER_LEN] = *b"RIFF\xff\xff\xff\xffWAVEfmt \x10\0\0\0\
    \0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0data\xff\xff\xff\xff";
/// Whether byte `i` of a pad header is fixed (else: format fields).
const fn fixed(i: usize) -> bool {
    i < 20 || i >= 36
}
/// The most data bytes one WAV file holds: the RIFF size (36 + data + pad
/// byte) is a `u32`.
const MAX_DATA_BYTES: u64 = u32::MAX as u64 - 36 - 1;
/// A `fmt ` chunk larger than this is not a WAV we read.
const MAX_FMT_CHUNK: u32 = 1024;
/// How often `record` rewrites the sizes while frames arrive.
const HEADER_UPDATE: Duration = Duration::from_millis(100);
/// Socket reads and file chunks.
const CHUNK: usize = 64 * 1024;
/// Poll timeout of both loops (signals, header updates, pacing).
const TICK: Duration = Duration::from_millis(100);
/// How long a connection that has sent nothing yet may still turn out to be
/// refused (the pad sends the busy line as soon as it accepts).
const BUSY_GRACE: Duration = Duration::from_millis(200);
/// What a pipe pad reads ahead of the guest (`INBOX_BYTES` in the pad): with
/// the socket buffer, the most that can be unrecorded when `play` is done
/// writing. Only sizes the default `--timeout`.
const PAD_READ_AHEAD: u64 = 256 * 1024;
/// Added to the default `--timeout`.
const TIMEOUT_SLACK: Duration = Duration::from_secs(10);
/// A live pad: how far ahead of real time `play` writes, in milliseconds.
const LIVE_LEAD_MS: u64 = 100;
/// How often `play` asks the API whether the pad let go of it.
const API_POLL: Duration = Duration::from_millis(50);

/// `vsound pad`: the arguments common to both commands.
#[derive(Debug, clap::Args)]
pub struct PadArgs {
    /// The daemon's TOML configuration (default: the embedded
    /// configs/default.toml, as for the daemon).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The daemon's management API socket (default: `[daemon] api_socket`
    /// of the configuration); `play` uses it to confirm that the guest
    /// recorded everything.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,

    #[command(subcommand)]
    action: PadAction,
}

#[derive(Debug, Subcommand)]
enum PadAction {
    /// Record what the guest plays on a pad to a WAV file (with header =
    /// "wav", each new format starts a new file: OUT-2.wav, OUT-3.wav...).
    Record {
        /// The pad's device name (`[devices.NAME]`).
        #[arg(value_name = "PAD")]
        pad: String,
        /// The WAV file to write (replaced if it exists).
        #[arg(value_name = "OUT.wav")]
        out: PathBuf,
        /// Stop after this much audio (seconds, e.g. 10 or 0.5; default:
        /// until the pad closes the connection or a signal).
        #[arg(long, value_name = "N", value_parser = parse_seconds)]
        seconds: Option<Duration>,
    },
    /// Play a WAV file into the guest's capture stream on a pad.
    Play {
        /// The pad's device name (`[devices.NAME]`).
        #[arg(value_name = "PAD")]
        pad: String,
        /// The WAV file to play.
        #[arg(value_name = "IN.wav")]
        input: PathBuf,
        /// After the last frame is written, how long to wait for the guest to
        /// record it (default: what the pad and the socket can hold, at the
        /// file's rate, plus 10 s).
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
        timeout: Option<Duration>,
    },
}

/// Runs `vsound pad`; errors are one line on stderr and exit code 1.
pub fn run(args: PadArgs) -> ExitCode {
    match run_args(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("vsound pad: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run_args(args: PadArgs) -> Result<(), String> {
    let config = match &args.config {
        Some(f) => Config::from_file(f),
        None => Config::default_config(),
    }
    .map_err(|e| e.to_string())?;
    let config_name = match &args.config {
        Some(f) => f.display().to_string(),
        None => "the embedded default configuration".to_owned(),
    };
    let api = args
        .api_socket
        .clone()
        .or_else(|| config.api_socket.clone());
    let ctx = Ctx {
        config,
        config_name,
        api,
    };
    match args.action {
        PadAction::Record { pad, out, seconds } => record(&ctx, &pad, &out, seconds),
        PadAction::Play {
            pad,
            input,
            timeout,
        } => play(&ctx, &pad, &input, timeout),
    }
}

struct Ctx {
    config: Config,
    config_name: String,
    api: Option<PathBuf>,
}

/// `N`, `N.` or `N.F` seconds (up to nanoseconds), more than zero.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a number of seconds (like 10 or 0.5)");
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) || frac.len() > 9 {
        return Err(bad());
    }
    let secs = match int {
        "" => 0,
        _ => int.parse::<u64>().map_err(|_| bad())?,
    };
    let nanos = format!("{frac:0<9}").parse::<u32>().map_err(|_| bad())?;
    let d = Duration::new(secs, nanos);
    if d.is_zero() {
        return Err(format!("`{s}`: must be more than 0 seconds"));
    }
    Ok(d)
}

// ---------------------------------------------------------------------------
// Formats and WAV headers

/// A PCM stream's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pcm {
    format: Format,
    rate: u32,
    channels: u16,
}

impl Pcm {
    fn frame_bytes(&self) -> u32 {
        self.format.sample_bytes() * u32::from(self.channels)
    }

    fn bytes_per_second(&self) -> u64 {
        u64::from(self.frame_bytes()) * u64::from(self.rate)
    }

    /// How long `frames` last, in nanoseconds (rounded down).
    fn nanos_of(&self, frames: u64) -> u128 {
        u128::from(frames) * 1_000_000_000 / u128::from(self.rate.max(1))
    }

    /// How many whole frames fit in `nanos`.
    fn frames_in(&self, nanos: u128) -> u64 {
        u64::try_from(nanos * u128::from(self.rate) / 1_000_000_000).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Pcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} Hz {} ch", self.format, self.rate, self.channels)
    }
}

/// The WAV format code and bits per sample of the formats a canonical
/// header describes (the pad's table).
fn wav_code(format: Format) -> Option<(u16, u16)> {
    match format {
        Format::U8 => Some((WAVE_FORMAT_PCM, 8)),
        Format::S16 => Some((WAVE_FORMAT_PCM, 16)),
        Format::S24_3 => Some((WAVE_FORMAT_PCM, 24)),
        Format::S32 => Some((WAVE_FORMAT_PCM, 32)),
        Format::Float => Some((WAVE_FORMAT_IEEE_FLOAT, 32)),
        Format::Float64 => Some((WAVE_FORMAT_IEEE_FLOAT, 64)),
        Format::ALaw => Some((WAVE_FORMAT_ALAW, 8)),
        Format::MuLaw => Some((WAVE_FORMAT_MULAW, 8)),
        _ => None,
    }
}

/// The format of a WAV code and container size (bits per sample as stored:
/// 24 valid bits MSB-justified in 32 are S32 samples).
fn format_of(tag: u16, bits: u16) -> Option<Format> {
    match (tag, bits) {
        (WAVE_FORMAT_PCM, 8) => Some(Format::U8),
        (WAVE_FORMAT_PCM, 16) => Some(Format::S16),
        (WAVE_FORMAT_PCM, 24) => Some(Format::S24_3),
        (WAVE_FORMAT_PCM, 32) => Some(Format::S32),
        (WAVE_FORMAT_IEEE_FLOAT, 32) => Some(Format::Float),
        (WAVE_FORMAT_IEEE_FLOAT, 64) => Some(Format::Float64),
        (WAVE_FORMAT_ALAW, 8) => Some(Format::ALaw),
        (WAVE_FORMAT_MULAW, 8) => Some(Format::MuLaw),
        _ => None,
    }
}

fn describe_tag(tag: u16) -> String {
    match tag {
        WAVE_FORMAT_PCM => "PCM".into(),
        WAVE_FORMAT_IEEE_FLOAT => "IEEE float".into(),
        WAVE_FORMAT_ALAW => "A-law".into(),
        WAVE_FORMAT_MULAW => "mu-law".into(),
        other => format!("WAV format code {other:#06x}"),
    }
}

/// The canonical 44-byte header for `pcm` with these sizes; `None` if WAV
/// cannot describe it.
fn header_bytes(pcm: &Pcm, riff_size: u32, data_size: u32) -> Option<[u8; HEADER_LEN]> {
    let (tag, bits) = wav_code(pcm.format)?;
    let block_align = u16::try_from(pcm.frame_bytes()).ok()?;
    let byte_rate = u32::try_from(pcm.bytes_per_second()).ok()?;
    let fields: [&[u8]; 13] = [
        b"RIFF",
        &riff_size.to_le_bytes(),
        b"WAVE",
        b"fmt ",
        &16u32.to_le_bytes(),
        &tag.to_le_bytes(),
        &pcm.channels.to_le_bytes(),
        &pcm.rate.to_le_bytes(),
        &byte_rate.to_le_bytes(),
        &block_align.to_le_bytes(),
        &bits.to_le_bytes(),
        b"data",
        &data_size.to_le_bytes(),
    ];
    let mut h = [0u8; HEADER_LEN];
    let mut at = 0;
    for f in fields {
        h.get_mut(at..at + f.len())?.copy_from_slice(f);
        at += f.len();
    }
    (at == HEADER_LEN).then_some(h)
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A header the pad sent. `strict` (mid-stream): every fixed byte exactly as
/// the pad writes it, including the streaming sizes; otherwise (the first
/// bytes of the connection) any sizes.
fn parse_pad_header(h: &[u8], strict: bool) -> Option<Pcm> {
    let h = h.get(..HEADER_LEN)?;
    let size_field = |i: usize| (4..8).contains(&i) || (40..44).contains(&i);
    let shape_ok = (0..HEADER_LEN)
        .filter(|&i| fixed(i))
        .all(|i| h.get(i) == TEMPLATE.get(i) || (!strict && size_field(i)));
    if !shape_ok {
        return None;
    }
    let tag = le16(h, 20)?;
    let channels = le16(h, 22)?;
    let rate = le32(h, 24)?;
    let byte_rate = le32(h, 28)?;
    let block_align = le16(h, 32)?;
    let bits = le16(h, 34)?;
    let pcm = Pcm {
        format: format_of(tag, bits)?,
        rate,
        channels,
    };
    let consistent = channels > 0
        && rate > 0
        && u32::from(block_align) == pcm.frame_bytes()
        && u64::from(byte_rate) == pcm.bytes_per_second();
    consistent.then_some(pcm)
}

/// Whether `b` (shorter than a header) could be the start of a pad header.
fn could_start_header(b: &[u8]) -> bool {
    b.len() < HEADER_LEN
        && b.iter()
            .enumerate()
            .all(|(i, x)| !fixed(i) || TEMPLATE.get(i) == Some(x))
}

// ---------------------------------------------------------------------------
// The configuration

/// What the configuration says about a pad.
struct PadInfo<'a> {
    name: &'a str,
    opts: PadOptions,
    output: Option<&'a StreamConfig>,
    input: Option<(usize, &'a StreamConfig)>,
}

fn find_pad<'a>(ctx: &'a Ctx, name: &'a str) -> Result<PadInfo<'a>, String> {
    let cfg = &ctx.config;
    let pads: Vec<&str> = cfg
        .devices
        .iter()
        .filter(|d| d.kind == "pad")
        .map(|d| d.name.as_str())
        .collect();
    let Some((index, dev)) = cfg.devices.iter().enumerate().find(|(_, d)| d.name == name) else {
        let known = if pads.is_empty() {
            "it has no pads; pass --config with the daemon's configuration".to_owned()
        } else {
            format!("pads: {}", pads.join(", "))
        };
        return Err(format!(
            "no device named `{name}` in {} ({known})",
            ctx.config_name
        ));
    };
    if dev.kind != "pad" {
        return Err(format!(
            "device `{name}` in {} is a {} device, not a pad",
            ctx.config_name, dev.kind
        ));
    }
    let opts: PadOptions = toml::Value::Table(dev.options.clone())
        .try_into()
        .map_err(|e| format!("pad `{name}` in {}: {e}", ctx.config_name))?;
    // Several streams of one direction on a pad are mixed, and share one
    // format (check-config): the first speaks for them all.
    let stream = |dir: Direction| {
        cfg.streams
            .iter()
            .enumerate()
            .find(|(_, s)| s.device == index && s.direction == dir)
    };
    Ok(PadInfo {
        name,
        opts,
        output: stream(Direction::Output).map(|(_, s)| s),
        input: stream(Direction::Input),
    })
}

fn offers_several(s: &StreamConfig) -> bool {
    s.formats.len() > 1 || s.rates.len() > 1 || s.channels_min != s.channels_max
}

/// `a`, `a or b`, `a, b or c`.
fn join_or<T: fmt::Display>(items: &[T]) -> String {
    let names: Vec<String> = items.iter().map(ToString::to_string).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

fn describe_offer(s: &StreamConfig) -> String {
    let channels = if s.channels_min == s.channels_max {
        s.channels_min.to_string()
    } else {
        format!("{} to {}", s.channels_min, s.channels_max)
    };
    format!(
        "{} at {} Hz, {channels} ch",
        join_or(&s.formats),
        join_or(&s.rates)
    )
}

/// A raw pad's playback format: the output stream's only one.
fn raw_output_format(pad: &str, s: &StreamConfig) -> Result<Pcm, String> {
    let (Some(&format), Some(&rate)) = (s.formats.first(), s.rates.first()) else {
        return Err(format!("pad {pad}'s output stream offers no format"));
    };
    if offers_several(s) {
        return Err(format!(
            "pad {pad} is raw and its output stream offers several formats; set header = \"wav\" on the pad to record it"
        ));
    }
    let pcm = Pcm {
        format,
        rate,
        channels: u16::from(s.channels_min),
    };
    if header_bytes(&pcm, 0, 0).is_none() {
        return Err(format!(
            "pad {pad} is raw and its output stream plays {format}, which a WAV file cannot describe"
        ));
    }
    Ok(pcm)
}

// ---------------------------------------------------------------------------
// The connection

fn connect(pad: &PadInfo<'_>) -> Result<UnixStream, String> {
    let path = pad.opts.path();
    let sock = UnixStream::connect(path).map_err(|e| {
        let why = match e.kind() {
            io::ErrorKind::NotFound => {
                "no such socket (is the daemon running with this configuration?)".to_owned()
            }
            io::ErrorKind::ConnectionRefused => {
                "nothing listens on it (is the daemon running?)".to_owned()
            }
            io::ErrorKind::PermissionDenied => {
                "permission denied (the pad's `mode` option says who may connect)".to_owned()
            }
            _ => e.to_string(),
        };
        format!(
            "cannot connect to pad {} at {}: {why}",
            pad.name,
            path.display()
        )
    })?;
    sock.set_nonblocking(true)
        .map_err(|e| format!("cannot use the pad's socket: {e}"))?;
    Ok(sock)
}

/// Waits until `fd` has one of `events` (or an error/hang-up), at most
/// `timeout`. Returns the `revents` (0 on timeout or a signal).
fn poll_fd(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Duration,
) -> io::Result<libc::c_short> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd, exclusively borrowed for the call;
    // `fd` is open for its duration.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e),
        };
    }
    Ok(pfd.revents)
}

/// The socket's send buffer size (an upper bound on the bytes in flight).
fn send_buffer(sock: &UnixStream) -> u64 {
    let mut v: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    // SAFETY: `v` and `len` are valid for writes of the sizes given; the fd
    // is open for the call.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    match (r, u64::try_from(v)) {
        (0, Ok(n)) if n > 0 => n,
        _ => 1024 * 1024,
    }
}

/// Recognises the pad's refusal, `vsound: pad NAME is busy\n` followed by
/// the end of the connection, at the start of what the pad sends.
struct BusyCheck {
    line: Vec<u8>,
    seen: Vec<u8>,
    decided: bool,
}

impl BusyCheck {
    fn new(pad: &str) -> BusyCheck {
        BusyCheck {
            line: format!("vsound: pad {pad} is busy\n").into_bytes(),
            seen: Vec::new(),
            decided: false,
        }
    }

    /// Takes the next bytes; returns the bytes that are stream data (empty
    /// while they could still be the busy line).
    fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        if self.decided {
            return data.to_vec();
        }
        self.seen.extend_from_slice(data);
        let n = self.seen.len();
        let could_be_line = n <= self.line.len() && self.line.starts_with(&self.seen);
        if could_be_line {
            return Vec::new();
        }
        self.decided = true;
        std::mem::take(&mut self.seen)
    }

    /// Nothing was received yet (no evidence either way).
    fn nothing_seen(&self) -> bool {
        !self.decided && self.seen.is_empty()
    }

    /// At the end of the connection: it was the refusal.
    fn is_busy(&self) -> bool {
        !self.decided && self.seen == self.line
    }

    /// At the end of the connection: bytes held back that were data after all.
    fn take_held(&mut self) -> Vec<u8> {
        self.decided = true;
        std::mem::take(&mut self.seen)
    }
}

fn busy_error(pad: &str) -> String {
    format!("pad {pad} is busy (another client is connected)")
}

// ---------------------------------------------------------------------------
// Signals

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set [`STOP`] (no `SA_RESTART`: a blocked
/// `poll` returns at once).
fn catch_signals() -> Result<(), String> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: an all-zero `sigaction` is a valid value (no flags, empty
        // mask) that is completed below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `sa.sa_mask` is a valid, exclusively borrowed sigset_t.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: `sa` is fully initialised; the handler only stores to an
        // atomic, which is async-signal-safe.
        let r = unsafe { libc::sigaction(signal, &sa, std::ptr::null_mut()) };
        if r != 0 {
            return Err(format!(
                "cannot catch signal {signal}: {}",
                io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------------------
// record

/// A WAV file being written: header first, frames appended, sizes rewritten
/// in place, so the file is valid at every moment.
struct WavFile {
    path: PathBuf,
    file: File,
    pcm: Pcm,
    data_bytes: u64,
    /// The data size the header says now.
    header_says: u64,
}

impl WavFile {
    fn create(path: &Path, pcm: Pcm) -> Result<WavFile, String> {
        let mut file =
            File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        let header =
            header_bytes(&pcm, 36, 0).ok_or_else(|| format!("a WAV file cannot describe {pcm}"))?;
        file.write_all(&header)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(WavFile {
            path: path.to_owned(),
            file,
            pcm,
            data_bytes: 0,
            header_says: 0,
        })
    }

    fn frames(&self) -> u64 {
        self.data_bytes / u64::from(self.pcm.frame_bytes().max(1))
    }

    /// Bytes that still fit (whole frames).
    fn room(&self) -> u64 {
        let frame = u64::from(self.pcm.frame_bytes().max(1));
        (MAX_DATA_BYTES / frame * frame).saturating_sub(self.data_bytes)
    }

    fn append(&mut self, frames: &[u8]) -> Result<(), String> {
        self.file
            .write_all(frames)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        self.data_bytes += frames.len() as u64;
        Ok(())
    }

    /// A new format before any frame: the file starts over with it.
    fn restart(&mut self, pcm: Pcm) -> Result<(), String> {
        let header =
            header_bytes(&pcm, 36, 0).ok_or_else(|| format!("a WAV file cannot describe {pcm}"))?;
        self.file
            .write_all_at(&header, 0)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        self.pcm = pcm;
        Ok(())
    }

    /// Writes the real sizes (`pad`: with the pad byte an odd-sized `data`
    /// chunk ends with, once it is complete).
    fn write_sizes(&mut self, pad: u64) -> Result<(), String> {
        let data = u32::try_from(self.data_bytes).map_err(|_| "WAV size overflow".to_owned())?;
        let riff = u32::try_from(36 + self.data_bytes + pad)
            .map_err(|_| "WAV size overflow".to_owned())?;
        let err = |e: io::Error| format!("cannot write {}: {e}", self.path.display());
        self.file
            .write_all_at(&riff.to_le_bytes(), 4)
            .map_err(err)?;
        self.file
            .write_all_at(&data.to_le_bytes(), 40)
            .map_err(err)?;
        self.header_says = self.data_bytes;
        Ok(())
    }

    fn update(&mut self) -> Result<(), String> {
        if self.header_says != self.data_bytes {
            self.write_sizes(0)?;
        }
        Ok(())
    }

    /// The final sizes, the pad byte, on disk. Returns the frame count.
    fn finish(mut self) -> Result<u64, String> {
        let pad = self.data_bytes % 2;
        if pad == 1 {
            self.append(&[0])?;
            self.data_bytes -= 1;
        }
        self.write_sizes(pad)?;
        self.file
            .sync_all()
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))?;
        Ok(self.frames())
    }
}

/// `OUT.wav` for 1, `OUT-2.wav` for 2...
fn numbered(path: &Path, k: u32) -> PathBuf {
    if k <= 1 {
        return path.to_owned();
    }
    let mut name: OsString = path.file_stem().unwrap_or_default().to_owned();
    name.push(format!("-{k}"));
    if let Some(ext) = path.extension() {
        name.push(".");
        name.push(ext);
    }
    path.with_file_name(name)
}

/// Turns what the pad sends into WAV files.
struct Recorder<'a> {
    pad: &'a str,
    out: &'a Path,
    /// Raw pad: the one format; `None`: headers say.
    raw: Option<Pcm>,
    limit: Option<Duration>,
    /// Received, not yet written: starts at a frame boundary (or at the
    /// first header).
    pending: Vec<u8>,
    file: Option<WavFile>,
    /// The number of the current (or, with none, the last) file.
    index: u32,
    /// Audio in the finished files.
    done_nanos: u128,
    finished: Vec<(PathBuf, Pcm, u64)>,
    reached_limit: bool,
    /// Raw: the first bytes were checked for a header.
    raw_checked: bool,
    last_update: Instant,
}

impl<'a> Recorder<'a> {
    fn new(pad: &'a str, out: &'a Path, raw: Option<Pcm>, limit: Option<Duration>) -> Self {
        Recorder {
            pad,
            out,
            raw,
            limit,
            pending: Vec::new(),
            file: None,
            index: 0,
            done_nanos: 0,
            finished: Vec::new(),
            reached_limit: false,
            raw_checked: false,
            last_update: Instant::now(),
        }
    }

    /// Finishes the current file (if any) and starts the next one in `pcm`.
    fn start_file(&mut self, pcm: Pcm, why: &str) -> Result<(), String> {
        if let Some(f) = self.file.as_mut().filter(|f| f.data_bytes == 0) {
            // Nothing came in the previous format: the same file goes on
            // in the new one.
            f.restart(pcm)?;
            println!(
                "{}: {pcm} (pad {} changed format before any frame)",
                f.path.display(),
                self.pad
            );
            return Ok(());
        }
        self.close_file()?;
        self.index += 1;
        let path = numbered(self.out, self.index);
        let file = WavFile::create(&path, pcm)?;
        println!("{}: {pcm}{why}", path.display());
        self.file = Some(file);
        Ok(())
    }

    fn close_file(&mut self) -> Result<(), String> {
        if let Some(f) = self.file.take() {
            let (path, pcm) = (f.path.clone(), f.pcm);
            let frames = f.finish()?;
            self.done_nanos += pcm.nanos_of(frames);
            self.finished.push((path, pcm, frames));
        }
        Ok(())
    }

    /// Takes bytes from the pad.
    fn push(&mut self, data: &[u8]) -> Result<(), String> {
        if self.reached_limit {
            return Ok(());
        }
        if let (Some(pcm), None, 0) = (self.raw, &self.file, self.index) {
            self.start_file(pcm, &format!(" (pad {} is raw)", self.pad))?;
        }
        self.pending.extend_from_slice(data);
        self.process(false)
    }

    /// Writes what `pending` holds. At the end (`last`), bytes that could
    /// have been the start of a header are frames after all.
    fn process(&mut self, last: bool) -> Result<(), String> {
        loop {
            if self.reached_limit {
                self.pending.clear();
                return Ok(());
            }
            let Some(pcm) = self.file.as_ref().map(|f| f.pcm) else {
                // A header pad: its first bytes are a header.
                if self.pending.len() < HEADER_LEN {
                    return Ok(());
                }
                let Some(pcm) = parse_pad_header(&self.pending, false) else {
                    return Err(format!(
                        "pad {} did not start with a WAV header (is header = \"wav\" set on the running daemon's pad?)",
                        self.pad
                    ));
                };
                self.pending.drain(..HEADER_LEN);
                self.start_file(pcm, "")?;
                continue;
            };
            let frame = pcm.frame_bytes().max(1) as usize;
            let len = self.pending.len();
            if self.raw.is_some() && !self.raw_checked && len >= HEADER_LEN {
                // A daemon whose pad sends headers, though the configuration
                // says raw: recording them as frames would be wrong.
                self.raw_checked = true;
                if self.file.as_ref().is_some_and(|f| f.data_bytes == 0)
                    && parse_pad_header(&self.pending, true).is_some()
                {
                    return Err(format!(
                        "pad {} sends WAV headers, but is raw in the configuration (is the daemon running another one?)",
                        self.pad
                    ));
                }
            }
            if self.raw.is_some() {
                if !last
                    && !self.raw_checked
                    && len < HEADER_LEN
                    && could_start_header(&self.pending)
                {
                    return Ok(());
                }
                let whole = len / frame * frame;
                self.write_frames(whole)?;
                return Ok(());
            }
            // Scan the frame boundaries for the next header.
            let mut at = 0;
            let mut header = None;
            while at < len {
                let rest = self.pending.get(at..).unwrap_or_default();
                if rest.len() >= HEADER_LEN {
                    if let Some(p) = parse_pad_header(rest, true) {
                        header = Some(p);
                        break;
                    }
                } else if !last && could_start_header(rest) {
                    break;
                }
                if rest.len() < frame {
                    break;
                }
                at += frame;
            }
            self.write_frames(at)?;
            let Some(next) = header else {
                return Ok(());
            };
            if self.reached_limit {
                continue;
            }
            self.pending.drain(..HEADER_LEN.min(self.pending.len()));
            if next != pcm {
                self.start_file(next, " (new format)")?;
            }
        }
    }

    /// Writes `pending[..n]` (whole frames) within the limits, and drops
    /// them from `pending`.
    fn write_frames(&mut self, n: usize) -> Result<(), String> {
        let mut off = 0;
        while off < n && !self.reached_limit {
            let Some((pcm, frames, room)) =
                self.file.as_ref().map(|f| (f.pcm, f.frames(), f.room()))
            else {
                break;
            };
            if room == 0 {
                self.start_file(pcm, " (the previous file reached the WAV size limit)")?;
                continue;
            }
            let mut take = ((n - off) as u64).min(room);
            if let Some(limit) = self.limit {
                let left = limit.as_nanos().saturating_sub(self.done_nanos);
                let frame = u64::from(pcm.frame_bytes().max(1));
                let allowed = pcm
                    .frames_in(left)
                    .saturating_sub(frames)
                    .saturating_mul(frame);
                if allowed <= take {
                    take = allowed;
                    self.reached_limit = true;
                }
            }
            let end = off + usize::try_from(take).unwrap_or(0);
            if let Some(f) = self.file.as_mut() {
                f.append(self.pending.get(off..end).unwrap_or_default())?;
            }
            off = end;
        }
        self.pending.drain(..n.min(self.pending.len()));
        Ok(())
    }

    /// Rewrites the sizes if frames came since the last time, at most every
    /// [`HEADER_UPDATE`].
    fn tick(&mut self) -> Result<(), String> {
        if self.last_update.elapsed() >= HEADER_UPDATE {
            self.last_update = Instant::now();
            if let Some(f) = self.file.as_mut() {
                f.update()?;
            }
        }
        Ok(())
    }

    /// Ends the recording: what is held back is written, files finished.
    /// Returns the bytes of a trailing partial frame that were dropped.
    fn finish(&mut self) -> Result<usize, String> {
        if let (Some(pcm), None, 0) = (self.raw, &self.file, self.index) {
            // Nothing came: an empty file of the raw pad's format.
            self.start_file(pcm, &format!(" (pad {} is raw)", self.pad))?;
        }
        if self.file.is_some() {
            self.process(true)?;
        }
        let dropped = if self.reached_limit {
            0
        } else {
            self.pending.len()
        };
        self.close_file()?;
        Ok(dropped)
    }
}

enum RecordEnd {
    Closed,
    Limit,
    Signal,
}

/// Socket reads per poll, so header updates and signals are not starved.
const READS_PER_POLL: usize = 16;

/// Moves what the pad sends into `rec` until the recording ends.
fn receive(
    sock: &UnixStream,
    name: &str,
    rec: &mut Recorder<'_>,
    busy: &mut BusyCheck,
    buf: &mut [u8],
) -> Result<RecordEnd, String> {
    loop {
        if stopped() {
            return Ok(RecordEnd::Signal);
        }
        if rec.reached_limit {
            return Ok(RecordEnd::Limit);
        }
        poll_fd(sock.as_fd(), libc::POLLIN, TICK)
            .map_err(|e| format!("poll on the pad's socket: {e}"))?;
        for _ in 0..READS_PER_POLL {
            match (&*sock).read(buf) {
                Ok(0) => return Ok(RecordEnd::Closed),
                Ok(n) => {
                    let data = busy.feed(buf.get(..n).unwrap_or_default());
                    if !data.is_empty() {
                        rec.push(&data)?;
                    }
                    if rec.reached_limit {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Ok(RecordEnd::Closed)
                }
                Err(e) => return Err(format!("reading pad {name}: {e}")),
            }
        }
        rec.tick()?;
    }
}

fn record(ctx: &Ctx, name: &str, out: &Path, seconds: Option<Duration>) -> Result<(), String> {
    let pad = find_pad(ctx, name)?;
    let Some(stream) = pad.output else {
        return Err(format!(
            "pad {name} has no output stream in {}: the guest plays nothing on it",
            ctx.config_name
        ));
    };
    let raw = match pad.opts.header() {
        Header::Raw => Some(raw_output_format(name, stream)?),
        Header::Wav => None,
    };
    let sock = connect(&pad)?;
    catch_signals()?;
    let mut rec = Recorder::new(name, out, raw, seconds);
    let mut busy = BusyCheck::new(name);
    let mut buf = vec![0u8; CHUNK];
    let started = Instant::now();
    let result = receive(&sock, name, &mut rec, &mut busy, &mut buf);
    drop(sock);
    if busy.is_busy() {
        return Err(busy_error(name));
    }
    // Whatever happened, what came is written and the files are finished.
    if result.is_err() {
        rec.pending.clear();
    }
    let held = busy.take_held();
    let pushed = match held.is_empty() {
        true => Ok(()),
        false => rec.push(&held),
    };
    let finished = rec.finish();
    let end = result?;
    pushed?;
    let dropped = finished?;
    for (path, pcm, frames) in &rec.finished {
        let secs = pcm.nanos_of(*frames) as f64 / 1e9;
        println!("{}: {frames} frames ({secs:.3} s) of {pcm}", path.display());
    }
    if rec.finished.is_empty() {
        println!(
            "pad {name} sent no WAV header (the guest opened no playback stream); no file written"
        );
    }
    if dropped > 0 {
        eprintln!("vsound pad: dropped a trailing partial frame ({dropped} bytes)");
    }
    let why = match end {
        RecordEnd::Closed => "the pad closed the connection",
        RecordEnd::Limit => "--seconds reached",
        RecordEnd::Signal => "stopped by a signal",
    };
    println!(
        "recording of pad {name} ended after {:.1} s: {why}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// play

/// A WAV file to play, positioned at its first frame.
struct WavInput {
    pcm: Pcm,
    file: File,
    /// `data` bytes left to read; `None`: until the end of the file.
    left: Option<u64>,
    /// The size the `data` chunk declares (`None`: streaming).
    declared: Option<u64>,
    /// Bytes of the file after the `data` chunk's header.
    available: u64,
}

impl WavInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = match self.left {
            Some(left) => usize::try_from(left).unwrap_or(usize::MAX).min(buf.len()),
            None => buf.len(),
        };
        if want == 0 {
            return Ok(0);
        }
        let n = loop {
            match self.file.read(buf.get_mut(..want).unwrap_or_default()) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if let Some(left) = self.left.as_mut() {
            *left -= n as u64;
        }
        Ok(n)
    }
}

fn chunk_name(id: &[u8]) -> String {
    id.iter()
        .map(|&b| match b {
            0x20..=0x7e => char::from(b).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect()
}

fn read_fully(file: &mut File, buf: &mut [u8]) -> io::Result<bool> {
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn parse_fmt(b: &[u8], name: &str) -> Result<Pcm, String> {
    let short = || format!("{name}: its fmt chunk is too short");
    let mut tag = le16(b, 0).ok_or_else(short)?;
    let channels = le16(b, 2).ok_or_else(short)?;
    let rate = le32(b, 4).ok_or_else(short)?;
    let block_align = le16(b, 12).ok_or_else(short)?;
    let bits = le16(b, 14).ok_or_else(short)?;
    if tag == WAVE_FORMAT_EXTENSIBLE {
        let ext = le16(b, 16).filter(|&cb| cb >= 22).and(b.get(24..40));
        let Some(guid) = ext else {
            return Err(format!(
                "{name}: its WAVE_FORMAT_EXTENSIBLE fmt chunk is too short"
            ));
        };
        if guid.get(2..) != Some(&SUBFORMAT_GUID_TAIL[..]) {
            return Err(format!(
                "{name} is WAVE_FORMAT_EXTENSIBLE with a subformat GUID vsound does not know"
            ));
        }
        tag = le16(guid, 0).ok_or_else(short)?;
    }
    let Some(format) = format_of(tag, bits) else {
        return Err(format!(
            "{name} is {} with {bits}-bit samples, which vsound cannot play",
            describe_tag(tag)
        ));
    };
    if channels == 0 || rate == 0 {
        return Err(format!("{name} has {channels} channels at {rate} Hz"));
    }
    let pcm = Pcm {
        format,
        rate,
        channels,
    };
    if u32::from(block_align) != pcm.frame_bytes() {
        return Err(format!(
            "{name}: its block align ({block_align} bytes) is not {channels} channels of {bits}-bit samples"
        ));
    }
    Ok(pcm)
}

fn open_wav(path: &Path) -> Result<WavInput, String> {
    let name = path.display().to_string();
    let io_err = |e: io::Error| format!("cannot read {name}: {e}");
    let mut file = File::open(path).map_err(|e| format!("cannot open {name}: {e}"))?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let mut riff = [0u8; 12];
    if !read_fully(&mut file, &mut riff).map_err(io_err)? {
        return Err(format!("{name} is not a WAV file (too short)"));
    }
    match (riff.get(..4), riff.get(8..12)) {
        (Some(b"RIFF"), Some(b"WAVE")) => {}
        (Some(b"RF64"), _) => {
            return Err(format!("{name} is an RF64 file, which is not supported"))
        }
        _ => return Err(format!("{name} is not a WAV file (no RIFF/WAVE header)")),
    }
    let mut pos: u64 = 12;
    let mut pcm: Option<Pcm> = None;
    loop {
        let mut head = [0u8; 8];
        if !read_fully(&mut file, &mut head).map_err(io_err)? {
            return Err(format!("{name} has no data chunk"));
        }
        pos += 8;
        let id = head.get(..4).unwrap_or_default();
        let size = le32(&head, 4).unwrap_or(0);
        match id {
            b"fmt " => {
                if pcm.is_some() {
                    return Err(format!("{name} has two fmt chunks"));
                }
                if !(16..=MAX_FMT_CHUNK).contains(&size) {
                    return Err(format!("{name}: its fmt chunk has {size} bytes"));
                }
                let mut body = vec![0u8; size as usize];
                if !read_fully(&mut file, &mut body).map_err(io_err)? {
                    return Err(format!("{name} ends inside its fmt chunk"));
                }
                pcm = Some(parse_fmt(&body, &name)?);
                pos += u64::from(size);
                if size % 2 == 1 {
                    pos += 1;
                    file.seek(SeekFrom::Start(pos)).map_err(io_err)?;
                }
            }
            b"data" => {
                let Some(pcm) = pcm else {
                    return Err(format!("{name}: its data chunk comes before the fmt chunk"));
                };
                let declared = match size {
                    0 | STREAMING_SIZE => None,
                    n => Some(u64::from(n)),
                };
                let available = file_len.saturating_sub(pos);
                return Ok(WavInput {
                    pcm,
                    file,
                    left: declared,
                    declared,
                    available,
                });
            }
            _ => {
                let skip = u64::from(size) + u64::from(size % 2);
                pos = pos
                    .checked_add(skip)
                    .filter(|&p| p <= file_len)
                    .ok_or_else(|| {
                        format!(
                            "{name} has no data chunk (chunk `{}` runs past the end)",
                            chunk_name(id)
                        )
                    })?;
                file.seek(SeekFrom::Start(pos)).map_err(io_err)?;
            }
        }
    }
}

/// Refuses a file the capture stream cannot take, naming both.
fn check_capture(file: &str, pcm: &Pcm, pad: &str, s: &StreamConfig) -> Result<(), String> {
    let ok = s.formats.contains(&pcm.format)
        && s.rates.contains(&pcm.rate)
        && (u16::from(s.channels_min)..=u16::from(s.channels_max)).contains(&pcm.channels);
    if ok {
        return Ok(());
    }
    Err(format!(
        "{file} is {pcm}; the capture stream on pad {pad} takes {}",
        describe_offer(s)
    ))
}

/// The management API's view of the pad, for `play`.
struct Api {
    path: PathBuf,
}

/// Counters of the pad in the API's `status`.
#[derive(Clone, Copy, Debug, Default)]
struct PadCounters {
    connected: bool,
    clients: u64,
    refused: u64,
    dropped: u64,
}

impl Api {
    fn status(&self) -> Result<Value, String> {
        let reply = crate::api::ctl(&self.path, &json!({ "cmd": "status" }))?;
        if reply.get("ok").and_then(Value::as_bool) != Some(true) {
            return Err(format!("the daemon answered {reply}"));
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    fn counters(&self, pad: &str) -> Result<PadCounters, String> {
        let st = self.status()?;
        pad_counters(&st, pad).ok_or_else(|| self.no_such_pad(pad))
    }

    fn no_such_pad(&self, pad: &str) -> String {
        format!(
            "the daemon behind {} has no pad named {pad} (does it run this configuration?)",
            self.path.display()
        )
    }
}

fn pad_counters(st: &Value, pad: &str) -> Option<PadCounters> {
    let dev = st
        .get("devices")?
        .as_array()?
        .iter()
        .find(|d| d.get("name").and_then(Value::as_str) == Some(pad))?;
    if dev.get("kind").and_then(Value::as_str) != Some("pad") {
        return None;
    }
    let c = dev.get("counters")?;
    let get = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(PadCounters {
        connected: get("client_connected") != 0,
        clients: get("clients"),
        refused: get("refused"),
        dropped: get("capture_dropped_bytes"),
    })
}

/// The capture stream's negotiated parameters, if the guest set them.
fn negotiated(st: &Value, id: usize) -> Option<(String, u64, u64)> {
    let p = st.get("streams")?.get(id)?.get("params")?;
    Some((
        p.get("format")?.as_str()?.to_owned(),
        p.get("rate")?.as_u64()?,
        p.get("channels")?.as_u64()?,
    ))
}

/// Reads what the pad sends (discarded) until nothing is queued, feeding the
/// busy check. Returns false at the end of the connection.
fn drain(sock: &UnixStream, busy: &mut BusyCheck, scratch: &mut [u8]) -> bool {
    loop {
        match (&*sock).read(scratch) {
            Ok(0) => return false,
            Ok(n) => {
                busy.feed(scratch.get(..n).unwrap_or_default());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

fn play(ctx: &Ctx, name: &str, input: &Path, timeout: Option<Duration>) -> Result<(), String> {
    let pad = find_pad(ctx, name)?;
    let Some((stream_id, stream)) = pad.input else {
        return Err(format!(
            "pad {name} has no input stream in {}: the guest records nothing from it",
            ctx.config_name
        ));
    };
    let file_name = input.display().to_string();
    let mut wav = open_wav(input)?;
    let pcm = wav.pcm;
    check_capture(&file_name, &pcm, name, stream)?;
    let live = pad.opts.capture() == CaptureMode::Live;

    // The API, if there is one: the same daemon, the stream as the guest set
    // it, and the counters to tell when the pad let go of us.
    let api = ctx.api.as_ref().map(|p| Api { path: p.clone() });
    let mut before = None;
    let mut guest_params = None;
    if let Some(a) = &api {
        match a.status() {
            Ok(st) => {
                before = Some(pad_counters(&st, name).ok_or_else(|| a.no_such_pad(name))?);
                guest_params = negotiated(&st, stream_id);
            }
            Err(e) => eprintln!(
                "vsound pad: warning: no management API ({e}); cannot confirm that the guest records everything"
            ),
        }
    }
    if offers_several(stream) {
        match &guest_params {
            Some((f, r, c))
                if (f.as_str(), *r, *c)
                    != (pcm.format.name(), u64::from(pcm.rate), u64::from(pcm.channels)) =>
            {
                return Err(format!(
                    "{file_name} is {pcm}; the guest set the capture stream on pad {name} to {f} {r} Hz {c} ch"
                ));
            }
            Some(_) => {}
            None => eprintln!(
                "vsound pad: warning: the capture stream on pad {name} offers {}; the guest must record {pcm} for {file_name} to come through as it is",
                describe_offer(stream)
            ),
        }
    }

    let sock = connect(&pad)?;
    catch_signals()?;
    let frame = pcm.frame_bytes().max(1) as usize;
    let mut buf = vec![0u8; (CHUNK / frame).max(1) * frame];
    let mut scratch = vec![0u8; CHUNK];
    let mut busy = BusyCheck::new(name);
    // buf[off..whole] is to send; buf[whole..len] a partial frame.
    let (mut off, mut whole, mut len) = (0usize, 0usize, 0usize);
    let mut file_done = false;
    let mut sent: u64 = 0;
    let started = Instant::now();
    let lead = pcm.bytes_per_second() * LIVE_LEAD_MS / 1000 / frame as u64 * frame as u64;
    let closed = |busy: &BusyCheck, sent: u64| {
        if busy.is_busy() {
            busy_error(name)
        } else {
            format!(
                "pad {name} closed the connection after {} frames (did the daemon stop?)",
                sent / frame as u64
            )
        }
    };
    let mut interrupted = false;
    loop {
        if stopped() {
            interrupted = true;
            break;
        }
        if off == whole {
            buf.copy_within(whole..len, 0);
            len -= whole;
            off = 0;
            while !file_done && len < buf.len() {
                match wav.read(buf.get_mut(len..).unwrap_or_default()) {
                    Ok(0) => file_done = true,
                    Ok(n) => len += n,
                    Err(e) => return Err(format!("cannot read {file_name}: {e}")),
                }
            }
            whole = len / frame * frame;
            if whole == 0 && file_done {
                break;
            }
        }
        // A live pad takes frames in real time.
        let mut limit = whole;
        let mut wait = TICK;
        if live {
            let due = pcm.bytes_per_second() as u128 * started.elapsed().as_nanos() / 1_000_000_000;
            let allowed = u64::try_from(due).unwrap_or(u64::MAX).saturating_add(lead);
            let room = allowed.saturating_sub(sent) / frame as u64 * frame as u64;
            limit = off + usize::try_from(room).unwrap_or(usize::MAX).min(whole - off);
            wait = Duration::from_millis(10);
        }
        let events = if limit > off {
            libc::POLLIN | libc::POLLOUT
        } else {
            libc::POLLIN
        };
        let revents = poll_fd(sock.as_fd(), events, wait)
            .map_err(|e| format!("poll on the pad's socket: {e}"))?;
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
            && !drain(&sock, &mut busy, &mut scratch)
        {
            return Err(closed(&busy, sent));
        }
        if revents & libc::POLLOUT != 0 && limit > off {
            match (&sock).write(buf.get(off..limit).unwrap_or_default()) {
                Ok(n) => {
                    off += n;
                    sent += n as u64;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => {
                    drain(&sock, &mut busy, &mut scratch);
                    return Err(closed(&busy, sent));
                }
            }
        }
    }
    let frames = sent / frame as u64;
    let partial = len - whole;

    // A connection that has not said anything may still be a refusal.
    if busy.nothing_seen() {
        let _ = poll_fd(sock.as_fd(), libc::POLLIN, BUSY_GRACE);
        if !drain(&sock, &mut busy, &mut scratch) {
            return Err(closed(&busy, sent));
        }
    }
    if live && !interrupted {
        // Let the guest take what was written ahead of time.
        std::thread::sleep(Duration::from_millis(LIVE_LEAD_MS) + TICK);
    }
    // Hang up without leaving unread bytes (see the module doc).
    let _ = sock.shutdown(Shutdown::Both);
    drain(&sock, &mut busy, &mut scratch);
    if busy.is_busy() {
        return Err(busy_error(name));
    }
    let pending_at_close = Instant::now();
    let buffered = PAD_READ_AHEAD + send_buffer(&sock);
    drop(sock);

    if partial > 0 {
        eprintln!(
            "vsound pad: warning: {file_name} ends with a partial frame ({partial} bytes), not sent"
        );
    }
    if let Some(declared) = wav.declared {
        let got = sent + partial as u64;
        if got < declared && !interrupted {
            eprintln!(
                "vsound pad: warning: {file_name}'s data chunk declares {declared} bytes, the file holds {}",
                wav.available.min(got)
            );
        }
    }
    let secs = pcm.nanos_of(frames) as f64 / 1e9;
    if interrupted {
        return Err(format!(
            "interrupted after {frames} frames ({secs:.3} s) of {file_name}; the guest records those"
        ));
    }
    if live {
        println!(
            "sent {frames} frames ({secs:.3} s) of {pcm} to pad {name} (live capture: in real time; what the guest was not recording is gone)"
        );
        return Ok(());
    }
    let (Some(api), Some(before)) = (api, before) else {
        println!(
            "sent {frames} frames ({secs:.3} s) of {pcm} to pad {name}; the pad records them all before it detaches (no management API to confirm it: set [daemon] api_socket or pass --api-socket)"
        );
        return Ok(());
    };
    let timeout = timeout.unwrap_or_else(|| {
        let ns = u128::from(buffered) * 1_000_000_000 / u128::from(pcm.bytes_per_second().max(1));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)) + TIMEOUT_SLACK
    });
    loop {
        let now = api
            .counters(name)
            .map_err(|e| format!("after sending {frames} frames: {e}"))?;
        if now.clients == before.clients && now.refused > before.refused {
            return Err(busy_error(name));
        }
        if now.dropped > before.dropped {
            return Err(format!(
                "pad {name} dropped {} bytes the guest had not recorded (the connection ended early)",
                now.dropped - before.dropped
            ));
        }
        if now.clients > before.clients + 1 {
            println!(
                "sent {frames} frames ({secs:.3} s) of {pcm} to pad {name}; another client connected since, and the guest records its input after {file_name}'s"
            );
            return Ok(());
        }
        if !now.connected {
            println!(
                "sent {frames} frames ({secs:.3} s) of {pcm} to pad {name}; the guest recorded them all"
            );
            return Ok(());
        }
        if stopped() {
            return Err(format!(
                "interrupted while waiting for the guest to record {file_name} (the pad keeps what it holds until it does)"
            ));
        }
        if pending_at_close.elapsed() >= timeout {
            return Err(format!(
                "sent {frames} frames of {file_name}, but the guest has not recorded them all within {:.1} s (the pad keeps the rest until it does)",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(API_POLL);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const S16_48K_2: Pcm = Pcm {
        format: Format::S16,
        rate: 48000,
        channels: 2,
    };
    const S16_44K_2: Pcm = Pcm {
        format: Format::S16,
        rate: 44100,
        channels: 2,
    };

    fn streaming(pcm: &Pcm) -> [u8; HEADER_LEN] {
        header_bytes(pcm, STREAMING_SIZE, STREAMING_SIZE).unwrap()
    }

    /// The canonical file: header with real sizes, data, pad byte.
    fn read_wav(path: &Path) -> (Pcm, Vec<u8>) {
        let b = std::fs::read(path).unwrap();
        let pcm = parse_pad_header(&b, false).unwrap();
        let data = le32(&b, 40).unwrap() as usize;
        let riff = le32(&b, 4).unwrap() as usize;
        assert_eq!(riff, 36 + data + data % 2, "RIFF size");
        assert_eq!(b.len(), 8 + riff, "file length");
        (pcm, b[HEADER_LEN..HEADER_LEN + data].to_vec())
    }

    #[test]
    fn seconds_parse_exactly() {
        assert_eq!(parse_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds(".25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_seconds("1.000000001"), Ok(Duration::new(1, 1)));
        for bad in ["", ".", "0", "-1", "1e3", "1.0000000001", "x", "1.2.3"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_round_trip_and_are_the_pads() {
        for (format, tag, bits) in [
            (Format::U8, 1, 8),
            (Format::S24_3, 1, 24),
            (Format::Float64, 3, 64),
            (Format::ALaw, 6, 8),
            (Format::MuLaw, 7, 8),
        ] {
            let pcm = Pcm {
                format,
                rate: 8000,
                channels: 3,
            };
            let h = streaming(&pcm);
            assert_eq!((le16(&h, 20), le16(&h, 34)), (Some(tag), Some(bits)));
            assert_eq!(parse_pad_header(&h, true), Some(pcm));
            assert!(could_start_header(&h[..43]));
            assert!(could_start_header(&h[..21]));
        }
        assert!(header_bytes(
            &Pcm {
                format: Format::S24,
                rate: 48000,
                channels: 2
            },
            0,
            0
        )
        .is_none());
        let mut h = streaming(&S16_48K_2);
        h[32] = 6; // block align
        assert_eq!(parse_pad_header(&h, true), None);
        let sized = header_bytes(&S16_48K_2, 1000, 964).unwrap();
        assert_eq!(
            parse_pad_header(&sized, true),
            None,
            "mid-stream: streaming sizes only"
        );
        assert_eq!(parse_pad_header(&sized, false), Some(S16_48K_2));
        assert!(!could_start_header(b"RIFX"));
        assert!(!could_start_header(&sized[..8]));
    }

    #[test]
    fn names_are_numbered_before_the_extension() {
        let p = Path::new("/d/out.wav");
        assert_eq!(numbered(p, 1), PathBuf::from("/d/out.wav"));
        assert_eq!(numbered(p, 2), PathBuf::from("/d/out-2.wav"));
        assert_eq!(numbered(Path::new("rec"), 3), PathBuf::from("rec-3"));
    }

    fn frames(n: usize, seed: u8) -> Vec<u8> {
        (0..n * 4)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn a_header_stream_is_split_into_one_valid_file_per_format() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.wav");
        let a = frames(1000, 1);
        let b = frames(700, 2);
        let c = frames(300, 3);
        let mut stream = streaming(&S16_48K_2).to_vec();
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&streaming(&S16_48K_2)); // repeated: same file
        stream.extend_from_slice(&b);
        stream.extend_from_slice(&streaming(&S16_44K_2));
        stream.extend_from_slice(&c);
        let mut rec = Recorder::new("p", &out, None, None);
        // Odd read sizes: headers and frames split across reads.
        for piece in stream.chunks(37) {
            rec.push(piece).unwrap();
        }
        assert_eq!(rec.finish().unwrap(), 0);
        assert_eq!(rec.finished.len(), 2);
        let (pcm, data) = read_wav(&out);
        assert_eq!(pcm, S16_48K_2);
        assert!(data == [a, b].concat());
        let (pcm, data) = read_wav(&dir.path().join("out-2.wav"));
        assert_eq!(pcm, S16_44K_2);
        assert!(data == c);
    }

    #[test]
    fn a_header_lookalike_that_is_not_at_a_frame_boundary_is_data() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.wav");
        let mut data = frames(10, 1);
        // 2 bytes into a frame: not a header.
        data.extend_from_slice(&[1, 2]);
        data.extend_from_slice(&streaming(&S16_44K_2));
        data.extend_from_slice(&[3, 4]);
        let mut stream = streaming(&S16_48K_2).to_vec();
        stream.extend_from_slice(&data);
        let mut rec = Recorder::new("p", &out, None, None);
        rec.push(&stream).unwrap();
        rec.finish().unwrap();
        assert_eq!(rec.finished.len(), 1);
        assert!(read_wav(&out).1 == data);
    }

    #[test]
    fn held_back_bytes_are_frames_at_the_end_and_partial_frames_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.wav");
        let mut stream = streaming(&S16_48K_2).to_vec();
        stream.extend_from_slice(&frames(5, 1));
        stream.extend_from_slice(b"RIFF\xff\xff\xff\xffWAVE"); // 3 frames that look like a start
        let mut rec = Recorder::new("p", &out, None, None);
        rec.push(&stream).unwrap();
        assert_eq!(rec.file.as_ref().unwrap().data_bytes, 20, "held back");
        rec.push(&[9, 9, 9]).unwrap(); // no header after all, and half a frame
        assert_eq!(rec.file.as_ref().unwrap().data_bytes, 32);
        rec.push(b"RI").unwrap(); // a partial frame that could start one
        assert_eq!(rec.file.as_ref().unwrap().data_bytes, 36);
        assert_eq!(rec.finish().unwrap(), 1);
        let (_, data) = read_wav(&out);
        assert_eq!(data.len(), 36);
        assert_eq!(&data[20..32], b"RIFF\xff\xff\xff\xffWAVE");
        assert_eq!(&data[32..], &[9, 9, 9, b'R']);
    }

    #[test]
    fn the_limit_counts_audio_over_all_files_and_odd_files_get_a_pad_byte() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.wav");
        let mono8 = Pcm {
            format: Format::U8,
            rate: 8000,
            channels: 1,
        };
        // Raw: 0.25 s = 2000 frames of 1 byte, limit 0.2501 s -> 2000 frames.
        let mut rec = Recorder::new("p", &out, Some(mono8), Some(Duration::from_micros(250_100)));
        rec.push(&[0x80; 1999]).unwrap();
        rec.push(&[0x81; 3]).unwrap();
        assert!(rec.reached_limit);
        rec.finish().unwrap();
        let (pcm, data) = read_wav(&out);
        assert_eq!((pcm, data.len()), (mono8, 2000));

        let mut rec = Recorder::new("p", &out, Some(mono8), None);
        rec.push(&[1, 2, 3]).unwrap();
        rec.finish().unwrap();
        let (_, data) = read_wav(&out);
        assert_eq!(data, [1, 2, 3], "odd size, pad byte after it");

        // 0.5 s over two formats: 24000 frames at 48 kHz, then 0.25 s more.
        let mut stream = streaming(&S16_48K_2).to_vec();
        stream.extend_from_slice(&frames(12000, 1));
        stream.extend_from_slice(&streaming(&S16_44K_2));
        stream.extend_from_slice(&frames(20000, 2));
        let mut rec = Recorder::new("p", &out, None, Some(Duration::from_millis(500)));
        rec.push(&stream).unwrap();
        assert!(rec.reached_limit);
        rec.finish().unwrap();
        assert_eq!(read_wav(&out).1.len(), 12000 * 4);
        assert_eq!(read_wav(&dir.path().join("out-2.wav")).1.len(), 11025 * 4);
    }

    #[test]
    fn a_format_change_before_any_frame_reuses_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.wav");
        let mut stream = streaming(&S16_48K_2).to_vec();
        stream.extend_from_slice(&streaming(&S16_44K_2));
        stream.extend_from_slice(&frames(3, 1));
        let mut rec = Recorder::new("p", &out, None, None);
        rec.push(&stream).unwrap();
        rec.finish().unwrap();
        assert_eq!(rec.finished.len(), 1);
        assert_eq!(read_wav(&out).0, S16_44K_2);
        assert!(!dir.path().join("out-2.wav").exists());
    }

    #[test]
    fn a_raw_pad_that_sends_a_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.wav");
        let mut rec = Recorder::new("p", &out, Some(S16_48K_2), None);
        rec.push(&streaming(&S16_48K_2)[..30]).unwrap();
        let e = rec.push(&streaming(&S16_48K_2)[30..]).unwrap_err();
        assert!(e.contains("sends WAV headers"), "{e}");
        // Frames that only start like one are frames.
        let mut rec = Recorder::new("p", &out, Some(S16_48K_2), None);
        rec.push(b"RIFF").unwrap();
        rec.finish().unwrap();
        assert_eq!(read_wav(&out).1, b"RIFF");
    }

    #[test]
    fn a_header_pad_that_sends_no_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.wav");
        let mut rec = Recorder::new("p", &out, None, None);
        let e = rec.push(&[0u8; 64]).unwrap_err();
        assert!(e.contains("did not start with a WAV header"), "{e}");
    }

    #[test]
    fn the_busy_line_is_recognised_only_whole_and_at_the_start() {
        let mut b = BusyCheck::new("pad0");
        assert!(b.feed(b"vsound: pad ").is_empty());
        assert!(b.feed(b"pad0 is busy\n").is_empty());
        assert!(b.is_busy());
        let mut b = BusyCheck::new("pad0");
        assert_eq!(b.feed(b"vsx"), b"vsx");
        assert!(!b.is_busy());
        assert_eq!(b.feed(b"vsound"), b"vsound");
        let mut b = BusyCheck::new("pad0");
        b.feed(b"vsound: pad pad0 is busy\n");
        assert_eq!(b.feed(b"!"), b"vsound: pad pad0 is busy\n!");
        assert!(!b.is_busy());
    }

    fn wav_file(dir: &Path, chunks: &[(&[u8; 4], Vec<u8>)]) -> PathBuf {
        let mut body = b"WAVE".to_vec();
        for (id, data) in chunks {
            body.extend_from_slice(*id);
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            if data.len() % 2 == 1 {
                body.push(0);
            }
        }
        let mut file = b"RIFF".to_vec();
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&body);
        let path = dir.join("in.wav");
        std::fs::write(&path, file).unwrap();
        path
    }

    fn fmt16(tag: u16, channels: u16, rate: u32, bits: u16) -> Vec<u8> {
        let align = channels * bits / 8;
        let mut f = Vec::new();
        f.extend_from_slice(&tag.to_le_bytes());
        f.extend_from_slice(&channels.to_le_bytes());
        f.extend_from_slice(&rate.to_le_bytes());
        f.extend_from_slice(&(rate * u32::from(align)).to_le_bytes());
        f.extend_from_slice(&align.to_le_bytes());
        f.extend_from_slice(&bits.to_le_bytes());
        f
    }

    fn read_all(w: &mut WavInput) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 5];
        loop {
            let n = w.read(&mut buf).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn wav_files_are_walked_chunk_by_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let p = wav_file(
            dir.path(),
            &[
                (b"LIST", vec![7; 5]),
                (b"fmt ", fmt16(1, 2, 44100, 16)),
                (b"data", vec![1, 2, 3, 4, 5, 6, 7, 8]),
                (b"junk", vec![0; 4]),
            ],
        );
        let mut w = open_wav(&p).unwrap();
        assert_eq!(w.pcm, S16_44K_2);
        assert_eq!(
            read_all(&mut w),
            [1, 2, 3, 4, 5, 6, 7, 8],
            "the data chunk only"
        );

        // Extensible: 24 valid bits in 32 are S32 samples; 6 channels.
        let mut ext = fmt16(WAVE_FORMAT_EXTENSIBLE, 6, 48000, 32);
        ext.extend_from_slice(&22u16.to_le_bytes());
        ext.extend_from_slice(&24u16.to_le_bytes());
        ext.extend_from_slice(&0x3fu32.to_le_bytes());
        ext.extend_from_slice(&[1, 0]);
        ext.extend_from_slice(&SUBFORMAT_GUID_TAIL);
        let p = wav_file(
            dir.path(),
            &[(b"fmt ", ext.clone()), (b"data", vec![0; 24])],
        );
        let w = open_wav(&p).unwrap();
        assert_eq!((w.pcm.format, w.pcm.channels), (Format::S32, 6));
        ext[24] = 3;
        let p = wav_file(
            dir.path(),
            &[(b"fmt ", ext.clone()), (b"data", vec![0; 24])],
        );
        assert_eq!(open_wav(&p).unwrap().pcm.format, Format::Float);
        ext[30] = 0x11;
        let p = wav_file(dir.path(), &[(b"fmt ", ext), (b"data", vec![0; 24])]);
        assert!(open_wav(&p).err().unwrap().contains("GUID"));

        // Streaming size: until the end of the file.
        let p = wav_file(
            dir.path(),
            &[(b"fmt ", fmt16(7, 1, 8000, 8)), (b"data", vec![5; 9])],
        );
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes.len() - 9 - 1 - 4;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let mut w = open_wav(&p).unwrap();
        assert_eq!(w.pcm.format, Format::MuLaw);
        assert_eq!(
            read_all(&mut w),
            [5, 5, 5, 5, 5, 5, 5, 5, 5, 0],
            "with the pad byte: to EOF"
        );
    }

    #[test]
    fn bad_wav_files_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        type Chunks<'a> = &'a [(&'a [u8; 4], Vec<u8>)];
        let cases: &[(Chunks<'_>, &str)] = &[
            (&[(b"fmt ", fmt16(1, 2, 48000, 16))], "no data chunk"),
            (&[(b"data", vec![0; 4])], "before the fmt chunk"),
            (
                &[(b"fmt ", fmt16(2, 2, 48000, 4)), (b"data", vec![])],
                "0x0002 with 4-bit",
            ),
            (
                &[(b"fmt ", fmt16(1, 0, 48000, 16)), (b"data", vec![])],
                "0 channels",
            ),
            (&[(b"fmt ", vec![1, 0, 2, 0]), (b"data", vec![])], "4 bytes"),
            (
                &[(b"fmt ", fmt16(3, 2, 48000, 16)), (b"data", vec![])],
                "IEEE float with 16-bit",
            ),
        ];
        for (chunks, needle) in cases {
            let p = wav_file(dir.path(), chunks);
            let e = open_wav(&p).err().unwrap();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let p = dir.path().join("in.wav");
        let mut bytes = b"RIFF\0\0\0\0WAVELIST".to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        assert!(open_wav(&p).err().unwrap().contains("runs past the end"));
        std::fs::write(&p, b"RIFF").unwrap();
        assert!(open_wav(&p).err().unwrap().contains("not a WAV"));
        let mut bad_align = fmt16(1, 2, 48000, 16);
        bad_align[12] = 3;
        let p = wav_file(dir.path(), &[(b"fmt ", bad_align), (b"data", vec![])]);
        assert!(open_wav(&p).err().unwrap().contains("block align"));
    }

    #[test]
    fn a_mismatch_names_the_file_and_the_stream() {
        let cfg = Config::from_toml(
            "t",
            "[devices.p]\nkind = \"pad\"\npath = \"/tmp/p.sock\"\n[[streams]]\ndirection = \"input\"\ndevice = \"p\"\nformats = [\"S16\"]\nrates = [48000]\nchannels = { min = 2, max = 2 }\n",
        )
        .unwrap();
        let s = &cfg.streams[0];
        let mono = Pcm {
            format: Format::S16,
            rate: 44100,
            channels: 1,
        };
        assert_eq!(
            check_capture("IN.wav", &mono, "X", s).unwrap_err(),
            "IN.wav is S16 44100 Hz 1 ch; the capture stream on pad X takes S16 at 48000 Hz, 2 ch"
        );
        assert!(check_capture("IN.wav", &S16_48K_2, "X", s).is_ok());
        assert_eq!(join_or(&[1, 2, 3]), "1, 2 or 3");
    }
}
