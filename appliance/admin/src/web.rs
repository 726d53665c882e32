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
        .route("/enrollment", get(enrollment_page).post(enroll))
        .route("/audit", get(audit_page))
        .route("/settings", get(settings_page))
        .route("/settings/password", post(change_password))
        .route("/settings/certificate", post(install_certificate))
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
    ("GET", "/enrollment"),
    ("POST", "/enrollment"),
    ("GET", "/audit"),
    ("GET", "/settings"),
    ("POST", "/settings/password"),
    ("POST", "/settings/certificate"),
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
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
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
#[derive(Deserialize, Default)]
#[serde(default)]
struct LoginForm {
    user: String,
    password: String,
}

async fn login_page(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<HashMap<String, String>>) -> Response {
    if crate::state_lock(&st.auth).setup_pending() {
        return Redirect::to("/setup").into_response();
    }
    if ctx.session.is_some() {
        return Redirect::to("/").into_response();
    }
    let note = q
        .contains_key("done")
        .then_some("Setup is done. Log in with the operator or viewer password.");
    Html(views::login(None, note)).into_response()
}

/// A hash to check against for unknown users, so a wrong name takes as
/// long as a wrong password.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| auth::hash_password("not a real account password").unwrap_or_default())
}

/// A reserved login attempt (see [`auth::Auth::begin_login`]): given back
/// if the request ends before its check does (the client went away, or no
/// hashing permit was free).
struct Attempt {
    auth: Arc<Mutex<auth::Auth>>,
    user: String,
    ip: IpAddr,
    finished: bool,
}

impl Attempt {
    fn finish(mut self, ok: bool) -> Result<(String, Session), AuthError> {
        self.finished = true;
        crate::state_lock(&self.auth).finish_login(&self.user, self.ip, ok, now())
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.finished {
            crate::state_lock(&self.auth).abandon_login(&self.user, self.ip);
        }
    }
}

/// 503 with `Retry-After`: no hashing permit was free.
fn busy(page: String) -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, Html(page)).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(crate::hashing::RETRY_AFTER_SECS));
    r
}

