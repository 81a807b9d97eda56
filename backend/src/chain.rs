//! Byte-offset access to a descriptor chain.
//!
//! virtio-snd messages are defined by byte offsets, not by descriptor count:
//! Linux splits a PCM buffer into one descriptor per contiguous page run, and
//! other drivers may split headers anywhere. [`ChainLayout`] measures the
//! device-readable and device-writable parts once, then reads and writes at
//! offsets inside each part, across any descriptor boundaries, without
//! allocating.

use vm_memory::Bytes;

use crate::queue::Chain;

/// The most bytes a single message may span. Larger chains are refused
/// (a guest-controlled length must not drive unbounded work).
pub const MAX_MESSAGE_BYTES: u64 = 64 << 20;

/// Errors walking or accessing a chain.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("Descriptor chain longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    #[error("Descriptor chain of more than {0} descriptors (the queue size)")]
    TooManyDescriptors(u16),
    #[error("Readable descriptor after a writable one")]
    ReadableAfterWritable,
    #[error("Access of {len} bytes at offset {offset} beyond the {part_len}-byte part")]
    OutOfRange {
        offset: u64,
        len: u64,
        part_len: u64,
    },
    #[error("Guest memory access failed")]
    Memory,
}

/// The sizes of a chain's readable and writable parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainLayout {
    pub readable: u64,
    pub writable: u64,
}

impl ChainLayout {
    /// Measures a chain (readable descriptors must all come first, as the
    /// virtio spec requires) of at most `max_descriptors` (the queue size:
    /// a driver must not make longer chains, spec 2.7.5.3.1; an indirect
    /// table could otherwise hold 65,535 and every access walks them).
    pub fn of(chain: &Chain, max_descriptors: u16) -> Result<ChainLayout, ChainError> {
        let mut readable = 0u64;
        let mut writable = 0u64;
        for (n, desc) in chain.clone().enumerate() {
            if n >= usize::from(max_descriptors) {
                return Err(ChainError::TooManyDescriptors(max_descriptors));
            }
            let len = u64::from(desc.len());
            if desc.is_write_only() {
                writable = writable.checked_add(len).ok_or(ChainError::TooLong)?;
            } else {
                if writable > 0 {
                    return Err(ChainError::ReadableAfterWritable);
                }
                readable = readable.checked_add(len).ok_or(ChainError::TooLong)?;
            }
            if readable.saturating_add(writable) > MAX_MESSAGE_BYTES {
                return Err(ChainError::TooLong);
            }
        }
        Ok(ChainLayout { readable, writable })
    }
}

fn check_range(offset: u64, len: usize, part_len: u64) -> Result<(), ChainError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= part_len => Ok(()),
        _ => Err(ChainError::OutOfRange {
            offset,
            len,
            part_len,
        }),
    }
}

/// Walks one part of a chain, calling `f(guest_addr, range_in_buf)` for
/// each piece of `[offset, offset + len)`.
fn for_each_piece(
    chain: &Chain,
    writable: bool,
    offset: u64,
    len: usize,
    mut f: impl FnMut(vm_memory::GuestAddress, std::ops::Range<usize>) -> Result<(), ChainError>,
) -> Result<(), ChainError> {
    let mut skip = offset;
    let mut done = 0usize;
    for desc in chain.clone() {
        if done == len {
            break;
        }
        if desc.is_write_only() != writable {
            continue;
        }
        let dlen = u64::from(desc.len());
        if skip >= dlen {
            skip -= dlen;
            continue;
        }
        let avail = dlen - skip;
        let n = avail.min((len - done) as u64) as usize;
        let addr = desc
            .addr()
            .0
            .checked_add(skip)
            .map(vm_memory::GuestAddress)
            .ok_or(ChainError::Memory)?;
        f(addr, done..done + n)?;
        done += n;
        skip = 0;
    }
    if done == len {
        Ok(())
    } else {
        Err(ChainError::OutOfRange {
            offset,
            len: len as u64,
            part_len: offset + done as u64,
        })
    }
}

