//! A split virtqueue driver, laid out in [`GuestMemory`].
//!
//! This is the guest side of a virtio 1.x split ring (virtio spec §2.7): the driver
//! owns the descriptor table and the available ring, the device owns the used ring.
//! With `VIRTIO_RING_F_EVENT_IDX` (§2.7.10) the driver keeps `used_event` equal to the
//! next used index it expects, so the device notifies on every completion.
//!
//! Messages built with [`Virtqueue::add_message`] put each descriptor in its own guest
//! allocation, followed by [`GUARD_LEN`] guard bytes; writable bytes start out as
//! [`POISON_BYTE`]. [`MessageHandle::verify`] then catches a device that writes past a
//! descriptor, or into a device-readable one.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::memory::{self, GuestMemory};

/// Default queue size (QEMU's vhost-user-snd uses 64).
pub const DEFAULT_QUEUE_SIZE: u16 = 64;
/// Largest split queue size allowed by the spec.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Descriptor flag: the chain continues in `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// `VRING_USED_F_NO_NOTIFY`: the device asks not to be kicked (without EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;

/// Size of one descriptor table entry.
pub const DESC_SIZE: u64 = 16;
/// Size of one used ring element.
pub const USED_ELEM_SIZE: u64 = 8;

/// Guard bytes placed after every message segment.
pub const GUARD_LEN: usize = 16;
/// Value of the guard bytes.
pub const GUARD_BYTE: u8 = 0xa5;
/// Initial value of every device-writable byte of a message.
pub const POISON_BYTE: u8 = 0xcc;

/// Errors of the virtqueue driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A guest memory access or allocation failed.
    #[error("Guest memory error")]
    Memory(#[from] memory::Error),
    /// The queue size is not a power of two in 1..=32768.
    #[error("Invalid queue size {0}")]
    InvalidSize(u16),
    /// A chain needs at least one descriptor.
    #[error("Empty descriptor chain")]
    EmptyChain,
    /// Not enough free descriptors for the chain.
    #[error("Queue full: {needed} descriptors needed, {free} free")]
    QueueFull {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors currently free.
        free: usize,
    },
    /// A segment does not fit in a descriptor's 32-bit length.
    #[error("Segment of {0} bytes is too long for a descriptor")]
    SegmentTooLong(usize),
    /// The device put an id in the used ring that is not the head of an in-flight chain.
    #[error("Device returned unknown descriptor id {id} in the used ring")]
    BadUsedId {
        /// The id found in the used ring.
        id: u32,
    },
    /// The device advanced `used.idx` by more than the number of chains in flight.
    #[error(
        "Device moved used.idx from {last_used} to {used_idx} with {in_flight} chains in flight"
    )]
    UsedIdxJump {
        /// Last used index consumed by the driver.
        last_used: u16,
        /// The device's used index.
        used_idx: u16,
        /// Chains in flight.
        in_flight: usize,
    },
    /// An eventfd operation failed.
    #[error("Eventfd operation failed")]
    EventFd(#[source] io::Error),
    /// The device wrote a guard byte after a segment.
    #[error("Guard bytes after the segment at {addr:#x} were overwritten")]
    GuardOverwritten {
        /// Guest address of the segment.
        addr: u64,
    },
    /// The device modified a device-readable byte.
    #[error("Device-readable byte at message offset {offset} was modified")]
    ReadableModified {
        /// Offset in the message.
        offset: usize,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (`VIRTQ_DESC_F_WRITE`).
    pub writable: bool,
}

impl Segment {
    /// A device-readable segment.
    pub fn readable(addr: u64, len: u32) -> Self {
        Segment {
            addr,
            len,
            writable: false,
        }
    }

    /// A device-writable segment.
    pub fn writable(addr: u64, len: u32) -> Self {
        Segment {
            addr,
            len,
            writable: true,
        }
    }
}

/// One used ring element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor id of the completed chain.
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
}

/// A segment of a message built by [`Virtqueue::add_message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSegment {
    /// The descriptor's buffer.
    pub segment: Segment,
    /// Offset of its first byte in the message (readable bytes, then writable bytes).
    pub offset: usize,
}

