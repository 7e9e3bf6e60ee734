//! Sealing: the oldest unsealed records become segment N.
//!
//! Invariant kept here (docs/architecture.md#invariant-3, "gapless, ordered files"): a segment is
//! registered only after its file is complete and durable (written under a temporary name, fsynced,
//! renamed, the directory fsynced), and its registration and the move of the "first unsealed"
//! position (which takes its records out of the backlog) are one atomic commit; the frame log
//! files it left wholly sealed are deleted once that commit is durable. Numbers come from the state (`next_file_number`),
//! timestamps are `max(now, previous + 1)`, so both strictly increase. A segment is never empty.
//!
//! Speed: a frame taken whole and large enough is copied into the segment as it is stored (a
//! segment file is a sequence of zstd frames), without decompressing it: its header carries the
//! CRC32C of its raw content, which combines into the segment's (see `checksum.rs`), so a copy
//! costs a read and a write of the compressed bytes and a CRC32C of them. The segment's bytes are
//! decompressed once, by the upload, which checks them against that CRC32C. Small frames (written
//! when appends trickle in) and the parts of a frame cut by the byte limit are recompressed
//! together into larger frames, which keeps segments compact when the load is light.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::checksum::{self, Checksum};
use crate::compress::FrameEncoder;
use crate::error::WalError;
use crate::frame::{self, FrameHeader};
use crate::log::{Entry, EntryError, LogReader};
use crate::segment::{self, SegmentMeta};
use crate::state::{Position, StoredState};

/// Frames with at least this many raw bytes, taken whole, are copied without recompression.
const COPY_MIN_RAW_BYTES: u64 = 64 * 1024;
/// The block raw bytes are decoded into (recompressed parts).
const DECODE_BLOCK_BYTES: usize = 128 * 1024;

/// A written segment, ready to be registered by the writer.
#[derive(Debug)]
pub(crate) struct SealPlan {
    /// Its entry.
    pub meta: SegmentMeta,
    /// The first unsealed position the seal started from (checked by the writer).
    pub from: Position,
    /// The first unsealed position after it.
    pub to: Position,
}

/// What a seal is asked to produce.
pub(crate) struct SealRequest<'a> {
    pub frames_dir: &'a Path,
    pub segments_dir: &'a Path,
    pub state: &'a StoredState,
    pub max_raw_bytes: u64,
    pub number: u64,
    pub ts_ms: u64,
    pub now_ms: u64,
    pub zstd_level: i32,
}

