//! The ALSA device end to end, with the real alsa-lib and no sound card: the
//! daemon gets an `asound.conf` (through `ALSA_CONFIG_PATH`) whose PCMs are
//! `file` plugins over `null`, so playback lands in a file and capture comes
//! from one.
//!
//! Devices and streams (one jack per device and direction):
//! - `out` = PCM `vsout`, writing `<dir>/out.raw`: stream 0, output, jack 0;
//! - `in` = PCM `vsin`, reading `<dir>/in.raw`: stream 1, input, jack 1;
//! - `gone` = PCM `vs_missing`, defined nowhere: stream 2, output, jack 2.
//!
//! Needs the `vsound` binary: `cargo build --bin vsound` first, or set
//! `VSOUND_BIN`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use vmm_tests::audio::{
    check_pacing, check_statuses, difference, jack_connected, noise, start_timed, wait_drained,
    Geometry, Tolerance,
};
use vmm_tests::snd::{Direction, PcmFormat, PcmRate};
use vmm_tests::{ConnectOptions, Daemon, DaemonOptions, Queue, SndDriver, Status};

/// Generous bound on anything that should happen promptly (a loaded 2-core CI).
const TIMEOUT: Duration = Duration::from_secs(20);
/// How late completions may be seen (see `Tolerance`); early is never allowed.
const PACING: Tolerance = Tolerance::DEFAULT;

const OUT: u32 = 0;
const IN: u32 = 1;
const GONE: u32 = 2;
const OUT_JACK: u32 = 0;
const GONE_JACK: u32 = 2;

const CONFIG: &str = r#"
[devices.out]
kind = "alsa"
pcm = "vsout"

[devices.in]
kind = "alsa"
pcm = "vsin"

[devices.gone]
kind = "alsa"
pcm = "vs_missing"

[[streams]]
direction = "output"
device = "out"
formats = ["S16", "S32"]
rates = [44100, 48000]
channels = { min = 1, max = 2 }

[[streams]]
direction = "input"
device = "in"
formats = ["S16", "S32"]
rates = [44100, 48000]
channels = { min = 1, max = 2 }

[[streams]]
direction = "output"
device = "gone"
formats = ["S16", "S32"]
rates = [44100, 48000]
channels = { min = 1, max = 2 }
"#;

/// A daemon on the file-backed ALSA PCMs.
struct Alsa {
    daemon: Daemon,
    out_raw: PathBuf,
    _dir: tempfile::TempDir,
}

impl Alsa {
    /// Writes `capture` to `in.raw` (before the daemon can open it), the ALSA
    /// configuration, and starts the daemon.
    fn spawn(capture: &[u8]) -> Alsa {
        let dir = vmm_tests::unprivileged::tempdir("vsound-alsa-").unwrap();
        let out_raw = dir.path().join("out.raw");
        let in_raw = dir.path().join("in.raw");
        fs::write(&in_raw, capture).unwrap();
        let asound = dir.path().join("asound.conf");
        let conf = format!(
            r#"pcm.vsout {{
    type file
    slave.pcm "null"
    file "{out}"
    format "raw"
}}
pcm.vsin {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{inp}"
    format "raw"
}}
"#,
            out = out_raw.display(),
            inp = in_raw.display()
        );
        fs::write(&asound, conf).unwrap();
        let daemon = Daemon::spawn_with(&DaemonOptions {
            config_toml: Some(CONFIG.to_owned()),
            env: vec![(
                "ALSA_CONFIG_PATH".to_owned(),
                format!("/usr/share/alsa/alsa.conf:{}", asound.display()),
            )],
            ..DaemonOptions::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        Alsa {
            daemon,
            out_raw,
            _dir: dir,
        }
    }

    fn driver(&self) -> SndDriver {
        self.daemon
            .connect(&ConnectOptions::default())
            .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
    }

    fn alive(&mut self) {
        self.daemon
            .check_alive()
            .unwrap_or_else(|e| panic!("the daemon died: {e}"));
    }
}

