//! The VMM side: a vhost-user frontend for a virtio-sound (device 25) daemon.
//!
//! [`VhostUserSnd::connect`] performs the same sequence QEMU's `vhost-user-snd`
//! does: SET_OWNER, feature and protocol-feature negotiation, GET_QUEUE_NUM,
//! GET_CONFIG, SET_FEATURES, SET_MEM_TABLE (the memfd), then for each of the four
//! queues SET_VRING_NUM / BASE / ADDR / CALL / KICK and SET_VRING_ENABLE.
//!
//! The ring lifecycle QEMU drives without disconnecting is available too:
//! [`VhostUserSnd::stop_rings`] (VM pause), [`VhostUserSnd::restart_rings`]
//! (resume) and [`VhostUserSnd::reinit_rings`] (device reset). Tests of hostile
//! frontends stop after negotiation with [`VhostUserSnd::connect_negotiated`]
//! and send the rest themselves.

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

use crate::memory::{self, GuestMemory, DEFAULT_MEMORY_SIZE};
use crate::virtqueue::{self, Virtqueue, DEFAULT_QUEUE_SIZE};
use crate::watchdog::Watchdog;

/// `VIRTIO_F_VERSION_1`.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_SND_F_CTLS`: the device supports control elements.
pub const VIRTIO_SND_F_CTLS: u64 = 1 << 0;

/// Number of virtio-snd queues.
pub const NUM_QUEUES: usize = 4;
/// Config space size without CTLS (jacks, streams, chmaps).
pub const CONFIG_SIZE: u32 = 12;
/// Config space size with CTLS (jacks, streams, chmaps, controls).
pub const CONFIG_SIZE_CTLS: u32 = 16;

/// The four virtio-snd queues (virtio-snd §1.B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Queue {
    /// 0: control requests.
    Control = 0,
    /// 1: device notifications.
    Event = 1,
    /// 2: playback I/O.
    Tx = 2,
    /// 3: capture I/O.
    Rx = 3,
}

impl Queue {
    /// All queues, by index.
    pub const ALL: [Queue; NUM_QUEUES] = [Queue::Control, Queue::Event, Queue::Tx, Queue::Rx];

    /// The queue's index.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Queue::Control => "controlq",
            Queue::Event => "eventq",
            Queue::Tx => "txq",
            Queue::Rx => "rxq",
        };
        f.write_str(name)
    }
}

