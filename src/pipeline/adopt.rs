//! A new WAL starts from what was already delivered.
//!
//! The exporter replaces the stock Python connector in place (same `CONNECTOR_ID`, a new volume),
//! and a volume can be lost. Either way a new WAL must not start the stream again at `0-0` nor
//! number its first file 1: the importer on the far side expects the file after the last one it
//! read, and stops on any other (`WrongFileOrder`). So before the first connection of a new WAL,
//! [`adopt`] gathers the evidence of what was delivered:
//!
//! - **the platform**: the connector state stored for this `CONNECTOR_ID` (the stock keys, read
//!   by [`StockState::parse`]): `last_written_msg_id` (or `start_from` when absent),
//!   `recover_until` and `file_count`. Written by the stock connector or by this exporter, whose
//!   state names uploaded files only and is pinged within seconds of each upload;
//! - **the destination**: the highest file number under the folder and the last position inside
//!   that file, taken by the cursor's own rule ([`CursorTracker`]: never a dependency's id, never
//!   an id that is not a stream id). This covers files written after the platform's last ping
//!   (the stock connector pings every 40 s).
//!
//! It resumes strictly after the later of the two positions, numbers from the highest number
//! seen + 1, keeps `recover_until`, and makes all of it durable in one WAL commit before the
//! stream connects. The evidence wins over `CONNECTOR_LIVE_STREAM_START_TIMESTAMP`, which is for
//! a first start with nothing delivered.
//!
//! When the platform cannot be asked, adoption waits for it (the stream comes from it anyway).
//! When the destination cannot be listed (S3 down at the first start), adoption goes on with the
//! platform's evidence and records that the destination is unchecked; the uploader then checks it
//! before the first upload ([`check_before_first_upload`]) and holds uploads while the destination
//! holds a number at or above the first one this WAL would write. `WAL_ADOPT_DELIVERED=false`
//! turns all of this off (a new numbering from 1; the importer must be reset to match).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use wal::{InitialState, RecoverUntil, Wal};

use crate::backoff::Backoff;
use crate::backoff::sleep_or_cancel;
use crate::ids::{EventId, parse_position};
use crate::opencti_api::state::StockState;
use crate::opencti_api::{self, ApiSettings, GraphqlClient};
use crate::pipeline::FirstStart;
use crate::pipeline::cursor::{CursorTracker, Observed};
use crate::sink::{Sink, SinkError, SinkErrorKind, file_number};

/// WAL extra: what was adopted, as JSON ([`Adopted`]); shown by `status`.
pub const ADOPTED_EXTRA: &str = "adopted";
/// WAL extra: present while the destination could not be checked at adoption.
pub const DESTINATION_UNCHECKED_EXTRA: &str = "destination_unchecked";

/// Largest destination file read back to find the last delivered position.
const MAX_FILE_READ_BYTES: u64 = 256 << 20;
/// How many files, from the highest down, are read to find a position (an empty file, as
/// `quarantine` uploads, has none).
const MAX_FILES_READ: usize = 8;

/// The highest file found in the destination and the last position delivered in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationEvidence {
    /// The highest file number under the folder, with its key and seal timestamp.
    pub highest: Option<DeliveredFile>,
    /// The last position in the highest file that has one, by the cursor's rule.
    pub last_cursor: Option<String>,
}

/// One exported file found in the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredFile {
    /// Its key.
    pub key: String,
    /// Its number, as the importer reads it.
    pub number: u64,
    /// The timestamp in its name (`stream_{ts}_{N}`).
    pub ts_ms: u64,
}

/// What adoption decided, kept in the WAL (extra [`ADOPTED_EXTRA`]) and shown by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopted {
    /// Where the evidence came from: `platform`, `destination`, or both.
    pub from: Vec<String>,
    /// The position the stream resumes after (`None`: no position was found, only numbering;
    /// the stream starts from the first-start position).
    pub start_from: Option<String>,
    /// The number the first file of this WAL gets.
    pub next_file_number: u64,
    /// The platform's `file_count`, if it had a state.
    pub platform_file_count: Option<u64>,
    /// The platform's position, if it had one.
    pub platform_position: Option<String>,
    /// The highest file number found in the destination.
    pub destination_highest_file: Option<u64>,
    /// The last position found in the destination.
    pub destination_position: Option<String>,
    /// The destination could not be listed: it is checked before the first upload.
    pub destination_unchecked: bool,
    /// When it was adopted, epoch milliseconds.
    pub at_ms: u64,
}

