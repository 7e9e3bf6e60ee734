//! Each rule of the test file system, through the kernel: a program's writes, renames and
//! removals on the mount, then a power cut, then what is left. Needs FUSE: ignored by default,
//! run by CI (`--run-ignored only`), and failing, not skipped, where FUSE is missing.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use testfs::{Model, TestFs, require_fuse};

fn mounted(model: Model) -> (tempfile::TempDir, TestFs) {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let fs = TestFs::mount(&tmp.path().join("backing"), &tmp.path().join("mnt"), model)
        .expect("mount the test file system");
    (tmp, fs)
}

fn sync_dir(path: &Path) {
    File::open(path).unwrap().sync_all().unwrap();
}

/// Appends `bytes` to `path` without syncing.
fn append(path: &Path, bytes: &[u8]) {
    let mut handle = OpenOptions::new().append(true).open(path).unwrap();
    handle.write_all(bytes).unwrap();
}

fn write_synced(path: &Path, bytes: &[u8]) {
    let mut file = File::create(path).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

#[test]
#[ignore = "needs FUSE (/dev/fuse and fusermount3)"]
fn data_not_synced_is_gone_and_synced_data_stays() {
    let (_tmp, mut fs) = mounted(Model::Strict);
    let file = fs.path().join("f");
    write_synced(&file, b"synced");
    sync_dir(fs.path());
    append(&file, b" and not synced");
    assert_eq!(fs::read(&file).unwrap(), b"synced and not synced");
    let report = fs.power_cut().unwrap();
    assert_eq!(report.files_reverted, vec!["/f".to_string()]);
    assert_eq!(fs::read(&file).unwrap(), b"synced");

    // fdatasync is enough for the data, and a size change follows the data rule.
    let handle = OpenOptions::new().write(true).open(&file).unwrap();
    handle.set_len(2).unwrap();
    handle.sync_data().unwrap();
    handle.set_len(100).unwrap();
    drop(handle);
    fs.power_cut().unwrap();
    assert_eq!(fs::read(&file).unwrap(), b"sy");
    assert!(fs.sync_counts().file_syncs >= 2);
    assert!(fs.sync_counts().dir_syncs >= 1);
}

#[test]
#[ignore = "needs FUSE (/dev/fuse and fusermount3)"]
fn a_new_file_needs_its_directory_synced() {
    let (_tmp, mut fs) = mounted(Model::Strict);
    fs::create_dir(fs.path().join("d")).unwrap();
    sync_dir(fs.path());
    write_synced(&fs.path().join("d/new"), b"data");
    let report = fs.power_cut().unwrap();
    assert_eq!(report.entries_undone, vec!["/d/new".to_string()]);
    assert!(!fs.path().join("d/new").exists());

    write_synced(&fs.path().join("d/new"), b"data");
    sync_dir(&fs.path().join("d"));
    fs.power_cut().unwrap();
    assert_eq!(fs::read(fs.path().join("d/new")).unwrap(), b"data");
}

#[test]
#[ignore = "needs FUSE (/dev/fuse and fusermount3)"]
fn a_new_directory_needs_its_parent_synced() {
    let (_tmp, mut fs) = mounted(Model::Strict);
    fs::create_dir_all(fs.path().join("a/b")).unwrap();
    write_synced(&fs.path().join("a/b/f"), b"data");
    sync_dir(&fs.path().join("a/b"));
    sync_dir(&fs.path().join("a"));
    fs.power_cut().unwrap();
    assert!(
        !fs.path().join("a").exists(),
        "a was never synced in the root"
    );
}

#[test]
#[ignore = "needs FUSE (/dev/fuse and fusermount3)"]
fn a_rename_not_followed_by_a_directory_sync_is_undone_and_a_synced_one_stays() {
    let (_tmp, mut fs) = mounted(Model::Strict);
    let target = fs.path().join("state");
    let tmp = fs.path().join("state.tmp");
    write_synced(&target, b"old");
    sync_dir(fs.path());

    write_synced(&tmp, b"new");
    fs::rename(&tmp, &target).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"new");
    let report = fs.power_cut().unwrap();
    // state.tmp came and went: only the entry of state differs from the durable one.
    assert_eq!(report.entries_undone, vec!["/state".to_string()]);
    assert_eq!(fs::read(&target).unwrap(), b"old");
    assert!(!tmp.exists());

    write_synced(&tmp, b"new");
    fs::rename(&tmp, &target).unwrap();
    sync_dir(fs.path());
    let report = fs.power_cut().unwrap();
    assert!(!report.dropped_anything(), "{report:?}");
    assert_eq!(fs::read(&target).unwrap(), b"new");
}

#[test]
#[ignore = "needs FUSE (/dev/fuse and fusermount3)"]
fn an_unlink_or_rmdir_not_followed_by_a_directory_sync_is_undone() {
    let (_tmp, mut fs) = mounted(Model::Strict);
    fs::create_dir(fs.path().join("d")).unwrap();
    write_synced(&fs.path().join("d/f"), b"data");
    sync_dir(&fs.path().join("d"));
    sync_dir(fs.path());
    fs::remove_file(fs.path().join("d/f")).unwrap();
    fs::remove_dir(fs.path().join("d")).unwrap();
    fs.power_cut().unwrap();
    assert_eq!(fs::read(fs.path().join("d/f")).unwrap(), b"data");

    fs::remove_file(fs.path().join("d/f")).unwrap();
    sync_dir(&fs.path().join("d"));
    fs.power_cut().unwrap();
    assert!(fs.path().join("d").is_dir());
    assert!(!fs.path().join("d/f").exists());
}

