//! SIGTERM, SIGINT and SIGHUP, read from a `signalfd` by one thread.
//!
//! The signals are blocked in the main thread before any other thread
//! exists (every thread inherits the mask), so none of them ever runs a
//! handler in the middle of a device call or under a seccomp filter that
//! does not expect it: they queue on the signalfd, and the `vsound-signal`
//! thread acts on them.
//!
//! - SIGTERM, SIGINT: a clean stop. The listening socket stops accepting;
//!   the connected VMM's held buffers are completed and its connection
//!   ended; the daemon's loop returns, dropping the devices and the API,
//!   which removes every socket file. If that takes longer than
//!   [`STOP_BOUND`] (a device call that never returns), or a second signal
//!   comes, the socket files are removed and the process exits at once
//!   (code 1).
//! - SIGHUP: every absent host device is probed at once (no waiting for
//!   its backoff).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::daemon::DaemonState;
use crate::vhost_user::Connection;

/// The longest a clean stop may take before the daemon exits anyway.
pub const STOP_BOUND: Duration = Duration::from_secs(5);

/// The blocked signals, readable from a `signalfd`.
pub struct SignalFd {
    fd: OwnedFd,
}

fn mask() -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is emptied by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

impl SignalFd {
    /// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (and so in
    /// every thread it starts afterwards) and opens a signalfd for them.
    /// Call it before any thread is started.
    pub fn block() -> io::Result<SignalFd> {
        let set = mask();
        // SAFETY: `set` is valid; the old mask is not wanted.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: `set` is valid; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    /// Waits at most `timeout` (forever with `None`) for the next signal.
    fn next(&self, timeout: Option<Duration>) -> Option<i32> {
        let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return None;
        }
        // SAFETY: a zeroed siginfo is a valid buffer for read.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is `size` bytes long.
        let got = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::addr_of_mut!(info).cast(),
                size,
            )
        };
        if usize::try_from(got).ok() != Some(size) {
            return None;
        }
        i32::try_from(info.ssi_signo).ok()
    }
}

/// What a stop request reaches: the listening socket and the connection
/// being served.
#[derive(Default)]
pub struct Stop {
    requested: AtomicBool,
    listen_fd: Mutex<Option<RawFd>>,
    conn: Mutex<Weak<Connection>>,
}

impl Stop {
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The socket the daemon accepts VMMs on (woken by a stop).
    pub fn set_listener(&self, fd: RawFd) {
        *self.listen_fd.lock().unwrap_or_else(|e| e.into_inner()) = Some(fd);
        if self.requested() {
            shutdown(fd);
        }
    }

    /// The listening socket is about to be closed.
    pub fn clear_listener(&self) {
        *self.listen_fd.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The connection being served now; ended by a stop (at once, if one
    /// was already requested).
    pub fn set_connection(&self, conn: &Arc<Connection>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(conn);
        if self.requested() {
            end(conn);
        }
    }

    /// Asks the daemon to stop: no new VMM, and the current one ends. The
    /// connection is ended (and let go of) with its lock held, so that
    /// [`Stop::clear_connection`] returns only once this thread holds no
    /// reference to it.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Some(fd) = *self.listen_fd.lock().unwrap_or_else(|e| e.into_inner()) {
            shutdown(fd);
        }
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = conn.upgrade() {
            end(&c);
        }
    }

    /// The connection is over: forgets it, once a stop that is ending it
    /// has let go of it (its last reference, and its device's, are then
    /// the daemon's own).
    pub fn clear_connection(&self) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Weak::new();
    }
}

fn shutdown(fd: RawFd) {
    // SAFETY: `fd` is the daemon's listening socket, open until the daemon
    // returns (the signal thread outlives no use of it: a closed fd gives
    // EBADF, harmless). Accept fails with EINVAL from now on.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

fn end(conn: &Connection) {
    let n = conn.device().return_held();
    log::info!("stopping: {n} guest buffers completed; ending the VMM connection");
    conn.end("the daemon is stopping");
}

/// Starts the `vsound-signal` thread, which serves the signals for as long
/// as the process lives.
pub fn spawn(signals: SignalFd, stop: Arc<Stop>, state: Weak<DaemonState>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("vsound-signal".into())
        .spawn(move || {
            crate::sandbox::enter(crate::sandbox::ThreadKind::Signal);
            serve(&signals, &stop, &state);
        })
        .map(|_| ())
}

fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

fn serve(signals: &SignalFd, stop: &Stop, state: &Weak<DaemonState>) {
    let mut deadline: Option<Instant> = None;
    loop {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let sig = signals.next(timeout);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            log::error!("the daemon did not stop within {STOP_BOUND:?}; exiting now");
            exit_now();
        }
        match sig {
            Some(libc::SIGHUP) => {
                if let Some(st) = state.upgrade() {
                    let n = st.probe_absent();
                    log::info!("SIGHUP: probing {n} absent devices now");
                }
            }
            Some(s @ (libc::SIGTERM | libc::SIGINT)) => {
                if deadline.is_some() {
                    log::warn!("{} again: exiting now", name(s));
                    exit_now();
                }
                log::info!("{}: stopping", name(s));
                deadline = Instant::now().checked_add(STOP_BOUND);
                stop.request();
            }
            _ => {}
        }
    }
}

/// Removes the socket files and ends the process without waiting for
/// anything else.
fn exit_now() -> ! {
    vsound_devices::unix_socket::remove_all_now();
    std::process::exit(1)
}
