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

/// Polls `done` until it holds, for at most ten seconds.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// ~6 MiB of poorly compressible records in commits of 1 MiB: sealing them leaves more sealed
/// chunks than one commit removes.
fn fill_with_incompressible_frames(wal: &Wal) {
    let appender = wal.appender();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut pending = Vec::new();
    for group in 0..6 {
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
fn sealed_frames_are_removed_after_the_seal_even_when_idle() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = open(tmp.path());
    fill_with_incompressible_frames(&wal);
    let frames_before = wal.stored_frames();
    assert!(frames_before.len() >= 6, "{frames_before:?}");
    wal.seal(u64::MAX, 1_718_012_346_001).unwrap().unwrap();
    // Nothing else is appended: the writer removes the rest on its own.
    eventually("removal of sealed frames", || {
        wal.stored_frames().is_empty()
    });
    assert_eq!(wal.backlog().records, 0);
}

#[test]
fn sealed_frames_left_by_a_stop_are_removed_after_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let wal = open(tmp.path());
        wal.faults().no_idle_gc.store(true, Ordering::SeqCst);
        fill_with_incompressible_frames(&wal);
        wal.seal(u64::MAX, 1_718_012_346_001).unwrap().unwrap();
        // The seal's commit removed only its share of the frames; the rest stays until reopened.
        assert!(!wal.stored_frames().is_empty());
    }
    let (wal, report) = Wal::open(WalOptions::new(tmp.path(), 1 << 40)).unwrap();
    assert!(report.sealed_frames_pending_removal > 0, "{report:?}");
    assert_eq!(report.backlog.records, 0);
    let first_unsealed = wal.first_unsealed_frame();
    assert!(
        wal.stored_frames().iter().all(|f| *f < first_unsealed),
        "only sealed frames are left"
    );
    eventually("removal of sealed frames", || {
        wal.stored_frames().is_empty()
    });
    // The WAL goes on: new records seal into the next segment.
    wal.appender()
        .append(records("after", 3), Some("9-0".into()))
        .wait()
        .unwrap();
    let meta = wal.seal(u64::MAX, 1_718_012_346_001).unwrap().unwrap();
    assert_eq!((meta.number, meta.records), (2, 3));
}
