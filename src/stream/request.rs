//! The stream request, as pycti sends it (docs/opencti-protocol.md#pycti-request), with the start
//! position of docs/opencti-protocol.md#start-position.

use reqwest::Url;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CACHE_CONTROL, HeaderMap, HeaderName, HeaderValue, USER_AGENT,
};

use super::{ResumePosition, StreamSettings};

/// `User-Agent` of every request to OpenCTI.
pub const USER_AGENT_VALUE: &str = concat!("opencti-stream-exporter/", env!("CARGO_PKG_VERSION"));

/// A resume position that cannot be put in a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The cursor has characters a header value cannot carry.
    #[error("the resume cursor {cursor:?} cannot be sent as Last-Event-ID")]
    InvalidCursor {
        /// The cursor.
        cursor: String,
    },
    /// The token has characters a header value cannot carry (the value is not shown).
    #[error("the OpenCTI token cannot be sent in an authorization header (invalid characters)")]
    InvalidToken,
}

/// Values of `recover_until` that pycti treats as "no recovery"
/// (docs/opencti-protocol.md#pycti-request).
const NO_RECOVERY_VALUES: [&str; 6] = ["no", "none", "No", "None", "false", "False"];

/// `{base}/stream/{id}` (or `{base}/stream` without an id), plus `?recover=<percent-encoded>`
/// when the position has a recovery bound.
pub fn stream_url(settings: &StreamSettings, position: &ResumePosition) -> Url {
    let mut url = settings.base_url.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push("stream");
        if let Some(id) = &settings.live_stream_id {
            segments.push(id);
        }
    }
    match position.recover_until.as_deref() {
        Some(recover) if !recover.is_empty() && !NO_RECOVERY_VALUES.contains(&recover) => {
            // `query_pairs_mut` encodes as application/x-www-form-urlencoded: `+` becomes `%2B`
            // and `:` `%3A`, so Express reads back exactly the date we sent.
            url.query_pairs_mut().append_pair("recover", recover);
        }
        _ => url.set_query(None),
    }
    url
}

/// The headers of the stream request: the token (marked sensitive), the three stream options as
/// pycti's `true`/`false` strings, `Last-Event-ID` for the cursor, SSE and no-cache headers.
pub fn stream_headers(
    settings: &StreamSettings,
    position: &ResumePosition,
) -> Result<HeaderMap, RequestError> {
    let mut headers = HeaderMap::new();
    if let Some(authorization) = authorization(settings)? {
        headers.insert(AUTHORIZATION, authorization);
    }
    let flag = |value: bool| HeaderValue::from_static(if value { "true" } else { "false" });
    headers.insert(
        HeaderName::from_static("listen-delete"),
        flag(settings.listen_delete),
    );
    headers.insert(
        HeaderName::from_static("no-dependencies"),
        flag(settings.no_dependencies),
    );
    headers.insert(
        HeaderName::from_static("with-inferences"),
        flag(settings.with_inferences),
    );
    headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    if let Some(cursor) = position
        .cursor
        .as_deref()
        .filter(|cursor| !cursor.is_empty())
    {
        let value = HeaderValue::from_str(cursor).map_err(|_| RequestError::InvalidCursor {
            cursor: cursor.to_owned(),
        })?;
        headers.insert(HeaderName::from_static("last-event-id"), value);
    }
    Ok(headers)
}

/// `Bearer <token>`, marked sensitive so that no debug output shows it; `None` without a token.
pub fn authorization(settings: &StreamSettings) -> Result<Option<HeaderValue>, RequestError> {
    if settings.token.is_empty() {
        return Ok(None);
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {}", settings.token.expose()))
        .map_err(|_| RequestError::InvalidToken)?;
    value.set_sensitive(true);
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn settings(base: &str, id: Option<&str>) -> StreamSettings {
        let base = Url::parse(base).expect("valid url");
        StreamSettings::new(base, Secret::new("t0ken"), id.map(str::to_owned))
    }

    #[test]
    fn url_has_stream_id_and_encoded_recover() {
        let position = ResumePosition {
            cursor: Some("0-0".into()),
            recover_until: Some("2024-06-10T09:38:20+00:00".into()),
        };
        let url = stream_url(&settings("http://opencti:8080/", Some("live-1")), &position);
        assert_eq!(
            url.as_str(),
            "http://opencti:8080/stream/live-1?recover=2024-06-10T09%3A38%3A20%2B00%3A00"
        );
        let url = stream_url(
            &settings("https://x.example/base/", None),
            &ResumePosition::default(),
        );
        assert_eq!(url.as_str(), "https://x.example/base/stream");
        for no in NO_RECOVERY_VALUES {
            let position = ResumePosition {
                cursor: None,
                recover_until: Some(no.into()),
            };
            assert_eq!(
                stream_url(&settings("http://o", Some("s")), &position).query(),
                None
            );
        }
    }

    #[test]
    fn headers_follow_pycti() {
        let mut settings = settings("http://o", Some("s"));
        settings.no_dependencies = false;
        let position = ResumePosition {
            cursor: Some("1718012300000-0".into()),
            recover_until: None,
        };
        let headers = stream_headers(&settings, &position).expect("valid");
        assert_eq!(headers["authorization"], "Bearer t0ken");
        assert!(headers["authorization"].is_sensitive());
        assert_eq!(headers["listen-delete"], "true");
        assert_eq!(headers["no-dependencies"], "false");
        assert_eq!(headers["with-inferences"], "false");
        assert_eq!(headers["last-event-id"], "1718012300000-0");
        assert_eq!(headers["accept"], "text/event-stream");
        assert!(!format!("{headers:?}").contains("t0ken"));
        let headers = stream_headers(&settings, &ResumePosition::default()).expect("valid");
        assert!(headers.get("last-event-id").is_none());
        let bad = ResumePosition {
            cursor: Some("1\n2".into()),
            recover_until: None,
        };
        assert!(matches!(
            stream_headers(&settings, &bad),
            Err(RequestError::InvalidCursor { .. })
        ));
    }
}
