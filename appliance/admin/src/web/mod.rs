//! Routes, sessions, CSRF and roles: HTTP in, typed calls on the backend,
//! HTML or JSON out.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json};
use serde::Deserialize;

use crate::audit::Entry;
use crate::auth::{self, AuthError, Role, Session};
use crate::views;
use crate::{ActionError, AdminState, LogQuery, ServiceAction, Window};

pub const COOKIE: &str = "appliance_session";

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/login", get(login_page).post(login))
        .route("/setup", get(setup_page).post(setup))
        .route("/logout", post(logout))
        .route("/", get(overview))
        .route("/hardware", get(hardware))
        .route("/services", get(services_page))
        .route("/services/{name}/{action}", post(service_form))
        .route("/meetings", get(meetings_page))
        .route("/logs", get(logs_page))
        .route("/updates", get(updates_page))
        .route("/updates/{action}", post(update_form))
        .route("/enrollment", get(enrollment_page).post(enroll))
        .route("/audit", get(audit_page))
        .route("/settings", get(settings_page))
        .route("/settings/password", post(change_password))
        .route("/settings/certificate", post(install_certificate))
        .route("/settings/ssh", post(ssh_form))
        .route("/members", get(members_page).post(members_form))
        .route("/support-bundle", get(support_bundle))
        .route("/api/v1/session", get(api_session))
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/services", get(api_services))
        .route("/api/v1/services/{name}/{action}", post(api_service_action))
        .route("/api/v1/series", get(api_series))
        .route("/api/v1/history", get(api_history))
        .route("/api/v1/meetings", get(api_meetings))
        .route("/api/v1/logs", get(api_logs))
        .route("/api/v1/audit", get(api_audit))
        .fallback(fallback)
        .with_state(state)
        .layer(axum::middleware::map_response(security_headers))
}

/// The list of routes, for the test that walks them all.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/hardware"),
    ("GET", "/services"),
    ("POST", "/services/nginx/restart"),
    ("POST", "/services/nginx/reset"),
    ("GET", "/meetings"),
    ("GET", "/logs"),
    ("GET", "/updates"),
    ("POST", "/updates/check"),
    ("POST", "/updates/install"),
    ("GET", "/enrollment"),
    ("POST", "/enrollment"),
    ("GET", "/audit"),
    ("GET", "/settings"),
    ("POST", "/settings/password"),
    ("POST", "/settings/certificate"),
    ("POST", "/settings/ssh"),
    ("GET", "/members"),
    ("POST", "/members"),
    ("GET", "/support-bundle"),
    ("POST", "/logout"),
    ("GET", "/api/v1/session"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/services"),
    ("POST", "/api/v1/services/nginx/restart"),
    ("POST", "/api/v1/services/nginx/reset"),
    ("GET", "/api/v1/series"),
    ("GET", "/api/v1/history?series=cpu&window=hour"),
    ("GET", "/api/v1/meetings"),
    ("GET", "/api/v1/logs"),
    ("GET", "/api/v1/audit"),
    ("GET", "/no/such/page"),
];

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Not "no-referrer": with it, browsers send `Origin: null` on the
    // page's own form posts, and the same-origin check refuses "null".
    // "same-origin" still tells other sites nothing.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Everything is same-origin; inline styles only, no inline scripts but
    // the one small graph script, allowed by its hash-free 'self' file.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    res
}

/// Who is asking: the session (if any), the cookie token and the address.
pub(crate) struct Ctx {
    session: Option<Session>,
    token: Option<String>,
    ip: IpAddr,
    api: bool,
    origin_ok: bool,
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_string))
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AdminState> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &AdminState) -> Result<Self, Self::Rejection> {
        let token = cookie_token(&parts.headers);
        let session = token
            .as_deref()
            .and_then(|t| crate::state_lock(&st.auth).session(t, now()));
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        // A browser names the page a request came from; a form posted from
        // another site is refused even before the CSRF token is checked.
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // "null" is what a sandboxed frame, a data: URL or a redirect
        // chain sends: never this page, so refused like any other site.
        let origin_ok = match parts.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            None => true,
            Some(o) => o.split_once("://").map(|(_, h)| h) == Some(host),
        };
        Ok(Ctx {
            session,
            token,
            ip,
            api: parts.uri.path().starts_with("/api/"),
            origin_ok,
        })
    }
}

