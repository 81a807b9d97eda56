//! The daemon as a system service: its sockets (created with their final
//! mode, never through a link, never stealing a live one), its signals
//! (SIGTERM/SIGINT stop cleanly and in bounded time, SIGHUP re-probes),
//! inherited sockets (`--socket-fd`, systemd's `LISTEN_FDS`) and the
//! configuration checks on socket paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vmm_tests::frontend::Queue;
use vmm_tests::snd::{PcmFormat, PcmRate, SetParams, Status};
use vmm_tests::{ConnectOptions, Daemon, DaemonOptions};

/// How long a clean stop may take (the daemon's own bound is 5 s).
const STOP: Duration = Duration::from_secs(8);

fn vsound() -> PathBuf {
    Daemon::binary().unwrap()
}

/// The binary as the tests' daemons run (see `vmm_tests::unprivileged`).
fn vsound_cmd() -> Command {
    vmm_tests::unprivileged::command(&vsound()).unwrap()
}

fn run(args: &[&str]) -> Output {
    vsound_cmd()
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

fn pad_config(dir: &Path, daemon_extra: &str, pad_extra: &str) -> String {
    format!(
        r#"[daemon]
api_socket = "{api}"
{daemon_extra}

[devices.pad0]
kind = "pad"
path = "{pad}"
{pad_extra}

[[streams]]
direction = "output"
device = "pad0"
channels = {{ min = 2, max = 2 }}
"#,
        api = dir.join("api.sock").display(),
        pad = dir.join("pad0.sock").display(),
    )
}

fn spawn(toml: String) -> Daemon {
    Daemon::spawn_with(&DaemonOptions {
        config_toml: Some(toml),
        rust_log: "info".into(),
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_socket_gets_its_configured_mode_and_the_default_is_owner_only() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let d = spawn(pad_config(dir.path(), "", ""));
    wait_for(&dir.path().join("api.sock"));
    for p in [
        d.socket_path().to_owned(),
        dir.path().join("api.sock"),
        dir.path().join("pad0.sock"),
    ] {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    drop(d);

    let d = spawn(pad_config(
        dir.path(),
        "socket_mode = \"0660\"\napi_socket_mode = 0o640",
        "mode = \"0666\"",
    ));
    wait_for(&dir.path().join("api.sock"));
    assert_eq!(mode(d.socket_path()), 0o660);
    assert_eq!(mode(&dir.path().join("api.sock")), 0o640);
    assert_eq!(mode(&dir.path().join("pad0.sock")), 0o666);
    // No private directory is left next to the sockets.
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".vsound-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn owner_and_group_are_given_to_the_socket_files() {
    // SAFETY: no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    // A daemon running as root hands the files to nobody/nogroup; an
    // unprivileged one (the tests' usual) to itself: all it may do.
    let (owner, group) = match vmm_tests::unprivileged::daemon_user() {
        Some(u) => (u.uid, u.gid),
        None if uid == 0 => (65534, 65534),
        None => (uid, gid),
    };
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let d = spawn(pad_config(
        dir.path(),
        &format!(
            "socket_owner = {owner}\nsocket_group = {group}\napi_socket_owner = \"{owner}\"\napi_socket_group = {group}"
        ),
        &format!("owner = {owner}\ngroup = {group}"),
    ));
    wait_for(&dir.path().join("api.sock"));
    for p in [
        d.socket_path().to_owned(),
        dir.path().join("api.sock"),
        dir.path().join("pad0.sock"),
    ] {
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (owner, group), "{}", p.display());
    }
    let dir2 = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let bad = dir2.path().join("bad.toml");
    fs::write(
        &bad,
        pad_config(dir2.path(), "socket_owner = \"no-such-user-vsound\"", ""),
    )
    .unwrap();
    let o = run(&["check-config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("bad.toml:3:")
            && t.contains("socket_owner")
            && t.contains("no-such-user-vsound"),
        "{t}"
    );
}

/// The red-team case: a symlink swapped in at a socket path. Nothing
/// behind it is touched, and the daemon says why it does not start.
#[test]
fn a_symlink_at_any_socket_path_is_refused_and_its_target_keeps_its_mode() {
    for which in ["socket", "api", "pad"] {
        let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"secret").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        let sock = dir.path().join("vhost.sock");
        let link = match which {
            "socket" => sock.clone(),
            "api" => dir.path().join("api.sock"),
            _ => dir.path().join("pad0.sock"),
        };
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let cfg = dir.path().join("c.toml");
        fs::write(
            &cfg,
            pad_config(dir.path(), "socket_mode = \"0666\"", "mode = \"0666\""),
        )
        .unwrap();
        let o = run(&[
            "--config",
            cfg.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "--seccomp=off",
        ]);
        assert!(!o.status.success(), "{which}: {}", text(&o));
        let t = text(&o);
        assert!(
            t.contains("exists and is not a socket") && t.contains(link.to_str().unwrap()),
            "{which}: {t}"
        );
        assert_eq!(
            mode(&victim),
            0o600,
            "{which}: the link's target was chmodded"
        );
        assert_eq!(fs::read(&victim).unwrap(), b"secret");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}

#[test]
fn a_second_daemon_never_steals_a_live_socket() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let first = spawn(pad_config(dir.path(), "", ""));
    wait_for(&dir.path().join("api.sock"));
    // The same vhost-user socket.
    let o = run(&[
        "--socket",
        first.socket_path().to_str().unwrap(),
        "--seccomp=off",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(&format!(
            "another process is listening on {}",
            first.socket_path().display()
        )),
        "{}",
        text(&o)
    );
    // The same API socket (and pad), another vhost-user socket.
    let other = dir.path().join("other.sock");
    let cfg = dir.path().join("c.toml");
    fs::write(&cfg, pad_config(dir.path(), "", "")).unwrap();
    let o = run(&[
        "--config",
        cfg.to_str().unwrap(),
        "--socket",
        other.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("another process is listening on"),
        "{}",
        text(&o)
    );
    // The first daemon still serves all three.
    let mut snd = first.connect(&ConnectOptions::default()).unwrap();
    assert_eq!(snd.config().streams, 1);
    snd.disconnect().unwrap();
    UnixStream::connect(dir.path().join("api.sock")).unwrap();
    UnixStream::connect(dir.path().join("pad0.sock")).unwrap();
    assert!(!other.exists(), "the refused daemon left its socket behind");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let sock = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    // As a stale socket of the daemon's own user would be: connectable.
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = vsound_cmd()
        .args(["--socket", sock.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut snd) = vmm_tests::SndDriver::connect(&sock, &ConnectOptions::default()) {
            assert_eq!(snd.config().streams, 2);
            snd.disconnect().unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "never served the stale path");
        thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn check_config_refuses_conflicting_empty_and_unreachable_socket_paths() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let d = dir.path().display().to_string();
    let cases = [
        (
            format!("[daemon]\nsocket = \"{d}/a.sock\"\napi_socket = \"{d}/a.sock\"\n"),
            "",
            3,
            "daemon.api_socket",
            "already the path of `daemon.socket`",
        ),
        (
            format!("[daemon]\nsocket = \"{d}/a.sock\"\n"),
            &*format!("path = \"{d}/./a.sock\""),
            6,
            "devices.pad0.path",
            "already the path of `daemon.socket`",
        ),
        (
            format!("[daemon]\napi_socket = \"{d}/p.sock\"\n"),
            &*format!("path = \"{d}//p.sock\""),
            6,
            "devices.pad0.path",
            "already the path of `daemon.api_socket`",
        ),
        (
            String::new(),
            &*format!("path = \"{d}/missing-dir/p.sock\""),
            4,
            "devices.pad0.path",
            "does not exist",
        ),
        (
            "[daemon]\nsocket = \"\"\n".to_owned(),
            "",
            2,
            "socket",
            "must not be empty",
        ),
        (
            "[daemon]\napi_socket = \"/nonexistent-vsound/api.sock\"\n".to_owned(),
            "",
            2,
            "daemon.api_socket",
            "does not exist",
        ),
    ];
    for (i, (daemon, pad_path, line, key, what)) in cases.iter().enumerate() {
        let pad = if pad_path.is_empty() {
            format!("path = \"{d}/pad{i}.sock\"")
        } else {
            (*pad_path).to_owned()
        };
        let toml = format!(
            "{daemon}\n[devices.pad0]\nkind = \"pad\"\n{pad}\n\n[[streams]]\ndirection = \"output\"\ndevice = \"pad0\"\nchannels = {{ min = 2, max = 2 }}\n"
        );
        let f = dir.path().join(format!("case{i}.toml"));
        fs::write(&f, &toml).unwrap();
        let o = run(&["check-config", f.to_str().unwrap()]);
        let t = text(&o);
        assert!(!o.status.success(), "case {i} passed:\n{toml}");
        let at = format!("case{i}.toml:{line}:");
        assert!(
            t.contains(&at) && t.contains(key) && t.contains(what),
            "case {i}: {t}\n{toml}"
        );
    }
    // Two pads on one path.
    let toml = format!(
        "[devices.a]\nkind = \"pad\"\npath = \"{d}/same.sock\"\n\n[devices.b]\nkind = \"pad\"\npath = \"{d}/same.sock\"\n\n[[streams]]\ndirection = \"output\"\ndevice = \"a\"\nchannels = {{ min = 2, max = 2 }}\n"
    );
    let f = dir.path().join("twopads.toml");
    fs::write(&f, toml).unwrap();
    let t = text(&run(&["check-config", f.to_str().unwrap()]));
    assert!(
        t.contains("twopads.toml:7:")
            && t.contains("devices.b.path")
            && t.contains("`devices.a.path`"),
        "{t}"
    );
}

#[test]
fn a_bad_socket_fd_is_refused_with_the_reason_never_a_panic() {
    let f = fs::File::open("/proc/self/status").unwrap();
    let file_fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: clearing FD_CLOEXEC on our own fd lets the child inherit it.
    assert_eq!(unsafe { libc::fcntl(file_fd, libc::F_SETFD, 0) }, 0);
    for (fd, why) in [
        ("-1".to_owned(), "not a file descriptor"),
        ("0".to_owned(), "stdin"),
        ("2".to_owned(), "stderr"),
        ("1000".to_owned(), "not open"),
        (file_fd.to_string(), "not a socket"),
    ] {
        let o = vsound_cmd()
            .args(["--socket-fd", &fd, "--seccomp=off"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "fd {fd}: {t}");
        assert!(t.contains(why) && !t.contains("panicked"), "fd {fd}: {t}");
    }
}

fn stops_cleanly_on(signal: i32) {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let mut d = spawn(pad_config(dir.path(), "", ""));
    let api = dir.path().join("api.sock");
    let pad = dir.path().join("pad0.sock");
    wait_for(&api);
    let sock = d.socket_path().to_owned();
    let sent = Instant::now();
    d.signal(signal).unwrap();
    let status = d
        .wait_exit(STOP)
        .unwrap()
        .expect("no exit after the signal");
    assert!(status.success(), "{status:?}: {}", d.log_tail(20));
    for p in [&sock, &api, &pad] {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    eprintln!("stopped {:?} after the signal", sent.elapsed());
}

#[test]
fn sigterm_stops_the_daemon_and_removes_every_socket_file() {
    stops_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_stops_the_daemon_and_removes_every_socket_file() {
    stops_cleanly_on(libc::SIGINT);
}

/// The old hang: the API server woke its accept loop by connecting to its
/// own path, which fails once the file is gone.
#[test]
fn a_stop_does_not_hang_when_the_api_socket_file_was_removed() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let mut d = spawn(pad_config(dir.path(), "", ""));
    let api = dir.path().join("api.sock");
    wait_for(&api);
    fs::remove_file(&api).unwrap();
    // Somebody else's file at the path now: not removed by the daemon.
    fs::write(&api, b"not ours").unwrap();
    d.signal(libc::SIGTERM).unwrap();
    let status = d.wait_exit(STOP).unwrap().expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(fs::read(&api).unwrap(), b"not ours");
}

/// SIGTERM with a guest playing: every buffer the daemon holds comes back
/// to the driver before the connection ends.
#[test]
fn sigterm_with_a_vmm_connected_completes_every_held_buffer_then_exits() {
    let mut d = Daemon::spawn_with(&DaemonOptions {
        rust_log: "info".into(),
        ..DaemonOptions::default()
    })
    .unwrap();
    let mut snd = d.connect(&ConnectOptions::default()).unwrap();
    let period = 1920u32;
    let params = SetParams {
        stream_id: 0,
        buffer_bytes: 16 * period,
        period_bytes: period,
        features: 0,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: PcmRate::R48000.code(),
        padding: 0,
    };
    assert_eq!(snd.set_params_raw(&params).unwrap(), Status::Ok);
    assert_eq!(snd.prepare(0).unwrap(), Status::Ok);
    // Prepared, not started: the daemon holds every buffer.
    let queued = 12;
    for i in 0..queued {
        snd.tx(0, &vec![i as u8; period as usize], &[]).unwrap();
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(snd.pending_io(Queue::Tx), queued);
    d.signal(libc::SIGTERM).unwrap();
    let done = snd
        .wait_io_count(Queue::Tx, queued, Duration::from_secs(5))
        .unwrap();
    assert_eq!(done.len(), queued);
    for c in &done {
        assert_eq!(c.status, Status::IoErr, "head {}", c.head);
        assert_eq!(c.violation, None);
    }
    let status = d.wait_exit(STOP).unwrap().expect("no exit after SIGTERM");
    assert!(status.success(), "{status:?}: {}", d.log_tail(20));
    assert!(
        d.log().contains("12 guest buffers completed"),
        "{}",
        d.log_tail(20)
    );
}

/// ALSA PCMs absent at startup, with a 10-minute retry: `ctl attach` and
/// SIGHUP make the daemon probe them at once.
#[test]
fn sighup_and_ctl_attach_probe_absent_devices_at_once() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    // The PCMs are not defined at first: alsa-lib reads its configuration
    // files again when they change, so defining one makes it appear.
    let asound = dir.path().join("asound.conf");
    fs::write(&asound, "").unwrap();
    let defined = std::cell::RefCell::new(String::new());
    let appear = |n: &str| {
        let mut d = defined.borrow_mut();
        *d += &format!("pcm.hup{n} {{ type null }}\n");
        fs::write(&asound, &*d).unwrap();
        // alsa-lib compares modification times in whole seconds: make
        // each version's differ.
        let stamp = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + d.len() as u64);
        fs::File::options()
            .write(true)
            .open(&asound)
            .unwrap()
            .set_modified(stamp)
            .unwrap();
    };
    let api = dir.path().join("api.sock");
    let mut toml = format!("[daemon]\napi_socket = \"{}\"\n", api.display());
    for n in ["a", "b", "c"] {
        toml += &format!("\n[devices.{n}]\nkind = \"alsa\"\npcm = \"hup{n}\"\nretry_ms = 600000\n");
    }
    for n in ["a", "b", "c"] {
        toml += &format!("\n[[streams]]\ndirection = \"output\"\ndevice = \"{n}\"\n");
    }
    let mut d = Daemon::spawn_with(&DaemonOptions {
        config_toml: Some(toml),
        rust_log: "info".into(),
        env: vec![(
            "ALSA_CONFIG_PATH".to_owned(),
            format!("/usr/share/alsa/alsa.conf:{}", asound.display()),
        )],
        ..DaemonOptions::default()
    })
    .unwrap();
    wait_for(&api);
    let ctl = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["ctl", "--api-socket", api.to_str().unwrap(), "--json"];
        all.extend_from_slice(args);
        let o = run(&all);
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
    };
    let attached = |name: &str| -> bool {
        ctl(&["status"])["result"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap()["attached"]
            .as_bool()
            .unwrap()
    };
    let within = |name: &str, what: &str, d: &mut Daemon| {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !attached(name) {
            assert!(
                Instant::now() < deadline,
                "{what} did not probe {name}: {}",
                d.log_tail(20)
            );
            thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(!attached("a") && !attached("b") && !attached("c"));

    // `ctl attach` on a device that went away by itself probes it.
    appear("c");
    thread::sleep(Duration::from_millis(1200));
    assert!(
        !attached("c"),
        "probed without being asked (retry_ms is 10 min)"
    );
    let v = ctl(&["attach", "c"]);
    assert_eq!(v["result"]["probing"], true, "{v}");
    within("c", "ctl attach", &mut d);
    assert!(!attached("a") && !attached("b"));

    // SIGHUP probes every absent device.
    appear("a");
    appear("b");
    thread::sleep(Duration::from_millis(1200));
    assert!(
        !attached("a") && !attached("b"),
        "probed without being asked"
    );
    d.signal(libc::SIGHUP).unwrap();
    within("a", "SIGHUP", &mut d);
    within("b", "SIGHUP", &mut d);
    assert!(
        d.log().contains("SIGHUP: probing 2 absent devices now"),
        "{}",
        d.log_tail(20)
    );
    // A present device is not probed: nothing to do.
    let v = ctl(&["attach", "a"]);
    assert_eq!(v["result"]["probing"], false, "{v}");
    assert_eq!(v["result"]["changed"], false, "{v}");
    d.check_alive().unwrap();
}

/// systemd's socket activation, through the real `systemd-socket-activate`
/// (skipped where it is not installed).
#[test]
fn socket_activation_through_listen_fds_serves_the_passed_sockets() {
    let Ok(tool) = which("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate not installed: skipped");
        return;
    };
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let sock = dir.path().join("activated.sock");
    let api = dir.path().join("activated-api.sock");
    let log = fs::File::create(dir.path().join("log")).unwrap();
    let daemon = vsound_cmd();
    let mut child = Command::new(tool)
        .arg("-l")
        .arg(&sock)
        .arg("--fdname=vhost-user")
        .arg("-l")
        .arg(&api)
        .arg("--fdname=api")
        .arg(daemon.get_program())
        .args(daemon.get_args())
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    wait_for(&sock);
    wait_for(&api);
    // What SocketMode= would do: the daemon's user may connect to the API.
    fs::set_permissions(&api, fs::Permissions::from_mode(0o666)).unwrap();
    // systemd-socket-activate starts the daemon on the first connection.
    let mut snd = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while snd.is_none() {
        match vmm_tests::SndDriver::connect(&sock, &ConnectOptions::default()) {
            Ok(s) => snd = Some(s),
            Err(e) => {
                assert!(Instant::now() < deadline, "never served: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let mut snd = snd.unwrap();
    assert_eq!(snd.config().streams, 2);
    snd.disconnect().unwrap();
    let o = run(&["ctl", "--api-socket", api.to_str().unwrap(), "status"]);
    assert!(o.status.success(), "{}", text(&o));
    let log = fs::read_to_string(dir.path().join("log")).unwrap();
    assert!(log.contains("listening on fd 3"), "{log}");
    assert!(log.contains("management API on inherited fd 4"), "{log}");
    // SAFETY: our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + STOP;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

/// An ALSA PCM missing for a while, with the default retry: alsa-lib's
/// complaints reach the log through the daemon's logging, a bounded
/// number of times, and the PCM is noticed about a second after it comes
/// back (the retry is capped at 1 s).
#[test]
fn a_missing_pcm_is_noticed_soon_after_it_returns_and_alsa_noise_is_bounded() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let asound = dir.path().join("asound.conf");
    fs::write(&asound, "").unwrap();
    let api = dir.path().join("api.sock");
    let toml = format!(
        "[daemon]\napi_socket = \"{}\"\n\n[devices.x]\nkind = \"alsa\"\npcm = \"vsound_late\"\n\n[[streams]]\ndirection = \"output\"\ndevice = \"x\"\n",
        api.display()
    );
    let mut d = Daemon::spawn_with(&DaemonOptions {
        config_toml: Some(toml),
        rust_log: "info".into(),
        env: vec![(
            "ALSA_CONFIG_PATH".to_owned(),
            format!("/usr/share/alsa/alsa.conf:{}", asound.display()),
        )],
        ..DaemonOptions::default()
    })
    .unwrap();
    wait_for(&api);
    thread::sleep(Duration::from_secs(6));
    let log = d.log();
    let noise = log.lines().filter(|l| l.contains("alsa-lib")).count();
    let raw = log.lines().filter(|l| l.starts_with("ALSA lib ")).count();
    eprintln!("6 s absent: {noise} alsa-lib lines through the log, {raw} raw");
    assert_eq!(raw, 0, "alsa-lib wrote to stderr itself:\n{log}");
    assert!((1..=4).contains(&noise), "{noise} lines in 6 s:\n{log}");

    fs::write(&asound, "pcm.vsound_late { type null }\n").unwrap();
    fs::File::options()
        .write(true)
        .open(&asound)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(2_000_000))
        .unwrap();
    let back = Instant::now();
    loop {
        let o = run(&[
            "ctl",
            "--api-socket",
            api.to_str().unwrap(),
            "--json",
            "status",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if v["result"]["devices"][0]["attached"] == true {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_millis(2500),
            "not noticed within 2.5 s: {}",
            d.log_tail(10)
        );
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("noticed {:?} after it came back", back.elapsed());
    d.check_alive().unwrap();
}