/// The silence the ALSA sink puts ahead of the guest's frames when its PCM
/// starts: a period of the PCM's (here the guest's) or a sound server's
/// quantum (1,024 frames at 48 kHz, `vsound_devices::alsa::SERVER_QUANTUM`),
/// whichever is longer, and 30 ms (`vsound_devices::alsa::CUSHION_MS`).
fn cushion_bytes(g: &Geometry) -> usize {
    let bps = g.bytes_per_second() as usize;
    let frame = g.frame_bytes();
    let quantum = (bps / frame * 1024).div_ceil(48_000) * frame;
    g.period_bytes().max(quantum) + bps * 30 / 1000
}

/// `out.raw` once the PCM was closed: a playback PCM is drained after
/// RELEASE, and closed when its frames have played (the `file` plugin
/// writes what it holds then); waits up to 2 s for `len` bytes.
fn closed_file(path: &std::path::Path, len: usize) -> Vec<u8> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let file = fs::read(path).unwrap_or_default();
        if file.len() >= len || std::time::Instant::now() > deadline {
            return file;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn prepare(snd: &mut SndDriver, stream: u32, g: &Geometry) {
    assert_eq!(g.set_params(snd, stream).unwrap(), Status::Ok, "SET_PARAMS");
    assert_eq!(snd.prepare(stream).unwrap(), Status::Ok, "PREPARE");
}

fn stop_and_release(snd: &mut SndDriver, stream: u32) {
    assert_eq!(snd.stop(stream).unwrap(), Status::Ok, "STOP");
    assert_eq!(snd.release(stream).unwrap(), Status::Ok, "RELEASE");
}

/// Playback reaches the ALSA PCM bit-exact: after RELEASE (which closes the
/// PCM), `out.raw` holds exactly the sink's cushion of silence (see `cushion_bytes`,
/// written when the PCM starts) followed by exactly the guest's bytes; every
/// buffer completes OK on schedule.
#[test]
fn playback_lands_in_the_pcm_bit_exact_after_the_cushion_of_silence() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut alsa = Alsa::spawn(&[]);
    let mut snd = alsa.driver();
    prepare(&mut snd, OUT, &g);

    let periods: Vec<Vec<u8>> = (0..10).map(|i| noise(g.period_bytes(), 100 + i)).collect();
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
    stop_and_release(&mut snd, OUT);
    alsa.alive();

    let file = closed_file(&alsa.out_raw, cushion_bytes(&g) + periods.concat().len());
    let mut want = vec![0u8; cushion_bytes(&g)];
    want.extend(periods.concat());
    if let Some(d) = difference(&file, &want) {
        panic!("out.raw is not the cushion's silence then the guest's bytes: {d}");
    }
    eprintln!(
        "out.raw: {} bytes as expected; {}",
        file.len(),
        pacing.summary()
    );
}

/// Capture reads the ALSA PCM bit-exact: the rx buffers hold `in.raw` from its
/// first byte, with nothing before it, on schedule.
#[test]
fn capture_reads_the_pcm_bit_exact() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let n = 10;
    let pattern = noise(n * g.period_bytes(), 200);
    let mut alsa = Alsa::spawn(&pattern);
    let mut snd = alsa.driver();
    prepare(&mut snd, IN, &g);

    for _ in 0..n {
        snd.rx(IN, g.period_bytes(), &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Rx, TIMEOUT).unwrap();
    let (status, window) = start_timed(&mut snd, IN).unwrap();
    assert_eq!(status, Status::Ok, "START");
    let done = snd.wait_io_count(Queue::Rx, n, TIMEOUT).unwrap();
    assert_eq!(done.len(), n, "rx completions");
    check_statuses(&done, &[Status::Ok]).unwrap();
    let pacing = check_pacing(&done, &g, window, PACING).unwrap();
    stop_and_release(&mut snd, IN);
    alsa.alive();

    let got: Vec<u8> = done.iter().flat_map(|c| c.data.iter().copied()).collect();
    if let Some(d) = difference(&got, &pattern) {
        panic!("capture is not in.raw bit-exact: {d}");
    }
    eprintln!(
        "in.raw: {} bytes captured bit-exact; {}",
        got.len(),
        pacing.summary()
    );
}

