//! The connector's presence on the OpenCTI platform (docs/opencti-protocol.md#state-storage):
//! `registerConnector` at start-up and `pingConnector` every 40 s with the state in the stock keys,
//! so the platform's connector page shows the exporter, its position and its file count like the
//! Python connector's; and a state reset requested from that page is honoured.
//!
//! What it guarantees:
//! - **Never in the way of exporting.** The task runs on its own; an unreachable or refusing API
//!   is retried in the background with backoff (capped at the ping interval) and logged once per
//!   change of failure, never stopping or slowing the pipeline. Before the registration succeeds
//!   no ping is sent; after it, pings go on whatever happens.
//! - **Never `deleteConnector`**: stopping the daemon leaves the connector and its state on the
//!   platform (pycti's `helper.stop()` deletes both; the stock exporter does not call it either).
//! - **Truthful state** ([`state`]): `start_from` is the durable cursor, `last_written_msg_id` and
//!   `file_count` describe uploaded files only, so what the UI shows can always be imported.
//!   The WAL is the source of truth; a different state held by the platform is reported, never
//!   adopted (except a reset, below).
//! - **Reset from the UI.** `resetStateConnector` makes the next ping answer the empty string
//!   `""`. The task then sends a [`ResetRequest`] to the daemon, which stops the pipeline, moves
//!   the stream position back to the first-start position with recovery (file numbering and
//!   everything already in the WAL are kept), restarts the pipeline and answers; the task pings
//!   again with the new state after a short backoff ([`crate::backoff`]), never in a tight loop.
//!   Logged at WARN on both sides.
//! - **A misbehaving platform cannot make it re-export the world.** Only the explicit `""` is a
//!   reset; a state that is missing, `null` or `{}` is ignored (warned about once). A `""` is
//!   honoured only while armed: on the first ping of the process, and after the platform has
//!   echoed a state this exporter sent since the last reset; and at most once per
//!   [`ApiSettings::min_reset_interval`]. Any other `""` is refused, counted
//!   (`stream_exporter_state_resets_refused_total`) and warned about once, so a platform that
//!   keeps answering `""` causes one reset, not a storm.
//! - **Secrets** (docs/architecture.md#invariant-8): the token only goes into the `Authorization`
//!   header, marked sensitive; the registration asks for none of the secrets the platform could
//!   answer (RabbitMQ password, S3 keys).

pub mod graphql;
pub mod state;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use wal::Wal;

use crate::backoff::Backoff;
use crate::backoff::sleep_or_cancel;
use crate::budget::Budget;
use crate::ids::now_ms;
pub use graphql::{ApiError, GraphqlClient};
pub use state::{ConnectorState, PlatformState};
pub use stats::ApiStats;

/// How often the state is sent, as pycti's `PingAlive` (docs/opencti-protocol.md#state-storage).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(40);
/// How soon after an upload the new state is pinged (uploads within it share one ping).
pub const PING_AFTER_UPLOAD: Duration = Duration::from_secs(2);
/// Time limit of one GraphQL call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest time between two honoured state resets.
pub const DEFAULT_MIN_RESET_INTERVAL: Duration = Duration::from_secs(300);

/// The registration mutation. Only `id`, `connector_state` and `connector_user_id` are asked for:
/// the platform's answer can also carry the RabbitMQ password and S3 keys, which the exporter
/// neither needs nor should hold.
pub const REGISTER_MUTATION: &str = "mutation RegisterConnector($input: RegisterConnectorInput) {\
 registerConnector(input: $input) { id connector_state connector_user_id } }";

/// The ping mutation, as pycti sends it (docs/opencti-protocol.md#state-storage).
pub const PING_MUTATION: &str = "mutation PingConnector($id: ID!, $state: String, \
$connectorInfo: ConnectorInfoInput) { pingConnector(id: $id, state: $state, connectorInfo: \
$connectorInfo) { id connector_state } }";

/// Who the connector is on the platform, and how often to ping.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `CONNECTOR_ID`.
    pub connector_id: String,
    /// `CONNECTOR_NAME`.
    pub name: String,
    /// `CONNECTOR_SCOPE`, comma-split.
    pub scope: Vec<String>,
    /// Time between pings.
    pub ping_interval: Duration,
    /// Shortest time between two honoured state resets ([`DEFAULT_MIN_RESET_INTERVAL`]); a reset
    /// answer sooner is refused.
    pub min_reset_interval: Duration,
}

impl ApiSettings {
    /// The `registerConnector` input: a STREAM connector, not automatic, as pycti builds it for
    /// the stock exporter. Only the fields every supported platform version (6.4 and later)
    /// knows are sent.
    pub fn register_input(&self) -> Value {
        json!({ "input": {
            "id": self.connector_id,
            "name": self.name,
            "type": "STREAM",
            "scope": self.scope,
            "auto": false,
            "only_contextual": false,
            "playbook_compatible": false,
        }})
    }
}

