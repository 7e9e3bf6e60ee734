//! The simulator's live stream read with a plain HTTP client: framing, ids, resume, recovery,
//! dependencies, heartbeats (docs/opencti-protocol.md#stream-parameters,
//! docs/opencti-protocol.md#start-position, docs/opencti-protocol.md#sse-wire-format).

mod common;

use std::time::Duration;

use common::*;
use simulator::{
    EventId, IdClock, OCTI_EXT, RecoverWithoutStart, SimulatorConfig, StreamDef, StreamMode, iso,
};

fn keys_in_order(value: &serde_json::Value) -> Vec<String> {
    value.as_object().expect("object").keys().cloned().collect()
}

fn live_frames(frames: &[SseFrame]) -> Vec<&SseFrame> {
    frames
        .iter()
        .filter(|f| f.is_data_event() && f.referer().is_none())
        .collect()
}

async fn read_live(reader: &mut SseReader, n: usize) -> Vec<SseFrame> {
    reader.read_until(|f| live_frames(f).len() >= n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_headers_ids_and_payload_shapes_follow_the_reference() {
    let sim = start(small_config(1)).await;
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    assert_eq!(reader.status, 200);
    assert_eq!(
        reader.headers["content-type"],
        "text/event-stream; charset=utf-8"
    );
    assert_eq!(reader.headers["cache-control"], "no-cache, no-transform");
    let frames = read_live(&mut reader, 300).await;

    let connected = &frames[0];
    assert_eq!(connected.event.as_deref(), Some("connected"));
    assert_eq!(connected.id, None, "connected has no id");
    assert_eq!(
        keys_in_order(&connected.json()),
        [
            "lastEventId",
            "firstEventId",
            "firstEventDate",
            "lastEventDate",
            "streamSize",
            "connectionId"
        ]
    );

    let ids = sim.live_ids();
    let live = live_frames(&frames);
    assert_eq!(live.len(), 300);
    for (i, frame) in live.iter().enumerate() {
        assert_eq!(
            frame.id.as_deref(),
            Some(ids[i].to_string().as_str()),
            "live ids are the log's, in order"
        );
        assert_eq!(
            frame.raw,
            sim.live_frame(i as u64).expect("frame"),
            "frames are deterministic"
        );
        let payload = frame.json();
        let mut expected = vec!["version", "type", "scope", "message", "origin", "data"];
        if matches!(frame.event.as_deref(), Some("update" | "merge")) {
            expected.push("context");
        }
        expected.push("event_id");
        assert_eq!(keys_in_order(&payload), expected);
        assert_eq!(payload["type"], frame.event.clone().expect("event"));
        assert!(payload["data"]["extensions"][OCTI_EXT]["id"].is_string());
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "live ids strictly increase"
    );

    for (i, frame) in frames.iter().enumerate() {
        let text = String::from_utf8(frame.raw.clone()).expect("frames are UTF-8");
        assert!(text.ends_with("\n\n") && !text.contains('\r'));
        assert_eq!(
            text.matches('\n').count(),
            if frame.id.is_some() { 4 } else { 3 },
            "one line per field"
        );
        if frame.referer().as_deref() == Some("init-dependencies") {
            assert_eq!(
                keys_in_order(&frame.json()),
                ["data", "message", "origin", "version"]
            );
            let next_live = frames[i..]
                .iter()
                .find(|f| f.referer().is_none())
                .expect("an event follows");
            assert_eq!(
                frame.id, next_live.id,
                "a dependency shares the id of the event it precedes"
            );
        }
    }
    // The mix has every kind of event, some non-ASCII text and some files.
    let kinds: std::collections::HashSet<_> = live.iter().filter_map(|f| f.event.clone()).collect();
    assert_eq!(
        kinds.len(),
        4,
        "create, update, delete and merge all occur: {kinds:?}"
    );
    assert!(
        live.iter().any(|f| !f.data.is_ascii()),
        "some text is not ASCII"
    );
    assert!(live.iter().any(|f| {
        f.json()["context"]["reverse_patch"]
            .to_string()
            .contains("\"/id\"")
    }));
    assert!(
        frames
            .iter()
            .any(|f| f.data.windows(18).any(|w| w == b"/storage/get/impor"))
    );
    let merge = live
        .iter()
        .find(|f| f.event.as_deref() == Some("merge"))
        .expect("a merge");
    assert!(merge.json()["context"]["sources"][0]["id"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_strictly_after_and_the_query_wins_over_headers() {
    let sim = start(small_config(2)).await;
    let ids = sim.live_ids();
    let auth = bearer(&sim);
    let k = 120;
    let cases = [
        (
            sim.stream_url(),
            vec![("last-event-id", ids[k].to_string())],
        ),
        (
            sim.stream_url(),
            vec![
                ("from", ids[k].to_string()),
                ("last-event-id", "0-0".to_owned()),
            ],
        ),
        (
            format!("{}?from={}", sim.stream_url(), ids[k]),
            vec![("last-event-id", ids[10].to_string())],
        ),
    ];
    for (url, headers) in cases {
        let mut all: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        all.push(("authorization", &auth));
        let mut reader = connect(&url, &all).await;
        let frames = read_live(&mut reader, 1).await;
        let first = live_frames(&frames)[0];
        assert_eq!(
            first.id.as_deref(),
            Some(ids[k + 1].to_string().as_str()),
            "{url} {headers:?}"
        );
    }
    // `0` is the beginning too; a date is turned into `<ms>-0`.
    let mut reader = connect(
        &format!("{}?from=0", sim.stream_url()),
        &[("authorization", &auth)],
    )
    .await;
    let frames = read_live(&mut reader, 1).await;
    assert_eq!(
        live_frames(&frames)[0].id.as_deref(),
        Some(ids[0].to_string().as_str())
    );
    let date = iso(ids[50].ms);
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &auth), ("from", &date)],
    )
    .await;
    let frames = read_live(&mut reader, 1).await;
    let first = EventId::parse(live_frames(&frames)[0].id.as_deref().expect("id")).expect("id");
    assert!(
        first > EventId::new(ids[50].ms, 0)
            && first <= ids[51].max(EventId::new(ids[50].ms, u64::MAX))
    );
    let served = sim.served();
    assert_eq!(
        served.connections[0].mode,
        Some(StreamMode::Live { after: ids[k] })
    );
    assert!(served.connections[0].request.authorization);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_recovery_repeats_ids_then_goes_live_and_none_when_start_is_past_recover() {
    let sim = start(small_config(3)).await;
    let ids = sim.live_ids();
    let auth = bearer(&sim);
    // Recover up to the 100th live event: knowledge base + live-created objects as they are then.
    let recover = iso(ids[100].ms);
    let url = format!("{}?recover={}", sim.stream_url(), recover);
    let mut reader = connect(&url, &[("authorization", &auth), ("last-event-id", "0-0")]).await;
    let plan_len = {
        let mut len = 0;
        wait_for("the recovery plan", || {
            len = sim
                .served()
                .connections
                .first()
                .map_or(0, |c| c.recovery_plan.len());
            len > 0
        })
        .await;
        len
    };
    let frames = read_live(&mut reader, 5).await;
    let recovery: Vec<_> = frames
        .iter()
        .filter(|f| f.referer().as_deref() == Some("init-create"))
        .collect();
    assert_eq!(recovery.len(), plan_len);
    assert!(
        plan_len > 60,
        "knowledge base and early live objects are recovered"
    );
    let recovery_ids: Vec<EventId> = recovery
        .iter()
        .map(|f| EventId::parse(f.id.as_deref().unwrap()).unwrap())
        .collect();
    assert!(
        recovery_ids.windows(2).all(|w| w[0] <= w[1]),
        "recovery ids never decrease"
    );
    assert!(
        recovery_ids.windows(2).any(|w| w[0] == w[1]),
        "some recovery ids repeat"
    );
    assert!(recovery_ids.iter().all(|id| id.seq == 0));
    for frame in &recovery {
        assert_eq!(
            keys_in_order(&frame.json()),
            ["data", "message", "origin", "version"]
        );
        assert_eq!(frame.event.as_deref(), Some("create"));
        let updated = frame.json()["data"]["extensions"][OCTI_EXT]["updated_at"]
            .as_str()
            .unwrap()
            .to_owned();
        let id = EventId::parse(frame.id.as_deref().unwrap()).unwrap();
        assert_eq!(iso(id.ms), updated, "recovery id is the updated_at");
    }
    let recover_id = EventId::new(ids[100].ms, 0);
    let first_live = EventId::parse(live_frames(&frames)[0].id.as_deref().unwrap()).unwrap();
    assert_eq!(
        first_live,
        *ids.iter().find(|id| **id > recover_id).unwrap(),
        "live events follow from the recover date"
    );

    // A later run: start past the recover date, no recovery.
    let mut reader = connect(
        &url,
        &[
            ("authorization", &auth),
            ("last-event-id", &ids[150].to_string()),
        ],
    )
    .await;
    let frames = read_live(&mut reader, 3).await;
    assert!(
        frames
            .iter()
            .all(|f| f.referer().as_deref() != Some("init-create"))
    );
    assert_eq!(
        live_frames(&frames)[0].id.as_deref(),
        Some(ids[151].to_string().as_str())
    );
    let served = sim.served();
    assert!(matches!(
        served.connections[0].mode,
        Some(StreamMode::Recovery { .. })
    ));
    assert_eq!(
        served.connections[1].mode,
        Some(StreamMode::Live { after: ids[150] })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_share_the_event_id_and_are_sent_again_after_a_reconnect() {
    let sim = start(small_config(4)).await;
    let ids = sim.live_ids();
    let auth = bearer(&sim);
    let start_at = ids[200].to_string();
    let read_once = || async {
        let mut reader = connect(
            &sim.stream_url(),
            &[("authorization", &auth), ("last-event-id", &start_at)],
        )
        .await;
        read_live(&mut reader, 40).await
    };
    let first = read_once().await;
    let second = read_once().await;
    let deps: Vec<_> = first
        .iter()
        .filter(|f| f.referer().as_deref() == Some("init-dependencies"))
        .collect();
    assert!(
        deps.len() >= 3,
        "objects created before the start are sent as dependencies"
    );
    let data: Vec<Vec<u8>> = first
        .iter()
        .filter(|f| f.is_data_event())
        .map(|f| f.raw.clone())
        .collect();
    let data_again: Vec<Vec<u8>> = second
        .iter()
        .filter(|f| f.is_data_event())
        .map(|f| f.raw.clone())
        .collect();
    assert_eq!(
        data, data_again,
        "a new connection starts with an empty cache: same dependencies again"
    );
    // Within one connection an object is sent at most once as a dependency.
    let mut seen = std::collections::HashSet::new();
    for dep in &deps {
        assert!(
            seen.insert(dep.json()["data"]["id"].to_string()),
            "sent twice on one connection"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_the_last_id_followed_by_consumer_metrics() {
    let config = SimulatorConfig {
        live_events: 20,
        heartbeat: Duration::from_millis(50),
        ..small_config(5)
    };
    let sim = start(config).await;
    let last = *sim.live_ids().last().unwrap();
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    let frames = reader
        .read_until(|f| {
            live_frames(f).len() == 20
                && f.iter()
                    .filter(|x| x.event.as_deref() == Some("heartbeat"))
                    .count()
                    >= 3
        })
        .await;
    let after_live = frames
        .iter()
        .rposition(|f| f.referer().is_none() && f.is_data_event())
        .unwrap();
    let tail = &frames[after_live + 1..];
    let beats: Vec<_> = tail
        .iter()
        .enumerate()
        .filter(|(_, f)| f.event.as_deref() == Some("heartbeat"))
        .collect();
    assert!(!beats.is_empty());
    for (i, beat) in beats {
        if i + 1 == tail.len() {
            continue;
        }
        assert_eq!(beat.id.as_deref(), Some(last.to_string().as_str()));
        assert_eq!(
            beat.json(),
            serde_json::Value::String(iso(last.ms)),
            "heartbeat data is a JSON string date"
        );
        let metrics = &tail[i + 1];
        assert_eq!(metrics.event.as_deref(), Some("consumer_metrics"));
        assert_eq!(metrics.id, beat.id);
        assert_eq!(
            keys_in_order(&metrics.json()),
            [
                "deliveryRate",
                "processingRate",
                "resolutionRate",
                "productionRate",
                "timeLag",
                "estimatedOutOfDepth"
            ]
        );
    }
    // A connection that starts in the future heartbeats with its start id.
    let future = EventId::new(last.ms + 1_000_000, 0).to_string();
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", &future)],
    )
    .await;
    let frames = reader
        .read_until(|f| f.iter().any(|x| x.event.as_deref() == Some("heartbeat")))
        .await;
    assert_eq!(frames.last().and_then(|f| f.id.clone()), Some(future));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_delete_false_skips_deletes_but_ids_move_past_them() {
    let sim = start(small_config(6)).await;
    let keys = sim.live_keys();
    let non_deletes = keys.iter().filter(|k| k.event.name() != "delete").count();
    let mut reader = connect(
        &sim.stream_url(),
        &[
            ("authorization", &bearer(&sim)),
            ("last-event-id", "0-0"),
            ("listen-delete", "false"),
        ],
    )
    .await;
    let frames = read_live(&mut reader, non_deletes).await;
    assert!(frames.iter().all(|f| f.event.as_deref() != Some("delete")));
    assert_eq!(live_frames(&frames).len(), non_deletes);
    assert!(non_deletes < keys.len(), "the corpus has deletes");
    assert!(!sim.served().connections[0].listen_delete);
    assert_eq!(
        sim.served().connections[0].request.listen_delete.as_deref(),
        Some("false")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_without_start_is_an_error_event_or_a_500() {
    let sim = start(small_config(7)).await;
    let url = format!("{}?recover=2024-06-10T09:00:00Z", sim.stream_url());
    let mut reader = connect(&url, &[("authorization", &bearer(&sim))]).await;
    assert_eq!(reader.status, 200);
    let frames = reader.read_until(|_| false).await;
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[1].event.as_deref(), Some("error"));
    assert_eq!(frames[1].id, None);
    assert_eq!(
        frames[1].json()["message"],
        "Recovery mode is only possible with a start date"
    );

    let config = SimulatorConfig {
        recover_without_start: RecoverWithoutStart::Status500,
        ..small_config(7)
    };
    let sim = start(config).await;
    let url = format!("{}?recover=2024-06-10T09:00:00Z", sim.stream_url());
    let reader = connect(&url, &[("authorization", &bearer(&sim))]).await;
    assert_eq!(reader.status, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_origin_filters_sends_no_recover_instead_of_recovering() {
    let mut stream = StreamDef::live("filtered");
    stream.origin_filters = true;
    let config = SimulatorConfig {
        streams: vec![stream],
        ..small_config(8)
    };
    let sim = start(config).await;
    let url = format!("{}?recover=2030-01-01T00:00:00Z", sim.stream_url());
    let mut reader = connect(
        &url,
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    let frames = read_live(&mut reader, 1).await;
    assert_eq!(frames[1].event.as_deref(), Some("no-recover"));
    assert!(frames[1].id.is_some());
    assert_eq!(
        keys_in_order(&frames[1].json()),
        ["stream", "message", "resume_from"]
    );
    assert!(
        frames
            .iter()
            .all(|f| f.referer().as_deref() != Some("init-create"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_corpus() {
    let a = start(small_config(9)).await;
    let b = start(small_config(9)).await;
    let c = start(small_config(10)).await;
    assert_eq!(a.live_keys(), b.live_keys());
    assert_eq!(a.live_frame(299), b.live_frame(299));
    assert_ne!(a.live_keys(), c.live_keys());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_events_wake_idle_connections_with_ids_above_wall_clock_heartbeats() {
    let config = SimulatorConfig {
        live_events: 10,
        heartbeat: Duration::from_millis(30),
        clock: IdClock {
            wall_clock_idle_ids: true,
            ..IdClock::default()
        },
        ..small_config(11)
    };
    let sim = start(config).await;
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    let frames = reader
        .read_until(|f| {
            live_frames(f).len() == 10
                && f.iter()
                    .filter(|x| x.event.as_deref() == Some("heartbeat"))
                    .count()
                    >= 2
        })
        .await;
    let beat = frames
        .iter()
        .rev()
        .find(|f| f.event.as_deref() == Some("heartbeat"))
        .unwrap();
    let beat_id = EventId::parse(beat.id.as_deref().unwrap()).unwrap();
    assert!(
        beat_id > *sim.live_ids().last().unwrap(),
        "an idle stream's heartbeat ids follow the wall clock"
    );
    let appended = sim.append_live_events(5);
    assert!(
        appended[0] > beat_id,
        "appended ids are above every heartbeat id sent"
    );
    assert!(appended.windows(2).all(|w| w[0] < w[1]));
    let more = read_live(&mut reader, 5).await;
    let got: Vec<_> = live_frames(&more)
        .iter()
        .map(|f| f.id.clone().unwrap())
        .collect();
    let want: Vec<_> = appended.iter().map(ToString::to_string).collect();
    assert_eq!(got, want);
}
