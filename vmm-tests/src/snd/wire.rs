//! virtio-snd message encoding and decoding, by explicit byte offsets.
//!
//! All fields are little-endian (virtio-snd §1.C). Parsers take exactly one
//! structure's bytes and keep padding bytes, so tests can check they are zero.

use super::constants::{code, size, Direction};

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(raw)
}

/// `virtio_snd_hdr`.
pub fn hdr(code: u32) -> [u8; size::HDR] {
    code.to_le_bytes()
}

/// `virtio_snd_query_info`: hdr, start_id, count, size.
pub fn query_info(code: u32, start_id: u32, count: u32, item_size: u32) -> [u8; size::QUERY_INFO] {
    let mut b = [0u8; size::QUERY_INFO];
    b[0..4].copy_from_slice(&code.to_le_bytes());
    b[4..8].copy_from_slice(&start_id.to_le_bytes());
    b[8..12].copy_from_slice(&count.to_le_bytes());
    b[12..16].copy_from_slice(&item_size.to_le_bytes());
    b
}

/// `virtio_snd_pcm_hdr`: hdr, stream_id.
pub fn pcm_hdr(code: u32, stream_id: u32) -> [u8; size::PCM_HDR] {
    let mut b = [0u8; size::PCM_HDR];
    b[0..4].copy_from_slice(&code.to_le_bytes());
    b[4..8].copy_from_slice(&stream_id.to_le_bytes());
    b
}

/// `virtio_snd_ctl_hdr`: hdr, control_id.
pub fn ctl_hdr(code: u32, control_id: u32) -> [u8; 8] {
    pcm_hdr(code, control_id)
}

/// `virtio_snd_jack_remap`: hdr, jack_id, association, sequence.
pub fn jack_remap(jack_id: u32, association: u32, sequence: u32) -> [u8; size::JACK_REMAP] {
    query_info(code::JACK_REMAP, jack_id, association, sequence)
}

/// `virtio_snd_pcm_xfer`: the stream id heading every I/O message.
pub fn xfer(stream_id: u32) -> [u8; size::PCM_XFER] {
    stream_id.to_le_bytes()
}

/// `virtio_snd_pcm_set_params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetParams {
    /// Stream id.
    pub stream_id: u32,
    /// Size of the whole ring buffer.
    pub buffer_bytes: u32,
    /// Size of one period.
    pub period_bytes: u32,
    /// Selected PCM features (bitmap of `pcm_feature` bits).
    pub features: u32,
    /// Channel count.
    pub channels: u8,
    /// Format code (`PcmFormat` bit number).
    pub format: u8,
    /// Rate code (`PcmRate` bit number).
    pub rate: u8,
    /// The padding byte; the driver must send 0.
    pub padding: u8,
}

impl SetParams {
    /// Encodes the 24-byte request.
    pub fn encode(&self) -> [u8; size::PCM_SET_PARAMS] {
        let mut b = [0u8; size::PCM_SET_PARAMS];
        b[0..8].copy_from_slice(&pcm_hdr(code::PCM_SET_PARAMS, self.stream_id));
        b[8..12].copy_from_slice(&self.buffer_bytes.to_le_bytes());
        b[12..16].copy_from_slice(&self.period_bytes.to_le_bytes());
        b[16..20].copy_from_slice(&self.features.to_le_bytes());
        b[20] = self.channels;
        b[21] = self.format;
        b[22] = self.rate;
        b[23] = self.padding;
        b
    }
}

/// `virtio_snd_jack_info` (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JackInfo {
    /// HDA function group node id.
    pub hda_fn_nid: u32,
    /// Jack features (bit 0: REMAP).
    pub features: u32,
    /// HDA pin default configuration register.
    pub hda_reg_defconf: u32,
    /// HDA pin capabilities register.
    pub hda_reg_caps: u32,
    /// Connection state (0 or 1).
    pub connected: u8,
    /// Padding, must be zero.
    pub padding: [u8; 7],
}

impl JackInfo {
    /// Parses exactly [`size::JACK_INFO`] bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() != size::JACK_INFO {
            return None;
        }
        let mut padding = [0u8; 7];
        padding.copy_from_slice(&b[17..24]);
        Some(JackInfo {
            hda_fn_nid: le32(b, 0),
            features: le32(b, 4),
            hda_reg_defconf: le32(b, 8),
            hda_reg_caps: le32(b, 12),
            connected: b[16],
            padding,
        })
    }
}

/// `virtio_snd_pcm_info` (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmInfo {
    /// HDA function group node id.
    pub hda_fn_nid: u32,
    /// Supported PCM features (bitmap of `pcm_feature` bits).
    pub features: u32,
    /// Supported formats (bitmap of `PcmFormat` bits).
    pub formats: u64,
    /// Supported rates (bitmap of `PcmRate` bits).
    pub rates: u64,
    /// Direction (0 output, 1 input).
    pub direction: u8,
    /// Minimum channel count.
    pub channels_min: u8,
    /// Maximum channel count.
    pub channels_max: u8,
    /// Padding, must be zero.
    pub padding: [u8; 5],
}