/// A state reset from the UI, handed to the daemon. The daemon answers on `done` once the new
/// position is durable and the pipeline runs again (or with why it could not).
#[derive(Debug)]
pub struct ResetRequest {
    /// Answered by the daemon.
    pub done: oneshot::Sender<Result<(), String>>,
}

/// What the task needs besides its settings.
#[derive(Clone)]
pub struct ApiContext {
    /// The WAL the state is read from.
    pub wal: Wal,
    /// The disk budget (reported as `connectorInfo.buffering`).
    pub budget: Arc<Budget>,
    /// Counters.
    pub stats: Arc<ApiStats>,
    /// Where reset requests go.
    pub resets: mpsc::Sender<ResetRequest>,
    /// Notified by the uploader after each file uploaded.
    pub uploaded: Arc<Notify>,
}

/// Registers, then pings every `ping_interval` until `cancel` fires. Never returns an error:
/// every failure is logged and retried.
pub async fn run(
    client: GraphqlClient,
    settings: ApiSettings,
    context: ApiContext,
    cancel: CancellationToken,
) {
    let reset_backoff = Backoff::new(Duration::from_secs(1), settings.ping_interval);
    let mut task = Task {
        client,
        settings,
        context,
        failure: None,
        different: None,
        resets: ResetGate {
            armed: true,
            last: None,
            backoff: reset_backoff,
            warned: false,
        },
        warned_empty: false,
    };
    task.run(&cancel).await;
}

/// Registers the connector (idempotent on the platform) and returns the `connector_state` the
/// platform holds for it (`None` when it has none).
pub async fn register(
    client: &GraphqlClient,
    settings: &ApiSettings,
) -> Result<Option<String>, ApiError> {
    let data = client
        .call(REGISTER_MUTATION, settings.register_input())
        .await?;
    let answer = data
        .get("registerConnector")
        .filter(|answer| !answer.is_null())
        .ok_or_else(|| ApiError::Malformed("registerConnector answered nothing".into()))?;
    Ok(answer
        .get("connector_state")
        .and_then(Value::as_str)
        .map(str::to_string))
}

/// What one ping found.
enum Pinged {
    Answer(PlatformState),
    NotRegistered,
}

struct Task {
    client: GraphqlClient,
    settings: ApiSettings,
    context: ApiContext,
    /// The kind of the failure in progress, to log once per change.
    failure: Option<String>,
    /// The last different state reported, to warn once per distinct value.
    different: Option<Value>,
    /// Whether a reset answer is honoured now.
    resets: ResetGate,
    /// An answer without a state was warned about (until the platform echoes the state again).
    warned_empty: bool,
}

/// When a reset answer is honoured (see the module documentation).
struct ResetGate {
    /// A `""` now would be honoured: first ping of the process, or the platform echoed a state
    /// sent since the last reset.
    armed: bool,
    /// When the last reset was honoured.
    last: Option<tokio::time::Instant>,
    /// Delay before the ping after a reset, growing while resets follow each other.
    backoff: Backoff,
    /// A refused reset was warned about (until the platform echoes the state again).
    warned: bool,
}

impl ResetGate {
    /// Why a reset answer now is refused, if it is.
    fn refusal(&self, min_interval: Duration) -> Option<String> {
        if !self.armed {
            return Some(
                "the platform answered an empty state again without having stored the state \
                 sent after the last reset"
                    .to_string(),
            );
        }
        match self.last {
            Some(last) if last.elapsed() < min_interval => Some(format!(
                "the last reset was {:.0} s ago; at most one every {:.0} s is honoured",
                last.elapsed().as_secs_f64(),
                min_interval.as_secs_f64()
            )),
            _ => None,
        }
    }

    /// The platform echoed the state sent.
    fn acknowledged(&mut self) {
        self.armed = true;
        self.warned = false;
        self.backoff.reset();
    }
}

