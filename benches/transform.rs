//! Throughput of the OpenCTI side's CPU path: the SSE framer and the transform
//! (docs/opencti-protocol.md#exported-line).
//!
//! Run with:
//! `CARGO_TARGET_DIR=/work/targets/opencti cargo bench --bench transform`
//! (one core: the benchmarks are single-threaded). Each benchmark is measured twice, once with
//! throughput in bytes (MB/s of SSE payload) and once in elements (events/s).
//!
//! Corpora:
//! - `sample`: the ten data events of `tests/fixtures/sample-events.sse` (the report update with a
//!   file completed with a 1 KiB file), cycled;
//! - `live-2k`: generated live events of about 2.2 KB (indicators, reports, relationships,
//!   non-ASCII text, an update with an `/id` reverse patch every 8 events, a dependency every 5),
//!   the size the daemon must ingest at 50,000 events/s;
//! - `frame+transform`: the same `live-2k` events framed from an SSE byte stream (64 KiB chunks)
//!   and transformed, the whole per-event CPU cost before the WAL;
//! - `client/simulator`: the real stream client over HTTP on loopback against the simulator
//!   (20,000 live events of about 2.2 KB, no files), into a pipeline stand-in that only counts:
//!   the OpenCTI side end to end, sharing the 2 cores with the simulator.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, black_box, criterion_group, criterion_main};
use opencti_stream_exporter::stream::sse::{SseFrame, SseFramer};
use opencti_stream_exporter::transform::Action;
use opencti_stream_exporter::transform::{TransformOptions, Transformed, transform};

const FIXTURE: &[u8] = include_bytes!("../tests/fixtures/sample-events.sse");

struct Event {
    id: String,
    action: Action,
    payload: Bytes,
}

fn sample_corpus() -> Vec<Event> {
    let mut framer = SseFramer::new(1 << 26);
    let mut frames = Vec::new();
    framer.push(Bytes::from_static(FIXTURE), &mut frames);
    frames
        .into_iter()
        .filter_map(|frame| match frame {
            SseFrame::Event(event) => {
                let action = Action::from_event_name(event.name())?;
                let id = String::from_utf8(event.id?.to_vec()).ok()?;
                Some(Event {
                    id,
                    action,
                    payload: event.data,
                })
            }
            SseFrame::Oversized(_) => None,
        })
        .collect()
}

