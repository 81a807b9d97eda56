//! The event queue (spec 5.14.6.2): jack and xrun notifications.
//!
//! The driver pre-posts empty buffers. We take one only when there is an
//! event to put in it, so a kick with nothing to say costs one eventfd read
//! and never spins (the Linux driver's first failure mode). Events that find
//! no buffer (or a stopped ring) wait in a bounded queue that keeps what the
//! driver needs to know: the latest state of each jack (a newer
//! connected/disconnected replaces the older one) and one xrun per stream.

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

fn is_jack(code: u32) -> bool {
    code == EventType::JackConnected as u32 || code == EventType::JackDisconnected as u32
}

/// Whether `newer` makes `older` pointless: a jack's newer state, or a
/// second xrun of the same stream.
fn supersedes(newer: &Event, older: &Event) -> bool {
    let (n, o) = (newer.hdr.code.to_native(), older.hdr.code.to_native());
    older.data.to_native() == newer.data.to_native() && ((is_jack(n) && is_jack(o)) || n == o)
}

impl EventQueue {
    /// Queues an event; delivers it at once if `queue` has a buffer.
    pub fn push(&self, kind: EventType, data: u32, queue: Option<&dyn Virtqueue>) {
        {
            let mut p = self.lock();
            let mut ev = Event::default();
            ev.hdr.code = (kind as u32).into();
            ev.data = data.into();
            p.retain(|old| !supersedes(&ev, old));
            if p.len() >= MAX_PENDING_EVENTS {
                // Only with more jacks and streams than the bound: an xrun
                // goes first, a jack state only if there is nothing else.
                let victim = p
                    .iter()
                    .position(|e| !is_jack(e.hdr.code.to_native()))
                    .unwrap_or(0);
                log::debug!("event queue full: dropping an event");
                p.remove(victim);
            }
            p.push_back(ev);
        }
        if let Some(q) = queue {
            self.deliver(q);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delivers queued events into posted buffers, as many as fit; nothing
    /// while the ring is stopped.
    pub fn deliver(&self, queue: &dyn Virtqueue) {
        let Some(pass) = queue.gate().enter() else {
            return;
        };
        let mut p = self.lock();
        while let Some(ev) = p.front().copied() {
            let Some(chain) = queue.pop(&pass) else {
                break;
            };
            let head = chain.head_index();
            let len = match ChainLayout::of(&chain, queue.size()) {
                Ok(layout) if layout.writable >= 8 => {
                    match chain::write_at(&chain, &layout, 0, ev.as_slice()) {
                        Ok(()) => 8,
                        Err(_) => 0,
                    }
                }
                _ => 0,
            };
            queue.complete(&pass, head, len);
            if len == 8 {
                p.pop_front();
            } else {
                log::debug!("event buffer too small or unwritable; event kept");
            }
        }
    }

    /// Forgets every undelivered event (device reset: the next driver
    /// reads the jacks' state itself).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Events not yet delivered, oldest first: (code, data).
    pub fn pending(&self) -> Vec<(u32, u32)> {
        self.lock()
            .iter()
            .map(|e| (e.hdr.code.to_native(), e.data.to_native()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jack_keeps_only_its_latest_state() {
        let q = EventQueue::default();
        q.push(EventType::JackDisconnected, 1, None);
        q.push(EventType::JackConnected, 0, None);
        q.push(EventType::JackConnected, 1, None);
        q.push(EventType::JackDisconnected, 1, None);
        assert_eq!(
            q.pending(),
            vec![
                (EventType::JackConnected as u32, 0),
                (EventType::JackDisconnected as u32, 1)
            ]
        );
    }

    #[test]
    fn a_stream_has_at_most_one_pending_xrun() {
        let q = EventQueue::default();
        for _ in 0..5 {
            q.push(EventType::PcmXrun, 3, None);
        }
        q.push(EventType::PcmXrun, 4, None);
        assert_eq!(
            q.pending(),
            vec![
                (EventType::PcmXrun as u32, 3),
                (EventType::PcmXrun as u32, 4)
            ]
        );
    }

    #[test]
    fn a_full_queue_drops_an_xrun_before_any_jack_state() {
        let q = EventQueue::default();
        q.push(EventType::JackDisconnected, 0, None);
        for s in 0..(MAX_PENDING_EVENTS as u32 - 1) {
            q.push(EventType::PcmXrun, s, None);
        }
        q.push(EventType::JackConnected, 1, None);
        let p = q.pending();
        assert_eq!(p.len(), MAX_PENDING_EVENTS);
        assert_eq!(p[0], (EventType::JackDisconnected as u32, 0));
        assert_eq!(p[p.len() - 1], (EventType::JackConnected as u32, 1));
        assert!(!p.contains(&(EventType::PcmXrun as u32, 0)));
    }
}
