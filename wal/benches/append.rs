//! Durable append throughput: 2 KB records in groups of 1, 64 and 1024, many groups in flight so
//! the writer's group commit gathers them (one flush and fsync per commit), plus the one-in-flight
//! case where every group waits for its own fsync. Between iterations (untimed) the records are
//! sealed and the segments marked uploaded, so the database stays the size it has in service.
//!
//! `cargo bench -p wal --bench append -- --measurement-time 5 --warm-up-time 1`

mod support;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use wal::{Appender, Wal, WalOptions};

/// Records appended per measured iteration.
const RECORDS_PER_ITERATION: usize = 16 * 1024;
/// Records kept in flight (queued or committing) by the pipelined benchmarks: about 8 MiB.
const RECORDS_IN_FLIGHT: usize = 4096;

fn append_all(appender: &Appender, records: &[Bytes], group: usize, in_flight_groups: usize) {
    let mut pending = VecDeque::new();
    for (i, chunk) in records.chunks(group).enumerate() {
        pending.push_back(appender.append(chunk.to_vec(), Some(format!("{i}-0"))));
        if pending.len() >= in_flight_groups
            && let Some(oldest) = pending.pop_front()
        {
            oldest.wait().expect("durable append");
        }
    }
    for p in pending {
        p.wait().expect("durable append");
    }
}

fn drain(wal: &Wal) {
    while wal
        .seal(64 << 20, 1_718_012_346_001)
        .expect("seal")
        .is_some()
    {}
    for meta in wal.segments() {
        wal.mark_uploaded(meta.number, 1_718_012_346_001)
            .expect("mark uploaded");
    }
}

fn bench(c: &mut Criterion, name: &str, group: usize, in_flight_groups: usize, records: &[Bytes]) {
    let mut benchmarks = c.benchmark_group(name);
    benchmarks.sample_size(10);
    benchmarks.throughput(Throughput::Elements(records.len() as u64));
    benchmarks.bench_function(BenchmarkId::new("group", group), |b| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (wal, _) = Wal::open(WalOptions::new(dir.path(), 1 << 40)).expect("open WAL");
        let appender = wal.appender();
        b.iter_custom(|iterations| {
            let mut measured = Duration::ZERO;
            for _ in 0..iterations {
                let start = Instant::now();
                append_all(&appender, records, group, in_flight_groups);
                measured += start.elapsed();
                drain(&wal);
            }
            measured
        });
    });
    benchmarks.finish();
}

fn append_benchmarks(c: &mut Criterion) {
    let records = support::records(RECORDS_PER_ITERATION, 1);
    for group in [1, 64, 1024] {
        let in_flight = (RECORDS_IN_FLIGHT / group).max(2);
        bench(c, "append_2KB_pipelined", group, in_flight, &records);
    }
    for group in [1, 64] {
        bench(c, "append_2KB_one_in_flight", group, 1, &records[..2048]);
    }
}

criterion_group!(benches, append_benchmarks);
criterion_main!(benches);
