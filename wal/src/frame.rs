//! Frames: the records of one commit, stored as one zstd frame split into chunks.
//!
//! A frame's raw content is NDJSON: every record followed by `\n`. Its header keeps the length of
//! each record (so a seal can cut a frame at any record without scanning), the cursor in effect
//! before the frame, and a mark for every append of the commit that set a cursor, so the cursor in
//! effect at any record boundary can be told.

use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::WalError;
use crate::layout::{self, CHUNK_BYTES};
use crate::store::{Store, Value, WriteBatch};

/// An append of the commit that set the cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CursorMark {
    /// Records of the frame written up to the end of that append.
    pub end: u64,
    /// The cursor it set.
    pub cursor: String,
}

/// What is known about a frame without reading its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FrameHeader {
    /// Sequence number of the frame's first record.
    pub first_seq: u64,
    /// Length of each record, without its `\n`.
    pub record_lens: Vec<u64>,
    /// Raw content length (records plus their `\n`).
    pub raw_bytes: u64,
    /// Length of the zstd frame.
    pub stored_bytes: u64,
    /// Number of chunks the zstd frame is split into.
    pub chunks: u32,
    /// The cursor in effect before the frame's first append.
    pub cursor_before: Option<String>,
    /// Cursor-setting appends, in order.
    pub marks: Vec<CursorMark>,
    /// CRC32C of the raw content; `None` only in frames written by WAL format 1.
    pub raw_crc32c: Option<u32>,
}

/// A frame header as WAL format 1 wrote it (without the content's CRC32C).
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

