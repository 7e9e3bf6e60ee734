//! Power-cut test: like `crash.rs`, a child process appends groups while another of its threads
//! seals and "uploads" segments, and is killed with SIGKILL at random moments; but here the WAL
//! lives on the test file system of `testfs`, whose syncs take a millisecond as a disk's do, and
//! at every kill the power goes off and is cut: everything
//! the WAL did not fsync (file data) or make durable with an fsync of its directory (creations,
//! renames, removals: the strict POSIX model) is dropped, before the WAL is opened again.
//!
//! After every cut the parent proves: the WAL opens, and never as a new WAL once it acknowledged
//! something; no segment is damaged; every group the child was told was durable is there, whole,
//! in order, with nothing after a missing group; the cursor is the one of the last group present;
//! uploaded files are gapless and a re-upload has the same bytes.
//!
//! The kills are aimed: some land at a random moment after the first acknowledgement (appends),
//! some right after the child announces a seal or an upload mark (the segment file's write,
//! rename and directory sync, the registering commit, the entry's removal and the file's
//! deletion), and some anywhere from the start (creation of the WAL directory and of sled's
//! files). Groups include large events (hundreds of KiB) and groups of so many tiny records that
//! the frame header (one length per record) takes more than 128 KiB; the frame log moves on to
//! new files and deletes the sealed ones as it goes, and the test checks that it did.
//!
//! The uploads go to a directory outside the test file system: the destination does not lose
//! power. Needs FUSE: ignored by default, run by CI with `--run-ignored only`, and failing (not
//! skipped) where FUSE is missing. `WAL_POWERCUT_SEED` replays a sequence of kills.

mod support;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use testfs::{Model, TestFs};
use wal::{Wal, WalError, WalOptions};

const CUTS: usize = 24;
const IN_FLIGHT: usize = 16;
const WAL_ENV: &str = "WAL_POWERCUT_DIR";
const UPLOADED_ENV: &str = "WAL_POWERCUT_UPLOADED";
const START_ENV: &str = "WAL_POWERCUT_START_ID";
const DEADLINE: Duration = Duration::from_secs(60);
/// Records in a group whose frame header takes more than 128 KiB.
const SWARM_RECORDS: u64 = 160_000;

/// A well-mixed hash (splitmix64) so group shapes look random but are reproducible.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[derive(Debug, PartialEq)]
enum Shape {
    /// No record: only moves the cursor (or nothing).
    Empty,
    /// One event of 256 KiB to 1.5 MiB.
    Large,
    /// [`SWARM_RECORDS`] records of one byte: a frame header of more than 128 KiB.
    Swarm,
    /// 1 to 40 records of 20 to 500 bytes.
    Small,
}

fn shape(id: u64) -> Shape {
    if id % 11 == 5 {
        Shape::Empty
    } else if id % 89 == 40 {
        Shape::Swarm
    } else if id % 37 == 20 {
        Shape::Large
    } else {
        Shape::Small
    }
}

/// Number of records of group `id`.
fn group_len(id: u64) -> u64 {
    match shape(id) {
        Shape::Empty => 0,
        Shape::Large => 1,
        Shape::Swarm => SWARM_RECORDS,
        Shape::Small => 1 + mix(id) % 40,
    }
}

/// Whether group `id` sets the cursor (some groups do not, like dependency events).
fn sets_cursor(id: u64) -> bool {
    id % 7 != 3
}

/// The last group up to `acked` that leaves a trace in the WAL (records or a cursor).
fn last_visible_group(acked: u64) -> Option<u64> {
    (0..=acked)
        .rev()
        .find(|id| group_len(*id) > 0 || sets_cursor(*id))
}

fn cursor_of(id: u64) -> String {
    format!("g{id}")
}

