//! Real-time pacing: an absolute schedule on `CLOCK_MONOTONIC`.
//!
//! The guest has no audio clock but our completions (Linux's `virtio_snd`
//! advances its PCM pointer as each buffer completes: sound/virtio/), so
//! a stream's n-th byte is due at `start + n / bytes_per_second`, computed
//! from the start each time in integer nanoseconds: no accumulated rounding,
//! no drift, and a late wakeup never makes the next one earlier than its due
//! time (no bursts).

use std::io;
use std::os::fd::RawFd;

/// Nanoseconds on `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The largest rate correction a schedule takes, in parts per million (a
/// card's crystal is within ±100 ppm; a sound server's clock within a few
/// hundred).
pub const MAX_RATE_PPM: i32 = 2_000;

/// The schedule of one running stream.
///
/// A stream on a device with a clock of its own runs at that clock's rate:
/// [`Schedule::set_rate_ppm`] makes the schedule that much faster (or
/// slower, negative) from the current position on, without a jump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    start_ns: u64,
    bytes_per_second: u64,
    /// Bytes consumed (or produced) since start.
    position: u64,
    /// The rate correction, and the position and time it runs from.
    ppm: i32,
    anchor_ns: u64,
    anchor_position: u64,
    /// `start_ns` as made, before any shift: tells one START from another.
    origin_ns: u64,
}

impl Schedule {
    pub fn new(start_ns: u64, bytes_per_second: u64) -> Schedule {
        Schedule {
            start_ns,
            bytes_per_second: bytes_per_second.max(1),
            position: 0,
            ppm: 0,
            anchor_ns: start_ns,
            anchor_position: 0,
            origin_ns: start_ns,
        }
    }

    /// When the byte at `position` is due.
    pub fn due_ns(&self) -> u64 {
        let bytes = u128::from(self.position.saturating_sub(self.anchor_position));
        let per_million = u128::from((1_000_000 + i64::from(self.ppm)).max(1).unsigned_abs());
        let offset =
            bytes * 1_000_000_000 * 1_000_000 / u128::from(self.bytes_per_second) / per_million;
        self.anchor_ns
            .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// Runs the schedule `ppm` parts per million faster than real time
    /// from now on (clamped to ±[`MAX_RATE_PPM`]); what was due stays due.
    pub fn set_rate_ppm(&mut self, ppm: i32) {
        let ppm = ppm.clamp(-MAX_RATE_PPM, MAX_RATE_PPM);
        if ppm != self.ppm {
            self.anchor_ns = self.due_ns();
            self.anchor_position = self.position;
            self.ppm = ppm;
        }
    }

    pub fn rate_ppm(&self) -> i32 {
        self.ppm
    }

    /// When the schedule was made (its start before any shift).
    pub fn origin_ns(&self) -> u64 {
        self.origin_ns
    }

    /// Advances by `bytes` and returns the new due time.
    pub fn advance(&mut self, bytes: u64) -> u64 {
        self.position = self.position.saturating_add(bytes);
        self.due_ns()
    }

    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    /// Moves the whole schedule `ns` later (the ring was stopped for that
    /// long: the guest did not live that time, so nothing falls due in it).
    pub fn shift(&mut self, ns: u64) {
        self.start_ns = self.start_ns.saturating_add(ns);
        self.anchor_ns = self.anchor_ns.saturating_add(ns);
    }
}

/// A tick later than this (or than a period, if longer) does not complete
/// the backlog in a burst: the schedule moves to now (B10 of the review).
/// 30 ms is the slack an ALSA stream keeps in its cushion
/// (`vsound_devices::alsa::CUSHION_MS`): a tick that late has cost the
/// listener a gap anyway.
pub const REANCHOR_MIN_NS: u64 = 30_000_000;

/// What a stream due at some time does at `now` (see [`tick_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickAt {
    /// Not due yet.
    NotYet,
    /// Due: tick now.
    Due,
    /// So late that the schedule was moved to now (by `late_ns`): tick
    /// now; `xrun` unless it is the stream's first tick since START (an
    /// endpoint still opening is no gap the guest hears).
    Reanchored { late_ns: u64, xrun: bool },
}

/// The pacing decision of a tick, a pure function of the schedule, the due
/// time and the clock's `now`: never early; on time or a little late, tick
/// (the absolute schedule catches up without drift); later than a period
/// and [`REANCHOR_MIN_NS`], move the schedule to now instead of completing
/// the messages it owes back to back.
pub fn tick_at(schedule: Option<&mut Schedule>, due: &mut u64, now: u64, period_ns: u64) -> TickAt {
    if now < *due {
        return TickAt::NotYet;
    }
    let late = now - *due;
    if late <= period_ns.max(REANCHOR_MIN_NS) {
        return TickAt::Due;
    }
    let first = schedule.as_ref().is_none_or(|s| s.position == 0);
    if let Some(s) = schedule {
        s.shift(late);
    }
    *due = now;
    TickAt::Reanchored {
        late_ns: late,
        xrun: !first,
    }
}

/// Lowers this thread's timer slack to 1 µs so wakeups land on time (the
/// default 50 µs would be most of our pacing budget).
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer; no pointers involved.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
}

