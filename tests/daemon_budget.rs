//! docs/architecture.md#invariant-6, "bounded disk": with a small `WAL_MAX_BYTES` and S3 down, the
//! WAL fills up; the daemon then stops reading the stream (the pause is logged, the connection to
//! OpenCTI is closed and not reopened, nothing more is served), its WAL never grows past the
//! budget, and once S3 is back the backlog drains, reading resumes from the durable cursor, and
//! every event arrives.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use support::daemon::*;
use support::s3::TestS3;

/// The disk budget of the test: small enough that a few thousand events fill it, with room for
/// the database file (sled keeps a few MiB after a burst of writes and never shrinks it).
const BUDGET: u64 = 8 << 20;

/// What the budget counts: the database, the frame log and the sealed segments.
fn wal_usage(wal: &std::path::Path) -> u64 {
    database_bytes(wal) + dir_bytes(&wal.join("segments"))
}

/// The database and the frame log (the unsealed records).
fn database_bytes(wal: &std::path::Path) -> u64 {
    dir_bytes(&wal.join("db")) + dir_bytes(&wal.join("frames"))
}

/// Samples what the WAL takes on disk every few milliseconds, on its own thread, until stopped
/// (or dropped), and keeps the largest figure.
struct PeakSampler {
    peak: Arc<AtomicU64>,
    sampling: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakSampler {
    fn start(wal: std::path::PathBuf) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let sampling = Arc::new(AtomicBool::new(true));
        let thread = {
            let (peak, sampling) = (Arc::clone(&peak), Arc::clone(&sampling));
            std::thread::spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    peak.fetch_max(wal_usage(&wal), Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            })
        };
        Self {
            peak,
            sampling,
            thread: Some(thread),
        }
    }

    /// Stops sampling; returns the largest figure seen.
    fn stop(mut self) -> u64 {
        self.halt();
        self.peak.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.sampling.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_budget_pauses_reading_and_resumes_with_nothing_lost() {
    let mut config = simulator_config(401, 10_000);
    // Paced, so that each reconnection reads a little ahead rather than a socket's worth.
    config.rate = Some(4_000);
    let sim = start_simulator(config).await;
    let s3 = TestS3::start();
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .live_log_only(&sim)
        .set("WAL_MAX_BYTES", &BUDGET.to_string())
        .set("WRITE_MAX_BYTES", "256KiB")
        .set("QUEUE_SIZE", "100")
        .set(
            "CONNECTOR_LOG_LEVEL",
            "info,opencti_stream_exporter::pipeline::uploader=debug",
        );
    let wal = harness.wal_dir();
    let last = sim.live_ids().last().expect("a live log").to_string();

    let peak = PeakSampler::start(wal.clone());

    let started = Instant::now();
    let mut daemon = harness.spawn();
    wait_until("a first file uploaded", secs(30), || {
        !s3_keys(&s3, BUCKET).is_empty()
    })
    .await;
    s3.stop();

    // Reading pauses once the budget is used up. It may resume for a moment when a measurement
    // shows the database grew less than counted; with S3 down it soon stays paused: the
    // connection closed, nothing served, no reconnection, while the uploader keeps failing.
    let failures = |daemon: &Daemon| daemon.log_messages("upload failed").len();
    let all_closed = || sim.served().connections.iter().all(|c| c.end.is_some());
    let deadline = Instant::now() + secs(60);
    let mut observations = 0;
    let (served_when_paused, attempts_when_paused) = loop {
        observations += 1;
        wait_until(
            "reading to pause: budget full and the stream connection closed",
            secs(40),
            || {
                !daemon
                    .log_messages("disk budget (WAL_MAX_BYTES) is full")
                    .is_empty()
                    && all_closed()
            },
        )
        .await;
        let (served, attempts, failed) = (
            sim.served_events(),
            sim.connection_attempts(),
            failures(&daemon),
        );
        wait_until("three more failed upload attempts", secs(30), || {
            failures(&daemon) >= failed + 3
        })
        .await;
        if sim.served_events() == served && sim.connection_attempts() == attempts && all_closed() {
            break (served, attempts);
        }
        assert!(
            Instant::now() < deadline,
            "reading never stayed paused while S3 was down"
        );
    };
    assert!(
        !sim.served()
            .connections
            .iter()
            .flat_map(|c| c.keys())
            .any(|key| key.id.to_string() == last),
        "reading paused before the end of the stream"
    );
    let paused_after = started.elapsed();
    let usage_paused = wal_usage(&wal);
    let database_paused = database_bytes(&wal);

    s3.restart();
    wait_until("the last live event is uploaded", secs(120), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    let drained_after = started.elapsed();
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let peak = peak.stop();

    eprintln!(
        "WAL peak {peak} bytes (budget {BUDGET}), {usage_paused} while paused, {database_paused} of them the database; {served_when_paused} \
         events served before the pause (observed {observations} time(s)), {} in all; paused after {paused_after:?}, all uploaded after {drained_after:?}",
        sim.served_events()
    );
    let export = read_s3_export(&s3, BUCKET).await;
    export.assert_importable("json");
    let oracle = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(oracle.is_ok(), "{oracle}");
    assert!(
        sim.connection_attempts() > attempts_when_paused,
        "reading resumed with a new connection"
    );
    assert!(
        !daemon.log_messages("disk budget has room again").is_empty(),
        "the resume was logged"
    );
    assert!(
        peak <= BUDGET,
        "the WAL took {peak} bytes, more than its budget of {BUDGET}"
    );
}
