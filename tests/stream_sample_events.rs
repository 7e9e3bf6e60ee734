//! `tests/fixtures/sample-events.sse`, a transcript of what OpenCTI sends on a live stream, served
//! by a real HTTP stand-in, read by the stream client and transformed; every exported line is
//! checked field by field against docs/opencti-protocol.md#exported-line, including
//! `previous_standard` and the embedded file.

mod support;

use std::sync::atomic::Ordering::Relaxed;

use base64::Engine as _;
use bytes::Bytes;
use opencti_stream_exporter::stream::ResumePosition;
use opencti_stream_exporter::transform::Action;
use serde_json::{Map, Value};
use support::stream::*;

const FIXTURE: &[u8] = include_bytes!("fixtures/sample-events.sse");
const OCTI: &str = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";
const REPORT_FILE: &str =
    "/storage/get/import/Report/5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a/emotet-analysis.pdf";
const PDF: &[u8] =
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <</Type /Catalog>> endobj\n\x00\xff trailer";

/// The events of the fixture, parsed naively (it is plain LF-framed, one `data:` line each).
fn fixture_events() -> Vec<(Option<String>, String, String)> {
    let text = std::str::from_utf8(FIXTURE).expect("fixture is UTF-8");
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut id = None;
            let mut event = String::new();
            let mut data = String::new();
            for line in block.lines() {
                let (field, value) = line.split_once(": ").expect("field: value");
                match field {
                    "id" => id = Some(value.to_owned()),
                    "event" => event = value.to_owned(),
                    "data" => data = value.to_owned(),
                    other => panic!("unexpected field {other}"),
                }
            }
            (id, event, data)
        })
        .collect()
}

fn object(value: &Value) -> &Map<String, Value> {
    value.as_object().expect("a JSON object")
}

fn keys(value: &Value) -> Vec<&str> {
    object(value).keys().map(String::as_str).collect()
}

/// Checks one exported line against its SSE event (docs/opencti-protocol.md#exported-line),
/// `expected_keys` being the key order.
fn check_line(
    line: &[u8],
    id: &str,
    event: &str,
    payload: &str,
    expected_keys: &[&str],
    files_embedded: bool,
) -> Value {
    let text = std::str::from_utf8(line).expect("line is UTF-8");
    assert!(!text.contains('\n'), "one line");
    let output: Value = serde_json::from_str(text).expect("line is JSON");
    let input: Value = serde_json::from_str(payload).expect("payload is JSON");
    assert_eq!(keys(&output), expected_keys, "key order of {id} {event}");
    assert_eq!(output["id"], Value::String(id.to_owned()), "id of {id}");
    assert_eq!(
        output["type"],
        Value::String(event.to_owned()),
        "type of {id}"
    );
    for (key, value) in object(&input) {
        match key.as_str() {
            "id" | "type" => {}
            "data" if files_embedded => {}
            _ => assert_eq!(
                &output[key], value,
                "field {key} of {id} {event} is copied unchanged"
            ),
        }
    }
    output
}

