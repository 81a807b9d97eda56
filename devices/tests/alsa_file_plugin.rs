//! The `alsa` device against the real alsa-lib, without a sound card.
//!
//! An `asound.conf` in a scratch folder defines PCMs of alsa-lib's `file`
//! plugin over its `null` PCM: playback lands in a file, capture reads one.
//! alsa-lib finds it through `ALSA_CONFIG_PATH`, which is process-global and
//! read by alsa-lib on its first use; so every PCM of every test is defined
//! in the one file, written (and the variable set) before any test touches
//! ALSA, and the tests, each on its own PCMs and files, may run in parallel.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use vsound_devices::alsa::{AlsaDevice, AlsaOptions};
use vsound_devices::{
    registry, Clock, DeviceError, DeviceListener, Format, HostDevice, StreamDirection, StreamParams,
};

/// The scratch folder, with `asound.conf` in it and alsa-lib pointed at it.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("alsa_file_plugin");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = format!(
            r#"
pcm.vs_s16 {{ type file; slave.pcm "null"; file "{d}/s16.raw"; format "raw" }}
pcm.vs_s32 {{ type file; slave.pcm "null"; file "{d}/s32.raw"; format "raw" }}
pcm.vs_u8 {{ type file; slave.pcm "null"; file "{d}/u8.raw"; format "raw" }}
pcm.vs_in {{ type file; slave.pcm "null"; file "/dev/null"; infile "{d}/in.raw"; format "raw" }}
pcm.vs_linear {{ type linear; slave {{ pcm "null"; format S16_LE }} }}
pcm.vs_probe {{ type file; slave.pcm "null"; file "{d}/probe.raw"; format "raw" }}
pcm.vs_hot {{
    type asym
    capture.pcm {{ type file; slave.pcm "null"; file "/dev/null"; infile "{d}/hot/in.raw"; format "raw" }}
}}
"#
        );
        let conf_path = dir.join("asound.conf");
        fs::write(&conf_path, conf).unwrap();
        std::env::set_var(
            "ALSA_CONFIG_PATH",
            format!("/usr/share/alsa/alsa.conf:{}", conf_path.display()),
        );
        dir
    })
}

fn device(pcm: &str) -> AlsaDevice {
    dir();
    AlsaDevice::new(
        pcm,
        AlsaOptions {
            pcm: pcm.to_owned(),
            retry_ms: 10,
        },
    )
    .unwrap()
}

fn params(format: Format, rate: u32, channels: u8, period_frames: u32) -> StreamParams {
    let frame = format.sample_bytes() * u32::from(channels);
    StreamParams {
        format,
        rate,
        channels,
        period_bytes: period_frames * frame,
        buffer_bytes: 4 * period_frames * frame,
    }
}

/// Bytes that differ from frame to frame and from byte to byte.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Plays `periods` periods, in writes of uneven sizes, and checks that the
/// file has exactly those bytes once the sink is closed (the file plugin
/// flushes what it buffered when the PCM is dropped), after the cushion of
/// silence the sink puts ahead of them when the PCM starts.
fn play_into_file(pcm: &str, file: &str, p: StreamParams, periods: usize) {
    let dev = device(pcm);
    assert!(dev.is_attached());
    dev.check_params(StreamDirection::Playback, &p).unwrap();
    let data = pattern(p.period_bytes as usize * periods, p.rate);
    let frame = p.frame_bytes() as usize;
    {
        let mut sink = dev.open_playback(&p).unwrap();
        assert_eq!(sink.clock(), Clock::Device);
        let mut rest = &data[..];
        let mut chunk_frames = 1;
        while !rest.is_empty() {
            let n = (chunk_frames * frame).min(rest.len());
            // As the daemon does: no more in flight than the sink has room
            // for (its I/O thread moves it into the PCM).
            wait_for("room", || {
                sink.position().is_some_and(|at| {
                    at.taken - at.played < 4 * u64::from(p.period_bytes) / frame as u64
                })
            });
            sink.write(&rest[..n]).unwrap();
            rest = &rest[n..];
            chunk_frames = chunk_frames * 3 % 1000 + 1;
        }
        // A trailing partial frame is not written.
        sink.write(&data[..frame - 1]).unwrap();
        let _ = sink.latency_bytes();
    }
    // The cushion: a period of the PCM's (here the stream's) or a sound
    // server's quantum (1,024 frames at 48 kHz), whichever is longer, and
    // CUSHION_MS. A PCM still holding frames is drained, and closed (the
    // file written) by the device's monitor thread: wait for it.
    let quantum = (p.rate as usize * 1024).div_ceil(48_000) * frame;
    let cushion = (p.period_bytes as usize).max(quantum)
        + (p.rate as usize * vsound_devices::alsa::CUSHION_MS as usize / 1000) * frame;
    let path = dir().join(file);
    let mut out = Vec::new();
    wait_for("the file to be written", || {
        out = fs::read(&path).unwrap_or_default();
        out.len() >= cushion + data.len()
    });
    assert_eq!(out.len(), cushion + data.len());
    let mut silence = vec![0xaa; cushion];
    p.format.fill_silence(&mut silence);
    assert!(
        out[..cushion] == silence,
        "{pcm}: no cushion of silence first"
    );
    assert!(
        out[cushion..] == data,
        "{pcm}: the file differs from what was played"
    );
}

