//! Helpers for end-to-end audio tests (`tests/pad.rs`, `tests/alsa.rs`): stream
//! geometry, recognisable PCM patterns, pacing checks against the daemon's
//! real-time schedule, and polling.
//!
//! The pacing model is the daemon's (docs/design.md, "Time"): after `START`
//! at `t0` the daemon takes one queued buffer per period, the first at `t0`,
//! and completes a stream's buffers when their last byte is due, i.e. buffer `k`
//! at `t0 + (bytes of buffers 0..=k) / byte rate`; rx buffers are filled at the
//! end of their period, so the same formula holds. `t0` is not visible to the
//! guest, but it lies between sending `START` and seeing its answer
//! ([`StartWindow`]).

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use crate::frontend::Queue;
use crate::snd::{self, IoCompletion, PcmFormat, PcmRate, SndDriver, Status};

/// How early a completion may be seen relative to its due time: rounding
/// only (the daemon and [`Instant`] read the same `CLOCK_MONOTONIC`).
pub const EARLY_SLACK: Duration = Duration::from_micros(500);

/// Errors of these helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The driver failed.
    #[error("Sound driver error: {0}")]
    Driver(#[from] snd::Error),
    /// A socket or file operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A condition did not hold, or did not come true in time.
    #[error("{0}")]
    Check(String),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The shape of a PCM stream, in the terms a test thinks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Sample format.
    pub format: PcmFormat,
    /// Frame rate.
    pub rate: PcmRate,
    /// Channels per frame.
    pub channels: u8,
    /// Frames per period.
    pub period_frames: u32,
    /// Periods per buffer.
    pub periods: u32,
}

impl Geometry {
    /// 10 ms periods (`rate / 100` frames), four per buffer: what Linux picks
    /// for a typical application.
    pub fn new(format: PcmFormat, rate: PcmRate, channels: u8) -> Self {
        Geometry {
            format,
            rate,
            channels,
            period_frames: rate.hz() / 100,
            periods: 4,
        }
    }

    /// Bytes per frame (0 for IMA ADPCM, which has no whole-byte frames).
    pub fn frame_bytes(&self) -> usize {
        self.format.sample_bytes().unwrap_or(0) * usize::from(self.channels)
    }

    /// Bytes per period.
    pub fn period_bytes(&self) -> usize {
        self.frame_bytes() * self.period_frames as usize
    }

    /// Bytes per buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.period_bytes() * self.periods as usize
    }

    /// Bytes per second.
    pub fn bytes_per_second(&self) -> u64 {
        self.frame_bytes() as u64 * u64::from(self.rate.hz())
    }

    /// How long `bytes` last, truncated to the nanosecond as the daemon's
    /// schedule computes it.
    pub fn duration_of(&self, bytes: u64) -> Duration {
        let ns = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_second().max(1));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// How long one period lasts.
    pub fn period(&self) -> Duration {
        self.duration_of(self.period_bytes() as u64)
    }

    /// Sends PCM_SET_PARAMS for `stream` with this geometry (no features).
    pub fn set_params(&self, snd: &mut SndDriver, stream: u32) -> snd::Result<Status> {
        let (Ok(buffer), Ok(period)) = (
            u32::try_from(self.buffer_bytes()),
            u32::try_from(self.period_bytes()),
        ) else {
            return Err(snd::Error::Malformed {
                request: snd::constants::code::PCM_SET_PARAMS,
            });
        };
        snd.set_params(
            stream,
            buffer,
            period,
            0,
            self.channels,
            self.format.code(),
            self.rate.code(),
        )
    }
}

/// `len` pseudo-random bytes (xorshift64*), a different sequence for every
/// `seed`: a lost, repeated, reordered or shifted byte shows, and no two
/// periods look alike.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `len` bytes of little-endian `u32` words numbering themselves from
/// `first_word`: whatever part of the stream a reader gets, each word says
/// where it came from. `len` should be a multiple of 4.
pub fn word_counter(first_word: u32, len: usize) -> Vec<u8> {
    (0..len / 4)
        .flat_map(|i| {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            first_word.wrapping_add(i).to_le_bytes()
        })
        .collect()
}

/// The little-endian `u32` words of `bytes` (a trailing partial word is
/// ignored).
pub fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
        .collect()
}

