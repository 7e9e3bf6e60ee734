//! Downloads of attached files from OpenCTI's `/storage/get/`
//! (docs/opencti-protocol.md#attached-files), bounded in number, size and time. Which uris may be
//! fetched is decided by [`crate::transform::files::storage_url`].
//!
//! - **Retries**: a transient failure (network error, timeout, HTTP 5xx, 408, 429) is retried with
//!   backoff and full jitter ([`Backoff`]) until [`FileSettings::retry_max`] has passed since the
//!   first attempt; every attempt's own time limit is cut to what is left of that bound, so no file
//!   holds its event longer. A permanent failure (404, 403 and other 4xx, a redirect away from
//!   OpenCTI, a file over the size limit, a refused uri) is not retried.
//! - **Circuit breaker**: once a file used up its retries, the store is taken to be down and each
//!   later file gets one attempt, until a download succeeds again; an outage of the store then
//!   costs one attempt per file instead of minutes per event.
//! - **Caps per event**: at most [`FileSettings::max_per_event`] files and
//!   [`FileSettings::max_total_bytes`] bytes are embedded; the others keep no `data`.
//! - **Memory**: downloaded files are charged to the client's [`InFlightBytes`]; a download of an
//!   event that is not the oldest one waiting waits while that count is full.
//! - **Nothing silently lost**: a file left without `data` (except an entry whose uri has no
//!   storage path, such as `unknown` with inline data) is counted, logged at most once per
//!   interval, and appended to the durable [`MissingFilesRecord`] before its event is handed on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, USER_AGENT};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::in_flight::{InFlightBytes, QueuePlace};
use super::log_limit::LogLimiter;
use super::missing::{MissingFile, MissingFilesRecord};
use super::request::{USER_AGENT_VALUE, authorization};
use super::{FileSettings, StreamSettings, StreamStats};
use crate::backoff::Backoff;
use crate::transform::files::{FileRef, RefusedUri, storage_url};

/// Longest delay between two attempts at one file.
const RETRY_DELAY_CAP: Duration = Duration::from_secs(30);

/// Why a file was not embedded.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The uri is not one we fetch.
    #[error("refused: {0}")]
    Refused(#[from] RefusedUri),
    /// Larger than the configured limit.
    #[error("larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The server answered with a non-2xx status.
    #[error("OpenCTI answered HTTP {0}")]
    Status(u16),
    /// A redirect led away from the configured OpenCTI.
    #[error("redirected away from the configured OpenCTI")]
    Redirected,
    /// Network error or timeout.
    #[error("download failed: {0}")]
    Network(String),
    /// The time limit passed.
    #[error("download took longer than {0:?}")]
    Timeout(Duration),
    /// The event has more files than the cap; this one was not downloaded.
    #[error("the event has more than {limit} files (FILES_MAX_PER_EVENT)")]
    OverEventCount {
        /// The cap.
        limit: usize,
    },
    /// The event's files together are larger than the cap.
    #[error("the event's files together are larger than {limit} bytes (FILES_MAX_TOTAL_BYTES)")]
    OverEventBytes {
        /// The cap.
        limit: u64,
    },
    /// A transient failure that lasted past the retry bound, or that met the open circuit breaker.
    #[error("{last} (gave up after {attempts} attempt(s) in {elapsed:?})")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time since the first attempt.
        elapsed: Duration,
        /// The last attempt's failure.
        last: Box<FileError>,
    },
}

impl FileError {
    /// True when another attempt may succeed: network errors, timeouts, HTTP 5xx, 408 and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Network(_) | Self::Timeout(_) => true,
            Self::Status(status) => matches!(status, 408 | 429 | 500..=599),
            _ => false,
        }
    }

    /// False only for an entry whose uri has no storage path (inline data such as `unknown`):
    /// there was never a file to fetch, so nothing is missing.
    fn is_missing_file(&self) -> bool {
        !matches!(self, Self::Refused(RefusedUri::NotStorage))
    }
}

/// The circuit breaker of the file store: open from a file that used up its retries until the
/// next successful download.
#[derive(Debug, Default)]
struct Breaker {
    open: AtomicBool,
}

impl Breaker {
    fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    fn trip(&self) -> bool {
        !self.open.swap(true, Ordering::Relaxed)
    }

    fn close(&self) -> bool {
        self.open.swap(false, Ordering::Relaxed)
    }
}