impl From<FrameHeaderV1> for FrameHeader {
    fn from(old: FrameHeaderV1) -> Self {
        FrameHeader {
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

impl FrameHeader {
    /// Number of records.
    pub fn records(&self) -> u64 {
        self.record_lens.len() as u64
    }

    /// The cursor in effect right before record `index` (or after the whole frame when `index`
    /// is the record count): the last mark whose append ended at or before it.
    pub fn cursor_at(&self, index: u64) -> Option<String> {
        self.marks
            .iter()
            .rev()
            .find(|mark| mark.end <= index)
            .map(|mark| Some(mark.cursor.clone()))
            .unwrap_or_else(|| self.cursor_before.clone())
    }

    /// Raw bytes of records `[from, to)`.
    pub fn raw_len(&self, from: u64, to: u64) -> u64 {
        self.record_lens[from as usize..to as usize]
            .iter()
            .map(|len| len + 1)
            .sum()
    }

    /// Reads the header of frame `seq`.
    pub fn load(store: &Store, seq: u64) -> Result<FrameHeader, WalError> {
        let bytes = store
            .get(&layout::frame_header_key(seq))?
            .ok_or_else(|| WalError::corrupt(format!("the header of frame {seq} is missing")))?;
        Self::decode(&bytes, &format!("the header of frame {seq}"))
    }

    /// Decodes a stored header, of this format or of WAL format 1.
    pub fn decode(bytes: &[u8], what: &str) -> Result<FrameHeader, WalError> {
        layout::decode_upgrading::<FrameHeader, FrameHeaderV1>(bytes, what)
    }
}

/// Adds a compressed frame (header and chunks) to a batch.
pub(crate) fn add_to_batch(
    batch: &mut WriteBatch,
    seq: u64,
    header: &FrameHeader,
    compressed: &[u8],
) -> Result<(), WalError> {
    for (index, chunk) in compressed.chunks(CHUNK_BYTES).enumerate() {
        let index = u32::try_from(index)
            .map_err(|_| WalError::corrupt(format!("frame {seq} has too many chunks")))?;
        batch.insert(&layout::frame_chunk_key(seq, index), chunk);
    }
    batch.insert(
        &layout::frame_header_key(seq),
        layout::encode(header, "a frame header")?,
    );
    Ok(())
}

/// Number of chunks a compressed frame of `stored_bytes` is split into.
pub(crate) fn chunk_count(stored_bytes: usize) -> u32 {
    u32::try_from(stored_bytes.div_ceil(CHUNK_BYTES)).unwrap_or(u32::MAX)
}

/// Adds the removal of frame `seq` (header and chunks) to a batch.
pub(crate) fn remove_from_batch(batch: &mut WriteBatch, seq: u64, chunks: u32) {
    for index in 0..chunks {
        batch.remove(&layout::frame_chunk_key(seq, index));
    }
    batch.remove(&layout::frame_header_key(seq));
}

/// The compressed bytes of a frame, read chunk by chunk from the store, checked against its
/// header. Optionally copies every chunk it yields to `copy_to`.
pub(crate) struct ChunkStream<'a> {
    chunks: Box<dyn Iterator<Item = Result<(Value, Value), WalError>> + 'a>,
    current: Value,
    pos: usize,
    seq: u64,
    expected_chunks: u32,
    expected_bytes: u64,
    seen_chunks: u32,
    seen_bytes: u64,
    copy_to: Option<&'a mut dyn Write>,
}

impl<'a> ChunkStream<'a> {
    /// Streams frame `seq` described by `header`.
    pub fn new(
        store: &'a Store,
        seq: u64,
        header: &FrameHeader,
        copy_to: Option<&'a mut dyn Write>,
    ) -> Self {
        let from = layout::frame_chunk_key(seq, 0);
        let to = layout::frame_chunk_key(seq + 1, 0);
        ChunkStream {
            chunks: Box::new(store.range(&from, &to)),
            current: Value::default(),
            pos: 0,
            seq,
            expected_chunks: header.chunks,
            expected_bytes: header.stored_bytes,
            seen_chunks: 0,
            seen_bytes: 0,
            copy_to,
        }
    }

    fn invalid(&self, why: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame {} is corrupt: {why}", self.seq),
        )
    }

    /// Reads what is left, so every chunk has been seen (and copied), and checks the totals.
    pub fn drain(&mut self) -> io::Result<()> {
        loop {
            let available = self.fill_buf()?.len();
            if available == 0 {
                return Ok(());
            }
            self.consume(available);
        }
    }
}

impl Read for ChunkStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChunkStream<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.current.len() {
            match self.chunks.next() {
                Some(Ok((key, value))) => {
                    let expected_key = layout::frame_chunk_key(self.seq, self.seen_chunks);
                    if key.as_ref() != expected_key {
                        return Err(self.invalid(format!("chunk {} is missing", self.seen_chunks)));
                    }
                    self.seen_chunks += 1;
                    self.seen_bytes += value.len() as u64;
                    if let Some(copy) = self.copy_to.as_mut() {
                        copy.write_all(&value)?;
                    }
                    self.current = value;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => {
                    if self.seen_chunks != self.expected_chunks
                        || self.seen_bytes != self.expected_bytes
                    {
                        return Err(self.invalid(format!(
                            "{} chunks of {} bytes found, the header says {} chunks of {} bytes",
                            self.seen_chunks,
                            self.seen_bytes,
                            self.expected_chunks,
                            self.expected_bytes
                        )));
                    }
                }
            }
        }
        Ok(&self.current[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.current.len());
    }
}

/// Decodes a frame's raw content with a reused decompression context (reset first, so a
/// previous frame read only in part does not matter).
pub(crate) fn decoder<'a, 'c>(
    stream: ChunkStream<'a>,
    context: &'c mut zstd::zstd_safe::DCtx<'static>,
) -> io::Result<zstd::stream::read::Decoder<'c, ChunkStream<'a>>> {
    context
        .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
        .map_err(|code| io::Error::other(zstd::zstd_safe::get_error_name(code)))?;
    Ok(zstd::stream::read::Decoder::with_context(stream, context))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(marks: Vec<(u64, &str)>) -> FrameHeader {
        FrameHeader {
            first_seq: 10,
            record_lens: vec![3, 4, 5, 6],
            raw_bytes: 22,
            stored_bytes: 0,
            chunks: 0,
            cursor_before: Some("before".into()),
            marks: marks
                .into_iter()
                .map(|(end, cursor)| CursorMark {
                    end,
                    cursor: cursor.into(),
                })
                .collect(),
            raw_crc32c: None,
        }
    }

    #[test]
    fn cursor_at_uses_the_last_mark_ending_at_or_before_the_record() {
        let h = header(vec![(0, "heartbeat"), (2, "second"), (4, "last")]);
        assert_eq!(h.cursor_at(0).as_deref(), Some("heartbeat"));
        assert_eq!(h.cursor_at(1).as_deref(), Some("heartbeat"));
        assert_eq!(h.cursor_at(2).as_deref(), Some("second"));
        assert_eq!(h.cursor_at(3).as_deref(), Some("second"));
        assert_eq!(h.cursor_at(4).as_deref(), Some("last"));
        let no_marks = header(vec![]);
        assert_eq!(no_marks.cursor_at(3).as_deref(), Some("before"));
    }

    #[test]
    fn raw_len_counts_newlines() {
        let h = header(vec![]);
        assert_eq!(h.raw_len(0, 4), 22);
        assert_eq!(h.raw_len(1, 3), 11);
        assert_eq!(h.raw_len(2, 2), 0);
    }

    #[test]
    fn chunk_count_rounds_up() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK_BYTES), 1);
        assert_eq!(chunk_count(CHUNK_BYTES + 1), 2);
    }
}
