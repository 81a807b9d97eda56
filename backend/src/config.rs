//! The TOML configuration: schema, defaults and validation.
//!
//! Parsing is two steps: serde (with `deny_unknown_fields`) reads the raw
//! schema, keeping the source span of what later checks need; then
//! [`Config::from_toml`] validates it into plain types. Every error names the
//! file, the line and column, and the key.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use vsound_devices::unix_socket::{self, Access};
use vsound_devices::{registry, Format};

use crate::constants::{rate_code, Direction, CHMAP_MAX_SIZE};

/// The embedded default configuration (`configs/default.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/default.toml");

/// The most streams one daemon serves.
pub const MAX_STREAMS: usize = 1024;
/// The highest function group (it is the ALSA PCM device number in a Linux
/// guest, which has at most 32 per card).
pub const MAX_GROUP: u32 = 31;

/// A configuration error, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

/// What happens to a running stream when its host device goes away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnRemove {
    /// Keep running on the daemon's clock: playback discarded, capture silent.
    #[default]
    Silence,
    /// PREPARE and START answer IO_ERR until the device is back.
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawDirection {
    Output,
    Input,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    #[serde(default, deserialize_with = "some_path")]
    socket: Option<Spanned<PathBuf>>,
    #[serde(default = "default_mode", deserialize_with = "unix_socket::de_mode")]
    socket_mode: u32,
    #[serde(default, deserialize_with = "unix_socket::de_owner")]
    socket_owner: Option<u32>,
    #[serde(default, deserialize_with = "unix_socket::de_group")]
    socket_group: Option<u32>,
    #[serde(default, deserialize_with = "api_path")]
    api_socket: Option<Spanned<ApiPath>>,
    #[serde(default = "default_mode", deserialize_with = "unix_socket::de_mode")]
    api_socket_mode: u32,
    /// Where the volume levels are kept across daemon restarts.
    state_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "unix_socket::de_owner")]
    api_socket_owner: Option<u32>,
    #[serde(default, deserialize_with = "unix_socket::de_group")]
    api_socket_group: Option<u32>,
}

fn default_mode() -> u32 {
    unix_socket::DEFAULT_MODE
}

/// `api_socket`: a path, or `"auto"`: next to the vhost-user socket.
#[derive(Clone, Debug)]
enum ApiPath {
    Auto,
    Path(PathBuf),
}

fn api_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Spanned<ApiPath>>, D::Error> {
    let s: Spanned<String> = Spanned::deserialize(d)?;
    let span = s.span();
    if s.get_ref() == "auto" {
        return Ok(Some(Spanned::new(span, ApiPath::Auto)));
    }
    let p = unix_socket::de_path(serde::de::value::StrDeserializer::<D::Error>::new(
        s.get_ref(),
    ))?;
    Ok(Some(Spanned::new(span, ApiPath::Path(p))))
}

/// The vhost-user socket when neither the command line nor the
/// configuration names one.
pub const DEFAULT_SOCKET: &str = "/tmp/vsound.sock";

/// Where `api_socket = "auto"` puts the API next to the vhost-user socket
/// `socket`: `-api` before a `.sock` extension (`/tmp/vsound.sock` ->
/// `/tmp/vsound-api.sock`), else `.api` appended.
pub fn api_socket_next_to(socket: &Path) -> PathBuf {
    let s = socket.as_os_str().to_string_lossy();
    match s.strip_suffix(".sock") {
        Some(stem) => PathBuf::from(format!("{stem}-api.sock")),
        None => PathBuf::from(format!("{s}.api")),
    }
}

/// A socket path with where it is in the file (for conflicts between
/// paths, found after parsing).
fn some_path<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Spanned<PathBuf>>, D::Error> {
    #[derive(Deserialize)]
    struct P(#[serde(deserialize_with = "unix_socket::de_path")] PathBuf);
    let s: Spanned<P> = Spanned::deserialize(d)?;
    let span = s.span();
    Ok(Some(Spanned::new(span, s.into_inner().0)))
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannels {
    min: u8,
    max: u8,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    direction: RawDirection,
    device: Spanned<String>,
    #[serde(default)]
    group: Option<Spanned<u32>>,
    formats: Option<Spanned<Vec<Spanned<String>>>>,
    rates: Option<Spanned<Vec<Spanned<u32>>>>,
    channels: Option<Spanned<RawChannels>>,
    #[serde(default)]
    on_remove: OnRemove,
    /// Volume and mute controls for the guest (and `vsound ctl volume`).
    #[serde(default)]
    volume: bool,
    /// The initial volume, in dB (-60..=0, in 0.5 dB steps).
    volume_db: Option<Spanned<f64>>,
    /// Whether the stream starts muted.
    #[serde(default)]
    muted: bool,
    /// The controls' name: "NAME Playback Volume" (default "Master") or
    /// "NAME Capture Volume" (default "Capture Volume").
    control_name: Option<Spanned<String>>,
    /// The channel map: one position per channel (`channels.max` of them).
    positions: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    devices: BTreeMap<String, Spanned<toml::Table>>,
    #[serde(default)]
    streams: Vec<Spanned<RawStream>>,
}

/// A configured host device (not yet opened).
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    pub name: String,
    pub kind: String,
    /// The plugin's own options (the table without `kind`).
    pub options: toml::Table,
}

/// A configured guest stream; its id is its position in [`Config::streams`].
#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub direction: Direction,
    /// Index into [`Config::devices`].
    pub device: usize,
    pub group: u32,
    pub formats: Vec<Format>,
    pub rates: Vec<u32>,
    pub channels_min: u8,
    pub channels_max: u8,
    pub on_remove: OnRemove,
    /// `volume = true`: the stream's volume and mute controls.
    pub volume: Option<VolumeConfig>,
    /// `positions`: the channel map of its (group, direction), position
    /// codes, one per channel (`channels_max` of them).
    pub positions: Option<Vec<u8>>,
}

