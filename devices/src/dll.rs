//! A delay-locked loop on a host device's clock.
//!
//! A sound card counts frames on its own crystal, a sound server on its
//! graph's driver; neither runs at exactly the nominal rate of the
//! daemon's `CLOCK_MONOTONIC` (a crystal is off by up to ±100 ppm, a cheap
//! one more). [`Dll`] takes readings of the device's frame count, each
//! with the time it held (`snd_pcm_status`: the frames the device has
//! consumed or produced, and `htstamp`), and estimates, filtered, where the
//! count is at any time and the rate it runs at.
//!
//! The readings are rough: a card may move its pointer a period at a time,
//! a sound server a quantum at a time, and the thread taking them wakes
//! late by a scheduler's whim. The loop is a second-order one (an
//! alpha-beta filter on phase and rate, damping 0.7): with the error `e`
//! between a reading and the prediction, the phase moves by `2·ζ·ω·Δt·e`
//! and the rate by `(ω·Δt)²·e/Δt`. Its bandwidth starts wide, for a lock
//! within a second or two, and narrows by half each second to
//! [`MIN_BANDWIDTH_HZ`], where a reading's jitter of a whole 1,024-frame
//! quantum moves the rate by tens of ppm at most (see the tests).
//!
//! A reading far off the prediction (the device started over: an xrun, a
//! pause, a new PCM) re-anchors the phase and keeps the rate; a rate
//! beyond [`MAX_OFFSET`] of the nominal one is not believed.

/// The bandwidth at the first reading, in Hz.
pub const START_BANDWIDTH_HZ: f64 = 1.0;
/// The bandwidth the loop narrows to, in Hz.
pub const MIN_BANDWIDTH_HZ: f64 = 0.05;
/// The farthest from the nominal rate the estimate goes (1 %).
pub const MAX_OFFSET: f64 = 0.01;
/// A reading this far off the prediction (seconds of frames) is a new
/// start of the count, not an error to correct.
pub const MAX_ERROR_S: f64 = 0.05;
/// Readings further apart than this (ns) re-anchor the phase (the count
/// did not run meanwhile, or nobody looked).
pub const MAX_GAP_NS: u64 = 500_000_000;
/// The time after the first reading before the rate is reported (ns).
pub const SETTLE_NS: u64 = 2_000_000_000;
/// The loop's damping.
const ZETA: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// The loop's state for one device's count.
#[derive(Clone, Copy, Debug)]
pub struct Dll {
    nominal: f64,
    /// Estimated frames per second.
    rate: f64,
    /// Estimated count at `at` (ns; 0: no reading yet).
    count: f64,
    at: u64,
    /// The first reading since the rate was last unknown (ns).
    since: u64,
}

impl Dll {
    /// A count at `nominal` frames per second, nothing read yet.
    pub fn new(nominal: u32) -> Dll {
        let nominal = f64::from(nominal.max(1));
        Dll {
            nominal,
            rate: nominal,
            count: 0.0,
            at: 0,
            since: 0,
        }
    }

    /// The count starts over (a new PCM, an xrun recovered, a pause): the
    /// next reading re-anchors the phase; the rate learnt is kept.
    pub fn restart(&mut self) {
        self.at = 0;
    }

    /// A reading: the device's count was `frames` at `at_ns`.
    pub fn feed(&mut self, frames: u64, at_ns: u64) {
        let reading = frames as f64;
        if at_ns == 0 {
            return;
        }
        if self.at == 0 {
            self.anchor(reading, at_ns);
            if self.since == 0 {
                self.since = at_ns;
            }
            return;
        }
        // Out of order or the same instant: nothing to learn.
        let Some(dt_ns) = at_ns.checked_sub(self.at).filter(|d| *d > 0) else {
            return;
        };
        if dt_ns > MAX_GAP_NS {
            self.anchor(reading, at_ns);
            return;
        }
        let dt = dt_ns as f64 * 1e-9;
        let predicted = self.count + self.rate * dt;
        let error = reading - predicted;
        if error.abs() > MAX_ERROR_S * self.nominal {
            self.anchor(reading, at_ns);
            return;
        }
        let omega = 2.0 * std::f64::consts::PI * self.bandwidth(at_ns);
        // A long step is taken as a bounded one (the loop stays stable).
        let x = (omega * dt).min(0.5);
        self.count = predicted + 2.0 * ZETA * x * error;
        let low = self.nominal * (1.0 - MAX_OFFSET);
        let high = self.nominal * (1.0 + MAX_OFFSET);
        self.rate = (self.rate + x * x * error / dt).clamp(low, high);
        self.at = at_ns;
    }

