//! Listening Unix sockets, created the safe way: every socket the daemon
//! serves (the vhost-user socket, the management API, each pad) comes from
//! [`listen`].
//!
//! A daemon that runs as root and creates a socket in a directory other
//! users can write must never make a path operation that follows a link
//! there: `bind` then `chmod(path)` lets a user who swaps the path for a
//! symlink between the two calls chmod any file. So:
//!
//! 1. The path is looked at without following links: nothing there is
//!    fine; a socket somebody listens on is refused ("another process is
//!    listening on PATH": a second daemon never steals a live socket); a
//!    stale socket is removed; anything else (a file, a symlink, a
//!    directory) is refused and left alone.
//! 2. The socket is bound inside a fresh private directory (mode 0700,
//!    created next to the final path, reached through its file
//!    descriptor), where nobody else can make or swap an entry; its mode
//!    and owner are set there, relative to that descriptor.
//! 3. It is renamed into place with `RENAME_NOREPLACE`: if another process
//!    bound the path in the meantime, it keeps it and we report it.
//!
//! On drop, the socket file is removed only if the path still names the
//! socket we created (same device and inode): a file that replaced it is
//! not ours to remove.

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The longest path a `sockaddr_un` holds (108 bytes with the final NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Who may connect: the socket file's permission bits and owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Permission bits (at most `0o777`). Connecting needs write permission.
    pub mode: u32,
    /// A user id to give the file to (`None`: the daemon's own).
    pub owner: Option<u32>,
    /// A group id to give the file to (`None`: the daemon's own).
    pub group: Option<u32>,
}

impl Default for Access {
    /// Only the daemon's own user may connect.
    fn default() -> Self {
        Access {
            mode: DEFAULT_MODE,
            owner: None,
            group: None,
        }
    }
}

/// The mode of a socket whose configuration names none.
pub const DEFAULT_MODE: u32 = 0o600;

