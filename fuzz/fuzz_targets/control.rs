//! The control queue: requests of any code, on any descriptor layout, into
//! `handle_control` of a real `SoundDevice` (default config, real stream
//! workers). One input is a sequence of up to 8 requests (the stream state
//! machine carries over between them); the device is reset before each
//! input.
//!
//! Checked for every request: the chain comes back exactly once; when the
//! chain is well formed with at least 4 writable bytes in guest memory, the
//! used length is at least 4 and at most the writable size, and the status
//! is one of 0x8000..=0x8003; a malformed chain comes back with 0 bytes;
//! the device-readable descriptors are never written.

#![no_main]

use std::sync::Mutex;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use vsound_fuzz::*;

const KNOWN: [u32; 16] = [
    0x0001, 0x0002, 0x0100, 0x0101, 0x0102, 0x0103, 0x0104, 0x0105, 0x0200, 0x0300, 0x0301,
    0x0302, 0x0303, 0x0304, 0x0305, 0x0306,
];
const MAX_REQUESTS: usize = 8;
const MAX_MESSAGE_BYTES: u64 = 64 << 20;

static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();

/// One descriptor as laid out: (addr, len, writable, in guest memory).
#[derive(Clone, Copy)]
struct D {
    addr: u64,
    len: u32,
    write: bool,
    in_mem: bool,
}

