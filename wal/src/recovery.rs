//! Recovery at open: what the database and `segments/` hold after a stop or a crash, checked
//! against each other.
//!
//! Invariant kept here (invariants 2 and 3, docs/architecture.md#invariants): a crash can leave a
//! segment file without an entry (written but not registered, or forgotten after upload but not
//! deleted), sealed frames not removed yet, and a temporary segment file. Open deletes the files
//! and schedules the frames for removal. It never drops an entry: an entry whose file is missing or
//! damaged is reported (the daemon logs it loudly) and `open_segment` refuses it by name.
//! Everything else that disagrees (gaps in segment numbers, frames that do not follow each other or
//! the state) is corruption and fails the open.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::error::{SegmentProblem, WalError};
use crate::frame::FrameHeader;
use crate::layout;
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
    /// Frames of records already sealed that were not removed from the database yet (the writer
    /// removes them a little at a time after each seal); they are removed from now on.
    pub sealed_frames_pending_removal: usize,
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

/// Walks the frame headers: frames below the first unsealed position are sealed and wait for
/// removal (garbage); the others make the backlog. Checks that frames are consecutive and agree
/// with the state.
pub(crate) fn load_frames(
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
        let header = FrameHeader::decode(&value, &format!("the header of frame {seq}"))?;
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
