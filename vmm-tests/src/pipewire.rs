//! A real clock for the tests: a headless PipeWire server.
//!
//! [`PipeWire::start`] runs `pipewire` and `wireplumber` as the daemon's
//! user (see [`crate::unprivileged`]) in a private runtime directory, and
//! adds a null sink, [`SINK`]. The daemon reaches it through the `pipewire`
//! ALSA PCM of pipewire-alsa (`pipewire:NODE=vsnull`: playback into the sink,
//! capture from its monitor) once its environment has [`PipeWire::env`].
//! What reached the sink is recorded with `pw-record` on its monitor
//! ([`PipeWire::record`]); [`PipeWire::play`] plays a file into it.
//! S16 at 48 kHz goes through PipeWire's float graph and back unchanged, so
//! a recording can be compared with what the guest played bit for bit.
//!
//! [`PipeWire::kill`] and [`PipeWire::restart`] are a real host-device
//! removal and return. Everything is killed on drop.
//!
//! `scripts/install-deps.sh` installs PipeWire 1.4 from bookworm-backports.
//! `VSOUND_NO_PIPEWIRE=1` makes [`PipeWire::start`] return `None` (the
//! tests that need it say so and pass); without that, a missing PipeWire is
//! an error, so CI cannot skip these tests by accident.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The null sink's node name.
pub const SINK: &str = "vsnull";

/// The ALSA PCM name that plays into [`SINK`] and captures from its monitor.
pub const PCM: &str = "pipewire:NODE=vsnull";

/// The real-time priority of the graph's processes (not the daemon's).
const RT_PRIORITY: i32 = 20;

/// How long the server and its session manager get to come up.
const STARTUP: Duration = Duration::from_secs(20);

/// A running headless PipeWire (server, session manager, null sink).
pub struct PipeWire {
    dir: tempfile::TempDir,
    server: Option<Child>,
    session: Option<Child>,
}

/// A `pw-record` of [`SINK`]'s monitor.
pub struct Recording {
    child: Option<Child>,
    path: PathBuf,
}

fn setup(what: &str, e: impl std::fmt::Display) -> String {
    format!("PipeWire: {what}: {e}")
}

