//! The control queue through the real socket: every request, every legal
//! transition, illegal ones, SET_PARAMS validation, malformed requests.
//!
//! Default config: stream 0 output, stream 1 input, group 0, null device,
//! formats S16/S24/S32/FLOAT, rates 44.1/48/96 kHz, 1–2 channels.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use vmm_tests::snd::constants::{chmap, code, pcm_feature, size};
use vmm_tests::snd::wire::{jack_remap, pcm_hdr, query_info};
use vmm_tests::snd::{PcmFormat, PcmRate, SetParams, SndDriver, Status};
use vmm_tests::{ConnectOptions, Daemon};

/// Every control reply must come well under Linux's 1 s timeout.
const REPLY_BOUND: Duration = Duration::from_millis(100);

fn setup() -> (Daemon, SndDriver) {
    let daemon = Daemon::spawn().unwrap_or_else(|e| panic!("{e}"));
    let snd = daemon
        .connect(&ConnectOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    (daemon, snd)
}

/// Sends a raw request, checks the reply time and that the device wrote
/// only where it may, and returns the status.
fn status_of(snd: &mut SndDriver, req: &[u8], resp_len: usize) -> Status {
    let r = snd.control(req, resp_len).unwrap();
    assert!(r.elapsed < REPLY_BOUND, "reply took {:?}", r.elapsed);
    assert_eq!(r.violation, None);
    r.status().unwrap()
}

fn cmd(snd: &mut SndDriver, code: u32, stream: u32) -> Status {
    status_of(snd, &pcm_hdr(code, stream), 4)
}

/// S16 stereo 48 kHz, 10 ms periods, 4 of them.
fn params(stream: u32) -> SetParams {
    SetParams {
        stream_id: stream,
        buffer_bytes: 4 * 1920,
        period_bytes: 1920,
        features: 0,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate: PcmRate::R48000.code(),
        padding: 0,
    }
}

fn set_params(snd: &mut SndDriver, p: SetParams) -> Status {
    status_of(snd, &p.encode(), 4)
}

#[test]
fn jack_info_gives_one_connected_jack_per_device_and_direction() {
    let (_d, mut snd) = setup();
    assert_eq!(snd.config().jacks, 2);
    let jacks = snd.jack_info(0, 2).unwrap();
    assert_eq!(jacks.len(), 2);
    for j in &jacks {
        assert_eq!(j.hda_fn_nid, 0);
        assert_eq!(j.connected, 1, "the null device is always there: {j:?}");
        assert_eq!(j.features, 0, "no REMAP");
    }
    // HDA default configuration, device bits 23:20: LineOut 0, LineIn 8.
    assert_eq!((jacks[0].hda_reg_defconf >> 20) & 0xf, 0);
    assert_eq!((jacks[1].hda_reg_defconf >> 20) & 0xf, 8);
}

#[test]
fn pcm_info_describes_each_configured_stream() {
    let (_d, mut snd) = setup();
    let infos = snd.pcm_info(0, 2).unwrap();
    for (i, info) in infos.iter().enumerate() {
        assert_eq!(info.direction, i as u8);
        assert_eq!(info.hda_fn_nid, 0);
        let want_formats = [
            PcmFormat::S16,
            PcmFormat::S24,
            PcmFormat::S32,
            PcmFormat::Float,
        ]
        .iter()
        .fold(0, |m, f| m | f.bit());
        assert_eq!(info.formats, want_formats);
        let want_rates = [PcmRate::R44100, PcmRate::R48000, PcmRate::R96000]
            .iter()
            .fold(0, |m, r| m | r.bit());
        assert_eq!(info.rates, want_rates);
        assert_eq!((info.channels_min, info.channels_max), (1, 2));
        assert_eq!(info.features, 1 << pcm_feature::EVT_XRUNS);
    }
}

#[test]
fn chmap_info_gives_the_usual_positions_per_group_and_direction() {
    let (_d, mut snd) = setup();
    assert_eq!(snd.config().chmaps, 2);
    let maps = snd.chmap_info(0, 2).unwrap();
    for (i, m) in maps.iter().enumerate() {
        assert_eq!(m.direction, i as u8);
        assert_eq!(m.channels, 2);
        assert_eq!(&m.positions[..2], &[chmap::FL, chmap::FR]);
        assert!(m.positions[2..].iter().all(|&p| p == chmap::NONE));
    }
}

/// `positions` in the config gives the stream's group and direction that
/// channel map instead of the usual one; check-config refuses bad ones.
#[test]
fn configured_channel_positions_are_the_maps_the_guest_reads() {
    let toml = "[devices.n]\nkind = \"null\"\n\n[[streams]]\ndirection = \"output\"\ndevice = \"n\"\nchannels = { min = 1, max = 4 }\npositions = [\"FL\", \"FR\", \"FC\", \"LFE\"]\n\n[[streams]]\ndirection = \"input\"\ndevice = \"n\"\n";
    let d = vmm_tests::Daemon::spawn_with(&vmm_tests::DaemonOptions {
        config_toml: Some(toml.into()),
        ..Default::default()
    })
    .unwrap();
    let mut snd = d.connect(&vmm_tests::ConnectOptions::default()).unwrap();
    let maps = snd.chmap_info(0, 2).unwrap();
    assert_eq!(maps[0].channels, 4);
    assert_eq!(&maps[0].positions[..4], &[chmap::FL, chmap::FR, 7, 8]);
    assert_eq!(
        &maps[1].positions[..2],
        &[chmap::FL, chmap::FR],
        "the usual ones"
    );
    let dir = vmm_tests::unprivileged::tempdir("vsound-chmap-").unwrap();
    for (bad, what) in [
        (
            "[\"FL\", \"FR\", \"XX\", \"LFE\"]",
            "unknown channel position `XX`",
        ),
        (
            "[\"FL\", \"FR\"]",
            "2 positions for a stream of up to 4 channels",
        ),
        ("[\"FL\", \"FL\", \"FC\", \"LFE\"]", "`FL` is given twice"),
    ] {
        let f = dir.path().join("c.toml");
        std::fs::write(&f, toml.replace("[\"FL\", \"FR\", \"FC\", \"LFE\"]", bad)).unwrap();
        let o = std::process::Command::new(vmm_tests::Daemon::binary().unwrap())
            .args(["check-config", f.to_str().unwrap()])
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && e.contains("c.toml:8:")
                && e.contains("streams[0].positions")
                && e.contains(what),
            "{e}"
        );
    }
}

