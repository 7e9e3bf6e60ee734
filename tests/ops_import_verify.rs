//! Switching from the stock connector and checking an export, end to end: `import-state` seeds a
//! new WAL from the stock state, the real binary then resumes from the imported position and
//! numbers files from `file_count + 1`; `verify` reads exports back as the stock importer does
//! and fails on a gap, a file out of order, lines out of order and corrupt lines.

mod support;

use std::path::{Path, PathBuf};

use serde_json::json;
use support::daemon::*;
use support::ops::*;
use support::s3::TestS3;

/// Before the simulator's live log (2024-06-10T09:00Z): recovery ended before it, as on a
/// platform where the stock connector ran its first start long ago.
const RECOVER_UNTIL: &str = "2024-06-10T08:00:00Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_state_then_run_resumes_from_the_imported_position_and_numbering() {
    let sim = start_simulator(simulator_config(501, 800)).await;
    let s3 = TestS3::start();
    let (harness, port) = with_endpoint(
        Harness::new(&sim)
            .s3(&s3, BUCKET)
            .set("WRITE_MAX_BYTES", "128KiB"),
    );
    let live = sim.live_ids();
    let written = live[299].to_string();
    // As the OpenCTI UI shows it: start_from ran ahead of what was written.
    let stock = json!({
        "start_from": live[420].to_string(),
        "recover_until": RECOVER_UNTIL,
        "last_written_msg_id": written,
        "file_count": 41,
    })
    .to_string();
    let imported = harness
        .run_command(&["import-state", &stock], secs(30))
        .await;
    assert_eq!(imported.code, Some(0), "{imported:?}");
    assert!(
        imported.stdout.contains("next file number 42"),
        "{}",
        imported.stdout
    );
    let seeded = harness.status().await;
    assert_eq!(seeded["cursor"], written.as_str());
    assert_eq!(seeded["recover_until"], RECOVER_UNTIL);
    assert_eq!(seeded["next_file_number"], 42);

    let last = live.last().expect("a live log").to_string();
    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    let files = s3_keys(&s3, BUCKET).len() as u64;
    wait_until("a ping with the continued numbering", secs(20), || {
        pings(&sim)
            .last()
            .is_some_and(|ping| ping_state(ping)["file_count"] == 41 + files)
    })
    .await;
    let _ = port;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));

    // The platform was asked for exactly what follows the imported position.
    let served = sim.served();
    let first = served.accepted().next().expect("a connection");
    assert_eq!(
        first.request.last_event_id.as_deref(),
        Some(written.as_str())
    );
    assert_eq!(first.request.recover.as_deref(), Some(RECOVER_UNTIL));
    let export = read_s3_export(&s3, BUCKET).await;
    assert_eq!(
        export.files[0].number, 42,
        "numbering goes on at file_count + 1"
    );
    for pair in export.files.windows(2) {
        assert_eq!(
            pair[1].number,
            pair[0].number + 1,
            "no gap: {}",
            pair[1].key
        );
    }
    // Every live event after the imported position (each with the dependencies the platform
    // sends before it, under the same id), in order, and nothing before it.
    let mut ids: Vec<String> = export.lines.iter().map(|line| line_id(line)).collect();
    ids.dedup();
    let expected: Vec<String> = live[300..].iter().map(ToString::to_string).collect();
    assert_eq!(
        ids, expected,
        "every event after the imported position, in order"
    );
    let oracle = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(oracle.is_ok(), "{oracle}");
    assert_eq!(oracle.duplicates, 0);

    // `verify` reads the bucket as the importer does, from the importer's next file.
    let verify = harness
        .run_command(&["verify", "--from", "42"], secs(30))
        .await;
    assert_eq!(verify.code, Some(0), "{verify:?}");
    assert!(
        verify.stdout.contains("result        OK"),
        "{}",
        verify.stdout
    );
    let from_one = harness.run_command(&["verify"], secs(30)).await;
    assert_eq!(from_one.code, Some(1), "{from_one:?}");
    assert!(
        from_one.stdout.contains("should be number 1."),
        "{}",
        from_one.stdout
    );

    // A file lost on the server is a gap.
    let lost = &export.files[2].key;
    std::fs::remove_file(s3.object_path(BUCKET, lost)).expect("remove an object");
    let gap = harness
        .run_command(&["verify", "--from", "42"], secs(30))
        .await;
    assert_eq!(gap.code, Some(1), "{gap:?}");
    assert!(
        gap.stdout
            .contains(&format!("should be number {}.", export.files[2].number)),
        "{}",
        gap.stdout
    );

    // A WAL that holds data is never overwritten.
    let again = harness
        .run_command(&["import-state", &stock], secs(30))
        .await;
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(
        again.stderr.contains("already holds data"),
        "{}",
        again.stderr
    );
    assert_eq!(harness.status().await["next_file_number"], 42 + files);
}

