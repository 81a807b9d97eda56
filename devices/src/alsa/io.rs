//! An open ALSA stream's I/O thread.
//!
//! The lane that serves a guest stream never calls into ALSA: an open of a
//! sound server's PCM takes tens of milliseconds, and any call may hang in
//! a plugin. Each open stream has a thread of its own (`alsa-io`) that
//! opens the PCM, moves frames between it and a ring ([`rtrb`], wait-free,
//! allocated once at the open) and closes it; the lane only pushes and
//! pops frames and reads what the thread last saw of the PCM (a [`Snap`]
//! under a lock held to copy it).
//!
//! - **Playback.** The lane pushes a guest buffer's frames into the ring;
//!   the thread writes them to the PCM as far as it has room and, when it
//!   has none, sleeps in `poll` on the PCM's descriptors (woken once a
//!   period of room is free: `avail_min`). With the ring empty it sleeps
//!   on its eventfd, which the lane rings after a push if the thread said
//!   it would sleep ([`Doorbell`]), and at least once a PCM period, to read
//!   the PCM's position again. The position the lane sees counts the
//!   guest's frames only (the PCM's cushion of silence is the thread's
//!   business): frames pushed, and of them played, as of the thread's last
//!   look and carried forward since by the thread's delay-locked loop on
//!   the PCM's clock ([`ClockLoop`], `dll.rs`; at the nominal rate before
//!   its first reading; at most two of the PCM's periods, never past what
//!   the PCM was given).
//! - **Capture.** The thread reads what the PCM captured into the ring
//!   when a period is there (`poll` on the PCM's descriptors); the lane
//!   pops. After each (re)start of the PCM the lane reads nothing until
//!   the ring holds its read and the cushion.
//! - **Pause** (`set_paused`, and playback's `play_out`): a [`Hold`] the
//!   thread applies at its next wake, which the call rings at once.
//! - **Hangs.** The thread marks when its current call into ALSA started.
//!   The lane, at each of its calls, takes a call older than
//!   [`CALL_BOUND_NS`] (an open older than [`OPEN_BOUND_NS`]) for a
//!   device gone: the device is detached (its monitor probes it again
//!   later) and the stream's endpoint is closed; the thread exits if the
//!   call ever returns.
//! - **Close.** Dropping the lane's end asks the thread to finish: a
//!   playback thread first writes what the ring still holds (the guest's
//!   last buffers, already completed) as the PCM takes it, within the
//!   buffer's length, then the PCM is drained on the device's monitor
//!   thread ([`super::Stream`]'s drop).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use alsa::poll::Descriptors;
use alsa::Direction;
use rtrb::{Consumer, Producer, RingBuffer};

use super::{
    buffer_frames, clock_reading, frame_bytes, lock, AlsaSink, Hold, Opener, Shared, Stream,
};
use crate::dll::Dll;
use crate::eventfd::EventFd;
use crate::{
    CaptureSource, Clock, DeviceError, DeviceThread, Fill, Format, PlaybackSink, Position,
    StreamParams,
};

/// A call into ALSA older than this is taken for a hang.
pub const CALL_BOUND_NS: u64 = 100_000_000;

/// An open older than this is taken for a hang (an open may connect to a
/// sound server).
pub const OPEN_BOUND_NS: u64 = 2_000_000_000;

/// How long a closing playback stream may still write what its ring
/// holds, beyond the buffer's length.
const CLOSE_SLACK_NS: u64 = 100_000_000;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

fn frames_in(ns: u64, rate: u32) -> u64 {
    u64::try_from(u128::from(ns) * u128::from(rate) / 1_000_000_000).unwrap_or(u64::MAX)
}

fn ns_for(frames: u64, rate: u32) -> u64 {
    u64::try_from(u128::from(frames) * 1_000_000_000 / u128::from(rate.max(1))).unwrap_or(u64::MAX)
}

