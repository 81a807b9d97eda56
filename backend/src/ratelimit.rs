//! Rate-limited logging for what a guest (or a failing host device) can
//! trigger at will: at most one line per second per kind, with the number
//! of lines held back, and a total that `vsound ctl status` reports, so a
//! buggy guest cannot flood the host's journal.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pacer::now_ns;

/// One kind of guest-triggerable event.
pub struct Limited {
    pub name: &'static str,
    last_ns: AtomicU64,
    held_back: AtomicU64,
    total: AtomicU64,
}

/// Malformed I/O messages refused (no room for a status, bad layout...).
pub static IO_REFUSED: Limited = Limited::new("io_messages_refused");
/// Malformed control requests.
pub static CONTROL_REFUSED: Limited = Limited::new("control_requests_refused");
/// Writes into the read-only config space.
pub static CONFIG_WRITES: Limited = Limited::new("config_space_writes");
/// Failed host-device calls (a device returning errors every period).
pub static HOST_CALL_FAILED: Limited = Limited::new("host_calls_failed");

/// Failed writes of `[daemon] state_file` (the guest's control writes
/// trigger them).
pub static STATE_FILE: Limited = Limited::new("state_file_errors");

/// Every kind, for `ctl status`.
pub static ALL: [&Limited; 5] = [
    &IO_REFUSED,
    &CONTROL_REFUSED,
    &CONFIG_WRITES,
    &HOST_CALL_FAILED,
    &STATE_FILE,
];

const INTERVAL_NS: u64 = 1_000_000_000;

impl Limited {
    pub const fn new(name: &'static str) -> Limited {
        Limited {
            name,
            last_ns: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// Counts one event; returns `Some(held back)` when a line may be
    /// logged now (with how many were not since the last one).
    pub fn hit(&self) -> Option<u64> {
        self.total.fetch_add(1, Ordering::Relaxed);
        let now = now_ns().max(1);
        let last = self.last_ns.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < INTERVAL_NS {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last_ns
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// `warn!` at most once a second per kind, saying how many were held back.
#[macro_export]
macro_rules! warn_limited {
    ($kind:expr, $($arg:tt)+) => {
        if let Some(held) = $kind.hit() {
            if held == 0 {
                log::warn!($($arg)+);
            } else {
                log::warn!("{} ({held} more like it in the last second not logged)", format_args!($($arg)+));
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_one_line_a_second_and_counts_everything() {
        let l = Limited::new("test");
        let logged = (0..10_000).filter(|_| l.hit().is_some()).count();
        assert_eq!(logged, 1);
        assert_eq!(l.total(), 10_000);
    }
}
