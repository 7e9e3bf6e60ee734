//! Errors of the write-ahead log.
//!
//! Every variant says what was being done, to what, and why it failed, so that the message alone
//! lets an operator act. The storage engine's own error type never crosses the crate boundary: it
//! is carried as a boxed source, so sled can be replaced without touching callers.

use std::path::PathBuf;
use std::sync::Arc;

/// Why a sealed segment cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentProblem {
    /// The segment's file does not exist.
    Missing,
    /// The file exists but its length differs from the length recorded when it was sealed.
    WrongSize {
        /// Length recorded at seal time.
        expected: u64,
        /// Length found on disk.
        found: u64,
    },
    /// The file's checksum differs from the one recorded when it was sealed.
    BadChecksum,
    /// The file could not be inspected (permission, I/O error); the text says why.
    Unreadable(String),
}

impl std::fmt::Display for SegmentProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentProblem::Missing => write!(f, "its file is missing"),
            SegmentProblem::WrongSize { expected, found } => {
                write!(f, "its file holds {found} bytes but {expected} were sealed")
            }
            SegmentProblem::BadChecksum => {
                write!(
                    f,
                    "its file does not match the checksum recorded when it was sealed"
                )
            }
            SegmentProblem::Unreadable(why) => write!(f, "its file cannot be read: {why}"),
        }
    }
}

/// Everything that can go wrong in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Another live process (or another `Wal` in this process) holds the directory.
    #[error("WAL directory {dir} is held by another live process (lock on {lock} is taken)")]
    Locked {
        /// The WAL directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },

    /// The directory is not empty and carries no WAL format marker: refusing to write into it.
    #[error(
        "directory {dir} is not a WAL: it is not empty and has no {marker} file \
         (found {found}); point the WAL at an empty or WAL directory"
    )]
    NotAWal {
        /// The directory that was refused.
        dir: PathBuf,
        /// Name of the missing marker file.
        marker: &'static str,
        /// A few of the entries found, for the message.
        found: String,
    },

    /// The format marker names a format this build does not read.
    #[error("WAL format marker {path} says {found:?}, this build reads {expected:?}")]
    UnsupportedFormat {
        /// The marker file.
        path: PathBuf,
        /// Its content.
        found: String,
        /// The content this build writes.
        expected: &'static str,
    },

    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "fsyncing segment file".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The embedded key-value store failed.
    #[error("{action} in the WAL database under {path}: {source}")]
    Store {
        /// What was being done, e.g. "applying a commit batch".
        action: &'static str,
        /// The database directory.
        path: PathBuf,
        /// The store's error (its type is not part of this crate's API).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// Data in the WAL does not decode or contradicts itself: a bug or a damaged disk.
    #[error("WAL data is corrupt: {what}")]
    Corrupt {
        /// What is wrong and where.
        what: String,
    },

    /// A record handed to `append` is not a line.
    #[error("record {index} of the append is not a line: {reason}")]
    InvalidRecord {
        /// Position of the record in the append.
        index: usize,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A caller-supplied value is out of range.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// The argument.
        what: &'static str,
        /// Why it was refused.
        reason: String,
    },

    /// `initialize` was called on a WAL that already holds history.
    #[error("the WAL in {dir} already holds history; it can only be initialized while new")]
    NotEmpty {
        /// The WAL directory.
        dir: PathBuf,
    },

    /// `mark_uploaded` named a segment that is not the oldest one.
    #[error(
        "segment {requested} cannot be marked uploaded: the oldest sealed segment is {oldest:?}"
    )]
    NotOldest {
        /// The segment named by the caller.
        requested: u64,
        /// The oldest sealed segment, if any.
        oldest: Option<u64>,
    },

    /// No sealed segment has this number.
    #[error("there is no sealed segment {number}")]
    UnknownSegment {
        /// The number asked for.
        number: u64,
    },

    /// The segment is registered but its file is missing or damaged.
    #[error("segment {number} ({path}) is damaged: {problem}")]
    SegmentDamaged {
        /// The segment number.
        number: u64,
        /// Its file.
        path: PathBuf,
        /// What is wrong with it.
        problem: SegmentProblem,
    },

    /// The commit this request belonged to failed; nothing of it was acknowledged.
    #[error("the commit failed: {cause}")]
    CommitFailed {
        /// The failure, shared by every request of the commit.
        cause: Arc<WalError>,
    },

    /// An earlier commit failed: the WAL refuses further writes until it is reopened, because the
    /// state of the files after a failed flush or fsync is unknown.
    #[error("the WAL refuses writes since an earlier commit failed ({cause}); reopen it")]
    Poisoned {
        /// The first failure.
        cause: Arc<WalError>,
    },

    /// The writer thread is gone (the WAL is shutting down or the thread panicked).
    #[error("the WAL writer thread has stopped")]
    Closed,
}

