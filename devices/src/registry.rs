//! The plugin registry: config `kind` → device constructor.
//!
//! Each plugin parses its own options from the device's TOML table (with
//! `deny_unknown_fields`), so a typo in a device option is reported with the
//! key that is wrong.

use std::sync::Arc;

use serde::Deserialize;

use crate::alsa::{AlsaDevice, AlsaOptions};
use crate::null::{NullDevice, NullOptions};
use crate::pad::{PadDevice, PadOptions};
use crate::HostDevice;

/// Builds a device from the options in its config table (the table without
/// its `kind` key).
pub type Constructor = fn(name: &str, opts: toml::Table) -> Result<Arc<dyn HostDevice>, String>;

/// Checks a device's options without side effects (for `check-config`).
pub type Validator = fn(opts: &toml::Table) -> Result<(), String>;

/// One registered plugin.
#[derive(Clone)]
pub struct Plugin {
    /// The `kind` value that selects it.
    pub kind: &'static str,
    /// Checks its options.
    pub validate: Validator,
    /// Builds it.
    pub build: Constructor,
}

/// Every plugin this build knows.
pub const PLUGINS: &[Plugin] = &[
    Plugin {
        kind: "null",
        validate: |opts| parse::<NullOptions>(opts.clone()).map(|_| ()),
        build: build_null,
    },
    Plugin {
        kind: "alsa",
        validate: |opts| parse::<AlsaOptions>(opts.clone())?.check(),
        build: build_alsa,
    },
    Plugin {
        kind: "pad",
        validate: |opts| parse::<PadOptions>(opts.clone()).map(|_| ()),
        build: build_pad,
    },
];

fn parse<T: for<'de> Deserialize<'de>>(opts: toml::Table) -> Result<T, String> {
    T::deserialize(opts).map_err(|e| e.message().to_owned())
}

fn build_null(_name: &str, opts: toml::Table) -> Result<Arc<dyn HostDevice>, String> {
    let opts: NullOptions = parse(opts)?;
    Ok(Arc::new(NullDevice::from_options(opts)))
}

fn build_alsa(name: &str, opts: toml::Table) -> Result<Arc<dyn HostDevice>, String> {
    Ok(Arc::new(AlsaDevice::new(name, parse(opts)?)?))
}

fn build_pad(name: &str, opts: toml::Table) -> Result<Arc<dyn HostDevice>, String> {
    let opts: PadOptions = parse(opts)?;
    match PadDevice::from_options(name, opts) {
        Ok(pad) => Ok(Arc::new(pad)),
        Err(e) => Err(with_sources(&e)),
    }
}

/// An error's message followed by its sources' (which it does not repeat).
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// The kinds this build knows, for error messages.
pub fn kinds() -> Vec<&'static str> {
    let extra = EXTRA.lock().unwrap_or_else(|e| e.into_inner());
    PLUGINS.iter().chain(extra.iter()).map(|p| p.kind).collect()
}

/// Plugins added at run time (test binaries register test-only plugins
/// here before starting the daemon).
static EXTRA: std::sync::Mutex<Vec<Plugin>> = std::sync::Mutex::new(Vec::new());

/// Adds a plugin (for test builds: the shipped daemon has only
/// [`PLUGINS`]).
pub fn register(plugin: Plugin) {
    EXTRA.lock().unwrap_or_else(|e| e.into_inner()).push(plugin);
}

fn find(kind: &str) -> Result<Plugin, String> {
    if let Some(p) = PLUGINS.iter().find(|p| p.kind == kind) {
        return Ok(p.clone());
    }
    let found = EXTRA
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find(|p| p.kind == kind)
        .cloned();
    // The lock is released before `kinds()` takes it again.
    found.ok_or_else(|| {
        format!(
            "unknown device kind `{kind}`, expected one of: {}",
            kinds().join(", ")
        )
    })
}

/// Checks the options of a device of `kind` without opening anything.
pub fn validate(kind: &str, opts: &toml::Table) -> Result<(), String> {
    (find(kind)?.validate)(opts)
}

/// Builds a device of `kind` from its options.
pub fn build(name: &str, kind: &str, opts: toml::Table) -> Result<Arc<dyn HostDevice>, String> {
    (find(kind)?.build)(name, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_kind_names_the_known_ones() {
        let err = build("x", "nope", toml::Table::new()).err().unwrap();
        assert!(err.contains("`nope`") && err.contains("null"), "{err}");
    }

    #[test]
    fn null_rejects_unknown_options() {
        let mut t = toml::Table::new();
        t.insert("path".into(), toml::Value::String("/x".into()));
        let err = build("x", "null", t).err().unwrap();
        assert!(err.contains("path"), "{err}");
    }
}
