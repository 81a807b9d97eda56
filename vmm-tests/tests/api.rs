//! The management API and `vsound ctl` under hostile or broken peers: every
//! malformed line gets a JSON error, nothing can hold a server thread or
//! `ctl` for long, and the number of clients is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use vmm_tests::{Daemon, DaemonOptions};

struct Api {
    daemon: Daemon,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn spawn() -> Api {
    let dir = vmm_tests::unprivileged::tempdir("vsound-api-").unwrap();
    let path = dir.path().join("api.sock");
    let daemon = Daemon::spawn_with(&DaemonOptions {
        extra_args: vec!["--api-socket".into(), path.display().to_string()],
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no API socket");
        thread::sleep(Duration::from_millis(10));
    }
    Api {
        daemon,
        path,
        _dir: dir,
    }
}

fn connect(path: &PathBuf) -> (UnixStream, BufReader<UnixStream>) {
    let c = UnixStream::connect(path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = BufReader::new(c.try_clone().unwrap());
    (c, r)
}

fn reply(r: &mut BufReader<UnixStream>) -> serde_json::Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("`{line}`: {e}"))
}

#[test]
fn every_malformed_line_gets_a_json_error_and_the_connection_serves_on() {
    let mut api = spawn();
    let (mut c, mut r) = connect(&api.path);
    for (bad, says) in [
        (&b"\xff\xfe{\"cmd\":\"status\"}\n"[..], "not UTF-8"),
        (b"{not json\n", "not JSON"),
        (b"{\"cmd\":\"fly\"}\n", "unknown command"),
        (b"{\"cmd\":\"detach\"}\n", "needs a \"device\""),
    ] {
        c.write_all(bad).unwrap();
        let v = reply(&mut r);
        assert_eq!(v["ok"], false, "{v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{v}");
    }
    let long = vec![b'x'; 10_000];
    c.write_all(&long).unwrap();
    c.write_all(b"\n").unwrap();
    let v = reply(&mut r);
    assert!(v["error"].as_str().unwrap().contains("longer than"), "{v}");
    c.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    assert_eq!(reply(&mut r)["ok"], true);
    api.daemon.check_alive().unwrap();
}

#[test]
fn a_request_trickled_byte_by_byte_is_cut_off_after_the_request_deadline() {
    let mut api = spawn();
    let (mut c, _r) = connect(&api.path);
    let t = Instant::now();
    let mut cut = false;
    for b in b"{\"cmd\":\"status\"".iter().cycle().take(40) {
        if c.write_all(&[*b]).is_err() {
            cut = true;
            break;
        }
        thread::sleep(Duration::from_millis(300));
        // The server closes: a read sees EOF.
        c.set_nonblocking(true).unwrap();
        let mut one = [0u8; 1];
        if matches!(c.read(&mut one), Ok(0)) {
            cut = true;
            break;
        }
        c.set_nonblocking(false).unwrap();
    }
    let took = t.elapsed();
    assert!(cut, "a trickling client kept its connection for {took:?}");
    assert!(took < Duration::from_secs(9), "cut after {took:?}");
    api.daemon.check_alive().unwrap();
}

#[test]
fn clients_beyond_the_cap_are_told_so_and_the_api_still_answers() {
    let mut api = spawn();
    let idle: Vec<_> = (0..16).map(|_| connect(&api.path)).collect();
    thread::sleep(Duration::from_millis(200));
    let (_c, mut r) = connect(&api.path);
    let v = reply(&mut r);
    assert!(
        v["error"].as_str().unwrap().contains("too many clients"),
        "{v}"
    );
    let threads = std::fs::read_dir(format!("/proc/{}/task", api.daemon.pid().unwrap()))
        .unwrap()
        .count();
    assert!(threads < 40, "{threads} threads with 17 clients");
    drop(idle);
    thread::sleep(Duration::from_millis(200));
    let (mut c, mut r) = connect(&api.path);
    c.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    assert_eq!(reply(&mut r)["ok"], true);
    api.daemon.check_alive().unwrap();
}

fn ctl_against(server: impl FnOnce(UnixStream) + Send + 'static) -> (bool, String, Duration) {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let path = dir.path().join("fake.sock");
    let l = UnixListener::bind(&path).unwrap();
    thread::spawn(move || {
        if let Ok((c, _)) = l.accept() {
            server(c);
        }
    });
    let t = Instant::now();
    let out = Command::new(Daemon::binary().unwrap())
        .args(["ctl", "--api-socket"])
        .arg(&path)
        .arg("status")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        t.elapsed(),
    )
}

#[test]
fn ctl_gives_up_on_a_server_that_never_finishes_its_answer() {
    // Drips a byte a second, forever.
    let (ok, err, took) = ctl_against(|mut c| {
        for _ in 0..60 {
            if c.write_all(b" ").is_err() {
                return;
            }
            thread::sleep(Duration::from_secs(1));
        }
    });
    assert!(!ok);
    assert!(err.contains("no whole answer"), "{err}");
    assert!(took < Duration::from_secs(15), "ctl waited {took:?}");
}

#[test]
fn ctl_refuses_an_endless_answer() {
    let (ok, err, took) = ctl_against(|mut c| {
        let chunk = vec![b'x'; 1 << 16];
        for _ in 0..200 {
            if c.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    assert!(!ok);
    assert!(err.contains("longer than"), "{err}");
    assert!(took < Duration::from_secs(15), "ctl took {took:?}");
}
