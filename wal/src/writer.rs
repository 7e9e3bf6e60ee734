//! The writer thread: every change to the database goes through it, in order, in group commits.
//!
//! The thread takes every request queued (up to `max_commit_bytes` of records), builds one atomic
//! batch (one compressed frame for all their records, segment registrations and removals, the new
//! state), applies it, flushes and fsyncs, and only then publishes the new state and completes the
//! requests, in queue order. While it syncs, new requests queue up and form the next commit, so
//! one fsync serves every appender that arrived meanwhile.
//!
//! Being the only writer serialises every actor that changes the state value (appends, seals,
//! uploads, initialization) without locks around the database.
//!
//! If applying, flushing or syncing fails, every request of that commit gets the error, nothing
//! of it is published, and the WAL is poisoned: later requests fail until it is reopened (after a
//! failed fsync the kernel's page cache can no longer be trusted to reflect the disk). After a
//! reopen the commit is there whole or not at all.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
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

    fn reject(self, error: WalError) {
        // A requester that went away does not need its answer.
        match self {
            Request::Append { reply, .. } => drop(reply.send(Err(error))),
            Request::Register { reply, .. } | Request::Initialize { reply, .. } => {
                drop(reply.send(Err(error)))
            }
            Request::Uploaded { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}

/// The answer owed to one request of a commit.
enum Reply {
    Append(oneshot::Sender<Result<Committed, WalError>>, Result<Committed, WalError>),
    Done(mpsc::Sender<Result<(), WalError>>, Result<(), WalError>),
    Uploaded(mpsc::Sender<Result<SegmentMeta, WalError>>, Result<SegmentMeta, WalError>),
}

impl Reply {
    /// Replaces a success by the commit's failure (a request refused on its own keeps its error).
    fn fail(self, cause: &Arc<WalError>) -> Reply {
        let failed = || WalError::CommitFailed {
            cause: cause.clone(),
        };
        match self {
            Reply::Append(tx, Ok(_)) => Reply::Append(tx, Err(failed())),
            Reply::Done(tx, Ok(())) => Reply::Done(tx, Err(failed())),
            Reply::Uploaded(tx, Ok(_)) => Reply::Uploaded(tx, Err(failed())),
            other => other,
        }
    }

    fn send(self, stats: &WalStats) {
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
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub store: Arc<Store>,
    pub shared: Arc<Mutex<Shared>>,
    pub stats: Arc<WalStats>,
    pub state: StoredState,
    pub backlog: Backlog,
    pub encoder: FrameEncoder,
    pub max_commit_bytes: u64,
    pub dir: PathBuf,
    #[cfg(test)]
    pub faults: Arc<Faults>,
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

impl Writer {
    /// Runs until every sender is gone.
    pub fn run(mut self, requests: mpsc::Receiver<Request>) {
        let mut compressed = Vec::new();
        let mut carry: Option<Request> = None;
        let mut poisoned: Option<Arc<WalError>> = None;
        let mut last_size_refresh = Instant::now();
        loop {
            let first = match carry.take() {
                Some(request) => request,
                None => match requests.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            #[cfg(test)]
            drop(self.faults.hold.lock());
            let mut raw = first.raw_bytes();
            let mut batch = vec![first];
            while raw < self.max_commit_bytes && batch.len() < MAX_REQUESTS_PER_COMMIT {
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
            if let Some(cause) = &poisoned {
                for request in batch {
                    request.reject(WalError::Poisoned {
                        cause: cause.clone(),
                    });
                }
                continue;
            }
            let started = Instant::now();
            let (replies, outcome) = self.commit(batch, &mut compressed);
            compressed.clear();
            if compressed.capacity() > KEPT_BUFFER_BYTES {
                compressed = Vec::new();
            }
            let replies = match outcome {
                Ok(sizes_changed) => {
                    if sizes_changed || last_size_refresh.elapsed() >= SIZE_REFRESH_EVERY {
                        self.refresh_size();
                        last_size_refresh = Instant::now();
                    }
                    WalStats::add(&self.stats.commits, 1);
                    self.stats.last_commit_micros.store(
                        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    replies
                }
                Err(error) => {
                    tracing::error!(error = %error, "WAL commit failed; refusing writes until reopened");
                    WalStats::add(&self.stats.commit_failures, 1);
                    let cause = Arc::new(error);
                    lock(&self.shared).poisoned = Some(cause.clone());
                    let failed = replies.into_iter().map(|r| r.fail(&cause)).collect();
                    poisoned = Some(cause);
                    failed
                }
            };
            for reply in replies {
                reply.send(&self.stats);
            }
        }
        tracing::debug!("WAL writer stopped: every handle is gone");
    }

    fn refresh_size(&self) {
        match self.store.size_on_disk() {
            Ok(bytes) => lock(&self.shared).sled_bytes = bytes,
            Err(error) => tracing::warn!(error = %error, "cannot measure the WAL database size"),
        }
    }

    /// Builds, writes and publishes one commit. Returns the replies owed and whether sizes
    /// changed enough to measure the database again; on `Err` nothing was published.
    fn commit(
        &mut self,
        requests: Vec<Request>,
        compressed: &mut Vec<u8>,
    ) -> (Vec<Reply>, Result<bool, WalError>) {
        let mut replies = Vec::with_capacity(requests.len());
        let plan = match self.plan(requests, compressed, &mut replies) {
            Ok(plan) => plan,
            Err(error) => return (replies, Err(error)),
        };
        if plan.batch.is_empty() {
            // Every request was refused on its own: nothing to write.
            return (replies, Ok(false));
        }
        let sizes_changed = plan.sizes_changed;
        if let Err(error) = self.write(plan.batch) {
            return (replies, Err(error));
        }
        WalStats::add(&self.stats.raw_bytes, plan.raw_bytes);
        WalStats::add(&self.stats.stored_bytes, plan.stored_bytes);
        for meta in &plan.added {
            WalStats::add(&self.stats.segments_sealed, 1);
            WalStats::add(&self.stats.sealed_raw_bytes, meta.raw_bytes);
        }
        WalStats::add(&self.stats.segments_uploaded, plan.removed.len() as u64);
        self.state = plan.state;
        self.backlog = plan.backlog;
        let mut shared = lock(&self.shared);
        shared.state = self.state.clone();
        shared.backlog = self.backlog;
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
        (replies, Ok(sizes_changed))
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

    /// Turns the requests into one batch and the state after it. Requests refused on their own
    /// (a seal that no longer matches, `mark_uploaded` of a segment that is not the oldest, ...)
    /// get their error and change nothing.
    fn plan(
        &mut self,
        requests: Vec<Request>,
        compressed: &mut Vec<u8>,
        replies: &mut Vec<Reply>,
    ) -> Result<CommitPlan, WalError> {
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
                            && let Err(e) = self.encoder.begin_sized_frame(frame_raw)
                        {
                            compress_error.get_or_insert(e);
                        }
                        for record in &group.records {
                            header.record_lens.push(record.len() as u64);
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
            self.encoder
                .finish_frame(compressed)
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
        if state_changed {
            plan.batch
                .insert(STATE_KEY, layout::encode(&plan.state, "the WAL state")?);
        }
        Ok(plan)
    }

    fn register(&self, plan: &mut CommitPlan, seal: SealPlan) -> Result<(), WalError> {
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
        for (seq, chunks) in &seal.removed_frames {
            frame::remove_from_batch(&mut plan.batch, *seq, *chunks);
        }
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
        let oldest = {
            let shared = lock(&self.shared);
            shared
                .segments
                .values()
                .chain(plan.added.iter())
                .find(|meta| !plan.removed.contains(&meta.number))
                .cloned()
        };
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
        let has_segments = !lock(&self.shared).segments.is_empty() || !plan.added.is_empty();
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
                reason: format!("{} leaves no 13-digit timestamp after it", init.last_sealed_ts_ms),
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
