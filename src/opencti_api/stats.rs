//! Counters of the OpenCTI API task, read by the metrics endpoint and `/status`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Registration, pings and resets since start-up. Plain relaxed atomics plus the current failure
/// (a short text, never holding a secret).
#[derive(Debug, Default)]
pub struct ApiStats {
    /// The connector is registered on the platform.
    pub registered: AtomicBool,
    /// Successful registrations.
    pub registrations: AtomicU64,
    /// Ping attempts (pycti's `ping_api_total`).
    pub pings: AtomicU64,
    /// Failed pings (pycti's `ping_api_errors_total`).
    pub ping_errors: AtomicU64,
    /// Failed registration attempts.
    pub register_errors: AtomicU64,
    /// Unix ms of the last successful ping (0: none yet).
    pub last_ping_ok_unix_ms: AtomicU64,
    /// State resets requested from the UI and honoured.
    pub resets: AtomicU64,
    /// Reset answers refused (too soon after the last reset, or before the platform stored the
    /// state sent after it).
    pub resets_refused: AtomicU64,
    failing: Mutex<Option<String>>,
}

impl ApiStats {
    /// What is failing now, if the last call failed.
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_failing(&self, value: Option<String>) {
        *self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }

    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
