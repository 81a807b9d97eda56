//! No heap allocation per period in the whole daemon, vhost-user glue
//! included: the daemon runs in this process (`vsound::daemon::run`) and a
//! guest drives one output and one input stream through its real socket.
//! A counting global allocator attributes allocations to threads; over 50
//! steady-state periods per stream the daemon's threads (`vsound-s*`
//! lanes, `vsound-reactor` (which also watches for hangs), the vhost-user
//! `vring_worker` that takes the
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
    name.starts_with("vsound-s") || matches!(name, "vsound-reactor" | "vring_worker" | "vsound")
}

#[test]
fn the_daemon_allocates_nothing_per_period_through_vhost_user() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let config = Config::default_config().unwrap();
    run_counted(
        &dir,
        config,
        &[(0, Direction::Output), (1, Direction::Input)],
        |_| {},
    );
}

/// The same through the mixer: two output and two input streams on one pad
/// (with a client, so that the mixed endpoints are open and used).
#[test]
fn mixing_streams_on_a_pad_allocates_nothing_per_period() {
    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let pad = dir.path().join("pad.sock");
    let one = "formats = [\"S16\"]\nrates = [48000]\nchannels = { min = 2, max = 2 }\n";
    let streams: String = ["output", "output", "input", "input"]
        .iter()
        .map(|d| format!("[[streams]]\ndirection = \"{d}\"\ndevice = \"pad0\"\n{one}\n"))
        .collect();
    let src = format!(
        "[devices.pad0]\nkind = \"pad\"\npath = {:?}\n\n{streams}",
        pad.display().to_string()
    );
    let config = Config::from_toml("mix.toml", &src).unwrap();
    assert!(config.mixed(0, vsound::constants::Direction::Output));
    assert!(config.mixed(0, vsound::constants::Direction::Input));
    let mut client = None;
    run_counted(
        &dir,
        config,
        &[
            (0, Direction::Output),
            (1, Direction::Output),
            (2, Direction::Input),
            (3, Direction::Input),
        ],
        |snd| {
            let c = std::os::unix::net::UnixStream::connect(&pad).unwrap();
            let mut r = c.try_clone().unwrap();
            // Drains the pad's playback (the test's thread, not counted).
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while matches!(std::io::Read::read(&mut r, &mut buf), Ok(n) if n > 0) {}
            });
            client = Some(c);
            vmm_tests::audio::wait_jack(snd, 0, true, Duration::from_secs(10)).unwrap();
        },
    );
    drop(client);
}

/// The counts are process-wide: one test counts at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_counted(
    dir: &tempfile::TempDir,
    config: Config,
    streams: &[(u32, Direction)],
    before: impl FnOnce(&mut SndDriver),
) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let socket = dir.path().join("vsound.sock");
    let spec = SocketSpec::Path(socket.clone());
    let served = thread::Builder::new()
        .name("daemon-main".into())
        .spawn(move || daemon::run(&config, &spec, None, Some(1)).map_err(|e| e.to_string()))
        .unwrap();

    let mut snd = SndDriver::connect(&socket, &ConnectOptions::default()).unwrap();
    before(&mut snd);
    let mut load = Load::prepare(&mut snd, streams).unwrap();
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
    // Null and pad streams all run on the shared reactor.
    let _ = streams;
    for expected in ["vsound-reactor", "vring_worker", "vsound"] {
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
