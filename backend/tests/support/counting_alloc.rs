//! A global allocator that counts allocations per thread (by tid), for
//! tests that prove the hot path allocates nothing. The test binary
//! installs it: `#[global_allocator] static A: CountingAlloc = CountingAlloc;`.
//!
//! Shared by `backend/tests/alloc_per_period.rs` and
//! `vmm-tests/tests/alloc_daemon.rs` (included there by path).

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

pub const SLOTS: usize = 256;
/// Counting is on.
pub static COUNTING: AtomicBool = AtomicBool::new(false);
pub static TIDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
pub static COUNTS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
pub static BYTES: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Allocations of threads the table had no room for.
pub static OVERFLOW: AtomicU64 = AtomicU64::new(0);

/// Counts allocations per thread while [`COUNTING`] is set; never allocates
/// itself (a fixed open-addressing table keyed by tid).
pub struct CountingAlloc;

/// This thread's id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

pub fn record(size: usize) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    let tid = gettid();
    let mut i = (tid as usize).wrapping_mul(2_654_435_761) % SLOTS;
    for _ in 0..SLOTS {
        match TIDS[i].compare_exchange(0, tid, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {}
            Err(t) if t == tid => {}
            Err(_) => {
                i = (i + 1) % SLOTS;
                continue;
            }
        }
        COUNTS[i].fetch_add(1, Ordering::Relaxed);
        BYTES[i].fetch_add(size as u64, Ordering::Relaxed);
        return;
    }
    OVERFLOW.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; counting touches only atomics and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: forwarded with the caller's guarantees about `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: forwarded with the caller's guarantees about `ptr` and `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees about `ptr` and `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Forgets every count.
pub fn reset_counts() {
    for i in 0..SLOTS {
        TIDS[i].store(0, Ordering::SeqCst);
        COUNTS[i].store(0, Ordering::SeqCst);
        BYTES[i].store(0, Ordering::SeqCst);
    }
}

/// (tid, thread name, allocations, bytes) of every thread that allocated.
pub fn counts() -> Vec<(i32, String, u64, u64)> {
    (0..SLOTS)
        .filter_map(|i| {
            let tid = TIDS[i].load(Ordering::Acquire);
            let n = COUNTS[i].load(Ordering::Relaxed);
            (tid != 0 && n > 0).then(|| {
                let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                    .map_or_else(|_| "?".into(), |s| s.trim().to_owned());
                (tid, name, n, BYTES[i].load(Ordering::Relaxed))
            })
        })
        .collect()
}
