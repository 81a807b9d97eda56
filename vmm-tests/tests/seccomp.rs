//! The seccomp sandbox (`--seccomp`, backend/src/sandbox.rs), through the
//! real binary:
//! - a forbidden call ends the daemon with exit code 159 and is named on
//!   stderr (`on`, the default), or fails with ENOSYS and is named once
//!   (`log`); `off` lets it through. The hidden `--seccomp-selftest` makes
//!   the call once the sandbox is up: on the main thread (no filter allows
//!   it) or on a thread whose own filter forbids what the process filter
//!   allows. The files glibc opens lazily from any thread fail with EACCES
//!   instead, unreported.
//! - every thread of a running daemon (streams, watchdog, watch, the
//!   vhost-user request and queue threads, API, pad, ALSA monitor) is under
//!   the process filter and its own.
//!
//! Every other test of this crate and the guest suite run the daemon with
//! the sandbox on: that is the test that it allows what the daemon does.
//!
//! Needs the `vsound` binary: `cargo build --bin vsound` first, or set
//! `VSOUND_BIN`.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(target_arch = "x86_64")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use vmm_tests::audio::Geometry;
use vmm_tests::snd::{PcmFormat, PcmRate};
use vmm_tests::{ConnectOptions, Daemon, DaemonOptions, Queue, Status};

/// The exit code of a daemon ended by a forbidden call.
const KILLED: i32 = 159;

fn selftest(args: &[&str]) -> (Output, String, String) {
    let out = Command::new(Daemon::binary().unwrap())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn reports<'a>(stderr: &'a str, call: &str) -> Vec<&'a str> {
    let needle = format!("vsound: seccomp: forbidden syscall {call}");
    stderr.lines().filter(|l| l.starts_with(&needle)).collect()
}

#[test]
fn by_default_a_forbidden_call_ends_the_daemon_and_is_named() {
    let (out, stdout, stderr) = selftest(&["--seccomp-selftest", "process"]);
    assert_eq!(out.status.code(), Some(KILLED), "{stderr}");
    let lines = reports(&stderr, "personality (135) in thread main (tid ");
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].ends_with("; exiting"), "{stderr}");
    assert!(!stdout.contains("selftest"), "the call returned: {stdout}");
    assert!(stderr.contains("seccomp sandbox on"), "{stderr}");
}

#[test]
fn a_thread_is_held_to_its_own_filter() {
    // socket(AF_UNIX) is in the process filter (the daemon binds sockets),
    // not in the filter of a connection's watch thread.
    let (out, _, stderr) = selftest(&["--seccomp=on", "--seccomp-selftest", "thread"]);
    assert_eq!(out.status.code(), Some(KILLED), "{stderr}");
    let lines = reports(&stderr, "socket (41) in thread selftest-watch (tid ");
    assert_eq!(lines.len(), 1, "{stderr}");
}

#[test]
fn log_mode_names_the_call_once_and_it_fails_with_enosys() {
    for (which, call, shown) in [
        ("process", "personality", "personality (135) in thread main"),
        ("thread", "socket", "socket (41) in thread selftest-watch"),
    ] {
        let (out, stdout, stderr) = selftest(&["--seccomp=log", "--seccomp-selftest", which]);
        assert!(out.status.success(), "{which}: {stderr}");
        // The selftest makes the call twice: reported once.
        let lines = reports(&stderr, shown);
        assert_eq!(lines.len(), 1, "{which}: {stderr}");
        assert!(
            lines[0].ends_with("; log mode: it fails with ENOSYS"),
            "{which}: {stderr}"
        );
        assert!(
            stdout.contains(&format!(
                "{call} failed: Function not implemented (os error 38)"
            )),
            "{which}: {stdout}"
        );
    }
}

#[test]
fn the_files_glibc_reads_lazily_fail_quietly_instead() {
    // glibc's malloc opens /proc/sys/vm/overcommit_memory the first time a
    // thread's heap shrinks, in whatever thread that is.
    for mode in ["on", "log"] {
        let (out, stdout, stderr) = selftest(&[
            &format!("--seccomp={mode}"),
            "--seccomp-selftest",
            "glibc-file",
        ]);
        assert!(out.status.success(), "{mode}: {stderr}");
        assert!(
            stdout.contains("open failed: Permission denied (os error 13)"),
            "{mode}: {stdout}"
        );
        assert!(!stderr.contains("forbidden syscall"), "{mode}: {stderr}");
    }
}

#[test]
fn off_installs_nothing() {
    let (out, stdout, stderr) = selftest(&["--seccomp=off", "--seccomp-selftest", "thread"]);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("socket returned"), "{stdout}");
    assert!(!stderr.contains("forbidden syscall"), "{stderr}");
}

/// Per thread of `pid`: (name, tid, Seccomp mode, number of filters).
fn threads(pid: u32) -> Vec<(String, u32, u32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = e.unwrap().path();
        let tid: u32 = dir.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // it just ended
        };
        let field = |name: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or_else(|| panic!("no {name} in {status}"))
        };
        out.push((
            comm.trim().to_owned(),
            tid,
            field("Seccomp:"),
            field("Seccomp_filters:"),
        ));
    }
    out
}

