//! Crash test: a child process appends groups in a loop (while another of its threads seals and
//! "uploads" segments into a directory) and is killed with SIGKILL at random moments, again and
//! again. After every kill the parent reopens the WAL and proves the prefix property: every group
//! the child was told was durable is there, whole, in order; no partial group; the cursor is the
//! one of the last durable group that set one; uploaded files are gapless and a re-upload has the
//! same bytes.
//!
//! The child is this test binary, re-run on the ignored test `crash_child`. Group contents are a
//! pure function of the group id, so the parent knows exactly what must be there.
//!
//! Run it in release (`cargo nextest run -p wal --release --test crash`); in debug it is slower
//! but checks the same. `WAL_CRASH_SEED` replays a sequence of kill delays.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use wal::{Wal, WalError, WalOptions};

const KILLS: usize = 24;
const IN_FLIGHT: usize = 16;
const DIR_ENV: &str = "WAL_CRASH_DIR";
const START_ENV: &str = "WAL_CRASH_START_ID";
const DEADLINE: Duration = Duration::from_secs(60);

/// A well-mixed hash (splitmix64) so group shapes look random but are reproducible.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Number of records of group `id` (some groups have none: they only move the cursor).
fn group_len(id: u64) -> u64 {
    if id % 11 == 5 { 0 } else { 1 + mix(id) % 40 }
}

/// Whether group `id` sets the cursor (some groups do not, like dependency events).
fn sets_cursor(id: u64) -> bool {
    id % 7 != 3
}

/// The last group up to `acked` that leaves a trace in the WAL (records or a cursor): a group
/// with neither is acknowledged, yet nothing in the WAL can show it.
fn last_visible_group(acked: u64) -> Option<u64> {
    (0..=acked)
        .rev()
        .find(|id| group_len(*id) > 0 || sets_cursor(*id))
}

#[test]
fn an_acknowledged_group_without_records_or_cursor_leaves_no_trace() {
    // Group 4812 has no record and sets no cursor: a WAL ending at 4811 holds it.
    assert_eq!((group_len(4812), sets_cursor(4812)), (0, false));
    assert_eq!(last_visible_group(4812), Some(4811));
    assert_eq!(last_visible_group(4811), Some(4811));
}

fn cursor_of(id: u64) -> String {
    format!("g{id}")
}

fn record(id: u64, index: u64) -> Bytes {
    let n = group_len(id);
    let mut s = format!("g{id}:{index}/{n}:");
    let len = 20 + mix(id * 1000 + index) % 480;
    // Varied padding compresses poorly, so seals span many chunks and sealed frames take
    // several commits to remove: kills land in those too.
    let mut x = mix(id * 1000 + index);
    while (s.len() as u64) < len {
        x = mix(x);
        s.push(char::from(b'a' + (x % 26) as u8));
    }
    Bytes::from(s)
}

fn group(id: u64) -> Vec<Bytes> {
    (0..group_len(id)).map(|i| record(id, i)).collect()
}

/// The cursor expected once groups `0..=last` are durable.
fn expected_cursor(last: u64) -> Option<String> {
    (0..=last).rev().find(|id| sets_cursor(*id)).map(cursor_of)
}

fn options(dir: &Path) -> WalOptions {
    let mut options = WalOptions::new(dir.join("wal"), 1 << 40);
    // Small commits make more commits per second: more moments to be killed in.
    options.max_commit_bytes = 64 * 1024;
    options
}

// ------------------------------------------------------------------ child

/// The child: appends groups forever from `WAL_CRASH_START_ID`, printing `ack <id>` once each is
/// durable, while a second thread seals and uploads. Does nothing when run without the
/// environment the parent sets.
#[test]
#[ignore = "run by crash test as a child process"]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_ENV).map(PathBuf::from) else {
        return;
    };
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let (wal, _) = Wal::open(options(&dir)).unwrap();
    let sealer = {
        let wal = wal.clone();
        let dir = dir.clone();
        std::thread::spawn(move || seal_and_upload_forever(&wal, &dir))
    };
    let appender = wal.appender();
    let mut pending = std::collections::VecDeque::new();
    let mut stdout = std::io::stdout().lock();
    for id in start.. {
        let cursor = sets_cursor(id).then(|| cursor_of(id));
        pending.push_back((id, appender.append(group(id), cursor)));
        if pending.len() >= IN_FLIGHT {
            let (acked, p) = pending.pop_front().unwrap();
            p.wait().unwrap();
            writeln!(stdout, "ack {acked}").unwrap();
            stdout.flush().unwrap();
        }
        if sealer.is_finished() {
            panic!("the sealer thread stopped");
        }
    }
}

