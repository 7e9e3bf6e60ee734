//! Sealed segments: their metadata, file names, and the readers that verify them.
//!
//! A segment file is `segments/{number:020}.ndjson.zst`: one or more zstd frames whose
//! concatenated content is the segment's raw NDJSON. It is written under `….tmp`, fsynced,
//! renamed, and the directory fsynced, before its entry is registered; so a file without an entry
//! (an orphan) can only come from a crash and is deleted at the next open.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::error::{SegmentProblem, WalError};

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
    /// MD5 of the raw NDJSON: the Content-MD5 of a plain upload.
    pub raw_md5: [u8; 16],
    /// Length of the stored zstd file.
    pub stored_bytes: u64,
    /// MD5 of the stored zstd file (Content-MD5 when uploading it as is).
    pub stored_md5: [u8; 16],
    /// The `now_ms` the seal was called with.
    pub sealed_at_ms: u64,
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

/// A reader that hashes and counts what passes through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    md5: Md5,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            md5: Md5::new(),
            bytes: 0,
        }
    }

    /// Reads everything left, then returns the MD5 and length of all bytes read.
    fn finish(&mut self) -> io::Result<([u8; 16], u64)> {
        let mut sink = [0u8; 8192];
        while self.read(&mut sink)? > 0 {}
        Ok((self.md5.clone().finalize().into(), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.md5.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

fn mismatch(
    meta: &SegmentMeta,
    path: &Path,
    what: &str,
    found_bytes: u64,
    expected: u64,
) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "segment {} ({}) is damaged: its {what} content has {found_bytes} bytes and MD5 \
             that differ from the {expected} bytes and MD5 recorded when it was sealed",
            meta.number,
            path.display()
        ),
    )
}

/// Streams a segment's raw NDJSON. Every zstd frame's own checksum is checked as it is decoded,
/// and at the end the raw MD5 and length are checked against the segment's entry; a mismatch is
/// an `io::ErrorKind::InvalidData` error naming the segment, returned instead of the end of the
/// stream. (The stored bytes are not hashed as well: once the raw content is proven to be the one
/// sealed, how it was stored does not matter; [`StoredSegmentReader`] checks them.)
pub struct SegmentReader {
    decoder: zstd::stream::read::Decoder<'static, BufReader<File>>,
    raw_md5: Md5,
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
            raw_md5: Md5::new(),
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
        let raw_md5: [u8; 16] = self.raw_md5.clone().finalize().into();
        if raw_md5 != self.meta.raw_md5 || self.raw_bytes != self.meta.raw_bytes {
            return Err(mismatch(
                &self.meta,
                &self.path,
                "raw",
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
        self.raw_md5.update(&buf[..n]);
        self.raw_bytes += n as u64;
        if self.raw_bytes > self.meta.raw_bytes {
            return Err(mismatch(
                &self.meta,
                &self.path,
                "raw",
                self.raw_bytes,
                self.meta.raw_bytes,
            ));
        }
        Ok(n)
    }
}

/// Streams a segment's stored zstd bytes as they are on disk, checking their MD5 and length at
/// the end (an `io::ErrorKind::InvalidData` error naming the segment on mismatch).
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
            reader: HashingReader::new(file),
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
            let (md5, bytes) = self.reader.finish()?;
            if md5 != self.meta.stored_md5 || bytes != self.meta.stored_bytes {
                return Err(mismatch(
                    &self.meta,
                    &self.path,
                    "stored",
                    bytes,
                    self.meta.stored_bytes,
                ));
            }
            self.verified = true;
        }
        Ok(n)
    }
}

/// Checks a segment's file against its entry: presence and size, and the stored MD5 when
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
        let result = File::open(path).and_then(|f| HashingReader::new(f).finish());
        match result {
            Ok((md5, _)) if md5 == meta.stored_md5 => {}
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
