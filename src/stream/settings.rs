//! What the stream client needs to know, decided by the configuration (the lead's `config`).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use crate::secret::Secret;
use crate::transform::TransformOptions;

/// Settings of the stream client. Build with [`StreamSettings::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// `OPENCTI_URL`, without trailing `/` (see [`StreamSettings::new`]).
    pub base_url: Url,
    /// `OPENCTI_TOKEN`, sent as `authorization: Bearer …` to the stream and to `/storage/get`. An
    /// empty token sends no `authorization` header (public streams).
    pub token: Secret,
    /// `CONNECTOR_LIVE_STREAM_ID`; `None` connects to the raw `/stream` (logged as a warning).
    pub live_stream_id: Option<String>,
    /// `CONNECTOR_LIVE_STREAM_LISTEN_DELETE` (pycti default true), header `listen-delete`.
    pub listen_delete: bool,
    /// `CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES` (pycti default true), header `no-dependencies`.
    pub no_dependencies: bool,
    /// `CONNECTOR_LIVE_STREAM_WITH_INFERENCES` (default false), header `with-inferences`.
    pub with_inferences: bool,
    /// First delay ceiling of the reconnection backoff (full jitter). Default 1 s.
    pub backoff_base: Duration,
    /// Largest delay between two connection attempts. Default 60 s.
    pub backoff_cap: Duration,
    /// Reconnect when no event carrying an id arrived for this long (OpenCTI sends a heartbeat
    /// every 5 s). Also bounds the wait for the response headers. Default 45 s.
    pub idle_timeout: Duration,
    /// Largest event accepted; a larger one is dead-lettered by id. Default 64 MiB.
    pub max_event_bytes: usize,
    /// Bytes held between reading the stream and the WAL: events waiting for their files, their
    /// downloaded files, and lines in the pipeline's channel until the WAL has them. Reading stops
    /// while it is reached (see [`super::in_flight`]). Default 256 MiB.
    pub max_bytes_in_flight: u64,
    /// How files are downloaded and embedded.
    pub files: FileSettings,
}

/// Settings of file downloads from `/storage/get` (docs/opencti-protocol.md#attached-files).
#[derive(Debug, Clone)]
pub struct FileSettings {
    /// Downloads running at the same time, over all events. Default 4.
    pub concurrency: usize,
    /// Events read ahead of the oldest one still waiting for its files (lines keep arrival order,
    /// so this bounds memory and how far reading runs ahead). Default 64.
    pub max_events_in_flight: usize,
    /// Larger files are skipped with a warning (`data` omitted). Default 32 MiB.
    pub max_file_bytes: u64,
    /// Time limit of one download attempt, body included. Default 300 s, as pycti.
    pub timeout: Duration,
    /// Time limit of all the attempts at one file, each attempt's time limit and the delays
    /// between them included: transient failures (network, timeout, 5xx, 429) are retried with
    /// backoff until it passes. Default 180 s.
    pub retry_max: Duration,
    /// First delay ceiling of the retry backoff (full jitter). Default 1 s.
    pub retry_backoff_base: Duration,
    /// Files downloaded per event; the entries after them keep no `data` and are recorded as
    /// missing. Default 100.
    pub max_per_event: usize,
    /// Bytes of files embedded per event; a file that would go past it keeps no `data` and is
    /// recorded as missing. Default 128 MiB.
    pub max_total_bytes: u64,
    /// The durable record of files that could not be embedded ([`super::missing`]); `None`
    /// records nothing (the pipeline sets it next to the WAL).
    pub missing_record: Option<PathBuf>,
    /// Transform options (keep or drop the top-level `data.files` copy).
    pub transform: TransformOptions,
}

impl Default for FileSettings {
    fn default() -> Self {
        Self {
            concurrency: 4,
            max_events_in_flight: 64,
            max_file_bytes: 32 * 1024 * 1024,
            timeout: Duration::from_secs(300),
            retry_max: Duration::from_secs(180),
            retry_backoff_base: Duration::from_secs(1),
            max_per_event: 100,
            max_total_bytes: 128 * 1024 * 1024,
            missing_record: None,
            transform: TransformOptions::default(),
        }
    }
}

impl StreamSettings {
    /// Settings with the defaults above (pycti's for the stream headers). A trailing `/` of
    /// `base_url`'s path is removed, as pycti 7 does, so `{base}/stream` never has `//`.
    pub fn new(mut base_url: Url, token: Secret, live_stream_id: Option<String>) -> Self {
        let trimmed = base_url.path().trim_end_matches('/').to_owned();
        base_url.set_path(&trimmed);
        base_url.set_query(None);
        base_url.set_fragment(None);
        Self {
            base_url,
            token,
            live_stream_id: live_stream_id.filter(|id| !id.is_empty()),
            listen_delete: true,
            no_dependencies: true,
            with_inferences: false,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(45),
            max_event_bytes: 64 * 1024 * 1024,
            max_bytes_in_flight: 256 * 1024 * 1024,
            files: FileSettings::default(),
        }
    }
}
