//! The control queue (spec 5.14.6.3–5.14.6.9): info queries, the PCM
//! state machine, and SET_PARAMS validation.
//!
//! Every request is answered at once from the queue thread: nothing here
//! waits on a host device except RELEASE, which waits (bounded) for the
//! stream's worker to hand back the buffer it holds, because the spec wants
//! every pending buffer returned before RELEASE is answered.

use std::sync::Arc;

use vm_memory::ByteValued;
use vsound_devices::{DeviceError as HostError, Format, StreamDirection, StreamParams};

use crate::chain::{self, ChainLayout};
use crate::config::OnRemove;
use crate::constants::{pcm_features, rate_code, rate_from_code, Direction, RequestCode, Status};
use crate::controls::{self, Kind};
use crate::device::SoundDevice;
use crate::pacer::{now_ns, Schedule};
use crate::queue::{Chain, RingPass, Virtqueue};
use crate::stream::{PcmCommand, PcmState};
use crate::wire::{
    ChmapInfo, CtlHdr, CtlInfo, Hdr, JackInfo, JackRemap, PcmHdr, PcmInfo, PcmSetParams, QueryInfo,
    CTL_VALUE_SIZE,
};
use crate::worker::{Negotiated, StreamRuntime};

/// The longest request we read (the largest we understand is CTL_WRITE's
/// 520 bytes).
const MAX_REQUEST: usize = 8 + CTL_VALUE_SIZE;
/// The largest stream buffer we accept (far above Linux's 160 ms at 8
/// channels × 4 bytes × 384 kHz).
pub const MAX_BUFFER_BYTES: u32 = 16 << 20;
/// The largest `size` an info query may ask per item (ours are at most 32
/// bytes; a newer driver's larger structs are zero-padded up to this).
const MAX_INFO_ITEM: usize = 1024;
/// Features a stream can negotiate.
pub const STREAM_FEATURES: u32 = pcm_features::EVT_XRUNS;

/// A response: status plus an optional payload.
struct Response {
    status: Status,
    payload: Vec<u8>,
}

impl Response {
    fn status(status: Status) -> Response {
        Response {
            status,
            payload: Vec::new(),
        }
    }
}

fn read_req<T: ByteValued>(req: &[u8]) -> Option<T> {
    T::from_slice(req.get(..std::mem::size_of::<T>())?).copied()
}

/// Handles one control chain and returns it to the guest.
pub fn handle_control(dev: &SoundDevice, queue: &dyn Virtqueue, pass: &RingPass<'_>, chain: Chain) {
    let head = chain.head_index();
    let layout = match ChainLayout::of(&chain, queue.size()) {
        Ok(l) => l,
        Err(e) => {
            crate::warn_limited!(
                crate::ratelimit::CONTROL_REFUSED,
                "control request refused: {e}"
            );
            return queue.complete(pass, head, 0);
        }
    };
    if layout.writable < 4 {
        crate::warn_limited!(
            crate::ratelimit::CONTROL_REFUSED,
            "control request without room for a status"
        );
        return queue.complete(pass, head, 0);
    }
    let mut req = [0u8; MAX_REQUEST];
    let req_len = usize::try_from(layout.readable)
        .unwrap_or(MAX_REQUEST)
        .min(MAX_REQUEST);
    let req = match req.get_mut(..req_len) {
        Some(r) => match chain::read_at(&chain, &layout, 0, r) {
            Ok(()) => &*r,
            Err(_) => &[][..],
        },
        None => &[][..],
    };
    let resp = dispatch(dev, req, layout.writable);
    let mut hdr = Hdr {
        code: resp.status.code().into(),
    };
    let mut used = 4u32;
    if chain::write_at(&chain, &layout, 0, hdr.as_slice()).is_err() {
        used = 0;
    } else if resp.status == Status::Ok && !resp.payload.is_empty() {
        match chain::write_at(&chain, &layout, 4, &resp.payload) {
            Ok(()) => used = used.saturating_add(u32::try_from(resp.payload.len()).unwrap_or(0)),
            Err(_) => {
                hdr.code = Status::BadMsg.code().into();
                let _ = chain::write_at(&chain, &layout, 0, hdr.as_slice());
            }
        }
    }
    queue.complete(pass, head, used);
}

