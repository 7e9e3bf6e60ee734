//! Object names: `{folder}/stream_{ts}_{N}.json`, as the stock exporter writes them and the stock
//! importer parses them (docs/opencti-protocol.md#stock-exporter-flow,
//! docs/opencti-protocol.md#importer-listing).

/// How uploaded objects are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain UTF-8 NDJSON, `.json`: what the stock importer reads (the default).
    #[default]
    None,
    /// The zstd segment as stored locally, `.json.zst`: for consumers that read it.
    Zstd,
}

impl Compression {
    /// The file name extension, with its leading dot: `.json` or `.json.zst`.
    pub fn extension(self) -> &'static str {
        match self {
            Self::None => ".json",
            Self::Zstd => ".json.zst",
        }
    }
}

/// The key of file `number` sealed at `ts_ms`: `{folder}/stream_{ts}_{N}.json` (`.json.zst` for
/// zstd).
///
/// `ts_ms` is written with at least 13 digits (zero-padded), so keys of files sealed at
/// increasing times sort in that order (epoch milliseconds have 13 digits until the year 2286).
/// Leading and trailing `/` of `folder` are dropped; an empty folder gives a key at the bucket
/// root (`stream_{ts}_{N}.json`), never `/stream_…` nor the stock exporter's `None/stream_…`.
pub fn object_key(folder: &str, ts_ms: u64, number: u64, compression: Compression) -> String {
    let folder = folder.trim_matches('/');
    let name = format!("stream_{ts_ms:013}_{number}{}", compression.extension());
    if folder.is_empty() {
        name
    } else {
        format!("{folder}/{name}")
    }
}

/// The file number of `key` as the stock importer reads it
/// (docs/opencti-protocol.md#importer-listing: `int(key.split("_")[-1].split(".")[0])`): the digits
/// after the last `_` and before the next `.`. `None` when they are not a plain decimal number (the
/// importer would stop on a `ValueError`).
pub fn file_number(key: &str) -> Option<u64> {
    let last = key.rsplit('_').next()?;
    let digits = last.split('.').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_follow_the_stock_layout() {
        assert_eq!(
            object_key("opencti-stream", 1_700_000_000_123, 7, Compression::None),
            "opencti-stream/stream_1700000000123_7.json"
        );
        assert_eq!(
            object_key("/a/b/", 1_700_000_000_123, 7, Compression::Zstd),
            "a/b/stream_1700000000123_7.json.zst"
        );
        assert_eq!(
            object_key("", 5, 1, Compression::None),
            "stream_0000000000005_1.json"
        );
        assert_eq!(
            object_key("/", 1_700_000_000_000, 2, Compression::None),
            "stream_1700000000000_2.json"
        );
    }

    #[test]
    fn file_number_rejects_what_the_importer_cannot_parse() {
        assert_eq!(file_number("f/stream_1700000000000_12.json"), Some(12));
        assert_eq!(file_number("f/stream_1700000000000_12.json.zst"), Some(12));
        assert_eq!(file_number("f/stream_1700000000000_x.json"), None);
        assert_eq!(file_number("f/readme.txt"), None);
    }

    proptest! {
        #[test]
        fn the_importer_reads_the_number_back(
            folder in "/?([a-z0-9_.-]{1,8}(/[a-z0-9_.-]{1,8}){0,2})?/?",
            ts in 0u64..10_000_000_000_000,
            number in 1u64..u64::MAX,
            zstd in any::<bool>(),
        ) {
            let compression = if zstd { Compression::Zstd } else { Compression::None };
            let key = object_key(&folder, ts, number, compression);
            prop_assert_eq!(file_number(&key), Some(number));
            prop_assert!(!key.starts_with('/'));
            prop_assert!(!key.contains("//"));
        }

        #[test]
        fn later_files_sort_after_earlier_ones(
            ts in 1_000_000_000_000u64..9_000_000_000_000,
            gap in 1u64..1_000_000_000_000,
            n in 1u64..1_000_000,
        ) {
            let a = object_key("f", ts, n, Compression::None);
            let b = object_key("f", ts + gap, n + 1, Compression::None);
            prop_assert!(a < b);
        }
    }
}
