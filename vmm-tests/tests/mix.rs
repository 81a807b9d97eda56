//! Mixing end to end: two guest output streams on one pad play two known
//! signals at once, and the pad's client receives their sum.
//!
//! Signal A has samples that are multiples of 256, signal B samples with
//! |B| < 128 (neither ever zero), so every received sample R decodes
//! uniquely: B is R's low byte sign-extended, A is R - B. Each part must be
//! its signal exactly, after some leading silence (the streams start at
//! slightly different times).
//!
//! Needs the `vsound` binary: `cargo build --bin vsound` first, or set
//! `VSOUND_BIN`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use vmm_tests::audio::{check_statuses, noise, wait_drained, wait_jack, Geometry};
use vmm_tests::snd::{PcmFormat, PcmRate};
use vmm_tests::{ConnectOptions, Daemon, DaemonOptions, Queue, Status};

const TIMEOUT: Duration = Duration::from_secs(20);
const PERIODS: usize = 100;

/// A reproducible signal of `n` samples: `scale` times a value in
/// 1..=max with a random sign.
fn signal(n: usize, seed: u64, max: u64, scale: i16) -> Vec<i16> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x % max + 1) as i16 * scale;
            if x & (1 << 40) != 0 {
                -v
            } else {
                v
            }
        })
        .collect()
}

fn bytes(s: &[i16]) -> Vec<u8> {
    s.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `part` must be zero but for one run equal to `want`, starting on a
/// frame boundary. Returns where it starts (in samples).
fn find_exact(name: &str, part: &[i16], want: &[i16], channels: usize) -> usize {
    let start = part
        .iter()
        .position(|&v| v != 0)
        .unwrap_or_else(|| panic!("{name}: nothing received"));
    assert_eq!(start % channels, 0, "{name}: starts mid-frame");
    let got = part.get(start..start + want.len()).unwrap_or_else(|| {
        panic!(
            "{name}: only {} of {} samples received",
            part.len() - start,
            want.len()
        )
    });
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{name}: sample {i} (of {}) is {} not {} (a gap or a loss in the mix)",
            want.len(),
            got[i],
            want[i]
        );
    }
    let rest = &part[start + want.len()..];
    assert!(
        rest.iter().all(|&v| v == 0),
        "{name}: {} samples after its end are not silence",
        rest.iter().filter(|&&v| v != 0).count()
    );
    start
}

/// Reads the pad on a thread until it has `want` bytes and the daemon has
/// been quiet for a second, or it hangs up.
fn read_until_quiet(c: &UnixStream, want: usize) -> thread::JoinHandle<Vec<u8>> {
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut c = c.try_clone().unwrap();
    thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if got.len() >= want || Instant::now() > deadline {
                        break;
                    }
                }
                Err(e) => panic!("pad client read failed: {e}"),
            }
        }
        got
    })
}

/// Splits received S16 samples into the A part (multiples of 256) and the
/// B part (|B| < 128).
fn decode(got: &[u8]) -> (Vec<i16>, Vec<i16>) {
    let r: Vec<i16> = got
        .chunks_exact(2)
        .map(|w| i16::from_le_bytes([w[0], w[1]]))
        .collect();
    let b: Vec<i16> = r.iter().map(|&v| i16::from(v as u8 as i8)).collect();
    let a = r.iter().zip(&b).map(|(&v, &b)| v - b).collect();
    (a, b)
}

