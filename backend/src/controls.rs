//! Control elements (`VIRTIO_SND_F_CTLS`, spec 5.14.6.10): a volume and a
//! mute switch per stream configured with `volume = true`, applied by the
//! daemon as software gain on the frames it moves.
//!
//! The levels outlive VMM connections (they belong to the daemon, see
//! [`Controls`]) and, with `[daemon] state_file`, the daemon itself.
//!
//! The mapping, in the guest's and the operator's words: the volume is an
//! integer control 0..=120 whose dB scale (TLV `DB_SCALE`, min -60 dB,
//! step 0.5 dB) `alsamixer` shows; 120 is 0 dB and passes the frames
//! through bit-exact; every 6 dB below halves the amplitude exactly (the
//! gain of step `s` is `2^((s - 120) / 12)`: -6 dB is 1/2, -12 dB 1/4,
//! -60 dB 1/1024), and samples are rounded to the nearest value. The
//! switch is on (1) when the stream is heard; off gives silence.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use vsound_devices::{Format, Sample};

use crate::config::{Config, VolumeConfig};
use crate::constants::Direction;

/// Volume steps: 0 (-60 dB) ..= 120 (0 dB).
pub const MAX_STEP: u32 = 120;
/// One step in hundredths of a dB (the TLV's unit).
pub const STEP_CENTIBEL: i32 = 50;
/// The lowest level, in hundredths of a dB.
pub const MIN_CENTIBEL: i32 = -6000;

/// A step as dB.
pub fn step_db(step: u32) -> f64 {
    f64::from(MIN_CENTIBEL + STEP_CENTIBEL * i32::try_from(step.min(MAX_STEP)).unwrap_or(0)) / 100.0
}

/// The step nearest to `db` (clamped to -60..=0 dB).
pub fn db_step(db: f64) -> u32 {
    let s = ((db * 100.0 - f64::from(MIN_CENTIBEL)) / f64::from(STEP_CENTIBEL)).round();
    if s.is_nan() || s <= 0.0 {
        0
    } else if s >= f64::from(MAX_STEP) {
        MAX_STEP
    } else {
        s as u32
    }
}

/// A stream's level: volume step and switch, read by its worker at every
/// period without a lock.
#[derive(Debug)]
pub struct Level {
    step: AtomicU32,
    on: AtomicBool,
}

/// What a level does to frames.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Gain {
    /// 0 dB and on: the frames pass untouched.
    Unity,
    /// Off: silence.
    Mute,
    /// Multiply every sample by this (0 < f < 1).
    Factor(f64),
}

impl Level {
    pub fn new(step: u32, on: bool) -> Level {
        Level {
            step: AtomicU32::new(step.min(MAX_STEP)),
            on: AtomicBool::new(on),
        }
    }

    pub fn step(&self) -> u32 {
        self.step.load(Ordering::Relaxed)
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Sets the step; returns whether it changed.
    pub fn set_step(&self, step: u32) -> bool {
        self.step.swap(step.min(MAX_STEP), Ordering::Relaxed) != step.min(MAX_STEP)
    }

    /// Sets the switch; returns whether it changed.
    pub fn set_on(&self, on: bool) -> bool {
        self.on.swap(on, Ordering::Relaxed) != on
    }

    pub fn gain(&self) -> Gain {
        if !self.is_on() {
            return Gain::Mute;
        }
        match self.step() {
            MAX_STEP => Gain::Unity,
            s => Gain::Factor(factor(s)),
        }
    }
}

/// The amplitude factor of a step: `2^((step - 120) / 12)`.
pub fn factor(step: u32) -> f64 {
    let below = f64::from(MAX_STEP.saturating_sub(step));
    (-below / 12.0).exp2()
}

/// What a control element is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Volume,
    Switch,
}

/// One control element, as the guest sees it.
#[derive(Clone, Debug)]
pub struct ControlDef {
    /// The stream it acts on.
    pub stream: usize,
    pub kind: Kind,
    /// The ALSA element name ("Master Playback Volume", ...).
    pub name: String,
    /// ALSA's index for elements sharing a name.
    pub index: u32,
    /// The stream's function group (`hda_fn_nid`).
    pub group: u32,
}

/// The daemon's control elements and the levels they set.
#[derive(Debug, Default)]
pub struct Controls {
    pub defs: Vec<ControlDef>,
    /// Per stream (by id): its level, if it has controls.
    pub levels: Vec<Option<Arc<Level>>>,
    /// `[daemon] state_file`: where the levels are kept across restarts.
    state_file: Option<PathBuf>,
    /// Levels changed since the state file was last written.
    dirty: Mutex<bool>,
    wake: Condvar,
}

