//! The command line (README.md, "Command line").

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG};
use crate::daemon::{self, ApiSpec, SocketSpec};

pub use crate::config::DEFAULT_SOCKET;

/// vsound: a vhost-user virtio-sound device daemon.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

/// Options of the daemon itself.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML configuration file (default: the embedded configs/default.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// vhost-user socket to listen on (overrides `[daemon] socket`).
    #[arg(long, value_name = "PATH", conflicts_with = "socket_fd")]
    socket: Option<PathBuf>,

    /// An inherited, listening vhost-user socket fd, instead of --socket
    /// (3 or above). Under systemd socket activation (`LISTEN_FDS`) the
    /// passed socket is used without this option.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    socket_fd: Option<i32>,

    /// Serve the management API on this Unix socket (overrides
    /// `[daemon] api_socket`).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,

    /// Serve this many VMM connections, then exit (default: forever).
    #[arg(long, value_name = "N", hide = true)]
    max_connections: Option<usize>,

    /// The seccomp sandbox: `on` ends the daemon at a forbidden system call
    /// (exit code 159, the call named on stderr), `log` makes it fail with
    /// ENOSYS and names it once, `off` installs nothing.
    #[arg(long, value_name = "MODE", default_value_t = crate::sandbox::Mode::On)]
    seccomp: crate::sandbox::Mode,

    /// Test only: install the sandbox, make a forbidden call, exit.
    #[arg(long, value_name = "WHAT", hide = true)]
    seccomp_selftest: Option<crate::sandbox::SelfTest>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a configuration file without starting the daemon.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print the embedded default configuration.
    PrintDefaultConfig,
    /// Talk to a running daemon's management API.
    Ctl(crate::ctl::CtlArgs),
    /// Record a pad's playback to WAV files, or play a WAV file into its
    /// capture.
    Pad(crate::pad_tool::PadArgs),
}

/// Runs the command line; only `main` turns the result into an exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli.command {
        Some(Command::PrintDefaultConfig) => {
            print!("{DEFAULT_CONFIG}");
            ExitCode::SUCCESS
        }
        Some(Command::CheckConfig { file }) => match Config::from_file(&file) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                println!(
                    "{}: OK ({} streams, {} devices)",
                    file.display(),
                    c.streams.len(),
                    c.devices.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Ctl(args)) => crate::ctl::run(args),
        Some(Command::Pad(args)) => crate::pad_tool::run(args),
        None => run_daemon(cli.run),
    }
}

fn run_daemon(args: RunArgs) -> ExitCode {
    let config = match &args.config {
        Some(f) => Config::from_file(f),
        None => Config::default_config(),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Before any thread exists: every thread inherits the blocked mask.
    let signals = match crate::signals::SignalFd::block() {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("cannot handle SIGTERM/SIGINT/SIGHUP: {e}");
            None
        }
    };
    // systemd's sockets, unless the command line names others.
    let activation = if args.socket_fd.is_none() && args.socket.is_none() {
        match crate::inherit::from_systemd() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("vsound: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let activated = activation.as_ref().and_then(|a| a.vhost_user);
    let socket = match (args.socket_fd, &args.socket, activated, &config.socket) {
        (Some(fd), _, _, _) => match crate::inherit::check_listener(fd) {
            Ok(fd) => SocketSpec::Fd(fd),
            Err(e) => {
                eprintln!("vsound: --socket-fd: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, Some(p), _, _) => SocketSpec::Path(p.clone()),
        (None, None, Some(fd), _) => SocketSpec::Fd(fd),
        (None, None, None, Some(p)) => SocketSpec::Path(p.clone()),
        (None, None, None, None) => SocketSpec::Path(PathBuf::from(DEFAULT_SOCKET)),
    };
    if let SocketSpec::Path(p) = &socket {
        if let Err(e) = vsound_devices::unix_socket::check_path(p) {
            eprintln!("vsound: --socket: {e}");
            return ExitCode::FAILURE;
        }
    }
    for w in &config.warnings {
        log::warn!("{w}");
    }
    let api = match (
        &args.api_socket,
        activation.as_ref().and_then(|a| a.api),
        &config.api_socket,
    ) {
        (Some(p), _, _) => Some(ApiSpec::Path(p.clone())),
        (None, Some(fd), _) => Some(ApiSpec::Fd(fd)),
        // "auto": next to the vhost-user socket actually served.
        (None, None, Some(_)) if config.api_socket_auto => {
            match &socket {
                SocketSpec::Path(s) => Some(ApiSpec::Path(crate::config::api_socket_next_to(s))),
                SocketSpec::Fd(_) => {
                    log::info!("api_socket = \"auto\" and an inherited vhost-user socket: no management API");
                    None
                }
            }
        }
        (None, None, Some(p)) => Some(ApiSpec::Path(p.clone())),
        (None, None, None) => None,
    };
    if let Err(e) = crate::sandbox::install(args.seccomp, &config) {
        log::error!("{e} (--seccomp=off runs without the sandbox)");
        return ExitCode::FAILURE;
    }
    if let Some(which) = args.seccomp_selftest {
        return crate::sandbox::selftest(which);
    }
    match daemon::serve(
        &config,
        &socket,
        api.as_ref(),
        args.max_connections,
        signals,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            log::error!("{msg}");
            ExitCode::FAILURE
        }
    }
}
