//! The HTTP endpoint on `CONNECTOR_METRICS_BIND:CONNECTOR_METRICS_PORT` (default
//! `0.0.0.0:9095`), on unless `CONNECTOR_EXPOSE_METRICS=false`:
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | 200, OpenMetrics text ([`crate::metrics`]) |
//! | `GET /healthz` | 200 alive / 503 wedged, JSON [`super::health::Liveness`] |
//! | `GET /readyz` | 200 ready / 503 not ready, JSON [`super::health::Readiness`] |
//! | `GET /status` | 200, JSON [`crate::status::StatusReport`] with its `live` part (what the `status` command prints) |
//!
//! Anything else is 404. Every answer is computed when asked, from the [`DaemonView`]; the
//! server runs on the daemon's runtime, so an answer from `/healthz` also proves the runtime is
//! not blocked.
//!
//! With a token configured ([`super::auth`]), `/metrics` and `/status` answer 401 without it.
//! Connections are bounded in number, in the time to send a request and in lifetime
//! ([`super::connections`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::auth::authorized;
use super::connections::{self, ConnectionLimits};
use super::health::{liveness, readiness};
use crate::ids::now_ms;
use crate::metrics::{self, Metrics};
use crate::secret::Secret;
use crate::view::DaemonView;

/// The listening socket could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} for /metrics, /healthz, /readyz and /status (CONNECTOR_METRICS_BIND, CONNECTOR_METRICS_PORT; CONNECTOR_EXPOSE_METRICS=false turns the endpoint off): {source}"
)]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Binds the endpoint's socket (separately from serving, so a port in use stops start-up with a
/// clear error).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Who may ask what, and how connections are bounded.
#[derive(Debug, Clone)]
pub struct EndpointOptions {
    /// The bearer token `/metrics` and `/status` require, if any.
    pub token: Option<Secret>,
    /// Bounds on connections.
    pub limits: ConnectionLimits,
}

struct Endpoint {
    view: DaemonView,
    metrics: Metrics,
    token: Option<Secret>,
}

/// The routes, answering from `view`; `/metrics` and `/status` require `token` when set.
pub fn router(view: DaemonView, token: Option<Secret>) -> Router {
    let endpoint = Arc::new(Endpoint {
        metrics: Metrics::new(view.clone()),
        view,
        token,
    });
    Router::new()
        .route("/metrics", get(metrics_route))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .fallback(not_found)
        .with_state(endpoint)
}

/// Serves `listener` until `cancel` fires (requests in progress are finished).
pub fn serve(
    listener: TcpListener,
    view: DaemonView,
    options: EndpointOptions,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    let app = router(view, options.token);
    tokio::spawn(connections::serve(listener, app, options.limits, cancel))
}

/// Where a daemon bound to `bind:port` answers from this host: `bind` itself, or the loopback
/// address of the same family when it binds every address (`0.0.0.0`, `::`).
pub fn local_address(bind: std::net::IpAddr, port: u16) -> SocketAddr {
    let host = match bind {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(host, port)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this endpoint needs the bearer token of CONNECTOR_METRICS_TOKEN\n",
    )
        .into_response()
}

async fn metrics_route(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    if !authorized(endpoint.token.as_ref(), &headers) {
        return unauthorized();
    }
    match endpoint.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            tracing::error!("encoding the metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed\n",
            )
                .into_response()
        }
    }
}

async fn healthz(State(endpoint): State<Arc<Endpoint>>) -> Response {
    let answer = liveness(&endpoint.view, now_ms());
    let code = if answer.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, &answer)
}

async fn readyz(State(endpoint): State<Arc<Endpoint>>) -> Response {
    let answer = readiness(&endpoint.view);
    let code = if answer.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, &answer)
}

async fn status(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> Response {
    if !authorized(endpoint.token.as_ref(), &headers) {
        return unauthorized();
    }
    json(StatusCode::OK, &endpoint.view.status())
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: try /metrics, /healthz, /readyz or /status\n",
    )
        .into_response()
}

fn json(code: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_string_pretty(value) {
        Ok(mut text) => {
            text.push('\n');
            (code, [(header::CONTENT_TYPE, "application/json")], text).into_response()
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
    }
}
