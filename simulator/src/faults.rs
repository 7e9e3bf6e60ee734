//! Fault injection, controlled from tests while the simulator runs, or from a seeded random
//! plan for long campaigns.
//!
//! Stream faults are *armed* in a queue and fire in the order they were armed: the head's
//! countdown runs over data events written on any connection (dependencies and recovery objects
//! included) and, when it reaches zero, the fault fires on the connection about to write the
//! next event; the next fault's countdown starts then. Injected events carry the connection's
//! current id and never shift the ids of the real log.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::rng::SplitMix;

/// An HTTP error a connection attempt can get, with the reason phrases of
/// docs/opencti-protocol.md#auth-and-errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailStatus {
    /// 401 `You are not authenticated, please check your credentials`.
    Unauthenticated,
    /// 401 `You are not authorized, please check your credentials` (unknown stream).
    Unauthorized,
    /// 410 `This live stream is stopped`.
    Stopped,
    /// 429 with the rate limiter's JSON body.
    TooManyRequests,
    /// 500 with an empty body (SSE-NEW).
    Internal,
}

impl FailStatus {
    /// The HTTP status code.
    pub fn code(self) -> u16 {
        match self {
            FailStatus::Unauthenticated | FailStatus::Unauthorized => 401,
            FailStatus::Stopped => 410,
            FailStatus::TooManyRequests => 429,
            FailStatus::Internal => 500,
        }
    }

    /// The reason phrase the platform puts on the status line.
    pub fn reason(self) -> &'static str {
        match self {
            FailStatus::Unauthenticated => {
                "You are not authenticated, please check your credentials"
            }
            FailStatus::Unauthorized => "You are not authorized, please check your credentials",
            FailStatus::Stopped => "This live stream is stopped",
            FailStatus::TooManyRequests => "Too Many Requests",
            FailStatus::Internal => "Internal Server Error",
        }
    }
}

/// A bad (or merely unusual) event a fault can inject into a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InjectedEvent {
    /// A `create` whose data line is not JSON.
    InvalidJson,
    /// A `create` whose data line holds bytes that are not UTF-8.
    NonUtf8,
    /// A valid JSON payload under an event name OpenCTI never sends.
    UnknownEventType,
    /// A valid `create` of a report with a description of about `bytes` bytes.
    Huge {
        /// Approximate size of the event.
        bytes: usize,
    },
    /// A valid `create` of a report whose files carry hostile URIs (traversal, other hosts,
    /// other schemes, `unknown`).
    HostileFileUris,
    /// A valid `create` of a report with `count` attached files of `size` bytes each, all served
    /// by `/storage/get` (a memory attack through attachments at the size limit).
    ManyFiles {
        /// Files attached.
        count: u32,
        /// Bytes of each file.
        size: usize,
    },
    /// A `create` whose `data` is about `bytes` bytes of `[` (a stack and memory attack on JSON
    /// parsers); never exportable.
    NestedArrays {
        /// Approximate size of the event.
        bytes: usize,
    },
}

impl InjectedEvent {
    /// True for events a correct exporter exports (the others go to its dead-letter file).
    pub fn is_exportable(self) -> bool {
        matches!(
            self,
            InjectedEvent::Huge { .. }
                | InjectedEvent::HostileFileUris
                | InjectedEvent::ManyFiles { .. }
        )
    }
}

/// What happens to a stream connection when a fault fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Abort the connection between two events (no end of the chunked body).
    Drop,
    /// Write the first half of the next event's frame, then abort.
    CutMidEvent,
    /// Write nothing, heartbeats included, keeping the socket open, for `duration` or (`None`)
    /// until [`FaultControl::release_stalls`].
    Stall {
        /// How long; `None` until released.
        duration: Option<Duration>,
    },
    /// Abort this connection and answer `status` to the next `connections` attempts.
    Refuse {
        /// The error to answer.
        status: FailStatus,
        /// How many attempts get it.
        connections: u32,
    },
    /// Write an injected event, then go on.
    Inject(InjectedEvent),
}

/// A fault that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredFault {
    /// The connection number it fired on.
    pub connection: u64,
    /// Data events that connection had written before.
    pub after_events: u64,
    /// The fault.
    pub fault: Fault,
}

#[derive(Debug)]
struct Armed {
    remaining: u64,
    fault: Fault,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Armed>,
    refusals: VecDeque<FailStatus>,
    connect_stalls: VecDeque<Option<Duration>>,
    storage_failures: VecDeque<FailStatus>,
    graphql_failures: VecDeque<FailStatus>,
    fired: Vec<FiredFault>,
}

struct Inner {
    state: Mutex<State>,
    armed: watch::Sender<u64>,
    release: watch::Sender<u64>,
}

/// The fault control of one simulator; cheap to clone, usable from any task or thread.
#[derive(Clone)]
pub struct FaultControl {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FaultControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultControl")
            .field("pending", &self.pending())
            .finish()
    }
}

