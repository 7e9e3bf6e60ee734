//! The compactor: seals the oldest WAL records into segment N (zstd, checksummed) every
//! `WRITE_EVERY_SEC`, or sooner when a full file (`WRITE_MAX_BYTES` of raw NDJSON) is waiting.
//! It never seals an empty segment (the WAL refuses to), so, like the stock exporter, an idle
//! stream writes no files.
//!
//! Sealing is where a file's number and timestamp are fixed (docs/architecture.md#invariant-3): the
//! WAL gives numbers without gaps and timestamps strictly increasing even if the clock goes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::PipelineError;
use crate::backoff::{Backoff, sleep_or_cancel};
use crate::budget::BudgetedWal;
use crate::ids::now_ms;

/// Counters of the compactor.
#[derive(Debug, Default)]
pub struct CompactorStats {
    /// Segments sealed since start-up.
    pub sealed: AtomicU64,
    /// Seals that failed (retried).
    pub failures: AtomicU64,
}

/// When and how much to seal.
#[derive(Debug, Clone, Copy)]
pub struct CompactorSettings {
    /// Seal at least this often when records are waiting.
    pub every: Duration,
    /// Largest segment, raw bytes.
    pub max_bytes: u64,
}

/// Seals segments until `cancel` fires. `wake` is notified by the committer when a full file is
/// waiting; `sealed` is notified after each seal (the uploader waits on it). Each seal tells
/// the budget that the WAL measured its database again. A failed seal is retried with backoff,
/// unless the WAL refuses writes ([`wal::WalError::refuses_writes`]): then it returns the error,
/// which stops the pipeline.
pub async fn run(
    wal: BudgetedWal,
    settings: CompactorSettings,
    wake: Arc<Notify>,
    sealed: Arc<Notify>,
    stats: Arc<CompactorStats>,
    cancel: CancellationToken,
) -> Result<(), PipelineError> {
    let mut last_seal = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    while !cancel.is_cancelled() {
        let backlog = wal.wal().backlog();
        let full_file_waiting = backlog.raw_bytes >= settings.max_bytes;
        let interval_over = backlog.records > 0 && last_seal.elapsed() >= settings.every;
        if full_file_waiting || interval_over {
            let sealing = wal.clone();
            let max_bytes = settings.max_bytes;
            let result = tokio::task::spawn_blocking(move || {
                let outcome = sealing.seal(max_bytes, now_ms());
                // The seal's buffers and contexts were just freed.
                crate::allocator::release_free_memory();
                outcome
            })
            .await;
            match result {
                Ok(Ok(Some(segment))) => {
                    backoff.reset();
                    stats.sealed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        file_number = segment.number,
                        events = segment.records,
                        raw_bytes = segment.raw_bytes,
                        stored_bytes = segment.stored_bytes,
                        "sealed a segment"
                    );
                    sealed.notify_one();
                    // After an interval seal the clock restarts; after a size seal, seal again at
                    // once if another full file is waiting.
                    if !full_file_waiting {
                        last_seal = Instant::now();
                    }
                    continue;
                }
                Ok(Ok(None)) => last_seal = Instant::now(),
                Ok(Err(err)) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    if err.refuses_writes() {
                        return Err(PipelineError::Wal(err));
                    }
                    let delay = backoff.next_delay();
                    tracing::error!(error = %err, retry_in = ?delay, "sealing a segment failed");
                    if sleep_or_cancel(delay, &cancel).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(join) => {
                    tracing::error!(error = %join, "the sealing task failed");
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let wait = if wal.wal().backlog().records > 0 {
            settings.every.saturating_sub(last_seal.elapsed())
        } else {
            settings.every
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
    Ok(())
}