/// A message in flight: remembers where its bytes live in guest memory.
#[derive(Debug, Clone)]
pub struct MessageHandle {
    head: u16,
    segments: Vec<MessageSegment>,
    readable: Vec<u8>,
    writable_len: usize,
}

impl MessageHandle {
    /// Head descriptor id.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The descriptors, in chain order.
    pub fn segments(&self) -> &[MessageSegment] {
        &self.segments
    }

    /// Number of device-readable bytes.
    pub fn readable_len(&self) -> usize {
        self.readable.len()
    }

    /// Number of device-writable bytes.
    pub fn writable_len(&self) -> usize {
        self.writable_len
    }

    /// Reads the whole writable area back (bytes the device did not write keep
    /// [`POISON_BYTE`]).
    pub fn read_writable(&self, mem: &GuestMemory) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.writable_len);
        for s in self.segments.iter().filter(|s| s.segment.writable) {
            out.extend(mem.read(s.segment.addr, s.segment.len as usize)?);
        }
        Ok(out)
    }

    /// Checks that the device wrote neither a guard byte nor a readable byte.
    pub fn verify(&self, mem: &GuestMemory) -> Result<()> {
        for s in &self.segments {
            let len = s.segment.len as usize;
            let guard = mem.read(s.segment.addr + len as u64, GUARD_LEN)?;
            if guard.iter().any(|&b| b != GUARD_BYTE) {
                return Err(Error::GuardOverwritten {
                    addr: s.segment.addr,
                });
            }
            if !s.segment.writable {
                let now = mem.read(s.segment.addr, len)?;
                let orig = &self.readable[s.offset..s.offset + len];
                if let Some(i) = now.iter().zip(orig).position(|(a, b)| a != b) {
                    return Err(Error::ReadableModified {
                        offset: s.offset + i,
                    });
                }
            }
        }
        Ok(())
    }

    /// Returns the message's guest memory to the allocator.
    pub fn free(self, mem: &GuestMemory) -> Result<()> {
        for s in &self.segments {
            mem.free(s.segment.addr)?;
        }
        Ok(())
    }
}

/// Splits `[0, total)` at the given offsets plus `forced`; empty pieces are dropped.
fn split_ranges(total: usize, split: &[usize], forced: usize) -> Vec<(usize, usize)> {
    let mut cuts: Vec<usize> = split
        .iter()
        .copied()
        .chain([forced])
        .filter(|&c| c > 0 && c < total)
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for c in cuts.into_iter().chain([total]) {
        out.push((start, c));
        start = c;
    }
    out
}

/// The guest side of one split virtqueue.
#[derive(Debug)]
pub struct Virtqueue {
    mem: Arc<GuestMemory>,
    size: u16,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    /// Free descriptor ids (a stack).
    free: Vec<u16>,
    /// For each head id of an in-flight chain, the ids of the chain.
    chains: Vec<Option<Vec<u16>>>,
    in_flight: usize,
    /// Next avail.idx value to publish.
    avail_idx: u16,
    /// Next used index the driver expects.
    last_used: u16,
    event_idx: bool,
    /// `avail_idx` when the device was last kicked (or told it need not be).
    kicked_idx: u16,
    kick: EventFd,
    call: EventFd,
}

