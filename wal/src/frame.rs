//! Frames: the records of one commit, stored as one zstd frame in an entry of the frame log.
//!
//! A frame's raw content is NDJSON: every record followed by `\n`. Its header keeps the length of
//! each record (so a seal can cut a frame at any record without scanning), the cursor in effect
//! before the frame, a mark for every append of the commit that set a cursor (so the cursor in
//! effect at any record boundary can be told), the state changes of the commit's appends, and
//! the CRC32C of the raw content. Opening the WAL replays the headers written after the last
//! state stored in the database (see `recovery.rs`), so a commit that only appends never writes
//! to the database.

use std::io::{self, BufRead};

use serde::{Deserialize, Serialize};

use crate::error::WalError;
use crate::layout;
use crate::state::{StateChange, StoredState};

/// An append of the commit that set the cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CursorMark {
    /// Records of the frame written up to the end of that append.
    pub end: u64,
    /// The cursor it set.
    pub cursor: String,
}

/// What is known about a frame without reading its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FrameHeader {
    /// The frame's sequence number.
    pub frame: u64,
    /// Sequence number of the frame's first record.
    pub first_seq: u64,
    /// Length of each record, without its `\n`.
    pub record_lens: Vec<u64>,
    /// Raw content length (records plus their `\n`).
    pub raw_bytes: u64,
    /// Length of the zstd frame.
    pub stored_bytes: u64,
    /// The cursor in effect before the frame's first append.
    pub cursor_before: Option<String>,
    /// Cursor-setting appends, in order.
    pub marks: Vec<CursorMark>,
    /// State changes of the commit's appends, in order.
    pub changes: Vec<StateChange>,
    /// CRC32C of the raw content.
    pub raw_crc32c: u32,
}

impl FrameHeader {
    /// Number of records.
    pub fn records(&self) -> u64 {
        self.record_lens.len() as u64
    }

    /// The cursor in effect right before record `index` (or after the whole frame when `index`
    /// is the record count): the last mark whose append ended at or before it.
    pub fn cursor_at(&self, index: u64) -> Option<String> {
        self.marks
            .iter()
            .rev()
            .find(|mark| mark.end <= index)
            .map(|mark| Some(mark.cursor.clone()))
            .unwrap_or_else(|| self.cursor_before.clone())
    }

    /// Raw bytes of records `[from, to)`.
    pub fn raw_len(&self, from: u64, to: u64) -> u64 {
        self.record_lens[from as usize..to as usize]
            .iter()
            .map(|len| len + 1)
            .sum()
    }

    /// Decodes a header read from a log entry.
    pub fn decode_entry(bytes: &[u8]) -> Result<FrameHeader, WalError> {
        layout::decode_current(bytes, "a frame header")
    }

    /// Applies the commit this frame holds to `state`, the state before it (replay at open):
    /// its records, the last cursor it set and its state changes.
    pub fn replay(&self, state: &mut StoredState) {
        state.next_frame_seq = self.frame + 1;
        state.next_record_seq = self.first_seq + self.records();
        if let Some(mark) = self.marks.last() {
            state.cursor = Some(mark.cursor.clone());
        }
        for change in &self.changes {
            state.apply(change.clone());
        }
        state.touched = true;
    }
}

/// Decodes a frame's raw content with a reused decompression context (reset first, so a
/// previous frame read only in part does not matter).
pub(crate) fn decoder<'c, R: BufRead>(
    stream: R,
    context: &'c mut zstd::zstd_safe::DCtx<'static>,
) -> io::Result<zstd::stream::read::Decoder<'c, R>> {
    context
        .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
        .map_err(|code| io::Error::other(zstd::zstd_safe::get_error_name(code)))?;
    Ok(zstd::stream::read::Decoder::with_context(stream, context))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(marks: Vec<(u64, &str)>) -> FrameHeader {
        FrameHeader {
            frame: 0,
            first_seq: 10,
            record_lens: vec![3, 4, 5, 6],
            raw_bytes: 22,
            stored_bytes: 0,
            cursor_before: Some("before".into()),
            marks: marks
                .into_iter()
                .map(|(end, cursor)| CursorMark {
                    end,
                    cursor: cursor.into(),
                })
                .collect(),
            changes: Vec::new(),
            raw_crc32c: 0,
        }
    }

    #[test]
    fn cursor_at_uses_the_last_mark_ending_at_or_before_the_record() {
        let h = header(vec![(0, "heartbeat"), (2, "second"), (4, "last")]);
        assert_eq!(h.cursor_at(0).as_deref(), Some("heartbeat"));
        assert_eq!(h.cursor_at(1).as_deref(), Some("heartbeat"));
        assert_eq!(h.cursor_at(2).as_deref(), Some("second"));
        assert_eq!(h.cursor_at(3).as_deref(), Some("second"));
        assert_eq!(h.cursor_at(4).as_deref(), Some("last"));
        let no_marks = header(vec![]);
        assert_eq!(no_marks.cursor_at(3).as_deref(), Some("before"));
    }

    #[test]
    fn raw_len_counts_newlines() {
        let h = header(vec![]);
        assert_eq!(h.raw_len(0, 4), 22);
        assert_eq!(h.raw_len(1, 3), 11);
        assert_eq!(h.raw_len(2, 2), 0);
    }
}
