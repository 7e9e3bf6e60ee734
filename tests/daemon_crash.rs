//! invariants 2 and 3, docs/architecture.md#invariants under crashes: the real binary is killed
//! with SIGKILL at ten random moments of one run (a seeded RNG chooses them; the seed is printed,
//! and `DAEMON_CRASH_SEED` replays a run) while the simulator serves a first start with recovery
//! and dependency events and files are sealed and uploaded, and restarted each time on the same
//! WAL. At the end nothing is lost, files are numbered without a gap and in order, and an event is
//! exported twice only where the simulator served it twice.

mod support;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use simulator::iso;
use support::daemon::*;
use support::s3::TestS3;

const KILLS: usize = 10;

fn crash_seed() -> u64 {
    std::env::var("DAEMON_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_keeps_files_gapless() {
    let seed = crash_seed();
    eprintln!("crash schedule seed: {seed} (replay with DAEMON_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut config = simulator_config(301, 5_000);
    config.knowledge_base = 300;
    config.rate = Some(1_500);
    let sim = start_simulator(config).await;
    let first_live = sim.live_ids().first().copied().expect("a live log");
    let last = sim.live_ids().last().expect("a live log").to_string();
    let s3 = TestS3::start();
    // First start as pycti does it: from 0-0 with recovery (until just before the live log, so
    // both recovery and live events are served), dependencies included.
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .set(
            "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
            &iso(first_live.ms.saturating_sub(1)),
        )
        .set("CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES", "false")
        .set("WRITE_MAX_BYTES", "128KiB");

    let mut kill_points = Vec::new();
    for _ in 0..KILLS {
        let mut daemon = harness.spawn();
        let served = sim.served_events();
        let files = s3_keys(&s3, BUCKET).len();
        let point = match rng.random_range(0..4) {
            // Anywhere from start-up (WAL recovery, first connection) on.
            0 => {
                let delay = rng.random_range(0..400);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                format!("{delay} ms after start")
            }
            // After some more files were uploaded.
            1 => {
                let more = rng.random_range(1..=3);
                wait_until("more uploads (or the end of the export)", secs(40), || {
                    s3_keys(&s3, BUCKET).len() >= files + more
                        || last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
                })
                .await;
                format!("after {more} more files")
            }
            // After the simulator served some more events.
            _ => {
                let more = rng.random_range(50..=1_200);
                wait_until(
                    "more events served (or the end of the export)",
                    secs(40),
                    || {
                        sim.served_events() >= served + more
                            || last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
                    },
                )
                .await;
                format!("after {more} more events served")
            }
        };
        daemon.kill();
        kill_points.push(point);
    }
    eprintln!("killed: {kill_points:?}");

    let mut daemon = harness.spawn();
    wait_until("the last live event is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(20)).await.code(), Some(0));

    let export = read_s3_export(&s3, BUCKET).await;
    for connection in &sim.served().connections {
        eprintln!(
            "connection {}: from {:?}, {:?}, {} events, first {:?}",
            connection.number,
            connection.requested_start(),
            connection.mode,
            connection.events.len(),
            connection.keys().next()
        );
    }
    export.assert_importable_with_replays("json");
    let oracle = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(oracle.is_ok(), "seed {seed}: {oracle}");
    let served = sim.served();
    assert!(
        served.accepted().count() > 1,
        "the kills made the daemon reconnect"
    );
    assert!(
        oracle.expected > 5_000,
        "recovery and live events were expected"
    );
    eprintln!(
        "{} files, {} lines, {} duplicates (served again after a kill), {} connections",
        export.files.len(),
        export.len(),
        oracle.duplicates,
        served.connections.len()
    );
}
