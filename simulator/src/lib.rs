//! A simulated OpenCTI platform for tests, benchmarks and the demo: an HTTP server that behaves
//! like OpenCTI's live stream (docs/opencti-protocol.md#live-stream-http,
//! docs/opencti-protocol.md#sse-wire-format), `/storage/get`
//! (docs/opencti-protocol.md#attached-files) and `/graphql` register/ping
//! (docs/opencti-protocol.md#state-storage), serving a generated, deterministic corpus, with fault
//! injection, a log of what it served, and an [`oracle`] that checks an export against that log.
//!
//! # What it guarantees
//! * **Protocol.** Framing of docs/opencti-protocol.md#sse-framing (`id:` / `event:` / one `data:`
//!   line of JSON / blank line, LF), headers of docs/opencti-protocol.md#auth-and-errors, auth and
//!   error statuses with the message in the reason phrase and an empty body, `from` /
//!   `Last-Event-ID` (query wins) served *strictly after*, `0`/`0-0` from the beginning, first-run
//!   recovery when `recover` > start (ids `<updated_at ms>-0`, repeated when objects share a
//!   millisecond, ordered by `updated_at` then internal id), dependency events before the event
//!   that needs them with the same id (per-connection cache, empty on every new connection),
//!   heartbeats plus `consumer_metrics` with the channel's last id.
//! * **Ids.** Live-log ids are strictly increasing, also across [`SimulatorHandle::append_live_events`],
//!   and always greater than any synthetic (wall-clock) id already sent. Injected events reuse
//!   the connection's last id and never shift the ids of the log.
//! * **Determinism.** For a seed and configuration, every data event is byte-identical on every
//!   run and every connection (only heartbeats, `consumer_metrics` values and, when enabled,
//!   wall-clock ids vary).
//! * **Speed.** Live frames are rendered once per chunk (about 1.8 µs of CPU per event) and
//!   shared; a connection sends slices of them without copying, and its producer waits on a
//!   bounded body channel (backpressure). Measured with
//!   `cargo bench -p opencti-simulator --bench simulator_serve`
//!   (200,000 events of 2.2 KB, a plain reader in the same process, 2 shared cores): about
//!   400,000 events/s (≈ 1 GB/s) pre-rendered ([`SimulatorConfig::prerender`]), about
//!   210,000 events/s rendering while serving.
//!
//! # Independence
//! This crate depends on nothing of the exporter's (not the exporter crate, not `wal`): its ids,
//! dates and token are its own (`ids`, [`Token`]), so the [`oracle`] that judges an export shares
//! no code with what it judges. The exporter uses it for its `demo` and `simulate` commands
//! (behind its `simulator` feature) and in its tests and benchmarks.
//!
//! # Layout
//! `config` (what to simulate) · `world` (knowledge base and live log skeleton) · `render`
//! (OpenCTI's JSON shapes) · `stream` (one SSE connection) · `server` (routes, auth, storage,
//! graphql) · `faults` · `served` (the served log) · `oracle` · `cli` (`simulate` subcommand) ·
//! `ids` (stream ids and dates) · `token`.

mod cli;
mod config;
mod cut;
mod faults;
mod graphql;
mod ids;
mod model;
pub mod oracle;
mod render;
mod rng;
mod served;
mod server;
mod storage;
mod stream;
mod text;
mod token;
mod world;
mod write;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use cli::{SimulateArgs, run};
pub use config::{
    DEFAULT_STREAM_ID, EventMix, IdClock, RecoverWithoutStart, STOPPED_STREAM_ID, SimulatorConfig,
    StreamDef,
};
pub use faults::{
    FailStatus, Fault, FaultControl, FaultPlan, FaultPlanConfig, FiredFault, InjectedEvent,
    PlanStep,
};
pub use graphql::GraphqlCall;
pub use ids::{EventId, iso, parse_position};
pub use model::{EventKind, IdentityKey, Role, StixId, StixType};
pub use oracle::{Expectation, OracleReport};
pub use render::{HOSTILE_URIS, OCTI_EXT, SCO_EXT};
pub use served::{
    ConnectionEnd, ConnectionRecord, InjectedRecord, RequestInfo, ServedEvent, ServedLog,
    StreamMode,
};
pub use token::Token;

/// A request to `/storage/get/…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRequest {
    /// The request path exactly as received (still percent-encoded).
    pub path: String,
    /// The query string.
    pub query: Option<String>,
    /// A valid token was given.
    pub authorized: bool,
    /// The status answered.
    pub status: u16,
}

/// Counters readable cheaply while the simulator runs.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    data_events: AtomicU64,
    bytes: AtomicU64,
    connections: AtomicU64,
    injections: AtomicU64,
}

