//! Stream event ids (`<ms>-<seq>`, Redis stream style), the date forms OpenCTI accepts for `from`
//! and `recover` (docs/opencti-protocol.md#stream-parameters), ISO-8601 formatting of millisecond
//! timestamps, and the wall clock in epoch milliseconds. Shared by the stream client, the pipeline
//! and the read-back. (The simulator reads and writes the same forms with code of its own.)

use std::fmt;
use std::str::FromStr;

/// A Redis-like stream id `<ms>-<seq>`. Ordered by `ms`, then `seq`, as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    /// Milliseconds since the Unix epoch.
    pub ms: u64,
    /// Sequence number within the millisecond.
    pub seq: u64,
}

impl EventId {
    /// `0-0`: the position before every event ("from the beginning").
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    /// An id from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// Parses exactly `<digits>-<digits>`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        if ms.is_empty() || seq.is_empty() || !is_digits(ms) || !is_digits(seq) {
            return None;
        }
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("`{s}` is not a stream id of the form <ms>-<seq>"))
    }
}

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn is_digits(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit())
}

/// Parses a `from` / `recover` value as the server does
/// (docs/opencti-protocol.md#stream-parameters): `0` and `0-0` are the beginning, `<ms>-<seq>` is
/// an id, anything else is read as a date and becomes `<epoch ms>-0`. `None` means the value is
/// invalid (the server then treats it as absent).
pub fn parse_position(text: &str) -> Option<EventId> {
    let text = text.trim();
    if text == "0" || text == "0-0" {
        return Some(EventId::ZERO);
    }
    if let Some(id) = EventId::parse(text) {
        return Some(id);
    }
    parse_iso_ms(text).map(|ms| EventId::new(ms, 0))
}

/// Parses `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS[.fff…]]` with `Z`, `±HH:MM`, `±HHMM` or no
/// zone (UTC). A space may replace `T`, and also the `+` of an offset (a `+` that reached the
/// server unencoded in a query string arrives as a space, docs/opencti-protocol.md#pycti-request).
/// Returns epoch milliseconds.
pub fn parse_iso_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year: i64 = num(&b[0..4])?;
    let month: u32 = num(&b[5..7])?;
    let day: u32 = num(&b[8..10])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let mut ms_of_day: i64 = 0;
    let mut rest = &b[10..];
    if !rest.is_empty() {
        if rest[0] != b'T' && rest[0] != b't' && rest[0] != b' ' {
            return None;
        }
        rest = &rest[1..];
        if rest.len() < 5 || rest[2] != b':' {
            return None;
        }
        let hour: i64 = num(&rest[0..2])?;
        let minute: i64 = num(&rest[3..5])?;
        rest = &rest[5..];
        let mut second: i64 = 0;
        let mut millis: i64 = 0;
        if rest.first() == Some(&b':') {
            if rest.len() < 3 {
                return None;
            }
            second = num(&rest[1..3])?;
            rest = &rest[3..];
            if rest.first() == Some(&b'.') {
                let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
                if digits == 0 {
                    return None;
                }
                let frac = &rest[1..1 + digits.min(3)];
                let mut value: i64 = num(frac)?;
                for _ in frac.len()..3 {
                    value *= 10;
                }
                millis = value;
                rest = &rest[1 + digits..];
            }
        }
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        ms_of_day = ((hour * 60 + minute) * 60 + second) * 1000 + millis;
        match rest {
            [] | [b'Z'] | [b'z'] => {}
            [sign @ (b'+' | b'-' | b' '), zone @ ..] => {
                let (zh, zm) = match zone {
                    [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => {
                        (num::<i64>(&[*h1, *h2])?, num::<i64>(&[*m1, *m2])?)
                    }
                    [h1, h2] => (num::<i64>(&[*h1, *h2])?, 0),
                    _ => return None,
                };
                let offset = (zh * 60 + zm) * 60_000;
                ms_of_day -= if *sign == b'-' { -offset } else { offset };
            }
            _ => return None,
        }
    }
    let total = days_from_civil(year, month, day) * 86_400_000 + ms_of_day;
    u64::try_from(total).ok()
}

