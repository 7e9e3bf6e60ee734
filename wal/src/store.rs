//! The embedded key-value store (sled 0.34), kept behind a small API so it could be replaced.
//!
//! Durability: sled's `flush()` writes its log with `sync_file_range` on Linux, which does not
//! flush the drive's cache nor file metadata, so it does not survive a power loss (sled issue
//! #1452). [`Store::sync`] therefore follows every flush with an `fsync` of sled's data file, and
//! of any blob file (plus the blob directory) sled wrote without syncing. Chunk sizes are chosen
//! (see [`crate::layout::CHUNK_BYTES`]) so that no blob is ever written; the blob sync is a safety
//! net that costs one empty directory listing per commit.
//!
//! sled's background flusher is off: the WAL flushes when it commits and at no other time, so
//! nothing reaches disk half-way between two commits that was not already atomic in sled's log.

use std::collections::BTreeSet;
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::WalError;

/// A value read from the store (cheap to clone, derefs to bytes).
pub(crate) type Value = sled::IVec;

/// Name of the database directory inside the WAL directory.
pub(crate) const DB_DIR: &str = "db";

/// The database: one tree, atomic batches, explicit durable sync.
pub(crate) struct Store {
    /// Always `Some` until `drop`, which closes it first (see [`Store::drop`]).
    db: Option<sled::Db>,
    path: PathBuf,
    data_file: File,
    blobs_dir: PathBuf,
    /// Blob files already fsynced (only touched by [`Store::sync`], i.e. the writer thread).
    synced_blobs: Mutex<BTreeSet<std::ffi::OsString>>,
}

/// Writes applied together, atomically (also across a crash).
#[derive(Default)]
pub(crate) struct WriteBatch {
    batch: sled::Batch,
    operations: usize,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: &[u8], value: impl AsRef<[u8]>) {
        self.batch.insert(key, value.as_ref());
        self.operations += 1;
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &[u8]) {
        self.batch.remove(key);
        self.operations += 1;
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.operations == 0
    }
}

