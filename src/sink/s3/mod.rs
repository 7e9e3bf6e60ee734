//! The S3 sink: MinIO, SeaweedFS, AWS or any S3-compatible store, through aws-sdk-s3.
//!
//! Choices, and why:
//! * **Path-style addressing** (`http://host:port/bucket/key`): what MinIO and most
//!   self-hosted stores expect, and what works with a bare IP address.
//! * **Our own checksum in a header** on every PUT, known before the body is sent: by default
//!   the body's **`x-amz-checksum-crc32c`** (recorded by the WAL when it sealed the segment, so
//!   the upload decompresses each byte once and hashes it with a CRC32C that costs next to
//!   nothing), checked by MinIO, AWS, SeaweedFS (4.48 checked) and s3s before they store
//!   anything. For servers that ignore
//!   that header, [`UploadChecksum::Md5`] sends **`Content-MD5`** instead, which every
//!   S3-compatible server checks, at the price of reading the body once more to compute it.
//!   Multipart parts always carry their own `Content-MD5`. Segments sealed by WAL format 1 carry
//!   an MD5: they are sent with `Content-MD5` whatever the setting.
//! * **SDK checksums `WhenRequired`** by default, for requests and responses: since 2025
//!   aws-sdk-s3 adds CRC32 trailers (`aws-chunked` bodies) to uploads by default, which older
//!   MinIO and other S3-compatible servers refuse.
//! * **`UNSIGNED-PAYLOAD`** for bodies: a streamed body's SHA-256 is not known before it is sent
//!   (computing it would mean reading, and decompressing, every segment twice). The request is
//!   still signed with SigV4, including the checksum header, so the server rejects any body
//!   that is not the one we signed for. MinIO, SeaweedFS, AWS and s3s accept it.
//! * **Single PUT** of a streamed body up to [`S3Settings::multipart_threshold`]; above it,
//!   **multipart** with parts of [`S3Settings::part_size`], each buffered in memory with its own
//!   `Content-MD5`, a few in flight at once, completed in order, aborted on any failure.
//! * **No retries inside the SDK**: one attempt per call; the uploader retries forever itself.
//! * **Progress-based timeouts** ([`S3Settings::idle_timeout`]): a hanging server fails an
//!   attempt with [`SinkErrorKind::Timeout`] in bounded time, a slow but moving upload is never
//!   cut.
//! * **No HTTP proxy from the environment**, like the stock exporter's minio client.

mod classify;
mod http;
mod multipart;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;
use wal::Checksum;

use self::classify::{below_http, classify};
use self::http::ReqwestHttpClient;
use super::body::{body_error, stream_body};
use super::{BodySource, ObjectInfo, Sink, SinkError, SinkErrorKind};
use crate::secret::Secret;
use crate::tls::{self, TlsOptions};

/// The smallest part S3 accepts (except for the last part of an upload).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// The most parts one multipart upload may have.
const MAX_PARTS: u64 = 10_000;

/// When the SDK adds (requests) or checks (responses) flexible checksums (CRC32 and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumPolicy {
    /// Only for operations that require one. The default: works with every S3-compatible
    /// server; integrity comes from `Content-MD5`.
    #[default]
    WhenRequired,
    /// Whenever the operation supports one (the SDK's own default since 2025): CRC32 trailers
    /// on uploads, which some servers refuse.
    WhenSupported,
}

/// Which checksum header proves a PUT's body to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadChecksum {
    /// `x-amz-checksum-crc32c`, from the segment's entry: no extra pass over the body. The
    /// default.
    #[default]
    Crc32c,
    /// `Content-MD5`, for servers that do not check `x-amz-checksum-crc32c`: the body is read
    /// (and decompressed) once more before each PUT to compute it.
    Md5,
}

/// Everything the S3 sink needs to know.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Base URL of the server, e.g. `http://minio:9000` (see [`S3Settings::endpoint_url`]).
    pub endpoint: String,
    /// The bucket (created by [`Sink::prepare`] if missing).
    pub bucket: String,
    /// The SigV4 region (`us-east-1` by default; MinIO accepts any unless configured).
    pub region: String,
    /// `MINIO_ACCESS_KEY`.
    pub access_key: Secret,
    /// `MINIO_SECRET_KEY`.
    pub secret_key: Secret,
    /// Certificate checks for https endpoints.
    pub tls: TlsOptions,
    /// When the SDK adds flexible checksums to requests.
    pub request_checksums: ChecksumPolicy,
    /// When the SDK checks flexible checksums of responses.
    pub response_checksums: ChecksumPolicy,
    /// The checksum header of single PUTs.
    pub upload_checksum: UploadChecksum,
    /// Bodies longer than this go through a multipart upload (default 64 MiB).
    pub multipart_threshold: u64,
    /// Size of each multipart part, at least 5 MiB (default 16 MiB). Raised automatically when
    /// a body would need more than 10,000 parts.
    pub part_size: u64,
    /// Parts of one upload in flight at once (default 2). Memory for a multipart upload is
    /// about `(part_concurrency + 1) * part_size`.
    pub part_concurrency: usize,
    /// Longest wait to open a connection (TCP and TLS), default 10 s.
    pub connect_timeout: Duration,
    /// Longest time without any progress (bytes sent or received) before an attempt fails
    /// with [`SinkErrorKind::Timeout`], default 60 s.
    pub idle_timeout: Duration,
}

