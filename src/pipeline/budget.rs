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
//! - that estimate is the raw size of every admitted commit that no fresh measurement is known
//!   to include. The WAL measures its database after every seal and every upload it records,
//!   before it answers (wal `DiskUsage`): so when a seal or an upload returns, the measurement
//!   includes every commit that was durable before it was asked for ([`Budget::measure_mark`],
//!   [`Budget::measured`]). The database file grows in large steps and never shrinks, so an
//!   unchanged size says nothing about whether it was measured again;
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

/// Commits counted until a measurement of the database is known to include them. Counters of
/// raw bytes since start-up; commits become durable in the order they were admitted.
#[derive(Debug, Default)]
struct Estimate {
    /// Every commit admitted.
    admitted: u64,
    /// Every commit durable.
    durable: u64,
    /// The commits (a prefix of the admitted ones) a fresh measurement includes.
    measured: u64,
}

/// Taken before a seal or an upload is recorded: every commit durable at that moment is
/// included in the measurement the WAL makes before the seal or upload returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "pass it to Budget::measured once the seal or upload returned"]
pub struct MeasureMark(u64);

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

    /// Usage as the WAL reports it, plus the raw size of the commits its last known measurement
    /// does not include.
    pub fn estimated_used(&self, usage: &DiskUsage) -> u64 {
        let estimate = self.lock_estimate();
        usage
            .used()
            .saturating_add(estimate.admitted.saturating_sub(estimate.measured))
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

    /// Records that a commit of `raw_bytes` was admitted and handed to the WAL.
    pub fn committed(&self, raw_bytes: u64) {
        self.lock_estimate().admitted += raw_bytes;
    }

    /// Records that the oldest commit not yet durable, of `raw_bytes`, is now durable.
    pub fn durable(&self, raw_bytes: u64) {
        self.lock_estimate().durable += raw_bytes;
    }

    /// To take just before asking the WAL to record a seal or an upload.
    pub fn measure_mark(&self) -> MeasureMark {
        MeasureMark(self.lock_estimate().durable)
    }

    /// The seal or upload asked for after `mark` returned: the WAL measured its database since,
    /// including every commit durable at `mark`, so they no longer count on top of it.
    pub fn measured(&self, mark: MeasureMark) {
        let mut estimate = self.lock_estimate();
        estimate.measured = estimate.measured.max(mark.0);
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
    fn commits_count_until_a_measurement_includes_them() {
        let budget = Budget::new(1000, 200);
        assert!(budget.admit(&usage(100, 0), 400));
        budget.committed(400);
        assert_eq!(budget.estimated_used(&usage(100, 0)), 500);
        assert!(!budget.admit(&usage(100, 0), 400));
        // A different size alone proves nothing: the commit still counts.
        assert_eq!(budget.estimated_used(&usage(300, 0)), 700);
        budget.durable(400);
        let mark = budget.measure_mark();
        budget.measured(mark);
        assert_eq!(budget.estimated_used(&usage(300, 0)), 300);
    }

    #[test]
    fn a_commit_not_durable_at_the_mark_still_counts_after_the_measurement() {
        let budget = Budget::new(1000, 200);
        budget.committed(100);
        budget.durable(100);
        budget.committed(50);
        let mark = budget.measure_mark();
        budget.durable(50);
        budget.measured(mark);
        assert_eq!(budget.estimated_used(&usage(100, 0)), 150);
        // An older mark never undoes a newer one.
        let newer = budget.measure_mark();
        budget.measured(newer);
        budget.measured(mark);
        assert_eq!(budget.estimated_used(&usage(100, 0)), 100);
    }

    /// The database file keeps its size while space inside it is reused: reading must resume
    /// once uploads free the segments, even though every measurement gives the same size.
    #[test]
    fn reading_resumes_when_the_database_keeps_the_same_size() {
        let budget = Budget::new(1000, 100);
        let accepting = budget.accepting();
        for _ in 0..4 {
            assert!(budget.admit(&usage(300, 400), 50));
            budget.committed(50);
            budget.durable(50);
        }
        // Sealed into segments, which S3 cannot take: full.
        assert!(!budget.admit(&usage(300, 600), 50));
        assert!(!*accepting.borrow());
        // Uploads free the segments; the database measures the same size as before.
        let mark = budget.measure_mark();
        budget.measured(mark);
        assert!(budget.refresh(&usage(300, 0)));
        assert!(*accepting.borrow());
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
