//! What `status` and `/status` report: the stream position, the backlog, the files waiting, the
//! next file number, the last upload and the disk budget — read from the WAL, so it works with
//! the daemon stopped — plus, from a running daemon's `/status`, its [`LiveStatus`] (connection,
//! failures, OpenCTI registration). Never contains a secret.

use serde::{Deserialize, Serialize};
use wal::{RecoverUntil, Wal};

use crate::ids::{EventId, iso};
use crate::pipeline::adopt::Adopted;
use crate::quarantine::{self, QuarantineRecord};
use crate::stream::missing;

/// A snapshot of the exporter's durable state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The WAL directory.
    pub wal_dir: String,
    /// The stream position the next connection resumes from (`Last-Event-ID`).
    pub cursor: Option<String>,
    /// The time of the cursor's milliseconds part, ISO-8601.
    pub cursor_time: Option<String>,
    /// The recovery bound sent as `?recover=`: a date, `"disabled"`, or `null` before the first
    /// start.
    pub recover_until: Option<String>,
    /// Events durable in the WAL and not sealed into a file yet.
    pub backlog_events: u64,
    /// Their raw NDJSON size.
    pub backlog_bytes: u64,
    /// Sealed files waiting for upload.
    pub files_waiting: usize,
    /// Their raw NDJSON size.
    pub files_waiting_bytes: u64,
    /// Events in those files.
    pub files_waiting_events: u64,
    /// Number of the oldest file waiting (the one being uploaded).
    pub oldest_file_waiting: Option<u64>,
    /// The number the next sealed file gets.
    pub next_file_number: u64,
    /// The last file uploaded.
    pub last_upload: Option<LastUpload>,
    /// Disk used by the WAL and files, bytes.
    pub disk_used_bytes: u64,
    /// The disk budget (`WAL_MAX_BYTES`).
    pub disk_max_bytes: u64,
    /// Free space on the WAL's filesystem, when known.
    pub fs_available_bytes: Option<u64>,
    /// Waiting files found missing or damaged (uploads stop at the oldest of them; see
    /// `quarantine`).
    #[serde(default)]
    pub damaged_files: Vec<DamagedFile>,
    /// Files quarantined so far, with the stream range each held.
    #[serde(default)]
    pub quarantined_files: Vec<QuarantineRecord>,
    /// What this WAL adopted at its first start from the platform's state and the destination
    /// (absent when it started from the configured position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<Adopted>,
    /// Attached files exported without their content, as kept in the missing-files record.
    #[serde(default)]
    pub missing_files: MissingFilesStatus,
    /// What only a running daemon knows (absent when read from a stopped daemon's WAL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveStatus>,
}

/// The missing-files record next to the WAL (see [`crate::stream::missing`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MissingFilesStatus {
    /// Entries in the record: files exported without their content, to be fetched again.
    pub records: u64,
    /// Where the record is.
    pub path: String,
}

/// A waiting file that cannot be uploaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DamagedFile {
    /// Its number.
    pub file_number: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// The running daemon's view: connection, failures in progress, counters since start-up.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LiveStatus {
    /// The OpenCTI event stream is open.
    pub stream_connected: bool,
    /// Connections answered with an event stream since start-up.
    pub stream_connections: u64,
    /// Connections that ended or failed since start-up.
    pub stream_reconnects: u64,
    /// Seconds since the last event carrying an id arrived.
    pub last_event_age_seconds: Option<f64>,
    /// Now minus the time of the durable cursor, seconds.
    pub stream_lag_seconds: Option<f64>,
    /// Reading is paused because the disk budget is full.
    pub disk_budget_full: bool,
    /// The kind of upload failure in progress (`auth`, `network`, ...), if uploads fail.
    pub uploads_failing: Option<String>,
    /// A damaged local file blocking uploads, with the reason.
    pub damaged_segment: Option<String>,
    /// Files uploaded since start-up.
    pub files_uploaded: u64,
    /// Events kept in the dead-letter file since start-up.
    pub dead_letters: u64,
    /// The connector is registered on OpenCTI.
    pub opencti_registered: bool,
    /// The OpenCTI API failure in progress, if any.
    pub opencti_api_failing: Option<String>,
    /// When the last ping succeeded, ISO-8601.
    pub last_ping_at: Option<String>,
    /// State resets from the OpenCTI UI honoured since start-up.
    pub state_resets: u64,
}