#[test]
fn jack_remap_is_not_supported_and_a_bad_jack_is_bad_msg() {
    let (_d, mut snd) = setup();
    assert_eq!(
        status_of(&mut snd, &jack_remap(0, 1, 0), 4),
        Status::NotSupp
    );
    assert_eq!(status_of(&mut snd, &jack_remap(9, 1, 0), 4), Status::BadMsg);
}

#[test]
fn info_queries_are_checked_for_range_size_and_overflow() {
    let (_d, mut snd) = setup();
    let pcm = size::PCM_INFO as u32;
    // start + count beyond the total, and overflowing u32.
    assert_eq!(
        status_of(&mut snd, &query_info(code::PCM_INFO, 1, 2, pcm), 4 + 64),
        Status::BadMsg
    );
    assert_eq!(
        status_of(
            &mut snd,
            &query_info(code::PCM_INFO, 1, u32::MAX, pcm),
            4 + 64
        ),
        Status::BadMsg
    );
    assert_eq!(
        status_of(
            &mut snd,
            &query_info(code::PCM_INFO, u32::MAX, 1, pcm),
            4 + 64
        ),
        Status::BadMsg
    );
    // Item size smaller than the struct; count × size overflowing.
    assert_eq!(
        status_of(&mut snd, &query_info(code::PCM_INFO, 0, 2, 16), 4 + 64),
        Status::BadMsg
    );
    assert_eq!(
        status_of(
            &mut snd,
            &query_info(code::JACK_INFO, 0, 2, u32::MAX),
            4 + 64
        ),
        Status::BadMsg
    );
    // Response buffer too small for count × size.
    assert_eq!(
        status_of(&mut snd, &query_info(code::PCM_INFO, 0, 2, pcm), 4 + 63),
        Status::BadMsg
    );
    // A larger item size is honoured: each item zero-padded.
    let r = snd
        .control(&query_info(code::CHMAP_INFO, 0, 2, 32), 4 + 64)
        .unwrap();
    assert_eq!(r.status(), Some(Status::Ok));
    assert_eq!(r.used_len, 4 + 64);
    assert!(r.response[4 + 24..4 + 32].iter().all(|&b| b == 0));
    assert_eq!(r.response[4 + 32 + 4], 1, "second map is the input one");
    // count = 0 is a valid, empty answer.
    assert_eq!(
        status_of(&mut snd, &query_info(code::JACK_INFO, 2, 0, 24), 4),
        Status::Ok
    );
}

