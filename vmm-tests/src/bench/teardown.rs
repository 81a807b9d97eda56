//! `teardown`: K running output streams lose their device at once; how
//! long until the daemon has processed the removal, and whether the other
//! streams keep their pace meanwhile.
//!
//! The removal is a `pad` client closing its connection (devices/src/pad.rs:
//! connecting attaches the pad, closing detaches it). Each removed stream has
//! its own pad (a pad serves one playback stream); two outputs and two
//! inputs on `null` are the bystanders. At the removal the bench stops
//! queueing buffers on the removed streams (an application that stops on
//! the error) and waits for every buffer it had queued on them to come back.
//!
//! Three times are measured from the instant the clients are closed:
//! - the JACK_DISCONNECTED event of each removed pad's jack: the daemon has
//!   run its removal procedure (docs/design.md, "Safe hot-removal", rule 6);
//! - each removed stream's first IO_ERR completion;
//! - each removed stream's last held buffer back. The daemon keeps the
//!   guest's clock after a removal (rule 6, `on_remove = "silence"`), so
//!   held buffers come back one per period ([`Returns::Paced`]), not in a
//!   burst: this time is about `held` periods by design.
//!
//! After each run, the machine's floor under the first time is measured
//! (`floor::hangup_fanout`: as many bare threads as pads woken by their
//! sockets' hang-up, each telling one thread), so that the removal can be
//! read against it.
//!
//! Without the hot-removal machinery (no jack event) the report is marked
//! [`PENDING`].

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use super::load::{Load, Sample, PERIOD};
use super::procfs::{self, Memory};
use super::stats::Summary;
use super::target::{Layout, Target, TargetSpec};
use super::{Error, Result};
use crate::snd::constants::event;
use crate::snd::Direction;

/// Bystanders: outputs and inputs on `null` that keep running.
const BYSTANDER_OUTPUTS: u32 = 2;
const BYSTANDER_INPUTS: u32 = 2;
/// Rounds of the hang-up floor measured after each run.
const FLOOR_ROUNDS: usize = 5;

/// Longest wait for the removed streams' buffers.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// Longest wait for the pads to report their clients.
const ATTACH_LIMIT: Duration = Duration::from_secs(5);
/// The note a report carries when the daemon does not report removals.
pub const PENDING: &str =
    "pending the hot-removal issue: no JACK_DISCONNECTED after the pads were removed";
/// The note a report carries when it does.
pub const LANDED: &str =
    "removal reported (JACK_DISCONNECTED); held buffers come back on the stream's clock";

/// What `teardown` runs.
#[derive(Debug, Clone)]
pub struct TeardownOptions {
    /// Removed-stream counts, one run each.
    pub removed: Vec<u32>,
    /// Running time before the baseline window.
    pub warmup: Duration,
    /// Bystander window before the removal.
    pub baseline: Duration,
    /// Bystander time after the drain.
    pub after: Duration,
}

impl TeardownOptions {
    /// K = 1, 8, 64 (1 and 4 for a smoke run).
    pub fn new(smoke: bool) -> TeardownOptions {
        if smoke {
            TeardownOptions {
                removed: vec![1, 4],
                warmup: Duration::from_millis(100),
                baseline: Duration::from_millis(300),
                after: Duration::from_millis(100),
            }
        } else {
            TeardownOptions {
                removed: vec![1, 8, 64],
                warmup: Duration::from_secs(1),
                baseline: Duration::from_secs(3),
                after: Duration::from_millis(500),
            }
        }
    }
}

/// How the daemon returned the removed streams' buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Returns {
    /// All back within two periods of the removal.
    Flushed,
    /// Back one per period, on the stream's clock.
    Paced,
    /// Not all back within 2 s.
    Stuck,
}

/// One removed-stream count's figures; times in µs from the removal.
#[derive(Debug, Clone, Serialize)]
pub struct TeardownRun {
    /// Streams removed at once.
    pub removed: u32,
    /// Streams that kept running.
    pub bystanders: u32,
    /// Buffers the removed streams held at the removal.
    pub held: usize,
    /// Per removed pad: its JACK_DISCONNECTED event (the removal processed).
    pub jack_event: Summary,
    /// The machine's floor under `jack_event`, measured right after the
    /// run: as many threads as pads woken by their sockets' hang-up,
    /// reporting to one thread (`floor::hangup_fanout`, 5 rounds).
    pub jack_floor: Summary,
    /// Per removed stream: its first IO_ERR completion.
    pub first_io_err: Summary,
    /// Per removed stream: its last held buffer back (the teardown time).
    pub drained: Summary,
    /// Removed streams' buffers answered OK after the removal.
    pub after_ok: usize,
    /// Removed streams' buffers answered IO_ERR after the removal.
    pub after_io_err: usize,
    /// How they came back.
    pub returns: Returns,
    /// Bystanders' |pacing error| before the removal.
    pub bystanders_before: Summary,
    /// Bystanders' |pacing error| from the removal to the end of the drain
    /// (at least 100 ms).
    pub bystanders_during: Summary,
    /// The daemon's memory at the end.
    pub memory: Option<Memory>,
}

