//! The syncer: makes planned commits durable in order (the frame log entry written and
//! fdatasynced, then the database batch applied, flushed and fsynced), deletes the log files they
//! left sealed, publishes them and answers their requests; the first failure poisons the WAL.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{CommitPlan, Planned, Reply, Shared, lock};
use crate::error::WalError;
use crate::log::LogWriter;
use crate::store::Store;
use crate::usage::WalStats;

/// How often the database size is measured when no seal or upload asks for it.
const SIZE_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The syncer thread's state.
pub(crate) struct Syncer {
    pub store: Arc<Store>,
    pub log: LogWriter,
    pub shared: Arc<Mutex<Shared>>,
    pub stats: Arc<WalStats>,
    #[cfg(test)]
    pub faults: Arc<super::Faults>,
}

impl Syncer {
    /// Commits planned batches in order until the planner is gone.
    pub(super) fn run(mut self, planned: mpsc::Receiver<Planned>) {
        let mut poisoned: Option<Arc<WalError>> = None;
        let mut last_size_refresh = Instant::now();
        for Planned {
            plan,
            replies,
            started,
        } in planned
        {
            let outcome = match (&poisoned, plan) {
                (Some(cause), _) => Err(WalError::Poisoned {
                    cause: cause.clone(),
                }),
                (None, Err(error)) => Err(error),
                (None, Ok(plan)) => self.commit(plan),
            };
            let replies: Vec<Reply> = match outcome {
                Ok(sizes_changed) => {
                    if sizes_changed || last_size_refresh.elapsed() >= SIZE_REFRESH_EVERY {
                        self.refresh_size();
                        last_size_refresh = Instant::now();
                    }
                    self.stats.last_commit_micros.store(
                        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    replies
                }
                Err(WalError::Poisoned { cause }) => {
                    let error = || WalError::Poisoned {
                        cause: cause.clone(),
                    };
                    replies
                        .into_iter()
                        .map(|r| r.replace_success(error))
                        .collect()
                }
                Err(error) => {
                    tracing::error!(error = %error, "WAL commit failed; refusing writes until reopened");
                    WalStats::add(&self.stats.commit_failures, 1);
                    let cause = Arc::new(error);
                    lock(&self.shared).poisoned = Some(cause.clone());
                    poisoned = Some(cause.clone());
                    let error = || WalError::CommitFailed {
                        cause: cause.clone(),
                    };
                    replies
                        .into_iter()
                        .map(|r| r.replace_success(error))
                        .collect()
                }
            };
            for reply in replies {
                reply.send(&self.stats);
            }
        }
        tracing::debug!("WAL syncer stopped");
    }

    fn refresh_size(&self) {
        match self.store.size_on_disk() {
            Ok(bytes) => lock(&self.shared).sled_bytes = bytes,
            Err(error) => tracing::warn!(error = %error, "cannot measure the WAL database size"),
        }
    }

    /// Writes one planned commit and publishes it. Returns whether sizes changed enough to
    /// measure the database again; on `Err` nothing was published.
    fn commit(&mut self, plan: CommitPlan) -> Result<bool, WalError> {
        if plan.batch.is_empty() && plan.entry.is_none() && plan.sealed_log_files.is_empty() {
            // Every request was refused on its own: nothing to write.
            return Ok(false);
        }
        let mut fault = self.injected_fault();
        let mut log_bytes_added = 0;
        // The entry first: a database state naming the log's end must never be durable before
        // the entries it counts.
        if let Some((pos, entry)) = &plan.entry {
            self.log.write(*pos, entry)?;
            fault.take().map_or(Ok(()), Err)?;
            self.log.sync(*pos)?;
            log_bytes_added = entry.len() as u64;
        }
        if !plan.batch.is_empty() {
            self.store.apply(plan.batch)?;
            fault.take().map_or(Ok(()), Err)?;
            self.store.sync()?;
        }
        // Only once the seal that left them behind is durable. A failure costs disk space only:
        // the next open deletes them.
        let log_bytes_freed = match self.log.delete(&plan.sealed_log_files) {
            Ok(freed) => freed,
            Err(error) => {
                tracing::warn!(error = %error, "cannot delete sealed frame log files");
                0
            }
        };
        WalStats::add(&self.stats.commits, 1);
        WalStats::add(&self.stats.raw_bytes, plan.raw_bytes);
        WalStats::add(&self.stats.stored_bytes, plan.stored_bytes);
        for meta in &plan.added {
            WalStats::add(&self.stats.segments_sealed, 1);
            WalStats::add(&self.stats.sealed_raw_bytes, meta.raw_bytes);
        }
        WalStats::add(&self.stats.segments_uploaded, plan.removed.len() as u64);
        let mut shared = lock(&self.shared);
        shared.log_bytes = (shared.log_bytes + log_bytes_added).saturating_sub(log_bytes_freed);
        shared.state = plan.state;
        shared.backlog = plan.backlog;
        for meta in plan.added {
            shared.segment_bytes += meta.stored_bytes;
            shared.segments.insert(meta.number, meta);
        }
        for number in plan.removed {
            if let Some(meta) = shared.segments.remove(&number) {
                shared.segment_bytes -= meta.stored_bytes;
            }
            shared.damaged.remove(&number);
        }
        Ok(plan.sizes_changed)
    }

    /// The failure a test asked the next commit to meet between its write and its sync.
    #[cfg(test)]
    fn injected_fault(&self) -> Option<WalError> {
        self.faults
            .fail_next_sync
            .swap(false, std::sync::atomic::Ordering::SeqCst)
            .then(|| {
                WalError::io(
                    "fsyncing (injected fault)",
                    self.store.path(),
                    std::io::Error::other("injected"),
                )
            })
    }

    #[cfg(not(test))]
    fn injected_fault(&self) -> Option<WalError> {
        None
    }
}
