//! Configuration of a simulated OpenCTI platform.

use std::time::Duration;

use crate::token::Token;

/// Everything that shapes a simulated platform. Two simulators with equal configurations (and
/// the same calls to `append_live_events`) serve byte-identical data events, except when
/// [`IdClock::wall_clock_idle_ids`] is on.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Seed of every random choice of the corpus.
    pub seed: u64,
    /// Number of live events in the stream log at start.
    pub live_events: u64,
    /// Number of objects in the pre-existing knowledge base (what a first-run recovery sends),
    /// besides the five TLP markings.
    pub knowledge_base: u64,
    /// Shares of the event and content mix.
    pub mix: EventMix,
    /// The API token. `None`: every stream is public and `/storage/get` needs no token.
    pub token: Option<Token>,
    /// The live streams (`/stream/{id}`). Unknown ids answer 401
    /// (docs/opencti-protocol.md#auth-and-errors).
    pub streams: Vec<StreamDef>,
    /// Heartbeat period (the platform's default is 5 s; tests use 50–200 ms).
    pub heartbeat: Duration,
    /// Data events per second per connection; `None` serves as fast as the socket takes.
    pub rate: Option<u32>,
    /// How event ids are made.
    pub clock: IdClock,
    /// Send `consumer_metrics` after each heartbeat (SSE-CM and newer); off gives the 6.x shape.
    pub consumer_metrics: bool,
    /// What a request with `recover` but no start gets (docs/opencti-protocol.md#start-position).
    pub recover_without_start: RecoverWithoutStart,
    /// Keep every served data event in the served log (needed by the oracle). Benchmarks that
    /// serve millions of events may turn it off; counters are always kept.
    pub record_events: bool,
    /// Bytes of rendered live-log frames kept for other connections to reuse.
    pub frame_cache_bytes: usize,
    /// Render the whole initial log into the frame cache before `start` returns (two threads,
    /// about 2 µs of CPU per event; needs `frame_cache_bytes` ≥ about 2.3 KB per event). Then
    /// serving costs no rendering: for benchmarks.
    pub prerender: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            live_events: 1_000,
            knowledge_base: 200,
            mix: EventMix::default(),
            token: Some(Token::new("simulator-token")),
            streams: vec![
                StreamDef::live(DEFAULT_STREAM_ID),
                StreamDef::stopped(STOPPED_STREAM_ID),
            ],
            heartbeat: Duration::from_secs(5),
            rate: None,
            clock: IdClock::default(),
            consumer_metrics: true,
            recover_without_start: RecoverWithoutStart::ErrorEvent,
            record_events: true,
            frame_cache_bytes: 256 << 20,
            prerender: false,
        }
    }
}

/// The id of the live stream a default configuration serves.
pub const DEFAULT_STREAM_ID: &str = "4f6e2a8c-1b3d-4e5f-9a7b-0c2d4e6f8a1b";
/// The id of the stopped stream a default configuration has (answers 410).
pub const STOPPED_STREAM_ID: &str = "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a";

/// Shares of the generated mix. Each share is a probability in `[0, 1]`.
#[derive(Debug, Clone)]
pub struct EventMix {
    /// Share of live events that are updates.
    pub updates: f64,
    /// Share of live events that are deletes.
    pub deletes: f64,
    /// Share of live events that are merges.
    pub merges: f64,
    /// Share of indicator updates that change the pattern, hence `/id`
    /// (docs/opencti-protocol.md#data-events).
    pub id_changes: f64,
    /// Share of created reports/malware and of updates that attach a file.
    pub files: f64,
    /// Share of objects whose names and descriptions are not ASCII (accents, CJK, emoji).
    pub non_ascii: f64,
}

impl Default for EventMix {
    fn default() -> Self {
        Self {
            updates: 0.32,
            deletes: 0.06,
            merges: 0.03,
            id_changes: 0.3,
            files: 0.04,
            non_ascii: 0.12,
        }
    }
}

/// One live stream collection.
#[derive(Debug, Clone)]
pub struct StreamDef {
    /// The id in `/stream/{id}`.
    pub id: String,
    /// Stopped (`stream_live=false`): connections get 410
    /// (docs/opencti-protocol.md#auth-and-errors).
    pub stopped: bool,
    /// Public (`stream_public`): no token needed.
    pub public: bool,
    /// Configured with origin filters: no recovery, a `no-recover` event instead
    /// (docs/opencti-protocol.md#sse-framing).
    pub origin_filters: bool,
}

impl StreamDef {
    /// A running, private stream without origin filters.
    pub fn live(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            stopped: false,
            public: false,
            origin_filters: false,
        }
    }

    /// A stopped stream.
    pub fn stopped(id: &str) -> Self {
        Self {
            stopped: true,
            ..Self::live(id)
        }
    }
}

/// How ids are assigned.
#[derive(Debug, Clone)]
pub struct IdClock {
    /// Epoch ms of the first live event; the knowledge base lies in the 30 days before it.
    pub base_ms: u64,
    /// As the real server: an idle connection's heartbeat ids advance with the wall clock
    /// (`<now ms>-0`, docs/opencti-protocol.md#event-ids), events appended later get ids past both
    /// the log and `now`. Off: heartbeats repeat the last id and appended ids only depend on the
    /// seed (deterministic).
    pub wall_clock_idle_ids: bool,
}

impl Default for IdClock {
    fn default() -> Self {
        // 2024-06-10T09:00:00.000Z
        Self {
            base_ms: 1_718_010_000_000,
            wall_clock_idle_ids: false,
        }
    }
}

/// The answer to `recover` without a start (docs/opencti-protocol.md#start-position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoverWithoutStart {
    /// 6.x: HTTP 500 with `Error in stream <id>: Recovery mode is only possible with a start date`.
    Status500,
    /// Newer: HTTP 200, then an `error` event (no id) and nothing else but heartbeats.
    ErrorEvent,
}
