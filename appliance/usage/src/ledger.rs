//! The node's usage ledger: the accumulator and the next report's number
//! (what `usage.json` holds), and the decisions about reports as pure
//! functions of it and `now`: which period the next report covers, and
//! whether one is due.
//!
//! The caller does the I/O in this order, which is what makes a crash at
//! any point lose nothing and count nothing twice:
//! 1. persist the ledger after every poll;
//! 2. when [`Ledger::due`] gives a period, write its report (number
//!    `next_seq`) durably to the outbox;
//! 3. [`Ledger::commit`], persist.
//!
//! A crash between 2 and 3 leaves a report numbered `next_seq` in the
//! outbox and a ledger that still holds its period: on start
//! [`Ledger::recover`] commits it.
//!
//! Ops keys reports by (node, enrollment, number). A ledger numbers for
//! the enrollment it was given ([`Ledger::enrolled`]); one started afresh
//! (its file was lost or moved aside) does not know which numbers an
//! earlier ledger used, so it numbers nothing until the node enrolls again
//! ([`Ledger::number_for`]). Its usage waits meanwhile; nothing is lost.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::accounting::{Accumulator, MemberUsage, Period};
use crate::month::Month;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// The number the next report gets.
    pub next_seq: u64,
    pub acc: Accumulator,
    /// The enrollment whose numbering `next_seq` continues. `None`: started
    /// afresh, numbering for nobody yet. A file from before enrollments
    /// were numbered continues the node's enrollment (`Some(0)`).
    #[serde(default = "before_epochs")]
    pub epoch: Option<u64>,
    /// What the reports written so far carried of the latest month they
    /// covered, per member: with the periods not yet reported, this
    /// month's usage as the node shows it. (Ops's sums are the bill; this
    /// is for the people on the node.)
    #[serde(default)]
    pub reported: Reported,
}

/// Usage of one month per member, as reports carried it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {
    /// The month's start, unix seconds; `None` before the first report.
    pub month: Option<i64>,
    pub members: BTreeMap<String, MemberUsage>,
}

impl Reported {
    /// A period's report was written. Periods come oldest first, so a
    /// period of a later month starts that month afresh.
    fn add(&mut self, p: &Period) {
        let month = Month::of(p.from).start();
        match self.month {
            Some(m) if m > month => return,
            Some(m) if m == month => {}
            _ => {
                self.month = Some(month);
                self.members.clear();
            }
        }
        for (member, u) in &p.members {
            self.members.entry(member.clone()).or_default().add(u);
        }
    }
}

fn before_epochs() -> Option<u64> {
    Some(0)
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            next_seq: 1,
            acc: Accumulator::default(),
            epoch: None,
            reported: Reported::default(),
        }
    }
}

/// Why a ledger may not number reports for the node's enrollment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Numbering {
    #[error(
        "the usage state was started afresh while the node is enrolled (enrollment {0}); its report numbers could repeat ones ops has: enroll again with a new token (usage is kept and reported then)"
    )]
    Fresh(u64),
    #[error(
        "the enrollment ({enrolled}) is older than the usage state ({ledger}), as after restoring enrollment.json from a backup: enroll again with a new token"
    )]
    OlderEnrollment { enrolled: u64, ledger: u64 },
}

impl Ledger {
    /// The period the next report covers, if a report is due now.
    ///
    /// A month that ended is due at once, oldest first, so no report ever
    /// spans a month boundary and a month is complete at ops as soon as it
    /// can be. Otherwise the open period is due once `interval` has passed
    /// since the last report; it ends at the last poll. Before any poll,
    /// the report is an empty period at `now` (it still carries the node's
    /// health and resource figures).
    pub fn due(&self, since_last_report: Duration, interval: Duration, now: i64) -> Option<Period> {
        if let Some(p) = self.acc.closed.first() {
            return Some(p.clone());
        }
        if since_last_report < interval {
            return None;
        }
        let mut acc = self.acc.clone();
        Some(acc.close().unwrap_or_else(|| Period {
            from: now,
            to: now,
            members: Default::default(),
            meetings: Default::default(),
            gaps: Default::default(),
            legacy: false,
        }))
    }

    /// The report of the period [`Ledger::due`] gave is written: forget
    /// that period and move on to the next number.
    pub fn commit(&mut self) {
        let written = if self.acc.closed.is_empty() {
            self.acc.close()
        } else {
            Some(self.acc.closed.remove(0))
        };
        if let Some(p) = written {
            self.reported.add(&p);
        }
        self.next_seq += 1;
    }

