//! A worker's memory does not grow with the size of the guest's messages:
//! its copy buffer is allocated once, at 64 KiB, and 8 MiB messages move
//! through it in chunks (a worker that sized its buffer to the message, as
//! before, allocated 8 MiB at the first one, per stream: 1,024 streams made
//! the daemon allocate 16 GiB at a guest's word).
//!
//! As in `alloc_per_period.rs`: the device core runs in-process on the null
//! device, with its real worker threads, and this thread plays the guest
//! and the queue thread; a counting global allocator attributes every
//! allocation to its thread. Counting starts before START, so the first
//! copy of every message is counted: over the whole run the workers and
//! the intake may allocate a few small things at most (under 64 KiB in
//! all), and after the first period nothing at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::counting_alloc::{counts, gettid, reset_counts, CountingAlloc, COUNTING, OVERFLOW};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{GuestRing, LocalQueue};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vsound::config::Config;
use vsound::constants::{QueueIndex, RequestCode};
use vsound::control::handle_control;
use vsound::daemon::DaemonState;
use vsound::device::SoundDevice;
use vsound::queue::{Mem, Virtqueue};
use vsound_devices::Format;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// FLOAT64, 6 channels, 384 kHz: 48-byte frames, 18.4 MB/s.
const FRAME: u32 = 48;
/// At least 8 MiB of whole frames (0.46 s): one period, the whole buffer.
const PERIOD: u32 = (8 << 20) / FRAME * FRAME + FRAME;
/// Messages in flight per stream.
const MESSAGES: u16 = 2;
const QUEUE_SIZE: u16 = 64;
/// Periods per stream before counting starts (counting starts before
/// START too: see `steady`).
const WARMUP: u64 = 1;
/// Periods counted, per stream.
const MEASURED: u64 = 3;

struct Guest {
    mem: GuestMemoryAtomic<Mem>,
    dev: Arc<SoundDevice>,
    ctl_ring: GuestRing,
    ctl: Arc<LocalQueue>,
    tx_ring: GuestRing,
    tx: Arc<LocalQueue>,
    rx_ring: GuestRing,
    rx: Arc<LocalQueue>,
}

impl Guest {
    fn new(dev: Arc<SoundDevice>) -> Guest {
        let mem = support::memory(48 << 20);
        let ctl_ring = GuestRing::new(&mem, 0, QUEUE_SIZE);
        let ev_ring = GuestRing::new(&mem, 0x1_0000, QUEUE_SIZE);
        let tx_ring = GuestRing::new(&mem, 0x2_0000, QUEUE_SIZE);
        let rx_ring = GuestRing::new(&mem, 0x3_0000, QUEUE_SIZE);
        let ctl = Arc::new(LocalQueue::new(&ctl_ring, &mem));
        let tx = Arc::new(LocalQueue::new(&tx_ring, &mem));
        let rx = Arc::new(LocalQueue::new(&rx_ring, &mem));
        dev.set_queue(QueueIndex::Control, ctl.clone());
        dev.set_queue(QueueIndex::Event, Arc::new(LocalQueue::new(&ev_ring, &mem)));
        dev.set_queue(QueueIndex::Tx, tx.clone());
        dev.set_queue(QueueIndex::Rx, rx.clone());
        Guest {
            mem,
            dev,
            ctl_ring,
            ctl,
            tx_ring,
            tx,
            rx_ring,
            rx,
        }
    }

    fn control(&mut self, req: &[u8]) -> u32 {
        let m = self.mem.memory();
        m.write_slice(req, GuestAddress(0x10_0000)).unwrap();
        self.ctl_ring.write_chain(
            &self.mem,
            0,
            &[(0x10_0000, req.len() as u32, false), (0x10_1000, 4, true)],
        );
        self.ctl_ring.publish(&self.mem, 0);
        let pass = self.ctl.gate().enter().expect("control ring runs");
        let chain = self.ctl.pop(&pass).expect("control chain");
        handle_control(&self.dev, self.ctl.as_ref(), &pass, chain);
        drop(pass);
        self.ctl_ring
            .next_used(&self.mem)
            .expect("answered at once");
        u32::from_le(m.read_obj(GuestAddress(0x10_1000)).unwrap())
    }