fn seal_and_upload_forever(wal: &Wal, dir: &Path) {
    let uploaded = dir.join("uploaded");
    std::fs::create_dir_all(&uploaded).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id().into());
    loop {
        // Small and large segments, with pauses that let a backlog build up.
        let max = if rng.random_bool(0.5) {
            rng.random_range(2_000..64_000)
        } else {
            rng.random_range(1_000_000..16_000_000)
        };
        let now = support::NOW_MS + rng.random_range(0..1000);
        wal.seal(max, now).unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(1..200)));
        // Keep a few segments waiting, like an uploader behind.
        while wal.segments().len() > 3 {
            let oldest = wal.segments()[0].number;
            let mut raw = Vec::new();
            wal.open_segment(oldest)
                .unwrap()
                .read_to_end(&mut raw)
                .unwrap();
            let target = uploaded.join(format!("{oldest}.json"));
            if let Ok(existing) = std::fs::read(&target)
                && existing != raw
            {
                eprintln!("MISMATCH: re-upload of {oldest} has different bytes");
                std::process::exit(3);
            }
            let tmp = uploaded.join(format!("{oldest}.json.tmp"));
            std::fs::write(&tmp, &raw).unwrap();
            std::fs::rename(&tmp, &target).unwrap();
            wal.mark_uploaded(oldest, now).unwrap();
        }
    }
}

// ------------------------------------------------------------------ parent

struct Round {
    last_acked: Option<u64>,
}

fn run_child(dir: &Path, start: u64, rng: &mut impl Rng, wait_for_ack: bool) -> Round {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_ENV, dir)
        .env(START_ENV, start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let last_acked = Arc::new(AtomicI64::new(-1));
    let stdout = child.stdout.take().unwrap();
    let reader = {
        let last_acked = last_acked.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("ack ") {
                    last_acked.store(id.parse().unwrap(), Ordering::SeqCst);
                }
            }
        })
    };
    let mut stderr = child.stderr.take().unwrap();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    if wait_for_ack {
        let deadline = Instant::now() + DEADLINE;
        while last_acked.load(Ordering::SeqCst) < 0 {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "child exited early with {status}: {}",
                    stderr_reader.join().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the child acknowledged nothing within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // The random moment of the kill.
    std::thread::sleep(Duration::from_micros(rng.random_range(0..300_000)));
    child.kill().expect("SIGKILL the child");
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let stderr = stderr_reader.join().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the child must die of SIGKILL, not exit on its own ({status}): {stderr}"
    );
    let acked = last_acked.load(Ordering::SeqCst);
    Round {
        last_acked: u64::try_from(acked).ok(),
    }
}

/// Opens the WAL after a kill; the lock of a dead process is free at once, but allow the kernel
/// a bounded moment to release it.
fn reopen(dir: &Path) -> Wal {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match Wal::open(options(dir)) {
            Ok((wal, report)) => {
                assert!(
                    report.damaged.is_empty(),
                    "damaged segments after a kill: {report:?}"
                );
                eprintln!(
                    "reopened: {} orphan segment files deleted, {} sealed log files deleted, \
                     {} frames replayed, {} bytes of a cut entry truncated, {} records unsealed, \
                     {} segments",
                    report.orphans_deleted.len(),
                    report.sealed_log_files_deleted,
                    report.frames_replayed,
                    report.torn_tail_bytes,
                    report.backlog.records,
                    report.segments
                );
                return wal;
            }
            Err(WalError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reopen after kill: {e}"),
        }
    }
}

