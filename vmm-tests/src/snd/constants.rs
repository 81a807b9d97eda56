//! virtio-snd constants (virtio spec 5.14, the sound device).
//!
//! Written from the spec, independently of the daemon's own definitions, so an
//! encoding mistake on either side shows up as a test failure.

use std::fmt;

/// Request codes (virtio-snd §1.D).
pub mod code {
    /// Query jack information.
    pub const JACK_INFO: u32 = 0x0001;
    /// Remap a jack.
    pub const JACK_REMAP: u32 = 0x0002;
    /// Query PCM stream information.
    pub const PCM_INFO: u32 = 0x0100;
    /// Set PCM stream parameters.
    pub const PCM_SET_PARAMS: u32 = 0x0101;
    /// Prepare a PCM stream.
    pub const PCM_PREPARE: u32 = 0x0102;
    /// Release a PCM stream.
    pub const PCM_RELEASE: u32 = 0x0103;
    /// Start a PCM stream.
    pub const PCM_START: u32 = 0x0104;
    /// Stop a PCM stream.
    pub const PCM_STOP: u32 = 0x0105;
    /// Query channel map information.
    pub const CHMAP_INFO: u32 = 0x0200;
    /// Query control element information.
    pub const CTL_INFO: u32 = 0x0300;
    /// Query the items of an enumerated control.
    pub const CTL_ENUM_ITEMS: u32 = 0x0301;
    /// Read a control value.
    pub const CTL_READ: u32 = 0x0302;
    /// Write a control value.
    pub const CTL_WRITE: u32 = 0x0303;
    /// Read a control TLV.
    pub const CTL_TLV_READ: u32 = 0x0304;
    /// Write a control TLV.
    pub const CTL_TLV_WRITE: u32 = 0x0305;
    /// Send a TLV command.
    pub const CTL_TLV_COMMAND: u32 = 0x0306;
}

/// Event codes (virtio-snd §1.H).
pub mod event {
    /// A jack was connected; data = jack id.
    pub const JACK_CONNECTED: u32 = 0x1000;
    /// A jack was disconnected; data = jack id.
    pub const JACK_DISCONNECTED: u32 = 0x1001;
    /// A period elapsed (shared-memory transport); data = stream id.
    pub const PCM_PERIOD_ELAPSED: u32 = 0x1100;
    /// An underrun or overrun; data = stream id.
    pub const PCM_XRUN: u32 = 0x1101;
    /// A control changed; data = le16 control id + le16 mask.
    pub const CTL_NOTIFY: u32 = 0x1200;
}

/// Raw status codes (virtio-snd §1.C).
pub mod status {
    /// Success.
    pub const OK: u32 = 0x8000;
    /// Malformed message or invalid parameters.
    pub const BAD_MSG: u32 = 0x8001;
    /// Operation or parameters not supported.
    pub const NOT_SUPP: u32 = 0x8002;
    /// I/O error.
    pub const IO_ERR: u32 = 0x8003;
}

/// PCM feature bit numbers (virtio-snd §1.E.13).
pub mod pcm_feature {
    /// Placeholder, must not be selected.
    pub const SHMEM_HOST: u32 = 0;
    /// Placeholder, must not be selected.
    pub const SHMEM_GUEST: u32 = 1;
    /// The driver suppresses tx/rx kicks; the device polls.
    pub const MSG_POLLING: u32 = 2;
    /// Period-elapsed events for the shared-memory transport.
    pub const EVT_SHMEM_PERIODS: u32 = 3;
    /// Underrun/overrun events.
    pub const EVT_XRUNS: u32 = 4;
}

/// Channel map positions (virtio-snd §1.I.30), 0 ..= 36.
pub mod chmap {
    /// Undefined.
    pub const NONE: u8 = 0;
    /// Silent.
    pub const NA: u8 = 1;
    /// Mono.
    pub const MONO: u8 = 2;
    /// Front left.
    pub const FL: u8 = 3;
    /// Front right.
    pub const FR: u8 = 4;
    /// Rear left.
    pub const RL: u8 = 5;
    /// Rear right.
    pub const RR: u8 = 6;
    /// Front center.
    pub const FC: u8 = 7;
    /// Low frequency.
    pub const LFE: u8 = 8;
    /// Side left.
    pub const SL: u8 = 9;
    /// Side right.
    pub const SR: u8 = 10;
    /// Bottom right center, the last defined position.
    pub const BRC: u8 = 36;
    /// Maximum number of channels in a map.
    pub const MAX_CHANNELS: usize = 18;
}

