//! Turning an aws-sdk-s3 error into a [`SinkError`]: by the S3 error code when the server sent
//! one, by the HTTP status otherwise, and by the error's source chain for failures below HTTP
//! (TLS, connection, timeouts).

use std::error::Error as StdError;
use std::io;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::error::display::DisplayErrorContext;

use super::http::is_response_stall;
use crate::sink::{SinkError, SinkErrorKind};

/// Classifies `err`, the failure of `what` (an operation and its target, e.g.
/// `PUT s3://bucket/key at http://host:9000`).
pub(crate) fn classify<E>(err: &SdkError<E, HttpResponse>, what: &str) -> SinkError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let inner = service.err();
            let code = inner.code();
            let kind = kind_of_response(status, code);
            let message = inner.message().unwrap_or("");
            let code_text = code.unwrap_or("no error code");
            let detail = if message.is_empty() {
                format!("{what}: server answered {status} {code_text}")
            } else {
                format!("{what}: server answered {status} {code_text}: {message}")
            };
            SinkError::new(kind, detail)
        }
        SdkError::TimeoutError(_) => SinkError::new(
            SinkErrorKind::Timeout,
            format!("{what}: timed out: {}", DisplayErrorContext(err)),
        ),
        SdkError::DispatchFailure(dispatch) if dispatch.is_timeout() => SinkError::new(
            SinkErrorKind::Timeout,
            format!("{what}: timed out: {}", DisplayErrorContext(err)),
        ),
        SdkError::ConstructionFailure(_) => SinkError::new(
            SinkErrorKind::Client,
            format!(
                "{what}: the request could not be built: {}",
                DisplayErrorContext(err)
            ),
        ),
        _ => below_http(err, what),
    }
}

/// Classifies a failure with no usable HTTP response (dispatch failure, truncated or stalled
/// response) from its source chain.
pub(crate) fn below_http(err: &(dyn StdError + 'static), what: &str) -> SinkError {
    if let Some(tls) = find_tls_error(err) {
        return SinkError::new(
            SinkErrorKind::Tls,
            format!(
                "{what}: TLS handshake failed: {tls} (check the CA file, the certificate \
                 verification setting, and that the endpoint speaks https)"
            ),
        );
    }
    if is_response_stall(err) {
        return SinkError::new(
            SinkErrorKind::Timeout,
            format!("{what}: {}", DisplayErrorContext(err)),
        );
    }
    SinkError::new(
        SinkErrorKind::Network,
        format!("{what}: {}", DisplayErrorContext(err)),
    )
}

/// The kind of an S3 error response with HTTP `status` and S3 error `code`.
pub(crate) fn kind_of_response(status: u16, code: Option<&str>) -> SinkErrorKind {
    match code {
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "RequestTimeTooSkewed"
            | "InvalidToken"
            | "ExpiredToken"
            | "AuthorizationHeaderMalformed"
            | "InvalidSecurity"
            | "AllAccessDisabled",
        ) => SinkErrorKind::Auth,
        Some("NoSuchBucket") => SinkErrorKind::NoSuchBucket,
        Some("NoSuchKey" | "NotFound" | "NoSuchUpload") => SinkErrorKind::NotFound,
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequests"
            | "RequestThrottled"
            | "ServiceUnavailable"
            | "XMinioServerNotInitialized",
        ) => SinkErrorKind::Throttled,
        Some("BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch" | "IncompleteBody") => {
            SinkErrorKind::Integrity
        }
        Some("RequestTimeout") => SinkErrorKind::Timeout,
        _ => match status {
            401 | 403 => SinkErrorKind::Auth,
            404 => SinkErrorKind::NotFound,
            429 | 503 => SinkErrorKind::Throttled,
            500..=599 => SinkErrorKind::Server,
            _ => SinkErrorKind::Client,
        },
    }
}

/// The rustls error somewhere in `err`'s chain, including inside `io::Error`s (whose
/// `source()` skips the error they wrap).
fn find_tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            if let Some(found) = find_tls_error(inner) {
                return Some(found);
            }
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_win_over_statuses() {
        assert_eq!(
            kind_of_response(503, Some("SlowDown")),
            SinkErrorKind::Throttled
        );
        assert_eq!(
            kind_of_response(403, Some("SignatureDoesNotMatch")),
            SinkErrorKind::Auth
        );
        assert_eq!(
            kind_of_response(404, Some("NoSuchBucket")),
            SinkErrorKind::NoSuchBucket
        );
        assert_eq!(
            kind_of_response(400, Some("BadDigest")),
            SinkErrorKind::Integrity
        );
        assert_eq!(kind_of_response(500, None), SinkErrorKind::Server);
        assert_eq!(
            kind_of_response(500, Some("InternalError")),
            SinkErrorKind::Server
        );
        assert_eq!(kind_of_response(403, None), SinkErrorKind::Auth);
        assert_eq!(
            kind_of_response(400, Some("InvalidArgument")),
            SinkErrorKind::Client
        );
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = io::Error::new(io::ErrorKind::InvalidData, tls);
        let wrapped = io::Error::other(io);
        let error = below_http(&wrapped, "GET x");
        assert_eq!(error.kind, SinkErrorKind::Tls);
        assert!(error.detail.contains("UnknownIssuer"), "{}", error.detail);
    }
}
