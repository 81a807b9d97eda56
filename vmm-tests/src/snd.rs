//! A typed virtio-snd guest driver on top of [`VhostUserSnd`].
//!
//! Control requests are synchronous ([`SndDriver::control`]). I/O messages are queued
//! with [`SndDriver::tx`] / [`SndDriver::rx`] and collected with
//! [`SndDriver::wait_io`], which time-stamps each completion right after the call
//! eventfd fired, for pacing checks. Event buffers are posted with
//! [`SndDriver::post_event_buffers`] and read with [`SndDriver::wait_event`].
//!
//! The encodings in [`constants`] and [`wire`] are written from the spec and do not
//! use the daemon's types.

pub mod constants;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

pub use constants::{Direction, PcmFormat, PcmRate, Status};
pub use wire::{ChmapInfo, EventMsg, JackInfo, PcmInfo, PcmStatus, SetParams};

use crate::frontend::{self, ConnectOptions, Queue, SndConfig, VhostUserSnd};
use crate::memory::{self, GuestMemory};
use crate::virtqueue::{self, MessageHandle};
use constants::{code, size};

/// Default timeout of a control request (Linux's default `msg_timeout_ms`).
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of the sound driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The vhost-user session failed.
    #[error("vhost-user frontend error")]
    Frontend(#[from] frontend::Error),
    /// A virtqueue operation failed.
    #[error("Virtqueue error")]
    Virtqueue(#[from] virtqueue::Error),
    /// A guest memory access failed.
    #[error("Guest memory error")]
    Memory(#[from] memory::Error),
    /// The device did not complete the message in time.
    #[error("No completion on {queue} within {timeout:?}")]
    Timeout {
        /// The queue waited on.
        queue: Queue,
        /// How long.
        timeout: Duration,
    },
    /// A typed request got a non-OK status.
    #[error("Request {request:#x} answered {status}")]
    Status {
        /// Request code.
        request: u32,
        /// The status.
        status: Status,
    },
    /// The device reported fewer bytes than the response needs.
    #[error("Request {request:#x}: used length {used_len}, expected {expected}")]
    ShortResponse {
        /// Request code.
        request: u32,
        /// Used length reported.
        used_len: u32,
        /// Bytes expected.
        expected: usize,
    },
    /// A response could not be parsed.
    #[error("Request {request:#x}: malformed response")]
    Malformed {
        /// Request code.
        request: u32,
    },
    /// I/O was requested on a queue that is not txq or rxq.
    #[error("{0} is not an I/O queue")]
    NotIoQueue(Queue),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// The answer to a control request.
#[derive(Debug, Clone)]
pub struct ControlReply {
    /// The whole device-writable area; bytes the device did not write are
    /// [`virtqueue::POISON_BYTE`].
    pub response: Vec<u8>,
    /// Used length reported by the device.
    pub used_len: u32,
    /// Round-trip time from the kick to the completion being seen.
    pub elapsed: Duration,
    /// Set when the device wrote outside the writable area or into the request.
    pub violation: Option<String>,
}

impl ControlReply {
    /// The status in the first 4 response bytes, if the response has them.
    pub fn status(&self) -> Option<Status> {
        let b = self.response.get(..4)?;
        Some(Status::from_raw(u32::from_le_bytes([
            b[0], b[1], b[2], b[3],
        ])))
    }
}

/// An I/O message in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoHandle {
    /// txq or rxq.
    pub queue: Queue,
    /// Head descriptor id; matches [`IoCompletion::head`].
    pub head: u16,
}

/// A completed I/O message.
#[derive(Debug, Clone)]
pub struct IoCompletion {
    /// txq or rxq.
    pub queue: Queue,
    /// Head descriptor id.
    pub head: u16,
    /// Stream id from the message header (`u32::MAX` if the header was short).
    pub stream_id: u32,
    /// When the message was queued.
    pub submitted_at: Instant,
    /// When the completion was seen (right after the call eventfd fired).
    pub completed_at: Instant,
    /// Used length reported by the device.
    pub used_len: u32,
    /// Status from the last 8 writable bytes (`Status::Unknown` with poison bytes
    /// when the device did not write it, or when the message had fewer than 8
    /// writable bytes).
    pub status: Status,
    /// Latency from the last 8 writable bytes.
    pub latency_bytes: u32,
    /// rx: the first `used_len - 8` bytes of the buffer (clamped); tx: empty.
    pub data: Vec<u8>,
    /// The whole writable area, as the device left it.
    pub writable: Vec<u8>,
    /// PCM payload bytes of the message (tx data length, rx buffer length).
    pub payload_len: usize,
    /// Set when the device wrote outside the writable area or into readable bytes.
    pub violation: Option<String>,
}

/// An event read from the eventq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Event code (`constants::event`).
    pub event_type: u32,
    /// Event data.
    pub data: u32,
    /// Used length reported by the device.
    pub used_len: u32,
    /// When the event was seen.
    pub at: Instant,
}

#[derive(Debug)]
struct PendingIo {
    handle: MessageHandle,
    stream_id: u32,
    submitted_at: Instant,
    payload_len: usize,
    is_rx: bool,
}

/// A virtio-snd guest driver.
#[derive(Debug)]
pub struct SndDriver {
    dev: VhostUserSnd,
    control_timeout: Duration,
    /// Control messages whose request timed out, still owned by the device.
    stale_control: HashMap<u16, MessageHandle>,
    tx_pending: HashMap<u16, PendingIo>,
    rx_pending: HashMap<u16, PendingIo>,
    event_bufs: HashMap<u16, MessageHandle>,
    events: VecDeque<Event>,
    /// I/O completions of heads that were not in flight: a buffer completed
    /// twice, or never given.
    unknown_completions: u64,
    /// Whether I/O submissions kick only when the device asks to be kicked
    /// (as Linux does), rather than every time.
    kick_only_when_asked: bool,
}

impl SndDriver {
    /// Connects and brings the device up (see [`VhostUserSnd::connect`]).
    pub fn connect(socket_path: impl AsRef<Path>, opts: &ConnectOptions) -> Result<Self> {
        Ok(Self::new(VhostUserSnd::connect(socket_path, opts)?))
    }

    /// I/O submissions kick the device only when it asks to be (its
    /// `avail_event` with EVENT_IDX, or the used ring's NO_NOTIFY flag), as a
    /// Linux guest does; by default every submission kicks.
    pub fn set_kick_only_when_asked(&mut self, on: bool) {
        self.kick_only_when_asked = on;
    }

    /// Wraps a connected device.
    pub fn new(dev: VhostUserSnd) -> Self {
        SndDriver {
            dev,
            control_timeout: DEFAULT_CONTROL_TIMEOUT,
            stale_control: HashMap::new(),
            tx_pending: HashMap::new(),
            rx_pending: HashMap::new(),
            event_bufs: HashMap::new(),
            events: VecDeque::new(),
            unknown_completions: 0,
            kick_only_when_asked: false,
        }
    }

    /// The device.
    pub fn dev(&self) -> &VhostUserSnd {
        &self.dev
    }

    /// The device, mutably (raw queue access, config reads, disconnect).
    pub fn dev_mut(&mut self) -> &mut VhostUserSnd {
        &mut self.dev
    }

    /// Gives the device back.
    pub fn into_inner(self) -> VhostUserSnd {
        self.dev
    }

    /// The config space read at connect time.
    pub fn config(&self) -> SndConfig {
        *self.dev.config()
    }

    /// Stops the vrings and closes the socket.
    pub fn disconnect(&mut self) -> Result<()> {
        Ok(self.dev.disconnect()?)
    }

    fn mem(&self) -> &GuestMemory {
        self.dev.memory()
    }

    /// Sets the timeout of control requests.
    pub fn set_control_timeout(&mut self, timeout: Duration) {
        self.control_timeout = timeout;
    }

    // ---- control queue -------------------------------------------------------

    /// Sends a raw control request with a `response_len`-byte writable area and
    /// waits for its completion.
    pub fn control(&mut self, request: &[u8], response_len: usize) -> Result<ControlReply> {
        self.control_split(request, response_len, &[])
    }

    /// Like [`SndDriver::control`], with descriptor cuts at the given message offsets
    /// (request bytes then response bytes).
    pub fn control_split(
        &mut self,
        request: &[u8],
        response_len: usize,
        split: &[usize],
    ) -> Result<ControlReply> {
        let timeout = self.control_timeout;
        let q = self.dev.queue_mut(Queue::Control);
        let handle = q.add_message(request, response_len, split)?;
        let head = handle.head();
        let start = Instant::now();
        q.kick()?;
        let deadline = start + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (used, at) = self.dev.queue_mut(Queue::Control).wait_used(remaining)?;
            if used.is_empty() {
                self.stale_control.insert(head, handle);
                return Err(Error::Timeout {
                    queue: Queue::Control,
                    timeout,
                });
            }
            let mut reply = None;
            for u in used {
                if u.head == head {
                    reply = Some((u.len, at));
                } else if let Some(stale) = self.stale_control.remove(&u.head) {
                    log::debug!("late completion of a timed-out control request");
                    stale.free(self.mem())?;
                } else {
                    log::warn!("controlq: completion of unknown head {}", u.head);
                }
            }
            if let Some((used_len, at)) = reply {
                let response = handle.read_writable(self.mem())?;
                let violation = handle.verify(self.mem()).err().map(|e| e.to_string());
                handle.free(self.mem())?;
                return Ok(ControlReply {
                    response,
                    used_len,
                    elapsed: at.duration_since(start),
                    violation,
                });
            }
        }
    }

    /// Sends a request whose response is a bare header; returns the status.
    pub fn control_status(&mut self, request: &[u8]) -> Result<Status> {
        let reply = self.control(request, size::HDR)?;
        reply.status().ok_or(Error::Malformed {
            request: request_code(request),
        })
    }

    fn query<T>(
        &mut self,
        request: u32,
        start_id: u32,
        count: u32,
        item_size: usize,
        parse: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<Vec<T>> {
        let n = count as usize;
        let len = n
            .checked_mul(item_size)
            .and_then(|b| b.checked_add(size::HDR))
            .ok_or(Error::Malformed { request })?;
        let req = wire::query_info(request, start_id, count, item_size as u32);
        let reply = self.control(&req, len)?;
        let status = reply.status().ok_or(Error::Malformed { request })?;
        if status != Status::Ok {
            return Err(Error::Status { request, status });
        }
        if (reply.used_len as usize) < len {
            return Err(Error::ShortResponse {
                request,
                used_len: reply.used_len,
                expected: len,
            });
        }
        wire::parse_items(&reply.response[size::HDR..], n, item_size, parse)
            .ok_or(Error::Malformed { request })
    }

    /// JACK_INFO for jacks `start_id .. start_id + count`.
    pub fn jack_info(&mut self, start_id: u32, count: u32) -> Result<Vec<JackInfo>> {
        self.query(
            code::JACK_INFO,
            start_id,
            count,
            size::JACK_INFO,
            JackInfo::parse,
        )
    }

    /// PCM_INFO for streams `start_id .. start_id + count`.
    pub fn pcm_info(&mut self, start_id: u32, count: u32) -> Result<Vec<PcmInfo>> {
        self.query(
            code::PCM_INFO,
            start_id,
            count,
            size::PCM_INFO,
            PcmInfo::parse,
        )
    }

    /// CHMAP_INFO for maps `start_id .. start_id + count`.
    pub fn chmap_info(&mut self, start_id: u32, count: u32) -> Result<Vec<ChmapInfo>> {
        self.query(
            code::CHMAP_INFO,
            start_id,
            count,
            size::CHMAP_INFO,
            ChmapInfo::parse,
        )
    }

    /// PCM_SET_PARAMS; `format` and `rate` are wire codes (bit numbers).
    #[allow(clippy::too_many_arguments)]
    pub fn set_params(
        &mut self,
        stream_id: u32,
        buffer_bytes: u32,
        period_bytes: u32,
        features: u32,
        channels: u8,
        format: u8,
        rate: u8,
    ) -> Result<Status> {
        self.set_params_raw(&SetParams {
            stream_id,
            buffer_bytes,
            period_bytes,
            features,
            channels,
            format,
            rate,
            padding: 0,
        })
    }

    /// PCM_SET_PARAMS with every field given, padding included.
    pub fn set_params_raw(&mut self, params: &SetParams) -> Result<Status> {
        self.control_status(&params.encode())
    }

    /// A bare PCM command (PREPARE, RELEASE, START, STOP or any code).
    pub fn pcm_command(&mut self, request: u32, stream_id: u32) -> Result<Status> {
        self.control_status(&wire::pcm_hdr(request, stream_id))
    }

    /// PCM_PREPARE.
    pub fn prepare(&mut self, stream_id: u32) -> Result<Status> {
        self.pcm_command(code::PCM_PREPARE, stream_id)
    }

    /// PCM_RELEASE.
    pub fn release(&mut self, stream_id: u32) -> Result<Status> {
        self.pcm_command(code::PCM_RELEASE, stream_id)
    }

    /// PCM_START.
    pub fn start(&mut self, stream_id: u32) -> Result<Status> {
        self.pcm_command(code::PCM_START, stream_id)
    }

    /// PCM_STOP.
    pub fn stop(&mut self, stream_id: u32) -> Result<Status> {
        self.pcm_command(code::PCM_STOP, stream_id)
    }

    // ---- tx / rx -------------------------------------------------------------

    fn pending_mut(&mut self, queue: Queue) -> Result<&mut HashMap<u16, PendingIo>> {
        match queue {
            Queue::Tx => Ok(&mut self.tx_pending),
            Queue::Rx => Ok(&mut self.rx_pending),
            other => Err(Error::NotIoQueue(other)),
        }
    }

    fn submit_io(
        &mut self,
        queue: Queue,
        readable: &[u8],
        writable_len: usize,
        split: &[usize],
        payload_len: usize,
        is_rx: bool,
    ) -> Result<IoHandle> {
        self.pending_mut(queue)?;
        let stream_id = readable
            .get(..4)
            .map_or(u32::MAX, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let q = self.dev.queue_mut(queue);
        let handle = q.add_message(readable, writable_len, split)?;
        let head = handle.head();
        let submitted_at = Instant::now();
        if self.kick_only_when_asked {
            q.kick_if_needed()?;
        } else {
            q.kick()?;
        }
        self.pending_mut(queue)?.insert(
            head,
            PendingIo {
                handle,
                stream_id,
                submitted_at,
                payload_len,
                is_rx,
            },
        );
        Ok(IoHandle { queue, head })
    }

    /// Queues a playback message on txq and kicks: 4-byte xfer header and `data`
    /// (device-readable), then the 8-byte status (device-writable). `split` cuts
    /// descriptors at offsets of the whole message (header at 0..4, data from 4).
    pub fn tx(&mut self, stream_id: u32, data: &[u8], split: &[usize]) -> Result<IoHandle> {
        let mut readable = Vec::with_capacity(size::PCM_XFER + data.len());
        readable.extend_from_slice(&wire::xfer(stream_id));
        readable.extend_from_slice(data);
        self.submit_io(
            Queue::Tx,
            &readable,
            size::PCM_STATUS,
            split,
            data.len(),
            false,
        )
    }

    /// Queues a capture message on rxq and kicks: the 4-byte xfer header
    /// (device-readable), then `len` data bytes and the 8-byte status
    /// (device-writable). `split` cuts at offsets of the whole message.
    pub fn rx(&mut self, stream_id: u32, len: usize, split: &[usize]) -> Result<IoHandle> {
        self.submit_io(
            Queue::Rx,
            &wire::xfer(stream_id),
            len + size::PCM_STATUS,
            split,
            len,
            true,
        )
    }

    /// Queues an arbitrary message on txq or rxq and kicks (malformed I/O tests).
    /// On rxq the completion's `data` follows the rx rule.
    pub fn io_raw(
        &mut self,
        queue: Queue,
        readable: &[u8],
        writable_len: usize,
        split: &[usize],
    ) -> Result<IoHandle> {
        let is_rx = queue == Queue::Rx;
        let payload_len = if is_rx {
            writable_len.saturating_sub(size::PCM_STATUS)
        } else {
            readable.len().saturating_sub(size::PCM_XFER)
        };
        self.submit_io(queue, readable, writable_len, split, payload_len, is_rx)
    }

    /// I/O completions of heads that were not in flight (a buffer completed
    /// twice): always 0 for a correct device.
    pub fn unknown_completions(&self) -> u64 {
        self.unknown_completions
    }

    /// Number of I/O messages in flight on `queue`.
    pub fn pending_io(&self, queue: Queue) -> usize {
        match queue {
            Queue::Tx => self.tx_pending.len(),
            Queue::Rx => self.rx_pending.len(),
            _ => 0,
        }
    }

    /// Waits up to `timeout` for completions on txq or rxq; an empty vector means
    /// the timeout expired. Completions are in used-ring order.
    pub fn wait_io(&mut self, queue: Queue, timeout: Duration) -> Result<Vec<IoCompletion>> {
        self.pending_mut(queue)?;
        let (used, at) = self.dev.queue_mut(queue).wait_used(timeout)?;
        let mut out = Vec::with_capacity(used.len());
        for u in used {
            let Some(p) = self.pending_mut(queue)?.remove(&u.head) else {
                log::warn!("{queue}: completion of unknown head {}", u.head);
                self.unknown_completions += 1;
                continue;
            };
            out.push(self.complete_io(queue, p, u.len, at)?);
        }
        Ok(out)
    }

    /// Collects completions on `queue` until `count` arrived or `timeout` expired.
    pub fn wait_io_count(
        &mut self,
        queue: Queue,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<IoCompletion>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let got = self.wait_io(queue, remaining)?;
            if got.is_empty() {
                break;
            }
            out.extend(got);
        }
        Ok(out)
    }

    fn complete_io(
        &mut self,
        queue: Queue,
        p: PendingIo,
        used_len: u32,
        at: Instant,
    ) -> Result<IoCompletion> {
        let mem = self.dev.memory().clone();
        let writable = p.handle.read_writable(&mem)?;
        let violation = p.handle.verify(&mem).err().map(|e| e.to_string());
        let head = p.handle.head();
        p.handle.free(&mem)?;
        let (status, latency_bytes) = match writable.len().checked_sub(size::PCM_STATUS) {
            Some(off) => wire::PcmStatus::parse(&writable[off..])
                .map_or((Status::Unknown(u32::MAX), 0), |s| {
                    (Status::from_raw(s.status), s.latency_bytes)
                }),
            None => (Status::Unknown(u32::MAX), 0),
        };
        let data = if p.is_rx {
            let room = writable.len().saturating_sub(size::PCM_STATUS);
            let n = (used_len as usize)
                .saturating_sub(size::PCM_STATUS)
                .min(room);
            writable[..n].to_vec()
        } else {
            Vec::new()
        };
        Ok(IoCompletion {
            queue,
            head,
            stream_id: p.stream_id,
            submitted_at: p.submitted_at,
            completed_at: at,
            used_len,
            status,
            latency_bytes,
            data,
            writable,
            payload_len: p.payload_len,
            violation,
        })
    }

    // ---- event queue ---------------------------------------------------------

    /// Posts `n` empty 8-byte event buffers on the eventq and kicks.
    pub fn post_event_buffers(&mut self, n: usize) -> Result<()> {
        self.post_event_buffers_len(n, size::EVENT)
    }

    /// Posts `n` empty event buffers of `len` bytes each and kicks.
    pub fn post_event_buffers_len(&mut self, n: usize, len: usize) -> Result<()> {
        let q = self.dev.queue_mut(Queue::Event);
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            handles.push(q.add_message(&[], len, &[])?);
        }
        q.kick()?;
        for h in handles {
            self.event_bufs.insert(h.head(), h);
        }
        Ok(())
    }

    /// Number of event buffers posted and not yet used.
    pub fn event_buffers_posted(&self) -> usize {
        self.event_bufs.len()
    }

    /// Returns the next event, waiting up to `timeout`; `None` on timeout. Used
    /// buffers are not re-posted.
    pub fn wait_event(&mut self, timeout: Duration) -> Result<Option<Event>> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let (used, at) = self.dev.queue_mut(Queue::Event).wait_used(timeout)?;
        let mem = self.dev.memory().clone();
        for u in used {
            let Some(h) = self.event_bufs.remove(&u.head) else {
                log::warn!("eventq: completion of unknown head {}", u.head);
                continue;
            };
            let bytes = h.read_writable(&mem)?;
            h.free(&mem)?;
            let msg = bytes.get(..size::EVENT).and_then(EventMsg::parse);
            let (event_type, data) = msg.map_or((u32::MAX, u32::MAX), |m| (m.event_type, m.data));
            self.events.push_back(Event {
                event_type,
                data,
                used_len: u.len,
                at,
            });
        }
        Ok(self.events.pop_front())
    }
}

