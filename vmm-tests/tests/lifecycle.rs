//! The vhost-user ring lifecycle during playback and capture, as QEMU drives
//! it:
//!
//! - VM pause (`stop`): GET_VRING_BASE on each of the four rings. The
//!   device must stop using the rings when it answers: no used-ring entry,
//!   no guest byte written, until they are started again.
//! - VM resume (`cont`, `vhost_dev_start`): SET_FEATURES, SET_MEM_TABLE,
//!   then per ring SET_VRING_NUM, SET_VRING_BASE (what GET_VRING_BASE
//!   returned), SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_CALL, and
//!   SET_VRING_ENABLE on each. Buffers held across the pause come back, each
//!   once, at the stream's pace (a pause is not an underrun to catch up on).
//! - A device reset (the guest reboots): the rings are set up again from
//!   index 0 in new memory, and the daemon must forget the old ones.
//!
//! Times are checked robustly for a loaded machine: lateness is tolerated,
//! earliness (a burst) is not, since a completion is never seen before the
//! daemon writes it.
//!
//! Default config: stream 0 output, stream 1 input, null device.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::error::Error as StdError;
use std::thread;
use std::time::{Duration, Instant};

use vhost::VhostBackend;
use vmm_tests::frontend::Queue;
use vmm_tests::snd::constants::code;
use vmm_tests::snd::wire::pcm_hdr;
use vmm_tests::snd::{IoCompletion, PcmFormat, PcmRate, SetParams, SndDriver, Status};
use vmm_tests::virtqueue::{GUARD_LEN, POISON_BYTE, USED_ELEM_SIZE};
use vmm_tests::{ConnectOptions, Daemon, GuestMemory, Virtqueue};

/// 48 kHz stereo S16: 10 ms periods.
const PERIOD: u32 = 1920;
const PERIOD_T: Duration = Duration::from_millis(10);
/// A completion may not come earlier than its due time minus this.
const SLACK: Duration = Duration::from_millis(2);
/// How long the VM stays paused.
const PAUSE: Duration = Duration::from_millis(300);
/// Buffers queued before START.
const QUEUED: usize = 8;

fn setup() -> (Daemon, SndDriver) {
    let daemon = Daemon::spawn().unwrap_or_else(|e| panic!("{e}"));
    let snd = daemon
        .connect(&ConnectOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    (daemon, snd)
}

/// An error and its sources, on one line.
fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out += &format!(": {s}");
        src = s.source();
    }
    out
}

fn params(stream: u32) -> SetParams {
    SetParams {
        stream_id: stream,
        buffer_bytes: 4 * PERIOD,
        period_bytes: PERIOD,
        features: 0,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: PcmRate::R48000.code(),
        padding: 0,
    }
}

fn status(snd: &mut SndDriver, code: u32, stream: u32) -> Status {
    let r = snd
        .control(&pcm_hdr(code, stream), 4)
        .unwrap_or_else(|e| panic!("request {code:#x}: {}", chain(&e)));
    r.status().unwrap()
}

fn ok(snd: &mut SndDriver, code: u32, stream: u32, when: &str) {
    assert_eq!(
        status(snd, code, stream),
        Status::Ok,
        "request {code:#x} on stream {stream} {when}"
    );
}

fn prepare(snd: &mut SndDriver, stream: u32) {
    assert_eq!(snd.set_params_raw(&params(stream)).unwrap(), Status::Ok);
    ok(snd, code::PCM_PREPARE, stream, "(setup)");
}

/// Sends START; returns when it was sent and when it was answered (the
/// daemon's schedule starts in between).
fn start(snd: &mut SndDriver, stream: u32) -> (Instant, Instant) {
    let sent = Instant::now();
    ok(snd, code::PCM_START, stream, "(setup)");
    (sent, Instant::now())
}

/// Playback on stream 0 / txq, or capture on stream 1 / rxq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    Play,
    Capture,
}

