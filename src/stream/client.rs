//! The connection loop: sync with the pipeline, connect, read, hand items over in order, and
//! reconnect with backoff, forever, until cancelled (see the module documentation of
//! [`crate::stream`] for the invariants it keeps).
//!
//! One connection, step by step:
//! 1. wait until the pipeline is accepting (disk budget);
//! 2. send [`StreamItem::Sync`] and wait for the [`ResumePosition`]: the durable cursor and the
//!    recovery bound (so a reconnection never skips an event that was read but not yet durable);
//! 3. `GET {base}/stream/{id}` with pycti's headers, `Last-Event-ID: <cursor>` and
//!    `?recover=<date>` ([`super::request`]); a non-2xx answer is logged with the server's reason
//!    phrase (once per change of state) and retried, never fatal;
//! 4. frame the body ([`super::sse`]), handle each event ([`super::event`]) and send the items in
//!    arrival order; events with files wait for their downloads in an ordered queue (bounded by
//!    [`super::FileSettings::max_events_in_flight`]) while reading goes on; reading also stops
//!    while the bytes held between the stream and the WAL reach
//!    [`StreamSettings::max_bytes_in_flight`] ([`super::in_flight`]);
//! 5. the connection ends on end of stream, a network error, the idle watchdog (no event with an
//!    id for [`StreamSettings::idle_timeout`]; time spent not reading — waiting for the pipeline,
//!    for the queue of downloads, or for bytes in flight to be freed — does not count, so
//!    retrying a file never causes a reconnection),
//!    or the pipeline pausing; complete events already read are still handed over, an event cut
//!    in the middle is discarded (the server sends it again after the cursor); on a pause the
//!    connection is dropped first, then a `Sync` makes everything read durable, then the client
//!    waits for `accepting` before starting again at 1;
//! 6. wait a backoff delay (full jitter, reset after a connection that delivered events) and start
//!    again at 1.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use reqwest::header::CONTENT_TYPE;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::event::{EventHandler, Handled, finish_files};
use super::files::FileFetcher;
use super::in_flight::{InFlightBytes, QueuePlace};
use super::request::{stream_headers, stream_url};
use super::sse::{SseFrame, SseFramer};
use super::stats::ReconnectReason;
use super::{ResumePosition, StreamItem, StreamSettings, StreamStats};
use crate::backoff::Backoff;

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The pipeline dropped its end of the item channel, the `accepting` watch, or a
    /// [`StreamItem::Sync`] answer: it is gone, so there is nobody to hand events to.
    #[error("the pipeline stopped receiving stream items")]
    PipelineClosed,
}

/// Runs the stream client until `cancel` fires (returns `Ok`) or the pipeline goes away
/// (returns [`StreamError::PipelineClosed`]). No answer from OpenCTI ends it: every failure is
/// retried with backoff.
///
/// - `http`: the client for OpenCTI (TLS configured by the caller; build it with
///   [`super::files::redirect_policy`] so redirects never leave OpenCTI's origin). No overall
///   request timeout must be set on it: the stream is one long response.
/// - `items`: the pipeline's bounded channel; when it is full the client stops reading
///   (backpressure reaches the server through TCP).
/// - `accepting`: when it turns false the client drops the connection and waits for true before
///   syncing and reconnecting.
pub async fn run(
    settings: StreamSettings,
    http: reqwest::Client,
    items: mpsc::Sender<StreamItem>,
    accepting: watch::Receiver<bool>,
    cancel: CancellationToken,
    stats: Arc<StreamStats>,
) -> Result<(), StreamError> {
    let settings = Arc::new(settings);
    if settings.live_stream_id.is_none() {
        tracing::warn!(
            "CONNECTOR_LIVE_STREAM_ID is not set: reading the raw /stream (BYPASS users only, no recovery, no filters)"
        );
    }
    let in_flight = InFlightBytes::new(settings.max_bytes_in_flight);
    let (handed_on, _) = watch::channel(0);
    let mut client = Client {
        fetcher: FileFetcher::new(
            http.clone(),
            Arc::clone(&settings),
            Arc::clone(&stats),
            Arc::clone(&in_flight),
        ),
        in_flight,
        queued: 0,
        handed_on,
        handler: EventHandler::new(Arc::clone(&stats), settings.files.transform),
        backoff: Backoff::new(settings.backoff_base, settings.backoff_cap),
        link: LinkState::Starting,
        settings,
        http,
        items,
        accepting,
        cancel,
        stats,
    };
    match client.run().await {
        Stop::Cancelled => Ok(()),
        Stop::PipelineClosed => Err(StreamError::PipelineClosed),
    }
}

