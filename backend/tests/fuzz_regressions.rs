//! The smallest reproductions of what the fuzz targets (`fuzz/`) found.
//! Each test names its input under `fuzz/regressions/TARGET/`.
//!
//! A finding that is not fixed yet is `#[ignore]`d with the reason, so the
//! suite stays green; `cargo test --test fuzz_regressions -- --ignored`
//! shows it failing. Remove the `ignore` with the fix.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vsound::api::ApiServer;
use vsound::config::Config;
use vsound::daemon::DaemonState;

/// Sends `bytes` to a real API server on the default config, half-closes,
/// and returns the reply lines and the state (to look at its devices).
fn exchange(bytes: &[u8]) -> (Vec<serde_json::Value>, std::sync::Arc<DaemonState>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let state = DaemonState::new(&Config::default_config().unwrap()).unwrap();
    let server = ApiServer::start(&path, &Default::default(), state.clone()).unwrap();
    let mut c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(bytes);
    let _ = c.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    drop(server);
    let replies = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (replies, state)
}

/// fuzz/regressions/api/over-long-line-tail-is-executed: api.rs says "a
/// request line longer than this is refused", but only its first 4097
/// bytes are: the rest of the same line is read as the next request and
/// executed. Here 4097 spaces and then a `detach` detach the device.
#[test]
fn an_over_long_api_line_is_refused_whole() {
    let mut line = vec![b' '; 4097];
    line.extend_from_slice(b"{\"cmd\":\"detach\",\"device\":\"null0\"}\n");
    let (replies, state) = exchange(&line);
    assert!(
        state.devices[0].is_present(),
        "the tail of an over-long line detached the device"
    );
    assert_eq!(replies.len(), 1, "one reply per line: {replies:?}");
    assert_eq!(replies[0]["ok"], false);
}

/// fuzz/regressions/api/non-utf8-line-closes-silently: api.rs says "a bad
/// request gets an error line, never a silent close", but a line that is
/// not UTF-8 (here the single byte 0xff) closes the connection with no
/// reply, and the requests after it on the connection are never answered.
#[test]
fn a_non_utf8_api_line_gets_an_error_line() {
    let (replies, _) = exchange(b"\xff\n{\"cmd\":\"status\"}\n");
    assert_eq!(
        replies.len(),
        2,
        "an error line, then the status: {replies:?}"
    );
    assert_eq!(replies[0]["ok"], false);
    assert_eq!(replies[1]["ok"], true);
}

/// The daemon's connection objects over guest memory `mem`, built as
/// `serve_one` builds them, with the control ring running (64 entries,
/// EVENT_IDX) at `rings` (descriptor table, avail ring, used ring).
struct ControlRing {
    device: std::sync::Arc<vsound::device::SoundDevice>,
    backend: std::sync::Arc<vsound::vhost_user::VsoundBackend>,
    vrings: Vec<vsound::vhost_user::Vring>,
    // Keeps the host devices the device lends.
    _state: std::sync::Arc<DaemonState>,
}

impl ControlRing {
    fn new(
        mem: &vm_memory::GuestMemoryAtomic<vsound::queue::Mem>,
        (desc, avail, used): (u64, u64, u64),
    ) -> ControlRing {
        use vhost_user_backend::{VhostUserBackend, VringT};
        use vsound::vhost_user::{Connection, Vring, VsoundBackend};

        let config = Config::default_config().unwrap();
        let state = DaemonState::new(&config).unwrap();
        let device = vsound::device::SoundDevice::new(&config, &state.devices).unwrap();
        let conn = Connection::new(device.clone()).unwrap();
        let backend = std::sync::Arc::new(VsoundBackend::new(conn.clone()).unwrap());
        let vrings: Vec<Vring> = conn.build(|| {
            (0..4)
                .map(|_| <Vring as VringT<_>>::new(mem.clone(), 1024).unwrap())
                .collect()
        });
        let ctl = &vrings[0];
        ctl.set_queue_size(64);
        ctl.set_queue_info(desc, avail, used).unwrap();
        ctl.set_queue_event_idx(true);
        backend.set_event_idx(true);
        ctl.set_enabled(true);
        ctl.set_queue_ready(true);
        ControlRing {
            device,
            backend,
            vrings,
            _state: state,
        }
    }

