//! The exported line (docs/opencti-protocol.md#exported-line): an SSE data event turned into one
//! NDJSON line as the stock stream-exporter writes it, so that the stock stream-importer and worker
//! read it unchanged.
//!
//! The line is the SSE JSON payload, with, in Python dict insertion order:
//! - `id` set to the SSE id (in place if the payload had an `id`, else appended);
//! - `type` set to the SSE event name, **not** the payload's own `type`
//!   (docs/opencti-protocol.md#data-events: an update that makes an object visible arrives as event
//!   `create` with `type: "update"`), in place or appended after `id`;
//! - `previous_standard` set to the `value` of the single `reverse_patch` op whose `path` is `/id`,
//!   for an `update` only, and only when there is exactly one such op;
//! - the files of `data` with their content embedded as base64 (see [`files`],
//!   docs/opencti-protocol.md#attached-files).
//!
//! Every line is one JSON object, UTF-8, without a raw `\n` and without duplicate keys at any depth
//! (docs/architecture.md#exported-line-shape). Non-ASCII text stays UTF-8 (Python would escape
//! it; the importer and the worker decode both), separators are compact.
//!
//! Cost: the hot path never builds a `serde_json::Value` tree. The payload is checked as UTF-8,
//! scanned once for possible duplicate keys ([`json::needs_canonical_form`]), split into its
//! top-level `(key, raw value)` pairs by one validating serde_json pass, and written out with raw
//! values copied verbatim: about one copy of the payload. `origin`, `context` and `data` are only
//! looked into when a cheap substring test says they may hold what we look for. Payloads that may
//! have duplicate keys or raw newlines first go through [`json::canonicalize`] (a tree, slow, rare).
//!
//! An event that cannot be exported (not UTF-8, not JSON, not an object, no `data` object) is a
//! [`TransformError`]; the caller dead-letters it (invariant 7). So is one that nests deeper than
//! [`json::MAX_DEPTH`], or that needs the slow path and is larger than [`SLOW_PATH_MAX_BYTES`]:
//! memory and stack stay bounded whatever the payload.

mod action;
pub mod files;
pub mod json;

use bytes::Bytes;
use serde_json::value::RawValue;

pub use action::{Action, PerAction};
use files::{FileRef, FilesLocation};
use json::Pairs;

/// Options of the transform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransformOptions {
    /// Do not add the stock exporter's redundant `data.files` copy of the files list when the list
    /// lives in an extension (smaller lines, RabbitMQ `max_message_size`, connectors#6404). The
    /// worker reads the extension copy. Default false: byte-level parity with the stock exporter.
    pub drop_top_level_files_copy: bool,
}

/// Why an event cannot be exported. The message is meant for the dead-letter file and the logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The payload is not valid UTF-8.
    #[error("payload is not valid UTF-8 (invalid byte at offset {valid_up_to})")]
    NotUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// The payload is not a JSON object.
    #[error("payload is not a JSON object: {0}")]
    InvalidJson(String),
    /// The payload has no `data` member.
    #[error("payload has no `data` member")]
    MissingData,
    /// `data` is not a JSON object.
    #[error("payload `data` is not a JSON object")]
    DataNotAnObject,
    /// Arrays and objects nest deeper than [`json::MAX_DEPTH`].
    #[error("payload nests arrays and objects deeper than {max} levels", max = json::MAX_DEPTH)]
    TooDeep,
    /// The payload needs the slow path (duplicate keys or raw newlines) and is larger than
    /// [`SLOW_PATH_MAX_BYTES`].
    #[error(
        "payload of {bytes} bytes has duplicate keys or raw newlines, and is larger than the {max} bytes the exporter rewrites",
        max = SLOW_PATH_MAX_BYTES
    )]
    TooLargeToRewrite {
        /// The payload's size.
        bytes: usize,
    },
}

/// Largest payload taken through [`json::canonicalize`], which builds a tree of up to about 20
/// times the text's size; a larger payload that needs it is dead-lettered instead. Payloads from
/// OpenCTI have neither duplicate keys nor raw newlines, so this only meets hostile input.
pub const SLOW_PATH_MAX_BYTES: usize = 8 * 1024 * 1024;

