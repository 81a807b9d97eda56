//! The pad device end to end: a guest driver on the daemon's vhost-user socket
//! on one side, a plain `UnixStream` client on the pad's socket on the other.
//!
//! Each test starts its own daemon with one pad (`pad0`) and two streams on it:
//! stream 0 output, stream 1 input (jack 0 and jack 1, both following whether a
//! client is connected). Streams use 10 ms periods and four periods per buffer.
//!
//! Needs the `vsound` binary: `cargo build --bin vsound` first, or set
//! `VSOUND_BIN`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vmm_tests::audio::{
    self, check_pacing, check_statuses, collect_io, difference, noise, play_streaming, start_timed,
    wait_drained, wait_jack, word_counter, words, Geometry, Tolerance,
};
use vmm_tests::snd::{PcmFormat, PcmRate};
use vmm_tests::{ConnectOptions, Daemon, DaemonOptions, Queue, SndDriver, Status};

/// Generous bound on anything that should happen promptly (a loaded 2-core CI).
const TIMEOUT: Duration = Duration::from_secs(20);
/// How late completions may be seen (see `Tolerance`); early is never allowed.
const PACING: Tolerance = Tolerance::DEFAULT;

const OUT: u32 = 0;
const IN: u32 = 1;
const OUT_JACK: u32 = 0;
const IN_JACK: u32 = 1;

