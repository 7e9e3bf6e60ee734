//! What each SSE event means for the exporter (docs/opencti-protocol.md#sse-framing,
//! docs/opencti-protocol.md#pycti-event-dispatch), in one place.
//!
//! | event | with id | effect |
//! |---|---|---|
//! | `create` `update` `delete` `merge` | required | [`StreamItem::Export`] via the transform, or [`StreamItem::DeadLetter`] |
//! | `heartbeat`, `consumer_metrics` | required | [`StreamItem::Advance`]; `consumer_metrics` also feeds [`StreamStats`] |
//! | `no-recover` | required | [`StreamItem::RecoveryDisabled`] |
//! | `connected` | none | recorded; warns when the resume cursor is older than `firstEventId` |
//! | `error` | none | logged |
//! | anything else | — | counted in `skipped_events` and skipped |
//!
//! A data event without an id, with a non-UTF-8 id or payload, bad JSON, or over the size bound is
//! a dead letter: it is never silently dropped, and never moves the cursor. A control event that
//! lacks the id it needs is skipped, as pycti does. An exported event whose id is not a
//! `<ms>-<seq>` stream id is exported with `holds_cursor: false` (resuming from such an id would
//! make the server start "now", docs/opencti-protocol.md#stream-parameters, and lose events).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;

use super::log_limit::LogLimiter;
use super::sse::{OversizedEvent, SseEvent, SseFrame};
use super::stats::{ConnectedInfo, ConsumerMetrics, StreamStats};
use super::{ResumePosition, StreamItem};
use crate::ids::EventId;
use crate::transform::{self, Action, PendingFiles, TransformOptions, Transformed};

/// What to do with one frame.
#[derive(Debug)]
pub enum Handled {
    /// Send this item to the pipeline.
    Item(StreamItem),
    /// Download these files, then send `complete(...)` as an export (see [`finish_files`]).
    NeedsFiles {
        /// The SSE id.
        id: String,
        /// The event kind.
        action: Action,
        /// Whether the id may become the cursor.
        holds_cursor: bool,
        /// The event waiting for its files.
        pending: PendingFiles,
    },
    /// Nothing for the pipeline (`connected`, `error`, skipped events).
    Nothing,
}

/// Turns frames into [`Handled`] values and keeps the per-connection context.
#[derive(Debug)]
pub struct EventHandler {
    stats: Arc<StreamStats>,
    options: TransformOptions,
    position: ResumePosition,
    skipped_log: LogLimiter,
    dead_letter_log: LogLimiter,
    error_log: LogLimiter,
}

impl EventHandler {
    /// A handler counting into `stats` and transforming with `options`.
    pub fn new(stats: Arc<StreamStats>, options: TransformOptions) -> Self {
        let interval = Duration::from_secs(10);
        Self {
            stats,
            options,
            position: ResumePosition::default(),
            skipped_log: LogLimiter::new(interval),
            dead_letter_log: LogLimiter::new(interval),
            error_log: LogLimiter::new(interval),
        }
    }

    /// Records where the current connection resumed from (for the `connected` check).
    pub fn start_connection(&mut self, position: &ResumePosition) {
        self.position = position.clone();
    }

    /// What `frame` means. Never panics.
    pub fn handle(&mut self, frame: SseFrame) -> Handled {
        match frame {
            SseFrame::Event(event) => self.handle_event(event),
            SseFrame::Oversized(event) => self.handle_oversized(event),
        }
    }

