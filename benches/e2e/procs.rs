//! The processes of a run — simulator, S3 server, exporter — and what the harness reads of them:
//! the exporter's `/metrics`, and its CPU time and resident memory from `/proc`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};

/// The stream the simulator serves and the exporter reads.
pub const STREAM_ID: &str = "4f6e2a8c-1b3d-4e5f-9a7b-0c2d4e6f8a1b";
/// The simulator's API token.
pub const TOKEN: &str = "bench-token";
/// S3 credentials of the bench server.
pub const ACCESS_KEY: &str = "bench-access-key";
/// S3 secret of the bench server (a throwaway value for a loopback server).
pub const SECRET_KEY: &str = "bench-secret-key-not-a-secret";
/// The bucket the exporter uploads to.
pub const BUCKET: &str = "bench";
/// A recovery date before every event: the stream is the live log from `0-0`, no recovery.
pub const NO_RECOVERY_DATE: &str = "1970-01-01T00:00:00.000Z";

/// How long a process may take to print that it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// A child process, stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
pub struct Proc {
    pub child: Child,
    name: &'static str,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it: SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub fn stop(mut self, grace: Duration) {
        self.terminate(grace);
    }

    fn terminate(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{} did not stop within {grace:?}: killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// Spawns `command` with stdout piped and waits (bounded) for a line containing `marker`;
/// returns the process and that line. Later output goes to `log`.
fn spawn_until(
    mut command: Command,
    name: &'static str,
    marker: &'static str,
    log: &Path,
) -> anyhow::Result<(Proc, String)> {
    let log_file = std::fs::File::create(log)
        .with_context(|| format!("creating the log file {}", log.display()))?;
    command
        .stdout(Stdio::piped())
        .stderr(
            log_file
                .try_clone()
                .with_context(|| format!("opening {}", log.display()))?,
        )
        .stdin(Stdio::null());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting the {name}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout for the {name}"))?;
    let proc = Proc { child, name };
    let (found_tx, found_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log_file = log_file;
        let mut found_tx = Some(found_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(marker)
                && let Some(tx) = found_tx.take()
            {
                let _ = tx.send(line.clone());
            }
            let _ = std::io::Write::write_all(&mut log_file, format!("{line}\n").as_bytes());
        }
    });
    let line = found_rx
        .recv_timeout(READY_TIMEOUT)
        .map_err(|_| anyhow!("the {name} did not get ready (see {})", log.display()))?;
    Ok((proc, line))
}

/// The first `http://host:port` in `line`.
fn url_in(line: &str) -> anyhow::Result<String> {
    let start = line
        .find("http://")
        .ok_or_else(|| anyhow!("no URL in {line:?}"))?;
    let url: String = line[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    Ok(url.trim_end_matches('/').to_owned())
}

/// A free port on 127.0.0.1 (bound then released: a later bind of it may race another program,
/// which only fails that run).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .context("finding a free port")?;
    Ok(listener.local_addr().context("reading a port")?.port())
}

/// The simulator, serving `events` live events pre-rendered (as fast as possible).
pub struct Simulator {
    pub proc: Proc,
    pub url: String,
}

impl Simulator {
    /// Starts `exe simulate` on a free port and waits until it serves.
    pub fn start(exe: &Path, events: u64, dir: &Path) -> anyhow::Result<Self> {
        // Frames are about 2.3 KB: room for all of them, so every connection is served from
        // the pre-rendered cache.
        let cache_mib = ((events * 2_600) >> 20) + 64;
        let mut command = Command::new(exe);
        command
            .args(["simulate", "--port", "0", "--events"])
            .arg(events.to_string())
            .args(["--knowledge-base", "2000", "--seed", "1", "--prerender"])
            .arg("--frame-cache-mib")
            .arg(cache_mib.to_string())
            .args(["--no-served-events", "--stream-id", STREAM_ID])
            .env_clear()
            .env("SIMULATOR_TOKEN", TOKEN)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let (proc, line) = spawn_until(
            command,
            "simulator",
            "OpenCTI simulator at",
            &dir.join("simulator.log"),
        )?;
        Ok(Self {
            url: url_in(&line)?,
            proc,
        })
    }

