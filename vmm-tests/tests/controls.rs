//! Volume and mute controls (`VIRTIO_SND_F_CTLS`, spec 5.14.6.10) through
//! the daemon's real socket: the config space, every CTL request as the
//! Linux driver sends it, the malformed ones, the gain on the frames, the
//! host's `vsound ctl volume`/`mute` with the guest told, and the levels
//! across a reconnect and a daemon restart (`state_file`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vmm_tests::frontend::Queue;
use vmm_tests::snd::{PcmFormat, PcmRate, SetParams, SndDriver, Status};
use vmm_tests::{ConnectOptions, Daemon, DaemonOptions};

const CTL_INFO: u32 = 0x0300;
const CTL_ENUM_ITEMS: u32 = 0x0301;
const CTL_READ: u32 = 0x0302;
const CTL_WRITE: u32 = 0x0303;
const CTL_TLV_READ: u32 = 0x0304;
const CTL_TLV_WRITE: u32 = 0x0305;
const CTL_TLV_COMMAND: u32 = 0x0306;
const EVT_CTL_NOTIFY: u32 = 0x1200;
const INFO_SIZE: usize = 96;
const VALUE_SIZE: usize = 512;
const PERIOD: usize = 1920;

fn config(dir: &Path, state_file: bool) -> String {
    let state = if state_file {
        format!("state_file = \"{}\"\n", dir.join("levels.json").display())
    } else {
        String::new()
    };
    format!(
        r#"[daemon]
api_socket = "auto"
{state}
[devices.pad0]
kind = "pad"
path = "{pad}"

[devices.null0]
kind = "null"

[[streams]]
direction = "output"
device = "pad0"
formats = ["S16"]
rates = [48000]
channels = {{ min = 2, max = 2 }}
volume = true

[[streams]]
direction = "input"
device = "null0"
volume = true
volume_db = -12.5
muted = true

[[streams]]
direction = "output"
device = "null0"
volume = true
control_name = "Headphone"

[[streams]]
direction = "output"
device = "null0"
"#,
        pad = dir.join("pad0.sock").display()
    )
}

struct Rig {
    daemon: Daemon,
    dir: tempfile::TempDir,
}