/// `None` if `got == want`; otherwise where and how they differ, without
/// dumping megabytes.
pub fn difference(got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |b: &[u8]| {
        let end = (at + 16).min(b.len());
        format!("{:02x?}", b.get(at..end).unwrap_or_default())
    };
    Some(format!(
        "lengths {} (got) vs {} (want); first difference at byte {at}: got {} want {}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    ))
}

/// When a `START` was sent and when its answer was seen: the daemon's start
/// time `t0` lies in between.
#[derive(Debug, Clone, Copy)]
pub struct StartWindow {
    /// Just before the request was queued.
    pub sent: Instant,
    /// Just after the answer was seen.
    pub answered: Instant,
}

/// Sends PCM_START and times it.
pub fn start_timed(snd: &mut SndDriver, stream: u32) -> snd::Result<(Status, StartWindow)> {
    let sent = Instant::now();
    let status = snd.start(stream)?;
    let answered = Instant::now();
    Ok((status, StartWindow { sent, answered }))
}

/// How a stream's completions kept to the schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pacing {
    /// Completions checked.
    pub count: usize,
    /// The median of how late completions were seen after their due time
    /// (measured from the end of the start window, so it includes the START
    /// round trip).
    pub median_late: Duration,
    /// The latest any completion was seen after its due time.
    pub max_late: Duration,
    /// How late each completion was seen, in order.
    pub lateness: Vec<Duration>,
}

impl Pacing {
    /// One line: count, median and worst lateness.
    pub fn summary(&self) -> String {
        format!(
            "{} completions, lateness median {:?}, max {:?}",
            self.count, self.median_late, self.max_late
        )
    }
}

/// How late completions may be seen after their due time.
///
/// Lateness is what a loaded machine produces, on the daemon's side or on the
/// test's (a completion is stamped when this thread gets to see it), so it is
/// bounded twice: the median says whether the stream keeps to its schedule
/// (a stream running a period behind has a median of a period), and `worst`
/// catches a stall (a daemon blocked on a host device) without failing on the
/// odd scheduling hiccup of a busy 2-core machine. Early completions are not
/// tolerated at all (see [`EARLY_SLACK`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance {
    /// Largest median lateness.
    pub typical: Duration,
    /// Largest lateness of any completion.
    pub worst: Duration,
}

impl Tolerance {
    /// 5 ms typical (half of a 10 ms period), 250 ms worst.
    pub const DEFAULT: Tolerance = Tolerance {
        typical: Duration::from_millis(5),
        worst: Duration::from_millis(250),
    };
}

/// Checks that `completions` (one stream's, in the order seen) kept to the
/// schedule of a stream started in `window`: completion `k` is due when the
/// payload of completions `0..=k` has played. No completion may be seen before
/// that from `window.sent` (less [`EARLY_SLACK`]): completing in a burst
/// fails. Lateness, from `window.answered`, is bounded by `tolerance`.
/// Completions must also come back in the order they were queued. Assumes the
/// stream never ran dry.
pub fn check_pacing(
    completions: &[IoCompletion],
    geometry: &Geometry,
    window: StartWindow,
    tolerance: Tolerance,
) -> Result<Pacing> {
    let mut played = 0u64;
    let mut pacing = Pacing::default();
    let mut errors = Vec::new();
    for (k, c) in completions.iter().enumerate() {
        if let Some(prev) = k.checked_sub(1).and_then(|p| completions.get(p)) {
            if c.submitted_at < prev.submitted_at {
                errors.push(format!("completion {k} came back before an older buffer"));
            }
        }
        played += c.payload_len as u64;
        let due = geometry.duration_of(played);
        let earliest = (window.sent + due).checked_sub(EARLY_SLACK);
        if earliest.is_some_and(|e| c.completed_at < e) {
            let early = (window.sent + due).duration_since(c.completed_at);
            errors.push(format!(
                "completion {k} seen {early:?} before it was due ({due:?} after START)"
            ));
        }
        let late = c
            .completed_at
            .saturating_duration_since(window.answered + due);
        if late > tolerance.worst {
            errors.push(format!(
                "completion {k} seen {late:?} after it was due ({due:?} after START; {:?} allowed)",
                tolerance.worst
            ));
        }
        pacing.max_late = pacing.max_late.max(late);
        pacing.lateness.push(late);
        pacing.count += 1;
    }
    let mut sorted = pacing.lateness.clone();
    sorted.sort();
    pacing.median_late = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    if pacing.median_late > tolerance.typical {
        errors.push(format!(
            "completions are seen {:?} late in the median ({:?} allowed): \
             the stream runs behind its schedule",
            pacing.median_late, tolerance.typical
        ));
    }
    if errors.is_empty() {
        Ok(pacing)
    } else {
        let n = errors.len();
        errors.truncate(10);
        let ms: Vec<String> = pacing
            .lateness
            .iter()
            .map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0))
            .collect();
        Err(Error::Check(format!(
            "{n} pacing violations, the first ones:\n  {}\nlateness of each completion (ms): {}",
            errors.join("\n  "),
            ms.join(" ")
        )))
    }
}