impl Default for FaultControl {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultControl {
    /// A control with nothing armed.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                armed: watch::channel(0).0,
                release: watch::channel(0).0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent (every update is
        // a single push or pop), so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.inner.armed.send_modify(|g| *g += 1);
    }

    /// Arms `fault` to fire after `after_events` more data events (counted from when the
    /// previously armed fault fired, or from now when none is pending).
    pub fn arm(&self, after_events: u64, fault: Fault) {
        self.state().queue.push_back(Armed {
            remaining: after_events,
            fault,
        });
        self.bump();
    }

    /// Drops the connection after `k` more data events.
    pub fn drop_after(&self, k: u64) {
        self.arm(k, Fault::Drop);
    }

    /// Cuts the connection in the middle of the `k+1`-th next event.
    pub fn cut_after(&self, k: u64) {
        self.arm(k, Fault::CutMidEvent);
    }

    /// Stalls the connection after `k` more data events, for `duration` or until released.
    pub fn stall_after(&self, k: u64, duration: Option<Duration>) {
        self.arm(k, Fault::Stall { duration });
    }

    /// Injects `event` after `k` more data events.
    pub fn inject_after(&self, k: u64, event: InjectedEvent) {
        self.arm(k, Fault::Inject(event));
    }

    /// Answers `status` to the next `count` connection attempts on stream routes (from now).
    pub fn refuse_next_connections(&self, status: FailStatus, count: u32) {
        let mut state = self.state();
        state
            .refusals
            .extend(std::iter::repeat_n(status, count as usize));
    }

    /// Holds the next `count` stream connection attempts before their response headers, for
    /// `duration` or until [`FaultControl::release_stalls`].
    pub fn stall_next_connections(&self, count: u32, duration: Option<Duration>) {
        self.state()
            .connect_stalls
            .extend(std::iter::repeat_n(duration, count as usize));
    }

    /// Ends every current stall (streams and held connection attempts).
    pub fn release_stalls(&self) {
        self.inner.release.send_modify(|g| *g += 1);
    }

    /// Answers `status` to the next `count` `/storage/get` requests.
    pub fn fail_next_storage(&self, status: FailStatus, count: u32) {
        self.state()
            .storage_failures
            .extend(std::iter::repeat_n(status, count as usize));
    }

    /// Answers `status` to the next `count` `/graphql` requests.
    pub fn fail_next_graphql(&self, status: FailStatus, count: u32) {
        self.state()
            .graphql_failures
            .extend(std::iter::repeat_n(status, count as usize));
    }

    /// Arms every step of `plan`, in order.
    pub fn schedule(&self, plan: &FaultPlan) {
        let mut state = self.state();
        for step in &plan.steps {
            state.queue.push_back(Armed {
                remaining: step.after_events,
                fault: step.fault,
            });
        }
        drop(state);
        self.bump();
    }

    /// Disarms every pending fault and refusal (stalls in progress continue until released).
    pub fn clear(&self) {
        let mut state = self.state();
        state.queue.clear();
        state.refusals.clear();
        state.connect_stalls.clear();
        state.storage_failures.clear();
        state.graphql_failures.clear();
    }

    /// Faults that fired so far, in order.
    pub fn fired(&self) -> Vec<FiredFault> {
        self.state().fired.clone()
    }

    /// Armed stream faults not yet fired.
    pub fn pending(&self) -> usize {
        self.state().queue.len()
    }

    /// Data events that may still be written before the next fault fires (`None`: no fault).
    pub(crate) fn budget(&self) -> Option<u64> {
        self.state().queue.front().map(|a| a.remaining)
    }

    /// Counts `written` data events against the head fault (the caller never writes past the
    /// budget) and returns the fault that is now due, if any, recording it as fired.
    pub(crate) fn advance(
        &self,
        written: u64,
        connection: u64,
        connection_events: u64,
    ) -> Option<Fault> {
        let mut state = self.state();
        let head = state.queue.front_mut()?;
        head.remaining = head.remaining.saturating_sub(written);
        if head.remaining > 0 {
            return None;
        }
        let fault = state.queue.pop_front()?.fault;
        if let Fault::Refuse {
            status,
            connections,
        } = fault
        {
            state
                .refusals
                .extend(std::iter::repeat_n(status, connections as usize));
        }
        state.fired.push(FiredFault {
            connection,
            after_events: connection_events,
            fault,
        });
        Some(fault)
    }

    pub(crate) fn take_refusal(&self) -> Option<FailStatus> {
        self.state().refusals.pop_front()
    }

    pub(crate) fn take_connect_stall(&self) -> Option<Option<Duration>> {
        self.state().connect_stalls.pop_front()
    }

    pub(crate) fn take_storage_failure(&self) -> Option<FailStatus> {
        self.state().storage_failures.pop_front()
    }

