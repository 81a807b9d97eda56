//! tx/rx I/O messages (spec 5.14.6.8): parsing and completion.
//!
//! A message is `xfer { stream_id }` (device-readable), the PCM buffer
//! (readable for tx, writable for rx), then `status { status, latency }`
//! (device-writable, always the last 8 writable bytes). Everything is parsed
//! by byte offset ([`crate::chain`]), whatever the descriptor layout.

use vm_memory::ByteValued;

use crate::chain::{self, ChainLayout, Cursor};
use crate::constants::{Direction, Status};
use crate::queue::{Chain, RingPass, Virtqueue};
use crate::wire::{PcmStatus, PcmXfer};

const XFER_LEN: u64 = std::mem::size_of::<PcmXfer>() as u64;
const STATUS_LEN: u64 = std::mem::size_of::<PcmStatus>() as u64;

/// A well-formed I/O message, held until it is consumed.
pub struct IoMessage {
    chain: Chain,
    layout: ChainLayout,
    /// Where the last access of each part ended: a message is copied in
    /// chunks, in order, and each chunk goes on from there instead of
    /// walking the chain from its head (see [`Cursor`]).
    readable: Cursor,
    writable: Cursor,
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
        let (layout, mut readable, writable) =
            match ChainLayout::with_cursors(&chain, max_descriptors) {
                Ok(x) => x,
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
        if readable
            .read(&chain, &layout, 0, xfer.as_mut_slice())
            .is_err()
        {
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
                readable,
                writable,
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

    /// Reads tx PCM bytes at `offset` of the payload into `buf`. Reads in
    /// order of offset walk the chain once in all.
    pub fn read_pcm(&mut self, offset: u32, buf: &mut [u8]) -> Result<(), chain::ChainError> {
        let at = XFER_LEN + u64::from(offset);
        self.readable.read(&self.chain, &self.layout, at, buf)
    }

    /// Writes rx PCM bytes at `offset` of the payload. Writes in order of
    /// offset walk the chain once in all.
    pub fn write_pcm(&mut self, offset: u32, buf: &[u8]) -> Result<(), chain::ChainError> {
        self.writable
            .write(&self.chain, &self.layout, u64::from(offset), buf)
    }

    /// Descriptors read from the chain by the message's accesses since it
    /// was measured (readable part, writable part): each is read once when
    /// the message is copied in order.
    #[cfg(test)]
    fn descriptors_visited(&self) -> (u32, u32) {
        (self.readable.visited(), self.writable.visited())
    }

    /// Completes the message: status in the last 8 writable bytes; used
    /// length 8 for tx, data + 8 for rx (`rx_bytes` filled).
    pub fn complete(
        mut self,
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
        let used = if self.write_status(status, latency_bytes) {
            used
        } else {
            0
        };
        queue.complete(pass, self.chain.head_index(), used);
    }

    /// Writes the status into the last 8 writable bytes: just after the rx
    /// payload (where the writable cursor is), or the tx message's first
    /// writable descriptor (where the measuring walk left it).
    fn write_status(&mut self, status: Status, latency_bytes: u32) -> bool {
        let st = status_of(status, latency_bytes);
        self.layout
            .writable
            .checked_sub(STATUS_LEN)
            .is_some_and(|off| {
                self.writable
                    .write(&self.chain, &self.layout, off, st.as_slice())
                    .is_ok()
            })
    }
}

fn status_of(status: Status, latency_bytes: u32) -> PcmStatus {
    PcmStatus {
        status: status.code().into(),
        latency_bytes: latency_bytes.into(),
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
    let st = status_of(status, latency_bytes);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tests::make_chain_in;

    fn splits(from: usize, len: usize, step: usize) -> Vec<usize> {
        (1..)
            .map(|k| from + k * step)
            .take_while(|&at| at < from + len)
            .collect()
    }

    /// A tx message of 400 PCM descriptors copied out in chunks, then its
    /// status written: each descriptor is read from guest memory once.
    #[test]
    fn a_tx_message_copied_in_chunks_reads_each_descriptor_once() {
        let pcm: Vec<u8> = (0..400_000u32).map(|i| (i * 31 + 7) as u8).collect();
        let mut readable = 5u32.to_le_bytes().to_vec();
        readable.extend_from_slice(&pcm);
        // Header alone, then 400 PCM descriptors of 1,000 bytes.
        let mut rs = vec![4];
        rs.extend(splits(4, pcm.len(), 1000));
        let (chain, _) = make_chain_in(&readable, &rs, 8, &[], 1024);
        let (stream, mut msg) = IoMessage::parse(chain, Direction::Output, 1024).unwrap();
        assert_eq!((stream, msg.payload()), (5, 400_000));
        let mut got = vec![0u8; pcm.len()];
        for (k, part) in got.chunks_mut(65_532).enumerate() {
            msg.read_pcm((k * 65_532) as u32, part).unwrap();
        }
        assert!(got == pcm);
        assert!(msg.write_status(Status::Ok, 0));
        assert_eq!(msg.descriptors_visited(), (401, 0));
    }

    /// An rx message of 300 PCM descriptors filled in chunks, then its
    /// status written after them: each descriptor is read once.
    #[test]
    fn an_rx_message_filled_in_chunks_reads_each_descriptor_once() {
        let len = 300_000usize;
        let ws = splits(0, len, 1000); // the status is in the last one
        let (chain, _) = make_chain_in(&6u32.to_le_bytes(), &[], len + 8, &ws, 1024);
        let check = chain.clone();
        let (stream, mut msg) = IoMessage::parse(chain, Direction::Input, 1024).unwrap();
        assert_eq!((stream, msg.payload()), (6, len as u32));
        let pcm: Vec<u8> = (0..len as u32).map(|i| (i * 17 + 3) as u8).collect();
        for (k, part) in pcm.chunks(65_532).enumerate() {
            msg.write_pcm((k * 65_532) as u32, part).unwrap();
        }
        assert!(msg.write_status(Status::IoErr, 0x1234));
        assert_eq!(msg.descriptors_visited(), (1, ws.len() as u32));
        let layout = ChainLayout::of(&check, 1024).unwrap();
        let mut back = vec![0u8; len + 8];
        chain::read_at_writable(&check, &layout, 0, &mut back).unwrap();
        assert!(back[..len] == pcm[..]);
        assert_eq!(back[len..len + 4], Status::IoErr.code().to_le_bytes());
        assert_eq!(back[len + 4..], 0x1234u32.to_le_bytes());
    }
}
