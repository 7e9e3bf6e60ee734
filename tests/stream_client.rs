//! The stream client against scripted OpenCTI stand-ins (real HTTP on 127.0.0.1): resume
//! position, dependency events, recovery parameters, error statuses, the idle watchdog,
//! backpressure, and bad input.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opencti_stream_exporter::stream::ResumePosition;
use opencti_stream_exporter::stream::stats::ReconnectReason;
use opencti_stream_exporter::transform::Action;
use support::stream::*;

fn position(cursor: &str) -> ResumePosition {
    ResumePosition {
        cursor: Some(cursor.to_owned()),
        recover_until: None,
    }
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("stream id");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// A tiny OpenCTI: a fixed list of events; each connection sends those strictly after its
/// `Last-Event-ID` (docs/opencti-protocol.md#event-ids), at most `per_connection[n]` of them, then
/// (when limited) cuts the connection in the middle of the next event; the last connection stalls.
fn replaying_stream(
    events: Vec<(String, String)>,
    per_connection: Vec<usize>,
) -> impl Fn(usize, &Seen) -> Reply {
    move |index, request| {
        let after = request
            .header("last-event-id")
            .map(parse_id)
            .unwrap_or((0, 0));
        let pending: Vec<&(String, String)> = events
            .iter()
            .filter(|(id, _)| parse_id(id) > after)
            .collect();
        let mut body = sse(
            None,
            "connected",
            r#"{"firstEventId":"1-0","lastEventId":"99-0"}"#,
        );
        match per_connection.get(index) {
            Some(&limit) => {
                for (id, data) in pending.iter().take(limit) {
                    body.push_str(&sse(Some(id), "create", data));
                }
                if let Some((id, data)) = pending.get(limit) {
                    // Cut mid-event: the client must discard it, the next connection resends it.
                    let partial = sse(Some(id), "create", data);
                    body.push_str(&partial[..partial.len() / 2]);
                }
                Reply::Events {
                    chunks: vec![Bytes::from(body)],
                    end: End::Close,
                }
            }
            None => {
                for (id, data) in &pending {
                    body.push_str(&sse(Some(id), "create", data));
                }
                Reply::Events {
                    chunks: vec![Bytes::from(body)],
                    end: End::Stall,
                }
            }
        }
    }
}

#[tokio::test]
async fn resume_after_a_drop_sends_the_durable_cursor_and_loses_nothing() {
    let events: Vec<(String, String)> = (1..=9)
        .map(|n| (format!("{n}000-0"), create_payload(n)))
        .collect();
    let stand_in = StandIn::stream_only(replaying_stream(events.clone(), vec![3, 0, 4])).await;
    let (items, log) = start_pipeline(position("500-0"), 16);
    let client = start_client(test_settings(&stand_in.base), items);

    wait_until("all nine events exported", SOON, || {
        log.lock().expect("lock").exports().len() >= 9
    })
    .await;
    let expected: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        log.lock().expect("lock").export_ids(),
        expected,
        "each event exactly once, in order"
    );
    let sent: Vec<Option<String>> = (0..4)
        .map(|n| {
            stand_in
                .stream_request(n)
                .header("last-event-id")
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        sent,
        [
            Some("500-0".into()),
            Some("3000-0".into()),
            Some("3000-0".into()),
            Some("7000-0".into())
        ],
        "every connection resumes from the durable cursor"
    );
    assert_eq!(client.stats.reconnects(ReconnectReason::Eof), 3);
    assert_eq!(
        log.lock().expect("lock").syncs,
        4,
        "one Sync before each connection"
    );
    client.stop().await;
}

#[tokio::test]
async fn a_dependency_event_never_becomes_the_cursor_on_its_own() {
    let dependency = r#"{"data":{"id":"identity--1","type":"identity"},"message":"m","origin":{"referer":"init-dependencies"},"version":"4"}"#;
    let events = vec![
        ("1000-0".to_owned(), create_payload(1)),
        ("2000-0".to_owned(), dependency.to_owned()),
        ("2000-0".to_owned(), create_payload(2)),
    ];
    // The first connection stops right after the dependency, before the event that shares its id.
    let stand_in = StandIn::stream_only(replaying_stream(events, vec![2])).await;
    let (items, log) = start_pipeline(position("0-1"), 16);
    let client = start_client(test_settings(&stand_in.base), items);

    wait_until("the second connection", SOON, || {
        stand_in.stream_request_count() >= 2
    })
    .await;
    assert_eq!(
        stand_in.stream_request(1).header("last-event-id"),
        Some("1000-0"),
        "the dependency's id was not used as the cursor"
    );
    let exports = log.lock().expect("lock").exports();
    assert_eq!(exports[1].0, "2000-0");
    assert!(!exports[1].3, "the dependency does not hold the cursor");
    assert!(exports[0].3);
    client.stop().await;
}

#[tokio::test]
async fn recovery_parameters_are_sent_on_first_start_and_dropped_after_no_recover() {
    let stand_in = StandIn::stream_only(|index, _| {
        let mut body = sse(None, "connected", "{}");
        if index == 0 {
            body.push_str(&sse(Some("1000-0"), "create", &create_payload(1)));
            body.push_str(&sse(
                Some("1718012400000-0"),
                "no-recover",
                r#"{"stream":"s","message":"origin filters","resume_from":"0-0"}"#,
            ));
            Reply::Events {
                chunks: vec![Bytes::from(body)],
                end: End::Close,
            }
        } else {
            Reply::Events {
                chunks: vec![Bytes::from(body)],
                end: End::Stall,
            }
        }
    })
    .await;
    // First start as the pipeline initializes it (docs/opencti-protocol.md#start-position): from
    // 0-0, recover until "now".
    let first_start = ResumePosition {
        cursor: Some("0-0".to_owned()),
        recover_until: Some("2024-06-10T09:38:20+00:00".to_owned()),
    };
    let (items, log) = start_pipeline(first_start, 16);
    let client = start_client(test_settings(&stand_in.base), items);

    wait_until("the reconnection", SOON, || {
        stand_in.stream_request_count() >= 2
    })
    .await;
    let first = stand_in.stream_request(0);
    assert_eq!(first.path, "/stream/stream-1");
    assert_eq!(first.header("last-event-id"), Some("0-0"));
    assert_eq!(
        first.query.as_deref(),
        Some("recover=2024-06-10T09%3A38%3A20%2B00%3A00")
    );
    assert_eq!(first.header("listen-delete"), Some("true"));
    assert_eq!(first.header("no-dependencies"), Some("true"));
    assert_eq!(first.header("with-inferences"), Some("false"));
    assert_eq!(first.header("authorization"), Some("Bearer s3cr3t-t0ken"));
    let second = stand_in.stream_request(1);
    assert_eq!(second.query, None, "no recovery after no-recover");
    assert_eq!(
        second.header("last-event-id"),
        Some("1000-0"),
        "no-recover does not move the cursor"
    );
    assert!(matches!(
        log.lock().expect("lock").items.last(),
        Some(Received::RecoveryDisabled(id)) if id == "1718012400000-0"
    ));
    client.stop().await;
}

#[tokio::test]
async fn recovery_bound_stays_on_reconnections_until_disabled() {
    let stand_in = StandIn::stream_only(|index, _| {
        let body = if index == 0 {
            sse(Some("5-0"), "heartbeat", "\"x\"")
        } else {
            String::new()
        };
        let end = if index == 0 { End::Close } else { End::Stall };
        Reply::Events {
            chunks: vec![Bytes::from(body)],
            end,
        }
    })
    .await;
    let start = ResumePosition {
        cursor: Some("0-0".into()),
        recover_until: Some("2024-06-10T09:38:20.000Z".into()),
    };
    let (items, _log) = start_pipeline(start, 16);
    let client = start_client(test_settings(&stand_in.base), items);
    wait_until("the reconnection", SOON, || {
        stand_in.stream_request_count() >= 2
    })
    .await;
    // pycti keeps `?recover=` on every connection; the server ignores it once start > recover.
    assert_eq!(
        stand_in.stream_request(1).query.as_deref(),
        Some("recover=2024-06-10T09%3A38%3A20.000Z")
    );
    assert_eq!(
        stand_in.stream_request(1).header("last-event-id"),
        Some("5-0")
    );
    client.stop().await;
}

/// Captures log output of the current thread (tests run on a current-thread runtime).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn unauthorized_then_the_server_recovers() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let stand_in = StandIn::stream_only(|index, _| match index {
        0..=2 => Reply::Status(
            401,
            "You are not authenticated, please check your credentials",
        ),
        3 => Reply::Status(410, "This live stream is stopped"),
        _ => Reply::Events {
            chunks: vec![Bytes::from(sse(
                Some("1000-0"),
                "create",
                &create_payload(1),
            ))],
            end: End::Stall,
        },
    })
    .await;
    let (items, log) = start_pipeline(position("1-0"), 16);
    let client = start_client(test_settings(&stand_in.base), items);

    wait_until("the event after recovery", SOON, || {
        log.lock().expect("lock").exports().len() == 1
    })
    .await;
    assert_eq!(client.stats.reconnects(ReconnectReason::Unauthorized), 3);
    assert_eq!(client.stats.reconnects(ReconnectReason::Gone), 1);
    assert_eq!(
        client
            .stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    client.stop().await;

    let output = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8 logs");
    assert_eq!(
        output
            .matches("You are not authenticated, please check your credentials")
            .count(),
        1,
        "logged once for three identical failures:\n{output}"
    );
    assert_eq!(
        output.matches("This live stream is stopped").count(),
        1,
        "{output}"
    );
    assert!(
        !output.contains("s3cr3t-t0ken"),
        "the token must never be logged:\n{output}"
    );
}