#[test]
#[ignore = "needs FUSE (/dev/fuse and fusermount3)"]
fn o_sync_writes_are_durable() {
    let (_tmp, mut fs) = mounted(Model::Strict);
    let path = fs.path().join("f");
    write_synced(&path, b"");
    sync_dir(fs.path());
    let mut file = OpenOptions::new()
        .write(true)
        .custom_flags(libc_o_dsync())
        .open(&path)
        .unwrap();
    file.write_all(b"written with O_DSYNC").unwrap();
    drop(file);
    fs.power_cut().unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"written with O_DSYNC");
}

fn libc_o_dsync() -> i32 {
    0o10000
}

#[test]
#[ignore = "needs FUSE (/dev/fuse and fusermount3)"]
fn ext4_like_syncing_a_file_keeps_its_own_entry_and_rename() {
    let (_tmp, mut fs) = mounted(Model::Ext4Like);
    fs::create_dir_all(fs.path().join("a/b")).unwrap();
    write_synced(&fs.path().join("a/b/f"), b"data");
    fs::write(fs.path().join("a/b/other"), b"never synced").unwrap();
    fs.power_cut().unwrap();
    assert_eq!(fs::read(fs.path().join("a/b/f")).unwrap(), b"data");
    assert!(!fs.path().join("a/b/other").exists());

    // A rename onto a file is carried whole by the sync of the renamed file.
    write_synced(&fs.path().join("a/b/f.tmp"), b"new");
    fs::rename(fs.path().join("a/b/f.tmp"), fs.path().join("a/b/f")).unwrap();
    File::open(fs.path().join("a/b/f"))
        .unwrap()
        .sync_all()
        .unwrap();
    fs.power_cut().unwrap();
    assert_eq!(fs::read(fs.path().join("a/b/f")).unwrap(), b"new");
    assert!(!fs.path().join("a/b/f.tmp").exists());
}

#[test]
#[ignore = "needs FUSE (/dev/fuse and fusermount3)"]
fn unmount_writes_the_contents_back_and_a_mount_starts_from_them() {
    require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("backing");
    fs::create_dir_all(backing.join("pre")).unwrap();
    fs::write(backing.join("pre/existing"), b"from the backing directory").unwrap();
    let fs = TestFs::mount(&backing, &tmp.path().join("mnt"), Model::Strict).unwrap();
    assert_eq!(
        fs::read(fs.path().join("pre/existing")).unwrap(),
        b"from the backing directory"
    );
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(fs.path().join("pre/big"), &big).unwrap();
    fs.unmount().unwrap();
    assert_eq!(fs::read(backing.join("pre/big")).unwrap(), big);
    assert_eq!(
        fs::read(backing.join("pre/existing")).unwrap(),
        b"from the backing directory"
    );
}

/// `sync --data FILE` (coreutils): fdatasync of `file` from a process of its own, which the
/// test can kill while it waits.
fn spawn_fdatasync(file: &Path) -> std::process::Child {
    std::process::Command::new("sync")
        .arg("--data")
        .arg(file)
        .spawn()
        .expect("run coreutils' sync")
}

fn wait_for_syncs_in_flight(fs: &TestFs, wanted: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs.syncs_in_flight() != wanted {
        assert!(
            Instant::now() < deadline,
            "{wanted} syncs in flight expected, {} seen",
            fs.syncs_in_flight()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
#[ignore = "needs FUSE (/dev/fuse and fusermount3)"]
fn a_sync_in_flight_when_the_power_goes_off_makes_nothing_durable() {
    use std::os::unix::process::ExitStatusExt as _;
    let (_tmp, mut fs) = mounted(Model::Strict);
    let file = fs.path().join("f");
    write_synced(&file, b"synced");
    sync_dir(fs.path());
    // Long enough that only the power going off can end the sync.
    fs.set_sync_latency(Duration::from_secs(600));
    append(&file, b" and in flight");
    let mut child = spawn_fdatasync(&file);
    wait_for_syncs_in_flight(&fs, 1);
    // Killed first, then the power goes off: the sync ends with EIO, which the dying process
    // never sees.
    child.kill().unwrap();
    fs.power_off();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    wait_for_syncs_in_flight(&fs, 0);
    let report = fs.power_cut().unwrap();
    assert_eq!(report.files_reverted, vec!["/f".to_string()]);
    assert_eq!(fs::read(&file).unwrap(), b"synced");
    assert_eq!(
        fs.sync_counts().file_syncs,
        1,
        "only the first sync counted"
    );

    // A sync that completes before the power goes off keeps what it synced.
    fs.set_sync_latency(Duration::from_millis(50));
    append(&file, b" and then synced");
    let status = spawn_fdatasync(&file).wait().unwrap();
    assert!(
        status.success(),
        "a sync with the power on succeeds: {status}"
    );
    fs.power_off();
    let report = fs.power_cut().unwrap();
    assert!(!report.dropped_anything(), "{report:?}");
    assert_eq!(fs::read(&file).unwrap(), b"synced and then synced");
}