/// A finished line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportLine {
    /// The NDJSON line, without its trailing `\n`.
    pub line: Bytes,
    /// False for a dependency event (`origin.referer == "init-dependencies"`,
    /// docs/opencti-protocol.md#dependency-and-recovery-events).
    pub holds_cursor: bool,
}

/// The result of [`transform`]: a line, or the list of files to download first.
#[derive(Debug)]
pub enum Transformed {
    /// No file to download: the line is ready.
    Ready(ExportLine),
    /// The event references files; download them, then call [`PendingFiles::complete`].
    NeedsFiles(PendingFiles),
}

/// An event waiting for the content of its files. Owns the payload (no borrow), so it can wait
/// across downloads.
#[derive(Debug)]
pub struct PendingFiles {
    id: String,
    action: Action,
    payload: Bytes,
    files: Vec<FileRef>,
    holds_cursor: bool,
    options: TransformOptions,
}

impl PendingFiles {
    /// The files to download, in list order: [`PendingFiles::complete`] takes their contents in
    /// the same order.
    pub fn files(&self) -> &[FileRef] {
        &self.files
    }

    /// False for a dependency event (`origin.referer == "init-dependencies"`,
    /// docs/opencti-protocol.md#dependency-and-recovery-events).
    pub fn holds_cursor(&self) -> bool {
        self.holds_cursor
    }

    /// The same event with its payload replaced by `f(payload)`, which must hold the same bytes
    /// (used to charge it to the stream client's bytes in flight).
    pub fn map_payload(mut self, f: impl FnOnce(Bytes) -> Bytes) -> Self {
        self.payload = f(self.payload);
        self
    }

    /// The (canonical) payload, for a dead letter if completing fails.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Builds the line with each `Some` content embedded as base64 in its file entry; `None` leaves
    /// the entry without `data` (failed, refused or oversized download). Missing trailing contents
    /// count as `None`. Cost: a second parse of the top level and of the path to the files list.
    pub fn complete(self, contents: &[Option<Bytes>]) -> Result<ExportLine, TransformError> {
        // The payload was validated (and canonicalized) when this was created.
        let text = std::str::from_utf8(&self.payload).map_err(|error| TransformError::NotUtf8 {
            valid_up_to: error.valid_up_to(),
        })?;
        match build(text, &self.id, self.action, Some(contents), self.options)? {
            Built::Line(line) => Ok(line),
            Built::NeedsFiles { .. } => {
                Err(TransformError::InvalidJson("files vanished".to_owned()))
            }
        }
    }
}

/// Turns the payload of the SSE data event `action` with SSE id `id` into its exported line.
/// Never panics, whatever `payload` holds.
pub fn transform(
    id: &str,
    action: Action,
    payload: &Bytes,
    options: TransformOptions,
) -> Result<Transformed, TransformError> {
    let text = std::str::from_utf8(payload).map_err(|error| TransformError::NotUtf8 {
        valid_up_to: error.valid_up_to(),
    })?;
    let canonical;
    let scan = json::scan(text.as_bytes());
    if scan == json::Scan::TooDeep {
        return Err(TransformError::TooDeep);
    }
    if scan == json::Scan::NeedsCanonicalForm && text.len() > SLOW_PATH_MAX_BYTES {
        return Err(TransformError::TooLargeToRewrite { bytes: text.len() });
    }
    let (text, payload) = if scan == json::Scan::NeedsCanonicalForm {
        let rewritten = json::canonicalize(text)
            .map_err(|error| TransformError::InvalidJson(error.to_string()))?;
        canonical = Bytes::from(rewritten);
        // serde_json writes valid UTF-8.
        let text = std::str::from_utf8(&canonical).map_err(|error| TransformError::NotUtf8 {
            valid_up_to: error.valid_up_to(),
        })?;
        (text, &canonical)
    } else {
        (text, payload)
    };
    match build(text, id, action, None, options)? {
        Built::Line(line) => Ok(Transformed::Ready(line)),
        Built::NeedsFiles {
            files,
            holds_cursor,
        } => Ok(Transformed::NeedsFiles(PendingFiles {
            id: id.to_owned(),
            action,
            // A copy: the payload is usually a slice of the network read buffer, which this
            // event would otherwise keep alive (and the HTTP client unable to reuse) for as long
            // as its files take to download.
            payload: Bytes::copy_from_slice(payload),
            files,
            holds_cursor,
            options,
        })),
    }
}

