//! `demo` (the `simulator` feature): the whole pipeline, built as `run` builds it, against the
//! simulator into a directory, read back as the stock importer reads it and checked by the
//! simulator's oracle; a second demo replaces the first one's output; a directory the demo did
//! not make is refused and left alone; the simulator's token is never printed.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_opencti-stream-exporter");
/// The token a default simulator expects.
const SIMULATOR_TOKEN: &str = "simulator-token";

fn demo(dir: &Path, events: u64) -> (Output, String, String) {
    let output = Command::new(BIN)
        .args(["demo", "--events", &events.to_string(), "--dir"])
        .arg(dir)
        .env_remove("CONFIG_FILE")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

#[test]
fn demo_exports_what_the_simulator_served_and_checks_it() {
    let work = tempfile::tempdir().expect("temporary directory");
    let dir = work.path().join("export");
    let (output, stdout, stderr) = demo(&dir, 400);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for line in [
        "simulator: OpenCTI live stream at http://127.0.0.1:",
        "exported ",
        "  by type: ",
        "  served:  ",
        "  read back as the stock importer would: OK",
        "  checked against what the simulator served: OK",
    ] {
        assert!(stdout.contains(line), "{line:?} in:\n{stdout}");
    }
    let wal_line = format!("  WAL:     {}", dir.join(".wal").display());
    assert!(stdout.contains(&wal_line), "{wal_line:?} in:\n{stdout}");
    let files = std::fs::read_dir(dir.join("opencti-stream"))
        .expect("the export folder")
        .count();
    assert!(files > 0, "files were written");
    assert!(!stdout.contains(SIMULATOR_TOKEN) && !stderr.contains(SIMULATOR_TOKEN));

    // A second demo into the same directory replaces the first one's output.
    let (output, stdout, stderr) = demo(&dir, 100);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("checked against what the simulator served: OK"));
}

#[test]
fn demo_refuses_a_directory_it_did_not_make() {
    let work = tempfile::tempdir().expect("temporary directory");
    let kept = work.path().join("keep.txt");
    std::fs::write(&kept, b"not the demo's").expect("a file of someone else's");
    let (output, stdout, stderr) = demo(work.path(), 10);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("was not made by the demo"), "{stderr}");
    assert_eq!(
        std::fs::read(&kept).ok().as_deref(),
        Some(&b"not the demo's"[..])
    );
}
