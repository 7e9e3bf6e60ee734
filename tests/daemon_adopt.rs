//! A new WAL starts from what was already delivered: the real binary, the simulator's platform
//! state and the in-process S3 server. Switching from the stock connector (its state on the
//! platform), a destination ahead of a stale platform state, a destination alone, nothing at all,
//! a destination that cannot be listed at the first start, and a lost volume.

mod support;

use opencti_stream_exporter::ids::EventId;
use opencti_stream_exporter::sink::{BodySource, Compression, S3Sink, Sink, object_key};
use serde_json::json;
use simulator::SimulatorHandle;
use support::daemon::*;
use support::s3::TestS3;

const RECOVER_STOCK: &str = "2020-01-01T00:00:00Z";

fn live_id(sim: &SimulatorHandle, index: usize) -> String {
    sim.live_ids()[index].to_string()
}

/// A daemon exporting `sim` to `s3` with small files, from just before the live log.
fn harness(sim: &SimulatorHandle, s3: &TestS3) -> Harness {
    Harness::new(sim)
        .s3(s3, BUCKET)
        .live_log_only(sim)
        .set("WRITE_MAX_BYTES", "64KiB")
}

/// Uploads a file the way an earlier exporter left it: lines with the given ids, then a
/// dependency of a later event (its id is not delivered yet: its trigger is not in the file).
async fn plant_file(s3: &TestS3, number: u64, ts_ms: u64, ids: &[String], dependency: &str) {
    s3.create_bucket(BUCKET);
    let mut body = String::new();
    for id in ids {
        body.push_str(&json!({"id": id, "type": "create", "data": {"id": id}}).to_string());
        body.push('\n');
    }
    body.push_str(
        &json!({"id": dependency, "type": "create", "origin": {"referer": "init-dependencies"},
                "data": {}})
        .to_string(),
    );
    body.push('\n');
    let sink = S3Sink::new(s3.settings(BUCKET)).expect("an S3 client");
    sink.put(
        &object_key(FOLDER, ts_ms, number, Compression::None),
        &BodySource::from_bytes(body.into_bytes()),
    )
    .await
    .expect("planting a file");
}

