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

/// `virtio_snd_ctl_hdr`: a control element request.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct CtlHdr {
    pub hdr: Hdr,
    pub control_id: Le32,
}

/// `virtio_snd_ctl_info` (spec 5.14.6.10.1). The value union holds 64-bit
/// members, so the C struct has 4 bytes of padding after `name`; `value`
/// is the union's bytes (for an INTEGER element: min, max, step).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct CtlInfo {
    pub hda_fn_nid: Le32,
    pub role: Le32,
    pub kind: Le32,
    pub access: Le32,
    pub count: Le32,
    pub index: Le32,
    pub name: [u8; 44],
    pub padding: [u8; 4],
    pub value: [u8; 24],
}

impl Default for CtlInfo {
    fn default() -> Self {
        CtlInfo {
            hda_fn_nid: 0.into(),
            role: 0.into(),
            kind: 0.into(),
            access: 0.into(),
            count: 0.into(),
            index: 0.into(),
            name: [0; 44],
            padding: [0; 4],
            value: [0; 24],
        }
    }
}

/// `virtio_snd_ctl_value`: an element's value (a union of 512 bytes; our
/// elements use `integer[0]`).
pub const CTL_VALUE_SIZE: usize = 512;

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
// SAFETY: see above.
unsafe impl ByteValued for CtlHdr {}
// SAFETY: see above.
unsafe impl ByteValued for CtlInfo {}

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
const _: () = assert!(std::mem::size_of::<CtlHdr>() == 8);
const _: () = assert!(std::mem::size_of::<CtlInfo>() == 96);

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
    fn ctl_info_fields_sit_at_the_c_structs_offsets() {
        let mut i = CtlInfo {
            hda_fn_nid: 3.into(),
            role: 1.into(),
            kind: 1.into(),
            access: 0x13.into(),
            count: 1.into(),
            index: 2.into(),
            ..CtlInfo::default()
        };
        i.name[0] = b'M';
        i.value[4..8].copy_from_slice(&120u32.to_le_bytes());
        let b = i.as_slice();
        assert_eq!(&b[0..4], &3u32.to_le_bytes());
        assert_eq!(&b[12..16], &0x13u32.to_le_bytes());
        assert_eq!(&b[20..24], &2u32.to_le_bytes());
        assert_eq!(b[24], b'M');
        // The union starts 8-aligned, after 4 bytes of padding.
        assert_eq!(&b[76..80], &120u32.to_le_bytes());
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