/// A daemon serving one pad, with the pad socket in a directory of our own
/// (the daemon's temporary directory only exists once it runs).
struct Pad {
    daemon: Daemon,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pad {
    fn spawn() -> Pad {
        Pad::spawn_with("")
    }

    /// A pad with extra options (`capture = "live"`, `fill = "silence"`...).
    fn spawn_with(pad_options: &str) -> Pad {
        Pad::spawn_streams(
            pad_options,
            "formats = [\"S16\", \"S32\", \"FLOAT\"]\n\
             rates = [44100, 48000, 96000]\n\
             channels = { min = 1, max = 8 }\n",
        )
    }

    /// A pad with extra options whose two streams offer what `offer` says
    /// (`formats`, `rates` and `channels` lines).
    fn spawn_streams(pad_options: &str, offer: &str) -> Pad {
        let dir = vmm_tests::unprivileged::tempdir("vsound-pad-").unwrap();
        let path = dir.path().join("pad.sock");
        let streams = ["output", "input"]
            .iter()
            .map(|dir| format!("[[streams]]\ndirection = \"{dir}\"\ndevice = \"pad0\"\n{offer}"))
            .collect::<Vec<_>>()
            .join("\n");
        let config = format!(
            "[devices.pad0]\nkind = \"pad\"\npath = {:?}\nallow_format_changes = true\n{pad_options}\n\n{streams}",
            path.display().to_string()
        );
        let daemon = Daemon::spawn_with(&DaemonOptions {
            config_toml: Some(config),
            ..DaemonOptions::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Pad {
            daemon,
            path,
            _dir: dir,
        }
    }

    fn driver(&self) -> SndDriver {
        self.driver_with(&ConnectOptions::default())
    }

    fn driver_with(&self, opts: &ConnectOptions) -> SndDriver {
        self.daemon
            .connect(opts)
            .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
    }

    fn alive(&mut self) {
        self.daemon
            .check_alive()
            .unwrap_or_else(|e| panic!("the daemon died: {e}"));
    }
}

/// Connects a pad client (blocking, with a read timeout so nothing hangs).
fn client(path: &Path) -> UnixStream {
    let c = UnixStream::connect(path).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.set_write_timeout(Some(TIMEOUT)).unwrap();
    c
}

/// Connects a client and waits until the daemon reports the pad attached.
fn attach(pad: &Pad, snd: &mut SndDriver) -> UnixStream {
    let c = client(&pad.path);
    wait_jack(snd, OUT_JACK, true, TIMEOUT).unwrap();
    wait_jack(snd, IN_JACK, true, TIMEOUT).unwrap();
    c
}

/// Reads `len` bytes from a clone of `c` on a thread.
fn read_exact_on_thread(c: &UnixStream, len: usize) -> JoinHandle<io::Result<Vec<u8>>> {
    let mut c = c.try_clone().unwrap();
    thread::spawn(move || {
        let mut buf = vec![0; len];
        c.read_exact(&mut buf)?;
        Ok(buf)
    })
}

fn joined<T>(h: JoinHandle<io::Result<T>>) -> T {
    h.join()
        .expect("reader thread panicked")
        .unwrap_or_else(|e| panic!("pad client read failed: {e}"))
}

fn prepare(snd: &mut SndDriver, stream: u32, g: &Geometry) {
    assert_eq!(g.set_params(snd, stream).unwrap(), Status::Ok, "SET_PARAMS");
    assert_eq!(snd.prepare(stream).unwrap(), Status::Ok, "PREPARE");
}

fn stop_and_release(snd: &mut SndDriver, stream: u32) {
    assert_eq!(snd.stop(stream).unwrap(), Status::Ok, "STOP");
    assert_eq!(snd.release(stream).unwrap(), Status::Ok, "RELEASE");
}

/// `n` different periods of noise for `g`.
fn noise_periods(g: &Geometry, n: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| noise(g.period_bytes(), seed * 1000 + i as u64))
        .collect()
}

/// Playback through a connected client is bit-exact: the client reads exactly
/// the bytes the guest queued, in order, and nothing else; every buffer
/// completes OK on the real-time schedule.
fn playback_reaches_the_client_bit_exact(g: Geometry, seed: u64) {
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let mut c = attach(&pad, &mut snd);
    prepare(&mut snd, OUT, &g);

    let periods = noise_periods(&g, 10, seed);
    let want = periods.concat();
    let reader = read_exact_on_thread(&c, want.len());
    for p in &periods {
        snd.tx(OUT, p, &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Tx, TIMEOUT).unwrap();
    let (status, window) = start_timed(&mut snd, OUT).unwrap();
    assert_eq!(status, Status::Ok, "START");
    let done = snd
        .wait_io_count(Queue::Tx, periods.len(), TIMEOUT)
        .unwrap();
    assert_eq!(done.len(), periods.len(), "tx completions");
    check_statuses(&done, &[Status::Ok]).unwrap();
    let pacing = check_pacing(&done, &g, window, PACING).unwrap();

    let got = joined(reader);
    stop_and_release(&mut snd, OUT);
    pad.alive();
    if let Some(d) = difference(&got, &want) {
        panic!("playback is not bit-exact: {d}");
    }
    // Nothing but those bytes: once the daemon is gone the client reads EOF,
    // so anything extra it sent would be read here.
    snd.disconnect().unwrap();
    pad.daemon.kill().unwrap();
    let mut extra = Vec::new();
    c.read_to_end(&mut extra).unwrap();
    assert!(
        extra.is_empty(),
        "{} bytes after the guest's {}",
        extra.len(),
        want.len()
    );
    eprintln!(
        "{g:?}: {} bytes bit-exact; {}",
        want.len(),
        pacing.summary()
    );
}

#[test]
fn playback_s16_stereo_48k_reaches_the_client_bit_exact() {
    playback_reaches_the_client_bit_exact(Geometry::new(PcmFormat::S16, PcmRate::R48000, 2), 1);
}

#[test]
fn playback_s32_mono_44k1_reaches_the_client_bit_exact() {
    playback_reaches_the_client_bit_exact(Geometry::new(PcmFormat::S32, PcmRate::R44100, 1), 2);
}

#[test]
fn playback_float_8ch_96k_reaches_the_client_bit_exact() {
    playback_reaches_the_client_bit_exact(Geometry::new(PcmFormat::Float, PcmRate::R96000, 8), 3);
}

/// A capture pattern: `periods` periods of noise whose first frame has no
/// zero byte, so its first byte is the first non-silence byte of the capture.
fn capture_pattern(g: &Geometry, periods: usize, seed: u64) -> Vec<u8> {
    let mut p = noise(periods * g.period_bytes(), seed);
    for b in &mut p[..g.frame_bytes()] {
        *b |= 1;
    }
    p
}

/// Finds what the client wrote in the captured data, where the choice of
/// `capture_pattern` and of writing time makes it findable exactly.
///
/// The client writes its pattern once the stream runs and has completed an rx
/// buffer with status OK, i.e. once the capture source is open (the pad keeps
/// capture input only while one is, and the daemon may open it after PREPARE
/// has been answered). Until the pad has read the pattern, the guest records
/// silence, so the capture is: silence, then the pattern from its first byte,
/// then silence again (all formats here are signed or float, whose silence is
/// zero bytes). Checked precisely: the pattern starts at the first non-zero
/// byte, which must start a frame; it is there whole and bit-exact; and
/// everything after it is silence.
fn check_capture(done: &[vmm_tests::IoCompletion], g: &Geometry, pattern: &[u8]) {
    for (k, c) in done.iter().enumerate() {
        assert_eq!(c.data.len(), g.period_bytes(), "rx completion {k} length");
    }
    let got: Vec<u8> = done.iter().flat_map(|c| c.data.iter().copied()).collect();
    let at = got
        .iter()
        .position(|&b| b != 0)
        .expect("the client's bytes never reached the guest");
    assert_eq!(
        at % g.frame_bytes(),
        0,
        "the pattern starts mid-frame at {at}"
    );
    let rest = &got[at..];
    assert!(
        rest.len() >= pattern.len(),
        "the capture ended {} bytes into the pattern: queue more rx buffers",
        rest.len()
    );
    let (head, tail) = rest.split_at(pattern.len());
    if let Some(d) = difference(head, pattern) {
        panic!("capture is not bit-exact (pattern found at byte {at}): {d}");
    }
    assert!(
        tail.iter().all(|&b| b == 0),
        "capture after the client's bytes is not silence"
    );
    eprintln!(
        "capture: {} bytes bit-exact from byte {at} (rx buffer {})",
        pattern.len(),
        at / g.period_bytes()
    );
}

/// rx buffers to queue for a capture of `periods` periods: one that is
/// recorded before the client writes, up to five periods of delay before the
/// pad thread hands the pattern over (generous: it takes microseconds), the
/// pattern, and one of silence after it.
fn rx_buffers_for(periods: usize) -> usize {
    1 + 5 + periods + 1
}

/// Capture is bit-exact: what the client writes is what the guest records
/// (see [`check_capture`] for the exact expectation), on schedule.
fn capture_records_the_client_bit_exact(g: Geometry, periods: usize, seed: u64) {
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let mut c = attach(&pad, &mut snd);
    prepare(&mut snd, IN, &g);

    let pattern = capture_pattern(&g, periods, seed);
    let total = rx_buffers_for(periods);
    for _ in 0..total {
        snd.rx(IN, g.period_bytes(), &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Rx, TIMEOUT).unwrap();
    let (status, window) = start_timed(&mut snd, IN).unwrap();
    assert_eq!(status, Status::Ok, "START");
    let mut done = snd.wait_io_count(Queue::Rx, 1, TIMEOUT).unwrap();
    assert_eq!(done.len(), 1, "first rx completion");
    check_statuses(&done, &[Status::Ok]).unwrap();
    c.write_all(&pattern).unwrap();
    done.extend(snd.wait_io_count(Queue::Rx, total - 1, TIMEOUT).unwrap());
    assert_eq!(done.len(), total, "rx completions");
    check_statuses(&done, &[Status::Ok]).unwrap();
    let pacing = check_pacing(&done, &g, window, PACING).unwrap();
    check_capture(&done, &g, &pattern);
    stop_and_release(&mut snd, IN);
    pad.alive();
    eprintln!("{g:?}: {}", pacing.summary());
}

#[test]
fn capture_s16_stereo_48k_records_the_client_bit_exact() {
    capture_records_the_client_bit_exact(Geometry::new(PcmFormat::S16, PcmRate::R48000, 2), 10, 4);
}

#[test]
fn capture_s32_mono_44k1_records_the_client_bit_exact() {
    capture_records_the_client_bit_exact(Geometry::new(PcmFormat::S32, PcmRate::R44100, 1), 10, 5);
}

/// One pad plays and records at once: stream 0 to the client and the client
/// to stream 1, both bit-exact (capture as in [`check_capture`]) and both on
/// schedule.
#[test]
fn one_pad_plays_and_records_at_the_same_time_bit_exact() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let mut c = attach(&pad, &mut snd);
    prepare(&mut snd, OUT, &g);
    prepare(&mut snd, IN, &g);

    let n = 10;
    let capture = capture_pattern(&g, n, 6);
    let periods = noise_periods(&g, n, 7);
    let playback = periods.concat();
    let reader = read_exact_on_thread(&c, playback.len());
    let rx_total = rx_buffers_for(n);
    for p in &periods {
        snd.tx(OUT, p, &[]).unwrap();
    }
    for _ in 0..rx_total {
        snd.rx(IN, g.period_bytes(), &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Tx, TIMEOUT).unwrap();
    wait_drained(&mut snd, Queue::Rx, TIMEOUT).unwrap();
    let (status, out_window) = start_timed(&mut snd, OUT).unwrap();
    assert_eq!(status, Status::Ok, "START output");
    let (status, in_window) = start_timed(&mut snd, IN).unwrap();
    assert_eq!(status, Status::Ok, "START input");
    // Polling two queues in turn adds up to a slice (1 ms) to each timestamp.
    let mut first = collect_io(&mut snd, &[(Queue::Tx, 1), (Queue::Rx, 1)], TIMEOUT).unwrap();
    check_statuses(&first[1], &[Status::Ok]).unwrap();
    c.write_all(&capture).unwrap();
    let wants = [
        (Queue::Tx, n - first[0].len()),
        (Queue::Rx, rx_total - first[1].len()),
    ];
    let rest = collect_io(&mut snd, &wants, TIMEOUT).unwrap();
    for (all, more) in first.iter_mut().zip(rest) {
        all.extend(more);
    }
    let [tx, rx] = <[_; 2]>::try_from(first).unwrap();
    check_statuses(&tx, &[Status::Ok]).unwrap();
    check_statuses(&rx, &[Status::Ok]).unwrap();
    let tx_pacing = check_pacing(&tx, &g, out_window, PACING).unwrap();
    let rx_pacing = check_pacing(&rx, &g, in_window, PACING).unwrap();

    let got = joined(reader);
    if let Some(d) = difference(&got, &playback) {
        panic!("playback is not bit-exact: {d}");
    }
    check_capture(&rx, &g, &capture);
    stop_and_release(&mut snd, OUT);
    stop_and_release(&mut snd, IN);
    pad.alive();
    eprintln!(
        "duplex: tx {}, rx {}",
        tx_pacing.summary(),
        rx_pacing.summary()
    );
}

/// A client that does not read never holds the guest up: 150 periods (1.5 s)
/// play with four buffers in flight, re-queued as they complete, and every
/// completion comes on schedule although the client reads nothing. When it
/// finally reads, the pad has dropped the oldest frames, not the newest: the
/// client gets whole frames in order, ending with the guest's very last one,
/// after an unbroken run of at least the stream's buffer (the pad's ring must
/// hold at least `buffer_bytes`: virtio spec 5.14.6.6.3, a device's
/// intermediate buffer is no smaller than `buffer_bytes`).
///
/// FLOAT, 8 channels, 96 kHz (3 MB/s) so that 1.5 s far exceeds what the
/// ring and the socket buffers can hold. The data are self-numbering 32-bit
/// words, 8 per frame.
#[test]
fn a_client_that_does_not_read_never_delays_completions_and_gets_the_newest_frames() {
    let g = Geometry::new(PcmFormat::Float, PcmRate::R96000, 8);
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let mut c = attach(&pad, &mut snd);
    prepare(&mut snd, OUT, &g);

    let n = 150;
    let words_per_period = g.period_bytes() / 4;
    let periods: Vec<Vec<u8>> = (0..n)
        .map(|i| word_counter((i * words_per_period) as u32, g.period_bytes()))
        .collect();
    let (done, window) = play_streaming(&mut snd, OUT, &periods, 4, TIMEOUT, |_| {}).unwrap();
    check_statuses(&done, &[Status::Ok]).unwrap();
    let pacing = check_pacing(&done, &g, window, PACING).unwrap();
    assert!(
        window.answered.elapsed() >= Duration::from_secs(1),
        "the client was not left unread for a second"
    );

    // Now read until the guest's last word arrives.
    let last = (n * words_per_period - 1) as u32;
    let mut got = Vec::new();
    let mut buf = vec![0; 64 * 1024];
    while words(&got[..got.len() / 4 * 4]).last() != Some(&last) {
        let k = c.read(&mut buf).unwrap();
        assert_ne!(k, 0, "EOF before the last frame");
        got.extend_from_slice(&buf[..k]);
    }
    stop_and_release(&mut snd, OUT);
    pad.alive();

    let frame_words = g.frame_bytes() / 4;
    let w = words(&got);
    assert_eq!(got.len() % g.frame_bytes(), 0, "partial frame");
    let mut runs = vec![(w[0], 1usize)];
    assert_eq!(w[0] as usize % frame_words, 0, "first word starts no frame");
    for pair in w.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(b > a, "frames out of order: word {b} after {a}");
        if b == a + 1 {
            runs.last_mut().unwrap().1 += 1;
        } else {
            assert_eq!(b as usize % frame_words, 0, "a gap ends mid-frame at {b}");
            assert_eq!(
                (a as usize + 1) % frame_words,
                0,
                "a gap starts mid-frame after {a}"
            );
            runs.push((b, 1));
        }
    }
    let played = n * g.period_bytes();
    assert!(
        got.len() < played,
        "nothing was dropped ({} bytes of {played})",
        got.len()
    );
    let newest = runs.last().unwrap().1 * 4;
    assert!(
        newest >= g.buffer_bytes(),
        "the newest unbroken run is {newest} bytes, less than the buffer ({})",
        g.buffer_bytes()
    );
    eprintln!(
        "non-reading client: got {} of {played} bytes in {} runs, newest run {newest} bytes; {}",
        got.len(),
        runs.len(),
        pacing.summary()
    );
}

/// A second client is turned away with one line of text and closed, and the
/// first one keeps the pad: still attached, still receiving playback.
#[test]
fn a_second_client_gets_one_busy_line_and_is_closed() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let first = attach(&pad, &mut snd);

    let mut second = client(&pad.path);
    let mut reply = Vec::new();
    second
        .read_to_end(&mut reply)
        .expect("the second client is closed (EOF), not left hanging");
    let text = String::from_utf8(reply).expect("the refusal is text");
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "not exactly one line: {text:?}"
    );
    assert!(text.contains("busy"), "{text:?}");
    assert!(text.contains("pad0"), "{text:?}");

    assert!(audio::jack_connected(&mut snd, OUT_JACK).unwrap());
    prepare(&mut snd, OUT, &g);
    let periods = noise_periods(&g, 3, 8);
    let want = periods.concat();
    let reader = read_exact_on_thread(&first, want.len());
    let (done, _) = play_streaming(&mut snd, OUT, &periods, 4, TIMEOUT, |_| {}).unwrap();
    check_statuses(&done, &[Status::Ok]).unwrap();
    if let Some(d) = difference(&joined(reader), &want) {
        panic!("the first client's playback is not bit-exact: {d}");
    }
    stop_and_release(&mut snd, OUT);
    pad.alive();
}

/// A client that disconnects mid-playback does not stall the guest: every
/// buffer still completes on schedule (OK while attached, then IO_ERR once the
/// pad is gone, never anything else), the jack reports the disconnection, the
/// daemon stays up, and a new client gets the next playback bit-exact.
#[test]
fn a_client_leaving_mid_playback_does_not_stall_completions() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let c = attach(&pad, &mut snd);
    prepare(&mut snd, OUT, &g);

