#![no_main]
//! The tx/rx queues: message chains over arbitrary descriptor layouts
//! (zero-length descriptors, readable after writable, indirect tables, a
//! `next` pointing anywhere, loops longer than the queue, descriptors
//! outside guest memory or of huge length) into a real `SoundDevice`
//! (default config, real stream workers on `null`), interleaved with
//! control requests that move the streams through their states, rings
//! stopped and started (a paused VM), host devices detached and attached,
//! and event buffers. Some chains bypass the device: `IoMessage::parse`,
//! then `read_pcm`/`write_pcm` at any offset, then `complete` (or
//! `io::refuse`).
//!
//! At the end of each input the rings run again, the streams are stopped
//! and released (which returns every buffer), and then:
//! - every chain made available came back exactly once (per head);
//! - a tx chain's used length is 0 or 8, an rx chain's is 0 or >= 8;
//! - the device wrote guest memory only inside device-writable descriptors
//!   (the arena and the indirect tables are compared byte by byte);
//! - nothing is left deferred, and `add_used` never failed.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vsound::constants::{Direction, QueueIndex, Status};
use vsound::io::{self, IoMessage};
use vsound::queue::Virtqueue;
use vsound::stream::PcmState;
use vsound_devices::Format;
use vsound_fuzz::*;

const SET_PARAMS: u32 = 0x0101;
const PREPARE: u32 = 0x0102;
const RELEASE: u32 = 0x0103;
const START: u32 = 0x0104;
const STOP: u32 = 0x0105;
const MAX_OPS: usize = 48;
/// Indices into the per-ring tables: tx, rx, event.
const TX: usize = 0;
const RX: usize = 1;
const EV: usize = 2;

static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();

/// The region compared after each input.
const CMP_START: u64 = ITAB;
const CMP_END: u64 = CTL_BUF;

struct Run<'a> {
    rig: &'a mut Rig,
    /// Times each head was made available, per ring.
    published: [Vec<u32>; 3],
    /// Heads whose used length is not checked (completed by this target
    /// with an arbitrary direction).
    any_len: [Vec<bool>; 3],
    desc_cursor: [u16; 3],
    itab_cursor: u64,
    /// Device-writable ranges laid out during this input.
    writable: Vec<(u64, u64)>,
    /// What the compared region must hold, but for writable ranges.
    expected: Vec<u8>,
}

fn ring_of(r: usize) -> usize {
    match r {
        TX => 2,
        RX => 3,
        _ => 1,
    }
}

fn qi_of(r: usize) -> QueueIndex {
    match r {
        TX => QueueIndex::Tx,
        RX => QueueIndex::Rx,
        _ => QueueIndex::Event,
    }
}