/// Wire sizes in bytes (virtio-snd §1.D, §1.G, §1.H).
pub mod size {
    /// `virtio_snd_hdr`.
    pub const HDR: usize = 4;
    /// `virtio_snd_query_info`.
    pub const QUERY_INFO: usize = 16;
    /// `virtio_snd_pcm_hdr`.
    pub const PCM_HDR: usize = 8;
    /// `virtio_snd_pcm_set_params`.
    pub const PCM_SET_PARAMS: usize = 24;
    /// `virtio_snd_jack_remap`.
    pub const JACK_REMAP: usize = 16;
    /// `virtio_snd_jack_info`.
    pub const JACK_INFO: usize = 24;
    /// `virtio_snd_pcm_info`.
    pub const PCM_INFO: usize = 32;
    /// `virtio_snd_chmap_info`.
    pub const CHMAP_INFO: usize = 24;
    /// `virtio_snd_ctl_info` on LP64 guests.
    pub const CTL_INFO: usize = 96;
    /// `virtio_snd_pcm_xfer`.
    pub const PCM_XFER: usize = 4;
    /// `virtio_snd_pcm_status`.
    pub const PCM_STATUS: usize = 8;
    /// `virtio_snd_event`.
    pub const EVENT: usize = 8;
}

/// A status code, including values the spec does not define.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// `VIRTIO_SND_S_OK`.
    Ok,
    /// `VIRTIO_SND_S_BAD_MSG`.
    BadMsg,
    /// `VIRTIO_SND_S_NOT_SUPP`.
    NotSupp,
    /// `VIRTIO_SND_S_IO_ERR`.
    IoErr,
    /// Anything else (a device bug, or bytes the device never wrote).
    Unknown(u32),
}

impl Status {
    /// Decodes a raw status.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            status::OK => Status::Ok,
            status::BAD_MSG => Status::BadMsg,
            status::NOT_SUPP => Status::NotSupp,
            status::IO_ERR => Status::IoErr,
            other => Status::Unknown(other),
        }
    }

    /// The raw value.
    pub fn raw(self) -> u32 {
        match self {
            Status::Ok => status::OK,
            Status::BadMsg => status::BAD_MSG,
            Status::NotSupp => status::NOT_SUPP,
            Status::IoErr => status::IO_ERR,
            Status::Unknown(raw) => raw,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Ok => f.write_str("OK"),
            Status::BadMsg => f.write_str("BAD_MSG"),
            Status::NotSupp => f.write_str("NOT_SUPP"),
            Status::IoErr => f.write_str("IO_ERR"),
            Status::Unknown(raw) => write!(f, "unknown status {raw:#x}"),
        }
    }
}

/// Error for a raw value that is not a defined enum value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Undefined {what} value {value}")]
pub struct Undefined {
    /// Which enum.
    pub what: &'static str,
    /// The raw value.
    pub value: u32,
}

/// Stream direction (virtio-snd §1.C.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Playback (txq).
    Output = 0,
    /// Capture (rxq).
    Input = 1,
}

impl TryFrom<u8> for Direction {
    type Error = Undefined;

    fn try_from(v: u8) -> Result<Self, Undefined> {
        match v {
            0 => Ok(Direction::Output),
            1 => Ok(Direction::Input),
            _ => Err(Undefined {
                what: "direction",
                value: u32::from(v),
            }),
        }
    }
}

/// PCM sample formats; the discriminant is the bit number (virtio-snd §1.E.14).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PcmFormat {
    ImaAdpcm = 0,
    MuLaw = 1,
    ALaw = 2,
    S8 = 3,
    U8 = 4,
    S16 = 5,
    U16 = 6,
    S18_3 = 7,
    U18_3 = 8,
    S20_3 = 9,
    U20_3 = 10,
    S24_3 = 11,
    U24_3 = 12,
    S20 = 13,
    U20 = 14,
    S24 = 15,
    U24 = 16,
    S32 = 17,
    U32 = 18,
    Float = 19,
    Float64 = 20,
    DsdU8 = 21,
    DsdU16 = 22,
    DsdU32 = 23,
    Iec958Subframe = 24,
}

impl PcmFormat {
    /// Every format, by bit number.
    pub const ALL: [PcmFormat; 25] = [
        PcmFormat::ImaAdpcm,
        PcmFormat::MuLaw,
        PcmFormat::ALaw,
        PcmFormat::S8,
        PcmFormat::U8,
        PcmFormat::S16,
        PcmFormat::U16,
        PcmFormat::S18_3,
        PcmFormat::U18_3,
        PcmFormat::S20_3,
        PcmFormat::U20_3,
        PcmFormat::S24_3,
        PcmFormat::U24_3,
        PcmFormat::S20,
        PcmFormat::U20,
        PcmFormat::S24,
        PcmFormat::U24,
        PcmFormat::S32,
        PcmFormat::U32,
        PcmFormat::Float,
        PcmFormat::Float64,
        PcmFormat::DsdU8,
        PcmFormat::DsdU16,
        PcmFormat::DsdU32,
        PcmFormat::Iec958Subframe,
    ];