fn num<T: FromStr>(bytes: &[u8]) -> Option<T> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` (24 bytes, as JavaScript's `toISOString`) for `ms`.
pub fn write_iso(out: &mut Vec<u8>, ms: u64) {
    thread_local! {
        // Dates cluster on few days: remember the last day's `YYYY-MM-DD`.
        static LAST_DAY: std::cell::Cell<(u64, [u8; 10])> = const { std::cell::Cell::new((u64::MAX, [0; 10])) };
    }
    let days = ms / 86_400_000;
    let rem = ms % 86_400_000;
    let mut buf = [0u8; 24];
    let (cached_day, cached) = LAST_DAY.get();
    if cached_day == days {
        buf[..10].copy_from_slice(&cached);
    } else {
        let (year, month, day) = civil_from_days(days as i64);
        put_digits(&mut buf[0..4], year.clamp(0, 9999) as u64);
        buf[4] = b'-';
        put_digits(&mut buf[5..7], u64::from(month));
        buf[7] = b'-';
        put_digits(&mut buf[8..10], u64::from(day));
        let mut date = [0u8; 10];
        date.copy_from_slice(&buf[..10]);
        LAST_DAY.set((days, date));
    }
    buf[10] = b'T';
    put_digits(&mut buf[11..13], rem / 3_600_000);
    buf[13] = b':';
    put_digits(&mut buf[14..16], rem / 60_000 % 60);
    buf[16] = b':';
    put_digits(&mut buf[17..19], rem / 1000 % 60);
    buf[19] = b'.';
    put_digits(&mut buf[20..23], rem % 1000);
    buf[23] = b'Z';
    out.extend_from_slice(&buf);
}

/// `ms` as an ISO-8601 UTC string with milliseconds.
pub fn iso(ms: u64) -> String {
    let mut out = Vec::with_capacity(24);
    write_iso(&mut out, ms);
    String::from_utf8_lossy(&out).into_owned()
}

fn put_digits(slot: &mut [u8], mut value: u64) {
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_format_and_order() {
        let id = EventId::parse("1718012346001-3").unwrap();
        assert_eq!(id, EventId::new(1_718_012_346_001, 3));
        assert_eq!(id.to_string(), "1718012346001-3");
        assert!(EventId::new(5, 9) < EventId::new(6, 0));
        assert!(EventId::new(5, 1) < EventId::new(5, 2));
        for bad in ["", "-", "1-", "-1", "a-1", "1-2-3", "1", " 1-2"] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn positions_follow_the_server_rules() {
        assert_eq!(parse_position("0"), Some(EventId::ZERO));
        assert_eq!(parse_position("0-0"), Some(EventId::ZERO));
        assert_eq!(
            parse_position("1718012300000-0"),
            Some(EventId::new(1_718_012_300_000, 0))
        );
        assert_eq!(
            parse_position("2024-06-10T09:38:20.000Z"),
            Some(EventId::new(1_718_012_300_000, 0))
        );
        assert_eq!(
            parse_position("2024-06-10T09:38:20Z"),
            Some(EventId::new(1_718_012_300_000, 0))
        );
        assert_eq!(
            parse_position("2024-06-10T11:38:20+02:00"),
            Some(EventId::new(1_718_012_300_000, 0))
        );
        assert_eq!(
            parse_position("2024-06-10T11:38:20 02:00"),
            Some(EventId::new(1_718_012_300_000, 0))
        );
        assert_eq!(
            parse_position("2024-06-10"),
            Some(EventId::new(1_717_977_600_000, 0))
        );
        for bad in [
            "yesterday",
            "2024-13-01",
            "2024-02-30",
            "2024-06-10T25:00:00Z",
            "12",
        ] {
            assert_eq!(parse_position(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn iso_round_trips() {
        for ms in [
            0,
            1_718_012_300_000,
            1_718_012_346_001,
            951_782_400_000,
            4_102_444_799_999,
        ] {
            assert_eq!(parse_iso_ms(&iso(ms)), Some(ms), "{}", iso(ms));
        }
        assert_eq!(iso(1_718_012_300_000), "2024-06-10T09:38:20.000Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
