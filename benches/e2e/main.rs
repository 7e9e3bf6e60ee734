//! End-to-end benchmark: the release binary against the simulator and an S3 server, each in its
//! own process, with the physical ceilings of the machine measured in the same run beside each
//! figure.
//!
//! ```text
//! cargo bench --bench e2e                                  # 100,000 and 1,000,000 events, 3 runs
//! cargo bench --bench e2e -- --events 100000 --runs 5      # other sizes or run counts
//! cargo bench --bench e2e -- --exporter /path/to/binary    # measure another build's exporter
//! ```
//!
//! `--exporter` runs another build's binary as the exporter (the simulator and the S3 server stay
//! this build's), so an earlier commit can be measured in the same harness for a before/after
//! comparison.
//!
//! For each size the simulator (`opencti-stream-exporter simulate --prerender`) serves its
//! generated corpus as fast as possible, from `0-0` without recovery (the live log: creates,
//! updates, deletes, merges, dependencies, 4 % of events with an attached file to download).
//! Each run then measures, in this order:
//!
//! 1. the ceilings (see [`ceilings`]): raw read, work (frame + serde_json), fsync latency;
//! 2. **ingest and end to end**: a fresh exporter and a fresh S3 server (s3s-fs, the test server,
//!    this executable run with `--serve-s3`); ingest is from the first byte received to the last
//!    event durable in the WAL (uploads running meanwhile), end to end until the last file is
//!    uploaded (`WRITE_EVERY_SEC=1`, as in the comparison with the Python connector); then, on
//!    what it uploaded, the end-to-end ceilings: a PUT loop of the same files to the same server
//!    and the per-byte floor (CPU for one MD5, one zstd-1 compression and one decompression);
//! 3. **drain**: a fresh exporter with S3 down builds the whole backlog (disk use measured then),
//!    then S3 starts; the drain rate counts from the end of the first upload to the end of the
//!    last one (so the retry delay in effect when S3 came back does not count), raw NDJSON bytes;
//!    then the drain ceiling, a plain PUT loop of the same file sizes against the same server.
//!
//! Phases are timed by polling the exporter's `/metrics` every 20 ms; CPU time and peak RSS come
//! from `/proc/<pid>` (`utime + stime`, `VmHWM`), and the anonymous part of the RSS (`RssAnon`:
//! without the executable's code pages) is sampled at every poll. Every figure is the median of
//! the runs. The
//! load average is reported with them: other work on the machine slows every figure, which is
//! why each ceiling is measured in the same run as the figure it bounds.
//!
//! Data (WAL, S3 roots) lives under `--dir` (default `<target>/e2e-data`) and is deleted after
//! each run; the results are printed as Markdown and written as JSON next to it.

#[allow(dead_code)]
#[path = "../../tests/support/s3.rs"]
mod s3_support;

mod ceilings;
mod procs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use serde::Serialize;

use ceilings::{FloorFigure, FsyncFigure, PutFigure, ReadFigure, StreamShape};
use procs::{BUCKET, Exporter, S3Server, Scrape, Simulator};

/// How often `/metrics` is polled.
const POLL: Duration = Duration::from_millis(20);
/// A phase that makes no progress for this long fails the run.
const STALL: Duration = Duration::from_secs(120);

struct Options {
    sizes: Vec<u64>,
    runs: usize,
    dir: PathBuf,
    exporter: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut options = Options {
            sizes: vec![100_000, 1_000_000],
            runs: 3,
            dir: default_dir()?,
            exporter: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = || {
                args.next()
                    .ok_or_else(|| anyhow!("{arg} needs a value"))
                    .cloned()
            };
            match arg.as_str() {
                "--events" => {
                    options.sizes = value()?
                        .split(',')
                        .map(|n| n.trim().replace('_', "").parse::<u64>())
                        .collect::<Result<_, _>>()
                        .context("--events takes numbers separated by commas")?;
                }
                "--runs" => options.runs = value()?.parse().context("--runs takes a number")?,
                "--dir" => options.dir = PathBuf::from(value()?),
                "--exporter" => options.exporter = Some(PathBuf::from(value()?)),
                // cargo bench adds --bench; filters and other harness flags do not apply.
                _ => {}
            }
        }
        if options.runs == 0 || options.sizes.is_empty() {
            bail!("nothing to run");
        }
        Ok(options)
    }
}

