//! The physical ceilings of this machine, measured in the same run as the exporter:
//!
//! - **raw**: the simulator's stream read and discarded by a minimal reader (reqwest, the HTTP
//!   stack the exporter uses);
//! - **work**: the same reader framing the SSE events and parsing each data event's JSON with
//!   serde_json (validated, nothing built: `IgnoredAny`), then dropping it — the least any
//!   exporter must do;
//! - **drain** and **end to end**: a plain PUT loop (aws-sdk-s3 over the exporter's HTTP client,
//!   bodies in memory, their `x-amz-checksum-crc32c` computed beforehand, as the exporter sends
//!   it) with the file sizes of that run, against the same S3 server;
//! - **per-byte floor**: in process, on the NDJSON bytes the end-to-end run uploaded, exactly one
//!   MD5, one zstd level-1 compression and one decompression, timed in CPU seconds of the thread
//!   (reading the files is not counted): the least CPU a checked, compressed WAL pays per byte;
//! - **commit**: fsync latency of the WAL's disk (a 4 KiB write then `fdatasync`), and durable
//!   write bandwidth (1 MiB writes, each followed by `fdatasync`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use md5::{Digest, Md5};
use opencti_stream_exporter::secret::Secret;
use opencti_stream_exporter::sink::{BodySource, S3Settings, S3Sink, Sink};
use serde::de::IgnoredAny;

use crate::procs::{ACCESS_KEY, SECRET_KEY, Simulator, TOKEN};

/// What the stream holds: data events (with their dependencies) and the body bytes up to the end
/// of the last one.
#[derive(Debug, Clone, Copy)]
pub struct StreamShape {
    pub events: u64,
    pub bytes: u64,
}

/// A timed read of the stream.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ReadFigure {
    pub seconds: f64,
    pub events: u64,
    pub bytes: u64,
}

impl ReadFigure {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

/// Opens the stream from `0-0` with the exporter's request options.
async fn open(client: &reqwest::Client, sim: &Simulator) -> anyhow::Result<reqwest::Response> {
    let response = client
        .get(sim.stream_url())
        .bearer_auth(TOKEN)
        .header("last-event-id", "0-0")
        .header("listen-delete", "true")
        .header("no-dependencies", "false")
        .header("with-inferences", "false")
        .header("accept", "text/event-stream")
        .send()
        .await
        .context("connecting to the simulator's stream")?;
    if !response.status().is_success() {
        bail!("the simulator answered {}", response.status());
    }
    Ok(response)
}

/// The SSE framing a minimal exporter needs: complete events (`\n\n`-terminated blocks) out of
/// body chunks, keeping only the unfinished tail between chunks.
#[derive(Default)]
struct MinimalFramer {
    buf: Vec<u8>,
    start: usize,
    scanned: usize,
    /// Body bytes consumed before `buf[0]`.
    offset: u64,
}

impl MinimalFramer {
    /// Appends `chunk` and calls `on_event(block, end_offset)` for each complete event.
    fn push(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8], u64)) {
        self.buf.extend_from_slice(chunk);
        loop {
            let from = self.scanned.max(self.start);
            let Some(found) = memchr::memmem::find(&self.buf[from..], b"\n\n") else {
                self.scanned = self.buf.len().saturating_sub(1);
                break;
            };
            let end = from + found + 2;
            on_event(&self.buf[self.start..end], self.offset + end as u64);
            self.start = end;
            self.scanned = end;
        }
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.offset += self.start as u64;
            self.scanned = self.scanned.saturating_sub(self.start);
            self.start = 0;
        }
    }
}

/// The data of `block` when it is a data event (`create`, `update`, `delete`, `merge`).
fn data_of(block: &[u8]) -> Option<&[u8]> {
    let mut is_data_event = false;
    let mut data = None;
    for line in block.split(|&b| b == b'\n') {
        if let Some(name) = line.strip_prefix(b"event: ") {
            is_data_event = matches!(name, b"create" | b"update" | b"delete" | b"merge");
        } else if let Some(value) = line.strip_prefix(b"data: ") {
            data = Some(value);
        }
    }
    if is_data_event { data } else { None }
}

