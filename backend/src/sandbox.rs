//! The seccomp sandbox: `--seccomp=on|log|off` (default `on`).
//!
//! The daemon parses guest-controlled data (virtqueues, vhost-user
//! messages) and untrusted local input (pad clients, management API
//! clients). A bug there must not become "run a shell": with the sandbox
//! on, every thread can make only the system calls its kind of thread
//! needs, and nothing in the process can `execve`, fork, `ptrace`, open an
//! IP socket or change its own filters' verdicts.
//!
//! # Design
//!
//! Filters are built with rust-vmm's `seccompiler` and stack: a call must
//! be allowed by every filter of the calling thread, and a thread inherits
//! the filters of the thread that created it.
//!
//! - **Process filter**, installed by [`install`] on every thread at once
//!   (`SECCOMP_FILTER_FLAG_TSYNC`) after the configuration is parsed and
//!   before the daemon opens devices, binds sockets or starts any thread.
//!   It allows the union of what any thread needs plus what the main thread
//!   does (bind and listen on Unix sockets, set their modes, accept VMMs,
//!   start threads). The main thread keeps only this filter. (Binding
//!   happens after it, in [`crate::daemon::run`], so the process filter
//!   allows `bind`/`listen`; no per-thread filter does.)
//! - **clone3 filter**, installed with it: `clone3` fails with `ENOSYS`, so
//!   glibc falls back to `clone`, whose flags a filter can see (`clone3`
//!   passes them in memory). Every filter allows `clone` only with
//!   `CLONE_THREAD`: threads, never processes.
//! - **Per-thread filters**, installed by [`enter`] as the first thing a
//!   thread does, one per [`ThreadKind`]: stream lanes (`vsound-s*`), the
//!   shared reactor (which also watches the lanes for hangs), the
//!   connection watch, the management API (its
//!   connection threads inherit it), pad threads (`pad-*`), ALSA monitors
//!   (`alsa-*`, via [`vsound_devices::set_thread_hook`]). The two threads
//!   vhost-user-backend starts, the request thread (named
//!   [`REQUEST_THREAD`]) and the queue thread (`vring_worker`), get theirs
//!   at their first backend callback ([`enter_library_thread`]: a
//!   thread-local flag and the thread's name; the main thread, which makes
//!   some of those callbacks too, is never filtered further). Until then
//!   they run under the process filter only: the request thread has read
//!   its first message, the queue thread has waited for its first event.
//!   A thread that starts others allows what they need until they install
//!   their own (the shared reactor restarts a hung lane's thread, so it
//!   allows what a lane does, and starting a thread).
//! - Host devices are called from the queue thread (`check_params` at
//!   `PCM_SET_PARAMS`, endpoints closed at `PCM_RELEASE`), the request
//!   thread (device reset), the API (detach), stream lanes and the
//!   shared reactor. `null` and `pad` devices need nothing there but locks and
//!   an eventfd write. Any other kind (ALSA, test plugins) adds the *host
//!   device* group to those kinds and to the process filter: files
//!   (`openat` included: alsa-lib reads its configuration and the `file`
//!   plugin writes one), `ioctl` on any request, `mmap` of files with
//!   `PROT_EXEC` (alsa-lib `dlopen`s plugins), System V IPC (dmix,
//!   dsnoop), and what a sound-server client plugin (pulse, pipewire, jack)
//!   typically does: Unix sockets, eventfds, timers, memfds, threads,
//!   real-time scheduling. ALSA PCMs that run a program (`file "|cmd"`) or
//!   fork a server (dmix's) cannot work with the sandbox on.
//!
//! The lists were found by tracing the integration suite and the guest
//! suite (`strace -f`), alsa-lib's `file` plugin included, and checked with
//! PipeWire 0.3's ALSA plugin (`pcm = "pipewire"`: playback, capture, the
//! server restarted under a running stream; no session manager, so nothing
//! was linked to a sink) in `log` and `on` mode; argument checks
//! keep `mmap`/`mprotect` from making anonymous memory executable
//! (everywhere) or any memory (outside the host device group), `socket` to
//! `AF_UNIX`, `prctl`, `fcntl` and `tgkill` (`abort` only) to the few
//! operations used, and `rt_sigaction` off `SIGSYS`.
//!
//! # Violations
//!
//! A forbidden call makes the kernel raise `SIGSYS` in the calling thread
//! (`SECCOMP_RET_TRAP`). The handler, installed before the filters (and
//! which the filters then keep in place: `rt_sigaction(SIGSYS)` is
//! forbidden), writes with `write(2)` alone, on standard error:
//!
//! - `on`: `vsound: seccomp: forbidden syscall NAME (NR) in thread T (tid
//!   N); exiting`, then ends the process with `_exit(`[`EXIT_CODE`]`)`
//!   (159 = 128 + SIGSYS). If the handler cannot run (`SIGSYS` blocked),
//!   the kernel kills the process with `SIGSYS`. A call on another ABI
//!   (i386 `int 0x80`) kills it at once (`SECCOMP_RET_KILL_PROCESS`).
//! - `log`: `vsound: seccomp: forbidden syscall NAME (NR) in thread T (tid
//!   N); log mode: it fails with ENOSYS`, once per system call, and the call
//!   returns `-ENOSYS` to its caller (the handler sets the return register),
//!   which goes on as if the kernel lacked it. For finding what a new
//!   device or configuration needs.
//! - `off`: nothing is installed.
//!
//! `RUST_BACKTRACE` is ignored under the sandbox: symbolizing a panic's
//! backtrace opens files, and the panic would end as a forbidden `openat`
//! instead of its message.
//!
//! One exception in both modes: glibc opens a few files lazily, from
//! whichever thread first needs them (`/proc/sys/vm/overcommit_memory` the
//! first time a thread's malloc heap shrinks; the CPU count, which the
//! sandbox also fixes beforehand with `mallopt(M_ARENA_MAX)`). Those opens
//! fail with EACCES, unreported, and glibc takes its defaults.
//!
//! Names come from a table of x86_64 system calls (numbers past it are
//! shown as numbers). The sandbox exists on x86_64 only; elsewhere `on` and
//! `log` log a warning and the daemon runs without it.

use std::fmt;

