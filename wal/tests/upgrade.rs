//! WALs written by formats 1 and 2 with a backlog, opened by this version: upgraded to format 3
//! (their unsealed frames moved to the frame log), nothing lost, new data in format 3.
//!
//! `fixtures/wal-format-1.tar.gz` and `fixtures/wal-format-2.tar.gz` are WAL directories written
//! by the last version of each format: the records of [`record`] appended in groups of 40 ×10,
//! 600, 40 ×9, 600, 30 ×8 and 800 (each group setting the cursor `"{last}-0"`; format 2 then
//! sets the extra `fixture` to `"format 2"`), then `seal(100_000)` (segment 1), `seal(300_000)`
//! (segment 2) and `mark_uploaded(1)`. So each holds one sealed segment waiting for its upload
//! (with MD5s in format 1, CRC32Cs in format 2) and an unsealed backlog in the database: small
//! frames, the rest of a cut frame and a whole large frame (without a CRC32C in format 1).

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

/// Unpacks the fixture of `format` into `dir`.
fn unpack_fixture(dir: &Path, format: u8) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/wal-format-{format}.tar.gz"));
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
fn a_format_1_wal_with_a_backlog_is_upgraded_and_continued_in_format_3() {
    upgrade_and_continue(1);
}

#[test]
fn a_format_2_wal_with_a_backlog_is_upgraded_and_continued_in_format_3() {
    upgrade_and_continue(2);
}

/// Opens the fixture of `format`, checks that nothing was lost by the upgrade (twice: an open
/// after the upgrade finds format 3), and goes on.
fn upgrade_and_continue(format: u8) {
    let tmp = tempfile::tempdir().unwrap();
    unpack_fixture(tmp.path(), format);
    assert_eq!(
        marker(tmp.path()).trim_end(),
        format!("opencti-stream-exporter wal {format}")
    );
    let backlog = {
        let (_upgraded, report) = open(tmp.path());
        assert!(report.damaged.is_empty(), "{report:?}");
        report.backlog
    };
    assert!(backlog.records > 0);
    assert_eq!(
        marker(tmp.path()).trim_end(),
        "opencti-stream-exporter wal 3"
    );
    let (wal, report) = open(tmp.path());
    assert_eq!(report.backlog, backlog);
    assert_eq!(
        wal.state().cursor.as_deref(),
        Some(&*format!("{}-0", RECORDS - 1))
    );
    if format == 2 {
        assert_eq!(
            wal.state().extras.get("fixture").map(Vec::as_slice),
            Some(&b"format 2"[..])
        );
    }

    // The sealed segment waiting for its upload: as its format sealed it, checked against its
    // MD5 (format 1) or CRC32C.
    let segments = wal.segments();
    assert_eq!(segments.iter().map(|s| s.number).collect::<Vec<_>>(), [2]);
    let two = &segments[0];
    if format == 1 {
        assert!(matches!(two.raw_checksum, Checksum::Md5(_)), "{two:?}");
        assert!(matches!(two.stored_checksum, Checksum::Md5(_)), "{two:?}");
    } else {
        assert!(matches!(two.raw_checksum, Checksum::Crc32c(_)), "{two:?}");
    }
    let first = usize::try_from(two.first_record).unwrap();
    let mut read = segment_records(&wal, 2);
    assert_eq!(read.first(), Some(&record(first)));
    assert_eq!(
        backlog.records,
        (RECORDS - first) as u64 - two.records,
        "the backlog is every record after segment 2"
    );

    // The backlog of moved frames seals into a segment, and new records follow.
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
    unpack_fixture(tmp.path(), 1);
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

#[test]
fn an_upgrade_cut_short_is_done_again_or_finished() {
    let clean = tempfile::tempdir().unwrap();
    unpack_fixture(clean.path(), 2);
    let expected = open(clean.path()).1.backlog;

    // Cut before the state of format 3 was stored: the log files of that attempt are rewritten.
    let tmp = tempfile::tempdir().unwrap();
    unpack_fixture(tmp.path(), 2);
    let frames = tmp.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for name in ["00000000000000000000.log", "00000000000000000031.log"] {
        std::fs::write(frames.join(name), b"an entry cut short by the crash").unwrap();
    }
    {
        let (wal, report) = open(tmp.path());
        assert_eq!(report.backlog, expected);
        assert!(report.damaged.is_empty(), "{report:?}");
        drop(wal);
    }

    // Cut after the state was stored, before the marker was rewritten: the upgrade finishes.
    std::fs::write(
        tmp.path().join("WAL_FORMAT"),
        "opencti-stream-exporter wal 2\n",
    )
    .unwrap();
    let (wal, report) = open(tmp.path());
    assert_eq!(report.backlog, expected);
    assert_eq!(
        marker(tmp.path()).trim_end(),
        "opencti-stream-exporter wal 3"
    );
    let sealed = wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    assert_eq!(sealed.records, expected.records);
    assert_eq!(sealed.raw_bytes, expected.raw_bytes);
}
