//! The BBB API gateway's pure half: who signed a call, how it is rewritten
//! for bbb-web, and how bbb-web's answer is rewritten for the member.
//!
//! Isolation comes from the meeting ids: a member's `room1` is
//! `coop-a~room1` inside BBB, so another member asking for `room1` asks
//! for `coop-b~room1`, which is not there, and BBB itself answers
//! `notFound`. Only lists (getMeetings) need filtering.

use appliance_bbb::{Algorithm, checksum, split_checksum};
use subtle::ConstantTimeEq;

use crate::{Limits, Member, Members, limits};

/// Between a member's slug and its own meeting id inside BBB. Slugs never
/// contain it, so the first one splits.
pub const SEP: char = '~';

/// BBB's limit on a meeting id's length.
pub const MAX_MEETING_ID: usize = 256;

/// A BBB `FAILED` answer: a stable key a front end maps, and a message it
/// may show to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub key: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(key: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            key,
            message: message.into(),
        }
    }

    pub fn checksum() -> Refusal {
        Refusal::new("checksumError", "Checksums do not match")
    }

    pub fn xml(&self) -> String {
        appliance_bbb::xml::failed(self.key, &self.message)
    }
}

/// Who signed a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    Member(&'a Member),
    /// BBB's own secret: only BBB itself has it (breakout join links).
    Bbb,
}

fn hex_eq(expected: &str, given: &str) -> bool {
    // Lower case first: bbb-web ignores the checksum's case. The length is
    // public (it names the algorithm), the content is compared in constant
    // time so the answer's timing tells nothing about the right checksum.
    let given = given.to_ascii_lowercase();
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// Finds the member whose valid secret signed `raw_query` for `call`, as
/// bbb-web checks a checksum: over the raw query without `checksum=`, the
/// algorithm named by the checksum's length (SHA-1, 256, 384, 512).
pub fn authenticate<'a>(
    members: &'a Members,
    bbb_secret: &str,
    call: &str,
    raw_query: &str,
    now: i64,
) -> Result<Caller<'a>, Refusal> {
    let (query, sum) = split_checksum(raw_query);
    let sum = sum.ok_or_else(Refusal::checksum)?;
    let algo = Algorithm::from_hex_len(sum.len()).ok_or_else(Refusal::checksum)?;
    let ok = |secret: &str| hex_eq(&checksum(algo, call, &query, secret), &sum);
    // Every secret is tried, so the time taken does not say which matched.
    let mut found = None;
    for m in &members.members {
        for s in m.valid_secrets(now) {
            if ok(&s.value) && found.is_none() {
                found = Some(Caller::Member(m));
            }
        }
    }
    let bbb = ok(bbb_secret);
    match found {
        Some(c) => Ok(c),
        None if bbb => Ok(Caller::Bbb),
        None => Err(Refusal::checksum()),
    }
}

/// The member's meeting id inside BBB.
pub fn scope(slug: &str, id: &str) -> Result<String, Refusal> {
    let scoped = format!("{slug}{SEP}{id}");
    if id.chars().count() < 2 || scoped.chars().count() > MAX_MEETING_ID {
        return Err(Refusal::new(
            "sizeError",
            format!(
                "The meeting ID must be 2 to {} characters long on this server.",
                MAX_MEETING_ID - slug.chars().count() - 1
            ),
        ));
    }
    Ok(scoped)
}

/// The member's own id of a scoped one, if it is that member's.
pub fn unscope<'a>(slug: &str, scoped: &'a str) -> Option<&'a str> {
    scoped.strip_prefix(slug)?.strip_prefix(SEP)
}

/// The slug a scoped meeting id starts with.
pub fn owner_of(scoped: &str) -> Option<&str> {
    let (slug, _) = scoped.split_once(SEP)?;
    crate::check_slug(slug).ok().map(|()| slug)
}

/// The calls the gateway answers; anything else gets BBB's
/// `unsupportedRequest` (a call it does not know cannot be scoped).
pub const CALLS: &[&str] = &[
    "create",
    "join",
    "end",
    "isMeetingRunning",
    "getMeetingInfo",
    "getMeetings",
    "getRecordings",
    "publishRecordings",
    "deleteRecordings",
    "updateRecordings",
];

