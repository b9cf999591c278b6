//! Dates in webhook bodies and delivery records: RFC 3339 / ISO 8601 in UTC,
//! with 3, 6 or 9 sub-second digits when the value has them. The calendar is
//! the `time` crate's.

use prost_types::Timestamp;
use time::OffsetDateTime;

const NANOS_PER_SECOND: i32 = 1_000_000_000;

/// A point in time as ISO 8601 UTC, like [`iso8601`].
pub fn iso8601_at(t: std::time::SystemTime) -> String {
    let (seconds, nanos) = crate::model::time::to_unix(t);
    iso8601(&Timestamp { seconds, nanos })
}

/// A timestamp as ISO 8601 UTC: `2026-02-02T10:30:00Z`, with 3, 6 or 9
/// sub-second digits when it has them (`2026-02-04T14:32:15.123Z`).
///
/// Validated events have years 0001 to 9999. Anything outside the years
/// the crate represents (±9999) is clamped to its first or last instant
/// rather than failing: the shapers never panic.
pub fn iso8601(ts: &Timestamp) -> String {
    let mut out = Vec::with_capacity(30);
    write_iso8601(&mut out, ts);
    String::from_utf8(out).expect("ISO 8601 dates are ASCII")
}

/// [`iso8601`], as a JSON string (between quotes) at the end of `out`.
pub(super) fn write_iso8601_json(out: &mut Vec<u8>, ts: &Timestamp) {
    out.push(b'"');
    write_iso8601(out, ts);
    out.push(b'"');
}

/// [`iso8601`], written at the end of `out`. The calendar is the `time`
/// crate's; the digits are written here (its formatter, driven by a format
/// description, cost ten times as much per date).
fn write_iso8601(out: &mut Vec<u8>, ts: &Timestamp) {
    // Normalise out-of-range nanos (validation rejects them; be total anyway).
    // Saturating: `seconds` near i64::MAX would overflow (found by fuzzing).
    let seconds = ts
        .seconds
        .saturating_add(i64::from(ts.nanos.div_euclid(NANOS_PER_SECOND)));
    let nanos = ts.nanos.rem_euclid(NANOS_PER_SECOND);
    let at = OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(seconds) * i128::from(NANOS_PER_SECOND) + i128::from(nanos),
    )
    .unwrap_or(if seconds < 0 {
        time::PrimitiveDateTime::MIN.assume_utc()
    } else {
        time::PrimitiveDateTime::MAX.assume_utc()
    });
    let year = at.year();
    if year < 0 {
        // `time` writes a sign, then at least four digits.
        out.push(b'-');
    }
    // Within ±9999: this crate does not enable time's `large-dates`.
    digits(out, year.unsigned_abs(), 4);
    out.push(b'-');
    digits(out, u32::from(u8::from(at.month())), 2);
    out.push(b'-');
    digits(out, u32::from(at.day()), 2);
    out.push(b'T');
    digits(out, u32::from(at.hour()), 2);
    out.push(b':');
    digits(out, u32::from(at.minute()), 2);
    out.push(b':');
    digits(out, u32::from(at.second()), 2);
    match at.nanosecond() {
        0 => {}
        n if n % 1_000_000 == 0 => {
            out.push(b'.');
            digits(out, n / 1_000_000, 3);
        }
        n if n % 1_000 == 0 => {
            out.push(b'.');
            digits(out, n / 1_000, 6);
        }
        n => {
            out.push(b'.');
            digits(out, n, 9);
        }
    }
    out.push(b'Z');
}

