//! The OpenCTI side of the pipeline: the live-stream client and what it hands to the pipeline.
//!
//! [`client::run`] connects to `{OPENCTI_URL}/stream/{id}`
//! (docs/opencti-protocol.md#live-stream-http), frames the body with
//! [`sse::SseFramer`] (docs/opencti-protocol.md#sse-framing), turns each event into a
//! [`StreamItem`] ([`event`], docs/opencti-protocol.md#sse-wire-format and
//! docs/opencti-protocol.md#pycti-listen-stream, with the exported line built by
//! [`crate::transform`], docs/opencti-protocol.md#attached-files and
//! docs/opencti-protocol.md#exported-line) and sends the items, **in arrival order**, into the
//! pipeline's bounded channel. Reconnection is ours: every connection resumes from the position the
//! pipeline answers to [`StreamItem::Sync`], i.e. from the durable cursor, never from a position
//! this module remembers on its own.
//!
//! Invariants of docs/architecture.md#invariants kept here:
//! - **1 (durable before acknowledged)**: the client never chooses a resume position; before every
//!   (re)connection it sends [`StreamItem::Sync`] and waits until the pipeline has made every
//!   earlier item durable and answered with the [`ResumePosition`]. A dependency event
//!   (docs/opencti-protocol.md#dependency-and-recovery-events) shares its id with the event that
//!   follows it, so it is exported with `holds_cursor: false`: its id must not become the cursor on
//!   its own account.
//! - **2 (no loss)**: every `create`/`update`/`delete`/`merge` the server sends becomes exactly one
//!   [`StreamItem::Export`] or [`StreamItem::DeadLetter`], in arrival order, even while file
//!   downloads for earlier events are still running; an event cut by a disconnect is discarded
//!   (the server resends it after the cursor).
//! - **4 (no replay because of S3)**: backpressure from the pipeline only slows reading (and does
//!   not trip the idle watchdog); the connection is dropped only when the pipeline says it is no
//!   longer accepting (disk budget, invariant 6).
//! - **7 (bad input is contained)**: no byte sequence, status code or stall ends the client: bad
//!   events become dead letters, oversized ones too, errors are retried with backoff forever.
//! - **8 (secrets)**: the token only ever goes into the `authorization` header, marked sensitive.

pub mod client;
pub mod event;
pub mod files;
pub mod in_flight;
mod log_limit;
pub mod missing;
pub mod request;
pub mod settings;
pub mod sse;
pub mod stats;

use bytes::Bytes;

use crate::transform::Action;

pub use client::{StreamError, run};
pub use files::{FileFetcher, redirect_policy};
pub use settings::{FileSettings, StreamSettings};
pub use stats::StreamStats;

/// What the client sends to the pipeline, in the order events arrived on the wire.
#[derive(Debug)]
pub enum StreamItem {
    /// A data event turned into its exported line (one JSON object, no `\n`, UTF-8).
    Export {
        /// The SSE id of the event (`<ms>-<seq>`).
        id: String,
        /// The SSE event name.
        action: Action,
        /// The NDJSON line, without its trailing `\n`.
        line: Bytes,
        /// False for a dependency event (`origin.referer == "init-dependencies"`,
        /// docs/opencti-protocol.md#dependency-and-recovery-events) and for an id that is not a
        /// `<ms>-<seq>` stream id: the cursor must not move to `id` on its account.
        holds_cursor: bool,
    },
    /// `heartbeat` / `consumer_metrics`: the cursor may move to `id` once everything before it
    /// is durable.
    Advance {
        /// The SSE id of the heartbeat.
        id: String,
    },
    /// `no-recover` received: persist `recover_until = Disabled`. The cursor does not move for it.
    RecoveryDisabled {
        /// The SSE id of the `no-recover` event.
        id: String,
    },
    /// An event that cannot be exported (bad JSON, missing `data`, non-UTF-8, oversized, ...): the
    /// pipeline writes it to the dead-letter file; it never moves the cursor by itself.
    DeadLetter {
        /// The SSE id, when the event had one (lossily decoded if it was not UTF-8).
        id: Option<String>,
        /// The SSE event name (lossily decoded if it was not UTF-8).
        event: String,
        /// Why it could not be exported, for a person reading the dead-letter file.
        reason: String,
        /// The raw `data` bytes as received (empty for an oversized event, which was not kept).
        payload: Bytes,
    },
    /// Sent before every (re)connection; the pipeline answers once every earlier item is durable,
    /// with the position to resume from. The client waits for the answer before connecting.
    Sync(tokio::sync::oneshot::Sender<ResumePosition>),
}

/// Where the next connection starts, as decided by the pipeline from its durable state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumePosition {
    /// Sent as `Last-Event-ID` (as pycti does, docs/opencti-protocol.md#pycti-request); `None` or
    /// empty sends no header (live "now").
    pub cursor: Option<String>,
    /// Sent percent-encoded as `?recover=` (docs/opencti-protocol.md#start-position); `None` sends
    /// no recovery bound.
    pub recover_until: Option<String>,
}