    // The reader consumes everything until the test shuts the socket down.
    let mut r = c.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).map(|_| got)
    });
    let n = 60;
    let leave_after = 20;
    let words_per_period = g.period_bytes() / 4;
    let periods: Vec<Vec<u8>> = (0..n)
        .map(|i| word_counter((i * words_per_period) as u32, g.period_bytes()))
        .collect();
    let mut left_at = None;
    let (done, window) = play_streaming(&mut snd, OUT, &periods, 4, TIMEOUT, |k| {
        if k + 1 == leave_after {
            c.shutdown(Shutdown::Both).unwrap();
            left_at = Some(Instant::now());
        }
    })
    .unwrap();
    drop(c);
    let pacing = check_pacing(&done, &g, window, PACING).unwrap();
    check_statuses(&done, &[Status::Ok, Status::IoErr]).unwrap();
    let statuses: Vec<Status> = done.iter().map(|c| c.status).collect();
    let first_err = statuses
        .iter()
        .position(|&s| s == Status::IoErr)
        .unwrap_or(n);
    assert!(
        first_err >= leave_after,
        "IO_ERR while the client was attached: {statuses:?}"
    );
    assert!(
        statuses[first_err..].iter().all(|&s| s == Status::IoErr),
        "OK after the pad was gone: {statuses:?}"
    );
    assert_eq!(
        statuses.last(),
        Some(&Status::IoErr),
        "the detach was never noticed"
    );
    // What the client read before leaving is the stream's beginning, intact.
    let got = joined(reader);
    let prefix = word_counter(0, got.len() / 4 * 4);
    assert!(
        got.len() >= (leave_after - 1) * g.period_bytes(),
        "only {} bytes before leaving",
        got.len()
    );
    if let Some(d) = difference(&got, &prefix) {
        panic!("playback before the disconnect is not bit-exact: {d}");
    }
    wait_jack(&mut snd, OUT_JACK, false, TIMEOUT).unwrap();
    stop_and_release(&mut snd, OUT);
    pad.alive();

    // The pad comes back with a new client.
    let c = attach(&pad, &mut snd);
    assert_eq!(snd.prepare(OUT).unwrap(), Status::Ok, "PREPARE again");
    let periods = noise_periods(&g, 5, 9);
    let want = periods.concat();
    let reader = read_exact_on_thread(&c, want.len());
    let (done, window2) = play_streaming(&mut snd, OUT, &periods, 4, TIMEOUT, |_| {}).unwrap();
    check_statuses(&done, &[Status::Ok]).unwrap();
    check_pacing(&done, &g, window2, PACING).unwrap();
    if let Some(d) = difference(&joined(reader), &want) {
        panic!("playback after reconnecting is not bit-exact: {d}");
    }
    stop_and_release(&mut snd, OUT);
    pad.alive();
    eprintln!(
        "left after {:?}; first IO_ERR at completion {first_err}; {}",
        left_at.map(|t| t.duration_since(window.answered)),
        pacing.summary()
    );
}

