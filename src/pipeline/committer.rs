//! The WAL writer stage: turns stream items into durable group commits and moves the cursor
//! only with them — docs/architecture.md#invariant-1, "durable before acknowledged", and
//! docs/architecture.md#invariant-2, "no loss".
//!
//! Items arrive in stream order through a bounded channel. The committer packs whatever is
//! queued into one [`wal::Group`] (lines, the cursor the [`CursorTracker`] allows, state
//! changes), hands it to the WAL's group-commit writer and goes on packing the next group while
//! that one syncs; a few groups may be in flight, always completed in order. A `Sync` request
//! (sent by the stream client before every connection) is answered only when everything before
//! it is durable, with the durable position: so a connection never resumes from a position whose
//! events are not on disk, and everything read before a disconnect is kept rather than asked
//! for again.
//!
//! Dead letters are appended and fsynced to their own file before the group that could move the
//! cursor past them is submitted.
//!
//! When the disk budget refuses a group, the group is dropped, reading pauses (see
//! [`super::budget`]) and every item up to the client's next `Sync` is dropped too: the cursor
//! has not moved past them, so the server sends them again when reading resumes.
//!
//! A WAL failure is fatal for the pipeline: the WAL refuses further writes after one (it cannot
//! tell what reached the disk), so the daemon exits with an error and the restart resumes from
//! the durable cursor, losing nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use wal::{Appender, Group, PendingAppend, RecoverUntil, StateChange};

use super::PipelineError;
use super::cursor::{CursorTracker, Observed};
use super::dead_letter::{DeadLetterFile, OffRuntimeDeadLetters, WarnLimiter};
use crate::budget::{Admitted, BudgetedWal};
use crate::histogram::{Histogram, Records, Seconds};
use crate::ids::{EventId, now_ms};
use crate::stream::{ResumePosition, StreamItem};
use crate::transform::{Action, PerAction};

/// Largest group the committer packs (raw bytes of its lines). One event bigger than this is a
/// group of its own.
const MAX_GROUP_BYTES: u64 = 1 << 20;
/// Largest number of lines in one group.
const MAX_GROUP_RECORDS: usize = 4096;
/// At most one warning about dead letters per this period (the others are counted in it).
const DEAD_LETTER_WARN_EVERY: Duration = Duration::from_secs(10);
/// Groups submitted to the WAL and not yet durable. Two keep the writer busy (one syncing, one
/// being packed) while bounding the memory held by lines in flight.
const MAX_IN_FLIGHT: usize = 2;

/// Counters of the committer, read by metrics and status.
#[derive(Debug, Default)]
pub struct CommitterStats {
    /// Exported events made durable, by action.
    pub events: PerAction<AtomicU64>,
    /// Groups made durable.
    pub groups: AtomicU64,
    /// Events written to the dead-letter file.
    pub dead_letters: AtomicU64,
    /// Items dropped while reading was paused by the disk budget (the server sends them again).
    pub dropped_while_full: AtomicU64,
    /// Milliseconds part of the durable cursor (the stock `current_state` gauge).
    pub cursor_ms: AtomicU64,
    /// Time from handing a group to the WAL to its being durable (queueing behind the commit
    /// syncing, then flush and fsync): what an event waits before the cursor may move.
    pub durable_latency: Histogram<Seconds>,
    /// Records per group handed to the WAL.
    pub group_records: Histogram<Records>,
    /// Unix ms when the oldest group not yet durable was handed to the WAL; 0 when none is
    /// waiting (a value far in the past means the WAL is wedged).
    pub waiting_since_unix_ms: AtomicU64,
}

impl CommitterStats {
    /// Durable events of `action`.
    pub fn events_of(&self, action: Action) -> u64 {
        self.events[action].load(Ordering::Relaxed)
    }
}

/// A group being packed.
#[derive(Default)]
struct Packing {
    records: Vec<Bytes>,
    raw_bytes: u64,
    cursor: Option<String>,
    changes: Vec<StateChange>,
    actions: PerAction<u64>,
}

impl Packing {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.cursor.is_none() && self.changes.is_empty()
    }

    fn is_full(&self) -> bool {
        self.raw_bytes >= MAX_GROUP_BYTES || self.records.len() >= MAX_GROUP_RECORDS
    }
}

