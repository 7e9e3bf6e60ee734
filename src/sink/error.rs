//! The one error type of every sink, classified so the uploader can decide how loudly to retry.

use std::fmt;

/// What kind of failure a [`SinkError`] is. The uploader retries all of them (forever, with
/// backoff); the kind tells the operator what to fix and [`SinkError::is_retryable`] tells
/// whether waiting alone can fix it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkErrorKind {
    /// Credentials refused: unknown access key, wrong secret (signature mismatch), access
    /// denied, or a clock too far off for SigV4.
    Auth,
    /// The bucket does not exist (call [`Sink::prepare`](super::Sink::prepare) again).
    NoSuchBucket,
    /// The object asked for does not exist.
    NotFound,
    /// The server asks us to slow down (`SlowDown`, 503, 429).
    Throttled,
    /// Could not connect, connection refused, reset or closed mid-request, truncated response.
    Network,
    /// No progress for the configured time (connect, send or receive).
    Timeout,
    /// The TLS handshake failed: certificate refused (unknown CA, wrong host name, expired) or
    /// the server does not speak TLS.
    Tls,
    /// The bytes do not match their declared length or MD5 (the body source is corrupt, or the
    /// server reported `BadDigest`).
    Integrity,
    /// The server failed (5xx other than throttling).
    Server,
    /// The server refused the request as invalid (4xx other than the above), or the request
    /// could not be built.
    Client,
    /// A local I/O error (reading the body, writing the export directory).
    Io,
}

impl SinkErrorKind {
    /// A short lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::NoSuchBucket => "no_such_bucket",
            Self::NotFound => "not_found",
            Self::Throttled => "throttled",
            Self::Network => "network",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Integrity => "integrity",
            Self::Server => "server",
            Self::Client => "client",
            Self::Io => "io",
        }
    }
}

impl fmt::Display for SinkErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed sink call: its [`kind`](SinkErrorKind) and a detail that names the operation, the
/// bucket or directory, the key, and what the server or the system said. Never contains a
/// credential or a signed header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} error: {detail}")]
pub struct SinkError {
    /// The classification.
    pub kind: SinkErrorKind,
    /// What was being done, to what, and why it failed.
    pub detail: String,
}

impl SinkError {
    /// An error of `kind` with `detail`.
    pub fn new(kind: SinkErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    /// True when the same call may succeed later without anyone changing the configuration, the
    /// server or the data: network trouble, timeouts, throttling, server errors, local I/O
    /// errors (a full disk may be freed). False for auth, missing bucket or object, TLS,
    /// integrity and client errors, which need someone to act (the uploader still retries them,
    /// but should say so loudly).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            SinkErrorKind::Throttled
                | SinkErrorKind::Network
                | SinkErrorKind::Timeout
                | SinkErrorKind::Server
                | SinkErrorKind::Io
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind_and_the_detail() {
        let err = SinkError::new(
            SinkErrorKind::Auth,
            "PUT s3://exports/a/stream_1_1.json: server answered 403 SignatureDoesNotMatch",
        );
        assert_eq!(
            err.to_string(),
            "auth error: PUT s3://exports/a/stream_1_1.json: server answered 403 SignatureDoesNotMatch"
        );
        assert!(!err.is_retryable());
        assert!(SinkError::new(SinkErrorKind::Timeout, "x").is_retryable());
    }
}
