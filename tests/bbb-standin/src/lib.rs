//! A stand-in for bbb-web's API, for tests and the lab image.
//!
//! BigBlueButton itself needs Ubuntu and BBB's own package repository, so
//! it cannot run here. This server speaks its API byte for byte where our
//! code depends on it: the same calls under `/bigbluebutton/api`, checksums
//! verified exactly as bbb-web does (SHA-1/256/384/512 chosen by length,
//! over the raw query string), and XML responses shaped like bbb-web 3.0's,
//! including its error keys (`checksumError`, `notFound`,
//! `missingParamMeetingID`, `noMeetings`).
//!
//! Where it differs, by design:
//! - `join` makes the user present at once (in BBB the browser client has
//!   to connect first); `redirect=false` gives the XML answer, otherwise a
//!   302 to a client URL that does not exist here.
//! - Users leave through `POST /standin/leave?meetingID=..&userID=..`, which
//!   is not part of BBB's API.
//! - Meetings can be scripted: a TOML timeline of create/join/leave/end
//!   events (see [`Script`]), played in real time or on a virtual clock
//!   that a test moves (`POST /standin/advance?to=`), which also shows in
//!   the `Date` header as BBB's clock does.
//! - `POST /standin/fail?on=1` makes the API answer 503, as bbb-web down
//!   behind nginx would.
//! - Recordings exist at once when a meeting made with `record=true`
//!   ends (BBB processes them first), published, with one presentation
//!   playback URL that leads nowhere; getRecordings filters by recordID,
//!   else meetingID (comma lists), and `meta_` parameters.
//! - A form body of a POST adds parameters, as bbb-web's do; one that is
//!   also in the query is a checksumError.
//! - `duration` and `maxParticipants` are honoured as BBB does: a meeting
//!   ends (with its breakout rooms) when its minutes are up on the
//!   stand-in's clock, and a join beyond `maxParticipants` gets
//!   `maxParticipantsReached` (as XML, also without `redirect=false`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance_bbb::Algorithm;
use appliance_bbb::xml::{escape, failed};
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub name: String,
    pub moderator: bool,
    pub listen_only: bool,
    pub video: bool,
    /// `userdata-NAME=VALUE` from join: bbb-web writes each into its
    /// answers as `<NAME>VALUE</NAME>` under `<customdata>`, the name as
    /// given (so a name that is not an XML name breaks the answer, as
    /// there).
    pub custom: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Meeting {
    pub id: String,
    pub internal_id: String,
    pub name: String,
    pub attendee_pw: String,
    pub moderator_pw: String,
    pub create_time: u64,
    pub voice_bridge: u32,
    pub metadata: BTreeMap<String, String>,
    pub parent_internal_id: Option<String>,
    pub sequence: u32,
    pub users: Vec<User>,
    pub has_user_joined: bool,
    /// Minutes from create after which BBB ends the meeting (0: never).
    pub duration: u32,
    /// Users at once (0: no limit), as BBB checks it on join.
    pub max_participants: u32,
    /// `record=true`: a recording is left when it ends.
    pub record: bool,
}

#[derive(Debug, Default)]
pub struct World {
    pub meetings: BTreeMap<String, Meeting>,
    /// By record id (the meeting's internal id, as BBB names them).
    pub recordings: BTreeMap<String, Recording>,
    next_user: u64,
    next_bridge: u32,
}

/// A recording, made at once when a meeting created with `record=true`
/// ends (BBB processes it for minutes first).
#[derive(Debug, Clone)]
pub struct Recording {
    pub id: String,
    pub meeting_id: String,
    pub internal_meeting_id: String,
    pub name: String,
    pub published: bool,
    pub start_time: u64,
    pub end_time: u64,
    pub participants: usize,
    /// Lower-case keys without `meta_`; BBB adds `meetingId` and
    /// `meetingName`.
    pub metadata: BTreeMap<String, String>,
}

impl World {
    /// Ends a meeting and its breakout rooms, leaving a recording of each
    /// that asked for one.
    fn finish(&mut self, internal_id: &str, now_ms: u64) {
        let gone: Vec<Meeting> = self
            .meetings
            .values()
            .filter(|m| m.internal_id == internal_id || m.parent_internal_id.as_deref() == Some(internal_id))
            .cloned()
            .collect();
        for m in gone {
            self.meetings.remove(&m.id);
            if !m.record {
                continue;
            }
            let mut metadata = m.metadata.clone();
            metadata.insert("meetingId".into(), m.id.clone());
            metadata.insert("meetingName".into(), m.name.clone());
            self.recordings.insert(
                m.internal_id.clone(),
                Recording {
                    id: m.internal_id.clone(),
                    meeting_id: m.id.clone(),
                    internal_meeting_id: m.internal_id.clone(),
                    name: m.name.clone(),
                    published: true,
                    start_time: m.create_time,
                    end_time: now_ms,
                    participants: m.users.len(),
                    metadata,
                },
            );
        }
    }
}

