//! The writer: every change to the database goes through it, in order, in group commits.
//!
//! Two threads form a pipeline of depth one:
//!
//! - the **planner** (`wal-writer`) takes every request queued (up to `max_commit_bytes` of
//!   records), validates them and builds one atomic batch: one compressed frame for all their
//!   records, segment registrations and removals, and the state after them;
//! - the **committer** (`wal-commit`) applies that batch, flushes and fsyncs, and only then
//!   publishes the new state and completes the requests, in queue order.
//!
//! While the committer syncs commit N, the planner compresses commit N+1 from what queued
//! meanwhile, so compression (the main CPU cost) overlaps the flush and fsync wait, and one fsync
//! serves every appender that arrived during the previous one. The planner plans on the state
//! the previous plans lead to; if one of them fails, everything after it fails too (below).
//!
//! Being the only writer serialises every actor that changes the state value (appends, seals,
//! uploads, initialization) without locks around the database.
//!
//! If applying, flushing or syncing fails, every request of that commit gets the error, nothing
//! of it is published, and the WAL is poisoned: later requests fail until it is reopened (after a
//! failed fsync the kernel's page cache can no longer be trusted to reflect the disk). After a
//! reopen the commit is there whole or not at all.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::appender::{Committed, Group};
use crate::compress::FrameEncoder;
use crate::error::{SegmentProblem, WalError};
use crate::frame::{self, CursorMark, FrameHeader};
use crate::layout::{self, STATE_KEY};
use crate::seal::SealPlan;
use crate::segment::SegmentMeta;
use crate::state::{InitialState, StoredState, UploadRecord};
use crate::store::{Store, WriteBatch};
use crate::usage::{Backlog, WalStats};

/// Most requests gathered into one commit, whatever their size.
const MAX_REQUESTS_PER_COMMIT: usize = 16 * 1024;
/// Compressed-frame buffer capacity kept between commits; a larger one (after a huge record) is
/// released.
const KEPT_BUFFER_BYTES: usize = 1024 * 1024;
/// Commits with at most this many raw bytes are gathered into one buffer and compressed in one
/// call (faster); larger ones (only a huge record makes them) are streamed record by record, so a
/// huge record is never copied.
const CONTIGUOUS_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Chunks of sealed frames removed per commit at most (about 4 MiB of raw records). Sealed frames
/// are removed a little at a time, after the commit that sealed them, because removing a whole
/// segment's worth of keys in one batch makes sled pull and rewrite hundreds of leaves at once
/// (a transient of tens of MiB of RSS for a 64 MiB segment).
const GC_CHUNKS_PER_COMMIT: u32 = 256;
/// How long the planner waits for requests before it commits a removal of sealed frames alone.
const GC_IDLE_DELAY: Duration = Duration::from_millis(20);
/// How often the database size is measured when no seal or upload asks for it.
const SIZE_REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Smallest timestamp with 13 digits.
pub(crate) const MIN_TS_MS: u64 = 1_000_000_000_000;
/// Largest timestamp with 13 digits.
pub(crate) const MAX_TS_MS: u64 = 9_999_999_999_999;

/// A request to the writer.
pub(crate) enum Request {
    /// Append a group.
    Append {
        group: Group,
        reply: oneshot::Sender<Result<Committed, WalError>>,
    },
    /// Register a sealed segment and remove the records it holds.
    Register {
        plan: SealPlan,
        reply: mpsc::Sender<Result<(), WalError>>,
    },
    /// Forget the oldest segment, which was uploaded.
    Uploaded {
        number: u64,
        uploaded_at_ms: u64,
        reply: mpsc::Sender<Result<SegmentMeta, WalError>>,
    },
    /// Seed a new WAL.
    Initialize {
        init: InitialState,
        reply: mpsc::Sender<Result<(), WalError>>,
    },
}

impl Request {
    fn raw_bytes(&self) -> u64 {
        match self {
            Request::Append { group, .. } => group.raw_bytes(),
            _ => 0,
        }
    }

