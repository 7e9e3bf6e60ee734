//! Keys and value encoding inside the database (one tree, key prefixes).
//!
//! | key                                   | value                                    |
//! |---------------------------------------|------------------------------------------|
//! | `S`                                   | [`crate::state::StoredState`]            |
//! | `G` + segment number (u64 BE)         | [`crate::segment::SegmentMeta`]          |
//!
//! Formats 1 and 2 also kept the unsealed frames in the database: `H` + frame seq (u64 BE) → its
//! header, `C` + frame seq (u64 BE) + chunk (u32 BE) → up to 4 KiB of its zstd bytes. Opening
//! such a WAL moves them to the frame log (`upgrade.rs`).
//!
//! Big-endian numbers make key order numeric order, so a range scan walks frames, chunks and
//! segments in order. Every encoded value (and every frame header in the frame log) starts with
//! a version byte, then bincode 2 (standard configuration) of the serde form.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::WalError;

/// The key of the state value.
pub(crate) const STATE_KEY: &[u8] = b"S";
const FRAME_HEADER_PREFIX: u8 = b'H';
const FRAME_CHUNK_PREFIX: u8 = b'C';
const SEGMENT_PREFIX: u8 = b'G';

/// Version byte in front of every value this version encodes.
///
/// Version 2 (WAL format 2) added the content's CRC32C to frame headers and replaced the MD5s of
/// segment entries with CRC32Cs. Version 3 (format 3) moved frames to the frame log, their
/// headers gaining their own sequence number and the commit's state changes, and added the frame
/// log's positions to the state; segment entries kept the form of version 2.
pub(crate) const VALUE_VERSION: u8 = 3;
/// Version byte of the values WAL format 2 wrote.
pub(crate) const FORMAT_2_VALUE_VERSION: u8 = 2;
/// Version byte of the values WAL format 1 wrote.
pub(crate) const FORMAT_1_VALUE_VERSION: u8 = 1;

/// Most bytes a decoded value may claim. bincode allocates a string or a list of the length a
/// value announces before reading it: without a bound, a damaged value announcing exabytes
/// aborts the process (allocation failure) instead of being reported as corrupt. The largest
/// real value, a frame header of a full commit, is a few MiB.
const DECODE_LIMIT_BYTES: usize = 64 << 20;

/// Key of the header of frame `seq` (formats 1 and 2).
pub(crate) fn frame_header_key(seq: u64) -> [u8; 9] {
    prefixed(FRAME_HEADER_PREFIX, seq)
}

/// Key of chunk `index` of frame `seq` (formats 1 and 2).
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

/// The prefixes of the keys formats 1 and 2 kept frames under.
pub(crate) fn frame_prefixes() -> [[u8; 1]; 2] {
    [[FRAME_HEADER_PREFIX], [FRAME_CHUNK_PREFIX]]
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

/// Decodes a value of this version (3); `what` names it in errors.
pub(crate) fn decode_current<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, WalError> {
    match split_version(bytes, what)? {
        (VALUE_VERSION, body) => decode_body(body, what),
        (version, _) => Err(unexpected_version(what, version, "3")),
    }
}

/// Decodes a value whose form has not changed since format 2 as `T`, and one written by WAL
/// format 1 as `Old`, converted.
pub(crate) fn decode_upgrading<T, Old>(bytes: &[u8], what: &str) -> Result<T, WalError>
where
    T: DeserializeOwned,
    Old: DeserializeOwned + Into<T>,
{
    match split_version(bytes, what)? {
        (VALUE_VERSION | FORMAT_2_VALUE_VERSION, body) => decode_body(body, what),
        (FORMAT_1_VALUE_VERSION, body) => decode_body::<Old>(body, what).map(Into::into),
        (version, _) => Err(unexpected_version(what, version, "1 to 3")),
    }
}

/// The version byte of a stored value and the rest.
pub(crate) fn split_version<'a>(bytes: &'a [u8], what: &str) -> Result<(u8, &'a [u8]), WalError> {
    match bytes.split_first() {
        Some((version, body)) => Ok((*version, body)),
        None => Err(WalError::corrupt(format!("{what} is empty"))),
    }
}

/// The error for a value of a version this build does not read there.
pub(crate) fn unexpected_version(what: &str, version: u8, read: &str) -> WalError {
    WalError::corrupt(format!(
        "{what} has value version {version}, this build reads {read} there"
    ))
}

/// Decodes the bincode body of a value.
pub(crate) fn decode_body<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, WalError> {
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
    fn values_round_trip_and_other_versions_are_refused() {
        type Value = (u64, Option<String>);
        let value = (7u64, Some("cursor".to_string()));
        let bytes = encode(&value, "a test value").unwrap();
        let back: Value = decode_current(&bytes, "a test value").unwrap();
        assert_eq!(back, value);

        for version in [FORMAT_2_VALUE_VERSION, 9] {
            let mut other = bytes.clone();
            other[0] = version;
            let err = decode_current::<Value>(&other, "a test value").unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("value version {version}")),
                "{err}"
            );
        }

        let mut trailing = bytes;
        trailing.push(0);
        assert!(decode_current::<Value>(&trailing, "a test value").is_err());
        assert!(decode_current::<u64>(&[], "a test value").is_err());
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
    fn a_format_1_value_is_converted_and_a_later_one_read_as_it_is() {
        let old = encode(&7u64, "old").unwrap();
        let mut legacy = old.clone();
        legacy[0] = FORMAT_1_VALUE_VERSION;
        assert_eq!(
            decode_upgrading::<New, Old>(&legacy, "v").unwrap(),
            New(7, false)
        );
        let current = encode(&(7u64, true), "new").unwrap();
        assert_eq!(
            decode_upgrading::<New, Old>(&current, "v").unwrap(),
            New(7, true)
        );
        let mut format_2 = current.clone();
        format_2[0] = FORMAT_2_VALUE_VERSION;
        assert_eq!(
            decode_upgrading::<New, Old>(&format_2, "v").unwrap(),
            New(7, true)
        );
        // A current value is never read with the old form.
        assert!(decode_upgrading::<New, Old>(&old, "v").is_err());
    }
}
