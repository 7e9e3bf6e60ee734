//! Wiring: builds every part of the daemon from the validated [`Config`] and runs it until a
//! shutdown signal. No stage logic lives here.
//!
//! Besides the pipeline, the daemon runs the operations tasks — the HTTP endpoint
//! ([`crate::ops::http`]), the progress line ([`crate::ops::progress`]) and the OpenCTI API task
//! ([`crate::opencti_api`]) — which only read the pipeline's counters and the WAL, and stop after
//! the pipeline. A state reset requested from OpenCTI's UI restarts the pipeline (see
//! [`apply_reset`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wal::{Group, RecoverUntil, RecoveryReport, StateChange, Wal, WalOptions};

use crate::config::{Config, Destination};
use crate::opencti_api::{
    self, ApiContext, ApiSettings, ApiStats, DEFAULT_CALL_TIMEOUT, GraphqlClient, ResetRequest,
};
use crate::ops;
use crate::pipeline::adopt;
use crate::pipeline::compactor::CompactorSettings;
use crate::pipeline::uploader::UploaderSettings;
use crate::pipeline::{
    DEFAULT_SHUTDOWN_GRACE, FirstStart, Pipeline, PipelineSettings, PipelineStats, seed_first_start,
};
use crate::sink::{DirSink, S3Settings, S3Sink, Sink};
use crate::stream::{FileSettings, StreamSettings, redirect_policy};
use crate::transform::TransformOptions;
use crate::view::DaemonView;

/// `User-Agent` of every request to OpenCTI.
pub const USER_AGENT: &str = concat!("opencti-stream-exporter/", env!("CARGO_PKG_VERSION"));

/// Opens the WAL and logs what its recovery found. Damaged segments are logged as errors and do
/// not stop the daemon: ingestion goes on, uploads stop at the damaged one (see status). A
/// directory this process may not write gives a [`crate::wal_access::NotWritable`].
pub fn open_wal(dir: &std::path::Path, max_bytes: u64) -> anyhow::Result<Wal> {
    let (wal, report) =
        Wal::open(WalOptions::new(dir, max_bytes)).map_err(
            |err| match crate::wal_access::explain(dir, &err) {
                Some(not_writable) => anyhow::Error::new(not_writable),
                None => anyhow::Error::new(err)
                    .context(format!("opening the write-ahead log in {}", dir.display())),
            },
        )?;
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
    if !config.opencti.tls.verify {
        warn_unverified("OPENCTI_SSL_VERIFY=false", "OpenCTI");
    }
    if sends_token_in_clear(&base) {
        tracing::warn!(
            host = base.host_str().unwrap_or("-"),
            "OPENCTI_URL is plain http:// to another host: the API token and every event cross \
             the network unencrypted; use https://"
        );
    }
    crate::tls::reqwest_client_builder(&config.opencti.tls)
        .context("configuring TLS for OpenCTI (OPENCTI_CA_FILE)")?
        .user_agent(USER_AGENT)
        .redirect(redirect_policy(&base))
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Duration::from_secs(30))
        .build()
        .context("building the HTTP client for OpenCTI")
}

/// Whether `url` is plain `http://` to a host other than this one (a loopback address or
/// `localhost`), so the token would cross a network in clear.
pub fn sends_token_in_clear(url: &reqwest::Url) -> bool {
    if url.scheme() != "http" {
        return false;
    }
    let Some(host) = url.host_str() else {
        return true;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback(),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name != "localhost" && !name.ends_with(".localhost")
        }
    }
}

/// Logs, once per client built, that `peer`'s certificate is not checked because of `setting`.
fn warn_unverified(setting: &str, peer: &str) {
    tracing::warn!(
        "TLS certificate verification is disabled for {peer} ({setting}): any server certificate \
         is accepted; the connection is encrypted but the server is not authenticated"
    );
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
    settings.max_bytes_in_flight = config.stream.queue_max_bytes;
    settings.files = FileSettings {
        concurrency: config.files.concurrency,
        max_file_bytes: config.files.max_bytes,
        timeout: config.files.timeout,
        retry_max: config.files.retry_max,
        max_per_event: config.files.max_per_event,
        max_total_bytes: config.files.max_total_bytes,
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
            if s3.secure && !s3.tls.verify {
                warn_unverified("MINIO_CERT_CHECK=false", "S3");
            }
            settings.request_checksums = s3.checksums;
            settings.upload_checksum = s3.upload_checksum;
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
        dead_letter_max_bytes: crate::pipeline::dead_letter::file_bytes_for_budget(
            config.wal.max_bytes,
        ),
    }
}

