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
//!
//! A range is registered when the daemon checks a new memory table
//! (`update_memory`), but vhost-user-backend publishes the table to the
//! queue threads just before it calls that, so a queue thread can touch a
//! region the check is about to refuse (a region past its file's end:
//! found by the `vhost_user` fuzz target, a SIGBUS in `enable_notification`
//! on the queue thread). So a fault outside the registered ranges is also
//! taken for guest memory when the kernel says the page is past its file's
//! end (`BUS_ADRERR`) and `/proc/self/maps` (opened before any sandbox, read
//! with `pread`) says the mapping is a shared one: guest memory is the
//! daemon's only shared file mapping besides a sound server's buffers (a
//! server that shrank one under the daemon would also end the connection
//! this way, rather than kill the process).
//! Any other SIGBUS goes to the disposition there was before (the default,
//! which kills; a fuzzer's own handler, which reports).
//!
//! Only async-signal-safe work happens in the handler: atomics, `mmap`,
//! `pread`, `write`, `sigaction`.

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
/// `/proc/self/maps`, opened by `install` (-1 if it could not be).
static MAPS_FD: AtomicI32 = AtomicI32::new(-1);
/// The disposition of SIGBUS before `install`.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// The eventfd a caught fault is reported on.
static NOTIFY: OnceLock<EventFd> = OnceLock::new();

fn covered(addr: usize) -> bool {
    RANGES.iter().any(|s| {
        let len = s.len.load(Ordering::Acquire);
        let start = s.start.load(Ordering::Acquire);
        len != 0 && addr >= start && addr - start < len
    })
}

fn hex(b: u8) -> Option<usize> {
    match b {
        b'0'..=b'9' => Some(usize::from(b - b'0')),
        b'a'..=b'f' => Some(usize::from(b - b'a') + 10),
        _ => None,
    }
}

/// Whether `addr` lies in a shared mapping, by `/proc/self/maps` (lines
/// `start-end perms ...`, `perms` ending in `s` for a shared one). Reads
/// with `pread` into a buffer on the stack: no allocation, no lock, so it
/// may run in the signal handler. False when the file cannot be read.
fn in_shared_mapping(addr: usize) -> bool {
    let fd = MAPS_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return false;
    }
    let mut buf = [0u8; 4096];
    let mut offset: libc::off_t = 0;
    // The line's fields: 0 start, 1 end, 2 permissions, 3 the rest.
    let (mut start, mut end, mut field, mut perm, mut shared) = (0usize, 0usize, 0u8, 0u8, false);
    loop {
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), offset) };
        let Ok(n) = usize::try_from(n) else {
            return false;
        };
        if n == 0 {
            return false;
        }
        offset = offset.saturating_add(libc::off_t::try_from(n).unwrap_or(0));
        for &b in buf.iter().take(n) {
            match field {
                0 => match hex(b) {
                    Some(d) => start = start.wrapping_mul(16).wrapping_add(d),
                    None => field = 1,
                },
                1 => match hex(b) {
                    Some(d) => end = end.wrapping_mul(16).wrapping_add(d),
                    None => field = 2,
                },
                2 => {
                    if perm == 3 {
                        shared = b == b's';
                        field = 3;
                    }
                    perm = perm.saturating_add(1);
                }
                _ => {}
            }
            if b == b'\n' {
                if addr >= start && addr < end {
                    return shared;
                }
                (start, end, field, perm, shared) = (0, 0, 0, 0, false);
            }
        }
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    if covered(addr) || (code == libc::BUS_ADRERR && in_shared_mapping(addr)) {
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
    // Not guest memory: the disposition from before (the fault repeats and
    // kills, or a fuzzer's handler reports it).
    // SAFETY: restores a disposition sigaction gave us, or the default.
    unsafe {
        match PREVIOUS.get() {
            Some(prev) => {
                libc::sigaction(sig, prev, std::ptr::null_mut());
            }
            None => {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
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
    if MAPS_FD.load(Ordering::SeqCst) < 0 {
        // SAFETY: a NUL-terminated path; the fd is ours for the process's life.
        let fd = unsafe {
            libc::open(
                c"/proc/self/maps".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        MAPS_FD.store(fd, Ordering::SeqCst);
    }
    // SAFETY: zeroed sigactions are valid; the handler has the SA_SIGINFO
    // signature and does only async-signal-safe work.
    let (rc, prev) = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        let mut prev: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        libc::sigemptyset(&mut sa.sa_mask);
        (libc::sigaction(libc::SIGBUS, &sa, &mut prev), prev)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if prev.sa_sigaction != on_sigbus as *const () as usize {
        let _ = PREVIOUS.set(prev);
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

    /// The fault report is one per process: the tests that fault take turns.
    static FAULTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A new shared read-write mapping of `len` bytes of `f`.
    fn map_shared(f: &std::fs::File, len: usize) -> *mut libc::c_void {
        // SAFETY: a fresh mapping of our own file; nothing else uses it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p
    }

    /// A mapping of a file that is then truncated reads zeros instead of
    /// killing the process, and the fault is reported.
    #[test]
    fn a_truncated_watched_mapping_reads_zeros_and_reports_the_fault() {
        let _turn = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        let efd = install().unwrap();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[0xAA; 8192]).unwrap();
        let p = map_shared(&f, 8192);
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

    /// A shared file mapping not (yet) registered, past its file's end: a
    /// queue thread touching a memory table the library published before
    /// the daemon checked it. It too reads zeros and is reported, instead
    /// of killing the daemon.
    #[test]
    fn an_unregistered_shared_mapping_past_its_files_end_reads_zeros_and_is_reported() {
        let _turn = FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        let efd = install().unwrap();
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        // Twice the file's size.
        let p = map_shared(&f, 8192);
        let base = p as usize;
        assert!(in_shared_mapping(base + 4096));
        // SAFETY: inside the mapping; the second page has no file behind it.
        unsafe { std::ptr::write_volatile((base + 4100) as *mut u16, 7) };
        // SAFETY: as above, now a private zero page with the write in it.
        let v = unsafe { std::ptr::read_volatile((base + 4100) as *const u16) };
        assert_eq!(v, 7, "the write went to the page mapped over the fault");
        assert_eq!(last_fault(), Some(base + 4100));
        assert!(efd.read().unwrap() >= 1);
        forget_all();
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p, 8192) };
    }

    /// What `/proc/self/maps` says about private memory: not shared.
    #[test]
    fn private_memory_is_not_taken_for_a_shared_mapping() {
        install().unwrap();
        let on_stack = 0u64;
        assert!(!in_shared_mapping(&on_stack as *const u64 as usize));
        let on_heap = Box::new(0u64);
        assert!(!in_shared_mapping(&*on_heap as *const u64 as usize));
        assert!(!in_shared_mapping(8), "nothing is mapped at 8");
    }
}
