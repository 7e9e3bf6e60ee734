//! The fault campaign: the real binary against the OpenCTI simulator and a real S3 server (behind
//! a fault-injecting proxy), for tens of thousands of events, while a seeded scheduler injects
//! faults of every kind a deployment meets. At the end the bucket is checked against what the
//! simulator served (invariants 1, 2, 3, 4 and 7, docs/architecture.md#invariants):
//!
//! - every served data event is in the bucket, in order, at most once per time it was served,
//!   and none is lost (the simulator's oracle: the export is a concatenation of durable prefixes
//!   of what each connection served);
//! - the files are numbered 1, 2, 3, … without a gap, their timestamps increase, and every file
//!   reads back with the stock importer's algorithm;
//! - the daemon never exited on its own (only the scheduler's SIGKILLs and the final SIGTERM,
//!   which it answers with exit code 0).
//!
//! Faults (one chosen per step, every kind in turn in a seeded order, plus extra stream faults
//! at random): SIGKILL of the exporter and restart; S3 stopped and restarted on the same port;
//! S3 hanging (connections accepted, never answered); the proxy delaying, resetting, truncating
//! responses, answering 500, 503 SlowDown and 403; OpenCTI dropping the connection, cutting an
//! event in the middle, stalling without heartbeats (longer than the idle watchdog), answering
//! 401, 410, 429 and 500; invalid JSON, non-UTF-8 and unknown events; a 6 MiB event (a file of
//! its own, uploaded in parts); events with hostile file URIs.
//!
//! Profiles (the verdict never depends on timing; timing only changes which fault hits what):
//! - `campaign_ci`: about 24,000 events and 30 faults or more, well under 3 minutes in release;
//! - `campaign_long` (ignored by default): about 215,000 events and 240 faults or more:
//!   `CAMPAIGN_SEED=7 cargo nextest run --release --test campaign --run-ignored only --no-capture`.
//!
//! The seed comes from `CAMPAIGN_SEED` (a fixed default otherwise) and is printed with a one-line
//! summary; the same seed gives the same schedule of faults.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use simulator::{FailStatus, Fault, FaultControl, InjectedEvent, SimulatorConfig, SimulatorHandle};
use support::daemon::{
    BUCKET, Daemon, Harness, last_s3_line_id, read_s3_export, secs, start_simulator,
};
use support::proxy::{Canned, Fault as ProxyFault, FaultProxy};
use support::s3::TestS3;

/// The seed when `CAMPAIGN_SEED` is not set (CI).
const DEFAULT_SEED: u64 = 20_260_601;
/// Size of the injected huge event: above `WRITE_MAX_BYTES` (a file of its own) and above the
/// multipart threshold (uploaded in parts).
const HUGE_EVENT_BYTES: usize = 6 << 20;

/// How big a campaign is.
struct Profile {
    name: &'static str,
    /// Scheduler steps; each injects one fault (and sometimes an extra stream fault).
    steps: usize,
    /// Live events appended per step, uniform in this range.
    batch: (u64, u64),
    /// What the run must reach to count (the "Must show").
    min_faults: usize,
    min_kinds: usize,
    min_events: u64,
    /// Longest wait for the export to complete once the faults stop.
    drain: Duration,
}

const CI: Profile = Profile {
    name: "ci",
    steps: 36,
    batch: (500, 1100),
    min_faults: 20,
    min_kinds: 6,
    min_events: 20_000,
    drain: Duration::from_secs(120),
};