/// Reads the stream until no data event came for two seconds: how many there are and where the
/// last one ends. Also warms the simulator and the page cache up.
pub async fn discover(client: &reqwest::Client, sim: &Simulator) -> anyhow::Result<StreamShape> {
    let mut response = open(client, sim).await?;
    let mut framer = MinimalFramer::default();
    let mut shape = StreamShape {
        events: 0,
        bytes: 0,
    };
    let mut last_data = Instant::now();
    while last_data.elapsed() < Duration::from_secs(2) {
        let chunk = match tokio::time::timeout(Duration::from_millis(250), response.chunk()).await {
            Err(_) => continue,
            Ok(chunk) => chunk.context("reading the stream")?,
        };
        let Some(chunk) = chunk else { break };
        framer.push(&chunk, |block, end| {
            if data_of(block).is_some() {
                shape.events += 1;
                shape.bytes = end;
                last_data = Instant::now();
            }
        });
    }
    if shape.events == 0 {
        bail!("the simulator's stream holds no data event");
    }
    Ok(shape)
}

/// The raw ceiling: reads and discards the stream up to the end of the last data event.
pub async fn raw(
    client: &reqwest::Client,
    sim: &Simulator,
    shape: StreamShape,
) -> anyhow::Result<ReadFigure> {
    let mut response = open(client, sim).await?;
    let mut bytes = 0u64;
    let mut started = None;
    while bytes < shape.bytes {
        let chunk = response
            .chunk()
            .await
            .context("reading the stream")?
            .ok_or_else(|| anyhow!("the stream ended after {bytes} bytes"))?;
        started.get_or_insert_with(Instant::now);
        bytes += chunk.len() as u64;
    }
    Ok(ReadFigure {
        seconds: started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        events: shape.events,
        bytes: shape.bytes,
    })
}

/// The work ceiling: frames the events and parses each data event's JSON, then drops it.
pub async fn work(
    client: &reqwest::Client,
    sim: &Simulator,
    shape: StreamShape,
) -> anyhow::Result<ReadFigure> {
    let mut response = open(client, sim).await?;
    let mut framer = MinimalFramer::default();
    let mut events = 0u64;
    let mut invalid = 0u64;
    let mut started = None;
    while events < shape.events {
        let chunk = response
            .chunk()
            .await
            .context("reading the stream")?
            .ok_or_else(|| anyhow!("the stream ended after {events} events"))?;
        started.get_or_insert_with(Instant::now);
        framer.push(&chunk, |block, _| {
            if let Some(data) = data_of(block) {
                events += 1;
                if serde_json::from_slice::<IgnoredAny>(data).is_err() {
                    invalid += 1;
                }
            }
        });
    }
    if invalid > 0 {
        bail!("{invalid} events of the corpus are not valid JSON");
    }
    Ok(ReadFigure {
        seconds: started.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        events: shape.events,
        bytes: shape.bytes,
    })
}

/// A timed PUT loop.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PutFigure {
    pub seconds: f64,
    pub files: usize,
    pub bytes: u64,
}

