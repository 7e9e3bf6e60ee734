//! The wall clock going backwards between seals never breaks the order of file names
//! (docs/architecture.md#invariant-3: `ts` strictly increases with N, so lexicographic listing
//! order, which the importer follows, is file order).
//!
//! The machine's clock is shared, so the test does not move it: it makes the WAL's last seal
//! happen an hour in the future instead (as when the clock ran ahead and NTP then set it back),
//! then runs the real daemon on that WAL with the true clock, an hour "earlier".

mod support;

use std::time::Duration;

use opencti_stream_exporter::ids::now_ms;
use support::daemon::{
    BUCKET, Harness, last_s3_line_id, read_s3_export, s3_keys, secs, simulator_config,
    start_simulator, wait_until,
};
use support::s3::TestS3;

const HOUR_MS: u64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_names_stay_in_order_when_the_wall_clock_goes_back_between_seals() {
    let sim = start_simulator(simulator_config(31, 1000)).await;
    let s3 = TestS3::start();
    // Files are sealed by size only during the first run, so its last events stay unsealed.
    let harness = Harness::new(&sim)
        .s3(&s3, BUCKET)
        .live_log_only(&sim)
        .set("WRITE_MAX_BYTES", "256KiB")
        .set("WRITE_EVERY_SEC", "3600");
    let mut daemon = harness.spawn();
    let first_last = sim.live_ids().last().expect("a live log").to_string();
    wait_until("the first run reads everything", secs(60), || {
        sim.served()
            .accepted()
            .flat_map(|c| c.events.iter())
            .any(|e| e.key.id.to_string() == first_last)
    })
    .await;
    wait_until("files of the first run are uploaded", secs(60), || {
        s3_keys(&s3, BUCKET).len() >= 2
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));

    // The clock runs an hour ahead for one seal.
    let future = {
        let (wal, _) = wal::Wal::open(wal::WalOptions::new(harness.wal_dir(), 1 << 30))
            .expect("opening the stopped daemon's WAL");
        assert!(
            wal.backlog().records > 0,
            "the first run left unsealed events"
        );
        let sealed = wal
            .seal(u64::MAX, now_ms() + HOUR_MS)
            .expect("sealing with the clock ahead")
            .expect("something to seal");
        sealed.ts_ms
    };

    // Then it is set back: the daemon seals with the true clock, an hour before that seal.
    sim.append_live_events(500);
    let last = sim.live_ids().last().expect("a live log").to_string();
    let harness = harness.set("WRITE_EVERY_SEC", "1");
    let mut daemon = harness.spawn();
    wait_until("everything is uploaded", secs(60), || {
        last_s3_line_id(&s3, BUCKET).as_deref() == Some(last.as_str())
    })
    .await;
    assert_eq!(daemon.terminate(secs(30)).await.code(), Some(0));

    let export = read_s3_export(&s3, BUCKET).await;
    // Numbers 1, 2, 3… in listing order, timestamps strictly increasing, importable.
    export.assert_importable("json");
    let after: Vec<u64> = export
        .files
        .iter()
        .map(|f| f.ts_ms)
        .filter(|ts| *ts > future)
        .collect();
    assert!(
        !after.is_empty(),
        "files sealed after the clock went back are named after the future seal ({future})"
    );
    assert!(
        after
            .iter()
            .all(|ts| *ts < future + HOUR_MS - Duration::from_secs(60).as_millis() as u64),
        "they follow the last seal closely rather than jumping: {after:?}"
    );
    let report = sim.check_export(export.lines.iter().map(|line| line.as_ref()));
    assert!(report.is_ok(), "{report}");
}
