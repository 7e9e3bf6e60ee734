//! Memory is bounded in bytes, end to end: the real daemon reads a stream carrying hostile events —
//! reports with many attachments at the size limit, and a 64 MiB payload of nested `[` — and its
//! peak resident set stays under a bound computed from its settings, while the stream goes on
//! (the whole live log is exported), the files over the caps are recorded as missing and the
//! nested payload is a dead letter.

mod support;

use simulator::{FailStatus, InjectedEvent};
use support::daemon::*;

const MIB: u64 = 1 << 20;
/// `FILES_MAX_BYTES`: the attachments are exactly this large.
const FILE_MAX: u64 = 4 * MIB;
/// `FILES_CONCURRENCY`.
const CONCURRENCY: u64 = 2;
/// `QUEUE_MAX_BYTES`.
const QUEUE_MAX: u64 = 16 * MIB;
/// `FILES_MAX_TOTAL_BYTES`: four attachments fit.
const TOTAL_MAX: u64 = 16 * MIB;
/// `FILES_MAX_PER_EVENT`.
const PER_EVENT: u32 = 12;
/// `STREAM_MAX_EVENT_BYTES`: the nested payload fits, so it reaches the transform.
const EVENT_MAX: u64 = 65 * MIB;
/// Attachments of each hostile report.
const ATTACHMENTS: u32 = 24;
/// Hostile reports in the stream.
const REPORTS: u32 = 3;

/// The bound on the peak resident set, from the settings: a base for the program itself (code,
/// runtime, WAL cache, buffers), the event being framed and its dead-letter line, twice the bytes
/// in flight and the downloads running (allocator slack), and an event's embedded files: as
/// downloaded (1×), as a base64 list (4/3×), inside the line with the top-level copy (8/3×), and
/// that line again on its way through the WAL, the sealed file and the upload (about 8/3×).
fn bound() -> u64 {
    64 * MIB + 2 * EVENT_MAX + 2 * (QUEUE_MAX + CONCURRENCY * FILE_MAX) + 8 * TOTAL_MAX
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_events_keep_the_peak_rss_under_the_bound_and_the_stream_goes_on() {
    let sim = start_simulator(simulator_config(1111, 400)).await;
    let faults = sim.faults();
    let report = InjectedEvent::ManyFiles {
        count: ATTACHMENTS,
        size: FILE_MAX as usize,
    };
    faults.inject_after(40, report);
    faults.inject_after(0, report);
    faults.inject_after(
        30,
        InjectedEvent::NestedArrays {
            bytes: 64 * MIB as usize,
        },
    );
    faults.inject_after(30, report);
    // A short outage of the file store on the way: retried, nothing more missing for it.
    faults.fail_next_storage(FailStatus::Internal, 3);
    let export = tempfile::tempdir().expect("export directory");
    let harness = Harness::new(&sim)
        .live_log_only(&sim)
        .export_dir(export.path())
        .set("FILES_MAX_BYTES", &FILE_MAX.to_string())
        .set("FILES_CONCURRENCY", &CONCURRENCY.to_string())
        .set("FILES_MAX_TOTAL_BYTES", &TOTAL_MAX.to_string())
        .set("FILES_MAX_PER_EVENT", &PER_EVENT.to_string())
        .set("QUEUE_MAX_BYTES", &QUEUE_MAX.to_string())
        .set("STREAM_MAX_EVENT_BYTES", &EVENT_MAX.to_string());
    let mut daemon = harness.spawn();
    let last = sim.live_ids().last().expect("a live log").to_string();
    wait_until("the whole live log exported", secs(180), || {
        last_dir_line_id(export.path()).as_deref() == Some(last.as_str())
    })
    .await;
    let peak = daemon.peak_rss_bytes();
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));

    assert!(
        peak <= bound(),
        "peak RSS {} MiB over the bound of {} MiB",
        peak / MIB,
        bound() / MIB
    );
    let wal = harness.wal_dir();
    let missing = lines(&wal.join("missing-files.ndjson"));
    let embedded_per_report = (TOTAL_MAX / FILE_MAX) as u32;
    assert_eq!(
        missing.len() as u32,
        REPORTS * (ATTACHMENTS - embedded_per_report),
        "every attachment past the caps is recorded, and only those"
    );
    assert!(missing.iter().all(|entry| {
        let reason = entry["reason"].as_str().unwrap_or("");
        reason.contains("FILES_MAX_TOTAL_BYTES") || reason.contains("FILES_MAX_PER_EVENT")
    }));
    let dead = lines(&wal.join("dead-letter.ndjson"));
    assert_eq!(dead.len(), 1, "the nested payload is the one dead letter");
    assert!(
        dead[0]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("deeper")),
        "{}",
        dead[0]["reason"]
    );
    let status = harness.status().await;
    assert_eq!(
        status["missing_files"]["records"],
        u64::from(REPORTS * (ATTACHMENTS - embedded_per_report))
    );
}
