//! The bytes of one upload: [`BodySource`], a reopenable reader of known length and checksum,
//! and the machinery that streams it without holding it in memory and without ever completing an
//! upload whose bytes do not match.

use std::fmt;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::mpsc;
use wal::{Checksum, ChecksumHasher};

use super::{SinkError, SinkErrorKind};

type OpenFn = dyn Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync;

/// The bytes of one object: their length and checksum, known in advance, and a way to read
/// them, as many times as needed (each attempt opens a fresh reader).
///
/// For a plain NDJSON upload the uploader gives a reader that decompresses the zstd segment as
/// it goes (the raw length and CRC32C are in the segment's metadata); for `.json.zst` uploads,
/// the stored file. Readers are blocking: sinks call them on tokio's blocking pool.
///
/// A reader may report corruption by failing (for example `io::ErrorKind::InvalidData` at EOF
/// when the segment's checksum does not match): the upload then fails with
/// [`SinkErrorKind::Integrity`] and nothing is stored. Sinks also check `len` and `checksum`
/// themselves while streaming.
#[derive(Clone)]
pub struct BodySource {
    /// Length in bytes.
    pub len: u64,
    /// Checksum of the bytes (sent as `x-amz-checksum-crc32c` or `Content-MD5`).
    pub checksum: Checksum,
    open: Arc<OpenFn>,
    /// The readers check `len` and `checksum` themselves (see [`BodySource::self_checking`]).
    self_checking: bool,
}

impl BodySource {
    /// A body of `len` bytes with checksum `checksum`, read through readers made by `open`.
    pub fn new(
        len: u64,
        checksum: Checksum,
        open: impl Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            len,
            checksum,
            open: Arc::new(open),
            self_checking: false,
        }
    }

    /// Like [`BodySource::new`], for readers that already check their bytes: each one fails
    /// with `io::ErrorKind::InvalidData` instead of reaching EOF unless it yielded exactly `len`
    /// bytes with checksum `checksum` (as the WAL's segment readers do). Sinks then still count
    /// the bytes but do not hash them a second time.
    pub fn self_checking(
        len: u64,
        checksum: Checksum,
        open: impl Fn() -> io::Result<Box<dyn Read + Send>> + Send + Sync + 'static,
    ) -> Self {
        Self {
            self_checking: true,
            ..Self::new(len, checksum, open)
        }
    }

    /// A body held in memory (computes its CRC32C). For small objects and tests.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes: Bytes = bytes.into();
        let checksum = Checksum::crc32c_of(&bytes);
        let len = bytes.len() as u64;
        Self::new(len, checksum, move || {
            Ok(Box::new(io::Cursor::new(bytes.clone())) as Box<dyn Read + Send>)
        })
    }

    /// The same bytes, declared with their MD5: reads the body through once (checking it
    /// against its own checksum) to compute it. A body that has an MD5 already is returned as
    /// it is. For servers that check `Content-MD5` only; blocking.
    ///
    /// # Errors
    /// What reading the body reports, including a mismatch with its checksum.
    pub fn with_md5(&self) -> io::Result<BodySource> {
        if matches!(self.checksum, Checksum::Md5(_)) {
            return Ok(self.clone());
        }
        let mut reader = self.open_checked()?;
        let mut md5 = ChecksumHasher::md5();
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let n = reader.read_full(&mut buf)?;
            if n == 0 {
                break;
            }
            md5.update(&buf[..n]);
        }
        Ok(BodySource {
            checksum: md5.finish(),
            ..self.clone()
        })
    }

    /// A fresh reader positioned at the first byte.
    ///
    /// # Errors
    /// Whatever the body's `open` function reports.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        (self.open)()
    }

    /// The checksum in base64, as S3 wants it in `Content-MD5` or `x-amz-checksum-crc32c`
    /// (the CRC32C's four bytes big-endian).
    pub fn checksum_base64(&self) -> String {
        checksum_base64(&self.checksum)
    }

    /// A reader that yields this body's bytes and fails instead of reaching EOF when they are
    /// not exactly `len` bytes with checksum `checksum`.
    pub(crate) fn open_checked(&self) -> io::Result<CheckedReader> {
        let checksum = (!self.self_checking).then_some(self.checksum);
        Ok(CheckedReader::new(self.open()?, self.len, checksum))
    }
}