    /// Each member's usage in the month of `now` so far: what reports
    /// carried, the periods waiting for a report, and the open period up
    /// to the last poll.
    pub fn month_to_date(&self, now: i64) -> (Month, BTreeMap<String, MemberUsage>) {
        let month = Month::of(now);
        let start = month.start();
        let mut out = if self.reported.month == Some(start) {
            self.reported.members.clone()
        } else {
            BTreeMap::new()
        };
        let open = self.acc.clone().close();
        for p in self.acc.closed.iter().chain(open.iter()) {
            if Month::of(p.from).start() == start {
                for (member, u) in &p.members {
                    out.entry(member.clone()).or_default().add(u);
                }
            }
        }
        (month, out)
    }

    /// Brings a ledger written by an earlier release up to date: an open
    /// period that spans months becomes a legacy period (see
    /// [`crate::Period::legacy`]). Idempotent.
    pub fn upgrade(&mut self) {
        if self.epoch == before_epochs() {
            self.acc.close_legacy_span();
        }
    }

    /// The node enrolled (again) as enrollment `epoch`: numbering goes on
    /// from `next_seq` in it (a new enrollment at ops has no numbers yet).
    pub fn enrolled(&mut self, epoch: u64) {
        self.epoch = Some(epoch);
    }

    /// Whether reports may be numbered for enrollment `epoch`. A ledger
    /// that numbered an earlier enrollment of this node moves on to it
    /// (returns `Ok(true)`: persist).
    pub fn number_for(&mut self, epoch: u64) -> Result<bool, Numbering> {
        match self.epoch {
            None => Err(Numbering::Fresh(epoch)),
            Some(e) if e == epoch => Ok(false),
            Some(e) if e < epoch => {
                self.epoch = Some(epoch);
                Ok(true)
            }
            Some(e) => Err(Numbering::OlderEnrollment {
                enrolled: epoch,
                ledger: e,
            }),
        }
    }