enum Built {
    Line(ExportLine),
    NeedsFiles {
        files: Vec<FileRef>,
        holds_cursor: bool,
    },
}

/// The transform proper, on text that is valid JSON or about to be found not to be, with no
/// duplicate key and no raw newline. `contents` is `None` on the first pass (stop and ask for the
/// files if there are any) and `Some` once they were downloaded.
fn build(
    text: &str,
    id: &str,
    action: Action,
    contents: Option<&[Option<Bytes>]>,
    options: TransformOptions,
) -> Result<Built, TransformError> {
    let pairs =
        json::parse_object(text).map_err(|error| TransformError::InvalidJson(error.to_string()))?;
    let data = json::member(&pairs, "data").ok_or(TransformError::MissingData)?;
    if !data.get().starts_with('{') {
        return Err(TransformError::DataNotAnObject);
    }
    let holds_cursor = !is_dependency(&pairs);
    let previous_standard = match action {
        Action::Update => previous_standard(&pairs, id),
        _ => None,
    };
    let data_members = may_reference_files(data)
        .then(|| json::object_members(data))
        .flatten();
    let located = data_members.as_ref().and_then(files::locate);
    let data_rewrite = match (located, contents) {
        (None, _) => None,
        (Some((_, entries)), None) => {
            return Ok(Built::NeedsFiles {
                files: files::file_refs(&entries),
                holds_cursor,
            });
        }
        (Some((location, entries)), Some(contents)) => Some((location, entries, contents)),
    };

    let mut out = Vec::with_capacity(text.len() + id.len() + 48);
    out.push(b'{');
    let mut wrote_id = false;
    let mut wrote_type = false;
    let mut wrote_previous = false;
    for (index, (key, value)) in pairs.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        json::write_key(&mut out, key);
        out.push(b':');
        match key.as_ref() {
            "id" => {
                json::write_str(&mut out, id);
                wrote_id = true;
            }
            "type" => {
                json::write_str(&mut out, action.as_str());
                wrote_type = true;
            }
            "previous_standard" if previous_standard.is_some() => {
                write_raw(&mut out, previous_standard);
                wrote_previous = true;
            }
            "data" => match (&data_rewrite, &data_members) {
                (Some((location, entries, contents)), Some(members)) => {
                    write_data(&mut out, members, *location, entries, contents, options);
                }
                _ => out.extend_from_slice(value.get().as_bytes()),
            },
            _ => out.extend_from_slice(value.get().as_bytes()),
        }
    }
    let append = |out: &mut Vec<u8>, key: &str| {
        if out.len() > 1 {
            out.push(b',');
        }
        json::write_str(out, key);
        out.push(b':');
    };
    if !wrote_id {
        append(&mut out, "id");
        json::write_str(&mut out, id);
    }
    if !wrote_type {
        append(&mut out, "type");
        json::write_str(&mut out, action.as_str());
    }
    if previous_standard.is_some() && !wrote_previous {
        append(&mut out, "previous_standard");
        write_raw(&mut out, previous_standard);
    }
    out.push(b'}');
    Ok(Built::Line(ExportLine {
        line: Bytes::from(out),
        holds_cursor,
    }))
}

fn write_raw(out: &mut Vec<u8>, value: Option<&RawValue>) {
    if let Some(value) = value {
        out.extend_from_slice(value.get().as_bytes());
    }
}

fn write_data(
    out: &mut Vec<u8>,
    members: &Pairs<'_>,
    location: FilesLocation,
    entries: &[&RawValue],
    contents: &[Option<Bytes>],
    options: TransformOptions,
) {
    let mut list = Vec::new();
    files::write_files_list(&mut list, entries, contents);
    files::write_data_with_files(
        out,
        members,
        location,
        &list,
        options.drop_top_level_files_copy,
    );
}