const LONG: Profile = Profile {
    name: "long",
    steps: 240,
    batch: (600, 1200),
    min_faults: 200,
    min_kinds: 6,
    min_events: 200_000,
    drain: Duration::from_secs(300),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_ci() {
    run_campaign(&CI).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long campaign (about 10 minutes): run with --run-ignored only"]
async fn campaign_long() {
    run_campaign(&LONG).await;
}

/// Every kind of fault the scheduler injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Kill,
    S3Stopped,
    S3Hanging,
    ProxyDelay,
    ProxyReset,
    ProxyTruncate,
    Proxy500,
    Proxy503SlowDown,
    Proxy403,
    OpenctiDrop,
    OpenctiCut,
    OpenctiStall,
    Refuse401,
    Refuse410,
    Refuse429,
    Refuse500,
    InvalidJson,
    NonUtf8,
    UnknownEvent,
    HugeEvent,
    HostileFileUris,
}

/// One round of the scheduler: every kind once, SIGKILL three times and S3 outages twice (the
/// faults a deployment meets most and the ones that test durability hardest).
const KINDS: [Kind; 24] = [
    Kind::Kill,
    Kind::Kill,
    Kind::Kill,
    Kind::S3Stopped,
    Kind::S3Stopped,
    Kind::S3Hanging,
    Kind::ProxyDelay,
    Kind::ProxyReset,
    Kind::ProxyTruncate,
    Kind::Proxy500,
    Kind::Proxy503SlowDown,
    Kind::Proxy403,
    Kind::OpenctiDrop,
    Kind::OpenctiCut,
    Kind::OpenctiStall,
    Kind::Refuse401,
    Kind::Refuse410,
    Kind::Refuse429,
    Kind::Refuse500,
    Kind::InvalidJson,
    Kind::NonUtf8,
    Kind::UnknownEvent,
    Kind::HugeEvent,
    Kind::HostileFileUris,
];

/// Stream faults the simulator fires itself, by event count.
const STREAM_KINDS: [Kind; 12] = [
    Kind::OpenctiDrop,
    Kind::OpenctiCut,
    Kind::OpenctiStall,
    Kind::Refuse401,
    Kind::Refuse410,
    Kind::Refuse429,
    Kind::Refuse500,
    Kind::InvalidJson,
    Kind::NonUtf8,
    Kind::UnknownEvent,
    Kind::HugeEvent,
    Kind::HostileFileUris,
];

/// SplitMix64: the scheduler's only source of randomness, so a seed replays the schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + ((u128::from(self.next()) * u128::from(hi - lo + 1)) >> 64) as u64
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.range(0, 99) < percent
    }
}

/// The simulator fault for a stream kind.
fn stream_fault(kind: Kind, rng: &mut Rng) -> Fault {
    let connections = 1 + rng.range(0, 2) as u32;
    let refuse = |status| Fault::Refuse {
        status,
        connections,
    };
    match kind {
        Kind::OpenctiDrop => Fault::Drop,
        Kind::OpenctiCut => Fault::CutMidEvent,
        // From well under to well over the idle watchdog (1 s): some stalls end by themselves,
        // others make the exporter reconnect.
        Kind::OpenctiStall => Fault::Stall {
            duration: Some(rng.millis(100, 2500)),
        },
        Kind::Refuse401 => refuse(FailStatus::Unauthenticated),
        Kind::Refuse410 => refuse(FailStatus::Stopped),
        Kind::Refuse429 => refuse(FailStatus::TooManyRequests),
        Kind::Refuse500 => refuse(FailStatus::Internal),
        Kind::InvalidJson => Fault::Inject(InjectedEvent::InvalidJson),
        Kind::NonUtf8 => Fault::Inject(InjectedEvent::NonUtf8),
        Kind::UnknownEvent => Fault::Inject(InjectedEvent::UnknownEventType),
        Kind::HugeEvent => Fault::Inject(InjectedEvent::Huge {
            bytes: HUGE_EVENT_BYTES,
        }),
        Kind::HostileFileUris => Fault::Inject(InjectedEvent::HostileFileUris),
        other => unreachable!("{other:?} is not a stream fault"),
    }
}

/// The kind of a fault the simulator reports as fired.
fn fired_kind(fault: &Fault) -> Kind {
    match fault {
        Fault::Drop => Kind::OpenctiDrop,
        Fault::CutMidEvent => Kind::OpenctiCut,
        Fault::Stall { .. } => Kind::OpenctiStall,
        Fault::Refuse { status, .. } => match status {
            FailStatus::Unauthenticated | FailStatus::Unauthorized => Kind::Refuse401,
            FailStatus::Stopped => Kind::Refuse410,
            FailStatus::TooManyRequests => Kind::Refuse429,
            FailStatus::Internal => Kind::Refuse500,
        },
        Fault::Inject(event) => match event {
            InjectedEvent::InvalidJson => Kind::InvalidJson,
            InjectedEvent::NonUtf8 => Kind::NonUtf8,
            InjectedEvent::UnknownEventType => Kind::UnknownEvent,
            InjectedEvent::Huge { .. } => Kind::HugeEvent,
            InjectedEvent::HostileFileUris => Kind::HostileFileUris,
            InjectedEvent::ManyFiles { .. } | InjectedEvent::NestedArrays { .. } => {
                unreachable!("the campaign never plans {event:?}")
            }
        },
    }
}

