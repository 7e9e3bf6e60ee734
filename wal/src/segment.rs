//! Sealed segments: their metadata, file names, and the readers that verify them.
//!
//! A segment file is `segments/{number:020}.ndjson.zst`: one or more zstd frames whose
//! concatenated content is the segment's raw NDJSON. It is written under `….tmp`, fsynced,
//! renamed, and the directory fsynced, before its entry is registered; so a file without an entry
//! (an orphan) can only come from a crash and is deleted at the next open.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checksum::{Checksum, ChecksumHasher};
use crate::error::{SegmentProblem, WalError};
use crate::layout;

const SEGMENT_SUFFIX: &str = ".ndjson.zst";
const TMP_SUFFIX: &str = ".ndjson.zst.tmp";

/// Everything recorded about a sealed segment when it was registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    /// File number: 1, 2, 3, … without gaps or reuse.
    pub number: u64,
    /// 13-digit epoch milliseconds, strictly greater than the previous segment's.
    pub ts_ms: u64,
    /// The durable cursor in effect before the segment's first record.
    pub first_cursor: Option<String>,
    /// The cursor after the last append whose records are all in this or earlier segments: resuming
    /// from it never skips a record that is not sealed yet.
    pub last_cursor: Option<String>,
    /// Sequence number of the first record.
    pub first_record: u64,
    /// Number of records (lines); never 0.
    pub records: u64,
    /// Length of the raw NDJSON (each record plus `\n`): the Content-Length of a plain upload.
    pub raw_bytes: u64,
    /// Checksum of the raw NDJSON (CRC32C; MD5 in segments sealed by WAL format 1), checked by
    /// [`SegmentReader`] as it streams the content.
    pub raw_checksum: Checksum,
    /// Length of the stored zstd file.
    pub stored_bytes: u64,
    /// Checksum of the stored zstd file (CRC32C; MD5 in segments sealed by WAL format 1).
    pub stored_checksum: Checksum,
    /// The `now_ms` the seal was called with.
    pub sealed_at_ms: u64,
}

impl SegmentMeta {
    /// Decodes a stored entry, of this format or of WAL format 1.
    pub(crate) fn decode(bytes: &[u8], what: &str) -> Result<SegmentMeta, WalError> {
        layout::decode_upgrading::<SegmentMeta, SegmentMetaV1>(bytes, what)
    }
}

/// A segment entry as WAL format 1 wrote it (MD5s of the raw and stored content).
#[derive(Deserialize)]
struct SegmentMetaV1 {
    number: u64,
    ts_ms: u64,
    first_cursor: Option<String>,
    last_cursor: Option<String>,
    first_record: u64,
    records: u64,
    raw_bytes: u64,
    raw_md5: [u8; 16],
    stored_bytes: u64,
    stored_md5: [u8; 16],
    sealed_at_ms: u64,
}

impl From<SegmentMetaV1> for SegmentMeta {
    fn from(old: SegmentMetaV1) -> Self {
        SegmentMeta {
            number: old.number,
            ts_ms: old.ts_ms,
            first_cursor: old.first_cursor,
            last_cursor: old.last_cursor,
            first_record: old.first_record,
            records: old.records,
            raw_bytes: old.raw_bytes,
            raw_checksum: Checksum::Md5(old.raw_md5),
            stored_bytes: old.stored_bytes,
            stored_checksum: Checksum::Md5(old.stored_md5),
            sealed_at_ms: old.sealed_at_ms,
        }
    }
}

/// The file of segment `number` in `segments_dir`.
pub(crate) fn segment_path(segments_dir: &Path, number: u64) -> PathBuf {
    segments_dir.join(format!("{number:020}{SEGMENT_SUFFIX}"))
}

/// The temporary file segment `number` is written to before its rename.
pub(crate) fn segment_tmp_path(segments_dir: &Path, number: u64) -> PathBuf {
    segments_dir.join(format!("{number:020}{TMP_SUFFIX}"))
}

/// What a file name in `segments/` is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SegmentFileName {
    /// A sealed segment file.
    Sealed(u64),
    /// A segment being written when the process stopped.
    Temporary,
    /// Not a name the WAL writes.
    Foreign,
}

/// Classifies a file name found in `segments/`.
pub(crate) fn classify(name: &str) -> SegmentFileName {
    let number = |digits: &str| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit());
    if let Some(digits) = name.strip_suffix(TMP_SUFFIX) {
        if number(digits) {
            return SegmentFileName::Temporary;
        }
    } else if let Some(digits) = name.strip_suffix(SEGMENT_SUFFIX)
        && number(digits)
        && let Ok(n) = digits.parse()
    {
        return SegmentFileName::Sealed(n);
    }
    SegmentFileName::Foreign
}

/// A reader that hashes (with the kind of checksum it is to be checked against) and counts what
/// passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: ChecksumHasher,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, like: &Checksum) -> Self {
        HashingReader {
            inner,
            hasher: ChecksumHasher::like(like),
            bytes: 0,
        }
    }

    /// Reads everything left, then returns the checksum and length of all bytes read.
    fn finish(&mut self) -> io::Result<(Checksum, u64)> {
        let mut sink = [0u8; 8192];
        while self.read(&mut sink)? > 0 {}
        Ok((self.hasher.finish(), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn mismatch(
    meta: &SegmentMeta,
    path: &Path,
    what: &str,
    checksum: &Checksum,
    found_bytes: u64,
    expected: u64,
) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "segment {} ({}) is damaged: its {what} content has {found_bytes} bytes and {} \
             that differ from the {expected} bytes and {} recorded when it was sealed",
            meta.number,
            path.display(),
            checksum.algorithm(),
            checksum.algorithm()
        ),
    )
}

