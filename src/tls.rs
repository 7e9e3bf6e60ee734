//! TLS settings shared by the OpenCTI and S3 clients (placeholder).
