//! Model-based test: random sequences of operations (append bursts, heartbeats, state changes,
//! seals with a clock that may go back, uploads, wrong uploads, reopens) run against the real WAL
//! and against a tiny in-memory model; after every step both must agree on the state, the
//! backlog, the segments and their content.

mod support;

use std::collections::VecDeque;

use bytes::Bytes;
use proptest::prelude::*;
use support::{crc32c, ndjson, segment_records};
use wal::{RecoverUntil, SegmentMeta, UploadRecord, Wal, WalError, WalOptions};

#[derive(Debug, Clone)]
enum Op {
    /// Groups queued back to back, then awaited: (record lengths, sets a cursor).
    Append(Vec<(Vec<usize>, bool)>),
    /// A group without records that moves the cursor.
    Heartbeat,
    RecoverUntil(Option<bool>),
    /// Seal with this byte limit; the clock moves by this many ms (may go back).
    Seal {
        max: u64,
        clock_step: i64,
    },
    MarkOldestUploaded,
    MarkWrongUploaded,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let group = (prop::collection::vec(1usize..400, 0..6), any::<bool>());
    prop_oneof![
        6 => prop::collection::vec(group, 1..5).prop_map(Op::Append),
        1 => Just(Op::Heartbeat),
        1 => prop::option::of(any::<bool>()).prop_map(Op::RecoverUntil),
        4 => (1u64..3000, -50i64..50).prop_map(|(max, clock_step)| Op::Seal { max, clock_step }),
        2 => Just(Op::MarkOldestUploaded),
        1 => Just(Op::MarkWrongUploaded),
        1 => Just(Op::Reopen),
    ]
}

/// A sealed segment as the model expects it.
#[derive(Debug, Clone)]
struct ModelSegment {
    number: u64,
    ts_ms: u64,
    first_record: u64,
    first_cursor: Option<String>,
    last_cursor: Option<String>,
    records: Vec<Bytes>,
}

#[derive(Debug, Default)]
struct Model {
    cursor: Option<String>,
    recover_until: Option<RecoverUntil>,
    next_file_number: u64,
    last_ts: u64,
    last_upload: Option<UploadRecord>,
    next_seq: u64,
    next_cursor_id: u64,
    /// Unsealed records with the cursor in effect before their group.
    unsealed: VecDeque<(u64, Bytes, Option<String>)>,
    segments: VecDeque<ModelSegment>,
    /// Records in segments marked uploaded.
    uploaded_records: u64,
    clock: u64,
}

fn content(seq: u64, len: usize) -> Bytes {
    let mut s = format!("{{\"seq\":{seq},\"pad\":\"");
    while s.len() + 2 < len.max(s.len() + 2) {
        s.push(char::from(b'a' + (seq % 26) as u8));
    }
    s.push_str("\"}");
    Bytes::from(s)
}

