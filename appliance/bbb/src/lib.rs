//! BigBlueButton's API as bbb-web speaks it: the checksum
//! `hex(H(callName + queryString + sharedSecret))`, signed request URLs,
//! and the XML responses (`getMeetings`, errors).
//!
//! Used by the supervisor (health check, meeting counts, usage polling)
//! and by the BBB stand-in under `tests/`, so both sides share one
//! definition of the checksum, checked against BBB's documented example.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha1::Digest;

pub mod xml;

/// The hash behind a checksum; bbb-web tells them apart by length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    /// The algorithm a checksum of this many hex characters was made with.
    pub fn from_hex_len(len: usize) -> Option<Algorithm> {
        match len {
            40 => Some(Algorithm::Sha1),
            64 => Some(Algorithm::Sha256),
            96 => Some(Algorithm::Sha384),
            128 => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub const ALL: [Algorithm; 4] = [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512];
}

/// `hex(H(call + query + secret))`, lowercase, as bbb-web computes it.
pub fn checksum(algo: Algorithm, call: &str, query: &str, secret: &str) -> String {
    let input = [call.as_bytes(), query.as_bytes(), secret.as_bytes()].concat();
    match algo {
        Algorithm::Sha1 => hex::encode(sha1::Sha1::digest(&input)),
        Algorithm::Sha256 => hex::encode(sha2::Sha256::digest(&input)),
        Algorithm::Sha384 => hex::encode(sha2::Sha384::digest(&input)),
        Algorithm::Sha512 => hex::encode(sha2::Sha512::digest(&input)),
    }
}

/// Splits the `checksum` parameter off a raw query string the way bbb-web
/// does: the rest must be hashed byte for byte as sent, so it is cut out
/// of the string rather than re-encoded.
pub fn split_checksum(query: &str) -> (String, Option<String>) {
    let mut checksum = None;
    let mut rest: Vec<&str> = Vec::new();
    for part in query.split('&') {
        match part.strip_prefix("checksum=") {
            Some(c) if checksum.is_none() => checksum = Some(c.to_string()),
            _ if part.is_empty() => {}
            _ => rest.push(part),
        }
    }
    (rest.join("&"), checksum)
}

/// Verifies a request's checksum as bbb-web does: the algorithm is chosen
/// by the checksum's length and must be one the server allows; comparison
/// ignores hex case.
pub fn verify(call: &str, raw_query: &str, secret: &str, allowed: &[Algorithm]) -> bool {
    let (query, sum) = split_checksum(raw_query);
    let Some(sum) = sum else { return false };
    let Some(algo) = Algorithm::from_hex_len(sum.len()) else {
        return false;
    };
    allowed.contains(&algo) && checksum(algo, call, &query, secret).eq_ignore_ascii_case(&sum)
}

/// Encodes parameters as BBB's clients do (form encoding, spaces as `+`).
pub fn encode_query(params: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The full signed URL of an API call. `base` ends in `/bigbluebutton/api`.
pub fn signed_url(base: &str, call: &str, params: &[(&str, &str)], secret: &str, algo: Algorithm) -> String {
    let query = encode_query(params);
    let sum = checksum(algo, call, &query, secret);
    let base = base.trim_end_matches('/');
    if query.is_empty() {
        format!("{base}/{call}?checksum={sum}")
    } else {
        format!("{base}/{call}?{query}&checksum={sum}")
    }
}

/// A meeting as `getMeetings` lists it, with what usage accounting needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meeting {
    pub meeting_id: String,
    pub internal_meeting_id: String,
    pub name: String,
    pub running: bool,
    /// Epoch milliseconds.
    pub create_time: u64,
    pub start_time: u64,
    pub end_time: u64,
    pub participant_count: u32,
    pub moderator_count: u32,
    pub listener_count: u32,
    pub voice_participant_count: u32,
    pub video_count: u32,
    pub is_breakout: bool,
    /// Internal id of the parent meeting, for breakout rooms.
    pub parent_meeting_id: Option<String>,
    /// `meta_*` values, keys lowercased as BBB returns them (no `meta_`).
    pub metadata: BTreeMap<String, String>,
}

/// The member organisation a meeting belongs to, from its `meta_<key>`
/// metadata (`key` lowercased, as BBB returns it). A breakout room belongs
/// to its parent meeting's member whatever tag it carries itself: BBB
/// creates rooms internally, often without the parent's metadata, and a
/// room is part of the meeting that opened it. Only when the parent is not
/// in `all` does a room's own tag count. `None`: nobody says.
pub fn member_of<'a>(all: &'a [Meeting], m: &'a Meeting, key: &str) -> Option<&'a str> {
    let own = |x: &'a Meeting| x.metadata.get(key).map(String::as_str).filter(|v| !v.is_empty());
    let parent = m
        .parent_meeting_id
        .as_ref()
        .and_then(|p| all.iter().find(|x| &x.internal_meeting_id == p));
    match parent {
        Some(p) => own(p),
        None => own(m),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("BBB answered with invalid XML: {0}")]
    Xml(String),
    #[error("BBB refused the call: {key}: {message}")]
    Failed { key: String, message: String },
    #[error("BBB response lacks {0}")]
    Missing(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of BBB's API documentation (docs.bigbluebutton.org,
    /// development/api, "Usage"): the create call and its SHA-1 checksum.
    #[test]
    fn documented_example() {
        let secret = "639259d4-9dd8-4b25-bf01-95f9567eaf4b";
        let query = "name=Test+Meeting&meetingID=abc123&attendeePW=111222&moderatorPW=333444";
        assert_eq!(
            checksum(Algorithm::Sha1, "create", query, secret),
            "1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17"
        );
        assert_eq!(
            checksum(Algorithm::Sha256, "getMeetings", "", secret),
            "a5370c5f3d97d56d53b435684cdbc429c2898a3bf9f435518b4279e1e0dbfc8c"
        );
        let raw = format!("{query}&checksum=1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17");
        assert!(verify("create", &raw, secret, &Algorithm::ALL));
        let upper = format!(
            "{query}&checksum={}",
            "1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17".to_uppercase()
        );
        assert!(verify("create", &upper, secret, &Algorithm::ALL), "hex case is ignored");
        // The URL our client builds is the documented one.
        let params = [
            ("name", "Test Meeting"),
            ("meetingID", "abc123"),
            ("attendeePW", "111222"),
            ("moderatorPW", "333444"),
        ];
        assert_eq!(
            signed_url(
                "https://h/bigbluebutton/api/",
                "create",
                &params,
                secret,
                Algorithm::Sha1
            ),
            format!("https://h/bigbluebutton/api/create?{query}&checksum=1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17")
        );
    }

    #[test]
    fn verification_refuses_what_bbb_web_refuses() {
        let s = "secret";
        let q = "meetingID=a+b";
        let good = checksum(Algorithm::Sha256, "getMeetingInfo", q, s);
        let cases = [
            (format!("{q}&checksum={good}"), &Algorithm::ALL[..], true, "correct"),
            (
                format!("checksum={good}&{q}"),
                &Algorithm::ALL[..],
                true,
                "checksum first",
            ),
            (q.to_string(), &Algorithm::ALL[..], false, "no checksum"),
            (
                format!("{q}&checksum={}", &good[..63]),
                &Algorithm::ALL[..],
                false,
                "odd length",
            ),
            (
                format!("meetingID=a%20b&checksum={good}"),
                &Algorithm::ALL[..],
                false,
                "re-encoded query",
            ),
            (
                format!("{q}&checksum={good}"),
                &[Algorithm::Sha1][..],
                false,
                "algorithm not allowed",
            ),
            (
                format!(
                    "{q}&checksum={}",
                    checksum(Algorithm::Sha256, "getMeetingInfo", q, "other")
                ),
                &Algorithm::ALL[..],
                false,
                "wrong secret",
            ),
            (
                format!("{q}&checksum={}", checksum(Algorithm::Sha256, "end", q, s)),
                &Algorithm::ALL[..],
                false,
                "other call",
            ),
        ];
        for (raw, allowed, want, name) in cases {
            assert_eq!(verify("getMeetingInfo", &raw, s, allowed), want, "{name}");
        }
    }

    #[test]
    fn breakout_rooms_belong_to_their_parents_member() {
        let meeting = |id: &str, member: Option<&str>, parent: Option<&str>| Meeting {
            meeting_id: id.into(),
            internal_meeting_id: format!("i-{id}"),
            name: id.into(),
            running: true,
            create_time: 0,
            start_time: 0,
            end_time: 0,
            participant_count: 1,
            moderator_count: 0,
            listener_count: 0,
            voice_participant_count: 0,
            video_count: 0,
            is_breakout: parent.is_some(),
            parent_meeting_id: parent.map(|p| format!("i-{p}")),
            metadata: member
                .map(|m| [("member".to_string(), m.to_string())].into())
                .unwrap_or_default(),
        };
        let all = vec![
            meeting("board", Some("coop-a"), None),
            meeting("room-untagged", None, Some("board")),
            meeting("room-tagged-other", Some("coop-b"), Some("board")),
            meeting("plain", None, None),
            meeting("room-of-plain", Some("coop-c"), Some("plain")),
            meeting("orphan", Some("coop-d"), Some("gone")),
            meeting("empty-tag", Some(""), None),
        ];
        let got: Vec<Option<&str>> = all.iter().map(|m| member_of(&all, m, "member")).collect();
        assert_eq!(
            got,
            [
                Some("coop-a"),
                Some("coop-a"),
                Some("coop-a"),
                None,
                None,
                Some("coop-d"),
                None
            ]
        );
    }
}
