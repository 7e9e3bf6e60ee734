//! The S3 sink against a real S3 server (s3s-fs, in process, SigV4 checked): round trips,
//! integrity, authentication, outages, listing as the stock importer does.

mod support;

use std::io::{self, Read};
use std::time::{Duration, Instant};

use opencti_stream_exporter::secret::Secret;
use opencti_stream_exporter::sink::{
    BodySource, Checksum, Compression, S3Sink, Sink, SinkErrorKind, UploadChecksum, file_number,
    object_key,
};
use support::s3::TestS3;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn ndjson(lines: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..lines {
        out.extend_from_slice(format!("{{\"id\":\"{i}-0\",\"type\":\"create\"}}\n").as_bytes());
    }
    out
}

#[tokio::test]
async fn put_then_get_round_trips_with_either_checksum_header() {
    let s3 = TestS3::start();
    let sink = S3Sink::new(s3.settings("exports")).unwrap();
    sink.prepare().await.unwrap();
    let key = object_key("opencti-stream", 1_700_000_000_123, 1, Compression::None);
    let bytes = ndjson(500);

    sink.put(&key, &BodySource::from_bytes(bytes.clone()))
        .await
        .unwrap();

    assert_eq!(s3.read("exports", &key).as_deref(), Some(&bytes[..]));
    assert_eq!(sink.get(&key).await.unwrap(), bytes);
    let listed = sink.list("opencti-stream/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
    assert_eq!(listed[0].size, bytes.len() as u64);
    assert_eq!(file_number(&listed[0].key), Some(1));

    let mut settings = s3.settings("exports");
    settings.upload_checksum = UploadChecksum::Md5;
    let md5_sink = S3Sink::new(settings).unwrap();
    let key = object_key("opencti-stream", 1_700_000_000_124, 2, Compression::None);
    md5_sink
        .put(&key, &BodySource::from_bytes(bytes.clone()))
        .await
        .unwrap();
    assert_eq!(s3.read("exports", &key).as_deref(), Some(&bytes[..]));
}

#[tokio::test]
async fn prepare_creates_a_missing_bucket_and_is_idempotent() {
    let s3 = TestS3::start();
    let sink = S3Sink::new(s3.settings("new-bucket")).unwrap();
    assert!(!s3.bucket_exists("new-bucket"));
    sink.prepare().await.unwrap();
    assert!(s3.bucket_exists("new-bucket"));
    sink.prepare().await.unwrap();
}

#[tokio::test]
async fn a_put_into_a_missing_bucket_says_no_such_bucket() {
    let s3 = TestS3::start();
    let sink = S3Sink::new(s3.settings("missing-bucket")).unwrap();
    let err = sink
        .put("k.json", &BodySource::from_bytes(&b"{}\n"[..]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::NoSuchBucket, "{err}");
    assert!(err.detail.contains("s3://missing-bucket/k.json"), "{err}");
}

#[tokio::test]
async fn a_body_that_does_not_match_its_checksum_is_refused_and_stores_nothing() {
    let s3 = TestS3::start();
    s3.create_bucket("bucket");
    let bytes = pattern(3 * 1024 * 1024 + 5, 1);
    let good = BodySource::from_bytes(bytes.clone());
    let Checksum::Crc32c(crc) = good.checksum else {
        panic!("a body in memory carries its CRC32C");
    };
    for (upload, wrong) in [
        (UploadChecksum::Crc32c, Checksum::Crc32c(crc ^ 1)),
        (UploadChecksum::Md5, Checksum::Crc32c(crc ^ 1)),
        (UploadChecksum::Crc32c, Checksum::Md5([7; 16])),
    ] {
        let mut settings = s3.settings("bucket");
        settings.upload_checksum = upload;
        let sink = S3Sink::new(settings).unwrap();
        let bytes = bytes.clone();
        let corrupt = BodySource::new(good.len, wrong, move || {
            Ok(Box::new(io::Cursor::new(bytes.clone())) as Box<dyn Read + Send>)
        });

        let err = sink.put("f/stream_1_1.json", &corrupt).await.unwrap_err();

        assert_eq!(
            err.kind,
            SinkErrorKind::Integrity,
            "{upload:?} {wrong:?}: {err}"
        );
        assert!(s3.keys("bucket").is_empty(), "{:?}", s3.keys("bucket"));
    }
}

/// Bypasses the sink's own check: a raw PUT whose checksum header is wrong must be refused by
/// the server (BadDigest), and must leave an earlier object under the same key untouched.
#[tokio::test]
async fn the_server_checks_the_checksum_header_before_storing() {
    let s3 = TestS3::start();
    s3.create_bucket("bucket");
    let sink = S3Sink::new(s3.settings("bucket")).unwrap();
    sink.put("k.json", &BodySource::from_bytes(&b"first\n"[..]))
        .await
        .unwrap();
    let other = BodySource::from_bytes(&b"something else\n"[..]);

    for md5 in [false, true] {
        let request = sink.client().put_object().bucket("bucket").key("k.json");
        let request = if md5 {
            request.content_md5(other.with_md5().unwrap().checksum_base64())
        } else {
            request.checksum_crc32_c(other.checksum_base64())
        };
        let err = request
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b"second\n"))
            .send()
            .await
            .unwrap_err();

        assert_eq!(
            aws_sdk_s3::error::ProvideErrorMetadata::code(&err),
            Some("BadDigest"),
            "md5: {md5}"
        );
        assert_eq!(
            s3.read("bucket", "k.json").as_deref(),
            Some(&b"first\n"[..])
        );
    }
}

