//! The virtio-snd device core: streams, jacks and channel maps built from
//! the config, the queue handlers, the stream workers, and what the guest
//! sees when a host device goes and comes back.
//!
//! One [`SoundDevice`] serves one VMM connection; a new connection gets a
//! fresh one. It knows nothing of vhost-user: it is handed [`Virtqueue`]s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::constants::{
    pcm_features, standard_positions, Direction, EventType, QueueIndex, Status, CHMAP_MAX_SIZE,
};
use crate::controls::Controls;
use crate::hotplug::ManagedDevice;
use crate::io::{self, IoMessage};
use crate::pacer::now_ns;
use crate::queue::{RingPass, Virtqueue};
use crate::reactor::{self, Lane};
use crate::stream::PcmState;
use crate::wire::{ChmapInfo, JackInfo, VirtioSndConfig};
use crate::worker::{Shared, StreamRuntime};

/// How long the end of a connection waits for the stream workers to exit
/// (a worker inside a device call that never returns is left behind).
const JOIN_BOUND: Duration = Duration::from_secs(1);

/// A jack: one per (host device, direction) that streams use.
#[derive(Clone, Debug)]
pub struct Jack {
    pub device: usize,
    pub direction: Direction,
    pub group: u32,
}

/// A channel map: one per (group, direction).
#[derive(Clone, Debug)]
pub struct Chmap {
    pub group: u32,
    pub direction: Direction,
    pub channels: u8,
    /// Configured positions (`positions`), else the usual ones.
    pub positions: Option<Vec<u8>>,
}

