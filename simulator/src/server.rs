//! The HTTP side: accept loop, routing, authentication and error statuses
//! (docs/opencti-protocol.md#auth-and-errors), `/storage/get/…`
//! (docs/opencti-protocol.md#attached-files) and `/graphql`
//! (docs/opencti-protocol.md#state-storage).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::ext::ReasonPhrase;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::config::RecoverWithoutStart;
use super::cut::{CutSignal, CuttableIo};
use super::faults::FailStatus;
use super::model::{EventKind, IdentityKey, Role};
use super::served::{ConnectionEnd, ConnectionRecord, RequestInfo, StreamMode};
use super::stream::{self, SessionPlan, SseBody};
use super::{Shared, StorageRequest, graphql, lock, storage};
use crate::ids::{EventId, parse_position};

/// Any response body the simulator sends.
pub enum SimBody {
    Full(Option<Bytes>),
    Sse(SseBody),
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            SimBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Sse(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, SimBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            SimBody::Full(None) => SizeHint::with_exact(0),
            SimBody::Sse(_) => SizeHint::default(),
        }
    }
}

type Reply = Response<SimBody>;

fn reply(
    status: u16,
    reason: Option<&str>,
    body: Option<Bytes>,
    content_type: Option<&str>,
) -> Reply {
    let mut response = Response::new(SimBody::Full(body));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Some(reason) = reason
        && let Ok(phrase) = ReasonPhrase::try_from(reason.as_bytes().to_vec())
    {
        response.extensions_mut().insert(phrase);
    }
    if let Some(content_type) = content_type
        && let Ok(value) = header::HeaderValue::from_str(content_type)
    {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// An error status as the platform sends it: reason phrase carries the message, empty body
/// (429 is the rate limiter's JSON body).
fn fail(status: FailStatus) -> Reply {
    match status {
        FailStatus::TooManyRequests => reply(
            429,
            None,
            Some(Bytes::from_static(
                br#"{"message":"Too many requests, please try again later."}"#,
            )),
            Some("application/json; charset=utf-8"),
        ),
        FailStatus::Internal => reply(500, None, None, None),
        other => reply(other.code(), Some(other.reason()), None, None),
    }
}

/// Accepts connections until shutdown; each connection is served on its own task.
pub async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (socket, _) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "simulator: accepting a connection failed");
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let shared = shared.clone();
        connections.spawn(async move {
            let service_shared = shared.clone();
            let signal = Arc::new(CutSignal::default());
            let io = CuttableIo::new(socket, signal.clone());
            let service = service_fn(move |request| {
                let shared = service_shared.clone();
                let signal = signal.clone();
                async move { Ok::<_, Infallible>(route(shared, request, signal).await) }
            });
            let connection = http1::Builder::new()
                .writev(true)
                .serve_connection(TokioIo::new(io), service);
            tokio::select! {
                _ = connection => {}
                () = shared.shutdown.cancelled() => {}
            }
        });
    }
    connections.shutdown().await;
}

