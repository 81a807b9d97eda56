//! vsound: a vhost-user virtio-sound daemon.
//!
//! - [`wire`], [`constants`]: the virtio-snd wire format.
//! - [`config`]: the TOML schema.
//! - [`stream`]: the PCM state machine; [`worker`]: a stream at run time.
//! - [`control`], [`io`], [`events`]: the queues' protocols; [`controls`]:
//!   volume and mute elements and the gain they apply.
//! - [`pacer`]: the real-time schedule.
//! - [`device`]: the device core, independent of the transport.
//! - [`hotplug`]: host devices coming and going; [`api`]: the management API;
//!   [`ctl`]: its client (`vsound ctl`).
//! - [`vhost_user`]: the vhost-user glue; [`daemon`]: the connection loop; [`cli`];
//!   [`manpages`]: `vsound generate man`.
//! - [`pad_tool`]: `vsound pad record`/`play`, clients of a pad device.
//! - [`sandbox`]: the seccomp allow-lists; [`signals`]: SIGTERM/SIGINT/SIGHUP;
//!   [`inherit`]: listening sockets handed over (`--socket-fd`, systemd).

pub mod api;
pub mod chain;
pub mod cli;
pub mod config;
pub mod constants;
pub mod control;
pub mod controls;
pub mod ctl;
pub mod daemon;
pub mod device;
pub mod device_clock;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub mod hangs;
pub mod hotplug;
pub mod inherit;
pub mod io;
pub mod manpages;
pub mod pacer;
pub mod pad_tool;
pub mod queue;
pub mod ratelimit;
pub mod reactor;
pub mod sandbox;
pub mod sigbus;
pub mod signals;
pub mod stream;
pub mod vhost_user;
pub mod wire;
pub mod worker;