/// Time as the stand-in tells it: the real clock, or a virtual one that a
/// test moves forward (`POST /standin/advance?to=UNIX_SECONDS`), applying
/// the script's events on the way. BBB's own clock shows in its HTTP
/// `Date` header and its createTime fields.
#[derive(Debug, Default)]
struct Clock {
    /// Unix seconds of the virtual clock; `None` for real time.
    virtual_now: Option<i64>,
    /// Virtual start (script times are relative to it).
    start: i64,
    /// Script events not applied yet, sorted by time.
    pending: Vec<Event>,
    /// While set, the API answers 503 (bbb-web down behind nginx).
    failing: bool,
}

#[derive(Clone)]
pub struct StandIn {
    secret: Arc<String>,
    world: Arc<Mutex<World>>,
    clock: Arc<Mutex<Clock>>,
    /// The time a create made now would carry (epoch ms), set under the
    /// clock's lock before each call.
    created_ms: Arc<std::sync::atomic::AtomicU64>,
    /// API calls answered, for tests that count polls.
    calls: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StandIn")
    }
}

fn real_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml;charset=utf-8")], body).into_response()
}

fn params(raw: &str) -> BTreeMap<String, String> {
    form_urlencoded::parse(raw.as_bytes()).into_owned().collect()
}

