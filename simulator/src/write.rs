//! Fast, allocation-free JSON writing helpers for the corpus renderer. The output matches
//! JavaScript's `JSON.stringify` for the values we produce: no spaces, non-ASCII written as
//! UTF-8, `"` `\` and control characters escaped.

use crate::ids::write_iso;

/// Appends `text` as a JSON string (with quotes).
pub fn json_str(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    json_str_body(out, text);
    out.push(b'"');
}

/// Appends `text` JSON-escaped, without quotes.
pub fn json_str_body(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1F => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xF)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends the decimal digits of `value`.
pub fn num(out: &mut Vec<u8>, mut value: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends a UUID in its canonical 8-4-4-4-12 lower-case form (no quotes).
pub fn uuid(out: &mut Vec<u8>, value: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = value.to_be_bytes();
    let mut buf = [0u8; 36];
    let mut pos = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            buf[pos] = b'-';
            pos += 1;
        }
        buf[pos] = HEX[usize::from(byte >> 4)];
        buf[pos + 1] = HEX[usize::from(byte & 0xF)];
        pos += 2;
    }
    out.extend_from_slice(&buf);
}

/// Appends a quoted UUID.
pub fn uuid_str(out: &mut Vec<u8>, value: u128) {
    out.push(b'"');
    uuid(out, value);
    out.push(b'"');
}

/// Appends a quoted ISO-8601 date for `ms`.
pub fn iso_str(out: &mut Vec<u8>, ms: u64) {
    out.push(b'"');
    write_iso(out, ms);
    out.push(b'"');
}

/// Parses a canonical UUID (36 characters, lower or upper case hex).
pub fn parse_uuid(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b != b'-' {
                return None;
            }
            continue;
        }
        let digit = (b as char).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_like_json_stringify() {
        let mut out = Vec::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}é😀");
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "\"a\\\"b\\\\c\\nd\\u0001é😀\""
        );
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é😀");
    }

    #[test]
    fn numbers_and_uuids() {
        let mut out = Vec::new();
        num(&mut out, 0);
        out.push(b' ');
        num(&mut out, u64::MAX);
        assert_eq!(out, b"0 18446744073709551615");
        let mut out = Vec::new();
        let value = 0x826578e1_40ad_459f_bc73_ede076f81f37_u128;
        uuid(&mut out, value);
        assert_eq!(out, b"826578e1-40ad-459f-bc73-ede076f81f37");
        assert_eq!(
            parse_uuid("826578e1-40ad-459f-bc73-ede076f81f37"),
            Some(value)
        );
        assert_eq!(parse_uuid("826578e1-40ad-459f-bc73-ede076f81f3"), None);
    }
}
