//! What the WAL holds and how much disk it takes (docs/architecture.md#invariant-6, "bounded
//! disk").
//!
//! The WAL never refuses an append because of its budget: it reports, and the daemon stops
//! reading the stream when [`DiskUsage::is_full`] says so. Counting is cheap: segment bytes are
//! summed as segments come and go, the frame log as entries are written and files deleted, the
//! database size is measured by the writer after seals and uploads and at most once a second
//! otherwise (sled's size does not shrink right after removals; it is counted as it is), and the
//! free space is one `statvfs` call.

use std::sync::atomic::{AtomicU64, Ordering};

/// How much the database can grow in one commit: sled's log grows by whole segments of this size
/// (sled's default `segment_size`, which this crate keeps) and never shrinks; a commit's frame log
/// entry is about `max_commit_bytes` compressed, well under it. A caller keeping a budget should
/// keep this much free.
pub const DATABASE_GROWTH_BYTES: u64 = 512 * 1024;

/// Free filesystem space under which [`DiskUsage::is_full`] reports full whatever the budget:
/// sled must never hit a full disk in the middle of a write.
pub const FS_RESERVE_BYTES: u64 = 64 * 1024 * 1024;

/// Records appended durably but not sealed yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Number of records.
    pub records: u64,
    /// Their raw size (each record plus `\n`): what they will weigh in segments.
    pub raw_bytes: u64,
}

/// Disk taken by the WAL against its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Size of the database (state and segment entries) and of the frame log (unsealed
    /// records), as last measured.
    pub database_bytes: u64,
    /// Sum of the sealed segment files not uploaded yet.
    pub segment_bytes: u64,
    /// The configured budget.
    pub max_bytes: u64,
    /// Free space for unprivileged users on the WAL's filesystem, if it could be read.
    pub fs_available_bytes: Option<u64>,
}

impl DiskUsage {
    /// Bytes counted against the budget.
    pub fn used(&self) -> u64 {
        self.database_bytes.saturating_add(self.segment_bytes)
    }

    /// Whether the caller should stop adding records: the budget is used up, or the filesystem
    /// has less than [`FS_RESERVE_BYTES`] free.
    pub fn is_full(&self) -> bool {
        self.used() >= self.max_bytes
            || self
                .fs_available_bytes
                .is_some_and(|free| free < FS_RESERVE_BYTES)
    }
}

/// Free space for unprivileged users on the filesystem holding `path`.
pub(crate) fn fs_available_bytes(path: &std::path::Path) -> Option<u64> {
    let stats = nix::sys::statvfs::statvfs(path).ok()?;
    let blocks: u64 = stats.blocks_available();
    blocks.checked_mul(stats.fragment_size())
}

/// Counters of what the WAL did since it was opened, for metrics. Written by the WAL only.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Commits made durable (each is one flush and fsync).
    pub commits: AtomicU64,
    /// Commits that failed (the WAL is poisoned after the first).
    pub commit_failures: AtomicU64,
    /// Groups acknowledged durable.
    pub groups: AtomicU64,
    /// Records acknowledged durable.
    pub records: AtomicU64,
    /// Raw bytes of those records (each plus `\n`).
    pub raw_bytes: AtomicU64,
    /// Compressed bytes written to the frame log for them.
    pub stored_bytes: AtomicU64,
    /// Duration of the last commit in microseconds, from the start of its planning (gathering,
    /// compression) to the end of its fsync.
    pub last_commit_micros: AtomicU64,
    /// Segments sealed.
    pub segments_sealed: AtomicU64,
    /// Raw bytes sealed into segments.
    pub sealed_raw_bytes: AtomicU64,
    /// Segments marked uploaded.
    pub segments_uploaded: AtomicU64,
}

impl WalStats {
    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_when_budget_used_or_disk_nearly_full() {
        let mut usage = DiskUsage {
            database_bytes: 40,
            segment_bytes: 50,
            max_bytes: 100,
            fs_available_bytes: Some(u64::MAX),
        };
        assert_eq!(usage.used(), 90);
        assert!(!usage.is_full());
        usage.segment_bytes = 60;
        assert!(usage.is_full());
        usage.segment_bytes = 0;
        usage.fs_available_bytes = Some(FS_RESERVE_BYTES - 1);
        assert!(usage.is_full());
        usage.fs_available_bytes = None;
        assert!(!usage.is_full());
    }

    #[test]
    fn free_space_of_a_real_directory_is_known() {
        let dir = tempfile::tempdir().unwrap();
        assert!(fs_available_bytes(dir.path()).is_some());
        assert!(fs_available_bytes(&dir.path().join("missing")).is_none());
    }
}
