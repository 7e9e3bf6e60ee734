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
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use wal::{Backlog, DiskUsage, RecoverUntil, SegmentMeta, WalState};

use crate::histogram::HistogramSnapshot;
use crate::ids::{EventId, now_ms, parse_iso_ms};
use crate::stream::StreamStats;
use crate::stream::stats::{ConsumerMetrics, ReconnectReason};
use crate::transform::Action;
use crate::view::DaemonView;

/// `Content-Type` of the `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One exposed metric family: its exposed sample name, type, labels, meaning, and the reader
/// that takes its samples from the running daemon at scrape time. The reader sits in the same
/// row as the name, so a family cannot be encoded under another's name or help.
#[derive(Clone, Copy)]
pub struct MetricDoc {
    /// The name of its samples (`_total` included for counters; `_bucket`/`_sum`/`_count` are
    /// added to histograms).
    pub name: &'static str,
    /// Its labels.
    pub labels: &'static [&'static str],
    /// What it measures.
    pub help: &'static str,
    read: Reader,
}

impl std::fmt::Debug for MetricDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricDoc")
            .field("name", &self.name)
            .field("kind", &self.kind())
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// Samples of one family: the label values (in the order of [`MetricDoc::labels`]) and the
/// value of each.
type Samples<T> = Vec<(Vec<String>, T)>;