async fn login(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<LoginForm>) -> Response {
    let user = f.user.trim().to_string();
    // The limits are taken before any hashing: a refused attempt costs
    // nothing but this lookup.
    let begin = crate::state_lock(&st.auth).begin_login(&user, ctx.ip, now());
    let hash = match begin {
        Ok(h) => h,
        Err(e) => {
            ctx.failed_login(&st, &user, &e.to_string());
            return (
                StatusCode::TOO_MANY_REQUESTS,
                Html(views::login(Some(&e.to_string()), None)),
            )
                .into_response();
        }
    };
    let attempt = Attempt {
        auth: st.auth.clone(),
        user: user.clone(),
        ip: ctx.ip,
        finished: false,
    };
    let pw = f.password;
    let checked = st
        .hasher
        .run(move || auth::verify_password(&pw, hash.as_deref().unwrap_or_else(|| dummy_hash())) && hash.is_some())
        .await;
    let ok = match checked {
        Ok(ok) => ok,
        Err(e) => {
            drop(attempt);
            return busy(views::login(Some(&e.to_string()), None));
        }
    };
    match attempt.finish(ok) {
        Ok((token, _)) => {
            ctx.audit(&st, &user, "login", "", "ok");
            let mut r = Redirect::to("/").into_response();
            r.headers_mut().insert(header::SET_COOKIE, session_cookie(&token));
            r
        }
        Err(e) => {
            ctx.failed_login(&st, &user, &e.to_string());
            let status = if matches!(e, AuthError::Locked(_)) {
                StatusCode::TOO_MANY_REQUESTS
            } else {
                StatusCode::UNAUTHORIZED
            };
            (status, Html(views::login(Some(&e.to_string()), None))).into_response()
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SetupForm {
    code: String,
    operator: String,
    operator2: String,
    viewer: String,
    viewer2: String,
}

async fn setup_page(State(st): State<AdminState>) -> Response {
    if !crate::state_lock(&st.auth).setup_pending() {
        return Redirect::to("/login").into_response();
    }
    Html(views::setup(None)).into_response()
}

async fn setup(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<SetupForm>) -> Response {
    let fail = |msg: &str, status: StatusCode| (status, Html(views::setup(Some(msg)))).into_response();
    if f.operator != f.operator2 || f.viewer != f.viewer2 {
        return fail("the two copies of a password differ", StatusCode::BAD_REQUEST);
    }
    let checked = crate::state_lock(&st.auth).check_setup(&f.code, &f.operator, &f.viewer, ctx.ip, now());
    if let Err(e) = checked {
        // The code itself is never written anywhere.
        ctx.failed_login(&st, "(setup)", &e.to_string());
        let status = match e {
            AuthError::AlreadySetUp => return Redirect::to("/login").into_response(),
            AuthError::WeakPassword(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::FORBIDDEN,
        };
        return fail(&e.to_string(), status);
    }
    let (op, vw) = (f.operator, f.viewer);
    let hashes = st
        .hasher
        .run(move || Ok::<_, AuthError>((auth::hash_password(&op)?, auth::hash_password(&vw)?)))
        .await;
    let done = match hashes {
        Ok(Ok((a, b))) => crate::state_lock(&st.auth).finish_setup(a, b),
        Ok(Err(e)) => Err(e),
        Err(e) => return busy(views::setup(Some(&e.to_string()))),
    };
    match done {
        Ok(()) => {
            ctx.audit(&st, "-", "setup", "operator and viewer passwords", "ok");
            Redirect::to("/login?done=1").into_response()
        }
        Err(e) => fail(&e.to_string(), StatusCode::INTERNAL_SERVER_ERROR),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn logout(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<CsrfForm>) -> Response {
    let s = match ctx.viewer(&st) {
        Ok(s) => s,
        Err(r) => return r,
    };
    if let Err(r) = ctx.csrf(&st, &s, f.csrf.as_deref()) {
        return r;
    }
    if let Some(t) = &ctx.token {
        crate::state_lock(&st.auth).logout(t);
    }
    ctx.audit(&st, &s.user, "logout", "", "ok");
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
    r
}

// --- pages -----------------------------------------------------------------

macro_rules! viewer {
    ($ctx:expr, $st:expr) => {
        match $ctx.viewer(&$st) {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

async fn overview(ctx: Ctx, State(st): State<AdminState>) -> Response {
    let s = viewer!(ctx, st);
    Html(views::overview(&s, &st.backend.status())).into_response()
}

#[derive(Deserialize)]
struct WindowQuery {
    window: Option<Window>,
}

async fn hardware(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<WindowQuery>) -> Response {
    let s = viewer!(ctx, st);
    let window = q.window.unwrap_or(Window::Hour);
    Html(views::hardware(&s, &st.backend.status(), st.backend.as_ref(), window)).into_response()
}

async fn services_page(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let s = viewer!(ctx, st);
    Html(views::services(
        &s,
        &st.backend.status(),
        q.get("msg").map(String::as_str),
    ))
    .into_response()
}

async fn service_form(
    ctx: Ctx,
    State(st): State<AdminState>,
    Path((name, action)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let res = match service_action(&ctx, &st, &name, &action, f.csrf.as_deref()).await {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    let msg = match &res {
        Ok(m) => m.clone(),
        Err(e) => e.to_string(),
    };
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("msg", &msg)
        .finish();
    Redirect::to(&format!("/services?{q}")).into_response()
}

/// An operator's service action from a form or the API: role and CSRF
/// checked, carried out, audited either way. `Err` is the refusal to send.
async fn service_action(
    ctx: &Ctx,
    st: &AdminState,
    name: &str,
    action: &str,
    csrf: Option<&str>,
) -> Result<Result<String, ActionError>, Response> {
    let s = match ctx.operator(st, csrf) {
        Ok(s) => s,
        Err(r) => {
            let who = ctx.session.as_ref().map(|s| s.user.as_str()).unwrap_or("-");
            ctx.audit(st, who, &format!("service {action}"), name, "refused");
            return Err(r);
        }
    };
    let Some(act) = parse_action(action) else {
        return Err(refuse(
            ctx,
            st,
            StatusCode::NOT_FOUND,
            "unknown action: restart or reset",
        ));
    };
    let res = st.backend.service_action(name.to_string(), act).await;
    let outcome = res.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string());
    ctx.audit(st, &s.user, &format!("service {}", act.as_str()), name, &outcome);
    Ok(res)
}

fn parse_action(a: &str) -> Option<ServiceAction> {
    match a {
        "restart" => Some(ServiceAction::Restart),
        "reset" => Some(ServiceAction::Reset),
        _ => None,
    }
}

async fn meetings_page(ctx: Ctx, State(st): State<AdminState>) -> Response {
    let s = viewer!(ctx, st);
    Html(views::meetings(&s, &st.backend.status())).into_response()
}

#[derive(Deserialize, Default)]
struct LogsQuery {
    unit: Option<String>,
    contains: Option<String>,
    limit: Option<usize>,
}

impl LogsQuery {
    fn to_query(&self) -> LogQuery {
        LogQuery {
            unit: self.unit.clone().filter(|u| !u.is_empty()),
            contains: self.contains.clone().filter(|c| !c.is_empty()),
            limit: self.limit.unwrap_or(200).clamp(1, 2000),
        }
    }
}

async fn logs_page(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<LogsQuery>) -> Response {
    let s = viewer!(ctx, st);
    let query = q.to_query();
    let lines = st.backend.logs(query.clone()).await;
    Html(views::logs(&s, &st.backend.status(), &query, lines)).into_response()
}

async fn updates_page(ctx: Ctx, State(st): State<AdminState>) -> Response {
    let s = viewer!(ctx, st);
    Html(views::updates(&s, &st.backend.status())).into_response()
}

async fn enrollment_page(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let s = viewer!(ctx, st);
    Html(views::enrollment(
        &s,
        &st.backend.status(),
        q.get("msg").map(String::as_str),
    ))
    .into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct EnrollForm {
    csrf: Option<String>,
    ops: String,
    token: String,
}

async fn enroll(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<EnrollForm>) -> Response {
    let s = match ctx.operator(&st, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let res = st.backend.enroll(f.ops.clone(), f.token).await;
    let outcome = res.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string());
    // The token is a secret: only the ops URL goes into the audit log.
    ctx.audit(&st, &s.user, "enroll", &f.ops, &outcome);
    let msg = match res {
        Ok(m) => m,
        Err(e) => e.to_string(),
    };
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("msg", &msg)
        .finish();
    Redirect::to(&format!("/enrollment?{q}")).into_response()
}

async fn audit_page(ctx: Ctx, State(st): State<AdminState>) -> Response {
    let s = viewer!(ctx, st);
    Html(views::audit(
        &s,
        &st.backend.status(),
        &st.audit.tail(500),
        &st.audit.failed_logins(),
    ))
    .into_response()
}

async fn settings_page(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let s = viewer!(ctx, st);
    Html(views::settings(
        &s,
        &st.backend.status(),
        &st.backend.certificate(),
        q.get("msg").map(String::as_str),
    ))
    .into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PasswordForm {
    csrf: Option<String>,
    account: String,
    password: String,
    password2: String,
}

async fn change_password(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<PasswordForm>) -> Response {
    let s = match ctx.operator(&st, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let back = |msg: &str| {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("msg", msg)
            .finish();
        Redirect::to(&format!("/settings?{q}")).into_response()
    };
    if f.account != "operator" && f.account != "viewer" {
        return back("choose the operator or the viewer account");
    }
    if f.password != f.password2 {
        return back("the two copies of the password differ");
    }
    if let Err(e) = auth::check_strength(&f.password, &f.account) {
        return back(&e);
    }
    let pw = f.password;
    let hashed = st.hasher.run(move || auth::hash_password(&pw)).await;
    let res = match hashed {
        Ok(Ok(h)) => crate::state_lock(&st.auth).set_password(&f.account, h),
        Ok(Err(e)) => Err(e),
        Err(e) => return back(&e.to_string()),
    };
    let outcome = res.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string());
    ctx.audit(&st, &s.user, "change password", &f.account, &outcome);
    match res {
        // Changing the operator's own password ends its sessions.
        Ok(()) if f.account == s.user => {
            let mut r = Redirect::to("/login").into_response();
            r.headers_mut().insert(header::SET_COOKIE, clear_cookie());
            r
        }
        Ok(()) => back(&format!(
            "the {} password was changed; its sessions were ended",
            f.account
        )),
        Err(e) => back(&e.to_string()),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CertForm {
    csrf: Option<String>,
    certificate: String,
    key: String,
}

async fn install_certificate(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<CertForm>) -> Response {
    let s = match ctx.operator(&st, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let res = st.backend.install_certificate(f.certificate, f.key);
    let outcome = res.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string());
    ctx.audit(&st, &s.user, "install certificate", "admin page", &outcome);
    let msg = match res {
        Ok(m) => m,
        Err(e) => e.to_string(),
    };
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("msg", &msg)
        .finish();
    Redirect::to(&format!("/settings?{q}")).into_response()
}

async fn support_bundle(ctx: Ctx, State(st): State<AdminState>) -> Response {
    let s = viewer!(ctx, st);
    if s.role != Role::Operator {
        return refuse(
            &ctx,
            &st,
            StatusCode::FORBIDDEN,
            "only the operator may download the support bundle",
        );
    }
    let mut files = st.backend.support_files();
    let audit: String = st
        .audit
        .tail(1000)
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .map(|l| l + "\n")
        .collect();
    files.push(("audit.jsonl".into(), audit.into_bytes()));
    files.push((
        "failed-logins.json".into(),
        serde_json::to_vec_pretty(&st.audit.failed_logins()).unwrap_or_default(),
    ));
    ctx.audit(&st, &s.user, "download support bundle", "", "ok");
    match crate::bundle::tar_gz(&files) {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("application/gzip")),
                (
                    header::CONTENT_DISPOSITION,
                    HeaderValue::from_static("attachment; filename=\"support-bundle.tar.gz\""),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Html(views::message_page("Support bundle failed", &e.to_string())),
        )
            .into_response(),
    }
}

// --- JSON API ----------------------------------------------------------------

async fn api_session(ctx: Ctx, State(st): State<AdminState>) -> Response {
    let s = viewer!(ctx, st);
    Json(serde_json::json!({ "user": s.user, "role": s.role, "csrf": s.csrf })).into_response()
}

/// How long a serialised status is reused: the figures change once per
/// sample (a second), and dashboards poll this route hard.
const STATUS_CACHE: std::time::Duration = std::time::Duration::from_millis(250);

async fn api_status(ctx: Ctx, State(st): State<AdminState>) -> Response {
    viewer!(ctx, st);
    let body = {
        let mut cache = crate::state_lock(&st.status_cache);
        match cache.as_ref() {
            Some((at, b)) if at.elapsed() < STATUS_CACHE => b.clone(),
            _ => {
                let b = axum::body::Bytes::from(serde_json::to_vec(&st.backend.status()).unwrap_or_default());
                *cache = Some((std::time::Instant::now(), b.clone()));
                b
            }
        }
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn api_services(ctx: Ctx, State(st): State<AdminState>) -> Response {
    viewer!(ctx, st);
    Json(st.backend.status().services).into_response()
}

async fn api_service_action(
    ctx: Ctx,
    State(st): State<AdminState>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    let res = match service_action(&ctx, &st, &name, &action, csrf).await {
        Ok(r) => r,
        Err(refusal) => return refusal,
    };
    match res {
        Ok(m) => Json(serde_json::json!({ "ok": true, "message": m })).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

async fn api_series(ctx: Ctx, State(st): State<AdminState>) -> Response {
    viewer!(ctx, st);
    Json(st.backend.series()).into_response()
}

#[derive(Deserialize)]
struct HistoryQuery {
    series: String,
    window: Option<Window>,
}

async fn api_history(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<HistoryQuery>) -> Response {
    viewer!(ctx, st);
    let window = q.window.unwrap_or(Window::Hour);
    let points = st.backend.history(&q.series, window);
    Json(serde_json::json!({ "series": q.series, "window": window, "points": points })).into_response()
}

async fn api_meetings(ctx: Ctx, State(st): State<AdminState>) -> Response {
    viewer!(ctx, st);
    Json(st.backend.status().bbb).into_response()
}

async fn api_logs(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<LogsQuery>) -> Response {
    viewer!(ctx, st);
    match st.backend.logs(q.to_query()).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AuditQuery {
    before: Option<usize>,
    limit: Option<usize>,
}

/// One page of the audit log, newest first (`?before=N&limit=M`, at most
/// 500 a page), and the failed-login windows.
async fn api_audit(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<AuditQuery>) -> Response {
    viewer!(ctx, st);
    let page = st.audit.page(q.before, q.limit.unwrap_or(100).clamp(1, 500));
    Json(serde_json::json!({
        "entries": page.entries,
        "next_before": page.next_before,
        "total": page.total,
        "failed_logins": st.audit.failed_logins(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use appliance_api::{Hardware, Health, Node, Status};
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;
    use crate::audit::AuditLog;
    use crate::auth::Auth;
    use crate::{Backend, BoxFuture, LogLine, tls};

    struct Fake {
        actions: Mutex<Vec<String>>,
    }

    impl Backend for Fake {
        fn metrics(&self) -> String {
            "m 1\n".into()
        }
        fn alive(&self) -> bool {
            true
        }
        fn status(&self) -> Status {
            Status {
                node: Node {
                    name: "n".into(),
                    version: "0.1.0".into(),
                    started_at: 0.0,
                    uptime_seconds: 5.0,
                },
                hardware: Hardware {
                    profile: "qemu".into(),
                    description: "d".into(),
                    reason: "r".into(),
                    uplink: None,
                },
                health: Health::default(),
                alerts: vec![],
                sensors: vec![],
                monitor: None,
                services: None,
                bbb: None,
                enrollment: None,
                reports: None,
            }
        }
        fn series(&self) -> Vec<String> {
            vec!["cpu".into()]
        }
        fn history(&self, _: &str, _: Window) -> Vec<(u64, Option<f32>)> {
            vec![(0, Some(0.5)), (1, Some(0.25))]
        }
        fn service_action(&self, name: String, action: ServiceAction) -> BoxFuture<'_, Result<String, ActionError>> {
            Box::pin(async move {
                if name == "busy" {
                    return Err(ActionError::Conflict("busy is already being restarted".into()));
                }
                if name == "nope" {
                    return Err(ActionError::NotFound("no service named \"nope\"".into()));
                }
                self.actions.lock().unwrap().push(format!("{} {name}", action.as_str()));
                Ok(format!("{} {name}", action.as_str()))
            })
        }
        fn logs(&self, _: LogQuery) -> BoxFuture<'_, Result<Vec<LogLine>, ActionError>> {
            Box::pin(async { Ok(vec![]) })
        }
        fn support_files(&self) -> Vec<(String, Vec<u8>)> {
            vec![("status.json".into(), b"{}".to_vec())]
        }
        fn enroll(&self, ops: String, _: String) -> BoxFuture<'_, Result<String, ActionError>> {
            Box::pin(async move {
                self.actions.lock().unwrap().push(format!("enroll {ops}"));
                Ok("enrolled".into())
            })
        }
        fn install_certificate(&self, _: String, _: String) -> Result<String, ActionError> {
            Err(ActionError::Invalid("not in tests".into()))
        }
        fn certificate(&self) -> tls::CertInfo {
            tls::CertInfo {
                cert_path: "c".into(),
                key_path: "k".into(),
                fingerprint_sha256: "AA".into(),
                not_after: 0,
                generated: true,
            }
        }
    }

    const OP: &str = "Operator-pass-1234";
    const VIEW: &str = "viewer pass phrase 99";

    struct App {
        router: Router,
        auth: Arc<Mutex<Auth>>,
        backend: Arc<Fake>,
        _dir: tempfile::TempDir,
    }

    fn app(setup_done: bool) -> App {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Auth::open(dir.path()).unwrap();
        if setup_done {
            let code = a.setup_code().unwrap().to_string();
            a.check_setup(&code, OP, VIEW, IpAddr::from([127, 0, 0, 1]), 0.0)
                .unwrap();
            a.finish_setup(auth::hash_password(OP).unwrap(), auth::hash_password(VIEW).unwrap())
                .unwrap();
        }
        let auth = Arc::new(Mutex::new(a));
        let backend = Arc::new(Fake {
            actions: Mutex::new(vec![]),
        });
        let state = AdminState::new(backend.clone(), auth.clone(), Arc::new(AuditLog::open(dir.path())));
        App {
            router: router(state),
            auth,
            backend,
            _dir: dir,
        }
    }

    async fn send(
        app: &App,
        method: &str,
        uri: &str,
        cookie: Option<&str>,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "node:8443");
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, format!("{COOKIE}={c}"));
        }
        if method == "POST" {
            b = b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let res = app
            .router
            .clone()
            .oneshot(b.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned();
        (status, headers, body)
    }

    fn login_as(app: &App, user: &str) -> (String, String) {
        let (tok, s) = app
            .auth
            .lock()
            .unwrap()
            .finish_login(user, IpAddr::from([127, 0, 0, 1]), true, now())
            .unwrap();
        (tok, s.csrf)
    }

    /// ROUTES, which the tests walk, must name every route of the router:
    /// a route added without adding it there would go untested.
    #[test]
    fn routes_list_covers_the_router() {
        let src = include_str!("web.rs");
        let body = &src[src.find("pub(crate) fn router").unwrap()..src.find("/// The list of routes").unwrap()];
        let mut n = 0;
        for part in body.split(".route(\"").skip(1) {
            let path = &part[..part.find('"').unwrap()];
            n += 1;
            if ["/healthz", "/metrics", "/login", "/setup"].contains(&path) {
                continue;
            }
            let concrete = path.replace("{name}", "nginx").replace("{action}", "restart");
            assert!(
                ROUTES
                    .iter()
                    .any(|(_, p)| p.split('?').next() == Some(concrete.as_str())),
                "{path} is missing from ROUTES"
            );
        }
        assert!(n >= 25, "found {n} routes");
    }

    #[tokio::test]
    async fn every_route_needs_a_session_but_the_public_ones() {
        let app = app(true);
        for (method, path) in ROUTES {
            let (status, headers, _) = send(&app, method, path, None, "", &[]).await;
            if path.starts_with("/api/") {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
            } else {
                assert_eq!(status, StatusCode::SEE_OTHER, "{method} {path}");
                assert_eq!(headers.get(header::LOCATION).unwrap(), "/login", "{method} {path}");
            }
        }
        for path in ["/healthz", "/metrics", "/login"] {
            assert_eq!(send(&app, "GET", path, None, "", &[]).await.0, StatusCode::OK, "{path}");
        }
        // A made-up or expired cookie is no session.
        assert_eq!(
            send(&app, "GET", "/api/v1/status", Some("deadbeef"), "", &[]).await.0,
            StatusCode::UNAUTHORIZED
        );
        // Before setup, pages lead to the setup page instead.
        let fresh = self::app(false);
        let (status, headers, _) = send(&fresh, "GET", "/", None, "", &[]).await;
        assert_eq!(
            (status, headers.get(header::LOCATION).unwrap().to_str().unwrap()),
            (StatusCode::SEE_OTHER, "/setup")
        );
        assert_eq!(
            send(&fresh, "GET", "/login", None, "", &[]).await.0,
            StatusCode::SEE_OTHER
        );
    }

    #[tokio::test]
    async fn a_viewer_sees_but_cannot_change() {
        let app = app(true);
        let (tok, csrf) = login_as(&app, "viewer");
        for (method, path) in ROUTES {
            let (status, _, _) = if *method == "GET" {
                send(&app, method, path, Some(&tok), "", &[]).await
            } else {
                send(
                    &app,
                    method,
                    path,
                    Some(&tok),
                    &format!("csrf={csrf}"),
                    &[("x-csrf-token", &csrf)],
                )
                .await
            };
            let changes = *method == "POST" && *path != "/logout";
            let want = if changes || *path == "/support-bundle" {
                StatusCode::FORBIDDEN
            } else if *path == "/logout" {
                StatusCode::SEE_OTHER
            } else if *path == "/no/such/page" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            assert_eq!(status, want, "viewer {method} {path}");
            if *path == "/logout" {
                break; // the session is gone after this one
            }
        }
        assert!(
            app.backend.actions.lock().unwrap().is_empty(),
            "nothing was done for the viewer"
        );
        // The services page offers the viewer no buttons.
        let (tok, _) = login_as(&app, "viewer");
        let (_, _, body) = send(&app, "GET", "/services", Some(&tok), "", &[]).await;
        assert!(!body.contains("class=\"restart\""));
        let (tok, _) = login_as(&app, "operator");
        let (_, _, body) = send(&app, "GET", "/settings", Some(&tok), "", &[]).await;
        assert!(body.contains("/settings/password"));
    }

    #[tokio::test]
    async fn api_errors_take_their_status_from_their_kind() {
        let app = app(true);
        let (tok, csrf) = login_as(&app, "operator");
        for (name, status, kind) in [
            ("busy", StatusCode::CONFLICT, "conflict"),
            ("nope", StatusCode::NOT_FOUND, "not_found"),
        ] {
            let (got, _, body) = send(
                &app,
                "POST",
                &format!("/api/v1/services/{name}/restart"),
                Some(&tok),
                "",
                &[("x-csrf-token", &csrf)],
            )
            .await;
            assert_eq!(got, status, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                (v["ok"].as_bool(), v["kind"].as_str()),
                (Some(false), Some(kind)),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn state_changes_need_the_csrf_token_and_same_origin() {
        let app = app(true);
        let (tok, csrf) = login_as(&app, "operator");
        let (status, _, _) = send(&app, "POST", "/services/nginx/restart", Some(&tok), "", &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "no token");
        let (status, _, _) = send(&app, "POST", "/services/nginx/restart", Some(&tok), "csrf=0000", &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "wrong token");
        let (status, _, _) = send(
            &app,
            "POST",
            "/services/nginx/restart",
            Some(&tok),
            &format!("csrf={csrf}"),
            &[("origin", "https://evil.example")],
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "foreign origin");
        let (status, _, _) = send(
            &app,
            "POST",
            "/services/nginx/restart",
            Some(&tok),
            &format!("csrf={csrf}"),
            &[("origin", "null")],
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "Origin: null (a sandboxed frame)");
        let (status, _, _) = send(&app, "POST", "/api/v1/services/nginx/restart", Some(&tok), "", &[]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "API without header");
        assert!(app.backend.actions.lock().unwrap().is_empty());
        let (status, headers, _) = send(
            &app,
            "POST",
            "/services/nginx/restart",
            Some(&tok),
            &format!("csrf={csrf}"),
            &[("origin", "https://node:8443")],
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(
            headers
                .get(header::LOCATION)
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("/services?msg=restart+nginx")
        );
        let (status, _, body) = send(
            &app,
            "POST",
            "/api/v1/services/nginx/reset",
            Some(&tok),
            "",
            &[("x-csrf-token", &csrf)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(*app.backend.actions.lock().unwrap(), ["restart nginx", "reset nginx"]);
    }

    #[tokio::test]
    async fn ten_wrong_passwords_lock_the_account() {
        let app = app(true);
        for i in 1..=10 {
            let (status, _, body) = send(
                &app,
                "POST",
                "/login",
                None,
                "user=operator&password=wrong-guess-123",
                &[],
            )
            .await;
            if i < 10 {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "try {i}");
                assert!(body.contains("wrong user name or password"));
            } else {
                assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "try {i}");
                assert!(body.contains("locked for 15 more minutes"), "{body}");
            }
        }
        let (status, headers, _) = send(
            &app,
            "POST",
            "/login",
            None,
            &format!("user=operator&password={OP}"),
            &[],
        )
        .await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "the right password is refused while locked"
        );
        assert!(headers.get(header::SET_COOKIE).is_none());
        let (status, headers, _) = send(
            &app,
            "POST",
            "/login",
            None,
            &format!("user=viewer&password={}", VIEW.replace(' ', "+")),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER, "the other account still works");
        let cookie = headers.get(header::SET_COOKIE).unwrap().to_str().unwrap();
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(flag), "{cookie}");
        }
    }
}
