//! The event queue (spec 5.14.6.2): jack and xrun notifications.
//!
//! The driver pre-posts empty buffers. We take one only when there is an
//! event to put in it, so a kick with nothing to say costs one eventfd read
//! and never spins (guest-testing.md, failure 1). Events that find no buffer
//! wait in a bounded queue; past the bound the oldest is dropped and logged.

use std::collections::VecDeque;
use std::sync::Mutex;

use vm_memory::ByteValued;

use crate::chain::{self, ChainLayout};
use crate::constants::EventType;
use crate::queue::Virtqueue;
use crate::wire::Event;

/// Undelivered events kept at most.
pub const MAX_PENDING_EVENTS: usize = 256;

/// Events waiting for a driver buffer.
pub struct EventQueue {
    pending: Mutex<VecDeque<Event>>,
}

impl Default for EventQueue {
    fn default() -> Self {
        EventQueue {
            pending: Mutex::new(VecDeque::with_capacity(MAX_PENDING_EVENTS)),
        }
    }
}

impl EventQueue {
    /// Queues an event; delivers it at once if `queue` has a buffer.
    pub fn push(&self, kind: EventType, data: u32, queue: Option<&dyn Virtqueue>) {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.len() >= MAX_PENDING_EVENTS {
                log::warn!("event queue full: dropping the oldest event");
                p.pop_front();
            }
            let mut ev = Event::default();
            ev.hdr.code = (kind as u32).into();
            ev.data = data.into();
            p.push_back(ev);
        }
        if let Some(q) = queue {
            self.deliver(q);
        }
    }

    /// Delivers queued events into posted buffers, as many as fit.
    pub fn deliver(&self, queue: &dyn Virtqueue) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(ev) = p.front().copied() {
            let Some(chain) = queue.pop() else {
                break;
            };
            let head = chain.head_index();
            let len = match ChainLayout::of(&chain) {
                Ok(layout) if layout.writable >= 8 => {
                    match chain::write_at(&chain, &layout, 0, ev.as_slice()) {
                        Ok(()) => 8,
                        Err(_) => 0,
                    }
                }
                _ => 0,
            };
            queue.complete(head, len);
            if len == 8 {
                p.pop_front();
            } else {
                log::warn!("event buffer too small or unwritable; event kept");
            }
        }
    }

    /// Events not yet delivered.
    pub fn pending(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }
}
