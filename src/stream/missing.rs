//! The missing-files record: one JSON line per attached file that an exported event carries
//! without its content (download failed after its retries, refused, over a size or count cap),
//! kept next to the WAL as `missing-files.ndjson` so that nothing is lost silently: the event is
//! in the export, and this says which of its files must be fetched again (the README gives the
//! procedure). It is not the dead-letter file: dead letters are events that were not exported.
//!
//! Each line: `{"at":"<ISO-8601>","event_id":"<SSE id>","uri":"<file uri>","reason":"<why>"}`.
//! Fields are cut to a bounded length (a hostile uri cannot make a line unbounded). Lines are
//! appended and fsynced before the event's line is handed to the pipeline, so a missing file is
//! recorded before the cursor can move past its event. The file is created with mode 0600 and its
//! directory fsynced when it is opened ([`crate::record_file`]).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// File name of the record inside the WAL directory.
pub const FILE_NAME: &str = "missing-files.ndjson";

/// Longest `event_id` kept, in bytes.
const MAX_ID_BYTES: usize = 128;
/// Longest `uri` kept, in bytes.
const MAX_URI_BYTES: usize = 2048;
/// Longest `reason` kept, in bytes.
const MAX_REASON_BYTES: usize = 512;

/// One file exported without its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingFile {
    /// The SSE id of the event that references it.
    pub event_id: String,
    /// The file's `uri`, as the event gives it.
    pub uri: String,
    /// Why it has no `data`.
    pub reason: String,
}

#[derive(Serialize)]
struct Line<'a> {
    at: String,
    event_id: &'a str,
    uri: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

/// Appends to the record, durably. Writes are serialized; call [`MissingFilesRecord::append`]
/// off the async workers (it fsyncs).
#[derive(Debug)]
pub struct MissingFilesRecord {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl MissingFilesRecord {
    /// The record at `path` (created on the first append).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            file: Mutex::new(None),
        }
    }

    /// Where the record is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line per entry and fsyncs the file (and its directory when it was created).
    /// On error nothing may be assumed written.
    pub fn append(&self, entries: &[MissingFile], now_ms: u64) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let at = crate::ids::iso(now_ms);
        let mut text = Vec::new();
        for entry in entries {
            let (event_id, cut_id) = crate::record_file::cut(&entry.event_id, MAX_ID_BYTES);
            let (uri, cut_uri) = crate::record_file::cut(&entry.uri, MAX_URI_BYTES);
            let (reason, cut_reason) = crate::record_file::cut(&entry.reason, MAX_REASON_BYTES);
            let line = Line {
                at: at.clone(),
                event_id,
                uri,
                reason,
                truncated: cut_id || cut_uri || cut_reason,
            };
            serde_json::to_writer(&mut text, &line).map_err(io::Error::other)?;
            text.push(b'\n');
        }
        let mut guard = self
            .file
            .lock()
            .map_err(|_| io::Error::other("the missing-files record lock is poisoned"))?;
        if guard.is_none() {
            *guard = Some(crate::record_file::open_append(&self.path)?);
        }
        let file = guard
            .as_mut()
            .ok_or_else(|| io::Error::other("the missing-files record is not open"))?;
        file.write_all(&text)?;
        file.sync_data()
    }
}

/// The number of entries in the record of the WAL directory `dir` (0 when there is none).
pub fn count(dir: &Path) -> u64 {
    let Ok(file) = File::open(dir.join(FILE_NAME)) else {
        return 0;
    };
    let mut reader = BufReader::new(file);
    let mut lines = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return lines,
            Ok(_) if line.ends_with(b"\n") => lines += 1,
            Ok(_) => return lines,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_appended_as_bounded_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = MissingFilesRecord::new(dir.path().join(FILE_NAME));
        assert_eq!(count(dir.path()), 0);
        let long_uri = format!("/storage/get/{}", "é".repeat(5000));
        let entries = [
            MissingFile {
                event_id: "1-0".into(),
                uri: "/storage/get/import/a.pdf".into(),
                reason: "OpenCTI answered HTTP 503".into(),
            },
            MissingFile {
                event_id: "2-0".into(),
                uri: long_uri,
                reason: "x".into(),
            },
        ];
        record.append(&entries, 0).expect("append");
        record.append(&entries[..1], 0).expect("append");
        assert_eq!(count(dir.path()), 3);
        let text = std::fs::read_to_string(record.path()).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| {
                assert!(line.len() < 4096, "bounded line");
                serde_json::from_str(line).expect("json")
            })
            .collect();
        assert_eq!(lines[0]["event_id"], "1-0");
        assert_eq!(lines[0]["uri"], "/storage/get/import/a.pdf");
        assert_eq!(lines[0]["at"], "1970-01-01T00:00:00.000Z");
        assert!(lines[0].get("truncated").is_none());
        assert_eq!(lines[1]["truncated"], true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(record.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
