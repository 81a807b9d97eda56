//! The vhost-user glue: the only file that knows the device is served over
//! vhost-user. It maps the backend callbacks onto [`SoundDevice`] and
//! implements [`Virtqueue`] over `VringRwLock`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::constants::QueueIndex;
use crate::control::handle_control;
use crate::device::SoundDevice;
use crate::queue::{Chain, Mem, Virtqueue};

/// Queue size we accept at most.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// A vring as the device core sees it.
struct VringQueue {
    vring: VringRwLock,
    mem: GuestMemoryAtomic<Mem>,
}

impl Virtqueue for VringQueue {
    fn pop(&self) -> Option<Chain> {
        let mut state = self.vring.get_mut();
        let mem = self.mem.memory();
        state.get_queue_mut().pop_descriptor_chain(mem)
    }

    fn complete(&self, head: u16, len: u32) {
        let mut state = self.vring.get_mut();
        if let Err(e) = state.add_used(head, len) {
            log::warn!("cannot return descriptor {head}: {e}");
            return;
        }
        match state.needs_notification() {
            Ok(false) => {}
            Ok(true) | Err(_) => {
                if let Err(e) = state.signal_used_queue() {
                    log::warn!("cannot notify the guest: {e}");
                }
            }
        }
    }
}

/// The vhost-user backend of one connection.
pub struct VsoundBackend {
    device: Arc<SoundDevice>,
    mem: GuestMemoryAtomic<Mem>,
    event_idx: AtomicBool,
    exit: (EventConsumer, EventNotifier),
    queues_ready: OnceLock<()>,
}

impl VsoundBackend {
    pub fn new(device: Arc<SoundDevice>, mem: GuestMemoryAtomic<Mem>) -> io::Result<Self> {
        Ok(VsoundBackend {
            device,
            mem,
            event_idx: AtomicBool::new(false),
            exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK)?,
            queues_ready: OnceLock::new(),
        })
    }

    /// Hands the vrings to the device the first time they are seen.
    fn init_queues(&self, vrings: &[VringRwLock]) {
        self.queues_ready.get_or_init(|| {
            for (i, v) in vrings.iter().enumerate() {
                let Some(qi) = u16::try_from(i).ok().and_then(QueueIndex::from_index) else {
                    continue;
                };
                self.device.set_queue(
                    qi,
                    Arc::new(VringQueue {
                        vring: v.clone(),
                        mem: self.mem.clone(),
                    }),
                );
            }
        });
    }

    /// Pops every available chain of a kicked queue (the EVENT_IDX loop:
    /// notifications off while draining, back on, and drain again if the
    /// driver added more meanwhile).
    fn drain(&self, vring: &VringRwLock, mut handle: impl FnMut(Chain)) -> io::Result<()> {
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            loop {
                let chain = {
                    let mut state = vring.get_mut();
                    let mem = self.mem.memory();
                    state.get_queue_mut().pop_descriptor_chain(mem)
                };
                match chain {
                    Some(c) => handle(c),
                    None => break,
                }
            }
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        Ok(())
    }
}

impl VhostUserBackend for VsoundBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        QueueIndex::COUNT
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    /// `VIRTIO_SND_F_CTLS` is not offered while there are no controls:
    /// QEMU's vhost-user-snd passes the bit through even when its own config
    /// space is 12 bytes (`controls=off`), and a Linux guest then reads
    /// `controls` past the end, gets garbage, and fails its probe with
    /// -ENOMEM (seen with Linux 6.12 under QEMU 10.0).
    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            // Large periods (e.g. 120 KiB of 6-channel FLOAT at 96 kHz)
            // take one descriptor per page: without indirect tables four
            // of them do not fit in QEMU's 64-entry queues.
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        // QEMU sets the features each time the driver (re)starts the device:
        // a reloaded driver starts from a clean slate.
        log::debug!("features acked: {features:#x}");
        self.device.reset();
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.device.config_space();
        let bytes = cfg.as_slice();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start
            .saturating_add(usize::try_from(size).unwrap_or(0))
            .min(bytes.len());
        bytes
            .get(start..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // The config space is read-only for the driver (spec 5.14.4).
        log::warn!("driver wrote the read-only config space; ignored");
        Ok(())
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<Mem>) -> io::Result<()> {
        // `self.mem` is the same atomic the handler updates.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        self.init_queues(vrings);
        let queue = QueueIndex::from_index(device_event)
            .ok_or_else(|| io::Error::other(format!("unknown event {device_event}")))?;
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other("missing vring"))?;
        let dev = &self.device;
        match queue {
            QueueIndex::Control => {
                let Some(q) = dev.queue(QueueIndex::Control).cloned() else {
                    return Ok(());
                };
                self.drain(vring, |c| handle_control(dev, q.as_ref(), c))
            }
            QueueIndex::Event => {
                // Only take buffers when there is something to say.
                if let Some(q) = dev.queue(QueueIndex::Event) {
                    dev.shared.events.deliver(q.as_ref());
                }
                if self.event_idx.load(Ordering::Relaxed) {
                    vring.enable_notification().map_err(io::Error::other)?;
                }
                Ok(())
            }
            QueueIndex::Tx | QueueIndex::Rx => self.drain(vring, |c| dev.handle_io(queue, c)),
        }
    }
}

impl Drop for VsoundBackend {
    fn drop(&mut self) {
        let _ = self.exit.1.notify();
    }
}
