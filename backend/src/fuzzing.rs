//! Entry points for the fuzz targets in `fuzz/` (not a public API).
//!
//! Only what a target cannot reach from the public items: nothing here
//! changes behaviour.

use std::sync::Arc;

use crate::daemon::DaemonState;
use crate::device::SoundDevice;

/// Makes `dev` the device of the current VMM connection, as the daemon does
/// when a VMM connects (the management API's `status` then reports its
/// streams).
pub fn set_current_device(state: &DaemonState, dev: &Arc<SoundDevice>) {
    state.set_current(Arc::downgrade(dev));
}
