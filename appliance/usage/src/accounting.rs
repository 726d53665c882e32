//! Usage accounting: what a sequence of BBB polls says each member
//! organisation used. A pure function of the polls, so it is tested with
//! tables and replayed exactly after a restart.
//!
//! The rule: the interval between two consecutive successful polls is
//! charged with what the earlier poll saw. For each meeting seen then,
//! its member gets the interval as meeting-seconds (main meetings only:
//! a breakout room is part of its parent meeting, not a meeting of its
//! own) and participants × interval as participant-seconds (breakout rooms
//! included). Peaks are the largest sum of a member's participants in one
//! poll. An interval that contains a failed poll, or that is longer than
//! `max_gap`, is not guessed at: it is recorded as a gap and charged to
//! nobody.
//!
//! Usage belongs to the UTC month in which it happened: an interval that
//! crosses a month boundary is cut there, the period closes at the
//! boundary, and a poll belongs to the period that contains its instant
//! (a poll exactly at 00:00 on the 1st counts for the new month's peak).
//! So a period never spans two months, and every figure in it is that
//! month's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::month::month_end;

/// Meetings without the member metadata are charged to this name.
pub const UNASSIGNED: &str = "unassigned";

/// One meeting as a poll saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// BBB's internal meeting id (unique per meeting, even when an
    /// external id is reused).
    pub id: String,
    /// The member organisation (a breakout room's is its parent's).
    pub member: String,
    pub participants: u32,
    pub breakout: bool,
}

/// A member's usage over a period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUsage {
    pub meeting_seconds: u64,
    pub participant_seconds: u64,
    pub peak_participants: u32,
}

impl MemberUsage {
    /// Adds a later period's usage: seconds add up, the peak is the larger.
    pub fn add(&mut self, later: &MemberUsage) {
        self.meeting_seconds = self.meeting_seconds.saturating_add(later.meeting_seconds);
        self.participant_seconds = self.participant_seconds.saturating_add(later.participant_seconds);
        self.peak_participants = self.peak_participants.max(later.peak_participants);
    }
}

/// Seconds charged to one (main) meeting in a period. The member's
/// `meeting_seconds` are always the sum of its meetings' seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingSeconds {
    pub member: String,
    pub seconds: u64,
}

/// Why an interval was charged to nobody.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// A poll failed in it: BBB did not answer, or answered nonsense.
    #[default]
    NoAnswer,
    /// Nobody polled for longer than `max_gap`: the supervisor was not
    /// running, or the box was off or suspended.
    NotPolled,
}

impl GapReason {
    /// For people: why nothing could be counted.
    pub fn describe(self) -> &'static str {
        match self {
            GapReason::NoAnswer => "BBB did not answer",
            GapReason::NotPolled => "nobody asked BBB: the supervisor was not running or the node was off",
        }
    }
}

/// An interval charged to nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub from: i64,
    pub to: i64,
    #[serde(default)]
    pub reason: GapReason,
}

/// What accumulates between two reports. Serialisable, so it survives a
/// restart (the supervisor writes it after every poll).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accumulator {
    /// Start of the open period (unix seconds); `None` until the first
    /// successful poll.
    pub period_from: Option<i64>,
    /// The last successful poll: its time and what it saw. Its peak is
    /// taken into the open period when the next poll arrives (it belongs
    /// to the period that contains its instant, which a close at that
    /// very instant would not).
    pub last: Option<(i64, Vec<Seen>)>,
    /// A poll failed since `last`.
    pub failed_since_last: bool,
    pub members: BTreeMap<String, MemberUsage>,
    /// By BBB internal meeting id.
    pub meetings: BTreeMap<String, MeetingSeconds>,
    pub gaps: Vec<Gap>,
    /// Periods that ended at a month boundary and wait to be reported,
    /// oldest first.
    #[serde(default)]
    pub closed: Vec<Period>,
}

/// A closed period, ready to report: `[from, to)`, within one month,
/// unless it is `legacy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub from: i64,
    pub to: i64,
    pub members: BTreeMap<String, MemberUsage>,
    pub meetings: BTreeMap<String, MeetingSeconds>,
    pub gaps: Vec<Gap>,
    /// Counted by a release from before months, and spanning a month
    /// boundary: where in it each second fell is not known. Reported in the
    /// old form (enrollment 0), which ops bills to the month it starts in.
    #[serde(default)]
    pub legacy: bool,
}