/// `<target>/e2e-data`, the target directory found from this executable's path.
fn default_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    // <target>/release/deps/e2e-<hash>
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| anyhow!("unexpected executable path {}", exe.display()))?;
    Ok(target.join("e2e-data"))
}

/// The median of `values` (sorted in place); NaN when empty.
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Ingest and end to end, one exporter run.
#[derive(Debug, Clone, Serialize)]
struct EndToEnd {
    events: u64,
    stream_bytes: u64,
    ingest_seconds: f64,
    end_to_end_seconds: f64,
    cpu_seconds: f64,
    peak_rss: u64,
    peak_anonymous_rss: u64,
    commits: u64,
    commit_records: u64,
    files: u64,
    /// A PUT loop of the files this run uploaded, to the same server.
    put_ceiling: PutFigure,
    /// One MD5, one zstd-1 compression and one decompression of the bytes this run uploaded.
    floor: FloorFigure,
}

/// Backlog build then drain, one exporter run, and the PUT loop after it.
#[derive(Debug, Clone, Serialize)]
struct Drain {
    backlog_raw_bytes: u64,
    backlog_disk_bytes: u64,
    backlog_disk_metric_bytes: u64,
    rss_at_backlog: u64,
    drain_bytes: u64,
    drain_seconds: f64,
    from_s3_start_seconds: f64,
    files: usize,
    peak_rss: u64,
    peak_anonymous_rss: u64,
    cpu_seconds: f64,
    ceiling: PutFigure,
}

