//! Wiring: builds every part of the daemon from the validated [`Config`] and runs it until a
//! shutdown signal. No stage logic lives here.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use wal::{RecoveryReport, Wal, WalOptions};

use crate::config::{Config, Destination};
use crate::pipeline::compactor::CompactorSettings;
use crate::pipeline::uploader::UploaderSettings;
use crate::pipeline::{
    DEFAULT_SHUTDOWN_GRACE, FirstStart, Pipeline, PipelineSettings, seed_first_start,
};
use crate::sink::{DirSink, S3Settings, S3Sink, Sink};
use crate::stream::{FileSettings, StreamSettings, redirect_policy};
use crate::transform::TransformOptions;

/// `User-Agent` of every request to OpenCTI.
pub const USER_AGENT: &str = concat!("opencti-stream-exporter/", env!("CARGO_PKG_VERSION"));

/// Largest dead-letter file that still records payloads.
const DEAD_LETTER_MAX_BYTES: u64 = 256 << 20;

/// Opens the WAL and logs what its recovery found. Damaged segments are logged as errors and do
/// not stop the daemon: ingestion goes on, uploads stop at the damaged one (see status).
pub fn open_wal(dir: &std::path::Path, max_bytes: u64) -> anyhow::Result<Wal> {
    let (wal, report) = Wal::open(WalOptions::new(dir, max_bytes))
        .with_context(|| format!("opening the write-ahead log in {}", dir.display()))?;
    log_recovery(&wal, &report);
    Ok(wal)
}

fn log_recovery(wal: &Wal, report: &RecoveryReport) {
    for damaged in &report.damaged {
        tracing::error!(
            file_number = damaged.number,
            path = %damaged.path.display(),
            problem = %damaged.problem,
            "sealed segment is damaged: it cannot be uploaded and uploads stop before it; \
             ingestion goes on (see the README, operations)"
        );
    }
    if !report.orphans_deleted.is_empty() {
        tracing::info!(
            count = report.orphans_deleted.len(),
            "removed segment files left by an interrupted seal or upload"
        );
    }
    let state = wal.state();
    tracing::info!(
        dir = %wal.dir().display(),
        cursor = state.cursor.as_deref().unwrap_or("-"),
        next_file_number = state.next_file_number,
        sealed_waiting = wal.segments().len(),
        unsealed_events = wal.backlog().records,
        "write-ahead log open"
    );
}

/// The HTTP client for OpenCTI (stream, files, API): TLS as configured, redirects only within
/// OpenCTI's origin, no overall timeout (the stream is one long response).
pub fn opencti_client(config: &Config) -> anyhow::Result<reqwest::Client> {
    let base = reqwest::Url::parse(&config.opencti.url).context("parsing OPENCTI_URL")?;
    crate::tls::reqwest_client_builder(&config.opencti.tls)
        .context("configuring TLS for OpenCTI (OPENCTI_CA_FILE)")?
        .user_agent(USER_AGENT)
        .redirect(redirect_policy(&base))
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Duration::from_secs(30))
        .build()
        .context("building the HTTP client for OpenCTI")
}

/// The stream client's settings.
pub fn stream_settings(config: &Config) -> anyhow::Result<StreamSettings> {
    let base = reqwest::Url::parse(&config.opencti.url).context("parsing OPENCTI_URL")?;
    let live = &config.connector.live_stream;
    let mut settings = StreamSettings::new(base, config.opencti.token.clone(), live.id.clone());
    settings.listen_delete = live.listen_delete;
    settings.no_dependencies = live.no_dependencies;
    settings.with_inferences = live.with_inferences;
    settings.backoff_cap = config.stream.backoff_max;
    settings.idle_timeout = config.stream.idle_timeout;
    settings.max_event_bytes = usize::try_from(config.stream.max_event_bytes).unwrap_or(usize::MAX);
    settings.files = FileSettings {
        concurrency: config.files.concurrency,
        max_file_bytes: config.files.max_bytes,
        timeout: config.files.timeout,
        transform: TransformOptions {
            drop_top_level_files_copy: !config.files.top_level_copy,
        },
        ..FileSettings::default()
    };
    Ok(settings)
}

/// The destination: S3 or a directory.
pub fn sink(config: &Config) -> anyhow::Result<Arc<dyn Sink>> {
    match &config.destination {
        Destination::Directory(dir) => Ok(Arc::new(DirSink::new(dir.clone()))),
        Destination::S3(s3) => {
            let mut settings = S3Settings::new(
                s3.endpoint_url(),
                s3.bucket.clone(),
                s3.access_key.clone(),
                s3.secret_key.clone(),
            );
            settings.region = s3.region.clone();
            settings.tls = s3.tls.clone();
            settings.request_checksums = s3.checksums;
            settings.response_checksums = s3.checksums;
            settings.multipart_threshold = config.upload.multipart_threshold;
            let sink = S3Sink::new(settings).context("configuring the S3 client")?;
            Ok(Arc::new(sink))
        }
    }
}

/// Settings of the pipeline stages.
pub fn pipeline_settings(config: &Config) -> PipelineSettings {
    PipelineSettings {
        compactor: CompactorSettings {
            every: config.write.every,
            max_bytes: config.write.max_bytes,
        },
        uploader: UploaderSettings {
            folder: config.output.folder.clone(),
            compression: config.output.compression,
            backoff_max: config.upload.backoff_max,
            attempt_timeout: config.upload.timeout,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        },
        queue_size: config.stream.queue_size,
        max_bytes: config.wal.max_bytes,
        dead_letter_max_bytes: DEAD_LETTER_MAX_BYTES,
    }
}

/// Runs the daemon until `cancel` fires (SIGTERM/SIGINT) or a fatal error.
pub async fn run(config: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let wal = open_wal(&config.wal.dir, config.wal.max_bytes)?;
    let first = FirstStart {
        start_timestamp_ms: config.connector.live_stream.start_timestamp_ms,
        recover_iso_date: config.connector.live_stream.recover_iso_date.clone(),
    };
    if seed_first_start(&wal, &first, crate::ids::now_ms())
        .context("recording the first-start position in the WAL")?
    {
        let state = wal.state();
        tracing::info!(
            start_from = state.cursor.as_deref().unwrap_or("-"),
            recover_until = ?state.recover_until,
            "first start: the stream starts from the configured position, with recovery"
        );
    }
    let http = opencti_client(&config)?;
    let pipeline = Pipeline::start(
        wal,
        sink(&config)?,
        stream_settings(&config)?,
        http,
        pipeline_settings(&config),
        cancel,
    )?;
    pipeline.wait().await?;
    Ok(())
}

/// A token cancelled on the first SIGTERM or SIGINT. A second signal exits at once (the WAL is
/// durable at every instant, so even that loses nothing).
pub fn shutdown_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let cancel = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let token = cancel.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping: finishing what is in flight");
        token.cancel();
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    Ok(cancel)
}
