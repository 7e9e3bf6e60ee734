//! The daemon end to end, the plain case: the real binary reads the simulator's live log and
//! uploads it to a real S3 server (s3s, SigV4). Every event arrives, in order, in gapless
//! numbered files the stock importer reads, each line byte for byte the transform of its event.

mod support;

use support::daemon::*;
use support::s3::TestS3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_live_event_is_uploaded_in_order_as_its_transform() {
    let sim = start_simulator(simulator_config(101, 3_000)).await;
    let s3 = TestS3::start();
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .live_log_only(&sim)
        .set("WRITE_MAX_BYTES", "256KiB");
    let last = sim.live_ids().last().expect("a live log").to_string();

    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(50), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    let exit = daemon.terminate(secs(20)).await;
    assert_eq!(exit.code(), Some(0), "SIGTERM exits with 0");

    let export = read_s3_export(&s3, BUCKET).await;
    let expected = expected_lines(&sim).await;
    export.assert_importable("json");
    assert_same_lines(&export.lines, &expected);
    assert!(
        export.files.len() >= 10,
        "WRITE_MAX_BYTES splits the export into many files, got {}",
        export.files.len()
    );
    for file in &export.files {
        assert!(
            file.body.len() <= 256 * 1024,
            "{} is larger than WRITE_MAX_BYTES",
            file.key
        );
    }
    let oracle = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(oracle.is_ok(), "{oracle}");
    assert_eq!(oracle.duplicates, 0, "one connection, nothing served twice");
    assert_eq!(sim.connection_attempts(), 1, "one connection was enough");
    assert_eq!(daemon.errors(), Vec::<String>::new(), "no error logged");

    // `verify` reads the bucket back through S3 as the importer would.
    let verify = harness.run_command(&["verify"], secs(30)).await;
    assert_eq!(verify.code, Some(0), "verify: {verify:?}");
    assert!(
        verify
            .stdout
            .contains(&format!("lines         {}", expected.len()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_compression_uploads_json_zst_objects_holding_the_plain_lines() {
    let sim = start_simulator(simulator_config(102, 800)).await;
    let s3 = TestS3::start();
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .live_log_only(&sim)
        .set("MINIO_COMPRESSION", "zstd")
        .set("WRITE_MAX_BYTES", "256KiB");
    let last = sim.live_ids().last().expect("a live log").to_string();

    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(50), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));

    let export = read_s3_export(&s3, BUCKET).await;
    let expected = expected_lines(&sim).await;
    assert!(export.files.len() >= 2, "several files");
    for file in &export.files {
        assert!(
            file.key.ends_with(".json.zst"),
            "{} is a .json.zst",
            file.key
        );
        assert!(
            file.body.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]),
            "{} is a zstd frame",
            file.key
        );
    }
    export.assert_importable("json.zst");
    assert_same_lines(&export.lines, &expected);
}