    /// The wire value (bit number).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The bit in a `formats` bitmap.
    pub fn bit(self) -> u64 {
        1 << (self as u8)
    }

    /// Bytes of one sample of one channel; `None` for IMA ADPCM (4 bits).
    pub fn sample_bytes(self) -> Option<usize> {
        use PcmFormat::*;
        match self {
            ImaAdpcm => None,
            MuLaw | ALaw | S8 | U8 | DsdU8 => Some(1),
            S16 | U16 | DsdU16 => Some(2),
            S18_3 | U18_3 | S20_3 | U20_3 | S24_3 | U24_3 => Some(3),
            S20 | U20 | S24 | U24 | S32 | U32 | Float | DsdU32 | Iec958Subframe => Some(4),
            Float64 => Some(8),
        }
    }
}

impl TryFrom<u8> for PcmFormat {
    type Error = Undefined;

    fn try_from(v: u8) -> Result<Self, Undefined> {
        PcmFormat::ALL
            .get(usize::from(v))
            .copied()
            .ok_or(Undefined {
                what: "format",
                value: u32::from(v),
            })
    }
}

/// PCM frame rates; the discriminant is the bit number (virtio-snd §1.E.15).
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PcmRate {
    R5512 = 0,
    R8000 = 1,
    R11025 = 2,
    R16000 = 3,
    R22050 = 4,
    R32000 = 5,
    R44100 = 6,
    R48000 = 7,
    R64000 = 8,
    R88200 = 9,
    R96000 = 10,
    R176400 = 11,
    R192000 = 12,
    R384000 = 13,
    R12000 = 14,
    R24000 = 15,
}

impl PcmRate {
    /// Every rate, by bit number.
    pub const ALL: [PcmRate; 16] = [
        PcmRate::R5512,
        PcmRate::R8000,
        PcmRate::R11025,
        PcmRate::R16000,
        PcmRate::R22050,
        PcmRate::R32000,
        PcmRate::R44100,
        PcmRate::R48000,
        PcmRate::R64000,
        PcmRate::R88200,
        PcmRate::R96000,
        PcmRate::R176400,
        PcmRate::R192000,
        PcmRate::R384000,
        PcmRate::R12000,
        PcmRate::R24000,
    ];

    /// The wire value (bit number).
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The bit in a `rates` bitmap.
    pub fn bit(self) -> u64 {
        1 << (self as u8)
    }

    /// Frames per second.
    pub fn hz(self) -> u32 {
        const HZ: [u32; 16] = [
            5512, 8000, 11025, 16000, 22050, 32000, 44100, 48000, 64000, 88200, 96000, 176400,
            192000, 384000, 12000, 24000,
        ];
        HZ[self as usize]
    }
}

impl TryFrom<u8> for PcmRate {
    type Error = Undefined;

    fn try_from(v: u8) -> Result<Self, Undefined> {
        PcmRate::ALL.get(usize::from(v)).copied().ok_or(Undefined {
            what: "rate",
            value: u32::from(v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        for raw in [0x8000, 0x8001, 0x8002, 0x8003, 0, 0xcccc_cccc] {
            assert_eq!(Status::from_raw(raw).raw(), raw);
        }
        assert_eq!(Status::from_raw(0x8001), Status::BadMsg);
    }

    #[test]
    fn enums_match_their_bit_numbers() {
        for (i, f) in PcmFormat::ALL.iter().enumerate() {
            assert_eq!(usize::from(f.code()), i);
            assert_eq!(PcmFormat::try_from(f.code()), Ok(*f));
        }
        for (i, r) in PcmRate::ALL.iter().enumerate() {
            assert_eq!(usize::from(r.code()), i);
        }
        assert_eq!(PcmFormat::S16.bit(), 1 << 5);
        assert_eq!(PcmRate::R48000.bit(), 1 << 7);
        assert_eq!(PcmRate::R48000.hz(), 48000);
        assert_eq!(PcmRate::R24000.hz(), 24000);
        assert!(PcmFormat::try_from(25).is_err());
        assert!(PcmRate::try_from(16).is_err());
        assert!(Direction::try_from(2).is_err());
        assert_eq!(PcmFormat::S24_3.sample_bytes(), Some(3));
        assert_eq!(PcmFormat::S24.sample_bytes(), Some(4));
    }
}
