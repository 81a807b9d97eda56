//! The command line (design.md "Command line").

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG};
use crate::daemon::{self, SocketSpec};

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

    /// An inherited, listening vhost-user socket fd, instead of --socket.
    #[arg(long, value_name = "N")]
    socket_fd: Option<i32>,

    /// Serve this many VMM connections, then exit (default: forever).
    #[arg(long, value_name = "N", hide = true)]
    max_connections: Option<usize>,
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
    let socket = match (args.socket_fd, &args.socket, &config.socket) {
        (Some(fd), _, _) => SocketSpec::Fd(fd),
        (None, Some(p), _) | (None, None, Some(p)) => SocketSpec::Path(p.clone()),
        (None, None, None) => SocketSpec::Path(PathBuf::from("/tmp/vsound.sock")),
    };
    if config.api_socket.is_some() {
        log::warn!("[daemon] api_socket: the management API is not in this build yet; ignored");
    }
    match daemon::run(&config, &socket, args.max_connections) {
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