    pub(crate) fn take_graphql_failure(&self) -> Option<FailStatus> {
        self.state().graphql_failures.pop_front()
    }

    pub(crate) fn armed_changes(&self) -> watch::Receiver<u64> {
        self.inner.armed.subscribe()
    }

    pub(crate) fn releases(&self) -> watch::Receiver<u64> {
        self.inner.release.subscribe()
    }
}

/// Parameters of a random fault plan.
#[derive(Debug, Clone)]
pub struct FaultPlanConfig {
    /// Number of faults.
    pub steps: usize,
    /// Mean number of data events between two faults (gaps are uniform in `[1, 2 × mean]`).
    pub mean_gap_events: u64,
    /// Longest stall (stalls last between 1 ms and this).
    pub max_stall: Duration,
    /// Size of injected huge events.
    pub huge_bytes: usize,
    /// Include `Refuse` faults (401 / 429 / 500 to the next 1–3 attempts).
    pub refusals: bool,
}

impl Default for FaultPlanConfig {
    fn default() -> Self {
        Self {
            steps: 20,
            mean_gap_events: 500,
            max_stall: Duration::from_millis(500),
            huge_bytes: 2 << 20,
            refusals: true,
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanStep {
    /// Data events after the previous step fired.
    pub after_events: u64,
    /// The fault.
    pub fault: Fault,
}

/// A sequence of faults, fired one after another (see [`FaultControl::schedule`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    /// The steps, in firing order.
    pub steps: Vec<PlanStep>,
}

impl FaultPlan {
    /// A random plan, the same for the same `seed` and `config`.
    pub fn random(seed: u64, config: &FaultPlanConfig) -> Self {
        let mut rng = SplitMix::new(seed ^ 0xFA17_FA17);
        let mut steps = Vec::with_capacity(config.steps);
        for _ in 0..config.steps {
            let after_events = 1 + rng.below(2 * config.mean_gap_events.max(1));
            let roll = rng.below(if config.refusals { 100 } else { 85 });
            let fault = match roll {
                0..=21 => Fault::Drop,
                22..=39 => Fault::CutMidEvent,
                40..=49 => {
                    let max = config.max_stall.as_millis().max(1) as u64;
                    Fault::Stall {
                        duration: Some(Duration::from_millis(1 + rng.below(max))),
                    }
                }
                50..=84 => Fault::Inject(match rng.below(5) {
                    0 => InjectedEvent::InvalidJson,
                    1 => InjectedEvent::NonUtf8,
                    2 => InjectedEvent::UnknownEventType,
                    3 => InjectedEvent::Huge {
                        bytes: config.huge_bytes,
                    },
                    _ => InjectedEvent::HostileFileUris,
                }),
                _ => Fault::Refuse {
                    status: [
                        FailStatus::Unauthenticated,
                        FailStatus::TooManyRequests,
                        FailStatus::Internal,
                    ][rng.pick(3)],
                    connections: 1 + rng.below(3) as u32,
                },
            };
            steps.push(PlanStep {
                after_events,
                fault,
            });
        }
        Self { steps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fire_in_order_each_counting_from_the_previous() {
        let control = FaultControl::new();
        control.drop_after(3);
        control.inject_after(2, InjectedEvent::InvalidJson);
        assert_eq!(control.budget(), Some(3));
        assert_eq!(control.advance(2, 1, 2), None);
        assert_eq!(control.advance(1, 1, 3), Some(Fault::Drop));
        assert_eq!(control.budget(), Some(2));
        assert_eq!(
            control.advance(2, 2, 2),
            Some(Fault::Inject(InjectedEvent::InvalidJson))
        );
        assert_eq!(control.budget(), None);
        let fired = control.fired();
        assert_eq!(fired.len(), 2);
        assert_eq!(
            fired[0],
            FiredFault {
                connection: 1,
                after_events: 3,
                fault: Fault::Drop
            }
        );
    }

    #[test]
    fn refuse_fault_arms_refusals() {
        let control = FaultControl::new();
        control.arm(
            0,
            Fault::Refuse {
                status: FailStatus::TooManyRequests,
                connections: 2,
            },
        );
        assert!(control.advance(0, 1, 0).is_some());
        assert_eq!(control.take_refusal(), Some(FailStatus::TooManyRequests));
        assert_eq!(control.take_refusal(), Some(FailStatus::TooManyRequests));
        assert_eq!(control.take_refusal(), None);
    }

    #[test]
    fn random_plans_are_deterministic() {
        let config = FaultPlanConfig::default();
        assert_eq!(FaultPlan::random(7, &config), FaultPlan::random(7, &config));
        assert_ne!(FaultPlan::random(7, &config), FaultPlan::random(8, &config));
        assert_eq!(FaultPlan::random(7, &config).steps.len(), config.steps);
    }
}