impl Controls {
    /// The elements of every stream with `volume = true`, in stream order:
    /// its volume, then its switch.
    pub fn from_config(config: &Config) -> Controls {
        let mut defs: Vec<ControlDef> = Vec::new();
        let mut levels = Vec::new();
        for (id, sc) in config.streams.iter().enumerate() {
            let Some(v) = &sc.volume else {
                levels.push(None);
                continue;
            };
            levels.push(Some(Arc::new(Level::new(v.initial_step, !v.muted))));
            for kind in [Kind::Volume, Kind::Switch] {
                let name = element_name(v, sc.direction, kind);
                let index = u32::try_from(defs.iter().filter(|d| d.name == name).count())
                    .unwrap_or(u32::MAX);
                defs.push(ControlDef {
                    stream: id,
                    kind,
                    name,
                    index,
                    group: sc.group,
                });
            }
        }
        let controls = Controls {
            defs,
            levels,
            state_file: config.state_file.clone(),
            dirty: Mutex::new(false),
            wake: Condvar::new(),
        };
        controls.load();
        controls
    }

    /// Takes the levels saved in the state file (a stream whose controls
    /// are gone, or a file that is missing or unreadable, is skipped with
    /// a warning: never fatal).
    fn load(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                log::warn!(
                    "state file {}: {e}; starting from the configured levels",
                    path.display()
                );
                return;
            }
        };
        let v: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                log::warn!(
                    "state file {}: not JSON ({e}); starting from the configured levels",
                    path.display()
                );
                return;
            }
        };
        let mut n = 0;
        for (id, saved) in v["streams"].as_object().into_iter().flatten() {
            let Some(level) = id.parse::<usize>().ok().and_then(|i| self.level(i)) else {
                log::warn!(
                    "state file {}: stream {id} has no controls now; skipped",
                    path.display()
                );
                continue;
            };
            if let Some(db) = saved["volume_db"].as_f64() {
                level.set_step(db_step(db));
            }
            if let Some(on) = saved["on"].as_bool() {
                level.set_on(on);
            }
            n += 1;
        }
        log::info!(
            "state file {}: levels of {n} streams restored",
            path.display()
        );
    }

    /// Asks for the levels to be written to the state file (if one is
    /// configured), by the state thread ([`Controls::spawn_writer`]): the
    /// threads that change levels (the guest's control queue) never touch
    /// files.
    pub fn save(&self) {
        if self.state_file.is_some() {
            *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.wake.notify_all();
        }
    }

    /// Starts the thread that writes the state file when levels change
    /// (none without a state file). It ends when the controls are dropped.
    pub fn spawn_writer(self: &Arc<Self>) -> std::io::Result<()> {
        if self.state_file.is_none() {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("vsound-state".into())
            .spawn(move || {
                crate::sandbox::enter(crate::sandbox::ThreadKind::State);
                loop {
                    let Some(c) = weak.upgrade() else { return };
                    let due = {
                        let d = c.dirty.lock().unwrap_or_else(|e| e.into_inner());
                        let (mut d, _) = c
                            .wake
                            .wait_timeout_while(d, std::time::Duration::from_secs(1), |d| !*d)
                            .unwrap_or_else(|e| e.into_inner());
                        std::mem::take(&mut *d)
                    };
                    if due {
                        c.write_now();
                    }
                }
            })
            .map(|_| ())
    }

    /// Writes the levels to the state file now: a temporary file in the
    /// same directory, renamed over the old one, so a crash never leaves
    /// half a file.
    pub fn write_now(&self) {
        let Some(path) = &self.state_file else {
            return;
        };
        let streams: serde_json::Map<String, serde_json::Value> = self
            .levels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let l = l.as_ref()?;
                Some((
                    i.to_string(),
                    serde_json::json!({ "volume_db": step_db(l.step()), "on": l.is_on() }),
                ))
            })
            .collect();
        let text = serde_json::json!({ "streams": streams }).to_string();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let result =
            std::fs::write(&tmp, text.as_bytes()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            crate::warn_limited!(
                crate::ratelimit::STATE_FILE,
                "cannot write the state file {}: {e}",
                path.display()
            );
        }
    }

    pub fn level(&self, stream: usize) -> Option<&Arc<Level>> {
        self.levels.get(stream).and_then(Option::as_ref)
    }

    /// The id of a stream's element of `kind`.
    pub fn id_of(&self, stream: usize, kind: Kind) -> Option<u32> {
        self.defs
            .iter()
            .position(|d| d.stream == stream && d.kind == kind)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// An element's value (volume step, or switch 0/1).
    pub fn value(&self, id: usize) -> Option<u32> {
        let d = self.defs.get(id)?;
        let l = self.level(d.stream)?;
        Some(match d.kind {
            Kind::Volume => l.step(),
            Kind::Switch => u32::from(l.is_on()),
        })
    }

    /// Sets an element's value; `None` if out of range, else whether it
    /// changed.
    pub fn set_value(&self, id: usize, value: u32) -> Option<bool> {
        let d = self.defs.get(id)?;
        let l = self.level(d.stream)?;
        match d.kind {
            Kind::Volume if value <= MAX_STEP => Some(l.set_step(value)),
            Kind::Switch if value <= 1 => Some(l.set_on(value == 1)),
            _ => None,
        }
    }
}