#[derive(Debug, Clone, Serialize)]
struct Run {
    events: u64,
    run: usize,
    load_average: f64,
    raw: ReadFigure,
    work: ReadFigure,
    fsync: FsyncFigure,
    end_to_end: EndToEnd,
    drain: Drain,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve-s3") {
        return procs::serve_s3(&args[1..]);
    }
    let options = Options::parse(&args)?;
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_opencti-stream-exporter"));
    let exporter_exe = options.exporter.clone().unwrap_or_else(|| exe.clone());
    if options.exporter.is_some() {
        eprintln!("exporter measured: {}", exporter_exe.display());
    }
    std::fs::create_dir_all(&options.dir)
        .with_context(|| format!("creating {}", options.dir.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let mut runs = Vec::new();
    for &size in &options.sizes {
        let sim_dir = options.dir.join(format!("sim-{size}"));
        std::fs::create_dir_all(&sim_dir)
            .with_context(|| format!("creating {}", sim_dir.display()))?;
        eprintln!("[{size}] starting the simulator (pre-rendering the corpus)");
        let sim = Simulator::start(&exe, size, &sim_dir)?;
        let shape = runtime.block_on(ceilings::discover(&client, &sim))?;
        eprintln!(
            "[{size}] stream: {} data events, {} bytes",
            shape.events, shape.bytes
        );
        for run in 1..=options.runs {
            let dir = options.dir.join(format!("run-{size}-{run}"));
            remove_dir(&dir)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let result = one_run(
                &runtime,
                &client,
                &exporter_exe,
                &sim,
                shape,
                &dir,
                size,
                run,
            );
            remove_dir(&dir)?;
            let result = result?;
            eprintln!("[{size}] run {run}: {}", serde_json::to_string(&result)?);
            runs.push(result);
        }
        sim.proc.stop(Duration::from_secs(10));
        remove_dir(&sim_dir)?;
    }
    let results = options.dir.join("results.json");
    std::fs::write(&results, serde_json::to_vec_pretty(&runs)?)
        .with_context(|| format!("writing {}", results.display()))?;
    println!("{}", report(&options.sizes, &runs));
    eprintln!("every run: {}", results.display());
    Ok(())
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    exe: &Path,
    sim: &Simulator,
    shape: StreamShape,
    dir: &Path,
    size: u64,
    run: usize,
) -> anyhow::Result<Run> {
    let load_average = procs::load_average();
    let raw = runtime.block_on(ceilings::raw(client, sim, shape))?;
    let work = runtime.block_on(ceilings::work(client, sim, shape))?;
    let fsync = ceilings::fsync(dir)?;
    eprintln!(
        "[{size}] run {run}: ceilings raw {:.0} ev/s, work {:.0} ev/s, fsync {:.2} ms",
        raw.events_per_sec(),
        work.events_per_sec(),
        fsync.small_p50_ms
    );
    let end_to_end = runtime.block_on(end_to_end(client, exe, sim, shape, &dir.join("e2e")))?;
    let drain = runtime.block_on(drain(client, exe, sim, shape, &dir.join("drain")))?;
    Ok(Run {
        events: size,
        run,
        load_average,
        raw,
        work,
        fsync,
        end_to_end,
        drain,
    })
}

async fn scrape(client: &reqwest::Client, url: &str) -> Option<Scrape> {
    let response = client.get(url).send().await.ok()?;
    Some(Scrape::parse(&response.text().await.ok()?))
}

/// Fails when `progress` did not change for [`STALL`].
struct StallGuard {
    last: u64,
    since: Instant,
}

impl StallGuard {
    fn new() -> Self {
        Self {
            last: u64::MAX,
            since: Instant::now(),
        }
    }

    fn check(&mut self, progress: u64, what: &str) -> anyhow::Result<()> {
        if progress != self.last {
            self.last = progress;
            self.since = Instant::now();
        } else if self.since.elapsed() > STALL {
            bail!("no progress for {STALL:?} while {what} (at {progress})");
        }
        Ok(())
    }
}

async fn end_to_end(
    client: &reqwest::Client,
    exe: &Path,
    sim: &Simulator,
    shape: StreamShape,
    dir: &Path,
) -> anyhow::Result<EndToEnd> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let s3 = S3Server::start(&dir.join("s3"), 0, &dir.join("s3.log"))?;
    let exporter = Exporter::start(exe, sim, s3.port, dir)?;
    let pid = exporter.proc.pid();
    let mut first_byte = None;
    let mut ingest = None;
    let mut stall = StallGuard::new();
    let mut anonymous = AnonymousPeak::new(pid);
    let (end, last) = loop {
        tokio::time::sleep(POLL).await;
        anonymous.sample();
        let Some(now) = scrape(client, &exporter.metrics_url).await else {
            stall.check(0, "starting the exporter")?;
            continue;
        };
        let at = Instant::now();
        if first_byte.is_none() && now.received_bytes() > 0 {
            first_byte = Some(at);
        }
        if ingest.is_none() && now.durable_events() >= shape.events {
            ingest = Some(at);
        }
        if ingest.is_some() && now.backlog_events() == 0 && now.files_waiting() == 0 {
            break (at, now);
        }
        stall.check(
            now.durable_events() + now.files_uploaded(),
            "ingesting and uploading",
        )?;
    };
    let cpu_seconds = procs::cpu_seconds(pid)?;
    let (peak_rss, _) = procs::memory(pid)?;
    exporter.proc.stop(Duration::from_secs(20));
    let (put_ceiling, floor) = uploaded_ceilings(&s3).await?;
    s3.proc.stop(Duration::from_secs(10));
    let (first_byte, ingest) = first_byte
        .zip(ingest)
        .ok_or_else(|| anyhow!("phases not observed"))?;
    if last.durable_events() != shape.events {
        bail!(
            "the exporter made {} events durable, the stream has {}",
            last.durable_events(),
            shape.events
        );
    }
    Ok(EndToEnd {
        events: shape.events,
        stream_bytes: shape.bytes,
        ingest_seconds: (ingest - first_byte).as_secs_f64(),
        end_to_end_seconds: (end - first_byte).as_secs_f64(),
        cpu_seconds,
        peak_rss,
        peak_anonymous_rss: anonymous.peak,
        commits: last.get("stream_exporter_wal_commits_total") as u64,
        commit_records: last.get("stream_exporter_wal_commit_records_total") as u64,
        files: last.files_uploaded(),
        put_ceiling,
        floor,
    })
}

