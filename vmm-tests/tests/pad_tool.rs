//! `vsound pad record` and `vsound pad play` end to end: the real daemon with
//! one pad (`pad0`), a guest driver on its vhost-user socket, and the helper
//! commands run as subprocesses of the `vsound` binary, with the daemon's
//! own configuration file (`--config`), whose `[daemon] api_socket` they also
//! use.
//!
//! Streams use 10 ms periods and four periods per buffer. Nothing is timed
//! tightly: every wait is for a condition, with generous timeouts.
//!
//! Needs the `vsound` binary: `cargo build --bin vsound` first, or set
//! `VSOUND_BIN`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vmm_tests::audio::{difference, noise, play_streaming, wait_drained, wait_jack, Geometry};
use vmm_tests::snd::{PcmFormat, PcmRate};
use vmm_tests::{ConnectOptions, Daemon, DaemonOptions, IoCompletion, Queue, SndDriver, Status};

/// Generous bound on anything that should happen promptly (a loaded 2-core CI).
const TIMEOUT: Duration = Duration::from_secs(30);

/// One stream's offer in the test config.
struct Offer<'a> {
    formats: &'a [&'a str],
    rates: &'a [u32],
    channels: u8,
}

const S16_48K_STEREO: Offer<'static> = Offer {
    formats: &["S16"],
    rates: &[48000],
    channels: 2,
};

/// A daemon serving `pad0` (socket and API socket in a directory of ours).
struct Setup {
    daemon: Daemon,
    dir: tempfile::TempDir,
    pad: PathBuf,
    api: PathBuf,
}

