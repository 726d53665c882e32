//! The maintenance window: a daily stretch of local wall-clock time (the
//! node's time zone, so "02:00-05:00" means the same to the people in
//! Manchester and in Amsterdam), possibly across midnight.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

#[derive(Debug, Clone)]
pub struct Window {
    start: Time,
    end: Time,
    tz: TimeZone,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("maintenance window {0:?}: write it as HH:MM-HH:MM, e.g. 02:00-05:00")]
    Syntax(String),
    #[error("maintenance window {0:?}: start and end are the same time")]
    Empty(String),
    #[error("time zone {0:?} is not known (use a name such as Europe/London or UTC)")]
    Zone(String),
}

impl Window {
    pub fn parse(text: &str, zone: &str) -> Result<Window, WindowError> {
        let syntax = || WindowError::Syntax(text.to_string());
        let (a, b) = text.split_once('-').ok_or_else(syntax)?;
        let hm = |s: &str| -> Result<Time, WindowError> {
            let (h, m) = s.trim().split_once(':').ok_or_else(syntax)?;
            let (h, m): (i8, i8) = (h.parse().map_err(|_| syntax())?, m.parse().map_err(|_| syntax())?);
            if !(0..24).contains(&h) || !(0..60).contains(&m) {
                return Err(syntax());
            }
            Time::new(h, m, 0, 0).map_err(|_| syntax())
        };
        let (start, end) = (hm(a)?, hm(b)?);
        if start == end {
            return Err(WindowError::Empty(text.to_string()));
        }
        let tz = TimeZone::get(zone).map_err(|_| WindowError::Zone(zone.to_string()))?;
        Ok(Window {
            start,
            end,
            tz,
            text: format!("{text} {zone}"),
        })
    }

    pub fn contains(&self, now: Timestamp) -> bool {
        let t = now.to_zoned(self.tz.clone()).time();
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// The next moment the window opens (now, if it is open).
    pub fn next_open(&self, now: Timestamp) -> Timestamp {
        if self.contains(now) {
            return now;
        }
        let z: Zoned = now.to_zoned(self.tz.clone());
        // Today's start, or tomorrow's; a start that falls into a DST gap
        // resolves to the first valid instant after it.
        for days in 0..3 {
            let day = z.date().checked_add(days.days()).expect("dates in range");
            if let Ok(open) = day.to_datetime(self.start).to_zoned(self.tz.clone())
                && open.timestamp() > now
            {
                return open.timestamp();
            }
        }
        now
    }

    pub fn describe(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn windows_in_local_time() {
        let w = Window::parse("02:00-05:00", "Europe/London").unwrap();
        // Winter: London is UTC.
        assert!(w.contains(t("2026-12-01T02:00:00Z")));
        assert!(w.contains(t("2026-12-01T04:59:59Z")));
        assert!(!w.contains(t("2026-12-01T05:00:00Z")));
        assert!(!w.contains(t("2026-12-01T01:59:59Z")));
        // Summer: BST is UTC+1, so 02:00 local is 01:00 UTC.
        assert!(w.contains(t("2026-07-01T01:00:00Z")));
        assert!(!w.contains(t("2026-07-01T04:30:00Z")));
        assert_eq!(w.next_open(t("2026-12-01T12:00:00Z")), t("2026-12-02T02:00:00Z"));
        assert_eq!(w.next_open(t("2026-07-01T00:30:00Z")), t("2026-07-01T01:00:00Z"));
        assert_eq!(w.next_open(t("2026-12-01T03:00:00Z")), t("2026-12-01T03:00:00Z"));
    }

    #[test]
    fn across_midnight() {
        let w = Window::parse("23:30-01:00", "Europe/Amsterdam").unwrap();
        assert!(w.contains(t("2026-12-01T22:30:00Z")));
        assert!(w.contains(t("2026-12-01T23:59:00Z")));
        assert!(!w.contains(t("2026-12-02T00:00:00Z")));
        assert_eq!(w.next_open(t("2026-12-02T00:00:00Z")), t("2026-12-02T22:30:00Z"));
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        for (w, z, want) in [
            ("2-5", "UTC", "HH:MM-HH:MM"),
            ("25:00-05:00", "UTC", "HH:MM-HH:MM"),
            ("02:00-02:00", "UTC", "the same time"),
            ("02:00-05:00", "Mars/Olympus", "not known"),
        ] {
            let e = Window::parse(w, z).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
