//! Hostile input never crashes the daemon nor gets exported damaged
//! (docs/architecture.md#invariant-7), checked by property tests that run in every `cargo test`
//! (the `fuzz/` crate runs the same entry points under libFuzzer for longer; see the README,
//! "Fuzzing"):
//!
//! - the SSE framer, on any bytes cut into any chunks: never panics, never hands over an event
//!   larger than its bound, frames the same wherever the chunks were cut;
//! - the transform, on any payload: never panics, and a line it produces is one JSON object
//!   with `id` and `type` and no raw newline;
//! - the WAL's database decoders, on any bytes: never panic (a damaged database is an error);
//! - a sealed segment with bytes changed, cut or added: reading it fails, it never yields
//!   content other than what was sealed.
//!
//! Inputs a fuzzer found are kept below as named regression cases.

use bytes::Bytes;
use opencti_stream_exporter::stream::sse::{SseFrame, SseFramer};
use opencti_stream_exporter::transform::Action;
use opencti_stream_exporter::transform::{TransformOptions, Transformed, transform};
use proptest::prelude::*;

const MAX_EVENT_BYTES: usize = 4096;

/// Bytes that look like SSE some of the time: field names, separators, newlines of every kind.
fn sse_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"id: ".to_vec()),
        Just(b"event: create".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"data:{\"a\":1}".to_vec()),
        Just(b":heartbeat".to_vec()),
        Just(b"retry: 10".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(vec![0xff, 0xfe, 0x00]),
        Just(vec![b'x'; 5000]),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

fn frame_sizes(frames: &[SseFrame]) -> usize {
    frames
        .iter()
        .map(|frame| match frame {
            SseFrame::Event(event) => {
                assert!(
                    event.data.len() <= MAX_EVENT_BYTES,
                    "an event of {} bytes passed a bound of {MAX_EVENT_BYTES}",
                    event.data.len()
                );
                event.data.len()
            }
            SseFrame::Oversized(_) => 0,
        })
        .sum()
}

fn check_transform(payload: &[u8]) {
    let payload = Bytes::copy_from_slice(payload);
    for action in [
        Action::Create,
        Action::Update,
        Action::Delete,
        Action::Merge,
    ] {
        let Ok(Transformed::Ready(line)) = transform(
            "1718010000000-0",
            action,
            &payload,
            TransformOptions::default(),
        ) else {
            continue;
        };
        assert!(!line.line.contains(&b'\n'), "a line holds a raw newline");
        let value: serde_json::Value =
            serde_json::from_slice(&line.line).expect("an exported line is JSON");
        assert!(value.is_object(), "an exported line is a JSON object");
        assert!(value["id"].is_string() && value["type"].is_string());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_sse_framer_never_panics_and_keeps_its_bound(
        bytes in sse_like(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut framer = SseFramer::new(MAX_EVENT_BYTES);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut frames = Vec::new();
        let mut start = 0;
        for point in points.into_iter().chain([bytes.len()]) {
            framer.push(Bytes::copy_from_slice(&bytes[start..point]), &mut frames);
            start = point;
        }
        framer.finish();
        frame_sizes(&frames);
        let mut whole = SseFramer::new(MAX_EVENT_BYTES);
        let mut at_once = Vec::new();
        whole.push(Bytes::copy_from_slice(&bytes), &mut at_once);
        whole.finish();
        prop_assert_eq!(frames, at_once, "framing depends on where chunks were cut");
    }

    #[test]
    fn the_transform_never_panics_and_exports_only_json_objects(
        payload in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            "\\{\"data\":\\{\"id\":\"[a-z-]{0,12}\",\"x\":\"[\\\\\\n\\u{0}-\\u{10FFFF}]{0,8}\"\\}(,\"id\":1)?(,\"type\":null)?\\}"
                .prop_map(String::into_bytes),
        ],
    ) {
        check_transform(&payload);
    }

    #[test]
    fn wal_database_decoders_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        versioned in any::<bool>(),
    ) {
        let mut value = bytes;
        if versioned {
            // The format version byte, so the decoders get past it.
            value.insert(0, 1);
        }
        wal::fuzzing::decode_database_value(&value);
    }
}

/// Found by `cargo fuzz run wal_decode`: a state value whose cursor announces a string of about
/// 2^59 bytes. The decoder allocated it before reading, and the allocation failure aborted the
/// process: a damaged database must be reported as corrupt instead.
#[test]
fn a_database_value_announcing_a_huge_string_is_corrupt_not_an_abort() {
    let value = [
        0x01, 0x01, 0xfd, 0x01, 0x00, 0x00, 0x00, 0x03, 0x01, 0x00, 0x08,
    ];
    assert_eq!(wal::fuzzing::decode_database_value(&value), 0);
}

/// A sealed segment to damage: the WAL that holds it (kept open), its number and content.
fn sealed_segment() -> (tempfile::TempDir, wal::Wal, u64, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (wal, _) =
        wal::Wal::open(wal::WalOptions::new(dir.path().join("wal"), 1 << 30)).expect("a WAL");
    let records: Vec<Bytes> = (0..300)
        .map(|i| {
            Bytes::from(format!(
                "{{\"id\":\"{i}-0\",\"type\":\"create\",\"pad\":\"{}\"}}",
                "y".repeat(i % 97)
            ))
        })
        .collect();
    let mut content = Vec::new();
    for record in &records {
        content.extend_from_slice(record);
        content.push(b'\n');
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime
        .block_on(wal.appender().append(records, Some("299-0".into())))
        .expect("durable");
    let meta = wal
        .seal(u64::MAX, 1_718_010_000_000)
        .expect("seal")
        .expect("a segment");
    (dir, wal, meta.number, content)
}

/// What reading segment `number` back gives.
fn read_back(wal: &wal::Wal, number: u64) -> Result<Vec<u8>, String> {
    let mut reader = wal.open_segment(number).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { at: prop::sample::Index, mask: u8 },
    Cut { at: prop::sample::Index },
    Append { bytes: Vec<u8> },
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_damaged_segment_never_reads_back_as_anything_but_what_was_sealed(
        damages in proptest::collection::vec(prop_oneof![
            (any::<prop::sample::Index>(), 1u8..).prop_map(|(at, mask)| Damage::Flip { at, mask }),
            any::<prop::sample::Index>().prop_map(|at| Damage::Cut { at }),
            proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Damage::Append { bytes }),
        ], 1..4),
    ) {
        let (_dir, wal, number, content) = sealed_segment();
        prop_assert_eq!(read_back(&wal, number), Ok(content.clone()));
        let path = wal.segment_path(number);
        let mut stored = std::fs::read(&path).expect("the segment file");
        let original = stored.clone();
        for damage in &damages {
            match damage {
                Damage::Flip { at, mask } if !stored.is_empty() => {
                    let i = at.index(stored.len());
                    stored[i] ^= mask;
                }
                Damage::Flip { .. } => {}
                Damage::Cut { at } => {
                    let keep = at.index(stored.len() + 1);
                    stored.truncate(keep);
                }
                Damage::Append { bytes } => stored.extend_from_slice(bytes),
            }
        }
        std::fs::write(&path, &stored).expect("damaging the segment");
        let read = read_back(&wal, number);
        if stored == original {
            prop_assert_eq!(read, Ok(content));
        } else {
            prop_assert!(read.is_err(), "a damaged segment read back without an error");
        }
    }
}