fn request_code(request: &[u8]) -> u32 {
    request
        .get(..4)
        .map_or(u32::MAX, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::test_utils::mock_backend::MockSnd;

    fn driver(mock: &MockSnd) -> SndDriver {
        SndDriver::connect(mock.socket(), &ConnectOptions::default()).unwrap()
    }

    #[test]
    fn pcm_info_round_trip_through_a_mock_daemon() {
        let mock = MockSnd::start();
        let mut snd = driver(&mock);
        let infos = snd.pcm_info(0, 2).unwrap();
        assert_eq!(infos[0].direction(), Some(Direction::Output));
        assert_eq!(infos[1].direction(), Some(Direction::Input));
        assert_ne!(infos[0].formats & PcmFormat::S16.bit(), 0);
        let err = snd.pcm_info(1, 2).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Status {
                    status: Status::BadMsg,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(snd.start(0).unwrap(), Status::Ok);
        let reply = snd.control(&[1, 2], 4).unwrap();
        assert_eq!(reply.status(), Some(Status::BadMsg));
        assert!(reply.violation.is_none());
        assert!(reply.elapsed < Duration::from_secs(1));
    }

    #[test]
    fn split_control_request_reaches_the_device_intact() {
        let mock = MockSnd::start();
        let mut snd = driver(&mock);
        let req = wire::query_info(code::PCM_INFO, 0, 2, 32);
        let reply = snd
            .control_split(&req, 4 + 64, &[1, 3, 7, 17, 21, 50])
            .unwrap();
        assert_eq!(reply.status(), Some(Status::Ok));
        assert_eq!(reply.used_len, 68);
        let infos = wire::parse_items(&reply.response[4..], 2, 32, PcmInfo::parse).unwrap();
        assert_eq!(infos[1].channels_max, 2);
    }

    #[test]
    fn tx_and_rx_complete_with_status_and_data() {
        let mock = MockSnd::start();
        let mut snd = driver(&mock);
        let tx = snd.tx(0, &[1u8; 100], &[2, 9]).unwrap();
        let rx = snd.rx(1, 64, &[4, 30, 70]).unwrap();
        let done = snd.wait_io(Queue::Tx, Duration::from_secs(5)).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].head, tx.head);
        assert_eq!(done[0].stream_id, 0);
        assert_eq!(done[0].status, Status::Ok);
        assert_eq!(done[0].used_len, 8);
        assert_eq!(done[0].latency_bytes, 100);
        assert!(done[0].violation.is_none());
        let done = snd
            .wait_io_count(Queue::Rx, 1, Duration::from_secs(5))
            .unwrap();
        assert_eq!(done[0].head, rx.head);
        assert_eq!(done[0].data, vec![0u8; 64]);
        assert_eq!(done[0].status, Status::Ok);
        assert_eq!(snd.pending_io(Queue::Rx), 0);
        assert!(snd
            .wait_io(Queue::Tx, Duration::from_millis(10))
            .unwrap()
            .is_empty());
        assert!(matches!(
            snd.wait_io(Queue::Control, Duration::ZERO),
            Err(Error::NotIoQueue(Queue::Control))
        ));
        // Everything the messages allocated went back to the allocator.
        let rings = snd.dev().memory().allocated_bytes();
        snd.tx(0, &[0u8; 10], &[]).unwrap();
        snd.wait_io(Queue::Tx, Duration::from_secs(5)).unwrap();
        assert_eq!(snd.dev().memory().allocated_bytes(), rings);
    }

    #[test]
    fn events_are_delivered_into_posted_buffers() {
        let mock = MockSnd::start();
        let mut snd = driver(&mock);
        snd.post_event_buffers(2).unwrap();
        assert_eq!(snd.event_buffers_posted(), 2);
        // The mock answers a JACK_REMAP by emitting a JACK_CONNECTED event.
        let status = snd.control_status(&wire::jack_remap(5, 0, 0)).unwrap();
        assert_eq!(status, Status::Ok);
        let ev = snd.wait_event(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(
            (ev.event_type, ev.data, ev.used_len),
            (constants::event::JACK_CONNECTED, 5, 8)
        );
        assert_eq!(snd.event_buffers_posted(), 1);
        assert!(snd.wait_event(Duration::from_millis(10)).unwrap().is_none());
    }
}