impl Accumulator {
    /// A successful poll at `at` that saw `seen`.
    pub fn observe(&mut self, at: i64, seen: Vec<Seen>, max_gap: i64) {
        let Some((prev_at, prev)) = self.last.take() else {
            // The first poll: the open period starts here, unless it
            // already holds something (then months are closed up to it).
            match self.period_from {
                Some(from) if !self.open_is_empty() && at >= from => self.roll_to(at),
                _ => self.period_from = Some(at),
            }
            self.failed_since_last = false;
            self.last = Some((at, seen));
            return;
        };
        if at < prev_at {
            // The clock went back: keep the later state, charge nothing.
            self.last = Some((prev_at, prev));
            return;
        }
        if self.period_from.is_none_or(|f| f > prev_at) {
            self.period_from = Some(prev_at);
        }
        self.take_peaks(&prev);
        let dt = at - prev_at;
        let gap = if self.failed_since_last {
            Some(GapReason::NoAnswer)
        } else if dt > max_gap {
            Some(GapReason::NotPolled)
        } else {
            None
        };
        // Cut the interval at every month boundary in it. (Never before
        // `prev_at`: an open period that began months before its last poll,
        // as a file from before months may hold, is closed, not charged again.)
        loop {
            let end = month_end(self.period_from.unwrap_or(prev_at));
            self.account(
                prev_at.max(self.period_from.unwrap_or(prev_at)),
                at.min(end),
                gap,
                &prev,
            );
            if at < end {
                break;
            }
            self.close_month(end);
        }
        self.failed_since_last = false;
        self.last = Some((at, seen));
    }

    /// A poll that failed (BBB unreachable or answering nonsense).
    pub fn failed(&mut self) {
        if self.last.is_some() {
            self.failed_since_last = true;
        }
    }

    /// Charges `[from, to)` with `seen`, or records it as a gap.
    fn account(&mut self, from: i64, to: i64, gap: Option<GapReason>, seen: &[Seen]) {
        if to <= from {
            return;
        }
        match gap {
            Some(reason) => push_gap(&mut self.gaps, Gap { from, to, reason }),
            None => self.charge(seen, (to - from) as u64),
        }
    }

    fn charge(&mut self, seen: &[Seen], dt: u64) {
        for s in seen {
            let m = self.members.entry(s.member.clone()).or_default();
            m.participant_seconds = m.participant_seconds.saturating_add(u64::from(s.participants) * dt);
            if !s.breakout {
                // A meeting's time goes to the member its line names, so a
                // member's meeting-seconds always equal the sum of its
                // meetings' (ops checks that).
                let line = self.meetings.entry(s.id.clone()).or_insert_with(|| MeetingSeconds {
                    member: s.member.clone(),
                    seconds: 0,
                });
                line.seconds = line.seconds.saturating_add(dt);
                let owner = line.member.clone();
                let m = self.members.entry(owner).or_default();
                m.meeting_seconds = m.meeting_seconds.saturating_add(dt);
            }
        }
    }

    fn take_peaks(&mut self, seen: &[Seen]) {
        for (member, n) in totals(seen) {
            let m = self.members.entry(member).or_default();
            m.peak_participants = m.peak_participants.max(n);
        }
    }

    fn open_is_empty(&self) -> bool {
        self.members.is_empty() && self.meetings.is_empty() && self.gaps.is_empty()
    }

    /// Closes the open period at the month boundary `end` and opens the
    /// next one there.
    fn close_month(&mut self, end: i64) {
        let from = self.period_from.unwrap_or(end);
        if !self.open_is_empty() || from < end {
            self.closed.push(Period {
                from,
                to: end,
                members: std::mem::take(&mut self.members),
                meetings: std::mem::take(&mut self.meetings),
                gaps: std::mem::take(&mut self.gaps),
                legacy: false,
            });
        }
        self.period_from = Some(end);
    }

    /// Closes months until the open period contains `at`.
    fn roll_to(&mut self, at: i64) {
        while let Some(from) = self.period_from {
            let end = month_end(from);
            if at < end {
                break;
            }
            self.close_month(end);
        }
    }

    /// Whether anything has been charged or recorded since the period began.
    pub fn is_empty(&self) -> bool {
        self.open_is_empty() && self.closed.is_empty()
    }

