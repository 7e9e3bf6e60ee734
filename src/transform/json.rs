//! The few JSON tools the transform needs, none of which builds a `serde_json::Value` tree.
//!
//! - [`parse_object`] splits one JSON object into its ordered `(key, raw value)` pairs, borrowing
//!   from the input; parsing also validates the whole text (serde_json skips nested values with a
//!   validating scanner).
//! - [`needs_canonical_form`] is a cheap, conservative byte scan that tells whether the text might
//!   contain a duplicate key (anywhere) or a raw newline; only then does the caller take the slow
//!   path, [`canonicalize`], which rebuilds the text through serde_json's ordered map: Python
//!   semantics, last value wins at the first key's position.
//! - [`write_key`] and [`write_str`] append JSON text to an output buffer.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// An object's members in document order, values left as raw JSON text.
pub type Pairs<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

/// An object key or string value, borrowed from the input when it has no escape sequence.
struct MaybeBorrowed<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeBorrowed<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = MaybeBorrowed<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(value.to_owned())))
            }
            fn visit_string<E: de::Error>(self, value: String) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

struct ObjectPairs<'a>(Pairs<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for ObjectPairs<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = ObjectPairs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(12));
                while let Some(MaybeBorrowed(key)) = map.next_key::<MaybeBorrowed<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    pairs.push((key, value));
                }
                Ok(ObjectPairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

struct ArrayItems<'a>(Vec<&'a RawValue>);

impl<'de: 'a, 'a> Deserialize<'de> for ArrayItems<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor;
        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = ArrayItems<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(4));
                while let Some(item) = seq.next_element::<&'de RawValue>()? {
                    items.push(item);
                }
                Ok(ArrayItems(items))
            }
        }
        deserializer.deserialize_seq(ItemsVisitor)
    }
}

/// The members of the JSON object `json`, in document order. Fails when `json` is not valid JSON
/// or not an object. Cost: one validating pass over `json`, one small vector, no value copies.
pub fn parse_object(json: &str) -> Result<Pairs<'_>, serde_json::Error> {
    serde_json::from_str::<ObjectPairs<'_>>(json).map(|pairs| pairs.0)
}

/// The members of `raw` when it is an object, `None` for any other JSON value.
pub fn object_members(raw: &RawValue) -> Option<Pairs<'_>> {
    if !raw.get().starts_with('{') {
        return None;
    }
    parse_object(raw.get()).ok()
}

/// The items of `raw` when it is an array, `None` for any other JSON value.
pub fn array_items(raw: &RawValue) -> Option<Vec<&RawValue>> {
    if !raw.get().starts_with('[') {
        return None;
    }
    serde_json::from_str::<ArrayItems<'_>>(raw.get())
        .ok()
        .map(|items| items.0)
}

/// The decoded string when `raw` is a JSON string, `None` otherwise.
pub fn string_value(raw: &RawValue) -> Option<Cow<'_, str>> {
    if !raw.get().starts_with('"') {
        return None;
    }
    serde_json::from_str::<MaybeBorrowed<'_>>(raw.get())
        .ok()
        .map(|value| value.0)
}

/// The value of the first member named `name` (after canonicalization there is only one).
pub fn member<'a>(pairs: &[(Cow<'a, str>, &'a RawValue)], name: &str) -> Option<&'a RawValue> {
    pairs
        .iter()
        .find(|(key, _)| key.as_ref() == name)
        .map(|(_, value)| *value)
}

