//! One SSE connection: the producer task that writes the `connected` event, a recovery if asked,
//! the live log with dependency events, heartbeats and faults into the response body.
//!
//! Speed: live frames are rendered once per chunk of [`CHUNK`] events into one buffer shared by
//! every connection (a bounded cache); a connection that needs no dependency event sends slices
//! of that buffer without copying. Backpressure: the body is a bounded channel that hyper drains
//! as the socket takes bytes; a full channel suspends the producer (and its heartbeats, as the
//! real server skips heartbeats while its socket buffer is full,
//! docs/opencti-protocol.md#heartbeats).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use super::cut::CutSignal;
use super::faults::{Fault, InjectedEvent};
use super::model::{EventKind, IdentityKey, Role, StixId, StixType};
use super::render::{self, frame_head, frame_tail};
use super::rng::{derive, uuid_v4, uuid_v5};
use super::served::{ConnectionEnd, ConnectionRecord, InjectedRecord, ServedEvent, StreamMode};
use super::world::{FileSpec, World};
use super::write::uuid_str;
use super::{Shared, lock};
use crate::ids::{EventId, write_iso};

/// Live events per rendered chunk.
pub const CHUNK: u32 = 512;
/// Largest batch of bytes written at once.
const BATCH_BYTES: usize = 256 << 10;
/// Body channel depth (batches).
const BODY_DEPTH: usize = 4;

/// One live event of a rendered chunk.
#[derive(Debug, Clone, Copy)]
pub struct EventMeta {
    pub id: EventId,
    pub kind: EventKind,
    pub object: u32,
    pub data: StixId,
    deps_start: u32,
    deps_len: u32,
}

/// The frames of events `first..first + meta.len()`, rendered once, with each event's direct
/// references (a connection resolves the dependencies it has not sent yet from them).
#[derive(Debug)]
pub struct RenderedChunk {
    pub first: u32,
    pub bytes: Bytes,
    /// Frame `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    pub offsets: Vec<u32>,
    pub meta: Vec<EventMeta>,
    deps: Vec<u32>,
}

impl RenderedChunk {
    fn deps_of(&self, i: usize) -> &[u32] {
        let m = &self.meta[i];
        &self.deps[m.deps_start as usize..(m.deps_start + m.deps_len) as usize]
    }
}

/// Renders events `first..end` of the live log.
pub fn render_chunk(world: &World, first: u32, end: u32) -> RenderedChunk {
    let n = (end - first) as usize;
    let mut out = Vec::with_capacity(n * 2400);
    let mut offsets = Vec::with_capacity(n + 1);
    let mut meta = Vec::with_capacity(n);
    let mut deps = Vec::new();
    for e in first..end {
        offsets.push(out.len() as u32);
        let data = render::live_frame(&mut out, world, e);
        let event = world.events[e as usize];
        let deps_start = deps.len() as u32;
        if event.kind != EventKind::Delete {
            deps.extend(world.direct_refs(event.object));
        }
        meta.push(EventMeta {
            id: event.id,
            kind: event.kind,
            object: event.object,
            data,
            deps_start,
            deps_len: deps.len() as u32 - deps_start,
        });
    }
    offsets.push(out.len() as u32);
    RenderedChunk {
        first,
        bytes: Bytes::from(out),
        offsets,
        meta,
        deps,
    }
}

/// Full chunks kept for reuse, oldest evicted first when over the byte budget.
#[derive(Default)]
pub struct FrameCache {
    chunks: HashMap<u32, Arc<RenderedChunk>>,
    order: VecDeque<u32>,
    bytes: usize,
}

impl Shared {
    /// The chunk holding event `index` (rendered now if not cached; partial at the log's end).
    fn chunk(&self, index: u32) -> Arc<RenderedChunk> {
        let number = index / CHUNK;
        if let Some(chunk) = lock(&self.cache).chunks.get(&number) {
            return chunk.clone();
        }
        let first = number * CHUNK;
        let chunk = {
            let world = self.world.read().unwrap_or_else(|p| p.into_inner());
            let end = (first + CHUNK).min(world.events.len() as u32);
            Arc::new(render_chunk(&world, first, end))
        };
        if chunk.meta.len() as u32 == CHUNK && self.config.frame_cache_bytes > 0 {
            let mut cache = lock(&self.cache);
            if cache.chunks.insert(number, chunk.clone()).is_none() {
                cache.order.push_back(number);
                cache.bytes += chunk.bytes.len();
            }
            while cache.bytes > self.config.frame_cache_bytes {
                let Some(old) = cache.order.pop_front() else {
                    break;
                };
                if let Some(evicted) = cache.chunks.remove(&old) {
                    cache.bytes -= evicted.bytes.len();
                }
            }
        }
        chunk
    }
}