/// Reads `buf.len()` bytes at `offset` of the readable part.
pub fn read_at(
    chain: &Chain,
    layout: &ChainLayout,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ChainError> {
    check_range(offset, buf.len(), layout.readable)?;
    let mem = chain.memory();
    let len = buf.len();
    for_each_piece(chain, false, offset, len, |addr, range| {
        let dst = buf.get_mut(range).ok_or(ChainError::Memory)?;
        mem.read_slice(dst, addr).map_err(|_| ChainError::Memory)
    })
}

/// Writes `buf` at `offset` of the writable part.
pub fn write_at(
    chain: &Chain,
    layout: &ChainLayout,
    offset: u64,
    buf: &[u8],
) -> Result<(), ChainError> {
    check_range(offset, buf.len(), layout.writable)?;
    let mem = chain.memory();
    for_each_piece(chain, true, offset, buf.len(), |addr, range| {
        let src = buf.get(range).ok_or(ChainError::Memory)?;
        mem.write_slice(src, addr).map_err(|_| ChainError::Memory)
    })
}

/// Reads back bytes of the writable part (tests check what was written).
#[cfg(test)]
pub(crate) fn read_at_writable(
    chain: &Chain,
    layout: &ChainLayout,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ChainError> {
    check_range(offset, buf.len(), layout.writable)?;
    let mem = chain.memory();
    let len = buf.len();
    for_each_piece(chain, true, offset, len, |addr, range| {
        let dst = buf.get_mut(range).ok_or(ChainError::Memory)?;
        mem.read_slice(dst, addr).map_err(|_| ChainError::Memory)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic};

    use super::*;
    use crate::queue::Mem;

    /// Builds a one-chain queue in fresh memory: `readable` bytes split at
    /// `rsplits`, then `writable` zero bytes split at `wsplits`.
    pub(crate) fn make_chain(
        readable: &[u8],
        rsplits: &[usize],
        writable: usize,
        wsplits: &[usize],
    ) -> Chain {
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem);
        let guard = atomic.memory();
        let vq = MockSplitQueue::new(&*guard, 64);
        let mut descs = Vec::new();
        let mut addr = 0x10_0000u64;
        let mut pieces =
            |total: usize, splits: &[usize], write: bool, descs: &mut Vec<(u64, u32, bool)>| {
                let mut start = 0;
                for &s in splits.iter().chain(std::iter::once(&total)) {
                    if s > start {
                        descs.push((addr, (s - start) as u32, write));
                        addr += (s - start) as u64 + 0x100; // leave gaps
                    }
                    start = s;
                }
            };
        pieces(readable.len(), rsplits, false, &mut descs);
        pieces(writable, wsplits, true, &mut descs);
        let mut off = 0;
        let n = descs.len();
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(a, l, w))| {
                if !w {
                    guard
                        .write_slice(&readable[off..off + l as usize], GuestAddress(a))
                        .unwrap();
                    off += l as usize;
                }
                let mut flags = 0u16;
                if w {
                    flags |= VRING_DESC_F_WRITE as u16;
                }
                if i + 1 < n {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(a, l, flags, (i + 1) as u16))
            })
            .collect();
        vq.build_desc_chain(&raw).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(atomic.memory()).unwrap().next().unwrap();
        chain
    }

    #[test]
    fn a_chain_of_more_descriptors_than_the_queue_size_is_refused() {
        let data = [0u8; 16];
        // 8 readable + 1 writable descriptors.
        let chain = make_chain(&data, &[2, 4, 6, 8, 10, 12, 14], 8, &[]);
        assert!(ChainLayout::of(&chain, 9).is_ok());
        assert_eq!(
            ChainLayout::of(&chain, 8),
            Err(ChainError::TooManyDescriptors(8))
        );
    }

    #[test]
    fn reads_and_writes_cross_descriptor_boundaries_at_odd_offsets() {
        let data: Vec<u8> = (0..100u8).collect();
        let chain = make_chain(&data, &[1, 3, 7, 50], 40, &[5, 13]);
        let layout = ChainLayout::of(&chain, 64).unwrap();
        assert_eq!(
            layout,
            ChainLayout {
                readable: 100,
                writable: 40
            }
        );
        let mut buf = [0u8; 10];
        read_at(&chain, &layout, 2, &mut buf).unwrap();
        assert_eq!(buf, [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        let mut tail = [0u8; 52];
        read_at(&chain, &layout, 48, &mut tail).unwrap();
        assert_eq!(tail[0], 48);
        assert_eq!(tail[51], 99);
        write_at(&chain, &layout, 3, &[0xaa; 12]).unwrap();
        write_at(&chain, &layout, 32, &[0xbb; 8]).unwrap();
        assert!(matches!(
            write_at(&chain, &layout, 33, &[0; 8]),
            Err(ChainError::OutOfRange { .. })
        ));
        assert!(matches!(
            read_at(&chain, &layout, u64::MAX, &mut [0; 2]),
            Err(ChainError::OutOfRange { .. })
        ));
    }
}
