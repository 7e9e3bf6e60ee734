//! The SSE framer on any bytes, cut into chunks at places the input chooses: never panics, never
//! hands over an event above its bound, and frames the same whatever the cuts.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opencti_stream_exporter::stream::sse::{SseFrame, SseFramer};

const MAX_EVENT_BYTES: usize = 4096;

fn frames(input: &[u8], cuts: &[usize]) -> Vec<SseFrame> {
    let mut framer = SseFramer::new(MAX_EVENT_BYTES);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain([&input.len()]) {
        framer.push(Bytes::copy_from_slice(&input[start..cut]), &mut out);
        start = cut;
    }
    framer.finish();
    out
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the chunk size; the rest is the stream.
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(step.max(1));
    let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
    let chunked = frames(input, &cuts);
    for frame in &chunked {
        if let SseFrame::Event(event) = frame {
            assert!(event.data.len() <= MAX_EVENT_BYTES);
        }
    }
    assert_eq!(chunked, frames(input, &[]), "framing depends on where chunks were cut");
});
