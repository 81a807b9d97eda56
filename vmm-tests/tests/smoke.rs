//! Smoke test: the daemon starts, negotiates, and describes its default streams.
//!
//! Needs the `vsound` binary: `cargo build --bin vsound` first, or set `VSOUND_BIN`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use vmm_tests::frontend::{
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use vmm_tests::snd::{Direction, PcmFormat, PcmRate};
use vmm_tests::{ConnectOptions, Daemon};

#[test]
fn probe_reads_config_and_pcm_info() {
    let mut daemon = Daemon::spawn().unwrap_or_else(|e| panic!("{e}"));
    let mut snd = daemon
        .connect(&ConnectOptions::default())
        .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)));

    let offered = snd.dev().device_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VHOST_USER_F_PROTOCOL_FEATURES,
    ] {
        assert_ne!(
            offered & bit,
            0,
            "feature {bit:#x} not offered: {offered:#x}"
        );
    }

    let config = snd.config();
    assert_eq!(config.streams, 2, "{config:?}");
    assert_eq!(config.controls, None);

    // Linux's probe: one PCM_INFO covering every stream.
    let infos = snd.pcm_info(0, config.streams).expect("PCM_INFO");
    assert_eq!(infos.len(), 2);
    assert_eq!(infos[0].direction(), Some(Direction::Output));
    assert_eq!(infos[1].direction(), Some(Direction::Input));
    for (i, info) in infos.iter().enumerate() {
        assert_ne!(
            info.formats & PcmFormat::S16.bit(),
            0,
            "stream {i}: {info:?}"
        );
        assert_ne!(
            info.rates & PcmRate::R48000.bit(),
            0,
            "stream {i}: {info:?}"
        );
        assert_eq!(
            (info.channels_min, info.channels_max),
            (1, 2),
            "stream {i}: {info:?}"
        );
        assert_eq!(info.padding, [0; 5], "stream {i}: padding must be zero");
    }

    // One stream at a time gives the same answer.
    for id in 0..2 {
        let one = snd.pcm_info(id, 1).expect("PCM_INFO for one stream");
        assert_eq!(one[0], infos[id as usize]);
    }

    snd.disconnect().expect("clean disconnect");
    daemon
        .check_alive()
        .expect("daemon still running after disconnect");
}

/// `--socket-fd N`: the daemon serves an inherited, already-listening
/// socket (socket activation), and keeps serving it after a disconnect.
#[test]
fn an_inherited_listening_socket_is_served() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;

    let dir = vmm_tests::unprivileged::tempdir("vsound-t-").unwrap();
    let path = dir.path().join("inherited.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    // SAFETY: F_SETFD on an fd we own; clearing FD_CLOEXEC lets the child
    // inherit it.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    assert_eq!(r, 0);
    let mut child = vmm_tests::unprivileged::command(&Daemon::binary().unwrap())
        .unwrap()
        .args(["--socket-fd", &fd.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(listener);
    for _ in 0..2 {
        let mut snd = vmm_tests::SndDriver::connect(&path, &ConnectOptions::default()).unwrap();
        assert_eq!(snd.config().streams, 2);
        assert_eq!(snd.pcm_info(0, 2).unwrap().len(), 2);
        snd.disconnect().unwrap();
    }
    assert!(child.try_wait().unwrap().is_none(), "daemon still running");
    child.kill().unwrap();
    let _ = child.wait();
}
