//! Durable write-ahead log: group commit into an append-only frame log, durable state, sealed
//! zstd segments.
//!
//! The WAL makes "durable before acknowledged" true for the exporter. It knows nothing of OpenCTI
//! or S3: it stores opaque lines (records) with an opaque cursor, seals them into numbered NDJSON
//! segments compressed with zstd, and hands those out in order until they are marked uploaded.
//!
//! # Constraints
//!
//! - An append is acknowledged only once the frame log entry holding it was written and
//!   fdatasynced (and, when its commit also changed the database, sled flushed and its data file
//!   fsynced: sled 0.34's flush uses `sync_file_range`, which survives a process kill but not a
//!   power loss, sled issue #1452). After kill -9 or power loss a reader sees each group whole or
//!   not at all, and groups form a prefix of what was appended.
//! - sled costs CPU per key and keeps recently written values in memory, so records are not
//!   stored in it at all: the records of one commit form one zstd frame, appended with its header
//!   to the frame log (`log.rs`), and a commit that only appends never touches sled. sled holds
//!   the state and the segment entries, written only by seals, uploads, initialization and
//!   appends without records; opening the WAL replays the frames written after the stored state.
//! - Power loss: every file and directory the WAL creates, renames or removes is followed by an
//!   fsync of its directory, including sled's own (see `store.rs`), and the frame log is synced
//!   before any database state that counts its entries; `tests/powercut.rs` checks it on a file
//!   system that forgets whatever was not synced.
//! - Memory does not grow with the backlog or the outage: a commit holds at most
//!   `max_commit_bytes` (1 MiB) of records plus one request (three commits at most are in memory:
//!   syncing, planned, being planned), a seal streams frame by frame (copied frames through a
//!   128 KiB buffer, recompressed ones through one 128 KiB block), nothing keeps a per-record
//!   index in memory, and sealed frames leave with their log file, deleted whole. sled holds a few
//!   small values. Peak RSS of a whole process streaming 2 KB records through it:
//!   `examples/wal_probe.rs`.
//! - Disk is reported, not enforced: [`Wal::disk_usage`] counts the database, the frame log and
//!   the segments against `max_bytes`, and the daemon stops reading when it is full.
//! - One process at a time: the directory is locked (`LOCK`, `flock`) and marked (`WAL_FORMAT`);
//!   a non-empty directory without the marker is refused.
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/WAL_FORMAT                       "opencti-stream-exporter wal 3" (formats 1, 2: below)
//! <dir>/LOCK                             held with flock while open
//! <dir>/db/                              sled 0.34 (conf, db, blobs/, snap.*)
//! <dir>/frames/{F:020}.log               frame log file starting with frame F (see `log.rs`)
//! <dir>/segments/{N:020}.ndjson.zst      sealed segment N (zstd frames; content = NDJSON)
//! <dir>/segments/{N:020}.ndjson.zst.tmp  segment N being written (deleted at open)
//! ```
//!
//! A frame log entry is one commit's frame: a header (the frame's sequence number, its first
//! record's sequence, every record's length, raw and stored sizes, the cursor before the frame, a
//! (record count, cursor) mark for each append of the commit that set a cursor, the commit's state
//! changes, and the CRC32C of the raw content), then the zstd frame (NDJSON: each record + `\n`,
//! with zstd's content checksum), behind a length and a CRC32C of both.
//!
//! One sled tree, values = version byte + bincode 2 (standard configuration):
//!
//! - `S` → the state: cursor, `recover_until`, next file number, last sealed timestamp, last
//!   upload, extras (the public [`WalState`]), plus the next record and frame sequence numbers,
//!   the first unsealed position (frame, record index in the frame, raw byte offset, sequence,
//!   and where the frame's entry is) and the end of the frame log it accounts for.
//! - `G` + number (u64 BE) → [`SegmentMeta`]: number, 13-digit timestamp, first and last cursor,
//!   first record's sequence, record count, raw size and CRC32C (Content-Length and
//!   `x-amz-checksum-crc32c` of a plain upload), stored size and CRC32C (for uploading the `.zst`
//!   as is), seal time.
//!
//! Formats 1 and 2 (markers `wal 1` and `wal 2`) kept the unsealed frames in sled, in 4 KiB
//! chunks; format 1 had no CRC32C in frame headers and MD5s in segment entries. Opening one moves
//! its unsealed frames to the frame log once (`upgrade.rs`); segment entries are read as they are
//! ([`Checksum::Md5`] for format 1).
//!
//! # Life of a record
//!
//! 1. [`Appender::append`] checks the records are lines (not empty, no `\n`) and queues the group
//!    on the writer thread's channel; the caller holds a [`PendingAppend`].
//! 2. The writer's planner thread takes everything queued (up to `max_commit_bytes`), compresses
//!    all records into one frame and encodes its log entry (plus a database batch when the commit
//!    also seals, marks an upload, initializes, or has no record). Its syncer thread writes the
//!    entry and fdatasyncs the log file, applies, flushes and fsyncs the batch if there is one,
//!    publishes the new state, and completes every request of the commit, in order. The planner
//!    compresses the next commit meanwhile.
//! 3. [`Wal::seal`] takes the oldest unsealed records up to a byte limit (splitting a frame if
//!    needed), writes them to `segments/N.tmp` (whole frames of 64 KiB or more copied as stored,
//!    without decompressing them, their CRC32Cs combined; the rest recompressed), fsyncs, renames,
//!    fsyncs the directory; then one commit registers `G`+N, moves the first unsealed position
//!    and bumps the next file number and last timestamp. Log files wholly below the first
//!    unsealed position are deleted once that commit is durable (and at the next open if it
//!    stopped first).
//! 4. The uploader reads [`Wal::segments`] in order, streams one with [`Wal::open_segment`]
//!    (raw NDJSON, decompressed once; each zstd frame's checksum, and the CRC32C and size of the
//!    whole, verified) or [`Wal::open_segment_stored`], and after
//!    a successful upload calls [`Wal::mark_uploaded`]: one commit removes `G`+N and records the
//!    upload, then the file is deleted.
//!
//! # Invariants
//!
//! - Durable before acknowledged (docs/architecture.md#invariant-1): a [`PendingAppend`] resolves
//!   `Ok` only after the fdatasync of the log entry holding it (and the flush and fsync of its
//!   commit's database batch, if any); the state's cursor moves with that entry.
//! - Prefix and atomicity: a group is in one entry; commits are sequential, and an entry is
//!   synced before the next is written; a failed commit poisons the WAL so nothing after it is
//!   acknowledged. At open, only an entry cut short at the very end of the log (never
//!   acknowledged) is dropped; a damaged entry anywhere else fails the open.
//! - No loss, no duplicate: a record leaves the unsealed backlog only in the commit that registers
//!   the segment holding it (its log file is deleted later, once wholly below the first unsealed
//!   position), and a segment entry only after its upload.
//! - Gapless, ordered segments (docs/architecture.md#invariant-3): numbers from the state, +1 per
//!   seal; timestamps `max(now, last + 1)`, 13 digits; entries always form a consecutive run; only
//!   the oldest can be marked uploaded; a registered segment's file was durable before its entry.
//! - Recovery: files without an entry are deleted at open; entries without a sound file are
//!   reported (and refused by `open_segment` with [`WalError::SegmentDamaged`]), never dropped.
//!
//! # Benchmarks
//!
//! `cargo bench -p wal` runs `benches/append.rs` (durable appends of 2 KB records in groups of 1,
//! 64 and 1024, many in flight, and one in flight) and `benches/seal.rs` (sealing, MB/s of raw
//! NDJSON). A quicker run: `cargo bench -p wal -- --measurement-time 5 --warm-up-time 1`.
//! `cargo run --release -p wal --example wal_probe -- 300000 64 16 64` streams records through a
//! WAL as the daemon would and prints throughput, CPU per record by thread and peak RSS.

#![warn(missing_docs)]

mod appender;
mod checksum;
mod compress;
mod dir;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod layout;
mod log;
mod options;
mod recovery;
mod seal;
mod segment;
mod state;
mod store;
mod upgrade;
mod usage;
mod wal;
mod writer;

pub use appender::{Appender, Committed, Group, PendingAppend};
pub use checksum::{Checksum, ChecksumHasher};
pub use dir::{create_dir_durably, sync_parent};
pub use error::{SegmentProblem, WalError};
pub use options::{DEFAULT_CACHE_BYTES, DEFAULT_MAX_COMMIT_BYTES, DEFAULT_ZSTD_LEVEL, WalOptions};
pub use recovery::{DamagedSegment, RecoveryReport};
pub use segment::{SegmentMeta, SegmentReader, StoredSegmentReader};
pub use state::{
    FIRST_FILE_NUMBER, InitialState, RecoverUntil, StateChange, UploadRecord, WalState,
};
pub use usage::{Backlog, DATABASE_GROWTH_BYTES, DiskUsage, FS_RESERVE_BYTES, WalStats};
pub use wal::Wal;

#[cfg(test)]
mod fault_tests;