/// What the thread last saw of its PCM.
#[derive(Clone, Copy, Debug, Default)]
struct Snap {
    /// The PCM is open (the numbers below mean something).
    open: bool,
    /// The open failed, or the PCM failed since: the stream's endpoint is
    /// done.
    failed: bool,
    /// Frames the thread moved: playback, taken from the ring (written to
    /// the PCM, or dropped); capture, put into it.
    moved: u64,
    /// Playback: of `moved`, the frames played.
    played: u64,
    /// Playback: of `pcm_frames`, the silence still ahead of the guest's
    /// frames (the cushion after a (re)start): it plays before any of them.
    silence_ahead: u64,
    /// Frames in the PCM: playback, queued, silence included; capture,
    /// captured and not yet read.
    pcm_frames: u64,
    /// When the thread read the above (`CLOCK_MONOTONIC`, ns).
    at: u64,
    /// The PCM runs: its position moves with time.
    running: bool,
    /// The cushion the stream keeps ([`Position::keep`]), the PCM's
    /// buffer and period, in frames.
    keep: u64,
    buffer: u64,
    period: u64,
    xruns: u64,
    /// Capture: how often the PCM started over (an overrun, a drop): the
    /// lane waits for a new cushion each time.
    restarts: u64,
    /// The PCM's clock as last read, and the loop's estimate of it.
    clock: Option<ClockSeen>,
    /// The PCM's rate against `CLOCK_MONOTONIC`, once the loop settled.
    rate_ppm: Option<f64>,
}

/// One reading of the PCM's count of frames (playback: consumed, silence
/// included; capture: produced) at `at` (`snd_pcm_status`), with the
/// loop's estimate of the count then and its rate.
#[derive(Clone, Copy, Debug, Default)]
struct ClockSeen {
    count: u64,
    at: u64,
    estimate: f64,
    rate: f64,
}

impl ClockSeen {
    /// Frames the PCM has moved since the reading, by the loop's estimate
    /// (none if the estimate is behind the reading itself).
    fn since(&self, now: u64) -> u64 {
        let dt = now.saturating_sub(self.at) as f64 * 1e-9;
        let ahead = self.estimate + self.rate * dt - self.count as f64;
        if ahead.is_finite() && ahead > 0.0 {
            ahead as u64
        } else {
            0
        }
    }
}

/// The loop on a PCM's clock, as a thread keeps it.
struct ClockLoop {
    dll: Dll,
    xruns: u64,
    restarts: u64,
}

impl ClockLoop {
    fn new(rate: u32) -> ClockLoop {
        ClockLoop {
            dll: Dll::new(rate),
            xruns: 0,
            restarts: 0,
        }
    }

    /// Takes a reading of `pcm`, whose count is `base` plus (playback)
    /// less (capture) its delay. A PCM that does not run, or started over
    /// (an xrun, a restart), re-anchors the loop.
    fn read(
        &mut self,
        pcm: &alsa::PCM,
        running: bool,
        base: u64,
        dir: Direction,
        xruns: u64,
        restarts: u64,
    ) -> Option<ClockSeen> {
        if !running || xruns != self.xruns || restarts != self.restarts {
            self.xruns = xruns;
            self.restarts = restarts;
            self.dll.restart();
        }
        if !running {
            return None;
        }
        let (delay, at) = clock_reading(pcm, now_ns())?;
        let delay = u64::try_from(delay).unwrap_or(0);
        let count = match dir {
            Direction::Playback => base.saturating_sub(delay),
            Direction::Capture => base.saturating_add(delay),
        };
        self.dll.feed(count, at);
        Some(ClockSeen {
            count,
            at,
            estimate: self.dll.count_at(at).unwrap_or(count as f64),
            rate: self.dll.rate(),
        })
    }
}

#[cfg(loom)]
use loom::sync::atomic::AtomicU64 as DoorbellState;
#[cfg(not(loom))]
use std::sync::atomic::AtomicU64 as DoorbellState;

/// How the thread sleeps on its eventfd without a lost wake-up and without
/// the lane writing the eventfd at every push. One word: the lane's rings
/// counted (twice each), and a flag (bit 0) the thread sets before it
/// sleeps. Every change is a read-modify-write of that word, so they are in
/// one order: a ring before the thread set its flag changed the count the
/// thread saw when it last looked for work (it does not sleep), one after
/// finds the flag (it rings the eventfd). Only the thread clears the flag.
pub(super) struct Doorbell {
    state: DoorbellState,
}

impl Doorbell {
    pub(super) fn new() -> Doorbell {
        Doorbell {
            state: DoorbellState::new(0),
        }
    }

    /// The thread, awake, before it looks for work: clears its flag;
    /// returns the mark to give [`may_sleep`](Self::may_sleep).
    pub(super) fn awake(&self) -> u64 {
        self.state.fetch_and(!1, Ordering::AcqRel) >> 1
    }