/// A group handed to the WAL, with what to count once it is durable.
struct InFlight {
    pending: PendingAppend,
    actions: PerAction<u64>,
    cursor: Option<String>,
    submitted: Instant,
    submitted_unix_ms: u64,
    admitted: Admitted,
}

/// The WAL writer stage. Build with [`Committer::new`], run with [`Committer::run`].
pub struct Committer {
    wal: BudgetedWal,
    appender: Appender,
    dead_letters: OffRuntimeDeadLetters,
    dead_letter_warnings: WarnLimiter,
    tracker: CursorTracker,
    stats: Arc<CommitterStats>,
    backlog_threshold: u64,
    compactor_wake: Arc<Notify>,
    packing: Packing,
    in_flight: VecDeque<InFlight>,
    dropping: bool,
}

impl Committer {
    /// A committer writing to `wal`; it wakes the compactor when the unsealed backlog reaches
    /// `backlog_threshold` raw bytes (one full file).
    pub fn new(
        wal: BudgetedWal,
        dead_letters: DeadLetterFile,
        stats: Arc<CommitterStats>,
        backlog_threshold: u64,
        compactor_wake: Arc<Notify>,
    ) -> Self {
        let appender = wal.wal().appender();
        Self {
            wal,
            appender,
            dead_letters: OffRuntimeDeadLetters::new(dead_letters),
            dead_letter_warnings: WarnLimiter::new(DEAD_LETTER_WARN_EVERY),
            tracker: CursorTracker::new(),
            stats,
            backlog_threshold,
            compactor_wake,
            packing: Packing::default(),
            in_flight: VecDeque::new(),
            dropping: false,
        }
    }

