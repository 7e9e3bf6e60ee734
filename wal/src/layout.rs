//! Keys and value encoding inside the database (one tree, key prefixes).
//!
//! | key                                   | value                                    |
//! |---------------------------------------|------------------------------------------|
//! | `S`                                   | [`crate::state::StoredState`]            |
//! | `H` + frame seq (u64 BE)              | [`crate::frame::FrameHeader`]            |
//! | `C` + frame seq (u64 BE) + chunk (u32 BE) | ≤ [`CHUNK_BYTES`] of the frame's zstd bytes |
//! | `G` + segment number (u64 BE)         | [`crate::segment::SegmentMeta`]          |
//!
//! Big-endian numbers make key order numeric order, so a range scan walks frames, chunks and
//! segments in order. Every encoded value starts with a version byte, then bincode 2 (standard
//! configuration) of the serde form.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::WalError;

/// The key of the state value.
pub(crate) const STATE_KEY: &[u8] = b"S";
const FRAME_HEADER_PREFIX: u8 = b'H';
const FRAME_CHUNK_PREFIX: u8 = b'C';
const SEGMENT_PREFIX: u8 = b'G';

/// Largest value stored for a frame chunk.
///
/// sled 0.34 writes any log item larger than about `segment_size / 4` (128 KiB with the default
/// 512 KiB segment) to a separate blob file that it never fsyncs, and a leaf node holds up to 17
/// entries before it splits and is rewritten whole on consolidation. 17 × 4 KiB plus overhead
/// stays well under 128 KiB, so however large an event, neither a chunk nor a leaf of chunks
/// becomes a blob. A frame header can: it holds one length per record and one cursor per
/// append, so a commit of very many small records (about 100,000 and more) stores its header
/// in a blob file. [`crate::store::Store::sync`] fsyncs those with their directory, and the
/// power-cut test (`tests/powercut.rs`) runs such commits.
pub(crate) const CHUNK_BYTES: usize = 4 * 1024;

/// Version byte in front of every value this version encodes.
///
/// Version 2 (WAL format 2) added the content's CRC32C to frame headers and replaced the MD5s of
/// segment entries with CRC32Cs; the state's form is the same in both.
const VALUE_VERSION: u8 = 2;
/// Version byte of the values WAL format 1 wrote, still read (see [`decode_upgrading`]).
const LEGACY_VALUE_VERSION: u8 = 1;

/// Most bytes a decoded value may claim. bincode allocates a string or a list of the length a
/// value announces before reading it: without a bound, a damaged value announcing exabytes
/// aborts the process (allocation failure) instead of being reported as corrupt. The largest
/// real value, a frame header of a full commit, is a few MiB.
const DECODE_LIMIT_BYTES: usize = 64 << 20;

/// Key of the header of frame `seq`.
pub(crate) fn frame_header_key(seq: u64) -> [u8; 9] {
    prefixed(FRAME_HEADER_PREFIX, seq)
}

/// Key of chunk `index` of frame `seq`.
pub(crate) fn frame_chunk_key(seq: u64, index: u32) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = FRAME_CHUNK_PREFIX;
    key[1..9].copy_from_slice(&seq.to_be_bytes());
    key[9..13].copy_from_slice(&index.to_be_bytes());
    key
}

/// Key of the entry of segment `number`.
pub(crate) fn segment_key(number: u64) -> [u8; 9] {
    prefixed(SEGMENT_PREFIX, number)
}

/// The prefix shared by every frame header key.
pub(crate) fn frame_header_prefix() -> [u8; 1] {
    [FRAME_HEADER_PREFIX]
}

/// The prefix shared by every segment entry key.
pub(crate) fn segment_prefix() -> [u8; 1] {
    [SEGMENT_PREFIX]
}

/// The number in a `prefix + u64 BE` key, if the key has that shape.
pub(crate) fn parse_numbered_key(key: &[u8]) -> Option<u64> {
    let digits: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    (key.len() == 9).then(|| u64::from_be_bytes(digits))
}

