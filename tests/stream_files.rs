//! File downloads through the stream client: hostile uris are never fetched, redirects never
//! leave OpenCTI, failures omit `data` (never `null`), size limits, and arrival order is kept
//! while downloads run concurrently.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use serde_json::Value;
use support::stream::*;

const OCTI: &str = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";

fn payload_with_files(uris: &[String]) -> String {
    let files: Vec<String> = uris
        .iter()
        .map(|uri| {
            format!(
                r#"{{"name":"f","uri":{}}}"#,
                serde_json::to_string(uri).expect("json")
            )
        })
        .collect();
    format!(
        r#"{{"version":"4","type":"update","data":{{"id":"report--1","type":"report","extensions":{{"{OCTI}":{{"files":[{}]}}}}}},"event_id":"e"}}"#,
        files.join(",")
    )
}

fn file_entries(line: &[u8]) -> Vec<Value> {
    let value: Value = serde_json::from_slice(line).expect("json line");
    value["data"]["extensions"][OCTI]["files"]
        .as_array()
        .expect("files")
        .clone()
}

#[tokio::test]
async fn hostile_file_uris_are_not_fetched() {
    // Another host that must never be contacted.
    let evil = StandIn::start(
        |_, _| Reply::Status(404, "Not Found"),
        |_| Reply::Body("text/plain", Bytes::from_static(b"stolen")),
    )
    .await;
    let evil_base = evil.base.as_str().trim_end_matches('/').to_owned();
    let redirect_target = format!("{evil_base}/storage/get/x");
    let uris: Vec<String> = vec![
        "/storage/get/import/ok.txt".into(),
        "/storage/get/../../etc/passwd".into(),
        "/storage/get/import/%2e%2e/%2e%2e/secret".into(),
        format!("{evil_base}/storage/get/import/ok.txt"),
        "/storage/get/import//ok.txt".into(),
        "/storage/get/a\\b".into(),
        "unknown".into(),
        "/storage/get/redirect".into(),
    ];
    let body = sse(Some("1-0"), "update", &payload_with_files(&uris));
    let stand_in = StandIn::start(
        move |_, _| Reply::Events {
            chunks: vec![Bytes::from(body.clone())],
            end: End::Stall,
        },
        move |request| match request.path.as_str() {
            "/storage/get/import/ok.txt" => Reply::Body("text/plain", Bytes::from_static(b"ok")),
            "/storage/get/redirect" => Reply::Redirect(redirect_target.clone()),
            _ => Reply::Status(404, "Not Found"),
        },
    )
    .await;
    let (items, log) = start_pipeline(Default::default(), 16);
    let client = start_client(test_settings(&stand_in.base), items);
    wait_until("the export", SOON, || {
        log.lock().expect("lock").exports().len() == 1
    })
    .await;

    let line = log.lock().expect("lock").exports()[0].2.clone();
    let entries = file_entries(&line);
    assert_eq!(entries.len(), uris.len());
    assert_eq!(entries[0]["data"], "b2s=");
    for entry in &entries[1..] {
        assert!(
            entry.get("data").is_none(),
            "no data (and never null) for {entry}"
        );
    }
    let fetched: Vec<String> = stand_in
        .file_requests
        .lock()
        .expect("lock")
        .iter()
        .map(|seen| seen.path.clone())
        .collect();
    assert_eq!(
        fetched
            .iter()
            .filter(|path| *path == "/storage/get/import/ok.txt")
            .count(),
        1
    );
    assert!(
        fetched
            .iter()
            .all(|path| path == "/storage/get/import/ok.txt" || path == "/storage/get/redirect"),
        "{fetched:?}"
    );
    assert_eq!(
        evil.file_requests.lock().expect("lock").len(),
        0,
        "the other host was never contacted"
    );
    assert_eq!(client.stats.files_refused.load(Relaxed), 6);
    assert_eq!(
        client.stats.files_failed.load(Relaxed),
        1,
        "the refused redirect is a failed download"
    );
    assert_eq!(client.stats.files_ok.load(Relaxed), 1);
    client.stop().await;
}