impl Counters {
    fn add(&self, events: u64, bytes: u64) {
        self.data_events.fetch_add(events, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn next_connection(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn next_injection(&self) -> u64 {
        self.injections.fetch_add(1, Ordering::Relaxed)
    }
}

/// Id bookkeeping shared by appends and idle heartbeats (one lock, so they never interleave).
#[derive(Debug, Default)]
pub(crate) struct ClockState {
    /// Highest synthetic id sent (wall-clock heartbeats, `no-recover`).
    high_water: EventId,
    /// Live events in the log.
    log_len: u64,
}

/// State shared by the server tasks and the handle.
pub(crate) struct Shared {
    config: SimulatorConfig,
    world: RwLock<world::World>,
    clock: Mutex<ClockState>,
    log_len: watch::Sender<u64>,
    cache: Mutex<stream::FrameCache>,
    faults: FaultControl,
    served: Mutex<Vec<Arc<Mutex<ConnectionRecord>>>>,
    storage_requests: Mutex<Vec<StorageRequest>>,
    connector: Mutex<graphql::ConnectorState>,
    counters: Counters,
    shutdown: CancellationToken,
}

/// Locks a mutex, going on after a panic elsewhere (every critical section leaves its data
/// consistent: single pushes, pops and field updates).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Errors starting a simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimulatorError {
    /// The listening socket could not be bound.
    #[error("binding the simulator to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration cannot be served.
    #[error("invalid simulator configuration: {0}")]
    Config(String),
}

/// Starts simulators.
pub struct Simulator;

impl Simulator {
    /// Generates the corpus and starts serving on `bind` (use `127.0.0.1:0` for a free port).
    /// Must be called inside a tokio runtime; the server runs on it until
    /// [`SimulatorHandle::shutdown`] (or the handle is dropped, which also stops it).
    /// Generating costs about 1 µs per live event, rendering is deferred until served.
    pub async fn start(
        config: SimulatorConfig,
        bind: SocketAddr,
    ) -> Result<SimulatorHandle, SimulatorError> {
        if config.live_events > u64::from(u32::MAX / 2)
            || config.knowledge_base > u64::from(u32::MAX / 4)
        {
            return Err(SimulatorError::Config(
                "live_events or knowledge_base is too large".into(),
            ));
        }
        if config.heartbeat.is_zero() {
            return Err(SimulatorError::Config(
                "heartbeat period must be positive".into(),
            ));
        }
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| SimulatorError::Bind { addr: bind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SimulatorError::Bind { addr: bind, source })?;
        let config_for_world = config.clone();
        let world = tokio::task::spawn_blocking(move || world::World::new(&config_for_world))
            .await
            .map_err(|e| SimulatorError::Config(format!("generating the corpus failed: {e}")))?;
        let log_len = world.events.len() as u64;
        let shared = Arc::new(Shared {
            config,
            world: RwLock::new(world),
            clock: Mutex::new(ClockState {
                high_water: EventId::ZERO,
                log_len,
            }),
            log_len: watch::channel(log_len).0,
            cache: Mutex::new(stream::FrameCache::default()),
            faults: FaultControl::new(),
            served: Mutex::new(Vec::new()),
            storage_requests: Mutex::new(Vec::new()),
            connector: Mutex::new(graphql::ConnectorState::default()),
            counters: Counters::default(),
            shutdown: CancellationToken::new(),
        });
        if shared.config.prerender {
            let rendering = shared.clone();
            tokio::task::spawn_blocking(move || rendering.prerender())
                .await
                .map_err(|e| {
                    SimulatorError::Config(format!("pre-rendering the corpus failed: {e}"))
                })?;
        }
        let task = tokio::spawn(server::accept_loop(shared.clone(), listener));
        Ok(SimulatorHandle {
            shared,
            addr,
            task: Some(task),
        })
    }
}

/// A running simulator. Dropping it stops the server (as [`SimulatorHandle::shutdown`] does,
/// without waiting).
pub struct SimulatorHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SimulatorHandle {
    /// The base URL, `http://<addr>` (what `OPENCTI_URL` is set to).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of the first configured running stream, `{url}/stream/{id}`.
    pub fn stream_url(&self) -> String {
        let id = self
            .shared
            .config
            .streams
            .iter()
            .find(|s| !s.stopped)
            .map(|s| s.id.as_str())
            .unwrap_or(DEFAULT_STREAM_ID);
        format!("{}/stream/{id}", self.url())
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimulatorConfig {
        &self.shared.config
    }

    /// The token clients must send (`None`: public).
    pub fn token(&self) -> Option<&Token> {
        self.shared.config.token.as_ref()
    }

    /// The fault control (a clone; all clones act on this simulator).
    pub fn faults(&self) -> FaultControl {
        self.shared.faults.clone()
    }

    /// A snapshot of the served log (copies every recorded event: for tests, not hot loops;
    /// poll [`SimulatorHandle::served_events`] instead).
    pub fn served(&self) -> ServedLog {
        let records = lock(&self.shared.served).clone();
        ServedLog {
            connections: records.iter().map(|r| lock(r).clone()).collect(),
        }
    }

    /// Data events written so far over every connection (cheap).
    pub fn served_events(&self) -> u64 {
        self.shared.counters.data_events.load(Ordering::Relaxed)
    }

    /// Body bytes of data events written so far (cheap).
    pub fn served_bytes(&self) -> u64 {
        self.shared.counters.bytes.load(Ordering::Relaxed)
    }

    /// Stream connection attempts so far (cheap).
    pub fn connection_attempts(&self) -> u64 {
        self.shared.counters.connections.load(Ordering::Relaxed)
    }

    /// Number of live events in the log.
    pub fn live_len(&self) -> u64 {
        *self.shared.log_len.borrow()
    }

    /// The ids of the live log, in order.
    pub fn live_ids(&self) -> Vec<EventId> {
        self.read_world().events.iter().map(|e| e.id).collect()
    }

    /// The identity keys of the live log, in order (what a connection from `0-0` with
    /// `listen-delete` would send as live events).
    pub fn live_keys(&self) -> Vec<IdentityKey> {
        let world = self.read_world();
        (0..world.events.len() as u32)
            .map(|e| live_key(&world, e))
            .collect()
    }

    /// The rendered frame of live event `index` (exactly the bytes a connection sends for it).
    pub fn live_frame(&self, index: u64) -> Option<Vec<u8>> {
        let world = self.read_world();
        let index = u32::try_from(index)
            .ok()
            .filter(|i| (*i as usize) < world.events.len())?;
        let mut out = Vec::new();
        render::live_frame(&mut out, &world, index);
        Some(out)
    }

    /// Appends `count` live events (new activity on the platform) and wakes idle connections.
    /// Their ids are strictly greater than every id of the log and every synthetic id already
    /// sent; returns them.
    pub fn append_live_events(&self, count: u64) -> Vec<EventId> {
        let wall = self.shared.config.clock.wall_clock_idle_ids;
        let mut clock = lock(&self.shared.clock);
        let mut world = self.shared.world.write().unwrap_or_else(|p| p.into_inner());
        let before = world.events.len();
        let now = wall.then(crate::ids::now_ms);
        world.append(count, clock.high_water, now);
        let ids: Vec<EventId> = world.events[before..].iter().map(|e| e.id).collect();
        clock.log_len = world.events.len() as u64;
        let len = clock.log_len;
        drop(world);
        drop(clock);
        self.shared.log_len.send_replace(len);
        ids
    }

    /// The expectation the oracle checks an export against (see [`oracle`]).
    pub fn expectation(&self) -> Expectation {
        let served = self.served();
        let world = self.read_world();
        oracle::expectation(&served, |after, listen_delete| {
            let start = world.events.partition_point(|e| e.id <= after) as u32;
            (start..world.events.len() as u32)
                .filter(|&e| listen_delete || world.events[e as usize].kind != EventKind::Delete)
                .map(|e| live_key(&world, e))
                .collect()
        })
    }

    /// Checks exported NDJSON lines (in file order) against what was served.
    pub fn check_export<'a>(&self, lines: impl IntoIterator<Item = &'a [u8]>) -> OracleReport {
        let served = self.served();
        let expectation = self.expectation();
        oracle::check(&served, &expectation, lines)
    }

    /// Every `/storage/get/…` request, in order.
    pub fn storage_requests(&self) -> Vec<StorageRequest> {
        lock(&self.shared.storage_requests).clone()
    }

    /// The bytes `/storage/get/<path>` serves (`path` as in a file `uri`, with or without the
    /// `/storage/get/` prefix); `None` for an unknown file.
    pub fn file_bytes(&self, path: &str) -> Option<Vec<u8>> {
        let path = path.strip_prefix("/storage/get/").unwrap_or(path);
        let spec = self.read_world().files.get(path).cloned()?;
        Some(storage::file_bytes(&spec))
    }

    /// Number of distinct files the corpus references.
    pub fn file_count(&self) -> usize {
        self.read_world().files.len()
    }

    /// Every `/graphql` call, in order.
    pub fn graphql_calls(&self) -> Vec<GraphqlCall> {
        lock(&self.shared.connector).calls.clone()
    }

    /// The stored `connector_state`.
    pub fn connector_state(&self) -> Option<String> {
        lock(&self.shared.connector).state.clone()
    }

    /// Sets the stored `connector_state` (as if a previous connector had saved it).
    pub fn set_connector_state(&self, state: Option<String>) {
        lock(&self.shared.connector).state = state;
    }

    /// Resets the state as the UI does: `connector_state` becomes `""` and the next ping answers
    /// `""` without storing its own state.
    pub fn request_state_reset(&self) {
        let mut connector = lock(&self.shared.connector);
        connector.state = Some(String::new());
        connector.reset_requested = true;
    }

    /// Stops accepting, ends every connection and waits for the server task.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn read_world(&self) -> std::sync::RwLockReadGuard<'_, world::World> {
        self.shared.world.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn live_key(world: &world::World, e: u32) -> IdentityKey {
    let event = world.events[e as usize];
    IdentityKey {
        id: event.id,
        event: event.kind,
        role: Role::Live,
        data: world.stix_id(event.object, e + 1),
    }
}
