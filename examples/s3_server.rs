//! The test S3 server (s3s + s3s-fs with SigV4, the same as `tests/support/s3.rs`) as a
//! standalone process, for benchmarks that need S3 in a process of its own:
//!
//! ```text
//! cargo run --release --example s3_server -- --root DIR --port P --access-key K --secret-key S
//! ```
//!
//! Listens on 127.0.0.1 (`--host` to change), prints `listening on http://ADDR` once ready,
//! stores bucket `B`'s object `K` as the file `DIR/B/K`, and stops on Ctrl-C or SIGTERM.

#[allow(dead_code)]
#[path = "../tests/support/s3.rs"]
mod s3_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use anyhow::Context as _;
use clap::Parser;

/// A standalone S3 server storing objects as plain files.
#[derive(Debug, Parser)]
struct Args {
    /// Directory holding the buckets (created if missing).
    #[arg(long)]
    root: PathBuf,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    host: IpAddr,
    /// Access key accepted for SigV4.
    #[arg(long)]
    access_key: String,
    /// Secret key accepted for SigV4.
    #[arg(long)]
    secret_key: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("creating the root directory {}", args.root.display()))?;
    let service = s3_support::s3_service(&args.root, &args.access_key, &args.secret_key)
        .with_context(|| format!("opening the root directory {}", args.root.display()))?;
    let listener = s3_support::bind(SocketAddr::new(args.host, args.port))
        .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let server = tokio::spawn(s3_support::accept_loop(
            listener,
            service,
            None,
            Arc::new(AtomicUsize::new(0)),
        ));
        println!("listening on http://{addr}");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        server.abort();
        anyhow::Ok(())
    })
}
