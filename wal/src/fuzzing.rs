//! Entry points for fuzzing what the WAL decodes from its database (the `fuzz/` crate and the
//! hostile-input property tests of the daemon). Hidden from the documentation: not part of the
//! API, may change at any time.

use crate::frame::FrameHeader;
use crate::layout;
use crate::segment::SegmentMeta;
use crate::state::StoredState;

/// Decodes `bytes` as every kind of value the database holds (the state, a frame header, a
/// segment entry), then computes from a decoded frame header what recovery computes from it.
/// Returns how many kinds decoded. Must never panic nor allocate without bound, whatever the
/// bytes: a damaged database is reported as corrupt, never a crash.
pub fn decode_database_value(bytes: &[u8]) -> usize {
    let mut decoded = 0;
    if let Ok(state) = layout::decode::<StoredState>(bytes, "the WAL state") {
        let _ = state.public();
        decoded += 1;
    }
    if let Ok(header) = FrameHeader::decode(bytes, "a frame header") {
        let records = header.records();
        let _ = header.cursor_at(records);
        let _ = header.raw_len(0, records);
        decoded += 1;
    }
    if SegmentMeta::decode(bytes, "a segment entry").is_ok() {
        decoded += 1;
    }
    decoded
}
