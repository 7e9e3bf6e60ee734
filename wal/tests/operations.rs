//! Every public operation of the WAL, one behaviour per test.

mod support;

use std::collections::BTreeMap;
use std::io::Read;

use bytes::Bytes;
use support::{
    NOW_MS, crc32c, ndjson, open, read_segment, record_of_len, records, seal_all, segment_records,
};
use wal::{
    Group, InitialState, RecoverUntil, StateChange, UploadRecord, Wal, WalError, WalOptions,
};

// ---------------------------------------------------------------- open

#[test]
fn open_creates_a_wal_in_a_missing_directory_and_reopens_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("wal");
    let (wal, report) = open(&dir);
    assert!(report.created);
    assert!(dir.join("WAL_FORMAT").is_file());
    assert!(dir.join("segments").is_dir());
    assert!(wal.is_new());
    let state = wal.state();
    assert_eq!(state.cursor, None);
    assert_eq!(state.next_file_number, 1);
    assert_eq!(state.recover_until, RecoverUntil::Unset);
    drop(wal);
    let (wal, report) = open(&dir);
    assert!(!report.created);
    assert!(wal.is_new());
}

#[test]
fn an_empty_existing_directory_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let (_wal, report) = open(tmp.path());
    assert!(report.created);
}

#[test]
fn a_directory_held_by_another_handle_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_wal, _) = open(tmp.path());
    match Wal::open(WalOptions::new(tmp.path(), 1 << 30)) {
        Err(WalError::Locked { dir, .. }) => assert_eq!(dir, tmp.path()),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open of a held WAL succeeded"),
    }
}

#[test]
fn dropping_the_wal_releases_the_directory_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..20 {
        let (wal, _) = open(tmp.path());
        let appender = wal.appender();
        appender
            .append(records("r", i..i + 1), Some(format!("{i}-0")))
            .wait()
            .unwrap();
        if i % 3 == 0 {
            wal.seal(u64::MAX, NOW_MS).unwrap();
        }
        drop((appender, wal));
    }
    let (wal, _) = open(tmp.path());
    assert_eq!(wal.state().cursor.as_deref(), Some("19-0"));
    assert_eq!(wal.state().next_record_seq, 20);
}

#[test]
fn a_non_empty_directory_without_the_marker_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("precious.txt"), b"not a WAL").unwrap();
    let err = Wal::open(WalOptions::new(tmp.path(), 1 << 30))
        .err()
        .expect("refused");
    assert!(matches!(err, WalError::NotAWal { .. }), "{err}");
    assert!(err.to_string().contains("precious.txt"), "{err}");
    // Nothing was written into it.
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "LOCK")
        .collect();
    assert_eq!(names, vec!["precious.txt".to_string()]);
}

#[test]
fn a_marker_of_another_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("WAL_FORMAT"),
        b"opencti-stream-exporter wal 99\n",
    )
    .unwrap();
    let err = Wal::open(WalOptions::new(tmp.path(), 1 << 30))
        .err()
        .expect("refused");
    assert!(matches!(err, WalError::UnsupportedFormat { .. }), "{err}");
}

// ---------------------------------------------------------------- append

#[test]
fn appended_groups_are_durable_and_survive_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    let first = appender
        .append(records("a", 0..3), Some("1-0".into()))
        .wait()
        .unwrap();
    assert_eq!((first.first_seq, first.records), (0, 3));
    let second = appender
        .append(records("a", 3..5), Some("2-0".into()))
        .wait()
        .unwrap();
    assert_eq!((second.first_seq, second.records), (3, 2));
    assert_eq!(wal.state().cursor.as_deref(), Some("2-0"));
    assert_eq!(wal.state().next_record_seq, 5);
    let backlog = wal.backlog();
    assert_eq!(backlog.records, 5);
    assert_eq!(backlog.raw_bytes, ndjson(&records("a", 0..5)).len() as u64);
    assert!(!wal.is_new());
    drop((appender, wal));

    let (wal, report) = open(tmp.path());
    assert_eq!(report.backlog, backlog);
    assert_eq!(wal.state().cursor.as_deref(), Some("2-0"));
    let meta = wal.seal(u64::MAX, NOW_MS).unwrap().expect("a segment");
    assert_eq!(segment_records(&wal, meta.number), records("a", 0..5));
}