/// The ceilings measured on what a run uploaded: a PUT loop of the same file sizes (content
/// from the largest file) to the same server, and the per-byte floor over the files.
async fn uploaded_ceilings(s3: &S3Server) -> anyhow::Result<(PutFigure, FloorFigure)> {
    let objects = s3.object_sizes(BUCKET)?;
    let sizes: Vec<u64> = objects.iter().map(|(_, size)| *size).collect();
    let largest = objects
        .iter()
        .max_by_key(|(_, size)| *size)
        .ok_or_else(|| anyhow!("nothing uploaded"))?;
    let content = std::fs::read(s3.root.join(BUCKET).join(&largest.0))
        .with_context(|| format!("reading the uploaded {}", largest.0))?;
    let put = ceilings::put_loop(s3.port, &sizes, Bytes::from(content)).await?;
    let paths: Vec<PathBuf> = objects
        .iter()
        .map(|(name, _)| s3.root.join(BUCKET).join(name))
        .collect();
    let floor = ceilings::per_byte_floor(&paths)?;
    Ok((put, floor))
}

async fn drain(
    client: &reqwest::Client,
    exe: &Path,
    sim: &Simulator,
    shape: StreamShape,
    dir: &Path,
) -> anyhow::Result<Drain> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let s3_port = procs::free_port()?;
    let exporter = Exporter::start(exe, sim, s3_port, dir)?;
    let pid = exporter.proc.pid();
    // Backlog: everything durable and sealed, nothing uploaded.
    let mut stall = StallGuard::new();
    let mut anonymous = AnonymousPeak::new(pid);
    let built = loop {
        tokio::time::sleep(POLL).await;
        anonymous.sample();
        let Some(now) = scrape(client, &exporter.metrics_url).await else {
            stall.check(0, "starting the exporter")?;
            continue;
        };
        if now.durable_events() >= shape.events && now.backlog_events() == 0 {
            break now;
        }
        stall.check(now.durable_events(), "building the backlog")?;
    };
    let backlog_raw_bytes = built.get("stream_exporter_files_waiting_bytes") as u64;
    let backlog_disk_metric_bytes = built.get("stream_exporter_disk_used_bytes") as u64;
    let backlog_disk_bytes = procs::disk_bytes(&exporter.wal_dir)?;
    let (_, rss_at_backlog) = procs::memory(pid)?;

    let s3_started = Instant::now();
    let s3 = S3Server::start(&dir.join("s3"), s3_port, &dir.join("s3.log"))?;
    let mut first = None;
    let mut stall = StallGuard::new();
    let end = loop {
        tokio::time::sleep(POLL).await;
        anonymous.sample();
        let Some(now) = scrape(client, &exporter.metrics_url).await else {
            continue;
        };
        let at = Instant::now();
        if first.is_none() && now.files_uploaded() > 0 {
            first = Some((at, now.files_uploaded()));
        }
        if now.files_waiting() == 0 {
            break at;
        }
        stall.check(now.files_uploaded(), "draining")?;
    };
    let cpu_seconds = procs::cpu_seconds(pid)?;
    let (peak_rss, _) = procs::memory(pid)?;
    exporter.proc.stop(Duration::from_secs(20));
    let (first_at, first_files) = first.ok_or_else(|| anyhow!("no upload observed"))?;
    let sizes: Vec<u64> = s3
        .object_sizes(BUCKET)?
        .into_iter()
        .map(|(_, size)| size)
        .collect();
    let total: u64 = sizes.iter().sum();
    if total != backlog_raw_bytes {
        bail!("{total} bytes uploaded, the backlog had {backlog_raw_bytes}");
    }
    let first_bytes: u64 = sizes.iter().take(first_files as usize).sum();
    // The drain ceiling, against the same server, with content from an uploaded file.
    let largest = s3
        .object_sizes(BUCKET)?
        .into_iter()
        .max_by_key(|(_, size)| *size)
        .ok_or_else(|| anyhow!("nothing uploaded"))?;
    let content = std::fs::read(s3.root.join(BUCKET).join(&largest.0))
        .with_context(|| format!("reading the uploaded {}", largest.0))?;
    let ceiling = ceilings::put_loop(s3.port, &sizes, Bytes::from(content)).await?;
    s3.proc.stop(Duration::from_secs(10));
    Ok(Drain {
        backlog_raw_bytes,
        backlog_disk_bytes,
        backlog_disk_metric_bytes,
        rss_at_backlog,
        drain_bytes: total - first_bytes,
        drain_seconds: (end - first_at).as_secs_f64(),
        from_s3_start_seconds: (end - s3_started).as_secs_f64(),
        files: sizes.len(),
        peak_rss,
        peak_anonymous_rss: anonymous.peak,
        cpu_seconds,
        ceiling,
    })
}