/// A stream's controls as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeConfig {
    /// `control_name`, if given.
    pub name: Option<String>,
    /// The initial volume step (see [`crate::controls`]).
    pub initial_step: u32,
    pub muted: bool,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub socket: Option<PathBuf>,
    /// Who may connect to the vhost-user socket (`socket_mode`, ...).
    pub socket_access: Access,
    pub api_socket: Option<PathBuf>,
    /// `api_socket = "auto"`: [`Config::api_socket`] was derived from the
    /// configured vhost-user socket; a daemon told to listen elsewhere
    /// puts it next to that socket instead ([`api_socket_next_to`]).
    pub api_socket_auto: bool,
    /// Who may use the management API (`api_socket_mode`, ...).
    pub api_socket_access: Access,
    /// `[daemon] state_file`: the volume levels across restarts.
    pub state_file: Option<PathBuf>,
    pub devices: Vec<DeviceConfig>,
    pub streams: Vec<StreamConfig>,
    /// Things that work but may surprise (printed by `check-config`,
    /// logged by the daemon).
    pub warnings: Vec<String>,
}

const DEFAULT_FORMATS: [Format; 1] = [Format::S16];
const DEFAULT_RATES: [u32; 1] = [48000];
/// The largest config file read (a real one is a few KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a regular file of at most [`MAX_CONFIG_BYTES`], without blocking
/// on a FIFO or a device.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read file: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read file: {e}"))?;
    if !meta.is_file() {
        return Err(
            "not a regular file (a config is read from a file, not a FIFO or a device)".into(),
        );
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "{} bytes; a config file may have at most {MAX_CONFIG_BYTES}",
            meta.len()
        ));
    }
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if buf.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("more than {MAX_CONFIG_BYTES} bytes"));
    }
    Ok(buf)
}
/// Where `key = ...` is written inside the table whose body is `table`.
fn key_span(src: &str, table: &Range<usize>, key: &str) -> Option<Range<usize>> {
    // The table's span may cover its header only: read on from its start
    // to the next header.
    let body = src.get(table.start..)?;
    let mut offset = table.start;
    for (i, line) in body.split_inclusive('\n').enumerate() {
        let trimmed = line.trim_start();
        if i > 0 && trimmed.starts_with('[') {
            break;
        }
        if let Some((k, _)) = trimmed.split_once('=') {
            let k = k.trim().trim_matches('"');
            if k == key {
                let indent = line.len() - trimmed.len();
                return Some(offset + indent..offset + line.trim_end().len());
            }
        }
        offset += line.len();
    }
    None
}

/// serde's and toml's messages in a config writer's words (no Rust type
/// names).
fn in_user_words(message: &str, key: &str) -> String {
    let mut m = message.to_owned();
    for (rust, user) in [
        ("struct RawChannels", "a table like { min = 1, max = 2 }"),
        ("struct RawStream", "a [[streams]] table"),
        ("struct RawDaemon", "the [daemon] table"),
        ("struct RawConfig", "a table"),
        ("enum RawDirection", "\"output\" or \"input\""),
        ("enum OnRemove", "\"silence\" or \"error\""),
        ("a sequence", "a list like [ ... ]"),
        ("a map", "a table"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u16", "a whole number from 0 to 65535"),
        ("u8", "a whole number from 0 to 255"),
        ("a string", "a quoted string"),
    ] {
        m = m.replace(rust, user);
    }
    if m == "duplicate key" {
        m = format!("`{key}` is defined twice");
    }
    m
}

/// Where in the source a span starts: (line, column, the key on that line).
fn locate(src: &str, span: Option<Range<usize>>) -> (usize, usize, Option<String>) {
    let Some(span) = span else {
        return (1, 1, None);
    };
    let offset = span.start.min(src.len());
    let before = src.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    let text = src
        .get(line_start..)
        .and_then(|s| s.lines().next())
        .unwrap_or("");
    let header = text.trim();
    if let Some(inner) = header
        .strip_prefix("[[")
        .and_then(|h| h.split("]]").next())
        .or_else(|| header.strip_prefix('[').and_then(|h| h.split(']').next()))
    {
        // `[]` names no table: no key to give.
        let inner = inner.trim();
        return (line, column, (!inner.is_empty()).then(|| inner.to_owned()));
    }
    let key = text
        .split_once('=')
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'))
        });
    (line, column, key)
}

