//! Listening sockets handed to the daemon instead of paths: `--socket-fd N`
//! and systemd's socket activation (`LISTEN_PID`, `LISTEN_FDS`,
//! `LISTEN_FDNAMES`; see `sd_listen_fds(3)`).
//!
//! An inherited fd is checked before it is used: not stdin, stdout or
//! stderr, open, a Unix stream socket, and listening (`SO_ACCEPTCONN`).
//! Anything else is refused with the reason, never taken on trust.

use std::os::fd::RawFd;

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;
/// More than this many passed fds is a misconfigured unit.
const MAX_LISTEN_FDS: usize = 8;

fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).ok()?;
    // SAFETY: `v` and `len` are valid out-parameters of the stated size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            std::ptr::addr_of_mut!(v).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

/// Checks that `fd` is a listening Unix stream socket we may take, and
/// marks it close-on-exec.
pub fn check_listener(fd: RawFd) -> Result<RawFd, String> {
    if fd < 0 {
        return Err(format!("fd {fd} is not a file descriptor"));
    }
    if fd <= 2 {
        let which = ["stdin", "stdout", "stderr"];
        let name = usize::try_from(fd)
            .ok()
            .and_then(|i| which.get(i))
            .unwrap_or(&"?");
        return Err(format!(
            "fd {fd} is {name}, not a listening socket (pass a socket as fd 3 or above)"
        ));
    }
    // SAFETY: F_GETFD on any integer is harmless; -1 means not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(format!("fd {fd} is not open"));
    }
    // SAFETY: a zeroed `stat` is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open; `st` is valid.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFSOCK {
        return Err(format!("fd {fd} is not a socket"));
    }
    let domain = sockopt(fd, libc::SO_DOMAIN);
    let kind = sockopt(fd, libc::SO_TYPE);
    if domain != Some(libc::AF_UNIX) || kind != Some(libc::SOCK_STREAM) {
        return Err(format!("fd {fd} is not a Unix stream socket"));
    }
    if sockopt(fd, libc::SO_ACCEPTCONN) != Some(1) {
        return Err(format!(
            "fd {fd} is a Unix socket but not listening (it must be bound and listening)"
        ));
    }
    // SAFETY: `fd` is open; setting FD_CLOEXEC has no other effect.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
    }
    Ok(fd)
}

/// The sockets systemd passed, by role.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Activation {
    /// The vhost-user socket: the fd named `vhost-user`, or the first one
    /// not named `api`.
    pub vhost_user: Option<RawFd>,
    /// The management API: the fd named `api`.
    pub api: Option<RawFd>,
}

/// Reads systemd's socket-activation variables. `None` when they are not
/// for this process; an error for a bad value or fd. The variables are
/// removed so that nothing started later sees them.
pub fn from_systemd() -> Result<Option<Activation>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let me = std::process::id().to_string();
    let Some(pid) = pid else {
        return Ok(None);
    };
    if pid.trim() != me {
        return Ok(None);
    }
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let fds = fds.unwrap_or_default();
    let n: usize = fds
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={fds:?} is not a number"))?;
    parse(n, names.as_deref()).map(Some)
}

/// Assigns `n` passed fds (from fd 3) to their roles by `names`
/// (`LISTEN_FDNAMES`, colon-separated), and checks each.
pub fn parse(n: usize, names: Option<&str>) -> Result<Activation, String> {
    if n == 0 {
        return Err("LISTEN_FDS=0: systemd passed no socket".into());
    }
    if n > MAX_LISTEN_FDS {
        return Err(format!(
            "LISTEN_FDS={n}: at most 2 sockets are used (vhost-user, api)"
        ));
    }
    let names: Vec<&str> = names.map(|s| s.split(':').collect()).unwrap_or_default();
    let mut act = Activation::default();
    let mut unnamed = Vec::new();
    for i in 0..n {
        let fd = LISTEN_FDS_START.saturating_add(RawFd::try_from(i).unwrap_or(RawFd::MAX));
        let name = names.get(i).copied().unwrap_or("");
        let slot = match name {
            "api" => &mut act.api,
            "vhost-user" => &mut act.vhost_user,
            _ => {
                unnamed.push(fd);
                continue;
            }
        };
        if slot.is_some() {
            return Err(format!("two sockets named `{name}` in LISTEN_FDNAMES"));
        }
        *slot = Some(check_listener(fd).map_err(|e| format!("socket activation: {e}"))?);
    }
    for fd in unnamed {
        if act.vhost_user.is_none() {
            act.vhost_user =
                Some(check_listener(fd).map_err(|e| format!("socket activation: {e}"))?);
        } else {
            return Err(format!(
                "socket activation: fd {fd} has no use (name the sockets `vhost-user` and `api` with FileDescriptorName=)"
            ));
        }
    }
    Ok(act)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    #[test]
    fn a_listening_unix_socket_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        assert_eq!(check_listener(l.as_raw_fd()), Ok(l.as_raw_fd()));
    }

    #[test]
    fn stdio_closed_fds_and_other_files_are_refused() {
        for fd in [-1, 0, 1, 2] {
            let e = check_listener(fd).unwrap_err();
            assert!(e.contains(&format!("fd {fd}")), "{e}");
        }
        let e = check_listener(1000).unwrap_err();
        assert!(e.contains("not open"), "{e}");
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let e = check_listener(f.as_raw_fd()).unwrap_err();
        assert!(e.contains("not a socket"), "{e}");
        let (a, _b) = UnixStream::pair().unwrap();
        let e = check_listener(a.as_raw_fd()).unwrap_err();
        assert!(e.contains("not listening"), "{e}");
        let d = UnixDatagram::unbound().unwrap();
        let e = check_listener(d.as_raw_fd()).unwrap_err();
        assert!(e.contains("not a Unix stream socket"), "{e}");
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let e = check_listener(t.as_raw_fd()).unwrap_err();
        assert!(e.contains("not a Unix stream socket"), "{e}");
    }

    #[test]
    fn activation_with_no_socket_or_too_many_is_refused() {
        assert!(parse(0, None).is_err());
        assert!(parse(9, None).is_err());
    }
}