    /// Commits items until the channel closes (every sender dropped), then waits for the last
    /// groups to be durable. Returns an error only when the WAL or the dead-letter file failed.
    pub async fn run(mut self, mut items: mpsc::Receiver<StreamItem>) -> Result<(), PipelineError> {
        loop {
            let item = match items.try_recv() {
                Ok(item) => item,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nothing queued: submit what is packed, then wait for the next item while
                    // completing groups as they become durable.
                    self.submit().await?;
                    match self.next_item(&mut items).await? {
                        Some(item) => item,
                        None => break,
                    }
                }
            };
            self.handle(item).await?;
        }
        self.submit().await?;
        self.drain().await
    }

    async fn next_item(
        &mut self,
        items: &mut mpsc::Receiver<StreamItem>,
    ) -> Result<Option<StreamItem>, PipelineError> {
        loop {
            let Some(front) = self.in_flight.front_mut() else {
                return Ok(items.recv().await);
            };
            let durable = tokio::select! {
                biased;
                item = items.recv() => return Ok(item),
                result = &mut front.pending => result,
            };
            let done = self.in_flight.pop_front();
            self.completed(durable, done)?;
        }
    }

    async fn handle(&mut self, item: StreamItem) -> Result<(), PipelineError> {
        match item {
            StreamItem::Sync(reply) => {
                self.submit().await?;
                self.drain().await?;
                self.tracker.reset();
                self.dropping = false;
                let state = self.wal.wal().state();
                let position = ResumePosition {
                    cursor: state.cursor,
                    recover_until: match state.recover_until {
                        RecoverUntil::Date(date) => Some(date),
                        RecoverUntil::Unset | RecoverUntil::Disabled => None,
                    },
                };
                // The client may have stopped waiting (shutdown): nothing to do then.
                let _ = reply.send(position);
            }
            _ if self.dropping => {
                self.stats
                    .dropped_while_full
                    .fetch_add(1, Ordering::Relaxed);
            }
            StreamItem::Export {
                id,
                action,
                line,
                holds_cursor,
            } => {
                if let Some(cursor) = self.tracker.observe(Observed::Event {
                    id: &id,
                    holds_cursor,
                }) {
                    self.packing.cursor = Some(cursor);
                }
                self.packing.raw_bytes += line.len() as u64 + 1;
                self.packing.records.push(line);
                self.packing.actions[action] += 1;
                if self.packing.is_full() {
                    self.submit().await?;
                }
            }
            StreamItem::Advance { id } => {
                if let Some(cursor) = self.tracker.observe(Observed::Position { id: &id }) {
                    self.packing.cursor = Some(cursor);
                }
            }
            StreamItem::RecoveryDisabled { id } => {
                tracing::warn!(
                    event_id = %id,
                    "OpenCTI skipped recovery for this stream (no-recover): recover_until is now disabled"
                );
                self.packing
                    .changes
                    .push(StateChange::RecoverUntil(RecoverUntil::Disabled));
            }
            StreamItem::DeadLetter {
                id,
                event,
                reason,
                payload,
            } => {
                self.tracker.observe(Observed::Other);
                self.dead_letters
                    .append(id.as_deref(), &event, &reason, payload, now_ms())
                    .await
                    .map_err(|source| PipelineError::DeadLetter {
                        path: self.dead_letters.path().to_path_buf(),
                        source,
                    })?;
                self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                if let Some(held_back) = self.dead_letter_warnings.allow(Instant::now()) {
                    tracing::warn!(
                        event_id = id.as_deref().unwrap_or("-"),
                        event = %event,
                        reason = %reason,
                        file = %self.dead_letters.path().display(),
                        more_since_last_warning = held_back,
                        "event cannot be exported: kept in the dead-letter file"
                    );
                } else {
                    tracing::debug!(
                        event_id = id.as_deref().unwrap_or("-"),
                        reason = %reason,
                        "event kept in the dead-letter file"
                    );
                }
            }
        }
        Ok(())
    }

    /// Hands the packed group to the WAL (after the budget admits it).
    async fn submit(&mut self) -> Result<(), PipelineError> {
        if self.packing.is_empty() {
            return Ok(());
        }
        let packing = std::mem::take(&mut self.packing);
        let Some(admitted) = self.wal.admit(packing.raw_bytes) else {
            let dropped = packing.records.len() as u64;
            self.stats
                .dropped_while_full
                .fetch_add(dropped, Ordering::Relaxed);
            self.dropping = true;
            return Ok(());
        };
        let cursor = packing.cursor.clone();
        self.stats
            .group_records
            .observe(packing.records.len() as f64);
        let submitted_unix_ms = now_ms();
        if self.in_flight.is_empty() {
            self.stats
                .waiting_since_unix_ms
                .store(submitted_unix_ms, Ordering::Relaxed);
        }
        let pending = self.appender.submit(Group {
            records: packing.records,
            cursor: packing.cursor,
            changes: packing.changes,
        });
        self.in_flight.push_back(InFlight {
            pending,
            actions: packing.actions,
            cursor,
            submitted: Instant::now(),
            submitted_unix_ms,
            admitted,
        });
        while self.in_flight.len() > MAX_IN_FLIGHT {
            self.complete_oldest().await?;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), PipelineError> {
        while !self.in_flight.is_empty() {
            self.complete_oldest().await?;
        }
        Ok(())
    }

    async fn complete_oldest(&mut self) -> Result<(), PipelineError> {
        if let Some(mut oldest) = self.in_flight.pop_front() {
            let result = (&mut oldest.pending).await;
            self.completed(result, Some(oldest))?;
        }
        Ok(())
    }

    fn completed(
        &mut self,
        result: Result<wal::Committed, wal::WalError>,
        done: Option<InFlight>,
    ) -> Result<(), PipelineError> {
        result.map_err(PipelineError::Wal)?;
        let oldest_waiting = self.in_flight.front().map_or(0, |g| g.submitted_unix_ms);
        self.stats
            .waiting_since_unix_ms
            .store(oldest_waiting, Ordering::Relaxed);
        let Some(done) = done else {
            return Ok(());
        };
        self.stats
            .durable_latency
            .observe(done.submitted.elapsed().as_secs_f64());
        // The last commits in flight may have been all that held reading back.
        self.wal.durable(done.admitted);
        for action in Action::ALL {
            self.stats.events[action].fetch_add(done.actions[action], Ordering::Relaxed);
        }
        self.stats.groups.fetch_add(1, Ordering::Relaxed);
        if let Some(ms) = done
            .cursor
            .as_deref()
            .and_then(EventId::parse)
            .map(|id| id.ms)
        {
            self.stats.cursor_ms.store(ms, Ordering::Relaxed);
        }
        if self.wal.wal().backlog().raw_bytes >= self.backlog_threshold {
            self.compactor_wake.notify_one();
        }
        Ok(())
    }
}