    fn pcm(&mut self, code: RequestCode, stream: u32) {
        let mut req = [0u8; 8];
        req[..4].copy_from_slice(&(code as u32).to_le_bytes());
        req[4..].copy_from_slice(&stream.to_le_bytes());
        assert_eq!(self.control(&req), 0x8000, "{code:?} on stream {stream}");
    }

    fn set_params(&mut self, stream: u32) {
        let mut req = [0u8; 24];
        req[..4].copy_from_slice(&(RequestCode::PcmSetParams as u32).to_le_bytes());
        req[4..8].copy_from_slice(&stream.to_le_bytes());
        req[8..12].copy_from_slice(&PERIOD.to_le_bytes());
        req[12..16].copy_from_slice(&PERIOD.to_le_bytes());
        req[20] = 6;
        req[21] = Format::Float64.code();
        req[22] = vsound::constants::rate_code(384_000).unwrap();
        assert_eq!(self.control(&req), 0x8000, "SET_PARAMS on stream {stream}");
    }

    /// tx chain `2i`: header + PCM, then the status; rx chain `2i`: the
    /// header, then PCM + status writable.
    fn layout_buffers(&mut self) {
        let m = self.mem.memory();
        let stride = u64::from(PERIOD).next_multiple_of(0x1000) + 0x1000;
        for i in 0..MESSAGES {
            let tx = 0x20_0000 + u64::from(i) * stride;
            m.write_slice(&0u32.to_le_bytes(), GuestAddress(tx))
                .unwrap();
            self.tx_ring.write_chain(
                &self.mem,
                2 * i,
                &[(tx, 4 + PERIOD, false), (tx + stride - 0x800, 8, true)],
            );
            let rx = 0x20_0000 + u64::from(MESSAGES + i) * stride;
            m.write_slice(&1u32.to_le_bytes(), GuestAddress(rx))
                .unwrap();
            self.rx_ring.write_chain(
                &self.mem,
                2 * i,
                &[(rx, 4, false), (rx + 0x100, PERIOD + 8, true)],
            );
        }
    }

    fn queue(&mut self, dir: QueueIndex, head: u16) {
        let (ring, q) = match dir {
            QueueIndex::Tx => (&mut self.tx_ring, &self.tx),
            _ => (&mut self.rx_ring, &self.rx),
        };
        ring.publish(&self.mem, head);
        while let Some(pass) = q.gate().enter() {
            let Some(chain) = q.pop(&pass) else {
                break;
            };
            self.dev.handle_io(dir, &pass, chain);
        }
    }

