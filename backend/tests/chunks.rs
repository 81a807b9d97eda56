//! Messages larger than a worker's copy buffer move in chunks of whole
//! frames, through the device core's real worker threads, bit-exact, with
//! the statuses one copy would give; a ring that stops between two chunks
//! of a message parks it where it got to, and it goes on from there.
//!
//! The core runs in-process (as in `alloc_per_period.rs`): this thread is
//! the guest and the queue thread, on rings in local memory. The host
//! device is a scripted one: its sink records every byte and call, its
//! source produces a known byte stream, and either can fail, come back
//! short, or stop the stream's ring during a given call (as a VM pause
//! would, between two host calls of the worker: it holds no ring pass in
//! a host call, so the stop returns at once).
//!
//! Streams are FLOAT64, 6 channels, 384 kHz: 48-byte frames, which do not
//! divide the 64 KiB copy buffer (chunks of 65,520 bytes), and 18.4 MB/s,
//! so a 4 MiB message lasts 0.23 s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::{GuestRing, LocalQueue};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vsound::config::Config;
use vsound::constants::{QueueIndex, RequestCode};
use vsound::control::handle_control;
use vsound::device::SoundDevice;
use vsound::hotplug::ManagedDevice;
use vsound::pacer::now_ns;
use vsound::queue::{Mem, Virtqueue};
use vsound::worker::SCRATCH_BYTES;
use vsound_devices::{
    CaptureSource, Clock, DeviceError, Format, HostDevice, PlaybackSink, StreamDirection,
    StreamParams,
};

const FRAME: usize = 48;
/// The largest chunk: whole frames in the copy buffer.
const CHUNK: usize = SCRATCH_BYTES - SCRATCH_BYTES % FRAME;
/// At least 4 MiB, in whole frames.
const BIG: usize = (4 << 20) / FRAME * FRAME + FRAME;
const QUEUE_SIZE: u16 = 512;
/// Guest PCM buffers are cut into descriptors of this many bytes (odd, so
/// that descriptor, frame and chunk boundaries all differ).
const PIECE: usize = 40_009;
const TIMEOUT: Duration = Duration::from_secs(20);
const STATUS_OK: u32 = 0x8000;
const STATUS_IO_ERR: u32 = 0x8003;

// ---- the scripted host device ----------------------------------------------

/// What the device does at a given call (1-based) of its sink or source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    /// Fail the call (an I/O error, not "gone").
    Fail,
    /// Capture only: fill half the chunk (whole frames), the rest silence.
    Short,
    /// Stop the stream's ring during the call, then do it normally.
    StopRing,
}

/// The byte the source produces at position `p` of its stream.
fn source_byte(p: usize) -> u8 {
    (p.wrapping_mul(131) ^ (p >> 9)) as u8
}

#[derive(Default)]
struct Tape {
    played: Mutex<Vec<u8>>,
    /// Length of every sink write, failed ones too.
    writes: Mutex<Vec<usize>>,
    /// `(buf.len(), more)` of every source read.
    reads: Mutex<Vec<(usize, usize)>>,
    /// Bytes the source produced so far.
    produced: AtomicUsize,
    script: Mutex<Vec<(usize, Act)>>,
    ring: OnceLock<Arc<LocalQueue>>,
}

impl Tape {
    fn act(&self, call: usize) -> Option<Act> {
        let act = self
            .script
            .lock()
            .unwrap()
            .iter()
            .find(|(n, _)| *n == call)
            .map(|&(_, a)| a);
        if act == Some(Act::StopRing) {
            let ring = self.ring.get().expect("the ring to stop");
            assert!(ring.gate().stop(now_ns(), Duration::from_secs(1)));
        }
        act
    }
    fn writes(&self) -> Vec<usize> {
        self.writes.lock().unwrap().clone()
    }
    fn reads(&self) -> Vec<(usize, usize)> {
        self.reads.lock().unwrap().clone()
    }
}

struct TestDevice(Arc<Tape>);

struct Sink(Arc<Tape>);
struct Source(Arc<Tape>, Format);

