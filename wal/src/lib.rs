//! Durable write-ahead log.