impl Io {
    fn stream(self) -> u32 {
        match self {
            Io::Play => 0,
            Io::Capture => 1,
        }
    }

    fn queue(self) -> Queue {
        match self {
            Io::Play => Queue::Tx,
            Io::Capture => Queue::Rx,
        }
    }

    /// Queues one period; returns its head.
    fn submit(self, snd: &mut SndDriver, i: usize) -> u16 {
        let h = match self {
            Io::Play => snd.tx(0, &vec![i as u8; PERIOD as usize], &[]),
            Io::Capture => snd.rx(1, PERIOD as usize, &[]),
        };
        h.unwrap().head
    }

    /// A period that was played or recorded.
    fn check_done(self, c: &IoCompletion, when: &str) {
        assert_eq!(c.status, Status::Ok, "{when}: head {}", c.head);
        assert_eq!(c.violation, None, "{when}: head {}", c.head);
        match self {
            Io::Play => assert_eq!(c.used_len, 8, "{when}: tx used length is the status"),
            Io::Capture => {
                assert_eq!(
                    c.used_len,
                    PERIOD + 8,
                    "{when}: rx head {}: used length must be the period + 8",
                    c.head
                );
                assert!(
                    c.data.iter().all(|&b| b == 0),
                    "{when}: rx head {}: null capture is silence, got {:#04x}..",
                    c.head,
                    c.data.first().copied().unwrap_or_default()
                );
            }
        }
    }
}

/// Guest bytes the device must leave alone.
#[derive(Default)]
struct Watch {
    /// Label, address, expected bytes.
    regions: Vec<(String, u64, Vec<u8>)>,
}

impl Watch {
    fn add(&mut self, mem: &GuestMemory, label: String, addr: u64, len: usize) {
        self.regions
            .push((label, addr, mem.read(addr, len).unwrap()));
    }

    /// `q`'s used ring as it is now: flags, idx and the elements, plus
    /// `avail_event` when `whole`.
    fn used_ring(&mut self, mem: &GuestMemory, q: &Virtqueue, name: Queue, whole: bool) {
        let len = if whole {
            q.used_ring_len()
        } else {
            4 + (USED_ELEM_SIZE * u64::from(q.size())) as usize
        };
        self.add(mem, format!("{name} used ring"), q.used_ring(), len);
    }

    /// The device-writable descriptors of each in-flight head of `q`, with
    /// the guard bytes after them.
    fn held(&mut self, mem: &GuestMemory, q: &Virtqueue, name: Queue, heads: &[u16]) {
        for &h in heads {
            let Some(segs) = q.chain_segments(h).unwrap() else {
                continue;
            };
            for s in segs.iter().filter(|s| s.writable) {
                let label = format!("{name} head {h}, writable descriptor at {:#x}", s.addr);
                self.add(mem, label, s.addr, s.len as usize + GUARD_LEN);
            }
        }
    }

    /// The first region that changed, described.
    fn first_change(&self, mem: &GuestMemory) -> Option<String> {
        for (label, addr, want) in &self.regions {
            let now = mem.read(*addr, want.len()).unwrap();
            let Some(i) = now.iter().zip(want).position(|(a, b)| a != b) else {
                continue;
            };
            let idx = |b: &[u8]| u16::from_le_bytes([b[2], b[3]]);
            return Some(if label.ends_with("used ring") && now[2..4] != want[2..4] {
                format!("{label}: used.idx {} -> {}", idx(want), idx(&now))
            } else {
                let poisoned = want[i] == POISON_BYTE;
                format!(
                    "{label}: byte {i} {:#04x} -> {:#04x}{}",
                    want[i],
                    now[i],
                    if poisoned {
                        " (was the poison pattern)"
                    } else {
                        ""
                    }
                )
            });
        }
        None
    }

