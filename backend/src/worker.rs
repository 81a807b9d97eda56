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
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;
use vsound_devices::attach::Slot;
use vsound_devices::{CaptureSource, DeviceError, PlaybackSink, StreamParams};

use crate::config::StreamConfig;
use crate::constants::{pcm_features, Direction, EventType, QueueIndex, Status};
use crate::events::EventQueue;
use crate::hotplug::ManagedDevice;
use crate::io::IoMessage;
use crate::pacer::{now_ns, tighten_timer_slack, wait_fd_until, Schedule};
use crate::queue::Virtqueue;
use crate::stream::PcmState;

/// How long RELEASE or a reset waits for the worker to finish a
/// guest-memory copy (it never waits on a host device).
const BUSY_WAIT: Duration = Duration::from_millis(50);

/// How long a detach waits for a host call in progress to return before
/// leaving the close to the worker.
pub const DETACH_WAIT: Duration = Duration::from_millis(10);

/// A host call longer than this is a hung device (checked by the device's
/// watchdog); the stream gets a new worker and the device is removed.
pub const HANG_NS: u64 = 50_000_000;

/// Initial size of the copy buffer (grows, rarely, for larger messages).
const SCRATCH_BYTES: usize = 64 * 1024;
/// The largest copy buffer (a guest cannot make us allocate more).
const MAX_SCRATCH_BYTES: usize = 16 << 20;

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
    /// The message being played (tx) or recorded (rx) until `due`.
    pub current: Option<IoMessage>,
    pub schedule: Option<Schedule>,
    /// When the worker next has work (while started).
    pub due: u64,
    /// The worker holds messages outside the lock (guest-memory copy).
    pub busy: bool,
    /// In an underrun/overrun episode (one XRUN event per episode).
    pub in_xrun: bool,
    pub quit: bool,
    pub stats: Stats,
    /// Changes whenever the stream's messages are taken away (RELEASE, new
    /// parameters, reset): a capture the worker recorded for a message of
    /// an older epoch is not that message's.
    pub epoch: u64,
}

/// A completion that found its ring stopped: done when the ring starts
/// again, dropped unwritten if the device is reset meanwhile.
pub struct Deferred {
    pub queue: QueueIndex,
    pub msg: IoMessage,
    pub status: Status,
}

/// Everything the streams of one device share.
pub struct Shared {
    pub queues: [OnceLock<Arc<dyn Virtqueue>>; QueueIndex::COUNT],
    pub events: EventQueue,
    deferred: Mutex<Vec<Deferred>>,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            queues: Default::default(),
            events: EventQueue::default(),
            deferred: Mutex::new(Vec::new()),
        }
    }

    pub fn queue(&self, q: QueueIndex) -> Option<&Arc<dyn Virtqueue>> {
        self.queues.get(q as usize).and_then(|c| c.get())
    }

    fn deferred(&self) -> MutexGuard<'_, Vec<Deferred>> {
        self.deferred.lock().unwrap_or_else(|e| e.into_inner())
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
        let Some(q) = self.queue(qi) else {
            return;
        };
        let mut held = held.into_iter().peekable();
        if held.peek().is_none() {
            return;
        }
        match q.gate().enter() {
            Some(pass) => {
                for m in held {
                    m.complete(q.as_ref(), &pass, dir, status, 0, 0);
                }
            }
            None => {
                let mut d = self.deferred();
                for msg in held {
                    log::debug!(
                        "{:?} ring stopped: completion of {} deferred",
                        qi,
                        msg.head()
                    );
                    d.push(Deferred {
                        queue: qi,
                        msg,
                        status,
                    });
                }
            }
        }
    }

    /// Completes what waited for `qi` to run again.
    pub fn flush_deferred(&self, qi: QueueIndex) {
        let Some(q) = self.queue(qi) else {
            return;
        };
        let Some(pass) = q.gate().enter() else {
            return;
        };
        let mine: Vec<Deferred> = {
            let mut d = self.deferred();
            if d.is_empty() {
                return;
            }
            let (mine, rest) = std::mem::take(&mut *d)
                .into_iter()
                .partition(|x| x.queue == qi);
            *d = rest;
            mine
        };
        let dir = match qi {
            QueueIndex::Rx => Direction::Input,
            _ => Direction::Output,
        };
        for x in mine {
            x.msg.complete(q.as_ref(), &pass, dir, x.status, 0, 0);
        }
    }

    /// Forgets deferred completions unwritten (device reset).
    pub fn drop_deferred(&self) -> usize {
        let dropped = std::mem::take(&mut *self.deferred());
        dropped.len()
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
    wake: EventFd,
    /// The open host endpoint (attach/detach protocol).
    pub endpoint: Slot<Endpoint>,
    /// The generation of the worker that owns this stream; a worker that
    /// finds another number has been replaced (it hung) and exits.
    worker_gen: AtomicU64,
    /// When the host call in progress started (ns), 0 if none.
    io_since: AtomicU64,
    /// Try to (re)open the endpoint at the next chance (device returned).
    reopen_now: AtomicBool,
    /// The stream's volume and switch, if it has controls (set once, by
    /// the device, before the worker starts).
    pub level: std::sync::OnceLock<Arc<crate::controls::Level>>,
}