/// Waits until `fd` is readable or `deadline_ns` (absolute, monotonic) has
/// passed. `None` waits for the fd only. Returns whether the fd is readable.
pub fn wait_fd_until(fd: RawFd, deadline_ns: Option<u64>) -> io::Result<bool> {
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ts;
        let tsp = match deadline_ns {
            None => std::ptr::null(),
            Some(d) => {
                let left = d.saturating_sub(now_ns());
                if left == 0 {
                    return Ok(false);
                }
                ts = libc::timespec {
                    tv_sec: (left / 1_000_000_000) as libc::time_t,
                    tv_nsec: (left % 1_000_000_000) as libc::c_long,
                };
                &ts as *const libc::timespec
            }
        };
        // SAFETY: `pfd` is one valid pollfd; `tsp` is null or points to `ts`,
        // which lives until the call returns; the signal mask pointer is null.
        let r = unsafe { libc::ppoll(&mut pfd, 1, tsp, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r > 0 {
            return Ok(true);
        }
        if deadline_ns.is_some_and(|d| now_ns() >= d) {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_has_no_drift_for_periods_that_do_not_divide_a_second() {
        // 44.1 kHz stereo S16, 10 ms periods of 441 frames = 1764 bytes:
        // after 6000 periods (60 s) the due time is exactly 60 s.
        let mut s = Schedule::new(1_000, 176_400);
        let mut due = 0;
        for _ in 0..6000 {
            due = s.advance(1764);
        }
        assert_eq!(due, 1_000 + 60_000_000_000);
        // A period of 10.666 ms (512 frames at 48 kHz) is not truncated.
        let mut s = Schedule::new(0, 192_000);
        for _ in 0..3 {
            s.advance(2048);
        }
        assert_eq!(s.due_ns(), 32_000_000);
    }

    #[test]
    fn a_rate_change_keeps_what_was_due_and_scales_what_follows() {
        // 192,000 bytes per second: 1,920 bytes are 10 ms.
        let mut s = Schedule::new(1_000_000, 192_000);
        assert_eq!(s.advance(1_920), 11_000_000);
        s.set_rate_ppm(1_000);
        assert_eq!(s.due_ns(), 11_000_000, "no jump at the change");
        // 10 ms of audio at 1,000 ppm fast take 10 ms / 1.001.
        assert_eq!(s.advance(1_920), 11_000_000 + 9_990_009);
        s.set_rate_ppm(-1_000);
        assert_eq!(s.advance(1_920), 11_000_000 + 9_990_009 + 10_010_010);
        s.set_rate_ppm(1_000_000);
        assert_eq!(s.rate_ppm(), MAX_RATE_PPM, "clamped");
        s.shift(5);
        assert_eq!(s.due_ns(), 11_000_000 + 9_990_009 + 10_010_010 + 5);
    }

    /// A stream of 10 ms periods (1,920 bytes at 192,000 bytes/s) ticked by
    /// a fake clock that wakes at `wakes` (ns after the start): the times
    /// of its ticks and its xruns.
    fn run_ticks(wakes: &[u64]) -> (Vec<u64>, u32) {
        let start = 1_000_000_000;
        let mut s = Schedule::new(start, 192_000);
        let mut due = start;
        let (mut ticks, mut xruns) = (Vec::new(), 0);
        for &w in wakes {
            let now = start + w;
            // A lane ticks every due stream at a wake-up, then sleeps
            // until the next due time: here, one tick per wake-up at most.
            match tick_at(Some(&mut s), &mut due, now, 10_000_000) {
                TickAt::NotYet => continue,
                TickAt::Due => {}
                TickAt::Reanchored { xrun, .. } => xruns += u32::from(xrun),
            }
            ticks.push(now - start);
            due = s.advance(1_920);
        }
        (ticks, xruns)
    }

    #[test]
    fn a_tick_is_never_early_and_on_time_ticks_keep_the_schedule() {
        let (ticks, xruns) = run_ticks(&[0, 9_999_999, 10_000_050, 19_999_000, 20_000_050]);
        assert_eq!(
            ticks,
            vec![0, 10_000_050, 20_000_050],
            "the early wake-ups did nothing, the others ticked"
        );
        assert_eq!(xruns, 0);
    }

    #[test]
    fn a_little_late_tick_catches_up_without_drift() {
        // 15 ms late once (less than REANCHOR_MIN_NS): the next ones are
        // due at their original times.
        let (ticks, xruns) = run_ticks(&[0, 25_000_000, 25_000_001, 30_000_000, 40_000_000]);
        assert_eq!(
            ticks,
            vec![0, 25_000_000, 25_000_001, 30_000_000, 40_000_000]
        );
        assert_eq!(xruns, 0);
    }

    #[test]
    fn a_tick_late_by_more_than_the_bound_reanchors_and_counts_one_xrun_with_no_burst() {
        // 95 ms late (9 periods owed): one tick now, then one per period
        // from there, not nine back to back.
        let (ticks, xruns) = run_ticks(&[
            0,
            105_000_000,
            105_000_001,
            110_000_000,
            115_000_000,
            125_000_000,
        ]);
        assert_eq!(ticks, vec![0, 105_000_000, 115_000_000, 125_000_000]);
        assert_eq!(xruns, 1);
    }

    #[test]
    fn a_late_first_tick_after_start_reanchors_without_an_xrun() {
        // START while the endpoint opened for 60 ms: no gap heard.
        let (ticks, xruns) = run_ticks(&[60_000_000, 70_000_000]);
        assert_eq!(ticks, vec![60_000_000, 70_000_000]);
        assert_eq!(xruns, 0);
    }

    #[test]
    fn waiting_for_a_past_deadline_returns_at_once() {
        let efd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        use std::os::fd::AsRawFd;
        assert!(!wait_fd_until(efd.as_raw_fd(), Some(0)).unwrap());
        efd.write(1).unwrap();
        assert!(wait_fd_until(efd.as_raw_fd(), None).unwrap());
    }
}
