//! The connector on the OpenCTI platform, end to end: the real binary registers with the
//! simulator's `/graphql`, pings the state in the stock keys, keeps exporting while the API
//! fails, and honours a state reset requested from the UI without renumbering files.

mod support;

use opencti_stream_exporter::ids::iso;
use serde_json::json;
use simulator::FailStatus;
use support::daemon::*;
use support::ops::*;
use support::s3::TestS3;

const CONNECTOR_ID: &str = "0b9b6bd3-4b76-4e7c-9a0c-0f1c0f9d2f10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_then_pings_the_state_in_the_stock_keys() {
    let sim = start_simulator(simulator_config(401, 800)).await;
    let s3 = TestS3::start();
    let (harness, port) = with_endpoint(
        Harness::new(&sim)
            .s3(&s3, BUCKET)
            .live_log_only(&sim)
            .set("WRITE_MAX_BYTES", "128KiB")
            .set("CONNECTOR_ID", CONNECTOR_ID)
            .set("CONNECTOR_NAME", "Air gap exporter")
            .set("CONNECTOR_SCOPE", "stream-exporter, second"),
    );
    let last = sim.live_ids().last().expect("a live log").to_string();
    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    let files = s3_keys(&s3, BUCKET).len() as u64;
    assert!(files >= 3, "several files, got {files}");
    let expected_state = json!({
        "start_from": last,
        "recover_until": "2020-01-01T00:00:00Z",
        "last_written_msg_id": last,
        "file_count": files,
    });
    wait_until("a ping with the final state", secs(20), || {
        pings(&sim)
            .last()
            .is_some_and(|ping| ping_state(ping) == expected_state)
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));

    let calls = sim.graphql_calls();
    let register = &calls[0];
    assert_eq!(
        register.operation, "registerConnector",
        "registration comes first"
    );
    assert_eq!(
        register.variables,
        json!({"input": {
            "id": CONNECTOR_ID,
            "name": "Air gap exporter",
            "type": "STREAM",
            "scope": ["stream-exporter", "second"],
            "auto": false,
            "only_contextual": false,
            "playbook_compatible": false,
        }})
    );
    assert!(
        calls.iter().all(|call| call.authorized),
        "every call carries the token"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|call| call.operation != "pingConnector")
            .count(),
        2,
        "two registrations (a new WAL reads what was delivered, then the API task), then only \
         pings: never deleteConnector, even when stopping"
    );
    let pings = pings(&sim);
    assert!(pings.len() >= 2, "pings every second");
    for ping in &pings {
        assert_eq!(ping.variables["id"], CONNECTOR_ID);
        let info = &ping.variables["connectorInfo"];
        assert_eq!(info["run_and_terminate"], false);
        assert_eq!(info["buffering"], false);
        assert!(info["queue_threshold"].as_f64().is_some_and(|mb| mb > 0.0));
        let state = ping_state(ping);
        let keys: Vec<&str> = state
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        for key in &keys {
            assert!(
                [
                    "start_from",
                    "recover_until",
                    "last_written_msg_id",
                    "file_count"
                ]
                .contains(key),
                "only stock keys: {state}"
            );
        }
        // Before the first upload the state has no last_written_msg_id, as the stock one.
        assert_eq!(
            state.get("last_written_msg_id").is_some(),
            state["file_count"].as_u64() > Some(0),
            "{state}"
        );
    }
    // The platform keeps the last state sent (it is what the UI shows, and can be imported).
    let stored: serde_json::Value =
        serde_json::from_str(&sim.connector_state().expect("the platform stored a state"))
            .expect("JSON");
    assert_eq!(stored, expected_state);
    let _ = port;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_api_never_blocks_exporting_and_is_logged_once() {
    let sim = start_simulator(simulator_config(402, 600)).await;
    // Every GraphQL call fails until the faults are cleared.
    sim.faults().fail_next_graphql(FailStatus::Internal, 10_000);
    let s3 = TestS3::start();
    // A new WAL that adopts the delivered state waits for the API before its first start
    // (tests/daemon_adopt.rs); here it starts from the configured position.
    let (harness, port) = with_endpoint(
        Harness::new(&sim)
            .s3(&s3, BUCKET)
            .live_log_only(&sim)
            .set("WAL_ADOPT_DELIVERED", "false")
            .set("WRITE_MAX_BYTES", "128KiB"),
    );
    let last = sim.live_ids().last().expect("a live log").to_string();
    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    // Give the registration a few attempts (one per second at most).
    poll_until("several failed registrations", secs(20), || async {
        scrape(port)
            .await
            .value("stream_exporter_opencti_register_errors_total", &[])
            >= Some(3.0)
    })
    .await;
    assert!(
        sim.graphql_calls().is_empty(),
        "every call failed before reaching the API"
    );
    let failing_status = status(port).await;
    assert_eq!(failing_status["live"]["opencti_registered"], false);
    let failing = failing_status["live"]["opencti_api_failing"]
        .as_str()
        .expect("the failure shows in /status");
    assert!(failing.contains("HTTP 500"), "{failing}");
    assert!(pings(&sim).is_empty(), "no ping before the registration");

    sim.faults().clear();
    poll_until("the registration and a ping", secs(20), || async {
        !pings(&sim).is_empty() && status(port).await["live"]["opencti_registered"] == true
    })
    .await;
    let warnings = daemon.log_messages("registering the connector failed");
    assert_eq!(
        warnings.len(),
        1,
        "logged once per kind of failure: {warnings:?}"
    );
    assert_eq!(warnings[0]["level"], "WARN");
    assert_eq!(
        daemon.log_messages("the OpenCTI API answers again").len(),
        1
    );
    assert_eq!(daemon.errors(), Vec::<String>::new());
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let export = read_s3_export(&s3, BUCKET).await;
    export.assert_importable("json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_reset_from_the_ui_restarts_the_stream_with_recovery_and_keeps_the_numbering() {
    let sim = start_simulator(simulator_config(403, 600)).await;
    let s3 = TestS3::start();
    let live = sim.live_ids();
    let first_live = *live.first().expect("a live log");
    let last = live.last().expect("a live log").to_string();
    // First start from 0-0, recovering the knowledge base up to just before the live log.
    let recover = iso(first_live.ms - 1);
    let (harness, port) = with_endpoint(
        Harness::new(&sim)
            .s3(&s3, BUCKET)
            .set("CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE", &recover)
            .set("WRITE_MAX_BYTES", "128KiB"),
    );
    let mut daemon = harness.spawn();
    wait_until("the first pass is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    let first_pass = read_s3_export(&s3, BUCKET).await;
    let files_before = first_pass.files.len();
    wait_until("a ping with the first pass's state", secs(20), || {
        pings(&sim)
            .last()
            .is_some_and(|ping| ping_state(ping)["file_count"] == files_before as u64)
    })
    .await;
    let accepted_before = sim.served().accepted().count();

    sim.request_state_reset();
    wait_until(
        "a connection from the first-start position",
        secs(30),
        || {
            sim.served()
                .accepted()
                .skip(accepted_before)
                .any(|connection| {
                    connection.requested_start() == Some("0-0")
                        && connection.request.recover.as_deref() == Some(recover.as_str())
                })
        },
    )
    .await;
    wait_until("the second pass is uploaded", secs(60), || {
        s3_keys(&s3, BUCKET).len() > files_before
            && last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    wait_until("a ping with the state after the reset", secs(20), || {
        let files = s3_keys(&s3, BUCKET).len() as u64;
        pings(&sim).last().is_some_and(|ping| {
            let state = ping_state(ping);
            state["file_count"] == files && state["start_from"] == last.as_str()
        })
    })
    .await;
    let after = status(port).await;
    assert_eq!(after["live"]["state_resets"], 1);
    assert_eq!(after["recover_until"], recover.as_str());
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));

    // Numbering went on (1, 2, …, no gap, no reuse) and the second pass is the first again:
    // recovery of the knowledge base, then the live log.
    let export = read_s3_export(&s3, BUCKET).await;
    for (index, file) in export.files.iter().enumerate() {
        assert_eq!(
            file.number,
            index as u64 + 1,
            "{} keeps the numbering",
            file.key
        );
        if index > 0 {
            assert!(
                file.ts_ms > export.files[index - 1].ts_ms,
                "{} is later",
                file.key
            );
        }
    }
    // The importer reads every file; only the ids go back once, where the replay starts (which
    // `verify` lists, and accepts with --allow-id-rewinds: the platform sends those events again).
    assert_eq!(
        export.readback.problems,
        [],
        "the importer reads everything"
    );
    let rewinds = &export.readback.id_rewinds;
    assert_eq!(rewinds.len(), 1, "{rewinds:?}");
    assert_eq!(rewinds[0].key, export.files[files_before].key);
    assert_eq!(rewinds[0].line, Some(1));
    assert_eq!(rewinds[0].what, "its id is before the previous line's");
    assert!(!export.readback.stopped_early);
    let n = first_pass.len();
    assert_eq!(export.len(), 2 * n, "everything sent again once");
    assert_same_lines(&export.lines[n..], &first_pass.lines);
    let oracle = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(oracle.is_ok(), "{oracle}");

    let reset = daemon.log_messages("STATE RESET from OpenCTI applied");
    assert_eq!(reset.len(), 1, "{reset:?}");
    assert_eq!(reset[0]["level"], "WARN");
    assert_eq!(reset[0]["old_start_from"], last.as_str());
    assert_eq!(reset[0]["new_start_from"], "0-0");
    assert_eq!(reset[0]["new_recover_until"], recover.as_str());
    assert_eq!(
        daemon.log_messages("OpenCTI asks for a state reset").len(),
        1
    );
    assert_eq!(daemon.errors(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_wal_told_not_to_adopt_is_warned_about_the_numbering_restart() {
    let sim = start_simulator(simulator_config(404, 100)).await;
    // What the stock connector left on the platform.
    sim.set_connector_state(Some(
        json!({"start_from": "1718010000050-0", "last_written_msg_id": "1718010000040-0",
               "recover_until": RECOVER_STOCK, "file_count": 41})
        .to_string(),
    ));
    let export = tempfile::tempdir().expect("export dir");
    let harness = Harness::new(&sim)
        .export_dir(export.path())
        .live_log_only(&sim)
        .set("WAL_ADOPT_DELIVERED", "false")
        .set("OPENCTI_PING_INTERVAL_SEC", "1");
    let mut daemon = harness.spawn();
    wait_until("the warning", secs(20), || {
        !daemon
            .log_messages("this WAL starts numbering again")
            .is_empty()
    })
    .await;
    let warning = &daemon.log_messages("this WAL starts numbering again")[0];
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["platform_file_count"], 41);
    assert!(
        warning["message"]
            .as_str()
            .is_some_and(|m| m.contains("WAL_ADOPT_DELIVERED") && m.contains("expects file 42")),
        "{warning}"
    );
    // The exporter's own state replaces the stock one at the next ping (the WAL is the truth).
    wait_until("our state on the platform", secs(20), || {
        sim.connector_state()
            .and_then(|state| serde_json::from_str::<serde_json::Value>(&state).ok())
            .is_some_and(|state| state["start_from"] != "1718010000050-0")
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
}

const RECOVER_STOCK: &str = "2024-06-10T08:00:00Z";