    /// Looks every 2 ms for `dur`; the first change and when it was seen.
    fn watch(&self, mem: &GuestMemory, dur: Duration) -> Option<(Duration, String)> {
        let t = Instant::now();
        loop {
            if let Some(change) = self.first_change(mem) {
                return Some((t.elapsed(), change));
            }
            if t.elapsed() >= dur {
                return None;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// VM pause and resume in the middle of a running stream.
fn pause_and_resume(io: Io) {
    let (_d, mut snd) = setup();
    let (stream, queue) = (io.stream(), io.queue());
    prepare(&mut snd, stream);
    let heads: Vec<u16> = (0..QUEUED).map(|i| io.submit(&mut snd, i)).collect();
    let st = start(&mut snd, stream);
    let mut before = snd.wait_io_count(queue, 2, Duration::from_secs(1)).unwrap();
    assert_eq!(before.len(), 2, "setup: the stream does not run");

    // `stop`.
    let bases = snd
        .dev_mut()
        .stop_rings()
        .unwrap_or_else(|e| panic!("GET_VRING_BASE: {}", chain(&e)));
    let stopped = Instant::now();
    let mem = snd.dev().memory().clone();
    let mut watch = Watch::default();
    for q in Queue::ALL {
        watch.used_ring(&mem, snd.dev().queue(q), q, false);
    }
    watch.held(&mem, snd.dev().queue(queue), queue, &heads);
    if let Some((at, change)) = watch.watch(&mem, PAUSE) {
        panic!(
            "{at:?} after GET_VRING_BASE was answered on every ring (VM paused), the daemon \
             wrote into guest memory: {change}"
        );
    }
    // Completions written before the stop are legitimate.
    before.extend(snd.wait_io(queue, Duration::ZERO).unwrap());
    for c in &before {
        io.check_done(c, "before the pause");
    }
    let done: HashSet<u16> = before.iter().map(|c| c.head).collect();
    let held: Vec<u16> = heads
        .iter()
        .copied()
        .filter(|h| !done.contains(h))
        .collect();
    assert!(
        !held.is_empty(),
        "setup: all {QUEUED} buffers completed before the pause"
    );

    // `cont`.
    let resume = Instant::now();
    snd.dev_mut()
        .restart_rings(&bases)
        .unwrap_or_else(|e| panic!("restarting the rings (bases {bases:?}): {}", chain(&e)));
    let timeout = PERIOD_T * held.len() as u32 + Duration::from_secs(2);
    let back = snd.wait_io_count(queue, held.len(), timeout).unwrap();
    let mut seen = HashSet::new();
    for c in &back {
        assert!(
            held.contains(&c.head),
            "head {} came back after the resume but was not held",
            c.head
        );
        assert!(seen.insert(c.head), "head {} came back twice", c.head);
        io.check_done(c, "after the resume");
    }
    let missing: Vec<u16> = held.iter().copied().filter(|h| !seen.contains(h)).collect();
    assert!(
        missing.is_empty(),
        "{} of the {} buffers held across the pause did not come back within {timeout:?} \
         of the resume: heads {missing:?}",
        missing.len(),
        held.len()
    );
    assert_eq!(snd.unknown_completions(), 0, "a buffer completed twice");

    // No burst: the buffer current at the pause plays what was left of its
    // period, then one period each. What was left is at least its due time
    // on the START schedule minus the moment GET_VRING_BASE was answered.
    let n = before.len() as u32;
    let left = (st.0 + PERIOD_T * (n + 1))
        .saturating_duration_since(stopped)
        .min(PERIOD_T);
    for (j, c) in back.iter().enumerate() {
        let due = left + PERIOD_T * j as u32;
        let at = c.completed_at.saturating_duration_since(resume);
        assert!(
            at + SLACK >= due,
            "held buffer {} of {} came back {at:?} after the resume began, before {due:?} \
             (the {left:?} left of the period at the pause, plus {j} periods): a burst; \
             all: {:?}",
            j + 1,
            back.len(),
            back.iter()
                .map(|c| c.completed_at.saturating_duration_since(resume))
                .collect::<Vec<_>>()
        );
    }
    // The stream is still running for the guest, which saw nothing.
    ok(&mut snd, code::PCM_STOP, stream, "after the resume");
    ok(&mut snd, code::PCM_RELEASE, stream, "after the resume");
}

#[test]
fn a_vm_pause_mid_playback_holds_every_buffer_and_the_resume_returns_each_once_on_pace() {
    pause_and_resume(Io::Play);
}

#[test]
fn a_vm_pause_mid_capture_holds_every_buffer_and_the_resume_returns_each_once_recorded() {
    pause_and_resume(Io::Capture);
}

#[test]
fn set_features_alone_while_a_stream_plays_changes_nothing() {
    let (_d, mut snd) = setup();
    prepare(&mut snd, 0);
    for i in 0..4 {
        Io::Play.submit(&mut snd, i);
    }
    let st = start(&mut snd, 0);
    let n = 30;
    let mut queued = 4;
    let mut done: Vec<IoCompletion> = Vec::new();
    let mut sent_features = false;
    while done.len() < n {
        if done.len() >= 3 && !sent_features {
            let features = snd.dev().acked_features();
            snd.dev_mut()
                .with_frontend("SET_FEATURES", |fe| fe.set_features(features))
                .unwrap_or_else(|e| panic!("SET_FEATURES: {}", chain(&e)));
            sent_features = true;
        }
        let got = snd.wait_io(Queue::Tx, Duration::from_secs(2)).unwrap();
        assert!(
            !got.is_empty(),
            "no tx completion in 2 s after {} of {n} (SET_FEATURES sent: {sent_features}); \
             {} buffers still held",
            done.len(),
            snd.pending_io(Queue::Tx)
        );
        for c in &got {
            Io::Play.check_done(c, "around SET_FEATURES");
            if queued < n {
                Io::Play.submit(&mut snd, queued);
                queued += 1;
            }
        }
        done.extend(got);
    }
    assert_eq!(snd.unknown_completions(), 0, "a buffer completed twice");
    assert_eq!(snd.pending_io(Queue::Tx), 0);
    // On the START schedule throughout: never early, and not behind at the end.
    for (i, c) in done.iter().enumerate() {
        let k = i as u32 + 1;
        assert!(
            c.completed_at + SLACK >= st.0 + PERIOD_T * k,
            "completion {k} came {:?} after START, before its due time {:?}",
            c.completed_at.duration_since(st.0),
            PERIOD_T * k
        );
    }
    let last = done.last().unwrap().completed_at;
    let behind = last.saturating_duration_since(st.1 + PERIOD_T * n as u32);
    assert!(
        behind <= Duration::from_millis(250),
        "the last of {n} periods came {behind:?} late"
    );
    ok(&mut snd, code::PCM_STOP, 0, "after SET_FEATURES");
    ok(&mut snd, code::PCM_RELEASE, 0, "after SET_FEATURES");
}

#[test]
fn after_a_device_reset_the_old_rings_are_left_alone_and_the_new_driver_gets_a_fresh_device() {
    let (_d, mut snd) = setup();
    prepare(&mut snd, 0);
    let heads: Vec<u16> = (0..4).map(|i| Io::Play.submit(&mut snd, i)).collect();
    start(&mut snd, 0);
    let first = snd
        .wait_io_count(Queue::Tx, 1, Duration::from_secs(1))
        .unwrap();
    assert_eq!(first.len(), 1, "setup: the stream does not play");

    // The guest resets the device: QEMU stops the rings...
    let mut dev = snd.into_inner();
    dev.stop_rings()
        .unwrap_or_else(|e| panic!("GET_VRING_BASE: {}", chain(&e)));
    let mem = dev.memory().clone();
    let mut old = Watch::default();
    for q in Queue::ALL {
        old.used_ring(&mem, dev.queue(q), q, true);
    }
    old.held(&mem, dev.queue(Queue::Tx), Queue::Tx, &heads);
    // ... the guest takes a while to come back ...
    if let Some((at, change)) = old.watch(&mem, Duration::from_millis(100)) {
        panic!(
            "{at:?} after the rings were stopped for a reset, the daemon wrote into them: {change}"
        );
    }
    // ... and its driver sets the rings up from index 0, in new memory.
    let old_queues = dev
        .reinit_rings()
        .unwrap_or_else(|e| panic!("setting up fresh rings: {}", chain(&e)));
    let mut snd = SndDriver::new(dev);

    // A fresh device: stream 0 is in its initial state.
    assert_eq!(
        status(&mut snd, code::PCM_START, 0),
        Status::BadMsg,
        "START before SET_PARAMS after a reset"
    );
    prepare(&mut snd, 0);
    for i in 0..2 {
        Io::Play.submit(&mut snd, i);
    }
    let st = start(&mut snd, 0);
    let done = snd
        .wait_io_count(Queue::Tx, 2, Duration::from_secs(2))
        .unwrap();
    assert_eq!(done.len(), 2, "the new driver's buffers did not play");
    for (i, c) in done.iter().enumerate() {
        let k = i as u32 + 1;
        Io::Play.check_done(c, "after the reset");
        assert!(
            c.completed_at + SLACK >= st.0 + PERIOD_T * k,
            "after the reset, completion {k} came {:?} after START",
            c.completed_at.duration_since(st.0)
        );
    }
    assert_eq!(
        snd.unknown_completions(),
        0,
        "a buffer the new driver never gave came back on the new rings"
    );
    thread::sleep(Duration::from_millis(50));
    if let Some(change) = old.first_change(&mem) {
        panic!("after a device reset, the daemon wrote into the old rings: {change}");
    }
    ok(&mut snd, code::PCM_STOP, 0, "after the reset");
    ok(&mut snd, code::PCM_RELEASE, 0, "after the reset");
    drop(old_queues);
}

#[test]
fn release_after_a_capture_returns_the_unrecorded_rx_buffers_with_used_length_8() {
    let (_d, mut snd) = setup();
    prepare(&mut snd, 1);
    let total = 6;
    for i in 0..total {
        Io::Capture.submit(&mut snd, i);
    }
    start(&mut snd, 1);
    let mut recorded = snd
        .wait_io_count(Queue::Rx, 2, Duration::from_secs(1))
        .unwrap();
    assert_eq!(recorded.len(), 2, "setup: the capture does not run");
    ok(&mut snd, code::PCM_STOP, 1, "while capturing");
    // A period being finished as STOP came in is still recorded.
    thread::sleep(Duration::from_millis(30));
    recorded.extend(snd.wait_io(Queue::Rx, Duration::ZERO).unwrap());
    for c in &recorded {
        Io::Capture.check_done(c, "recorded before RELEASE");
    }
    let unrecorded = total - recorded.len();
    assert!(unrecorded > 0, "setup: every buffer was recorded");
    ok(&mut snd, code::PCM_RELEASE, 1, "after STOP");
    // Already on the used ring when RELEASE was answered.
    let flushed = snd
        .wait_io_count(Queue::Rx, unrecorded, Duration::from_millis(1))
        .unwrap();
    assert_eq!(
        flushed.len(),
        unrecorded,
        "RELEASE must return every unrecorded rx buffer before it is answered"
    );
    for c in &flushed {
        let poison = c.data.iter().filter(|&&b| b == POISON_BYTE).count();
        assert_eq!(
            c.used_len,
            8,
            "rx head {} returned by RELEASE, never recorded, reports {} recorded bytes \
             (used length {}; {poison} of those bytes are still the driver's poison pattern)",
            c.head,
            c.used_len.saturating_sub(8),
            c.used_len
        );
        assert!(
            matches!(c.status, Status::Ok | Status::IoErr),
            "rx head {} returned by RELEASE: status {:?}",
            c.head,
            c.status
        );
        assert_eq!(c.violation, None);
    }
    assert_eq!(snd.pending_io(Queue::Rx), 0);
}
