//! Authentication and error statuses (docs/opencti-protocol.md#auth-and-errors: the message is in
//! the reason phrase, the body is empty), `/storage/get` (docs/opencti-protocol.md#attached-files)
//! and `/graphql` register/ping (docs/opencti-protocol.md#state-storage).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use simulator::{OCTI_EXT, STOPPED_STREAM_ID, SimulatorConfig, StreamDef};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_unknown_and_stopped_streams_answer_the_platform_statuses() {
    let mut public = StreamDef::live("public-stream");
    public.public = true;
    let mut config = small_config(20);
    config.streams.push(public);
    let sim = start(config).await;
    let addr = sim.addr();
    let auth = bearer(&sim);
    let stream = sim.stream_url().replace(&sim.url(), "");

    let (status, _, body) = raw_get(addr, &stream, &[]).await;
    assert_eq!(
        status,
        "HTTP/1.1 401 You are not authenticated, please check your credentials"
    );
    assert!(body.is_empty(), "error bodies are empty");
    let (status, _, _) = raw_get(addr, &stream, &[("authorization", "Bearer wrong")]).await;
    assert_eq!(
        status,
        "HTTP/1.1 401 You are not authenticated, please check your credentials"
    );
    let (status, _, body) =
        raw_get(addr, "/stream/no-such-stream", &[("authorization", &auth)]).await;
    assert_eq!(
        status,
        "HTTP/1.1 401 You are not authorized, please check your credentials"
    );
    assert!(body.is_empty());
    // The collection is checked before the token: a stopped stream is 410 even without one.
    let (status, _, body) = raw_get(addr, &format!("/stream/{STOPPED_STREAM_ID}"), &[]).await;
    assert_eq!(status, "HTTP/1.1 410 This live stream is stopped");
    assert!(body.is_empty());
    let (status, _, _) = raw_get(addr, "/stream", &[]).await;
    assert_eq!(
        status,
        "HTTP/1.1 401 You are not authenticated, please check your credentials"
    );

    let reader = connect(&format!("{}/stream/public-stream", sim.url()), &[]).await;
    assert_eq!(reader.status, 200, "a public stream needs no token");
    let mut raw = connect(
        &format!("{}/stream", sim.url()),
        &[("authorization", &auth), ("last-event-id", "0-0")],
    )
    .await;
    let frames = raw
        .read_until(|f| f.iter().filter(|x| x.is_data_event()).count() >= 50)
        .await;
    assert!(
        frames.iter().all(|f| f.referer().is_none()),
        "the raw stream sends no dependencies"
    );

    let served = sim.served();
    let statuses: Vec<u16> = served.connections.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [401, 401, 401, 410, 401, 200, 200]);
    assert!(!served.connections[0].request.authorization);
    assert!(served.connections[1].request.authorization);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_serves_corpus_files_with_auth_and_records_every_path() {
    let sim = start(SimulatorConfig {
        live_events: 2_000,
        ..small_config(21)
    })
    .await;
    assert!(sim.file_count() > 0, "the corpus references files");
    // Find a file uri in the stream.
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    let frames = reader
        .read_until(|f| {
            f.last()
                .is_some_and(|x| x.data.windows(13).any(|w| w == b"/storage/get/"))
        })
        .await;
    let payload = frames.last().expect("a frame with a file").json();
    let files = payload["data"]["extensions"][OCTI_EXT]["files"]
        .as_array()
        .expect("files")
        .clone();
    let uri = files[0]["uri"].as_str().expect("uri").to_owned();
    assert!(uri.starts_with("/storage/get/import/"), "{uri}");
    for key in ["name", "uri", "version", "mime_type", "object_marking_refs"] {
        assert!(files[0].get(key).is_some(), "file entry has {key}");
    }
    let encoded: String = uri
        .split('/')
        .map(|s| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        })
        .collect::<Vec<_>>()
        .join("/");

    let url = format!("{}{encoded}", sim.url());
    let anonymous = client().get(&url).send().await.expect("request");
    assert_eq!(anonymous.status().as_u16(), 403);
    let authed = client()
        .get(&url)
        .header("authorization", bearer(&sim))
        .send()
        .await
        .expect("request");
    assert_eq!(authed.status().as_u16(), 200);
    let bytes = authed.bytes().await.expect("body");
    assert_eq!(bytes.to_vec(), sim.file_bytes(&uri).expect("known file"));
    assert!(!bytes.is_empty());
    let again = client()
        .get(&url)
        .header("authorization", bearer(&sim))
        .send()
        .await
        .expect("request");
    assert_eq!(
        again.bytes().await.expect("body"),
        bytes,
        "file bytes are deterministic"
    );

    let missing = client()
        .get(format!(
            "{}/storage/get/import/Report/nope/missing.pdf",
            sim.url()
        ))
        .header("authorization", bearer(&sim))
        .send()
        .await
        .expect("request");
    assert_eq!(missing.status().as_u16(), 404);
    let (status, _, _) = raw_get(
        sim.addr(),
        "/storage/get/../../etc/passwd",
        &[("authorization", &bearer(&sim))],
    )
    .await;
    assert!(
        status.starts_with("HTTP/1.1 404") || status.starts_with("HTTP/1.1 400"),
        "{status}"
    );

    let requests = sim.storage_requests();
    assert_eq!(requests.len(), 5);
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>()[..4],
        [403, 200, 200, 404]
    );
    assert!(!requests[0].authorized && requests[1].authorized);
    assert_eq!(requests[1].path, encoded);
}

