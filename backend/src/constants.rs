//! virtio-snd codes as enums (spec 5.14, "Device Operation").
//!
//! Every code that arrives from the guest goes through a `TryFrom` here, so
//! the rest of the daemon never handles a raw integer from the wire.

/// Virtqueue indices (spec 5.14.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueIndex {
    Control = 0,
    Event = 1,
    Tx = 2,
    Rx = 3,
}

impl QueueIndex {
    pub const COUNT: usize = 4;

    pub fn from_index(i: u16) -> Option<Self> {
        match i {
            0 => Some(Self::Control),
            1 => Some(Self::Event),
            2 => Some(Self::Tx),
            3 => Some(Self::Rx),
            _ => None,
        }
    }
}

/// Device feature bit: the device supports control elements.
pub const VIRTIO_SND_F_CTLS: u64 = 1 << 0;

/// Control request codes (spec 5.14.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestCode {
    JackInfo = 0x0001,
    JackRemap = 0x0002,
    PcmInfo = 0x0100,
    PcmSetParams = 0x0101,
    PcmPrepare = 0x0102,
    PcmRelease = 0x0103,
    PcmStart = 0x0104,
    PcmStop = 0x0105,
    ChmapInfo = 0x0200,
    CtlInfo = 0x0300,
    CtlEnumItems = 0x0301,
    CtlRead = 0x0302,
    CtlWrite = 0x0303,
    CtlTlvRead = 0x0304,
    CtlTlvWrite = 0x0305,
    CtlTlvCommand = 0x0306,
}

impl TryFrom<u32> for RequestCode {
    type Error = u32;

    fn try_from(code: u32) -> Result<Self, u32> {
        Ok(match code {
            0x0001 => Self::JackInfo,
            0x0002 => Self::JackRemap,
            0x0100 => Self::PcmInfo,
            0x0101 => Self::PcmSetParams,
            0x0102 => Self::PcmPrepare,
            0x0103 => Self::PcmRelease,
            0x0104 => Self::PcmStart,
            0x0105 => Self::PcmStop,
            0x0200 => Self::ChmapInfo,
            0x0300 => Self::CtlInfo,
            0x0301 => Self::CtlEnumItems,
            0x0302 => Self::CtlRead,
            0x0303 => Self::CtlWrite,
            0x0304 => Self::CtlTlvRead,
            0x0305 => Self::CtlTlvWrite,
            0x0306 => Self::CtlTlvCommand,
            other => return Err(other),
        })
    }
}

/// Status codes of control and I/O responses (spec 5.14.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0x8000,
    BadMsg = 0x8001,
    NotSupp = 0x8002,
    IoErr = 0x8003,
}

impl Status {
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// Data flow direction (spec 5.14.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Output = 0,
    Input = 1,
}

impl Direction {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Output => "output",
            Direction::Input => "input",
        }
    }
}

/// Event types (spec 5.14.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    JackConnected = 0x1000,
    JackDisconnected = 0x1001,
    PcmXrun = 0x1101,
    /// `virtio_snd_ctl_event`: data = control id | mask << 16.
    CtlNotify = 0x1200,
}

/// PCM stream feature bits (spec 5.14.6.6.2).
pub mod pcm_features {
    pub const SHMEM_HOST: u32 = 1 << 0;
    pub const SHMEM_GUEST: u32 = 1 << 1;
    pub const MSG_POLLING: u32 = 1 << 2;
    pub const EVT_SHMEM_PERIODS: u32 = 1 << 3;
    pub const EVT_XRUNS: u32 = 1 << 4;
}

/// The frame rates virtio-snd can express; the index is the bit in
/// `pcm_info.rates` (spec 5.14.6.6.2). Linux maps bits 0–12 only.
pub const RATES: [u32; 16] = vsound_devices::VIRTIO_RATES;

/// The virtio-snd rate code of a frame rate.
pub fn rate_code(rate: u32) -> Option<u8> {
    RATES
        .iter()
        .position(|&r| r == rate)
        .and_then(|i| u8::try_from(i).ok())
}

