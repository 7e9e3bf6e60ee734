//! The opencti-stream-exporter binary (placeholder until the CLI lands).

fn main() {}
