//! Streams driven the way Linux's `virtio_snd` drives them (sound/virtio/
//! virtio_pcm_ops.c and virtio_pcm_msg.c): SET_PARAMS and PREPARE, every
//! period of the buffer queued before START, then one period queued again
//! for each one that completes.
//!
//! One thread waits on the txq and rxq call eventfds together (`ppoll`), so
//! neither queue's completions wait for the other's. Each completion's time
//! is [`IoCompletion::completed_at`], taken right after the wakeup; its
//! error is measured against the ideal schedule: the k-th completion of a
//! stream is due k periods after its START. START's own instant is taken as
//! the middle of its round trip (the daemon reads the clock somewhere in
//! between); each stream's round trip is kept so the uncertainty is known.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use crate::frontend::Queue;
use crate::snd::{Direction, Event, IoCompletion, PcmFormat, PcmRate, SndDriver, Status};

use super::{Error, Result};

/// 10 ms at 48 kHz, stereo, S16.
pub const PERIOD_BYTES: u32 = 1920;
/// Periods per buffer: all are queued before START.
pub const BUFFER_PERIODS: u32 = 4;
/// A period's duration.
pub const PERIOD: Duration = Duration::from_millis(10);
const PERIOD_NS: i64 = 10_000_000;
/// How long the daemon gets to take the pre-queued buffers before START
/// (the kicks and START travel on different queues).
const SETTLE: Duration = Duration::from_millis(30);
/// Consecutive completions late by the same whole number of periods that
/// make a skipped period (the device ran dry).
const SKIP_RUN: usize = 3;
/// How long to wait for RELEASE to give every buffer back.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// One completion, measured.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Index of the stream in the load.
    pub stream: usize,
    /// When it was seen.
    pub at: Instant,
    /// Signed distance from its ideal time, in nanoseconds.
    pub err_ns: i64,
    /// The device answered OK (not IO_ERR).
    pub ok: bool,
}

/// A stream of the load.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    /// Stream id.
    pub id: u32,
    /// Output (txq) or input (rxq).
    pub dir: Direction,
    /// START's reference instant (middle of its round trip).
    pub start: Option<Instant>,
    /// START's round trip.
    pub start_rtt: Duration,
    /// How much earlier than the middle of START's round trip the stream's
    /// schedule proved to start ([`Load::rebase_starts`]).
    pub start_shift: Duration,
    /// Completions since START.
    pub done: u64,
    /// Periods the device skipped (ran dry): completions from then on are
    /// counted against later slots.
    pub missed: u64,
    /// Buffers the device holds.
    pub in_flight: usize,
    /// Whether each completion is followed by a new buffer.
    pub feed: bool,
    /// Indexes of its latest samples, while they are more than half a
    /// period late.
    late_run: Vec<usize>,
}

/// A set of streams running against a daemon.
#[derive(Debug)]
pub struct Load<'a> {
    snd: &'a mut SndDriver,
    streams: Vec<StreamInfo>,
    index: HashMap<u32, usize>,
    pcm: Vec<u8>,
    samples: Vec<Sample>,
    /// Events read from the eventq, when buffers were posted there.
    events: Vec<Event>,
    watch_events: bool,
    /// The daemon's notifications on the txq and rxq so far (the sum of
    /// what each read of their call eventfds said).
    notifications: u64,
}

fn signed_ns(at: Instant, ideal: Instant) -> i64 {
    let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    if at >= ideal {
        ns(at - ideal)
    } else {
        -ns(ideal - at)
    }
}

