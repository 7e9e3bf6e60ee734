//! The dead-letter file: events that cannot be exported (docs/architecture.md#invariant-7, "bad
//! input is contained"), kept next to the WAL so an operator can inspect or replay them.
//!
//! Each entry is one JSON line: when it was written, the SSE id and event name, why it was
//! rejected, and the payload (as text when it is UTF-8, as base64 otherwise). An entry is
//! appended and fsynced before the cursor can move past the event, so a dead-lettered event is
//! never silently lost. The file is created with mode 0600 and its directory fsynced, so the
//! file itself survives a power loss.
//!
//! Bounded, so a hostile stream cannot fill the disk: the id, event name and reason are cut at
//! [`MAX_ID_BYTES`], [`MAX_EVENT_BYTES`] and [`MAX_REASON_BYTES`]; a payload whose entry would
//! not fit in `max_bytes` is left out (its size is recorded); and when an entry would take the
//! file past `max_bytes`, the file is renamed to [`ROTATED_FILE_NAME`] (replacing the previous
//! one) and a new one is started. So the dead letters never take more than twice `max_bytes`,
//! which the disk budget sets aside ([`super::PipelineStats::new`]). Appends are blocking (a
//! write and an fsync): async code goes through [`OffRuntimeDeadLetters`], which runs them on a
//! blocking thread.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;

/// File name of the dead-letter file inside the WAL directory.
pub const FILE_NAME: &str = "dead-letter.ndjson";
/// The previous dead-letter file, once the current one reached its size.
pub const ROTATED_FILE_NAME: &str = "dead-letter.ndjson.1";
/// Longest SSE id recorded (longer ones are cut).
pub const MAX_ID_BYTES: usize = 256;
/// Longest event name recorded.
pub const MAX_EVENT_BYTES: usize = 64;
/// Longest reason recorded.
pub const MAX_REASON_BYTES: usize = 1024;
/// Largest dead-letter file, whatever the disk budget.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Share of the disk budget one dead-letter file may take (two files at most exist).
const BUDGET_SHARE_DIVISOR: u64 = 16;

/// The size of one dead-letter file under a disk budget of `wal_max_bytes`: a sixteenth of it,
/// at most [`MAX_FILE_BYTES`]. The current and the rotated file take at most twice that.
pub fn file_bytes_for_budget(wal_max_bytes: u64) -> u64 {
    (wal_max_bytes / BUDGET_SHARE_DIVISOR).min(MAX_FILE_BYTES)
}

/// `text` cut to at most `max` bytes on a character boundary, marked when cut.
fn capped(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    const MARK: &str = "…[cut]";
    if text.len() <= max {
        return text.into();
    }
    let (kept, _) = crate::record_file::cut(text, max.saturating_sub(MARK.len()));
    format!("{kept}{MARK}").into()
}

/// One rejected event.
#[derive(Debug, Clone, Copy)]
pub struct DeadEvent<'a> {
    /// SSE id, when the event had one.
    pub id: Option<&'a str>,
    /// SSE event name.
    pub event: &'a str,
    /// Why it was not exported.
    pub reason: &'a str,
    /// The raw `data` bytes.
    pub payload: &'a [u8],
}

#[derive(Serialize)]
struct Entry<'a> {
    at_ms: u64,
    id: Option<&'a str>,
    event: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    payload_omitted: bool,
    payload_bytes: usize,
}

/// Appends rejected events to the dead-letter file, durably.
#[derive(Debug)]
pub struct DeadLetterFile {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
}

