//! Tests that need the writer's fault-injection points: group commit made deterministic, and a
//! commit that fails.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::{Wal, WalError, WalOptions};

fn open(dir: &std::path::Path) -> Wal {
    Wal::open(WalOptions::new(dir, 1 << 40)).unwrap().0
}

fn records(prefix: &str, n: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{prefix}-{i}")))
        .collect()
}

#[test]
fn everything_queued_during_a_commit_shares_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = open(tmp.path());
    let appender = wal.appender();
    let held = wal.faults().hold.lock().unwrap();
    let pending: Vec<_> = (0..200)
        .map(|i| appender.append(records(&format!("g{i}"), 3), Some(format!("{i}-0"))))
        .collect();
    drop(held);
    let results: Vec<_> = pending.into_iter().map(|p| p.wait().unwrap()).collect();
    let stats = wal.stats();
    assert_eq!(
        stats.commits.load(Ordering::Relaxed),
        1,
        "one flush and fsync for 200 appends"
    );
    assert_eq!(stats.groups.load(Ordering::Relaxed), 200);
    let firsts: Vec<u64> = results.iter().map(|c| c.first_seq).collect();
    assert_eq!(firsts, (0..200).map(|i| i * 3).collect::<Vec<_>>());
    assert_eq!(wal.state().cursor.as_deref(), Some("199-0"));
}

#[test]
fn a_commit_bigger_than_the_limit_is_split_between_whole_groups() {
    let tmp = tempfile::tempdir().unwrap();
    let mut options = WalOptions::new(tmp.path(), 1 << 40);
    options.max_commit_bytes = 1000;
    let wal = Wal::open(options).unwrap().0;
    let appender = wal.appender();
    let held = wal.faults().hold.lock().unwrap();
    // 10 groups of 3 records of ~100 bytes (~300 raw bytes each): 3 groups per commit.
    let record = Bytes::from(vec![b'x'; 99]);
    let pending: Vec<_> = (0..10)
        .map(|_| appender.append(vec![record.clone(); 3], None))
        .collect();
    drop(held);
    for p in pending {
        p.wait().unwrap();
    }
    let commits = wal.stats().commits.load(Ordering::Relaxed);
    assert_eq!(
        commits, 4,
        "groups of 300 bytes under a 1000-byte limit: 3+3+3+1"
    );
}

#[test]
fn a_failed_commit_fails_all_its_requests_and_poisons_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = open(tmp.path());
    let appender = wal.appender();
    appender
        .append(records("before", 2), Some("1-0".into()))
        .wait()
        .unwrap();

    let held = wal.faults().hold.lock().unwrap();
    wal.faults().fail_next_sync.store(true, Ordering::SeqCst);
    let pending: Vec<_> = (0..5)
        .map(|i| {
            appender.append(
                records(&format!("lost{i}"), 2),
                Some(format!("{}-0", i + 2)),
            )
        })
        .collect();
    drop(held);
    for p in pending {
        match p.wait() {
            Err(WalError::CommitFailed { .. }) => {}
            other => panic!("expected CommitFailed, got {other:?}"),
        }
    }
    // Nothing of the failed commit is visible, and nothing is accepted after it.
    assert_eq!(wal.state().cursor.as_deref(), Some("1-0"));
    assert_eq!(wal.backlog().records, 2);
    assert!(matches!(
        appender.append(records("after", 1), None).wait(),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(
        wal.seal(u64::MAX, 1_718_012_346_001),
        Err(WalError::Poisoned { .. })
    ));
    assert_eq!(wal.stats().commit_failures.load(Ordering::Relaxed), 1);
    drop((appender, wal));

    // After a reopen the failed commit is there whole or not at all.
    let wal = open(tmp.path());
    let state = wal.state();
    let backlog = wal.backlog();
    match state.cursor.as_deref() {
        Some("1-0") => assert_eq!(backlog.records, 2),
        Some("6-0") => assert_eq!(backlog.records, 12),
        other => panic!("partial commit visible: cursor {other:?}, backlog {backlog:?}"),
    }
    let appender = wal.appender();
    appender
        .append(records("again", 1), Some("7-0".into()))
        .wait()
        .unwrap();
}

/// `groups` MiB of poorly compressible records in commits of 1 MiB.
fn fill_with_incompressible_frames(wal: &Wal, groups: usize) {
    let appender = wal.appender();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut pending = Vec::new();
    for group in 0..groups {
        let records: Vec<Bytes> = (0..256)
            .map(|_| {
                let text: String = (0..4000)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        char::from(b'a' + (state % 26) as u8)
                    })
                    .collect();
                Bytes::from(text)
            })
            .collect();
        pending.push(appender.append(records, Some(format!("{group}-0"))));
    }
    for p in pending {
        p.wait().unwrap();
    }
}

