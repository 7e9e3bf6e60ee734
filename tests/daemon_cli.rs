//! The binary's contract with its operator: a configuration error stops it with exit code 2 and
//! one line naming the variable; SIGTERM stops it with exit code 0, quickly, with everything it
//! had received durable (a restart uploads it, OpenCTI gone); `status` works on the stopped
//! daemon's WAL and reports the position, the backlog and the next file number.

mod support;

use opencti_stream_exporter::pipeline::dead_letter;
use simulator::{InjectedEvent, Role};
use support::daemon::*;
use support::proxy::{Fault, FaultProxy};
use support::s3::TestS3;

const TOKEN: &str = "token-that-must-never-be-printed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_error_exits_with_2_and_one_line_naming_the_variable() {
    let sim = start_simulator(simulator_config(701, 10)).await;
    let s3 = TestS3::start();
    let cases: [(&str, Option<&str>, &str); 6] = [
        ("OPENCTI_URL", None, "OPENCTI_URL"),
        ("CONNECTOR_ID", Some(""), "CONNECTOR_ID"),
        ("MINIO_PORT", Some("nine thousand"), "MINIO_PORT"),
        ("MINIO_COMPRESSION", Some("gzip"), "MINIO_COMPRESSION"),
        ("WAL_MAX_BYTES", Some("512KiB"), "WAL_MAX_BYTES"),
        // Twice WRITE_MAX_BYTES (16 MiB by default) is the least WAL_MAX_BYTES may be.
        ("WAL_MAX_BYTES", Some("24MiB"), "WAL_MAX_BYTES"),
    ];
    for (variable, value, named) in cases {
        let harness = Harness::new(&sim)
            .s3(&s3, BUCKET)
            .set("OPENCTI_TOKEN", TOKEN);
        let harness = match value {
            Some(value) => harness.set(variable, value),
            None => harness.unset(variable),
        };
        let output = harness.run_command(&[], secs(30)).await;
        let case = format!("{variable}={value:?}");
        assert_eq!(output.code, Some(2), "{case}: {output:?}");
        let lines: Vec<&str> = output.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{case}: one line, got {:?}", output.stderr);
        assert!(
            lines[0].contains(named),
            "{case}: the line names {named}: {}",
            lines[0]
        );
        assert!(output.stdout.is_empty(), "{case}: {}", output.stdout);
        assert!(!output.stderr.contains(TOKEN), "{case}: the token leaked");
        assert!(
            !harness.wal_dir().exists(),
            "{case}: nothing was started before the configuration was checked"
        );
    }
    assert_eq!(sim.connection_attempts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_with_0_and_everything_received_is_uploaded_after_a_restart() {
    let sim = start_simulator(simulator_config(702, 1_500)).await;
    let last = sim.live_ids().last().expect("a live log").to_string();
    let s3 = TestS3::start();
    // Nothing is sealed in the first run: what it received stays in the WAL's records.
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .live_log_only(&sim)
        .set("WRITE_EVERY_SEC", "3600");

    let no_wal = harness.run_command(&["status"], secs(30)).await;
    assert_eq!(no_wal.code, Some(1), "status without a WAL: {no_wal:?}");
    assert!(
        no_wal.stderr.contains("there is no WAL"),
        "{}",
        no_wal.stderr
    );

    let mut daemon = harness.spawn();
    wait_until("the simulator served the last live event", secs(30), || {
        sim.served()
            .connections
            .iter()
            .flat_map(|c| c.keys())
            .any(|key| key.role == Role::Live && key.id.to_string() == last)
    })
    .await;
    // An event that cannot be exported, served after everything else: once it is in the
    // dead-letter file, the pipeline has received every event before it.
    sim.faults().inject_after(0, InjectedEvent::InvalidJson);
    let dead_letters = harness.wal_dir().join(dead_letter::FILE_NAME);
    wait_until(
        "the invalid event in the dead-letter file",
        secs(30),
        || std::fs::metadata(&dead_letters).is_ok_and(|meta| meta.len() > 0),
    )
    .await;
    let exit = daemon.terminate(secs(20)).await;
    assert_eq!(exit.code(), Some(0), "SIGTERM exits with 0");
    assert!(
        !daemon
            .log_messages("stopping: finishing what is in flight")
            .is_empty()
    );
    assert_eq!(daemon.errors(), Vec::<String>::new(), "no error logged");
    assert!(s3_keys(&s3, BUCKET).is_empty(), "nothing was sealed yet");

    let expected = expected_lines(&sim).await;
    let status = harness.status().await;
    assert_eq!(status["cursor"], last.as_str(), "{status:#}");
    assert_eq!(
        status["backlog_events"],
        expected.len() as u64,
        "{status:#}"
    );
    assert_eq!(
        status["backlog_bytes"],
        expected.iter().map(|l| l.len() as u64 + 1).sum::<u64>(),
        "{status:#}"
    );
    assert_eq!(status["files_waiting"], 0, "{status:#}");
    assert_eq!(status["next_file_number"], 1, "{status:#}");
    assert!(status["last_upload"].is_null(), "{status:#}");
    assert_eq!(
        status["recover_until"], "2020-01-01T00:00:00Z",
        "{status:#}"
    );
    let text = harness.run_command(&["status"], secs(30)).await;
    assert_eq!(text.code, Some(0), "{text:?}");
    for expected_text in [
        format!("stream position       {last}"),
        format!("backlog (unsealed)    {} events", expected.len()),
        "next file number      1".to_string(),
        "last upload           none yet".to_string(),
    ] {
        assert!(text.stdout.contains(&expected_text), "{}", text.stdout);
    }
    assert!(!text.stdout.contains(TOKEN) && !text.stdout.contains("simulator-token"));

    // OpenCTI is gone: whatever the restart uploads comes from the WAL.
    let served = sim.served_events();
    sim.shutdown().await;
    let harness = harness.set("WRITE_EVERY_SEC", "1");
    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(30), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let export = read_s3_export(&s3, BUCKET).await;
    export.assert_importable("json");
    assert_same_lines(&export.lines, &expected);
    assert_eq!(served, expected.len() as u64, "each event served once");

    let status = harness.status().await;
    assert_eq!(status["backlog_events"], 0, "{status:#}");
    assert_eq!(status["files_waiting"], 0, "{status:#}");
    assert_eq!(
        status["next_file_number"],
        export.files.len() as u64 + 1,
        "{status:#}"
    );
    assert_eq!(
        status["last_upload"]["file_number"],
        export.files.len() as u64,
        "{status:#}"
    );
}

/// An upload that hangs does not hold the daemon: SIGTERM lets it run for the shutdown grace,
/// then abandons it and exits with 0; the file is uploaded after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_hung_upload_exits_with_0_after_the_grace() {
    let sim = start_simulator(simulator_config(703, 400)).await;
    let last = sim.live_ids().last().expect("a live log").to_string();
    let s3 = TestS3::start();
    let proxy = FaultProxy::start(s3.addr());
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .set("MINIO_PORT", &proxy.addr().port().to_string())
        .set("UPLOAD_TIMEOUT_SEC", "300")
        .live_log_only(&sim);

    let mut daemon = harness.spawn();
    wait_until("the bucket created", secs(30), || s3.bucket_exists(BUCKET)).await;
    proxy.set_fault(Fault::Hang);
    let puts = || {
        proxy
            .request_heads()
            .iter()
            .filter(|head| head.starts_with("PUT /exports/opencti/"))
            .count()
    };
    wait_until("an upload hanging", secs(30), || puts() >= 1).await;
    let asked = std::time::Instant::now();
    let exit = daemon.terminate(secs(40)).await;
    let took = asked.elapsed();
    eprintln!("stopped {took:?} after SIGTERM");
    assert_eq!(exit.code(), Some(0), "SIGTERM exits with 0");
    assert!(
        !daemon
            .log_messages("upload abandoned at shutdown")
            .is_empty(),
        "the hung upload was abandoned"
    );
    assert!(s3_keys(&s3, BUCKET).is_empty(), "nothing was uploaded");

    proxy.set_fault(Fault::Pass);
    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(30), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let export = read_s3_export(&s3, BUCKET).await;
    export.assert_importable("json");
    assert_same_lines(&export.lines, &expected_lines(&sim).await);
}