impl HostDevice for TestDevice {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn is_attached(&self) -> bool {
        true
    }
    fn check_params(&self, _: StreamDirection, _: &StreamParams) -> Result<(), DeviceError> {
        Ok(())
    }
    fn open_playback(&self, _: &StreamParams) -> Result<Box<dyn PlaybackSink>, DeviceError> {
        Ok(Box::new(Sink(self.0.clone())))
    }
    fn open_capture(&self, p: &StreamParams) -> Result<Box<dyn CaptureSource>, DeviceError> {
        Ok(Box::new(Source(self.0.clone(), p.format)))
    }
}

impl PlaybackSink for Sink {
    fn clock(&self) -> Clock {
        Clock::Daemon
    }
    fn write(&mut self, frames: &[u8]) -> Result<(), DeviceError> {
        let call = {
            let mut w = self.0.writes.lock().unwrap();
            w.push(frames.len());
            w.len()
        };
        if self.0.act(call) == Some(Act::Fail) {
            return Err(DeviceError::Io(std::io::Error::other("scripted")));
        }
        self.0.played.lock().unwrap().extend_from_slice(frames);
        Ok(())
    }
    fn latency_bytes(&self) -> u32 {
        0
    }
}

impl CaptureSource for Source {
    fn clock(&self) -> Clock {
        Clock::Daemon
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.read_part(buf, 0).map(|_| ())
    }
    fn read_part(&mut self, buf: &mut [u8], more: usize) -> Result<usize, DeviceError> {
        let call = {
            let mut r = self.0.reads.lock().unwrap();
            r.push((buf.len(), more));
            r.len()
        };
        let act = self.0.act(call);
        if act == Some(Act::Fail) {
            self.1.fill_silence(buf);
            return Err(DeviceError::Io(std::io::Error::other("scripted")));
        }
        let n = match act {
            Some(Act::Short) => buf.len() / 2 / FRAME * FRAME,
            _ => buf.len(),
        };
        let at = self.0.produced.fetch_add(n, Ordering::SeqCst);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = source_byte(at + i);
        }
        self.1.fill_silence(&mut buf[n..]);
        Ok(n)
    }
    fn latency_bytes(&self) -> u32 {
        0
    }
}

// ---- the guest ---------------------------------------------------------------

/// A message placed in guest memory: its head, and where its PCM pieces
/// and status are.
struct Placed {
    head: u16,
    pieces: Vec<(u64, usize)>,
    status: u64,
}

struct Guest {
    mem: GuestMemoryAtomic<Mem>,
    dev: Arc<SoundDevice>,
    tape: Arc<Tape>,
    ctl_ring: GuestRing,
    ctl: Arc<LocalQueue>,
    ring: GuestRing,
    queue: Arc<LocalQueue>,
    qi: QueueIndex,
    stream: u32,
    next_desc: u16,
    next_addr: u64,
}

const OUTPUT: u32 = 0;
const INPUT: u32 = 1;