    /// The stream URL, with the recovery bound the exporter sends.
    pub fn stream_url(&self) -> String {
        format!(
            "{}/stream/{STREAM_ID}?recover={}",
            self.url,
            NO_RECOVERY_DATE.replace(':', "%3A")
        )
    }
}

/// An S3 server (s3s-fs, the test server) in its own process: this executable run with
/// `--serve-s3`.
pub struct S3Server {
    pub proc: Proc,
    pub port: u16,
    pub root: PathBuf,
}

impl S3Server {
    /// Starts it on `port` (0: any), storing under `root`.
    pub fn start(root: &Path, port: u16, log: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the bench executable")?;
        let mut command = Command::new(exe);
        command
            .arg("--serve-s3")
            .arg(root)
            .arg(port.to_string())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        let (proc, line) = spawn_until(command, "S3 server", "listening on", log)?;
        let url = url_in(&line)?;
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("no port in {url}"))?;
        Ok(Self {
            proc,
            port,
            root: root.to_path_buf(),
        })
    }

    /// Sizes of the objects stored in `bucket`, in key order.
    pub fn object_sizes(&self, bucket: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        collect_files(&self.root.join(bucket), &mut out)?;
        out.sort();
        Ok(out)
    }
}

fn collect_files(dir: &Path, out: &mut Vec<(String, u64)>) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let meta = entry.metadata().context("reading file metadata")?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if name.starts_with("stream_") && name.ends_with(".json") {
            out.push((name, meta.len()));
        }
    }
    Ok(())
}

/// Serves S3 in this process until SIGTERM (the `--serve-s3 ROOT PORT` mode).
pub fn serve_s3(args: &[String]) -> anyhow::Result<()> {
    let [root, port] = args else {
        bail!("usage: --serve-s3 ROOT PORT");
    };
    let root = PathBuf::from(root);
    let port: u16 = port.parse().context("the S3 port")?;
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let service = crate::s3_support::s3_service(&root, ACCESS_KEY, SECRET_KEY)
        .with_context(|| format!("opening {}", root.display()))?;
    let listener = crate::s3_support::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .with_context(|| format!("listening on port {port}"))?;
    let addr = listener.local_addr().context("reading the address")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let server = tokio::spawn(crate::s3_support::accept_loop(
            listener,
            service,
            None,
            std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        ));
        println!("listening on http://{addr}");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("installing the SIGTERM handler")?;
        terminate.recv().await;
        server.abort();
        anyhow::Ok(())
    })
}

/// The exporter under test.
pub struct Exporter {
    pub proc: Proc,
    pub metrics_url: String,
    pub wal_dir: PathBuf,
}