/// Errors of the frontend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be connected before the timeout.
    #[error("Could not connect to {path} within {timeout:?}")]
    Connect {
        /// Socket path.
        path: String,
        /// Time spent retrying.
        timeout: Duration,
        /// Last connect error.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed.
    #[error("vhost-user {request} failed")]
    Request {
        /// The request that failed.
        request: &'static str,
        /// Underlying error.
        #[source]
        source: vhost::Error,
    },
    /// The daemon does not offer a feature the frontend needs.
    #[error("Daemon does not offer {name} (offered {offered:#x})")]
    MissingFeature {
        /// Feature name.
        name: &'static str,
        /// Features offered.
        offered: u64,
    },
    /// The daemon has fewer queues than virtio-snd needs.
    #[error("Daemon reports {0} queues, virtio-snd needs 4")]
    TooFewQueues(u64),
    /// The config space reply has the wrong size.
    #[error("Config space reply is {got} bytes, expected {expected}")]
    ConfigSize {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The frontend was already disconnected.
    #[error("Already disconnected")]
    Disconnected,
    /// The daemon did not answer in time; the watchdog closed the socket.
    #[error("Daemon did not answer within {timeout:?}")]
    Hung {
        /// The request timeout.
        timeout: Duration,
        /// The error the pending request failed with.
        #[source]
        source: Box<Error>,
    },
    /// The watchdog thread could not be started.
    #[error("Failed to start the watchdog")]
    Watchdog(#[source] io::Error),
    /// Guest memory setup failed.
    #[error("Guest memory error")]
    Memory(#[from] memory::Error),
    /// Virtqueue setup failed.
    #[error("Virtqueue error")]
    Virtqueue(#[from] virtqueue::Error),
    /// GET_VRING_BASE answered a value that is not a split ring index.
    #[error("GET_VRING_BASE({index}) answered {base:#x}, not a 16-bit index")]
    BadVringBase {
        /// The ring.
        index: usize,
        /// The value answered.
        base: u32,
    },
    /// `restart_rings` was given the wrong number of bases.
    #[error("{got} ring bases given for {expected} rings")]
    BadBases {
        /// Bases given.
        got: usize,
        /// Rings set up.
        expected: usize,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

fn req(request: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Request { request, source }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Size of every queue.
    pub queue_size: u16,
    /// Size of the guest memory.
    pub memory_size: usize,
    /// Ack `VIRTIO_SND_F_CTLS` if offered (the config space is then 16 bytes).
    pub ctls: bool,
    /// Ack `VIRTIO_RING_F_EVENT_IDX` if offered.
    pub event_idx: bool,
    /// Negotiate `REPLY_ACK` if offered, and ask for a reply to every request.
    pub reply_ack: bool,
    /// Ack exactly these virtio features instead of the computed set (for tests of
    /// bad feature acks).
    pub features_override: Option<u64>,
    /// How long to retry connecting while the socket does not exist or refuses.
    pub connect_timeout: Duration,
    /// Longest a vhost-user exchange may take (the whole handshake counts as one)
    /// before a watchdog shuts the socket down, so a hung daemon fails the test
    /// instead of hanging it; `None` waits forever.
    pub request_timeout: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            queue_size: DEFAULT_QUEUE_SIZE,
            memory_size: DEFAULT_MEMORY_SIZE,
            ctls: false,
            event_idx: true,
            reply_ack: true,
            features_override: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(5)),
        }
    }
}

/// The virtio-snd config space (virtio-snd §1.A).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SndConfig {
    /// Number of jacks.
    pub jacks: u32,
    /// Number of PCM streams.
    pub streams: u32,
    /// Number of channel maps.
    pub chmaps: u32,
    /// Number of control elements; `None` when CTLS was not negotiated.
    pub controls: Option<u32>,
}

impl SndConfig {
    /// Parses a 12- or 16-byte config space.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<u32> {
            let b = bytes.get(4 * i..4 * i + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        match bytes.len() {
            12 | 16 => Some(SndConfig {
                jacks: word(0)?,
                streams: word(1)?,
                chmaps: word(2)?,
                controls: word(3),
            }),
            _ => None,
        }
    }
}

/// A connected virtio-snd device: vhost-user session, guest memory and queues.
pub struct VhostUserSnd {
    frontend: Option<Frontend>,
    /// A handle on the socket to close it for sure on disconnect (the
    /// watchdog holds another clone, so dropping the frontend alone would
    /// leave the connection open).
    sock: UnixStream,
    watchdog: Watchdog,
    request_timeout: Option<Duration>,
    memory: Arc<GuestMemory>,
    queues: Vec<Virtqueue>,
    config: SndConfig,
    device_features: u64,
    acked_features: u64,
    protocol_features: VhostUserProtocolFeatures,
    acked_protocol_features: VhostUserProtocolFeatures,
}

impl fmt::Debug for VhostUserSnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VhostUserSnd")
            .field("connected", &self.frontend.is_some())
            .field("config", &self.config)
            .field(
                "device_features",
                &format_args!("{:#x}", self.device_features),
            )
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features),
            )
            .field("protocol_features", &self.protocol_features)
            .finish_non_exhaustive()
    }
}

impl VhostUserSnd {
    /// Connects to the daemon at `socket_path` and brings up all four queues.
    ///
    /// Retries for `opts.connect_timeout` while the socket is missing or refuses.
    pub fn connect(socket_path: impl AsRef<Path>, opts: &ConnectOptions) -> Result<Self> {
        Self::open(socket_path.as_ref(), opts, true)
    }

