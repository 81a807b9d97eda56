//! The tests run the daemon as a service runs it: never as root. When the
//! tests run as root (CI does), every daemon they start runs as the
//! unprivileged user `vsound-test` (a system user in group `audio`, made by
//! `scripts/install-deps.sh`; `VSOUND_TEST_USER` names another one, and
//! `VSOUND_TEST_USER=root` keeps root). Without that user the daemon runs as
//! the tests do, with one warning.
//!
//! The daemon must then be able to run its binary and to create its sockets:
//! [`runnable`] copies the binary where any user may run it (a checkout
//! under `/root` is not), and [`tempdir`] makes directories the daemon's
//! user owns.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The user the tests' daemons run as, when not the tests' own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

fn lookup(name: &str) -> Option<DaemonUser> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call, `buf` as long as said.
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    (r == 0 && !out.is_null()).then(|| DaemonUser {
        name: name.to_owned(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

/// The user daemons run as, or `None` for the tests' own.
pub fn daemon_user() -> Option<&'static DaemonUser> {
    static USER: OnceLock<Option<DaemonUser>> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = std::env::var("VSOUND_TEST_USER").unwrap_or_else(|_| "vsound-test".into());
        if name == "root" {
            return None;
        }
        let user = lookup(&name);
        if user.is_none() {
            eprintln!(
                "vmm-tests: no user `{name}` (scripts/install-deps.sh makes it): the daemon runs as root"
            );
        }
        user
    })
    .as_ref()
}

/// A copy of `bin` that the daemon's user can run (the binary itself when
/// it runs as the tests do).
pub fn runnable(bin: &Path) -> io::Result<PathBuf> {
    if daemon_user().is_none() {
        return Ok(bin.to_owned());
    }
    let meta = fs::metadata(bin)?;
    let dir = Path::new("/tmp/vsound-test-bins");
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let name = format!(
        "{}-{}-{}",
        bin.file_name().and_then(|n| n.to_str()).unwrap_or("vsound"),
        meta.size(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000
    );
    let dest = dir.join(name);
    if !dest.exists() {
        let tmp = dir.join(format!(".{}.{}", std::process::id(), rand_suffix()));
        fs::copy(bin, &tmp)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, &dest)?;
    }
    Ok(dest)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A command that runs `bin` as the daemon's user.
pub fn command(bin: &Path) -> io::Result<Command> {
    Ok(as_daemon_user(runnable(bin)?))
}

/// A command that runs `program` (found on `PATH`, or a path any user may
/// run) as the daemon's user, through `setpriv` when that is not the
/// tests' own.
pub fn as_daemon_user(program: impl AsRef<std::ffi::OsStr>) -> Command {
    match daemon_user() {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={}", u.uid))
                .arg(format!("--regid={}", u.gid))
                .arg("--init-groups")
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Gives `path` to the daemon's user (nothing when it runs as the tests do).
pub fn give(path: &Path) -> io::Result<()> {
    if let Some(u) = daemon_user() {
        std::os::unix::fs::chown(path, Some(u.uid), Some(u.gid))?;
    }
    Ok(())
}

/// A temporary directory the daemon's user owns (for its sockets and
/// files).
pub fn tempdir(prefix: &str) -> io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    give(dir.path())?;
    Ok(dir)
}

/// [`tempdir`] in `parent`, or in the usual temporary directory if
/// `parent` is not a directory.
pub fn tempdir_in(prefix: &str, parent: &Path) -> io::Result<tempfile::TempDir> {
    if !parent.is_dir() {
        return tempdir(prefix);
    }
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
    give(dir.path())?;
    Ok(dir)
}