#[test]
fn an_append_without_cursor_leaves_the_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    appender
        .append(records("a", 0..1), Some("1-0".into()))
        .wait()
        .unwrap();
    appender.append(records("a", 1..2), None).wait().unwrap();
    assert_eq!(wal.state().cursor.as_deref(), Some("1-0"));
    // A group with no record moves the cursor alone (a heartbeat).
    appender
        .append(Vec::new(), Some("9-0".into()))
        .wait()
        .unwrap();
    assert_eq!(wal.state().cursor.as_deref(), Some("9-0"));
    assert_eq!(wal.backlog().records, 2);
}

#[test]
fn records_that_are_not_lines_are_refused_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    let bad = vec![Bytes::from_static(b"ok"), Bytes::from_static(b"two\nlines")];
    match appender.append(bad, Some("1-0".into())).wait() {
        Err(WalError::InvalidRecord { index: 1, .. }) => {}
        other => panic!("expected InvalidRecord at 1, got {other:?}"),
    }
    let empty = vec![Bytes::new()];
    assert!(matches!(
        appender.append(empty, None).wait(),
        Err(WalError::InvalidRecord { index: 0, .. })
    ));
    assert_eq!(wal.state().cursor, None);
    assert_eq!(wal.backlog().records, 0);
    assert!(wal.is_new());
}

#[test]
fn concurrent_appends_complete_in_call_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    let pending: Vec<_> = (0..500)
        .map(|i| appender.append(records("c", i..i + 1), Some(format!("{i}-0"))))
        .collect();
    for (expected_seq, p) in (0u64..).zip(pending) {
        assert_eq!(p.wait().unwrap().first_seq, expected_seq);
    }
    assert_eq!(wal.state().cursor.as_deref(), Some("499-0"));
    let meta = wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    assert_eq!(segment_records(&wal, meta.number), records("c", 0..500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_can_be_awaited_from_async_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let mut tasks = Vec::new();
    for t in 0..4 {
        let appender = wal.appender();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let group = records(&format!("t{t}"), i..i + 1);
                appender.append(group, None).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(wal.backlog().records, 200);
}

#[test]
fn state_changes_commit_in_order_with_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    let a = appender.set_recover_until(RecoverUntil::Date("2024-06-01T00:00:00Z".into()));
    let b = appender.submit(Group {
        records: records("s", 0..2),
        cursor: Some("5-0".into()),
        changes: vec![StateChange::SetExtra {
            key: "connector".into(),
            value: b"v1".to_vec(),
        }],
    });
    let c = appender.set_recover_until(RecoverUntil::Disabled);
    a.wait().unwrap();
    b.wait().unwrap();
    c.wait().unwrap();
    let state = wal.state();
    assert_eq!(state.recover_until, RecoverUntil::Disabled);
    assert_eq!(
        state.extras.get("connector").map(Vec::as_slice),
        Some(&b"v1"[..])
    );
    appender
        .update(vec![StateChange::RemoveExtra {
            key: "connector".into(),
        }])
        .wait()
        .unwrap();
    drop((appender, wal));
    let (wal, _) = open(tmp.path());
    let state = wal.state();
    assert_eq!(state.recover_until, RecoverUntil::Disabled);
    assert!(state.extras.is_empty());
    assert_eq!(state.cursor.as_deref(), Some("5-0"));
}

#[test]
fn a_huge_record_is_committed_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    // Larger than max_commit_bytes (1 MiB) and than sled's blob threshold.
    let huge = record_of_len(1, 5 * 1024 * 1024);
    wal.appender()
        .append(vec![huge.clone()], Some("1-0".into()))
        .wait()
        .unwrap();
    let meta = wal.seal(1024, NOW_MS).unwrap().unwrap();
    assert_eq!(meta.records, 1);
    assert_eq!(segment_records(&wal, meta.number), vec![huge]);
    let blobs = std::fs::read_dir(tmp.path().join("db").join("blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "sled wrote blob files");
}

// ---------------------------------------------------------------- initialize

#[test]
fn initialize_seeds_a_new_wal_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let init = InitialState {
        cursor: Some("1718000000000-0".into()),
        recover_until: RecoverUntil::Date("2024-06-10T00:00:00Z".into()),
        next_file_number: 41,
        last_sealed_ts_ms: NOW_MS,
        extras: BTreeMap::from([("imported".to_string(), b"yes".to_vec())]),
    };
    wal.initialize(init.clone()).unwrap();
    let state = wal.state();
    assert_eq!(state.cursor, init.cursor);
    assert_eq!(state.next_file_number, 41);
    assert_eq!(state.last_sealed_ts_ms, NOW_MS);
    assert!(!wal.is_new());
    assert!(matches!(
        wal.initialize(init.clone()),
        Err(WalError::NotEmpty { .. })
    ));

    wal.appender()
        .append(records("i", 0..2), None)
        .wait()
        .unwrap();
    let meta = wal.seal(u64::MAX, NOW_MS - 5).unwrap().unwrap();
    assert_eq!(meta.number, 41);
    assert_eq!(meta.ts_ms, NOW_MS + 1);
    assert_eq!(meta.first_cursor, init.cursor);
}

#[test]
fn initialize_refuses_file_number_zero_and_a_wal_with_history() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let mut init = InitialState {
        cursor: None,
        recover_until: RecoverUntil::Unset,
        next_file_number: 0,
        last_sealed_ts_ms: 0,
        extras: BTreeMap::new(),
    };
    assert!(matches!(
        wal.initialize(init.clone()),
        Err(WalError::InvalidArgument { .. })
    ));
    wal.appender()
        .append(Vec::new(), Some("1-0".into()))
        .wait()
        .unwrap();
    init.next_file_number = 1;
    assert!(matches!(
        wal.initialize(init),
        Err(WalError::NotEmpty { .. })
    ));
}

