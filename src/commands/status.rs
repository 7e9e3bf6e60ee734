//! `status`: the exporter's position and backlog, read from the WAL. The daemon holds the WAL
//! while it runs; then the report comes from its `/status` endpoint instead.

use std::time::Duration;

use anyhow::{Context, bail};
use wal::WalError;

use crate::cli::StatusArgs;
use crate::config::Config;
use crate::status::StatusReport;

/// Prints the status report (text or JSON).
pub async fn run(config: &Config, args: &StatusArgs) -> anyhow::Result<()> {
    if !config.wal.dir.exists() {
        bail!(
            "there is no WAL in {} yet: the exporter has not run with this WAL_DIR",
            config.wal.dir.display()
        );
    }
    match wal::Wal::open(wal::WalOptions::new(&config.wal.dir, config.wal.max_bytes)) {
        Ok((wal, _)) => {
            let mut report = StatusReport::from_wal(&wal);
            check_oldest_file(&wal, &mut report);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
        Err(WalError::Locked { .. }) => from_running_daemon(config, args.json).await,
        Err(err) => {
            Err(err).with_context(|| format!("opening the WAL in {}", config.wal.dir.display()))
        }
    }
}

/// Reads the oldest waiting file through (size, zstd and CRC32C checks): a file damaged in place
/// keeps its size, so only reading it finds it, and uploads stop at the oldest one. Costs one
/// read of at most `WRITE_MAX_BYTES`.
fn check_oldest_file(wal: &wal::Wal, report: &mut StatusReport) {
    let Some(oldest) = wal.segments().first().map(|s| s.number) else {
        return;
    };
    if report.damaged_files.iter().any(|d| d.file_number == oldest) {
        return;
    }
    let read = wal
        .open_segment(oldest)
        .map_err(|e| e.to_string())
        .and_then(|mut reader| {
            std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| e.to_string())
        });
    if let Err(problem) = read {
        report.damaged_files.insert(
            0,
            crate::status::DamagedFile {
                file_number: oldest,
                problem,
            },
        );
    }
}

/// Asks the running daemon's `/status` endpoint.
async fn from_running_daemon(config: &Config, json: bool) -> anyhow::Result<()> {
    if !config.connector.expose_metrics {
        bail!(
            "the daemon is running and holds the WAL; set CONNECTOR_EXPOSE_METRICS=true to read \
             its status from /status"
        );
    }
    let address = crate::ops::http::local_address(
        config.connector.metrics_bind,
        config.connector.metrics_port,
    );
    let url = format!("http://{address}/status");
    let mut request = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(&url);
    if let Some(token) = &config.connector.metrics_token {
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .context("CONNECTOR_METRICS_TOKEN is not a valid HTTP header value")?;
        value.set_sensitive(true);
        request = request.header(reqwest::header::AUTHORIZATION, value);
    }
    let body = request
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("the daemon is running; asking it at {url}"))?
        .text()
        .await?;
    if json {
        println!("{body}");
    } else {
        let report: StatusReport =
            serde_json::from_str(&body).with_context(|| format!("reading the answer of {url}"))?;
        print!("{}", report.to_text());
    }
    Ok(())
}