impl Exporter {
    /// Starts `exe run` against `sim`, uploading to S3 on `s3_port` (which may not listen yet),
    /// its WAL in `dir/wal`, a 1-second write interval and a 1-second cap on retry delays.
    pub fn start(exe: &Path, sim: &Simulator, s3_port: u16, dir: &Path) -> anyhow::Result<Self> {
        let metrics_port = free_port()?;
        let wal_dir = dir.join("wal");
        let log = dir.join("exporter.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("creating the log file {}", log.display()))?;
        let mut command = Command::new(exe);
        command
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("OPENCTI_URL", &sim.url)
            .env("OPENCTI_TOKEN", TOKEN)
            .env("CONNECTOR_ID", "0b9b6bd3-4b76-4e7c-9a0c-0f1c0f9d2f10")
            .env("CONNECTOR_LIVE_STREAM_ID", STREAM_ID)
            .env("CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE", NO_RECOVERY_DATE)
            .env("CONNECTOR_LOG_FORMAT", "json")
            .env("CONNECTOR_LOG_LEVEL", "info")
            .env("CONNECTOR_METRICS_BIND", "127.0.0.1")
            .env("CONNECTOR_METRICS_PORT", metrics_port.to_string())
            .env("WAL_DIR", &wal_dir)
            .env("WRITE_EVERY_SEC", "1")
            .env("UPLOAD_BACKOFF_MAX_SEC", "1")
            // Every phase exports the whole stream to a fresh bucket: the connector state the
            // simulator keeps from the phase before is not this export's.
            .env("WAL_ADOPT_DELIVERED", "false")
            .env("MINIO_ENDPOINT", "127.0.0.1")
            .env("MINIO_PORT", s3_port.to_string())
            .env("MINIO_BUCKET", BUCKET)
            .env("MINIO_FOLDER", "")
            .env("MINIO_ACCESS_KEY", ACCESS_KEY)
            .env("MINIO_SECRET_KEY", SECRET_KEY)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(
                log_file
                    .try_clone()
                    .with_context(|| format!("opening {}", log.display()))?,
            )
            .stderr(log_file);
        for (key, value) in std::env::vars() {
            // Allocator tuning for experiments, passed through.
            if key.starts_with("MALLOC_") {
                command.env(key, value);
            }
        }
        let child = command.spawn().context("starting the exporter")?;
        Ok(Self {
            proc: Proc {
                child,
                name: "exporter",
            },
            metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
            wal_dir,
        })
    }
}

/// One scrape of `/metrics`: every sample summed by metric name (labels dropped).
#[derive(Debug, Default, Clone)]
pub struct Scrape(HashMap<String, f64>);

impl Scrape {
    /// Parses the Prometheus text format.
    pub fn parse(text: &str) -> Self {
        let mut values = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            if let Ok(value) = value.parse::<f64>() {
                *values.entry(name.to_owned()).or_insert(0.0) += value;
            }
        }
        Self(values)
    }

    /// The summed value of `name`, 0 when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// Events durable in the WAL.
    pub fn durable_events(&self) -> u64 {
        self.get("processed_messages_total") as u64
    }

    /// Bytes of event stream received.
    pub fn received_bytes(&self) -> u64 {
        self.get("stream_exporter_stream_received_bytes_total") as u64
    }

    /// Durable events not sealed into a file yet.
    pub fn backlog_events(&self) -> u64 {
        self.get("stream_exporter_wal_backlog_events") as u64
    }

    /// Files waiting for upload.
    pub fn files_waiting(&self) -> u64 {
        self.get("stream_exporter_files_waiting") as u64
    }

    /// Files uploaded.
    pub fn files_uploaded(&self) -> u64 {
        self.get("written_files_total") as u64
    }
}

/// CPU seconds (user + system) the process `pid` used so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<f64> {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))
    };
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the command name;
    // Linux reports them in USER_HZ = 100 ticks per second.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// `VmHWM` (peak resident set) and `VmRSS` of `pid`, in bytes.
pub fn memory(pid: u32) -> anyhow::Result<(u64, u64)> {
    Ok((status_bytes(pid, "VmHWM:")?, status_bytes(pid, "VmRSS:")?))
}

/// `RssAnon` of `pid` in bytes: the resident memory that is the process's own (heap, stacks),
/// without the pages of its executable and libraries mapped from files (`RssFile`), which are
/// shared and which the kernel can drop and read again.
pub fn anonymous_rss(pid: u32) -> anyhow::Result<u64> {
    status_bytes(pid, "RssAnon:")
}

/// A field of `/proc/<pid>/status` given in kB, in bytes.
fn status_bytes(pid: u32, name: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
}

/// Bytes allocated on disk under `dir` (blocks, not apparent sizes).
pub fn disk_bytes(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).context("reading file metadata"),
        };
        if meta.is_dir() {
            total += disk_bytes(&entry.path())?;
        } else {
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
