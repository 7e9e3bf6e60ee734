//! The one support tree of the integration tests: the real binary run against the simulator
//! ([`daemon`]), the operations endpoint's helpers ([`ops`]), a real S3 server ([`s3`]), a
//! fault-injecting proxy ([`proxy`]), a scripted OpenCTI and pipeline for the stream client
//! ([`stream`]) and a throwaway certificate authority ([`tls`]). Every test file declares
//! `mod support;` and uses only part of it, hence the one `allow(dead_code)`.
#![allow(dead_code)]

pub mod daemon;
pub mod ops;
pub mod proxy;
pub mod s3;
pub mod stream;
pub mod tls;
