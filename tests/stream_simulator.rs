//! The stream client against the simulator (a faithful OpenCTI stand-in), with faults: drops,
//! cuts in the middle of an event, stalls, refused connections and injected bad events. The
//! simulator's oracle checks the exported lines against what it served: nothing lost, nothing
//! invented, arrival order kept (docs/architecture.md#invariant-2 for the OpenCTI side).

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use opencti_stream_exporter::secret::Secret;
use opencti_stream_exporter::stream::ResumePosition;
use opencti_stream_exporter::stream::stats::ReconnectReason;
use simulator::{
    DEFAULT_STREAM_ID, FailStatus, Fault, InjectedEvent, Simulator, SimulatorConfig,
    SimulatorHandle, Token, iso,
};
use support::stream::*;

async fn simulator(config: SimulatorConfig) -> SimulatorHandle {
    let bind: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
    Simulator::start(config, bind)
        .await
        .expect("simulator starts")
}

fn settings_for(sim: &SimulatorHandle) -> opencti_stream_exporter::stream::StreamSettings {
    let mut settings = test_settings(&reqwest::Url::parse(&sim.url()).expect("url"));
    settings.token = Secret::new(sim.token().map(Token::expose).unwrap_or_default());
    settings.live_stream_id = Some(DEFAULT_STREAM_ID.to_owned());
    settings.idle_timeout = Duration::from_millis(800);
    settings
}

/// Runs the client until the last live event is exported, then checks the export with the oracle.
async fn export_and_check(
    sim: &SimulatorHandle,
    start: ResumePosition,
) -> (
    PipelineLog,
    std::sync::Arc<opencti_stream_exporter::stream::StreamStats>,
) {
    let (items, log) = start_pipeline(start, 256);
    let client = start_client(settings_for(sim), items);
    let last = sim.live_ids().last().expect("a live log").to_string();
    let faults = sim.faults();
    wait_until(
        "the last live event and every fault",
        Duration::from_secs(60),
        || faults.pending() == 0 && log.lock().expect("lock").export_ids().contains(&last),
    )
    .await;
    let stats = std::sync::Arc::clone(&client.stats);
    client.stop().await;
    let log = log.lock().expect("lock").clone();
    let lines: Vec<bytes::Bytes> = log
        .exports()
        .into_iter()
        .map(|(_, _, line, _)| line)
        .collect();
    let report = sim.check_export(lines.iter().map(|line| line.as_ref()));
    assert!(report.is_ok(), "oracle: {report:?}");
    assert!(
        stats.files_ok.load(Relaxed) > 0,
        "files were downloaded and embedded"
    );
    (log, stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_with_recovery_survives_drops_cuts_stalls_and_refusals() {
    let config = SimulatorConfig {
        seed: 7,
        live_events: 3_000,
        knowledge_base: 300,
        heartbeat: Duration::from_millis(100),
        ..SimulatorConfig::default()
    };
    let recover = iso(config.clock.base_ms);
    let sim = simulator(config).await;
    let faults = sim.faults();
    faults.drop_after(400);
    faults.cut_after(500);
    faults.arm(300, Fault::Stall { duration: None });
    faults.arm(
        100,
        Fault::Refuse {
            status: FailStatus::Unauthenticated,
            connections: 2,
        },
    );
    faults.inject_after(200, InjectedEvent::InvalidJson);
    faults.inject_after(10, InjectedEvent::HostileFileUris);
    faults.inject_after(10, InjectedEvent::UnknownEventType);
    faults.cut_after(700);

    let (log, stats) = export_and_check(
        &sim,
        ResumePosition {
            cursor: Some("0-0".into()),
            recover_until: Some(recover),
        },
    )
    .await;
    assert_eq!(
        log.dead_letters().len(),
        1,
        "the invalid JSON event is dead-lettered"
    );
    assert!(
        stats.reconnects(ReconnectReason::Idle) >= 1,
        "the stall was detected"
    );
    assert_eq!(stats.reconnects(ReconnectReason::Unauthorized), 2);
    assert!(
        stats.files_refused.load(Relaxed) > 0,
        "hostile uris refused"
    );
    assert_eq!(
        stats.skipped_events.load(Relaxed),
        1,
        "the unknown event type is skipped"
    );
    let storage = sim.storage_requests();
    assert!(
        storage.iter().all(|request| request.authorized),
        "every download carried the token"
    );
    assert!(
        storage
            .iter()
            .all(|request| request.path.starts_with("/storage/get/"))
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_a_cursor_exports_exactly_what_follows() {
    let config = SimulatorConfig {
        seed: 11,
        live_events: 2_000,
        knowledge_base: 100,
        heartbeat: Duration::from_millis(100),
        ..SimulatorConfig::default()
    };
    let sim = simulator(config).await;
    let start = sim.live_ids()[499].to_string();
    let faults = sim.faults();
    faults.cut_after(300);
    faults.drop_after(300);
    let (log, stats) = export_and_check(
        &sim,
        ResumePosition {
            cursor: Some(start),
            recover_until: None,
        },
    )
    .await;
    assert!(log.exports().len() >= 1_500);
    assert!(
        stats.reconnects(ReconnectReason::Network) + stats.reconnects(ReconnectReason::Eof) >= 2
    );
    sim.shutdown().await;
}
