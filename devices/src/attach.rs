//! The attach/detach protocol: how the I/O path uses a host endpoint that
//! may be torn down under it (docs/design.md, "Safe hot-removal": the
//! scheme NetBSD's audio(4) uses, with pserialize(9) and psref(9), to
//! survive its pad(4) being detached under open files).
//!
//! A [`Slot`] holds at most one published item (a stream's open sink or
//! source). Three parties use it:
//!
//! - **The I/O path** [`Slot::lend`]s the item for one host I/O and
//!   [`Slot::give_back`]s it. Lending never blocks beyond a short critical
//!   section that only moves a value (no allocation, no host call, no wait),
//!   and the item is used with no lock held. Since the item is *moved* out,
//!   nobody else can close it while it is in use: no use after free.
//! - **Detach** ([`Slot::detach`]) (a) unpublishes, so that new `lend`s find
//!   nothing; (b) waits, bounded, for a lent item to come back; (c) closes
//!   (drops) it, outside the lock. If the wait times out (a host call that
//!   hangs), the borrower closes the item when it finally gives it back:
//!   either way exactly once, since there is only one owner at a time.
//! - **Attach** ([`Slot::attach`]) publishes a new item under a new
//!   generation; an old item given back later is recognised as stale and
//!   closed, never republished.
//!
//! Close is final: dropping is the only way an item ends, and it happens
//! outside the lock, whatever error came before.
//!
//! Built on `std::sync` normally and on `loom::sync` under `--cfg loom`, so
//! the loom model in this file checks every interleaving of I/O, detach and
//! attach.

use std::time::Duration;

#[cfg(loom)]
use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Condvar, Mutex, MutexGuard};

struct State<T> {
    /// The published item, when it is not lent out.
    item: Option<T>,
    /// The item is lent out (an I/O is running on it).
    lent: bool,
    /// A detach is not in force.
    published: bool,
    /// Bumped by every attach and detach; a lent item of an older
    /// generation is stale.
    generation: u64,
    /// Detaches waiting for the lent item: a give-back wakes them only if
    /// there are any (a condvar's notify is a system call even with no
    /// one waiting, and a give-back comes after every host call).
    waiters: u32,
}

/// A detachable, lendable item.
pub struct Slot<T> {
    state: Mutex<State<T>>,
    returned: Condvar,
}

/// An item lent to the I/O path. Give it back with [`Slot::give_back`];
/// dropping it instead closes it (which is also safe).
pub struct Lent<T> {
    pub item: T,
    generation: u64,
}

/// What [`Slot::detach`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detached {
    /// Nothing was published.
    Empty,
    /// The item was closed by the detach.
    Closed,
    /// The item was still lent when the wait ran out; its borrower closes it.
    LeftToBorrower,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot::new()
    }
}