/// The WAL's initial state and the record of why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptionPlan {
    /// What is recorded.
    pub adopted: Adopted,
    /// The recovery bound.
    pub recover_until: RecoverUntil,
    /// The seal timestamp the first file must exceed (keys sort in file order).
    pub min_ts_ms: u64,
}

/// Combines the evidence. `None` when there is none (nothing delivered under this connector id
/// and nothing in the destination): a plain first start.
///
/// `destination` is `None` when the destination could not be listed.
pub fn plan(
    platform: Option<&StockState>,
    destination: Option<&DestinationEvidence>,
    first: &FirstStart,
    now_ms: u64,
) -> Option<AdoptionPlan> {
    let platform_position = platform.and_then(|state| valid_position(state.cursor.as_deref()));
    let destination_position =
        destination.and_then(|found| valid_position(found.last_cursor.as_deref()));
    let highest = destination.and_then(|found| found.highest.as_ref());
    let platform_count = platform.map(|state| state.file_count).filter(|&n| n > 0);
    if platform_position.is_none()
        && destination_position.is_none()
        && platform_count.is_none()
        && highest.is_none()
    {
        return None;
    }
    let last_number = platform_count
        .unwrap_or(0)
        .max(highest.map_or(0, |file| file.number));
    let start_from = match (&platform_position, &destination_position) {
        (Some(p), Some(d)) => Some(if d.1 > p.1 { d.0.clone() } else { p.0.clone() }),
        (Some(p), None) => Some(p.0.clone()),
        (None, Some(d)) => Some(d.0.clone()),
        (None, None) => None,
    };
    // The platform's recovery bound is kept (a run interrupted during recovery goes on with it);
    // a position from the destination alone resumes like pycti's later runs, without recovery;
    // with no position at all, the first start's own bound applies.
    let recover_until = match (platform, &start_from) {
        (Some(state), Some(_)) if platform_position.is_some() => state.recover_until.clone(),
        (_, Some(_)) => RecoverUntil::Disabled,
        (_, None) => RecoverUntil::Date(first.position(now_ms).1),
    };
    let mut from = Vec::new();
    if platform_position.is_some() || platform_count.is_some() {
        from.push("platform".to_string());
    }
    if highest.is_some() {
        from.push("destination".to_string());
    }
    Some(AdoptionPlan {
        adopted: Adopted {
            from,
            start_from,
            next_file_number: last_number.saturating_add(1),
            platform_file_count: platform.map(|state| state.file_count),
            platform_position: platform_position.map(|p| p.0),
            destination_highest_file: highest.map(|file| file.number),
            destination_position: destination_position.map(|d| d.0),
            destination_unchecked: destination.is_none(),
            at_ms: now_ms,
        },
        recover_until,
        min_ts_ms: highest.map_or(0, |file| file.ts_ms),
    })
}

fn valid_position(text: Option<&str>) -> Option<(String, EventId)> {
    let text = text?;
    parse_position(text).map(|id| (text.to_string(), id))
}

/// Makes `plan` the WAL's initial state in one commit.
pub fn apply(wal: &Wal, plan: &AdoptionPlan) -> Result<(), wal::WalError> {
    let state = wal.state();
    let mut extras = state.extras;
    if let Ok(record) = serde_json::to_vec(&plan.adopted) {
        extras.insert(ADOPTED_EXTRA.to_string(), record);
    }
    if plan.adopted.destination_unchecked {
        extras.insert(DESTINATION_UNCHECKED_EXTRA.to_string(), Vec::new());
    }
    wal.initialize(InitialState {
        cursor: plan.adopted.start_from.clone(),
        recover_until: plan.recover_until.clone(),
        next_file_number: plan.adopted.next_file_number,
        last_sealed_ts_ms: state.last_sealed_ts_ms.max(plan.min_ts_ms),
        extras,
    })
}

/// What was adopted, read from the WAL (`None` when this WAL did not adopt anything).
pub fn adopted(wal: &Wal) -> Option<Adopted> {
    let record = wal.state().extras.get(ADOPTED_EXTRA).cloned()?;
    serde_json::from_slice(&record).ok()
}

/// The key prefix of files under `folder` (as the uploader names them).
fn folder_prefix(folder: &str) -> String {
    let folder = folder.trim_matches('/');
    if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    }
}

/// An exported file directly under the folder, named `stream_{ts}_{N}.json[.zst]`.
fn delivered_file(prefix: &str, key: &str) -> Option<DeliveredFile> {
    let name = key.strip_prefix(prefix)?;
    let rest = name.strip_prefix("stream_")?;
    if rest.contains('/') || !(rest.ends_with(".json") || rest.ends_with(".json.zst")) {
        return None;
    }
    let (ts, _) = rest.split_once('_')?;
    let ts_ms = ts
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| ts.parse().ok())??;
    Some(DeliveredFile {
        key: key.to_string(),
        number: file_number(key)?,
        ts_ms,
    })
}

