//! The Prometheus metrics served on `/metrics` (OpenMetrics text, `prometheus-client`).
//!
//! Nothing here counts: every stage keeps its own `Arc<…Stats>` of atomics, and the
//! [`Collector`] below reads them, the WAL's state and its disk usage at scrape time. A scrape
//! costs a few hundred atomic loads, one short lock of the WAL state and one `statvfs`.
//!
//! The stock exporter's names (docs/opencti-protocol.md#stock-metrics) are kept exactly, with their
//! `name` label (the connector name): `processed_messages_total{name,action}`,
//! `written_files_total{name}`, `write_errors_total{name}`, `current_state{name}`,
//! `last_written_state{name}`, `recover_until_state{name}`, and pycti's `ping_api_total` /
//! `ping_api_errors_total`. `prometheus-client` appends `_total` to counters, so they are declared
//! without it. Every other metric is ours and starts with `stream_exporter_`; the full list with
//! types, labels and meanings is [`CATALOGUE`].
//!
//! Secrets (docs/architecture.md#invariant-8): no label or value comes from a secret; label values
//! are the connector name, actions, reasons and outcomes.

use std::fmt::{self, Write as _};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering::Relaxed;
use wal::RecoverUntil;

use crate::histogram::{Buckets, Histogram};
use crate::ids::{EventId, now_ms, parse_iso_ms};
use crate::stream::stats::ReconnectReason;
use crate::transform::Action;
use crate::view::DaemonView;

/// `Content-Type` of the `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One exposed metric family: its exposed sample name, type, labels and meaning. Kept in step
/// with the collector by a test (every name here is scraped, every name scraped is here).
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    /// The name of its samples (`_total` included for counters; `_bucket`/`_sum`/`_count` are
    /// added to histograms).
    pub name: &'static str,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// Its labels.
    pub labels: &'static [&'static str],
    /// What it measures.
    pub help: &'static str,
}

macro_rules! catalogue {
    ($($name:literal $kind:literal [$($label:literal),*] $help:literal;)*) => {
        /// Every metric `/metrics` exposes.
        pub const CATALOGUE: &[MetricDoc] = &[
            $(MetricDoc { name: $name, kind: $kind, labels: &[$($label),*], help: $help },)*
        ];
    };
}

