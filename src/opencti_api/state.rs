//! The connector state in the stock keys (docs/opencti-protocol.md#state-storage,
//! docs/opencti-protocol.md#state-keys), built from the WAL, and what a state answered by the
//! platform means.
//!
//! | key | value here |
//! |---|---|
//! | `start_from` | the durable cursor (what the next connection resumes from) |
//! | `recover_until` | the recovery bound; `false` once recovery is disabled (as pycti 7.x) |
//! | `last_written_msg_id` | the last uploaded segment's last cursor: every event up to it is in an uploaded file; absent before the first upload |
//! | `file_count` | the number of the last uploaded file (the next file is `file_count + 1`) |
//!
//! Both `last_written_msg_id` and `file_count` describe what was *uploaded*, unlike the stock
//! exporter whose values could run ahead of its uploads (docs/opencti-protocol.md#state-keys): a
//! state copied from the UI is therefore always safe to import (`import-state`) into a new WAL.

use serde_json::{Map, Value};
use wal::{RecoverUntil, Wal, WalState};

/// The state reported to the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorState {
    /// `start_from`.
    pub start_from: Option<String>,
    /// `recover_until`.
    pub recover_until: RecoverUntil,
    /// `last_written_msg_id`.
    pub last_written_msg_id: Option<String>,
    /// `file_count`.
    pub file_count: u64,
}

impl ConnectorState {
    /// The state of `wal` now.
    pub fn from_wal(wal: &Wal) -> Self {
        let oldest_waiting = wal.segments().first().map(|segment| segment.number);
        Self::from_parts(&wal.state(), oldest_waiting)
    }

    /// The state given the WAL's state and the number of the oldest segment waiting for upload.
    pub fn from_parts(state: &WalState, oldest_waiting: Option<u64>) -> Self {
        let file_count = match &state.last_upload {
            Some(upload) => upload.number,
            None => oldest_waiting
                .unwrap_or(state.next_file_number)
                .saturating_sub(1),
        };
        Self {
            start_from: state.cursor.clone(),
            recover_until: state.recover_until.clone(),
            last_written_msg_id: state
                .last_upload
                .as_ref()
                .and_then(|upload| upload.last_cursor.clone()),
            file_count,
        }
    }

    /// The JSON object in the stock keys.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        if let Some(start) = &self.start_from {
            object.insert("start_from".into(), Value::String(start.clone()));
        }
        match &self.recover_until {
            RecoverUntil::Date(date) => {
                object.insert("recover_until".into(), Value::String(date.clone()));
            }
            RecoverUntil::Disabled => {
                object.insert("recover_until".into(), Value::Bool(false));
            }
            RecoverUntil::Unset => {}
        }
        if let Some(last) = &self.last_written_msg_id {
            object.insert("last_written_msg_id".into(), Value::String(last.clone()));
        }
        object.insert("file_count".into(), Value::from(self.file_count));
        Value::Object(object)
    }

    /// The JSON string sent as the ping's `state` (what the UI shows).
    pub fn to_state_string(&self) -> String {
        self.to_json().to_string()
    }
}

/// What the `connector_state` answered by a ping means, compared with the state just sent.
#[derive(Debug, Clone, PartialEq)]
pub enum PlatformState {
    /// The platform stored what was sent.
    Same,
    /// The explicit reset answer: the empty string `""` instead of the state just sent, which is
    /// what the platform answers once after `resetStateConnector`
    /// (docs/opencti-protocol.md#state-storage). Whether it is honoured is the API task's decision
    /// (see [`super`]).
    Reset,
    /// No state at all: `connector_state` missing or `null`, the string `"null"`, `{}` or a JSON
    /// empty string. The platform never answers these to a reset, so they are not one: a
    /// misbehaving platform or proxy must not make the exporter re-export the world.
    Empty,
    /// The platform holds another, non-empty state: another process pings with the same
    /// connector id, or the state was edited. The WAL stays authoritative.
    Different(Value),
}

/// Compares the platform's `connector_state` with the state string just sent (as JSON values,
/// so key order and spacing do not matter).
pub fn compare(sent: &str, answered: Option<&str>) -> PlatformState {
    let answered = match answered.map(str::trim) {
        None => return PlatformState::Empty,
        Some("") => return PlatformState::Reset,
        Some(text) => text,
    };
    let answered_value = match serde_json::from_str::<Value>(answered) {
        Ok(value) => value,
        Err(_) => return PlatformState::Different(Value::String(answered.to_string())),
    };
    if is_empty_state(&answered_value) {
        return PlatformState::Empty;
    }
    match serde_json::from_str::<Value>(sent) {
        Ok(sent_value) if sent_value == answered_value => PlatformState::Same,
        _ => PlatformState::Different(answered_value),
    }
}

