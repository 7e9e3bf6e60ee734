//! A fault-injecting HTTP/1.1 proxy for tests, in front of any server on 127.0.0.1.
//!
//! It understands just enough HTTP to find where each request starts (request head, then
//! `Content-Length` bytes of body), so a fault applies **per request**, even on a kept-alive
//! connection; responses are relayed as raw bytes.
//!
//! ```ignore
//! let proxy = FaultProxy::start(s3.addr());
//! let sink = S3Sink::new(S3Settings { endpoint: proxy.endpoint(), ..s3.settings("b") })?;
//! proxy.set_fault(Fault::Hang);                 // every request from now on
//! proxy.fault_next(Fault::Respond(Canned::SlowDown)); // only the next request, then the default
//! ```
//!
//! Faults:
//! * `Fault::Pass`: relay.
//! * `Fault::Delay`: wait, then relay.
//! * `Fault::Reset`: close the client connection at once with a TCP reset.
//! * `Fault::Hang`: stop reading from the client and never answer; the connection is held
//!   until the proxy is dropped (the client's own timeout must end the wait).
//! * `Fault::Truncate`: relay the request, then only the first `n` bytes of the response,
//!   then close.
//! * `Fault::Respond`: read the request, answer a canned S3 error (500 InternalError,
//!   503 SlowDown, 403 AccessDenied) without contacting the server, and close.
//!
//! Like [`TestS3`](super::s3::TestS3), it runs on its own runtime: usable from any test.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinSet;

/// What the proxy does to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Relay the request and its response.
    Pass,
    /// Wait this long, then relay.
    Delay(Duration),
    /// Close the client connection at once, with a TCP reset.
    Reset,
    /// Never answer and stop reading; hold the connection until the proxy is dropped.
    Hang,
    /// Relay the request, then this many bytes of the response, then close.
    Truncate(usize),
    /// Answer a canned error without contacting the server, then close.
    Respond(Canned),
}

/// Canned S3 error responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canned {
    /// 500 `InternalError`.
    InternalError,
    /// 503 `SlowDown`.
    SlowDown,
    /// 403 `AccessDenied`.
    AccessDenied,
}

impl Canned {
    fn status_code_message(self) -> (u16, &'static str, &'static str, &'static str) {
        match self {
            Self::InternalError => (
                500,
                "Internal Server Error",
                "InternalError",
                "We encountered an internal error. Please try again.",
            ),
            Self::SlowDown => (
                503,
                "Service Unavailable",
                "SlowDown",
                "Please reduce your request rate.",
            ),
            Self::AccessDenied => (403, "Forbidden", "AccessDenied", "Access Denied."),
        }
    }

    fn response(self, head_only: bool) -> Vec<u8> {
        let (status, reason, code, message) = self.status_code_message();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
        );
        let length = if head_only { 0 } else { body.len() };
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n\
             Content-Length: {length}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(body.as_bytes());
        }
        out
    }
}

struct Shared {
    upstream: SocketAddr,
    default_fault: Mutex<Fault>,
    queued: Mutex<VecDeque<Fault>>,
    bytes_to_upstream: AtomicU64,
    requests: AtomicU64,
    connections: AtomicU64,
    heads: Mutex<Vec<String>>,
}

impl Shared {
    fn next_fault(&self) -> Fault {
        if let Some(fault) = self.queued.lock().expect("lock").pop_front() {
            return fault;
        }
        self.default_fault.lock().expect("lock").clone()
    }
}

