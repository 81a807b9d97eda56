//! Guest memory that its file no longer backs.
//!
//! A frontend shares guest memory as files (memfd, hugetlbfs, /dev/shm).
//! Regions are checked against their file's size when they arrive, but a
//! frontend can still shrink the file later, and the next touch of a page
//! past the new end is a SIGBUS, which would kill the daemon and every
//! other VMM's sound with it. So the daemon catches SIGBUS: a fault inside
//! a registered guest-memory range gets a private zero page mapped over the
//! faulting page (the access then completes, reading zeros or writing into
//! nothing), and the connection is told through an eventfd, which ends it.
//! A SIGBUS anywhere else takes the default action, as before.
//!
//! Only async-signal-safe work happens in the handler: atomics, `mmap`,
//! `write`, `sigaction`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::OnceLock;

use vmm_sys_util::eventfd::EventFd;

/// Guest-memory ranges watched at most (vhost-user allows 8 regions per
/// table; the library up to 509 with ADD_MEM_REG; past this bound a range
/// is not protected and a fault there takes the default action).
const SLOTS: usize = 64;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
};

static RANGES: [Slot; SLOTS] = [EMPTY; SLOTS];
static PAGE: AtomicUsize = AtomicUsize::new(4096);
/// The eventfd the handler writes to (-1 before `install`).
static NOTIFY_FD: AtomicI32 = AtomicI32::new(-1);
/// The address of the last fault caught.
static LAST_FAULT: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The eventfd a caught fault is reported on.
static NOTIFY: OnceLock<EventFd> = OnceLock::new();

fn covered(addr: usize) -> bool {
    RANGES.iter().any(|s| {
        let len = s.len.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Acquire);
        len != 0 && addr >= start && addr - start < len
    })
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    if covered(addr) {
        let page = PAGE.load(Ordering::Relaxed);
        let base = addr & !(page - 1);
        // SAFETY: the page lies inside a guest-memory mapping the daemon
        // owns; replacing it with a private anonymous page only changes
        // what that mapping reads and writes (the connection is ended).
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            LAST_FAULT.store(addr, Ordering::Relaxed);
            let fd = NOTIFY_FD.load(Ordering::Relaxed);
            if fd >= 0 {
                let one: u64 = 1;
                // SAFETY: writes 8 bytes from a local into an eventfd.
                unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
            }
            return;
        }
    }
    // Not guest memory: the default action (the fault repeats and kills).
    // SAFETY: restores the default disposition of this signal.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

/// Installs the handler (once per process) and returns the eventfd a caught
/// fault is reported on.
pub fn install() -> io::Result<&'static EventFd> {
    if let Some(fd) = NOTIFY.get() {
        if INSTALLED.load(Ordering::SeqCst) {
            return Ok(fd);
        }
    }
    let efd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let efd = NOTIFY.get_or_init(|| efd);
    NOTIFY_FD.store(efd.as_raw_fd(), Ordering::SeqCst);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if let Ok(p) = usize::try_from(page) {
        if p.is_power_of_two() {
            PAGE.store(p, Ordering::SeqCst);
        }
    }
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO
    // signature and does only async-signal-safe work.
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    INSTALLED.store(true, Ordering::SeqCst);
    Ok(efd)
}

/// Watches `[start, start + len)`. Returns false when every slot is taken.
pub fn watch(start: usize, len: usize) -> bool {
    for s in &RANGES {
        if s.len.load(Ordering::Acquire) == 0
            && s.start
                .compare_exchange(0, start, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            s.len.store(len, Ordering::Release);
            return true;
        }
    }
    false
}

/// Stops watching every range (the connection's memory is unmapped), and
/// drops any fault report still pending: a fault its threads took while the
/// connection was torn down (after its watch thread had read the first
/// one) must not end the next connection, whose watch thread would read it
/// first thing.
pub fn forget_all() {
    for s in &RANGES {
        s.len.store(0, Ordering::Release);
        s.start.store(0, Ordering::Release);
    }
    consume();
    LAST_FAULT.store(0, Ordering::Relaxed);
}

/// The address of the last fault caught, if any.
pub fn last_fault() -> Option<usize> {
    match LAST_FAULT.load(Ordering::Relaxed) {
        0 => None,
        a => Some(a),
    }
}

/// Clears the fault report.
pub fn consume() {
    if let Some(e) = NOTIFY.get() {
        let _ = e.read();
    }
}

/// The raw eventfd faults are reported on, once installed.
pub fn notify_fd() -> Option<RawFd> {
    NOTIFY.get().map(|e| e.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    /// A mapping of a file that is then truncated reads zeros instead of
    /// killing the process, and the fault is reported.
    #[test]
    fn a_truncated_watched_mapping_reads_zeros_and_reports_the_fault() {
        let efd = install().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[0xAA; 8192]).unwrap();
        // SAFETY: a fresh shared mapping of our own file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as usize;
        assert!(watch(base, 8192));
        f.set_len(0).unwrap();
        // SAFETY: inside the mapping; the page is no longer backed, so the
        // read faults and the handler maps a zero page over it.
        let v = unsafe { std::ptr::read_volatile((base + 4096) as *const u8) };
        assert_eq!(v, 0);
        assert!(last_fault().is_some_and(|a| a >= base && a < base + 8192));
        assert!(efd.read().unwrap() >= 1);
        forget_all();
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p, 8192) };
    }
}
