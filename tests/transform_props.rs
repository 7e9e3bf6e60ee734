//! Property tests of the transform: it never panics on any bytes, and on any JSON object (with
//! duplicate keys at any depth and arbitrary whitespace) its line is exactly Python's
//! `json.loads` + the docs/opencti-protocol.md#exported-line changes: last value wins at the first
//! key's position, `id` and `type` set in place or appended, nothing else changed.

use bytes::Bytes;
use opencti_stream_exporter::transform::Action;
use opencti_stream_exporter::transform::{TransformOptions, Transformed, transform};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// A JSON value whose objects may repeat keys: rendered as text, and evaluated as Python would.
#[derive(Debug, Clone)]
enum Node {
    Leaf(Value),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Node {
    fn render(&self, space: &str, out: &mut String) {
        match self {
            Node::Leaf(value) => out.push_str(&value.to_string()),
            Node::Array(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                        out.push_str(space);
                    }
                    item.render(space, out);
                }
                out.push(']');
            }
            Node::Object(members) => {
                out.push('{');
                out.push_str(space);
                for (index, (key, value)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(key.clone()).to_string());
                    out.push_str(space);
                    out.push(':');
                    value.render(space, out);
                }
                out.push('}');
            }
        }
    }

    fn python(&self) -> Value {
        match self {
            Node::Leaf(value) => value.clone(),
            Node::Array(items) => Value::Array(items.iter().map(Node::python).collect()),
            Node::Object(members) => {
                let mut map = Map::new();
                for (key, value) in members {
                    map.insert(key.clone(), value.python());
                }
                Value::Object(map)
            }
        }
    }
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[ -~é€\u{1F600}\\\\\"\u{0}-\u{1f}]{0,12}".prop_map(Value::String),
    ]
    .prop_map(Node::Leaf);
    let key = prop_oneof![
        "[a-d]",
        "[a-z_]{1,8}",
        Just("files".to_owned()),
        Just("id".to_owned()),
        Just("ty\"pe".to_owned())
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Node::Array),
            proptest::collection::vec((key.clone(), inner), 0..6).prop_map(Node::Object),
        ]
    })
}

fn payload() -> impl Strategy<Value = (Node, Vec<(String, Node)>)> {
    let top_key = prop_oneof![
        Just("id".to_owned()),
        Just("type".to_owned()),
        Just("message".to_owned()),
        Just("origin".to_owned()),
        "[a-z]{1,6}"
    ];
    let data = proptest::collection::vec(("[a-z]{1,5}", node()), 0..5)
        .prop_map(|members| Node::Object(members.into_iter().collect()));
    (data, proptest::collection::vec((top_key, node()), 0..6))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = transform("1-0", Action::Update, &Bytes::from(bytes), TransformOptions::default());
    }

    #[test]
    fn the_line_is_python_semantics_plus_id_and_type((data, mut members) in payload(), data_at in any::<usize>(), newline in any::<bool>()) {
        let at = data_at % (members.len() + 1);
        members.insert(at, ("data".to_owned(), data));
        let document = Node::Object(members);
        let mut text = String::new();
        document.render(if newline { "\n " } else { "" }, &mut text);
        let mut expected = document.python();
        let object = expected.as_object_mut().expect("object");
        object.insert("id".to_owned(), Value::from("7-0"));
        object.insert("type".to_owned(), Value::from("delete"));
        let result = transform("7-0", Action::Delete, &Bytes::from(text.clone()), TransformOptions::default());
        let line = match result {
            Ok(Transformed::Ready(line)) => line.line,
            // `data` may have been replaced by a later non-object `data`: that is a dead letter.
            Err(_) if !expected["data"].is_object() => return Ok(()),
            Ok(Transformed::NeedsFiles(pending)) => pending.complete(&[]).expect("line").line,
            other => return Err(TestCaseError::fail(format!("{other:?} for {text}"))),
        };
        prop_assert!(!line.contains(&b'\n'));
        let output: Value = serde_json::from_slice(&line).expect("valid JSON");
        // Compare with key order: serde_json's map keeps insertion order (preserve_order).
        let output_keys: Vec<&String> = output.as_object().expect("object").keys().collect();
        let expected_keys: Vec<&String> = expected.as_object().expect("object").keys().collect();
        prop_assert_eq!(output_keys, expected_keys);
        // Files entries may gain `data.files`; compare everything else exactly.
        let mut output = output;
        let mut expected = expected;
        for value in [&mut output, &mut expected] {
            if let Some(data) = value.get_mut("data").and_then(Value::as_object_mut) {
                data.remove("files");
            }
        }
        prop_assert_eq!(output, expected, "for {}", text);
    }
}