/// The exported files under `folder`, highest number first. A missing bucket or directory is an
/// empty destination.
async fn delivered_files(
    sink: &dyn Sink,
    folder: &str,
) -> Result<Vec<(DeliveredFile, u64)>, SinkError> {
    let prefix = folder_prefix(folder);
    let listed = match sink.list(&prefix).await {
        Ok(listed) => listed,
        Err(error)
            if matches!(
                error.kind,
                SinkErrorKind::NoSuchBucket | SinkErrorKind::NotFound
            ) =>
        {
            Vec::new()
        }
        Err(error) => return Err(error),
    };
    let mut files: Vec<(DeliveredFile, u64)> = listed
        .into_iter()
        .filter_map(|object| delivered_file(&prefix, &object.key).map(|file| (file, object.size)))
        .collect();
    files.sort_by_key(|(file, _)| std::cmp::Reverse(file.number));
    Ok(files)
}

/// The highest file number under `folder`, without reading any file.
pub async fn highest_file_number(sink: &dyn Sink, folder: &str) -> Result<Option<u64>, SinkError> {
    Ok(delivered_files(sink, folder)
        .await?
        .first()
        .map(|(file, _)| file.number))
}

/// Lists the destination and reads back, from the highest file down, the last delivered
/// position.
pub async fn scan_destination(
    sink: &dyn Sink,
    folder: &str,
) -> Result<DestinationEvidence, SinkError> {
    let files = delivered_files(sink, folder).await?;
    let mut evidence = DestinationEvidence {
        highest: files.first().map(|(file, _)| file.clone()),
        last_cursor: None,
    };
    for (file, size) in files.iter().take(MAX_FILES_READ) {
        if *size > MAX_FILE_READ_BYTES {
            tracing::warn!(
                key = %file.key,
                size,
                "a destination file is too large to read back; its position is not used"
            );
            continue;
        }
        let bytes = sink.get(&file.key).await?;
        let lines = if file.key.ends_with(".zst") {
            match decompress_capped(&bytes) {
                Some(plain) => plain,
                None => continue,
            }
        } else {
            bytes
        };
        if let Some(cursor) = last_cursor(&lines) {
            evidence.last_cursor = Some(cursor);
            break;
        }
    }
    Ok(evidence)
}

fn decompress_capped(bytes: &[u8]) -> Option<Bytes> {
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::new(bytes).ok()?;
    let mut plain = Vec::new();
    decoder
        .take(MAX_FILE_READ_BYTES + 1)
        .read_to_end(&mut plain)
        .ok()?;
    (plain.len() as u64 <= MAX_FILE_READ_BYTES).then(|| Bytes::from(plain))
}

/// The fields of an exported line that decide the cursor.
#[derive(Deserialize)]
struct LinePosition {
    id: Option<String>,
    origin: Option<LineOrigin>,
}

#[derive(Deserialize)]
struct LineOrigin {
    referer: Option<String>,
}

/// The last position of an NDJSON file by the cursor's rule: the id of the last exported event
/// that may hold the cursor (a dependency's id only once its trigger follows), never an id that
/// is not a stream id. `None` when no line gives one.
pub fn last_cursor(ndjson: &[u8]) -> Option<String> {
    let mut tracker = CursorTracker::new();
    let mut last = None;
    for line in ndjson.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(parsed) = serde_json::from_slice::<LinePosition>(line) else {
            continue;
        };
        let Some(id) = parsed.id.filter(|id| EventId::parse(id).is_some()) else {
            tracker.observe(Observed::Other);
            continue;
        };
        let dependency = parsed
            .origin
            .and_then(|origin| origin.referer)
            .is_some_and(|referer| referer == "init-dependencies");
        if let Some(position) = tracker.observe(Observed::Event {
            id: &id,
            holds_cursor: !dependency,
        }) {
            last = Some(position);
        }
    }
    last
}

/// Longest wait between two attempts to read the platform's state.
const PLATFORM_RETRY_MAX: Duration = Duration::from_secs(30);

