//! The management API: line-delimited JSON on a Unix socket
//! (`--api-socket PATH` or `[daemon] api_socket`), and its client
//! (`vsound ctl`).
//!
//! Requests, one JSON object per line:
//! `{"cmd":"status"}`, `{"cmd":"detach","device":"NAME"}`,
//! `{"cmd":"attach","device":"NAME"}`. Each gets one line back:
//! `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`. A bad
//! request gets an error line, never a silent close.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vsound_devices::unix_socket::{self, Access, SocketFile};

use crate::daemon::DaemonState;
use crate::stream::PcmState;

/// A request line longer than this is refused.
const MAX_LINE: usize = 4096;
/// A client that sends nothing for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request, once its first byte came, must be whole within this.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// A client that does not read its reply within this is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; the next is told so and closed.
const MAX_CLIENTS: usize = 16;
/// The largest reply `vsound ctl` reads, and how long it waits for all of it.
const MAX_REPLY: usize = 4 << 20;
const CTL_DEADLINE: Duration = Duration::from_secs(10);

/// The running API server; dropping it stops it and removes the socket.
pub struct ApiServer {
    stop: Arc<AtomicBool>,
    /// The listening socket's fd, to wake the accept loop (`shutdown`).
    listen_fd: RawFd,
    thread: Option<JoinHandle<()>>,
    /// Removed when the server stops (none for an inherited socket).
    _file: Option<SocketFile>,
}

impl ApiServer {
    /// Creates the socket at `path` (see [`unix_socket::listen`]: never a
    /// live socket stolen, never a link followed) and serves it.
    pub fn start(path: &Path, access: &Access, state: Arc<DaemonState>) -> io::Result<ApiServer> {
        let (listener, file) = unix_socket::listen(path, access).map_err(io::Error::other)?;
        log::info!("management API on {}", path.display());
        Self::serve_listener(listener, Some(file), state)
    }