#[tokio::test]
async fn sample_events_through_client_and_transform_match_the_stock_exporter() {
    let chunks: Vec<Bytes> = FIXTURE.chunks(1000).map(Bytes::copy_from_slice).collect();
    let stand_in = StandIn::start(
        move |_, _| Reply::Events {
            chunks: chunks.clone(),
            end: End::Stall,
        },
        |request| {
            if request.path == REPORT_FILE {
                Reply::Body("application/pdf", Bytes::from_static(PDF))
            } else {
                Reply::Status(404, "Not Found")
            }
        },
    )
    .await;
    let (items, log) = start_pipeline(
        ResumePosition {
            cursor: Some("1718012300000-0".into()),
            recover_until: None,
        },
        64,
    );
    let client = start_client(test_settings(&stand_in.base), items);
    wait_until("the final heartbeat", SOON, || {
        log.lock().expect("lock").position.cursor.as_deref() == Some("1718012400012-0")
    })
    .await;
    let received = log.lock().expect("lock").items.clone();

    // The sequence of items: heartbeats and consumer_metrics advance, data events export.
    let events = fixture_events();
    assert_eq!(events.len(), 16);
    let shape: Vec<String> = received
        .iter()
        .map(|item| match item {
            Received::Export {
                id,
                action,
                holds_cursor,
                ..
            } => format!("export {action} {id} {holds_cursor}"),
            Received::Advance(id) => format!("advance {id}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "advance 1718012300000-0",
            "advance 1718012300000-0",
            "export create 1718012346001-0 true",
            "export create 1718012350123-0 false",
            "export create 1718012350123-0 false",
            "export create 1718012350123-0 false",
            "export create 1718012350123-0 false",
            "export create 1718012350123-0 true",
            "export update 1718012361500-0 true",
            "export update 1718012372250-0 true",
            "advance 1718012372250-0",
            "advance 1718012372250-0",
            "export delete 1718012380777-0 true",
            "export merge 1718012391034-0 true",
            "advance 1718012400012-0",
        ]
    );

    let lines: Vec<Bytes> = received
        .iter()
        .filter_map(|item| match item {
            Received::Export { line, .. } => Some(line.clone()),
            _ => None,
        })
        .collect();
    let data_events: Vec<&(Option<String>, String, String)> = events
        .iter()
        .filter(|(_, event, _)| Action::from_event_name(event.as_bytes()).is_some())
        .collect();
    assert_eq!(lines.len(), data_events.len());

    let live = [
        "version", "type", "scope", "message", "origin", "data", "event_id", "id",
    ];
    let live_with_context = [
        "version", "type", "scope", "message", "origin", "data", "context", "event_id", "id",
    ];
    let dependency = ["data", "message", "origin", "version", "id", "type"];
    let with_previous = [
        "version",
        "type",
        "scope",
        "message",
        "origin",
        "data",
        "context",
        "event_id",
        "id",
        "previous_standard",
    ];
    for (index, (line, (id, event, payload))) in lines.iter().zip(&data_events).enumerate() {
        let id = id.as_deref().expect("data events have ids");
        let (expected_keys, files_embedded): (&[&str], bool) = match index {
            0 => (&live, false),
            1..=4 => (&dependency, false),
            5 => (&live, false),
            6 => (&live_with_context, true),
            7 => (&with_previous, false),
            8 => (&live, false),
            9 => (&live_with_context, false),
            _ => unreachable!("ten data events"),
        };
        let output = check_line(line, id, event, payload, expected_keys, files_embedded);
        if index != 6 {
            let input: Value = serde_json::from_str(payload).expect("json");
            assert_eq!(output["data"], input["data"], "data of {id} unchanged");
        }
        if index == 7 {
            assert_eq!(
                output["previous_standard"],
                "indicator--5a9e7c3b-2d4f-5e6a-8b1c-9d0e2f3a4b5c"
            );
        } else {
            assert!(
                output.get("previous_standard").is_none(),
                "no previous_standard on {id} {event}"
            );
        }
        if index == 9 {
            assert_eq!(
                output["context"]["sources"][0]["type"], "malware",
                "merge keeps context.sources"
            );
        }
    }

    // The report update: the file entry gets `data`, and data.files holds the same entries
    // (docs/opencti-protocol.md#attached-files).
    let output: Value = serde_json::from_slice(&lines[6]).expect("json");
    let input: Value = serde_json::from_str(&data_events[6].2).expect("json");
    let mut expected_keys = keys(&input["data"]);
    expected_keys.push("files");
    assert_eq!(keys(&output["data"]), expected_keys);
    for (key, value) in object(&input["data"]) {
        if key != "extensions" {
            assert_eq!(&output["data"][key], value, "data.{key} unchanged");
        }
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(PDF);
    let mut expected_file = input["data"]["extensions"][OCTI]["files"][0].clone();
    expected_file
        .as_object_mut()
        .expect("object")
        .insert("data".to_owned(), Value::String(encoded));
    let mut expected_extension = input["data"]["extensions"][OCTI].clone();
    expected_extension["files"] = Value::Array(vec![expected_file.clone()]);
    assert_eq!(output["data"]["extensions"][OCTI], expected_extension);
    assert_eq!(
        keys(&output["data"]["extensions"][OCTI]["files"][0]).last(),
        Some(&"data")
    );
    assert_eq!(output["data"]["files"], Value::Array(vec![expected_file]));

    // The download went to this OpenCTI, with the token.
    let downloads = stand_in.file_requests.lock().expect("lock").clone();
    assert_eq!(downloads.len(), 1);
    assert_eq!(downloads[0].path, REPORT_FILE);
    assert_eq!(
        downloads[0].header("authorization"),
        Some("Bearer s3cr3t-t0ken")
    );

    // Control events fed the stats.
    let metrics = client.stats.consumer_metrics().expect("consumer metrics");
    assert_eq!(
        (
            metrics.delivery_rate,
            metrics.processing_rate,
            metrics.time_lag
        ),
        (0.35, 2.9, 1.2)
    );
    let connected = client.stats.connected_info().expect("connected info");
    assert_eq!(connected.first_event_id.as_deref(), Some("1715433600000-0"));
    assert_eq!(connected.stream_size, Some(1_834_221));
    assert_eq!(client.stats.heartbeats.load(Relaxed), 3);
    assert_eq!(client.stats.consumer_metrics_events.load(Relaxed), 2);
    assert_eq!(client.stats.files_ok.load(Relaxed), 1);
    assert_eq!(client.stats.exported(Action::Create), 6);
    assert_eq!(client.stats.exported(Action::Update), 2);
    assert_eq!(client.stats.dead_lettered.load(Relaxed), 0);
    client.stop().await;
}
