//! Opening a WAL written by format 1 or 2: its unsealed frames move from the database to the
//! frame log, once, at open.
//!
//! Formats 1 and 2 kept each frame in the database (a header under `H`, its zstd bytes in 4 KiB
//! chunks under `C`), and a state without frame log positions. [`migrate`] copies the unsealed
//! frames, as stored, into log entries (a format-1 frame, which has no CRC32C, is decompressed
//! once to compute it and checked against its header), fsyncs them, then stores the state of
//! format 3 in one commit. Only then is the format marker rewritten, and the old keys are removed
//! afterwards ([`sweep_old_frames`], at every open). A crash at any point is safe: before the
//! state commit the old state and frames are intact and the migration runs again (the log files
//! it wrote are rewritten); after it the state says format 3 and only the marker and the sweep are
//! left to do. Segment entries keep their form (a format-1 entry with MD5s is read as it is, see
//! `segment.rs`).

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use crate::error::WalError;
use crate::frame::{self, CursorMark, FrameHeader};
use crate::layout::{self, FORMAT_1_VALUE_VERSION, FORMAT_2_VALUE_VERSION, STATE_KEY};
use crate::log::{self, LogPos, LogWriter};
use crate::state::{Position, RecoverUntil, StoredState, UploadRecord};
use crate::store::{Store, WriteBatch};

/// Old keys removed per commit by the sweep.
const SWEEP_KEYS_PER_COMMIT: usize = 4096;

/// A position of formats 1 and 2 (no frame log).
#[derive(Deserialize)]
struct PositionV2 {
    frame: u64,
    record: u64,
    raw_offset: u64,
    seq: u64,
}

/// The state of formats 1 and 2.
#[derive(Deserialize)]
struct StoredStateV2 {
    cursor: Option<String>,
    recover_until: RecoverUntil,
    next_file_number: u64,
    last_sealed_ts_ms: u64,
    last_upload: Option<UploadRecord>,
    extras: std::collections::BTreeMap<String, Vec<u8>>,
    next_record_seq: u64,
    next_frame_seq: u64,
    first_unsealed: PositionV2,
    touched: bool,
}

/// A frame header of format 2.
#[derive(Deserialize)]
struct FrameHeaderV2 {
    first_seq: u64,
    record_lens: Vec<u64>,
    raw_bytes: u64,
    stored_bytes: u64,
    chunks: u32,
    cursor_before: Option<String>,
    marks: Vec<CursorMark>,
    raw_crc32c: Option<u32>,
}

/// A frame header of format 1 (without the content's CRC32C).
#[derive(Deserialize)]
struct FrameHeaderV1 {
    first_seq: u64,
    record_lens: Vec<u64>,
    raw_bytes: u64,
    stored_bytes: u64,
    chunks: u32,
    cursor_before: Option<String>,
    marks: Vec<CursorMark>,
}

impl From<FrameHeaderV1> for FrameHeaderV2 {
    fn from(old: FrameHeaderV1) -> Self {
        FrameHeaderV2 {
            first_seq: old.first_seq,
            record_lens: old.record_lens,
            raw_bytes: old.raw_bytes,
            stored_bytes: old.stored_bytes,
            chunks: old.chunks,
            cursor_before: old.cursor_before,
            marks: old.marks,
            raw_crc32c: None,
        }
    }
}

/// Moves the unsealed frames of a format-1 or format-2 WAL into the frame log and stores the
/// state of format 3. Returns the number of frames moved; does nothing (0) when the state is
/// already of format 3 or the WAL is empty.
pub(crate) fn migrate(store: &Store, frames_dir: &Path) -> Result<u64, WalError> {
    let Some(bytes) = store.get(STATE_KEY)? else {
        return Ok(0);
    };
    let old: StoredStateV2 = match layout::split_version(&bytes, "the WAL state")? {
        (layout::VALUE_VERSION, _) => return Ok(0),
        (FORMAT_1_VALUE_VERSION | FORMAT_2_VALUE_VERSION, body) => {
            layout::decode_body(body, "the WAL state")?
        }
        (version, _) => {
            return Err(layout::unexpected_version(
                "the WAL state",
                version,
                "1 to 3",
            ));
        }
    };
    remove_log_files(frames_dir)?;
    let first = old.first_unsealed.frame;
    let mut writer = LogWriter::new(frames_dir);
    let mut pos = LogPos::file_start(first);
    let mut files = Vec::new();
    let mut decoder = zstd::zstd_safe::DCtx::create();
    for frame in first..old.next_frame_seq {
        let key = layout::frame_header_key(frame);
        let what = format!("the header of frame {frame}");
        let value = store
            .get(&key)?
            .ok_or_else(|| WalError::corrupt(format!("{what} is missing")))?;
        let old_header = layout::decode_upgrading::<FrameHeaderV2, FrameHeaderV1>(&value, &what)?;
        let data = read_chunks(store, frame, &old_header)?;
        let raw_crc32c = match old_header.raw_crc32c {
            Some(crc) => crc,
            None => crc32c_of_frame(&data, &old_header, &mut decoder)
                .map_err(|e| WalError::corrupt(format!("frame {frame} cannot be read: {e}")))?,
        };
        let header = FrameHeader {
            frame,
            first_seq: old_header.first_seq,
            record_lens: old_header.record_lens,
            raw_bytes: old_header.raw_bytes,
            stored_bytes: old_header.stored_bytes,
            cursor_before: old_header.cursor_before,
            marks: old_header.marks,
            changes: Vec::new(),
            raw_crc32c,
        };
        let mut entry = Vec::new();
        log::encode_entry(&header, &data, &mut entry)?;
        writer.write(pos, &entry)?;
        if pos.offset == 0 {
            files.push(pos.file);
        }
        pos = pos.after(frame, entry.len() as u64);
    }
    for &file in &files {
        crate::dir::sync_file(&log::file_path(frames_dir, file))?;
    }
    crate::dir::sync_dir(frames_dir)?;
    let state = StoredState {
        cursor: old.cursor,
        recover_until: old.recover_until,
        next_file_number: old.next_file_number,
        last_sealed_ts_ms: old.last_sealed_ts_ms,
        last_upload: old.last_upload,
        extras: old.extras,
        next_record_seq: old.next_record_seq,
        next_frame_seq: old.next_frame_seq,
        first_unsealed: Position {
            frame: first,
            record: old.first_unsealed.record,
            raw_offset: old.first_unsealed.raw_offset,
            seq: old.first_unsealed.seq,
            log: LogPos::file_start(first),
        },
        touched: old.touched,
        log_end: pos,
    };
    let mut batch = WriteBatch::default();
    batch.insert(STATE_KEY, layout::encode(&state, "the WAL state")?);
    store.apply(batch)?;
    store.sync()?;
    Ok(old.next_frame_seq - first)
}