impl Task {
    async fn run(&mut self, cancel: &CancellationToken) {
        let min_delay = Duration::from_millis(500).min(self.settings.ping_interval);
        let mut backoff = Backoff::new(Duration::from_secs(1), self.settings.ping_interval);
        'register: loop {
            loop {
                match self.register().await {
                    Ok(()) => break,
                    Err(error) => {
                        ApiStats::add(&self.context.stats.register_errors);
                        let delay = backoff.next_delay().max(min_delay);
                        self.failed("registering the connector", &error, delay);
                        if sleep_or_cancel(delay, cancel).await {
                            return;
                        }
                    }
                }
            }
            backoff.reset();
            loop {
                let wait = match self.ping().await {
                    Ok(Pinged::Answer(answer)) => {
                        backoff.reset();
                        self.recovered();
                        match self.handle(answer, cancel).await {
                            Some(wait) => wait,
                            None => return,
                        }
                    }
                    Ok(Pinged::NotRegistered) => {
                        self.context.stats.registered.store(false, Relaxed);
                        tracing::warn!(
                            connector_id = %self.settings.connector_id,
                            "the platform no longer knows this connector (deleted from the UI?): \
                             registering it again"
                        );
                        continue 'register;
                    }
                    Err(error) => {
                        ApiStats::add(&self.context.stats.ping_errors);
                        let delay = backoff.next_delay().max(min_delay);
                        self.failed("pinging the platform", &error, delay);
                        delay
                    }
                };
                if self.wait_for_next_ping(wait, cancel).await {
                    return;
                }
            }
        }
    }

    /// Waits `wait`, or less: [`PING_AFTER_UPLOAD`] after a file was uploaded, so the platform
    /// holds the exporter's uploaded position within seconds (what a new WAL adopts after a
    /// lost volume), not only every ping interval. Returns true when cancelled.
    async fn wait_for_next_ping(&self, wait: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            cancelled = sleep_or_cancel(wait, cancel) => cancelled,
            () = self.context.uploaded.notified() => {
                sleep_or_cancel(PING_AFTER_UPLOAD.min(wait), cancel).await
            }
        }
    }

    async fn register(&mut self) -> Result<(), ApiError> {
        let platform_state = register(&self.client, &self.settings).await?;
        let stats = &self.context.stats;
        stats.registered.store(true, Relaxed);
        ApiStats::add(&stats.registrations);
        self.recovered();
        tracing::info!(
            connector_id = %self.settings.connector_id,
            name = %self.settings.name,
            api = %self.client.endpoint(),
            "registered on OpenCTI as a STREAM connector"
        );
        if let Some(platform) = platform_state {
            self.warn_if_numbering_restarts(&platform);
        }
        Ok(())
    }

    /// A WAL that did not adopt the delivered state (`WAL_ADOPT_DELIVERED=false`) numbers its
    /// first file 1; if the platform remembers files already written for this connector, the
    /// importer will stop at the first file. Say so, with the way out.
    fn warn_if_numbering_restarts(&self, platform: &str) {
        let ours = ConnectorState::from_wal(&self.context.wal);
        let Ok(Some(theirs)) = state::StockState::parse(platform) else {
            return;
        };
        let theirs = theirs.file_count;
        if ours.file_count == 0 && self.context.wal.state().last_upload.is_none() && theirs > 0 {
            tracing::warn!(
                platform_file_count = theirs,
                next_file_number = ours.file_count + 1,
                "the platform's state for this connector says {theirs} file(s) were already \
                 written, but this WAL starts numbering again: the importer expects file \
                 {}. To continue that numbering, stop the exporter, empty WAL_DIR and start it \
                 with WAL_ADOPT_DELIVERED=true (the default), or run \
                 `opencti-stream-exporter import-state` with the state shown on the connector page",
                theirs.saturating_add(1)
            );
        }
    }

    async fn ping(&mut self) -> Result<Pinged, ApiError> {
        let stats = &self.context.stats;
        ApiStats::add(&stats.pings);
        let sent = ConnectorState::from_wal(&self.context.wal).to_state_string();
        let variables = json!({
            "id": self.settings.connector_id,
            "state": sent,
            "connectorInfo": self.connector_info(),
        });
        let data = match self.client.call(PING_MUTATION, variables).await {
            Ok(data) => data,
            Err(ApiError::Graphql(message)) if is_not_found(&message) => {
                return Ok(Pinged::NotRegistered);
            }
            Err(error) => return Err(error),
        };
        let Some(answer) = data.get("pingConnector").filter(|a| !a.is_null()) else {
            return Ok(Pinged::NotRegistered);
        };
        stats.last_ping_ok_unix_ms.store(now_ms(), Relaxed);
        let platform = answer.get("connector_state").and_then(Value::as_str);
        tracing::debug!(state = %sent, "pinged OpenCTI");
        Ok(Pinged::Answer(state::compare(&sent, platform)))
    }

    /// `connectorInfo`: not run-and-terminate; "buffering" while the disk budget has paused the
    /// stream; the budget and its use in MB as the queue threshold and size.
    fn connector_info(&self) -> Value {
        let usage = self.context.wal.disk_usage();
        let mb = |bytes: u64| bytes as f64 / 1_000_000.0;
        json!({
            "run_and_terminate": false,
            "buffering": self.context.budget.is_paused(),
            "queue_threshold": mb(usage.max_bytes),
            "queue_messages_size": mb(usage.used()),
            "next_run_datetime": null,
            "last_run_datetime": null,
        })
    }

    /// Acts on a ping's answer; returns how long to wait before the next ping, or `None` when
    /// cancelled.
    async fn handle(
        &mut self,
        answer: PlatformState,
        cancel: &CancellationToken,
    ) -> Option<Duration> {
        match answer {
            PlatformState::Same => {
                self.different = None;
                self.warned_empty = false;
                self.resets.acknowledged();
                Some(self.settings.ping_interval)
            }
            PlatformState::Empty => {
                if !self.warned_empty {
                    tracing::warn!(
                        connector_id = %self.settings.connector_id,
                        "the platform answered the ping without a state (missing, null or {{}}): \
                         not a reset (a reset answers an empty string); ignored, the state is \
                         sent again at every ping"
                    );
                    self.warned_empty = true;
                }
                Some(self.settings.ping_interval)
            }
            PlatformState::Different(theirs) => {
                if self.different.as_ref() != Some(&theirs) {
                    tracing::warn!(
                        connector_id = %self.settings.connector_id,
                        platform_state = %theirs,
                        "the platform holds another state for this connector: is another \
                         connector running with the same CONNECTOR_ID? The WAL stays the source \
                         of truth; the state is sent again at every ping"
                    );
                    self.different = Some(theirs);
                }
                Some(self.settings.ping_interval)
            }
            PlatformState::Reset => {
                if let Some(why) = self.resets.refusal(self.settings.min_reset_interval) {
                    ApiStats::add(&self.context.stats.resets_refused);
                    if !self.resets.warned {
                        tracing::warn!(
                            connector_id = %self.settings.connector_id,
                            reason = %why,
                            "the platform answered a state reset, NOT honoured: a platform that \
                             keeps answering resets must not make the exporter re-export \
                             everything again and again; request the reset again from the \
                             connector page if it was meant"
                        );
                        self.resets.warned = true;
                    }
                    return Some(self.settings.ping_interval);
                }
                tracing::warn!(
                    connector_id = %self.settings.connector_id,
                    "OpenCTI asks for a state reset (from the connector page): restarting the \
                     stream from the first-start position, with recovery; file numbering goes on"
                );
                let (done, answer) = oneshot::channel();
                if self
                    .context
                    .resets
                    .send(ResetRequest { done })
                    .await
                    .is_err()
                {
                    // The daemon is stopping.
                    return None;
                }
                let outcome = tokio::select! {
                    outcome = answer => outcome,
                    () = cancel.cancelled() => return None,
                };
                match outcome {
                    Ok(Ok(())) => {
                        ApiStats::add(&self.context.stats.resets);
                        self.resets.armed = false;
                        self.resets.last = Some(tokio::time::Instant::now());
                        // Show the new state on the platform soon, never in a tight loop.
                        let min_delay = Duration::from_millis(500).min(self.settings.ping_interval);
                        Some(self.resets.backoff.next_delay().max(min_delay))
                    }
                    Ok(Err(why)) => {
                        tracing::error!(error = %why, "the state reset could not be applied");
                        Some(self.settings.ping_interval)
                    }
                    Err(_) => None,
                }
            }
        }
    }

    fn failed(&mut self, action: &str, error: &ApiError, retry_in: Duration) {
        let kind = error.kind();
        self.context
            .stats
            .set_failing(Some(format!("{action}: {error}")));
        if self.failure.as_deref() == Some(kind.as_str()) {
            tracing::debug!(%error, ?retry_in, "{action} failed again");
            return;
        }
        let hint = match error {
            ApiError::Unauthorized(_)
            | ApiError::InvalidToken
            | ApiError::Status { status: 401 | 403 } => {
                "check OPENCTI_TOKEN and the user's rights (connectors need the CONNECTORAPI capability)"
            }
            ApiError::Network(_) | ApiError::Timeout(_) => {
                "check OPENCTI_URL and the network; exporting goes on meanwhile"
            }
            _ => "exporting goes on meanwhile",
        };
        tracing::warn!(
            api = %self.client.endpoint(),
            %error,
            ?retry_in,
            hint,
            "{action} failed; retrying in the background (logged again only if this changes)"
        );
        self.failure = Some(kind);
    }

    fn recovered(&mut self) {
        if let Some(previous) = self.failure.take() {
            tracing::info!(previous_failure = %previous, "the OpenCTI API answers again");
        }
        self.context.stats.set_failing(None);
    }
}

/// The platform's answer to a ping for a connector it does not know.
fn is_not_found(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("no connector found") || message.contains("connector not found")
}