/// Waits until the last live event is uploaded, stops the daemon, and returns the export read
/// from file `first_number` on.
async fn run_to_the_end(
    sim: &SimulatorHandle,
    s3: &TestS3,
    daemon: &mut Daemon,
    first_number: u64,
) -> Export {
    let last = sim.live_ids().last().expect("a live log").to_string();
    wait_until("the last live event is uploaded", secs(90), || {
        last_s3_line_id(s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    read_s3_export_from(s3, BUCKET, first_number).await
}

fn adopted_log(daemon: &Daemon) -> serde_json::Value {
    let logs = daemon.log_messages("adopted what was already delivered");
    assert_eq!(logs.len(), 1, "one adoption line: {logs:?}");
    logs[0].clone()
}

fn first_id_after(lines: &[bytes::Bytes], after: &str) {
    let after = EventId::parse(after).expect("a stream id");
    for line in lines {
        let id = EventId::parse(&line_id(line)).expect("a stream id");
        assert!(
            id > after,
            "{id} exported again, but {after} was already delivered"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_from_the_stock_connector_continues_its_numbering_and_position() {
    let sim = start_simulator(simulator_config(1001, 600)).await;
    let s3 = TestS3::start();
    let delivered = live_id(&sim, 199);
    // The stock `start_from` runs ahead of the files written: it must not be used.
    sim.set_connector_state(Some(
        json!({"start_from": live_id(&sim, 350), "last_written_msg_id": delivered,
               "recover_until": RECOVER_STOCK, "file_count": 41})
        .to_string(),
    ));
    let harness = harness(&sim, &s3);
    let mut daemon = harness.spawn();
    let export = run_to_the_end(&sim, &s3, &mut daemon, 42).await;

    export.assert_importable("json");
    assert_eq!(
        export.files[0].number, 42,
        "numbering goes on after file_count"
    );
    first_id_after(&export.lines, &delivered);
    let oracle = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(
        oracle.is_ok(),
        "nothing after the delivered position is missing: {oracle}"
    );
    assert!(
        sim.expectation().live.len() >= 400,
        "the stream resumed right after the delivered position"
    );

    let log = adopted_log(&daemon);
    assert_eq!(log["level"], "WARN");
    assert_eq!(log["from"], "platform");
    assert_eq!(log["start_from"], delivered.as_str());
    assert_eq!(log["next_file_number"], 42);
    assert!(
        log["message"]
            .as_str()
            .is_some_and(|m| m.contains("CONNECTOR_LIVE_STREAM_START_TIMESTAMP")),
        "{log}"
    );
    let status = harness.status().await;
    assert_eq!(status["adopted"]["from"], json!(["platform"]));
    assert_eq!(status["adopted"]["platform_file_count"], 41);
    assert_eq!(status["recover_until"], RECOVER_STOCK);
    assert_eq!(daemon.errors(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_ahead_of_a_stale_platform_state_wins() {
    let sim = start_simulator(simulator_config(1002, 500)).await;
    let s3 = TestS3::start();
    sim.set_connector_state(Some(
        json!({"start_from": live_id(&sim, 100), "last_written_msg_id": live_id(&sim, 100),
               "recover_until": RECOVER_STOCK, "file_count": 5})
        .to_string(),
    ));
    // Files 6 and 7 were written after the platform's last ping; file 7 ends at event 150.
    let ids: Vec<String> = (101..=150).map(|i| live_id(&sim, i)).collect();
    let future_ts = opencti_stream_exporter::ids::now_ms() + 3_600_000;
    plant_file(&s3, 6, future_ts - 1, &ids[..10], &ids[10]).await;
    plant_file(&s3, 7, future_ts, &ids[10..], &live_id(&sim, 151)).await;

    let harness = harness(&sim, &s3);
    let mut daemon = harness.spawn();
    let export = run_to_the_end(&sim, &s3, &mut daemon, 6).await;
    // Numbering and key order go on from the planted files (their timestamp is in the future).
    export.assert_importable("json");
    let ours = &export.lines[ids.len() + 2..];
    first_id_after(ours, &live_id(&sim, 150));
    let oracle = sim.check_export(ours.iter().map(|line| line.as_ref()));
    assert!(oracle.is_ok(), "{oracle}");
    let log = adopted_log(&daemon);
    assert_eq!(log["from"], "platform+destination");
    assert_eq!(log["start_from"], live_id(&sim, 150).as_str());
    assert_eq!(log["destination_position"], live_id(&sim, 150).as_str());
    assert_eq!(log["platform_position"], live_id(&sim, 100).as_str());
    assert_eq!(log["next_file_number"], 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_alone_is_enough_evidence() {
    let sim = start_simulator(simulator_config(1003, 400)).await;
    let s3 = TestS3::start();
    let ids: Vec<String> = (0..=60).map(|i| live_id(&sim, i)).collect();
    plant_file(&s3, 3, 1_700_000_000_000, &ids, &live_id(&sim, 61)).await;

    let harness = harness(&sim, &s3);
    let mut daemon = harness.spawn();
    let export = run_to_the_end(&sim, &s3, &mut daemon, 3).await;
    export.assert_importable("json");
    let ours = &export.lines[ids.len() + 1..];
    first_id_after(ours, &ids[60]);
    let oracle = sim.check_export(ours.iter().map(|line| line.as_ref()));
    assert!(oracle.is_ok(), "{oracle}");
    let log = adopted_log(&daemon);
    assert_eq!(log["from"], "destination");
    assert_eq!(log["next_file_number"], 4);
    // A position from the destination alone resumes without recovery.
    assert_eq!(harness.status().await["recover_until"], "disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_delivered_the_first_start_is_the_configured_one() {
    let sim = start_simulator(simulator_config(1004, 200)).await;
    let export_dir = tempfile::tempdir().expect("export dir");
    let harness = Harness::new(&sim)
        .export_dir(&export_dir.path().join("not-created-yet"))
        .live_log_only(&sim);
    let mut daemon = harness.spawn();
    let last = sim.live_ids().last().expect("a live log").to_string();
    wait_until("the last live event is exported", secs(60), || {
        last_dir_line_id(&export_dir.path().join("not-created-yet")).as_deref()
            == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let export = read_dir_export(&export_dir.path().join("not-created-yet")).await;
    export.assert_importable("json");
    assert_same_lines(&export.lines, &expected_lines(&sim).await);
    assert!(
        daemon
            .log_messages("adopted what was already delivered")
            .is_empty()
    );
    assert!(harness.status().await.get("adopted").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_unlisted_at_the_first_start_is_checked_before_the_first_upload() {
    let sim = start_simulator(simulator_config(1005, 200)).await;
    let s3 = TestS3::start();
    sim.set_connector_state(Some(
        json!({"last_written_msg_id": live_id(&sim, 20), "recover_until": RECOVER_STOCK,
               "file_count": 41})
        .to_string(),
    ));
    // Someone else's export went on to file 45; S3 is down when the new WAL starts.
    plant_file(
        &s3,
        45,
        1_700_000_000_000,
        &[live_id(&sim, 30)],
        &live_id(&sim, 31),
    )
    .await;
    s3.stop();
    let harness = harness(&sim, &s3);
    let mut daemon = harness.spawn();
    wait_until("adoption from the platform alone", secs(30), || {
        !daemon
            .log_messages("adopted what was already delivered")
            .is_empty()
    })
    .await;
    let log = adopted_log(&daemon);
    assert_eq!(log["destination_unchecked"], true);
    assert_eq!(log["next_file_number"], 42);
    s3.restart();
    wait_until("uploads are held", secs(30), || {
        daemon
            .log_messages("uploads are held until the destination is checked")
            .iter()
            .any(|line| {
                line["problem"]
                    .as_str()
                    .is_some_and(|p| p.contains("file 45"))
            })
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let keys = s3_keys(&s3, BUCKET);
    assert_eq!(
        keys.len(),
        1,
        "nothing uploaded over the destination's numbering: {keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_volume_resumes_after_the_last_upload_without_reusing_a_number() {
    // Paced, so the first daemon is killed in the middle of the stream, not after its end.
    let mut config = simulator_config(1006, 8000);
    config.rate = Some(1_000);
    let sim = start_simulator(config).await;
    let s3 = TestS3::start();
    // Only the ping after each upload can keep the platform's state current.
    let harness = harness(&sim, &s3).set("OPENCTI_PING_INTERVAL_SEC", "3600");
    let mut daemon = harness.spawn();
    wait_until("a few files uploaded", secs(60), || {
        s3_keys(&s3, BUCKET).len() >= 3
    })
    .await;
    let uploaded = s3_keys(&s3, BUCKET).len() as u64;
    wait_until("the platform holds the uploaded state", secs(20), || {
        sim.connector_state()
            .and_then(|state| serde_json::from_str::<serde_json::Value>(&state).ok())
            .is_some_and(|state| state["file_count"].as_u64() >= Some(uploaded))
    })
    .await;
    daemon.kill();
    let highest = s3_keys(&s3, BUCKET).len() as u64;
    std::fs::remove_dir_all(harness.wal_dir()).expect("the volume is lost");

    let mut daemon = harness.spawn();
    // The new daemon has adopted (it is past start-up and handles SIGTERM) before the export is
    // awaited: the files the first one uploaded may already hold the last event.
    wait_until("the new daemon adopted", secs(30), || {
        !daemon
            .log_messages("adopted what was already delivered")
            .is_empty()
    })
    .await;
    let export = run_to_the_end(&sim, &s3, &mut daemon, 1).await;
    // Gapless, no number reused, nothing missing; duplicates only of what was re-sent after the
    // adopted position.
    export.assert_importable_with_replays("json");
    let oracle = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(oracle.is_ok(), "{oracle}");
    let log = adopted_log(&daemon);
    assert_eq!(log["next_file_number"], highest + 1);
    assert_eq!(log["from"], "platform+destination");
}
