//! `demo`: the whole pipeline against the built-in simulator, into a local directory, then a
//! summary. It starts the simulator on a free port, runs the real pipeline (WAL, compactor,
//! uploader with the directory sink) with a short write interval, waits until every event is
//! uploaded, reads the files back as the stock importer would, checks them against what the
//! simulator served, and prints where everything is.
//!
//! The daemon's parts (WAL, first-start position, HTTP client, destination, stream and pipeline
//! settings) are built by the functions `run` builds them with ([`crate::daemon`]), from a
//! [`Config`] read as `run` reads its own, so the demo runs what `run` runs. Only what `run`
//! adds around the pipeline (the operations endpoint, the progress line, the OpenCTI API task,
//! adoption) is left out. Built with the `simulator` feature.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use simulator::{DEFAULT_STREAM_ID, Simulator, SimulatorConfig};
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::config::{Config, Destination, Source};
use crate::daemon;
use crate::ids::EventId;
use crate::pipeline::{Pipeline, seed_first_start};
use crate::readback::read_back;
use crate::sink::DirSink;
use crate::status::human_bytes;

/// Marks a directory as made by the demo, so a later demo may replace it.
const MARKER: &str = ".opencti-stream-exporter-demo";
/// Folder (key prefix) of the demo's files.
const FOLDER: &str = "opencti-stream";
/// Longest the demo waits for everything to be uploaded.
const DEADLINE: Duration = Duration::from_secs(300);
/// The connector id the demo runs as.
const CONNECTOR_ID: &str = "5b1f0c3e-7d2a-4e8b-9c6f-0a1b2c3d4e5f";

