//! How a WAL is opened: directory, disk budget, memory and compression knobs.

use std::path::PathBuf;

/// Default sled page-cache budget: small, because the daemon's whole peak RSS target is 64 MiB and
/// the WAL only re-reads what it seals shortly after writing it.
pub const DEFAULT_CACHE_BYTES: u64 = 4 * 1024 * 1024;

/// Default raw (uncompressed) bytes one commit gathers before it is written. One commit is one
/// compressed frame held in memory by the writer; 1 MiB keeps memory small while amortising
/// sled's per-key cost and the flush over ~500 records of 2 KB.
pub const DEFAULT_MAX_COMMIT_BYTES: usize = 1024 * 1024;

/// Default zstd level for WAL frames and for the parts of segments that are recompressed.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Options for [`crate::Wal::open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// The WAL directory (created if missing). It holds the database, `segments/`, a `LOCK` file
    /// and a format marker; the WAL tolerates other files next to these once it exists.
    pub dir: PathBuf,
    /// Disk budget in bytes for the database plus sealed segments, reported by
    /// [`crate::Wal::disk_usage`]. The WAL never refuses a write because of it: the caller decides
    /// backpressure from the report.
    pub max_bytes: u64,
    /// sled page-cache capacity in bytes.
    pub cache_bytes: u64,
    /// Raw bytes after which the writer stops gathering queued appends into the current commit. A
    /// single append larger than this is committed alone, whole. Up to three commits are in memory
    /// at once (one syncing, one planned, one being planned).
    pub max_commit_bytes: usize,
    /// zstd level of WAL frames and of recompressed segment parts (1 is fastest; higher levels
    /// trade append and seal throughput for disk).
    pub zstd_level: i32,
    /// Read every sealed segment file at open and compare its checksum with the recorded one
    /// (cost: a read of every stored byte); without it, open only compares sizes.
    pub verify_segments_on_open: bool,
}

impl WalOptions {
    /// Options with defaults for everything but the directory and the disk budget.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        WalOptions {
            dir: dir.into(),
            max_bytes,
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_commit_bytes: DEFAULT_MAX_COMMIT_BYTES,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            verify_segments_on_open: false,
        }
    }
}