#[tokio::test]
async fn a_body_reader_failure_fails_the_put_and_stores_nothing() {
    struct FailingReader {
        served: usize,
        fail_at: usize,
    }
    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.served >= self.fail_at {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "segment checksum mismatch",
                ));
            }
            let n = buf.len().min(self.fail_at - self.served);
            buf[..n].fill(b'x');
            self.served += n;
            Ok(n)
        }
    }
    let s3 = TestS3::start();
    s3.create_bucket("bucket");
    let sink = S3Sink::new(s3.settings("bucket")).unwrap();
    // Fails exactly at the end (all declared bytes read, then the checksum error at EOF) and
    // in the middle.
    for fail_at in [2 * 1024 * 1024, 700_000] {
        let body = BodySource::new(2 * 1024 * 1024, Checksum::Crc32c(0), move || {
            Ok(Box::new(FailingReader { served: 0, fail_at }) as Box<dyn Read + Send>)
        });
        let err = sink.put("f/x.json", &body).await.unwrap_err();
        assert_eq!(err.kind, SinkErrorKind::Integrity, "{err}");
        assert!(err.detail.contains("segment checksum mismatch"), "{err}");
        assert!(s3.keys("bucket").is_empty());
    }
}

#[tokio::test]
async fn a_wrong_secret_is_an_auth_error() {
    let s3 = TestS3::start();
    s3.create_bucket("bucket");
    let mut settings = s3.settings("bucket");
    settings.secret_key = Secret::new("not-the-secret");
    let sink = S3Sink::new(settings).unwrap();

    let err = sink
        .put("k.json", &BodySource::from_bytes(&b"{}\n"[..]))
        .await
        .unwrap_err();

    assert_eq!(err.kind, SinkErrorKind::Auth, "{err}");
    assert!(!err.is_retryable());
    assert!(!err.to_string().contains("not-the-secret"));
    assert!(!err.to_string().contains(support::s3::SECRET_KEY));
    let err = sink.prepare().await.unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Auth, "{err}");
}

#[tokio::test]
async fn a_stopped_server_is_a_network_error_and_a_restart_heals_it() {
    let s3 = TestS3::start();
    s3.create_bucket("bucket");
    let sink = S3Sink::new(s3.settings("bucket")).unwrap();
    let body = BodySource::from_bytes(ndjson(100));
    sink.put("f/stream_1700000000000_1.json", &body)
        .await
        .unwrap();

    s3.stop();
    let started = Instant::now();
    let err = sink
        .put("f/stream_1700000000001_2.json", &body)
        .await
        .unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Network, "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() < Duration::from_secs(5));

    s3.restart();
    // The pooled connection to the old server may fail once more; a fresh one must work.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sink.put("f/stream_1700000000001_2.json", &body).await {
            Ok(()) => break,
            Err(err) => {
                assert_eq!(err.kind, SinkErrorKind::Network, "{err}");
                assert!(
                    Instant::now() < deadline,
                    "still failing after restart: {err}"
                );
            }
        }
    }
    assert_eq!(
        s3.keys("bucket"),
        [
            "f/stream_1700000000000_1.json",
            "f/stream_1700000000001_2.json"
        ]
    );
}

