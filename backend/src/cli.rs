//! The command line (README.md, "Command line").

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG};
use crate::daemon::{self, ApiSpec, SocketSpec};

pub use crate::config::DEFAULT_SOCKET;

/// Where `--instance NAME` looks for `NAME.toml` and `default.toml`.
pub const CONFIG_DIR: &str = "/etc/vsound";
/// Replaces [`CONFIG_DIR`], for tests and packagers.
pub const CONFIG_DIR_ENV: &str = "VSOUND_CONFIG_DIR";
/// The longest instance name: `/run/vsound/NAME-api.sock` stays well
/// within a Unix socket path's 107 bytes.
pub const MAX_INSTANCE_LEN: usize = 64;

/// A vhost-user virtio-sound device daemon.
///
/// A VMM (QEMU's vhost-user-snd-pci, cloud-hypervisor's generic vhost-user
/// device) connects to its socket and the guest sees a virtio-sound card.
/// Each guest PCM stream is bound by the TOML configuration to a host
/// device: an ALSA PCM, a pad (a Unix socket that hands the guest's audio
/// to any host process and takes its capture from it) or null. Without a
/// subcommand, vsound runs the daemon.
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

    /// Run as instance NAME of a system service: the configuration is
    /// /etc/vsound/NAME.toml if it exists, else /etc/vsound/default.toml if
    /// it exists, else the embedded default. NAME: letters, digits and
    /// `_.@-`, not starting with a dot, at most 64 bytes.
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with = "config",
        value_parser = parse_instance
    )]
    instance: Option<String>,

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
    /// For packagers: man pages and shell completions from this command
    /// line's definitions.
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: GenerateWhat,
    },
}

#[derive(Debug, Subcommand)]
enum GenerateWhat {
    /// Write vsound.1 and one page per subcommand (vsound-ctl.1, ...) into DIR.
    Man {
        /// The directory to write the pages to (created if missing).
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on standard output.
    Completions {
        /// bash, zsh, fish (also elvish, powershell).
        shell: clap_complete::Shell,
    },
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
        Some(Command::Generate { what }) => generate(what),
        None => run_daemon(cli.run),
    }
}

/// Checks an `--instance` name: non-empty, at most [`MAX_INSTANCE_LEN`]
/// bytes of `[A-Za-z0-9_.@-]`, not starting with a dot (so never `..`, a
/// hidden file or a path).
pub fn parse_instance(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the instance name is empty".into());
    }
    if name.len() > MAX_INSTANCE_LEN {
        return Err(format!(
            "the instance name is {} bytes long; at most {MAX_INSTANCE_LEN}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.@-".contains(*c)))
    {
        let hint = if c == '\\' {
            " (systemd writes other characters as \\xNN escapes in %i: name the unit with plain ones)"
        } else {
            ""
        };
        return Err(format!(
            "the instance name has `{c}`: use letters, digits and `_.@-`{hint}"
        ));
    }
    if name.starts_with('.') {
        return Err("the instance name must not start with a dot".into());
    }
    Ok(name.to_owned())
}

/// The configuration file of instance `name` in `dir`: `NAME.toml` if it
/// exists, else `default.toml` if it exists, else `None` (the embedded
/// default). Only a file that is not there is skipped: one that cannot be
/// looked at is an error, never a silent fallback.
pub fn instance_config(dir: &Path, name: &str) -> Result<Option<PathBuf>, String> {
    for file in [format!("{name}.toml"), "default.toml".to_owned()] {
        let path = dir.join(file);
        match std::fs::metadata(&path) {
            Ok(_) => return Ok(Some(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(None)
}

/// The directory `--instance` reads: `$VSOUND_CONFIG_DIR`, else
/// [`CONFIG_DIR`].
pub fn config_dir() -> PathBuf {
    std::env::var_os(CONFIG_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(CONFIG_DIR), PathBuf::from)
}

/// The configuration the daemon runs on, and a line saying which.
fn load_config(args: &RunArgs) -> Result<Config, String> {
    let (config, from) = match (&args.config, &args.instance) {
        (Some(f), _) => (Config::from_file(f), f.display().to_string()),
        (None, Some(name)) => match instance_config(&config_dir(), name)
            .map_err(|e| format!("vsound: config of instance {name}: {e}"))?
        {
            Some(f) => (
                Config::from_file(&f),
                format!("{} (instance {name})", f.display()),
            ),
            None => (
                Config::default_config(),
                format!("embedded default (instance {name})"),
            ),
        },
        (None, None) => (Config::default_config(), "embedded default".to_owned()),
    };
    let config = config.map_err(|e| e.to_string())?;
    log::info!("config: {from}");
    Ok(config)
}

/// `vsound generate`: man pages and completions from [`Cli`].
fn generate(what: GenerateWhat) -> ExitCode {
    let result = match what {
        GenerateWhat::Man { dir } => crate::manpages::write_all(Cli::command(), &dir)
            .map_err(|e| format!("vsound generate man: {}: {e}", dir.display())),
        GenerateWhat::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vsound", &mut script);
            let mut out = std::io::stdout().lock();
            std::io::Write::write_all(&mut out, &script)
                .and_then(|()| std::io::Write::flush(&mut out))
                .map_err(|e| format!("vsound generate completions: {e}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run_daemon(args: RunArgs) -> ExitCode {
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Before any thread exists (the environment is not thread-safe).
    vsound_devices::alsa::set_server_latency();
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
