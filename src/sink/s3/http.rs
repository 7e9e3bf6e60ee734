//! The HTTP client under aws-sdk-s3: our `reqwest::Client` (rustls, the shared
//! [`TlsOptions`](crate::tls::TlsOptions)), plugged in through smithy's `HttpClient` trait.
//!
//! Why not the SDK's own client: one TLS stack and one certificate policy for OpenCTI and S3
//! (custom CA *and* "accept any certificate"), and no second copy of hyper/rustls glue.
//!
//! Timeouts are progress-based, so that a slow but moving upload of a large object is never cut
//! while a dead or hanging server is always detected:
//! * connecting (TCP + TLS) must finish within `connect_timeout`;
//! * then, until the response headers arrive, every `idle_timeout` at least one request-body
//!   chunk must be taken by the connection (the server is reading) — once the body is sent, the
//!   response must start within `idle_timeout`;
//! * each frame of the response body must arrive within `idle_timeout` of the previous one.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_s3::config::RuntimeComponents;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use tokio::time::{Instant, Sleep};

/// An S3 HTTP client over `reqwest`, with progress-based timeouts.
#[derive(Clone)]
pub(crate) struct ReqwestHttpClient {
    client: reqwest::Client,
    idle_timeout: Duration,
}

impl fmt::Debug for ReqwestHttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestHttpClient")
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl ReqwestHttpClient {
    /// Wraps `client` (built with its connect timeout and TLS settings).
    pub(crate) fn new(client: reqwest::Client, idle_timeout: Duration) -> Self {
        Self {
            client,
            idle_timeout,
        }
    }
}

impl HttpClient for ReqwestHttpClient {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // Our timeouts come from S3Settings, set when the reqwest client was built.
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for ReqwestHttpClient {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.client.clone();
        let idle_timeout = self.idle_timeout;
        HttpConnectorFuture::new(async move { send(client, idle_timeout, request).await })
    }
}

async fn send(
    client: reqwest::Client,
    idle_timeout: Duration,
    request: HttpRequest,
) -> Result<HttpResponse, ConnectorError> {
    let request = request
        .try_into_http1x()
        .map_err(|err| ConnectorError::user(err.into()))?;
    let progress = Progress::new();
    let request = request.map(|body| {
        reqwest::Body::wrap(ProgressBody {
            inner: body,
            progress: progress.clone(),
        })
    });
    let request =
        reqwest::Request::try_from(request).map_err(|err| ConnectorError::user(err.into()))?;

    let response = tokio::select! {
        response = client.execute(request) => response.map_err(connector_error)?,
        () = progress.stalled(idle_timeout) => {
            return Err(ConnectorError::timeout(
                format!("no progress for {idle_timeout:?} while sending the request or waiting for the response").into(),
            ));
        }
    };

    let response: http::Response<reqwest::Body> = response.into();
    let response = response.map(|body| {
        SdkBody::from_body_1_x(IdleTimeoutBody {
            inner: body,
            idle_timeout,
            deadline: Box::pin(tokio::time::sleep(idle_timeout)),
        })
    });
    HttpResponse::try_from(response).map_err(|err| ConnectorError::other(err.into(), None))
}

fn connector_error(err: reqwest::Error) -> ConnectorError {
    if err.is_timeout() {
        ConnectorError::timeout(err.into())
    } else if err.is_connect() {
        ConnectorError::io(err.into()).never_connected()
    } else {
        ConnectorError::io(err.into())
    }
}

/// When the request last made progress (milliseconds since `start`).
#[derive(Clone)]
struct Progress {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Completes once nothing happened for `idle`.
    async fn stalled(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request body that records each chunk the connection takes.
struct ProgressBody {
    inner: SdkBody,
    progress: Progress,
}

impl http_body::Body for ProgressBody {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            self.progress.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that fails when no frame arrives for `idle_timeout`.
struct IdleTimeoutBody {
    inner: reqwest::Body,
    idle_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

/// The error of a response body that stalled.
#[derive(Debug, thiserror::Error)]
#[error("no data received for {0:?} while reading the response body")]
struct ResponseStalled(Duration);

impl http_body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = Instant::now() + self.idle_timeout;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(Box::new(ResponseStalled(self.idle_timeout)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// True when `err` or one of its sources says a response body stalled.
pub(crate) fn is_response_stall(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<ResponseStalled>() {
            return true;
        }
        current = e.source();
    }
    false
}