/// The last successful upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastUpload {
    /// Its file number.
    pub file_number: u64,
    /// The timestamp in its name.
    pub ts_ms: u64,
    /// When it completed, ISO-8601.
    pub at: String,
    /// When it completed, epoch ms.
    pub at_ms: u64,
}

impl StatusReport {
    /// Reads the report from an open WAL.
    pub fn from_wal(wal: &Wal) -> Self {
        let state = wal.state();
        let backlog = wal.backlog();
        let segments = wal.segments();
        let usage = wal.disk_usage();
        Self {
            wal_dir: wal.dir().display().to_string(),
            cursor_time: state
                .cursor
                .as_deref()
                .and_then(EventId::parse)
                .map(|id| iso(id.ms)),
            cursor: state.cursor,
            recover_until: match state.recover_until {
                RecoverUntil::Unset => None,
                RecoverUntil::Date(date) => Some(date),
                RecoverUntil::Disabled => Some("disabled".to_string()),
            },
            backlog_events: backlog.records,
            backlog_bytes: backlog.raw_bytes,
            files_waiting: segments.len(),
            files_waiting_bytes: segments.iter().map(|s| s.raw_bytes).sum(),
            files_waiting_events: segments.iter().map(|s| s.records).sum(),
            oldest_file_waiting: segments.first().map(|s| s.number),
            next_file_number: state.next_file_number,
            last_upload: state.last_upload.map(|upload| LastUpload {
                file_number: upload.number,
                ts_ms: upload.ts_ms,
                at: iso(upload.uploaded_at_ms),
                at_ms: upload.uploaded_at_ms,
            }),
            disk_used_bytes: usage.used(),
            disk_max_bytes: usage.max_bytes,
            fs_available_bytes: usage.fs_available_bytes,
            damaged_files: wal
                .damaged_segments()
                .into_iter()
                .map(|(file_number, problem)| DamagedFile {
                    file_number,
                    problem: problem.to_string(),
                })
                .collect(),
            quarantined_files: quarantine::records(wal.dir()),
            adopted: crate::pipeline::adopt::adopted(wal),
            missing_files: MissingFilesStatus {
                records: missing::count(wal.dir()),
                path: wal.dir().join(missing::FILE_NAME).display().to_string(),
            },
            live: None,
        }
    }