/// Appends `key` as a JSON string. A borrowed key had no escape sequence in valid JSON input, so
/// it is copied as is; an owned one (it had escapes) is escaped again.
#[allow(clippy::ptr_arg)] // Borrowed or Owned is the information this function needs.
pub fn write_key(out: &mut Vec<u8>, key: &Cow<'_, str>) {
    match key {
        Cow::Borrowed(key) => {
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(key) => write_str(out, key),
    }
}

/// Appends `value` as a JSON string, escaped (non-ASCII stays UTF-8).
pub fn write_str(out: &mut Vec<u8>, value: &str) {
    let plain = value
        .bytes()
        .all(|byte| byte >= 0x20 && byte != b'"' && byte != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, value).is_err() {
        // Writing a str into a Vec cannot fail; keep the output valid JSON regardless.
        out.extend_from_slice(b"\"\"");
    }
}

/// Objects with more keys than this are not checked key by key: the scan answers "maybe" and the
/// slow path (a hash map) deals with them, so a hostile object cannot make the check quadratic.
const MAX_KEYS_CHECKED_PER_OBJECT: usize = 128;

/// Deepest nesting of arrays and objects accepted: serde_json's own recursion limit, so anything
/// deeper could not be parsed by [`canonicalize`] either. The scan stops there, so its stack stays
/// small whatever the input (a payload of 64 MiB of `[` costs a few hundred bytes).
pub const MAX_DEPTH: usize = 128;

/// What [`scan`] found out about a JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No duplicate key, no raw newline: raw values may be copied verbatim.
    Plain,
    /// There may be a duplicate key or a raw newline: take [`canonicalize`].
    NeedsCanonicalForm,
    /// Arrays and objects nest deeper than [`MAX_DEPTH`]: neither path can take it.
    TooDeep,
}

/// True when the valid JSON text `json` may contain a duplicate key in any object, or contains a
/// raw line feed, or nests deeper than [`MAX_DEPTH`] (see [`scan`]).
pub fn needs_canonical_form(json: &[u8]) -> bool {
    scan(json) != Scan::Plain
}

/// Whether the valid JSON text `json` may contain a duplicate key in any object, or contains a
/// raw line feed (legal whitespace in JSON, forbidden inside an NDJSON line), or nests deeper than
/// [`MAX_DEPTH`]. Conservative: a key with an escape sequence or an object with very many keys
/// also answers [`Scan::NeedsCanonicalForm`]. [`Scan::Plain`] guarantees that copying raw values
/// verbatim produces no duplicate key and no newline.
///
/// Cost: one pass over the bytes; strings are skipped with `memchr2`, keys are compared with the
/// other keys of the same object (bounded, see [`MAX_KEYS_CHECKED_PER_OBJECT`]); the key stack
/// is the only allocation, bounded by [`MAX_DEPTH`].
pub fn scan(json: &[u8]) -> Scan {
    let newline = memchr::memchr(b'\n', json).is_some();
    let mut maybe = if newline {
        Scan::NeedsCanonicalForm
    } else {
        Scan::Plain
    };
    // Open containers: for an object, where its keys start in `keys`; `None` for an array.
    let mut containers: Vec<Option<usize>> = Vec::with_capacity(16);
    let mut keys: Vec<&[u8]> = Vec::with_capacity(64);
    let mut expect_key = false;
    let mut pos = 0;
    while pos < json.len() {
        match json[pos] {
            b'"' => {
                let start = pos + 1;
                let mut cursor = start;
                let mut escaped = false;
                let end = loop {
                    match memchr::memchr2(b'"', b'\\', &json[cursor..]) {
                        // Not valid JSON after all: let the slow path judge.
                        None => return Scan::NeedsCanonicalForm,
                        Some(offset) if json[cursor + offset] == b'\\' => {
                            escaped = true;
                            cursor += offset + 2;
                            if cursor > json.len() {
                                return Scan::NeedsCanonicalForm;
                            }
                        }
                        Some(offset) => break cursor + offset,
                    }
                };
                if expect_key && maybe == Scan::Plain {
                    if escaped {
                        maybe = Scan::NeedsCanonicalForm;
                    }
                    let Some(Some(first_key)) = containers.last() else {
                        return Scan::NeedsCanonicalForm;
                    };
                    let key = &json[start..end];
                    let siblings = &keys[*first_key..];
                    if siblings.len() >= MAX_KEYS_CHECKED_PER_OBJECT || siblings.contains(&key) {
                        maybe = Scan::NeedsCanonicalForm;
                    }
                    keys.push(key);
                    expect_key = false;
                }
                pos = end + 1;
                continue;
            }
            b'{' | b'[' if containers.len() >= MAX_DEPTH => return Scan::TooDeep,
            b'{' => {
                containers.push(Some(keys.len()));
                expect_key = true;
            }
            b'[' => {
                containers.push(None);
                expect_key = false;
            }
            b'}' | b']' => {
                if let Some(Some(first_key)) = containers.pop() {
                    keys.truncate(first_key);
                }
                expect_key = false;
            }
            b',' => expect_key = matches!(containers.last(), Some(Some(_))),
            _ => {}
        }
        pos += 1;
    }
    maybe
}

