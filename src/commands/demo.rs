//! `demo`: the whole pipeline against the built-in simulator, into a local directory, then a
//! summary. It starts the simulator on a free port, runs the real pipeline (WAL, compactor,
//! uploader with the directory sink) with a short write interval, waits until every event is
//! uploaded, reads the files back as the stock importer would, checks them against what the
//! simulator served, and prints where everything is.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use simulator::{DEFAULT_STREAM_ID, Simulator, SimulatorConfig, Token};
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;
use crate::ids::EventId;
use crate::pipeline::compactor::CompactorSettings;
use crate::pipeline::uploader::UploaderSettings;
use crate::pipeline::{
    DEFAULT_SHUTDOWN_GRACE, FirstStart, Pipeline, PipelineSettings, seed_first_start,
};
use crate::readback::read_back;
use crate::secret::Secret;
use crate::sink::{Compression, DirSink};
use crate::status::human_bytes;
use crate::stream::StreamSettings;

/// Marks a directory as made by the demo, so a later demo may replace it.
const MARKER: &str = ".opencti-stream-exporter-demo";
/// Folder (key prefix) of the demo's files.
const FOLDER: &str = "opencti-stream";
/// Longest the demo waits for everything to be uploaded.
const DEADLINE: Duration = Duration::from_secs(300);

/// Runs the demo. Fails if the export does not match what the simulator served.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    prepare_dir(&args.dir)?;
    let wal_dir = args.dir.join(".wal");

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
    let token = Secret::new(simulator.token().map(Token::expose).unwrap_or_default());
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
    let first = FirstStart {
        start_timestamp_ms: None,
        recover_iso_date: Some(crate::ids::iso(first_live.ms.saturating_sub(1))),
    };
    let wal = crate::daemon::open_wal(&wal_dir, 4 << 30)?;
    seed_first_start(&wal, &first, crate::ids::now_ms())
        .context("recording the first-start position")?;
    let base = reqwest::Url::parse(&simulator.url()).context("simulator URL")?;
    let mut stream = StreamSettings::new(base.clone(), token, Some(DEFAULT_STREAM_ID.to_string()));
    stream.no_dependencies = false;
    let http = reqwest::Client::builder()
        .user_agent(crate::daemon::USER_AGENT)
        .redirect(crate::stream::redirect_policy(&base))
        .build()
        .context("building the HTTP client")?;
    let settings = PipelineSettings {
        compactor: CompactorSettings {
            every: Duration::from_secs(1),
            max_bytes: 2 << 20,
        },
        uploader: UploaderSettings {
            folder: FOLDER.to_string(),
            compression: Compression::None,
            backoff_max: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(60),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        },
        queue_size: 1000,
        max_bytes: 4 << 30,
        dead_letter_max_bytes: 64 << 20,
    };
    let cancel = CancellationToken::new();
    let pipeline = Pipeline::start(
        wal.clone(),
        Arc::new(DirSink::new(&args.dir)),
        stream,
        http,
        settings,
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
    println!("  WAL:     {}", wal_dir.display());
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
