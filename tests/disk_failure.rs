//! A real failing disk under the WAL: the WAL directory is on a small ext4 filesystem (a loop
//! device) that the test shuts down (`EXT4_IOC_SHUTDOWN`, what `xfs_io -c shutdown` does), after
//! which every read, write and fsync on it fails with EIO, as on a dying disk. The daemon must
//! not go on as if alive: it stops and exits non-zero, for Docker or systemd to restart it, even
//! when no event arrives to meet the failure.
//!
//! Mounting needs root, `mkfs.ext4` and loop devices, so the test is ignored by default;
//! `.ci/run` runs it (as root) with the other ignored tests, and there a refused mount fails it.

mod support;

use std::path::Path;
use std::process::Command;

use support::daemon::{BUCKET, Harness, secs, simulator_config, start_simulator};
use support::ops::{status, try_status, with_endpoint};
use support::s3::TestS3;

/// An ext4 filesystem in a sparse file, mounted through a loop device; unmounted when dropped
/// (the loop device goes with it).
struct LoopExt4 {
    _image_dir: tempfile::TempDir,
    mount_point: tempfile::TempDir,
}

impl LoopExt4 {
    /// Makes and mounts an ext4 filesystem of `mib` MiB, or says why it cannot.
    fn mount(mib: u64) -> Result<Self, String> {
        let image_dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let image = image_dir.path().join("disk.img");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(mib << 20))
            .map_err(|e| format!("creating the disk image: {e}"))?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        let mount_point = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        run(Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(&image)
            .arg(mount_point.path()))?;
        Ok(Self {
            _image_dir: image_dir,
            mount_point,
        })
    }

    fn path(&self) -> &Path {
        self.mount_point.path()
    }

    /// Shuts the filesystem down without flushing its journal: from now on every operation on
    /// it fails with EIO.
    fn fail(&self) {
        // EXT4_IOC_SHUTDOWN = _IOR('X', 125, __u32); EXT4_GOING_FLAGS_NOLOGFLUSH = 2.
        const EXT4_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
        let dir = std::fs::File::open(self.path()).expect("opening the mount point");
        let flags: u32 = 2;
        let done = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                EXT4_IOC_SHUTDOWN,
                &flags as *const u32,
            )
        };
        assert_eq!(
            done,
            0,
            "EXT4_IOC_SHUTDOWN: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, mkfs.ext4 and loop devices: .ci/run runs it"]
async fn a_disk_failing_under_a_quiet_stream_ends_the_daemon_with_an_error() {
    let disk = match LoopExt4::mount(256) {
        Ok(disk) => disk,
        Err(why) => panic!("a failing disk needs a loop-mounted ext4: {why}"),
    };
    let sim = start_simulator(simulator_config(41, 40)).await;
    let s3 = TestS3::start();
    let wal = disk.path().join("wal");
    // Sealing waits 10 s: the events stay unsealed in the WAL while the disk fails, and the
    // stream is quiet by then, so no event arrives to meet the failure.
    let (harness, port) = with_endpoint(
        Harness::new(&sim)
            .s3(&s3, BUCKET)
            .live_log_only(&sim)
            .set("WAL_DIR", &wal.display().to_string())
            .set("WRITE_EVERY_SEC", "10"),
    );
    let last = sim.live_ids().last().expect("a live log").to_string();
    let mut daemon = harness.spawn();
    // The durable cursor names the last event once everything read is in the WAL.
    support::ops::poll_until("every live event is durable in the WAL", secs(30), || {
        let last = last.clone();
        async move {
            try_status(port)
                .await
                .is_some_and(|status| status["cursor"] == last.as_str())
        }
    })
    .await;
    let before = status(port).await;
    assert!(
        before["backlog_events"].as_u64().is_some_and(|n| n > 0),
        "events wait in the WAL: {before}"
    );
    assert_eq!(before["files_waiting"], 0, "nothing sealed yet: {before}");
    assert_eq!(
        before["live"]["files_uploaded"], 0,
        "nothing sealed yet: {before}"
    );

    disk.fail();
    let exit = daemon.wait_exit(secs(45)).await;
    assert_eq!(
        exit.code(),
        Some(1),
        "a failed WAL ends the daemon with an error"
    );
    assert!(
        !daemon
            .log_messages("the process exits to be restarted")
            .is_empty(),
        "the daemon says why it stops"
    );
}
