//! Reads an export back the way OpenCTI's stock `stream-importer` does
//! (docs/opencti-protocol.md#importer-listing, docs/opencti-protocol.md#importer-processing), and
//! checks everything the importer depends on: the listing in lexicographic order, each file number
//! `int(key.split("_")[-1].split(".")[0])` equal to the previous one + 1, timestamps in the names
//! strictly increasing, every body UTF-8 (or zstd for `.json.zst`), every non-empty line a JSON
//! object with `type` and `data`, and event ids never going backwards.
//!
//! Used by `verify` and the demo. It reads one object at a time (files are at most
//! `WRITE_MAX_BYTES`).

use serde::Serialize;

use crate::ids::EventId;
use crate::sink::{Sink, SinkError, file_number};

/// A problem found while reading back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The object key.
    pub key: String,
    /// The line number in the file (1-based), when the problem is a line.
    pub line: Option<usize>,
    /// What is wrong.
    pub what: String,
}

/// What reading back found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadbackReport {
    /// Files read, in listing order.
    pub files: usize,
    /// Number of the first file read.
    pub first_number: Option<u64>,
    /// Number of the last file read.
    pub last_number: Option<u64>,
    /// Non-empty lines read.
    pub lines: u64,
    /// Bytes read (as stored).
    pub bytes: u64,
    /// Lines by `type`: create, update, delete, merge, other.
    pub by_type: [u64; 5],
    /// Problems: numbering gaps and order, bad names, bad encodings, bad lines.
    pub problems: Vec<Problem>,
    /// Lines whose id is before the previous line's. The importer reads them fine. They are
    /// expected where the server sent events again: a state reset from the UI (the stream
    /// replays from its start), or a reconnection during a first-run recovery (it resumes at the
    /// boundary object, inclusive, after dependencies with later ids were kept). Anywhere else
    /// they mean events went out of order.
    pub id_rewinds: Vec<Problem>,
    /// Whether reading stopped early where the importer would stop (a numbering problem).
    pub stopped_early: bool,
}

impl ReadbackReport {
    /// True when the importer would read everything without an error and ids never go back.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.id_rewinds.is_empty()
    }
}

/// Most problems kept in a report (the count goes on; the list stops).
const MAX_PROBLEMS: usize = 100;
/// Largest plain content a `.json.zst` file may decode to: a small file that decodes to more
/// (a "zstd bomb") is reported instead of filling memory.
pub const MAX_DECODED_BYTES: u64 = 1 << 30;

/// Decodes a zstd body, refusing one whose content is larger than `max_bytes`.
fn decode_capped(body: &[u8], max_bytes: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let decoder = zstd::stream::read::Decoder::new(body)
        .map_err(|err| format!("not a valid zstd stream: {err}"))?;
    let mut plain = Vec::new();
    decoder
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut plain)
        .map_err(|err| format!("not a valid zstd stream: {err}"))?;
    if plain.len() as u64 > max_bytes {
        return Err(format!(
            "decodes to more than {max_bytes} bytes: not read further"
        ));
    }
    Ok(plain)
}

/// Reads every file under `prefix` of `sink` in listing order, expecting the first to be number
/// `first_expected`. Calls `on_line` with each non-empty line (bytes, without `\n`) in order;
/// `on_file` after each file (key, number) for progress.
pub async fn read_back(
    sink: &dyn Sink,
    prefix: &str,
    first_expected: u64,
    mut on_line: impl FnMut(&[u8]),
    mut on_file: impl FnMut(&str, u64),
) -> Result<ReadbackReport, SinkError> {
    let mut report = ReadbackReport::default();
    let mut expected = first_expected;
    let mut last_ts: Option<u64> = None;
    let mut last_id: Option<EventId> = None;
    let objects = sink.list(prefix).await?;
    for object in objects {
        let key = object.key.as_str();
        let Some(number) = file_number(key) else {
            report.problem(key, None, "the file number cannot be read from the name (the importer stops with a ValueError)");
            report.stopped_early = true;
            break;
        };
        if number != expected {
            report.problem(
                key,
                None,
                format!("File {key} is not in correct order, should be number {expected}."),
            );
            report.stopped_early = true;
            break;
        }
        match name_timestamp(key) {
            Some(ts) if last_ts.is_some_and(|last| ts <= last) => {
                report.problem(key, None, "its timestamp is not after the previous file's");
            }
            Some(ts) => last_ts = Some(ts),
            None => report.problem(key, None, "the name is not stream_<13-digit ms>_<n>.json"),
        }
        let body = sink.get(key).await?;
        report.bytes += body.len() as u64;
        let plain = if key.ends_with(".zst") {
            match decode_capped(body.as_ref(), MAX_DECODED_BYTES) {
                Ok(plain) => plain,
                Err(err) => {
                    report.problem(key, None, err);
                    expected += 1;
                    continue;
                }
            }
        } else {
            body.to_vec()
        };
        if let Err(err) = std::str::from_utf8(&plain) {
            report.problem(
                key,
                None,
                format!("not UTF-8 (the importer cannot decode it): {err}"),
            );
        } else {
            read_lines(&plain, key, &mut report, &mut last_id, &mut on_line);
        }
        report.files += 1;
        report.first_number.get_or_insert(number);
        report.last_number = Some(number);
        on_file(key, number);
        expected += 1;
    }
    Ok(report)
}

