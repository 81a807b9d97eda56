//! vsound as a packaged system service: `--instance NAME` (which file it
//! reads), `vsound generate` (man pages, completions), the systemd units in
//! `packaging/systemd/` (checked with `systemd-analyze verify`, their system
//! call filter against the daemon's own sandbox) and, when
//! `vmm-tests/packaging/test-package.sh` hands it a built .deb (`VSOUND_DEB`)
//! and we are root, the package itself: installed with `dpkg -i`, its files,
//! its user, its service run as systemd would run it (socket activation,
//! the `vsound` user), then removed and purged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vmm_tests::audio::{noise, wait_jack, Geometry};
use vmm_tests::snd::{PcmFormat, PcmRate};
use vmm_tests::{unprivileged, ConnectOptions, Daemon, DaemonOptions, Queue, SndDriver, Status};

const TIMEOUT: Duration = Duration::from_secs(20);
/// How long a clean stop may take (the daemon's own bound is 5 s; the
/// unit's TimeoutStopSec is 10 s).
const STOP: Duration = Duration::from_secs(8);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn vsound() -> PathBuf {
    Daemon::binary().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// man's output without overstriking (`X\bX` bold, `_\bX` underline).
fn plain(s: &[u8]) -> String {
    let s = String::from_utf8_lossy(s);
    let mut out: Vec<char> = Vec::new();
    for c in s.chars() {
        if c == '\u{8}' {
            out.pop();
            continue;
        }
        out.push(c);
    }
    out.into_iter().collect::<String>().replace('\u{2010}', "-")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn wait_for(path: &Path) {
    let deadline = Instant::now() + TIMEOUT;
    while fs::symlink_metadata(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

// -- --instance ----------------------------------------------------------------

/// A config with `n` output streams on `null`.
fn null_config(n: usize) -> String {
    let mut s = "[devices.null0]\nkind = \"null\"\n".to_owned();
    for _ in 0..n {
        s += "\n[[streams]]\ndirection = \"output\"\ndevice = \"null0\"\n";
    }
    s
}

/// Runs `vsound --instance NAME` with `VSOUND_CONFIG_DIR=dir`; returns how
/// many streams the guest sees and the daemon's log.
fn instance_streams(dir: &Path, name: &str) -> (u32, String) {
    let d = Daemon::spawn_with(&DaemonOptions {
        extra_args: vec!["--instance".into(), name.into()],
        env: vec![("VSOUND_CONFIG_DIR".into(), dir.display().to_string())],
        rust_log: "info".into(),
        ..DaemonOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut snd = d.connect(&ConnectOptions::default()).unwrap();
    let streams = snd.config().streams;
    snd.disconnect().unwrap();
    (streams, d.log())
}

#[test]
fn instance_reads_name_toml_else_default_toml_else_the_embedded_default() {
    // The daemon runs as the tests' daemon user (vmm_tests::unprivileged):
    // its configuration directory must be readable to it.
    let dir = unprivileged::tempdir("vsound-etc-").unwrap();
    let (n, log) = instance_streams(dir.path(), "vm1");
    assert_eq!(n, 2, "the embedded default has 2 streams");
    assert!(
        log.contains("config: embedded default (instance vm1)"),
        "{log}"
    );

    fs::write(dir.path().join("default.toml"), null_config(3)).unwrap();
    let (n, log) = instance_streams(dir.path(), "vm1");
    assert_eq!(n, 3);
    let want = format!(
        "config: {} (instance vm1)",
        dir.path().join("default.toml").display()
    );
    assert!(log.contains(&want), "{log}");

    fs::write(dir.path().join("vm1.toml"), null_config(5)).unwrap();
    let (n, log) = instance_streams(dir.path(), "vm1");
    assert_eq!(n, 5);
    let want = format!(
        "config: {} (instance vm1)",
        dir.path().join("vm1.toml").display()
    );
    assert!(log.contains(&want), "{log}");
    // Another instance still gets default.toml.
    let (n, _) = instance_streams(dir.path(), "vm2");
    assert_eq!(n, 3);
}

#[test]
fn a_broken_instance_file_or_unreadable_directory_stops_the_daemon_never_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("default.toml"), null_config(1)).unwrap();
    fs::write(dir.path().join("vm1.toml"), "[[streams]]\nbogus = 1\n").unwrap();
    let o = Command::new(vsound())
        .args(["--instance", "vm1", "--seccomp=off"])
        .env("VSOUND_CONFIG_DIR", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("vm1.toml:2:") && text(&o).contains("bogus"),
        "{}",
        text(&o)
    );
    // A "directory" that is a file: the lookup fails with ENOTDIR, which is
    // not "no such file".
    let file = dir.path().join("default.toml");
    let o = Command::new(vsound())
        .args(["--instance", "vm1", "--seccomp=off"])
        .env("VSOUND_CONFIG_DIR", &file)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("config of instance vm1")
            && text(&o).contains("Not a directory")
            && !text(&o).contains("listening"),
        "{}",
        text(&o)
    );
}

#[test]
fn instance_names_are_checked() {
    let long_ok = "a".repeat(64);
    let too_long = "a".repeat(65);
    for good in ["vm1", "web-01_a.b@c", long_ok.as_str()] {
        let dir = unprivileged::tempdir("vsound-etc-").unwrap();
        let (n, _) = instance_streams(dir.path(), good);
        assert_eq!(n, 2, "{good}");
    }
    for (bad, why) in [
        ("", "empty"),
        (".hidden", "must not start with a dot"),
        ("..", "must not start with a dot"),
        ("a/b", "has `/`"),
        ("../etc", "has `/`"),
        ("a b", "has ` `"),
        ("vm\u{e9}", "has `\u{e9}`"),
        (too_long.as_str(), "65 bytes long; at most 64"),
        ("my\\x20vm", "\\xNN escapes"),
    ] {
        let o = Command::new(vsound())
            .args(["--instance", bad])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
        assert!(text(&o).contains(why), "{bad:?}: {}", text(&o));
    }
    let o = Command::new(vsound())
        .args(["--instance", "vm1", "--config", "x.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("cannot be used with"), "{}", text(&o));
}

/// `/etc/vsound/default.toml` in the package serves what the embedded
/// default serves, without naming sockets (the socket unit's are used).
#[test]
fn the_packaged_default_toml_is_the_embedded_default_without_sockets() {
    let path = repo().join("packaging/etc/default.toml");
    let src = fs::read_to_string(&path).unwrap();
    assert!(
        !src.lines().any(|l| l.trim_start().starts_with("socket")
            || l.trim_start().starts_with("api_socket")
            || l.trim_start().starts_with("[daemon]")),
        "the packaged default names sockets"
    );
    let infos = |config_toml: Option<String>| {
        let d = Daemon::spawn_with(&DaemonOptions {
            config_toml,
            ..DaemonOptions::default()
        })
        .unwrap();
        let mut snd = d.connect(&ConnectOptions::default()).unwrap();
        let n = snd.config().streams;
        let v = format!("{:?}", snd.pcm_info(0, n).unwrap());
        snd.disconnect().unwrap();
        v
    };
    assert_eq!(infos(Some(src)), infos(None));
}

// -- vsound generate -------------------------------------------------------------

#[test]
fn generate_man_writes_one_valid_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    let o = Command::new(vsound())
        .args(["generate", "man"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let mut pages: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    assert_eq!(
        pages,
        [
            "vsound-check-config.1",
            "vsound-ctl-attach.1",
            "vsound-ctl-detach.1",
            "vsound-ctl-metrics.1",
            "vsound-ctl-mute.1",
            "vsound-ctl-status.1",
            "vsound-ctl-volume.1",
            "vsound-ctl-watch.1",
            "vsound-ctl.1",
            "vsound-pad-play.1",
            "vsound-pad-record.1",
            "vsound-pad.1",
            "vsound-print-default-config.1",
            "vsound.1",
        ]
    );
    for p in &pages {
        let page = fs::read_to_string(out.join(p)).unwrap();
        let name = p.trim_end_matches(".1");
        assert!(
            page.contains(&format!(".TH {name} 1")),
            "{p}: no .TH line:\n{page}"
        );
        assert!(!page.contains("generate"), "{p} shows the hidden command");
    }
    let top = fs::read_to_string(out.join("vsound.1")).unwrap();
    for s in [
        ".SH FILES",
        ".SH ENVIRONMENT",
        "VSOUND_CONFIG_DIR",
        "LISTEN_FDS",
    ] {
        assert!(top.contains(s), "vsound.1 has no {s}");
    }
    // groff checks the roff itself: no warning at any level.
    if let Some(groff) = which("groff") {
        for p in &pages {
            let o = Command::new(&groff)
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(out.join(p))
                .output()
                .unwrap();
            assert!(
                o.status.success() && o.stderr.is_empty(),
                "{p}: {}",
                text(&o)
            );
        }
    }
    if let Some(man) = which("man") {
        let o = Command::new(man)
            .arg("-l")
            .arg(out.join("vsound.1"))
            .env("MANWIDTH", "200")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let shown = plain(&o.stdout);
        assert!(
            shown.contains("vsound - A vhost-user virtio-sound device daemon")
                && shown.contains("--instance"),
            "{shown}"
        );
    }
}

#[test]
fn generate_completions_prints_scripts_the_shells_accept() {
    for (shell, check) in [("bash", "bash"), ("zsh", "zsh"), ("fish", "fish")] {
        let o = Command::new(vsound())
            .args(["generate", "completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}: {}", text(&o));
        let script = String::from_utf8(o.stdout).unwrap();
        assert!(script.contains("instance"), "{shell}: no --instance");
        assert!(script.contains("check-config"), "{shell}: no check-config");
        let Some(sh) = which(check) else {
            eprintln!("{check} not installed: its script is not parsed");
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("completion");
        fs::write(&f, &script).unwrap();
        let o = Command::new(sh).arg("-n").arg(&f).output().unwrap();
        assert!(o.status.success(), "{shell} -n: {}", text(&o));
    }
    let o = Command::new(vsound())
        .args(["generate", "completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // Hidden: not in the help.
    let o = Command::new(vsound()).arg("--help").output().unwrap();
    assert!(!text(&o).contains("generate"), "{}", text(&o));
}

// -- The systemd units --------------------------------------------------------------

/// `Key=Value` lines of a unit file, in order (comments and sections
/// skipped).
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn unit_value(text: &str, key: &str) -> String {
    let v = unit_values(text, key);
    assert_eq!(v.len(), 1, "{key}: {v:?}");
    v.into_iter().next().unwrap()
}

/// The package's unit templates.
const UNITS: [&str; 3] = ["vsound@.service", "vsound@.socket", "vsound-api@.socket"];

/// `systemd-analyze verify` on every unit, instance INSTANCE, in `dir`:
/// exit code 0 and nothing said (an unknown key is only a warning).
fn verify(dir: &Path, instance: &str, extra: &[&str]) {
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .args(extra)
        .args(UNITS.map(|u| dir.join(u.replace('@', &format!("@{instance}")))))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "systemd-analyze verify in {}: {:?}\n{}",
        dir.display(),
        o.status,
        text(&o)
    );
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    if which("systemd-analyze").is_none() {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the built
    // one. The man page is checked after `dpkg -i` (installed test).
    let dir = tempfile::tempdir().unwrap();
    let units = repo().join("packaging/systemd");
    for unit in UNITS {
        let src = fs::read_to_string(units.join(unit)).unwrap();
        let src = src.replace(
            "ExecStart=/usr/bin/vsound ",
            &format!("ExecStart={} ", vsound().display()),
        );
        fs::write(dir.path().join(unit), src).unwrap();
    }
    verify(dir.path(), "vm1", &["--man=no"]);
    // And a verify that fails is noticed: a misspelt key.
    let svc = dir.path().join("vsound@.service");
    let src = fs::read_to_string(&svc).unwrap();
    fs::write(&svc, src.replace("LockPersonality=", "LockPersonalty=")).unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("vsound@vm1.service"))
        .output()
        .unwrap();
    assert!(
        text(&o).contains("Unknown key"),
        "a bad unit passed: {}",
        text(&o)
    );
}

/// The sockets the service is handed (`Sockets=`), in order: for each,
/// its socket unit's text.
fn service_sockets(dir: &Path, service: &str) -> Vec<String> {
    unit_value(service, "Sockets")
        .split_whitespace()
        .map(|u| fs::read_to_string(dir.join(u.replace("%i", ""))).unwrap())
        .collect()
}

#[test]
fn the_socket_units_pass_what_the_daemon_takes() {
    let dir = repo().join("packaging/systemd");
    let service = fs::read_to_string(dir.join("vsound@.service")).unwrap();
    assert_eq!(
        unit_value(&service, "ExecStart"),
        "/usr/bin/vsound --instance %i"
    );
    let sockets = service_sockets(&dir, &service);
    // FileDescriptorName= names every fd of its unit: one socket per unit,
    // named as inherit.rs expects.
    let got: Vec<(String, String)> = sockets
        .iter()
        .map(|u| {
            (
                unit_value(u, "ListenStream"),
                unit_value(u, "FileDescriptorName"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("/run/vsound/%i.sock".to_owned(), "vhost-user".to_owned()),
            ("/run/vsound/%i-api.sock".to_owned(), "api".to_owned()),
        ]
    );
    for u in &sockets {
        assert_eq!(unit_value(u, "Service"), "vsound@%i.service");
    }
    // QEMU's group may connect to the vhost-user socket; the API is root's.
    assert_eq!(unit_value(&sockets[0], "SocketGroup"), "vsound");
    assert_eq!(unit_value(&sockets[0], "SocketMode"), "0660");
    assert_eq!(unit_value(&sockets[1], "SocketMode"), "0600");
    // The longest instance name still makes a valid socket path (108
    // bytes with the NUL).
    let longest =
        "/run/vsound/%i-api.sock".replace("%i", &"a".repeat(vsound::cli::MAX_INSTANCE_LEN));
    assert!(longest.len() < 108, "{longest}");
}

/// The names of the system calls `SystemCallFilter=` values allow
/// (groups expanded with `systemd-analyze syscall-filter`).
fn expand_filter(values: &[String]) -> BTreeSet<String> {
    fn group(name: &str, out: &mut BTreeSet<String>, seen: &mut BTreeSet<String>) {
        if !seen.insert(name.to_owned()) {
            return;
        }
        let o = Command::new("systemd-analyze")
            .args(["syscall-filter", name])
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", text(&o));
        let listing = String::from_utf8(o.stdout).unwrap();
        for line in listing.lines().skip(1) {
            let item = line.split('#').next().unwrap().trim();
            if item.is_empty() {
                continue;
            }
            if item.starts_with('@') {
                group(item, out, seen);
            } else {
                out.insert(item.to_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for v in values {
        for item in v.split_whitespace() {
            assert!(!item.starts_with('~'), "a deny list: {v}");
            if item.starts_with('@') {
                group(item, &mut out, &mut seen);
            } else {
                out.insert(item.to_owned());
            }
        }
    }
    out
}

/// systemd's filter stacks with the daemon's own sandbox and its verdict
/// on a call it forbids (kill) wins: every call the sandbox can let
/// through must be in the unit's `SystemCallFilter=`.
#[test]
fn the_units_system_call_filter_allows_everything_the_sandbox_allows() {
    if which("systemd-analyze").is_none() {
        eprintln!("systemd-analyze not installed: skipped");
        return;
    }
    let service = fs::read_to_string(repo().join("packaging/systemd/vsound@.service")).unwrap();
    let allowed = expand_filter(&unit_values(&service, "SystemCallFilter"));
    assert!(allowed.contains("read") && allowed.contains("seccomp"));
    for host in [false, true] {
        let needed = vsound::sandbox::process_syscalls(host);
        if cfg!(target_arch = "x86_64") {
            assert!(needed.len() > 50, "{needed:?}");
        }
        let missing: Vec<_> = needed.iter().filter(|n| !allowed.contains(**n)).collect();
        assert!(
            missing.is_empty(),
            "the unit's SystemCallFilter would kill the daemon (host devices: {host}) at: {missing:?}"
        );
    }
}

// -- The Debian package, installed --------------------------------------------------

/// The instance the installed test runs (not `vm1`: never an operator's).
const INSTANCE: &str = "pkgtest";

fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let o = sh(cmd, args);
    assert!(o.status.success(), "{cmd} {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Undoes the installed test, whatever happened: the daemon, the files it
/// was given, the package.
struct Installed {
    child: Option<Child>,
    /// The daemon, when `child` is strace (killing a tracer leaves its
    /// tracee running).
    daemon: Option<u32>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(pid) = self.daemon.take() {
            // SAFETY: a process this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_file(format!("/etc/vsound/{INSTANCE}.toml"));
        let _ = fs::remove_dir_all(format!("/run/vsound/{INSTANCE}"));
        for s in [".sock", "-api.sock"] {
            let _ = fs::remove_file(format!("/run/vsound/{INSTANCE}{s}"));
        }
        // Only if empty: systemd's DirectoryMode= directory, made here.
        let _ = fs::remove_dir("/run/vsound");
        if thread::panicking() {
            let _ = sh("dpkg", &["--purge", "vsound"]);
        }
    }
}

/// The pids of the processes running `/usr/bin/vsound --instance
/// INSTANCE`.
fn daemon_pids() -> Vec<u32> {
    let want = format!("/usr/bin/vsound\0--instance\0{INSTANCE}\0");
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(e.path().join("cmdline")).ok()?;
        (cmd == want.as_bytes()).then_some(pid)
    })
    .collect()
}

fn status_field(pid: u32, field: &str) -> String {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn numeric_id(db: &str, name: &str) -> String {
    ok("getent", &[db, name])
        .split(':')
        .nth(2)
        .unwrap()
        .to_owned()
}

/// The package from `VSOUND_DEB` (built by scripts/package.sh), installed,
/// checked, run as the service would run, removed and purged. Root only:
/// `vmm-tests/packaging/test-package.sh` runs it.
#[test]
fn the_debian_package_installs_a_working_service_and_goes_away_cleanly() {
    let Some(deb) = std::env::var_os("VSOUND_DEB") else {
        eprintln!(
            "skipped: VSOUND_DEB is not set (vmm-tests/packaging/test-package.sh builds the .deb and runs this as root)"
        );
        return;
    };
    if !is_root() {
        eprintln!("skipped: installing a package needs root");
        return;
    }
    let deb = deb.to_str().unwrap().to_owned();
    let started = Instant::now();
    let mut guard = Installed {
        child: None,
        daemon: None,
    };
    let left = daemon_pids();
    assert!(
        left.is_empty(),
        "a vsound --instance {INSTANCE} is running already (pids {left:?}): an earlier run's?"
    );

    // 1. Install.
    ok("dpkg", &["--install", &deb]);
    let listed = ok("dpkg", &["--listfiles", "vsound"]);
    let listed: BTreeSet<&str> = listed.lines().collect();
    for f in [
        "/usr/bin/vsound",
        "/lib/systemd/system/vsound@.service",
        "/lib/systemd/system/vsound@.socket",
        "/lib/systemd/system/vsound-api@.socket",
        "/usr/share/man/man1/vsound.1.gz",
        "/usr/share/man/man1/vsound-ctl.1.gz",
        "/usr/share/man/man1/vsound-check-config.1.gz",
        "/usr/share/man/man1/vsound-pad.1.gz",
        "/usr/share/man/man1/vsound-pad-record.1.gz",
        "/usr/share/bash-completion/completions/vsound",
        "/usr/share/zsh/vendor-completions/_vsound",
        "/usr/share/fish/vendor_completions.d/vsound.fish",
        "/etc/vsound/default.toml",
        "/usr/share/doc/vsound/examples/default.toml",
        "/usr/share/doc/vsound/examples/pad.toml",
        "/usr/share/doc/vsound/examples/alsa.toml",
        "/usr/share/doc/vsound/examples/instance.toml",
        "/usr/share/doc/vsound/README.md",
        "/usr/share/doc/vsound/copyright",
    ] {
        assert!(listed.contains(f), "dpkg -L vsound has no {f}");
        assert!(Path::new(f).is_file(), "{f} is not installed");
    }
    let meta = fs::metadata("/usr/bin/vsound").unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    let conffiles = ok("dpkg-query", &["-W", "-f=${Conffiles}", "vsound"]);
    assert!(
        conffiles.contains("/etc/vsound/default.toml"),
        "{conffiles}"
    );
    let version = ok("/usr/bin/vsound", &["--version"]);
    assert_eq!(
        version.trim(),
        format!("vsound {}", env!("CARGO_PKG_VERSION"))
    );
    ok(
        "/usr/bin/vsound",
        &["check-config", "/etc/vsound/default.toml"],
    );

    // 2. The man pages and completions.
    let page = ok("gzip", &["-dc", "/usr/share/man/man1/vsound.1.gz"]);
    assert!(page.contains(".TH vsound 1"), "{page}");
    if which("man").is_some() {
        let o = Command::new("man")
            .args(["vsound"])
            .env("MANWIDTH", "200")
            .env("MANPAGER", "cat")
            .output()
            .unwrap();
        assert!(o.status.success(), "man vsound: {}", text(&o));
        let shown = plain(&o.stdout);
        assert!(
            shown.contains("vsound - A vhost-user virtio-sound device daemon")
                && shown.contains("--instance"),
            "{shown}"
        );
        eprintln!("man vsound: renders");
    } else {
        eprintln!("man not installed: only the roff was checked");
    }
    ok(
        "bash",
        &["-n", "/usr/share/bash-completion/completions/vsound"],
    );
    let o = ok(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/vsound && complete -p vsound",
        ],
    );
    assert!(o.contains("vsound"), "{o}");

    // 3. The units, as installed (ExecStart and the man page exist now).
    if which("systemd-analyze").is_some() {
        verify(Path::new("/lib/systemd/system"), INSTANCE, &[]);
        eprintln!("systemd-analyze verify: the installed units, instance {INSTANCE}: OK");
    } else {
        eprintln!("systemd-analyze not installed: the installed units are not verified");
    }

    // 4. The user, and postinst run again (an upgrade, a reinstall) puts
    // it back in `audio`.
    let passwd = ok("getent", &["passwd", "vsound"]);
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields[5], "/nonexistent", "{passwd}");
    assert!(fields[6].ends_with("nologin"), "{passwd}");
    assert_eq!(fields[3], numeric_id("group", "vsound"), "{passwd}");
    let groups = ok("id", &["-nG", "vsound"]);
    assert!(groups.split_whitespace().any(|g| g == "audio"), "{groups}");
    ok("deluser", &["--quiet", "vsound", "audio"]);
    ok("dpkg", &["--install", &deb]);
    let groups = ok("id", &["-nG", "vsound"]);
    assert!(
        groups.split_whitespace().any(|g| g == "audio"),
        "postinst did not add vsound to audio again: {groups}"
    );

    // 5. The service, run as systemd runs it: the socket unit's sockets
    // handed over by systemd-socket-activate, the service's user, group
    // and runtime directory, its ExecStart line.
    let unit_dir = Path::new("/lib/systemd/system");
    let service = fs::read_to_string(unit_dir.join("vsound@.service")).unwrap();
    let sockets = service_sockets(unit_dir, &service);
    let inst = |s: &str| s.replace("%i", INSTANCE);
    let exec: Vec<String> = inst(&unit_value(&service, "ExecStart"))
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let user = unit_value(&service, "User");
    let group = unit_value(&service, "Group");
    let runtime = Path::new("/run").join(inst(&unit_value(&service, "RuntimeDirectory")));
    let runtime_mode =
        u32::from_str_radix(&unit_value(&service, "RuntimeDirectoryMode"), 8).unwrap();
    // Per socket unit: its path, fd name, owner, group and mode.
    struct Listen {
        path: PathBuf,
        name: String,
        owner: String,
        group: String,
        mode: u32,
    }
    let listen: Vec<Listen> = sockets
        .iter()
        .map(|u| Listen {
            path: PathBuf::from(inst(&unit_value(u, "ListenStream"))),
            name: unit_value(u, "FileDescriptorName"),
            owner: unit_value(u, "SocketUser"),
            group: unit_value(u, "SocketGroup"),
            mode: u32::from_str_radix(&unit_value(u, "SocketMode"), 8).unwrap(),
        })
        .collect();
    let (vhost, api) = (listen[0].path.clone(), listen[1].path.clone());
    let vhost_group = listen[0].group.clone();

    let example = fs::read_to_string("/usr/share/doc/vsound/examples/instance.toml").unwrap();
    fs::write(
        format!("/etc/vsound/{INSTANCE}.toml"),
        example.replace("vm1", INSTANCE),
    )
    .unwrap();
    let run_dir = Path::new("/run/vsound");
    fs::create_dir_all(run_dir).unwrap();
    for l in &listen {
        let _ = fs::remove_file(&l.path);
    }
    let _ = fs::remove_dir_all(&runtime);
    fs::create_dir(&runtime).unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode(runtime_mode)).unwrap();
    ok(
        "chown",
        &[&format!("{user}:{group}"), runtime.to_str().unwrap()],
    );

    let trace = tempfile::tempdir().unwrap();
    let trace_log = trace.path().join("strace");
    let log_path = trace.path().join("daemon.log");
    let log = fs::File::create(&log_path).unwrap();
    let mut cmd = match which("strace") {
        Some(strace) => {
            let mut c = Command::new(strace);
            c.args(["-f", "-qq", "-o"]).arg(&trace_log);
            c.arg("systemd-socket-activate");
            c
        }
        None => {
            eprintln!(
                "strace not installed: the system calls are not checked against the unit's filter"
            );
            Command::new("systemd-socket-activate")
        }
    };
    for l in &listen {
        cmd.arg("-l")
            .arg(&l.path)
            .arg(format!("--fdname={}", l.name));
    }
    cmd.args([
        "-E",
        "RUST_LOG=info",
        "setpriv",
        "--reuid",
        &user,
        "--regid",
        &group,
    ])
    .arg("--init-groups")
    .args(&exec)
    .stdin(Stdio::null())
    .stdout(Stdio::from(log.try_clone().unwrap()))
    .stderr(Stdio::from(log));
    guard.child = Some(cmd.spawn().unwrap());
    let daemon_log = || fs::read_to_string(&log_path).unwrap_or_default();
    for l in &listen {
        wait_for(&l.path);
        fs::set_permissions(&l.path, fs::Permissions::from_mode(l.mode)).unwrap();
        let owner = format!("{}:{}", l.owner, l.group);
        ok("chown", &[&owner, l.path.to_str().unwrap()]);
    }

    // The first connection starts the daemon.
    let deadline = Instant::now() + TIMEOUT;
    let mut snd = loop {
        match SndDriver::connect(&vhost, &ConnectOptions::default()) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "never served: {e}\n{}",
                    daemon_log()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(snd.config().streams, 2);
    let log_now = daemon_log();
    assert!(
        log_now.contains(&format!(
            "config: /etc/vsound/{INSTANCE}.toml (instance {INSTANCE})"
        )) && log_now.contains("listening on fd 3")
            && log_now.contains("management API on inherited fd 4"),
        "{log_now}"
    );
    // Ours: the child itself (systemd-socket-activate and setpriv exec
    // it), or strace's child.
    let child_pid = guard.child.as_ref().unwrap().id();
    let pid = *daemon_pids()
        .iter()
        .find(|&&p| p == child_pid || status_field(p, "PPid") == child_pid.to_string())
        .expect("no vsound --instance process of ours");
    guard.daemon = Some(pid);
    let (uid, gid) = (numeric_id("passwd", &user), numeric_id("group", &group));
    assert_eq!(status_field(pid, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status_field(pid, "Gid"), format!("{gid} {gid} {gid} {gid}"));
    let audio = numeric_id("group", "audio");
    assert!(
        status_field(pid, "Groups").split(' ').any(|g| g == audio),
        "not in audio: {}",
        status_field(pid, "Groups")
    );

    // The pad, created by the unprivileged daemon in its runtime directory.
    let pad = runtime.join("pad0.sock");
    wait_for(&pad);
    let m = fs::symlink_metadata(&pad).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert_eq!(m.uid().to_string(), uid);
    let client = UnixStream::connect(&pad).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    wait_jack(&mut snd, 0, true, TIMEOUT).unwrap();
    let g = Geometry::new(PcmFormat::S16, PcmRate::R48000, 2);
    assert_eq!(g.set_params(&mut snd, 0).unwrap(), Status::Ok);
    assert_eq!(snd.prepare(0).unwrap(), Status::Ok);
    let periods: Vec<Vec<u8>> = (0..4)
        .map(|i| noise(g.period_bytes(), 7 + i as u64))
        .collect();
    for p in &periods {
        snd.tx(0, p, &[]).unwrap();
    }
    let want = 44 + periods.len() * g.period_bytes();
    let mut reader = client.try_clone().unwrap();
    let read = thread::spawn(move || {
        let mut buf = vec![0; want];
        reader.read_exact(&mut buf).map(|()| buf)
    });
    assert_eq!(snd.start(0).unwrap(), Status::Ok);
    let done = snd.wait_io_count(Queue::Tx, 4, TIMEOUT).unwrap();
    assert!(done.iter().all(|c| c.status == Status::Ok), "{done:?}");
    let got = read.join().unwrap().unwrap();
    assert_eq!(&got[..4], b"RIFF");
    assert!(got[44..] == periods.concat()[..], "the pad's frames differ");
    eprintln!(
        "the guest's playback reached the pad {} through the daemon running as {user}",
        pad.display()
    );

    // The API is root's; the vhost-user socket is its group's too.
    let api_s = api.to_str().unwrap();
    let status = ok(
        "/usr/bin/vsound",
        &["ctl", "--api-socket", api_s, "--json", "status"],
    );
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let pad0 = v["result"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "pad0")
        .unwrap()
        .clone();
    assert_eq!(pad0["attached"], true, "{v}");
    // As nobody with group GID: can it connect to PATH? (Debian's python3,
    // not whatever a root PATH finds first.)
    let python = Path::new("/usr/bin/python3");
    let connects_as = |gid: &str, path: &Path| {
        let script = format!(
            "import socket; socket.socket(socket.AF_UNIX).connect({:?})",
            path.display().to_string()
        );
        let o = sh(
            "setpriv",
            &[
                "--reuid",
                "nobody",
                "--regid",
                gid,
                "--clear-groups",
                python.to_str().unwrap(),
                "-c",
                &script,
            ],
        );
        (o.status.success(), text(&o))
    };
    let o = sh(
        "setpriv",
        &[
            "--reuid",
            "nobody",
            "--regid",
            &vhost_group,
            "--clear-groups",
            "/usr/bin/vsound",
            "ctl",
            "--api-socket",
            api_s,
            "status",
        ],
    );
    assert!(!o.status.success(), "group {vhost_group} used the API");
    assert!(text(&o).contains("ermission denied"), "{}", text(&o));
    if python.is_file() {
        // We are the VMM, and the daemon serves one at a time: a second
        // connection still completes (the listen backlog).
        let (ok, out) = connects_as(&vhost_group, &vhost);
        assert!(ok, "group {vhost_group}: {}: {out}", vhost.display());
        let (ok, out) = connects_as("nogroup", &vhost);
        assert!(!ok, "nobody:nogroup reached {}", vhost.display());
        assert!(out.contains("PermissionError"), "{out}");
        eprintln!(
            "{}: group {vhost_group} may connect, others not",
            vhost.display()
        );
    } else {
        eprintln!("no /usr/bin/python3: who may connect to the vhost-user socket is not checked");
    }

    // 6. SIGTERM: a clean stop, exit code 0; the pad socket is removed,
    // the sockets systemd holds are left to it (RemoveOnStop=).
    assert_eq!(snd.stop(0).unwrap(), Status::Ok);
    snd.disconnect().unwrap();
    drop(client);
    // SAFETY: a process this test started (through setpriv).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + STOP;
    let status = loop {
        if let Some(st) = guard.child.as_mut().unwrap().try_wait().unwrap() {
            guard.child = None;
            guard.daemon = None;
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "no exit within {STOP:?} of SIGTERM: {}",
            daemon_log()
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}: {}", daemon_log());
    assert!(
        daemon_log().contains("SIGTERM: stopping"),
        "{}",
        daemon_log()
    );
    assert!(!pad.exists(), "the pad socket was left behind");
    assert!(
        vhost.exists() && api.exists(),
        "the daemon removed systemd's sockets"
    );
    eprintln!("SIGTERM: exit 0, pad socket removed, systemd's sockets left to it");

    // Every system call the daemon made (from its execve on) is one the
    // unit's SystemCallFilter allows.
    if trace_log.exists() && which("systemd-analyze").is_some() {
        let allowed = expand_filter(&unit_values(&service, "SystemCallFilter"));
        let traced = fs::read_to_string(&trace_log).unwrap();
        let from = traced
            .find("execve(\"/usr/bin/vsound\"")
            .expect("no execve of /usr/bin/vsound in the trace");
        let mut made = BTreeSet::new();
        for line in traced[from..].lines() {
            let mut words = line.splitn(2, ' ');
            let _pid = words.next();
            let rest = words.next().unwrap_or("").trim_start();
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && rest[name.len()..].starts_with('(') {
                made.insert(name);
            }
        }
        let missing: Vec<_> = made.iter().filter(|n| !allowed.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "the daemon made calls the unit's SystemCallFilter forbids: {missing:?}"
        );
        eprintln!(
            "strace: the daemon made {} different system calls, all allowed by the unit's filter",
            made.len()
        );
    }

    // 7. Remove, then purge.
    drop(guard);
    ok("dpkg", &["--remove", "vsound"]);
    assert!(!Path::new("/usr/bin/vsound").exists());
    assert!(!Path::new("/lib/systemd/system/vsound@.service").exists());
    assert!(
        Path::new("/etc/vsound/default.toml").exists(),
        "remove must keep the conffile"
    );
    ok("dpkg", &["--purge", "vsound"]);
    assert!(!Path::new("/etc/vsound").exists(), "purge left /etc/vsound");
    let o = sh("dpkg-query", &["-W", "-f=${db:Status-Abbrev}", "vsound"]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).starts_with("ii")
            && !String::from_utf8_lossy(&o.stdout).starts_with("rc"),
        "{}",
        text(&o)
    );
    eprintln!("installed test done in {:?}", started.elapsed());
}
