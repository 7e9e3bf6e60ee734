//! A failed WAL ends the pipeline, whichever stage meets it first.
//!
//! Once the WAL refuses writes ([`wal::WalError::refuses_writes`]: a failed fsync or flush, an I/O
//! error of the disk) nothing the pipeline does can succeed until the process reopens the WAL,
//! which recovers to the last durable commit. So the first stage that meets such an error
//! records it here and cancels the pipeline; the daemon then exits non-zero for Docker or
//! systemd to restart it, and `/healthz` answers 503 from the moment it is recorded. The
//! committer meets it when an event arrives, the compactor when it seals, the uploader when it
//! reads a segment or records an upload, and [`watch`] when nothing happens at all (a quiet
//! stream, reading paused by the disk budget) but a commit of the WAL's own failed.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use wal::{Wal, WalError};

use super::PipelineError;

/// How often [`watch`] looks at the WAL.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How long the stages may take to stop once the WAL failed: a failed disk can leave a commit
/// hanging for good (the store waits for a write that never completes), and nothing may wait
/// for it.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The WAL failure that is stopping the pipeline, if any. Set once, never cleared (the process
/// exits).
#[derive(Debug)]
pub struct WalFailure {
    reason: Mutex<Option<String>>,
    recorded: watch::Sender<bool>,
}

impl Default for WalFailure {
    fn default() -> Self {
        Self {
            reason: Mutex::new(None),
            recorded: watch::Sender::new(false),
        }
    }
}

impl WalFailure {
    /// Records `error` (the first one recorded is kept).
    pub fn record(&self, error: &WalError) {
        let mut reason = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if reason.is_none() {
            *reason = Some(error.to_string());
        }
        self.recorded.send_replace(true);
    }

    /// Resolves once a failure is recorded.
    pub async fn recorded(&self) {
        let mut recorded = self.recorded.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = recorded.wait_for(|recorded| *recorded).await;
    }

    /// The recorded failure, if any.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Passes a stage's `result` through; when it is an error, logs it, records it in `failure` if
/// the WAL failed, and cancels the pipeline.
pub fn stop_on_error(
    stage: &'static str,
    result: Result<(), PipelineError>,
    failure: &WalFailure,
    cancel: &CancellationToken,
) -> Result<(), PipelineError> {
    if let Err(error) = &result {
        if let PipelineError::Wal(wal_error) = error {
            failure.record(wal_error);
        }
        tracing::error!(
            stage,
            error = %error,
            "stopping: the process exits to be restarted, and resumes from the last durable \
             position"
        );
        cancel.cancel();
    }
    result
}

/// Looks at the WAL every `every` until `cancel` fires; fails as soon as the WAL refuses writes
/// (a commit failed), even if no stage is writing.
pub async fn watch(
    wal: Wal,
    every: Duration,
    cancel: CancellationToken,
) -> Result<(), PipelineError> {
    loop {
        if let Some(cause) = wal.failure() {
            return Err(PipelineError::Wal(WalError::Poisoned { cause }));
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => return Ok(()),
        }
    }
}