impl PcmInfo {
    /// Parses exactly [`size::PCM_INFO`] bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() != size::PCM_INFO {
            return None;
        }
        let mut padding = [0u8; 5];
        padding.copy_from_slice(&b[27..32]);
        Some(PcmInfo {
            hda_fn_nid: le32(b, 0),
            features: le32(b, 4),
            formats: le64(b, 8),
            rates: le64(b, 16),
            direction: b[24],
            channels_min: b[25],
            channels_max: b[26],
            padding,
        })
    }

    /// The direction, if defined.
    pub fn direction(&self) -> Option<Direction> {
        Direction::try_from(self.direction).ok()
    }
}

/// `virtio_snd_chmap_info` (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChmapInfo {
    /// HDA function group node id.
    pub hda_fn_nid: u32,
    /// Direction (0 output, 1 input).
    pub direction: u8,
    /// Number of channels (at most 18).
    pub channels: u8,
    /// Channel positions (`chmap` constants).
    pub positions: [u8; 18],
}

impl ChmapInfo {
    /// Parses exactly [`size::CHMAP_INFO`] bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() != size::CHMAP_INFO {
            return None;
        }
        let mut positions = [0u8; 18];
        positions.copy_from_slice(&b[6..24]);
        Some(ChmapInfo {
            hda_fn_nid: le32(b, 0),
            direction: b[4],
            channels: b[5],
            positions,
        })
    }

    /// The positions actually in use.
    pub fn used_positions(&self) -> &[u8] {
        &self.positions[..usize::from(self.channels).min(18)]
    }
}

/// `virtio_snd_pcm_status` (8 bytes), the tail of every I/O message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmStatus {
    /// Raw status.
    pub status: u32,
    /// Device latency in bytes.
    pub latency_bytes: u32,
}

impl PcmStatus {
    /// Parses exactly [`size::PCM_STATUS`] bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        (b.len() == size::PCM_STATUS).then(|| PcmStatus {
            status: le32(b, 0),
            latency_bytes: le32(b, 4),
        })
    }
}

/// `virtio_snd_event` (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMsg {
    /// Event code (`event` constants).
    pub event_type: u32,
    /// Event data (jack id, stream id, or control id + mask).
    pub data: u32,
}

impl EventMsg {
    /// Parses exactly [`size::EVENT`] bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        (b.len() == size::EVENT).then(|| EventMsg {
            event_type: le32(b, 0),
            data: le32(b, 4),
        })
    }
}

/// Parses `count` consecutive items of `item_size` bytes.
pub fn parse_items<T>(
    bytes: &[u8],
    count: usize,
    item_size: usize,
    parse: impl Fn(&[u8]) -> Option<T>,
) -> Option<Vec<T>> {
    if bytes.len() < count.checked_mul(item_size)? {
        return None;
    }
    bytes
        .chunks_exact(item_size)
        .take(count)
        .map(parse)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn requests_encode_at_spec_offsets() {
        assert_eq!(
            query_info(code::PCM_INFO, 1, 2, 32),
            [0, 1, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 32, 0, 0, 0]
        );
        assert_eq!(pcm_hdr(code::PCM_START, 3), [0x04, 0x01, 0, 0, 3, 0, 0, 0]);
        let p = SetParams {
            stream_id: 1,
            buffer_bytes: 0x1000,
            period_bytes: 0x400,
            features: 1 << 4,
            channels: 2,
            format: 5,
            rate: 7,
            padding: 0,
        };
        assert_eq!(
            p.encode(),
            [
                0x01, 0x01, 0, 0, 1, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x04, 0, 0, 0x10, 0, 0, 0, 2, 5, 7,
                0
            ]
        );
        assert_eq!(jack_remap(1, 2, 3)[0..4], [2, 0, 0, 0]);
    }

    #[test]
    fn infos_parse_at_spec_offsets() {
        let mut b = [0u8; 32];
        b[0] = 9;
        b[4] = 0x10;
        b[8] = 0x20; // S16
        b[17] = 0x01; // bit 8 of rates
        b[24] = 1;
        b[25] = 1;
        b[26] = 2;
        b[31] = 0xff;
        let p = PcmInfo::parse(&b).unwrap();
        assert_eq!(p.hda_fn_nid, 9);
        assert_eq!(p.features, 0x10);
        assert_eq!(p.formats, 0x20);
        assert_eq!(p.rates, 0x100);
        assert_eq!(p.direction(), Some(Direction::Input));
        assert_eq!((p.channels_min, p.channels_max), (1, 2));
        assert_eq!(p.padding, [0, 0, 0, 0, 0xff]);
        assert!(PcmInfo::parse(&b[..31]).is_none());

        let mut j = [0u8; 24];
        j[12] = 7;
        j[16] = 1;
        let ji = JackInfo::parse(&j).unwrap();
        assert_eq!((ji.hda_reg_caps, ji.connected), (7, 1));

        let mut c = [0u8; 24];
        c[4] = 0;
        c[5] = 2;
        c[6] = 3;
        c[7] = 4;
        let ci = ChmapInfo::parse(&c).unwrap();
        assert_eq!(ci.used_positions(), &[3, 4]);

        let items = parse_items(
            &[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0],
            2,
            8,
            PcmStatus::parse,
        )
        .unwrap();
        assert_eq!(items[1].status, 3);
        assert!(parse_items(&[0u8; 15], 2, 8, PcmStatus::parse).is_none());
    }
}