fn record(id: u64, index: u64) -> Bytes {
    let (prefix, len) = match shape(id) {
        Shape::Swarm => {
            return Bytes::from(vec![b'a' + (mix(id ^ (index << 20)) % 26) as u8]);
        }
        Shape::Large => (
            format!("g{id}:{index}/1:"),
            256 * 1024 + mix(id) % (1280 * 1024),
        ),
        _ => (
            format!("g{id}:{index}/{}:", group_len(id)),
            20 + mix(id * 1000 + index) % 480,
        ),
    };
    // Varied padding compresses poorly, so seals span many chunks and frames take several
    // commits to remove: kills land in those too.
    let mut s = prefix.into_bytes();
    let mut x = mix(id * 1000 + index);
    while (s.len() as u64) < len {
        x = mix(x);
        for shift in 0..8 {
            s.push(b'a' + ((x >> (shift * 8)) % 26) as u8);
        }
    }
    s.truncate(len as usize);
    Bytes::from(s)
}

fn group(id: u64) -> Vec<Bytes> {
    (0..group_len(id)).map(|i| record(id, i)).collect()
}

/// The cursor expected once groups `0..=last` are durable.
fn expected_cursor(last: u64) -> Option<String> {
    (0..=last).rev().find(|id| sets_cursor(*id)).map(cursor_of)
}

fn options(wal_dir: &Path) -> WalOptions {
    let mut options = WalOptions::new(wal_dir, 1 << 40);
    // Small commits make more commits per second: more moments to be killed in.
    options.max_commit_bytes = 64 * 1024;
    options
}

#[test]
fn group_shapes() {
    assert_eq!(shape(40), Shape::Swarm);
    assert_eq!(shape(20), Shape::Large);
    assert!(record(20, 0).len() >= 256 * 1024);
    assert_eq!(group(40).len() as u64, SWARM_RECORDS);
    assert_eq!(last_visible_group(5 + 11 * 3), Some(37));
}

// ------------------------------------------------------------------ child

/// The child: appends groups forever from `WAL_POWERCUT_START_ID`, printing `ack <id>` once each
/// is durable, while a second thread seals and uploads, printing `sealing` and `marking <n>`
/// before each. Does nothing when run without the environment the parent sets.
#[test]
#[ignore = "run by the power-cut test as a child process"]
fn powercut_child() {
    let Some(wal_dir) = std::env::var_os(WAL_ENV).map(PathBuf::from) else {
        return;
    };
    let uploaded = PathBuf::from(std::env::var_os(UPLOADED_ENV).unwrap());
    let start: u64 = std::env::var(START_ENV).unwrap().parse().unwrap();
    let (wal, report) = Wal::open(options(&wal_dir)).unwrap();
    println!("open created={}", report.created);
    let sealer = {
        let wal = wal.clone();
        std::thread::spawn(move || seal_and_upload_forever(&wal, &uploaded))
    };
    let appender = wal.appender();
    let mut pending = VecDeque::new();
    for id in start.. {
        let cursor = sets_cursor(id).then(|| cursor_of(id));
        pending.push_back((id, appender.append(group(id), cursor)));
        if pending.len() >= IN_FLIGHT {
            let (acked, p) = pending.pop_front().unwrap();
            p.wait().unwrap();
            println!("ack {acked}");
        }
        if sealer.is_finished() {
            panic!("the sealer thread stopped");
        }
    }
}

fn seal_and_upload_forever(wal: &Wal, uploaded: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id().into());
    loop {
        let max = if rng.random_bool(0.5) {
            rng.random_range(2_000..64_000)
        } else {
            rng.random_range(1_000_000..8_000_000)
        };
        let now = support::NOW_MS + rng.random_range(0..1000);
        println!("sealing");
        wal.seal(max, now).unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(1..60)));
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
            println!("marking {oldest}");
            wal.mark_uploaded(oldest, now).unwrap();
        }
    }
}

// ------------------------------------------------------------------ parent

/// When the child is killed.
#[derive(Debug, Clone, Copy)]
enum Aim {
    /// A random moment after the first acknowledgement: mostly appends.
    Appends,
    /// Right after the child announces a seal.
    Seal,
    /// Right after the child announces an upload mark (then the file's deletion).
    Mark,
    /// A random moment from the start: opening, creating the WAL.
    Anywhere,
}

struct Round {
    last_acked: Option<u64>,
    created: Option<bool>,
}

