//! Hang detection by progress, inside the shared reactor.
//!
//! A stream on a device that may block (ALSA, the test devices) runs on a
//! lane of its own, and every call into the device is marked with its start
//! time (`StreamRuntime::host_call_starts`). The shared reactor, whose own
//! devices never block, looks at those marks: every [`WATCH_PERIOD_NS`]
//! while a lane that may block has a call in progress or a stream running,
//! and not at all otherwise (an idle daemon, or one whose streams are all
//! on null and pad devices, has no wake-up for this). A call older than its
//! bound (`worker.rs` `HANG_NS`, `OPEN_HANG_NS` for an open) is a hang: the
//! device is removed and the lane gets a new thread (`device.rs`
//! `check_hangs`).
//!
//! [`HangWatch`] is how a lane tells an idle reactor to look again without
//! a syscall per call: the lane marks its call, then sets the flag; only if
//! the flag was off does it wake the reactor. The reactor clears the flag
//! *before* it reads the marks and sets it again if it found work. Both are
//! read-modify-writes of one flag, so they are ordered: either the reactor's
//! clear comes after the lane's set (and then the reactor, which acquired
//! it, sees the mark made before it), or before it (and then the lane finds
//! the flag off and wakes the reactor). A call is never left unwatched; the
//! loom model below checks every interleaving.
//!
//! Built on `std::sync` normally and on `loom::sync` under `--cfg loom`.

#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, Ordering};

/// How often the reactor looks at the calls while one may hang: half the
/// bound of a call (`worker.rs` `HANG_NS`), so a call that hangs is found
/// 50 to 75 ms after it started, for 40 wake-ups a second while a stream
/// on such a device runs (at 10 ms it was 50 to 60 ms, for 100).
pub const WATCH_PERIOD_NS: u64 = 25_000_000;

/// Whether the shared reactor is watching the calls of the lanes that may
/// block.
#[derive(Debug, Default)]
pub struct HangWatch {
    on: AtomicBool,
}

impl HangWatch {
    pub fn new() -> HangWatch {
        HangWatch::default()
    }

    /// A lane marked a call that may hang (after storing its mark): returns
    /// whether the reactor was not watching and must be woken.
    pub fn call_marked(&self) -> bool {
        !self.on.swap(true, Ordering::AcqRel)
    }

    /// The reactor looks at the calls: `look` returns whether any may hang
    /// soon (a call in progress, a stream running). Watching stops unless it
    /// does; returns whether the reactor watches on.
    pub fn look(&self, look: impl FnOnce() -> bool) -> bool {
        self.on.swap(false, Ordering::AcqRel);
        let busy = look();
        if busy {
            self.on.store(true, Ordering::Release);
        }
        busy
    }

    /// Whether a lane asked the reactor to watch (read at its wake-ups).
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_first_call_after_an_idle_look_wakes_the_reactor_and_the_next_does_not() {
        let w = HangWatch::new();
        assert!(!w.look(|| false), "nothing to watch");
        assert!(!w.is_on());
        assert!(w.call_marked(), "the reactor was idle: wake it");
        assert!(w.is_on());
        assert!(!w.call_marked(), "already watching: no wake");
        assert!(w.look(|| true), "a call in progress: watch on");
        assert!(!w.call_marked(), "still watching: no wake");
        assert!(!w.look(|| false));
        assert!(w.call_marked());
    }
}

/// The loom model: `RUSTFLAGS="--cfg loom" cargo test -p vsound --lib
/// --release hangs::loom_model` (scripts/test.sh runs it).
#[cfg(all(test, loom))]
mod loom_model {
    use super::HangWatch;
    use loom::sync::atomic::{AtomicU64, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    /// A lane marks a call while the reactor looks (watching before, or
    /// not): either the reactor's look sees the mark, or the lane learns it
    /// must wake the reactor. A call is never unwatched.
    #[test]
    fn a_call_marked_as_the_reactor_stops_watching_is_seen_or_wakes_it() {
        for watching_before in [false, true] {
            loom::model(move || {
                let watch = Arc::new(HangWatch::new());
                if watching_before {
                    watch.call_marked();
                }
                let mark = Arc::new(AtomicU64::new(0));
                let lane = {
                    let (watch, mark) = (watch.clone(), mark.clone());
                    thread::spawn(move || {
                        mark.store(7, Ordering::Relaxed);
                        watch.call_marked()
                    })
                };
                let seen = watch.look(|| mark.load(Ordering::Relaxed) != 0);
                let woke = lane.join().unwrap();
                assert!(
                    seen || woke,
                    "the call is neither seen nor the reactor woken"
                );
                // Whoever wins, the flag ends on: the reactor watches on.
                assert!(watch.is_on());
            });
        }
    }

    /// Two lanes mark calls as the reactor looks. A look that finds one
    /// mark and not the other (made just after it read) still watches on,
    /// so its next look sees it: each call is seen, or the reactor watches
    /// on, or it is woken. (The first version of this model asked for
    /// "seen or woken" and loom found that interleaving.)
    #[test]
    fn two_lanes_marking_as_the_reactor_looks_are_each_seen_or_watched_or_wake_it() {
        loom::model(|| {
            let watch = Arc::new(HangWatch::new());
            let marks = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
            let lanes: Vec<_> = (0..2)
                .map(|i| {
                    let (watch, marks) = (watch.clone(), marks.clone());
                    thread::spawn(move || {
                        marks[i].store(1, Ordering::Relaxed);
                        watch.call_marked()
                    })
                })
                .collect();
            let mut seen = [false; 2];
            let watching = watch.look(|| {
                for (i, m) in marks.iter().enumerate() {
                    seen[i] = m.load(Ordering::Relaxed) != 0;
                }
                seen.iter().any(|&s| s)
            });
            let woke = lanes
                .into_iter()
                .map(|l| l.join().unwrap())
                .fold(false, |a, w| a | w);
            assert!(
                watching || woke,
                "the reactor stopped watching and was not woken"
            );
            for (i, &s) in seen.iter().enumerate() {
                assert!(s || watching || woke, "lane {i}'s call is unwatched");
            }
            // The reactor looks again (it watches on, or was woken): the
            // flag tells it to.
            assert!(watch.is_on());
        });
    }
}
