//! Spawning the `vsound` daemon as a child process for a test.
//!
//! The binary is `$VSOUND_BIN`, or `vsound` next to the directory of the running test
//! executable (tests run from `target/<profile>/deps`, the binary is
//! `target/<profile>/vsound`). It is started as
//! `vsound --socket <tmpdir>/vsound.sock [--config FILE] [extra args]` with
//! `RUST_LOG=debug`, stdout and stderr going to `<tmpdir>/vsound.log`.
//!
//! The child is killed when the [`Daemon`] is dropped; if the test is panicking at
//! that point the tail of the log is printed to stderr.

use std::env;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::frontend::ConnectOptions;
use crate::snd::{self, SndDriver};

/// Environment variable naming the daemon binary.
pub const BIN_ENV: &str = "VSOUND_BIN";
/// Default time to wait for the socket to appear.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of log printed when a test panics with the daemon alive.
const LOG_TAIL_LINES: usize = 200;

/// Errors of the daemon helper.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No daemon binary was found.
    #[error(
        "vsound binary not found at {0} (build it with `cargo build --bin vsound`, or set VSOUND_BIN)"
    )]
    BinaryNotFound(PathBuf),
    /// The current executable path is unknown.
    #[error("Cannot locate the current test executable")]
    CurrentExe(#[source] io::Error),
    /// Creating the temporary directory or a file in it failed.
    #[error("Failed to prepare the daemon directory")]
    Setup(#[source] io::Error),
    /// Spawning the child failed.
    #[error("Failed to spawn {0}")]
    Spawn(PathBuf, #[source] io::Error),
    /// The daemon exited.
    #[error("Daemon exited with {status}; log:\n{log}")]
    Exited {
        /// Exit status.
        status: ExitStatus,
        /// Tail of the log.
        log: String,
    },
    /// The socket did not appear in time.
    #[error("Socket {socket} did not appear within {timeout:?}; log:\n{log}")]
    StartupTimeout {
        /// Socket path.
        socket: PathBuf,
        /// Time waited.
        timeout: Duration,
        /// Tail of the log.
        log: String,
    },
    /// Waiting for or signalling the child failed.
    #[error("Failed to manage the daemon process")]
    Process(#[source] io::Error),
    /// Connecting the driver failed.
    #[error("Failed to connect to the daemon")]
    Connect(#[source] Box<snd::Error>),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// How to start the daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The daemon binary (default: [`Daemon::binary`]); tests that need
    /// test-only plugins pass `env!("CARGO_BIN_EXE_vsound-test")`.
    pub binary: Option<PathBuf>,
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// TOML text written to `<tmpdir>/vsound.toml` and passed with `--config`
    /// (ignored when `config` is set).
    pub config_toml: Option<String>,
    /// More arguments, after the socket and config ones.
    pub extra_args: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
    /// `RUST_LOG` value.
    pub rust_log: String,
    /// How long to wait for the socket to appear.
    pub startup_timeout: Duration,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            binary: None,
            config: None,
            config_toml: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            rust_log: "debug".into(),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
        }
    }
}

/// A running daemon child process.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    log_path: PathBuf,
    exit_status: Option<ExitStatus>,
}

impl Daemon {
    /// Locates the daemon binary (see the module documentation).
    pub fn binary() -> Result<PathBuf> {
        if let Some(bin) = env::var_os(BIN_ENV) {
            let bin = PathBuf::from(bin);
            return if bin.is_file() {
                Ok(bin)
            } else {
                Err(Error::BinaryNotFound(bin))
            };
        }
        let exe = env::current_exe().map_err(Error::CurrentExe)?;
        let dir = exe.parent().unwrap_or(Path::new("."));
        // target/debug/deps/<test> -> target/debug/vsound; also accept a binary
        // beside the executable (examples, custom runners).
        let candidates = [
            dir.parent().map(|p| p.join("vsound")),
            Some(dir.join("vsound")),
        ];
        let mut first = None;
        for c in candidates.into_iter().flatten() {
            if c.is_file() {
                return Ok(c);
            }
            first.get_or_insert(c);
        }
        Err(Error::BinaryNotFound(
            first.unwrap_or_else(|| PathBuf::from("vsound")),
        ))
    }

    /// Starts the daemon with the embedded default configuration.
    pub fn spawn() -> Result<Self> {
        Self::spawn_with(&DaemonOptions::default())
    }

    /// Starts the daemon and waits for its socket.
    pub fn spawn_with(opts: &DaemonOptions) -> Result<Self> {
        let bin = match &opts.binary {
            Some(b) => b.clone(),
            None => Self::binary()?,
        };
        let dir = crate::unprivileged::tempdir("vsound-test-").map_err(Error::Setup)?;
        let socket = dir.path().join("vsound.sock");
        let log_path = dir.path().join("vsound.log");
        let log = File::create(&log_path).map_err(Error::Setup)?;
        let log2 = log.try_clone().map_err(Error::Setup)?;

        // As a service runs it: not as root (see `unprivileged`).
        let mut cmd =
            crate::unprivileged::command(&bin).map_err(|e| Error::Spawn(bin.clone(), e))?;
        cmd.arg("--socket").arg(&socket);
        let config = match (&opts.config, &opts.config_toml) {
            (Some(path), _) => Some(path.clone()),
            (None, Some(text)) => {
                let path = dir.path().join("vsound.toml");
                fs::write(&path, text).map_err(Error::Setup)?;
                Some(path)
            }
            (None, None) => None,
        };
        if let Some(path) = config {
            cmd.arg("--config").arg(path);
        }
        cmd.args(&opts.extra_args)
            .env("RUST_LOG", &opts.rust_log)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let child = cmd.spawn().map_err(|e| Error::Spawn(bin.clone(), e))?;
        log::debug!("spawned {} as pid {}", bin.display(), child.id());

        let mut daemon = Daemon {
            child: Some(child),
            dir,
            socket,
            log_path,
            exit_status: None,
        };
        daemon.wait_for_socket(opts.startup_timeout)?;
        Ok(daemon)
    }

    fn wait_for_socket(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if self.socket.exists() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::StartupTimeout {
                    socket: self.socket.clone(),
                    timeout,
                    log: self.log_tail(LOG_TAIL_LINES),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The vhost-user socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory (socket, log, config); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log file path.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the daemon has exited (crash detection); does not block.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.exit_status {
            return Ok(Some(status));
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait().map_err(Error::Process)?;
        if status.is_some() {
            self.exit_status = status;
            self.child = None;
        }
        Ok(status)
    }

    /// Fails with [`Error::Exited`] (including the log tail) if the daemon has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.try_wait()? {
            Some(status) => Err(Error::Exited {
                status,
                log: self.log_tail(LOG_TAIL_LINES),
            }),
            None => Ok(()),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the child.
    pub fn signal(&mut self, signal: i32) -> Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let pid = libc::pid_t::try_from(pid)
            .map_err(|_| Error::Process(io::Error::from(io::ErrorKind::InvalidInput)))?;
        // SAFETY: kill() has no memory-safety preconditions; `pid` is our own child,
        // which has not been reaped yet (we hold its `Child`), so the pid is not reused.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            return Err(Error::Process(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; reaping below covers both cases.
            let _ = child.kill();
            self.exit_status = Some(child.wait().map_err(Error::Process)?);
        }
        Ok(())
    }

    /// Connects a driver to this daemon.
    pub fn connect(&self, opts: &ConnectOptions) -> Result<SndDriver> {
        SndDriver::connect(&self.socket, opts).map_err(|e| Error::Connect(Box::new(e)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- vsound log ({}), last {LOG_TAIL_LINES} lines ----\n{}\n---- end of vsound log ----",
                self.log_path.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        if let Err(e) = self.kill() {
            eprintln!("failed to kill the vsound daemon: {e}");
        }
    }
}