/// Why the loop stops for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    PipelineClosed,
}

/// How one connection attempt ended.
#[derive(Debug)]
struct Ended {
    reason: ReconnectReason,
    /// What the server or the network said (reason phrase, error), for the log.
    detail: String,
    /// The connection delivered at least one event with an id: the backoff starts over.
    delivered: bool,
}

/// The state the logs report changes of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkState {
    Starting,
    Connected,
    Failing {
        reason: ReconnectReason,
        detail: String,
    },
}

/// An item that may still be waiting for file downloads.
type QueuedItem = BoxFuture<'static, StreamItem>;

struct Client {
    settings: Arc<StreamSettings>,
    http: reqwest::Client,
    items: mpsc::Sender<StreamItem>,
    accepting: watch::Receiver<bool>,
    cancel: CancellationToken,
    stats: Arc<StreamStats>,
    fetcher: FileFetcher,
    /// Bytes held between reading and the WAL.
    in_flight: Arc<InFlightBytes>,
    /// Events ever pushed to the download queue (the next one's position).
    queued: u64,
    /// Events ever taken from the download queue and handed on.
    handed_on: watch::Sender<u64>,
    handler: EventHandler,
    backoff: Backoff,
    link: LinkState,
}

impl Client {
    async fn run(&mut self) -> Stop {
        loop {
            if let Err(stop) = self.wait_until_accepting().await {
                return stop;
            }
            let position = match self.sync().await {
                Ok(position) => position,
                Err(stop) => return stop,
            };
            let ended = match self.connection(&position).await {
                Ok(ended) => ended,
                Err(stop) => return stop,
            };
            self.stats.count_reconnect(ended.reason);
            if ended.delivered {
                self.backoff.reset();
            }
            if ended.reason == ReconnectReason::Paused {
                tracing::info!(
                    "the pipeline is not accepting events (disk budget): disconnected until it is"
                );
                // Everything read was handed over; wait until it is durable before idling.
                if let Err(stop) = self.sync().await {
                    return stop;
                }
                self.link = LinkState::Starting;
                continue;
            }
            let delay = self.backoff.next_delay();
            self.log_failure(ended, delay);
            tokio::select! {
                () = self.cancel.cancelled() => return Stop::Cancelled,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn wait_until_accepting(&mut self) -> Result<(), Stop> {
        tokio::select! {
            () = self.cancel.cancelled() => Err(Stop::Cancelled),
            accepting = self.accepting.wait_for(|accepting| *accepting) => {
                accepting.map(|_| ()).map_err(|_| Stop::PipelineClosed)
            }
        }
    }

    /// Asks the pipeline where to resume once everything sent so far is durable.
    async fn sync(&mut self) -> Result<ResumePosition, Stop> {
        let (answer, position) = oneshot::channel();
        self.send(StreamItem::Sync(answer)).await?;
        tokio::select! {
            () = self.cancel.cancelled() => Err(Stop::Cancelled),
            position = position => position.map_err(|_| Stop::PipelineClosed),
        }
    }

    /// Sends one item, waiting (cancellably) while the channel is full. Returns whether it had to
    /// wait, so the idle watchdog does not count that time. Its bytes are charged to
    /// [`Client::in_flight`] until the pipeline drops them.
    async fn send(&self, item: StreamItem) -> Result<bool, Stop> {
        let item = self.charged(item);
        match self.items.try_send(item) {
            Ok(()) => Ok(false),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::PipelineClosed),
            Err(mpsc::error::TrySendError::Full(item)) => tokio::select! {
                () = self.cancel.cancelled() => Err(Stop::Cancelled),
                sent = self.items.send(item) => sent.map(|()| true).map_err(|_| Stop::PipelineClosed),
            },
        }
    }

    fn charged(&self, item: StreamItem) -> StreamItem {
        let charge = |bytes: Bytes| self.in_flight.charge(bytes);
        match item {
            StreamItem::Export {
                id,
                action,
                line,
                holds_cursor,
            } => StreamItem::Export {
                id,
                action,
                line: charge(line),
                holds_cursor,
            },
            StreamItem::DeadLetter {
                id,
                event,
                reason,
                payload,
            } => StreamItem::DeadLetter {
                id,
                event,
                reason,
                payload: charge(payload),
            },
            other => other,
        }
    }

    /// One connection: request, status check, then reading until it ends.
    async fn connection(&mut self, position: &ResumePosition) -> Result<Ended, Stop> {
        let failed = |reason, detail: String| Ended {
            reason,
            detail,
            delivered: false,
        };
        let headers = match stream_headers(&self.settings, position) {
            Ok(headers) => headers,
            Err(error) => return Ok(failed(ReconnectReason::Malformed, error.to_string())),
        };
        let url = stream_url(&self.settings, position);
        self.handler.start_connection(position);
        tracing::debug!(%url, cursor = position.cursor.as_deref().unwrap_or(""), "connecting to the OpenCTI stream");
        let request = self.http.get(url).headers(headers).send();
        let idle = self.settings.idle_timeout;
        let response = tokio::select! {
            () = self.cancel.cancelled() => return Err(Stop::Cancelled),
            response = tokio::time::timeout(idle, request) => response,
        };
        let response = match response {
            Err(_) => {
                return Ok(failed(
                    ReconnectReason::Idle,
                    format!("no response within {idle:?}"),
                ));
            }
            Ok(Err(error)) => {
                return Ok(failed(ReconnectReason::Network, network_detail(error)));
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            return Ok(failed(
                ReconnectReason::from_status(status.as_u16()),
                status_detail(&response),
            ));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if !content_type
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
        {
            return Ok(failed(
                ReconnectReason::Malformed,
                format!(
                    "HTTP {status} with content type {content_type:?} instead of text/event-stream"
                ),
            ));
        }
        self.stats.connections.fetch_add(1, Relaxed);
        self.stats.connected.store(true, Relaxed);
        if self.link != LinkState::Connected {
            tracing::info!(
                resume_from = position.cursor.as_deref().unwrap_or("(live)"),
                recover_until = position.recover_until.as_deref().unwrap_or("(none)"),
                "streaming from OpenCTI"
            );
            self.link = LinkState::Connected;
        }
        // Cleared however the read ends, also when this future is dropped (shutdown).
        let _connected = ConnectedFlag(Arc::clone(&self.stats));
        self.read(response).await
    }

    /// Reads the event stream until it ends; see the module documentation.
    async fn read(&mut self, response: reqwest::Response) -> Result<Ended, Stop> {
        let idle = self.settings.idle_timeout;
        let max_in_flight = self.settings.files.max_events_in_flight.max(1);
        let mut body = response.bytes_stream();
        let mut framer = SseFramer::new(self.settings.max_event_bytes);
        let mut frames = Vec::new();
        let mut queue: FuturesOrdered<QueuedItem> = FuturesOrdered::new();
        let mut delivered = false;
        let watchdog = tokio::time::sleep(idle);
        tokio::pin!(watchdog);
        let mut was_reading = true;
        let (reason, detail) = loop {
            // Not reading while the queue or the bytes in flight are full: that time is the
            // exporter's, not the server's, and must not trip the watchdog.
            let queue_has_room = queue.len() < max_in_flight;
            let reading = queue_has_room && !self.in_flight.is_full();
            if reading && !was_reading {
                watchdog.as_mut().reset(Instant::now() + idle);
            }
            was_reading = reading;
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Err(Stop::Cancelled),
                changed = self.accepting.changed() => {
                    changed.map_err(|_| Stop::PipelineClosed)?;
                    if !*self.accepting.borrow_and_update() {
                        break (ReconnectReason::Paused, "the pipeline stopped accepting".to_owned());
                    }
                }
                Some(item) = queue.next(), if !queue.is_empty() => {
                    self.handed_on.send_modify(|count| *count += 1);
                    if self.send(item).await? {
                        watchdog.as_mut().reset(Instant::now() + idle);
                    }
                }
                () = self.in_flight.wait_for_room(), if queue_has_room && !reading => {}
                chunk = body.next(), if reading => {
                    let chunk = match chunk {
                        None => break (ReconnectReason::Eof, "the server closed the stream".to_owned()),
                        Some(Err(error)) => break (ReconnectReason::Network, network_detail(error)),
                        Some(Ok(chunk)) => chunk,
                    };
                    self.stats.bytes_received.fetch_add(chunk.len() as u64, Relaxed);
                    framer.push(chunk, &mut frames);
                    for frame in frames.drain(..) {
                        if frame_has_id(&frame) {
                            delivered = true;
                            watchdog.as_mut().reset(Instant::now() + idle);
                        }
                        let Some(item) = self.queue_or_item(frame, &queue) else { continue };
                        match item {
                            Ready::Now(item) => {
                                if self.send(item).await? {
                                    watchdog.as_mut().reset(Instant::now() + idle);
                                }
                            }
                            Ready::Later(future) => queue.push_back(future),
                        }
                    }
                }
                () = &mut watchdog, if reading => {
                    break (ReconnectReason::Idle, format!("no event with an id for {idle:?}"));
                }
            }
        };
        let discarded = framer.finish();
        if discarded > 0 {
            tracing::debug!(
                bytes = discarded,
                "discarded an event cut by the end of the connection"
            );
        }
        drop(body);
        // Complete events already read are handed over before reconnecting, in order.
        while let Some(item) = queue.next().await {
            self.handed_on.send_modify(|count| *count += 1);
            self.send(item).await?;
        }
        Ok(Ended {
            reason,
            detail,
            delivered,
        })
    }

    /// The item for `frame`: sent now when nothing is waiting ahead of it, queued otherwise.
    fn queue_or_item(
        &mut self,
        frame: SseFrame,
        queue: &FuturesOrdered<QueuedItem>,
    ) -> Option<Ready> {
        let position = self.queued;
        let ready = match self.handler.handle(frame) {
            Handled::Nothing => return None,
            Handled::Item(item) if queue.is_empty() => return Some(Ready::Now(item)),
            Handled::Item(item) => Ready::Later(futures::future::ready(item).boxed()),
            Handled::NeedsFiles {
                id,
                action,
                holds_cursor,
                pending,
            } => {
                let fetcher = self.fetcher.clone();
                let stats = Arc::clone(&self.stats);
                let place = QueuePlace::new(position, self.handed_on.subscribe());
                let in_flight = Arc::clone(&self.in_flight);
                let pending = pending.map_payload(|payload| in_flight.charge(payload));
                Ready::Later(
                    async move {
                        let contents = fetcher.fetch_all(&id, pending.files(), place).await;
                        finish_files(&stats, id, action, holds_cursor, pending, &contents)
                    }
                    .boxed(),
                )
            }
        };
        self.queued += 1;
        Some(ready)
    }

    /// Logs a failed or ended connection when the state changed, at a level that fits.
    fn log_failure(&mut self, ended: Ended, delay: Duration) {
        let state = LinkState::Failing {
            reason: ended.reason,
            detail: ended.detail,
        };
        if state == self.link {
            tracing::debug!(?delay, "still failing the same way; retrying");
            return;
        }
        if let LinkState::Failing { reason, detail } = &state {
            let reason = *reason;
            let detail = detail.as_str();
            match reason {
                ReconnectReason::Eof | ReconnectReason::Idle => tracing::info!(
                    reason = reason.as_str(),
                    detail,
                    ?delay,
                    "OpenCTI stream connection ended; reconnecting from the durable position"
                ),
                _ => tracing::warn!(
                    reason = reason.as_str(), detail, ?delay, cap = ?self.settings.backoff_cap,
                    "cannot stream from OpenCTI; retrying with backoff (logged again only if this changes)"
                ),
            }
        }
        self.link = state;
    }
}

enum Ready {
    Now(StreamItem),
    Later(QueuedItem),
}

fn frame_has_id(frame: &SseFrame) -> bool {
    match frame {
        SseFrame::Event(event) => event.id.is_some(),
        SseFrame::Oversized(event) => event.id.is_some(),
    }
}

/// What went wrong with a request, with every cause (reqwest's own message is only the outer
/// one, such as `error sending request`, hiding a refused certificate or a refused connection),
/// without the URL.
pub(super) fn network_detail(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = cause.source();
    }
    detail
}

/// `HTTP 401 You are not authorized, ...`: the status and the server's own reason phrase (where
/// OpenCTI puts its error text, docs/opencti-protocol.md#auth-and-errors), or the standard phrase
/// when there is none (HTTP/2).
fn status_detail(response: &reqwest::Response) -> String {
    let status = response.status();
    let phrase = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|phrase| String::from_utf8_lossy(phrase.as_bytes()).into_owned())
        .or_else(|| status.canonical_reason().map(str::to_owned))
        .unwrap_or_default();
    format!("HTTP {} {phrase}", status.as_u16())
}

/// Clears [`StreamStats::connected`] when dropped.
struct ConnectedFlag(Arc<StreamStats>);

impl Drop for ConnectedFlag {
    fn drop(&mut self) {
        self.0.connected.store(false, Relaxed);
    }
}
