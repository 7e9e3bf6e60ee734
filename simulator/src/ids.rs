//! Stream ids and dates as the simulated platform reads and writes them: ids `<ms>-<seq>`
//! (docs/opencti-protocol.md#event-ids), the start and recovery positions of a request
//! (docs/opencti-protocol.md#stream-parameters), ISO-8601 dates with milliseconds, and the wall
//! clock. Written for the simulator alone: the exporter parses the same forms with code of its
//! own, so a mistake in one is caught by the other instead of being shared.

use std::fmt;

/// A stream id `<ms>-<seq>`. Ordered by `ms`, then `seq` (the derived order, as the platform's
/// stream orders them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    /// Milliseconds since the Unix epoch.
    pub ms: u64,
    /// Sequence number within the millisecond.
    pub seq: u64,
}

impl EventId {
    /// `0-0`: before every event.
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    /// The id `<ms>-<seq>`.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// Reads exactly `<digits>-<digits>` (each part non-empty and within `u64`); `None` for any
    /// other text.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self::new(decimal(ms)?, decimal(seq)?))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A non-empty run of ASCII digits that fits a `u64`.
fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The wall clock in milliseconds since the Unix epoch (0 before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A `from` / `recover` value read as the platform reads it
/// (docs/opencti-protocol.md#stream-parameters): `0` and `0-0` are the beginning, `<ms>-<seq>` is
/// that id, anything else is a date and becomes `<epoch ms>-0`. `None`: the value is invalid
/// (the request is then served as if it had none).
pub fn parse_position(text: &str) -> Option<EventId> {
    let text = text.trim();
    if text == "0" {
        return Some(EventId::ZERO);
    }
    EventId::parse(text).or_else(|| date_ms(text).map(|ms| EventId::new(ms, 0)))
}

/// Epoch milliseconds of `YYYY-MM-DD`, or of `YYYY-MM-DD` then `T`, `t` or a space, then
/// `HH:MM`, optionally `:SS` and a fraction (milliseconds are its first three digits), then no
/// zone (UTC), `Z`, or an offset `±HH:MM`, `±HHMM` or `±HH` whose `+` may have become a space on
/// its way through a query string (docs/opencti-protocol.md#pycti-request). `None` for anything
/// else, and for a date before the epoch.
fn date_ms(text: &str) -> Option<u64> {
    let mut at = Reader(text.as_bytes());
    let year = at.digits(4)?;
    at.byte(b"-")?;
    let month = at.digits(2)?;
    at.byte(b"-")?;
    let day = at.digits(2)?;
    if !(1..=12).contains(&month) || day == 0 || day > month_length(year, month) {
        return None;
    }
    let mut ms = days_before_year(year) - days_before_year(1970) + day_of_year(year, month, day);
    ms *= 86_400_000;
    if at.done() {
        return u64::try_from(ms).ok();
    }
    at.byte(b"Tt ")?;
    let hour = at.digits(2)?;
    at.byte(b":")?;
    let minute = at.digits(2)?;
    let (mut second, mut millis) = (0, 0);
    if at.byte(b":").is_some() {
        second = at.digits(2)?;
        if at.byte(b".").is_some() {
            millis = at.fraction_ms()?;
        }
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    ms += ((hour * 60 + minute) * 60 + second) * 1000 + millis;
    if !at.done() && at.byte(b"Zz").is_none() {
        let sign = at.byte(b"+- ")?;
        let zone_hours = at.digits(2)?;
        let zone_minutes = if at.done() {
            0
        } else {
            let _ = at.byte(b":");
            at.digits(2)?
        };
        let offset = (zone_hours * 60 + zone_minutes) * 60_000;
        ms += if sign == b'-' { offset } else { -offset };
    }
    if !at.done() {
        return None;
    }
    u64::try_from(ms).ok()
}

/// Reads a date left to right.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    /// Exactly `count` ASCII digits, as a number.
    fn digits(&mut self, count: usize) -> Option<i64> {
        let (head, rest) = self.0.split_at_checked(count)?;
        let mut value = 0;
        for &b in head {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(b - b'0');
        }
        self.0 = rest;
        Some(value)
    }

    /// One byte out of `allowed`, returned.
    fn byte(&mut self, allowed: &[u8]) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        if !allowed.contains(&first) {
            return None;
        }
        self.0 = rest;
        Some(first)
    }

    /// A run of at least one digit after a decimal point, as milliseconds (digits past the third
    /// are read and ignored).
    fn fraction_ms(&mut self) -> Option<i64> {
        let run = self.0.iter().take_while(|b| b.is_ascii_digit()).count();
        if run == 0 {
            return None;
        }
        let mut millis = 0;
        for place in 0..3 {
            let digit = self
                .0
                .get(place)
                .filter(|_| place < run)
                .map_or(0, |b| b - b'0');
            millis = millis * 10 + i64::from(digit);
        }
        self.0 = &self.0[run..];
        Some(millis)
    }

    /// Nothing is left.
    fn done(&self) -> bool {
        self.0.is_empty()
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn month_length(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days of the months before each month of a common year.
const DAYS_BEFORE_MONTH: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];

/// Days from January 1st of `year` to the date (0 for January 1st).
fn day_of_year(year: i64, month: i64, day: i64) -> i64 {
    let index = usize::try_from(month - 1).unwrap_or(0).min(11);
    DAYS_BEFORE_MONTH[index] + i64::from(month > 2 && is_leap(year)) + day - 1
}

/// Days from the proleptic Gregorian 0001-01-01 to January 1st of `year`.
fn days_before_year(year: i64) -> i64 {
    let past = year - 1;
    past * 365 + past.div_euclid(4) - past.div_euclid(100) + past.div_euclid(400)
}

/// Year, month and day of the day `days` after 1970-01-01.
fn civil(days: i64) -> (i64, i64, i64) {
    let epoch = days_before_year(1970);
    let mut year = 1970 + days.div_euclid(366);
    while days_before_year(year + 1) - epoch <= days {
        year += 1;
    }
    let mut left = days - (days_before_year(year) - epoch);
    let mut month = 1;
    while left >= month_length(year, month) {
        left -= month_length(year, month);
        month += 1;
    }
    (year, month, left + 1)
}

/// The last day [`write_iso`] writes as itself, 9999-12-31, in days after 1970-01-01.
const LAST_DAY_WRITTEN: i64 = 2_932_896;

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms` (24 bytes, the form OpenCTI writes dates in; a
/// date past 9999-12-31 is written on that day).
pub fn write_iso(out: &mut Vec<u8>, ms: u64) {
    thread_local! {
        // Generated dates cluster on a few days: the last day's `YYYY-MM-DD`, by day number.
        static LAST_DAY: std::cell::Cell<(u64, [u8; 10])> =
            const { std::cell::Cell::new((u64::MAX, [0; 10])) };
    }
    let day = ms / 86_400_000;
    let (cached, mut date) = LAST_DAY.get();
    if cached != day {
        let days = i64::try_from(day).map_or(LAST_DAY_WRITTEN, |d| d.min(LAST_DAY_WRITTEN));
        let (year, month, day_of_month) = civil(days);
        put(&mut date[0..4], year.unsigned_abs());
        date[4] = b'-';
        put(&mut date[5..7], month.unsigned_abs());
        date[7] = b'-';
        put(&mut date[8..10], day_of_month.unsigned_abs());
        LAST_DAY.set((day, date));
    }
    let of_day = ms % 86_400_000;
    let mut time = *b"THH:MM:SS.mmmZ";
    put(&mut time[1..3], of_day / 3_600_000);
    put(&mut time[4..6], of_day / 60_000 % 60);
    put(&mut time[7..9], of_day / 1000 % 60);
    put(&mut time[10..13], of_day % 1000);
    out.extend_from_slice(&date);
    out.extend_from_slice(&time);
}

/// `ms` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (see [`write_iso`]).
pub fn iso(ms: u64) -> String {
    let mut out = Vec::with_capacity(24);
    write_iso(&mut out, ms);
    out.into_iter().map(char::from).collect()
}

/// Writes `value` in decimal into `slot`, zero-padded on the left to its length.
fn put(slot: &mut [u8], mut value: u64) {
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_write_and_order() {
        assert_eq!(
            EventId::parse("1718012346001-3"),
            Some(EventId::new(1_718_012_346_001, 3))
        );
        assert_eq!(
            EventId::new(1_718_012_346_001, 3).to_string(),
            "1718012346001-3"
        );
        assert!(EventId::new(5, 9) < EventId::new(6, 0));
        assert!(EventId::new(5, 1) < EventId::new(5, 2));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "1",
            " 1-2",
            "1-+2",
            "99999999999999999999-0",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn positions_are_read_as_the_platform_reads_them() {
        let at = |ms| Some(EventId::new(ms, 0));
        assert_eq!(parse_position("0"), Some(EventId::ZERO));
        assert_eq!(parse_position(" 0-0 "), Some(EventId::ZERO));
        assert_eq!(
            parse_position("1718012300000-7"),
            Some(EventId::new(1_718_012_300_000, 7))
        );
        assert_eq!(parse_position("2024-06-10"), at(1_717_977_600_000));
        for same in [
            "2024-06-10T09:38:20.000Z",
            "2024-06-10T09:38:20Z",
            "2024-06-10t09:38:20z",
            "2024-06-10 09:38:20",
            "2024-06-10T09:38:20.0001234Z",
            "2024-06-10T11:38:20+02:00",
            "2024-06-10T11:38:20 02:00",
            "2024-06-10T11:38:20+0200",
            "2024-06-10T11:38:20+02",
            "2024-06-10T07:38:20-02:00",
            "2024-06-10T09:38",
        ] {
            let expected = if same.ends_with("09:38") {
                at(1_718_012_280_000)
            } else {
                at(1_718_012_300_000)
            };
            assert_eq!(parse_position(same), expected, "{same:?}");
        }
        assert_eq!(
            parse_position("2024-06-10T09:38:20.5Z"),
            at(1_718_012_300_500)
        );
        assert_eq!(parse_position("2024-02-29"), at(1_709_164_800_000));
        for bad in [
            "yesterday",
            "12",
            "2024-13-01",
            "2024-02-30",
            "2023-02-29",
            "2024-06-10T25:00:00Z",
            "2024-06-10T09:60",
            "2024-06-10T09:38:20.Z",
            "2024-06-10T09:38:20Zx",
            "2024-06-10T09:38:20+2",
            "2024-06-10X09:38",
            "1969-12-31",
        ] {
            assert_eq!(parse_position(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn dates_are_written_as_opencti_writes_them_and_read_back() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_718_012_300_000), "2024-06-10T09:38:20.000Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
        assert_eq!(iso(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(iso(u64::MAX), "9999-12-31T14:25:51.615Z");
        for ms in [
            0,
            86_399_999,
            951_782_400_000,
            1_709_164_800_000,
            1_718_012_346_001,
            4_102_444_799_999,
        ] {
            assert_eq!(date_ms(&iso(ms)), Some(ms), "{}", iso(ms));
        }
    }
}
