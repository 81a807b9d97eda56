//! Pacing a capture stream by its host device's clock.
//!
//! (Playback on such a device needs no loop: its buffers complete as the
//! device's position passes them, `worker.rs` `tick_played`.)
//!
//! A host device with a clock of its own (an ALSA card's crystal, a sound
//! server's graph) does not run at exactly the daemon's `CLOCK_MONOTONIC`
//! rate: a crystal is off by up to ±100 ppm, and 100 ppm is a period lost
//! or gained every 100 s at 10 ms periods. The device's fill level (frames
//! queued for playback, captured for capture, read right after each
//! message's host call) shows the difference: it drifts by the rate error.
//!
//! [`DeviceClock`] is a phase-locked loop on that level: it learns the
//! level the stream settled at after START ([`LOCK_SAMPLES`] readings), and
//! from then on a proportional-integral controller turns the filtered error
//! into a rate correction for the stream's [`Schedule`](crate::pacer::Schedule):
//! the integral term converges to the device's rate offset, so the level
//! stays at its target and no drift accumulates; the guest, whose audio
//! clock is our completions, runs on the device's clock as on bare metal.
//!
//! Loop: with the error `e` in seconds and the correction `u` in ppm,
//! `de/dt = (device rate - daemon rate) - u·1e-6`, `u = KP·e + KI·∫e`:
//! a second-order loop with natural frequency `sqrt(KI·1e-6)` ≈ 0.14 rad/s
//! and damping `KP·1e-6 / (2·ω)` ≈ 0.7. A step of 500 ppm moves the level by
//! at most about `500e-6 / (KP·1e-6)` = 2.5 ms before the integral takes
//! it over; the readings' own jitter (a sound server moves frames a quantum
//! at a time) is smoothed over [`FILTER_S`] first and moves the rate by a
//! few tens of ppm.

use crate::pacer::MAX_RATE_PPM;

/// Readings averaged for the target level after a (re)start.
pub const LOCK_SAMPLES: u32 = 32;
/// Proportional gain, ppm per second of level error.
const KP: f64 = 200_000.0;
/// Integral gain, ppm per second of error per second.
const KI: f64 = 20_000.0;
/// Time constant of the readings' low-pass filter, in seconds.
const FILTER_S: f64 = 0.2;
/// A gap between two readings longer than this (a pause, a stall) is not
/// integrated.
const MAX_STEP_S: f64 = 0.5;

/// Which way the frames flow: a fuller playback device means the daemon is
/// fast, a fuller capture device that it is slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Playback,
    Capture,
}

/// The loop's state for one stream.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceClock {
    /// Readings so far towards the target, and their sum (seconds).
    samples: u32,
    sum: f64,
    target: Option<f64>,
    /// The filtered error (seconds) and the integral term (ppm).
    filtered: f64,
    integral: f64,
    last_ns: u64,
}

impl DeviceClock {
    /// A new device: nothing known of its rate.
    pub fn new() -> DeviceClock {
        DeviceClock::default()
    }

    /// The stream started again on the same device: the level is learnt
    /// again, the device's rate (the integral term) is kept.
    pub fn restart(&mut self) {
        *self = DeviceClock {
            integral: self.integral,
            ..DeviceClock::default()
        };
    }

    /// The device's rate was measured on its own clock (its readings'
    /// delay-locked loop, `vsound_devices::dll`): the integral term, the
    /// loop's estimate of that rate, starts from it. Before the loop locks
    /// only (after, the level is the better guide).
    pub fn seed(&mut self, ppm: f64) {
        if self.target.is_none() && ppm.is_finite() {
            self.integral = ppm.clamp(-f64::from(MAX_RATE_PPM), f64::from(MAX_RATE_PPM));
        }
    }

    /// The correction (ppm) the loop gives now, without a new reading.
    pub fn ppm(&self) -> i32 {
        let e = match self.target {
            Some(_) => self.filtered,
            None => 0.0,
        };
        to_ppm(KP * e + self.integral)
    }

    /// Whether the target level is known (the loop runs).
    pub fn locked(&self) -> bool {
        self.target.is_some()
    }

    /// One reading: the device holds `level_s` seconds of frames at
    /// `now_ns`. Returns the rate correction for the schedule, in ppm.
    pub fn feed(&mut self, now_ns: u64, level_s: f64, flow: Flow) -> i32 {
        if !level_s.is_finite() {
            return self.ppm();
        }
        let step = now_ns.saturating_sub(self.last_ns) as f64 * 1e-9;
        let first = self.last_ns == 0;
        self.last_ns = now_ns;
        let Some(target) = self.target else {
            self.samples += 1;
            self.sum += level_s;
            if self.samples >= LOCK_SAMPLES {
                self.target = Some(self.sum / f64::from(self.samples));
            }
            return self.ppm();
        };
        // Playback: fuller than the target means the device is slower than
        // the daemon (slow down: a negative correction).
        let error = match flow {
            Flow::Playback => target - level_s,
            Flow::Capture => level_s - target,
        };
        if first || step > MAX_STEP_S {
            return self.ppm();
        }
        let alpha = step / (FILTER_S + step);
        self.filtered += (error - self.filtered) * alpha;
        let limit = f64::from(MAX_RATE_PPM);
        self.integral = (self.integral + KI * self.filtered * step).clamp(-limit, limit);
        self.ppm()
    }
}

