//! Calendar months in UTC: the unit the cooperative invoices by. Usage
//! belongs to the month in which it happened, so the accounting splits
//! time at month boundaries and ops sums by month.
//!
//! Plain integer arithmetic on the proleptic Gregorian calendar (the
//! days-from-civil algorithm), total for every `i64` second: no panics and
//! no "out of range" for a timestamp a hostile report might carry.

use std::fmt;

/// A calendar month, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i64,
    /// 1 to 12.
    pub month: u8,
}

const DAY: i64 = 86_400;

/// Days from 1970-01-01 to the first of `month` in `year`.
fn days_from_civil(year: i64, month: u8) -> i64 {
    let m = i64::from(month);
    let (y, m) = if m <= 2 { (year - 1, m + 9) } else { (year, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Year and month of the day `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u8)
}

impl Month {
    /// The month that contains unix second `t`.
    pub fn of(t: i64) -> Month {
        let (year, month) = civil_from_days(t.div_euclid(DAY));
        Month { year, month }
    }

    /// Unix second of its first instant (saturating far outside any
    /// plausible date).
    pub fn start(self) -> i64 {
        days_from_civil(self.year, self.month).saturating_mul(DAY)
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year.saturating_add(1),
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Unix second of the first instant of the next month.
    pub fn end(self) -> i64 {
        self.next().start()
    }

    /// `YYYY-MM`, as `appliance-ops usage --month` takes it.
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('-')?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (year, month): (i64, u8) = (y.parse().ok()?, m.parse().ok()?);
        (1..=12).contains(&month).then_some(Month { year, month })
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The first instant of the month after the one that contains `t`: where
/// a period that holds `t` must end at the latest.
pub fn month_end(t: i64) -> i64 {
    Month::of(t).end()
}

/// Whether `[from, to)` lies within one month (a zero-length period at
/// `from` always does).
pub fn within_one_month(from: i64, to: i64) -> bool {
    from <= to && to <= month_end(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        // RFC 3339, e.g. "2026-11-01T00:00:00Z".
        humantime::parse_rfc3339(s)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn months_and_their_edges() {
        // (instant, its month, that month's start, the next month's start)
        let cases = [
            (
                "1970-01-01T00:00:00Z",
                "1970-01",
                "1970-01-01T00:00:00Z",
                "1970-02-01T00:00:00Z",
            ),
            (
                "2026-10-31T23:59:59Z",
                "2026-10",
                "2026-10-01T00:00:00Z",
                "2026-11-01T00:00:00Z",
            ),
            (
                "2026-11-01T00:00:00Z",
                "2026-11",
                "2026-11-01T00:00:00Z",
                "2026-12-01T00:00:00Z",
            ),
            (
                "2025-12-31T23:59:59Z",
                "2025-12",
                "2025-12-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
            ),
            (
                "2026-01-01T00:00:00Z",
                "2026-01",
                "2026-01-01T00:00:00Z",
                "2026-02-01T00:00:00Z",
            ),
            (
                "2028-02-29T12:00:00Z",
                "2028-02",
                "2028-02-01T00:00:00Z",
                "2028-03-01T00:00:00Z",
            ),
            (
                "2100-02-28T23:59:59Z",
                "2100-02",
                "2100-02-01T00:00:00Z",
                "2100-03-01T00:00:00Z",
            ),
            (
                "2000-02-29T00:00:00Z",
                "2000-02",
                "2000-02-01T00:00:00Z",
                "2000-03-01T00:00:00Z",
            ),
        ];
        for (at, month, start, end) in cases {
            let m = Month::of(ts(at));
            assert_eq!(m.to_string(), month, "{at}");
            assert_eq!(m.start(), ts(start), "{at}");
            assert_eq!(m.end(), ts(end), "{at}");
            assert_eq!(month_end(ts(at)), ts(end), "{at}");
            assert_eq!(Month::parse(month), Some(m));
        }
        assert_eq!(Month::of(-1).to_string(), "1969-12");
    }

    #[test]
    fn agrees_with_the_time_crate_over_centuries() {
        // Every day's first and last second from 1900 to 2300.
        let mut t: i64 = -2_208_988_800; // 1900-01-01
        while t < 10_413_792_000 {
            for s in [t, t + DAY - 1] {
                let d = time::OffsetDateTime::from_unix_timestamp(s).unwrap();
                let m = Month::of(s);
                assert_eq!((m.year, m.month), (i64::from(d.year()), u8::from(d.month())), "{s}");
            }
            t += DAY;
        }
    }

    #[test]
    fn total_for_hostile_timestamps() {
        for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            let m = Month::of(t);
            assert!((1..=12).contains(&m.month));
            let _ = (m.start(), m.end(), month_end(t), within_one_month(t, t));
        }
    }

    #[test]
    fn parse_refuses_what_is_not_yyyy_mm() {
        for bad in [
            "2026-13",
            "2026-1",
            "26-11",
            "nov",
            "2026-00",
            "+026-11",
            "2026-+1",
            "2026-11-01",
            "",
        ] {
            assert_eq!(Month::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn one_month_periods() {
        let b = ts("2026-11-01T00:00:00Z");
        assert!(within_one_month(b - 600, b), "ends exactly at the boundary");
        assert!(!within_one_month(b - 600, b + 1));
        assert!(
            within_one_month(b, b),
            "zero length at the boundary belongs to the new month"
        );
        assert!(!within_one_month(b, b - 1), "backwards");
    }
}
