//! The disk budget — docs/architecture.md#invariant-6, "bounded disk": WAL plus segments stay under
//! `WAL_MAX_BYTES`; when full, the exporter stops reading the stream, drops nothing, and resumes
//! from its cursor.
//!
//! The budget counts ahead what the WAL will take, so that nothing the WAL does after a commit
//! was admitted (growing its database, sealing records into segments) can take it past the
//! budget:
//!
//! - **the database**: its size as last measured, plus every admitted commit that no fresh
//!   measurement includes yet, at raw size (what it can add at most), plus one
//!   [`wal::DATABASE_GROWTH_BYTES`] kept free, because the file grows a whole segment at a time. The
//!   file never shrinks: sealing frees space inside it, which later commits reuse;
//! - **the segments**: those on disk, plus every record not sealed yet (the unsealed backlog
//!   and the commits not yet durable), at raw size, because each will be sealed into a segment
//!   (zstd never makes NDJSON bigger but by a few bytes of framing) while the database keeps
//!   its size.
//!
//! So a commit of `r` raw bytes is admitted only if that total plus `2 r` (once in the
//! database, once in a segment) fits in the budget minus the growth step. Usage stays within
//! `WAL_MAX_BYTES` as long as the database does not grow by more than what is written to it
//! plus one growth step, which is how sled 0.34 behaves; the end-to-end test
//! `tests/daemon_budget.rs` measures it.
//!
//! The WAL measures its database after every seal and every upload it records, before it
//! answers (wal `DiskUsage`): so when a seal or an upload returns, the measurement includes
//! every commit that was durable before it was asked for (`Budget::measure_mark`,
//! `Budget::measured`). The measured size alone cannot tell: it often stays the same across
//! measurements, the file growing in large steps.
//!
//! Waiting must always be able to free something, or reading would stay paused for good: when
//! the WAL holds nothing that uploads or seals could free (no segment, no unsealed record, no
//! commit in flight), a commit is admitted even if it does not fit, alone, and reading resumes.
//! That happens only when one event is larger than the budget allows, or when the database
//! file, which never shrinks, grew past the budget during a long outage; usage may then pass
//! the budget by that much (logged).
//!
//! When a commit is refused, reading pauses: the stream client syncs and disconnects, and the
//! events it had read but that were not committed are read again after the pause, from the
//! durable cursor (nothing is lost; the server sends them again). Reading resumes once the
//! count plus the refused commit falls to `RESUME_RATIO` of the limit (hysteresis, so the
//! client does not reconnect for every freed byte, nor to be refused the same commit again),
//! which happens as uploads delete segments.
//!
//! The filesystem's free space counts too: the WAL reports full when fewer than
//! [`wal::FS_RESERVE_BYTES`] are free, so the database never meets a full disk mid-write. That
//! space belongs to everyone on the filesystem and comes back without anything happening in the
//! WAL (another process deletes its files), so while reading is paused [`BudgetedWal::recheck_while_paused`]
//! looks again every [`RECHECK_PERIOD`] instead of waiting for an upload that may never come.
//!
//! The stages never call that bookkeeping themselves: they write through a [`BudgetedWal`],
//! whose `admit`/`durable`, `seal` and `mark_uploaded` do each step in its place, so a new
//! stage cannot skip one or take them out of order.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
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
    /// What the refused commit would have counted: reading resumes only with room for it.
    refused_bytes: AtomicU64,
    estimate: Mutex<Estimate>,
}

/// Commits counted until a measurement of the database is known to include them, and until
/// they are durable (then the WAL's unsealed backlog counts them). Counters of raw bytes since
/// start-up; commits become durable in the order they were admitted.
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
struct MeasureMark(u64);

/// What the WAL reports, read in this order: the unsealed backlog first, then the disk usage,
/// so a seal in between is counted twice rather than not at all.
#[derive(Debug, Clone, Copy)]
struct WalFigures {
    /// Raw bytes of the durable records not sealed yet (`Wal::backlog`).
    unsealed_bytes: u64,
    /// Database and segments as last measured (`Wal::disk_usage`).
    usage: DiskUsage,
}