#[test]
fn unknown_codes_and_control_elements_are_not_supported() {
    let (_d, mut snd) = setup();
    for c in [code::CTL_INFO, code::CTL_READ, 0x0000, 0x0106, 0xdead_beef] {
        assert_eq!(
            status_of(&mut snd, &query_info(c, 0, 1, 96), 4 + 96),
            Status::NotSupp,
            "{c:#x}"
        );
    }
}

#[test]
fn short_requests_are_bad_msg_and_short_responses_get_nothing_or_bad_msg() {
    let (d, mut snd) = setup();
    assert_eq!(status_of(&mut snd, &[0x01, 0x01], 4), Status::BadMsg);
    assert_eq!(
        status_of(&mut snd, &pcm_hdr(code::PCM_PREPARE, 0)[..6], 4),
        Status::BadMsg
    );
    assert_eq!(
        status_of(&mut snd, &params(0).encode()[..20], 4),
        Status::BadMsg
    );
    assert_eq!(
        status_of(&mut snd, &query_info(code::PCM_INFO, 0, 1, 32)[..12], 36),
        Status::BadMsg
    );
    // No room for even a status: returned with nothing written.
    let r = snd.control(&pcm_hdr(code::PCM_PREPARE, 0), 2).unwrap();
    assert_eq!(r.used_len, 0);
    assert_eq!(r.violation, None);
    drop(snd);
    drop(d);
}

#[test]
fn stream_commands_for_unknown_streams_are_bad_msg() {
    let (_d, mut snd) = setup();
    let mut p = params(2);
    assert_eq!(set_params(&mut snd, p), Status::BadMsg);
    p.stream_id = u32::MAX;
    assert_eq!(set_params(&mut snd, p), Status::BadMsg);
    for c in [
        code::PCM_PREPARE,
        code::PCM_START,
        code::PCM_STOP,
        code::PCM_RELEASE,
    ] {
        assert_eq!(cmd(&mut snd, c, 2), Status::BadMsg);
        assert_eq!(cmd(&mut snd, c, u32::MAX), Status::BadMsg);
    }
}

#[test]
fn every_legal_transition_is_accepted() {
    let (_d, mut snd) = setup();
    for s in 0..2 {
        // The 12 legal (state, command) pairs, each at least once, including
        // every sequence Linux sends.
        assert_eq!(set_params(&mut snd, params(s)), Status::Ok); // Idle -> ParamsSet
        assert_eq!(set_params(&mut snd, params(s)), Status::Ok); // ParamsSet -> ParamsSet
        assert_eq!(cmd(&mut snd, code::PCM_PREPARE, s), Status::Ok); // ParamsSet -> Prepared
        assert_eq!(cmd(&mut snd, code::PCM_PREPARE, s), Status::Ok); // Prepared -> Prepared
        assert_eq!(set_params(&mut snd, params(s)), Status::Ok); // Prepared -> ParamsSet
        assert_eq!(cmd(&mut snd, code::PCM_PREPARE, s), Status::Ok);
        assert_eq!(cmd(&mut snd, code::PCM_START, s), Status::Ok); // Prepared -> Started
        assert_eq!(cmd(&mut snd, code::PCM_STOP, s), Status::Ok); // Started -> Stopped
        assert_eq!(cmd(&mut snd, code::PCM_START, s), Status::Ok); // Stopped -> Started
        assert_eq!(cmd(&mut snd, code::PCM_STOP, s), Status::Ok);
        assert_eq!(cmd(&mut snd, code::PCM_RELEASE, s), Status::Ok); // Stopped -> Released
        assert_eq!(cmd(&mut snd, code::PCM_PREPARE, s), Status::Ok); // Released -> Prepared
        assert_eq!(cmd(&mut snd, code::PCM_RELEASE, s), Status::Ok); // Prepared -> Released
        assert_eq!(set_params(&mut snd, params(s)), Status::Ok); // Released -> ParamsSet
    }
}

