//! What the machine itself allows, measured by the bench so the daemon's
//! figures can be read against them:
//! - [`wakeup_round_trip`]: an eventfd ping-pong between two threads, the
//!   floor under any kick-then-call round trip (a control request is one).
//!   On one CPU the woken thread runs where the waker sleeps; across CPUs
//!   the wakeup has to reach an idle CPU, which is what happens between a
//!   guest and a daemon that run side by side;
//! - [`timer_lateness`]: how late a thread waking every period on an
//!   absolute schedule (`ppoll` with a 1 µs timer slack, as the daemon's
//!   workers do) actually wakes, the floor under the pacing error;
//! - [`timer_notify_lateness`]: the same timer, whose thread at each
//!   wake-up signals an eventfd that a second thread waits on in `poll`,
//!   as the daemon's reactor notifies the frontend of a completion: how
//!   late the second thread wakes, the floor under the pacing error that
//!   a frontend sees (a completion is a timer wake-up and a notification);
//! - [`timer_cpu`]: the CPU a thread costs that does nothing but wake as
//!   often as the daemon did, in `epoll_wait` on a `timerfd`, the floor
//!   under the daemon's CPU per wake-up: re-armed at each wake-up
//!   (`TFD_TIMER_ABSTIME`, as the reactor does), or armed once with an
//!   interval;
//! - [`hangup_fanout`]: how long after `n` Unix sockets are closed at once
//!   `n` threads, each blocked in `poll` on its own peer (as a pad thread
//!   is on its client), have woken and told one collector thread, the
//!   floor under `n` pads' removals reaching the guest (`teardown`).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::stats::Summary;
use super::{Error, Result};

/// Rounds run first and not counted.
const WARMUP: usize = 20;

