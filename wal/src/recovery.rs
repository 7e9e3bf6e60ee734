//! Recovery at open: what the database and `segments/` hold after a stop or a crash, checked
//! against each other.
//!
//! Invariant kept here (invariants 2 and 3, docs/architecture.md#invariants): a crash can leave a
//! segment file without an entry (written but not registered, or forgotten after upload but not
//! deleted), frame log files holding only sealed frames, a temporary segment file, and an entry
//! cut short at the end of the frame log (a commit never acknowledged). Open deletes the files and
//! truncates the cut entry. It replays the frames written after the stored state (commits that
//! only appended records, see `state.rs`). It never drops an entry: an entry whose file is missing
//! or damaged is reported (the daemon logs it loudly) and `open_segment` refuses it by name.
//! Everything else that disagrees (gaps in segment numbers, frames that do not follow each other or
//! the state, a damaged frame anywhere but at the very end of the log) is corruption and fails the
//! open.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{SegmentProblem, WalError};
use crate::layout;
use crate::log::{self, EntryError, LogPos, LogReader};
use crate::segment::{self, SegmentFileName, SegmentMeta};
use crate::state::StoredState;
use crate::store::Store;
use crate::usage::Backlog;

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
    /// Frame log files holding only sealed frames, deleted (left by a stop right after a seal).
    pub sealed_log_files_deleted: usize,
    /// Frames of commits that only appended, replayed from the frame log onto the stored state.
    pub frames_replayed: u64,
    /// Bytes of an entry cut short at the end of the frame log (a commit never acknowledged),
    /// truncated.
    pub torn_tail_bytes: u64,
}

/// Reads every segment entry and checks they are consecutive and below `next_file_number`.
pub(crate) fn load_segments(
    store: &Store,
    state: &StoredState,
) -> Result<BTreeMap<u64, SegmentMeta>, WalError> {
    let mut segments = BTreeMap::new();
    for item in store.scan_prefix(&layout::segment_prefix()) {
        let (key, value) = item?;
        let number = layout::parse_numbered_key(&key)
            .ok_or_else(|| WalError::corrupt(format!("malformed segment key {key:?}")))?;
        let meta = SegmentMeta::decode(&value, &format!("the entry of segment {number}"))?;
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

/// What the frame log holds once checked and replayed.
pub(crate) struct LoadedLog {
    /// The stored state with the frames written after it replayed.
    pub state: StoredState,
    /// The unsealed records.
    pub backlog: Backlog,
    /// The log files kept, by first frame, oldest first.
    pub files: VecDeque<u64>,
    /// Their size.
    pub bytes: u64,
}

/// Checks the frame log against `stored` (the state read from the database): every frame from
/// the first unsealed one to the stored `log_end` must be there and sound; the frames after it
/// are replayed onto the state up to the end of the log, where an entry cut short is truncated.
/// Files holding only sealed frames, and empty ones past the end, are deleted.
pub(crate) fn load_log(
    frames_dir: &Path,
    stored: StoredState,
    report: &mut RecoveryReport,
) -> Result<LoadedLog, WalError> {
    let (listed, foreign) = log::list_files(frames_dir)?;
    for path in foreign {
        tracing::warn!(path = %path.display(), "unknown file among the frame log, left alone");
        report.foreign_files.push(path);
    }
    let start = stored.first_unsealed;
    let mut deleted_any = false;
    for &file in listed.iter().filter(|file| **file < start.log.file) {
        remove_log_file(frames_dir, file)?;
        report.sealed_log_files_deleted += 1;
        deleted_any = true;
    }

    let mut reader = LogReader::new(frames_dir);
    let mut state = stored.clone();
    let mut backlog = Backlog::default();
    let mut pos = start.log;
    let mut frame = start.frame;
    let mut expected_seq = start.seq.checked_sub(start.record).ok_or_else(|| {
        WalError::corrupt(format!("impossible first unsealed position {start:?}"))
    })?;
    let mut files = VecDeque::new();
    loop {
        let replaying = frame >= stored.next_frame_seq;
        if replaying && frame == stored.next_frame_seq && pos != stored.log_end {
            return Err(WalError::corrupt(format!(
                "the frame log reaches frame {frame} at {pos:?}, the state puts its end at {:?}",
                stored.log_end
            )));
        }
        let entry = match reader.check_entry(pos) {
            Ok(entry) => entry,
            Err(EntryError::Io(e)) => {
                return Err(WalError::io("reading frame log", reader.path(pos.file), e));
            }
            Err(error) if !replaying => {
                return Err(error.into_wal_error(&reader.path(pos.file), pos));
            }
            Err(_) => {
                report.torn_tail_bytes = truncate_torn_tail(frames_dir, pos)?;
                break;
            }
        };
        let header = &entry.header;
        if header.frame != frame || header.first_seq != expected_seq {
            return Err(WalError::corrupt(format!(
                "frame {} (first record {}) found at {pos:?} where frame {frame} (first record \
                 {expected_seq}) was expected",
                header.frame, header.first_seq
            )));
        }
        if frame == start.frame {
            if start.record > header.records()
                || header.raw_len(0, start.record) != start.raw_offset
            {
                return Err(WalError::corrupt(format!(
                    "the first unsealed position {start:?} does not fit frame {frame}"
                )));
            }
            backlog.records += header.records() - start.record;
            backlog.raw_bytes += header.raw_bytes - start.raw_offset;
        } else {
            backlog.records += header.records();
            backlog.raw_bytes += header.raw_bytes;
        }
        if replaying {
            header.replay(&mut state);
            state.log_end = entry.next();
            report.frames_replayed += 1;
        }
        if files.back() != Some(&pos.file) {
            files.push_back(pos.file);
        }
        expected_seq += header.records();
        frame += 1;
        pos = entry.next();
    }
    if files.back() != Some(&pos.file) && log::file_path(frames_dir, pos.file).exists() {
        files.push_back(pos.file);
    }
    for &file in listed.iter().filter(|file| **file > pos.file) {
        let path = log::file_path(frames_dir, file);
        let len = std::fs::metadata(&path)
            .map_err(|e| WalError::io("inspecting", &path, e))?
            .len();
        if len > 0 {
            return Err(WalError::corrupt(format!(
                "{} lies past the end of the frame log ({pos:?})",
                path.display()
            )));
        }
        remove_log_file(frames_dir, file)?;
        deleted_any = true;
    }
    if deleted_any {
        crate::dir::sync_dir(frames_dir)?;
    }
    let files_vec: Vec<u64> = files.iter().copied().collect();
    Ok(LoadedLog {
        state,
        backlog,
        bytes: log::files_bytes(frames_dir, &files_vec),
        files,
    })
}

fn remove_log_file(frames_dir: &Path, file: u64) -> Result<(), WalError> {
    let path = log::file_path(frames_dir, file);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WalError::io("deleting frame log file", &path, e)),
    }
}