#[tokio::test]
async fn server_errors_and_refused_connections_are_retried() {
    let stand_in = StandIn::stream_only(|index, _| match index {
        0 => Reply::Status(500, "Error in stream"),
        1 => Reply::Status(429, "Too Many Requests"),
        2 => Reply::Body("text/html", Bytes::from_static(b"<html>login</html>")),
        _ => Reply::Events {
            chunks: vec![Bytes::from(sse(Some("7-0"), "heartbeat", "\"x\""))],
            end: End::Stall,
        },
    })
    .await;
    let (items, log) = start_pipeline(position("1-0"), 16);
    let client = start_client(test_settings(&stand_in.base), items);
    wait_until("the heartbeat", SOON, || {
        log.lock().expect("lock").position.cursor.as_deref() == Some("7-0")
    })
    .await;
    assert_eq!(client.stats.reconnects(ReconnectReason::ServerError), 1);
    assert_eq!(client.stats.reconnects(ReconnectReason::TooManyRequests), 1);
    assert_eq!(client.stats.reconnects(ReconnectReason::Malformed), 1);
    client.stop().await;

    // Nobody listening: network errors, retried until cancelled, never an exit.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = closed.local_addr().expect("address");
    drop(closed);
    let base = reqwest::Url::parse(&format!("http://{address}")).expect("url");
    let (items, _log) = start_pipeline(position("1-0"), 16);
    let client = start_client(test_settings(&base), items);
    let stats = Arc::clone(&client.stats);
    wait_until("several network failures", SOON, || {
        stats.reconnects(ReconnectReason::Network) >= 3
    })
    .await;
    assert!(!client.task.is_finished());
    client.stop().await;
}