fn wait_readable(fd: &EventFd) -> io::Result<()> {
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; no timeout.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 {
            return match fd.read() {
                Ok(_) => Ok(()),
                // Another reader cannot exist; treat it as a spurious wakeup.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => Err(e),
            };
        }
        let e = io::Error::last_os_error();
        if r < 0 && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Pins the calling thread to `cpu`; false if that is not possible.
fn pin(cpu: usize) -> bool {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: `cpu` is below CPU_SETSIZE, so the bit is inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size given; 0 is this thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// Round trips (µs) of `iterations` eventfd ping-pongs between two threads
/// that sleep in `poll` between messages: both on CPU 0 (`cpus` = (0, 0)),
/// or on two CPUs. The threads are the bench's own, pinned for the
/// measurement only.
pub fn wakeup_round_trip(iterations: usize, cpus: (usize, usize)) -> Result<Summary> {
    let flags = libc::EFD_NONBLOCK | libc::EFD_CLOEXEC;
    let ping = EventFd::new(flags)?;
    let pong = EventFd::new(flags)?;
    let (ping2, pong2) = (ping.try_clone()?, pong.try_clone()?);
    let rounds = WARMUP + iterations;
    let echo =
        thread::Builder::new()
            .name("bench-echo".into())
            .spawn(move || -> io::Result<()> {
                pin(cpus.1);
                for _ in 0..rounds {
                    wait_readable(&ping2)?;
                    pong2.write(1)?;
                }
                Ok(())
            })?;
    let pinger = thread::Builder::new().name("bench-ping".into()).spawn(
        move || -> io::Result<Summary> {
            pin(cpus.0);
            let mut rtts = Vec::with_capacity(iterations);
            for i in 0..rounds {
                let sent = Instant::now();
                ping.write(1)?;
                wait_readable(&pong)?;
                if i >= WARMUP {
                    rtts.push(sent.elapsed().as_secs_f64() * 1e6);
                }
            }
            Ok(Summary::of(&mut rtts))
        },
    )?;
    let summary = pinger
        .join()
        .map_err(|_| Error::Protocol("ping thread panicked".into()))??;
    echo.join()
        .map_err(|_| Error::Protocol("echo thread panicked".into()))??;
    Ok(summary)
}

/// Lateness (µs) of each wakeup of a thread waking every `period` on an
/// absolute schedule for `duration`, as the daemon's stream workers do.
pub fn timer_lateness(period: Duration, duration: Duration) -> Result<Vec<f64>> {
    thread::Builder::new()
        .name("bench-timer".into())
        .spawn(move || -> io::Result<Vec<f64>> {
            // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
            let start = Instant::now();
            let mut late = Vec::new();
            let mut k = 0u32;
            loop {
                k += 1;
                let due = start + period * k;
                if due > start + duration {
                    break;
                }
                let left = due.saturating_duration_since(Instant::now());
                let ts = libc::timespec {
                    tv_sec: left.as_secs() as libc::time_t,
                    tv_nsec: left.subsec_nanos() as libc::c_long,
                };
                // SAFETY: no fds; `ts` outlives the call; no signal mask.
                unsafe { libc::ppoll(std::ptr::null_mut(), 0, &ts, std::ptr::null()) };
                if k as usize > WARMUP {
                    late.push(Instant::now().saturating_duration_since(due).as_secs_f64() * 1e6);
                }
            }
            Ok(late)
        })?
        .join()
        .map_err(|_| Error::Protocol("timer thread panicked".into()))?
        .map_err(Error::Io)
}

/// Lateness (µs), against each due time of a `period` absolute schedule,
/// of a second thread woken through an eventfd by the thread that woke on
/// the schedule (`ppoll`, 1 µs timer slack): a timer wake-up and one
/// notification, as a completion reaches a frontend waiting in `poll`.
pub fn timer_notify_lateness(period: Duration, duration: Duration) -> Result<Vec<f64>> {
    let bell = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::Io)?);
    let start = Instant::now() + Duration::from_millis(5);
    let rounds = (duration.as_nanos() / period.as_nanos().max(1)) as u64;
    let ring = Arc::clone(&bell);
    let timer =
        thread::Builder::new()
            .name("bench-timer".into())
            .spawn(move || -> io::Result<()> {
                // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
                for k in 1..=rounds {
                    let due = start + period * k as u32;
                    let left = due.saturating_duration_since(Instant::now());
                    let ts = libc::timespec {
                        tv_sec: left.as_secs() as libc::time_t,
                        tv_nsec: left.subsec_nanos() as libc::c_long,
                    };
                    // SAFETY: no fds; `ts` outlives the call; no signal mask.
                    unsafe { libc::ppoll(std::ptr::null_mut(), 0, &ts, std::ptr::null()) };
                    ring.write(1)?;
                }
                Ok(())
            })?;
    let mut late = Vec::with_capacity(rounds as usize);
    let mut seen: u64 = 0;
    while seen < rounds {
        wait_readable_counting(&bell, &mut seen).map_err(Error::Io)?;
        // The latest due time rung for (two rings read at once: the later).
        let due = start + period * seen as u32;
        if seen as usize > WARMUP {
            late.push(Instant::now().saturating_duration_since(due).as_secs_f64() * 1e6);
        }
    }
    timer
        .join()
        .map_err(|_| Error::Protocol("timer thread panicked".into()))?
        .map_err(Error::Io)?;
    Ok(late)
}

