//! The device core's view of a virtqueue, independent of vhost-user.
//!
//! The vhost-user glue (`vhu.rs`) implements [`Virtqueue`] over a
//! `VringRwLock`; unit tests implement it over a plain `virtio_queue::Queue`
//! in local memory. Nothing else in the core knows which one it talks to.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

/// Guest memory as the daemon maps it.
pub type Mem = GuestMemoryMmap<()>;
/// A descriptor chain popped from a queue, holding its memory mapping alive.
pub type Chain = DescriptorChain<GuestMemoryLoadGuard<Mem>>;

/// One virtqueue, as the device core uses it. Implementations are shared
/// between the queue thread and the stream workers, so every method takes
/// `&self` and does its own locking.
pub trait Virtqueue: Send + Sync {
    /// Takes the next chain the driver made available, if any.
    fn pop(&self) -> Option<Chain>;
    /// Puts a chain on the used ring with `len` bytes written, and notifies
    /// the driver if it asked to be (EVENT_IDX).
    fn complete(&self, head: u16, len: u32);
}
