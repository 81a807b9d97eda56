//! tx/rx I/O through the real socket: real-time pacing on an absolute
//! schedule, buffers held until START, RELEASE flushing, refusals, odd
//! descriptor layouts, the event queue, and a reconnect.
//!
//! Default config: stream 0 output, stream 1 input, null device.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use vmm_tests::frontend::Queue;
use vmm_tests::snd::constants::{code, event, pcm_feature};
use vmm_tests::snd::wire::pcm_hdr;
use vmm_tests::snd::{IoCompletion, PcmFormat, PcmRate, SetParams, SndDriver, Status};
use vmm_tests::{ConnectOptions, Daemon};

/// 48 kHz stereo S16: 10 ms periods.
const PERIOD: u32 = 1920;
const PERIOD_T: Duration = Duration::from_millis(10);
/// Allowed distance of the N-th completion from N periods after START.
const SLACK: Duration = Duration::from_millis(2);
/// A completion this late is a stall, whoever caused it.
const STALL: Duration = Duration::from_millis(100);

fn setup() -> (Daemon, SndDriver) {
    let daemon = Daemon::spawn().unwrap_or_else(|e| panic!("{e}"));
    let snd = daemon
        .connect(&ConnectOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    (daemon, snd)
}

fn params(stream: u32, features: u32) -> SetParams {
    SetParams {
        stream_id: stream,
        buffer_bytes: 4 * PERIOD,
        period_bytes: PERIOD,
        features,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: PcmRate::R48000.code(),
        padding: 0,
    }
}

fn ok(snd: &mut SndDriver, code: u32, stream: u32) {
    let r = snd.control(&pcm_hdr(code, stream), 4).unwrap();
    assert_eq!(
        r.status(),
        Some(Status::Ok),
        "request {code:#x} on stream {stream}"
    );
}

fn prepare(snd: &mut SndDriver, stream: u32, features: u32) {
    assert_eq!(
        snd.set_params_raw(&params(stream, features)).unwrap(),
        Status::Ok
    );
    ok(snd, code::PCM_PREPARE, stream);
}

/// Sends START and returns when it was sent and when it was answered: the
/// daemon's schedule starts somewhere in between.
fn start(snd: &mut SndDriver, stream: u32) -> (Instant, Instant) {
    let sent = Instant::now();
    ok(snd, code::PCM_START, stream);
    (sent, Instant::now())
}

/// Checks that the k-th completion (1-based) came k periods after START:
/// - never early: not one completion before its due time (minus
///   [`SLACK`]), so a burst always fails;
/// - no drift: the schedule is absolute, so at least one of the last five
///   completions is seen within [`SLACK`] of its due time (one late sighting
///   can be this test thread being descheduled, five cannot);
/// - on time as a rule: the median lateness is under [`SLACK`], and no
///   completion is more than [`STALL`] late.
fn check_pacing(done: &[IoCompletion], start: (Instant, Instant)) {
    let mut late = Vec::new();
    for (i, c) in done.iter().enumerate() {
        let k = i as u32 + 1;
        let earliest = start.0 + PERIOD_T * k - SLACK;
        assert!(
            c.completed_at >= earliest,
            "completion {k} at {:?} after START: early (due at {:?})",
            c.completed_at.duration_since(start.0),
            PERIOD_T * k
        );
        late.push(
            c.completed_at
                .saturating_duration_since(start.1 + PERIOD_T * k),
        );
    }
    let tail = &late[late.len().saturating_sub(5)..];
    let best_tail = tail.iter().min().copied().unwrap_or_default();
    assert!(
        best_tail <= SLACK,
        "drift: the last completions are all {best_tail:?}+ late: {tail:?}"
    );
    let mut sorted = late.clone();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    assert!(median <= SLACK, "median lateness {median:?}");
    let worst = sorted.last().copied().unwrap_or_default();
    assert!(worst <= STALL, "a completion came {worst:?} late");
}

/// Plays `n` periods the way Linux does (4 queued before START, one more
/// each time one completes) and returns the completions in order.
fn play(
    snd: &mut SndDriver,
    stream: u32,
    n: usize,
    fill: impl Fn(usize) -> Vec<u8>,
) -> (Vec<IoCompletion>, (Instant, Instant)) {
    let mut queued = 0;
    while queued < 4.min(n) {
        snd.tx(stream, &fill(queued), &[]).unwrap();
        queued += 1;
    }
    let st = start(snd, stream);
    let mut done = Vec::new();
    while done.len() < n {
        let got = snd.wait_io(Queue::Tx, Duration::from_secs(2)).unwrap();
        assert!(
            !got.is_empty(),
            "no tx completion in 2 s after {}",
            done.len()
        );
        for _ in &got {
            if queued < n {
                snd.tx(stream, &fill(queued), &[]).unwrap();
                queued += 1;
            }
        }
        done.extend(got);
    }
    (done, st)
}

#[test]
fn tx_buffers_are_held_until_start_then_complete_one_period_each_in_real_time() {
    let (_d, mut snd) = setup();
    prepare(&mut snd, 0, 0);
    // Pre-buffered before START: none may complete.
    for i in 0..4u8 {
        snd.tx(0, &vec![i; PERIOD as usize], &[]).unwrap();
    }
    let early = snd.wait_io(Queue::Tx, Duration::from_millis(150)).unwrap();
    assert!(
        early.is_empty(),
        "{} tx buffers completed before START",
        early.len()
    );
    assert_eq!(snd.pending_io(Queue::Tx), 4);

    // Keep feeding: 50 periods (0.5 s) complete at START + k periods.
    let n = 50;
    let st = start(&mut snd, 0);
    let mut queued = 4;
    let mut done: Vec<IoCompletion> = Vec::new();
    while done.len() < n {
        let got = snd.wait_io(Queue::Tx, Duration::from_secs(2)).unwrap();
        assert!(!got.is_empty());
        for c in &got {
            assert_eq!(c.status, Status::Ok);
            assert_eq!(c.used_len, 8, "tx used length is the status");
            assert_eq!(c.violation, None);
            if queued < n {
                snd.tx(0, &vec![7; PERIOD as usize], &[]).unwrap();
                queued += 1;
            }
        }
        done.extend(got);
    }
    // N periods in N periods, and never a burst (see check_pacing).
    check_pacing(&done, st);
    ok(&mut snd, code::PCM_STOP, 0);
    ok(&mut snd, code::PCM_RELEASE, 0);
}

#[test]
fn rx_returns_full_buffers_of_silence_at_the_same_pace() {
    let (_d, mut snd) = setup();
    prepare(&mut snd, 1, 0);
    // Linux queues every period of the buffer, then sends START.
    for _ in 0..4 {
        snd.rx(1, PERIOD as usize, &[]).unwrap();
    }
    let early = snd.wait_io(Queue::Rx, Duration::from_millis(100)).unwrap();
    assert!(early.is_empty(), "rx completed before START");
    let st = start(&mut snd, 1);
    let mut done: Vec<IoCompletion> = Vec::new();
    while done.len() < 30 {
        let got = snd.wait_io(Queue::Rx, Duration::from_secs(2)).unwrap();
        assert!(!got.is_empty());
        for c in &got {
            assert_eq!(c.status, Status::Ok);
            assert_eq!(c.used_len, PERIOD + 8, "rx used length = data + status");
            assert_eq!(c.data.len(), PERIOD as usize);
            assert!(c.data.iter().all(|&b| b == 0), "null capture is silence");
            assert_eq!(c.violation, None);
            snd.rx(1, PERIOD as usize, &[]).unwrap();
        }
        done.extend(got);
    }
    check_pacing(&done, st);
    ok(&mut snd, code::PCM_STOP, 1);
    ok(&mut snd, code::PCM_RELEASE, 1);
}

#[test]
fn release_returns_every_pending_buffer_before_it_is_answered() {
    let (_d, mut snd) = setup();
    // Pending in PREPARE (never started).
    prepare(&mut snd, 0, 0);
    for _ in 0..4 {
        snd.tx(0, &[1; PERIOD as usize], &[]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    ok(&mut snd, code::PCM_RELEASE, 0);
    // Already on the used ring when RELEASE came back: no waiting.
    let flushed = snd
        .wait_io_count(Queue::Tx, 4, Duration::from_millis(1))
        .unwrap();
    assert_eq!(flushed.len(), 4);
    assert_eq!(snd.pending_io(Queue::Tx), 0);

    // Pending after START + STOP, rx side.
    prepare(&mut snd, 1, 0);
    for _ in 0..4 {
        snd.rx(1, PERIOD as usize, &[]).unwrap();
    }
    start(&mut snd, 1);
    std::thread::sleep(Duration::from_millis(25));
    ok(&mut snd, code::PCM_STOP, 1);
    let before = snd
        .wait_io(Queue::Rx, Duration::from_millis(1))
        .unwrap()
        .len();
    ok(&mut snd, code::PCM_RELEASE, 1);
    let after = snd
        .wait_io_count(Queue::Rx, 4 - before, Duration::from_millis(1))
        .unwrap();
    assert_eq!(before + after.len(), 4, "every rx buffer back exactly once");
    assert_eq!(snd.pending_io(Queue::Rx), 0);
}

#[test]
fn stop_holds_buffers_and_start_resumes_the_pace() {
    let (_d, mut snd) = setup();
    prepare(&mut snd, 0, 0);
    for _ in 0..4 {
        snd.tx(0, &[3; PERIOD as usize], &[]).unwrap();
    }
    start(&mut snd, 0);
    let first = snd
        .wait_io_count(Queue::Tx, 1, Duration::from_secs(1))
        .unwrap();
    assert_eq!(first.len(), 1);
    ok(&mut snd, code::PCM_STOP, 0);
    let paused = snd.wait_io(Queue::Tx, Duration::from_millis(100)).unwrap();
    assert!(
        paused.len() <= 1,
        "buffers completed while stopped: {}",
        paused.len()
    );
    let left = 3 - paused.len();
    let st = start(&mut snd, 0);
    let rest = snd
        .wait_io_count(Queue::Tx, left, Duration::from_secs(1))
        .unwrap();
    assert_eq!(rest.len(), left);
    check_pacing(&rest, st);
}

#[test]
fn io_for_an_unknown_stream_the_wrong_queue_or_an_unprepared_stream_is_io_err_at_once() {
    let (_d, mut snd) = setup();
    let t = Instant::now();
    snd.tx(0, &[0; 64], &[]).unwrap(); // not prepared
    snd.tx(1, &[0; 64], &[]).unwrap(); // an input stream on txq
    snd.tx(7, &[0; 64], &[]).unwrap(); // no such stream
    let done = snd
        .wait_io_count(Queue::Tx, 3, Duration::from_secs(1))
        .unwrap();
    assert_eq!(done.len(), 3);
    for c in &done {
        assert_eq!(c.status, Status::IoErr, "stream {}", c.stream_id);
    }
    // Larger than the negotiated buffer (4 periods): refused too.
    prepare(&mut snd, 0, 0);
    snd.tx(0, &vec![0; 4 * PERIOD as usize + 4], &[]).unwrap();
    let done = snd
        .wait_io_count(Queue::Tx, 1, Duration::from_secs(1))
        .unwrap();
    assert_eq!(
        done[0].status,
        Status::IoErr,
        "message over the buffer size"
    );
    snd.rx(0, 64, &[]).unwrap(); // an output stream on rxq
    let done = snd
        .wait_io_count(Queue::Rx, 1, Duration::from_secs(1))
        .unwrap();
    assert_eq!(done[0].status, Status::IoErr);
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "refusals must be immediate"
    );
    // Malformed: header cut short; no room for the status at all.
    snd.io_raw(Queue::Tx, &[0, 0], 8, &[]).unwrap();
    snd.io_raw(Queue::Tx, &[0, 0, 0, 0, 1, 2], 4, &[]).unwrap();
    let done = snd
        .wait_io_count(Queue::Tx, 2, Duration::from_secs(1))
        .unwrap();
    assert_eq!(done.len(), 2);
    for c in &done {
        assert_eq!(c.violation, None);
        assert!(c.used_len == 0 || c.status == Status::IoErr, "{c:?}");
    }
}

#[test]
fn messages_split_at_odd_offsets_are_parsed_by_byte_offset() {
    let (_d, mut snd) = setup();
    prepare(&mut snd, 0, 0);
    prepare(&mut snd, 1, 0);
    // Header split inside, data split at odd places, status split inside.
    let total_tx = 4 + PERIOD as usize + 8;
    snd.tx(
        0,
        &[5; PERIOD as usize],
        &[1, 3, 5, 777, 1001, total_tx - 5],
    )
    .unwrap();
    let total_rx = 4 + PERIOD as usize + 8;
    snd.rx(1, PERIOD as usize, &[2, 4 + 1, 4 + 999, total_rx - 3])
        .unwrap();
    start(&mut snd, 0);
    start(&mut snd, 1);
    let tx = snd
        .wait_io_count(Queue::Tx, 1, Duration::from_secs(1))
        .unwrap();
    assert_eq!(tx[0].status, Status::Ok);
    assert_eq!(tx[0].violation, None);
    let rx = snd
        .wait_io_count(Queue::Rx, 1, Duration::from_secs(1))
        .unwrap();
    assert_eq!(rx[0].status, Status::Ok);
    assert_eq!(rx[0].used_len, PERIOD + 8);
    assert!(rx[0].data.iter().all(|&b| b == 0));
    assert_eq!(rx[0].violation, None);
}

#[test]
fn event_buffers_are_taken_only_for_events_and_xruns_are_reported() {
    let (_d, mut snd) = setup();
    snd.post_event_buffers(8).unwrap();
    // Nothing to say: no buffer is consumed, and control stays responsive.
    assert_eq!(snd.wait_event(Duration::from_millis(200)).unwrap(), None);
    let r = snd.control(&pcm_hdr(code::PCM_STOP, 0), 4).unwrap();
    assert!(r.elapsed < Duration::from_millis(100));

    // A stream that negotiated EVT_XRUNS and runs dry gets one PCM_XRUN.
    prepare(&mut snd, 0, 1 << pcm_feature::EVT_XRUNS);
    snd.tx(0, &[1; PERIOD as usize], &[]).unwrap();
    // Let the daemon take the buffer before START (the driver's kick and
    // START go to different queues).
    std::thread::sleep(Duration::from_millis(20));
    start(&mut snd, 0);
    let ev = snd
        .wait_event(Duration::from_secs(1))
        .unwrap()
        .expect("an XRUN event");
    assert_eq!((ev.event_type, ev.data), (event::PCM_XRUN, 0));
    assert_eq!(
        snd.wait_event(Duration::from_millis(100)).unwrap(),
        None,
        "one per underrun"
    );
    ok(&mut snd, code::PCM_STOP, 0);
    ok(&mut snd, code::PCM_RELEASE, 0);
    // Without EVT_XRUNS, no event.
    prepare(&mut snd, 0, 0);
    start(&mut snd, 0);
    assert_eq!(snd.wait_event(Duration::from_millis(100)).unwrap(), None);
}

#[test]
fn a_disconnect_mid_playback_and_a_reconnect_get_a_fresh_device() {
    let (mut d, mut snd) = setup();
    prepare(&mut snd, 0, 0);
    for _ in 0..4 {
        snd.tx(0, &[9; PERIOD as usize], &[]).unwrap();
    }
    start(&mut snd, 0);
    std::thread::sleep(Duration::from_millis(15));
    drop(snd); // the VMM goes away with buffers in flight
    d.check_alive().unwrap();

    let mut snd = d.connect(&ConnectOptions::default()).unwrap();
    // Fresh device: stream 0 is back in its initial state.
    let r = snd.control(&pcm_hdr(code::PCM_START, 0), 4).unwrap();
    assert_eq!(r.status(), Some(Status::BadMsg));
    prepare(&mut snd, 0, 0);
    let (done, st) = play(&mut snd, 0, 10, |_| vec![4; PERIOD as usize]);
    check_pacing(&done, st);
    snd.disconnect().unwrap();
    d.check_alive().unwrap();
    // And once more, to be sure the listener keeps going.
    let mut snd = d.connect(&ConnectOptions::default()).unwrap();
    assert_eq!(snd.pcm_info(0, 2).unwrap().len(), 2);
}
