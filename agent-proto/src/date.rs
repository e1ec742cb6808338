//! The one way dates are shown, shared by the daemon (messages, logs,
//! audit fields) and the CLI (text and JSON output): RFC 3339 UTC,
//! `2026-12-30T10:00:00Z`.

/// Unix seconds as an RFC 3339 UTC timestamp, e.g. `2025-06-01T12:00:00Z`.
/// A time after the year 9999, which only a corrupt value can hold, is
/// printed as the count it is, e.g. `253402300800 s after
/// 1970-01-01T00:00:00Z`.
pub fn rfc3339(unix_secs: u64) -> String {
    // Unix time has no leap seconds: the UTC calendar time is the epoch's
    // plus the seconds. (jiff's Timestamp stops a day short of year 10000.)
    const EPOCH: jiff::civil::DateTime = jiff::civil::DateTime::constant(1970, 1, 1, 0, 0, 0, 0);
    i64::try_from(unix_secs)
        .ok()
        .and_then(|secs| {
            EPOCH
                .checked_add(jiff::SignedDuration::from_secs(secs))
                .ok()
        })
        .and_then(|time| jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%SZ", time).ok())
        .unwrap_or_else(|| format!("{unix_secs} s after 1970-01-01T00:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_map_to_calendar_dates() {
        let midnight = |days: u64| rfc3339(days * 86_400);
        assert_eq!(midnight(59), "1970-03-01T00:00:00Z");
        assert_eq!(midnight(10_957), "2000-01-01T00:00:00Z");
        assert_eq!(midnight(11_016), "2000-02-29T00:00:00Z"); // leap day of a /400 year
        assert_eq!(midnight(47_540), "2100-02-28T00:00:00Z"); // 2100 is not a leap year
        assert_eq!(midnight(47_541), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn unix_seconds_format_as_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_234_567_890), "2009-02-13T23:31:30Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(2_147_483_647), "2038-01-19T03:14:07Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        // Absurd values do not panic, and say what they are.
        assert_eq!(
            rfc3339(253_402_300_800),
            "253402300800 s after 1970-01-01T00:00:00Z"
        );
        assert!(rfc3339(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn every_day_of_400_years_round_trips() {
        // days_from_civil, written independently, must invert the date
        // printed for every day of 400 years from 1970.
        fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
            let y = if m <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y.rem_euclid(400);
            let m = i64::from(m);
            let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            era * 146_097 + doe - 719_468
        }
        let mut previous = (1969, 12, 31);
        for days in 0..146_097_u64 {
            // A different second of each day.
            let secs_of_day = days * 7_919 % 86_400;
            let text = rfc3339(days * 86_400 + secs_of_day);
            let (date, time) = text.split_once('T').expect("date and time");
            let (h, m, s) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
            assert_eq!(time, format!("{h:02}:{m:02}:{s:02}Z"), "{text}");
            let mut fields = date.split('-').map(|f| f.parse::<i64>().expect(date));
            let (y, m, d) = (
                fields.next().expect(date),
                u32::try_from(fields.next().expect(date)).expect(date),
                u32::try_from(fields.next().expect(date)).expect(date),
            );
            assert_eq!(days_from_civil(y, m, d), days as i64, "{text}");
            assert!((1..=12).contains(&m) && (1..=31).contains(&d), "{text}");
            assert!((y, m, d) > previous, "{text}");
            previous = (y, m, d);
        }
    }
}
