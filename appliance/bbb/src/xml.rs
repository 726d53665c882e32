//! BBB's XML responses: parsing what the supervisor reads, and writing what
//! the stand-in answers, in the shapes bbb-web uses.

use std::collections::BTreeMap;

use crate::{Error, Meeting};

/// Escapes text for an XML element body.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A `FAILED` response, as bbb-web sends for a bad checksum and other errors.
pub fn failed(key: &str, message: &str) -> String {
    format!(
        "<response>\n<returncode>FAILED</returncode>\n<messageKey>{}</messageKey>\n<message>{}</message>\n</response>",
        escape(key),
        escape(message)
    )
}

fn child<'a>(n: roxmltree::Node<'a, 'a>, name: &str) -> Option<roxmltree::Node<'a, 'a>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text<'a>(n: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    child(n, name).map(|c| c.text().unwrap_or(""))
}

fn num(n: roxmltree::Node<'_, '_>, name: &str) -> u64 {
    text(n, name).and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// Returns the `<response>` root, or the BBB error it carries.
fn response(doc: &roxmltree::Document<'_>) -> Result<(), Error> {
    let root = doc.root_element();
    if !root.has_tag_name("response") {
        return Err(Error::Xml(format!(
            "root element is <{}>, not <response>",
            root.tag_name().name()
        )));
    }
    match text(root, "returncode").map(str::trim) {
        Some("SUCCESS") => Ok(()),
        Some(_) => Err(Error::Failed {
            key: text(root, "messageKey").unwrap_or("").trim().to_string(),
            message: text(root, "message").unwrap_or("").trim().to_string(),
        }),
        None => Err(Error::Missing("returncode")),
    }
}

/// Parses a `getMeetings` response. `noMeetings` is an empty list.
pub fn parse_get_meetings(body: &str) -> Result<Vec<Meeting>, Error> {
    let doc = roxmltree::Document::parse(body).map_err(|e| Error::Xml(e.to_string()))?;
    response(&doc)?;
    let root = doc.root_element();
    let Some(meetings) = child(root, "meetings") else {
        return Ok(Vec::new());
    };
    meetings
        .children()
        .filter(|n| n.has_tag_name("meeting"))
        .map(parse_meeting)
        .collect()
}

fn parse_meeting(m: roxmltree::Node<'_, '_>) -> Result<Meeting, Error> {
    let flag = |name: &str| text(m, name).is_some_and(|t| t.trim() == "true");
    let metadata: BTreeMap<String, String> = child(m, "metadata")
        .map(|md| {
            md.children()
                .filter(|c| c.is_element())
                .map(|c| {
                    (
                        c.tag_name().name().to_ascii_lowercase(),
                        c.text().unwrap_or("").trim().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let parent = text(m, "parentMeetingID")
        .map(|t| t.trim().to_string())
        .filter(|p| !p.is_empty() && p != "bbb-none");
    Ok(Meeting {
        meeting_id: text(m, "meetingID")
            .ok_or(Error::Missing("meetingID"))?
            .trim()
            .to_string(),
        internal_meeting_id: text(m, "internalMeetingID").unwrap_or("").trim().to_string(),
        name: text(m, "meetingName").unwrap_or("").trim().to_string(),
        running: flag("running"),
        create_time: num(m, "createTime"),
        start_time: num(m, "startTime"),
        end_time: num(m, "endTime"),
        participant_count: num(m, "participantCount") as u32,
        moderator_count: num(m, "moderatorCount") as u32,
        listener_count: num(m, "listenerCount") as u32,
        voice_participant_count: num(m, "voiceParticipantCount") as u32,
        video_count: num(m, "videoCount") as u32,
        is_breakout: flag("isBreakout"),
        parent_meeting_id: parent,
        metadata,
    })
}

/// Checks any response for SUCCESS, returning BBB's error otherwise.
pub fn check_success(body: &str) -> Result<(), Error> {
    let doc = roxmltree::Document::parse(body).map_err(|e| Error::Xml(e.to_string()))?;
    response(&doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like bbb-web 3.0's answer (trimmed attendee list).
    const TWO: &str = r#"<response>
<returncode>SUCCESS</returncode>
<meetings>
<meeting>
<meetingName>Board &amp; staff</meetingName>
<meetingID>board-1</meetingID>
<internalMeetingID>c8f9a1-1700000000000</internalMeetingID>
<createTime>1700000000000</createTime>
<createDate>Tue Nov 14 22:13:20 UTC 2023</createDate>
<voiceBridge>70066</voiceBridge>
<dialNumber>613-555-1234</dialNumber>
<running>true</running>
<duration>0</duration>
<hasUserJoined>true</hasUserJoined>
<recording>false</recording>
<hasBeenForciblyEnded>false</hasBeenForciblyEnded>
<startTime>1700000000123</startTime>
<endTime>0</endTime>
<participantCount>3</participantCount>
<listenerCount>1</listenerCount>
<voiceParticipantCount>2</voiceParticipantCount>
<videoCount>1</videoCount>
<maxUsers>0</maxUsers>
<moderatorCount>1</moderatorCount>
<attendees><attendee><userID>w_1</userID><fullName>A</fullName><role>MODERATOR</role></attendee></attendees>
<metadata>
<member>coop-a</member>
<bbb-origin>greenlight</bbb-origin>
</metadata>
<isBreakout>false</isBreakout>
</meeting>
<meeting>
<meetingName>Room 1</meetingName>
<meetingID>board-1-room1</meetingID>
<internalMeetingID>d00d-1700000100000</internalMeetingID>
<parentMeetingID>c8f9a1-1700000000000</parentMeetingID>
<createTime>1700000100000</createTime>
<running>true</running>
<startTime>1700000100000</startTime>
<endTime>0</endTime>
<participantCount>2</participantCount>
<moderatorCount>0</moderatorCount>
<metadata/>
<isBreakout>true</isBreakout>
</meeting>
</meetings>
</response>"#;

    #[test]
    fn parses_meetings_breakouts_and_metadata() {
        let m = parse_get_meetings(TWO).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "Board & staff");
        assert_eq!(m[0].participant_count, 3);
        assert_eq!(m[0].start_time, 1700000000123);
        assert_eq!(m[0].metadata.get("member").map(String::as_str), Some("coop-a"));
        assert_eq!(m[0].parent_meeting_id, None);
        assert!(m[1].is_breakout);
        assert_eq!(m[1].parent_meeting_id.as_deref(), Some("c8f9a1-1700000000000"));
    }

    #[test]
    fn empty_errors_and_garbage() {
        let none = "<response><returncode>SUCCESS</returncode><meetings/><messageKey>noMeetings</messageKey><message>no meetings were found on this server</message></response>";
        assert_eq!(parse_get_meetings(none).unwrap(), vec![]);
        let bad = failed("checksumError", "Checksums do not match");
        assert_eq!(
            parse_get_meetings(&bad).unwrap_err(),
            Error::Failed {
                key: "checksumError".into(),
                message: "Checksums do not match".into()
            }
        );
        assert!(matches!(
            parse_get_meetings("<html>502 Bad Gateway</html>"),
            Err(Error::Xml(_))
        ));
        assert!(matches!(parse_get_meetings("not xml"), Err(Error::Xml(_))));
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
    }
}
