//! The writer: every change to the database goes through it, in order, in group commits.
//!
//! Two threads form a pipeline of depth one:
//!
//! - the **planner** (`wal-writer`) takes every request queued (up to `max_commit_bytes` of
//!   records), validates them and builds the commit: one compressed frame for all their records
//!   (an entry of the frame log), and a database batch for segment registrations and removals
//!   and the state after them;
//! - the **syncer** (`wal-sync`) appends the entry and fdatasyncs its file, then applies the
//!   batch, flushes and fsyncs the database, and only then publishes the new state and completes
//!   the requests, in queue order. A commit that only appends records has an empty batch: it
//!   costs one write and one fdatasync.
//!
//! While the syncer syncs commit N, the planner compresses commit N+1 from what queued
//! meanwhile, so compression (the main CPU cost) overlaps the flush and fsync wait, and one fsync
//! serves every appender that arrived during the previous one. The planner plans on the state
//! the previous plans lead to; if one of them fails, everything after it fails too (below).
//!
//! Being the only writer serialises every actor that changes the state value (appends, seals,
//! uploads, initialization) without locks around the database.
//!
//! If writing, applying, flushing or syncing fails, every request of that commit gets the error,
//! nothing of it is published, and the WAL is poisoned: later requests fail until it is reopened
//! (after a failed fsync the kernel's page cache can no longer be trusted to reflect the disk).
//! After a reopen each group of the commit is there whole or not at all: its records, cursor and
//! state changes are all in its frame. (A commit that also seals or marks an upload may come back
//! with its frame and without its database part, which was never acknowledged: the seal is then
//! done again, the upload repeated.)

mod planner;
mod syncer;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::appender::{Committed, Group};
use crate::error::{SegmentProblem, WalError};
use crate::seal::SealPlan;
use crate::segment::SegmentMeta;
use crate::state::{InitialState, StoredState};
use crate::store::WriteBatch;
use crate::usage::{Backlog, WalStats};

pub(crate) use planner::Planner;
pub(crate) use syncer::Syncer;

/// Smallest timestamp with 13 digits.
pub(crate) const MIN_TS_MS: u64 = 1_000_000_000_000;
/// Largest timestamp with 13 digits.
pub(crate) const MAX_TS_MS: u64 = 9_999_999_999_999;

/// A request to the writer.
pub(crate) enum Request {
    /// Append a group.
    Append {
        group: Group,
        reply: oneshot::Sender<Result<Committed, WalError>>,
    },
    /// Register a sealed segment: its records leave the backlog (their frames are removed later).
    Register {
        plan: SealPlan,
        reply: mpsc::Sender<Result<(), WalError>>,
    },
    /// Forget the oldest segment, which was uploaded.
    Uploaded {
        number: u64,
        uploaded_at_ms: u64,
        reply: mpsc::Sender<Result<SegmentMeta, WalError>>,
    },
    /// Seed a new WAL.
    Initialize {
        init: InitialState,
        reply: mpsc::Sender<Result<(), WalError>>,
    },
}

impl Request {
    pub(super) fn raw_bytes(&self) -> u64 {
        match self {
            Request::Append { group, .. } => group.raw_bytes(),
            _ => 0,
        }
    }

    /// The answer refusing this request with `error`.
    pub(super) fn into_reply(self, error: WalError) -> Reply {
        match self {
            Request::Append { reply, .. } => Reply::Append(reply, Err(error)),
            Request::Register { reply, .. } | Request::Initialize { reply, .. } => {
                Reply::Done(reply, Err(error))
            }
            Request::Uploaded { reply, .. } => Reply::Uploaded(reply, Err(error)),
        }
    }
}

/// The answer owed to one request of a commit.
pub(super) enum Reply {
    Append(
        oneshot::Sender<Result<Committed, WalError>>,
        Result<Committed, WalError>,
    ),
    Done(mpsc::Sender<Result<(), WalError>>, Result<(), WalError>),
    Uploaded(
        mpsc::Sender<Result<SegmentMeta, WalError>>,
        Result<SegmentMeta, WalError>,
    ),
}

