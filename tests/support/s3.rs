//! A real S3 server for tests: `s3s` + `s3s-fs` on 127.0.0.1, with SigV4 authentication, storing
//! objects as plain files under a temporary directory.
//!
//! ```ignore
//! let s3 = TestS3::start();                      // http://127.0.0.1:<port>, credentials below
//! let sink = S3Sink::new(s3.settings("bucket"))?;
//! s3.stop();                                     // connections refused (and open ones closed)
//! s3.restart();                                  // same port, same data
//! assert_eq!(s3.keys("bucket"), ["f/stream_…_1.json"]);
//! let bytes = s3.read("bucket", "f/stream_…_1.json");
//! ```
//!
//! The server runs on its own tokio runtime (two worker threads), so it keeps serving whatever
//! the test does on its own runtime, and [`TestS3::stop`] / [`TestS3::restart`] are plain
//! blocking calls usable from sync and async tests alike (they take milliseconds).
//!
//! Two fixes make `s3s-fs` 0.14 behave like a production server:
//! * **`Content-MD5` is checked before anything is stored**, for PUT and UploadPart (s3s-fs
//!   renames the object into place first and compares afterwards, and ignores it for parts);
//! * **an empty `delimiter=`** (what minio-py, the stock importer's client, sends on recursive
//!   listings) means no delimiter, as on MinIO and AWS (s3s-fs took it for a real delimiter).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures::Stream;
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use opencti_stream_exporter::secret::Secret;
use opencti_stream_exporter::sink::S3Settings;
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::stream::{ByteStream, RemainingLength};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use tokio::task::JoinSet;

/// The access key every [`TestS3`] accepts.
pub const ACCESS_KEY: &str = "test-access-key";
/// The secret key every [`TestS3`] accepts.
pub const SECRET_KEY: &str = "test-secret-key-do-not-use";

/// An in-process S3 server. Dropping it stops the server and deletes its data.
pub struct TestS3 {
    addr: SocketAddr,
    root: tempfile::TempDir,
    service: S3Service,
    tls: Option<Arc<rustls::ServerConfig>>,
    runtime: Option<tokio::runtime::Runtime>,
    running: Mutex<Option<Running>>,
}

struct Running {
    accept: tokio::task::JoinHandle<()>,
    connections: Arc<AtomicUsize>,
}

impl TestS3 {
    /// Starts a plain-http server on `127.0.0.1:<free port>`.
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// Starts an https server presenting the certificate of `tls`.
    pub fn start_with_tls(tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_inner(Some(tls))
    }

