//! The S3 sink behind the fault-injecting proxy: every fault gives the right error kind, in
//! bounded time, and the sink works again once the fault is gone.

mod support;

use std::time::{Duration, Instant};

use opencti_stream_exporter::sink::{BodySource, S3Sink, Sink, SinkErrorKind};
use support::proxy::{Canned, Fault, FaultProxy};
use support::s3::TestS3;

const BUCKET: &str = "faults";
/// Idle timeout of the sink in these tests: a hang must end in about this long.
const IDLE: Duration = Duration::from_millis(1500);
/// Generous bound on any failing call (several idle timeouts): "bounded time".
const BOUND: Duration = Duration::from_secs(10);

struct Setup {
    s3: TestS3,
    proxy: FaultProxy,
    sink: S3Sink,
}

fn setup() -> Setup {
    let s3 = TestS3::start();
    s3.create_bucket(BUCKET);
    let proxy = FaultProxy::start(s3.addr());
    let mut settings = s3.settings(BUCKET);
    settings.endpoint = proxy.endpoint();
    settings.idle_timeout = IDLE;
    settings.connect_timeout = Duration::from_secs(1);
    let sink = S3Sink::new(settings).unwrap();
    Setup { s3, proxy, sink }
}

impl Setup {
    /// The head of the request that went through the proxy starting with `start`, lowercased.
    fn put_head(&self, start: &str) -> String {
        self.proxy
            .request_heads()
            .iter()
            .find(|h| h.starts_with(start))
            .unwrap_or_else(|| panic!("{start} went through the proxy"))
            .to_ascii_lowercase()
    }
}

fn body() -> BodySource {
    BodySource::from_bytes(b"{\"id\":\"1-0\",\"type\":\"create\"}\n".repeat(1000))
}

/// Runs a put and returns its error kind (or None) and how long it took.
async fn put_kind(sink: &S3Sink, key: &str) -> (Option<SinkErrorKind>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(BOUND * 2, sink.put(key, &body()))
        .await
        .expect("the put did not end in bounded time");
    (result.err().map(|e| e.kind), started.elapsed())
}

#[tokio::test]
async fn pass_relays_everything() {
    let t = setup();
    let (kind, _) = put_kind(&t.sink, "a.json").await;
    assert_eq!(kind, None);
    assert_eq!(t.s3.keys(BUCKET), ["a.json"]);
    assert!(t.proxy.bytes_to_upstream() > body().len);
}

#[tokio::test]
async fn a_short_delay_is_only_slower() {
    let t = setup();
    t.proxy.set_fault(Fault::Delay(Duration::from_millis(300)));
    let (kind, took) = put_kind(&t.sink, "a.json").await;
    assert_eq!(kind, None);
    assert!(took >= Duration::from_millis(300));
    assert_eq!(t.s3.keys(BUCKET), ["a.json"]);
}

#[tokio::test]
async fn a_delay_longer_than_the_idle_timeout_is_a_timeout() {
    let t = setup();
    t.proxy.set_fault(Fault::Delay(IDLE * 4));
    let (kind, took) = put_kind(&t.sink, "a.json").await;
    assert_eq!(kind, Some(SinkErrorKind::Timeout));
    assert!(took < BOUND, "{took:?}");
}

#[tokio::test]
async fn a_reset_is_a_network_error() {
    let t = setup();
    t.proxy.set_fault(Fault::Reset);
    let (kind, took) = put_kind(&t.sink, "a.json").await;
    assert_eq!(kind, Some(SinkErrorKind::Network));
    assert!(took < BOUND, "{took:?}");
    assert!(t.s3.keys(BUCKET).is_empty());
}

#[tokio::test]
async fn a_hang_is_a_timeout_in_bounded_time() {
    let t = setup();
    t.proxy.set_fault(Fault::Hang);
    let (kind, took) = put_kind(&t.sink, "a.json").await;
    assert_eq!(kind, Some(SinkErrorKind::Timeout));
    assert!(took >= IDLE, "{took:?}");
    assert!(took < BOUND, "{took:?}");
    let started = Instant::now();
    let err = t.sink.prepare().await.unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Timeout, "{err}");
    assert!(started.elapsed() < BOUND);
}

#[tokio::test]
async fn a_truncated_response_is_a_network_error() {
    let t = setup();
    t.proxy.set_fault(Fault::Truncate(20));
    let (kind, took) = put_kind(&t.sink, "a.json").await;
    assert_eq!(kind, Some(SinkErrorKind::Network));
    assert!(took < BOUND, "{took:?}");
}

#[tokio::test]
async fn a_truncated_download_is_a_network_error() {
    let t = setup();
    let big = BodySource::from_bytes(vec![b'x'; 1024 * 1024]);
    t.sink.put("big.json", &big).await.unwrap();
    t.proxy.set_fault(Fault::Truncate(4096));
    let err = t.sink.get("big.json").await.unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Network, "{err}");
}