/// Checks that every completion has one of the `allowed` statuses and no
/// device-side violation (a write outside the writable area).
pub fn check_statuses(completions: &[IoCompletion], allowed: &[Status]) -> Result<()> {
    for (k, c) in completions.iter().enumerate() {
        if !allowed.contains(&c.status) {
            return Err(Error::Check(format!(
                "completion {k} has status {}, expected one of {allowed:?}",
                c.status
            )));
        }
        if let Some(v) = &c.violation {
            return Err(Error::Check(format!("completion {k}: {v}")));
        }
    }
    Ok(())
}

/// Collects completions on several I/O queues at once, until queue `i` has
/// `wants[i].1` of them or `timeout` expires (then it fails). Queues are
/// polled in turn in 1 ms slices, so a completion's timestamp is at most
/// about a millisecond late.
pub fn collect_io(
    snd: &mut SndDriver,
    wants: &[(Queue, usize)],
    timeout: Duration,
) -> Result<Vec<Vec<IoCompletion>>> {
    let deadline = Instant::now() + timeout;
    let mut out: Vec<Vec<IoCompletion>> = wants.iter().map(|_| Vec::new()).collect();
    let slice = if wants.len() > 1 {
        Duration::from_millis(1)
    } else {
        timeout
    };
    loop {
        let mut done = true;
        for ((queue, want), got) in wants.iter().zip(out.iter_mut()) {
            if got.len() >= *want {
                continue;
            }
            done = false;
            let left = deadline.saturating_duration_since(Instant::now());
            got.extend(snd.wait_io(*queue, slice.min(left))?);
        }
        if done {
            return Ok(out);
        }
        if Instant::now() >= deadline {
            let counts: Vec<String> = wants
                .iter()
                .zip(&out)
                .map(|((q, want), got)| format!("{q}: {}/{want}", got.len()))
                .collect();
            return Err(Error::Check(format!(
                "completions missing after {timeout:?}: {}",
                counts.join(", ")
            )));
        }
    }
}

/// Plays `periods` on output `stream` the way Linux does: queues the first
/// `in_flight` buffers, sends START (once the device has taken them, see
/// [`wait_drained`]), then queues the next buffer each time one completes.
/// `on_completion(k)` runs right after completion `k` was seen (and before
/// the next buffer is queued). Returns the completions in the order seen and
/// the START window. The stream must be prepared.
pub fn play_streaming(
    snd: &mut SndDriver,
    stream: u32,
    periods: &[Vec<u8>],
    in_flight: usize,
    timeout: Duration,
    mut on_completion: impl FnMut(usize),
) -> Result<(Vec<IoCompletion>, StartWindow)> {
    let mut next = 0;
    while next < periods.len().min(in_flight.max(1)) {
        snd.tx(stream, &periods[next], &[])?;
        next += 1;
    }
    wait_drained(snd, Queue::Tx, timeout)?;
    let (status, window) = start_timed(snd, stream)?;
    if status != Status::Ok {
        return Err(Error::Check(format!("START answered {status}")));
    }
    let deadline = Instant::now() + timeout;
    let mut done = Vec::with_capacity(periods.len());
    while done.len() < periods.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = snd.wait_io(Queue::Tx, left)?;
        if got.is_empty() {
            return Err(Error::Check(format!(
                "only {} of {} playback buffers completed within {timeout:?}",
                done.len(),
                periods.len()
            )));
        }
        for c in got {
            on_completion(done.len());
            done.push(c);
            if let Some(p) = periods.get(next) {
                snd.tx(stream, p, &[])?;
                next += 1;
            }
        }
    }
    Ok((done, window))
}

/// Polls `cond` every 2 ms until it holds; fails after `timeout`, or as soon
/// as `cond` fails.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Check(format!(
                "timed out after {timeout:?} waiting for {what}"
            )));
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the device has taken every buffer made available on `queue`.
///
/// The daemon serves all queues from one thread and the virtio spec does not
/// order queues against each other, so a daemon may handle a START before the
/// buffers queued (and kicked) just ahead of it; `tests/pad.rs` tests that it
/// does not (`tx_buffers_queued_before_start_start_playing_at_once`). Tests
/// about something else call this before START, so that their pacing checks
/// do not depend on it. With `VIRTIO_RING_F_EVENT_IDX` the device publishes,
/// each time it finishes draining a queue, the next avail index it will read
/// (`avail_event`): once that equals the driver's `avail.idx`, every buffer
/// was popped and handed to its stream. Needs EVENT_IDX (the default of
/// [`crate::ConnectOptions`]).
pub fn wait_drained(snd: &mut SndDriver, queue: Queue, timeout: Duration) -> Result<()> {
    if !snd.dev().queue(queue).event_idx() {
        return Err(Error::Check(
            "wait_drained needs VIRTIO_RING_F_EVENT_IDX".to_owned(),
        ));
    }
    wait_for(&format!("the device to drain {queue}"), timeout, || {
        let q = snd.dev().queue(queue);
        Ok(q.avail_event().map_err(snd::Error::from)? == q.avail_idx())
    })
}