/// OS error numbers that mean the storage itself failed (as opposed to being full or a process
/// limit being reached): retrying on the same open WAL cannot succeed.
const DISK_FAILURE_ERRNOS: [i32; 5] = [
    nix::libc::EIO,
    nix::libc::EROFS,
    nix::libc::EUCLEAN,
    nix::libc::ENXIO,
    nix::libc::ENODEV,
];

impl WalError {
    /// Whether this WAL cannot take writes any more, so retrying the operation is useless and the
    /// process should restart (reopening the WAL recovers to the last durable commit): a commit
    /// failed (the WAL is poisoned), the writer thread is gone, or the disk answered an I/O error
    /// that means it failed (EIO, EROFS, EUCLEAN, ENXIO, ENODEV). A full disk (ENOSPC, EDQUOT),
    /// a process limit (EMFILE, ENOMEM) or a damaged segment file are not: they can go away, and
    /// the daemon rides them out.
    pub fn refuses_writes(&self) -> bool {
        match self {
            WalError::CommitFailed { .. } | WalError::Poisoned { .. } | WalError::Closed => true,
            WalError::Io { source, .. } => is_disk_failure(source),
            WalError::Store { source, .. } => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
                while let Some(error) = cause {
                    if let Some(io) = error.downcast_ref::<std::io::Error>() {
                        // The store may have copied the error without its number: then
                        // anything but a full disk or a process limit counts as failed.
                        return match io.raw_os_error() {
                            Some(_) => is_disk_failure(io),
                            None => !is_transient_kind(io.kind()),
                        };
                    }
                    cause = error.source();
                }
                false
            }
            _ => false,
        }
    }

    /// Builds an [`WalError::Io`] with the action and path it concerns.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        WalError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Builds a [`WalError::Corrupt`].
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        WalError::Corrupt { what: what.into() }
    }
}

fn is_transient_kind(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        StorageFull | OutOfMemory | Interrupted | WouldBlock | TimedOut
    )
}

fn is_disk_failure(error: &std::io::Error) -> bool {
    error
        .raw_os_error()
        .is_some_and(|code| DISK_FAILURE_ERRNOS.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(code: i32) -> WalError {
        WalError::io("writing", "/wal", std::io::Error::from_raw_os_error(code))
    }

    #[test]
    fn a_failed_disk_refuses_writes_and_a_full_one_does_not() {
        assert!(io(nix::libc::EIO).refuses_writes());
        assert!(io(nix::libc::EROFS).refuses_writes());
        assert!(!io(nix::libc::ENOSPC).refuses_writes());
        assert!(!io(nix::libc::EMFILE).refuses_writes());
        let cause = Arc::new(io(nix::libc::ENOSPC));
        assert!(WalError::Poisoned { cause }.refuses_writes());
        assert!(WalError::Closed.refuses_writes());
        let store = WalError::Store {
            action: "reading a frame",
            path: "/wal/db".into(),
            source: Box::new(std::io::Error::from_raw_os_error(nix::libc::EIO)),
        };
        assert!(store.refuses_writes());
        let store_full = WalError::Store {
            action: "flushing",
            path: "/wal/db".into(),
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "copied",
            )),
        };
        assert!(!store_full.refuses_writes());
        assert!(
            !WalError::SegmentDamaged {
                number: 1,
                path: "/wal/segments/1".into(),
                problem: SegmentProblem::Missing,
            }
            .refuses_writes()
        );
    }
}
