//! Upload throughput of the S3 sink against the s3s-fs example server running in its own
//! process: 16 MiB objects, one single PUT versus multipart uploads.
//!
//! ```text
//! cargo build --release --example s3_server
//! cargo bench --bench sink_upload
//! ```
//!
//! The server stores objects on the local disk (its root is a temporary directory), so the
//! figures include its writes; every iteration overwrites the same key to keep the disk use
//! bounded.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opencti_stream_exporter::secret::Secret;
use opencti_stream_exporter::sink::{BodySource, S3Settings, S3Sink, Sink};

const MIB: u64 = 1024 * 1024;
const OBJECT_BYTES: u64 = 16 * MIB;
const ACCESS_KEY: &str = "bench-access-key";
const SECRET_KEY: &str = "bench-secret-key";

/// The example server, killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
    _root: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn example_binary() -> PathBuf {
    // This bench runs from target/release/deps/; examples are built in target/release/examples/.
    let exe = std::env::current_exe().expect("bench executable path");
    let release = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/release directory");
    let binary = release.join("examples").join("s3_server");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --release --example s3_server` first",
        binary.display()
    );
    binary
}

fn start_server() -> Server {
    let root = tempfile::tempdir().expect("server root");
    let mut child = Command::new(example_binary())
        .args([
            "--port",
            "0",
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
        ])
        .arg("--root")
        .arg(root.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example S3 server");
    let stdout = child.stdout.take().expect("server stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the server's first line");
    let endpoint = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from the server: {line:?}"))
        .to_owned();
    Server {
        child,
        endpoint,
        _root: root,
    }
}

fn settings(endpoint: &str, threshold: u64, part_size: u64, concurrency: usize) -> S3Settings {
    let mut settings = S3Settings::new(
        endpoint,
        "bench",
        Secret::new(ACCESS_KEY),
        Secret::new(SECRET_KEY),
    );
    settings.multipart_threshold = threshold;
    settings.part_size = part_size;
    settings.part_concurrency = concurrency;
    settings
}

fn upload(c: &mut Criterion) {
    let server = start_server();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let data: Vec<u8> = (0..OBJECT_BYTES)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect();
    let body = BodySource::from_bytes(data);

    let mut group = c.benchmark_group("s3_upload_16MiB");
    group.throughput(Throughput::Bytes(OBJECT_BYTES));
    group.sample_size(20);
    let variants = [
        ("single_put", 64 * MIB, 16 * MIB, 1),
        ("multipart_8MiB_parts_x1", 8 * MIB, 8 * MIB, 1),
        ("multipart_8MiB_parts_x2", 8 * MIB, 8 * MIB, 2),
        ("multipart_5MiB_parts_x4", 8 * MIB, 5 * MIB, 4),
    ];
    for (name, threshold, part_size, concurrency) in variants {
        let sink = S3Sink::new(settings(
            &server.endpoint,
            threshold,
            part_size,
            concurrency,
        ))
        .expect("sink");
        runtime.block_on(sink.prepare()).expect("bucket");
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime
                    .block_on(sink.put("bench/stream_1700000000000_1.json", &body))
                    .expect("upload")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, upload);
criterion_main!(benches);
