//! opencti-stream-exporter: exports an OpenCTI live stream, durably and in order, as the numbered
//! NDJSON files that OpenCTI's stock `stream-importer` reads on the other side of an air gap.
//!
//! Data flows one way, one module per stage:
//! [`stream`] (SSE client) → [`transform`] (exported line) → [`pipeline`] (WAL group commit,
//! compactor, uploader) → [`sink`] (S3 or a directory). The write-ahead log is the `wal` crate.
//! The `simulator` crate stands in for OpenCTI in tests, benchmarks and, with the `simulator`
//! feature, the `demo` and `simulate` commands.

pub mod adopt;
pub mod allocator;
pub mod backoff;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod opencti_api;
pub mod ops;
pub mod pipeline;
pub mod readback;
pub mod record_file;
pub mod secret;
pub mod sink;
pub mod status;
pub mod stream;
pub mod tls;
pub mod transform;
pub mod wal_access;