fn one_request(rig: &mut Rig, inp: &mut Input<'_>) {
    // The request.
    let sel = inp.u8();
    let code = if sel & 0x80 != 0 {
        inp.u32()
    } else {
        KNOWN[usize::from(sel) % KNOWN.len()]
    };
    let req_len = usize::from(inp.u8() % 68);
    let mut req = code.to_le_bytes().to_vec();
    req.extend_from_slice(inp.bytes(req_len.saturating_sub(4)));
    req.resize(req_len, 0);

    // The layout.
    let nr = inp.u8();
    let rsizes: Vec<u32> = if nr & 0x80 != 0 {
        (0..nr % 5).map(|_| u32::from(inp.u8())).collect()
    } else if req_len > 0 {
        vec![req_len as u32]
    } else {
        vec![]
    };
    let nw = inp.u8();
    let wsizes: Vec<u32> = if nw & 0x80 != 0 {
        (0..nw % 5).map(|_| u32::from(inp.u16() & 0x1fff)).collect()
    } else {
        vec![u32::from(inp.u16() % 4200)]
    };
    let flags = inp.u8();
    let read_after_write = flags & 0x01 != 0;
    let write_oom = flags & 0x02 != 0;
    let read_oom = flags & 0x04 != 0;
    let huge = flags & 0x08 != 0;
    let indirect = flags & 0x10 != 0;
    let looped = flags & 0x20 != 0;

    let mut descs: Vec<D> = Vec::new();
    let mut addr = ARENA;
    let mut push = |descs: &mut Vec<D>, len: u32, write: bool| {
        descs.push(D {
            addr,
            len,
            write,
            in_mem: true,
        });
        addr += u64::from(len) + 0x40;
    };
    for &s in &rsizes {
        push(&mut descs, s, false);
    }
    if read_oom {
        descs.push(D {
            addr: MEM_SIZE - 2,
            len: 16,
            write: false,
            in_mem: false,
        });
    }
    if huge {
        // Refused on its length before any access: never touched.
        descs.push(D {
            addr: ARENA,
            len: 0x0400_0001,
            write: false,
            in_mem: false,
        });
    }
    for &s in &wsizes {
        push(&mut descs, s, true);
    }
    if write_oom {
        descs.push(D {
            addr: if flags & 0x40 != 0 {
                u64::MAX - 3
            } else {
                MEM_SIZE - 2
            },
            len: 64,
            write: true,
            in_mem: false,
        });
    }
    if read_after_write {
        push(&mut descs, u32::from(inp.u8()), false);
    }
    if descs.is_empty() {
        // A chain has at least one descriptor.
        push(&mut descs, 0, true);
    }
    assert!(
        descs
            .iter()
            .all(|d| !d.in_mem || d.addr + u64::from(d.len) <= CTL_BUF),
        "the layout stays inside the arena"
    );

    // Guest memory: the request across the readable descriptors, a
    // pattern in the writable ones.
    let m = rig.mem.memory();
    let mut off = 0usize;
    let mut readable_content: Vec<(u64, Vec<u8>)> = Vec::new();
    for d in descs.iter().filter(|d| !d.write && d.in_mem) {
        let mut bytes = vec![0u8; d.len as usize];
        for b in bytes.iter_mut() {
            *b = req.get(off).copied().unwrap_or(0);
            off += 1;
        }
        m.write_slice(&bytes, GuestAddress(d.addr)).unwrap();
        readable_content.push((d.addr, bytes));
    }
    for d in descs.iter().filter(|d| d.write && d.in_mem) {
        m.write_slice(&vec![0xee; d.len as usize], GuestAddress(d.addr))
            .unwrap();
    }
    drop(m);

    let ring = &rig.rings[0];
    let n = descs.len() as u16;
    let flags_of = |i: usize, d: &D| {
        let mut f = if d.write { F_WRITE } else { 0 };
        if i + 1 < descs.len() || looped {
            f |= F_NEXT;
        }
        f
    };
    let next_of = |i: usize| if i + 1 < descs.len() { i as u16 + 1 } else { 0 };
    if indirect {
        for (i, d) in descs.iter().enumerate() {
            write_desc_at(
                &rig.mem,
                ITAB + 16 * i as u64,
                d.addr,
                d.len,
                flags_of(i, d),
                next_of(i),
            );
        }
        ring.write_desc(&rig.mem, 0, ITAB, 16 * u32::from(n), F_INDIRECT, 0);
    } else {
        for (i, d) in descs.iter().enumerate() {
            ring.write_desc(
                &rig.mem,
                i as u16,
                d.addr,
                d.len,
                flags_of(i, d),
                next_of(i),
            );
        }
    }

    let used = rig.control_chain(0);
    assert_eq!(used.len(), 1, "completed exactly once: {used:?}");
    let (head, len) = used[0];
    assert_eq!(head, 0);

    // What the device must have done.
    let writable: u64 = descs
        .iter()
        .filter(|d| d.write)
        .map(|d| u64::from(d.len))
        .sum();
    let total: u64 = descs.iter().map(|d| u64::from(d.len)).sum();
    let first_w = descs.iter().position(|d| d.write);
    let order_bad = first_w.is_some_and(|w| descs[w..].iter().any(|d| !d.write));
    // A loop visits its descriptors again, up to the queue size.
    let bound = if looped {
        writable * u64::from(CTL_QUEUE_SIZE)
    } else {
        writable
    };
    assert!(
        u64::from(len) <= bound,
        "used {len} > writable {writable} (flags {flags:#x})"
    );
    if !looped {
        let status_in_mem = {
            let mut room = 0u64;
            for d in descs.iter().filter(|d| d.write) {
                if !d.in_mem {
                    break;
                }
                room += u64::from(d.len);
            }
            room >= 4
        };
        if order_bad || total > MAX_MESSAGE_BYTES || writable < 4 {
            assert_eq!(len, 0, "a malformed chain comes back empty");
        } else if status_in_mem {
            assert!(len >= 4, "a status was written (used {len})");
            let mut st = [0u8; 4];
            let mut got = 0;
            let m = rig.mem.memory();
            for d in descs.iter().filter(|d| d.write) {
                let take = (4 - got).min(d.len as usize);
                m.read_slice(&mut st[got..got + take], GuestAddress(d.addr))
                    .unwrap();
                got += take;
                if got == 4 {
                    break;
                }
            }
            let st = u32::from_le_bytes(st);
            assert!(valid_status(st), "status {st:#x}");
        }
    }
    // Device-readable memory is never written.
    let m = rig.mem.memory();
    for (addr, bytes) in &readable_content {
        let mut now = vec![0u8; bytes.len()];
        m.read_slice(&mut now, GuestAddress(*addr)).unwrap();
        assert_eq!(
            &now, bytes,
            "a readable descriptor at {addr:#x} was written"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let rig = RIG.get_or_init(|| Mutex::new(Rig::new()));
    let mut rig = rig.lock().unwrap_or_else(|e| e.into_inner());
    rig.reset();
    let mut inp = Input::new(data);
    for _ in 0..MAX_REQUESTS {
        if inp.is_empty() {
            break;
        }
        one_request(&mut rig, &mut inp);
    }
});