/// A checksum in base64, as S3 headers carry it.
pub(crate) fn checksum_base64(checksum: &Checksum) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    match checksum {
        Checksum::Crc32c(crc) => b64.encode(crc.to_be_bytes()),
        Checksum::Md5(md5) => b64.encode(md5),
    }
}

impl fmt::Debug for BodySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySource")
            .field("len", &self.len)
            .field(self.checksum.algorithm(), &self.checksum_base64())
            .finish_non_exhaustive()
    }
}

/// The error a [`CheckedReader`] returns when the bytes are not what the body declared.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BodyMismatch(String);

/// Wraps a body reader: counts and hashes the bytes, fails as soon as there are more than
/// `len`, and at EOF fails unless exactly `len` bytes with the expected checksum went through.
/// For a self-checking body ([`BodySource::self_checking`]) it leaves the checksum to the inner
/// reader.
pub(crate) struct CheckedReader {
    inner: Box<dyn Read + Send>,
    expected_len: u64,
    /// `None` when the inner reader checks the checksum itself.
    expected: Option<Checksum>,
    read: u64,
    hasher: Option<ChecksumHasher>,
    /// Set once EOF was reached and checked: later reads keep returning `Ok(0)`.
    verified: bool,
}

impl CheckedReader {
    fn new(inner: Box<dyn Read + Send>, expected_len: u64, expected: Option<Checksum>) -> Self {
        Self {
            inner,
            expected_len,
            expected,
            read: 0,
            hasher: expected.as_ref().map(ChecksumHasher::like),
            verified: false,
        }
    }

    /// Bytes not read yet, according to the declared length.
    pub(crate) fn remaining(&self) -> u64 {
        self.expected_len.saturating_sub(self.read)
    }

    /// Fills `buf` completely, or up to EOF; returns how many bytes were read (0 only at EOF,
    /// which is then checked).
    pub(crate) fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(filled)
    }

    /// Reads once more and succeeds only at a clean, checked EOF.
    pub(crate) fn confirm_eof(&mut self) -> io::Result<()> {
        let mut probe = [0u8; 1];
        loop {
            match self.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(mismatch(format!(
                        "the body is longer than its declared {} bytes",
                        self.expected_len
                    )));
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    fn check_at_eof(&mut self) -> io::Result<()> {
        if self.verified {
            return Ok(());
        }
        if self.read != self.expected_len {
            return Err(mismatch(format!(
                "the body ended after {} bytes, {} were declared",
                self.read, self.expected_len
            )));
        }
        if let (Some(expected), Some(hasher)) = (self.expected, &self.hasher) {
            let actual = hasher.finish();
            if actual != expected {
                return Err(mismatch(format!(
                    "the body's {} is {}, {} was declared",
                    expected.algorithm(),
                    checksum_base64(&actual),
                    checksum_base64(&expected)
                )));
            }
        }
        self.verified = true;
        Ok(())
    }
}

fn mismatch(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, BodyMismatch(message))
}

impl Read for CheckedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.check_at_eof()?;
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.expected_len {
            return Err(mismatch(format!(
                "the body is longer than its declared {} bytes",
                self.expected_len
            )));
        }
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Classifies an error of a body reader: corruption (`InvalidData`, a length or checksum mismatch,
/// an early EOF) is [`SinkErrorKind::Integrity`], anything else [`SinkErrorKind::Io`].
pub(crate) fn body_error(err: &io::Error, what: &str) -> SinkError {
    let kind = match err.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => SinkErrorKind::Integrity,
        _ => SinkErrorKind::Io,
    };
    SinkError::new(kind, format!("{what}: reading the body failed: {err}"))
}

/// Size of the chunks read from a body and handed to the HTTP client: below the allocator's
/// mmap threshold ([`crate::allocator::MMAP_THRESHOLD`]), so that a chunk is not a mapping of its
/// own, page-faulted in and unmapped each time.
const CHUNK_BYTES: usize = 128 * 1024;
/// Chunks read ahead of the HTTP client: with [`CHUNK_BYTES`], at most 1 MiB in this queue.
const CHUNKS_AHEAD: usize = 8;