/// A running proxy. Dropping it closes every connection it holds.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy on `127.0.0.1:<free port>` relaying to `upstream`, in [`Fault::Pass`].
    pub fn start(upstream: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("runtime for the proxy");
        let listener =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            default_fault: Mutex::new(Fault::Pass),
            queued: Mutex::new(VecDeque::new()),
            bytes_to_upstream: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            heads: Mutex::new(Vec::new()),
        });
        runtime.spawn(accept_loop(listener, shared.clone()));
        Self {
            addr,
            shared,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault applied to every request from now on (when no one-shot fault is queued).
    pub fn set_fault(&self, fault: Fault) {
        *self.shared.default_fault.lock().expect("lock") = fault;
    }

    /// A fault applied to the next request only (queued: several calls apply in order).
    pub fn fault_next(&self, fault: Fault) {
        self.shared.queued.lock().expect("lock").push_back(fault);
    }

    /// Request bytes (heads and bodies) relayed to the server so far.
    pub fn bytes_to_upstream(&self) -> u64 {
        self.shared.bytes_to_upstream.load(Ordering::SeqCst)
    }

    /// Requests seen so far (whatever their fault).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The head (request line and headers, as text) of every request seen so far, in order.
    pub fn request_heads(&self) -> Vec<String> {
        self.shared.heads.lock().expect("lock").clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = TcpListener::from_std(listener).expect("register the listener");
    let mut tasks = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while tasks.try_join_next().is_some() {}
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let _ = client.set_nodelay(true);
        tasks.spawn(serve_connection(client, shared.clone()));
    }
}

const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The part of a request head the proxy needs.
struct RequestHead {
    bytes: Vec<u8>,
    content_length: u64,
    chunked: bool,
    is_head_method: bool,
}

