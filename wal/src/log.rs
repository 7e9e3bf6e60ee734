//! The frame log: unsealed records in append-only files, one entry per commit that has records.
//!
//! Each entry is one frame (see `frame.rs`): its header, then its zstd bytes, behind a length
//! and a CRC32C of both. The writer appends an entry and fdatasyncs the file before it
//! acknowledges the commit; sled is not touched by a commit that only appends, so what an append
//! costs beyond compression is one `write` and one `fdatasync`.
//!
//! ```text
//! <dir>/frames/{F:020}.log   entries of frames F, F+1, ... (F = the file's first frame)
//! entry = body length (u64 LE) | CRC32C of the body (u32 LE) | body
//! body  = header length (u32 LE) | header (value version + bincode) | the frame's zstd bytes
//! ```
//!
//! A file ends with the first entry that reaches [`FILE_TARGET_BYTES`]: the next frame starts
//! the file named after it. So where any frame's entry lies follows from the entry before it
//! ([`LogPos::after`]), without an index. Files whose frames are all sealed are deleted whole,
//! once the commit that sealed them is durable.
//!
//! After a crash or power cut, the log ends with its last whole entry: an entry cut short or
//! failing its CRC at the very end of the last file is a write that was never acknowledged
//! (`recovery.rs` truncates it); the same anywhere else is corruption.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::WalError;
use crate::frame::FrameHeader;
use crate::layout;

/// Name of the folder of frame log files inside the WAL directory.
pub(crate) const FRAMES_DIR: &str = "frames";
/// A file ends with the first entry that reaches this size (part of the format: readers find
/// the next entry with it).
///
/// Sealed frames leave the disk with their file, so up to this much of the log (plus one entry)
/// may hold only sealed frames, counted against the disk budget until the next entries fill the
/// file: small enough to leave a small budget room (`tests/daemon_budget.rs` runs with 8 MiB),
/// large enough that starting a file (one directory fsync) comes once every several commits of
/// 1 MiB.
pub(crate) const FILE_TARGET_BYTES: u64 = 2 * 1024 * 1024;
/// Bytes in front of an entry's body: its length and its CRC32C.
const PREFIX_BYTES: u64 = 12;
/// Largest header accepted (a header holds one length per record).
const MAX_HEADER_BYTES: u32 = 64 << 20;
const FILE_SUFFIX: &str = ".log";

/// Where an entry starts: a file (named by its first frame) and an offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogPos {
    /// The file's first frame.
    pub file: u64,
    /// Byte offset in the file.
    pub offset: u64,
}

impl LogPos {
    /// The start of the file whose first frame is `frame`.
    pub fn file_start(frame: u64) -> LogPos {
        LogPos {
            file: frame,
            offset: 0,
        }
    }

    /// Where the entry after frame `frame` goes, when the entry of `frame` starts here and is
    /// `len` bytes long.
    pub fn after(self, frame: u64, len: u64) -> LogPos {
        let end = self.offset + len;
        if end >= FILE_TARGET_BYTES {
            LogPos::file_start(frame + 1)
        } else {
            LogPos {
                file: self.file,
                offset: end,
            }
        }
    }
}

/// The path of the log file whose first frame is `file`.
pub(crate) fn file_path(frames_dir: &Path, file: u64) -> PathBuf {
    frames_dir.join(format!("{file:020}{FILE_SUFFIX}"))
}

/// The first frame of a log file named `name`, if the name is one this crate writes.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(FILE_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The log files in `frames_dir`, by first frame, and the names of other files found there.
pub(crate) fn list_files(frames_dir: &Path) -> Result<(Vec<u64>, Vec<PathBuf>), WalError> {
    let mut files = Vec::new();
    let mut foreign = Vec::new();
    let entries =
        std::fs::read_dir(frames_dir).map_err(|e| WalError::io("listing", frames_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("listing", frames_dir, e))?;
        match parse_file_name(&entry.file_name().to_string_lossy()) {
            Some(file) => files.push(file),
            None => foreign.push(entry.path()),
        }
    }
    files.sort_unstable();
    Ok((files, foreign))
}

