//! Every fault kind, observed with a plain client, and a seeded random campaign whose export the
//! oracle accepts.

mod common;

use std::time::Duration;

use common::*;
use simulator::{
    ConnectionEnd, EventId, FailStatus, Fault, FaultPlan, FaultPlanConfig, HOSTILE_URIS,
    InjectedEvent, OCTI_EXT, SimulatorConfig,
};

fn data_frames(frames: &[SseFrame]) -> Vec<&SseFrame> {
    frames.iter().filter(|f| f.is_data_event()).collect()
}

async fn read_to_end(reader: &mut SseReader) -> Vec<SseFrame> {
    reader.read_until(|_| false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_ends_the_connection_after_exactly_k_events_without_a_clean_end() {
    let sim = start(small_config(30)).await;
    sim.faults().drop_after(25);
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    let frames = read_to_end(&mut reader).await;
    assert_eq!(data_frames(&frames).len(), 25);
    assert!(
        matches!(reader.ended, Some(Ended::Broken(_))),
        "the chunked body never ends properly"
    );
    assert!(reader.leftover().is_empty());
    let served = sim.served();
    assert_eq!(
        served.connections[0].end,
        Some(ConnectionEnd::Fault(Fault::Drop))
    );
    assert_eq!(served.connections[0].data_events, 25);
    assert_eq!(sim.faults().fired()[0].after_events, 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_writes_half_of_the_next_frame_then_breaks() {
    let sim = start(small_config(31)).await;
    sim.faults().cut_after(40);
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    let frames = read_to_end(&mut reader).await;
    assert_eq!(data_frames(&frames).len(), 40);
    assert!(matches!(reader.ended, Some(Ended::Broken(_))));
    let partial = reader.leftover().to_vec();
    assert!(
        !partial.is_empty() && !partial.windows(2).any(|w| w == b"\n\n"),
        "half a frame"
    );
    let Some(ConnectionEnd::CutMidEvent { id }) = sim.served().connections[0].end.clone() else {
        panic!("cut recorded");
    };
    assert!(partial.starts_with(format!("id: {id}\n").as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_sends_nothing_not_even_heartbeats_until_released_or_timed_out() {
    let config = SimulatorConfig {
        heartbeat: Duration::from_millis(50),
        ..small_config(32)
    };
    let sim = start(config).await;
    sim.faults().stall_after(10, None);
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    let frames = reader.read_until(|f| data_frames(f).len() >= 10).await;
    assert_eq!(data_frames(&frames).len(), 10);
    wait_for("the stall to fire", || !sim.faults().fired().is_empty()).await;
    // Several heartbeat periods of silence: nothing at all arrives, the socket stays open.
    assert!(
        reader
            .next_within(Duration::from_millis(400))
            .await
            .is_none()
    );
    assert!(matches!(reader.ended, Some(Ended::Idle)));
    sim.faults().release_stalls();
    let more = reader.read_until(|f| data_frames(f).len() >= 5).await;
    assert_eq!(
        data_frames(&more).len(),
        5,
        "events flow again after the release"
    );

    sim.faults()
        .stall_after(0, Some(Duration::from_millis(150)));
    let after = reader.read_until(|f| data_frames(f).len() >= 5).await;
    assert_eq!(data_frames(&after).len(), 5, "a timed stall ends by itself");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_answer_the_reference_statuses_then_streams_resume() {
    let sim = start(small_config(33)).await;
    let auth = bearer(&sim);
    let target = sim.stream_url().replace(&sim.url(), "");
    let cases = [
        (
            FailStatus::Unauthenticated,
            "HTTP/1.1 401 You are not authenticated, please check your credentials",
        ),
        (
            FailStatus::Unauthorized,
            "HTTP/1.1 401 You are not authorized, please check your credentials",
        ),
        (
            FailStatus::Stopped,
            "HTTP/1.1 410 This live stream is stopped",
        ),
        (
            FailStatus::TooManyRequests,
            "HTTP/1.1 429 Too Many Requests",
        ),
        (FailStatus::Internal, "HTTP/1.1 500 Internal Server Error"),
    ];
    for (status, line) in cases {
        sim.faults().refuse_next_connections(status, 1);
        let (got, _, body) = raw_get(sim.addr(), &target, &[("authorization", &auth)]).await;
        assert_eq!(got, line);
        if status == FailStatus::TooManyRequests {
            assert_eq!(
                body,
                br#"{"message":"Too many requests, please try again later."}"#
            );
        } else {
            assert!(body.is_empty());
        }
    }
    // An armed refusal drops the current stream, then refuses the next attempts.
    sim.faults().arm(
        5,
        Fault::Refuse {
            status: FailStatus::TooManyRequests,
            connections: 2,
        },
    );
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &auth), ("last-event-id", "0-0")],
    )
    .await;
    let frames = read_to_end(&mut reader).await;
    assert_eq!(data_frames(&frames).len(), 5);
    for _ in 0..2 {
        assert_eq!(
            connect(&sim.stream_url(), &[("authorization", &auth)])
                .await
                .status,
            429
        );
    }
    assert_eq!(
        connect(&sim.stream_url(), &[("authorization", &auth)])
            .await
            .status,
        200
    );

    // A held connection attempt gets no answer until released.
    sim.faults().stall_next_connections(1, None);
    let url = sim.stream_url();
    let held = tokio::spawn(async move { connect(&url, &[("authorization", &auth)]).await.status });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "the attempt is held");
    sim.faults().release_stalls();
    assert_eq!(
        tokio::time::timeout(DEADLINE, held)
            .await
            .expect("answered")
            .expect("task"),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_events_reuse_the_last_id_and_do_not_shift_the_log() {
    let sim = start(small_config(34)).await;
    let faults = sim.faults();
    faults.inject_after(3, InjectedEvent::InvalidJson);
    faults.inject_after(3, InjectedEvent::NonUtf8);
    faults.inject_after(3, InjectedEvent::UnknownEventType);
    faults.inject_after(3, InjectedEvent::Huge { bytes: 3 << 20 });
    faults.inject_after(3, InjectedEvent::HostileFileUris);
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    let frames = reader
        .read_until(|f| f.iter().filter(|x| x.is_data_event()).count() >= 40)
        .await;
    wait_for("all injections", || faults.pending() == 0).await;

    let live_ids: Vec<String> = sim.live_ids().iter().map(ToString::to_string).collect();
    let mut live_seen = Vec::new();
    let mut previous_id: Option<String> = None;
    let mut injected = Vec::new();
    for frame in frames.iter().filter(|f| {
        f.id.is_some()
            && f.event.as_deref() != Some("heartbeat")
            && f.event.as_deref() != Some("consumer_metrics")
    }) {
        let index = live_ids.iter().position(|id| Some(id) == frame.id.as_ref());
        let is_live =
            index.is_some_and(|i| sim.live_frame(i as u64).as_deref() == Some(&frame.raw[..]));
        if is_live {
            live_seen.push(frame.id.clone().unwrap());
        } else if frame.referer().is_none() {
            assert_eq!(
                frame.id, previous_id,
                "an injected event carries the last id"
            );
            injected.push(frame.clone());
        }
        previous_id = frame.id.clone();
    }
    assert_eq!(
        live_seen,
        live_ids[..live_seen.len()],
        "the log's ids are untouched"
    );
    assert_eq!(injected.len(), 5);
    assert!(
        serde_json::from_slice::<serde_json::Value>(&injected[0].data).is_err(),
        "invalid JSON"
    );
    assert!(std::str::from_utf8(&injected[1].raw).is_err(), "not UTF-8");
    assert_eq!(injected[2].event.as_deref(), Some("sighting-burst"));
    assert!(
        injected[3].data.len() >= (3 << 20) - 2048
            && injected[3].json()["data"]["type"] == "report"
    );
    let uris: Vec<String> = injected[4].json()["data"]["extensions"][OCTI_EXT]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["uri"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(uris, HOSTILE_URIS);
    let served = sim.served();
    assert_eq!(
        served.connections[0].injected.len(),
        3,
        "invalid ones are recorded apart"
    );
    assert_eq!(
        served.connections[0]
            .events
            .iter()
            .filter(|e| e.injected.is_some())
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_and_graphql_failures() {
    let sim = start(small_config(35)).await;
    sim.faults().fail_next_storage(FailStatus::Internal, 1);
    sim.faults()
        .fail_next_graphql(FailStatus::TooManyRequests, 1);
    let storage = client()
        .get(format!("{}/storage/get/import/x", sim.url()))
        .header("authorization", bearer(&sim))
        .send()
        .await
        .unwrap();
    assert_eq!(storage.status().as_u16(), 500);
    let graphql = client()
        .post(format!("{}/graphql", sim.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(graphql.status().as_u16(), 429);
    assert_eq!(sim.storage_requests()[0].status, 500);
}

/// A client that reconnects like the exporter: resumes from the last event that holds the
/// cursor (dependencies do not), exports what it receives, dead-letters what is invalid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_fault_campaign_is_survived_and_the_oracle_accepts_the_export() {
    let config = SimulatorConfig {
        live_events: 1_500,
        heartbeat: Duration::from_millis(50),
        ..small_config(36)
    };
    let sim = start(config).await;
    let plan = FaultPlan::random(
        36,
        &FaultPlanConfig {
            steps: 12,
            mean_gap_events: 60,
            max_stall: Duration::from_millis(100),
            huge_bytes: 200_000,
            refusals: true,
        },
    );
    sim.faults().schedule(&plan);
    let auth = bearer(&sim);
    let last_live = sim.live_ids().last().unwrap().to_string();
    let mut cursor = "0-0".to_owned();
    let mut export: Vec<Vec<u8>> = Vec::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut done = false;
    while !done {
        assert!(
            std::time::Instant::now() < deadline,
            "campaign finished in time"
        );
        let mut reader = connect(
            &sim.stream_url(),
            &[("authorization", &auth), ("last-event-id", &cursor)],
        )
        .await;
        if reader.status != 200 {
            continue;
        }
        while let Some(frame) = reader.next_within(Duration::from_millis(500)).await {
            if frame.is_data_event() {
                let valid = std::str::from_utf8(&frame.data).is_ok()
                    && serde_json::from_slice::<serde_json::Value>(&frame.data).is_ok();
                if valid {
                    export.push(frame.exported_line());
                }
                if frame.referer().as_deref() != Some("init-dependencies") {
                    cursor = frame.id.clone().unwrap();
                }
                if frame.id.as_deref() == Some(last_live.as_str()) && sim.faults().pending() == 0 {
                    done = true;
                    break;
                }
            }
        }
    }
    assert_eq!(
        sim.faults()
            .fired()
            .iter()
            .map(|f| f.fault)
            .collect::<Vec<_>>(),
        plan.steps.iter().map(|s| s.fault).collect::<Vec<_>>()
    );
    let report = sim.check_export(export.iter().map(Vec::as_slice));
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.expected, 1_500);
    let _ = EventId::ZERO;
}
