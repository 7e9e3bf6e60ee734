//! docs/architecture.md#invariant-4, "no replay from OpenCTI because of S3": the real binary
//! streams from the simulator into a real S3 server; the S3 server is stopped in the middle of the
//! stream and restarted later. The stream connection is never dropped for it (one connection, every
//! event served once), the backlog piles up on disk as sealed files, and drains, in order, once S3
//! is back.

mod support;

use support::daemon::*;
use support::s3::TestS3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_outage_costs_no_reconnection_and_the_backlog_drains_after() {
    let mut config = simulator_config(201, 4_000);
    // About eight seconds of stream, so the outage happens while events keep coming.
    config.rate = Some(500);
    let sim = start_simulator(config).await;
    let s3 = TestS3::start();
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .live_log_only(&sim)
        .set("WRITE_MAX_BYTES", "128KiB");
    let wal = harness.wal_dir();
    let last = sim.live_ids().last().expect("a live log").to_string();

    let mut daemon = harness.spawn();
    wait_until("two files uploaded", secs(30), || {
        s3_keys(&s3, BUCKET).len() >= 2
    })
    .await;

    s3.stop();
    let uploaded_before_outage = s3_keys(&s3, BUCKET);
    let served_at_outage = sim.served_events();
    let waiting_at_outage = segment_files(&wal);
    wait_until(
        "the backlog to grow on disk while S3 is down",
        secs(40),
        || {
            sim.served_events() >= served_at_outage + 1_500
                && segment_files(&wal) >= waiting_at_outage + 8
        },
    )
    .await;
    let waiting_during_outage = segment_files(&wal);
    assert!(
        sim.served_events() < sim.live_len(),
        "the outage must happen mid-stream"
    );
    assert_eq!(
        s3_keys(&s3, BUCKET).len(),
        uploaded_before_outage.len(),
        "nothing can be uploaded while S3 is down"
    );
    assert_eq!(
        sim.connection_attempts(),
        1,
        "the outage caused no reconnection to OpenCTI"
    );

    s3.restart();
    wait_until("the last live event is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    wait_until(
        "every sealed file is uploaded and deleted",
        secs(30),
        || segment_files(&wal) == 0,
    )
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));

    let export = read_s3_export(&s3, BUCKET).await;
    export.assert_importable("json");
    for key in &uploaded_before_outage {
        assert!(
            export.files.iter().any(|file| &file.key == key),
            "{key} was kept"
        );
    }
    let expected = expected_lines(&sim).await;
    assert_same_lines(&export.lines, &expected);
    let served = sim.served();
    assert_eq!(
        served.connections.len(),
        1,
        "a single connection to OpenCTI"
    );
    assert_eq!(
        served.data_events(),
        export.len() as u64,
        "every event was served exactly once"
    );
    let oracle = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(oracle.is_ok(), "{oracle}");
    assert_eq!(oracle.duplicates, 0);
    assert!(
        waiting_during_outage >= 8,
        "sealed files waited on disk during the outage"
    );
    assert!(
        !daemon
            .log_messages("upload failed; retrying until it works")
            .is_empty(),
        "the outage was logged"
    );
    assert!(
        !daemon.log_messages("uploads work again").is_empty(),
        "the recovery was logged"
    );
}

/// S3 down from the start: the bucket cannot even be prepared, yet the stream is read to its end
/// into the WAL; once S3 is up, the bucket is created and everything uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_down_at_start_up_does_not_hold_the_stream() {
    let sim = start_simulator(simulator_config(202, 600)).await;
    let last = sim.live_ids().last().expect("a live log").to_string();
    let s3 = TestS3::start();
    s3.stop();
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .live_log_only(&sim)
        .set("WRITE_MAX_BYTES", "128KiB");
    let wal = harness.wal_dir();

    let mut daemon = harness.spawn();
    wait_until(
        "the whole stream read and sealed while S3 is down",
        secs(30),
        || {
            let served_last = sim
                .served()
                .connections
                .iter()
                .flat_map(|c| c.keys())
                .any(|key| key.id.to_string() == last);
            served_last && segment_files(&wal) >= 5
        },
    )
    .await;
    assert!(!s3.bucket_exists(BUCKET), "the bucket could not be created");

    s3.restart();
    wait_until("the last live event is uploaded", secs(30), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let export = read_s3_export(&s3, BUCKET).await;
    export.assert_importable("json");
    assert_same_lines(&export.lines, &expected_lines(&sim).await);
    assert_eq!(sim.connection_attempts(), 1, "no reconnection to OpenCTI");
    assert!(
        !daemon
            .log_messages("cannot prepare the destination")
            .is_empty(),
        "the failure to create the bucket was logged"
    );
}
