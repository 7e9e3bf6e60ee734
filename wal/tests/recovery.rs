//! Crash recovery cases built by hand: what a crash (or a damaged disk) can leave in `segments/`,
//! and what `open` and the readers must do about it.

mod support;

use std::io::Read;
use std::path::Path;

use support::{NOW_MS, open, read_segment, records};
use wal::{SegmentProblem, Wal, WalError, WalOptions};

/// A WAL with two sealed segments (1 and 2) and unsealed records; returns the raw content of
/// segment 2.
fn wal_with_two_segments(dir: &Path) -> Vec<u8> {
    let (wal, _) = open(dir);
    let appender = wal.appender();
    appender
        .append(records("one", 0..50), Some("1-0".into()))
        .wait()
        .unwrap();
    wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    appender
        .append(records("two", 0..50), Some("2-0".into()))
        .wait()
        .unwrap();
    wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    appender
        .append(records("three", 0..5), Some("3-0".into()))
        .wait()
        .unwrap();
    read_segment(&wal, 2)
}

fn segment_file(dir: &Path, number: u64) -> std::path::PathBuf {
    dir.join("segments")
        .join(format!("{number:020}.ndjson.zst"))
}

#[test]
fn a_segment_file_without_entry_is_deleted_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    wal_with_two_segments(tmp.path());
    // A crash after segment 3 was written and renamed, before its registration committed.
    let orphan = segment_file(tmp.path(), 3);
    std::fs::copy(segment_file(tmp.path(), 2), &orphan).unwrap();
    // A crash while segment 3 was being written.
    let tmp_file = tmp
        .path()
        .join("segments")
        .join(format!("{:020}.ndjson.zst.tmp", 3));
    std::fs::write(&tmp_file, b"partial").unwrap();
    // A file the WAL does not write is left alone.
    let foreign = tmp.path().join("segments").join("notes.txt");
    std::fs::write(&foreign, b"operator notes").unwrap();

    let (wal, report) = open(tmp.path());
    let mut deleted = report.orphans_deleted.clone();
    deleted.sort();
    assert_eq!(deleted, vec![orphan.clone(), tmp_file.clone()]);
    assert!(!orphan.exists() && !tmp_file.exists());
    assert_eq!(report.foreign_files, vec![foreign.clone()]);
    assert!(foreign.exists());
    assert!(report.damaged.is_empty());
    assert_eq!(report.segments, 2);
    // Number 3 is sealed next, from the unsealed records.
    let meta = wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    assert_eq!(meta.number, 3);
    assert_eq!(support::segment_records(&wal, 3), records("three", 0..5));
}

#[test]
fn the_file_of_an_uploaded_segment_left_by_a_crash_is_deleted_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    wal_with_two_segments(tmp.path());
    let kept = std::fs::read(segment_file(tmp.path(), 1)).unwrap();
    {
        let (wal, _) = open(tmp.path());
        wal.mark_uploaded(1, NOW_MS).unwrap();
    }
    // A crash between the commit that forgot segment 1 and the deletion of its file.
    std::fs::write(segment_file(tmp.path(), 1), kept).unwrap();
    let (wal, report) = open(tmp.path());
    assert_eq!(report.orphans_deleted, vec![segment_file(tmp.path(), 1)]);
    assert_eq!(wal.segments().first().map(|m| m.number), Some(2));
}

#[test]
fn an_entry_whose_file_is_missing_is_reported_and_refused() {
    let tmp = tempfile::tempdir().unwrap();
    wal_with_two_segments(tmp.path());
    std::fs::remove_file(segment_file(tmp.path(), 1)).unwrap();
    let (wal, report) = open(tmp.path());
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].number, 1);
    assert_eq!(report.damaged[0].path, segment_file(tmp.path(), 1));
    assert_eq!(report.damaged[0].problem, SegmentProblem::Missing);
    match wal.open_segment(1) {
        Err(err @ WalError::SegmentDamaged { number: 1, .. }) => {
            let text = err.to_string();
            assert!(
                text.contains("segment 1") && text.contains("missing"),
                "{text}"
            );
        }
        Err(other) => panic!("expected SegmentDamaged, got {other}"),
        Ok(_) => panic!("a missing segment was opened"),
    }
    assert!(wal.open_segment_stored(1).is_err());
    // The rest of the WAL keeps working: segment 2 reads, new records append and seal.
    assert_eq!(support::segment_records(&wal, 2), records("two", 0..50));
    wal.appender()
        .append(records("four", 0..1), None)
        .wait()
        .unwrap();
    assert_eq!(wal.seal(u64::MAX, NOW_MS).unwrap().unwrap().number, 3);
}

