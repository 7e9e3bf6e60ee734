//! The directory sink (`EXPORT_DIR`) end to end: two daemons read the same simulated stream, one
//! into S3, one into a directory, with the same settings. Both write the same files, byte for
//! byte, under the same names but for the seal timestamp, and the stock importer's algorithm
//! (and `verify --dir`) reads the directory back without a problem.

mod support;

use bytes::Bytes;
use nix::sys::signal::Signal;
use support::daemon::*;
use support::s3::TestS3;

const FILE_BYTES: u64 = 256 * 1024;

/// How many files the compactor seals by size alone from `lines`: it takes the oldest records
/// up to `max` raw bytes (a bigger first record alone) while at least `max` bytes wait.
fn files_sealed_by_size(lines: &[Bytes], max: u64) -> usize {
    let mut waiting: u64 = lines.iter().map(|line| line.len() as u64 + 1).sum();
    let mut next = 0;
    let mut files = 0;
    while waiting >= max {
        let mut size = 0;
        while let Some(line) = lines.get(next) {
            let bytes = line.len() as u64 + 1;
            if size > 0 && size + bytes > max {
                break;
            }
            size += bytes;
            next += 1;
        }
        waiting -= size;
        files += 1;
    }
    files
}

fn dir_files(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join(FOLDER))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("stream_"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_sink_writes_the_same_files_as_s3() {
    let sim = start_simulator(simulator_config(501, 2_500)).await;
    let last = sim.live_ids().last().expect("a live log").to_string();
    let s3 = TestS3::start();
    let export_root = tempfile::tempdir().expect("export directory");
    // Only full files are sealed (the interval is an hour), so both cut the stream alike.
    let configure = |harness: Harness| {
        harness
            .live_log_only(&sim)
            .set("WRITE_MAX_BYTES", &FILE_BYTES.to_string())
            .set("WRITE_EVERY_SEC", "3600")
    };
    let to_s3 = configure(Harness::new(&sim).s3(&s3, BUCKET));
    let to_dir = configure(Harness::new(&sim).export_dir(export_root.path()));

    let mut s3_daemon = to_s3.spawn();
    let mut dir_daemon = to_dir.spawn();
    wait_until("both daemons connected", secs(30), || {
        sim.served().accepted().count() == 2
    })
    .await;
    let expected = expected_lines(&sim).await;
    let full_files = files_sealed_by_size(&expected, FILE_BYTES);
    assert!(full_files >= 10, "the stream fills many files");
    wait_until("every full file written by both", secs(50), || {
        s3_keys(&s3, BUCKET).len() == full_files && dir_files(export_root.path()) == full_files
    })
    .await;
    assert_eq!(s3_daemon.terminate(secs(20)).await.code(), Some(0));
    let interrupted = dir_daemon.stop_with(Signal::SIGINT, secs(20)).await;
    assert_eq!(interrupted.code(), Some(0), "SIGINT stops it cleanly too");

    let in_s3 = read_s3_export(&s3, BUCKET).await;
    let in_dir = read_dir_export(export_root.path()).await;
    in_s3.assert_importable("json");
    in_dir.assert_importable("json");
    assert_eq!(in_dir.files.len(), full_files);
    for (s3_file, dir_file) in in_s3.files.iter().zip(&in_dir.files) {
        assert_eq!(s3_file.number, dir_file.number);
        assert!(
            s3_file.body == dir_file.body,
            "file {} differs between S3 ({}) and the directory ({})",
            s3_file.number,
            s3_file.key,
            dir_file.key
        );
    }
    assert_same_lines(&in_dir.lines, &expected[..in_dir.len()]);

    // The rest of the stream waits in the WAL; a restart with a short interval writes it.
    let to_dir = to_dir.set("WRITE_EVERY_SEC", "1");
    let mut dir_daemon = to_dir.spawn();
    wait_until("the last live event is written", secs(30), || {
        last_dir_line_id(export_root.path()).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(dir_daemon.terminate(secs(20)).await.code(), Some(0));
    let in_dir = read_dir_export(export_root.path()).await;
    in_dir.assert_importable("json");
    assert_same_lines(&in_dir.lines, &expected);
    let leftovers: Vec<String> = walk(export_root.path())
        .into_iter()
        .filter(|name| !name.contains("/stream_"))
        .collect();
    assert!(leftovers.is_empty(), "only final files: {leftovers:?}");

    let root = export_root.path().display().to_string();
    let verify = to_dir
        .run_command(&["verify", "--dir", &root], secs(30))
        .await;
    assert_eq!(verify.code, Some(0), "verify --dir: {verify:?}");
    assert!(
        verify.stdout.contains("result        OK"),
        "{}",
        verify.stdout
    );
}

/// Every file under `root`, as paths relative to it.
fn walk(root: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("readable")
            .filter_map(Result::ok)
        {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                found.push(relative.display().to_string());
            }
        }
    }
    found
}
