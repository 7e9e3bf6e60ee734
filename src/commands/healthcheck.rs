//! `healthcheck`: exit 0 when the local daemon answers `/healthz`, for container health checks
//! (the image has no curl).
//!
//! It asks where the daemon listens: `CONNECTOR_METRICS_BIND` itself, or the loopback address
//! of the same family when the daemon binds every address (`0.0.0.0`, `::`), on
//! `CONNECTOR_METRICS_PORT`. It derives that from the same two settings the daemon binds with,
//! rather than from a file the daemon would write: nothing to go stale after a crash, nothing
//! to share between containers, and no other configuration is needed (`/healthz` needs no
//! token, so healthcheck holds no secret).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::ops::http::local_address;

/// Asks `http://{address}/healthz`, `address` being where a daemon bound to `bind:port` answers
/// from this host.
pub async fn run(bind: IpAddr, port: u16) -> anyhow::Result<()> {
    let url = format!("http://{}/healthz", local_address(bind, port));
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