/// Why a socket could not be created. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("the socket path is empty")]
    Empty,
    #[error("{}: the path is {len} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}", path.display())]
    TooLong { path: PathBuf, len: usize },
    #[error("{}: the directory {} does not exist or is not a directory", path.display(), dir.display())]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("another process is listening on {}", path.display())]
    InUse { path: PathBuf },
    #[error("{}: cannot {step}", path.display())]
    Io {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

impl SocketError {
    fn io(path: &Path, step: &'static str, source: io::Error) -> SocketError {
        SocketError::Io {
            path: path.to_owned(),
            step,
            source,
        }
    }
}

/// The socket file [`listen`] created; removed on drop if the path still
/// names it.
pub struct SocketFile {
    path: PathBuf,
    dir: OwnedFd,
    name: CString,
    dev: u64,
    ino: u64,
    registered: u64,
}

impl fmt::Debug for SocketFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketFile")
            .field("path", &self.path)
            .finish()
    }
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` still names this socket.
    pub fn is_in_place(&self) -> bool {
        stat_at(&self.dir, &self.name).is_ok_and(|st| is_same(&st, self.dev, self.ino))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        unregister(self.registered);
        remove_if_ours(
            self.dir.as_raw_fd(),
            &self.name,
            self.dev,
            self.ino,
            &self.path,
        );
    }
}

fn is_same(st: &libc::stat, dev: u64, ino: u64) -> bool {
    (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK && st.st_dev == dev && st.st_ino == ino
}

fn remove_if_ours(dir: RawFd, name: &CStr, dev: u64, ino: u64, path: &Path) {
    // SAFETY: a zeroed `stat` is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open directory fd, `name` a NUL-terminated name,
    // `st` a valid out-parameter.
    let r = unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r != 0 || !is_same(&st, dev, ino) {
        return;
    }
    // SAFETY: as above; unlinkat never follows a link.
    if unsafe { libc::unlinkat(dir, name.as_ptr(), 0) } != 0 {
        log::warn!(
            "cannot remove {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }
}

/// Every socket file alive now, so that an exit that cannot wait for the
/// owners to be dropped (a stop past its deadline) still removes them.
struct Registered {
    id: u64,
    dir: RawFd,
    name: CString,
    dev: u64,
    ino: u64,
    path: PathBuf,
}

static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn registry() -> std::sync::MutexGuard<'static, Vec<Registered>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn unregister(id: u64) {
    registry().retain(|r| r.id != id);
}

/// Removes every socket file still in place (for an exit that does not
/// drop their owners). Their fds stay open; the process is about to end.
pub fn remove_all_now() {
    let all = std::mem::take(&mut *registry());
    for r in all {
        remove_if_ours(r.dir, &r.name, r.dev, r.ino, &r.path);
    }
}

fn stat_at(dir: &OwnedFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: a zeroed `stat` is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is an open directory fd, `name` NUL-terminated.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Checks what [`listen`] checks before touching anything: a path that
/// fits a socket address, in a directory that exists. For `check-config`.
pub fn check_path(path: &Path) -> Result<(), SocketError> {
    split(path).map(|_| ())
}

/// The directory and file name of `path`, checked.
fn split(path: &Path) -> Result<(PathBuf, CString), SocketError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(SocketError::Empty);
    }
    if bytes.len() > MAX_SOCKET_PATH {
        return Err(SocketError::TooLong {
            path: path.to_owned(),
            len: bytes.len(),
        });
    }
    let no_name = || SocketError::NotASocket {
        path: path.to_owned(),
    };
    let name = path.file_name().ok_or_else(no_name)?;
    let name = CString::new(name.as_bytes()).map_err(|_| no_name())?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if !fs::metadata(&dir).is_ok_and(|m| m.is_dir()) {
        return Err(SocketError::NoDirectory {
            path: path.to_owned(),
            dir,
        });
    }
    Ok((dir, name))
}

fn open_dir(dir: &Path, path: &Path) -> Result<OwnedFd, SocketError> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| SocketError::NoDirectory {
        path: path.to_owned(),
        dir: dir.to_owned(),
    })?;
    // SAFETY: `c` is NUL-terminated; the fd returned is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(SocketError::io(
            path,
            "open its directory",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What is at the path now.
enum Existing {
    Nothing,
    /// A socket nobody listens on (removed before the new one goes there).
    Stale,
}

fn look(dir: &OwnedFd, name: &CStr, path: &Path) -> Result<Existing, SocketError> {
    let st = match stat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(SocketError::io(path, "look at the path", e)),
    };
    if (st.st_mode & libc::S_IFMT) != libc::S_IFSOCK {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    // Connecting through the path is fine: it is a socket, not a link.
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(Existing::Stale),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Existing::Nothing),
        Err(e) => Err(SocketError::io(path, "check whether it is in use", e)),
    }
}

/// A private directory next to the socket: mode 0700, owned by us, reached
/// through its fd. Removed on drop.
struct PrivateDir {
    parent: RawFd,
    name: CString,
    fd: OwnedFd,
}

impl PrivateDir {
    fn create(parent: &OwnedFd, path: &Path) -> Result<PrivateDir, SocketError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..16 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!(".vsound-{}-{n}-{nanos:x}", std::process::id());
            let Ok(name) = CString::new(name) else {
                continue;
            };
            // SAFETY: `parent` is an open directory fd, `name` NUL-terminated.
            let made = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o700) };
            if let Err(e) = check(made) {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    last = e;
                    continue;
                }
                return Err(SocketError::io(
                    path,
                    "create a private directory next to it",
                    e,
                ));
            }
            // SAFETY: as above; O_NOFOLLOW refuses a link swapped in.
            let fd = unsafe {
                libc::openat(
                    parent.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(SocketError::io(
                    path,
                    "open its private directory",
                    io::Error::last_os_error(),
                ));
            }
            // SAFETY: just opened, owned here.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let dir = PrivateDir {
                parent: parent.as_raw_fd(),
                name,
                fd,
            };
            // The directory we opened must be the one we made: ours, 0700.
            // SAFETY: a zeroed `stat` is a valid out-parameter.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `dir.fd` is open; `st` a valid out-parameter.
            check(unsafe { libc::fstat(dir.fd.as_raw_fd(), &mut st) })
                .map_err(|e| SocketError::io(path, "check its private directory", e))?;
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if st.st_uid != me || (st.st_mode & 0o077) != 0 {
                return Err(SocketError::io(
                    path,
                    "use its private directory (it was replaced)",
                    io::Error::from(io::ErrorKind::PermissionDenied),
                ));
            }
            return Ok(dir);
        }
        Err(SocketError::io(
            path,
            "create a private directory next to it",
            last,
        ))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // SAFETY: `parent` outlives this value (the caller's fd); a name
        // swapped for something else is not removed (not an empty dir of ours
        // at worst).
        unsafe {
            libc::unlinkat(self.parent, self.name.as_ptr(), libc::AT_REMOVEDIR);
        }
    }
}

fn renameat2_noreplace(from_dir: RawFd, from: &CStr, to_dir: RawFd, to: &CStr) -> io::Result<()> {
    // SAFETY: both dirs are open fds, both names NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            from_dir,
            from.as_ptr(),
            to_dir,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates a listening socket at `path` with `access`, as described in the
/// module documentation. The listener is blocking; the file is removed when
/// the returned [`SocketFile`] is dropped.
pub fn listen(path: &Path, access: &Access) -> Result<(UnixListener, SocketFile), SocketError> {
    let (dir_path, name) = split(path)?;
    let parent = open_dir(&dir_path, path)?;
    let existing = look(&parent, &name, path)?;

    let private = PrivateDir::create(&parent, path)?;
    let inner = c"s";
    // Bind through the private directory's fd: short, and unaffected by
    // anything renamed around it.
    let bind_path = format!("/proc/self/fd/{}/s", private.fd.as_raw_fd());
    let listener =
        UnixListener::bind(OsStr::new(&bind_path)).map_err(|e| SocketError::io(path, "bind", e))?;
    let dirfd = private.fd.as_raw_fd();
    // SAFETY: `dirfd` is open, `inner` NUL-terminated; the entry is ours
    // (nobody else can write the directory) and a socket, not a link.
    check(unsafe { libc::fchmodat(dirfd, inner.as_ptr(), access.mode, 0) })
        .map_err(|e| SocketError::io(path, "set its mode", e))?;
    if access.owner.is_some() || access.group.is_some() {
        let uid = access.owner.unwrap_or(u32::MAX); // -1: unchanged
        let gid = access.group.unwrap_or(u32::MAX);
        // SAFETY: as above; AT_SYMLINK_NOFOLLOW for good measure.
        check(unsafe {
            libc::fchownat(dirfd, inner.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
        })
        .map_err(|e| SocketError::io(path, "set its owner or group", e))?;
    }
    let st = stat_at(&private.fd, inner).map_err(|e| SocketError::io(path, "bind", e))?;

    if let Existing::Stale = existing {
        // SAFETY: `parent` is open, `name` NUL-terminated; unlinkat removes
        // the entry itself, never what a link points at.
        let r = unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(SocketError::io(path, "remove the stale socket", e));
            }
        }
        log::info!("{}: replaced a stale socket", path.display());
    }
    match renameat2_noreplace(dirfd, inner, parent.as_raw_fd(), &name) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Somebody bound it meanwhile; what is there is theirs.
            return Err(match look(&parent, &name, path) {
                Ok(_) | Err(SocketError::InUse { .. }) => SocketError::InUse {
                    path: path.to_owned(),
                },
                Err(other) => other,
            });
        }
        Err(e) => return Err(SocketError::io(path, "move it into place", e)),
    }
    drop(private);

    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry().push(Registered {
        id,
        dir: parent.as_raw_fd(),
        name: name.clone(),
        dev: st.st_dev,
        ino: st.st_ino,
        path: path.to_owned(),
    });
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            dir: parent,
            name,
            dev: st.st_dev,
            ino: st.st_ino,
            registered: id,
        },
    ))
}

// -- Configuration values ------------------------------------------------------

/// Deserializes a socket path: not empty, no NUL, fits a socket address.
pub fn de_path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Err(de::Error::custom("path must not be empty"));
    }
    if s.contains('\0') {
        return Err(de::Error::custom("path must not contain NUL"));
    }
    if s.len() > MAX_SOCKET_PATH {
        return Err(de::Error::custom(format!(
            "path is {} bytes; a Unix socket path holds at most {MAX_SOCKET_PATH}",
            s.len()
        )));
    }
    Ok(PathBuf::from(s))
}

/// Deserializes permission bits: `"0660"`/`"660"`/`"0o660"` (octal
/// digits) or an integer (`0o660` in TOML; the value is taken as is). Only
/// permission bits (at most `0o777`) make sense on a socket.
pub fn de_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    struct ModeVisitor;

    impl ModeVisitor {
        fn checked<E: de::Error>(v: u64) -> Result<u32, E> {
            match u32::try_from(v) {
                Ok(m) if m <= 0o777 => Ok(m),
                _ => Err(E::custom(format!(
                    "mode {v:#o} has bits beyond 0o777; write it as \"0660\" or 0o660"
                ))),
            }
        }
    }

    impl Visitor<'_> for ModeVisitor {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an octal permission such as \"0660\" or 0o660")
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            Self::checked(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            let v = u64::try_from(v).map_err(|_| E::custom("mode must not be negative"))?;
            Self::checked(v)
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<u32, E> {
            let digits = s.strip_prefix("0o").unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                return Err(E::custom(format!(
                    "mode `{s}` is not octal; expected something like \"0660\""
                )));
            }
            let v = u64::from_str_radix(digits, 8).map_err(|_| E::custom("mode is too large"))?;
            Self::checked(v)
        }
    }

    d.deserialize_any(ModeVisitor)
}

/// Users or groups: a name looked up in the system's database, or a
/// number.
#[derive(Clone, Copy)]
enum IdKind {
    User,
    Group,
}

fn de_id<'de, D: Deserializer<'de>>(d: D, kind: IdKind) -> Result<u32, D::Error> {
    struct IdVisitor(IdKind);

    impl Visitor<'_> for IdVisitor {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                IdKind::User => f.write_str("a user name or a numeric user id"),
                IdKind::Group => f.write_str("a group name or a numeric group id"),
            }
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            match u32::try_from(v) {
                Ok(id) if id != u32::MAX => Ok(id),
                _ => Err(E::custom(format!("{v} is not a valid id"))),
            }
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            let v = u64::try_from(v).map_err(|_| E::custom("an id must not be negative"))?;
            self.visit_u64(v)
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<u32, E> {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                let v: u64 = s.parse().map_err(|_| E::custom("id is too large"))?;
                return self.visit_u64(v);
            }
            let found = match self.0 {
                IdKind::User => user_id(s),
                IdKind::Group => group_id(s),
            };
            found.map_err(E::custom)
        }
    }

    d.deserialize_any(IdVisitor(kind))
}

/// Deserializes an owner: a user name or a numeric uid.
pub fn de_owner<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    de_id(d, IdKind::User).map(Some)
}

/// Deserializes a group: a group name or a numeric gid.
pub fn de_group<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    de_id(d, IdKind::Group).map(Some)
}

/// Looks up a user name (`getpwnam_r`).
pub fn user_id(name: &str) -> Result<u32, String> {
    let c = CString::new(name).map_err(|_| format!("no user `{name}`"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` is as long as said.
    let r = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 {
        return Err(format!(
            "cannot look up user `{name}`: {}",
            io::Error::from_raw_os_error(r)
        ));
    }
    if out.is_null() {
        return Err(format!("no user `{name}` on this system"));
    }
    Ok(pw.pw_uid)
}

