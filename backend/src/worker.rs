//! One stream at run time: its shared state, and the worker thread that
//! moves its buffers in real time.
//!
//! Threads: the queue thread (vhost-user) answers control requests and
//! queues I/O messages here; the stream's worker wakes at each due time,
//! completes the message that was being played (or fills the one being
//! recorded), and takes the next one.
//!
//! Locks: the stream lock ([`Inner`]) is held only to move messages in and
//! out, never across a guest-memory copy or a host call. Guest messages
//! leave the lock only for guest-memory copies (the worker is `busy` then);
//! they are never held during host I/O, so a host device that hangs can
//! never keep a guest buffer from being returned. The host endpoint lives
//! in an attach/detach [`Slot`]: the worker lends it for each host call,
//! with no lock held, and detach closes it exactly once (see
//! `vsound_devices::attach`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use vsound_devices::attach::Slot;
use vsound_devices::{CaptureSource, DeviceError, PlaybackSink, StreamParams};

use crate::config::StreamConfig;
use crate::constants::{pcm_features, Direction, EventType, QueueIndex, Status};
use crate::device_clock::{DeviceClock, Flow};
use crate::events::EventQueue;
use crate::gate::Parked;
use crate::hangs::HangWatch;
use crate::hotplug::ManagedDevice;
use crate::io::IoMessage;
use crate::pacer::{now_ns, tick_at, Schedule, TickAt};
use crate::queue::Virtqueue;
use crate::reactor::Lane;
use crate::stream::PcmState;

/// How long RELEASE or a reset waits for the worker to finish a
/// guest-memory copy (it never waits on a host device).
const BUSY_WAIT: Duration = Duration::from_millis(50);

/// How long a detach waits for a host call in progress to return before
/// leaving the close to the worker.
pub const DETACH_WAIT: Duration = Duration::from_millis(10);

/// A host call longer than this is a hung device (the shared reactor
/// watches, `hangs.rs`); the stream's lane gets a new thread and the device
/// is removed.
pub const HANG_NS: u64 = 50_000_000;

/// The same for opening an endpoint, which may take longer without being
/// stuck (a sound server's PCM connects to the server and links a node; a
/// card's first `hw_params` loads firmware on some drivers).
pub const OPEN_HANG_NS: u64 = 2_000_000_000;

/// Size of a worker's copy buffer between guest memory and the host
/// device, allocated once when the worker starts and never grown: a message
/// of any size (up to the stream's buffer) moves through it in chunks of
/// whole frames, so the daemon's memory does not depend on what guests
/// send (1,024 streams of 16 MiB messages would otherwise be 16 GiB).
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// How often a running stream retries opening a device that came back.
const REOPEN_INTERVAL_NS: u64 = 100_000_000;

/// Parameters the guest negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub params: StreamParams,
    pub features: u32,
}

/// The host side of a prepared stream.
pub enum Endpoint {
    Playback(Box<dyn PlaybackSink>),
    Capture(Box<dyn CaptureSource>),
}

/// Counters reported by the daemon (`vsound ctl status`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Frames (in each message's own format) the guest played that a host
    /// device took, or recorded from one.
    pub frames: u64,
    /// Frames that reached no device (played into nothing, or recorded as
    /// silence: the device absent or failing).
    pub frames_without_device: u64,
    /// Gaps the guest heard: an underrun (overrun) in the middle of
    /// playback (capture) that more buffers ended, and the device's own.
    /// Running dry at the end of playback is not one.
    pub xruns: u64,
    pub latency_bytes: u32,
    /// The schedule's rate correction, in ppm, for a device with a clock of
    /// its own (see `device_clock.rs`).
    pub rate_ppm: i32,
    /// The endpoint's rate against `CLOCK_MONOTONIC`, measured on its own
    /// clock (an ALSA PCM's delay-locked loop), once known.
    pub device_rate_ppm: Option<f64>,
}

impl Stats {
    fn count(&mut self, ok: bool, bytes: u32, frame_bytes: u32) {
        let frames = u64::from(bytes / frame_bytes.max(1));
        if ok {
            self.frames = self.frames.saturating_add(frames);
        } else {
            self.frames_without_device = self.frames_without_device.saturating_add(frames);
        }
    }
}

/// What the stream lock protects.
pub struct Inner {
    pub state: PcmState,
    pub negotiated: Option<Negotiated>,
    /// Messages waiting their turn, oldest first.
    pub pending: VecDeque<IoMessage>,
    /// The message being played (tx) or recorded (rx) until `due`; on a
    /// playback device with its own clock, the message being handed over.
    pub current: Option<IoMessage>,
    /// Playback on a device with its own clock: messages handed to it,
    /// oldest first, each completed once the device has played it.
    pub written: VecDeque<Written>,
    pub schedule: Option<Schedule>,
    /// When the worker next has work (while started).
    pub due: u64,
    /// The worker holds messages outside the lock (guest-memory copy).
    pub busy: bool,
    /// Threads waiting for `busy` to clear ([`StreamRuntime::lock_idle`]):
    /// the worker wakes them only if there are any (a notify is a system
    /// call even with no one waiting, and `busy` clears every tick).
    idle_waiters: u32,
    /// In an underrun/overrun episode (one XRUN event per episode).
    pub in_xrun: bool,
    pub quit: bool,
    pub stats: Stats,
    /// Changes whenever the stream's messages are taken away (RELEASE, new
    /// parameters, reset): a capture the worker recorded for a message of
    /// an older epoch is not that message's.
    pub epoch: u64,
}

/// A tx message a device on its own clock was given, and where its last
/// frame is in the stream's timeline (see [`Timeline`]).
pub struct Written {
    pub msg: IoMessage,
    pub end: u64,
    /// It never completes before this (ns): the stream's schedule, at most
    /// [`crate::pacer::MAX_RATE_PPM`] faster than its nominal rate, so a
    /// PCM without a clock (alsa-lib's `null`) cannot take the guest's
    /// buffers as fast as it sends them.
    pub not_before: u64,
}

/// Puts `msg`, just handed over, at the end of `written`.
fn hand_over(inner: &mut Inner, line: &mut Timeline, msg: IoMessage, frame_bytes: u32) {
    let frames = u64::from(msg.payload() / frame_bytes.max(1));
    let end = line.end_of(frames);
    let not_before = inner
        .schedule
        .as_mut()
        .map_or(0, |s| s.advance(u64::from(msg.payload())));
    inner.written.push_back(Written {
        msg,
        end,
        not_before,
    });
}

/// A completion that found its ring stopped: done when the ring starts
/// again, dropped unwritten if the device is reset meanwhile.
pub struct Deferred {
    pub msg: IoMessage,
    pub dir: Direction,
    pub status: Status,
}

/// Everything the streams of one device share.
pub struct Shared {
    pub queues: [OnceLock<Arc<dyn Virtqueue>>; QueueIndex::COUNT],
    pub events: EventQueue,
    /// Per queue, completions waiting for the ring to run again.
    deferred: [Parked<Deferred>; QueueIndex::COUNT],
    /// Whether the shared reactor watches the calls of the lanes that may
    /// block, and the reactor to wake when it does not (`hangs.rs`).
    pub hangs: HangWatch,
    pub reactor: OnceLock<Arc<Lane>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            queues: Default::default(),
            events: EventQueue::default(),
            deferred: Default::default(),
            hangs: HangWatch::new(),
            reactor: OnceLock::new(),
        }
    }

    pub fn queue(&self, q: QueueIndex) -> Option<&Arc<dyn Virtqueue>> {
        self.queues.get(q as usize).and_then(|c| c.get())
    }

    /// Returns flushed messages (nothing recorded: rx used length 8) with
    /// `status`, or keeps them for when the ring runs again.
    pub fn complete_flushed(
        &self,
        qi: QueueIndex,
        dir: Direction,
        held: impl IntoIterator<Item = IoMessage>,
        status: Status,
    ) {
        let (Some(q), Some(parked)) = (self.queue(qi), self.deferred.get(qi as usize)) else {
            return;
        };
        let items = held.into_iter().map(|msg| Deferred { msg, dir, status });
        let n = parked.run_or_park(q.gate(), items, |pass, d| {
            d.msg.complete(q.as_ref(), pass, d.dir, d.status, 0, 0);
        });
        if n > 0 {
            log::debug!("{qi:?} ring stopped: {n} completions deferred");
        }
    }

    /// Completes what waited for `qi` to run again.
    pub fn flush_deferred(&self, qi: QueueIndex) {
        let (Some(q), Some(parked)) = (self.queue(qi), self.deferred.get(qi as usize)) else {
            return;
        };
        parked.flush(q.gate(), |pass, d| {
            d.msg.complete(q.as_ref(), pass, d.dir, d.status, 0, 0);
        });
    }

    /// Forgets deferred completions unwritten (device reset).
    pub fn drop_deferred(&self) -> usize {
        self.deferred.iter().map(Parked::drop_all).sum()
    }

    /// Queues an event and delivers it if the driver has a buffer posted.
    pub fn send_event(&self, kind: EventType, data: u32) {
        let q = self.queue(QueueIndex::Event).map(|q| q.as_ref());
        self.events.push(kind, data, q);
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new()
    }
}