/// How the OpenCTI API task identifies the connector.
pub fn api_settings(config: &Config) -> ApiSettings {
    ApiSettings {
        connector_id: config.connector.id.clone(),
        name: config.connector.name.clone(),
        scope: config.connector.scope.clone(),
        ping_interval: config.opencti.ping_interval,
        min_reset_interval: opencti_api::DEFAULT_MIN_RESET_INTERVAL,
    }
}

/// The GraphQL client for `{OPENCTI_URL}/graphql`, over the daemon's HTTP client for OpenCTI.
pub fn api_client(config: &Config, http: reqwest::Client) -> anyhow::Result<GraphqlClient> {
    let base = reqwest::Url::parse(&config.opencti.url).context("parsing OPENCTI_URL")?;
    Ok(GraphqlClient::new(
        http,
        &base,
        config.opencti.token.clone(),
        DEFAULT_CALL_TIMEOUT,
    ))
}

/// Longest wait for an operations task to stop after the pipeline stopped.
const OPS_STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the daemon until `cancel` fires (SIGTERM/SIGINT) or a fatal error.
pub async fn run(config: Config, cancel: CancellationToken) -> anyhow::Result<()> {
    let wal = open_wal(&config.wal.dir, config.wal.max_bytes)?;
    let first = first_start(&config);
    let http = opencti_client(&config)?;
    let sink = sink(&config)?;
    if config.wal.adopt_delivered && crate::pipeline::is_unpositioned(&wal) {
        let outcome = adopt::adopt(
            &wal,
            &api_client(&config, http.clone())?,
            &api_settings(&config),
            sink.as_ref(),
            &config.output.folder,
            &first,
            &cancel,
        )
        .await?;
        if outcome == adopt::AdoptOutcome::Cancelled {
            return Ok(());
        }
    }
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
    let stats = PipelineStats::new(&pipeline_settings(&config));
    let api_stats = Arc::new(ApiStats::default());
    let view = DaemonView::new(
        config.connector.name.clone(),
        wal.clone(),
        stats.clone(),
        Arc::clone(&api_stats),
    );

    // The operations tasks outlive the pipeline (they report its shutdown) and stop after it.
    let ops_cancel = CancellationToken::new();
    let mut ops_tasks: Vec<JoinHandle<()>> = Vec::new();
    if config.connector.expose_metrics {
        let addr = SocketAddr::new(config.connector.metrics_bind, config.connector.metrics_port);
        let listener = ops::http::bind(addr).await?;
        tracing::info!(
            address = %listener.local_addr().unwrap_or(addr),
            "serving /metrics, /healthz, /readyz and /status"
        );
        let options = ops::http::EndpointOptions {
            token: config.connector.metrics_token.clone(),
            limits: ops::connections::DEFAULT_LIMITS,
        };
        ops_tasks.push(ops::http::serve(
            listener,
            view.clone(),
            options,
            ops_cancel.clone(),
        ));
    }
    ops_tasks.push(tokio::spawn(ops::progress::run(
        view,
        ops::progress::PROGRESS_EVERY,
        ops_cancel.clone(),
    )));
    let (resets_tx, resets) = mpsc::channel(1);
    ops_tasks.push(tokio::spawn(opencti_api::run(
        api_client(&config, http.clone())?,
        api_settings(&config),
        ApiContext {
            wal: wal.clone(),
            budget: Arc::clone(&stats.budget),
            stats: api_stats,
            resets: resets_tx,
            uploaded: Arc::clone(&stats.uploader.uploaded_signal),
        },
        ops_cancel.clone(),
    )));

    let failure = Arc::clone(&stats.wal_failure);
    let result = run_pipeline(&config, &wal, http, sink, stats, resets, &cancel).await;
    if failure.reason().is_some() {
        // A failed disk can leave the WAL's writer waiting for good: its handles are never
        // dropped (dropping the last one joins the writer), the process exits without them.
        // Everything acknowledged is already durable.
        std::mem::forget(wal.clone());
    }
    ops_cancel.cancel();
    for task in ops_tasks {
        if tokio::time::timeout(OPS_STOP_GRACE, task).await.is_err() {
            tracing::warn!("an operations task did not stop in time; leaving it");
        }
    }
    result
}

