//! Sealing: the oldest unsealed records become segment N.
//!
//! Invariant kept here (docs/architecture.md#invariant-3, "gapless, ordered files"): a segment is
//! registered only after its file is complete and durable (written under a temporary name, fsynced,
//! renamed, the directory fsynced), and its registration and the move of the "first unsealed"
//! position (which takes its records out of the backlog) are one atomic commit; the frames it
//! emptied are removed by later commits. Numbers come from the state (`next_file_number`),
//! timestamps are `max(now, previous + 1)`, so both strictly increase. A segment is never empty.
//!
//! Speed: a frame taken whole and large enough is copied into the segment as it is stored (a
//! segment file is a sequence of zstd frames), so sealing costs one decompression and two MD5s
//! per byte, not a recompression. The MD5 of the raw content (the costliest part) runs on a helper
//! thread fed with the decoded blocks, so it overlaps decompression and I/O. Small frames
//! (written when appends trickle in) and the parts of a frame cut by the byte limit are
//! recompressed together into larger frames, which keeps segments compact when the load is light.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::{Scope, ScopedJoinHandle};

use md5::{Digest, Md5};

use crate::compress::FrameEncoder;
use crate::error::WalError;
use crate::frame::{self, ChunkStream, FrameHeader};
use crate::segment::{self, SegmentMeta};
use crate::state::{Position, StoredState};
use crate::store::Store;

/// Frames with at least this many raw bytes, taken whole, are copied without recompression.
const COPY_MIN_RAW_BYTES: u64 = 64 * 1024;
/// Blocks raw bytes are decoded into and hashed from.
const DECODE_BLOCK_BYTES: usize = 128 * 1024;
/// Most decode blocks in use at once (decoding, queued, hashing): bounds the seal's memory.
const DECODE_BLOCKS: usize = 4;

/// A written segment, ready to be registered by the writer.
#[derive(Debug)]
pub(crate) struct SealPlan {
    /// Its entry.
    pub meta: SegmentMeta,
    /// The first unsealed position the seal started from (checked by the writer).
    pub from: Position,
    /// The first unsealed position after it.
    pub to: Position,
    /// Frames whose records are all sealed now, to be removed: (sequence, chunk count).
    pub removed_frames: Vec<(u64, u32)>,
}

/// What a seal is asked to produce.
pub(crate) struct SealRequest<'a> {
    pub store: &'a Store,
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
    std::thread::scope(|scope| {
        let digest = RawDigest::start(scope, tmp)
            .map_err(|e| WalError::io("starting the MD5 thread for segment", tmp, e))?;
        let out = SegmentBuilder::create(tmp, request.zstd_level, digest)?;
        fill(request, tmp, out)
    })
}