    /// A kick of the control ring, handled as the queue thread does, on a
    /// thread of its own; whether it was handled within 5 s.
    fn kick(&self) -> bool {
        use vhost_user_backend::VhostUserBackend;

        let (tx, rx) = std::sync::mpsc::channel();
        let b = self.backend.clone();
        let rings = self.vrings.clone();
        std::thread::spawn(move || {
            let _ = b.handle_event(0, vmm_sys_util::epoll::EventSet::IN, &rings, 0);
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(5)).is_ok()
    }
}

/// fuzz/regressions/vhost_user/open-avail-idx-past-queue-size-spins (and
/// the input the fuzzer found, open-queue-thread-spins-found): with
/// EVENT_IDX, a driver that sets its avail index more than the queue size
/// ahead of the device and kicks makes `VsoundBackend::drain` spin for
/// ever: `pop` finds no chain (virtio-queue refuses the index) while
/// `enable_notification` keeps reporting more available, so the outer
/// loop never ends. The queue thread burns a core, never sees its exit
/// event, and the daemon's teardown joins it for ever: no VMM is served
/// again. (A driver placing its avail ring at guest address 0 does the
/// same: virtio-queue then reports the queue not ready.)
#[test]
fn a_broken_avail_index_does_not_spin_the_queue_thread() {
    use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
    use vsound::queue::Mem;

    let mem = GuestMemoryAtomic::new(Mem::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
    let avail = 0x1_1000u64;
    let rig = ControlRing::new(&mem, (0x1_0000, avail, 0x1_2000));
    // The driver's avail index: 65 chains when the ring holds 64.
    mem.memory()
        .write_obj(65u16.to_le(), GuestAddress(avail + 2))
        .unwrap();
    assert!(
        rig.kick(),
        "the kick of a control ring with a broken avail index is still being handled after 5 s"
    );
    rig.device.shutdown();
}

/// Found by `vhost_user` (fuzz/README.md, finding 7): vhost-user-backend
/// publishes a new memory table to the queue threads before it calls
/// `update_memory`, where the daemon checks each region against its file
/// and registers it with the SIGBUS guard. A queue thread kicked in
/// between touched a region past its file's end (the used ring's
/// `avail_event`, written by `enable_notification`) and the SIGBUS killed
/// the daemon. Here the window is held open: the rings run on a table whose
/// used ring lies past the end of its file, and `update_memory` has not
/// run. The kick must be handled, the fault caught and reported (the watch
/// thread then ends the connection), and the process live.
#[test]
fn a_queue_thread_on_a_table_not_checked_yet_survives_a_region_past_its_file() {
    use vm_memory::{FileOffset, GuestAddress, GuestMemoryAtomic, GuestRegionMmap, MmapRegion};
    use vsound::queue::Mem;

    let report = vsound::sigbus::install().unwrap();
    vsound::sigbus::consume();
    // 64 KiB of guest memory on a file of 32 KiB.
    let file = tempfile::tempfile().unwrap();
    file.set_len(32 << 10).unwrap();
    let region = GuestRegionMmap::new(
        MmapRegion::from_file(FileOffset::new(file, 0), 64 << 10).unwrap(),
        GuestAddress(0),
    )
    .unwrap();
    let base = region.as_ptr() as usize;
    let mem = GuestMemoryAtomic::new(Mem::from_regions(vec![region]).unwrap());
    // The used ring past the file's end.
    let rig = ControlRing::new(&mem, (0x1000, 0x2000, 0x9000));
    assert!(rig.kick(), "the kick was not handled");
    let fault = vsound::sigbus::last_fault().expect("no fault was caught");
    assert!(
        (base + 0x9000..base + (64 << 10)).contains(&fault),
        "the fault at {fault:#x} is not in the used ring's page"
    );
    assert!(report.read().unwrap() >= 1, "the fault was not reported");
    vsound::sigbus::forget_all();
    rig.device.shutdown();
}
