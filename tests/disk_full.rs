//! A real full disk under the WAL (docs/architecture.md#invariant-6, "bounded disk", and 2, "no
//! loss"): the WAL directory is a small tmpfs mounted for the test, and a ballast file takes its
//! space while the daemon streams. The exporter stops reading, keeps what it has, and recovers when
//! the ballast is deleted; nothing is lost.
//!
//! Mounting needs root, so the tests are ignored by default; `.ci/run` runs them (as root) with
//! the other ignored tests, and there a refused mount fails them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use simulator::SimulatorHandle;
use support::daemon::{
    BUCKET, Harness, last_s3_line_id, read_s3_export, secs, simulator_config, start_simulator,
    wait_until,
};
use support::s3::TestS3;

/// A tmpfs mounted on a temporary directory; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB, or says why it cannot.
    fn mount(mib: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn available(&self) -> u64 {
        let stats = nix::sys::statvfs::statvfs(self.path()).expect("statvfs of the tmpfs");
        stats.blocks_available() * stats.fragment_size()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem of `tmpfs` until at most `leave` bytes are free, with one file (to the
/// last byte when `leave` is 0).
fn ballast(tmpfs: &Tmpfs, leave: u64) -> PathBuf {
    use std::io::Write as _;
    let path = tmpfs.path().join("ballast");
    let size = tmpfs.available().saturating_sub(leave);
    let mut file = std::fs::File::create(&path).expect("creating the ballast");
    // tmpfs allocates on write, not on set_len: write it.
    let chunk = vec![0x42u8; 1 << 20];
    let mut written = 0u64;
    while written < size {
        let n = (size - written).min(chunk.len() as u64) as usize;
        match file.write(&chunk[..n]) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("writing the ballast: {e}"),
        }
    }
    path
}

fn served_up_to(sim: &SimulatorHandle, id: &str) -> bool {
    sim.served()
        .accepted()
        .flat_map(|c| c.events.iter())
        .any(|e| e.key.id.to_string() == id)
}

fn last_live_id(sim: &SimulatorHandle) -> String {
    sim.live_ids().last().expect("a live log").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs: .ci/run runs it"]
async fn a_full_disk_pauses_reading_keeps_everything_and_recovers_when_space_returns() {
    let tmpfs = Tmpfs::mount(512)
        .unwrap_or_else(|why| panic!("a real full disk needs a tmpfs mount: {why}"));
    let sim = start_simulator(simulator_config(21, 400)).await;
    let s3 = TestS3::start();
    // S3 down: what the exporter read stays on the small disk.
    s3.stop();
    let wal = tmpfs.path().join("wal");
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .live_log_only(&sim)
        .set("WAL_DIR", &wal.display().to_string())
        .set("WRITE_MAX_BYTES", "256KiB")
        .set("WAL_MAX_BYTES", "10GiB");
    let mut daemon = harness.spawn();
    let first_part = last_live_id(&sim);
    wait_until("the first events are read", secs(60), || {
        served_up_to(&sim, &first_part)
    })
    .await;

    assert!(
        daemon
            .log_messages("is full: pausing the stream")
            .is_empty(),
        "the disk is not full yet"
    );
    // Another process fills the disk: less than the WAL's reserve (64 MiB) is left.
    let ballast = ballast(&tmpfs, 24 << 20);
    sim.append_live_events(3000);
    let last = last_live_id(&sim);
    wait_until("the exporter pauses reading", secs(60), || {
        !daemon
            .log_messages("is full: pausing the stream")
            .is_empty()
    })
    .await;
    assert!(!daemon.has_exited(), "a full disk does not stop the daemon");

    // Space returns: reading resumes from the durable cursor, and once S3 is back everything
    // arrives, in order, nothing lost.
    std::fs::remove_file(&ballast).expect("deleting the ballast");
    wait_until("the exporter reads to the end", secs(120), || {
        served_up_to(&sim, &last)
    })
    .await;
    s3.restart();
    wait_until("everything is uploaded", secs(120), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert!(!daemon.has_exited(), "the daemon never exited on its own");
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
    let export = read_s3_export(&s3, BUCKET).await;
    export.assert_importable("json");
    let report = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(report.is_ok(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs: .ci/run runs it"]
async fn a_disk_filled_to_the_last_byte_loses_nothing_and_recovers_when_space_returns() {
    let tmpfs = Tmpfs::mount(512)
        .unwrap_or_else(|why| panic!("a real full disk needs a tmpfs mount: {why}"));
    let sim = start_simulator(simulator_config(21, 400)).await;
    let s3 = TestS3::start();
    // S3 down: what the exporter read stays on the small disk.
    s3.stop();
    let wal = tmpfs.path().join("wal");
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .live_log_only(&sim)
        .set("WAL_DIR", &wal.display().to_string())
        .set("WRITE_MAX_BYTES", "256KiB")
        .set("WAL_MAX_BYTES", "10GiB");
    let mut daemon = harness.spawn();
    let first_part = last_live_id(&sim);
    wait_until("the first events are read", secs(60), || {
        served_up_to(&sim, &first_part)
    })
    .await;

    // Another process fills the disk to the last byte while the exporter streams.
    let ballast = ballast(&tmpfs, 0);
    sim.append_live_events(3000);
    let last = last_live_id(&sim);
    // The exporter pauses (it writes nothing once fewer than 64 MiB are free). A write already
    // in flight when the last byte went may fail: the WAL then refuses further writes and the
    // daemon exits with an error (its supervisor restarts it); either way nothing is lost.
    wait_until("the exporter pauses reading or stops", secs(60), || {
        daemon.has_exited()
            || !daemon
                .log_messages("is full: pausing the stream")
                .is_empty()
    })
    .await;

    // Space returns: reading resumes from the durable cursor, and once S3 is back everything
    // arrives, in order, nothing lost.
    std::fs::remove_file(&ballast).expect("deleting the ballast");
    if daemon.has_exited() {
        let status = daemon.wait_exit(secs(5)).await;
        assert_eq!(status.code(), Some(1), "an error exit, not a crash");
        assert!(
            daemon.errors().iter().any(|e| e.contains("No space left")),
            "the error names the full disk: {:?}",
            daemon.errors()
        );
        daemon = harness.spawn();
    }
    wait_until("the exporter reads to the end", secs(120), || {
        served_up_to(&sim, &last)
    })
    .await;
    s3.restart();
    wait_until("everything is uploaded", secs(120), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));
    let export = read_s3_export(&s3, BUCKET).await;
    export.assert_importable("json");
    let report = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(report.is_ok(), "{report}");
}
