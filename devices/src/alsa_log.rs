//! alsa-lib's own error messages, through the daemon's logging instead of
//! raw stderr, and rate-limited: a PCM probed once a second while it is
//! missing would otherwise print two lines a second for ever.
//!
//! Each message (by source file and line in alsa-lib) is logged at most
//! once per [`WINDOW`]; the next one logged says how many were left out.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, CStr};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// A message is logged at most once per window.
pub const WINDOW: Duration = Duration::from_secs(60);

extern "C" {
    fn vsound_alsa_install_log() -> c_int;
}

struct Seen {
    last: Instant,
    suppressed: u64,
}

static SEEN: Mutex<Option<HashMap<(String, i32), Seen>>> = Mutex::new(None);
static INSTALL: Once = Once::new();

/// Routes alsa-lib's error output into `log` (once per process; called
/// when the first ALSA device is built).
pub fn install() {
    INSTALL.call_once(|| {
        // SAFETY: sets alsa-lib's global error handler to the shim's, which
        // stays valid for the life of the process.
        let r = unsafe { vsound_alsa_install_log() };
        if r < 0 {
            log::warn!("cannot route alsa-lib's messages into the log ({r})");
        }
    });
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: alsa-lib passes NUL-terminated strings (the shim's buffer
    // is NUL-terminated by vsnprintf), valid for the call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Whether a message from `key` may be logged now; how many were left out
/// since the last one.
fn admit(key: (String, i32), now: Instant) -> Option<u64> {
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let map = seen.get_or_insert_with(HashMap::new);
    match map.get_mut(&key) {
        Some(s) if now.saturating_duration_since(s.last) < WINDOW => {
            s.suppressed += 1;
            None
        }
        Some(s) => {
            s.last = now;
            Some(std::mem::take(&mut s.suppressed))
        }
        None => {
            if map.len() > 1024 {
                map.clear();
            }
            map.insert(
                key,
                Seen {
                    last: now,
                    suppressed: 0,
                },
            );
            Some(0)
        }
    }
}

/// Called by the C shim with the formatted message.
#[no_mangle]
extern "C" fn vsound_alsa_log(
    file: *const c_char,
    line: c_int,
    function: *const c_char,
    err: c_int,
    message: *const c_char,
) {
    let file = text(file);
    let Some(left_out) = admit((file.clone(), line), Instant::now()) else {
        return;
    };
    let mut msg = format!("alsa-lib: {}: {}", text(function), text(message));
    if err != 0 {
        msg.push_str(&format!(
            " ({})",
            std::io::Error::from_raw_os_error(err.saturating_abs())
        ));
    }
    if left_out > 0 {
        msg.push_str(&format!(
            " [{left_out} more like it in the last {} s]",
            WINDOW.as_secs()
        ));
    }
    log::warn!(target: "alsa", "{msg} ({file}:{line})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_message_is_logged_once_per_window_then_with_the_count() {
        let t0 = Instant::now();
        let k = || ("pcm.c".to_owned(), 2666);
        assert_eq!(admit(k(), t0), Some(0));
        for i in 1..=5 {
            assert_eq!(admit(k(), t0 + Duration::from_secs(i)), None);
        }
        // Another message is not held back by the first.
        assert_eq!(admit(("pcm.c".to_owned(), 1), t0), Some(0));
        assert_eq!(admit(k(), t0 + WINDOW + Duration::from_secs(1)), Some(5));
    }

    #[test]
    fn alsa_lib_messages_reach_the_shim_without_crashing() {
        install();
        // An unknown PCM makes alsa-lib report an error through the handler.
        let name = std::ffi::CString::new("vsound-no-such-pcm").unwrap();
        assert!(alsa::pcm::PCM::open(&name, alsa::Direction::Playback, true).is_err());
        let seen = SEEN.lock().unwrap();
        assert!(
            seen.as_ref()
                .is_some_and(|m| m.keys().any(|(f, _)| f.contains("pcm"))),
            "the handler saw no message"
        );
    }
}