    /// The thread, about to sleep, with the mark from before its last look
    /// for work: `false` if the lane made work since (it must look again).
    pub(super) fn may_sleep(&self, mark: u64) -> bool {
        let seen = self.state.fetch_or(1, Ordering::AcqRel);
        if seen >> 1 != mark {
            self.state.fetch_and(!1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// The lane, after it made work: whether it must ring the eventfd.
    pub(super) fn must_ring(&self) -> bool {
        self.state.fetch_add(2, Ordering::AcqRel) & 1 != 0
    }
}

/// What one pass of the thread saw (see [`Snap`] for each).
struct Seen {
    moved: u64,
    played: u64,
    silence_ahead: u64,
    pcm_frames: u64,
    running: bool,
    xruns: u64,
    restarts: u64,
    failed: bool,
    clock: Option<ClockSeen>,
    rate_ppm: Option<f64>,
}

/// What the lane's end and the thread share.
struct Link {
    snap: Mutex<Snap>,
    wake: EventFd,
    doorbell: Doorbell,
    closing: AtomicBool,
    /// What the lane asked last, a [`Hold`].
    hold: AtomicU8,
    /// When the thread's current call into ALSA started (0: none).
    call_since: AtomicU64,
    /// The lane took a call for a hang (reported once).
    hung: AtomicBool,
}

impl Link {
    fn new() -> Result<Link, DeviceError> {
        Ok(Link {
            snap: Mutex::new(Snap::default()),
            wake: EventFd::new().map_err(DeviceError::Io)?,
            doorbell: Doorbell::new(),
            closing: AtomicBool::new(false),
            hold: AtomicU8::new(Hold::Run as u8),
            call_since: AtomicU64::new(0),
            hung: AtomicBool::new(false),
        })
    }

    fn snap(&self) -> Snap {
        *lock(&self.snap)
    }

    fn publish(&self, f: impl FnOnce(&mut Snap)) {
        f(&mut lock(&self.snap));
    }

    /// Publishes what one pass of the thread saw, as of now.
    fn saw(&self, seen: Seen) {
        let at = now_ns();
        self.publish(|snap| {
            snap.moved = seen.moved;
            snap.played = seen.played;
            snap.silence_ahead = seen.silence_ahead;
            snap.pcm_frames = seen.pcm_frames;
            snap.running = seen.running;
            snap.xruns = seen.xruns;
            snap.restarts = seen.restarts;
            snap.clock = seen.clock;
            snap.rate_ppm = seen.rate_ppm;
            snap.at = at;
            snap.failed |= seen.failed;
        });
    }

    fn calls(&self, now: u64) {
        self.call_since.store(now.max(1), Ordering::SeqCst);
    }

    fn returned(&self) {
        self.call_since.store(0, Ordering::SeqCst);
    }
}

/// The lane's end of either direction: the link, and who to tell of a hang.
struct End {
    link: Arc<Link>,
    shared: Arc<Shared>,
    generation: u64,
    rate: u32,
    frame_bytes: usize,
    /// What the lane asked last.
    hold: Hold,
}

impl End {
    /// The snapshot, or `Gone` if the stream's PCM failed or hangs.
    fn check(&self) -> Result<Snap, DeviceError> {
        let snap = self.link.snap();
        if snap.failed || self.link.hung.load(Ordering::SeqCst) {
            return Err(DeviceError::Gone);
        }
        let since = self.link.call_since.load(Ordering::SeqCst);
        let bound = if snap.open {
            CALL_BOUND_NS
        } else {
            OPEN_BOUND_NS
        };
        let age = now_ns().saturating_sub(since);
        if since != 0 && age > bound && !self.link.hung.swap(true, Ordering::SeqCst) {
            log::warn!(
                "{}: a call into the PCM has not returned for {} ms: taken for gone",
                self.shared.name,
                age / 1_000_000
            );
            self.shared.report_gone(self.generation);
            return Err(DeviceError::Gone);
        }
        Ok(snap)
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), DeviceError> {
        self.set_hold(if paused { Hold::Keep } else { Hold::Run })
    }

    fn set_hold(&mut self, hold: Hold) -> Result<(), DeviceError> {
        self.check()?;
        if hold != self.hold {
            self.hold = hold;
            self.link.hold.store(hold as u8, Ordering::SeqCst);
            self.link.wake.signal();
        }
        Ok(())
    }

    fn bytes(&self, frames: u64) -> u32 {
        u32::try_from(frames.saturating_mul(self.frame_bytes as u64)).unwrap_or(u32::MAX)
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.link.closing.store(true, Ordering::SeqCst);
        self.link.wake.signal();
    }
}

/// Starts a stream's I/O thread, which runs `run`.
fn start(
    opener: &Opener,
    params: &StreamParams,
    run: impl FnOnce(Arc<Link>) + Send + 'static,
) -> Result<End, DeviceError> {
    let link = Arc::new(Link::new()?);
    let theirs = Arc::clone(&link);
    thread::Builder::new()
        .name("alsa-io".to_owned())
        .spawn(move || {
            crate::thread_started(DeviceThread::AlsaIo);
            run(theirs);
        })
        .map_err(DeviceError::Io)?;
    Ok(End {
        link,
        shared: Arc::clone(&opener.shared),
        generation: opener.shared.generation.load(Ordering::SeqCst),
        rate: params.rate,
        frame_bytes: frame_bytes(params)?,
        hold: Hold::Run,
    })
}

/// A ring as large as the PCM's buffer is asked to be, in whole frames.
fn ring(params: &StreamParams) -> Result<(Producer<u8>, Consumer<u8>), DeviceError> {
    let frames = usize::try_from(buffer_frames(params)?).unwrap_or(0);
    let bytes = frames.saturating_mul(frame_bytes(params)?);
    Ok(RingBuffer::new(bytes.max(1)))
}

/// Opens the PCM on the thread, publishing what the lane must know of it;
/// `None` (published as failed) if it did not open.
fn open(opener: &Opener, params: &StreamParams, dir: Direction, link: &Link) -> Option<Stream> {
    link.calls(now_ns());
    let opened = opener.open(params, dir);
    link.returned();
    match opened {
        Ok(s) => {
            link.publish(|snap| {
                snap.open = true;
                snap.keep = s.cushion as u64;
                snap.buffer = s.buffer as u64;
                snap.period = s.period as u64;
                snap.at = now_ns();
            });
            Some(s)
        }
        Err(e) => {
            log::debug!("{}: open failed: {e}", opener.shared.name);
            link.publish(|snap| snap.failed = true);
            None
        }
    }
}

/// Room for the PCM's poll descriptors and the link's eventfd, allocated
/// once per stream.
fn pollfds(pcm: &alsa::PCM) -> Vec<libc::pollfd> {
    let none = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    vec![none; pcm.count().saturating_add(1)]
}

/// Sleeps in `ppoll` on the PCM's descriptors (`fds[..pcm]`, if `pcm` is
/// not 0) and the link's eventfd, for at most `timeout_ns`; drains the
/// eventfd. Returns whether the PCM's descriptors said it can move (or
/// could not tell).
fn sleep(
    pcm: &alsa::PCM,
    fds: &mut [libc::pollfd],
    with_pcm: bool,
    link: &Link,
    timeout_ns: u64,
) -> bool {
    let count = if with_pcm {
        pcm.fill(fds).unwrap_or(0).min(fds.len().saturating_sub(1))
    } else {
        0
    };
    let Some(own) = fds.get_mut(count) else {
        return false;
    };
    *own = libc::pollfd {
        fd: link.wake.raw(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout_ns / 1_000_000_000).unwrap_or(1),
        tv_nsec: libc::c_long::try_from(timeout_ns % 1_000_000_000).unwrap_or(0),
    };
    let n = count.saturating_add(1);
    // SAFETY: `fds` holds at least `n` initialized pollfds for the call;
    // `ts` is a valid timespec; no signal mask is passed.
    unsafe { libc::ppoll(fds.as_mut_ptr(), n as libc::nfds_t, &ts, std::ptr::null()) };
    if fds.get(count).is_some_and(|f| f.revents != 0) {
        link.wake.drain();
    }
    count > 0 && pcm.revents(fds.get(..count).unwrap_or_default()).is_ok()
}

// ---------------------------------------------------------------- playback

/// The lane's end of a playback stream.
pub(super) struct ThreadedSink {
    end: End,
    ring: Producer<u8>,
    /// Frames pushed since the open; of them, dropped for want of room.
    pushed: u64,
    dropped: u64,
    /// The ring's size, in frames.
    capacity: u64,
}

/// Starts a playback stream's thread: the PCM opens there.
pub(super) fn playback(opener: Opener, params: StreamParams) -> Result<ThreadedSink, DeviceError> {
    let (producer, consumer) = ring(&params)?;
    let fb = frame_bytes(&params)?;
    let capacity = (producer.buffer().capacity() / fb) as u64;
    let theirs = opener.clone();
    let end = start(&opener, &params, move |link| {
        run_playback(&theirs, &params, consumer, &link);
    })?;
    Ok(ThreadedSink {
        end,
        ring: producer,
        pushed: 0,
        dropped: 0,
        capacity,
    })
}

impl ThreadedSink {
    fn in_ring(&self) -> u64 {
        let free = (self.ring.slots() / self.end.frame_bytes) as u64;
        self.capacity.saturating_sub(free)
    }

    /// What the PCM has played since `snap`, carried forward by the loop
    /// on its clock (at the nominal rate until it has one; at most two of
    /// its periods), and of that the guest's frames (the silence ahead of
    /// them plays first).
    fn since(&self, snap: &Snap) -> (u64, u64) {
        if !snap.running {
            return (0, 0);
        }
        let now = now_ns();
        let ahead = match snap.clock {
            Some(c) => c.since(now),
            None => frames_in(now.saturating_sub(snap.at), self.end.rate),
        }
        .min(snap.period.saturating_mul(2));
        (ahead, ahead.saturating_sub(snap.silence_ahead))
    }
}

impl PlaybackSink for ThreadedSink {
    fn clock(&self) -> Clock {
        Clock::Device
    }

    fn write(&mut self, frames: &[u8]) -> Result<(), DeviceError> {
        self.end.check()?;
        let fb = self.end.frame_bytes;
        let whole = frames.get(..frames.len() / fb * fb).unwrap_or_default();
        let (done, rest) = self.ring.push_partial_slice(whole);
        self.pushed = self.pushed.saturating_add((done.len() / fb) as u64);
        let lost = (rest.len() / fb) as u64;
        if lost > 0 {
            self.pushed = self.pushed.saturating_add(lost);
            self.dropped = self.dropped.saturating_add(lost);
        }
        if self.end.link.doorbell.must_ring() {
            self.end.link.wake.signal();
        }
        Ok(())
    }

    fn latency_bytes(&self) -> u32 {
        let Ok(snap) = self.end.check() else {
            return 0;
        };
        let pcm = snap.pcm_frames.saturating_sub(self.since(&snap).0);
        self.end.bytes(self.in_ring().saturating_add(pcm))
    }

    fn xruns(&self) -> u64 {
        self.end.link.snap().xruns
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), DeviceError> {
        self.end.set_paused(paused)
    }

    fn play_out(&mut self) -> Result<(), DeviceError> {
        self.end.set_hold(Hold::PlayOut)
    }

    fn rate_ppm(&self) -> Option<f64> {
        self.end.link.snap().rate_ppm
    }

    fn fill_frames(&self) -> Option<Fill> {
        let snap = self.end.check().ok()?;
        if !snap.open || !snap.running {
            return None;
        }
        let pcm = snap.pcm_frames.saturating_sub(self.since(&snap).0);
        let frames = self.in_ring().saturating_add(pcm);
        Some(Fill {
            frames: i64::try_from(frames).unwrap_or(i64::MAX),
            room: i64::try_from(snap.buffer.saturating_sub(frames)).unwrap_or(0),
        })
    }

    /// The guest's frames only: pushed, and of them played (the PCM's
    /// silence is not counted; frames dropped count as played at once).
    fn position(&self) -> Option<Position> {
        let snap = self.end.check().ok()?;
        let played = snap
            .played
            .saturating_add(self.since(&snap).1)
            .min(snap.moved)
            .saturating_add(self.dropped)
            .min(self.pushed);
        Some(Position {
            taken: self.pushed,
            played,
            keep: snap.keep,
        })
    }
}

fn run_playback(opener: &Opener, params: &StreamParams, mut ring: Consumer<u8>, link: &Link) {
    let Some(stream) = open(opener, params, Direction::Playback, link) else {
        return;
    };
    let fb = stream.frame_bytes.max(1);
    let period_ns = ns_for(stream.period as u64, params.rate).max(1_000_000);
    let buffer_ns = ns_for(stream.buffer as u64, params.rate);
    let mut sink = AlsaSink::new(stream, params.format);
    let mut fds = pollfds(&sink.stream.pcm);
    let mut moved: u64 = 0;
    let mut hold = Hold::Run;
    let mut close_by = None;
    let mut clock = ClockLoop::new(params.rate);
    loop {
        let mark = link.doorbell.awake();
        let now = now_ns();
        if close_by.is_none() && link.closing.load(Ordering::SeqCst) {
            close_by = Some(now.saturating_add(buffer_ns).saturating_add(CLOSE_SLACK_NS));
        }
        link.calls(now);
        let mut full = false;
        let result = (|| {
            // Closing, it writes out what the ring still holds.
            let want = match close_by {
                None => Hold::from_u8(link.hold.load(Ordering::SeqCst)),
                Some(_) => Hold::Run,
            };
            if want != hold {
                sink.stream.set_hold(want)?;
                hold = want;
            }
            if hold == Hold::Run {
                full = move_out(&mut sink, &mut ring, fb, &mut moved)?;
            }
            Ok::<_, DeviceError>(())
        })();
        let paused = hold != Hold::Run;
        let seen = sink.guest_played();
        let running = !paused && sink.stream.pcm.state() == alsa::pcm::State::Running;
        let s = &sink.stream;
        let written = s.taken.saturating_sub(s.lost_frames);
        let reading = clock.read(&s.pcm, running, written, Direction::Playback, s.xruns, 0);
        link.returned();
        let failed = result.is_err() || seen.is_none();
        let (played, queued, silence_ahead) = seen.unwrap_or_default();
        link.saw(Seen {
            moved,
            played,
            silence_ahead,
            pcm_frames: queued,
            running,
            xruns: sink.stream.xruns,
            restarts: 0,
            failed,
            clock: reading,
            rate_ppm: clock.dll.rate_ppm(),
        });
        if failed {
            return;
        }
        let has = ring.slots() >= fb;
        if let Some(by) = close_by {
            if !has || paused || now_ns() >= by {
                break;
            }
        }
        let with_pcm = has && full && !paused;
        if !with_pcm && !paused && close_by.is_none() && !link.doorbell.may_sleep(mark) {
            continue;
        }
        let timeout = if paused {
            period_ns.saturating_mul(10)
        } else {
            period_ns
        };
        sleep(&sink.stream.pcm, &mut fds, with_pcm, link, timeout);
    }
    // The PCM drains on the device's monitor thread.
    drop(sink);
}

/// Moves what the ring holds into the PCM as far as it has room; `true`
/// if some is left for want of room.
fn move_out(
    sink: &mut AlsaSink,
    ring: &mut Consumer<u8>,
    fb: usize,
    moved: &mut u64,
) -> Result<bool, DeviceError> {
    let have = ring.slots() / fb * fb;
    if have == 0 {
        return Ok(false);
    }
    sink.prime()?;
    // An error (an xrun) is the write's to recover: a period is tried.
    let room = sink
        .stream
        .pcm
        .avail_update()
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(sink.stream.period);
    let n = have.min(room.saturating_mul(fb));
    if n == 0 {
        return Ok(true);
    }
    let Ok(chunk) = ring.read_chunk(n) else {
        return Ok(true);
    };
    let (a, b) = chunk.as_slices();
    sink.write(a)?;
    if !b.is_empty() {
        sink.write(b)?;
    }
    chunk.commit_all();
    *moved = moved.saturating_add((n / fb) as u64);
    Ok(n < have)
}

// ----------------------------------------------------------------- capture

/// The lane's end of a capture stream.
pub(super) struct ThreadedSource {
    end: End,
    ring: Consumer<u8>,
    format: Format,
    /// Whether the ring held a read and the cushion since the PCM last
    /// (re)started (`restarts` seen).
    primed: bool,
    restarts: u64,
}

/// Starts a capture stream's thread: the PCM opens there.
pub(super) fn capture(opener: Opener, params: StreamParams) -> Result<ThreadedSource, DeviceError> {
    let (producer, consumer) = ring(&params)?;
    let theirs = opener.clone();
    let end = start(&opener, &params, move |link| {
        run_capture(&theirs, &params, producer, &link);
    })?;
    Ok(ThreadedSource {
        end,
        ring: consumer,
        format: params.format,
        primed: false,
        restarts: 0,
    })
}

impl ThreadedSource {
    fn in_ring(&self) -> u64 {
        (self.ring.slots() / self.end.frame_bytes) as u64
    }

    /// Captured frames not in the ring yet: what the thread saw, and what
    /// the PCM has captured since, by the loop on its clock (at the
    /// nominal rate until it has one; at most two of its periods).
    fn in_pcm(&self, snap: &Snap) -> u64 {
        let now = now_ns();
        let since = match (snap.running, snap.clock) {
            (false, _) => 0,
            (true, Some(c)) => c.since(now),
            (true, None) => frames_in(now.saturating_sub(snap.at), self.end.rate),
        }
        .min(snap.period.saturating_mul(2));
        snap.pcm_frames.saturating_add(since)
    }

    fn read_available(&mut self, buf: &mut [u8], more: usize) -> Result<usize, DeviceError> {
        let snap = self.end.check()?;
        if self.end.hold != Hold::Run {
            self.end.set_paused(false)?;
        }
        if !snap.open {
            return Ok(0);
        }
        if snap.restarts != self.restarts {
            self.restarts = snap.restarts;
            self.primed = false;
        }
        let fb = self.end.frame_bytes;
        let whole = buf.len() / fb * fb;
        if !self.primed {
            // Leave a period of room, or the PCM overruns while it fills.
            let need = (whole.saturating_add(more) / fb) as u64;
            let need = need
                .saturating_add(snap.keep)
                .min(snap.buffer.saturating_sub(snap.period))
                .max(1);
            if self.in_ring() < need {
                return Ok(0);
            }
            self.primed = true;
        }
        let (got, _) = self
            .ring
            .pop_partial_slice(buf.get_mut(..whole).unwrap_or_default());
        let n = got.len();
        if self.end.link.doorbell.must_ring() {
            self.end.link.wake.signal();
        }
        Ok(n)
    }
}

impl CaptureSource for ThreadedSource {
    fn clock(&self) -> Clock {
        Clock::Device
    }

    fn xruns(&self) -> u64 {
        self.end.link.snap().xruns
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.read_part(buf, 0).map(|_| ())
    }

    /// After each (re)start of the PCM, nothing is read until the ring
    /// holds this read (all of its parts) plus the cushion: the daemon
    /// asks for a period when it is due, just as the PCM captures it, and
    /// the thread moves what the PCM captured a period at a time. A part
    /// that finds too little comes back short, which ends the read: the
    /// rest is silence, as in one read.
    fn read_part(&mut self, buf: &mut [u8], more: usize) -> Result<usize, DeviceError> {
        let result = self.read_available(buf, more);
        let filled = *result.as_ref().unwrap_or(&0);
        self.format
            .fill_silence(buf.get_mut(filled..).unwrap_or_default());
        result
    }

    fn latency_bytes(&self) -> u32 {
        let Ok(snap) = self.end.check() else {
            return 0;
        };
        self.end
            .bytes(self.in_ring().saturating_add(self.in_pcm(&snap)))
    }

    fn set_paused(&mut self, paused: bool) -> Result<(), DeviceError> {
        self.end.set_paused(paused)
    }

    fn rate_ppm(&self) -> Option<f64> {
        self.end.link.snap().rate_ppm
    }

    fn fill_frames(&self) -> Option<Fill> {
        let snap = self.end.check().ok()?;
        if !snap.open || !snap.running || !self.primed {
            return None;
        }
        let frames = self.in_ring().saturating_add(self.in_pcm(&snap));
        Some(Fill {
            frames: i64::try_from(frames).unwrap_or(i64::MAX),
            room: i64::try_from(snap.buffer.saturating_sub(self.in_pcm(&snap))).unwrap_or(0),
        })
    }
}

fn run_capture(opener: &Opener, params: &StreamParams, mut ring: Producer<u8>, link: &Link) {
    let Some(mut stream) = open(opener, params, Direction::Capture, link) else {
        return;
    };
    let fb = stream.frame_bytes.max(1);
    let period_ns = ns_for(stream.period as u64, params.rate).max(1_000_000);
    let mut fds = pollfds(&stream.pcm);
    let (mut moved, mut restarts): (u64, u64) = (0, 0);
    let mut paused = false;
    let mut clock = ClockLoop::new(params.rate);
    while !link.closing.load(Ordering::SeqCst) {
        let mark = link.doorbell.awake();
        link.calls(now_ns());
        let mut full = false;
        let result = (|| {
            let want = Hold::from_u8(link.hold.load(Ordering::SeqCst)) != Hold::Run;
            if want != paused {
                stream.set_paused(want)?;
                paused = want;
                if !want {
                    restarts = restarts.saturating_add(1);
                }
            }
            if !paused {
                full = move_in(&mut stream, &mut ring, fb, &mut moved, &mut restarts)?;
            }
            Ok::<_, DeviceError>(())
        })();
        let queued = stream
            .pcm
            .avail_update()
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let running = !paused && stream.pcm.state() == alsa::pcm::State::Running;
        let reading = clock.read(
            &stream.pcm,
            running,
            moved,
            Direction::Capture,
            stream.xruns,
            restarts,
        );
        link.returned();
        let failed = result.is_err();
        link.saw(Seen {
            moved,
            played: 0,
            silence_ahead: 0,
            pcm_frames: queued,
            running,
            xruns: stream.xruns,
            restarts,
            failed,
            clock: reading,
            rate_ppm: clock.dll.rate_ppm(),
        });
        if failed {
            return;
        }
        let with_pcm = !full && !paused;
        if full && !paused && !link.doorbell.may_sleep(mark) {
            continue;
        }
        let timeout = if paused {
            period_ns.saturating_mul(10)
        } else {
            period_ns.saturating_mul(2)
        };
        sleep(&stream.pcm, &mut fds, with_pcm, link, timeout);
    }
}

/// Reads what the PCM captured into the ring, as far as it has room;
/// `true` if the ring is full.
fn move_in(
    stream: &mut Stream,
    ring: &mut Producer<u8>,
    fb: usize,
    moved: &mut u64,
    restarts: &mut u64,
) -> Result<bool, DeviceError> {
    let free = ring.slots() / fb * fb;
    if free == 0 {
        return Ok(true);
    }
    let avail = match stream.pcm.avail_update() {
        Ok(n) => usize::try_from(n).unwrap_or(0),
        Err(e) => {
            if stream.handle(e, false)? {
                stream.restart_capture()?;
                *restarts = restarts.saturating_add(1);
            }
            return Ok(false);
        }
    };
    let n = free.min(avail.saturating_mul(fb));
    if n == 0 {
        return Ok(false);
    }
    let Ok(mut chunk) = ring.write_chunk(n) else {
        return Ok(false);
    };
    let mut filled = 0;
    let mut overrun = None;
    {
        let (a, b) = chunk.as_mut_slices();
        for part in [a, b] {
            if part.is_empty() || overrun.is_some() {
                continue;
            }
            match stream.pcm.io_bytes().readi(part) {
                Ok(frames) => {
                    let bytes = frames.saturating_mul(fb).min(part.len());
                    filled += bytes;
                    if bytes < part.len() {
                        break;
                    }
                }
                Err(e) => overrun = Some(e),
            }
        }
    }
    chunk.commit(filled);
    *moved = moved.saturating_add((filled / fb) as u64);
    if let Some(e) = overrun {
        // After an overrun the PCM is empty: it starts over.
        if stream.handle(e, false)? {
            stream.restart_capture()?;
            *restarts = restarts.saturating_add(1);
        }
    }
    Ok(filled == free)
}

#[cfg(all(loom, test))]
mod loom_model {
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::Doorbell;

    /// The thread never sleeps on work the lane made without ringing:
    /// either it sees the work, or it is told not to sleep, or the lane
    /// rings; and it is never told to sleep twice on the same look.
    #[test]
    fn a_push_never_goes_unnoticed_by_a_thread_going_to_sleep() {
        loom::model(|| {
            let bell = Arc::new(Doorbell::new());
            let work = Arc::new(AtomicUsize::new(0));
            let (b, w) = (bell.clone(), work.clone());
            let lane = loom::thread::spawn(move || {
                w.fetch_add(1, Ordering::Release);
                b.must_ring()
            });
            // Two rounds of the thread's loop: a wake-up in between.
            let mut slept_unrung = false;
            for _ in 0..2 {
                let mark = bell.awake();
                let has = work.load(Ordering::Acquire) > 0;
                if !has && bell.may_sleep(mark) {
                    slept_unrung = true;
                    break;
                }
                if has {
                    break;
                }
            }
            let rang = lane.join().unwrap();
            assert!(!slept_unrung || rang, "slept with work unseen and no ring");
        });
    }
}
