//! What the machine itself allows, measured by the bench so the daemon's
//! figures can be read against them:
//! - [`wakeup_round_trip`]: an eventfd ping-pong between two threads, the
//!   floor under any kick-then-call round trip (a control request is one).
//!   On one CPU the woken thread runs where the waker sleeps; across CPUs
//!   the wakeup has to reach an idle CPU, which is what happens between a
//!   guest and a daemon that run side by side;
//! - [`timer_lateness`]: how late a thread waking every period on an
//!   absolute schedule (`ppoll` with a 1 µs timer slack, as the daemon's
//!   workers do) actually wakes, the floor under the pacing error.

use std::io;
use std::os::fd::AsRawFd;
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
    }
}