fn live_event(n: usize) -> Event {
    let ext = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";
    let id = format!("{}-{}", 1_718_012_346_001u64 + n as u64, n % 3);
    let uuid = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        n * 2_654_435_761 % 0xffff_ffff,
        n % 0xffff,
        n % 0xfff,
        (n * 7) % 0xfff,
        n * 31
    );
    let kind = ["indicator", "report", "relationship", "malware"][n % 4];
    let dependency = n % 5 == 4;
    let update = !dependency && n.is_multiple_of(8);
    let description = format!(
        "Observed {n} times during the campaign — activité malveillante détectée sur 198.51.100.{} ; see the report for the full kill chain, infrastructure and the associated IOCs. {}",
        n % 255,
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. ".repeat(3)
    );
    let data = format!(
        r#"{{"id":"{kind}--{uuid}","spec_version":"2.1","type":"{kind}","extensions":{{"{ext}":{{"extension_type":"property-extension","id":"{uuid}","type":"Indicator","created_at":"2024-06-10T09:39:09.000Z","updated_at":"2024-06-10T09:39:09.000Z","is_inferred":false,"creator_ids":["88ec0c6a-13ce-5e39-b486-354fe4a7084f"],"labels_ids":["5d9b8c7a-6e5f-4d3c-2b1a-0f9e8d7c6b5a"],"created_by_ref_id":"6a1f0c52-2e0d-4f57-a3b6-6f1d0f0b9b21","score":{score},"detection":false,"main_observable_type":"IPv4-Addr"}}}},"created":"2024-06-10T09:39:09.000Z","modified":"2024-06-10T09:39:09.000Z","name":"198.51.100.{last}","description":"{description}","pattern":"[ipv4-addr:value = '198.51.100.{last}']","pattern_type":"stix","valid_from":"2024-06-10T09:39:09.000Z","valid_until":"2024-09-08T09:39:09.000Z","indicator_types":["malicious-activity"],"labels":["emotet","c2"],"confidence":75,"lang":"en","created_by_ref":"identity--0f4e5d3c-8a3b-5c8e-9d2f-1b7a6c5e4d3a","object_marking_refs":["marking-definition--826578e1-40ad-459f-bc73-ede076f81f37"],"external_references":[{{"source_name":"abuse.ch","url":"https://feodotracker.abuse.ch/browse/host/198.51.100.{last}/"}}]}}"#,
        score = n % 100,
        last = n % 255,
    );
    let origin = if dependency {
        r#"{"referer":"init-dependencies"}"#.to_owned()
    } else {
        r#"{"socket":"query","user_id":"88ec0c6a-13ce-5e39-b486-354fe4a7084f","group_ids":["1d6cc1a4-5c6f-4b61-9b7e-3a33a1d2f1a0"],"organization_ids":[]}"#.to_owned()
    };
    let payload = if dependency {
        format!(r#"{{"data":{data},"message":"creates a {kind}","origin":{origin},"version":"4"}}"#)
    } else if update {
        format!(
            r#"{{"version":"4","type":"update","scope":"external","message":"replaces `198.51.100.{n}` in `Name`","origin":{origin},"data":{data},"context":{{"patch":[{{"op":"replace","path":"/name","value":"198.51.100.{n}"}},{{"op":"replace","path":"/id","value":"{kind}--{uuid}"}}],"reverse_patch":[{{"op":"replace","path":"/name","value":"198.51.100.1"}},{{"op":"replace","path":"/id","value":"{kind}--00000000-0000-4000-8000-{n:012}"}}]}},"event_id":"{uuid}"}}"#
        )
    } else {
        format!(
            r#"{{"version":"4","type":"create","scope":"external","message":"creates a {kind} `198.51.100.{n}`","origin":{origin},"data":{data},"event_id":"{uuid}"}}"#
        )
    };
    Event {
        id,
        action: if update {
            Action::Update
        } else {
            Action::Create
        },
        payload: Bytes::from(payload),
    }
}

fn live_corpus() -> Vec<Event> {
    (0..1000).map(live_event).collect()
}

fn transform_all(events: &[Event], file: &Bytes) -> usize {
    let mut written = 0;
    for event in events {
        match transform(
            &event.id,
            event.action,
            &event.payload,
            TransformOptions::default(),
        ) {
            Ok(Transformed::Ready(line)) => written += line.line.len(),
            Ok(Transformed::NeedsFiles(pending)) => {
                let contents = vec![Some(file.clone()); pending.files().len()];
                if let Ok(line) = pending.complete(&contents) {
                    written += line.line.len();
                }
            }
            Err(_) => {}
        }
    }
    written
}

fn sse_stream(events: &[Event]) -> Vec<Bytes> {
    let mut stream = Vec::new();
    for event in events {
        stream.extend_from_slice(
            format!("id: {}\nevent: {}\ndata: ", event.id, event.action).as_bytes(),
        );
        stream.extend_from_slice(&event.payload);
        stream.extend_from_slice(b"\n\n");
        stream.extend_from_slice(
            b"id: 1-0\nevent: heartbeat\ndata: \"2024-06-10T09:38:20.000Z\"\n\n",
        );
    }
    stream
        .chunks(64 * 1024)
        .map(Bytes::copy_from_slice)
        .collect()
}

fn frame_and_transform(chunks: &[Bytes]) -> usize {
    let mut framer = SseFramer::new(1 << 26);
    let mut frames = Vec::with_capacity(64);
    let mut written = 0;
    for chunk in chunks {
        framer.push(chunk.clone(), &mut frames);
        for frame in frames.drain(..) {
            if let SseFrame::Event(event) = frame
                && let Some(action) = Action::from_event_name(event.name())
                && let Some(id) = event
                    .id
                    .as_deref()
                    .and_then(|id| std::str::from_utf8(id).ok())
                && let Ok(Transformed::Ready(line)) =
                    transform(id, action, &event.data, TransformOptions::default())
            {
                written += line.line.len();
            }
        }
    }
    written
}