/// `null`, `{}` or `""` as JSON values: no state.
fn is_empty_state(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(object) => object.is_empty(),
        Value::String(text) => text.trim().is_empty(),
        _ => false,
    }
}

/// What a connector state held by the platform says was delivered, in the stock keys
/// (docs/opencti-protocol.md#state-keys): written by the stock Python connector or by this exporter
/// (same keys, same meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockState {
    /// The position every event up to which was delivered: `last_written_msg_id`, or
    /// `start_from` only when the former is absent (the stock `start_from` can run ahead of the
    /// files written), or the legacy `connectorLastEventId`.
    pub cursor: Option<String>,
    /// `recover_until` (legacy `connectorStartTime`); [`RecoverUntil::Disabled`] when absent,
    /// `null` or `false`.
    pub recover_until: RecoverUntil,
    /// `file_count`: the number of the last file written (0 when absent).
    pub file_count: u64,
}

/// Why a connector state cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockStateError {
    /// Not JSON.
    #[error("the state is not JSON")]
    NotJson,
    /// JSON, but not an object.
    #[error("the state must be a JSON object such as {{\"start_from\": \"…\", \"file_count\": 3}}")]
    NotAnObject,
    /// A key has a value of the wrong kind.
    #[error("{key} {expected}, got {got}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it was.
        got: String,
    },
}