/// What `teardown` measured.
#[derive(Debug, Clone, Serialize)]
pub struct TeardownReport {
    /// `"ok"`, or why the figures do not measure the final semantics yet.
    pub status: String,
    /// One entry per removed-stream count.
    pub runs: Vec<TeardownRun>,
}

/// Runs `teardown`.
pub fn run(spec: &TargetSpec, opts: &TeardownOptions) -> Result<TeardownReport> {
    if !spec.spawns() {
        return Err(Error::Unsupported(
            "teardown binds streams to pads in a generated config: use --spawn".into(),
        ));
    }
    let mut runs = Vec::new();
    for &k in &opts.removed {
        let mut r = run_one(spec, opts, k)?;
        r.jack_floor = super::floor::hangup_fanout(k as usize, FLOOR_ROUNDS)?;
        runs.push(r);
    }
    let reported = runs.iter().all(|r| r.jack_event.n == r.removed as usize);
    let status = if reported { LANDED } else { PENDING }.to_owned();
    Ok(TeardownReport { status, runs })
}

/// The pad clients: one thread reads and discards their playback until told
/// to close them all; it returns the instant just before the first close.
struct Clients {
    stop: EventFd,
    thread: JoinHandle<io::Result<Instant>>,
}

impl Clients {
    fn connect(paths: &[std::path::PathBuf]) -> Result<Clients> {
        let mut socks = Vec::with_capacity(paths.len());
        for p in paths {
            let s = UnixStream::connect(p)?;
            s.set_nonblocking(true)?;
            socks.push(s);
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let stop2 = stop.try_clone()?;
        let thread = thread::Builder::new()
            .name("pad-clients".into())
            .spawn(move || drain_clients(socks, &stop2))?;
        Ok(Clients { stop, thread })
    }

    /// Asks the thread to close every client now.
    fn remove(&self) -> Result<()> {
        Ok(self.stop.write(1)?)
    }

    fn removed_at(self) -> Result<Instant> {
        self.thread
            .join()
            .map_err(|_| Error::Protocol("pad client thread panicked".into()))?
            .map_err(Error::Io)
    }
}

fn drain_clients(socks: Vec<UnixStream>, stop: &EventFd) -> io::Result<Instant> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut open: Vec<bool> = vec![true; socks.len()];
    loop {
        let mut pfds: Vec<libc::pollfd> = std::iter::once(stop.as_raw_fd())
            .chain(socks.iter().map(|s| s.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        for (p, o) in pfds[1..].iter_mut().zip(&open) {
            if !o {
                p.fd = -1;
            }
        }
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if pfds[0].revents != 0 {
            let at = Instant::now();
            drop(socks);
            return Ok(at);
        }
        for (i, p) in pfds[1..].iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            loop {
                match (&socks[i]).read(&mut buf) {
                    Ok(0) => {
                        open[i] = false;
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        open[i] = false;
                        break;
                    }
                }
            }
        }
    }
}

fn run_one(spec: &TargetSpec, opts: &TeardownOptions, k: u32) -> Result<TeardownRun> {
    let dir = crate::unprivileged::tempdir("vsound-bench-pads-")?;
    let pads: Vec<_> = (0..k)
        .map(|i| dir.path().join(format!("pad{i}.sock")))
        .collect();
    let layout = Layout {
        pads: pads.clone(),
        outputs: BYSTANDER_OUTPUTS,
        inputs: BYSTANDER_INPUTS,
    };
    let mut target = Target::open(spec, &layout)?;
    if let Some(pid) = target.pid() {
        procfs::reset_peak_rss(pid);
    }
    // The pads listen before the vhost-user socket does.
    let clients = Clients::connect(&pads)?;
    let mut snd = target.connect()?;
    wait_attached(&mut snd)?;

    let k_us = k as usize;
    let mut plan: Vec<(u32, Direction)> = (0..k).map(|i| (i, Direction::Output)).collect();
    plan.extend((k..k + BYSTANDER_OUTPUTS).map(|i| (i, Direction::Output)));
    plan.extend(
        (k + BYSTANDER_OUTPUTS..k + BYSTANDER_OUTPUTS + BYSTANDER_INPUTS)
            .map(|i| (i, Direction::Input)),
    );
    let mut load = Load::prepare(&mut snd, &plan)?;
    // One jack per pad (jack i is pad i's), two for null. The pads' own
    // JACK_CONNECTED events (their clients connected) come first.
    load.watch_events(k_us + 16)?;
    load.start()?;
    load.run_until(Instant::now() + opts.warmup + opts.baseline)?;

    let held: usize = load.streams()[..k_us].iter().map(|s| s.in_flight).sum();
    for i in 0..k_us {
        load.stop_feeding(i);
    }
    clients.remove()?;
    let signalled = Instant::now();
    let unplugged = |l: &Load| {
        l.events()
            .iter()
            .filter(|e| {
                e.event_type == event::JACK_DISCONNECTED
                    && (e.data as usize) < k_us
                    && e.at >= signalled
            })
            .count()
    };
    load.run_while(signalled + DRAIN_LIMIT, |l| {
        l.streams()[..k_us].iter().any(|s| s.in_flight > 0) || unplugged(l) < k_us
    })?;
    let stuck = load.streams()[..k_us].iter().any(|s| s.in_flight > 0);
    load.run_until(Instant::now() + opts.after)?;
    let removed_at = clients.removed_at()?;
    load.rebase_starts();
    let samples = load.samples().to_vec();
    let jack_events: Vec<Instant> = load
        .events()
        .iter()
        .filter(|e| {
            e.event_type == event::JACK_DISCONNECTED
                && (e.data as usize) < k_us
                && e.at >= removed_at
        })
        .map(|e| e.at)
        .collect();
    load.release()?;
    let memory = target.pid().map(procfs::memory).transpose()?;
    snd.disconnect()?;
    target.check_alive()?;

    Ok(summarize(
        opts,
        k_us,
        held,
        removed_at,
        stuck,
        &samples,
        &jack_events,
        memory,
    ))
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    opts: &TeardownOptions,
    k: usize,
    held: usize,
    removed_at: Instant,
    stuck: bool,
    samples: &[Sample],
    jack_events: &[Instant],
    memory: Option<Memory>,
) -> TeardownRun {
    let us_since = |at: Instant| at.saturating_duration_since(removed_at).as_secs_f64() * 1e6;
    let since = |s: &Sample| us_since(s.at);
    let mut jack: Vec<f64> = jack_events.iter().map(|&at| us_since(at)).collect();
    let mut first_err = Vec::new();
    let mut drained = Vec::new();
    for i in 0..k {
        let mine = || {
            samples
                .iter()
                .filter(move |s| s.stream == i && s.at >= removed_at)
        };
        if let Some(s) = mine().find(|s| !s.ok) {
            first_err.push(since(s));
        }
        if let Some(s) = mine().next_back() {
            drained.push(since(s));
        }
    }
    let after = || {
        samples
            .iter()
            .filter(|s| s.stream < k && s.at >= removed_at)
    };
    let after_ok = after().filter(|s| s.ok).count();
    let after_io_err = after().filter(|s| !s.ok).count();
    let drained = Summary::of(&mut drained);
    let returns = if stuck {
        Returns::Stuck
    } else if drained.max <= 2.0 * PERIOD.as_secs_f64() * 1e6 {
        Returns::Flushed
    } else {
        Returns::Paced
    };
    let window_end =
        removed_at + Duration::from_micros(drained.max as u64).max(Duration::from_millis(100));
    let bystander = |from: Instant, to: Instant| {
        let mut v: Vec<f64> = samples
            .iter()
            .filter(|s| s.stream >= k && s.at >= from && s.at < to)
            .map(|s| (s.err_ns as f64 / 1000.0).abs())
            .collect();
        Summary::of(&mut v)
    };
    TeardownRun {
        removed: k as u32,
        bystanders: BYSTANDER_OUTPUTS + BYSTANDER_INPUTS,
        held,
        jack_event: Summary::of(&mut jack),
        jack_floor: Summary::default(),
        first_io_err: Summary::of(&mut first_err),
        drained,
        after_ok,
        after_io_err,
        returns,
        bystanders_before: bystander(removed_at - opts.baseline, removed_at),
        bystanders_during: bystander(removed_at, window_end),
        memory,
    }
}

/// Waits until every jack reports connected (each pad has seen its client).
fn wait_attached(snd: &mut crate::snd::SndDriver) -> Result<()> {
    let jacks = snd.config().jacks;
    let deadline = Instant::now() + ATTACH_LIMIT;
    loop {
        let infos = snd.jack_info(0, jacks)?;
        if infos.iter().all(|j| j.connected != 0) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Protocol(format!(
                "pads not attached after {ATTACH_LIMIT:?}"
            )));
        }
        thread::sleep(Duration::from_millis(5));
    }
}