    /// Serves an already listening socket (socket activation).
    pub fn serve_listener(
        listener: UnixListener,
        file: Option<SocketFile>,
        state: Arc<DaemonState>,
    ) -> io::Result<ApiServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let listen_fd = listener.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("vsound-api".into())
            .spawn(move || {
                // Its connection threads inherit the filter.
                crate::sandbox::enter(crate::sandbox::ThreadKind::Api);
                let clients = Arc::new(AtomicUsize::new(0));
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    match conn {
                        Ok(mut c) => {
                            if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                                clients.fetch_sub(1, Ordering::SeqCst);
                                let _ = c.set_write_timeout(Some(Duration::from_millis(100)));
                                let mut line = error(format!(
                                    "too many clients (at most {MAX_CLIENTS} at once)"
                                ))
                                .to_string();
                                line.push('\n');
                                let _ = c.write_all(line.as_bytes());
                                continue;
                            }
                            let st = state.clone();
                            let counter = clients.clone();
                            let spawned = std::thread::Builder::new()
                                .name("vsound-api-conn".into())
                                .spawn(move || {
                                    serve(c, &st);
                                    counter.fetch_sub(1, Ordering::SeqCst);
                                });
                            if spawned.is_err() {
                                clients.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) => {
                            log::warn!("management API: accept: {e}");
                            // Out of fds for a moment: do not spin.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })?;
        Ok(ApiServer {
            stop,
            listen_fd,
            thread: Some(thread),
            _file: file,
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop (accept fails with EINVAL from now on),
        // whatever happened to the socket file.
        // SAFETY: the listener is owned by the thread, alive until joined.
        unsafe {
            libc::shutdown(self.listen_fd, libc::SHUT_RDWR);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What reading one request line gave.
enum Line {
    Request(Vec<u8>),
    TooLong,
    /// EOF, an idle client, a request not finished in time, or an error.
    Gone,
}

/// A client connection as the server sees it: reads bounded by a deadline,
/// and writes (bounded by the socket's write timeout). The server's framing
/// ([`serve_conn`]) is written against this, so the fuzzer drives the same
/// code over memory, without a socket or a thread per input.
pub trait ApiConn: Write {
    /// One read, waiting at most until `deadline` (`None`: the idle
    /// timeout); `None` at EOF, timeout or error.
    fn read_within(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> Option<usize>;
}

impl ApiConn for UnixStream {
    fn read_within(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> Option<usize> {
        read_some(self, buf, deadline)
    }
}

/// Reads one line: at most [`IDLE_TIMEOUT`] for its first byte, then at most
/// [`REQUEST_DEADLINE`] for the rest (a slow writer cannot hold the thread).
fn read_line(conn: &mut impl ApiConn, pending: &mut Vec<u8>) -> Line {
    let mut deadline: Option<Instant> = None;
    let mut buf = [0u8; 512];
    loop {
        if let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            return if line.len() > MAX_LINE + 1 {
                Line::TooLong
            } else {
                Line::Request(line)
            };
        }
        if pending.len() > MAX_LINE {
            // Skip the rest of an over-long line.
            pending.clear();
            loop {
                match conn.read_within(&mut buf, deadline) {
                    Some(n) => {
                        if let Some(end) = buf
                            .get(..n)
                            .and_then(|b| b.iter().position(|&x| x == b'\n'))
                        {
                            pending.extend_from_slice(buf.get(end + 1..n).unwrap_or_default());
                            return Line::TooLong;
                        }
                    }
                    None => return Line::Gone,
                }
            }
        }
        let timeout = match deadline {
            None => IDLE_TIMEOUT,
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        if timeout.is_zero() {
            return Line::Gone;
        }
        match conn.read_within(&mut buf, Some(Instant::now() + timeout)) {
            Some(n) => {
                if deadline.is_none() && n > 0 {
                    deadline = Some(Instant::now() + REQUEST_DEADLINE);
                }
                pending.extend_from_slice(buf.get(..n).unwrap_or_default());
            }
            None => return Line::Gone,
        }
    }
}

/// One read, waiting at most until `deadline`; `None` at EOF, timeout or
/// error.
fn read_some(conn: &mut UnixStream, buf: &mut [u8], deadline: Option<Instant>) -> Option<usize> {
    let left = deadline.map_or(IDLE_TIMEOUT, |d| {
        d.saturating_duration_since(Instant::now())
    });
    if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
        return None;
    }
    loop {
        match conn.read(buf) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

fn serve(mut conn: UnixStream, state: &DaemonState) {
    if conn.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    serve_conn(&mut conn, state);
}

/// Serves one client until it hangs up, goes idle, or a write fails: every
/// line it ends gets one JSON reply (an error for one longer than
/// `MAX_LINE` bytes or not UTF-8), blank lines none.
pub fn serve_conn(conn: &mut impl ApiConn, state: &DaemonState) {
    let mut pending = Vec::with_capacity(MAX_LINE);
    loop {
        let reply = match read_line(conn, &mut pending) {
            Line::Gone => return,
            Line::TooLong => error(format!("request line longer than {MAX_LINE} bytes")),
            Line::Request(bytes) => match std::str::from_utf8(&bytes) {
                Err(e) => error(format!(
                    "request is not UTF-8 (byte {} of the line)",
                    e.valid_up_to()
                )),
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => handle(text.trim(), state),
            },
        };
        let mut text = reply.to_string();
        text.push('\n');
        if conn.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn error(msg: impl Into<String>) -> Value {
    json!({ "ok": false, "error": msg.into() })
}

/// Answers one request line.
pub fn handle(line: &str, state: &DaemonState) -> Value {
    let req: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return error(format!("not JSON: {e}")),
    };
    let cmd = req.get("cmd").and_then(Value::as_str).unwrap_or("");
    let device = req.get("device").and_then(Value::as_str);
    match (cmd, device) {
        ("status", _) => json!({ "ok": true, "result": status(state) }),
        ("volume" | "mute", _) => level(cmd, &req, state),
        ("detach" | "attach", None) => error(format!("`{cmd}` needs a \"device\"")),
        ("detach" | "attach", Some(name)) => {
            let Some(dev) = state.device(name) else {
                let known: Vec<&str> = state.devices.iter().map(|d| d.name.as_str()).collect();
                return error(format!(
                    "no device named `{name}` (devices: {})",
                    known.join(", ")
                ));
            };
            let changed = if cmd == "detach" {
                dev.admin_detach()
            } else {
                dev.admin_attach()
            };
            // Attaching a device that went away by itself: probe it now.
            let probing = cmd == "attach" && dev.probe_now();
            json!({ "ok": true, "result": {
                "device": name,
                "changed": changed,
                "probing": probing,
                "attached": dev.is_present(),
            } })
        }
        ("", _) => error("missing \"cmd\" (status, detach, attach, volume, mute)"),
        (other, _) => error(format!(
            "unknown command `{other}` (status, detach, attach, volume, mute)"
        )),
    }
}

/// `{"cmd":"volume","stream":N[,"db":D]}` (reads, or sets to the nearest
/// 0.5 dB step in -60..=0) and `{"cmd":"mute","stream":N,"on":BOOL}`
/// (`on: true` mutes).
fn level(cmd: &str, req: &Value, state: &DaemonState) -> Value {
    let Some(stream) = req
        .get("stream")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
    else {
        return error(format!("`{cmd}` needs a \"stream\" (its id, a number)"));
    };
    let (db, on) = if cmd == "volume" {
        match req.get("db") {
            None | Some(Value::Null) => (None, None),
            Some(v) => match v.as_f64() {
                Some(d) => (Some(d), None),
                None => return error("\"db\" must be a number"),
            },
        }
    } else {
        match req.get("on").and_then(Value::as_bool) {
            Some(mute) => (None, Some(!mute)),
            None => return error("`mute` needs \"on\": true or false"),
        }
    };
    match state.set_level(stream, db, on) {
        Ok((step, on)) => json!({ "ok": true, "result": {
            "stream": stream,
            "volume_db": crate::controls::step_db(step),
            "muted": !on,
        } }),
        Err(e) => error(e),
    }
}

/// A Unix time as RFC 3339 (UTC, seconds).
pub fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| secs.to_string(), |t| t.to_string())
}

/// A time for `status`: when, and for how long until now.
fn when(secs: u64) -> Value {
    json!({ "at": rfc3339(secs), "for_seconds": crate::hotplug::unix_now().saturating_sub(secs) })
}

fn status(state: &DaemonState) -> Value {
    let devices: Vec<Value> = state
        .devices
        .iter()
        .map(|d| {
            let counters: serde_json::Map<String, Value> = d
                .dev
                .counters()
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            let last_error = d
                .last_error()
                .map(|(why, at)| json!({ "message": why, "at": rfc3339(at) }));
            json!({
                "name": d.name,
                "kind": d.kind(),
                "attached": d.is_present(),
                "operator_detached": d.admin_detached(),
                "since": when(d.since()),
                "removals": d.removals(),
                "last_error": last_error,
                "counters": counters,
            })
        })
        .collect();
    // Between connections the current device is the next one's, not yet
    // used: the last connection's figures are the ones to show.
    let connected = state
        .vmm_connected
        .load(std::sync::atomic::Ordering::SeqCst);
    let current = state.current().filter(|_| connected);
    let (streams, from) = match &current {
        Some(dev) => (streams_json(state, dev), json!("this connection")),
        None => match state.last_streams() {
            Some((s, ended)) => (
                s,
                json!(format!("the last connection, ended {}", rfc3339(ended))),
            ),
            None => (streams_json_idle(state), json!("no connection yet")),
        },
    };
    let guest_errors: serde_json::Map<String, Value> = crate::ratelimit::ALL
        .iter()
        .map(|l| (l.name.to_string(), json!(l.total())))
        .collect();
    json!({
        "daemon": { "version": env!("CARGO_PKG_VERSION"), "since": when(state.started) },
        "vmm_connected": connected,
        "vmm_since": if connected { when(state.vmm_since()) } else { Value::Null },
        "devices": devices,
        "streams_from": from,
        "streams": streams,
        "counters": guest_errors,
    })
}

fn stream_base(state: &DaemonState, id: usize) -> Option<serde_json::Map<String, Value>> {
    let sc = state.config.streams.get(id)?;
    let device = state.devices.get(sc.device).map(|d| d.name.clone());
    let mut m = serde_json::Map::new();
    m.insert("id".into(), json!(id));
    m.insert("direction".into(), json!(sc.direction.name()));
    m.insert("group".into(), json!(sc.group));
    m.insert("device".into(), json!(device));
    m.insert(
        "on_remove".into(),
        json!(match sc.on_remove {
            crate::config::OnRemove::Silence => "silence",
            crate::config::OnRemove::Error => "error",
        }),
    );
    Some(m)
}

/// Every configured stream as the device of a connection has it.
pub fn streams_json(state: &DaemonState, dev: &crate::device::SoundDevice) -> Vec<Value> {
    (0..state.config.streams.len())
        .filter_map(|id| {
            let mut m = stream_base(state, id)?;
            let Some(s) = dev.streams.get(id) else {
                return Some(Value::Object(m));
            };
            let inner = s.lock();
            let params = inner.negotiated.map(|n| {
                json!({
                    "format": n.params.format.name(),
                    "rate": n.params.rate,
                    "channels": n.params.channels,
                    "period_bytes": n.params.period_bytes,
                    "buffer_bytes": n.params.buffer_bytes,
                    "features": n.features,
                })
            });
            let st = &inner.stats;
            m.insert("state".into(), json!(inner.state.to_string()));
            m.insert("params".into(), json!(params));
            m.insert("frames".into(), json!(st.frames));
            m.insert(
                "frames_without_device".into(),
                json!(st.frames_without_device),
            );
            m.insert("xruns".into(), json!(st.xruns));
            m.insert("latency_bytes".into(), json!(st.latency_bytes));
            m.insert("rate_ppm".into(), json!(st.rate_ppm));
            m.insert(
                "device_rate_ppm".into(),
                json!(st.device_rate_ppm.map(|p| (p * 10.0).round() / 10.0 + 0.0)),
            );
            m.insert("volume".into(), volume_json(state, id));
            Some(Value::Object(m))
        })
        .collect()
}

fn volume_json(state: &DaemonState, id: usize) -> Value {
    match state.controls.level(id) {
        Some(l) => json!({ "db": crate::controls::step_db(l.step()), "muted": !l.is_on() }),
        None => Value::Null,
    }
}

fn streams_json_idle(state: &DaemonState) -> Vec<Value> {
    (0..state.config.streams.len())
        .filter_map(|id| {
            let mut m = stream_base(state, id)?;
            m.insert("state".into(), json!(PcmState::Idle.to_string()));
            m.insert("params".into(), Value::Null);
            m.insert("frames".into(), json!(0));
            m.insert("frames_without_device".into(), json!(0));
            m.insert("xruns".into(), json!(0));
            m.insert("latency_bytes".into(), json!(0));
            m.insert("rate_ppm".into(), json!(0));
            m.insert("device_rate_ppm".into(), Value::Null);
            m.insert("volume".into(), volume_json(state, id));
            Some(Value::Object(m))
        })
        .collect()
}

/// `vsound ctl`: sends one request and prints the reply. Returns whether
/// the daemon answered ok.
pub fn ctl(path: &Path, request: &Value) -> Result<Value, String> {
    let deadline = Instant::now() + CTL_DEADLINE;
    let mut conn = UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    let _ = conn.set_write_timeout(Some(CTL_DEADLINE));
    let mut text = request.to_string();
    text.push('\n');
    conn.write_all(text.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    // One deadline for the whole reply, and a bound on its size: a slow or
    // hostile server cannot hold `ctl` or fill its memory.
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = reply.iter().position(|&b| b == b'\n') {
            reply.truncate(end);
            break;
        }
        if reply.len() > MAX_REPLY {
            return Err(format!("the answer is longer than {MAX_REPLY} bytes"));
        }
        match read_some(&mut conn, &mut buf, Some(deadline)) {
            Some(n) => reply.extend_from_slice(buf.get(..n).unwrap_or_default()),
            None if Instant::now() >= deadline => {
                return Err(format!("no whole answer within {CTL_DEADLINE:?}"))
            }
            None => return Err("the daemon closed the connection without an answer".into()),
        }
    }
    let line = String::from_utf8_lossy(&reply);
    serde_json::from_str(line.trim()).map_err(|e| format!("bad answer `{}`: {e}", line.trim()))
}
