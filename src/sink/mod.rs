//! Where finished files go: an S3 bucket ([`S3Sink`]) or a local directory ([`DirSink`]).
//!
//! # The design: one attempt per call, the caller owns the retries
//!
//! A sink is a thin, honest edge. Each call makes **one attempt** and reports what happened as a
//! classified [`SinkError`]; it never sleeps, never retries, never reorders. The uploader
//! (`pipeline::uploader`) owns the policy: it uploads sealed segments strictly in order, retries
//! forever with backoff, and marks a segment done only after [`Sink::put`] returned `Ok`. Keeping
//! the policy in one place is what lets the pipeline keep docs/architecture.md#invariant-3 ("file
//! N+1 is never visible before file N's upload succeeded; after a crash a re-upload of N uses the
//! same key and the same bytes").
//!
//! # What "done" means
//!
//! [`Sink::put`] returning `Ok(())` means the whole object is stored under `key`, visible to
//! readers (listing and reading), and its bytes are exactly the `len` bytes whose checksum is
//! `checksum` in the [`BodySource`]. Anything else is an `Err`, and then **nothing partial is
//! visible** under `key`: an S3 single PUT is atomic, a multipart upload is aborted, a directory write goes to a
//! temporary name that is only renamed into place after an fsync.
//!
//! The checksum is checked twice: while the body streams (it refuses to send the last bytes of a
//! body whose length or checksum does not match, so a corrupt segment never completes an
//! upload; the WAL's segment reader does it for uploads of segments), and by the S3 server
//! through `x-amz-checksum-crc32c` or `Content-MD5` on every PUT and `Content-MD5` on every part
//! (see [`s3`] for which servers check what).
//!
//! # What may be called twice
//!
//! Everything. `prepare` is idempotent. `put` of the same key with the same bytes is harmless
//! (it overwrites the object with identical content): this is exactly what happens when the
//! daemon crashes after an upload succeeded but before the WAL recorded it. `put` of the same key
//! must not run concurrently with itself (the uploader never does that). `list` and `get` only
//! read.
//!
//! # Keys
//!
//! [`object_key`] builds `{folder}/stream_{ts}_{N}.json` (`.json.zst` with zstd), the names the
//! stock `stream-importer` parses; [`file_number`] reads `N` back exactly as the importer does.

mod body;
mod dir;
mod error;
mod key;
pub mod s3;

use bytes::Bytes;

pub use body::BodySource;
pub use dir::DirSink;
pub use error::{SinkError, SinkErrorKind};
pub use key::{Compression, file_number, object_key};
pub use s3::{ChecksumPolicy, S3Settings, S3Sink, UploadChecksum};
/// The checksum a [`BodySource`] declares (the WAL's: CRC32C, or MD5 for segments it sealed in
/// format 1).
pub use wal::Checksum;

/// One object as listed by [`Sink::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The full key (path under the bucket or the export directory, `/`-separated).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// A destination for finished files. See the [module documentation](self) for the contract.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Makes the destination usable: creates the bucket (S3) or the directory if missing.
    ///
    /// Idempotent and cheap when there is nothing to do; call it at start-up and again after a
    /// [`SinkErrorKind::NoSuchBucket`] error.
    async fn prepare(&self) -> Result<(), SinkError>;

    /// Stores `body` under `key`, in one attempt.
    ///
    /// `Ok(())`: the object is complete, visible, and holds exactly the body's bytes (length
    /// and checksum checked). `Err`: nothing partial is visible under `key` (an object stored earlier
    /// under the same key stays as it was, except for a directory sink, which never leaves a
    /// mix). Streams the body: memory use is bounded by the sink's buffers (a few MiB, or the
    /// multipart part size times the part concurrency), never by the body's size.
    async fn put(&self, key: &str, body: &BodySource) -> Result<(), SinkError>;

    /// Every object whose key starts with `prefix`, in lexicographic (byte) order, all pages,
    /// without "directory" keys ending in `/`: the order in which the stock importer reads them.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SinkError>;

    /// The whole content of `key`, in memory. Meant for verification and tests, not for large
    /// objects.
    async fn get(&self, key: &str) -> Result<Bytes, SinkError>;

    /// A one-line description for logs and `status` (bucket, endpoint or directory). Never
    /// contains a secret.
    fn describe(&self) -> String;
}