/// Decodes `bytes` as the state and as a frame header of formats 1 and 2; returns how many
/// decoded (for fuzzing: see `fuzzing.rs`).
pub(crate) fn decode_older_values(bytes: &[u8]) -> usize {
    let state = match layout::split_version(bytes, "a value") {
        Ok((FORMAT_1_VALUE_VERSION | FORMAT_2_VALUE_VERSION, body)) => {
            layout::decode_body::<StoredStateV2>(body, "the WAL state").is_ok()
        }
        _ => false,
    };
    let header =
        layout::decode_upgrading::<FrameHeaderV2, FrameHeaderV1>(bytes, "a frame header").is_ok();
    usize::from(state) + usize::from(header)
}

/// Removes every frame key formats 1 and 2 left in the database, a few thousand per commit.
/// Returns how many were removed.
pub(crate) fn sweep_old_frames(store: &Store) -> Result<usize, WalError> {
    let mut removed = 0;
    for prefix in layout::frame_prefixes() {
        loop {
            let keys = store
                .scan_prefix(&prefix)
                .take(SWEEP_KEYS_PER_COMMIT)
                .map(|item| item.map(|(key, _)| key))
                .collect::<Result<Vec<_>, _>>()?;
            if keys.is_empty() {
                break;
            }
            let mut batch = WriteBatch::default();
            for key in &keys {
                batch.remove(key);
            }
            store.apply(batch)?;
            store.sync()?;
            removed += keys.len();
        }
    }
    Ok(removed)
}

/// Deletes the log files an interrupted migration may have left.
fn remove_log_files(frames_dir: &Path) -> Result<(), WalError> {
    let (files, _) = log::list_files(frames_dir)?;
    for file in &files {
        let path = log::file_path(frames_dir, *file);
        std::fs::remove_file(&path).map_err(|e| WalError::io("deleting", &path, e))?;
    }
    if !files.is_empty() {
        crate::dir::sync_dir(frames_dir)?;
    }
    Ok(())
}

/// The zstd bytes of frame `seq`, gathered from its chunks and checked against its header.
fn read_chunks(store: &Store, seq: u64, header: &FrameHeaderV2) -> Result<Vec<u8>, WalError> {
    let from = layout::frame_chunk_key(seq, 0);
    let to = layout::frame_chunk_key(seq + 1, 0);
    let mut data = Vec::with_capacity(usize::try_from(header.stored_bytes).unwrap_or(0));
    let mut chunks = 0u32;
    for item in store.range(&from, &to) {
        let (key, value) = item?;
        if key.as_ref() != layout::frame_chunk_key(seq, chunks) {
            return Err(WalError::corrupt(format!(
                "frame {seq} is corrupt: chunk {chunks} is missing"
            )));
        }
        data.extend_from_slice(&value);
        chunks += 1;
    }
    if chunks != header.chunks || data.len() as u64 != header.stored_bytes {
        return Err(WalError::corrupt(format!(
            "frame {seq} is corrupt: {chunks} chunks of {} bytes found, the header says {} chunks \
             of {} bytes",
            data.len(),
            header.chunks,
            header.stored_bytes
        )));
    }
    Ok(data)
}

/// The CRC32C of a format-1 frame's raw content, checked against its header's size and record
/// count.
fn crc32c_of_frame(
    data: &[u8],
    header: &FrameHeaderV2,
    context: &mut zstd::zstd_safe::DCtx<'static>,
) -> std::io::Result<u32> {
    let mut decoder = frame::decoder(data, context)?;
    let mut block = vec![0u8; 128 * 1024];
    let mut crc = 0;
    let mut raw = 0u64;
    let mut newlines = 0u64;
    loop {
        let n = decoder.read(&mut block)?;
        if n == 0 {
            break;
        }
        newlines += block[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        crc = crc32c::crc32c_append(crc, &block[..n]);
        raw += n as u64;
    }
    if raw != header.raw_bytes || newlines != header.record_lens.len() as u64 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "it decodes to {raw} bytes and {newlines} lines, its header says {} bytes and {} \
                 records",
                header.raw_bytes,
                header.record_lens.len()
            ),
        ));
    }
    Ok(crc)
}
