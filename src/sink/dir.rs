//! The directory sink (`EXPORT_DIR`): the same names and bytes as the S3 sink, written to a
//! local directory, for carrying files across an air gap on removable media.
//!
//! A file appears under its final name only when complete and durable: the bytes go to a
//! temporary name in the same directory (`.{name}.partial`), are fsynced, renamed into place,
//! and the directory is fsynced. A crash leaves at most a temporary file, which [`DirSink::list`]
//! ignores and the next `put` of the same key overwrites.
//!
//! Files are created `0600` and directories `0700` (the process umask can only narrow them):
//! what the exporter writes is readable by its own user only, as the WAL is. Symbolic links
//! below the root (in the folder part of a key, or at a file's temporary name) are never
//! followed: a put that meets one fails, naming it, and nothing is written through it. The
//! root itself (`EXPORT_DIR`) may be a link the operator made.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;

use super::body::body_error;
use super::{BodySource, ObjectInfo, Sink, SinkError, SinkErrorKind};

const PARTIAL_SUFFIX: &str = ".partial";
const WRITE_CHUNK_BYTES: usize = 1024 * 1024;
/// Mode of the files written.
const FILE_MODE: u32 = 0o600;
/// Mode of the directories created.
const DIR_MODE: u32 = 0o700;

/// Writes objects as files under a root directory; a key `a/b/c.json` is the file
/// `{root}/a/b/c.json`.
#[derive(Debug, Clone)]
pub struct DirSink {
    root: PathBuf,
}

impl DirSink {
    /// A sink writing under `root` (created by [`Sink::prepare`] if missing).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `key` under the root, refusing keys that could escape it.
    fn path_of(&self, key: &str) -> Result<PathBuf, SinkError> {
        let relative = Path::new(key);
        let clean = !key.is_empty()
            && !key.ends_with('/')
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !clean {
            return Err(SinkError::new(
                SinkErrorKind::Client,
                format!(
                    "invalid key {key:?} for directory {}: it must be a relative path without '..'",
                    self.root.display()
                ),
            ));
        }
        Ok(self.root.join(relative))
    }

    fn io_error(&self, what: &str, path: &Path, err: &io::Error) -> SinkError {
        SinkError::new(
            SinkErrorKind::Io,
            format!(
                "{what} {} (export directory {}): {err}",
                path.display(),
                self.root.display()
            ),
        )
    }
}

#[async_trait::async_trait]
impl Sink for DirSink {
    async fn prepare(&self) -> Result<(), SinkError> {
        let root = self.root.clone();
        let result = tokio::task::spawn_blocking(move || create_dirs_durably(&root)).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(self.io_error("creating", &self.root, &err)),
            Err(join) => Err(SinkError::new(
                SinkErrorKind::Io,
                format!("creating {}: {join}", self.root.display()),
            )),
        }
    }

    async fn put(&self, key: &str, body: &BodySource) -> Result<(), SinkError> {
        let path = self.path_of(key)?;
        let this = self.clone();
        let body = body.clone();
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || this.put_blocking(&key, &path, &body))
            .await
            .map_err(|join| SinkError::new(SinkErrorKind::Io, format!("writing a file: {join}")))?
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SinkError> {
        let this = self.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || this.list_blocking(&prefix))
            .await
            .map_err(|join| SinkError::new(SinkErrorKind::Io, format!("listing: {join}")))?
    }

    async fn get(&self, key: &str) -> Result<Bytes, SinkError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(SinkError::new(
                SinkErrorKind::NotFound,
                format!("reading {}: no such file", path.display()),
            )),
            Err(err) => Err(self.io_error("reading", &path, &err)),
        }
    }

    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }
}

impl DirSink {
    fn put_blocking(&self, key: &str, path: &Path, body: &BodySource) -> Result<(), SinkError> {
        let what = format!("writing {key} to {}", self.root.display());
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(SinkError::new(
                SinkErrorKind::Client,
                format!("{what}: invalid key"),
            ));
        };
        refuse_links_below(&self.root, dir).map_err(|err| self.io_error("checking", dir, &err))?;
        create_dirs_durably(dir).map_err(|err| self.io_error("creating", dir, &err))?;
        let mut partial_name = std::ffi::OsString::from(".");
        partial_name.push(name);
        partial_name.push(PARTIAL_SUFFIX);
        let partial = dir.join(partial_name);