    fn handle_event(&mut self, event: SseEvent) -> Handled {
        let id = match event.id.as_deref().map(std::str::from_utf8) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                let name = event.name().to_vec();
                return match Action::from_event_name(&name) {
                    Some(_) => {
                        self.dead_letter(&event, "the event id is not valid UTF-8".to_owned())
                    }
                    None => self.skip(&name, "its id is not valid UTF-8"),
                };
            }
        };
        if id.is_some() {
            self.stats.last_event_unix_ms.store(unix_ms(), Relaxed);
        }
        let name = event.name();
        if let Some(action) = Action::from_event_name(name) {
            let Some(id) = id else {
                return self.dead_letter(&event, "data event without an id".to_owned());
            };
            return self.handle_data(id, action, &event);
        }
        match (name, id) {
            (b"heartbeat", Some(id)) => {
                self.stats.heartbeats.fetch_add(1, Relaxed);
                self.advance(id)
            }
            (b"consumer_metrics", Some(id)) => {
                self.stats.consumer_metrics_events.fetch_add(1, Relaxed);
                match serde_json::from_slice::<ConsumerMetrics>(&event.data) {
                    Ok(metrics) => self.stats.set_consumer_metrics(metrics),
                    Err(error) => tracing::debug!(%error, "unreadable consumer_metrics payload"),
                }
                self.advance(id)
            }
            (b"no-recover", Some(id)) => {
                self.stats.no_recover_events.fetch_add(1, Relaxed);
                let message = message_of(&event.data);
                tracing::warn!(
                    event_id = id,
                    message = message.as_deref().unwrap_or(""),
                    "OpenCTI skipped the recovery of this stream (no-recover); recovery is disabled from now on"
                );
                Handled::Item(StreamItem::RecoveryDisabled { id: id.to_owned() })
            }
            (b"connected", _) => {
                self.stats.connected_events.fetch_add(1, Relaxed);
                self.handle_connected(&event.data);
                Handled::Nothing
            }
            (b"error", _) => {
                self.stats.error_events.fetch_add(1, Relaxed);
                if let Some(suppressed) = self.error_log.allow() {
                    let message = message_of(&event.data);
                    tracing::error!(
                        message = message.as_deref().unwrap_or("(no message)"),
                        suppressed,
                        "OpenCTI reported an error on the stream"
                    );
                }
                Handled::Nothing
            }
            (b"heartbeat" | b"consumer_metrics" | b"no-recover", None) => {
                let name = name.to_vec();
                self.skip(&name, "it has no id")
            }
            _ => {
                let name = name.to_vec();
                self.skip(&name, "unknown event type")
            }
        }
    }

    fn handle_data(&mut self, id: &str, action: Action, event: &SseEvent) -> Handled {
        let well_formed_id = is_stream_id(id);
        if !well_formed_id {
            self.stats.malformed_ids.fetch_add(1, Relaxed);
            tracing::warn!(
                event_id = id,
                "data event id is not a <ms>-<seq> stream id; exported, but never used as the cursor"
            );
        }
        match transform::transform(id, action, &event.data, self.options) {
            Ok(Transformed::Ready(line)) => {
                self.stats.count_export(action);
                Handled::Item(StreamItem::Export {
                    id: id.to_owned(),
                    action,
                    line: line.line,
                    holds_cursor: line.holds_cursor && well_formed_id,
                })
            }
            Ok(Transformed::NeedsFiles(pending)) => Handled::NeedsFiles {
                id: id.to_owned(),
                action,
                holds_cursor: well_formed_id && pending.holds_cursor(),
                pending,
            },
            Err(error) => self.dead_letter(event, error.to_string()),
        }
    }

    fn handle_oversized(&mut self, event: OversizedEvent) -> Handled {
        self.stats.oversized_events.fetch_add(1, Relaxed);
        let name = event.event.as_deref().unwrap_or(b"message").to_vec();
        if event.id.is_some() {
            self.stats.last_event_unix_ms.store(unix_ms(), Relaxed);
        }
        let reason = format!(
            "event of {} bytes or more is over the size limit",
            event.bytes
        );
        if Action::from_event_name(&name).is_none() {
            return self.skip(&name, "it is over the size limit");
        }
        let item = StreamItem::DeadLetter {
            id: event
                .id
                .as_deref()
                .map(|id| String::from_utf8_lossy(id).into_owned()),
            event: String::from_utf8_lossy(&name).into_owned(),
            reason,
            payload: Bytes::new(),
        };
        self.count_dead_letter(&item);
        Handled::Item(item)
    }

    fn dead_letter(&mut self, event: &SseEvent, reason: String) -> Handled {
        let item = StreamItem::DeadLetter {
            id: event
                .id
                .as_deref()
                .map(|id| String::from_utf8_lossy(id).into_owned()),
            event: String::from_utf8_lossy(event.name()).into_owned(),
            reason,
            payload: event.data.clone(),
        };
        self.count_dead_letter(&item);
        Handled::Item(item)
    }

    fn count_dead_letter(&self, item: &StreamItem) {
        self.stats.dead_lettered.fetch_add(1, Relaxed);
        if let StreamItem::DeadLetter {
            id, event, reason, ..
        } = item
            && let Some(suppressed) = self.dead_letter_log.allow()
        {
            tracing::warn!(
                event_id = id.as_deref().unwrap_or("(none)"),
                event = event.as_str(),
                reason = reason.as_str(),
                suppressed,
                "event cannot be exported; written to the dead-letter file"
            );
        }
    }

    fn advance(&self, id: &str) -> Handled {
        if is_stream_id(id) {
            Handled::Item(StreamItem::Advance { id: id.to_owned() })
        } else {
            self.skip(b"heartbeat", "its id is not a <ms>-<seq> stream id")
        }
    }

    fn skip(&self, name: &[u8], why: &str) -> Handled {
        self.stats.skipped_events.fetch_add(1, Relaxed);
        if let Some(suppressed) = self.skipped_log.allow() {
            tracing::info!(event = %String::from_utf8_lossy(name), why, suppressed, "skipped a stream event");
        }
        Handled::Nothing
    }

    fn handle_connected(&self, data: &[u8]) {
        let info = match serde_json::from_slice::<ConnectedInfo>(data) {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(%error, "unreadable `connected` event");
                return;
            }
        };
        tracing::info!(
            first_event_id = info.first_event_id.as_deref().unwrap_or(""),
            last_event_id = info.last_event_id.as_deref().unwrap_or(""),
            stream_size = info.stream_size.unwrap_or(0),
            connection_id = info.connection_id.as_deref().unwrap_or(""),
            resume_from = self.position.cursor.as_deref().unwrap_or("(live)"),
            "connected to the OpenCTI stream"
        );
        let cursor = self.position.cursor.as_deref().and_then(EventId::parse);
        let first = info.first_event_id.as_deref().and_then(EventId::parse);
        if let (Some(cursor), Some(first)) = (cursor, first)
            && cursor < first
            && self.position.recover_until.is_none()
        {
            tracing::error!(
                resume_from = self.position.cursor.as_deref().unwrap_or(""),
                first_event_id = info.first_event_id.as_deref().unwrap_or(""),
                "the resume position is older than the oldest event OpenCTI still keeps: the events in between were trimmed at the source and are LOST (raise redis:trimming on the platform, or re-export with a recovery)"
            );
        }
        self.stats.set_connected_info(info);
    }
}

