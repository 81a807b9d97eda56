//! Test fixtures: a device-side view of a split ring, written independently of the
//! driver in `virtqueue.rs` (it only reads the ring layout from memory), and a mock
//! vhost-user sound backend served in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU16, Ordering};

use crate::memory::GuestMemory;
use crate::virtqueue::{Segment, Virtqueue};

pub mod mock_backend;

/// Device side of one split ring.
#[derive(Debug)]
pub struct FakeDevice {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: AtomicU16,
    used_idx: AtomicU16,
}

impl FakeDevice {
    /// Serves the rings of `q`.
    pub fn new(q: &Virtqueue) -> Self {
        FakeDevice {
            size: q.size(),
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            next_avail: AtomicU16::new(0),
            used_idx: AtomicU16::new(0),
        }
    }

    /// Pops every newly available chain: (head, descriptors).
    pub fn pop_avail(&self, mem: &GuestMemory) -> Result<Vec<(u16, Vec<Segment>)>, String> {
        let idx = mem.load_u16_acquire(self.avail + 2).unwrap();
        let mut out = Vec::new();
        while self.next_avail.load(Ordering::SeqCst) != idx {
            let n = self.next_avail.fetch_add(1, Ordering::SeqCst);
            let head = mem
                .read_u16(self.avail + 4 + 2 * u64::from(n % self.size))
                .unwrap();
            let mut descs = Vec::new();
            let mut i = head;
            loop {
                if descs.len() > usize::from(self.size) {
                    return Err("descriptor loop".into());
                }
                let d = self.desc + 16 * u64::from(i);
                let addr = mem.read_u64(d).unwrap();
                let len = mem.read_u32(d + 8).unwrap();
                let flags = mem.read_u16(d + 12).unwrap();
                let next = mem.read_u16(d + 14).unwrap();
                descs.push(Segment {
                    addr,
                    len,
                    writable: flags & 2 != 0,
                });
                if flags & 1 == 0 {
                    break;
                }
                i = next;
            }
            out.push((head, descs));
        }
        Ok(out)
    }

    /// Publishes one used element.
    pub fn push_used(&self, mem: &GuestMemory, head: u16, len: u32) -> Result<(), String> {
        let idx = self.used_idx.fetch_add(1, Ordering::SeqCst);
        let elem = self.used + 4 + 8 * u64::from(idx % self.size);
        mem.write_u32(elem, u32::from(head)).unwrap();
        mem.write_u32(elem + 4, len).unwrap();
        mem.store_u16_release(self.used + 2, idx.wrapping_add(1))
            .unwrap();
        Ok(())
    }
}