/// A PCM that does not exist leaves the daemon running and its stream usable:
/// the stream is advertised, SET_PARAMS, PREPARE and START succeed
/// (`on_remove = "silence"`), buffers complete on the daemon's real-time clock
/// (IO_ERR or OK: nothing reached a device), RELEASE succeeds, and its jack
/// says disconnected while a present PCM's jack says connected.
#[test]
fn a_missing_pcm_leaves_a_usable_stream_that_runs_silent_on_the_daemons_clock() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut alsa = Alsa::spawn(&[]);
    let mut snd = alsa.driver();
    alsa.alive();

    let infos = snd.pcm_info(0, snd.config().streams).unwrap();
    assert_eq!(infos.len(), 3, "{infos:?}");
    let info = &infos[GONE as usize];
    assert_eq!(info.direction(), Some(Direction::Output), "{info:?}");
    assert_ne!(info.formats & PcmFormat::S16.bit(), 0, "{info:?}");
    assert_ne!(info.rates & PcmRate::R48000.bit(), 0, "{info:?}");

    assert_eq!(snd.config().jacks, 3);
    assert!(
        jack_connected(&mut snd, OUT_JACK).unwrap(),
        "out is present"
    );
    assert!(
        !jack_connected(&mut snd, GONE_JACK).unwrap(),
        "gone is absent"
    );

    prepare(&mut snd, GONE, &g);
    let periods: Vec<Vec<u8>> = (0..10).map(|i| noise(g.period_bytes(), 300 + i)).collect();
    for p in &periods {
        snd.tx(GONE, p, &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Tx, TIMEOUT).unwrap();
    let (status, window) = start_timed(&mut snd, GONE).unwrap();
    assert_eq!(status, Status::Ok, "START");
    let done = snd
        .wait_io_count(Queue::Tx, periods.len(), TIMEOUT)
        .unwrap();
    assert_eq!(done.len(), periods.len(), "tx completions");
    check_statuses(&done, &[Status::Ok, Status::IoErr]).unwrap();
    let pacing = check_pacing(&done, &g, window, PACING).unwrap();
    stop_and_release(&mut snd, GONE);

    assert!(
        jack_connected(&mut snd, OUT_JACK).unwrap(),
        "out is present"
    );
    assert!(
        !jack_connected(&mut snd, GONE_JACK).unwrap(),
        "gone is absent"
    );
    alsa.alive();
    let statuses: Vec<_> = done.iter().map(|c| c.status).collect();
    eprintln!("missing PCM: statuses {statuses:?}; {}", pacing.summary());
}

/// Several starts on the missing PCM's stream in a row: still no crash, and
/// the present PCM keeps working next to it.
#[test]
fn a_missing_pcm_does_not_disturb_a_present_one() {
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    let mut alsa = Alsa::spawn(&[]);
    let mut snd = alsa.driver();
    prepare(&mut snd, GONE, &g);
    prepare(&mut snd, OUT, &g);
    let periods: Vec<Vec<u8>> = (0..5).map(|i| noise(g.period_bytes(), 400 + i)).collect();
    for p in &periods {
        snd.tx(GONE, p, &[]).unwrap();
        snd.tx(OUT, p, &[]).unwrap();
    }
    wait_drained(&mut snd, Queue::Tx, TIMEOUT).unwrap();
    assert_eq!(snd.start(GONE).unwrap(), Status::Ok, "START gone");
    assert_eq!(snd.start(OUT).unwrap(), Status::Ok, "START out");
    let done = snd.wait_io_count(Queue::Tx, 10, TIMEOUT).unwrap();
    assert_eq!(done.len(), 10);
    let (gone, out): (Vec<_>, Vec<_>) = done.into_iter().partition(|c| c.stream_id == GONE);
    check_statuses(&gone, &[Status::Ok, Status::IoErr]).unwrap();
    check_statuses(&out, &[Status::Ok]).unwrap();
    stop_and_release(&mut snd, GONE);
    stop_and_release(&mut snd, OUT);
    alsa.alive();
    let file = closed_file(&alsa.out_raw, cushion_bytes(&g) + periods.concat().len());
    let mut want = vec![0u8; cushion_bytes(&g)];
    want.extend(periods.concat());
    if let Some(d) = difference(&file, &want) {
        panic!("out.raw is not the cushion's silence then the guest's bytes: {d}");
    }
}
