//! A sealed segment damaged on disk (invariants 2, 3 and 7, docs/architecture.md#invariants): it is
//! detected by its size or its checksum, never uploaded, no later file overtakes it, ingestion goes
//! on, `status`, `/readyz`, `/status` and the logs report it; and the operator's way out,
//! `quarantine N`, keeps the importer's numbering gapless, records exactly what was lost, and lets
//! uploads go on.

mod support;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use simulator::oracle::line_identity;
use simulator::{Role, SimulatorHandle};
use support::daemon::{
    BUCKET, Daemon, Harness, last_s3_line_id, read_s3_export, s3_keys, secs, simulator_config,
    start_simulator, wait_until,
};
use support::s3::TestS3;

/// The file of segment `number` in the WAL directory `wal`.
fn segment_path(wal: &Path, number: u64) -> PathBuf {
    wal.join("segments")
        .join(format!("{number:020}.ndjson.zst"))
}

fn last_live_id(sim: &SimulatorHandle) -> String {
    sim.live_ids().last().expect("a live log").to_string()
}

/// Exports the live log with S3 down, so it stays in sealed segments; returns once the daemon
/// stopped with everything durable. Returns the harness (its endpoint on the returned port) and
/// the plain lines of segment 1.
async fn sealed_but_not_uploaded(sim: &SimulatorHandle, s3: &TestS3) -> (Harness, u16, Vec<Bytes>) {
    s3.stop();
    let (harness, port) = support::ops::with_endpoint(
        Harness::new(sim)
            .s3(s3, BUCKET)
            .live_log_only(sim)
            .set("WRITE_MAX_BYTES", "256KiB"),
    );
    let mut daemon = harness.spawn();
    let last = last_live_id(sim);
    wait_until_durable(port, &last).await;
    wait_until("at least 3 sealed segments", secs(60), || {
        support::daemon::segment_files(&harness.wal_dir()) >= 3
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
    let status = harness.status().await;
    assert_eq!(
        status["cursor"],
        last.as_str(),
        "everything read is durable"
    );
    let stored = std::fs::read(segment_path(&harness.wal_dir(), 1)).expect("segment 1");
    let plain = zstd::decode_all(stored.as_slice()).expect("segment 1 decompresses");
    let lines = plain
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(Bytes::copy_from_slice)
        .collect();
    (harness, port, lines)
}

/// Waits until the running daemon's durable cursor is `id` (its `/status`).
async fn wait_until_durable(port: u16, id: &str) {
    support::ops::poll_until("the events are durable", secs(60), || async {
        support::ops::try_status(port)
            .await
            .is_some_and(|status| status["cursor"] == id)
    })
    .await;
}

fn upload_failures_of_kind(daemon: &Daemon, kind: &str) -> usize {
    daemon
        .log_messages("upload failed")
        .iter()
        .filter(|entry| entry["kind"] == kind)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_damaged_in_place_is_never_uploaded_and_quarantine_lets_uploads_go_on() {
    let sim = start_simulator(simulator_config(11, 1200)).await;
    let s3 = TestS3::start();
    let (harness, port, lost_lines) = sealed_but_not_uploaded(&sim, &s3).await;
    let wal = harness.wal_dir();

    // Damage segment 1 in place: same size, one byte changed in the middle.
    let path = segment_path(&wal, 1);
    let mut stored = std::fs::read(&path).expect("segment 1");
    let middle = stored.len() / 2;
    stored[middle] ^= 0x5a;
    std::fs::write(&path, &stored).expect("damaging segment 1");

    // The daemon finds it when it reads it for the upload, uploads nothing (no later file may
    // overtake it), and keeps reading the stream.
    s3.restart();
    let mut daemon = harness.spawn();
    wait_until("the upload of file 1 fails as damaged", secs(60), || {
        upload_failures_of_kind(&daemon, "damaged_segment") > 0
    })
    .await;
    sim.append_live_events(300);
    let last = last_live_id(&sim);
    // Ingestion goes on past the damaged file.
    wait_until_durable(port, &last).await;
    assert!(
        s3_keys(&s3, BUCKET).is_empty(),
        "nothing is uploaded while file 1 blocks: {:?}",
        s3_keys(&s3, BUCKET)
    );
    assert!(!daemon.has_exited(), "the daemon keeps running");
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));

    // status names it.
    let status = harness.status().await;
    assert_eq!(status["cursor"], last.as_str());
    let damaged = status["damaged_files"].as_array().expect("damaged_files");
    assert_eq!(damaged.len(), 1, "{status}");
    assert_eq!(damaged[0]["file_number"], 1);

    // Only the oldest file can be quarantined, and only a damaged one.
    let refused = harness.run_command(&["quarantine", "2"], secs(30)).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.stderr.contains("not the oldest"), "{refused:?}");

    let quarantined = harness.run_command(&["quarantine", "1"], secs(60)).await;
    assert_eq!(quarantined.code, Some(0), "{quarantined:?}");
    assert!(
        quarantined
            .stdout
            .contains(&format!("{} events were LOST", lost_lines.len())),
        "{quarantined:?}"
    );
    assert!(
        wal.join("quarantine")
            .join(format!("{:020}.ndjson.zst", 1))
            .exists(),
        "the damaged file is kept aside"
    );
    let status = harness.status().await;
    assert!(
        status["damaged_files"]
            .as_array()
            .expect("array")
            .is_empty()
    );
    let records = status["quarantined_files"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{status}");
    assert_eq!(records[0]["file_number"], 1);
    assert_eq!(records[0]["events"], lost_lines.len() as u64);
    assert_eq!(records[0]["already_uploaded"], false);
    let again = harness.run_command(&["quarantine", "1"], secs(30)).await;
    assert_eq!(again.code, Some(1), "file 1 is done: {again:?}");

    // Uploads go on from file 2; the importer reads an empty file 1, then everything else.
    let mut daemon = harness.spawn();
    wait_until("everything after file 1 is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
    let export = read_s3_export(&s3, BUCKET).await;
    export.assert_importable("json");
    assert!(
        export.files[0].body.is_empty(),
        "file 1 is the empty placeholder"
    );
    // What is missing is exactly what file 1 held.
    let report = sim.check_export(
        lost_lines
            .iter()
            .chain(&export.lines)
            .map(|line| line.as_ref()),
    );
    assert!(report.is_ok(), "{report}");
    // Without them, the oracle finds exactly file 1's live events missing (its dependency
    // events are not expected by themselves).
    let lost_live = lost_lines
        .iter()
        .filter(|line| line_identity(line).is_ok_and(|key| key.role == Role::Live))
        .count();
    assert!(lost_live > 0);
    let without = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert_eq!(without.losses, lost_live, "{without}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_segment_is_reported_at_start_and_by_status_and_never_uploaded() {
    let sim = start_simulator(simulator_config(12, 1000)).await;
    let s3 = TestS3::start();
    let (harness, _, _) = sealed_but_not_uploaded(&sim, &s3).await;
    let path = segment_path(&harness.wal_dir(), 1);
    let length = std::fs::metadata(&path).expect("segment 1").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_len(length / 2))
        .expect("truncating segment 1");

    s3.restart();
    let (harness, port) = support::ops::with_endpoint(harness);
    let mut daemon = harness.spawn();
    wait_until("the start-up reports the damaged file", secs(30), || {
        daemon
            .log_messages("sealed segment is damaged")
            .iter()
            .any(|entry| entry["file_number"] == 1)
    })
    .await;
    wait_until(
        "the upload of file 1 is refused as damaged",
        secs(30),
        || upload_failures_of_kind(&daemon, "damaged_segment") > 0,
    )
    .await;
    assert!(s3_keys(&s3, BUCKET).is_empty(), "nothing overtakes file 1");
    // The running daemon names it on /readyz and /status.
    support::ops::poll_until("/readyz names the damaged file", secs(30), || async {
        support::ops::get_json(port, "/readyz")
            .await
            .is_some_and(|(_, readiness)| {
                readiness["damaged_segment"]
                    .as_str()
                    .is_some_and(|why| why.contains("segment 1"))
            })
    })
    .await;
    let status = support::ops::status(port).await;
    assert_eq!(status["damaged_files"][0]["file_number"], 1, "{status}");
    assert!(status["live"]["damaged_segment"].is_string(), "{status}");
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));

    let status = harness.status().await;
    let damaged = status["damaged_files"].as_array().expect("damaged_files");
    assert_eq!(damaged.len(), 1, "{status}");
    assert_eq!(damaged[0]["file_number"], 1);
    let problem = damaged[0]["problem"].as_str().expect("a problem");
    assert!(problem.contains("bytes but"), "{problem}");
    let text = harness.run_command(&["status"], secs(30)).await;
    assert!(text.stdout.contains("DAMAGED file"), "{text:?}");
}