/// A numeric parameter; absent or not a number is 0, as bbb-web reads it.
fn number(p: &BTreeMap<String, String>, key: &str) -> u32 {
    p.get(key).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn tag(name: &str, value: impl std::fmt::Display) -> String {
    format!("<{name}>{}</{name}>", escape(&value.to_string()))
}

impl StandIn {
    pub fn new(secret: String) -> StandIn {
        StandIn {
            secret: Arc::new(secret),
            world: Arc::default(),
            clock: Arc::default(),
            created_ms: Arc::default(),
            calls: Arc::default(),
        }
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/bigbluebutton/api", get(version))
            .route("/bigbluebutton/api/", get(version))
            .route("/bigbluebutton/api/{call}", get(api).post(api))
            .route("/standin/leave", post(leave))
            .route("/standin/advance", post(advance))
            .route("/standin/fail", post(fail))
            .route("/standin/calls", get(calls))
            .with_state(self.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a virtual clock at `start` (unix seconds) with a script whose
    /// `at` times count from `start`; events at `start` are applied now.
    pub fn virtual_clock(&self, start: i64, script: Script) {
        let mut events = script.event;
        events.sort_by(|a, b| a.at.total_cmp(&b.at));
        {
            let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
            c.virtual_now = Some(start);
            c.start = start;
            c.pending = events;
        }
        self.advance(start);
    }

    /// Moves the virtual clock to `to`, applying every event due by then.
    /// Polls see either the state before or after, never half of it: the
    /// world stays locked for the whole step.
    pub fn advance(&self, to: i64) {
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let start = c.start;
        let due: Vec<Event> = {
            let n = c.pending.iter().take_while(|e| start + e.at as i64 <= to).count();
            c.pending.drain(..n).collect()
        };
        c.virtual_now = Some(to.max(c.virtual_now.unwrap_or(to)));
        self.created_ms.store(
            c.virtual_now.unwrap_or(to) as u64 * 1000,
            std::sync::atomic::Ordering::SeqCst,
        );
        // Events are applied with the clock lock held, so no API call runs
        // between them.
        for e in &due {
            self.apply_locked(e, &c);
        }
        self.end_expired(UNIX_EPOCH + Duration::from_secs(c.virtual_now.unwrap_or(to).max(0) as u64));
    }

    /// Ends the meetings whose `duration` is up at `now`, with their
    /// breakout rooms, as BBB does on its own clock.
    fn end_expired(&self, now: SystemTime) {
        let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut w = self.lock();
        let over: Vec<String> = w
            .meetings
            .values()
            .filter(|m| m.duration > 0 && now_ms >= m.create_time + u64::from(m.duration) * 60_000)
            .map(|m| m.internal_id.clone())
            .collect();
        for id in over {
            w.finish(&id, now_ms);
        }
    }

    pub fn set_failing(&self, on: bool) {
        self.clock.lock().unwrap_or_else(|e| e.into_inner()).failing = on;
    }

    /// Applies a call to the world and returns the XML body (or redirect),
    /// with BBB's `Date` header.
    pub fn call(&self, call: &str, raw_query: &str) -> Response {
        self.call_with_form(call, raw_query, "")
    }

    /// A call whose POST body is a form: bbb-web reads parameters from
    /// there too, outside the checksum (which covers the query), and
    /// refuses one that is in both.
    pub fn call_with_form(&self, call: &str, raw_query: &str, form: &str) -> Response {
        *self
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(call.to_string())
            .or_default() += 1;
        // The clock stays locked through the call, so a call sees the date
        // and the world of one step, never a mix.
        let c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let now = c
            .virtual_now
            .map(|t| UNIX_EPOCH + std::time::Duration::from_secs(t as u64))
            .unwrap_or_else(SystemTime::now);
        let date = httpdate::fmt_http_date(now);
        self.created_ms.store(
            now.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            std::sync::atomic::Ordering::SeqCst,
        );
        self.end_expired(now);
        let mut r = if c.failing {
            (StatusCode::SERVICE_UNAVAILABLE, "502 Bad Gateway\n").into_response()
        } else {
            self.call_form(call, raw_query, form)
        };
        drop(c);
        if let Ok(v) = header::HeaderValue::from_str(&date) {
            r.headers_mut().insert(header::DATE, v);
        }
        r
    }

    fn call_inner(&self, call: &str, raw_query: &str) -> Response {
        self.call_form(call, raw_query, "")
    }

    fn call_form(&self, call: &str, raw_query: &str, form: &str) -> Response {
        if !appliance_bbb::verify(call, raw_query, &self.secret, &Algorithm::ALL) {
            return xml(failed("checksumError", "Checksums do not match"));
        }
        let mut p = params(raw_query);
        for (k, v) in params(form) {
            if p.contains_key(&k) {
                return xml(failed("checksumError", "Checksums do not match"));
            }
            p.insert(k, v);
        }
        match call {
            "create" => self.create(&p),
            "join" => self.join(&p),
            "end" => self.end(&p),
            "isMeetingRunning" => self.is_running(&p),
            "getMeetings" => self.get_meetings(),
            "getMeetingInfo" => self.get_meeting_info(&p),
            "getRecordings" => self.get_recordings(&p),
            "publishRecordings" | "deleteRecordings" | "updateRecordings" => self.change_recordings(call, &p),
            _ => xml(failed("unsupportedRequest", "This request is not supported.")),
        }
    }

    fn create(&self, p: &BTreeMap<String, String>) -> Response {
        let Some(id) = p.get("meetingID").filter(|s| !s.is_empty()) else {
            return xml(failed(
                "missingParamMeetingID",
                "You must specify a meeting ID for the meeting.",
            ));
        };
        let mut w = self.lock();
        if let Some(m) = w.meetings.get(id) {
            let body = format!(
                "<response>\n<returncode>SUCCESS</returncode>\n{}\n{}\n<parentMeetingID>bbb-none</parentMeetingID>\n{}\n{}\n{}\n<messageKey>duplicateWarning</messageKey>\n<message>This conference was already in existence and may currently be in progress.</message>\n</response>",
                tag("meetingID", &m.id),
                tag("internalMeetingID", &m.internal_id),
                tag("attendeePW", &m.attendee_pw),
                tag("moderatorPW", &m.moderator_pw),
                tag("createTime", m.create_time)
            );
            return xml(body);
        }
        let is_breakout = p.get("isBreakout").is_some_and(|v| v == "true");
        let parent = if is_breakout {
            let Some(pid) = p.get("parentMeetingID") else {
                return xml(failed(
                    "parentMeetingIDMissing",
                    "No parent meeting ID was provided for the breakout room",
                ));
            };
            match w.meetings.values().find(|m| &m.internal_id == pid || &m.id == pid) {
                Some(pm) => Some(pm.internal_id.clone()),
                None => {
                    return xml(failed(
                        "parentMeetingDoesNotExist",
                        "No parent meeting exists for the breakout room",
                    ));
                }
            }
        } else {
            None
        };
        let create_time = self.created_ms.load(std::sync::atomic::Ordering::SeqCst);
        w.next_bridge += 1;
        let sequence = match &parent {
            Some(pid) => {
                w.meetings
                    .values()
                    .filter(|m| m.parent_internal_id.as_deref() == Some(pid))
                    .count() as u32
                    + 1
            }
            None => 0,
        };
        // bbb-web: sha1(meetingID) + "-" + createTime.
        let internal_id = format!("{}-{create_time}", appliance_bbb::checksum(Algorithm::Sha1, "", id, ""));
        let metadata = p
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("meta_").map(|m| (m.to_ascii_lowercase(), v.clone())))
            .collect();
        let m = Meeting {
            id: id.clone(),
            internal_id,
            name: p.get("name").cloned().unwrap_or_else(|| id.clone()),
            attendee_pw: p.get("attendeePW").cloned().unwrap_or_else(|| "ap".into()),
            moderator_pw: p.get("moderatorPW").cloned().unwrap_or_else(|| "mp".into()),
            create_time,
            voice_bridge: 70000 + w.next_bridge,
            metadata,
            parent_internal_id: parent,
            sequence,
            users: Vec::new(),
            has_user_joined: false,
            duration: number(p, "duration"),
            max_participants: number(p, "maxParticipants"),
            record: p.get("record").is_some_and(|v| v == "true"),
        };
        let body = format!(
            "<response>\n<returncode>SUCCESS</returncode>\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n<dialNumber>613-555-1234</dialNumber>\n<hasUserJoined>false</hasUserJoined>\n{}\n<hasBeenForciblyEnded>false</hasBeenForciblyEnded>\n<messageKey></messageKey>\n<message></message>\n</response>",
            tag("meetingID", &m.id),
            tag("internalMeetingID", &m.internal_id),
            tag("parentMeetingID", m.parent_internal_id.as_deref().unwrap_or("bbb-none")),
            tag("attendeePW", &m.attendee_pw),
            tag("moderatorPW", &m.moderator_pw),
            tag("createTime", m.create_time),
            tag("voiceBridge", m.voice_bridge),
            tag("duration", m.duration)
        );
        w.meetings.insert(id.clone(), m);
        xml(body)
    }

    fn join(&self, p: &BTreeMap<String, String>) -> Response {
        let Some(id) = p.get("meetingID") else {
            return xml(failed(
                "missingParamMeetingID",
                "You must specify a meeting ID for the meeting.",
            ));
        };
        let Some(full_name) = p.get("fullName") else {
            return xml(failed(
                "missingParamFullName",
                "You must specify a name for the attendee who will be joining the meeting.",
            ));
        };
        let mut w = self.lock();
        w.next_user += 1;
        let n = w.next_user;
        let Some(m) = w.meetings.get_mut(id) else {
            return xml(failed(
                "invalidMeetingIdentifier",
                "The meeting ID that you supplied did not match any existing meetings",
            ));
        };
        let moderator = match (p.get("role").map(|r| r.to_ascii_uppercase()), p.get("password")) {
            (Some(r), _) => r == "MODERATOR",
            (None, Some(pw)) if *pw == m.moderator_pw => true,
            (None, Some(pw)) if *pw == m.attendee_pw => false,
            _ => {
                return xml(failed("invalidPassword", "The password you submitted is not valid."));
            }
        };
        let user_id = p.get("userID").cloned().unwrap_or_else(|| format!("w_{n:06}"));
        // bbb-web counts the users in the meeting; one rejoining is let in.
        let rejoin = m.users.iter().any(|u| u.id == user_id);
        if m.max_participants > 0 && !rejoin && m.users.len() >= m.max_participants as usize {
            return xml(failed(
                "maxParticipantsReached",
                "The number of participants allowed for this meeting has been reached.",
            ));
        }
        // Rejoining with the same userID replaces the old session.
        m.users.retain(|u| u.id != user_id);
        m.users.push(User {
            id: user_id.clone(),
            name: full_name.clone(),
            moderator,
            listen_only: p.get("userdata-standin_listen_only").is_some_and(|v| v == "true"),
            video: p.get("userdata-standin_video").is_some_and(|v| v == "true"),
            custom: p
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix("userdata-")?.to_string(), v.clone())))
                .collect(),
        });
        m.has_user_joined = true;
        let session = format!("st{n:06}");
        if p.get("redirect").is_some_and(|r| r == "false") {
            let body = format!(
                "<response>\n<returncode>SUCCESS</returncode>\n<messageKey>successfullyJoined</messageKey>\n<message>You have joined successfully.</message>\n{}\n{}\n{}\n{}\n{}\n</response>",
                tag("meeting_id", &m.internal_id),
                tag("user_id", &user_id),
                tag("auth_token", format!("at{n:06}")),
                tag("session_token", &session),
                tag("url", format!("/html5client/join?sessionToken={session}"))
            );
            return xml(body);
        }
        (
            StatusCode::FOUND,
            [(header::LOCATION, format!("/html5client/join?sessionToken={session}"))],
        )
            .into_response()
    }

    fn end(&self, p: &BTreeMap<String, String>) -> Response {
        let Some(id) = p.get("meetingID") else {
            return xml(failed(
                "missingParamMeetingID",
                "You must specify a meeting ID for the meeting.",
            ));
        };
        let mut w = self.lock();
        let Some(internal) = w.meetings.get(id).map(|m| m.internal_id.clone()) else {
            return xml(failed(
                "notFound",
                "We could not find a meeting with that meeting ID - perhaps the meeting is not yet running?",
            ));
        };
        // Ending a meeting ends its breakout rooms.
        let now_ms = self.created_ms.load(std::sync::atomic::Ordering::SeqCst);
        w.finish(&internal, now_ms);
        xml("<response>\n<returncode>SUCCESS</returncode>\n<messageKey>sentEndMeetingRequest</messageKey>\n<message>A request to end the meeting was sent.  Please wait a few seconds, and then use the getMeetingInfo or isMeetingRunning API calls to verify that it was ended.</message>\n</response>".to_string())
    }

    fn get_recordings(&self, p: &BTreeMap<String, String>) -> Response {
        let list = |k: &str| -> Option<Vec<String>> {
            p.get(k)
                .filter(|v| !v.is_empty())
                .map(|v| v.split(',').map(str::to_string).collect())
        };
        let (meetings, records) = (list("meetingID"), list("recordID"));
        let filters: Vec<(String, &String)> = p
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("meta_").map(|m| (m.to_ascii_lowercase(), v)))
            .collect();
        let w = self.lock();
        let body: String = w
            .recordings
            .values()
            // recordID wins over meetingID, as in bbb-web.
            .filter(|r| match (&records, &meetings) {
                (Some(ids), _) => ids.contains(&r.id),
                (None, Some(ms)) => ms.contains(&r.meeting_id),
                (None, None) => true,
            })
            .filter(|r| filters.iter().all(|(k, v)| r.metadata.get(k) == Some(v)))
            .map(|r| {
                let md: String = r.metadata.iter().map(|(k, v)| format!("{}\n", tag(k, v))).collect();
                format!(
                    "<recording>\n{}\n{}\n{}\n{}\n<isBreakout>false</isBreakout>\n{}\n{}\n{}\n{}\n{}\n<metadata>\n{md}</metadata>\n<playback>\n<format>\n<type>presentation</type>\n{}\n<length>0</length>\n</format>\n</playback>\n</recording>\n",
                    tag("recordID", &r.id),
                    tag("meetingID", &r.meeting_id),
                    tag("internalMeetingID", &r.internal_meeting_id),
                    tag("name", &r.name),
                    tag("published", r.published),
                    tag("state", if r.published { "published" } else { "unpublished" }),
                    tag("startTime", r.start_time),
                    tag("endTime", r.end_time),
                    tag("participants", r.participants),
                    tag("url", format!("https://standin.invalid/playback/presentation/2.3/{}", r.id)),
                )
            })
            .collect();
        if body.is_empty() {
            return xml("<response>\n<returncode>SUCCESS</returncode>\n<recordings></recordings>\n<messageKey>noRecordings</messageKey>\n<message>There are no recordings for the meeting(s).</message>\n</response>".to_string());
        }
        xml(format!(
            "<response>\n<returncode>SUCCESS</returncode>\n<recordings>\n{body}</recordings>\n<messageKey></messageKey>\n<message></message>\n</response>"
        ))
    }

    fn change_recordings(&self, call: &str, p: &BTreeMap<String, String>) -> Response {
        let Some(ids) = p.get("recordID").filter(|v| !v.is_empty()) else {
            return xml(failed(
                "missingParamRecordID",
                "You must specify one or more a record IDs.",
            ));
        };
        let ids: Vec<&str> = ids.split(',').collect();
        let mut w = self.lock();
        if !ids.iter().all(|id| w.recordings.contains_key(*id)) {
            return xml(failed("notFound", "We could not find recordings"));
        }
        let answer = match call {
            "publishRecordings" => {
                let on = p.get("publish").is_some_and(|v| v == "true");
                for id in &ids {
                    if let Some(r) = w.recordings.get_mut(*id) {
                        r.published = on;
                    }
                }
                "<published>".to_string() + &on.to_string() + "</published>"
            }
            "deleteRecordings" => {
                for id in &ids {
                    w.recordings.remove(*id);
                }
                "<deleted>true</deleted>".to_string()
            }
            _ => {
                for id in &ids {
                    if let Some(r) = w.recordings.get_mut(*id) {
                        for (k, v) in p {
                            if let Some(m) = k.strip_prefix("meta_") {
                                r.metadata.insert(m.to_ascii_lowercase(), v.clone());
                            }
                        }
                    }
                }
                "<updated>true</updated>".to_string()
            }
        };
        xml(format!(
            "<response>\n<returncode>SUCCESS</returncode>\n{answer}\n</response>"
        ))
    }

    fn is_running(&self, p: &BTreeMap<String, String>) -> Response {
        let Some(id) = p.get("meetingID") else {
            return xml(failed(
                "missingParamMeetingID",
                "You must specify a meeting ID for the meeting.",
            ));
        };
        let running = self.lock().meetings.get(id).is_some_and(|m| !m.users.is_empty());
        xml(format!(
            "<response>\n<returncode>SUCCESS</returncode>\n<running>{running}</running>\n</response>"
        ))
    }

    fn get_meetings(&self) -> Response {
        let w = self.lock();
        if w.meetings.is_empty() {
            return xml("<response>\n<returncode>SUCCESS</returncode>\n<meetings/>\n<messageKey>noMeetings</messageKey>\n<message>no meetings were found on this server</message>\n</response>".to_string());
        }
        let body: String = w
            .meetings
            .values()
            .map(|m| format!("<meeting>\n{}</meeting>\n", meeting_xml(m, &w)))
            .collect();
        xml(format!(
            "<response>\n<returncode>SUCCESS</returncode>\n<meetings>\n{body}</meetings>\n</response>"
        ))
    }

    fn get_meeting_info(&self, p: &BTreeMap<String, String>) -> Response {
        let Some(id) = p.get("meetingID") else {
            return xml(failed(
                "missingParamMeetingID",
                "You must specify a meeting ID for the meeting.",
            ));
        };
        let w = self.lock();
        match w.meetings.get(id) {
            Some(m) => xml(format!(
                "<response>\n<returncode>SUCCESS</returncode>\n{}</response>",
                meeting_xml(m, &w)
            )),
            None => xml(failed("notFound", "We could not find a meeting with that meeting ID")),
        }
    }

    /// Removes a user, as if their browser closed.
    pub fn leave(&self, meeting: &str, user: &str) -> bool {
        let mut w = self.lock();
        match w.meetings.get_mut(meeting) {
            Some(m) => {
                let before = m.users.len();
                m.users.retain(|u| u.id != user);
                before != m.users.len()
            }
            None => false,
        }
    }

    pub fn calls(&self, call: &str) -> u64 {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(call)
            .copied()
            .unwrap_or(0)
    }

    /// Makes a signed query for one of our own calls (used by scripts).
    pub fn signed(&self, call: &str, params: &[(&str, &str)]) -> String {
        let q = appliance_bbb::encode_query(params);
        let sum = appliance_bbb::checksum(Algorithm::Sha256, call, &q, &self.secret);
        if q.is_empty() {
            format!("checksum={sum}")
        } else {
            format!("{q}&checksum={sum}")
        }
    }

    /// Plays a script in real time, `speed` times faster than written.
    pub async fn play(&self, script: Script, speed: f64) {
        let start = tokio::time::Instant::now();
        let mut events = script.event;
        events.sort_by(|a, b| a.at.total_cmp(&b.at));
        for e in events {
            let at = start + Duration::from_secs_f64((e.at / speed.max(1e-6)).max(0.0));
            tokio::time::sleep_until(at).await;
            self.apply(&e);
        }
    }

    pub fn apply(&self, e: &Event) {
        let c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let now = c.virtual_now.map(|t| t as u64 * 1000).unwrap_or_else(real_ms);
        self.created_ms.store(now, std::sync::atomic::Ordering::SeqCst);
        self.apply_locked(e, &c);
    }

    /// Applies an event while the clock is locked (so calls use the inner,
    /// clock-free path).
    fn apply_locked(&self, e: &Event, c: &Clock) {
        let _ = c;
        let m = e.meeting.as_str();
        match e.action {
            Action::Create => {
                let mut p: Vec<(String, String)> = vec![
                    ("meetingID".into(), m.into()),
                    ("name".into(), e.name.clone().unwrap_or_else(|| m.into())),
                ];
                if let Some(parent) = &e.parent {
                    p.push(("isBreakout".into(), "true".into()));
                    p.push(("parentMeetingID".into(), parent.clone()));
                }
                for (k, v) in &e.meta {
                    p.push((format!("meta_{k}"), v.clone()));
                }
                let refs: Vec<(&str, &str)> = p.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                let _ = self.call_inner("create", &self.signed("create", &refs));
            }
            Action::Join => {
                let user = e.user.clone().unwrap_or_default();
                let role = if e.moderator { "MODERATOR" } else { "VIEWER" };
                let q = self.signed(
                    "join",
                    &[
                        ("meetingID", m),
                        ("fullName", &user),
                        ("userID", &user),
                        ("role", role),
                        ("redirect", "false"),
                    ],
                );
                let _ = self.call_inner("join", &q);
            }
            Action::Leave => {
                self.leave(m, e.user.as_deref().unwrap_or_default());
            }
            Action::End => {
                let _ = self.call_inner("end", &self.signed("end", &[("meetingID", m)]));
            }
        }
    }
}

