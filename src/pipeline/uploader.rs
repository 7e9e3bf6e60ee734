//! The uploader: drains sealed segments to the sink strictly in order, one at a time —
//! docs/architecture.md#invariant-3, "gapless, ordered files", and invariant 4, "no replay from
//! OpenCTI because of S3".
//!
//! - File N+1 is never sent before file N's upload succeeded: the uploader only ever works on
//!   the oldest sealed segment.
//! - It retries forever, with exponential backoff and full jitter, whatever the failure; the
//!   stream keeps ingesting into the WAL meanwhile, so an outage of any length costs disk space
//!   only. Failures are logged once per change of kind (auth, network, throttled, ...), not per
//!   attempt.
//! - A segment is marked done (entry removed, then file deleted) only after its upload
//!   succeeded. A crash in between uploads it again after the restart: same key, same bytes
//!   (the segment file is immutable and its name comes from its number and seal timestamp).
//! - The plain upload streams the segment through its zstd decoder and checksum check; a
//!   segment whose checksum fails is never completed on the sink, and is reported (logs,
//!   status, readiness) while ingestion goes on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wal::{SegmentMeta, WalError};

use super::PipelineError;
use crate::backoff::Backoff;
use crate::backoff::sleep_or_cancel;
use crate::budget::BudgetedWal;
use crate::histogram::{Histogram, Seconds};
use crate::ids::now_ms;
use crate::sink::{BodySource, Compression, Sink, SinkError, SinkErrorKind, object_key};

/// How files are named and encoded.
#[derive(Debug, Clone)]
pub struct UploaderSettings {
    /// Key prefix.
    pub folder: String,
    /// Object encoding.
    pub compression: Compression,
    /// Longest delay between attempts.
    pub backoff_max: Duration,
    /// Time limit of one attempt.
    pub attempt_timeout: Duration,
    /// On shutdown, how long an upload in flight may still take before it is abandoned.
    pub shutdown_grace: Duration,
}

/// Counters of the uploader, read by metrics and status.
#[derive(Debug, Default)]
pub struct UploaderStats {
    /// Files uploaded (the stock `written_files_total`).
    pub uploaded: AtomicU64,
    /// Failed attempts (the stock `write_errors_total`).
    pub failures: AtomicU64,
    /// Raw bytes of the files uploaded.
    pub bytes: AtomicU64,
    /// Duration of the last successful upload, milliseconds.
    pub last_upload_ms: AtomicU64,
    /// Total time spent in successful uploads, milliseconds.
    pub upload_ms_total: AtomicU64,
    /// Duration of each successful upload (the attempt that succeeded).
    pub duration: Histogram<Seconds>,
    /// The kind of the last failure while it persists, for status and readiness.
    pub failing: Mutex<Option<String>>,
    /// A segment that cannot be read back (missing or failing its checksum), with the reason.
    pub damaged: Mutex<Option<String>>,
    /// Whether the destination was prepared (bucket exists or was created).
    pub prepared: AtomicBool,
    /// Why uploads are held (a destination ahead of this WAL's numbering), while they are.
    pub held: Mutex<Option<String>>,
    /// Notified after each file uploaded (the OpenCTI API task pings the new state soon after).
    pub uploaded_signal: Arc<Notify>,
}

impl UploaderStats {
    fn set_failing(&self, value: Option<String>) {
        *self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }

    fn set_damaged(&self, value: Option<String>) {
        *self
            .damaged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }

    fn set_held(&self, value: Option<String>) {
        *self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = value;
    }

    /// Why uploads are held, while they are.
    pub fn held(&self) -> Option<String> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The failure in progress, if uploads are failing.
    pub fn failing(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The damaged segment blocking uploads, if any.
    pub fn damaged(&self) -> Option<String> {
        self.damaged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Why one attempt failed.
enum AttemptError {
    Sink(SinkError),
    Segment(WalError),
    TimedOut,
}

impl AttemptError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Sink(err) => err.kind.as_str(),
            Self::Segment(_) => "damaged_segment",
            Self::TimedOut => "timeout",
        }
    }
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sink(err) => write!(f, "{err}"),
            Self::Segment(err) => write!(f, "{err}"),
            Self::TimedOut => f.write_str("the upload attempt took longer than UPLOAD_TIMEOUT_SEC"),
        }
    }
}

