//! One stream at run time: its shared state, and the worker thread that
//! moves its buffers in real time.
//!
//! Threads: the queue thread (vhost-user) answers control requests and
//! queues I/O messages here; the stream's worker wakes at each due time,
//! completes the buffer that was being played (or fills the one being
//! recorded), and takes the next one. The stream lock is held only to move
//! messages and the host endpoint in and out of [`Inner`], never across host
//! I/O or guest-memory copies: the worker marks itself `busy` while it holds
//! them, and whoever needs everything back (RELEASE, reset) waits on
//! `idle` for that flag to clear.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;
use vsound_devices::{CaptureSource, DeviceError, HostDevice, PlaybackSink, StreamParams};

use crate::config::StreamConfig;
use crate::constants::{pcm_features, Direction, EventType, QueueIndex, Status};
use crate::events::EventQueue;
use crate::io::IoMessage;
use crate::pacer::{now_ns, tighten_timer_slack, wait_fd_until, Schedule};
use crate::queue::Virtqueue;
use crate::stream::PcmState;

/// How long RELEASE or a reset waits for the worker to hand back a buffer.
/// The worker never blocks on a host device, so this is never reached in
/// practice; it bounds the wait if a device breaks that contract.
const BUSY_WAIT: Duration = Duration::from_millis(200);

/// Scratch size for copying PCM between guest memory and a host device.
const SCRATCH_BYTES: usize = 64 * 1024;

/// How often a running stream retries opening a device that came back.
const REOPEN_INTERVAL_NS: u64 = 100_000_000;

/// What a worker keeps between ticks, outside the stream lock.
struct WorkerLocal {
    /// Copy buffer between guest memory and the host device, allocated once.
    scratch: Vec<u8>,
    /// No reopen attempt before this time.
    next_open_ns: u64,
}

/// The outcome of moving one message's PCM.
struct Moved {
    status: Status,
    /// The device reported it is gone.
    gone: bool,
}

/// Parameters the guest negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub params: StreamParams,
    pub features: u32,
}

/// The host side of a prepared stream.
pub enum Endpoint {
    None,
    Playback(Box<dyn PlaybackSink>),
    Capture(Box<dyn CaptureSource>),
}

impl Endpoint {
    fn latency_bytes(&self) -> u32 {
        match self {
            Endpoint::None => 0,
            Endpoint::Playback(s) => s.latency_bytes(),
            Endpoint::Capture(s) => s.latency_bytes(),
        }
    }
}

/// Counters reported by the daemon.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub bytes: u64,
    pub xruns: u64,
}

/// What the stream lock protects.
pub struct Inner {
    pub state: PcmState,
    pub negotiated: Option<Negotiated>,
    /// Messages waiting their turn, oldest first.
    pub pending: VecDeque<IoMessage>,
    /// The message being played (tx) or recorded (rx) until `due`.
    pub current: Option<IoMessage>,
    pub endpoint: Endpoint,
    pub schedule: Option<Schedule>,
    /// When the worker next has work (while started).
    pub due: u64,
    /// The worker holds messages or the endpoint outside the lock.
    pub busy: bool,
    /// In an underrun/overrun episode (one XRUN event per episode).
    pub in_xrun: bool,
    pub quit: bool,
    pub stats: Stats,
}

/// Everything the streams of one device share.
pub struct Shared {
    pub queues: [OnceLock<Arc<dyn Virtqueue>>; QueueIndex::COUNT],
    pub events: EventQueue,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            queues: Default::default(),
            events: EventQueue::default(),
        }
    }

    pub fn queue(&self, q: QueueIndex) -> Option<&Arc<dyn Virtqueue>> {
        self.queues.get(q as usize).and_then(|c| c.get())
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
    pub device: Arc<dyn HostDevice>,
    pub device_name: String,
    shared: Arc<Shared>,
    inner: Mutex<Inner>,
    idle: Condvar,
    wake: EventFd,
}