#[test]
fn illegal_transitions_are_bad_msg_and_change_nothing() {
    let (_d, mut snd) = setup();
    let s = 0;
    let bad = |snd: &mut SndDriver, c: u32, what: &str| {
        assert_eq!(cmd(snd, c, s), Status::BadMsg, "{what}");
    };
    // Idle (fresh device): only SET_PARAMS.
    bad(&mut snd, code::PCM_PREPARE, "PREPARE in Idle");
    bad(&mut snd, code::PCM_START, "START in Idle");
    bad(&mut snd, code::PCM_STOP, "STOP in Idle");
    bad(&mut snd, code::PCM_RELEASE, "RELEASE in Idle");
    assert_eq!(set_params(&mut snd, params(s)), Status::Ok);
    bad(&mut snd, code::PCM_START, "START in ParamsSet");
    bad(&mut snd, code::PCM_STOP, "STOP in ParamsSet");
    bad(&mut snd, code::PCM_RELEASE, "RELEASE in ParamsSet");
    assert_eq!(cmd(&mut snd, code::PCM_PREPARE, s), Status::Ok);
    bad(&mut snd, code::PCM_STOP, "STOP in Prepared");
    assert_eq!(cmd(&mut snd, code::PCM_START, s), Status::Ok);
    assert_eq!(
        set_params(&mut snd, params(s)),
        Status::BadMsg,
        "SET_PARAMS in Started"
    );
    bad(&mut snd, code::PCM_PREPARE, "PREPARE in Started");
    bad(&mut snd, code::PCM_START, "START in Started");
    bad(&mut snd, code::PCM_RELEASE, "RELEASE in Started");
    // Still Started: STOP is legal exactly once.
    assert_eq!(cmd(&mut snd, code::PCM_STOP, s), Status::Ok);
    bad(&mut snd, code::PCM_STOP, "STOP in Stopped");
    assert_eq!(
        set_params(&mut snd, params(s)),
        Status::BadMsg,
        "SET_PARAMS in Stopped"
    );
    bad(&mut snd, code::PCM_PREPARE, "PREPARE in Stopped");
    assert_eq!(cmd(&mut snd, code::PCM_RELEASE, s), Status::Ok);
    bad(&mut snd, code::PCM_START, "START in Released");
    bad(&mut snd, code::PCM_STOP, "STOP in Released");
    bad(&mut snd, code::PCM_RELEASE, "RELEASE in Released");
    // Still Released: PREPARE is legal.
    assert_eq!(cmd(&mut snd, code::PCM_PREPARE, s), Status::Ok);
}

