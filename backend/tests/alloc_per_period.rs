//! No heap allocation per period in steady state (docs/design.md, "Time": no
//! allocation per period; ARCHITECTURE.md names where it is enforced).
//!
//! The device core runs in-process from the default configuration (one
//! output and one input stream on `null`), with its real worker threads.
//! This thread plays the guest and the vhost-user queue thread: it queues
//! buffers on rings in local memory and hands each new chain to
//! `SoundDevice::handle_io`, as the queue thread does. After a warm-up, a
//! counting global allocator attributes every allocation to its thread (by
//! tid) over 50 periods of both streams: the workers and the intake must
//! make none.

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

/// The counter is one for the process: the tests take turns (another
/// test's setup, a new lane thread's first allocation, would be counted in
/// this one's window).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- the guest -------------------------------------------------------------

const PERIOD: u32 = 1920;
const PERIODS_PER_BUFFER: u16 = 4;
const QUEUE_SIZE: u16 = 64;
/// Periods counted, per stream.
const MEASURED: u64 = 50;
/// Periods run first, per stream.
const WARMUP: u64 = 20;

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
        let mem = support::memory(16 << 20);
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

    /// Sends a control request and returns the response status.
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
        let (head, len) = self
            .ctl_ring
            .next_used(&self.mem)
            .expect("answered at once");
        assert_eq!((head, len), (0, 4));
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
        req[8..12].copy_from_slice(&(u32::from(PERIODS_PER_BUFFER) * PERIOD).to_le_bytes());
        req[12..16].copy_from_slice(&PERIOD.to_le_bytes());
        req[20] = 2; // channels
        req[21] = Format::S16.code();
        req[22] = vsound::constants::rate_code(48_000).unwrap();
        assert_eq!(self.control(&req), 0x8000, "SET_PARAMS on stream {stream}");
    }

    /// Lays out the period buffers: tx chain `2i` is header + PCM, then the
    /// status; rx chain `2i` is the header, then PCM + status writable.
    fn layout_buffers(&mut self) {
        let m = self.mem.memory();
        for i in 0..PERIODS_PER_BUFFER {
            let tx = 0x20_0000 + u64::from(i) * 0x1_0000;
            m.write_slice(&0u32.to_le_bytes(), GuestAddress(tx))
                .unwrap(); // stream 0
            self.tx_ring.write_chain(
                &self.mem,
                2 * i,
                &[(tx, 4 + PERIOD, false), (tx + 0x8000, 8, true)],
            );
            let rx = 0x40_0000 + u64::from(i) * 0x1_0000;
            m.write_slice(&1u32.to_le_bytes(), GuestAddress(rx))
                .unwrap(); // stream 1
            self.rx_ring.write_chain(
                &self.mem,
                2 * i,
                &[(rx, 4, false), (rx + 0x1000, PERIOD + 8, true)],
            );
        }
    }

    /// Makes `head` available and runs the queue thread's intake on it.
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
        let deadline = Instant::now() + Duration::from_millis(10 * n + 2000);
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

/// The allocations counted since the last reset on the intake (this
/// thread) and the stream lanes, printed.
fn hot_path_allocations(what: &str, me: i32) -> Vec<(i32, String, u64, u64)> {
    let counted = counts();
    eprintln!("allocations {what}:");
    for (tid, name, n, bytes) in &counted {
        eprintln!("  tid {tid} {name:<16} {n:>6} allocations, {bytes:>8} bytes");
    }
    assert_eq!(OVERFLOW.load(Ordering::Relaxed), 0);
    counted
        .into_iter()
        .filter(|(tid, name, _, _)| {
            *tid == me || (name.starts_with("vsound-s") || name == "vsound-reactor")
        })
        .collect()
}

