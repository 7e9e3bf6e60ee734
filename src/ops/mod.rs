//! Operations: what an administrator sees of a running daemon. The HTTP endpoint ([`http`]:
//! `/metrics`, `/healthz`, `/readyz`, `/status`), the health rules ([`health`]) and the progress
//! line logged while a backlog drains ([`progress`]).
//!
//! Everything reads a [`DaemonView`](crate::view::DaemonView): the WAL and the stages' own
//! counters, shared, never a copy kept up to date. Nothing here can slow the pipeline: reading
//! costs atomic loads, a short lock of the WAL's state and one `statvfs`. Nothing here shows a
//! secret (docs/architecture.md#invariant-8): the view holds none.

pub mod auth;
pub mod connections;
pub mod health;
pub mod http;
pub mod progress;
