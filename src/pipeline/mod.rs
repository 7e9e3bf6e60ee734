//! The daemon's pipeline: stream client → committer (WAL group commit) → compactor (sealing) →
//! uploader (sink), each a task, joined by a bounded channel or by the WAL itself, so a slow
//! stage slows the one before it and nothing grows without bound.
//!
//! Shutdown (SIGTERM/SIGINT, or the caller's token) runs in stream order: the stream client stops
//! reading and drops its channel, the committer makes everything it received durable and stops,
//! the compactor stops, and the uploader finishes its upload in flight within a grace period or
//! abandons it (the next start uploads it again, same key and bytes).

pub mod adopt;
pub mod committer;
pub mod compactor;
pub mod cursor;
pub mod dead_letter;
pub mod failure;
pub mod uploader;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wal::{InitialState, RecoverUntil, Wal, WalError};

use crate::budget::{Budget, BudgetedWal};
use crate::sink::Sink;
use crate::stream::{StreamError, StreamSettings, StreamStats};
use committer::{Committer, CommitterStats};
use compactor::{CompactorSettings, CompactorStats};
use dead_letter::DeadLetterFile;
use failure::WalFailure;
use uploader::{Uploader, UploaderSettings, UploaderStats};

/// What stops the pipeline with an error. Everything else is retried.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The WAL failed a write: it refuses further writes, so the daemon must restart (it then
    /// resumes from the durable cursor).
    #[error("the write-ahead log failed: {0}")]
    Wal(#[source] WalError),
    /// The WAL failed and the pipeline did not stop within [`failure::STOP_GRACE`] (a commit
    /// hanging on the failed disk); the process must exit without waiting for it.
    #[error("the write-ahead log failed ({0}) and the pipeline did not stop in time")]
    WalStuck(String),
    /// The dead-letter file could not be written.
    #[error("cannot write the dead-letter file {path}: {source}")]
    DeadLetter {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The stream client stopped on an error it cannot retry.
    #[error("the stream client stopped: {0}")]
    Stream(#[source] StreamError),
    /// A task of the pipeline panicked or was aborted.
    #[error("a pipeline task failed: {0}")]
    Task(String),
}

/// How the stream starts the first time (docs/opencti-protocol.md#start-position): `start_from` and
/// `recover_until`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirstStart {
    /// `CONNECTOR_LIVE_STREAM_START_TIMESTAMP`, epoch ms; `None` starts from `0-0`.
    pub start_timestamp_ms: Option<u64>,
    /// `CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE`; `None` means the time of the first start.
    pub recover_iso_date: Option<String>,
}

impl FirstStart {
    /// The position a first start (or a state reset from OpenCTI) begins at, as pycti computes it
    /// with an empty state: `(start_from, recover_until)` = (`<timestamp>-0` or `0-0`, the
    /// configured date or `now_ms` as ISO-8601).
    pub fn position(&self, now_ms: u64) -> (String, String) {
        let cursor = match self.start_timestamp_ms {
            Some(ms) => format!("{ms}-0"),
            None => "0-0".to_string(),
        };
        let recover = self
            .recover_iso_date
            .clone()
            .unwrap_or_else(|| crate::ids::iso(now_ms));
        (cursor, recover)
    }
}

/// A WAL with no stream position yet and nothing in it: the first start, or a lost volume.
pub fn is_unpositioned(wal: &Wal) -> bool {
    let state = wal.state();
    state.cursor.is_none() && state.recover_until == RecoverUntil::Unset && wal.is_new()
}

/// Seeds a new WAL with the first-start position, as pycti does on its first run: start from
/// `0-0` (or `<timestamp>-0`) and recover until now (or the configured date), both kept in the
/// WAL so every later connection sends the same recovery bound. Does nothing to a WAL that
/// already has a position. Returns whether it seeded.
pub fn seed_first_start(wal: &Wal, first: &FirstStart, now_ms: u64) -> Result<bool, WalError> {
    if !is_unpositioned(wal) {
        return Ok(false);
    }
    let state = wal.state();
    let (cursor, recover) = first.position(now_ms);
    wal.initialize(InitialState {
        cursor: Some(cursor),
        recover_until: RecoverUntil::Date(recover),
        next_file_number: state.next_file_number,
        last_sealed_ts_ms: state.last_sealed_ts_ms,
        extras: state.extras,
    })?;
    Ok(true)
}

/// Tuning of the pipeline stages.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// Sealing interval and file size.
    pub compactor: CompactorSettings,
    /// Upload naming, retries and shutdown grace.
    pub uploader: UploaderSettings,
    /// Capacity of the channel between the stream client and the committer (events).
    pub queue_size: usize,
    /// Disk budget.
    pub max_bytes: u64,
    /// Size of one dead-letter file (it rotates past it; two files at most, set aside in the
    /// disk budget): [`dead_letter::file_bytes_for_budget`].
    pub dead_letter_max_bytes: u64,
}