fn read_lines(
    plain: &[u8],
    key: &str,
    report: &mut ReadbackReport,
    last_id: &mut Option<EventId>,
    on_line: &mut impl FnMut(&[u8]),
) {
    for (index, line) in plain.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        report.lines += 1;
        on_line(line);
        let value: serde_json::Value = match serde_json::from_slice(line) {
            Ok(value) => value,
            Err(err) => {
                report.problem(key, Some(index + 1), format!("not JSON: {err}"));
                continue;
            }
        };
        let Some(object) = value.as_object() else {
            report.problem(key, Some(index + 1), "not a JSON object");
            continue;
        };
        let kind = object.get("type").and_then(|t| t.as_str());
        report.by_type[match kind {
            Some("create") => 0,
            Some("update") => 1,
            Some("delete") => 2,
            Some("merge") => 3,
            _ => 4,
        }] += 1;
        if kind.is_none() || !object.contains_key("data") {
            report.problem(key, Some(index + 1), "lacks `type` or `data`");
        }
        match object
            .get("id")
            .and_then(|id| id.as_str())
            .and_then(EventId::parse)
        {
            Some(id) => {
                if last_id.is_some_and(|last| id < last) && report.id_rewinds.len() < MAX_PROBLEMS {
                    report.id_rewinds.push(Problem {
                        key: key.to_string(),
                        line: Some(index + 1),
                        what: "its id is before the previous line's".to_string(),
                    });
                }
                *last_id = Some(id);
            }
            None => report.problem(key, Some(index + 1), "lacks a `<ms>-<seq>` id"),
        }
    }
}

/// The timestamp of `…/stream_<ts>_<n>.json`.
fn name_timestamp(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let rest = name.strip_prefix("stream_")?;
    let (ts, _) = rest.split_once('_')?;
    if ts.len() != 13 {
        return None;
    }
    ts.parse().ok()
}

impl ReadbackReport {
    fn problem(&mut self, key: &str, line: Option<usize>, what: impl Into<String>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                key: key.to_string(),
                line,
                what: what.into(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{BodySource, DirSink};

    async fn put(sink: &DirSink, key: &str, body: &str) {
        sink.put(key, &BodySource::from_bytes(body.as_bytes().to_vec()))
            .await
            .expect("put");
    }

    const LINE_1: &str = r#"{"type":"create","data":{"id":"x"},"id":"1-0"}"#;
    const LINE_2: &str = r#"{"type":"update","data":{"id":"x"},"id":"2-0"}"#;

    #[tokio::test]
    async fn a_good_export_reads_back_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = DirSink::new(dir.path());
        put(
            &sink,
            "f/stream_1718012300000_1.json",
            &format!("{LINE_1}\n"),
        )
        .await;
        put(
            &sink,
            "f/stream_1718012300001_2.json",
            &format!("{LINE_2}\n"),
        )
        .await;
        let mut lines = 0;
        let report = read_back(&sink, "f/", 1, |_| lines += 1, |_, _| {})
            .await
            .expect("read");
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!((report.files, report.lines, lines), (2, 2, 2));
        assert_eq!(report.by_type[..2], [1, 1]);
    }

    #[tokio::test]
    async fn a_gap_stops_like_the_importer_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = DirSink::new(dir.path());
        put(
            &sink,
            "f/stream_1718012300000_1.json",
            &format!("{LINE_1}\n"),
        )
        .await;
        put(
            &sink,
            "f/stream_1718012300001_3.json",
            &format!("{LINE_2}\n"),
        )
        .await;
        let report = read_back(&sink, "f/", 1, |_| {}, |_, _| {})
            .await
            .expect("read");
        assert!(report.stopped_early);
        assert_eq!(
            report.problems[0].what,
            "File f/stream_1718012300001_3.json is not in correct order, should be number 2."
        );
    }

    #[tokio::test]
    async fn bad_lines_and_ids_going_back_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = DirSink::new(dir.path());
        let body = format!("{LINE_2}\n{LINE_1}\nnot json\n");
        put(&sink, "f/stream_1718012300000_1.json", &body).await;
        let report = read_back(&sink, "f/", 1, |_| {}, |_, _| {})
            .await
            .expect("read");
        assert!(!report.is_ok());
        assert_eq!(report.id_rewinds.len(), 1);
        assert_eq!(report.id_rewinds[0].line, Some(2));
        assert_eq!(report.problems.len(), 1);
        assert!(report.problems[0].what.starts_with("not JSON"));
    }

    #[test]
    fn a_zstd_body_is_decoded_only_up_to_the_cap() {
        let plain = vec![b'{'; 1 << 20];
        let compressed = zstd::encode_all(plain.as_slice(), 19).expect("compressing");
        assert!(
            compressed.len() < 1 << 12,
            "a small file that decodes to a lot"
        );
        assert_eq!(
            decode_capped(&compressed, 1 << 20)
                .expect("at the cap")
                .len(),
            1 << 20
        );
        let refused = decode_capped(&compressed, (1 << 20) - 1).expect_err("over the cap");
        assert!(refused.contains("more than"), "{refused}");
        assert!(decode_capped(b"not zstd", 1 << 20).is_err());
    }
}
