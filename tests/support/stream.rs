//! Test stand-ins for the stream client's neighbours: a scripted OpenCTI (real HTTP on
//! 127.0.0.1, port 0) and a minimal pipeline that answers `Sync` from what it received.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request as AxumRequest, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use opencti_stream_exporter::secret::Secret;
use opencti_stream_exporter::stream::{
    ResumePosition, StreamItem, StreamSettings, StreamStats, redirect_policy, run,
};
use opencti_stream_exporter::transform::Action;
use reqwest::Url;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A request the stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// How the stand-in answers one request.
pub enum Reply {
    /// A status with an empty body and this reason phrase (OpenCTI's error style,
    /// docs/opencti-protocol.md#auth-and-errors).
    Status(u16, &'static str),
    /// A 200 event stream made of these chunks, then closed or left open forever.
    Events { chunks: Vec<Bytes>, end: End },
    /// A 200 with this body and content type.
    Body(&'static str, Bytes),
    /// A 302 to this location.
    Redirect(String),
    /// A 200 with this body, sent only once a permit of the semaphore is available.
    Gated(Arc<tokio::sync::Semaphore>, Bytes),
}

pub enum End {
    Close,
    Stall,
}

type StreamScript = dyn Fn(usize, &Seen) -> Reply + Send + Sync;
type FileScript = dyn Fn(&Seen) -> Reply + Send + Sync;

#[derive(Clone)]
struct StandInState {
    stream_script: Arc<StreamScript>,
    file_script: Arc<FileScript>,
    stream_requests: Arc<Mutex<Vec<Seen>>>,
    file_requests: Arc<Mutex<Vec<Seen>>>,
}

/// A scripted OpenCTI: `/stream...` answered by the stream script (with the connection index),
/// `/storage/get/...` by the file script. Every request is recorded.
pub struct StandIn {
    pub base: Url,
    pub stream_requests: Arc<Mutex<Vec<Seen>>>,
    pub file_requests: Arc<Mutex<Vec<Seen>>>,
    server: JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl StandIn {
    pub async fn start(
        stream_script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static,
        file_script: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let state = StandInState {
            stream_script: Arc::new(stream_script),
            file_script: Arc::new(file_script),
            stream_requests: Arc::default(),
            file_requests: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local address");
        let router = axum::Router::new()
            .fallback(serve)
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            base: Url::parse(&format!("http://{address}")).expect("valid url"),
            stream_requests: state.stream_requests,
            file_requests: state.file_requests,
            server,
        }
    }

    /// A stand-in that serves no files (404).
    pub async fn stream_only(
        stream_script: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::start(stream_script, |_| Reply::Status(404, "Not Found")).await
    }

    pub fn stream_request(&self, index: usize) -> Seen {
        self.stream_requests.lock().expect("lock")[index].clone()
    }

    pub fn stream_request_count(&self) -> usize {
        self.stream_requests.lock().expect("lock").len()
    }
}

async fn serve(State(state): State<StandInState>, request: AxumRequest) -> Response {
    let seen = Seen {
        path: request.uri().path().to_owned(),
        query: request.uri().query().map(str::to_owned),
        headers: request.headers().clone(),
    };
    let reply = if seen.path.starts_with("/stream") {
        let index = {
            let mut requests = state.stream_requests.lock().expect("lock");
            requests.push(seen.clone());
            requests.len() - 1
        };
        (state.stream_script)(index, &seen)
    } else if seen.path.starts_with("/storage/get/") {
        state.file_requests.lock().expect("lock").push(seen.clone());
        (state.file_script)(&seen)
    } else {
        Reply::Status(404, "Not Found")
    };
    if let Reply::Gated(gate, body) = reply {
        let _permit = gate.acquire().await;
        return respond(Reply::Body("application/octet-stream", body));
    }
    respond(reply)
}

fn respond(reply: Reply) -> Response {
    let mut response = match reply {
        Reply::Status(code, reason) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::from_u16(code).expect("valid status");
            let phrase =
                hyper::ext::ReasonPhrase::try_from(reason.as_bytes()).expect("valid reason phrase");
            response.extensions_mut().insert(phrase);
            response
        }
        Reply::Events { chunks, end } => {
            let chunks = futures::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>));
            let body = match end {
                End::Close => Body::from_stream(chunks),
                End::Stall => Body::from_stream(chunks.chain(futures::stream::pending())),
            };
            let mut response = Response::new(body);
            response.headers_mut().insert(
                "content-type",
                "text/event-stream; charset=utf-8"
                    .parse()
                    .expect("valid header"),
            );
            response
        }
        Reply::Body(content_type, body) => {
            let mut response = Response::new(Body::from(body));
            response
                .headers_mut()
                .insert("content-type", content_type.parse().expect("valid header"));
            response
        }
        Reply::Gated(_, body) => Response::new(Body::from(body)),
        Reply::Redirect(location) => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::FOUND;
            response
                .headers_mut()
                .insert("location", location.parse().expect("valid header"));
            response
        }
    };
    response.headers_mut().insert(
        "cache-control",
        "no-cache, no-transform".parse().expect("valid header"),
    );
    response
}

/// One SSE event as OpenCTI writes it (docs/opencti-protocol.md#sse-framing).
pub fn sse(id: Option<&str>, event: &str, data: &str) -> String {
    let mut out = String::new();
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str(&format!("event: {event}\ndata: {data}\n\n"));
    out
}