impl Run<'_> {
    /// Writes guest memory on the driver's behalf (kept in `expected`).
    fn guest_write(&mut self, addr: u64, bytes: &[u8]) {
        let m = self.rig.mem.memory();
        let _ = m.write_slice(bytes, GuestAddress(addr));
        for (i, b) in bytes.iter().enumerate() {
            let a = addr + i as u64;
            if (CMP_START..CMP_END).contains(&a) {
                self.expected[(a - CMP_START) as usize] = *b;
            }
        }
    }

    fn write_desc_table(&mut self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.guest_write(at, &d);
    }

    /// One buffer descriptor: (addr, len, flags).
    fn buffer(&mut self, inp: &mut Input<'_>, k: u8) -> (u64, u32, u16) {
        let write = k & 1 != 0;
        let mut len = if k & 0x40 != 0 {
            u32::from(inp.u16())
        } else {
            u32::from(inp.u8())
        };
        let addr = match (k >> 4) & 3 {
            3 => match k >> 6 {
                // Across the end of guest memory.
                0 => MEM_SIZE - u64::from(inp.u8()),
                // Not guest memory at all.
                1 => 0x1_0000_0000,
                2 => u64::MAX - u64::from(inp.u8()),
                // Huge.
                _ => {
                    len = 0x0400_0000 | u32::from(inp.u8());
                    ARENA
                }
            },
            _ => ARENA + u64::from(inp.u16()),
        };
        if write {
            self.writable.push((addr, u64::from(len)));
        }
        (addr, len, if write { F_WRITE } else { 0 })
    }

    /// An indirect table; returns its descriptor (addr, len, flags).
    fn indirect(&mut self, inp: &mut Input<'_>, mangle: bool) -> (u64, u32, u16) {
        let m = inp.u8() % 9;
        let at = self.itab_cursor;
        if at + 16 * 9 > ITAB + ITAB_LEN {
            return (ARENA, 0, F_INDIRECT);
        }
        self.itab_cursor += 16 * 9;
        for i in 0..m {
            let k = inp.u8();
            let (addr, len, mut flags) = self.buffer(inp, k);
            if k & 0x0e == 0x0e {
                // An indirect descriptor inside an indirect table.
                flags |= F_INDIRECT;
            }
            let next = if mangle {
                u16::from(inp.u8() % 10)
            } else {
                u16::from(i) + 1
            };
            if i + 1 < m || (mangle && k & 0x08 != 0) {
                flags |= F_NEXT;
            }
            self.write_desc_table(at + 16 * u64::from(i), addr, len, flags, next);
        }
        let len = if mangle && inp.u8() & 1 != 0 {
            u32::from(inp.u8())
        } else {
            16 * u32::from(m)
        };
        (at, len, F_INDIRECT)
    }

    /// Lays out one chain on ring `r` and makes it available; returns its
    /// head, or `None` when the ring's table is used up for this input.
    fn chain(&mut self, inp: &mut Input<'_>, r: usize) -> Option<u16> {
        let ring = ring_of(r);
        let size = self.rig.rings[ring].size;
        let hdr = inp.u8();
        let natural = hdr & 0x40 == 0 && r != EV;
        let mangle = hdr & 0x80 != 0;
        let n: u16 = if natural { 3 } else { 1 + u16::from(hdr % 8) };
        let head = self.desc_cursor[r];
        if head + n > size {
            return None;
        }
        self.desc_cursor[r] += n;
        let sel = inp.u8();
        let own = if r == TX { 0u32 } else { 1 };
        let stream_id = match sel % 8 {
            4 => 1 - own,
            5 => 2,
            6 => inp.u32(),
            _ => own,
        };
        let mut descs: Vec<(u64, u32, u16)> = Vec::new();
        if natural {
            // xfer header, PCM (readable for tx, writable for rx), status.
            let pcm = u32::from(inp.u16() % 0x4000);
            let base = ARENA + u64::from(inp.u16() % 0x8000);
            descs.push((base, 4, 0));
            let pcm_flags = if r == RX { F_WRITE } else { 0 };
            descs.push((base + 0x10, pcm, pcm_flags));
            if r == RX {
                self.writable.push((base + 0x10, u64::from(pcm)));
            }
            descs.push((base + 0x10 + u64::from(pcm) + 0x10, 8, F_WRITE));
            self.writable.push((base + 0x20 + u64::from(pcm), 8));
        } else {
            for _ in 0..n {
                let k = inp.u8();
                if k & 0x0e == 0x0e {
                    let d = self.indirect(inp, mangle);
                    descs.push(d);
                } else {
                    let d = self.buffer(inp, k);
                    descs.push(d);
                }
            }
        }
        // The stream id at the start of the first descriptor.
        if let Some(&(addr, len, flags)) = descs.first() {
            if flags & (F_WRITE | F_INDIRECT) == 0
                && len >= 4
                && (ARENA..ARENA + ARENA_LEN - 4).contains(&addr)
            {
                self.guest_write(addr, &stream_id.to_le_bytes());
            }
        }
        let table = self.rig.rings[ring].desc;
        for (i, &(addr, len, mut flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let next = if mangle { inp.u16() } else { head + i + 1 };
            if i + 1 < n || (mangle && next & 0x8000 != 0) {
                flags |= F_NEXT;
            }
            let next = if mangle { next & 0x7fff } else { next };
            self.write_desc_table(table + 16 * u64::from(head + i), addr, len, flags, next);
        }
        let mem = self.rig.mem.clone();
        self.rig.rings[ring].publish(&mem, head);
        self.published[r][usize::from(head)] += 1;
        Some(head)
    }

    /// A chain handled outside the device: parse, PCM access, completion.
    fn direct(&mut self, inp: &mut Input<'_>, r: usize, dir: Direction) {
        if self.chain(inp, r).is_none() {
            return;
        }
        let q = self.rig.queue(qi_of(r)).clone();
        let Some(pass) = q.gate().enter() else {
            // Stopped ring: it stays available, for the device later.
            return;
        };
        let Some(chain) = q.pop(&pass) else {
            return;
        };
        self.any_len[r][usize::from(chain.head_index())] = true;
        match IoMessage::parse(chain, dir, q.size()) {
            Ok((_stream, mut msg)) => {
                let mut buf = vec![0u8; 0];
                for _ in 0..inp.u8() % 4 {
                    let op = inp.u8();
                    let offset = if op & 0x80 != 0 {
                        inp.u32()
                    } else {
                        u32::from(inp.u16())
                    };
                    let len = usize::from(inp.u16() % 0x2000);
                    buf.resize(len, 0xab);
                    if op & 1 == 0 {
                        let _ = msg.read_pcm(offset, &mut buf);
                    } else {
                        let _ = msg.write_pcm(offset, &buf);
                    }
                }
                let status = [Status::Ok, Status::BadMsg, Status::NotSupp, Status::IoErr]
                    [usize::from(inp.u8() % 4)];
                let (latency, rx_bytes) = (inp.u32(), inp.u32());
                if inp.u8() & 1 != 0 {
                    msg.mark_failed();
                }
                let _ = (msg.payload(), msg.failed(), msg.head());
                msg.complete(q.as_ref(), &pass, dir, status, latency, rx_bytes);
            }
            Err(refused) => io::refuse(q.as_ref(), &pass, refused),
        }
    }

    fn set_params(&mut self, inp: &mut Input<'_>, stream: u32) -> u32 {
        let mut req = [0u8; 24];
        req[..4].copy_from_slice(&SET_PARAMS.to_le_bytes());
        req[4..8].copy_from_slice(&stream.to_le_bytes());
        let sel = inp.u8();
        if sel & 0x80 != 0 {
            req[8..].copy_from_slice(
                &inp.bytes(16)
                    .iter()
                    .copied()
                    .chain([0; 16])
                    .take(16)
                    .collect::<Vec<u8>>(),
            );
        } else {
            let format =
                [Format::S16, Format::S24, Format::S32, Format::Float][usize::from(sel % 4)];
            let rate = [44_100, 48_000, 96_000][usize::from((sel >> 2) % 3)];
            let channels = 1 + (sel >> 4) % 2;
            let frame = format.sample_bytes() * u32::from(channels);
            let period = frame * (1 + u32::from(inp.u8()) * 4);
            let buffer = period * (1 + u32::from(inp.u8() % 8));
            req[8..12].copy_from_slice(&buffer.to_le_bytes());
            req[12..16].copy_from_slice(&period.to_le_bytes());
            req[16..20].copy_from_slice(&u32::from((sel >> 5) & 1).to_le_bytes()); // EVT_XRUNS
            req[20] = channels;
            req[21] = format.code();
            req[22] = vsound::constants::rate_code(rate).unwrap();
        }
        self.rig.control(&req)
    }

    fn op(&mut self, inp: &mut Input<'_>) {
        let op = inp.u8();
        match op % 8 {
            0 | 1 => {
                if self.chain(inp, TX).is_some() {
                    self.rig.dev.poll_io(QueueIndex::Tx);
                }
            }
            2 | 3 => {
                if self.chain(inp, RX).is_some() {
                    self.rig.dev.poll_io(QueueIndex::Rx);
                }
            }
            4 => {
                let r = if op & 0x10 != 0 { RX } else { TX };
                let dir = if op & 0x20 != 0 {
                    Direction::Input
                } else {
                    Direction::Output
                };
                self.direct(inp, r, dir);
            }
            5 => {
                let sub = inp.u8();
                let stream = if sub & 0x80 != 0 {
                    2
                } else {
                    u32::from(sub & 1)
                };
                let st = match (sub >> 1) % 5 {
                    0 => self.set_params(inp, stream),
                    1 => self.rig.pcm(PREPARE, stream),
                    2 => self.rig.pcm(START, stream),
                    3 => self.rig.pcm(STOP, stream),
                    _ => self.rig.pcm(RELEASE, stream),
                };
                assert!(valid_status(st), "status {st:#x}");
            }
            6 => {
                let qi = if op & 0x10 != 0 {
                    QueueIndex::Rx
                } else {
                    QueueIndex::Tx
                };
                let gate = self.rig.queue(qi).gate();
                if gate.is_started() {
                    gate.stop(vsound::pacer::now_ns(), Duration::from_secs(1));
                } else {
                    let resumed = if op & 0x20 != 0 {
                        gate.stopped_at()
                    } else {
                        None
                    };
                    self.rig.dev.start_ring(qi, resumed);
                    self.rig.dev.poll_io(qi);
                }
            }
            _ => match (op >> 3) % 5 {
                0 => self.rig.dev.poll_io(QueueIndex::Tx),
                1 => self.rig.dev.poll_io(QueueIndex::Rx),
                2 => {
                    let d = &self.rig.state.devices[0];
                    if d.is_present() {
                        d.admin_detach();
                    } else {
                        d.admin_attach();
                    }
                }
                3 => std::thread::sleep(Duration::from_micros(200)),
                _ => {
                    // An event buffer, then delivery.
                    if self.chain(inp, EV).is_some() {
                        let q = self.rig.queue(QueueIndex::Event).clone();
                        self.rig.dev.shared.events.deliver(q.as_ref());
                    }
                }
            },
        }
    }

    /// Returns every buffer and checks what came back.
    fn finish(&mut self) {
        for qi in [QueueIndex::Tx, QueueIndex::Rx] {
            let gate = self.rig.queue(qi).gate();
            if !gate.is_started() {
                let at = gate.stopped_at();
                self.rig.dev.start_ring(qi, at);
            }
            self.rig.dev.poll_io(qi);
        }
        for s in 0..2u32 {
            let mut st = self.rig.dev.streams[s as usize].lock().state;
            if st == PcmState::Started {
                assert_eq!(self.rig.pcm(STOP, s), 0x8000, "STOP of stream {s}");
                st = PcmState::Stopped;
            }
            if matches!(st, PcmState::Prepared | PcmState::Stopped) {
                assert_eq!(self.rig.pcm(RELEASE, s), 0x8000, "RELEASE of stream {s}");
            }
        }
        // A buffer a lane took from the ring while RELEASE ran belongs to no
        // stream yet: the lane answers it (IO_ERR, the stream is released)
        // once it has its lock, which a starved lane (a loaded machine) may
        // do after RELEASE answered. Stopping the rings waits for the lanes
        // to be out of them, as a VMM's GET_VRING_BASE does.
        for qi in [QueueIndex::Tx, QueueIndex::Rx] {
            let gate = self.rig.queue(qi).gate();
            assert!(
                gate.stop(vsound::pacer::now_ns(), Duration::from_secs(5)),
                "{qi:?}: a pass still out after 5 s"
            );
            // Started as a resumed VM's ring: what was deferred meanwhile
            // is flushed.
            self.rig.dev.start_ring(qi, gate.stopped_at());
        }
        assert_eq!(
            self.rig.dev.shared.drop_deferred(),
            0,
            "completions left deferred"
        );
        let mem = self.rig.mem.clone();
        for r in [TX, RX, EV] {
            let ring = ring_of(r);
            let mut back = vec![0u32; usize::from(self.rig.rings[ring].size)];
            while let Some((head, len)) = self.rig.rings[ring].next_used(&mem) {
                let h = usize::from(head);
                assert!(h < back.len(), "used head {head} out of the ring");
                back[h] += 1;
                if !self.any_len[r][h] {
                    match r {
                        TX => assert!(len == 0 || len == 8, "tx used length {len}"),
                        RX => assert!(len == 0 || len >= 8, "rx used length {len}"),
                        _ => assert!(len == 0 || len == 8, "event used length {len}"),
                    }
                }
            }
            self.rig.queues[ring].take_completions();
            for (h, (&p, &b)) in self.published[r].iter().zip(back.iter()).enumerate() {
                if r == EV {
                    // Event buffers are taken only when there is an event.
                    assert!(b <= p, "event buffer {h} returned {b} times, posted {p}");
                } else {
                    assert_eq!(b, p, "{r}: head {h} made available {p} times, returned {b}");
                }
            }
            assert_eq!(*self.rig.queues[ring].add_used_errors.lock().unwrap(), 0);
        }
        // Guest memory the device may not write is as the driver left it.
        let mut ranges: Vec<(u64, u64)> = self
            .writable
            .iter()
            .map(|&(a, l)| (a, a.saturating_add(l)))
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let len = (CMP_END - CMP_START) as usize;
        let mut now = vec![0u8; len];
        self.rig
            .mem
            .memory()
            .read_slice(&mut now, GuestAddress(CMP_START))
            .unwrap();
        const CHUNK: usize = 4096;
        for c in 0..len / CHUNK {
            let (a, b) = (
                &now[c * CHUNK..][..CHUNK],
                &self.expected[c * CHUNK..][..CHUNK],
            );
            if a == b {
                continue;
            }
            let mut i = 0;
            while i < CHUNK {
                if a[i] == b[i] {
                    i += 1;
                    continue;
                }
                let addr = CMP_START + (c * CHUNK + i) as u64;
                let k = merged.partition_point(|&(s, _)| s <= addr);
                let within = k > 0 && addr < merged[k - 1].1;
                assert!(
                    within,
                    "the device wrote {addr:#x} (was {:#x}, now {:#x}) outside every writable descriptor",
                    b[i], a[i]
                );
                // Anything up to the end of that range may change.
                let end = merged[k - 1].1;
                i = (end - CMP_START)
                    .saturating_sub((c * CHUNK) as u64)
                    .min(CHUNK as u64) as usize;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let rig = RIG.get_or_init(|| Mutex::new(Rig::new()));
    let mut rig = rig.lock().unwrap_or_else(|e| e.into_inner());
    rig.reset();
    rig.resync(QueueIndex::Event);
    // No descriptor of an earlier input is left for a stray `next` to
    // reach (its writable ranges are not this input's).
    {
        let m = rig.mem.memory();
        for r in [1, 2, 3] {
            let ring = &rig.rings[r];
            m.write_slice(
                &vec![0u8; 16 * usize::from(ring.size)],
                GuestAddress(ring.desc),
            )
            .unwrap();
        }
        m.write_slice(&vec![0u8; ITAB_LEN as usize], GuestAddress(ITAB))
            .unwrap();
    }
    let mut expected = vec![0u8; (CMP_END - CMP_START) as usize];
    rig.mem
        .memory()
        .read_slice(&mut expected, GuestAddress(CMP_START))
        .unwrap();
    let sizes = [IO_QUEUE_SIZE, IO_QUEUE_SIZE, CTL_QUEUE_SIZE].map(usize::from);
    let mut run = Run {
        rig: &mut rig,
        published: sizes.map(|n| vec![0; n]),
        any_len: sizes.map(|n| vec![false; n]),
        desc_cursor: [0; 3],
        itab_cursor: ITAB,
        writable: Vec::new(),
        expected,
    };
    let mut inp = Input::new(data);
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        run.op(&mut inp);
    }
    run.finish();
});
