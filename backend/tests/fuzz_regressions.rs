//! The smallest reproductions of what the fuzz targets (`fuzz/`) found.
//! Each test names its input under `fuzz/regressions/TARGET/`.
//!
//! A finding that is not fixed yet is `#[ignore]`d with the reason, so the
//! suite stays green; `cargo test --test fuzz_regressions -- --ignored`
//! shows it failing. Remove the `ignore` with the fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vsound::api::ApiServer;
use vsound::config::Config;
use vsound::daemon::DaemonState;

/// Sends `bytes` to a real API server on the default config, half-closes,
/// and returns the reply lines and the state (to look at its devices).
fn exchange(bytes: &[u8]) -> (Vec<serde_json::Value>, std::sync::Arc<DaemonState>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let state = DaemonState::new(&Config::default_config().unwrap()).unwrap();
    let server = ApiServer::start(&path, state.clone()).unwrap();
    let mut c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(bytes);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    drop(server);
    let replies = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (replies, state)
}

/// fuzz/regressions/api/over-long-line-tail-is-executed: api.rs says "a
/// request line longer than this is refused", but only its first 4097
/// bytes are: the rest of the same line is read as the next request and
/// executed. Here 4097 spaces and then a `detach` detach the device.
#[test]
fn an_over_long_api_line_is_refused_whole() {
    let mut line = vec![b' '; 4097];
    line.extend_from_slice(b"{\"cmd\":\"detach\",\"device\":\"null0\"}\n");
    let (replies, state) = exchange(&line);
    assert!(
        state.devices[0].is_present(),
        "the tail of an over-long line detached the device"
    );
    assert_eq!(replies.len(), 1, "one reply per line: {replies:?}");
    assert_eq!(replies[0]["ok"], false);
}

/// fuzz/regressions/api/non-utf8-line-closes-silently: api.rs says "a bad
/// request gets an error line, never a silent close", but a line that is
/// not UTF-8 (here the single byte 0xff) closes the connection with no
/// reply, and the requests after it on the connection are never answered.
#[test]
fn a_non_utf8_api_line_gets_an_error_line() {
    let (replies, _) = exchange(b"\xff\n{\"cmd\":\"status\"}\n");
    assert_eq!(
        replies.len(),
        2,
        "an error line, then the status: {replies:?}"
    );
    assert_eq!(replies[0]["ok"], false);
    assert_eq!(replies[1]["ok"], true);
}