fn fill(
    request: &SealRequest<'_>,
    tmp: &Path,
    mut out: SegmentBuilder<'_>,
) -> Result<SealPlan, WalError> {
    let state = request.state;
    let from = state.first_unsealed;
    let mut pos = from;
    let mut first_cursor = None;
    let mut removed_frames = Vec::new();
    let last_cursor;
    loop {
        if pos.frame >= state.next_frame_seq {
            // Everything durable is sealed: the current cursor skips nothing unsealed.
            last_cursor = state.cursor.clone();
            break;
        }
        let header = FrameHeader::load(request.store, pos.frame)?;
        if header.first_seq + pos.record != pos.seq || pos.record > header.records() {
            return Err(WalError::corrupt(format!(
                "frame {} starts at record {} with {} records, but the first unsealed record is \
                 {} at index {}",
                pos.frame,
                header.first_seq,
                header.records(),
                pos.seq,
                pos.record
            )));
        }
        if out.records == 0 {
            first_cursor = header.cursor_at(pos.record);
        }
        let budget = request.max_raw_bytes.saturating_sub(out.raw_bytes);
        let (take, take_bytes) = fitting_records(&header, pos.record, budget, out.records == 0);
        if take == 0 {
            last_cursor = header.cursor_at(pos.record);
            break;
        }
        let whole = pos.record + take == header.records();
        if whole && pos.record == 0 && header.raw_bytes >= COPY_MIN_RAW_BYTES {
            out.copy_frame(request.store, pos.frame, &header)?;
        } else {
            out.recompress_part(
                request.store,
                pos.frame,
                &header,
                pos.raw_offset,
                take_bytes,
                take,
            )?;
        }
        if whole {
            removed_frames.push((pos.frame, header.chunks));
            pos = Position::frame_start(pos.frame + 1, pos.seq + take);
        } else {
            pos = Position {
                frame: pos.frame,
                record: pos.record + take,
                raw_offset: pos.raw_offset + take_bytes,
                seq: pos.seq + take,
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
            raw_md5: content.raw_md5,
            stored_bytes: content.stored_bytes,
            stored_md5: content.stored_md5,
            sealed_at_ms: request.now_ms,
        },
        from,
        to: pos,
        removed_frames,
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

/// The segment file being written, with the running MD5s and lengths.
struct SegmentBuilder<'scope> {
    stored: StoredWriter,
    encoder: FrameEncoder,
    decoder: zstd::zstd_safe::DCtx<'static>,
    digest: RawDigest<'scope>,
    raw_bytes: u64,
    records: u64,
    path: PathBuf,
}

/// The MD5 of the raw content, computed on a helper thread. Raw bytes are decoded straight into
/// large blocks; a full block is handed to the hasher (and handed back for reuse), so hashing
/// overlaps decoding and costs one hand-over per block whatever the frame sizes.
struct RawDigest<'scope> {
    blocks: mpsc::SyncSender<(Vec<u8>, usize)>,
    recycled: mpsc::Receiver<Vec<u8>>,
    allocated: usize,
    /// The block being filled and how much of it is filled.
    current: Vec<u8>,
    filled: usize,
    hasher: ScopedJoinHandle<'scope, [u8; 16]>,
    /// The segment being hashed, for errors.
    path: PathBuf,
}

impl<'scope> RawDigest<'scope> {
    fn start<'env>(scope: &'scope Scope<'scope, 'env>, path: &Path) -> io::Result<Self> {
        let (blocks, queued) = mpsc::sync_channel::<(Vec<u8>, usize)>(DECODE_BLOCKS);
        let (recycle, recycled) = mpsc::channel();
        let hasher = std::thread::Builder::new()
            .name("wal-seal-md5".into())
            .spawn_scoped(scope, move || {
                let mut md5 = Md5::new();
                for (block, len) in queued {
                    md5.update(&block[..len]);
                    // The sealer may be gone already (it failed): the block is just dropped.
                    let _ = recycle.send(block);
                }
                md5.finalize().into()
            })?;
        Ok(RawDigest {
            blocks,
            recycled,
            allocated: 1,
            current: vec![0; DECODE_BLOCK_BYTES],
            filled: 0,
            hasher,
            path: path.to_path_buf(),
        })
    }

    /// Free room in the current block (never empty) to decode raw bytes into.
    fn space(&mut self) -> &mut [u8] {
        &mut self.current[self.filled..]
    }

    /// The `len` bytes just decoded into [`RawDigest::space`].
    fn decoded(&self, len: usize) -> &[u8] {
        &self.current[self.filled..self.filled + len]
    }

    /// Counts the `len` bytes just decoded into the hash (bytes decoded but not kept are simply
    /// overwritten by the next decode).
    fn keep(&mut self, len: usize) -> Result<(), WalError> {
        self.filled += len;
        if self.filled == self.current.len() {
            let next = self.next_block();
            let full = std::mem::replace(&mut self.current, next);
            if self
                .blocks
                .send((full, std::mem::take(&mut self.filled)))
                .is_err()
            {
                return Err(hasher_stopped(&self.path));
            }
        }
        Ok(())
    }

    /// A recycled block, a new one, or (at the limit) the next one the hasher hands back.
    fn next_block(&mut self) -> Vec<u8> {
        if let Ok(block) = self.recycled.try_recv() {
            return block;
        }
        if self.allocated < DECODE_BLOCKS {
            self.allocated += 1;
            return vec![0; DECODE_BLOCK_BYTES];
        }
        // If the hasher is gone, `finish` reports it; decoding can go on meanwhile.
        self.recycled
            .recv()
            .unwrap_or_else(|_| vec![0; DECODE_BLOCK_BYTES])
    }

    fn finish(self) -> Result<[u8; 16], WalError> {
        let RawDigest {
            blocks,
            current,
            filled,
            hasher,
            path,
            ..
        } = self;
        if filled > 0 && blocks.send((current, filled)).is_err() {
            return Err(hasher_stopped(&path));
        }
        drop(blocks);
        hasher.join().map_err(|_| hasher_stopped(&path))
    }
}

fn hasher_stopped(path: &Path) -> WalError {
    WalError::io(
        "hashing segment",
        path,
        io::Error::other("the MD5 thread stopped unexpectedly"),
    )
}