#[test]
fn a_truncated_segment_is_reported_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    wal_with_two_segments(tmp.path());
    let path = segment_file(tmp.path(), 2);
    let full = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(full / 2).unwrap();
    drop(file);
    let (wal, report) = open(tmp.path());
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(
        report.damaged[0].problem,
        SegmentProblem::WrongSize {
            expected: full,
            found: full / 2
        }
    );
    assert!(matches!(
        wal.open_segment(2),
        Err(WalError::SegmentDamaged { number: 2, .. })
    ));
    // Segment 1 is unaffected.
    assert_eq!(support::segment_records(&wal, 1), records("one", 0..50));
}

#[test]
fn a_segment_truncated_after_open_fails_its_reader_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    wal_with_two_segments(tmp.path());
    let (wal, _) = open(tmp.path());
    let path = segment_file(tmp.path(), 2);
    let full = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(full - 3)
        .unwrap();
    let mut out = Vec::new();
    let err = wal
        .open_segment(2)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("segment 2"), "{err}");
    let err = wal
        .open_segment_stored(2)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("segment 2"), "{err}");
}

/// Flips a byte in the middle of segment 2, keeping its size.
fn corrupt_segment_2(dir: &Path) {
    let path = segment_file(dir, 2);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn a_segment_with_a_bad_checksum_fails_its_readers_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    wal_with_two_segments(tmp.path());
    corrupt_segment_2(tmp.path());
    // Same size: a plain open cannot tell; the readers do.
    let (wal, report) = open(tmp.path());
    assert!(report.damaged.is_empty());
    let mut out = Vec::new();
    let err = wal
        .open_segment(2)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("segment 2"), "{err}");
    let mut stored = Vec::new();
    let err = wal
        .open_segment_stored(2)
        .unwrap()
        .read_to_end(&mut stored)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("segment 2"), "{err}");
}

#[test]
fn verify_on_open_reports_a_bad_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    wal_with_two_segments(tmp.path());
    corrupt_segment_2(tmp.path());
    let mut options = WalOptions::new(tmp.path(), 1 << 40);
    options.verify_segments_on_open = true;
    let (wal, report) = Wal::open(options).unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].number, 2);
    assert_eq!(report.damaged[0].problem, SegmentProblem::BadChecksum);
    assert!(matches!(
        wal.open_segment(2),
        Err(WalError::SegmentDamaged { number: 2, .. })
    ));
}

#[test]
fn a_damaged_segment_can_still_be_marked_uploaded_to_move_on() {
    let tmp = tempfile::tempdir().unwrap();
    wal_with_two_segments(tmp.path());
    std::fs::remove_file(segment_file(tmp.path(), 1)).unwrap();
    let (wal, report) = open(tmp.path());
    assert_eq!(report.damaged.len(), 1);
    wal.mark_uploaded(1, NOW_MS).unwrap();
    assert_eq!(wal.segments().first().map(|m| m.number), Some(2));
    drop(wal);
    let (_, report) = open(tmp.path());
    assert!(report.damaged.is_empty());
}

#[test]
fn recovery_keeps_the_unsealed_backlog_and_state() {
    let tmp = tempfile::tempdir().unwrap();
    let segment_2 = wal_with_two_segments(tmp.path());
    let (wal, report) = open(tmp.path());
    assert_eq!(report.backlog.records, 5);
    assert_eq!(wal.state().cursor.as_deref(), Some("3-0"));
    assert_eq!(wal.state().next_file_number, 3);
    assert_eq!(read_segment(&wal, 2), segment_2);
}

#[test]
fn a_segment_replaced_by_another_valid_one_fails_the_checksum_check() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    // Same shape, different content: the files decompress fine and have the same size.
    appender.append(records("a", 0..50), None).wait().unwrap();
    let one = wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    appender.append(records("b", 0..50), None).wait().unwrap();
    let two = wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    assert_eq!(
        one.stored_bytes, two.stored_bytes,
        "test data must compress to equal sizes"
    );
    assert_ne!(one.raw_checksum, two.raw_checksum);
    std::fs::copy(segment_file(tmp.path(), 1), segment_file(tmp.path(), 2)).unwrap();
    let mut out = Vec::new();
    let err = wal
        .open_segment(2)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    let text = err.to_string();
    assert!(
        text.contains("segment 2") && text.contains("CRC32C"),
        "{text}"
    );
}
