#![no_main]
//! The management API on a real `DaemonState` (default config, with a
//! current `SoundDevice` so that `status` reports live streams): the whole
//! input as bytes through the server's framing (`api::serve_conn`, which
//! runs every line it reads through `api::handle`: over-long, non-UTF-8
//! and unterminated lines), over a connection in memory that hands the
//! bytes over in reads of 1 to 512 bytes (the input's hash picks the
//! size); and through `handle` directly the lines the framing does not
//! run (an over-long one, the unterminated last piece).
//! One input in 256 (by its hash) also goes through the real server
//! (`ApiServer::start` on a temporary socket, a thread per connection):
//! that costs about 4 ms an input, where the rest costs tens of µs, so
//! every input through it would make ten million executions a matter of
//! half a day.
//!
//! Checked: never a panic; every reply is one JSON object with a boolean
//! `ok`, an `error` string when not ok and a `result` when ok; the server
//! answers exactly the lines its framing reads (a model of it below), then
//! closes. Host devices are attached again after each input.
//!
//! The server is checked against the module's documented contract ("a
//! request line longer than 4096 bytes is refused", "a bad request gets an
//! error line, never a silent close"): see `model`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use vsound::api::{handle, serve_conn, ApiConn, ApiServer};
use vsound::config::Config;
use vsound::daemon::DaemonState;
use vsound::device::SoundDevice;

const MAX_LINE: usize = 4096;

struct Api {
    state: Arc<DaemonState>,
    _dev: Arc<SoundDevice>,
    _server: ApiServer,
    path: std::path::PathBuf,
}

static API: OnceLock<Api> = OnceLock::new();

fn api() -> &'static Api {
    API.get_or_init(|| {
        vsound_fuzz::ignore_sigpipe();
        let config = Config::default_config().unwrap();
        let state = DaemonState::new(&config).unwrap();
        let dev = SoundDevice::new(&config, &state.devices).unwrap();
        vsound::fuzzing::set_current_device(&state, &dev);
        let dir = std::env::temp_dir().join(format!("vsound-fuzz-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let server = ApiServer::start(&path, &Default::default(), state.clone()).unwrap();
        Api {
            state,
            _dev: dev,
            _server: server,
            path,
        }
    })
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn check_reply(v: &Value, what: &str) {
    let ok = v
        .get("ok")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("{what}: no boolean `ok` in {v}"));
    if ok {
        assert!(
            v.get("result").is_some(),
            "{what}: ok without a result: {v}"
        );
    } else {
        assert!(
            v.get("error").and_then(Value::as_str).is_some(),
            "{what}: not ok without an error: {v}"
        );
    }
}

/// The documented contract (api.rs): every line the client ends with a
/// newline gets exactly one reply — an error for one longer than
/// `MAX_LINE` bytes (its tail is never run) or not UTF-8, nothing for a
/// blank one, the answer otherwise; an unterminated last line gets none
/// (the connection ends before it does).
fn model(data: &[u8]) -> usize {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    // The piece after the last newline (empty if the input ends with one)
    // is not a line yet.
    lines.pop();
    lines
        .iter()
        .filter(|l| {
            l.len() > MAX_LINE
                || std::str::from_utf8(l).map_or(true, |t| !t.trim().is_empty())
        })
        .count()
}

/// A client in memory: its bytes in reads of at most `chunk`, then EOF;
/// the server's replies collected.
struct MemConn<'a> {
    input: &'a [u8],
    chunk: usize,
    out: Vec<u8>,
}

impl std::io::Write for MemConn<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ApiConn for MemConn<'_> {
    fn read_within(&mut self, buf: &mut [u8], _deadline: Option<std::time::Instant>) -> Option<usize> {
        let n = self.input.len().min(buf.len()).min(self.chunk);
        if n == 0 {
            return None;
        }
        let (head, rest) = self.input.split_at(n);
        buf[..n].copy_from_slice(head);
        self.input = rest;
        Some(n)
    }
}

/// FNV-1a.
fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The replies a server wrote: each one JSON line with the fields every
/// reply has; returns how many.
fn check_replies(out: &[u8], what: &str) -> usize {
    let text = std::str::from_utf8(out).expect("replies are UTF-8");
    let mut replies = 0;
    for line in text.split_terminator('\n') {
        let v: Value = serde_json::from_str(line).expect("each reply is one JSON line");
        check_reply(&v, what);
        replies += 1;
    }
    assert!(
        out.is_empty() || out.ends_with(b"\n"),
        "{what}: a reply is a whole line"
    );
    replies
}

fuzz_target!(|data: &[u8]| {
    let api = api();
    let h = hash(data);

    // 1. Through `handle`, the lines the framing (2.) does not run: an
    // over-long one and the unterminated last piece (the framing runs the
    // rest through `handle` itself).
    let pieces = data.split(|&b| b == b'\n').count();
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if line.len() <= MAX_LINE && i + 1 < pieces {
            continue;
        }
        if let Ok(text) = std::str::from_utf8(line) {
            let reply = handle(text.trim(), &api.state);
            check_reply(&reply, "handle");
            // A reply is sent as one line.
            assert!(!reply.to_string().contains('\n'));
        }
    }

    // 2. The bytes through the server's framing, in memory.
    let mut conn = MemConn {
        input: data,
        chunk: 1 + (h % 512) as usize,
        out: Vec::new(),
    };
    serve_conn(&mut conn, &api.state);
    let replies = check_replies(&conn.out, "framing");
    assert_eq!(replies, model(data), "replies to {} input bytes", data.len());

    // 3. One input in 256: the same bytes through the real server.
    if (h >> 32) % 256 == 0 {
        through_socket(api, data);
    }

    for d in &api.state.devices {
        d.admin_attach();
    }
});

fn through_socket(api: &Api, data: &[u8]) {
    let threads_before = threads();
    let mut c = UnixStream::connect(&api.path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may close early (a bad line): EPIPE is fine.
    let _ = c.write_all(data);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    if let Err(e) = c.read_to_end(&mut out) {
        // A reset after an early close loses nothing we check.
        assert!(
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut,
            "the server did not answer within 10 s"
        );
    }
    drop(c);
    // The server's thread for this connection exits once it closed (and
    // before the next input: LeakSanitizer would see its thread-locals).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while threads() > threads_before {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection's thread is left behind"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    let replies = check_replies(&out, "server");
    assert_eq!(replies, model(data), "replies to {} input bytes", data.len());
}
