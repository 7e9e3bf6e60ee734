//! The [`Wal`] handle: open and recover, state, seal, drain, budget.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::appender::Appender;
use crate::compress::FrameEncoder;
use crate::dir::WalDir;
use crate::error::{SegmentProblem, WalError};
use crate::layout::{self, STATE_KEY};
use crate::log::LogWriter;
use crate::options::WalOptions;
use crate::recovery::{self, RecoveryReport};
use crate::seal::{self, SealRequest};
use crate::segment::{self, SegmentMeta, SegmentReader, StoredSegmentReader};
use crate::state::{InitialState, StoredState, WalState};
use crate::store::Store;
use crate::upgrade;
use crate::usage::{self, Backlog, DiskUsage, WalStats};
use crate::writer::{self, MAX_TS_MS, MIN_TS_MS, Planner, Request, Shared, Syncer};

/// The write-ahead log. Cheap to clone (an `Arc` inside), `Send + Sync`. The directory stays
/// locked until the last clone and the last [`Appender`] are dropped; dropping them waits for
/// queued appends to finish.
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

/// Shared by every handle. Field order matters on drop: the store must close before the
/// directory lock is released.
pub(crate) struct Inner {
    sender: Option<mpsc::Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
    /// Held so that the database closes (after the writer threads let go of it) before the
    /// directory lock is released.
    _store: Arc<Store>,
    shared: Arc<Mutex<Shared>>,
    stats: Arc<WalStats>,
    seal_lock: Mutex<()>,
    segments_dir: PathBuf,
    frames_dir: PathBuf,
    options: WalOptions,
    #[cfg(test)]
    faults: Arc<writer::Faults>,
    dir: WalDir,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Every appender is gone (they hold this `Inner`): closing our sender stops the writer
        // once it has committed what is queued.
        drop(self.sender.take());
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!(dir = %self.dir.path().display(), "a WAL writer thread panicked");
            }
        }
    }
}

