//! No heap allocation per period in the whole daemon, vhost-user glue
//! included: the daemon runs in this process (`vsound::daemon::run`) and a
//! guest drives one output and one input stream through its real socket.
//! A counting global allocator attributes allocations to threads; over 50
//! steady-state periods per stream the daemon's threads (`vsound-s*`
//! workers, `vsound-watchdog`, the vhost-user `vring_worker` that takes the
//! kicks, and the `vsound` request thread) must make none. The guest's own
//! threads allocate freely and are not counted.
//!
//! backend/tests/alloc_per_period.rs checks the same for the device core alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../backend/tests/support/counting_alloc.rs"]
mod counting_alloc;

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use counting_alloc::{counts, gettid, reset_counts, CountingAlloc, COUNTING, OVERFLOW};
use vmm_tests::bench::load::Load;
use vmm_tests::snd::{Direction, SndDriver};
use vmm_tests::ConnectOptions;
use vsound::config::Config;
use vsound::daemon::{self, SocketSpec};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Periods run first, per stream.
const WARMUP: u64 = 20;
/// Periods counted, per stream.
const MEASURED: u64 = 50;

fn is_daemon_thread(name: &str) -> bool {
    name.starts_with("vsound-s") || matches!(name, "vsound-watchdog" | "vring_worker" | "vsound")
}

#[test]
fn the_daemon_allocates_nothing_per_period_through_vhost_user() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let socket = dir.path().join("vsound.sock");
    let config = Config::default_config().unwrap();
    let spec = SocketSpec::Path(socket.clone());
    let served = thread::Builder::new()
        .name("daemon-main".into())
        .spawn(move || daemon::run(&config, &spec, None, Some(1)).map_err(|e| e.to_string()))
        .unwrap();

    let mut snd = SndDriver::connect(&socket, &ConnectOptions::default()).unwrap();
    let mut load =
        Load::prepare(&mut snd, &[(0, Direction::Output), (1, Direction::Input)]).unwrap();
    load.start().unwrap();
    let periods = |n: u64| move |l: &Load| l.streams().iter().any(|s| s.done < n);
    let limit = Instant::now() + Duration::from_secs(10);
    load.run_while(limit, periods(WARMUP)).unwrap();

    // The counter sees an allocation on this thread.
    COUNTING.store(true, Ordering::SeqCst);
    let probe = std::hint::black_box(vec![0u8; 100]);
    COUNTING.store(false, Ordering::SeqCst);
    drop(probe);
    let me = gettid();
    assert!(
        counts().iter().any(|&(tid, _, n, _)| tid == me && n == 1),
        "the counting allocator missed a probe allocation"
    );
    reset_counts();

    COUNTING.store(true, Ordering::SeqCst);
    load.run_while(limit, periods(WARMUP + MEASURED)).unwrap();
    COUNTING.store(false, Ordering::SeqCst);
    assert!(
        load.streams().iter().all(|s| s.done >= WARMUP + MEASURED),
        "the streams stalled: {:?}",
        load.streams()
    );
    assert!(
        load.samples().iter().all(|s| s.ok),
        "a completion was not OK"
    );

    // The filter above names real threads (a renamed thread would pass
    // unnoticed otherwise).
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_owned())
        .collect();
    for expected in [
        "vsound-s0",
        "vsound-s1",
        "vsound-watchdog",
        "vring_worker",
        "vsound",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no thread {expected} in {names:?}"
        );
    }

    let counted = counts();
    eprintln!("allocations over {MEASURED} periods per stream, by thread:");
    for (tid, name, n, bytes) in &counted {
        eprintln!("  tid {tid} {name:<16} {n:>6} allocations, {bytes:>8} bytes");
    }
    let in_daemon: Vec<_> = counted
        .iter()
        .filter(|(_, name, _, _)| is_daemon_thread(name))
        .collect();
    assert_eq!(OVERFLOW.load(Ordering::Relaxed), 0);
    assert!(
        in_daemon.is_empty(),
        "the daemon allocated per period: {in_daemon:?}"
    );

    load.release().unwrap();
    snd.disconnect().unwrap();
    served.join().unwrap().unwrap();
}
