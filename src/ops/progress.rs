//! The progress line: while a backlog of files drains (after an S3 outage, or a first-run
//! recovery), one INFO line every [`PROGRESS_EVERY`]: files left, bytes left, upload rate and the
//! estimated time until the backlog is empty. When uploads make no progress, a WARN line at most
//! every [`STALLED_EVERY`] instead (the uploader logs the failure itself, once); when the backlog
//! is gone, one last line.
//!
//! The time to empty uses the *net* drain rate (bytes left now against bytes left at the last
//! line), so it stays honest while new events keep arriving; when the backlog is not shrinking
//! the line says so instead of promising a time.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ids::now_ms;
use crate::status::human_bytes;
use crate::view::DaemonView;

/// How often the progress line is logged while a backlog drains.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// How often a stalled backlog is reported.
pub const STALLED_EVERY: Duration = Duration::from_secs(300);
/// Files waiting from which the backlog counts as large.
pub const MIN_FILES: u64 = 3;

/// What the backlog looked like at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When, Unix ms.
    pub at_ms: u64,
    /// Sealed files waiting for upload.
    pub files_waiting: u64,
    /// Raw bytes left: files waiting plus events not sealed yet.
    pub bytes_left: u64,
    /// Raw bytes uploaded since start-up (a counter).
    pub uploaded_bytes: u64,
}

impl Sample {
    /// The backlog of `view` now.
    pub fn of(view: &DaemonView) -> Self {
        let segments = view.wal.segments();
        let waiting: u64 = segments.iter().map(|s| s.raw_bytes).sum();
        Self {
            at_ms: now_ms(),
            files_waiting: segments.len() as u64,
            bytes_left: waiting + view.wal.backlog().raw_bytes,
            uploaded_bytes: view
                .pipeline
                .uploader
                .bytes
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// A line to log.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// Files are being uploaded.
    Draining {
        /// Files waiting.
        files_left: u64,
        /// Bytes left.
        bytes_left: u64,
        /// Upload rate since the last sample, bytes per second.
        upload_rate: f64,
        /// Time until empty at the net drain rate; `None` when the backlog is not shrinking.
        time_to_empty: Option<Duration>,
    },
    /// Nothing was uploaded since the last sample.
    Stalled {
        /// Files waiting.
        files_left: u64,
        /// Bytes left.
        bytes_left: u64,
    },
    /// The backlog fell below [`MIN_FILES`] after being reported.
    Drained,
}

/// Decides, sample after sample, what to log.
#[derive(Debug, Default)]
pub struct Progress {
    last: Option<Sample>,
    reporting: bool,
    last_stalled_ms: Option<u64>,
}

impl Progress {
    /// Takes the next sample (taken about [`PROGRESS_EVERY`] after the previous one).
    pub fn observe(&mut self, sample: Sample) -> Option<Line> {
        let previous = self.last.replace(sample);
        if sample.files_waiting < MIN_FILES {
            let drained = std::mem::take(&mut self.reporting);
            self.last_stalled_ms = None;
            return drained.then_some(Line::Drained);
        }
        let previous = previous?;
        let seconds = sample.at_ms.saturating_sub(previous.at_ms) as f64 / 1000.0;
        if seconds <= 0.0 {
            return None;
        }
        self.reporting = true;
        let uploaded = sample
            .uploaded_bytes
            .saturating_sub(previous.uploaded_bytes);
        if uploaded == 0 {
            let due = self.last_stalled_ms.is_none_or(|at| {
                sample.at_ms.saturating_sub(at) >= STALLED_EVERY.as_millis() as u64
            });
            if !due {
                return None;
            }
            self.last_stalled_ms = Some(sample.at_ms);
            return Some(Line::Stalled {
                files_left: sample.files_waiting,
                bytes_left: sample.bytes_left,
            });
        }
        self.last_stalled_ms = None;
        let drained = previous.bytes_left.saturating_sub(sample.bytes_left) as f64 / seconds;
        Some(Line::Draining {
            files_left: sample.files_waiting,
            bytes_left: sample.bytes_left,
            upload_rate: uploaded as f64 / seconds,
            time_to_empty: (drained > 0.0)
                .then(|| Duration::from_secs_f64(sample.bytes_left as f64 / drained)),
        })
    }
}

/// Logs the progress line every `every` until `cancel` fires.
pub async fn run(view: DaemonView, every: Duration, cancel: CancellationToken) {
    let mut progress = Progress::default();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = cancel.cancelled() => return,
        }
        match progress.observe(Sample::of(&view)) {
            Some(line) => log(&view, &line),
            None => continue,
        }
    }
}