    /// Ends the open period at the last poll and starts the next one there,
    /// keeping what that poll saw for the next interval. `None` before the
    /// first poll.
    pub fn close(&mut self) -> Option<Period> {
        let (to, _) = self.last.as_ref()?;
        let to = *to;
        let from = self.period_from?.min(to);
        let p = Period {
            from,
            to,
            members: std::mem::take(&mut self.members),
            meetings: std::mem::take(&mut self.meetings),
            gaps: std::mem::take(&mut self.gaps),
            legacy: false,
        };
        self.period_from = Some(to);
        Some(p)
    }

    /// An accumulator written by a release from before months may hold an
    /// open period that spans a month boundary: it is closed at its last
    /// poll as a legacy period (see [`Period::legacy`]), so everything
    /// after follows the month rule. Idempotent.
    pub fn close_legacy_span(&mut self) {
        let (Some(from), Some((last, _))) = (self.period_from, self.last.as_ref()) else {
            return;
        };
        let last = *last;
        if last >= month_end(from) {
            if let Some(mut p) = self.close() {
                p.legacy = true;
                self.closed.push(p);
            }
        }
    }
}

/// Adds a gap, joining it to the last one when it continues it for the same
/// reason (a BBB that flaps for a month is a few gaps, not thousands).
pub fn push_gap(gaps: &mut Vec<Gap>, g: Gap) {
    match gaps.last_mut() {
        Some(last) if last.to == g.from && last.reason == g.reason => last.to = g.to,
        _ => gaps.push(g),
    }
}