/// Appends the entry of `header` and its zstd bytes `data` to `out`.
pub(crate) fn encode_entry(
    header: &FrameHeader,
    data: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WalError> {
    let encoded = layout::encode(header, "a frame header")?;
    let header_len = u32::try_from(encoded.len())
        .ok()
        .filter(|len| *len <= MAX_HEADER_BYTES)
        .ok_or_else(|| {
            WalError::corrupt(format!(
                "the header of frame {} takes {} bytes",
                header.frame,
                encoded.len()
            ))
        })?;
    let body_len = 4 + encoded.len() as u64 + data.len() as u64;
    out.reserve(PREFIX_BYTES as usize + body_len as usize);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(&header_len.to_le_bytes()), &encoded),
        data,
    );
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&encoded);
    out.extend_from_slice(data);
    Ok(())
}

/// An entry whose header was read; its data follows.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Its frame header.
    pub header: FrameHeader,
    /// Where it starts.
    pub pos: LogPos,
    /// Its whole length, prefix included.
    pub len: u64,
    /// The CRC32C its prefix announces for the body.
    expected_crc: u32,
    /// The CRC32C of the body up to the end of the header.
    header_crc: u32,
}

impl Entry {
    /// Where the entry after this one goes.
    pub fn next(&self) -> LogPos {
        self.pos.after(self.header.frame, self.len)
    }
}

/// Why an entry could not be read.
#[derive(Debug)]
pub(crate) enum EntryError {
    /// The file ends before the entry does (a write cut short), or has no entry here.
    Short,
    /// The entry is all there but its CRC32C or its header is wrong.
    Invalid(String),
    /// Reading failed.
    Io(io::Error),
}

impl EntryError {
    /// The error as the WAL reports it when the entry had to be there and whole.
    pub fn into_wal_error(self, path: &Path, pos: LogPos) -> WalError {
        match self {
            EntryError::Short => WalError::corrupt(format!(
                "{} ends before the entry at offset {}",
                path.display(),
                pos.offset
            )),
            EntryError::Invalid(why) => WalError::corrupt(format!(
                "the entry at offset {} of {} is damaged: {why}",
                pos.offset,
                path.display()
            )),
            EntryError::Io(e) => WalError::io("reading frame log", path, e),
        }
    }
}

impl From<io::Error> for EntryError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => EntryError::Short,
            io::ErrorKind::InvalidData => EntryError::Invalid(e.to_string()),
            _ => EntryError::Io(e),
        }
    }
}

/// Reads entries from the log files, keeping the last file open.
pub(crate) struct LogReader {
    frames_dir: PathBuf,
    open: Option<(u64, BufReader<File>)>,
}

impl LogReader {
    /// A reader of the log files in `frames_dir`.
    pub fn new(frames_dir: &Path) -> Self {
        LogReader {
            frames_dir: frames_dir.to_path_buf(),
            open: None,
        }
    }

    /// The path of log file `file`.
    pub fn path(&self, file: u64) -> PathBuf {
        file_path(&self.frames_dir, file)
    }