fn dispatch(dev: &SoundDevice, req: &[u8], writable: u64) -> Response {
    let Some(hdr) = read_req::<Hdr>(req) else {
        crate::warn_limited!(
            crate::ratelimit::CONTROL_REFUSED,
            "control request shorter than its header"
        );
        return Response::status(Status::BadMsg);
    };
    let code = match RequestCode::try_from(hdr.code.to_native()) {
        Ok(c) => c,
        Err(other) => {
            log::debug!("control request {other:#06x} not supported");
            return Response::status(Status::NotSupp);
        }
    };
    match code {
        RequestCode::JackInfo => query(
            dev,
            req,
            writable,
            dev.jacks.len(),
            std::mem::size_of::<JackInfo>(),
            |i| {
                dev.jacks
                    .get(i)
                    .map(|j| dev.jack_info(j).as_slice().to_vec())
            },
        ),
        RequestCode::PcmInfo => query(
            dev,
            req,
            writable,
            dev.streams.len(),
            std::mem::size_of::<PcmInfo>(),
            |i| dev.streams.get(i).map(|s| pcm_info(s).as_slice().to_vec()),
        ),
        RequestCode::ChmapInfo => query(
            dev,
            req,
            writable,
            dev.chmaps.len(),
            std::mem::size_of::<ChmapInfo>(),
            |i| {
                dev.chmaps
                    .get(i)
                    .map(|c| dev.chmap_info(c).as_slice().to_vec())
            },
        ),
        RequestCode::JackRemap => {
            let Some(r) = read_req::<JackRemap>(req) else {
                return Response::status(Status::BadMsg);
            };
            if usize::try_from(r.jack_id.to_native())
                .ok()
                .and_then(|i| dev.jacks.get(i))
                .is_none()
            {
                return Response::status(Status::BadMsg);
            }
            // No jack advertises VIRTIO_SND_JACK_F_REMAP.
            Response::status(Status::NotSupp)
        }
        RequestCode::PcmSetParams => {
            let Some(p) = read_req::<PcmSetParams>(req) else {
                return Response::status(Status::BadMsg);
            };
            match stream_of(dev, p.hdr.stream_id.to_native()) {
                Some(s) => Response::status(set_params(s, &p)),
                None => Response::status(Status::BadMsg),
            }
        }
        // Without control elements the device does not offer CTLS: the
        // requests are not supported, as before they existed.
        RequestCode::CtlInfo
        | RequestCode::CtlEnumItems
        | RequestCode::CtlRead
        | RequestCode::CtlWrite
        | RequestCode::CtlTlvRead
        | RequestCode::CtlTlvWrite
        | RequestCode::CtlTlvCommand
            if dev.controls.defs.is_empty() =>
        {
            Response::status(Status::NotSupp)
        }
        RequestCode::CtlInfo => query(
            dev,
            req,
            writable,
            dev.controls.defs.len(),
            std::mem::size_of::<CtlInfo>(),
            |i| ctl_info(dev, i).map(|c| c.as_slice().to_vec()),
        ),
        RequestCode::CtlEnumItems
        | RequestCode::CtlRead
        | RequestCode::CtlWrite
        | RequestCode::CtlTlvRead
        | RequestCode::CtlTlvWrite
        | RequestCode::CtlTlvCommand => control_element(dev, code, req, writable),
        RequestCode::PcmPrepare
        | RequestCode::PcmRelease
        | RequestCode::PcmStart
        | RequestCode::PcmStop => {
            let Some(p) = read_req::<PcmHdr>(req) else {
                return Response::status(Status::BadMsg);
            };
            let Some(s) = stream_of(dev, p.stream_id.to_native()) else {
                return Response::status(Status::BadMsg);
            };
            let status = match code {
                RequestCode::PcmPrepare => prepare(s),
                RequestCode::PcmRelease => release(dev, s),
                RequestCode::PcmStart => {
                    // Take whatever the driver queued before START, even if
                    // its kick is still in flight behind this request: the
                    // first period must not be silence.
                    dev.poll_io(s.queue_index());
                    start(s)
                }
                _ => stop(s),
            };
            Response::status(status)
        }
    }
}

/// Access bits (`1 << VIRTIO_SND_CTL_ACCESS_*`): read, write, TLV read.
const ACCESS_READ: u32 = 1 << 0;
const ACCESS_WRITE: u32 = 1 << 1;
const ACCESS_TLV_READ: u32 = 1 << 4;
/// `VIRTIO_SND_CTL_ROLE_*` and `VIRTIO_SND_CTL_TYPE_*`.
const ROLE_VOLUME: u32 = 1;
const ROLE_MUTE: u32 = 2;
const TYPE_BOOLEAN: u32 = 0;
const TYPE_INTEGER: u32 = 1;
/// `VIRTIO_SND_CTL_EVT_MASK_VALUE`.
pub const CTL_EVT_MASK_VALUE: u32 = 1 << 0;

