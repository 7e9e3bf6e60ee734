//! opencti-stream-exporter: exports an OpenCTI live stream, durably and in order, as the numbered
//! NDJSON files that OpenCTI's stock `stream-importer` reads on the other side of an air gap.
//!
//! Data flows one way (docs/architecture.md#pipeline):
//!
//! ```text
//! OpenCTI ──SSE──► stream (client; runs transform per event) ──► pipeline::committer ──► WAL
//!                                      WAL ──► pipeline::compactor (sealed segments)
//!                  sealed segments ──► pipeline::uploader ──► sink (S3 or a directory)
//! ```
//!
//! The modules, from the bottom layer up. A module imports only from its own layer or the ones
//! below it, never in a cycle (`tests/module_layers.rs` keeps it so):
//!
//! 1. **support**: ids and time, retry and cancellable sleep, secrets, TLS, the allocator,
//!    durable record files, the WAL directory's access check, latency histograms, quarantine
//!    records, the disk budget;
//! 2. **edges**: the exported line ([`transform`]), the OpenCTI live stream ([`stream`], which
//!    runs the transform on each event), the OpenCTI API ([`opencti_api`]), the destinations
//!    ([`sink`]), and reading an export back ([`readback`]);
//! 3. **configuration** ([`config`], [`logging`]);
//! 4. **stages**: [`pipeline`] (first-start adoption, committer, compactor, uploader); the
//!    write-ahead log itself is the `wal` crate;
//! 5. **operations**: [`status`] (the report), [`view`] (the running daemon, read-only),
//!    [`metrics`], [`ops`] (the HTTP endpoint, health, progress);
//! 6. **composition**: [`daemon`] builds and runs everything from a [`config::Config`];
//! 7. **commands**: [`commands`] and the command line ([`cli`]).
//!
//! The `simulator` crate stands in for OpenCTI in tests, benchmarks and, with the `simulator`
//! feature, the `demo` and `simulate` commands.

// 1. support
pub mod allocator;
pub mod backoff;
pub mod budget;
pub mod histogram;
pub mod ids;
pub mod quarantine;
pub mod record_file;
pub mod secret;
pub mod tls;
pub mod wal_access;

// 2. edges
pub mod opencti_api;
pub mod readback;
pub mod sink;
pub mod stream;
pub mod transform;

// 3. configuration
pub mod config;
pub mod logging;

// 4. stages
pub mod pipeline;

// 5. operations
pub mod metrics;
pub mod ops;
pub mod status;
pub mod view;

// 6. composition
pub mod daemon;

// 7. commands
pub mod cli;
pub mod commands;
