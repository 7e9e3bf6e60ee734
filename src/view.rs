//! A read-only view of the running daemon ([`DaemonView`]): the WAL and the stages' own counters,
//! shared, never a copy kept up to date. The operations endpoint, the metrics and the progress
//! line read the daemon through it; it holds no secret (docs/architecture.md#invariant-8).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use wal::{Wal, WalStats};

use crate::ids::{EventId, iso, now_ms};
use crate::opencti_api::ApiStats;
use crate::pipeline::PipelineStats;
use crate::status::{LiveStatus, StatusReport};
use crate::stream::stats::ReconnectReason;

/// A read-only view of the running daemon: the WAL, every stage's counters, the API task's.
/// Cheap to clone (handles and `Arc`s).
#[derive(Clone)]
pub struct DaemonView {
    /// `CONNECTOR_NAME`: the `name` label of the stock metrics.
    pub name: String,
    /// The WAL.
    pub wal: Wal,
    /// The WAL's own counters.
    pub wal_stats: Arc<WalStats>,
    /// The pipeline stages' counters (kept across pipeline restarts).
    pub pipeline: PipelineStats,
    /// The OpenCTI API task's counters.
    pub api: Arc<ApiStats>,
}

impl std::fmt::Debug for DaemonView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonView")
            .field("name", &self.name)
            .field("wal", &self.wal.dir())
            .finish_non_exhaustive()
    }
}

impl DaemonView {
    /// A view of `wal` and the given counters.
    pub fn new(name: String, wal: Wal, pipeline: PipelineStats, api: Arc<ApiStats>) -> Self {
        Self {
            name,
            wal_stats: wal.stats(),
            wal,
            pipeline,
            api,
        }
    }

    /// The `status` report with the live part: what `/status` answers.
    pub fn status(&self) -> StatusReport {
        let mut report = StatusReport::from_wal(&self.wal);
        report.live = Some(self.live(&report));
        report
    }

    fn live(&self, report: &StatusReport) -> LiveStatus {
        let stats = &self.pipeline;
        let stream = &stats.stream;
        let now = now_ms();
        let last_event = stream.last_event_unix_ms.load(Relaxed);
        let last_ping = self.api.last_ping_ok_unix_ms.load(Relaxed);
        LiveStatus {
            stream_connected: stream.connected.load(Relaxed),
            stream_connections: stream.connections.load(Relaxed),
            stream_reconnects: ReconnectReason::ALL
                .iter()
                .map(|reason| stream.reconnects(*reason))
                .sum(),
            last_event_age_seconds: (last_event > 0)
                .then(|| now.saturating_sub(last_event) as f64 / 1000.0),
            stream_lag_seconds: report
                .cursor
                .as_deref()
                .and_then(EventId::parse)
                .filter(|id| id.ms > 0)
                .map(|id| now.saturating_sub(id.ms) as f64 / 1000.0),
            disk_budget_full: stats.budget.is_paused(),
            uploads_failing: stats.uploader.failing(),
            damaged_segment: stats.uploader.damaged(),
            files_uploaded: stats.uploader.uploaded.load(Relaxed),
            dead_letters: stats.committer.dead_letters.load(Relaxed),
            opencti_registered: self.api.registered.load(Relaxed),
            opencti_api_failing: self.api.failing(),
            last_ping_at: (last_ping > 0).then(|| iso(last_ping)),
            state_resets: self.api.resets.load(Relaxed),
        }
    }
}

/// A view over a fresh WAL in a test directory, with fresh counters.
#[cfg(test)]
pub(crate) fn test_view(dir: &std::path::Path) -> DaemonView {
    use std::time::Duration;

    use crate::pipeline::PipelineSettings;
    use crate::pipeline::compactor::CompactorSettings;
    use crate::pipeline::uploader::UploaderSettings;

    let (wal, _) = Wal::open(wal::WalOptions::new(dir, 1 << 30)).expect("a WAL in a temp dir");
    let settings = PipelineSettings {
        compactor: CompactorSettings {
            every: Duration::from_secs(1),
            max_bytes: 1 << 20,
        },
        uploader: UploaderSettings {
            folder: "f".into(),
            compression: crate::sink::Compression::None,
            backoff_max: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(1),
        },
        queue_size: 10,
        max_bytes: 1 << 30,
        dead_letter_max_bytes: 1 << 20,
    };
    DaemonView::new(
        "test".into(),
        wal,
        PipelineStats::new(&settings),
        Arc::new(ApiStats::default()),
    )
}