/// How a family's samples are read, by type.
#[derive(Clone, Copy)]
enum Reader {
    Counter(fn(&Scraped<'_>) -> Samples<u64>),
    Gauge(fn(&Scraped<'_>) -> Samples<f64>),
    Histogram(fn(&Scraped<'_>) -> HistogramSnapshot),
}

impl MetricDoc {
    const fn counter(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
        read: fn(&Scraped<'_>) -> Samples<u64>,
    ) -> Self {
        Self {
            name,
            labels,
            help,
            read: Reader::Counter(read),
        }
    }

    const fn gauge(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
        read: fn(&Scraped<'_>) -> Samples<f64>,
    ) -> Self {
        Self {
            name,
            labels,
            help,
            read: Reader::Gauge(read),
        }
    }

    const fn histogram(
        name: &'static str,
        labels: &'static [&'static str],
        help: &'static str,
        read: fn(&Scraped<'_>) -> HistogramSnapshot,
    ) -> Self {
        Self {
            name,
            labels,
            help,
            read: Reader::Histogram(read),
        }
    }

    /// `counter`, `gauge` or `histogram`.
    pub fn kind(&self) -> &'static str {
        match self.read {
            Reader::Counter(_) => "counter",
            Reader::Gauge(_) => "gauge",
            Reader::Histogram(_) => "histogram",
        }
    }

    /// Reads the family from `scraped` and encodes it.
    fn encode(&self, scraped: &Scraped<'_>, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
        match self.read {
            Reader::Counter(read) => {
                let family = self.name.strip_suffix("_total").ok_or(fmt::Error)?;
                let mut metric =
                    encoder.encode_descriptor(family, self.help, None, MetricType::Counter)?;
                for (values, value) in read(scraped) {
                    if self.labels.is_empty() {
                        metric.encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
                    } else {
                        metric
                            .encode_family(&self.label_set(values)?)?
                            .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
                    }
                }
                Ok(())
            }
            Reader::Gauge(read) => {
                let mut metric =
                    encoder.encode_descriptor(self.name, self.help, None, MetricType::Gauge)?;
                for (values, value) in read(scraped) {
                    if self.labels.is_empty() {
                        metric.encode_gauge(&value)?;
                    } else {
                        metric
                            .encode_family(&self.label_set(values)?)?
                            .encode_gauge(&value)?;
                    }
                }
                Ok(())
            }
            Reader::Histogram(read) => {
                let snapshot = read(scraped);
                encoder
                    .encode_descriptor(self.name, self.help, None, MetricType::Histogram)?
                    .encode_histogram::<NoLabelSet>(
                        snapshot.sum,
                        snapshot.count,
                        &snapshot.buckets,
                        None,
                    )
            }
        }
    }

    /// The labels of a sample: this family's names with the reader's values.
    fn label_set(&self, values: Vec<String>) -> Result<Vec<(&'static str, String)>, fmt::Error> {
        if values.len() != self.labels.len() {
            return Err(fmt::Error);
        }
        Ok(self.labels.iter().copied().zip(values).collect())
    }
}

/// What every reader may look at, read once per scrape.
struct Scraped<'a> {
    view: &'a DaemonView,
    state: WalState,
    usage: DiskUsage,
    backlog: Backlog,
    segments: Vec<SegmentMeta>,
    now: u64,
    cursor_ms: Option<u64>,
}

impl<'a> Scraped<'a> {
    fn of(view: &'a DaemonView) -> Self {
        let state = view.wal.state();
        let cursor_ms = state
            .cursor
            .as_deref()
            .and_then(EventId::parse)
            .map(|id| id.ms);
        Self {
            view,
            usage: view.wal.disk_usage(),
            backlog: view.wal.backlog(),
            segments: view.wal.segments(),
            now: now_ms(),
            cursor_ms,
            state,
        }
    }

    fn name(&self) -> String {
        self.view.name.clone()
    }

    /// One sample labelled with the connector name (the stock metrics' `name` label).
    fn named<T>(&self, value: T) -> Samples<T> {
        vec![(vec![self.name()], value)]
    }

    fn stream(&self) -> &StreamStats {
        &self.view.pipeline.stream
    }

    /// A field of the server's last `consumer_metrics`; no sample before the first.
    fn consumer(&self, pick: fn(&ConsumerMetrics) -> f64) -> Samples<f64> {
        maybe(self.stream().consumer_metrics().as_ref().map(pick))
    }
}

/// One unlabelled sample.
fn one<T>(value: T) -> Samples<T> {
    vec![(Vec::new(), value)]
}

/// One unlabelled sample, or none when the value is unknown (the family is written without one).
fn maybe(value: Option<f64>) -> Samples<f64> {
    value.map(one).unwrap_or_default()
}

/// 1 or 0.
fn flag(value: bool) -> Samples<f64> {
    one(if value { 1.0 } else { 0.0 })
}

/// Every metric `/metrics` exposes, in the order it exposes them.
pub const CATALOGUE: &[MetricDoc] = &[
    MetricDoc::counter(
        "processed_messages_total",
        &["name", "action"],
        "Events made durable in the WAL, by action (create, update, delete, merge) (stock name).",
        |s| {
            Action::ALL
                .iter()
                .map(|action| {
                    let value = s.view.pipeline.committer.events_of(*action);
                    (vec![s.name(), action.as_str().to_string()], value)
                })
                .collect()
        },
    ),
    MetricDoc::counter(
        "written_files_total",
        &["name"],
        "Files uploaded (stock name).",
        |s| s.named(s.view.pipeline.uploader.uploaded.load(Relaxed)),
    ),
    MetricDoc::counter(
        "write_errors_total",
        &["name"],
        "Failed upload attempts (stock name).",
        |s| s.named(s.view.pipeline.uploader.failures.load(Relaxed)),
    ),
    MetricDoc::gauge(
        "current_state",
        &["name"],
        "Milliseconds part of the durable stream cursor (stock name).",
        |s| s.named(s.cursor_ms.unwrap_or(0) as f64),
    ),
    MetricDoc::gauge(
        "last_written_state",
        &["name"],
        "Milliseconds part of last_written_msg_id, the last uploaded position (stock name).",
        |s| {
            let ms = s
                .state
                .last_upload
                .as_ref()
                .and_then(|upload| upload.last_cursor.as_deref())
                .and_then(EventId::parse)
                .map_or(0, |id| id.ms);
            s.named(ms as f64)
        },
    ),
    MetricDoc::gauge(
        "recover_until_state",
        &["name"],
        "recover_until as epoch milliseconds; 0 when recovery is disabled (stock name).",
        |s| {
            let ms = match &s.state.recover_until {
                RecoverUntil::Date(date) => parse_iso_ms(date.as_str()).unwrap_or(0),
                RecoverUntil::Unset | RecoverUntil::Disabled => 0,
            };
            s.named(ms as f64)
        },
    ),
    MetricDoc::counter(
        "ping_api_total",
        &[],
        "Pings sent to the OpenCTI API (pycti name).",
        |s| one(s.view.api.pings.load(Relaxed)),
    ),
    MetricDoc::counter(
        "ping_api_errors_total",
        &[],
        "Pings to the OpenCTI API that failed (pycti name).",
        |s| one(s.view.api.ping_errors.load(Relaxed)),
    ),
    MetricDoc::gauge(
        "stream_exporter_build_info",
        &["version"],
        "Always 1; the exporter's version.",
        |_| vec![(vec![env!("CARGO_PKG_VERSION").to_string()], 1.0)],
    ),
    MetricDoc::gauge(
        "stream_exporter_wal_backlog_events",
        &[],
        "Events durable in the WAL and not yet sealed into a file.",
        |s| one(s.backlog.records as f64),
    ),
    MetricDoc::gauge(
        "stream_exporter_wal_backlog_bytes",
        &[],
        "Raw NDJSON bytes of those events.",
        |s| one(s.backlog.raw_bytes as f64),
    ),
    MetricDoc::gauge(
        "stream_exporter_files_waiting",
        &[],
        "Sealed files waiting for upload.",
        |s| one(s.segments.len() as f64),
    ),
    MetricDoc::gauge(
        "stream_exporter_files_waiting_bytes",
        &[],
        "Raw NDJSON bytes of the files waiting for upload.",
        |s| {
            one(s
                .segments
                .iter()
                .map(|segment| segment.raw_bytes)
                .sum::<u64>() as f64)
        },
    ),
    MetricDoc::gauge(
        "stream_exporter_next_file_number",
        &[],
        "The number the next sealed file gets.",
        |s| one(s.state.next_file_number as f64),
    ),
    MetricDoc::gauge(
        "stream_exporter_disk_used_bytes",
        &[],
        "Disk used by the WAL and sealed files, counted against WAL_MAX_BYTES.",
        |s| one(s.usage.used() as f64),
    ),
    MetricDoc::gauge(
        "stream_exporter_disk_budget_bytes",
        &[],
        "The disk budget, WAL_MAX_BYTES.",
        |s| one(s.usage.max_bytes as f64),
    ),
    MetricDoc::gauge(
        "stream_exporter_fs_available_bytes",
        &[],
        "Free space on the WAL's filesystem (absent when unknown).",
        |s| maybe(s.usage.fs_available_bytes.map(|bytes| bytes as f64)),
    ),
    MetricDoc::gauge(
        "stream_exporter_disk_budget_paused",
        &[],
        "1 while reading the stream is paused because the disk budget is full.",
        |s| flag(s.view.pipeline.budget.is_paused()),
    ),
    MetricDoc::counter(
        "stream_exporter_disk_budget_pauses_total",
        &[],
        "Times reading paused because the disk budget was full.",
        |s| one(s.view.pipeline.budget.pauses()),
    ),
    MetricDoc::counter(
        "stream_exporter_events_dropped_while_full_total",
        &[],
        "Events read but not kept while the budget was full (the server sends them again).",
        |s| one(s.view.pipeline.committer.dropped_while_full.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_wal_commits_total",
        &[],
        "WAL commits made durable (one flush and fsync each).",
        |s| one(s.view.wal_stats.commits.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_wal_commit_records_total",
        &[],
        "Records made durable by those commits (divide by commits for the group-commit size).",
        |s| one(s.view.wal_stats.records.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_wal_commit_failures_total",
        &[],
        "WAL commits that failed (the WAL refuses writes after one; the daemon exits).",
        |s| one(s.view.wal_stats.commit_failures.load(Relaxed)),
    ),
    MetricDoc::gauge(
        "stream_exporter_wal_last_commit_seconds",
        &[],
        "Duration of the last WAL commit, compression to end of fsync.",
        |s| one(s.view.wal_stats.last_commit_micros.load(Relaxed) as f64 / 1e6),
    ),
    MetricDoc::histogram(
        "stream_exporter_wal_group_records",
        &[],
        "Events per group handed to the WAL by the committer.",
        |s| s.view.pipeline.committer.group_records.snapshot(),
    ),
    MetricDoc::histogram(
        "stream_exporter_wal_durable_latency_seconds",
        &[],
        "Time from handing a group to the WAL to its being durable (flush and fsync included).",
        |s| s.view.pipeline.committer.durable_latency.snapshot(),
    ),
    MetricDoc::counter(
        "stream_exporter_segments_sealed_total",
        &[],
        "Files sealed.",
        |s| one(s.view.pipeline.compactor.sealed.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_seal_failures_total",
        &[],
        "Seals that failed (retried).",
        |s| one(s.view.pipeline.compactor.failures.load(Relaxed)),
    ),
    MetricDoc::histogram(
        "stream_exporter_upload_duration_seconds",
        &[],
        "Duration of successful uploads.",
        |s| s.view.pipeline.uploader.duration.snapshot(),
    ),
    MetricDoc::counter(
        "stream_exporter_upload_bytes_total",
        &[],
        "Raw NDJSON bytes uploaded.",
        |s| one(s.view.pipeline.uploader.bytes.load(Relaxed)),
    ),
    MetricDoc::gauge(
        "stream_exporter_upload_failing",
        &[],
        "1 while uploads fail (see /status for the kind).",
        |s| flag(s.view.pipeline.uploader.failing().is_some()),
    ),
    MetricDoc::gauge(
        "stream_exporter_damaged_segment",
        &[],
        "1 while a damaged local file blocks uploads (see the logs and /status).",
        |s| flag(s.view.pipeline.uploader.damaged().is_some()),
    ),
    MetricDoc::gauge(
        "stream_exporter_stream_connected",
        &[],
        "1 while the OpenCTI event stream is open.",
        |s| flag(s.stream().connected.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_stream_connections_total",
        &[],
        "Connections answered with an event stream.",
        |s| one(s.stream().connections.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_stream_reconnects_total",
        &["reason"],
        "Connections that ended or failed, by reason (eof, network, idle, http_401, http_410, http_429, http_4xx, http_5xx, http_other, malformed, paused).",
        |s| {
            ReconnectReason::ALL
                .iter()
                .map(|reason| {
                    (
                        vec![reason.as_str().to_string()],
                        s.stream().reconnects(*reason),
                    )
                })
                .collect()
        },
    ),
    MetricDoc::counter(
        "stream_exporter_stream_received_bytes_total",
        &[],
        "Bytes of event stream received.",
        |s| one(s.stream().bytes_received.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_stream_heartbeats_total",
        &[],
        "Heartbeats received.",
        |s| one(s.stream().heartbeats.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_stream_skipped_events_total",
        &[],
        "Events of unknown kind, or control events without the id they need: skipped.",
        |s| one(s.stream().skipped_events.load(Relaxed)),
    ),
    MetricDoc::gauge(
        "stream_exporter_stream_last_event_age_seconds",
        &[],
        "Seconds since the last event carrying an id arrived (absent before the first).",
        |s| {
            let last_event = s.stream().last_event_unix_ms.load(Relaxed);
            maybe((last_event > 0).then(|| s.now.saturating_sub(last_event) as f64 / 1000.0))
        },
    ),
    MetricDoc::gauge(
        "stream_exporter_stream_lag_seconds",
        &[],
        "Now minus the time of the durable cursor (absent while the cursor is 0-0).",
        |s| {
            maybe(
                s.cursor_ms
                    .filter(|ms| *ms > 0)
                    .map(|ms| s.now.saturating_sub(ms) as f64 / 1000.0),
            )
        },
    ),
    MetricDoc::gauge(
        "stream_exporter_consumer_delivery_rate",
        &[],
        "The server's consumer_metrics: events delivered per second to this consumer.",
        |s| s.consumer(|m| m.delivery_rate),
    ),
    MetricDoc::gauge(
        "stream_exporter_consumer_processing_rate",
        &[],
        "The server's consumer_metrics: events processed per second.",
        |s| s.consumer(|m| m.processing_rate),
    ),
    MetricDoc::gauge(
        "stream_exporter_consumer_resolution_rate",
        &[],
        "The server's consumer_metrics: dependency resolutions per second.",
        |s| s.consumer(|m| m.resolution_rate),
    ),
    MetricDoc::gauge(
        "stream_exporter_consumer_production_rate",
        &[],
        "The server's consumer_metrics: events produced per second on the platform.",
        |s| s.consumer(|m| m.production_rate),
    ),
    MetricDoc::gauge(
        "stream_exporter_consumer_time_lag_seconds",
        &[],
        "The server's consumer_metrics: how far this consumer is behind the head of the stream.",
        |s| s.consumer(|m| m.time_lag),
    ),
    MetricDoc::gauge(
        "stream_exporter_consumer_estimated_out_of_depth",
        &[],
        "The server's consumer_metrics: events this consumer would lose to stream trimming.",
        |s| s.consumer(|m| m.estimated_out_of_depth),
    ),
    MetricDoc::counter(
        "stream_exporter_dead_letters_total",
        &[],
        "Events that could not be exported, kept in the dead-letter file.",
        |s| one(s.view.pipeline.committer.dead_letters.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_file_downloads_total",
        &["outcome"],
        "Attached file downloads, by outcome (ok, failed, refused, too_large).",
        |s| {
            let stream = s.stream();
            [
                ("ok", &stream.files_ok),
                ("failed", &stream.files_failed),
                ("refused", &stream.files_refused),
                ("too_large", &stream.files_too_large),
            ]
            .iter()
            .map(|(outcome, count)| (vec![outcome.to_string()], count.load(Relaxed)))
            .collect()
        },
    ),
    MetricDoc::counter(
        "stream_exporter_file_download_bytes_total",
        &[],
        "Bytes of attached files downloaded.",
        |s| one(s.stream().file_bytes.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_file_download_retries_total",
        &[],
        "Attached file downloads that failed transiently and were tried again.",
        |s| one(s.stream().file_retries.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_files_missing_total",
        &[],
        "Attached files exported without their content, each recorded in missing-files.ndjson next to the WAL.",
        |s| one(s.stream().files_missing.load(Relaxed)),
    ),
    MetricDoc::gauge(
        "stream_exporter_opencti_registered",
        &[],
        "1 once the connector is registered on OpenCTI.",
        |s| flag(s.view.api.registered.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_opencti_register_errors_total",
        &[],
        "Registration attempts that failed (retried in the background).",
        |s| one(s.view.api.register_errors.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_state_resets_total",
        &[],
        "State resets requested from the OpenCTI UI and honoured.",
        |s| one(s.view.api.resets.load(Relaxed)),
    ),
    MetricDoc::counter(
        "stream_exporter_state_resets_refused_total",
        &[],
        "State reset answers from OpenCTI not honoured (too soon after the last one, or before the platform stored the state sent after it).",
        |s| one(s.view.api.resets_refused.load(Relaxed)),
    ),
];

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

/// The collector: everything is read when encoded, family by family in [`CATALOGUE`] order.
#[derive(Debug)]
struct Scrape {
    view: DaemonView,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let scraped = Scraped::of(&self.view);
        for doc in CATALOGUE {
            doc.encode(&scraped, &mut encoder)?;
        }
        Ok(())
    }
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
            doc.name,
            doc.kind(),
            labels,
            doc.help
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
            .map(|doc| match doc.kind() {
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
                doc.kind() == "counter",
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