// ---------------------------------------------------------------- seal

#[test]
fn seal_of_an_empty_wal_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    assert_eq!(wal.seal(1 << 20, NOW_MS).unwrap(), None);
    wal.appender()
        .append(Vec::new(), Some("1-0".into()))
        .wait()
        .unwrap();
    assert_eq!(wal.seal(1 << 20, NOW_MS).unwrap(), None);
    assert!(wal.segments().is_empty());
    assert_eq!(
        std::fs::read_dir(tmp.path().join("segments"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(wal.state().next_file_number, 1);
}

#[test]
fn seal_records_sizes_and_checksums_of_raw_and_stored_content() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let all = records("m", 0..100);
    wal.appender()
        .append(all.clone(), Some("100-0".into()))
        .wait()
        .unwrap();
    let meta = wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    let raw = ndjson(&all);
    assert_eq!(meta.number, 1);
    assert_eq!(meta.ts_ms, NOW_MS);
    assert_eq!(meta.sealed_at_ms, NOW_MS);
    assert_eq!(meta.records, 100);
    assert_eq!(meta.first_record, 0);
    assert_eq!(meta.raw_bytes, raw.len() as u64);
    assert_eq!(meta.raw_checksum, crc32c(&raw));
    let stored = std::fs::read(wal.segment_path(1)).unwrap();
    assert_eq!(meta.stored_bytes, stored.len() as u64);
    assert_eq!(meta.stored_checksum, crc32c(&stored));
    assert_eq!(zstd::decode_all(&stored[..]).unwrap(), raw);
    assert_eq!(read_segment(&wal, 1), raw);
    assert_eq!(wal.backlog().records, 0);
    assert_eq!(wal.state().next_file_number, 2);
    assert_eq!(wal.state().last_sealed_ts_ms, NOW_MS);
}

#[test]
fn seal_takes_records_up_to_the_byte_limit_exactly_across_and_inside_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    // Three groups of 10-byte records (11 raw bytes each).
    let mut all = Vec::new();
    for g in 0..3 {
        let group: Vec<Bytes> = (0..4).map(|i| record_of_len(g * 4 + i, 10)).collect();
        all.extend(group.clone());
        appender
            .append(group, Some(format!("{g}-0")))
            .wait()
            .unwrap();
    }
    // 5 records fit in 55 bytes (and not in 54).
    let first = wal.seal(55, NOW_MS).unwrap().unwrap();
    assert_eq!(first.records, 5);
    assert_eq!(first.raw_bytes, 55);
    let second = wal.seal(54, NOW_MS).unwrap().unwrap();
    assert_eq!(second.records, 4);
    let third = wal.seal(1000, NOW_MS).unwrap().unwrap();
    assert_eq!(third.records, 3);
    assert_eq!(wal.seal(1000, NOW_MS).unwrap(), None);
    let mut read = Vec::new();
    for n in 1..=3 {
        read.extend(segment_records(&wal, n));
    }
    assert_eq!(read, all);
    assert_eq!(
        (first.first_record, second.first_record, third.first_record),
        (0, 5, 9)
    );
}