/// Reads one request head from `client` (using and refilling `buffered`). `None` at a clean
/// EOF between requests or on a malformed head.
async fn read_head(client: &mut OwnedReadHalf, buffered: &mut Vec<u8>) -> Option<RequestHead> {
    loop {
        if let Some(end) = find(buffered, b"\r\n\r\n") {
            let bytes: Vec<u8> = buffered.drain(..end + 4).collect();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let mut content_length = 0;
            let mut chunked = false;
            for line in text.split("\r\n").skip(1) {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().ok()?;
                } else if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.to_ascii_lowercase().contains("chunked")
                {
                    chunked = true;
                }
            }
            let is_head_method = text.starts_with("HEAD ");
            return Some(RequestHead {
                bytes,
                content_length,
                chunked,
                is_head_method,
            });
        }
        if buffered.len() > MAX_HEAD_BYTES {
            return None;
        }
        let mut chunk = [0u8; 16 * 1024];
        match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffered.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Moves `length` body bytes from the client (first from `buffered`) to `sink` (or nowhere).
async fn relay_body(
    client: &mut OwnedReadHalf,
    buffered: &mut Vec<u8>,
    mut length: u64,
    mut sink: Option<&mut OwnedWriteHalf>,
    counter: &AtomicU64,
) -> Option<()> {
    let from_buffer = usize::try_from(length)
        .unwrap_or(usize::MAX)
        .min(buffered.len());
    if from_buffer > 0 {
        let bytes: Vec<u8> = buffered.drain(..from_buffer).collect();
        if let Some(sink) = sink.as_deref_mut() {
            sink.write_all(&bytes).await.ok()?;
            counter.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        }
        length -= from_buffer as u64;
    }
    let mut chunk = vec![0u8; 64 * 1024];
    while length > 0 {
        let want = usize::try_from(length)
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        let n = client.read(&mut chunk[..want]).await.ok()?;
        if n == 0 {
            return None;
        }
        if let Some(sink) = sink.as_deref_mut() {
            sink.write_all(&chunk[..n]).await.ok()?;
            counter.fetch_add(n as u64, Ordering::SeqCst);
        }
        length -= n as u64;
    }
    Some(())
}

/// The upstream side of a connection, opened at the first relayed request.
struct Upstream {
    writer: OwnedWriteHalf,
    /// Response bytes still allowed to reach the client; negative means unlimited.
    budget: Arc<AtomicI64>,
}

async fn serve_connection(client: TcpStream, shared: Arc<Shared>) {
    let (mut client_read, client_write) = client.into_split();
    let client_write = Arc::new(AsyncMutex::new(client_write));
    let mut buffered = Vec::new();
    let mut upstream: Option<Upstream> = None;
    let mut pumps = JoinSet::new();

    while let Some(head) = read_head(&mut client_read, &mut buffered).await {
        shared.requests.fetch_add(1, Ordering::SeqCst);
        shared
            .heads
            .lock()
            .expect("lock")
            .push(String::from_utf8_lossy(&head.bytes).into_owned());
        let fault = shared.next_fault();
        match fault {
            Fault::Reset => {
                reset(client_read, &client_write).await;
                return;
            }
            Fault::Hang => {
                // Hold both halves without reading or writing, until the proxy is dropped.
                let _held = (client_read, client_write);
                std::future::pending::<()>().await;
                return;
            }
            Fault::Respond(canned) => {
                let _ = relay_body(
                    &mut client_read,
                    &mut buffered,
                    head.content_length,
                    None,
                    &shared.bytes_to_upstream,
                )
                .await;
                let mut writer = client_write.lock().await;
                let _ = writer
                    .write_all(&canned.response(head.is_head_method))
                    .await;
                let _ = writer.shutdown().await;
                return;
            }
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::Pass | Fault::Truncate(_) => {}
        }

        if upstream.is_none() {
            let Ok(stream) = TcpStream::connect(shared.upstream).await else {
                // Server down: the client sees its connection closed.
                return;
            };
            let _ = stream.set_nodelay(true);
            let (reader, writer) = stream.into_split();
            let budget = Arc::new(AtomicI64::new(-1));
            pumps.spawn(pump_responses(reader, client_write.clone(), budget.clone()));
            upstream = Some(Upstream { writer, budget });
        }
        let Some(up) = upstream.as_mut() else { return };
        let budget = match fault {
            Fault::Truncate(n) => i64::try_from(n).unwrap_or(i64::MAX),
            _ => -1,
        };
        up.budget.store(budget, Ordering::SeqCst);

        if up.writer.write_all(&head.bytes).await.is_err() {
            return;
        }
        shared
            .bytes_to_upstream
            .fetch_add(head.bytes.len() as u64, Ordering::SeqCst);
        if head.chunked {
            // Not framed by Content-Length: relay the rest of the connection as is.
            let _ = up.writer.write_all(&buffered).await;
            let _ = tokio::io::copy(&mut client_read, &mut up.writer).await;
            break;
        }
        let relayed = relay_body(
            &mut client_read,
            &mut buffered,
            head.content_length,
            Some(&mut up.writer),
            &shared.bytes_to_upstream,
        )
        .await;
        if relayed.is_none() {
            break;
        }
    }
    if let Some(mut up) = upstream {
        let _ = up.writer.shutdown().await;
    }
    // Let the response pump finish relaying what the server still sends.
    while pumps.join_next().await.is_some() {}
}

/// Relays server bytes to the client, stopping after the budget when one is set.
async fn pump_responses(
    mut upstream: OwnedReadHalf,
    client: Arc<AsyncMutex<OwnedWriteHalf>>,
    budget: Arc<AtomicI64>,
) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match upstream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let allowed = budget.load(Ordering::SeqCst);
        let (send, cut) = if allowed < 0 {
            (n, false)
        } else {
            let allowed = usize::try_from(allowed).unwrap_or(usize::MAX);
            (n.min(allowed), n >= allowed)
        };
        let mut writer = client.lock().await;
        if writer.write_all(&chunk[..send]).await.is_err() {
            break;
        }
        if cut {
            let _ = writer.shutdown().await;
            break;
        }
        if allowed >= 0 {
            budget.fetch_sub(send as i64, Ordering::SeqCst);
        }
    }
    let _ = client.lock().await.shutdown().await;
}

/// Closes the client connection with a TCP reset (RST instead of FIN): a zero linger makes the
/// close abortive; the socket closes when the connection task returns.
async fn reset(read: OwnedReadHalf, write: &Arc<AsyncMutex<OwnedWriteHalf>>) {
    let writer = write.lock().await;
    let stream: &TcpStream = (*writer).as_ref();
    let _ = stream.set_zero_linger();
    drop(read);
}