/// After a RELEASE and a PREPARE, from the endpoints' open on, through the
/// guest's buffers queued again, START and 50 periods, nothing is allocated
/// on the intake or the lanes: RELEASE leaves the stream a list with room for the guest's
/// buffers, so queueing them again does not grow it under the stream lock
/// on the queue thread (review B11: it did, from an empty list).
#[test]
fn periods_after_a_release_prepare_start_cycle_allocate_nothing() {
    let _turn = one_at_a_time();
    let config = Config::default_config().unwrap();
    let state = DaemonState::new(&config).unwrap();
    let dev = SoundDevice::new(&config, &state.devices).unwrap();
    let mut g = Guest::new(dev.clone());
    g.layout_buffers();
    let me = gettid();
    for round in 0..2 {
        for stream in [0, 1] {
            // Round 1: PREPARE straight after RELEASE (the parameters stay).
            if round == 0 {
                g.set_params(stream);
            }
            g.pcm(RequestCode::PcmPrepare, stream);
        }
        if round == 1 {
            // Opening an endpoint makes it (a `Box`, on the lane, once per
            // PREPARE, not per period): counted from once they are open.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !dev.streams.iter().all(|s| s.endpoint.is_attached()) {
                assert!(
                    Instant::now() < deadline,
                    "endpoints not opened after PREPARE"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            reset_counts();
            COUNTING.store(true, Ordering::SeqCst);
        }
        for i in 0..PERIODS_PER_BUFFER {
            g.queue(QueueIndex::Tx, 2 * i);
            g.queue(QueueIndex::Rx, 2 * i);
        }
        g.pcm(RequestCode::PcmStart, 0);
        g.pcm(RequestCode::PcmStart, 1);
        if round == 0 {
            g.run_periods(WARMUP);
            for stream in [0, 1] {
                g.pcm(RequestCode::PcmStop, stream);
                g.pcm(RequestCode::PcmRelease, stream);
            }
            // The buffers RELEASE returned are the guest's again.
            while g.tx_ring.next_used(&g.mem).is_some() {}
            while g.rx_ring.next_used(&g.mem).is_some() {}
            continue;
        }
        g.run_periods(MEASURED);
        COUNTING.store(false, Ordering::SeqCst);
    }
    let on_hot_path = hot_path_allocations("after a RELEASE/PREPARE/START cycle", me);
    assert!(
        on_hot_path.is_empty(),
        "allocations on the stream workers or the intake after RELEASE/PREPARE/START: {on_hot_path:?}"
    );
    for stream in [0, 1] {
        g.pcm(RequestCode::PcmStop, stream);
        g.pcm(RequestCode::PcmRelease, stream);
    }
    dev.shutdown();
}

#[test]
fn steady_state_periods_allocate_nothing() {
    let _turn = one_at_a_time();
    let config = Config::default_config().unwrap();
    let state = DaemonState::new(&config).unwrap();
    let dev = SoundDevice::new(&config, &state.devices).unwrap();
    let mut g = Guest::new(dev.clone());
    g.layout_buffers();
    for stream in [0, 1] {
        g.set_params(stream);
        g.pcm(RequestCode::PcmPrepare, stream);
    }
    for i in 0..PERIODS_PER_BUFFER {
        g.queue(QueueIndex::Tx, 2 * i);
        g.queue(QueueIndex::Rx, 2 * i);
    }
    g.pcm(RequestCode::PcmStart, 0);
    g.pcm(RequestCode::PcmStart, 1);

    g.run_periods(WARMUP);

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

    COUNTING.store(true, Ordering::SeqCst);
    let started = Instant::now();
    g.run_periods(MEASURED);
    COUNTING.store(false, Ordering::SeqCst);
    let elapsed = started.elapsed();

    let counted = counts();
    eprintln!("allocations over {MEASURED} periods per stream ({elapsed:?}):");
    for (tid, name, n, bytes) in &counted {
        eprintln!("  tid {tid} {name:<16} {n:>6} allocations, {bytes:>8} bytes");
    }
    let on_hot_path: Vec<_> = counted
        .iter()
        .filter(|(tid, name, _, _)| {
            *tid == me || (name.starts_with("vsound-s") || name == "vsound-reactor")
        })
        .collect();
    assert_eq!(OVERFLOW.load(Ordering::Relaxed), 0);
    assert!(
        on_hot_path.is_empty(),
        "allocations on the stream workers or the intake: {on_hot_path:?}"
    );

    g.pcm(RequestCode::PcmStop, 0);
    g.pcm(RequestCode::PcmStop, 1);
    g.pcm(RequestCode::PcmRelease, 0);
    g.pcm(RequestCode::PcmRelease, 1);
    dev.shutdown();
}
