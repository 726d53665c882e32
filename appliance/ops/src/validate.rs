//! Plausibility of a usage report, checked once at the edge, after its
//! signature and before anything is stored. A correctly signed report can
//! still be wrong (a bug, a tampered box): nothing in it may claim more
//! than its period allows, and no figure may be large enough to make a
//! monthly sum fail for everyone else.
//!
//! The limits, for a report over the period `[from, to)` (`p` seconds):
//! - the period lies within one UTC month and ends at most `clock_skew`
//!   after ops's clock;
//! - each meeting has at most `p` seconds, each member's meeting-seconds
//!   are exactly the sum of its meetings' (so at most `p` × its meetings);
//! - each member's participant-seconds, and the node's in all, are at most
//!   `p` × `max_participants`; a peak is at most `max_participants`;
//! - gaps lie inside the period; members and meetings are listed once
//!   (in the usage lines and in the list of the node's members); names are
//!   at most 256 bytes.
//!
//! Pure: the report, the limits and `now` in, a typed reason out.

use std::collections::{BTreeMap, BTreeSet};

use appliance_usage::Report;

use crate::store::utc;

/// What a report may claim (from ops's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// More participants than this at once on one node is impossible.
    pub max_participants: u32,
    /// How far a node's clock may run ahead of ops's, in seconds.
    pub clock_skew: i64,
}

pub use appliance_usage::protocol::MAX_NAME;

/// More member organisations than this on one node is a broken report.
pub const MAX_MEMBERS: usize = 10_000;

/// Why a report is implausible. Each says what is wrong in words a person
/// at ops (and on the node, which shows it) can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Implausible {
    #[error("its period ends at {}, more than {skew} s ahead of ops's clock ({}); is the node's clock right?", utc(*to), utc(*now))]
    FutureDated { to: i64, now: i64, skew: i64 },
    #[error("its period {} to {} spans a month boundary (a report covers one UTC month at most)", utc(*from), utc(*to))]
    SpansMonths { from: i64, to: i64 },
    #[error("member {0:?} is listed twice")]
    DuplicateMember(String),
    #[error("meeting {id:?} of member {member:?} is listed twice")]
    DuplicateMeeting { id: String, member: String },
    #[error("a name of {0} bytes (member names and meeting ids have at most {MAX_NAME})")]
    NameTooLong(usize),
    #[error("meeting {id:?} claims {seconds} s in a period of {period} s")]
    MeetingLongerThanPeriod { id: String, seconds: u64, period: u64 },
    #[error("meeting {0:?} claims no time at all (a meeting is listed only for the time it ran)")]
    MeetingWithoutTime(String),
    #[error("member {member:?} claims {claimed} meeting-seconds but its meetings add up to {sum}")]
    MeetingSecondsMismatch { member: String, claimed: u64, sum: u64 },
    #[error("member {member:?} claims {seconds} participant-seconds; {cap} participants over {period} s allow {limit}")]
    TooManyParticipantSeconds {
        member: String,
        seconds: u64,
        cap: u32,
        period: u64,
        limit: u64,
    },
    #[error("the node claims {seconds} participant-seconds in all; {cap} participants over {period} s allow {limit}")]
    NodeTooManyParticipantSeconds {
        seconds: u64,
        cap: u32,
        period: u64,
        limit: u64,
    },
    #[error("member {member:?} claims a peak of {peak} participants; a node holds at most {cap}")]
    PeakAboveCap { member: String, peak: u32, cap: u32 },
    #[error("the node lists {0} members (at most {MAX_MEMBERS})")]
    TooManyMembers(usize),
    #[error("the node lists a member without a name")]
    UnnamedMember,
    #[error("gap {} to {} lies outside the report's period", utc(*from), utc(*to))]
    GapOutsidePeriod { from: i64, to: i64 },
}