fn totals(seen: &[Seen]) -> BTreeMap<String, u32> {
    let mut t = BTreeMap::new();
    for s in seen {
        let n: &mut u32 = t.entry(s.member.clone()).or_insert(0);
        *n = n.saturating_add(s.participants);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::month::Month;

    fn s(id: &str, member: &str, n: u32) -> Seen {
        Seen {
            id: id.into(),
            member: member.into(),
            participants: n,
            breakout: false,
        }
    }
    fn b(id: &str, member: &str, n: u32) -> Seen {
        Seen {
            id: id.into(),
            member: member.into(),
            participants: n,
            breakout: true,
        }
    }

    enum Step {
        Ok(i64, Vec<Seen>),
        Fail,
    }
    use Step::{Fail, Ok as P};

    fn run(steps: Vec<Step>, max_gap: i64) -> Accumulator {
        let mut a = Accumulator::default();
        for st in steps {
            match st {
                P(t, seen) => a.observe(t, seen, max_gap),
                Fail => a.failed(),
            }
        }
        a
    }

    fn usage(a: &Accumulator, member: &str) -> (u64, u64, u32) {
        let m = a.members.get(member).cloned().unwrap_or_default();
        (m.meeting_seconds, m.participant_seconds, m.peak_participants)
    }

    #[test]
    fn table() {
        // (name, polls, member, (meeting s, participant s, peak))
        type Case<'a> = (&'a str, Vec<Step>, &'a str, (u64, u64, u32));
        let cases: Vec<Case> = vec![
            (
                "one meeting, steady",
                vec![P(0, vec![s("m", "a", 3)]), P(30, vec![s("m", "a", 3)]), P(60, vec![])],
                "a",
                (60, 180, 3),
            ),
            (
                "left endpoint: a join counts from the poll that sees it",
                vec![
                    P(0, vec![s("m", "a", 1)]),
                    P(30, vec![s("m", "a", 4)]),
                    P(60, vec![s("m", "a", 4)]),
                ],
                "a",
                (60, 150, 4),
            ),
            (
                "breakout: participants count, meeting time does not",
                vec![P(0, vec![s("m", "a", 2), b("r", "a", 3)]), P(10, vec![])],
                "a",
                (10, 50, 5),
            ),
            (
                "two members apart",
                vec![P(0, vec![s("m", "a", 1), s("n", "b", 2)]), P(10, vec![])],
                "b",
                (10, 20, 2),
            ),
            (
                "a failed poll makes a gap",
                vec![
                    P(0, vec![s("m", "a", 2)]),
                    Fail,
                    P(30, vec![s("m", "a", 2)]),
                    P(60, vec![]),
                ],
                "a",
                (30, 60, 2),
            ),
            (
                "too long between polls makes a gap",
                vec![
                    P(0, vec![s("m", "a", 2)]),
                    P(1000, vec![s("m", "a", 2)]),
                    P(1030, vec![]),
                ],
                "a",
                (30, 60, 2),
            ),
            (
                "same time twice charges nothing",
                vec![P(0, vec![s("m", "a", 2)]), P(0, vec![s("m", "a", 5)]), P(10, vec![])],
                "a",
                (10, 50, 5),
            ),
            (
                "clock going back charges nothing",
                vec![
                    P(100, vec![s("m", "a", 1)]),
                    P(50, vec![s("m", "a", 9)]),
                    P(110, vec![]),
                ],
                "a",
                (10, 10, 1),
            ),
            (
                "nothing before the first poll",
                vec![Fail, P(10, vec![s("m", "a", 1)]), P(20, vec![])],
                "a",
                (10, 10, 1),
            ),
        ];
        for (name, steps, member, want) in cases {
            let a = run(steps, 120);
            assert_eq!(usage(&a, member), want, "{name}");
        }
        let a = run(vec![P(0, vec![s("m", "a", 2)]), Fail, P(30, vec![])], 120);
        assert_eq!(
            a.gaps,
            vec![Gap {
                from: 0,
                to: 30,
                reason: GapReason::NoAnswer
            }]
        );
        let a = run(vec![P(0, vec![s("m", "a", 2)]), P(300, vec![])], 120);
        assert_eq!(
            a.gaps,
            vec![Gap {
                from: 0,
                to: 300,
                reason: GapReason::NotPolled
            }]
        );
    }

    #[test]
    fn periods_split_at_polls_and_lose_nothing() {
        // One accumulator closed after every poll gives the same totals as
        // one closed at the end.
        let polls: Vec<(i64, Vec<Seen>)> = (0..20)
            .map(|i| {
                (
                    i * 30,
                    if i % 7 == 6 {
                        vec![]
                    } else {
                        vec![s(&format!("m{}", i / 7), "a", (i % 5) as u32 + 1), b("r", "a", 1)]
                    },
                )
            })
            .collect();
        let mut whole = Accumulator::default();
        let mut split = Accumulator::default();
        let mut sum = MemberUsage::default();
        let mut meetings: BTreeMap<String, u64> = BTreeMap::new();
        let mut last_to = None;
        for (t, seen) in &polls {
            whole.observe(*t, seen.clone(), 120);
            split.observe(*t, seen.clone(), 120);
            let p = split.close().unwrap();
            if let Some(prev) = last_to {
                assert_eq!(p.from, prev, "periods are contiguous");
            }
            last_to = Some(p.to);
            if let Some(m) = p.members.get("a") {
                sum.meeting_seconds += m.meeting_seconds;
                sum.participant_seconds += m.participant_seconds;
                sum.peak_participants = sum.peak_participants.max(m.peak_participants);
            }
            for (id, m) in p.meetings {
                *meetings.entry(id).or_default() += m.seconds;
            }
        }
        let w = whole.close().unwrap();
        assert_eq!(w.members["a"], sum);
        assert_eq!(
            w.meetings
                .iter()
                .map(|(k, v)| (k.clone(), v.seconds))
                .collect::<BTreeMap<_, _>>(),
            meetings
        );
        assert_eq!(w.meetings.len(), 3, "breakout rooms are not meetings");
    }

    #[test]
    fn survives_a_round_trip_through_json() {
        let a = run(vec![P(0, vec![s("m", "a", 2)]), P(30, vec![s("m", "a", 2)]), Fail], 120);
        let back: Accumulator = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        let mut r = back.clone();
        let p = r.close().unwrap();
        assert_eq!((p.from, p.to), (0, 30));
        assert!(r.is_empty());
        assert_eq!(r.last, a.last, "the last poll is kept to charge the next interval");
        assert_eq!(r.period_from, Some(30));
    }

    /// Every period the polls produce, closed months and then the open
    /// one closed at the last poll, as (month, from, to, member "a"'s
    /// (meeting s, participant s, peak), gaps).
    type Summary = (String, i64, i64, (u64, u64, u32), Vec<(i64, i64, GapReason)>);

    fn periods(steps: Vec<Step>, max_gap: i64) -> Vec<Summary> {
        let mut a = run(steps, max_gap);
        let mut all = std::mem::take(&mut a.closed);
        all.extend(a.close());
        all.into_iter()
            .map(|p| {
                let m = p.members.get("a").cloned().unwrap_or_default();
                let meetings: u64 = p.meetings.values().filter(|x| x.member == "a").map(|x| x.seconds).sum();
                assert_eq!(
                    meetings, m.meeting_seconds,
                    "meeting lines add up to the member's seconds"
                );
                assert!(
                    crate::month::within_one_month(p.from, p.to),
                    "period {}..{} spans months",
                    p.from,
                    p.to
                );
                (
                    Month::of(p.from).to_string(),
                    p.from,
                    p.to,
                    (m.meeting_seconds, m.participant_seconds, m.peak_participants),
                    p.gaps.iter().map(|g| (g.from, g.to, g.reason)).collect(),
                )
            })
            .collect()
    }

    fn at(month: &str) -> i64 {
        Month::parse(month).unwrap().start()
    }

    #[test]
    fn months_split_usage_where_it_happened() {
        let nov = at("2026-11");
        let jan = at("2026-01");
        let mar28 = at("2028-03");
        let feb28 = at("2028-02");
        let dec = at("2026-12");
        let jan27 = at("2027-01");
        let (na, nb) = (GapReason::NoAnswer, GapReason::NotPolled);
        let day = 86_400;
        let cases: Vec<(&str, Vec<Step>, i64, Vec<Summary>)> = vec![
            (
                "an interval crossing the 1st at 00:00 is cut there",
                vec![
                    P(nov - 100, vec![s("m", "a", 2)]),
                    P(nov + 200, vec![s("m", "a", 3)]),
                    P(nov + 300, vec![]),
                ],
                600,
                vec![
                    ("2026-10".into(), nov - 100, nov, (100, 200, 2), vec![]),
                    ("2026-11".into(), nov, nov + 300, (300, 700, 3), vec![]),
                ],
            ),
            (
                "and a year boundary the same way",
                vec![P(jan - 10, vec![s("m", "a", 4)]), P(jan + 20, vec![])],
                600,
                vec![
                    ("2025-12".into(), jan - 10, jan, (10, 40, 4), vec![]),
                    ("2026-01".into(), jan, jan + 20, (20, 80, 0), vec![]),
                ],
            ),
            (
                "a poll exactly at the boundary belongs to the new month, peak included",
                vec![
                    P(nov - 60, vec![s("m", "a", 1)]),
                    P(nov, vec![s("m", "a", 7)]),
                    P(nov + 60, vec![]),
                ],
                600,
                vec![
                    ("2026-10".into(), nov - 60, nov, (60, 60, 1), vec![]),
                    ("2026-11".into(), nov, nov + 60, (60, 420, 7), vec![]),
                ],
            ),
            (
                "a failed poll across the boundary: a gap in each month",
                vec![
                    P(nov - 30, vec![s("m", "a", 2)]),
                    Fail,
                    P(nov + 90, vec![s("m", "a", 2)]),
                    P(nov + 120, vec![]),
                ],
                600,
                vec![
                    ("2026-10".into(), nov - 30, nov, (0, 0, 2), vec![(nov - 30, nov, na)]),
                    ("2026-11".into(), nov, nov + 120, (30, 60, 2), vec![(nov, nov + 90, na)]),
                ],
            ),
            (
                "a node off for two months: one gap piece per month, each month closed",
                vec![
                    P(nov - 30, vec![s("m", "a", 2)]),
                    P(jan27 + 10, vec![]),
                    P(jan27 + 20, vec![]),
                ],
                600,
                vec![
                    ("2026-10".into(), nov - 30, nov, (0, 0, 2), vec![(nov - 30, nov, nb)]),
                    ("2026-11".into(), nov, dec, (0, 0, 0), vec![(nov, dec, nb)]),
                    ("2026-12".into(), dec, jan27, (0, 0, 0), vec![(dec, jan27, nb)]),
                    (
                        "2027-01".into(),
                        jan27,
                        jan27 + 20,
                        (0, 0, 0),
                        vec![(jan27, jan27 + 10, nb)],
                    ),
                ],
            ),
            (
                "leap day: February 2028 has 29 days and closes on 1 March",
                vec![
                    P(feb28 + 28 * day - 10, vec![s("m", "a", 1)]),
                    P(feb28 + 28 * day + 10, vec![s("m", "a", 1)]),
                    P(mar28 + 5, vec![]),
                ],
                2 * day,
                vec![
                    (
                        "2028-02".into(),
                        feb28 + 28 * day - 10,
                        mar28,
                        (86_410, 86_410, 1),
                        vec![],
                    ),
                    ("2028-03".into(), mar28, mar28 + 5, (5, 5, 0), vec![]),
                ],
            ),
        ];
        for (name, steps, max_gap, want) in cases {
            assert_eq!(periods(steps, max_gap), want, "{name}");
        }
    }

    #[test]
    fn whole_months_add_up_to_the_same_totals_as_one_long_run() {
        // Polls every 7 minutes for 5 days across a month boundary, with a
        // failed poll now and then: summing the periods per month gives
        // the same totals as charging each interval by hand.
        let b = at("2026-11");
        let mut steps = Vec::new();
        let mut by_hand: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut t = b - 2 * 86_400 - 13;
        let mut prev: Option<(i64, u32)> = None;
        for i in 0..1000u32 {
            let n = i % 9;
            let fail = i % 37 == 5;
            if fail {
                steps.push(Fail);
            }
            if let Some((pt, pn)) = prev {
                if !fail {
                    for (from, to) in [(pt, t.min(b)), (pt.max(b), t)] {
                        if to > from {
                            let e = by_hand.entry(Month::of(from).to_string()).or_default();
                            e.0 += (to - from) as u64;
                            e.1 += u64::from(pn) * (to - from) as u64;
                        }
                    }
                }
            }
            steps.push(P(t, vec![s("m", "a", n)]));
            prev = Some((t, n));
            t += 420;
        }
        let mut got: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for (month, _, _, (ms, ps, _), _) in periods(steps, 600) {
            let e = got.entry(month).or_default();
            e.0 += ms;
            e.1 += ps;
        }
        assert_eq!(got, by_hand);
    }

    #[test]
    fn an_old_open_period_across_months_is_closed_not_charged_again() {
        // A file from before months: the open period began in October, its
        // last poll is on 2 November (nothing cut it).
        let nov = at("2026-11");
        let mut a = Accumulator {
            period_from: Some(nov - 3600),
            last: Some((nov + 86_400, vec![s("m", "a", 2)])),
            members: [(
                "a".to_string(),
                MemberUsage {
                    meeting_seconds: 90_000,
                    participant_seconds: 180_000,
                    peak_participants: 2,
                },
            )]
            .into(),
            meetings: [(
                "m".to_string(),
                MeetingSeconds {
                    member: "a".into(),
                    seconds: 90_000,
                },
            )]
            .into(),
            ..Accumulator::default()
        };
        a.close_legacy_span();
        a.close_legacy_span();
        assert_eq!(a.closed.len(), 1);
        let old = &a.closed[0];
        assert!(old.legacy);
        assert_eq!((old.from, old.to), (nov - 3600, nov + 86_400));
        assert_eq!(old.members["a"].participant_seconds, 180_000);
        // The next poll charges its own 30 s, nothing more.
        a.observe(nov + 86_430, vec![], 120);
        let p = a.close().unwrap();
        assert_eq!((p.from, p.to, p.legacy), (nov + 86_400, nov + 86_430, false));
        assert_eq!(p.members["a"].participant_seconds, 60);
        // Without the closing, a poll still never charges before its
        // previous poll.
        let mut b = Accumulator {
            period_from: Some(nov - 3600),
            last: Some((nov + 86_400, vec![s("m", "a", 2)])),
            ..Accumulator::default()
        };
        b.observe(nov + 86_430, vec![], 120);
        let open = b.close();
        let total: u64 = b
            .closed
            .iter()
            .chain(open.iter())
            .filter_map(|p| p.members.get("a"))
            .map(|m| m.participant_seconds)
            .sum();
        assert_eq!(total, 60);
    }

    #[test]
    fn gaps_that_continue_each_other_are_one() {
        let mut g = vec![];
        let na = GapReason::NoAnswer;
        push_gap(
            &mut g,
            Gap {
                from: 0,
                to: 30,
                reason: na,
            },
        );
        push_gap(
            &mut g,
            Gap {
                from: 30,
                to: 60,
                reason: na,
            },
        );
        push_gap(
            &mut g,
            Gap {
                from: 60,
                to: 90,
                reason: GapReason::NotPolled,
            },
        );
        push_gap(
            &mut g,
            Gap {
                from: 120,
                to: 150,
                reason: GapReason::NotPolled,
            },
        );
        assert_eq!(
            g.iter().map(|x| (x.from, x.to)).collect::<Vec<_>>(),
            [(0, 60), (60, 90), (120, 150)]
        );
    }
}
