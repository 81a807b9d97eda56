//! The per-period hot path of the device core, without threads or devices:
//! parsing an I/O message (`IoMessage::parse`), copying a period out of a
//! tx message or into an rx one (`read_pcm` / `write_pcm`), and completing it
//! into a queue (`IoMessage::complete`).
//!
//! Chains are laid out the way Linux sends them: a contiguous one (header
//! and PCM in one readable descriptor, then the status) and a split one
//! (header, PCM across a page boundary in two descriptors, status).
//!
//! `cargo bench -p vsound --bench hot_path`

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use support::{GuestRing, LocalQueue};
use vsound::constants::{Direction, Status};
use vsound::io::IoMessage;
use vsound::queue::{Chain, Virtqueue};

/// 10 ms of 48 kHz stereo S16.
const PERIOD: u32 = 1920;

struct Fixture {
    tx: LocalQueue,
    rx: LocalQueue,
    tx_contiguous: Chain,
    tx_split: Chain,
    rx_split: Chain,
}

fn fixture() -> Fixture {
    let mem = support::memory(16 << 20);
    let mut tx_ring = GuestRing::new(&mem, 0, 256);
    let mut rx_ring = GuestRing::new(&mem, 0x1_0000, 256);
    // Header + PCM in one readable descriptor, then the status.
    tx_ring.write_chain(
        &mem,
        0,
        &[(0x10_0000, 4 + PERIOD, false), (0x10_1000, 8, true)],
    );
    // Header; PCM from 0x20_0c00 across the page at 0x20_1000 in two
    // descriptors (one per contiguous page run); status.
    tx_ring.write_chain(
        &mem,
        2,
        &[
            (0x20_0000, 4, false),
            (0x20_0c00, 1024, false),
            (0x30_0000, PERIOD - 1024, false),
            (0x20_2000, 8, true),
        ],
    );
    rx_ring.write_chain(
        &mem,
        0,
        &[
            (0x40_0000, 4, false),
            (0x40_0c00, 1024, true),
            (0x50_0000, PERIOD - 1024, true),
            (0x40_2000, 8, true),
        ],
    );
    tx_ring.publish(&mem, 0);
    tx_ring.publish(&mem, 2);
    rx_ring.publish(&mem, 0);
    let tx = LocalQueue::new(&tx_ring, &mem);
    let rx = LocalQueue::new(&rx_ring, &mem);
    let (tx_contiguous, tx_split, rx_split) = {
        let (tp, rp) = (tx.gate().enter().unwrap(), rx.gate().enter().unwrap());
        (
            tx.pop(&tp).expect("tx chain 0"),
            tx.pop(&tp).expect("tx chain 2"),
            rx.pop(&rp).expect("rx chain 0"),
        )
    };
    Fixture {
        tx,
        rx,
        tx_contiguous,
        tx_split,
        rx_split,
    }
}

fn parse(chain: &Chain, dir: Direction) -> IoMessage {
    IoMessage::parse(chain.clone(), dir, 1024).unwrap().1
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    let mut scratch = vec![0u8; PERIOD as usize];

    let mut g = c.benchmark_group("parse");
    for (name, chain, dir) in [
        ("tx_contiguous", &f.tx_contiguous, Direction::Output),
        ("tx_split", &f.tx_split, Direction::Output),
        ("rx_split", &f.rx_split, Direction::Input),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| IoMessage::parse(black_box(chain.clone()), dir, 1024).is_ok())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("copy_period");
    g.throughput(Throughput::Bytes(u64::from(PERIOD)));
    for (name, chain) in [
        ("read_pcm/tx_contiguous", &f.tx_contiguous),
        ("read_pcm/tx_split", &f.tx_split),
    ] {
        let mut msg = parse(chain, Direction::Output);
        assert_eq!(msg.payload(), PERIOD);
        g.bench_function(name, |b| {
            b.iter(|| msg.read_pcm(0, black_box(&mut scratch)).is_ok())
        });
    }
    let mut msg = parse(&f.rx_split, Direction::Input);
    assert_eq!(msg.payload(), PERIOD);
    g.bench_function("write_pcm/rx_split", |b| {
        b.iter(|| msg.write_pcm(0, black_box(&scratch)).is_ok())
    });
    g.finish();

    let mut g = c.benchmark_group("complete");
    g.bench_function("tx", |b| {
        b.iter_batched(
            || parse(&f.tx_contiguous, Direction::Output),
            |m| {
                let pass = f.tx.gate().enter().unwrap();
                m.complete(&f.tx, &pass, Direction::Output, Status::Ok, 0, 0)
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("rx", |b| {
        b.iter_batched(
            || parse(&f.rx_split, Direction::Input),
            |m| {
                let pass = f.rx.gate().enter().unwrap();
                m.complete(&f.rx, &pass, Direction::Input, Status::Ok, 0, PERIOD)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // Everything the daemon does with one tx period but the sink and the
    // thread hand-offs: parse at intake, copy when consumed, complete.
    let mut g = c.benchmark_group("period");
    g.throughput(Throughput::Bytes(u64::from(PERIOD)));
    g.bench_function("tx_split", |b| {
        b.iter(|| {
            let mut m = parse(black_box(&f.tx_split), Direction::Output);
            let ok = m.read_pcm(0, &mut scratch).is_ok();
            let pass = f.tx.gate().enter().unwrap();
            m.complete(&f.tx, &pass, Direction::Output, Status::Ok, 0, 0);
            ok
        })
    });
    g.finish();
}

criterion_group! {
    name = hot_path;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(hot_path);
