//! The endpoint's connections, bounded so that a peer cannot starve the daemon: at most
//! [`ConnectionLimits::max_connections`] are open at once (each holds one file descriptor), a
//! connection that has not sent a whole request head within
//! [`ConnectionLimits::header_read_timeout`] (the first request, or the next one on a kept-alive
//! connection) is closed, and no connection lives longer than
//! [`ConnectionLimits::max_lifetime`].
//!
//! When the limit is reached, a new connection is still accepted and the oldest connection that
//! is idle (no request in progress) is closed to make room; only when every open connection is
//! busy is the new one closed at once. So a peer opening thousands of idle connections holds at
//! most `max_connections` descriptors, and a health probe arriving meanwhile is still answered
//! at once rather than queued behind them.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bounds on the endpoint's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a connection has to send a whole request head (also the idle time allowed between
    /// two requests on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// Longest life of one connection, whatever it does.
    pub max_lifetime: Duration,
}

/// The endpoint's limits: 64 connections, 5 s to send a request head, 60 s per connection.
pub const DEFAULT_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 64,
    header_read_timeout: Duration::from_secs(5),
    max_lifetime: Duration::from_secs(60),
};

/// Pause after a failed `accept` (out of descriptors, say) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// One open connection, as the registry sees it.
struct Open {
    busy: AtomicBool,
    close: CancellationToken,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Registry {
    next_id: u64,
    open: BTreeMap<u64, Arc<Open>>,
}

/// A place in the registry; leaving it (drop) frees it.
struct Slot {
    registry: Arc<Mutex<Registry>>,
    id: u64,
    open: Arc<Open>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.registry).open.remove(&self.id);
    }
}

fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes a place for a new connection, closing the oldest idle one if the registry is full;
/// `None` when every open connection is busy.
fn admit(registry: &Arc<Mutex<Registry>>, max: usize) -> Option<Slot> {
    let mut guard = lock(registry);
    if guard.open.len() >= max {
        let idle = guard
            .open
            .iter()
            .find(|(_, open)| !open.busy.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        let evicted = guard.open.remove(&idle?)?;
        evicted.close.cancel();
    }
    let id = guard.next_id;
    guard.next_id += 1;
    let open = Arc::new(Open {
        busy: AtomicBool::new(false),
        close: CancellationToken::new(),
    });
    guard.open.insert(id, Arc::clone(&open));
    Some(Slot {
        registry: Arc::clone(registry),
        id,
        open,
    })
}

/// Marks a connection busy while a request is being answered.
struct Busy(Arc<Open>);

impl Busy {
    fn new(open: &Arc<Open>) -> Self {
        open.busy.store(true, Ordering::Release);
        Self(Arc::clone(open))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// Accepts connections on `listener` and answers them with `app` within `limits`, until `cancel`
/// fires; requests in progress then finish (within their lifetime bound).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    cancel: CancellationToken,
) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = cancel.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                accept_failing = false;
                stream
            }
            Err(error) => {
                if !accept_failing {
                    tracing::warn!(
                        %error,
                        "the metrics and health endpoint cannot accept a connection; retrying"
                    );
                    accept_failing = true;
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Some(slot) = admit(&registry, limits.max_connections.max(1)) else {
            // Every connection is answering a request: this one waits for none of them.
            drop(stream);
            continue;
        };
        tokio::spawn(connection(
            stream,
            app.clone(),
            slot,
            limits,
            cancel.clone(),
        ));
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    slot: Slot,
    limits: ConnectionLimits,
    cancel: CancellationToken,
) {
    let tower = TowerToHyperService::new(app);
    let open = Arc::clone(&slot.open);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = Busy::new(&open);
        let answer = hyper::service::Service::call(&tower, request);
        async move {
            let response: Result<_, Infallible> = answer.await;
            drop(busy);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let lifetime = tokio::time::sleep(limits.max_lifetime);
    tokio::pin!(lifetime);
    tokio::select! {
        _ = &mut conn => {}
        () = slot.open.close.cancelled() => {}
        () = &mut lifetime => {}
        () = cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = &mut conn => {}
                () = &mut lifetime => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_registry_closes_the_oldest_idle_connection_and_never_a_busy_one() {
        let registry = Arc::new(Mutex::new(Registry::default()));
        let first = admit(&registry, 2).expect("room");
        let second = admit(&registry, 2).expect("room");
        let busy = Busy::new(&first.open);
        let third = admit(&registry, 2).expect("the idle second makes room");
        assert!(
            second.open.close.is_cancelled(),
            "the oldest idle one is closed"
        );
        assert!(!first.open.close.is_cancelled(), "a busy one is kept");
        let _busy_too = Busy::new(&third.open);
        assert!(admit(&registry, 2).is_none(), "all busy: no room");
        drop(busy);
        assert!(admit(&registry, 2).is_some(), "idle again: room");
        drop(second);
    }
}
