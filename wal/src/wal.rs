//! The [`Wal`] handle: open and recover, state, seal, drain, budget.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::appender::Appender;
use crate::compress::FrameEncoder;
use crate::dir::WalDir;
use crate::error::{SegmentProblem, WalError};
use crate::frame::FrameHeader;
use crate::layout::{self, STATE_KEY};
use crate::options::WalOptions;
use crate::seal::{self, SealRequest};
use crate::segment::{self, SegmentFileName, SegmentMeta, SegmentReader, StoredSegmentReader};
use crate::state::{InitialState, StoredState, WalState};
use crate::store::Store;
use crate::usage::{self, Backlog, DiskUsage, WalStats};
use crate::writer::{self, Committer, MAX_TS_MS, MIN_TS_MS, Planner, Request, Shared};

/// A segment whose entry exists but whose file is missing or damaged, found at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedSegment {
    /// The segment number.
    pub number: u64,
    /// Its file.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: SegmentProblem,
}

/// What [`Wal::open`] found and repaired. The daemon should log every damaged segment loudly;
/// the WAL keeps working (appends, seals of new segments) with them present.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Whether the WAL was created by this open.
    pub created: bool,
    /// Segment files deleted because no entry names them: leftovers of a crash between writing
    /// a segment and registering it, or between forgetting an uploaded segment and deleting it.
    pub orphans_deleted: Vec<PathBuf>,
    /// Files in `segments/` with names the WAL does not write; left alone.
    pub foreign_files: Vec<PathBuf>,
    /// Registered segments whose file is missing or damaged.
    pub damaged: Vec<DamagedSegment>,
    /// Durable records not sealed yet.
    pub backlog: Backlog,
    /// Sealed segments waiting for upload (damaged ones included).
    pub segments: usize,
    /// Frames of records already sealed that were not removed from the database yet (the writer
    /// removes them a little at a time after each seal); they are removed from now on.
    pub sealed_frames_pending_removal: usize,
}

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
    store: Arc<Store>,
    shared: Arc<Mutex<Shared>>,
    stats: Arc<WalStats>,
    seal_lock: Mutex<()>,
    segments_dir: PathBuf,
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
    /// Opens the WAL in `options.dir`, creating it if needed, and recovers: it deletes segment
    /// files no entry names, reports entries whose file is missing or has the wrong size (or
    /// wrong MD5 with `verify_segments_on_open`), and checks that records, positions and segment
    /// numbers agree. Refuses a directory held by another live process or one that is not a WAL.
    pub fn open(options: WalOptions) -> Result<(Wal, RecoveryReport), WalError> {
        let dir = WalDir::open(&options.dir)?;
        let (store, created) = Store::open(dir.path(), options.cache_bytes)?;
        let state = match store.get(STATE_KEY)? {
            Some(bytes) => layout::decode::<StoredState>(&bytes, "the WAL state")?,
            None => StoredState::fresh(),
        };
        let segments = load_segments(&store, &state)?;
        let (backlog, garbage) = load_frames(&store, &state)?;
        let segments_dir = dir.segments();
        let mut report = RecoveryReport {
            created,
            backlog,
            segments: segments.len(),
            sealed_frames_pending_removal: garbage.len(),
            ..RecoveryReport::default()
        };
        clean_segments_dir(&segments_dir, &segments, &mut report)?;
        let mut damaged = BTreeMap::new();
        for meta in segments.values() {
            let path = segment::segment_path(&segments_dir, meta.number);
            if let Some(problem) = segment::inspect(&path, meta, options.verify_segments_on_open) {
                tracing::error!(segment = meta.number, path = %path.display(), %problem, "damaged WAL segment");
                damaged.insert(meta.number, problem.clone());
                report.damaged.push(DamagedSegment {
                    number: meta.number,
                    path,
                    problem,
                });
            }
        }
        let sled_bytes = store.size_on_disk()?;
        let segment_bytes = segments.values().map(|m| m.stored_bytes).sum();
        let shared = Arc::new(Mutex::new(Shared {
            state: state.clone(),
            segments,
            segment_bytes,
            damaged,
            backlog,
            sled_bytes,
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
            garbage,
            encoder,
            max_commit_bytes: options.max_commit_bytes as u64,
            dir: dir.path().to_path_buf(),
            #[cfg(test)]
            faults: faults.clone(),
        };
        let committer = Committer {
            store: store.clone(),
            shared: shared.clone(),
            stats: stats.clone(),
            #[cfg(test)]
            faults: faults.clone(),
        };
        let (sender, receiver) = mpsc::channel();
        let (planner, committer) = writer::spawn(planner, committer, receiver)
            .map_err(|e| WalError::io("starting the writer threads for", dir.path(), e))?;
        tracing::info!(
            dir = %dir.path().display(),
            created,
            backlog_records = backlog.records,
            segments = report.segments,
            orphans_deleted = report.orphans_deleted.len(),
            damaged = report.damaged.len(),
            "WAL open"
        );
        let wal = Wal {
            inner: Arc::new(Inner {
                sender: Some(sender),
                // Joined in this order: the planner stops first, then the committer drains.
                threads: vec![planner, committer],
                store,
                shared,
                stats,
                seal_lock: Mutex::new(()),
                segments_dir,
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
            store: &self.inner.store,
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
        if let Err(error) = self.request(Request::Register { plan, reply }, answer) {
            let path = segment::segment_path(&self.inner.segments_dir, meta.number);
            // Unregistered, the file is an orphan; the next open would delete it too.
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an unregistered segment");
            }
            return Err(error);
        }
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

    /// Opens segment `number` to stream its raw NDJSON; the reader checks the MD5s and lengths
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
        let (sled_bytes, segment_bytes) = {
            let shared = writer::lock(&self.inner.shared);
            (shared.sled_bytes, shared.segment_bytes)
        };
        DiskUsage {
            sled_bytes,
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

    /// Sequence numbers of the frames in the database (test helper).
    #[cfg(test)]
    pub(crate) fn stored_frames(&self) -> Vec<u64> {
        self.inner
            .store
            .scan_prefix(&layout::frame_header_prefix())
            .map(|item| layout::parse_numbered_key(&item.unwrap().0).unwrap())
            .collect()
    }

    /// The first frame not wholly sealed (test helper).
    #[cfg(test)]
    pub(crate) fn first_unsealed_frame(&self) -> u64 {
        writer::lock(&self.inner.shared).state.first_unsealed.frame
    }
}

/// Reads every segment entry and checks they are consecutive and below `next_file_number`.
fn load_segments(
    store: &Store,
    state: &StoredState,
) -> Result<BTreeMap<u64, SegmentMeta>, WalError> {
    let mut segments = BTreeMap::new();
    for item in store.scan_prefix(&layout::segment_prefix()) {
        let (key, value) = item?;
        let number = layout::parse_numbered_key(&key)
            .ok_or_else(|| WalError::corrupt(format!("malformed segment key {key:?}")))?;
        let meta: SegmentMeta = layout::decode(&value, &format!("the entry of segment {number}"))?;
        if meta.number != number {
            return Err(WalError::corrupt(format!(
                "the entry under segment key {number} describes segment {}",
                meta.number
            )));
        }
        segments.insert(number, meta);
    }
    let numbers: Vec<u64> = segments.keys().copied().collect();
    let consecutive = numbers.windows(2).all(|pair| pair[1] == pair[0] + 1);
    let below_next = numbers
        .last()
        .is_none_or(|last| last + 1 == state.next_file_number);
    if !consecutive || !below_next {
        return Err(WalError::corrupt(format!(
            "segment entries {numbers:?} are not a gapless run ending before the next file \
             number {}",
            state.next_file_number
        )));
    }
    Ok(segments)
}

/// Walks the frame headers: frames below the first unsealed position are sealed and wait for
/// removal (garbage); the others make the backlog. Checks that frames are consecutive and agree
/// with the state.
fn load_frames(
    store: &Store,
    state: &StoredState,
) -> Result<(Backlog, VecDeque<(u64, u32)>), WalError> {
    let position = state.first_unsealed;
    let mut backlog = Backlog::default();
    let mut garbage = VecDeque::new();
    // The last garbage frame seen and the sequence number after its records.
    let mut last_garbage: Option<(u64, u64)> = None;
    let mut expected_frame = position.frame;
    let mut expected_seq = position.seq.checked_sub(position.record).ok_or_else(|| {
        WalError::corrupt(format!("impossible first unsealed position {position:?}"))
    })?;
    for item in store.scan_prefix(&layout::frame_header_prefix()) {
        let (key, value) = item?;
        let seq = layout::parse_numbered_key(&key)
            .ok_or_else(|| WalError::corrupt(format!("malformed frame key {key:?}")))?;
        let header: FrameHeader = layout::decode(&value, &format!("the header of frame {seq}"))?;
        if seq < position.frame {
            if let Some((previous, end_seq)) = last_garbage
                && (seq != previous + 1 || header.first_seq != end_seq)
            {
                return Err(WalError::corrupt(format!(
                    "sealed frame {seq} does not follow sealed frame {previous}"
                )));
            }
            last_garbage = Some((seq, header.first_seq + header.records()));
            garbage.push_back((seq, header.chunks));
            continue;
        }
        if let Some((previous, end_seq)) = last_garbage.take()
            && (previous + 1 != position.frame || end_seq != expected_seq)
        {
            return Err(WalError::corrupt(format!(
                "sealed frame {previous} is not followed by the first unsealed frame {}",
                position.frame
            )));
        }
        if seq != expected_frame || header.first_seq != expected_seq {
            return Err(WalError::corrupt(format!(
                "frame {seq} (first record {}) found where frame {expected_frame} (first record \
                 {expected_seq}) was expected",
                header.first_seq
            )));
        }
        if seq == position.frame {
            if position.record > header.records()
                || header.raw_len(0, position.record) != position.raw_offset
            {
                return Err(WalError::corrupt(format!(
                    "the first unsealed position {position:?} does not fit frame {seq}"
                )));
            }
            backlog.records += header.records() - position.record;
            backlog.raw_bytes += header.raw_bytes - position.raw_offset;
        } else {
            backlog.records += header.records();
            backlog.raw_bytes += header.raw_bytes;
        }
        expected_frame += 1;
        expected_seq += header.records();
    }
    if let Some((previous, _)) = last_garbage
        && previous + 1 != position.frame
    {
        return Err(WalError::corrupt(format!(
            "sealed frame {previous} is not followed by the first unsealed frame {}",
            position.frame
        )));
    }
    if expected_frame != state.next_frame_seq || expected_seq != state.next_record_seq {
        return Err(WalError::corrupt(format!(
            "frames end at frame {expected_frame} and record {expected_seq}, the state says {} \
             and {}",
            state.next_frame_seq, state.next_record_seq
        )));
    }
    Ok((backlog, garbage))
}

/// Deletes temporary and orphan segment files and notes foreign ones.
fn clean_segments_dir(
    segments_dir: &Path,
    segments: &BTreeMap<u64, SegmentMeta>,
    report: &mut RecoveryReport,
) -> Result<(), WalError> {
    let entries =
        std::fs::read_dir(segments_dir).map_err(|e| WalError::io("listing", segments_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("listing", segments_dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let orphan = match segment::classify(&name.to_string_lossy()) {
            SegmentFileName::Sealed(number) => !segments.contains_key(&number),
            SegmentFileName::Temporary => true,
            SegmentFileName::Foreign => {
                tracing::warn!(path = %path.display(), "unknown file among WAL segments, left alone");
                report.foreign_files.push(path.clone());
                false
            }
        };
        if orphan {
            std::fs::remove_file(&path)
                .map_err(|e| WalError::io("deleting orphan segment file", &path, e))?;
            tracing::warn!(path = %path.display(), "deleted a segment file no entry names (left by a crash)");
            report.orphans_deleted.push(path);
        }
    }
    if !report.orphans_deleted.is_empty() {
        crate::dir::sync_dir(segments_dir)?;
    }
    Ok(())
}
