//! The vhost-user glue: the only file that knows the device is served over
//! vhost-user. It maps the backend callbacks onto [`SoundDevice`], and it
//! watches each ring's life through its own vring type ([`Vring`]), which
//! wraps vhost-user-backend's `VringRwLock`:
//!
//! - a ring runs while it is ready (kick fd given, until GET_VRING_BASE) and
//!   enabled (SET_VRING_ENABLE); its [`RingGate`] follows. Stopping it
//!   waits for every writer to leave, so GET_VRING_BASE is answered only
//!   when nothing can touch the ring any more;
//! - when a stopped ring runs again, its state is compared with the state
//!   at the stop: the same addresses, avail index and used index mean the
//!   driver kept it (a paused VM resumed) and the streams carry on; anything
//!   else is a new driver (reboot, `system_reset`, driver reload) and the
//!   device is reset first. SET_FEATURES is not a reset;
//! - what a frontend sends is checked before it can hurt the daemon: memory
//!   regions against their file's size, ring sizes, ring placement, kick
//!   fds. A bad message ends the connection with a log line; the daemon
//!   then serves the next one.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{
    ShutdownHandle, VhostUserBackend, VringRwLock, VringState, VringStateGuard, VringStateMutGuard,
    VringT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Error as VirtQueError, QueueT};
