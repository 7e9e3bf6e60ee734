//! Runs the real `opencti-stream-exporter` binary for end-to-end tests: configured only through
//! environment variables (the inherited environment is cleared), against the in-process OpenCTI
//! simulator and the in-process S3 server (or a directory), with its logs collected for
//! diagnostics, signals sent with `nix`, and every wait bounded by a deadline.
//!
//! ```ignore
//! let sim = start_simulator(SimulatorConfig { .. }).await;
//! let s3 = TestS3::start();
//! let harness = Harness::new(&sim).s3(&s3, BUCKET);
//! let mut daemon = harness.spawn();
//! wait_until("everything uploaded", secs(30), || ...).await;
//! assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
//! let export = read_s3_export(&s3, BUCKET).await;
//! ```
//!
//! On a failing test the logs of every run of the daemon are printed (most recent last), so a
//! failure says what the daemon was doing.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use opencti_stream_exporter::readback::{ReadbackReport, read_back};
use opencti_stream_exporter::sink::{DirSink, S3Sink, Sink, file_number};
use opencti_stream_exporter::transform::Action;
use opencti_stream_exporter::transform::{TransformOptions, Transformed, transform};
use simulator::{DEFAULT_STREAM_ID, Simulator, SimulatorConfig, SimulatorHandle};

use super::s3::{ACCESS_KEY, SECRET_KEY, TestS3};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_opencti-stream-exporter");
/// The bucket the tests export to.
pub const BUCKET: &str = "exports";
/// The folder (key prefix) the tests export to.
pub const FOLDER: &str = "opencti";
/// How often waits poll.
const POLL: Duration = Duration::from_millis(20);
/// Log lines printed per run when a test fails.
const SHOWN_LOG_LINES: usize = 120;

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Starts a simulator on 127.0.0.1 with a free port.
pub async fn start_simulator(config: SimulatorConfig) -> SimulatorHandle {
    let bind = SocketAddr::from(([127, 0, 0, 1], 0));
    Simulator::start(config, bind)
        .await
        .expect("the simulator starts")
}

/// Polls `condition` every few milliseconds until it holds; panics naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The log lines of one run of the daemon, appended as it writes them.
type RunLog = Arc<Mutex<Vec<String>>>;

/// The logs of every run of the daemon in one test, printed if the test fails.
#[derive(Clone, Default)]
struct LogBook {
    runs: Arc<Mutex<Vec<RunLog>>>,
}

impl LogBook {
    fn new_run(&self) -> (usize, RunLog) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut runs = self.runs.lock().expect("log book lock");
        runs.push(Arc::clone(&lines));
        (runs.len(), lines)
    }

    fn dump(&self) {
        let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        for (index, run) in runs.iter().enumerate() {
            let lines = run.lock().unwrap_or_else(|p| p.into_inner());
            let skip = lines.len().saturating_sub(SHOWN_LOG_LINES);
            eprintln!(
                "----- daemon run {} ({} log lines, last {} shown) -----",
                index + 1,
                lines.len(),
                lines.len() - skip
            );
            for line in &lines[skip..] {
                eprintln!("{line}");
            }
        }
    }
}

/// The environment one test runs the daemon with, and the directories it uses. Dropping it
/// during a panic prints the logs of every run.
pub struct Harness {
    vars: BTreeMap<String, String>,
    /// The daemon's working directory, its WAL inside: shared with every [`Daemon`] spawned, so
    /// it outlives them even when the harness is a temporary (`harness(..).spawn()`).
    work: Arc<tempfile::TempDir>,
    logs: LogBook,
}

impl Harness {
    /// A daemon reading `sim`'s default stream, keeping its WAL in a fresh directory, with short
    /// backoffs, JSON logs and no metrics endpoint. Add a destination with [`Harness::s3`] or
    /// [`Harness::export_dir`].
    pub fn new(sim: &SimulatorHandle) -> Self {
        let work = Arc::new(tempfile::tempdir().expect("temporary directory for the daemon"));
        let token = sim
            .token()
            .map(|t| t.expose().to_string())
            .unwrap_or_else(|| "unused".into());
        let mut harness = Self {
            vars: BTreeMap::new(),
            work,
            logs: LogBook::default(),
        };
        let wal = harness.wal_dir().display().to_string();
        harness = harness
            .set("OPENCTI_URL", &sim.url())
            .set("OPENCTI_TOKEN", &token)
            .set("CONNECTOR_ID", "0b9b6bd3-4b76-4e7c-9a0c-0f1c0f9d2f10")
            .set("CONNECTOR_LIVE_STREAM_ID", DEFAULT_STREAM_ID)
            .set("CONNECTOR_LOG_FORMAT", "json")
            .set("CONNECTOR_LOG_LEVEL", "info")
            .set("CONNECTOR_EXPOSE_METRICS", "false")
            .set("WAL_DIR", &wal)
            .set("WRITE_EVERY_SEC", "1")
            .set("STREAM_BACKOFF_MAX_SEC", "1")
            .set("UPLOAD_BACKOFF_MAX_SEC", "1")
            .set("UPLOAD_TIMEOUT_SEC", "20")
            .set("NO_COLOR", "1");
        harness
    }