/// The frame rate of a virtio-snd rate code.
pub fn rate_from_code(code: u8) -> Option<u32> {
    RATES.get(usize::from(code)).copied()
}

/// Channel positions (spec 5.14.6.9.1); only those our maps use.
pub mod chmap_pos {
    pub const MONO: u8 = 2;
    pub const FL: u8 = 3;
    pub const FR: u8 = 4;
    pub const RL: u8 = 5;
    pub const RR: u8 = 6;
    pub const FC: u8 = 7;
    pub const LFE: u8 = 8;
    pub const SL: u8 = 9;
    pub const SR: u8 = 10;
    pub const RC: u8 = 11;
}

/// Every channel position's name, by its code (`VIRTIO_SND_CHMAP_*`, spec
/// 5.14.6.9.1; ALSA's names).
pub const CHMAP_NAMES: [&str; 37] = [
    "NONE", "NA", "MONO", "FL", "FR", "RL", "RR", "FC", "LFE", "SL", "SR", "RC", "FLC", "FRC",
    "RLC", "RRC", "FLW", "FRW", "FLH", "FCH", "FRH", "TC", "TFL", "TFR", "TFC", "TRL", "TRR",
    "TRC", "TFLC", "TFRC", "TSL", "TSR", "LLFE", "RLFE", "BC", "BLC", "BRC",
];

/// A channel position's code from its name (case-insensitive).
pub fn chmap_code(name: &str) -> Option<u8> {
    CHMAP_NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .and_then(|i| u8::try_from(i).ok())
}

/// The most channels a channel map can describe.
pub const CHMAP_MAX_SIZE: usize = 18;

/// The usual speaker positions for `channels` channels (ALSA's order).
pub fn standard_positions(channels: u8) -> [u8; CHMAP_MAX_SIZE] {
    use chmap_pos::*;
    let order: &[u8] = match channels {
        1 => &[MONO],
        2 => &[FL, FR],
        3 => &[FL, FR, FC],
        4 => &[FL, FR, RL, RR],
        5 => &[FL, FR, RL, RR, FC],
        6 => &[FL, FR, RL, RR, FC, LFE],
        7 => &[FL, FR, RL, RR, FC, LFE, RC],
        _ => &[FL, FR, RL, RR, FC, LFE, SL, SR],
    };
    let mut out = [0u8; CHMAP_MAX_SIZE];
    for (slot, pos) in out.iter_mut().zip(order) {
        *slot = *pos;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_position_names_match_their_codes() {
        assert_eq!(chmap_code("FL"), Some(chmap_pos::FL));
        assert_eq!(chmap_code("rc"), Some(chmap_pos::RC));
        assert_eq!(chmap_code("MONO"), Some(chmap_pos::MONO));
        assert_eq!(chmap_code("BRC"), Some(36));
        assert_eq!(chmap_code("XX"), None);
    }

    #[test]
    fn request_codes_round_trip_and_unknown_codes_are_refused() {
        for c in [
            0x0001u32, 0x0002, 0x0100, 0x0101, 0x0102, 0x0103, 0x0104, 0x0105, 0x0200, 0x0300,
            0x0301, 0x0302, 0x0303, 0x0304, 0x0305, 0x0306,
        ] {
            assert_eq!(RequestCode::try_from(c).map(|r| r as u32), Ok(c));
        }
        assert_eq!(RequestCode::try_from(0x0307), Err(0x0307));
        assert_eq!(RequestCode::try_from(0x0106), Err(0x0106));
        assert_eq!(RequestCode::try_from(0), Err(0));
    }

    #[test]
    fn rate_codes_match_the_spec_table() {
        assert_eq!(rate_code(48000), Some(7));
        assert_eq!(rate_code(44100), Some(6));
        assert_eq!(rate_code(192000), Some(12));
        assert_eq!(rate_code(12345), None);
        assert_eq!(rate_from_code(7), Some(48000));
        assert_eq!(rate_from_code(16), None);
    }
}