/// One guest stream at run time.
pub struct StreamRuntime {
    pub id: u32,
    pub config: StreamConfig,
    pub device: Arc<ManagedDevice>,
    shared: Arc<Shared>,
    inner: Mutex<Inner>,
    idle: Condvar,
    /// The lane whose thread runs this stream (set once, when the device
    /// is built); a thread that finds the lane's generation changed has
    /// been replaced (a host call hung) and exits.
    pub lane: OnceLock<Arc<Lane>>,
    /// The control path asked the lane to look at this stream again.
    woken: AtomicBool,
    /// The open host endpoint (attach/detach protocol).
    pub endpoint: Slot<Endpoint>,
    /// When the host call in progress started (ns), 0 if none.
    io_since: AtomicU64,
    /// Try to (re)open the endpoint at the next chance (device returned).
    reopen_now: AtomicBool,
    /// The stream's volume and switch, if it has controls (set once, by
    /// the device, before the worker starts).
    pub level: std::sync::OnceLock<Arc<crate::controls::Level>>,
}

/// What the lane keeps for a stream between ticks, outside the stream lock
/// (the copy buffer is the lane's, see `reactor.rs`).
pub(crate) struct WorkerLocal {
    /// No reopen attempt before this time.
    next_open_ns: u64,
    generation: u64,
    /// The endpoint's own xrun count, as last seen.
    device_xruns: u64,
    /// A message whose ring stopped while the worker was moving it in
    /// chunks: where it got to, to go on from when the ring runs again
    /// (rx: the chunk recorded last waits in the copy buffer).
    resume: Option<Resume>,
    /// Pacing by the endpoint's clock (see `device_clock.rs`), and the
    /// schedule start it learnt its level for.
    clock: DeviceClock,
    clock_start: u64,
    /// The endpoint was told to hold its clock (the stream not running).
    paused: bool,
    /// The due time of the tick in progress (to read a level as of then).
    tick_due: u64,
    /// How long ticks have waited for the device in a row (ns).
    waited_ns: u64,
    /// The endpoint keeps time itself (`Clock::Device`): its fill level is
    /// read (null and pad endpoints are never asked).
    device_clocked: bool,
    /// Playback on a device with its own clock: where the device is.
    line: Timeline,
}

/// Where a playback stream on a device with its own clock has got, in
/// frames: the device's own count ([`vsound_devices::Position`]) plus
/// `offset`, so that the count runs on from one endpoint to the next (a
/// device removed and back) and, with no endpoint, at the stream's nominal
/// rate from where the device last was.
#[derive(Clone, Copy, Debug, Default)]
struct Timeline {
    offset: u64,
    /// Frames played, as last known, and when (ns; 0: not known yet).
    played: u64,
    at: u64,
    /// When the device was last seen to move (for [`MAX_DEVICE_WAIT_NS`]).
    moved_at: u64,
    /// The end of the latest message handed over.
    end: u64,
    /// The end of the message whose last chunk the device just took.
    last_end: Option<u64>,
    /// A reading to measure the device's rate from (frames, ns), taken a
    /// second after START.
    reference: Option<(u64, u64)>,
    /// How long before the device plays a message's last frame it
    /// completes (frames; see [`lead_frames`]).
    lead: u64,
    /// The stream was not running when last looked at.
    held: bool,
}

/// How far ahead of the device a playback stream completes, in frames: 0
/// when the guest's buffer covers what the device must hold (`keep`), else
/// the shortfall. Completions follow the device's position, so the device
/// holds at most what the guest has in flight: its buffer less the message
/// just completed and the one it is queueing again (the lane takes it at
/// its next look). A guest whose buffer is that short gets its
/// completions that much early, made up by the device's cushion of
/// silence at the start: otherwise it could not keep the device fed.
fn lead_frames(keep: u64, params: &StreamParams) -> u64 {
    let frame = params.frame_bytes().max(1);
    let buffer = u64::from(params.buffer_bytes / frame);
    let period = u64::from(params.period_bytes / frame);
    keep.saturating_sub(buffer.saturating_sub(period.saturating_mul(2)))
}

/// Frames of `rate` in `ns`.
fn frames_in(ns: u64, rate: u32) -> u64 {
    u64::try_from(u128::from(ns) * u128::from(rate) / 1_000_000_000).unwrap_or(u64::MAX)
}

/// Nanoseconds `frames` take at `rate`.
fn ns_for(frames: u64, rate: u32) -> u64 {
    match rate {
        0 => 0,
        r => u64::try_from(u128::from(frames) * 1_000_000_000 / u128::from(r)).unwrap_or(u64::MAX),
    }
}

impl Timeline {
    /// Where the device would be at `now`, running on at the nominal rate
    /// from where it was last known to be.
    fn estimate(&self, now: u64, rate: u32) -> u64 {
        if self.at == 0 {
            return self.played;
        }
        self.played
            .saturating_add(frames_in(now.saturating_sub(self.at), rate))
    }

    /// The stream (re)starts at `now`: the time spent stopped is no play.
    fn restart(&mut self, now: u64) {
        self.at = now;
        self.moved_at = now;
        self.reference = None;
    }

    /// A new endpoint, whose count starts at 0, at `now`.
    fn rebase(&mut self, now: u64, rate: u32) {
        self.played = self.estimate(now, rate);
        self.offset = self.played;
        self.at = now;
        self.moved_at = now;
        self.reference = None;
        self.last_end = None;
    }

    /// Takes a reading (`device`: the endpoint's played count, if it gave
    /// one) at `now`, while `waiting` for a message to play. A device that
    /// has not moved for [`MAX_DEVICE_WAIT_NS`] while messages wait on it
    /// is taken to play on at the nominal rate: a stalled device never
    /// freezes the guest. Returns the frames played, never less than before.
    fn observe(&mut self, device: Option<u64>, now: u64, rate: u32, waiting: bool) -> u64 {
        let estimate = self.estimate(now, rate);
        let played = match device {
            Some(d) => {
                let d = self.offset.saturating_add(d);
                if d > self.played || !waiting {
                    self.moved_at = now;
                }
                if waiting && now.saturating_sub(self.moved_at) > MAX_DEVICE_WAIT_NS {
                    d.max(estimate)
                } else {
                    d
                }
            }
            None => estimate,
        };
        self.played = self.played.max(played);
        self.at = now;
        self.played
    }

    /// Where a message of `frames` just handed over ends: where the device
    /// said its last chunk went, or, with no device, after everything
    /// before it.
    fn end_of(&mut self, frames: u64) -> u64 {
        let end = self
            .last_end
            .take()
            .unwrap_or_else(|| self.end.max(self.played).saturating_add(frames));
        self.end = self.end.max(end);
        end
    }

    /// The device's rate against `CLOCK_MONOTONIC`, in ppm, from readings
    /// more than a second apart (the first a second after START).
    fn rate_ppm(&mut self, played: u64, now: u64, origin: u64, rate: u32) -> Option<i32> {
        if now.saturating_sub(origin) < 1_000_000_000 {
            return None;
        }
        let Some((p0, t0)) = self.reference else {
            self.reference = Some((played, now));
            return None;
        };
        let span = now.saturating_sub(t0);
        if span < 1_000_000_000 || rate == 0 {
            return None;
        }
        let measured = played.saturating_sub(p0) as f64 * 1e9 / span as f64;
        let ppm = (measured / f64::from(rate) - 1.0) * 1e6;
        Some(ppm.round().clamp(-1e6, 1e6) as i32)
    }
}

/// How far the worker got with message `head` of `epoch`, `len` bytes.
///
/// rx: the message's frames are recorded chunk by chunk, each read from
/// the device with no message and no pass held, then written into the
/// message under a pass; `offset` bytes are in guest memory, and `pending`
/// more wait in the copy buffer (read from the device, not yet written).
/// tx: `offset` bytes were handed to the sink; `pending` bytes read from
/// guest memory wait in the copy buffer for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Resume {
    epoch: u64,
    head: u16,
    len: usize,
    offset: usize,
    pending: usize,
    /// rx: where the rest of the message comes from.
    source: RxSource,
    /// rx: guest memory refused a copy (IO_ERR, nothing more written).
    fault: bool,
}

impl WorkerLocal {
    pub(crate) fn new(generation: u64) -> WorkerLocal {
        WorkerLocal {
            next_open_ns: 0,
            generation,
            device_xruns: 0,
            resume: None,
            clock: DeviceClock::new(),
            clock_start: 0,
            paused: false,
            tick_due: 0,
            waited_ns: 0,
            device_clocked: false,
            line: Timeline::default(),
        }
    }
}