    fn start_inner(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let root = tempfile::tempdir().expect("temp dir for the S3 server");
        let service = s3_service(root.path(), ACCESS_KEY, SECRET_KEY).expect("s3s-fs root");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-s3")
            .enable_all()
            .build()
            .expect("runtime for the S3 server");
        let listener =
            bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind the S3 server");
        let addr = listener.local_addr().expect("S3 server address");
        let server = Self {
            addr,
            root,
            service,
            tls,
            runtime: Some(runtime),
            running: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime lives until drop")
    }

    fn serve(&self, listener: std::net::TcpListener) {
        let connections = Arc::new(AtomicUsize::new(0));
        let accept = self.runtime().spawn(accept_loop(
            listener,
            self.service.clone(),
            self.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            connections.clone(),
        ));
        *self.running.lock().expect("lock") = Some(Running {
            accept,
            connections,
        });
    }

    /// The address it listens on (kept across stop/restart).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (or `https://localhost:<port>` with TLS, matching the
    /// certificate's name).
    pub fn endpoint(&self) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}", self.addr.port()),
            None => format!("http://{}", self.addr),
        }
    }

    /// Sink settings for `bucket` on this server: its endpoint and credentials, short timeouts
    /// (5 s idle, 2 s connect) so failing tests fail fast, everything else default.
    pub fn settings(&self, bucket: &str) -> S3Settings {
        let mut settings = S3Settings::new(
            self.endpoint(),
            bucket,
            Secret::new(ACCESS_KEY),
            Secret::new(SECRET_KEY),
        );
        settings.connect_timeout = Duration::from_secs(2);
        settings.idle_timeout = Duration::from_secs(5);
        settings
    }

    /// Stops serving: the port refuses connections and every open connection is closed. Waits
    /// (at most 10 s) until all of them are gone. Does nothing if already stopped.
    pub fn stop(&self) {
        let Some(running) = self.running.lock().expect("lock").take() else {
            return;
        };
        running.accept.abort();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !running.accept.is_finished() || running.connections.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "the S3 server did not stop within 10 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Serves again on the same port, with the same data. Does nothing if running.
    pub fn restart(&self) {
        if self.is_running() {
            return;
        }
        // The port was just released; another process could take it in between, which is
        // unlikely on 127.0.0.1 with an ephemeral port: retry briefly, then fail loudly.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match bind(self.addr) {
                Ok(listener) => break listener,
                Err(err) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot listen on {} again: {err}",
                        self.addr
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        self.serve(listener);
    }

    /// True between start/restart and stop.
    pub fn is_running(&self) -> bool {
        self.running.lock().expect("lock").is_some()
    }

    /// The directory holding the buckets (`{root}/{bucket}/{key}`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Creates `bucket` directly on disk.
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.root().join(bucket)).expect("create the bucket directory");
    }

    /// True when `bucket` exists.
    pub fn bucket_exists(&self, bucket: &str) -> bool {
        self.root().join(bucket).is_dir()
    }

    /// Every object key of `bucket`, sorted, read from the disk (not through S3).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pending = vec![(self.root().join(bucket), String::new())];
        while let Some((dir, prefix)) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let entry = entry.expect("directory entry");
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if path.is_dir() {
                    pending.push((path, format!("{prefix}{name}/")));
                } else {
                    keys.push(format!("{prefix}{name}"));
                }
            }
        }
        keys.sort();
        keys
    }

    /// The bytes of `bucket/key`, read from the disk; `None` if absent.
    pub fn read(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.object_path(bucket, key)).ok()
    }

    /// Where `bucket/key` is stored.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root().join(bucket).join(key)
    }

    /// Files of multipart uploads that were neither completed nor aborted (upload records and
    /// stored parts). Empty when every upload was finished one way or the other.
    pub fn multipart_leftovers(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.root()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".upload"))
            .collect();
        names.sort();
        names
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so a TestS3 can be dropped inside an async test.
            runtime.shutdown_background();
        }
    }
}

/// The S3 service: s3s-fs storing under `root` (which must exist), with the fixes described in
/// the module documentation, accepting SigV4 requests signed with this one key pair.
pub fn s3_service(root: &Path, access_key: &str, secret_key: &str) -> std::io::Result<S3Service> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(CheckedFs {
        inner: fs,
        root: root.canonicalize()?,
    });
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    Ok(builder.build())
}

/// Binds without a runtime (so it works inside any test). Rust's std sets `SO_REUSEADDR` on
/// Unix, which lets a restart bind the port again while old connections are in TIME_WAIT.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves `service` on `listener` (non-blocking) until aborted, counting live connections in
/// `connections`; aborting it drops the `JoinSet`, which aborts every connection task and so
/// closes its socket.
pub async fn accept_loop(
    listener: std::net::TcpListener,
    service: S3Service,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections: Arc<AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("register the listener");
    let mut tasks = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Reap finished connection tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let guard = ConnectionGuard::new(connections.clone());
        let service = service.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let _guard = guard;
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

/// Counts a live connection; dropped (and uncounted) when its task ends or is aborted.
struct ConnectionGuard(Arc<AtomicUsize>);

impl ConnectionGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `s3s-fs` with `Content-MD5` and `x-amz-checksum-crc32c` checked before storing, and empty
/// delimiters ignored.
struct CheckedFs {
    inner: s3s_fs::FileSystem,
    root: PathBuf,
}

impl CheckedFs {
    /// s3s-fs creates the bucket directory on a PUT into a missing bucket; S3 refuses.
    fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        if self.root.join(bucket).is_dir() {
            Ok(())
        } else {
            Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            ))
        }
    }
}

/// The checksums a request declares for its body: `Content-MD5` and `x-amz-checksum-crc32c`.
struct Declared {
    md5: Option<[u8; 16]>,
    crc32c: Option<u32>,
}

impl Declared {
    fn parse(content_md5: Option<&str>, checksum_crc32c: Option<&str>) -> S3Result<Self> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let md5 = content_md5
            .map(|text| {
                b64.decode(text)
                    .ok()
                    .and_then(|bytes| bytes.try_into().ok())
                    .ok_or_else(|| {
                        s3_error!(InvalidDigest, "The Content-MD5 you specified was invalid.")
                    })
            })
            .transpose()?;
        let crc32c = checksum_crc32c
            .map(|text| {
                b64.decode(text)
                    .ok()
                    .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| {
                        s3_error!(InvalidRequest, "The x-amz-checksum-crc32c is invalid.")
                    })
            })
            .transpose()?;
        Ok(Declared { md5, crc32c })
    }
}

