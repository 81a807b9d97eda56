//! PCM sample formats and negotiated stream parameters.

use std::fmt;

/// A PCM sample format, as virtio-snd names them (all little-endian).
///
/// The discriminant is the virtio-snd format code (`VIRTIO_SND_PCM_FMT_*`,
/// spec 5.14.6.6.2), which is also the bit in `pcm_info.formats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Format {
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

impl Format {
    /// Every supported format (IMA ADPCM, code 0, is not: it has no whole
    /// byte per sample).
    pub const ALL: [Format; 24] = [
        Format::MuLaw,
        Format::ALaw,
        Format::S8,
        Format::U8,
        Format::S16,
        Format::U16,
        Format::S18_3,
        Format::U18_3,
        Format::S20_3,
        Format::U20_3,
        Format::S24_3,
        Format::U24_3,
        Format::S20,
        Format::U20,
        Format::S24,
        Format::U24,
        Format::S32,
        Format::U32,
        Format::Float,
        Format::Float64,
        Format::DsdU8,
        Format::DsdU16,
        Format::DsdU32,
        Format::Iec958Subframe,
    ];

    /// The virtio-snd format code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The format with this virtio-snd code, if supported.
    pub fn from_code(code: u8) -> Option<Format> {
        Format::ALL.iter().copied().find(|f| f.code() == code)
    }