    /// The answer refusing this request with `error`.
    fn into_reply(self, error: WalError) -> Reply {
        match self {
            Request::Append { reply, .. } => Reply::Append(reply, Err(error)),
            Request::Register { reply, .. } | Request::Initialize { reply, .. } => {
                Reply::Done(reply, Err(error))
            }
            Request::Uploaded { reply, .. } => Reply::Uploaded(reply, Err(error)),
        }
    }
}

/// The answer owed to one request of a commit.
enum Reply {
    Append(
        oneshot::Sender<Result<Committed, WalError>>,
        Result<Committed, WalError>,
    ),
    Done(mpsc::Sender<Result<(), WalError>>, Result<(), WalError>),
    Uploaded(
        mpsc::Sender<Result<SegmentMeta, WalError>>,
        Result<SegmentMeta, WalError>,
    ),
}

impl Reply {
    /// Replaces a success by `error()` (a request refused on its own keeps its error).
    fn replace_success(self, error: impl Fn() -> WalError) -> Reply {
        match self {
            Reply::Append(tx, Ok(_)) => Reply::Append(tx, Err(error())),
            Reply::Done(tx, Ok(())) => Reply::Done(tx, Err(error())),
            Reply::Uploaded(tx, Ok(_)) => Reply::Uploaded(tx, Err(error())),
            other => other,
        }
    }

    /// Answers that the writer is gone.
    fn fail_closed(self) {
        self.replace_success(|| WalError::Closed)
            .send(&WalStats::default());
    }

    fn send(self, stats: &WalStats) {
        // A requester that went away does not need its answer.
        match self {
            Reply::Append(tx, result) => {
                if let Ok(committed) = &result {
                    WalStats::add(&stats.groups, 1);
                    WalStats::add(&stats.records, committed.records);
                }
                drop(tx.send(result));
            }
            Reply::Done(tx, result) => drop(tx.send(result)),
            Reply::Uploaded(tx, result) => drop(tx.send(result)),
        }
    }
}

/// What readers see of the writer's work; updated only by the writer, after each durable commit.
pub(crate) struct Shared {
    pub state: StoredState,
    pub segments: BTreeMap<u64, SegmentMeta>,
    pub segment_bytes: u64,
    pub damaged: BTreeMap<u64, SegmentProblem>,
    pub backlog: Backlog,
    pub sled_bytes: u64,
    pub poisoned: Option<Arc<WalError>>,
}

/// Locks the shared view (a panic elsewhere cannot leave it half-updated: it is only assigned
/// whole values).
pub(crate) fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Test-only fault injection.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Faults {
    /// Fail the next commit after its batch was applied, before it is synced.
    pub fail_next_sync: std::sync::atomic::AtomicBool,
    /// Taken by the writer after it received the first request of a commit and before it gathers
    /// the others: a test holding it makes everything it queues meanwhile one commit.
    pub hold: Mutex<()>,
    /// Never commit a removal of sealed frames on its own (only with requests).
    pub no_idle_gc: std::sync::atomic::AtomicBool,
}

/// The planner thread's state: the state, backlog and segments as they will be once every commit
/// planned so far is durable.
pub(crate) struct Planner {
    pub shared: Arc<Mutex<Shared>>,
    pub state: StoredState,
    pub backlog: Backlog,
    /// Segment numbers (with their entries) once every planned commit is durable.
    pub segments: BTreeMap<u64, SegmentMeta>,
    /// Sealed frames not removed yet, oldest first: (sequence, chunk count).
    pub garbage: VecDeque<(u64, u32)>,
    pub encoder: FrameEncoder,
    pub max_commit_bytes: u64,
    pub dir: PathBuf,
    #[cfg(test)]
    pub faults: Arc<Faults>,
}

/// The committer thread's state.
pub(crate) struct Committer {
    pub store: Arc<Store>,
    pub shared: Arc<Mutex<Shared>>,
    pub stats: Arc<WalStats>,
    #[cfg(test)]
    pub faults: Arc<Faults>,
}

/// A planned commit on its way to the committer, with the answers owed once it is durable.
pub(crate) struct Planned {
    plan: Result<CommitPlan, WalError>,
    replies: Vec<Reply>,
    started: Instant,
}