#[tokio::test]
async fn failed_and_oversized_downloads_omit_data_and_are_counted() {
    let uris: Vec<String> = vec![
        "/storage/get/missing".into(),
        "/storage/get/big".into(),
        "/storage/get/small".into(),
    ];
    let body = sse(Some("1-0"), "update", &payload_with_files(&uris));
    let stand_in = StandIn::start(
        move |_, _| Reply::Events {
            chunks: vec![Bytes::from(body.clone())],
            end: End::Stall,
        },
        |request| match request.path.as_str() {
            "/storage/get/big" => {
                Reply::Body("application/octet-stream", Bytes::from(vec![7u8; 4096]))
            }
            "/storage/get/small" => {
                Reply::Body("application/octet-stream", Bytes::from_static(b"abc"))
            }
            _ => Reply::Status(403, "Forbidden"),
        },
    )
    .await;
    let (items, log) = start_pipeline(Default::default(), 16);
    let mut settings = test_settings(&stand_in.base);
    settings.files.max_file_bytes = 1024;
    let client = start_client(settings, items);
    wait_until("the export", SOON, || {
        log.lock().expect("lock").exports().len() == 1
    })
    .await;
    let entries = file_entries(&log.lock().expect("lock").exports()[0].2);
    assert!(entries[0].get("data").is_none());
    assert!(entries[1].get("data").is_none());
    assert_eq!(entries[2]["data"], "YWJj");
    assert_eq!(client.stats.files_failed.load(Relaxed), 1);
    assert_eq!(client.stats.files_too_large.load(Relaxed), 1);
    client.stop().await;
}