/// The first-start position of the configuration (also where a state reset goes back to).
pub fn first_start(config: &Config) -> FirstStart {
    FirstStart {
        start_timestamp_ms: config.connector.live_stream.start_timestamp_ms,
        recover_iso_date: config.connector.live_stream.recover_iso_date.clone(),
    }
}

/// Runs the pipeline until `cancel` fires or a fatal error; restarts it after each state reset
/// requested from OpenCTI, counting into the same `stats`.
async fn run_pipeline(
    config: &Config,
    wal: &Wal,
    http: reqwest::Client,
    sink: Arc<dyn Sink>,
    stats: PipelineStats,
    mut resets: mpsc::Receiver<ResetRequest>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let first = &first_start(config);
    loop {
        let pipeline_cancel = cancel.child_token();
        let pipeline = Pipeline::start_with_stats(
            wal.clone(),
            Arc::clone(&sink),
            stream_settings(config)?,
            http.clone(),
            pipeline_settings(config),
            stats.clone(),
            pipeline_cancel.clone(),
        )?;
        let waiting = pipeline.wait();
        tokio::pin!(waiting);
        let request = tokio::select! {
            result = &mut waiting => return Ok(result?),
            Some(request) = resets.recv() => request,
        };
        pipeline_cancel.cancel();
        let stopped = waiting.await;
        if let Err(error) = stopped {
            let _ = request.done.send(Err(error.to_string()));
            return Err(error.into());
        }
        if cancel.is_cancelled() {
            let _ = request.done.send(Err("the daemon is stopping".to_string()));
            return Ok(());
        }
        match apply_reset(wal, first, crate::ids::now_ms()).await {
            Ok(()) => {
                let _ = request.done.send(Ok(()));
            }
            Err(error) => {
                let _ = request.done.send(Err(format!("{error:#}")));
                return Err(error);
            }
        }
    }
}

/// Applies a state reset requested from OpenCTI's UI, with the pipeline stopped: the stream
/// position goes back to the first-start position ([`FirstStart::position`]: the configured
/// start or `0-0`, recovering until the configured date or now), durably, in one WAL commit.
/// The file numbering and everything already in the WAL (unsealed events, sealed files) are
/// kept: they are uploaded as usual, and the events the server sends again follow them.
pub async fn apply_reset(wal: &Wal, first: &FirstStart, now_ms: u64) -> anyhow::Result<()> {
    let before = wal.state();
    let (cursor, recover) = first.position(now_ms);
    wal.appender()
        .submit(Group {
            records: Vec::new(),
            cursor: Some(cursor.clone()),
            changes: vec![StateChange::RecoverUntil(RecoverUntil::Date(
                recover.clone(),
            ))],
        })
        .await
        .context("recording the reset stream position in the WAL")?;
    tracing::warn!(
        old_start_from = before.cursor.as_deref().unwrap_or("-"),
        old_recover_until = ?before.recover_until,
        new_start_from = %cursor,
        new_recover_until = %recover,
        next_file_number = before.next_file_number,
        "STATE RESET from OpenCTI applied: the stream restarts from {cursor}, recovering until          {recover}; file numbering goes on (next file {}); events already in the WAL are still          uploaded",
        before.next_file_number
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_flagged_only_towards_another_host() {
        let flagged = |url: &str| sends_token_in_clear(&reqwest::Url::parse(url).expect("a URL"));
        assert!(flagged("http://opencti:8080/"));
        assert!(flagged("http://10.0.0.5/"));
        assert!(flagged("http://[2001:db8::1]:8080/"));
        assert!(!flagged("https://opencti:8080/"));
        assert!(!flagged("http://localhost:8080/"));
        assert!(!flagged("http://127.0.0.1:8080/"));
        assert!(!flagged("http://[::1]:8080/"));
    }
}