impl PutFigure {
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

/// The drain ceiling: one PUT after the other of objects of `sizes` bytes (prefixes of
/// `content`, repeated if needed), to bucket `ceiling` of the S3 server on `port`.
pub async fn put_loop(port: u16, sizes: &[u64], content: Bytes) -> anyhow::Result<PutFigure> {
    if content.is_empty() {
        bail!("no content to upload");
    }
    let settings = S3Settings::new(
        format!("http://127.0.0.1:{port}"),
        "ceiling",
        Secret::new(ACCESS_KEY),
        Secret::new(SECRET_KEY),
    );
    let sink = S3Sink::new(settings).context("building the S3 client")?;
    sink.prepare()
        .await
        .context("creating the ceiling bucket")?;
    let mut bodies = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let body = body_of(&content, size);
        // The header the exporter sends by default, computed before the clock starts.
        let crc = BodySource::from_bytes(body.clone()).checksum_base64();
        bodies.push((body, crc));
    }
    let started = Instant::now();
    for (index, (body, crc)) in bodies.into_iter().enumerate() {
        let length = body.len() as i64;
        sink.client()
            .put_object()
            .bucket("ceiling")
            .key(format!("put_{index}.json"))
            .content_length(length)
            .checksum_crc32_c(crc)
            .content_type("application/octet-stream")
            .body(ByteStream::new(SdkBody::from_body_1_x(
                http_body_util::Full::new(body),
            )))
            .send()
            .await
            .map_err(|err| anyhow!("PUT in the ceiling loop failed: {err:?}"))?;
    }
    Ok(PutFigure {
        seconds: started.elapsed().as_secs_f64(),
        files: sizes.len(),
        bytes: sizes.iter().sum(),
    })
}

fn body_of(content: &Bytes, size: u64) -> Bytes {
    let size = size as usize;
    if size <= content.len() {
        return content.slice(..size);
    }
    let mut body = Vec::with_capacity(size);
    while body.len() < size {
        let take = (size - body.len()).min(content.len());
        body.extend_from_slice(&content[..take]);
    }
    Bytes::from(body)
}

/// The commit ceiling.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FsyncFigure {
    /// Median time of a 4 KiB write plus `fdatasync`, milliseconds.
    pub small_p50_ms: f64,
    /// Durable write bandwidth: 1 MiB writes each followed by `fdatasync`, MB/s.
    pub durable_mb_per_sec: f64,
}

/// Measures the disk holding `dir` (a scratch file, deleted after).
pub fn fsync(dir: &Path) -> anyhow::Result<FsyncFigure> {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)
        .with_context(|| format!("creating the probe {}", path.display()))?;
    let small = vec![b'x'; 4096];
    let mut latencies = Vec::with_capacity(200);
    for _ in 0..200 {
        let started = Instant::now();
        file.write_all(&small).context("writing the probe")?;
        file.sync_data().context("fsyncing the probe")?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let large = vec![b'y'; 1 << 20];
    let started = Instant::now();
    for _ in 0..64 {
        file.write_all(&large).context("writing the probe")?;
        file.sync_data().context("fsyncing the probe")?;
    }
    let durable_mb_per_sec = 64.0 * (1 << 20) as f64 / started.elapsed().as_secs_f64() / 1e6;
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(FsyncFigure {
        small_p50_ms: crate::median(&mut latencies),
        durable_mb_per_sec,
    })
}

/// The per-byte floor: CPU seconds for one MD5, one zstd level-1 compression and one
/// decompression of `bytes` bytes.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FloorFigure {
    pub cpu_seconds: f64,
    pub bytes: u64,
}

/// Measures the per-byte floor over the files at `paths`, one file in memory at a time.
pub fn per_byte_floor(paths: &[PathBuf]) -> anyhow::Result<FloorFigure> {
    let mut cpu_seconds = 0.0;
    let mut bytes = 0;
    for path in paths {
        let plain = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let started = thread_cpu_seconds()?;
        std::hint::black_box(Md5::digest(&plain));
        let compressed = zstd::bulk::compress(&plain, 1).context("compressing")?;
        let back = zstd::bulk::decompress(&compressed, plain.len()).context("decompressing")?;
        std::hint::black_box(back.len());
        cpu_seconds += thread_cpu_seconds()? - started;
        bytes += plain.len() as u64;
    }
    Ok(FloorFigure { cpu_seconds, bytes })
}

/// CPU time of the calling thread.
fn thread_cpu_seconds() -> anyhow::Result<f64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        bail!("clock_gettime: {}", std::io::Error::last_os_error());
    }
    Ok(now.tv_sec as f64 + now.tv_nsec as f64 / 1e9)
}