impl Setup {
    /// `pad_opts` go into `[devices.pad0]`; the streams are created in this
    /// order (output first), so the output's jack is jack 0.
    fn spawn(pad_opts: &str, output: Option<&Offer<'_>>, input: Option<&Offer<'_>>) -> Setup {
        let dir = vmm_tests::unprivileged::tempdir("vsound-padtool-").unwrap();
        let pad = dir.path().join("pad.sock");
        let api = dir.path().join("api.sock");
        let stream = |direction: &str, o: &Offer<'_>| {
            let formats: Vec<String> = o.formats.iter().map(|f| format!("{f:?}")).collect();
            let rates: Vec<String> = o.rates.iter().map(u32::to_string).collect();
            format!(
                "[[streams]]\ndirection = \"{direction}\"\ndevice = \"pad0\"\nformats = [{}]\nrates = [{}]\nchannels = {{ min = {c}, max = {c} }}\n",
                formats.join(", "),
                rates.join(", "),
                c = o.channels
            )
        };
        let mut config = format!(
            "[daemon]\napi_socket = {:?}\n\n[devices.pad0]\nkind = \"pad\"\npath = {:?}\n{pad_opts}\n\n",
            api.display().to_string(),
            pad.display().to_string()
        );
        if let Some(o) = output {
            config.push_str(&stream("output", o));
        }
        if let Some(o) = input {
            config.push_str(&stream("input", o));
        }
        let daemon = Daemon::spawn_with(&DaemonOptions {
            config_toml: Some(config),
            ..DaemonOptions::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let setup = Setup {
            daemon,
            dir,
            pad,
            api,
        };
        wait_until("the management API", || setup.api.exists());
        setup
    }

    /// The daemon's configuration file, as the tools get it.
    fn config(&self) -> PathBuf {
        self.daemon.dir().join("vsound.toml")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn driver(&self) -> SndDriver {
        self.daemon
            .connect(&ConnectOptions::default())
            .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
    }

    /// Runs `vsound pad --config <the daemon's> ARGS...`.
    fn tool(&self, args: &[&str]) -> Tool {
        let bin = Daemon::binary().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(bin)
            .arg("pad")
            .arg("--config")
            .arg(self.config())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Tool {
            child: Some(child),
            what: args.join(" "),
        }
    }

    /// A counter of `pad0` in the API's status.
    fn counter(&self, key: &str) -> u64 {
        let reply = vsound::api::ctl(&self.api, &serde_json::json!({ "cmd": "status" })).unwrap();
        let devices = reply["result"]["devices"].as_array().unwrap();
        let pad = devices.iter().find(|d| d["name"] == "pad0").unwrap();
        pad["counters"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {key} in {pad}"))
    }

    fn alive(&mut self) {
        self.daemon
            .check_alive()
            .unwrap_or_else(|e| panic!("the daemon died: {e}"));
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// A helper command running; killed if the test ends before it does.
struct Tool {
    child: Option<Child>,
    what: String,
}

/// How a helper command ended.
#[derive(Debug)]
struct Done {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// When the test saw it end.
    at: Instant,
}

impl Tool {
    fn running(&mut self) -> bool {
        let child = self.child.as_mut().unwrap();
        child.try_wait().unwrap().is_none()
    }

    fn finished(&mut self) -> Option<Done> {
        if self.running() {
            return None;
        }
        let at = Instant::now();
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        Some(Done {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            at,
        })
    }

    fn wait(mut self) -> Done {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(d) = self.finished() {
                eprintln!(
                    "`vsound pad {}`: {}\n--- stdout\n{}--- stderr\n{}---",
                    self.what, d.status, d.stdout, d.stderr
                );
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "`vsound pad {}` did not finish within {TIMEOUT:?}",
                self.what
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&mut self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.as_ref().unwrap().id()).unwrap();
        // SAFETY: `pid` is our own child, not reaped yet (we hold its
        // `Child`), so it names that process.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The error line of a failed helper: exactly one line, exit code 1.
fn one_error_line(d: &Done) -> &str {
    assert_eq!(d.status.code(), Some(1), "{d:?}");
    assert_eq!(d.stderr.lines().count(), 1, "one line: {:?}", d.stderr);
    d.stderr.trim_end()
}

/// A WAV file: format code, channels, rate, bits, block align, `data`.
#[derive(Debug, PartialEq, Eq)]
struct Wav {
    tag: u16,
    channels: u16,
    rate: u32,
    bits: u16,
    block_align: u16,
    data: Vec<u8>,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Parses a WAV file strictly: RIFF size = the file, chunks end exactly at
/// the end, one `fmt ` before one `data`, byte rate consistent.
fn parse_wav(path: &Path) -> Wav {
    let b = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.len() >= 12, "{}: too short", path.display());
    assert_eq!(&b[0..4], b"RIFF");
    assert_eq!(&b[8..12], b"WAVE");
    assert_eq!(
        u32_at(&b, 4) as usize,
        b.len() - 8,
        "{}: RIFF size vs file length",
        path.display()
    );
    let mut at = 12;
    let mut fmt = None;
    let mut data = None;
    while at < b.len() {
        let id = &b[at..at + 4];
        let size = u32_at(&b, at + 4) as usize;
        let body = &b[at + 8..at + 8 + size];
        match id {
            b"fmt " => {
                assert!(fmt.is_none() && data.is_none(), "fmt first, once");
                fmt = Some(body.to_vec());
            }
            b"data" => {
                assert!(fmt.is_some() && data.is_none(), "data after fmt, once");
                data = Some(body.to_vec());
            }
            _ => {}
        }
        at += 8 + size + size % 2;
    }
    assert_eq!(at, b.len(), "{}: chunks end at the end", path.display());
    let f = fmt.expect("a fmt chunk");
    let w = Wav {
        tag: u16_at(&f, 0),
        channels: u16_at(&f, 2),
        rate: u32_at(&f, 4),
        block_align: u16_at(&f, 12),
        bits: u16_at(&f, 14),
        data: data.expect("a data chunk"),
    };
    assert_eq!(
        u32_at(&f, 8),
        w.rate * u32::from(w.block_align),
        "byte rate"
    );
    assert_eq!(w.data.len() % usize::from(w.block_align), 0, "whole frames");
    w
}

/// Writes a PCM WAV file as common tools do (a `LIST` chunk after `fmt `).
fn write_wav(path: &Path, channels: u16, rate: u32, bits: u16, data: &[u8]) {
    let align = channels * bits / 8;
    let mut fmt = Vec::new();
    fmt.extend_from_slice(&1u16.to_le_bytes());
    fmt.extend_from_slice(&channels.to_le_bytes());
    fmt.extend_from_slice(&rate.to_le_bytes());
    fmt.extend_from_slice(&(rate * u32::from(align)).to_le_bytes());
    fmt.extend_from_slice(&align.to_le_bytes());
    fmt.extend_from_slice(&bits.to_le_bytes());
    let list = b"INFOISFT\x0e\0\0\0pad_tool test\0";
    let mut body = b"WAVE".to_vec();
    for (id, chunk) in [(b"fmt ", &fmt[..]), (b"LIST", &list[..]), (b"data", data)] {
        body.extend_from_slice(id);
        body.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        body.extend_from_slice(chunk);
        if chunk.len() % 2 == 1 {
            body.push(0);
        }
    }
    let mut file = b"RIFF".to_vec();
    file.extend_from_slice(&(body.len() as u32).to_le_bytes());
    file.extend_from_slice(&body);
    fs::write(path, file).unwrap();
}

fn prepare(snd: &mut SndDriver, stream: u32, g: &Geometry) {
    assert_eq!(g.set_params(snd, stream).unwrap(), Status::Ok, "SET_PARAMS");
    assert_eq!(snd.prepare(stream).unwrap(), Status::Ok, "PREPARE");
}

fn stop_and_release(snd: &mut SndDriver, stream: u32) {
    assert_eq!(snd.stop(stream).unwrap(), Status::Ok, "STOP");
    assert_eq!(snd.release(stream).unwrap(), Status::Ok, "RELEASE");
}

/// `n` periods of noise for `g`.
fn periods(g: &Geometry, n: usize, seed: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| noise(g.period_bytes(), seed * 1000 + i as u64))
        .collect()
}

/// Plays `p` on output stream 0 (prepared) and checks every buffer
/// completed OK; with `recorder_leaves`, the last one may be IO_ERR: a
/// `--seconds` recording ends as soon as it has the last frame, and the
/// daemon fails the buffer in flight when its device detaches.
fn play(snd: &mut SndDriver, p: &[Vec<u8>], recorder_leaves: bool) {
    let (done, _) = play_streaming(snd, 0, p, 4, TIMEOUT, |_| {}).unwrap();
    assert_eq!(done.len(), p.len());
    let statuses: Vec<Status> = done.iter().map(|c| c.status).collect();
    let ok = statuses.iter().enumerate().all(|(k, &st)| {
        st == Status::Ok || (recorder_leaves && k + 1 == p.len() && st == Status::IoErr)
    });
    assert!(ok, "tx statuses: {statuses:?}");
}

/// Records `total` periods on input `stream` (prepared) the way Linux does:
/// `IN_FLIGHT` buffers queued before START, then one more for each that
/// completes. `each` runs between waits (every few milliseconds).
fn record(
    snd: &mut SndDriver,
    stream: u32,
    g: &Geometry,
    total: usize,
    mut each: impl FnMut(),
) -> Vec<IoCompletion> {
    const IN_FLIGHT: usize = 16;
    let mut queued = 0;
    while queued < total.min(IN_FLIGHT) {
        snd.rx(stream, g.period_bytes(), &[]).unwrap();
        queued += 1;
    }
    wait_drained(snd, Queue::Rx, TIMEOUT).unwrap();
    assert_eq!(snd.start(stream).unwrap(), Status::Ok, "START");
    let deadline = Instant::now() + TIMEOUT;
    let mut done = Vec::with_capacity(total);
    while done.len() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} rx buffers completed within {TIMEOUT:?}",
            done.len()
        );
        for c in snd.wait_io(Queue::Rx, Duration::from_millis(5)).unwrap() {
            done.push(c);
            if queued < total {
                snd.rx(stream, g.period_bytes(), &[]).unwrap();
                queued += 1;
            }
        }
        each();
    }
    done
}

/// The guest recorded `want` from the first frame of its first buffer, all
/// OK, then silence.
fn check_capture(done: &[IoCompletion], g: &Geometry, want: &[u8]) {
    let n = want.len() / g.period_bytes();
    for (k, c) in done.iter().enumerate() {
        assert_eq!(c.data.len(), g.period_bytes(), "rx {k} length");
    }
    for (k, c) in done.iter().enumerate().take(n) {
        assert_eq!(c.status, Status::Ok, "rx {k}");
    }
    let got: Vec<u8> = done[..n].iter().flat_map(|c| c.data.clone()).collect();
    if let Some(d) = difference(&got, want) {
        panic!("the guest did not record the file's PCM from its first frame: {d}");
    }
    assert!(
        done[n..].iter().all(|c| c.data.iter().all(|&b| b == 0)),
        "after the file: silence"
    );
}

fn check_recording(path: &Path, g: &Geometry, want: &[u8]) {
    let w = parse_wav(path);
    assert_eq!(
        (w.tag, w.channels, w.rate, w.bits, w.block_align),
        (
            1,
            u16::from(g.channels),
            g.rate.hz(),
            16,
            g.frame_bytes() as u16
        ),
        "{}: format",
        path.display()
    );
    if let Some(d) = difference(&w.data, want) {
        panic!("{}: not the played frames: {d}", path.display());
    }
}

/// Case 1: `pad play` into a pipe pad: the guest records the file's PCM exactly,
/// from the first frame of its first buffer; `pad play` waits for that.
///
/// The whole second fits in the pad's read-ahead and the socket buffer, so
/// `pad play` has written everything before the guest records anything:
/// it must still be running then, and end only once the guest recorded the
/// last frame (it learns that from the API: the pad detaches a hung-up
/// client once its input is recorded).
#[test]
fn play_feeds_the_capture_stream_exactly_and_ends_after_the_recording() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut s = Setup::spawn("", None, Some(&S16_48K_STEREO));
    let n = 100; // 1 s
    let pcm = noise(n * g.period_bytes(), 41);
    let wav = s.path("in.wav");
    write_wav(&wav, 2, 48000, 16, &pcm);

    let mut tool = s.tool(&["play", "pad0", wav.to_str().unwrap()]);
    wait_until("the pad to take the whole file", || {
        s.counter("capture_bytes") == pcm.len() as u64
    });
    thread::sleep(Duration::from_millis(300));
    assert!(
        tool.running(),
        "`pad play` ended before the guest recorded anything"
    );
    assert_eq!(s.counter("client_connected"), 1);

    let mut snd = s.driver();
    prepare(&mut snd, 0, &g);
    let extra = 10;
    // Completions and the helper's end, watched together.
    let mut ended = None;
    let mut done = record(&mut snd, 0, &g, n + extra, || {
        if ended.is_none() {
            ended = tool.finished();
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    while ended.is_none() {
        assert!(Instant::now() < deadline, "`pad play` did not end");
        done.extend(snd.wait_io(Queue::Rx, Duration::from_millis(5)).unwrap());
        ended = tool.finished();
    }
    let ended = ended.unwrap();
    eprintln!(
        "pad play: {}\n{}{}",
        ended.status, ended.stdout, ended.stderr
    );
    assert!(ended.status.success(), "{ended:?}");
    assert!(
        ended.stdout.contains("sent 48000 frames") && ended.stdout.contains("recorded them all"),
        "{ended:?}"
    );
    let last_data = &done[n - 1];
    assert!(
        last_data.completed_at <= ended.at + Duration::from_millis(500),
        "`pad play` ended {:?} before the guest recorded its last frame",
        last_data.completed_at - ended.at
    );
    check_capture(&done[..n + extra], &g, &pcm);
    assert_eq!(s.counter("capture_dropped_bytes"), 0);
    assert_eq!(s.counter("client_connected"), 0);
    stop_and_release(&mut snd, 0);
    s.alive();
}

/// Case 2: A WAV file of the wrong rate is refused before connecting, with a
/// message naming the file's format and what the stream takes.
#[test]
fn play_refuses_a_file_the_capture_stream_cannot_take() {
    let mut s = Setup::spawn("", None, Some(&S16_48K_STEREO));
    let wav = s.path("in.wav");
    write_wav(&wav, 2, 44100, 16, &noise(4 * 4410, 5));
    let d = s.tool(&["play", "pad0", wav.to_str().unwrap()]).wait();
    let line = one_error_line(&d);
    let want = format!(
        "{} is S16 44100 Hz 2 ch; the capture stream on pad pad0 takes S16 at 48000 Hz, 2 ch",
        wav.display()
    );
    assert!(line.ends_with(&want), "{line:?}");
    assert_eq!(
        (s.counter("clients"), s.counter("refused")),
        (0, 0),
        "it connected"
    );
    assert!(!s.daemon.log().contains("client attached"));
    s.alive();
}

/// Starts `pad record` and waits until the pad (jack 0) is attached, so that
/// the guest's first frame reaches it.
fn start_recording(s: &Setup, snd: &mut SndDriver, args: &[&str]) -> Tool {
    let tool = s.tool(args);
    wait_jack(snd, 0, true, TIMEOUT).unwrap();
    tool
}

/// Case 3: `pad record` on a raw pad: a valid WAV file with the stream's format
/// and exactly the frames played.
#[test]
fn record_writes_a_raw_pads_playback_to_a_valid_wav_exactly() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut s = Setup::spawn("", Some(&S16_48K_STEREO), None);
    let out = s.path("out.wav");
    let mut snd = s.driver();
    let tool = start_recording(
        &s,
        &mut snd,
        &["record", "pad0", out.to_str().unwrap(), "--seconds", "0.5"],
    );
    prepare(&mut snd, 0, &g);
    let p = periods(&g, 50, 3); // 0.5 s
    play(&mut snd, &p, true);
    let d = tool.wait();
    assert!(d.status.success(), "{d:?}");
    assert!(d.stdout.contains("--seconds reached"), "{d:?}");
    check_recording(&out, &g, &p.concat());
    stop_and_release(&mut snd, 0);
    s.alive();
}

/// Case 4: `pad record` on a `header = "wav"` pad follows a format change: the
/// guest plays 48 kHz, releases, plays 44.1 kHz; two files, each valid and
/// exact.
#[test]
fn record_starts_a_new_file_for_each_new_format_of_a_header_pad() {
    let a = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let b = Geometry::new(PcmFormat::S16, PcmRate::R44100, 2);
    let offer = Offer {
        formats: &["S16"],
        rates: &[44100, 48000],
        channels: 2,
    };
    let mut s = Setup::spawn("header = \"wav\"", Some(&offer), None);
    let out = s.path("out.wav");
    let mut snd = s.driver();
    // 0.3 s of each: the recording stops after the second one.
    let tool = start_recording(
        &s,
        &mut snd,
        &["record", "pad0", out.to_str().unwrap(), "--seconds", "0.6"],
    );
    let first = periods(&a, 30, 4);
    let second = periods(&b, 30, 5);
    prepare(&mut snd, 0, &a);
    play(&mut snd, &first, false);
    // Releasing drops what the pad has not sent yet: wait until it has.
    let sent = 44 + first.concat().len() as u64;
    wait_until("the first stream to reach the client", || {
        s.counter("playback_bytes") == sent
    });
    stop_and_release(&mut snd, 0);
    prepare(&mut snd, 0, &b);
    play(&mut snd, &second, true);
    let d = tool.wait();
    assert!(d.status.success(), "{d:?}");
    let out2 = s.path("out-2.wav");
    assert!(
        d.stdout
            .contains(&format!("{}: S16 44100 Hz 2 ch", out2.display())),
        "the new file and its format are named: {d:?}"
    );
    check_recording(&out, &a, &first.concat());
    check_recording(&out2, &b, &second.concat());
    assert!(!s.path("out-3.wav").exists());
    stop_and_release(&mut snd, 0);
    s.alive();
}

/// Case 5: A raw pad whose output stream offers several formats (allowed by
/// `allow_format_changes`) cannot be recorded: refused before connecting.
#[test]
fn record_refuses_a_raw_pad_with_several_formats() {
    let offer = Offer {
        formats: &["S16", "S32"],
        rates: &[48000],
        channels: 2,
    };
    let mut s = Setup::spawn("allow_format_changes = true", Some(&offer), None);
    let out = s.path("out.wav");
    let d = s.tool(&["record", "pad0", out.to_str().unwrap()]).wait();
    assert_eq!(
        one_error_line(&d),
        "vsound pad: pad pad0 is raw and its output stream offers several formats; set header = \"wav\" on the pad to record it"
    );
    assert!(!out.exists());
    assert_eq!(s.counter("clients"), 0, "it connected");
    s.alive();
}

/// Both commands recognise the pad's busy line.
#[test]
fn both_commands_report_a_busy_pad() {
    let mut s = Setup::spawn("", Some(&S16_48K_STEREO), Some(&S16_48K_STEREO));
    let _first = UnixStream::connect(&s.pad).unwrap();
    wait_until("the first client", || s.counter("client_connected") == 1);
    let wav = s.path("in.wav");
    write_wav(&wav, 2, 48000, 16, &noise(4 * 480, 6));
    let out = s.path("out.wav");
    for args in [
        ["record", "pad0", out.to_str().unwrap()],
        ["play", "pad0", wav.to_str().unwrap()],
    ] {
        let d = s.tool(&args).wait();
        assert_eq!(
            one_error_line(&d),
            "vsound pad: pad pad0 is busy (another client is connected)"
        );
    }
    assert!(!out.exists(), "no file for a refused recording");
    assert_eq!(s.counter("refused"), 2);
    s.alive();
}

/// A recording is a valid file while it runs (sizes rewritten as frames
/// come) and a SIGTERM ends it cleanly with everything received.
#[test]
fn record_keeps_the_file_valid_and_ends_cleanly_on_sigterm() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut s = Setup::spawn("", Some(&S16_48K_STEREO), None);
    let out = s.path("out.wav");
    let mut snd = s.driver();
    let mut tool = start_recording(&s, &mut snd, &["record", "pad0", out.to_str().unwrap()]);
    prepare(&mut snd, 0, &g);
    let p = periods(&g, 30, 7);
    let want = p.concat();
    play(&mut snd, &p, false);
    // While it runs: the header catches up with the frames.
    wait_until("the file's header to count every frame", || {
        fs::read(&out).is_ok_and(|b| {
            b.len() >= 44 && u32_at(&b, 40) as usize == want.len() && b.len() == 44 + want.len()
        })
    });
    check_recording(&out, &g, &want);
    assert!(tool.running());
    tool.signal(libc::SIGTERM);
    let d = tool.wait();
    assert!(d.status.success(), "{d:?}");
    assert!(d.stdout.contains("stopped by a signal"), "{d:?}");
    check_recording(&out, &g, &want);
    stop_and_release(&mut snd, 0);
    s.alive();
}

/// The pad closing the connection (the daemon going away) ends a recording
/// with a valid file of what came.
#[test]
fn record_ends_when_the_pad_closes_the_connection() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut s = Setup::spawn("", Some(&S16_48K_STEREO), None);
    let out = s.path("out.wav");
    let mut snd = s.driver();
    let tool = start_recording(&s, &mut snd, &["record", "pad0", out.to_str().unwrap()]);
    prepare(&mut snd, 0, &g);
    let p = periods(&g, 10, 8);
    play(&mut snd, &p, false);
    wait_until("the frames to reach the client", || {
        s.counter("playback_bytes") == p.concat().len() as u64
    });
    drop(snd);
    s.daemon.kill().unwrap();
    let d = tool.wait();
    assert!(d.status.success(), "{d:?}");
    assert!(d.stdout.contains("the pad closed the connection"), "{d:?}");
    check_recording(&out, &g, &p.concat());
}

/// What the guest plays while `pad play` feeds the pad is read and thrown
/// away by `pad play`, and must not make the pad drop capture input when it
/// hangs up (a close with unread bytes resets the connection). With
/// `fill = "silence"` and an output stream open, the pad sends all the time;
/// the file (3 s) is larger than what the pad and the socket buffer, so
/// `pad play` writes while the guest records.
#[test]
fn play_on_a_pad_that_also_plays_to_it_loses_nothing() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut s = Setup::spawn(
        "fill = \"silence\"",
        Some(&S16_48K_STEREO),
        Some(&S16_48K_STEREO),
    );
    let n = 300;
    let pcm = noise(n * g.period_bytes(), 42);
    let wav = s.path("in.wav");
    write_wav(&wav, 2, 48000, 16, &pcm);
    let mut snd = s.driver();
    let tool = s.tool(&["play", "pad0", wav.to_str().unwrap()]);
    wait_until("`pad play` to connect", || {
        s.counter("client_connected") == 1
    });
    // One period played, then nothing: the pad fills with silence from
    // then on. (The played period also wakes the pad thread: opening a
    // playback stream alone does not, and with its capture inbox full it
    // would not start the silence.)
    prepare(&mut snd, 0, &g);
    snd.tx(0, &noise(g.period_bytes(), 9), &[]).unwrap();
    wait_drained(&mut snd, Queue::Tx, TIMEOUT).unwrap();
    assert_eq!(snd.start(0).unwrap(), Status::Ok, "START output");
    wait_until("silence to flow to `pad play`", || {
        s.counter("playback_fill_bytes") > 0
    });
    prepare(&mut snd, 1, &g);
    let done = record(&mut snd, 1, &g, n + 10, || {});
    let d = tool.wait();
    assert!(d.status.success(), "{d:?}");
    assert!(d.stdout.contains("recorded them all"), "{d:?}");
    check_capture(&done, &g, &pcm);
    assert!(s.counter("playback_fill_bytes") > 0);
    assert_eq!(s.counter("capture_dropped_bytes"), 0);
    stop_and_release(&mut snd, 1);
    stop_and_release(&mut snd, 0);
    s.alive();
}
