//! The WAL directory: exclusive lock, format marker, and fsync helpers.
//!
//! A directory is accepted when it is missing, empty (a leftover `LOCK` file aside), or carries
//! the format marker. The marker is written (and synced) before anything else, so a crash during
//! creation leaves either an empty directory or a WAL, never a directory that is refused later.
//!
//! The directory holds every event not yet uploaded, so only its owner may enter it: it is
//! created with mode 0700, and an existing one with group or other permissions is narrowed to
//! 0700 once it is known to be a WAL (or empty).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::WalError;

/// The lock file, held (advisory `flock`) for as long as the WAL is open.
pub(crate) const LOCK_FILE: &str = "LOCK";
/// The format marker file.
pub(crate) const FORMAT_FILE: &str = "WAL_FORMAT";
/// The temporary name the marker is written under before its rename.
const FORMAT_TMP_FILE: &str = "WAL_FORMAT.tmp";
/// What the marker holds for this format.
pub(crate) const FORMAT: &str = "opencti-stream-exporter wal 3";
/// The markers of WAL formats 1 and 2, which this version upgrades at open (see `upgrade.rs`)
/// and then marks as format 3, so that a version that only knows an older format refuses it from
/// then on.
const OLDER_FORMATS: [&str; 2] = [
    "opencti-stream-exporter wal 1",
    "opencti-stream-exporter wal 2",
];
/// The folder of sealed segment files.
pub(crate) const SEGMENTS_DIR: &str = "segments";

/// An open WAL directory; the lock is released when this is dropped.
#[derive(Debug)]
pub(crate) struct WalDir {
    path: PathBuf,
    /// The marker found when it names an older format (upgraded by the caller, then
    /// [`WalDir::mark_current`]).
    older_format: Option<&'static str>,
    _lock: File,
}

impl WalDir {
    /// Creates the directory if needed, takes its lock, checks or writes the format marker and
    /// creates `segments/`.
    pub fn open(path: &Path) -> Result<WalDir, WalError> {
        // The new directory's entry in its parent must survive a power loss too: without it the
        // whole WAL is gone after one (found by the power-cut test, strict model).
        let created =
            create_dir_durably(path, 0o700).map_err(|e| WalError::io("creating", path, e))?;
        if !created {
            // The process that created it may have been killed before it synced the parent.
            sync_parent(path).map_err(|e| WalError::io("fsyncing the parent of", path, e))?;
        }
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| WalError::io("opening lock file", &lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(WalError::Locked {
                    dir: path.to_path_buf(),
                    lock: lock_path,
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(WalError::io("locking", &lock_path, e));
            }
        }
        let older_format = check_or_write_format(path)?;
        restrict_to_owner(path);
        for name in [SEGMENTS_DIR, crate::log::FRAMES_DIR] {
            let sub = path.join(name);
            if !sub.is_dir() {
                std::fs::create_dir_all(&sub).map_err(|e| WalError::io("creating", &sub, e))?;
                sync_dir(path)?;
            }
        }
        Ok(WalDir {
            path: path.to_path_buf(),
            older_format,
            _lock: lock,
        })
    }

    /// The WAL directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder of sealed segments.
    pub fn segments(&self) -> PathBuf {
        self.path.join(SEGMENTS_DIR)
    }

    /// The folder of the frame log.
    pub fn frames(&self) -> PathBuf {
        self.path.join(crate::log::FRAMES_DIR)
    }

    /// The marker found, when it names a format older than this one.
    pub fn older_format(&self) -> Option<&'static str> {
        self.older_format
    }

    /// Rewrites the marker for this format, once the WAL was upgraded.
    pub fn mark_current(&mut self) -> Result<(), WalError> {
        write_atomically(
            &self.path.join(FORMAT_FILE),
            format!("{FORMAT}\n").as_bytes(),
        )?;
        self.older_format = None;
        Ok(())
    }
}

/// Narrows `dir` to mode 0700 when group or others have any permission on it. A failure (a
/// directory owned by someone else) is logged, not fatal.
fn restrict_to_owner(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(metadata) = std::fs::metadata(dir) else {
        return;
    };
    let mode = metadata.permissions().mode();
    if mode & 0o077 == 0 {
        return;
    }
    match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        Ok(()) => tracing::info!(
            dir = %dir.display(),
            previous_mode = format!("{:o}", mode & 0o777),
            "the WAL directory was open to other users: narrowed to 0700"
        ),
        Err(error) => tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", mode & 0o777),
            %error,
            "the WAL directory is open to other users and cannot be narrowed to 0700"
        ),
    }
}

/// Checks the marker, or writes it in an empty directory. Returns the marker found when it names
/// an older format.
fn check_or_write_format(dir: &Path) -> Result<Option<&'static str>, WalError> {
    let marker = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(found) if found.trim_end() == FORMAT => return Ok(None),
        Ok(found) if OLDER_FORMATS.contains(&found.trim_end()) => {
            return Ok(OLDER_FORMATS
                .into_iter()
                .find(|old| *old == found.trim_end()));
        }
        Ok(found) => {
            return Err(WalError::UnsupportedFormat {
                path: marker,
                found: found.trim_end().chars().take(80).collect(),
                expected: FORMAT,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(WalError::io("reading format marker", &marker, e)),
    }
    let mut others: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| WalError::io("listing", dir, e))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        // A crash while writing the marker may leave its temporary file behind.
        .filter(|name| name != LOCK_FILE && name != FORMAT_TMP_FILE)
        .collect();
    if !others.is_empty() {
        others.sort();
        let shown = others
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = others.len().saturating_sub(5);
        return Err(WalError::NotAWal {
            dir: dir.to_path_buf(),
            marker: FORMAT_FILE,
            found: if more > 0 {
                format!("{shown} and {more} more")
            } else {
                shown
            },
        });
    }
    write_atomically(&marker, format!("{FORMAT}\n").as_bytes())?;
    Ok(None)
}

/// Writes `bytes` to `path` through a synced temporary file, a rename and a directory sync.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WalError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(|e| WalError::io("creating", &tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| WalError::io("writing", &tmp, e))?;
    file.sync_all()
        .map_err(|e| WalError::io("fsyncing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| WalError::io("renaming into place", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// fsyncs a directory, so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io("fsyncing directory", dir, e))
}

/// The directory holding `path` (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// fsyncs the directory holding `path`, so that `path`'s entry (just created, renamed or
/// removed) survives a power loss. POSIX makes a new name durable only through an fsync of its
/// directory; ext4 usually carries it along with the next fsync of anything, other file systems
/// do not.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    File::open(parent_of(path))?.sync_all()
}

/// Creates directory `dir` with `mode` and its missing parents (with `mode` too), and fsyncs the
/// parent of each directory it creates, deepest first, so they all survive a power loss. Returns
/// whether `dir` was created. A directory created concurrently by someone else counts as there.
pub fn create_dir_durably(dir: &Path, mode: u32) -> std::io::Result<bool> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(false);
    }
    let parent = parent_of(dir);
    if dir.parent().is_some_and(|p| !p.as_os_str().is_empty()) {
        create_dir_durably(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    File::open(parent)?.sync_all()?;
    Ok(true)
}

/// fsyncs an existing file.
pub(crate) fn sync_file(path: &Path) -> Result<(), WalError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| WalError::io("fsyncing", path, e))
}