fn to_ppm(x: f64) -> i32 {
    let limit = f64::from(MAX_RATE_PPM);
    // In range after the clamp, so the cast is exact.
    x.clamp(-limit, limit).round() as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pacer::Schedule;

    /// A simulated device whose clock runs `ppm` fast against the daemon's,
    /// played (or recorded) through a [`Schedule`] that the loop corrects:
    /// returns the level error (seconds) at the end and its largest size
    /// after the first `settle_s` seconds.
    fn run(ppm: f64, flow: Flow, seconds: f64, settle_s: f64) -> (f64, f64, i32) {
        run_seeded(ppm, flow, seconds, settle_s, None)
    }

    /// [`run`], the loop [`seed`](DeviceClock::seed)ed with `seed` ppm at
    /// each reading until it locks.
    fn run_seeded(
        ppm: f64,
        flow: Flow,
        seconds: f64,
        settle_s: f64,
        seed: Option<f64>,
    ) -> (f64, f64, i32) {
        let rate = 48_000.0;
        let period = 480u64; // frames, 10 ms
        let bps = 48_000 * 4;
        let mut sched = Schedule::new(1_000_000_000, bps);
        let mut clock = DeviceClock::new();
        // Device position in frames = (t - t0) · rate · (1 + ppm).
        let t0 = 1_000_000_000u64;
        let cushion = 960.0; // frames ahead at start (playback) or behind (capture)
        let mut frames_moved = 0u64; // by the daemon
        let mut due = sched.due_ns();
        let mut worst: f64 = 0.0;
        let mut last_err = 0.0;
        let mut target = None;
        while (due - t0) as f64 * 1e-9 < seconds {
            let t = (due - t0) as f64 * 1e-9;
            let device = t * rate * (1.0 + ppm * 1e-6);
            frames_moved += period;
            let level = match flow {
                // Queued: what we handed over, plus the cushion, less played.
                Flow::Playback => cushion + frames_moved as f64 - device,
                // Captured, not read: produced plus cushion, less read.
                Flow::Capture => cushion + device - frames_moved as f64,
            };
            if let Some(p) = seed {
                clock.seed(p);
            }
            let u = clock.feed(due, level / rate, flow);
            sched.set_rate_ppm(u);
            if clock.locked() && target.is_none() {
                target = clock.target;
            }
            if let Some(tg) = target {
                last_err = level / rate - tg;
                if t > settle_s {
                    worst = worst.max(last_err.abs());
                }
            }
            due = sched.advance(period * 4);
        }
        (last_err, worst, sched.rate_ppm())
    }

    #[test]
    fn the_loop_locks_onto_a_device_500_ppm_fast_or_slow_in_both_directions() {
        for flow in [Flow::Playback, Flow::Capture] {
            for ppm in [500.0, -500.0, 100.0, 0.0] {
                let (end, worst, rate) = run(ppm, flow, 120.0, 60.0);
                assert!(
                    end.abs() < 0.000_5,
                    "{flow:?} {ppm} ppm: level off by {end} s at the end"
                );
                assert!(
                    worst < 0.001,
                    "{flow:?} {ppm} ppm: level off by {worst} s after lock-in"
                );
                assert!(
                    (f64::from(rate) - ppm).abs() < 5.0,
                    "{flow:?} {ppm} ppm: schedule at {rate} ppm"
                );
            }
        }
    }

    #[test]
    fn the_level_never_strays_far_while_the_loop_locks() {
        // Without the loop, 500 ppm move the level by 30 ms in a minute.
        for flow in [Flow::Playback, Flow::Capture] {
            let (_, worst, _) = run(500.0, flow, 60.0, 0.0);
            assert!(worst < 0.005, "{flow:?}: level off by {worst} s");
        }
    }

    #[test]
    fn a_loop_seeded_with_the_devices_measured_rate_holds_the_level_from_the_start() {
        for flow in [Flow::Playback, Flow::Capture] {
            let (_, unseeded, _) = run(500.0, flow, 60.0, 0.0);
            // Measured 3 ppm off, as a delay-locked loop may be.
            let (_, seeded, rate) = run_seeded(500.0, flow, 60.0, 0.0, Some(497.0));
            assert!(
                seeded < 0.000_2 && seeded < unseeded / 5.0,
                "{flow:?}: level off by {seeded} s seeded, {unseeded} s not"
            );
            assert!(
                (f64::from(rate) - 500.0).abs() < 5.0,
                "{flow:?}: {rate} ppm"
            );
        }
    }

    #[test]
    fn a_restart_keeps_the_rate_and_learns_the_level_again() {
        let mut c = DeviceClock::new();
        for i in 0..LOCK_SAMPLES {
            c.feed(1 + u64::from(i) * 10_000_000, 0.02, Flow::Playback);
        }
        assert!(c.locked());
        for i in 0..1_000u64 {
            c.feed(1_000_000_000 + i * 10_000_000, 0.019, Flow::Playback);
        }
        let before = c.ppm();
        assert!(before > 0, "emptier playback device: speed up ({before})");
        c.restart();
        assert!(!c.locked());
        assert!(
            c.ppm() != 0 && (c.ppm() - before).abs() < before.abs(),
            "{}",
            c.ppm()
        );
        assert_eq!(c.feed(50_000_000_000, f64::NAN, Flow::Playback), c.ppm());
    }
}
