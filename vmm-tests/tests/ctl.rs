//! `vsound ctl` as an operator uses it: it finds the API socket by itself,
//! prints a table (or JSON, or Prometheus metrics), watches for changes,
//! and its counters mean what they say.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use vmm_tests::frontend::Queue;
use vmm_tests::snd::{PcmFormat, PcmRate, SetParams, SndDriver, Status};
use vmm_tests::{ConnectOptions, Daemon};

const PERIOD: u32 = 1920; // 10 ms of 48 kHz S16 stereo

fn ctl(args: &[&str]) -> Output {
    Command::new(Daemon::binary().unwrap())
        .arg("ctl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn status(sock: &Path) -> Value {
    let o = ctl(&["--socket", sock.to_str().unwrap(), "--json", "status"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["result"].clone()
}

fn api_of(d: &Daemon) -> std::path::PathBuf {
    d.dir().join("vsound-api.sock")
}

fn wait_api(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api_of(d).exists() {
        assert!(
            Instant::now() < deadline,
            "no API socket next to the vhost-user one"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn play_setup(snd: &mut SndDriver) {
    let p = SetParams {
        stream_id: 0,
        buffer_bytes: 8 * PERIOD,
        period_bytes: PERIOD,
        features: 0,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: PcmRate::R48000.code(),
        padding: 0,
    };
    assert_eq!(snd.set_params_raw(&p).unwrap(), Status::Ok);
    assert_eq!(snd.prepare(0).unwrap(), Status::Ok);
}

fn play(snd: &mut SndDriver, n: usize) {
    for i in 0..n {
        snd.tx(0, &vec![i as u8; PERIOD as usize], &[]).unwrap();
    }
}

#[test]
fn ctl_finds_the_api_socket_next_to_the_vhost_user_socket_and_prints_a_table() {
    let d = Daemon::spawn().unwrap();
    wait_api(&d);
    let o = ctl(&["--socket", d.socket_path().to_str().unwrap(), "status"]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(t.starts_with("vsound "), "{t}");
    assert!(t.contains("no VMM connected"), "{t}");
    let dev = t.lines().find(|l| l.starts_with("null0 ")).unwrap();
    assert!(dev.contains("null") && dev.contains("attached"), "{t}");
    assert!(t.lines().any(|l| l.starts_with("STREAM")), "{t}");
    // RFC 3339 times, not epoch numbers.
    assert!(
        dev.contains('T') && dev.contains("Z (") && dev.contains(" ago)"),
        "{dev}"
    );

    // A config that names the API socket.
    let cfg = d.dir().join("ctl.toml");
    std::fs::write(
        &cfg,
        format!(
            "[daemon]\napi_socket = \"{}\"\n[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\n",
            api_of(&d).display()
        ),
    )
    .unwrap();
    let o = ctl(&["--config", cfg.to_str().unwrap(), "status"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // One that names none: told what to do.
    std::fs::write(
        &cfg,
        "[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\n",
    )
    .unwrap();
    let o = ctl(&["--config", cfg.to_str().unwrap(), "status"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("names no API socket"));
}

#[test]
fn counters_mean_what_they_say_and_outlive_the_connection() {
    let d = Daemon::spawn().unwrap();
    wait_api(&d);
    let sock = d.socket_path().to_owned();
    let mut snd = d.connect(&ConnectOptions::default()).unwrap();
    play_setup(&mut snd);
    play(&mut snd, 5);
    assert_eq!(snd.start(0).unwrap(), Status::Ok);
    snd.wait_io_count(Queue::Tx, 5, Duration::from_secs(5))
        .unwrap();
    // Dry for a while (the guest hears a gap once more comes), then more.
    thread::sleep(Duration::from_millis(100));
    let st = status(&sock);
    assert_eq!(st["vmm_connected"], true);
    assert_eq!(
        st["streams"][0]["xruns"], 0,
        "dry, but no gap heard yet: {st}"
    );
    play(&mut snd, 5);
    snd.wait_io_count(Queue::Tx, 5, Duration::from_secs(5))
        .unwrap();
    // The normal end: the guest stops feeding, then STOP and RELEASE.
    thread::sleep(Duration::from_millis(100));
    assert_eq!(snd.stop(0).unwrap(), Status::Ok);
    assert_eq!(snd.release(0).unwrap(), Status::Ok);
    let st = status(&sock);
    let s0 = &st["streams"][0];
    assert_eq!(
        s0["xruns"], 1,
        "one gap in the middle, none at the end: {s0}"
    );
    // 10 periods of 480 frames (S16 stereo: 4 bytes a frame), all to null.
    assert_eq!(s0["frames"], 4800, "{s0}");
    assert_eq!(s0["frames_without_device"], 0, "{s0}");
    assert_eq!(st["streams_from"], "this connection");
    assert!(st["vmm_since"]["at"].as_str().unwrap().ends_with('Z'));

    // After the VMM goes, the figures stay until the next connection.
    snd.disconnect().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let st = loop {
        let st = status(&sock);
        if st["vmm_connected"] == false {
            break st;
        }
        assert!(Instant::now() < deadline, "still connected: {st}");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st["streams"][0]["frames"], 4800, "{st}");
    assert!(
        st["streams_from"]
            .as_str()
            .unwrap()
            .starts_with("the last connection, ended "),
        "{st}"
    );
    // Frames with the device detached are counted apart.
    let mut snd = d.connect(&ConnectOptions::default()).unwrap();
    let st = status(&sock);
    assert_eq!(
        st["streams"][0]["frames"], 0,
        "a new connection starts from zero: {st}"
    );
    let o = ctl(&["--socket", sock.to_str().unwrap(), "detach", "null0"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "null0: done; not attached"
    );
    play_setup(&mut snd);
    play(&mut snd, 4);
    assert_eq!(snd.start(0).unwrap(), Status::Ok);
    snd.wait_io_count(Queue::Tx, 4, Duration::from_secs(5))
        .unwrap();
    let st = status(&sock);
    let s0 = &st["streams"][0];
    assert_eq!(
        (s0["frames"].clone(), s0["frames_without_device"].clone()),
        (0.into(), 1920.into()),
        "{s0}"
    );
    let dev = &st["devices"][0];
    assert_eq!(
        dev["last_error"]["message"], "detached by the operator",
        "{dev}"
    );
}

#[test]
fn metrics_are_prometheus_text_and_watch_prints_changes_as_they_happen() {
    let d = Daemon::spawn().unwrap();
    wait_api(&d);
    let sock = d.socket_path().to_str().unwrap().to_owned();
    let o = ctl(&["--socket", &sock, "metrics"]);
    assert!(o.status.success());
    let m = String::from_utf8_lossy(&o.stdout);
    assert!(
        m.contains("# TYPE vsound_vmm_connected gauge\nvsound_vmm_connected 0\n"),
        "{m}"
    );
    assert!(
        m.contains("vsound_device_attached{device=\"null0\",kind=\"null\"} 1\n"),
        "{m}"
    );
    assert!(
        m.contains(
            "vsound_stream_frames_total{stream=\"0\",direction=\"output\",device=\"null0\"} 0\n"
        ),
        "{m}"
    );

    let mut watch = Command::new(Daemon::binary().unwrap())
        .args(["ctl", "--socket", &sock, "watch", "--interval-ms", "100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next_matching = |pred: &dyn Fn(&str) -> bool, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("watch never printed {what}"),
            }
        }
    };
    next_matching(
        &|l| l.starts_with("null0 ") && l.contains(" attached "),
        "the first table",
    );
    next_matching(
        &|l| l.starts_with("guest errors:"),
        "the end of the first table",
    );
    // Nothing changes: nothing more than the first table for a while
    // (ages are not changes).
    thread::sleep(Duration::from_millis(1500));
    let extra: Vec<String> = rx.try_iter().collect();
    assert!(
        extra.is_empty(),
        "watch printed without a change: {extra:?}"
    );
    let o = ctl(&["--socket", &sock, "detach", "null0"]);
    assert!(o.status.success());
    let l = next_matching(&|l| l.starts_with("null0 "), "the detach");
    assert!(l.contains("detached (operator)"), "{l}");
    watch.kill().unwrap();
    let _ = watch.wait();
}
