//! Hot-removal and hot-add through the real socket (docs/design.md,
//! hot-removal rules 5–7): a pad client that goes away mid-playback and
//! mid-capture under both `on_remove` policies, the management API, and a
//! host device that hangs.
//!
//! Layout: pad0 carries stream 0 (output, jack 0) and stream 1 (input,
//! jack 1); null0 carries stream 2 (output, jack 2), which must keep its
//! pace whatever happens to pad0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vmm_tests::frontend::Queue;
use vmm_tests::snd::constants::{code, event, pcm_feature};
use vmm_tests::snd::wire::{pcm_hdr, query_info};
use vmm_tests::snd::{IoCompletion, PcmFormat, PcmRate, SetParams, SndDriver, Status};
use vmm_tests::{ConnectOptions, Daemon, DaemonOptions};

const PERIOD: usize = 1920; // 10 ms of 48 kHz stereo S16
const PERIOD_T: Duration = Duration::from_millis(10);
const REPLY_BOUND: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(5);

struct Setup {
    daemon: Daemon,
    snd: SndDriver,
    pad: PathBuf,
    api: PathBuf,
    _dir: tempfile::TempDir,
}

fn setup(
    on_remove: &str,
    binary: Option<PathBuf>,
    extra_devices: &str,
    extra_streams: &str,
) -> Setup {
    let dir = vmm_tests::unprivileged::tempdir("vsound-hp-").unwrap();
    let pad = dir.path().join("pad.sock");
    let api = dir.path().join("api.sock");
    let config = format!(
        "[devices.pad0]\nkind = \"pad\"\npath = {pad:?}\nallow_format_changes = true\n# A live source: its client leaving is a removal at once (a pipe pad first\n# records what the client wrote).\ncapture = \"live\"\n\n[devices.null0]\nkind = \"null\"\n\n{extra_devices}\n\
         [[streams]]\ndirection = \"output\"\ndevice = \"pad0\"\non_remove = \"{on_remove}\"\n\n\
         [[streams]]\ndirection = \"input\"\ndevice = \"pad0\"\non_remove = \"{on_remove}\"\n\n\
         [[streams]]\ndirection = \"output\"\ndevice = \"null0\"\n\n{extra_streams}",
        pad = pad.display().to_string()
    );
    let daemon = Daemon::spawn_with(&DaemonOptions {
        binary,
        config_toml: Some(config),
        extra_args: vec!["--api-socket".into(), api.display().to_string()],
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut snd = daemon.connect(&ConnectOptions::default()).unwrap();
    snd.post_event_buffers(32).unwrap();
    Setup {
        daemon,
        snd,
        pad,
        api,
        _dir: dir,
    }
}

fn params(stream: u32, features: u32) -> SetParams {
    SetParams {
        stream_id: stream,
        buffer_bytes: 4 * PERIOD as u32,
        period_bytes: PERIOD as u32,
        features,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: PcmRate::R48000.code(),
        padding: 0,
    }
}

fn status(snd: &mut SndDriver, req: &[u8]) -> Status {
    let r = snd.control(req, 4).unwrap();
    assert!(
        r.elapsed < REPLY_BOUND,
        "control reply took {:?}",
        r.elapsed
    );
    r.status().unwrap()
}

fn cmd(snd: &mut SndDriver, c: u32, stream: u32) -> Status {
    status(snd, &pcm_hdr(c, stream))
}

fn prepare(snd: &mut SndDriver, stream: u32, features: u32) -> Status {
    assert_eq!(status(snd, &params(stream, features).encode()), Status::Ok);
    cmd(snd, code::PCM_PREPARE, stream)
}

/// A pad client that drains (and keeps) everything the pad sends, and can
/// write capture frames.
struct Client {
    sock: UnixStream,
    /// Bytes read so far (for debugging a failure).
    #[allow(dead_code)]
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Vec<u8>>>,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let sock = UnixStream::connect(path).unwrap();
        let mut r = sock.try_clone().unwrap();
        r.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (rc, st) = (received.clone(), stop.clone());
        let reader = thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 8192];
            while !st.load(Ordering::SeqCst) {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        all.extend_from_slice(&buf[..n]);
                        rc.fetch_add(n, Ordering::SeqCst);
                    }
                    Err(_) => continue,
                }
            }
            all
        });
        Client {
            sock,
            received,
            stop,
            reader: Some(reader),
        }
    }

    /// Closes the connection (a hot-removal) and returns what it received.
    fn close(mut self) -> Vec<u8> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        self.reader.take().unwrap().join().unwrap()
    }
}