/// Replaces `body` by a stream that fails at its end when it does not match the checksums it
/// was declared with, and returns the flag that tells whether it failed that way. A failing
/// stream makes s3s-fs drop its temporary file instead of renaming it into place (s3s-fs checks
/// `x-amz-checksum-crc32c` itself only after the rename).
fn check_body(
    body: &mut Option<StreamingBlob>,
    declared: Declared,
) -> S3Result<Option<Arc<AtomicBool>>> {
    if declared.md5.is_none() && declared.crc32c.is_none() {
        return Ok(None);
    }
    let Some(inner) = body.take() else {
        return Ok(None);
    };
    let mismatch = Arc::new(AtomicBool::new(false));
    *body = Some(StreamingBlob::new(CheckedStream {
        inner,
        md5: Md5::new(),
        crc32c: 0,
        declared,
        finished: false,
        mismatch: mismatch.clone(),
    }));
    Ok(Some(mismatch))
}

fn bad_digest() -> s3s::S3Error {
    s3_error!(
        BadDigest,
        "The checksum you specified did not match what we received."
    )
}

struct CheckedStream {
    inner: StreamingBlob,
    md5: Md5,
    crc32c: u32,
    declared: Declared,
    finished: bool,
    mismatch: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("checksum mismatch")]
struct ChecksumMismatch;

impl Stream for CheckedStream {
    type Item = Result<Bytes, s3s::StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                if self.declared.md5.is_some() {
                    self.md5.update(&bytes);
                }
                self.crc32c = crc32c::crc32c_append(self.crc32c, &bytes);
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(None) => {
                if std::mem::replace(&mut self.finished, true) {
                    return Poll::Ready(None);
                }
                let md5: [u8; 16] = std::mem::take(&mut self.md5).finalize().into();
                let md5_ok = self.declared.md5.is_none_or(|expected| expected == md5);
                let crc_ok = self
                    .declared
                    .crc32c
                    .is_none_or(|expected| expected == self.crc32c);
                if md5_ok && crc_ok {
                    Poll::Ready(None)
                } else {
                    self.mismatch.store(true, Ordering::SeqCst);
                    Poll::Ready(Some(Err(Box::new(ChecksumMismatch))))
                }
            }
            other => other,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ByteStream for CheckedStream {
    fn remaining_length(&self) -> RemainingLength {
        self.inner.remaining_length()
    }
}

#[async_trait::async_trait]
impl S3 for CheckedFs {
    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.require_bucket(&req.input.bucket)?;
        let declared = Declared::parse(
            req.input.content_md5.as_deref(),
            req.input.checksum_crc32c.as_deref(),
        )?;
        let mismatch = check_body(&mut req.input.body, declared)?;
        let result = self.inner.put_object(req).await;
        match (result, mismatch) {
            (Err(_), Some(flag)) if flag.load(Ordering::SeqCst) => Err(bad_digest()),
            (result, _) => result,
        }
    }

    async fn upload_part(
        &self,
        mut req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let declared = Declared::parse(
            req.input.content_md5.as_deref(),
            req.input.checksum_crc32c.as_deref(),
        )?;
        let mismatch = check_body(&mut req.input.body, declared)?;
        let result = self.inner.upload_part(req).await;
        match (result, mismatch) {
            (Err(_), Some(flag)) if flag.load(Ordering::SeqCst) => Err(bad_digest()),
            (result, _) => result,
        }
    }

    async fn list_objects(
        &self,
        mut req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        if req.input.delimiter.as_deref() == Some("") {
            req.input.delimiter = None;
        }
        self.inner.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        mut req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        if req.input.delimiter.as_deref() == Some("") {
            req.input.delimiter = None;
        }
        self.inner.list_objects_v2(req).await
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.inner.create_bucket(req).await
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        self.inner.copy_object(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.inner.delete_bucket(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.inner.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.inner.delete_objects(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.inner.get_bucket_location(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.inner.get_object(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.inner.head_bucket(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.inner.head_object(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.inner.list_buckets(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.require_bucket(&req.input.bucket)?;
        self.inner.create_multipart_upload(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.inner.upload_part_copy(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.inner.list_parts(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.inner.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.inner.abort_multipart_upload(req).await
    }
}
