//! Shared by the fuzz targets: a byte reader that never fails, and a guest
//! side of split virtqueues in local memory around a real `SoundDevice`
//! (the approach of `backend/tests/support/mod.rs`, with completions
//! recorded per head so that a target can check each chain came back
//! exactly once).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vsound::config::Config;
use vsound::constants::QueueIndex;
use vsound::control::handle_control;
use vsound::daemon::DaemonState;
use vsound::device::SoundDevice;
use vsound::queue::{Chain, Mem, RingGate, RingPass, Virtqueue};

/// `VIRTQ_DESC_F_NEXT`, `_WRITE`, `_INDIRECT`.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// Reads fuzz bytes; past the end every read is zero.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data, pos: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
}

/// Ignores SIGPIPE, as Rust's `main` does for the real daemon (libFuzzer's
/// `main` does not): a peer that closes while we write gets EPIPE.
pub fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN has no memory
    // safety requirements.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Fresh guest memory of `size` bytes at address 0.
pub fn memory(size: usize) -> GuestMemoryAtomic<Mem> {
    GuestMemoryAtomic::new(Mem::from_ranges(&[(GuestAddress(0), size)]).unwrap())
}

/// The driver side of one split virtqueue at a fixed address.
pub struct GuestRing {
    pub size: u16,
    pub desc: u64,
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
        mem.memory()
            .write_slice(
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

    /// The bytes the ring occupies.
    pub fn end(&self) -> u64 {
        self.used + 6 + 8 * u64::from(self.size)
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

    /// Writes one raw descriptor.
    pub fn write_desc(
        &self,
        mem: &GuestMemoryAtomic<Mem>,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        write_desc_at(
            mem,
            self.desc + 16 * u64::from(idx % self.size),
            addr,
            len,
            flags,
            next,
        );
    }

    /// Makes the chain at `head` available.
    pub fn publish(&mut self, mem: &GuestMemoryAtomic<Mem>, head: u16) {
        let m = mem.memory();
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        m.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
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

/// Writes a 16-byte split descriptor at `at` (a ring's table or an indirect
/// table).
pub fn write_desc_at(
    mem: &GuestMemoryAtomic<Mem>,
    at: u64,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    mem.memory().write_slice(&d, GuestAddress(at)).unwrap();
}

/// The core's view of a queue, over a `Queue` on local memory. Every
/// completion is recorded; a failed `add_used` is counted (never expected:
/// heads come from popped chains).
pub struct LocalQueue {
    queue: Mutex<Queue>,
    gate: RingGate,
    mem: GuestMemoryAtomic<Mem>,
    pub completions: Mutex<Vec<(u16, u32)>>,
    pub add_used_errors: Mutex<u64>,
}

impl LocalQueue {
    pub fn new(ring: &GuestRing, mem: &GuestMemoryAtomic<Mem>) -> LocalQueue {
        LocalQueue {
            queue: Mutex::new(ring.queue()),
            gate: RingGate::new(true),
            mem: mem.clone(),
            completions: Mutex::new(Vec::new()),
            add_used_errors: Mutex::new(0),
        }
    }

    pub fn take_completions(&self) -> Vec<(u16, u32)> {
        std::mem::take(&mut *self.completions.lock().unwrap())
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
        if q.add_used(&*m, head, len).is_err() {
            *self.add_used_errors.lock().unwrap() += 1;
            return;
        }
        let _ = q.needs_notification(&*m);
        fence(Ordering::SeqCst);
        self.completions.lock().unwrap().push((head, len));
    }
}

// ---- the rig: a real device on local rings ---------------------------------

/// Guest memory layout of the rig.
pub const CTL_RING: u64 = 0x0000;
pub const EVT_RING: u64 = 0x2000;
pub const TX_RING: u64 = 0x4000;
pub const RX_RING: u64 = 0x8000;
/// Indirect descriptor tables.
pub const ITAB: u64 = 0x1_0000;
pub const ITAB_LEN: u64 = 0x1_0000;
/// PCM buffers and message headers.
pub const ARENA: u64 = 0x2_0000;
pub const ARENA_LEN: u64 = 0x2_0000;
/// The rig's own control requests (end-of-input cleanup).
pub const CTL_BUF: u64 = 0x4_0000;
pub const MEM_SIZE: u64 = 0x5_0000;
pub const CTL_QUEUE_SIZE: u16 = 64;
pub const IO_QUEUE_SIZE: u16 = 256;

/// A `SoundDevice` from the default config (one output and one input
/// stream on `null`), its four queues on local rings, with its real stream
/// lanes (the shared reactor, which also watches for hangs) running.
pub struct Rig {
    pub mem: GuestMemoryAtomic<Mem>,
    pub state: Arc<DaemonState>,
    pub dev: Arc<SoundDevice>,
    /// ctl, event, tx, rx.
    pub rings: [GuestRing; 4],
    pub queues: [Arc<LocalQueue>; 4],
}

pub const QUEUES: [QueueIndex; 4] = [
    QueueIndex::Control,
    QueueIndex::Event,
    QueueIndex::Tx,
    QueueIndex::Rx,
];

impl Rig {
    pub fn new() -> Rig {
        // The default configuration with volume controls on both streams,
        // so the CTL_* requests reach real elements.
        let text = vsound::config::DEFAULT_CONFIG.replace("group = 0\n", "group = 0\nvolume = true\n");
        let config = Config::from_toml("fuzz", &text).unwrap();
        assert_eq!(config.streams.iter().filter(|s| s.volume.is_some()).count(), 2);
        let state = DaemonState::new(&config).unwrap();
        let dev = SoundDevice::with_controls(&config, &state.devices, state.controls.clone()).unwrap();
        let mem = memory(MEM_SIZE as usize);
        let rings = [
            GuestRing::new(&mem, CTL_RING, CTL_QUEUE_SIZE),
            GuestRing::new(&mem, EVT_RING, CTL_QUEUE_SIZE),
            GuestRing::new(&mem, TX_RING, IO_QUEUE_SIZE),
            GuestRing::new(&mem, RX_RING, IO_QUEUE_SIZE),
        ];
        assert!(rings[3].end() <= ITAB);
        let queues = [0, 1, 2, 3].map(|i| Arc::new(LocalQueue::new(&rings[i], &mem)));
        for (qi, q) in QUEUES.iter().zip(queues.iter()) {
            dev.set_queue(*qi, q.clone());
        }
        Rig {
            mem,
            state,
            dev,
            rings,
            queues,
        }
    }

    pub fn queue(&self, qi: QueueIndex) -> &Arc<LocalQueue> {
        &self.queues[qi as usize]
    }

    /// Sends the chain already written at descriptor `head` of the control
    /// ring and returns its used element (exactly one is expected).
    pub fn control_chain(&mut self, head: u16) -> Vec<(u16, u32)> {
        self.rings[0].publish(&self.mem, head);
        let q = self.queues[0].clone();
        let pass = q.gate().enter().expect("control ring runs");
        let chain = q.pop(&pass).expect("the chain just published");
        handle_control(&self.dev, q.as_ref(), &pass, chain);
        drop(pass);
        let mut used = Vec::new();
        while let Some(u) = self.rings[0].next_used(&self.mem) {
            used.push(u);
        }
        q.take_completions();
        used
    }

    /// A well-formed control request in the rig's own buffer; returns its
    /// status.
    pub fn control(&mut self, req: &[u8]) -> u32 {
        let m = self.mem.memory();
        m.write_slice(req, GuestAddress(CTL_BUF)).unwrap();
        m.write_slice(&[0u8; 4], GuestAddress(CTL_BUF + 0x1000))
            .unwrap();
        drop(m);
        let r = &self.rings[0];
        r.write_desc(&self.mem, 0, CTL_BUF, req.len() as u32, F_NEXT, 1);
        r.write_desc(&self.mem, 1, CTL_BUF + 0x1000, 4, F_WRITE, 0);
        let used = self.control_chain(0);
        assert_eq!(used, vec![(0, 4)], "the rig's own request");
        u32::from_le(
            self.mem
                .memory()
                .read_obj(GuestAddress(CTL_BUF + 0x1000))
                .unwrap(),
        )
    }

    /// A PCM request without parameters (PREPARE, RELEASE, START, STOP).
    pub fn pcm(&mut self, code: u32, stream: u32) -> u32 {
        let mut req = [0u8; 8];
        req[..4].copy_from_slice(&code.to_le_bytes());
        req[4..].copy_from_slice(&stream.to_le_bytes());
        self.control(&req)
    }

    /// Brings the device back to a fresh driver's view: every ring stopped,
    /// `SoundDevice::reset`, rings started, host devices attached. Forgets
    /// what is on the used rings.
    pub fn reset(&mut self) {
        for q in &self.queues {
            q.gate()
                .stop(vsound::pacer::now_ns(), std::time::Duration::from_secs(1));
        }
        for d in &self.state.devices {
            d.admin_attach();
        }
        self.dev.reset();
        for q in &self.queues {
            q.gate().start();
        }
        for i in 0..4 {
            while self.rings[i].next_used(&self.mem).is_some() {}
            self.queues[i].take_completions();
        }
    }
}

impl Rig {
    /// Forgets the chains made available on `qi` and not taken: the
    /// device's next chain is the driver's next one.
    pub fn resync(&mut self, qi: QueueIndex) {
        let i = qi as usize;
        let avail = self.rings[i].avail_idx;
        self.queues[i].queue.lock().unwrap().set_next_avail(avail);
    }
}

impl Default for Rig {
    fn default() -> Self {
        Rig::new()
    }
}

/// The status codes a response may carry.
pub fn valid_status(s: u32) -> bool {
    (0x8000..=0x8003).contains(&s)
}