/// Waits for an event of `kind` with `data`, skipping others.
fn wait_event(snd: &mut SndDriver, kind: u32, data: u32) {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if let Some(e) = snd.wait_event(Duration::from_millis(100)).unwrap() {
            if (e.event_type, e.data) == (kind, data) {
                return;
            }
        }
    }
    panic!("no event {kind:#x}/{data} within {TIMEOUT:?}");
}

fn api(path: &Path, req: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// Keeps `streams` (all on one queue) running Linux-style: 4 buffers each
/// in flight, one re-queued per completion, for `periods` periods, calling
/// `at(k)` once when the k-th period of stream `streams[0]` completes.
/// Returns every completion per stream, and checks none came twice.
fn run(
    snd: &mut SndDriver,
    queue: Queue,
    streams: &[u32],
    periods: usize,
    mut at: impl FnMut(&mut SndDriver, usize),
) -> HashMap<u32, Vec<IoCompletion>> {
    let mut queued: HashMap<u32, usize> = HashMap::new();
    let mut submitted = 0usize;
    for &s in streams {
        for _ in 0..4 {
            if queue == Queue::Tx {
                snd.tx(s, &[0x55; PERIOD], &[]).unwrap();
            } else {
                snd.rx(s, PERIOD, &[]).unwrap();
            }
            submitted += 1;
        }
        queued.insert(s, 4);
        assert_eq!(cmd(snd, code::PCM_START, s), Status::Ok);
    }
    let mut done: HashMap<u32, Vec<IoCompletion>> = HashMap::new();
    let first = streams[0];
    let mut calls = 0;
    while done.get(&first).map_or(0, Vec::len) < periods {
        let got = snd.wait_io(queue, TIMEOUT).unwrap();
        assert!(!got.is_empty(), "no completion in {TIMEOUT:?}");
        for c in got {
            let s = c.stream_id;
            let q = queued.entry(s).or_default();
            if *q < periods + 4 {
                if queue == Queue::Tx {
                    snd.tx(s, &[0x55; PERIOD], &[]).unwrap();
                } else {
                    snd.rx(s, PERIOD, &[]).unwrap();
                }
                *q += 1;
                submitted += 1;
            }
            done.entry(s).or_default().push(c);
        }
        let k = done.get(&first).map_or(0, Vec::len);
        while calls < k {
            calls += 1;
            at(snd, calls);
        }
    }
    for &s in streams {
        assert_eq!(cmd(snd, code::PCM_STOP, s), Status::Ok);
        assert_eq!(cmd(snd, code::PCM_RELEASE, s), Status::Ok);
    }
    // RELEASE returned the rest: every descriptor exactly once.
    for c in snd.wait_io(queue, Duration::from_millis(1)).unwrap() {
        done.entry(c.stream_id).or_default().push(c);
    }
    let total: usize = done.values().map(Vec::len).sum();
    assert_eq!(total, submitted, "every buffer completed exactly once");
    assert_eq!(snd.pending_io(queue), 0);
    done
}

/// A stream kept its pace: the k-th completion is never seen before k - 1
/// periods after the first (no burst: the test thread may see completions
/// late, when it was busy, but never early), and the last one is within a
/// few periods of its due time (no stall, no drift).
fn check_steady(done: &[IoCompletion], what: &str) {
    let Some(first) = done.first() else {
        panic!("{what}: no completions");
    };
    for (k, c) in done.iter().enumerate() {
        let due = first.completed_at + PERIOD_T * k as u32;
        assert!(
            c.completed_at + Duration::from_millis(2) >= due,
            "{what}: completion {k} came {:?} early",
            due.duration_since(c.completed_at)
        );
    }
    let last = done.len() - 1;
    let due = first.completed_at + PERIOD_T * last as u32;
    let late = done[last].completed_at.saturating_duration_since(due);
    assert!(
        late < PERIOD_T * 3,
        "{what}: {late:?} behind after {last} periods"
    );
}

#[test]
fn a_pad_client_leaving_mid_playback_is_a_hot_removal_and_coming_back_a_hot_add() {
    let mut t = setup("silence", None, "", "");
    let client = Client::connect(&t.pad);
    wait_event(&mut t.snd, event::JACK_CONNECTED, 0);
    let jacks = t.snd.jack_info(0, 3).unwrap();
    assert_eq!((jacks[0].connected, jacks[2].connected), (1, 1));
    assert_eq!(
        prepare(&mut t.snd, 0, 1 << pcm_feature::EVT_XRUNS),
        Status::Ok
    );
    assert_eq!(prepare(&mut t.snd, 2, 0), Status::Ok);

    let pad = t.pad.clone();
    let mut client = Some(client);
    let mut received_before = 0;
    let mut second: Option<Client> = None;
    let done = run(&mut t.snd, Queue::Tx, &[0, 2], 90, |snd, k| match k {
        30 => {
            let got = client.take().unwrap().close();
            received_before = got.len();
            wait_event(snd, event::JACK_DISCONNECTED, 0);
            wait_event(snd, event::JACK_DISCONNECTED, 1);
        }
        60 => {
            second = Some(Client::connect(&pad));
            wait_event(snd, event::JACK_CONNECTED, 0);
        }
        _ => {}
    });
    let s0 = &done[&0];
    let s2 = &done[&2];
    check_steady(&s0[..88], "stream 0");
    check_steady(&s2[..88], "stream 2 (other device)");
    assert!(
        received_before >= 25 * PERIOD,
        "client got {received_before} bytes before leaving"
    );
    // While detached (well inside periods 31..60) buffers are IO_ERR; well
    // after the return they are OK again.
    assert!(
        s0[40..55].iter().all(|c| c.status == Status::IoErr),
        "detached: IO_ERR"
    );
    assert!(
        s0[70..88].iter().all(|c| c.status == Status::Ok),
        "back on the device: OK"
    );
    assert!(s0[..25].iter().all(|c| c.status == Status::Ok));
    assert!(
        s2[..88].iter().all(|c| c.status == Status::Ok),
        "the other device is untouched"
    );
    let got = second.unwrap().close();
    assert!(
        got.len() >= 15 * PERIOD,
        "the returning client got the audio again ({} bytes)",
        got.len()
    );
    assert!(
        got.chunks(2).all(|w| w == [0x55, 0x55]),
        "bit-exact guest bytes"
    );
    t.daemon.check_alive().unwrap();
}

#[test]
fn a_pad_client_leaving_mid_capture_gives_silence_with_io_err_then_data_again() {
    let mut t = setup("silence", None, "", "");
    let mut client = Client::connect(&t.pad);
    wait_event(&mut t.snd, event::JACK_CONNECTED, 1);
    // The client feeds a steady 0x11 signal.
    let feeder_stop = Arc::new(AtomicBool::new(false));
    let feed = |sock: &UnixStream, stop: Arc<AtomicBool>| {
        let mut w = sock.try_clone().unwrap();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if w.write_all(&[0x11; PERIOD]).is_err() {
                    return;
                }
                thread::sleep(PERIOD_T / 2);
            }
        })
    };
    let f1 = feed(&client.sock, feeder_stop.clone());
    assert_eq!(prepare(&mut t.snd, 1, 0), Status::Ok);
    let pad = t.pad.clone();
    let mut first = Some(client);
    let mut second: Option<Client> = None;
    let stop2 = Arc::new(AtomicBool::new(false));
    let mut f2 = None;
    let done = run(&mut t.snd, Queue::Rx, &[1], 80, |snd, k| match k {
        25 => {
            feeder_stop.store(true, Ordering::SeqCst);
            first.take().unwrap().close();
            wait_event(snd, event::JACK_DISCONNECTED, 1);
        }
        50 => {
            let c = Client::connect(&pad);
            f2 = Some(feed(&c.sock, stop2.clone()));
            second = Some(c);
            wait_event(snd, event::JACK_CONNECTED, 1);
        }
        _ => {}
    });
    stop2.store(true, Ordering::SeqCst);
    let _ = f1.join();
    if let Some(f) = f2 {
        let _ = f.join();
    }
    client = second.unwrap();
    client.close();
    let s1 = &done[&1];
    check_steady(&s1[..78], "capture");
    let all = |c: &IoCompletion, b: u8| c.data.len() == PERIOD && c.data.iter().all(|&x| x == b);
    assert!(
        s1[10..20]
            .iter()
            .all(|c| c.status == Status::Ok && all(c, 0x11)),
        "recorded before"
    );
    assert!(
        s1[32..45]
            .iter()
            .all(|c| c.status == Status::IoErr && all(c, 0)),
        "silence while away"
    );
    assert!(
        s1[65..75]
            .iter()
            .all(|c| c.status == Status::Ok && all(c, 0x11)),
        "recorded again"
    );
    t.daemon.check_alive().unwrap();
}

