#![no_main]
//! The vhost-user message stream into the real daemon: each input is one
//! VMM connection served by `vsound::daemon::run` (max one connection) on a
//! listening socket the target owns, so what runs is exactly the daemon's
//! connection path: a fresh `SoundDevice`, `Connection`, `VsoundBackend`,
//! vhost-user-backend's `VhostUserDaemon` and handler, the watch thread,
//! and the teardown. The target is the frontend: it writes the input as
//! vhost-user frames (12-byte header: u32 request, u32 flags, u32 size,
//! then the body), without file descriptors (messages that need one are
//! refused), half-closes, reads every reply until the daemon closes, and
//! joins the daemon.
//!
//! Input: first byte odd: the rest is written verbatim. Even: a sequence
//! of frames, each `request: u8, flags: u8, body length: u8 (u16 with flag
//! 0x40), body, [size: u32 with flag 0x20]`; the header's flags are
//! version 1 plus NEED_REPLY (0x08), or a raw u32 (flag 0x80); its size is
//! the body's length unless flag 0x20 gives another.
//!
//! Checked: no panic; the connection ends on its own (a 10 s bound on
//! reading, then on the join); `run` returns Ok; each connection's threads
//! and fds are gone after it (the process's counts return to their level
//! after the first inputs).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use vsound::config::Config;
use vsound::daemon::{run, SocketSpec};
use vsound_fuzz::Input;

struct Fixture {
    config: Config,
    path: PathBuf,
    listener: UnixListener,
    baseline: std::sync::Mutex<Option<(usize, usize)>>,
    runs: std::sync::atomic::AtomicU64,
}

static FIX: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIX.get_or_init(|| {
        vsound_fuzz::ignore_sigpipe();
        let dir = std::env::temp_dir().join(format!("vsound-fuzz-vu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vhost.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        Fixture {
            config: Config::default_config().unwrap(),
            path,
            listener,
            baseline: std::sync::Mutex::new(None),
            runs: std::sync::atomic::AtomicU64::new(0),
        }
    })
}

/// (threads, fds), fds without pipes: ASan's symbolizer, which libFuzzer
/// starts on its own when it first prints a new function, keeps two.
fn counts() -> (usize, usize) {
    let threads = std::fs::read_dir("/proc/self/task").map(|d| d.count()).unwrap_or(0);
    let fds = fd_list().iter().filter(|f| !f.contains("=pipe:")).count();
    (threads, fds)
}

fn fd_list() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    let target = std::fs::read_link(e.path()).unwrap_or_default();
                    format!("{}={}", e.file_name().to_string_lossy(), target.display())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn frames(data: &[u8]) -> Vec<u8> {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    if mode & 1 != 0 {
        return data[1..].to_vec();
    }
    let mut out = Vec::new();
    while !inp.is_empty() {
        let request = u32::from(inp.u8());
        let fl = inp.u8();
        let flags = if fl & 0x80 != 0 { inp.u32() } else { 0x1 | u32::from(fl & 0x08) };
        let len = if fl & 0x40 != 0 { usize::from(inp.u16() % 2048) } else { usize::from(inp.u8()) };
        let mut body = inp.bytes(len).to_vec();
        body.resize(len, 0);
        let size = if fl & 0x20 != 0 { inp.u32() } else { len as u32 };
        out.extend_from_slice(&request.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&body);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let fix = fixture();
    let bytes = frames(data);

    // SAFETY: dup has no memory-safety preconditions; the new fd is owned
    // by `run` (its Listener closes it).
    let fd: RawFd = unsafe { libc::dup(fix.listener.as_raw_fd()) };
    assert!(fd >= 0);
    let config = fix.config.clone();
    let daemon = std::thread::Builder::new()
        .name("fuzz-daemon".into())
        .spawn(move || run(&config, &SocketSpec::Fd(fd), None, Some(1)))
        .unwrap();

    let mut c = UnixStream::connect(&fix.path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The daemon may end the connection early (a refused message).
    let _ = c.write_all(&bytes);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut replies = Vec::new();
    let started = Instant::now();
    if let Err(e) = c.read_to_end(&mut replies) {
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "the daemon did not end the connection: {e}"
        );
    }
    drop(c);
    let result = daemon.join().expect("the daemon thread panicked");
    assert!(result.is_ok(), "run: {result:?}");

    // Nothing of the connection is left: threads and fds back to where
    // they were after the first inputs.
    let runs = fix.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut base = fix.baseline.lock().unwrap();
    if runs == 8 {
        *base = Some(counts());
        if std::env::var_os("VSOUND_FUZZ_DEBUG").is_some() {
            eprintln!("baseline fds: {:?}", fd_list());
        }
    } else if let Some((threads, fds)) = *base {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let (t, f) = counts();
            if t <= threads && f <= fds {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: {t} threads (was {threads}), {f} fds (was {fds}): {:?}",
                fd_list()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
});