    fn seek(&mut self, pos: LogPos) -> Result<&mut BufReader<File>, EntryError> {
        if self.open.as_ref().is_none_or(|(file, _)| *file != pos.file) {
            let path = self.path(pos.file);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(EntryError::Short),
                Err(e) => return Err(EntryError::Io(e)),
            };
            self.open = Some((pos.file, BufReader::with_capacity(128 * 1024, file)));
        }
        let (_, reader) = self.open.as_mut().ok_or(EntryError::Short)?;
        reader.seek(SeekFrom::Start(pos.offset))?;
        Ok(reader)
    }

    /// Reads the prefix and header of the entry at `pos`; its data is read next with
    /// [`LogReader::data`].
    pub fn entry(&mut self, pos: LogPos) -> Result<Entry, EntryError> {
        let reader = self.seek(pos)?;
        let mut prefix = [0u8; PREFIX_BYTES as usize + 4];
        reader.read_exact(&mut prefix)?;
        let body_len = u64::from_le_bytes(prefix[0..8].try_into().unwrap_or_default());
        let expected_crc = u32::from_le_bytes(prefix[8..12].try_into().unwrap_or_default());
        let header_len = u32::from_le_bytes(prefix[12..16].try_into().unwrap_or_default());
        if header_len > MAX_HEADER_BYTES || u64::from(header_len) + 4 > body_len {
            return Err(EntryError::Invalid(format!(
                "a body of {body_len} bytes cannot hold a header of {header_len} bytes"
            )));
        }
        let len = PREFIX_BYTES
            .checked_add(body_len)
            .filter(|len| pos.offset.checked_add(*len).is_some())
            .ok_or_else(|| EntryError::Invalid(format!("a body of {body_len} bytes")))?;
        let mut encoded = vec![0u8; header_len as usize];
        reader.read_exact(&mut encoded)?;
        let header_crc = crc32c::crc32c_append(crc32c::crc32c(&prefix[12..16]), &encoded);
        let header = FrameHeader::decode_entry(&encoded)
            .map_err(|e| EntryError::Invalid(format!("its header does not decode: {e}")))?;
        let data_len = body_len - 4 - u64::from(header_len);
        if header.stored_bytes != data_len {
            return Err(EntryError::Invalid(format!(
                "it holds {data_len} bytes of frame data, its header says {}",
                header.stored_bytes
            )));
        }
        Ok(Entry {
            header,
            pos,
            len,
            expected_crc,
            header_crc,
        })
    }

    /// Streams the zstd bytes of `entry` (just read with [`LogReader::entry`]), checking the
    /// entry's CRC32C once they are all read; optionally copies them to `copy_to`.
    pub fn data<'a>(
        &'a mut self,
        entry: &Entry,
        copy_to: Option<&'a mut dyn Write>,
    ) -> Result<EntryData<'a>, EntryError> {
        let data_start = entry.pos.offset + entry.len - entry.header.stored_bytes;
        let reader = self.seek(LogPos {
            file: entry.pos.file,
            offset: data_start,
        })?;
        Ok(EntryData {
            reader,
            left: entry.header.stored_bytes,
            crc: entry.header_crc,
            expected_crc: entry.expected_crc,
            checked: false,
            copy_to,
            copy_error: None,
        })
    }

    /// Reads the entry at `pos` whole and checks it.
    pub fn check_entry(&mut self, pos: LogPos) -> Result<Entry, EntryError> {
        let entry = self.entry(pos)?;
        self.data(&entry, None)?.drain()?;
        Ok(entry)
    }
}

/// The zstd bytes of one entry, checked against the entry's CRC32C at their end.
pub(crate) struct EntryData<'a> {
    reader: &'a mut BufReader<File>,
    left: u64,
    crc: u32,
    expected_crc: u32,
    checked: bool,
    copy_to: Option<&'a mut dyn Write>,
    copy_error: Option<io::Error>,
}

impl EntryData<'_> {
    /// Reads what is left, so every byte has been checked (and copied).
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

impl Read for EntryData<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for EntryData<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if let Some(error) = self.copy_error.take() {
            return Err(error);
        }
        if self.left == 0 {
            if !self.checked {
                if self.crc != self.expected_crc {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the entry does not match its CRC32C",
                    ));
                }
                self.checked = true;
            }
            return Ok(&[]);
        }
        let buffered = self.reader.fill_buf()?;
        if buffered.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = buffered
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        Ok(&buffered[..n])
    }

    fn consume(&mut self, amount: usize) {
        let Ok(buffered) = self.reader.fill_buf() else {
            return;
        };
        let n = amount
            .min(buffered.len())
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        self.crc = crc32c::crc32c_append(self.crc, &buffered[..n]);
        if let Some(copy) = self.copy_to.as_mut()
            && let Err(e) = copy.write_all(&buffered[..n])
        {
            // Reported by the next read: the copy is incomplete.
            self.copy_to = None;
            self.copy_error = Some(e);
        }
        self.reader.consume(n);
        self.left -= n as u64;
    }
}