#[test]
fn log_files_are_deleted_once_the_seal_of_their_frames_is_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = open(tmp.path());
    // About 7 MiB stored (random letters compress to about 60 %): several files of the log.
    fill_with_incompressible_frames(&wal, 12);
    let files = wal.log_files();
    assert!(files.len() >= 3, "{files:?}");
    // A seal of the first few MiB leaves the first file (at least) in use.
    wal.seal(2 << 20, 1_718_012_346_001).unwrap().unwrap();
    assert_eq!(wal.log_files(), files, "no file is wholly sealed yet");
    wal.seal(u64::MAX, 1_718_012_346_002).unwrap().unwrap();
    let after = wal.log_files();
    assert!(
        after.len() <= 1
            && after
                .iter()
                .all(|f| f > files.last().unwrap() || files.last() == Some(f)),
        "the files of sealed frames are deleted: {files:?} -> {after:?}"
    );
    assert_eq!(wal.backlog().records, 0);
    // The WAL goes on after the deletion, and after a reopen.
    wal.appender()
        .append(records("after", 3), Some("9-0".into()))
        .wait()
        .unwrap();
    drop(wal);
    let (wal, report) = Wal::open(WalOptions::new(tmp.path(), 1 << 40)).unwrap();
    assert_eq!(report.backlog.records, 3);
    assert_eq!(report.frames_replayed, 1);
    let meta = wal.seal(u64::MAX, 1_718_012_346_003).unwrap().unwrap();
    assert_eq!((meta.number, meta.records), (3, 3));
}

#[test]
fn a_sealed_log_file_brought_back_by_a_crash_is_deleted_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let kept = tempfile::tempdir().unwrap();
    let first;
    {
        let wal = open(tmp.path());
        fill_with_incompressible_frames(&wal, 6);
        let files = wal.log_files();
        assert!(files.len() >= 2, "{files:?}");
        first = crate::log::file_path(&tmp.path().join("frames"), files[0]);
        std::fs::copy(&first, kept.path().join("first")).unwrap();
        wal.seal(u64::MAX, 1_718_012_346_001).unwrap().unwrap();
        assert!(!first.exists());
    }
    // As if a power cut had undone the deletion.
    std::fs::copy(kept.path().join("first"), &first).unwrap();
    let (wal, report) = Wal::open(WalOptions::new(tmp.path(), 1 << 40)).unwrap();
    assert_eq!(report.sealed_log_files_deleted, 1, "{report:?}");
    assert!(!first.exists());
    assert_eq!(report.backlog.records, 0);
    wal.appender()
        .append(records("after", 3), Some("9-0".into()))
        .wait()
        .unwrap();
    let meta = wal.seal(u64::MAX, 1_718_012_346_001).unwrap().unwrap();
    assert_eq!((meta.number, meta.records), (2, 3));
}

/// The last log file of the WAL in `dir`.
fn last_log_file(dir: &std::path::Path) -> std::path::PathBuf {
    let frames = dir.join("frames");
    let (files, _) = crate::log::list_files(&frames).unwrap();
    crate::log::file_path(&frames, *files.last().unwrap())
}

#[test]
fn an_entry_cut_short_at_the_end_of_the_log_is_truncated_and_the_rest_kept() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let wal = open(tmp.path());
        let appender = wal.appender();
        appender
            .append(records("kept", 5), Some("1-0".into()))
            .wait()
            .unwrap();
        appender
            .append(records("cut", 5), Some("2-0".into()))
            .wait()
            .unwrap();
    }
    let path = last_log_file(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    // Find where the second entry starts: after the first entry's prefix and body.
    let first_len = 12 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for cut in [first_len + 3, first_len + 20, bytes.len() - 1] {
        let tmp_cut = tempfile::tempdir().unwrap();
        copy_dir(tmp.path(), tmp_cut.path());
        let cut_path = last_log_file(tmp_cut.path());
        std::fs::write(&cut_path, &bytes[..cut]).unwrap();
        let (wal, report) = Wal::open(WalOptions::new(tmp_cut.path(), 1 << 40)).unwrap();
        assert_eq!(
            report.torn_tail_bytes,
            (cut - first_len) as u64,
            "{report:?}"
        );
        assert_eq!(wal.state().cursor.as_deref(), Some("1-0"));
        assert_eq!(wal.backlog().records, 5);
        assert_eq!(
            std::fs::metadata(&cut_path).unwrap().len(),
            first_len as u64
        );
        wal.appender()
            .append(records("again", 2), Some("3-0".into()))
            .wait()
            .unwrap();
        let meta = wal.seal(u64::MAX, 1_718_012_346_001).unwrap().unwrap();
        assert_eq!(meta.records, 7);
    }
    // Damage followed by more bytes is not a cut write: the open fails.
    let mut damaged = bytes.clone();
    damaged[first_len + 40] ^= 0x01;
    let tmp_bad = tempfile::tempdir().unwrap();
    copy_dir(tmp.path(), tmp_bad.path());
    let mut longer = damaged;
    longer.extend_from_slice(&[7u8; 64]);
    std::fs::write(last_log_file(tmp_bad.path()), &longer).unwrap();
    match Wal::open(WalOptions::new(tmp_bad.path(), 1 << 40)) {
        Err(WalError::Corrupt { what }) => assert!(what.contains("damaged"), "{what}"),
        other => panic!(
            "expected a corrupt frame log, got {:?}",
            other.map(|(_, r)| r)
        ),
    }
}

#[test]
fn a_damaged_entry_the_state_counts_fails_the_open() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let wal = open(tmp.path());
        let appender = wal.appender();
        appender
            .append(records("a", 50), Some("1-0".into()))
            .wait()
            .unwrap();
        // A seal of part of it stores the state, whose log end counts the entry.
        wal.seal(10, 1_718_012_346_001).unwrap().unwrap();
    }
    let path = last_log_file(tmp.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    match Wal::open(WalOptions::new(tmp.path(), 1 << 40)) {
        Err(WalError::Corrupt { what }) => assert!(what.contains("damaged"), "{what}"),
        other => panic!(
            "expected a corrupt frame log, got {:?}",
            other.map(|(_, r)| r)
        ),
    }
}

/// Copies a closed WAL directory (files and folders, one level of nesting below it).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