    /// Human-readable lines.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, name: &str, value: String| {
            out.push_str(&format!("{name:<22}{value}\n"));
        };
        line(&mut out, "WAL directory", self.wal_dir.clone());
        line(
            &mut out,
            "stream position",
            match (&self.cursor, &self.cursor_time) {
                (Some(cursor), Some(time)) => format!("{cursor} ({time})"),
                (Some(cursor), None) => cursor.clone(),
                _ => "not started".to_string(),
            },
        );
        line(
            &mut out,
            "recover until",
            self.recover_until
                .clone()
                .unwrap_or_else(|| "-".to_string()),
        );
        line(
            &mut out,
            "backlog (unsealed)",
            format!(
                "{} events, {}",
                self.backlog_events,
                human_bytes(self.backlog_bytes)
            ),
        );
        line(
            &mut out,
            "files waiting",
            match self.oldest_file_waiting {
                Some(oldest) => format!(
                    "{} ({} events, {}), oldest is file {oldest}",
                    self.files_waiting,
                    self.files_waiting_events,
                    human_bytes(self.files_waiting_bytes)
                ),
                None => "none".to_string(),
            },
        );
        line(
            &mut out,
            "next file number",
            self.next_file_number.to_string(),
        );
        line(
            &mut out,
            "last upload",
            match &self.last_upload {
                Some(upload) => format!("file {} at {}", upload.file_number, upload.at),
                None => "none yet".to_string(),
            },
        );
        line(
            &mut out,
            "disk",
            format!(
                "{} of {} used{}",
                human_bytes(self.disk_used_bytes),
                human_bytes(self.disk_max_bytes),
                self.fs_available_bytes
                    .map(|free| format!(", {} free on the filesystem", human_bytes(free)))
                    .unwrap_or_default()
            ),
        );
        if let Some(adopted) = &self.adopted {
            line(
                &mut out,
                "adopted at start",
                format!(
                    "from {} at {}: resumed after {}, first file {}{}",
                    adopted.from.join(" and "),
                    iso(adopted.at_ms),
                    adopted
                        .start_from
                        .as_deref()
                        .unwrap_or("(no position found)"),
                    adopted.next_file_number,
                    if adopted.destination_unchecked {
                        " (destination checked before the first upload)"
                    } else {
                        ""
                    }
                ),
            );
        }
        for damaged in &self.damaged_files {
            line(
                &mut out,
                "DAMAGED file",
                format!(
                    "{}: {}; uploads stop before it (see `quarantine`)",
                    damaged.file_number, damaged.problem
                ),
            );
        }
        for record in &self.quarantined_files {
            line(
                &mut out,
                "quarantined file",
                if record.already_uploaded {
                    format!("{}: already uploaded, nothing lost", record.file_number)
                } else {
                    format!(
                        "{}: {} events lost, stream range after {} up to {}",
                        record.file_number,
                        record.events,
                        record.first_cursor.as_deref().unwrap_or("the beginning"),
                        record.last_cursor.as_deref().unwrap_or("-")
                    )
                },
            );
        }
        if self.missing_files.records > 0 {
            line(
                &mut out,
                "MISSING attachments",
                format!(
                    "{} files exported without their content, listed in {} (see the README to fetch them again)",
                    self.missing_files.records, self.missing_files.path
                ),
            );
        }
        if let Some(live) = &self.live {
            live.write_text(&mut out, line);
        }
        out
    }
}

impl LiveStatus {
    fn write_text(&self, out: &mut String, line: impl Fn(&mut String, &str, String)) {
        let seconds = |value: Option<f64>| value.map_or("-".to_string(), |s| format!("{s:.1} s"));
        line(
            out,
            "stream",
            format!(
                "{} ({} connections, {} reconnects; last event {} ago; lag {})",
                if self.stream_connected {
                    "connected"
                } else {
                    "not connected"
                },
                self.stream_connections,
                self.stream_reconnects,
                seconds(self.last_event_age_seconds),
                seconds(self.stream_lag_seconds)
            ),
        );
        if self.disk_budget_full {
            line(
                out,
                "disk budget",
                "full: reading paused until uploads free space".to_string(),
            );
        }
        line(
            out,
            "uploads",
            match (&self.damaged_segment, &self.uploads_failing) {
                (Some(damaged), _) => format!("blocked by a damaged file: {damaged}"),
                (None, Some(kind)) => format!("failing ({kind}); retrying"),
                (None, None) => format!("ok ({} files since start-up)", self.files_uploaded),
            },
        );
        if self.dead_letters > 0 {
            line(
                out,
                "dead letters",
                format!("{} since start-up", self.dead_letters),
            );
        }
        line(
            out,
            "OpenCTI",
            match (&self.opencti_api_failing, self.opencti_registered) {
                (Some(failing), _) => format!("API failing: {failing}"),
                (None, true) => format!(
                    "registered; last ping {}",
                    self.last_ping_at.as_deref().unwrap_or("not yet")
                ),
                (None, false) => "registering".to_string(),
            },
        );
        if self.state_resets > 0 {
            line(
                out,
                "state resets",
                format!("{} since start-up", self.state_resets),
            );
        }
    }
}

/// `1.5 MiB`-style sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
    }
}
