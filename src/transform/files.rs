//! Files attached to an object (docs/opencti-protocol.md#attached-files): where the stock exporter
//! finds them, how their content is embedded, and which `uri`s we agree to download at all.
//!
//! Location, as pycti's `get_attribute_in_extension("files", data)`: the `files` member of the
//! OpenCTI extension if present, else of the SCO extension, else `data.files`. Every entry of that
//! list gets a `data` member with the base64 of the downloaded bytes; the stock exporter then also
//! sets `data.files` to the same entries (so the content appears twice), which we keep unless
//! [`super::TransformOptions::drop_top_level_files_copy`] is set. A download that failed or was
//! refused leaves its entry unchanged: never `"data": null` (the worker would fail on it).
//!
//! URI policy ([`storage_url`]): only paths under `/storage/get/` of the configured OpenCTI are
//! fetched. The stock exporter keeps the part of the uri from `storage/get` and pastes it after
//! its base URL; we do the same, but refuse anything that could leave that directory or that host:
//! `..` or `.` segments, empty segments (`//`), backslashes, control characters, a query or a
//! fragment, a prefix that is not empty, `/` or the same origin as the base URL.

use std::borrow::Cow;

use base64::Engine as _;
use reqwest::Url;
use serde_json::value::RawValue;

use super::json::{self, Pairs};

/// The id of the main OpenCTI STIX extension (docs/opencti-protocol.md#stix-objects).
pub const OCTI_EXTENSION: &str = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";
/// The id of the OpenCTI extension of cyber observables (docs/opencti-protocol.md#stix-objects).
pub const SCO_EXTENSION: &str = "extension-definition--f93e2c80-4231-4f9a-af8b-95c9bd566a82";

const STORAGE_GET: &str = "storage/get";

/// Where the list of files of an object was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilesLocation {
    /// `data.extensions[<OpenCTI extension>].files`.
    Extension(&'static str),
    /// `data.files`.
    TopLevel,
}

/// One entry of the files list, as far as downloading is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// The entry's `uri` when it is a string; `None` when the entry is not an object or has none
    /// (such an entry is left unchanged).
    pub uri: Option<String>,
}

/// The files list of `data` (members of the STIX object) when it is a non-empty array.
pub(crate) fn locate<'a>(data: &Pairs<'a>) -> Option<(FilesLocation, Vec<&'a RawValue>)> {
    let (location, list) = find_list(data)?;
    let entries = json::array_items(list)?;
    if entries.is_empty() {
        return None;
    }
    Some((location, entries))
}

fn find_list<'a>(data: &Pairs<'a>) -> Option<(FilesLocation, &'a RawValue)> {
    if let Some(extensions) = json::member(data, "extensions").and_then(json::object_members) {
        for extension_id in [OCTI_EXTENSION, SCO_EXTENSION] {
            let files = json::member(&extensions, extension_id)
                .and_then(json::object_members)
                .and_then(|extension| json::member(&extension, "files"));
            if let Some(files) = files {
                return Some((FilesLocation::Extension(extension_id), files));
            }
        }
    }
    json::member(data, "files").map(|files| (FilesLocation::TopLevel, files))
}

/// The download request for each entry, in list order.
pub(crate) fn file_refs(entries: &[&RawValue]) -> Vec<FileRef> {
    entries
        .iter()
        .map(|entry| FileRef {
            uri: json::object_members(entry)
                .and_then(|members| json::member(&members, "uri"))
                .and_then(json::string_value)
                .map(Cow::into_owned),
        })
        .collect()
}

/// Writes the files list with `data` set on every entry whose content is `Some`.
pub(crate) fn write_files_list(
    out: &mut Vec<u8>,
    entries: &[&RawValue],
    contents: &[Option<bytes::Bytes>],
) {
    out.push(b'[');
    for (index, entry) in entries.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        let content = contents.get(index).and_then(Option::as_ref);
        let members = content.and_then(|_| json::object_members(entry));
        match (content, members) {
            (Some(content), Some(members)) => write_entry_with_data(out, &members, content),
            _ => out.extend_from_slice(entry.get().as_bytes()),
        }
    }
    out.push(b']');
}

fn write_entry_with_data(out: &mut Vec<u8>, members: &Pairs<'_>, content: &[u8]) {
    let mut wrote_data = false;
    out.push(b'{');
    for (index, (key, value)) in members.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        json::write_key(out, key);
        out.push(b':');
        if key == "data" {
            write_base64(out, content);
            wrote_data = true;
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    if !wrote_data {
        if !members.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"data\":");
        write_base64(out, content);
    }
    out.push(b'}');
}

