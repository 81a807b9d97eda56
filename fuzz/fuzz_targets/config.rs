#![no_main]
//! Config files: arbitrary bytes as TOML through `Config::from_toml` (which
//! also runs each device's `registry::validate`), and the input parsed as a
//! bare table through every plugin's `registry::validate`.
//!
//! Checked: never a panic; every error names a line and a column inside
//! the input (line 1..=lines+1, column 1..=that line's length+1); a valid
//! config has 1..=1024 streams, each naming a configured device.

use libfuzzer_sys::fuzz_target;
use vsound::config::{Config, MAX_STREAMS};
use vsound_devices::registry;

fn check_position(src: &str, line: usize, column: usize, what: &str) {
    let lines: Vec<&str> = src.split('\n').collect();
    assert!(
        line >= 1 && line <= lines.len(),
        "{what}: line {line} of {}",
        lines.len()
    );
    let text = lines[line - 1];
    let chars = text.chars().count();
    assert!(
        column >= 1 && column <= chars + 1,
        "{what}: column {column} of a {chars}-char line"
    );
}

fuzz_target!(|data: &[u8]| {
    // Non-UTF-8 bytes never reach `from_toml` (`from_file` refuses them
    // while reading): fuzz the text the bytes decode to.
    let src = String::from_utf8_lossy(data);
    match Config::from_toml("fuzz.toml", &src) {
        Ok(c) => {
            assert!(!c.streams.is_empty() && c.streams.len() <= MAX_STREAMS);
            for s in &c.streams {
                assert!(s.device < c.devices.len());
                assert!(!s.formats.is_empty() && !s.rates.is_empty());
                assert!(1 <= s.channels_min && s.channels_min <= s.channels_max);
            }
        }
        Err(e) => {
            assert_eq!(e.file, "fuzz.toml");
            assert!(!e.key.is_empty(), "{e}");
            check_position(&src, e.line, e.column, &e.to_string());
            let _ = e.to_string();
        }
    }
    if let Ok(table) = src.parse::<toml::Table>() {
        for kind in registry::kinds() {
            let _ = registry::validate(kind, &table);
        }
        let _ = registry::validate("no-such-kind", &table);
    }
});
