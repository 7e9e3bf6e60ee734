//! `SimulateArgs` + `run` (the `simulate` subcommand) and the per-connection rate limit.

mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use common::*;
use simulator::{SimulateArgs, SimulatorConfig, run};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimulateArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_the_configured_stream_until_cancelled() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let cli = Cli::parse_from([
        "simulate",
        "--port",
        &port.to_string(),
        "--events",
        "50",
        "--knowledge-base",
        "20",
        "--stream-id",
        "cli-stream",
        "--token",
        "cli-token",
        "--heartbeat-ms",
        "100",
        "--deterministic-ids",
    ]);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(cli.args, shutdown.clone()));
    let url = format!("http://127.0.0.1:{port}/stream/cli-stream");
    let deadline = Instant::now() + DEADLINE;
    let mut reader = loop {
        let attempt = client()
            .get(&url)
            .header("authorization", "Bearer cli-token")
            .send()
            .await;
        if attempt.is_ok() {
            break connect(
                &url,
                &[
                    ("authorization", "Bearer cli-token"),
                    ("last-event-id", "0-0"),
                ],
            )
            .await;
        }
        assert!(Instant::now() < deadline, "the simulator came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reader.status, 200);
    let frames = reader
        .read_until(|f| {
            f.iter()
                .filter(|x| x.is_data_event() && x.referer().is_none())
                .count()
                >= 50
        })
        .await;
    assert_eq!(
        frames
            .iter()
            .filter(|x| x.is_data_event() && x.referer().is_none())
            .count(),
        50
    );
    let denied = connect(&url, &[("authorization", "Bearer other")]).await;
    assert_eq!(denied.status, 401);
    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, task)
        .await
        .expect("run returns after cancel")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_caps_the_events_per_second_of_a_connection() {
    let config = SimulatorConfig {
        rate: Some(50),
        ..small_config(50)
    };
    let sim = start(config).await;
    let started = Instant::now();
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    let mut data = 0u64;
    while started.elapsed() < Duration::from_millis(400) {
        match reader.next_within(Duration::from_millis(100)).await {
            Some(frame) if frame.is_data_event() => data += 1,
            _ => {}
        }
    }
    // An upper bound only: a slow machine can deliver fewer, never more.
    let allowed = (started.elapsed().as_secs_f64() * 50.0).ceil() as u64 + 1;
    assert!(data >= 1, "events flow");
    assert!(
        data <= allowed,
        "{data} events in {:?} at 50/s",
        started.elapsed()
    );
}