fn ctl_info(dev: &SoundDevice, id: usize) -> Option<CtlInfo> {
    let d = dev.controls.defs.get(id)?;
    let mut info = CtlInfo {
        hda_fn_nid: d.group.into(),
        count: 1.into(),
        index: d.index.into(),
        ..CtlInfo::default()
    };
    for (dst, src) in info.name.iter_mut().zip(d.name.bytes().take(43)) {
        *dst = src;
    }
    match d.kind {
        Kind::Volume => {
            info.role = ROLE_VOLUME.into();
            info.kind = TYPE_INTEGER.into();
            info.access = (ACCESS_READ | ACCESS_WRITE | ACCESS_TLV_READ).into();
            // integer: min, max, step.
            info.value[4..8].copy_from_slice(&controls::MAX_STEP.to_le_bytes());
            info.value[8..12].copy_from_slice(&1u32.to_le_bytes());
        }
        Kind::Switch => {
            info.role = ROLE_MUTE.into();
            info.kind = TYPE_BOOLEAN.into();
            info.access = (ACCESS_READ | ACCESS_WRITE).into();
        }
    }
    Some(info)
}

/// CTL_ENUM_ITEMS, CTL_READ, CTL_WRITE and the TLV requests (spec
/// 5.14.6.10): an unknown element, a request or response too short, a
/// value out of range or an operation the element does not have is
/// BAD_MSG; TLV write and command, which no element allows, NOT_SUPP.
fn control_element(dev: &SoundDevice, code: RequestCode, req: &[u8], writable: u64) -> Response {
    let Some(h) = read_req::<CtlHdr>(req) else {
        return Response::status(Status::BadMsg);
    };
    let id = h.control_id.to_native();
    let Some(d) = usize::try_from(id)
        .ok()
        .and_then(|i| dev.controls.defs.get(i))
    else {
        log::debug!("control element {id} does not exist");
        return Response::status(Status::BadMsg);
    };
    let idx = usize::try_from(id).unwrap_or(usize::MAX);
    let room = |n: usize| writable >= 4 + n as u64;
    match code {
        RequestCode::CtlRead => {
            if !room(CTL_VALUE_SIZE) {
                return Response::status(Status::BadMsg);
            }
            let Some(v) = dev.controls.value(idx) else {
                return Response::status(Status::BadMsg);
            };
            let mut payload = vec![0u8; CTL_VALUE_SIZE];
            payload[..4].copy_from_slice(&v.to_le_bytes());
            Response {
                status: Status::Ok,
                payload,
            }
        }
        RequestCode::CtlWrite => {
            let Some(v) = req
                .get(8..8 + CTL_VALUE_SIZE)
                .and_then(|b| b.get(..4))
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_le_bytes)
            else {
                return Response::status(Status::BadMsg);
            };
            match dev.controls.set_value(idx, v) {
                None => Response::status(Status::BadMsg),
                Some(changed) => {
                    if changed {
                        log::info!("control {} ({}): set to {v} by the guest", idx, d.name);
                        dev.control_changed(id);
                        dev.controls.save();
                    }
                    Response::status(Status::Ok)
                }
            }
        }
        RequestCode::CtlTlvRead => {
            let tlv = controls::volume_tlv();
            if d.kind != Kind::Volume || !room(tlv.len()) {
                return Response::status(Status::BadMsg);
            }
            Response {
                status: Status::Ok,
                payload: tlv.to_vec(),
            }
        }
        RequestCode::CtlTlvWrite | RequestCode::CtlTlvCommand => Response::status(Status::NotSupp),
        // No element is ENUMERATED.
        _ => Response::status(Status::BadMsg),
    }
}

fn stream_of(dev: &SoundDevice, id: u32) -> Option<&Arc<StreamRuntime>> {
    usize::try_from(id).ok().and_then(|i| dev.streams.get(i))
}

