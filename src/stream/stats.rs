//! Counters and gauges of the stream client, read by the metrics endpoint and `status`.
//!
//! Plain atomics (relaxed: each value is independent) plus two small mutex-guarded snapshots that
//! change every few seconds at most. Updating a counter costs one uncontended atomic add.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Deserialize;

use crate::transform::{Action, PerAction};

/// Why a connection ended or failed (one counter each in [`StreamStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectReason {
    /// The server closed the stream.
    Eof,
    /// Connecting or reading failed (refused, reset, TLS, timeout of the headers).
    Network,
    /// HTTP 401 or 403 (bad token, unknown or restricted stream,
    /// docs/opencti-protocol.md#auth-and-errors).
    Unauthorized,
    /// HTTP 410 (stream stopped).
    Gone,
    /// HTTP 429 (rate limited).
    TooManyRequests,
    /// Any other 4xx.
    ClientError,
    /// Any 5xx.
    ServerError,
    /// Any other non-2xx status (1xx, 3xx: redirects we refuse to follow).
    OtherStatus,
    /// No event with an id for the idle timeout.
    Idle,
    /// A 2xx answer that is not `text/event-stream`.
    Malformed,
    /// The pipeline stopped accepting (disk budget): the connection was dropped on purpose.
    Paused,
}

impl ReconnectReason {
    /// The reason for a non-2xx HTTP status.
    pub fn from_status(status: u16) -> Self {
        match status {
            401 | 403 => Self::Unauthorized,
            410 => Self::Gone,
            429 => Self::TooManyRequests,
            400..=499 => Self::ClientError,
            500..=599 => Self::ServerError,
            _ => Self::OtherStatus,
        }
    }

    /// A short label, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eof => "eof",
            Self::Network => "network",
            Self::Unauthorized => "http_401",
            Self::Gone => "http_410",
            Self::TooManyRequests => "http_429",
            Self::ClientError => "http_4xx",
            Self::ServerError => "http_5xx",
            Self::OtherStatus => "http_other",
            Self::Idle => "idle",
            Self::Malformed => "malformed",
            Self::Paused => "paused",
        }
    }

    /// Every reason, in a fixed order (for exporting all counters).
    pub const ALL: [Self; 11] = [
        Self::Eof,
        Self::Network,
        Self::Unauthorized,
        Self::Gone,
        Self::TooManyRequests,
        Self::ClientError,
        Self::ServerError,
        Self::OtherStatus,
        Self::Idle,
        Self::Malformed,
        Self::Paused,
    ];
}

/// The last `consumer_metrics` event (SSE-CM, docs/opencti-protocol.md#sse-framing), as sent by the
/// server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerMetrics {
    /// Events delivered per second to this consumer.
    pub delivery_rate: f64,
    /// Events processed per second.
    pub processing_rate: f64,
    /// Dependency resolutions per second.
    pub resolution_rate: f64,
    /// Events produced per second on the platform.
    pub production_rate: f64,
    /// How far behind the head of the stream this consumer is, in seconds.
    pub time_lag: f64,
    /// Estimated events this consumer would lose to trimming.
    pub estimated_out_of_depth: f64,
}

/// The last `connected` event (docs/opencti-protocol.md#sse-framing): what the server says about
/// the stream.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectedInfo {
    /// Newest id in the stream.
    pub last_event_id: Option<String>,
    /// Oldest id still in the stream (older ones were trimmed).
    pub first_event_id: Option<String>,
    /// Date of `first_event_id`.
    pub first_event_date: Option<String>,
    /// Date of `last_event_id`.
    pub last_event_date: Option<String>,
    /// Number of entries in the stream.
    pub stream_size: Option<u64>,
    /// The server's id for this connection.
    pub connection_id: Option<String>,
}

/// Counters by reason and action, gauges, and the last server-side information.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Connections that were answered with a 2xx event stream.
    pub connections: AtomicU64,
    reconnects: [AtomicU64; ReconnectReason::ALL.len()],
    exported: PerAction<AtomicU64>,
    /// `heartbeat` events received.
    pub heartbeats: AtomicU64,
    /// `consumer_metrics` events received.
    pub consumer_metrics_events: AtomicU64,
    /// `connected` events received.
    pub connected_events: AtomicU64,
    /// `no-recover` events received.
    pub no_recover_events: AtomicU64,
    /// `error` events received (logged).
    pub error_events: AtomicU64,
    /// Events with another name, or a control event without the id it needs: counted and skipped.
    pub skipped_events: AtomicU64,
    /// Events handed to the pipeline as dead letters.
    pub dead_lettered: AtomicU64,
    /// Events over the size bound (also counted in `dead_lettered`).
    pub oversized_events: AtomicU64,
    /// Exported events whose id is not a `<ms>-<seq>` stream id (exported, never the cursor).
    pub malformed_ids: AtomicU64,
    /// Bytes of event stream received.
    pub bytes_received: AtomicU64,
    /// Files downloaded and embedded.
    pub files_ok: AtomicU64,
    /// Downloads that failed (status, network, timeout): `data` omitted.
    pub files_failed: AtomicU64,
    /// File uris refused by the policy (other host, path escaping `/storage/get`, ...).
    pub files_refused: AtomicU64,
    /// Files over the size limit: `data` omitted.
    pub files_too_large: AtomicU64,
    /// Bytes of files downloaded.
    pub file_bytes: AtomicU64,
    /// Download attempts that failed transiently and were tried again.
    pub file_retries: AtomicU64,
    /// Files exported without their content and written to the missing-files record (failed
    /// after their retries, refused, over a size or count cap).
    pub files_missing: AtomicU64,
    /// Of those, files the record could not be written for (logged at error level instead).
    pub files_missing_unrecorded: AtomicU64,
    /// Unix ms when the last event carrying an id arrived (0: never).
    pub last_event_unix_ms: AtomicU64,
    /// True while a 2xx event stream is open.
    pub connected: AtomicBool,
    consumer_metrics: Mutex<Option<ConsumerMetrics>>,
    connected_info: Mutex<Option<ConnectedInfo>>,
}

impl StreamStats {
    /// Counts a connection that ended or failed for `reason`.
    pub fn count_reconnect(&self, reason: ReconnectReason) {
        self.reconnects[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections that ended or failed for `reason`.
    pub fn reconnects(&self, reason: ReconnectReason) -> u64 {
        self.reconnects[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts an exported event.
    pub fn count_export(&self, action: Action) {
        self.exported[action].fetch_add(1, Ordering::Relaxed);
    }

    /// Events exported with `action` (dead letters not included).
    pub fn exported(&self, action: Action) -> u64 {
        self.exported[action].load(Ordering::Relaxed)
    }

    /// The last `consumer_metrics` received, if any.
    pub fn consumer_metrics(&self) -> Option<ConsumerMetrics> {
        self.consumer_metrics.lock().map_or(None, |guard| *guard)
    }

    /// Records a `consumer_metrics` event.
    pub fn set_consumer_metrics(&self, metrics: ConsumerMetrics) {
        if let Ok(mut guard) = self.consumer_metrics.lock() {
            *guard = Some(metrics);
        }
    }

    /// The last `connected` event received, if any.
    pub fn connected_info(&self) -> Option<ConnectedInfo> {
        self.connected_info
            .lock()
            .map_or(None, |guard| guard.clone())
    }

    /// Records a `connected` event.
    pub fn set_connected_info(&self, info: ConnectedInfo) {
        if let Ok(mut guard) = self.connected_info.lock() {
            *guard = Some(info);
        }
    }
}
