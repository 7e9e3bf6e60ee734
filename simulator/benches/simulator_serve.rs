//! How fast one simulator serves its live stream to a plain reader (an HTTP client that only
//! counts SSE frames). `cold`: every frame rendered while serving (no frame cache); `warm`: the
//! corpus pre-rendered at start (`SimulatorConfig::prerender`).
//!
//! cargo bench -p opencti-simulator --bench simulator_serve

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use simulator::{Simulator, SimulatorConfig, SimulatorHandle};

const EVENTS: u64 = 200_000;

fn config(cache_bytes: usize) -> SimulatorConfig {
    SimulatorConfig {
        live_events: EVENTS,
        knowledge_base: 2_000,
        record_events: false,
        frame_cache_bytes: cache_bytes,
        prerender: cache_bytes > 0,
        token: None,
        heartbeat: Duration::from_secs(3600),
        ..SimulatorConfig::default()
    }
}

/// Reads the stream from the beginning until `EVENTS` data frames (plus their dependencies)
/// arrived; returns (data frames, body bytes).
async fn read_all(url: &str, client: &reqwest::Client, expect_frames: u64) -> (u64, u64) {
    let response = client
        .get(url)
        .header("last-event-id", "0-0")
        .send()
        .await
        .expect("connect");
    let mut body = response.bytes_stream();
    let (mut frames, mut bytes, mut last) = (0u64, 0u64, 0u8);
    while frames < expect_frames {
        let Some(Ok(chunk)) = body.next().await else {
            break;
        };
        bytes += chunk.len() as u64;
        let mut prev = last;
        for &b in chunk.iter() {
            if b == b'\n' && prev == b'\n' {
                frames += 1;
            }
            prev = b;
        }
        last = prev;
    }
    (frames, bytes)
}

/// Reads the stream until nothing arrives for 500 ms (heartbeats are off in this config).
async fn read_until_idle(url: &str, client: &reqwest::Client) {
    let response = client
        .get(url)
        .header("last-event-id", "0-0")
        .send()
        .await
        .expect("connect");
    let mut body = response.bytes_stream();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(500), body.next()).await
    {
    }
}

fn bench(c: &mut Criterion) {
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("rt");
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let client = reqwest::Client::new();
    for (name, cache) in [("warm", 2usize << 30), ("cold", 0usize)] {
        let sim: SimulatorHandle = server_rt
            .block_on(Simulator::start(config(cache), addr))
            .expect("start");
        let url = sim.stream_url();
        // One pass to learn its frame count: `connected`, every data event and its dependencies.
        client_rt.block_on(read_until_idle(&url, &client));
        let total_frames = sim.served_events() + 1;
        let total_bytes = sim.served_bytes();
        let mut group = c.benchmark_group(format!("simulator_serve_{name}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(20));
        group.throughput(Throughput::Elements(EVENTS));
        group.bench_function("events", |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    let (frames, _) = client_rt.block_on(read_all(&url, &client, total_frames));
                    assert!(frames >= total_frames);
                }
                started.elapsed()
            })
        });
        group.throughput(Throughput::Bytes(total_bytes));
        group.bench_function("bytes", |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    client_rt.block_on(read_all(&url, &client, total_frames));
                }
                started.elapsed()
            })
        });
        group.finish();
        server_rt.block_on(sim.shutdown());
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