/// Everything the scheduler drives.
struct World {
    sim: SimulatorHandle,
    faults: FaultControl,
    s3: TestS3,
    proxy: FaultProxy,
    harness: Harness,
    daemon: Daemon,
    /// Exporter-side faults injected (stream faults are counted from the simulator's record).
    injected: BTreeMap<Kind, usize>,
    restarts: usize,
}

impl World {
    /// Panics (with the daemon's logs) if the daemon exited without being told to.
    fn assert_alive(&mut self, when: &str) {
        assert!(
            !self.daemon.has_exited(),
            "the daemon exited on its own ({when}); errors: {:?}",
            self.daemon.errors()
        );
    }

    fn count(&mut self, kind: Kind) {
        *self.injected.entry(kind).or_default() += 1;
    }

    /// Holds a proxy fault until at least one request met it (bounded), then a little longer.
    async fn proxy_window(&mut self, kind: Kind, fault: ProxyFault, hold: Duration) {
        let before = self.proxy.requests();
        self.proxy.set_fault(fault);
        let deadline = Instant::now() + secs(15);
        while self.proxy.requests() == before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let met = self.proxy.requests() > before;
        tokio::time::sleep(hold).await;
        self.proxy.set_fault(ProxyFault::Pass);
        if met {
            self.count(kind);
        }
    }

    /// Applies one exporter-side fault and heals it.
    async fn exporter_fault(&mut self, kind: Kind, rng: &mut Rng) {
        match kind {
            Kind::Kill => {
                self.assert_alive("before a SIGKILL");
                self.daemon.kill();
                self.count(kind);
                tokio::time::sleep(rng.millis(0, 300)).await;
                self.daemon = self.harness.spawn();
                self.restarts += 1;
            }
            Kind::S3Stopped => {
                self.s3.stop();
                self.count(kind);
                tokio::time::sleep(rng.millis(200, 2000)).await;
                self.s3.restart();
            }
            Kind::S3Hanging => {
                let hold = rng.millis(200, 1500);
                self.proxy_window(kind, ProxyFault::Hang, hold).await;
            }
            Kind::ProxyDelay => {
                let delay = rng.millis(50, 1500);
                let hold = rng.millis(0, 800);
                self.proxy_window(kind, ProxyFault::Delay(delay), hold)
                    .await;
            }
            Kind::ProxyReset => {
                let hold = rng.millis(0, 500);
                self.proxy_window(kind, ProxyFault::Reset, hold).await;
            }
            Kind::ProxyTruncate => {
                let bytes = rng.range(0, 200) as usize;
                let hold = rng.millis(0, 500);
                self.proxy_window(kind, ProxyFault::Truncate(bytes), hold)
                    .await;
            }
            Kind::Proxy500 => {
                let hold = rng.millis(0, 500);
                self.proxy_window(kind, ProxyFault::Respond(Canned::InternalError), hold)
                    .await;
            }
            Kind::Proxy503SlowDown => {
                let hold = rng.millis(0, 500);
                self.proxy_window(kind, ProxyFault::Respond(Canned::SlowDown), hold)
                    .await;
            }
            Kind::Proxy403 => {
                let hold = rng.millis(0, 500);
                self.proxy_window(kind, ProxyFault::Respond(Canned::AccessDenied), hold)
                    .await;
            }
            other => unreachable!("{other:?} is a stream fault"),
        }
    }
}

