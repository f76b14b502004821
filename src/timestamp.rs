//! Times as cairn keeps them: nanoseconds since 1970-01-01T00:00:00Z in an `i128`. That holds
//! every time a filesystem can — `stat` gives i64 seconds and a nanosecond part, so ext4's
//! 1901..2446 and anything else — where i64 nanoseconds end on 2262-04-11 and wrap. This
//! module owns every conversion of a time: from `stat`, to the `timespec` that sets one, to the
//! `SystemTime` of the FUSE view, and to text. The text is computed here (proleptic Gregorian
//! calendar, UTC) because the usual formatters stop at 1970 or at the year 9999.
//!
//! A tree from storage may carry any `i128`; conversions to what the system takes clamp the
//! seconds to i64, so a hostile time sets an extreme date, never a panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NANOS_PER_SECOND: i128 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// The time `seconds` and `nanos` (as `stat` and `timespec` give them) after the epoch.
pub fn from_parts(seconds: i64, nanos: i64) -> i128 {
    i128::from(seconds) * NANOS_PER_SECOND + i128::from(nanos)
}

/// Whole seconds (clamped to i64) and the nanoseconds after them (0..1e9) of `ns`.
pub fn to_parts(ns: i128) -> (i64, u32) {
    let seconds = ns.div_euclid(NANOS_PER_SECOND);
    let nanos = ns.rem_euclid(NANOS_PER_SECOND) as u32;
    match i64::try_from(seconds) {
        Ok(seconds) => (seconds, nanos),
        Err(_) if seconds < 0 => (i64::MIN, 0),
        Err(_) => (i64::MAX, 999_999_999),
    }
}

/// `ns` as the `timespec` that `futimens`/`utimensat` take.
pub fn to_timespec(ns: i128) -> libc::timespec {
    let (seconds, nanos) = to_parts(ns);
    libc::timespec {
        tv_sec: seconds,
        tv_nsec: i64::from(nanos),
    }
}

/// `ns` as a `SystemTime`; one the platform cannot represent becomes the epoch.
pub fn to_system_time(ns: i128) -> SystemTime {
    let (seconds, nanos) = to_parts(ns);
    let whole = if seconds >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(seconds.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(seconds.unsigned_abs()))
    };
    whole
        .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
        .unwrap_or(UNIX_EPOCH)
}

/// Nanoseconds since the epoch of `time`, before it as well as after.
pub fn from_system_time(time: SystemTime) -> i128 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

/// Nanoseconds since the epoch of an RFC 3339 time (as checkpoint records hold), if it is one.
pub fn parse_rfc3339(text: &str) -> Option<i128> {
    humantime::parse_rfc3339(text).ok().map(from_system_time)
}

/// RFC 3339 in UTC with nanoseconds, e.g. `1960-06-01T12:00:00.000000005Z`; years outside
/// 0000..9999 get a sign and as many digits as they need (ISO 8601's expanded years).
pub fn rfc3339_nanos(ns: i128) -> String {
    let (seconds, nanos) = to_parts(ns);
    let ((year, month, day), (hour, minute, second)) = civil(seconds);
    format!(
        "{}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{nanos:09}Z",
        year_text(year)
    )
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, for listings meant for people.
pub fn date_time(ns: i128) -> String {
    let ((year, month, day), (hour, minute, second)) = civil(to_parts(ns).0);
    format!(
        "{}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}",
        year_text(year)
    )
}

fn year_text(year: i64) -> String {
    if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+05}")
    }
}

/// The calendar date and the time of day of `seconds` after the epoch.
fn civil(seconds: i64) -> ((i64, u32, u32), (u32, u32, u32)) {
    let days = seconds.div_euclid(SECONDS_PER_DAY);
    let of_day = seconds.rem_euclid(SECONDS_PER_DAY) as u32;
    (
        date_from_days(days),
        (of_day / 3600, of_day / 60 % 60, of_day % 60),
    )
}

/// Year, month and day of the day `days` after 1970-01-01 in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, over 400-year eras of 146,097 days, which
/// start on March 1st so the leap day ends a year). Exact for every i64 count of seconds.
fn date_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = i128::from(days) + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i128::from(month <= 2);
    (year as i64, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_from_1901_to_2446_and_beyond_print_as_dates() {
        let cases = [
            (from_parts(0, 0), "1970-01-01T00:00:00.000000000Z"),
            (
                from_parts(-1, 999_999_999),
                "1969-12-31T23:59:59.999999999Z",
            ),
            (
                from_parts(-302_443_200, 5),
                "1960-06-01T12:00:00.000000005Z",
            ),
            (
                from_parts(-2_147_483_648, 0),
                "1901-12-13T20:45:52.000000000Z",
            ),
            (from_parts(951_782_400, 0), "2000-02-29T00:00:00.000000000Z"),
            (
                from_parts(10_413_792_000, 123_456_789),
                "2300-01-01T00:00:00.123456789Z",
            ),
            (
                from_parts(15_032_385_535, 0),
                "2446-05-10T22:38:55.000000000Z",
            ),
            (
                from_parts(253_402_300_800, 0),
                "+10000-01-01T00:00:00.000000000Z",
            ),
            (
                from_parts(-62_167_219_200, 0),
                "0000-01-01T00:00:00.000000000Z",
            ),
            (
                from_parts(-62_167_219_201, 0),
                "-0001-12-31T23:59:59.000000000Z",
            ),
        ];
        for (ns, text) in cases {
            assert_eq!(rfc3339_nanos(ns), text);
        }
        assert_eq!(
            date_time(from_parts(-302_443_200, 5)),
            "1960-06-01 12:00:00"
        );
    }

    #[test]
    fn every_i64_second_prints_and_larger_times_clamp() {
        for seconds in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX] {
            assert_eq!(to_parts(from_parts(seconds, 7)).0, seconds);
            rfc3339_nanos(from_parts(seconds, 0));
        }
        assert_eq!(to_parts(i128::MAX), (i64::MAX, 999_999_999));
        assert_eq!(to_parts(i128::MIN), (i64::MIN, 0));
        rfc3339_nanos(i128::MIN);
        rfc3339_nanos(i128::MAX);
    }

    #[test]
    fn system_times_round_trip_before_and_after_the_epoch() {
        for ns in [
            from_parts(-302_443_200, 5),
            from_parts(-1, 999_999_999),
            0,
            from_parts(10_413_792_000, 123_456_789),
        ] {
            assert_eq!(from_system_time(to_system_time(ns)), ns);
        }
    }
}
