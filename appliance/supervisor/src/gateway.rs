//! The node's BBB API gateway: the thin HTTP adapter around
//! [`appliance_members::gateway`].
//!
//! nginx sends `/bigbluebutton/api/...` here (plain HTTP on loopback). A
//! node without members passes every call on unchanged, so front ends that
//! use BBB's shared secret keep working. With members, each call must be
//! signed with a member's secret; it reaches bbb-web scoped to that member
//! and signed with BBB's own secret, which never leaves the box. The one
//! call BBB's own secret may still make is `join`: BBB signs the join links
//! of breakout rooms itself, and those count toward the parent meeting's
//! member like any other join.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appliance_bbb::Algorithm;
use appliance_members::gateway::{self, Caller, Refusal};
use appliance_members::{Member, limits};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use crate::members::Store;
use crate::state::lock;

pub struct Gateway {
    members: Arc<Store>,
    /// bbb-web's API base, without the trailing slash.
    bbb_url: String,
    bbb_secret: String,
    member_key: String,
    http: reqwest::Client,
    /// One lock per member around a limit's decision and the call it lets
    /// through, so two joins at once cannot both take the last place.
    decisions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Gateway {
    pub fn new(members: Arc<Store>, bbb_url: &str, bbb_secret: String, member_key: &str) -> Gateway {
        Gateway {
            members,
            bbb_url: bbb_url.trim_end_matches('/').to_string(),
            bbb_secret,
            member_key: member_key.to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(60))
                // A join answers with a redirect to the client: the front
                // end's browser follows it, not the gateway.
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .expect("building an HTTP client with static settings"),
            decisions: Mutex::new(HashMap::new()),
        }
    }

    fn decision_lock(&self, slug: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.decisions).entry(slug.to_string()).or_default().clone()
    }
}

pub fn router(g: Arc<Gateway>) -> Router {
    Router::new()
        .route("/bigbluebutton/api", any(root))
        .route("/bigbluebutton/api/", any(root))
        .route("/bigbluebutton/api/{call}", any(call))
        .with_state(g)
}

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml;charset=utf-8")], body).into_response()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The API root (BBB's version) needs no checksum.
async fn root(State(g): State<Arc<Gateway>>, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    g.send(method, "", "", &headers, body).await
}

async fn call(
    State(g): State<Arc<Gateway>>,
    method: Method,
    UrlPath(call): UrlPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw = q.unwrap_or_default();
    // A call is a word (getMeetings); anything else (a decoded `..%2F`)
    // could reach other paths of bbb-web's server.
    if call.is_empty() || !call.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return xml(Refusal::new("unsupportedRequest", "This request is not supported.").xml());
    }
    let members = g.members.current();
    if members.is_empty() || gateway::SESSION_CALLS.contains(&call.as_str()) {
        return g.send(method, &call, &raw, &headers, body).await;
    }
    if !gateway::CALLS.contains(&call.as_str()) {
        return xml(Refusal::new("unsupportedRequest", "This request is not supported.").xml());
    }
    match gateway::authenticate(&members, &g.bbb_secret, &call, &raw, unix_now()) {
        Err(r) => {
            log::info!("gateway: {call} refused: {}", r.message);
            xml(r.xml())
        }
        Ok(Caller::Bbb) if call == "join" => g.breakout_join(method, &raw, &headers, body, &members).await,
        Ok(Caller::Bbb) => xml(Refusal::checksum().xml()),
        Ok(Caller::Member(m)) => g.member_call(m, &call, &raw, method, &headers, body).await,
    }
}

