//! Downloads of attached files from OpenCTI's `/storage/get/` (reference §4.2), bounded in number,
//! size and time. Which uris may be fetched is decided by [`crate::transform::files::storage_url`];
//! a refused, failed or oversized download yields `None` (the entry keeps no `data`), is counted in
//! [`StreamStats`] and logged at most once per interval.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, USER_AGENT};
use tokio::sync::Semaphore;

use super::log_limit::LogLimiter;
use super::request::{USER_AGENT_VALUE, authorization};
use super::{StreamSettings, StreamStats};
use crate::transform::files::{FileRef, RefusedUri, storage_url};

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

/// Downloads files for the transform. Cheap to clone (shared semaphore and counters).
#[derive(Debug, Clone)]
pub struct FileFetcher {
    http: reqwest::Client,
    settings: Arc<StreamSettings>,
    permits: Arc<Semaphore>,
    stats: Arc<StreamStats>,
    failures_log: Arc<LogLimiter>,
}

impl FileFetcher {
    /// A fetcher running at most `settings.files.concurrency` downloads at a time.
    pub fn new(
        http: reqwest::Client,
        settings: Arc<StreamSettings>,
        stats: Arc<StreamStats>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(settings.files.concurrency.max(1)));
        Self {
            http,
            settings,
            permits,
            stats,
            failures_log: Arc::new(LogLimiter::new(Duration::from_secs(10))),
        }
    }

    /// The content of each file, in order (`None` when it is not embedded). The downloads of one
    /// event run concurrently, within the global bound. Never fails as a whole.
    pub async fn fetch_all(&self, event_id: &str, files: &[FileRef]) -> Vec<Option<Bytes>> {
        let downloads = files.iter().map(|file| async move {
            let uri = file.uri.as_deref()?;
            match self.fetch(uri).await {
                Ok(content) => {
                    self.stats
                        .files_ok
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.stats
                        .file_bytes
                        .fetch_add(content.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    Some(content)
                }
                Err(error) => {
                    self.record_failure(event_id, uri, &error);
                    None
                }
            }
        });
        futures::future::join_all(downloads).await
    }

    fn record_failure(&self, event_id: &str, uri: &str, error: &FileError) {
        use std::sync::atomic::Ordering::Relaxed;
        let counter = match error {
            FileError::Refused(_) => &self.stats.files_refused,
            FileError::TooLarge { .. } => &self.stats.files_too_large,
            _ => &self.stats.files_failed,
        };
        counter.fetch_add(1, Relaxed);
        if let Some(suppressed) = self.failures_log.allow() {
            tracing::warn!(
                event_id,
                uri,
                %error,
                suppressed,
                "file not embedded in the exported event (its entry has no `data`)"
            );
        }
    }

    /// Downloads one file. Refuses uris outside `/storage/get/`, redirects to another origin and
    /// bodies over the limit (checked on `Content-Length` first, then while reading).
    pub async fn fetch(&self, uri: &str) -> Result<Bytes, FileError> {
        let url = storage_url(&self.settings.base_url, uri)?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| FileError::Network("download limiter closed".to_owned()))?;
        let timeout = self.settings.files.timeout;
        tokio::time::timeout(timeout, self.download(url))
            .await
            .map_err(|_| FileError::Timeout(timeout))?
    }

    async fn download(&self, url: Url) -> Result<Bytes, FileError> {
        let limit = self.settings.files.max_file_bytes;
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
        if response
            .content_length()
            .is_some_and(|length| length > limit)
        {
            return Err(FileError::TooLarge { limit });
        }
        let mut body = BytesMut::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk =
                chunk.map_err(|error| FileError::Network(super::client::network_detail(error)))?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(FileError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}