/// The uploader task. Build with [`Uploader::new`], run with [`Uploader::run`].
pub struct Uploader {
    wal: BudgetedWal,
    sink: Arc<dyn Sink>,
    settings: UploaderSettings,
    stats: Arc<UploaderStats>,
}

impl Uploader {
    /// An uploader draining `wal` into `sink`.
    pub fn new(
        wal: BudgetedWal,
        sink: Arc<dyn Sink>,
        settings: UploaderSettings,
        stats: Arc<UploaderStats>,
    ) -> Self {
        Self {
            wal,
            sink,
            settings,
            stats,
        }
    }

    /// Uploads until `cancel` fires. `sealed` is notified when a new segment is ready. An upload
    /// in flight when `cancel` fires gets `shutdown_grace` to finish, then is abandoned (it is
    /// sent again after the restart). Returns an error, which stops the pipeline, only when the
    /// WAL refuses writes or reads ([`WalError::refuses_writes`]): a segment it cannot read
    /// because the disk failed, an upload it cannot record.
    pub async fn run(
        self,
        sealed: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Result<(), PipelineError> {
        let mut backoff = Backoff::new(Duration::from_millis(250), self.settings.backoff_max);
        let mut last_kind: Option<&'static str> = None;
        if !self.prepare(&mut backoff, &cancel).await {
            return Ok(());
        }
        if !self.check_adopted_destination(&cancel).await {
            return Ok(());
        }
        while !cancel.is_cancelled() {
            let Some(segment) = self.wal.wal().segments().into_iter().next() else {
                tokio::select! {
                    _ = sealed.notified() => continue,
                    _ = cancel.cancelled() => return Ok(()),
                }
            };
            let key = object_key(
                &self.settings.folder,
                segment.ts_ms,
                segment.number,
                self.settings.compression,
            );
            let started = Instant::now();
            let outcome = self.attempt(&segment, &key, &cancel).await;
            match outcome {
                Ok(()) => {
                    if let Some(kind) = last_kind.take() {
                        tracing::info!(previous_failure = kind, "uploads work again");
                    }
                    backoff.reset();
                    self.stats.set_failing(None);
                    self.stats.set_damaged(None);
                    self.mark_done(&segment, &key, started.elapsed()).await?;
                }
                Err(None) => return Ok(()), // cancelled while the upload was abandoned
                Err(Some(AttemptError::Segment(err))) if err.refuses_writes() => {
                    return Err(PipelineError::Wal(err));
                }
                Err(Some(err)) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let kind = err.kind();
                    let delay = backoff.next_delay();
                    if last_kind != Some(kind) {
                        last_kind = Some(kind);
                        self.log_failure(&segment, &key, &err, delay);
                    } else {
                        tracing::debug!(key = %key, error = %err, retry_in = ?delay, "upload failed again");
                    }
                    match &err {
                        AttemptError::Segment(_) => self.stats.set_damaged(Some(err.to_string())),
                        _ => self.stats.set_failing(Some(kind.to_string())),
                    }
                    if matches!(&err, AttemptError::Sink(e) if e.kind == SinkErrorKind::NoSuchBucket)
                        && !self.prepare(&mut backoff, &cancel).await
                    {
                        return Ok(());
                    }
                    if sleep_or_cancel(delay, &cancel).await {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// When adoption could not list the destination (`crate::adopt`), checks it before the first
    /// upload, retrying until it answers; holds uploads while it holds a file number at or above
    /// this WAL's first one. Returns false if cancelled.
    async fn check_adopted_destination(&self, cancel: &CancellationToken) -> bool {
        use crate::pipeline::adopt::{DESTINATION_UNCHECKED_EXTRA, check_before_first_upload};
        let mut backoff = Backoff::new(Duration::from_secs(1), self.settings.backoff_max);
        let mut logged: Option<String> = None;
        while self
            .wal
            .wal()
            .state()
            .extras
            .contains_key(DESTINATION_UNCHECKED_EXTRA)
        {
            let first_ours = self
                .wal
                .wal()
                .segments()
                .first()
                .map_or(self.wal.wal().state().next_file_number, |segment| {
                    segment.number
                });
            let problem = match check_before_first_upload(
                self.sink.as_ref(),
                &self.settings.folder,
                first_ours,
            )
            .await
            {
                Ok(None) => {
                    let done = self
                        .wal
                        .change_state(vec![wal::StateChange::RemoveExtra {
                            key: DESTINATION_UNCHECKED_EXTRA.to_string(),
                        }])
                        .await;
                    match done {
                        Ok(_) => {
                            self.stats.set_held(None);
                            tracing::info!(
                                destination = %self.sink.describe(),
                                first_file = first_ours,
                                "the destination holds no file at or above this WAL's first: \
                                 uploads start"
                            );
                            return true;
                        }
                        Err(error) => format!("recording the destination check: {error}"),
                    }
                }
                Ok(Some(reason)) => {
                    self.stats.set_held(Some(reason.clone()));
                    reason
                }
                Err(error) => {
                    self.stats
                        .set_failing(Some(error.kind.as_str().to_string()));
                    format!("listing the destination to check its numbering: {error}")
                }
            };
            let delay = backoff.next_delay();
            if logged.as_deref() != Some(problem.as_str()) {
                tracing::error!(
                    destination = %self.sink.describe(),
                    problem = %problem,
                    retry_in = ?delay,
                    "uploads are held until the destination is checked; ingestion goes on"
                );
                logged = Some(problem);
            }
            if sleep_or_cancel(delay, cancel).await {
                return false;
            }
        }
        true
    }

    /// Makes sure the destination exists, retrying until it does. Returns false if cancelled.
    async fn prepare(&self, backoff: &mut Backoff, cancel: &CancellationToken) -> bool {
        let mut last_kind = None;
        loop {
            match self.sink.prepare().await {
                Ok(()) => {
                    self.stats.prepared.store(true, Ordering::Relaxed);
                    return true;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    if last_kind != Some(err.kind) {
                        last_kind = Some(err.kind);
                        tracing::warn!(
                            destination = %self.sink.describe(),
                            error = %err,
                            retry_in = ?delay,
                            "cannot prepare the destination; ingestion goes on into the WAL"
                        );
                    }
                    self.stats.set_failing(Some(err.kind.as_str().to_string()));
                    if sleep_or_cancel(delay, cancel).await {
                        return false;
                    }
                }
            }
        }
    }

    /// One upload attempt. `Err(None)` means it was abandoned because of shutdown.
    async fn attempt(
        &self,
        segment: &SegmentMeta,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<(), Option<AttemptError>> {
        let body = self
            .body(segment)
            .map_err(|e| Some(AttemptError::Segment(e)))?;
        let put = tokio::time::timeout(self.settings.attempt_timeout, self.sink.put(key, &body));
        tokio::pin!(put);
        let result = tokio::select! {
            result = &mut put => result,
            _ = cancel.cancelled() => {
                tracing::info!(
                    key,
                    grace = ?self.settings.shutdown_grace,
                    "shutting down: letting the upload in flight finish"
                );
                match tokio::time::timeout(self.settings.shutdown_grace, &mut put).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(key, "upload abandoned at shutdown; it is sent again after the restart");
                        return Err(None);
                    }
                }
            }
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                // A body that fails its checksum while streaming: is the segment damaged?
                if err.kind == SinkErrorKind::Integrity
                    && let Err(damage) = self.verify_segment(segment.number).await
                {
                    return Err(Some(AttemptError::Segment(damage)));
                }
                Err(Some(AttemptError::Sink(err)))
            }
            Err(_) => Err(Some(AttemptError::TimedOut)),
        }
    }

    /// The body of `segment` as the configured encoding wants it, re-openable for retries.
    fn body(&self, segment: &SegmentMeta) -> Result<BodySource, WalError> {
        let wal = self.wal.wal().clone();
        let number = segment.number;
        let stored = self.settings.compression == Compression::Zstd;
        let open = move || -> Result<Box<dyn std::io::Read + Send>, WalError> {
            Ok(if stored {
                Box::new(wal.open_segment_stored(number)?)
            } else {
                Box::new(wal.open_segment(number)?)
            })
        };
        // Opening checks that the file is there; the reader checks size and checksum at EOF (so
        // the sink need not hash the bytes again).
        drop(open()?);
        let (bytes, checksum) = if stored {
            (segment.stored_bytes, segment.stored_checksum)
        } else {
            (segment.raw_bytes, segment.raw_checksum)
        };
        Ok(BodySource::self_checking(bytes, checksum, move || {
            open().map_err(std::io::Error::other)
        }))
    }

    /// Reads a segment through to check its checksum (after an integrity failure).
    async fn verify_segment(&self, number: u64) -> Result<(), WalError> {
        let wal = self.wal.wal().clone();
        let check = tokio::task::spawn_blocking(move || -> Result<(), WalError> {
            let mut reader = wal.open_segment(number)?;
            std::io::copy(&mut reader, &mut std::io::sink()).map_err(|source| WalError::Io {
                action: "reading segment back to check its checksum",
                path: wal.segment_path(number),
                source,
            })?;
            Ok(())
        });
        match check.await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }

    /// Marks `segment` uploaded. Fails when the WAL cannot record it (fatal for the pipeline).
    async fn mark_done(
        &self,
        segment: &SegmentMeta,
        key: &str,
        took: Duration,
    ) -> Result<(), PipelineError> {
        let wal = self.wal.clone();
        let number = segment.number;
        let marked = tokio::task::spawn_blocking(move || {
            let marked = wal.mark_uploaded(number, now_ms());
            // The upload's buffers and contexts were just freed.
            crate::allocator::release_free_memory();
            marked
        })
        .await;
        match marked {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::error!(file_number = number, error = %err, "cannot record an upload in the WAL");
                return Err(PipelineError::Wal(err));
            }
            Err(join) => {
                tracing::error!(file_number = number, error = %join, "recording an upload failed");
                return Err(PipelineError::Task(join.to_string()));
            }
        }
        let millis = took.as_millis() as u64;
        self.stats.uploaded.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(segment.raw_bytes, Ordering::Relaxed);
        self.stats.last_upload_ms.store(millis, Ordering::Relaxed);
        self.stats
            .upload_ms_total
            .fetch_add(millis, Ordering::Relaxed);
        self.stats.duration.observe(took.as_secs_f64());
        self.stats.uploaded_signal.notify_one();
        tracing::info!(
            key,
            file_number = number,
            events = segment.records,
            bytes = segment.raw_bytes,
            took_ms = millis,
            "uploaded"
        );
        Ok(())
    }

    fn log_failure(&self, segment: &SegmentMeta, key: &str, err: &AttemptError, delay: Duration) {
        let hint = match err {
            AttemptError::Sink(e) => match e.kind {
                SinkErrorKind::Auth => {
                    "check MINIO_ACCESS_KEY / MINIO_SECRET_KEY and the bucket policy"
                }
                SinkErrorKind::NoSuchBucket => "the bucket is missing; creating it again",
                SinkErrorKind::Throttled => "the server asks to slow down",
                SinkErrorKind::Network | SinkErrorKind::Timeout => {
                    "the server is unreachable; events are kept in the WAL meanwhile"
                }
                SinkErrorKind::Tls => "check MINIO_SECURE, MINIO_CERT_CHECK and MINIO_CA_FILE",
                _ => "retrying",
            },
            AttemptError::Segment(_) => {
                "the local segment is damaged and cannot be uploaded; see the README, operations"
            }
            AttemptError::TimedOut => "the server is too slow or hanging",
        };
        tracing::warn!(
            destination = %self.sink.describe(),
            key,
            file_number = segment.number,
            kind = err.kind(),
            error = %err,
            retry_in = ?delay,
            hint,
            "upload failed; retrying until it works"
        );
    }
}
