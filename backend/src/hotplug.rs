//! Host devices as the daemon manages them: attached or not, why, since
//! when, how many removals; and what happens to the guest when one goes or
//! comes back (docs/design.md, "Safe hot-removal", rules 5–7).
//!
//! A device is *present* when the plugin says it is attached, no operator
//! detached it (management API), and it has not been declared hung. The
//! removal procedure, whoever triggers it (plugin listener, API, the hang
//! watchdog), is [`SoundDevice::device_removed`]; the return is
//! [`SoundDevice::device_returned`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use vsound_devices::{DeviceListener, HostDevice};

use crate::device::SoundDevice;

/// A configured host device and its management state.
pub struct ManagedDevice {
    pub index: usize,
    pub name: String,
    pub dev: Arc<dyn HostDevice>,
    /// Detached by the operator (`vsound ctl detach`).
    admin_detached: AtomicBool,
    /// A call into it hung and timed out; cleared when it attaches again.
    hung: AtomicBool,
    removals: AtomicU64,
    /// Unix time (s) of the last change of presence.
    since: AtomicU64,
    /// The device of the current VMM connection, told of changes.
    current: Mutex<Option<Weak<SoundDevice>>>,
    /// Why it was last removed, and when (Unix time, s).
    last_error: Mutex<Option<(String, u64)>>,
}

/// The time now as Unix seconds (0 before 1970): `status` times.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ManagedDevice {
    pub fn new(index: usize, name: String, dev: Arc<dyn HostDevice>) -> Arc<ManagedDevice> {
        let m = Arc::new(ManagedDevice {
            index,
            name,
            dev,
            admin_detached: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            removals: AtomicU64::new(0),
            since: AtomicU64::new(unix_now()),
            current: Mutex::new(None),
            last_error: Mutex::new(None),
        });
        m.dev.set_listener(Arc::new(Listener(Arc::downgrade(&m))));
        m
    }

    pub fn kind(&self) -> &'static str {
        self.dev.kind()
    }

    /// Whether streams may use the device now.
    pub fn is_present(&self) -> bool {
        !self.admin_detached.load(Ordering::SeqCst)
            && !self.hung.load(Ordering::SeqCst)
            && self.dev.is_attached()
    }

    pub fn removals(&self) -> u64 {
        self.removals.load(Ordering::SeqCst)
    }

    pub fn since(&self) -> u64 {
        self.since.load(Ordering::SeqCst)
    }

    pub fn admin_detached(&self) -> bool {
        self.admin_detached.load(Ordering::SeqCst)
    }

    /// Sets the device of the current connection (or none between them).
    pub fn set_current(&self, dev: Option<Weak<SoundDevice>>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = dev;
    }

    fn current(&self) -> Option<Arc<SoundDevice>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }

    /// Why the device was last removed, and when (Unix time, s).
    pub fn last_error(&self) -> Option<(String, u64)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn removed(&self, why: &str) {
        self.removals.fetch_add(1, Ordering::SeqCst);
        let now = unix_now();
        self.since.store(now, Ordering::SeqCst);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((why.to_owned(), now));
        log::info!("device {}: removed ({why})", self.name);
        if let Some(d) = self.current() {
            d.device_removed(self.index);
        }
    }

    fn returned(&self, why: &str) {
        if !self.is_present() {
            return;
        }
        self.since.store(unix_now(), Ordering::SeqCst);
        log::info!("device {}: attached ({why})", self.name);
        if let Some(d) = self.current() {
            d.device_returned(self.index);
        }
    }

    /// Operator detach. Returns false if it was already detached.
    pub fn admin_detach(&self) -> bool {
        let was_present = self.is_present();
        if self.admin_detached.swap(true, Ordering::SeqCst) {
            return false;
        }
        if was_present {
            self.removed("detached by the operator");
        }
        true
    }

    /// Operator attach. Returns false if it was not detached by the operator.
    /// Also clears a device marked hung (it is tried again).
    pub fn admin_attach(&self) -> bool {
        let was_detached = self.admin_detached.swap(false, Ordering::SeqCst);
        let was_hung = self.hung.swap(false, Ordering::SeqCst);
        if !was_detached && !was_hung {
            return false;
        }
        self.returned("attached by the operator");
        true
    }

    /// Probes an absent device now rather than at the end of its backoff
    /// (SIGHUP, `vsound ctl attach`). False if it is present, detached by
    /// the operator, or comes back by itself (a pad's client).
    pub fn probe_now(&self) -> bool {
        if self.admin_detached() || self.dev.is_attached() {
            return false;
        }
        self.dev.probe_now()
    }

    /// A call into the device hung: treat it as removed.
    pub fn mark_hung(&self) {
        let was_present = self.is_present();
        if !self.hung.swap(true, Ordering::SeqCst) && was_present {
            self.removed("a call into it timed out");
        }
    }
}

/// Receives the plugin's attach/detach notifications.
struct Listener(Weak<ManagedDevice>);

impl DeviceListener for Listener {
    fn attached(&self) {
        if let Some(m) = self.0.upgrade() {
            m.hung.store(false, Ordering::SeqCst);
            m.returned("the device came back");
        }
    }

    fn detached(&self) {
        if let Some(m) = self.0.upgrade() {
            if m.admin_detached() || m.hung.load(Ordering::SeqCst) {
                // Already counted as removed.
                return;
            }
            m.removed("the device went away");
        }
    }
}