#[tokio::test]
async fn lines_keep_arrival_order_while_downloads_run_concurrently() {
    // Event 1's file is held back until the test releases it; event 3's file is served at once.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&gate);
    let mut body = String::new();
    body.push_str(&sse(
        Some("1-0"),
        "update",
        &payload_with_files(&["/storage/get/slow".into()]),
    ));
    body.push_str(&sse(Some("2-0"), "create", &create_payload(2)));
    body.push_str(&sse(
        Some("3-0"),
        "update",
        &payload_with_files(&["/storage/get/fast".into()]),
    ));
    body.push_str(&sse(Some("4-0"), "heartbeat", "\"x\""));
    body.push_str(&sse(Some("5-0"), "create", &create_payload(5)));
    let stand_in = StandIn::start(
        move |_, _| Reply::Events {
            chunks: vec![Bytes::from(body.clone())],
            end: End::Stall,
        },
        move |request| {
            if request.path == "/storage/get/slow" {
                Reply::Gated(Arc::clone(&held), Bytes::from_static(b"slow"))
            } else {
                Reply::Body("text/plain", Bytes::from_static(b"fast"))
            }
        },
    )
    .await;
    let (items, log) = start_pipeline(Default::default(), 16);
    let client = start_client(test_settings(&stand_in.base), items);

    let requested = |path: &str| {
        stand_in
            .file_requests
            .lock()
            .expect("lock")
            .iter()
            .any(|seen| seen.path == path)
    };
    wait_until("both downloads started", SOON, || {
        requested("/storage/get/slow") && requested("/storage/get/fast")
    })
    .await;
    assert!(
        log.lock().expect("lock").items.is_empty(),
        "nothing overtakes the event waiting for its file"
    );
    gate.add_permits(1);
    wait_until("all items", SOON, || {
        log.lock().expect("lock").items.len() == 5
    })
    .await;
    let log = log.lock().expect("lock").clone();
    let order: Vec<String> = log
        .items
        .iter()
        .map(|item| match item {
            Received::Export { id, .. } | Received::Advance(id) => id.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(order, ["1-0", "2-0", "3-0", "4-0", "5-0"]);
    let exports = log.exports();
    assert_eq!(file_entries(&exports[0].2)[0]["data"], "c2xvdw==");
    assert_eq!(file_entries(&exports[2].2)[0]["data"], "ZmFzdA==");
    client.stop().await;
}

/// The lines of a missing-files record.
fn missing_records(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn requests_for(stand_in: &StandIn, path: &str) -> usize {
    stand_in
        .file_requests
        .lock()
        .expect("lock")
        .iter()
        .filter(|seen| seen.path == path)
        .count()
}

#[tokio::test]
async fn transient_failures_are_retried_without_tripping_the_idle_watchdog() {
    // The file's first attempt hangs until its time limit, the next two get 503, the fourth
    // succeeds: about 3 s of retrying, longer than the idle timeout, while the download queue is
    // full so nothing is read from the stream.
    let never = Arc::new(tokio::sync::Semaphore::new(0));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut body = sse(
        Some("1-0"),
        "update",
        &payload_with_files(&["/storage/get/flaky".into()]),
    );
    for n in 2..=6 {
        body.push_str(&sse(Some(&format!("{n}-0")), "create", &create_payload(n)));
    }
    let seen_attempts = Arc::clone(&attempts);
    let stand_in = StandIn::start(
        move |_, _| Reply::Events {
            chunks: vec![Bytes::from(body.clone())],
            end: End::Stall,
        },
        move |_| match seen_attempts.fetch_add(1, Relaxed) {
            0 => Reply::Gated(Arc::clone(&never), Bytes::new()),
            1 => Reply::Status(503, "Service Unavailable"),
            2 => Reply::Status(429, "Too Many Requests"),
            _ => Reply::Body("application/pdf", Bytes::from_static(b"%PDF")),
        },
    )
    .await;
    let (items, log) = start_pipeline(Default::default(), 16);
    let mut settings = test_settings(&stand_in.base);
    settings.idle_timeout = std::time::Duration::from_secs(2);
    settings.files.max_events_in_flight = 2;
    settings.files.timeout = std::time::Duration::from_millis(2500);
    settings.files.retry_backoff_base = std::time::Duration::from_millis(100);
    settings.files.retry_max = std::time::Duration::from_secs(30);
    let client = start_client(settings, items);
    wait_until("all six exports", SOON, || {
        log.lock().expect("lock").exports().len() == 6
    })
    .await;
    assert_eq!(
        stand_in.stream_request_count(),
        1,
        "retrying the file caused no reconnection (and so no replay)"
    );
    assert_eq!(
        client
            .stats
            .reconnects(opencti_stream_exporter::stream::stats::ReconnectReason::Idle),
        0
    );
    let log = log.lock().expect("lock").clone();
    assert_eq!(log.export_ids(), ["1-0", "2-0", "3-0", "4-0", "5-0", "6-0"]);
    assert_eq!(file_entries(&log.exports()[0].2)[0]["data"], "JVBERg==");
    assert_eq!(attempts.load(Relaxed), 4);
    assert_eq!(client.stats.file_retries.load(Relaxed), 3);
    assert_eq!(client.stats.files_missing.load(Relaxed), 0);
    client.stop().await;
}

#[tokio::test]
async fn a_failing_store_opens_the_breaker_and_every_missing_file_is_recorded() {
    // Connection 0: two events whose files fail until the retry bound. Connection 1, after the
    // breaker opened: a failing file (one attempt only). Connection 2: a file that downloads
    // (closing the breaker). Connection 3: a failing file, retried again.
    let event = |n: u64, file: &str| {
        sse(
            Some(&format!("{n}-0")),
            "update",
            &payload_with_files(&[format!("/storage/get/{file}"), "unknown".into()]),
        )
    };
    let connections = [
        (event(1, "a") + &event(2, "b"), End::Close),
        (event(3, "c"), End::Close),
        (event(4, "ok"), End::Close),
        (event(5, "f"), End::Stall),
    ];
    let connections: Vec<(String, bool)> = connections
        .into_iter()
        .map(|(body, end)| (body, matches!(end, End::Stall)))
        .collect();
    let stand_in = StandIn::start(
        move |index, _| {
            let (body, stall) = connections[index.min(3)].clone();
            Reply::Events {
                chunks: vec![Bytes::from(if index > 3 { String::new() } else { body })],
                end: if stall { End::Stall } else { End::Close },
            }
        },
        |request| match request.path.as_str() {
            "/storage/get/ok" => Reply::Body("text/plain", Bytes::from_static(b"ok")),
            _ => Reply::Status(503, "Service Unavailable"),
        },
    )
    .await;
    let record = tempfile::tempdir().expect("tempdir");
    let record_path = record.path().join("missing-files.ndjson");
    let (items, log) = start_pipeline(Default::default(), 16);
    let mut settings = test_settings(&stand_in.base);
    settings.files.retry_max = std::time::Duration::from_millis(800);
    settings.files.retry_backoff_base = std::time::Duration::from_millis(20);
    settings.files.missing_record = Some(record_path.clone());
    let client = start_client(settings, items);
    wait_until("five exports", SOON, || {
        log.lock().expect("lock").exports().len() == 5
    })
    .await;
    assert!(requests_for(&stand_in, "/storage/get/a") >= 2, "retried");
    assert!(requests_for(&stand_in, "/storage/get/b") >= 2, "retried");
    assert_eq!(
        requests_for(&stand_in, "/storage/get/c"),
        1,
        "one attempt while the breaker is open"
    );
    assert!(
        requests_for(&stand_in, "/storage/get/f") >= 2,
        "retried again once a download succeeded"
    );
    let exports = log.lock().expect("lock").exports();
    let ids: Vec<&str> = exports.iter().map(|(id, ..)| id.as_str()).collect();
    assert_eq!(ids, ["1-0", "2-0", "3-0", "4-0", "5-0"]);
    for (index, export) in exports.iter().enumerate() {
        let entries = file_entries(&export.2);
        if index == 3 {
            assert_eq!(entries[0]["data"], "b2s=");
        } else {
            assert!(entries[0].get("data").is_none(), "exported without data");
        }
    }
    let records = missing_records(&record_path);
    let mut recorded: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["event_id"].as_str().expect("id").to_owned(),
                r["uri"].as_str().expect("uri").to_owned(),
            )
        })
        .collect();
    // Events 1 and 2 wait for their files at the same time: either may be recorded first.
    recorded.sort();
    assert_eq!(
        recorded,
        [
            ("1-0".to_owned(), "/storage/get/a".to_owned()),
            ("2-0".to_owned(), "/storage/get/b".to_owned()),
            ("3-0".to_owned(), "/storage/get/c".to_owned()),
            ("5-0".to_owned(), "/storage/get/f".to_owned()),
        ],
        "every missing file once, the inline `unknown` entries never"
    );
    for record in &records {
        let reason = record["reason"].as_str().expect("reason");
        assert!(reason.contains("HTTP 503"), "{reason}");
        assert!(record["at"].as_str().is_some());
    }
    assert_eq!(client.stats.files_missing.load(Relaxed), 4);
    client.stop().await;
}