#[test]
fn seals_cut_a_large_frame_anywhere_and_keep_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let mut options = WalOptions::new(tmp.path(), 1 << 40);
    options.max_commit_bytes = 8 << 20;
    let (wal, _) = Wal::open(options).unwrap();
    // One commit of ~3 MiB: seals of 700 KB cut it several times, far from its start.
    let all: Vec<Bytes> = (0..3000).map(|i| record_of_len(i, 1000 + i % 97)).collect();
    wal.appender()
        .append(all.clone(), Some("1-0".into()))
        .wait()
        .unwrap();
    let metas = seal_all(&wal, 700_000);
    assert!(metas.len() >= 4, "{} segments", metas.len());
    let mut read = Vec::new();
    for meta in &metas {
        assert!(meta.raw_bytes <= 700_000);
        let content = read_segment(&wal, meta.number);
        assert_eq!(meta.raw_checksum, crc32c(&content));
        read.extend(support::lines(&content));
    }
    assert_eq!(read, all);
}

#[test]
fn a_record_larger_than_the_limit_is_sealed_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let big = record_of_len(0, 500);
    let small = record_of_len(1, 10);
    wal.appender()
        .append(vec![small.clone(), big.clone(), small.clone()], None)
        .wait()
        .unwrap();
    let metas = seal_all(&wal, 100);
    let counts: Vec<u64> = metas.iter().map(|m| m.records).collect();
    assert_eq!(counts, vec![1, 1, 1]);
    assert_eq!(segment_records(&wal, 2), vec![big]);
}

#[test]
fn segment_cursors_never_skip_an_unsealed_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    // Queue everything before the writer commits, so it can land in one frame; the cursors must
    // be right whatever the commit boundaries are.
    let pending = vec![
        appender.append(
            vec![record_of_len(0, 10), record_of_len(1, 10)],
            Some("A".into()),
        ),
        appender.append(vec![record_of_len(2, 10)], None),
        appender.append(
            vec![record_of_len(3, 10), record_of_len(4, 10)],
            Some("B".into()),
        ),
        appender.append(Vec::new(), Some("heartbeat".into())),
    ];
    for p in pending {
        p.wait().unwrap();
    }
    // Records 0..3 (the first group and the cursor-less one): last cursor is A's.
    let first = wal.seal(33, NOW_MS).unwrap().unwrap();
    assert_eq!(first.records, 3);
    assert_eq!(first.first_cursor, None);
    assert_eq!(first.last_cursor.as_deref(), Some("A"));
    // Record 3 alone: B's group is not wholly sealed, so the cursor stays at A.
    let second = wal.seal(11, NOW_MS).unwrap().unwrap();
    assert_eq!(second.first_cursor.as_deref(), Some("A"));
    assert_eq!(second.last_cursor.as_deref(), Some("A"));
    // The rest: everything durable is sealed, so the current cursor is safe.
    let third = wal.seal(1000, NOW_MS).unwrap().unwrap();
    assert_eq!(third.first_cursor.as_deref(), Some("A"));
    assert_eq!(third.last_cursor.as_deref(), Some("heartbeat"));
}

#[test]
fn timestamps_strictly_increase_even_when_the_clock_goes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    let mut stamps = Vec::new();
    for (i, now) in [NOW_MS, NOW_MS, NOW_MS - 60_000, NOW_MS + 10, 5]
        .into_iter()
        .enumerate()
    {
        appender
            .append(records("t", i..i + 1), None)
            .wait()
            .unwrap();
        stamps.push(wal.seal(u64::MAX, now).unwrap().unwrap().ts_ms);
    }
    assert_eq!(
        stamps,
        vec![NOW_MS, NOW_MS + 1, NOW_MS + 2, NOW_MS + 10, NOW_MS + 11]
    );
    assert!(stamps.iter().all(|ts| ts.to_string().len() == 13));
}

#[test]
fn a_clock_before_2001_still_gives_13_digit_timestamps() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    wal.appender()
        .append(records("t", 0..1), None)
        .wait()
        .unwrap();
    let meta = wal.seal(u64::MAX, 0).unwrap().unwrap();
    assert_eq!(meta.ts_ms, 1_000_000_000_000);
}

#[test]
fn many_small_commits_are_sealed_compactly_and_large_ones_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    let mut all = Vec::new();
    // 300 one-record commits, then one commit of 200 KB.
    for i in 0..300 {
        let group = vec![record_of_len(i, 200)];
        all.extend(group.clone());
        appender.append(group, None).wait().unwrap();
    }
    let large: Vec<Bytes> = (0..100).map(|i| record_of_len(1000 + i, 2000)).collect();
    all.extend(large.clone());
    appender.append(large, None).wait().unwrap();
    let meta = wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    assert_eq!(segment_records(&wal, meta.number), all);
    // 300 separate zstd frames of 200 bytes would weigh more than the raw records.
    assert!(meta.stored_bytes < meta.raw_bytes / 4, "{meta:?}");
}

