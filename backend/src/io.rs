//! tx/rx I/O messages (spec 5.14.6.8): parsing and completion.
//!
//! A message is `xfer { stream_id }` (device-readable), the PCM buffer
//! (readable for tx, writable for rx), then `status { status, latency }`
//! (device-writable, always the last 8 writable bytes). Everything is parsed
//! by byte offset ([`crate::chain`]), whatever the descriptor layout.

use vm_memory::ByteValued;

use crate::chain::{self, ChainLayout};
use crate::constants::{Direction, Status};
use crate::queue::{Chain, RingPass, Virtqueue};
use crate::wire::{PcmStatus, PcmXfer};

const XFER_LEN: u64 = std::mem::size_of::<PcmXfer>() as u64;
const STATUS_LEN: u64 = std::mem::size_of::<PcmStatus>() as u64;

/// A well-formed I/O message, held until it is consumed.
pub struct IoMessage {
    chain: Chain,
    layout: ChainLayout,
    /// PCM bytes: the readable bytes after the header (tx) or the writable
    /// bytes before the status (rx).
    payload: u32,
    /// Its PCM did not reach the host device (answered IO_ERR).
    failed: bool,
}

/// Why a message was refused at once.
#[derive(Debug)]
pub enum Refused {
    /// No room for a status: returned with nothing written.
    NoStatus(Chain),
    /// Answer IO_ERR (unknown stream, wrong queue, bad layout, ...).
    IoErr(Chain, ChainLayout),
}

impl IoMessage {
    /// Reads a message's header. Returns the stream id it names and the
    /// message, whose payload is measured for the queue's direction.
    pub fn parse(
        chain: Chain,
        dir: Direction,
        max_descriptors: u16,
    ) -> Result<(u32, IoMessage), Refused> {
        let layout = match ChainLayout::of(&chain, max_descriptors) {
            Ok(l) => l,
            Err(e) => {
                crate::warn_limited!(crate::ratelimit::IO_REFUSED, "I/O message refused: {e}");
                return Err(Refused::NoStatus(chain));
            }
        };
        if layout.writable < STATUS_LEN {
            crate::warn_limited!(
                crate::ratelimit::IO_REFUSED,
                "I/O message without room for a status ({} writable bytes)",
                layout.writable
            );
            return Err(Refused::NoStatus(chain));
        }
        let mut xfer = PcmXfer::default();
        if chain::read_at(&chain, &layout, 0, xfer.as_mut_slice()).is_err() {
            return Err(Refused::IoErr(chain, layout));
        }
        let payload = match dir {
            Direction::Output => layout.readable - XFER_LEN.min(layout.readable),
            Direction::Input => layout.writable - STATUS_LEN,
        };
        let Ok(payload) = u32::try_from(payload) else {
            return Err(Refused::IoErr(chain, layout));
        };
        Ok((
            xfer.stream_id.to_native(),
            IoMessage {
                chain,
                layout,
                payload,
                failed: false,
            },
        ))
    }

    /// The head descriptor index (identifies the message on its queue).
    pub fn head(&self) -> u16 {
        self.chain.head_index()
    }

    /// Notes that the PCM did not reach the host device.
    pub fn mark_failed(&mut self) {
        self.failed = true;
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// PCM bytes this message carries (tx) or asks for (rx).
    pub fn payload(&self) -> u32 {
        self.payload
    }

    /// Reads tx PCM bytes at `offset` of the payload into `buf`.
    pub fn read_pcm(&self, offset: u32, buf: &mut [u8]) -> Result<(), chain::ChainError> {
        chain::read_at(&self.chain, &self.layout, XFER_LEN + u64::from(offset), buf)
    }

    /// Writes rx PCM bytes at `offset` of the payload.
    pub fn write_pcm(&self, offset: u32, buf: &[u8]) -> Result<(), chain::ChainError> {
        chain::write_at(&self.chain, &self.layout, u64::from(offset), buf)
    }

    /// Completes the message: status in the last 8 writable bytes; used
    /// length 8 for tx, data + 8 for rx (`rx_bytes` filled).
    pub fn complete(
        self,
        queue: &dyn Virtqueue,
        pass: &RingPass<'_>,
        dir: Direction,
        status: Status,
        latency_bytes: u32,
        rx_bytes: u32,
    ) {
        let used = match dir {
            Direction::Output => STATUS_LEN as u32,
            Direction::Input => rx_bytes.min(self.payload).saturating_add(STATUS_LEN as u32),
        };
        complete_with_status(
            queue,
            pass,
            self.chain,
            &self.layout,
            status,
            latency_bytes,
            used,
        );
    }
}

/// Writes a status into the last 8 writable bytes and returns the chain.
pub fn complete_with_status(
    queue: &dyn Virtqueue,
    pass: &RingPass<'_>,
    chain: Chain,
    layout: &ChainLayout,
    status: Status,
    latency_bytes: u32,
    used: u32,
) {
    let st = PcmStatus {
        status: status.code().into(),
        latency_bytes: latency_bytes.into(),
    };
    let head = chain.head_index();
    let used = match layout.writable.checked_sub(STATUS_LEN) {
        Some(off) if chain::write_at(&chain, layout, off, st.as_slice()).is_ok() => used,
        _ => 0,
    };
    queue.complete(pass, head, used);
}

/// Returns a refused message to the guest.
pub fn refuse(queue: &dyn Virtqueue, pass: &RingPass<'_>, refused: Refused) {
    match refused {
        Refused::NoStatus(chain) => queue.complete(pass, chain.head_index(), 0),
        Refused::IoErr(chain, layout) => complete_with_status(
            queue,
            pass,
            chain,
            &layout,
            Status::IoErr,
            0,
            STATUS_LEN as u32,
        ),
    }
}
