//! opencti-stream-exporter: a durable OpenCTI live-stream exporter.
