//! A FUSE file system for tests that forgets, at a power cut, everything not synced.
//!
//! A `kill -9` leaves the page cache in place, so it cannot show a missing `fsync` of a file or
//! of a directory. This file system can: it keeps, for every file and directory, what programs
//! see (live) and what a power cut leaves (durable), and moves one to the other only when the
//! program syncs (the rules are in [`model`]):
//!
//! - file data and size become durable with `fsync`/`fdatasync` of that file;
//! - directory changes (create, mkdir, rename, unlink, rmdir) become durable with `fsync` of that
//!   directory ([`Model::Strict`], POSIX as written), or also when a file they name is synced
//!   ([`Model::Ext4Like`]).
//!
//! A test runs the program on the mount, stops it with SIGKILL (and, to put the cut at the kill
//! itself, turns the power off at once with [`TestFs::power_off`]), reaps it, then calls
//! [`TestFs::power_cut`]: the mount is dropped (so no request still in flight can land after the
//! cut), everything not durable is dropped at once, and the same path is mounted again for the
//! restart. The kernel caches nothing in between: entry and attribute time-to-live are zero and
//! files are opened with direct I/O (no page cache, no writeback cache).
//!
//! The file system lives in memory while mounted (file data in copy-on-write chunks, so a sync
//! copies no bytes). It starts from the contents of a backing directory, and
//! [`TestFs::unmount`] writes what it holds back there, as a clean shutdown would, so a test
//! can look at the files after the run.
//!
//! A sync can be given a latency ([`TestFs::set_sync_latency`]), as a real disk's flush has, and
//! the power can go off at the moment of a kill ([`TestFs::power_off`]): a program killed while
//! waiting for a sync then loses, at the cut, what it asked to make durable.
//!
//! What it does not model: metadata other than sizes (mode, owner, times are kept as they are);
//! a partial cut inside one directory (its unsynced changes go or stay together); torn writes
//! (a write not synced is dropped whole, never half); `sync_file_range`, `syncfs` and `sync`
//! (they make nothing durable here); hard and symbolic links, special files (refused).
//!
//! Mounting needs `/dev/fuse` and, for a user other than root, `fusermount3` (Debian's `fuse3`).
//! fuser's own mount code is used: no libfuse is needed to build or to run.

pub mod model;

mod fs;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use model::{Body, Data, ROOT, State};
pub use model::{CutReport, Model, SyncCounts};

/// Why tests that mount this file system are ignored by default, and what they need.
pub const NEEDS_FUSE: &str = "needs FUSE (/dev/fuse and fusermount3)";

/// A mounted test file system. Dropping it unmounts it (without writing back).
pub struct TestFs {
    state: Arc<Mutex<State>>,
    /// Wakes the syncs in flight when the power goes off or is cut.
    power_events: Arc<Condvar>,
    mountpoint: PathBuf,
    backing: PathBuf,
    session: Option<fuser::BackgroundSession>,
    cuts: usize,
}

/// Panics, naming what is missing, unless this machine can mount FUSE file systems: tests that
/// need it fail rather than pass without having run.
pub fn require_fuse() {
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse");
    if let Err(e) = device {
        panic!("{NEEDS_FUSE}: cannot open /dev/fuse: {e}");
    }
    let in_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("fusermount3").is_file())
    });
    assert!(
        in_path,
        "{NEEDS_FUSE}: fusermount3 is not in PATH (install Debian's fuse3)"
    );
}