/// A small live `create` payload for object `n`.
pub fn create_payload(n: u64) -> String {
    format!(
        r#"{{"version":"4","type":"create","scope":"external","message":"creates a Malware `m{n}`","origin":{{"socket":"query"}},"data":{{"id":"malware--{n:08}","spec_version":"2.1","type":"malware","name":"m{n}"}},"event_id":"e{n}"}}"#
    )
}

/// What the stand-in pipeline received, and the state it answers `Sync` with.
#[derive(Debug, Default, Clone)]
pub struct PipelineLog {
    pub items: Vec<Received>,
    pub position: ResumePosition,
    pub syncs: usize,
}

impl PipelineLog {
    pub fn exports(&self) -> Vec<(String, Action, Bytes, bool)> {
        self.items
            .iter()
            .filter_map(|item| match item {
                Received::Export {
                    id,
                    action,
                    line,
                    holds_cursor,
                } => Some((id.clone(), *action, line.clone(), *holds_cursor)),
                _ => None,
            })
            .collect()
    }

    pub fn export_ids(&self) -> Vec<String> {
        self.exports().into_iter().map(|(id, ..)| id).collect()
    }

    pub fn dead_letters(&self) -> Vec<(Option<String>, String, String, Bytes)> {
        self.items
            .iter()
            .filter_map(|item| match item {
                Received::DeadLetter {
                    id,
                    event,
                    reason,
                    payload,
                } => Some((id.clone(), event.clone(), reason.clone(), payload.clone())),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
pub enum Received {
    Export {
        id: String,
        action: Action,
        line: Bytes,
        holds_cursor: bool,
    },
    Advance(String),
    RecoveryDisabled(String),
    DeadLetter {
        id: Option<String>,
        event: String,
        reason: String,
        payload: Bytes,
    },
}

/// A pipeline whose "durable" state follows the contract: the cursor moves to an export's id when
/// it holds the cursor, to an advance's id, and recovery is disabled by `RecoveryDisabled`.
/// Everything is durable as soon as it is received, so `Sync` is answered at once.
pub fn start_pipeline(
    initial: ResumePosition,
    capacity: usize,
) -> (mpsc::Sender<StreamItem>, Arc<Mutex<PipelineLog>>) {
    let (sender, mut receiver) = mpsc::channel(capacity);
    let log = Arc::new(Mutex::new(PipelineLog {
        position: initial,
        ..PipelineLog::default()
    }));
    let shared = Arc::clone(&log);
    tokio::spawn(async move {
        while let Some(item) = receiver.recv().await {
            let mut log = shared.lock().expect("lock");
            match item {
                StreamItem::Export {
                    id,
                    action,
                    line,
                    holds_cursor,
                } => {
                    if holds_cursor {
                        log.position.cursor = Some(id.clone());
                    }
                    log.items.push(Received::Export {
                        id,
                        action,
                        line,
                        holds_cursor,
                    });
                }
                StreamItem::Advance { id } => {
                    log.position.cursor = Some(id.clone());
                    log.items.push(Received::Advance(id));
                }
                StreamItem::RecoveryDisabled { id } => {
                    log.position.recover_until = None;
                    log.items.push(Received::RecoveryDisabled(id));
                }
                StreamItem::DeadLetter {
                    id,
                    event,
                    reason,
                    payload,
                } => {
                    log.items.push(Received::DeadLetter {
                        id,
                        event,
                        reason,
                        payload,
                    });
                }
                StreamItem::Sync(answer) => {
                    log.syncs += 1;
                    let _ = answer.send(log.position.clone());
                }
            }
        }
    });
    (sender, log)
}

/// Settings for tests: fast backoff, a generous idle timeout unless a test shortens it.
pub fn test_settings(base: &Url) -> StreamSettings {
    let mut settings = StreamSettings::new(
        base.clone(),
        Secret::new("s3cr3t-t0ken"),
        Some("stream-1".to_owned()),
    );
    settings.backoff_base = Duration::from_millis(10);
    settings.backoff_cap = Duration::from_millis(100);
    settings.idle_timeout = Duration::from_secs(30);
    settings
}

/// A running client and the handles to steer it.
pub struct RunningClient {
    pub stats: Arc<StreamStats>,
    pub cancel: CancellationToken,
    pub accepting: watch::Sender<bool>,
    pub task: JoinHandle<Result<(), opencti_stream_exporter::stream::StreamError>>,
}

impl RunningClient {
    pub async fn stop(self) {
        self.cancel.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("client stops within 10 s of cancellation")
            .expect("client task did not panic");
        assert!(outcome.is_ok(), "client ended with {outcome:?}");
    }
}

pub fn start_client(settings: StreamSettings, items: mpsc::Sender<StreamItem>) -> RunningClient {
    let http = reqwest::Client::builder()
        .redirect(redirect_policy(&settings.base_url))
        .build()
        .expect("http client");
    let stats = Arc::new(StreamStats::default());
    let cancel = CancellationToken::new();
    let (accepting, accepting_rx) = watch::channel(true);
    let task = tokio::spawn(run(
        settings,
        http,
        items,
        accepting_rx,
        cancel.clone(),
        Arc::clone(&stats),
    ));
    RunningClient {
        stats,
        cancel,
        accepting,
        task,
    }
}

/// Polls `condition` every 10 ms until it holds, failing the test after `within`.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The default deadline for something that should happen at once.
pub const SOON: Duration = Duration::from_secs(15);