impl Guest {
    /// A device with one output and one input stream on the scripted
    /// device; the guest drives `stream`.
    fn new(stream: u32) -> Guest {
        let table = |dir: &str| {
            format!(
                "[[streams]]\ndirection = \"{dir}\"\ndevice = \"t\"\n\
                 formats = [\"FLOAT64\"]\nrates = [384000]\n\
                 channels = {{ min = 6, max = 6 }}\n"
            )
        };
        // The config names a null device; the streams get the scripted one.
        let toml = format!(
            "[devices.t]\nkind = \"null\"\n\n{}\n{}",
            table("output"),
            table("input")
        );
        let config = Config::from_toml("chunks.rs", &toml).unwrap();
        let tape = Arc::new(Tape::default());
        let devices = [ManagedDevice::new(
            0,
            "t".into(),
            Arc::new(TestDevice(tape.clone())),
        )];
        let dev = SoundDevice::new(&config, &devices).unwrap();
        let mem = support::memory(64 << 20);
        let ctl_ring = GuestRing::new(&mem, 0, 64);
        let ev_ring = GuestRing::new(&mem, 0x1_0000, 64);
        let tx_ring = GuestRing::new(&mem, 0x2_0000, QUEUE_SIZE);
        let rx_ring = GuestRing::new(&mem, 0x4_0000, QUEUE_SIZE);
        let ctl = Arc::new(LocalQueue::new(&ctl_ring, &mem));
        let tx = Arc::new(LocalQueue::new(&tx_ring, &mem));
        let rx = Arc::new(LocalQueue::new(&rx_ring, &mem));
        dev.set_queue(QueueIndex::Control, ctl.clone());
        dev.set_queue(QueueIndex::Event, Arc::new(LocalQueue::new(&ev_ring, &mem)));
        dev.set_queue(QueueIndex::Tx, tx.clone());
        dev.set_queue(QueueIndex::Rx, rx.clone());
        let (ring, queue, qi) = match stream {
            OUTPUT => (tx_ring, tx, QueueIndex::Tx),
            _ => (rx_ring, rx, QueueIndex::Rx),
        };
        let _ = tape.ring.set(queue.clone());
        Guest {
            mem,
            dev,
            tape,
            ctl_ring,
            ctl,
            ring,
            queue,
            qi,
            stream,
            next_desc: 0,
            next_addr: 0x20_0000,
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

    fn pcm(&mut self, code: RequestCode) {
        let mut req = [0u8; 8];
        req[..4].copy_from_slice(&(code as u32).to_le_bytes());
        req[4..].copy_from_slice(&self.stream.to_le_bytes());
        assert_eq!(self.control(&req), STATUS_OK, "{code:?}");
    }

    /// SET_PARAMS (one period of `period` bytes per buffer) and PREPARE.
    fn prepare(&mut self, period: usize) {
        let mut req = [0u8; 24];
        req[..4].copy_from_slice(&(RequestCode::PcmSetParams as u32).to_le_bytes());
        req[4..8].copy_from_slice(&self.stream.to_le_bytes());
        req[8..12].copy_from_slice(&(period as u32).to_le_bytes());
        req[12..16].copy_from_slice(&(period as u32).to_le_bytes());
        req[20] = 6;
        req[21] = Format::Float64.code();
        req[22] = vsound::constants::rate_code(384_000).unwrap();
        assert_eq!(self.control(&req), STATUS_OK, "SET_PARAMS");
        self.pcm(RequestCode::PcmPrepare);
    }

    /// Places a message: the header, `len` PCM bytes in pieces of [`PIECE`]
    /// (`pcm` for tx, writable for rx), the status; and queues it.
    fn queue_message(&mut self, len: usize, pcm: Option<&[u8]>) -> Placed {
        let m = self.mem.memory();
        let head = self.next_desc;
        let hdr = self.next_addr;
        m.write_slice(&self.stream.to_le_bytes(), GuestAddress(hdr))
            .unwrap();
        let mut parts = vec![(hdr, 4u32, false)];
        let mut pieces = Vec::new();
        let mut addr = hdr + 0x100;
        let mut at = 0;
        while at < len {
            let n = PIECE.min(len - at);
            match pcm {
                Some(p) => m.write_slice(&p[at..at + n], GuestAddress(addr)).unwrap(),
                None => m.write_slice(&vec![0xaa; n], GuestAddress(addr)).unwrap(),
            }
            parts.push((addr, n as u32, pcm.is_none()));
            pieces.push((addr, n));
            // Gaps between the pieces: a byte written off place shows.
            addr += n as u64 + 0x40;
            at += n;
        }
        let status = addr;
        m.write_slice(&[0xee; 8], GuestAddress(status)).unwrap();
        parts.push((status, 8, true));
        self.ring.write_chain(&self.mem, head, &parts);
        self.next_desc += parts.len() as u16;
        assert!(self.next_desc <= QUEUE_SIZE, "out of descriptors");
        self.next_addr = (addr + 8 + 0x1000) & !0xfff;
        assert!(self.next_addr < 60 << 20, "out of guest memory");
        self.ring.publish(&self.mem, head);
        while let Some(pass) = self.queue.gate().enter() {
            let Some(chain) = self.queue.pop(&pass) else {
                break;
            };
            self.dev.handle_io(self.qi, &pass, chain);
        }
        Placed {
            head,
            pieces,
            status,
        }
    }

    /// The next `n` completions `(head, used length)`, in order.
    fn wait_used(&mut self, n: usize) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + TIMEOUT;
        let mut got = Vec::new();
        while got.len() < n {
            match self.ring.next_used(&self.mem) {
                Some(u) => got.push(u),
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "{} of {n} completions",
                        got.len()
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        got
    }

    /// No completion within `d`.
    fn none_used_for(&mut self, d: Duration) {
        std::thread::sleep(d);
        assert_eq!(self.ring.next_used(&self.mem), None, "a completion came");
    }

    fn status(&self, p: &Placed) -> u32 {
        u32::from_le(self.mem.memory().read_obj(GuestAddress(p.status)).unwrap())
    }

    fn pcm_of(&self, p: &Placed) -> Vec<u8> {
        let m = self.mem.memory();
        let mut out = Vec::new();
        for &(addr, n) in &p.pieces {
            let mut b = vec![0; n];
            m.read_slice(&mut b, GuestAddress(addr)).unwrap();
            out.extend_from_slice(&b);
        }
        out
    }

    /// Starts the stopped ring again, as a resumed VM does.
    fn resume_ring(&self) {
        let stopped_at = self.queue.gate().stopped_at().expect("the ring is stopped");
        self.dev.start_ring(self.qi, Some(stopped_at));
    }

    fn finish(mut self) {
        self.pcm(RequestCode::PcmStop);
        self.pcm(RequestCode::PcmRelease);
        self.dev.shutdown();
    }
}

/// Noise that differs from message to message.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn source_bytes(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(source_byte).collect()
}

/// The chunk sizes a message of `len` bytes moves in.
fn chunks_of(len: usize) -> Vec<usize> {
    let mut out = vec![CHUNK; len / CHUNK];
    if len % CHUNK != 0 {
        out.push(len % CHUNK);
    }
    out
}

// ---- playback ----------------------------------------------------------------

/// Three 4 MiB messages and one that does not end on a frame reach the
/// sink bit-exact, in order, each in chunks of whole frames that fit the
/// copy buffer (one call per chunk), and complete OK.
#[test]
fn messages_of_4_mib_play_bit_exact_in_chunks_of_whole_frames() {
    let mut g = Guest::new(OUTPUT);
    g.prepare(BIG);
    let lens = [BIG, BIG, BIG, 200_003];
    let data: Vec<Vec<u8>> = lens.iter().zip(1..).map(|(&n, s)| noise(n, s)).collect();
    let placed: Vec<Placed> = data
        .iter()
        .map(|d| g.queue_message(d.len(), Some(d)))
        .collect();
    g.pcm(RequestCode::PcmStart);
    let done = g.wait_used(lens.len());
    for (p, (head, used)) in placed.iter().zip(&done) {
        assert_eq!((*head, *used), (p.head, 8), "tx completions in order");
        assert_eq!(g.status(p), STATUS_OK);
    }
    let played = g.tape.played.lock().unwrap().clone();
    assert!(
        played == data.concat(),
        "the sink did not get the guest's bytes"
    );
    let want: Vec<usize> = lens.iter().flat_map(|&n| chunks_of(n)).collect();
    assert_eq!(g.tape.writes(), want, "one write per chunk of whole frames");
    assert!(want.iter().all(|&n| n <= SCRATCH_BYTES));
    assert_ne!(
        SCRATCH_BYTES % FRAME,
        0,
        "the frame divides the copy buffer"
    );
    g.finish();
}

/// A tx message whose ring stops between two chunks: no more of it goes to
/// the sink while the ring is stopped, and it does not complete; once the
/// ring runs again, the rest goes, once, before it completes OK.
#[test]
fn a_tx_message_cut_by_a_ring_stop_plays_the_rest_once_the_ring_runs() {
    let mut g = Guest::new(OUTPUT);
    let len = 16 * CHUNK + 960;
    g.prepare(len);
    g.tape.script.lock().unwrap().push((3, Act::StopRing));
    let data = noise(len, 7);
    let p = g.queue_message(len, Some(&data));
    g.pcm(RequestCode::PcmStart);
    let deadline = Instant::now() + TIMEOUT;
    while g.tape.writes().len() < 3 {
        assert!(Instant::now() < deadline, "the third write never came");
        std::thread::sleep(Duration::from_millis(1));
    }
    g.none_used_for(Duration::from_millis(150));
    assert_eq!(
        g.tape.writes().len(),
        3,
        "written while the ring was stopped"
    );
    g.resume_ring();
    let done = g.wait_used(1);
    assert_eq!(done, [(p.head, 8)]);
    assert_eq!(g.status(&p), STATUS_OK);
    assert!(
        *g.tape.played.lock().unwrap() == data,
        "not the message, once"
    );
    assert_eq!(g.tape.writes(), chunks_of(len));
    g.finish();
}

/// A sink that fails in the middle of a message: the message is IO_ERR, the
/// rest of it is not handed over; the next message plays whole and OK.
#[test]
fn a_tx_message_whose_sink_fails_mid_way_is_io_err_and_its_rest_not_sent() {
    let mut g = Guest::new(OUTPUT);
    let len = 5 * CHUNK;
    g.prepare(len);
    g.tape.script.lock().unwrap().push((2, Act::Fail));
    let (a, b) = (noise(len, 8), noise(len, 9));
    let pa = g.queue_message(len, Some(&a));
    let pb = g.queue_message(len, Some(&b));
    g.pcm(RequestCode::PcmStart);
    let done = g.wait_used(2);
    assert_eq!(done, [(pa.head, 8), (pb.head, 8)]);
    assert_eq!(
        g.status(&pa),
        STATUS_IO_ERR,
        "frames that reached no device"
    );
    assert_eq!(g.status(&pb), STATUS_OK);
    let played = g.tape.played.lock().unwrap().clone();
    assert!(played[..CHUNK] == a[..CHUNK] && played[CHUNK..] == b[..]);
    let mut want = vec![CHUNK, CHUNK];
    want.extend(chunks_of(len));
    assert_eq!(g.tape.writes(), want, "the failed message's rest was sent");
    g.finish();
}

// ---- capture -----------------------------------------------------------------

/// Three 4 MiB rx messages get the source's bytes bit-exact, read in chunks
/// of whole frames that fit the copy buffer, each told how much of the
/// message is still to come; they complete OK with all their bytes used.
#[test]
fn messages_of_4_mib_record_bit_exact_in_chunks_of_whole_frames() {
    let mut g = Guest::new(INPUT);
    g.prepare(BIG);
    let placed: Vec<Placed> = (0..3).map(|_| g.queue_message(BIG, None)).collect();
    g.pcm(RequestCode::PcmStart);
    let done = g.wait_used(3);
    for (k, (p, (head, used))) in placed.iter().zip(&done).enumerate() {
        assert_eq!((*head, *used), (p.head, BIG as u32 + 8));
        assert_eq!(g.status(p), STATUS_OK);
        assert!(
            g.pcm_of(p) == source_bytes(k * BIG, BIG),
            "rx message {k} is not what the source produced"
        );
    }
    let mut want = Vec::new();
    for _ in 0..3 {
        let mut left = BIG;
        for n in chunks_of(BIG) {
            left -= n;
            want.push((n, left));
        }
    }
    assert_eq!(g.tape.reads(), want, "one read per chunk, `more` the rest");
    g.finish();
}

/// An rx message whose ring stops between two chunks (after the device
/// call of chunk `at`): nothing more is read or written while it is
/// stopped, and it does not complete; once the ring runs again it goes on
/// from that chunk (not read again) and completes OK, bit-exact.
fn an_rx_message_cut_by_a_ring_stop_goes_on_where_it_stopped(at: usize) {
    let mut g = Guest::new(INPUT);
    let len = 16 * CHUNK + 96;
    let chunks = chunks_of(len).len();
    assert!(at <= chunks);
    g.prepare(len);
    g.tape.script.lock().unwrap().push((at, Act::StopRing));
    let p = g.queue_message(len, None);
    g.pcm(RequestCode::PcmStart);
    let deadline = Instant::now() + TIMEOUT;
    while g.tape.reads().len() < at {
        assert!(Instant::now() < deadline, "read {at} never came");
        std::thread::sleep(Duration::from_millis(1));
    }
    g.none_used_for(Duration::from_millis(150));
    assert_eq!(g.tape.reads().len(), at, "read while the ring was stopped");
    // What was in guest memory when the ring stopped: the chunks before.
    let before = g.pcm_of(&p);
    let written = (at - 1) * CHUNK;
    assert!(before[..written] == source_bytes(0, written)[..]);
    assert!(
        before[written..].iter().all(|&b| b == 0xaa),
        "written while stopped"
    );
    g.resume_ring();
    let done = g.wait_used(1);
    assert_eq!(done, [(p.head, len as u32 + 8)]);
    assert_eq!(g.status(&p), STATUS_OK);
    assert!(
        g.pcm_of(&p) == source_bytes(0, len),
        "not the source's bytes"
    );
    assert_eq!(g.tape.reads().len(), chunks, "a chunk read twice");
    g.finish();
}

#[test]
fn an_rx_message_cut_by_a_ring_stop_mid_way_goes_on_where_it_stopped() {
    an_rx_message_cut_by_a_ring_stop_goes_on_where_it_stopped(5);
}

#[test]
fn an_rx_message_cut_by_a_ring_stop_at_its_last_chunk_goes_on_where_it_stopped() {
    an_rx_message_cut_by_a_ring_stop_goes_on_where_it_stopped(17);
}

/// A source that fails in the middle of a message: the message is IO_ERR
/// and silence all through (the chunks before the failure too), as when one
/// read fails; the source is not asked for the rest; the next message is
/// recorded whole and OK.
#[test]
fn an_rx_message_whose_source_fails_mid_way_is_io_err_and_silence() {
    let mut g = Guest::new(INPUT);
    let len = 5 * CHUNK;
    g.prepare(len);
    g.tape.script.lock().unwrap().push((3, Act::Fail));
    let pa = g.queue_message(len, None);
    let pb = g.queue_message(len, None);
    g.pcm(RequestCode::PcmStart);
    let done = g.wait_used(2);
    assert_eq!(done, [(pa.head, len as u32 + 8), (pb.head, len as u32 + 8)]);
    assert_eq!(g.status(&pa), STATUS_IO_ERR);
    assert!(g.pcm_of(&pa).iter().all(|&b| b == 0), "not silence");
    assert_eq!(g.status(&pb), STATUS_OK);
    assert!(g.pcm_of(&pb) == source_bytes(2 * CHUNK, len));
    assert_eq!(g.tape.reads().len(), 3 + 5, "the source was asked for more");
    g.finish();
}

/// A source that comes back short in the middle of a message: the rest of
/// the message is silence, without asking the source again (as one read
/// ends with silence), and it completes OK.
#[test]
fn an_rx_message_whose_source_runs_dry_mid_way_is_silence_after_and_ok() {
    let mut g = Guest::new(INPUT);
    let len = 5 * CHUNK;
    g.prepare(len);
    g.tape.script.lock().unwrap().push((2, Act::Short));
    let p = g.queue_message(len, None);
    g.pcm(RequestCode::PcmStart);
    let done = g.wait_used(1);
    assert_eq!(done, [(p.head, len as u32 + 8)]);
    assert_eq!(g.status(&p), STATUS_OK);
    let got = g.pcm_of(&p);
    let filled = CHUNK + CHUNK / 2 / FRAME * FRAME;
    assert!(got[..filled] == source_bytes(0, filled)[..]);
    assert!(got[filled..].iter().all(|&b| b == 0), "not silence after");
    assert_eq!(g.tape.reads(), [(CHUNK, 4 * CHUNK), (CHUNK, 3 * CHUNK)]);
    g.finish();
}