/// A redirect policy for the `reqwest::Client` used with OpenCTI: follow at most 5 redirects, and
/// only within the origin (scheme, host, port) of `base`. Build the client with it; downloads also
/// check the final URL, so a client built without it still never embeds another host's content.
pub fn redirect_policy(base: &Url) -> reqwest::redirect::Policy {
    let origin = base.origin();
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            attempt.error("too many redirects")
        } else if attempt.url().origin() == origin {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Downloads files for the transform. Cheap to clone (shared semaphore, breaker and counters).
#[derive(Debug, Clone)]
pub struct FileFetcher {
    http: reqwest::Client,
    settings: Arc<StreamSettings>,
    permits: Arc<Semaphore>,
    stats: Arc<StreamStats>,
    in_flight: Arc<InFlightBytes>,
    breaker: Arc<Breaker>,
    record: Option<Arc<MissingFilesRecord>>,
    failures_log: Arc<LogLimiter>,
}

impl FileFetcher {
    /// A fetcher running at most `settings.files.concurrency` downloads at a time, charging what
    /// it downloads to `in_flight`, recording missing files where `settings.files.missing_record`
    /// says.
    pub fn new(
        http: reqwest::Client,
        settings: Arc<StreamSettings>,
        stats: Arc<StreamStats>,
        in_flight: Arc<InFlightBytes>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(settings.files.concurrency.max(1)));
        let record = settings
            .files
            .missing_record
            .clone()
            .map(|path| Arc::new(MissingFilesRecord::new(path)));
        Self {
            http,
            settings,
            permits,
            stats,
            in_flight,
            breaker: Arc::new(Breaker::default()),
            record,
            failures_log: Arc::new(LogLimiter::new(Duration::from_secs(10))),
        }
    }

    fn files(&self) -> &FileSettings {
        &self.settings.files
    }

    /// The content of each file, in order (`None` when it is not embedded). The downloads of one
    /// event run concurrently, within the global bound; `place` says whether the event is the
    /// oldest one waiting (see [`InFlightBytes`]). Never fails as a whole: every file left
    /// without content is recorded (see the module documentation) before this returns.
    pub async fn fetch_all(
        &self,
        event_id: &str,
        files: &[FileRef],
        place: QueuePlace,
    ) -> Vec<Option<Bytes>> {
        let bytes_left = AtomicU64::new(self.files().max_total_bytes);
        let mut fetchable = 0usize;
        let planned: Vec<Option<(&str, Result<Url, FileError>)>> = files
            .iter()
            .map(|file| {
                let uri = file.uri.as_deref()?;
                let url = match storage_url(&self.settings.base_url, uri) {
                    Ok(_) if fetchable >= self.files().max_per_event => {
                        Err(FileError::OverEventCount {
                            limit: self.files().max_per_event,
                        })
                    }
                    Ok(url) => {
                        fetchable += 1;
                        Ok(url)
                    }
                    Err(refused) => Err(refused.into()),
                };
                Some((uri, url))
            })
            .collect();
        let downloads = planned.into_iter().map(|plan| {
            let bytes_left = &bytes_left;
            let mut place = place.clone();
            async move {
                let (uri, url) = plan?;
                let result = match url {
                    Ok(url) => self.fetch_with_retries(url, bytes_left, &mut place).await,
                    Err(error) => Err(error),
                };
                Some((uri, result))
            }
        });
        let outcomes = futures::future::join_all(downloads).await;
        let mut missing = Vec::new();
        let contents = outcomes
            .into_iter()
            .map(|outcome| {
                let (uri, result) = outcome?;
                match result {
                    Ok(content) => {
                        self.stats.files_ok.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .file_bytes
                            .fetch_add(content.len() as u64, Ordering::Relaxed);
                        Some(content)
                    }
                    Err(error) => {
                        self.count_failure(event_id, uri, &error);
                        if error.is_missing_file() {
                            missing.push(MissingFile {
                                event_id: event_id.to_owned(),
                                uri: uri.to_owned(),
                                reason: error.to_string(),
                            });
                        }
                        None
                    }
                }
            })
            .collect();
        self.record_missing(missing).await;
        contents
    }

    fn count_failure(&self, event_id: &str, uri: &str, error: &FileError) {
        let counter = match error {
            FileError::Refused(_) => &self.stats.files_refused,
            FileError::TooLarge { .. }
            | FileError::OverEventBytes { .. }
            | FileError::OverEventCount { .. } => &self.stats.files_too_large,
            _ => &self.stats.files_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.failures_log.allow() {
            let record = self
                .record
                .as_ref()
                .filter(|_| error.is_missing_file())
                .map(|record| record.path().display().to_string());
            tracing::warn!(
                event_id,
                uri,
                %error,
                suppressed,
                missing_files_record = record.as_deref().unwrap_or("(not recorded)"),
                "file not embedded in the exported event (its entry has no `data`)"
            );
        }
    }

    /// Appends `missing` to the record, off the async workers, and counts them.
    async fn record_missing(&self, missing: Vec<MissingFile>) {
        if missing.is_empty() {
            return;
        }
        self.stats
            .files_missing
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        let Some(record) = self.record.clone() else {
            return;
        };
        let now = crate::ids::now_ms();
        let written = tokio::task::spawn_blocking(move || {
            let result = record.append(&missing, now);
            (record, missing, result)
        })
        .await;
        match written {
            Ok((_, _, Ok(()))) => {}
            Ok((record, missing, Err(error))) => {
                self.stats
                    .files_missing_unrecorded
                    .fetch_add(missing.len() as u64, Ordering::Relaxed);
                for entry in &missing {
                    tracing::error!(
                        event_id = entry.event_id.as_str(),
                        uri = entry.uri.as_str(),
                        reason = entry.reason.as_str(),
                        file = %record.path().display(),
                        %error,
                        "cannot write the missing-files record: this file is missing from the export and recorded only in this log"
                    );
                }
            }
            Err(error) => {
                tracing::error!(%error, "the missing-files record writer failed");
            }
        }
    }

    /// Downloads one file, retrying transient failures within [`FileSettings::retry_max`] (one
    /// attempt only while the breaker is open).
    async fn fetch_with_retries(
        &self,
        url: Url,
        bytes_left: &AtomicU64,
        place: &mut QueuePlace,
    ) -> Result<Bytes, FileError> {
        let started = Instant::now();
        let deadline = started + self.files().retry_max;
        let mut backoff = Backoff::new(self.files().retry_backoff_base, RETRY_DELAY_CAP);
        let mut attempts = 0u32;
        loop {
            place.wait_for_room(&self.in_flight).await;
            let left = deadline.saturating_duration_since(Instant::now());
            let error = if left.is_zero() {
                FileError::Timeout(self.files().retry_max)
            } else {
                attempts += 1;
                match self.attempt(url.clone(), bytes_left, left).await {
                    Ok(content) => {
                        if self.breaker.close() {
                            tracing::info!(
                                "the OpenCTI file store answers again: failed downloads are retried again"
                            );
                        }
                        return Ok(content);
                    }
                    Err(error) if !error.is_transient() => return Err(error),
                    Err(error) => error,
                }
            };
            let delay = backoff.next_delay();
            let give_up = self.breaker.is_open() || Instant::now() + delay >= deadline;
            if give_up {
                if self.breaker.trip() {
                    tracing::warn!(
                        retry_max = ?self.files().retry_max,
                        "the OpenCTI file store keeps failing: each file gets one attempt until a download succeeds again"
                    );
                }
                return Err(FileError::GaveUp {
                    attempts,
                    elapsed: started.elapsed(),
                    last: Box::new(error),
                });
            }
            self.stats.file_retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%error, ?delay, attempts, "file download failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt, within the download concurrency bound and `time_left`.
    async fn attempt(
        &self,
        url: Url,
        bytes_left: &AtomicU64,
        time_left: Duration,
    ) -> Result<Bytes, FileError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| FileError::Network("download limiter closed".to_owned()))?;
        let timeout = self.files().timeout.min(time_left);
        let content = tokio::time::timeout(timeout, self.download(url, bytes_left))
            .await
            .map_err(|_| FileError::Timeout(timeout))??;
        let length = content.len() as u64;
        bytes_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(length)
            })
            .map_err(|_| FileError::OverEventBytes {
                limit: self.files().max_total_bytes,
            })?;
        Ok(self.in_flight.charge(content))
    }

    /// Downloads one file (no retry). Refuses redirects to another origin and bodies over the
    /// limits (checked on `Content-Length` first, then while reading).
    async fn download(&self, url: Url, bytes_left: &AtomicU64) -> Result<Bytes, FileError> {
        let limit = self.files().max_file_bytes;
        let over = |length: u64| {
            if length > limit {
                Some(FileError::TooLarge { limit })
            } else if length > bytes_left.load(Ordering::Relaxed) {
                Some(FileError::OverEventBytes {
                    limit: self.files().max_total_bytes,
                })
            } else {
                None
            }
        };
        let mut request = self.http.get(url).header(USER_AGENT, USER_AGENT_VALUE);
        if let Ok(Some(value)) = authorization(&self.settings) {
            request = request.header(AUTHORIZATION, value);
        }
        let response = request
            .send()
            .await
            .map_err(|error| FileError::Network(super::client::network_detail(error)))?;
        if response.url().origin() != self.settings.base_url.origin() {
            return Err(FileError::Redirected);
        }
        if !response.status().is_success() {
            return Err(FileError::Status(response.status().as_u16()));
        }
        if let Some(error) = response.content_length().and_then(over) {
            return Err(error);
        }
        let mut body = BytesMut::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk =
                chunk.map_err(|error| FileError::Network(super::client::network_detail(error)))?;
            if let Some(error) = over((body.len() + chunk.len()) as u64) {
                return Err(error);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}