/// Completes an event whose files were downloaded into its [`StreamItem`].
pub fn finish_files(
    stats: &StreamStats,
    id: String,
    action: Action,
    holds_cursor: bool,
    pending: PendingFiles,
    contents: &[Option<Bytes>],
) -> StreamItem {
    let payload_for_errors = pending.payload().clone();
    match pending.complete(contents) {
        Ok(line) => {
            stats.count_export(action);
            StreamItem::Export {
                id,
                action,
                line: line.line,
                holds_cursor,
            }
        }
        Err(error) => {
            stats.dead_lettered.fetch_add(1, Relaxed);
            StreamItem::DeadLetter {
                id: Some(id),
                event: action.as_str().to_owned(),
                reason: error.to_string(),
                payload: payload_for_errors,
            }
        }
    }
}

/// `<digits>-<digits>`, the shape of a Redis stream id (docs/opencti-protocol.md#event-ids).
pub fn is_stream_id(id: &str) -> bool {
    EventId::parse(id).is_some()
}

fn message_of(data: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct WithMessage {
        message: Option<String>,
    }
    serde_json::from_slice::<WithMessage>(data).ok()?.message
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_events_need_their_id() {
        let stats = Arc::new(StreamStats::default());
        let mut handler = EventHandler::new(Arc::clone(&stats), TransformOptions::default());
        let event = |id: Option<&'static str>, name: &'static str, data: &'static str| {
            SseFrame::Event(SseEvent {
                id: id.map(|id| Bytes::from_static(id.as_bytes())),
                event: Some(Bytes::from_static(name.as_bytes())),
                data: Bytes::from_static(data.as_bytes()),
            })
        };
        assert!(matches!(
            handler.handle(event(None, "heartbeat", "\"x\"")),
            Handled::Nothing
        ));
        assert!(matches!(
            handler.handle(event(Some("not-an-id"), "heartbeat", "\"x\"")),
            Handled::Nothing
        ));
        assert!(matches!(
            handler.handle(event(Some("7-0"), "heartbeat", "\"x\"")),
            Handled::Item(StreamItem::Advance { id }) if id == "7-0"
        ));
        assert!(matches!(
            handler.handle(event(None, "no-recover", "{}")),
            Handled::Nothing
        ));
        assert_eq!(stats.skipped_events.load(Relaxed), 3);
        // A data event with an odd id is exported, never as the cursor.
        let item = handler.handle(event(Some("abc"), "create", r#"{"data":{}}"#));
        assert!(matches!(
            item,
            Handled::Item(StreamItem::Export {
                holds_cursor: false,
                ..
            })
        ));
        assert_eq!(stats.malformed_ids.load(Relaxed), 1);
    }
}
