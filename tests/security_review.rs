//! What the security review in the README promises, checked with the real binary:
//!
//! - secrets (the OpenCTI token, the S3 secret key) never appear in the logs, at any level and
//!   on error paths (401 from OpenCTI, 403 and 500 from S3, a bad event), nor in `status`, nor in
//!   the dead-letter file, nor in a configuration error (docs/architecture.md#invariant-8);
//! - the WAL directory is private to its owner (0700, narrowed if it was open), the dead-letter
//!   file too (0600);
//! - a redirect from OpenCTI to another origin is not followed: nothing is sent there.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use simulator::{FailStatus, InjectedEvent, SimulatorConfig, Token};
use support::daemon::{
    BUCKET, Harness, last_s3_line_id, secs, simulator_config, start_simulator, wait_until,
};
use support::proxy::{Canned, Fault as ProxyFault, FaultProxy};
use support::s3::{SECRET_KEY, TestS3};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKEN: &str = "opencti-token-7c1f9e-never-in-logs";

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_status_dead_letters_or_errors() {
    let sim = start_simulator(SimulatorConfig {
        token: Some(Token::new(TOKEN)),
        ..simulator_config(51, 400)
    })
    .await;
    let s3 = TestS3::start();
    let proxy = FaultProxy::start(s3.addr());
    // Error paths too: OpenCTI refuses the token twice, S3 denies, then fails, an event is bad.
    sim.faults()
        .refuse_next_connections(FailStatus::Unauthenticated, 2);
    sim.faults().inject_after(50, InjectedEvent::InvalidJson);
    proxy.fault_next(ProxyFault::Respond(Canned::AccessDenied));
    proxy.fault_next(ProxyFault::Respond(Canned::InternalError));
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .live_log_only(&sim)
        .set("MINIO_PORT", &proxy.addr().port().to_string())
        .set("CONNECTOR_LOG_LEVEL", "trace");
    let mut daemon = harness.spawn();
    let last = sim.live_ids().last().expect("a live log").to_string();
    wait_until("everything is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));

    let logs = daemon.logs();
    assert!(logs.len() > 20, "trace logs were written");
    for secret in [TOKEN, SECRET_KEY] {
        for line in &logs {
            assert!(!line.contains(secret), "a secret in the logs: {line}");
        }
    }
    let dead_letters = std::fs::read_to_string(harness.wal_dir().join("dead-letter.ndjson"))
        .expect("dead letters");
    assert!(!dead_letters.is_empty(), "the bad event was kept");
    let status = harness.run_command(&["status", "--json"], secs(30)).await;
    let text = harness.run_command(&["status"], secs(30)).await;
    // A configuration error while the secrets are set.
    let bad = harness
        .run_command(&["--config", "/nonexistent/config.yml", "status"], secs(30))
        .await;
    let bad_port = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .set("OPENCTI_TOKEN", TOKEN)
        .set("MINIO_PORT", "not-a-port")
        .run_command(&["run"], secs(30))
        .await;
    assert_eq!(bad_port.code, Some(2), "{bad_port:?}");
    for secret in [TOKEN, SECRET_KEY] {
        for (what, output) in [
            ("dead letters", dead_letters.clone()),
            ("status --json", status.stdout.clone() + &status.stderr),
            ("status", text.stdout.clone() + &text.stderr),
            ("a missing config file", bad.stdout.clone() + &bad.stderr),
            (
                "an invalid setting",
                bad_port.stdout.clone() + &bad_port.stderr,
            ),
        ] {
            assert!(!output.contains(secret), "a secret in {what}: {output}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_directory_and_the_dead_letter_file_are_private_to_their_owner() {
    let sim = start_simulator(simulator_config(52, 200)).await;
    sim.faults().inject_after(20, InjectedEvent::NonUtf8);
    let export = tempfile::tempdir().expect("export directory");
    let harness = Harness::new(&sim)
        .export_dir(export.path())
        .live_log_only(&sim);
    let wal = harness.wal_dir();
    let dead_letters = wal.join("dead-letter.ndjson");
    let mut daemon = harness.spawn();
    wait_until("the bad event is in the dead-letter file", secs(60), || {
        std::fs::metadata(&dead_letters).is_ok_and(|m| m.len() > 0)
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
    assert_eq!(mode_of(&wal), 0o700, "a new WAL directory is created 0700");
    assert_eq!(
        mode_of(&dead_letters),
        0o600,
        "the dead-letter file is 0600"
    );

    // A WAL directory someone opened to others is narrowed at the next start.
    std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut daemon = harness.spawn();
    wait_until("the daemon narrowed its directory", secs(30), || {
        mode_of(&wal) == 0o700
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
}

/// Answers every request with a redirect to `target`, counting requests.
async fn redirecting_server(target: String, requests: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                continue;
            };
            requests.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 8192];
                let _ = socket.read(&mut buffer).await;
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_opencti_to_another_origin_is_not_followed() {
    // "Elsewhere": another origin (another port) that must never be contacted.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let elsewhere_addr = elsewhere.local_addr().expect("address");
    let contacted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&contacted);
    tokio::spawn(async move {
        while elsewhere.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let requests = Arc::new(AtomicUsize::new(0));
    let opencti = redirecting_server(
        format!("http://{elsewhere_addr}/stream/stolen"),
        Arc::clone(&requests),
    )
    .await;

    let sim = start_simulator(simulator_config(53, 10)).await;
    let export = tempfile::tempdir().expect("export directory");
    let harness = Harness::new(&sim)
        .export_dir(export.path())
        .set("OPENCTI_URL", &format!("http://{opencti}"));
    let mut daemon = harness.spawn();
    wait_until(
        "the daemon retried the redirecting server",
        secs(30),
        || requests.load(Ordering::SeqCst) >= 2,
    )
    .await;
    assert_eq!(
        contacted.load(Ordering::SeqCst),
        0,
        "the redirect to another origin was followed"
    );
    assert!(!daemon.has_exited(), "a redirect is retried, never fatal");
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
}