/// An action's failure as the JSON API answers it: the status its kind
/// calls for (one exhaustive match, `ActionError::http_status`) and
/// `{"ok": false, "kind", "error"}`.
struct ApiError(ActionError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = serde_json::to_value(&self.0)
            .ok()
            .and_then(|v| v.get("kind").cloned())
            .unwrap_or_default();
        (
            status,
            Json(serde_json::json!({ "ok": false, "kind": kind, "error": self.0.to_string() })),
        )
            .into_response()
    }
}

/// A refusal: a redirect to the login for pages, a status for the API.
fn refuse(ctx: &Ctx, st: &AdminState, status: StatusCode, msg: &str) -> Response {
    if ctx.api {
        return (status, Json(serde_json::json!({ "error": msg }))).into_response();
    }
    if status == StatusCode::UNAUTHORIZED {
        let to = if crate::state_lock(&st.auth).setup_pending() {
            "/setup"
        } else {
            "/login"
        };
        return Redirect::to(to).into_response();
    }
    (status, Html(views::message_page("Not allowed", msg))).into_response()
}

// A refusal is a whole response, made at most once per request; boxing it
// would only add an allocation to the path that answers.
#[allow(clippy::result_large_err)]
impl Ctx {
    /// Any logged-in user.
    fn viewer(&self, st: &AdminState) -> Result<Session, Response> {
        self.session
            .clone()
            .ok_or_else(|| refuse(self, st, StatusCode::UNAUTHORIZED, "log in first"))
    }

    /// The operator, for changes; `csrf` is the token the request carried.
    fn operator(&self, st: &AdminState, csrf: Option<&str>) -> Result<Session, Response> {
        let s = self.viewer(st)?;
        if s.role != Role::Operator {
            return Err(refuse(
                self,
                st,
                StatusCode::FORBIDDEN,
                "only the operator may change things",
            ));
        }
        self.csrf(st, &s, csrf)?;
        Ok(s)
    }

    fn csrf(&self, st: &AdminState, s: &Session, csrf: Option<&str>) -> Result<(), Response> {
        let ok = self.origin_ok && csrf.is_some_and(|c| auth::constant_time_eq(c.as_bytes(), s.csrf.as_bytes()));
        if ok {
            Ok(())
        } else {
            Err(refuse(
                self,
                st,
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token: reload the page and try again",
            ))
        }
    }

    /// A failed login or setup attempt: to the bounded failed-login log,
    /// never to the audit log (anyone can make them).
    fn failed_login(&self, st: &AdminState, user: &str, reason: &str) {
        st.audit.failed_login(&self.ip.to_string(), user, reason, now());
    }

    fn audit(&self, st: &AdminState, user: &str, action: &str, target: &str, outcome: &str) {
        st.audit.record(&Entry {
            at: now(),
            user: user.to_string(),
            from: self.ip.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: outcome.to_string(),
        });
    }
}

fn session_cookie(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        auth::MAX_SECS as u64
    ))
    .expect("a hex token is a valid header value")
}

fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("appliance_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

async fn healthz(State(st): State<AdminState>) -> Response {
    if st.backend.alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "main loop stalled\n").into_response()
    }
}

async fn metrics(State(st): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.backend.metrics(),
    )
        .into_response()
}

async fn fallback(ctx: Ctx, State(st): State<AdminState>) -> Response {
    if let Err(r) = ctx.viewer(&st) {
        return r;
    }
    refuse(&ctx, &st, StatusCode::NOT_FOUND, "no such page")
}

// --- login, setup, logout ------------------------------------------------

// Every field defaults, so a request missing one reaches the session and
// CSRF checks (and gets their answer) instead of a bare 422.

macro_rules! viewer {
    ($ctx:expr, $st:expr) => {
        match $ctx.viewer(&$st) {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

mod access;
mod api;
mod pages;
#[cfg(test)]
mod tests;

use access::*;
use api::*;
use pages::*;