impl<'a> Load<'a> {
    /// Sets up and prepares `streams` (id, direction) with 48 kHz stereo S16
    /// 10 ms periods, and queues a whole buffer on each.
    pub fn prepare(snd: &'a mut SndDriver, streams: &[(u32, Direction)]) -> Result<Load<'a>> {
        let mut load = Load {
            snd,
            streams: Vec::with_capacity(streams.len()),
            index: HashMap::with_capacity(streams.len()),
            pcm: vec![0; PERIOD_BYTES as usize],
            samples: Vec::new(),
            events: Vec::new(),
            notifications: 0,
            watch_events: false,
        };
        for &(id, dir) in streams {
            let status = load.snd.set_params(
                id,
                BUFFER_PERIODS * PERIOD_BYTES,
                PERIOD_BYTES,
                0,
                2,
                PcmFormat::S16.code(),
                PcmRate::R48000.code(),
            )?;
            expect_ok("SET_PARAMS", id, status)?;
            expect_ok("PREPARE", id, load.snd.prepare(id)?)?;
            load.index.insert(id, load.streams.len());
            load.streams.push(StreamInfo {
                id,
                dir,
                start: None,
                start_rtt: Duration::ZERO,
                start_shift: Duration::ZERO,
                done: 0,
                missed: 0,
                in_flight: 0,
                feed: true,
                late_run: Vec::with_capacity(SKIP_RUN),
            });
        }
        for i in 0..load.streams.len() {
            for _ in 0..BUFFER_PERIODS {
                load.queue_one(i)?;
            }
        }
        thread::sleep(SETTLE);
        // Nothing may come back before START: anything here is a refusal.
        load.poll(Duration::ZERO)?;
        if let Some(s) = load
            .streams
            .iter()
            .find(|s| s.in_flight as u32 != BUFFER_PERIODS)
        {
            return Err(Error::Protocol(format!(
                "stream {}: buffers came back before START",
                s.id
            )));
        }
        Ok(load)
    }

    fn queue_one(&mut self, i: usize) -> Result<()> {
        let s = &mut self.streams[i];
        match s.dir {
            Direction::Output => self.snd.tx(s.id, &self.pcm, &[])?,
            Direction::Input => self.snd.rx(s.id, PERIOD_BYTES as usize, &[])?,
        };
        s.in_flight += 1;
        Ok(())
    }

    /// Sends START to every stream, one after the other, serving completions
    /// in between.
    pub fn start(&mut self) -> Result<()> {
        for i in 0..self.streams.len() {
            let id = self.streams[i].id;
            let sent = Instant::now();
            let status = self.snd.start(id)?;
            let answered = Instant::now();
            expect_ok("START", id, status)?;
            let rtt = answered - sent;
            self.streams[i].start = Some(sent + rtt / 2);
            self.streams[i].start_rtt = rtt;
            self.poll(Duration::ZERO)?;
        }
        Ok(())
    }

    /// Serves completions until `deadline`.
    pub fn run_until(&mut self, deadline: Instant) -> Result<()> {
        self.run_while(deadline, |_| true)
    }

    /// Serves completions until `deadline` or until `go_on` says stop.
    pub fn run_while(&mut self, deadline: Instant, go_on: impl Fn(&Load) -> bool) -> Result<()> {
        loop {
            let now = Instant::now();
            if now >= deadline || !go_on(self) {
                return Ok(());
            }
            self.poll(deadline - now)?;
        }
    }

    /// Posts `n` event buffers; events are then read as they come, each
    /// time-stamped like a completion ([`Load::events`]), and each used
    /// buffer is posted again.
    pub fn watch_events(&mut self, n: usize) -> Result<()> {
        self.snd.post_event_buffers(n)?;
        self.watch_events = true;
        Ok(())
    }

    /// The daemon's txq and rxq notifications seen so far.
    pub fn notifications(&self) -> u64 {
        self.notifications
    }

    /// The events read so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Waits up to `timeout` for the txq or rxq (or eventq) call eventfd,
    /// then handles every completion on both I/O queues (and every event).
    /// Returns how many completions there were.
    pub fn poll(&mut self, timeout: Duration) -> Result<usize> {
        const QUEUES: [Queue; 3] = [Queue::Tx, Queue::Rx, Queue::Event];
        let fd = |q| self.snd.dev().queue(q).call_fd().as_raw_fd();
        let mut pfds = QUEUES.map(|q| libc::pollfd {
            fd: fd(q),
            events: libc::POLLIN,
            revents: 0,
        });
        if !self.watch_events {
            pfds[2].fd = -1;
        }
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `pfds` is an array of three valid pollfds; `ts` outlives the
        // call; the signal mask pointer is null (none installed).
        let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), 3, &ts, std::ptr::null()) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(Error::Io(e));
        }
        for (pfd, q) in pfds.iter().zip(QUEUES) {
            if pfd.revents & libc::POLLIN != 0 {
                // Drain before reading the ring: a completion after this
                // read fires the eventfd again. WouldBlock is harmless.
                let n = self.snd.dev().queue(q).call_fd().read().unwrap_or(0);
                if q != Queue::Event {
                    self.notifications = self.notifications.saturating_add(n);
                }
            }
        }
        let mut n = 0;
        for q in [Queue::Tx, Queue::Rx] {
            // Read until the ring is empty *after* the last used_event
            // update: the device may have added entries between our read of
            // used.idx and that update, and it will not notify for them
            // (EVENT_IDX, virtio 2.7.10). Sleeping then would miss them.
            while self.snd.pending_io(q) > 0 {
                let got = self.snd.wait_io(q, Duration::ZERO)?;
                if got.is_empty() {
                    break;
                }
                for c in got {
                    self.complete(c)?;
                    n += 1;
                }
            }
        }
        if self.watch_events {
            let before = self.events.len();
            while let Some(e) = self.snd.wait_event(Duration::ZERO)? {
                self.events.push(e);
            }
            let used = self.events.len() - before;
            if used > 0 {
                self.snd.post_event_buffers(used)?;
            }
        }
        Ok(n)
    }

    fn complete(&mut self, c: IoCompletion) -> Result<()> {
        let Some(&i) = self.index.get(&c.stream_id) else {
            return Err(Error::Protocol(format!(
                "completion for stream {} which the load does not drive",
                c.stream_id
            )));
        };
        let s = &mut self.streams[i];
        s.in_flight = s.in_flight.saturating_sub(1);
        let Some(start) = s.start else {
            return Ok(());
        };
        let k = s.done + s.missed + 1;
        let ideal = start + PERIOD * u32::try_from(k).unwrap_or(u32::MAX);
        let mut err = signed_ns(c.completed_at, ideal);
        // A late tick is followed by one on time (absolute schedule); a
        // period the device skipped (it ran dry) shifts every later one. So
        // only [`SKIP_RUN`] late completions in a row, late by the same whole
        // number of periods, are a skip: they are then counted against
        // later slots.
        if err > PERIOD_NS / 2 {
            let run = &mut s.late_run;
            if run.len() == SKIP_RUN {
                run.remove(0);
            }
            run.push(self.samples.len());
            let errs: Vec<i64> = run
                .iter()
                .map(|&j| self.samples.get(j).map_or(err, |p| p.err_ns))
                .collect();
            let (lo, hi) = (errs.iter().min(), errs.iter().max());
            if run.len() == SKIP_RUN && lo.zip(hi).is_some_and(|(lo, hi)| hi - lo < PERIOD_NS / 4) {
                let skipped = (err + PERIOD_NS / 2) / PERIOD_NS;
                s.missed += skipped as u64;
                err -= skipped * PERIOD_NS;
                for &j in &run[..SKIP_RUN - 1] {
                    self.samples[j].err_ns -= skipped * PERIOD_NS;
                }
                run.clear();
            }
        } else {
            s.late_run.clear();
        }
        s.done += 1;
        self.samples.push(Sample {
            stream: i,
            at: c.completed_at,
            err_ns: err,
            ok: c.status == Status::Ok,
        });
        if s.feed {
            self.queue_one(i)?;
        }
        Ok(())
    }

    /// Moves each stream's reference instant back if its completions prove
    /// the daemon started earlier than the middle of START's round trip: a
    /// completion is never due before START + k periods (the daemon never
    /// completes early), so an early-looking one means the reference is
    /// late. The reference never moves before START was sent.
    pub fn rebase_starts(&mut self) {
        let mut earliest = vec![0i64; self.streams.len()];
        for s in &self.samples {
            earliest[s.stream] = earliest[s.stream].min(s.err_ns);
        }
        for (i, st) in self.streams.iter_mut().enumerate() {
            let half_rtt = i64::try_from(st.start_rtt.as_nanos() / 2).unwrap_or(i64::MAX);
            let shift = (-earliest[i]).min(half_rtt).max(0);
            if shift == 0 {
                continue;
            }
            st.start_shift += Duration::from_nanos(shift as u64);
            st.start = st.start.map(|t| t - Duration::from_nanos(shift as u64));
            for smp in self.samples.iter_mut().filter(|smp| smp.stream == i) {
                smp.err_ns += shift;
            }
        }
    }

    /// Stops queueing new buffers on stream `i` (what it holds still comes back).
    pub fn stop_feeding(&mut self, i: usize) {
        self.streams[i].feed = false;
    }

    /// The streams, in the order given to [`Load::prepare`].
    pub fn streams(&self) -> &[StreamInfo] {
        &self.streams
    }

    /// Every completion measured since START.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// STOP and RELEASE every stream, and waits for every buffer to come back.
    pub fn release(mut self) -> Result<Vec<Sample>> {
        for s in &mut self.streams {
            s.start = None;
            s.feed = false;
        }
        for i in 0..self.streams.len() {
            let id = self.streams[i].id;
            expect_ok("STOP", id, self.snd.stop(id)?)?;
            expect_ok("RELEASE", id, self.snd.release(id)?)?;
            self.poll(Duration::ZERO)?;
        }
        let deadline = Instant::now() + RELEASE_WAIT;
        self.run_while(deadline, |l| l.streams.iter().any(|s| s.in_flight > 0))?;
        if let Some(s) = self.streams.iter().find(|s| s.in_flight > 0) {
            return Err(Error::Protocol(format!(
                "stream {}: {} buffers not returned by RELEASE",
                s.id, s.in_flight
            )));
        }
        Ok(self.samples)
    }
}

fn expect_ok(what: &'static str, stream: u32, status: Status) -> Result<()> {
    if status == Status::Ok {
        Ok(())
    } else {
        Err(Error::Status {
            what,
            stream,
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_distance() {
        let t = Instant::now();
        let later = t + Duration::from_micros(5);
        assert_eq!(signed_ns(later, t), 5000);
        assert_eq!(signed_ns(t, later), -5000);
    }
}