/// The stored bytes: hashed and counted on their way to the file.
struct StoredWriter {
    file: BufWriter<File>,
    md5: Md5,
    bytes: u64,
}

impl Write for StoredWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all(buf)?;
        self.md5.update(buf);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl<'scope> SegmentBuilder<'scope> {
    fn create(path: &Path, zstd_level: i32, digest: RawDigest<'scope>) -> Result<Self, WalError> {
        let file = File::create(path).map_err(|e| WalError::io("creating segment", path, e))?;
        let encoder = FrameEncoder::new(zstd_level)
            .map_err(|e| WalError::io("starting zstd for segment", path, e))?;
        Ok(SegmentBuilder {
            stored: StoredWriter {
                file: BufWriter::with_capacity(256 * 1024, file),
                md5: Md5::new(),
                bytes: 0,
            },
            encoder,
            decoder: zstd::zstd_safe::DCtx::create(),
            digest,
            raw_bytes: 0,
            records: 0,
            path: path.to_path_buf(),
        })
    }

    /// Appends frame `seq` as it is stored, decoding it only to hash its raw content.
    fn copy_frame(
        &mut self,
        store: &Store,
        seq: u64,
        header: &FrameHeader,
    ) -> Result<(), WalError> {
        let path = self.path.clone();
        self.encoder
            .finish_frame(&mut self.stored)
            .map_err(|e| WalError::io("writing segment", &path, e))?;
        let stream = ChunkStream::new(store, seq, header, Some(&mut self.stored));
        let mut decoder =
            frame::decoder(stream, &mut self.decoder).map_err(|e| frame_error(seq, &path, e))?;
        let mut raw = 0u64;
        let mut newlines = 0u64;
        loop {
            let n = decoder
                .read(self.digest.space())
                .map_err(|e| frame_error(seq, &path, e))?;
            if n == 0 {
                break;
            }
            newlines += count_newlines(self.digest.decoded(n));
            raw += n as u64;
            self.digest.keep(n)?;
        }
        decoder
            .finish()
            .drain()
            .map_err(|e| frame_error(seq, &path, e))?;
        if raw != header.raw_bytes || newlines != header.records() {
            return Err(WalError::corrupt(format!(
                "frame {seq} decodes to {raw} bytes and {newlines} lines, its header says {} \
                 bytes and {} records",
                header.raw_bytes,
                header.records()
            )));
        }
        self.raw_bytes += raw;
        self.records += newlines;
        Ok(())
    }

    /// Appends `take_bytes` raw bytes (`take` records) of frame `seq` starting at `skip`,
    /// recompressed.
    fn recompress_part(
        &mut self,
        store: &Store,
        seq: u64,
        header: &FrameHeader,
        skip: u64,
        take_bytes: u64,
        take: u64,
    ) -> Result<(), WalError> {
        let path = self.path.clone();
        let stream = ChunkStream::new(store, seq, header, None);
        let mut decoder =
            frame::decoder(stream, &mut self.decoder).map_err(|e| frame_error(seq, &path, e))?;
        let mut to_skip = skip;
        let mut left = take_bytes;
        let mut newlines = 0u64;
        while left > 0 {
            let space = self.digest.space();
            let want = if to_skip > 0 { to_skip } else { left }.min(space.len() as u64) as usize;
            let n = decoder
                .read(&mut space[..want])
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
            let data = self.digest.decoded(n);
            newlines += count_newlines(data);
            self.encoder
                .write(data, &mut self.stored)
                .map_err(|e| WalError::io("writing segment", &self.path, e))?;
            left -= n as u64;
            self.digest.keep(n)?;
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

    /// Ends the last frame, flushes and fsyncs the file. Returns the raw MD5 and length, the
    /// record count, and the stored MD5 and length.
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
            raw_md5: self.digest.finish()?,
            raw_bytes: self.raw_bytes,
            records: self.records,
            stored_md5: self.stored.md5.finalize().into(),
            stored_bytes: self.stored.bytes,
        })
    }
}

/// What a finished segment file holds.
struct SealedContent {
    raw_md5: [u8; 16],
    raw_bytes: u64,
    records: u64,
    stored_md5: [u8; 16],
    stored_bytes: u64,
}

fn count_newlines(data: &[u8]) -> u64 {
    data.iter().filter(|&&b| b == b'\n').count() as u64
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
            first_seq: 0,
            record_lens: lens.to_vec(),
            raw_bytes: lens.iter().map(|l| l + 1).sum(),
            stored_bytes: 0,
            chunks: 0,
            cursor_before: None,
            marks: Vec::new(),
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