        let written = write_partial(&partial, body);
        if let Err(err) = written {
            let _ = fs::remove_file(&partial);
            return Err(match err {
                WriteError::Body(err) => body_error(&err, &what),
                WriteError::File(err) => self.io_error("writing", &partial, &err),
            });
        }
        fs::rename(&partial, path).map_err(|err| self.io_error("renaming into", path, &err))?;
        sync_dir(dir).map_err(|err| self.io_error("syncing", dir, &err))?;
        Ok(())
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SinkError> {
        let mut objects = Vec::new();
        let mut pending = vec![(self.root.clone(), String::new())];
        while let Some((dir, key_prefix)) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound && dir == self.root => {
                    return Ok(Vec::new());
                }
                Err(err) => return Err(self.io_error("listing", &dir, &err)),
            };
            for entry in entries {
                let entry = entry.map_err(|err| self.io_error("listing", &dir, &err))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue; // not a name this sink could have written
                };
                let key = format!("{key_prefix}{name}");
                let file_type = entry
                    .file_type()
                    .map_err(|err| self.io_error("listing", &entry.path(), &err))?;
                if file_type.is_dir() {
                    // Only descend where keys under this directory can match the prefix.
                    let dir_key = format!("{key}/");
                    if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                        pending.push((entry.path(), dir_key));
                    }
                } else if file_type.is_file() && key.starts_with(prefix) && !is_partial(&name) {
                    let size = entry
                        .metadata()
                        .map_err(|err| self.io_error("listing", &entry.path(), &err))?
                        .len();
                    objects.push(ObjectInfo { key, size });
                }
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }
}

fn is_partial(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(PARTIAL_SUFFIX)
}

enum WriteError {
    Body(io::Error),
    File(io::Error),
}

/// Copies the checked body into `partial` (a new file, `0600`; whatever was at that name, a
/// leftover or a link, is removed first, never followed) and fsyncs it.
fn write_partial(partial: &Path, body: &BodySource) -> Result<(), WriteError> {
    let mut reader = body.open_checked().map_err(WriteError::Body)?;
    match fs::remove_file(partial) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(WriteError::File(err)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(partial)
        .map_err(WriteError::File)?;
    let mut buf = vec![0u8; WRITE_CHUNK_BYTES];
    loop {
        let n = reader.read_full(&mut buf).map_err(WriteError::Body)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(WriteError::File)?;
    }
    file.sync_all().map_err(WriteError::File)?;
    Ok(())
}

/// Creates `dir` and its missing parents, fsyncing each parent that gained an entry, so the
/// new directories survive a power loss along with the files renamed into them.
fn create_dirs_durably(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs_durably(parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(err) => return Err(err),
    }
    match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// Fails if `dir` or one of its parents below `root` is a symbolic link (those that do not exist
/// yet are created by this sink, as directories).
fn refuse_links_below(root: &Path, dir: &Path) -> io::Result<()> {
    let Ok(relative) = dir.strip_prefix(root) else {
        return Ok(());
    };
    let mut path = root.to_path_buf();
    for component in relative.components() {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(io::Error::other(format!(
                    "{} is a symbolic link: the export directory does not follow links",
                    path.display()
                )));
            }
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_that_escape_the_root_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sink = DirSink::new(dir.path());
        for key in ["../x.json", "/etc/passwd", "a/../../x", "", "a/"] {
            let err = sink
                .put(key, &BodySource::from_bytes(&b"x"[..]))
                .await
                .unwrap_err();
            assert_eq!(err.kind, SinkErrorKind::Client, "{key}");
        }
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn files_are_private_to_the_exporter() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("export");
        let sink = DirSink::new(&root);
        sink.prepare().await.unwrap();
        let body = BodySource::from_bytes(&b"{}"[..]);
        sink.put("folder/sub/stream_1_1.json", &body).await.unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("folder")), 0o700);
        assert_eq!(mode(&root.join("folder/sub")), 0o700);
        assert_eq!(mode(&root.join("folder/sub/stream_1_1.json")), 0o600);
    }

    #[tokio::test]
    async fn links_below_the_root_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let root = dir.path().join("export");
        let sink = DirSink::new(&root);
        sink.prepare().await.unwrap();
        let body = BodySource::from_bytes(&b"{}"[..]);

        // A folder that is a link to another directory.
        std::os::unix::fs::symlink(elsewhere.path(), root.join("folder")).unwrap();
        let err = sink.put("folder/stream_1_1.json", &body).await.unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0);

        // A link planted at a file's temporary name.
        let victim = elsewhere.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        fs::create_dir(root.join("other")).unwrap();
        std::os::unix::fs::symlink(&victim, root.join("other/.stream_1_2.json.partial")).unwrap();
        sink.put("other/stream_1_2.json", &body).await.unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert_eq!(fs::read(root.join("other/stream_1_2.json")).unwrap(), b"{}");
    }
}
