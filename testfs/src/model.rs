//! The file system's state, without FUSE: every inode with its live contents (what programs see)
//! and its durable contents (what a power cut leaves), and the rules that move one to the other.
//!
//! - File data and size: live until `fsync`/`fdatasync` of that file (or a write through a
//!   handle opened with `O_SYNC`/`O_DSYNC`) copies them to durable.
//! - Directory entries (create, mkdir, rename, unlink, rmdir): live until `fsync` of that
//!   directory copies the whole entry table to durable. In [`Model::Ext4Like`], `fsync` of a
//!   file also makes durable the entries that name it (added or removed, so a rename onto it is
//!   carried whole), and the entries of the directories above them up to the root.
//! - [`State::power_cut`] replaces every live content by its durable one and forgets the inodes
//!   no durable entry reaches.
//!
//! Metadata other than size (mode, owner, times) is not modelled: it is kept as it is.
//! File data is held in copy-on-write chunks, so a sync costs a copy of the chunk table, not of
//! the bytes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::SystemTime;

/// Bytes per data chunk.
const CHUNK: u64 = 64 * 1024;

/// The inode number of the root directory.
pub const ROOT: u64 = 1;

/// What a sync makes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// POSIX as written: a directory change is durable only after `fsync` of that directory.
    Strict,
    /// Like ext4 in practice: `fsync` of a file also makes its own directory entries (and those
    /// of the directories above it) durable.
    Ext4Like,
}

/// File contents: a size and the chunks written (a missing chunk reads as zeros).
#[derive(Clone, Default, Debug)]
pub struct Data {
    size: u64,
    chunks: BTreeMap<u64, Arc<Vec<u8>>>,
}

impl Data {
    /// Contents holding `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Data {
        let mut data = Data::default();
        data.write(0, bytes);
        data
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// All the bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.read(0, self.size)
    }

    /// Up to `len` bytes from `offset` (fewer at the end of the file).
    pub fn read(&self, offset: u64, len: u64) -> Vec<u8> {
        let end = self.size.min(offset.saturating_add(len));
        if offset >= end {
            return Vec::new();
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let mut at = offset;
        while at < end {
            let index = at / CHUNK;
            let within = (at % CHUNK) as usize;
            let take = ((CHUNK - at % CHUNK).min(end - at)) as usize;
            if let Some(chunk) = self.chunks.get(&index) {
                let dest = (at - offset) as usize;
                out[dest..dest + take].copy_from_slice(&chunk[within..within + take]);
            }
            at += take as u64;
        }
        out
    }

    /// Writes `bytes` at `offset`, growing the file if needed.
    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        let mut at = offset;
        let mut from = 0usize;
        while from < bytes.len() {
            let index = at / CHUNK;
            let within = (at % CHUNK) as usize;
            let take = (CHUNK as usize - within).min(bytes.len() - from);
            let chunk = self
                .chunks
                .entry(index)
                .or_insert_with(|| Arc::new(vec![0u8; CHUNK as usize]));
            Arc::make_mut(chunk)[within..within + take].copy_from_slice(&bytes[from..from + take]);
            at += take as u64;
            from += take;
        }
        self.size = self.size.max(offset + bytes.len() as u64);
    }

    /// Sets the size: bytes past it are dropped, and read as zeros if the file grows again.
    pub fn set_size(&mut self, size: u64) {
        if size < self.size {
            let first_gone = size.div_ceil(CHUNK);
            self.chunks.retain(|index, _| *index < first_gone);
            if !size.is_multiple_of(CHUNK)
                && let Some(chunk) = self.chunks.get_mut(&(size / CHUNK))
            {
                Arc::make_mut(chunk)[(size % CHUNK) as usize..].fill(0);
            }
        }
        self.size = size;
    }

    /// Whether both hold the same bytes (cheap when they share chunks).
    fn same_as(&self, other: &Data) -> bool {
        self.size == other.size
            && self.chunks.len() == other.chunks.len()
            && self
                .chunks
                .iter()
                .zip(&other.chunks)
                .all(|((i, a), (j, b))| i == j && (Arc::ptr_eq(a, b) || a == b))
    }
}

/// Directory entries: name to inode number.
pub type Entries = BTreeMap<OsString, u64>;

