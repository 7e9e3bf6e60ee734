//! The served-event log: what the simulator sent, per connection, so a test can prove what was
//! and was not replayed, and the oracle can check an export against it.

use std::time::SystemTime;

use super::faults::{Fault, InjectedEvent};
use super::model::IdentityKey;
use crate::ids::EventId;

/// A snapshot of every connection the simulator saw on its stream routes, in arrival order.
#[derive(Debug, Clone, Default)]
pub struct ServedLog {
    /// One record per connection attempt (accepted or refused).
    pub connections: Vec<ConnectionRecord>,
}

impl ServedLog {
    /// Connections that got HTTP 200 (a stream), in order.
    pub fn accepted(&self) -> impl Iterator<Item = &ConnectionRecord> {
        self.connections.iter().filter(|c| c.status == 200)
    }

    /// Total data events written over every connection (dependencies and recovery included).
    pub fn data_events(&self) -> u64 {
        self.connections.iter().map(|c| c.data_events).sum()
    }
}

/// The request headers and parameters of interest (docs/opencti-protocol.md#stream-parameters,
/// docs/opencti-protocol.md#pycti-request). Never holds the token.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The request path (without the query).
    pub path: String,
    /// The raw query string.
    pub query: Option<String>,
    /// An `Authorization` header was present.
    pub authorization: bool,
    /// `from` query parameter.
    pub from_query: Option<String>,
    /// `from` header.
    pub from_header: Option<String>,
    /// `Last-Event-ID` header.
    pub last_event_id: Option<String>,
    /// `recover` query parameter or `recover` / `recover-date` header (query wins).
    pub recover: Option<String>,
    /// `listen-delete` (query or header).
    pub listen_delete: Option<String>,
    /// `no-dependencies` / `no-relationships` (query or header).
    pub no_dependencies: Option<String>,
    /// `with-inferences` (query or header).
    pub with_inferences: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
}

/// How a connection's stream began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// Live events strictly after `after`.
    Live {
        /// The position served from (exclusive).
        after: EventId,
    },
    /// First-run recovery: knowledge-base objects with `updated_at` in `[from, recover]`, then
    /// live events strictly after `recover`.
    Recovery {
        /// The start (inclusive lower bound of `updated_at`).
        from: EventId,
        /// The recover bound; live events follow strictly after it.
        recover: EventId,
    },
}

impl StreamMode {
    /// The position live events are served after.
    pub fn live_after(&self) -> EventId {
        match self {
            StreamMode::Live { after } => *after,
            StreamMode::Recovery { recover, .. } => *recover,
        }
    }
}

/// One data event written on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedEvent {
    /// Its identity (id, event name, payload role, `data.id`).
    pub key: IdentityKey,
    /// Bytes of the whole frame.
    pub bytes: u32,
    /// Set when this event was injected by a fault (a huge event or one with hostile file URIs):
    /// not part of the live log, but a valid event an exporter should export.
    pub injected: Option<InjectedEvent>,
}

/// An injected event that is not a valid data event (invalid JSON, non-UTF-8, unknown type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedRecord {
    /// The SSE id it carried.
    pub id: EventId,
    /// Its SSE event name.
    pub event: String,
    /// What was injected.
    pub kind: InjectedEvent,
    /// Data events written on the connection before it.
    pub after_events: u64,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The client went away (its socket closed or stopped reading and was dropped).
    ClientClosed,
    /// A fault ended it.
    Fault(Fault),
    /// Cut in the middle of the frame of this event id.
    CutMidEvent {
        /// Id of the frame that was cut.
        id: EventId,
    },
    /// The simulator shut down.
    Shutdown,
    /// The response was an error status (no stream).
    Refused,
}

/// Everything about one connection attempt on a stream route.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    /// 1-based arrival number among stream connection attempts.
    pub number: u64,
    /// When it arrived.
    pub at: SystemTime,
    /// The stream id (`None` for the raw `/stream`).
    pub stream_id: Option<String>,
    /// The request.
    pub request: RequestInfo,
    /// HTTP status answered.
    pub status: u16,
    /// Reason phrase of an error status.
    pub reason: Option<String>,
    /// How the stream began (accepted connections).
    pub mode: Option<StreamMode>,
    /// `listen-delete` was not `false`.
    pub listen_delete: bool,
    /// For a recovery connection: the recovery objects it was going to send, in order.
    pub recovery_plan: Vec<IdentityKey>,
    /// Every valid data event written, in order (empty when event recording is off).
    pub events: Vec<ServedEvent>,
    /// Invalid injected events written.
    pub injected: Vec<InjectedRecord>,
    /// Data events written (always counted).
    pub data_events: u64,
    /// Bytes of the body written.
    pub bytes: u64,
    /// Heartbeats written.
    pub heartbeats: u64,
    /// `consumer_metrics` events written.
    pub consumer_metrics: u64,
    /// The id of the last heartbeat written.
    pub last_heartbeat_id: Option<EventId>,
    /// How it ended (`None` while open).
    pub end: Option<ConnectionEnd>,
}

impl ConnectionRecord {
    pub(crate) fn new(number: u64, stream_id: Option<String>, request: RequestInfo) -> Self {
        Self {
            number,
            at: SystemTime::now(),
            stream_id,
            request,
            status: 0,
            reason: None,
            mode: None,
            listen_delete: true,
            recovery_plan: Vec::new(),
            events: Vec::new(),
            injected: Vec::new(),
            data_events: 0,
            bytes: 0,
            heartbeats: 0,
            consumer_metrics: 0,
            last_heartbeat_id: None,
            end: None,
        }
    }

    /// The start position the client asked for (`from` query, else `from` / `Last-Event-ID`).
    pub fn requested_start(&self) -> Option<&str> {
        let r = &self.request;
        r.from_query
            .as_deref()
            .or(r.from_header.as_deref())
            .or(r.last_event_id.as_deref())
    }

    /// Keys of the valid data events written, in order.
    pub fn keys(&self) -> impl Iterator<Item = IdentityKey> + '_ {
        self.events.iter().map(|e| e.key)
    }
}
