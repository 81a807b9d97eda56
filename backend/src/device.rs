//! The virtio-snd device core: streams, jacks and channel maps built from
//! the config, the queue handlers, and the stream workers.
//!
//! One [`SoundDevice`] serves one VMM connection; a new connection gets a
//! fresh one. It knows nothing of vhost-user: it is handed [`Virtqueue`]s.

use std::sync::Arc;
use std::thread::JoinHandle;

use vsound_devices::HostDevice;

use crate::config::Config;
use crate::constants::{standard_positions, Direction, QueueIndex, CHMAP_MAX_SIZE};
use crate::io::{self, IoMessage};
use crate::queue::Virtqueue;
use crate::stream::PcmState;
use crate::wire::{ChmapInfo, JackInfo, VirtioSndConfig};
use crate::worker::{Shared, StreamRuntime};

/// A jack: one per (host device, direction) that streams use.
#[derive(Clone, Debug)]
pub struct Jack {
    pub device: usize,
    pub direction: Direction,
    pub group: u32,
}

/// A channel map: one per (group, direction).
#[derive(Clone, Debug)]
pub struct Chmap {
    pub group: u32,
    pub direction: Direction,
    pub channels: u8,
}

/// Errors building the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("Cannot create stream {0}")]
    Stream(u32, #[source] std::io::Error),
    #[error("Cannot start the worker of stream {0}")]
    Spawn(u32, #[source] std::io::Error),
}

/// The device behind one VMM connection.
pub struct SoundDevice {
    pub streams: Vec<Arc<StreamRuntime>>,
    pub jacks: Vec<Jack>,
    pub chmaps: Vec<Chmap>,
    pub host_devices: Vec<(String, Arc<dyn HostDevice>)>,
    pub shared: Arc<Shared>,
    workers: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl SoundDevice {
    /// Builds the device and starts one worker per stream.
    pub fn new(
        config: &Config,
        host_devices: &[(String, Arc<dyn HostDevice>)],
    ) -> Result<SoundDevice, DeviceError> {
        let shared = Arc::new(Shared::new());
        let mut streams = Vec::new();
        let mut jacks: Vec<Jack> = Vec::new();
        let mut chmaps: Vec<Chmap> = Vec::new();
        for (id, sc) in config.streams.iter().enumerate() {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            let (name, dev) = host_devices
                .get(sc.device)
                .cloned()
                .unwrap_or_else(|| ("null".into(), Arc::new(vsound_devices::null::NullDevice)));
            let rt = StreamRuntime::new(id, sc.clone(), dev, name, shared.clone())
                .map_err(|e| DeviceError::Stream(id, e))?;
            streams.push(Arc::new(rt));
            if !jacks
                .iter()
                .any(|j| j.device == sc.device && j.direction == sc.direction)
            {
                jacks.push(Jack {
                    device: sc.device,
                    direction: sc.direction,
                    group: sc.group,
                });
            }
            match chmaps
                .iter_mut()
                .find(|c| c.group == sc.group && c.direction == sc.direction)
            {
                Some(c) => c.channels = c.channels.max(sc.channels_max),
                None => chmaps.push(Chmap {
                    group: sc.group,
                    direction: sc.direction,
                    channels: sc.channels_max,
                }),
            }
        }
        let mut workers = Vec::new();
        for s in &streams {
            let s2 = s.clone();
            let h = std::thread::Builder::new()
                .name(format!("vsound-s{}", s.id))
                .spawn(move || s2.run())
                .map_err(|e| DeviceError::Spawn(s.id, e))?;
            workers.push(h);
        }
        Ok(SoundDevice {
            streams,
            jacks,
            chmaps,
            host_devices: host_devices.to_vec(),
            shared,
            workers: std::sync::Mutex::new(workers),
        })
    }

    /// The config space (spec 5.14.4).
    pub fn config_space(&self) -> VirtioSndConfig {
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX).into();
        VirtioSndConfig {
            jacks: n(self.jacks.len()),
            streams: n(self.streams.len()),
            chmaps: n(self.chmaps.len()),
            controls: 0.into(),
        }
    }

    /// Hands the device its queues (once per connection).
    pub fn set_queue(&self, index: QueueIndex, queue: Arc<dyn Virtqueue>) {
        if let Some(slot) = self.shared.queues.get(index as usize) {
            let _ = slot.set(queue);
        }
    }

    pub fn queue(&self, index: QueueIndex) -> Option<&Arc<dyn Virtqueue>> {
        self.shared.queue(index)
    }

    /// The jack info of jack `id`.
    pub fn jack_info(&self, jack: &Jack) -> JackInfo {
        // HDA pin default configuration (HDA spec 7.3.3.31): port
        // connectivity "jack" (0), location external/rear, device LineOut
        // (0) or LineIn (8), connection 1/8" (1), colour black/green/pink,
        // association 1, sequence 0.
        let (device, color) = match jack.direction {
            Direction::Output => (0x0u32, 0x4u32),
            Direction::Input => (0x8, 0x9),
        };
        let defconf = (0x01 << 24) | (device << 20) | (0x1 << 16) | (color << 12) | (1 << 4);
        let attached = self
            .host_devices
            .get(jack.device)
            .is_some_and(|(_, d)| d.is_attached());
        JackInfo {
            hda_fn_nid: jack.group.into(),
            features: 0.into(),
            hda_reg_defconf: defconf.into(),
            // Presence detect capable (HDA pin capabilities bit 2).
            hda_reg_caps: (1u32 << 2).into(),
            connected: u8::from(attached),
            padding: [0; 7],
        }
    }

    pub fn chmap_info(&self, c: &Chmap) -> ChmapInfo {
        ChmapInfo {
            hda_fn_nid: c.group.into(),
            direction: c.direction.code(),
            channels: c.channels.min(CHMAP_MAX_SIZE as u8),
            positions: standard_positions(c.channels),
        }
    }

    /// Handles one tx or rx message: queue it on its stream, or refuse it
    /// with IO_ERR at once (unknown stream, wrong queue, not prepared).
    pub fn handle_io(&self, queue: QueueIndex, chain: crate::queue::Chain) {
        let dir = match queue {
            QueueIndex::Tx => Direction::Output,
            QueueIndex::Rx => Direction::Input,
            _ => return,
        };
        let Some(q) = self.queue(queue) else {
            return;
        };
        let (stream_id, msg) = match IoMessage::parse(chain, dir) {
            Ok(x) => x,
            Err(refused) => return io::refuse(q.as_ref(), refused),
        };
        let stream = usize::try_from(stream_id)
            .ok()
            .and_then(|i| self.streams.get(i));
        let Some(stream) = stream.filter(|s| s.direction() == dir) else {
            log::debug!(
                "{} message for stream {stream_id}: not a stream of this queue",
                dir.name()
            );
            return msg.complete(q.as_ref(), dir, crate::constants::Status::IoErr, 0, 0);
        };
        if msg.payload() == 0 {
            return msg.complete(q.as_ref(), dir, crate::constants::Status::IoErr, 0, 0);
        }
        let mut inner = stream.lock();
        if !inner.state.accepts_io() {
            drop(inner);
            log::debug!("stream {stream_id}: I/O refused in this state");
            return msg.complete(q.as_ref(), dir, crate::constants::Status::IoErr, 0, 0);
        }
        inner.pending.push_back(msg);
    }

    /// Forgets every stream's state after a device reset (driver reload):
    /// the rings are being reset, so held buffers are dropped, not returned.
    pub fn reset(&self) {
        for s in &self.streams {
            let mut inner = s.lock_idle();
            if inner.state != PcmState::Idle {
                log::debug!("stream {}: {} -> Idle (device reset)", s.id, inner.state);
            }
            let held: Vec<IoMessage> = StreamRuntime::take_all(&mut inner).collect();
            inner.state = PcmState::Idle;
            inner.negotiated = None;
            inner.schedule = None;
            inner.endpoint = crate::worker::Endpoint::None;
            drop(inner);
            drop(held);
            s.wake();
        }
    }

    /// Stops every worker and closes every endpoint (end of connection).
    pub fn shutdown(&self) {
        for s in &self.streams {
            let mut inner = s.lock_idle();
            inner.quit = true;
            let _ = StreamRuntime::take_all(&mut inner).count();
            inner.endpoint = crate::worker::Endpoint::None;
            drop(inner);
            s.wake();
        }
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for SoundDevice {
    fn drop(&mut self) {
        self.shutdown();
    }
}
