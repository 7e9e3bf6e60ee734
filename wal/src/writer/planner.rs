//! The planner: gathers queued requests into commits, validates them, compresses their records
//! into one frame (an entry of the frame log), and builds the database batch and the state each
//! commit leads to.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{CommitPlan, MAX_TS_MS, Planned, Reply, Request, Shared, lock};
use bytes::Bytes;

use crate::appender::Committed;
use crate::compress::FrameEncoder;
use crate::error::WalError;
use crate::frame::{CursorMark, FrameHeader};
use crate::layout::{self, STATE_KEY};
use crate::log;
use crate::seal::SealPlan;
use crate::segment::SegmentMeta;
use crate::state::{InitialState, StateChange, StoredState, UploadRecord};
use crate::store::WriteBatch;
use crate::usage::Backlog;

/// Most requests gathered into one commit, whatever their size.
const MAX_REQUESTS_PER_COMMIT: usize = 16 * 1024;
/// Compressed-frame buffer capacity kept between commits; a larger one (after a huge record) is
/// released.
const KEPT_BUFFER_BYTES: usize = 1024 * 1024;
/// Commits with at most this many raw bytes are gathered into one buffer and compressed in one
/// call (faster); larger ones (only a huge record makes them) are streamed record by record, so a
/// huge record is never copied.
const CONTIGUOUS_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// The planner thread's state: the state, backlog and segments as they will be once every commit
/// planned so far is durable.
pub(crate) struct Planner {
    pub shared: Arc<Mutex<Shared>>,
    pub state: StoredState,
    pub backlog: Backlog,
    /// Segment numbers (with their entries) once every planned commit is durable.
    pub segments: BTreeMap<u64, SegmentMeta>,
    /// The frame log's files, by first frame, oldest first (the one appended to last).
    pub log_files: VecDeque<u64>,
    pub encoder: FrameEncoder,
    pub max_commit_bytes: u64,
    pub dir: PathBuf,
    #[cfg(test)]
    pub faults: Arc<super::Faults>,
}

/// The frame of one commit, as its appends are planned.
struct FrameBuilder<'b> {
    buffers: &'b mut FrameBuffers,
    /// Raw bytes of all the commit's records (known before the first is added).
    raw_bytes: u64,
    /// Whether records are gathered and compressed in one piece, or streamed.
    contiguous: bool,
    /// The header, from the first append on.
    header: Option<FrameHeader>,
    /// CRC32C of the raw content added so far.
    raw_crc32c: u32,
}

impl<'b> FrameBuilder<'b> {
    fn new(buffers: &'b mut FrameBuffers, raw_bytes: u64) -> Self {
        FrameBuilder {
            buffers,
            raw_bytes,
            contiguous: raw_bytes <= CONTIGUOUS_MAX_BYTES,
            header: None,
            raw_crc32c: 0,
        }
    }

    /// Adds an append's records; the first append starts the frame, which remembers the cursor
    /// in effect before it (`state` is the state planned so far).
    fn add(
        &mut self,
        encoder: &mut FrameEncoder,
        records: &[Bytes],
        state: &StoredState,
    ) -> std::io::Result<()> {
        if self.header.is_none() && !self.contiguous && self.raw_bytes > 0 {
            encoder.begin_sized_frame(self.raw_bytes)?;
        }
        let header = self.header.get_or_insert_with(|| FrameHeader {
            frame: state.next_frame_seq,
            first_seq: state.next_record_seq,
            record_lens: Vec::new(),
            raw_bytes: self.raw_bytes,
            stored_bytes: 0,
            cursor_before: state.cursor.clone(),
            marks: Vec::new(),
            changes: Vec::new(),
            raw_crc32c: 0,
        });
        let FrameBuffers { raw, compressed } = &mut *self.buffers;
        for record in records {
            header.record_lens.push(record.len() as u64);
            self.raw_crc32c =
                crc32c::crc32c_append(crc32c::crc32c_append(self.raw_crc32c, record), b"\n");
            if self.contiguous {
                raw.extend_from_slice(record);
                raw.push(b'\n');
            } else {
                encoder.write(record, compressed)?;
                encoder.write(b"\n", compressed)?;
            }
        }
        Ok(())
    }

    /// Notes that the append just added set `cursor` and made `changes`.
    fn mark(&mut self, cursor: Option<&str>, changes: &[StateChange]) {
        if let Some(header) = self.header.as_mut() {
            if let Some(cursor) = cursor {
                header.marks.push(CursorMark {
                    end: header.record_lens.len() as u64,
                    cursor: cursor.to_string(),
                });
            }
            header.changes.extend_from_slice(changes);
        }
    }