#[tokio::test]
async fn a_stall_triggers_a_reconnect_within_the_watchdog_window() {
    let stand_in = StandIn::stream_only(|index, _| {
        let id = format!("{}-0", index + 1);
        Reply::Events {
            chunks: vec![Bytes::from(
                sse(None, "connected", "{}") + &sse(Some(&id), "heartbeat", "\"x\""),
            )],
            end: End::Stall,
        }
    })
    .await;
    let (items, log) = start_pipeline(position("0-1"), 16);
    let mut settings = test_settings(&stand_in.base);
    settings.idle_timeout = Duration::from_millis(500);
    let client = start_client(settings, items);

    wait_until("a reconnection after the stall", SOON, || {
        stand_in.stream_request_count() >= 2
    })
    .await;
    assert!(client.stats.reconnects(ReconnectReason::Idle) >= 1);
    assert_eq!(
        stand_in.stream_request(1).header("last-event-id"),
        Some("1-0")
    );
    assert!(!log.lock().expect("lock").items.is_empty());
    client.stop().await;
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_stall_too() {
    // Accepts TCP connections and never writes a byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let server = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            open.push(socket);
        }
    });
    let base = reqwest::Url::parse(&format!("http://{address}")).expect("url");
    let mut settings = test_settings(&base);
    settings.idle_timeout = Duration::from_millis(300);
    let (items, _log) = start_pipeline(position("1-0"), 16);
    let client = start_client(settings, items);
    wait_until("a second attempt", SOON, || {
        accepted.load(std::sync::atomic::Ordering::Relaxed) >= 2
    })
    .await;
    assert!(client.stats.reconnects(ReconnectReason::Idle) >= 1);
    client.stop().await;
    server.abort();
}