impl Reply {
    /// Replaces a success by `error()` (a request refused on its own keeps its error).
    pub(super) fn replace_success(self, error: impl Fn() -> WalError) -> Reply {
        match self {
            Reply::Append(tx, Ok(_)) => Reply::Append(tx, Err(error())),
            Reply::Done(tx, Ok(())) => Reply::Done(tx, Err(error())),
            Reply::Uploaded(tx, Ok(_)) => Reply::Uploaded(tx, Err(error())),
            other => other,
        }
    }

    /// Answers that the writer is gone.
    pub(super) fn fail_closed(self) {
        self.replace_success(|| WalError::Closed)
            .send(&WalStats::default());
    }

    pub(super) fn send(self, stats: &WalStats) {
        // A requester that went away does not need its answer.
        match self {
            Reply::Append(tx, result) => {
                if let Ok(committed) = &result {
                    WalStats::add(&stats.groups, 1);
                    WalStats::add(&stats.records, committed.records);
                }
                drop(tx.send(result));
            }
            Reply::Done(tx, result) => drop(tx.send(result)),
            Reply::Uploaded(tx, result) => drop(tx.send(result)),
        }
    }
}

/// What readers see of the writer's work; updated only by the writer, after each durable commit.
pub(crate) struct Shared {
    pub state: StoredState,
    pub segments: BTreeMap<u64, SegmentMeta>,
    pub segment_bytes: u64,
    pub damaged: BTreeMap<u64, SegmentProblem>,
    pub backlog: Backlog,
    pub sled_bytes: u64,
    /// Bytes of the frame log's files.
    pub log_bytes: u64,
    pub poisoned: Option<Arc<WalError>>,
}

/// Locks the shared view (a panic elsewhere cannot leave it half-updated: it is only assigned
/// whole values).
pub(crate) fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Test-only fault injection.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    /// Fail the next commit after its frame was written, before it is synced.
    pub fail_next_sync: std::sync::atomic::AtomicBool,
    /// Taken by the writer after it received the first request of a commit and before it gathers
    /// the others: a test holding it makes everything it queues meanwhile one commit.
    pub hold: Mutex<()>,
}

/// A planned commit on its way to the syncer, with the answers owed once it is durable.
pub(crate) struct Planned {
    plan: Result<CommitPlan, WalError>,
    replies: Vec<Reply>,
    started: Instant,
}

/// Starts the planner and syncer threads; they stop once every sender of `requests` is gone
/// and what was queued is committed.
pub(crate) fn spawn(
    planner: Planner,
    syncer: Syncer,
    requests: mpsc::Receiver<Request>,
) -> std::io::Result<(JoinHandle<()>, JoinHandle<()>)> {
    // Depth one: one commit syncing, one planned and waiting, one being planned.
    let (planned_tx, planned_rx) = mpsc::sync_channel(1);
    let syncer = std::thread::Builder::new()
        .name("wal-sync".into())
        .spawn(move || syncer.run(planned_rx))?;
    let planner = std::thread::Builder::new()
        .name("wal-writer".into())
        .spawn(move || planner.run(requests, planned_tx))?;
    Ok((planner, syncer))
}

/// Everything one commit changes, built before anything is written.
struct CommitPlan {
    /// The frame log entry of its records, and where it goes.
    entry: Option<(crate::log::LogPos, Vec<u8>)>,
    /// The database writes, applied atomically once the entry is durable.
    batch: WriteBatch,
    /// Log files holding only sealed frames, deleted once the commit is durable.
    sealed_log_files: Vec<u64>,
    /// The state once the commit is durable.
    state: StoredState,
    /// The backlog once the commit is durable.
    backlog: Backlog,
    /// Segments it registers.
    added: Vec<SegmentMeta>,
    /// Segments it forgets (uploaded).
    removed: Vec<u64>,
    /// Compressed bytes of its frame.
    stored_bytes: u64,
    /// Raw bytes of its frame.
    raw_bytes: u64,
    /// Whether it changes sizes enough to measure the database again.
    sizes_changed: bool,
}