    /// Sets (or replaces) one variable.
    pub fn set(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    /// Removes one variable.
    pub fn unset(mut self, name: &str) -> Self {
        self.vars.remove(name);
        self
    }

    /// Exports to `bucket` of `s3`, under [`FOLDER`].
    pub fn s3(self, s3: &TestS3, bucket: &str) -> Self {
        self.unset("EXPORT_DIR")
            .set("MINIO_ENDPOINT", "127.0.0.1")
            .set("MINIO_PORT", &s3.addr().port().to_string())
            .set("MINIO_BUCKET", bucket)
            .set("MINIO_FOLDER", FOLDER)
            .set("MINIO_ACCESS_KEY", ACCESS_KEY)
            .set("MINIO_SECRET_KEY", SECRET_KEY)
            .set("MINIO_SECURE", "false")
    }

    /// Exports to the directory `dir`, under [`FOLDER`].
    pub fn export_dir(self, dir: &Path) -> Self {
        self.set("EXPORT_DIR", &dir.display().to_string())
            .set("MINIO_FOLDER", FOLDER)
    }

    /// First start without recovery, from just before the first live event: the export is then
    /// exactly the live log, in order (`CONNECTOR_LIVE_STREAM_START_TIMESTAMP` and a recover date
    /// not after it).
    pub fn live_log_only(self, sim: &SimulatorHandle) -> Self {
        let first = sim.live_ids().first().copied().expect("a live log");
        let start = first.ms.saturating_sub(1);
        self.set("CONNECTOR_LIVE_STREAM_START_TIMESTAMP", &start.to_string())
            .set(
                "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
                "2020-01-01T00:00:00Z",
            )
    }

    /// The directory of the daemon's WAL.
    pub fn wal_dir(&self) -> PathBuf {
        self.work.path().join("wal")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_clear()
            .envs(&self.vars)
            // No config.yml is read from here: the environment is the whole configuration.
            .current_dir(self.work.path())
            .stdin(Stdio::null());
        command
    }

    /// Starts the daemon (`run`).
    pub fn spawn(&self) -> Daemon {
        self.spawn_command(self.command(&["run"]))
    }

    /// Starts the daemon (`run`) with at most `limit` open file descriptors (`RLIMIT_NOFILE`,
    /// soft and hard), set in the child before it runs.
    pub fn spawn_with_open_files_limit(&self, limit: u64) -> Daemon {
        use std::os::unix::process::CommandExt as _;
        let mut command = self.command(&["run"]);
        let limit = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self.spawn_command(command)
    }

    fn spawn_command(&self, mut command: Command) -> Daemon {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the daemon starts");
        let (run, lines) = self.logs.new_run();
        let stderr = child.stderr.take().expect("piped stderr");
        let collected = Arc::clone(&lines);
        let reader = std::thread::Builder::new()
            .name(format!("daemon-{run}-stderr"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    collected.lock().expect("log lock").push(line);
                }
            })
            .expect("stderr reader thread");
        Daemon {
            child,
            lines,
            reader: Some(reader),
            exit: None,
            _work: Arc::clone(&self.work),
        }
    }