/// The recording calls that change recordings: each named recording must
/// be the member's.
pub const RECORDING_CHANGES: &[&str] = &["publishRecordings", "deleteRecordings", "updateRecordings"];

/// A member's call as bbb-web gets it (before signing with BBB's secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    pub params: Vec<(String, String)>,
    /// The scoped meeting id the call names, if any.
    pub meeting: Option<String>,
}

pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    let (q, _) = split_checksum(raw);
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

pub fn encode(params: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Rewrites a member's call: its meeting id scoped; on create the member
/// tag set by the gateway (the front end's own dropped, in any case: BBB
/// lower-cases metadata keys), the duration and `maxParticipants` capped by
/// the limits, and what would let a call reach outside the member
/// (breakout parents, a voice bridge shared with other members' meetings)
/// dropped so BBB picks its own.
pub fn rewrite(
    call: &str,
    params: Vec<(String, String)>,
    slug: &str,
    member_key: &str,
    limits: &Limits,
) -> Result<Rewritten, Refusal> {
    let tag = format!("meta_{member_key}");
    let mut out = Vec::with_capacity(params.len() + 2);
    let mut meeting = None;
    let mut duration = None;
    let mut max_people = None;
    for (k, v) in params {
        match k.as_str() {
            // getRecordings takes a comma list of meeting ids.
            "meetingID" if call == "getRecordings" => {
                let ids: Result<Vec<String>, Refusal> = v.split(',').map(|id| scope(slug, id)).collect();
                out.push((k, ids?.join(",")));
            }
            "meetingID" => {
                let s = scope(slug, &v)?;
                meeting = Some(s.clone());
                out.push((k, s));
            }
            "duration" if call == "create" => duration = Some(v.trim().parse::<u32>().unwrap_or(0)),
            "maxParticipants" if call == "create" => max_people = Some(v.trim().parse::<u32>().unwrap_or(0)),
            "isBreakout" | "parentMeetingID" | "voiceBridge" if call == "create" => {}
            // bbb-web writes each `userdata-NAME` into its answers as an
            // element named NAME: a name that is not an XML name would make
            // every getMeetings unreadable, for every member and the usage
            // poller alike.
            _ if k.starts_with("userdata-") && !xml_name(&k["userdata-".len()..]) => {}
            _ if matches!(call, "create" | "updateRecordings") && k.eq_ignore_ascii_case(&tag) => {}
            _ => out.push((k, v)),
        }
    }
    if meeting.is_none() && matches!(call, "create" | "join" | "end" | "isMeetingRunning" | "getMeetingInfo") {
        return Err(Refusal::new(
            "missingParamMeetingID",
            "You must specify a meeting ID for the meeting.",
        ));
    }
    if call == "create" {
        if let Some(d) = limits::duration(limits, duration) {
            out.push(("duration".into(), d.to_string()));
        }
        if let Some(p) = limits::max_participants(limits, max_people) {
            out.push(("maxParticipants".into(), p.to_string()));
        }
        out.push((tag, slug.to_string()));
    }
    Ok(Rewritten { params: out, meeting })
}

/// A name bbb-web can write as an element: a letter or `_`, then letters,
/// digits, `_` or `-`.
fn xml_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Calls of BBB's HTML5 client under the API path, authenticated by the
/// session token bbb-web gave the browser at join (no checksum, nobody's
/// secret): not the gateway's to scope, passed on unchanged.
pub const SESSION_CALLS: &[&str] = &[
    "enter",
    "stuns",
    "signOut",
    "guestWait",
    "feedback",
    "learningDashboard",
];

/// bbb-web's answer with the member's own meeting ids in place of the
/// scoped ones. Only the ids of `<meetingID>` elements change; the rest is
/// passed on byte for byte. Not XML (e.g. an HTML error page from nginx):
/// passed on as it is.
pub fn unscope_response(body: &str, slug: &str) -> String {
    let Ok(doc) = roxmltree::Document::parse(body) else {
        return body.to_string();
    };
    let prefix = format!("{slug}{SEP}");
    let mut cuts: Vec<std::ops::Range<usize>> = Vec::new();
    // `meetingId` is how BBB names it in a recording's metadata.
    for n in doc
        .descendants()
        .filter(|n| n.has_tag_name("meetingID") || n.has_tag_name("meetingId"))
    {
        if let Some(t) = n.first_child().filter(|c| c.is_text()) {
            let r = t.range();
            if body[r.clone()].starts_with(&prefix) {
                cuts.push(r.start..r.start + prefix.len());
            }
        }
    }
    splice(body, &cuts)
}

/// What a member gets in place of a list it cannot be given safely: an
/// answer that cannot be read (not XML, or XML the gateway cannot sort
/// by owner) holds everyone's meetings or recordings, so none of it goes
/// out.
pub const UNREADABLE: &str = "<response>\n<returncode>FAILED</returncode>\n<messageKey>internalError</messageKey>\n<message>BigBlueButton's answer could not be read.</message>\n</response>";

/// A list answer passed on only when it lists nothing: BBB's own errors
/// (`FAILED`, `noMeetings`) hold no one's meetings or recordings.
fn without_list(doc: &roxmltree::Document<'_>, body: &str, item: &str) -> String {
    if doc.descendants().any(|n| n.has_tag_name(item)) {
        UNREADABLE.to_string()
    } else {
        body.to_string()
    }
}

/// A getMeetings answer with only the member's meetings (and their
/// breakout rooms), ids unscoped; `noMeetings` as BBB says it when none is
/// left. Fails closed: an answer it cannot sort gives nothing away.
pub fn filter_meetings(body: &str, slug: &str) -> String {
    let Ok(doc) = roxmltree::Document::parse(body) else {
        return UNREADABLE.to_string();
    };
    let Some(list) = doc.root_element().children().find(|n| n.has_tag_name("meetings")) else {
        return without_list(&doc, body, "meeting");
    };
    let parsed = match appliance_bbb::xml::parse_get_meetings(body) {
        Ok(m) => m,
        Err(_) => return UNREADABLE.to_string(),
    };
    if parsed.len() != list.children().filter(|n| n.has_tag_name("meeting")).count() {
        return UNREADABLE.to_string();
    }
    let mut drop: Vec<std::ops::Range<usize>> = Vec::new();
    let mut kept = 0;
    for (node, m) in list.children().filter(|n| n.has_tag_name("meeting")).zip(&parsed) {
        if limits::meeting_owner(&parsed, m) == Some(slug) {
            kept += 1;
        } else {
            drop.push(node.range());
        }
    }
    if kept == 0 {
        return NO_MEETINGS.to_string();
    }
    unscope_response(&splice(body, &drop), slug)
}

/// A getRecordings answer with only the member's recordings, ids
/// unscoped; `noRecordings` as BBB says it when none is left. (A recording
/// named by recordID is BBB's to find; whose it is, is ours to check.)
/// Fails closed, as [`filter_meetings`].
pub fn filter_recordings(body: &str, slug: &str) -> String {
    let Ok(doc) = roxmltree::Document::parse(body) else {
        return UNREADABLE.to_string();
    };
    let Some(list) = doc.root_element().children().find(|n| n.has_tag_name("recordings")) else {
        return without_list(&doc, body, "recording");
    };
    let mut drop = Vec::new();
    let mut kept = 0;
    for r in list.children().filter(|n| n.has_tag_name("recording")) {
        let mid = r
            .children()
            .find(|c| c.has_tag_name("meetingID"))
            .and_then(|c| c.text())
            .unwrap_or("");
        if owner_of(mid.trim()) == Some(slug) {
            kept += 1;
        } else {
            drop.push(r.range());
        }
    }
    if kept == 0 {
        return NO_RECORDINGS.to_string();
    }
    unscope_response(&splice(body, &drop), slug)
}

/// Whether every recording in a getRecordings answer for `ids` was found
/// and is the member's: what a publish, update or delete may act on.
pub fn recordings_owned(body: &str, slug: &str, ids: &[&str]) -> bool {
    let Ok(doc) = roxmltree::Document::parse(body) else {
        return false;
    };
    let text = |n: roxmltree::Node<'_, '_>, name: &str| -> String {
        n.children()
            .find(|c| c.has_tag_name(name))
            .and_then(|c| c.text())
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let found: Vec<(String, String)> = doc
        .descendants()
        .filter(|n| n.has_tag_name("recording"))
        .map(|r| (text(r, "recordID"), text(r, "meetingID")))
        .collect();
    !ids.is_empty()
        && ids
            .iter()
            .all(|id| found.iter().any(|(r, m)| r == id && owner_of(m) == Some(slug)))
}

/// What BBB answers for recordings it cannot find.
pub fn no_such_recordings() -> Refusal {
    Refusal::new("notFound", "We could not find recordings")
}

/// bbb-web's getRecordings answer when there are none.
pub const NO_RECORDINGS: &str = "<response>\n<returncode>SUCCESS</returncode>\n<recordings></recordings>\n<messageKey>noRecordings</messageKey>\n<message>There are no recordings for the meeting(s).</message>\n</response>";

/// bbb-web's getMeetings answer when nothing runs.
pub const NO_MEETINGS: &str = "<response>\n<returncode>SUCCESS</returncode>\n<meetings/>\n<messageKey>noMeetings</messageKey>\n<message>no meetings were found on this server</message>\n</response>";

/// `body` without the byte ranges in `cuts` (sorted, not overlapping).
fn splice(body: &str, cuts: &[std::ops::Range<usize>]) -> String {
    let mut out = String::with_capacity(body.len());
    let mut at = 0;
    for c in cuts {
        out.push_str(&body[at..c.start]);
        at = c.end;
    }
    out.push_str(&body[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_bbb::encode_query;

    fn members() -> Members {
        let mut m = Members::default();
        m.add("coop-a", "A", Limits::default(), "secret-a".into(), 0).unwrap();
        m.add("coop-b", "B", Limits::default(), "secret-b".into(), 0).unwrap();
        m.rotate("coop-b", "secret-b2".into(), 100, 1000).unwrap();
        m
    }

    fn signed(call: &str, q: &str, secret: &str, algo: Algorithm) -> String {
        format!("{q}&checksum={}", checksum(algo, call, q, secret))
    }

    #[test]
    fn every_algorithm_and_secret_identifies_its_member() {
        let m = members();
        let q = "meetingID=r1&fullName=Ann+B";
        for algo in Algorithm::ALL {
            for (secret, now, want) in [
                ("secret-a", 0, Some("coop-a")),
                ("secret-b", 1050, Some("coop-b")),
                ("secret-b2", 1050, Some("coop-b")),
                ("secret-b", 1100, None),
                ("secret-b2", 5000, Some("coop-b")),
                ("nobody", 0, None),
            ] {
                let got = authenticate(&m, "bbb", "join", &signed("join", q, secret, algo), now);
                match (got, want) {
                    (Ok(Caller::Member(mm)), Some(w)) => assert_eq!(mm.slug, w),
                    (Err(e), None) => assert_eq!(e.key, "checksumError"),
                    (g, w) => panic!("{algo:?} {secret} {now}: {g:?}, wanted {w:?}"),
                }
            }
        }
        let upper = signed("join", q, "secret-a", Algorithm::Sha256).to_uppercase();
        let upper = format!("{q}&checksum={}", upper.rsplit('=').next().unwrap());
        assert!(authenticate(&m, "bbb", "join", &upper, 0).is_ok(), "hex case ignored");
        assert_eq!(
            authenticate(&m, "bbb", "join", &signed("join", q, "bbb", Algorithm::Sha1), 0),
            Ok(Caller::Bbb)
        );
        for bad in [q.to_string(), format!("{q}&checksum=abc"), format!("{q}&checksum=")] {
            assert_eq!(
                authenticate(&m, "bbb", "join", &bad, 0),
                Err(Refusal::checksum()),
                "{bad}"
            );
        }
        // Signed for another call: refused.
        assert!(authenticate(&m, "bbb", "end", &signed("join", q, "secret-a", Algorithm::Sha1), 0).is_err());
    }

    #[test]
    fn ids_are_scoped_and_unscoped() {
        assert_eq!(scope("coop-a", "room 1").unwrap(), "coop-a~room 1");
        assert_eq!(unscope("coop-a", "coop-a~room 1"), Some("room 1"));
        assert_eq!(unscope("coop-a", "coop-ab~room"), None);
        assert_eq!(unscope("coop-a", "coop-b~room"), None);
        assert_eq!(owner_of("coop-a~x~y"), Some("coop-a"));
        assert_eq!(owner_of("plain"), None);
        assert_eq!(owner_of("Not A Slug~x"), None);
        assert_eq!(scope("coop-a", "x").unwrap_err().key, "sizeError");
        assert!(scope("coop-a", &"x".repeat(249)).is_ok());
        assert_eq!(scope("coop-a", &"x".repeat(250)).unwrap_err().key, "sizeError");
    }

    fn pairs(q: &str) -> Vec<(String, String)> {
        parse_query(q)
    }

    #[test]
    fn create_is_rewritten_with_the_tag_and_the_caps() {
        let limits = Limits {
            participants: Some(25),
            rooms: Some(2),
            duration_minutes: Some(60),
        };
        let q = encode_query(&[
            ("name", "Board"),
            ("meetingID", "r1"),
            ("meta_Member", "coop-b"),
            ("meta_member", "coop-b"),
            ("meta_other", "kept"),
            ("duration", "600"),
            ("maxParticipants", "0"),
            ("voiceBridge", "70001"),
            ("isBreakout", "true"),
            ("parentMeetingID", "coop-b~r9"),
        ]);
        let r = rewrite("create", pairs(&q), "coop-a", "member", &limits).unwrap();
        assert_eq!(r.meeting.as_deref(), Some("coop-a~r1"));
        let got: Vec<(&str, &str)> = r.params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            [
                ("name", "Board"),
                ("meetingID", "coop-a~r1"),
                ("meta_other", "kept"),
                ("duration", "60"),
                ("maxParticipants", "25"),
                ("meta_member", "coop-a"),
            ]
        );
        // No limits: nothing added but the tag.
        let r = rewrite(
            "create",
            pairs("meetingID=r1&name=x"),
            "coop-a",
            "member",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(encode(&r.params), "meetingID=coop-a%7Er1&name=x&meta_member=coop-a");
        // Other calls keep every parameter but the id.
        let r = rewrite(
            "join",
            pairs("meetingID=r1&fullName=A&duration=5&meta_member=x"),
            "coop-a",
            "member",
            &limits,
        )
        .unwrap();
        assert_eq!(
            encode(&r.params),
            "meetingID=coop-a%7Er1&fullName=A&duration=5&meta_member=x"
        );
        // User data bbb-web would write as elements: only XML names go on.
        let r = rewrite(
            "join",
            pairs("meetingID=r1&userdata-bbb_auto_join_audio=true&userdata-1=x&userdata-a:b=y&userdata-=z&userdata-x%3Cy=w"),
            "coop-a",
            "member",
            &limits,
        )
        .unwrap();
        assert_eq!(
            encode(&r.params),
            "meetingID=coop-a%7Er1&userdata-bbb_auto_join_audio=true"
        );
        assert_eq!(
            rewrite("end", pairs("password=x"), "coop-a", "member", &limits)
                .unwrap_err()
                .key,
            "missingParamMeetingID"
        );
        assert!(
            rewrite("getMeetings", vec![], "coop-a", "member", &limits)
                .unwrap()
                .meeting
                .is_none()
        );
    }

    const MEETINGS: &str = "<response>\n<returncode>SUCCESS</returncode>\n<meetings>\n<meeting>\n<meetingName>A</meetingName>\n<meetingID>coop-a~r1</meetingID>\n<internalMeetingID>i1</internalMeetingID>\n<participantCount>2</participantCount>\n<isBreakout>false</isBreakout>\n</meeting>\n<meeting>\n<meetingName>B</meetingName>\n<meetingID>coop-b~r1</meetingID>\n<internalMeetingID>i2</internalMeetingID>\n<participantCount>1</participantCount>\n<isBreakout>false</isBreakout>\n</meeting>\n<meeting>\n<meetingName>A (Room 1)</meetingName>\n<meetingID>i1-1</meetingID>\n<internalMeetingID>i3</internalMeetingID>\n<participantCount>1</participantCount>\n<isBreakout>true</isBreakout>\n<parentMeetingID>i1</parentMeetingID>\n</meeting>\n</meetings>\n</response>";

    #[test]
    fn each_member_sees_its_meetings_only() {
        let a = filter_meetings(MEETINGS, "coop-a");
        let ids: Vec<String> = appliance_bbb::xml::parse_get_meetings(&a)
            .unwrap()
            .into_iter()
            .map(|m| m.meeting_id)
            .collect();
        assert_eq!(ids, ["r1", "i1-1"]);
        assert!(!a.contains("coop-b") && !a.contains("coop-a~"), "{a}");
        let b = filter_meetings(MEETINGS, "coop-b");
        let ids: Vec<String> = appliance_bbb::xml::parse_get_meetings(&b)
            .unwrap()
            .into_iter()
            .map(|m| m.meeting_id)
            .collect();
        assert_eq!(ids, ["r1"]);
        let c = filter_meetings(MEETINGS, "coop-c");
        assert_eq!(c, NO_MEETINGS);
        assert!(appliance_bbb::xml::parse_get_meetings(&c).unwrap().is_empty());
        // Answers it cannot sort give nothing away; BBB's own errors pass.
        assert_eq!(
            filter_meetings("<html>bad gateway</html>", "coop-a"),
            "<html>bad gateway</html>"
        );
        assert_eq!(filter_meetings("<html>bad gateway<br></html>", "coop-a"), UNREADABLE);
        let broken = MEETINGS.replace("<isBreakout>false</isBreakout>", "<1>x</1>");
        assert_eq!(filter_meetings(&broken, "coop-a"), UNREADABLE);
        let failed = "<response>\n<returncode>FAILED</returncode>\n<messageKey>x</messageKey>\n</response>";
        assert_eq!(filter_meetings(failed, "coop-a"), failed);
        let stray =
            "<response><returncode>SUCCESS</returncode><meeting><meetingID>coop-b~r</meetingID></meeting></response>";
        assert_eq!(filter_meetings(stray, "coop-a"), UNREADABLE);
    }

    const RECORDINGS: &str = "<response>\n<returncode>SUCCESS</returncode>\n<recordings>\n<recording>\n<recordID>r1</recordID>\n<meetingID>coop-a~room</meetingID>\n<metadata>\n<meetingId>coop-a~room</meetingId>\n<member>coop-a</member>\n</metadata>\n</recording>\n<recording>\n<recordID>r2</recordID>\n<meetingID>coop-b~room</meetingID>\n<metadata>\n<meetingId>coop-b~room</meetingId>\n</metadata>\n</recording>\n</recordings>\n</response>";

    #[test]
    fn recordings_are_each_members_own() {
        let a = filter_recordings(RECORDINGS, "coop-a");
        assert!(a.contains("<recordID>r1</recordID>") && !a.contains("r2"), "{a}");
        assert!(
            a.contains("<meetingID>room</meetingID>") && a.contains("<meetingId>room</meetingId>"),
            "{a}"
        );
        assert_eq!(filter_recordings(RECORDINGS, "coop-c"), NO_RECORDINGS);
        assert_eq!(filter_recordings("502 Bad Gateway", "coop-a"), UNREADABLE);
        assert_eq!(
            filter_recordings(&RECORDINGS.replace("</metadata>", "<a:b>x</metadata>"), "coop-a"),
            UNREADABLE
        );
        assert!(recordings_owned(RECORDINGS, "coop-a", &["r1"]));
        assert!(
            !recordings_owned(RECORDINGS, "coop-a", &["r1", "r2"]),
            "one of them is b's"
        );
        assert!(!recordings_owned(RECORDINGS, "coop-a", &["r3"]), "not there");
        assert!(!recordings_owned(RECORDINGS, "coop-a", &[]));
        let r = rewrite(
            "getRecordings",
            pairs("meetingID=x1,y1&meta_member=coop-b"),
            "coop-a",
            "member",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            encode(&r.params),
            "meetingID=coop-a%7Ex1%2Ccoop-a%7Ey1&meta_member=coop-b"
        );
        let r = rewrite(
            "updateRecordings",
            pairs("recordID=r1&meta_Member=coop-b&meta_gl-listed=true"),
            "coop-a",
            "member",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(
            encode(&r.params),
            "recordID=r1&meta_gl-listed=true",
            "the tag is not the member's to change"
        );
    }

    #[test]
    fn answers_name_the_members_own_id() {
        let body = "<response>\n<returncode>SUCCESS</returncode>\n<meetingID>coop-a~r&amp;1</meetingID>\n<internalMeetingID>x</internalMeetingID>\n</response>";
        assert_eq!(
            unscope_response(body, "coop-a"),
            body.replace("coop-a~r&amp;1", "r&amp;1")
        );
        assert_eq!(unscope_response(body, "coop-b"), body, "not coop-b's: untouched");
    }
}
