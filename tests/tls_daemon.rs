//! TLS end to end, with the real binary: S3 (MinIO) and OpenCTI over https with a self-signed CA
//! given as a CA file (accepted), with the wrong CA (refused, with an error that says so, and the
//! daemon keeps running), and with certificate checks turned off (accepted, with a warning).
//!
//! OpenCTI's side is the simulator behind a TLS terminator in this file (the simulator speaks
//! plain HTTP); S3's side is the in-process S3 server with TLS.

mod support;

use std::net::SocketAddr;

use opencti_stream_exporter::readback::read_back;
use opencti_stream_exporter::sink::S3Sink;
use opencti_stream_exporter::tls::TlsOptions;
use simulator::SimulatorHandle;
use support::daemon::{
    BUCKET, Daemon, FOLDER, Harness, last_dir_line_id, last_s3_line_id, read_dir_export, s3_keys,
    secs, simulator_config, start_simulator, wait_until,
};
use support::s3::TestS3;
use support::tls::TestCa;

fn last_live_id(sim: &SimulatorHandle) -> String {
    sim.live_ids().last().expect("a live log").to_string()
}

/// Log lines (any level) whose text contains `needle`, case-insensitively.
fn logs_containing(daemon: &Daemon, needle: &str) -> Vec<String> {
    let needle = needle.to_lowercase();
    daemon
        .logs()
        .into_iter()
        .filter(|line| line.to_lowercase().contains(&needle))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// S3 over https

/// A daemon exporting `sim` to an https S3 server signed by `ca`, with `extra` settings.
fn s3_over_https(sim: &SimulatorHandle, s3: &TestS3, extra: &[(&str, &str)]) -> Harness {
    let mut harness = Harness::new(sim)
        .s3(s3, BUCKET)
        .live_log_only(sim)
        .set("MINIO_ENDPOINT", "localhost")
        .set("MINIO_SECURE", "true");
    for (name, value) in extra {
        harness = harness.set(name, value);
    }
    harness
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_over_https_with_its_ca_file_is_accepted() {
    let ca = TestCa::new();
    let sim = start_simulator(simulator_config(41, 300)).await;
    let s3 = TestS3::start_with_tls(ca.server_config());
    let ca_file = ca.ca_file().display().to_string();
    let harness = s3_over_https(&sim, &s3, &[("MINIO_CA_FILE", &ca_file)]);
    let mut daemon = harness.spawn();
    let last = last_live_id(&sim);
    wait_until("everything is uploaded over https", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
    // Read back as the importer would, over https trusting the same CA.
    let mut settings = s3.settings(BUCKET);
    settings.tls = TlsOptions {
        verify: true,
        ca_file: Some(ca.ca_file().to_owned()),
    };
    let sink = S3Sink::new(settings).expect("an https S3 client");
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let readback = read_back(
        &sink,
        &format!("{FOLDER}/"),
        1,
        |l| lines.push(l.to_vec()),
        |_, _| {},
    )
    .await
    .expect("reading the export back over https");
    assert!(readback.is_ok(), "{:?}", readback.problems);
    let report = sim.check_export(lines.iter().map(Vec::as_slice));
    assert!(report.is_ok(), "{report}");
    assert!(logs_containing(&daemon, "verification is disabled").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_over_https_with_the_wrong_ca_is_refused_with_a_clear_error() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let sim = start_simulator(simulator_config(42, 300)).await;
    let s3 = TestS3::start_with_tls(ca.server_config());
    let wrong = other.ca_file().display().to_string();
    let harness = s3_over_https(&sim, &s3, &[("MINIO_CA_FILE", &wrong)]);
    let mut daemon = harness.spawn();
    wait_until("the certificate is refused, and said so", secs(60), || {
        logs_containing(&daemon, "certificate")
            .iter()
            .any(|line| line.contains("\"level\":\"WARN\""))
    })
    .await;
    // Ingestion goes on into the WAL; nothing reaches the untrusted server.
    let last = last_live_id(&sim);
    wait_until("the stream is still read", secs(60), || {
        sim.served()
            .accepted()
            .flat_map(|c| c.events.iter())
            .any(|e| e.key.id.to_string() == last)
    })
    .await;
    assert!(s3_keys(&s3, BUCKET).is_empty());
    assert!(!s3.bucket_exists(BUCKET), "not even the bucket was created");
    assert!(
        !daemon.has_exited(),
        "a TLS failure is retried, never fatal"
    );
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_over_https_without_certificate_checks_is_accepted_with_a_warning() {
    let ca = TestCa::new();
    let sim = start_simulator(simulator_config(43, 300)).await;
    let s3 = TestS3::start_with_tls(ca.server_config());
    let harness = s3_over_https(&sim, &s3, &[("MINIO_CERT_CHECK", "false")]);
    let mut daemon = harness.spawn();
    let last = last_live_id(&sim);
    wait_until("everything is uploaded over https", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
    let warnings: Vec<String> = logs_containing(&daemon, "verification is disabled")
        .into_iter()
        .filter(|line| line.contains("\"level\":\"WARN\""))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {warnings:?}");
}

// ---------------------------------------------------------------------------------------------
// OpenCTI over https

/// A TLS terminator in front of the simulator: accepts https with `ca`'s certificate on
/// 127.0.0.1 and relays the plain bytes to `upstream`. Stops when dropped.
struct HttpsFront {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsFront {
    async fn start(ca: &TestCa, upstream: SocketAddr) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the https front");
        let addr = listener.local_addr().expect("front address");
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                while connections.try_join_next().is_some() {}
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    // A client refusing the certificate ends the handshake: nothing to relay.
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Self { addr, task }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for HttpsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A daemon reading `sim` through `front` over https, into a directory.
fn opencti_over_https(
    sim: &SimulatorHandle,
    front: &HttpsFront,
    export: &std::path::Path,
) -> Harness {
    Harness::new(sim)
        .export_dir(export)
        .live_log_only(sim)
        .set("OPENCTI_URL", &front.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencti_over_https_with_its_ca_file_is_accepted() {
    let ca = TestCa::new();
    let sim = start_simulator(simulator_config(44, 300)).await;
    let front = HttpsFront::start(&ca, sim.addr()).await;
    let export = tempfile::tempdir().expect("export directory");
    let ca_file = ca.ca_file().display().to_string();
    let harness = opencti_over_https(&sim, &front, export.path()).set("OPENCTI_CA_FILE", &ca_file);
    let mut daemon = harness.spawn();
    let last = last_live_id(&sim);
    wait_until("everything is exported from https", secs(60), || {
        last_dir_line_id(export.path()).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
    let exported = read_dir_export(export.path()).await;
    let report = sim.check_export(exported.lines.iter().map(|line| line.as_ref()));
    assert!(report.is_ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencti_over_https_with_the_wrong_ca_is_refused_with_a_clear_error() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let sim = start_simulator(simulator_config(45, 300)).await;
    let front = HttpsFront::start(&ca, sim.addr()).await;
    let export = tempfile::tempdir().expect("export directory");
    let wrong = other.ca_file().display().to_string();
    // The stream's own report of the refused certificate; a new WAL that adopts what was
    // delivered would first wait for the API behind the same refused certificate.
    let harness = opencti_over_https(&sim, &front, export.path())
        .set("OPENCTI_CA_FILE", &wrong)
        .set("WAL_ADOPT_DELIVERED", "false");
    let mut daemon = harness.spawn();
    wait_until("the certificate is refused, and said so", secs(60), || {
        daemon
            .log_messages("cannot stream from OpenCTI")
            .iter()
            .any(|entry| {
                entry["detail"]
                    .as_str()
                    .is_some_and(|detail| detail.to_lowercase().contains("certificate"))
            })
    })
    .await;
    assert_eq!(
        sim.connection_attempts(),
        0,
        "no request reached OpenCTI over the untrusted connection"
    );
    assert!(
        !daemon.has_exited(),
        "a TLS failure is retried, never fatal"
    );
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opencti_over_https_without_certificate_checks_is_accepted_with_a_warning() {
    let ca = TestCa::new();
    let sim = start_simulator(simulator_config(46, 300)).await;
    let front = HttpsFront::start(&ca, sim.addr()).await;
    let export = tempfile::tempdir().expect("export directory");
    let harness =
        opencti_over_https(&sim, &front, export.path()).set("OPENCTI_SSL_VERIFY", "false");
    let mut daemon = harness.spawn();
    let last = last_live_id(&sim);
    wait_until("everything is exported from https", secs(60), || {
        last_dir_line_id(export.path()).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
    let warnings: Vec<String> = logs_containing(&daemon, "verification is disabled")
        .into_iter()
        .filter(|line| line.contains("\"level\":\"WARN\""))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {warnings:?}");
}