impl TestFs {
    /// Loads `backing` (regular files and directories; created if missing) as durable contents
    /// and mounts them at `mountpoint` (created if missing) with the sync rule `model`.
    pub fn mount(backing: &Path, mountpoint: &Path, model: Model) -> io::Result<TestFs> {
        std::fs::create_dir_all(backing)?;
        std::fs::create_dir_all(mountpoint)?;
        let mut state = State::new(model);
        load(&mut state, ROOT, backing)?;
        let mut fs = TestFs {
            state: Arc::new(Mutex::new(state)),
            power_events: Arc::new(Condvar::new()),
            mountpoint: mountpoint.to_path_buf(),
            backing: backing.to_path_buf(),
            session: None,
            cuts: 0,
        };
        fs.attach()?;
        Ok(fs)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The sync calls received so far.
    pub fn sync_counts(&self) -> SyncCounts {
        self.lock().counts
    }

    /// Makes every later `fsync`/`fdatasync` of a file or directory take `latency`, as a disk's
    /// flush does (zero, the default: at once). A program killed while a sync is in flight
    /// loses what that sync would have made durable if the power is cut before the latency
    /// has passed, so kills land far more often between a write and the end of its sync, the
    /// window a program's recovery must handle. Other requests are served meanwhile;
    /// synchronous writes (`O_SYNC`, `O_DSYNC`) stay durable at once.
    pub fn set_sync_latency(&self, latency: Duration) {
        self.lock().sync_latency = latency;
    }

    /// The power goes off now, as far as durability goes: from this call until the next
    /// [`TestFs::power_cut`], every sync (in flight or new) fails with `EIO` and makes nothing
    /// durable. Calling it right after sending SIGKILL, before reaping, puts the cut at the
    /// kill itself: a sync the program was waiting for cannot complete in between, and the
    /// `EIO` it gets instead is never seen (the signal is already pending).
    pub fn power_off(&self) {
        self.lock().power_off = true;
        self.power_events.notify_all();
    }

    /// Sync requests received and not answered yet (see [`TestFs::set_sync_latency`]).
    pub fn syncs_in_flight(&self) -> u64 {
        self.lock().syncs_in_flight
    }

    /// Power cuts so far.
    pub fn cuts(&self) -> usize {
        self.cuts
    }

    /// The power cut: unmounts (every program using the mount must be stopped and reaped
    /// first: a busy mount is an error), drops everything not durable, mounts again.
    pub fn power_cut(&mut self) -> io::Result<CutReport> {
        self.detach()?;
        let report = self.lock().power_cut();
        self.power_events.notify_all();
        self.cuts += 1;
        self.attach()?;
        Ok(report)
    }

    /// Unmounts, then writes what the file system holds (everything, as a clean shutdown) into
    /// the backing directory in place of what it held.
    pub fn unmount(mut self) -> io::Result<()> {
        self.detach()?;
        for entry in std::fs::read_dir(&self.backing)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        let state = self.lock();
        save(&state, ROOT, &self.backing)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn attach(&mut self) -> io::Result<()> {
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("powercut-testfs".into()),
            fuser::MountOption::Subtype("testfs".into()),
            fuser::MountOption::NoAtime,
        ];
        let fs = fs::Fs {
            state: self.state.clone(),
            power_events: self.power_events.clone(),
        };
        let session = fuser::spawn_mount(fs, &self.mountpoint, &config).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "mounting the test file system at {} ({NEEDS_FUSE}): {e}",
                    self.mountpoint.display()
                ),
            )
        })?;
        self.session = Some(session);
        Ok(())
    }

    fn detach(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        // A process killed a moment ago may still be closing its files: allow a bounded wait.
        let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
            .map_err(io::Error::other)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
            if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                break;
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Some(libc::EPERM) => {
                    // Not root: fusermount3 unmounts for us.
                    return session.umount_and_join();
                }
                _ => {
                    self.session = Some(session);
                    return Err(io::Error::new(
                        error.kind(),
                        format!(
                            "unmounting {} (is a program still using it?): {error}",
                            self.mountpoint.display()
                        ),
                    ));
                }
            }
        }
        // Unmounted: the session thread sees the device go away, having answered every request
        // it had read.
        session.join()
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        if self.session.is_some() && self.detach().is_err() {
            // Last resort, so a failed test does not leave a mount behind.
            if let Ok(path) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
            {
                // SAFETY: valid NUL-terminated string.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

fn load(state: &mut State, dir: u64, path: &Path) -> io::Result<()> {
    let mut entries: Vec<(OsString, PathBuf)> = std::fs::read_dir(path)?
        .map(|entry| entry.map(|e| (e.file_name(), e.path())))
        .collect::<io::Result<_>>()?;
    entries.sort();
    for (name, child_path) in entries {
        let meta = std::fs::symlink_metadata(&child_path)?;
        use std::os::unix::fs::MetadataExt as _;
        let perm = (meta.mode() & 0o7777) as u16;
        let is_dir = meta.is_dir();
        if !is_dir && !meta.is_file() {
            return Err(io::Error::other(format!(
                "{}: only files and directories are supported",
                child_path.display()
            )));
        }
        let ino = state
            .create(dir, &name, is_dir, perm, meta.uid(), meta.gid())
            .map_err(io::Error::from_raw_os_error)?;
        if is_dir {
            load(state, ino, &child_path)?;
        } else {
            let bytes = std::fs::read(&child_path)?;
            if let Body::File { live, .. } = &mut state.node_mut(ino).expect("created").body {
                *live = Data::from_bytes(&bytes);
            }
            state.sync(ino).expect("created");
        }
    }
    state.sync(dir).map_err(io::Error::from_raw_os_error)?;
    // Loading is not the program's doing.
    state.counts = SyncCounts::default();
    Ok(())
}

fn save(state: &State, dir: u64, path: &Path) -> io::Result<()> {
    for (name, ino) in state.list(dir).map_err(io::Error::from_raw_os_error)? {
        let child = path.join(&name);
        let node = state.node(ino).map_err(io::Error::from_raw_os_error)?;
        match &node.body {
            Body::Dir { .. } => {
                std::fs::create_dir(&child)?;
                save(state, ino, &child)?;
            }
            Body::File { live, .. } => std::fs::write(&child, live.to_bytes())?,
        }
    }
    Ok(())
}