/// Starts the planner and committer threads; they stop once every sender of `requests` is gone
/// and what was queued is committed.
pub(crate) fn spawn(
    planner: Planner,
    committer: Committer,
    requests: mpsc::Receiver<Request>,
) -> std::io::Result<(JoinHandle<()>, JoinHandle<()>)> {
    // Depth one: one commit syncing, one planned and waiting, one being planned.
    let (planned_tx, planned_rx) = mpsc::sync_channel(1);
    let committer = std::thread::Builder::new()
        .name("wal-commit".into())
        .spawn(move || committer.run(planned_rx))?;
    let planner = std::thread::Builder::new()
        .name("wal-writer".into())
        .spawn(move || planner.run(requests, planned_tx))?;
    Ok((planner, committer))
}

/// Buffers reused from commit to commit.
#[derive(Default)]
struct FrameBuffers {
    /// The commit's raw NDJSON, when it is compressed in one piece.
    raw: Vec<u8>,
    /// The compressed frame.
    compressed: Vec<u8>,
}

impl FrameBuffers {
    /// Empties the buffers, releasing any capacity a huge commit left.
    fn reset(&mut self) {
        for buffer in [&mut self.raw, &mut self.compressed] {
            buffer.clear();
            if buffer.capacity() > KEPT_BUFFER_BYTES * 2 {
                *buffer = Vec::new();
            }
        }
    }
}

/// Everything one commit changes, built before anything is written.
struct CommitPlan {
    batch: WriteBatch,
    state: StoredState,
    backlog: Backlog,
    added: Vec<SegmentMeta>,
    removed: Vec<u64>,
    stored_bytes: u64,
    raw_bytes: u64,
    sizes_changed: bool,
}

