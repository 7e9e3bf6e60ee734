//! The append handle: how records and state changes reach the writer thread.
//!
//! Invariant kept here with the writer (docs/architecture.md#invariant-1, "durable before
//! acknowledged"): a
//! [`PendingAppend`] resolves `Ok` only after the commit holding its group was flushed by sled
//! and its files fsynced. Requests are queued in call order and complete in that order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::WalError;
use crate::state::{RecoverUntil, StateChange};
use crate::wal::Inner;
use crate::writer::Request;

/// One atomic group: records, the cursor that goes with them, and state changes. After a crash
/// the whole group is there or none of it.
#[derive(Debug, Clone, Default)]
pub struct Group {
    /// The records, each one line: not empty and without `\n`.
    pub records: Vec<Bytes>,
    /// The new cursor, or `None` to leave it as it is.
    pub cursor: Option<String>,
    /// State changes committed with the records.
    pub changes: Vec<StateChange>,
}

impl Group {
    /// Raw bytes the group's records take in a segment (each record plus `\n`).
    pub(crate) fn raw_bytes(&self) -> u64 {
        self.records.iter().map(|r| r.len() as u64 + 1).sum()
    }

    fn validate(&self) -> Result<(), WalError> {
        for (index, record) in self.records.iter().enumerate() {
            if record.is_empty() {
                return Err(WalError::InvalidRecord {
                    index,
                    reason: "it is empty",
                });
            }
            if record.contains(&b'\n') {
                return Err(WalError::InvalidRecord {
                    index,
                    reason: "it contains a newline",
                });
            }
        }
        Ok(())
    }
}

/// What a durable group was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Sequence number of the group's first record (the next sequence number when it had none).
    pub first_seq: u64,
    /// Number of records in the group.
    pub records: u64,
}

/// Handle to the group-commit writer. Cheap to clone; keeps the WAL open while it lives.
///
/// The queue to the writer is not bounded: every request holds its records until it is durable,
/// so the caller bounds memory by bounding how many appends it keeps in flight.
#[derive(Clone)]
pub struct Appender {
    sender: mpsc::Sender<Request>,
    _wal: Arc<Inner>,
}

impl Appender {
    pub(crate) fn new(sender: mpsc::Sender<Request>, wal: Arc<Inner>) -> Self {
        Appender { sender, _wal: wal }
    }

    /// Queues `records` and the new `cursor` (`None`: unchanged) as one atomic group. The group
    /// is queued now (its place is the call order) and the returned future resolves once it is
    /// durable. One flush and fsync serves every group queued while the previous commit synced.
    /// A record that is empty or holds `\n` fails the whole group at once, before queueing.
    pub fn append(&self, records: Vec<Bytes>, cursor: Option<String>) -> PendingAppend {
        self.submit(Group {
            records,
            cursor,
            changes: Vec::new(),
        })
    }

    /// Queues a recovery bound change, in order with appends.
    pub fn set_recover_until(&self, value: RecoverUntil) -> PendingAppend {
        self.update(vec![StateChange::RecoverUntil(value)])
    }

    /// Queues state changes without records or cursor, in order with appends.
    pub fn update(&self, changes: Vec<StateChange>) -> PendingAppend {
        self.submit(Group {
            records: Vec::new(),
            cursor: None,
            changes,
        })
    }

    /// Queues a group (records, cursor and state changes together).
    pub fn submit(&self, group: Group) -> PendingAppend {
        if let Err(e) = group.validate() {
            return PendingAppend::ready(Err(e));
        }
        let (reply, receiver) = oneshot::channel();
        match self.sender.send(Request::Append { group, reply }) {
            Ok(()) => PendingAppend {
                state: PendingState::Waiting(receiver),
            },
            Err(_) => PendingAppend::ready(Err(WalError::Closed)),
        }
    }
}

/// A queued group; resolves to [`Committed`] when it is durable, or to the error that prevented
/// it (then nothing of the group was acknowledged). Dropping it does not cancel the append.
#[must_use = "an append is only known durable when its PendingAppend resolves"]
pub struct PendingAppend {
    state: PendingState,
}

enum PendingState {
    Ready(Option<Result<Committed, WalError>>),
    Waiting(oneshot::Receiver<Result<Committed, WalError>>),
}

impl PendingAppend {
    fn ready(result: Result<Committed, WalError>) -> Self {
        PendingAppend {
            state: PendingState::Ready(Some(result)),
        }
    }

    /// Blocks the thread until the group is durable. For threads outside an async runtime (it
    /// panics if called from inside one: await the future there).
    pub fn wait(self) -> Result<Committed, WalError> {
        match self.state {
            PendingState::Ready(result) => result.unwrap_or(Err(WalError::Closed)),
            PendingState::Waiting(receiver) => {
                receiver.blocking_recv().unwrap_or(Err(WalError::Closed))
            }
        }
    }
}

impl Future for PendingAppend {
    type Output = Result<Committed, WalError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            PendingState::Ready(result) => {
                Poll::Ready(result.take().unwrap_or(Err(WalError::Closed)))
            }
            PendingState::Waiting(receiver) => Pin::new(receiver)
                .poll(cx)
                .map(|received| received.unwrap_or(Err(WalError::Closed))),
        }
    }
}