/// An info query (spec 5.14.6.4): range and response size checked with
/// overflow-safe arithmetic; `size` larger than ours is honoured by zero
/// padding each item (forward compatibility), smaller is refused.
fn query(
    _dev: &SoundDevice,
    req: &[u8],
    writable: u64,
    total: usize,
    item_size: usize,
    item: impl Fn(usize) -> Option<Vec<u8>>,
) -> Response {
    let Some(q) = read_req::<QueryInfo>(req) else {
        return Response::status(Status::BadMsg);
    };
    let (start, count, size) = (
        q.start_id.to_native(),
        q.count.to_native(),
        q.size.to_native(),
    );
    let (Ok(start), Ok(count), Ok(size)) = (
        usize::try_from(start),
        usize::try_from(count),
        usize::try_from(size),
    ) else {
        return Response::status(Status::BadMsg);
    };
    let in_range = start.checked_add(count).is_some_and(|end| end <= total);
    let need = count.checked_mul(size).and_then(|n| n.checked_add(4));
    let fits = need.is_some_and(|n| (n as u64) <= writable);
    // A guest-chosen item size is capped: it drives the response size.
    if !in_range || size < item_size || size > MAX_INFO_ITEM || !fits {
        log::debug!("info query refused: start {start} count {count} size {size} of {total}, {writable} writable");
        return Response::status(Status::BadMsg);
    }
    let mut payload = Vec::with_capacity(count.saturating_mul(size));
    for i in start..start + count {
        let Some(bytes) = item(i) else {
            return Response::status(Status::BadMsg);
        };
        payload.extend_from_slice(&bytes);
        payload.resize(payload.len() + (size - item_size), 0);
    }
    Response {
        status: Status::Ok,
        payload,
    }
}

pub fn pcm_info(s: &StreamRuntime) -> PcmInfo {
    let c = &s.config;
    let formats = c.formats.iter().fold(0u64, |m, f| m | (1u64 << f.code()));
    let rates = c
        .rates
        .iter()
        .filter_map(|&r| rate_code(r))
        .fold(0u64, |m, b| m | (1u64 << b));
    PcmInfo {
        hda_fn_nid: c.group.into(),
        features: STREAM_FEATURES.into(),
        formats: formats.into(),
        rates: rates.into(),
        direction: c.direction.code(),
        channels_min: c.channels_min,
        channels_max: c.channels_max,
        padding: [0; 5],
    }
}

fn log_transition(s: &StreamRuntime, from: PcmState, to: PcmState, cmd: PcmCommand) {
    log::debug!(
        "stream {} ({}): {from} -> {to} ({cmd:?})",
        s.id,
        s.direction().name()
    );
}

/// Validates PCM_SET_PARAMS against the driver requirements of virtio spec
/// 5.14.6.6.3 (`period_bytes` divides `buffer_bytes`; format, rate, features
/// and channels as advertised; padding zero): malformed or impossible values
/// get BAD_MSG, unadvertised ones NOT_SUPP.
fn validate_params(s: &StreamRuntime, p: &PcmSetParams) -> Result<Negotiated, Status> {
    let c = &s.config;
    let buffer = p.buffer_bytes.to_native();
    let period = p.period_bytes.to_native();
    let features = p.features.to_native();
    if p.padding != 0 || period == 0 || buffer == 0 || buffer % period != 0 {
        return Err(Status::BadMsg);
    }
    let shmem = pcm_features::SHMEM_HOST | pcm_features::SHMEM_GUEST;
    if features & shmem == shmem {
        return Err(Status::BadMsg);
    }
    if features & !STREAM_FEATURES != 0 {
        return Err(Status::NotSupp);
    }
    let format = Format::from_code(p.format)
        .filter(|f| c.formats.contains(f))
        .ok_or(Status::NotSupp)?;
    let rate = rate_from_code(p.rate)
        .filter(|r| c.rates.contains(r))
        .ok_or(Status::NotSupp)?;
    if p.channels < c.channels_min || p.channels > c.channels_max {
        return Err(Status::NotSupp);
    }
    if buffer > MAX_BUFFER_BYTES {
        return Err(Status::NotSupp);
    }
    let params = StreamParams {
        format,
        rate,
        channels: p.channels,
        period_bytes: period,
        buffer_bytes: buffer,
    };
    if period % params.frame_bytes() != 0 {
        return Err(Status::BadMsg);
    }
    let dir = match s.direction() {
        Direction::Output => StreamDirection::Playback,
        Direction::Input => StreamDirection::Capture,
    };
    match s.device.dev.check_params(dir, &params) {
        Ok(()) => {}
        Err(HostError::Unsupported(why)) => {
            log::debug!("stream {}: device refuses parameters: {why}", s.id);
            return Err(Status::NotSupp);
        }
        // An absent device is checked again at PREPARE.
        Err(_) => {}
    }
    Ok(Negotiated { params, features })
}

