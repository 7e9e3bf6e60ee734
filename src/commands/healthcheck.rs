//! `healthcheck`: exit 0 when the local daemon answers `/healthz`, for container health checks
//! (the image has no curl).

use std::time::Duration;

use anyhow::{Context, bail};

/// Asks `http://127.0.0.1:{port}/healthz`.
pub async fn run(port: u16) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let response = reqwest::Client::builder()
        .timeout(Duration::from_secs(4))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("asking {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(())
}
