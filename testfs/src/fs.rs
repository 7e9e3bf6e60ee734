//! The FUSE side: kernel requests mapped onto [`crate::model::State`].
//!
//! The kernel is kept from remembering anything on its own: entries and attributes are given
//! with a time-to-live of zero, every file is opened with direct I/O (no page cache, so no
//! writeback cache either: writes reach this file system when the program makes them), and the
//! mount is dropped and made again around every power cut.

use std::ffi::OsStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use crate::model::{Body, Node, State};

/// Nothing is cached by the kernel.
const TTL: Duration = Duration::ZERO;

/// The file system handed to fuser; the state outlives the mount.
pub(crate) struct Fs {
    pub(crate) state: Arc<Mutex<State>>,
    /// Notified when the power goes off or is cut: syncs in flight end at once.
    pub(crate) power_events: Arc<Condvar>,
}

/// Open flags that make every write synchronous.
const SYNC_FLAGS: i32 = libc::O_SYNC | libc::O_DSYNC;

/// File handles carry the open flags' "synchronous" bit; nothing else is needed per handle.
fn handle(flags: OpenFlags) -> FileHandle {
    FileHandle(u64::from(flags.0 & SYNC_FLAGS != 0))
}

fn errno(code: i32) -> Errno {
    Errno::from_i32(code)
}

/// Answers a request that returns nothing with `result`.
fn answer(reply: ReplyEmpty, result: Result<(), i32>) {
    match result {
        Ok(()) => reply.ok(),
        Err(code) => reply.error(errno(code)),
    }
}

impl Fs {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Answers an `fsync` of file or directory `ino` as a disk would: at once when the sync
    /// latency is zero, otherwise that long later from a thread of its own (other requests are
    /// served meanwhile), and only while the power stays on: a sync in flight when the power goes
    /// off or is cut ends at once with `EIO` and makes nothing durable. What a sync makes durable
    /// is the live contents when it completes (a disk may write more than it was asked to).
    fn sync_and_reply(&self, ino: u64, reply: ReplyEmpty) {
        let mut state = self.lock();
        let latency = state.sync_latency;
        if latency.is_zero() {
            answer(reply, state.sync(ino));
            return;
        }
        state.syncs_in_flight += 1;
        let cuts_before = state.power_cuts;
        drop(state);
        let (shared, power_events) = (self.state.clone(), self.power_events.clone());
        let done = Instant::now() + latency;
        std::thread::spawn(move || {
            let mut state = lock(&shared);
            let mut now = Instant::now();
            while now < done && state.power_cuts == cuts_before && !state.power_off {
                state = power_events
                    .wait_timeout(state, done - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                now = Instant::now();
            }
            state.syncs_in_flight -= 1;
            let result = if state.power_cuts == cuts_before {
                state.sync(ino)
            } else {
                Err(libc::EIO)
            };
            drop(state);
            answer(reply, result);
        });
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn attr(state: &State, ino: u64, node: &Node) -> FileAttr {
    let (kind, size, nlink) = match &node.body {
        Body::File { live, .. } => (FileType::RegularFile, live.size(), node.links),
        Body::Dir { live, .. } => (
            FileType::Directory,
            live.len() as u64,
            2 + state.subdirs(ino),
        ),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: node.atime,
        mtime: node.mtime,
        ctime: node.ctime,
        crtime: UNIX_EPOCH,
        kind,
        perm: node.perm,
        nlink,
        uid: node.uid,
        gid: node.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn attr_of(state: &State, ino: u64) -> Result<FileAttr, Errno> {
    let node = state.node(ino).map_err(errno)?;
    Ok(attr(state, ino, node))
}

fn time(value: TimeOrNow) -> SystemTime {
    match value {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, _config: &mut KernelConfig) -> std::io::Result<()> {
        // fuser asks for no writeback cache (FUSE_WRITEBACK_CACHE is not in its default init
        // flags) and this file system adds none.
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let state = self.lock();
        match state
            .lookup(parent.0, name)
            .and_then(|ino| Ok(attr(&state, ino, state.node(ino)?)))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let state = self.lock();
        match attr_of(&state, ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.lock();
        let result = (|| {
            if let Some(size) = size {
                state.set_size(ino.0, size)?;
            }
            let node = state.node_mut(ino.0)?;
            if let Some(mode) = mode {
                node.perm = (mode & 0o7777) as u16;
            }
            if let Some(uid) = uid {
                node.uid = uid;
            }
            if let Some(gid) = gid {
                node.gid = gid;
            }
            if let Some(atime) = atime {
                node.atime = time(atime);
            }
            if let Some(mtime) = mtime {
                node.mtime = time(mtime);
            }
            node.ctime = SystemTime::now();
            Ok(())
        })();
        match result.map_err(errno).and_then(|()| attr_of(&state, ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.lock();
        let perm = (mode & !umask & 0o7777) as u16;
        match state
            .create(parent.0, name, true, perm, req.uid(), req.gid())
            .map_err(errno)
            .and_then(|ino| attr_of(&state, ino))
        {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        if mode & libc::S_IFMT != 0 && mode & libc::S_IFMT != libc::S_IFREG {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        let mut state = self.lock();
        let perm = (mode & !umask & 0o7777) as u16;
        let created = state
            .create(parent.0, name, false, perm, req.uid(), req.gid())
            .and_then(|ino| state.opened(ino).map(|()| ino))
            .map_err(errno)
            .and_then(|ino| attr_of(&state, ino));
        match created {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                handle(OpenFlags(flags)),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(reply, self.lock().remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer(reply, self.lock().remove(parent.0, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let result = self
            .lock()
            .rename(parent.0, name, newparent.0, newname, no_replace);
        answer(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.lock();
        match state.node(ino.0).map(Node::is_dir) {
            Ok(false) => {}
            Ok(true) => return reply.error(Errno::from_i32(libc::EISDIR)),
            Err(code) => return reply.error(errno(code)),
        }
        match state.opened(ino.0) {
            Ok(()) => reply.opened(handle(flags), FopenFlags::FOPEN_DIRECT_IO),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.lock().read(ino.0, offset, u64::from(size)) {
            Ok(bytes) => reply.data(&bytes),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.lock();
        let synchronous = fh.0 == 1 || flags.0 & SYNC_FLAGS != 0;
        let result = state.write(ino.0, offset, data).and_then(|()| {
            if synchronous {
                state.sync(ino.0)
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().released(ino.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync_and_reply(ino.0, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = self.lock();
        match state.node(ino.0).map(Node::is_dir) {
            Ok(true) => {}
            Ok(false) => return reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(code) => return reply.error(errno(code)),
        }
        match state.opened(ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(code) => reply.error(errno(code)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.lock();
        let entries = match state.list(ino.0) {
            Ok(entries) => entries,
            Err(code) => return reply.error(errno(code)),
        };
        let mut all = vec![
            (ino.0, FileType::Directory, OsStr::new(".").to_os_string()),
            (ino.0, FileType::Directory, OsStr::new("..").to_os_string()),
        ];
        for (name, child) in entries {
            let kind = match state.node(child).map(Node::is_dir) {
                Ok(true) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            all.push((child, kind, name));
        }
        for (index, (child, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), index as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().released(ino.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync_and_reply(ino.0, reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 1 TiB free: the programs under test budget their disk against statvfs.
        const BLOCKS: u64 = 1 << 28;
        reply.statfs(BLOCKS, BLOCKS, BLOCKS, 1 << 24, 1 << 24, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        match self.lock().node(ino.0) {
            Ok(_) => reply.ok(),
            Err(code) => reply.error(errno(code)),
        }
    }
}