fn set_params(s: &StreamRuntime, p: &PcmSetParams) -> Status {
    let spare = StreamRuntime::spare();
    let mut inner = s.lock_idle();
    let from = inner.state;
    let to = match from.next(PcmCommand::SetParams) {
        Ok(to) => to,
        Err(e) => {
            log::debug!("stream {}: {e}", s.id);
            return Status::BadMsg;
        }
    };
    let negotiated = match validate_params(s, p) {
        Ok(n) => n,
        Err(st) => return st,
    };
    // New parameters invalidate a prepared endpoint; held buffers go back.
    let held = StreamRuntime::take_all(&mut inner, spare);
    inner.negotiated = Some(negotiated);
    inner.state = to;
    drop(inner);
    s.close_endpoint();
    log_transition(s, from, to, PcmCommand::SetParams);
    log::debug!("stream {}: params {:?}", s.id, negotiated);
    s.complete_all(held, Status::Ok);
    Status::Ok
}

fn prepare(s: &StreamRuntime) -> Status {
    let mut inner = s.lock_idle();
    let from = inner.state;
    let to = match from.next(PcmCommand::Prepare) {
        Ok(to) => to,
        Err(e) => {
            log::debug!("stream {}: {e}", s.id);
            return Status::BadMsg;
        }
    };
    // Every state PREPARE is legal in has parameters; kept as a guard.
    if inner.negotiated.is_none() {
        return Status::BadMsg;
    }
    if let Some(st) = refuse_absent_device(s) {
        return st;
    }
    inner.state = to;
    drop(inner);
    // The worker opens the host endpoint: a device that hangs in open
    // cannot stall the control queue.
    s.reopen_soon();
    log_transition(s, from, to, PcmCommand::Prepare);
    Status::Ok
}

/// Policy `on_remove = "error"`: PREPARE and START answer IO_ERR while the
/// device is away (docs/design.md, hot-removal rule 6).
fn refuse_absent_device(s: &StreamRuntime) -> Option<Status> {
    if s.config.on_remove == OnRemove::Error && !s.device.is_present() {
        log::debug!("stream {}: device {} is away", s.id, s.device.name);
        return Some(Status::IoErr);
    }
    None
}

fn start(s: &StreamRuntime) -> Status {
    let mut inner = s.lock();
    let from = inner.state;
    let to = match from.next(PcmCommand::Start) {
        Ok(to) => to,
        Err(e) => {
            log::debug!("stream {}: {e}", s.id);
            return Status::BadMsg;
        }
    };
    let Some(negotiated) = inner.negotiated else {
        return Status::BadMsg;
    };
    if let Some(st) = refuse_absent_device(s) {
        return st;
    }
    let now = now_ns();
    let mut schedule = Schedule::new(now, negotiated.params.bytes_per_second());
    // A message still current from before a STOP plays out its full length.
    inner.due = match &inner.current {
        Some(m) => schedule.advance(u64::from(m.payload()).max(1)),
        None => now,
    };
    inner.schedule = Some(schedule);
    inner.in_xrun = false;
    inner.state = to;
    let queued = inner.pending.len();
    drop(inner);
    log::debug!("stream {}: {queued} buffers queued at START", s.id);
    s.wake();
    log_transition(s, from, to, PcmCommand::Start);
    Status::Ok
}

fn stop(s: &StreamRuntime) -> Status {
    let mut inner = s.lock();
    let from = inner.state;
    let to = match from.next(PcmCommand::Stop) {
        Ok(to) => to,
        Err(e) => {
            log::debug!("stream {}: {e}", s.id);
            return Status::BadMsg;
        }
    };
    inner.state = to;
    inner.schedule = None;
    drop(inner);
    s.wake();
    log_transition(s, from, to, PcmCommand::Stop);
    Status::Ok
}