#[tokio::test]
async fn uploading_the_same_key_with_the_same_bytes_again_is_harmless() {
    let s3 = TestS3::start();
    s3.create_bucket("bucket");
    let sink = S3Sink::new(s3.settings("bucket")).unwrap();
    let body = BodySource::from_bytes(ndjson(50));
    let key = "f/stream_1700000000000_3.json";
    sink.put(key, &body).await.unwrap();
    sink.put(key, &body).await.unwrap();
    assert_eq!(s3.keys("bucket"), [key]);
    assert_eq!(sink.get(key).await.unwrap(), ndjson(50));
}

#[tokio::test]
async fn list_is_lexicographic_recursive_and_follows_pages() {
    let s3 = TestS3::start();
    s3.create_bucket("bucket");
    // More objects than one listing page (1000), written straight to the server's disk, in a
    // scrambled order, plus objects outside the prefix.
    let dir = s3.object_path("bucket", "f/sub");
    std::fs::create_dir_all(&dir).unwrap();
    let mut expected = Vec::new();
    for n in (1..=1005u64).rev() {
        let key = object_key("f", 1_700_000_000_000 + n, n, Compression::None);
        std::fs::write(s3.object_path("bucket", &key), b"{}\n").unwrap();
        expected.push(key);
    }
    std::fs::write(dir.join("deeper.json"), b"{}\n").unwrap();
    expected.push("f/sub/deeper.json".to_owned());
    std::fs::write(s3.object_path("bucket", "g.json"), b"{}\n").unwrap();
    expected.sort();
    let sink = S3Sink::new(s3.settings("bucket")).unwrap();

    let listed: Vec<String> = sink
        .list("f/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();

    assert_eq!(listed, expected);
    let numbers: Vec<u64> = listed.iter().filter_map(|k| file_number(k)).collect();
    assert_eq!(numbers[..3], [1, 2, 3]);
}

#[tokio::test]
async fn an_empty_delimiter_as_minio_py_sends_lists_recursively() {
    let s3 = TestS3::start();
    s3.create_bucket("bucket");
    let sink = S3Sink::new(s3.settings("bucket")).unwrap();
    for key in ["f/stream_1700000000000_1.json", "f/sub/x.json"] {
        sink.put(key, &BodySource::from_bytes(&b"{}\n"[..]))
            .await
            .unwrap();
    }
    for v2 in [true, false] {
        let keys: Vec<String> = if v2 {
            let out = sink
                .client()
                .list_objects_v2()
                .bucket("bucket")
                .prefix("f/")
                .delimiter("")
                .send()
                .await
                .unwrap();
            assert!(out.common_prefixes().is_empty());
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect()
        } else {
            let out = sink
                .client()
                .list_objects()
                .bucket("bucket")
                .prefix("f/")
                .delimiter("")
                .send()
                .await
                .unwrap();
            assert!(out.common_prefixes().is_empty());
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned))
                .collect()
        };
        assert_eq!(
            keys,
            ["f/stream_1700000000000_1.json", "f/sub/x.json"],
            "v2={v2}"
        );
    }
}

#[tokio::test]
async fn an_empty_body_uploads() {
    let s3 = TestS3::start();
    s3.create_bucket("bucket");
    let sink = S3Sink::new(s3.settings("bucket")).unwrap();
    sink.put("empty.json", &BodySource::from_bytes(Vec::new()))
        .await
        .unwrap();
    assert_eq!(s3.read("bucket", "empty.json").as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn get_of_a_missing_key_is_not_found() {
    let s3 = TestS3::start();
    s3.create_bucket("bucket");
    let sink = S3Sink::new(s3.settings("bucket")).unwrap();
    let err = sink.get("nope.json").await.unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::NotFound, "{err}");
}

#[test]
fn describe_never_shows_credentials() {
    let s3 = TestS3::start();
    let sink = S3Sink::new(s3.settings("bucket")).unwrap();
    let text = sink.describe();
    assert!(text.contains("s3://bucket"), "{text}");
    assert!(!text.contains(support::s3::SECRET_KEY));
    assert!(!text.contains(support::s3::ACCESS_KEY));
    assert!(!format!("{:?}", s3.settings("bucket")).contains(support::s3::SECRET_KEY));
}
