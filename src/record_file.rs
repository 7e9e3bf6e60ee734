//! Append-only record files kept next to the WAL (the dead-letter file, the missing-files
//! record): what they share so that neither can be made unbounded or lost by a power cut.
//!
//! - A file is created with mode 0600, and its directory is fsynced when it is opened, so an
//!   entry appended and fsynced cannot vanish with the file's name.
//! - Every text field a peer controls is cut to a bound on a character boundary, so a hostile
//!   stream or platform cannot make one line unbounded.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

/// Opens `path` for appending, creating it with mode 0600, then fsyncs its directory so the
/// file's name is as durable as what is later synced into it.
pub fn open_append(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    wal::sync_parent(path)?;
    Ok(file)
}

/// `text` cut to at most `max` bytes on a character boundary, and whether it was cut.
pub fn cut(text: &str, max: usize) -> (&str, bool) {
    if text.len() <= max {
        return (text, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_fall_on_character_boundaries() {
        assert_eq!(cut("abc", 3), ("abc", false));
        assert_eq!(cut("abcd", 3), ("abc", true));
        // "é" is two bytes: a cut in its middle keeps the character out.
        assert_eq!(cut("aé", 2), ("a", true));
    }

    #[test]
    fn files_are_created_private_and_appended_to() {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("record.ndjson");
        open_append(&path)
            .and_then(|mut file| file.write_all(b"one\n"))
            .expect("first write");
        open_append(&path)
            .and_then(|mut file| file.write_all(b"two\n"))
            .expect("second write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "one\ntwo\n");
        let mode = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
