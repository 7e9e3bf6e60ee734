//! Seal throughput in MB/s of raw NDJSON: 16 MiB (the daemon's default largest file) and 64 MiB
//! of 2 KB records appended (untimed) in commits of about 1 MiB, then one timed seal of all of it
//! (copy of the stored frames with a CRC32C of the stored bytes, the frames' raw CRC32Cs combined,
//! fsync, rename, directory fsync, and the registering commit); and the light-load case, where every record was its own
//! commit and the seal recompresses small frames together.
//!
//! `cargo bench -p wal --bench seal -- --measurement-time 5 --warm-up-time 1`

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wal::{Wal, WalOptions};

const NOW_MS: u64 = 1_718_012_346_001;

fn fill(wal: &Wal, records: &[Bytes], group: usize, pipelined: bool) {
    let appender = wal.appender();
    let mut pending = Vec::new();
    for chunk in records.chunks(group) {
        let p = appender.append(chunk.to_vec(), None);
        if pipelined {
            pending.push(p);
        } else {
            p.wait().expect("durable append");
        }
    }
    for p in pending {
        p.wait().expect("durable append");
    }
}

fn bench(c: &mut Criterion, name: &str, records: &[Bytes], group: usize, pipelined: bool) {
    let raw: u64 = records.iter().map(|r| r.len() as u64 + 1).sum();
    let mut benchmarks = c.benchmark_group("seal");
    benchmarks.sample_size(10);
    benchmarks.throughput(Throughput::Bytes(raw));
    benchmarks.bench_function(name, |b| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (wal, _) = Wal::open(WalOptions::new(dir.path(), 1 << 40)).expect("open WAL");
        b.iter_custom(|iterations| {
            let mut measured = Duration::ZERO;
            for _ in 0..iterations {
                fill(&wal, records, group, pipelined);
                let start = Instant::now();
                let meta = wal
                    .seal(u64::MAX, NOW_MS)
                    .expect("seal")
                    .expect("a segment");
                measured += start.elapsed();
                assert_eq!(meta.raw_bytes, raw);
                wal.mark_uploaded(meta.number, NOW_MS)
                    .expect("mark uploaded");
            }
            measured
        });
    });
    benchmarks.finish();
}

fn seal_benchmarks(c: &mut Criterion) {
    let records = support::records(32 * 1024, 2);
    bench(
        c,
        "16MiB_from_1MiB_commits",
        &records[..8 * 1024],
        512,
        true,
    );
    bench(c, "64MiB_from_1MiB_commits", &records, 512, true);
    bench(
        c,
        "4MiB_from_one_record_commits",
        &records[..2048],
        1,
        false,
    );
}

criterion_group!(benches, seal_benchmarks);
criterion_main!(benches);