impl<T> Slot<T> {
    pub fn new() -> Slot<T> {
        Slot {
            state: Mutex::new(State {
                item: None,
                lent: false,
                published: false,
                generation: 0,
                waiters: 0,
            }),
            returned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `item` (attach). A previously published item is closed;
    /// one that is lent out becomes stale and is closed when given back.
    pub fn attach(&self, item: T) {
        let old = {
            let mut st = self.lock();
            st.generation = st.generation.wrapping_add(1);
            st.published = true;
            st.lent = false;
            st.item.replace(item)
        };
        // Close outside the lock.
        drop(old);
    }

    /// The slot's generation now: read before opening an item that
    /// [`Slot::attach_if`] then publishes only if nothing attached or
    /// detached meanwhile.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Publishes `item` like [`Slot::attach`], but only if the slot is still
    /// at `generation` (see [`Slot::generation`]): an open that was in
    /// flight when a detach (a removal, RELEASE) or another attach came is
    /// not published; the item comes back to be closed.
    pub fn attach_if(&self, item: T, generation: u64) -> Result<(), T> {
        let old = {
            let mut st = self.lock();
            if st.generation != generation {
                return Err(item);
            }
            st.generation = st.generation.wrapping_add(1);
            st.published = true;
            st.lent = false;
            st.item.replace(item)
        };
        drop(old);
        Ok(())
    }

    /// Takes the published item for one I/O, or `None` if there is none
    /// (detached, or lent to someone else). Never waits.
    pub fn lend(&self) -> Option<Lent<T>> {
        let mut st = self.lock();
        if !st.published || st.lent {
            return None;
        }
        let item = st.item.take()?;
        st.lent = true;
        Some(Lent {
            item,
            generation: st.generation,
        })
    }

    /// Returns a lent item. If the slot was detached or re-attached since,
    /// the item is stale and is closed here, outside the lock.
    pub fn give_back(&self, lent: Lent<T>) {
        let (stale, notify) = {
            let mut st = self.lock();
            let notify = st.waiters > 0;
            let stale = if st.generation == lent.generation {
                st.lent = false;
                if st.published && st.item.is_none() {
                    st.item = Some(lent.item);
                    None
                } else {
                    Some(lent.item)
                }
            } else {
                Some(lent.item)
            };
            (stale, notify)
        };
        if notify {
            self.returned.notify_all();
        }
        drop(stale);
    }

    /// Unpublishes the item, waits up to `timeout` for a lent one to come
    /// back, and closes it.
    pub fn detach(&self, timeout: Duration) -> Detached {
        let mut st = self.lock();
        st.published = false;
        let generation = st.generation;
        let deadline = std::time::Instant::now() + timeout;
        while st.lent && st.generation == generation {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            st.waiters = st.waiters.saturating_add(1);
            let (guard, _) = self
                .returned
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            st.waiters = st.waiters.saturating_sub(1);
        }
        let item = st.item.take();
        let outcome = match (&item, st.lent && st.generation == generation) {
            (Some(_), _) => Detached::Closed,
            (None, true) => Detached::LeftToBorrower,
            (None, false) => Detached::Empty,
        };
        // The lent item, if any, is now stale: its give_back closes it.
        st.generation = st.generation.wrapping_add(1);
        st.lent = false;
        drop(st);
        drop(item);
        outcome
    }

    /// Whether an item is published (attached), lent out or not.
    pub fn is_attached(&self) -> bool {
        self.lock().published
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    struct Item(Arc<AtomicUsize>);
    impl Drop for Item {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn detach_closes_an_idle_item_once_and_lend_finds_nothing_after() {
        let closed = Arc::new(AtomicUsize::new(0));
        let slot = Slot::new();
        slot.attach(Item(closed.clone()));
        let l = slot.lend().unwrap();
        slot.give_back(l);
        assert_eq!(slot.detach(Duration::from_millis(10)), Detached::Closed);
        assert_eq!(closed.load(Ordering::SeqCst), 1);
        assert!(slot.lend().is_none());
        assert_eq!(slot.detach(Duration::from_millis(10)), Detached::Empty);
        assert_eq!(closed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_borrower_that_hangs_past_the_wait_closes_the_item_itself() {
        let closed = Arc::new(AtomicUsize::new(0));
        let slot = Slot::new();
        slot.attach(Item(closed.clone()));
        let l = slot.lend().unwrap();
        assert_eq!(
            slot.detach(Duration::from_millis(10)),
            Detached::LeftToBorrower
        );
        assert_eq!(closed.load(Ordering::SeqCst), 0);
        // A new device attaches before the old borrower returns.
        let closed2 = Arc::new(AtomicUsize::new(0));
        slot.attach(Item(closed2.clone()));
        slot.give_back(l);
        assert_eq!(
            closed.load(Ordering::SeqCst),
            1,
            "stale item closed on return"
        );
        assert_eq!(closed2.load(Ordering::SeqCst), 0);
        assert!(slot.lend().is_some(), "the new item is published");
    }

    #[test]
    fn attach_replaces_and_closes_the_previous_item() {
        let closed = Arc::new(AtomicUsize::new(0));
        let slot = Slot::new();
        slot.attach(Item(closed.clone()));
        slot.attach(Item(closed.clone()));
        assert_eq!(closed.load(Ordering::SeqCst), 1);
        drop(slot);
        assert_eq!(closed.load(Ordering::SeqCst), 2);
    }
}

/// The loom model: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=4 cargo
/// test -p vsound-devices --lib --release attach::loom_model` (what
/// scripts/test.sh runs; about 10 s). Checks every interleaving of I/O
/// threads, detachers and attachers (up to 4 preemptions) for: no use of a
/// closed item, every item closed exactly once, a replaced or detached item
/// never lent again, no deadlock. (Loom's `wait_timeout` never times out,
/// so the "detach gives up" path is modelled with a zero timeout.) Checked
/// against mutations: ignoring the generation in `give_back` is caught at a
/// bound of 4, not 3.
#[cfg(all(test, loom))]
mod loom_model {
    use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// An endpoint that records being used after close and double closes.
    struct Endpoint {
        id: usize,
        closed: Arc<AtomicBool>,
        closes: Arc<AtomicUsize>,
    }

    impl Endpoint {
        fn new(id: usize, closes: &Arc<AtomicUsize>) -> Endpoint {
            Endpoint {
                id,
                closed: Arc::new(AtomicBool::new(false)),
                closes: closes.clone(),
            }
        }
        fn io(&self) {
            assert!(
                !self.closed.load(Ordering::SeqCst),
                "I/O on a closed endpoint"
            );
        }
    }

    impl Drop for Endpoint {
        fn drop(&mut self) {
            assert!(!self.closed.swap(true, Ordering::SeqCst), "closed twice");
            self.closes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One I/O. `retired` is set once endpoint 0 has been replaced: a lend
    /// that starts after that must never get endpoint 0 again.
    fn io_once(slot: &Slot<Endpoint>, retired: &AtomicBool) {
        let replaced_before = retired.load(Ordering::SeqCst);
        if let Some(l) = slot.lend() {
            assert!(
                !(replaced_before && l.item.id == 0),
                "a replaced endpoint was lent"
            );
            l.item.io();
            slot.give_back(l);
        }
    }

    fn spawn_io(
        slot: &Arc<Slot<Endpoint>>,
        retired: &Arc<AtomicBool>,
        n: usize,
    ) -> thread::JoinHandle<()> {
        let (slot, retired) = (slot.clone(), retired.clone());
        thread::spawn(move || {
            for _ in 0..n {
                io_once(&slot, &retired);
            }
        })
    }

    #[test]
    fn io_detach_and_attach_interleave_safely() {
        loom::model(|| {
            let closes = Arc::new(AtomicUsize::new(0));
            let retired = Arc::new(AtomicBool::new(false));
            let slot = Arc::new(Slot::new());
            slot.attach(Endpoint::new(0, &closes));

            let io = spawn_io(&slot, &retired, 2);
            let detacher = {
                let slot = slot.clone();
                thread::spawn(move || {
                    slot.detach(Duration::from_millis(1));
                })
            };
            let attacher = {
                let (slot, closes, retired) = (slot.clone(), closes.clone(), retired.clone());
                thread::spawn(move || {
                    slot.attach(Endpoint::new(1, &closes));
                    retired.store(true, Ordering::SeqCst);
                })
            };
            io.join().unwrap();
            detacher.join().unwrap();
            attacher.join().unwrap();
            // Two endpoints were made; after a final detach both are closed,
            // exactly once each.
            slot.detach(Duration::from_millis(1));
            drop(slot);
            assert_eq!(closes.load(Ordering::SeqCst), 2);
        });
    }

    /// A detach whose wait runs out at once (a host call that hangs): the
    /// borrower closes the item, and nothing is published again.
    #[test]
    fn a_detach_that_gives_up_leaves_the_close_to_the_borrower() {
        loom::model(|| {
            let closes = Arc::new(AtomicUsize::new(0));
            let retired = Arc::new(AtomicBool::new(false));
            let slot = Arc::new(Slot::new());
            slot.attach(Endpoint::new(0, &closes));
            let io = spawn_io(&slot, &retired, 2);
            slot.detach(Duration::ZERO);
            io.join().unwrap();
            assert_eq!(closes.load(Ordering::SeqCst), 1, "closed exactly once");
            assert!(slot.lend().is_none(), "a detached item came back");
        });
    }

    /// Two I/O threads race a re-attach and a detach that gives up.
    #[test]
    fn two_borrowers_race_a_reattach() {
        loom::model(|| {
            let closes = Arc::new(AtomicUsize::new(0));
            let retired = Arc::new(AtomicBool::new(false));
            let slot = Arc::new(Slot::new());
            slot.attach(Endpoint::new(0, &closes));
            let io1 = spawn_io(&slot, &retired, 2);
            let io2 = spawn_io(&slot, &retired, 2);
            slot.attach(Endpoint::new(1, &closes));
            retired.store(true, Ordering::SeqCst);
            slot.detach(Duration::ZERO);
            io1.join().unwrap();
            io2.join().unwrap();
            assert_eq!(closes.load(Ordering::SeqCst), 2);
            assert!(slot.lend().is_none());
        });
    }

    /// The stream's open protocol (`StreamRuntime::try_open`): the slot's
    /// generation is read, the endpoint opened with nothing held, then
    /// published with `attach_if`. A detach (removal, RELEASE) racing the
    /// open always wins: nothing is attached after both, and the endpoint
    /// is closed exactly once, by whichever side ends with it. (With a
    /// plain `attach` the order detach-then-attach leaves the stale
    /// endpoint published: the model fails.)
    #[test]
    fn an_open_in_flight_is_not_published_after_a_detach() {
        loom::model(|| {
            let closes = Arc::new(AtomicUsize::new(0));
            let slot = Arc::new(Slot::new());
            // The open starts (its generation read) before the detach.
            let generation = slot.generation();
            let opener = {
                let (slot, closes) = (slot.clone(), closes.clone());
                thread::spawn(move || {
                    let ep = Endpoint::new(1, &closes); // the open
                    if let Err(ep) = slot.attach_if(ep, generation) {
                        drop(ep);
                    }
                })
            };
            slot.detach(Duration::from_millis(1));
            opener.join().unwrap();
            // Attach first: the detach closes it; detach first: the
            // attach is refused. Nothing published either way.
            assert!(
                !slot.is_attached(),
                "an endpoint opened before a detach is published"
            );
            drop(slot);
            assert_eq!(closes.load(Ordering::SeqCst), 1);
        });
    }

    /// A lane whose host call hangs is retired and replaced
    /// (`reactor.rs`, the watchdog): the watchdog detaches the endpoint
    /// without waiting and bumps the lane's generation; the stuck thread,
    /// when its call returns, gives the endpoint back (stale: closed) and
    /// exits on seeing the new generation; the new thread opens a new
    /// endpoint with `attach_if`. No I/O on a closed endpoint, each closed
    /// exactly once, the hung endpoint never lent again, and the new one
    /// stays published (a stuck thread that lends it once more before it
    /// sees its retirement gives it back: the slot lends to one at a time).
    #[test]
    fn a_retired_lane_never_uses_its_endpoint_again_and_the_new_lane_takes_over() {
        loom::model(|| {
            let closes = Arc::new(AtomicUsize::new(0));
            let lane = Arc::new(AtomicUsize::new(0));
            let slot = Arc::new(Slot::new());
            slot.attach(Endpoint::new(0, &closes));
            let old = {
                let (slot, lane) = (slot.clone(), lane.clone());
                thread::spawn(move || {
                    for _ in 0..2 {
                        if lane.load(Ordering::SeqCst) != 0 {
                            return; // replaced: exit
                        }
                        let retired = lane.load(Ordering::SeqCst) != 0;
                        if let Some(l) = slot.lend() {
                            assert!(
                                !(l.item.id == 0 && retired),
                                "the hung endpoint was lent after the retirement"
                            );
                            l.item.io(); // the call that hangs, then returns
                            slot.give_back(l);
                        }
                    }
                })
            };
            // The watchdog: detach without waiting, retire the lane.
            slot.detach(Duration::ZERO);
            lane.store(1, Ordering::SeqCst);
            // The replacement lane opens the endpoint again.
            let generation = slot.generation();
            let ep = Endpoint::new(1, &closes);
            assert!(
                slot.attach_if(ep, generation).is_ok(),
                "nothing else attached"
            );
            old.join().unwrap();
            let l = slot.lend().expect("the new endpoint is published");
            assert_eq!(l.item.id, 1);
            slot.give_back(l);
            slot.detach(Duration::from_millis(1));
            drop(slot);
            assert_eq!(closes.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn two_detaches_race_an_io_and_close_once() {
        loom::model(|| {
            let closes = Arc::new(AtomicUsize::new(0));
            let retired = Arc::new(AtomicBool::new(false));
            let slot = Arc::new(Slot::new());
            slot.attach(Endpoint::new(0, &closes));
            let io = spawn_io(&slot, &retired, 1);
            let d1 = {
                let slot = slot.clone();
                thread::spawn(move || {
                    slot.detach(Duration::from_millis(1));
                })
            };
            slot.detach(Duration::from_millis(1));
            io.join().unwrap();
            d1.join().unwrap();
            assert_eq!(closes.load(Ordering::SeqCst), 1);
            assert!(slot.lend().is_none());
        });
    }
}