/// Counters of every stage, for metrics and status.
#[derive(Debug, Clone)]
pub struct PipelineStats {
    /// Stream client.
    pub stream: Arc<StreamStats>,
    /// Committer.
    pub committer: Arc<CommitterStats>,
    /// Compactor.
    pub compactor: Arc<CompactorStats>,
    /// Uploader.
    pub uploader: Arc<UploaderStats>,
    /// Disk budget (pauses, whether reading is paused).
    pub budget: Arc<Budget>,
    /// The WAL failure stopping the pipeline, if any (liveness fails from then on).
    pub wal_failure: Arc<WalFailure>,
}

impl PipelineStats {
    /// Fresh counters for a pipeline run with `settings`. Kept by the daemon across pipeline
    /// restarts (a state reset from OpenCTI) so counters never go back. The disk budget keeps
    /// room for the dead-letter files besides the WAL.
    pub fn new(settings: &PipelineSettings) -> Self {
        Self {
            stream: Arc::new(StreamStats::default()),
            committer: Arc::new(CommitterStats::default()),
            compactor: Arc::new(CompactorStats::default()),
            uploader: Arc::new(UploaderStats::default()),
            // The dead-letter files (current and rotated) are counted as set aside.
            budget: Arc::new(Budget::new(
                settings.max_bytes,
                wal::DATABASE_GROWTH_BYTES
                    .saturating_add(settings.dead_letter_max_bytes.saturating_mul(2)),
            )),
            wal_failure: Arc::new(WalFailure::default()),
        }
    }
}

/// A running pipeline.
pub struct Pipeline {
    stats: PipelineStats,
    cancel: CancellationToken,
    stream: JoinHandle<Result<(), StreamError>>,
    committer: JoinHandle<Result<(), PipelineError>>,
    compactor: JoinHandle<Result<(), PipelineError>>,
    uploader: JoinHandle<Result<(), PipelineError>>,
    wal_watch: JoinHandle<Result<(), PipelineError>>,
    budget_recheck: JoinHandle<()>,
}

impl Pipeline {
    /// Starts every stage. `cancel` stops them (in stream order); a fatal error in a stage
    /// cancels it too.
    pub fn start(
        wal: Wal,
        sink: Arc<dyn Sink>,
        stream_settings: StreamSettings,
        http: reqwest::Client,
        settings: PipelineSettings,
        cancel: CancellationToken,
    ) -> Result<Self, PipelineError> {
        let stats = PipelineStats::new(&settings);
        Self::start_with_stats(wal, sink, stream_settings, http, settings, stats, cancel)
    }

    /// [`Pipeline::start`] counting into `stats` (made by [`PipelineStats::new`] with the same
    /// settings), so the counters of an earlier run of the pipeline carry on.
    pub fn start_with_stats(
        wal: Wal,
        sink: Arc<dyn Sink>,
        stream_settings: StreamSettings,
        http: reqwest::Client,
        settings: PipelineSettings,
        stats: PipelineStats,
        cancel: CancellationToken,
    ) -> Result<Self, PipelineError> {
        let dead_letters = DeadLetterFile::open(wal.dir(), settings.dead_letter_max_bytes)
            .map_err(|source| PipelineError::DeadLetter {
                path: wal.dir().join(dead_letter::FILE_NAME),
                source,
            })?;
        let budgeted = BudgetedWal::new(wal.clone(), Arc::clone(&stats.budget));
        budgeted.refresh();
        let compactor_wake = Arc::new(Notify::new());
        let sealed = Arc::new(Notify::new());
        let (items_tx, items_rx) = mpsc::channel(settings.queue_size.max(1));
        let mut stream_settings = stream_settings;
        if stream_settings.files.missing_record.is_none() {
            stream_settings.files.missing_record =
                Some(wal.dir().join(crate::stream::missing::FILE_NAME));
        }

        // The stream stops on `cancel`; the committer stops when the stream's channel closes.
        let stream = tokio::spawn(crate::stream::run(
            stream_settings,
            http,
            items_tx,
            stats.budget.accepting(),
            cancel.clone(),
            Arc::clone(&stats.stream),
        ));
        let committer = Committer::new(
            budgeted.clone(),
            dead_letters,
            Arc::clone(&stats.committer),
            settings.compactor.max_bytes,
            Arc::clone(&compactor_wake),
        );
        let committer = spawn_stage(
            "committer",
            committer.run(items_rx),
            &stats.wal_failure,
            &cancel,
        );
        let compactor = spawn_stage(
            "compactor",
            compactor::run(
                budgeted.clone(),
                settings.compactor,
                compactor_wake,
                Arc::clone(&sealed),
                Arc::clone(&stats.compactor),
                cancel.clone(),
            ),
            &stats.wal_failure,
            &cancel,
        );
        let uploader = Uploader::new(
            budgeted.clone(),
            sink,
            settings.uploader,
            Arc::clone(&stats.uploader),
        );
        let uploader = spawn_stage(
            "uploader",
            uploader.run(sealed, cancel.clone()),
            &stats.wal_failure,
            &cancel,
        );
        let wal_watch = spawn_stage(
            "wal watch",
            failure::watch(wal.clone(), failure::WATCH_EVERY, cancel.clone()),
            &stats.wal_failure,
            &cancel,
        );
        let budget_recheck = tokio::spawn(budgeted.recheck_while_paused(cancel.clone()));
        Ok(Self {
            stats,
            cancel,
            stream,
            committer,
            compactor,
            uploader,
            wal_watch,
            budget_recheck,
        })
    }