    /// Compresses what is left and returns the header and the compressed frame, or `None` when
    /// the commit has no record (its appends then only change the state).
    fn finish(
        self,
        encoder: &mut FrameEncoder,
    ) -> std::io::Result<Option<(FrameHeader, &'b [u8])>> {
        let Some(mut header) = self.header.filter(|header| header.records() > 0) else {
            return Ok(None);
        };
        header.raw_crc32c = self.raw_crc32c;
        let FrameBuffers { raw, compressed } = self.buffers;
        if self.contiguous {
            encoder.compress_whole(raw, compressed)?;
        } else {
            encoder.finish_frame(compressed)?;
        }
        header.stored_bytes = compressed.len() as u64;
        Ok(Some((header, compressed.as_slice())))
    }
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

impl Planner {
    /// Plans commits until every sender is gone, then lets the syncer finish.
    pub(super) fn run(
        mut self,
        requests: mpsc::Receiver<Request>,
        planned: mpsc::SyncSender<Planned>,
    ) {
        let mut buffers = FrameBuffers::default();
        let mut carry: Option<Request> = None;
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
            let started = Instant::now();
            let poisoned = lock(&self.shared).poisoned.clone();
            let mut replies = Vec::with_capacity(batch.len());
            let plan = match poisoned {
                // Refused without planning; the syncer answers, in order.
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
                // The syncer is gone (it panicked): nobody can make these durable.
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
        let mut plan = CommitPlan {
            batch: WriteBatch::default(),
            entry: None,
            sealed_log_files: Vec::new(),
            state: self.state.clone(),
            backlog: self.backlog,
            added: Vec::new(),
            removed: Vec::new(),
            stored_bytes: 0,
            raw_bytes: 0,
            sizes_changed: false,
        };
        let frame_raw: u64 = requests.iter().map(Request::raw_bytes).sum();
        let mut frame = FrameBuilder::new(buffers, frame_raw);
        // Whether the appends changed the state, and whether anything else did: the latter is
        // always written to the database, the former only when no frame carries it.
        let mut appended = false;
        let mut state_changed = false;
        let mut compress_error = None;
        for request in requests {
            match request {
                Request::Append { group, reply } => {
                    let first_seq = plan.state.next_record_seq;
                    let records = group.records.len() as u64;
                    if let Err(e) = frame.add(&mut self.encoder, &group.records, &plan.state) {
                        compress_error.get_or_insert(e);
                    }
                    plan.state.next_record_seq += records;
                    frame.mark(group.cursor.as_deref(), &group.changes);
                    if let Some(cursor) = group.cursor {
                        plan.state.cursor = Some(cursor);
                    }
                    for change in group.changes {
                        plan.state.apply(change);
                    }
                    plan.state.touched = true;
                    appended = true;
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
        let finished = frame
            .finish(&mut self.encoder)
            .map_err(|e| WalError::io("compressing a commit for", &self.dir, e))?;
        if let Some((header, compressed)) = finished {
            let mut entry = Vec::new();
            log::encode_entry(&header, compressed, &mut entry)?;
            let pos = plan.state.log_end;
            plan.state.log_end = pos.after(header.frame, entry.len() as u64);
            plan.state.next_frame_seq = header.frame + 1;
            if pos.offset == 0 {
                self.log_files.push_back(pos.file);
            }
            plan.entry = Some((pos, entry));
            plan.backlog.records += header.records();
            plan.backlog.raw_bytes += header.raw_bytes;
            plan.stored_bytes = header.stored_bytes;
            plan.raw_bytes = header.raw_bytes;
        } else {
            state_changed |= appended;
        }
        if state_changed {
            plan.batch
                .insert(STATE_KEY, layout::encode(&plan.state, "the WAL state")?);
        }
        // Files before the one holding the first unsealed frame hold only sealed frames: they
        // are deleted once this commit (which may be the one sealing them) is durable.
        while let Some(&oldest) = self.log_files.front()
            && oldest < plan.state.first_unsealed.log.file
        {
            plan.sealed_log_files.push(oldest);
            self.log_files.pop_front();
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
        // Nothing reads below the first unsealed position: the log files left behind it are
        // deleted after this commit (see `plan`).
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
            last_cursor: meta.last_cursor.clone(),
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
