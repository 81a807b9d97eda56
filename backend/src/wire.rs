//! virtio-snd wire structures (spec 5.14.6), little-endian, `repr(C)`, with
//! every padding byte spelled out. Each has a compile-time size assertion
//! against the spec, so a layout mistake fails to build.

use vm_memory::{ByteValued, Le32, Le64};

/// Device configuration space (spec 5.14.4). `controls` is only visible
/// when `VIRTIO_SND_F_CTLS` is negotiated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VirtioSndConfig {
    pub jacks: Le32,
    pub streams: Le32,
    pub chmaps: Le32,
    pub controls: Le32,
}

/// Common request/response header.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Hdr {
    pub code: Le32,
}

/// `virtio_snd_query_info`: JACK_INFO, PCM_INFO, CHMAP_INFO requests.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct QueryInfo {
    pub hdr: Hdr,
    pub start_id: Le32,
    pub count: Le32,
    pub size: Le32,
}

/// `virtio_snd_jack_hdr` + remap fields: JACK_REMAP request.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct JackRemap {
    pub hdr: Hdr,
    pub jack_id: Le32,
    pub association: Le32,
    pub sequence: Le32,
}

/// `virtio_snd_jack_info`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct JackInfo {
    pub hda_fn_nid: Le32,
    pub features: Le32,
    pub hda_reg_defconf: Le32,
    pub hda_reg_caps: Le32,
    pub connected: u8,
    pub padding: [u8; 7],
}

/// `virtio_snd_pcm_hdr`: PREPARE, RELEASE, START, STOP requests.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct PcmHdr {
    pub hdr: Hdr,
    pub stream_id: Le32,
}

/// `virtio_snd_pcm_set_params`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct PcmSetParams {
    pub hdr: PcmHdr,
    pub buffer_bytes: Le32,
    pub period_bytes: Le32,
    pub features: Le32,
    pub channels: u8,
    pub format: u8,
    pub rate: u8,
    pub padding: u8,
}

/// `virtio_snd_pcm_info`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct PcmInfo {
    pub hda_fn_nid: Le32,
    pub features: Le32,
    pub formats: Le64,
    pub rates: Le64,
    pub direction: u8,
    pub channels_min: u8,
    pub channels_max: u8,
    pub padding: [u8; 5],
}

/// `virtio_snd_chmap_info`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct ChmapInfo {
    pub hda_fn_nid: Le32,
    pub direction: u8,
    pub channels: u8,
    pub positions: [u8; crate::constants::CHMAP_MAX_SIZE],
}

/// `virtio_snd_pcm_xfer`: the head of a tx/rx message.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct PcmXfer {
    pub stream_id: Le32,
}

/// `virtio_snd_pcm_status`: the tail of a tx/rx message.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct PcmStatus {
    pub status: Le32,
    pub latency_bytes: Le32,
}

/// `virtio_snd_event`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Event {
    pub hdr: Hdr,
    pub data: Le32,
}

// All impls below: each type is `repr(C)`, made only of `Le32`, `Le64`, `u8`
// and arrays of them, with explicit padding fields so there is no implicit
// padding (the size assertions below prove it); every bit pattern is valid.
// SAFETY: see above.
unsafe impl ByteValued for VirtioSndConfig {}
// SAFETY: see above.
unsafe impl ByteValued for Hdr {}
// SAFETY: see above.
unsafe impl ByteValued for QueryInfo {}
// SAFETY: see above.
unsafe impl ByteValued for JackRemap {}
// SAFETY: see above.
unsafe impl ByteValued for JackInfo {}
// SAFETY: see above.
unsafe impl ByteValued for PcmHdr {}
// SAFETY: see above.
unsafe impl ByteValued for PcmSetParams {}
// SAFETY: see above.
unsafe impl ByteValued for PcmInfo {}
// SAFETY: see above.
unsafe impl ByteValued for ChmapInfo {}
// SAFETY: see above.
unsafe impl ByteValued for PcmXfer {}
// SAFETY: see above.
unsafe impl ByteValued for PcmStatus {}
// SAFETY: see above.
unsafe impl ByteValued for Event {}

// Sizes from virtio spec 5.14.6 (the sound device's requests and structures).
const _: () = assert!(std::mem::size_of::<VirtioSndConfig>() == 16);
const _: () = assert!(std::mem::size_of::<Hdr>() == 4);
const _: () = assert!(std::mem::size_of::<QueryInfo>() == 16);
const _: () = assert!(std::mem::size_of::<JackRemap>() == 16);
const _: () = assert!(std::mem::size_of::<JackInfo>() == 24);
const _: () = assert!(std::mem::size_of::<PcmHdr>() == 8);
const _: () = assert!(std::mem::size_of::<PcmSetParams>() == 24);
const _: () = assert!(std::mem::size_of::<PcmInfo>() == 32);
const _: () = assert!(std::mem::size_of::<ChmapInfo>() == 24);
const _: () = assert!(std::mem::size_of::<PcmXfer>() == 4);
const _: () = assert!(std::mem::size_of::<PcmStatus>() == 8);
const _: () = assert!(std::mem::size_of::<Event>() == 8);

/// Size of the config space without `controls` (CTLS not negotiated).
pub const CONFIG_SIZE_NO_CTLS: usize = 12;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_params_fields_sit_at_spec_offsets() {
        let mut p = PcmSetParams::default();
        p.hdr.stream_id = 7.into();
        p.buffer_bytes = 0x1000.into();
        p.period_bytes = 0x400.into();
        p.features = 0x10.into();
        p.channels = 2;
        p.format = 5;
        p.rate = 7;
        let b = p.as_slice();
        assert_eq!(&b[4..8], &7u32.to_le_bytes());
        assert_eq!(&b[8..12], &0x1000u32.to_le_bytes());
        assert_eq!(&b[12..16], &0x400u32.to_le_bytes());
        assert_eq!(&b[16..20], &0x10u32.to_le_bytes());
        assert_eq!(&b[20..24], &[2, 5, 7, 0]);
    }

    #[test]
    fn pcm_info_fields_sit_at_spec_offsets() {
        let i = PcmInfo {
            hda_fn_nid: 1.into(),
            features: 0x10.into(),
            formats: (1u64 << 5).into(),
            rates: (1u64 << 7).into(),
            direction: 1,
            channels_min: 1,
            channels_max: 2,
            padding: [0; 5],
        };
        let b = i.as_slice();
        assert_eq!(&b[8..16], &(1u64 << 5).to_le_bytes());
        assert_eq!(&b[16..24], &(1u64 << 7).to_le_bytes());
        assert_eq!(&b[24..27], &[1, 1, 2]);
        assert_eq!(&b[27..], &[0; 5]);
    }
}