#[test]
fn with_on_remove_error_prepare_and_start_fail_while_the_device_is_away() {
    let mut t = setup("error", None, "", "");
    // No client yet: the pad is away.
    assert_eq!(status(&mut t.snd, &params(0, 0).encode()), Status::Ok);
    assert_eq!(cmd(&mut t.snd, code::PCM_PREPARE, 0), Status::IoErr);
    let client = Client::connect(&t.pad);
    wait_event(&mut t.snd, event::JACK_CONNECTED, 0);
    assert_eq!(cmd(&mut t.snd, code::PCM_PREPARE, 0), Status::Ok);
    let mut client = Some(client);
    let done = run(&mut t.snd, Queue::Tx, &[0], 40, |snd, k| {
        if k == 15 {
            client.take().unwrap().close();
            wait_event(snd, event::JACK_DISCONNECTED, 0);
        }
    });
    // The running stream went on at pace; STOP and RELEASE succeeded (run).
    check_steady(&done[&0][..38], "stream 0");
    assert!(done[&0][25..35].iter().all(|c| c.status == Status::IoErr));
    assert_eq!(cmd(&mut t.snd, code::PCM_PREPARE, 0), Status::IoErr);
    let _c = Client::connect(&t.pad);
    wait_event(&mut t.snd, event::JACK_CONNECTED, 0);
    assert_eq!(cmd(&mut t.snd, code::PCM_PREPARE, 0), Status::Ok);
    assert_eq!(cmd(&mut t.snd, code::PCM_START, 0), Status::Ok);
    assert_eq!(cmd(&mut t.snd, code::PCM_STOP, 0), Status::Ok);
    assert_eq!(cmd(&mut t.snd, code::PCM_RELEASE, 0), Status::Ok);
}