#[tokio::test]
async fn when_the_pipeline_stops_accepting_the_client_disconnects_and_resumes_later() {
    let stand_in = StandIn::stream_only(|index, _| {
        let mut body = String::new();
        if index == 0 {
            for n in 1..=3 {
                body.push_str(&sse(Some(&format!("{n}-0")), "create", &create_payload(n)));
            }
        } else {
            body.push_str(&sse(Some("4-0"), "create", &create_payload(4)));
        }
        Reply::Events {
            chunks: vec![Bytes::from(body)],
            end: End::Stall,
        }
    })
    .await;
    let (items, log) = start_pipeline(position("0-1"), 16);
    let client = start_client(test_settings(&stand_in.base), items);
    wait_until("three events", SOON, || {
        log.lock().expect("lock").exports().len() == 3
    })
    .await;

    client.accepting.send_replace(false);
    let stats = Arc::clone(&client.stats);
    wait_until("the pause", SOON, || {
        stats.reconnects(ReconnectReason::Paused) == 1
    })
    .await;
    assert_eq!(
        stand_in.stream_request_count(),
        1,
        "no connection while the pipeline is not accepting"
    );

    client.accepting.send_replace(true);
    wait_until("the fourth event", SOON, || {
        log.lock().expect("lock").exports().len() == 4
    })
    .await;
    assert_eq!(
        stand_in.stream_request(1).header("last-event-id"),
        Some("3-0")
    );
    assert_eq!(
        log.lock().expect("lock").syncs,
        3,
        "before connecting, when pausing, before reconnecting"
    );
    client.stop().await;
}