/// Waits until every thread named in `expected` exists with at least as
/// many filters as given; returns the threads seen last.
fn wait_for_filters(daemon: &mut Daemon, expected: &[(&str, u32)]) -> Vec<(String, u32, u32, u32)> {
    let pid = daemon.pid().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        daemon.check_alive().unwrap_or_else(|e| panic!("{e}"));
        let seen = threads(pid);
        let by_name: HashMap<&str, u32> = seen
            .iter()
            .filter(|(_, tid, _, _)| *tid != pid)
            .map(|(n, _, _, f)| (n.as_str(), *f))
            .collect();
        if expected
            .iter()
            .all(|(n, f)| by_name.get(n).is_some_and(|have| have >= f))
        {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "threads and their filters: {seen:?}; wanted {expected:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `status` to the API and leaves the connection open (its thread
/// stays).
fn api_client(path: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "no API socket");
        thread::sleep(Duration::from_millis(10));
    }
    let mut c = UnixStream::connect(path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(c.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    c
}

#[test]
fn every_thread_of_a_running_daemon_is_under_its_own_filter() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-seccomp-").unwrap();
    let pad = dir.path().join("pad.sock");
    let api = dir.path().join("api.sock");
    let config = format!(
        "[devices.pad0]\nkind = \"pad\"\npath = {:?}\n\n\
         [[streams]]\ndirection = \"output\"\ndevice = \"pad0\"\n\
         formats = [\"S16\"]\nrates = [48000]\nchannels = {{ min = 2, max = 2 }}\n",
        pad.display().to_string()
    );
    let mut daemon = Daemon::spawn_with(&DaemonOptions {
        config_toml: Some(config),
        extra_args: vec!["--api-socket".into(), api.display().to_string()],
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut snd = daemon.connect(&ConnectOptions::default()).unwrap();
    // A control request: the queue thread takes its first event.
    assert_eq!(snd.pcm_info(0, 1).unwrap().len(), 1);
    let _pad_client = UnixStream::connect(&pad).unwrap();
    let _api_client = api_client(&api);

    // The process filter and the clone3 one, then each thread's own. The
    // request thread bears the program's name, as the main thread does.
    let seen = wait_for_filters(
        &mut daemon,
        &[
            ("vsound-reactor", 3),
            ("vsound-watch", 3),
            ("vsound", 3),
            ("vring_worker", 3),
            ("vsound-api", 3),
            ("vsound-api-conn", 3),
            ("pad-pad0", 3),
        ],
    );
    let pid = daemon.pid().unwrap();
    for (name, tid, mode, filters) in &seen {
        assert_eq!(*mode, 2, "{name} ({tid}) is not in filter mode: {seen:?}");
        if *tid == pid {
            assert_eq!(*filters, 2, "the main thread: {seen:?}");
        }
    }
    let log = daemon.log();
    assert!(log.contains("seccomp sandbox on: process "), "{log}");
    assert!(!log.contains("host device group"), "{log}");
    assert!(!log.contains("forbidden syscall"), "{log}");
    snd.disconnect().unwrap();
}

#[test]
fn alsa_monitors_and_io_threads_run_under_their_filters() {
    // A PCM defined nowhere: the monitor probes it (alsa-lib reads its
    // configuration each time) every 20 ms. And alsa-lib's `null` PCM,
    // played: the stream's I/O thread opens and serves it.
    let config = "[devices.gone]\nkind = \"alsa\"\npcm = \"vs_missing\"\nretry_ms = 20\n\n\
                  [devices.nul]\nkind = \"alsa\"\npcm = \"null\"\n\n\
                  [[streams]]\ndirection = \"output\"\ndevice = \"gone\"\n\
                  formats = [\"S16\"]\nrates = [48000]\nchannels = { min = 2, max = 2 }\n\n\
                  [[streams]]\ndirection = \"output\"\ndevice = \"nul\"\n\
                  formats = [\"S16\"]\nrates = [48000]\nchannels = { min = 2, max = 2 }\n";
    let mut daemon = Daemon::spawn_with(&DaemonOptions {
        config_toml: Some(config.into()),
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut snd = daemon.connect(&ConnectOptions::default()).unwrap();
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    assert_eq!(g.set_params(&mut snd, 1).unwrap(), Status::Ok);
    assert_eq!(snd.prepare(1).unwrap(), Status::Ok);
    let period = vec![0u8; g.period_bytes()];
    for _ in 0..g.periods {
        snd.tx(1, &period, &[]).unwrap();
    }
    assert_eq!(snd.start(1).unwrap(), Status::Ok);
    let done = snd
        .wait_io_count(Queue::Tx, 2, Duration::from_secs(10))
        .unwrap();
    assert!(done.len() >= 2, "{done:?}");
    // The I/O thread starts under the reactor's filters (3) and adds its own.
    wait_for_filters(
        &mut daemon,
        &[("alsa-gone", 3), ("vsound-reactor", 3), ("alsa-io", 4)],
    );
    thread::sleep(Duration::from_millis(300));
    daemon.check_alive().unwrap_or_else(|e| panic!("{e}"));
    let log = daemon.log();
    assert!(log.contains("(with the host device group)"), "{log}");
    assert!(!log.contains("forbidden syscall"), "{log}");
    snd.disconnect().unwrap();
}