impl Gateway {
    async fn member_call(
        &self,
        m: &Member,
        call: &str,
        raw: &str,
        method: Method,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        let params = gateway::parse_query(raw);
        let rw = match gateway::rewrite(call, params, &m.slug, &self.member_key, &m.limits) {
            Ok(rw) => rw,
            Err(r) => return xml(r.xml()),
        };
        let limited = match call {
            "create" => m.limits.rooms.is_some(),
            "join" => m.limits.participants.is_some(),
            _ => false,
        };
        let decision = self.decision_lock(&m.slug);
        let _held = if limited {
            let held = decision.lock().await;
            let live = match self.live().await {
                Ok(l) => l,
                Err(resp) => return resp,
            };
            let usage = limits::usage(&m.slug, &live);
            let exists = live.iter().any(|x| Some(&x.meeting_id) == rw.meeting.as_ref());
            let verdict = match call {
                "create" => limits::create(&m.limits, &usage, exists),
                // A meeting that is not there: BBB says so itself.
                _ if exists => limits::join(&m.limits, &usage),
                _ => Ok(()),
            };
            if let Err(r) = verdict {
                log::info!("gateway: {call} for member {} refused: {}", m.slug, r.key);
                return refusal(call, &rw.params, &r);
            }
            Some(held)
        } else {
            None
        };
        // Publishing, changing or deleting a recording: each one named must
        // be there and be the member's.
        if gateway::RECORDING_CHANGES.contains(&call) {
            // Every recordID given, however often: bbb-web must not act on
            // one the check did not see.
            let ids: Vec<&str> = rw
                .params
                .iter()
                .filter(|(k, _)| k == "recordID")
                .flat_map(|(_, v)| v.split(','))
                .filter(|i| !i.is_empty())
                .collect();
            if ids.is_empty() {
                return xml(Refusal::new("missingParamRecordID", "You must specify one or more a record IDs.").xml());
            }
            let found = match self
                .bbb_get("getRecordings", &[("recordID".into(), ids.join(","))])
                .await
            {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            if !gateway::recordings_owned(&found, &m.slug, &ids) {
                log::info!("gateway: {call} for member {} refused: not its recordings", m.slug);
                return xml(gateway::no_such_recordings().xml());
            }
        }
        let query = sign(call, &gateway::encode(&rw.params), &self.bbb_secret);
        let resp = self
            .send(method, call, &query, headers, verified_body(call, headers, body))
            .await;
        let slug = m.slug.clone();
        let call = call.to_string();
        map_xml(resp, move |b| match call.as_str() {
            "getMeetings" => gateway::filter_meetings(b, &slug),
            "getRecordings" => gateway::filter_recordings(b, &slug),
            _ => gateway::unscope_response(b, &slug),
        })
        .await
    }

    /// A join signed with BBB's own secret: BBB's link into a breakout
    /// room. Passed on as it is, once the room's member has a place left.
    async fn breakout_join(
        &self,
        method: Method,
        raw: &str,
        headers: &HeaderMap,
        body: Bytes,
        members: &appliance_members::Members,
    ) -> Response {
        let params = gateway::parse_query(raw);
        let id = params.iter().find(|(k, _)| k == "meetingID").map(|(_, v)| v.clone());
        let live = match self.live().await {
            Ok(l) => l,
            Err(resp) => return resp,
        };
        let owner = id
            .as_ref()
            .and_then(|id| live.iter().find(|x| &x.meeting_id == id))
            .and_then(|x| limits::meeting_owner(&live, x))
            .and_then(|slug| members.get(slug));
        let decision = owner.map(|m| self.decision_lock(&m.slug));
        let _held = match decision.as_ref() {
            Some(d) => Some(d.lock().await),
            None => None,
        };
        if let Some(m) = owner {
            // Decided on what BBB says now, under the member's lock.
            let live = if m.limits.participants.is_some() {
                match self.live().await {
                    Ok(l) => l,
                    Err(resp) => return resp,
                }
            } else {
                live
            };
            if let Err(r) = limits::join(&m.limits, &limits::usage(&m.slug, &live)) {
                log::info!("gateway: breakout join for member {} refused: {}", m.slug, r.key);
                return refusal("join", &params, &r);
            }
        }
        self.send(method, "join", raw, headers, verified_body("join", headers, body))
            .await
    }

    /// BBB's meetings now, for a limit's decision.
    async fn live(&self) -> Result<Vec<appliance_bbb::Meeting>, Response> {
        let body = self.bbb_get("getMeetings", &[]).await?;
        appliance_bbb::xml::parse_get_meetings(&body).map_err(|e| unavailable(&e.to_string()))
    }

    /// A call of the gateway's own to bbb-web, signed with BBB's secret.
    async fn bbb_get(&self, call: &str, params: &[(String, String)]) -> Result<String, Response> {
        let url = format!(
            "{}/{call}?{}",
            self.bbb_url,
            sign(call, &gateway::encode(params), &self.bbb_secret)
        );
        async {
            let r = self.http.get(&url).send().await?.error_for_status()?;
            r.text().await
        }
        .await
        .map_err(|e| unavailable(&e.without_url().to_string()))
    }

    /// Passes a call on to bbb-web and its answer back: status, body and
    /// the headers a front end or browser uses.
    async fn send(&self, method: Method, call: &str, query: &str, headers: &HeaderMap, body: Bytes) -> Response {
        let mut url = format!("{}/{call}", self.bbb_url);
        if call.is_empty() {
            url.pop();
        }
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        let mut req = self.http.request(method, &url);
        for h in [header::CONTENT_TYPE, header::USER_AGENT, header::ACCEPT, header::COOKIE] {
            if let Some(v) = headers.get(&h) {
                req = req.header(h, v);
            }
        }
        if !body.is_empty() {
            req = req.body(body);
        }
        let r = match req.send().await {
            Ok(r) => r,
            Err(e) => return unavailable(&e.without_url().to_string()),
        };
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut out = HeaderMap::new();
        for h in [
            header::CONTENT_TYPE,
            header::LOCATION,
            header::CACHE_CONTROL,
            header::DATE,
        ] {
            if let Some(v) = r.headers().get(&h) {
                out.insert(h, v.clone());
            }
        }
        for v in r.headers().get_all(header::SET_COOKIE) {
            out.append(header::SET_COOKIE, v.clone());
        }
        match r.bytes().await {
            Ok(b) => (status, out, b).into_response(),
            Err(e) => unavailable(&e.without_url().to_string()),
        }
    }
}

/// The body a member's call may carry on to bbb-web. bbb-web also reads
/// parameters from a form body, which no checksum covers: passed on, it
/// would let a member smuggle in what the gateway sets itself (the member
/// tag, a meeting id outside its own). So only create's XML document
/// (the presentations a front end preloads) goes through.
fn verified_body(call: &str, headers: &HeaderMap, body: Bytes) -> Bytes {
    let xml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("xml"));
    if call == "create" && xml { body } else { Bytes::new() }
}