/// Buffers the driver queued before START are played (or recorded) from the
/// first period: the first completion is due one period after START, as
/// docs/design.md's pacing says (the first is taken at START). Linux queues
/// its first buffers and sends START right after; unlike the other tests,
/// this one does not wait for the device to take the buffers
/// ([`wait_drained`]) before the START, and repeats the sequence so that a
/// race between the data queue and the control queue shows: a device that
/// handles the START first finds nothing to play, counts an underrun, and
/// completes everything a period late.
///
/// That failure has a signature which scheduling noise does not: every
/// completion is at least half a period late, yet they still come a period
/// apart (a stall of this thread or of the daemon would instead bring them in
/// one batch, or leave the later ones on time). Rounds are judged on it, so a
/// loaded machine does not fail the test; completing early fails it always.
fn buffers_queued_before_start_start_playing_at_once(stream: u32, queue: Queue) {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let half = g.period() / 2;
    let per_round = 4;
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let _c = attach(&pad, &mut snd);
    snd.disconnect().unwrap();
    let rounds = 30;
    let mut late = Vec::new();
    let mut failed = Vec::new();
    for round in 0..rounds {
        // A fresh connection (a fresh device, as after a guest reboot) each
        // round, so that every round opens the pad the first time after a
        // PREPARE, independently of what an earlier round left behind.
        let mut snd = pad.driver();
        prepare(&mut snd, stream, &g);
        for i in 0..per_round {
            match queue {
                Queue::Tx => snd.tx(stream, &noise(g.period_bytes(), i as u64), &[]),
                _ => snd.rx(stream, g.period_bytes(), &[]),
            }
            .unwrap();
        }
        let (status, window) = start_timed(&mut snd, stream).unwrap();
        assert_eq!(status, Status::Ok, "START");
        let done = snd.wait_io_count(queue, per_round, TIMEOUT).unwrap();
        assert_eq!(done.len(), per_round, "completions");
        // Never early (the lateness bounds are the signature's business).
        let lenient = Tolerance {
            typical: TIMEOUT,
            worst: TIMEOUT,
        };
        let pacing = check_pacing(&done, &g, window, lenient).unwrap();
        let all_late = pacing.lateness.iter().all(|&l| l >= half);
        let paced = done
            .windows(2)
            .all(|w| w[1].completed_at.duration_since(w[0].completed_at) >= half);
        if all_late && paced {
            late.push(format!(
                "round {round}: {} (each completion: {:?})",
                pacing.summary(),
                pacing.lateness
            ));
        }
        // The pad is attached throughout: anything but OK means the stream
        // ran without its device.
        if let Err(e) = check_statuses(&done, &[Status::Ok]) {
            failed.push(format!("round {round}: {e}"));
        }
        stop_and_release(&mut snd, stream);
        snd.disconnect().unwrap();
    }
    pad.alive();
    assert!(
        late.is_empty() && failed.is_empty(),
        "in {} of {rounds} rounds, buffers queued before START did not start at START \
         (a period late: the daemon handled START before taking them from {queue}):\n{}\n\
         in {} rounds, buffers did not complete OK:\n{}",
        late.len(),
        late.join("\n"),
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn tx_buffers_queued_before_start_start_playing_at_once() {
    buffers_queued_before_start_start_playing_at_once(OUT, Queue::Tx);
}

#[test]
fn rx_buffers_queued_before_start_start_recording_at_once() {
    buffers_queued_before_start_start_playing_at_once(IN, Queue::Rx);
}

/// A stream released and prepared again at once (Linux does it on every
/// `snd_pcm_drop` + `snd_pcm_prepare`, e.g. when a player seeks) plays to the
/// client from its first buffer again: every round's buffers complete OK and
/// the client gets exactly every round's bytes, with none lost between.
#[test]
fn a_stream_prepared_again_right_after_release_plays_to_the_client() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let c = attach(&pad, &mut snd);
    assert_eq!(g.set_params(&mut snd, OUT).unwrap(), Status::Ok);
    let rounds = 5;
    let rounds_periods: Vec<Vec<Vec<u8>>> = (0..rounds)
        .map(|r| noise_periods(&g, 3, 20 + r as u64))
        .collect();
    let want: Vec<u8> = rounds_periods.iter().flatten().flatten().copied().collect();
    let reader = read_exact_on_thread(&c, want.len());
    let mut failed = Vec::new();
    for (round, periods) in rounds_periods.iter().enumerate() {
        assert_eq!(snd.prepare(OUT).unwrap(), Status::Ok, "PREPARE");
        let (done, _) = play_streaming(&mut snd, OUT, periods, 4, TIMEOUT, |_| {}).unwrap();
        if let Err(e) = check_statuses(&done, &[Status::Ok]) {
            failed.push(format!("round {round}: {e}"));
        }
        stop_and_release(&mut snd, OUT);
    }
    assert!(
        failed.is_empty(),
        "buffers completed with an error although the pad was attached:\n{}",
        failed.join("\n")
    );
    if let Some(d) = difference(&joined(reader), &want) {
        panic!("the client did not get every round's bytes: {d}");
    }
    pad.alive();
}

// ---- capture semantics and playback timing of the pad options -------------

/// Writes `data` to the pad on a thread (blocking writes, as `socat` does),
/// then closes the connection if `close`.
fn write_on_thread(c: &UnixStream, data: Vec<u8>, close: bool) -> JoinHandle<io::Result<()>> {
    let mut c = c.try_clone().unwrap();
    thread::spawn(move || {
        c.write_all(&data)?;
        if close {
            c.shutdown(Shutdown::Both)?;
        }
        Ok(())
    })
}

/// Records `total` periods on the input stream (buffers queued before START)
/// and returns the completions.
fn record(snd: &mut SndDriver, g: &Geometry, total: usize) -> Vec<vmm_tests::IoCompletion> {
    for _ in 0..total {
        snd.rx(IN, g.period_bytes(), &[]).unwrap();
    }
    wait_drained(snd, Queue::Rx, TIMEOUT).unwrap();
    let (status, window) = start_timed(snd, IN).unwrap();
    assert_eq!(status, Status::Ok, "START");
    let done = snd.wait_io_count(Queue::Rx, total, TIMEOUT).unwrap();
    assert_eq!(done.len(), total, "rx completions");
    check_statuses(&done, &[Status::Ok]).unwrap();
    check_pacing(&done, g, window, PACING).unwrap();
    done
}

/// The README recipe `sox … | socat -u - UNIX-CONNECT:pad`, started before
/// the guest records: sox writes the whole file at once; the pad reads only
/// as fast as the guest records (the writer blocks meanwhile), so the file
/// is recorded whole and bit-exact from its first frame.
#[test]
fn a_file_written_at_full_speed_before_recording_starts_is_recorded_whole() {
    // FLOAT, 8 channels, 96 kHz: 20 periods (200 ms, as many rx buffers as
    // fit in the queue) are 600 KiB, more than the pad's inbox and the
    // socket buffer hold.
    let g = Geometry::new(PcmFormat::Float, PcmRate::R96000, 8);
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let c = attach(&pad, &mut snd);
    let periods = 20;
    let pattern = capture_pattern(&g, periods, 21);
    let writer = write_on_thread(&c, pattern.clone(), false);
    thread::sleep(Duration::from_millis(300));
    assert!(
        !writer.is_finished(),
        "a 600 KiB file was taken at once: the pad does not hold the writer back"
    );
    prepare(&mut snd, IN, &g);
    let done = record(&mut snd, &g, rx_buffers_for(periods));
    joined(writer);
    assert_eq!(
        &done[0].data[..g.frame_bytes()],
        &pattern[..g.frame_bytes()],
        "the first frame recorded is the file's first"
    );
    check_capture(&done, &g, &pattern);
    stop_and_release(&mut snd, IN);
    pad.alive();
}

/// The same file written at full speed once the guest records.
#[test]
fn a_file_written_at_full_speed_while_recording_is_recorded_whole() {
    let g = Geometry::new(PcmFormat::Float, PcmRate::R96000, 8);
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let c = attach(&pad, &mut snd);
    prepare(&mut snd, IN, &g);
    let periods = 20;
    let pattern = capture_pattern(&g, periods, 22);
    let total = rx_buffers_for(periods);
    for _ in 0..total {
        snd.rx(IN, g.period_bytes(), &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Rx, TIMEOUT).unwrap();
    let (status, window) = start_timed(&mut snd, IN).unwrap();
    assert_eq!(status, Status::Ok, "START");
    let mut done = snd.wait_io_count(Queue::Rx, 1, TIMEOUT).unwrap();
    let writer = write_on_thread(&c, pattern.clone(), false);
    done.extend(snd.wait_io_count(Queue::Rx, total - 1, TIMEOUT).unwrap());
    assert_eq!(done.len(), total, "rx completions");
    check_statuses(&done, &[Status::Ok]).unwrap();
    check_pacing(&done, &g, window, PACING).unwrap();
    joined(writer);
    check_capture(&done, &g, &pattern);
    stop_and_release(&mut snd, IN);
    pad.alive();
}

/// A client that writes a file and closes at once (socat at EOF) loses
/// nothing: the pad stays attached until the guest has recorded all of it,
/// and only then detaches (JACK_DISCONNECTED).
#[test]
fn a_client_closing_right_after_writing_loses_nothing_and_detaches_after_the_recording() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut pad = Pad::spawn();
    let mut snd = pad.driver();
    let c = attach(&pad, &mut snd);
    let periods = 20;
    let pattern = capture_pattern(&g, periods, 23);
    let writer = write_on_thread(&c, pattern.clone(), true);
    drop(c);
    joined(writer);
    // Closed, nothing recorded yet: still attached.
    thread::sleep(Duration::from_millis(300));
    assert!(
        audio::jack_connected(&mut snd, IN_JACK).unwrap(),
        "the pad detached before its client's bytes were recorded"
    );
    prepare(&mut snd, IN, &g);
    // The data was there before START: the first buffer holds its first
    // frame. After the last byte the pad detaches, so the buffers after it
    // complete IO_ERR (silence), as for any removal.
    let total = periods + 3;
    for _ in 0..total {
        snd.rx(IN, g.period_bytes(), &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Rx, TIMEOUT).unwrap();
    assert_eq!(snd.start(IN).unwrap(), Status::Ok, "START");
    let done = snd.wait_io_count(Queue::Rx, total, TIMEOUT).unwrap();
    assert_eq!(done.len(), total, "rx completions");
    check_statuses(&done[..periods], &[Status::Ok]).unwrap();
    assert_eq!(
        &done[0].data[..g.frame_bytes()],
        &pattern[..g.frame_bytes()],
        "the first frame recorded is the file's first"
    );
    check_capture(&done, &g, &pattern);
    wait_jack(&mut snd, IN_JACK, false, TIMEOUT).unwrap();
    stop_and_release(&mut snd, IN);
    pad.alive();
}

/// Periods of over 4 MiB, 64 times what a worker's copy buffer holds, go
/// through the daemon in chunks, both ways, bit-exact: S24 (in 4 bytes),
/// 6 channels (24-byte frames, which do not divide the 64 KiB buffer),
/// 384 kHz (9.2 MB/s: a period is 0.45 s), each message cut into
/// descriptors of 40,009 bytes (so descriptor, chunk and frame boundaries
/// all differ). Playback: three periods of noise reach the client exactly,
/// on schedule. Capture (`capture = "live"`, whose ring holds a whole
/// period: a pipe pad's 256 KiB inbox would hand it over in pieces): a
/// period the client writes once the capture runs is recorded whole and
/// bit-exact into the next rx buffer, between buffers of silence.
#[test]
fn periods_of_4_mib_play_and_record_bit_exact_through_chunks() {
    let g = Geometry {
        format: PcmFormat::S24,
        rate: PcmRate::R384000,
        channels: 6,
        period_frames: (4 << 20) / 24 + 1,
        periods: 2,
    };
    assert_ne!(65536 % g.frame_bytes(), 0);
    let mut pad = Pad::spawn_streams(
        "capture = \"live\"",
        "formats = [\"S24\"]\nrates = [384000]\nchannels = { min = 6, max = 6 }\n",
    );
    let mut snd = pad.driver_with(&ConnectOptions {
        memory_size: 64 << 20,
        queue_size: 512,
        ..ConnectOptions::default()
    });
    let mut c = attach(&pad, &mut snd);
    let len = g.period_bytes();
    // Header alone, then PCM descriptors of 40,009 bytes (the status of an
    // rx message shares the last one).
    let split: Vec<usize> = std::iter::once(4)
        .chain((1..).map(|k| 4 + k * 40_009).take_while(|&at| at < 4 + len))
        .collect();

    prepare(&mut snd, OUT, &g);
    let periods = noise_periods(&g, 3, 31);
    let want = periods.concat();
    let reader = read_exact_on_thread(&c, want.len());
    for p in &periods {
        snd.tx(OUT, p, &split).unwrap();
    }
    wait_drained(&mut snd, Queue::Tx, TIMEOUT).unwrap();
    let (status, window) = start_timed(&mut snd, OUT).unwrap();
    assert_eq!(status, Status::Ok, "START output");
    let done = snd.wait_io_count(Queue::Tx, 3, TIMEOUT).unwrap();
    assert_eq!(done.len(), 3, "tx completions");
    check_statuses(&done, &[Status::Ok]).unwrap();
    let pacing = check_pacing(&done, &g, window, PACING).unwrap();
    let got = joined(reader);
    stop_and_release(&mut snd, OUT);
    if let Some(d) = difference(&got, &want) {
        panic!("4 MiB periods are not played bit-exact: {d}");
    }

    prepare(&mut snd, IN, &g);
    let pattern = capture_pattern(&g, 1, 32);
    for _ in 0..3 {
        snd.rx(IN, len, &split).unwrap();
    }
    wait_drained(&mut snd, Queue::Rx, TIMEOUT).unwrap();
    let (status, _) = start_timed(&mut snd, IN).unwrap();
    assert_eq!(status, Status::Ok, "START input");
    let mut rx = snd.wait_io_count(Queue::Rx, 1, TIMEOUT).unwrap();
    check_statuses(&rx, &[Status::Ok]).unwrap();
    c.write_all(&pattern).unwrap();
    rx.extend(snd.wait_io_count(Queue::Rx, 2, TIMEOUT).unwrap());
    assert_eq!(rx.len(), 3, "rx completions");
    check_statuses(&rx, &[Status::Ok]).unwrap();
    check_capture(&rx, &g, &pattern);
    assert!(
        rx[1].data == pattern,
        "the client's period is not the second rx buffer, whole"
    );
    stop_and_release(&mut snd, IN);
    pad.alive();
    eprintln!("{len}-byte periods: {}", pacing.summary());
}

/// `capture = "live"`: a source far ahead of the guest never blocks and the
/// guest gets its newest frames (the oldest are dropped).
#[test]
fn with_capture_live_a_writer_far_ahead_never_blocks_and_the_oldest_frames_go() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut pad = Pad::spawn_with("capture = \"live\"");
    let mut snd = pad.driver();
    let c = attach(&pad, &mut snd);
    prepare(&mut snd, IN, &g);
    let mut first = record(&mut snd, &g, 2);
    let pattern = capture_pattern(&g, 200, 24);
    let t = Instant::now();
    let writer = write_on_thread(&c, pattern.clone(), false);
    joined(writer);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "a live pad held a 2 s write back for {took:?}"
    );
    for _ in 0..20 {
        snd.rx(IN, g.period_bytes(), &[]).unwrap();
    }
    first.extend(snd.wait_io_count(Queue::Rx, 20, TIMEOUT).unwrap());
    let got: Vec<u8> = first.iter().flat_map(|c| c.data.iter().copied()).collect();
    let at = got.iter().position(|&b| b != 0).expect("nothing recorded");
    let head = &got[at..at + g.frame_bytes()];
    assert_ne!(
        head,
        &pattern[..g.frame_bytes()],
        "the oldest frame was kept"
    );
    let in_pattern = pattern.windows(head.len()).any(|w| w == head);
    assert!(in_pattern, "what was recorded is not from the source");
    pad.alive();
}

