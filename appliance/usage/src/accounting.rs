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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// Seconds charged to one (main) meeting in a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingSeconds {
    pub member: String,
    pub seconds: u64,
}

/// An interval charged to nobody: BBB did not answer, or nobody asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    pub from: i64,
    pub to: i64,
}

/// What accumulates between two reports. Serialisable, so it survives a
/// restart (the supervisor writes it after every poll).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accumulator {
    /// Start of the period this accumulates (unix seconds); `None` until
    /// the first successful poll.
    pub period_from: Option<i64>,
    /// The last successful poll: its time and what it saw.
    pub last: Option<(i64, Vec<Seen>)>,
    /// A poll failed since `last`.
    pub failed_since_last: bool,
    pub members: BTreeMap<String, MemberUsage>,
    /// By BBB internal meeting id.
    pub meetings: BTreeMap<String, MeetingSeconds>,
    pub gaps: Vec<Gap>,
}

/// A closed period, ready to report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    pub from: i64,
    pub to: i64,
    pub members: BTreeMap<String, MemberUsage>,
    pub meetings: BTreeMap<String, MeetingSeconds>,
    pub gaps: Vec<Gap>,
}

impl Accumulator {
    /// A successful poll at `at` that saw `seen`.
    pub fn observe(&mut self, at: i64, seen: Vec<Seen>, max_gap: i64) {
        match self.last.take() {
            None => {
                self.period_from.get_or_insert(at);
            }
            Some((prev_at, prev)) if at < prev_at => {
                // The clock went back: keep the later state, charge nothing.
                self.last = Some((prev_at, prev));
                return;
            }
            Some((prev_at, prev)) => {
                let dt = at - prev_at;
                if self.failed_since_last || dt > max_gap {
                    if dt > 0 {
                        self.gaps.push(Gap { from: prev_at, to: at });
                    }
                } else if dt > 0 {
                    self.charge(&prev, dt as u64);
                }
            }
        }
        for (member, n) in totals(&seen) {
            let m = self.members.entry(member).or_default();
            m.peak_participants = m.peak_participants.max(n);
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

    fn charge(&mut self, seen: &[Seen], dt: u64) {
        for s in seen {
            let m = self.members.entry(s.member.clone()).or_default();
            m.participant_seconds += u64::from(s.participants) * dt;
            if !s.breakout {
                m.meeting_seconds += dt;
                self.meetings
                    .entry(s.id.clone())
                    .or_insert_with(|| MeetingSeconds {
                        member: s.member.clone(),
                        seconds: 0,
                    })
                    .seconds += dt;
            }
        }
    }

    /// Whether anything has been charged or recorded since the period began.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.meetings.is_empty() && self.gaps.is_empty()
    }

    /// Ends the period at the last poll and starts the next one there,
    /// keeping what that poll saw for the next interval.
    pub fn close(&mut self) -> Option<Period> {
        let (to, _) = self.last.as_ref()?;
        let from = self.period_from?;
        let p = Period {
            from,
            to: *to,
            members: std::mem::take(&mut self.members),
            meetings: std::mem::take(&mut self.meetings),
            gaps: std::mem::take(&mut self.gaps),
        };
        self.period_from = Some(*to);
        Some(p)
    }

    /// Forgets what was charged (already in a report written before a
    /// crash), keeping the last poll so the next interval is charged.
    pub fn reset_after(&mut self) {
        self.members.clear();
        self.meetings.clear();
        self.gaps.clear();
        self.period_from = self.last.as_ref().map(|(t, _)| *t);
    }
}

fn totals(seen: &[Seen]) -> BTreeMap<String, u32> {
    let mut t = BTreeMap::new();
    for s in seen {
        *t.entry(s.member.clone()).or_insert(0) += s.participants;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(a.gaps, vec![Gap { from: 0, to: 30 }]);
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
        r.reset_after();
        assert!(r.is_empty());
        assert_eq!(r.last, a.last, "the last poll is kept to charge the next interval");
        assert_eq!(r.period_from, Some(30));
    }
}