#[tokio::test]
async fn files_over_the_per_event_caps_are_exported_without_data_and_recorded() {
    let uris: Vec<String> = vec![
        "/storage/get/first".into(),
        "unknown".into(),
        "/storage/get/second".into(),
        "/storage/get/third".into(),
    ];
    let body = sse(Some("1-0"), "update", &payload_with_files(&uris));
    let stand_in = StandIn::start(
        move |_, _| Reply::Events {
            chunks: vec![Bytes::from(body.clone())],
            end: End::Stall,
        },
        |_| Reply::Body("text/plain", Bytes::from_static(b"abc")),
    )
    .await;
    let record = tempfile::tempdir().expect("tempdir");
    let record_path = record.path().join("missing-files.ndjson");
    let (items, log) = start_pipeline(Default::default(), 16);
    let mut settings = test_settings(&stand_in.base);
    settings.files.concurrency = 1;
    settings.files.max_per_event = 2;
    settings.files.max_total_bytes = 5;
    settings.files.missing_record = Some(record_path.clone());
    let client = start_client(settings, items);
    wait_until("the export", SOON, || {
        log.lock().expect("lock").exports().len() == 1
    })
    .await;
    let entries = file_entries(&log.lock().expect("lock").exports()[0].2);
    assert_eq!(entries[0]["data"], "YWJj");
    assert!(entries[2].get("data").is_none(), "over the byte cap");
    assert!(entries[3].get("data").is_none(), "over the count cap");
    assert_eq!(
        requests_for(&stand_in, "/storage/get/third"),
        0,
        "a file over the count cap is not downloaded"
    );
    let records = missing_records(&record_path);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["uri"], "/storage/get/second");
    assert!(
        records[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("FILES_MAX_TOTAL_BYTES"))
    );
    assert_eq!(records[1]["uri"], "/storage/get/third");
    assert!(
        records[1]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("FILES_MAX_PER_EVENT"))
    );
    client.stop().await;
}

#[tokio::test]
async fn reading_stops_while_the_bytes_in_flight_are_full_without_tripping_the_watchdog() {
    // 100 events of about 4 KiB; the stand-in pipeline keeps every line it receives, so the
    // bytes in flight only go down when the test empties it.
    let filler = "x".repeat(4000);
    let chunks: Vec<Bytes> = (1..=100u64)
        .map(|n| {
            let payload = format!(
                r#"{{"version":"4","type":"create","data":{{"id":"malware--{n}","description":"{filler}"}}}}"#
            );
            Bytes::from(sse(Some(&format!("{n}-0")), "create", &payload))
        })
        .collect();
    let stand_in = StandIn::stream_only(move |_, _| Reply::Events {
        chunks: chunks.clone(),
        end: End::Stall,
    })
    .await;
    let (items, log) = start_pipeline(Default::default(), 1000);
    let mut settings = test_settings(&stand_in.base);
    settings.max_bytes_in_flight = 64 * 1024;
    settings.idle_timeout = std::time::Duration::from_secs(1);
    let client = start_client(settings, items);
    wait_until("the first exports", SOON, || {
        log.lock().expect("lock").exports().len() >= 10
    })
    .await;
    // Nothing is freed: reading must stay stopped, longer than the idle timeout.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let held = log.lock().expect("lock").exports().len();
    assert!(
        held <= 64 * 1024 / 4000 + 4,
        "{held} lines of 4 KB held with a bound of 64 KiB"
    );
    let mut last = String::new();
    wait_until("the rest, as lines are freed", SOON, || {
        let mut log = log.lock().expect("lock");
        if let Some((id, ..)) = log.exports().last() {
            last = id.clone();
        }
        log.items.clear();
        last == "100-0"
    })
    .await;
    assert_eq!(stand_in.stream_request_count(), 1, "no reconnection");
    client.stop().await;
}
