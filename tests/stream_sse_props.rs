//! Property tests of the SSE framer: it never panics, chunking never changes what it produces,
//! what a server writes (any line endings, comments, multi-line data) is read back exactly, and
//! no dispatched event exceeds the bound.

use bytes::Bytes;
use opencti_stream_exporter::stream::sse::{SseEvent, SseFrame, SseFramer};
use proptest::prelude::*;

fn frame_in_chunks(input: &[u8], cuts: &[usize], max: usize) -> Vec<SseFrame> {
    let mut framer = SseFramer::new(max);
    let mut out = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut start = 0;
    for cut in cuts.into_iter().chain([input.len()]) {
        framer.push(Bytes::copy_from_slice(&input[start..cut]), &mut out);
        start = cut;
    }
    framer.finish();
    out
}

/// Bytes that look like SSE often enough to exercise every branch.
fn sse_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data:".to_vec()),
        Just(b"id: 1-0".to_vec()),
        Just(b"event: create".to_vec()),
        Just(b"retry: 10".to_vec()),
        Just(b":comment".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(vec![0xEF, 0xBB, 0xBF]),
        Just(vec![0]),
        proptest::collection::vec(any::<u8>(), 0..8),
        "[a-z{}\":, ]{0,12}".prop_map(String::into_bytes),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

#[derive(Debug, Clone)]
struct Event {
    id: Option<String>,
    name: Option<String>,
    data: Vec<String>,
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    let event = (
        proptest::option::of("[0-9]{1,13}-[0-9]{1,3}"),
        proptest::option::of("[a-z_-]{1,16}"),
        proptest::collection::vec("[^\r\n]{0,40}", 1..4),
    )
        .prop_map(|(id, name, data)| Event { id, name, data });
    proptest::collection::vec(event, 0..12)
}

fn write(events: &[Event], endings: &[u8], comments: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ending_index = 0;
    let mut line = |out: &mut Vec<u8>, text: &str| {
        out.extend_from_slice(text.as_bytes());
        let mut ending: &[u8] = match endings.get(ending_index % endings.len().max(1)).copied().unwrap_or(0) % 3 {
            0 => b"\n",
            1 => b"\r",
            _ => b"\r\n",
        };
        // CR then an empty line ended by LF would be one CRLF: a server cannot mean that.
        if text.is_empty() && out.len() >= 1 && out[out.len() - 1] == b'\r' && ending == b"\n" {
            ending = b"\r\n";
        }
        ending_index += 1;
        out.extend_from_slice(ending);
    };
    for event in events {
        if comments {
            line(&mut out, ": keep-alive");
        }
        if let Some(id) = &event.id {
            line(&mut out, &format!("id: {id}"));
        }
        if let Some(name) = &event.name {
            line(&mut out, &format!("event: {name}"));
        }
        for data in &event.data {
            line(&mut out, &format!("data: {data}"));
        }
        line(&mut out, "");
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_and_chunking_does_not_matter(input in sse_like_bytes(), cuts in proptest::collection::vec(any::<usize>(), 0..8), max in 1usize..64) {
        let whole = frame_in_chunks(&input, &[], max);
        let chunked = frame_in_chunks(&input, &cuts, max);
        prop_assert_eq!(whole, chunked);
    }

    #[test]
    fn dispatched_data_never_exceeds_the_bound(input in sse_like_bytes(), max in 1usize..32) {
        for frame in frame_in_chunks(&input, &[3, 9, 17], max) {
            if let SseFrame::Event(event) = frame {
                prop_assert!(event.data.len() <= max);
            }
        }
    }

    #[test]
    fn what_the_server_writes_is_read_back(events in events(), endings in proptest::collection::vec(any::<u8>(), 1..8), comments in any::<bool>(), cuts in proptest::collection::vec(any::<usize>(), 0..10)) {
        let bytes = write(&events, &endings, comments);
        let frames = frame_in_chunks(&bytes, &cuts, 1 << 20);
        let expected: Vec<SseFrame> = events
            .iter()
            .map(|event| SseFrame::Event(SseEvent {
                id: event.id.as_ref().map(|id| Bytes::copy_from_slice(id.as_bytes())),
                event: event.name.as_ref().map(|name| Bytes::copy_from_slice(name.as_bytes())),
                data: Bytes::from(event.data.join("\n")),
            }))
            .collect();
        prop_assert_eq!(frames, expected);
    }
}