impl WalFigures {
    /// Reads them from `wal`.
    fn of(wal: &wal::Wal) -> Self {
        let unsealed_bytes = wal.backlog().raw_bytes;
        Self {
            unsealed_bytes,
            usage: wal.disk_usage(),
        }
    }
}

impl Budget {
    /// A budget of `max_bytes` keeping `reserve_bytes` (at most half of it) free besides what it
    /// counts: [`wal::DATABASE_GROWTH_BYTES`] for the WAL.
    pub fn new(max_bytes: u64, reserve_bytes: u64) -> Self {
        let (accepting, _) = watch::channel(true);
        Self {
            max_bytes,
            reserve_bytes: reserve_bytes.min(max_bytes / 2),
            accepting,
            paused: AtomicBool::new(false),
            pauses: AtomicU64::new(0),
            refused_bytes: AtomicU64::new(0),
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

    /// What the counted usage may reach: the budget minus the reserve.
    pub fn limit(&self) -> u64 {
        self.max_bytes - self.reserve_bytes
    }

    /// What the WAL takes, or will take once every record it holds or is about to hold is
    /// sealed (see the module documentation).
    fn estimated_used(&self, wal: &WalFigures) -> u64 {
        let estimate = self.lock_estimate();
        let unmeasured = estimate.admitted.saturating_sub(estimate.measured);
        let not_durable = estimate.admitted.saturating_sub(estimate.durable);
        wal.usage
            .used()
            .saturating_add(unmeasured)
            .saturating_add(wal.unsealed_bytes)
            .saturating_add(not_durable)
    }

    /// Whether a commit of `raw_bytes` fits (or the WAL holds nothing waiting could free). When
    /// it does not, reading pauses (logged once).
    fn admit(&self, wal: &WalFigures, raw_bytes: u64) -> bool {
        let used = self.estimated_used(wal);
        let counted = raw_bytes.saturating_mul(2);
        let fits = used.saturating_add(counted) <= self.limit();
        let admitted = (fits || self.nothing_to_free(wal)) && !short_of_space(&wal.usage);
        if !admitted {
            self.refused_bytes.store(counted, Ordering::Relaxed);
            self.pause(used, &wal.usage);
        } else if !fits {
            tracing::warn!(
                used_bytes = used,
                commit_bytes = raw_bytes,
                max_bytes = self.max_bytes,
                database_bytes = wal.usage.database_bytes,
                "over the disk budget (WAL_MAX_BYTES) with nothing left to upload: going on, \
                 or reading would stop for good; raise WAL_MAX_BYTES"
            );
        }
        admitted
    }

    /// Whether the WAL holds nothing that uploads or seals could free.
    fn nothing_to_free(&self, wal: &WalFigures) -> bool {
        let estimate = self.lock_estimate();
        wal.usage.segment_bytes == 0
            && wal.unsealed_bytes == 0
            && estimate.admitted == estimate.durable
    }

    /// Records that a commit of `raw_bytes` was admitted and handed to the WAL.
    fn committed(&self, raw_bytes: u64) {
        self.lock_estimate().admitted += raw_bytes;
    }

    /// Records that the oldest commit not yet durable, of `raw_bytes`, is now durable.
    fn durable(&self, raw_bytes: u64) {
        self.lock_estimate().durable += raw_bytes;
    }

    /// To take just before asking the WAL to record a seal or an upload.
    fn measure_mark(&self) -> MeasureMark {
        MeasureMark(self.lock_estimate().durable)
    }

    /// The seal or upload asked for after `mark` returned: the WAL measured its database since,
    /// including every commit durable at `mark`, so they no longer count on top of it.
    fn measured(&self, mark: MeasureMark) {
        let mut estimate = self.lock_estimate();
        estimate.measured = estimate.measured.max(mark.0);
    }

    /// Re-evaluates after space was freed (an upload) or measured again; resumes reading when
    /// usage is low enough. Returns whether reading is allowed. `figures` is asked only while
    /// reading is paused (it costs a `statvfs`), so callers need not check first.
    fn refresh(&self, figures: impl FnOnce() -> WalFigures) -> bool {
        if !self.is_paused() {
            return true;
        }
        let wal = &figures();
        let used = self.estimated_used(wal);
        let resume_at = (self.limit() as f64 * RESUME_RATIO) as u64;
        let room = used.saturating_add(self.refused_bytes.load(Ordering::Relaxed)) <= resume_at;
        if (room || self.nothing_to_free(wal)) && !short_of_space(&wal.usage) {
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
        // The estimate is three counters: a panic elsewhere cannot leave them inconsistent.
        self.estimate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How often [`BudgetedWal::recheck_while_paused`] looks at the disk again while reading is paused.
pub const RECHECK_PERIOD: Duration = Duration::from_secs(1);

/// The WAL behind the disk budget: every write that changes what the WAL takes on disk goes
/// through here, so the budget's bookkeeping cannot be forgotten or done in the wrong order by a
/// stage. Commits are admitted before they are handed to the WAL ([`BudgetedWal::admit`]) and
/// counted until durable ([`BudgetedWal::durable`]); seals and uploads are recorded with the
/// measurement they carry ([`BudgetedWal::seal`], [`BudgetedWal::mark_uploaded`]); reading
/// resumes as soon as room is back. Reads go to the plain [`Wal`](wal::Wal) ([`BudgetedWal::wal`]).
#[derive(Clone)]
pub struct BudgetedWal {
    wal: wal::Wal,
    budget: Arc<Budget>,
}

/// A commit the budget admitted: hand it back to [`BudgetedWal::durable`] once its group is
/// durable. Until then its bytes count against the budget twice (database and segment).
#[derive(Debug)]
#[must_use = "pass it to BudgetedWal::durable once the group is durable"]
pub struct Admitted {
    raw_bytes: u64,
}

impl std::fmt::Debug for BudgetedWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BudgetedWal")
            .field("wal", &self.wal.dir())
            .field("budget", &self.budget)
            .finish()
    }
}

impl BudgetedWal {
    /// `wal` under `budget`.
    pub fn new(wal: wal::Wal, budget: Arc<Budget>) -> Self {
        Self { wal, budget }
    }

    /// The WAL, for reading (state, backlog, segments, disk usage).
    pub fn wal(&self) -> &wal::Wal {
        &self.wal
    }

    /// The budget: whether reading is paused, and the watch the stream client follows.
    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Admits a commit of `raw_bytes` raw NDJSON bytes, or refuses it and pauses reading (see
    /// the module documentation).
    pub fn admit(&self, raw_bytes: u64) -> Option<Admitted> {
        if !self.budget.admit(&WalFigures::of(&self.wal), raw_bytes) {
            return None;
        }
        self.budget.committed(raw_bytes);
        Some(Admitted { raw_bytes })
    }

    /// The admitted commit is durable (commits become durable in the order they were
    /// admitted); resumes reading if that was all that held it back.
    pub fn durable(&self, admitted: Admitted) {
        self.budget.durable(admitted.raw_bytes);
        self.refresh();
    }

    /// Changes the WAL's state only (no record, nothing the budget counts); resolves once
    /// durable.
    pub async fn change_state(
        &self,
        changes: Vec<wal::StateChange>,
    ) -> Result<wal::Committed, wal::WalError> {
        self.wal
            .appender()
            .submit(wal::Group {
                records: Vec::new(),
                cursor: None,
                changes,
            })
            .await
    }

    /// [`Wal::seal`](wal::Wal::seal), with the database measurement it makes counted. Blocks.
    pub fn seal(
        &self,
        max_raw_bytes: u64,
        now_ms: u64,
    ) -> Result<Option<wal::SegmentMeta>, wal::WalError> {
        let mark = self.budget.measure_mark();
        let sealed = self.wal.seal(max_raw_bytes, now_ms)?;
        if sealed.is_some() {
            self.budget.measured(mark);
        }
        Ok(sealed)
    }

    /// [`Wal::mark_uploaded`](wal::Wal::mark_uploaded), with the measurement counted and the
    /// space freed given back to reading. Blocks (a `statvfs` while reading is paused).
    pub fn mark_uploaded(&self, number: u64, uploaded_at_ms: u64) -> Result<(), wal::WalError> {
        let mark = self.budget.measure_mark();
        self.wal.mark_uploaded(number, uploaded_at_ms)?;
        self.budget.measured(mark);
        self.refresh();
        Ok(())
    }

    /// Re-evaluates the budget (only while reading is paused: it costs a `statvfs`); returns
    /// whether reading is allowed.
    pub fn refresh(&self) -> bool {
        self.budget.refresh(|| WalFigures::of(&self.wal))
    }

    /// Until `cancel` fires: while reading is paused, re-evaluates the budget every
    /// [`RECHECK_PERIOD`], so space freed outside the WAL resumes reading. Costs one `statvfs`
    /// per period while paused, nothing otherwise.
    pub async fn recheck_while_paused(self, cancel: CancellationToken) {
        let mut accepting = self.budget.accepting();
        loop {
            // Sleep until reading pauses.
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = accepting.wait_for(|accepting| !*accepting) => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            while self.budget.is_paused() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(RECHECK_PERIOD) => {}
                }
                self.refresh();
            }
        }
    }
}

/// The filesystem has less than [`wal::FS_RESERVE_BYTES`] free: nothing may be written, whatever
/// the budget.
fn short_of_space(usage: &DiskUsage) -> bool {
    usage
        .fs_available_bytes
        .is_some_and(|free| free < wal::FS_RESERVE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(database: u64, segments: u64, unsealed: u64) -> WalFigures {
        WalFigures {
            unsealed_bytes: unsealed,
            usage: DiskUsage {
                database_bytes: database,
                segment_bytes: segments,
                max_bytes: 1000,
                fs_available_bytes: None,
            },
        }
    }

    /// Admits, hands over and makes durable a commit of `raw` bytes, as the committer does.
    fn commit(budget: &Budget, wal: &WalFigures, raw: u64) {
        assert!(budget.admit(wal, raw));
        budget.committed(raw);
        budget.durable(raw);
    }

    #[test]
    fn a_commit_counts_twice_and_a_refusal_pauses_once() {
        let budget = Budget::new(1000, 100);
        let accepting = budget.accepting();
        assert!(budget.admit(&figures(500, 200, 0), 100));
        assert!(!budget.admit(&figures(500, 200, 0), 101));
        assert!(!*accepting.borrow());
        assert!(!budget.admit(&figures(500, 200, 0), 101));
        assert_eq!(budget.pauses(), 1);
    }

    #[test]
    fn unsealed_records_count_as_the_segments_they_will_become() {
        let budget = Budget::new(1000, 100);
        assert_eq!(budget.estimated_used(&figures(300, 100, 250)), 650);
        assert!(!budget.admit(&figures(300, 100, 250), 150));
    }

    #[test]
    fn commits_count_until_a_measurement_includes_them() {
        let budget = Budget::new(1000, 100);
        assert!(budget.admit(&figures(100, 0, 0), 300));
        budget.committed(300);
        // Not durable yet: in the database and in a future segment.
        assert_eq!(budget.estimated_used(&figures(100, 0, 0)), 700);
        budget.durable(300);
        // Durable: the WAL's backlog counts the future segment now.
        assert_eq!(budget.estimated_used(&figures(100, 0, 300)), 700);
        // A different size alone proves nothing: the commit still counts.
        assert_eq!(budget.estimated_used(&figures(200, 0, 300)), 800);
        let mark = budget.measure_mark();
        budget.measured(mark);
        assert_eq!(budget.estimated_used(&figures(200, 0, 300)), 500);
    }

    #[test]
    fn a_commit_not_durable_at_the_mark_still_counts_after_the_measurement() {
        let budget = Budget::new(1000, 100);
        commit(&budget, &figures(0, 0, 0), 100);
        budget.committed(50);
        let mark = budget.measure_mark();
        budget.durable(50);
        budget.measured(mark);
        assert_eq!(budget.estimated_used(&figures(100, 0, 0)), 150);
        // An older mark never undoes a newer one.
        let newer = budget.measure_mark();
        budget.measured(newer);
        budget.measured(mark);
        assert_eq!(budget.estimated_used(&figures(100, 0, 0)), 100);
    }

    /// The database file keeps its size while space inside it is reused: reading must resume
    /// once uploads free the segments, even though every measurement gives the same size.
    #[test]
    fn reading_resumes_when_the_database_keeps_the_same_size() {
        let budget = Budget::new(1000, 100);
        let accepting = budget.accepting();
        for _ in 0..4 {
            commit(&budget, &figures(300, 0, 0), 50);
        }
        // Sealed into segments, which S3 cannot take: full.
        assert!(!budget.admit(&figures(300, 600, 0), 50));
        assert!(!*accepting.borrow());
        // Uploads free the segments; the database measures the same size as before.
        let mark = budget.measure_mark();
        budget.measured(mark);
        assert!(budget.refresh(|| figures(300, 0, 0)));
        assert!(*accepting.borrow());
    }

    #[test]
    fn reading_resumes_below_the_hysteresis_mark_with_room_for_the_refused_commit() {
        let budget = Budget::new(1000, 100);
        let accepting = budget.accepting();
        assert!(!budget.admit(&figures(750, 100, 0), 50));
        assert!(!budget.refresh(|| figures(750, 100, 0)));
        // Below the mark (810), but not with the refused commit (2 × 50) on top.
        assert!(!budget.refresh(|| figures(700, 100, 0)));
        assert!(!budget.refresh(|| figures(611, 100, 0)));
        assert!(!*accepting.borrow());
        assert!(budget.refresh(|| figures(610, 100, 0)));
        assert!(*accepting.borrow());
        assert!(!budget.is_paused());
    }

    #[test]
    fn a_filesystem_short_of_space_is_full_whatever_the_budget() {
        let budget = Budget::new(u64::MAX / 2, 0);
        let mut low = figures(0, 0, 0);
        low.usage.fs_available_bytes = Some(1);
        assert!(!budget.admit(&low, 1));
        assert!(!budget.refresh(|| low));
    }

    #[test]
    fn a_commit_too_big_for_the_budget_goes_alone_when_nothing_else_is_held() {
        let budget = Budget::new(1000, 100);
        // Something could still be freed: refused.
        assert!(!budget.admit(&figures(100, 10, 0), 600));
        // Nothing is: admitted alone, and reading goes on.
        assert!(budget.refresh(|| figures(100, 0, 0)));
        assert!(budget.admit(&figures(100, 0, 0), 600));
        budget.committed(600);
        // In flight, it holds the next one back.
        assert!(!budget.admit(&figures(100, 0, 0), 600));
    }

    /// The database file never shrinks: if an outage made it bigger than the resume mark,
    /// reading must still resume once everything was uploaded.
    #[test]
    fn reading_resumes_when_only_the_database_file_is_left() {
        let budget = Budget::new(1000, 100);
        assert!(!budget.admit(&figures(850, 100, 0), 10));
        assert!(!budget.refresh(|| figures(850, 50, 0)));
        assert!(budget.refresh(|| figures(850, 0, 0)));
    }
}