    /// Serves completions (re-queueing each buffer) until both streams have
    /// completed `n` more periods. Does not allocate.
    fn run_periods(&mut self, n: u64) {
        let (tx0, rx0) = (
            self.tx.completed.load(Ordering::Relaxed),
            self.rx.completed.load(Ordering::Relaxed),
        );
        let deadline = Instant::now() + Duration::from_millis(600 * n + 5000);
        loop {
            while let Some((head, _)) = self.tx_ring.next_used(&self.mem) {
                self.queue(QueueIndex::Tx, head);
            }
            while let Some((head, len)) = self.rx_ring.next_used(&self.mem) {
                assert_eq!(len, PERIOD + 8);
                self.queue(QueueIndex::Rx, head);
            }
            let tx = self.tx.completed.load(Ordering::Relaxed) - tx0;
            let rx = self.rx.completed.load(Ordering::Relaxed) - rx0;
            if tx >= n && rx >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stalled: tx {tx}, rx {rx} of {n}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// (allocations, bytes) of the workers and this thread in `counted`.
fn hot_path(counted: &[(i32, String, u64, u64)], me: i32) -> (u64, u64) {
    counted
        .iter()
        .filter(|(tid, name, _, _)| {
            *tid == me || (name.starts_with("vsound-s") || name == "vsound-reactor")
        })
        .fold((0, 0), |(n, b), (_, _, n2, b2)| (n + n2, b + b2))
}

fn print(what: &str, counted: &[(i32, String, u64, u64)]) {
    eprintln!("allocations {what}:");
    for (tid, name, n, bytes) in counted {
        eprintln!("  tid {tid} {name:<16} {n:>6} allocations, {bytes:>9} bytes");
    }
}

#[test]
fn workers_moving_8_mib_messages_allocate_no_more_than_their_64_kib_buffer() {
    let config = Config::from_toml(
        "alloc_big_messages.rs",
        &["output", "input"].iter().fold(
            "[devices.null0]\nkind = \"null\"\n".to_owned(),
            |toml, dir| {
                toml + &format!(
                    "\n[[streams]]\ndirection = \"{dir}\"\ndevice = \"null0\"\n\
                     formats = [\"FLOAT64\"]\nrates = [384000]\n\
                     channels = {{ min = 6, max = 6 }}\n"
                )
            },
        ),
    )
    .unwrap();
    let state = DaemonState::new(&config).unwrap();
    let dev = SoundDevice::new(&config, &state.devices).unwrap();
    let mut g = Guest::new(dev.clone());
    g.layout_buffers();
    for stream in [0, 1] {
        g.set_params(stream);
        g.pcm(RequestCode::PcmPrepare, stream);
    }
    // The workers open their endpoints after PREPARE (not counted).
    std::thread::sleep(Duration::from_millis(100));

    // The counter sees an allocation on this thread.
    COUNTING.store(true, Ordering::SeqCst);
    let probe = std::hint::black_box(vec![0u8; 100]);
    COUNTING.store(false, Ordering::SeqCst);
    drop(probe);
    let me = gettid();
    assert!(
        counts()
            .iter()
            .any(|&(tid, _, n, bytes)| tid == me && n == 1 && bytes == 100),
        "the counting allocator missed a probe allocation: {:?}",
        counts()
    );
    reset_counts();

    // From the first message on: queued, started, moved, completed.
    COUNTING.store(true, Ordering::SeqCst);
    for i in 0..MESSAGES {
        g.queue(QueueIndex::Tx, 2 * i);
        g.queue(QueueIndex::Rx, 2 * i);
    }
    let started = Instant::now();
    g.pcm(RequestCode::PcmStart, 0);
    g.pcm(RequestCode::PcmStart, 1);
    g.run_periods(WARMUP);
    COUNTING.store(false, Ordering::SeqCst);
    let first = counts();
    reset_counts();

    COUNTING.store(true, Ordering::SeqCst);
    g.run_periods(MEASURED);
    COUNTING.store(false, Ordering::SeqCst);
    let steady = counts();
    eprintln!(
        "{} periods of {PERIOD} bytes per stream in {:?}",
        WARMUP + MEASURED,
        started.elapsed()
    );
    print("from START over the first period (and the intake)", &first);
    print(&format!("over the next {MEASURED} periods"), &steady);
    assert_eq!(OVERFLOW.load(Ordering::Relaxed), 0);

    let (_, bytes) = hot_path(&first, me);
    assert!(
        bytes < 64 << 10,
        "the workers and the intake allocated {bytes} bytes for the first \
         {PERIOD}-byte messages: {first:?}"
    );
    let (n, bytes) = hot_path(&steady, me);
    assert_eq!(
        (n, bytes),
        (0, 0),
        "allocations on the workers or the intake: {steady:?}"
    );

    g.pcm(RequestCode::PcmStop, 0);
    g.pcm(RequestCode::PcmStop, 1);
    g.pcm(RequestCode::PcmRelease, 0);
    g.pcm(RequestCode::PcmRelease, 1);
    dev.shutdown();
}