use vm_memory::{
    ByteValued, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic,
    GuestMemoryBackend, GuestMemoryRegion, Permissions,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::EventFd;

use crate::constants::QueueIndex;
use crate::control::handle_control;
use crate::device::SoundDevice;
use crate::pacer::now_ns;
use crate::queue::{Chain, Mem, RingGate, RingPass, Virtqueue};

/// Queue size we accept at most.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// How many rings' worth of chains one kick may give the queue thread
/// before the connection is ended (see `VsoundBackend::drain`).
const CHAINS_PER_KICK_RINGS: u32 = 16;

/// How long stopping a ring waits for a writer to leave it (writers only
/// copy guest memory; this is a bound, never reached in practice).
const RING_STOP_WAIT: Duration = Duration::from_secs(1);

type GM = GuestMemoryAtomic<Mem>;

// ---------------------------------------------------------------------------
// One connection: what its rings and its backend share.

/// What one VMM connection's rings report to, and how it is ended when a
/// frontend sends something that cannot be served.
pub struct Connection {
    device: Arc<SoundDevice>,
    rings: Mutex<Vec<Vring>>,
    end: Mutex<Ending>,
    /// (the frontend has sent its first request, the connection is over)
    greeted: Mutex<(bool, bool)>,
    greeting: Condvar,
    /// Written when the connection is over (wakes [`Connection::watch`]).
    over: EventFd,
}

#[derive(Default)]
struct Ending {
    reason: Option<String>,
    handle: Option<ShutdownHandle>,
}

thread_local! {
    /// The connection whose rings are being created on this thread (the
    /// backend library creates them in `VhostUserDaemon::new`, with no way
    /// to pass them context).
    static BUILDING: RefCell<Option<Arc<Connection>>> = const { RefCell::new(None) };
}

impl Connection {
    pub fn new(device: Arc<SoundDevice>) -> io::Result<Arc<Connection>> {
        Ok(Arc::new(Connection {
            device,
            rings: Mutex::new(Vec::new()),
            end: Mutex::new(Ending::default()),
            greeted: Mutex::new((false, false)),
            greeting: Condvar::new(),
            over: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        }))
    }

    /// Runs `build` (which creates the backend library's vrings) so that
    /// every vring it creates belongs to this connection, then hands the
    /// rings to the device.
    pub fn build<T>(self: &Arc<Self>, build: impl FnOnce() -> T) -> T {
        BUILDING.with(|b| *b.borrow_mut() = Some(self.clone()));
        let out = build();
        BUILDING.with(|b| *b.borrow_mut() = None);
        let rings = self.lock_rings().clone();
        for (i, v) in rings.into_iter().enumerate() {
            let Some(qi) = u16::try_from(i).ok().and_then(QueueIndex::from_index) else {
                continue;
            };
            let _ = v.ctl.index.set(qi);
            self.device.set_queue(qi, Arc::new(VringQueue { vring: v }));
        }
        out
    }

    fn lock_rings(&self) -> MutexGuard<'_, Vec<Vring>> {
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_end(&self) -> MutexGuard<'_, Ending> {
        self.end.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection was accepted: `handle` ends it.
    pub fn set_shutdown(&self, handle: ShutdownHandle) {
        let mut end = self.lock_end();
        if end.reason.is_some() {
            handle.shutdown();
        }
        end.handle = Some(handle);
    }

    /// Ends the connection: what the frontend sent cannot be served.
    pub fn refuse(&self, reason: String) {
        let mut end = self.lock_end();
        if end.reason.is_none() {
            log::error!("ending the VMM connection: {reason}");
            end.reason = Some(reason);
        }
        if let Some(h) = &end.handle {
            h.shutdown();
        }
    }

    /// Ends the connection for a reason that is not the frontend's fault
    /// (the daemon is stopping).
    pub fn end(&self, reason: &str) {
        let mut end = self.lock_end();
        if end.reason.is_none() {
            log::info!("ending the VMM connection: {reason}");
            end.reason = Some(reason.to_owned());
        }
        if let Some(h) = &end.handle {
            h.shutdown();
        }
    }

    /// The device this connection serves.
    pub fn device(&self) -> &Arc<SoundDevice> {
        &self.device
    }

    /// Why the connection was ended by the daemon, if it was.
    pub fn refused(&self) -> Option<String> {
        self.lock_end().reason.clone()
    }

    fn greet(&self) {
        let mut g = self.greeted.lock().unwrap_or_else(|e| e.into_inner());
        if !g.0 {
            g.0 = true;
            self.greeting.notify_all();
        }
    }

    /// The connection is over: [`Connection::watch`] returns.
    pub fn set_over(&self) {
        let mut g = self.greeted.lock().unwrap_or_else(|e| e.into_inner());
        g.1 = true;
        self.greeting.notify_all();
        drop(g);
        let _ = self.over.write(1);
    }

    /// Watches the connection until it is over: ends it if the frontend
    /// says nothing within `handshake` (it would keep every other VMM
    /// out), or if its guest memory stops being backed by its file (see
    /// [`crate::sigbus`]).
    pub fn watch(&self, handshake: Duration) {
        if !self.wait_greeting(handshake) {
            self.refuse(format!("the frontend sent no request within {handshake:?}"));
            return;
        }
        let Ok(epoll) = Epoll::new() else {
            return;
        };
        let over = self.over.as_raw_fd();
        let mut fds = vec![over];
        fds.extend(crate::sigbus::notify_fd());
        for fd in &fds {
            let ev = EpollEvent::new(EventSet::IN, u64::try_from(*fd).unwrap_or(0));
            if epoll.ctl(ControlOperation::Add, *fd, ev).is_err() {
                return;
            }
        }
        let mut events = [EpollEvent::default(); 2];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for ev in events.iter().take(n) {
                if ev.fd() == over {
                    return;
                }
                // A guest-memory fault was caught.
                crate::sigbus::consume();
                self.refuse(format!(
                    "guest memory at {:#x} is no longer backed by its file (the frontend shrank it)",
                    crate::sigbus::last_fault().unwrap_or(0)
                ));
            }
        }
    }

    /// Waits (at most `timeout`) for the frontend's first request or the
    /// end of the connection; returns false if neither came.
    pub fn wait_greeting(&self, timeout: Duration) -> bool {
        let g = self.greeted.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .greeting
            .wait_timeout_while(g, timeout, |(greeted, over)| !*greeted && !*over)
            .unwrap_or_else(|e| e.into_inner());
        g.0 || g.1
    }

    /// Forgets what every ring looked like at its stop: the next start of
    /// each is a new ring.
    fn forget_stops(&self) {
        for v in self.lock_rings().iter() {
            v.ctl.lock().at_stop = None;
        }
    }

    /// Stops every ring that runs (device reset).
    fn stop_all(&self) {
        let rings = self.lock_rings().clone();
        for v in rings {
            let mut st = v.ctl.lock();
            st.enabled = false;
            v.update(&mut st);
        }
    }
}

// ---------------------------------------------------------------------------
// The vring type: vhost-user-backend's, plus the ring's life.

/// What a ring looked like when it stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RingPlace {
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

#[derive(Debug, Default)]
struct RingState {
    ready: bool,
    enabled: bool,
    at_stop: Option<RingPlace>,
}

