//! TLS for both clients, against real https servers with a CA generated in the test: the CA
//! file is accepted, a missing or wrong CA is refused with a clear error, and verification off
//! accepts anything. S3 through the sink, OpenCTI through `tls::reqwest_client_builder`.

mod support;

use std::path::PathBuf;

use opencti_stream_exporter::sink::{BodySource, S3Sink, Sink, SinkErrorKind};
use opencti_stream_exporter::tls::{TlsOptions, reqwest_client_builder};
use support::s3::TestS3;
use support::tls::TestCa;

const BUCKET: &str = "tls-bucket";

fn with_ca(ca: &TestCa) -> TlsOptions {
    TlsOptions {
        verify: true,
        ca_file: Some(ca.ca_file().to_owned()),
    }
}

fn sink(s3: &TestS3, tls: TlsOptions) -> S3Sink {
    let mut settings = s3.settings(BUCKET);
    settings.tls = tls;
    S3Sink::new(settings).unwrap()
}

async fn round_trip(sink: &S3Sink) {
    sink.prepare().await.unwrap();
    let body = BodySource::from_bytes(&b"{\"id\":\"1-0\"}\n"[..]);
    sink.put("f/stream_1700000000000_1.json", &body)
        .await
        .unwrap();
    assert_eq!(
        sink.get("f/stream_1700000000000_1.json").await.unwrap(),
        &b"{\"id\":\"1-0\"}\n"[..]
    );
}

#[tokio::test]
async fn s3_over_https_with_the_ca_file_works() {
    let ca = TestCa::new();
    let s3 = TestS3::start_with_tls(ca.server_config());
    assert!(s3.endpoint().starts_with("https://"));
    round_trip(&sink(&s3, with_ca(&ca))).await;
    assert!(s3.read(BUCKET, "f/stream_1700000000000_1.json").is_some());
}

#[tokio::test]
async fn s3_over_https_without_the_ca_is_refused_clearly() {
    let ca = TestCa::new();
    let s3 = TestS3::start_with_tls(ca.server_config());
    let err = sink(&s3, TlsOptions::default())
        .prepare()
        .await
        .unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Tls, "{err}");
    assert!(err.detail.contains("UnknownIssuer"), "{err}");
    assert!(err.detail.contains("CA file"), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn s3_over_https_with_the_wrong_ca_is_refused() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let s3 = TestS3::start_with_tls(ca.server_config());
    let err = sink(&s3, with_ca(&other))
        .put("k.json", &BodySource::from_bytes(&b"{}\n"[..]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Tls, "{err}");
    assert!(
        err.detail
            .contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(s3.keys(BUCKET).is_empty());
}

#[tokio::test]
async fn s3_over_https_without_verification_accepts_any_certificate() {
    let ca = TestCa::new();
    let s3 = TestS3::start_with_tls(ca.server_config());
    let tls = TlsOptions {
        verify: false,
        ca_file: None,
    };
    round_trip(&sink(&s3, tls)).await;
}

#[tokio::test]
async fn https_to_a_plain_http_server_is_a_tls_error() {
    let s3 = TestS3::start();
    let mut settings = s3.settings(BUCKET);
    settings.endpoint = format!("https://127.0.0.1:{}", s3.addr().port());
    let err = S3Sink::new(settings).unwrap().prepare().await.unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Tls, "{err}");
}

#[test]
fn an_unreadable_ca_file_is_refused_when_the_sink_is_built() {
    let s3 = TestS3::start();
    let mut settings = s3.settings(BUCKET);
    settings.tls.ca_file = Some(PathBuf::from("/nonexistent/minio-ca.pem"));
    let err = S3Sink::new(settings).unwrap_err();
    assert_eq!(err.kind, SinkErrorKind::Tls, "{err}");
    assert!(err.detail.contains("/nonexistent/minio-ca.pem"), "{err}");
}

/// Any HTTP answer proves the TLS handshake succeeded (the S3 server answers an anonymous GET
/// with an S3 error status).
async fn opencti_client_get(url: &str, tls: &TlsOptions) -> Result<u16, String> {
    let client = reqwest_client_builder(tls)
        .map_err(|e| e.to_string())?
        .build()
        .map_err(|e| e.to_string())?;
    match client.get(url).send().await {
        Ok(response) => Ok(response.status().as_u16()),
        Err(err) => {
            // The whole chain, as the stream client would log it.
            let mut text = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            Err(text)
        }
    }
}

#[tokio::test]
async fn the_opencti_client_follows_the_same_options() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let server = TestS3::start_with_tls(ca.server_config());
    let url = format!("{}/", server.endpoint());

    assert!(opencti_client_get(&url, &with_ca(&ca)).await.is_ok());

    let refused = opencti_client_get(&url, &TlsOptions::default())
        .await
        .unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    let refused = opencti_client_get(&url, &with_ca(&other))
        .await
        .unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    let no_check = TlsOptions {
        verify: false,
        ca_file: None,
    };
    assert!(opencti_client_get(&url, &no_check).await.is_ok());
}
