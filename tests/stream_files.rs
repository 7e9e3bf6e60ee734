//! File downloads through the stream client: hostile uris are never fetched, redirects never
//! leave OpenCTI, failures omit `data` (never `null`), size limits, and arrival order is kept
//! while downloads run concurrently.

mod stream_support;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use serde_json::Value;
use stream_support::*;

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
    let log = log.lock().expect("lock");
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
    drop(log);
    client.stop().await;
}