/// What an inode holds.
#[derive(Debug)]
pub enum Body {
    /// A regular file.
    File {
        /// What programs read.
        live: Data,
        /// What a power cut leaves.
        durable: Data,
    },
    /// A directory.
    Dir {
        /// What programs see.
        live: Entries,
        /// What a power cut leaves.
        durable: Entries,
    },
}

/// One inode.
#[derive(Debug)]
pub struct Node {
    /// Its contents.
    pub body: Body,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last change.
    pub ctime: SystemTime,
    /// Live entries naming it.
    pub links: u32,
    /// Durable entries naming it.
    pub durable_links: u32,
    /// Open handles.
    pub open: u32,
}

impl Node {
    fn new(body: Body, perm: u16, uid: u32, gid: u32) -> Node {
        let now = SystemTime::now();
        Node {
            body,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: 0,
            durable_links: 0,
            open: 0,
        }
    }

    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir { .. })
    }
}

/// An error, as an errno value.
pub type Errno = i32;

/// What a power cut dropped.
#[derive(Debug, Default, Clone)]
pub struct CutReport {
    /// Files whose data or size went back to their last sync (paths after the cut).
    pub files_reverted: Vec<String>,
    /// Directory entries added, removed or changed since the last sync of their directory, undone
    /// (`dir/name`, paths as they were before the cut).
    pub entries_undone: Vec<String>,
    /// Inodes no durable entry reaches any more, forgotten.
    pub inodes_forgotten: usize,
}

impl CutReport {
    /// Whether the cut dropped anything.
    pub fn dropped_anything(&self) -> bool {
        !self.files_reverted.is_empty() || !self.entries_undone.is_empty()
    }
}

/// Counters of the sync calls received.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncCounts {
    /// `fsync`/`fdatasync` of files, and synchronous writes.
    pub file_syncs: u64,
    /// `fsync` of directories.
    pub dir_syncs: u64,
}

/// Every inode.
#[derive(Debug)]
pub struct State {
    /// Inodes by number (the root is [`ROOT`]).
    pub nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// The sync rule.
    pub model: Model,
    /// Sync calls so far.
    pub counts: SyncCounts,
    /// How long a disk flush takes: a sync request is answered, and what it syncs made durable,
    /// this long after it arrives (zero: at once). See [`crate::TestFs::set_sync_latency`].
    pub sync_latency: std::time::Duration,
    /// Sync requests received and not answered yet.
    pub syncs_in_flight: u64,
    /// Power cuts so far: a sync still in flight at a cut makes nothing durable.
    pub power_cuts: u64,
    /// The power is off (see [`crate::TestFs::power_off`]): every sync fails with `EIO` and makes
    /// nothing durable, until the next power cut.
    pub power_off: bool,
}

impl State {
    /// An empty file system (the root directory, durable).
    pub fn new(model: Model) -> State {
        let mut nodes = HashMap::new();
        let mut root = Node::new(
            Body::Dir {
                live: Entries::new(),
                durable: Entries::new(),
            },
            0o755,
            0,
            0,
        );
        // The root is always there: count it as linked so it is never forgotten.
        root.links = 1;
        root.durable_links = 1;
        nodes.insert(ROOT, root);
        State {
            nodes,
            next_ino: ROOT + 1,
            model,
            counts: SyncCounts::default(),
            sync_latency: std::time::Duration::ZERO,
            syncs_in_flight: 0,
            power_cuts: 0,
            power_off: false,
        }
    }