#[test]
fn set_params_rejects_what_the_stream_does_not_advertise() {
    let (_d, mut snd) = setup();
    let ok = params(0);
    let cases: Vec<(&str, SetParams, Status)> = vec![
        (
            "period 0",
            SetParams {
                period_bytes: 0,
                ..ok
            },
            Status::BadMsg,
        ),
        (
            "buffer 0",
            SetParams {
                buffer_bytes: 0,
                ..ok
            },
            Status::BadMsg,
        ),
        (
            "period does not divide buffer",
            SetParams {
                buffer_bytes: 1920 * 4 + 4,
                ..ok
            },
            Status::BadMsg,
        ),
        (
            "period not whole frames",
            SetParams {
                period_bytes: 1922,
                buffer_bytes: 1922 * 4,
                ..ok
            },
            Status::BadMsg,
        ),
        (
            "padding not zero",
            SetParams { padding: 1, ..ok },
            Status::BadMsg,
        ),
        (
            "both SHMEM features",
            SetParams {
                features: 0b11,
                ..ok
            },
            Status::BadMsg,
        ),
        (
            "unadvertised format U8",
            SetParams {
                format: PcmFormat::U8.code(),
                ..ok
            },
            Status::NotSupp,
        ),
        (
            "undefined format 30",
            SetParams { format: 30, ..ok },
            Status::NotSupp,
        ),
        ("IMA ADPCM", SetParams { format: 0, ..ok }, Status::NotSupp),
        (
            "unadvertised rate 8000",
            SetParams {
                rate: PcmRate::R8000.code(),
                ..ok
            },
            Status::NotSupp,
        ),
        (
            "undefined rate 20",
            SetParams { rate: 20, ..ok },
            Status::NotSupp,
        ),
        (
            "0 channels",
            SetParams { channels: 0, ..ok },
            Status::NotSupp,
        ),
        (
            "3 channels",
            SetParams { channels: 3, ..ok },
            Status::NotSupp,
        ),
        (
            "MSG_POLLING not advertised",
            SetParams {
                features: 1 << pcm_feature::MSG_POLLING,
                ..ok
            },
            Status::NotSupp,
        ),
        (
            "undefined feature bit",
            SetParams {
                features: 1 << 20,
                ..ok
            },
            Status::NotSupp,
        ),
        (
            "buffer over 16 MiB",
            SetParams {
                buffer_bytes: 1920 * 10_000,
                ..ok
            },
            Status::NotSupp,
        ),
    ];
    for (what, p, want) in cases {
        assert_eq!(set_params(&mut snd, p), want, "{what}");
    }
    // A rejected SET_PARAMS changes nothing: still Idle, PREPARE is illegal.
    assert_eq!(cmd(&mut snd, code::PCM_PREPARE, 0), Status::BadMsg);
    // What is advertised is accepted, EVT_XRUNS included.
    let good = [
        SetParams {
            features: 1 << pcm_feature::EVT_XRUNS,
            ..ok
        },
        SetParams {
            channels: 1,
            period_bytes: 960,
            buffer_bytes: 3840,
            ..ok
        },
        SetParams {
            format: PcmFormat::Float.code(),
            rate: PcmRate::R96000.code(),
            period_bytes: 7680,
            buffer_bytes: 7680 * 2,
            ..ok
        },
        SetParams {
            format: PcmFormat::S24.code(),
            rate: PcmRate::R44100.code(),
            period_bytes: 3528,
            buffer_bytes: 3528 * 16,
            ..ok
        },
    ];
    for p in good {
        assert_eq!(set_params(&mut snd, p), Status::Ok, "{p:?}");
    }
}

#[test]
fn a_control_request_split_at_odd_offsets_is_understood() {
    let (_d, mut snd) = setup();
    let req = params(0).encode();
    let r = snd
        .control_split(&req, 4, &[1, 3, 7, 13, 21, 24 + 1, 24 + 3])
        .unwrap();
    assert_eq!(r.status(), Some(Status::Ok));
    assert_eq!(r.violation, None);
    let r = snd
        .control_split(
            &query_info(code::PCM_INFO, 0, 2, 32),
            4 + 64,
            &[5, 15, 16 + 2, 16 + 33, 16 + 67],
        )
        .unwrap();
    assert_eq!(r.status(), Some(Status::Ok));
    assert_eq!(r.used_len, 68);
    assert_eq!(r.response[4 + 24], 0, "stream 0 output");
    assert_eq!(r.response[4 + 32 + 24], 1, "stream 1 input");
}
