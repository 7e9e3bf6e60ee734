//! The syncer: applies planned commits in order, makes them durable (sled flush, then fsync),
//! publishes them and answers their requests; the first failure poisons the WAL.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{CommitPlan, Planned, Reply, Shared, lock};
use crate::error::WalError;
use crate::store::{Store, WriteBatch};
use crate::usage::WalStats;

/// How often the database size is measured when no seal or upload asks for it.
const SIZE_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The syncer thread's state.
pub(crate) struct Syncer {
    pub store: Arc<Store>,
    pub shared: Arc<Mutex<Shared>>,
    pub stats: Arc<WalStats>,
    #[cfg(test)]
    pub faults: Arc<super::Faults>,
}

impl Syncer {
    /// Commits planned batches in order until the planner is gone.
    pub(super) fn run(self, planned: mpsc::Receiver<Planned>) {
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
    fn commit(&self, plan: CommitPlan) -> Result<bool, WalError> {
        if plan.batch.is_empty() {
            // Every request was refused on its own: nothing to write.
            return Ok(false);
        }
        self.write(plan.batch)?;
        WalStats::add(&self.stats.commits, 1);
        WalStats::add(&self.stats.raw_bytes, plan.raw_bytes);
        WalStats::add(&self.stats.stored_bytes, plan.stored_bytes);
        for meta in &plan.added {
            WalStats::add(&self.stats.segments_sealed, 1);
            WalStats::add(&self.stats.sealed_raw_bytes, meta.raw_bytes);
        }
        WalStats::add(&self.stats.segments_uploaded, plan.removed.len() as u64);
        let mut shared = lock(&self.shared);
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

    fn write(&self, batch: WriteBatch) -> Result<(), WalError> {
        self.store.apply(batch)?;
        #[cfg(test)]
        if self
            .faults
            .fail_next_sync
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(WalError::io(
                "fsyncing (injected fault)",
                self.store.path(),
                std::io::Error::other("injected"),
            ));
        }
        self.store.sync()
    }
}
