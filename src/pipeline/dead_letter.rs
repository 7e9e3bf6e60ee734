//! The dead-letter file: events that cannot be exported (DESIGN.md invariant 7, "bad input is
//! contained"), kept next to the WAL so an operator can inspect or replay them.
//!
//! Each entry is one JSON line: when it was written, the SSE id and event name, why it was
//! rejected, and the payload (as text when it is UTF-8, as base64 otherwise). An entry is
//! appended and fsynced before the cursor can move past the event, so a dead-lettered event is
//! never silently lost. The file is created with mode 0600. Past `max_bytes` the payload is
//! left out (the id and the reason are still recorded), so a hostile stream cannot fill the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Serialize;

/// File name of the dead-letter file inside the WAL directory.
pub const FILE_NAME: &str = "dead-letter.ndjson";

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
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
}

impl DeadLetterFile {
    /// Opens (creating with mode 0600) `dir/dead-letter.ndjson`. Payloads stop being recorded
    /// once the file holds `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        let path = dir.join(FILE_NAME);
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&path)?;
        // The file's name must survive a power loss like the entries synced into it.
        wal::sync_parent(&path)?;
        let written = file.metadata()?.len();
        Ok(Self {
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

    /// Appends `event` and fsyncs the file. On error nothing may be assumed written.
    pub fn append(&mut self, event: DeadEvent<'_>, now_ms: u64) -> io::Result<()> {
        let keep_payload =
            self.written.saturating_add(event.payload.len() as u64) <= self.max_bytes;
        let text = std::str::from_utf8(event.payload).ok();
        let entry = Entry {
            at_ms: now_ms,
            id: event.id,
            event: event.event,
            reason: event.reason,
            payload: text.filter(|_| keep_payload),
            payload_base64: (keep_payload && text.is_none())
                .then(|| base64::engine::general_purpose::STANDARD.encode(event.payload)),
            payload_omitted: !keep_payload,
            payload_bytes: event.payload.len(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.written += line.len() as u64;
        Ok(())
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
}
