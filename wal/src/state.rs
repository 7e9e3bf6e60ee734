//! The durable state kept beside the records: the public [`WalState`] and the positions only the
//! crate needs. The whole [`StoredState`] is one database value, rewritten in the same atomic
//! batch as the segment entries it changes with. A commit that only appends records does not
//! write it: its frame (in the frame log, made durable before anything that depends on it) carries
//! what the commit changes, and opening the WAL replays the frames written after the stored
//! state's `log_end` (see `recovery.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::log::LogPos;

/// The first file number of a new WAL.
pub const FIRST_FILE_NUMBER: u64 = 1;

/// How far back the stream should recover, as last persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoverUntil {
    /// Never set: the daemon decides from its configuration.
    Unset,
    /// Recover until this date (opaque to the WAL).
    Date(String),
    /// Recovery was switched off (the server said `no-recover`).
    Disabled,
}

/// The last successful upload, as recorded by [`crate::Wal::mark_uploaded`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// Number of the uploaded segment.
    pub number: u64,
    /// Its 13-digit millisecond timestamp (part of the object key).
    pub ts_ms: u64,
    /// When the caller says the upload completed.
    pub uploaded_at_ms: u64,
    /// The uploaded segment's `last_cursor`: every record appended before this position is in an
    /// uploaded segment, so resuming from it loses nothing that was uploaded (the stock
    /// connector's `last_written_msg_id`).
    pub last_cursor: Option<String>,
}

/// A snapshot of the durable state. Everything in it was made durable (flush + fsync) together
/// with the records it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalState {
    /// The stream position to resume from: the cursor of the last durable append that set one.
    pub cursor: Option<String>,
    /// The recovery bound, as last set through the appender.
    pub recover_until: RecoverUntil,
    /// The number the next sealed segment gets (segments are numbered without gaps).
    pub next_file_number: u64,
    /// Timestamp of the last sealed segment (0 before the first); the next one is strictly greater.
    pub last_sealed_ts_ms: u64,
    /// The last segment marked uploaded.
    pub last_upload: Option<UploadRecord>,
    /// Small values the daemon keeps with the state (opaque to the WAL).
    pub extras: BTreeMap<String, Vec<u8>>,
    /// Sequence number the next appended record gets (= records ever appended, counting from the
    /// first). Records keep their sequence number through sealing.
    pub next_record_seq: u64,
}

/// What [`crate::Wal::initialize`] seeds a new WAL with (e.g. imported from the stock connector).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialState {
    /// Position to resume the stream from.
    pub cursor: Option<String>,
    /// Recovery bound.
    pub recover_until: RecoverUntil,
    /// Number of the first segment to seal (at least 1).
    pub next_file_number: u64,
    /// Timestamp the first sealed segment must exceed.
    pub last_sealed_ts_ms: u64,
    /// Initial extras.
    pub extras: BTreeMap<String, Vec<u8>>,
}

/// A change of the durable state committed in order with appends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateChange {
    /// Persist a new recovery bound.
    RecoverUntil(RecoverUntil),
    /// Set an extra value.
    SetExtra {
        /// Its name.
        key: String,
        /// Its value.
        value: Vec<u8>,
    },
    /// Remove an extra value (nothing happens if it is absent).
    RemoveExtra {
        /// Its name.
        key: String,
    },
}

/// A place in the record stream: a record inside a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Position {
    /// Frame sequence number.
    pub frame: u64,
    /// Index of the record inside the frame.
    pub record: u64,
    /// Byte offset of that record in the frame's raw (uncompressed) content.
    pub raw_offset: u64,
    /// Global sequence number of that record.
    pub seq: u64,
    /// Where the frame's entry is in the frame log.
    pub log: LogPos,
}

impl Position {
    /// The start of frame `frame`, whose first record has sequence `seq` and whose entry is (or
    /// will be) at `log`.
    pub fn frame_start(frame: u64, seq: u64, log: LogPos) -> Self {
        Position {
            frame,
            record: 0,
            raw_offset: 0,
            seq,
            log,
        }
    }
}

/// The state value as stored: [`WalState`] plus the crate's own positions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredState {
    pub cursor: Option<String>,
    pub recover_until: RecoverUntil,
    pub next_file_number: u64,
    pub last_sealed_ts_ms: u64,
    pub last_upload: Option<UploadRecord>,
    pub extras: BTreeMap<String, Vec<u8>>,
    pub next_record_seq: u64,
    /// Sequence number of the next frame to write.
    pub next_frame_seq: u64,
    /// The oldest record not sealed yet (or, when all are sealed, the start of the next frame).
    pub first_unsealed: Position,
    /// Whether anything was ever committed (an append, a state change or an initialization).
    pub touched: bool,
    /// Where the next frame's entry goes: the end of the frame log this state accounts for.
    pub log_end: LogPos,
}

impl StoredState {
    /// The state of a WAL that never committed anything.
    pub fn fresh() -> Self {
        StoredState {
            cursor: None,
            recover_until: RecoverUntil::Unset,
            next_file_number: FIRST_FILE_NUMBER,
            last_sealed_ts_ms: 0,
            last_upload: None,
            extras: BTreeMap::new(),
            next_record_seq: 0,
            next_frame_seq: 0,
            first_unsealed: Position::frame_start(0, 0, LogPos::file_start(0)),
            touched: false,
            log_end: LogPos::file_start(0),
        }
    }

    /// The public part.
    pub fn public(&self) -> WalState {
        WalState {
            cursor: self.cursor.clone(),
            recover_until: self.recover_until.clone(),
            next_file_number: self.next_file_number,
            last_sealed_ts_ms: self.last_sealed_ts_ms,
            last_upload: self.last_upload.clone(),
            extras: self.extras.clone(),
            next_record_seq: self.next_record_seq,
        }
    }

    /// Applies one state change.
    pub fn apply(&mut self, change: StateChange) {
        match change {
            StateChange::RecoverUntil(value) => self.recover_until = value,
            StateChange::SetExtra { key, value } => {
                self.extras.insert(key, value);
            }
            StateChange::RemoveExtra { key } => {
                self.extras.remove(&key);
            }
        }
    }
}