struct Ctx<'a> {
    file: &'a str,
    src: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column, _) = locate(self.src, span);
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Reads and validates a config file: a regular file of at most
    /// [`MAX_CONFIG_BYTES`] (a FIFO would hang the daemon, `/dev/zero`
    /// would eat its memory).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let fail = |message: String| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            key: "-".into(),
            message,
        };
        let src = read_bounded(path).map_err(fail)?;
        let src = match String::from_utf8(src) {
            Ok(s) => s,
            Err(e) => {
                let bytes = e.as_bytes();
                let at = e.utf8_error().valid_up_to();
                let before = bytes.get(..at).unwrap_or_default();
                let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
                let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
                let text = String::from_utf8_lossy(before);
                let key = text
                    .lines()
                    .last()
                    .and_then(|l| l.split('=').next())
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty())
                    .unwrap_or_else(|| "-".into());
                return Err(ConfigError {
                    file: file.clone(),
                    line,
                    column,
                    key,
                    message: format!("byte {at} is not UTF-8 (a TOML file is UTF-8 text)"),
                });
            }
        };
        Config::from_toml(&file, &src)
    }

    /// The embedded default configuration.
    pub fn default_config() -> Result<Config, ConfigError> {
        Config::from_toml("<embedded configs/default.toml>", DEFAULT_CONFIG)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn from_toml(file: &str, src: &str) -> Result<Config, ConfigError> {
        let ctx = Ctx { file, src };
        let raw: RawConfig = toml::from_str(src).map_err(|e| {
            let (line, column, key) = locate(src, e.span());
            // The key on the offending line; serde's message names the key
            // itself for unknown or missing fields.
            let key = key.unwrap_or_else(|| "-".into());
            let message = in_user_words(e.message().trim(), &key);
            ConfigError {
                file: file.to_owned(),
                line,
                column,
                key,
                message,
            }
        })?;

        // Every socket the daemon will create: (path, where, key).
        let mut socket_paths: Vec<(PathBuf, Range<usize>, String)> = Vec::new();
        let api_socket = raw.daemon.api_socket.as_ref().map(|a| {
            let path = match a.get_ref() {
                ApiPath::Path(p) => p.clone(),
                ApiPath::Auto => api_socket_next_to(
                    raw.daemon
                        .socket
                        .as_ref()
                        .map_or(Path::new(DEFAULT_SOCKET), |s| s.get_ref().as_path()),
                ),
            };
            (path, a.span(), matches!(a.get_ref(), ApiPath::Auto))
        });
        if let Some(p) = &raw.daemon.socket {
            socket_paths.push((p.get_ref().clone(), p.span(), "daemon.socket".to_owned()));
        }
        if let Some((p, span, _)) = &api_socket {
            socket_paths.push((p.clone(), span.clone(), "daemon.api_socket".to_owned()));
        }
        let mut devices = Vec::new();
        for (name, table) in raw.devices {
            let span = table.span();
            let mut options = table.into_inner();
            let key = format!("devices.{name}");
            let kind = match options.remove("kind") {
                Some(toml::Value::String(k)) => k,
                Some(_) => return Err(ctx.err(Some(span), &key, "`kind` must be a string")),
                None => {
                    return Err(ctx.err(
                        Some(span),
                        &key,
                        format!("missing `kind` (one of: {})", registry::kinds().join(", ")),
                    ))
                }
            };
            if let Err(m) = registry::validate(&kind, &options) {
                // Point at the option at fault: the first whose removal
                // changes the verdict (an unknown field names itself).
                let culprit = options
                    .keys()
                    .find(|k| m.contains(&format!("`{k}`")))
                    .or_else(|| {
                        options.keys().find(|k| {
                            let mut without = options.clone();
                            without.remove(*k);
                            registry::validate(&kind, &without).err().as_ref() != Some(&m)
                        })
                    })
                    .cloned();
                let (at, key) = match culprit {
                    Some(k) => (
                        key_span(src, &span, &k).unwrap_or(span.clone()),
                        format!("{key}.{k}"),
                    ),
                    None => (span.clone(), key),
                };
                return Err(ctx.err(Some(at), &key, in_user_words(&m, &key)));
            }
            if kind == "pad" {
                if let Some(p) = options.get("path").and_then(toml::Value::as_str) {
                    let at = key_span(src, &span, "path").unwrap_or(span.clone());
                    socket_paths.push((PathBuf::from(p), at, format!("{key}.path")));
                }
            }
            devices.push(DeviceConfig {
                name,
                kind,
                options,
            });
        }

        if raw.streams.is_empty() {
            return Err(ctx.err(None, "streams", "at least one [[streams]] entry is needed"));
        }
        if raw.streams.len() > MAX_STREAMS {
            return Err(ctx.err(
                None,
                "streams",
                format!("at most {MAX_STREAMS} streams are supported"),
            ));
        }

        let mut streams = Vec::new();
        let mut stream_spans = Vec::new();
        for (id, s) in raw.streams.into_iter().enumerate() {
            let whole = s.span();
            let s = s.into_inner();
            stream_spans.push((whole.clone(), s.device.span()));
            let key = |k: &str| format!("streams[{id}].{k}");
            let device = devices
                .iter()
                .position(|d| d.name == *s.device.get_ref())
                .ok_or_else(|| {
                    let known: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
                    ctx.err(
                        Some(s.device.span()),
                        &key("device"),
                        format!(
                            "no device named `{}` (defined: {})",
                            s.device.get_ref(),
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    )
                })?;

            let group = match &s.group {
                Some(g) if *g.get_ref() > MAX_GROUP => {
                    return Err(ctx.err(
                        Some(g.span()),
                        &key("group"),
                        format!("must be at most {MAX_GROUP}"),
                    ))
                }
                Some(g) => *g.get_ref(),
                None => 0,
            };

            let formats = match &s.formats {
                None => DEFAULT_FORMATS.to_vec(),
                Some(list) => {
                    if list.get_ref().is_empty() {
                        return Err(ctx.err(
                            Some(list.span()),
                            &key("formats"),
                            "must not be empty",
                        ));
                    }
                    let mut out = Vec::new();
                    for f in list.get_ref() {
                        let fmt = Format::from_name(f.get_ref()).ok_or_else(|| {
                            let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                            ctx.err(
                                Some(f.span()),
                                &key("formats"),
                                format!(
                                    "unknown format `{}` (one of: {})",
                                    f.get_ref(),
                                    names.join(", ")
                                ),
                            )
                        })?;
                        if !out.contains(&fmt) {
                            out.push(fmt);
                        }
                    }
                    out
                }
            };

            let rates = match &s.rates {
                None => DEFAULT_RATES.to_vec(),
                Some(list) => {
                    if list.get_ref().is_empty() {
                        return Err(ctx.err(Some(list.span()), &key("rates"), "must not be empty"));
                    }
                    let mut out = Vec::new();
                    for r in list.get_ref() {
                        let rate = *r.get_ref();
                        if rate_code(rate).is_none() {
                            return Err(ctx.err(
                                Some(r.span()),
                                &key("rates"),
                                format!(
                                    "{rate} is not a virtio-snd rate (one of: {})",
                                    crate::constants::RATES
                                        .iter()
                                        .map(|r| r.to_string())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ));
                        }
                        if !out.contains(&rate) {
                            out.push(rate);
                        }
                    }
                    out
                }
            };

            let (channels_min, channels_max) = match &s.channels {
                None => (1, 2),
                Some(c) => {
                    let RawChannels { min, max } = *c.get_ref();
                    let max_allowed = u8::try_from(CHMAP_MAX_SIZE).unwrap_or(u8::MAX);
                    if min == 0 || min > max || max > max_allowed {
                        return Err(ctx.err(
                            Some(c.span()),
                            &key("channels"),
                            format!("need 1 <= min <= max <= {CHMAP_MAX_SIZE}, got min = {min}, max = {max}"),
                        ));
                    }
                    (min, max)
                }
            };

            let volume = if s.volume {
                if let Some(bad) = formats
                    .iter()
                    .find(|f| !crate::controls::format_takes_gain(**f))
                {
                    return Err(ctx.err(
                        s.formats.as_ref().map(Spanned::span),
                        &key("volume"),
                        format!(
                            "the daemon cannot apply a volume to {} frames; offer linear formats only",
                            bad.name()
                        ),
                    ));
                }
                let initial_step = match &s.volume_db {
                    None => crate::controls::MAX_STEP,
                    Some(db) => {
                        let v = *db.get_ref();
                        let step = crate::controls::db_step(v);
                        if !(-60.0..=0.0).contains(&v) || crate::controls::step_db(step) != v {
                            return Err(ctx.err(
                                Some(db.span()),
                                &key("volume_db"),
                                format!("{v} dB: must be between -60 and 0, in 0.5 dB steps"),
                            ));
                        }
                        step
                    }
                };
                let name = match &s.control_name {
                    None => None,
                    Some(n) => {
                        let text = n.get_ref();
                        // ALSA element names hold 43 bytes: NAME + " Playback Volume".
                        if text.is_empty()
                            || text.len() > 27
                            || !text.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                        {
                            return Err(ctx.err(
                                Some(n.span()),
                                &key("control_name"),
                                "must be 1 to 27 printable ASCII characters (ALSA names hold 43 with \" Playback Volume\")",
                            ));
                        }
                        Some(text.clone())
                    }
                };
                Some(VolumeConfig {
                    name,
                    initial_step,
                    muted: s.muted,
                })
            } else {
                for (k, given) in [
                    ("volume_db", s.volume_db.as_ref().map(Spanned::span)),
                    ("control_name", s.control_name.as_ref().map(Spanned::span)),
                    // `muted` is a plain bool: point at the stream.
                    ("muted", s.muted.then(|| whole.clone())),
                ] {
                    if let Some(span) = given {
                        return Err(ctx.err(
                            Some(span),
                            &key(k),
                            format!("`{k}` needs `volume = true` on the stream"),
                        ));
                    }
                }
                None
            };

            let positions = match &s.positions {
                None => None,
                Some(list) => {
                    let mut out = Vec::new();
                    for p in list.get_ref() {
                        let code = crate::constants::chmap_code(p.get_ref()).ok_or_else(|| {
                            ctx.err(
                                Some(p.span()),
                                &key("positions"),
                                format!(
                                    "unknown channel position `{}` (one of: {})",
                                    p.get_ref(),
                                    crate::constants::CHMAP_NAMES.join(", ")
                                ),
                            )
                        })?;
                        if code > 2 && out.contains(&code) {
                            return Err(ctx.err(
                                Some(p.span()),
                                &key("positions"),
                                format!("`{}` is given twice", p.get_ref()),
                            ));
                        }
                        out.push(code);
                    }
                    if out.len() != usize::from(channels_max) {
                        return Err(ctx.err(
                            Some(list.span()),
                            &key("positions"),
                            format!(
                                "{} positions for a stream of up to {channels_max} channels: give one per channel of `channels.max`",
                                out.len()
                            ),
                        ));
                    }
                    Some(out)
                }
            };
            // Streams of one group and direction share one channel map.
            if let Some(mine) = &positions {
                if let Some((other, _)) =
                    streams
                        .iter()
                        .enumerate()
                        .find(|(_, o): &(usize, &StreamConfig)| {
                            o.group == group
                                && o.direction
                                    == match s.direction {
                                        RawDirection::Output => Direction::Output,
                                        RawDirection::Input => Direction::Input,
                                    }
                                && o.positions.as_ref().is_some_and(|p| p != mine)
                        })
                {
                    return Err(ctx.err(
                        s.positions.as_ref().map(Spanned::span),
                        &key("positions"),
                        format!("stream {other} of the same group and direction has another channel map (one map per group and direction)"),
                    ));
                }
            }

            streams.push(StreamConfig {
                positions,
                volume,
                direction: match s.direction {
                    RawDirection::Output => Direction::Output,
                    RawDirection::Input => Direction::Input,
                },
                device,
                group,
                formats,
                rates,
                channels_min,
                channels_max,
                on_remove: s.on_remove,
            });
        }

        check_mixing(&ctx, &devices, &streams, &stream_spans)?;
        let warnings = check_pads(&ctx, &devices, &streams, &stream_spans)?;
        check_socket_paths(&ctx, &socket_paths)?;
        let d = raw.daemon;
        Ok(Config {
            socket: d.socket.map(Spanned::into_inner),
            socket_access: Access {
                mode: d.socket_mode,
                owner: d.socket_owner,
                group: d.socket_group,
            },
            api_socket_auto: api_socket.as_ref().is_some_and(|a| a.2),
            api_socket: api_socket.map(|a| a.0),
            state_file: d.state_file,
            api_socket_access: Access {
                mode: d.api_socket_mode,
                owner: d.api_socket_owner,
                group: d.api_socket_group,
            },
            devices,
            streams,
            warnings,
        })
    }
}

/// Each socket needs a path of its own in a directory that exists (the
/// vhost-user socket, the API and every pad).
fn check_socket_paths(
    ctx: &Ctx<'_>,
    paths: &[(PathBuf, Range<usize>, String)],
) -> Result<(), ConfigError> {
    for (i, (p, at, key)) in paths.iter().enumerate() {
        if let Some((_, _, first)) = paths.iter().take(i).find(|(q, _, _)| same_path(p, q)) {
            return Err(ctx.err(
                Some(at.clone()),
                key,
                format!(
                    "{} is already the path of `{first}`; each socket needs its own",
                    p.display()
                ),
            ));
        }
        if let Err(e) = unix_socket::check_path(p) {
            return Err(ctx.err(Some(at.clone()), key, e.to_string()));
        }
    }
    Ok(())
}

/// The same file: equal paths once `.` components and repeated slashes
/// are dropped, or, when both directories exist, the same directory and
/// name.
fn same_path(a: &Path, b: &Path) -> bool {
    if a.components().eq(b.components()) {
        return true;
    }
    let (Some(an), Some(bn)) = (a.file_name(), b.file_name()) else {
        return false;
    };
    let dir = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    an == bn
        && match (std::fs::canonicalize(dir(a)), std::fs::canonicalize(dir(b))) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

/// Whether the device takes one opener per direction, so that several
/// streams of one direction on it are mixed by the daemon: a pad, or an
/// ALSA `hw:`/`plughw:` PCM. (A null device, and ALSA PCMs such as
/// `default` or `dmix`, take every stream as it is.)
pub fn device_takes_one_opener(d: &DeviceConfig) -> bool {
    match d.kind.as_str() {
        "pad" => true,
        "alsa" => d
            .options
            .get("pcm")
            .and_then(toml::Value::as_str)
            .is_some_and(|p| p.starts_with("hw:") || p.starts_with("plughw:")),
        _ => false,
    }
}

impl Config {
    /// Whether the daemon mixes the streams of `dir` on device `device`
    /// (two or more of them on a device that takes one opener).
    pub fn mixed(&self, device: usize, dir: Direction) -> bool {
        self.devices
            .get(device)
            .is_some_and(device_takes_one_opener)
            && self
                .streams
                .iter()
                .filter(|s| s.device == device && s.direction == dir)
                .count()
                >= 2
    }
}

/// Streams that are mixed (two or more of one direction on a device that
/// takes one opener) must each offer exactly one and the same format, rate
/// and channel count, in a format the mixer can sum.
fn check_mixing(
    ctx: &Ctx<'_>,
    devices: &[DeviceConfig],
    streams: &[StreamConfig],
    spans: &[(Range<usize>, Range<usize>)],
) -> Result<(), ConfigError> {
    for (di, d) in devices.iter().enumerate() {
        if !device_takes_one_opener(d) {
            continue;
        }
        for dir in [Direction::Output, Direction::Input] {
            let ids: Vec<usize> = streams
                .iter()
                .enumerate()
                .filter(|(_, s)| s.device == di && s.direction == dir)
                .map(|(i, _)| i)
                .collect();
            let (Some(&first), true) = (ids.first(), ids.len() >= 2) else {
                continue;
            };
            let one = |s: &StreamConfig| {
                s.formats.len() == 1 && s.rates.len() == 1 && s.channels_min == s.channels_max
            };
            let shape = |s: &StreamConfig| (s.formats.clone(), s.rates.clone(), s.channels_min);
            for &id in &ids {
                let (Some(s), Some(f)) = (streams.get(id), streams.get(first)) else {
                    continue;
                };
                let other = if id == first {
                    ids.get(1).copied().unwrap_or(first)
                } else {
                    id
                };
                let span = spans.get(id).map(|(s, _)| s.clone());
                if !one(s) || shape(s) != shape(f) {
                    let offers = |s: &StreamConfig| match (s.formats.as_slice(), s.rates.as_slice())
                    {
                        ([fmt], [rate]) if one(s) => {
                            format!("{fmt} {rate} Hz {} ch", s.channels_min)
                        }
                        _ => format!(
                            "{} format(s), {} rate(s) and {}..{} channels",
                            s.formats.len(),
                            s.rates.len(),
                            s.channels_min,
                            s.channels_max
                        ),
                    };
                    let why = if one(s) {
                        format!(
                            "stream {id} offers {}, stream {first} {}",
                            offers(s),
                            offers(f)
                        )
                    } else {
                        format!("stream {id} offers {}", offers(s))
                    };
                    return Err(ctx.err(
                        span,
                        &format!("streams[{id}]"),
                        format!(
                            "streams {first} and {other} share device `{}` and are mixed ({} streams): they must offer exactly one and the same format, rate and channel count ({why})",
                            d.name,
                            dir.name(),
                        ),
                    ));
                }
                if let Some(bad) = s
                    .formats
                    .iter()
                    .find(|f| !vsound_devices::mix::format_mixes(**f))
                {
                    return Err(ctx.err(
                        span,
                        &format!("streams[{id}].formats"),
                        format!(
                            "streams {first} and {other} share device `{}` and are mixed: the daemon cannot sum {bad} frames; use a linear format (S16, S32, FLOAT, ...)",
                            d.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A raw pad (no WAV header to announce the format; capture is always raw)
/// carries one format: its client cannot tell formats apart. Returns the warnings
/// for raw pads that allow format changes.
fn check_pads(
    ctx: &Ctx<'_>,
    devices: &[DeviceConfig],
    streams: &[StreamConfig],
    spans: &[(Range<usize>, Range<usize>)],
) -> Result<Vec<String>, ConfigError> {
    let mut warnings = Vec::new();
    for (di, d) in devices.iter().enumerate().filter(|(_, d)| d.kind == "pad") {
        let wav = d.options.get("header").and_then(toml::Value::as_str) == Some("wav");
        let allow = d
            .options
            .get("allow_format_changes")
            .and_then(toml::Value::as_bool)
            == Some(true);
        for dir in [Direction::Output, Direction::Input] {
            for (id, sc) in streams.iter().enumerate() {
                if sc.device != di || sc.direction != dir {
                    continue;
                }
                let span = spans.get(id).map(|(s, _)| s.clone());
                let raw = dir == Direction::Input || !wav;
                let several = sc.formats.len() > 1
                    || sc.rates.len() > 1
                    || sc.channels_min != sc.channels_max;
                if !raw || !several {
                    continue;
                }
                let what = format!(
                    "stream {id} ({}) on raw pad `{}` offers {} format(s), {} rate(s) and {}..{} channels; the pad's client gets bare PCM and cannot tell which the guest picked",
                    dir.name(),
                    d.name,
                    sc.formats.len(),
                    sc.rates.len(),
                    sc.channels_min,
                    sc.channels_max
                );
                if allow {
                    warnings.push(format!("{}: {what}", ctx.file));
                } else {
                    return Err(ctx.err(
                        span,
                        &format!("streams[{id}]"),
                        format!(
                            "{what}: offer one format, one rate and one channel count, use header = \"wav\" (playback), or set allow_format_changes = true on the pad"
                        ),
                    ));
                }
            }
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> ConfigError {
        match Config::from_toml("test.toml", src) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    const GOOD: &str = r#"
[daemon]
socket = "/tmp/x.sock"

[devices.n]
kind = "null"

[[streams]]
direction = "output"
device = "n"
group = 1
formats = ["S16", "FLOAT"]
rates = [44100, 48000]
channels = { min = 1, max = 8 }
on_remove = "error"

[[streams]]
direction = "input"
device = "n"
"#;

    fn pad_config(pad_opts: &str, streams: &str) -> String {
        format!("[devices.p]\nkind = \"pad\"\npath = \"/tmp/p.sock\"\n{pad_opts}\n{streams}")
    }

    const ONE_FORMAT: &str =
        "formats = [\"S16\"]\nrates = [48000]\nchannels = { min = 2, max = 2 }\n";

    #[test]
    fn control_keys_without_volume_are_refused_at_their_stream() {
        let base =
            "[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\n";
        for (extra, key) in [
            ("muted = true\n", "streams[0].muted"),
            ("volume_db = -6.0\n", "streams[0].volume_db"),
        ] {
            let e = Config::from_toml("f.toml", &format!("{base}{extra}")).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.contains("needs `volume = true`"), "{e}");
        }
    }

    #[test]
    fn an_empty_table_header_still_gets_a_key_in_the_error() {
        // Found by the config fuzz target: `[]daemon]` gave an empty key.
        let e = Config::from_toml("f.toml", "[]daemon]\n").unwrap_err();
        assert!(!e.key.is_empty(), "{e}");
        assert_eq!((e.line, e.key.as_str()), (1, "-"), "{e}");
        let e = Config::from_toml("f.toml", "[[]]\n").unwrap_err();
        assert!(!e.key.is_empty(), "{e}");
    }

    #[test]
    fn two_streams_of_one_direction_on_a_pad_are_mixed_when_they_share_one_format() {
        let two = |a: &str, b: &str| {
            pad_config(
                "",
                &format!(
                    "[[streams]]\ndirection = \"output\"\ndevice = \"p\"\n{a}\n[[streams]]\ndirection = \"input\"\ndevice = \"p\"\n{ONE_FORMAT}\n[[streams]]\ndirection = \"output\"\ndevice = \"p\"\n{b}"
                ),
            )
        };
        let c = Config::from_toml("t", &two(ONE_FORMAT, ONE_FORMAT)).unwrap();
        assert!(c.mixed(0, Direction::Output));
        assert!(!c.mixed(0, Direction::Input), "one input stream");
        // Another rate: refused, naming both streams and the device.
        let e = err(&two(ONE_FORMAT, &ONE_FORMAT.replace("48000", "44100")));
        assert_eq!(e.key, "streams[2]");
        assert!(
            e.message
                .contains("streams 0 and 2 share device `p` and are mixed"),
            "{e}"
        );
        assert!(
            e.message
                .contains("stream 2 offers S16 44100 Hz 2 ch, stream 0 S16 48000 Hz 2 ch"),
            "{e}"
        );
        assert_eq!((e.line, e.file.as_str()), (19, "test.toml"), "{e}");
        // Several formats on one of them: refused.
        let e = err(&two(
            &ONE_FORMAT.replace("[\"S16\"]", "[\"S16\", \"S32\"]"),
            ONE_FORMAT,
        ));
        assert_eq!(e.key, "streams[0]");
        assert!(e.message.contains("offers 2 format(s)"), "{e}");
        // A format the mixer cannot sum: refused.
        let mu = ONE_FORMAT.replace("S16", "MU_LAW");
        let e = err(&two(&mu, &mu));
        assert_eq!(e.key, "streams[0].formats");
        assert!(e.message.contains("cannot sum MU_LAW"), "{e}");
        // A null device takes streams as they are: never mixed.
        let null = "[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\nformats = [\"S16\", \"S32\"]\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\n";
        assert!(!Config::from_toml("t", null)
            .unwrap()
            .mixed(0, Direction::Output));
        // ALSA: hw: takes one opener, default does not.
        let alsa = |pcm: &str| {
            format!("[devices.a]\nkind = \"alsa\"\npcm = \"{pcm}\"\n[[streams]]\ndirection = \"output\"\ndevice = \"a\"\n{ONE_FORMAT}[[streams]]\ndirection = \"output\"\ndevice = \"a\"\n{ONE_FORMAT}")
        };
        assert!(Config::from_toml("t", &alsa("hw:0,0"))
            .unwrap()
            .mixed(0, Direction::Output));
        assert!(!Config::from_toml("t", &alsa("default"))
            .unwrap()
            .mixed(0, Direction::Output));
    }

    #[test]
    fn a_raw_pad_with_several_formats_is_refused_unless_format_changes_are_allowed() {
        let several = "[[streams]]\ndirection = \"output\"\ndevice = \"p\"\nformats = [\"S16\", \"S32\"]\nrates = [48000]\nchannels = { min = 2, max = 2 }\n";
        let e = err(&pad_config("", several));
        assert_eq!(e.key, "streams[0]");
        assert!(e.message.contains("offers 2 format(s)"), "{e}");
        assert!(e.message.contains("allow_format_changes"), "{e}");
        // A WAV header announces each format: fine for playback.
        let ok = Config::from_toml("t", &pad_config("header = \"wav\"", several)).unwrap();
        assert!(ok.warnings.is_empty());
        // Allowed explicitly: a warning instead.
        let ok =
            Config::from_toml("t", &pad_config("allow_format_changes = true", several)).unwrap();
        assert_eq!(ok.warnings.len(), 1, "{:?}", ok.warnings);
        // Capture is always raw, whatever the header; the default channel
        // range (1..2) counts as several.
        let input = "[[streams]]\ndirection = \"input\"\ndevice = \"p\"\n";
        let e = err(&pad_config("header = \"wav\"", input));
        assert!(e.message.contains("1..2 channels"), "{e}");
        // One of each is fine.
        let one = format!("[[streams]]\ndirection = \"input\"\ndevice = \"p\"\n{ONE_FORMAT}");
        assert!(Config::from_toml("t", &pad_config("", &one))
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn the_example_pad_config_is_valid() {
        let src = include_str!("../../configs/pad.toml");
        let c = Config::from_toml("configs/pad.toml", src).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn a_config_that_is_not_a_bounded_regular_file_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = std::time::Instant::now();
        let e = Config::from_file(&fifo).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "a FIFO blocked"
        );
        let e = Config::from_file(Path::new("/dev/zero")).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let e = Config::from_file(&big).unwrap_err();
        assert!(e.message.contains("at most"), "{e}");
    }

    #[test]
    fn a_non_utf8_byte_is_located_by_line_column_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        let mut src = b"[daemon]\nsocket = \"/tmp/".to_vec();
        src.push(0xff);
        src.extend_from_slice(b"\"\n");
        std::fs::write(&f, src).unwrap();
        let e = Config::from_file(&f).unwrap_err();
        assert_eq!((e.line, e.column, e.key.as_str()), (2, 16, "socket"), "{e}");
        assert!(e.message.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn embedded_default_is_valid_with_one_output_and_one_input() {
        let c = Config::default_config().unwrap();
        assert_eq!(c.streams.len(), 2);
        assert_eq!(c.streams[0].direction, Direction::Output);
        assert_eq!(c.streams[1].direction, Direction::Input);
    }

    #[test]
    fn a_full_file_is_read_with_defaults_filled_in() {
        let c = Config::from_toml("t", GOOD).unwrap();
        assert_eq!(c.socket.as_deref(), Some(Path::new("/tmp/x.sock")));
        let s = &c.streams[0];
        assert_eq!((s.group, s.channels_min, s.channels_max), (1, 1, 8));
        assert_eq!(s.formats, vec![Format::S16, Format::Float]);
        assert_eq!(s.rates, vec![44100, 48000]);
        assert_eq!(s.on_remove, OnRemove::Error);
        let i = &c.streams[1];
        assert_eq!(
            (i.group, i.formats.clone(), i.rates.clone()),
            (0, vec![Format::S16], vec![48000])
        );
        assert_eq!(i.on_remove, OnRemove::Silence);
    }

    /// Each bad file, the line and key its error must name.
    #[test]
    fn bad_files_name_file_line_and_key() {
        let cases: &[(&str, &str, usize, &str)] = &[
            (GOOD, "rates = [44100, 48000]", 0, ""),
            ("[[streams]]\ndirection = \"output\"\ndevice = \"n\"\nrats = [1]\n[devices.n]\nkind=\"null\"\n", "", 4, "rats"),
            ("[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"sideways\"\ndevice = \"n\"\n", "", 4, "direction"),
            ("[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"m\"\n", "", 5, "streams[0].device"),
            ("[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\nformats = [\"S16\", \"S17\"]\n", "", 6, "streams[0].formats"),
            ("[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\nrates = [48001]\n", "", 6, "streams[0].rates"),
            ("[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\nchannels = { min = 3, max = 2 }\n", "", 6, "streams[0].channels"),
            ("[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\ngroup = 40\n", "", 6, "streams[0].group"),
            ("[devices.n]\nkind = \"tape\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\n", "", 1, "devices.n"),
            ("[devices.n]\nkind = \"null\"\npath = \"/x\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\n", "", 3, "devices.n.path"),
            ("[devices.p]\nkind = \"pad\"\npath = \"/x.sock\"\nmode = \"abc\"\n[[streams]]\ndirection = \"output\"\ndevice = \"p\"\n", "", 4, "devices.p.mode"),
            ("[devices.n]\nkind = \"null\"\n[devices.n]\nkind = \"null\"\n", "", 3, "devices.n"),
            ("[devices.n]\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\n", "", 1, "devices.n"),
            ("[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\non_remove = \"explode\"\n", "", 6, "on_remove"),
            ("[daemon]\nsocket = 5\n", "", 2, "socket"),
            ("[daemon]\nsocket = \"/x\"\n", "", 1, "streams"),
            ("[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\nchannels = { min = 1, max = 19 }\n", "", 6, "streams[0].channels"),
            ("this is not toml", "", 1, "-"),
        ];
        for (src, _, line, key) in cases.iter().skip(1) {
            let e = err(src);
            assert_eq!(e.file, "test.toml");
            assert_eq!(e.line, *line, "line of {e} for\n{src}");
            assert!(
                e.key == *key || e.message.contains(&format!("`{key}`")),
                "key `{key}` not named by {e} for\n{src}"
            );
            let shown = e.to_string();
            assert!(shown.starts_with(&format!("test.toml:{line}:")), "{shown}");
            for rust in ["Raw", "u32", "u8", "struct ", "enum "] {
                assert!(!e.message.contains(rust), "a Rust name in {shown}");
            }
        }
    }

    #[test]
    fn type_errors_and_duplicates_are_told_in_a_config_writers_words() {
        let e = err("[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\nchannels = 2\n");
        assert!(
            e.message.contains("a table like { min = 1, max = 2 }"),
            "{e}"
        );
        let e = err("[devices.n]\nkind = \"null\"\n[devices.n]\nkind = \"null\"\n");
        assert!(e.message.contains("`devices.n` is defined twice"), "{e}");
        let e = err("[devices.n]\nkind = \"null\"\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\ngroup = -1\n");
        assert!(
            e.message.contains("a whole number from 0 to 4294967295"),
            "{e}"
        );
    }
}