    /// Start-up: reports numbered up to `written` are in the outbox. Any
    /// of them at or past `next_seq` was written without its commit (a
    /// crash between the two): commit it now. Returns how many.
    pub fn recover(&mut self, written: u64) -> u64 {
        let mut n = 0;
        while self.next_seq <= written {
            self.commit();
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::Seen;
    use crate::month::Month;

    fn seen(n: u32) -> Vec<Seen> {
        vec![Seen {
            id: "m".into(),
            member: "a".into(),
            participants: n,
            breakout: false,
        }]
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn months_first_then_the_open_period_at_the_interval() {
        let b = Month::parse("2026-11").unwrap().start();
        let mut l = Ledger::default();
        assert_eq!(l.due(Duration::ZERO, MIN, 5), None, "not yet due");
        let hb = l.due(MIN, MIN, 5).unwrap();
        assert_eq!((hb.from, hb.to), (5, 5), "no poll yet: an empty period now");
        assert!(hb.members.is_empty());
        l.acc.observe(b - 90, seen(2), 300);
        l.acc.observe(b + 30, seen(3), 300);
        // The month that ended is due even right after a report.
        let oct = l.due(Duration::ZERO, MIN, 0).unwrap();
        assert_eq!((oct.from, oct.to), (b - 90, b));
        assert_eq!(oct.members["a"].participant_seconds, 180);
        l.commit();
        assert_eq!(l.next_seq, 2);
        assert_eq!(l.due(Duration::ZERO, MIN, 0), None);
        let nov = l.due(MIN, MIN, 0).unwrap();
        assert_eq!((nov.from, nov.to), (b, b + 30));
        assert_eq!(nov.members["a"].participant_seconds, 60);
        l.commit();
        assert_eq!(l.next_seq, 3);
        let next = l.due(MIN, MIN, 0).unwrap();
        assert_eq!((next.from, next.to), (b + 30, b + 30), "nothing new since");
        assert!(next.members.is_empty());
    }

    #[test]
    fn this_months_usage_is_what_was_reported_and_what_waits() {
        let b = Month::parse("2026-11").unwrap().start();
        let mut l = Ledger::default();
        let ps = |l: &Ledger, now: i64| {
            let (m, members) = l.month_to_date(now);
            (m.to_string(), members.get("a").map(|u| u.participant_seconds))
        };
        assert_eq!(ps(&l, b - 1), ("2026-10".into(), None), "nothing yet");
        l.acc.observe(b - 90, seen(2), 300);
        l.acc.observe(b + 30, seen(3), 300);
        // October's 90 s at 2 waits in a closed period, November's 30 s is open.
        assert_eq!(ps(&l, b - 1), ("2026-10".into(), Some(180)));
        assert_eq!(ps(&l, b + 40), ("2026-11".into(), Some(60)));
        // What the reports carry, for the peak.
        let mut carried = Vec::new();
        carried.push(l.due(Duration::ZERO, MIN, 0).unwrap());
        l.commit();
        assert_eq!(ps(&l, b - 1), ("2026-10".into(), Some(180)), "reported");
        l.acc.observe(b + 90, seen(5), 300);
        assert_eq!(ps(&l, b + 100), ("2026-11".into(), Some(60 + 180)));
        carried.push(l.due(MIN, MIN, 0).unwrap());
        l.commit();
        l.acc.observe(b + 150, seen(1), 300);
        // 30 s at 2, 60 s at 3, 60 s at 5: nothing counted twice or lost.
        assert_eq!(ps(&l, b + 160), ("2026-11".into(), Some(60 + 180 + 300)));
        carried.push(l.due(MIN, MIN, 0).unwrap());
        let peak = carried[1..].iter().map(|p| p.members["a"].peak_participants).max();
        assert_eq!(l.month_to_date(b + 160).1["a"].peak_participants, peak.unwrap());
        assert_eq!(
            ps(&l, Month::parse("2026-12").unwrap().start()),
            ("2026-12".into(), None)
        );
        let json = serde_json::to_string(&l).unwrap();
        let back: Ledger = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.month_to_date(b + 160),
            l.month_to_date(b + 160),
            "survives a restart"
        );
    }

    #[test]
    fn recovery_commits_what_a_crash_left_uncommitted() {
        let b = Month::parse("2026-01").unwrap().start();
        let mut l = Ledger::default();
        l.acc.observe(b - 30, seen(1), 300);
        l.acc.observe(b + 30, seen(1), 300);
        let before = l.clone();
        // Report 1 (December) reached the outbox; the crash came before the commit.
        let dec = l.due(Duration::ZERO, MIN, 0).unwrap();
        assert_eq!(Month::of(dec.from).to_string(), "2025-12");
        let mut after_crash = before.clone();
        assert_eq!(after_crash.recover(1), 1);
        l.commit();
        assert_eq!(after_crash, l, "recovery is the commit that did not happen");
        assert_eq!(after_crash.recover(1), 0, "and only once");
        let jan = after_crash.due(MIN, MIN, 0).unwrap();
        assert_eq!((jan.from, jan.to), (b, b + 30));
    }

    #[test]
    fn ledger_files_from_before_months_still_load() {
        // usage.json as the previous release wrote it.
        let old = r#"{"next_seq":7,"acc":{"period_from":100,"last":[130,[{"id":"m","member":"a","participants":2,"breakout":false}]],
            "failed_since_last":false,"members":{"a":{"meeting_seconds":30,"participant_seconds":60,"peak_participants":2}},
            "meetings":{"m":{"member":"a","seconds":30}},"gaps":[{"from":0,"to":100}]}}"#;
        let mut l: Ledger = serde_json::from_str(old).unwrap();
        assert_eq!(l.next_seq, 7);
        assert_eq!(l.number_for(1), Ok(true), "it numbered the node's enrollment");
        assert!(l.acc.closed.is_empty());
        assert_eq!(l.acc.gaps[0].reason, crate::accounting::GapReason::NoAnswer);
    }

    #[test]
    fn a_fresh_ledger_numbers_nothing_until_enrolled_again() {
        // (ledger's epoch, the node's enrollment, answer, epoch after)
        let cases = [
            (None, 3, Err(Numbering::Fresh(3)), None),
            (Some(3), 3, Ok(false), Some(3)),
            (Some(2), 3, Ok(true), Some(3)),
            (Some(0), 1, Ok(true), Some(1)),
            (
                Some(4),
                3,
                Err(Numbering::OlderEnrollment { enrolled: 3, ledger: 4 }),
                Some(4),
            ),
        ];
        for (had, enrolled, want, after) in cases {
            let mut l = Ledger {
                epoch: had,
                ..Ledger::default()
            };
            assert_eq!(l.number_for(enrolled), want, "{had:?} for {enrolled}");
            assert_eq!(l.epoch, after);
        }
        let mut l = Ledger::default();
        l.enrolled(5);
        assert_eq!(l.number_for(5), Ok(false));
        let back: Ledger = serde_json::from_str(&serde_json::to_string(&Ledger::default()).unwrap()).unwrap();
        assert_eq!(back.epoch, None, "a fresh ledger stays fresh through its file");
    }
}
