//! The daemon's pipeline: WAL writer (committer), compactor and uploader, joined by the WAL.

pub mod cursor;
pub mod dead_letter;