/// Writes segment `number` from the oldest unsealed records of `state` and returns what the
/// writer must register; `None` when nothing is unsealed. The file is durable under its final
/// name when this returns.
pub(crate) fn write_segment(request: &SealRequest<'_>) -> Result<Option<SealPlan>, WalError> {
    let state = request.state;
    if state.first_unsealed.frame >= state.next_frame_seq {
        return Ok(None);
    }
    let tmp = segment::segment_tmp_path(request.segments_dir, request.number);
    let result = fill_segment(request, &tmp);
    if result.is_err() {
        // Best effort: an orphan left here is also removed at the next open.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(Some)
}

fn fill_segment(request: &SealRequest<'_>, tmp: &Path) -> Result<SealPlan, WalError> {
    let mut out = SegmentBuilder::create(tmp, request.zstd_level)?;
    let mut log = LogReader::new(request.frames_dir);
    let state = request.state;
    let from = state.first_unsealed;
    let mut pos = from;
    let mut first_cursor = None;
    let last_cursor;
    loop {
        if pos.frame >= state.next_frame_seq {
            // Everything durable is sealed: the current cursor skips nothing unsealed.
            last_cursor = state.cursor.clone();
            break;
        }
        let entry = log
            .entry(pos.log)
            .map_err(|e| e.into_wal_error(&log.path(pos.log.file), pos.log))?;
        let header = &entry.header;
        if header.frame != pos.frame
            || header.first_seq + pos.record != pos.seq
            || pos.record > header.records()
        {
            return Err(WalError::corrupt(format!(
                "frame {} starts at record {} with {} records, but the first unsealed record is \
                 {} at index {} of frame {}",
                header.frame,
                header.first_seq,
                header.records(),
                pos.seq,
                pos.record,
                pos.frame
            )));
        }
        if out.records == 0 {
            first_cursor = header.cursor_at(pos.record);
        }
        let budget = request.max_raw_bytes.saturating_sub(out.raw_bytes);
        let (take, take_bytes) = fitting_records(header, pos.record, budget, out.records == 0);
        if take == 0 {
            last_cursor = header.cursor_at(pos.record);
            break;
        }
        let whole = pos.record + take == header.records();
        if whole && pos.record == 0 && header.raw_bytes >= COPY_MIN_RAW_BYTES {
            out.copy_frame(&mut log, &entry)?;
        } else {
            out.recompress_part(&mut log, &entry, pos.raw_offset, take_bytes, take)?;
        }
        if whole {
            pos = Position::frame_start(pos.frame + 1, pos.seq + take, entry.next());
        } else {
            pos = Position {
                record: pos.record + take,
                raw_offset: pos.raw_offset + take_bytes,
                seq: pos.seq + take,
                ..pos
            };
            last_cursor = header.cursor_at(pos.record);
            break;
        }
    }
    let content = out.finish(tmp)?;
    let path = segment::segment_path(request.segments_dir, request.number);
    std::fs::rename(tmp, &path)
        .map_err(|e| WalError::io("renaming segment into place", &path, e))?;
    crate::dir::sync_dir(request.segments_dir)?;
    Ok(SealPlan {
        meta: SegmentMeta {
            number: request.number,
            ts_ms: request.ts_ms,
            first_cursor,
            last_cursor,
            first_record: from.seq,
            records: content.records,
            raw_bytes: content.raw_bytes,
            raw_checksum: Checksum::Crc32c(content.raw_crc32c),
            stored_bytes: content.stored_bytes,
            stored_checksum: Checksum::Crc32c(content.stored_crc32c),
            sealed_at_ms: request.now_ms,
        },
        from,
        to: pos,
    })
}

/// How many records of `header` from `start` fit in `budget` raw bytes, and their raw size. The
/// first record of a segment is taken even when it alone exceeds the budget.
fn fitting_records(
    header: &FrameHeader,
    start: u64,
    budget: u64,
    segment_empty: bool,
) -> (u64, u64) {
    let mut take = 0;
    let mut bytes = 0;
    for len in &header.record_lens[start as usize..] {
        let size = len + 1;
        if bytes + size <= budget || (segment_empty && take == 0) {
            bytes += size;
            take += 1;
        } else {
            break;
        }
    }
    (take, bytes)
}

/// The segment file being written, with the running checksums and lengths.
struct SegmentBuilder {
    stored: StoredWriter,
    encoder: FrameEncoder,
    decoder: zstd::zstd_safe::DCtx<'static>,
    /// Raw bytes are decoded into it (only when a frame is recompressed or has no CRC32C).
    block: Vec<u8>,
    raw_crc32c: u32,
    raw_bytes: u64,
    records: u64,
    path: PathBuf,
}

/// The stored bytes: checksummed and counted on their way to the file.
struct StoredWriter {
    file: BufWriter<File>,
    crc32c: u32,
    bytes: u64,
}

impl Write for StoredWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all(buf)?;
        self.crc32c = crc32c::crc32c_append(self.crc32c, buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl SegmentBuilder {
    fn create(path: &Path, zstd_level: i32) -> Result<Self, WalError> {
        let file = File::create(path).map_err(|e| WalError::io("creating segment", path, e))?;
        let encoder = FrameEncoder::new(zstd_level)
            .map_err(|e| WalError::io("starting zstd for segment", path, e))?;
        Ok(SegmentBuilder {
            stored: StoredWriter {
                file: BufWriter::with_capacity(256 * 1024, file),
                crc32c: 0,
                bytes: 0,
            },
            encoder,
            decoder: zstd::zstd_safe::DCtx::create(),
            block: Vec::new(),
            raw_crc32c: 0,
            raw_bytes: 0,
            records: 0,
            path: path.to_path_buf(),
        })
    }

    /// Appends the frame of `entry` as it is stored; its raw CRC32C comes from its header.
    fn copy_frame(&mut self, log: &mut LogReader, entry: &Entry) -> Result<(), WalError> {
        let header = &entry.header;
        self.encoder
            .finish_frame(&mut self.stored)
            .map_err(|e| WalError::io("writing segment", &self.path, e))?;
        let error = |e: io::Error| frame_error(header.frame, &self.path, e);
        log.data(entry, Some(&mut self.stored))
            .map_err(|e| entry_error(header.frame, &self.path, e))?
            .drain()
            .map_err(error)?;
        self.raw_crc32c =
            checksum::crc32c_combine(self.raw_crc32c, header.raw_crc32c, header.raw_bytes);
        self.raw_bytes += header.raw_bytes;
        self.records += header.records();
        Ok(())
    }

    /// Appends `take_bytes` raw bytes (`take` records) of the frame of `entry` starting at
    /// `skip`, recompressed.
    fn recompress_part(
        &mut self,
        log: &mut LogReader,
        entry: &Entry,
        skip: u64,
        take_bytes: u64,
        take: u64,
    ) -> Result<(), WalError> {
        let seq = entry.header.frame;
        let path = self.path.clone();
        let stream = log
            .data(entry, None)
            .map_err(|e| entry_error(seq, &path, e))?;
        let mut decoder =
            frame::decoder(stream, &mut self.decoder).map_err(|e| frame_error(seq, &path, e))?;
        self.block.resize(DECODE_BLOCK_BYTES, 0);
        let mut to_skip = skip;
        let mut left = take_bytes;
        let mut newlines = 0u64;
        while left > 0 {
            let want =
                if to_skip > 0 { to_skip } else { left }.min(self.block.len() as u64) as usize;
            let n = decoder
                .read(&mut self.block[..want])
                .map_err(|e| frame_error(seq, &path, e))?;
            if n == 0 {
                return Err(WalError::corrupt(format!(
                    "frame {seq} ends before the {} raw bytes its header promises",
                    skip + take_bytes
                )));
            }
            if to_skip > 0 {
                to_skip -= n as u64;
                continue;
            }
            let data = &self.block[..n];
            newlines += count_newlines(data);
            self.raw_crc32c = crc32c::crc32c_append(self.raw_crc32c, data);
            self.encoder
                .write(data, &mut self.stored)
                .map_err(|e| WalError::io("writing segment", &self.path, e))?;
            left -= n as u64;
        }
        if newlines != take {
            return Err(WalError::corrupt(format!(
                "frame {seq} holds {newlines} lines where its header puts {take} records"
            )));
        }
        self.raw_bytes += take_bytes;
        self.records += take;
        Ok(())
    }

    /// Ends the last frame, flushes and fsyncs the file. Returns the raw CRC32C and length, the
    /// record count, and the stored CRC32C and length.
    fn finish(mut self, path: &Path) -> Result<SealedContent, WalError> {
        self.encoder
            .finish_frame(&mut self.stored)
            .and_then(|()| self.stored.flush())
            .map_err(|e| WalError::io("writing segment", path, e))?;
        let file = self
            .stored
            .file
            .into_inner()
            .map_err(|e| WalError::io("writing segment", path, e.into_error()))?;
        // fdatasync: content and length; the name is made durable by the directory sync.
        file.sync_data()
            .map_err(|e| WalError::io("fsyncing segment", path, e))?;
        Ok(SealedContent {
            raw_crc32c: self.raw_crc32c,
            raw_bytes: self.raw_bytes,
            records: self.records,
            stored_crc32c: self.stored.crc32c,
            stored_bytes: self.stored.bytes,
        })
    }
}

/// What a finished segment file holds.
struct SealedContent {
    raw_crc32c: u32,
    raw_bytes: u64,
    records: u64,
    stored_crc32c: u32,
    stored_bytes: u64,
}

fn count_newlines(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
}

/// An error while reading the entry of frame `seq` for the segment at `path`.
fn entry_error(seq: u64, path: &Path, error: EntryError) -> WalError {
    match error {
        EntryError::Io(e) => frame_error(seq, path, e),
        EntryError::Short => WalError::corrupt(format!("frame {seq} is cut short in the log")),
        EntryError::Invalid(why) => WalError::corrupt(format!("frame {seq} is damaged: {why}")),
    }
}

/// An error while moving frame `seq` into the segment at `path`: damaged data is corruption,
/// anything else (a full disk, a read error) an I/O error.
fn frame_error(seq: u64, path: &Path, error: io::Error) -> WalError {
    match error.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            WalError::corrupt(format!("frame {seq} cannot be read: {error}"))
        }
        _ => WalError::io("moving a WAL frame into segment", path, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(lens: &[u64]) -> FrameHeader {
        FrameHeader {
            frame: 0,
            first_seq: 0,
            record_lens: lens.to_vec(),
            raw_bytes: lens.iter().map(|l| l + 1).sum(),
            stored_bytes: 0,
            cursor_before: None,
            marks: Vec::new(),
            changes: Vec::new(),
            raw_crc32c: 0,
        }
    }

    #[test]
    fn records_are_taken_up_to_the_byte_limit_exactly() {
        let h = header(&[9, 9, 9, 9]);
        assert_eq!(fitting_records(&h, 0, 30, true), (3, 30));
        assert_eq!(fitting_records(&h, 0, 29, true), (2, 20));
        assert_eq!(fitting_records(&h, 1, 1000, true), (3, 30));
        assert_eq!(fitting_records(&h, 0, 9, false), (0, 0));
    }

    #[test]
    fn a_record_larger_than_the_limit_is_taken_alone_into_an_empty_segment() {
        let h = header(&[99, 1]);
        assert_eq!(fitting_records(&h, 0, 10, true), (1, 100));
        assert_eq!(fitting_records(&h, 0, 10, false), (0, 0));
    }
}