/// Streams `source` as an HTTP body, reading it on the blocking pool, at most a few chunks
/// ahead of the network.
///
/// The last chunk is released only after the reader reached a checked EOF (exact length,
/// matching MD5, no error from the reader): a body that turns out to be corrupt ends the
/// request with an error before the server has received all the declared bytes, so the server
/// cannot store it. The first failure is also recorded in `failure`, where the caller finds the
/// precise, classified reason (the HTTP client only reports "body error").
pub(crate) fn stream_body(
    source: &BodySource,
    what: String,
    failure: Arc<OnceLock<SinkError>>,
) -> StreamingBody {
    let (sender, receiver) = mpsc::channel(CHUNKS_AHEAD);
    let source = source.clone();
    let len = source.len;
    tokio::task::spawn_blocking(move || {
        if let Err(err) = produce_chunks(&source, &sender) {
            let error = body_error(&err, &what);
            let _ = failure.set(error);
            // The receiver may be gone already (request aborted): nothing else to tell.
            let _ = sender.blocking_send(Err(err));
        }
    });
    StreamingBody {
        receiver,
        remaining: len,
    }
}

/// Reads `source` in chunks into `sender`. Returns early and quietly when the receiver is
/// dropped (the request ended).
fn produce_chunks(source: &BodySource, sender: &mpsc::Sender<io::Result<Bytes>>) -> io::Result<()> {
    let mut reader = source.open_checked()?;
    loop {
        let want = usize::try_from(reader.remaining())
            .unwrap_or(usize::MAX)
            .min(CHUNK_BYTES);
        let mut chunk = vec![0u8; want];
        let n = if want == 0 {
            0
        } else {
            reader.read_full(&mut chunk)?
        };
        if n < want {
            // EOF before the declared length: this read_full already checked it and failed,
            // unless the reader is broken in a way that returned 0 without error.
            return Err(mismatch(format!(
                "the body ended before its declared {} bytes",
                source.len
            )));
        }
        chunk.truncate(n);
        if reader.remaining() == 0 {
            // Hold the last bytes back until the body is proven complete and intact.
            reader.confirm_eof()?;
            if n > 0 {
                let _ = sender.blocking_send(Ok(Bytes::from(chunk)));
            }
            return Ok(());
        }
        if sender.blocking_send(Ok(Bytes::from(chunk))).is_err() {
            return Ok(());
        }
    }
}

/// An HTTP body fed by [`stream_body`]'s blocking reader. Its exact length is known, so the
/// request carries a `Content-Length` (no chunked encoding, which S3 servers refuse).
pub(crate) struct StreamingBody {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
}

