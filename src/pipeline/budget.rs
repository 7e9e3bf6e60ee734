//! The disk budget — DESIGN.md invariant 6, "bounded disk": WAL plus segments stay under
//! `WAL_MAX_BYTES`; when full, the exporter stops reading the stream, drops nothing, and resumes
//! from its cursor.
//!
//! The budget keeps room for one full file (`WRITE_MAX_BYTES`) besides what the committer may
//! write: sealing a segment briefly needs the segment and the records it holds at once, and the
//! compactor must always be able to seal, or the WAL could never drain. So:
//!
//! - the committer admits a commit only if `used + commit bytes ≤ max − reserve`, where the
//!   commit counts at its raw size (what it could weigh at most) and `used` includes an estimate
//!   of what was committed since the WAL last measured its database;
//! - when a commit is refused, reading pauses: the stream client syncs and disconnects, and the
//!   events it had read but that were not committed are read again after the pause, from the
//!   durable cursor (nothing is lost; the server sends them again);
//! - reading resumes once usage falls to `resume_ratio` of the limit (hysteresis, so the client
//!   does not reconnect for every freed byte), which happens as uploads delete segments.
//!
//! The filesystem's free space counts too: the WAL reports full when fewer than
//! [`wal::FS_RESERVE_BYTES`] are free, so the database never meets a full disk mid-write.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;
use wal::DiskUsage;

/// Fraction of the limit usage must fall to before reading resumes.
const RESUME_RATIO: f64 = 0.9;

/// Shared view of the disk budget: decides admission, and publishes whether the stream may
/// read (the `accepting` watch the stream client follows).
#[derive(Debug)]
pub struct Budget {
    max_bytes: u64,
    reserve_bytes: u64,
    accepting: watch::Sender<bool>,
    paused: AtomicBool,
    pauses: AtomicU64,
    estimate: Mutex<Estimate>,
}

/// Bytes committed since the database size was last measured, to count them before the WAL
/// measures again.
#[derive(Debug, Default)]
struct Estimate {
    measured_sled_bytes: u64,
    committed_since: u64,
}

impl Budget {
    /// A budget of `max_bytes` keeping `reserve_bytes` (one full file) free for sealing.
    pub fn new(max_bytes: u64, reserve_bytes: u64) -> Self {
        let (accepting, _) = watch::channel(true);
        Self {
            max_bytes,
            reserve_bytes: reserve_bytes.min(max_bytes / 2),
            accepting,
            paused: AtomicBool::new(false),
            pauses: AtomicU64::new(0),
            estimate: Mutex::new(Estimate::default()),
        }
    }

    /// The watch the stream client follows: `false` while reading is paused.
    pub fn accepting(&self) -> watch::Receiver<bool> {
        self.accepting.subscribe()
    }

    /// Whether reading is paused because the budget is used up.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// How many times reading paused since start-up.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    /// Bytes the committer may use: the budget minus the sealing reserve.
    pub fn limit(&self) -> u64 {
        self.max_bytes - self.reserve_bytes
    }

    /// Usage as the WAL reports it, plus what was committed since it last measured.
    pub fn estimated_used(&self, usage: &DiskUsage) -> u64 {
        let mut estimate = self.lock_estimate();
        if estimate.measured_sled_bytes != usage.sled_bytes {
            estimate.measured_sled_bytes = usage.sled_bytes;
            estimate.committed_since = 0;
        }
        usage.used().saturating_add(estimate.committed_since)
    }

    /// Whether a commit of `raw_bytes` fits. When it does not, reading pauses (logged once).
    pub fn admit(&self, usage: &DiskUsage, raw_bytes: u64) -> bool {
        let used = self.estimated_used(usage);
        let fits = used.saturating_add(raw_bytes) <= self.limit() && !usage.is_full();
        if !fits {
            self.pause(used, usage);
        }
        fits
    }

    /// Records that a commit of `raw_bytes` was made.
    pub fn committed(&self, raw_bytes: u64) {
        self.lock_estimate().committed_since += raw_bytes;
    }

    /// Re-evaluates after space was freed (an upload) or measured again; resumes reading when
    /// usage is low enough. Returns whether reading is allowed.
    pub fn refresh(&self, usage: &DiskUsage) -> bool {
        if !self.is_paused() {
            return true;
        }
        let used = self.estimated_used(usage);
        let resume_at = (self.limit() as f64 * RESUME_RATIO) as u64;
        if used <= resume_at && !usage.is_full() {
            self.paused.store(false, Ordering::Relaxed);
            self.accepting.send_replace(true);
            tracing::info!(
                used_bytes = used,
                max_bytes = self.max_bytes,
                "disk budget has room again: resuming the stream from the durable cursor"
            );
            true
        } else {
            false
        }
    }

    fn pause(&self, used: u64, usage: &DiskUsage) {
        if !self.paused.swap(true, Ordering::Relaxed) {
            self.pauses.fetch_add(1, Ordering::Relaxed);
            self.accepting.send_replace(false);
            tracing::warn!(
                used_bytes = used,
                max_bytes = self.max_bytes,
                fs_available_bytes = usage.fs_available_bytes,
                "disk budget (WAL_MAX_BYTES) is full: pausing the stream until uploads free space; \
                 nothing is dropped"
            );
        }
    }

    fn lock_estimate(&self) -> std::sync::MutexGuard<'_, Estimate> {
        // The estimate is two counters: a panic elsewhere cannot leave them inconsistent.
        self.estimate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(sled: u64, segments: u64) -> DiskUsage {
        DiskUsage {
            sled_bytes: sled,
            segment_bytes: segments,
            max_bytes: 1000,
            fs_available_bytes: None,
        }
    }

    #[test]
    fn admission_keeps_the_sealing_reserve_and_pauses_once() {
        let budget = Budget::new(1000, 200);
        let accepting = budget.accepting();
        assert!(budget.admit(&usage(500, 200), 100));
        assert!(!budget.admit(&usage(500, 200), 101));
        assert!(!*accepting.borrow());
        assert!(!budget.admit(&usage(500, 200), 101));
        assert_eq!(budget.pauses(), 1);
    }

    #[test]
    fn commits_count_until_the_database_is_measured_again() {
        let budget = Budget::new(1000, 200);
        assert!(budget.admit(&usage(100, 0), 400));
        budget.committed(400);
        assert_eq!(budget.estimated_used(&usage(100, 0)), 500);
        assert!(!budget.admit(&usage(100, 0), 400));
        // A new measurement replaces the estimate.
        assert_eq!(budget.estimated_used(&usage(300, 0)), 300);
    }

    #[test]
    fn reading_resumes_below_the_hysteresis_mark() {
        let budget = Budget::new(1000, 200);
        let accepting = budget.accepting();
        assert!(!budget.admit(&usage(700, 100), 50));
        assert!(!budget.refresh(&usage(700, 50)));
        assert!(!*accepting.borrow());
        assert!(budget.refresh(&usage(600, 100)));
        assert!(*accepting.borrow());
        assert!(!budget.is_paused());
    }

    #[test]
    fn a_filesystem_short_of_space_is_full_whatever_the_budget() {
        let budget = Budget::new(u64::MAX / 2, 0);
        let low = DiskUsage {
            fs_available_bytes: Some(1),
            ..usage(0, 0)
        };
        assert!(!budget.admit(&low, 1));
    }
}