impl Virtqueue {
    /// Lays out a queue of `size` entries in `mem` and creates its kick and call
    /// eventfds.
    pub fn new(mem: Arc<GuestMemory>, size: u16) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(Error::InvalidSize(size));
        }
        let n = u64::from(size);
        // §2.7: descriptor table 16-aligned, available ring 2-aligned, used ring
        // 4-aligned. Page alignment satisfies all three (and legacy layouts too).
        let desc_table = mem.alloc((DESC_SIZE * n) as usize, 4096)?;
        let avail_ring = mem.alloc((6 + 2 * n) as usize, 4096)?;
        let used_ring = mem.alloc((6 + USED_ELEM_SIZE * n) as usize, 4096)?;
        mem.fill(desc_table, (DESC_SIZE * n) as usize, 0)?;
        mem.fill(avail_ring, (6 + 2 * n) as usize, 0)?;
        mem.fill(used_ring, (6 + USED_ELEM_SIZE * n) as usize, 0)?;
        let flags = libc::EFD_NONBLOCK | libc::EFD_CLOEXEC;
        Ok(Virtqueue {
            mem,
            size,
            desc_table,
            avail_ring,
            used_ring,
            free: (0..size).rev().collect(),
            chains: vec![None; usize::from(size)],
            in_flight: 0,
            avail_idx: 0,
            last_used: 0,
            event_idx: false,
            kicked_idx: 0,
            kick: EventFd::new(flags).map_err(Error::EventFd)?,
            call: EventFd::new(flags).map_err(Error::EventFd)?,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The guest memory the queue lives in.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Guest-physical address of the descriptor table.
    pub fn desc_table(&self) -> u64 {
        self.desc_table
    }

    /// Guest-physical address of the available ring.
    pub fn avail_ring(&self) -> u64 {
        self.avail_ring
    }

    /// Guest-physical address of the used ring.
    pub fn used_ring(&self) -> u64 {
        self.used_ring
    }

    /// The eventfd the driver writes to notify the device.
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The eventfd the device writes to notify the driver.
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Enables `VIRTIO_RING_F_EVENT_IDX` handling (set when the feature was acked).
    pub fn set_event_idx(&mut self, enabled: bool) -> Result<()> {
        self.event_idx = enabled;
        self.write_used_event()
    }

    /// Whether `VIRTIO_RING_F_EVENT_IDX` handling is on.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Number of free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Number of chains made available and not yet used.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Next index the driver will publish in `avail.idx`.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Next used index the driver expects.
    pub fn last_used_idx(&self) -> u16 {
        self.last_used
    }

    /// Descriptor ids of an in-flight chain.
    pub fn chain(&self, head: u16) -> Option<&[u16]> {
        self.chains.get(usize::from(head))?.as_deref()
    }

    /// Size in bytes of the used ring: flags, idx, the elements and
    /// `avail_event`.
    pub fn used_ring_len(&self) -> usize {
        (6 + USED_ELEM_SIZE * u64::from(self.size)) as usize
    }

    /// The device's `used.idx` as guest memory holds it now (nothing is
    /// consumed: see [`Virtqueue::poll_used`]).
    pub fn used_idx(&self) -> Result<u16> {
        Ok(self.mem.load_u16_acquire(self.used_ring + 2)?)
    }

    /// The descriptors of an in-flight chain, read back from the descriptor
    /// table (`None` if `head` is not in flight).
    pub fn chain_segments(&self, head: u16) -> Result<Option<Vec<Segment>>> {
        let Some(ids) = self.chain(head) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let d = self.desc_table + DESC_SIZE * u64::from(id % self.size);
            let addr = self.mem.read_u64(d)?;
            let len = self.mem.read_u32(d + 8)?;
            let flags = self.mem.read_u16(d + 12)?;
            out.push(Segment {
                addr,
                len,
                writable: flags & VIRTQ_DESC_F_WRITE != 0,
            });
        }
        Ok(Some(out))
    }

    /// The `avail_event` the device wrote in the used ring (EVENT_IDX).
    pub fn avail_event(&self) -> Result<u16> {
        let addr = self.used_ring + 4 + USED_ELEM_SIZE * u64::from(self.size);
        Ok(self.mem.load_u16_acquire(addr)?)
    }

    fn used_event_addr(&self) -> u64 {
        self.avail_ring + 4 + 2 * u64::from(self.size)
    }

    fn write_used_event(&self) -> Result<()> {
        if self.event_idx {
            self.mem
                .store_u16_release(self.used_event_addr(), self.last_used)?;
        }
        Ok(())
    }

    /// Writes descriptor `idx` directly, bypassing the driver's bookkeeping.
    ///
    /// Meant for malformed-layout tests (for example a chain whose `next` loops back),
    /// applied to a descriptor of a chain already added.
    pub fn write_raw_descriptor(
        &self,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        let d = self.desc_table + DESC_SIZE * u64::from(idx % self.size);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        Ok(self.mem.write(d, &raw)?)
    }

    /// Adds a descriptor chain and makes it available; returns its head id.
    ///
    /// The segments are used as given: no check that readable ones come first, so a
    /// test can build layouts the spec forbids. The device is not notified: call
    /// [`Virtqueue::kick`].
    pub fn add_chain(&mut self, segments: &[Segment]) -> Result<u16> {
        if segments.is_empty() {
            return Err(Error::EmptyChain);
        }
        if segments.len() > self.free.len() {
            return Err(Error::QueueFull {
                needed: segments.len(),
                free: self.free.len(),
            });
        }
        let split_at = self.free.len() - segments.len();
        let mut ids = self.free.split_off(split_at);
        ids.reverse();
        for (i, seg) in segments.iter().enumerate() {
            let mut flags = if seg.writable { VIRTQ_DESC_F_WRITE } else { 0 };
            let next = match ids.get(i + 1) {
                Some(&n) => {
                    flags |= VIRTQ_DESC_F_NEXT;
                    n
                }
                None => 0,
            };
            self.write_raw_descriptor(ids[i], seg.addr, seg.len, flags, next)?;
        }
        let head = ids[0];
        let slot = self.avail_ring + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_u16(slot, head)?;
        self.chains[usize::from(head)] = Some(ids);
        self.in_flight += 1;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // §2.7.13: the ring entry must be visible before the new index.
        self.mem
            .store_u16_release(self.avail_ring + 2, self.avail_idx)?;
        Ok(head)
    }

    /// Notifies the device if it asked to be (as Linux's
    /// `virtqueue_kick_prepare` decides): with EVENT_IDX when the chains
    /// added since the last kick cross the device's `avail_event`,
    /// without it unless the used ring's flags say `VRING_USED_F_NO_NOTIFY`.
    /// Returns whether it kicked.
    pub fn kick_if_needed(&mut self) -> Result<bool> {
        // The index store must be visible before the device's request is read.
        fence(Ordering::SeqCst);
        let (old, new) = (self.kicked_idx, self.avail_idx);
        self.kicked_idx = new;
        let needed = if self.event_idx {
            let event = self.avail_event()?;
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.mem.load_u16_acquire(self.used_ring)? & VRING_USED_F_NO_NOTIFY == 0
        };
        if needed {
            self.kick.write(1).map_err(Error::EventFd)?;
        }
        Ok(needed)
    }

    /// Notifies the device (writes the kick eventfd).
    pub fn kick(&self) -> Result<()> {
        // The index store must be visible before the device can wake up and read it.
        fence(Ordering::SeqCst);
        self.kick.write(1).map_err(Error::EventFd)
    }

    /// Reads the used ring and returns the new elements; their descriptors are recycled.
    pub fn poll_used(&mut self) -> Result<Vec<UsedElem>> {
        let used_idx = self.mem.load_u16_acquire(self.used_ring + 2)?;
        let new = usize::from(used_idx.wrapping_sub(self.last_used));
        if new > self.in_flight {
            return Err(Error::UsedIdxJump {
                last_used: self.last_used,
                used_idx,
                in_flight: self.in_flight,
            });
        }
        let mut out = Vec::with_capacity(new);
        for _ in 0..new {
            let slot = u64::from(self.last_used % self.size);
            let elem = self.used_ring + 4 + USED_ELEM_SIZE * slot;
            let id = self.mem.read_u32(elem)?;
            let len = self.mem.read_u32(elem + 4)?;
            let ids = u16::try_from(id)
                .ok()
                .and_then(|h| self.chains.get_mut(usize::from(h)))
                .and_then(Option::take)
                .ok_or(Error::BadUsedId { id })?;
            let head = ids[0];
            self.free.extend(ids.into_iter().rev());
            self.in_flight -= 1;
            self.last_used = self.last_used.wrapping_add(1);
            out.push(UsedElem { head, len });
        }
        if !out.is_empty() {
            self.write_used_event()?;
            // Order the used_event store before the next used.idx load (§2.7.10).
            fence(Ordering::SeqCst);
        }
        Ok(out)
    }

    /// Waits up to `timeout` for used elements.
    ///
    /// Returns the elements and the instant they were seen: right after the call
    /// eventfd fired, or the time of the read when they were already there. An empty
    /// vector means the timeout expired.
    pub fn wait_used(&mut self, timeout: Duration) -> Result<(Vec<UsedElem>, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            let used = self.poll_used()?;
            let now = Instant::now();
            if !used.is_empty() {
                return Ok((used, now));
            }
            if now >= deadline {
                return Ok((used, now));
            }
            if wait_readable(&self.call, deadline - now)? {
                // Drain the counter; a stale count only costs a spurious wake-up.
                match self.call.read() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(Error::EventFd(e)),
                }
            }
        }
    }

    /// Builds and adds a message: `readable` bytes followed by `writable_len`
    /// device-writable bytes, cut into descriptors at the byte offsets in `split`
    /// (offsets into the whole message; the readable/writable boundary is always a
    /// cut). Each descriptor gets its own guest allocation with trailing guard bytes.
    /// The device is not notified: call [`Virtqueue::kick`].
    pub fn add_message(
        &mut self,
        readable: &[u8],
        writable_len: usize,
        split: &[usize],
    ) -> Result<MessageHandle> {
        let total = readable.len() + writable_len;
        let ranges = split_ranges(total, split, readable.len());
        if ranges.len() > self.free.len() {
            return Err(Error::QueueFull {
                needed: ranges.len(),
                free: self.free.len(),
            });
        }
        let mut handle = MessageHandle {
            head: 0,
            segments: Vec::with_capacity(ranges.len()),
            readable: readable.to_vec(),
            writable_len,
        };
        match self.place_message(&mut handle, readable, &ranges) {
            Ok(head) => {
                handle.head = head;
                Ok(handle)
            }
            Err(e) => {
                // Best effort: the allocation error is the one worth reporting.
                let _ = handle.free(&self.mem);
                Err(e)
            }
        }
    }

    fn place_message(
        &mut self,
        handle: &mut MessageHandle,
        readable: &[u8],
        ranges: &[(usize, usize)],
    ) -> Result<u16> {
        for &(start, end) in ranges {
            let len = end - start;
            let len32 = u32::try_from(len).map_err(|_| Error::SegmentTooLong(len))?;
            let addr = self.mem.alloc(len + GUARD_LEN, 8)?;
            let writable = start >= readable.len();
            handle.segments.push(MessageSegment {
                segment: Segment {
                    addr,
                    len: len32,
                    writable,
                },
                offset: start,
            });
            if writable {
                self.mem.fill(addr, len, POISON_BYTE)?;
            } else {
                self.mem.write(addr, &readable[start..end])?;
            }
            self.mem.fill(addr + len as u64, GUARD_LEN, GUARD_BYTE)?;
        }
        let segs: Vec<Segment> = handle.segments.iter().map(|s| s.segment).collect();
        self.add_chain(&segs)
    }
}