// ---------------------------------------------------------------- drain

#[test]
fn mark_uploaded_accepts_only_the_oldest_and_deletes_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let appender = wal.appender();
    for i in 0..3 {
        appender
            .append(records("u", i..i + 1), None)
            .wait()
            .unwrap();
        wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    }
    let numbers: Vec<u64> = wal.segments().iter().map(|m| m.number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    match wal.mark_uploaded(2, NOW_MS + 100) {
        Err(WalError::NotOldest {
            requested: 2,
            oldest: Some(1),
        }) => {}
        other => panic!("expected NotOldest, got {other:?}"),
    }
    let (ts_1, last_cursor_1) = (
        wal.segments()[0].ts_ms,
        wal.segments()[0].last_cursor.clone(),
    );
    wal.mark_uploaded(1, NOW_MS + 100).unwrap();
    assert!(!wal.segment_path(1).exists());
    assert_eq!(
        wal.state().last_upload,
        Some(UploadRecord {
            number: 1,
            ts_ms: ts_1,
            uploaded_at_ms: NOW_MS + 100,
            last_cursor: last_cursor_1,
        })
    );
    assert!(matches!(
        wal.open_segment(1),
        Err(WalError::UnknownSegment { number: 1 })
    ));
    wal.mark_uploaded(2, NOW_MS + 200).unwrap();
    wal.mark_uploaded(3, NOW_MS + 300).unwrap();
    assert!(wal.segments().is_empty());
    assert!(matches!(
        wal.mark_uploaded(4, NOW_MS),
        Err(WalError::NotOldest { oldest: None, .. })
    ));
    drop((appender, wal));
    let (wal, _) = open(tmp.path());
    assert_eq!(wal.state().last_upload.map(|u| u.number), Some(3));
    assert_eq!(wal.state().next_file_number, 4);
}

#[test]
fn stored_reader_yields_the_file_and_checks_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = open(tmp.path());
    let all = records("z", 0..1000);
    wal.appender().append(all.clone(), None).wait().unwrap();
    let meta = wal.seal(u64::MAX, NOW_MS).unwrap().unwrap();
    let mut stored = Vec::new();
    let mut reader = wal.open_segment_stored(meta.number).unwrap();
    assert_eq!(reader.meta(), &meta);
    reader.read_to_end(&mut stored).unwrap();
    assert_eq!(stored.len() as u64, meta.stored_bytes);
    assert_eq!(zstd::decode_all(&stored[..]).unwrap(), ndjson(&all));
    // Readers can be opened again (an upload retry).
    assert_eq!(support::lines(&read_segment(&wal, meta.number)), all);
    assert_eq!(support::lines(&read_segment(&wal, meta.number)), all);
}

// ---------------------------------------------------------------- budget

#[test]
fn disk_usage_counts_segments_and_the_database_against_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(WalOptions::new(tmp.path(), 10 * 1024 * 1024)).unwrap();
    let before = wal.disk_usage();
    assert_eq!(before.segment_bytes, 0);
    assert_eq!(before.max_bytes, 10 * 1024 * 1024);
    assert!(before.database_bytes > 0);
    assert!(before.fs_available_bytes.is_some());
    let records: Vec<Bytes> = (0..2000).map(|i| record_of_len(i, 1000)).collect();
    wal.appender().append(records, None).wait().unwrap();
    let a = wal.seal(1 << 20, NOW_MS).unwrap().unwrap();
    let b = wal.seal(1 << 20, NOW_MS).unwrap().unwrap();
    let usage = wal.disk_usage();
    assert_eq!(usage.segment_bytes, a.stored_bytes + b.stored_bytes);
    assert_eq!(usage.used(), usage.database_bytes + usage.segment_bytes);
    wal.mark_uploaded(a.number, NOW_MS).unwrap();
    assert_eq!(wal.disk_usage().segment_bytes, b.stored_bytes);

    let (tiny, _) = {
        drop(wal);
        Wal::open(WalOptions::new(tmp.path(), 1)).unwrap()
    };
    assert!(tiny.disk_usage().is_full());
}

#[test]
fn handles_and_readers_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<Wal>();
    send_sync::<wal::Appender>();
    send::<wal::PendingAppend>();
    // The uploader hands readers to an HTTP client as `Box<dyn Read + Send>`.
    send::<wal::SegmentReader>();
    send::<wal::StoredSegmentReader>();
    send_sync::<wal::WalStats>();
}