/// [`wait_readable`], adding what the eventfd counted to `seen`.
fn wait_readable_counting(fd: &EventFd, seen: &mut u64) -> io::Result<()> {
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; no timeout.
        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
        if r > 0 {
            match fd.read() {
                Ok(n) => {
                    *seen += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        let e = io::Error::last_os_error();
        if r < 0 && e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How a [`timer_cpu`] thread's timer is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arming {
    /// `timerfd_settime` (absolute) after every wake-up, for the next one.
    EachWake,
    /// Once, with an interval: the kernel re-arms it.
    Interval,
}

fn timespec_ns(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The CPU (a fraction of one core) of a thread that wakes `wakes_per_s`
/// times a second for `duration` and does nothing else: `epoll_wait` on a
/// `timerfd` (`CLOCK_MONOTONIC`, 1 µs timer slack), read it, and with
/// [`Arming::EachWake`] arm it for the next wake-up, the reactor's loop
/// without its work; and, `notifies_per_wake` times a wake-up on average,
/// write an eventfd another thread sleeps on in `poll` and reads (as the
/// daemon writes a queue's call eventfd, which wakes the guest's vCPU, or
/// here the bench's frontend). Only the waking thread's CPU is counted
/// (`CLOCK_THREAD_CPUTIME_ID`).
pub fn timer_cpu(
    wakes_per_s: f64,
    duration: Duration,
    arming: Arming,
    notifies_per_wake: f64,
) -> Result<f64> {
    let period_ns = (1e9 / wakes_per_s.max(1.0)).max(1_000.0) as u64;
    let call = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = (notifies_per_wake > 0.0)
        .then(|| {
            let (call, stop) = (Arc::clone(&call), Arc::clone(&stop));
            thread::Builder::new()
                .name("bench-notified".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if wait_readable(&call).is_err() {
                            return;
                        }
                    }
                })
        })
        .transpose()?;
    let writer = Arc::clone(&call);
    let result = thread::Builder::new()
        .name("bench-timer-cpu".into())
        .spawn(move || -> io::Result<f64> {
            let err = io::Error::last_os_error;
            // SAFETY: PR_SET_TIMERSLACK takes a plain integer.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong, 0, 0, 0) };
            // SAFETY: plain syscalls; the fds are closed below.
            let tfd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_CLOEXEC | libc::TFD_NONBLOCK,
                )
            };
            if tfd < 0 {
                return Err(err());
            }
            // SAFETY: as above.
            let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            let close = |fd: i32| {
                // SAFETY: `fd` is ours and closed once.
                unsafe { libc::close(fd) };
            };
            if ep < 0 {
                close(tfd);
                return Err(err());
            }
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 0,
            };
            let arm = |at_ns: u64, interval_ns: u64| -> io::Result<()> {
                let spec = libc::itimerspec {
                    it_interval: timespec_ns(interval_ns),
                    it_value: timespec_ns(at_ns),
                };
                // SAFETY: `spec` outlives the call; no old value wanted.
                let r = unsafe {
                    libc::timerfd_settime(tfd, libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut())
                };
                if r < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            let result = (|| -> io::Result<f64> {
                // SAFETY: valid epoll and timer fds; `ev` outlives the call.
                if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, tfd, &mut ev) } < 0 {
                    return Err(err());
                }
                let start = clock_ns(libc::CLOCK_MONOTONIC);
                let mut due = start + period_ns;
                match arming {
                    Arming::EachWake => arm(due, 0)?,
                    Arming::Interval => arm(due, period_ns)?,
                }
                let cpu0 = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
                let end = start + duration.as_nanos() as u64;
                let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
                let mut owed = 0.0f64;
                loop {
                    // SAFETY: `out` has room for 4 events.
                    let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, -1) };
                    if n < 0 {
                        let e = err();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        return Err(e);
                    }
                    let mut expirations = 0u64;
                    // SAFETY: 8 bytes into a u64; the fd is non-blocking.
                    unsafe { libc::read(tfd, (&mut expirations as *mut u64).cast(), 8) };
                    owed += notifies_per_wake;
                    while owed >= 1.0 {
                        owed -= 1.0;
                        let _ = writer.write(1);
                    }
                    let now = clock_ns(libc::CLOCK_MONOTONIC);
                    if now >= end {
                        break;
                    }
                    if arming == Arming::EachWake {
                        due += period_ns;
                        arm(due, 0)?;
                    }
                }
                let cpu = clock_ns(libc::CLOCK_THREAD_CPUTIME_ID) - cpu0;
                let wall = clock_ns(libc::CLOCK_MONOTONIC) - start;
                Ok(cpu as f64 / wall.max(1) as f64)
            })();
            close(ep);
            close(tfd);
            result
        })?
        .join()
        .map_err(|_| Error::Protocol("timer thread panicked".into()))?
        .map_err(Error::Io);
    stop.store(true, Ordering::SeqCst);
    let _ = call.write(1);
    if let Some(r) = reader {
        let _ = r.join();
    }
    result
}