fn store_error(action: &'static str, path: &Path, source: sled::Error) -> WalError {
    // An I/O error is kept as itself, so callers can tell a failed disk from a full one
    // (`WalError::refuses_writes`).
    let source: Box<dyn std::error::Error + Send + Sync + 'static> = match source {
        sled::Error::Io(io) => Box::new(io),
        other => Box::new(other),
    };
    WalError::Store {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir/db`. Returns whether it was created.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<(Store, bool), WalError> {
        let path = dir.join(DB_DIR);
        let created = !path.join("db").exists();
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::LowSpace)
            .flush_every_ms(None)
            .open()
            .map_err(|e| store_error("opening the database", &path, e))?;
        let data_path = path.join("db");
        let data_file =
            File::open(&data_path).map_err(|e| WalError::io("opening", &data_path, e))?;
        let store = Store {
            db: Some(db),
            blobs_dir: path.join("blobs"),
            path,
            data_file,
            synced_blobs: Mutex::new(BTreeSet::new()),
        };
        store.make_files_durable(dir)?;
        Ok((store, created))
    }

    /// Makes durable what sled's open wrote without the syncs a power loss needs.
    ///
    /// sled 0.34 never fsyncs a directory. When it creates a database it creates `db/`,
    /// `db/blobs/`, its config file `db/conf` (not synced either) and its data file `db/db`.
    /// At every open, once it has recovered, it may write a snapshot as
    /// `db/snap.<lsn>.generating`, fsync that file, rename it to `db/snap.<lsn>` and delete
    /// the older snapshots; it writes snapshots at no other time (0.34 takes none while
    /// running). Without directory syncs a power cut can undo any of these. With the strict
    /// model of the power-cut test (`tests/powercut.rs`), a new WAL lost `db/` itself and came
    /// back empty (`created=true`, its sealed segments then deleted as orphans); and a cut that
    /// undid a snapshot rename (bringing back the older snapshot, whose deletion was undone
    /// too) made sled recover a database that no longer held together ("frames end at frame
    /// 365 …, the state says 364"). So, after every open and before anything is acknowledged:
    /// flush and
    /// fsync the data file (recovery may have rewritten its tail), fsync `db/conf`, `db/blobs/`
    /// and `db/` (the renamed snapshot, the deleted ones, the new files), then the WAL
    /// directory, which gained `db` (and `segments/`) when the WAL was created. Blob files
    /// written later are synced with each commit by [`Store::sync`].
    fn make_files_durable(&self, wal_dir: &Path) -> Result<(), WalError> {
        self.sync()?;
        crate::dir::sync_file(&self.path.join("conf"))?;
        if self.blobs_dir.is_dir() {
            crate::dir::sync_dir(&self.blobs_dir)?;
        }
        crate::dir::sync_dir(&self.path)?;
        // Also when sled found `db/` there: the process that created it may have been killed
        // before this sync.
        crate::dir::sync_dir(wal_dir)
    }

    fn db(&self) -> &sled::Db {
        self.db
            .as_ref()
            .expect("the database is open until the store is dropped")
    }

    /// The database directory.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads one value.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, WalError> {
        self.db()
            .get(key)
            .map_err(|e| store_error("reading a value", &self.path, e))
    }

    /// Iterates over keys in `[from, to)` in key order.
    pub fn range(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> impl Iterator<Item = Result<(Value, Value), WalError>> + use<'_> {
        self.db()
            .range(from.to_vec()..to.to_vec())
            .map(|item| item.map_err(|e| store_error("scanning a range", &self.path, e)))
    }

    /// Iterates over every key starting with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Value, Value), WalError>> + use<'_> {
        self.db()
            .scan_prefix(prefix)
            .map(|item| item.map_err(|e| store_error("scanning keys", &self.path, e)))
    }

    /// Applies a batch atomically (in memory; durable after [`Store::sync`]).
    pub fn apply(&self, batch: WriteBatch) -> Result<(), WalError> {
        self.db()
            .apply_batch(batch.batch)
            .map_err(|e| store_error("applying a commit batch", &self.path, e))
    }

    /// Makes everything applied so far durable: sled flush, then fsync of any blob file not
    /// synced yet (and of the blob directory), then of sled's data file.
    ///
    /// Blobs first: the log names the blobs, so the log must not become durable before them. The
    /// other order let a power cut between the two syncs keep a commit's log entries and lose
    /// the blob holding one of its values: sled then recovered the WAL's state of that commit
    /// without the frame header stored in the blob, and the WAL refused to open ("frames end at
    /// frame 708 …, the state says 709"; found by the power-cut test, `tests/powercut.rs`).
    ///
    /// What this cannot close: sled writes each log buffer with `sync_file_range`, which may put
    /// the log on the device before the blob it names is synced here. Only a commit not yet
    /// acknowledged is exposed, and only when it stores a blob (see
    /// [`crate::layout::CHUNK_BYTES`]).
    pub fn sync(&self) -> Result<(), WalError> {
        self.db()
            .flush()
            .map_err(|e| store_error("flushing the log", &self.path, e))?;
        self.sync_new_blobs()?;
        // fdatasync: the data and the size needed to read it back, without the timestamps.
        self.data_file
            .sync_data()
            .map_err(|e| WalError::io("fsyncing", self.path.join("db"), e))
    }

    /// Bytes sled occupies on disk (its data file plus blobs). Stats files: cache the result.
    pub fn size_on_disk(&self) -> Result<u64, WalError> {
        self.db()
            .size_on_disk()
            .map_err(|e| store_error("measuring the size on disk", &self.path, e))
    }

    fn sync_new_blobs(&self) -> Result<(), WalError> {
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(WalError::io("listing", &self.blobs_dir, e)),
        };
        let mut present = BTreeSet::new();
        let mut synced_any = false;
        let mut seen_before = 0;
        for entry in entries {
            let entry = entry.map_err(|e| WalError::io("listing", &self.blobs_dir, e))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                match File::open(entry.path()) {
                    Ok(file) => file
                        .sync_all()
                        .map_err(|e| WalError::io("fsyncing blob", entry.path(), e))?,
                    // sled removes blobs it no longer needs, possibly while we list them.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(WalError::io("opening blob", entry.path(), e)),
                }
                synced_any = true;
                tracing::debug!(blob = ?entry.path(), "fsynced a sled blob file");
            } else {
                seen_before += 1;
            }
            present.insert(name);
        }
        // New blob names must be durable before the log that points to them; removed ones
        // too, or a power cut brings back files sled no longer knows (leaked disk).
        let removed_any = seen_before < synced.len();
        if synced_any || removed_any {
            crate::dir::sync_dir(&self.blobs_dir)?;
        }
        *synced = present;
        Ok(())
    }
}

/// How long closing waits for sled's background threads to let go of its files.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for Store {
    /// Closes sled and waits (bounded) until its data file lock is released. sled hands some
    /// work to background threads that keep its files open for a moment after the last handle
    /// is dropped; waiting here means that once a `Wal` is dropped it can be reopened at once.
    fn drop(&mut self) {
        drop(self.db.take());
        let data_path = self.path.join("db");
        let Ok(file) = File::open(&data_path) else {
            return;
        };
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            match file.try_lock() {
                Ok(()) => return,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    tracing::warn!(path = %data_path.display(), error = %e, "sled did not release its database file in time");
                    return;
                }
            }
        }
    }
}