/// Only a text that contains `"files"` literally, or some escape sequence (a key could be spelled
/// with `\u` escapes), can have a `files` member at any depth. Everything else skips the parse.
fn may_reference_files(data: &RawValue) -> bool {
    let text = data.get().as_bytes();
    memchr::memmem::find(text, b"\"files\"").is_some() || memchr::memchr(b'\\', text).is_some()
}

/// `origin.referer == "init-dependencies"`
/// (docs/opencti-protocol.md#dependency-and-recovery-events), looked up only when the text could
/// say so.
fn is_dependency(pairs: &Pairs<'_>) -> bool {
    let Some(origin) = json::member(pairs, "origin") else {
        return false;
    };
    let text = origin.get().as_bytes();
    if memchr::memmem::find(text, b"init-dependencies").is_none()
        && memchr::memchr(b'\\', text).is_none()
    {
        return false;
    }
    json::object_members(origin)
        .and_then(|members| json::member(&members, "referer"))
        .and_then(json::string_value)
        .is_some_and(|referer| referer == "init-dependencies")
}

/// The stock exporter's `_reverse_patch`: the `value` of the single `context.reverse_patch` op
/// whose `path` is `/id`. None when there is none, several (logged), or the shapes are not the
/// expected ones (where Python would crash, we export without `previous_standard`).
fn previous_standard<'a>(pairs: &Pairs<'a>, id: &str) -> Option<&'a RawValue> {
    let context = json::member(pairs, "context")?;
    let text = context.get().as_bytes();
    if memchr::memmem::find(text, b"\"/id\"").is_none() && memchr::memchr(b'\\', text).is_none() {
        return None;
    }
    let context = json::object_members(context)?;
    let reverse_patch = json::array_items(json::member(&context, "reverse_patch")?)?;
    let mut id_ops = reverse_patch.into_iter().filter_map(|op| {
        let op = json::object_members(op)?;
        let path = json::member(&op, "path").and_then(json::string_value)?;
        (path == "/id").then(|| json::member(&op, "value"))
    });
    let first = id_ops.next()?;
    let others = id_ops.count();
    if others > 0 {
        tracing::warn!(
            event_id = id,
            operations = others + 1,
            "update has several reverse_patch operations on /id; exporting it without previous_standard"
        );
        return None;
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, action: Action, payload: &str) -> String {
        let payload = Bytes::copy_from_slice(payload.as_bytes());
        match transform(id, action, &payload, TransformOptions::default()) {
            Ok(Transformed::Ready(line)) => String::from_utf8(line.line.to_vec()).expect("utf-8"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn live_event_gets_id_and_type_appended_and_type_overridden_in_place() {
        let out = line(
            "5-0",
            Action::Create,
            r#"{"version":"4","type":"update","data":{"id":"x"},"event_id":"e"}"#,
        );
        assert_eq!(
            out,
            r#"{"version":"4","type":"create","data":{"id":"x"},"event_id":"e","id":"5-0"}"#
        );
    }

    #[test]
    fn dependency_event_appends_id_then_type_and_does_not_hold_the_cursor() {
        let payload = Bytes::from_static(
            br#"{"data":{"id":"identity--1"},"message":"m","origin":{"referer":"init-dependencies"},"version":"4"}"#,
        );
        let Ok(Transformed::Ready(out)) =
            transform("9-0", Action::Create, &payload, TransformOptions::default())
        else {
            panic!("not ready");
        };
        assert!(!out.holds_cursor);
        assert_eq!(
            out.line,
            br#"{"data":{"id":"identity--1"},"message":"m","origin":{"referer":"init-dependencies"},"version":"4","id":"9-0","type":"create"}"#.as_slice()
        );
    }

    #[test]
    fn previous_standard_only_for_update_with_one_id_op() {
        let payload = r#"{"type":"update","data":{},"context":{"reverse_patch":[{"op":"replace","path":"/name","value":"a"},{"op":"replace","path":"/id","value":"indicator--old"}]}}"#;
        assert!(
            line("1-0", Action::Update, payload)
                .ends_with(r#""id":"1-0","previous_standard":"indicator--old"}"#)
        );
        assert!(!line("1-0", Action::Merge, payload).contains("previous_standard"));
        let two = r#"{"data":{},"context":{"reverse_patch":[{"path":"/id","value":"a"},{"path":"/id","value":"b"}]}}"#;
        assert!(!line("1-0", Action::Update, two).contains("previous_standard"));
        let odd = r#"{"data":{},"context":{"reverse_patch":[1,"x",{"path":"/id"}]}}"#;
        assert!(!line("1-0", Action::Update, odd).contains("previous_standard"));
        let escaped =
            r#"{"data":{},"context":{"reverse_patch":[{"path":"\/id","value":{"v":1}}]}}"#;
        assert!(line("1-0", Action::Update, escaped).ends_with(r#""previous_standard":{"v":1}}"#));
    }

    #[test]
    fn existing_id_keeps_its_position() {
        let out = line(
            "3-0",
            Action::Delete,
            r#"{"id":"old","data":{"a":1},"z":true}"#,
        );
        assert_eq!(
            out,
            r#"{"id":"3-0","data":{"a":1},"z":true,"type":"delete"}"#
        );
    }

    #[test]
    fn duplicates_and_newlines_take_the_exact_slow_path() {
        let out = line(
            "2-0",
            Action::Create,
            "{\"a\":1,\"data\":{\"k\":1,\"k\":2},\n\"a\":3}",
        );
        assert_eq!(out, r#"{"a":3,"data":{"k":2},"id":"2-0","type":"create"}"#);
    }

    #[test]
    fn unexportable_payloads_are_errors_not_panics() {
        type Check = fn(&TransformError) -> bool;
        let cases: [(&[u8], Check); 5] = [
            (b"\xff\xfe", |e| matches!(e, TransformError::NotUtf8 { .. })),
            (b"{\"data\":", |e| {
                matches!(e, TransformError::InvalidJson(_))
            }),
            (b"\"2024-06-10T09:38:20.000Z\"", |e| {
                matches!(e, TransformError::InvalidJson(_))
            }),
            (b"{\"message\":\"m\"}", |e| {
                matches!(e, TransformError::MissingData)
            }),
            (b"{\"data\":null}", |e| {
                matches!(e, TransformError::DataNotAnObject)
            }),
        ];
        for (payload, expected) in cases {
            let error = transform(
                "1-0",
                Action::Create,
                &Bytes::copy_from_slice(payload),
                TransformOptions::default(),
            )
            .expect_err("must be rejected");
            assert!(expected(&error), "{error:?}");
        }
    }

    #[test]
    fn deep_or_huge_payloads_needing_a_rewrite_are_refused_without_building_a_tree() {
        let transform_text = |text: &str| {
            transform(
                "1-0",
                Action::Create,
                &Bytes::copy_from_slice(text.as_bytes()),
                TransformOptions::default(),
            )
        };
        let deep = format!("{{\"data\":{}", "[".repeat(4 << 20));
        assert_eq!(
            transform_text(&deep).expect_err("refused"),
            TransformError::TooDeep
        );
        let closed = format!(
            "{{\"data\":{{}},\"x\":{}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(
            transform_text(&closed).expect_err("refused"),
            TransformError::TooDeep
        );
        let big_duplicate = format!(
            "{{\"data\":{{}},\"a\":1,\"a\":\"{}\"}}",
            "x".repeat(SLOW_PATH_MAX_BYTES)
        );
        assert!(matches!(
            transform_text(&big_duplicate).expect_err("refused"),
            TransformError::TooLargeToRewrite { .. }
        ));
        let small_duplicate = r#"{"data":{},"a":1,"a":2}"#;
        assert!(transform_text(small_duplicate).is_ok());
    }

    #[test]
    fn files_in_the_extension_are_embedded_twice_or_once() {
        let payload = Bytes::from_static(
            br#"{"data":{"id":"report--1","extensions":{"extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba":{"files":[{"name":"a.pdf","uri":"/storage/get/import/a.pdf"},{"name":"b","uri":"unknown","data":"AAAA"}]}}}}"#,
        );
        let Ok(Transformed::NeedsFiles(pending)) =
            transform("4-0", Action::Update, &payload, TransformOptions::default())
        else {
            panic!("files not found");
        };
        assert_eq!(
            pending.files(),
            [
                FileRef {
                    uri: Some("/storage/get/import/a.pdf".to_owned())
                },
                FileRef {
                    uri: Some("unknown".to_owned())
                }
            ]
        );
        let out = pending
            .complete(&[Some(Bytes::from_static(b"%PDF")), None])
            .expect("line");
        let files = r#"[{"name":"a.pdf","uri":"/storage/get/import/a.pdf","data":"JVBERg=="},{"name":"b","uri":"unknown","data":"AAAA"}]"#;
        let expected = format!(
            r#"{{"data":{{"id":"report--1","extensions":{{"extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba":{{"files":{files}}}}},"files":{files}}},"id":"4-0","type":"update"}}"#
        );
        assert_eq!(out.line, expected.as_bytes());

        let options = TransformOptions {
            drop_top_level_files_copy: true,
        };
        let Ok(Transformed::NeedsFiles(pending)) =
            transform("4-0", Action::Update, &payload, options)
        else {
            panic!("files not found");
        };
        let out = pending.complete(&[None]).expect("line");
        let value: serde_json::Value = serde_json::from_slice(&out.line).expect("json");
        assert!(value["data"].get("files").is_none());
        assert!(
            value["data"]["extensions"][files::OCTI_EXTENSION]["files"][0]
                .get("data")
                .is_none()
        );
    }

    #[test]
    fn top_level_files_and_sco_extension_are_found_in_pycti_order() {
        let payload = Bytes::from_static(
            br#"{"data":{"files":[{"uri":"/storage/get/top"}],"extensions":{"extension-definition--f93e2c80-4231-4f9a-af8b-95c9bd566a82":{"files":[{"uri":"/storage/get/sco"}]}}}}"#,
        );
        let Ok(Transformed::NeedsFiles(pending)) =
            transform("4-0", Action::Create, &payload, TransformOptions::default())
        else {
            panic!("files not found");
        };
        assert_eq!(pending.files()[0].uri.as_deref(), Some("/storage/get/sco"));
        let out = pending
            .complete(&[Some(Bytes::from_static(b"x"))])
            .expect("line");
        let value: serde_json::Value = serde_json::from_slice(&out.line).expect("json");
        // data.files is reassigned in place with the SCO list, as Python does.
        let keys: Vec<_> = value["data"]
            .as_object()
            .expect("object")
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["files", "extensions"]);
        assert_eq!(value["data"]["files"][0]["uri"], "/storage/get/sco");
        assert_eq!(value["data"]["files"][0]["data"], "eA==");

        let payload = Bytes::from_static(br#"{"data":{"files":[{"uri":"/storage/get/top"}]}}"#);
        let Ok(Transformed::NeedsFiles(pending)) = transform(
            "4-0",
            Action::Create,
            &payload,
            TransformOptions {
                drop_top_level_files_copy: true,
            },
        ) else {
            panic!("files not found");
        };
        let out = pending
            .complete(&[Some(Bytes::from_static(b"x"))])
            .expect("line");
        assert_eq!(out.line, br#"{"data":{"files":[{"uri":"/storage/get/top","data":"eA=="}]},"id":"4-0","type":"create"}"#.as_slice());
    }

    #[test]
    fn empty_or_non_list_files_need_no_download() {
        for data in [
            r#"{"files":[]}"#,
            r#"{"files":null}"#,
            r#"{"files":"x"}"#,
            r#"{"description":"see \"files\""}"#,
        ] {
            let payload = format!(r#"{{"data":{data}}}"#);
            let out = line("1-0", Action::Create, &payload);
            assert!(out.starts_with(&payload[..payload.len() - 1]), "{out}");
        }
    }
}