fn spawn_in(dir: tempfile::TempDir, state_file: bool) -> Rig {
    let daemon = Daemon::spawn_with(&DaemonOptions {
        config_toml: Some(config(dir.path(), state_file)),
        rust_log: "info".into(),
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Rig { daemon, dir }
}

fn spawn(state_file: bool) -> Rig {
    spawn_in(
        vmm_tests::unprivileged::tempdir("vsound-ctls-").unwrap(),
        state_file,
    )
}

fn connect(d: &Daemon) -> SndDriver {
    d.connect(&ConnectOptions {
        ctls: true,
        ..ConnectOptions::default()
    })
    .unwrap()
}

fn req(code: u32, id: u32) -> Vec<u8> {
    let mut r = code.to_le_bytes().to_vec();
    r.extend_from_slice(&id.to_le_bytes());
    r
}

fn query(code: u32, start: u32, count: u32, size: u32) -> Vec<u8> {
    [code, start, count, size]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn name_of(info: &[u8]) -> String {
    let n = &info[24..68];
    String::from_utf8_lossy(&n[..n.iter().position(|&b| b == 0).unwrap_or(44)]).into_owned()
}

fn read_value(snd: &mut SndDriver, id: u32) -> u32 {
    let r = snd.control(&req(CTL_READ, id), 4 + VALUE_SIZE).unwrap();
    assert_eq!(r.status(), Some(Status::Ok));
    assert_eq!(r.used_len as usize, 4 + VALUE_SIZE);
    u32_at(&r.response, 4)
}

fn write_value(snd: &mut SndDriver, id: u32, v: u32) -> Status {
    let mut r = req(CTL_WRITE, id);
    let mut value = vec![0u8; VALUE_SIZE];
    value[..4].copy_from_slice(&v.to_le_bytes());
    r.extend_from_slice(&value);
    snd.control_status(&r).unwrap()
}

#[test]
fn the_config_space_has_controls_only_when_ctls_is_negotiated() {
    let rig = spawn(false);
    let snd = connect(&rig.daemon);
    assert_eq!(
        snd.config().controls,
        Some(6),
        "3 streams with volume: 6 elements"
    );
    drop(snd);
    let snd = rig.daemon.connect(&ConnectOptions::default()).unwrap();
    assert_eq!(snd.config().controls, None);
    assert_eq!(snd.config().streams, 4);
    // Without volume controls the daemon does not offer CTLS at all.
    let plain = Daemon::spawn().unwrap();
    let snd = connect(&plain);
    assert_eq!(snd.config().controls, None);
}

#[test]
fn ctl_info_describes_every_element_as_linux_maps_it() {
    let rig = spawn(false);
    let mut snd = connect(&rig.daemon);
    let r = snd
        .control(&query(CTL_INFO, 0, 6, INFO_SIZE as u32), 4 + 6 * INFO_SIZE)
        .unwrap();
    assert_eq!(r.status(), Some(Status::Ok));
    let infos: Vec<&[u8]> = r.response[4..4 + 6 * INFO_SIZE].chunks(INFO_SIZE).collect();
    let names: Vec<String> = infos.iter().map(|i| name_of(i)).collect();
    assert_eq!(
        names,
        [
            "Master Playback Volume",
            "Master Playback Switch",
            "Capture Volume",
            "Capture Switch",
            "Headphone Playback Volume",
            "Headphone Playback Switch"
        ]
    );
    let vol = infos[0];
    // role VOLUME, type INTEGER, access READ|WRITE|TLV_READ, count 1
    assert_eq!(
        (
            u32_at(vol, 4),
            u32_at(vol, 8),
            u32_at(vol, 12),
            u32_at(vol, 16)
        ),
        (1, 1, 0x13, 1)
    );
    // integer min 0, max 120, step 1 (the union starts at byte 72)
    assert_eq!(
        (u32_at(vol, 72), u32_at(vol, 76), u32_at(vol, 80)),
        (0, 120, 1)
    );
    let sw = infos[1];
    assert_eq!(
        (u32_at(sw, 4), u32_at(sw, 8), u32_at(sw, 12), u32_at(sw, 16)),
        (2, 0, 0x3, 1)
    );
    // A larger item size is zero-padded; a range past the end is refused.
    let r = snd.control(&query(CTL_INFO, 5, 1, 128), 4 + 128).unwrap();
    assert_eq!(r.status(), Some(Status::Ok));
    assert!(r.response[4 + 96..4 + 128].iter().all(|&b| b == 0));
    let r = snd.control(&query(CTL_INFO, 5, 2, 96), 4 + 192).unwrap();
    assert_eq!(r.status(), Some(Status::BadMsg));
    let r = snd.control(&query(CTL_INFO, 0, 1, 95), 4 + 95).unwrap();
    assert_eq!(r.status(), Some(Status::BadMsg));
}

#[test]
fn read_write_and_tlv_behave_and_malformed_requests_get_the_spec_status() {
    let rig = spawn(false);
    let mut snd = connect(&rig.daemon);
    // Configured levels: stream 0 at 0 dB on, stream 1 -12.5 dB muted.
    assert_eq!(read_value(&mut snd, 0), 120);
    assert_eq!(read_value(&mut snd, 1), 1);
    assert_eq!(read_value(&mut snd, 2), 95);
    assert_eq!(read_value(&mut snd, 3), 0);
    assert_eq!(write_value(&mut snd, 0, 108), Status::Ok);
    assert_eq!(read_value(&mut snd, 0), 108);
    assert_eq!(write_value(&mut snd, 1, 0), Status::Ok);
    assert_eq!(read_value(&mut snd, 1), 0);
    // Out of range, unknown element, short request, short response.
    assert_eq!(write_value(&mut snd, 0, 121), Status::BadMsg);
    assert_eq!(write_value(&mut snd, 1, 2), Status::BadMsg);
    assert_eq!(
        read_value(&mut snd, 0),
        108,
        "a refused write changes nothing"
    );
    assert_eq!(write_value(&mut snd, 6, 1), Status::BadMsg);
    let mut short = req(CTL_WRITE, 0);
    short.extend_from_slice(&100u32.to_le_bytes());
    assert_eq!(snd.control_status(&short).unwrap(), Status::BadMsg);
    let r = snd.control(&req(CTL_READ, 0), 4 + 16).unwrap();
    assert_eq!(r.status(), Some(Status::BadMsg));
    let r = snd.control(&req(CTL_READ, 99), 4 + VALUE_SIZE).unwrap();
    assert_eq!(r.status(), Some(Status::BadMsg));
    assert_eq!(
        snd.control_status(&CTL_READ.to_le_bytes()).unwrap(),
        Status::BadMsg
    );
    // TLV: a dB scale for volumes, nothing for switches.
    let r = snd.control(&req(CTL_TLV_READ, 0), 4 + 4096).unwrap();
    assert_eq!(r.status(), Some(Status::Ok));
    assert_eq!(r.used_len, 4 + 16);
    assert_eq!(
        (
            u32_at(&r.response, 4),
            u32_at(&r.response, 8),
            u32_at(&r.response, 12) as i32,
            u32_at(&r.response, 16)
        ),
        (1, 8, -6000, 50)
    );
    let r = snd.control(&req(CTL_TLV_READ, 1), 4 + 4096).unwrap();
    assert_eq!(r.status(), Some(Status::BadMsg));
    let r = snd.control(&req(CTL_TLV_READ, 0), 4 + 8).unwrap();
    assert_eq!(r.status(), Some(Status::BadMsg));
    for code in [CTL_TLV_WRITE, CTL_TLV_COMMAND] {
        let mut r = req(code, 0);
        r.extend_from_slice(&[0u8; 16]);
        assert_eq!(snd.control_status(&r).unwrap(), Status::NotSupp);
    }
    assert_eq!(
        snd.control_status(&req(CTL_ENUM_ITEMS, 0)).unwrap(),
        Status::BadMsg
    );
    // The device still answers.
    assert_eq!(read_value(&mut snd, 4), 120);
}

fn api_path(rig: &Rig) -> std::path::PathBuf {
    rig.daemon.dir().join("vsound-api.sock")
}

fn ctl(rig: &Rig, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api_path(rig).exists() {
        assert!(Instant::now() < deadline, "no API socket");
        thread::sleep(Duration::from_millis(10));
    }
    let o = Command::new(Daemon::binary().unwrap())
        .arg("ctl")
        .arg("--api-socket")
        .arg(api_path(rig))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_host_sets_volume_and_mute_and_the_guest_is_told() {
    let rig = spawn(false);
    let mut snd = connect(&rig.daemon);
    snd.post_event_buffers(8).unwrap();
    assert_eq!(
        ctl(&rig, &["volume", "0", "-6"]).trim(),
        "stream 0: -6.0 dB"
    );
    let ev = snd
        .wait_event(Duration::from_secs(5))
        .unwrap()
        .expect("no CTL_NOTIFY");
    assert_eq!(ev.event_type, EVT_CTL_NOTIFY);
    assert_eq!(
        ev.data,
        1 << 16,
        "control 0 (low 16 bits), mask VALUE (high)"
    );
    assert_eq!(read_value(&mut snd, 0), 108);
    assert_eq!(
        ctl(&rig, &["mute", "0", "on"]).trim(),
        "stream 0: -6.0 dB, muted"
    );
    let ev = snd
        .wait_event(Duration::from_secs(5))
        .unwrap()
        .expect("no CTL_NOTIFY");
    assert_eq!((ev.event_type, ev.data), (EVT_CTL_NOTIFY, 1 | (1 << 16)));
    assert_eq!(read_value(&mut snd, 1), 0);
    // The same value again changes nothing and says nothing.
    ctl(&rig, &["mute", "0", "on"]);
    assert!(snd
        .wait_event(Duration::from_millis(300))
        .unwrap()
        .is_none());
    // A stream without controls.
    let o = Command::new(Daemon::binary().unwrap())
        .args(["ctl", "--api-socket"])
        .arg(api_path(&rig))
        .args(["volume", "3", "-6"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no volume control"));
    let t = ctl(&rig, &["status"]);
    assert!(t.contains("-6.0 dB, muted"), "{t}");
}

fn play_through_pad(rig: &Rig, snd: &mut SndDriver, samples: &[i16]) -> Vec<i16> {
    let mut client = UnixStream::connect(rig.dir.path().join("pad0.sock")).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The pad takes the client on its own thread: wait until it is its.
    let deadline = Instant::now() + Duration::from_secs(5);
    let pad_attached = || {
        let v: serde_json::Value = serde_json::from_str(&ctl(rig, &["--json", "status"])).unwrap();
        v["result"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "pad0" && d["attached"] == true)
    };
    while !pad_attached() {
        assert!(
            Instant::now() < deadline,
            "the pad never took the client; the daemon's log:\n{}",
            rig.daemon.log_tail(40)
        );
        thread::sleep(Duration::from_millis(20));
    }
    let p = SetParams {
        stream_id: 0,
        buffer_bytes: (4 * PERIOD) as u32,
        period_bytes: PERIOD as u32,
        features: 0,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: PcmRate::R48000.code(),
        padding: 0,
    };
    assert_eq!(snd.set_params_raw(&p).unwrap(), Status::Ok);
    assert_eq!(snd.prepare(0).unwrap(), Status::Ok);
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    for chunk in bytes.chunks(PERIOD) {
        snd.tx(0, chunk, &[]).unwrap();
    }
    assert_eq!(snd.start(0).unwrap(), Status::Ok);
    let n = bytes.len() / PERIOD;
    snd.wait_io_count(Queue::Tx, n, Duration::from_secs(10))
        .unwrap();
    let mut got = vec![0u8; bytes.len()];
    client.read_exact(&mut got).unwrap();
    assert_eq!(snd.stop(0).unwrap(), Status::Ok);
    assert_eq!(snd.release(0).unwrap(), Status::Ok);
    got.chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn the_gain_reaches_the_frames_exactly() {
    let rig = spawn(false);
    let mut snd = connect(&rig.daemon);
    let samples: Vec<i16> = (0..PERIOD * 2)
        .map(|i| ((i as i32 * 37) % 65536 - 32768) as i16)
        .collect();
    let full = play_through_pad(&rig, &mut snd, &samples);
    assert_eq!(full, samples, "0 dB is bit-exact");
    assert_eq!(write_value(&mut snd, 0, 108), Status::Ok); // -6 dB
    let half = play_through_pad(&rig, &mut snd, &samples);
    for (h, s) in half.iter().zip(&samples) {
        assert!((i32::from(*h) * 2 - i32::from(*s)).abs() <= 1, "{h} vs {s}");
    }
    assert_eq!(write_value(&mut snd, 1, 0), Status::Ok); // switch off
    let muted = play_through_pad(&rig, &mut snd, &samples);
    assert!(muted.iter().all(|&s| s == 0));
}

#[test]
fn levels_survive_a_reconnect_and_with_a_state_file_a_restart() {
    let rig = spawn(true);
    let mut snd = connect(&rig.daemon);
    assert_eq!(write_value(&mut snd, 0, 100), Status::Ok);
    assert_eq!(write_value(&mut snd, 3, 1), Status::Ok);
    snd.disconnect().unwrap();
    let mut snd = connect(&rig.daemon);
    assert_eq!(read_value(&mut snd, 0), 100, "kept across the reconnect");
    assert_eq!(read_value(&mut snd, 3), 1);
    drop(snd);
    let Rig { mut daemon, dir } = rig;
    daemon.signal(libc::SIGTERM).unwrap();
    assert!(daemon.wait_exit(Duration::from_secs(8)).unwrap().is_some());
    let saved = std::fs::read_to_string(dir.path().join("levels.json")).unwrap();
    assert!(saved.contains("\"volume_db\":-10.0"), "{saved}");
    drop(daemon);
    let rig = spawn_in(dir, true);
    let mut snd = connect(&rig.daemon);
    assert_eq!(read_value(&mut snd, 0), 100, "restored from the state file");
    assert_eq!(read_value(&mut snd, 3), 1);
    assert_eq!(
        read_value(&mut snd, 2),
        95,
        "untouched levels as configured"
    );
}