/// Reads the connector state the platform holds for this connector, waiting for the platform
/// (retrying with backoff, logged once per kind of failure). `Ok(None)` when cancelled.
async fn platform_state(
    client: &GraphqlClient,
    settings: &ApiSettings,
    cancel: &CancellationToken,
) -> Option<Option<String>> {
    let mut backoff = Backoff::new(Duration::from_secs(1), PLATFORM_RETRY_MAX);
    let mut last_kind: Option<String> = None;
    loop {
        match opencti_api::register(client, settings).await {
            Ok(state) => return Some(state),
            Err(error) => {
                let delay = backoff.next_delay();
                let kind = error.kind();
                if last_kind.as_deref() != Some(kind.as_str()) {
                    tracing::warn!(
                        api = %client.endpoint(),
                        %error,
                        retry_in = ?delay,
                        "a new WAL waits for the OpenCTI API to read what this connector already \
                         delivered before the first start (WAL_ADOPT_DELIVERED=false skips this)"
                    );
                    last_kind = Some(kind);
                }
                if sleep_or_cancel(delay, cancel).await {
                    return None;
                }
            }
        }
    }
}

/// What [`adopt`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdoptOutcome {
    /// The WAL starts from the evidence.
    Adopted(Adopted),
    /// No evidence: a plain first start.
    NothingDelivered,
    /// Cancelled while waiting for the platform.
    Cancelled,
}

/// Seeds a new WAL from the evidence of what was delivered (see the module documentation).
/// Call only on a WAL with no position yet, before the stream connects.
pub async fn adopt(
    wal: &Wal,
    client: &GraphqlClient,
    settings: &ApiSettings,
    sink: &dyn Sink,
    folder: &str,
    first: &FirstStart,
    cancel: &CancellationToken,
) -> anyhow::Result<AdoptOutcome> {
    use anyhow::Context;
    let Some(platform_text) = platform_state(client, settings, cancel).await else {
        return Ok(AdoptOutcome::Cancelled);
    };
    let platform = match platform_text.as_deref().map(StockState::parse) {
        None => None,
        Some(Ok(state)) => state,
        Some(Err(error)) => {
            tracing::warn!(
                %error,
                "the platform's state for this connector cannot be read; only the destination \
                 is used as evidence of what was delivered"
            );
            None
        }
    };
    let destination = match scan_destination(sink, folder).await {
        Ok(found) => Some(found),
        Err(error) => {
            tracing::warn!(
                destination = %sink.describe(),
                %error,
                "the destination cannot be listed: starting from the platform's evidence; it is \
                 checked before the first upload"
            );
            None
        }
    };
    let now = crate::ids::now_ms();
    let Some(plan) = plan(platform.as_ref(), destination.as_ref(), first, now) else {
        return Ok(AdoptOutcome::NothingDelivered);
    };
    apply(wal, &plan).context("recording the adopted position in the WAL")?;
    let adopted = plan.adopted;
    tracing::warn!(
        from = %adopted.from.join("+"),
        start_from = adopted.start_from.as_deref().unwrap_or("-"),
        next_file_number = adopted.next_file_number,
        platform_position = adopted.platform_position.as_deref().unwrap_or("-"),
        platform_file_count = adopted.platform_file_count.unwrap_or(0),
        destination_position = adopted.destination_position.as_deref().unwrap_or("-"),
        destination_highest_file = adopted.destination_highest_file.unwrap_or(0),
        destination_unchecked = adopted.destination_unchecked,
        "new WAL: adopted what was already delivered for this connector; the stream resumes \
         after start_from and the first file is next_file_number (this evidence wins over \
         CONNECTOR_LIVE_STREAM_START_TIMESTAMP; WAL_ADOPT_DELIVERED=false turns adoption off)"
    );
    Ok(AdoptOutcome::Adopted(adopted))
}

/// Why uploads are held: the destination holds `highest`, at or above this WAL's first file.
pub fn held_reason(highest: u64, first_ours: u64) -> String {
    format!(
        "the destination already holds file {highest}, at or above this WAL's first file \
         {first_ours}: uploading would reuse numbers the importer has seen. Stop the exporter, \
         empty WAL_DIR and start again (the new WAL adopts the destination's numbering), or move \
         the destination's files aside if they are not to be imported"
    )
}

