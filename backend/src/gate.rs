//! A ring's run state: started or stopped, and who is writing into it.
//!
//! Stopping a ring (vhost-user GET_VRING_BASE or SET_VRING_ENABLE 0, a
//! device reset) closes its gate and waits for every pass out to come back;
//! once [`RingGate::stop`] returns, nothing can touch the ring until it is
//! started again. A pass covers guest-memory work only (never a host call),
//! so the wait is short; it is bounded anyway.
//!
//! [`Parked`] keeps the completions that found the ring stopped until it
//! runs again.
//!
//! Built on `std::sync` normally and on `loom::sync` under `--cfg loom`, so
//! the loom models below check every interleaving of writers and a stop,
//! and of a completion parked as the ring starts.

use std::time::{Duration, Instant};

#[cfg(loom)]
use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Condvar, Mutex, MutexGuard};

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
    /// Stops waiting for the passes: the last pass back wakes them only if
    /// there are any (a notify is a system call even with no one waiting,
    /// and a pass is given back after every completion).
    waiters: u32,
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
                waiters: 0,
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
        let deadline = Instant::now() + wait;
        while st.passes > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st.waiters = st.waiters.saturating_add(1);
            let (guard, _) = self
                .passes_back
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            st.waiters = st.waiters.saturating_sub(1);
        }
        true
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
        if st.passes == 0 && st.waiters > 0 {
            drop(st);
            self.gate.passes_back.notify_all();
        }
    }
}

/// Work that needs a ring (completions) and waits while it is stopped.
/// [`Parked::run_or_park`] runs the items at once under a pass when the
/// ring runs, and parks them otherwise; [`Parked::flush`], after the ring
/// started again, runs what is parked. A start that comes between a failed
/// `enter` and the parking, its flush finding nothing yet, cannot strand
/// an item: `run_or_park` looks at the gate again once it has parked them
/// (the loom model below checks every interleaving).
#[derive(Debug)]
pub struct Parked<T> {
    items: Mutex<Vec<T>>,
}

impl<T> Default for Parked<T> {
    fn default() -> Self {
        Parked {
            items: Mutex::new(Vec::new()),
        }
    }
}

impl<T> Parked<T> {
    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `run` on each item under a pass if `gate` runs, or parks them
    /// (and runs them after all if the gate started meanwhile). Returns how
    /// many were parked.
    pub fn run_or_park(
        &self,
        gate: &RingGate,
        items: impl IntoIterator<Item = T>,
        mut run: impl FnMut(&RingPass<'_>, T),
    ) -> usize {
        if let Some(pass) = gate.enter() {
            for x in items {
                run(&pass, x);
            }
            return 0;
        }
        let parked = {
            let mut p = self.lock();
            let before = p.len();
            p.extend(items);
            p.len() - before
        };
        if parked > 0 && gate.is_started() {
            self.flush(gate, run);
        }
        parked
    }

    /// Runs `run` on every parked item under a pass, if `gate` runs.
    pub fn flush(&self, gate: &RingGate, mut run: impl FnMut(&RingPass<'_>, T)) {
        let Some(pass) = gate.enter() else {
            return;
        };
        let items = std::mem::take(&mut *self.lock());
        for x in items {
            run(&pass, x);
        }
    }

    /// Forgets what is parked; how many.
    pub fn drop_all(&self) -> usize {
        std::mem::take(&mut *self.lock()).len()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;

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
            let giving_back = Instant::now();
            drop(pass);
            giving_back
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

/// The loom model: `RUSTFLAGS="--cfg loom" cargo test -p vsound --lib
/// --release gate::loom_model` (scripts/test.sh runs it). Checks every
/// interleaving of writers and a stop/start for: no write into a ring
/// after `stop` returned and before `start`, and no deadlock. Checked
/// against a mutation: a `stop` that does not wait for passes fails it.
#[cfg(all(test, loom))]
mod loom_model {
    use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// A writer: one write under a pass, if the ring runs.
    fn write(gate: &RingGate, stopped: &AtomicBool, writes: &AtomicUsize) {
        if let Some(_pass) = gate.enter() {
            assert!(
                !stopped.load(Ordering::SeqCst),
                "a write into a ring after its stop returned"
            );
            writes.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn nothing_writes_into_a_ring_between_stop_and_start() {
        loom::model(|| {
            let gate = Arc::new(RingGate::new(true));
            let stopped = Arc::new(AtomicBool::new(false));
            let writes = Arc::new(AtomicUsize::new(0));
            let writers: Vec<_> = (0..2)
                .map(|_| {
                    let (g, s, w) = (gate.clone(), stopped.clone(), writes.clone());
                    thread::spawn(move || {
                        write(&g, &s, &w);
                        write(&g, &s, &w);
                    })
                })
                .collect();
            assert!(gate.stop(1, Duration::from_secs(1)));
            stopped.store(true, Ordering::SeqCst);
            let frozen = writes.load(Ordering::SeqCst);
            // Started again: writers may write (and the flag says so first).
            stopped.store(false, Ordering::SeqCst);
            assert_eq!(writes.load(Ordering::SeqCst), frozen);
            gate.start();
            for w in writers {
                w.join().unwrap();
            }
            assert!(gate.enter().is_some());
        });
    }

    /// A completion made while its ring starts (a VM resumed: the ring's
    /// gate starts, then what was parked is flushed) runs exactly once,
    /// whatever the interleaving: never stranded among the parked items,
    /// never run twice. Checked against a mutation: without the second look
    /// at the gate in `run_or_park`, an interleaving strands it.
    #[test]
    fn a_completion_made_as_its_ring_starts_is_never_stranded() {
        loom::model(|| {
            let gate = Arc::new(RingGate::new(false));
            let parked: Arc<Parked<u32>> = Arc::new(Parked::default());
            let runs = Arc::new(AtomicUsize::new(0));
            let completer = {
                let (g, p, r) = (gate.clone(), parked.clone(), runs.clone());
                thread::spawn(move || {
                    p.run_or_park(&g, [7u32], |_, x| {
                        assert_eq!(x, 7);
                        r.fetch_add(1, Ordering::SeqCst);
                    });
                })
            };
            gate.start();
            parked.flush(&gate, |_, _| {
                runs.fetch_add(1, Ordering::SeqCst);
            });
            completer.join().unwrap();
            assert_eq!(runs.load(Ordering::SeqCst), 1, "stranded or run twice");
            assert_eq!(parked.drop_all(), 0);
        });
    }
}