fn write_base64(out: &mut Vec<u8>, content: &[u8]) {
    out.push(b'"');
    let start = out.len();
    out.resize(
        start + base64::encoded_len(content.len(), true).unwrap_or(0),
        0,
    );
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(content, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// Writes the `data` object with the files list replaced by `files_list` where it was found, and
/// `data.files` set to the same list (in place, or appended) unless `drop_top_level_copy`.
pub(crate) fn write_data_with_files(
    out: &mut Vec<u8>,
    data: &Pairs<'_>,
    location: FilesLocation,
    files_list: &[u8],
    drop_top_level_copy: bool,
) {
    let set_top_level = location == FilesLocation::TopLevel || !drop_top_level_copy;
    let mut wrote_top_level = false;
    out.push(b'{');
    for (index, (key, value)) in data.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        json::write_key(out, key);
        out.push(b':');
        match (key.as_ref(), location) {
            ("extensions", FilesLocation::Extension(extension_id)) => {
                write_extensions(out, value, extension_id, files_list);
            }
            ("files", _) if set_top_level => {
                out.extend_from_slice(files_list);
                wrote_top_level = true;
            }
            _ => out.extend_from_slice(value.get().as_bytes()),
        }
    }
    if set_top_level && !wrote_top_level {
        if !data.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"files\":");
        out.extend_from_slice(files_list);
    }
    out.push(b'}');
}

/// Writes `extensions` with the `files` member of extension `extension_id` replaced by
/// `files_list`; everything else is copied as it came.
fn write_extensions(
    out: &mut Vec<u8>,
    extensions: &RawValue,
    extension_id: &str,
    files_list: &[u8],
) {
    write_replacing_member(out, extensions, extension_id, |out, extension| {
        write_replacing_member(out, extension, "files", |out, _| {
            out.extend_from_slice(files_list)
        });
    });
}

/// Writes `object` with its member `name` written by `replace` (given the member's old value),
/// every other member copied as it came. A value that is not an object is copied unchanged.
fn write_replacing_member(
    out: &mut Vec<u8>,
    object: &RawValue,
    name: &str,
    replace: impl Fn(&mut Vec<u8>, &RawValue),
) {
    let Some(members) = json::object_members(object) else {
        out.extend_from_slice(object.get().as_bytes());
        return;
    };
    out.push(b'{');
    for (index, (key, value)) in members.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        json::write_key(out, key);
        out.push(b':');
        if key == name {
            replace(out, value);
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    out.push(b'}');
}

/// Why a file `uri` was not downloaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedUri {
    /// The uri has no `storage/get` part (for example `unknown`, used with inline data).
    #[error("the uri does not point into /storage/get")]
    NotStorage,
    /// What comes before `storage/get` is neither empty, `/`, nor this OpenCTI's own base URL.
    #[error("the uri points to another host or path than the configured OpenCTI")]
    OtherOrigin,
    /// A `..` or `.` segment, an empty segment, a backslash, a control character, a query or a
    /// fragment, or invalid percent-encoding.
    #[error("the uri has a path that could leave /storage/get ({0})")]
    UnsafePath(&'static str),
}

/// The URL to download the file `uri` from: `{base}/storage/get/{path}`, with `path` percent-decoded,
/// checked segment by segment and encoded again. Never a URL outside `base`'s origin and its
/// `/storage/get/` directory.
pub fn storage_url(base: &Url, uri: &str) -> Result<Url, RefusedUri> {
    let at = uri.find(STORAGE_GET).ok_or(RefusedUri::NotStorage)?;
    let (prefix, rest) = uri.split_at(at);
    check_prefix(base, prefix)?;
    let path = rest[STORAGE_GET.len()..]
        .strip_prefix('/')
        .ok_or(RefusedUri::UnsafePath("no file after /storage/get/"))?;
    if path.contains(['?', '#']) {
        return Err(RefusedUri::UnsafePath("query or fragment"));
    }
    let decoded = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| RefusedUri::UnsafePath("percent-encoding that is not UTF-8"))?;
    if decoded.contains('\\') {
        return Err(RefusedUri::UnsafePath("backslash"));
    }
    if decoded.chars().any(char::is_control) {
        return Err(RefusedUri::UnsafePath("control character"));
    }
    let segments: Vec<&str> = decoded.split('/').collect();
    for segment in &segments {
        match *segment {
            "" => return Err(RefusedUri::UnsafePath("empty segment")),
            "." | ".." => return Err(RefusedUri::UnsafePath("dot segment")),
            _ => {}
        }
    }
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    {
        let mut path_segments = url
            .path_segments_mut()
            .map_err(|()| RefusedUri::OtherOrigin)?;
        path_segments.pop_if_empty().push("storage").push("get");
        for segment in &segments {
            path_segments.push(segment);
        }
    }
    // Belt and braces: the result must stay under this OpenCTI's /storage/get/.
    let directory = format!("{}/storage/get/", base.path().trim_end_matches('/'));
    if url.origin() != base.origin() || !url.path().starts_with(&directory) {
        return Err(RefusedUri::OtherOrigin);
    }
    Ok(url)
}