#[test]
fn the_management_api_reports_and_detaches_and_attaches_devices() {
    let mut t = setup("silence", None, "", "");
    let st = api(&t.api, r#"{"cmd":"status"}"#);
    assert_eq!(st["ok"], true);
    let devs = st["result"]["devices"].as_array().unwrap();
    let dev = |name: &str| devs.iter().find(|d| d["name"] == name).unwrap().clone();
    assert_eq!(dev("pad0")["attached"], false, "no pad client yet");
    assert_eq!(dev("null0")["kind"], "null");
    assert_eq!(dev("null0")["attached"], true);
    assert_eq!(st["result"]["streams"].as_array().unwrap().len(), 3);
    assert_eq!(st["result"]["streams"][2]["state"], "Idle");

    assert_eq!(prepare(&mut t.snd, 2, 0), Status::Ok);
    let mut detached_at = 0;
    let api_path = t.api.clone();
    let done = run(&mut t.snd, Queue::Tx, &[2], 60, |snd, k| match k {
        20 => {
            let r = api(&api_path, r#"{"cmd":"detach","device":"null0"}"#);
            assert_eq!(r["result"]["changed"], true, "{r}");
            wait_event(snd, event::JACK_DISCONNECTED, 2);
            detached_at = k;
        }
        40 => {
            let st = api(&api_path, r#"{"cmd":"status"}"#);
            let null0 = st["result"]["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["name"] == "null0")
                .unwrap()
                .clone();
            assert_eq!(null0["attached"], false);
            assert_eq!(null0["removals"], 1);
            assert_eq!(st["result"]["streams"][2]["state"], "Started");
            assert!(st["result"]["streams"][2]["frames"].as_u64().unwrap() > 0);
            let r = api(&api_path, r#"{"cmd":"attach","device":"null0"}"#);
            assert_eq!(r["result"]["attached"], true, "{r}");
            wait_event(snd, event::JACK_CONNECTED, 2);
        }
        _ => {}
    });
    assert_eq!(detached_at, 20);
    let s = &done[&2];
    check_steady(&s[..58], "stream 2");
    assert!(s[25..38].iter().all(|c| c.status == Status::IoErr));
    assert!(s[45..58].iter().all(|c| c.status == Status::Ok));

    // Errors are answers, not dropped connections.
    for (req, needle) in [
        (
            r#"{"cmd":"detach","device":"nope"}"#,
            "no device named `nope`",
        ),
        (r#"{"cmd":"frobnicate"}"#, "unknown command"),
        (r#"{"cmd":"attach"}"#, "needs a \"device\""),
        ("not json", "not JSON"),
    ] {
        let r = api(&t.api, req);
        assert_eq!(r["ok"], false, "{req}");
        assert!(r["error"].as_str().unwrap().contains(needle), "{req}: {r}");
    }
    // The ctl client speaks the same protocol.
    let out = std::process::Command::new(Daemon::binary().unwrap())
        .args(["ctl", "--api-socket"])
        .arg(&t.api)
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with("pad0 ")), "{table}");
    let out = std::process::Command::new(Daemon::binary().unwrap())
        .args(["ctl", "--api-socket"])
        .arg(&t.api)
        .args(["detach", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn a_host_device_that_hangs_never_delays_control_replies_or_other_streams() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vsound-test"));
    let mut t = setup(
        "silence",
        Some(bin),
        "[devices.stuck]\nkind = \"test-hang\"\nhang_after_ms = 150\n",
        "[[streams]]\ndirection = \"output\"\ndevice = \"stuck\"\n",
    );
    // Stream 3 is on the device that hangs after 150 ms; stream 2 on null.
    assert_eq!(prepare(&mut t.snd, 3, 0), Status::Ok);
    assert_eq!(prepare(&mut t.snd, 2, 0), Status::Ok);
    let mut worst = Duration::ZERO;
    let done = run(&mut t.snd, Queue::Tx, &[2, 3], 60, |snd, _k| {
        // A control request every period while the device hangs.
        let r = snd
            .control(&query_info(code::PCM_INFO, 0, 4, 32), 4 + 4 * 32)
            .unwrap();
        assert_eq!(r.status(), Some(Status::Ok));
        worst = worst.max(r.elapsed);
    });
    assert!(worst < REPLY_BOUND, "a control reply took {worst:?}");
    check_steady(&done[&2][..58], "stream 2 (null)");
    let s3 = &done[&3];
    assert!(
        s3.len() >= 30,
        "the hung device's stream still completes ({})",
        s3.len()
    );
    assert!(
        s3[30..].iter().any(|c| c.status == Status::IoErr),
        "IO_ERR after the hang"
    );
    let log = t.daemon.log();
    assert!(log.contains("hung"), "the daemon noticed the hang");
    t.daemon.check_alive().unwrap();
}

/// An open may take longer than a write without being stuck (a sound
/// server connecting): it has its own, longer bound (2 s), so an open of
/// 300 ms is not a hang, and the reactor's other streams keep their pace.
#[test]
fn an_open_slower_than_a_writes_bound_is_not_taken_for_a_hang() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vsound-test"));
    let mut t = setup(
        "silence",
        Some(bin),
        "[devices.slow]\nkind = \"test-hang\"\nhang_after_ms = 600000\nopen_ms = 300\n",
        "[[streams]]\ndirection = \"output\"\ndevice = \"slow\"\n",
    );
    assert_eq!(prepare(&mut t.snd, 3, 0), Status::Ok);
    assert_eq!(prepare(&mut t.snd, 2, 0), Status::Ok);
    let done = run(&mut t.snd, Queue::Tx, &[2, 3], 60, |_, _| {});
    check_steady(&done[&2][..58], "stream 2 (null)");
    let s3 = &done[&3];
    // Its lane waited 300 ms for the open (then went on from now, not in a
    // burst): fewer periods than stream 2's, every one played.
    assert!(
        s3.len() >= 20,
        "the slow device's stream plays ({})",
        s3.len()
    );
    assert!(
        s3[..s3.len() - 4].iter().all(|c| c.status == Status::Ok),
        "every buffer reached the device: {:?}",
        s3.iter().map(|c| c.status).collect::<Vec<_>>()
    );
    let log = t.daemon.log();
    assert!(
        !log.contains("hung"),
        "a slow open was taken for a hang: {log}"
    );
    t.daemon.check_alive().unwrap();
}

/// An open that never returns is a hang, found by the shared reactor after
/// the open's bound (2 s, not the 50 ms of a write): the device is removed
/// (JACK_DISCONNECTED), and control and the other streams are unaffected.
#[test]
fn an_open_that_never_returns_is_a_hang_after_the_opens_own_bound() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vsound-test"));
    let mut t = setup(
        "silence",
        Some(bin),
        "[devices.stuck]\nkind = \"test-hang\"\nopen_ms = 3600000\n",
        "[[streams]]\ndirection = \"output\"\ndevice = \"stuck\"\n",
    );
    let since = Instant::now();
    // The lane opens the endpoint of a prepared stream: it never returns.
    assert_eq!(prepare(&mut t.snd, 3, 0), Status::Ok);
    thread::sleep(Duration::from_millis(1000));
    assert!(
        !t.daemon.log().contains("hung"),
        "an open was called hung within 1 s"
    );
    wait_event(&mut t.snd, event::JACK_DISCONNECTED, 3);
    let found = since.elapsed();
    println!("the open that never returns was found hung after {found:?}");
    assert!(
        found >= Duration::from_secs(2),
        "before its bound: {found:?}"
    );
    let log = t.daemon.log();
    assert!(log.contains("hung for over 2000 ms"), "{log}");
    // Control and the null stream are unaffected.
    assert_eq!(prepare(&mut t.snd, 2, 0), Status::Ok);
    let done = run(&mut t.snd, Queue::Tx, &[2], 30, |_, _| {});
    check_steady(&done[&2][..28], "stream 2 (null)");
    t.daemon.check_alive().unwrap();
}

/// The hang watch costs an idle daemon nothing: with a connection, a
/// device that may block and no stream running, the shared reactor does
/// not wake (the 100 Hz and 10 Hz watchdog thread it replaces did).
#[test]
fn an_idle_connection_wakes_no_thread_to_watch_for_hangs() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vsound-test"));
    let mut t = setup(
        "silence",
        Some(bin),
        "[devices.stuck]\nkind = \"test-hang\"\nhang_after_ms = 600000\n",
        "[[streams]]\ndirection = \"output\"\ndevice = \"stuck\"\n",
    );
    // A stream played and stopped first: the watch ran, and must stop.
    assert_eq!(prepare(&mut t.snd, 3, 0), Status::Ok);
    let done = run(&mut t.snd, Queue::Tx, &[3], 10, |_, _| {});
    assert!(done[&3].iter().all(|c| c.status == Status::Ok));
    thread::sleep(Duration::from_millis(200));
    let pid = t.daemon.pid().unwrap();
    let switches = || reactor_switches(pid);
    let before = switches();
    thread::sleep(Duration::from_secs(1));
    let woke = switches() - before;
    println!("the reactor woke {woke} times in 1 s of idling");
    assert!(
        woke <= 2,
        "the reactor woke {woke} times in 1 s with nothing to do"
    );
    t.daemon.check_alive().unwrap();
}

/// The wake-ups (voluntary context switches: each is a sleep that ended)
/// of a daemon's hang-watching thread so far, its shared reactor.
/// Preemptions are not counted: a loaded machine would add them.
fn reactor_switches(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() != "vsound-reactor" {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(n) = line.strip_prefix("voluntary_ctxt_switches:") {
                total += n.trim().parse::<u64>().unwrap();
            }
        }
    }
    total
}

/// While a stream on a device that may block plays, the reactor looks at
/// its calls 40 times a second (every 25 ms), not at every period: the
/// watch costs an ALSA stream's daemon 40 wake-ups a second (a 10 ms watch
/// and the watchdog before it, 100).
#[test]
fn a_stream_on_a_device_that_may_block_costs_the_reactor_40_looks_a_second() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vsound-test"));
    let mut t = setup(
        "silence",
        Some(bin),
        "[devices.slow]\nkind = \"test-hang\"\nhang_after_ms = 600000\n",
        "[[streams]]\ndirection = \"output\"\ndevice = \"slow\"\n",
    );
    assert_eq!(prepare(&mut t.snd, 3, 0), Status::Ok);
    let pid = t.daemon.pid().unwrap();
    let mut before = (0, Instant::now());
    let done = run(&mut t.snd, Queue::Tx, &[3], 160, |_, k| {
        // From the 20th period to the 120th: a second of steady playback.
        if k == 20 {
            before = (reactor_switches(pid), Instant::now());
        }
        if k == 120 {
            let woke = reactor_switches(pid) - before.0;
            let secs = before.1.elapsed().as_secs_f64();
            println!("the reactor woke {woke} times in {secs:.2} s of playback");
            assert!(
                (woke as f64) < 55.0 * secs,
                "the reactor woke {woke} times in {secs:.2} s"
            );
        }
    });
    assert!(done[&3][..150].iter().all(|c| c.status == Status::Ok));
    t.daemon.check_alive().unwrap();
}

/// The end of a connection waits for its stream workers only so long: a
/// worker inside a device call that never returns (and not yet replaced by
/// the shared reactor's hang watch, which needs 50 ms) is left behind, and the next VMM
/// is served.
#[test]
fn a_worker_stuck_in_a_device_call_never_keeps_the_next_vmm_out() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vsound-test"));
    let mut t = setup(
        "silence",
        Some(bin),
        "[devices.stuck]\nkind = \"test-hang\"\nhang_after_ms = 0\n",
        "[[streams]]\ndirection = \"output\"\ndevice = \"stuck\"\n",
    );
    assert_eq!(prepare(&mut t.snd, 3, 0), Status::Ok);
    t.snd.tx(3, &[0u8; PERIOD], &[]).unwrap();
    t.snd.tx(3, &[0u8; PERIOD], &[]).unwrap();
    // The first period's write hangs at once: end the connection while it
    // does, before the hang watch replaces the lane's thread.
    assert_eq!(cmd(&mut t.snd, code::PCM_START, 3), Status::Ok);
    thread::sleep(Duration::from_millis(5));
    let ended = Instant::now();
    t.snd.disconnect().unwrap();
    let mut next = t
        .daemon
        .connect(&ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            ..ConnectOptions::default()
        })
        .unwrap();
    let served = ended.elapsed();
    assert_eq!(prepare(&mut next, 2, 0), Status::Ok);
    let log = t.daemon.log();
    let left_behind = log.contains("did not exit within");
    println!("next VMM served {served:?} after the disconnect; worker left behind by the bounded join: {left_behind}");
    assert!(
        served < Duration::from_secs(3),
        "the next VMM waited {served:?} for a worker stuck in a device call"
    );
    t.daemon.check_alive().unwrap();
}