/// Checks everything the WAL and the upload directory hold against the groups from 0, and
/// returns the id of the last group present (`None` if nothing is there yet).
fn verify(dir: &Path, last_acked: Option<u64>) -> Option<u64> {
    let wal = reopen(dir);
    let uploaded_dir = dir.join("uploaded");
    let mut raw = Vec::new();
    let mut uploaded = 0u64;
    while let Ok(bytes) = std::fs::read(uploaded_dir.join(format!("{}.json", uploaded + 1))) {
        raw.extend_from_slice(&bytes);
        uploaded += 1;
    }
    let uploaded_files = std::fs::read_dir(&uploaded_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
                .count() as u64
        })
        .unwrap_or(0);
    assert_eq!(
        uploaded_files, uploaded,
        "uploaded files are not a gapless run from 1"
    );
    let segments = wal.segments();
    if let Some(first) = segments.first() {
        assert!(
            first.number <= uploaded + 1,
            "segment {} follows upload {uploaded}",
            first.number
        );
    }
    for meta in &segments {
        let content = support::read_segment(&wal, meta.number);
        if meta.number <= uploaded {
            let sent = std::fs::read(uploaded_dir.join(format!("{}.json", meta.number))).unwrap();
            assert_eq!(
                sent, content,
                "segment {} changed since it was uploaded",
                meta.number
            );
        } else {
            raw.extend_from_slice(&content);
        }
    }
    let next_number = segments.last().map_or(uploaded + 1, |m| m.number + 1);
    for (expected, meta) in (next_number..).zip(support::seal_all(&wal, 256 * 1024)) {
        assert_eq!(
            meta.number, expected,
            "sealed segments must continue the numbering"
        );
        raw.extend_from_slice(&support::read_segment(&wal, meta.number));
    }
    let records = support::lines(&raw);

    // The records are exactly groups 0, 1, 2, ... each whole, up to some group.
    let mut at = 0usize;
    let mut id = 0u64;
    let mut last_with_records = None;
    while at < records.len() {
        let expected = group(id);
        let end = at + expected.len();
        assert!(
            end <= records.len() && records[at..end] == expected[..],
            "group {id} is not whole at record {at}: found {:?}",
            records
                .get(at)
                .map(|r| String::from_utf8_lossy(r).into_owned())
        );
        if !expected.is_empty() {
            last_with_records = Some(id);
        }
        at = end;
        id += 1;
    }
    // The cursor names the last durable group that set one; groups after it carry none.
    let cursor_id = wal
        .state()
        .cursor
        .map(|c| c.trim_start_matches('g').parse::<u64>().unwrap());
    let last_present = match (last_with_records, cursor_id) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    if let Some(last) = last_present {
        assert_eq!(
            wal.state().cursor,
            expected_cursor(last),
            "cursor does not match the last durable group {last}"
        );
    }
    if let Some(acked) = last_acked.and_then(last_visible_group) {
        assert!(
            last_present.is_some_and(|last| last >= acked),
            "group {acked} was acknowledged durable but the WAL ends at {last_present:?}"
        );
    }
    assert_eq!(wal.backlog().records, 0);
    last_present
}

#[test]
fn sigkill_at_random_moments_keeps_every_acknowledged_group_whole_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = std::env::var("WAL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0001u64);
    eprintln!("crash test seed {seed} (set WAL_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut next_id = 0u64;
    let mut acknowledged = 0u64;
    for round in 0..KILLS {
        // Most kills land while appending; every fifth may land anywhere, even during open.
        let wait_for_ack = round % 5 != 4;
        let result = run_child(tmp.path(), next_id, &mut rng, wait_for_ack);
        let last = verify(tmp.path(), result.last_acked);
        if let Some(acked) = result.last_acked {
            acknowledged += acked + 1 - next_id;
        }
        if let Some(last) = last {
            next_id = next_id.max(last + 1);
        }
        eprintln!(
            "kill {round}: last acknowledged {:?}, last durable {last:?}",
            result.last_acked
        );
    }
    assert!(acknowledged > 0, "the children never acknowledged anything");
}