#[test]
fn playback_s16_stereo_48k_is_bit_exact() {
    play_into_file("vs_s16", "s16.raw", params(Format::S16, 48000, 2, 480), 50);
}

#[test]
fn playback_s32_mono_44k1_is_bit_exact() {
    play_into_file("vs_s32", "s32.raw", params(Format::S32, 44100, 1, 441), 30);
}

#[test]
fn playback_u8_mono_44k1_is_bit_exact() {
    play_into_file("vs_u8", "u8.raw", params(Format::U8, 44100, 1, 441), 30);
}

#[test]
fn capture_reads_the_input_file_bit_exact() {
    let p = params(Format::U16, 48000, 2, 480);
    let period = p.period_bytes as usize;
    // Three and a half periods of input: the last read is a short one.
    let input = pattern(period * 7 / 2, 7);
    fs::write(dir().join("in.raw"), &input).unwrap();
    let dev = device("vs_in");
    assert!(dev.is_attached());
    dev.check_params(StreamDirection::Capture, &p).unwrap();
    let mut src = dev.open_capture(&p).unwrap();
    assert_eq!(src.clock(), Clock::Device);

    // Two frames and a partial one: the partial frame is silence (U16:
    // 0x8000, little-endian). The first frames come once the stream's I/O
    // thread has opened the PCM and read the cushion.
    let mut odd = [0xaau8; 11];
    wait_for("the first frames", || {
        src.read_part(&mut odd, 0).unwrap() > 0
    });
    assert_eq!(odd[..8], input[..8]);
    assert_eq!(odd[8..], [0, 0x80, 0]);

    let mut got = odd[..8].to_vec();
    let mut buf = vec![0u8; period];
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < input.len() {
        assert!(
            Instant::now() < deadline,
            "capture produced {} bytes",
            got.len()
        );
        src.read(&mut buf).unwrap();
        got.extend_from_slice(&buf);
    }
    assert!(got[..input.len()] == input[..], "captured bytes differ");
    // Past the end of its input file, alsa-lib 1.2.8's file plugin still
    // reports whole reads but leaves the buffer as it was, so what follows
    // the input is not checked here.
    let _ = src.latency_bytes();
}

#[test]
fn a_missing_pcm_gives_a_detached_device_not_an_error() {
    dir();
    for pcm in ["vs_missing", "hw:99,0", "plughw:42"] {
        let mut opts = toml::Table::new();
        opts.insert("pcm".into(), toml::Value::String(pcm.into()));
        let dev = registry::build("speakers", "alsa", opts).unwrap();
        assert_eq!(dev.kind(), "alsa");
        assert!(!dev.is_attached(), "{pcm}");
        let p = params(Format::S16, 48000, 2, 480);
        assert!(
            matches!(
                dev.check_params(StreamDirection::Playback, &p),
                Err(DeviceError::Gone)
            ),
            "{pcm}"
        );
        assert!(
            matches!(dev.open_playback(&p).err(), Some(DeviceError::Gone)),
            "{pcm}"
        );
        assert!(
            matches!(dev.open_capture(&p).err(), Some(DeviceError::Gone)),
            "{pcm}"
        );
    }
}

#[test]
fn parameters_the_pcm_refuses_are_unsupported() {
    // The linear plugin converts between linear integer formats only.
    let dev = device("vs_linear");
    assert!(dev.is_attached());
    dev.check_params(
        StreamDirection::Playback,
        &params(Format::S16, 48000, 2, 480),
    )
    .unwrap();
    dev.check_params(
        StreamDirection::Playback,
        &params(Format::S32, 44100, 1, 441),
    )
    .unwrap();
    for format in [Format::Float, Format::MuLaw, Format::DsdU8] {
        match dev.check_params(StreamDirection::Playback, &params(format, 48000, 2, 480)) {
            Err(DeviceError::Unsupported(msg)) => {
                assert!(msg.contains(format.name()), "{msg}")
            }
            other => panic!("{format}: {other:?}"),
        }
        assert!(matches!(
            dev.open_playback(&params(format, 48000, 2, 480)).err(),
            Some(DeviceError::Unsupported(_))
        ));
    }
    // A period that is not one frame long is refused before ALSA is asked.
    let mut p = params(Format::S16, 48000, 2, 480);
    p.period_bytes = 3;
    assert!(matches!(
        dev.check_params(StreamDirection::Playback, &p),
        Err(DeviceError::Unsupported(_))
    ));
}

