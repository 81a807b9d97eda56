//! The `null` device: playback is discarded, capture is silence, and the
//! daemon's clock keeps time. Always attached.

use serde::Deserialize;

use crate::{
    CaptureSource, Clock, DeviceError, Format, HostDevice, PlaybackSink, StreamDirection,
    StreamParams,
};

/// Options of a `kind = "null"` device (it has none).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullOptions {}

/// The null device.
#[derive(Debug, Default)]
pub struct NullDevice;

impl NullDevice {
    /// Builds a null device from its config table.
    pub fn from_options(_opts: NullOptions) -> Self {
        NullDevice
    }
}

impl HostDevice for NullDevice {
    fn kind(&self) -> &'static str {
        "null"
    }

    fn is_attached(&self) -> bool {
        true
    }

    /// Never.
    fn may_block(&self) -> bool {
        false
    }

    fn check_params(
        &self,
        _dir: StreamDirection,
        _params: &StreamParams,
    ) -> Result<(), DeviceError> {
        Ok(())
    }

    fn open_playback(&self, _params: &StreamParams) -> Result<Box<dyn PlaybackSink>, DeviceError> {
        Ok(Box::new(NullSink))
    }

    fn open_capture(&self, params: &StreamParams) -> Result<Box<dyn CaptureSource>, DeviceError> {
        Ok(Box::new(NullSource {
            format: params.format,
        }))
    }
}

struct NullSink;

impl PlaybackSink for NullSink {
    fn clock(&self) -> Clock {
        Clock::Daemon
    }

    fn write(&mut self, _frames: &[u8]) -> Result<(), DeviceError> {
        Ok(())
    }

    fn latency_bytes(&self) -> u32 {
        0
    }
}

struct NullSource {
    format: Format,
}

impl CaptureSource for NullSource {
    fn clock(&self) -> Clock {
        Clock::Daemon
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.format.fill_silence(buf);
        Ok(())
    }

    fn latency_bytes(&self) -> u32 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_capture_is_silence_in_the_stream_format() {
        let params = StreamParams {
            format: Format::U8,
            rate: 8000,
            channels: 1,
            period_bytes: 80,
            buffer_bytes: 320,
        };
        let mut src = NullDevice.open_capture(&params).unwrap();
        let mut buf = [7u8; 80];
        src.read(&mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0x80));
        let mut sink = NullDevice.open_playback(&params).unwrap();
        sink.write(&buf).unwrap();
        assert_eq!(sink.clock(), Clock::Daemon);
    }
}
