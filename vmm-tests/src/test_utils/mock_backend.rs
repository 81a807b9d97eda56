//! A minimal in-process vhost-user sound backend, so the frontend and driver can be
//! unit-tested without the real daemon. It is not a reference implementation: it
//! knows 2 streams (0 output, 1 input), answers PCM_INFO with range checks, OK to
//! every PCM command, turns JACK_REMAP into a JACK_CONNECTED event, completes tx at
//! once (latency = data bytes) and fills rx with zeros.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::frontend::{
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_SND_F_CTLS,
};
use crate::snd::constants::{code, event, status};

type Mem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// One descriptor: (address, length, device-writable).
type Desc = (u64, u32, bool);

struct MockBackend {
    mem: Mem,
    event_idx: bool,
    acked: Arc<AtomicU64>,
    pending_events: Vec<(u32, u32)>,
}

fn pcm_info(stream: u32) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[8] = 1 << 5; // S16
    b[16] = 1 << 7; // 48000
    b[24] = u8::from(stream == 1);
    b[25] = 1;
    b[26] = 2;
    b
}

impl MockBackend {
    fn gather(&self, descs: &[Desc]) -> Vec<u8> {
        let mem = self.mem.memory();
        let mut out = Vec::new();
        for &(addr, len, _) in descs.iter().filter(|d| !d.2) {
            let mut buf = vec![0u8; len as usize];
            mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
            out.extend(buf);
        }
        out
    }

    /// Scatters `data` at `offset` of the writable area.
    fn scatter(&self, descs: &[Desc], mut offset: usize, mut data: &[u8]) {
        let mem = self.mem.memory();
        for &(addr, len, _) in descs.iter().filter(|d| d.2) {
            let len = len as usize;
            if offset >= len {
                offset -= len;
                continue;
            }
            let n = (len - offset).min(data.len());
            mem.write_slice(&data[..n], GuestAddress(addr + offset as u64))
                .unwrap();
            data = &data[n..];
            offset = 0;
            if data.is_empty() {
                break;
            }
        }
    }

    fn control(&mut self, req: &[u8], room: usize) -> Vec<u8> {
        let word = |i: usize| {
            req.get(4 * i..4 * i + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let bad = status::BAD_MSG.to_le_bytes().to_vec();
        let mut ok = status::OK.to_le_bytes().to_vec();
        match (word(0), req.len()) {
            (Some(code::PCM_INFO), 16) => {
                let (start, count) = (word(1).unwrap(), word(2).unwrap());
                let fits = start.checked_add(count).is_some_and(|end| end <= 2);
                if !fits || room < 4 + 32 * count as usize {
                    return bad;
                }
                for s in start..start + count {
                    ok.extend(pcm_info(s));
                }
                ok
            }
            (Some(code::PCM_SET_PARAMS), 24) => ok,
            (Some(c), 8) if (code::PCM_PREPARE..=code::PCM_STOP).contains(&c) => ok,
            (Some(code::JACK_REMAP), 16) => {
                self.pending_events
                    .push((event::JACK_CONNECTED, word(1).unwrap()));
                ok
            }
            _ => bad,
        }
    }

    fn process(&mut self, index: usize, vrings: &[VringRwLock]) {
        let vring = &vrings[index];
        // A kick can arrive before the frontend has marked the queue ready
        // (the eventfd is set up first): nothing to do yet, the frontend
        // kicks again. Unwrapping here made this mock (not the daemon) race.
        let mut guard = vring.get_mut();
        let Ok(iter) = guard.get_queue_mut().iter(self.mem.memory()) else {
            return;
        };
        let chains: Vec<_> = iter.collect();
        drop(guard);
        for chain in chains {
            let head = chain.head_index();
            let descs: Vec<Desc> = chain
                .clone()
                .map(|d| (d.addr().0, d.len(), d.is_write_only()))
                .collect();
            let room: usize = descs.iter().filter(|d| d.2).map(|d| d.1 as usize).sum();
            let req = self.gather(&descs);
            let used = match index {
                0 => {
                    let resp = self.control(&req, room);
                    let n = resp.len().min(room);
                    self.scatter(&descs, 0, &resp[..n]);
                    n
                }
                2 => {
                    let latency = (req.len() as u32).saturating_sub(4);
                    let mut st = status::OK.to_le_bytes().to_vec();
                    st.extend(latency.to_le_bytes());
                    self.scatter(&descs, room.saturating_sub(8), &st);
                    8
                }
                3 => {
                    let data = room.saturating_sub(8);
                    self.scatter(&descs, 0, &vec![0u8; data]);
                    let mut st = status::OK.to_le_bytes().to_vec();
                    st.extend(0u32.to_le_bytes());
                    self.scatter(&descs, data, &st);
                    room
                }
                _ => unreachable!("eventq chains are popped by emit_events"),
            };
            vring.add_used(head, used as u32).unwrap();
        }
        self.signal(vring);
    }

    fn emit_events(&mut self, vrings: &[VringRwLock]) {
        let vring = &vrings[1];
        while !self.pending_events.is_empty() {
            let Some(chain) = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(self.mem.memory())
            else {
                break;
            };
            let (ty, data) = self.pending_events.remove(0);
            let descs: Vec<Desc> = chain
                .clone()
                .map(|d| (d.addr().0, d.len(), d.is_write_only()))
                .collect();
            let mut b = ty.to_le_bytes().to_vec();
            b.extend(data.to_le_bytes());
            self.scatter(&descs, 0, &b);
            vring.add_used(chain.head_index(), 8).unwrap();
        }
        self.signal(vring);
    }

    fn signal(&self, vring: &VringRwLock) {
        if !self.event_idx || vring.needs_notification().unwrap() {
            vring.signal_used_queue().unwrap();
        }
    }
}

impl VhostUserBackendMut for MockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        4
    }

    fn max_queue_size(&self) -> usize {
        256
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VHOST_USER_F_PROTOCOL_FEATURES
            | VIRTIO_SND_F_CTLS
    }

    fn acked_features(&mut self, features: u64) {
        self.acked.store(features, Ordering::SeqCst);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut cfg = [0u8; 16];
        cfg[4] = 2;
        let (o, s) = (offset as usize, size as usize);
        cfg.get(o..o + s).map_or_else(Vec::new, <[u8]>::to_vec)
    }

    fn update_memory(&mut self, mem: Mem) -> std::io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        match device_event {
            0 | 2 | 3 => self.process(usize::from(device_event), vrings),
            _ => {}
        }
        self.emit_events(vrings);
        Ok(())
    }
}

/// A mock daemon serving one connection on a socket in a temporary directory.
pub struct MockSnd {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    acked: Arc<AtomicU64>,
}

impl MockSnd {
    /// Starts serving; the thread ends when the frontend disconnects.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("mock.sock");
        let acked = Arc::new(AtomicU64::new(0));
        let backend = Arc::new(Mutex::new(MockBackend {
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            event_idx: false,
            acked: acked.clone(),
            pending_events: Vec::new(),
        }));
        let path = socket.clone();
        thread::spawn(move || {
            let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
            let mut daemon = VhostUserDaemon::new("mock-snd".into(), backend, mem).unwrap();
            if let Err(e) = daemon.serve(&path) {
                log::debug!("mock daemon: {e}");
            }
        });
        MockSnd {
            _dir: dir,
            socket,
            acked,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Features the frontend acked.
    pub fn acked_features(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }
}
