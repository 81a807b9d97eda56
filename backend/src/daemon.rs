//! The daemon: builds the host devices once, then serves VMM connections
//! one after another on the same listening socket. Each connection gets a
//! fresh [`SoundDevice`]; host devices (and a pad's socket) outlive it.

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A frontend that has sent nothing this long after connecting is dropped
/// (it would keep every other VMM out).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff between attempts to serve the next connection when the last
/// attempt failed (threads or fds exhausted for a moment).
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::GuestMemoryAtomic;
use vsound_devices::mix::MixDevice;
use vsound_devices::{registry, unix_socket};

use crate::config::Config;
use crate::constants::Direction;
use crate::device::SoundDevice;
use crate::hotplug::{unix_now, ManagedDevice};
use crate::queue::Mem;
use crate::signals::{SignalFd, Stop};
use crate::vhost_user::{Connection, VsoundBackend};

/// Where the daemon listens.
#[derive(Clone, Debug)]
pub enum SocketSpec {
    Path(PathBuf),
    /// An already-bound, listening Unix socket (socket activation).
    Fd(RawFd),
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("Device `{name}`: {message}")]
    Device { name: String, message: String },
    #[error("Cannot listen")]
    Listen(#[source] unix_socket::SocketError),
    #[error("Cannot create the device")]
    Create(#[source] crate::device::DeviceError),
    #[error("Cannot create the vhost-user backend")]
    Backend(#[source] std::io::Error),
    #[error("Cannot serve the management API on {0}")]
    Api(String, #[source] std::io::Error),
    #[error("vhost-user daemon: {0}")]
    Vhost(vhost_user_backend::Error),
}

/// What outlives VMM connections: the host devices, and a handle on the
/// device of the current connection (for the management API).
pub struct DaemonState {
    pub config: Config,
    pub devices: Vec<Arc<ManagedDevice>>,
    current: Mutex<Weak<SoundDevice>>,
    /// A VMM is connected now.
    pub vmm_connected: std::sync::atomic::AtomicBool,
    /// When the daemon started, and the current VMM connected (Unix s).
    pub started: u64,
    vmm_since: std::sync::atomic::AtomicU64,
    /// The streams as the last connection left them (for `status` until
    /// the next one), and when it ended.
    last_streams: Mutex<Option<(Vec<serde_json::Value>, u64)>>,
    /// The volume and mute controls: every connection's device uses these
    /// levels, so they survive a VMM reconnect.
    pub controls: Arc<crate::controls::Controls>,
}

impl DaemonState {
    /// Opens every configured host device.
    pub fn new(config: &Config) -> Result<Arc<DaemonState>, DaemonError> {
        let devices = config
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                registry::build(&d.name, &d.kind, d.options.clone())
                    .map(|dev| {
                        // Several streams of one direction on a device that
                        // takes one opener: the daemon mixes them.
                        let play = config.mixed(i, Direction::Output);
                        let cap = config.mixed(i, Direction::Input);
                        let dev: Arc<dyn vsound_devices::HostDevice> = if play || cap {
                            log::info!(
                                "device {}: mixing its {} streams",
                                d.name,
                                match (play, cap) {
                                    (true, true) => "output and input",
                                    (true, false) => "output",
                                    _ => "input",
                                }
                            );
                            Arc::new(MixDevice::new(dev, play, cap))
                        } else {
                            dev
                        };
                        ManagedDevice::new(i, d.name.clone(), dev)
                    })
                    .map_err(|message| DaemonError::Device {
                        name: d.name.clone(),
                        message,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let controls = Arc::new(crate::controls::Controls::from_config(config));
        controls.spawn_writer().map_err(DaemonError::Backend)?;
        Ok(Arc::new(DaemonState {
            config: config.clone(),
            devices,
            current: Mutex::new(Weak::new()),
            vmm_connected: std::sync::atomic::AtomicBool::new(false),
            started: unix_now(),
            vmm_since: std::sync::atomic::AtomicU64::new(0),
            last_streams: Mutex::new(None),
            controls,
        }))
    }

    /// The device of the current VMM connection, if any.
    pub fn current(&self) -> Option<Arc<SoundDevice>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade()
    }

    /// When the current VMM connected (Unix s).
    pub fn vmm_since(&self) -> u64 {
        self.vmm_since.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The streams as the last connection left them, and when it ended.
    pub fn last_streams(&self) -> Option<(Vec<serde_json::Value>, u64)> {
        self.last_streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_current(&self, dev: Weak<SoundDevice>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = dev;
    }

    /// Sets a stream's volume (dB, rounded to the nearest 0.5 dB step) or
    /// switch from the host; the guest is told of each change. Returns the
    /// stream's level, or why not.
    pub fn set_level(
        &self,
        stream: usize,
        db: Option<f64>,
        on: Option<bool>,
    ) -> Result<(u32, bool), String> {
        use crate::controls::Kind;
        let Some(level) = self.controls.level(stream) else {
            return Err(if stream < self.config.streams.len() {
                format!("stream {stream} has no volume control (set `volume = true` on it)")
            } else {
                format!("no stream {stream} ({} streams)", self.config.streams.len())
            });
        };
        let dev = self.current();
        let tell = |kind: Kind| {
            if let (Some(d), Some(id)) = (&dev, self.controls.id_of(stream, kind)) {
                d.control_changed(id);
            }
        };
        if let Some(db) = db {
            if !db.is_finite() {
                return Err("the volume must be a number of dB".into());
            }
            if level.set_step(crate::controls::db_step(db)) {
                tell(Kind::Volume);
            }
        }
        if let Some(on) = on {
            if level.set_on(on) {
                tell(Kind::Switch);
            }
        }
        if db.is_some() || on.is_some() {
            log::info!(
                "stream {stream}: volume {} dB, {} (set by the operator)",
                crate::controls::step_db(level.step()),
                if level.is_on() { "on" } else { "muted" }
            );
            self.save_levels();
        }
        Ok((level.step(), level.is_on()))
    }

    /// Writes the levels to `[daemon] state_file`, if there is one.
    pub fn save_levels(&self) {
        self.controls.save();
    }

    /// Probes every absent device now (SIGHUP); returns how many.
    pub fn probe_absent(&self) -> usize {
        self.devices.iter().filter(|d| d.probe_now()).count()
    }

    pub fn device(&self, name: &str) -> Option<&Arc<ManagedDevice>> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// Where the management API listens.
#[derive(Clone, Debug)]
pub enum ApiSpec {
    Path(PathBuf),
    /// An already-bound, listening Unix socket (socket activation).
    Fd(RawFd),
}

/// Serves VMM connections until `max_connections` is reached (forever when
/// `None`). For tests and fuzzing: no signal handling (see [`serve`]).
pub fn run(
    config: &Config,
    socket: &SocketSpec,
    api_socket: Option<&Path>,
    max_connections: Option<usize>,
) -> Result<(), DaemonError> {
    let api = api_socket.map(|p| ApiSpec::Path(p.to_owned()));
    serve(config, socket, api.as_ref(), max_connections, None)
}

/// Serves VMM connections until `max_connections` is reached, forever
/// when `None`, or until SIGTERM/SIGINT when `signals` is given (see
/// [`crate::signals`]). Every socket the daemon created is removed when
/// it returns.
pub fn serve(
    config: &Config,
    socket: &SocketSpec,
    api: Option<&ApiSpec>,
    max_connections: Option<usize>,
    signals: Option<SignalFd>,
) -> Result<(), DaemonError> {
    let state = DaemonState::new(config)?;
    if let Err(e) = crate::sigbus::install() {
        log::warn!("cannot guard guest memory against truncation: {e}");
    }
    let stop = Arc::new(Stop::default());
    if let Some(sig) = signals {
        crate::signals::spawn(sig, stop.clone(), Arc::downgrade(&state))
            .map_err(DaemonError::Backend)?;
    }
    let _api = match api {
        Some(ApiSpec::Path(p)) => Some(
            crate::api::ApiServer::start(p, &config.api_socket_access, state.clone())
                .map_err(|e| DaemonError::Api(p.display().to_string(), e))?,
        ),
        Some(ApiSpec::Fd(fd)) => {
            // SAFETY: the caller checked that this inherited fd is a
            // listening Unix socket, handed to us to own.
            let l = unsafe { UnixListener::from_raw_fd(*fd) };
            log::info!("management API on inherited fd {fd}");
            Some(
                crate::api::ApiServer::serve_listener(l, None, state.clone())
                    .map_err(|e| DaemonError::Api(format!("fd {fd}"), e))?,
            )
        }
        None => None,
    };
    let (mut listener, _file) = match socket {
        SocketSpec::Path(p) => {
            let (l, file) =
                unix_socket::listen(p, &config.socket_access).map_err(DaemonError::Listen)?;
            (Listener::from(l), Some(file))
        }
        // SAFETY: the caller checked that this inherited fd is a listening
        // Unix socket we now own; nothing else in the process uses it.
        SocketSpec::Fd(fd) => (unsafe { Listener::from_raw_fd(*fd) }, None),
    };
    stop.set_listener(listener.as_raw_fd());
    log::info!(
        "vsound listening on {} ({} streams, {} devices)",
        match socket {
            SocketSpec::Path(p) => p.display().to_string(),
            SocketSpec::Fd(fd) => format!("fd {fd}"),
        },
        config.streams.len(),
        state.devices.len()
    );
    let mut served = 0usize;
    let mut backoff = RETRY_MIN;
    loop {
        if stop.requested() || max_connections.is_some_and(|m| served >= m) {
            break;
        }
        match serve_one(&state, &mut listener, &stop) {
            Ok(()) => backoff = RETRY_MIN,
            Err(_) if stop.requested() => break,
            // Out of threads or fds for a moment: never a reason to exit.
            Err(e) => {
                log::error!("cannot serve a VMM connection: {e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
        served += 1;
    }
    stop.clear_listener();
    // The last levels, whatever the state thread has done.
    state.controls.write_now();
    drop(_api);
    let stopped = stop.requested();
    let others_let_go = let_go(&state);
    if stopped {
        log::info!("stopped");
    }
    if !others_let_go && stopped {
        // The process ends now: the devices' owners will not drop them.
        log::warn!("a thread still holds the devices; removing their sockets");
        unix_socket::remove_all_now();
    }
    Ok(())
}

/// How long the end of `serve` waits for other threads to let go of the
/// state and its devices.
const LET_GO_BOUND: Duration = Duration::from_secs(1);

/// Waits, at most [`LET_GO_BOUND`], until nothing but `state` holds the
/// state and its host devices: a thread handling a signal or an API
/// request, or the last reference to a connection's device, lets go
/// within moments. Dropping the state then drops the devices here, and a
/// pad's socket file goes with its device (a process that ended first
/// left it behind). Returns whether they all let go.
fn let_go(state: &Arc<DaemonState>) -> bool {
    let deadline = Instant::now() + LET_GO_BOUND;
    loop {
        let held =
            Arc::strong_count(state) > 1 || state.devices.iter().any(|d| Arc::strong_count(d) > 1);
        if !held {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn serve_one(state: &DaemonState, listener: &mut Listener, stop: &Stop) -> Result<(), DaemonError> {
    let mem = GuestMemoryAtomic::new(Mem::new());
    let device = SoundDevice::with_controls(&state.config, &state.devices, state.controls.clone())
        .map_err(DaemonError::Create)?;
    state.set_current(Arc::downgrade(&device));
    let conn = Connection::new(device.clone()).map_err(DaemonError::Backend)?;
    let backend = Arc::new(VsoundBackend::new(conn.clone()).map_err(DaemonError::Backend)?);
    let mut daemon = conn
        .build(|| VhostUserDaemon::new(crate::sandbox::REQUEST_THREAD.into(), backend, mem))
        .map_err(DaemonError::Vhost)?;
    daemon.start(listener).map_err(DaemonError::Vhost)?;
    if let Some(h) = daemon.shutdown_handle() {
        conn.set_shutdown(h);
    }
    stop.set_connection(&conn);
    state
        .vmm_since
        .store(unix_now(), std::sync::atomic::Ordering::SeqCst);
    state
        .vmm_connected
        .store(true, std::sync::atomic::Ordering::SeqCst);
    log::info!("VMM connected");
    let ended = std::thread::scope(|scope| {
        let watch = std::thread::Builder::new()
            .name("vsound-watch".into())
            .spawn_scoped(scope, || {
                crate::sandbox::enter(crate::sandbox::ThreadKind::Watch);
                conn.watch(HANDSHAKE_TIMEOUT)
            });
        if let Err(e) = &watch {
            log::warn!("no watch thread for this connection: {e}");
        }
        let ended = daemon.wait();
        conn.set_over();
        ended
    });
    match ended {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::SocketBroken(_),
        )) => log::info!("VMM disconnected"),
        Err(e) => log::warn!("VMM connection ended: {e}"),
    }
    if let Some(why) = conn.refused().filter(|_| !stop.requested()) {
        log::warn!("the connection was ended by the daemon: {why}");
    }
    *state.last_streams.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((crate::api::streams_json(state, &device), unix_now()));
    state
        .vmm_connected
        .store(false, std::sync::atomic::Ordering::SeqCst);
    stop.clear_connection();
    // Stops the queue thread (exit event), then the stream workers.
    drop(daemon);
    device.shutdown();
    drop(conn);
    drop(device);
    // The connection's memory is unmapped once the last chain is gone.
    crate::sigbus::forget_all();
    Ok(())
}