    /// Connects and negotiates (SET_OWNER up to SET_FEATURES, as
    /// [`VhostUserSnd::connect`] does) but sends no memory table and sets up
    /// no queue: for tests that send their own (see
    /// [`VhostUserSnd::with_frontend`]), or finish with
    /// [`VhostUserSnd::send_mem_table`] and [`VhostUserSnd::setup_rings`].
    /// The guest memory (`opts.memory_size`) is allocated but not sent.
    pub fn connect_negotiated(
        socket_path: impl AsRef<Path>,
        opts: &ConnectOptions,
    ) -> Result<Self> {
        Self::open(socket_path.as_ref(), opts, false)
    }

    fn open(socket_path: &Path, opts: &ConnectOptions, set_up: bool) -> Result<Self> {
        let sock = connect_retry(socket_path, opts.connect_timeout)?;
        let watchdog =
            Watchdog::new(sock.try_clone().map_err(Error::Watchdog)?).map_err(Error::Watchdog)?;
        let memory = Arc::new(GuestMemory::new(opts.memory_size)?);
        let own = sock.try_clone().map_err(Error::Watchdog)?;
        let mut dev = VhostUserSnd {
            frontend: Some(Frontend::from_stream(sock, NUM_QUEUES as u64)),
            sock: own,
            watchdog,
            request_timeout: opts.request_timeout,
            memory,
            queues: Vec::with_capacity(NUM_QUEUES),
            config: SndConfig::default(),
            device_features: 0,
            acked_features: 0,
            protocol_features: VhostUserProtocolFeatures::empty(),
            acked_protocol_features: VhostUserProtocolFeatures::empty(),
        };
        // The whole handshake is one exchange for the watchdog.
        let armed = dev.watchdog.arm(dev.request_timeout);
        let mut result = dev.negotiate(opts);
        if set_up {
            result = result
                .and_then(|()| dev.send_mem_table_unguarded())
                .and_then(|()| dev.setup_rings_unguarded(opts.queue_size));
        }
        drop(armed);
        result.map_err(|e| dev.explain(e))?;
        Ok(dev)
    }

    /// Turns an error caused by the watchdog into [`Error::Hung`].
    fn explain(&self, e: Error) -> Error {
        match self.request_timeout {
            Some(timeout) if self.watchdog.fired() => Error::Hung {
                timeout,
                source: Box::new(e),
            },
            _ => e,
        }
    }

    /// Runs `f` on the raw frontend under the watchdog; `request` names it in errors.
    pub fn with_frontend<T>(
        &mut self,
        request: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        let mut fe = self.frontend.clone().ok_or(Error::Disconnected)?;
        let armed = self.watchdog.arm(self.request_timeout);
        let result = f(&mut fe).map_err(req(request));
        drop(armed);
        result.map_err(|e| self.explain(e))
    }