/// Times (µs from the first close) at which one collector thread learns of
/// each of `n` threads' wake-ups, over `rounds` rounds: each thread blocks
/// in `poll` on its own socket until its peer is closed (all `n` peers
/// closed at once by one thread, as the bench closes the pad clients),
/// then writes 8 bytes into one pipe; the collector reads the pipe in
/// `poll` and timestamps each read's records when it reads them (as the
/// bench's load loop timestamps the events a notification brings).
pub fn hangup_fanout(n: usize, rounds: usize) -> Result<Summary> {
    let mut all = Vec::with_capacity(n.saturating_mul(rounds));
    for _ in 0..rounds {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: both fds are new and owned here from now on.
        let (rd, wr) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        let mut peers = Vec::with_capacity(n);
        let mut waiters = Vec::with_capacity(n);
        for _ in 0..n {
            let (a, b) = std::os::unix::net::UnixStream::pair()?;
            peers.push(a);
            let wr = wr.try_clone()?;
            waiters.push(thread::Builder::new().name("bench-hup".into()).spawn(
                move || -> io::Result<()> {
                    let mut pfd = libc::pollfd {
                        fd: b.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    loop {
                        // SAFETY: one valid pollfd; no timeout.
                        let r = unsafe { libc::poll(&mut pfd, 1, -1) };
                        if r > 0 {
                            break;
                        }
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                    io::Write::write_all(&mut &wr, &1u64.to_ne_bytes())
                },
            )?);
        }
        drop(wr);
        // Every waiter is in `poll` long before this.
        thread::sleep(Duration::from_millis(50));
        let closed = Instant::now();
        drop(peers);
        let mut seen = 0usize;
        let mut buf = [0u8; 8 * 64];
        while seen < n {
            let got = io::Read::read(&mut &rd, &mut buf)?;
            if got == 0 {
                break;
            }
            let at = closed.elapsed().as_secs_f64() * 1e6;
            let records = got / 8;
            seen += records;
            all.extend(std::iter::repeat_n(at, records));
        }
        for w in waiters {
            w.join()
                .map_err(|_| Error::Protocol("hang-up thread panicked".into()))??;
        }
        if seen < n {
            return Err(Error::Protocol(format!(
                "hang-up floor: {seen} of {n} threads reported"
            )));
        }
    }
    Ok(Summary::of(&mut all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_measure_something() {
        let rt = wakeup_round_trip(10, (0, 0)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rt.n, 10);
        assert!(rt.p50 > 0.0);
        let late = timer_lateness(Duration::from_millis(1), Duration::from_millis(40))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(late.len() >= 10 && late.iter().all(|&l| l >= 0.0));
        // One lateness per due time past the warm-up, each after its due
        // time (the notified thread never wakes before the timer's).
        let notified = timer_notify_lateness(Duration::from_millis(1), Duration::from_millis(60))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            notified.len() >= 30 && notified.len() <= 40 && notified.iter().all(|&l| l > 0.0),
            "{notified:?}"
        );
        for arming in [Arming::EachWake, Arming::Interval] {
            let cpu = timer_cpu(1000.0, Duration::from_millis(50), arming, 1.5)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(cpu > 0.0 && cpu < 1.0, "{arming:?}: {cpu}");
        }
    }

    #[test]
    fn the_hangup_floor_hears_every_thread_of_every_round_after_the_close() {
        let s = hangup_fanout(8, 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.n, 24);
        assert!(s.p50 > 0.0 && s.p50 <= s.max, "{s:?}");
    }
}
