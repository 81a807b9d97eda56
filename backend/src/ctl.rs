//! `vsound ctl`: the management API's client, for people (a table) and
//! for scripts (`--json`, `metrics` in the Prometheus text format).
//!
//! It finds the API socket from `--api-socket`, else from the `[daemon]
//! api_socket` of `--config FILE`, else from the embedded default
//! configuration (`api_socket = "auto"`: next to the vhost-user socket,
//! `/tmp/vsound-api.sock` for the default `/tmp/vsound.sock`; `--socket`
//! names another vhost-user socket).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::{api_socket_next_to, Config};

/// Options of `vsound ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The daemon's management socket (default: the `[daemon] api_socket`
    /// of --config, or of the embedded default configuration).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// The daemon's configuration file, to find its API socket.
    #[arg(long, value_name = "FILE", conflicts_with = "api_socket")]
    config: Option<PathBuf>,
    /// The daemon's vhost-user socket, when its API socket is "auto" (next
    /// to it).
    #[arg(long, value_name = "PATH", conflicts_with = "api_socket")]
    socket: Option<PathBuf>,
    /// Print the daemon's answer as JSON (for scripts) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: CtlAction,
}

#[derive(Debug, clap::Subcommand)]
enum CtlAction {
    /// Devices (attached or not, since when, removals, last error,
    /// counters) and streams (state, parameters, device, frames, xruns,
    /// latency).
    Status,
    /// Detach a host device: its streams go on per their `on_remove` policy.
    Detach {
        /// The device name (`[devices.NAME]`).
        device: String,
    },
    /// Attach a device detached with `detach` (or marked hung); a device
    /// that went away by itself is probed at once.
    Attach {
        /// The device name (`[devices.NAME]`).
        device: String,
    },
    /// Print the status, then every change as it happens, until
    /// interrupted.
    Watch {
        /// How often to look, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 500)]
        interval_ms: u64,
    },
    /// The status in the Prometheus text exposition format.
    Metrics,
    /// Show a stream's volume, or set it (dB, -60..0, in 0.5 dB steps; the
    /// guest's mixer shows the change).
    Volume {
        /// The stream id (its position in `[[streams]]`).
        stream: u32,
        /// The new level in dB (e.g. -6 or -12.5).
        #[arg(allow_negative_numbers = true)]
        db: Option<f64>,
    },
    /// Mute or unmute a stream.
    Mute {
        /// The stream id.
        stream: u32,
        /// `on` mutes, `off` lets it be heard.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

/// Where the API socket is, from the options.
fn api_path(args: &CtlArgs) -> Result<PathBuf, String> {
    if let Some(p) = &args.api_socket {
        return Ok(p.clone());
    }
    let (config, which) = match &args.config {
        Some(f) => (
            Config::from_file(f).map_err(|e| e.to_string())?,
            f.display().to_string(),
        ),
        None => (
            Config::default_config().map_err(|e| e.to_string())?,
            "the embedded default configuration".to_owned(),
        ),
    };
    match (&config.api_socket, &args.socket) {
        (Some(_), Some(s)) if config.api_socket_auto => Ok(api_socket_next_to(s)),
        (Some(p), _) => Ok(p.clone()),
        (None, _) => Err(format!(
            "{which} names no API socket ([daemon] api_socket); pass --api-socket PATH"
        )),
    }
}

/// Runs `vsound ctl`.
pub fn run(args: CtlArgs) -> ExitCode {
    let path = match api_path(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("vsound ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let req = match &args.action {
        CtlAction::Status | CtlAction::Watch { .. } | CtlAction::Metrics => {
            json!({ "cmd": "status" })
        }
        CtlAction::Detach { device } => json!({ "cmd": "detach", "device": device }),
        CtlAction::Attach { device } => json!({ "cmd": "attach", "device": device }),
        CtlAction::Volume { stream, db } => json!({ "cmd": "volume", "stream": stream, "db": db }),
        CtlAction::Mute { stream, state } => {
            json!({ "cmd": "mute", "stream": stream, "on": state == "on" })
        }
    };
    if let CtlAction::Watch { interval_ms } = args.action {
        return watch(
            &path,
            &req,
            Duration::from_millis(interval_ms.max(50)),
            args.json,
        );
    }
    let reply = match crate::api::ctl(&path, &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vsound ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = reply.get("ok").and_then(Value::as_bool) == Some(true);
    if !ok {
        if args.json {
            eprintln!("{reply}");
        } else {
            let why = reply.get("error").and_then(Value::as_str).unwrap_or("?");
            eprintln!("vsound ctl: {why}");
        }
        return ExitCode::FAILURE;
    }
    let result = reply.get("result").cloned().unwrap_or(Value::Null);
    let shown = match (&args.action, args.json) {
        (_, true) => serde_json::to_string_pretty(&reply).unwrap_or_default(),
        (CtlAction::Status, false) => table(&result),
        (CtlAction::Metrics, _) => metrics(&result),
        (CtlAction::Volume { .. } | CtlAction::Mute { .. }, false) => format!(
            "stream {}: {} dB{}\n",
            s(&result["stream"]),
            s(&result["volume_db"]),
            if result["muted"] == true {
                ", muted"
            } else {
                ""
            }
        ),
        (_, false) => changed(&result),
    };
    print!("{shown}");
    if !shown.ends_with('\n') {
        println!();
    }
    ExitCode::SUCCESS
}

fn watch(path: &Path, req: &Value, every: Duration, json: bool) -> ExitCode {
    let mut last: Vec<String> = Vec::new();
    let mut failing = false;
    loop {
        match crate::api::ctl(path, req) {
            Ok(reply) => {
                failing = false;
                let result = reply.get("result").cloned().unwrap_or(Value::Null);
                let now = jiff::Timestamp::now()
                    .round(jiff::Unit::Second)
                    .unwrap_or_default();
                if json {
                    println!("{}", json!({ "at": now.to_string(), "status": result }));
                } else {
                    let lines: Vec<String> = table(&without_ages(&result))
                        .lines()
                        .map(str::to_owned)
                        .collect();
                    let fresh: Vec<&String> = if last.is_empty() {
                        lines.iter().collect()
                    } else {
                        lines.iter().filter(|l| !last.contains(l)).collect()
                    };
                    if !fresh.is_empty() {
                        println!("-- {now}");
                        for l in fresh {
                            println!("{l}");
                        }
                    }
                    last = lines;
                }
            }
            Err(e) => {
                if !failing {
                    eprintln!("vsound ctl watch: {e}");
                }
                failing = true;
            }
        }
        std::thread::sleep(every);
    }
}

/// The status without what changes every second by itself (ages), so
/// that `watch` prints real changes only.
fn without_ages(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "for_seconds")
                .map(|(k, v)| (k.clone(), without_ages(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_ages).collect()),
        other => other.clone(),
    }
}

/// "3 s", "2 min 5 s", "1 h 2 min", "3 d 4 h".
pub fn age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn when(v: &Value) -> String {
    match (v.get("at"), v.get("for_seconds").and_then(Value::as_u64)) {
        (Some(at), Some(n)) => format!("{} ({} ago)", s(at), age(n)),
        (Some(at), None) => s(at),
        _ => "-".into(),
    }
}

/// Columns padded to their widest cell.
fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn params(p: &Value) -> String {
    if p.is_null() {
        return "-".into();
    }
    format!(
        "{} {} Hz {} ch, period {} B",
        s(&p["format"]),
        s(&p["rate"]),
        s(&p["channels"]),
        s(&p["period_bytes"])
    )
}

/// The status answer as a person reads it.
pub fn table(st: &Value) -> String {
    let mut out = String::new();
    let daemon = &st["daemon"];
    let _ = write!(
        out,
        "vsound {}, up since {}; ",
        s(&daemon["version"]),
        when(&daemon["since"])
    );
    if st["vmm_connected"] == true {
        let _ = writeln!(out, "a VMM connected since {}", when(&st["vmm_since"]));
    } else {
        let _ = writeln!(out, "no VMM connected");
    }
    out.push('\n');
    let mut rows = vec![vec![
        "DEVICE".to_owned(),
        "KIND".into(),
        "STATE".into(),
        "SINCE".into(),
        "REMOVALS".into(),
        "LAST ERROR".into(),
    ]];
    let mut counters = Vec::new();
    for d in st["devices"].as_array().into_iter().flatten() {
        let state = if d["attached"] == true {
            "attached"
        } else if d["operator_detached"] == true {
            "detached (operator)"
        } else {
            "absent"
        };
        let last = match &d["last_error"] {
            Value::Null => "-".to_owned(),
            e => format!("{} (at {})", s(&e["message"]), s(&e["at"])),
        };
        rows.push(vec![
            s(&d["name"]),
            s(&d["kind"]),
            state.into(),
            when(&d["since"]),
            s(&d["removals"]),
            last,
        ]);
        if let Some(c) = d["counters"].as_object().filter(|c| !c.is_empty()) {
            let list: Vec<String> = c.iter().map(|(k, v)| format!("{k}={}", s(v))).collect();
            counters.push(format!("  {}: {}", s(&d["name"]), list.join(" ")));
        }
    }
    out.push_str(&columns(&rows));
    if !counters.is_empty() {
        out.push_str("device counters:\n");
        for c in counters {
            out.push_str(&c);
            out.push('\n');
        }
    }
    out.push('\n');
    let mut rows = vec![vec![
        "STREAM".to_owned(),
        "DIRECTION".into(),
        "GROUP".into(),
        "DEVICE".into(),
        "STATE".into(),
        "PARAMETERS".into(),
        "FRAMES".into(),
        "WITHOUT DEVICE".into(),
        "XRUNS".into(),
        "LATENCY".into(),
        "VOLUME".into(),
    ]];
    for x in st["streams"].as_array().into_iter().flatten() {
        rows.push(vec![
            s(&x["id"]),
            s(&x["direction"]),
            s(&x["group"]),
            s(&x["device"]),
            s(&x["state"]),
            params(&x["params"]),
            s(&x["frames"]),
            s(&x["frames_without_device"]),
            s(&x["xruns"]),
            format!("{} B", s(&x["latency_bytes"])),
            match &x["volume"] {
                Value::Null => "-".to_owned(),
                v if v["muted"] == true => format!("{} dB, muted", s(&v["db"])),
                v => format!("{} dB", s(&v["db"])),
            },
        ]);
    }
    out.push_str(&columns(&rows));
    let _ = writeln!(out, "(streams of {})", s(&st["streams_from"]));
    let errors: Vec<String> = st["counters"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64().is_some_and(|n| n > 0))
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    let _ = writeln!(
        out,
        "guest errors: {}",
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors.join(" ")
        }
    );
    out
}

/// What `attach`/`detach` did.
fn changed(r: &Value) -> String {
    let dev = s(&r["device"]);
    let state = if r["attached"] == true {
        "attached"
    } else {
        "not attached"
    };
    let what = match (r["changed"] == true, r["probing"] == true) {
        (true, _) => "done",
        (false, true) => "probing it now",
        (false, false) => "nothing to do",
    };
    format!("{dev}: {what}; {state}\n")
}

/// A Prometheus label value, escaped.
fn label(v: &Value) -> String {
    s(v).replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn num(v: &Value) -> String {
    match v {
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::Number(n) => n.to_string(),
        _ => "0".into(),
    }
}

/// The status in the Prometheus text exposition format (version 0.0.4).
pub fn metrics(st: &Value) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    };
    family(
        "vsound_vmm_connected",
        "gauge",
        "Whether a VMM is connected.",
        vec![(String::new(), num(&st["vmm_connected"]))],
    );
    let devices: Vec<&Value> = st["devices"].as_array().into_iter().flatten().collect();
    let dl = |d: &Value| {
        format!(
            "device=\"{}\",kind=\"{}\"",
            label(&d["name"]),
            label(&d["kind"])
        )
    };
    family(
        "vsound_device_attached",
        "gauge",
        "Whether the host device is present.",
        devices
            .iter()
            .map(|d| (dl(d), num(&d["attached"])))
            .collect(),
    );
    family(
        "vsound_device_removals_total",
        "counter",
        "Times the host device went away.",
        devices
            .iter()
            .map(|d| (dl(d), num(&d["removals"])))
            .collect(),
    );
    let mut counters = Vec::new();
    for d in &devices {
        for (k, v) in d["counters"].as_object().into_iter().flatten() {
            let l = format!("{},counter=\"{}\"", dl(d), label(&json!(k)));
            counters.push((l, num(v)));
        }
    }
    family(
        "vsound_device_counter",
        "untyped",
        "The host device's own counters (pad: clients, dropped bytes, ...).",
        counters,
    );
    let streams: Vec<&Value> = st["streams"].as_array().into_iter().flatten().collect();
    let sl = |x: &Value| {
        format!(
            "stream=\"{}\",direction=\"{}\",device=\"{}\"",
            label(&x["id"]),
            label(&x["direction"]),
            label(&x["device"])
        )
    };
    family(
        "vsound_stream_running",
        "gauge",
        "Whether the stream is started.",
        streams
            .iter()
            .map(|x| (sl(x), u8::from(x["state"] == "Started").to_string()))
            .collect(),
    );
    for (key, name, help) in [
        (
            "frames",
            "vsound_stream_frames_total",
            "Frames moved between the guest and a host device.",
        ),
        (
            "frames_without_device",
            "vsound_stream_frames_without_device_total",
            "Frames played into nothing or recorded as silence (no device).",
        ),
        (
            "xruns",
            "vsound_stream_xruns_total",
            "Gaps the guest heard.",
        ),
    ] {
        family(
            name,
            "counter",
            help,
            streams.iter().map(|x| (sl(x), num(&x[key]))).collect(),
        );
    }
    family(
        "vsound_stream_latency_bytes",
        "gauge",
        "Bytes buffered between the guest and the host device.",
        streams
            .iter()
            .map(|x| (sl(x), num(&x["latency_bytes"])))
            .collect(),
    );
    family(
        "vsound_stream_volume_db",
        "gauge",
        "The stream's volume in dB (streams with controls).",
        streams
            .iter()
            .filter(|x| !x["volume"].is_null())
            .map(|x| (sl(x), num(&x["volume"]["db"])))
            .collect(),
    );
    family(
        "vsound_guest_errors_total",
        "counter",
        "Malformed guest requests, by kind.",
        st["counters"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (format!("kind=\"{}\"", label(&json!(k))), num(v)))
            .collect(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Value {
        json!({
            "daemon": { "version": "0.1.0", "since": { "at": "2026-12-02T04:00:00Z", "for_seconds": 3725 } },
            "vmm_connected": true,
            "vmm_since": { "at": "2026-12-02T05:02:00Z", "for_seconds": 5 },
            "devices": [
                { "name": "pad0", "kind": "pad", "attached": true, "operator_detached": false,
                  "since": { "at": "2026-12-02T04:00:00Z", "for_seconds": 3725 }, "removals": 2,
                  "last_error": { "message": "the device went away", "at": "2026-12-02T04:30:00Z" },
                  "counters": { "clients": 3 } },
                { "name": "spk\"1", "kind": "alsa", "attached": false, "operator_detached": true,
                  "since": { "at": "2026-12-02T05:00:00Z", "for_seconds": 125 }, "removals": 1,
                  "last_error": null, "counters": {} }
            ],
            "streams_from": "this connection",
            "streams": [
                { "id": 0, "direction": "output", "group": 0, "device": "pad0", "state": "Started",
                  "params": { "format": "S16", "rate": 48000, "channels": 2, "period_bytes": 1920, "buffer_bytes": 7680, "features": 0 },
                  "frames": 48000, "frames_without_device": 0, "xruns": 1, "latency_bytes": 3840 },
                { "id": 1, "direction": "input", "group": 0, "device": "spk\"1", "state": "Idle",
                  "params": null, "frames": 0, "frames_without_device": 96, "xruns": 0, "latency_bytes": 0 }
            ],
            "counters": { "bad_tx_message": 0, "bad_control_request": 4 }
        })
    }

    #[test]
    fn ages_read_like_a_person_would_say_them() {
        assert_eq!(age(3), "3 s");
        assert_eq!(age(125), "2 min 5 s");
        assert_eq!(age(3725), "1 h 2 min");
        assert_eq!(age(3 * 86_400 + 4 * 3_600 + 9), "3 d 4 h");
    }

    #[test]
    fn the_table_shows_devices_streams_times_and_errors() {
        let t = table(&sample());
        assert!(t.starts_with("vsound 0.1.0, up since 2026-12-02T04:00:00Z (1 h 2 min ago); a VMM connected since 2026-12-02T05:02:00Z (5 s ago)"), "{t}");
        let dev = t.lines().find(|l| l.starts_with("pad0")).unwrap();
        assert!(
            dev.contains("attached")
                && dev.contains("the device went away (at 2026-12-02T04:30:00Z)"),
            "{dev}"
        );
        assert!(t.contains("detached (operator)"), "{t}");
        assert!(t.contains("  pad0: clients=3"), "{t}");
        let s0 = t.lines().find(|l| l.starts_with("0 ")).unwrap();
        assert!(
            s0.contains("S16 48000 Hz 2 ch, period 1920 B")
                && s0.contains("48000")
                && s0.contains("3840 B"),
            "{s0}"
        );
        assert!(t.contains("(streams of this connection)"));
        assert!(t.contains("guest errors: bad_control_request=4"), "{t}");
        // Columns line up: the header's STATE starts where each row's does.
        let header = t.lines().find(|l| l.starts_with("STREAM")).unwrap();
        let col = header.find("STATE").unwrap();
        assert_eq!(&s0[col..col + 7], "Started", "{t}");
    }

    #[test]
    fn metrics_are_valid_prometheus_text_with_escaped_labels() {
        let m = metrics(&sample());
        assert!(m.contains("vsound_vmm_connected 1\n"));
        assert!(m.contains("vsound_device_attached{device=\"pad0\",kind=\"pad\"} 1\n"));
        assert!(m.contains("vsound_device_attached{device=\"spk\\\"1\",kind=\"alsa\"} 0\n"));
        assert!(m.contains(
            "vsound_device_counter{device=\"pad0\",kind=\"pad\",counter=\"clients\"} 3\n"
        ));
        assert!(m.contains(
            "vsound_stream_running{stream=\"0\",direction=\"output\",device=\"pad0\"} 1\n"
        ));
        assert!(m.contains(
            "vsound_stream_frames_total{stream=\"0\",direction=\"output\",device=\"pad0\"} 48000\n"
        ));
        assert!(m.contains("vsound_guest_errors_total{kind=\"bad_control_request\"} 4\n"));
        // Every sample line belongs to a family declared just before it.
        let mut declared = std::collections::HashSet::new();
        for line in m.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }

    #[test]
    fn watch_ignores_ages_only() {
        let a = sample();
        let mut b = sample();
        b["daemon"]["since"]["for_seconds"] = json!(9999);
        assert_eq!(table(&without_ages(&a)), table(&without_ages(&b)));
        b["devices"][0]["attached"] = json!(false);
        assert_ne!(table(&without_ages(&a)), table(&without_ages(&b)));
    }
}