/// What a worker keeps between ticks, outside the stream lock.
struct WorkerLocal {
    /// Copy buffer between guest memory and the host device.
    scratch: Vec<u8>,
    /// No reopen attempt before this time.
    next_open_ns: u64,
    generation: u64,
    /// The endpoint's own xrun count, as last seen.
    device_xruns: u64,
    /// Frames recorded into `scratch` for a message whose ring stopped
    /// before it could be completed: used when the ring runs again.
    rx_stash: Option<RxStash>,
}

/// A capture waiting in the copy buffer for its ring to run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RxStash {
    epoch: u64,
    head: u16,
    len: usize,
    ok: bool,
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
                pending: VecDeque::with_capacity(64),
                current: None,
                schedule: None,
                due: 0,
                busy: false,
                in_xrun: false,
                quit: false,
                stats: Stats::default(),
                epoch: 0,
            }),
            idle: Condvar::new(),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            endpoint: Slot::new(),
            worker_gen: AtomicU64::new(0),
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
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the stream and waits (bounded) until the worker holds no
    /// message.
    pub fn lock_idle(&self) -> MutexGuard<'_, Inner> {
        let guard = self.lock();
        let (guard, timeout) = self
            .idle
            .wait_timeout_while(guard, BUSY_WAIT, |i| i.busy)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            log::error!("stream {}: worker still busy after {BUSY_WAIT:?}", self.id);
        }
        guard
    }

    /// Wakes the worker to look at the state again.
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }

    /// Asks the worker to open the endpoint at once (device returned).
    pub fn reopen_soon(&self) {
        self.reopen_now.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Takes every message the stream holds (for RELEASE or a reset).
    pub fn take_all(inner: &mut Inner) -> impl Iterator<Item = IoMessage> {
        inner.epoch = inner.epoch.wrapping_add(1);
        let current = inner.current.take();
        let pending = std::mem::take(&mut inner.pending);
        current.into_iter().chain(pending)
    }

    /// Closes the endpoint (RELEASE, new parameters, removal, reset).
    pub fn close_endpoint(&self) {
        self.endpoint.detach(DETACH_WAIT);
    }

    /// How long the host call in progress has been running, if one is.
    pub fn host_call_age(&self, now: u64) -> Option<u64> {
        match self.io_since.load(Ordering::SeqCst) {
            0 => None,
            t => Some(now.saturating_sub(t)),
        }
    }

    /// Retires the current worker (it hung in a host call) and returns the
    /// generation the replacement must run with.
    pub fn retire_worker(&self) -> u64 {
        self.io_since.store(0, Ordering::SeqCst);
        self.worker_gen.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The generation of the stream's current worker.
    pub fn worker_generation(&self) -> u64 {
        self.worker_gen.load(Ordering::SeqCst)
    }

    fn replaced(&self, local: &WorkerLocal) -> bool {
        self.worker_gen.load(Ordering::SeqCst) != local.generation
    }

    /// The worker thread's body.
    pub fn run(self: Arc<Self>, generation: u64) {
        let shared = self.shared.clone();
        tighten_timer_slack();
        let mut local = WorkerLocal {
            scratch: vec![0u8; SCRATCH_BYTES],
            next_open_ns: 0,
            generation,
            device_xruns: 0,
            rx_stash: None,
        };
        loop {
            if self.replaced(&local) {
                return;
            }
            let (due, state, negotiated) = {
                let inner = self.lock();
                if inner.quit {
                    return;
                }
                let due = (inner.state == PcmState::Started).then_some(inner.due);
                (due, inner.state, inner.negotiated)
            };
            // A stopped ring parks the stream: it waits to be woken when
            // the ring runs again (its schedule moved by the pause).
            let due = due.filter(|_| !self.ring_stopped());
            // A prepared or running stream without an endpoint opens one
            // here, on the worker, so a device that hangs in open cannot
            // stall the control queue.
            if matches!(
                state,
                PcmState::Prepared | PcmState::Started | PcmState::Stopped
            ) && !self.endpoint.is_attached()
            {
                if let Some(n) = negotiated {
                    if let HostIo::Replaced = self.try_open(&n.params, &mut local) {
                        return;
                    }
                }
            }
            let reopen_due = (!self.endpoint.is_attached() && state == PcmState::Prepared)
                .then_some(local.next_open_ns);
            let wait_until = match (due, reopen_due) {
                (Some(d), _) => Some(d),
                (None, Some(r)) if self.device.is_present() => Some(r),
                _ => None,
            };
            match wait_fd_until(self.wake.as_raw_fd(), wait_until) {
                Ok(true) => {
                    let _ = self.wake.read();
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    log::error!("stream {}: wait failed: {e}", self.id);
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            }
            if self.tick(&shared, &mut local) {
                return;
            }
        }
    }

    /// Opens the endpoint if the device is present (at most every
    /// [`REOPEN_INTERVAL_NS`] unless the device just returned).
    fn try_open(&self, params: &StreamParams, local: &mut WorkerLocal) -> HostIo {
        let now = now_ns();
        let asked = self.reopen_now.swap(false, Ordering::SeqCst);
        if (!asked && now < local.next_open_ns) || !self.device.is_present() {
            return HostIo::Failed;
        }
        self.io_since.store(now.max(1), Ordering::SeqCst);
        let opened = match self.direction() {
            Direction::Output => self
                .device
                .dev
                .open_playback(params)
                .map(Endpoint::Playback),
            Direction::Input => self.device.dev.open_capture(params).map(Endpoint::Capture),
        };
        self.io_since.store(0, Ordering::SeqCst);
        if self.replaced(local) {
            return HostIo::Replaced;
        }
        match opened {
            Ok(ep) => {
                log::info!("stream {}: on device {}", self.id, self.device.name);
                self.endpoint.attach(ep);
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

    /// One host call on the lent endpoint, timed for the hang watchdog.
    fn host_call(
        &self,
        local: &mut WorkerLocal,
        params: &StreamParams,
        f: impl FnOnce(&mut Endpoint) -> Result<u32, DeviceError>,
    ) -> HostIo {
        let device_xruns = |ep: &Endpoint| match ep {
            Endpoint::Playback(s) => s.xruns(),
            Endpoint::Capture(s) => s.xruns(),
        };
        if !self.endpoint.is_attached() {
            if let HostIo::Replaced = self.try_open(params, local) {
                return HostIo::Replaced;
            }
        }
        let Some(mut lent) = self.endpoint.lend() else {
            return HostIo::Failed;
        };
        self.io_since.store(now_ns().max(1), Ordering::SeqCst);
        let result = f(&mut lent.item);
        self.io_since.store(0, Ordering::SeqCst);
        if self.replaced(local) {
            // Stale: the slot closes it.
            self.endpoint.give_back(lent);
            return HostIo::Replaced;
        }
        match result {
            Ok(latency) => {
                let xruns = device_xruns(&lent.item);
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
                self.lock().stats.latency_bytes = latency;
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

    fn ensure_scratch(local: &mut WorkerLocal, len: usize) -> usize {
        let len = len.min(MAX_SCRATCH_BYTES);
        if local.scratch.len() < len {
            // Only when a message is larger than any before.
            local.scratch.resize(len, 0);
        }
        len
    }

    /// One due time. Returns true if this worker was replaced and must exit.
    ///
    /// Nothing happens while the stream's ring is stopped; the ring is
    /// written only under a pass of its gate, taken after the host call of
    /// a capture and given back before the host call of a playback.
    fn tick(&self, shared: &Shared, local: &mut WorkerLocal) -> bool {
        let dir = self.direction();
        let queue = shared.queue(self.queue_index()).cloned();
        if queue.as_ref().is_some_and(|q| !q.gate().is_started()) {
            return false;
        }
        let (negotiated, current, epoch) = {
            let inner = self.lock();
            if inner.state != PcmState::Started || now_ns() < inner.due {
                return false;
            }
            let Some(n) = inner.negotiated else {
                return false;
            };
            (
                n,
                inner
                    .current
                    .as_ref()
                    .map(|m| (m.head(), m.payload() as usize)),
                inner.epoch,
            )
        };
        let params = negotiated.params;
        let current_len = current.map_or(0, |(_, len)| len);

        // rx: record the finished message's frames first, holding no message
        // (or take what was recorded for it before its ring stopped).
        let mut rx_ok = false;
        let mut rx_len = 0;
        if dir == Direction::Input && current_len > 0 {
            let wanted = Self::ensure_scratch(local, current_len);
            let stash = local.rx_stash.take().filter(|st| {
                current.is_some_and(|(head, _)| head == st.head)
                    && st.epoch == epoch
                    && st.len == wanted
            });
            if let Some(st) = stash {
                rx_len = st.len;
                rx_ok = st.ok;
            } else {
                rx_len = wanted;
                let mut scratch = std::mem::take(&mut local.scratch);
                let io = match scratch.get_mut(..rx_len) {
                    Some(buf) => self.host_call(local, &params, |ep| match ep {
                        Endpoint::Capture(src) => src.read(buf).map(|()| src.latency_bytes()),
                        Endpoint::Playback(_) => Err(DeviceError::Gone),
                    }),
                    None => HostIo::Failed,
                };
                local.scratch = scratch;
                match io {
                    HostIo::Done => {
                        rx_ok = true;
                        if let Some(buf) = local.scratch.get_mut(..rx_len) {
                            crate::controls::apply(self.gain(), params.format, buf);
                        }
                    }
                    HostIo::Failed => {}
                    HostIo::Replaced => return true,
                }
                if !rx_ok {
                    if let Some(buf) = local.scratch.get_mut(..rx_len) {
                        params.format.fill_silence(buf);
                    }
                }
            }
        }

        // The ring may have stopped meanwhile: then nothing is written, and
        // the frames recorded wait for it.
        let pass = match &queue {
            Some(q) => match q.gate().enter() {
                Some(p) => Some(p),
                None => {
                    if let Some((head, _)) = current.filter(|_| rx_len > 0) {
                        local.rx_stash = Some(RxStash {
                            epoch,
                            head,
                            len: rx_len,
                            ok: rx_ok,
                        });
                    }
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
            self.finish_tick(next, &negotiated, shared);
            return false;
        };
        if let Some(msg) = finished {
            let (status, bytes) = match dir {
                Direction::Output if msg.failed() => (Status::IoErr, 0),
                Direction::Output => (Status::Ok, 0),
                Direction::Input => {
                    let n = (msg.payload() as usize).min(rx_len);
                    let copied = local
                        .scratch
                        .get(..n)
                        .is_some_and(|b| msg.write_pcm(0, b).is_ok());
                    let complete = n == msg.payload() as usize;
                    let ok = copied && complete && rx_ok;
                    (if ok { Status::Ok } else { Status::IoErr }, msg.payload())
                }
            };
            let payload = msg.payload();
            msg.complete(queue.as_ref(), &pass, dir, status, latency, bytes);
            self.lock()
                .stats
                .count(status == Status::Ok, payload, params.frame_bytes());
        }
        let mut tx_len = 0usize;
        if dir == Direction::Output {
            if let Some(m) = next.as_mut() {
                let n = Self::ensure_scratch(local, m.payload() as usize);
                let gain = self.gain();
                let read = match local.scratch.get_mut(..n) {
                    Some(buf) => {
                        let ok = m.read_pcm(0, buf).is_ok();
                        crate::controls::apply(gain, params.format, buf);
                        ok
                    }
                    None => false,
                };
                if read {
                    tx_len = n;
                } else {
                    m.mark_failed();
                }
            }
        }
        drop(pass);
        let head = next.as_ref().map(IoMessage::head);
        self.finish_tick(next, &negotiated, shared);

        // tx: hand the frames to the device, the message back in `current`.
        if tx_len > 0 {
            let scratch = std::mem::take(&mut local.scratch);
            let io = match scratch.get(..tx_len) {
                Some(buf) => self.host_call(local, &params, |ep| match ep {
                    Endpoint::Playback(sink) => sink.write(buf).map(|()| sink.latency_bytes()),
                    Endpoint::Capture(_) => Err(DeviceError::Gone),
                }),
                None => HostIo::Failed,
            };
            local.scratch = scratch;
            match io {
                HostIo::Done => {}
                HostIo::Replaced => return true,
                HostIo::Failed => {
                    // The frames reached no device: the guest is told.
                    let mut inner = self.lock();
                    if let Some(m) = inner.current.as_mut().filter(|m| Some(m.head()) == head) {
                        m.mark_failed();
                    }
                }
            }
        }
        false
    }

    fn finish_tick(&self, next: Option<IoMessage>, negotiated: &Negotiated, shared: &Shared) {
        let mut xrun = false;
        let mut orphan = None;
        {
            let mut inner = self.lock();
            inner.busy = false;
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
        }
        self.idle.notify_all();
        if let Some(m) = orphan {
            self.complete_all([m], Status::IoErr);
        }
        if xrun {
            log::debug!("stream {}: xrun", self.id);
            shared.send_event(EventType::PcmXrun, self.id);
        }
    }
}
