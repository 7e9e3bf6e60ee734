//! Parsers from raw setting text to typed values. Each returns a message that says what was
//! expected, never echoing a secret (callers do not pass secrets through here).

use std::time::Duration;

/// Booleans the way pycti reads them (`yes`/`true`/`True`, `no`/`false`/`False`), plus the
/// usual `1`/`0`/`on`/`off`, case-insensitive.
pub fn boolean(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// A whole number within `min..=max`.
pub fn integer(text: &str, min: u64, max: u64) -> Result<u64, String> {
    let value: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("expected a whole number, got {:?}", text.trim()))?;
    if value < min || value > max {
        return Err(format!(
            "expected a number from {min} to {max}, got {value}"
        ));
    }
    Ok(value)
}

/// A whole number of seconds, at least 1.
pub fn seconds(text: &str) -> Result<Duration, String> {
    integer(text, 1, 365 * 24 * 3600).map(Duration::from_secs)
}

/// A TCP port (1–65535).
pub fn port(text: &str) -> Result<u16, String> {
    integer(text, 1, 65535).map(|p| p as u16).map_err(|_| {
        format!(
            "expected a port number from 1 to 65535, got {:?}",
            text.trim()
        )
    })
}

/// A size in bytes: a plain number, or a number with a unit (`KB`, `MB`, `GB`, `TB` in powers of
/// 1000, `KiB`, `MiB`, `GiB`, `TiB` in powers of 1024; `K`/`M`/`G`/`T` mean the binary units).
pub fn bytes(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let invalid = || format!("expected a size such as 1048576, 64MiB or 10GiB, got {trimmed:?}");
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return Err(invalid()),
    };
    number.checked_mul(multiplier).ok_or_else(invalid)
}

/// An `http://` or `https://` URL with a host; returned without its trailing `/`.
pub fn base_url(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let parsed = reqwest::Url::parse(trimmed).map_err(|err| {
        format!("expected a URL such as http://opencti:8080, got {trimmed:?} ({err})")
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "expected an http:// or https:// URL, got {trimmed:?}"
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not supported; use OPENCTI_TOKEN".to_string());
    }
    Ok(trimmed.trim_end_matches('/').to_string())
}

/// An RFC 3339 / ISO-8601 date as OpenCTI and pycti write them (`2024-06-10T09:38:20Z`,
/// with optional fraction and offset). Returned unchanged: OpenCTI parses it.
pub fn iso_date(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if parse_iso_millis(trimmed).is_some() {
        Ok(trimmed.to_string())
    } else {
        Err(format!(
            "expected an ISO-8601 date such as 2024-06-10T09:38:20Z, got {trimmed:?}"
        ))
    }
}

/// Milliseconds since the epoch of an ISO-8601 date (`YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]`, or a
/// plain `YYYY-MM-DD`), or `None` when it is not one.
pub fn parse_iso_millis(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(range)?;
        if s.bytes().all(|c| c.is_ascii_digit()) && !s.is_empty() {
            s.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut millis = days_from_civil(year, month, day) * 86_400_000;
    if b.len() == 10 {
        return Some(millis);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    millis += ((hour * 60 + minute) * 60 + second) * 1000;
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut ms = 0;
        for (i, c) in fraction.bytes().take(3).enumerate().take(digits) {
            ms += i64::from(c - b'0') * [100, 10, 1][i];
        }
        millis += ms;
        rest = &fraction[digits..];
    }
    match rest {
        "" | "Z" | "z" => Some(millis),
        offset if offset.len() == 6 && matches!(&offset[3..4], ":") => {
            let sign = match &offset[..1] {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let hours: i64 = offset[1..3].parse().ok()?;
            let minutes: i64 = offset[4..6].parse().ok()?;
            Some(millis - sign * (hours * 60 + minutes) * 60_000)
        }
        _ => None,
    }
}

/// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (second precision, as pycti's
/// `date_now_z()`).
pub fn format_iso_seconds(epoch_ms: i64) -> String {
    let secs = epoch_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_follow_pycti_and_common_spellings() {
        for t in ["true", "True", "yes", "1", "on"] {
            assert_eq!(boolean(t), Ok(true), "{t}");
        }
        for f in ["false", "False", "no", "0", "off"] {
            assert_eq!(boolean(f), Ok(false), "{f}");
        }
        assert!(boolean("maybe").is_err());
    }

    #[test]
    fn sizes_accept_units() {
        assert_eq!(bytes("1048576"), Ok(1 << 20));
        assert_eq!(bytes("64MiB"), Ok(64 << 20));
        assert_eq!(bytes("10 GiB"), Ok(10 << 30));
        assert_eq!(bytes("2GB"), Ok(2_000_000_000));
        assert!(bytes("ten").is_err());
        assert!(bytes("99999999999999TiB").is_err());
    }

    #[test]
    fn urls_lose_their_trailing_slash_and_refuse_other_schemes() {
        assert_eq!(
            base_url("http://opencti:8080/"),
            Ok("http://opencti:8080".into())
        );
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("opencti:8080").is_err());
        assert!(base_url("http://user:pw@opencti").is_err());
    }

    #[test]
    fn iso_dates_round_trip_to_epoch_millis() {
        assert_eq!(parse_iso_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_iso_millis("2024-06-10T09:38:20.000Z"),
            Some(1_718_012_300_000)
        );
        assert_eq!(
            parse_iso_millis("2024-06-10T11:38:20+02:00"),
            Some(1_718_012_300_000)
        );
        assert_eq!(parse_iso_millis("2024-02-30T00:00:00Z"), None);
        assert_eq!(parse_iso_millis("yesterday"), None);
        assert_eq!(
            format_iso_seconds(1_718_012_300_123),
            "2024-06-10T09:38:20Z"
        );
    }
}
