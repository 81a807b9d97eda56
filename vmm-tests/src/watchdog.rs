//! A watchdog that shuts the vhost-user socket down when a request takes too long.
//!
//! The `vhost` crate's frontend blocks until the daemon answers, and retries
//! `EAGAIN` in a loop, so a socket read timeout would only turn a hang into a busy
//! loop. Shutting the socket down instead makes the pending `recvmsg` return 0, which
//! the frontend reports as an error: a hung daemon fails the test rather than
//! hanging it.

use std::io;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
struct State {
    deadline: Option<Instant>,
    fired: bool,
    quit: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data; a panic while holding the lock cannot leave it
        // inconsistent in a way that matters here.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Watches one socket.
#[derive(Debug)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Disarms the watchdog when dropped.
#[derive(Debug)]
pub(crate) struct Armed {
    shared: Arc<Shared>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        self.shared.lock().deadline = None;
        self.shared.cond.notify_all();
    }
}

impl Watchdog {
    /// Starts the watchdog thread for `sock` (a clone of the frontend's socket).
    pub(crate) fn new(sock: UnixStream) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = thread::Builder::new()
            .name("vhost-user-watchdog".into())
            .spawn(move || run(&s, &sock))?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Arms the watchdog for `timeout` (`None`: not at all) until the guard drops.
    pub(crate) fn arm(&self, timeout: Option<Duration>) -> Armed {
        self.shared.lock().deadline = timeout.map(|t| Instant::now() + t);
        self.shared.cond.notify_all();
        Armed {
            shared: self.shared.clone(),
        }
    }

    /// Whether the watchdog has shut the socket down.
    pub(crate) fn fired(&self) -> bool {
        self.shared.lock().fired
    }
}

fn run(shared: &Shared, sock: &UnixStream) {
    let mut st = shared.lock();
    loop {
        if st.quit {
            return;
        }
        st = match st.deadline {
            None => shared.cond.wait(st).unwrap_or_else(|p| p.into_inner()),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    log::warn!("vhost-user request timed out: shutting the socket down");
                    // Already shut down or closed is as good as shut down.
                    let _ = sock.shutdown(Shutdown::Both);
                    st.fired = true;
                    st.deadline = None;
                    continue;
                }
                shared
                    .cond
                    .wait_timeout(st, deadline - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
        };
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().quit = true;
        self.shared.cond.notify_all();
        if let Some(t) = self.thread.take() {
            // The thread only waits on the condvar; it cannot have panicked.
            let _ = t.join();
        }
    }
}
