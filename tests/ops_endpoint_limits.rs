//! The operations endpoint against hostile peers, with the real binary: thousands of idle
//! connections do not starve the daemon of file descriptors, a silent connection is closed, and
//! the optional bearer token guards `/metrics` and `/status` (and `status` sends it) while
//! `/healthz` and `/readyz` stay open; `healthcheck` asks the address the daemon binds.

mod support;

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::daemon::*;
use support::ops::*;
use support::s3::TestS3;

/// Raises this process's own descriptor limit to at least `wanted` (the test holds thousands of
/// connections); returns whether it could.
fn raise_own_open_files_limit(wanted: u64) -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return false;
        }
        if limit.rlim_cur >= wanted {
            return true;
        }
        limit.rlim_cur = wanted;
        limit.rlim_max = limit.rlim_max.max(wanted);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_do_not_starve_the_daemon() {
    const IDLE: usize = 2_000;
    assert!(
        raise_own_open_files_limit(IDLE as u64 + 1_024),
        "the test needs {IDLE} descriptors of its own"
    );
    let sim = start_simulator(simulator_config(311, 200)).await;
    let s3 = TestS3::start();
    let (harness, port) = with_endpoint(
        Harness::new(&sim)
            .s3(&s3, BUCKET)
            .live_log_only(&sim)
            .set("WRITE_MAX_BYTES", "64KiB"),
    );
    let first_part = sim.live_ids().last().expect("a live log").to_string();
    let mut daemon = harness.spawn_with_open_files_limit(256);
    wait_until("the first events are uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(first_part.as_str())
    })
    .await;

    // A peer opens thousands of connections and sends nothing.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let idle = tokio::task::spawn_blocking(move || {
        (0..IDLE)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
            .collect::<Vec<_>>()
    })
    .await
    .expect("opening the idle connections");
    assert!(
        idle.len() > 1_000,
        "most connections open: {} of {IDLE}",
        idle.len()
    );

    // The orchestrator's probe is answered at once.
    let started = Instant::now();
    let health = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("an HTTP client")
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    let health = health.map(|response| response.status().as_u16());
    assert_eq!(
        health.as_ref().ok(),
        Some(&200),
        "/healthz within a second: {health:?} after {:?}",
        started.elapsed()
    );

    // Commits and uploads go on: they need descriptors too (WAL files, S3 connections).
    sim.append_live_events(300);
    let last = sim.live_ids().last().expect("a live log").to_string();
    wait_until(
        "the new events are uploaded while the connections stay open",
        secs(60),
        || last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str()),
    )
    .await;
    assert!(!daemon.has_exited(), "the daemon runs on");
    drop(idle);
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let export = read_s3_export(&s3, BUCKET).await;
    let report = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(report.is_ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_request_is_closed() {
    let sim = start_simulator(simulator_config(312, 20)).await;
    let export = tempfile::tempdir().expect("export dir");
    let (harness, port) = with_endpoint(Harness::new(&sim).export_dir(export.path()));
    let _daemon = harness.spawn();
    wait_for_answer(port, "/healthz", 200, secs(30)).await;

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let closed = tokio::task::spawn_blocking(move || {
        let mut silent = TcpStream::connect(addr).expect("connecting");
        silent
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("a read timeout");
        let started = Instant::now();
        let mut byte = [0u8; 1];
        let read = silent.read(&mut byte);
        (read.map_err(|e| e.kind()), started.elapsed())
    })
    .await
    .expect("the silent connection");
    match closed {
        (Ok(0), took) => assert!(
            took < Duration::from_secs(15),
            "closed after the header-read timeout, took {took:?}"
        ),
        other => panic!("the daemon kept a silent connection open: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_metrics_and_status_and_healthcheck_asks_the_bound_address() {
    const TOKEN: &str = "metrics-token-5b1e9c27d04f";
    let sim = start_simulator(simulator_config(313, 50)).await;
    let export = tempfile::tempdir().expect("export dir");
    let secrets = tempfile::tempdir().expect("secrets dir");
    let token_file = secrets.path().join("metrics_token");
    // As Docker secrets are often written: with a trailing newline.
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("writing the token file");
    let port = free_port();
    let harness = Harness::new(&sim)
        .export_dir(export.path())
        .set("CONNECTOR_EXPOSE_METRICS", "true")
        // Not 127.0.0.1: healthcheck must ask where the daemon binds.
        .set("CONNECTOR_METRICS_BIND", "127.0.0.2")
        .set("CONNECTOR_METRICS_PORT", &port.to_string())
        .set(
            "CONNECTOR_METRICS_TOKEN_FILE",
            &token_file.display().to_string(),
        );
    let mut daemon = harness.spawn();
    let url = |path: &str| format!("http://127.0.0.2:{port}{path}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    poll_until("the endpoint answers", secs(30), || {
        let request = client.get(url("/healthz")).send();
        async move { request.await.is_ok_and(|r| r.status() == 200) }
    })
    .await;

    for path in ["/metrics", "/status"] {
        let bare = client.get(url(path)).send().await.expect("an answer");
        assert_eq!(bare.status(), 401, "{path} without the token");
        let wrong = client
            .get(url(path))
            .bearer_auth("metrics-token-5b1e9c27d04e")
            .send()
            .await
            .expect("an answer");
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let right = client
            .get(url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("an answer");
        assert_eq!(right.status(), 200, "{path} with the token");
    }
    for path in ["/healthz", "/readyz"] {
        let open = client.get(url(path)).send().await.expect("an answer");
        assert_ne!(open.status(), 401, "{path} needs no token");
    }
    assert!(
        get(port, "/healthz").await.is_none(),
        "nothing listens on 127.0.0.1"
    );

    // `status` asks the running daemon with the token; `healthcheck` needs none.
    let status = harness.run_command(&["status", "--json"], secs(30)).await;
    assert_eq!(status.code, Some(0), "{status:?}");
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status --json");
    assert!(
        status.get("live").is_some(),
        "the running daemon answered: {status}"
    );
    let harness = harness
        .unset("CONNECTOR_METRICS_TOKEN_FILE")
        .unset("OPENCTI_TOKEN");
    let health = harness.run_command(&["healthcheck"], secs(30)).await;
    assert_eq!(health.code, Some(0), "healthcheck: {health:?}");
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    for output in daemon.logs() {
        assert!(
            !output.contains(TOKEN),
            "the token is never logged: {output}"
        );
    }
}