/// Looks up a group name (`getgrnam_r`).
pub fn group_id(name: &str) -> Result<u32, String> {
    let c = CString::new(name).map_err(|_| format!("no group `{name}`"))?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: a zeroed group is a valid out-parameter.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` is as long as said.
    let r = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 {
        return Err(format!(
            "cannot look up group `{name}`: {}",
            io::Error::from_raw_os_error(r)
        ));
    }
    if out.is_null() {
        return Err(format!("no group `{name}` on this system"));
    }
    Ok(gr.gr_gid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    fn access(mode: u32) -> Access {
        Access {
            mode,
            owner: None,
            group: None,
        }
    }

    #[test]
    fn a_new_socket_has_its_mode_from_the_start_and_is_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.sock");
        let (l, f) = listen(&p, &access(0o640)).unwrap();
        let m = fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        UnixStream::connect(&p).unwrap();
        // Nothing is left beside it: the private directory is gone.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        drop(l);
        drop(f);
        assert!(fs::symlink_metadata(&p).is_err());
    }

    #[test]
    fn a_live_socket_is_never_stolen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.sock");
        let (_l, _f) = listen(&p, &access(0o600)).unwrap();
        let e = listen(&p, &access(0o600)).unwrap_err();
        assert!(matches!(e, SocketError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("another process is listening on"));
        UnixStream::connect(&p).unwrap();
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.sock");
        drop(UnixListener::bind(&p).unwrap()); // leaves the file behind
        let (_l, _f) = listen(&p, &access(0o600)).unwrap();
        UnixStream::connect(&p).unwrap();
    }

    #[test]
    fn a_symlink_or_a_file_at_the_path_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        fs::write(&target, b"data").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("a.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = listen(&link, &access(0o666)).unwrap_err();
        assert!(matches!(e, SocketError::NotASocket { .. }), "{e}");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let e = listen(&target, &access(0o666)).unwrap_err();
        assert!(matches!(e, SocketError::NotASocket { .. }), "{e}");
        assert_eq!(fs::read(&target).unwrap(), b"data");
    }

    #[test]
    fn a_socket_replaced_under_the_daemon_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.sock");
        let (l, f) = listen(&p, &access(0o600)).unwrap();
        fs::remove_file(&p).unwrap();
        let other = UnixListener::bind(&p).unwrap();
        assert!(!f.is_in_place());
        drop(l);
        drop(f);
        assert!(fs::symlink_metadata(&p).is_ok(), "the other socket stays");
        drop(other);
    }

    #[test]
    fn bad_paths_are_named() {
        assert!(matches!(
            listen(Path::new(""), &Access::default()),
            Err(SocketError::Empty)
        ));
        let e = listen(Path::new("/nonexistent-dir/x.sock"), &Access::default()).unwrap_err();
        assert!(matches!(e, SocketError::NoDirectory { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent-dir"), "{e}");
        let long = format!("/tmp/{}", "x".repeat(120));
        let e = listen(Path::new(&long), &Access::default()).unwrap_err();
        assert!(matches!(e, SocketError::TooLong { .. }), "{e}");
    }

    #[test]
    fn a_long_path_that_fits_binds_through_the_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().as_os_str().len() + 1;
        let name = "n".repeat(MAX_SOCKET_PATH - base);
        let p = dir.path().join(name);
        assert_eq!(p.as_os_str().len(), MAX_SOCKET_PATH);
        let (_l, _f) = listen(&p, &access(0o600)).unwrap();
        UnixStream::connect(&p).unwrap();
    }

    #[test]
    fn owner_and_group_are_set_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.sock");
        // SAFETY: no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let (_l, _f) = listen(
            &p,
            &Access {
                mode: 0o660,
                owner: Some(uid),
                group: Some(gid),
            },
        )
        .unwrap();
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid));
        if uid == 0 {
            let p2 = dir.path().join("b.sock");
            let (_l2, _f2) = listen(
                &p2,
                &Access {
                    mode: 0o660,
                    owner: Some(65534),
                    group: Some(65534),
                },
            )
            .unwrap();
            let m = fs::symlink_metadata(&p2).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534));
        }
    }

    #[test]
    fn names_resolve_and_unknown_ones_are_named() {
        assert_eq!(user_id("root"), Ok(0));
        assert_eq!(group_id("root"), Ok(0));
        let e = user_id("no-such-user-vsound").unwrap_err();
        assert!(e.contains("no-such-user-vsound"), "{e}");
    }
}