/// Ends the log at `pos`, where no sound entry starts. What follows must be one write cut short:
/// nothing (a clean end), or bytes that end within the length the entry announces, or zeros.
/// Anything else is corruption. Returns the bytes truncated.
fn truncate_torn_tail(frames_dir: &Path, pos: LogPos) -> Result<u64, WalError> {
    let path = log::file_path(frames_dir, pos.file);
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(WalError::io("opening frame log", &path, e)),
    };
    let len = file
        .metadata()
        .map_err(|e| WalError::io("inspecting", &path, e))?
        .len();
    if len <= pos.offset {
        return Ok(0);
    }
    let mut tail = Vec::new();
    {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(pos.offset))
            .and_then(|_| file.read_to_end(&mut tail))
            .map_err(|e| WalError::io("reading frame log", &path, e))?;
    }
    let announced = tail
        .get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_le_bytes);
    // A write cut short leaves a prefix of its entry: no more bytes than the entry announces
    // (a length beyond any entry this crate writes is not a prefix but damage).
    let cut_short = match announced {
        None => true,
        Some(body) => body < 1 << 32 && (tail.len() as u64) <= body + 12,
    };
    if !cut_short && tail.iter().any(|b| *b != 0) {
        return Err(WalError::corrupt(format!(
            "the entry at offset {} of {} is damaged and {} bytes follow it",
            pos.offset,
            path.display(),
            tail.len()
        )));
    }
    file.set_len(pos.offset)
        .and_then(|()| file.sync_all())
        .map_err(|e| WalError::io("truncating the end of frame log", &path, e))?;
    tracing::warn!(
        path = %path.display(),
        offset = pos.offset,
        bytes = tail.len(),
        "truncated a frame log entry cut short by a crash (its commit was never acknowledged)"
    );
    Ok(tail.len() as u64)
}

/// Deletes temporary and orphan segment files and notes foreign ones.
pub(crate) fn clean_segments_dir(
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

/// Checks every entry's file (size, and checksum when `full`) and reports the damaged ones.
pub(crate) fn inspect_segments(
    segments_dir: &Path,
    segments: &BTreeMap<u64, SegmentMeta>,
    full: bool,
    report: &mut RecoveryReport,
) -> BTreeMap<u64, SegmentProblem> {
    let mut damaged = BTreeMap::new();
    for meta in segments.values() {
        let path = segment::segment_path(segments_dir, meta.number);
        if let Some(problem) = segment::inspect(&path, meta, full) {
            tracing::error!(segment = meta.number, path = %path.display(), %problem, "damaged WAL segment");
            damaged.insert(meta.number, problem.clone());
            report.damaged.push(DamagedSegment {
                number: meta.number,
                path,
                problem,
            });
        }
    }
    damaged
}