/// "Master Playback Volume", "Capture Switch", ... from the stream's
/// `control_name` (default "Master" for output, "Capture" for input).
fn element_name(v: &VolumeConfig, dir: Direction, kind: Kind) -> String {
    let what = match kind {
        Kind::Volume => "Volume",
        Kind::Switch => "Switch",
    };
    match (dir, v.name.as_deref()) {
        (Direction::Output, None) => format!("Master Playback {what}"),
        (Direction::Output, Some(n)) => format!("{n} Playback {what}"),
        (Direction::Input, None) => format!("Capture {what}"),
        (Direction::Input, Some(n)) => format!("{n} Capture {what}"),
    }
}

/// Whether the daemon can apply gain to frames of `format` (linear PCM;
/// not the companded or IEC958 ones).
pub fn format_takes_gain(format: Format) -> bool {
    sample_kind(format).is_some()
}

fn sample_kind(format: Format) -> Option<Sample> {
    format.sample()
}

/// Applies `gain` to interleaved frames of `format` in place. Unity leaves
/// them alone; Mute writes the format's silence. A trailing partial sample
/// is left as it is.
pub fn apply(gain: Gain, format: Format, frames: &mut [u8]) {
    let f = match gain {
        Gain::Unity => return,
        Gain::Mute => {
            format.fill_silence(frames);
            return;
        }
        Gain::Factor(f) => f,
    };
    match sample_kind(format) {
        None => {}
        Some(Sample::F32) => {
            for c in frames.chunks_exact_mut(4) {
                let mut b = [0u8; 4];
                b.copy_from_slice(c);
                let v = f32::from_le_bytes(b);
                c.copy_from_slice(&((f64::from(v) * f) as f32).to_le_bytes());
            }
        }
        Some(Sample::F64) => {
            for c in frames.chunks_exact_mut(8) {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                let v = f64::from_le_bytes(b);
                c.copy_from_slice(&(v * f).to_le_bytes());
            }
        }
        Some(Sample::Int {
            bytes,
            bits,
            signed,
        }) => {
            let mask: u64 = if bits >= 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let half = 1i64 << (bits - 1);
            for c in frames.chunks_exact_mut(bytes) {
                let mut raw = 0u64;
                for (i, b) in c.iter().enumerate() {
                    raw |= u64::from(*b) << (8 * i);
                }
                let bits_val = raw & mask;
                // As a signed value centred on zero.
                let v: i64 = if signed {
                    if bits_val & (1u64 << (bits - 1)) != 0 {
                        (bits_val | !mask) as i64
                    } else {
                        bits_val as i64
                    }
                } else {
                    bits_val as i64 - half
                };
                let scaled = ((v as f64) * f).round() as i64;
                let scaled = scaled.clamp(-half, half - 1);
                let out = if signed {
                    (scaled as u64) & mask
                } else {
                    ((scaled + half) as u64) & mask
                };
                // Bits above the significant ones are kept as they were
                // (zero for a well-formed sample).
                let word = (raw & !mask) | out;
                for (i, b) in c.iter_mut().enumerate() {
                    *b = (word >> (8 * i)) as u8;
                }
            }
        }
    }
}

