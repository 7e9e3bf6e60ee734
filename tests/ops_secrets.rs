//! docs/architecture.md#invariant-8, "secrets stay secret", end to end: a full run of the real
//! binary at debug level — first start, a refused stream connection, a dropped connection, uploads
//! refused for a wrong S3 secret, then a run with the right one until everything is uploaded — and
//! the OpenCTI token, the S3 secret key and the wrong secret key appear nowhere in what an
//! administrator or a scraper can read: every log line of both runs (JSON and text), `/status`,
//! `/metrics`, `/healthz`, `/readyz`, the `status` and `verify` commands, the export itself.

mod support;

use opencti_stream_exporter::secret::Secret;
use simulator::{FailStatus, Token};
use support::daemon::*;
use support::ops::*;
use support::s3::{SECRET_KEY, TestS3};

const TOKEN: &str = "octi-token-7f3a9c1e5b2d4f60";
const WRONG_SECRET: &str = "wrong-s3-secret-5e8d2b7a91c3";

/// Every secret, and the forms a careless formatter could print (`Bearer …`).
fn secrets() -> Vec<String> {
    vec![
        TOKEN.to_string(),
        format!("Bearer {TOKEN}"),
        SECRET_KEY.to_string(),
        WRONG_SECRET.to_string(),
    ]
}

/// Panics naming `what` if `text` contains a secret.
fn assert_no_secret(what: &str, text: &str) {
    for secret in secrets() {
        assert!(
            !text.contains(&secret),
            "{what} shows a secret ({} characters)",
            secret.len()
        );
    }
}

/// Everything the endpoint shows, concatenated.
async fn endpoint_text(port: u16) -> String {
    let mut all = String::new();
    for path in ["/status", "/metrics", "/healthz", "/readyz"] {
        let (_, body) = get(port, path).await.expect("the endpoint answers");
        all.push_str(&body);
    }
    all
}

#[test]
fn the_check_itself_finds_a_secret() {
    assert!(
        std::panic::catch_unwind(|| assert_no_secret("a line", &format!("x{TOKEN}y"))).is_err()
    );
    assert_eq!(format!("{:?}", Secret::new(TOKEN)), "[redacted]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_and_the_s3_secret_never_appear_in_logs_status_or_metrics() {
    let mut config = simulator_config(601, 1_200);
    config.token = Some(Token::new(TOKEN));
    let sim = start_simulator(config).await;
    let s3 = TestS3::start();
    let (harness, port) = with_endpoint(
        Harness::new(&sim)
            .s3(&s3, BUCKET)
            .live_log_only(&sim)
            .set("CONNECTOR_LOG_LEVEL", "debug")
            .set("WRITE_MAX_BYTES", "128KiB"),
    );
    assert_eq!(sim.token().map(Token::expose), Some(TOKEN));
    let mut shown = Vec::new();

    // Run 1, JSON logs: the stream is refused once, then dropped mid-way; S3 refuses the secret.
    sim.faults()
        .refuse_next_connections(FailStatus::Unauthenticated, 1);
    sim.faults().drop_after(300);
    let wrong = harness.set("MINIO_SECRET_KEY", WRONG_SECRET);
    let mut daemon = wrong.spawn();
    poll_until("uploads refused for the wrong secret", secs(30), || async {
        try_status(port)
            .await
            .is_some_and(|status| status["live"]["uploads_failing"] == "auth")
    })
    .await;
    wait_until(
        "a reconnection after the dropped connection",
        secs(30),
        || sim.served().accepted().count() >= 2,
    )
    .await;
    poll_until("a ping", secs(20), || async { !pings(&sim).is_empty() }).await;
    shown.push(("run 1 endpoint", endpoint_text(port).await));
    let text = wrong.run_command(&["status"], secs(30)).await;
    shown.push(("run 1 status", text.stdout + &text.stderr));
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let run1 = daemon.logs();
    assert!(
        run1.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
        "debug logs are on"
    );
    assert!(
        run1.iter()
            .any(|l| l.contains("upload failed") || l.contains("cannot prepare")),
        "the S3 refusal is logged"
    );
    assert!(
        run1.iter().any(|l| l.contains("HTTP 401")),
        "the refused stream is logged"
    );
    assert!(
        s3_keys(&s3, BUCKET).is_empty(),
        "nothing was uploaded with the wrong secret"
    );

    // Run 2, text logs, the right secret: everything is uploaded.
    let right = wrong
        .set("MINIO_SECRET_KEY", SECRET_KEY)
        .set("CONNECTOR_LOG_FORMAT", "text");
    let last = sim.live_ids().last().expect("a live log").to_string();
    let mut daemon = right.spawn();
    wait_until("the last live event is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    shown.push(("run 2 endpoint", endpoint_text(port).await));
    let text = right.run_command(&["status", "--json"], secs(30)).await;
    shown.push(("run 2 status", text.stdout + &text.stderr));
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let run2 = daemon.logs();
    assert!(
        run2.iter().any(|l| l.contains("DEBUG")),
        "debug logs are on"
    );
    let verify = right.run_command(&["verify"], secs(30)).await;
    assert_eq!(verify.code, Some(0), "{verify:?}");
    shown.push(("verify", verify.stdout + &verify.stderr));
    let export = read_s3_export(&s3, BUCKET).await;
    for line in &export.lines {
        assert_no_secret("an exported line", &String::from_utf8_lossy(line));
    }

    assert_no_secret("run 1 logs", &run1.join("\n"));
    assert_no_secret("run 2 logs", &run2.join("\n"));
    for (what, text) in &shown {
        assert!(!text.is_empty(), "{what} showed something");
        assert_no_secret(what, text);
    }
    // The GraphQL calls did carry the token (in the header only).
    assert!(sim.graphql_calls().iter().all(|call| call.authorized));
    for call in sim.graphql_calls() {
        assert_no_secret("a GraphQL request's variables", &call.variables.to_string());
    }
}