/// Checks a report (already authenticated) against the limits at `now`.
/// A report in the form from before months (enrollment 0) may span a
/// month boundary; it is billed to the month it starts in, as then.
pub fn check(r: &Report, limits: Limits, now: i64) -> Result<(), Implausible> {
    if r.to > now.saturating_add(limits.clock_skew) {
        return Err(Implausible::FutureDated {
            to: r.to,
            now,
            skew: limits.clock_skew,
        });
    }
    let legacy = r.epoch == 0;
    let spans_ok = legacy && r.from <= r.to;
    if !spans_ok && !appliance_usage::month::within_one_month(r.from, r.to) {
        return Err(Implausible::SpansMonths { from: r.from, to: r.to });
    }
    // Within one month, so this fits easily.
    let period = r.to.saturating_sub(r.from).max(0) as u64;
    let cap = limits.max_participants;
    let allowed = period.saturating_mul(u64::from(cap));

    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    let mut seen_meetings = BTreeSet::new();
    for m in &r.meetings {
        if m.id.len() > MAX_NAME || m.member.len() > MAX_NAME {
            return Err(Implausible::NameTooLong(m.id.len().max(m.member.len())));
        }
        if !seen_meetings.insert((m.id.as_str(), m.member.as_str())) {
            return Err(Implausible::DuplicateMeeting {
                id: m.id.clone(),
                member: m.member.clone(),
            });
        }
        if m.seconds == 0 {
            return Err(Implausible::MeetingWithoutTime(m.id.clone()));
        }
        if m.seconds > period {
            return Err(Implausible::MeetingLongerThanPeriod {
                id: m.id.clone(),
                seconds: m.seconds,
                period,
            });
        }
        // Each term is at most the period's seconds: no overflow.
        let sum = sums.entry(m.member.as_str()).or_default();
        *sum = sum.saturating_add(m.seconds);
    }

    if r.members.len() > MAX_MEMBERS {
        return Err(Implausible::TooManyMembers(r.members.len()));
    }
    let mut listed = BTreeSet::new();
    for m in &r.members {
        if m.is_empty() {
            return Err(Implausible::UnnamedMember);
        }
        if m.len() > MAX_NAME {
            return Err(Implausible::NameTooLong(m.len()));
        }
        if !listed.insert(m.as_str()) {
            return Err(Implausible::DuplicateMember(m.clone()));
        }
    }

    let mut members = BTreeSet::new();
    let mut node_total: u64 = 0;
    for l in &r.usage {
        if l.member.len() > MAX_NAME {
            return Err(Implausible::NameTooLong(l.member.len()));
        }
        if !members.insert(l.member.as_str()) {
            return Err(Implausible::DuplicateMember(l.member.clone()));
        }
        let u = &l.usage;
        let sum = sums.remove(l.member.as_str()).unwrap_or(0);
        if u.meeting_seconds != sum {
            return Err(Implausible::MeetingSecondsMismatch {
                member: l.member.clone(),
                claimed: u.meeting_seconds,
                sum,
            });
        }
        if u.participant_seconds > allowed {
            return Err(Implausible::TooManyParticipantSeconds {
                member: l.member.clone(),
                seconds: u.participant_seconds,
                cap,
                period,
                limit: allowed,
            });
        }
        if u.peak_participants > cap {
            return Err(Implausible::PeakAboveCap {
                member: l.member.clone(),
                peak: u.peak_participants,
                cap,
            });
        }
        node_total = node_total.saturating_add(u.participant_seconds);
    }
    if node_total > allowed {
        return Err(Implausible::NodeTooManyParticipantSeconds {
            seconds: node_total,
            cap,
            period,
            limit: allowed,
        });
    }
    // Meetings of a member without a usage line claim seconds nobody is
    // charged for: the same mismatch.
    if let Some((member, sum)) = sums.into_iter().find(|(_, s)| *s > 0) {
        return Err(Implausible::MeetingSecondsMismatch {
            member: member.to_string(),
            claimed: 0,
            sum,
        });
    }
    if let Some(g) = r.gaps.iter().find(|g| g.from > g.to || g.from < r.from || g.to > r.to) {
        return Err(Implausible::GapOutsidePeriod { from: g.from, to: g.to });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use appliance_usage::protocol::{MeetingLine, MemberLine, Resources};
    use appliance_usage::{Gap, GapReason, MemberUsage, Month};

    use super::*;

    const LIMITS: Limits = Limits {
        max_participants: 1000,
        clock_skew: 600,
    };

    fn report(from: i64, to: i64) -> Report {
        Report {
            node_id: "n".into(),
            epoch: 1,
            seq_from: 1,
            seq_to: 1,
            from,
            to,
            firmware: "0.1.0".into(),
            usage: vec![MemberLine {
                member: "a".into(),
                usage: MemberUsage {
                    meeting_seconds: 300,
                    participant_seconds: 1500,
                    peak_participants: 5,
                },
            }],
            meetings: vec![MeetingLine {
                id: "m".into(),
                member: "a".into(),
                seconds: 300,
            }],
            gaps: vec![],
            resources: Resources::default(),
            health: "ok".into(),
            services: String::new(),
            update: None,
            members: vec![],
        }
    }

    #[test]
    fn refuses_what_the_period_cannot_hold() {
        let b = Month::parse("2026-11").unwrap().start();
        let now = b + 86_400;
        let ok = report(b, b + 300);
        assert_eq!(check(&ok, LIMITS, now), Ok(()));
        type Case = (&'static str, Box<dyn Fn(&mut Report)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                "2^63-1 meeting-seconds in one second",
                Box::new(|r| {
                    r.to = r.from + 1;
                    r.usage[0].usage.meeting_seconds = i64::MAX as u64;
                    r.meetings[0].seconds = i64::MAX as u64;
                }),
                "meeting \"m\" claims 9223372036854775807 s in a period of 1 s",
            ),
            (
                "u64::MAX participant-seconds",
                Box::new(|r| r.usage[0].usage.participant_seconds = u64::MAX),
                "member \"a\" claims 18446744073709551615 participant-seconds; 1000 participants over 300 s allow 300000",
            ),
            (
                "a peak above the cap",
                Box::new(|r| r.usage[0].usage.peak_participants = 1001),
                "member \"a\" claims a peak of 1001 participants; a node holds at most 1000",
            ),
            (
                "meeting-seconds that are not the sum of the meetings",
                Box::new(|r| r.usage[0].usage.meeting_seconds = 301),
                "member \"a\" claims 301 meeting-seconds but its meetings add up to 300",
            ),
            (
                "a meeting for a member without a usage line",
                Box::new(|r| r.meetings[0].member = "b".into()),
                "member \"a\" claims 300 meeting-seconds but its meetings add up to 0",
            ),
            (
                "future-dated beyond the clock skew",
                Box::new(move |r| {
                    r.from = now + 601 - 300;
                    r.to = now + 601;
                }),
                "its period ends at 2026-11-02 00:10:01 UTC, more than 600 s ahead of ops's clock (2026-11-02 00:00:00 UTC); is the node's clock right?",
            ),
            (
                "spanning a month boundary",
                Box::new(move |r| {
                    r.from = b - 100;
                    r.to = b + 200;
                }),
                "its period 2026-10-31 23:58:20 UTC to 2026-11-01 00:03:20 UTC spans a month boundary (a report covers one UTC month at most)",
            ),
            (
                "a member twice",
                Box::new(|r| {
                    let again = r.usage[0].clone();
                    r.usage.push(again);
                }),
                "member \"a\" is listed twice",
            ),
            (
                "a member twice in the node's list",
                Box::new(|r| r.members = vec!["a".into(), "b".into(), "a".into()]),
                "member \"a\" is listed twice",
            ),
            (
                "a member without a name in the node's list",
                Box::new(|r| r.members = vec![String::new()]),
                "the node lists a member without a name",
            ),
            (
                "more members than any node has",
                Box::new(|r| r.members = (0..10_001).map(|i| format!("m{i}")).collect()),
                "the node lists 10001 members (at most 10000)",
            ),
            (
                "an overlong member in the node's list",
                Box::new(|r| r.members = vec!["x".repeat(257)]),
                "a name of 257 bytes (member names and meeting ids have at most 256)",
            ),
            (
                "the node's total beyond the cap",
                Box::new(|r| {
                    r.usage[0].usage.participant_seconds = 200_000;
                    r.usage.push(MemberLine {
                        member: "b".into(),
                        usage: MemberUsage {
                            meeting_seconds: 0,
                            participant_seconds: 200_000,
                            peak_participants: 1,
                        },
                    });
                }),
                "the node claims 400000 participant-seconds in all; 1000 participants over 300 s allow 300000",
            ),
            (
                "a gap outside the period",
                Box::new(|r| {
                    r.gaps.push(Gap {
                        from: r.to - 10,
                        to: r.to + 10,
                        reason: GapReason::NoAnswer,
                    })
                }),
                "gap 2026-11-01 00:04:50 UTC to 2026-11-01 00:05:10 UTC lies outside the report's period",
            ),
            (
                "a meeting without time",
                Box::new(|r| {
                    r.meetings.push(MeetingLine {
                        id: "ghost".into(),
                        member: "a".into(),
                        seconds: 0,
                    })
                }),
                "meeting \"ghost\" claims no time at all (a meeting is listed only for the time it ran)",
            ),
            (
                "a name of 300 bytes",
                Box::new(|r| r.usage[0].member = "x".repeat(300)),
                "a name of 300 bytes (member names and meeting ids have at most 256)",
            ),
        ];
        for (name, change, want) in cases {
            let mut r = ok.clone();
            change(&mut r);
            match check(&r, LIMITS, now) {
                Err(e) => assert_eq!(e.to_string(), want, "{name}"),
                Ok(()) => panic!("{name}: accepted"),
            }
        }
    }

    #[test]
    fn accepts_the_edges_of_what_is_possible() {
        let b = Month::parse("2026-11").unwrap().start();
        let mut r = report(b - 300, b);
        r.usage[0].usage.participant_seconds = 300 * 1000;
        r.usage[0].usage.peak_participants = 1000;
        assert_eq!(check(&r, LIMITS, b), Ok(()), "a full node up to the boundary");
        let mut r = report(b + 600, b + 600 + 300);
        r.from = b + 900;
        r.to = b + 900;
        r.usage[0].usage = MemberUsage::default();
        r.meetings.clear();
        assert_eq!(
            check(&r, LIMITS, b + 300),
            Ok(()),
            "zero length, 600 s ahead: within the skew"
        );
    }
}