impl http_body::Body for StreamingBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        match self.receiver.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.remaining = self.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) if self.remaining == 0 => Poll::Ready(None),
            Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the body reader stopped before the declared length",
            )))),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(body: &BodySource) -> io::Result<Vec<u8>> {
        let mut reader = body.open_checked()?;
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_matching_body_reads_through() {
        let body = BodySource::from_bytes(&b"hello\n"[..]);
        assert_eq!(drain(&body).unwrap(), b"hello\n");
    }

    #[test]
    fn eof_can_be_read_again_after_it_was_checked() {
        let body = BodySource::from_bytes(&b"hello\n"[..]);
        let mut reader = body.open_checked().unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(reader.read_full(&mut buf).unwrap(), 6);
        assert_eq!(reader.read_full(&mut buf).unwrap(), 0);
        reader.confirm_eof().unwrap();
    }

    #[test]
    fn a_wrong_checksum_fails_at_eof() {
        let good = BodySource::from_bytes(&b"hello\n"[..]);
        for (wrong, name) in [
            (Checksum::Crc32c(0), "CRC32C"),
            (Checksum::Md5([0; 16]), "MD5"),
        ] {
            let bad = BodySource::new(6, wrong, || {
                Ok(Box::new(io::Cursor::new(b"hello\n".to_vec())) as Box<dyn Read + Send>)
            });
            assert_ne!(good.checksum, bad.checksum);
            let err = drain(&bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn the_md5_of_a_body_is_computed_from_its_checked_bytes() {
        let body = BodySource::from_bytes(&b"hello\n"[..]);
        let with_md5 = body.with_md5().unwrap();
        assert_eq!(with_md5.checksum, Checksum::md5_of(b"hello\n"));
        assert_eq!(drain(&with_md5).unwrap(), b"hello\n");
        let damaged = BodySource::new(6, Checksum::Crc32c(0), || {
            Ok(Box::new(io::Cursor::new(b"hello\n".to_vec())) as Box<dyn Read + Send>)
        });
        assert_eq!(
            damaged.with_md5().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn checksums_are_encoded_as_s3_wants_them() {
        let body = BodySource::from_bytes(&b"hello world"[..]);
        assert_eq!(body.checksum_base64(), "yZRlqg==");
        assert_eq!(
            body.with_md5().unwrap().checksum_base64(),
            "XrY7u+Ae7tCTyyK7j1rNww=="
        );
    }

    #[test]
    fn a_self_checking_body_is_counted_not_hashed_again() {
        // The declared checksum is wrong, but the reader is trusted to check it: only the length is
        // checked here.
        let trusting = BodySource::self_checking(6, Checksum::Md5([0; 16]), || {
            Ok(Box::new(io::Cursor::new(b"hello\n".to_vec())) as Box<dyn Read + Send>)
        });
        assert_eq!(drain(&trusting).unwrap(), b"hello\n");
        let short = BodySource::self_checking(7, Checksum::Md5([0; 16]), || {
            Ok(Box::new(io::Cursor::new(b"hello\n".to_vec())) as Box<dyn Read + Send>)
        });
        assert!(
            drain(&short)
                .unwrap_err()
                .to_string()
                .contains("ended after 6")
        );
        // Its reader's own failure is what the sink reports.
        let failing = BodySource::self_checking(6, Checksum::Md5([0; 16]), || {
            Ok(Box::new(FailingAtEof(io::Cursor::new(b"hello\n".to_vec())))
                as Box<dyn Read + Send>)
        });
        let err = drain(&failing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// Yields its bytes, then fails where EOF would be (a self-checking reader finding damage).
    struct FailingAtEof(io::Cursor<Vec<u8>>);

    impl Read for FailingAtEof {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::new(io::ErrorKind::InvalidData, "damaged")),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn a_short_or_long_body_fails() {
        let checksum = BodySource::from_bytes(&b"abc"[..]).checksum;
        let short = BodySource::new(4, checksum, || {
            Ok(Box::new(io::Cursor::new(b"abc".to_vec())) as Box<dyn Read + Send>)
        });
        assert!(
            drain(&short)
                .unwrap_err()
                .to_string()
                .contains("ended after 3")
        );
        let long = BodySource::new(2, checksum, || {
            Ok(Box::new(io::Cursor::new(b"abc".to_vec())) as Box<dyn Read + Send>)
        });
        assert!(drain(&long).unwrap_err().to_string().contains("longer"));
    }

    #[tokio::test]
    async fn streaming_withholds_the_last_chunk_of_a_corrupt_body() {
        use http_body_util::BodyExt;
        let len = CHUNK_BYTES * 3 + 17;
        let data = vec![7u8; len];
        let body = BodySource::new(len as u64, Checksum::Md5([0; 16]), move || {
            Ok(Box::new(io::Cursor::new(data.clone())) as Box<dyn Read + Send>)
        });
        let failure = Arc::new(OnceLock::new());
        let mut stream = stream_body(&body, "PUT test".into(), failure.clone());
        let mut received = 0usize;
        let mut saw_error = false;
        while let Some(frame) = stream.frame().await {
            match frame {
                Ok(frame) => received += frame.into_data().map(|d| d.len()).unwrap_or(0),
                Err(_) => {
                    saw_error = true;
                    break;
                }
            }
        }
        assert!(saw_error);
        assert!(received < len, "all {len} bytes were released");
        assert_eq!(
            failure.get().map(|e| e.kind),
            Some(SinkErrorKind::Integrity)
        );
    }
}