struct Harness {
    dir: tempfile::TempDir,
    wal: Option<Wal>,
    model: Model,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(WalOptions::new(dir.path(), 1 << 40)).unwrap().0;
        Harness {
            dir,
            wal: Some(wal),
            model: Model {
                next_file_number: 1,
                clock: support::NOW_MS,
                ..Model::default()
            },
        }
    }

    fn wal(&self) -> &Wal {
        self.wal.as_ref().unwrap()
    }

    fn new_cursor(&mut self) -> String {
        self.model.next_cursor_id += 1;
        format!("{}-0", 1_718_000_000_000 + self.model.next_cursor_id)
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(groups) => {
                let appender = self.wal().appender();
                let mut pending = Vec::new();
                for (lens, sets_cursor) in groups {
                    let cursor = sets_cursor.then(|| self.new_cursor());
                    let before = self.model.cursor.clone();
                    let first_seq = self.model.next_seq;
                    let mut group = Vec::new();
                    for len in lens {
                        let record = content(self.model.next_seq, *len);
                        self.model.unsealed.push_back((
                            self.model.next_seq,
                            record.clone(),
                            before.clone(),
                        ));
                        self.model.next_seq += 1;
                        group.push(record);
                    }
                    if cursor.is_some() {
                        self.model.cursor = cursor.clone();
                    }
                    pending.push((
                        first_seq,
                        group.len() as u64,
                        appender.append(group, cursor),
                    ));
                }
                for (first_seq, records, p) in pending {
                    let committed = p.wait().unwrap();
                    assert_eq!(
                        (committed.first_seq, committed.records),
                        (first_seq, records)
                    );
                }
            }
            Op::Heartbeat => {
                let cursor = self.new_cursor();
                self.model.cursor = Some(cursor.clone());
                self.wal()
                    .appender()
                    .append(Vec::new(), Some(cursor))
                    .wait()
                    .unwrap();
            }
            Op::RecoverUntil(value) => {
                let value = match value {
                    None => RecoverUntil::Disabled,
                    Some(_) => {
                        RecoverUntil::Date(format!("2024-06-{:02}", self.model.next_seq % 28 + 1))
                    }
                };
                self.model.recover_until = Some(value.clone());
                self.wal()
                    .appender()
                    .set_recover_until(value)
                    .wait()
                    .unwrap();
            }
            Op::Seal { max, clock_step } => {
                self.model.clock = self.model.clock.saturating_add_signed(*clock_step);
                let now = self.model.clock;
                let sealed = self.wal().seal(*max, now).unwrap();
                let expected = self.model_seal(*max, now);
                match (sealed, expected) {
                    (None, None) => {}
                    (Some(meta), Some(model)) => {
                        self.check_meta(&meta, &model);
                        assert_eq!(meta.sealed_at_ms, now);
                        let records = segment_records(self.wal(), meta.number);
                        assert_eq!(records, model.records);
                        assert_eq!(meta.raw_checksum, crc32c(&ndjson(&records)));
                    }
                    (real, model) => panic!("seal: WAL gave {real:?}, model expects {model:?}"),
                }
            }
            Op::MarkOldestUploaded => {
                let at = self.model.clock;
                match self.model.segments.pop_front() {
                    Some(oldest) => {
                        self.wal().mark_uploaded(oldest.number, at).unwrap();
                        self.model.uploaded_records += oldest.records.len() as u64;
                        self.model.last_upload = Some(UploadRecord {
                            number: oldest.number,
                            ts_ms: oldest.ts_ms,
                            uploaded_at_ms: at,
                            last_cursor: oldest.last_cursor.clone(),
                        });
                        assert!(!self.wal().segment_path(oldest.number).exists());
                    }
                    None => assert!(matches!(
                        self.wal().mark_uploaded(self.model.next_file_number, at),
                        Err(WalError::NotOldest { oldest: None, .. })
                    )),
                }
            }
            Op::MarkWrongUploaded => {
                let wrong = self
                    .model
                    .segments
                    .front()
                    .map_or(self.model.next_file_number, |s| s.number + 1);
                let oldest = self.model.segments.front().map(|s| s.number);
                match self.wal().mark_uploaded(wrong, self.model.clock) {
                    Err(WalError::NotOldest {
                        requested,
                        oldest: o,
                    }) => {
                        assert_eq!((requested, o), (wrong, oldest));
                    }
                    other => panic!("marking {wrong} uploaded gave {other:?}"),
                }
            }
            Op::Reopen => {
                drop(self.wal.take());
                let (wal, report) = Wal::open(WalOptions::new(self.dir.path(), 1 << 40)).unwrap();
                assert!(report.orphans_deleted.is_empty() && report.damaged.is_empty());
                assert_eq!(report.segments, self.model.segments.len());
                self.wal = Some(wal);
                for segment in self.model.segments.clone() {
                    assert_eq!(segment_records(self.wal(), segment.number), segment.records);
                }
            }
        }
        self.check();
    }

    fn model_seal(&mut self, max: u64, now: u64) -> Option<ModelSegment> {
        let model = &mut self.model;
        let (first_record, _, first_cursor) = model.unsealed.front()?.clone();
        let mut records = Vec::new();
        let mut raw = 0;
        while let Some((_, record, _)) = model.unsealed.front() {
            let size = record.len() as u64 + 1;
            if raw + size <= max || records.is_empty() {
                raw += size;
                records.push(model.unsealed.pop_front().unwrap().1);
            } else {
                break;
            }
        }
        let last_cursor = match model.unsealed.front() {
            Some((_, _, before)) => before.clone(),
            None => model.cursor.clone(),
        };
        let ts_ms = now.max(model.last_ts + 1).max(1_000_000_000_000);
        model.last_ts = ts_ms;
        let segment = ModelSegment {
            number: model.next_file_number,
            ts_ms,
            first_record,
            first_cursor,
            last_cursor,
            records,
        };
        model.next_file_number += 1;
        model.segments.push_back(segment.clone());
        Some(segment)
    }

    fn check_meta(&self, meta: &SegmentMeta, model: &ModelSegment) {
        assert_eq!(meta.number, model.number);
        assert_eq!(meta.ts_ms, model.ts_ms);
        assert_eq!(meta.first_record, model.first_record);
        assert_eq!(meta.records, model.records.len() as u64);
        assert_eq!(meta.raw_bytes, ndjson(&model.records).len() as u64);
        assert_eq!(
            meta.first_cursor, model.first_cursor,
            "first cursor of {}",
            meta.number
        );
        assert_eq!(
            meta.last_cursor, model.last_cursor,
            "last cursor of {}",
            meta.number
        );
    }

    fn check(&self) {
        let wal = self.wal();
        let model = &self.model;
        let state = wal.state();
        assert_eq!(state.cursor, model.cursor);
        assert_eq!(
            state.recover_until,
            model.recover_until.clone().unwrap_or(RecoverUntil::Unset)
        );
        assert_eq!(state.next_file_number, model.next_file_number);
        assert_eq!(state.last_sealed_ts_ms, model.last_ts);
        assert_eq!(state.last_upload, model.last_upload);
        assert_eq!(state.next_record_seq, model.next_seq);
        let backlog = wal.backlog();
        assert_eq!(backlog.records, model.unsealed.len() as u64);
        assert_eq!(
            backlog.raw_bytes,
            model
                .unsealed
                .iter()
                .map(|(_, r, _)| r.len() as u64 + 1)
                .sum::<u64>()
        );
        let segments = wal.segments();
        assert_eq!(segments.len(), model.segments.len());
        for (meta, expected) in segments.iter().zip(&model.segments) {
            self.check_meta(meta, expected);
        }
        assert_eq!(
            wal.disk_usage().segment_bytes,
            segments.iter().map(|m| m.stored_bytes).sum::<u64>()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn the_wal_agrees_with_its_model(ops in prop::collection::vec(op(), 1..40)) {
        let mut harness = Harness::new();
        for op in &ops {
            harness.apply(op);
        }
        // Finally everything must come out, in order, exactly once.
        harness.apply(&Op::Seal { max: u64::MAX, clock_step: 1 });
        let mut expected_seq = harness.model.uploaded_records;
        for segment in harness.wal().segments() {
            prop_assert_eq!(segment.first_record, expected_seq);
            expected_seq += segment.records;
        }
        prop_assert_eq!(expected_seq, harness.model.next_seq);
    }
}