#[tokio::test]
async fn canned_errors_are_classified() {
    let t = setup();
    for (canned, expected) in [
        (Canned::InternalError, SinkErrorKind::Server),
        (Canned::SlowDown, SinkErrorKind::Throttled),
        (Canned::AccessDenied, SinkErrorKind::Auth),
    ] {
        t.proxy.set_fault(Fault::Respond(canned));
        let err = t.sink.put("a.json", &body()).await.unwrap_err();
        assert_eq!(err.kind, expected, "{canned:?}: {err}");
        // HEAD responses carry no body: the status alone must classify them.
        let err = t.sink.prepare().await.unwrap_err();
        assert_eq!(err.kind, expected, "{canned:?} on HEAD: {err}");
    }
    assert!(t.s3.keys(BUCKET).is_empty());
}

#[tokio::test]
async fn a_one_shot_fault_hits_one_request_and_the_next_one_works() {
    let t = setup();
    t.proxy.set_fault(Fault::Pass);
    t.sink.put("warm.json", &body()).await.unwrap();
    t.proxy.fault_next(Fault::Respond(Canned::SlowDown));
    let (kind, _) = put_kind(&t.sink, "a.json").await;
    assert_eq!(kind, Some(SinkErrorKind::Throttled));
    let (kind, _) = put_kind(&t.sink, "a.json").await;
    assert_eq!(kind, None);
    assert_eq!(t.s3.keys(BUCKET), ["a.json", "warm.json"]);
    assert!(t.proxy.requests() >= 3);
}

#[tokio::test]
async fn the_upstream_down_behind_the_proxy_is_a_network_error() {
    let t = setup();
    t.s3.stop();
    let (kind, took) = put_kind(&t.sink, "a.json").await;
    assert_eq!(kind, Some(SinkErrorKind::Network));
    assert!(took < BOUND);
    t.s3.restart();
    let deadline = Instant::now() + BOUND;
    while put_kind(&t.sink, "a.json").await.0.is_some() {
        assert!(Instant::now() < deadline, "no recovery after restart");
    }
    assert_eq!(t.s3.keys(BUCKET), ["a.json"]);
}

/// What goes on the wire, as a production server sees it: a signed PUT with a known length,
/// the body's CRC32C in `x-amz-checksum-crc32c` (or its MD5 in `Content-MD5` when asked for),
/// `UNSIGNED-PAYLOAD`, and no checksum trailer (which older MinIO refuses) unless asked for.
#[tokio::test]
async fn uploads_carry_their_checksum_header_and_no_checksum_trailer_by_default() {
    let t = setup();
    let body = body();
    t.sink.put("a.json", &body).await.unwrap();
    let put = t.put_head("PUT /faults/a.json");
    assert!(
        put.contains(
            &format!("x-amz-checksum-crc32c: {}", body.checksum_base64()).to_ascii_lowercase()
        ),
        "{put}"
    );
    assert!(
        put.contains(&format!("content-length: {}", body.len)),
        "{put}"
    );
    assert!(
        put.contains("x-amz-content-sha256: unsigned-payload"),
        "{put}"
    );
    assert!(put.contains("authorization: aws4-hmac-sha256"), "{put}");
    assert!(put.contains("x-amz-checksum-crc32c"), "{put}");
    assert!(!put.contains("content-md5"), "{put}");
    assert!(!put.contains("x-amz-trailer"), "{put}");
    assert!(!put.contains("transfer-encoding"), "{put}");
    assert!(!put.contains(support::s3::SECRET_KEY), "{put}");

    // Content-MD5 for servers that do not check x-amz-checksum-crc32c.
    let mut settings = t.s3.settings(BUCKET);
    settings.endpoint = t.proxy.endpoint();
    settings.upload_checksum = opencti_stream_exporter::sink::UploadChecksum::Md5;
    let md5_sink = S3Sink::new(settings).unwrap();
    md5_sink.put("m.json", &body).await.unwrap();
    let put = t.put_head("PUT /faults/m.json");
    let md5 = BodySource::from_bytes(t.s3.read(BUCKET, "m.json").unwrap())
        .with_md5()
        .unwrap()
        .checksum_base64();
    assert!(
        put.contains(&format!("content-md5: {md5}").to_ascii_lowercase()),
        "{put}"
    );
    assert!(!put.contains("x-amz-checksum"), "{put}");
    assert!(!put.contains("x-amz-trailer"), "{put}");

    // The opt-in: flexible checksums whenever supported (the SDK's own default).
    let mut settings = t.s3.settings(BUCKET);
    settings.endpoint = t.proxy.endpoint();
    settings.request_checksums = opencti_stream_exporter::sink::ChecksumPolicy::WhenSupported;
    settings.upload_checksum = opencti_stream_exporter::sink::UploadChecksum::Md5;
    let sink = S3Sink::new(settings).unwrap();
    sink.put("b.json", &body).await.unwrap();
    let put = t.put_head("PUT /faults/b.json");
    assert!(
        put.contains("x-amz-checksum") || put.contains("x-amz-trailer"),
        "{put}"
    );
    assert_eq!(
        t.s3.read(BUCKET, "b.json").map(|b| b.len() as u64),
        Some(body.len)
    );
}