    /// The inode `ino`.
    pub fn node(&self, ino: u64) -> Result<&Node, Errno> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    /// The inode `ino`, to change.
    pub fn node_mut(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn live_entries(&self, dir: u64) -> Result<&Entries, Errno> {
        match &self.node(dir)?.body {
            Body::Dir { live, .. } => Ok(live),
            Body::File { .. } => Err(libc::ENOTDIR),
        }
    }

    /// The inode named `name` in directory `dir`.
    pub fn lookup(&self, dir: u64, name: &OsStr) -> Result<u64, Errno> {
        self.live_entries(dir)?
            .get(name)
            .copied()
            .ok_or(libc::ENOENT)
    }

    /// The live entries of `dir`, in name order.
    pub fn list(&self, dir: u64) -> Result<Vec<(OsString, u64)>, Errno> {
        Ok(self
            .live_entries(dir)?
            .iter()
            .map(|(name, ino)| (name.clone(), *ino))
            .collect())
    }

    /// Sets (or with `None` removes) the live entry `name` of `dir`, keeping link counts.
    fn set_live(&mut self, dir: u64, name: &OsStr, ino: Option<u64>) -> Result<Option<u64>, Errno> {
        let Body::Dir { live, .. } = &mut self.node_mut(dir)?.body else {
            return Err(libc::ENOTDIR);
        };
        let old = match ino {
            Some(ino) => live.insert(name.to_os_string(), ino),
            None => live.remove(name),
        };
        if let Some(old) = old {
            self.node_mut(old)?.links -= 1;
        }
        if let Some(ino) = ino {
            self.node_mut(ino)?.links += 1;
        }
        let now = SystemTime::now();
        let node = self.node_mut(dir)?;
        node.mtime = now;
        node.ctime = now;
        Ok(old)
    }

    /// Sets (or removes) the durable entry `name` of `dir`, keeping durable link counts.
    fn set_durable(&mut self, dir: u64, name: &OsStr, ino: Option<u64>) {
        let Some(Node {
            body: Body::Dir { durable, .. },
            ..
        }) = self.nodes.get_mut(&dir)
        else {
            return;
        };
        let old = match ino {
            Some(ino) => durable.insert(name.to_os_string(), ino),
            None => durable.remove(name),
        };
        if let Some(node) = old.and_then(|old| self.nodes.get_mut(&old)) {
            node.durable_links -= 1;
        }
        if let Some(node) = ino.and_then(|ino| self.nodes.get_mut(&ino)) {
            node.durable_links += 1;
        }
        if let Some(old) = old {
            self.forget_if_unreachable(old);
        }
    }

    /// Drops inode `ino` once nothing names it, live or durable, and nothing has it open.
    pub fn forget_if_unreachable(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        if ino == ROOT || node.links > 0 || node.durable_links > 0 || node.open > 0 {
            return;
        }
        let node = self.nodes.remove(&ino).expect("present");
        // A directory only durable (removed live) may still name children durably.
        if let Body::Dir { durable, .. } = node.body {
            for child in durable.values() {
                if let Some(child_node) = self.nodes.get_mut(child) {
                    child_node.durable_links -= 1;
                }
                self.forget_if_unreachable(*child);
            }
        }
    }

    /// Creates a file or directory `name` in `dir`.
    pub fn create(
        &mut self,
        dir: u64,
        name: &OsStr,
        is_dir: bool,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        if self.live_entries(dir)?.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let body = if is_dir {
            Body::Dir {
                live: Entries::new(),
                durable: Entries::new(),
            }
        } else {
            Body::File {
                live: Data::default(),
                durable: Data::default(),
            }
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node::new(body, perm, uid, gid));
        self.set_live(dir, name, Some(ino))?;
        Ok(ino)
    }

    /// Removes the entry `name` of `dir`: a file (`rmdir` false) or an empty directory.
    pub fn remove(&mut self, dir: u64, name: &OsStr, rmdir: bool) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?;
        let node = self.node(ino)?;
        match (&node.body, rmdir) {
            (Body::Dir { live, .. }, true) if !live.is_empty() => return Err(libc::ENOTEMPTY),
            (Body::Dir { .. }, true) | (Body::File { .. }, false) => {}
            (Body::Dir { .. }, false) => return Err(libc::EISDIR),
            (Body::File { .. }, true) => return Err(libc::ENOTDIR),
        }
        self.set_live(dir, name, None)?;
        self.node_mut(ino)?.ctime = SystemTime::now();
        self.forget_if_unreachable(ino);
        Ok(())
    }