fn bench(c: &mut Criterion) {
    let file = Bytes::from(vec![0x25u8; 1024]);
    let sample = sample_corpus();
    let live = live_corpus();
    let chunks = sse_stream(&live);
    let corpora: [(&str, &[Event]); 2] = [("sample", &sample), ("live-2k", &live)];
    let mut group = c.benchmark_group("transform");
    for (name, events) in corpora {
        let bytes: usize = events.iter().map(|event| event.payload.len()).sum();
        eprintln!(
            "corpus {name}: {} events, {:.0} bytes per event",
            events.len(),
            bytes as f64 / events.len() as f64
        );
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::new("bytes", name), events, |b, events| {
            b.iter(|| transform_all(black_box(events), &file))
        });
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_with_input(BenchmarkId::new("events", name), events, |b, events| {
            b.iter(|| transform_all(black_box(events), &file))
        });
    }
    let bytes: usize = live.iter().map(|event| event.payload.len()).sum();
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function(BenchmarkId::new("bytes", "frame+transform"), |b| {
        b.iter(|| frame_and_transform(black_box(&chunks)))
    });
    group.throughput(Throughput::Elements(live.len() as u64));
    group.bench_function(BenchmarkId::new("events", "frame+transform"), |b| {
        b.iter(|| frame_and_transform(black_box(&chunks)))
    });
    group.finish();
}

fn bench_client(c: &mut Criterion) {
    use opencti_stream_exporter::secret::Secret;
    use opencti_stream_exporter::stream::{
        ResumePosition, StreamItem, StreamSettings, StreamStats, redirect_policy, run,
    };
    use simulator::{DEFAULT_STREAM_ID, EventMix, Simulator, SimulatorConfig};
    use std::sync::Arc;

    const EVENTS: u64 = 20_000;
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        eprintln!("no tokio runtime: client benchmark skipped");
        return;
    };
    let config = SimulatorConfig {
        live_events: EVENTS,
        knowledge_base: 50,
        mix: EventMix {
            files: 0.0,
            ..EventMix::default()
        },
        record_events: false,
        ..SimulatorConfig::default()
    };
    let Ok(sim) = runtime.block_on(Simulator::start(config, ([127, 0, 0, 1], 0).into())) else {
        eprintln!("simulator did not start: client benchmark skipped");
        return;
    };
    let last = sim
        .live_ids()
        .last()
        .map(ToString::to_string)
        .unwrap_or_default();
    let base = reqwest::Url::parse(&sim.url()).expect("simulator url");
    let token = Secret::new(
        sim.token()
            .map(simulator::Token::expose)
            .unwrap_or_default(),
    );
    let read_all = || {
        runtime.block_on(async {
            let mut settings = StreamSettings::new(
                base.clone(),
                token.clone(),
                Some(DEFAULT_STREAM_ID.to_owned()),
            );
            settings.idle_timeout = std::time::Duration::from_secs(30);
            let http = reqwest::Client::builder()
                .redirect(redirect_policy(&base))
                .build()
                .expect("client");
            let (items, mut receiver) = tokio::sync::mpsc::channel(4096);
            let (_accepting, accepting_rx) = tokio::sync::watch::channel(true);
            let cancel = tokio_util::sync::CancellationToken::new();
            let task = tokio::spawn(run(
                settings,
                http,
                items,
                accepting_rx,
                cancel.clone(),
                Arc::new(StreamStats::default()),
            ));
            let mut exported = 0u64;
            while let Some(item) = receiver.recv().await {
                match item {
                    StreamItem::Sync(answer) => {
                        let _ = answer.send(ResumePosition {
                            cursor: Some("0-0".into()),
                            recover_until: None,
                        });
                    }
                    StreamItem::Export { id, line, .. } => {
                        exported += line.len() as u64;
                        if id == last {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            cancel.cancel();
            let _ = task.await;
            exported
        })
    };
    let before = sim.served_bytes();
    read_all();
    let bytes = sim.served_bytes() - before;
    eprintln!(
        "client/simulator: {EVENTS} events, {:.0} bytes per event on the wire",
        bytes as f64 / EVENTS as f64
    );
    let mut group = c.benchmark_group("client");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(BenchmarkId::new("bytes", "simulator"), |b| b.iter(read_all));
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function(BenchmarkId::new("events", "simulator"), |b| {
        b.iter(read_all)
    });
    group.finish();
    runtime.block_on(sim.shutdown());
}

criterion_group!(benches, bench, bench_client);
criterion_main!(benches);
