//! The reactor: one thread serves every stream of a lane from one deadline
//! heap and one absolute timer.
//!
//! A *lane* is a set of streams and the thread that runs them. Streams on
//! devices whose calls never block (null, pad, a mix of them) share one
//! lane, `vsound-reactor`; a stream on a device that may block in a call
//! (ALSA, a test device that hangs) gets a lane of its own, so a device that
//! hangs stalls only its own streams. The shared reactor, which never calls
//! anything that blocks, watches the other lanes' calls (`hangs.rs`) and
//! replaces the thread of one that hangs; it exists even with no stream of
//! its own.
//!
//! Each wake-up of a lane's thread:
//! 1. re-evaluates the streams the control path woke (START, STOP, RELEASE,
//!    a device that returned, a ring that runs again);
//! 2. takes every stream whose due time has come off the heap, in due
//!    order, and ticks it (the tick itself is `worker.rs`); on the shared
//!    reactor with the guest's notifications held, so that the completions
//!    of one wake-up reach it as one interrupt per queue;
//! 3. while one of its streams runs on a queue, leaves that queue's kicks
//!    off and takes new buffers from the ring itself before the ticks
//!    (a re-queued buffer wakes no thread);
//! 4. on the shared reactor, looks at the other lanes' host calls when its
//!    watch is due (every 25 ms while one may hang, never otherwise);
//! 5. arms its `timerfd` (`TFD_TIMER_ABSTIME`, `CLOCK_MONOTONIC`) at the
//!    earliest due time left, and sleeps in `poll` on the timer and its
//!    wake eventfd.
//!
//! The heap is allocated once (four entries per stream); an entry that
//! no longer matches its stream's armed time is stale and skipped, and a
//! full heap is compacted in place, so a wake-up allocates nothing.
//!
//! This is a loop of its own rather than vhost-user-backend's epoll
//! (`register_listener`) or `event-manager`: the lanes must run apart from
//! the vhost-user queue thread (a control request must never wait behind a
//! tick, and a lane is replaced when its device hangs, which a library's
//! event loop thread cannot be), and two file descriptors need no
//! dispatcher.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use vmm_sys_util::eventfd::EventFd;

use crate::constants::QueueIndex;
use crate::device::SoundDevice;
use crate::hangs::WATCH_PERIOD_NS;
use crate::pacer::{now_ns, tighten_timer_slack};
use crate::worker::{Next, StreamRuntime, WorkerLocal, SCRATCH_BYTES};

/// A set of streams served by one thread.
pub struct Lane {
    pub name: String,
    /// The streams (indices into the device's), in the order they are
    /// re-evaluated.
    pub members: Vec<usize>,
    /// Whether the lane's devices may block in a call (a lane of its own,
    /// its calls watched by the shared reactor). The shared reactor is the
    /// one lane without.
    pub may_block: bool,
    /// Bumped when the lane's thread is replaced (a host call hung): the
    /// old thread exits when it notices.
    generation: AtomicU64,
    /// The lane's "kicks off" votes per I/O queue (`SoundDevice::kick_vote`),
    /// kept here so that a thread replacing a hung one inherits them.
    votes: std::sync::Mutex<[bool; 2]>,
    /// Set by [`wake`](Self::wake) after the stream's own flag: the lane
    /// looks at its streams' flags only when it is set (one swap per
    /// wake-up, not one per stream).
    woken: AtomicBool,
    wake: EventFd,
    timer: OwnedFd,
}