/// The region used when none is configured: S3's own default, the one region whose buckets are
/// created without a location constraint. MinIO and most other servers accept it whatever their
/// own region setting.
pub const DEFAULT_REGION: &str = "us-east-1";

impl S3Settings {
    /// Settings with the defaults for everything but the endpoint, bucket and credentials.
    pub fn new(
        endpoint: impl Into<String>,
        bucket: impl Into<String>,
        access_key: Secret,
        secret_key: Secret,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            region: DEFAULT_REGION.to_owned(),
            access_key,
            secret_key,
            tls: TlsOptions::default(),
            request_checksums: ChecksumPolicy::WhenRequired,
            response_checksums: ChecksumPolicy::WhenRequired,
            upload_checksum: UploadChecksum::Crc32c,
            multipart_threshold: 64 * 1024 * 1024,
            part_size: 16 * 1024 * 1024,
            part_concurrency: 2,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// The endpoint URL for `MINIO_ENDPOINT`, `MINIO_PORT` and `MINIO_SECURE`:
    /// `http[s]://host:port`, with an IPv6 address in brackets.
    pub fn endpoint_url(host: &str, port: u16, secure: bool) -> String {
        let scheme = if secure { "https" } else { "http" };
        if host.contains(':') && !host.starts_with('[') {
            format!("{scheme}://[{host}]:{port}")
        } else {
            format!("{scheme}://{host}:{port}")
        }
    }
}

/// Uploads to one bucket of an S3-compatible server. Cheap to clone (the SDK client is shared).
#[derive(Debug, Clone)]
pub struct S3Sink {
    client: aws_sdk_s3::Client,
    bucket: String,
    endpoint: String,
    region: String,
    upload_checksum: UploadChecksum,
    multipart_threshold: u64,
    part_size: u64,
    part_concurrency: usize,
}

impl S3Sink {
    /// Builds the client. Opens no connection: the first call does.
    ///
    /// # Errors
    /// [`SinkErrorKind::Tls`] when the CA file is unusable, [`SinkErrorKind::Client`] when the
    /// endpoint is not an http(s) URL or the HTTP client cannot be built.
    pub fn new(settings: S3Settings) -> Result<Self, SinkError> {
        let endpoint = settings.endpoint.trim_end_matches('/').to_owned();
        let valid_endpoint = reqwest::Url::parse(&endpoint)
            .ok()
            .is_some_and(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some());
        if !valid_endpoint {
            return Err(SinkError::new(
                SinkErrorKind::Client,
                format!(
                    "invalid S3 endpoint {endpoint:?}: expected http://host:port or https://host:port"
                ),
            ));
        }
        let http = tls::reqwest_client_builder(&settings.tls)
            .map_err(|err| {
                SinkError::new(
                    SinkErrorKind::Tls,
                    format!("S3 client for {endpoint}: {err}"),
                )
            })?
            .connect_timeout(settings.connect_timeout)
            .no_proxy()
            .http1_only()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|err| {
                SinkError::new(
                    SinkErrorKind::Client,
                    format!("building the S3 HTTP client for {endpoint}: {err}"),
                )
            })?;
        let credentials = Credentials::new(
            settings.access_key.expose(),
            settings.secret_key.expose(),
            None,
            None,
            "opencti-stream-exporter",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .credentials_provider(credentials)
            .http_client(ReqwestHttpClient::new(http, settings.idle_timeout))
            .retry_config(RetryConfig::disabled())
            .timeout_config(TimeoutConfig::disabled())
            .stalled_stream_protection(StalledStreamProtectionConfig::disabled())
            .request_checksum_calculation(match settings.request_checksums {
                ChecksumPolicy::WhenRequired => RequestChecksumCalculation::WhenRequired,
                ChecksumPolicy::WhenSupported => RequestChecksumCalculation::WhenSupported,
            })
            .response_checksum_validation(match settings.response_checksums {
                ChecksumPolicy::WhenRequired => ResponseChecksumValidation::WhenRequired,
                ChecksumPolicy::WhenSupported => ResponseChecksumValidation::WhenSupported,
            })
            .build();
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: settings.bucket,
            endpoint,
            region: settings.region,
            upload_checksum: settings.upload_checksum,
            multipart_threshold: settings.multipart_threshold,
            part_size: settings.part_size.max(MIN_PART_SIZE),
            part_concurrency: settings.part_concurrency.max(1),
        })
    }

    /// The underlying SDK client (path-style, our HTTP client, no retries). For verification
    /// tools and tests that need an S3 call the [`Sink`] trait does not offer.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `s3://bucket/key at endpoint`, for error details and logs.
    fn location(&self, key: &str) -> String {
        format!("s3://{}/{key} at {}", self.bucket, self.endpoint)
    }

    async fn create_bucket(&self) -> Result<(), SinkError> {
        let what = format!("creating bucket {} at {}", self.bucket, self.endpoint);
        let mut request = self.client.create_bucket().bucket(&self.bucket);
        if self.region != DEFAULT_REGION {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(self.region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, endpoint = %self.endpoint, "created bucket");
                Ok(())
            }
            Err(err)
                if matches!(
                    err.code(),
                    Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(classify(&err, &what)),
        }
    }

    async fn put_single(&self, key: &str, body: &BodySource, what: &str) -> Result<(), SinkError> {
        let md5_body;
        let body = match (self.upload_checksum, body.checksum) {
            (UploadChecksum::Md5, Checksum::Crc32c(_)) => {
                let crc_body = body.clone();
                md5_body = tokio::task::spawn_blocking(move || crc_body.with_md5())
                    .await
                    .map_err(|join| SinkError::new(SinkErrorKind::Io, format!("{what}: {join}")))?
                    .map_err(|err| body_error(&err, what))?;
                &md5_body
            }
            _ => body,
        };
        let failure = Arc::new(OnceLock::new());
        let streaming = stream_body(body, what.to_owned(), failure.clone());
        let length = i64::try_from(body.len).map_err(|_| {
            SinkError::new(SinkErrorKind::Client, format!("{what}: body too large"))
        })?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(length);
        let request = match body.checksum {
            Checksum::Crc32c(_) => request.checksum_crc32_c(body.checksum_base64()),
            Checksum::Md5(_) => request.content_md5(body.checksum_base64()),
        };
        let result = request
            .content_type("application/octet-stream")
            .body(ByteStream::new(SdkBody::from_body_1_x(streaming)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            // A body failure is the precise reason; the HTTP error only says "body error".
            Err(err) => Err(failure
                .get()
                .cloned()
                .unwrap_or_else(|| classify(&err, what))),
        }
    }
}

