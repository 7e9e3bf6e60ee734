//! Streams records through a WAL the way the daemon does (pipelined appends, a seal every
//! `--seal-mb` of backlog, segments marked uploaded at once) and prints throughput, CPU time per
//! record and peak RSS. Records are generated on the fly, so the RSS is the WAL's own plus a
//! constant for the generator.
//!
//! `cargo run --release -p wal --example wal_probe -- [records] [group] [in_flight] [seal_mb]`
//! (defaults 200000 64 64 64). `PROBE_DIR` chooses where the temporary WAL lives (default /tmp),
//! `PROBE_VERBOSE=1` prints the RSS around every seal.

#[path = "../benches/support/mod.rs"]
mod support;

use std::collections::VecDeque;
use std::time::Instant;

use rand::SeedableRng;
use wal::{Wal, WalOptions};

fn proc_status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_default()
}

/// User + system CPU seconds of this process.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds used so far by each thread, grouped by name (digits stripped).
fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let name: String = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map(|(name, _)| {
                name.trim_end_matches(|c: char| c.is_ascii_digit())
                    .to_string()
            })
            .unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
        *out.entry(name).or_insert(0.0) += ticks / 100.0;
    }
    out
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let total = args.first().copied().unwrap_or(200_000);
    let group = args.get(1).copied().unwrap_or(64) as usize;
    let in_flight = args.get(2).copied().unwrap_or(64) as usize;
    let seal_bytes = args.get(3).copied().unwrap_or(64) << 20;
    let dir = tempfile::tempdir_in(std::env::var("PROBE_DIR").unwrap_or_else(|_| "/tmp".into()))
        .expect("temporary directory");
    let (wal, _) = Wal::open(WalOptions::new(dir.path(), 1 << 40)).expect("open WAL");
    let appender = wal.appender();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut pending = VecDeque::new();
    let (mut seal_time, mut sealed_raw) = (0f64, 0u64);
    let cpu_start = cpu_seconds();
    let start = Instant::now();
    let mut appended = 0u64;
    while appended < total {
        let records: Vec<_> = (0..group)
            .map(|i| support::record(&mut rng, appended + i as u64, 2048))
            .collect();
        appended += group as u64;
        pending.push_back(appender.append(records, Some(format!("{appended}-0"))));
        if pending.len() >= in_flight {
            pending
                .pop_front()
                .expect("pending")
                .wait()
                .expect("durable");
        }
        if wal.backlog().raw_bytes >= seal_bytes {
            let before = proc_status("VmRSS:");
            let t = Instant::now();
            if let Some(meta) = wal.seal(seal_bytes, 1_718_012_346_001).expect("seal") {
                sealed_raw += meta.raw_bytes;
                wal.mark_uploaded(meta.number, 0).expect("uploaded");
            }
            seal_time += t.elapsed().as_secs_f64();
            if std::env::var_os("PROBE_VERBOSE").is_some() {
                eprintln!(
                    "seal: VmRSS {before} kB before, {} kB after",
                    proc_status("VmRSS:")
                );
            }
        }
    }
    for p in pending {
        p.wait().expect("durable");
    }
    let wall = start.elapsed().as_secs_f64();
    let threads = cpu_by_thread();
    let cpu = cpu_seconds() - cpu_start;
    let stats = wal.stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let raw = stats.raw_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let stored = stats
        .stored_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "records {appended} group {group} in_flight {in_flight}: {:.0} records/s wall, {:.1} µs CPU/record ({:.0} records per CPU-second), \
         {commits} commits ({:.0} records/commit), frame ratio {:.3}, seal {:.0} MB/s ({:.1} s), VmHWM {} kB, disk {:?}",
        appended as f64 / wall,
        cpu * 1e6 / appended as f64,
        appended as f64 / cpu,
        appended as f64 / commits as f64,
        stored as f64 / raw as f64,
        sealed_raw as f64 / 1e6 / seal_time.max(1e-9),
        seal_time,
        proc_status("VmHWM:"),
        wal.disk_usage(),
    );
    let per_thread: Vec<String> = threads
        .iter()
        .map(|(name, secs)| format!("{name} {:.1} µs/record", secs * 1e6 / appended as f64))
        .collect();
    println!("CPU by thread: {}", per_thread.join(", "));
}