async fn graphql(
    sim: &simulator::SimulatorHandle,
    body: serde_json::Value,
    auth: bool,
) -> serde_json::Value {
    let mut request = client()
        .post(format!("{}/graphql", sim.url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    if auth {
        request = request.header("authorization", bearer(sim));
    }
    let response = request.send().await.expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let bytes = response.bytes().await.expect("body");
    serde_json::from_slice(&bytes).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_register_ping_and_reset_behave_like_the_platform() {
    let sim = start(small_config(22)).await;
    sim.set_connector_state(Some(r#"{"start_from":"1-0"}"#.to_owned()));
    let register = json!({
        "query": "mutation RegisterConnector($input: RegisterConnectorInput) { registerConnector(input: $input) { id connector_state config { push } connector_user_id } }",
        "variables": {"input": {"id": "conn-1", "name": "exporter", "type": "STREAM", "scope": ["stream"]}}
    });
    let answer = graphql(&sim, register.clone(), true).await;
    assert_eq!(answer["data"]["registerConnector"]["id"], "conn-1");
    assert_eq!(
        answer["data"]["registerConnector"]["connector_state"],
        r#"{"start_from":"1-0"}"#
    );
    assert_eq!(
        answer["data"]["registerConnector"]["config"]["push_exchange"],
        "amqp.worker.exchange"
    );

    let ping = |state: &str| {
        json!({
            "query": "mutation PingConnector($id: ID!, $state: String, $connectorInfo: ConnectorInfoInput) { pingConnector(id: $id, state: $state, connectorInfo: $connectorInfo) { id connector_state } }",
            "variables": {"id": "conn-1", "state": state, "connectorInfo": {"buffering": false}}
        })
    };
    let answer = graphql(&sim, ping(r#"{"start_from":"5-0"}"#), true).await;
    assert_eq!(
        answer["data"]["pingConnector"]["connector_state"],
        r#"{"start_from":"5-0"}"#
    );
    assert_eq!(
        sim.connector_state().as_deref(),
        Some(r#"{"start_from":"5-0"}"#)
    );

    sim.request_state_reset();
    let answer = graphql(&sim, ping(r#"{"start_from":"9-0"}"#), true).await;
    assert_eq!(
        answer["data"]["pingConnector"]["connector_state"], "",
        "the ping after a reset answers \"\""
    );
    assert_eq!(
        sim.connector_state().as_deref(),
        Some(""),
        "and does not store its own state"
    );
    let answer = graphql(&sim, ping(r#"{"start_from":"10-0"}"#), true).await;
    assert_eq!(
        answer["data"]["pingConnector"]["connector_state"],
        r#"{"start_from":"10-0"}"#
    );

    let answer = graphql(&sim, register, false).await;
    assert_eq!(answer["errors"][0]["extensions"]["code"], "AUTH_REQUIRED");

    let calls = sim.graphql_calls();
    let operations: Vec<&str> = calls.iter().map(|c| c.operation.as_str()).collect();
    assert_eq!(
        operations,
        [
            "registerConnector",
            "pingConnector",
            "pingConnector",
            "pingConnector",
            "registerConnector"
        ]
    );
    assert_eq!(calls[1].variables["state"], r#"{"start_from":"5-0"}"#);
    assert!(calls[0].authorized && !calls[4].authorized);
    let _ = Duration::ZERO;
}