/// What `--seccomp` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A forbidden system call ends the process.
    On,
    /// A forbidden system call fails with ENOSYS and is logged.
    Log,
    /// No sandbox.
    Off,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::On => "on",
            Mode::Log => "log",
            Mode::Off => "off",
        })
    }
}

/// The kinds of thread, each with its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// vhost-user-backend's request thread (vhost-user messages).
    Request,
    /// vhost-user-backend's `vring_worker` (the virtqueues).
    Queue,
    /// A stream worker (`vsound-sN`).
    Stream,
    /// The shared reactor (`vsound-reactor`): the streams on devices that
    /// never block, and the hang watch over the lanes that may (it
    /// restarts a hung lane's thread).
    Reactor,
    /// A connection's watch (`vsound-watch`).
    Watch,
    /// The management API (`vsound-api`, `vsound-api-conn`).
    Api,
    /// A pad device's thread (`pad-NAME`).
    Pad,
    /// An ALSA device's monitor (`alsa-NAME`).
    AlsaMonitor,
    /// The signal thread (`vsound-signal`): SIGTERM, SIGINT, SIGHUP.
    Signal,
    /// The state-file writer (`vsound-state`): the volume levels.
    State,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 10] = [
        ThreadKind::Request,
        ThreadKind::Queue,
        ThreadKind::Stream,
        ThreadKind::Reactor,
        ThreadKind::Watch,
        ThreadKind::Api,
        ThreadKind::Pad,
        ThreadKind::AlsaMonitor,
        ThreadKind::Signal,
        ThreadKind::State,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Request => "request",
            ThreadKind::Queue => "queue",
            ThreadKind::Stream => "stream",
            ThreadKind::Reactor => "reactor",
            ThreadKind::Watch => "watch",
            ThreadKind::Api => "api",
            ThreadKind::Pad => "pad",
            ThreadKind::AlsaMonitor => "alsa",
            ThreadKind::Signal => "signal",
            ThreadKind::State => "state",
        }
    }
}

/// The name the daemon gives vhost-user-backend's request thread.
pub const REQUEST_THREAD: &str = "vsound";
/// The name vhost-user-backend gives its queue threads.
pub const QUEUE_THREAD: &str = "vring_worker";
/// The exit code of a process ended by a forbidden call in `on` mode.
pub const EXIT_CODE: i32 = 159;

/// Why the sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the seccomp filters: {0}")]
    Build(String),
    #[error("cannot install the SIGSYS handler")]
    Signal(#[source] std::io::Error),
    #[error("cannot install the process-wide seccomp filter: {0}")]
    Install(String),
}

/// Whether a device kind is called into only under locks (no system calls
/// of its own on the callers' threads).
fn quiet_device(kind: &str) -> bool {
    matches!(kind, "null" | "pad")
}

/// Installs the sandbox for this configuration (its device kinds decide
/// whether threads that call into devices get the host device group).
/// Call once, before the daemon starts threads. `Off` does nothing.
pub fn install(mode: Mode, config: &crate::config::Config) -> Result<(), SandboxError> {
    if mode == Mode::Off {
        log::warn!("seccomp sandbox off (--seccomp=off)");
        return Ok(());
    }
    let host = config.devices.iter().any(|d| !quiet_device(&d.kind));
    imp::install(mode, host)
}

/// Installs the filter of `kind` on the calling thread (once per thread;
/// nothing without a sandbox). Threads call it first thing.
pub fn enter(kind: ThreadKind) {
    imp::enter(kind);
}

/// For callbacks of vhost-user-backend: installs the filter of the
/// library thread this is (by its name), the first time on each; nothing
/// on any other thread.
pub fn enter_library_thread() {
    imp::enter_library_thread();
}

/// Whether a process filter is in place.
pub fn active() -> bool {
    imp::active()
}

/// The x86_64 name of system call `nr`, if it has one.
pub fn syscall_name(nr: i64) -> Option<&'static str> {
    let i = usize::try_from(nr).ok()?;
    let name = if i < NAMES_LOW.len() {
        NAMES_LOW.get(i)
    } else {
        i.checked_sub(NAMES_HIGH_FIRST)
            .and_then(|j| NAMES_HIGH.get(j))
    };
    name.copied()
}

/// Every system call the process filter lets through, by name, for a
/// configuration with (`host`) or without devices other than `null` and
/// `pad`; plus `clone3`, which glibc tries first (the sandbox answers it
/// with ENOSYS). A supervisor's own filter (systemd's `SystemCallFilter=`
/// in `packaging/systemd/vsound@.service`) must allow all of them: it
/// stacks with the sandbox, and its verdict on a call it forbids wins.
/// Empty where there is no sandbox.
pub fn process_syscalls(host: bool) -> Vec<&'static str> {
    imp::process_syscalls(host)
        .into_iter()
        .filter_map(syscall_name)
        .collect()
}

/// What `--seccomp-selftest` tries once the sandbox is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SelfTest {
    /// `personality(0xffffffff)` (a query) on the main thread: no filter
    /// allows it.
    Process,
    /// `socket(AF_UNIX)` on a thread under the watch filter: the process
    /// filter allows it, the thread's does not.
    Thread,
    /// Opening `/proc/sys/vm/overcommit_memory` on a thread under the watch
    /// filter, as glibc's malloc does: it fails with EACCES, unreported.
    GlibcFile,
}