/// `check_params` (SET_PARAMS, on the vhost-user queue thread) reads what
/// the PCM accepted when the device probed it, and never opens it: the
/// `file` plugin makes its file when the PCM is opened and configured, and
/// the file, removed after the probe, stays gone through checks that pass
/// and checks that fail.
#[test]
fn check_params_reads_the_probed_capabilities_without_opening_the_pcm() {
    let dev = device("vs_probe");
    assert!(dev.is_attached());
    let file = dir().join("probe.raw");
    assert!(
        file.exists(),
        "the probe at attach opened and configured the PCM"
    );
    fs::remove_file(&file).unwrap();
    for (format, rate, channels) in [
        (Format::S16, 48000, 2),
        (Format::S32, 44100, 1),
        (Format::Float, 96000, 6),
    ] {
        dev.check_params(
            StreamDirection::Playback,
            &params(format, rate, channels, rate / 100),
        )
        .unwrap_or_else(|e| panic!("{format} {rate} {channels}: {e}"));
    }
    let mut p = params(Format::S16, 48000, 2, 480);
    p.period_bytes = 3;
    assert!(matches!(
        dev.check_params(StreamDirection::Playback, &p),
        Err(DeviceError::Unsupported(_))
    ));
    assert!(!file.exists(), "check_params opened and configured the PCM");
    // The open at START still opens it.
    let mut sink = dev
        .open_playback(&params(Format::S16, 48000, 2, 480))
        .unwrap();
    sink.write(&[0; 1920]).unwrap();
    drop(sink);
    wait_for("the open on the stream's I/O thread", || file.exists());
}

#[derive(Default)]
struct Counter {
    attached: AtomicUsize,
    detached: AtomicUsize,
}

impl DeviceListener for Counter {
    fn attached(&self) {
        self.attached.fetch_add(1, Ordering::SeqCst);
    }
    fn detached(&self) {
        self.detached.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_pcm_that_comes_and_goes_is_attached_and_detached() {
    // `vs_hot` is capture-only, and its input file does not exist yet.
    let dev = device("vs_hot");
    assert!(!dev.is_attached());
    let counter = Arc::new(Counter::default());
    dev.set_listener(counter.clone());
    let p = params(Format::S16, 48000, 1, 480);
    assert!(matches!(
        dev.check_params(StreamDirection::Capture, &p),
        Err(DeviceError::Gone)
    ));

    let input = pattern(p.period_bytes as usize, 3);
    let hot = dir().join("hot");
    fs::create_dir_all(&hot).unwrap();
    fs::write(hot.join("in.raw.tmp"), &input).unwrap();
    fs::rename(hot.join("in.raw.tmp"), hot.join("in.raw")).unwrap();

    wait_for("the attach", || {
        counter.attached.load(Ordering::SeqCst) == 1
    });
    assert!(dev.is_attached());
    assert_eq!(counter.detached.load(Ordering::SeqCst), 0);
    dev.check_params(StreamDirection::Capture, &p).unwrap();
    let mut src = dev.open_capture(&p).unwrap();
    let mut buf = vec![0u8; input.len()];
    wait_for("captured frames", || {
        src.read(&mut buf).unwrap();
        buf.iter().any(|&b| b != 0)
    });
    assert!(buf == input);
    drop(src);

    // The input goes away while no stream is open: the next open (on the
    // stream's I/O thread) finds the PCM gone, which detaches the device
    // and ends the stream; when it is back, it attaches.
    fs::remove_file(hot.join("in.raw")).unwrap();
    let mut src = dev.open_capture(&p).unwrap();
    wait_for("the stream to end", || {
        matches!(src.read(&mut buf), Err(DeviceError::Gone))
    });
    drop(src);
    wait_for("the device to detach", || !dev.is_attached());
    wait_for("the detach", || {
        counter.detached.load(Ordering::SeqCst) == 1
    });
    fs::write(hot.join("in.raw"), &input).unwrap();
    wait_for("the second attach", || {
        counter.attached.load(Ordering::SeqCst) == 2
    });
    assert!(dev.is_attached());
    assert_eq!(counter.detached.load(Ordering::SeqCst), 1);
    dev.open_capture(&p).unwrap();
}