/// Before the first upload of a WAL whose destination could not be checked at adoption: lists
/// the destination until it answers. `Ok(None)`: nothing at or above `first_ours`, the check is
/// done. `Ok(Some(reason))`: uploads must be held.
pub async fn check_before_first_upload(
    sink: &dyn Sink,
    folder: &str,
    first_ours: u64,
) -> Result<Option<String>, SinkError> {
    Ok(highest_file_number(sink, folder)
        .await?
        .filter(|&highest| highest >= first_ours)
        .map(|highest| held_reason(highest, first_ours)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first() -> FirstStart {
        FirstStart {
            start_timestamp_ms: Some(1_700_000_000_000),
            recover_iso_date: None,
        }
    }

    fn stock(cursor: &str, count: u64) -> StockState {
        StockState {
            cursor: Some(cursor.to_string()),
            recover_until: RecoverUntil::Date("2024-06-10T08:00:00Z".into()),
            file_count: count,
        }
    }

    fn found(number: u64, ts_ms: u64, cursor: Option<&str>) -> DestinationEvidence {
        DestinationEvidence {
            highest: Some(DeliveredFile {
                key: format!("f/stream_{ts_ms}_{number}.json"),
                number,
                ts_ms,
            }),
            last_cursor: cursor.map(str::to_string),
        }
    }

    #[test]
    fn nothing_delivered_is_a_plain_first_start() {
        assert_eq!(
            plan(None, Some(&DestinationEvidence::default()), &first(), 5),
            None
        );
        assert_eq!(plan(None, None, &first(), 5), None);
    }

    #[test]
    fn the_later_position_and_the_highest_number_win() {
        let platform = stock("1718010000040-0", 41);
        let ahead = found(43, 1_718_010_000_900, Some("1718010000080-2"));
        let plan = plan(Some(&platform), Some(&ahead), &first(), 5).expect("evidence");
        assert_eq!(plan.adopted.start_from.as_deref(), Some("1718010000080-2"));
        assert_eq!(plan.adopted.next_file_number, 44);
        assert_eq!(plan.adopted.from, ["platform", "destination"]);
        assert_eq!(plan.recover_until, platform.recover_until);
        assert_eq!(plan.min_ts_ms, 1_718_010_000_900);

        let behind = found(40, 1, Some("1718010000001-0"));
        let plan = super::plan(Some(&platform), Some(&behind), &first(), 5).expect("evidence");
        assert_eq!(plan.adopted.start_from.as_deref(), Some("1718010000040-0"));
        assert_eq!(plan.adopted.next_file_number, 42);
    }

    #[test]
    fn the_destination_alone_resumes_without_recovery_and_unchecked_is_recorded() {
        let plan = plan(None, Some(&found(7, 9, Some("12-0"))), &first(), 5).expect("evidence");
        assert_eq!(plan.adopted.start_from.as_deref(), Some("12-0"));
        assert_eq!(plan.adopted.next_file_number, 8);
        assert_eq!(plan.recover_until, RecoverUntil::Disabled);
        let platform_only =
            super::plan(Some(&stock("3-0", 2)), None, &first(), 5).expect("evidence");
        assert!(platform_only.adopted.destination_unchecked);
        assert_eq!(platform_only.adopted.next_file_number, 3);
    }

    #[test]
    fn numbering_without_a_position_keeps_the_first_start_position() {
        let plan = plan(None, Some(&found(4, 9, None)), &first(), 1_000).expect("evidence");
        assert_eq!(plan.adopted.start_from, None);
        assert_eq!(plan.adopted.next_file_number, 5);
        assert_eq!(
            plan.recover_until,
            RecoverUntil::Date(crate::ids::iso(1_000))
        );
    }

    #[test]
    fn the_last_position_follows_the_cursor_rule() {
        let lines = concat!(
            r#"{"id":"5-0","type":"create","data":{}}"#,
            "\n",
            r#"{"id":"6-0","type":"create","origin":{"referer":"init-dependencies"},"data":{}}"#,
            "\n"
        );
        // The dependency's trigger is not in the file: its id is not delivered yet.
        assert_eq!(last_cursor(lines.as_bytes()).as_deref(), Some("5-0"));
        let with_trigger = format!("{lines}{}\n", r#"{"id":"6-0","type":"update","data":{}}"#);
        assert_eq!(last_cursor(with_trigger.as_bytes()).as_deref(), Some("6-0"));
        let foreign = format!("{with_trigger}{}\n{}\n", r#"{"id":"not-an-id"}"#, "garbage");
        assert_eq!(last_cursor(foreign.as_bytes()).as_deref(), Some("6-0"));
        assert_eq!(last_cursor(b""), None);
    }

    #[test]
    fn only_exported_files_directly_under_the_folder_count() {
        let file = delivered_file("f/", "f/stream_1700000000123_12.json").expect("ours");
        assert_eq!((file.number, file.ts_ms), (12, 1_700_000_000_123));
        assert!(delivered_file("f/", "f/stream_1700000000123_12.json.zst").is_some());
        assert!(delivered_file("f/", "f/sub/stream_1_2.json").is_none());
        assert!(delivered_file("f/", "f/other_1_2.json").is_none());
        assert!(delivered_file("f/", "f/stream_1_2.txt").is_none());
        assert!(delivered_file("", "stream_5_3.json").is_some());
    }
}