fn meeting_xml(m: &Meeting, w: &World) -> String {
    let users = &m.users;
    let count = |f: &dyn Fn(&User) -> bool| users.iter().filter(|u| f(u)).count();
    let attendees: String = users
        .iter()
        .map(|u| {
            let custom = if u.custom.is_empty() {
                String::new()
            } else {
                let items: String = u.custom.iter().map(|(k, v)| format!("{}\n", tag(k, v))).collect();
                format!("<customdata>\n{items}</customdata>\n")
            };
            format!(
                "<attendee>\n{}\n{}\n{}\n<isPresenter>false</isPresenter>\n{}\n{}\n{}\n<clientType>HTML5</clientType>\n{custom}</attendee>\n",
                tag("userID", &u.id),
                tag("fullName", &u.name),
                tag("role", if u.moderator { "MODERATOR" } else { "VIEWER" }),
                tag("isListeningOnly", u.listen_only),
                tag("hasJoinedVoice", !u.listen_only),
                tag("hasVideo", u.video)
            )
        })
        .collect();
    let metadata: String = m.metadata.iter().map(|(k, v)| format!("{}\n", tag(k, v))).collect();
    let breakout = match &m.parent_internal_id {
        Some(p) => format!(
            "{}\n{}\n<freeJoin>false</freeJoin>\n",
            tag("parentMeetingID", p),
            tag("sequence", m.sequence)
        ),
        None => {
            let rooms: String = w
                .meetings
                .values()
                .filter(|b| b.parent_internal_id.as_deref() == Some(&m.internal_id))
                .map(|b| format!("{}\n", tag("breakout", &b.internal_id)))
                .collect();
            if rooms.is_empty() {
                String::new()
            } else {
                format!("<breakoutRooms>\n{rooms}</breakoutRooms>\n")
            }
        }
    };
    format!(
        "{}\n{}\n{}\n{}\n<createDate>{}</createDate>\n{}\n<dialNumber>613-555-1234</dialNumber>\n{}\n{}\n{}\n{}\n{}\n<recording>false</recording>\n<hasBeenForciblyEnded>false</hasBeenForciblyEnded>\n{}\n<endTime>0</endTime>\n{}\n{}\n{}\n{}\n{}\n{}\n<attendees>\n{attendees}</attendees>\n<metadata>\n{metadata}</metadata>\n{breakout}{}\n",
        tag("meetingName", &m.name),
        tag("meetingID", &m.id),
        tag("internalMeetingID", &m.internal_id),
        tag("createTime", m.create_time),
        m.create_time,
        tag("voiceBridge", m.voice_bridge),
        tag("attendeePW", &m.attendee_pw),
        tag("moderatorPW", &m.moderator_pw),
        tag("running", !users.is_empty()),
        tag("duration", m.duration),
        tag("hasUserJoined", m.has_user_joined),
        tag("startTime", m.create_time),
        tag("participantCount", users.len()),
        tag("listenerCount", count(&|u| u.listen_only)),
        tag("voiceParticipantCount", count(&|u| !u.listen_only)),
        tag("videoCount", count(&|u| u.video)),
        tag("moderatorCount", count(&|u| u.moderator)),
        tag("maxUsers", m.max_participants),
        tag("isBreakout", m.parent_internal_id.is_some()),
    )
}