    fn negotiate(&mut self, opts: &ConnectOptions) -> Result<()> {
        let mut fe = self.frontend.clone().ok_or(Error::Disconnected)?;
        fe.set_owner().map_err(req("SET_OWNER"))?;
        let offered = fe.get_features().map_err(req("GET_FEATURES"))?;
        self.device_features = offered;
        for (bit, name) in [
            (VIRTIO_F_VERSION_1, "VIRTIO_F_VERSION_1"),
            (
                VHOST_USER_F_PROTOCOL_FEATURES,
                "VHOST_USER_F_PROTOCOL_FEATURES",
            ),
        ] {
            if offered & bit == 0 {
                return Err(Error::MissingFeature { name, offered });
            }
        }

        let proto = fe
            .get_protocol_features()
            .map_err(req("GET_PROTOCOL_FEATURES"))?;
        self.protocol_features = proto;
        if !proto.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::MissingFeature {
                name: "VHOST_USER_PROTOCOL_F_CONFIG",
                offered: proto.bits(),
            });
        }
        let mut want = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ;
        if opts.reply_ack {
            want |= VhostUserProtocolFeatures::REPLY_ACK;
        }
        let acked_proto = proto & want;
        fe.set_protocol_features(acked_proto)
            .map_err(req("SET_PROTOCOL_FEATURES"))?;
        self.acked_protocol_features = acked_proto;
        if acked_proto.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if acked_proto.contains(VhostUserProtocolFeatures::MQ) {
            let n = fe.get_queue_num().map_err(req("GET_QUEUE_NUM"))?;
            if n < NUM_QUEUES as u64 {
                return Err(Error::TooFewQueues(n));
            }
        }

        let mut acked = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
        if opts.event_idx {
            acked |= offered & VIRTIO_RING_F_EVENT_IDX;
        }
        if opts.ctls {
            acked |= offered & VIRTIO_SND_F_CTLS;
        }
        let acked = opts.features_override.unwrap_or(acked);

        // QEMU reads the config at realize, before the features are set; the size
        // follows what the frontend is about to ack.
        let size = if acked & VIRTIO_SND_F_CTLS != 0 {
            CONFIG_SIZE_CTLS
        } else {
            CONFIG_SIZE
        };
        let buf = vec![0u8; size as usize];
        let (_, bytes) = fe
            .get_config(0, size, VhostUserConfigFlags::empty(), &buf)
            .map_err(req("GET_CONFIG"))?;
        self.config = SndConfig::parse(&bytes).ok_or(Error::ConfigSize {
            got: bytes.len(),
            expected: size as usize,
        })?;
        if size == CONFIG_SIZE {
            self.config.controls = None;
        }

        fe.set_features(acked).map_err(req("SET_FEATURES"))?;
        self.acked_features = acked;
        Ok(())
    }

    /// The memory table entry describing the whole guest memory.
    pub fn memory_region(&self) -> VhostUserMemoryRegionInfo {
        VhostUserMemoryRegionInfo {
            guest_phys_addr: self.memory.base(),
            memory_size: self.memory.size() as u64,
            userspace_addr: self.memory.host_base(),
            mmap_offset: 0,
            mmap_handle: self.memory.fd(),
        }
    }

    /// Sends SET_MEM_TABLE with [`VhostUserSnd::memory_region`].
    pub fn send_mem_table(&mut self) -> Result<()> {
        let armed = self.watchdog.arm(self.request_timeout);
        let result = self.send_mem_table_unguarded();
        drop(armed);
        result.map_err(|e| self.explain(e))
    }

    fn send_mem_table_unguarded(&mut self) -> Result<()> {
        let fe = self.frontend.clone().ok_or(Error::Disconnected)?;
        fe.set_mem_table(&[self.memory_region()])
            .map_err(req("SET_MEM_TABLE"))?;
        Ok(())
    }

    /// Lays out four fresh queues of `queue_size` entries in the guest memory
    /// and hands each to the daemon (SET_VRING_NUM / BASE 0 / ADDR / CALL /
    /// KICK), then enables them all, as [`VhostUserSnd::connect`] does.
    pub fn setup_rings(&mut self, queue_size: u16) -> Result<()> {
        let armed = self.watchdog.arm(self.request_timeout);
        let result = self.setup_rings_unguarded(queue_size);
        drop(armed);
        result.map_err(|e| self.explain(e))
    }

    fn setup_rings_unguarded(&mut self, queue_size: u16) -> Result<()> {
        let mut fe = self.frontend.clone().ok_or(Error::Disconnected)?;
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        for index in 0..NUM_QUEUES {
            let mut q = Virtqueue::new(self.memory.clone(), queue_size)?;
            q.set_event_idx(event_idx)?;
            fe.set_vring_num(index, queue_size)
                .map_err(req("SET_VRING_NUM"))?;
            fe.set_vring_base(index, 0).map_err(req("SET_VRING_BASE"))?;
            fe.set_vring_addr(index, &self.vring_config(&q)?)
                .map_err(req("SET_VRING_ADDR"))?;
            fe.set_vring_call(index, q.call_fd())
                .map_err(req("SET_VRING_CALL"))?;
            fe.set_vring_kick(index, q.kick_fd())
                .map_err(req("SET_VRING_KICK"))?;
            self.queues.push(q);
        }
        for index in 0..NUM_QUEUES {
            fe.set_vring_enable(index, true)
                .map_err(req("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// The SET_VRING_ADDR payload of `q` (vring addresses are in the
    /// frontend's address space).
    pub fn vring_config(&self, q: &Virtqueue) -> Result<VringConfigData> {
        Ok(VringConfigData {
            queue_max_size: q.size(),
            queue_size: q.size(),
            flags: 0,
            desc_table_addr: self.memory.host_address(q.desc_table())?,
            used_ring_addr: self.memory.host_address(q.used_ring())?,
            avail_ring_addr: self.memory.host_address(q.avail_ring())?,
            log_addr: None,
        })
    }

    /// Stops every vring as QEMU does when the VM is paused (`stop`):
    /// GET_VRING_BASE on each of the four, in order. Returns the bases the
    /// daemon answered (its next available index per ring). The session and
    /// the queues stay as they are, for [`VhostUserSnd::restart_rings`] or
    /// [`VhostUserSnd::reinit_rings`].
    pub fn stop_rings(&mut self) -> Result<Vec<u16>> {
        let fe = self.frontend.clone().ok_or(Error::Disconnected)?;
        let armed = self.watchdog.arm(self.request_timeout);
        let result = (0..NUM_QUEUES)
            .map(|index| {
                let base = fe.get_vring_base(index).map_err(req("GET_VRING_BASE"))?;
                // A split ring's index is 16 bits; the upper half must be 0.
                u16::try_from(base).map_err(|_| Error::BadVringBase { index, base })
            })
            .collect::<Result<Vec<u16>>>();
        drop(armed);
        result.map_err(|e| self.explain(e))
    }

    /// Restarts the vrings stopped by [`VhostUserSnd::stop_rings`] as QEMU
    /// does when the VM resumes (`cont`, `vhost_dev_start`): SET_FEATURES
    /// (the features acked at connect), SET_MEM_TABLE (the same memory), then
    /// for each ring SET_VRING_NUM, SET_VRING_BASE (`bases[i]`, the value
    /// GET_VRING_BASE returned), SET_VRING_ADDR, SET_VRING_KICK and
    /// SET_VRING_CALL with the same ring memory and eventfds, and finally
    /// SET_VRING_ENABLE on each. The driver side of the queues is untouched.
    pub fn restart_rings(&mut self, bases: &[u16]) -> Result<()> {
        if bases.len() != self.queues.len() {
            return Err(Error::BadBases {
                got: bases.len(),
                expected: self.queues.len(),
            });
        }
        let armed = self.watchdog.arm(self.request_timeout);
        let result = self.start_rings_unguarded(bases);
        drop(armed);
        result.map_err(|e| self.explain(e))
    }

    /// Re-initialises the vrings from scratch, as a rebooting guest does
    /// after [`VhostUserSnd::stop_rings`] (device reset, then the driver sets
    /// the device up again): four fresh queues in newly allocated ring
    /// memory, with new eventfds and every index at 0, handed over with
    /// SET_FEATURES, SET_MEM_TABLE, SET_VRING_NUM / BASE 0 / ADDR / KICK /
    /// CALL and SET_VRING_ENABLE. Returns the old queues, whose memory stays
    /// allocated (nothing reuses it), so a test can check that the daemon no
    /// longer writes there.
    pub fn reinit_rings(&mut self) -> Result<Vec<Virtqueue>> {
        let size = self
            .queues
            .first()
            .map_or(DEFAULT_QUEUE_SIZE, Virtqueue::size);
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut fresh = Vec::with_capacity(NUM_QUEUES);
        for _ in 0..NUM_QUEUES {
            let mut q = Virtqueue::new(self.memory.clone(), size)?;
            q.set_event_idx(event_idx)?;
            fresh.push(q);
        }
        let old = std::mem::replace(&mut self.queues, fresh);
        let armed = self.watchdog.arm(self.request_timeout);
        let result = self.start_rings_unguarded(&[0; NUM_QUEUES]);
        drop(armed);
        result.map_err(|e| self.explain(e))?;
        Ok(old)
    }

    fn start_rings_unguarded(&mut self, bases: &[u16]) -> Result<()> {
        let mut fe = self.frontend.clone().ok_or(Error::Disconnected)?;
        fe.set_features(self.acked_features)
            .map_err(req("SET_FEATURES"))?;
        fe.set_mem_table(&[self.memory_region()])
            .map_err(req("SET_MEM_TABLE"))?;
        for (index, (q, &base)) in self.queues.iter().zip(bases).enumerate() {
            fe.set_vring_num(index, q.size())
                .map_err(req("SET_VRING_NUM"))?;
            fe.set_vring_base(index, base)
                .map_err(req("SET_VRING_BASE"))?;
            fe.set_vring_addr(index, &self.vring_config(q)?)
                .map_err(req("SET_VRING_ADDR"))?;
            fe.set_vring_kick(index, q.kick_fd())
                .map_err(req("SET_VRING_KICK"))?;
            fe.set_vring_call(index, q.call_fd())
                .map_err(req("SET_VRING_CALL"))?;
        }
        for index in 0..self.queues.len() {
            fe.set_vring_enable(index, true)
                .map_err(req("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for the daemon to close the connection (end of
    /// file on the socket); returns whether it did. Unread bytes from the
    /// daemon are not an end of file.
    pub fn wait_peer_closed(&self, timeout: Duration) -> bool {
        wait_eof(&self.sock, timeout)
    }

    /// Reads `size` bytes of config space at `offset` (VHOST_USER_GET_CONFIG).
    pub fn read_config(&mut self, offset: u32, size: u32) -> Result<Vec<u8>> {
        let buf = vec![0u8; size as usize];
        let (_, data) = self.with_frontend("GET_CONFIG", |fe| {
            fe.get_config(offset, size, VhostUserConfigFlags::empty(), &buf)
        })?;
        Ok(data)
    }

    /// Writes config space (VHOST_USER_SET_CONFIG); the daemon should ignore it.
    pub fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        self.with_frontend("SET_CONFIG", |fe| {
            fe.set_config(offset, VhostUserConfigFlags::empty(), data)
        })
    }

    /// The config space read at connect time.
    pub fn config(&self) -> &SndConfig {
        &self.config
    }

    /// Virtio features the daemon offered.
    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    /// Virtio features the frontend acked.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Protocol features the daemon offered.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Protocol features the frontend acked.
    pub fn acked_protocol_features(&self) -> VhostUserProtocolFeatures {
        self.acked_protocol_features
    }

    /// The guest memory shared with the daemon.
    pub fn memory(&self) -> &Arc<GuestMemory> {
        &self.memory
    }

    /// A queue.
    pub fn queue(&self, q: Queue) -> &Virtqueue {
        &self.queues[q.index()]
    }

    /// A queue, mutably.
    pub fn queue_mut(&mut self, q: Queue) -> &mut Virtqueue {
        &mut self.queues[q.index()]
    }

    /// The raw vhost-user frontend, for tests that send unusual requests. Calls made
    /// through it are not covered by the watchdog: prefer
    /// [`VhostUserSnd::with_frontend`].
    pub fn frontend(&self) -> Option<&Frontend> {
        self.frontend.as_ref()
    }

    /// Whether the session is still open.
    pub fn is_connected(&self) -> bool {
        self.frontend.is_some()
    }

    /// Stops every vring (GET_VRING_BASE, as QEMU does on stop) and closes the
    /// socket. Returns the first error; the socket is closed in any case.
    pub fn disconnect(&mut self) -> Result<()> {
        let fe = self.frontend.take().ok_or(Error::Disconnected)?;
        let armed = self.watchdog.arm(self.request_timeout);
        let mut result = Ok(());
        for index in 0..NUM_QUEUES {
            if let Err(e) = fe.get_vring_base(index) {
                log::debug!("GET_VRING_BASE({index}) on disconnect failed: {e}");
                if result.is_ok() {
                    result = Err(Error::Request {
                        request: "GET_VRING_BASE",
                        source: e,
                    });
                }
            }
        }
        drop(armed);
        drop(fe);
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        result.map_err(|e| self.explain(e))
    }
}

impl Drop for VhostUserSnd {
    fn drop(&mut self) {
        if self.frontend.is_some() {
            if let Err(e) = self.disconnect() {
                log::debug!("Disconnect on drop: {e}");
            }
        }
    }
}

fn connect_retry(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(sock) => return Ok(sock),
            // The socket may not exist yet, or not be listening yet.
            Err(e) if Instant::now() < deadline => {
                log::trace!("connect {}: {e}, retrying", path.display());
                thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(Error::Connect {
                    path: path.display().to_string(),
                    timeout,
                    source,
                })
            }
        }
    }
}

/// Waits up to `timeout` for end of file on `sock` (the peer closed it).
fn wait_eof(sock: &UnixStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `pfd` is a valid pollfd that outlives the call, and the count is 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
        if rc > 0 {
            if pfd.revents & (libc::POLLHUP | libc::POLLRDHUP | libc::POLLERR) != 0 {
                return true;
            }
            let mut byte = 0u8;
            // SAFETY: `byte` is a valid one-byte buffer that outlives the call.
            let n = unsafe {
                libc::recv(
                    sock.as_raw_fd(),
                    (&mut byte as *mut u8).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n == 0 {
                return true;
            }
            // Bytes from the daemon are waiting: not closed; do not spin on them.
            if n > 0 {
                thread::sleep(Duration::from_millis(10));
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::test_utils::mock_backend::MockSnd;

    #[test]
    fn config_parses_12_and_16_bytes() {
        let mut b = vec![1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0];
        assert_eq!(
            SndConfig::parse(&b),
            Some(SndConfig {
                jacks: 1,
                streams: 2,
                chmaps: 3,
                controls: None
            })
        );
        b.extend([4, 0, 0, 0]);
        assert_eq!(SndConfig::parse(&b).unwrap().controls, Some(4));
        assert_eq!(SndConfig::parse(&b[..8]), None);
    }

    #[test]
    fn connect_negotiates_and_sets_up_all_queues() {
        let mock = MockSnd::start();
        let mut dev = VhostUserSnd::connect(mock.socket(), &ConnectOptions::default()).unwrap();
        assert_eq!(dev.config().streams, 2);
        assert_eq!(dev.config().controls, None);
        assert_eq!(
            dev.acked_features(),
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VHOST_USER_F_PROTOCOL_FEATURES
        );
        assert!(dev
            .acked_protocol_features()
            .contains(VhostUserProtocolFeatures::REPLY_ACK));
        assert!(dev.queue(Queue::Tx).event_idx());
        assert_eq!(mock.acked_features(), dev.acked_features());
        dev.disconnect().unwrap();
        assert!(matches!(dev.disconnect(), Err(Error::Disconnected)));
    }

    #[test]
    fn rings_stopped_then_restarted_or_reinitialised_keep_serving() {
        let mock = MockSnd::start();
        let dev = VhostUserSnd::connect(mock.socket(), &ConnectOptions::default()).unwrap();
        let mut snd = crate::snd::SndDriver::new(dev);
        assert_eq!(snd.pcm_info(0, 2).unwrap().len(), 2);
        let bases = snd.dev_mut().stop_rings().unwrap();
        // One control request so far.
        assert_eq!(bases, vec![1, 0, 0, 0]);
        snd.dev_mut().restart_rings(&bases).unwrap();
        assert_eq!(snd.pcm_info(0, 2).unwrap().len(), 2);
        assert_eq!(snd.dev().queue(Queue::Control).last_used_idx(), 2);
        assert!(matches!(
            snd.dev_mut().restart_rings(&[0]),
            Err(Error::BadBases { got: 1, .. })
        ));

        let mut dev = snd.into_inner();
        assert_eq!(dev.stop_rings().unwrap(), vec![2, 0, 0, 0]);
        let old = dev.reinit_rings().unwrap();
        assert_eq!(old.len(), NUM_QUEUES);
        assert_ne!(old[0].used_ring(), dev.queue(Queue::Control).used_ring());
        let mut snd = crate::snd::SndDriver::new(dev);
        assert_eq!(snd.pcm_info(0, 2).unwrap().len(), 2);
        let q = snd.dev().queue(Queue::Control);
        assert_eq!((q.avail_idx(), q.used_idx().unwrap()), (1, 1));
        assert!(!snd.dev().wait_peer_closed(Duration::from_millis(20)));
    }

    #[test]
    fn a_session_can_stop_after_negotiation_and_set_up_the_rest_later() {
        let mock = MockSnd::start();
        let mut dev =
            VhostUserSnd::connect_negotiated(mock.socket(), &ConnectOptions::default()).unwrap();
        assert_eq!(dev.config().streams, 2);
        dev.send_mem_table().unwrap();
        dev.setup_rings(16).unwrap();
        assert_eq!(dev.queue(Queue::Tx).size(), 16);
        let mut snd = crate::snd::SndDriver::new(dev);
        assert_eq!(snd.pcm_info(0, 2).unwrap().len(), 2);
        let q = snd.dev().queue(Queue::Control);
        assert_eq!(q.used_ring_len(), 6 + 8 * 16);
    }

    #[test]
    fn connect_without_event_idx_and_with_ctls() {
        let mock = MockSnd::start();
        let opts = ConnectOptions {
            event_idx: false,
            ctls: true,
            ..ConnectOptions::default()
        };
        let dev = VhostUserSnd::connect(mock.socket(), &opts).unwrap();
        assert_eq!(dev.acked_features() & VIRTIO_RING_F_EVENT_IDX, 0);
        assert_ne!(dev.acked_features() & VIRTIO_SND_F_CTLS, 0);
        assert_eq!(dev.config().controls, Some(0));
        assert!(!dev.queue(Queue::Control).event_idx());
    }

    #[test]
    fn a_daemon_that_never_answers_fails_the_request_instead_of_hanging() {
        let dir = crate::unprivileged::tempdir("vsound-t-").unwrap();
        let path = dir.path().join("mute.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let holder = thread::spawn(move || listener.accept().map(|(s, _)| s));
        let opts = ConnectOptions {
            request_timeout: Some(Duration::from_millis(200)),
            ..ConnectOptions::default()
        };
        let start = Instant::now();
        let err = VhostUserSnd::connect(&path, &opts).unwrap_err();
        assert!(matches!(err, Error::Hung { .. }), "{err}");
        assert!(start.elapsed() < Duration::from_secs(3));
        drop(holder.join().unwrap());
    }

    #[test]
    fn connect_times_out_without_a_socket() {
        let dir = crate::unprivileged::tempdir("vsound-t-").unwrap();
        let opts = ConnectOptions {
            connect_timeout: Duration::from_millis(100),
            ..ConnectOptions::default()
        };
        let err = VhostUserSnd::connect(dir.path().join("none.sock"), &opts).unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }
}
