//! The device core's view of a virtqueue, independent of vhost-user.
//!
//! The vhost-user glue (`vhost_user.rs`) implements [`Virtqueue`] over a
//! vring; unit tests implement it over a plain `virtio_queue::Queue` in
//! local memory. Nothing else in the core knows which one it talks to.
//!
//! A ring is written (a chain taken, a status byte, a used entry, a
//! notification) only while the driver side runs it, and only under a
//! [`RingPass`] of its [`RingGate`] (`gate.rs`): `pop` and `complete` take
//! one, so the compiler checks that every write is covered.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryLoadGuard, GuestMemoryMmap};

pub use crate::gate::{RingGate, RingPass};

/// Guest memory as the daemon maps it.
pub type Mem = GuestMemoryMmap<()>;
/// A descriptor chain popped from a queue, holding its memory mapping alive.
pub type Chain = DescriptorChain<GuestMemoryLoadGuard<Mem>>;

/// One virtqueue, as the device core uses it. Implementations are shared
/// between the queue thread and the stream workers, so every method takes
/// `&self` and does its own locking.
pub trait Virtqueue: Send + Sync {
    /// The ring's run state.
    fn gate(&self) -> &RingGate;
    /// The queue size: no chain may have more descriptors.
    fn size(&self) -> u16;
    /// Takes the next chain the driver made available, if any.
    fn pop(&self, pass: &RingPass<'_>) -> Option<Chain>;
    /// Puts a chain on the used ring with `len` bytes written, and notifies
    /// the driver if it asked to be (EVENT_IDX).
    fn complete(&self, pass: &RingPass<'_>, head: u16, len: u32);
    /// Holds the driver's notifications back until the matching
    /// [`release_notifications`](Self::release_notifications): completions
    /// made meanwhile (by any thread) are announced by one notification
    /// then, if the driver asked for one.
    fn hold_notifications(&self) {}
    /// Ends a [`hold_notifications`](Self::hold_notifications).
    fn release_notifications(&self) {}
    /// Under a hold, announces the completions made so far now (the hold
    /// goes on): before work that takes long, so that they are not late.
    fn flush_notifications(&self) {}
    /// Turns the driver's kicks for new buffers off (someone takes them
    /// from the ring at every tick) or back on. Returns whether buffers
    /// may be waiting that no kick announced (drain the ring then).
    fn set_kicks(&self, on: bool) -> bool {
        on
    }
}