/// A daemon with one pad and two streams of `direction` on it (S16,
/// 48 kHz, stereo).
fn spawn(direction: &str) -> (Daemon, std::path::PathBuf, tempfile::TempDir) {
    let dir = vmm_tests::unprivileged::tempdir("vsound-mix-").unwrap();
    let path = dir.path().join("pad.sock");
    let one = "formats = [\"S16\"]\nrates = [48000]\nchannels = { min = 2, max = 2 }\n";
    let config = format!(
        "[devices.pad0]\nkind = \"pad\"\npath = {:?}\n\n\
         [[streams]]\ndirection = \"{direction}\"\ndevice = \"pad0\"\n{one}\n\
         [[streams]]\ndirection = \"{direction}\"\ndevice = \"pad0\"\n{one}",
        path.display().to_string()
    );
    let daemon = Daemon::spawn_with(&DaemonOptions {
        config_toml: Some(config),
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    (daemon, path, dir)
}

#[test]
fn two_output_streams_on_one_pad_are_summed_sample_exact() {
    let (mut daemon, path, _dir) = spawn("output");
    let mut snd = daemon
        .connect(&ConnectOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let c = UnixStream::connect(&path).unwrap();
    wait_jack(&mut snd, 0, true, TIMEOUT).unwrap();

    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let samples = PERIODS * g.period_bytes() / 2;
    let a = signal(samples, 1, 126, 256);
    let b = signal(samples, 2, 127, 1);
    let periods =
        |s: &[i16]| -> Vec<Vec<u8>> { s.chunks(g.period_bytes() / 2).map(bytes).collect() };
    let (pa, pb) = (periods(&a), periods(&b));

    let reader = read_until_quiet(&c, 2 * samples);

    for s in [0, 1] {
        assert_eq!(g.set_params(&mut snd, s).unwrap(), Status::Ok, "SET_PARAMS");
        assert_eq!(snd.prepare(s).unwrap(), Status::Ok, "PREPARE");
    }
    // Four periods in flight per stream, refilled as they complete.
    let mut next = [0usize; 2];
    for (s, p) in [(0u32, &pa), (1, &pb)] {
        for q in p.iter().take(4) {
            snd.tx(s, q, &[]).unwrap();
        }
        next[s as usize] = 4;
    }
    wait_drained(&mut snd, Queue::Tx, TIMEOUT).unwrap();
    assert_eq!(snd.start(0).unwrap(), Status::Ok, "START 0");
    // B starts a little later: it joins the mix where the bus is.
    thread::sleep(Duration::from_millis(35));
    assert_eq!(snd.start(1).unwrap(), Status::Ok, "START 1");
    let mut done = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while done.len() < 2 * PERIODS {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = snd.wait_io(Queue::Tx, left).unwrap();
        assert!(!got.is_empty(), "only {} completions", done.len());
        for c in got {
            let s = c.stream_id;
            let p = if s == 0 { &pa } else { &pb };
            if let Some(q) = p.get(next[s as usize]) {
                snd.tx(s, q, &[]).unwrap();
                next[s as usize] += 1;
            }
            done.push(c);
        }
    }
    check_statuses(&done, &[Status::Ok]).unwrap();
    for s in [0, 1] {
        assert_eq!(snd.stop(s).unwrap(), Status::Ok, "STOP");
        assert_eq!(snd.release(s).unwrap(), Status::Ok, "RELEASE");
    }
    let got = reader.join().unwrap();
    daemon
        .check_alive()
        .unwrap_or_else(|e| panic!("the daemon died: {e}"));
    assert_eq!(got.len() % 4, 0, "whole frames");
    let (part_a, part_b) = decode(&got);
    let at_a = find_exact("signal A", &part_a, &a, 2);
    let at_b = find_exact("signal B", &part_b, &b, 2);
    eprintln!(
        "received {} frames; A from frame {}, B from frame {} ({} ms later)",
        got.len() / 4,
        at_a / 2,
        at_b / 2,
        (at_b as i64 - at_a as i64) / 2 / 48
    );
    assert!(at_b > at_a, "B started later");
    snd.disconnect().unwrap();
    daemon.kill().unwrap();
}

/// Two input streams on one pad both record what the pad's client writes:
/// silence, then the client's bytes whole and bit-exact, then silence.
#[test]
fn two_input_streams_on_one_pad_both_record_the_client() {
    let (mut daemon, path, _dir) = spawn("input");
    let mut snd = daemon
        .connect(&ConnectOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut c = UnixStream::connect(&path).unwrap();
    wait_jack(&mut snd, 0, true, TIMEOUT).unwrap();
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    // Ten periods of noise whose first frame has no zero byte.
    let mut pattern = noise(10 * g.period_bytes(), 7);
    for b in &mut pattern[..g.frame_bytes()] {
        *b |= 1;
    }
    // One period before the client writes, up to five of delay, the
    // pattern, one after.
    let total = 1 + 5 + 10 + 1;
    for s in [0, 1] {
        assert_eq!(g.set_params(&mut snd, s).unwrap(), Status::Ok, "SET_PARAMS");
        assert_eq!(snd.prepare(s).unwrap(), Status::Ok, "PREPARE");
        for _ in 0..4 {
            snd.rx(s, g.period_bytes(), &[]).unwrap();
        }
    }
    wait_drained(&mut snd, Queue::Rx, TIMEOUT).unwrap();
    for s in [0, 1] {
        assert_eq!(snd.start(s).unwrap(), Status::Ok, "START");
    }
    let mut done: [Vec<vmm_tests::IoCompletion>; 2] = [Vec::new(), Vec::new()];
    let mut queued = [4usize; 2];
    let mut written = false;
    let deadline = Instant::now() + TIMEOUT;
    while done.iter().any(|d| d.len() < total) {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = snd.wait_io(Queue::Rx, left).unwrap();
        assert!(!got.is_empty(), "rx completions stalled");
        for x in got {
            let s = x.stream_id as usize;
            if queued[s] < total {
                snd.rx(x.stream_id, g.period_bytes(), &[]).unwrap();
                queued[s] += 1;
            }
            done[s].push(x);
        }
        // Both capture endpoints are open once each stream completed one.
        if !written && done.iter().all(|d| !d.is_empty()) {
            c.write_all(&pattern).unwrap();
            written = true;
        }
    }
    for (s, d) in done.iter().enumerate() {
        check_statuses(d, &[Status::Ok]).unwrap();
        let got: Vec<u8> = d.iter().flat_map(|x| x.data.iter().copied()).collect();
        let at = got
            .iter()
            .position(|&b| b != 0)
            .unwrap_or_else(|| panic!("stream {s}: the client's bytes never arrived"));
        assert_eq!(at % g.frame_bytes(), 0, "stream {s}: starts mid-frame");
        let rest = &got[at..];
        assert!(rest.len() >= pattern.len(), "stream {s}: capture too short");
        assert!(
            rest[..pattern.len()] == pattern[..],
            "stream {s}: not the client's bytes (from byte {at})"
        );
        assert!(
            rest[pattern.len()..].iter().all(|&b| b == 0),
            "stream {s}: not silence after the client's bytes"
        );
        eprintln!(
            "stream {s}: the client's {} bytes from byte {at}",
            pattern.len()
        );
    }
    for s in [0, 1] {
        assert_eq!(snd.stop(s).unwrap(), Status::Ok, "STOP");
        assert_eq!(snd.release(s).unwrap(), Status::Ok, "RELEASE");
    }
    daemon
        .check_alive()
        .unwrap_or_else(|e| panic!("the daemon died: {e}"));
    snd.disconnect().unwrap();
    daemon.kill().unwrap();
}

/// `part` is silence, then the end of `signal` from some frame on, whole,
/// then silence. Returns the frame of `signal` it starts from.
fn find_tail(name: &str, part: &[i16], signal: &[i16]) -> usize {
    let start = part
        .iter()
        .position(|&v| v != 0)
        .unwrap_or_else(|| panic!("{name}: nothing received"));
    assert_eq!(start % 2, 0, "{name}: starts mid-frame");
    let probe = part.get(start..start + 64).expect("too short");
    let from = (0..signal.len() - 64)
        .step_by(2)
        .find(|&k| &signal[k..k + 64] == probe)
        .unwrap_or_else(|| panic!("{name}: what was received is not the signal"));
    let n = signal.len() - from;
    let got = part
        .get(start..start + n)
        .unwrap_or_else(|| panic!("{name}: the signal's end was cut short"));
    if let Some(i) = got.iter().zip(&signal[from..]).position(|(a, b)| a != b) {
        panic!("{name}: a gap or a loss {i} samples after it came back");
    }
    assert!(
        part[start + n..].iter().all(|&v| v == 0),
        "{name}: not silence after its end"
    );
    from / 2
}

/// The pad's client hangs up while two mixed streams play, and another
/// connects: each stream handles the removal on its own (IO_ERR while the
/// device is away, the daemon keeps the guest's clock), both come back,
/// and the new client gets their sum again, each without a gap.
#[test]
fn a_pad_client_leaving_mid_mix_is_a_removal_for_both_streams_and_both_come_back() {
    let (mut daemon, path, _dir) = spawn("output");
    let mut snd = daemon
        .connect(&ConnectOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let first = UnixStream::connect(&path).unwrap();
    let drain = read_until_quiet(&first, usize::MAX);
    wait_jack(&mut snd, 0, true, TIMEOUT).unwrap();

    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let samples = PERIODS * g.period_bytes() / 2;
    let a = signal(samples, 3, 126, 256);
    let b = signal(samples, 4, 127, 1);
    let periods =
        |s: &[i16]| -> Vec<Vec<u8>> { s.chunks(g.period_bytes() / 2).map(bytes).collect() };
    let (pa, pb) = (periods(&a), periods(&b));
    for s in [0, 1] {
        assert_eq!(g.set_params(&mut snd, s).unwrap(), Status::Ok, "SET_PARAMS");
        assert_eq!(snd.prepare(s).unwrap(), Status::Ok, "PREPARE");
    }
    let mut next = [0usize; 2];
    for (s, p) in [(0u32, &pa), (1, &pb)] {
        for q in p.iter().take(4) {
            snd.tx(s, q, &[]).unwrap();
        }
        next[s as usize] = 4;
    }
    wait_drained(&mut snd, Queue::Tx, TIMEOUT).unwrap();
    for s in [0, 1] {
        assert_eq!(snd.start(s).unwrap(), Status::Ok, "START");
    }
    let mut done: [Vec<vmm_tests::IoCompletion>; 2] = [Vec::new(), Vec::new()];
    let mut second = None;
    let mut first = Some(first);
    let deadline = Instant::now() + TIMEOUT;
    while done.iter().any(|d| d.len() < PERIODS) {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = snd.wait_io(Queue::Tx, left).unwrap();
        assert!(!got.is_empty(), "tx completions stalled");
        for x in got {
            let s = x.stream_id as usize;
            let p = if s == 0 { &pa } else { &pb };
            if let Some(q) = p.get(next[s]) {
                snd.tx(x.stream_id, q, &[]).unwrap();
                next[s] += 1;
            }
            done[s].push(x);
        }
        let n = done[0].len().min(done[1].len());
        if n >= 20 && first.is_some() {
            // The reader holds a clone: hang up for both.
            if let Some(c) = first.take() {
                c.shutdown(std::net::Shutdown::Both).unwrap();
            }
            wait_jack(&mut snd, 0, false, TIMEOUT).unwrap();
        }
        if n >= 40 && second.is_none() {
            let c = UnixStream::connect(&path).unwrap();
            let r = read_until_quiet(&c, 0);
            wait_jack(&mut snd, 0, true, TIMEOUT).unwrap();
            second = Some((c, r));
        }
    }
    for s in [0, 1] {
        assert_eq!(snd.stop(s).unwrap(), Status::Ok, "STOP");
        assert_eq!(snd.release(s).unwrap(), Status::Ok, "RELEASE");
    }
    let before = drain.join().unwrap();
    assert!(!before.is_empty(), "the first client got nothing");
    for (s, d) in done.iter().enumerate() {
        assert!(
            d[..15].iter().all(|x| x.status == Status::Ok),
            "stream {s}: OK before the removal"
        );
        assert!(
            d[25..38].iter().all(|x| x.status == Status::IoErr),
            "stream {s}: IO_ERR while the device is away"
        );
        assert!(
            d[60..].iter().all(|x| x.status == Status::Ok),
            "stream {s}: OK once back on the device"
        );
    }
    let (c, r) = second.unwrap();
    let got = r.join().unwrap();
    drop(c);
    let (part_a, part_b) = decode(&got);
    let from_a = find_tail("signal A", &part_a, &a);
    let from_b = find_tail("signal B", &part_b, &b);
    eprintln!(
        "after the return: A from its frame {from_a}, B from its frame {from_b} (of {})",
        samples / 2
    );
    assert!(from_a < samples / 2 * 6 / 10 && from_b < samples / 2 * 6 / 10);
    daemon
        .check_alive()
        .unwrap_or_else(|e| panic!("the daemon died: {e}"));
    snd.disconnect().unwrap();
    daemon.kill().unwrap();
}