    fn anchor(&mut self, reading: f64, at_ns: u64) {
        self.count = reading;
        self.at = at_ns;
    }

    /// The bandwidth at `now_ns`: halved each second since the first
    /// reading, down to [`MIN_BANDWIDTH_HZ`].
    fn bandwidth(&self, now_ns: u64) -> f64 {
        let secs = now_ns.saturating_sub(self.since) / 1_000_000_000;
        let halvings = i32::try_from(secs.min(16)).unwrap_or(16);
        (START_BANDWIDTH_HZ * 0.5f64.powi(halvings)).max(MIN_BANDWIDTH_HZ)
    }

    /// Where the count is at `now_ns`, estimated (`None` before a reading).
    pub fn count_at(&self, now_ns: u64) -> Option<f64> {
        if self.at == 0 {
            return None;
        }
        let dt = now_ns as f64 * 1e-9 - self.at as f64 * 1e-9;
        Some(self.count + self.rate * dt)
    }

    /// The estimated rate, frames per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The device's rate against `CLOCK_MONOTONIC`, in ppm, once the loop
    /// has had [`SETTLE_NS`] of readings.
    pub fn rate_ppm(&self) -> Option<f64> {
        let settled = self.since != 0 && self.at.saturating_sub(self.since) >= SETTLE_NS;
        settled.then(|| (self.rate / self.nominal - 1.0) * 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    /// When a reading says its count held.
    #[derive(Clone, Copy)]
    enum Stamp {
        /// At the reader's call, `late` ns after its due time at most (a
        /// plugin that times nothing itself).
        Call { late: u64 },
        /// When the count last moved, `jitter` ns after it at most (a
        /// card's `htstamp`: its interrupt's time).
        Moved { jitter: u64 },
    }

    /// A device at 48 kHz off by `ppm`, its count moving `step` frames at a
    /// time, read every 10 ms for `secs` seconds from t = 1 s. Returns the
    /// loop and the worst error of its estimated count over the last
    /// second, in frames.
    fn run(ppm: f64, step: u64, stamp: Stamp, secs: u64) -> (Dll, f64) {
        let rate = 48_000.0 * (1.0 + ppm * 1e-6);
        let mut dll = Dll::new(48_000);
        let start = S;
        let mut worst: f64 = 0.0;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut t = start;
        while t < start + secs * S {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let wobble = seed >> 33;
            let read_at = match stamp {
                Stamp::Call { late } => t + wobble % late.max(1),
                Stamp::Moved { .. } => t,
            };
            let exact = (read_at - start) as f64 * 1e-9 * rate;
            let count = (exact as u64) / step * step;
            let at = match stamp {
                Stamp::Call { .. } => read_at,
                Stamp::Moved { jitter } => {
                    start + (count as f64 / rate * 1e9) as u64 + wobble % jitter.max(1)
                }
            };
            dll.feed(count, at);
            if read_at > start + (secs - 1) * S {
                let est = dll.count_at(read_at).unwrap();
                worst = worst.max((est - exact).abs());
            }
            t += 10 * MS;
        }
        (dll, worst)
    }

    #[test]
    fn a_smooth_count_500_ppm_fast_is_measured_to_a_ppm_and_tracked_to_a_frame() {
        // A sound server's plugin: its delay runs on between its cycles.
        let (dll, worst) = run(500.0, 1, Stamp::Call { late: 200_000 }, 10);
        let ppm = dll.rate_ppm().unwrap();
        assert!((ppm - 500.0).abs() < 1.0, "{ppm} ppm");
        assert!(worst < 1.5, "{worst} frames off");
    }

    #[test]
    fn a_card_100_ppm_fast_moving_a_period_at_a_time_is_measured_within_5_ppm_in_3_s() {
        // Its pointer moves at each period's interrupt (the reader wakes
        // with it): `htstamp` tells when, 50 us late at most.
        let (dll, worst) = run(100.0, 480, Stamp::Moved { jitter: 50_000 }, 3);
        let ppm = dll.rate_ppm().unwrap();
        assert!((ppm - 100.0).abs() < 5.0, "{ppm} ppm after 3 s");
        // The estimate runs through the periods, not a period behind.
        assert!(worst < 480.0, "{worst} frames off");
    }

    #[test]
    fn a_count_moving_a_quantum_at_a_time_read_untimed_is_measured_within_50_ppm_in_20_s() {
        // The worst reader: a 1,024-frame quantum, read at the call's time
        // 3 ms late at most, 500 ppm slow.
        let (dll, worst) = run(-500.0, 1024, Stamp::Call { late: 3 * MS }, 20);
        let ppm = dll.rate_ppm().unwrap();
        assert!((ppm + 500.0).abs() < 50.0, "{ppm} ppm");
        // Smooth through the quanta: off by a quantum at most (the readings
        // lag the count by half of one on average).
        assert!(worst < 1024.0, "{worst} frames off");
    }

    #[test]
    fn the_rate_is_not_reported_before_the_loop_settles() {
        let (dll, _) = run(0.0, 1, Stamp::Call { late: 1 }, 1);
        assert_eq!(dll.rate_ppm(), None);
    }

    #[test]
    fn a_count_that_starts_over_re_anchors_and_keeps_the_rate() {
        let (mut dll, _) = run(300.0, 1, Stamp::Call { late: 1 }, 10);
        let before = dll.rate_ppm().unwrap();
        let at = 20 * S;
        // The count jumps back to 0 (a new PCM): no correction to the rate.
        dll.feed(0, at);
        assert_eq!(dll.count_at(at), Some(0.0));
        assert!((dll.rate_ppm().unwrap() - before).abs() < 1e-9);
        // A restart: the next reading is the anchor, whatever it is.
        dll.restart();
        assert_eq!(dll.count_at(at), None);
        dll.feed(5_000, at + 10 * MS);
        assert_eq!(dll.count_at(at + 10 * MS), Some(5_000.0));
    }

    #[test]
    fn a_long_gap_re_anchors_rather_than_bending_the_rate() {
        let (mut dll, _) = run(0.0, 1, Stamp::Call { late: 1 }, 5);
        let at = dll.at + 2 * S;
        // Two seconds later, the count moved only half a second's worth
        // (it was paused): the rate stays.
        let count = dll.count_at(dll.at).unwrap() as u64 + 24_000;
        dll.feed(count, at);
        assert!(dll.rate_ppm().unwrap().abs() < 5.0);
        assert_eq!(dll.count_at(at), Some(count as f64));
    }

    #[test]
    fn readings_out_of_order_or_absurd_never_break_the_loop() {
        let mut dll = Dll::new(48_000);
        dll.feed(1_000, 10 * S);
        dll.feed(2_000, 10 * S); // the same instant
        dll.feed(500, 9 * S); // from the past
        dll.feed(u64::MAX, 10 * S + MS); // absurd: taken as a new start
        dll.feed(0, 0); // no time: ignored
        let est = dll.count_at(10 * S + 2 * MS).unwrap();
        assert!(est.is_finite());
        // The rate never leaves its bounds, whatever it is fed.
        let mut t = 11 * S;
        for i in 0..10_000u64 {
            dll.feed(i.wrapping_mul(7_919) % 100_000, t);
            t += 3 * MS;
            let r = dll.rate();
            assert!((48_000.0 * 0.99..=48_000.0 * 1.01).contains(&r), "{r}");
        }
    }
}