impl Shared {
    /// Renders every full chunk of the log into the cache (until the budget is used), on two
    /// threads. Blocking.
    pub(crate) fn prerender(&self) {
        let world = self.world.read().unwrap_or_else(|p| p.into_inner());
        let full = world.events.len() as u32 / CHUNK;
        let budget = self.config.frame_cache_bytes;
        let next = std::sync::atomic::AtomicU32::new(0);
        let used = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    loop {
                        let number = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if number >= full
                            || used.load(std::sync::atomic::Ordering::Relaxed) >= budget
                        {
                            break;
                        }
                        let chunk =
                            Arc::new(render_chunk(&world, number * CHUNK, (number + 1) * CHUNK));
                        used.fetch_add(chunk.bytes.len(), std::sync::atomic::Ordering::Relaxed);
                        let mut cache = lock(&self.cache);
                        cache.bytes += chunk.bytes.len();
                        cache.chunks.insert(number, chunk);
                        cache.order.push_back(number);
                    }
                });
            }
        });
    }
}

/// An item of the response body.
pub enum BodyItem {
    Data(Bytes),
    /// Abort the connection: the chunked body never ends properly, as when a network drops.
    Abort,
}

/// The body of an SSE response: whatever the producer task sends.
pub struct SseBody {
    rx: mpsc::Receiver<BodyItem>,
    signal: Arc<CutSignal>,
    cut: bool,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.cut {
            // Never end: the socket is shut down under hyper once its buffer is flushed.
            return Poll::Pending;
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(BodyItem::Data(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(Some(BodyItem::Abort)) => {
                self.cut = true;
                self.signal.request();
                Poll::Pending
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// How a connection must start.
pub struct SessionPlan {
    pub number: u64,
    pub stream_id: String,
    pub mode: StreamMode,
    /// Raw `/stream`: no dependencies.
    pub raw: bool,
    pub listen_delete: bool,
    /// Recovery objects `(updated_at ms, object)` and the log length they were taken at.
    pub recovery: Vec<(u64, u32)>,
    pub head: u32,
    /// Send `no-recover` first (stream with origin filters asked for a recovery).
    pub no_recover: bool,
    /// Send this `error` event and end.
    pub error: Option<String>,
}

/// Starts the producer task of a connection and returns its body.
pub fn start(
    shared: Arc<Shared>,
    record: Arc<Mutex<ConnectionRecord>>,
    plan: SessionPlan,
    signal: Arc<CutSignal>,
) -> SseBody {
    let (tx, rx) = mpsc::channel(BODY_DEPTH);
    let start_position = {
        let world = shared.world.read().unwrap_or_else(|p| p.into_inner());
        let after = plan.mode.live_after();
        world.events.partition_point(|e| e.id <= after) as u32
    };
    let objects = shared
        .world
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .objects
        .len();
    let last_id = match plan.mode {
        StreamMode::Live { after } => after,
        StreamMode::Recovery { from, .. } => from,
    };
    let session = Session {
        heartbeat: shared.config.heartbeat,
        next_heartbeat: Instant::now() + shared.config.heartbeat,
        shared,
        record,
        tx,
        sent: vec![0u64; objects.div_ceil(64) + 1],
        last_id,
        position: start_position,
        recovery_index: 0,
        written: 0,
        started: Instant::now(),
        paced: 0,
        current: None,
        after_dependency: false,
        deferred_injections: Vec::new(),
        plan,
    };
    tokio::spawn(session.run());
    SseBody {
        rx,
        signal,
        cut: false,
    }
}

struct Session {
    shared: Arc<Shared>,
    record: Arc<Mutex<ConnectionRecord>>,
    tx: mpsc::Sender<BodyItem>,
    plan: SessionPlan,
    /// Objects sent on this connection (the per-connection dependency cache).
    sent: Vec<u64>,
    /// The channel's last id (what heartbeats carry).
    last_id: EventId,
    /// Next live event index.
    position: u32,
    recovery_index: usize,
    /// Data events written.
    written: u64,
    heartbeat: Duration,
    next_heartbeat: Instant,
    started: Instant,
    paced: u64,
    /// The chunk being read.
    current: Option<Arc<RenderedChunk>>,
    /// The last data frame written was a dependency (its event has not been written yet).
    after_dependency: bool,
    /// An injection that fired between dependencies and their event: written after the event,
    /// so an injected event never sits inside such a group with an older id.
    deferred_injections: Vec<InjectedEvent>,
}

/// Bytes and served events gathered before one write.
#[derive(Default)]
struct Batch {
    parts: Vec<Bytes>,
    scratch: Vec<u8>,
    events: Vec<ServedEvent>,
    frames: u64,
    bytes: usize,
    heartbeats: u64,
    metrics: u64,
    heartbeat_id: Option<EventId>,
    injected: Vec<InjectedRecord>,
}

impl Batch {
    fn seal_scratch(&mut self) {
        if !self.scratch.is_empty() {
            self.parts
                .push(Bytes::from(std::mem::take(&mut self.scratch)));
        }
    }
}

enum Stop {
    Closed,
    Shutdown,
}

impl Session {
    fn is_sent(&self, object: u32) -> bool {
        self.sent
            .get(object as usize / 64)
            .is_some_and(|w| w & (1 << (object % 64)) != 0)
    }

    fn mark_sent(&mut self, object: u32) {
        let word = object as usize / 64;
        if word >= self.sent.len() {
            self.sent.resize(word + 1, 0);
        }
        self.sent[word] |= 1 << (object % 64);
    }

    async fn run(mut self) {
        let end = match self.serve().await {
            Ok(end) => end,
            Err(Stop::Closed) => ConnectionEnd::ClientClosed,
            Err(Stop::Shutdown) => ConnectionEnd::Shutdown,
        };
        lock(&self.record).end = Some(end);
    }

    async fn write(&mut self, mut batch: Batch) -> Result<(), Stop> {
        batch.seal_scratch();
        for part in batch.parts.drain(..) {
            tokio::select! {
                sent = self.tx.send(BodyItem::Data(part)) => sent.map_err(|_| Stop::Closed)?,
                () = self.shared.shutdown.cancelled() => return Err(Stop::Shutdown),
            }
        }
        self.written += batch.frames;
        self.shared.counters.add(batch.frames, batch.bytes as u64);
        let mut record = lock(&self.record);
        record.data_events += batch.frames;
        record.bytes += batch.bytes as u64;
        record.heartbeats += batch.heartbeats;
        record.consumer_metrics += batch.metrics;
        if batch.heartbeat_id.is_some() {
            record.last_heartbeat_id = batch.heartbeat_id;
        }
        record.injected.append(&mut batch.injected);
        if self.shared.config.record_events {
            record.events.append(&mut batch.events);
        }
        Ok(())
    }

    async fn serve(&mut self) -> Result<ConnectionEnd, Stop> {
        let mut batch = Batch::default();
        self.connected_frame(&mut batch.scratch);
        if let Some(message) = self.plan.error.clone() {
            frame_head(&mut batch.scratch, None, "error");
            batch.scratch.extend_from_slice(br#"{"stream":"#);
            super::write::json_str(&mut batch.scratch, &self.plan.stream_id);
            batch.scratch.extend_from_slice(br#","message":"#);
            super::write::json_str(&mut batch.scratch, &message);
            batch.scratch.push(b'}');
            frame_tail(&mut batch.scratch);
            self.write(batch).await?;
            return Ok(ConnectionEnd::Refused);
        }
        if self.plan.no_recover {
            let id = self.synthetic_id();
            frame_head(&mut batch.scratch, Some(id), "no-recover");
            batch.scratch.extend_from_slice(br#"{"stream":"#);
            super::write::json_str(&mut batch.scratch, &self.plan.stream_id);
            batch.scratch.extend_from_slice(
                br#","message":"Recovery is not available for live streams with origin filters","resume_from":""#,
            );
            batch
                .scratch
                .extend_from_slice(self.last_id.to_string().as_bytes());
            batch.scratch.extend_from_slice(b"\"}");
            frame_tail(&mut batch.scratch);
        }
        self.write(batch).await?;
        let mut armed = self.shared.faults.armed_changes();
        let mut log_len = self.shared.log_len.subscribe();
        loop {
            if Instant::now() >= self.next_heartbeat {
                self.heartbeat().await?;
            }
            if let Some(end) = self.fire_due_fault(0).await? {
                return Ok(end);
            }
            let budget = self.shared.faults.budget().unwrap_or(u64::MAX);
            let allowance = self.pace_allowance();
            // Deferred injections go out right after the event their dependencies belong to.
            let limit = if self.deferred_injections.is_empty() {
                budget.min(allowance)
            } else {
                budget.min(allowance).min(1)
            };
            let idle = self.recovery_index >= self.plan.recovery.len()
                && u64::from(self.position) >= *log_len.borrow_and_update();
            if limit > 0 && !idle {
                let batch = self.fill(limit);
                let frames = batch.frames;
                self.paced += frames;
                self.write(batch).await?;
                if !self.after_dependency {
                    for kind in std::mem::take(&mut self.deferred_injections) {
                        self.inject(kind).await?;
                    }
                }
                if let Some(end) = self.fire_due_fault(frames).await? {
                    return Ok(end);
                }
                continue;
            }
            // Nothing to write now: wait for new events, a heartbeat, a fault, the pacer.
            if idle {
                self.advance_idle_id();
            }
            let pace_wait = if allowance == 0 && !idle {
                Duration::from_secs_f64(
                    1.0 / f64::from(self.shared.config.rate.unwrap_or(1).max(1)),
                )
            } else {
                Duration::from_secs(3600)
            };
            let deadline = self.next_heartbeat.min(Instant::now() + pace_wait);
            tokio::select! {
                _ = log_len.changed() => {}
                _ = armed.changed() => {}
                () = tokio::time::sleep_until(deadline.into()) => {}
                () = self.tx.closed() => return Err(Stop::Closed),
                () = self.shared.shutdown.cancelled() => return Err(Stop::Shutdown),
            }
        }
    }

    fn pace_allowance(&self) -> u64 {
        match self.shared.config.rate {
            None => u64::MAX,
            Some(rate) => {
                let due = (self.started.elapsed().as_secs_f64() * f64::from(rate)) as u64 + 1;
                due.saturating_sub(self.paced)
            }
        }
    }

    /// An idle connection on a wall-clock simulator advances its id to `<now>-0`
    /// (docs/opencti-protocol.md#event-ids). The clock lock makes this and `append_live_events`
    /// exclusive, so appended ids stay greater.
    fn advance_idle_id(&mut self) {
        if !self.shared.config.clock.wall_clock_idle_ids {
            return;
        }
        let mut clock = lock(&self.shared.clock);
        if clock.log_len as u32 != self.position || self.recovery_index < self.plan.recovery.len() {
            return;
        }
        let now = crate::ids::now_ms();
        if now > self.last_id.ms {
            self.last_id = EventId::new(now, 0);
            clock.high_water = clock.high_water.max(self.last_id);
        }
    }

    /// The id of a synthetic event (`no-recover`): `<now>-0` on a wall clock, else the last id.
    fn synthetic_id(&mut self) -> EventId {
        if !self.shared.config.clock.wall_clock_idle_ids {
            return self.last_id;
        }
        let mut clock = lock(&self.shared.clock);
        let id = EventId::new(crate::ids::now_ms(), 0);
        clock.high_water = clock.high_water.max(id);
        id
    }

    fn connected_frame(&self, out: &mut Vec<u8>) {
        let world = self.shared.world.read().unwrap_or_else(|p| p.into_inner());
        let first = world.events.first().map(|e| e.id).unwrap_or_default();
        let last = world.events.last().map(|e| e.id).unwrap_or_default();
        frame_head(out, None, "connected");
        out.extend_from_slice(br#"{"lastEventId":""#);
        out.extend_from_slice(last.to_string().as_bytes());
        out.extend_from_slice(br#"","firstEventId":""#);
        out.extend_from_slice(first.to_string().as_bytes());
        out.extend_from_slice(br#"","firstEventDate":"#);
        super::write::iso_str(out, first.ms);
        out.extend_from_slice(br#","lastEventDate":"#);
        super::write::iso_str(out, last.ms);
        out.extend_from_slice(br#","streamSize":"#);
        super::write::num(out, world.events.len() as u64);
        out.extend_from_slice(br#","connectionId":"#);
        uuid_str(
            out,
            uuid_v4(derive(self.shared.config.seed, 0xC0 + self.plan.number)),
        );
        out.push(b'}');
        frame_tail(out);
    }

    async fn heartbeat(&mut self) -> Result<(), Stop> {
        let mut batch = Batch::default();
        let id = self.last_id;
        frame_head(&mut batch.scratch, Some(id), "heartbeat");
        batch.scratch.push(b'"');
        write_iso(&mut batch.scratch, id.ms);
        batch.scratch.push(b'"');
        frame_tail(&mut batch.scratch);
        batch.heartbeats = 1;
        batch.heartbeat_id = Some(id);
        if self.shared.config.consumer_metrics {
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let rate = (self.written as f64 / secs * 100.0).round() / 100.0;
            frame_head(&mut batch.scratch, Some(id), "consumer_metrics");
            batch.scratch.extend_from_slice(
                format!(
                    r#"{{"deliveryRate":{rate},"processingRate":{rate},"resolutionRate":0,"productionRate":{rate},"timeLag":0,"estimatedOutOfDepth":0}}"#
                )
                .as_bytes(),
            );
            frame_tail(&mut batch.scratch);
            batch.metrics = 1;
        }
        self.next_heartbeat = Instant::now() + self.heartbeat;
        self.write(batch).await
    }

    /// Gathers up to `limit` data frames (and at most [`BATCH_BYTES`]).
    fn fill(&mut self, limit: u64) -> Batch {
        let mut batch = Batch::default();
        if self.recovery_index < self.plan.recovery.len() {
            self.fill_recovery(&mut batch, limit);
        } else {
            self.fill_live(&mut batch, limit);
        }
        batch
    }

    fn push_event(&mut self, batch: &mut Batch, key: IdentityKey, bytes: usize) {
        self.after_dependency = key.role == Role::Dependency;
        batch.frames += 1;
        batch.bytes += bytes;
        if self.shared.config.record_events {
            batch.events.push(ServedEvent {
                key,
                bytes: bytes as u32,
                injected: None,
            });
        }
    }

    fn fill_recovery(&mut self, batch: &mut Batch, limit: u64) {
        let shared = self.shared.clone();
        let world = shared.world.read().unwrap_or_else(|p| p.into_inner());
        let head = self.plan.head;
        let mut deps = Vec::new();
        while batch.frames < limit && batch.scratch.len() < BATCH_BYTES {
            let Some(&(ms, object)) = self.plan.recovery.get(self.recovery_index) else {
                break;
            };
            let id = EventId::new(ms, 0);
            deps.clear();
            world.unsent_dependencies(object, &|o| self.is_sent(o), &mut deps);
            for &dep in &deps {
                if batch.frames >= limit {
                    return;
                }
                if !self.is_sent(dep) {
                    let start = batch.scratch.len();
                    let data = render::short_frame(
                        &mut batch.scratch,
                        &world,
                        dep,
                        head,
                        id,
                        "init-dependencies",
                    );
                    self.mark_sent(dep);
                    let key = IdentityKey {
                        id,
                        event: EventKind::Create,
                        role: Role::Dependency,
                        data,
                    };
                    self.push_event(batch, key, batch.scratch.len() - start);
                }
            }
            if batch.frames >= limit {
                return;
            }
            let start = batch.scratch.len();
            let data =
                render::short_frame(&mut batch.scratch, &world, object, head, id, "init-create");
            self.mark_sent(object);
            self.last_id = id;
            self.recovery_index += 1;
            let key = IdentityKey {
                id,
                event: EventKind::Create,
                role: Role::Recovery,
                data,
            };
            self.push_event(batch, key, batch.scratch.len() - start);
        }
    }

    /// The chunk holding live event `position`: the one this connection is reading if it
    /// covers it (so a chunk is rendered at most once per connection even without a cache).
    fn chunk_at(&mut self, position: u32) -> Arc<RenderedChunk> {
        if let Some(chunk) = &self.current {
            let end = chunk.first + chunk.meta.len() as u32;
            if chunk.first <= position && position < end {
                return chunk.clone();
            }
        }
        let chunk = self.shared.chunk(position);
        self.current = Some(chunk.clone());
        chunk
    }

    fn fill_live(&mut self, batch: &mut Batch, limit: u64) {
        let shared = self.shared.clone();
        let len = *shared.log_len.borrow() as u32;
        while batch.frames < limit && batch.bytes < BATCH_BYTES && self.position < len {
            let chunk = self.chunk_at(self.position);
            // Taken only when a dependency must be rendered, and released before the next
            // chunk is fetched (which may take the lock again).
            let mut world = None;
            let mut run: Option<(usize, usize)> = None;
            let mut i = (self.position - chunk.first) as usize;
            while i < chunk.meta.len() && batch.frames < limit && batch.bytes < BATCH_BYTES {
                let meta = chunk.meta[i];
                if meta.kind == EventKind::Delete && !self.plan.listen_delete {
                    // Filtered out for this consumer; the channel id still moves past it.
                    self.last_id = meta.id;
                    self.position += 1;
                    i += 1;
                    continue;
                }
                if !self.plan.raw && chunk.deps_of(i).iter().any(|&r| !self.is_sent(r)) {
                    let w = world.get_or_insert_with(|| {
                        shared.world.read().unwrap_or_else(|p| p.into_inner())
                    });
                    let mut deps = Vec::new();
                    w.unsent_dependencies(meta.object, &|o| self.is_sent(o), &mut deps);
                    for dep in deps {
                        if batch.frames >= limit {
                            break;
                        }
                        if let Some((a, b)) = run.take() {
                            batch.parts.push(chunk.bytes.slice(a..b));
                        }
                        let w = world.get_or_insert_with(|| {
                            shared.world.read().unwrap_or_else(|p| p.into_inner())
                        });
                        let start = batch.scratch.len();
                        let data = render::short_frame(
                            &mut batch.scratch,
                            w,
                            dep,
                            chunk.first + i as u32 + 1,
                            meta.id,
                            "init-dependencies",
                        );
                        self.mark_sent(dep);
                        let key = IdentityKey {
                            id: meta.id,
                            event: EventKind::Create,
                            role: Role::Dependency,
                            data,
                        };
                        self.push_event(batch, key, batch.scratch.len() - start);
                        batch.seal_scratch();
                    }
                    if batch.frames >= limit {
                        break;
                    }
                }
                let (a, b) = (chunk.offsets[i] as usize, chunk.offsets[i + 1] as usize);
                run = match run {
                    Some((ra, rb)) if rb == a => Some((ra, b)),
                    Some((ra, rb)) => {
                        batch.parts.push(chunk.bytes.slice(ra..rb));
                        Some((a, b))
                    }
                    None => Some((a, b)),
                };
                self.mark_sent(meta.object);
                self.last_id = meta.id;
                self.position += 1;
                let key = IdentityKey {
                    id: meta.id,
                    event: meta.kind,
                    role: Role::Live,
                    data: meta.data,
                };
                self.push_event(batch, key, b - a);
                i += 1;
            }
            if let Some((a, b)) = run.take() {
                batch.parts.push(chunk.bytes.slice(a..b));
            }
        }
    }

    /// Counts `written` frames against the fault queue and carries out a fault that is due.
    /// `Some(end)` when the connection must end.
    async fn fire_due_fault(&mut self, written: u64) -> Result<Option<ConnectionEnd>, Stop> {
        let Some(fault) = self
            .shared
            .faults
            .advance(written, self.plan.number, self.written)
        else {
            return Ok(None);
        };
        match fault {
            Fault::Drop | Fault::Refuse { .. } => {
                // Recorded first: the peer may see the cut before this task runs again.
                lock(&self.record).end = Some(ConnectionEnd::Fault(fault));
                let _ = self.tx.send(BodyItem::Abort).await;
                Ok(Some(ConnectionEnd::Fault(fault)))
            }
            Fault::CutMidEvent => {
                let (id, frame) = self.next_frame_preview();
                let half = Bytes::from(frame[..frame.len() / 2].to_vec());
                lock(&self.record).end = Some(ConnectionEnd::CutMidEvent { id });
                let _ = self.tx.send(BodyItem::Data(half)).await;
                let _ = self.tx.send(BodyItem::Abort).await;
                Ok(Some(ConnectionEnd::CutMidEvent { id }))
            }
            Fault::Stall { duration } => {
                let mut releases = self.shared.faults.releases();
                releases.borrow_and_update();
                let until = duration.map(|d| Instant::now() + d);
                let sleep = async {
                    match until {
                        Some(t) => tokio::time::sleep_until(t.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = sleep => {}
                    _ = releases.changed() => {}
                    () = self.tx.closed() => return Err(Stop::Closed),
                    () = self.shared.shutdown.cancelled() => return Err(Stop::Shutdown),
                }
                self.next_heartbeat = Instant::now() + self.heartbeat;
                self.started = Instant::now();
                self.paced = 0;
                Ok(None)
            }
            Fault::Inject(kind) if self.after_dependency => {
                self.deferred_injections.push(kind);
                Ok(None)
            }
            Fault::Inject(kind) => {
                self.inject(kind).await?;
                Ok(None)
            }
        }
    }

    /// The next data frame this connection would write (for a cut), or a heartbeat when idle.
    fn next_frame_preview(&self) -> (EventId, Vec<u8>) {
        let mut out = Vec::new();
        if let Some(&(ms, object)) = self.plan.recovery.get(self.recovery_index) {
            let world = self.shared.world.read().unwrap_or_else(|p| p.into_inner());
            let id = EventId::new(ms, 0);
            render::short_frame(&mut out, &world, object, self.plan.head, id, "init-create");
            return (id, out);
        }
        if self.position < *self.shared.log_len.borrow() as u32 {
            let chunk = match &self.current {
                Some(c)
                    if c.first <= self.position
                        && self.position < c.first + c.meta.len() as u32 =>
                {
                    c.clone()
                }
                _ => self.shared.chunk(self.position),
            };
            let i = (self.position - chunk.first) as usize;
            let (a, b) = (chunk.offsets[i] as usize, chunk.offsets[i + 1] as usize);
            return (chunk.meta[i].id, chunk.bytes[a..b].to_vec());
        }
        frame_head(&mut out, Some(self.last_id), "heartbeat");
        out.push(b'"');
        write_iso(&mut out, self.last_id.ms);
        out.push(b'"');
        frame_tail(&mut out);
        (self.last_id, out)
    }

    async fn inject(&mut self, kind: InjectedEvent) -> Result<(), Stop> {
        let id = self.last_id;
        let seed = derive(
            self.shared.config.seed,
            0x1_0000_0000 + self.shared.counters.next_injection(),
        );
        let mut batch = Batch::default();
        let out = &mut batch.scratch;
        let data_id = StixId {
            ty: StixType::Malware,
            uuid: uuid_v5(seed),
        };
        let event = match kind {
            InjectedEvent::InvalidJson => {
                frame_head(out, Some(id), "create");
                out.extend_from_slice(br#"{"version":"4","type":"create","data":{"id":""#);
                data_id.write(out);
                out.extend_from_slice(br#"","name":"truncated"#);
                frame_tail(out);
                "create"
            }
            InjectedEvent::NonUtf8 => {
                frame_head(out, Some(id), "create");
                out.extend_from_slice(br#"{"version":"4","type":"create","scope":"external","message":"creates a Malware `"#);
                out.extend_from_slice(b"\xff\xfe\xc3\x28");
                out.extend_from_slice(br#"`","data":{"id":""#);
                data_id.write(out);
                out.extend_from_slice(br#"","spec_version":"2.1","type":"malware","name":""#);
                out.extend_from_slice(b"\xc0\xaf");
                out.extend_from_slice(br#""}}"#);
                frame_tail(out);
                "create"
            }
            InjectedEvent::UnknownEventType => {
                frame_head(out, Some(id), "sighting-burst");
                out.extend_from_slice(
                    br#"{"version":"4","type":"sighting-burst","scope":"external","data":{"id":""#,
                );
                data_id.write(out);
                out.extend_from_slice(br#"","spec_version":"2.1","type":"malware"}}"#);
                frame_tail(out);
                "sighting-burst"
            }
            InjectedEvent::Huge { bytes } => {
                let data = render::injected_report(out, id, seed, bytes.saturating_sub(1200), &[]);
                let len = out.len();
                self.push_injected(&mut batch, id, data, len, kind);
                return self.write(batch).await;
            }
            InjectedEvent::HostileFileUris => {
                let data = render::injected_report(out, id, seed, 300, &render::HOSTILE_URIS);
                let len = out.len();
                self.push_injected(&mut batch, id, data, len, kind);
                return self.write(batch).await;
            }
            InjectedEvent::ManyFiles { count, size } => {
                let uris = self.register_injected_files(seed, count, size);
                let uris: Vec<&str> = uris.iter().map(String::as_str).collect();
                let data = render::injected_report(out, id, seed, 300, &uris);
                let len = out.len();
                self.push_injected(&mut batch, id, data, len, kind);
                return self.write(batch).await;
            }
            InjectedEvent::NestedArrays { bytes } => {
                frame_head(out, Some(id), "create");
                out.extend_from_slice(br#"{"version":"4","type":"create","data":"#);
                out.resize(out.len() + bytes, b'[');
                frame_tail(out);
                "create"
            }
        };
        batch.injected.push(InjectedRecord {
            id,
            event: event.to_owned(),
            kind,
            after_events: self.written,
        });
        self.write(batch).await
    }

    /// Registers `count` files of `size` bytes for an injected event; their `/storage/get` uris.
    fn register_injected_files(&self, seed: u64, count: u32, size: usize) -> Vec<String> {
        let mut world = self
            .shared
            .world
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (0..count)
            .map(|n| {
                let path = format!("import/injected/{seed:016x}/{n}.bin");
                world.files.insert(
                    path.clone(),
                    FileSpec {
                        name: "injected.bin",
                        mime: "application/octet-stream",
                        size,
                        seed: derive(seed, u64::from(n)),
                    },
                );
                format!("/storage/get/{path}")
            })
            .collect()
    }

    fn push_injected(
        &self,
        batch: &mut Batch,
        id: EventId,
        data: StixId,
        len: usize,
        kind: InjectedEvent,
    ) {
        batch.bytes += len;
        let key = IdentityKey {
            id,
            event: EventKind::Create,
            role: Role::Live,
            data,
        };
        // Recorded even when event recording is off: the oracle needs to know about it.
        batch.events.push(ServedEvent {
            key,
            bytes: len as u32,
            injected: Some(kind),
        });
        if !self.shared.config.record_events {
            lock(&self.record).events.append(&mut batch.events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimulatorConfig;

    /// Rendering speed, for tuning: `cargo test --release --lib render_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "prints a measurement"]
    fn render_speed() {
        let config = SimulatorConfig {
            live_events: 200_000,
            knowledge_base: 2_000,
            ..SimulatorConfig::default()
        };
        let started = Instant::now();
        let world = World::new(&config);
        println!("generate: {:?}", started.elapsed());
        let started = Instant::now();
        let mut bytes = 0;
        for first in (0..200_000).step_by(CHUNK as usize) {
            bytes += render_chunk(&world, first, (first + CHUNK).min(200_000))
                .bytes
                .len();
        }
        let elapsed = started.elapsed();
        println!(
            "render: {:?} = {:.2} us/event, {} bytes/event",
            elapsed,
            elapsed.as_secs_f64() * 1e6 / 200_000.0,
            bytes / 200_000
        );
    }

    /// Corpus statistics, for the documentation:
    /// `cargo test --release --lib corpus_stats -- --ignored --nocapture`.
    #[test]
    #[ignore = "prints statistics"]
    fn corpus_stats() {
        let n = 100_000u32;
        let config = SimulatorConfig {
            live_events: u64::from(n),
            knowledge_base: 2_000,
            ..SimulatorConfig::default()
        };
        let world = World::new(&config);
        let mut sizes = Vec::new();
        let mut kinds = std::collections::BTreeMap::new();
        let (mut id_changes, mut with_files, mut non_ascii) = (0, 0, 0);
        for first in (0..n).step_by(CHUNK as usize) {
            let chunk = render_chunk(&world, first, (first + CHUNK).min(n));
            for (i, meta) in chunk.meta.iter().enumerate() {
                let frame = &chunk.bytes[chunk.offsets[i] as usize..chunk.offsets[i + 1] as usize];
                sizes.push(frame.len());
                *kinds.entry(meta.kind.name()).or_insert(0u32) += 1;
                let text = String::from_utf8_lossy(frame);
                id_changes += u32::from(text.contains(r#""op":"replace","path":"/id""#));
                with_files += u32::from(text.contains("/storage/get/"));
                non_ascii += u32::from(!frame.is_ascii());
            }
        }
        sizes.sort_unstable();
        let pct = |p: f64| sizes[((sizes.len() - 1) as f64 * p) as usize];
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        println!("events {n}: {kinds:?}");
        println!(
            "updates changing /id {id_changes}, events with files {with_files}, non-ASCII {non_ascii}"
        );
        println!(
            "frame bytes: mean {mean}, p50 {}, p90 {}, p99 {}, max {}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
        println!(
            "objects {}, files {}",
            world.objects.len(),
            world.files.len()
        );
    }
}