/// `fill = "silence"`: a listener's timeline is the guest's. The guest plays,
/// stops for a second, plays again; the client gets the first sound, one
/// second of silence, the second sound.
#[test]
fn with_fill_silence_a_one_second_pause_reaches_the_client_as_one_second_of_silence() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut pad = Pad::spawn_with("fill = \"silence\"");
    let mut snd = pad.driver();
    let c = attach(&pad, &mut snd);
    let rate = g.bytes_per_second() as usize;
    let reader = read_exact_on_thread(&c, 3 * rate);
    prepare(&mut snd, OUT, &g);
    let a = noise_periods(&g, 10, 31).concat();
    let b = noise_periods(&g, 10, 32).concat();
    for chunk in a.chunks(g.period_bytes()) {
        snd.tx(OUT, chunk, &[]).unwrap();
    }
    assert_eq!(snd.start(OUT).unwrap(), Status::Ok);
    assert_eq!(snd.wait_io_count(Queue::Tx, 10, TIMEOUT).unwrap().len(), 10);
    assert_eq!(snd.stop(OUT).unwrap(), Status::Ok);
    let paused = Instant::now();
    for chunk in b.chunks(g.period_bytes()) {
        snd.tx(OUT, chunk, &[]).unwrap();
    }
    thread::sleep(Duration::from_secs(1).saturating_sub(paused.elapsed()));
    assert_eq!(snd.start(OUT).unwrap(), Status::Ok);
    assert_eq!(snd.wait_io_count(Queue::Tx, 10, TIMEOUT).unwrap().len(), 10);
    let got = joined(reader);
    stop_and_release(&mut snd, OUT);
    let find = |needle: &[u8]| got.windows(needle.len()).position(|w| w == needle);
    let a_at = find(&a[..64]).expect("the first sound");
    let b_at = find(&b[..64]).expect("the second sound");
    assert_eq!(&got[a_at..a_at + a.len()], &a[..], "the first sound, whole");
    let gap = &got[a_at + a.len()..b_at];
    assert!(gap.iter().all(|&x| x == 0), "the gap is not silence");
    let gap_ms = gap.len() as f64 * 1000.0 / rate as f64;
    eprintln!("a 1 s pause reached the client as {gap_ms:.1} ms of silence");
    // STOP came after the 10th completion (the test thread may see it late,
    // which only lengthens the pause), START 1 s after STOP. The pad dates
    // frames by when they are written, so a late tick before the pause can
    // shorten it by that lateness (992 ms seen on a loaded machine).
    assert!(
        (975.0..=1100.0).contains(&gap_ms),
        "a 1 s pause came out as {gap_ms:.1} ms"
    );
    pad.alive();
}