/// `n` in exactly `width` decimal digits, zero-padded (`n` has no more).
fn digits(out: &mut Vec<u8>, mut n: u32, width: usize) {
    let at = out.len();
    out.resize(at + width, b'0');
    for d in out[at..].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use time::{format_description::BorrowedFormatItem, macros::format_description};

    use super::*;

    const WHOLE: &[BorrowedFormatItem<'_>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    const MILLIS: &[BorrowedFormatItem<'_>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    const MICROS: &[BorrowedFormatItem<'_>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    const NANOS: &[BorrowedFormatItem<'_>] =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

    /// What time's own formatter writes for an instant it represents.
    fn reference(seconds: i64, nanos: i32) -> String {
        let at = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(seconds) * i128::from(NANOS_PER_SECOND) + i128::from(nanos),
        )
        .expect("in range");
        let format = match at.nanosecond() {
            0 => WHOLE,
            n if n % 1_000_000 == 0 => MILLIS,
            n if n % 1_000 == 0 => MICROS,
            _ => NANOS,
        };
        at.format(format).expect("formats")
    }

    /// First and last second time represents: -9999-01-01, 9999-12-31.
    const FIRST: i64 = -377_705_116_800;
    const LAST: i64 = 253_402_300_799;

    proptest! {
        /// The digits written here are time's formatter's, at any instant
        /// it represents, with each length of fraction.
        #[test]
        fn writes_what_times_formatter_writes(
            seconds in prop_oneof![FIRST..=LAST, -62_135_596_800i64..4_102_444_800],
            nanos in prop_oneof![
                Just(0),
                (0..1_000i32).prop_map(|m| m * 1_000_000),
                (0..1_000_000i32).prop_map(|u| u * 1_000),
                0..1_000_000_000i32,
            ],
        ) {
            prop_assert_eq!(iso8601(&ts(seconds, nanos)), reference(seconds, nanos));
        }
    }

    #[test]
    fn the_ends_of_the_range_match_times_formatter() {
        for (s, n) in [
            (FIRST, 0),
            (FIRST, 1),
            (LAST, 999_999_999),
            (0, 0),
            (-1, 999_000_000),
        ] {
            assert_eq!(iso8601(&ts(s, n)), reference(s, n), "{s} {n}");
        }
    }

    fn ts(seconds: i64, nanos: i32) -> Timestamp {
        Timestamp { seconds, nanos }
    }

    /// The date of a count of days since 1970-01-01, as the formatter
    /// writes it (at the last second of the day, so that the whole day is
    /// on the date).
    fn date_of(days: i64) -> String {
        iso8601(&ts(days * 86_400 + 86_399, 0))[..10].to_owned()
    }

    #[test]
    fn civil_dates_of_known_days() {
        for (d, (y, m, day)) in [
            (0, (1970, 1, 1)),
            (-1, (1969, 12, 31)),
            (59, (1970, 3, 1)),
            (10_957, (2000, 1, 1)),
            (11_016, (2000, 2, 29)), // 2000 is a leap year (divisible by 400)
            (11_017, (2000, 3, 1)),
            (47_540, (2100, 2, 28)), // 2100 is not (divisible by 100)
            (47_541, (2100, 3, 1)),
            (19_416, (2023, 2, 28)),
            (19_417, (2023, 3, 1)),
            (19_782, (2024, 2, 29)),
            (-719_162, (1, 1, 1)),
            (2_932_896, (9999, 12, 31)),
        ] {
            let want = format!("{y:04}-{m:02}-{day:02}");
            assert_eq!(date_of(d), want, "day {d}");
            assert_eq!(iso8601(&ts(d * 86_400, 0)), format!("{want}T00:00:00Z"));
        }
    }

    /// Walks every day from 0001-01-01 to 9999-12-31 by the calendar's
    /// rules and checks the formatter's date on each month's first and last
    /// day (where the leap-year rules show) and on every day of 1999–2001.
    /// Formatting all 3.65 million days takes seconds in a debug build.
    #[test]
    fn every_month_from_0001_to_9999_starts_and_ends_on_the_right_day() {
        let (first, last) = (-719_162, 2_932_896);
        let mut prev = (0, 12, 31);
        let mut checked = 0;
        for d in first..=last {
            let next = if prev.2 < month_len(prev.0, prev.1) {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            let (y, m, day) = next;
            if day == 1 || day == month_len(y, m) || (1999..=2001).contains(&y) {
                assert_eq!(date_of(d), format!("{y:04}-{m:02}-{day:02}"), "day {d}");
                checked += 1;
            }
            prev = next;
        }
        assert_eq!(prev, (9999, 12, 31));
        assert!(checked > 2 * 12 * 9999, "{checked}");
    }

    fn month_len(y: i64, m: u32) -> u32 {
        let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        match m {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    #[test]
    fn iso8601_whole_seconds() {
        assert_eq!(iso8601(&ts(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(&ts(1_770_028_200, 0)), "2026-02-02T10:30:00Z");
        assert_eq!(iso8601(&ts(951_782_400, 0)), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(&ts(4_107_542_399, 0)), "2100-02-28T23:59:59Z");
        assert_eq!(iso8601(&ts(4_107_542_400, 0)), "2100-03-01T00:00:00Z");
        assert_eq!(iso8601(&ts(-1, 0)), "1969-12-31T23:59:59Z");
        // The range convert.rs accepts.
        assert_eq!(iso8601(&ts(-62_135_596_800, 0)), "0001-01-01T00:00:00Z");
        assert_eq!(
            iso8601(&ts(253_402_300_799, 999_999_999)),
            "9999-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn iso8601_sub_seconds_in_groups_of_three() {
        let t = 1_770_215_535; // 2026-02-04T14:32:15Z
        assert_eq!(iso8601(&ts(t, 0)), "2026-02-04T14:32:15Z");
        assert_eq!(iso8601(&ts(t, 123_000_000)), "2026-02-04T14:32:15.123Z");
        assert_eq!(iso8601(&ts(t, 100_000_000)), "2026-02-04T14:32:15.100Z");
        assert_eq!(iso8601(&ts(t, 1_000_000)), "2026-02-04T14:32:15.001Z");
        assert_eq!(iso8601(&ts(t, 123_456_000)), "2026-02-04T14:32:15.123456Z");
        assert_eq!(iso8601(&ts(t, 1_000)), "2026-02-04T14:32:15.000001Z");
        assert_eq!(
            iso8601(&ts(t, 123_456_789)),
            "2026-02-04T14:32:15.123456789Z"
        );
        assert_eq!(iso8601(&ts(t, 1)), "2026-02-04T14:32:15.000000001Z");
        // Before the epoch the fraction still counts forward from the second.
        assert_eq!(iso8601(&ts(-1, 500_000_000)), "1969-12-31T23:59:59.500Z");
    }

    #[test]
    fn out_of_range_is_clamped_not_a_panic() {
        assert_eq!(iso8601(&ts(i64::MAX, 0)), "9999-12-31T23:59:59.999999999Z");
        assert_eq!(
            iso8601(&ts(i64::MAX, i32::MAX)),
            "9999-12-31T23:59:59.999999999Z"
        );
        assert_eq!(iso8601(&ts(i64::MIN, 0)), "-9999-01-01T00:00:00Z");
        assert_eq!(iso8601(&ts(i64::MIN, i32::MIN)), "-9999-01-01T00:00:00Z");
        // Out-of-range nanos carry into the seconds.
        assert_eq!(iso8601(&ts(0, -1)), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(iso8601(&ts(0, 1_500_000_000)), "1970-01-01T00:00:01.500Z");
    }
}