/// The longest a stream waits in a row for its device to take or make
/// frames (see [`StreamRuntime::wait_for_device`]).
const MAX_DEVICE_WAIT_NS: u64 = 1_000_000_000;

/// The shortest a playback stream on a device with its own clock sleeps
/// between two looks at the device (one whose position moves a period at
/// a time would otherwise be asked again and again).
const MIN_WAIT_NS: u64 = 500_000;

/// Whether a tick goes on (see [`StreamRuntime::wait_for_device`]).
enum Wait {
    Go,
    Later,
    Replaced,
}

/// Room for the guest's buffers a stream keeps, before any grows the list.
const PENDING_CAPACITY: usize = 64;

/// The messages [`StreamRuntime::take_all`] took out of a stream, to
/// complete (or drop) once its lock is released.
pub struct Held {
    written: VecDeque<Written>,
    current: Option<IoMessage>,
    pending: VecDeque<IoMessage>,
}

/// Empty lists for [`StreamRuntime::take_all`] to leave in a stream, made
/// before its lock is taken ([`StreamRuntime::spare`]).
pub struct Spare {
    pending: VecDeque<IoMessage>,
    written: VecDeque<Written>,
}

fn message_of(w: Written) -> IoMessage {
    w.msg
}

impl Held {
    pub fn len(&self) -> usize {
        self.written.len() + self.pending.len() + usize::from(self.current.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IntoIterator for Held {
    type Item = IoMessage;
    type IntoIter = std::iter::Chain<
        std::iter::Chain<
            std::iter::Map<
                std::collections::vec_deque::IntoIter<Written>,
                fn(Written) -> IoMessage,
            >,
            std::option::IntoIter<IoMessage>,
        >,
        std::collections::vec_deque::IntoIter<IoMessage>,
    >;

    /// Oldest first: what a device was given, the message being handed
    /// over or played, then the ones waiting.
    fn into_iter(self) -> Self::IntoIter {
        let of: fn(Written) -> IoMessage = message_of;
        self.written
            .into_iter()
            .map(of)
            .chain(self.current)
            .chain(self.pending)
    }
}

/// What a stream's lane does with it next.
pub(crate) enum Next {
    /// The lane's thread was replaced (a host call hung): it exits.
    Replaced,
    /// The connection ends: the stream is done.
    Quit,
    /// Look again at this time (`None`: only when woken); `Some(queue)`
    /// while the stream runs on a started ring of that queue.
    At(Option<u64>, Option<QueueIndex>),
}

impl Resume {
    fn new(epoch: u64, head: u16, len: usize) -> Resume {
        Resume {
            epoch,
            head,
            len,
            offset: 0,
            pending: 0,
            source: RxSource::Device,
            fault: false,
        }
    }
}

/// Where the rest of an rx message being recorded comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxSource {
    /// The capture source.
    Device,
    /// Silence: the device had nothing more for this read (status OK, as
    /// when one read comes back with silence at its end).
    Dry,
    /// Silence over the whole message, from its start: the device failed
    /// (status IO_ERR, as when one read fails).
    Failed,
}

/// The largest number of bytes of whole frames the copy buffer holds: no
/// chunk splits a frame (but the last of a message that does not end on
/// one).
fn chunk_bytes(params: &StreamParams, scratch: usize) -> usize {
    match usize::try_from(params.frame_bytes()) {
        Ok(frame) if frame > 0 && frame <= scratch => scratch - scratch % frame,
        _ => scratch,
    }
}

/// The outcome of one host call.
enum HostIo {
    Done,
    /// The device said it is gone, or there is no endpoint.
    Failed,
    /// This worker was replaced while it was in the call: exit.
    Replaced,
}

impl StreamRuntime {
    pub fn new(
        id: u32,
        config: StreamConfig,
        device: Arc<ManagedDevice>,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self> {
        Ok(StreamRuntime {
            id,
            config,
            device,
            shared,
            inner: Mutex::new(Inner {
                state: PcmState::Idle,
                negotiated: None,
                pending: VecDeque::with_capacity(PENDING_CAPACITY),
                current: None,
                written: VecDeque::with_capacity(PENDING_CAPACITY),
                schedule: None,
                due: 0,
                busy: false,
                idle_waiters: 0,
                in_xrun: false,
                quit: false,
                stats: Stats::default(),
                epoch: 0,
            }),
            idle: Condvar::new(),
            lane: OnceLock::new(),
            woken: AtomicBool::new(true),
            endpoint: Slot::new(),
            io_since: AtomicU64::new(0),
            reopen_now: AtomicBool::new(true),
            level: std::sync::OnceLock::new(),
        })
    }

    /// The gain to apply to the frames this stream moves now.
    fn gain(&self) -> crate::controls::Gain {
        self.level
            .get()
            .map_or(crate::controls::Gain::Unity, |l| l.gain())
    }

    pub fn direction(&self) -> Direction {
        self.config.direction
    }

    pub fn queue_index(&self) -> QueueIndex {
        match self.config.direction {
            Direction::Output => QueueIndex::Tx,
            Direction::Input => QueueIndex::Rx,
        }
    }

    /// The queue this stream's messages come from and go back to.
    pub fn queue(&self) -> Option<&Arc<dyn Virtqueue>> {
        self.shared.queue(self.queue_index())
    }

    /// Returns flushed messages to the guest with `status` (rx ones with
    /// nothing recorded: used length 8), now or when the ring runs again.
    pub fn complete_all(&self, held: impl IntoIterator<Item = IoMessage>, status: Status) {
        self.shared
            .complete_flushed(self.queue_index(), self.direction(), held, status);
    }

    /// Whether the stream's ring is stopped (the worker parks: no
    /// completion, no schedule advance, no host I/O).
    pub fn ring_stopped(&self) -> bool {
        self.queue().is_some_and(|q| !q.gate().is_started())
    }

    /// Locks the stream state (poisoning is not fatal: the state is plain
    /// data and every writer leaves it consistent).
    /// The negotiated period, in ns (0 if none).
    pub(crate) fn period_ns(&self) -> u64 {
        let Some(n) = self.lock().negotiated else {
            return 0;
        };
        let p = n.params;
        let frames = u64::from(p.period_bytes / p.frame_bytes().max(1));
        ns_for(frames, p.rate)
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the stream and waits (bounded) until the worker holds no
    /// message.
    pub fn lock_idle(&self) -> MutexGuard<'_, Inner> {
        let mut guard = self.lock();
        if !guard.busy {
            return guard;
        }
        guard.idle_waiters = guard.idle_waiters.saturating_add(1);
        let (mut guard, timeout) = self
            .idle
            .wait_timeout_while(guard, BUSY_WAIT, |i| i.busy)
            .unwrap_or_else(|e| e.into_inner());
        guard.idle_waiters = guard.idle_waiters.saturating_sub(1);
        if timeout.timed_out() {
            log::error!("stream {}: worker still busy after {BUSY_WAIT:?}", self.id);
        }
        guard
    }

    /// Wakes the stream's lane to look at its state again.
    pub fn wake(&self) {
        self.woken.store(true, Ordering::SeqCst);
        if let Some(lane) = self.lane.get() {
            lane.wake();
        }
    }

    /// Whether the stream was woken since the last call (and clears it).
    pub(crate) fn take_woken(&self) -> bool {
        self.woken.swap(false, Ordering::SeqCst)
    }

    /// Asks the worker to open the endpoint at once (device returned).
    pub fn reopen_soon(&self) {
        self.reopen_now.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Takes every message the stream holds (for RELEASE or a reset).
    pub fn take_all(inner: &mut Inner, spare: Spare) -> Held {
        inner.epoch = inner.epoch.wrapping_add(1);
        Held {
            written: std::mem::replace(&mut inner.written, spare.written),
            current: inner.current.take(),
            pending: std::mem::replace(&mut inner.pending, spare.pending),
        }
    }

    /// An empty `pending` list to hand to [`StreamRuntime::take_all`], made
    /// before the stream lock is taken: the list the stream keeps then has
    /// room for the guest's next buffers, and nothing is allocated under the
    /// lock (B11 of the review: an empty default list grew again under the
    /// lock, on the queue thread, after every RELEASE).
    pub fn spare() -> Spare {
        Spare {
            pending: VecDeque::with_capacity(PENDING_CAPACITY),
            written: VecDeque::with_capacity(PENDING_CAPACITY),
        }
    }

    /// Closes the endpoint (RELEASE, new parameters, removal, reset).
    pub fn close_endpoint(&self) {
        self.endpoint.detach(DETACH_WAIT);
    }

    /// How long the host call in progress has been running, if one is, and
    /// the bound it is held to (an open's is longer).
    pub fn host_call_age(&self, now: u64) -> Option<(u64, u64)> {
        match self.io_since.load(Ordering::SeqCst) {
            0 => None,
            t => {
                let bound = if t & 1 == 1 { OPEN_HANG_NS } else { HANG_NS };
                Some((now.saturating_sub(t), bound))
            }
        }
    }

    /// Marks a host call as started at `now` for the hang watch (the low
    /// bit says whether it is an open, so mark and kind are one atomic
    /// value); returns the mark, for [`StreamRuntime::host_call_ends`]. On
    /// a lane that may block, an idle reactor is woken to watch it.
    fn host_call_starts(&self, now: u64, open: bool) -> u64 {
        let since = (now.max(2) & !1) | u64::from(open);
        self.io_since.store(since, Ordering::SeqCst);
        if self.lane.get().is_some_and(|l| l.may_block) && self.shared.hangs.call_marked() {
            if let Some(r) = self.shared.reactor.get() {
                r.wake();
            }
        }
        since
    }

    /// Clears the mark of a host call that started at `since`, unless it is
    /// no longer this call's: when a hung call finally returns, its lane was
    /// replaced (the reactor cleared the mark), and the new lane's call in
    /// progress keeps its own mark, so a hang of it is still seen (B12 of
    /// the review: a plain store of 0 erased it).
    fn host_call_ends(&self, since: u64) {
        let _ = self
            .io_since
            .compare_exchange(since, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Forgets the host call in progress (its thread was retired).
    pub fn clear_host_call(&self) {
        self.io_since.store(0, Ordering::SeqCst);
    }

    fn replaced(&self, local: &WorkerLocal) -> bool {
        self.lane
            .get()
            .is_some_and(|l| l.generation() != local.generation)
    }

    /// Looks at the stream's state (its lane's thread, at a wake or after
    /// a tick): plays on a message a ring stop cut, opens the endpoint of a
    /// prepared or running stream that has none (the lane's devices open
    /// without blocking; a device that may block has a lane of its own, so
    /// a device that hangs in open cannot stall control or other streams),
    /// and says when the stream next has work.
    pub(crate) fn evaluate(
        &self,
        shared: &Shared,
        local: &mut WorkerLocal,
        scratch: &mut [u8],
    ) -> Next {
        if self.replaced(local) {
            return Next::Replaced;
        }
        // A tx message its ring stopped in the middle of plays on as
        // soon as the ring runs again.
        if self.resume_playback(shared, local, scratch) {
            return Next::Replaced;
        }
        // First, so that what follows sees the state after it (RELEASE may
        // come meanwhile: no endpoint is opened for a released stream).
        if local.device_clocked && self.hold_device_clock(local) {
            return Next::Replaced;
        }
        let (due, state, negotiated) = {
            let inner = self.lock();
            if inner.quit {
                return Next::Quit;
            }
            let due = (inner.state == PcmState::Started).then_some(inner.due);
            (due, inner.state, inner.negotiated)
        };
        // A stopped ring parks the stream: it is woken when the ring runs
        // again (its schedule moved by the pause).
        let due = due.filter(|_| !self.ring_stopped());
        if matches!(
            state,
            PcmState::Prepared | PcmState::Started | PcmState::Stopped
        ) && !self.endpoint.is_attached()
        {
            if let Some(n) = negotiated {
                if let HostIo::Replaced = self.try_open(&n.params, local) {
                    return Next::Replaced;
                }
            }
        }
        let reopen_due = (!self.endpoint.is_attached() && state == PcmState::Prepared)
            .then_some(local.next_open_ns);
        let at = match (due, reopen_due) {
            (Some(d), _) => Some(d),
            (None, Some(r)) if self.device.is_present() => Some(r),
            _ => None,
        };
        Next::At(at, due.map(|_| self.queue_index()))
    }

    /// Whether the stream's state is one that holds an endpoint.
    fn wants_endpoint(&self) -> bool {
        matches!(
            self.lock().state,
            PcmState::Prepared | PcmState::Started | PcmState::Stopped
        )
    }

    /// An endpoint on its own clock holds it while the stream does not run
    /// (STOP, a paused VM), so that it does not underrun meanwhile, and lets
    /// it run again at START. Returns true if this lane was replaced.
    fn hold_device_clock(&self, local: &mut WorkerLocal) -> bool {
        let (state, negotiated, ended) = {
            let inner = self.lock();
            let ended =
                inner.pending.is_empty() && inner.current.is_none() && inner.written.is_empty();
            (inner.state, inner.negotiated, ended)
        };
        let ring_stopped = self.ring_stopped();
        let hold = state != PcmState::Started || ring_stopped;
        // The time the stream does not run is no play: a playback
        // timeline starts again from where it was (a VM paused for
        // seconds would otherwise seem to have played them, device or not).
        if hold != local.line.held {
            local.line.held = hold;
            if !hold {
                local.line.restart(now_ns());
            }
        }
        let Some(n) = negotiated.filter(|_| hold != local.paused) else {
            return false;
        };
        if !self.endpoint.is_attached() {
            return false;
        }
        local.paused = hold;
        // A STOP with none of the guest's buffers left is the end of its
        // sound (a drain ends so): what the device holds of it plays out
        // now. Held, it would wait for the next START or the RELEASE with
        // the device's silence ahead of it (completions come `lead`
        // frames before the device plays them, see `lead_frames`).
        let play_out = hold && ended && state == PcmState::Stopped && !ring_stopped;
        let io = self.host_call(local, &n.params, false, false, |ep| match ep {
            Endpoint::Playback(s) if play_out => s.play_out().map(|()| s.latency_bytes()),
            Endpoint::Playback(s) => s.set_paused(hold).map(|()| s.latency_bytes()),
            Endpoint::Capture(s) => s.set_paused(hold).map(|()| s.latency_bytes()),
        });
        matches!(io, HostIo::Replaced)
    }

    /// Opens the endpoint if the device is present (at most every
    /// [`REOPEN_INTERVAL_NS`] unless the device just returned).
    fn try_open(&self, params: &StreamParams, local: &mut WorkerLocal) -> HostIo {
        let now = now_ns();
        let asked = self.reopen_now.swap(false, Ordering::SeqCst);
        if (!asked && now < local.next_open_ns) || !self.device.is_present() {
            return HostIo::Failed;
        }
        if !self.wants_endpoint() {
            return HostIo::Failed;
        }
        // An open in flight is published only if no detach (a removal,
        // RELEASE, a reset) or other attach came meanwhile.
        let generation = self.endpoint.generation();
        let since = self.host_call_starts(now, true);
        let opened = match self.direction() {
            Direction::Output => self
                .device
                .dev
                .open_playback(params)
                .map(Endpoint::Playback),
            Direction::Input => self.device.dev.open_capture(params).map(Endpoint::Capture),
        };
        self.host_call_ends(since);
        if self.replaced(local) {
            return HostIo::Replaced;
        }
        match opened {
            Ok(ep) => {
                let device_clocked = match &ep {
                    Endpoint::Playback(s) => s.clock() == vsound_devices::Clock::Device,
                    Endpoint::Capture(s) => s.clock() == vsound_devices::Clock::Device,
                };
                if self.endpoint.attach_if(ep, generation).is_err() {
                    log::debug!("stream {}: closed while it opened", self.id);
                    return HostIo::Failed;
                }
                log::info!("stream {}: on device {}", self.id, self.device.name);
                // A new endpoint: its clock is not known, and it runs.
                local.clock = DeviceClock::new();
                local.paused = false;
                local.device_clocked = device_clocked;
                if device_clocked && self.direction() == Direction::Output {
                    local.line.rebase(now_ns(), params.rate);
                }
                HostIo::Done
            }
            Err(e) => {
                // Throttle retries only after a failure.
                local.next_open_ns = now.saturating_add(REOPEN_INTERVAL_NS);
                log::debug!("stream {}: opening {}: {e}", self.id, self.device.name);
                HostIo::Failed
            }
        }
    }

    /// One host call on the lent endpoint, timed for the hang watch.
    /// With `may_open`, an endpoint that is not there is opened first (a
    /// message's first chunk; the rest of a message never goes to an
    /// endpoint opened in its middle). With `last` (a message's last chunk
    /// of a tick), the endpoint's fill level then paces the stream.
    fn host_call(
        &self,
        local: &mut WorkerLocal,
        params: &StreamParams,
        may_open: bool,
        last: bool,
        f: impl FnOnce(&mut Endpoint) -> Result<u32, DeviceError>,
    ) -> HostIo {
        let device_xruns = |ep: &Endpoint| match ep {
            Endpoint::Playback(s) => s.xruns(),
            Endpoint::Capture(s) => s.xruns(),
        };
        if may_open && !self.endpoint.is_attached() {
            if let HostIo::Replaced = self.try_open(params, local) {
                return HostIo::Replaced;
            }
        }
        let Some(mut lent) = self.endpoint.lend() else {
            return HostIo::Failed;
        };
        let since = self.host_call_starts(now_ns(), false);
        let result = f(&mut lent.item);
        self.host_call_ends(since);
        if self.replaced(local) {
            // Stale: the slot closes it.
            self.endpoint.give_back(lent);
            return HostIo::Replaced;
        }
        match result {
            Ok(latency) => {
                let xruns = device_xruns(&lent.item);
                let device_rate = match &lent.item {
                    Endpoint::Playback(s) => s.rate_ppm(),
                    Endpoint::Capture(s) => s.rate_ppm(),
                };
                let fill = match (&lent.item, last && local.device_clocked) {
                    // Playback completes by the device's position: where
                    // the message's last frame went (see `tick_played`).
                    (Endpoint::Playback(s), true) => {
                        local.line.last_end = s
                            .position()
                            .map(|p| local.line.offset.saturating_add(p.taken));
                        None
                    }
                    (Endpoint::Capture(s), true) => s.fill_frames(),
                    _ => None,
                };
                self.endpoint.give_back(lent);
                // The device's own underruns/overruns (ALSA recovered them):
                // the guest hears of new ones, once per call.
                if xruns > local.device_xruns {
                    local.device_xruns = xruns;
                    self.device_xrun();
                } else if xruns < local.device_xruns {
                    // A new endpoint counts from zero.
                    local.device_xruns = xruns;
                }
                let mut inner = self.lock();
                inner.stats.latency_bytes = latency;
                if device_rate.is_some() {
                    inner.stats.device_rate_ppm = device_rate;
                }
                if let (Some(ppm), false) = (device_rate, local.clock.locked()) {
                    // The loop starts from the rate the device's clock was
                    // measured at, rather than learning it from the level.
                    local.clock.seed(ppm);
                }
                if let Some(f) = fill {
                    self.pace_by_device(&mut inner, local, params, f.frames);
                }
                HostIo::Done
            }
            Err(DeviceError::Gone) => {
                log::info!(
                    "stream {}: device {} went away; running on the daemon's clock",
                    self.id,
                    self.device.name
                );
                // Close is final: unpublish, then the give-back closes it.
                self.endpoint.detach(Duration::ZERO);
                self.endpoint.give_back(lent);
                local.next_open_ns = now_ns().saturating_add(REOPEN_INTERVAL_NS);
                HostIo::Failed
            }
            Err(e) => {
                crate::warn_limited!(
                    crate::ratelimit::HOST_CALL_FAILED,
                    "stream {}: device {}: {e}",
                    self.id,
                    self.device.name
                );
                self.endpoint.give_back(lent);
                HostIo::Failed
            }
        }
    }

    /// A capture device on its own clock that has not made the frames of
    /// this tick yet, a sound server still starting or a card stalled,
    /// holds the tick back: the schedule waits for the device by the frames
    /// it lacks, as a guest's clock waits for its card on bare metal,
    /// rather than making up silence. A wait longer than
    /// [`MAX_DEVICE_WAIT_NS`] in all gives up: the tick goes on. (Playback
    /// on such a device waits for room in `tick_played`.)
    fn wait_for_device(
        &self,
        local: &mut WorkerLocal,
        params: &StreamParams,
        current: Option<usize>,
    ) -> Wait {
        if !local.device_clocked || self.direction() == Direction::Output {
            return Wait::Go;
        }
        let frame = u64::from(params.frame_bytes().max(1));
        // The current message is read from the device at this tick.
        let need = current.map(|len| len as u64);
        let Some(need) = need.map(|b| i64::try_from(b / frame).unwrap_or(i64::MAX)) else {
            return Wait::Go;
        };
        if !self.endpoint.is_attached() || local.waited_ns >= MAX_DEVICE_WAIT_NS {
            local.waited_ns = 0;
            return Wait::Go;
        }
        let mut fill = None;
        let io = self.host_call(local, params, false, false, |ep| match ep {
            Endpoint::Capture(s) => {
                fill = s.fill_frames();
                Ok(s.latency_bytes())
            }
            Endpoint::Playback(_) => Err(DeviceError::Gone),
        });
        if let HostIo::Replaced = io {
            return Wait::Replaced;
        }
        let Some(have) = fill.map(|f| f.frames) else {
            return Wait::Go;
        };
        let short = u64::try_from(need.saturating_sub(have)).unwrap_or(0);
        if short == 0 {
            local.waited_ns = 0;
            return Wait::Go;
        }
        let wait = short
            .saturating_mul(1_000_000_000)
            .checked_div(u64::from(params.rate))
            .unwrap_or(0)
            .max(1_000_000);
        local.waited_ns = local.waited_ns.saturating_add(wait);
        let mut inner = self.lock();
        if inner.state == PcmState::Started {
            if let Some(s) = inner.schedule.as_mut() {
                s.shift(wait);
            }
            inner.due = inner.due.saturating_add(wait);
        }
        log::trace!("stream {}: waiting {wait} ns for the device", self.id);
        Wait::Later
    }

    /// Corrects a running capture stream's schedule by its endpoint's
    /// level (`frames` captured, just now): read as of the tick's due
    /// time, so that the tick's own lateness is not taken for drift.
    fn pace_by_device(
        &self,
        inner: &mut Inner,
        local: &mut WorkerLocal,
        params: &StreamParams,
        frames: i64,
    ) {
        if inner.state != PcmState::Started || params.rate == 0 {
            return;
        }
        let Some(schedule) = inner.schedule.as_mut() else {
            return;
        };
        if local.clock_start != schedule.origin_ns() {
            local.clock_start = schedule.origin_ns();
            local.clock.restart();
        }
        let now = now_ns();
        let late = now.saturating_sub(local.tick_due) as f64 * 1e-9;
        let late = if local.tick_due == 0 || late > 0.1 {
            0.0
        } else {
            late
        };
        let level = frames as f64 / f64::from(params.rate) - late;
        let ppm = local.clock.feed(now, level, Flow::Capture);
        schedule.set_rate_ppm(ppm);
        inner.stats.rate_ppm = schedule.rate_ppm();
    }

    /// A host device under- or overran: counted, and PCM_XRUN if negotiated.
    fn device_xrun(&self) {
        let notify = {
            let mut inner = self.lock();
            inner.stats.xruns += 1;
            inner
                .negotiated
                .is_some_and(|n| n.features & pcm_features::EVT_XRUNS != 0)
        };
        log::debug!("stream {}: device {} xrun", self.id, self.device.name);
        if notify {
            self.shared.send_event(EventType::PcmXrun, self.id);
        }
    }

    /// Takes the stream's current message out of the lock for a
    /// guest-memory copy (`busy` set), if it still is message `head` of
    /// `epoch` (and, if `started`, the stream still runs).
    fn take_current(&self, epoch: u64, head: u16, started: bool) -> Option<IoMessage> {
        let mut inner = self.lock();
        if inner.epoch != epoch || (started && inner.state != PcmState::Started) {
            return None;
        }
        if inner.current.as_ref().map(IoMessage::head) != Some(head) {
            return None;
        }
        let msg = inner.current.take();
        inner.busy = msg.is_some();
        msg
    }

    /// Puts back a message [`StreamRuntime::take_current`] took, or, if the
    /// stream let go of it meanwhile (a teardown that gave up waiting for
    /// `busy`), returns it IO_ERR.
    fn put_back(&self, msg: IoMessage, epoch: u64) {
        let (orphan, waiters) = {
            let mut inner = self.lock();
            inner.busy = false;
            let orphan = if inner.epoch == epoch && inner.current.is_none() {
                inner.current = Some(msg);
                None
            } else {
                Some(msg)
            };
            (orphan, inner.idle_waiters > 0)
        };
        if waiters {
            self.idle.notify_all();
        }
        if let Some(m) = orphan {
            self.complete_all([m], Status::IoErr);
        }
    }

    /// Marks message `head` of `epoch` failed if it still is the current one
    /// (its frames did not all reach the device).
    fn mark_current_failed(&self, epoch: u64, head: u16) {
        let mut inner = self.lock();
        if inner.epoch == epoch {
            if let Some(m) = inner.current.as_mut().filter(|m| m.head() == head) {
                m.mark_failed();
            }
        }
    }

    /// Plays a tx message on from `at`, chunk by chunk: each chunk is read
    /// from guest memory under a pass with the message taken out of the
    /// lock, then handed to the sink holding neither. Returns
    /// [`HostIo::Replaced`] if this worker must exit.
    ///
    /// A ring that stops between chunks parks the rest in `local.resume`;
    /// it plays as soon as the ring runs again (`resume_playback`), before
    /// the message completes at its due time (which the pause moved). A
    /// chunk that reaches no device
    /// (or cannot be read) fails the message (IO_ERR) and ends it: the sink
    /// is not given the rest.
    fn play(
        &self,
        local: &mut WorkerLocal,
        scratch: &mut [u8],
        queue: Option<&Arc<dyn Virtqueue>>,
        params: &StreamParams,
        mut at: Resume,
    ) -> HostIo {
        let chunk = chunk_bytes(params, scratch.len());
        loop {
            if at.pending == 0 {
                if at.offset >= at.len {
                    return HostIo::Done;
                }
                let Some(q) = queue else {
                    return HostIo::Done;
                };
                let Some(pass) = q.gate().enter() else {
                    local.resume = Some(at);
                    return HostIo::Done;
                };
                let Some(mut msg) = self.take_current(at.epoch, at.head, false) else {
                    // Taken away (RELEASE, reset): it is answered already.
                    return HostIo::Done;
                };
                let n = chunk.min(at.len - at.offset);
                let read = match (scratch.get_mut(..n), u32::try_from(at.offset)) {
                    (Some(buf), Ok(offset)) => {
                        let ok = msg.read_pcm(offset, buf).is_ok();
                        crate::controls::apply(self.gain(), params.format, buf);
                        ok
                    }
                    _ => false,
                };
                if !read {
                    msg.mark_failed();
                }
                self.put_back(msg, at.epoch);
                drop(pass);
                if !read {
                    return HostIo::Done;
                }
                at.pending = n;
            }
            let Some(buf) = scratch.get(..at.pending) else {
                return HostIo::Failed;
            };
            // Only a message's first chunk may open the endpoint: one that
            // went away meanwhile (a removal) fails the rest.
            let first = at.offset == 0;
            let last = at.offset + at.pending >= at.len;
            let io = self.host_call(local, params, first, last, |ep| match ep {
                Endpoint::Playback(sink) => sink.write(buf).map(|()| sink.latency_bytes()),
                Endpoint::Capture(_) => Err(DeviceError::Gone),
            });
            match io {
                HostIo::Done => {
                    at.offset += at.pending;
                    at.pending = 0;
                }
                HostIo::Replaced => return HostIo::Replaced,
                HostIo::Failed => {
                    // The frames reached no device: the guest is told.
                    self.mark_current_failed(at.epoch, at.head);
                    return HostIo::Failed;
                }
            }
        }
    }

    /// Plays on a tx message its ring stopped in the middle of, if the ring
    /// runs again. Returns true if this worker was replaced and must exit.
    fn resume_playback(
        &self,
        shared: &Shared,
        local: &mut WorkerLocal,
        scratch: &mut [u8],
    ) -> bool {
        if self.direction() != Direction::Output || local.resume.is_none() {
            return false;
        }
        let queue = shared.queue(self.queue_index()).cloned();
        if queue.as_ref().is_some_and(|q| !q.gate().is_started()) {
            return false;
        }
        let Some(at) = local.resume.take() else {
            return false;
        };
        let Some(n) = self.lock().negotiated else {
            return false;
        };
        matches!(
            self.play(local, scratch, queue.as_ref(), &n.params, at),
            HostIo::Replaced
        )
    }

    /// One due time. Returns true if this worker was replaced and must exit.
    ///
    /// Nothing happens while the stream's ring is stopped; the ring is
    /// written only under a pass of its gate, taken after the host call of
    /// a capture chunk and given back before the host call of a playback
    /// chunk.
    pub(crate) fn tick(
        &self,
        shared: &Shared,
        local: &mut WorkerLocal,
        scratch: &mut [u8],
    ) -> bool {
        let dir = self.direction();
        let queue = shared.queue(self.queue_index()).cloned();
        if queue.as_ref().is_some_and(|q| !q.gate().is_started()) {
            return false;
        }
        // A tx message cut by a ring stop plays its rest before it completes.
        if self.resume_playback(shared, local, scratch) {
            return true;
        }
        if dir == Direction::Output && local.resume.is_some() {
            return false;
        }
        if dir == Direction::Output && local.device_clocked {
            return self.tick_played(local, scratch, queue);
        }
        let mut reanchored = None;
        let (negotiated, current, epoch) = {
            let mut inner = self.lock();
            if inner.state != PcmState::Started {
                return false;
            }
            let Some(n) = inner.negotiated else {
                return false;
            };
            let period_ns = u64::from(n.params.period_bytes)
                .saturating_mul(1_000_000_000)
                .checked_div(n.params.bytes_per_second())
                .unwrap_or(0);
            let Inner { schedule, due, .. } = &mut *inner;
            match tick_at(schedule.as_mut(), due, now_ns(), period_ns) {
                TickAt::NotYet => return false,
                TickAt::Due => {}
                TickAt::Reanchored { late_ns, xrun } => {
                    if xrun {
                        inner.stats.xruns += 1;
                        reanchored = Some((late_ns, n.features & pcm_features::EVT_XRUNS != 0));
                    }
                }
            }
            local.tick_due = inner.due;
            (
                n,
                inner
                    .current
                    .as_ref()
                    .map(|m| (m.head(), m.payload() as usize)),
                inner.epoch,
            )
        };
        if let Some((late_ns, notify)) = reanchored {
            log::debug!(
                "stream {}: {} ms late: schedule moved to now (xrun)",
                self.id,
                late_ns / 1_000_000
            );
            if notify {
                shared.send_event(EventType::PcmXrun, self.id);
            }
        }
        let params = negotiated.params;
        let chunk = chunk_bytes(&params, scratch.len());
        match self.wait_for_device(local, &params, current.map(|(_, len)| len)) {
            Wait::Go => {}
            Wait::Later => return false,
            Wait::Replaced => return true,
        }

        // rx: record the finished message's frames first, chunk by chunk:
        // each read from the device holding no message and no pass, then
        // written into the message under a pass (all but the last here, the
        // last with the completion below). A ring that stops between chunks
        // parks the message where it got to (`local.resume`, the chunk read
        // last still in `scratch`): it goes on from there when the ring runs
        // again, with no frame recorded twice or lost.
        let mut rx = None;
        if let Some((head, len)) = current.filter(|&(_, len)| dir == Direction::Input && len > 0) {
            let mut at = local
                .resume
                .take()
                .filter(|r| r.head == head && r.epoch == epoch && r.len == len)
                .unwrap_or(Resume::new(epoch, head, len));
            loop {
                if at.pending == 0 {
                    let n = chunk.min(len - at.offset);
                    let Some(buf) = scratch.get_mut(..n) else {
                        return false;
                    };
                    if at.source == RxSource::Device {
                        let more = len - at.offset - n;
                        let mut filled = 0;
                        let io =
                            self.host_call(
                                local,
                                &params,
                                at.offset == 0,
                                more == 0,
                                |ep| match ep {
                                    Endpoint::Capture(src) => {
                                        filled = src.read_part(buf, more)?;
                                        Ok(src.latency_bytes())
                                    }
                                    Endpoint::Playback(_) => Err(DeviceError::Gone),
                                },
                            );
                        match io {
                            // A short chunk ends the device's read: the rest
                            // of the message is silence (status OK).
                            HostIo::Done => {
                                crate::controls::apply(self.gain(), params.format, buf);
                                if filled < n {
                                    at.source = RxSource::Dry;
                                }
                            }
                            HostIo::Replaced => return true,
                            HostIo::Failed => {
                                // Not recorded: IO_ERR, and silence over the
                                // whole message, chunks already written too.
                                at.source = RxSource::Failed;
                                at.offset = 0;
                                continue;
                            }
                        }
                    } else {
                        params.format.fill_silence(buf);
                    }
                    at.pending = n;
                }
                if at.fault || at.offset + at.pending >= len {
                    break;
                }
                let Some(q) = queue.as_ref() else {
                    return false;
                };
                let Some(pass) = q.gate().enter() else {
                    local.resume = Some(at);
                    return false;
                };
                let Some(mut msg) = self.take_current(epoch, head, true) else {
                    // Stopped or taken away: recorded again, if at all,
                    // at the next due time, as if nothing had been.
                    return false;
                };
                let written = match (scratch.get(..at.pending), u32::try_from(at.offset)) {
                    (Some(buf), Ok(offset)) => msg.write_pcm(offset, buf).is_ok(),
                    _ => false,
                };
                self.put_back(msg, epoch);
                drop(pass);
                if written {
                    at.offset += at.pending;
                    at.pending = 0;
                } else {
                    // Guest memory refused the copy: IO_ERR, nothing more.
                    at.fault = true;
                }
            }
            rx = Some(at);
        }

        // The ring may have stopped meanwhile: then nothing is written, and
        // the last chunk recorded waits for it.
        let pass = match &queue {
            Some(q) => match q.gate().enter() {
                Some(p) => Some(p),
                None => {
                    local.resume = rx;
                    return false;
                }
            },
            None => None,
        };

        // Take the messages: guest-memory copies only, no host call.
        let (finished, mut next, latency) = {
            let mut inner = self.lock();
            if inner.state != PcmState::Started || inner.epoch != epoch {
                return false;
            }
            inner.busy = true;
            (
                inner.current.take(),
                inner.pending.pop_front(),
                inner.stats.latency_bytes,
            )
        };
        let (Some(queue), Some(pass)) = (queue.as_ref(), pass) else {
            self.finish_tick(next, None, &negotiated, shared);
            return false;
        };
        // The completed message, for the counters (taken with the lock
        // `finish_tick` takes anyway).
        let mut completed = None;
        if let Some(mut msg) = finished {
            let (status, bytes) = match dir {
                Direction::Output if msg.failed() => (Status::IoErr, 0),
                Direction::Output => (Status::Ok, 0),
                Direction::Input => {
                    let ok = match rx.filter(|at| at.head == msg.head() && !at.fault) {
                        Some(at) => {
                            let written =
                                match (scratch.get(..at.pending), u32::try_from(at.offset)) {
                                    (Some(buf), Ok(offset)) => msg.write_pcm(offset, buf).is_ok(),
                                    _ => false,
                                };
                            written && at.source != RxSource::Failed
                        }
                        None => false,
                    };
                    (if ok { Status::Ok } else { Status::IoErr }, msg.payload())
                }
            };
            completed = Some((status == Status::Ok, msg.payload()));
            msg.complete(queue.as_ref(), &pass, dir, status, latency, bytes);
        }
        // tx: the next message's first chunk, read under this pass.
        let mut tx = None;
        if dir == Direction::Output {
            if let Some(m) = next.as_mut() {
                match self.read_first_chunk(m, scratch, chunk, &params) {
                    Some(n) => {
                        let mut at = Resume::new(epoch, m.head(), m.payload() as usize);
                        at.pending = n;
                        tx = Some(at);
                    }
                    None => m.mark_failed(),
                }
            }
        }
        drop(pass);
        self.finish_tick(next, completed, &negotiated, shared);

        // tx: hand the frames to the device, the message back in `current`
        // (the rest of a large one chunk by chunk, see `play`).
        if let Some(at) = tx {
            // A message of several chunks takes a while to hand over: the
            // completion made above is announced first, not after it.
            if at.len > chunk {
                queue.flush_notifications();
            }
            if let HostIo::Replaced = self.play(local, scratch, Some(queue), &params, at) {
                return true;
            }
        }
        false
    }

    /// One wake-up of a playback stream on a device with its own clock
    /// (ALSA): a buffer completes once the device has played it.
    ///
    /// Every buffer the guest has queued is handed to the device as soon as
    /// it has room for it, and kept in `written` with where its last frame
    /// falls in the device's count. At each wake-up the device's position
    /// says which of them have played; those complete (one pass, in
    /// order), and the lane wakes again when the oldest left will have.
    /// The guest's own buffers are then the device's fill (behind the
    /// cushion of silence the device puts ahead of them when it starts),
    /// the guest's clock is the device's, and nothing drifts: there is no
    /// rate to correct. A guest's last buffer completes when it has been
    /// heard. Without an endpoint (removed, failed, not back yet) the
    /// position runs on at the nominal rate from where the device last
    /// was, and buffers complete at that pace, IO_ERR.
    ///
    /// Returns true if this worker was replaced and must exit.
    fn tick_played(
        &self,
        local: &mut WorkerLocal,
        scratch: &mut [u8],
        queue: Option<Arc<dyn Virtqueue>>,
    ) -> bool {
        let now = now_ns();
        let (negotiated, epoch, origin) = {
            let mut inner = self.lock();
            let Some(n) = inner
                .negotiated
                .filter(|_| inner.state == PcmState::Started)
            else {
                return false;
            };
            if inner.due > now {
                return false;
            }
            local.tick_due = inner.due;
            let origin = inner.schedule.as_ref().map_or(0, Schedule::origin_ns);
            if local.clock_start != origin {
                local.clock_start = origin;
                local.line.restart(now);
                if let Some(s) = inner.schedule.as_mut() {
                    s.set_rate_ppm(crate::pacer::MAX_RATE_PPM);
                }
            }
            // A message handed over in chunks across a ring stop is done.
            if let Some(msg) = inner.current.take() {
                hand_over(&mut inner, &mut local.line, msg, n.params.frame_bytes());
            }
            (n, inner.epoch, origin)
        };
        let params = negotiated.params;
        let rate = params.rate;
        let frame_bytes = params.frame_bytes().max(1);

        // Where the device is.
        let Some((position, mut room)) = self.look_at_sink(local, &params) else {
            return true;
        };
        let waiting = !self.lock().written.is_empty();
        if let Some(p) = position {
            local.line.lead = lead_frames(p.keep, &params);
        }
        let before = local.line.played;
        let played = local
            .line
            .observe(position.map(|p| p.played), now, rate, waiting);
        let moved = played > before;
        // What counts as played for completions.
        let due_at = played.saturating_add(local.line.lead);
        if position.is_some() {
            if let Some(ppm) = local.line.rate_ppm(played, now, origin, rate) {
                self.lock().stats.rate_ppm = ppm;
            }
        }

        // What it has played completes, in order, under one pass.
        let Some(q) = queue.as_ref() else {
            return false;
        };
        {
            let Some(pass) = q.gate().enter() else {
                return false;
            };
            let mut took = false;
            while let Some((w, latency)) = self.take_played(epoch, due_at, now, frame_bytes) {
                took = true;
                let status = if w.msg.failed() {
                    Status::IoErr
                } else {
                    Status::Ok
                };
                w.msg
                    .complete(q.as_ref(), &pass, Direction::Output, status, latency, 0);
            }
            if took {
                self.set_idle();
            }
        }

        // What the guest has queued goes to the device, as far as it has
        // room (all of it, but for a guest buffer larger than the PCM's).
        let chunk = chunk_bytes(&params, scratch.len());
        loop {
            let next = {
                let inner = self.lock();
                if inner.state != PcmState::Started || inner.epoch != epoch {
                    break;
                }
                let Some(m) = inner.pending.front() else {
                    break;
                };
                let frames = u64::from(m.payload() / frame_bytes);
                let fits = match room {
                    Some(r) => u64::try_from(r).unwrap_or(0) >= frames,
                    None => true,
                };
                (fits || inner.written.is_empty()).then_some(frames)
            };
            let Some(frames) = next else {
                break;
            };
            let Some(pass) = q.gate().enter() else {
                return false;
            };
            let taken = {
                let mut inner = self.lock();
                if inner.state == PcmState::Started && inner.epoch == epoch {
                    let m = inner.pending.pop_front();
                    inner.busy = m.is_some();
                    m
                } else {
                    None
                }
            };
            let Some(mut msg) = taken else {
                break;
            };
            let len = msg.payload() as usize;
            let read = self.read_first_chunk(&mut msg, scratch, chunk, &params);
            if read.is_none() {
                msg.mark_failed();
            }
            let head = msg.head();
            self.put_back(msg, epoch);
            drop(pass);
            if let Some(n) = read {
                let mut at = Resume::new(epoch, head, len);
                at.pending = n;
                local.line.last_end = None;
                if let HostIo::Replaced = self.play(local, scratch, Some(q), &params, at) {
                    return true;
                }
                if local.resume.is_some() {
                    // The ring stopped in the middle of it: the rest is
                    // handed over when it runs again.
                    return false;
                }
            }
            let mut inner = self.lock();
            if inner.epoch != epoch {
                break;
            }
            if let Some(msg) = inner.current.take() {
                hand_over(&mut inner, &mut local.line, msg, frame_bytes);
            }
            drop(inner);
            room = match room {
                Some(r) => Some(r.saturating_sub(i64::try_from(frames).unwrap_or(i64::MAX))),
                // Not known before the device started (its first write
                // puts its cushion ahead): asked now.
                None => match self.look_at_sink(local, &params) {
                    Some((_, room)) => room,
                    None => return true,
                },
            };
        }

        // Look again when the oldest will have played (a little after, for
        // a device up to 1,000 ppm slow), and at least once a period, to
        // take the guest's new buffers.
        let period_ns = ns_for(u64::from(params.period_bytes / frame_bytes), rate).max(1);
        let mut inner = self.lock();
        let wait = match inner.written.front() {
            Some(w) => {
                let ns = ns_for(w.end.saturating_sub(due_at), rate);
                let ns = ns.saturating_add(ns / 1000).saturating_add(50_000);
                // A device that did not move since the last look (a card
                // whose position moves a period at a time, one stalled) is
                // not asked again at once.
                let ns = if moved { ns } else { ns.max(period_ns / 4) };
                ns.max(w.not_before.saturating_sub(now))
            }
            None => period_ns,
        };
        if inner.state == PcmState::Started && inner.epoch == epoch {
            inner.due = now.saturating_add(wait.clamp(MIN_WAIT_NS.min(period_ns), period_ns));
        }
        false
    }

    /// A playback endpoint's position and room (each `None` if it has no
    /// endpoint or cannot say); `None` if this worker was replaced.
    fn look_at_sink(
        &self,
        local: &mut WorkerLocal,
        params: &StreamParams,
    ) -> Option<(Option<vsound_devices::Position>, Option<i64>)> {
        let (mut position, mut room) = (None, None);
        if self.endpoint.is_attached() {
            let io = self.host_call(local, params, false, false, |ep| match ep {
                Endpoint::Playback(s) => {
                    position = s.position();
                    room = s.fill_frames().map(|f| f.room);
                    Ok(s.latency_bytes())
                }
                Endpoint::Capture(_) => Err(DeviceError::Gone),
            });
            if let HostIo::Replaced = io {
                return None;
            }
        }
        Some((position, room))
    }

    /// Reads a tx message's first chunk into the copy buffer, with the
    /// stream's gain, under a pass the caller holds: its length, or `None`
    /// if guest memory refused the copy.
    fn read_first_chunk(
        &self,
        msg: &mut IoMessage,
        scratch: &mut [u8],
        chunk: usize,
        params: &StreamParams,
    ) -> Option<usize> {
        let n = chunk.min(msg.payload() as usize);
        let buf = scratch.get_mut(..n)?;
        let ok = msg.read_pcm(0, buf).is_ok();
        crate::controls::apply(self.gain(), params.format, buf);
        ok.then_some(n)
    }

    /// Takes the oldest message a device on its own clock was given if it
    /// has played (its end at or before `played`), counted, with the
    /// stream marked busy until [`StreamRuntime::set_idle`].
    fn take_played(
        &self,
        epoch: u64,
        played: u64,
        now: u64,
        frame_bytes: u32,
    ) -> Option<(Written, u32)> {
        let mut inner = self.lock();
        if inner.state != PcmState::Started || inner.epoch != epoch {
            return None;
        }
        if inner
            .written
            .front()
            .is_none_or(|w| w.end > played || w.not_before > now)
        {
            return None;
        }
        let w = inner.written.pop_front()?;
        inner
            .stats
            .count(!w.msg.failed(), w.msg.payload(), frame_bytes);
        inner.busy = true;
        Some((w, inner.stats.latency_bytes))
    }

    /// Clears `busy` and wakes whoever waits for it.
    fn set_idle(&self) {
        let waiters = {
            let mut inner = self.lock();
            inner.busy = false;
            inner.idle_waiters > 0
        };
        if waiters {
            self.idle.notify_all();
        }
    }

    /// `completed`: whether the message completed this tick was OK, and its
    /// payload bytes.
    fn finish_tick(
        &self,
        next: Option<IoMessage>,
        completed: Option<(bool, u32)>,
        negotiated: &Negotiated,
        shared: &Shared,
    ) {
        let mut xrun = false;
        let mut orphan = None;
        let waiters = {
            let mut inner = self.lock();
            inner.busy = false;
            if let Some((ok, bytes)) = completed {
                inner
                    .stats
                    .count(ok, bytes, negotiated.params.frame_bytes());
            }
            let period = u64::from(negotiated.params.period_bytes);
            let advance = match &next {
                Some(m) => {
                    // More buffers after running dry: the guest heard a gap.
                    if std::mem::take(&mut inner.in_xrun) && inner.state == PcmState::Started {
                        inner.stats.xruns += 1;
                    }
                    u64::from(m.payload())
                }
                None => {
                    if !inner.in_xrun {
                        inner.in_xrun = true;
                        xrun = negotiated.features & pcm_features::EVT_XRUNS != 0;
                    }
                    period
                }
            };
            match inner.state {
                PcmState::Started | PcmState::Stopped | PcmState::Prepared => {
                    inner.current = next;
                    if let Some(s) = inner.schedule.as_mut() {
                        inner.due = s.advance(advance.max(1));
                    }
                }
                // Released or reset while we copied (RELEASE waits for
                // `busy`, so only a teardown that gave up waiting gets here).
                _ => orphan = next,
            }
            inner.idle_waiters > 0
        };
        if waiters {
            self.idle.notify_all();
        }
        if let Some(m) = orphan {
            self.complete_all([m], Status::IoErr);
        }
        if xrun {
            log::debug!("stream {}: xrun", self.id);
            shared.send_event(EventType::PcmXrun, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsound_devices::Format;

    const MS: u64 = 1_000_000;

    fn params(periods: u32) -> StreamParams {
        StreamParams {
            format: Format::S16,
            rate: 48_000,
            channels: 2,
            period_bytes: 1920,
            buffer_bytes: 1920 * periods,
        }
    }

    #[test]
    fn a_guest_buffer_that_covers_the_device_completes_nothing_early() {
        // A 35 ms cushion (1,680 frames): 8 periods of 10 ms leave 60 ms in
        // the device at the lowest, 4 leave 20 ms (15 ms short).
        assert_eq!(lead_frames(1680, &params(8)), 0);
        assert_eq!(lead_frames(1680, &params(4)), 1680 - 960);
        assert_eq!(lead_frames(1680, &params(2)), 1680);
        assert_eq!(lead_frames(0, &params(4)), 0);
    }

    #[test]
    fn the_timeline_follows_the_device_and_never_goes_back() {
        let mut line = Timeline::default();
        line.restart(1000 * MS);
        assert_eq!(line.observe(Some(480), 1010 * MS, 48_000, true), 480);
        // A device whose count drops (an underrun's new cushion) does not
        // take the timeline back.
        assert_eq!(line.observe(Some(400), 1020 * MS, 48_000, true), 480);
        assert_eq!(line.observe(Some(1440), 1030 * MS, 48_000, true), 1440);
    }

    #[test]
    fn without_a_device_the_timeline_runs_on_at_the_nominal_rate() {
        let mut line = Timeline::default();
        line.restart(1000 * MS);
        line.observe(Some(4800), 1100 * MS, 48_000, true);
        // 50 ms on: 2,400 frames more.
        assert_eq!(line.observe(None, 1150 * MS, 48_000, true), 7200);
        // Not known yet (no look since the open): it stays.
        let fresh = Timeline::default();
        assert_eq!(fresh.estimate(5000 * MS, 48_000), 0);
    }

    #[test]
    fn a_device_still_for_a_second_with_buffers_waiting_is_taken_to_run_on() {
        let mut line = Timeline::default();
        line.restart(1000 * MS);
        assert_eq!(line.observe(Some(480), 1010 * MS, 48_000, true), 480);
        // Still, but within the bound: it is waited for.
        assert_eq!(line.observe(Some(480), 1900 * MS, 48_000, true), 480);
        // Still for more than a second: on at the nominal rate from the
        // last look (200 ms: 9,600 frames).
        assert_eq!(line.observe(Some(480), 2100 * MS, 48_000, true), 480 + 9600);
        // Nothing waiting: a still device is no stall.
        let mut idle = Timeline::default();
        idle.restart(1000 * MS);
        idle.observe(Some(480), 1010 * MS, 48_000, false);
        assert_eq!(idle.observe(Some(480), 3000 * MS, 48_000, false), 480);
    }

    #[test]
    fn a_restart_after_a_pause_does_not_count_the_pause_as_play() {
        let mut line = Timeline::default();
        line.restart(1000 * MS);
        line.observe(None, 1010 * MS, 48_000, true);
        let at_pause = line.played;
        // Ten seconds paused, then running again, no device.
        line.restart(11_010 * MS);
        assert_eq!(
            line.observe(None, 11_020 * MS, 48_000, true),
            at_pause + 480
        );
    }

    #[test]
    fn a_new_endpoint_continues_the_count_where_the_last_one_left_it() {
        let mut line = Timeline::default();
        line.restart(1000 * MS);
        line.observe(Some(9600), 1200 * MS, 48_000, true);
        // The device went away 200 ms ago; a new one opens, counting from 0.
        line.rebase(1400 * MS, 48_000);
        assert_eq!(line.offset, 9600 + 9600);
        assert_eq!(
            line.observe(Some(480), 1410 * MS, 48_000, true),
            9600 + 9600 + 480
        );
    }

    #[test]
    fn a_message_ends_where_the_device_put_it_or_after_everything_before_it() {
        let mut line = Timeline {
            last_end: Some(3000),
            ..Timeline::default()
        };
        assert_eq!(line.end_of(480), 3000);
        // No device reading: after the last end (or what has played).
        assert_eq!(line.end_of(480), 3480);
        line.played = 10_000;
        assert_eq!(line.end_of(480), 10_480);
    }

    #[test]
    fn the_devices_rate_is_measured_from_a_second_after_start() {
        let mut line = Timeline::default();
        let start = 1000 * MS;
        assert_eq!(line.rate_ppm(24_000, start + 500 * MS, start, 48_000), None);
        // The reference, a second in.
        assert_eq!(
            line.rate_ppm(48_000, start + 1000 * MS, start, 48_000),
            None
        );
        // 2 s later, 500 ppm fast: 96,048 frames.
        assert_eq!(
            line.rate_ppm(48_000 + 96_048, start + 3000 * MS, start, 48_000),
            Some(500)
        );
    }
}