/// Runs the demo. Fails if the export does not match what the simulator served.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    prepare_dir(&args.dir)?;

    let simulator = Simulator::start(
        SimulatorConfig {
            seed: args.seed,
            live_events: args.events,
            heartbeat: Duration::from_millis(200),
            ..SimulatorConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .context("starting the simulator")?;
    println!(
        "simulator: OpenCTI live stream at {}",
        simulator.stream_url()
    );

    // First start as pycti does it: from 0-0, recovering the knowledge base up to a date. The
    // simulated live log is dated; recover until just before it, so the demo shows the
    // recovery and then every live event (events before the recover date are only in the
    // recovered state, as on a real platform).
    let live = simulator.live_ids();
    let (Some(first_live), Some(last_live)) = (live.first().copied(), live.last().copied()) else {
        bail!("the simulator serves no events");
    };
    let Some(token) = simulator.token() else {
        bail!("the simulator was started without a token");
    };
    let recover_iso_date = crate::ids::iso(first_live.ms.saturating_sub(1));
    let config = demo_config(
        &simulator.url(),
        token.expose(),
        &recover_iso_date,
        &args.dir,
    )?;

    // From here on, the parts are built as `run` builds them (crate::daemon), from the Config.
    let wal = daemon::open_wal(&config.wal.dir, config.wal.max_bytes)?;
    seed_first_start(&wal, &daemon::first_start(&config), crate::ids::now_ms())
        .context("recording the first-start position")?;
    let cancel = CancellationToken::new();
    let pipeline = Pipeline::start(
        wal.clone(),
        daemon::sink(&config)?,
        daemon::stream_settings(&config)?,
        daemon::opencti_client(&config)?,
        daemon::pipeline_settings(&config),
        cancel.clone(),
    )?;

    // Done when the cursor reached the last live event and nothing is left to seal or upload.
    let last = EventId::new(last_live.ms, last_live.seq);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let cursor = wal.state().cursor.as_deref().and_then(EventId::parse);
        let caught_up = cursor.is_some_and(|c| c >= last);
        if caught_up && wal.backlog().records == 0 && wal.segments().is_empty() {
            break;
        }
        if Instant::now() > deadline {
            pipeline.stop();
            bail!("the demo did not finish within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exported_in = started.elapsed();
    pipeline.stop();
    pipeline.wait().await.context("stopping the pipeline")?;
    drop(wal);

    // Read back as the stock importer would, and check against what was served.
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let sink = DirSink::new(&args.dir);
    let report = read_back(
        &sink,
        &format!("{FOLDER}/"),
        1,
        |line| lines.push(line.to_vec()),
        |_, _| {},
    )
    .await
    .context("reading the files back")?;
    let oracle = simulator.check_export(lines.iter().map(Vec::as_slice));
    let served = simulator.served();
    simulator.shutdown().await;

    println!();
    println!(
        "exported {} events in {:.1} s",
        report.lines,
        exported_in.as_secs_f64()
    );
    println!(
        "  by type: {} create, {} update, {} delete, {} merge",
        report.by_type[0], report.by_type[1], report.by_type[2], report.by_type[3]
    );
    println!(
        "  files:   {} (numbers {}..={}), {} in {}",
        report.files,
        report.first_number.unwrap_or(0),
        report.last_number.unwrap_or(0),
        human_bytes(report.bytes),
        args.dir.join(FOLDER).display()
    );
    println!(
        "  served:  {} connections, {} expected events, {} duplicates",
        served.connections.len(),
        oracle.expected,
        oracle.duplicates
    );
    println!("  WAL:     {}", config.wal.dir.display());
    let readable = report.is_ok();
    println!(
        "  read back as the stock importer would: {}",
        if readable {
            "OK (gapless numbering, UTF-8 JSON lines, ids in order)"
        } else {
            "PROBLEMS"
        }
    );
    println!(
        "  checked against what the simulator served: {}",
        if oracle.is_ok() {
            "OK (nothing lost, nothing invented, in order)"
        } else {
            "MISMATCH"
        }
    );
    if !readable {
        for problem in &report.problems {
            println!("    {}: {}", problem.key, problem.what);
        }
        bail!("the export has problems");
    }
    if !oracle.is_ok() {
        println!("    {oracle:?}");
        bail!("the export does not match what the simulator served");
    }
    Ok(())
}

/// The daemon's configuration for the demo, read and validated as `run` reads its own (as if
/// these were the environment): the simulator's stream at `url` with dependencies, recovering
/// until `recover_iso_date` on the first start, into `dir`, a file every second or every 2 MiB,
/// a 4 GiB WAL in `dir/.wal`, no metrics endpoint, no adoption of an earlier export.
fn demo_config(
    url: &str,
    token: &str,
    recover_iso_date: &str,
    dir: &Path,
) -> anyhow::Result<Config> {
    let wal_dir = dir.join(".wal");
    let env: HashMap<String, String> = [
        ("OPENCTI_URL", url),
        ("OPENCTI_TOKEN", token),
        ("CONNECTOR_ID", CONNECTOR_ID),
        ("CONNECTOR_LIVE_STREAM_ID", DEFAULT_STREAM_ID),
        ("CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES", "false"),
        ("CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE", recover_iso_date),
        ("CONNECTOR_EXPOSE_METRICS", "false"),
        ("EXPORT_DIR", &dir.display().to_string()),
        ("MINIO_FOLDER", FOLDER),
        ("MINIO_COMPRESSION", "none"),
        ("WRITE_EVERY_SEC", "1"),
        ("WRITE_MAX_BYTES", "2MiB"),
        ("WAL_DIR", &wal_dir.display().to_string()),
        ("WAL_MAX_BYTES", "4GiB"),
        ("WAL_ADOPT_DELIVERED", "false"),
        ("QUEUE_SIZE", "1000"),
        ("UPLOAD_BACKOFF_MAX_SEC", "5"),
        ("UPLOAD_TIMEOUT_SEC", "60"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    let mut config =
        Config::from_source(&Source::new(env, None)).context("the demo's configuration")?;
    // The directories exactly as given: a path need not be text.
    config.destination = Destination::Directory(dir.to_path_buf());
    config.wal.dir = wal_dir;
    Ok(config)
}

/// Makes `dir` empty: creates it, or clears an earlier demo's output. Refuses a directory that
/// holds anything else.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let is_demo = dir.join(MARKER).exists();
        let is_empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_none();
        if !is_demo && !is_empty {
            bail!(
                "{} exists and was not made by the demo: choose another --dir",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        b"files written by `opencti-stream-exporter demo`\n",
    )
    .with_context(|| format!("writing into {}", dir.display()))?;
    Ok(())
}
