//! Helpers shared by the simulator tests: a plain SSE reader over a real HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every wait in these tests ends by this deadline.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn local() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

pub fn small_config(seed: u64) -> SimulatorConfig {
    SimulatorConfig {
        seed,
        live_events: 300,
        knowledge_base: 60,
        heartbeat: Duration::from_millis(100),
        ..SimulatorConfig::default()
    }
}

pub async fn start(config: SimulatorConfig) -> SimulatorHandle {
    Simulator::start(config, local())
        .await
        .expect("simulator starts")
}

/// One SSE frame as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Vec<u8>,
    /// `origin.referer` of a data event's payload (parsed once).
    pub referer: Option<String>,
    /// The exact bytes of the frame, blank line included.
    pub raw: Vec<u8>,
}

impl SseFrame {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.data).expect("data is JSON")
    }
    pub fn is_data_event(&self) -> bool {
        matches!(
            self.event.as_deref(),
            Some("create" | "update" | "delete" | "merge")
        )
    }
    pub fn referer(&self) -> Option<String> {
        self.referer.clone()
    }
    /// The line the stock exporter would write: payload + `id` + `type` (files not fetched).
    pub fn exported_line(&self) -> Vec<u8> {
        let mut payload = self.json();
        let object = payload.as_object_mut().expect("payload is an object");
        object.insert(
            "id".into(),
            self.id.clone().expect("data event has an id").into(),
        );
        object.insert(
            "type".into(),
            self.event.clone().expect("event name").into(),
        );
        serde_json::to_vec(&payload).expect("serialise")
    }
}

pub enum Ended {
    /// The body ended cleanly.
    Clean,
    /// The connection broke (abort, reset, incomplete chunked body).
    Broken(String),
    /// Nothing more arrived before the deadline (still open).
    Idle,
}

pub struct SseReader {
    pub status: u16,
    pub reason: Option<String>,
    pub headers: reqwest::header::HeaderMap,
    stream: Option<futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    buf: Vec<u8>,
    pub ended: Option<Ended>,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("client")
}

pub async fn connect(url: &str, headers: &[(&str, &str)]) -> SseReader {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let reason = response.status().canonical_reason().map(str::to_owned);
    let headers = response.headers().clone();
    SseReader {
        status,
        reason,
        headers,
        stream: Some(response.bytes_stream().boxed()),
        buf: Vec::new(),
        ended: None,
    }
}

pub fn bearer(handle: &SimulatorHandle) -> String {
    format!(
        "Bearer {}",
        handle.token().expect("token configured").expose()
    )
}

impl SseReader {
    /// The next frame, or `None` when the stream ended / broke / stayed idle for `idle`.
    pub async fn next_within(&mut self, idle: Duration) -> Option<SseFrame> {
        loop {
            if let Some(end) = find_frame_end(&self.buf) {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                return Some(parse_frame(raw));
            }
            let stream = self.stream.as_mut()?;
            match tokio::time::timeout(idle, stream.next()).await {
                Err(_) => {
                    self.ended = Some(Ended::Idle);
                    return None;
                }
                Ok(None) => {
                    self.ended = Some(Ended::Clean);
                    self.stream = None;
                    return None;
                }
                Ok(Some(Err(error))) => {
                    self.ended = Some(Ended::Broken(format!("{error:?}")));
                    self.stream = None;
                    return None;
                }
                Ok(Some(Ok(bytes))) => self.buf.extend_from_slice(&bytes),
            }
        }
    }

    pub async fn next(&mut self) -> Option<SseFrame> {
        self.next_within(DEADLINE).await
    }

    /// Reads frames until `stop` says so or `DEADLINE` passes; returns them all.
    pub async fn read_until(&mut self, mut stop: impl FnMut(&[SseFrame]) -> bool) -> Vec<SseFrame> {
        let deadline = Instant::now() + DEADLINE;
        let mut frames = Vec::new();
        while Instant::now() < deadline && !stop(&frames) {
            match self
                .next_within(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Some(frame) => frames.push(frame),
                None => break,
            }
        }
        frames
    }

    /// Bytes received after the last complete frame.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}

fn find_frame_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\n\n")
}

fn parse_frame(raw: Vec<u8>) -> SseFrame {
    let mut frame = SseFrame {
        id: None,
        event: None,
        data: Vec::new(),
        referer: None,
        raw: raw.clone(),
    };
    for line in raw[..raw.len() - 2].split(|b| *b == b'\n') {
        if let Some(v) = line.strip_prefix(b"id: ") {
            frame.id = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = line.strip_prefix(b"event: ") {
            frame.event = Some(String::from_utf8_lossy(v).into_owned());
        } else if let Some(v) = line.strip_prefix(b"data: ") {
            frame.data = v.to_vec();
        } else {
            panic!("unexpected SSE line {:?}", String::from_utf8_lossy(line));
        }
    }
    if frame.is_data_event() {
        frame.referer = serde_json::from_slice::<serde_json::Value>(&frame.data)
            .ok()
            .and_then(|v| {
                v.pointer("/origin/referer")
                    .and_then(|r| r.as_str())
                    .map(str::to_owned)
            });
    }
    frame
}

/// Polls `condition` every 10 ms until it holds or `DEADLINE` passes.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a GET with raw HTTP/1.1 and returns (status line, headers, body) of a non-streaming
/// answer, so the exact reason phrase is visible.
pub async fn raw_get(
    addr: std::net::SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> (String, String, Vec<u8>) {
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, socket.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    (
        status.to_owned(),
        headers.to_lowercase(),
        answer[split + 4..].to_vec(),
    )
}