/// A ring's life, shared by every clone of its [`Vring`].
struct RingCtl {
    index: std::sync::OnceLock<QueueIndex>,
    conn: Weak<Connection>,
    gate: RingGate,
    state: Mutex<RingState>,
    /// A stream lane takes this ring's buffers at its ticks: a drain does
    /// not turn the driver's kicks back on.
    kicks_off: AtomicBool,
    /// Completions hold their notification back (a lane's batch) while
    /// non-zero; `owed`: one was made meanwhile.
    held: std::sync::atomic::AtomicU32,
    owed: AtomicBool,
}

impl RingCtl {
    fn lock(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refuse(&self, reason: String) {
        match self.conn.upgrade() {
            Some(c) => c.refuse(reason),
            None => log::error!("{reason}"),
        }
    }
}

/// The vring type of the daemon's backend.
#[derive(Clone)]
pub struct Vring {
    inner: VringRwLock<GM>,
    /// The connection's guest memory (the same atomic the library updates).
    mem: GM,
    ctl: Arc<RingCtl>,
}

impl Vring {
    fn name(&self) -> String {
        match self.ctl.index.get() {
            Some(q) => format!("{q:?} ring"),
            None => "ring".to_string(),
        }
    }

    fn place(&self) -> RingPlace {
        let st = self.inner.get_ref();
        let q = st.get_queue();
        RingPlace {
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        }
    }

    /// Brings the gate in line with (ready && enabled).
    fn update(&self, st: &mut RingState) {
        let runs = st.ready && st.enabled;
        if runs == self.ctl.gate.is_started() {
            return;
        }
        if !runs {
            if !self.ctl.gate.stop(now_ns(), RING_STOP_WAIT) {
                log::error!(
                    "{}: a writer did not leave within {RING_STOP_WAIT:?}",
                    self.name()
                );
            }
            st.at_stop = Some(self.place());
            log::debug!("{} stopped at {:?}", self.name(), st.at_stop);
            return;
        }
        // Where the frontend put the ring must be guest memory.
        let valid = {
            let mem = self.mem.memory();
            self.inner.get_ref().get_queue().is_valid(&*mem)
        };
        if !valid {
            self.ctl.refuse(format!(
                "{}: the frontend placed it outside guest memory (or misaligned)",
                self.name()
            ));
            return;
        }
        let now = self.place();
        let stopped_at = self.ctl.gate.stopped_at().unwrap_or(0);
        let resumed = match st.at_stop.take() {
            Some(before) if before == now => Some(stopped_at),
            Some(before) => {
                log::info!(
                    "{} re-initialised by the driver ({before:?} -> {now:?}): device reset",
                    self.name()
                );
                if let Some(conn) = self.ctl.conn.upgrade() {
                    // Every other ring is new too; nothing of the old driver
                    // may be completed into them.
                    for v in conn.lock_rings().iter() {
                        if !Arc::ptr_eq(&v.ctl, &self.ctl) {
                            if let Ok(mut other) = v.ctl.state.try_lock() {
                                other.at_stop = None;
                            }
                        }
                    }
                    conn.device.reset();
                }
                None
            }
            None => None,
        };
        match (self.ctl.index.get(), self.ctl.conn.upgrade()) {
            (Some(qi), Some(conn)) => conn.device.start_ring(*qi, resumed),
            _ => self.ctl.gate.start(),
        }
    }
}

/// Whether `file` is an eventfd.
fn is_eventfd(file: &File) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

impl<'a> VringStateGuard<'a, GM> for Vring {
    type G = RwLockReadGuard<'a, VringState<GM>>;
}

impl<'a> VringStateMutGuard<'a, GM> for Vring {
    type G = RwLockWriteGuard<'a, VringState<GM>>;
}

impl VringT<GM> for Vring {
    fn new(mem: GM, max_queue_size: u16) -> Result<Self, VirtQueError> {
        let conn = BUILDING.with(|b| b.borrow().clone());
        let v = Vring {
            inner: VringRwLock::new(mem.clone(), max_queue_size)?,
            mem,
            ctl: Arc::new(RingCtl {
                index: std::sync::OnceLock::new(),
                conn: conn.as_ref().map(Arc::downgrade).unwrap_or_default(),
                gate: RingGate::new(false),
                state: Mutex::new(RingState::default()),
                kicks_off: AtomicBool::new(false),
                held: std::sync::atomic::AtomicU32::new(0),
                owed: AtomicBool::new(false),
            }),
        };
        if let Some(c) = conn {
            c.lock_rings().push(v.clone());
        }
        Ok(v)
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, GM>>::G {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, GM>>::G {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.inner.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.inner.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled);
        let mut st = self.ctl.lock();
        st.enabled = enabled;
        self.update(&mut st);
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        if self.ctl.gate.is_started() {
            // A running ring may be sent its addresses again (to change its
            // log address), not be moved.
            let p = self.place();
            if (p.desc, p.avail, p.used) == (desc_table, avail_ring, used_ring) {
                return Ok(());
            }
            self.ctl
                .refuse(format!("{}: moved while running", self.name()));
            return Err(VirtQueError::InvalidSize);
        }
        self.inner
            .set_queue_info(desc_table, avail_ring, used_ring)?;
        let fits = {
            let mem = self.mem.memory();
            let state = self.inner.get_ref();
            let q = state.get_queue();
            let n = u64::from(q.size());
            let fits = |addr: u64, len: u64, access: Permissions| {
                usize::try_from(len).is_ok_and(|len| {
                    GuestMemory::check_range(&*mem, GuestAddress(addr), len, access)
                })
            };
            // The split ring layout (spec 2.7): 16-byte descriptors, then
            // flags + idx + ring + used_event, and the same for used.
            fits(q.desc_table(), 16 * n, Permissions::Read)
                && fits(q.avail_ring(), 6 + 2 * n, Permissions::Read)
                && fits(q.used_ring(), 6 + 8 * n, Permissions::Write)
        };
        if !fits {
            log::error!(
                "{}: placed outside guest memory (desc {desc_table:#x}, avail {avail_ring:#x}, used {used_ring:#x}); refused",
                self.name()
            );
            return Err(VirtQueError::InvalidSize);
        }
        Ok(())
    }

    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        let ok = self
            .inner
            .get_mut()
            .get_queue_mut()
            .try_set_size(num)
            .is_ok();
        if !ok {
            // The library cannot refuse this message itself; a ring of
            // another size than the driver's would be read wrong.
            self.ctl.refuse(format!(
                "{}: size {num} is not a power of two up to {MAX_QUEUE_SIZE}",
                self.name()
            ));
        }
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }

    /// A stop closes the gate before the queue is marked not ready, a
    /// start marks it ready before the gate opens: a writer under a pass
    /// never finds the ring not ready (which `drain` would take for a
    /// broken ring).
    fn set_queue_ready(&self, ready: bool) {
        let mut st = self.ctl.lock();
        st.ready = ready;
        if ready {
            self.inner.set_queue_ready(true);
            self.update(&mut st);
        } else {
            self.update(&mut st);
            self.inner.set_queue_ready(false);
        }
    }

    fn set_kick(&self, file: Option<File>) {
        match file {
            Some(f) if !is_eventfd(&f) => {
                self.ctl
                    .refuse(format!("{}: the kick fd is not an eventfd", self.name()));
                self.inner.set_kick(None);
            }
            f => self.inner.set_kick(f),
        }
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }

    /// A ring that runs may have completed buffers before its call fd came
    /// (QEMU sends KICK, which starts the ring, before CALL): the driver is
    /// notified once, so that no interrupt is lost (with EVENT_IDX a missed
    /// one is never sent again).
    fn set_call(&self, file: Option<File>) {
        let given = file.is_some();
        self.inner.set_call(file);
        if given && self.ctl.gate.is_started() {
            let _ = self.inner.signal_used_queue();
        }
    }

    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file)
    }
}

// ---------------------------------------------------------------------------
// The core's queue over a vring.

/// A vring as the device core sees it.
struct VringQueue {
    vring: Vring,
}

impl Virtqueue for VringQueue {
    fn gate(&self) -> &RingGate {
        &self.vring.ctl.gate
    }

    fn size(&self) -> u16 {
        self.vring.get_ref().get_queue().size()
    }

    fn pop(&self, pass: &RingPass<'_>) -> Option<Chain> {
        debug_assert!(pass.is_for(self.gate()));
        let mem = self.vring.mem.memory();
        let mut state = self.vring.get_mut();
        state.get_queue_mut().pop_descriptor_chain(mem)
    }