fn prefixed(prefix: u8, number: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = prefix;
    key[1..].copy_from_slice(&number.to_be_bytes());
    key
}

/// Encodes a value for the database.
pub(crate) fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, WalError> {
    let mut out = vec![VALUE_VERSION];
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| WalError::corrupt(format!("cannot encode {what}: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a value read from the database whose form is the same in every version; `what`
/// names it in errors.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, WalError> {
    decode_upgrading::<T, T>(bytes, what)
}

/// Decodes a value read from the database: a current one as `T`, one written by WAL format 1 as
/// `Old`, converted. A value of any other version is corrupt.
pub(crate) fn decode_upgrading<T, Old>(bytes: &[u8], what: &str) -> Result<T, WalError>
where
    T: DeserializeOwned,
    Old: DeserializeOwned + Into<T>,
{
    match bytes.split_first() {
        Some((&VALUE_VERSION, body)) => decode_body(body, what),
        Some((&LEGACY_VALUE_VERSION, body)) => decode_body::<Old>(body, what).map(Into::into),
        Some((version, _)) => Err(WalError::corrupt(format!(
            "{what} has value version {version}, this build reads {LEGACY_VALUE_VERSION} and \
             {VALUE_VERSION}"
        ))),
        None => Err(WalError::corrupt(format!("{what} is empty"))),
    }
}

fn decode_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, WalError> {
    let (value, used) = bincode::serde::decode_from_slice(
        body,
        bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>(),
    )
    .map_err(|e| WalError::corrupt(format!("{what} does not decode: {e}")))?;
    if used != body.len() {
        return Err(WalError::corrupt(format!(
            "{what} has {} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_numerically() {
        assert!(frame_header_key(255) < frame_header_key(256));
        assert!(frame_chunk_key(1, u32::MAX) < frame_chunk_key(2, 0));
        assert!(segment_key(9) < segment_key(10));
        assert_eq!(parse_numbered_key(&segment_key(42)), Some(42));
        assert_eq!(parse_numbered_key(&frame_chunk_key(1, 2)), None);
        assert_eq!(parse_numbered_key(b"G"), None);
    }

    #[test]
    fn values_round_trip_read_format_1_and_reject_other_versions() {
        let value = (7u64, Some("cursor".to_string()));
        let bytes = encode(&value, "a test value").unwrap();
        let back: (u64, Option<String>) = decode(&bytes, "a test value").unwrap();
        assert_eq!(back, value);

        let mut legacy = bytes.clone();
        legacy[0] = LEGACY_VALUE_VERSION;
        assert_eq!(
            decode::<(u64, Option<String>)>(&legacy, "a test value").unwrap(),
            value
        );

        let mut other = bytes.clone();
        other[0] = 9;
        let err = decode::<(u64, Option<String>)>(&other, "a test value").unwrap_err();
        assert!(err.to_string().contains("value version 9"), "{err}");

        let mut trailing = bytes;
        trailing.push(0);
        assert!(decode::<(u64, Option<String>)>(&trailing, "a test value").is_err());
        assert!(decode::<u64>(&[], "a test value").is_err());
    }
}

#[cfg(test)]
mod upgrade_tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Old(u64);

    #[derive(Debug, PartialEq, serde::Deserialize)]
    struct New(u64, bool);

    impl From<Old> for New {
        fn from(old: Old) -> New {
            New(old.0, false)
        }
    }

    #[test]
    fn a_format_1_value_is_converted_and_a_current_one_read_as_it_is() {
        let old = encode(&7u64, "old").unwrap();
        let mut legacy = old.clone();
        legacy[0] = LEGACY_VALUE_VERSION;
        assert_eq!(
            decode_upgrading::<New, Old>(&legacy, "v").unwrap(),
            New(7, false)
        );
        let current = encode(&(7u64, true), "new").unwrap();
        assert_eq!(
            decode_upgrading::<New, Old>(&current, "v").unwrap(),
            New(7, true)
        );
        // A current value is never read with the old form.
        assert!(decode_upgrading::<New, Old>(&old, "v").is_err());
    }
}