/// RELEASE: every buffer of the stream is returned before the answer
/// (spec 5.14.6.6.5), and the host endpoint is closed, unconditionally.
fn release(_dev: &SoundDevice, s: &StreamRuntime) -> Status {
    let spare = StreamRuntime::spare();
    let mut inner = s.lock_idle();
    let from = inner.state;
    let to = match from.next(PcmCommand::Release) {
        Ok(to) => to,
        Err(e) => {
            log::debug!("stream {}: {e}", s.id);
            return Status::BadMsg;
        }
    };
    let held = StreamRuntime::take_all(&mut inner, spare);
    inner.schedule = None;
    inner.state = to;
    drop(inner);
    s.close_endpoint();
    let n = held.len();
    s.complete_all(held, Status::Ok);
    log_transition(s, from, to, PcmCommand::Release);
    if n > 0 {
        log::debug!("stream {}: {n} buffers returned by RELEASE", s.id);
    }
    Status::Ok
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::chain::tests::make_chain;
    use crate::config::Config;
    use crate::daemon::DaemonState;
    use crate::queue::Chain;

    /// Records completions; never has chains to pop.
    struct Recorder(Mutex<Vec<(u16, u32)>>, crate::queue::RingGate);

    impl Default for Recorder {
        fn default() -> Self {
            Recorder(Mutex::default(), crate::queue::RingGate::new(true))
        }
    }

    impl Virtqueue for Recorder {
        fn gate(&self) -> &crate::queue::RingGate {
            &self.1
        }
        fn size(&self) -> u16 {
            1024
        }
        fn pop(&self, _pass: &RingPass<'_>) -> Option<Chain> {
            None
        }
        fn complete(&self, _pass: &RingPass<'_>, head: u16, len: u32) {
            self.0.lock().unwrap().push((head, len));
        }
    }

    /// xorshift64*: reproducible pseudo-random input without a dependency.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Random requests (valid codes with random fields, random lengths,
    /// random descriptor splits, random response sizes) never panic, always
    /// come back exactly once, and answer one of the four status codes.
    #[test]
    fn random_control_requests_get_a_status_and_never_panic() {
        let config = Config::default_config().unwrap();
        let state = DaemonState::new(&config).unwrap();
        let dev = SoundDevice::new(&config, &state.devices).unwrap();
        let rec = Arc::new(Recorder::default());
        let codes = [
            0x0001u32, 0x0002, 0x0100, 0x0101, 0x0102, 0x0103, 0x0104, 0x0105, 0x0200, 0x0300,
        ];
        let mut seed = 0x1234_5678_9abc_def0u64;
        for case in 0..600 {
            let len = (rng(&mut seed) % 40) as usize;
            let mut req: Vec<u8> = (0..len).map(|_| rng(&mut seed) as u8).collect();
            if len >= 4 && case % 4 != 0 {
                let c = codes[(rng(&mut seed) % codes.len() as u64) as usize];
                req[..4].copy_from_slice(&c.to_le_bytes());
                // Small ids and counts so that some requests are valid.
                for off in [4usize, 8, 12] {
                    if len >= off + 4 && rng(&mut seed) % 2 == 0 {
                        let v = (rng(&mut seed) % 4) as u32;
                        req[off..off + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            // At least one descriptor in every chain.
            let resp = ((rng(&mut seed) % 200) as usize).max(usize::from(len == 0));
            let rs: Vec<usize> = (0..(rng(&mut seed) % 3))
                .map(|_| (rng(&mut seed) % (len as u64 + 1)) as usize)
                .collect();
            let mut rs = rs;
            rs.sort_unstable();
            let ws: Vec<usize> = if resp > 1 {
                vec![(rng(&mut seed) % resp as u64) as usize]
            } else {
                vec![]
            };
            let chain = make_chain(&req, &rs, resp, &ws);
            let layout = ChainLayout::of(&chain, 1024).unwrap();
            let before = rec.0.lock().unwrap().len();
            let pass = rec.gate().enter().unwrap();
            handle_control(&dev, rec.as_ref(), &pass, chain.clone());
            drop(pass);
            let done = rec.0.lock().unwrap();
            assert_eq!(
                done.len(),
                before + 1,
                "case {case}: completed exactly once"
            );
            let (_, used) = done[before];
            if resp >= 4 {
                assert!(used >= 4, "case {case}: a status was written");
                let mut st = [0u8; 4];
                crate::chain::read_at_writable(&chain, &layout, 0, &mut st).unwrap();
                let st = u32::from_le_bytes(st);
                assert!(
                    (0x8000..=0x8003).contains(&st),
                    "case {case}: status {st:#x}"
                );
            } else {
                assert_eq!(used, 0);
            }
        }
        dev.shutdown();
    }
}