impl PipeWire {
    /// Starts PipeWire, or `None` when `VSOUND_NO_PIPEWIRE=1`.
    pub fn start() -> Result<Option<PipeWire>, String> {
        if std::env::var("VSOUND_NO_PIPEWIRE").is_ok_and(|v| v == "1") {
            eprintln!("VSOUND_NO_PIPEWIRE=1: not testing against PipeWire");
            return Ok(None);
        }
        // In memory (/dev/shm, where there is one): `pw-record` writes its
        // file from the graph's cycle, and a write that waits for the disk
        // makes it miss cycles.
        let dir = crate::unprivileged::tempdir_in("vsound-pw-", Path::new("/dev/shm"))
            .map_err(|e| setup("runtime dir", e))?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700))
            .map_err(|e| setup("runtime dir", e))?;
        let mut pw = PipeWire {
            dir,
            server: None,
            session: None,
        };
        pw.restart()?;
        Ok(Some(pw))
    }

    /// The runtime directory (the server's socket `pipewire-0` is in it).
    pub fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment a client (the daemon) needs to find this server.
    pub fn env(&self) -> Vec<(String, String)> {
        let dir = self.runtime_dir().display().to_string();
        vec![
            ("XDG_RUNTIME_DIR".into(), dir.clone()),
            ("PIPEWIRE_RUNTIME_DIR".into(), dir),
        ]
    }

    /// A command run as the daemon's user in this server's environment.
    fn command(&self, program: &str) -> Result<Command, String> {
        let mut c = crate::unprivileged::as_daemon_user(program);
        c.envs(self.env())
            .env("HOME", self.runtime_dir())
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        Ok(c)
    }

    /// [`PipeWire::command`] for a process in the graph (the server, the
    /// session manager, the recorder and the player), with a real-time
    /// priority (`SCHED_FIFO` [`RT_PRIORITY`]) as a desktop's rtkit gives
    /// them: a graph process late by a quantum loses that quantum of the
    /// recording, and on this VM a normal-priority process is late by
    /// 20 ms now and then. The daemon keeps its normal priority: what it
    /// must survive is tested as it runs.
    fn graph_command(&self, program: &str) -> Result<Command, String> {
        let mut c = self.command(program)?;
        // SAFETY: the closure runs in the child between fork and exec and
        // makes one async-signal-safe system call; a refusal (no
        // CAP_SYS_NICE, a cgroup without real-time time) is ignored: the
        // process runs at normal priority.
        unsafe {
            c.pre_exec(|| {
                let p = libc::sched_param {
                    sched_priority: RT_PRIORITY,
                };
                libc::sched_setscheduler(0, libc::SCHED_FIFO, &p);
                Ok(())
            });
        }
        Ok(c)
    }

    fn log(&self, name: &str) -> Result<Stdio, String> {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.runtime_dir().join(name))
            .map_err(|e| setup(name, e))?;
        Ok(Stdio::from(f))
    }

    fn spawn(&self, program: &str, log: &str) -> Result<Child, String> {
        let mut c = self.graph_command(program)?;
        c.stdout(self.log(log)?).stderr(self.log(log)?);
        c.spawn().map_err(|e| {
            setup(
                &format!("starting {program} (scripts/install-deps.sh installs it)"),
                e,
            )
        })
    }

    /// The server's and the session manager's logs, for a failure message.
    pub fn logs(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.runtime_dir().join(n)).unwrap_or_default();
        let tail = |s: String| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "--- pipewire\n{}\n--- wireplumber\n{}",
            tail(read("pipewire.log")),
            tail(read("wireplumber.log"))
        )
    }

    /// Runs `pw-cli ARGS` to its end; its output.
    fn pw_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .command("pw-cli")?
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .output()
            .map_err(|e| setup("pw-cli", e))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Kills the server and its session manager at once (SIGKILL): to the
    /// daemon, the device is gone.
    pub fn kill(&mut self) {
        for child in [self.session.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.runtime_dir().join("pipewire-0"));
        let _ = fs::remove_file(self.runtime_dir().join("pipewire-0.lock"));
    }

    /// Freezes (`true`: SIGSTOP) or thaws (SIGCONT) the server and its
    /// session manager: a sound server that hangs, its socket still there.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        for child in [&self.server, &self.session].into_iter().flatten() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: a signal to our own child, which has not been reaped.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    /// (Re)starts the server and its session manager and (re)creates the
    /// null sink; returns once the sink exists.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.server = Some(self.spawn("pipewire", "pipewire.log")?);
        let deadline = Instant::now() + STARTUP;
        while !self.runtime_dir().join("pipewire-0").exists() {
            if Instant::now() > deadline {
                return Err(format!("PipeWire did not start\n{}", self.logs()));
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.session = Some(self.spawn("wireplumber", "wireplumber.log")?);
        let props = format!(
            "{{ factory.name=support.null-audio-sink node.name={SINK} media.class=Audio/Sink \
             object.linger=true audio.position=[FL FR] }}"
        );
        // The adapter factory comes with the session manager's first
        // modules: try until the sink is there.
        loop {
            if self
                .pw_cli(&["ls", "Node"])?
                .contains(&format!("node.name = \"{SINK}\""))
            {
                break;
            }
            let _ = self.pw_cli(&["create-node", "adapter", &props])?;
            if Instant::now() > deadline {
                return Err(format!("PipeWire: no sink {SINK}\n{}", self.logs()));
            }
            thread::sleep(Duration::from_millis(100));
        }
        // Linking needs the session manager up: wait until it has seen
        // the sink (it sets the default to the only sink there is).
        while !self
            .pw_cli(&["ls", "Metadata"])?
            .contains("metadata.name = \"default\"")
        {
            if Instant::now() > deadline {
                return Err(format!("PipeWire: no session manager\n{}", self.logs()));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts recording what reaches [`SINK`] (S16, 48 kHz, stereo);
    /// returns once the recorder runs.
    pub fn record(&self, name: &str) -> Result<Recording, String> {
        let path = self.runtime_dir().join(name);
        let child = self
            .graph_command("pw-record")?
            .args(["-P", "{ stream.capture.sink=true }", "--target", SINK])
            .args(["--format", "s16", "--rate", "48000", "--channels", "2"])
            .arg(&path)
            .stdout(self.log("pw-record.log")?)
            .stderr(self.log("pw-record.log")?)
            .spawn()
            .map_err(|e| setup("pw-record", e))?;
        let rec = Recording {
            child: Some(child),
            path,
        };
        // Linked once the file has its header and the node is in the graph.
        let deadline = Instant::now() + STARTUP;
        loop {
            let nodes = self.pw_cli(&["ls", "Link"])?;
            if fs::metadata(&rec.path).is_ok() && nodes.contains("link.input.node") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("pw-record did not start\n{}", self.logs()));
            }
            thread::sleep(Duration::from_millis(20));
        }
        thread::sleep(Duration::from_millis(200));
        Ok(rec)
    }

    /// Plays `pcm` (S16, 48 kHz, stereo) into [`SINK`] with `pw-play`;
    /// the child runs until it has played all.
    pub fn play(&self, pcm: &[u8]) -> Result<Child, String> {
        let path = self.runtime_dir().join("play.wav");
        fs::write(&path, wav_file(pcm)).map_err(|e| setup("play file", e))?;
        crate::unprivileged::give(&path).map_err(|e| setup("play file", e))?;
        self.graph_command("pw-play")?
            .args(["--target", SINK])
            .arg(&path)
            .stdout(self.log("pw-play.log")?)
            .stderr(self.log("pw-play.log")?)
            .spawn()
            .map_err(|e| setup("pw-play", e))
    }
}

impl Drop for PipeWire {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Recording {
    /// Stops the recorder (SIGINT: it finishes its file) and returns the
    /// frames recorded (the WAV file's data).
    pub fn stop(mut self) -> Result<Vec<u8>, String> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling a child we own.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        let bytes = fs::read(&self.path).map_err(|e| setup("recording", e))?;
        wav_data(&bytes).map(<[u8]>::to_vec).ok_or_else(|| {
            format!(
                "PipeWire: {} is not a WAV file ({} bytes)",
                self.path.display(),
                bytes.len()
            )
        })
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The samples of a RIFF/WAVE file: its `data` chunk, up to the file's end
/// when the chunk's size was never written (a recorder that was killed).
pub fn wav_data(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.get(..4)? != b"RIFF" || bytes.get(8..12)? != b"WAVE" {
        return None;
    }
    let mut at = 12usize;
    loop {
        let id = bytes.get(at..at + 4)?;
        let size = u32::from_le_bytes(bytes.get(at + 4..at + 8)?.try_into().ok()?) as usize;
        let body = at + 8;
        if id == b"data" {
            let end = body.saturating_add(size).min(bytes.len());
            let end = if size == 0 || size == u32::MAX as usize {
                bytes.len()
            } else {
                end
            };
            return bytes.get(body..end);
        }
        at = body.checked_add(size)?.checked_add(size & 1)?;
    }
}

/// A WAV file of `pcm`: S16, 48 kHz, stereo.
pub fn wav_file(pcm: &[u8]) -> Vec<u8> {
    let len = u32::try_from(pcm.len()).unwrap_or(u32::MAX);
    let mut v = Vec::with_capacity(pcm.len() + 44);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&len.saturating_add(36).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // PCM
    v.extend_from_slice(&2u16.to_le_bytes()); // channels
    v.extend_from_slice(&48_000u32.to_le_bytes());
    v.extend_from_slice(&(48_000u32 * 4).to_le_bytes());
    v.extend_from_slice(&4u16.to_le_bytes()); // block align
    v.extend_from_slice(&16u16.to_le_bytes()); // bits
    v.extend_from_slice(b"data");
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(pcm);
    v
}

/// Where `needle` starts in `haystack`, if anywhere.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(data: &[u8], size: u32) -> Vec<u8> {
        let mut v = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&[0; 16]);
        v.extend_from_slice(b"data");
        v.extend_from_slice(&size.to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn wav_data_is_the_data_chunk_or_the_rest_of_an_unfinished_file() {
        assert_eq!(wav_data(&wav(b"abcd", 4)), Some(&b"abcd"[..]));
        assert_eq!(wav_data(&wav(b"abcdef", 4)), Some(&b"abcd"[..]));
        assert_eq!(wav_data(&wav(b"abcd", 0)), Some(&b"abcd"[..]));
        assert_eq!(wav_data(&wav(b"abcd", u32::MAX)), Some(&b"abcd"[..]));
        assert_eq!(wav_data(b"RIFX"), None);
        assert_eq!(wav_data(&wav_file(b"abcd")), Some(&b"abcd"[..]));
    }

    #[test]
    fn find_locates_a_slice() {
        assert_eq!(find(b"xxabcx", b"abc"), Some(2));
        assert_eq!(find(b"xxabx", b"abc"), None);
    }
}