#[async_trait::async_trait]
impl Sink for S3Sink {
    async fn prepare(&self) -> Result<(), SinkError> {
        let what = format!("checking bucket {} at {}", self.bucket, self.endpoint);
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(err) => {
                let error = classify(&err, &what);
                match error.kind {
                    SinkErrorKind::NotFound | SinkErrorKind::NoSuchBucket => {
                        self.create_bucket().await
                    }
                    _ => Err(error),
                }
            }
        }
    }

    async fn put(&self, key: &str, body: &BodySource) -> Result<(), SinkError> {
        let what = format!("PUT {} ({} bytes)", self.location(key), body.len);
        if body.len > self.multipart_threshold {
            multipart::upload(self, key, body, &what).await
        } else {
            self.put_single(key, body, &what).await
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SinkError> {
        let what = format!(
            "listing s3://{}/{prefix}* at {}",
            self.bucket, self.endpoint
        );
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|err| classify(&err, &what))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                if key.ends_with('/') {
                    continue;
                }
                objects.push(ObjectInfo {
                    key: key.to_owned(),
                    size: object
                        .size()
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                });
            }
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            let next = page.next_continuation_token().map(str::to_owned);
            if next.is_none() || next == token {
                return Err(SinkError::new(
                    SinkErrorKind::Server,
                    format!(
                        "{what}: the server said the listing is truncated but gave no new continuation token"
                    ),
                ));
            }
            token = next;
        }
        // S3 lists in byte order already; sorting makes that a guarantee.
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn get(&self, key: &str) -> Result<Bytes, SinkError> {
        let what = format!("GET {}", self.location(key));
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| classify(&err, &what))?;
        let data = output
            .body
            .collect()
            .await
            .map_err(|err| below_http(&err, &what))?;
        Ok(data.into_bytes())
    }

    fn describe(&self) -> String {
        format!("s3://{} at {} (path-style)", self.bucket, self.endpoint)
    }
}
