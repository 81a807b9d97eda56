//! Stress: 8 active streams on 4 pads while devices are detached and
//! attached 10,000 times at random points in the period (pad clients
//! leaving and coming back, and management-API detaches mixed). Every
//! descriptor must come back exactly once, the daemon must survive, its
//! open file descriptors must return to their starting count, and its
//! resident memory must not grow by more than 1 MiB.
//!
//! `VSOUND_STRESS_CYCLES` overrides the cycle count (default 10,000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vmm_tests::frontend::Queue;
use vmm_tests::snd::constants::code;
use vmm_tests::snd::wire::pcm_hdr;
use vmm_tests::snd::{PcmFormat, PcmRate, SetParams, Status};
use vmm_tests::{ConnectOptions, Daemon, DaemonOptions};

const PADS: usize = 4;
const PERIOD: usize = 1920;

fn proc_status(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn api_call(api: &mut BufReader<UnixStream>, req: &str) -> String {
    api.get_mut()
        .write_all(format!("{req}\n").as_bytes())
        .unwrap();
    let mut line = String::new();
    api.read_line(&mut line).unwrap();
    line
}

#[test]
fn ten_thousand_detach_attach_cycles_lose_no_buffer_and_leak_nothing() {
    let cycles: usize = std::env::var("VSOUND_STRESS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = vmm_tests::unprivileged::tempdir("vsound-stress-").unwrap();
    let pads: Vec<PathBuf> = (0..PADS)
        .map(|i| dir.path().join(format!("pad{i}.sock")))
        .collect();
    let api_path = dir.path().join("api.sock");
    let mut config = String::new();
    for (i, p) in pads.iter().enumerate() {
        config += &format!(
            "[devices.pad{i}]\nkind = \"pad\"\npath = {:?}\nallow_format_changes = true\n\n",
            p.display().to_string()
        );
    }
    for i in 0..PADS {
        for d in ["output", "input"] {
            config += &format!("[[streams]]\ndirection = \"{d}\"\ndevice = \"pad{i}\"\n\n");
        }
    }
    let mut daemon = Daemon::spawn_with(&DaemonOptions {
        config_toml: Some(config),
        extra_args: vec!["--api-socket".into(), api_path.display().to_string()],
        rust_log: "info".into(),
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let pid = daemon.pid().unwrap();
    let mut snd = daemon.connect(&ConnectOptions::default()).unwrap();

    // All pads attached, all 8 streams running, Linux-style.
    let mut clients: Vec<Option<UnixStream>> = pads
        .iter()
        .map(|p| Some(UnixStream::connect(p).unwrap()))
        .collect();
    let mut submitted = 0u64;
    let mut completed = 0u64;
    for s in 0..(2 * PADS) as u32 {
        let p = SetParams {
            stream_id: s,
            buffer_bytes: 4 * PERIOD as u32,
            period_bytes: PERIOD as u32,
            features: 0,
            channels: 2,
            format: PcmFormat::S16.code(),
            rate: PcmRate::R48000.code(),
            padding: 0,
        };
        assert_eq!(snd.set_params_raw(&p).unwrap(), Status::Ok);
        assert_eq!(
            snd.control(&pcm_hdr(code::PCM_PREPARE, s), 4)
                .unwrap()
                .status(),
            Some(Status::Ok)
        );
        for _ in 0..4 {
            if s % 2 == 0 {
                snd.tx(s, &[0x33; PERIOD], &[]).unwrap();
            } else {
                snd.rx(s, PERIOD, &[]).unwrap();
            }
            submitted += 1;
        }
        assert_eq!(
            snd.control(&pcm_hdr(code::PCM_START, s), 4)
                .unwrap()
                .status(),
            Some(Status::Ok)
        );
    }
    let pump = |snd: &mut vmm_tests::SndDriver,
                submitted: &mut u64,
                completed: &mut u64,
                requeue: bool| {
        for q in [Queue::Tx, Queue::Rx] {
            for c in snd.wait_io(q, Duration::from_millis(1)).unwrap() {
                *completed += 1;
                if requeue {
                    if q == Queue::Tx {
                        snd.tx(c.stream_id, &[0x33; PERIOD], &[]).unwrap();
                    } else {
                        snd.rx(c.stream_id, PERIOD, &[]).unwrap();
                    }
                    *submitted += 1;
                }
            }
        }
    };
    // Warm up, then take the baseline.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(500) {
        pump(&mut snd, &mut submitted, &mut completed, true);
    }
    let fds0 = open_fds(pid);
    let rss0 = proc_status(pid, "VmRSS:");

    // The chaos thread detaches and attaches; this thread plays the guest.
    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let done = done.clone();
        let pads = pads.clone();
        let api_path = api_path.clone();
        let mut taken: Vec<Option<UnixStream>> = clients.iter_mut().map(Option::take).collect();
        thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
            let mut api = BufReader::new(UnixStream::connect(&api_path).unwrap());
            for _ in 0..cycles {
                let i = rng.below(PADS as u64) as usize;
                // A random point in the 10 ms period, at most 1 ms apart.
                thread::sleep(Duration::from_micros(rng.below(1000)));
                if rng.below(2) == 0 {
                    // The pad's client leaves and comes back.
                    taken[i] = None;
                    thread::sleep(Duration::from_micros(rng.below(500)));
                    taken[i] = UnixStream::connect(&pads[i]).ok();
                } else {
                    let r = api_call(
                        &mut api,
                        &format!(r#"{{"cmd":"detach","device":"pad{i}"}}"#),
                    );
                    assert!(r.contains("\"ok\":true"), "{r}");
                    thread::sleep(Duration::from_micros(rng.below(500)));
                    let r = api_call(
                        &mut api,
                        &format!(r#"{{"cmd":"attach","device":"pad{i}"}}"#),
                    );
                    assert!(r.contains("\"ok\":true"), "{r}");
                }
            }
            done.store(true, Ordering::SeqCst);
            taken
        })
    };
    while !done.load(Ordering::SeqCst) {
        pump(&mut snd, &mut submitted, &mut completed, true);
        daemon.check_alive().unwrap();
    }
    let taken = chaos.join().unwrap();
    // Let the last reconnections settle, then stop everything.
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_millis(300) {
        pump(&mut snd, &mut submitted, &mut completed, true);
    }
    for s in 0..(2 * PADS) as u32 {
        let r = snd.control(&pcm_hdr(code::PCM_STOP, s), 4).unwrap();
        assert_eq!(r.status(), Some(Status::Ok));
        let r = snd.control(&pcm_hdr(code::PCM_RELEASE, s), 4).unwrap();
        assert_eq!(r.status(), Some(Status::Ok));
        assert!(
            r.elapsed < Duration::from_millis(100),
            "RELEASE took {:?}",
            r.elapsed
        );
    }
    pump(&mut snd, &mut submitted, &mut completed, false);
    assert_eq!(
        snd.pending_io(Queue::Tx) + snd.pending_io(Queue::Rx),
        0,
        "buffers never returned"
    );
    assert_eq!(
        completed, submitted,
        "every descriptor completed exactly once"
    );
    assert_eq!(snd.unknown_completions(), 0, "a descriptor completed twice");
    daemon.check_alive().unwrap();

    // Same connections as at the baseline: every pad has one client again.
    let mut clients: Vec<UnixStream> = Vec::new();
    for (i, c) in taken.into_iter().enumerate() {
        clients.push(c.unwrap_or_else(|| UnixStream::connect(&pads[i]).unwrap()));
    }
    thread::sleep(Duration::from_millis(200));
    let fds1 = open_fds(pid);
    let rss1 = proc_status(pid, "VmRSS:");
    eprintln!(
        "stress: {cycles} cycles, {completed} buffers, fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB"
    );
    assert!(fds1 <= fds0, "file descriptors leaked: {fds0} -> {fds1}");
    assert!(rss1 <= rss0 + 1024, "RSS grew from {rss0} to {rss1} KiB");
    drop(clients);
}
