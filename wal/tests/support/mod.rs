//! Helpers shared by the WAL's integration tests.
#![allow(dead_code)]

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use wal::{RecoveryReport, SegmentMeta, Wal, WalOptions};

/// A timestamp with 13 digits (2024-06-10).
pub const NOW_MS: u64 = 1_718_012_346_001;

/// Opens (or creates) a WAL in `dir` with a large budget.
pub fn open(dir: &Path) -> (Wal, RecoveryReport) {
    Wal::open(WalOptions::new(dir, 1 << 40)).expect("open WAL")
}

/// Records `"{prefix}-{i}"` for i in range.
pub fn records(prefix: &str, range: std::ops::Range<usize>) -> Vec<Bytes> {
    range
        .map(|i| Bytes::from(format!("{{\"id\":\"{prefix}-{i}\"}}")))
        .collect()
}

/// A record of exactly `len` bytes (no newline).
pub fn record_of_len(tag: usize, len: usize) -> Bytes {
    let mut s = format!("{tag}:");
    while s.len() < len {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s.truncate(len);
    Bytes::from(s)
}

/// The raw NDJSON of records.
pub fn ndjson(records: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(r);
        out.push(b'\n');
    }
    out
}

/// Reads a segment's raw content (verified by the reader).
pub fn read_segment(wal: &Wal, number: u64) -> Vec<u8> {
    let mut out = Vec::new();
    wal.open_segment(number)
        .expect("open segment")
        .read_to_end(&mut out)
        .expect("read segment");
    out
}

/// Reads a segment's records.
pub fn segment_records(wal: &Wal, number: u64) -> Vec<Bytes> {
    lines(&read_segment(wal, number))
}

/// Splits NDJSON into records.
pub fn lines(raw: &[u8]) -> Vec<Bytes> {
    assert!(
        raw.is_empty() || raw.ends_with(b"\n"),
        "NDJSON must end with a newline"
    );
    raw.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(Bytes::copy_from_slice)
        .collect()
}

/// Seals everything unsealed into as few segments as `max` allows and returns their metas.
pub fn seal_all(wal: &Wal, max: u64) -> Vec<SegmentMeta> {
    let mut sealed = Vec::new();
    let mut guard = 0;
    while let Some(meta) = wal.seal(max, NOW_MS).expect("seal") {
        sealed.push(meta);
        guard += 1;
        assert!(guard < 100_000, "seal never ran out of records");
    }
    sealed
}

/// The checksum the WAL records for bytes it seals.
pub fn crc32c(bytes: &[u8]) -> wal::Checksum {
    wal::Checksum::crc32c_of(bytes)
}
