//! Entry points for fuzzing what the WAL decodes from its database and frame log (the `fuzz/`
//! crate and the hostile-input property tests of the daemon). Hidden from the documentation: not
//! part of the API, may change at any time.

use crate::frame::FrameHeader;
use crate::layout;
use crate::segment::SegmentMeta;
use crate::state::StoredState;

/// Decodes `bytes` as every kind of value the database and the frame log hold (the state, a
/// frame header, a segment entry, and the values of formats 1 and 2 an upgrade reads), then
/// computes from a decoded frame header what recovery computes from it. Returns how many kinds
/// decoded. Must never panic nor allocate without bound, whatever the bytes: a damaged database
/// is reported as corrupt, never a crash.
pub fn decode_database_value(bytes: &[u8]) -> usize {
    let mut decoded = crate::upgrade::decode_older_values(bytes);
    if let Ok(state) = layout::decode_current::<StoredState>(bytes, "the WAL state") {
        let _ = state.public();
        decoded += 1;
    }
    if let Ok(header) = FrameHeader::decode_entry(bytes) {
        let records = header.records();
        let _ = header.cursor_at(records);
        let _ = header.raw_len(0, records);
        let mut state = StoredState::fresh();
        header.replay(&mut state);
        decoded += 1;
    }
    if SegmentMeta::decode(bytes, "a segment entry").is_ok() {
        decoded += 1;
    }
    decoded
}
