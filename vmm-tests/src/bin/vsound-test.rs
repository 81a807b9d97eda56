//! `vsound-test`: the vsound daemon plus plugins that exist only for tests.
//!
//! - `kind = "test-hang"`: a device whose I/O works for `hang_after_ms`
//!   after each open, then blocks forever (a host device that hangs).
//!
//! The shipped `vsound` binary has none of these.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use vsound_devices::registry::{self, Plugin};
use vsound_devices::{
    CaptureSource, Clock, DeviceError, HostDevice, PlaybackSink, StreamDirection, StreamParams,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HangOptions {
    #[serde(default = "default_hang_after")]
    hang_after_ms: u64,
}

fn default_hang_after() -> u64 {
    200
}

struct HangDevice {
    hang_after: Duration,
}

struct HangEnd {
    opened: Instant,
    hang_after: Duration,
}

impl HangEnd {
    fn io(&self) -> Result<(), DeviceError> {
        if self.opened.elapsed() >= self.hang_after {
            // Blocks forever, like a driver stuck in the kernel.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Ok(())
    }
}

impl PlaybackSink for HangEnd {
    fn clock(&self) -> Clock {
        Clock::Daemon
    }
    fn write(&mut self, _frames: &[u8]) -> Result<(), DeviceError> {
        self.io()
    }
    fn latency_bytes(&self) -> u32 {
        0
    }
}

impl CaptureSource for HangEnd {
    fn clock(&self) -> Clock {
        Clock::Daemon
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<(), DeviceError> {
        buf.fill(0);
        self.io()
    }
    fn latency_bytes(&self) -> u32 {
        0
    }
}

impl HostDevice for HangDevice {
    fn kind(&self) -> &'static str {
        "test-hang"
    }
    fn is_attached(&self) -> bool {
        true
    }
    fn check_params(&self, _dir: StreamDirection, _p: &StreamParams) -> Result<(), DeviceError> {
        Ok(())
    }
    fn open_playback(&self, _p: &StreamParams) -> Result<Box<dyn PlaybackSink>, DeviceError> {
        Ok(Box::new(HangEnd {
            opened: Instant::now(),
            hang_after: self.hang_after,
        }))
    }
    fn open_capture(&self, _p: &StreamParams) -> Result<Box<dyn CaptureSource>, DeviceError> {
        Ok(Box::new(HangEnd {
            opened: Instant::now(),
            hang_after: self.hang_after,
        }))
    }
}

fn parse(opts: &toml::Table) -> Result<HangOptions, String> {
    HangOptions::deserialize(opts.clone()).map_err(|e| e.message().to_owned())
}

fn main() -> std::process::ExitCode {
    registry::register(Plugin {
        kind: "test-hang",
        validate: |opts| parse(opts).map(drop),
        build: |_name, opts| {
            let o = parse(&opts)?;
            Ok(Arc::new(HangDevice {
                hang_after: Duration::from_millis(o.hang_after_ms),
            }) as Arc<dyn HostDevice>)
        },
    });
    vsound::cli::run()
}