impl Lane {
    pub fn new(name: String, members: Vec<usize>, may_block: bool) -> io::Result<Lane> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let timer = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Lane {
            name,
            members,
            may_block,
            generation: AtomicU64::new(0),
            votes: std::sync::Mutex::new([false; 2]),
            woken: AtomicBool::new(false),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            timer,
        })
    }

    /// Makes the lane's thread look at its woken streams (call it after
    /// setting the stream's flag).
    pub fn wake(&self) {
        self.woken.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// Whether a stream was woken since the last call (and clears it):
    /// cleared before the streams' flags are looked at, so a wake that
    /// comes meanwhile sets it again.
    fn take_woken(&self) -> bool {
        self.woken.swap(false, Ordering::SeqCst)
    }

    /// The generation the lane's current thread runs with.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Retires the lane's thread (it hung in a host call) and returns the
    /// generation its replacement runs with.
    pub fn retire(&self) -> u64 {
        self.generation
            .fetch_add(1, Ordering::SeqCst)
            .wrapping_add(1)
    }

    fn kicks_off(&self) -> [bool; 2] {
        *self.votes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_kicks_off(&self, v: [bool; 2]) {
        *self.votes.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }

    /// Arms the timer at `at` (absolute, `CLOCK_MONOTONIC`), or disarms it.
    fn arm(&self, at: Option<u64>) {
        let ns = at.map_or(0, |t| t.max(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(ns / 1_000_000_000).unwrap_or(libc::time_t::MAX),
                tv_nsec: libc::c_long::try_from(ns % 1_000_000_000).unwrap_or(0),
            },
        };
        // SAFETY: a valid timerfd and a valid itimerspec; the old value
        // is not asked for.
        let r = unsafe {
            libc::timerfd_settime(
                self.timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            log::error!(
                "{}: cannot arm the timer: {}",
                self.name,
                io::Error::last_os_error()
            );
        }
    }

    /// Sleeps until the timer fires or the lane is woken.
    fn sleep(&self) {
        let mut fds = [
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.timer.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                log::error!("{}: poll failed: {e}", self.name);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            return;
        }
        if fds[0].revents != 0 {
            let _ = self.wake.read();
        }
        if fds[1].revents != 0 {
            let mut expirations = [0u8; 8];
            // SAFETY: reading 8 bytes into an 8-byte buffer from a timerfd.
            let _ = unsafe {
                libc::read(
                    self.timer.as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
        }
    }
}

/// The two I/O queues, as indices into a lane's per-queue state.
const IO_QUEUES: [QueueIndex; 2] = [QueueIndex::Tx, QueueIndex::Rx];

fn io_slot(q: QueueIndex) -> usize {
    usize::from(q == QueueIndex::Rx)
}

/// The body of a lane's thread (`generation`: the lane's, at its spawn).
pub fn run(lane: Arc<Lane>, device: Weak<SoundDevice>, generation: u64) {
    tighten_timer_slack();
    let Some(dev) = device.upgrade() else {
        return;
    };
    let streams: Vec<Arc<StreamRuntime>> = lane
        .members
        .iter()
        .filter_map(|&i| dev.streams.get(i).cloned())
        .collect();
    let shared = dev.shared.clone();
    drop(dev);
    let n = streams.len();
    let mut locals: Vec<WorkerLocal> = (0..n).map(|_| WorkerLocal::new(generation)).collect();
    // When each stream is armed (the heap entry that is current), and
    // whether it runs on a started ring (for the queue's kicks).
    let mut armed: Vec<Option<u64>> = vec![None; n];
    let mut running = Running {
        of: vec![None; n],
        count: [0; 2],
        period_ns: vec![0; n],
        shortest_ns: u64::MAX,
    };
    let mut quit: Vec<bool> = vec![false; n];
    let capacity = n.saturating_mul(4).saturating_add(8);
    let mut heap: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::with_capacity(capacity);
    // Each stream's copy buffer, allocated here, once, never grown: one
    // per stream, not one per lane, because a message its ring stopped in
    // the middle of keeps its next chunk there until the ring runs again.
    let mut scratch: Vec<Box<[u8]>> = (0..n)
        .map(|_| vec![0u8; SCRATCH_BYTES].into_boxed_slice())
        .collect();
    // Whether this lane has turned each I/O queue's kicks off: the lane's,
    // so a thread that replaces a hung one goes on with its votes.
    let mut kicks_off = lane.kicks_off();
    // The shared reactor watches the other lanes' calls: when it next looks.
    let watcher = !lane.may_block;
    let mut watch_at: Option<u64> = None;

    // Every stream is looked at once at the start.
    for s in &streams {
        s.take_woken();
    }
    let mut first = true;
    loop {
        if lane.generation() != generation {
            return;
        }
        let Some(dev) = device.upgrade() else {
            return;
        };
        // 1. Streams the control path woke (all of them the first time).
        let woken = lane.take_woken() || first;
        for (slot, s) in streams.iter().enumerate().filter(|_| woken) {
            if !first && !s.take_woken() {
                continue;
            }
            let (Some(local), Some(buf)) = (locals.get_mut(slot), scratch.get_mut(slot)) else {
                continue;
            };
            match s.evaluate(&shared, local, buf) {
                Next::Replaced => return,
                Next::Quit => {
                    set(&mut quit, slot, true);
                    set(&mut armed, slot, None);
                    running.set(slot, None, || 0);
                }
                Next::At(at, run_q) => {
                    arm_stream(&mut heap, &mut armed, slot, at);
                    running.set(slot, run_q, || s.period_ns());
                }
            }
        }
        first = false;
        // A lane ends when its streams have; the shared reactor, which
        // watches the others, only with the connection.
        let ends = if watcher { dev.is_stopping() } else { n > 0 };
        if ends && quit.iter().all(|&q| q) {
            release_kicks(&dev, &mut kicks_off);
            lane.set_kicks_off(kicks_off);
            return;
        }

        // 2. and 3. Due streams, ring intake first, notifications held.
        let now = now_ns();
        if heap.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            for q in IO_QUEUES {
                if kicks_off.get(io_slot(q)).copied().unwrap_or(false) {
                    dev.poll_io(q);
                }
            }
            // Only a lane whose calls never block holds notifications: a
            // hold held across a call that hangs would hold every lane's.
            let batch = !lane.may_block;
            for q in IO_QUEUES.iter().filter(|_| batch) {
                if let Some(vq) = shared.queue(*q) {
                    vq.hold_notifications();
                }
            }
            let mut replaced = false;
            while let Some(&Reverse((t, slot))) = heap.peek() {
                if t > now {
                    break;
                }
                heap.pop();
                if armed.get(slot).copied().flatten() != Some(t) {
                    continue;
                }
                set(&mut armed, slot, None);
                let (Some(s), Some(local), Some(buf)) = (
                    streams.get(slot),
                    locals.get_mut(slot),
                    scratch.get_mut(slot),
                ) else {
                    continue;
                };
                if s.tick(&shared, local, buf) {
                    replaced = true;
                    break;
                }
                match s.evaluate(&shared, local, buf) {
                    Next::Replaced => {
                        replaced = true;
                        break;
                    }
                    Next::Quit => {
                        set(&mut quit, slot, true);
                        running.set(slot, None, || 0);
                    }
                    Next::At(at, run_q) => {
                        arm_stream(&mut heap, &mut armed, slot, at);
                        running.set(slot, run_q, || s.period_ns());
                    }
                }
            }
            for q in IO_QUEUES.iter().filter(|_| batch) {
                if let Some(vq) = shared.queue(*q) {
                    vq.release_notifications();
                }
            }
            if replaced {
                return;
            }
        }

        // 3. Kicks off while a stream of this lane runs on the queue.
        for q in IO_QUEUES {
            let want_off = running.count.get(io_slot(q)).is_some_and(|&c| c > 0);
            if let Some(k) = kicks_off.get_mut(io_slot(q)) {
                if *k != want_off {
                    *k = want_off;
                    dev.kick_vote(q, want_off);
                    lane.set_kicks_off(kicks_off);
                }
            }
        }

        // 4. The hang watch: looked at every WATCH_PERIOD_NS while a call
        // may hang; a lane whose call starts while it is off wakes us.
        if watcher {
            let now = now_ns();
            if watch_at.is_none() && shared.hangs.is_on() {
                watch_at = Some(now.saturating_add(WATCH_PERIOD_NS));
            }
            if watch_at.is_some_and(|t| t <= now) {
                watch_at = dev
                    .check_hangs()
                    .then(|| now.saturating_add(WATCH_PERIOD_NS));
            }
        }
        drop(dev);

        // 5. Sleep until the earliest due time (plus the lane's grace, to
        // serve the deadlines that follow it in the same wake-up), the
        // watch, or a wake.
        let grace = coalesce_ns(running.count.iter().sum(), running.shortest_ns);
        let next = heap.peek().map(|Reverse((t, _))| t.saturating_add(grace));
        lane.arm(match (next, watch_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        });
        lane.sleep();
    }
}

/// Running streams a lane serves each on time, its wake-up at each one's
/// deadline; beyond this many it serves a deadline up to
/// [`COALESCE_SHARE`] of the shortest running period late (200 µs for
/// 10 ms periods), several to a wake-up. Never early: only deadlines past
/// are served.
pub const COALESCE_ABOVE: usize = 64;
/// The share of the shortest running period a deadline may be served late
/// by, beyond [`COALESCE_ABOVE`] running streams (1/50: 2 %).
pub const COALESCE_SHARE: u64 = 50;

/// The grace a lane with `running` streams, the shortest of whose periods
/// is `shortest_ns`, gives its earliest deadline.
fn coalesce_ns(running: usize, shortest_ns: u64) -> u64 {
    if running > COALESCE_ABOVE && shortest_ns != u64::MAX {
        shortest_ns / COALESCE_SHARE
    } else {
        0
    }
}

/// Gives back this lane's "kicks off" votes (the lane ends).
fn release_kicks(dev: &SoundDevice, kicks_off: &mut [bool; 2]) {
    for q in IO_QUEUES {
        if let Some(k) = kicks_off.get_mut(io_slot(q)) {
            if *k {
                *k = false;
                dev.kick_vote(q, false);
            }
        }
    }
}

/// Which I/O queue each stream runs on (`None`: not running), and how many
/// run on each, so that a wake-up need not scan every stream for it.
struct Running {
    of: Vec<Option<QueueIndex>>,
    count: [usize; 2],
    /// Each running stream's period (ns; 0: not running), read when it
    /// starts to run, and the shortest of them (`u64::MAX`: none).
    period_ns: Vec<u64>,
    shortest_ns: u64,
}

impl Running {
    /// Stream `slot` runs on `q` (or not); `period_ns` gives its period,
    /// asked only when it starts to run (a stream's parameters change only
    /// while it does not).
    fn set(&mut self, slot: usize, q: Option<QueueIndex>, period_ns: impl FnOnce() -> u64) {
        let Some(e) = self.of.get_mut(slot) else {
            return;
        };
        let was = e.is_some();
        if let Some(c) = e.and_then(|old| self.count.get_mut(io_slot(old))) {
            *c = c.saturating_sub(1);
        }
        if let Some(c) = q.and_then(|new| self.count.get_mut(io_slot(new))) {
            *c = c.saturating_add(1);
        }
        *e = q;
        if was == q.is_some() {
            return;
        }
        let p = if q.is_some() { period_ns() } else { 0 };
        set(&mut self.period_ns, slot, p);
        self.shortest_ns = self
            .period_ns
            .iter()
            .copied()
            .filter(|&p| p > 0)
            .min()
            .unwrap_or(u64::MAX);
    }
}

fn set<T>(v: &mut [T], i: usize, x: T) {
    if let Some(e) = v.get_mut(i) {
        *e = x;
    }
}

/// Arms stream `slot` at `at` (or disarms it): one heap entry per armed
/// time; a full heap is compacted to the current entries first (no
/// allocation: each stream has at most one, and the heap holds four per
/// stream).
fn arm_stream(
    heap: &mut BinaryHeap<Reverse<(u64, usize)>>,
    armed: &mut [Option<u64>],
    slot: usize,
    at: Option<u64>,
) {
    let Some(current) = armed.get_mut(slot) else {
        return;
    };
    if *current == at {
        return;
    }
    *current = at;
    let Some(t) = at else {
        return;
    };
    if heap.len() >= heap.capacity() {
        heap.retain(|Reverse((t, s))| armed.get(*s).copied().flatten() == Some(*t));
    }
    heap.push(Reverse((t, slot)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_shared_only_beyond_64_running_streams_by_2_percent_of_the_shortest_period() {
        const MS: u64 = 1_000_000;
        let mut r = Running {
            of: vec![None; 70],
            count: [0; 2],
            period_ns: vec![0; 70],
            shortest_ns: u64::MAX,
        };
        let q = Some(QueueIndex::Tx);
        for slot in 0..64 {
            r.set(slot, q, || 10 * MS);
        }
        assert_eq!(
            coalesce_ns(r.count.iter().sum(), r.shortest_ns),
            0,
            "64 on time"
        );
        r.set(64, q, || 10 * MS);
        assert_eq!(coalesce_ns(r.count.iter().sum(), r.shortest_ns), 200_000);
        // A 1 ms stream: 20 us at most, for every stream of the lane.
        r.set(65, Some(QueueIndex::Rx), || MS);
        assert_eq!(coalesce_ns(r.count.iter().sum(), r.shortest_ns), 20_000);
        // Its period is read when it starts, not at each tick.
        r.set(65, Some(QueueIndex::Rx), || panic!("asked again"));
        // It stops: back to the 10 ms streams' grace; below 65, none.
        r.set(65, None, || 0);
        assert_eq!(coalesce_ns(r.count.iter().sum(), r.shortest_ns), 200_000);
        r.set(0, None, || 0);
        assert_eq!(coalesce_ns(r.count.iter().sum(), r.shortest_ns), 0);
    }

    #[test]
    fn a_full_heap_is_compacted_in_place_and_keeps_every_current_entry() {
        let mut heap = BinaryHeap::with_capacity(4);
        let cap = heap.capacity();
        let mut armed = vec![None; 2];
        // Re-arming one stream again and again leaves stale entries.
        for t in 1..=(cap as u64 * 3) {
            arm_stream(&mut heap, &mut armed, 0, Some(t));
            arm_stream(&mut heap, &mut armed, 1, Some(1000 + t));
            assert_eq!(heap.capacity(), cap, "the heap never grows");
        }
        let current: Vec<_> = heap
            .iter()
            .filter(|Reverse((t, s))| armed[*s] == Some(*t))
            .map(|Reverse(e)| *e)
            .collect();
        assert_eq!(current.len(), 2);
        assert!(current.contains(&(cap as u64 * 3, 0)));
        assert!(current.contains(&(1000 + cap as u64 * 3, 1)));
    }

    #[test]
    fn the_timer_fires_at_an_absolute_time_and_a_wake_ends_the_sleep_at_once() {
        let lane = Lane::new("t".into(), Vec::new(), false).unwrap();
        let start = now_ns();
        lane.arm(Some(start + 5_000_000));
        lane.sleep();
        let woke = now_ns();
        assert!(woke >= start + 5_000_000, "never early");
        lane.arm(Some(now_ns() + 10_000_000_000));
        lane.wake();
        let t = now_ns();
        lane.sleep();
        assert!(now_ns() - t < 1_000_000_000, "the wake ended the sleep");
    }
}