impl StreamRuntime {
    pub fn new(
        id: u32,
        config: StreamConfig,
        device: Arc<dyn HostDevice>,
        device_name: String,
        shared: Arc<Shared>,
    ) -> std::io::Result<Self> {
        Ok(StreamRuntime {
            id,
            config,
            device,
            device_name,
            shared,
            inner: Mutex::new(Inner {
                state: PcmState::Idle,
                negotiated: None,
                pending: VecDeque::with_capacity(64),
                current: None,
                endpoint: Endpoint::None,
                schedule: None,
                due: 0,
                busy: false,
                in_xrun: false,
                quit: false,
                stats: Stats::default(),
            }),
            idle: Condvar::new(),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
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

    /// Returns messages to the guest with `status` (rx ones filled with
    /// whatever they hold: they are flushed, not recorded).
    pub fn complete_all(&self, held: impl IntoIterator<Item = IoMessage>, status: Status) {
        let Some(q) = self.queue() else {
            return;
        };
        for m in held {
            let bytes = m.payload();
            m.complete(q.as_ref(), self.direction(), status, 0, bytes);
        }
    }

    /// Locks the stream state (poisoning is not fatal: the state is plain
    /// data and every writer leaves it consistent).
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the stream and waits (bounded) until the worker holds nothing.
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

    /// Takes every message the stream holds (for RELEASE or a reset).
    pub fn take_all(inner: &mut Inner) -> impl Iterator<Item = IoMessage> {
        let current = inner.current.take();
        let pending = std::mem::take(&mut inner.pending);
        current.into_iter().chain(pending)
    }

    /// The worker thread's body.
    pub fn run(self: Arc<Self>) {
        let shared = self.shared.clone();
        tighten_timer_slack();
        let mut local = WorkerLocal {
            scratch: vec![0u8; SCRATCH_BYTES],
            next_open_ns: 0,
        };
        loop {
            let due = {
                let inner = self.lock();
                if inner.quit {
                    return;
                }
                (inner.state == PcmState::Started).then_some(inner.due)
            };
            match wait_fd_until(self.wake.as_raw_fd(), due) {
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
            self.tick(&shared, &mut local);
        }
    }

    /// One due time: finish the current message, start the next.
    fn tick(&self, shared: &Shared, local: &mut WorkerLocal) {
        let dir = self.direction();
        let (finished, mut next, mut endpoint, negotiated) = {
            let mut inner = self.lock();
            if inner.state != PcmState::Started || now_ns() < inner.due {
                return;
            }
            let Some(negotiated) = inner.negotiated else {
                return;
            };
            inner.busy = true;
            let finished = inner.current.take();
            let next = inner.pending.pop_front();
            let endpoint = std::mem::replace(&mut inner.endpoint, Endpoint::None);
            (finished, next, endpoint, negotiated)
        };

        let Some(queue) = shared.queue(self.queue_index()) else {
            // Unreachable: a message only exists once its queue was seen.
            self.finish_tick(None, next, endpoint, &negotiated, shared);
            return;
        };

        // Outside the lock: host I/O and guest-memory copies.
        if matches!(endpoint, Endpoint::None) {
            endpoint = self.try_reopen(&negotiated.params, local);
        }
        let mut gone = false;
        if let Some(msg) = finished {
            let status = match (&mut endpoint, dir) {
                (Endpoint::Capture(src), Direction::Input) => {
                    let r = fill_from_source(
                        &msg,
                        Some(src.as_mut()),
                        &mut local.scratch,
                        &negotiated.params,
                    );
                    gone |= r.gone;
                    r.status
                }
                (_, Direction::Input) => {
                    fill_from_source(&msg, None, &mut local.scratch, &negotiated.params).status
                }
                (_, Direction::Output) if msg.failed() => Status::IoErr,
                (_, Direction::Output) => Status::Ok,
            };
            let latency = endpoint.latency_bytes();
            let bytes = msg.payload();
            msg.complete(queue.as_ref(), dir, status, latency, bytes);
        }
        if let Some(msg) = &mut next {
            match &mut endpoint {
                Endpoint::Playback(sink) => {
                    let r = play_into_sink(msg, sink.as_mut(), &mut local.scratch);
                    gone |= r.gone;
                    if r.status != Status::Ok {
                        msg.mark_failed();
                    }
                }
                // No device: the frames go nowhere; the guest is told.
                _ if dir == Direction::Output => msg.mark_failed(),
                _ => {}
            }
        }
        if gone {
            log::info!(
                "stream {}: device {} went away; running on the daemon's clock until it returns",
                self.id,
                self.device_name
            );
            // Close is final: the endpoint is dropped here, once.
            endpoint = Endpoint::None;
            local.next_open_ns = now_ns().saturating_add(REOPEN_INTERVAL_NS);
        }
        self.finish_tick(Some(queue.as_ref()), next, endpoint, &negotiated, shared);
    }

    /// Reopens the host endpoint of a running stream whose device is back
    /// (hot-add): at most every [`REOPEN_INTERVAL_NS`], only when the device
    /// says it is attached.
    fn try_reopen(&self, params: &StreamParams, local: &mut WorkerLocal) -> Endpoint {
        let now = now_ns();
        if now < local.next_open_ns || !self.device.is_attached() {
            return Endpoint::None;
        }
        local.next_open_ns = now.saturating_add(REOPEN_INTERVAL_NS);
        let opened = match self.direction() {
            Direction::Output => self.device.open_playback(params).map(Endpoint::Playback),
            Direction::Input => self.device.open_capture(params).map(Endpoint::Capture),
        };
        match opened {
            Ok(ep) => {
                log::info!("stream {}: back on device {}", self.id, self.device_name);
                ep
            }
            Err(e) => {
                log::debug!("stream {}: reopening {}: {e}", self.id, self.device_name);
                Endpoint::None
            }
        }
    }

    fn finish_tick(
        &self,
        queue: Option<&dyn Virtqueue>,
        next: Option<IoMessage>,
        endpoint: Endpoint,
        negotiated: &Negotiated,
        shared: &Shared,
    ) {
        let mut xrun = false;
        let stale;
        {
            let mut inner = self.lock();
            inner.busy = false;
            let live = matches!(
                inner.state,
                PcmState::Started | PcmState::Stopped | PcmState::Prepared
            );
            // Put the endpoint back unless the stream was released or reset
            // meanwhile (then it is closed here, exactly once).
            stale = if live && matches!(inner.endpoint, Endpoint::None) {
                inner.endpoint = endpoint;
                None
            } else {
                Some(endpoint)
            };
            let period = u64::from(negotiated.params.period_bytes);
            let advance = match &next {
                Some(m) => {
                    inner.in_xrun = false;
                    inner.stats.bytes = inner.stats.bytes.saturating_add(u64::from(m.payload()));
                    u64::from(m.payload())
                }
                None => {
                    if !inner.in_xrun {
                        inner.in_xrun = true;
                        inner.stats.xruns += 1;
                        xrun = negotiated.features & pcm_features::EVT_XRUNS != 0;
                    }
                    period
                }
            };
            match inner.state {
                PcmState::Started | PcmState::Stopped | PcmState::Prepared => {
                    inner.current = next;
                    if let Some(s) = inner.schedule.as_mut() {
                        let due = s.advance(advance.max(1));
                        inner.due = due;
                    }
                }
                _ => {
                    // Released or reset while we were busy: nothing may be
                    // held any more. (RELEASE waits for `busy`, so this only
                    // happens on teardown paths that gave up waiting.)
                    if let (Some(m), Some(q)) = (next, queue) {
                        m.complete(q, self.direction(), Status::IoErr, 0, 0);
                    }
                }
            }
        }
        drop(stale);
        self.idle.notify_all();
        if xrun {
            log::debug!("stream {}: xrun", self.id);
            shared.send_event(EventType::PcmXrun, self.id);
        }
    }
}

/// Hands a tx message's PCM to the sink, in scratch-sized pieces.
fn play_into_sink(msg: &IoMessage, sink: &mut dyn PlaybackSink, scratch: &mut [u8]) -> Moved {
    let total = msg.payload();
    let mut off = 0u32;
    while off < total {
        let n = (total - off).min(u32::try_from(scratch.len()).unwrap_or(u32::MAX));
        let Some(buf) = scratch.get_mut(..n as usize) else {
            break;
        };
        if msg.read_pcm(off, buf).is_err() {
            log::warn!("tx message unreadable; skipped");
            return Moved {
                status: Status::IoErr,
                gone: false,
            };
        }
        match sink.write(buf) {
            Ok(()) => {}
            Err(DeviceError::Gone) => {
                return Moved {
                    status: Status::IoErr,
                    gone: true,
                }
            }
            Err(e) => {
                log::warn!("playback sink: {e}");
                return Moved {
                    status: Status::IoErr,
                    gone: false,
                };
            }
        }
        off += n;
    }
    Moved {
        status: Status::Ok,
        gone: false,
    }
}

/// Fills an rx message from the source (silence without one, and then the
/// status is IO_ERR: nothing was recorded), in scratch-sized pieces.
fn fill_from_source(
    msg: &IoMessage,
    mut src: Option<&mut dyn CaptureSource>,
    scratch: &mut [u8],
    params: &StreamParams,
) -> Moved {
    let total = msg.payload();
    let mut off = 0u32;
    let mut moved = Moved {
        status: if src.is_some() {
            Status::Ok
        } else {
            Status::IoErr
        },
        gone: false,
    };
    while off < total {
        let n = (total - off).min(u32::try_from(scratch.len()).unwrap_or(u32::MAX));
        let Some(buf) = scratch.get_mut(..n as usize) else {
            return Moved {
                status: Status::IoErr,
                gone: moved.gone,
            };
        };
        match src.as_deref_mut().map(|s| s.read(buf)) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                if matches!(e, DeviceError::Gone) {
                    moved.gone = true;
                    // The rest of this message is silence, not the device.
                    src = None;
                } else {
                    log::warn!("capture source: {e}");
                }
                params.format.fill_silence(buf);
                moved.status = Status::IoErr;
            }
            None => params.format.fill_silence(buf),
        }
        if msg.write_pcm(off, buf).is_err() {
            return Moved {
                status: Status::IoErr,
                gone: moved.gone,
            };
        }
        off += n;
    }
    moved
}