fn check_prefix(base: &Url, prefix: &str) -> Result<(), RefusedUri> {
    if prefix.is_empty() || prefix == "/" {
        return Ok(());
    }
    if !prefix.contains("://") {
        return Err(RefusedUri::OtherOrigin);
    }
    let absolute = Url::parse(prefix).map_err(|_| RefusedUri::OtherOrigin)?;
    let expected_path = format!("{}/", base.path().trim_end_matches('/'));
    if absolute.origin() != base.origin()
        || absolute.path() != expected_path
        || absolute.query().is_some()
        || absolute.fragment().is_some()
        || !absolute.username().is_empty()
        || absolute.password().is_some()
    {
        return Err(RefusedUri::OtherOrigin);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://opencti:8080").expect("valid base")
    }

    #[test]
    fn storage_paths_are_rebuilt_on_the_base_url() {
        let url = storage_url(
            &base(),
            "/storage/get/import/Report/5d4c/emotet-analysis.pdf",
        )
        .expect("allowed");
        assert_eq!(
            url.as_str(),
            "http://opencti:8080/storage/get/import/Report/5d4c/emotet-analysis.pdf"
        );
        let url = storage_url(&base(), "storage/get/import/a%20b/r%C3%A9sum%C3%A9 v2.pdf")
            .expect("allowed");
        assert_eq!(
            url.as_str(),
            "http://opencti:8080/storage/get/import/a%20b/r%C3%A9sum%C3%A9%20v2.pdf"
        );
        let with_path = Url::parse("https://cti.example/opencti/").expect("valid base");
        let url = storage_url(&with_path, "https://cti.example/opencti/storage/get/x/y")
            .expect("same origin");
        assert_eq!(url.as_str(), "https://cti.example/opencti/storage/get/x/y");
    }

    #[test]
    fn hostile_uris_are_refused() {
        let refused = [
            ("unknown", RefusedUri::NotStorage),
            (
                "/storage/get/../../etc/passwd",
                RefusedUri::UnsafePath("dot segment"),
            ),
            (
                "/storage/get/import/%2e%2e/secret",
                RefusedUri::UnsafePath("dot segment"),
            ),
            (
                "/storage/get/import//x",
                RefusedUri::UnsafePath("empty segment"),
            ),
            (
                "/storage/get/a%2F%2Fb",
                RefusedUri::UnsafePath("empty segment"),
            ),
            ("/storage/get/a\\..\\b", RefusedUri::UnsafePath("backslash")),
            ("/storage/get/a%5Cb", RefusedUri::UnsafePath("backslash")),
            (
                "/storage/get/a%0Ab",
                RefusedUri::UnsafePath("control character"),
            ),
            (
                "/storage/get/a?x=1",
                RefusedUri::UnsafePath("query or fragment"),
            ),
            (
                "/storage/get/a%FF",
                RefusedUri::UnsafePath("percent-encoding that is not UTF-8"),
            ),
            ("/storage/get/", RefusedUri::UnsafePath("empty segment")),
            (
                "/storage/getx",
                RefusedUri::UnsafePath("no file after /storage/get/"),
            ),
            ("http://evil.example/storage/get/a", RefusedUri::OtherOrigin),
            ("http://opencti:9999/storage/get/a", RefusedUri::OtherOrigin),
            (
                "https://opencti:8080/storage/get/a",
                RefusedUri::OtherOrigin,
            ),
            (
                "http://user@opencti:8080/storage/get/a",
                RefusedUri::OtherOrigin,
            ),
            ("//evil.example/storage/get/a", RefusedUri::OtherOrigin),
            ("/api/../storage/get/a", RefusedUri::OtherOrigin),
            ("file:///storage/get/a", RefusedUri::OtherOrigin),
        ];
        for (uri, expected) in refused {
            assert_eq!(storage_url(&base(), uri), Err(expected), "{uri}");
        }
    }

    #[test]
    fn base64_is_standard_padded() {
        let mut out = Vec::new();
        write_base64(&mut out, b"%PDF-1.7");
        assert_eq!(out, b"\"JVBERi0xLjc=\"");
    }
}