fn run_child(
    fs: &TestFs,
    wal_dir: &Path,
    uploaded: &Path,
    start: u64,
    rng: &mut impl Rng,
    aim: Aim,
) -> Round {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "powercut_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WAL_ENV, wal_dir)
        .env(UPLOADED_ENV, uploaded)
        .env(START_ENV, start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the child");
    let last_acked = Arc::new(AtomicI64::new(-1));
    let seals = Arc::new(AtomicU64::new(0));
    let marks = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicI64::new(-1));
    let stdout = child.stdout.take().unwrap();
    let reader = {
        let (last_acked, seals, marks, created) = (
            last_acked.clone(),
            seals.clone(),
            marks.clone(),
            created.clone(),
        );
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("ack ") {
                    last_acked.store(id.parse().unwrap(), Ordering::SeqCst);
                } else if line == "sealing" {
                    seals.fetch_add(1, Ordering::SeqCst);
                } else if line.starts_with("marking ") {
                    marks.fetch_add(1, Ordering::SeqCst);
                } else if let Some(value) = line.strip_prefix("open created=") {
                    created.store(i64::from(value == "true"), Ordering::SeqCst);
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
    let wait_for = |what: &str, counter: &dyn Fn() -> bool, child: &mut std::process::Child| {
        let deadline = Instant::now() + DEADLINE;
        while !counter() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("child exited early with {status} waiting for {what}");
            }
            assert!(Instant::now() < deadline, "no {what} within {DEADLINE:?}");
            std::thread::sleep(Duration::from_micros(200));
        }
    };
    let delay = match aim {
        Aim::Appends => {
            wait_for(
                "acknowledgement",
                &|| last_acked.load(Ordering::SeqCst) >= 0,
                &mut child,
            );
            Duration::from_micros(rng.random_range(0..300_000))
        }
        Aim::Seal => {
            // Not the first seal: by then the child has appended a while.
            let wanted = rng.random_range(2..6);
            wait_for(
                "seal",
                &|| seals.load(Ordering::SeqCst) >= wanted,
                &mut child,
            );
            Duration::from_micros(rng.random_range(0..20_000))
        }
        Aim::Mark => {
            wait_for(
                "upload mark",
                &|| marks.load(Ordering::SeqCst) >= 1,
                &mut child,
            );
            Duration::from_micros(rng.random_range(0..5_000))
        }
        Aim::Anywhere => Duration::from_micros(rng.random_range(0..150_000)),
    };
    std::thread::sleep(delay);
    child.kill().expect("SIGKILL the child");
    // The power goes off at the kill: a sync the child was waiting for does not complete.
    fs.power_off();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let stderr = stderr_reader.join().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the child must die of SIGKILL, not exit on its own ({status}): {stderr}"
    );
    let acked = last_acked.load(Ordering::SeqCst);
    let created = created.load(Ordering::SeqCst);
    Round {
        last_acked: u64::try_from(acked).ok(),
        created: (created >= 0).then_some(created == 1),
    }
}

/// Opens the WAL after a cut: it must open, and not as a new WAL once something was
/// acknowledged.
fn reopen(wal_dir: &Path, acknowledged_before: bool) -> Wal {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match Wal::open(options(wal_dir)) {
            Ok((wal, report)) => {
                assert!(
                    !(report.created && acknowledged_before),
                    "the WAL came back new (created=true) after a power cut, although it had \
                     acknowledged appends: {report:?}"
                );
                assert!(
                    report.damaged.is_empty(),
                    "damaged segments after a power cut: {report:?}"
                );
                return wal;
            }
            Err(WalError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reopen after a power cut: {e}"),
        }
    }
}

