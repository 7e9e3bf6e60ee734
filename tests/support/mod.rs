//! Test support shared by the integration tests: a real S3 server, a fault-injecting proxy and a
//! throwaway certificate authority. Each test file uses only part of it.
#![allow(dead_code)]

pub mod daemon;
pub mod proxy;
pub mod s3;
pub mod tls;