async fn version() -> Response {
    xml("<response>\n<returncode>SUCCESS</returncode>\n<version>2.0</version>\n<apiVersion>2.0</apiVersion>\n<bbbVersion>3.0 stand-in</bbbVersion>\n</response>".to_string())
}

async fn api(
    State(s): State<StandIn>,
    Path(call): Path<String>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let form = if form {
        String::from_utf8_lossy(&body).into_owned()
    } else {
        String::new()
    };
    s.call_with_form(&call, q.as_deref().unwrap_or(""), &form)
}

async fn leave(State(s): State<StandIn>, RawQuery(q): RawQuery) -> Response {
    let p = params(q.as_deref().unwrap_or(""));
    let ok = s.leave(
        p.get("meetingID").map(String::as_str).unwrap_or(""),
        p.get("userID").map(String::as_str).unwrap_or(""),
    );
    if ok {
        (StatusCode::OK, "left\n").into_response()
    } else {
        (StatusCode::NOT_FOUND, "no such user in that meeting\n").into_response()
    }
}

async fn advance(State(s): State<StandIn>, RawQuery(q): RawQuery) -> Response {
    let p = params(q.as_deref().unwrap_or(""));
    match p.get("to").and_then(|t| t.parse::<i64>().ok()) {
        Some(to) => {
            s.advance(to);
            format!("clock at {to}\n").into_response()
        }
        None => (StatusCode::BAD_REQUEST, "give ?to=UNIX_SECONDS\n").into_response(),
    }
}