async fn run_campaign(profile: &Profile) {
    let seed = std::env::var("CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!(
        "campaign {}: seed {seed} (set CAMPAIGN_SEED to replay another)",
        profile.name
    );
    let started = Instant::now();
    let mut rng = Rng(seed);

    let sim = start_simulator(SimulatorConfig {
        seed,
        live_events: 200,
        knowledge_base: 300,
        heartbeat: Duration::from_millis(100),
        ..SimulatorConfig::default()
    })
    .await;
    let faults = sim.faults();
    let s3 = TestS3::start();
    let proxy = FaultProxy::start(s3.addr());
    // First start as pycti does it, recovering the knowledge base up to just before the live
    // log, with dependencies, so recovery, dependency and live events all take part.
    let first_live = sim.live_ids()[0];
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .set("MINIO_PORT", &proxy.addr().port().to_string())
        .set(
            "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
            &opencti_stream_exporter::ids::iso(first_live.ms - 1),
        )
        .set("CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES", "false")
        .set("STREAM_IDLE_TIMEOUT_SEC", "1")
        .set("UPLOAD_TIMEOUT_SEC", "3")
        .set("WRITE_MAX_BYTES", "1MiB")
        .set("UPLOAD_MULTIPART_THRESHOLD", "5MiB")
        .set("WAL_MAX_BYTES", "2GiB");
    let daemon = harness.spawn();
    let mut world = World {
        sim,
        faults,
        s3,
        proxy,
        harness,
        daemon,
        injected: BTreeMap::new(),
        restarts: 0,
    };

    // Every kind in turn, in a seeded order reshuffled each round.
    let mut order: Vec<Kind> = Vec::new();
    for step in 0..profile.steps {
        if order.is_empty() {
            order = KINDS.to_vec();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.range(0, i as u64) as usize);
            }
        }
        let kind = order.pop().expect("refilled above");
        let batch = rng.range(profile.batch.0, profile.batch.1);
        world.sim.append_live_events(batch);
        if STREAM_KINDS.contains(&kind) {
            let fault = stream_fault(kind, &mut rng);
            world.faults.arm(rng.range(0, batch - 1), fault);
        }
        if rng.chance(30) {
            let extra = STREAM_KINDS[rng.range(0, STREAM_KINDS.len() as u64 - 1) as usize];
            let fault = stream_fault(extra, &mut rng);
            world.faults.arm(rng.range(0, batch - 1), fault);
        }
        // Let the stream flow, so exporter faults land mid-stream, mid-seal or mid-upload.
        tokio::time::sleep(rng.millis(50, 600)).await;
        if !STREAM_KINDS.contains(&kind) {
            world.exporter_fault(kind, &mut rng).await;
        }
        world.assert_alive(&format!("after step {step} ({kind:?})"));
    }

    // Heal everything; let the stream faults still armed fire (more events), then drain.
    world.proxy.set_fault(ProxyFault::Pass);
    world.s3.restart();
    let deadline = Instant::now() + secs(60);
    while world.faults.pending() > 0 {
        assert!(
            Instant::now() < deadline,
            "armed stream faults did not fire: is the exporter reading?"
        );
        world.sim.append_live_events(50);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    world.faults.clear();
    world.faults.release_stalls();
    let last = world.sim.live_ids().last().expect("a live log").to_string();
    {
        let World { s3, daemon, .. } = &mut world;
        let deadline = Instant::now() + profile.drain;
        loop {
            if last_s3_line_id(s3, BUCKET).as_deref() == Some(last.as_str()) {
                break;
            }
            assert!(
                !daemon.has_exited(),
                "the daemon exited on its own while draining: {:?}",
                daemon.errors()
            );
            assert!(
                Instant::now() < deadline,
                "the export did not reach the last live event {last} within {:?}",
                profile.drain
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    world.assert_alive("at the end");
    let status = world.daemon.terminate(secs(30)).await;
    assert_eq!(status.code(), Some(0), "SIGTERM stops the daemon cleanly");

    // The verdict.
    let export = read_s3_export(&world.s3, BUCKET).await;
    export.assert_importable("json");
    let report = world
        .sim
        .check_export(export.lines.iter().map(|line| line.as_ref()));
    let mut by_kind = world.injected.clone();
    for fired in world.faults.fired() {
        *by_kind.entry(fired_kind(&fired.fault)).or_default() += 1;
    }
    let faults: usize = by_kind.values().sum();
    let served = world.sim.served();
    let events_served = served.data_events();
    eprintln!(
        "campaign {} seed={seed}: {faults} faults of {} kinds injected ({} restarts), \
         {events_served} events served over {} connections, {} lines checked in {} files, \
         {} duplicates, {} losses, {} invented, {:.0} s — {}",
        profile.name,
        by_kind.len(),
        world.restarts,
        served.connections.len(),
        report.checked,
        export.files.len(),
        report.duplicates,
        report.losses,
        report.invented.len(),
        started.elapsed().as_secs_f64(),
        if report.is_ok() { "OK" } else { "WRONG" }
    );
    eprintln!("  faults by kind: {by_kind:?}");
    assert!(report.is_ok(), "{report}");
    assert!(
        faults >= profile.min_faults && by_kind.len() >= profile.min_kinds,
        "the campaign injected {faults} faults of {} kinds; it must reach {} of {}",
        by_kind.len(),
        profile.min_faults,
        profile.min_kinds
    );
    assert!(
        events_served >= profile.min_events,
        "only {events_served} events were served; the profile needs {}",
        profile.min_events
    );
}
