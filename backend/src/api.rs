//! The management API: line-delimited JSON on a Unix socket
//! (`--api-socket PATH` or `[daemon] api_socket`), and its client
//! (`vsound ctl`).
//!
//! Requests, one JSON object per line:
//! `{"cmd":"status"}`, `{"cmd":"detach","device":"NAME"}`,
//! `{"cmd":"attach","device":"NAME"}`. Each gets one line back:
//! `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`. A bad
//! request gets an error line, never a silent close.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::daemon::DaemonState;
use crate::stream::PcmState;

/// A request line longer than this is refused.
const MAX_LINE: usize = 4096;
/// A client that sends nothing for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The running API server; dropping it stops it and removes the socket.
pub struct ApiServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    pub fn start(path: &Path, state: Arc<DaemonState>) -> io::Result<ApiServer> {
        if path.exists() {
            // A stale socket from an earlier run (a live one refuses).
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another daemon serves it",
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        log::info!("management API on {}", path.display());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vsound-api".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::SeqCst) {
                        return;
                    }
                    match conn {
                        Ok(c) => {
                            let st = state.clone();
                            let _ = std::thread::Builder::new()
                                .name("vsound-api-conn".into())
                                .spawn(move || serve(c, &st));
                        }
                        Err(e) => log::warn!("management API: accept: {e}"),
                    }
                }
            })?;
        Ok(ApiServer {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(conn: UnixStream, state: &DaemonState) {
    let _ = conn.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        line.clear();
        let reply = match Read::by_ref(&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(n) if n > MAX_LINE => error("request line too long"),
            Ok(_) if line.trim().is_empty() => continue,
            Ok(_) => handle(line.trim(), state),
        };
        let mut text = reply.to_string();
        text.push('\n');
        if out.write_all(text.as_bytes()).is_err() {
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
            json!({ "ok": true, "result": { "device": name, "changed": changed, "attached": dev.is_present() } })
        }
        ("", _) => error("missing \"cmd\" (status, detach, attach)"),
        (other, _) => error(format!(
            "unknown command `{other}` (status, detach, attach)"
        )),
    }
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
            json!({
                "name": d.name,
                "kind": d.kind(),
                "attached": d.is_present(),
                "operator_detached": d.admin_detached(),
                "since": d.since(),
                "removals": d.removals(),
                "counters": counters,
            })
        })
        .collect();
    let current = state.current();
    let streams: Vec<Value> = state
        .config
        .streams
        .iter()
        .enumerate()
        .map(|(id, sc)| {
            let device = state.devices.get(sc.device).map(|d| d.name.clone());
            let rt = current.as_ref().and_then(|c| c.streams.get(id).cloned());
            let (st, params, bytes, xruns, latency) = match &rt {
                Some(s) => {
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
                    let frames = inner.negotiated.map(|n| n.params.frame_bytes()).unwrap_or(1).max(1);
                    (
                        inner.state,
                        params,
                        inner.stats.bytes / u64::from(frames),
                        inner.stats.xruns,
                        inner.stats.latency_bytes,
                    )
                }
                None => (PcmState::Idle, None, 0, 0, 0),
            };
            json!({
                "id": id,
                "direction": sc.direction.name(),
                "group": sc.group,
                "device": device,
                "on_remove": match sc.on_remove { crate::config::OnRemove::Silence => "silence", crate::config::OnRemove::Error => "error" },
                "state": st.to_string(),
                "params": params,
                "frames": bytes,
                "xruns": xruns,
                "latency_bytes": latency,
            })
        })
        .collect();
    let connected = state
        .vmm_connected
        .load(std::sync::atomic::Ordering::SeqCst);
    json!({ "vmm_connected": connected, "devices": devices, "streams": streams })
}

/// `vsound ctl`: sends one request and prints the reply. Returns whether
/// the daemon answered ok.
pub fn ctl(path: &Path, request: &Value) -> Result<Value, String> {
    let mut conn = UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut text = request.to_string();
    text.push('\n');
    conn.write_all(text.as_bytes())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut line = String::new();
    BufReader::new(conn)
        .read_line(&mut line)
        .map_err(|e| format!("no answer: {e}"))?;
    serde_json::from_str(line.trim()).map_err(|e| format!("bad answer `{}`: {e}", line.trim()))
}