/// Whether jack `jack` reports `connected` in JACK_INFO.
pub fn jack_connected(snd: &mut SndDriver, jack: u32) -> Result<bool> {
    let info = snd.jack_info(jack, 1)?;
    match info.first() {
        Some(j) => Ok(j.connected != 0),
        None => Err(Error::Check(format!("JACK_INFO for jack {jack} is empty"))),
    }
}

/// Waits until JACK_INFO says jack `jack` is (or is not) connected.
pub fn wait_jack(snd: &mut SndDriver, jack: u32, connected: bool, timeout: Duration) -> Result<()> {
    let what = format!(
        "jack {jack} to be {}",
        if connected {
            "connected"
        } else {
            "disconnected"
        }
    );
    wait_for(&what, timeout, || {
        Ok(jack_connected(snd, jack)? == connected)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn geometry_of_common_streams() {
        let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
        assert_eq!((g.frame_bytes(), g.period_bytes()), (4, 1920));
        assert_eq!(g.buffer_bytes(), 7680);
        assert_eq!(g.period(), Duration::from_millis(10));
        let g = Geometry::new(PcmFormat::S32, PcmRate::R44100, 1);
        assert_eq!(g.period_bytes(), 1764);
        assert_eq!(g.duration_of(176_400 * 60), Duration::from_secs(60));
        let g = Geometry::new(PcmFormat::Float, PcmRate::R96000, 8);
        assert_eq!(g.period_bytes(), 30720);
    }

    /// Completions of `n` periods of `g`, seen at `t0 + at(k)`.
    fn seen(
        g: &Geometry,
        t0: Instant,
        n: usize,
        at: impl Fn(usize) -> Duration,
    ) -> Vec<IoCompletion> {
        (0..n)
            .map(|k| IoCompletion {
                queue: Queue::Tx,
                head: k as u16,
                stream_id: 0,
                submitted_at: t0,
                completed_at: t0 + at(k),
                used_len: 8,
                status: Status::Ok,
                latency_bytes: 0,
                data: Vec::new(),
                writable: Vec::new(),
                payload_len: g.period_bytes(),
                violation: None,
            })
            .collect()
    }

    #[test]
    fn pacing_accepts_the_schedule_and_catches_bursts_lag_and_stalls() {
        let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
        let p = g.period();
        let t0 = Instant::now();
        let window = StartWindow {
            sent: t0,
            answered: t0 + Duration::from_micros(200),
        };
        let tol = Tolerance::DEFAULT;
        let due = |k: usize| p * (k as u32 + 1);
        // On time, with a little noise and one hiccup.
        let ok = seen(&g, t0, 20, |k| {
            due(k) + Duration::from_micros(300) + if k == 7 { p * 5 } else { Duration::ZERO }
        });
        let pacing = check_pacing(&ok, &g, window, tol).unwrap();
        assert_eq!(pacing.count, 20);
        assert!(pacing.max_late >= p * 5);
        // A burst: everything at once, one period after START.
        let burst = seen(&g, t0, 20, |_| p);
        let e = check_pacing(&burst, &g, window, tol)
            .unwrap_err()
            .to_string();
        assert!(e.contains("before it was due"), "{e}");
        // A period behind throughout.
        let behind = seen(&g, t0, 20, |k| due(k) + p);
        let e = check_pacing(&behind, &g, window, tol)
            .unwrap_err()
            .to_string();
        assert!(e.contains("median"), "{e}");
        // A stall of half a second in the middle.
        let stalled = seen(&g, t0, 20, |k| due(k).max(Duration::from_millis(600)));
        let e = check_pacing(&stalled, &g, window, tol)
            .unwrap_err()
            .to_string();
        assert!(e.contains("allowed"), "{e}");
    }

    #[test]
    fn patterns_are_distinct_and_self_describing() {
        assert_eq!(noise(1000, 1).len(), 1000);
        assert_ne!(noise(64, 1), noise(64, 2));
        assert_eq!(noise(64, 7), noise(64, 7));
        let w = word_counter(5, 12);
        assert_eq!(words(&w), vec![5, 6, 7]);
        assert!(difference(&w, &w).is_none());
        let d = difference(&w[..8], &w).unwrap();
        assert!(d.contains("lengths 8"), "{d}");
    }
}