/// Makes a forbidden call twice (for tests of the sandbox). Prints what the
/// call returned if it does return (`log` mode: ENOSYS, reported once;
/// `off`: its result); `on` mode never gets there.
pub fn selftest(which: SelfTest) -> std::process::ExitCode {
    let once = move || -> i64 {
        match which {
            // SAFETY: a query of the execution domain: changes nothing.
            SelfTest::Process => unsafe {
                libc::syscall(libc::SYS_personality, 0xffff_ffff_u64) as i64
            },
            SelfTest::Thread => {
                enter(ThreadKind::Watch);
                // SAFETY: creates a socket (closed at once if it opens).
                let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
                if fd >= 0 {
                    // SAFETY: our own fd.
                    unsafe { libc::close(fd) };
                }
                i64::from(fd)
            }
            SelfTest::GlibcFile => {
                enter(ThreadKind::Watch);
                let path = c"/proc/sys/vm/overcommit_memory";
                // SAFETY: opens a file read-only (closed at once if it opens).
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd >= 0 {
                    // SAFETY: our own fd.
                    unsafe { libc::close(fd) };
                }
                i64::from(fd)
            }
        }
    };
    let run = move || {
        once();
        once()
    };
    let (what, rc, err) = match which {
        SelfTest::Process => {
            let rc = run();
            ("personality", rc, std::io::Error::last_os_error())
        }
        SelfTest::Thread | SelfTest::GlibcFile => {
            let t = std::thread::Builder::new()
                .name("selftest-watch".into())
                .spawn(move || (run(), std::io::Error::last_os_error()));
            match t.map(|t| t.join()) {
                Ok(Ok((rc, err))) if which == SelfTest::Thread => ("socket", rc, err),
                Ok(Ok((rc, err))) => ("open", rc, err),
                _ => {
                    eprintln!("seccomp selftest: no thread");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    };
    if rc < 0 {
        println!("seccomp selftest: {what} failed: {err}");
    } else {
        println!("seccomp selftest: {what} returned {rc}");
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::{Mode, SandboxError, ThreadKind};

    pub fn install(mode: Mode, _host: bool) -> Result<(), SandboxError> {
        log::warn!(
            "--seccomp={mode}: the seccomp sandbox exists on x86_64 only; running without it"
        );
        Ok(())
    }
    pub fn enter(_kind: ThreadKind) {}
    pub fn enter_library_thread() {}
    pub fn active() -> bool {
        false
    }
    pub fn process_syscalls(_host: bool) -> Vec<i64> {
        Vec::new()
    }
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::OnceLock;

    use libc::c_long;
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::{Mode, SandboxError, ThreadKind, EXIT_CODE, QUEUE_THREAD, REQUEST_THREAD};

    /// The compiled per-thread filters, by [`ThreadKind::index`].
    static PROGRAMS: OnceLock<Vec<BpfProgram>> = OnceLock::new();
    static ACTIVE: AtomicBool = AtomicBool::new(false);

    thread_local! {
        /// This thread installed its own filter (or decided it has none).
        static ENTERED: Cell<bool> = const { Cell::new(false) };
    }

    // -- Rules --------------------------------------------------------------

    /// A condition on one argument (compared as 32 bits unless said).
    #[derive(Clone, Copy, Debug)]
    enum Arg {
        Eq(u8, u64),
        Ne(u8, u64),
        /// `(arg & mask) == value`.
        Masked(u8, u64, u64),
    }

    /// An allow-list: per system call, always or when one of the rules (a
    /// conjunction of [`Arg`]s) holds.
    #[derive(Clone, Debug, Default)]
    pub(super) struct Rules(BTreeMap<i64, Option<Vec<Vec<Arg>>>>);

    impl Rules {
        fn allow(&mut self, nrs: &[c_long]) -> &mut Self {
            for &nr in nrs {
                self.0.insert(nr, None);
            }
            self
        }

        fn allow_if(&mut self, nr: c_long, rule: Vec<Arg>) -> &mut Self {
            match self.0.get_mut(&nr) {
                Some(None) => {}
                Some(Some(rules)) => rules.push(rule),
                None => {
                    self.0.insert(nr, Some(vec![rule]));
                }
            }
            self
        }

        /// `nr` when argument `arg` is one of `values`.
        fn allow_arg(&mut self, nr: c_long, arg: u8, values: &[u64]) -> &mut Self {
            for &v in values {
                self.allow_if(nr, vec![Arg::Eq(arg, v)]);
            }
            self
        }

        fn merge(&mut self, other: &Rules) -> &mut Self {
            for (&nr, rules) in &other.0 {
                match rules {
                    None => {
                        self.0.insert(nr, None);
                    }
                    Some(rs) => {
                        for r in rs {
                            self.allow_if(nr, r.clone());
                        }
                    }
                }
            }
            self
        }

        pub(super) fn len(&self) -> usize {
            self.0.len()
        }

        #[cfg(test)]
        pub(super) fn allows(&self, nr: c_long) -> bool {
            self.0.contains_key(&nr)
        }

        pub(super) fn compile(&self, mismatch: SeccompAction) -> Result<BpfProgram, String> {
            let cond = |a: &Arg| {
                let (i, op, v) = match *a {
                    Arg::Eq(i, v) => (i, SeccompCmpOp::Eq, v),
                    Arg::Ne(i, v) => (i, SeccompCmpOp::Ne, v),
                    Arg::Masked(i, m, v) => (i, SeccompCmpOp::MaskedEq(m), v),
                };
                SeccompCondition::new(i, SeccompCmpArgLen::Dword, op, v)
                    .map_err(|e| format!("{a:?}: {e}"))
            };
            let mut map = BTreeMap::new();
            for (&nr, rules) in &self.0 {
                let chain = match rules {
                    None => Vec::new(),
                    Some(rs) => rs
                        .iter()
                        .map(|r| {
                            let conds = r.iter().map(cond).collect::<Result<Vec<_>, _>>()?;
                            SeccompRule::new(conds).map_err(|e| format!("syscall {nr}: {e}"))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                };
                map.insert(nr, chain);
            }
            let filter =
                SeccompFilter::new(map, mismatch, SeccompAction::Allow, TargetArch::x86_64)
                    .map_err(|e| e.to_string())?;
            BpfProgram::try_from(filter).map_err(|e| e.to_string())
        }
    }

    // -- Groups -------------------------------------------------------------

    use libc::*;

    const PROT_EXEC_U: u64 = PROT_EXEC as u64;
    const CLONE_THREAD_U: u64 = CLONE_THREAD as u64;

    /// Every thread: memory, locks, time, logging to stderr, its own end,
    /// and what the SIGSYS handler and `abort` use.
    fn base() -> Rules {
        let mut r = Rules::default();
        r.allow(&[
            SYS_futex,
            SYS_sched_yield,
            SYS_sched_getaffinity,
            SYS_getrandom,
            SYS_clock_gettime,
            SYS_clock_getres,
            SYS_gettimeofday,
            SYS_clock_nanosleep,
            SYS_nanosleep,
            SYS_gettid,
            SYS_getpid,
            SYS_write,
            SYS_writev,
            SYS_close,
            SYS_brk,
            SYS_munmap,
            SYS_mremap,
            SYS_madvise,
            SYS_rt_sigprocmask,
            SYS_rt_sigreturn,
            SYS_sigaltstack,
            SYS_restart_syscall,
            SYS_exit,
            SYS_exit_group,
        ]);
        // Never executable memory.
        r.allow_if(SYS_mmap, vec![Arg::Masked(2, PROT_EXEC_U, 0)]);
        r.allow_if(SYS_mprotect, vec![Arg::Masked(2, PROT_EXEC_U, 0)]);
        r.allow_arg(SYS_prctl, 0, &[PR_GET_NAME as u64]);
        r.allow_arg(SYS_tgkill, 2, &[SIGABRT as u64]);
        r.allow_if(SYS_rt_sigaction, vec![Arg::Ne(0, SIGSYS as u64)]);
        // `F_GETFD`: std's debug check before a close.
        r.allow_arg(
            SYS_fcntl,
            1,
            &[
                F_GETFD as u64,
                F_SETFD as u64,
                F_GETFL as u64,
                F_SETFL as u64,
                F_DUPFD_CLOEXEC as u64,
            ],
        );
        r
    }

    /// Starting threads, which run under this filter until they install
    /// their own.
    fn spawn() -> Rules {
        let mut r = Rules::default();
        r.allow_if(
            SYS_clone,
            vec![Arg::Masked(0, CLONE_THREAD_U, CLONE_THREAD_U)],
        );
        // Answered ENOSYS by the clone3 filter (glibc then uses clone).
        r.allow(&[SYS_clone3, SYS_set_robust_list, SYS_rseq]);
        r.allow_arg(
            SYS_prctl,
            0,
            &[PR_SET_NAME as u64, PR_SET_NO_NEW_PRIVS as u64],
        );
        r.allow_if(
            SYS_seccomp,
            vec![Arg::Eq(0, SECCOMP_SET_MODE_FILTER as u64), Arg::Eq(1, 0)],
        );
        r
    }

    /// Waiting on and reading eventfds and sockets; `pread64` is the
    /// SIGBUS handler's, which any thread touching guest memory may run
    /// (it reads `/proc/self/maps` through an fd opened before the
    /// sandbox: `sigbus.rs`).
    fn events() -> Rules {
        let mut r = Rules::default();
        r.allow(&[
            SYS_read,
            SYS_pread64,
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_ppoll,
            SYS_poll,
        ]);
        r
    }

    /// Calls into host devices other than null and pad (ALSA and its
    /// plugins; see the module doc).
    fn host_device() -> Rules {
        let mut r = Rules::default();
        r.allow(&[
            // Files: configuration, device nodes, the `file` plugin.
            SYS_openat,
            SYS_open,
            SYS_read,
            SYS_readv,
            SYS_pread64,
            SYS_pwrite64,
            SYS_lseek,
            SYS_fstat,
            SYS_newfstatat,
            SYS_stat,
            SYS_lstat,
            SYS_statx,
            SYS_access,
            SYS_faccessat,
            SYS_faccessat2,
            SYS_readlink,
            SYS_readlinkat,
            SYS_getdents64,
            SYS_getcwd,
            SYS_fstatfs,
            SYS_statfs,
            SYS_fsync,
            SYS_fdatasync,
            SYS_ftruncate,
            SYS_fcntl,
            SYS_dup,
            SYS_dup3,
            SYS_pipe2,
            SYS_ioctl,
            SYS_poll,
            SYS_ppoll,
            SYS_uname,
            SYS_getuid,
            SYS_geteuid,
            SYS_getgid,
            SYS_getegid,
            SYS_getresuid,
            SYS_getresgid,
            SYS_prlimit64,
            SYS_sysinfo,
            // dmix, dsnoop, dshare.
            SYS_shmget,
            SYS_shmat,
            SYS_shmdt,
            SYS_shmctl,
            SYS_semget,
            SYS_semop,
            SYS_semtimedop,
            SYS_semctl,
            // Sound-server clients.
            SYS_connect,
            SYS_sendmsg,
            SYS_recvmsg,
            SYS_sendto,
            SYS_recvfrom,
            SYS_getsockopt,
            SYS_setsockopt,
            SYS_getsockname,
            SYS_getpeername,
            SYS_shutdown,
            SYS_eventfd2,
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_epoll_wait,
            SYS_epoll_pwait,
            SYS_timerfd_create,
            SYS_timerfd_settime,
            SYS_timerfd_gettime,
            SYS_memfd_create,
            SYS_sched_getscheduler,
            SYS_sched_setscheduler,
            SYS_sched_getparam,
            SYS_sched_setparam,
            SYS_sched_get_priority_max,
            SYS_sched_get_priority_min,
            SYS_sched_getattr,
            SYS_sched_setattr,
            SYS_getpriority,
            SYS_setpriority,
            SYS_mlock,
            SYS_munlock,
        ]);
        r.allow_arg(SYS_socket, 0, &[AF_UNIX as u64]);
        r.allow_arg(SYS_socketpair, 0, &[AF_UNIX as u64]);
        // libpipewire reads the capability bounding set.
        r.allow_arg(SYS_prctl, 0, &[PR_CAPBSET_READ as u64]);
        // Plugins are loaded with dlopen: files mapped executable (never
        // anonymous memory).
        r.allow_if(
            SYS_mmap,
            vec![
                Arg::Masked(2, PROT_EXEC_U, PROT_EXEC_U),
                Arg::Ne(4, u64::from(u32::MAX)),
            ],
        );
        r.merge(&spawn());
        r
    }

    fn kind_rules(kind: ThreadKind, host: bool) -> Rules {
        let mut r = base();
        let with_host = |r: &mut Rules| {
            if host {
                r.merge(&host_device());
            }
        };
        match kind {
            ThreadKind::Request => {
                r.merge(&events());
                r.allow(&[
                    SYS_recvmsg,
                    SYS_sendmsg,
                    // Memory regions: fstat of the fd, is-an-eventfd via
                    // /proc/self/fd.
                    SYS_fstat,
                    SYS_statx,
                    SYS_newfstatat,
                    SYS_readlink,
                    SYS_epoll_ctl,
                    SYS_shutdown,
                ]);
                with_host(&mut r);
            }
            ThreadKind::Queue => {
                r.merge(&events());
                with_host(&mut r);
            }
            ThreadKind::Stream => {
                r.merge(&events());
                r.allow_arg(SYS_prctl, 0, &[PR_SET_TIMERSLACK as u64]);
                // The lane's absolute timer (created with the lane).
                r.allow(&[SYS_timerfd_settime]);
                with_host(&mut r);
            }
            ThreadKind::Reactor => {
                r.merge(&kind_rules(ThreadKind::Stream, host));
                r.merge(&spawn());
            }
            ThreadKind::Watch => {
                r.merge(&events());
                r.allow(&[SYS_epoll_create1, SYS_epoll_ctl, SYS_shutdown]);
            }
            ThreadKind::Api => {
                r.merge(&events());
                r.merge(&spawn());
                r.allow(&[
                    SYS_accept4,
                    SYS_recvfrom,
                    SYS_sendto,
                    SYS_setsockopt,
                    SYS_getsockopt,
                    SYS_shutdown,
                ]);
                r.allow_arg(SYS_ioctl, 1, &[FIONBIO]);
                with_host(&mut r);
            }
            ThreadKind::Pad => {
                r.merge(&events());
                r.allow(&[
                    SYS_accept4,
                    SYS_recvfrom,
                    SYS_sendto,
                    SYS_setsockopt,
                    SYS_getsockopt,
                    SYS_shutdown,
                ]);
                r.allow_arg(SYS_ioctl, 1, &[FIONBIO]);
            }
            ThreadKind::AlsaMonitor => {
                r.merge(&events());
                r.merge(&host_device());
            }
            ThreadKind::Signal => {
                // Reads the signalfd; a stop shuts the listening socket
                // down, completes the held buffers (guest memory, the
                // call eventfd) and ends the connection; an exit past
                // the deadline removes the socket files.
                r.merge(&events());
                r.allow(&[SYS_shutdown, SYS_newfstatat, SYS_unlinkat]);
            }
            ThreadKind::State => {
                // Writes `state_file.tmp` and renames it over `state_file`.
                r.merge(&events());
                r.allow(&[
                    SYS_openat,
                    SYS_rename,
                    SYS_renameat,
                    SYS_renameat2,
                    SYS_fstat,
                    SYS_statx,
                ]);
            }
        }
        r
    }

    /// The main thread (and so the whole process): every kind, plus
    /// setting up the daemon.
    fn process_rules(host: bool) -> Rules {
        let mut r = base();
        for k in ThreadKind::ALL {
            // ALSA monitors exist only with ALSA devices (host).
            if host || k != ThreadKind::AlsaMonitor {
                r.merge(&kind_rules(k, host));
            }
        }
        r.merge(&spawn());
        r.merge(&events());
        r.allow(&[
            SYS_bind,
            SYS_listen,
            SYS_connect,
            SYS_accept4,
            SYS_getsockname,
            SYS_getpeername,
            SYS_getsockopt,
            SYS_setsockopt,
            SYS_shutdown,
            SYS_recvmsg,
            SYS_sendmsg,
            SYS_recvfrom,
            SYS_sendto,
            SYS_chmod,
            SYS_fchmod,
            SYS_fchmodat,
            // Sockets are bound in a private directory, given their owner
            // and renamed into place (vsound_devices::unix_socket).
            SYS_fchownat,
            SYS_mkdirat,
            SYS_renameat2,
            SYS_rename,
            SYS_renameat,
            SYS_geteuid,
            SYS_unlink,
            SYS_unlinkat,
            SYS_openat,
            SYS_fstat,
            SYS_newfstatat,
            SYS_statx,
            SYS_lseek,
            SYS_readlink,
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_eventfd2,
            // Each connection's stream lanes get their timer (reactor.rs).
            SYS_timerfd_create,
        ]);
        r.allow_arg(SYS_socket, 0, &[AF_UNIX as u64]);
        r.allow_arg(SYS_ioctl, 1, &[FIONBIO, TCGETS]);
        r
    }

    /// `clone3` fails with ENOSYS; everything else is left to the others.
    fn clone3_program() -> Result<BpfProgram, String> {
        let map: BTreeMap<i64, Vec<SeccompRule>> = [(SYS_clone3, Vec::new())].into();
        let filter = SeccompFilter::new(
            map,
            SeccompAction::Allow,
            SeccompAction::Errno(ENOSYS as u32),
            TargetArch::x86_64,
        )
        .map_err(|e| e.to_string())?;
        BpfProgram::try_from(filter).map_err(|e| e.to_string())
    }

    #[cfg(test)]
    pub(super) fn rules_for(kind: Option<ThreadKind>, host: bool) -> Rules {
        match kind {
            Some(k) => kind_rules(k, host),
            None => process_rules(host),
        }
    }

    // -- Installing ---------------------------------------------------------

    pub fn process_syscalls(host: bool) -> Vec<i64> {
        let mut nrs: Vec<i64> = process_rules(host).0.keys().copied().collect();
        nrs.push(SYS_clone3);
        nrs
    }

    pub fn install(mode: Mode, host: bool) -> Result<(), SandboxError> {
        let process = process_rules(host);
        let trap = SeccompAction::Trap;
        let process_prog = process.compile(trap.clone()).map_err(SandboxError::Build)?;
        let clone3 = clone3_program().map_err(SandboxError::Build)?;
        let mut programs = Vec::new();
        let mut counts = Vec::new();
        for k in ThreadKind::ALL {
            let rules = kind_rules(k, host);
            counts.push(format!("{} {}", k.name(), rules.len()));
            programs.push(rules.compile(trap.clone()).map_err(SandboxError::Build)?);
        }
        let _ = PROGRAMS.set(programs);
        fix_arena_limit();
        no_panic_backtraces();
        set_handler(mode).map_err(SandboxError::Signal)?;
        seccompiler::apply_filter_all_threads(&clone3)
            .map_err(|e| SandboxError::Install(e.to_string()))?;
        seccompiler::apply_filter_all_threads(&process_prog)
            .map_err(|e| SandboxError::Install(e.to_string()))?;
        ACTIVE.store(true, Ordering::SeqCst);
        vsound_devices::set_thread_hook(|t| {
            super::enter(match t {
                vsound_devices::DeviceThread::Pad => ThreadKind::Pad,
                // An ALSA stream's I/O thread calls what the monitor
                // calls (opens, configures and serves PCMs), and polls.
                vsound_devices::DeviceThread::AlsaMonitor
                | vsound_devices::DeviceThread::AlsaIo => ThreadKind::AlsaMonitor,
            })
        });
        log::info!(
            "seccomp sandbox {mode}: process {} syscalls; threads: {}{}",
            process.len(),
            counts.join(", "),
            if host {
                " (with the host device group)"
            } else {
                ""
            }
        );
        Ok(())
    }

    /// glibc's malloc works out how many arenas it may make (reading
    /// /sys/devices/system/cpu/online) when a thread first needs one past
    /// the eighth, in whichever thread that is: a sandboxed one may not
    /// open files. The same limit (8 per CPU), set now, is never worked out.
    fn fix_arena_limit() {
        #[cfg(target_env = "gnu")]
        {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            let max = c_int::try_from(cpus.saturating_mul(8)).unwrap_or(c_int::MAX);
            // SAFETY: mallopt only sets a malloc parameter.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, max) };
        }
    }

    /// A panic's backtrace is symbolized from the executable's file, which
    /// a sandboxed thread may not open: the panic would end as a forbidden
    /// `openat` instead of its message. Runs before any thread, and before
    /// std first reads the variable (at the first panic).
    fn no_panic_backtraces() {
        for var in ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE"] {
            if std::env::var_os(var).is_some_and(|v| v != "0") {
                log::info!("seccomp sandbox: {var} ignored (a backtrace reads files)");
                std::env::set_var(var, "0");
            }
        }
    }

    pub fn active() -> bool {
        ACTIVE.load(Ordering::SeqCst)
    }

    pub fn enter(kind: ThreadKind) {
        if !active() || ENTERED.with(Cell::get) {
            return;
        }
        ENTERED.with(|e| e.set(true));
        let Some(prog) = PROGRAMS.get().and_then(|p| p.get(kind.index())) else {
            return;
        };
        if let Err(e) = seccompiler::apply_filter(prog) {
            // The process filter still holds.
            log::error!(
                "seccomp: cannot install the {} filter on this thread: {e}",
                kind.name()
            );
        }
    }

    pub fn enter_library_thread() {
        if !active() || ENTERED.with(Cell::get) {
            return;
        }
        let kind = match std::thread::current().name() {
            Some(REQUEST_THREAD) => ThreadKind::Request,
            Some(QUEUE_THREAD) => ThreadKind::Queue,
            _ => return,
        };
        enter(kind);
    }

    // -- SIGSYS -------------------------------------------------------------

    /// `siginfo_t` as the kernel fills it for SIGSYS (`_sigsys`).
    #[repr(C)]
    struct SigsysInfo {
        signo: c_int,
        errno: c_int,
        code: c_int,
        _pad: c_int,
        call_addr: *mut c_void,
        syscall: c_int,
        arch: c_uint,
    }

    /// `si_code` of a SIGSYS raised by seccomp.
    const SYS_SECCOMP: c_int = 1;

    /// System calls already reported in `log` mode (numbers below 512).
    static SEEN: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

    fn first_time(nr: c_int) -> bool {
        let Ok(n) = usize::try_from(nr) else {
            return true;
        };
        match SEEN.get(n / 64) {
            Some(w) => {
                let bit = 1u64 << (n % 64);
                w.fetch_or(bit, Ordering::Relaxed) & bit == 0
            }
            None => true,
        }
    }

    /// A fixed buffer a line is assembled in without allocating.
    struct Line {
        buf: [u8; 256],
        len: usize,
    }

    impl Line {
        fn new() -> Line {
            Line {
                buf: [0; 256],
                len: 0,
            }
        }

        fn push(&mut self, s: &[u8]) {
            for &b in s {
                if let Some(slot) = self.buf.get_mut(self.len) {
                    *slot = b;
                    self.len += 1;
                }
            }
        }

        fn push_num(&mut self, n: i64) {
            if n < 0 {
                self.push(b"-");
            }
            let mut v = n.unsigned_abs();
            let mut digits = [0u8; 20];
            let mut i = digits.len();
            loop {
                i -= 1;
                if let Some(d) = digits.get_mut(i) {
                    *d = b'0' + (v % 10) as u8;
                }
                v /= 10;
                if v == 0 || i == 0 {
                    break;
                }
            }
            if let Some(ds) = digits.get(i..) {
                self.push(ds);
            }
        }

        fn write(&self) {
            // SAFETY: writes our own bytes to stderr (async-signal-safe).
            unsafe {
                libc::write(
                    libc::STDERR_FILENO,
                    self.buf.as_ptr().cast(),
                    self.len.min(self.buf.len()),
                )
            };
        }
    }

    /// Writes the report line for `nr` (async-signal-safe).
    fn report(nr: c_int, seccomp: bool, tail: &[u8]) {
        let mut line = Line::new();
        if seccomp {
            line.push(b"vsound: seccomp: forbidden syscall ");
            match super::syscall_name(i64::from(nr)) {
                Some(name) => line.push(name.as_bytes()),
                None => line.push(b"?"),
            }
            line.push(b" (");
            line.push_num(i64::from(nr));
            line.push(b")");
        } else {
            line.push(b"vsound: seccomp: SIGSYS not raised by seccomp");
        }
        line.push(b" in thread ");
        // SAFETY: gettid and getpid have no preconditions.
        let (tid, pid) = unsafe { (libc::gettid(), libc::getpid()) };
        let mut name = [0u8; 17];
        // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included.
        let named = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } == 0;
        let n = name.iter().position(|&b| b == 0).unwrap_or(0);
        match name.get(..n) {
            // The main thread bears the program's name.
            _ if tid == pid => line.push(b"main"),
            Some(s) if named && n > 0 => line.push(s),
            _ => line.push(b"?"),
        }
        line.push(b" (tid ");
        line.push_num(i64::from(tid));
        line.push(b")");
        line.push(tail);
        line.push(b"\n");
        line.write();
    }

    /// Files glibc opens lazily, on first need, in whichever thread that
    /// is: `/proc/sys/vm/overcommit_memory` when a thread's heap first
    /// shrinks, the CPU count when malloc first sizes its arena limit (see
    /// [`fix_arena_limit`]). Without them it takes its defaults.
    const LAZY_GLIBC_FILES: [&[u8]; 3] = [
        b"/proc/sys/vm/overcommit_memory\0",
        b"/sys/devices/system/cpu/online\0",
        b"/proc/stat\0",
    ];

    /// Whether the trapped call is glibc opening one of
    /// [`LAZY_GLIBC_FILES`]; if so it is made to fail with EACCES.
    ///
    /// # Safety
    ///
    /// `ctx` is the context the kernel passed to the SIGSYS handler.
    unsafe fn lazy_glibc_open(nr: c_int, ctx: *mut c_void) -> bool {
        if i64::from(nr) != SYS_openat || ctx.is_null() {
            return false;
        }
        let uc = ctx.cast::<ucontext_t>();
        // SAFETY: the caller passes the kernel's context.
        let regs = unsafe { &mut (*uc).uc_mcontext.gregs };
        if regs[REG_RDI as usize] as c_int != AT_FDCWD {
            return false;
        }
        let path = regs[REG_RSI as usize] as *const u8;
        if path.is_null() {
            return false;
        }
        // Bytes are read up to the first that differs, never past the
        // NUL that ends a match.
        let matches = LAZY_GLIBC_FILES.iter().any(|want| {
            want.iter().enumerate().all(|(i, &b)| {
                // SAFETY: the path glibc passed is a NUL-terminated string
                // and no byte past its NUL is read.
                unsafe { *path.add(i) == b }
            })
        });
        if matches {
            regs[REG_RAX as usize] = -i64::from(EACCES);
        }
        matches
    }

    /// The SIGSYS handler of `on` mode: report, then end the process. It
    /// never returns, but for glibc's [`LAZY_GLIBC_FILES`].
    extern "C" fn on_sigsys_kill(_sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
        // SAFETY: the kernel passes a siginfo_t, laid out as `_sigsys` for
        // SIGSYS.
        let (code, nr) = unsafe {
            let i = info.cast::<SigsysInfo>();
            ((*i).code, (*i).syscall)
        };
        // SAFETY: `ctx` is the kernel's.
        if code == SYS_SECCOMP && unsafe { lazy_glibc_open(nr, ctx) } {
            return;
        }
        report(nr, code == SYS_SECCOMP, b"; exiting");
        // SAFETY: ends the process at once (exit_group), as intended.
        unsafe { libc::_exit(EXIT_CODE) }
    }

    /// The SIGSYS handler of `log` mode: report once per system call, and
    /// make the call return -ENOSYS.
    extern "C" fn on_sigsys_log(_sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
        // SAFETY: errno is thread-local; saved and restored around the
        // write so the interrupted code does not see it change.
        let saved = unsafe { *libc::__errno_location() };
        // SAFETY: as in `on_sigsys_kill`.
        let (code, nr) = unsafe {
            let i = info.cast::<SigsysInfo>();
            ((*i).code, (*i).syscall)
        };
        if code != SYS_SECCOMP {
            report(nr, false, b"; ignored");
        // SAFETY: `ctx` is the kernel's.
        } else if unsafe { lazy_glibc_open(nr, ctx) } {
            // Answered EACCES, silently.
        } else {
            if first_time(nr) {
                report(nr, true, b"; log mode: it fails with ENOSYS");
            }
            // SAFETY: the kernel passes the interrupted context; RAX is the
            // return value the caller sees when the handler returns.
            unsafe {
                let uc = ctx.cast::<ucontext_t>();
                (*uc).uc_mcontext.gregs[REG_RAX as usize] = -i64::from(ENOSYS);
            }
        }
        // SAFETY: see above.
        unsafe { *libc::__errno_location() = saved };
    }

    fn set_handler(mode: Mode) -> std::io::Result<()> {
        let handler: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) = match mode {
            Mode::Log => on_sigsys_log,
            _ => on_sigsys_kill,
        };
        // SAFETY: a zeroed sigaction is valid; the handler has the
        // SA_SIGINFO signature and makes only async-signal-safe calls.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as usize;
            sa.sa_flags = SA_SIGINFO;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(SIGSYS, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_the_table_and_fall_back_to_none() {
        assert_eq!(syscall_name(0), Some("read"));
        assert_eq!(syscall_name(libc::SYS_ptrace), Some("ptrace"));
        assert_eq!(syscall_name(libc::SYS_personality), Some("personality"));
        assert_eq!(syscall_name(libc::SYS_socket), Some("socket"));
        assert_eq!(syscall_name(libc::SYS_clone3), Some("clone3"));
        assert_eq!(syscall_name(libc::SYS_execve), Some("execve"));
        assert_eq!(syscall_name(libc::SYS_openat2), Some("openat2"));
        assert_eq!(syscall_name(400), None);
        assert_eq!(syscall_name(-1), None);
        assert_eq!(syscall_name(100_000), None);
    }

    #[test]
    fn every_list_compiles_and_keeps_the_dangerous_calls_out() {
        let forbidden = [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_personality,
            libc::SYS_mount,
            libc::SYS_setuid,
            libc::SYS_kill,
        ];
        for host in [false, true] {
            let kinds = ThreadKind::ALL.map(Some);
            for kind in kinds.into_iter().chain([None]) {
                let rules = imp::rules_for(kind, host);
                let prog = rules.compile(seccompiler::SeccompAction::Trap).unwrap();
                // The kernel's bound on a filter (BPF_MAXINSNS).
                assert!(prog.len() < 4096, "{kind:?}: {} instructions", prog.len());
                for nr in forbidden {
                    assert!(!rules.allows(nr), "{kind:?} (host {host}) allows {nr}");
                }
            }
        }
        // Only the main thread binds and listens.
        for k in ThreadKind::ALL {
            assert!(!imp::rules_for(Some(k), true).allows(libc::SYS_bind));
            assert!(!imp::rules_for(Some(k), true).allows(libc::SYS_listen));
        }
        // Without a host device, no thread needs what sound-server clients
        // do.
        // (timerfd_create is the main thread's: each connection's lanes.)
        for nr in [libc::SYS_shmget, libc::SYS_memfd_create] {
            assert!(!imp::rules_for(None, false).allows(nr), "{nr}");
            assert!(imp::rules_for(None, true).allows(nr), "{nr}");
        }
        // Without a host device, the threads that parse guest data cannot
        // open files or sockets.
        for k in [ThreadKind::Request, ThreadKind::Queue, ThreadKind::Stream] {
            let r = imp::rules_for(Some(k), false);
            assert!(!r.allows(libc::SYS_openat), "{k:?}");
            assert!(!r.allows(libc::SYS_socket), "{k:?}");
            assert!(!r.allows(libc::SYS_clone), "{k:?}");
        }
    }
}

// -- x86_64 system call names ------------------------------------------------
// From the Linux 6.12 table (as generated for seccompiler): 0..=335, then
// 424..=462.

const NAMES_HIGH_FIRST: usize = 424;

#[rustfmt::skip]
static NAMES_LOW: [&str; 336] = [
    "read", "write", "open", "close", "stat", "fstat", "lstat", "poll", "lseek", "mmap", "mprotect",
    "munmap", "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "ioctl", "pread64",
    "pwrite64", "readv", "writev", "access", "pipe", "select", "sched_yield", "mremap", "msync",
    "mincore", "madvise", "shmget", "shmat", "shmctl", "dup", "dup2", "pause", "nanosleep",
    "getitimer", "alarm", "setitimer", "getpid", "sendfile", "socket", "connect", "accept",
    "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown", "bind", "listen", "getsockname",
    "getpeername", "socketpair", "setsockopt", "getsockopt", "clone", "fork", "vfork", "execve",
    "exit", "wait4", "kill", "uname", "semget", "semop", "semctl", "shmdt", "msgget", "msgsnd",
    "msgrcv", "msgctl", "fcntl", "flock", "fsync", "fdatasync", "truncate", "ftruncate", "getdents",
    "getcwd", "chdir", "fchdir", "rename", "mkdir", "rmdir", "creat", "link", "unlink", "symlink",
    "readlink", "chmod", "fchmod", "chown", "fchown", "lchown", "umask", "gettimeofday",
    "getrlimit", "getrusage", "sysinfo", "times", "ptrace", "getuid", "syslog", "getgid", "setuid",
    "setgid", "geteuid", "getegid", "setpgid", "getppid", "getpgrp", "setsid", "setreuid",
    "setregid", "getgroups", "setgroups", "setresuid", "getresuid", "setresgid", "getresgid",
    "getpgid", "setfsuid", "setfsgid", "getsid", "capget", "capset", "rt_sigpending",
    "rt_sigtimedwait", "rt_sigqueueinfo", "rt_sigsuspend", "sigaltstack", "utime", "mknod",
    "uselib", "personality", "ustat", "statfs", "fstatfs", "sysfs", "getpriority", "setpriority",
    "sched_setparam", "sched_getparam", "sched_setscheduler", "sched_getscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "mlock", "munlock",
    "mlockall", "munlockall", "vhangup", "modify_ldt", "pivot_root", "_sysctl", "prctl",
    "arch_prctl", "adjtimex", "setrlimit", "chroot", "sync", "acct", "settimeofday", "mount",
    "umount2", "swapon", "swapoff", "reboot", "sethostname", "setdomainname", "iopl", "ioperm",
    "create_module", "init_module", "delete_module", "get_kernel_syms", "query_module", "quotactl",
    "nfsservctl", "getpmsg", "putpmsg", "afs_syscall", "tuxcall", "security", "gettid", "readahead",
    "setxattr", "lsetxattr", "fsetxattr", "getxattr", "lgetxattr", "fgetxattr", "listxattr",
    "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr", "tkill", "time",
    "futex", "sched_setaffinity", "sched_getaffinity", "set_thread_area", "io_setup", "io_destroy",
    "io_getevents", "io_submit", "io_cancel", "get_thread_area", "lookup_dcookie", "epoll_create",
    "epoll_ctl_old", "epoll_wait_old", "remap_file_pages", "getdents64", "set_tid_address",
    "restart_syscall", "semtimedop", "fadvise64", "timer_create", "timer_settime", "timer_gettime",
    "timer_getoverrun", "timer_delete", "clock_settime", "clock_gettime", "clock_getres",
    "clock_nanosleep", "exit_group", "epoll_wait", "epoll_ctl", "tgkill", "utimes", "vserver",
    "mbind", "set_mempolicy", "get_mempolicy", "mq_open", "mq_unlink", "mq_timedsend",
    "mq_timedreceive", "mq_notify", "mq_getsetattr", "kexec_load", "waitid", "add_key",
    "request_key", "keyctl", "ioprio_set", "ioprio_get", "inotify_init", "inotify_add_watch",
    "inotify_rm_watch", "migrate_pages", "openat", "mkdirat", "mknodat", "fchownat", "futimesat",
    "newfstatat", "unlinkat", "renameat", "linkat", "symlinkat", "readlinkat", "fchmodat",
    "faccessat", "pselect6", "ppoll", "unshare", "set_robust_list", "get_robust_list", "splice",
    "tee", "sync_file_range", "vmsplice", "move_pages", "utimensat", "epoll_pwait", "signalfd",
    "timerfd_create", "eventfd", "fallocate", "timerfd_settime", "timerfd_gettime", "accept4",
    "signalfd4", "eventfd2", "epoll_create1", "dup3", "pipe2", "inotify_init1", "preadv", "pwritev",
    "rt_tgsigqueueinfo", "perf_event_open", "recvmmsg", "fanotify_init", "fanotify_mark",
    "prlimit64", "name_to_handle_at", "open_by_handle_at", "clock_adjtime", "syncfs", "sendmmsg",
    "setns", "getcpu", "process_vm_readv", "process_vm_writev", "kcmp", "finit_module",
    "sched_setattr", "sched_getattr", "renameat2", "seccomp", "getrandom", "memfd_create",
    "kexec_file_load", "bpf", "execveat", "userfaultfd", "membarrier", "mlock2", "copy_file_range",
    "preadv2", "pwritev2", "pkey_mprotect", "pkey_alloc", "pkey_free", "statx", "io_pgetevents",
    "rseq", "uretprobe",
];
#[rustfmt::skip]
static NAMES_HIGH: [&str; 39] = [
    "pidfd_send_signal", "io_uring_setup", "io_uring_enter", "io_uring_register", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "pidfd_open", "clone3", "close_range",
    "openat2", "pidfd_getfd", "faccessat2", "process_madvise", "epoll_pwait2", "mount_setattr",
    "quotactl_fd", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    "memfd_secret", "process_mrelease", "futex_waitv", "set_mempolicy_home_node", "cachestat",
    "fchmodat2", "map_shadow_stack", "futex_wake", "futex_wait", "futex_requeue", "statmount",
    "listmount", "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules", "mseal",
];