/// Errors building the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("Cannot create stream {0}")]
    Stream(u32, #[source] std::io::Error),
    #[error("Cannot start a thread")]
    Spawn(#[source] std::io::Error),
    #[error("Stream {0} names device {1}, which does not exist")]
    NoDevice(u32, usize),
}

/// A thread to join at shutdown: a lane's (lane index, lane generation).
type Worker = ((usize, u64), JoinHandle<()>, Arc<Exited>);

/// Set by a lane's thread as the last thing it does, so that the end of a
/// connection waits for it on a condvar instead of polling
/// `JoinHandle::is_finished` (a poll every millisecond cost each
/// connection's end about a millisecond).
#[derive(Default)]
struct Exited {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Exited {
    /// Whether the thread got to its end before `deadline`.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            done = match self.cv.wait_timeout(done, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

/// Marks its thread's end when dropped (also when the thread unwinds).
struct ExitGuard(Arc<Exited>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        *self.0.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.0.cv.notify_all();
    }
}

/// The device behind one VMM connection.
pub struct SoundDevice {
    pub streams: Vec<Arc<StreamRuntime>>,
    pub jacks: Vec<Jack>,
    pub chmaps: Vec<Chmap>,
    pub host_devices: Vec<Arc<ManagedDevice>>,
    pub shared: Arc<Shared>,
    /// The control elements and the levels they set (the daemon's: they
    /// outlive this connection).
    pub controls: Arc<Controls>,
    /// The threads that run the streams (see `reactor.rs`): the shared
    /// reactor first (streams on devices that never block, and the hang
    /// watch over the others; there is one even with no stream of its
    /// own), then one lane per stream on a device that may block.
    pub lanes: Vec<Arc<Lane>>,
    /// Per I/O queue (tx, rx): how many lanes have a stream running on it,
    /// and so take its buffers themselves at every tick (its kicks are off
    /// while any does).
    kick_votes: Mutex<[u32; 2]>,
    workers: Mutex<Vec<Worker>>,
    /// The end of the connection: set once, before the lanes are woken.
    stopping: AtomicBool,
}

impl SoundDevice {
    /// Builds the device with fresh controls at their configured levels
    /// (see [`SoundDevice::with_controls`]).
    pub fn new(
        config: &Config,
        host_devices: &[Arc<ManagedDevice>],
    ) -> Result<Arc<SoundDevice>, DeviceError> {
        Self::with_controls(
            config,
            host_devices,
            Arc::new(Controls::from_config(config)),
        )
    }

    /// Builds the device and starts its lanes' threads (the shared reactor,
    /// and one per stream on a device that may block); its streams'
    /// volumes are `controls`' levels.
    pub fn with_controls(
        config: &Config,
        host_devices: &[Arc<ManagedDevice>],
        controls: Arc<Controls>,
    ) -> Result<Arc<SoundDevice>, DeviceError> {
        let shared = Arc::new(Shared::new());
        let mut streams = Vec::new();
        let mut jacks: Vec<Jack> = Vec::new();
        let mut chmaps: Vec<Chmap> = Vec::new();
        for (id, sc) in config.streams.iter().enumerate() {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            let dev = host_devices
                .get(sc.device)
                .cloned()
                .ok_or(DeviceError::NoDevice(id, sc.device))?;
            let rt = StreamRuntime::new(id, sc.clone(), dev, shared.clone())
                .map_err(|e| DeviceError::Stream(id, e))?;
            if let Some(level) = usize::try_from(id).ok().and_then(|i| controls.level(i)) {
                let _ = rt.level.set(level.clone());
            }
            streams.push(Arc::new(rt));
            if !jacks
                .iter()
                .any(|j| j.device == sc.device && j.direction == sc.direction)
            {
                jacks.push(Jack {
                    device: sc.device,
                    direction: sc.direction,
                    group: sc.group,
                });
            }
            match chmaps
                .iter_mut()
                .find(|c| c.group == sc.group && c.direction == sc.direction)
            {
                Some(c) => {
                    c.channels = c.channels.max(sc.channels_max);
                    if c.positions.is_none() {
                        c.positions = sc.positions.clone();
                    }
                }
                None => chmaps.push(Chmap {
                    group: sc.group,
                    direction: sc.direction,
                    channels: sc.channels_max,
                    positions: sc.positions.clone(),
                }),
            }
        }
        // The shared reactor (always: it watches the others for hangs), and
        // a lane of its own for each stream on a device whose calls may
        // block.
        let shared_members: Vec<usize> = (0..streams.len())
            .filter(|&i| streams.get(i).is_some_and(|s| !s.device.dev.may_block()))
            .collect();
        let reactor = Arc::new(
            Lane::new("vsound-reactor".into(), shared_members, false)
                .map_err(DeviceError::Spawn)?,
        );
        let _ = shared.reactor.set(reactor.clone());
        let mut lanes = vec![reactor];
        for (i, s) in streams.iter().enumerate() {
            if s.device.dev.may_block() {
                lanes.push(Arc::new(
                    Lane::new(format!("vsound-s{}", s.id), vec![i], true)
                        .map_err(DeviceError::Spawn)?,
                ));
            }
        }
        for lane in &lanes {
            for &i in &lane.members {
                if let Some(s) = streams.get(i) {
                    let _ = s.lane.set(lane.clone());
                }
            }
        }
        let dev = Arc::new(SoundDevice {
            streams,
            jacks,
            chmaps,
            host_devices: host_devices.to_vec(),
            shared,
            controls,
            lanes,
            kick_votes: Mutex::new([0; 2]),
            workers: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        for i in 0..dev.lanes.len() {
            dev.spawn_lane(&dev, i, 0)?;
        }
        for m in host_devices {
            m.set_current(Some(Arc::downgrade(&dev)));
        }
        Ok(dev)
    }

    fn spawn_lane(
        &self,
        me: &Arc<SoundDevice>,
        index: usize,
        generation: u64,
    ) -> Result<(), DeviceError> {
        let Some(lane) = self.lanes.get(index).cloned() else {
            return Ok(());
        };
        let weak = Arc::downgrade(me);
        // The shared reactor restarts hung lanes: it may spawn threads.
        let kind = if lane.may_block {
            crate::sandbox::ThreadKind::Stream
        } else {
            crate::sandbox::ThreadKind::Reactor
        };
        let exited = Arc::new(Exited::default());
        let guard = ExitGuard(exited.clone());
        let h = std::thread::Builder::new()
            .name(lane.name.clone())
            .spawn(move || {
                let _guard = guard;
                crate::sandbox::enter(kind);
                reactor::run(lane, weak, generation)
            })
            .map_err(DeviceError::Spawn)?;
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(((index, generation), h, exited));
        Ok(())
    }

    /// Whether the connection is ending (the shared reactor then exits).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The shared reactor's look at the lanes that may block (`hangs.rs`):
    /// a lane whose host call ran past its bound gets a new thread, and the
    /// device is treated as removed; the hung thread exits if the call ever
    /// returns. Returns whether a stream on such a lane is running or in a
    /// host call (then the reactor looks again in
    /// [`crate::hangs::WATCH_PERIOD_NS`]).
    pub fn check_hangs(self: &Arc<Self>) -> bool {
        let now = now_ns();
        let mut hung: Option<(usize, &Arc<StreamRuntime>, u64)> = None;
        let busy = self.shared.hangs.look(|| {
            let mut busy = false;
            for (index, lane) in self.lanes.iter().enumerate().filter(|(_, l)| l.may_block) {
                for s in lane.members.iter().filter_map(|&i| self.streams.get(i)) {
                    let call = s.host_call_age(now);
                    // A stream parked on a stopped ring (a paused VM)
                    // makes no host call: no need to look soon.
                    busy |= call.is_some()
                        || (s.lock().state == PcmState::Started && !s.ring_stopped());
                    if let Some((_, bound)) = call.filter(|(age, bound)| age > bound) {
                        if hung.is_none() {
                            hung = Some((index, s, bound));
                        }
                    }
                }
            }
            busy
        });
        let Some((index, s, bound)) = hung else {
            return busy;
        };
        let Some(lane) = self.lanes.get(index) else {
            return busy;
        };
        log::warn!(
            "stream {}: a call into device {} hung for over {} ms; treating it as removed",
            s.id,
            s.device.name,
            bound / 1_000_000
        );
        // The hung call holds the endpoint: unpublish it without waiting
        // (the stuck thread closes it if its call returns), so the removal
        // below does not stall the reactor's other streams.
        s.endpoint.detach(Duration::ZERO);
        // The device first, so the new thread never calls it.
        s.device.mark_hung();
        s.clear_host_call();
        let generation = lane.retire();
        // The hung thread is left behind: it is never joined.
        if let Err(e) = self.spawn_lane(self, index, generation) {
            log::error!("{}: {e}", lane.name);
        }
        for m in lane.members.iter().filter_map(|&i| self.streams.get(i)) {
            m.wake();
        }
        true
    }

    /// A lane starts (`off`) or stops taking `qi`'s buffers itself at its
    /// ticks: the queue's kicks are off while any lane does; when the last
    /// one stops, they are back on and the ring is drained once (a buffer
    /// added in between is not left behind).
    pub fn kick_vote(&self, qi: QueueIndex, off: bool) {
        let Some(q) = self.queue(qi).cloned() else {
            return;
        };
        let slot = usize::from(qi == QueueIndex::Rx);
        let drain = {
            let mut votes = self.kick_votes.lock().unwrap_or_else(|e| e.into_inner());
            let Some(v) = votes.get_mut(slot) else {
                return;
            };
            if off {
                *v = v.saturating_add(1);
                if *v == 1 {
                    q.set_kicks(false);
                }
                false
            } else {
                *v = v.saturating_sub(1);
                *v == 0 && q.set_kicks(true)
            }
        };
        if drain {
            self.poll_io(qi);
        }
    }

    /// The config space (spec 5.14.4).
    pub fn config_space(&self) -> VirtioSndConfig {
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX).into();
        VirtioSndConfig {
            jacks: n(self.jacks.len()),
            streams: n(self.streams.len()),
            chmaps: n(self.chmaps.len()),
            controls: n(self.controls.defs.len()),
        }
    }

    /// A control element's value changed (by the guest or the host): the
    /// guest is told (`VIRTIO_SND_EVT_CTL_NOTIFY`, mask VALUE), so its
    /// mixers show the new value.
    pub fn control_changed(&self, id: u32) {
        let data = (id & 0xffff) | (crate::control::CTL_EVT_MASK_VALUE << 16);
        self.shared.send_event(EventType::CtlNotify, data);
    }

    /// Hands the device its queues (once per connection).
    pub fn set_queue(&self, index: QueueIndex, queue: Arc<dyn Virtqueue>) {
        if let Some(slot) = self.shared.queues.get(index as usize) {
            let _ = slot.set(queue);
        }
    }

    pub fn queue(&self, index: QueueIndex) -> Option<&Arc<dyn Virtqueue>> {
        self.shared.queue(index)
    }

    /// The jack info of a jack.
    pub fn jack_info(&self, jack: &Jack) -> JackInfo {
        // HDA pin default configuration (HDA spec 7.3.3.31): port
        // connectivity "jack" (0), location external/rear, device LineOut
        // (0) or LineIn (8), connection 1/8" (1), colour green/pink,
        // association 1, sequence 0.
        let (device, color) = match jack.direction {
            Direction::Output => (0x0u32, 0x4u32),
            Direction::Input => (0x8, 0x9),
        };
        let defconf = (0x01 << 24) | (device << 20) | (0x1 << 16) | (color << 12) | (1 << 4);
        let attached = self
            .host_devices
            .get(jack.device)
            .is_some_and(|d| d.is_present());
        JackInfo {
            hda_fn_nid: jack.group.into(),
            features: 0.into(),
            hda_reg_defconf: defconf.into(),
            // Presence detect capable (HDA pin capabilities bit 2).
            hda_reg_caps: (1u32 << 2).into(),
            connected: u8::from(attached),
            padding: [0; 7],
        }
    }

    pub fn chmap_info(&self, c: &Chmap) -> ChmapInfo {
        ChmapInfo {
            hda_fn_nid: c.group.into(),
            direction: c.direction.code(),
            channels: c
                .positions
                .as_ref()
                .and_then(|p| u8::try_from(p.len()).ok())
                .unwrap_or(c.channels)
                .min(CHMAP_MAX_SIZE as u8),
            positions: match &c.positions {
                Some(p) => {
                    let mut out = [0u8; CHMAP_MAX_SIZE];
                    for (slot, pos) in out.iter_mut().zip(p) {
                        *slot = *pos;
                    }
                    out
                }
                None => standard_positions(c.channels),
            },
        }
    }

    fn jack_events(&self, device: usize, kind: EventType) {
        for (id, j) in self.jacks.iter().enumerate() {
            if j.device == device {
                self.shared
                    .send_event(kind, u32::try_from(id).unwrap_or(u32::MAX));
            }
        }
    }

    /// A host device went away (rules 5 and 6): close its streams'
    /// endpoints (the buffer being played when it went is answered IO_ERR,
    /// and so is every buffer until it is back), tell the guest through its
    /// jacks and, where negotiated, PCM_XRUN.
    pub fn device_removed(&self, device: usize) {
        for s in self.streams.iter().filter(|s| s.device.index == device) {
            s.close_endpoint();
            let xrun = {
                let mut inner = s.lock();
                if let Some(m) = inner.current.as_mut() {
                    m.mark_failed();
                }
                // Given to the device, not all heard.
                for w in inner.written.iter_mut() {
                    w.msg.mark_failed();
                }
                inner.state == PcmState::Started
                    && inner
                        .negotiated
                        .is_some_and(|n| n.features & pcm_features::EVT_XRUNS != 0)
            };
            if xrun {
                self.shared.send_event(EventType::PcmXrun, s.id);
            }
        }
        self.jack_events(device, EventType::JackDisconnected);
    }

    /// A host device is back (rule 7): JACK_CONNECTED, and running streams
    /// move back onto it at their next period.
    pub fn device_returned(&self, device: usize) {
        self.jack_events(device, EventType::JackConnected);
        for s in self.streams.iter().filter(|s| s.device.index == device) {
            s.reopen_soon();
        }
    }

    /// Handles one tx or rx message: queue it on its stream, or refuse it
    /// with IO_ERR at once (unknown stream, wrong queue, not prepared).
    /// `pass` is the queue's: the chain came from it.
    pub fn handle_io(&self, queue: QueueIndex, pass: &RingPass<'_>, chain: crate::queue::Chain) {
        let dir = match queue {
            QueueIndex::Tx => Direction::Output,
            QueueIndex::Rx => Direction::Input,
            _ => return,
        };
        let Some(q) = self.queue(queue) else {
            return;
        };
        let (stream_id, msg) = match IoMessage::parse(chain, dir, q.size()) {
            Ok(x) => x,
            Err(refused) => return io::refuse(q.as_ref(), pass, refused),
        };
        let stream = usize::try_from(stream_id)
            .ok()
            .and_then(|i| self.streams.get(i));
        let Some(stream) = stream.filter(|s| s.direction() == dir) else {
            log::debug!(
                "{} message for stream {stream_id}: not a stream of this queue",
                dir.name()
            );
            return msg.complete(q.as_ref(), pass, dir, Status::IoErr, 0, 0);
        };
        if msg.payload() == 0 {
            return msg.complete(q.as_ref(), pass, dir, Status::IoErr, 0, 0);
        }
        let mut inner = stream.lock();
        if !inner.state.accepts_io() {
            drop(inner);
            log::debug!("stream {stream_id}: I/O refused in this state");
            return msg.complete(q.as_ref(), pass, dir, Status::IoErr, 0, 0);
        }
        // A message larger than the negotiated buffer is not PCM of this
        // stream (and would make the worker's copy buffer grow at the
        // guest's will).
        let limit = inner.negotiated.map_or(0, |n| n.params.buffer_bytes);
        if msg.payload() > limit {
            drop(inner);
            log::debug!(
                "stream {stream_id}: {}-byte message over the {limit}-byte buffer",
                msg.payload()
            );
            return msg.complete(q.as_ref(), pass, dir, Status::IoErr, 0, 0);
        }
        inner.pending.push_back(msg);
    }

    /// Takes every message available on an I/O queue now.
    pub fn poll_io(&self, queue: QueueIndex) {
        let Some(q) = self.queue(queue).cloned() else {
            return;
        };
        while let Some(pass) = q.gate().enter() {
            let Some(chain) = q.pop(&pass) else {
                break;
            };
            self.handle_io(queue, &pass, chain);
        }
    }

    /// A ring runs again. `resumed`: it had been stopped at that time and
    /// its driver kept it (a paused VM resumed): the streams on it move
    /// their schedules by the pause, and what they hold plays on. Otherwise
    /// it is a new ring (the first start, or after [`SoundDevice::reset`]).
    pub fn start_ring(&self, qi: QueueIndex, resumed: Option<u64>) {
        let Some(q) = self.queue(qi).cloned() else {
            return;
        };
        let now = now_ns();
        if let Some(stopped_at) = resumed {
            for s in self.streams.iter().filter(|s| s.queue_index() == qi) {
                let mut inner = s.lock();
                if let Some(sched) = inner.schedule.as_mut() {
                    // A stream started while its ring was stopped owes
                    // nothing for the time before its start.
                    let pause = now.saturating_sub(stopped_at.max(sched.start_ns()));
                    sched.shift(pause);
                    inner.due = inner.due.saturating_add(pause);
                }
            }
            log::debug!(
                "{qi:?} ring resumed after {} ms",
                now.saturating_sub(stopped_at) / 1_000_000
            );
        }
        q.gate().start();
        self.shared.flush_deferred(qi);
        for s in self.streams.iter().filter(|s| s.queue_index() == qi) {
            s.wake();
        }
        if qi == QueueIndex::Event {
            self.shared.events.deliver(q.as_ref());
        }
    }

    /// A device reset (a driver reload, a guest reboot, `system_reset`):
    /// the next driver gets a fresh device. Every ring must be stopped: the
    /// buffers the old driver left are dropped without a byte written into
    /// guest memory (it belongs to the next driver now), and so are
    /// undelivered events and deferred completions.
    pub fn reset(&self) {
        let mut dropped = self.shared.drop_deferred();
        for s in &self.streams {
            let spare = StreamRuntime::spare();
            let mut inner = s.lock_idle();
            if inner.state != PcmState::Idle {
                log::debug!("stream {}: {} -> Idle (device reset)", s.id, inner.state);
            }
            let held = StreamRuntime::take_all(&mut inner, spare);
            inner.state = PcmState::Idle;
            inner.negotiated = None;
            inner.schedule = None;
            inner.in_xrun = false;
            drop(inner);
            dropped += held.len();
            drop(held);
            s.close_endpoint();
            s.wake();
        }
        self.shared.events.clear();
        log::info!("device reset: {dropped} buffers of the previous driver dropped");
    }

    /// Completes every buffer the streams hold (IO_ERR: their frames were
    /// not played or recorded), now or, for a stopped ring, when it runs
    /// again. The streams keep their state. For a daemon that is stopping
    /// while a guest runs: no buffer is left in the device. Returns how
    /// many were completed or deferred.
    pub fn return_held(&self) -> usize {
        let mut n = 0;
        for s in &self.streams {
            let spare = StreamRuntime::spare();
            let mut inner = s.lock_idle();
            let held = StreamRuntime::take_all(&mut inner, spare);
            drop(inner);
            n += held.len();
            s.complete_all(held, Status::IoErr);
            s.wake();
        }
        n
    }

    /// Stops every worker and closes every endpoint (end of connection).
    /// Waits at most [`JOIN_BOUND`] for the threads: one stuck in a device
    /// call is left behind (it exits if the call ever returns).
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(r) = self.lanes.first() {
            r.wake();
        }
        for m in &self.host_devices {
            m.set_current(None);
        }
        for s in &self.streams {
            let spare = StreamRuntime::spare();
            let mut inner = s.lock_idle();
            inner.quit = true;
            let held = StreamRuntime::take_all(&mut inner, spare);
            drop(inner);
            drop(held);
            s.close_endpoint();
            s.wake();
        }
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let me = std::thread::current().id();
        let deadline = Instant::now() + JOIN_BOUND;
        for ((lane, generation), w, exited) in workers {
            let current = self
                .lanes
                .get(lane)
                .is_some_and(|l| l.generation() == generation);
            // A retired worker may still hang in its device: not joined.
            if !current || w.thread().id() == me {
                continue;
            }
            // Past its guard, the thread only returns: the join is short.
            if exited.wait_until(deadline) {
                let _ = w.join();
            } else {
                log::warn!(
                    "thread {} did not exit within {JOIN_BOUND:?} (stuck in a device call); left behind",
                    w.thread().name().unwrap_or("?")
                );
            }
        }
    }
}

impl Drop for SoundDevice {
    fn drop(&mut self) {
        self.shutdown();
    }
}
