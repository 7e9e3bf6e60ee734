//! The simulator's live stream read with a plain HTTP client: framing, ids, resume, recovery,
//! dependencies, heartbeats.

mod simulator_common;

use std::collections::HashSet;
use std::time::Duration;

use opencti_stream_exporter::simulator::{EventId, OCTI_EXT, SimulatorConfig};
use simulator_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_prints_a_few_frames() {
    let sim = start(small_config(1)).await;
    let mut reader = connect(
        &sim.stream_url(),
        &[("authorization", &bearer(&sim)), ("last-event-id", "0-0")],
    )
    .await;
    assert_eq!(reader.status, 200);
    let frames = reader
        .read_until(|f| f.iter().filter(|f| f.is_data_event()).count() >= 300)
        .await;
    let mut total = 0;
    let mut data = 0;
    for f in &frames {
        if f.is_data_event() {
            total += f.raw.len();
            data += 1;
        }
    }
    for f in frames.iter().take(12) {
        println!("{}", String::from_utf8_lossy(&f.raw));
    }
    println!("{data} data frames, avg {} bytes", total / data.max(1));
    let _ = (
        HashSet::<u8>::new(),
        Duration::ZERO,
        EventId::ZERO,
        OCTI_EXT,
        SimulatorConfig::default(),
    );
}
