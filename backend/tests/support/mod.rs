//! Shared by `tests/alloc_per_period.rs` and `benches/hot_path.rs`: a guest
//! side of split virtqueues in local memory, and the core's [`Virtqueue`]
//! over a plain `virtio_queue::Queue` on the same memory.
//!
//! The guest side never allocates once built: rings and buffers are fixed
//! addresses, and a completed chain is made available again as it is.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod counting_alloc;

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Mutex;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vsound::queue::{Chain, Mem, RingGate, RingPass, Virtqueue};

/// `VIRTQ_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub const F_WRITE: u16 = 2;

/// Fresh guest memory of `size` bytes at address 0.
pub fn memory(size: usize) -> GuestMemoryAtomic<Mem> {
    GuestMemoryAtomic::new(Mem::from_ranges(&[(GuestAddress(0), size)]).unwrap())
}

/// The driver side of one split virtqueue at a fixed address.
pub struct GuestRing {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    last_used: u16,
}

impl GuestRing {
    /// Lays out a ring of `size` entries at `base` (16-byte aligned).
    pub fn new(mem: &GuestMemoryAtomic<Mem>, base: u64, size: u16) -> GuestRing {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        let m = mem.memory();
        m.write_slice(
            &vec![0u8; (used + 6 + 8 * n - base) as usize],
            GuestAddress(base),
        )
        .unwrap();
        GuestRing {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
            last_used: 0,
        }
    }

    /// The device side: a `Queue` reading this ring.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Writes descriptors `head..` as one chain of `(addr, len, writable)`.
    pub fn write_chain(&self, mem: &GuestMemoryAtomic<Mem>, head: u16, parts: &[(u64, u32, bool)]) {
        let m = mem.memory();
        for (i, &(addr, len, writable)) in parts.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == parts.len();
            let mut flags = if writable { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(idx + 1).to_le_bytes());
            m.write_slice(&d, GuestAddress(self.desc + 16 * u64::from(idx)))
                .unwrap();
        }
    }

    /// Makes the chain at `head` available (no allocation).
    pub fn publish(&mut self, mem: &GuestMemoryAtomic<Mem>, head: u16) {
        let m = mem.memory();
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        m.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The ring entry must be visible before the index (virtio 2.7.13).
        m.store(
            self.avail_idx.to_le(),
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .unwrap();
    }

    /// The next used element `(head, len)`, if the device returned one.
    pub fn next_used(&mut self, mem: &GuestMemoryAtomic<Mem>) -> Option<(u16, u32)> {
        let m = mem.memory();
        let idx: u16 = m
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .unwrap();
        if u16::from_le(idx) == self.last_used {
            return None;
        }
        let elem = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let id: u32 = m.read_obj(GuestAddress(elem)).unwrap();
        let len: u32 = m.read_obj(GuestAddress(elem + 4)).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        Some((u32::from_le(id) as u16, u32::from_le(len)))
    }
}

/// The core's view of a queue, over a `Queue` on local memory. Completions
/// are counted; there is no eventfd to signal.
pub struct LocalQueue {
    queue: Mutex<Queue>,
    gate: RingGate,
    mem: GuestMemoryAtomic<Mem>,
    /// Chains put on the used ring.
    pub completed: AtomicU64,
}

impl LocalQueue {
    /// The device side of `ring`.
    pub fn new(ring: &GuestRing, mem: &GuestMemoryAtomic<Mem>) -> LocalQueue {
        LocalQueue {
            queue: Mutex::new(ring.queue()),
            gate: RingGate::new(true),
            mem: mem.clone(),
            completed: AtomicU64::new(0),
        }
    }
}

impl Virtqueue for LocalQueue {
    fn gate(&self) -> &RingGate {
        &self.gate
    }

    fn size(&self) -> u16 {
        self.queue.lock().unwrap().size()
    }

    fn pop(&self, _pass: &RingPass<'_>) -> Option<Chain> {
        let mut q = self.queue.lock().unwrap();
        q.pop_descriptor_chain(self.mem.memory())
    }

    fn complete(&self, _pass: &RingPass<'_>, head: u16, len: u32) {
        let mut q = self.queue.lock().unwrap();
        let m = self.mem.memory();
        q.add_used(&*m, head, len).unwrap();
        // What the vhost-user glue does before signalling the call eventfd.
        let _ = q.needs_notification(&*m);
        fence(Ordering::SeqCst);
        self.completed.fetch_add(1, Ordering::Relaxed);
    }
}