catalogue! {
    "processed_messages_total" "counter" ["name", "action"] "Events made durable in the WAL, by action (create, update, delete, merge) (stock name).";
    "written_files_total" "counter" ["name"] "Files uploaded (stock name).";
    "write_errors_total" "counter" ["name"] "Failed upload attempts (stock name).";
    "current_state" "gauge" ["name"] "Milliseconds part of the durable stream cursor (stock name).";
    "last_written_state" "gauge" ["name"] "Milliseconds part of last_written_msg_id, the last uploaded position (stock name).";
    "recover_until_state" "gauge" ["name"] "recover_until as epoch milliseconds; 0 when recovery is disabled (stock name).";
    "ping_api_total" "counter" [] "Pings sent to the OpenCTI API (pycti name).";
    "ping_api_errors_total" "counter" [] "Pings to the OpenCTI API that failed (pycti name).";
    "stream_exporter_build_info" "gauge" ["version"] "Always 1; the exporter's version.";
    "stream_exporter_wal_backlog_events" "gauge" [] "Events durable in the WAL and not yet sealed into a file.";
    "stream_exporter_wal_backlog_bytes" "gauge" [] "Raw NDJSON bytes of those events.";
    "stream_exporter_files_waiting" "gauge" [] "Sealed files waiting for upload.";
    "stream_exporter_files_waiting_bytes" "gauge" [] "Raw NDJSON bytes of the files waiting for upload.";
    "stream_exporter_next_file_number" "gauge" [] "The number the next sealed file gets.";
    "stream_exporter_disk_used_bytes" "gauge" [] "Disk used by the WAL and sealed files, counted against WAL_MAX_BYTES.";
    "stream_exporter_disk_budget_bytes" "gauge" [] "The disk budget, WAL_MAX_BYTES.";
    "stream_exporter_fs_available_bytes" "gauge" [] "Free space on the WAL's filesystem (absent when unknown).";
    "stream_exporter_disk_budget_paused" "gauge" [] "1 while reading the stream is paused because the disk budget is full.";
    "stream_exporter_disk_budget_pauses_total" "counter" [] "Times reading paused because the disk budget was full.";
    "stream_exporter_events_dropped_while_full_total" "counter" [] "Events read but not kept while the budget was full (the server sends them again).";
    "stream_exporter_wal_commits_total" "counter" [] "WAL commits made durable (one flush and fsync each).";
    "stream_exporter_wal_commit_records_total" "counter" [] "Records made durable by those commits (divide by commits for the group-commit size).";
    "stream_exporter_wal_commit_failures_total" "counter" [] "WAL commits that failed (the WAL refuses writes after one; the daemon exits).";
    "stream_exporter_wal_last_commit_seconds" "gauge" [] "Duration of the last WAL commit, compression to end of fsync.";
    "stream_exporter_wal_group_records" "histogram" [] "Events per group handed to the WAL by the committer.";
    "stream_exporter_wal_durable_latency_seconds" "histogram" [] "Time from handing a group to the WAL to its being durable (flush and fsync included).";
    "stream_exporter_segments_sealed_total" "counter" [] "Files sealed.";
    "stream_exporter_seal_failures_total" "counter" [] "Seals that failed (retried).";
    "stream_exporter_upload_duration_seconds" "histogram" [] "Duration of successful uploads.";
    "stream_exporter_upload_bytes_total" "counter" [] "Raw NDJSON bytes uploaded.";
    "stream_exporter_upload_failing" "gauge" [] "1 while uploads fail (see /status for the kind).";
    "stream_exporter_damaged_segment" "gauge" [] "1 while a damaged local file blocks uploads (see the logs and /status).";
    "stream_exporter_stream_connected" "gauge" [] "1 while the OpenCTI event stream is open.";
    "stream_exporter_stream_connections_total" "counter" [] "Connections answered with an event stream.";
    "stream_exporter_stream_reconnects_total" "counter" ["reason"] "Connections that ended or failed, by reason (eof, network, idle, http_401, http_410, http_429, http_4xx, http_5xx, http_other, malformed, paused).";
    "stream_exporter_stream_received_bytes_total" "counter" [] "Bytes of event stream received.";
    "stream_exporter_stream_heartbeats_total" "counter" [] "Heartbeats received.";
    "stream_exporter_stream_skipped_events_total" "counter" [] "Events of unknown kind, or control events without the id they need: skipped.";
    "stream_exporter_stream_last_event_age_seconds" "gauge" [] "Seconds since the last event carrying an id arrived (absent before the first).";
    "stream_exporter_stream_lag_seconds" "gauge" [] "Now minus the time of the durable cursor (absent while the cursor is 0-0).";
    "stream_exporter_consumer_delivery_rate" "gauge" [] "The server's consumer_metrics: events delivered per second to this consumer.";
    "stream_exporter_consumer_processing_rate" "gauge" [] "The server's consumer_metrics: events processed per second.";
    "stream_exporter_consumer_resolution_rate" "gauge" [] "The server's consumer_metrics: dependency resolutions per second.";
    "stream_exporter_consumer_production_rate" "gauge" [] "The server's consumer_metrics: events produced per second on the platform.";
    "stream_exporter_consumer_time_lag_seconds" "gauge" [] "The server's consumer_metrics: how far this consumer is behind the head of the stream.";
    "stream_exporter_consumer_estimated_out_of_depth" "gauge" [] "The server's consumer_metrics: events this consumer would lose to stream trimming.";
    "stream_exporter_dead_letters_total" "counter" [] "Events that could not be exported, kept in the dead-letter file.";
    "stream_exporter_file_downloads_total" "counter" ["outcome"] "Attached file downloads, by outcome (ok, failed, refused, too_large).";
    "stream_exporter_file_download_bytes_total" "counter" [] "Bytes of attached files downloaded.";
    "stream_exporter_file_download_retries_total" "counter" [] "Attached file downloads that failed transiently and were tried again.";
    "stream_exporter_files_missing_total" "counter" [] "Attached files exported without their content, each recorded in missing-files.ndjson next to the WAL.";
    "stream_exporter_opencti_registered" "gauge" [] "1 once the connector is registered on OpenCTI.";
    "stream_exporter_opencti_register_errors_total" "counter" [] "Registration attempts that failed (retried in the background).";
    "stream_exporter_state_resets_total" "counter" [] "State resets requested from the OpenCTI UI and honoured.";
    "stream_exporter_state_resets_refused_total" "counter" [] "State reset answers from OpenCTI not honoured (too soon after the last one, or before the platform stored the state sent after it).";
}