    fn complete(&self, pass: &RingPass<'_>, head: u16, len: u32) {
        debug_assert!(pass.is_for(self.gate()));
        let mut state = self.vring.get_mut();
        if let Err(e) = state.add_used(head, len) {
            log::warn!("cannot return descriptor {head}: {e}");
            return;
        }
        let ctl = &self.vring.ctl;
        if ctl.held.load(Ordering::SeqCst) > 0 {
            ctl.owed.store(true, Ordering::SeqCst);
            // Announced by the release, unless it already ran.
            if ctl.held.load(Ordering::SeqCst) > 0 {
                return;
            }
            ctl.owed.store(false, Ordering::SeqCst);
        }
        Self::notify(&mut state);
    }

    fn hold_notifications(&self) {
        self.vring.ctl.held.fetch_add(1, Ordering::SeqCst);
    }

    fn release_notifications(&self) {
        let ctl = &self.vring.ctl;
        let before = ctl.held.fetch_sub(1, Ordering::SeqCst);
        if before == 0 {
            // Unbalanced: undo.
            ctl.held.store(0, Ordering::SeqCst);
        }
        if before <= 1 && ctl.owed.swap(false, Ordering::SeqCst) {
            // One gate pass covers the used-ring read and the notification.
            if let Some(_pass) = self.gate().enter() {
                Self::notify(&mut self.vring.get_mut());
            }
        }
    }

    fn flush_notifications(&self) {
        if self.vring.ctl.owed.swap(false, Ordering::SeqCst) {
            if let Some(_pass) = self.gate().enter() {
                Self::notify(&mut self.vring.get_mut());
            }
        }
    }

    fn set_kicks(&self, on: bool) -> bool {
        self.vring.ctl.kicks_off.store(!on, Ordering::SeqCst);
        let Some(_pass) = self.gate().enter() else {
            // A stopped ring: its next start drains and re-arms it.
            return on;
        };
        let mut state = self.vring.get_mut();
        if on {
            state.enable_notification().unwrap_or(true)
        } else {
            let _ = state.disable_notification();
            false
        }
    }
}

