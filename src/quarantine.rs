//! The quarantine records: what `quarantine FILE_NUMBER` writes for each damaged file it sets
//! aside (`quarantine/file-N.json` in the WAL directory, N in 20 digits) and what `status` reads
//! back. The record format is read by operators and their tools: its fields do not change.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The directory, inside the WAL directory, holding quarantined files and their records.
pub const QUARANTINE_DIR: &str = "quarantine";

/// What was lost when a damaged file was quarantined: written to `quarantine/file-N.json` and
/// shown by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    /// The file number.
    pub file_number: u64,
    /// The object key file N has at the destination (the empty placeholder, or the earlier
    /// complete upload when it was already there).
    pub key: String,
    /// Events the file held.
    pub events: u64,
    /// Their raw NDJSON size.
    pub raw_bytes: u64,
    /// The stream position before the file's first event: re-export strictly after it.
    pub first_cursor: Option<String>,
    /// The stream position after the file's last event: the re-export can stop there.
    pub last_cursor: Option<String>,
    /// What was wrong with the file.
    pub problem: String,
    /// True when the destination already held file N (uploaded before the damage): no event
    /// was lost.
    pub already_uploaded: bool,
    /// When it was quarantined, ISO-8601.
    pub quarantined_at: String,
}

/// Where the record of file `number` is kept.
pub fn record_path(wal_dir: &Path, number: u64) -> PathBuf {
    wal_dir
        .join(QUARANTINE_DIR)
        .join(format!("file-{number:020}.json"))
}

/// Every quarantine record in `wal_dir`, oldest file first. Unreadable records are skipped with
/// a warning (the files they describe were handled already).
pub fn records(wal_dir: &Path) -> Vec<QuarantineRecord> {
    let Ok(entries) = std::fs::read_dir(wal_dir.join(QUARANTINE_DIR)) else {
        return Vec::new();
    };
    let mut records: Vec<QuarantineRecord> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("file-") && name.ends_with(".json")
        })
        .filter_map(|e| {
            let path = e.path();
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
            {
                Ok(record) => Some(record),
                Err(why) => {
                    tracing::warn!(path = %path.display(), error = %why, "unreadable quarantine record");
                    None
                }
            }
        })
        .collect();
    records.sort_by_key(|r: &QuarantineRecord| r.file_number);
    records
}