/// Rewrites the JSON object `json` through serde_json's insertion-ordered map: duplicate keys
/// collapse to one (last value wins, at the first key's position, as Python's `json.loads`), and
/// insignificant whitespace, including raw newlines, disappears. Slow path only: it builds a tree.
pub fn canonicalize(json: &str) -> Result<Vec<u8>, serde_json::Error> {
    let value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)?;
    serde_json::to_vec(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_keep_document_order_and_raw_values() {
        let pairs = parse_object(r#"{"b":1,"a":{"x":[1,2]}, "c" : "s"}"#).expect("valid");
        let keys: Vec<_> = pairs.iter().map(|(key, _)| key.as_ref()).collect();
        assert_eq!(keys, ["b", "a", "c"]);
        assert_eq!(pairs[1].1.get(), r#"{"x":[1,2]}"#);
        assert_eq!(pairs[2].1.get(), r#""s""#);
        assert!(matches!(pairs[0].0, Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_keys_are_decoded() {
        let pairs = parse_object(r#"{"\u0061b":1}"#).expect("valid");
        assert_eq!(pairs[0].0, "ab");
        let mut out = Vec::new();
        write_key(&mut out, &Cow::Owned("q\"".to_owned()));
        assert_eq!(out, br#""q\"""#);
    }

    #[test]
    fn invalid_or_non_object_input_is_an_error() {
        assert!(parse_object(r#"{"a":}"#).is_err());
        assert!(parse_object(r#"[1]"#).is_err());
        assert!(parse_object(r#""text""#).is_err());
        assert!(parse_object(r#"{"a":1} x"#).is_err());
    }

    #[test]
    fn duplicate_scan_finds_duplicates_at_any_depth() {
        assert!(!needs_canonical_form(
            br#"{"a":1,"b":{"a":2,"b":[{"a":3},{"a":4}]}}"#
        ));
        assert!(needs_canonical_form(br#"{"a":1,"a":2}"#));
        assert!(needs_canonical_form(br#"{"x":[{"k":1,"j":2,"k":3}]}"#));
        assert!(!needs_canonical_form(br#"{"x":{"k":1},"y":{"k":1}}"#));
        assert!(needs_canonical_form(br#"{"a\u0062":1}"#));
        assert!(!needs_canonical_form(br#"{"a":"\"a\":1,\"a\""}"#));
        assert!(needs_canonical_form(b"{\"a\":\n1}"));
    }

    #[test]
    fn nesting_deeper_than_the_cap_is_reported_whatever_else_the_text_holds() {
        let deep = |depth: usize| format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(scan(deep(MAX_DEPTH - 1).as_bytes()), Scan::Plain);
        assert_eq!(scan(deep(MAX_DEPTH).as_bytes()), Scan::TooDeep);
        let unclosed = vec![b'['; 1 << 20];
        assert_eq!(scan(&unclosed), Scan::TooDeep);
        let duplicate_then_deep = format!("{{\"k\":1,\"k\":{}}}", "[".repeat(500));
        assert_eq!(scan(duplicate_then_deep.as_bytes()), Scan::TooDeep);
        assert!(
            canonicalize(&deep(MAX_DEPTH)).is_err(),
            "serde_json refuses it too"
        );
    }

    #[test]
    fn objects_with_many_keys_are_left_to_the_slow_path() {
        let members: Vec<String> = (0..200).map(|i| format!("\"k{i}\":{i}")).collect();
        let json = format!("{{{}}}", members.join(","));
        assert!(needs_canonical_form(json.as_bytes()));
    }

    #[test]
    fn canonical_form_follows_python_semantics() {
        let out =
            canonicalize("{\"a\":1,\n\"b\":2,\"a\":3,\"c\":{\"d\":1,\"d\":2}}").expect("valid");
        assert_eq!(out, br#"{"a":3,"b":2,"c":{"d":2}}"#);
    }
}