async fn fail(State(s): State<StandIn>, RawQuery(q): RawQuery) -> Response {
    let on = params(q.as_deref().unwrap_or(""))
        .get("on")
        .is_some_and(|v| v == "1" || v == "true");
    s.set_failing(on);
    format!("failing: {on}\n").into_response()
}

async fn calls(State(s): State<StandIn>) -> Response {
    let c = s.calls.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let body: String = c.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    body.into_response()
}

/// A timeline of meetings: `[[event]]` tables with `at` (seconds from the
/// start), `action` (create, join, leave, end), `meeting`, and per action
/// `name`, `meta` (a table of metadata without the `meta_` prefix),
/// `parent` (for breakout rooms), `user`, `moderator`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    #[serde(default)]
    pub event: Vec<Event>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub at: f64,
    pub action: Action,
    pub meeting: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub moderator: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Join,
    Leave,
    End,
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Response) -> (StatusCode, String) {
        let status = r.status();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(b.to_vec()).unwrap())
    }

    const SECRET: &str = "639259d4-9dd8-4b25-bf01-95f9567eaf4b";

    /// The create call of BBB's API documentation, with its documented
    /// checksum, is accepted; the same call with one byte changed is not.
    #[tokio::test]
    async fn accepts_the_documented_example_and_nothing_else() {
        let s = StandIn::new(SECRET.into());
        let q = "name=Test+Meeting&meetingID=abc123&attendeePW=111222&moderatorPW=333444&checksum=1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17";
        let (_, b) = body(s.call("create", q)).await;
        assert!(
            b.contains("<returncode>SUCCESS</returncode>") && b.contains("<meetingID>abc123</meetingID>"),
            "{b}"
        );
        let (_, b) = body(s.call("create", &q.replace("abc123", "abc124"))).await;
        assert_eq!(b, failed("checksumError", "Checksums do not match"));
        let (_, b) = body(s.call(
            "getMeetings",
            "checksum=a5370c5f3d97d56d53b435684cdbc429c2898a3bf9f435518b4279e1e0dbfc8c",
        ))
        .await;
        let m = appliance_bbb::xml::parse_get_meetings(&b).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].name, "Test Meeting");
        assert!(!m[0].running, "nobody joined yet");
    }

    #[tokio::test]
    async fn meetings_users_breakouts_and_end() {
        let s = StandIn::new(SECRET.into());
        let script: Script = toml::from_str(
            r#"
[[event]]
at = 0
action = "create"
meeting = "board"
name = "Board"
meta = { member = "coop-a" }
[[event]]
at = 0
action = "join"
meeting = "board"
user = "ann"
moderator = true
[[event]]
at = 0
action = "join"
meeting = "board"
user = "bob"
[[event]]
at = 0
action = "create"
meeting = "board-room1"
parent = "board"
[[event]]
at = 0
action = "join"
meeting = "board-room1"
user = "bob"
"#,
        )
        .unwrap();
        for e in &script.event {
            s.apply(e);
        }
        let (_, b) = body(s.call("getMeetings", &s.signed("getMeetings", &[]))).await;
        let m = appliance_bbb::xml::parse_get_meetings(&b).unwrap();
        assert_eq!(m.len(), 2);
        let board = m.iter().find(|x| x.meeting_id == "board").unwrap();
        assert_eq!((board.participant_count, board.moderator_count), (2, 1));
        assert_eq!(board.metadata["member"], "coop-a");
        let room = m.iter().find(|x| x.meeting_id == "board-room1").unwrap();
        assert!(room.is_breakout);
        assert_eq!(
            room.parent_meeting_id.as_deref(),
            Some(board.internal_meeting_id.as_str())
        );
        assert!(b.contains("<breakoutRooms>"), "{b}");

        assert!(s.leave("board", "bob"));
        let (_, b) = body(s.call("getMeetingInfo", &s.signed("getMeetingInfo", &[("meetingID", "board")]))).await;
        assert!(b.contains("<participantCount>1</participantCount>"), "{b}");
        let (_, b) = body(s.call("end", &s.signed("end", &[("meetingID", "board")]))).await;
        assert!(b.contains("sentEndMeetingRequest"));
        let (_, b) = body(s.call("getMeetings", &s.signed("getMeetings", &[]))).await;
        assert!(
            b.contains("<messageKey>noMeetings</messageKey>"),
            "breakouts end with their parent: {b}"
        );
        let (_, b) = body(s.call("getMeetingInfo", &s.signed("getMeetingInfo", &[("meetingID", "board")]))).await;
        assert!(b.contains("<messageKey>notFound</messageKey>"));
        let (_, b) = body(s.call("isMeetingRunning", &s.signed("isMeetingRunning", &[]))).await;
        assert!(b.contains("missingParamMeetingID"));
        let (status, _) = body(s.call("join", &s.signed("join", &[("meetingID", "x"), ("fullName", "a")]))).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "errors are XML with status 200, as bbb-web does"
        );
    }

    #[tokio::test]
    async fn duration_and_max_participants_as_bbb_honours_them() {
        let s = StandIn::new("sec".into());
        s.virtual_clock(1_000_000, Script { event: vec![] });
        let create = |id: &str, extra: &[(&str, &str)]| {
            let mut q = vec![("meetingID", id), ("name", id)];
            q.extend_from_slice(extra);
            s.call("create", &s.signed("create", &q))
        };
        let (_, b) = body(create("short", &[("duration", "30"), ("maxParticipants", "2")])).await;
        assert!(b.contains("<duration>30</duration>"), "{b}");
        let (_, b) = body(create("open", &[])).await;
        assert!(b.contains("<duration>0</duration>"), "{b}");
        let join = |id: &str, user: &str| {
            s.call(
                "join",
                &s.signed(
                    "join",
                    &[
                        ("meetingID", id),
                        ("fullName", user),
                        ("userID", user),
                        ("role", "VIEWER"),
                        ("redirect", "false"),
                    ],
                ),
            )
        };
        for u in ["u1", "u2"] {
            let (_, b) = body(join("short", u)).await;
            assert!(b.contains("SUCCESS"), "{b}");
        }
        let (status, b) = body(join("short", "u3")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(b.contains("<messageKey>maxParticipantsReached</messageKey>"), "{b}");
        let (_, b) = body(join("short", "u1")).await;
        assert!(b.contains("SUCCESS"), "a user rejoining is let in: {b}");
        let running = |id: &'static str| {
            let s = s.clone();
            async move {
                let (_, b) = body(s.call("getMeetingInfo", &s.signed("getMeetingInfo", &[("meetingID", id)]))).await;
                !b.contains("notFound")
            }
        };
        s.advance(1_000_000 + 30 * 60 - 1);
        assert!(running("short").await, "one second before its end");
        s.advance(1_000_000 + 30 * 60);
        assert!(!running("short").await, "ended when its 30 minutes were up");
        assert!(running("open").await, "no duration: runs on");
    }
}
