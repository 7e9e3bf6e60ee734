//! The bytes the stream client holds between reading an event and the WAL taking its line, counted
//! so that memory is bounded in bytes, not only in events.
//!
//! Every buffer the client creates on an event's account is *charged*: the payload of an event
//! waiting for its files, each downloaded file, and the line or dead-letter payload handed to the
//! pipeline. A charged buffer is a [`Bytes`] whose owner gives its bytes back when the last clone
//! is dropped — for a line, when the committer has handed it to the WAL and let go of it — so the
//! count follows the memory, wherever the buffer travels.
//!
//! The client stops reading the stream while [`InFlightBytes::is_full`], and downloads of events
//! that are not the oldest one waiting wait for room ([`InFlightBytes::wait_for_room`]). The
//! oldest event never waits, so the queue always drains and the bound never deadlocks; it may
//! therefore be passed by what was already under way when it was reached: the downloads running
//! (at most `FILES_CONCURRENCY` files of at most `FILES_MAX_BYTES`), the oldest event's own files
//! (at most `FILES_MAX_TOTAL_BYTES`), and the events of one network read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{Notify, watch};

/// A byte count with a bound, shared by the stream client, its downloads and the lines it sent.
#[derive(Debug)]
pub struct InFlightBytes {
    used: AtomicU64,
    cap: u64,
    freed: Notify,
}

impl InFlightBytes {
    /// A count starting at zero, full at `cap` bytes (at least 1).
    pub fn new(cap: u64) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicU64::new(0),
            cap: cap.max(1),
            freed: Notify::new(),
        })
    }

    /// Bytes charged and not yet given back.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The bound.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// True while the charged bytes reach the bound.
    pub fn is_full(&self) -> bool {
        self.used() >= self.cap
    }

    /// `bytes`, charged until its last clone is dropped. Cost: one small allocation and two
    /// atomic operations; an empty buffer is returned as is.
    pub fn charge(self: &Arc<Self>, bytes: Bytes) -> Bytes {
        if bytes.is_empty() {
            return bytes;
        }
        self.used.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Bytes::from_owner(Charged {
            bytes,
            gauge: Arc::clone(self),
        })
    }

    /// Returns once the count is under the bound (at once if it already is).
    pub async fn wait_for_room(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if !self.is_full() {
                return;
            }
            freed.await;
        }
    }

    fn give_back(&self, bytes: u64) {
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        if before >= self.cap && before.saturating_sub(bytes) < self.cap {
            self.freed.notify_waiters();
        }
    }
}

/// Where an event stands in the client's queue of events waiting for their files: its position,
/// and the count of queued events handed on so far (it is the oldest when that count reached its
/// position).
#[derive(Debug, Clone)]
pub struct QueuePlace {
    position: u64,
    handed_on: watch::Receiver<u64>,
}

impl QueuePlace {
    /// The event queued at `position`, given the count of queued events handed on.
    pub fn new(position: u64, handed_on: watch::Receiver<u64>) -> Self {
        Self {
            position,
            handed_on,
        }
    }

    /// True when every event queued before this one was handed on.
    pub fn is_oldest(&self) -> bool {
        *self.handed_on.borrow() >= self.position
    }

    /// Returns when `in_flight` has room or this event became the oldest one waiting (which never
    /// waits, so the queue always drains).
    pub async fn wait_for_room(&mut self, in_flight: &InFlightBytes) {
        while !self.is_oldest() && in_flight.is_full() {
            tokio::select! {
                () = in_flight.wait_for_room() => {}
                changed = self.handed_on.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The owner of a charged buffer: gives its bytes back when dropped.
struct Charged {
    bytes: Bytes,
    gauge: Arc<InFlightBytes>,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.gauge.give_back(self.bytes.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_are_given_back_when_the_last_clone_is_dropped() {
        let gauge = InFlightBytes::new(10);
        let line = gauge.charge(Bytes::from_static(b"0123456789"));
        let clone = line.slice(2..4);
        assert!(gauge.is_full());
        drop(line);
        assert_eq!(gauge.used(), 10, "a clone still holds the buffer");
        let waiter = tokio::spawn({
            let gauge = Arc::clone(&gauge);
            async move { gauge.wait_for_room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(clone);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken when room was made")
            .expect("no panic");
        assert_eq!(gauge.used(), 0);
    }
}
