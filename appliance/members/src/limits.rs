//! What a member's limits allow: pure decisions over the live meetings
//! (BBB's getMeetings, taken just before the decision).

use appliance_bbb::Meeting;

use crate::Limits;
use crate::gateway::{Refusal, owner_of};

/// A member's share of the live meetings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Its meetings, created or running; breakout rooms are not rooms.
    pub rooms: u32,
    /// Participants in its meetings and their breakout rooms.
    pub participants: u32,
}

/// The member a live meeting belongs to: its scoped id's owner, or for a
/// breakout room (which BBB creates itself, with an id of its own) its
/// parent's.
pub fn meeting_owner<'a>(all: &'a [Meeting], m: &'a Meeting) -> Option<&'a str> {
    if m.is_breakout || m.parent_meeting_id.is_some() {
        let parent = m.parent_meeting_id.as_ref()?;
        return all
            .iter()
            .find(|p| &p.internal_meeting_id == parent)
            .and_then(|p| owner_of(&p.meeting_id));
    }
    owner_of(&m.meeting_id)
}

pub fn usage(slug: &str, live: &[Meeting]) -> Usage {
    let mut u = Usage::default();
    for m in live {
        if meeting_owner(live, m) != Some(slug) {
            continue;
        }
        if !m.is_breakout {
            u.rooms += 1;
        }
        u.participants += m.participant_count;
    }
    u
}

/// `create`: a meeting that exists already is BBB's business (it answers
/// with duplicateWarning or idNotUnique); a new one needs a free room.
pub fn create(limits: &Limits, usage: &Usage, exists: bool) -> Result<(), Refusal> {
    match limits.rooms {
        Some(max) if !exists && usage.rooms >= max => Err(Refusal::new(
            "maxConcurrent",
            format!(
                "Number of concurrent meetings allowed has been reached. This organisation may run {max} meeting{} at once on this server.",
                if max == 1 { "" } else { "s" }
            ),
        )),
        _ => Ok(()),
    }
}

/// `join`: one more participant must fit the member's limit.
pub fn join(limits: &Limits, usage: &Usage) -> Result<(), Refusal> {
    match limits.participants {
        Some(max) if usage.participants >= max => Err(Refusal::new(
            "maxParticipantsReached",
            format!(
                "The number of participants allowed for this meeting has been reached. This organisation may have {max} participant{} at once on this server.",
                if max == 1 { "" } else { "s" }
            ),
        )),
        _ => Ok(()),
    }
}

/// The `duration` (minutes) a create carries to BBB: at most the limit;
/// no duration or 0 means "no end" to BBB, so it becomes the limit.
pub fn duration(limits: &Limits, asked: Option<u32>) -> Option<u32> {
    match (limits.duration_minutes, asked) {
        (Some(max), Some(a)) if a > 0 && a <= max => Some(a),
        (Some(max), _) => Some(max),
        (None, a) => a,
    }
}

/// The `maxParticipants` a create carries: BBB's own check as a backstop
/// for one meeting, never above the member's limit (0 is "no limit").
pub fn max_participants(limits: &Limits, asked: Option<u32>) -> Option<u32> {
    match (limits.participants, asked) {
        (Some(max), Some(a)) if a > 0 && a <= max => Some(a),
        (Some(max), _) => Some(max),
        (None, a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meeting(id: &str, internal: &str, people: u32, parent: Option<&str>) -> Meeting {
        Meeting {
            meeting_id: id.into(),
            internal_meeting_id: internal.into(),
            participant_count: people,
            is_breakout: parent.is_some(),
            parent_meeting_id: parent.map(Into::into),
            running: true,
            ..Meeting::default()
        }
    }

    fn live() -> Vec<Meeting> {
        vec![
            meeting("ca~r1", "i1", 3, None),
            meeting("ca~r2", "i2", 0, None),
            meeting("r1-breakout-1", "i3", 2, Some("i1")),
            meeting("cb~r1", "i4", 5, None),
            meeting("legacy", "i5", 7, None),
            meeting("orphan", "i6", 1, Some("gone")),
        ]
    }

    #[test]
    fn usage_counts_rooms_and_people_with_breakouts_at_their_parent() {
        let l = live();
        assert_eq!(
            usage("ca", &l),
            Usage {
                rooms: 2,
                participants: 5
            }
        );
        assert_eq!(
            usage("cb", &l),
            Usage {
                rooms: 1,
                participants: 5
            }
        );
        assert_eq!(usage("cc", &l), Usage::default());
        assert_eq!(meeting_owner(&l, &l[4]), None, "no member prefix: nobody's");
        assert_eq!(meeting_owner(&l, &l[5]), None, "a breakout whose parent is gone");
    }

    #[test]
    fn decisions() {
        let lim = |p, r, d| Limits {
            participants: p,
            rooms: r,
            duration_minutes: d,
        };
        let u = |rooms, participants| Usage { rooms, participants };
        // (limits, usage, exists) -> create allowed
        for (l, us, exists, ok) in [
            (lim(None, None, None), u(100, 1000), false, true),
            (lim(None, Some(2), None), u(1, 0), false, true),
            (lim(None, Some(2), None), u(2, 0), false, false),
            (lim(None, Some(2), None), u(2, 0), true, true),
            (lim(None, Some(2), None), u(3, 0), false, false),
        ] {
            let r = create(&l, &us, exists);
            assert_eq!(r.is_ok(), ok, "{l:?} {us:?} {exists}");
            if let Err(e) = r {
                assert_eq!(e.key, "maxConcurrent");
                assert!(e.message.contains("2 meetings at once"), "{}", e.message);
            }
        }
        for (l, us, ok) in [
            (lim(None, None, None), u(0, 10_000), true),
            (lim(Some(10), None, None), u(0, 9), true),
            (lim(Some(10), None, None), u(0, 10), false),
            (lim(Some(1), None, None), u(0, 1), false),
        ] {
            let r = join(&l, &us);
            assert_eq!(r.is_ok(), ok, "{l:?} {us:?}");
            if let Err(e) = r {
                assert_eq!(e.key, "maxParticipantsReached");
            }
        }
        for (l, asked, want) in [
            (lim(None, None, None), None, None),
            (lim(None, None, None), Some(500), Some(500)),
            (lim(None, None, Some(90)), None, Some(90)),
            (lim(None, None, Some(90)), Some(0), Some(90)),
            (lim(None, None, Some(90)), Some(45), Some(45)),
            (lim(None, None, Some(90)), Some(600), Some(90)),
        ] {
            assert_eq!(duration(&l, asked), want, "{l:?} {asked:?}");
        }
        assert_eq!(max_participants(&lim(Some(50), None, None), Some(0)), Some(50));
        assert_eq!(max_participants(&lim(Some(50), None, None), Some(20)), Some(20));
        assert_eq!(max_participants(&lim(None, None, None), Some(20)), Some(20));
    }
}
