//! `vsound-bench`: load generator and benchmark for a vhost-user
//! virtio-sound daemon. See BENCHMARKS.md at the repository root.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};
use vmm_tests::bench::report::Report;
use vmm_tests::bench::{self, plot, Options, Scenario, TargetSpec};

/// Plays a guest against a vhost-user virtio-sound daemon and measures it.
#[derive(Debug, Parser)]
#[command(group(ArgGroup::new("target").required(true).args(["spawn", "socket"])))]
struct Args {
    /// Scenario to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: ScenarioArg,

    /// Spawn the vsound binary (one daemon per run, with a generated config).
    #[arg(long)]
    spawn: bool,

    /// The vsound binary to spawn (default: `vsound` beside this binary, or $VSOUND_BIN).
    #[arg(long, value_name = "PATH", requires = "spawn")]
    vsound: Option<PathBuf>,

    /// RUST_LOG of the spawned daemon (debug logging would be measured too).
    #[arg(long, value_name = "FILTER", default_value = "warn")]
    rust_log: String,

    /// Connect to a daemon already listening on this socket instead.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// That daemon's pid (for the CPU and memory figures).
    #[arg(long, value_name = "PID", requires = "socket")]
    pid: Option<u32>,

    /// Side by side: after vsound, run the same scenarios (but `teardown`,
    /// which needs vsound's pads) against another vhost-user sound back-end,
    /// started with this command line once per run, `{socket}` standing for
    /// the socket it must listen on; e.g. `--peer 'vhost-device-sound
    /// --socket {socket} --backend null'`. Both reports are printed, then
    /// their figures next to each other.
    #[arg(long, value_name = "COMMAND", requires = "spawn")]
    peer: Option<String>,

    /// Short runs that only check that every scenario works.
    #[arg(long)]
    smoke: bool,

    /// Print the results as JSON on stdout (the table then goes to stderr).
    #[arg(long)]
    json: bool,

    /// pacing: output streams.
    #[arg(long, value_name = "N")]
    outputs: Option<u32>,

    /// pacing: input streams.
    #[arg(long, value_name = "M")]
    inputs: Option<u32>,

    /// pacing: seconds to run (default 10, smoke 1).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,

    /// pacing: write the error distribution as an SVG here.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    /// pacing: write every completion (stream, k, time, error) as CSV here.
    #[arg(long, value_name = "FILE")]
    samples: Option<PathBuf>,

    /// cpu: stream counts (default 1,8,64,256).
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    cpu_streams: Option<Vec<u32>>,

    /// cpu: measured seconds per count (default 10).
    #[arg(long, value_name = "SECS")]
    cpu_duration: Option<f64>,

    /// control: iterations (default 2000).
    #[arg(long, value_name = "N")]
    iterations: Option<usize>,

    /// teardown: removed-stream counts (default 1,8,64).
    #[arg(long, value_name = "K,...", value_delimiter = ',')]
    removed: Option<Vec<u32>>,

    /// memory: streams in the loaded phase (default 256).
    #[arg(long, value_name = "N")]
    memory_streams: Option<u32>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScenarioArg {
    Pacing,
    Cpu,
    Control,
    Teardown,
    Memory,
    All,
}

impl From<ScenarioArg> for Scenario {
    fn from(s: ScenarioArg) -> Scenario {
        match s {
            ScenarioArg::Pacing => Scenario::Pacing,
            ScenarioArg::Cpu => Scenario::Cpu,
            ScenarioArg::Control => Scenario::Control,
            ScenarioArg::Teardown => Scenario::Teardown,
            ScenarioArg::Memory => Scenario::Memory,
            ScenarioArg::All => Scenario::All,
        }
    }
}

fn seconds(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("bad duration {s}: {e}"))
}

impl TryFrom<&Args> for Options {
    type Error = String;

    fn try_from(a: &Args) -> Result<Options, String> {
        let target = match &a.socket {
            Some(path) => TargetSpec::Socket {
                path: path.clone(),
                pid: a.pid,
            },
            None => TargetSpec::Spawn {
                rust_log: a.rust_log.clone(),
            },
        };
        let mut o = Options::new(target, a.smoke);
        if let Some(n) = a.outputs {
            o.pacing.outputs = n;
        }
        if let Some(m) = a.inputs {
            o.pacing.inputs = m;
        }
        if o.pacing.outputs + o.pacing.inputs == 0 {
            return Err("pacing needs at least one stream".into());
        }
        if let Some(s) = a.duration {
            o.pacing.duration = seconds(s)?;
        }
        if let Some(v) = &a.cpu_streams {
            o.cpu.streams = v.clone();
        }
        if let Some(s) = a.cpu_duration {
            o.cpu.duration = seconds(s)?;
        }
        if let Some(n) = a.iterations {
            o.control.iterations = n.max(1);
        }
        if let Some(v) = &a.removed {
            o.teardown.removed = v.clone();
        }
        if let Some(n) = a.memory_streams {
            o.memory.streams = n;
        }
        Ok(o)
    }
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = format!("vsound-bench: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(bin) = &args.vsound {
        // Read by `Daemon::binary`; set before any thread starts.
        std::env::set_var(vmm_tests::daemon::BIN_ENV, bin);
    }
    let opts = match Options::try_from(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vsound-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match bench::run(&opts, args.scenario.into()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let peer = match &args.peer {
        Some(cmd) => {
            let command: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
            let name = command
                .first()
                .map(|p| p.rsplit('/').next().unwrap_or(p).to_owned())
                .unwrap_or_default();
            let mut peer_opts = opts.clone();
            peer_opts.target = TargetSpec::Peer { name, command };
            let scenario: Scenario = args.scenario.into();
            let mut peer_report = Report::new(&peer_opts.target, opts.smoke);
            for s in [
                Scenario::Pacing,
                Scenario::Cpu,
                Scenario::Control,
                Scenario::Memory,
            ] {
                if scenario != s && scenario != Scenario::All {
                    continue;
                }
                match bench::run(&peer_opts, s) {
                    Ok(r) => peer_report.merge(r),
                    Err(e) => eprintln!("vsound-bench: peer, {s:?}: {}", error_chain(&e)),
                }
            }
            Some(peer_report)
        }
        None => None,
    };
    if let (Some(path), Some(p)) = (&args.plot, &report.pacing) {
        let title = format!(
            "vsound pacing error: {} out + {} in, {:.0} s, p99 {:.1} µs",
            p.outputs, p.inputs, p.seconds, p.all.p99
        );
        if let Err(e) = plot::pacing_errors(path, &p.errors_us, &p.timer_floor_us, &title) {
            eprintln!("vsound-bench: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!("vsound-bench: wrote {}", path.display());
    }
    if let (Some(path), Some(p)) = (&args.samples, &report.pacing) {
        if let Err(e) = std::fs::write(path, &p.csv) {
            eprintln!("vsound-bench: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(p) = &peer {
        let side = bench::report::side_by_side(&report, p);
        if args.json {
            eprint!("{report}\n=== peer\n{p}\n{side}");
            let both = serde_json::json!({ "vsound": report, "peer": p });
            match serde_json::to_string_pretty(&both) {
                Ok(j) => println!("{j}"),
                Err(e) => {
                    eprintln!("vsound-bench: JSON: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            print!("{report}\n=== peer\n{p}\n{side}");
        }
        return ExitCode::SUCCESS;
    }
    if args.json {
        eprint!("{report}");
        match serde_json::to_string_pretty(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("vsound-bench: JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{report}");
    }
    ExitCode::SUCCESS
}