/// Waits until `fd` is readable or `timeout` expires; returns whether it is readable.
fn wait_readable(fd: &EventFd, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Round up so a sub-millisecond remainder still sleeps instead of spinning.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: `pfd` is a valid pollfd that outlives the call, and the count is 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(Error::EventFd(err));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::thread;

    use super::*;
    use crate::test_utils::FakeDevice;

    fn queue(size: u16) -> Virtqueue {
        let mem = Arc::new(GuestMemory::new(1 << 20).unwrap());
        Virtqueue::new(mem, size).unwrap()
    }

    #[test]
    fn split_ranges_cuts_at_offsets_and_boundary() {
        assert_eq!(split_ranges(10, &[], 4), vec![(0, 4), (4, 10)]);
        assert_eq!(
            split_ranges(10, &[7, 1, 7, 0, 10, 99], 4),
            vec![(0, 1), (1, 4), (4, 7), (7, 10)]
        );
        assert_eq!(split_ranges(10, &[], 0), vec![(0, 10)]);
        assert_eq!(split_ranges(10, &[], 10), vec![(0, 10)]);
    }

    #[test]
    fn invalid_sizes_are_rejected() {
        let mem = Arc::new(GuestMemory::new(1 << 20).unwrap());
        for size in [0, 3, 100] {
            assert!(matches!(
                Virtqueue::new(mem.clone(), size),
                Err(Error::InvalidSize(_))
            ));
        }
    }

    #[test]
    fn message_split_at_odd_offsets_round_trips_through_the_descriptor_table() {
        let mut q = queue(16);
        let readable: Vec<u8> = (0u8..13).collect();
        let h = q.add_message(&readable, 11, &[1, 5, 14, 17]).unwrap();
        q.kick().unwrap();
        assert_eq!(q.kick_fd().read().unwrap(), 1);

        // Walk the ring as a device would, independently of the driver's bookkeeping.
        let dev = FakeDevice::new(&q);
        let chains = dev.pop_avail(q.memory()).unwrap();
        assert_eq!(chains.len(), 1);
        let (head, descs) = &chains[0];
        assert_eq!(*head, h.head());
        let lens: Vec<(u32, bool)> = descs.iter().map(|d| (d.len, d.writable)).collect();
        assert_eq!(
            lens,
            vec![
                (1, false),
                (4, false),
                (8, false),
                (1, true),
                (3, true),
                (7, true)
            ]
        );
        // Gathering the readable descriptors gives back the original bytes.
        let mut gathered = Vec::new();
        for d in descs.iter().filter(|d| !d.writable) {
            gathered.extend(q.memory().read(d.addr, d.len as usize).unwrap());
        }
        assert_eq!(gathered, readable);
        // Scattering into the writable descriptors reads back in order.
        let payload: Vec<u8> = (100u8..111).collect();
        let mut off = 0;
        for d in descs.iter().filter(|d| d.writable) {
            let n = d.len as usize;
            q.memory().write(d.addr, &payload[off..off + n]).unwrap();
            off += n;
        }
        dev.push_used(q.memory(), *head, 11).unwrap();
        let used = q.poll_used().unwrap();
        assert_eq!(
            used,
            vec![UsedElem {
                head: h.head(),
                len: 11
            }]
        );
        assert_eq!(h.read_writable(q.memory()).unwrap(), payload);
        h.verify(q.memory()).unwrap();
        assert_eq!(q.free_descriptors(), 16);
        h.free(q.memory()).unwrap();
    }

    #[test]
    fn writable_bytes_start_poisoned_and_guards_catch_overruns() {
        let mut q = queue(8);
        let h = q.add_message(&[1, 2, 3, 4], 8, &[]).unwrap();
        assert_eq!(h.read_writable(q.memory()).unwrap(), vec![POISON_BYTE; 8]);
        h.verify(q.memory()).unwrap();
        let w = h.segments()[1].segment;
        // One byte past the writable descriptor.
        q.memory().write(w.addr + u64::from(w.len), &[0]).unwrap();
        assert!(matches!(
            h.verify(q.memory()),
            Err(Error::GuardOverwritten { .. })
        ));
        q.memory()
            .write(w.addr + u64::from(w.len), &[GUARD_BYTE])
            .unwrap();
        let r = h.segments()[0].segment;
        q.memory().write(r.addr + 2, &[9]).unwrap();
        assert!(matches!(
            h.verify(q.memory()),
            Err(Error::ReadableModified { offset: 2 })
        ));
    }

    #[test]
    fn descriptors_recycle_across_ring_wrap() {
        let mut q = queue(4);
        let dev = FakeDevice::new(&q);
        for round in 0..40u32 {
            let a = q
                .add_chain(&[Segment::readable(q.memory().base(), 4)])
                .unwrap();
            let b = q
                .add_chain(&[
                    Segment::readable(q.memory().base(), 4),
                    Segment::writable(q.memory().base() + 64, 8),
                ])
                .unwrap();
            let chains = dev.pop_avail(q.memory()).unwrap();
            assert_eq!(chains.len(), 2);
            // Complete out of order.
            dev.push_used(q.memory(), b, round).unwrap();
            dev.push_used(q.memory(), a, 0).unwrap();
            let used = q.poll_used().unwrap();
            assert_eq!(
                used,
                vec![
                    UsedElem {
                        head: b,
                        len: round
                    },
                    UsedElem { head: a, len: 0 }
                ]
            );
            assert_eq!(q.free_descriptors(), 4);
            assert_eq!(q.in_flight(), 0);
        }
        assert_eq!(q.avail_idx(), 80);
        assert_eq!(q.last_used_idx(), 80);
    }

    #[test]
    fn queue_full_and_bad_used_ids_are_reported() {
        let mut q = queue(2);
        let base = q.memory().base();
        let segs = [Segment::readable(base, 1); 3];
        assert!(matches!(
            q.add_chain(&segs),
            Err(Error::QueueFull { needed: 3, free: 2 })
        ));
        assert!(matches!(q.add_chain(&[]), Err(Error::EmptyChain)));
        let head = q.add_chain(&segs[..1]).unwrap();
        let dev = FakeDevice::new(&q);
        dev.push_used(q.memory(), head ^ 1, 0).unwrap();
        assert!(matches!(q.poll_used(), Err(Error::BadUsedId { .. })));
    }

    #[test]
    fn used_idx_jump_is_reported() {
        let mut q = queue(4);
        let base = q.memory().base();
        q.add_chain(&[Segment::readable(base, 1)]).unwrap();
        q.memory().store_u16_release(q.used_ring() + 2, 3).unwrap();
        assert!(matches!(q.poll_used(), Err(Error::UsedIdxJump { .. })));
    }

    #[test]
    fn event_idx_keeps_used_event_at_the_next_expected_index() {
        let mut q = queue(8);
        q.set_event_idx(true).unwrap();
        let used_event = q.avail_ring() + 4 + 2 * 8;
        assert_eq!(q.memory().read_u16(used_event).unwrap(), 0);
        let dev = FakeDevice::new(&q);
        for _ in 0..3 {
            let h = q
                .add_chain(&[Segment::writable(q.memory().base(), 8)])
                .unwrap();
            dev.pop_avail(q.memory()).unwrap();
            dev.push_used(q.memory(), h, 8).unwrap();
        }
        assert_eq!(q.poll_used().unwrap().len(), 3);
        assert_eq!(q.memory().read_u16(used_event).unwrap(), 3);
    }

    #[test]
    fn kick_if_needed_kicks_only_when_the_device_asks() {
        let base_of = |q: &Virtqueue| q.memory().base();
        // EVENT_IDX: a kick when the new chains cross avail_event.
        let mut q = queue(8);
        q.set_event_idx(true).unwrap();
        let avail_event = q.used_ring() + 4 + USED_ELEM_SIZE * 8;
        q.memory().store_u16_release(avail_event, 0).unwrap();
        q.add_chain(&[Segment::readable(base_of(&q), 1)]).unwrap();
        assert!(q.kick_if_needed().unwrap(), "chain 0 is the one asked for");
        q.add_chain(&[Segment::readable(base_of(&q), 1)]).unwrap();
        assert!(
            !q.kick_if_needed().unwrap(),
            "avail_event 0 was passed already"
        );
        q.memory().store_u16_release(avail_event, 3).unwrap();
        q.add_chain(&[Segment::readable(base_of(&q), 1)]).unwrap();
        assert!(
            !q.kick_if_needed().unwrap(),
            "chain 2: the device waits for 3"
        );
        q.add_chain(&[Segment::readable(base_of(&q), 1)]).unwrap();
        q.add_chain(&[Segment::readable(base_of(&q), 1)]).unwrap();
        assert!(q.kick_if_needed().unwrap(), "chains 3 and 4 cross 3");
        assert_eq!(q.kick_fd().read().unwrap(), 2);
        // Without EVENT_IDX: unless NO_NOTIFY.
        let mut q = queue(8);
        q.add_chain(&[Segment::readable(base_of(&q), 1)]).unwrap();
        assert!(q.kick_if_needed().unwrap());
        q.memory()
            .store_u16_release(q.used_ring(), VRING_USED_F_NO_NOTIFY)
            .unwrap();
        q.add_chain(&[Segment::readable(base_of(&q), 1)]).unwrap();
        assert!(!q.kick_if_needed().unwrap());
    }

    #[test]
    fn wait_used_wakes_on_the_call_eventfd_and_times_out() {
        let mut q = queue(8);
        let start = Instant::now();
        let (used, _) = q.wait_used(Duration::from_millis(30)).unwrap();
        assert!(used.is_empty());
        assert!(start.elapsed() >= Duration::from_millis(30));

        let head = q
            .add_chain(&[Segment::writable(q.memory().base(), 8)])
            .unwrap();
        let dev = FakeDevice::new(&q);
        let mem = q.memory().clone();
        let call = q.call_fd().try_clone().unwrap();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            dev.push_used(&mem, head, 8).unwrap();
            call.write(1).unwrap();
        });
        let (used, at) = q.wait_used(Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        assert_eq!(used, vec![UsedElem { head, len: 8 }]);
        assert!(at.duration_since(start) >= Duration::from_millis(50));
    }
}