async fn route(shared: Arc<Shared>, request: Request<Incoming>, signal: Arc<CutSignal>) -> Reply {
    let path = request.uri().path().to_owned();
    if path == "/stream" || path == "/stream/" {
        return stream_route(shared, &request, None, signal).await;
    }
    if let Some(id) = path.strip_prefix("/stream/") {
        if request.method() == Method::POST && id.starts_with("connection/") {
            return reply(
                200,
                None,
                Some(Bytes::from_static(br#"{"message":"ok"}"#)),
                Some("application/json"),
            );
        }
        let id = id.trim_end_matches('/').to_owned();
        return stream_route(shared, &request, Some(id), signal).await;
    }
    if let Some(file) = path.strip_prefix("/storage/get/") {
        return storage_route(&shared, &request, file);
    }
    if path == "/graphql" {
        return graphql_route(shared, request).await;
    }
    reply(404, None, None, None)
}

fn bearer_ok(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = &shared.config.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|given| given.trim() == token.expose())
}

/// The first value of query parameter `name` (percent-decoded; `+` is a space as in Express).
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

fn decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn request_info<B>(request: &Request<B>) -> RequestInfo {
    let headers = request.headers();
    let query = request.uri().query();
    let either = |q: &str, h: &[&str]| {
        query_param(query, q).or_else(|| h.iter().find_map(|name| header_str(headers, name)))
    };
    RequestInfo {
        path: request.uri().path().to_owned(),
        query: query.map(str::to_owned),
        authorization: headers.contains_key(header::AUTHORIZATION),
        from_query: query_param(query, "from"),
        from_header: header_str(headers, "from"),
        last_event_id: header_str(headers, "last-event-id"),
        recover: either("recover", &["recover", "recover-date"]),
        listen_delete: either("listen-delete", &["listen-delete"]),
        no_dependencies: query_param(query, "no-dependencies")
            .or_else(|| query_param(query, "no-relationships"))
            .or_else(|| header_str(headers, "no-dependencies"))
            .or_else(|| header_str(headers, "no-relationships")),
        with_inferences: either("with-inferences", &["with-inferences"]),
        user_agent: header_str(headers, "user-agent"),
    }
}

async fn stream_route<B>(
    shared: Arc<Shared>,
    request: &Request<B>,
    stream_id: Option<String>,
    signal: Arc<CutSignal>,
) -> Reply {
    let info = request_info(request);
    let number = shared.counters.next_connection();
    let record = Arc::new(Mutex::new(ConnectionRecord::new(
        number,
        stream_id.clone(),
        info.clone(),
    )));
    lock(&shared.served).push(record.clone());
    let refuse = |status: FailStatus| {
        let mut r = lock(&record);
        r.status = status.code();
        r.reason = Some(status.reason().to_owned());
        r.end = Some(ConnectionEnd::Refused);
        drop(r);
        fail(status)
    };

    // docs/opencti-protocol.md#auth-and-errors: the collection is looked up before the token is
    // checked.
    let stream = match &stream_id {
        None => None,
        Some(id) => match shared.config.streams.iter().find(|s| &s.id == id) {
            None => return refuse(FailStatus::Unauthorized),
            Some(s) if s.stopped => return refuse(FailStatus::Stopped),
            Some(s) => Some(s.clone()),
        },
    };
    let public = stream.as_ref().is_some_and(|s| s.public);
    if !public && !bearer_ok(&shared, request.headers()) {
        return refuse(FailStatus::Unauthenticated);
    }
    if let Some(status) = shared.faults.take_refusal() {
        return refuse(status);
    }
    if let Some(duration) = shared.faults.take_connect_stall() {
        let mut releases = shared.faults.releases();
        releases.borrow_and_update();
        let sleep = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            _ = releases.changed() => {}
            () = shared.shutdown.cancelled() => return refuse(FailStatus::Internal),
        }
    }

    let raw = stream.is_none();
    let start = info
        .from_query
        .as_deref()
        .or(info.from_header.as_deref())
        .or(info.last_event_id.as_deref())
        .and_then(parse_position);
    let recover = if raw {
        None
    } else {
        info.recover.as_deref().and_then(parse_position)
    };
    let listen_delete = raw || info.listen_delete.as_deref() != Some("false");
    let stream_name = stream_id.clone().unwrap_or_default();

    let mut error = None;
    let (head, head_id) = {
        let world = shared.world.read().unwrap_or_else(|p| p.into_inner());
        let last = world.events.last().map(|e| e.id).unwrap_or_default();
        let clock = lock(&shared.clock);
        (world.events.len() as u32, last.max(clock.high_water))
    };
    let mut recovery = Vec::new();
    let mut no_recover = false;
    let mode = match (start, recover) {
        (None, Some(_)) => match shared.config.recover_without_start {
            RecoverWithoutStart::Status500 => {
                let reason = format!(
                    "Error in stream {stream_name}: Recovery mode is only possible with a start date"
                );
                let mut r = lock(&record);
                r.status = 500;
                r.reason = Some(reason.clone());
                r.end = Some(ConnectionEnd::Refused);
                return reply(500, Some(&reason), None, None);
            }
            RecoverWithoutStart::ErrorEvent => {
                error = Some("Recovery mode is only possible with a start date".to_owned());
                StreamMode::Live { after: head_id }
            }
        },
        (Some(from), Some(until)) if until > from => {
            if stream.as_ref().is_some_and(|s| s.origin_filters) {
                no_recover = true;
                StreamMode::Live { after: from }
            } else {
                let world = shared.world.read().unwrap_or_else(|p| p.into_inner());
                recovery = world.recovery_plan(head, from.ms, until.ms);
                let keys: Vec<IdentityKey> = if shared.config.record_events {
                    recovery
                        .iter()
                        .map(|&(ms, object)| IdentityKey {
                            id: EventId::new(ms, 0),
                            event: EventKind::Create,
                            role: Role::Recovery,
                            data: world.stix_id(object, head),
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                lock(&record).recovery_plan = keys;
                StreamMode::Recovery {
                    from,
                    recover: until,
                }
            }
        }
        (Some(from), _) => StreamMode::Live { after: from },
        (None, None) => StreamMode::Live { after: head_id },
    };
    {
        let mut r = lock(&record);
        r.status = 200;
        r.mode = Some(mode);
        r.listen_delete = listen_delete;
    }
    let plan = SessionPlan {
        number,
        stream_id: stream_name,
        mode,
        raw,
        listen_delete,
        recovery,
        head,
        no_recover,
        error,
    };
    let body = stream::start(shared.clone(), record, plan, signal);
    let mut response = Response::new(SimBody::Sse(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("keep-alive"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    response
}

fn storage_route<B>(shared: &Shared, request: &Request<B>, file: &str) -> Reply {
    let authorized = request.headers().contains_key(header::AUTHORIZATION)
        && bearer_ok(shared, request.headers())
        || shared.config.token.is_none();
    let raw_path = request.uri().path().to_owned();
    let (status, response) = if let Some(status) = shared.faults.take_storage_failure() {
        (status.code(), fail(status))
    } else if !authorized {
        (403, reply(403, None, None, None))
    } else {
        let decoded = percent_encoding::percent_decode_str(file)
            .decode_utf8_lossy()
            .into_owned();
        let spec = shared
            .world
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .files
            .get(&decoded)
            .cloned();
        match spec {
            Some(spec) if !decoded.split('/').any(|s| s == ".." || s == ".") => {
                let bytes = storage::file_bytes(&spec);
                let mut response = reply(200, None, Some(Bytes::from(bytes)), Some(spec.mime));
                let disposition = format!(
                    "attachment; filename=\"{}\"",
                    percent_encoding::utf8_percent_encode(
                        spec.name,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                );
                if let Ok(value) = header::HeaderValue::from_str(&disposition) {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_DISPOSITION, value);
                }
                (200, response)
            }
            _ => (404, reply(404, None, None, None)),
        }
    };
    lock(&shared.storage_requests).push(StorageRequest {
        path: raw_path,
        query: request.uri().query().map(str::to_owned),
        authorized: request.headers().contains_key(header::AUTHORIZATION)
            && bearer_ok(shared, request.headers()),
        status,
    });
    response
}

/// Largest GraphQL request body read.
const GRAPHQL_LIMIT: usize = 1 << 20;

async fn graphql_route(shared: Arc<Shared>, request: Request<Incoming>) -> Reply {
    let authorized = request.headers().contains_key(header::AUTHORIZATION)
        && bearer_ok(&shared, request.headers())
        || shared.config.token.is_none();
    if let Some(status) = shared.faults.take_graphql_failure() {
        return fail(status);
    }
    if request.method() != Method::POST {
        return reply(405, None, None, None);
    }
    let started = Instant::now();
    let body = match http_body_util::Limited::new(request.into_body(), GRAPHQL_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::debug!(%error, elapsed = ?started.elapsed(), "simulator: reading a graphql request failed");
            return reply(400, None, None, None);
        }
    };
    let (status, answer) = graphql::handle(&shared, &body, authorized);
    reply(
        status,
        None,
        Some(Bytes::from(answer)),
        Some("application/json; charset=utf-8"),
    )
}