impl DeadLetterFile {
    /// Opens (creating with mode 0600, then fsyncing `dir`) `dir/dead-letter.ndjson`. The file
    /// is rotated before it would pass `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let path = dir.join(FILE_NAME);
        let file = crate::record_file::open_append(&path)?;
        let written = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            path,
            file,
            written,
            max_bytes,
        })
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` and fsyncs the file (rotating it first if the entry would take it past
    /// its size). Blocking. On error nothing may be assumed written.
    pub fn append(&mut self, event: DeadEvent<'_>, now_ms: u64) -> io::Result<()> {
        let id = event.id.map(|id| capped(id, MAX_ID_BYTES));
        let name = capped(event.event, MAX_EVENT_BYTES);
        let reason = capped(event.reason, MAX_REASON_BYTES);
        let text = std::str::from_utf8(event.payload).ok();
        let entry = |keep_payload: bool| Entry {
            at_ms: now_ms,
            id: id.as_deref(),
            event: &name,
            reason: &reason,
            payload: text.filter(|_| keep_payload),
            payload_base64: (keep_payload && text.is_none())
                .then(|| base64::engine::general_purpose::STANDARD.encode(event.payload)),
            payload_omitted: !keep_payload,
            payload_bytes: event.payload.len(),
        };
        // Base64 takes 4/3 of the payload: skip encoding one that cannot fit anyway.
        let may_fit = (event.payload.len() as u64).saturating_mul(4) / 3 < self.max_bytes;
        let mut line = if may_fit {
            serde_json::to_vec(&entry(true)).map_err(io::Error::other)?
        } else {
            Vec::new()
        };
        if line.is_empty() || line.len() as u64 >= self.max_bytes {
            line = serde_json::to_vec(&entry(false)).map_err(io::Error::other)?;
        }
        line.push(b'\n');
        if self.written > 0 && self.written.saturating_add(line.len() as u64) > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.written += line.len() as u64;
        Ok(())
    }

    /// Renames the file to [`ROTATED_FILE_NAME`] (replacing the previous one) and starts a new
    /// one, durably.
    fn rotate(&mut self) -> io::Result<()> {
        let rotated = self.dir.join(ROTATED_FILE_NAME);
        std::fs::rename(&self.path, &rotated)?;
        self.file = crate::record_file::open_append(&self.path)?;
        self.written = 0;
        tracing::warn!(
            file = %self.path.display(),
            previous = %rotated.display(),
            "the dead-letter file is full: it was renamed (replacing the one before) and a new \
             one started"
        );
        Ok(())
    }
}

/// A dead-letter file appended to from async code. Each append (the lock, the write and the
/// fsync) runs on a blocking thread, so the runtime's workers never wait for the disk.
#[derive(Debug, Clone)]
pub struct OffRuntimeDeadLetters {
    file: Arc<Mutex<DeadLetterFile>>,
    path: PathBuf,
}

impl OffRuntimeDeadLetters {
    /// Wraps `file`.
    pub fn new(file: DeadLetterFile) -> Self {
        let path = file.path().to_path_buf();
        Self {
            file: Arc::new(Mutex::new(file)),
            path,
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`DeadLetterFile::append`] on a blocking thread: durable once this returns `Ok`.
    pub async fn append(
        &self,
        id: Option<&str>,
        event: &str,
        reason: &str,
        payload: bytes::Bytes,
        now_ms: u64,
    ) -> io::Result<()> {
        let file = Arc::clone(&self.file);
        let (id, event, reason) = (id.map(str::to_owned), event.to_owned(), reason.to_owned());
        tokio::task::spawn_blocking(move || {
            let dead = DeadEvent {
                id: id.as_deref(),
                event: &event,
                reason: &reason,
                payload: &payload,
            };
            file.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .append(dead, now_ms)
        })
        .await
        .unwrap_or_else(|join| Err(io::Error::other(join.to_string())))
    }
}

/// Lets a warning through at most once per period, counting the ones held back.
#[derive(Debug)]
pub struct WarnLimiter {
    period: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl WarnLimiter {
    /// At most one warning per `period`.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            held_back: 0,
        }
    }

    /// Whether to warn now; when so, how many warnings were held back since the last one.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.period => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("readable")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect()
    }

    #[test]
    fn entries_keep_id_reason_and_payload_as_text_or_base64() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = DeadLetterFile::open(dir.path(), 1 << 20).expect("open");
        let bad = DeadEvent {
            id: Some("1-0"),
            event: "create",
            reason: "invalid JSON",
            payload: b"{not json",
        };
        file.append(bad, 5).expect("append");
        let binary = DeadEvent {
            id: None,
            event: "update",
            reason: "not UTF-8",
            payload: &[0xff, 0xfe],
        };
        file.append(binary, 6).expect("append");
        let lines = read_lines(file.path());
        assert_eq!(lines[0]["id"], "1-0");
        assert_eq!(lines[0]["reason"], "invalid JSON");
        assert_eq!(lines[0]["payload"], "{not json");
        assert_eq!(lines[1]["payload_base64"], "//4=");
        assert!(lines[1]["id"].is_null());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(file.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn payloads_are_dropped_past_the_size_cap_but_entries_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = DeadLetterFile::open(dir.path(), 100).expect("open");
        let big = vec![b'x'; 500];
        let event = DeadEvent {
            id: Some("9-0"),
            event: "create",
            reason: "too large",
            payload: &big,
        };
        file.append(event, 1).expect("append");
        let lines = read_lines(file.path());
        assert_eq!(lines[0]["payload_omitted"], true);
        assert_eq!(lines[0]["payload_bytes"], 500);
        assert!(lines[0].get("payload").is_none());
    }

    #[test]
    fn long_ids_names_and_reasons_are_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = DeadLetterFile::open(dir.path(), 1 << 20).expect("open");
        let id = "9".repeat(100_000);
        let name = "é".repeat(10_000);
        let reason = "r".repeat(1_000_000);
        let event = DeadEvent {
            id: Some(&id),
            event: &name,
            reason: &reason,
            payload: b"{}",
        };
        file.append(event, 1).expect("append");
        let lines = read_lines(file.path());
        let text = |key: &str| lines[0][key].as_str().expect("a string").to_string();
        assert!(text("id").len() <= MAX_ID_BYTES && text("id").ends_with("[cut]"));
        assert!(text("event").len() <= MAX_EVENT_BYTES);
        assert!(text("reason").len() <= MAX_REASON_BYTES);
        assert_eq!(lines[0]["payload"], "{}");
    }

    #[test]
    fn the_file_rotates_and_never_takes_more_than_twice_its_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let max = 4096;
        let mut file = DeadLetterFile::open(dir.path(), max).expect("open");
        let payload = vec![b'p'; 700];
        for n in 0..100u64 {
            let id = format!("{n}-0");
            let event = DeadEvent {
                id: Some(&id),
                event: "create",
                reason: "invalid",
                payload: &payload,
            };
            file.append(event, n).expect("append");
        }
        let current = std::fs::metadata(dir.path().join(FILE_NAME))
            .expect("current")
            .len();
        let rotated = std::fs::metadata(dir.path().join(ROTATED_FILE_NAME))
            .expect("rotated")
            .len();
        assert!(current <= max && rotated <= max, "{current} {rotated}");
        let last = read_lines(&dir.path().join(FILE_NAME));
        assert_eq!(
            last.last().expect("an entry")["id"],
            "99-0",
            "the newest are kept"
        );
        assert_eq!(
            last.last().expect("an entry")["payload"]
                .as_str()
                .map(str::len),
            Some(700)
        );
    }

    /// While an append waits (here for the file's lock, as it would for a slow disk), the
    /// runtime's only worker goes on running other tasks: the append is off the runtime.
    #[test]
    fn appends_wait_on_a_blocking_thread_not_on_the_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let letters =
            OffRuntimeDeadLetters::new(DeadLetterFile::open(dir.path(), 1 << 20).expect("open"));
        let held = letters.file.lock().expect("not poisoned");
        let (progress_tx, progress_rx) = std::sync::mpsc::channel();
        let appending = letters.clone();
        let runtime_thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let append = tokio::spawn(async move {
                    appending
                        .append(
                            Some("1-0"),
                            "create",
                            "test",
                            bytes::Bytes::from_static(b"{}"),
                            1,
                        )
                        .await
                });
                // The append task runs first; the worker must come back to this one.
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                let _ = progress_tx.send(());
                append.await.expect("append task")
            })
        });
        let progressed = progress_rx.recv_timeout(Duration::from_secs(30));
        drop(held);
        let appended = runtime_thread.join().expect("runtime thread");
        assert!(
            progressed.is_ok(),
            "the runtime's worker was blocked by the append"
        );
        appended.expect("appended once the lock was free");
        assert_eq!(read_lines(letters.path()).len(), 1);
    }

    #[test]
    fn warnings_are_let_through_once_per_period_with_a_count_of_the_others() {
        let mut limiter = WarnLimiter::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limiter.allow(start), Some(0));
        assert_eq!(limiter.allow(start + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(start + Duration::from_secs(9)), None);
        assert_eq!(limiter.allow(start + Duration::from_secs(11)), Some(2));
        assert_eq!(limiter.allow(start + Duration::from_secs(12)), None);
    }
}