    /// Runs a subcommand to completion (at most `timeout`), returning its exit code, stdout and
    /// stderr.
    pub async fn run_command(&self, args: &[&str], timeout: Duration) -> CommandOutput {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the command starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = read_all(Box::new(stdout));
        let stderr = read_all(Box::new(stderr));
        let status = wait_for_exit(&mut child, timeout).await;
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{}` did not finish within {timeout:?}", args.join(" "));
        };
        CommandOutput {
            code: status.code(),
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }

    /// `status --json` of the stopped daemon, parsed.
    pub async fn status(&self) -> serde_json::Value {
        let output = self.run_command(&["status", "--json"], secs(30)).await;
        assert_eq!(output.code, Some(0), "status failed: {output:?}");
        serde_json::from_str(&output.stdout).expect("status --json prints JSON")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.logs.dump();
        }
    }
}

/// What a finished subcommand printed.
#[derive(Debug)]
pub struct CommandOutput {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// Waits (polling) until `child` exits or `timeout` passes.
async fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A running daemon. Dropping it kills it (SIGKILL) if it still runs.
pub struct Daemon {
    child: Child,
    lines: RunLog,
    reader: Option<std::thread::JoinHandle<()>>,
    exit: Option<ExitStatus>,
    /// Keeps the working directory (the WAL) until the process is gone: dropped after `Drop`
    /// has killed it.
    _work: Arc<tempfile::TempDir>,
}

impl Daemon {
    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("a pid fits in i32"))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signalling the daemon");
    }

    /// The peak resident set of the running process (`VmHWM` of `/proc/<pid>/status`), in bytes;
    /// read it before the process exits.
    pub fn peak_rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the daemon's /proc status (read it while the daemon runs)");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmHWM line in kB");
        kib * 1024
    }

    /// Whether the process has exited (and reaps it if so).
    pub fn has_exited(&mut self) -> bool {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("checking the daemon");
        }
        self.exit.is_some()
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) {
        self.kill_and(|| {});
    }

    /// SIGKILL, then `at_kill` while the process dies (before it is reaped: the power going off
    /// at the kill itself, say), then reaps it.
    pub fn kill_and(&mut self, at_kill: impl FnOnce()) {
        let running = !self.has_exited();
        if running {
            self.signal(Signal::SIGKILL);
        }
        at_kill();
        if running {
            self.exit = Some(self.child.wait().expect("reaping the killed daemon"));
        }
        self.join_reader();
    }

    /// SIGTERM, then waits until it exits; panics if it still runs after `timeout`.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.stop_with(Signal::SIGTERM, timeout).await
    }

    /// Sends `signal`, then waits until it exits; panics if it still runs after `timeout`.
    pub async fn stop_with(&mut self, signal: Signal, timeout: Duration) -> ExitStatus {
        if !self.has_exited() {
            self.signal(signal);
        }
        self.wait_exit(timeout).await
    }

    /// Waits until it exits; panics if it still runs after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if self.exit.is_none() {
            self.exit = wait_for_exit(&mut self.child, timeout).await;
        }
        let Some(status) = self.exit else {
            panic!("the daemon did not exit within {timeout:?}");
        };
        self.join_reader();
        status
    }

    fn join_reader(&mut self) {
        // The pipe closes when the process is gone, which ends the reader.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// The log lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().expect("log lock").clone()
    }

    /// Log lines (JSON) whose `message` contains `needle`.
    pub fn log_messages(&self, needle: &str) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|entry| {
                entry
                    .get("message")
                    .and_then(|m| m.as_str())
                    .is_some_and(|m| m.contains(needle))
            })
            .collect()
    }

    /// Log lines at level ERROR (JSON logs).
    pub fn errors(&self) -> Vec<String> {
        self.logs()
            .into_iter()
            .filter(|line| line.contains("\"level\":\"ERROR\""))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        self.join_reader();
    }
}

/// The lines the daemon must export for what `sim` served on its first accepted connection, in
/// order, read independently of the daemon: a twin simulator (same configuration, so the same
/// bytes) is asked the same request over plain HTTP, its SSE frames are split here, and each data
/// event (dependencies included) goes through [`transform`] with the attached files the
/// simulator stores embedded, as the stream client does. Reads up to the last live event.
pub async fn expected_lines(sim: &SimulatorHandle) -> Vec<Bytes> {
    let served = sim.served();
    let first = served
        .accepted()
        .next()
        .expect("the daemon connected to the simulator");
    let request = first.request.clone();
    // Pacing changes when events are sent, never their bytes.
    let mut config = sim.config().clone();
    config.rate = None;
    let twin = start_simulator(config).await;
    let last = twin.live_ids().last().expect("a live log").to_string();
    let mut url = format!("{}{}", twin.url(), request.path);
    if let Some(query) = &request.query {
        url = format!("{url}?{query}");
    }
    let mut get = reqwest::Client::new().get(url);
    if let Some(token) = twin.token() {
        get = get.bearer_auth(token.expose());
    }
    let headers = [
        ("last-event-id", &request.last_event_id),
        ("listen-delete", &request.listen_delete),
        ("no-dependencies", &request.no_dependencies),
        ("with-inferences", &request.with_inferences),
    ];
    for (name, value) in headers {
        if let Some(value) = value {
            get = get.header(name, value.as_str());
        }
    }
    let read = async {
        let mut response = get.send().await.expect("the twin simulator answers");
        assert!(
            response.status().is_success(),
            "twin: {}",
            response.status()
        );
        let mut buffer: Vec<u8> = Vec::new();
        let mut lines = Vec::new();
        while let Some(chunk) = response.chunk().await.expect("reading the twin's stream") {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = buffer.drain(..end + 2).collect();
                let Some(event) = parse_frame(&frame) else {
                    continue;
                };
                let live = !event.payload.contains("\"referer\":\"init-dependencies\"");
                let is_last = live && event.id == last;
                lines.push(transform_event(&twin, &event));
                if is_last {
                    return lines;
                }
            }
        }
        panic!("the twin's stream ended before the last live event");
    };
    let lines = tokio::time::timeout(secs(60), read)
        .await
        .expect("reading the twin's stream in time");
    twin.shutdown().await;
    lines
}

/// One data event of an SSE frame.
struct DataEvent {
    id: String,
    action: Action,
    payload: String,
}

/// The data event of one frame (`id:`, `event:`, one `data:` line); `None` for heartbeats and
/// other non-data events.
fn parse_frame(frame: &[u8]) -> Option<DataEvent> {
    let text = std::str::from_utf8(frame).expect("the simulator sends UTF-8 frames");
    let (mut id, mut event, mut data) = (None, None, None);
    for line in text.split('\n') {
        if let Some(value) = line.strip_prefix("id: ") {
            id = Some(value);
        } else if let Some(value) = line.strip_prefix("event: ") {
            event = Some(value);
        } else if let Some(value) = line.strip_prefix("data: ") {
            data = Some(value);
        }
    }
    let action = Action::from_event_name(event?.as_bytes())?;
    Some(DataEvent {
        id: id.expect("a data event has an id").to_string(),
        action,
        payload: data.expect("a data event has data").to_string(),
    })
}

/// `transform` of one data event, with its files downloaded from `sim`'s store.
fn transform_event(sim: &SimulatorHandle, event: &DataEvent) -> Bytes {
    let payload = Bytes::copy_from_slice(event.payload.as_bytes());
    let transformed = transform(
        &event.id,
        event.action,
        &payload,
        TransformOptions::default(),
    )
    .expect("the simulator's events are exportable");
    match transformed {
        Transformed::Ready(line) => line.line,
        Transformed::NeedsFiles(pending) => {
            let contents: Vec<Option<Bytes>> = pending
                .files()
                .iter()
                .map(|file| {
                    let uri = file.uri.as_deref().expect("a file uri");
                    Some(Bytes::from(sim.file_bytes(uri).expect("a stored file")))
                })
                .collect();
            pending.complete(&contents).expect("complete").line
        }
    }
}

/// One exported file.
#[derive(Debug, Clone)]
pub struct ExportedFile {
    /// Its key (`{folder}/stream_{ts}_{n}.json[.zst]`).
    pub key: String,
    /// Its number.
    pub number: u64,
    /// The timestamp in its name.
    pub ts_ms: u64,
    /// Its bytes as stored.
    pub body: Vec<u8>,
}

/// An export read back: files in listing order and their lines (decompressed) in order.
#[derive(Debug, Clone, Default)]
pub struct Export {
    /// Files in lexicographic key order (the importer's order).
    pub files: Vec<ExportedFile>,
    /// Every non-empty line, in file order, without `\n`.
    pub lines: Vec<Bytes>,
    /// What the importer's algorithm found (`crate::readback`), through the sink's own listing.
    pub readback: ReadbackReport,
    /// The number the importer expects first.
    pub first_number: u64,
}

impl Export {
    /// Panics unless the files are numbered from [`Export::first_number`] (1, 2, 3, …) without
    /// a gap in listing order, named
    /// `{FOLDER}/stream_<13 digits>_<n>.<extension>` with strictly increasing timestamps, end
    /// with a newline, and the importer's algorithm found no problem.
    pub fn assert_importable(&self, extension: &str) {
        self.check_files(extension);
        assert!(
            self.readback.is_ok(),
            "the importer's algorithm finds problems: {:?}",
            self.readback.problems
        );
    }

    /// As [`Export::assert_importable`], except that a line whose id is before the previous
    /// line's is accepted when that id was already exported: the server sent it again after a
    /// reconnection. A connection resumed in the middle of recovery starts again at the boundary
    /// object, inclusive (docs/opencti-protocol.md#event-ids), with its dependencies again
    /// (docs/opencti-protocol.md#dependency-and-recovery-events, they are sent once per
    /// connection), while dependencies of the next object, with a later id, may already be durable.
    /// The importer does not look at ids; the simulator's oracle checks what was served.
    pub fn assert_importable_with_replays(&self, extension: &str) {
        self.check_files(extension);
        let mut first_line = BTreeMap::new();
        let mut line = 0;
        for file in &self.files {
            first_line.insert(file.key.as_str(), line);
            line += split_lines(std::slice::from_ref(file)).len();
        }
        for problem in self
            .readback
            .problems
            .iter()
            .chain(&self.readback.id_rewinds)
        {
            let at = problem
                .line
                .map(|in_file| first_line[problem.key.as_str()] + in_file - 1);
            let replay = problem.what == "its id is before the previous line's"
                && at.is_some_and(|at| {
                    let id = line_id(&self.lines[at]);
                    self.lines[..at]
                        .iter()
                        .any(|earlier| line_id(earlier) == id)
                });
            assert!(
                replay,
                "the importer's algorithm finds a problem that is not a replay: {problem:?}\n{}",
                at.map(|at| self.describe_lines(at.saturating_sub(15)..at + 3))
                    .unwrap_or_default()
            );
        }
    }

    /// `line: id type referer data.id` for the lines in `range`, for diagnostics.
    pub fn describe_lines(&self, range: std::ops::Range<usize>) -> String {
        let mut out = String::new();
        for index in range.start..range.end.min(self.lines.len()) {
            let value: serde_json::Value =
                serde_json::from_slice(&self.lines[index]).unwrap_or_default();
            out.push_str(&format!(
                "  {index}: {} {} {} {}\n",
                value["id"], value["type"], value["origin"]["referer"], value["data"]["id"]
            ));
        }
        out
    }

    fn check_files(&self, extension: &str) {
        for (index, file) in self.files.iter().enumerate() {
            let expected = self.first_number + index as u64;
            assert_eq!(
                file.number, expected,
                "file {} is number {} but the importer expects {expected}",
                file.key, file.number
            );
            let name = format!("{FOLDER}/stream_{}_{}.{extension}", file.ts_ms, file.number);
            assert_eq!(file.key, name, "file name");
            assert_eq!(file.ts_ms.to_string().len(), 13, "13-digit timestamp");
            if index > 0 {
                assert!(
                    file.ts_ms > self.files[index - 1].ts_ms,
                    "timestamps increase with the number: {} then {}",
                    self.files[index - 1].key,
                    file.key
                );
            }
        }
        assert_eq!(
            self.readback.files,
            self.files.len(),
            "listing and files agree"
        );
        assert_eq!(self.readback.lines, self.lines.len() as u64, "lines agree");
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.lines.len()
    }
}

/// Panics, showing the first difference, unless `actual` equals `expected` line for line.
pub fn assert_same_lines(actual: &[Bytes], expected: &[Bytes]) {
    if let Some(index) = (0..actual.len().min(expected.len())).find(|&i| actual[i] != expected[i]) {
        panic!(
            "line {index} differs:\n  exported: {}\n  expected: {}",
            shorten(&actual[index]),
            shorten(&expected[index])
        );
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "exported {} lines, expected {}",
        actual.len(),
        expected.len()
    );
}

fn shorten(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    if text.len() > 400 {
        let mut end = 400;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… ({} bytes)", &text[..end], line.len())
    } else {
        text.into_owned()
    }
}

/// Splits files into lines (decompressing `.zst`), keeping files in the order given.
fn split_lines(files: &[ExportedFile]) -> Vec<Bytes> {
    let mut lines = Vec::new();
    for file in files {
        let plain = if file.key.ends_with(".zst") {
            zstd::decode_all(file.body.as_slice()).expect("a valid zstd object")
        } else {
            file.body.clone()
        };
        assert!(
            plain.is_empty() || plain.ends_with(b"\n"),
            "{} does not end with a newline",
            file.key
        );
        lines.extend(
            plain
                .split(|b| *b == b'\n')
                .filter(|line| !line.is_empty())
                .map(Bytes::copy_from_slice),
        );
    }
    lines
}

fn exported_file(key: String, body: Vec<u8>) -> ExportedFile {
    let number = file_number(&key).unwrap_or_else(|| panic!("no file number in {key}"));
    let name = key.rsplit('/').next().unwrap_or(&key);
    let ts_ms = name
        .strip_prefix("stream_")
        .and_then(|rest| rest.split('_').next())
        .and_then(|ts| ts.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp in {key}"));
    ExportedFile {
        key,
        number,
        ts_ms,
        body,
    }
}

/// Every key of the bucket under [`FOLDER`], read from the server's disk (cheap, for polling).
pub fn s3_keys(s3: &TestS3, bucket: &str) -> Vec<String> {
    s3.keys(bucket)
        .into_iter()
        .filter(|key| key.starts_with(&format!("{FOLDER}/")))
        .collect()
}

/// Reads the export in `bucket` of `s3`: the objects from the server's disk, and the importer's
/// algorithm through a real S3 listing (SigV4), expecting file 1 first.
pub async fn read_s3_export(s3: &TestS3, bucket: &str) -> Export {
    read_s3_export_from(s3, bucket, 1).await
}

/// [`read_s3_export`] for an importer that expects file `first_number` first (its
/// `file_count` + 1).
pub async fn read_s3_export_from(s3: &TestS3, bucket: &str, first_number: u64) -> Export {
    let files: Vec<ExportedFile> = s3_keys(s3, bucket)
        .into_iter()
        .map(|key| {
            let body = s3.read(bucket, &key).expect("a listed object is readable");
            exported_file(key, body)
        })
        .collect();
    let sink = S3Sink::new(s3.settings(bucket)).expect("an S3 client");
    let readback = importer_read_back(&sink, first_number).await;
    Export {
        lines: split_lines(&files),
        files,
        readback,
        first_number,
    }
}

/// Reads the export in the directory `root`.
pub async fn read_dir_export(root: &Path) -> Export {
    let sink = DirSink::new(root);
    let listed = sink
        .list(&format!("{FOLDER}/"))
        .await
        .expect("listing the export directory");
    let mut files = Vec::new();
    for object in listed {
        let body = std::fs::read(root.join(&object.key)).expect("a listed file is readable");
        files.push(exported_file(object.key, body));
    }
    let readback = importer_read_back(&sink, 1).await;
    Export {
        lines: split_lines(&files),
        files,
        readback,
        first_number: 1,
    }
}

async fn importer_read_back(sink: &dyn Sink, first_number: u64) -> ReadbackReport {
    read_back(sink, &format!("{FOLDER}/"), first_number, |_| {}, |_, _| {})
        .await
        .expect("reading the export back")
}

/// The id (`"id"` member) of an exported line.
pub fn line_id(line: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(line).expect("a JSON line");
    value["id"].as_str().expect("a string id").to_string()
}

/// Bytes of the files under `dir` (recursively); 0 if it does not exist.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Sealed segment files waiting in the WAL directory `wal` (`segments/*.ndjson.zst`).
pub fn segment_files(wal: &Path) -> usize {
    std::fs::read_dir(wal.join("segments"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(".ndjson.zst"))
                .count()
        })
        .unwrap_or(0)
}

/// Default simulator settings for daemon tests: short heartbeats, the given size and seed.
pub fn simulator_config(seed: u64, live_events: u64) -> SimulatorConfig {
    SimulatorConfig {
        seed,
        live_events,
        knowledge_base: 200,
        heartbeat: Duration::from_millis(100),
        ..SimulatorConfig::default()
    }
}

/// The id of the last line of the last file under [`FOLDER`] in `bucket` (cheap enough to poll:
/// reads one object from the server's disk). `None` while nothing is exported.
pub fn last_s3_line_id(s3: &TestS3, bucket: &str) -> Option<String> {
    let key = s3_keys(s3, bucket).pop()?;
    let body = s3.read(bucket, &key)?;
    last_line_id(&key, body)
}

/// The id of the last line of the last file under [`FOLDER`] in the directory `root`.
pub fn last_dir_line_id(root: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join(FOLDER))
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("stream_"))
        .collect();
    names.sort();
    let name = names.pop()?;
    let body = std::fs::read(root.join(FOLDER).join(&name)).ok()?;
    last_line_id(&name, body)
}

fn last_line_id(key: &str, body: Vec<u8>) -> Option<String> {
    let plain = if key.ends_with(".zst") {
        zstd::decode_all(body.as_slice()).ok()?
    } else {
        body
    };
    let line = plain
        .split(|b| *b == b'\n')
        .rev()
        .find(|line| !line.is_empty())?;
    Some(line_id(line))
}
