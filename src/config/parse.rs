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
    if crate::ids::parse_iso_ms(trimmed).is_some() {
        Ok(trimmed.to_string())
    } else {
        Err(format!(
            "expected an ISO-8601 date such as 2024-06-10T09:38:20Z, got {trimmed:?}"
        ))
    }
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
    fn iso_dates_are_checked() {
        assert!(iso_date("2024-06-10T11:38:20+02:00").is_ok());
        assert!(iso_date("2024-02-30T00:00:00Z").is_err());
        assert!(iso_date("yesterday").is_err());
    }
}