    /// The name used in config files (`"S16"`, `"FLOAT"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Format::MuLaw => "MU_LAW",
            Format::ALaw => "A_LAW",
            Format::S8 => "S8",
            Format::U8 => "U8",
            Format::S16 => "S16",
            Format::U16 => "U16",
            Format::S18_3 => "S18_3",
            Format::U18_3 => "U18_3",
            Format::S20_3 => "S20_3",
            Format::U20_3 => "U20_3",
            Format::S24_3 => "S24_3",
            Format::U24_3 => "U24_3",
            Format::S20 => "S20",
            Format::U20 => "U20",
            Format::S24 => "S24",
            Format::U24 => "U24",
            Format::S32 => "S32",
            Format::U32 => "U32",
            Format::Float => "FLOAT",
            Format::Float64 => "FLOAT64",
            Format::DsdU8 => "DSD_U8",
            Format::DsdU16 => "DSD_U16",
            Format::DsdU32 => "DSD_U32",
            Format::Iec958Subframe => "IEC958_SUBFRAME",
        }
    }

    /// The format with this config-file name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL
            .iter()
            .copied()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Bytes one sample of one channel takes in an interleaved buffer.
    pub fn sample_bytes(self) -> u32 {
        match self {
            Format::MuLaw | Format::ALaw | Format::S8 | Format::U8 | Format::DsdU8 => 1,
            Format::S16 | Format::U16 | Format::DsdU16 => 2,
            Format::S18_3
            | Format::U18_3
            | Format::S20_3
            | Format::U20_3
            | Format::S24_3
            | Format::U24_3 => 3,
            Format::S20
            | Format::U20
            | Format::S24
            | Format::U24
            | Format::S32
            | Format::U32
            | Format::Float
            | Format::DsdU32
            | Format::Iec958Subframe => 4,
            Format::Float64 => 8,
        }
    }

    /// The byte pattern of one silent sample (unsigned formats centre on
    /// 0x80..., mu-law and A-law have their own codes).
    pub fn silence_byte(self) -> u8 {
        match self {
            Format::U8 => 0x80,
            Format::MuLaw => 0xff,
            Format::ALaw => 0xd5,
            Format::DsdU8 | Format::DsdU16 | Format::DsdU32 => 0x69,
            _ => 0,
        }
    }

    /// Fills `buf` with silence in this format.
    pub fn fill_silence(self, buf: &mut [u8]) {
        let sample = self.sample_bytes() as usize;
        match self {
            Format::U16 | Format::U18_3 | Format::U20_3 | Format::U24_3 => {
                // Unsigned multi-byte little-endian: only the top byte is 0x80.
                // Signed zero otherwise.
                buf.fill(0);
                for chunk in buf.chunks_exact_mut(sample) {
                    if let Some(top) = chunk.last_mut() {
                        *top = 0x80;
                    }
                }
            }
            Format::U20 | Format::U24 => {
                // 20/24 significant bits, LSB-justified in a 32-bit
                // container: the midpoint is 0x0008_0000 / 0x0080_0000.
                buf.fill(0);
                let bit = if self == Format::U20 { 0x08 } else { 0x80 };
                for chunk in buf.chunks_exact_mut(4) {
                    if let Some(b) = chunk.get_mut(2) {
                        *b = bit;
                    }
                }
            }
            Format::U32 => {
                buf.fill(0);
                for chunk in buf.chunks_exact_mut(4) {
                    if let Some(b) = chunk.get_mut(3) {
                        *b = 0x80;
                    }
                }
            }
            _ => buf.fill(self.silence_byte()),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The frame rates virtio-snd can express; the index is the rate's code
/// (the bit in `pcm_info.rates`, spec 5.14.6.6.2). Linux maps codes 0–12
/// only.
pub const VIRTIO_RATES: [u32; 16] = [
    5512, 8000, 11025, 16000, 22050, 32000, 44100, 48000, 64000, 88200, 96000, 176400, 192000,
    384000, 12000, 24000,
];

/// The parameters a guest negotiated for a stream (`PCM_SET_PARAMS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamParams {
    pub format: Format,
    /// Frames per second.
    pub rate: u32,
    pub channels: u8,
    pub period_bytes: u32,
    pub buffer_bytes: u32,
}

impl StreamParams {
    /// Bytes per interleaved frame.
    pub fn frame_bytes(&self) -> u32 {
        self.format.sample_bytes() * u32::from(self.channels)
    }

    /// Bytes per second of audio.
    pub fn bytes_per_second(&self) -> u64 {
        u64::from(self.frame_bytes()) * u64::from(self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_round_trips_through_its_code_and_name() {
        for f in Format::ALL {
            assert_eq!(Format::from_code(f.code()), Some(f));
            assert_eq!(Format::from_name(f.name()), Some(f));
        }
        assert_eq!(Format::from_code(0), None, "IMA_ADPCM is not supported");
        assert_eq!(Format::from_code(25), None);
    }

    #[test]
    fn silence_is_the_midpoint_of_each_format() {
        let mut b = [1u8; 8];
        Format::S16.fill_silence(&mut b);
        assert_eq!(b, [0; 8]);
        Format::U16.fill_silence(&mut b);
        assert_eq!(b, [0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80]);
        Format::U8.fill_silence(&mut b);
        assert_eq!(b, [0x80; 8]);
        Format::U24.fill_silence(&mut b);
        assert_eq!(b, [0, 0, 0x80, 0, 0, 0, 0x80, 0]);
    }

    #[test]
    fn frame_and_byte_rate_follow_the_format() {
        let p = StreamParams {
            format: Format::S16,
            rate: 48000,
            channels: 2,
            period_bytes: 1920,
            buffer_bytes: 7680,
        };
        assert_eq!(p.frame_bytes(), 4);
        assert_eq!(p.bytes_per_second(), 192_000);
    }
}

/// How a linear PCM format stores one sample (little-endian): what the
/// daemon needs to scale (volume) or sum (mixing) samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sample {
    /// An integer: bytes per sample, significant bits, signed or not
    /// (unsigned ones are centred on half their range).
    Int {
        bytes: usize,
        bits: u32,
        signed: bool,
    },
    F32,
    F64,
}

impl Format {
    /// The sample layout of a linear PCM format; `None` for the companded
    /// (MU_LAW, A_LAW), DSD and IEC958 ones.
    pub fn sample(self) -> Option<Sample> {
        use Format::*;
        let int = |bytes, bits, signed| {
            Some(Sample::Int {
                bytes,
                bits,
                signed,
            })
        };
        match self {
            S8 => int(1, 8, true),
            U8 => int(1, 8, false),
            S16 => int(2, 16, true),
            U16 => int(2, 16, false),
            S18_3 => int(3, 18, true),
            U18_3 => int(3, 18, false),
            S20_3 => int(3, 20, true),
            U20_3 => int(3, 20, false),
            S24_3 => int(3, 24, true),
            U24_3 => int(3, 24, false),
            S20 => int(4, 20, true),
            U20 => int(4, 20, false),
            S24 => int(4, 24, true),
            U24 => int(4, 24, false),
            S32 => int(4, 32, true),
            U32 => int(4, 32, false),
            Float => Some(Sample::F32),
            Float64 => Some(Sample::F64),
            _ => None,
        }
    }
}
