//! Command-line interface (docs/architecture.md#cli).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Durable OpenCTI live-stream exporter to S3/MinIO, compatible with the stock stream-importer.
#[derive(Debug, Parser)]
#[command(name = "opencti-stream-exporter", version, about, long_about = None)]
pub struct Cli {
    /// YAML configuration file; environment variables override it.
    #[arg(long, global = true, env = "CONFIG_FILE", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the exporter daemon (the default).
    Run,
    /// Show the position, backlog, next file number and last upload (works with the daemon
    /// stopped; asks the running daemon otherwise).
    Status(StatusArgs),
    /// Read the bucket (or export directory) back as the stock importer would and report gaps,
    /// order problems and bad lines.
    Verify(VerifyArgs),
    /// Run the whole pipeline against the built-in simulator into a local directory, then print
    /// a summary.
    #[cfg(feature = "simulator")]
    Demo(DemoArgs),
    /// Run the OpenCTI live-stream simulator on its own.
    #[cfg(feature = "simulator")]
    Simulate(simulator::SimulateArgs),
    /// Seed a new WAL from the stock Python connector's state, to switch without a gap or a
    /// renumbering.
    ImportState(ImportStateArgs),
    /// Exit 0 when the local daemon answers /healthz (for container health checks).
    Healthcheck(HealthcheckArgs),
    /// Get past a damaged file that blocks uploads (daemon stopped): keep it aside with a record
    /// of the stream range it held, upload an empty file under its number so the importer's
    /// numbering stays gapless, and let uploads go on.
    Quarantine(QuarantineArgs),
}

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The file number the importer expects first (its `file_count` + 1).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub from: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Verify this directory (an EXPORT_DIR copy) instead of the configured destination.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Key prefix to verify inside --dir (defaults to MINIO_FOLDER when configured).
    #[arg(long, value_name = "FOLDER")]
    pub folder: Option<String>,
    /// Accept event ids going back, as happens where the server sent events again (a state reset
    /// from the OpenCTI UI, a reconnection during a first-run recovery); they are still listed.
    #[arg(long)]
    pub allow_id_rewinds: bool,
}

/// Options of `demo`.
#[cfg(feature = "simulator")]
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Number of live events the simulator serves.
    #[arg(long, default_value_t = 5000)]
    pub events: u64,
    /// Directory the files are written to (replaced if it holds an earlier demo).
    #[arg(long, default_value = "./demo-export", value_name = "DIR")]
    pub dir: PathBuf,
    /// Seed of the generated corpus.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Options of `import-state`.
#[derive(Debug, Args)]
pub struct ImportStateArgs {
    /// The stock connector's state JSON, as shown on OpenCTI's connector page, or `@FILE`, or
    /// `-` for standard input.
    #[arg(value_name = "STATE")]
    pub state: String,
}

/// Options of `quarantine`.
#[derive(Debug, Args)]
pub struct QuarantineArgs {
    /// The number of the damaged file (the oldest waiting; `status` shows it).
    #[arg(value_name = "FILE_NUMBER")]
    pub file_number: u64,
}

/// Options of `healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Port of the daemon's health endpoint (default: CONNECTOR_METRICS_PORT or 9095).
    #[arg(long, env = "CONNECTOR_METRICS_PORT", default_value_t = 9095)]
    pub port: u16,
    /// Address the daemon's endpoint binds (default: CONNECTOR_METRICS_BIND or 0.0.0.0); an
    /// unspecified address is asked on the loopback address of its family.
    #[arg(long, env = "CONNECTOR_METRICS_BIND", default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
}