impl Planner {
    /// Plans commits until every sender is gone, then lets the committer finish.
    fn run(mut self, requests: mpsc::Receiver<Request>, planned: mpsc::SyncSender<Planned>) {
        let mut buffers = FrameBuffers::default();
        let mut carry: Option<Request> = None;
        loop {
            let first = match carry.take() {
                Some(request) => Some(request),
                None if self.garbage.is_empty() || self.idle_gc_disabled() => match requests.recv()
                {
                    Ok(request) => Some(request),
                    Err(_) => break,
                },
                // Sealed frames wait for removal: remove some if no request comes soon.
                None => match requests.recv_timeout(GC_IDLE_DELAY) {
                    Ok(request) => Some(request),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            #[cfg(test)]
            if first.is_some() {
                drop(self.faults.hold.lock());
            }
            let mut raw = first.as_ref().map_or(0, Request::raw_bytes);
            let mut batch: Vec<Request> = first.into_iter().collect();
            while !batch.is_empty()
                && raw < self.max_commit_bytes
                && batch.len() < MAX_REQUESTS_PER_COMMIT
            {
                match requests.try_recv() {
                    Ok(request) => {
                        let size = request.raw_bytes();
                        if raw + size > self.max_commit_bytes {
                            carry = Some(request);
                            break;
                        }
                        raw += size;
                        batch.push(request);
                    }
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let poisoned = lock(&self.shared).poisoned.clone();
            let mut replies = Vec::with_capacity(batch.len());
            let plan = match poisoned {
                // Refused without planning; the committer answers, in order.
                Some(cause) => {
                    let refused = |r: Request| {
                        r.into_reply(WalError::Poisoned {
                            cause: cause.clone(),
                        })
                    };
                    replies.extend(batch.into_iter().map(refused));
                    Err(WalError::Poisoned { cause })
                }
                None => self.plan(batch, &mut buffers, &mut replies),
            };
            buffers.reset();
            let planned_commit = Planned {
                plan,
                replies,
                started,
            };
            if let Err(mpsc::SendError(unsent)) = planned.send(planned_commit) {
                // The committer is gone (it panicked): nobody can make these durable.
                for reply in unsent.replies {
                    reply.fail_closed();
                }
            }
        }
        tracing::debug!("WAL planner stopped: every handle is gone");
    }

    /// Turns the requests into one batch and the state after it. Requests refused on their own
    /// (a seal that no longer matches, `mark_uploaded` of a segment that is not the oldest, ...)
    /// get their error and change nothing.
    fn plan(
        &mut self,
        requests: Vec<Request>,
        buffers: &mut FrameBuffers,
        replies: &mut Vec<Reply>,
    ) -> Result<CommitPlan, WalError> {
        let FrameBuffers { raw, compressed } = buffers;
        let mut plan = CommitPlan {
            batch: WriteBatch::default(),
            state: self.state.clone(),
            backlog: self.backlog,
            added: Vec::new(),
            removed: Vec::new(),
            stored_bytes: 0,
            raw_bytes: 0,
            sizes_changed: false,
        };
        let frame_raw: u64 = requests.iter().map(Request::raw_bytes).sum();
        let contiguous = frame_raw <= CONTIGUOUS_MAX_BYTES;
        let mut header: Option<FrameHeader> = None;
        let mut state_changed = false;
        let mut compress_error = None;
        for request in requests {
            match request {
                Request::Append { group, reply } => {
                    let first_seq = plan.state.next_record_seq;
                    let records = group.records.len() as u64;
                    if !group.records.is_empty() {
                        let header = header.get_or_insert_with(|| FrameHeader {
                            first_seq,
                            record_lens: Vec::new(),
                            raw_bytes: frame_raw,
                            stored_bytes: 0,
                            chunks: 0,
                            cursor_before: plan.state.cursor.clone(),
                            marks: Vec::new(),
                        });
                        if header.record_lens.is_empty()
                            && !contiguous
                            && let Err(e) = self.encoder.begin_sized_frame(frame_raw)
                        {
                            compress_error.get_or_insert(e);
                        }
                        for record in &group.records {
                            header.record_lens.push(record.len() as u64);
                            if contiguous {
                                raw.extend_from_slice(record);
                                raw.push(b'\n');
                                continue;
                            }
                            let written = self
                                .encoder
                                .write(record, compressed)
                                .and_then(|()| self.encoder.write(b"\n", compressed));
                            if let Err(e) = written {
                                compress_error.get_or_insert(e);
                            }
                        }
                    }
                    plan.state.next_record_seq += records;
                    if let Some(cursor) = group.cursor {
                        if let Some(header) = header.as_mut() {
                            header.marks.push(CursorMark {
                                end: header.record_lens.len() as u64,
                                cursor: cursor.clone(),
                            });
                        }
                        plan.state.cursor = Some(cursor);
                    }
                    for change in group.changes {
                        plan.state.apply(change);
                    }
                    plan.state.touched = true;
                    state_changed = true;
                    replies.push(Reply::Append(reply, Ok(Committed { first_seq, records })));
                }
                Request::Register { plan: seal, reply } => {
                    let result = self.register(&mut plan, seal);
                    state_changed |= result.is_ok();
                    replies.push(Reply::Done(reply, result));
                }
                Request::Uploaded {
                    number,
                    uploaded_at_ms,
                    reply,
                } => {
                    let result = self.uploaded(&mut plan, number, uploaded_at_ms);
                    state_changed |= result.is_ok();
                    replies.push(Reply::Uploaded(reply, result));
                }
                Request::Initialize { init, reply } => {
                    let result = self.initialize(&mut plan, init);
                    state_changed |= result.is_ok();
                    replies.push(Reply::Done(reply, result));
                }
            }
        }
        if let Some(e) = compress_error {
            return Err(WalError::io("compressing a commit for", &self.dir, e));
        }
        if let Some(mut header) = header {
            if contiguous {
                self.encoder.compress_whole(raw, compressed)
            } else {
                self.encoder.finish_frame(compressed)
            }
            .map_err(|e| WalError::io("compressing a commit for", &self.dir, e))?;
            header.stored_bytes = compressed.len() as u64;
            header.chunks = frame::chunk_count(compressed.len());
            let seq = plan.state.next_frame_seq;
            frame::add_to_batch(&mut plan.batch, seq, &header, compressed)?;
            plan.state.next_frame_seq += 1;
            plan.backlog.records += header.records();
            plan.backlog.raw_bytes += header.raw_bytes;
            plan.stored_bytes = header.stored_bytes;
            plan.raw_bytes = header.raw_bytes;
        }
        self.remove_some_garbage(&mut plan.batch);
        if state_changed {
            plan.batch
                .insert(STATE_KEY, layout::encode(&plan.state, "the WAL state")?);
        }
        // Plan the next commit on the state this one leads to.
        self.state = plan.state.clone();
        self.backlog = plan.backlog;
        for meta in &plan.added {
            self.segments.insert(meta.number, meta.clone());
        }
        for number in &plan.removed {
            self.segments.remove(number);
        }
        Ok(plan)
    }

    #[cfg(test)]
    fn idle_gc_disabled(&self) -> bool {
        self.faults
            .no_idle_gc
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    #[cfg(not(test))]
    fn idle_gc_disabled(&self) -> bool {
        false
    }

    /// Adds the removal of the oldest sealed frames, up to [`GC_CHUNKS_PER_COMMIT`] chunks (at
    /// least one frame), to a commit.
    fn remove_some_garbage(&mut self, batch: &mut WriteBatch) {
        let mut budget = GC_CHUNKS_PER_COMMIT;
        let mut removed_any = false;
        while let Some(&(seq, chunks)) = self.garbage.front() {
            if removed_any && chunks > budget {
                break;
            }
            frame::remove_from_batch(batch, seq, chunks);
            self.garbage.pop_front();
            budget = budget.saturating_sub(chunks);
            removed_any = true;
        }
    }

    fn register(&mut self, plan: &mut CommitPlan, seal: SealPlan) -> Result<(), WalError> {
        let state = &plan.state;
        if seal.from != state.first_unsealed
            || seal.meta.number != state.next_file_number
            || seal.meta.ts_ms <= state.last_sealed_ts_ms
        {
            return Err(WalError::corrupt(format!(
                "segment {} was sealed from a state that changed meanwhile (expected number {}, \
                 first record {}); only one seal may run at a time",
                seal.meta.number, state.next_file_number, state.first_unsealed.seq
            )));
        }
        plan.batch.insert(
            &layout::segment_key(seal.meta.number),
            layout::encode(&seal.meta, "a segment entry")?,
        );
        // The frames now sealed are garbage: nothing reads below the first unsealed position.
        // They are removed a little at a time, from this commit on.
        self.garbage.extend(seal.removed_frames.iter().copied());
        plan.state.first_unsealed = seal.to;
        plan.state.next_file_number += 1;
        plan.state.last_sealed_ts_ms = seal.meta.ts_ms;
        plan.backlog.records -= seal.meta.records;
        plan.backlog.raw_bytes -= seal.meta.raw_bytes;
        plan.sizes_changed = true;
        plan.added.push(seal.meta);
        Ok(())
    }

    fn uploaded(
        &self,
        plan: &mut CommitPlan,
        number: u64,
        uploaded_at_ms: u64,
    ) -> Result<SegmentMeta, WalError> {
        let oldest = self
            .segments
            .values()
            .chain(plan.added.iter())
            .find(|meta| !plan.removed.contains(&meta.number))
            .cloned();
        let meta = match oldest {
            Some(meta) if meta.number == number => meta,
            other => {
                return Err(WalError::NotOldest {
                    requested: number,
                    oldest: other.map(|m| m.number),
                });
            }
        };
        plan.batch.remove(&layout::segment_key(number));
        plan.state.last_upload = Some(UploadRecord {
            number,
            ts_ms: meta.ts_ms,
            uploaded_at_ms,
        });
        plan.removed.push(number);
        plan.sizes_changed = true;
        Ok(meta)
    }

    fn initialize(&self, plan: &mut CommitPlan, init: InitialState) -> Result<(), WalError> {
        let has_segments = !self.segments.is_empty() || !plan.added.is_empty();
        if plan.state.touched || has_segments {
            return Err(WalError::NotEmpty {
                dir: self.dir.clone(),
            });
        }
        if init.next_file_number == 0 {
            return Err(WalError::InvalidArgument {
                what: "next_file_number",
                reason: "file numbers start at 1".into(),
            });
        }
        if init.last_sealed_ts_ms >= MAX_TS_MS {
            return Err(WalError::InvalidArgument {
                what: "last_sealed_ts_ms",
                reason: format!(
                    "{} leaves no 13-digit timestamp after it",
                    init.last_sealed_ts_ms
                ),
            });
        }
        let state = &mut plan.state;
        state.cursor = init.cursor;
        state.recover_until = init.recover_until;
        state.next_file_number = init.next_file_number;
        state.last_sealed_ts_ms = init.last_sealed_ts_ms;
        state.extras = init.extras;
        state.touched = true;
        Ok(())
    }
}

impl Committer {
    /// Commits planned batches in order until the planner is gone.
    fn run(self, planned: mpsc::Receiver<Planned>) {
        let mut poisoned: Option<Arc<WalError>> = None;
        let mut last_size_refresh = Instant::now();
        for Planned {
            plan,
            replies,
            started,
        } in planned
        {
            let outcome = match (&poisoned, plan) {
                (Some(cause), _) => Err(WalError::Poisoned {
                    cause: cause.clone(),
                }),
                (None, Err(error)) => Err(error),
                (None, Ok(plan)) => self.commit(plan),
            };
            let replies: Vec<Reply> = match outcome {
                Ok(sizes_changed) => {
                    if sizes_changed || last_size_refresh.elapsed() >= SIZE_REFRESH_EVERY {
                        self.refresh_size();
                        last_size_refresh = Instant::now();
                    }
                    self.stats.last_commit_micros.store(
                        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    replies
                }
                Err(WalError::Poisoned { cause }) => {
                    let error = || WalError::Poisoned {
                        cause: cause.clone(),
                    };
                    replies
                        .into_iter()
                        .map(|r| r.replace_success(error))
                        .collect()
                }
                Err(error) => {
                    tracing::error!(error = %error, "WAL commit failed; refusing writes until reopened");
                    WalStats::add(&self.stats.commit_failures, 1);
                    let cause = Arc::new(error);
                    lock(&self.shared).poisoned = Some(cause.clone());
                    poisoned = Some(cause.clone());
                    let error = || WalError::CommitFailed {
                        cause: cause.clone(),
                    };
                    replies
                        .into_iter()
                        .map(|r| r.replace_success(error))
                        .collect()
                }
            };
            for reply in replies {
                reply.send(&self.stats);
            }
        }
        tracing::debug!("WAL committer stopped");
    }

    fn refresh_size(&self) {
        match self.store.size_on_disk() {
            Ok(bytes) => lock(&self.shared).sled_bytes = bytes,
            Err(error) => tracing::warn!(error = %error, "cannot measure the WAL database size"),
        }
    }

    /// Writes one planned commit and publishes it. Returns whether sizes changed enough to
    /// measure the database again; on `Err` nothing was published.
    fn commit(&self, plan: CommitPlan) -> Result<bool, WalError> {
        if plan.batch.is_empty() {
            // Every request was refused on its own: nothing to write.
            return Ok(false);
        }
        self.write(plan.batch)?;
        WalStats::add(&self.stats.commits, 1);
        WalStats::add(&self.stats.raw_bytes, plan.raw_bytes);
        WalStats::add(&self.stats.stored_bytes, plan.stored_bytes);
        for meta in &plan.added {
            WalStats::add(&self.stats.segments_sealed, 1);
            WalStats::add(&self.stats.sealed_raw_bytes, meta.raw_bytes);
        }
        WalStats::add(&self.stats.segments_uploaded, plan.removed.len() as u64);
        let mut shared = lock(&self.shared);
        shared.state = plan.state;
        shared.backlog = plan.backlog;
        for meta in plan.added {
            shared.segment_bytes += meta.stored_bytes;
            shared.segments.insert(meta.number, meta);
        }
        for number in plan.removed {
            if let Some(meta) = shared.segments.remove(&number) {
                shared.segment_bytes -= meta.stored_bytes;
            }
            shared.damaged.remove(&number);
        }
        Ok(plan.sizes_changed)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), WalError> {
        self.store.apply(batch)?;
        #[cfg(test)]
        if self
            .faults
            .fail_next_sync
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(WalError::io(
                "fsyncing (injected fault)",
                self.store.path(),
                std::io::Error::other("injected"),
            ));
        }
        self.store.sync()
    }
}