#[tokio::test]
async fn a_full_pipeline_slows_reading_without_tripping_the_watchdog() {
    let stand_in = StandIn::stream_only(|index, _| {
        let mut body = String::new();
        if index == 0 {
            for n in 1..=50 {
                body.push_str(&sse(Some(&format!("{n}-0")), "create", &create_payload(n)));
            }
        }
        Reply::Events {
            chunks: vec![Bytes::from(body)],
            end: End::Stall,
        }
    })
    .await;
    // A channel of one item that nobody reads for a while: the client waits on it.
    let (items, mut receiver) = tokio::sync::mpsc::channel(1);
    let mut settings = test_settings(&stand_in.base);
    settings.idle_timeout = Duration::from_millis(200);
    let client = start_client(settings, items);
    let mut exported = 0;
    while exported < 50 {
        let item = tokio::time::timeout(SOON, receiver.recv())
            .await
            .expect("an item")
            .expect("channel open");
        match item {
            opencti_stream_exporter::stream::StreamItem::Sync(answer) => {
                let _ = answer.send(position("0-1"));
            }
            opencti_stream_exporter::stream::StreamItem::Export { .. } => {
                exported += 1;
                if exported == 1 {
                    // Hold the pipeline back for longer than the idle timeout, once.
                    tokio::time::sleep(Duration::from_millis(600)).await;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        client.stats.reconnects(ReconnectReason::Idle),
        0,
        "waiting for the pipeline is not idleness"
    );
    assert_eq!(stand_in.stream_request_count(), 1);
    client.stop().await;
}

#[tokio::test]
async fn bad_input_is_dead_lettered_or_skipped_and_never_stalls_the_stream() {
    let big = format!(
        r#"{{"version":"4","type":"create","data":{{"id":"note--1","type":"note","content":"{}"}}}}"#,
        "A".repeat(20 * 1024 * 1024)
    );
    let mut body: Vec<u8> = Vec::new();
    body.extend_from_slice(b"\xEF\xBB\xBF: a comment line\r\n");
    body.extend_from_slice(sse(None, "connected", "{}").as_bytes());
    body.extend_from_slice(
        b"id: 1-0\r\nevent: create\r\ndata: {\"data\":{\"id\":\"x--1\"}}\r\n\r\n",
    );
    body.extend_from_slice(
        b"id: 2-0\revent: create\rdata: {\"data\":\rdata: {\"id\":\"x--2\"}}\r\r",
    );
    body.extend_from_slice(b"id: 3-0\nevent: create\ndata: {\"data\":{\"id\":\"\xff\xfe\"}}\n\n");
    body.extend_from_slice(sse(Some("4-0"), "update", "{not json").as_bytes());
    body.extend_from_slice(sse(Some("5-0"), "delete", r#"{"message":"no data"}"#).as_bytes());
    body.extend_from_slice(sse(Some("6-0"), "create", &big).as_bytes());
    body.extend_from_slice(sse(Some("7-0"), "something-new", "{}").as_bytes());
    body.extend_from_slice(sse(None, "create", &create_payload(8)).as_bytes());
    body.extend_from_slice(
        sse(
            None,
            "error",
            r#"{"stream":"s","message":"Recovery mode is only possible with a start date"}"#,
        )
        .as_bytes(),
    );
    body.extend_from_slice(sse(Some("9-0"), "merge", &create_payload(9)).as_bytes());
    body.extend_from_slice(
        sse(Some("10-0"), "heartbeat", "\"2024-06-10T09:38:20.000Z\"").as_bytes(),
    );
    // Split into awkward chunks: in the middle of CRLF pairs and UTF-8 sequences.
    let chunks: Vec<Bytes> = body.chunks(7919).map(Bytes::copy_from_slice).collect();
    let stand_in = StandIn::stream_only(move |_, _| Reply::Events {
        chunks: chunks.clone(),
        end: End::Stall,
    })
    .await;
    let (items, log) = start_pipeline(position("0-1"), 16);
    let client = start_client(test_settings(&stand_in.base), items);

    wait_until("the final heartbeat", SOON, || {
        log.lock().expect("lock").position.cursor.as_deref() == Some("10-0")
    })
    .await;
    let log = log.lock().expect("lock").clone();
    let exports = log.exports();
    let exported: Vec<(&str, Action)> = exports
        .iter()
        .map(|(id, action, ..)| (id.as_str(), *action))
        .collect();
    assert_eq!(
        exported,
        [
            ("1-0", Action::Create),
            ("2-0", Action::Create),
            ("6-0", Action::Create),
            ("9-0", Action::Merge)
        ]
    );
    assert_eq!(
        exports[1].2,
        br#"{"data":{"id":"x--2"},"id":"2-0","type":"create"}"#.as_slice()
    );
    assert_eq!(
        exports[2].2.len(),
        big.len() + r#","id":"6-0""#.len(),
        "a 20 MB event goes through whole"
    );
    for (_, _, line, _) in &exports {
        assert!(!line.contains(&b'\n'));
    }
    let dead: Vec<(Option<String>, String)> = log
        .dead_letters()
        .into_iter()
        .map(|(id, event, ..)| (id, event))
        .collect();
    let expected_dead: Vec<(Option<String>, String)> = [
        (Some("3-0"), "create"),
        (Some("4-0"), "update"),
        (Some("5-0"), "delete"),
        (None, "create"),
    ]
    .into_iter()
    .map(|(id, event)| (id.map(str::to_owned), event.to_owned()))
    .collect();
    assert_eq!(dead, expected_dead);
    let reasons: Vec<String> = log
        .dead_letters()
        .iter()
        .map(|(_, _, reason, _)| reason.clone())
        .collect();
    assert!(reasons[0].contains("UTF-8"), "{reasons:?}");
    assert!(reasons[1].contains("not a JSON object"), "{reasons:?}");
    assert!(reasons[2].contains("no `data`"), "{reasons:?}");
    assert!(reasons[3].contains("without an id"), "{reasons:?}");
    assert_eq!(
        log.dead_letters()[0].3.as_ref(),
        b"{\"data\":{\"id\":\"\xff\xfe\"}}",
        "raw payload kept"
    );
    assert_eq!(
        client
            .stats
            .skipped_events
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(
        client
            .stats
            .error_events
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    client.stop().await;
}

#[tokio::test]
async fn an_event_over_the_size_limit_is_dead_lettered_by_id_and_the_stream_goes_on() {
    let huge = create_payload(1).replace("m1", &"x".repeat(300_000));
    let body = sse(Some("1-0"), "create", &huge) + &sse(Some("2-0"), "create", &create_payload(2));
    let chunks: Vec<Bytes> = body
        .as_bytes()
        .chunks(4096)
        .map(Bytes::copy_from_slice)
        .collect();
    let stand_in = StandIn::stream_only(move |_, _| Reply::Events {
        chunks: chunks.clone(),
        end: End::Stall,
    })
    .await;
    let (items, log) = start_pipeline(position("0-1"), 16);
    let mut settings = test_settings(&stand_in.base);
    settings.max_event_bytes = 64 * 1024;
    let client = start_client(settings, items);
    wait_until("the next event", SOON, || {
        log.lock().expect("lock").exports().len() == 1
    })
    .await;
    let log = log.lock().expect("lock").clone();
    assert_eq!(log.export_ids(), ["2-0"]);
    let dead = log.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0.as_deref(), Some("1-0"));
    assert!(dead[0].2.contains("size limit"));
    client.stop().await;
}

#[tokio::test]
async fn a_resume_cursor_older_than_the_stream_warns_that_events_were_lost() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let stand_in = StandIn::stream_only(|_, _| {
        let connected = r#"{"lastEventId":"9000-0","firstEventId":"5000-0","streamSize":12,"connectionId":"c-1"}"#;
        let body = sse(None, "connected", connected) + &sse(Some("9000-0"), "heartbeat", "\"x\"");
        Reply::Events { chunks: vec![Bytes::from(body)], end: End::Stall }
    })
    .await;
    let (items, log) = start_pipeline(position("100-0"), 16);
    let client = start_client(test_settings(&stand_in.base), items);
    wait_until("the heartbeat", SOON, || {
        log.lock().expect("lock").position.cursor.as_deref() == Some("9000-0")
    })
    .await;
    let info = client
        .stats
        .connected_info()
        .expect("connected info recorded");
    assert_eq!(info.first_event_id.as_deref(), Some("5000-0"));
    assert_eq!(info.connection_id.as_deref(), Some("c-1"));
    client.stop().await;
    let output = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8 logs");
    assert_eq!(
        output.matches("trimmed at the source and are LOST").count(),
        1,
        "{output}"
    );

    // Resuming inside the retained range: no such warning.
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (items, log) = start_pipeline(position("6000-0"), 16);
    let client = start_client(test_settings(&stand_in.base), items);
    wait_until("the heartbeat", SOON, || {
        log.lock().expect("lock").position.cursor.as_deref() == Some("9000-0")
    })
    .await;
    client.stop().await;
    let output = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8 logs");
    assert!(!output.contains("LOST"), "{output}");
}