impl StockState {
    /// Reads a connector state as the platform stores it (a JSON object, possibly wrapped in a
    /// JSON string as the UI shows it at times). `Ok(None)` for an empty state (`""`, `null`,
    /// `"null"`, `{}`): nothing was delivered under this connector id, or the state was reset.
    pub fn parse(text: &str) -> Result<Option<Self>, StockStateError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(text).map_err(|_| StockStateError::NotJson)?;
        let value = match value {
            Value::String(inner) if inner.trim().is_empty() => return Ok(None),
            Value::String(inner) => {
                serde_json::from_str(&inner).map_err(|_| StockStateError::NotJson)?
            }
            other => other,
        };
        if is_empty_state(&value) {
            return Ok(None);
        }
        let Some(object) = value.as_object() else {
            return Err(StockStateError::NotAnObject);
        };
        let text_of = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_string);
        let cursor = text_of("last_written_msg_id")
            .or_else(|| text_of("start_from"))
            .or_else(|| text_of("connectorLastEventId"));
        let recover_until = match object
            .get("recover_until")
            .or_else(|| object.get("connectorStartTime"))
        {
            Some(Value::String(date)) => RecoverUntil::Date(date.clone()),
            Some(Value::Bool(false)) | Some(Value::Null) | None => RecoverUntil::Disabled,
            Some(other) => {
                return Err(StockStateError::BadValue {
                    key: "recover_until",
                    expected: "must be a date or false",
                    got: other.to_string(),
                });
            }
        };
        let file_count = match object.get("file_count") {
            None | Some(Value::Null) => 0,
            Some(value) => value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| StockStateError::BadValue {
                    key: "file_count",
                    expected: "must be a whole number",
                    got: value.to_string(),
                })?,
        };
        Ok(Some(Self {
            cursor,
            recover_until,
            file_count,
        }))
    }

    /// The number the next file gets (`file_count + 1`); `None` when `file_count` is at the
    /// integer limit, so that no caller wraps around to a number already used.
    pub fn next_file_number(&self) -> Option<u64> {
        self.file_count.checked_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use wal::UploadRecord;

    fn wal_state(last_upload: Option<UploadRecord>, next_file_number: u64) -> WalState {
        WalState {
            cursor: Some("1718012399999-0".into()),
            recover_until: RecoverUntil::Date("2024-06-10T09:38:20.000Z".into()),
            next_file_number,
            last_sealed_ts_ms: 0,
            last_upload,
            extras: BTreeMap::new(),
            next_record_seq: 0,
        }
    }

    #[test]
    fn the_state_after_uploads_names_the_last_uploaded_file_and_position() {
        let upload = UploadRecord {
            number: 41,
            ts_ms: 1_718_012_300_000,
            uploaded_at_ms: 1_718_012_300_500,
            last_cursor: Some("1718012350123-0".into()),
        };
        let state = ConnectorState::from_parts(&wal_state(Some(upload), 44), Some(42));
        assert_eq!(
            state.to_state_string(),
            r#"{"start_from":"1718012399999-0","recover_until":"2024-06-10T09:38:20.000Z","last_written_msg_id":"1718012350123-0","file_count":41}"#
        );
    }

    #[test]
    fn before_any_upload_the_count_is_the_file_before_the_first_waiting() {
        // Imported with file_count 41: next file 42, two sealed and not uploaded yet.
        let state = ConnectorState::from_parts(&wal_state(None, 44), Some(42));
        assert_eq!(state.file_count, 41);
        assert_eq!(state.last_written_msg_id, None);
        assert_eq!(
            ConnectorState::from_parts(&wal_state(None, 1), None).file_count,
            0
        );
        let disabled = ConnectorState {
            recover_until: RecoverUntil::Disabled,
            ..state
        };
        assert_eq!(disabled.to_json()["recover_until"], Value::Bool(false));
    }

    #[test]
    fn only_the_empty_string_is_a_reset_and_no_state_is_not_one() {
        let sent = r#"{"start_from":"5-0","file_count":3}"#;
        assert_eq!(compare(sent, Some("")), PlatformState::Reset);
        assert_eq!(compare(sent, Some(" ")), PlatformState::Reset);
        for empty in [None, Some("null"), Some("{}"), Some(" \"\" ")] {
            assert_eq!(compare(sent, empty), PlatformState::Empty, "{empty:?}");
        }
        assert_eq!(
            compare(sent, Some(r#"{"file_count": 3, "start_from": "5-0"}"#)),
            PlatformState::Same
        );
        assert!(matches!(
            compare(sent, Some(r#"{"start_from":"9-0","file_count":8}"#)),
            PlatformState::Different(_)
        ));
        assert!(matches!(
            compare(sent, Some("not json")),
            PlatformState::Different(_)
        ));
    }

    #[test]
    fn the_stock_state_maps_onto_ours() {
        let state = StockState::parse(
            r#"{"start_from": "1718012399999-0", "recover_until": "2024-06-10T09:38:20Z",
                "last_written_msg_id": "1718012350123-0", "file_count": 41}"#,
        )
        .expect("valid")
        .expect("not empty");
        assert_eq!(state.cursor.as_deref(), Some("1718012350123-0"));
        assert_eq!(
            state.recover_until,
            RecoverUntil::Date("2024-06-10T09:38:20Z".into())
        );
        assert_eq!(state.file_count, 41);
        assert_eq!(state.next_file_number(), Some(42));
    }

    #[test]
    fn a_state_that_never_uploaded_resumes_from_start_from() {
        let state = StockState::parse(r#"{"start_from": "5-0", "recover_until": false}"#)
            .expect("valid")
            .expect("not empty");
        assert_eq!(state.cursor.as_deref(), Some("5-0"));
        assert_eq!(state.recover_until, RecoverUntil::Disabled);
        assert_eq!(state.next_file_number(), Some(1));
    }

    #[test]
    fn a_state_given_as_a_json_string_is_unwrapped_and_the_count_read_in_either_form() {
        let state =
            StockState::parse(r#""{\"connectorLastEventId\": \"7-0\", \"file_count\": \"2\"}""#)
                .expect("valid")
                .expect("not empty");
        assert_eq!(state.cursor.as_deref(), Some("7-0"));
        assert_eq!(state.file_count, 2);
    }

    #[test]
    fn an_empty_state_is_no_evidence_and_nonsense_is_refused() {
        for empty in ["", "null", "\"null\"", "{}", "\"\"", " \"{}\" "] {
            assert_eq!(StockState::parse(empty), Ok(None), "{empty}");
        }
        assert_eq!(StockState::parse("[]"), Err(StockStateError::NotAnObject));
        assert_eq!(StockState::parse("not json"), Err(StockStateError::NotJson));
        assert!(StockState::parse(r#"{"start_from": "1-0", "file_count": "many"}"#).is_err());
        let at_limit = StockState::parse(&format!(
            r#"{{"start_from": "1-0", "file_count": {}}}"#,
            u64::MAX
        ))
        .expect("valid")
        .expect("not empty");
        assert_eq!(at_limit.next_file_number(), None);
    }
}
