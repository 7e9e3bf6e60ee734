//! The GraphQL transport to OpenCTI's API, as pycti sends it
//! (docs/opencti-protocol.md#state-storage): `POST {OPENCTI_URL}/graphql` with `Authorization:
//! Bearer <token>` and a JSON body `{"query", "variables"}`. Secrets: the token only goes into the
//! header, marked sensitive; no error built here contains it.

use std::time::Duration;

use reqwest::Url;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use crate::secret::Secret;

/// Largest answer read (the mutations answer a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why a GraphQL call failed. The texts come from the server or the network, never from the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request could not be sent or its answer read.
    #[error("cannot reach the OpenCTI API: {0}")]
    Network(String),
    /// No answer within the time limit.
    #[error("the OpenCTI API did not answer within {0:?}")]
    Timeout(Duration),
    /// A non-2xx HTTP status.
    #[error("the OpenCTI API answered HTTP {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// The server refused the token (GraphQL `AUTH_REQUIRED` / `FORBIDDEN`).
    #[error("the OpenCTI API refused the token (OPENCTI_TOKEN): {0}")]
    Unauthorized(String),
    /// A GraphQL error.
    #[error("the OpenCTI API answered an error: {0}")]
    Graphql(String),
    /// An answer that is not the JSON expected.
    #[error("unexpected answer from the OpenCTI API: {0}")]
    Malformed(String),
    /// The token cannot be put in a header (the value is not shown).
    #[error("the OpenCTI token cannot be sent in an authorization header (invalid characters)")]
    InvalidToken,
}

impl ApiError {
    /// A short label of the kind of failure, to log a failure once per change of kind.
    pub fn kind(&self) -> String {
        match self {
            Self::Network(_) => "network".into(),
            Self::Timeout(_) => "timeout".into(),
            Self::Status { status } => format!("http_{status}"),
            Self::Unauthorized(_) => "unauthorized".into(),
            Self::Graphql(_) => "graphql".into(),
            Self::Malformed(_) => "malformed".into(),
            Self::InvalidToken => "invalid_token".into(),
        }
    }
}

/// A client for `{OPENCTI_URL}/graphql`. Cheap to clone.
#[derive(Clone)]
pub struct GraphqlClient {
    http: reqwest::Client,
    endpoint: Url,
    token: Secret,
    timeout: Duration,
}

impl std::fmt::Debug for GraphqlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphqlClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl GraphqlClient {
    /// A client posting to `{base}/graphql` with `token`, each call limited to `timeout`.
    /// `http` is the daemon's client for OpenCTI (TLS as configured, `User-Agent`).
    pub fn new(http: reqwest::Client, base: &Url, token: Secret, timeout: Duration) -> Self {
        let mut endpoint = base.clone();
        if let Ok(mut segments) = endpoint.path_segments_mut() {
            segments.pop_if_empty().push("graphql");
        }
        endpoint.set_query(None);
        Self {
            http,
            endpoint,
            token,
            timeout,
        }
    }

    /// The endpoint, `{base}/graphql`.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// Sends `query` with `variables` and returns the answer's `data`. Fails on a transport
    /// error, a non-2xx status, any GraphQL error, or an answer without `data`.
    pub async fn call(&self, query: &str, variables: Value) -> Result<Value, ApiError> {
        let mut request = self
            .http
            .post(self.endpoint.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(json!({ "query": query, "variables": variables }).to_string());
        if !self.token.is_empty() {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
                .map_err(|_| ApiError::InvalidToken)?;
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ApiError::Status {
                status: status.as_u16(),
            });
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_ANSWER_BYTES as u64)
        {
            return Err(ApiError::Malformed("the answer is too large".into()));
        }
        let body = response.bytes().await.map_err(|e| self.transport(e))?;
        if body.len() > MAX_ANSWER_BYTES {
            return Err(ApiError::Malformed("the answer is too large".into()));
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::Malformed(format!("not JSON ({e})")))?;
        if let Some(error) = answer
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|errors| errors.first())
        {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
                .to_string();
            let code = error
                .pointer("/extensions/code")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(match code {
                "AUTH_REQUIRED" | "FORBIDDEN" | "UNAUTHENTICATED" | "FORBIDDEN_ACCESS" => {
                    ApiError::Unauthorized(message)
                }
                _ => ApiError::Graphql(message),
            });
        }
        match answer.get("data") {
            Some(data) if !data.is_null() => Ok(data.clone()),
            _ => Err(ApiError::Malformed("no data in the answer".into())),
        }
    }

    fn transport(&self, error: reqwest::Error) -> ApiError {
        if error.is_timeout() {
            ApiError::Timeout(self.timeout)
        } else {
            ApiError::Network(error.without_url().to_string())
        }
    }
}