/// The largest anonymous resident memory of a process seen at each poll (the kernel keeps no
/// high-water mark of it; a peak shorter than [`POLL`] can be missed).
struct AnonymousPeak {
    pid: u32,
    peak: u64,
}

impl AnonymousPeak {
    fn new(pid: u32) -> Self {
        AnonymousPeak { pid, peak: 0 }
    }

    fn sample(&mut self) {
        if let Ok(bytes) = procs::anonymous_rss(self.pid) {
            self.peak = self.peak.max(bytes);
        }
    }
}

/// The median over `runs` of `figure`.
fn med(runs: &[&Run], figure: impl Fn(&Run) -> f64) -> f64 {
    median(&mut runs.iter().map(|run| figure(run)).collect::<Vec<_>>())
}

fn mib(bytes: f64) -> f64 {
    bytes / (1 << 20) as f64
}

fn yes(met: bool) -> &'static str {
    if met { "yes" } else { "**no**" }
}

/// The Markdown tables: one per size, medians of its runs.
fn report(sizes: &[u64], runs: &[Run]) -> String {
    let mut out = String::new();
    for &size in sizes {
        let runs: Vec<&Run> = runs.iter().filter(|run| run.events == size).collect();
        if runs.is_empty() {
            continue;
        }
        let events = runs[0].end_to_end.events;
        let bytes = runs[0].end_to_end.stream_bytes;
        let load = med(&runs, |r| r.load_average);
        let ingest = med(&runs, |r| events as f64 / r.end_to_end.ingest_seconds);
        let ingest_mb = med(&runs, |r| bytes as f64 / r.end_to_end.ingest_seconds / 1e6);
        let e2e = med(&runs, |r| events as f64 / r.end_to_end.end_to_end_seconds);
        let raw = med(&runs, |r| r.raw.events_per_sec());
        let raw_mb = med(&runs, |r| r.raw.mb_per_sec());
        let work = med(&runs, |r| r.work.events_per_sec());
        let work_mb = med(&runs, |r| r.work.mb_per_sec());
        let of_work = med(&runs, |r| {
            (events as f64 / r.end_to_end.ingest_seconds) / r.work.events_per_sec()
        });
        let drain = med(&runs, |r| {
            r.drain.drain_bytes as f64 / r.drain.drain_seconds / 1e6
        });
        let put = med(&runs, |r| r.drain.ceiling.mb_per_sec());
        let of_put = med(&runs, |r| {
            (r.drain.drain_bytes as f64 / r.drain.drain_seconds / 1e6)
                / r.drain.ceiling.mb_per_sec()
        });
        let fsync = med(&runs, |r| r.fsync.small_p50_ms);
        let durable = med(&runs, |r| r.fsync.durable_mb_per_sec);
        let per_commit = med(&runs, |r| {
            r.end_to_end.commit_records as f64 / r.end_to_end.commits.max(1) as f64
        });
        let rss_e2e = med(&runs, |r| mib(r.end_to_end.peak_rss as f64));
        let rss_drain = med(&runs, |r| mib(r.drain.peak_rss as f64));
        let rss_backlog = med(&runs, |r| mib(r.drain.rss_at_backlog as f64));
        let anon_e2e = med(&runs, |r| mib(r.end_to_end.peak_anonymous_rss as f64));
        let anon_drain = med(&runs, |r| mib(r.drain.peak_anonymous_rss as f64));
        let cpu = med(&runs, |r| r.end_to_end.cpu_seconds / events as f64 * 1e6);
        let cpu_drain = med(&runs, |r| r.drain.cpu_seconds / events as f64 * 1e6);
        let disk = med(&runs, |r| {
            r.drain.backlog_disk_bytes as f64 / r.drain.backlog_raw_bytes as f64
        });
        let raw_backlog = med(&runs, |r| r.drain.backlog_raw_bytes as f64 / 1e6);
        out.push_str(&format!(
            "\n### {size} events ({events} exported lines, {:.1} MB of stream, {:.1} MB of NDJSON), median of {} runs, load average {load:.1}\n\n",
            bytes as f64 / 1e6,
            raw_backlog,
            runs.len(),
        ));
        out.push_str(
            "| figure | exporter | ceiling, same run | target | met |\n|---|---|---|---|---|\n",
        );
        out.push_str(&format!(
            "| ingest | {ingest:.0} events/s, {ingest_mb:.0} MB/s | work {work:.0} events/s ({work_mb:.0} MB/s); raw read {raw:.0} events/s ({raw_mb:.0} MB/s) | ≥ 15 % of work: {:.0} % | {} |\n",
            of_work * 100.0,
            yes(of_work >= 0.15)
        ));
        let e2e_seconds = med(&runs, |r| r.end_to_end.end_to_end_seconds);
        let put_e2e = med(&runs, |r| r.end_to_end.put_ceiling.seconds);
        let of_put_e2e = med(&runs, |r| {
            r.end_to_end.end_to_end_seconds / r.end_to_end.put_ceiling.seconds
        });
        // How long the last files wait behind the last event durable: sealing and uploading
        // what the stream left.
        let tail_seconds = med(&runs, |r| {
            r.end_to_end.end_to_end_seconds - r.end_to_end.ingest_seconds
        });
        out.push_str(&format!(
            "| end to end | {e2e:.0} events/s ({e2e_seconds:.1} s; last file uploaded {tail_seconds:.2} s after the last event durable) | PUT loop of the same files {put_e2e:.1} s | ≤ 2 × the PUT loop: {of_put_e2e:.2} × | {} |\n",
            yes(of_put_e2e <= 2.0)
        ));
        out.push_str(&format!(
            "| drain | {drain:.0} MB/s | PUT loop {put:.0} MB/s | ≥ 80 % of the PUT loop: {:.0} % | {} |\n",
            of_put * 100.0,
            yes(of_put >= 0.8)
        ));
        out.push_str(&format!(
            "| group commit | {per_commit:.0} events per commit | fsync {fsync:.2} ms (4 KiB); {durable:.0} MB/s durable writes | | |\n"
        ));
        out.push_str(&format!(
            "| peak RSS | {rss_e2e:.1} MiB end to end; {rss_drain:.1} MiB backlog build and drain ({rss_backlog:.1} MiB once built) | | ≤ 64 MiB | {} |\n",
            yes(rss_e2e <= 64.0 && rss_drain <= 64.0)
        ));
        out.push_str(&format!(
            "| of which anonymous | {anon_e2e:.1} MiB end to end; {anon_drain:.1} MiB backlog build and drain (sampled every poll) | | | |\n"
        ));
        let floor = med(&runs, |r| r.end_to_end.floor.cpu_seconds);
        let floor_mb = med(&runs, |r| r.end_to_end.floor.bytes as f64 / 1e6);
        let of_floor = med(&runs, |r| {
            r.end_to_end.cpu_seconds / r.end_to_end.floor.cpu_seconds
        });
        out.push_str(&format!(
            "| CPU | {cpu:.1} s per million events end to end; {cpu_drain:.1} s backlog build and drain | per-byte floor {floor:.2} s for the {floor_mb:.0} MB uploaded (one MD5, one zstd-1 compression, one decompression) | ≤ 2.5 × the floor: {of_floor:.1} × | {} |\n",
            yes(of_floor <= 2.5)
        ));
        out.push_str(&format!(
            "| disk | {disk:.3} bytes per raw byte of backlog | | ≤ 0.35 | {} |\n",
            yes(disk <= 0.35)
        ));
    }
    out
}
