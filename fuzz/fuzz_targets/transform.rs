//! The transform on any payload: never panics; a line it produces is one JSON object with `id`
//! and `type` and no raw newline.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opencti_stream_exporter::transform::Action;
use opencti_stream_exporter::transform::{TransformOptions, Transformed, transform};

fuzz_target!(|data: &[u8]| {
    let payload = Bytes::copy_from_slice(data);
    for action in [Action::Create, Action::Update, Action::Delete, Action::Merge] {
        if let Ok(Transformed::Ready(line)) = transform(
            "1718010000000-0",
            action,
            &payload,
            TransformOptions::default(),
        ) {
            assert!(!line.line.contains(&b'\n'));
            let value: serde_json::Value =
                serde_json::from_slice(&line.line).expect("an exported line is JSON");
            assert!(value["id"].is_string() && value["type"].is_string());
        }
    }
});