/// The log file being appended to, owned by the writer's syncer.
pub(crate) struct LogWriter {
    frames_dir: PathBuf,
    current: Option<(u64, File)>,
}

impl LogWriter {
    /// A writer of log files in `frames_dir`.
    pub fn new(frames_dir: &Path) -> Self {
        LogWriter {
            frames_dir: frames_dir.to_path_buf(),
            current: None,
        }
    }

    /// Writes `entry` at `pos`: a new file (offset 0) is created, or emptied if a crash left
    /// one. Durable only after [`LogWriter::sync`].
    pub fn write(&mut self, pos: LogPos, entry: &[u8]) -> Result<(), WalError> {
        use std::os::unix::fs::FileExt as _;
        let path = file_path(&self.frames_dir, pos.file);
        let new_file = pos.offset == 0;
        if new_file
            || self
                .current
                .as_ref()
                .is_none_or(|(file, _)| *file != pos.file)
        {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(new_file)
                .write(true)
                .open(&path)
                .map_err(|e| WalError::io("opening frame log", &path, e))?;
            self.current = Some((pos.file, file));
        }
        match self.current.as_ref() {
            Some((_, file)) => file
                .write_all_at(entry, pos.offset)
                .map_err(|e| WalError::io("writing frame log", &path, e)),
            None => Err(WalError::corrupt("no frame log file is open")),
        }
    }

    /// Makes the entry just written at `pos` durable: fdatasync of its file (the data and the
    /// length needed to read it back), and of the directory when `pos` started the file.
    pub fn sync(&mut self, pos: LogPos) -> Result<(), WalError> {
        let path = file_path(&self.frames_dir, pos.file);
        match self.current.as_ref() {
            Some((file, handle)) if *file == pos.file => handle
                .sync_data()
                .map_err(|e| WalError::io("fsyncing frame log", &path, e))?,
            _ => return Err(WalError::corrupt("no frame log file is open")),
        }
        if pos.offset == 0 {
            crate::dir::sync_dir(&self.frames_dir)?;
        }
        Ok(())
    }

    /// Deletes the log files `files` (all their frames sealed, the seal durable), then syncs the
    /// directory. Returns the bytes freed.
    pub fn delete(&mut self, files: &[u64]) -> Result<u64, WalError> {
        let mut freed = 0;
        for &file in files {
            if self.current.as_ref().is_some_and(|(open, _)| *open == file) {
                self.current = None;
            }
            let path = file_path(&self.frames_dir, file);
            freed += std::fs::metadata(&path).map_or(0, |m| m.len());
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(WalError::io("deleting sealed frame log", &path, e)),
            }
        }
        if !files.is_empty() {
            crate::dir::sync_dir(&self.frames_dir)?;
        }
        Ok(freed)
    }
}

/// Bytes taken by the log files `files`.
pub(crate) fn files_bytes(frames_dir: &Path, files: &[u64]) -> u64 {
    files
        .iter()
        .map(|&file| std::fs::metadata(file_path(frames_dir, file)).map_or(0, |m| m.len()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_ends_with_the_entry_that_reaches_the_target() {
        let pos = LogPos::file_start(7);
        assert_eq!(
            pos.after(7, 100),
            LogPos {
                file: 7,
                offset: 100
            }
        );
        let near = LogPos {
            file: 7,
            offset: FILE_TARGET_BYTES - 10,
        };
        assert_eq!(near.after(9, 10), LogPos::file_start(10));
        assert_eq!(near.after(9, 9).file, 7);
    }

    #[test]
    fn file_names_round_trip() {
        let path = file_path(Path::new("/w/frames"), 42);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(parse_file_name(&name), Some(42));
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name("00000000000000000042.log.tmp"), None);
    }
}
