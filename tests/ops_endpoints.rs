//! The daemon's HTTP endpoint, end to end: the real binary against the simulator and the
//! in-process S3 server, asked over HTTP as Prometheus, an orchestrator and the `status` /
//! `healthcheck` commands ask it.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use opencti_stream_exporter::ids::{EventId, parse_iso_ms};
use opencti_stream_exporter::metrics::CATALOGUE;
use simulator::Simulator;
use support::daemon::*;
use support::ops::*;
use support::s3::TestS3;

const NAME: &str = "ops-exporter";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_keep_the_stock_names_and_labels_and_expose_every_metric_of_the_catalogue() {
    let sim = start_simulator(simulator_config(301, 1_500)).await;
    let s3 = TestS3::start();
    let (harness, port) = with_endpoint(
        Harness::new(&sim)
            .s3(&s3, BUCKET)
            .live_log_only(&sim)
            .set("WRITE_MAX_BYTES", "256KiB")
            .set("CONNECTOR_NAME", NAME),
    );
    let last = sim.live_ids().last().expect("a live log").to_string();
    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    let export = read_s3_export(&s3, BUCKET).await;
    let files = export.files.len() as f64;
    assert!(files >= 3.0, "several files, got {files}");
    poll_until("the counters to show every upload", secs(20), || async {
        let scrape = scrape(port).await;
        scrape.value("written_files_total", &[("name", NAME)]) == Some(files)
            && scrape
                .value("stream_exporter_consumer_delivery_rate", &[])
                .is_some()
    })
    .await;
    let scrape = scrape(port).await;
    assert!(scrape.complete, "the exposition ends with # EOF");

    // Every metric of the catalogue, with its type and exactly its labels; nothing else.
    let mut known = BTreeSet::new();
    for doc in CATALOGUE {
        let family = match doc.kind() {
            "counter" => doc
                .name
                .strip_suffix("_total")
                .expect("counters end in _total"),
            _ => doc.name,
        };
        assert_eq!(
            scrape.types.get(family).map(String::as_str),
            Some(doc.kind()),
            "# TYPE of {family}"
        );
        let names: Vec<String> = match doc.kind() {
            "histogram" => ["_bucket", "_count", "_sum"]
                .iter()
                .map(|suffix| format!("{}{suffix}", doc.name))
                .collect(),
            _ => vec![doc.name.to_string()],
        };
        for name in names {
            let samples: Vec<_> = scrape.named(&name).collect();
            assert!(!samples.is_empty(), "{name} has a sample");
            for sample in samples {
                let labels: BTreeSet<&str> = sample
                    .labels
                    .keys()
                    .map(String::as_str)
                    .filter(|l| *l != "le")
                    .collect();
                let expected: BTreeSet<&str> = doc.labels.iter().copied().collect();
                assert_eq!(labels, expected, "labels of {name}");
            }
            known.insert(name);
        }
    }
    for sample in &scrape.samples {
        assert!(
            known.contains(&sample.name),
            "{} is not in the catalogue",
            sample.name
        );
    }

    // The stock metrics carry the stock meanings.
    let processed: f64 = ["create", "update", "delete", "merge"]
        .iter()
        .map(|action| {
            scrape
                .value(
                    "processed_messages_total",
                    &[("name", NAME), ("action", action)],
                )
                .expect("one series per action")
        })
        .sum();
    assert_eq!(
        processed,
        export.len() as f64,
        "every exported event is counted"
    );
    assert!(
        scrape.value(
            "processed_messages_total",
            &[("name", NAME), ("action", "update")]
        ) > Some(0.0)
    );
    assert_eq!(
        scrape.value("write_errors_total", &[("name", NAME)]),
        Some(0.0)
    );
    let last_ms = EventId::parse(&last).expect("an id").ms as f64;
    assert_eq!(
        scrape.value("last_written_state", &[("name", NAME)]),
        Some(last_ms),
        "last_written_state is the time of the last uploaded event"
    );
    let current = scrape
        .value("current_state", &[("name", NAME)])
        .expect("current_state");
    assert!(
        current >= last_ms,
        "current_state {current} is the durable cursor"
    );
    assert_eq!(
        scrape.value("recover_until_state", &[("name", NAME)]),
        parse_iso_ms("2020-01-01T00:00:00Z").map(|ms| ms as f64),
    );
    assert!(
        scrape.value("ping_api_total", &[]) >= Some(1.0),
        "pings are counted"
    );

    // Ours, a few exactly.
    assert_eq!(
        scrape.value("stream_exporter_stream_connected", &[]),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("stream_exporter_files_waiting", &[]),
        Some(0.0)
    );
    assert_eq!(
        scrape.value("stream_exporter_upload_duration_seconds_count", &[]),
        Some(files)
    );
    let uploaded: usize = export.files.iter().map(|f| f.body.len()).sum();
    assert_eq!(
        scrape.value("stream_exporter_upload_bytes_total", &[]),
        Some(uploaded as f64)
    );
    assert_eq!(
        scrape
            .named("stream_exporter_stream_reconnects_total")
            .count(),
        11,
        "one series per reconnect reason"
    );
    assert!(scrape.value("stream_exporter_wal_commits_total", &[]) > Some(0.0));
    assert_eq!(
        scrape.value("stream_exporter_wal_group_records_sum", &[]),
        Some(export.len() as f64),
        "every event went through one group"
    );
    assert_eq!(
        scrape.value("stream_exporter_opencti_registered", &[]),
        Some(1.0)
    );
    assert_eq!(
        scrape.value(
            "stream_exporter_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_stream_while_liveness_stays() {
    let config = simulator_config(302, 300);
    let sim = start_simulator(config.clone()).await;
    let addr: SocketAddr = sim.addr();
    let export = tempfile::tempdir().expect("export dir");
    let (harness, port) = with_endpoint(
        Harness::new(&sim)
            .export_dir(export.path())
            .live_log_only(&sim),
    );
    let mut daemon = harness.spawn();
    let body = wait_for_answer(port, "/readyz", 200, secs(30)).await;
    let ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["stream_connected"], true);
    assert_eq!(ready["wal_writable"], true);
    assert_eq!(ready["disk_budget_full"], false);
    let (code, health) = get_json(port, "/healthz").await.expect("an answer");
    assert_eq!((code, &health["healthy"]), (200, &serde_json::json!(true)));

    // OpenCTI goes away: not ready, still alive.
    sim.shutdown().await;
    let body = wait_for_answer(port, "/readyz", 503, secs(20)).await;
    let not_ready: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(not_ready["ready"], false);
    assert_eq!(not_ready["stream_connected"], false);
    assert_eq!(
        not_ready["wal_writable"], true,
        "only the stream is missing"
    );
    let (code, _) = get_json(port, "/healthz").await.expect("an answer");
    assert_eq!(
        code, 200,
        "an unreachable OpenCTI is not a liveness failure"
    );
    let status = status(port).await;
    assert_eq!(status["live"]["stream_connected"], false);

    // It comes back on the same address: ready again, without a restart of the daemon.
    let deadline = std::time::Instant::now() + secs(10);
    let restarted = loop {
        match Simulator::start(config.clone(), addr).await {
            Ok(sim) => break sim,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "cannot listen again: {error}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    wait_for_answer(port, "/readyz", 200, secs(30)).await;
    assert!(!daemon.has_exited());
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_healthcheck_ask_the_running_daemon() {
    let sim = start_simulator(simulator_config(303, 400)).await;
    let s3 = TestS3::start();
    let (harness, port) = with_endpoint(Harness::new(&sim).s3(&s3, BUCKET).live_log_only(&sim));
    let last = sim.live_ids().last().expect("a live log").to_string();
    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    poll_until("registration and a ping", secs(20), || async {
        let status = status(port).await;
        status["live"]["opencti_registered"] == true && status["live"]["last_ping_at"].is_string()
    })
    .await;

    // The fields CI's end-to-end script reads, and the live part.
    let status = status(port).await;
    for field in [
        "cursor",
        "cursor_time",
        "recover_until",
        "backlog_events",
        "backlog_bytes",
        "files_waiting",
        "files_waiting_bytes",
        "next_file_number",
        "last_upload",
        "disk_used_bytes",
        "disk_max_bytes",
    ] {
        assert!(status.get(field).is_some(), "/status has {field}: {status}");
    }
    let files = s3_keys(&s3, BUCKET).len() as u64;
    assert_eq!(status["next_file_number"], files + 1);
    assert_eq!(status["last_upload"]["file_number"], files);
    assert_eq!(status["files_waiting"], 0);
    let live = &status["live"];
    assert_eq!(live["stream_connected"], true);
    assert_eq!(live["files_uploaded"], files);
    assert_eq!(live["uploads_failing"], serde_json::Value::Null);
    assert!(
        live["stream_lag_seconds"]
            .as_f64()
            .is_some_and(|lag| lag > 0.0)
    );

    // `status` holds no WAL lock: it asks /status and prints the live part too.
    let text = harness.run_command(&["status"], secs(30)).await;
    assert_eq!(text.code, Some(0), "{text:?}");
    assert!(
        text.stdout
            .contains(&format!("next file number      {}", files + 1)),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("stream                connected"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("OpenCTI               registered"),
        "{}",
        text.stdout
    );
    let json = harness.run_command(&["status", "--json"], secs(30)).await;
    let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("status --json");
    assert_eq!(json["live"]["stream_connected"], true);

    let health = harness.run_command(&["healthcheck"], secs(30)).await;
    assert_eq!(
        health.code,
        Some(0),
        "healthcheck while running: {health:?}"
    );
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let health = harness.run_command(&["healthcheck"], secs(30)).await;
    assert_ne!(health.code, Some(0), "healthcheck after the daemon stopped");

    // Stopped, `status` reads the WAL itself: same position, no live part.
    let stopped = harness.status().await;
    assert_eq!(stopped["next_file_number"], files + 1);
    assert!(stopped.get("live").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_can_be_turned_off_and_a_taken_port_stops_start_up() {
    let sim = start_simulator(simulator_config(304, 100)).await;
    let export = tempfile::tempdir().expect("export dir");
    let (harness, port) = with_endpoint(
        Harness::new(&sim)
            .export_dir(export.path())
            .live_log_only(&sim),
    );

    let off = harness.set("CONNECTOR_EXPOSE_METRICS", "false");
    let last = sim.live_ids().last().expect("a live log").to_string();
    let mut daemon = off.spawn();
    wait_until("the last live event is written", secs(30), || {
        last_dir_line_id(export.path()).as_deref() == Some(last.as_str())
    })
    .await;
    assert!(get(port, "/healthz").await.is_none(), "nothing listens");
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));

    let taken = std::net::TcpListener::bind(("127.0.0.1", port)).expect("take the port");
    let on = off.set("CONNECTOR_EXPOSE_METRICS", "true");
    let mut daemon = on.spawn();
    let exit = daemon.wait_exit(secs(30)).await;
    assert_eq!(exit.code(), Some(1), "a port in use stops start-up");
    assert!(
        daemon
            .logs()
            .iter()
            .any(|line| line.contains("CONNECTOR_METRICS_PORT") && line.contains("cannot listen")),
        "the error names the setting: {:?}",
        daemon.logs()
    );
    drop(taken);
}