fn log(view: &DaemonView, line: &Line) {
    match line {
        Line::Draining {
            files_left,
            bytes_left,
            upload_rate,
            time_to_empty,
        } => {
            let eta = match time_to_empty {
                Some(eta) => format!("empty in about {}", human_duration(*eta)),
                None => "not shrinking: events arrive as fast as they are uploaded".to_string(),
            };
            tracing::info!(
                files_left,
                bytes_left,
                upload_bytes_per_second = *upload_rate as u64,
                time_to_empty_seconds = time_to_empty.map(|eta| eta.as_secs()),
                "draining the backlog: {files_left} files ({}) left, uploading {}/s, {eta}",
                human_bytes(*bytes_left),
                human_bytes(*upload_rate as u64),
            );
        }
        Line::Stalled {
            files_left,
            bytes_left,
        } => {
            let failing = view.pipeline.uploader.failing();
            tracing::warn!(
                files_left,
                bytes_left,
                failing = failing.as_deref().unwrap_or("-"),
                "backlog of {files_left} files ({}) is not draining: no upload succeeded lately; \
                 events are kept in the WAL meanwhile",
                human_bytes(*bytes_left),
            );
        }
        Line::Drained => tracing::info!("the backlog of files is drained"),
    }
}

/// `1 h 05 min`, `3 min 20 s`, `12 s`.
pub fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {:02} s", secs / 60, secs % 60),
        _ => format!("{} h {:02} min", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: u64, files: u64, left: u64, uploaded: u64) -> Sample {
        Sample {
            at_ms: at_s * 1000,
            files_waiting: files,
            bytes_left: left,
            uploaded_bytes: uploaded,
        }
    }

    #[test]
    fn a_draining_backlog_reports_rate_and_time_to_empty() {
        let mut progress = Progress::default();
        assert_eq!(progress.observe(sample(0, 10, 10_000, 0)), None);
        let line = progress.observe(sample(10, 8, 8_000, 3_000));
        assert_eq!(
            line,
            Some(Line::Draining {
                files_left: 8,
                bytes_left: 8_000,
                upload_rate: 300.0,
                // 2,000 bytes net in 10 s: 8,000 bytes take 40 s.
                time_to_empty: Some(Duration::from_secs(40)),
            })
        );
        // Uploads as fast as arrivals: no promise.
        let line = progress.observe(sample(20, 8, 8_000, 6_000));
        assert!(matches!(
            line,
            Some(Line::Draining {
                time_to_empty: None,
                ..
            })
        ));
        // Below the threshold: one last line, then silence.
        assert_eq!(
            progress.observe(sample(30, 2, 2_000, 12_000)),
            Some(Line::Drained)
        );
        assert_eq!(progress.observe(sample(40, 0, 0, 14_000)), None);
    }

    #[test]
    fn a_stalled_backlog_is_reported_rarely() {
        let mut progress = Progress::default();
        assert_eq!(progress.observe(sample(0, 5, 5_000, 0)), None);
        assert!(matches!(
            progress.observe(sample(10, 5, 5_000, 0)),
            Some(Line::Stalled { .. })
        ));
        assert_eq!(progress.observe(sample(20, 6, 6_000, 0)), None);
        assert!(matches!(
            progress.observe(sample(10 + STALLED_EVERY.as_secs(), 9, 9_000, 0)),
            Some(Line::Stalled { files_left: 9, .. })
        ));
    }

    #[test]
    fn a_small_backlog_says_nothing() {
        let mut progress = Progress::default();
        for t in 0..5 {
            assert_eq!(progress.observe(sample(t * 10, 2, 100, t * 50)), None);
        }
    }

    /// Log output captured from the current thread's subscriber.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        }
    }

    /// Polls until the captured text contains `needle` (at most 10 s).
    async fn wait_for(logs: &Captured, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !logs.text().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the logs: {}",
                logs.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_task_logs_a_draining_backlog_then_its_end() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().expect("temp dir");
        let view = crate::view::test_view(dir.path());
        let line = bytes::Bytes::from(vec![b'x'; 1000]);
        for n in 0..5u64 {
            view.wal
                .appender()
                .append(vec![line.clone(); 10], Some(format!("{n}-1")))
                .await
                .expect("durable");
            view.wal
                .seal(1 << 20, 1_718_000_000_000 + n)
                .expect("sealed")
                .expect("a segment");
        }
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(view.clone(), Duration::from_millis(20), cancel.clone()));
        // Files leave as if uploaded: the uploader's byte counter moves with them.
        let upload = |count: usize| {
            for segment in view.wal.segments().into_iter().take(count) {
                view.wal
                    .mark_uploaded(segment.number, now_ms())
                    .expect("marked");
                view.pipeline
                    .uploader
                    .bytes
                    .fetch_add(segment.raw_bytes, std::sync::atomic::Ordering::Relaxed);
            }
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        upload(1);
        wait_for(&logs, "draining the backlog: 4 files (39.1 KiB) left").await;
        upload(4);
        wait_for(&logs, "the backlog of files is drained").await;
        cancel.cancel();
        task.await.expect("the task stops");
        assert!(logs.text().contains("empty in about"), "{}", logs.text());
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_secs(12)), "12 s");
        assert_eq!(human_duration(Duration::from_secs(200)), "3 min 20 s");
        assert_eq!(human_duration(Duration::from_secs(3900)), "1 h 05 min");
    }
}
