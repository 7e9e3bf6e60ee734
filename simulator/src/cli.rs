//! The `simulate` subcommand: a simulator on its own, for the demo and for manual runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::config::{DEFAULT_STREAM_ID, IdClock, STOPPED_STREAM_ID, SimulatorConfig, StreamDef};
use super::{Simulator, SimulatorHandle};
use crate::ids::now_ms;
use crate::token::Token;

/// Options of `opencti-stream-exporter simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 4000)]
    pub port: u16,
    /// Live events in the stream log at start.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Objects in the knowledge base (sent by a first-run recovery).
    #[arg(long, default_value_t = 2_000)]
    pub knowledge_base: u64,
    /// Seed of the generated corpus.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Data events per second per connection (default: as fast as the client reads).
    #[arg(long)]
    pub rate: Option<u32>,
    /// New live events appended per second while running (0: none).
    #[arg(long, default_value_t = 0)]
    pub append_per_sec: u32,
    /// API token clients must send; without one, streams are public.
    #[arg(long, env = "SIMULATOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Id of the live stream served at `/stream/{id}`.
    #[arg(long, default_value = DEFAULT_STREAM_ID)]
    pub stream_id: String,
    /// Id of a stopped stream (answers 410).
    #[arg(long, default_value = STOPPED_STREAM_ID)]
    pub stopped_stream_id: String,
    /// Heartbeat period in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub heartbeat_ms: u64,
    /// Keep ids deterministic: idle heartbeats repeat the last id instead of following the
    /// wall clock, and the log starts at a fixed date (2024-06-10T09:00:00Z).
    #[arg(long)]
    pub deterministic_ids: bool,
    /// On shutdown, write every data event served (all connections, in order) to this file as a
    /// JSON array of `[id, type, data.id]`, for an end-to-end check of an export.
    #[arg(long, value_name = "FILE")]
    pub served_log: Option<std::path::PathBuf>,
    /// Render the whole initial log before serving, so serving costs no rendering (as fast as
    /// possible: for benchmarks). Needs `--frame-cache-mib` of about 2.3 KB per event.
    #[arg(long)]
    pub prerender: bool,
    /// MiB of rendered frames kept for reuse by later connections (and by `--prerender`).
    #[arg(long, default_value_t = 256)]
    pub frame_cache_mib: usize,
    /// Keep only counters of what was served, not the per-event log (memory for millions of
    /// events); `--served-log` then writes an empty list.
    #[arg(long)]
    pub no_served_events: bool,
}

/// Runs a simulator until `shutdown` is cancelled; prints its URL and what it serves.
pub async fn run(args: SimulateArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let handle =
        Simulator::start(config_from(&args), SocketAddr::new(args.bind, args.port)).await?;
    println!("{}", summary(&handle, &args));
    let appender = async {
        if args.append_per_sec == 0 {
            return std::future::pending::<()>().await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut due = 0.0_f64;
        loop {
            tick.tick().await;
            due += f64::from(args.append_per_sec) / 10.0;
            let whole = due.floor();
            due -= whole;
            if whole >= 1.0 {
                handle.append_live_events(whole as u64);
            }
        }
    };
    tokio::select! {
        () = appender => {}
        () = shutdown.cancelled() => {}
    }
    if let Some(path) = &args.served_log {
        write_served_log(&handle, path)?;
    }
    handle.shutdown().await;
    Ok(())
}

/// Writes `[id, type, data.id]` of every served data event, in serving order.
fn write_served_log(handle: &SimulatorHandle, path: &std::path::Path) -> anyhow::Result<()> {
    let served = handle.served();
    let events: Vec<[String; 3]> = served
        .accepted()
        .flat_map(|connection| connection.events.iter())
        .map(|event| {
            [
                event.key.id.to_string(),
                event.key.event.name().to_owned(),
                event.key.data.to_string(),
            ]
        })
        .collect();
    let json = serde_json::to_vec(&events)?;
    std::fs::write(path, json)
        .map_err(|err| anyhow::anyhow!("writing the served log {}: {err}", path.display()))?;
    Ok(())
}

fn config_from(args: &SimulateArgs) -> SimulatorConfig {
    let clock = if args.deterministic_ids {
        IdClock::default()
    } else {
        // A log that ends about now, so a first-run recovery up to "now" and the live log meet
        // as they do on a real platform.
        let span = args.events.saturating_mul(2);
        IdClock {
            base_ms: now_ms().saturating_sub(span).saturating_sub(60_000),
            wall_clock_idle_ids: true,
        }
    };
    SimulatorConfig {
        seed: args.seed,
        live_events: args.events,
        knowledge_base: args.knowledge_base,
        token: args.token.clone().map(Token::new),
        streams: vec![
            StreamDef::live(&args.stream_id),
            StreamDef::stopped(&args.stopped_stream_id),
        ],
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(1)),
        rate: args.rate,
        clock,
        record_events: !args.no_served_events,
        frame_cache_bytes: args.frame_cache_mib.saturating_mul(1 << 20),
        prerender: args.prerender,
        ..SimulatorConfig::default()
    }
}

fn summary(handle: &SimulatorHandle, args: &SimulateArgs) -> String {
    let ids = handle.live_ids();
    let range = match (ids.first(), ids.last()) {
        (Some(a), Some(b)) => format!("ids {a} .. {b}"),
        _ => "empty log".to_owned(),
    };
    format!(
        "OpenCTI simulator at {} — stream {} ({} live events, {range}; {} knowledge-base objects; {} files), \
         seed {}, heartbeat {} ms, {}, {}",
        handle.url(),
        handle.stream_url(),
        handle.live_len(),
        args.knowledge_base,
        handle.file_count(),
        args.seed,
        args.heartbeat_ms,
        match args.rate {
            Some(rate) => format!("{rate} events/s per connection"),
            None => "unthrottled".to_owned(),
        },
        if args.token.is_some() {
            "token required"
        } else {
            "public (no token)"
        },
    )
}