impl Wal {
    /// Opens the WAL in `options.dir`, creating it if needed, and recovers: it replays the frame
    /// log past the stored state and truncates an entry cut short at its end, deletes segment and
    /// log files nothing needs, reports entries whose file is missing or has the wrong size (or
    /// wrong checksum with `verify_segments_on_open`), and checks that records, positions and
    /// segment numbers agree. A WAL of format 1 or 2 is upgraded first (see `upgrade.rs`).
    /// Refuses a directory held by another live process or one that is not a WAL.
    pub fn open(options: WalOptions) -> Result<(Wal, RecoveryReport), WalError> {
        let mut dir = WalDir::open(&options.dir)?;
        let (store, created) = Store::open(dir.path(), options.cache_bytes)?;
        let frames_dir = dir.frames();
        if let Some(older) = dir.older_format() {
            let moved = upgrade::migrate(&store, &frames_dir)?;
            dir.mark_current()?;
            tracing::info!(
                dir = %dir.path().display(),
                found = older,
                frames_moved = moved,
                "WAL upgraded to format 3: unsealed frames moved to the frame log"
            );
        }
        let swept = upgrade::sweep_old_frames(&store)?;
        if swept > 0 {
            tracing::info!(
                keys = swept,
                "removed the frames of the previous WAL format"
            );
        }
        let stored = match store.get(STATE_KEY)? {
            Some(bytes) => layout::decode_current::<StoredState>(&bytes, "the WAL state")?,
            None => StoredState::fresh(),
        };
        let segments = recovery::load_segments(&store, &stored)?;
        let segments_dir = dir.segments();
        let mut report = RecoveryReport {
            created,
            segments: segments.len(),
            ..RecoveryReport::default()
        };
        let log = recovery::load_log(&frames_dir, stored, &mut report)?;
        let (state, backlog) = (log.state, log.backlog);
        report.backlog = backlog;
        recovery::clean_segments_dir(&segments_dir, &segments, &mut report)?;
        let damaged = recovery::inspect_segments(
            &segments_dir,
            &segments,
            options.verify_segments_on_open,
            &mut report,
        );
        let sled_bytes = store.size_on_disk()?;
        let segment_bytes = segments.values().map(|m| m.stored_bytes).sum();
        let shared = Arc::new(Mutex::new(Shared {
            state: state.clone(),
            segments,
            segment_bytes,
            damaged,
            backlog,
            sled_bytes,
            log_bytes: log.bytes,
            poisoned: None,
        }));
        let store = Arc::new(store);
        let stats = Arc::new(WalStats::default());
        #[cfg(test)]
        let faults = Arc::new(writer::Faults::default());
        let encoder = FrameEncoder::new(options.zstd_level)
            .map_err(|e| WalError::io("starting zstd for", dir.path(), e))?;
        let planner = Planner {
            shared: shared.clone(),
            state,
            backlog,
            segments: writer::lock(&shared).segments.clone(),
            log_files: log.files,
            encoder,
            max_commit_bytes: options.max_commit_bytes as u64,
            dir: dir.path().to_path_buf(),
            #[cfg(test)]
            faults: faults.clone(),
        };
        let syncer = Syncer {
            store: store.clone(),
            log: LogWriter::new(&frames_dir),
            shared: shared.clone(),
            stats: stats.clone(),
            #[cfg(test)]
            faults: faults.clone(),
        };
        let (sender, receiver) = mpsc::channel();
        let (planner, syncer) = writer::spawn(planner, syncer, receiver)
            .map_err(|e| WalError::io("starting the writer threads for", dir.path(), e))?;
        tracing::info!(
            dir = %dir.path().display(),
            created,
            backlog_records = backlog.records,
            frames_replayed = report.frames_replayed,
            segments = report.segments,
            orphans_deleted = report.orphans_deleted.len(),
            damaged = report.damaged.len(),
            "WAL open"
        );
        let wal = Wal {
            inner: Arc::new(Inner {
                sender: Some(sender),
                // Joined in this order: the planner stops first, then the syncer drains.
                threads: vec![planner, syncer],
                _store: store,
                shared,
                stats,
                seal_lock: Mutex::new(()),
                segments_dir,
                frames_dir,
                options,
                #[cfg(test)]
                faults,
                dir,
            }),
        };
        Ok((wal, report))
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    /// A snapshot of the durable state (a clone under a short lock).
    pub fn state(&self) -> WalState {
        writer::lock(&self.inner.shared).state.public()
    }

    /// The failure that made the WAL refuse writes (a commit that failed), if any. Once set it
    /// stays until the WAL is reopened: the owner should stop and restart.
    pub fn failure(&self) -> Option<Arc<WalError>> {
        writer::lock(&self.inner.shared).poisoned.clone()
    }

    /// Whether nothing was ever committed: [`Wal::initialize`] is allowed only then.
    pub fn is_new(&self) -> bool {
        let shared = writer::lock(&self.inner.shared);
        !shared.state.touched && shared.segments.is_empty()
    }

    /// A handle to append through the group-commit writer.
    pub fn appender(&self) -> Appender {
        Appender::new(self.sender(), self.inner.clone())
    }

    /// Durable records not sealed yet (kept in memory; cheap).
    pub fn backlog(&self) -> Backlog {
        writer::lock(&self.inner.shared).backlog
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Arc<WalStats> {
        self.inner.stats.clone()
    }

    /// Seeds a new WAL (imported state, or the first start's configuration). Blocks until
    /// durable. Fails with [`WalError::NotEmpty`] once anything was committed.
    pub fn initialize(&self, init: InitialState) -> Result<(), WalError> {
        let (reply, answer) = mpsc::channel();
        self.request(Request::Initialize { init, reply }, answer)
    }

    /// Seals the oldest unsealed records, up to `max_raw_bytes` of raw NDJSON (a first record
    /// larger than that is sealed alone), into the next segment, with timestamp
    /// `max(now_ms, last + 1)` (at least 13 digits). Returns `None` when nothing is unsealed:
    /// a segment is never empty. Blocking (file I/O, fsyncs, one commit); seals are serialised.
    pub fn seal(&self, max_raw_bytes: u64, now_ms: u64) -> Result<Option<SegmentMeta>, WalError> {
        let _one_seal_at_a_time = self
            .inner
            .seal_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let state = {
            let shared = writer::lock(&self.inner.shared);
            if let Some(cause) = &shared.poisoned {
                return Err(WalError::Poisoned {
                    cause: cause.clone(),
                });
            }
            shared.state.clone()
        };
        let ts_ms = now_ms.max(state.last_sealed_ts_ms + 1).max(MIN_TS_MS);
        if ts_ms > MAX_TS_MS {
            return Err(WalError::InvalidArgument {
                what: "now_ms",
                reason: format!("timestamp {ts_ms} has more than 13 digits"),
            });
        }
        let request = SealRequest {
            frames_dir: &self.inner.frames_dir,
            segments_dir: &self.inner.segments_dir,
            state: &state,
            max_raw_bytes,
            number: state.next_file_number,
            ts_ms,
            now_ms,
            zstd_level: self.inner.options.zstd_level,
        };
        let Some(plan) = seal::write_segment(&request)? else {
            return Ok(None);
        };
        let meta = plan.meta.clone();
        let (reply, answer) = mpsc::channel();
        // On failure the file stays: whether the registering commit reached the disk is unknown
        // (a failed fsync may still have written it), and deleting the file of a registered
        // segment would lose its records. The next open deletes it if no entry names it.
        self.request(Request::Register { plan, reply }, answer)?;
        tracing::debug!(
            segment = meta.number,
            records = meta.records,
            raw_bytes = meta.raw_bytes,
            "sealed"
        );
        Ok(Some(meta))
    }

    /// Sealed segments not yet uploaded, oldest first (damaged ones included).
    pub fn segments(&self) -> Vec<SegmentMeta> {
        writer::lock(&self.inner.shared)
            .segments
            .values()
            .cloned()
            .collect()
    }

    /// Registered segments found missing or damaged at open, oldest first, with what is wrong.
    /// [`Wal::open_segment`] refuses them; they stay registered (and block the uploads behind
    /// them) until marked uploaded.
    pub fn damaged_segments(&self) -> Vec<(u64, SegmentProblem)> {
        writer::lock(&self.inner.shared)
            .damaged
            .iter()
            .map(|(number, problem)| (*number, problem.clone()))
            .collect()
    }

    /// The file of segment `number` (whether or not it exists).
    pub fn segment_path(&self, number: u64) -> PathBuf {
        segment::segment_path(&self.inner.segments_dir, number)
    }

    fn readable_segment(&self, number: u64) -> Result<(PathBuf, SegmentMeta), WalError> {
        let shared = writer::lock(&self.inner.shared);
        let meta = shared
            .segments
            .get(&number)
            .cloned()
            .ok_or(WalError::UnknownSegment { number })?;
        let path = self.segment_path(number);
        if let Some(problem) = shared.damaged.get(&number) {
            return Err(WalError::SegmentDamaged {
                number,
                path,
                problem: problem.clone(),
            });
        }
        Ok((path, meta))
    }

    /// Opens segment `number` to stream its raw NDJSON; the reader checks the checksum and length
    /// at the end (`io::ErrorKind::InvalidData` naming the segment on mismatch). May be called
    /// again for a retry.
    pub fn open_segment(&self, number: u64) -> Result<SegmentReader, WalError> {
        let (path, meta) = self.readable_segment(number)?;
        SegmentReader::open(path, meta)
    }

    /// Opens segment `number` to stream its stored zstd bytes as they are, checked at the end.
    pub fn open_segment_stored(&self, number: u64) -> Result<StoredSegmentReader, WalError> {
        let (path, meta) = self.readable_segment(number)?;
        StoredSegmentReader::open(path, meta)
    }

    /// Forgets segment `number` after its upload: it must be the oldest. Its entry is removed and
    /// the upload recorded durably first, then its file is deleted (a crash in between leaves an
    /// orphan file, deleted at the next open). Blocking.
    pub fn mark_uploaded(&self, number: u64, uploaded_at_ms: u64) -> Result<(), WalError> {
        let (reply, answer) = mpsc::channel();
        self.request(
            Request::Uploaded {
                number,
                uploaded_at_ms,
                reply,
            },
            answer,
        )?;
        let path = self.segment_path(number);
        let removed = match std::fs::remove_file(&path) {
            Ok(()) => crate::dir::sync_dir(&self.inner.segments_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(WalError::io("deleting uploaded segment", &path, e)),
        };
        if let Err(error) = removed {
            // The entry is gone, so this is only disk space: the next open deletes the orphan.
            tracing::warn!(error = %error, "cannot delete an uploaded segment file");
        }
        Ok(())
    }

    /// Disk taken against the budget. Cheap: cached figures and one `statvfs`.
    pub fn disk_usage(&self) -> DiskUsage {
        let (database_bytes, segment_bytes) = {
            let shared = writer::lock(&self.inner.shared);
            (shared.sled_bytes + shared.log_bytes, shared.segment_bytes)
        };
        DiskUsage {
            database_bytes,
            segment_bytes,
            max_bytes: self.inner.options.max_bytes,
            fs_available_bytes: usage::fs_available_bytes(self.dir()),
        }
    }

    fn sender(&self) -> mpsc::Sender<Request> {
        match &self.inner.sender {
            Some(sender) => sender.clone(),
            // Only `Drop` takes the sender, and it runs when no handle is left.
            None => mpsc::channel().0,
        }
    }

    fn request<T>(
        &self,
        request: Request,
        answer: mpsc::Receiver<Result<T, WalError>>,
    ) -> Result<T, WalError> {
        self.sender().send(request).map_err(|_| WalError::Closed)?;
        answer.recv().unwrap_or(Err(WalError::Closed))
    }

    #[cfg(test)]
    pub(crate) fn faults(&self) -> &writer::Faults {
        &self.inner.faults
    }

    /// The frame log's files, by first frame (test helper).
    #[cfg(test)]
    pub(crate) fn log_files(&self) -> Vec<u64> {
        crate::log::list_files(&self.inner.frames_dir).unwrap().0
    }
}