/// `header = "wav"`: a stream that comes back with other parameters starts a
/// new WAV stream (header + frames), one with the same parameters goes on.
#[test]
fn with_header_wav_a_format_change_yields_a_second_wav_stream() {
    let mut pad = Pad::spawn_with("header = \"wav\"");
    let mut snd = pad.driver();
    let mut c = attach(&pad, &mut snd);
    let mut got_all = Vec::new();
    let mut want = Vec::new();
    for (rate, seed, new_header) in [
        (PcmRate::R48000, 41u64, true),
        (PcmRate::R48000, 42, false),
        (PcmRate::R44100, 43, true),
    ] {
        let g = Geometry::new(PcmFormat::S16, rate, 2);
        prepare(&mut snd, OUT, &g);
        let periods = noise_periods(&g, 4, seed);
        for p in &periods {
            snd.tx(OUT, p, &[]).unwrap();
        }
        let hdr = if new_header { 44 } else { 0 };
        let reader = read_exact_on_thread(&c, hdr + periods.len() * g.period_bytes());
        assert_eq!(snd.start(OUT).unwrap(), Status::Ok);
        assert_eq!(snd.wait_io_count(Queue::Tx, 4, TIMEOUT).unwrap().len(), 4);
        let got = joined(reader);
        stop_and_release(&mut snd, OUT);
        if new_header {
            let h = &got[..44];
            assert_eq!(&h[..4], b"RIFF");
            assert_eq!(&h[8..16], b"WAVEfmt ");
            let sample_rate = u32::from_le_bytes(h[24..28].try_into().unwrap());
            assert_eq!(sample_rate, g.rate.hz(), "the header's rate");
            assert_eq!(u16::from_le_bytes([h[22], h[23]]), 2, "channels");
            assert_eq!(&h[36..40], b"data");
        }
        want.extend(periods.concat());
        got_all.extend_from_slice(&got[hdr..]);
    }
    assert!(got_all == want, "frames differ");
    // Nothing else was sent (no third header).
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut extra = [0u8; 1];
    assert!(
        c.read(&mut extra).is_err(),
        "more bytes after the last stream"
    );
    pad.alive();
}
