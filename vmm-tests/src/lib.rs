//! `vmm-tests`: plays both the VMM and the guest driver against a vhost-user
//! virtio-sound daemon, over its real Unix socket.
//!
//! - [`memory`]: memfd-backed guest memory shared with the daemon, with an allocator.
//! - [`virtqueue`]: a split virtqueue driver laid out in that memory.
//! - [`frontend`]: the vhost-user session ([`VhostUserSnd`]): negotiation, config,
//!   memory table and the four queues.
//! - [`snd`]: a typed virtio-snd driver ([`SndDriver`]), written from the spec.
//! - [`daemon`]: spawning the `vsound` binary for a test ([`Daemon`]).
//! - [`bench`](mod@bench): the `vsound-bench` load generator and its scenarios.
//!
//! A test typically does:
//!
//! ```no_run
//! use vmm_tests::{ConnectOptions, Daemon};
//!
//! let daemon = Daemon::spawn()?;
//! let mut snd = daemon.connect(&ConnectOptions::default())?;
//! let streams = snd.config().streams;
//! let infos = snd.pcm_info(0, streams)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod audio;
pub mod bench;
pub mod daemon;
pub mod frontend;
pub mod memory;
pub mod pipewire;
pub mod snd;
pub mod unprivileged;
pub mod virtqueue;
mod watchdog;

#[cfg(test)]
mod test_utils;

pub use daemon::{Daemon, DaemonOptions};
pub use frontend::{ConnectOptions, Queue, SndConfig, VhostUserSnd};
pub use memory::GuestMemory;
pub use snd::{IoCompletion, IoHandle, SndDriver, Status};
pub use virtqueue::{MessageHandle, Segment, UsedElem, Virtqueue};