    /// Renames `name` in `dir` to `new_name` in `new_dir` (`rename(2)`, or with `no_replace`,
    /// `RENAME_NOREPLACE`).
    pub fn rename(
        &mut self,
        dir: u64,
        name: &OsStr,
        new_dir: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.lookup(dir, name)?;
        self.live_entries(new_dir)?;
        let moving_dir = self.node(ino)?.is_dir();
        if moving_dir && (ino == new_dir || self.is_ancestor(ino, new_dir)) {
            return Err(libc::EINVAL);
        }
        if let Ok(existing) = self.lookup(new_dir, new_name) {
            if existing == ino {
                return Ok(());
            }
            if no_replace {
                return Err(libc::EEXIST);
            }
            match (&self.node(existing)?.body, moving_dir) {
                (Body::Dir { live, .. }, true) if !live.is_empty() => {
                    return Err(libc::ENOTEMPTY);
                }
                (Body::Dir { .. }, false) => return Err(libc::EISDIR),
                (Body::File { .. }, true) => return Err(libc::ENOTDIR),
                _ => {}
            }
        }
        self.set_live(dir, name, None)?;
        let replaced = self.set_live(new_dir, new_name, Some(ino))?;
        self.node_mut(ino)?.ctime = SystemTime::now();
        if let Some(replaced) = replaced {
            self.forget_if_unreachable(replaced);
        }
        Ok(())
    }

    /// Whether directory `ancestor` contains `ino`, at any depth (live entries).
    fn is_ancestor(&self, ancestor: u64, ino: u64) -> bool {
        let mut at = ino;
        while let Some(parent) = self.live_parent(at) {
            if parent == ancestor {
                return true;
            }
            at = parent;
        }
        false
    }

    /// A directory whose live entries name `ino` (a directory has one).
    fn live_parent(&self, ino: u64) -> Option<u64> {
        if ino == ROOT {
            return None;
        }
        self.nodes.iter().find_map(|(dir, node)| match &node.body {
            Body::Dir { live, .. } if live.values().any(|child| *child == ino) => Some(*dir),
            _ => None,
        })
    }

    /// Reads file `ino`.
    pub fn read(&self, ino: u64, offset: u64, len: u64) -> Result<Vec<u8>, Errno> {
        match &self.node(ino)?.body {
            Body::File { live, .. } => Ok(live.read(offset, len)),
            Body::Dir { .. } => Err(libc::EISDIR),
        }
    }