/// One WAL, one daemon: a second one on the same WAL_DIR stops at once with exit code 1 and
/// says why, and the first goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_wal_exits_with_1() {
    let sim = start_simulator(simulator_config(704, 300)).await;
    let last = sim.live_ids().last().expect("a live log").to_string();
    let s3 = TestS3::start();
    let harness = Harness::new(&sim).s3(&s3, BUCKET).live_log_only(&sim);
    let mut first = harness.spawn();
    wait_until("the first daemon connected", secs(30), || {
        sim.connection_attempts() == 1
    })
    .await;

    let second = harness.run_command(&["run"], secs(30)).await;
    assert_eq!(second.code, Some(1), "{second:?}");
    let wal = harness.wal_dir().display().to_string();
    assert!(
        second.stderr.contains(&wal) && second.stderr.to_lowercase().contains("lock"),
        "the error names the WAL and the lock: {}",
        second.stderr
    );
    assert_eq!(sim.connection_attempts(), 1, "the second never connected");

    wait_until("the last live event is uploaded", secs(30), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(first.terminate(secs(20)).await.code(), Some(0));
}

/// Switching from the stock connector: `import-state` seeds a new WAL from its state, and the
/// daemon goes on from its position with the next file number, without a gap or a renumbering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_state_continues_the_stock_connectors_position_and_numbering() {
    let sim = start_simulator(simulator_config(705, 800)).await;
    let ids = sim.live_ids();
    let (resume, last) = (ids[299].to_string(), ids[ids.len() - 1].to_string());
    let s3 = TestS3::start();
    let harness = Harness::new(&sim).s3(&s3, BUCKET);
    let state = format!(
        r#"{{"start_from": "{resume}", "last_written_msg_id": "{resume}", "recover_until": false, "file_count": 41}}"#
    );
    let imported = harness
        .run_command(&["import-state", &state], secs(30))
        .await;
    assert_eq!(imported.code, Some(0), "{imported:?}");
    let status = harness.status().await;
    assert_eq!(status["cursor"], resume.as_str(), "{status:#}");
    assert_eq!(status["next_file_number"], 42, "{status:#}");
    assert_eq!(status["recover_until"], "disabled", "{status:#}");

    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(30), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let export = read_s3_export_from(&s3, BUCKET, 42).await;
    export.assert_importable("json");
    let expected = expected_lines(&sim).await;
    assert_same_lines(&export.lines, &expected);
    assert_eq!(
        line_id(&export.lines[0]),
        ids[300].to_string(),
        "resumed after the position"
    );
    let request = &sim.served().connections[0].request;
    assert_eq!(request.last_event_id.as_deref(), Some(resume.as_str()));
    assert_eq!(
        request.recover, None,
        "no recovery: the stock state had none"
    );

    let again = harness
        .run_command(&["import-state", &state], secs(30))
        .await;
    assert_eq!(
        again.code,
        Some(1),
        "a WAL in use is not seeded again: {again:?}"
    );
}
