//! The device core's view of a virtqueue, independent of vhost-user.
//!
//! The vhost-user glue (`vhost_user.rs`) implements [`Virtqueue`] over a
//! vring; unit tests implement it over a plain `virtio_queue::Queue` in
//! local memory. Nothing else in the core knows which one it talks to.
//!
//! A ring is written (a chain taken, a status byte, a used entry, a
//! notification) only while the driver side runs it, and only under a
//! [`RingPass`] of its [`RingGate`]: `pop` and `complete` take one, so the
//! compiler checks that every write is covered. Stopping a ring (vhost-user
//! GET_VRING_BASE, a device reset) closes its gate and waits for every pass
//! out to come back; once [`RingGate::stop`] returns, nothing can touch the
//! ring until it is started again.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

/// Guest memory as the daemon maps it.
pub type Mem = GuestMemoryMmap<()>;
/// A descriptor chain popped from a queue, holding its memory mapping alive.
pub type Chain = DescriptorChain<GuestMemoryLoadGuard<Mem>>;

/// One virtqueue, as the device core uses it. Implementations are shared
/// between the queue thread and the stream workers, so every method takes
/// `&self` and does its own locking.
pub trait Virtqueue: Send + Sync {
    /// The ring's run state.
    fn gate(&self) -> &RingGate;
    /// Takes the next chain the driver made available, if any.
    fn pop(&self, pass: &RingPass<'_>) -> Option<Chain>;
    /// Puts a chain on the used ring with `len` bytes written, and notifies
    /// the driver if it asked to be (EVENT_IDX).
    fn complete(&self, pass: &RingPass<'_>, head: u16, len: u32);
}

/// Whether a ring runs, and who is writing into it.
#[derive(Debug)]
pub struct RingGate {
    state: Mutex<GateState>,
    passes_back: Condvar,
}

#[derive(Debug)]
struct GateState {
    started: bool,
    /// Passes out.
    passes: u32,
    /// When the ring was last stopped (ns, monotonic).
    stopped_at: u64,
}

/// Leave to write into a started ring; the ring cannot stop while one is
/// out. Held only for guest-memory work, never across a host call.
#[derive(Debug)]
pub struct RingPass<'a> {
    gate: &'a RingGate,
}

impl RingGate {
    /// A gate, started or not.
    pub fn new(started: bool) -> RingGate {
        RingGate {
            state: Mutex::new(GateState {
                started,
                passes: 0,
                stopped_at: 0,
            }),
            passes_back: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pass, if the ring runs.
    pub fn enter(&self) -> Option<RingPass<'_>> {
        let mut st = self.lock();
        if !st.started {
            return None;
        }
        st.passes = st.passes.saturating_add(1);
        Some(RingPass { gate: self })
    }

    pub fn is_started(&self) -> bool {
        self.lock().started
    }

    /// Stops the ring at `now` and waits, at most `wait`, until every pass
    /// is back. Returns false if one is still out after `wait` (a bug: a
    /// pass covers guest-memory work only).
    pub fn stop(&self, now: u64, wait: Duration) -> bool {
        let mut st = self.lock();
        if st.started {
            st.started = false;
            st.stopped_at = now;
        }
        let (st, timeout) = self
            .passes_back
            .wait_timeout_while(st, wait, |s| s.passes > 0)
            .unwrap_or_else(|e| e.into_inner());
        drop(st);
        !timeout.timed_out()
    }

    /// When the ring was stopped, if it is.
    pub fn stopped_at(&self) -> Option<u64> {
        let st = self.lock();
        (!st.started).then_some(st.stopped_at)
    }

    /// Starts the ring again.
    pub fn start(&self) {
        self.lock().started = true;
    }
}

impl RingPass<'_> {
    /// Whether this pass is for `gate`.
    pub fn is_for(&self, gate: &RingGate) -> bool {
        std::ptr::eq(self.gate, gate)
    }
}

impl Drop for RingPass<'_> {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.passes = st.passes.saturating_sub(1);
        if st.passes == 0 {
            self.gate.passes_back.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_stopped_gate_gives_no_pass_until_started_again() {
        let g = RingGate::new(true);
        assert!(g.enter().is_some());
        assert!(g.stop(5, Duration::ZERO));
        assert!(g.enter().is_none());
        assert_eq!(g.stopped_at(), Some(5));
        g.start();
        assert!(g.enter().is_some());
        assert_eq!(g.stopped_at(), None);
    }

    #[test]
    fn stop_returns_only_once_every_pass_is_back() {
        let g = Arc::new(RingGate::new(true));
        let g2 = g.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let pass = g2.enter().unwrap();
            tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            drop(pass);
            Instant::now()
        });
        rx.recv().unwrap();
        assert!(g.stop(1, Duration::from_secs(5)));
        let stopped = Instant::now();
        let released = holder.join().unwrap();
        assert!(stopped >= released, "stop returned while a pass was out");
    }

    #[test]
    fn stop_gives_up_after_its_bound_with_a_pass_out() {
        let g = RingGate::new(true);
        let _pass = g.enter().unwrap();
        assert!(!g.stop(1, Duration::from_millis(10)));
        assert!(g.enter().is_none());
    }
}