/// The query with BBB's checksum, as bbb-web verifies it.
fn sign(call: &str, query: &str, secret: &str) -> String {
    let sum = appliance_bbb::checksum(Algorithm::Sha256, call, query, secret);
    if query.is_empty() {
        format!("checksum={sum}")
    } else {
        format!("{query}&checksum={sum}")
    }
}

/// What nginx would answer when bbb-web is down.
fn unavailable(why: &str) -> Response {
    log::warn!("gateway: BigBlueButton does not answer: {why}");
    (
        StatusCode::BAD_GATEWAY,
        "BigBlueButton does not answer; try again in a minute\n",
    )
        .into_response()
}

/// A refusal as BBB gives it: XML; for a join that a browser follows (no
/// `redirect=false`) with an `errorRedirectUrl`, a redirect there with
/// BBB's `errors` parameter.
fn refusal(call: &str, params: &[(String, String)], r: &Refusal) -> Response {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if call == "join"
        && get("redirect") != Some("false")
        && let Some(to) = get("errorRedirectUrl").filter(|u| u.starts_with("https://") || u.starts_with("http://"))
    {
        let errors = format!(
            "[{{\"message\":{},\"key\":{}}}]",
            json_string(&r.message),
            json_string(r.key)
        );
        let sep = if to.contains('?') { '&' } else { '?' };
        let loc = format!(
            "{to}{sep}{}",
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("errors", &errors)
                .finish()
        );
        if let Ok(v) = HeaderValue::from_str(&loc) {
            return (StatusCode::FOUND, [(header::LOCATION, v)]).into_response();
        }
    }
    xml(r.xml())
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Rewrites a successful XML answer's body; anything else passes as it is.
async fn map_xml(resp: Response, f: impl FnOnce(&str) -> String) -> Response {
    let is_xml = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("xml"));
    if resp.status() != StatusCode::OK || !is_xml {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return unavailable("an answer of more than 16 MiB");
    };
    let text = String::from_utf8_lossy(&bytes);
    let out = f(&text);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(out))
}