/// A copy of the export directory `from` in `to` (files only, one level of folders).
fn copy_export(from: &Path, to: &Path) {
    for entry in walk(from) {
        let target = to.join(entry.strip_prefix(from).expect("under the export"));
        std::fs::create_dir_all(target.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&entry, &target).expect("copy a file");
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the export").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_gap_a_file_out_of_order_lines_out_of_order_and_corrupt_lines() {
    let sim = start_simulator(simulator_config(502, 600)).await;
    let root = tempfile::tempdir().expect("scratch");
    let export_dir = root.path().join("export");
    let harness = Harness::new(&sim)
        .export_dir(&export_dir)
        .live_log_only(&sim)
        .set("WRITE_MAX_BYTES", "64KiB");
    let last = sim.live_ids().last().expect("a live log").to_string();
    let mut daemon = harness.spawn();
    wait_until("the last live event is written", secs(60), || {
        last_dir_line_id(&export_dir).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));
    let export = read_dir_export(&export_dir).await;
    assert!(export.files.len() >= 5, "several files");
    let file = |n: usize| PathBuf::from(&export.files[n].key);

    // Runs `verify --dir` on a tampered copy; returns (exit code, text report, JSON report).
    let case = async |name: &str, tamper: &dyn Fn(&Path)| {
        let copy = root.path().join(name);
        copy_export(&export_dir, &copy);
        tamper(&copy);
        let dir = copy.display().to_string();
        let text = harness
            .run_command(&["verify", "--dir", &dir], secs(30))
            .await;
        let json = harness
            .run_command(&["verify", "--dir", &dir, "--json"], secs(30))
            .await;
        assert_eq!(json.code, text.code, "--json exits the same way");
        let report: serde_json::Value =
            serde_json::from_str(&json.stdout).expect("verify --json prints JSON");
        (text.code, text.stdout, report)
    };

    let (code, text, report) = case("clean", &|_| {}).await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["lines"], export.len());
    assert_eq!(report["problems"], json!([]));

    // A gap: file 3 is missing; the importer stops there.
    let (code, text, report) = case("gap", &|dir| {
        std::fs::remove_file(dir.join(file(2))).expect("remove file 3");
    })
    .await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("should be number 3."), "{text}");
    assert_eq!(report["stopped_early"], true);

    // A file out of order: file 4's name sorts before file 3's (an earlier timestamp).
    let (code, text, _) = case("reordered-file", &|dir| {
        let fourth = &export.files[3];
        let earlier = format!(
            "{FOLDER}/stream_{}_{}.json",
            export.files[2].ts_ms - 1,
            fourth.number
        );
        std::fs::rename(dir.join(&fourth.key), dir.join(earlier)).expect("rename file 4");
    })
    .await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("_4.json is not in correct order, should be number 3."),
        "{text}"
    );

    // Lines out of order inside a file: ids go back. Two neighbours with different ids are
    // swapped (a dependency shares its id with the event after it).
    let split = |body: &[u8]| -> Vec<Vec<u8>> {
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let second = split(&export.files[1].body);
    let at = (0..second.len() - 1)
        .find(|&i| line_id(&second[i]) != line_id(&second[i + 1]))
        .expect("two different ids");
    let (code, text, report) = case("reordered-lines", &|dir| {
        let mut lines = second.clone();
        lines.swap(at, at + 1);
        let mut body = lines.join(&b'\n');
        body.push(b'\n');
        std::fs::write(dir.join(file(1)), body).expect("write file 2");
    })
    .await;
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(report["problems"], json!([]));
    assert_eq!(report["id_rewinds"][0]["key"], export.files[1].key.as_str());
    assert_eq!(report["id_rewinds"][0]["line"], at + 2);
    assert_eq!(
        report["id_rewinds"][0]["what"],
        "its id is before the previous line's"
    );

    // A corrupt line (cut in the middle), and bytes that are not UTF-8.
    let (code, text, report) = case("corrupt", &|dir| {
        let path = dir.join(file(3));
        let body = std::fs::read(&path).expect("read file 4");
        let first_end = body.iter().position(|b| *b == b'\n').expect("a line");
        let mut cut = body[..first_end / 2].to_vec();
        cut.extend_from_slice(&body[first_end..]);
        std::fs::write(&path, cut).expect("write file 4");
        let path = dir.join(file(4));
        let mut body = std::fs::read(&path).expect("read file 5");
        body[10] = 0xff;
        std::fs::write(&path, body).expect("write file 5");
    })
    .await;
    assert_eq!(code, Some(1), "{text}");
    let problems = report["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0]["key"], export.files[3].key.as_str());
    assert_eq!(problems[0]["line"], 1);
    assert!(
        problems[0]["what"]
            .as_str()
            .is_some_and(|w| w.starts_with("not JSON"))
    );
    assert_eq!(problems[1]["key"], export.files[4].key.as_str());
    assert!(
        problems[1]["what"]
            .as_str()
            .is_some_and(|w| w.starts_with("not UTF-8"))
    );
    assert!(text.contains("2 problem(s)"), "{text}");
}
