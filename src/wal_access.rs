//! A WAL directory this process may not write, explained in one line: which directory, who owns
//! it, who we are and what to do. The usual cause is a container's bind mount of a host directory
//! owned by another user than the image's (uid 10001).

use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The WAL directory (or, when it does not exist yet, the nearest existing parent where it must
/// be created) denies this process write access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotWritable {
    /// The configured WAL directory.
    pub wal_dir: PathBuf,
    /// The directory that refused: the WAL directory or the parent it would be created in.
    pub refused: PathBuf,
    /// Owner of `refused`.
    pub owner_uid: u32,
    /// Group of `refused`.
    pub owner_gid: u32,
    /// Permission bits of `refused`.
    pub mode: u32,
    /// Effective uid of this process.
    pub uid: u32,
}

impl fmt::Display for NotWritable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            wal_dir,
            refused,
            owner_uid,
            owner_gid,
            mode,
            uid,
        } = self;
        let what = if refused == wal_dir {
            format!("the WAL directory {}", wal_dir.display())
        } else {
            format!(
                "{} (where the WAL directory {} is to be created)",
                refused.display(),
                wal_dir.display()
            )
        };
        write!(
            f,
            "cannot write {what}: it is owned by uid {owner_uid} gid {owner_gid} with mode {mode:o} \
             and this process runs as uid {uid}; give it to uid {uid} (on the host of a bind mount: \
             chown -R {uid}:{uid} on the host directory), or set WAL_DIR to a directory uid {uid} \
             can write"
        )
    }
}

impl std::error::Error for NotWritable {}

/// When `err` (opening the WAL in `wal_dir`) comes from a permission denied, the directory that
/// refused and its owner; `None` for any other error.
pub fn explain(wal_dir: &Path, err: &(dyn std::error::Error + 'static)) -> Option<NotWritable> {
    if !permission_denied(err) {
        return None;
    }
    let refused = wal_dir.ancestors().find(|dir| dir.exists())?;
    let meta = std::fs::metadata(refused).ok()?;
    Some(NotWritable {
        wal_dir: wal_dir.to_path_buf(),
        refused: refused.to_path_buf(),
        owner_uid: meta.uid(),
        owner_gid: meta.gid(),
        mode: meta.mode() & 0o7777,
        // SAFETY: geteuid has no preconditions and cannot fail.
        uid: unsafe { libc::geteuid() },
    })
}

/// Whether an error in `err`'s source chain is an I/O permission denied.
fn permission_denied(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_directory_its_owner_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let denied = wal::WalError::Io {
            action: "creating",
            path: wal_dir.clone(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let explained = explain(&wal_dir, &denied).unwrap();
        assert_eq!(explained.refused, dir.path());
        let line = explained.to_string();
        assert!(!line.contains('\n'));
        assert!(line.contains(&format!(
            "{} (where the WAL directory",
            dir.path().display()
        )));
        assert!(line.contains(&format!("owned by uid {}", explained.owner_uid)));
        assert!(line.contains(&format!("chown -R {0}:{0}", explained.uid)));
    }

    #[test]
    fn other_errors_are_not_explained() {
        let dir = tempfile::tempdir().unwrap();
        let missing = wal::WalError::Io {
            action: "opening lock file",
            path: dir.path().join("LOCK"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(explain(dir.path(), &missing), None);
    }
}
