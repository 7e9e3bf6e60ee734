//! The optional bearer token of `/metrics` and `/status` (`CONNECTOR_METRICS_TOKEN` or
//! `CONNECTOR_METRICS_TOKEN_FILE`). `/healthz` and `/readyz` stay open for orchestrators: they
//! tell whether the daemon is alive and ready, nothing about the data.
//!
//! A request passes when its `Authorization` header is `Bearer <token>`; the comparison takes
//! the same time whatever the bytes presented, so timing does not reveal how much of a guess
//! was right.

use axum::http::{HeaderMap, header};

use crate::secret::Secret;

/// Whether `headers` carry the `expected` token (always true when no token is configured).
pub fn authorized(expected: Option<&Secret>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes())
        .and_then(bearer_token)
        .unwrap_or_default();
    constant_time_eq(presented, expected.expose().as_bytes())
}

/// The token of `Bearer <token>` (scheme case-insensitive, as RFC 9110 says).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| value[7..].trim_ascii())
}

/// Compares `presented` with `expected` in time that depends only on `expected`'s length.
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut difference = u8::from(presented.len() != expected.len());
    for (index, byte) in expected.iter().enumerate() {
        let other = presented.get(index).copied().unwrap_or(!byte);
        difference |= std::hint::black_box(byte ^ other);
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).expect("a header value"),
        );
        headers
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let token = Secret::new("s3cr3t-token");
        let expected = Some(&token);
        assert!(authorized(expected, &headers("Bearer s3cr3t-token")));
        assert!(authorized(expected, &headers("bearer s3cr3t-token")));
        assert!(!authorized(expected, &headers("Bearer s3cr3t-toke")));
        assert!(!authorized(expected, &headers("Bearer s3cr3t-token2")));
        assert!(!authorized(expected, &headers("Basic s3cr3t-token")));
        assert!(!authorized(expected, &headers("Bearer ")));
        assert!(!authorized(expected, &HeaderMap::new()));
        assert!(authorized(None, &HeaderMap::new()), "no token configured");
    }
}
