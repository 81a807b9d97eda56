//! The ALSA device on a real clock: a headless PipeWire server (see
//! `vmm_tests::pipewire`), reached through the `pipewire` ALSA PCM, the
//! way a desktop host's sound goes. What reached PipeWire's null sink is
//! recorded from its monitor and compared with what the guest played, bit
//! for bit; capture records what `pw-play` plays into the sink.
//!
//! Needs the `vsound` binary (`cargo build --bin vsound`) and PipeWire 1.4
//! (`scripts/install-deps.sh`); `VSOUND_NO_PIPEWIRE=1` skips these tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::thread;
use std::time::{Duration, Instant};

use vmm_tests::audio::{
    check_statuses, noise, play_streaming, start_timed, wait_drained, Geometry,
};
use vmm_tests::pipewire::{find, PipeWire, PCM};
use vmm_tests::snd::{PcmFormat, PcmRate};
use vmm_tests::{ConnectOptions, Daemon, DaemonOptions, Queue, SndDriver, Status};

const TIMEOUT: Duration = Duration::from_secs(30);
const OUT: u32 = 0;
const IN: u32 = 1;

fn config() -> String {
    config_with("")
}

/// The test's configuration, with `more` after it; its API socket is a
/// path of its own in the temporary directory.
fn config_with(more: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let api = std::env::temp_dir().join(format!("vsound-pw-api-{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&api);
    let api = api.display();
    format!(
        r#"
[daemon]
api_socket = "{api}"

[devices.pw]
kind = "alsa"
pcm = "{PCM}"

[[streams]]
direction = "output"
device = "pw"
formats = ["S16"]
rates = [48000]
channels = {{ min = 2, max = 2 }}

[[streams]]
direction = "input"
device = "pw"
formats = ["S16"]
rates = [48000]
channels = {{ min = 2, max = 2 }}
{more}"#
    )
}

/// One PipeWire at a time: neither the server nor the daemon runs with a
/// real-time priority here, and two servers, two session managers and two
/// daemons on two cores made each of them late by tens of milliseconds in
/// CI (PipeWire then fills a quantum with silence).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// PipeWire and a daemon on it (holding this test's turn), or `None` when
/// PipeWire is not tested.
fn start() -> Option<(PipeWire, Daemon, std::sync::MutexGuard<'static, ()>)> {
    start_with(config())
}

fn start_with(config: String) -> Option<(PipeWire, Daemon, std::sync::MutexGuard<'static, ()>)> {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let pw = PipeWire::start().unwrap_or_else(|e| panic!("{e}"))?;
    let daemon = Daemon::spawn_with(&DaemonOptions {
        config_toml: Some(config),
        env: pw.env(),
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Some((pw, daemon, turn))
}

fn driver(daemon: &Daemon) -> SndDriver {
    daemon
        .connect(&ConnectOptions::default())
        .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
}

fn geometry() -> Geometry {
    Geometry::new(PcmFormat::S16, PcmRate::R48000, 2)
}

/// Plays `pcm` on the output stream as Linux does (SET_PARAMS, PREPARE, the
/// buffer queued, START, a new period each time one completes), then STOP
/// and RELEASE right after the last completion, as a guest's `aplay` ends.
fn play(snd: &mut SndDriver, pcm: &[u8], allowed: &[Status], on_completion: impl FnMut(usize)) {
    play_then_release_after(snd, pcm, allowed, Duration::ZERO, on_completion);
}

/// [`play`], with `gap` between the STOP and the RELEASE: a guest's
/// player that keeps the PCM open between sounds (Linux sends STOP when a
/// drain ends, RELEASE only when the PCM is closed or set up again).
fn play_then_release_after(
    snd: &mut SndDriver,
    pcm: &[u8],
    allowed: &[Status],
    gap: Duration,
    mut on_completion: impl FnMut(usize),
) {
    let g = geometry();
    assert_eq!(g.set_params(snd, OUT).unwrap(), Status::Ok, "SET_PARAMS");
    assert_eq!(snd.prepare(OUT).unwrap(), Status::Ok, "PREPARE");
    let periods: Vec<Vec<u8>> = pcm.chunks(g.period_bytes()).map(<[u8]>::to_vec).collect();
    let timeout = TIMEOUT + g.duration_of(pcm.len() as u64);
    let (done, _) = play_streaming(snd, OUT, &periods, g.periods as usize, timeout, |k| {
        on_completion(k)
    })
    .unwrap();
    check_statuses(&done, allowed).unwrap();
    assert_eq!(snd.stop(OUT).unwrap(), Status::Ok, "STOP");
    thread::sleep(gap);
    assert_eq!(snd.release(OUT).unwrap(), Status::Ok, "RELEASE");
}

/// `want` is in `got` whole, bit for bit; its offset.
fn contains(got: &[u8], want: &[u8], what: &str) -> usize {
    let head = &want[..want.len().min(4096)];
    let Some(at) = find(got, head) else {
        panic!(
            "{what}: its first {} bytes never reached the sink ({} bytes recorded, {} of them not zero)",
            head.len(),
            got.len(),
            got.iter().filter(|b| **b != 0).count()
        );
    };
    let end = at + want.len();
    let Some(tail) = got.get(at..end) else {
        panic!(
            "{what}: cut: {} of {} bytes reached the sink",
            got.len() - at,
            want.len()
        );
    };
    if let Some(i) = tail.iter().zip(want).position(|(a, b)| a != b) {
        let i = i / 4 * 4;
        // What happened there: frames of `want` skipped, or others put in.
        let probe = &want[i..want.len().min(i + 256)];
        let inserted = find(&got[at + i..], probe);
        let lost = find(&want[i..], &got[at + i..(at + i + 256).min(got.len())]);
        let zeros = got[at + i..].iter().take_while(|b| **b == 0).count();
        panic!(
            "{what}: differs from byte {i} of {} (frame {}): {} bytes put in ({zeros} zero bytes follow), \
             or {} bytes lost",
            want.len(),
            i / 4,
            inserted.map_or("no".into(), |n| n.to_string()),
            lost.map_or("no".into(), |n| n.to_string()),
        );
    }
    at
}

/// Stream `id` as the daemon reports it (`vsound ctl --json status`).
fn stream_status(daemon: &Daemon, id: u32) -> serde_json::Value {
    let out = std::process::Command::new(Daemon::binary().unwrap())
        .args(["ctl", "--config"])
        .arg(daemon.dir().join("vsound.toml"))
        .args(["--json", "status"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["result"]["streams"][id as usize].clone()
}

/// The rate the daemon measured on the PCM's own clock, in ppm: PipeWire's
/// null sink runs on the host's `CLOCK_MONOTONIC` timer, so it is 0 but
/// for the readings' noise.
fn measured_rate_is_the_servers(daemon: &Daemon, id: u32) -> f64 {
    let st = stream_status(daemon, id);
    let ppm = st["device_rate_ppm"]
        .as_f64()
        .unwrap_or_else(|| panic!("no rate measured on the PCM's clock: {st}"));
    assert!(
        ppm.abs() < 20.0,
        "PipeWire's clock measured at {ppm} ppm: {st}"
    );
    ppm
}

/// The daemon's log says nothing of an xrun.
fn no_xruns(daemon: &Daemon) {
    let log = daemon.log();
    let xruns: Vec<&str> = log.lines().filter(|l| l.contains("xrun")).collect();
    assert!(xruns.is_empty(), "xruns: {xruns:#?}");
}

/// A 100 ms beep and a 2 s tone, played and released as a guest's `aplay`
/// does, reach PipeWire whole and bit-exact: the end of each is played out
/// (the PCM drains on close) rather than cut. The tone's RELEASE comes
/// 300 ms after its STOP: its end plays out at the STOP, not held until
/// the RELEASE with silence before it (the guest stopped with nothing more
/// queued: its sound ended).
#[test]
fn a_beep_and_a_tone_reach_pipewire_whole_and_bit_exact() {
    let Some((pw, mut daemon, _turn)) = start() else {
        return;
    };
    let g = geometry();
    let mut snd = driver(&daemon);
    let rec = pw.record("beep.wav").unwrap();
    let beep = noise(g.bytes_per_second() as usize / 10, 1);
    play(&mut snd, &beep, &[Status::Ok], |_| {});
    thread::sleep(Duration::from_millis(300));
    let tone = noise(2 * g.bytes_per_second() as usize, 2);
    play_then_release_after(
        &mut snd,
        &tone,
        &[Status::Ok],
        Duration::from_millis(300),
        |_| {},
    );
    thread::sleep(Duration::from_millis(500));
    let got = rec.stop().unwrap();
    daemon.check_alive().unwrap();
    let b = contains(&got, &beep, "the beep");
    let t = contains(&got, &tone, "the tone");
    assert!(t > b, "the tone came before the beep");
    no_xruns(&daemon);
    eprintln!(
        "beep ({} bytes) at byte {b}, tone ({} bytes) at byte {t} of {} recorded",
        beep.len(),
        tone.len(),
        got.len()
    );
}

/// A guest that keeps its PCM open between two sounds (STOP when the
/// first has drained, START for the second, no RELEASE between): the first
/// plays out at its STOP, the PCM runs dry while stopped (no xrun: nothing
/// was being played), and the second starts afresh; both reach PipeWire
/// whole and bit-exact, and the daemon reports no xrun.
#[test]
fn a_second_sound_after_a_stop_that_played_out_starts_with_no_xrun() {
    let Some((pw, mut daemon, _turn)) = start() else {
        return;
    };
    let g = geometry();
    let mut snd = driver(&daemon);
    let rec = pw.record("two.wav").unwrap();
    assert_eq!(
        g.set_params(&mut snd, OUT).unwrap(),
        Status::Ok,
        "SET_PARAMS"
    );
    assert_eq!(snd.prepare(OUT).unwrap(), Status::Ok, "PREPARE");
    let first = noise(g.bytes_per_second() as usize / 2, 6);
    let second = noise(g.bytes_per_second() as usize / 2, 7);
    for (pcm, gap_ms) in [(&first, 400), (&second, 0)] {
        let periods: Vec<Vec<u8>> = pcm.chunks(g.period_bytes()).map(<[u8]>::to_vec).collect();
        let (done, _) =
            play_streaming(&mut snd, OUT, &periods, g.periods as usize, TIMEOUT, |_| {}).unwrap();
        check_statuses(&done, &[Status::Ok]).unwrap();
        assert_eq!(snd.stop(OUT).unwrap(), Status::Ok, "STOP");
        thread::sleep(Duration::from_millis(gap_ms));
    }
    assert_eq!(snd.release(OUT).unwrap(), Status::Ok, "RELEASE");
    thread::sleep(Duration::from_millis(500));
    let got = rec.stop().unwrap();
    daemon.check_alive().unwrap();
    let a = contains(&got, &first, "the first sound");
    let b = contains(&got, &second, "the second sound");
    assert!(b > a, "the second sound came first");
    no_xruns(&daemon);
    let log = daemon.log();
    assert!(
        log.contains("plays out"),
        "the first STOP did not play out:\n{log}"
    );
}

/// A sound server that stops answering (SIGSTOP, its socket still there)
/// does not stall the guest's control queue: SET_PARAMS is checked against
/// what the device read of the PCM at its attach, without opening it, and
/// is answered well within the Linux driver's 1 s while the server is
/// frozen. Thawed, the stream plays.
#[test]
fn set_params_is_answered_while_pipewire_is_frozen() {
    let Some((pw, mut daemon, _turn)) = start() else {
        return;
    };
    let g = geometry();
    let mut snd = driver(&daemon);
    pw.freeze(true);
    let asked = Instant::now();
    let status = g.set_params(&mut snd, OUT);
    let took = asked.elapsed();
    let input = g.set_params(&mut snd, IN);
    pw.freeze(false);
    assert_eq!(status.unwrap(), Status::Ok, "SET_PARAMS");
    assert_eq!(input.unwrap(), Status::Ok, "SET_PARAMS (input)");
    assert!(
        took < Duration::from_millis(300),
        "SET_PARAMS took {took:?} with PipeWire frozen"
    );
    let rec = pw.record("thawed.wav").unwrap();
    let pcm = noise(g.bytes_per_second() as usize / 2, 5);
    play(&mut snd, &pcm, &[Status::Ok], |_| {});
    thread::sleep(Duration::from_millis(500));
    let got = rec.stop().unwrap();
    daemon.check_alive().unwrap();
    contains(&got, &pcm, "0.5 s after the thaw");
}

/// 60 s of playback on PipeWire's clock: every frame reaches the sink, in
/// order, none lost or repeated, and the daemon sees no xrun.
#[test]
fn sixty_seconds_on_pipewire_lose_no_frame_and_have_no_xrun() {
    let Some((pw, mut daemon, _turn)) = start() else {
        return;
    };
    let g = geometry();
    let mut snd = driver(&daemon);
    let rec = pw.record("long.wav").unwrap();
    let pcm = noise(60 * g.bytes_per_second() as usize, 3);
    let started = Instant::now();
    play(&mut snd, &pcm, &[Status::Ok], |_| {});
    let took = started.elapsed();
    thread::sleep(Duration::from_millis(500));
    let got = rec.stop().unwrap();
    daemon.check_alive().unwrap();
    contains(&got, &pcm, "60 s of noise");
    no_xruns(&daemon);
    let ppm = measured_rate_is_the_servers(&daemon, OUT);
    eprintln!(
        "60 s played in {took:?}, all {} bytes bit-exact; PipeWire's clock measured at {ppm} ppm",
        pcm.len()
    );
}

/// PipeWire killed mid-playback (SIGKILL: the PCM fails under the stream)
/// and started again: the daemon keeps the guest playing on its own clock
/// meanwhile (every buffer completes), and the stream comes back to the
/// new server by itself: what the guest plays after the restart reaches
/// the sink bit-exact.
#[test]
fn pipewire_killed_and_restarted_mid_playback_gets_the_stream_back() {
    let Some((mut pw, mut daemon, _turn)) = start() else {
        return;
    };
    let g = geometry();
    let mut snd = driver(&daemon);
    let pcm = noise(8 * g.bytes_per_second() as usize, 4);
    let per_second = 100; // periods
    let mut killed_at = None;
    let mut restarted_at = None;
    let mut rec = None;
    // Buffers that reached no device (PipeWire gone) say IO_ERR.
    play(&mut snd, &pcm, &[Status::Ok, Status::IoErr], |k| {
        if k == 2 * per_second {
            pw.kill();
            killed_at = Some(Instant::now());
        }
        if k == 3 * per_second {
            pw.restart().unwrap();
            restarted_at = Some(Instant::now());
            rec = Some(pw.record("after.wav").unwrap());
        }
    });
    thread::sleep(Duration::from_millis(500));
    let got = rec.expect("restarted").stop().unwrap();
    daemon.check_alive().unwrap();
    // The last 3 s were played well after the restart and the recorder.
    let last = &pcm[pcm.len() - 3 * g.bytes_per_second() as usize..];
    contains(&got, last, "the last 3 s after the restart");
    let log = daemon.log();
    assert!(log.contains("went away"), "no removal seen:\n{log}");
    assert!(
        log.matches("on device pw").count() >= 2,
        "the stream did not reopen the device:\n{log}"
    );
    eprintln!(
        "killed {:?} before the end, restarted {:?} after the kill; the last 3 s reached the new server bit-exact",
        killed_at.unwrap().elapsed(),
        restarted_at.unwrap().duration_since(killed_at.unwrap())
    );
}

/// What stops a stream's feed for 300 ms in the middle of 4 s of sound.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// The daemon is stopped (SIGSTOP: a host that did not schedule it).
    /// The `pipewire` plugin's thread, in the daemon, stops with it: the
    /// server plays silence for the node and the PCM sees no underrun.
    Daemon,
    /// The guest sends nothing more for 300 ms: the PCM runs dry and
    /// underruns; the daemon recovers it when the guest's buffers come.
    Guest,
}

/// Plays 4 s with a stall after 1 s; what the guest plays after it must
/// reach the sink bit-exact, every buffer completing; returns the xruns
/// the daemon reported (`None`: PipeWire is not tested).
fn play_through(stall: Stall) -> Option<usize> {
    let (pw, mut daemon, _turn) = start()?;
    let g = geometry();
    let mut snd = driver(&daemon);
    let rec = pw.record("stalled.wav").unwrap();
    let pcm = noise(4 * g.bytes_per_second() as usize, 6);
    let pid = daemon.pid().expect("the daemon's pid");
    let signal = |sig: i32| {
        // SAFETY: a signal to the test's own child process.
        let r = unsafe { libc::kill(pid as i32, sig) };
        assert_eq!(r, 0, "kill({sig})");
    };
    let started = Instant::now();
    play(&mut snd, &pcm, &[Status::Ok], |k| {
        if k == 100 {
            if stall == Stall::Daemon {
                signal(libc::SIGSTOP);
            }
            thread::sleep(Duration::from_millis(300));
            if stall == Stall::Daemon {
                signal(libc::SIGCONT);
            }
        }
    });
    let took = started.elapsed();
    thread::sleep(Duration::from_millis(500));
    let got = rec.stop().unwrap();
    daemon.check_alive().unwrap();
    let last = &pcm[pcm.len() - 2 * g.bytes_per_second() as usize..];
    contains(&got, last, "the last 2 s, after the stall");
    assert!(
        took < Duration::from_secs(6),
        "4 s of sound took {took:?} to play"
    );
    let log = daemon.log();
    let xruns = log.lines().filter(|l| l.contains("device pw xrun")).count();
    eprintln!("4 s with a stall played in {took:?}; {xruns} xruns reported");
    Some(xruns)
}

/// The daemon stopped for 300 ms mid-playback: the stream plays on after
/// it, bit-exact, and at most one xrun is reported for it.
#[test]
fn a_stream_plays_on_after_the_daemon_stalled() {
    if let Some(xruns) = play_through(Stall::Daemon) {
        assert!(xruns <= 1, "{xruns} xruns reported for one stall");
    }
}

/// The guest sends nothing for 300 ms mid-playback: PipeWire's PCM
/// underruns, the daemon reports it once and brings the PCM back, and what
/// the guest sends after plays bit-exact.
#[test]
fn a_pcm_that_ran_dry_under_a_starved_stream_plays_on() {
    if let Some(xruns) = play_through(Stall::Guest) {
        assert_eq!(xruns, 1, "xruns reported for one gap");
    }
}

/// 10 s of capture from PipeWire (the null sink's monitor, while `pw-play`
/// plays noise into the sink): the guest's buffers hold the noise bit-exact
/// and contiguous, from where it starts to the end, with no xrun.
#[test]
fn ten_seconds_of_capture_from_pipewire_are_bit_exact_and_contiguous() {
    let Some((pw, mut daemon, _turn)) = start() else {
        return;
    };
    let g = geometry();
    let mut snd = driver(&daemon);
    let source = noise(14 * g.bytes_per_second() as usize, 5);
    let mut player = pw.play(&source).unwrap();
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        g.set_params(&mut snd, IN).unwrap(),
        Status::Ok,
        "SET_PARAMS"
    );
    assert_eq!(snd.prepare(IN).unwrap(), Status::Ok, "PREPARE");
    let n = 10 * 100;
    for _ in 0..g.periods {
        snd.rx(IN, g.period_bytes(), &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Rx, TIMEOUT).unwrap();
    let (status, _) = start_timed(&mut snd, IN).unwrap();
    assert_eq!(status, Status::Ok, "START");
    let mut got = Vec::with_capacity(n * g.period_bytes());
    let mut done = 0;
    let deadline = Instant::now() + TIMEOUT;
    while done < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let cs = snd.wait_io(Queue::Rx, left).unwrap();
        assert!(!cs.is_empty(), "only {done} of {n} captures completed");
        for c in cs {
            assert_eq!(c.status, Status::Ok, "capture {done}");
            got.extend_from_slice(&c.data);
            done += 1;
            if done + g.periods as usize <= n {
                snd.rx(IN, g.period_bytes(), &[]).unwrap();
            }
        }
    }
    assert_eq!(snd.stop(IN).unwrap(), Status::Ok, "STOP");
    assert_eq!(snd.release(IN).unwrap(), Status::Ok, "RELEASE");
    let _ = player.kill();
    let _ = player.wait();
    daemon.check_alive().unwrap();
    // Past the first 0.2 s (the capture may start inside the noise or on
    // silence before it), everything is the noise, contiguous.
    let skip = g.bytes_per_second() as usize / 5;
    let tail = &got[skip..];
    eprintln!(
        "captured {} bytes, {} not zero; first non-zero at {:?}",
        got.len(),
        got.iter().filter(|b| **b != 0).count(),
        got.iter().position(|b| *b != 0)
    );
    let at = find(&source, &tail[..4096])
        .unwrap_or_else(|| panic!("the capture does not hold the noise played into the sink"));
    contains(&source[at..], tail, "the capture");
    no_xruns(&daemon);
    let ppm = measured_rate_is_the_servers(&daemon, IN);
    eprintln!("PipeWire's clock measured at {ppm} ppm");
    eprintln!(
        "{} bytes captured, the last {} bit-exact and contiguous",
        got.len(),
        tail.len()
    );
}

/// A PipeWire frozen while a stream opens on it: the open hangs on the
/// stream's own I/O thread, never on the reactor that serves every stream
/// (ALSA streams included). A `null` capture stream beside it records on
/// pace throughout; the hung open is taken for the device gone once it is
/// older than its bound (2 s), the stuck stream's buffers still complete;
/// thawed, PipeWire gets the next sound whole.
#[test]
fn an_open_hung_on_a_frozen_pipewire_stalls_no_other_stream() {
    const NULL_IN: u32 = 2;
    let more = r#"
[devices.quiet]
kind = "null"

[[streams]]
direction = "input"
device = "quiet"
formats = ["S16"]
rates = [48000]
channels = { min = 2, max = 2 }
"#;
    let Some((pw, mut daemon, _turn)) = start_with(config_with(more)) else {
        return;
    };
    let g = geometry();
    let mut snd = driver(&daemon);
    // The null stream records.
    assert_eq!(g.set_params(&mut snd, NULL_IN).unwrap(), Status::Ok);
    assert_eq!(snd.prepare(NULL_IN).unwrap(), Status::Ok);
    for _ in 0..g.periods {
        snd.rx(NULL_IN, g.period_bytes(), &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Rx, TIMEOUT).unwrap();
    assert_eq!(start_timed(&mut snd, NULL_IN).unwrap().0, Status::Ok);
    // PipeWire freezes; the output stream starts on it: its PCM opens
    // (and hangs) as the stream's first buffer goes to the device.
    pw.freeze(true);
    assert_eq!(g.set_params(&mut snd, OUT).unwrap(), Status::Ok);
    assert_eq!(snd.prepare(OUT).unwrap(), Status::Ok);
    let tone = noise(g.period_bytes() * 400, 9);
    let periods: Vec<&[u8]> = tone.chunks(g.period_bytes()).collect();
    for p in periods.iter().take(g.periods as usize) {
        snd.tx(OUT, p, &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Tx, TIMEOUT).unwrap();
    assert_eq!(snd.start(OUT).unwrap(), Status::Ok, "START");
    let started = Instant::now();
    let (mut sent, mut played) = (g.periods as usize, 0);
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    let mut recorded = 0;
    while started.elapsed() < Duration::from_secs(4) {
        for c in snd.wait_io(Queue::Rx, Duration::from_millis(500)).unwrap() {
            assert_eq!(c.status, Status::Ok, "null capture {recorded}");
            let now = Instant::now();
            longest = longest.max(now - last);
            last = now;
            recorded += 1;
            snd.rx(NULL_IN, g.period_bytes(), &[]).unwrap();
        }
        for _ in snd.wait_io(Queue::Tx, Duration::ZERO).unwrap() {
            played += 1;
            if let Some(p) = periods.get(sent) {
                snd.tx(OUT, p, &[]).unwrap();
                sent += 1;
            }
        }
    }
    let log = daemon.log();
    pw.freeze(false);
    eprintln!(
        "4 s with PipeWire frozen: {recorded} null captures, the longest gap {longest:?}; \
         {played} playback buffers completed"
    );
    assert!(
        longest < Duration::from_millis(250),
        "the null stream stalled for {longest:?} while the PipeWire stream's open hung"
    );
    assert!(recorded >= 300, "{recorded} null captures in 4 s");
    assert!(
        log.contains("taken for gone"),
        "the hung open was not taken for the device gone:\n{log}"
    );
    assert!(
        played > 0,
        "no playback buffer completed with the open hung"
    );
    // Thawed: the stream is done with; the next sound reaches the sink.
    assert_eq!(snd.stop(OUT).unwrap(), Status::Ok, "STOP");
    assert_eq!(snd.release(OUT).unwrap(), Status::Ok, "RELEASE");
    let _ = snd.wait_io(Queue::Tx, Duration::from_millis(500));
    assert_eq!(snd.stop(NULL_IN).unwrap(), Status::Ok);
    assert_eq!(snd.release(NULL_IN).unwrap(), Status::Ok);
    let _ = snd.wait_io(Queue::Rx, Duration::from_millis(200));
    wait_for_attached(&mut daemon);
    let rec = pw.record("after-thaw.wav").unwrap();
    let pcm = noise(g.bytes_per_second() as usize / 2, 10);
    play(&mut snd, &pcm, &[Status::Ok], |_| {});
    thread::sleep(Duration::from_millis(500));
    let got = rec.stop().unwrap();
    daemon.check_alive().unwrap();
    contains(&got, &pcm, "0.5 s after the thaw");
}

/// Waits until the daemon says the PipeWire device is present again.
fn wait_for_attached(daemon: &mut Daemon) {
    let deadline = Instant::now() + TIMEOUT;
    while !daemon.log().contains(": back") {
        assert!(
            Instant::now() < deadline,
            "the device never came back:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
}