    /// Writes to file `ino`.
    pub fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        let Body::File { live, .. } = &mut node.body else {
            return Err(libc::EISDIR);
        };
        live.write(offset, bytes);
        let now = SystemTime::now();
        node.mtime = now;
        node.ctime = now;
        Ok(())
    }

    /// Truncates or extends file `ino`.
    pub fn set_size(&mut self, ino: u64, size: u64) -> Result<(), Errno> {
        let node = self.node_mut(ino)?;
        let Body::File { live, .. } = &mut node.body else {
            return Err(libc::EISDIR);
        };
        live.set_size(size);
        let now = SystemTime::now();
        node.mtime = now;
        node.ctime = now;
        Ok(())
    }

    /// The live size of `ino` (0 for a directory).
    pub fn size(&self, ino: u64) -> Result<u64, Errno> {
        Ok(match &self.node(ino)?.body {
            Body::File { live, .. } => live.size(),
            Body::Dir { live, .. } => live.len() as u64,
        })
    }

    /// `fsync`/`fdatasync` of file `ino`, or `fsync` of directory `ino`.
    pub fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        if self.power_off {
            return Err(libc::EIO);
        }
        let node = self.node_mut(ino)?;
        match &mut node.body {
            Body::File { live, durable } => {
                *durable = live.clone();
                self.counts.file_syncs += 1;
                if self.model == Model::Ext4Like {
                    self.persist_entries_naming(ino);
                }
            }
            Body::Dir { live, .. } => {
                let live = live.clone();
                self.counts.dir_syncs += 1;
                self.persist_dir(ino, &live);
            }
        }
        Ok(())
    }

    /// Makes the durable entries of `dir` equal to `entries`.
    fn persist_dir(&mut self, dir: u64, entries: &Entries) {
        let Some(Node {
            body: Body::Dir { durable, .. },
            ..
        }) = self.nodes.get(&dir)
        else {
            return;
        };
        let gone: Vec<OsString> = durable
            .keys()
            .filter(|name| !entries.contains_key(*name))
            .cloned()
            .collect();
        let changed: Vec<(OsString, u64)> = entries
            .iter()
            .filter(|(name, ino)| durable.get(*name) != Some(ino))
            .map(|(name, ino)| (name.clone(), *ino))
            .collect();
        for (name, ino) in changed {
            self.set_durable(dir, &name, Some(ino));
        }
        for name in gone {
            self.set_durable(dir, &name, None);
        }
    }

    /// Ext4-like: the entries naming `ino` (added or removed since the last sync of their
    /// directory) become durable, and so do the entries leading to their directories.
    fn persist_entries_naming(&mut self, ino: u64) {
        let mut dirs = Vec::new();
        for (dir, node) in &self.nodes {
            if let Body::Dir { live, durable } = &node.body {
                let names: Vec<OsString> = live
                    .iter()
                    .chain(durable.iter())
                    .filter(|(_, child)| **child == ino)
                    .map(|(name, _)| name.clone())
                    .collect();
                if !names.is_empty() {
                    dirs.push((*dir, names));
                }
            }
        }
        for (dir, names) in dirs {
            self.persist_names(dir, &names);
            let mut at = dir;
            while let Some(parent) = self.live_parent(at) {
                let Some(name) = self.live_entries(parent).ok().and_then(|entries| {
                    entries
                        .iter()
                        .find(|(_, child)| **child == at)
                        .map(|(name, _)| name.clone())
                }) else {
                    break;
                };
                self.persist_names(parent, &[name]);
                at = parent;
            }
        }
    }

    /// Makes the durable entries `names` of `dir` equal to the live ones.
    fn persist_names(&mut self, dir: u64, names: &[OsString]) {
        for name in names {
            let live = self
                .live_entries(dir)
                .ok()
                .and_then(|entries| entries.get(name).copied());
            self.set_durable(dir, name, live);
        }
    }

    /// Handle bookkeeping: a file or directory was opened.
    pub fn opened(&mut self, ino: u64) -> Result<(), Errno> {
        self.node_mut(ino)?.open += 1;
        Ok(())
    }

    /// Handle bookkeeping: a handle was released.
    pub fn released(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.open = node.open.saturating_sub(1);
        }
        self.forget_if_unreachable(ino);
    }

    /// The power cut: every live content goes back to its durable one, and inodes that no
    /// durable entry reaches from the root are forgotten. Call it with nothing open.
    pub fn power_cut(&mut self) -> CutReport {
        self.power_cuts += 1;
        self.power_off = false;
        let mut report = CutReport::default();
        let paths_before = self.paths();
        let mut dirs: Vec<u64> = self.nodes.keys().copied().collect();
        dirs.sort_unstable();
        for ino in dirs {
            let node = self.nodes.get_mut(&ino).expect("listed");
            node.open = 0;
            match &mut node.body {
                Body::Dir { live, durable } => {
                    let mut undone: Vec<&OsString> = live
                        .iter()
                        .filter(|(name, child)| durable.get(*name) != Some(child))
                        .map(|(name, _)| name)
                        .chain(durable.keys().filter(|name| !live.contains_key(*name)))
                        .collect();
                    undone.sort();
                    undone.dedup();
                    let base = paths_before
                        .get(&ino)
                        .cloned()
                        .unwrap_or_else(|| format!("<inode {ino}>"));
                    for name in undone {
                        report
                            .entries_undone
                            .push(format!("{base}/{}", name.to_string_lossy()));
                    }
                    *live = durable.clone();
                }
                Body::File { live, durable } => {
                    if !live.same_as(durable) {
                        report.files_reverted.push(format!("<inode {ino}>"));
                    }
                    *live = durable.clone();
                }
            }
        }
        // What the durable entries reach, from the root.
        let mut reached = std::collections::HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(Node {
                body: Body::Dir { live, .. },
                ..
            }) = self.nodes.get(&ino)
            {
                for child in live.values() {
                    if reached.insert(*child) {
                        todo.push(*child);
                    }
                }
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| reached.contains(ino));
        report.inodes_forgotten = before - self.nodes.len();
        // Link counts from scratch.
        let mut links: HashMap<u64, u32> = HashMap::new();
        for node in self.nodes.values() {
            if let Body::Dir { live, .. } = &node.body {
                for child in live.values() {
                    *links.entry(*child).or_default() += 1;
                }
            }
        }
        for (ino, node) in &mut self.nodes {
            let count = if *ino == ROOT {
                1
            } else {
                links.get(ino).copied().unwrap_or(0)
            };
            node.links = count;
            node.durable_links = count;
        }
        let paths_after = self.paths();
        for name in &mut report.files_reverted {
            let ino: u64 = name
                .trim_start_matches("<inode ")
                .trim_end_matches('>')
                .parse()
                .expect("an inode number");
            if let Some(path) = paths_after.get(&ino).or_else(|| paths_before.get(&ino)) {
                *name = path.clone();
            }
        }
        report
    }

    /// A path (from the root, live entries, first name found) of every reachable inode.
    pub fn paths(&self) -> HashMap<u64, String> {
        let mut paths = HashMap::from([(ROOT, String::new())]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            let base = paths[&ino].clone();
            if let Some(Node {
                body: Body::Dir { live, .. },
                ..
            }) = self.nodes.get(&ino)
            {
                for (name, child) in live {
                    if !paths.contains_key(child) {
                        paths.insert(*child, format!("{base}/{}", name.to_string_lossy()));
                        todo.push(*child);
                    }
                }
            }
        }
        paths
    }

    /// Number of live entries naming a directory's subdirectories, for its link count.
    pub fn subdirs(&self, dir: u64) -> u32 {
        match &self.nodes.get(&dir).map(|node| &node.body) {
            Some(Body::Dir { live, .. }) => live
                .values()
                .filter(|child| self.nodes.get(child).is_some_and(Node::is_dir))
                .count() as u32,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(state: &mut State, dir: u64, n: &str, bytes: &[u8]) -> u64 {
        let ino = state.create(dir, name(n), false, 0o644, 0, 0).unwrap();
        state.write(ino, 0, bytes).unwrap();
        ino
    }

    fn contents(state: &State, dir: u64, n: &str) -> Option<Vec<u8>> {
        let ino = state.lookup(dir, name(n)).ok()?;
        Some(state.read(ino, 0, u64::MAX).unwrap())
    }

    #[test]
    fn data_not_synced_is_gone_and_synced_data_stays() {
        let mut state = State::new(Model::Strict);
        let ino = file(&mut state, ROOT, "a", b"first");
        state.sync(ino).unwrap();
        state.sync(ROOT).unwrap();
        state.write(ino, 5, b" second").unwrap();
        let report = state.power_cut();
        assert_eq!(report.files_reverted, vec!["/a".to_string()]);
        assert_eq!(contents(&state, ROOT, "a").unwrap(), b"first");
    }

    #[test]
    fn a_size_change_follows_the_data_rule() {
        let mut state = State::new(Model::Strict);
        let ino = file(&mut state, ROOT, "a", &[7u8; 200_000]);
        state.sync(ino).unwrap();
        state.sync(ROOT).unwrap();
        state.set_size(ino, 10).unwrap();
        state.set_size(ino, 100).unwrap();
        assert_eq!(state.read(ino, 0, 200).unwrap()[10..], [0u8; 90]);
        state.power_cut();
        assert_eq!(contents(&state, ROOT, "a").unwrap(), vec![7u8; 200_000]);
    }

    #[test]
    fn a_new_file_without_a_directory_sync_is_gone_even_if_its_data_was_synced() {
        let mut state = State::new(Model::Strict);
        let ino = file(&mut state, ROOT, "a", b"data");
        state.sync(ino).unwrap();
        let report = state.power_cut();
        assert_eq!(report.entries_undone, vec!["/a".to_string()]);
        assert_eq!(contents(&state, ROOT, "a"), None);
        assert_eq!(state.nodes.len(), 1, "only the root is left");
    }

    #[test]
    fn ext4_like_keeps_the_entry_of_a_synced_file_and_its_parents() {
        let mut state = State::new(Model::Ext4Like);
        let dir = state.create(ROOT, name("d"), true, 0o755, 0, 0).unwrap();
        let ino = file(&mut state, dir, "a", b"data");
        let other = file(&mut state, dir, "b", b"other");
        state.sync(ino).unwrap();
        state.power_cut();
        let dir = state.lookup(ROOT, name("d")).unwrap();
        assert_eq!(contents(&state, dir, "a").unwrap(), b"data");
        assert_eq!(contents(&state, dir, "b"), None, "b was never synced");
        let _ = other;
    }

    #[test]
    fn a_rename_without_a_directory_sync_is_undone_and_a_synced_one_stays() {
        for model in [Model::Strict, Model::Ext4Like] {
            let mut state = State::new(model);
            let old = file(&mut state, ROOT, "f", b"old");
            state.sync(old).unwrap();
            state.sync(ROOT).unwrap();
            let new = file(&mut state, ROOT, "f.tmp", b"new");
            state.sync(new).unwrap();
            state
                .rename(ROOT, name("f.tmp"), ROOT, name("f"), false)
                .unwrap();
            state.power_cut();
            // The sync came before the rename: nothing made the rename durable.
            assert_eq!(contents(&state, ROOT, "f").unwrap(), b"old", "{model:?}");
            let tmp = contents(&state, ROOT, "f.tmp");
            match model {
                Model::Strict => assert_eq!(tmp, None),
                // Syncing f.tmp made its own entry durable.
                Model::Ext4Like => assert_eq!(tmp.unwrap(), b"new"),
            }
            state.remove(ROOT, name("f.tmp"), false).ok();

            let new = file(&mut state, ROOT, "f.tmp", b"newer");
            state.sync(new).unwrap();
            state
                .rename(ROOT, name("f.tmp"), ROOT, name("f"), false)
                .unwrap();
            state.sync(ROOT).unwrap();
            state.power_cut();
            assert_eq!(contents(&state, ROOT, "f").unwrap(), b"newer", "{model:?}");
        }
    }

    #[test]
    fn an_unlink_without_a_directory_sync_is_undone() {
        let mut state = State::new(Model::Strict);
        let ino = file(&mut state, ROOT, "a", b"data");
        state.sync(ino).unwrap();
        state.sync(ROOT).unwrap();
        state.remove(ROOT, name("a"), false).unwrap();
        assert!(state.nodes.contains_key(&ino), "kept while durably named");
        state.power_cut();
        assert_eq!(contents(&state, ROOT, "a").unwrap(), b"data");
        state.remove(ROOT, name("a"), false).unwrap();
        state.sync(ROOT).unwrap();
        assert!(
            !state.nodes.contains_key(&ino),
            "forgotten once nothing names it"
        );
    }

    #[test]
    fn a_new_directory_needs_its_parent_synced_and_its_entries_need_it_synced() {
        let mut state = State::new(Model::Strict);
        let dir = state.create(ROOT, name("d"), true, 0o755, 0, 0).unwrap();
        let ino = file(&mut state, dir, "a", b"data");
        state.sync(ino).unwrap();
        state.sync(dir).unwrap();
        state.power_cut();
        assert!(
            state.lookup(ROOT, name("d")).is_err(),
            "d was not synced in /"
        );

        let dir = state.create(ROOT, name("d"), true, 0o755, 0, 0).unwrap();
        let ino = file(&mut state, dir, "a", b"data");
        state.sync(ino).unwrap();
        state.sync(ROOT).unwrap();
        state.power_cut();
        let dir = state.lookup(ROOT, name("d")).unwrap();
        assert!(
            state.lookup(dir, name("a")).is_err(),
            "a was not synced in d"
        );
    }

    #[test]
    fn a_directory_removed_live_keeps_its_durable_children_until_the_cut() {
        let mut state = State::new(Model::Strict);
        let dir = state.create(ROOT, name("d"), true, 0o755, 0, 0).unwrap();
        let ino = file(&mut state, dir, "a", b"data");
        state.sync(ino).unwrap();
        state.sync(dir).unwrap();
        state.sync(ROOT).unwrap();
        state.remove(dir, name("a"), false).unwrap();
        state.remove(ROOT, name("d"), true).unwrap();
        state.power_cut();
        let dir = state.lookup(ROOT, name("d")).unwrap();
        assert_eq!(contents(&state, dir, "a").unwrap(), b"data");
    }

    #[test]
    fn chunks_are_shared_until_written() {
        let mut data = Data::from_bytes(&vec![1u8; 3 * CHUNK as usize + 5]);
        let copy = data.clone();
        data.write(CHUNK + 1, b"xy");
        assert!(!data.same_as(&copy));
        assert_eq!(copy.read(CHUNK, 4), vec![1u8; 4]);
        assert_eq!(data.read(CHUNK, 4), vec![1, b'x', b'y', 1]);
        assert_eq!(data.read(3 * CHUNK, 100).len(), 5);
        data.set_size(CHUNK + 2);
        assert_eq!(data.to_bytes().len() as u64, CHUNK + 2);
        data.set_size(2 * CHUNK);
        assert_eq!(data.read(CHUNK, 4), vec![1, b'x', 0, 0]);
    }
}