impl VringQueue {
    /// Notifies the driver if it asked to be (EVENT_IDX).
    fn notify(state: &mut vhost_user_backend::VringState<GM>) {
        match state.needs_notification() {
            Ok(false) => {}
            Ok(true) | Err(_) => {
                if let Err(e) = state.signal_used_queue() {
                    log::warn!("cannot notify the guest: {e}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The backend.

/// The vhost-user backend of one connection.
pub struct VsoundBackend {
    conn: Arc<Connection>,
    event_idx: AtomicBool,
    /// The "config space without controls" error was logged.
    warned_config: AtomicBool,
    exit: (EventConsumer, EventNotifier),
    /// The exit-event fds handed to the library: it takes them with
    /// `into_raw_fd` and never closes them, so they are closed here once the
    /// library is done with the backend (one leaked fd per connection
    /// otherwise).
    given_away: Mutex<Vec<OwnedFd>>,
}

impl VsoundBackend {
    pub fn new(conn: Arc<Connection>) -> io::Result<Self> {
        Ok(VsoundBackend {
            conn,
            event_idx: AtomicBool::new(false),
            warned_config: AtomicBool::new(false),
            exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?,
            given_away: Mutex::new(Vec::new()),
        })
    }

    fn device(&self) -> &SoundDevice {
        &self.conn.device
    }

    /// Pops every available chain of a kicked queue (the EVENT_IDX loop:
    /// notifications off while draining, back on, and drain again if the
    /// driver added more meanwhile). Each chain is handled under a pass:
    /// a ring that stops is left alone from the next chain on.
    fn drain(
        &self,
        vring: &Vring,
        q: &dyn Virtqueue,
        mut handle: impl FnMut(&RingPass<'_>, Chain),
    ) -> Result<(), VirtQueError> {
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        // Rounds in a row that took no chain although the driver's index
        // says there are more: the ring cannot be read (an index more than
        // the ring's size ahead, an avail ring at address 0), and looping
        // would spin the queue thread for ever (found by the vhost_user
        // fuzz target). One empty round is the race EVENT_IDX re-checks
        // for: a chain added just before notifications came back on.
        let mut empty_rounds = 0u32;
        // Chains taken on one kick. A driver cannot have more than a ring's
        // worth outstanding, and this thread completes only control chains
        // and refused I/O itself, so a real driver stays far below the
        // bound; a ring that keeps offering chains is one the device's own
        // writes feed (its avail ring laid on its used ring: found by the
        // vhost_user fuzz target), and looping on it would hold the queue
        // thread for ever, and with it every later VMM (the teardown joins
        // this thread).
        let bound = u32::from(q.size().max(1)).saturating_mul(CHAINS_PER_KICK_RINGS);
        let mut taken = 0u32;
        loop {
            if event_idx {
                vring.disable_notification()?;
            }
            let mut popped = false;
            loop {
                let Some(pass) = q.gate().enter() else {
                    return Ok(());
                };
                if taken >= bound {
                    self.conn.refuse(format!(
                        "{}: more than {bound} chains on one kick: the device's own writes feed the avail ring",
                        vring.name()
                    ));
                    return Ok(());
                }
                match q.pop(&pass) {
                    Some(c) => {
                        popped = true;
                        taken = taken.saturating_add(1);
                        handle(&pass, c)
                    }
                    None => break,
                }
            }
            // A lane takes this ring's buffers at its ticks: its kicks stay
            // off (see `reactor.rs`).
            if !event_idx || vring.ctl.kicks_off.load(Ordering::SeqCst) {
                break;
            }
            if !vring.enable_notification()? {
                break;
            }
            empty_rounds = if popped { 0 } else { empty_rounds + 1 };
            if empty_rounds > 1 {
                self.conn.refuse(format!(
                    "{}: the driver's avail index cannot be read as a ring",
                    vring.name()
                ));
                break;
            }
        }
        Ok(())
    }

    /// Checks that every memory region lies inside its file: a region past
    /// the end of its file would kill the daemon with SIGBUS at first touch.
    fn check_memory(mem: &Mem) -> Result<(), String> {
        for r in mem.iter() {
            let start = r.start_addr().0;
            let len = r.len();
            let Some(fo) = r.file_offset() else {
                return Err(format!("region at {start:#x} has no file"));
            };
            let meta = fo
                .file()
                .metadata()
                .map_err(|e| format!("region at {start:#x}: fstat: {e}"))?;
            if !meta.file_type().is_file() {
                return Err(format!("region at {start:#x}: not a regular file or memfd"));
            }
            let end = fo.start().checked_add(len);
            if end.is_none_or(|end| end > meta.len()) {
                return Err(format!(
                    "region at {start:#x}: {len:#x} bytes at offset {:#x} of a {:#x}-byte file",
                    fo.start(),
                    meta.len()
                ));
            }
        }
        Ok(())
    }
}

impl VhostUserBackend for VsoundBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        QueueIndex::COUNT
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    /// `VIRTIO_SND_F_CTLS` is not offered while there are no controls:
    /// QEMU's vhost-user-snd passes the bit through even when its own config
    /// space is 12 bytes (`controls=off`), and a Linux guest then reads
    /// `controls` past the end, gets garbage, and fails its probe with
    /// -ENOMEM (seen with Linux 6.12 under QEMU 10.0).
    fn features(&self) -> u64 {
        crate::sandbox::enter_library_thread();
        self.conn.greet();
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            // Large periods (e.g. 120 KiB of 6-channel FLOAT at 96 kHz)
            // take one descriptor per page: without indirect tables four
            // of them do not fit in QEMU's 64-entry queues.
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
            | if self.device().controls.defs.is_empty() {
                0
            } else {
                crate::constants::VIRTIO_SND_F_CTLS
            }
    }

    /// Not a reset: QEMU sends SET_FEATURES at every start of the device,
    /// also when a paused VM resumes with buffers in flight. A new driver is
    /// recognised by its rings (see [`Vring`]).
    fn acked_features(&self, features: u64) {
        crate::sandbox::enter_library_thread();
        log::debug!("features acked: {features:#x}");
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        crate::sandbox::enter_library_thread();
        self.conn.greet();
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
    }

    fn reset_device(&self) {
        crate::sandbox::enter_library_thread();
        log::info!("VHOST_USER_RESET_DEVICE");
        // The library disabled every ring first; stop any that still runs.
        self.conn.stop_all();
        self.conn.forget_stops();
        self.device().reset();
    }

    fn set_event_idx(&self, enabled: bool) {
        crate::sandbox::enter_library_thread();
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        crate::sandbox::enter_library_thread();
        let cfg = self.device().config_space();
        if offset == 0
            && usize::try_from(size).is_ok_and(|n| n <= crate::wire::CONFIG_SIZE_NO_CTLS)
            && !self.device().controls.defs.is_empty()
            && !self.warned_config.swap(true, Ordering::Relaxed)
        {
            // QEMU passes VIRTIO_SND_F_CTLS to the guest whatever its own
            // config space is; with 12 bytes the guest reads `controls` past
            // its end and fails to probe.
            log::error!(
                "the VMM reads a {size}-byte config space, without `controls`, but the configuration has volume controls: start QEMU with `-device vhost-user-snd-pci,...,controls=on` (or remove `volume = true`), or the guest will not find the sound card"
            );
        }
        let bytes = cfg.as_slice();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start
            .saturating_add(usize::try_from(size).unwrap_or(0))
            .min(bytes.len());
        bytes
            .get(start..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        crate::sandbox::enter_library_thread();
        // The config space is read-only for the driver (spec 5.14.4).
        crate::warn_limited!(
            crate::ratelimit::CONFIG_WRITES,
            "driver wrote the read-only config space; ignored"
        );
        Ok(())
    }

    fn update_memory(&self, mem: GM) -> io::Result<()> {
        crate::sandbox::enter_library_thread();
        // `mem` is the atomic the library just updated, `self.mem` too.
        let check = Self::check_memory(&mem.memory());
        if check.is_ok() {
            for r in mem.memory().iter() {
                if let Ok(p) = r.get_host_address(vm_memory::MemoryRegionAddress(0)) {
                    let len = usize::try_from(r.len()).unwrap_or(0);
                    if !crate::sigbus::watch(p as usize, len) {
                        log::warn!("too many memory regions to guard against truncation");
                    }
                }
            }
        }
        if let Err(why) = check {
            // Nothing may touch that memory: forget it before refusing.
            if let Ok(m) = mem.lock() {
                m.replace(Mem::new());
            }
            let reason = format!("SET_MEM_TABLE refused: {why}");
            self.conn.refuse(reason.clone());
            return Err(io::Error::other(reason));
        }
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let consumer = self.exit.0.try_clone().ok()?;
        let notifier = self.exit.1.try_clone().ok()?;
        // SAFETY: the fd is the library's from here on, but it never closes
        // it (it keeps only the raw number in its epoll set); we close this
        // number in our Drop, which runs after the library dropped the
        // epoll handler holding our backend, i.e. when nobody uses it.
        let fd = unsafe { OwnedFd::from_raw_fd(consumer.as_raw_fd()) };
        self.given_away
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(fd);
        Some((consumer, notifier))
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        crate::sandbox::enter_library_thread();
        // The library marked the ring not ready just before: its gate is
        // closed and every writer has left (see `Vring::update`).
        log::debug!("GET_VRING_BASE({queue_index})");
        Ok(())
    }

    /// An error here would end the queue thread while the connection stays
    /// up (vhost-user-backend's loop stops at the first `Err`), so nothing
    /// is returned but `Ok`: a bad event is logged and skipped.
    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        _thread: usize,
    ) -> io::Result<()> {
        // The queue thread's filter, at its first event.
        crate::sandbox::enter_library_thread();
        if evset != EventSet::IN {
            log::warn!("queue event {device_event}: unexpected event set {evset:?}");
            return Ok(());
        }
        let (Some(queue), Some(vring)) = (
            QueueIndex::from_index(device_event),
            vrings.get(usize::from(device_event)),
        ) else {
            log::warn!("unknown queue event {device_event}");
            return Ok(());
        };
        let dev = self.device();
        let Some(q) = dev.queue(queue).cloned() else {
            return Ok(());
        };
        let result = match queue {
            QueueIndex::Control => self.drain(vring, q.as_ref(), |pass, c| {
                handle_control(dev, q.as_ref(), pass, c)
            }),
            QueueIndex::Event => {
                // Only take buffers when there is something to say.
                dev.shared.events.deliver(q.as_ref());
                if self.event_idx.load(Ordering::Relaxed) && q.gate().is_started() {
                    vring.enable_notification().map(|_| ())
                } else {
                    Ok(())
                }
            }
            QueueIndex::Tx | QueueIndex::Rx => {
                self.drain(vring, q.as_ref(), |pass, c| dev.handle_io(queue, pass, c))
            }
        };
        if let Err(e) = result {
            log::warn!("{queue:?} queue: {e}");
        }
        Ok(())
    }
}

impl Drop for VsoundBackend {
    fn drop(&mut self) {
        let _ = self.exit.1.notify();
        // Closes the fds given away in `exit_event`.
        self.given_away
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
