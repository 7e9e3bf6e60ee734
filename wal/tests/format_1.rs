//! A WAL written by format 1 (MD5s in segment entries, no CRC32C in frame headers) with a
//! backlog, opened by this version: read as it is, nothing lost, new data in format 2.
//!
//! `fixtures/wal-format-1.tar.gz` is a WAL directory written by the last format-1 version of this
//! crate: the records of [`record`] appended in groups of 40 ×10, 600, 40 ×9, 600, 30 ×8 and 800
//! (each group setting the cursor `"{last}-0"`), then `seal(100_000)` (segment 1),
//! `seal(300_000)` (segment 2) and `mark_uploaded(1)`. So it holds one sealed segment waiting for
//! its upload (with MD5s) and an unsealed backlog of small frames, the rest of a cut frame and a
//! whole large frame, none with a CRC32C.

mod support;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use support::{NOW_MS, crc32c, ndjson, open, read_segment, segment_records};
use wal::{Checksum, Wal, WalOptions};

/// Records appended to the fixture.
const RECORDS: usize = 3_000;

/// Record `i` of the fixture.
fn record(i: usize) -> Bytes {
    let pad: String = (0..(i * 7) % 400)
        .map(|k| char::from(b'a' + (k % 26) as u8))
        .collect();
    Bytes::from(format!(
        "{{\"id\":\"{i}-0\",\"seq\":{i},\"pad\":\"{pad}\"}}"
    ))
}

/// Unpacks the fixture into `dir`.
fn unpack_fixture(dir: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-format-1.tar.gz");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("tar runs");
    assert!(status.success(), "unpacking {}", fixture.display());
}

fn marker(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("WAL_FORMAT")).unwrap()
}

#[test]
fn a_format_1_wal_with_a_backlog_is_read_as_it_is_and_continued_in_format_2() {
    let tmp = tempfile::tempdir().unwrap();
    unpack_fixture(tmp.path());
    assert_eq!(
        marker(tmp.path()).trim_end(),
        "opencti-stream-exporter wal 1"
    );

    let (wal, report) = open(tmp.path());
    assert!(report.damaged.is_empty(), "{report:?}");
    assert_eq!(
        marker(tmp.path()).trim_end(),
        "opencti-stream-exporter wal 2"
    );
    assert_eq!(
        wal.state().cursor.as_deref(),
        Some(&*format!("{}-0", RECORDS - 1))
    );

    // The sealed segment waiting for its upload: as format 1 sealed it, checked against its MD5.
    let segments = wal.segments();
    assert_eq!(segments.iter().map(|s| s.number).collect::<Vec<_>>(), [2]);
    let two = &segments[0];
    assert!(matches!(two.raw_checksum, Checksum::Md5(_)), "{two:?}");
    assert!(matches!(two.stored_checksum, Checksum::Md5(_)), "{two:?}");
    let first = usize::try_from(two.first_record).unwrap();
    let mut read = segment_records(&wal, 2);
    assert_eq!(read.first(), Some(&record(first)));

    // The backlog of format-1 frames seals into a format-2 segment, and new records follow.
    let three = wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    assert_eq!(three.number, 3);
    assert_eq!(three.first_record, two.first_record + two.records);
    let raw = read_segment(&wal, 3);
    assert_eq!(three.raw_checksum, crc32c(&raw));
    read.extend(support::lines(&raw));
    let more: Vec<Bytes> = (RECORDS..RECORDS + 100).map(record).collect();
    wal.appender()
        .append(more, Some(format!("{}-0", RECORDS + 99)))
        .wait()
        .unwrap();
    let four = wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    assert!(matches!(four.raw_checksum, Checksum::Crc32c(_)));
    read.extend(segment_records(&wal, 4));

    let expected: Vec<Bytes> = (first..RECORDS + 100).map(record).collect();
    assert_eq!(read.len(), expected.len());
    assert!(read == expected, "the records read back differ");
    assert_eq!(
        ndjson(&read).len() as u64,
        two.raw_bytes + three.raw_bytes + four.raw_bytes
    );
    for number in 2..=4 {
        wal.mark_uploaded(number, NOW_MS).unwrap();
    }
    assert_eq!(wal.backlog().records, 0);
}

#[test]
fn a_damaged_format_1_segment_is_found_by_its_md5() {
    let tmp = tempfile::tempdir().unwrap();
    unpack_fixture(tmp.path());
    let path = tmp
        .path()
        .join("segments")
        .join(format!("{:020}.ndjson.zst", 2));
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();

    let mut options = WalOptions::new(tmp.path(), 1 << 40);
    options.verify_segments_on_open = true;
    let (wal, report) = Wal::open(options).unwrap();
    assert_eq!(
        report.damaged.iter().map(|d| d.number).collect::<Vec<_>>(),
        [2],
        "{report:?}"
    );
    assert!(wal.open_segment(2).is_err());
}