/// The TLV of a volume element: `SNDRV_CTL_TLVT_DB_SCALE` (type 1, 8
/// bytes: the minimum in 0.01 dB, the step in 0.01 dB; the mute flag off).
pub fn volume_tlv() -> [u8; 16] {
    let mut t = [0u8; 16];
    t[0..4].copy_from_slice(&1u32.to_le_bytes());
    t[4..8].copy_from_slice(&8u32.to_le_bytes());
    t[8..12].copy_from_slice(&MIN_CENTIBEL.to_le_bytes());
    t[12..16].copy_from_slice(&(STEP_CENTIBEL as u32).to_le_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s16(v: &[i16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn back16(b: &[u8]) -> Vec<i16> {
        b.chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn steps_and_decibels_map_both_ways() {
        assert_eq!(step_db(MAX_STEP), 0.0);
        assert_eq!(step_db(0), -60.0);
        assert_eq!(step_db(108), -6.0);
        assert_eq!(db_step(-6.0), 108);
        assert_eq!(db_step(-6.2), 108);
        assert_eq!(db_step(3.0), MAX_STEP);
        assert_eq!(db_step(-99.0), 0);
        assert_eq!(db_step(f64::NAN), 0);
    }

    #[test]
    fn six_db_down_halves_exactly_and_zero_db_is_untouched() {
        assert_eq!(factor(108), 0.5);
        assert_eq!(factor(96), 0.25);
        assert_eq!(factor(0), 1.0 / 1024.0);
        let src = s16(&[32767, -32768, 1000, -1001, 1, 0]);
        let mut b = src.clone();
        apply(Level::new(MAX_STEP, true).gain(), Format::S16, &mut b);
        assert_eq!(b, src, "0 dB is bit-exact");
        apply(Level::new(108, true).gain(), Format::S16, &mut b);
        let halved = back16(&b);
        for (h, o) in halved.iter().zip([32767i32, -32768, 1000, -1001, 1, 0]) {
            assert!((i32::from(*h) * 2 - o).abs() <= 1, "{h} vs {o}");
        }
    }

    #[test]
    fn mute_is_the_formats_silence() {
        let mut b = s16(&[5, -5, 300]);
        apply(Level::new(MAX_STEP, false).gain(), Format::S16, &mut b);
        assert_eq!(back16(&b), [0, 0, 0]);
        let mut u = vec![200u8, 10, 128];
        apply(Gain::Mute, Format::U8, &mut u);
        assert_eq!(u, [0x80, 0x80, 0x80]);
    }

    #[test]
    fn every_linear_format_scales_around_its_centre() {
        // U8: centre 128; 228 is +100, half is +50.
        let mut u = vec![228u8, 28];
        apply(Gain::Factor(0.5), Format::U8, &mut u);
        assert_eq!(u, [178, 78]);
        // S24 in 4 bytes: -2^23 halves to -2^22.
        let mut s = (-(1i32 << 23)).to_le_bytes().to_vec();
        s[3] = 0; // the top byte of a 24-bit sample in 4 bytes
        apply(Gain::Factor(0.5), Format::S24, &mut s);
        let v = i32::from_le_bytes([s[0], s[1], s[2], if s[2] & 0x80 != 0 { 0xff } else { 0 }]);
        assert_eq!(v, -(1 << 22));
        // S24_3.
        let mut s3 = vec![0x00, 0x00, 0x40]; // +2^22
        apply(Gain::Factor(0.5), Format::S24_3, &mut s3);
        assert_eq!(s3, [0x00, 0x00, 0x20]);
        // S32 extremes stay in range.
        let mut s32 = i32::MIN.to_le_bytes().to_vec();
        apply(Gain::Factor(0.5), Format::S32, &mut s32);
        assert_eq!(i32::from_le_bytes(s32.try_into().unwrap()), i32::MIN / 2);
        // Float.
        let mut f = 0.8f32.to_le_bytes().to_vec();
        apply(Gain::Factor(0.25), Format::Float, &mut f);
        assert_eq!(f32::from_le_bytes(f.try_into().unwrap()), 0.2);
        // Companded formats take no gain.
        assert!(!format_takes_gain(Format::MuLaw));
        assert!(format_takes_gain(Format::S16));
    }

    #[test]
    fn the_tlv_is_a_db_scale_from_minus_60_in_half_db_steps() {
        let t = volume_tlv();
        let w = |i: usize| u32::from_le_bytes(t[i..i + 4].try_into().unwrap());
        assert_eq!((w(0), w(4), w(8) as i32, w(12)), (1, 8, -6000, 50));
    }
}