/// Streams a segment's raw NDJSON. Every zstd frame's own checksum is checked as it is decoded,
/// and at the end the raw checksum (a CRC32C, which costs next to nothing beside the decoding)
/// and length are checked against the segment's entry; a mismatch is an
/// `io::ErrorKind::InvalidData` error naming the segment, returned instead of the end of the
/// stream. (The stored bytes are not hashed as well: once the raw content is proven to be the one
/// sealed, how it was stored does not matter; [`StoredSegmentReader`] checks them.)
pub struct SegmentReader {
    decoder: zstd::stream::read::Decoder<'static, BufReader<File>>,
    raw_hasher: ChecksumHasher,
    raw_bytes: u64,
    meta: SegmentMeta,
    path: PathBuf,
    verified: bool,
}

impl SegmentReader {
    pub(crate) fn open(path: PathBuf, meta: SegmentMeta) -> Result<Self, WalError> {
        let file = File::open(&path).map_err(|e| WalError::io("opening segment", &path, e))?;
        let decoder = zstd::stream::read::Decoder::new(file)
            .map_err(|e| WalError::io("starting to decompress segment", &path, e))?;
        Ok(SegmentReader {
            decoder,
            raw_hasher: ChecksumHasher::like(&meta.raw_checksum),
            raw_bytes: 0,
            meta,
            path,
            verified: false,
        })
    }

    /// The segment being read.
    pub fn meta(&self) -> &SegmentMeta {
        &self.meta
    }

    fn verify(&mut self) -> io::Result<()> {
        if self.raw_hasher.finish() != self.meta.raw_checksum
            || self.raw_bytes != self.meta.raw_bytes
        {
            return Err(mismatch(
                &self.meta,
                &self.path,
                "raw",
                &self.meta.raw_checksum,
                self.raw_bytes,
                self.meta.raw_bytes,
            ));
        }
        self.verified = true;
        Ok(())
    }
}

impl Read for SegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.verified {
            return Ok(0);
        }
        let n = match self.decoder.read(buf) {
            Ok(n) => n,
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "segment {} ({}) is damaged: it does not decompress: {e}",
                        self.meta.number,
                        self.path.display()
                    ),
                ));
            }
        };
        if n == 0 {
            self.verify()?;
            return Ok(0);
        }
        self.raw_hasher.update(&buf[..n]);
        self.raw_bytes += n as u64;
        if self.raw_bytes > self.meta.raw_bytes {
            return Err(mismatch(
                &self.meta,
                &self.path,
                "raw",
                &self.meta.raw_checksum,
                self.raw_bytes,
                self.meta.raw_bytes,
            ));
        }
        Ok(n)
    }
}

/// Streams a segment's stored zstd bytes as they are on disk, checking their checksum and length
/// at the end (an `io::ErrorKind::InvalidData` error naming the segment on mismatch).
pub struct StoredSegmentReader {
    reader: HashingReader<File>,
    meta: SegmentMeta,
    path: PathBuf,
    verified: bool,
}

impl StoredSegmentReader {
    pub(crate) fn open(path: PathBuf, meta: SegmentMeta) -> Result<Self, WalError> {
        let file = File::open(&path).map_err(|e| WalError::io("opening segment", &path, e))?;
        Ok(StoredSegmentReader {
            reader: HashingReader::new(file, &meta.stored_checksum),
            meta,
            path,
            verified: false,
        })
    }

    /// The segment being read.
    pub fn meta(&self) -> &SegmentMeta {
        &self.meta
    }
}

impl Read for StoredSegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.verified {
            return Ok(0);
        }
        let n = self.reader.read(buf)?;
        if n == 0 || self.reader.bytes > self.meta.stored_bytes {
            let (checksum, bytes) = self.reader.finish()?;
            if checksum != self.meta.stored_checksum || bytes != self.meta.stored_bytes {
                return Err(mismatch(
                    &self.meta,
                    &self.path,
                    "stored",
                    &self.meta.stored_checksum,
                    bytes,
                    self.meta.stored_bytes,
                ));
            }
            self.verified = true;
        }
        Ok(n)
    }
}

/// Checks a segment's file against its entry: presence and size, and the stored checksum when
/// `full` (a read of the whole file).
pub(crate) fn inspect(path: &Path, meta: &SegmentMeta, full: bool) -> Option<SegmentProblem> {
    let found = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(SegmentProblem::Missing),
        Err(e) => return Some(SegmentProblem::Unreadable(e.to_string())),
    };
    if found != meta.stored_bytes {
        return Some(SegmentProblem::WrongSize {
            expected: meta.stored_bytes,
            found,
        });
    }
    if full {
        let result =
            File::open(path).and_then(|f| HashingReader::new(f, &meta.stored_checksum).finish());
        match result {
            Ok((checksum, _)) if checksum == meta.stored_checksum => {}
            Ok(_) => return Some(SegmentProblem::BadChecksum),
            Err(e) => return Some(SegmentProblem::Unreadable(e.to_string())),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_foreign_files_are_left_alone() {
        let dir = Path::new("/x");
        let sealed = segment_path(dir, 42);
        let name = sealed.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "00000000000000000042.ndjson.zst");
        assert_eq!(classify(name), SegmentFileName::Sealed(42));
        let tmp = segment_tmp_path(dir, 42);
        assert_eq!(
            classify(tmp.file_name().unwrap().to_str().unwrap()),
            SegmentFileName::Temporary
        );
        assert_eq!(classify("README"), SegmentFileName::Foreign);
        assert_eq!(classify("42.ndjson.zst"), SegmentFileName::Foreign);
        assert_eq!(
            classify("0000000000000000004x.ndjson.zst"),
            SegmentFileName::Foreign
        );
    }
}