    /// Counters of every stage.
    pub fn stats(&self) -> &PipelineStats {
        &self.stats
    }

    /// Asks every stage to stop (same as cancelling the token given to `start`).
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    /// Waits until every stage stopped. Returns the first fatal error, if any. Once the WAL
    /// failed, the stages get [`failure::STOP_GRACE`] to stop, then are left behind (a commit
    /// may hang for good on a failed disk) and the WAL's failure is returned.
    pub async fn wait(self) -> Result<(), PipelineError> {
        let failure = Arc::clone(&self.stats.wal_failure);
        let stopped = self.wait_all();
        tokio::pin!(stopped);
        tokio::select! {
            result = &mut stopped => result,
            () = async {
                failure.recorded().await;
                tokio::time::sleep(failure::STOP_GRACE).await;
            } => {
                tracing::error!(
                    grace = ?failure::STOP_GRACE,
                    "the pipeline did not stop in time after the WAL failed; leaving it"
                );
                Err(PipelineError::WalStuck(failure.reason().unwrap_or_default()))
            }
        }
    }

    async fn wait_all(self) -> Result<(), PipelineError> {
        let stream = join(self.stream).await;
        let committer = join(self.committer).await;
        let compactor = join(self.compactor).await;
        let uploader = join(self.uploader).await;
        let wal_watch = join(self.wal_watch).await;
        let budget_recheck = join(self.budget_recheck).await;
        committer??;
        compactor??;
        uploader??;
        wal_watch??;
        stream?.map_err(PipelineError::Stream)?;
        budget_recheck?;
        Ok(())
    }
}

/// Spawns one stage; an error it ends with stops the whole pipeline (see [`failure`]).
fn spawn_stage(
    stage: &'static str,
    run: impl Future<Output = Result<(), PipelineError>> + Send + 'static,
    failure: &Arc<WalFailure>,
    cancel: &CancellationToken,
) -> JoinHandle<Result<(), PipelineError>> {
    let failure = Arc::clone(failure);
    let cancel = cancel.clone();
    tokio::spawn(async move { failure::stop_on_error(stage, run.await, &failure, &cancel) })
}

async fn join<T>(handle: JoinHandle<T>) -> Result<T, PipelineError> {
    handle
        .await
        .map_err(|err| PipelineError::Task(err.to_string()))
}

/// How long an upload in flight may still run after a shutdown request: less than the 10 s
/// `docker stop` waits before SIGKILL, so the daemon exits on its own with code 0.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Compression;

    #[test]
    fn the_disk_budget_sets_the_dead_letter_files_aside() {
        let max_bytes = 1 << 30;
        let dead_letter_max_bytes = dead_letter::file_bytes_for_budget(max_bytes);
        let settings = PipelineSettings {
            compactor: CompactorSettings {
                every: Duration::from_secs(1),
                max_bytes: 1 << 20,
            },
            uploader: UploaderSettings {
                folder: String::new(),
                compression: Compression::None,
                backoff_max: Duration::from_secs(1),
                attempt_timeout: Duration::from_secs(1),
                shutdown_grace: Duration::from_secs(1),
            },
            queue_size: 1,
            max_bytes,
            dead_letter_max_bytes,
        };
        let budget = PipelineStats::new(&settings).budget;
        assert_eq!(
            budget.limit(),
            max_bytes - wal::DATABASE_GROWTH_BYTES - 2 * dead_letter_max_bytes,
            "WAL and dead letters together stay within WAL_MAX_BYTES"
        );
        assert_eq!(dead_letter_max_bytes, max_bytes / 16);
        assert_eq!(
            dead_letter::file_bytes_for_budget(1 << 40),
            dead_letter::MAX_FILE_BYTES
        );
    }
}