/// The metrics endpoint's registry, reading `view` at every scrape.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// A registry whose only collector reads `view`.
    pub fn new(view: DaemonView) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape { view }));
        Self { registry }
    }

    /// The OpenMetrics text of every metric, ending with `# EOF`.
    pub fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The collector: everything is read when encoded.
#[derive(Debug)]
struct Scrape {
    view: DaemonView,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut out = Out {
            encoder: &mut encoder,
            next: 0,
        };
        encode_all(&self.view, &mut out)
    }
}

/// Encodes the families in [`CATALOGUE`] order, taking each one's help from there.
struct Out<'a, 'b> {
    encoder: &'a mut DescriptorEncoder<'b>,
    next: usize,
}

impl Out<'_, '_> {
    /// The next catalogue entry, checked against the name the code encodes.
    fn doc(&mut self, name: &str) -> Result<MetricDoc, fmt::Error> {
        let doc = CATALOGUE.get(self.next).copied().ok_or(fmt::Error)?;
        self.next += 1;
        if doc.name != name {
            return Err(fmt::Error);
        }
        Ok(doc)
    }

    fn counter(&mut self, name: &str, value: u64) -> fmt::Result {
        let doc = self.doc(name)?;
        let family = doc.name.strip_suffix("_total").ok_or(fmt::Error)?;
        self.encoder
            .encode_descriptor(family, doc.help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, u64, u64>(&value, None)
    }

    fn counters<L: EncodeLabelSet>(&mut self, name: &str, rows: &[(L, u64)]) -> fmt::Result {
        let doc = self.doc(name)?;
        let family = doc.name.strip_suffix("_total").ok_or(fmt::Error)?;
        let mut metric =
            self.encoder
                .encode_descriptor(family, doc.help, None, MetricType::Counter)?;
        for (labels, value) in rows {
            metric
                .encode_family(labels)?
                .encode_counter::<NoLabelSet, u64, u64>(value, None)?;
        }
        Ok(())
    }

    /// An unlabelled gauge; `None` writes the family without a sample (value unknown).
    fn gauge(&mut self, name: &str, value: Option<f64>) -> fmt::Result {
        let doc = self.doc(name)?;
        let mut metric =
            self.encoder
                .encode_descriptor(doc.name, doc.help, None, MetricType::Gauge)?;
        match value {
            Some(value) => metric.encode_gauge(&value),
            None => Ok(()),
        }
    }

    fn gauges<L: EncodeLabelSet>(&mut self, name: &str, rows: &[(L, f64)]) -> fmt::Result {
        let doc = self.doc(name)?;
        let mut metric =
            self.encoder
                .encode_descriptor(doc.name, doc.help, None, MetricType::Gauge)?;
        for (labels, value) in rows {
            metric.encode_family(labels)?.encode_gauge(value)?;
        }
        Ok(())
    }

    fn histogram<B: Buckets>(&mut self, name: &str, histogram: &Histogram<B>) -> fmt::Result {
        let doc = self.doc(name)?;
        let snapshot = histogram.snapshot();
        let mut metric =
            self.encoder
                .encode_descriptor(doc.name, doc.help, None, MetricType::Histogram)?;
        metric.encode_histogram::<NoLabelSet>(snapshot.sum, snapshot.count, &snapshot.buckets, None)
    }
}

fn flag(value: bool) -> Option<f64> {
    Some(if value { 1.0 } else { 0.0 })
}

fn encode_all(view: &DaemonView, out: &mut Out<'_, '_>) -> fmt::Result {
    let stats = &view.pipeline;
    let state = view.wal.state();
    let usage = view.wal.disk_usage();
    let backlog = view.wal.backlog();
    let segments = view.wal.segments();
    let name = view.name.as_str();
    let now = now_ms();
    let cursor_ms = state
        .cursor
        .as_deref()
        .and_then(EventId::parse)
        .map(|id| id.ms);

    // The stock exporter's metrics.
    let processed: Vec<_> = Action::ALL
        .iter()
        .map(|action| {
            (
                [("name", name), ("action", action.as_str())],
                stats.committer.events_of(*action),
            )
        })
        .collect();
    out.counters("processed_messages_total", &processed)?;
    let named = [("name", name)];
    out.counters(
        "written_files_total",
        &[(named, stats.uploader.uploaded.load(Relaxed))],
    )?;
    out.counters(
        "write_errors_total",
        &[(named, stats.uploader.failures.load(Relaxed))],
    )?;
    out.gauges("current_state", &[(named, cursor_ms.unwrap_or(0) as f64)])?;
    let last_written_ms = state
        .last_upload
        .as_ref()
        .and_then(|upload| upload.last_cursor.as_deref())
        .and_then(EventId::parse)
        .map_or(0, |id| id.ms);
    out.gauges("last_written_state", &[(named, last_written_ms as f64)])?;
    let recover_ms = match &state.recover_until {
        RecoverUntil::Date(date) => parse_iso_ms(date).unwrap_or(0),
        RecoverUntil::Unset | RecoverUntil::Disabled => 0,
    };
    out.gauges("recover_until_state", &[(named, recover_ms as f64)])?;
    out.counter("ping_api_total", view.api.pings.load(Relaxed))?;
    out.counter("ping_api_errors_total", view.api.ping_errors.load(Relaxed))?;

    // Ours: the WAL and the disk.
    out.gauges(
        "stream_exporter_build_info",
        &[([("version", env!("CARGO_PKG_VERSION"))], 1.0)],
    )?;
    out.gauge(
        "stream_exporter_wal_backlog_events",
        Some(backlog.records as f64),
    )?;
    out.gauge(
        "stream_exporter_wal_backlog_bytes",
        Some(backlog.raw_bytes as f64),
    )?;
    out.gauge("stream_exporter_files_waiting", Some(segments.len() as f64))?;
    out.gauge(
        "stream_exporter_files_waiting_bytes",
        Some(segments.iter().map(|s| s.raw_bytes).sum::<u64>() as f64),
    )?;
    out.gauge(
        "stream_exporter_next_file_number",
        Some(state.next_file_number as f64),
    )?;
    out.gauge("stream_exporter_disk_used_bytes", Some(usage.used() as f64))?;
    out.gauge(
        "stream_exporter_disk_budget_bytes",
        Some(usage.max_bytes as f64),
    )?;
    out.gauge(
        "stream_exporter_fs_available_bytes",
        usage.fs_available_bytes.map(|bytes| bytes as f64),
    )?;
    out.gauge(
        "stream_exporter_disk_budget_paused",
        flag(stats.budget.is_paused()),
    )?;
    out.counter(
        "stream_exporter_disk_budget_pauses_total",
        stats.budget.pauses(),
    )?;
    out.counter(
        "stream_exporter_events_dropped_while_full_total",
        stats.committer.dropped_while_full.load(Relaxed),
    )?;
    let wal = &view.wal_stats;
    out.counter(
        "stream_exporter_wal_commits_total",
        wal.commits.load(Relaxed),
    )?;
    out.counter(
        "stream_exporter_wal_commit_records_total",
        wal.records.load(Relaxed),
    )?;
    out.counter(
        "stream_exporter_wal_commit_failures_total",
        wal.commit_failures.load(Relaxed),
    )?;
    out.gauge(
        "stream_exporter_wal_last_commit_seconds",
        Some(wal.last_commit_micros.load(Relaxed) as f64 / 1e6),
    )?;
    out.histogram(
        "stream_exporter_wal_group_records",
        &stats.committer.group_records,
    )?;
    out.histogram(
        "stream_exporter_wal_durable_latency_seconds",
        &stats.committer.durable_latency,
    )?;

    // Sealing and uploads.
    out.counter(
        "stream_exporter_segments_sealed_total",
        stats.compactor.sealed.load(Relaxed),
    )?;
    out.counter(
        "stream_exporter_seal_failures_total",
        stats.compactor.failures.load(Relaxed),
    )?;
    out.histogram(
        "stream_exporter_upload_duration_seconds",
        &stats.uploader.duration,
    )?;
    out.counter(
        "stream_exporter_upload_bytes_total",
        stats.uploader.bytes.load(Relaxed),
    )?;
    out.gauge(
        "stream_exporter_upload_failing",
        flag(stats.uploader.failing().is_some()),
    )?;
    out.gauge(
        "stream_exporter_damaged_segment",
        flag(stats.uploader.damaged().is_some()),
    )?;

    // The stream.
    let stream = &stats.stream;
    out.gauge(
        "stream_exporter_stream_connected",
        flag(stream.connected.load(Relaxed)),
    )?;
    out.counter(
        "stream_exporter_stream_connections_total",
        stream.connections.load(Relaxed),
    )?;
    let reconnects: Vec<_> = ReconnectReason::ALL
        .iter()
        .map(|reason| ([("reason", reason.as_str())], stream.reconnects(*reason)))
        .collect();
    out.counters("stream_exporter_stream_reconnects_total", &reconnects)?;
    out.counter(
        "stream_exporter_stream_received_bytes_total",
        stream.bytes_received.load(Relaxed),
    )?;
    out.counter(
        "stream_exporter_stream_heartbeats_total",
        stream.heartbeats.load(Relaxed),
    )?;
    out.counter(
        "stream_exporter_stream_skipped_events_total",
        stream.skipped_events.load(Relaxed),
    )?;
    let last_event = stream.last_event_unix_ms.load(Relaxed);
    out.gauge(
        "stream_exporter_stream_last_event_age_seconds",
        (last_event > 0).then(|| now.saturating_sub(last_event) as f64 / 1000.0),
    )?;
    out.gauge(
        "stream_exporter_stream_lag_seconds",
        cursor_ms
            .filter(|ms| *ms > 0)
            .map(|ms| now.saturating_sub(ms) as f64 / 1000.0),
    )?;
    let consumer = stream.consumer_metrics();
    let field =
        |pick: fn(&crate::stream::stats::ConsumerMetrics) -> f64| consumer.as_ref().map(pick);
    out.gauge(
        "stream_exporter_consumer_delivery_rate",
        field(|m| m.delivery_rate),
    )?;
    out.gauge(
        "stream_exporter_consumer_processing_rate",
        field(|m| m.processing_rate),
    )?;
    out.gauge(
        "stream_exporter_consumer_resolution_rate",
        field(|m| m.resolution_rate),
    )?;
    out.gauge(
        "stream_exporter_consumer_production_rate",
        field(|m| m.production_rate),
    )?;
    out.gauge(
        "stream_exporter_consumer_time_lag_seconds",
        field(|m| m.time_lag),
    )?;
    out.gauge(
        "stream_exporter_consumer_estimated_out_of_depth",
        field(|m| m.estimated_out_of_depth),
    )?;
    out.counter(
        "stream_exporter_dead_letters_total",
        stats.committer.dead_letters.load(Relaxed),
    )?;
    out.counters(
        "stream_exporter_file_downloads_total",
        &[
            ([("outcome", "ok")], stream.files_ok.load(Relaxed)),
            ([("outcome", "failed")], stream.files_failed.load(Relaxed)),
            ([("outcome", "refused")], stream.files_refused.load(Relaxed)),
            (
                [("outcome", "too_large")],
                stream.files_too_large.load(Relaxed),
            ),
        ],
    )?;
    out.counter(
        "stream_exporter_file_download_bytes_total",
        stream.file_bytes.load(Relaxed),
    )?;
    out.counter(
        "stream_exporter_file_download_retries_total",
        stream.file_retries.load(Relaxed),
    )?;
    out.counter(
        "stream_exporter_files_missing_total",
        stream.files_missing.load(Relaxed),
    )?;

    // OpenCTI registration.
    out.gauge(
        "stream_exporter_opencti_registered",
        flag(view.api.registered.load(Relaxed)),
    )?;
    out.counter(
        "stream_exporter_opencti_register_errors_total",
        view.api.register_errors.load(Relaxed),
    )?;
    out.counter(
        "stream_exporter_state_resets_total",
        view.api.resets.load(Relaxed),
    )?;
    out.counter(
        "stream_exporter_state_resets_refused_total",
        view.api.resets_refused.load(Relaxed),
    )?;
    if out.next != CATALOGUE.len() {
        return Err(fmt::Error);
    }
    Ok(())
}

/// The catalogue as a Markdown table (name, type, labels, meaning), for the README.
pub fn catalogue_markdown() -> String {
    let mut out = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for doc in CATALOGUE {
        let labels = doc
            .labels
            .iter()
            .map(|l| format!("`{l}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} |",
            doc.name, doc.kind, labels, doc.help
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::test_view;

    #[test]
    fn a_scrape_writes_every_family_of_the_catalogue_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = Metrics::new(test_view(dir.path()))
            .render()
            .expect("encodes");
        assert!(text.ends_with("# EOF\n"));
        let families: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .map(|rest| rest.split(' ').next().unwrap_or_default())
            .collect();
        let expected: Vec<&str> = CATALOGUE
            .iter()
            .map(|doc| match doc.kind {
                "counter" => doc.name.trim_end_matches("_total"),
                _ => doc.name,
            })
            .collect();
        assert_eq!(families, expected);
        assert!(text.contains("\nprocessed_messages_total{name=\"test\",action=\"merge\"} 0\n"));
        assert!(text.contains("\nwritten_files_total{name=\"test\"} 0\n"));
        // A fresh WAL has no cursor time and no stream yet: those gauges have no sample.
        assert!(!text.contains("\nstream_exporter_stream_lag_seconds "));
        assert!(!text.contains("\nstream_exporter_stream_last_event_age_seconds "));
    }

    #[test]
    fn the_catalogue_names_are_unique_and_the_table_has_a_row_each() {
        let mut names: Vec<&str> = CATALOGUE.iter().map(|doc| doc.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CATALOGUE.len());
        for doc in CATALOGUE {
            assert_eq!(
                doc.kind == "counter",
                doc.name.ends_with("_total"),
                "{}",
                doc.name
            );
        }
        assert_eq!(catalogue_markdown().lines().count(), CATALOGUE.len() + 2);
    }
}

#[cfg(test)]
mod readme {
    #[test]
    fn the_readme_shows_the_metric_catalogue() {
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(&super::catalogue_markdown()),
            "README.md's metric table differs from metrics::CATALOGUE; paste catalogue_markdown()"
        );
    }
}