/// Checks everything the WAL and the upload directory hold against the groups from 0, and
/// returns the id of the last group present (`None` if nothing is there yet).
fn verify(
    wal_dir: &Path,
    uploaded_dir: &Path,
    last_acked: Option<u64>,
    acknowledged_before: bool,
) -> Option<u64> {
    let wal = reopen(wal_dir, acknowledged_before);
    let mut raw = Vec::new();
    let mut uploaded = 0u64;
    while let Ok(bytes) = std::fs::read(uploaded_dir.join(format!("{}.json", uploaded + 1))) {
        raw.extend_from_slice(&bytes);
        uploaded += 1;
    }
    let uploaded_files = std::fs::read_dir(uploaded_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
        .count() as u64;
    assert_eq!(
        uploaded_files, uploaded,
        "uploaded files are not a gapless run from 1"
    );
    let segments = wal.segments();
    if let Some(first) = segments.first() {
        assert!(
            first.number <= uploaded + 1,
            "segment {} follows upload {uploaded}: the WAL forgot segments",
            first.number
        );
    } else {
        assert!(
            wal.state().next_file_number > uploaded,
            "file number {} would be reused: {uploaded} files were uploaded",
            wal.state().next_file_number
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
    for (expected, meta) in (next_number..).zip(support::seal_all(&wal, 1024 * 1024)) {
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
            "group {id} is not whole at record {at}"
        );
        if !expected.is_empty() {
            last_with_records = Some(id);
        }
        at = end;
        id += 1;
    }
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

/// Adds the names of the frame log's files to `seen`.
fn note_log_files(wal_dir: &Path, seen: &mut std::collections::BTreeSet<String>) {
    if let Ok(entries) = std::fs::read_dir(wal_dir.join("frames")) {
        seen.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned()),
        );
    }
}

#[test]
#[ignore = "needs FUSE (/dev/fuse and fusermount3)"]
fn power_cut_after_sigkill_at_random_moments_keeps_every_acknowledged_group() {
    testfs::require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let mut fs = TestFs::mount(
        &tmp.path().join("backing"),
        &tmp.path().join("mnt"),
        Model::Strict,
    )
    .expect("mount the test file system");
    // A disk whose flush takes as long as a fast SSD's: kills land between a write and the end
    // of its sync often enough for the cuts to drop something.
    fs.set_sync_latency(Duration::from_millis(1));
    let wal_dir = fs.path().join("wal");
    let uploaded = tmp.path().join("uploaded");
    std::fs::create_dir(&uploaded).unwrap();

    let seed = std::env::var("WAL_POWERCUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0C07u64);
    eprintln!("power-cut test seed {seed} (set WAL_POWERCUT_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut next_id = 0u64;
    let mut acknowledged = 0u64;
    let mut log_files_seen = std::collections::BTreeSet::new();
    let mut dropped = 0;
    let aims = [Aim::Anywhere, Aim::Appends, Aim::Seal, Aim::Mark];
    for round in 0..CUTS {
        let aim = aims[round % aims.len()];
        let result = run_child(&fs, &wal_dir, &uploaded, next_id, &mut rng, aim);
        assert_ne!(
            result.created.filter(|_| acknowledged > 0),
            Some(true),
            "the child found the WAL new after a power cut"
        );
        note_log_files(&wal_dir, &mut log_files_seen);
        let cut = fs.power_cut().expect("power cut");
        if cut.dropped_anything() {
            dropped += 1;
        }
        eprintln!(
            "cut {round} ({aim:?}): dropped the data of {:?} and the directory entries {:?}",
            cut.files_reverted,
            cut.entries_undone.iter().take(8).collect::<Vec<_>>(),
        );
        let acknowledged_before = acknowledged > 0 || result.last_acked.is_some();
        let last = verify(&wal_dir, &uploaded, result.last_acked, acknowledged_before);
        if let Some(acked) = result.last_acked {
            acknowledged += acked + 1 - next_id;
        }
        if let Some(last) = last {
            next_id = next_id.max(last + 1);
        }
        eprintln!(
            "cut {round}: last acknowledged {:?}, last durable {last:?}",
            result.last_acked,
        );
    }
    let counts = fs.sync_counts();
    eprintln!(
        "{acknowledged} groups acknowledged, {next_id} durable; {} file syncs, {} directory \
         syncs; frame log files seen {}",
        counts.file_syncs,
        counts.dir_syncs,
        log_files_seen.len()
    );
    assert!(acknowledged > 0, "the children never acknowledged anything");
    // The WAL syncs right after it writes, so a cut drops something only when the kill
    // lands between a write and the end of its sync: a fair share of the cuts must.
    assert!(
        dropped >= CUTS / 4,
        "only {dropped} of {CUTS} cuts dropped anything: the kills miss the writes"
    );
    assert!(
        log_files_seen.len() >= 2,
        "the frame log never moved to a second file: {log_files_seen:?}"
    );
    assert!(
        next_id > 89,
        "the run must reach at least one swarm group and several large ones"
    );
}
