//! Byte-offset access to a descriptor chain.
//!
//! virtio-snd messages are defined by byte offsets, not by descriptor count:
//! Linux splits a PCM buffer into one descriptor per contiguous page run, and
//! other drivers may split headers anywhere. [`ChainLayout`] measures the
//! device-readable and device-writable parts once, then reads and writes at
//! offsets inside each part, across any descriptor boundaries, without
//! allocating.
//!
//! [`read_at`] and [`write_at`] walk the chain from its head at every call:
//! fine for a control request or an event (one access or two). An I/O
//! message is copied in many chunks, one after the other; it uses a
//! [`Cursor`] per part instead, which remembers the descriptor where the
//! last access ended, so a whole message costs one walk of its chain.

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
    #[error("Write into the device-readable part of a chain")]
    ReadOnly,
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
        Self::walk(chain, max_descriptors, false).map(|(layout, _)| layout)
    }

    /// Measures a chain as [`ChainLayout::of`] does, and returns a cursor
    /// for each part: the writable one already on the first writable
    /// descriptor, found by this walk, so that reaching the writable part
    /// (an rx payload, a tx status) does not walk the readable one again.
    pub fn with_cursors(
        chain: &Chain,
        max_descriptors: u16,
    ) -> Result<(ChainLayout, Cursor, Cursor), ChainError> {
        let (layout, writable) = Self::walk(chain, max_descriptors, true)?;
        let writable = writable.unwrap_or_else(|| Cursor::new(chain, true));
        Ok((layout, Cursor::new(chain, false), writable))
    }

    fn walk(
        chain: &Chain,
        max_descriptors: u16,
        want_cursor: bool,
    ) -> Result<(ChainLayout, Option<Cursor>), ChainError> {
        let mut readable = 0u64;
        let mut writable = 0u64;
        let mut cursor = None;
        let mut it = chain.clone();
        let mut n = 0usize;
        while let Some(desc) = it.next() {
            if n >= usize::from(max_descriptors) {
                return Err(ChainError::TooManyDescriptors(max_descriptors));
            }
            n += 1;
            let len = u64::from(desc.len());
            if desc.is_write_only() {
                if want_cursor && cursor.is_none() {
                    // One clone of the iterator, past this descriptor.
                    cursor = Some(Cursor {
                        writable: true,
                        rest: it.clone(),
                        desc: Some((desc.addr().0, desc.len())),
                        start: 0,
                        visited: 0,
                    });
                }
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
        Ok((ChainLayout { readable, writable }, cursor))
    }
}

/// A place in one part (readable or writable) of a chain, for copies in
/// sequence: the descriptor holding the byte where the last access ended,
/// and the chain iterator just past it.
///
/// Why a cursor, and not a list of the chain's segments: a message is
/// copied in chunks from its start to its end, so each access starts where
/// the previous one ended, and a cursor makes the whole copy one walk of
/// the chain with no allocation (the I/O path allocates nothing per
/// period), whatever the chain's length; a segment list would need the heap
/// or a fixed inline array with a fallback for longer chains. An access at
/// an earlier offset than the cursor's descriptor starts over from the head
/// (nothing in the daemon does that on a message; it stays correct).
///
/// The descriptors are read from guest memory as the cursor reaches them,
/// as the chain iterator always does: a guest that rewrites them meanwhile
/// gets bounded, checked accesses (every copy is also checked against the
/// [`ChainLayout`] measured at first).
#[derive(Clone)]
pub struct Cursor {
    writable: bool,
    /// The chain, positioned just past `desc`.
    rest: Chain,
    /// The descriptor of this part that starts at part offset `start`
    /// (guest address, length); `None` before the first of the part, or
    /// once the part's descriptors are exhausted.
    desc: Option<(u64, u32)>,
    /// The part offset at which `desc` starts (or the next one will).
    start: u64,
    /// Descriptors taken from the chain iterator (read from guest memory)
    /// by this cursor so far.
    visited: u32,
}

impl Cursor {
    /// A cursor at the start of `chain`'s readable or writable part.
    pub fn new(chain: &Chain, writable: bool) -> Cursor {
        Cursor {
            writable,
            rest: chain.clone(),
            desc: None,
            start: 0,
            visited: 0,
        }
    }

    /// Descriptors this cursor read from the chain so far (a test counter).
    pub fn visited(&self) -> u32 {
        self.visited
    }

    /// The next descriptor of this part, if any.
    fn advance(&mut self) -> Option<(u64, u32)> {
        for d in self.rest.by_ref() {
            self.visited = self.visited.saturating_add(1);
            if d.is_write_only() == self.writable {
                self.desc = Some((d.addr().0, d.len()));
                return self.desc;
            }
        }
        self.desc = None;
        None
    }

    /// Calls `f(guest_addr, range_in_buf)` for each piece of the part's
    /// `[offset, offset + len)`, going on from where the last call ended.
    fn pieces(
        &mut self,
        head: &Chain,
        offset: u64,
        len: usize,
        mut f: impl FnMut(vm_memory::GuestAddress, std::ops::Range<usize>) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        if offset < self.start {
            let visited = self.visited;
            *self = Cursor::new(head, self.writable);
            self.visited = visited;
        }
        let mut done = 0usize;
        let mut pos = offset;
        while done < len {
            let current = match self.desc {
                Some(d) => Some(d),
                None => self.advance(),
            };
            let Some((addr, dlen)) = current else {
                return Err(ChainError::OutOfRange {
                    offset,
                    len: len as u64,
                    part_len: offset + done as u64,
                });
            };
            let end = self.start + u64::from(dlen);
            if pos >= end {
                // Past this descriptor: on to the next (zero-length ones
                // are skipped here too).
                self.start = end;
                self.desc = None;
                continue;
            }
            let skip = pos - self.start;
            let n = (end - pos).min((len - done) as u64) as usize;
            let at = addr
                .checked_add(skip)
                .map(vm_memory::GuestAddress)
                .ok_or(ChainError::Memory)?;
            f(at, done..done + n)?;
            done += n;
            pos += n as u64;
        }
        Ok(())
    }

    fn part_len(&self, layout: &ChainLayout) -> u64 {
        if self.writable {
            layout.writable
        } else {
            layout.readable
        }
    }

    /// Reads `buf.len()` bytes at `offset` of the cursor's part (`head` is
    /// the chain, at its head).
    pub fn read(
        &mut self,
        head: &Chain,
        layout: &ChainLayout,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ChainError> {
        check_range(offset, buf.len(), self.part_len(layout))?;
        let mem = head.memory();
        let len = buf.len();
        self.pieces(head, offset, len, |addr, range| {
            let dst = buf.get_mut(range).ok_or(ChainError::Memory)?;
            mem.read_slice(dst, addr).map_err(|_| ChainError::Memory)
        })
    }

    /// Writes `buf` at `offset` of the cursor's part, which must be the
    /// writable one.
    pub fn write(
        &mut self,
        head: &Chain,
        layout: &ChainLayout,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), ChainError> {
        if !self.writable {
            return Err(ChainError::ReadOnly);
        }
        check_range(offset, buf.len(), layout.writable)?;
        let mem = head.memory();
        self.pieces(head, offset, buf.len(), |addr, range| {
            let src = buf.get(range).ok_or(ChainError::Memory)?;
            mem.write_slice(src, addr).map_err(|_| ChainError::Memory)
        })
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
        make_chain_in(readable, rsplits, writable, wsplits, 64).0
    }

    /// [`make_chain`] on a queue of `queue_size`; also returns the address
    /// of its descriptor table (the chain's descriptors are 0, 1, 2...).
    pub(crate) fn make_chain_in(
        readable: &[u8],
        rsplits: &[usize],
        writable: usize,
        wsplits: &[usize],
        queue_size: u16,
    ) -> (Chain, GuestAddress) {
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem);
        let guard = atomic.memory();
        let vq = MockSplitQueue::new(&*guard, queue_size);
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
        let table = vq.desc_table_addr();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(atomic.memory()).unwrap().next().unwrap();
        (chain, table)
    }

    /// Offsets cutting `len` bytes into pieces of uneven sizes (about
    /// `mean` bytes, never a multiple of a power of two).
    fn uneven_splits(len: usize, mean: usize) -> Vec<usize> {
        let mut at = 0;
        let mut k = 0;
        let mut splits = Vec::new();
        loop {
            at += mean / 2 + (k * 7919) % mean + 1;
            k += 1;
            if at >= len {
                return splits;
            }
            splits.push(at);
        }
    }

    /// Copies of a message in chunks, in order (what the worker does), read
    /// each of the chain's descriptors from guest memory once in all, for
    /// both parts, and move the right bytes across every boundary. (Walking
    /// from the head at every chunk, as `read_at` does, reads them
    /// chunks × descriptors / 2 times.)
    #[test]
    fn copies_in_order_walk_the_chain_once() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let rsplits = uneven_splits(data.len(), 1000);
        let wlen = 200_008;
        let wsplits = uneven_splits(wlen, 1000);
        let (nr, nw) = (rsplits.len() + 1, wsplits.len() + 1);
        assert!(nr > 250 && nw > 150, "{nr} + {nw} descriptors");
        let (chain, _) = make_chain_in(&data, &rsplits, wlen, &wsplits, 1024);
        let (layout, mut r, mut w) = ChainLayout::with_cursors(&chain, 1024).unwrap();
        assert_eq!(
            layout,
            ChainLayout {
                readable: data.len() as u64,
                writable: wlen as u64
            }
        );

        let mut got = vec![0u8; data.len()];
        for (k, part) in got.chunks_mut(4099).enumerate() {
            r.read(&chain, &layout, (k * 4099) as u64, part).unwrap();
        }
        assert!(got == data, "the readable part read in chunks differs");
        assert_eq!(r.visited() as usize, nr, "readable descriptors read");

        let out: Vec<u8> = (0..wlen as u32).map(|i| (i * 13 + 5) as u8).collect();
        for (k, part) in out.chunks(3001).enumerate() {
            w.write(&chain, &layout, (k * 3001) as u64, part).unwrap();
        }
        // The first writable descriptor was found by the measuring walk.
        assert_eq!(w.visited() as usize, nw - 1, "writable descriptors read");
        let mut back = vec![0u8; wlen];
        read_at_writable(&chain, &layout, 0, &mut back).unwrap();
        assert!(back == out, "the writable part written in chunks differs");
        assert!(matches!(
            r.write(&chain, &layout, 0, &[0]),
            Err(ChainError::ReadOnly)
        ));
    }

    /// The cursor does not walk again what it passed: descriptors behind it
    /// can be overwritten (here: made empty ends of chain) and the copy goes
    /// on right, while a walk from the head now fails.
    #[test]
    fn descriptors_behind_the_cursor_are_not_read_again() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i ^ (i >> 8)) as u8).collect();
        let rsplits = uneven_splits(data.len(), 700);
        let (chain, table) = make_chain_in(&data, &rsplits, 8, &[], 1024);
        let (layout, mut r, _) = ChainLayout::with_cursors(&chain, 1024).unwrap();
        let half = 50_003;
        let mut got = vec![0u8; data.len()];
        let (first, second) = got.split_at_mut(half);
        r.read(&chain, &layout, 0, first).unwrap();
        let passed = r.visited() as u64 - 1; // the current one is still needed
        let mem = chain.memory();
        for i in 0..passed {
            mem.write_slice(&[0u8; 16], GuestAddress(table.0 + 16 * i))
                .unwrap();
        }
        for (k, part) in second.chunks_mut(997).enumerate() {
            let at = half as u64 + (k * 997) as u64;
            r.read(&chain, &layout, at, part).unwrap();
        }
        assert!(got == data, "the copy after the cursor differs");
        assert!(
            read_at(&chain, &layout, half as u64, &mut [0; 16]).is_err(),
            "a walk from the head still read the old descriptors"
        );
    }

    /// An access before the cursor's descriptor starts over from the head.
    #[test]
    fn an_earlier_offset_starts_over_from_the_head() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let (chain, _) = make_chain_in(&data, &uneven_splits(data.len(), 300), 8, &[], 256);
        let (layout, mut r, _) = ChainLayout::with_cursors(&chain, 256).unwrap();
        let mut buf = [0u8; 100];
        r.read(&chain, &layout, 9_000, &mut buf).unwrap();
        assert_eq!(buf[..], data[9_000..9_100]);
        let far = r.visited();
        r.read(&chain, &layout, 10, &mut buf).unwrap();
        assert_eq!(buf[..], data[10..110]);
        assert!(r.visited() > far, "it went back to the head");
        r.read(&chain, &layout, 5_000, &mut buf).unwrap();
        assert_eq!(buf[..], data[5_000..5_100]);
        assert!(r
            .read(&chain, &layout, 9_950, &mut buf)
            .is_err_and(|e| matches!(e, ChainError::OutOfRange { .. })));
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
