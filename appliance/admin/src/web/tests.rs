use std::sync::{Arc, Mutex};

use appliance_api::{Hardware, Health, Node, Status};
use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::audit::AuditLog;
use crate::auth::Auth;
use crate::{Backend, BoxFuture, LogLine};

struct Fake {
    actions: Mutex<Vec<String>>,
}

impl Backend for Fake {
    fn members(&self) -> Vec<appliance_members::MemberView> {
        vec![appliance_members::MemberView {
            slug: "coop-a".into(),
            name: "Co-op A".into(),
            limits: appliance_members::Limits {
                participants: Some(50),
                rooms: None,
                duration_minutes: Some(240),
            },
            secrets: vec![appliance_members::SecretView {
                id: 1,
                created: 0,
                expires: None,
            }],
            added: 0,
        }]
    }
    fn members_action(&self, action: appliance_members::Action) -> Result<appliance_members::Outcome, ActionError> {
        self.actions
            .lock()
            .unwrap()
            .push(format!("{} {}", action.verb(), action.slug()));
        Ok(appliance_members::Outcome {
            message: format!("{} {}: done", action.verb(), action.slug()),
            secret: matches!(action, appliance_members::Action::Add { .. }).then(|| "s3cret-shown-once".to_string()),
        })
    }
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
                timezone: "UTC".into(),
            },
            hardware: Hardware {
                profile: "qemu".into(),
                description: "d".into(),
                reason: "r".into(),
                uplink: None,
                uplink_capacity_mbps: None,
            },
            health: Health::default(),
            alerts: vec![],
            sensors: vec![],
            monitor: None,
            services: None,
            bbb: None,
            enrollment: None,
            reports: Some(appliance_api::ReportsView {
                this_month: Some(appliance_api::MonthUsageView {
                    month: "2026-11".into(),
                    members: vec![appliance_api::MemberMonthView {
                        member: "coop-a".into(),
                        meeting_seconds: 5400,
                        participant_seconds: 36_000,
                        peak_participants: 31,
                    }],
                }),
                ..appliance_api::ReportsView::default()
            }),
            update: None,
            certificate: None,
            limits: None,
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
            if ops.contains("unreachable") {
                return Err(ActionError::Unavailable(format!("{ops} does not answer")));
            }
            self.actions.lock().unwrap().push(format!("enroll {ops}"));
            Ok("enrolled".into())
        })
    }
    fn install_certificate(&self, _: String, _: String) -> Result<String, ActionError> {
        Err(ActionError::Invalid("not in tests".into()))
    }
    fn update_action(&self, action: appliance_api::UpdateAction) -> Result<String, appliance_api::ActionError> {
        Ok(format!("update {}", action.as_str()))
    }
    fn certificate(&self) -> crate::CertificateView {
        crate::CertificateView {
            fingerprint_sha256: "AA".into(),
            not_after: 0,
            generated: true,
        }
    }
    fn ssh(&self) -> appliance_api::SshView {
        appliance_api::SshView {
            available: true,
            enabled: false,
            keys: vec![],
        }
    }
    fn ssh_action(&self, action: appliance_api::SshAction, by: String) -> BoxFuture<'_, Result<String, ActionError>> {
        Box::pin(async move {
            if action == appliance_api::SshAction::Enable {
                return Err(ActionError::Invalid("SSH cannot be turned on without a key".into()));
            }
            self.actions.lock().unwrap().push(format!("ssh {action:?} by {by}"));
            Ok("done".into())
        })
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
    let src = include_str!("mod.rs");
    let body = &src[src.find("pub(crate) fn router").unwrap()..src.find("/// The list of routes").unwrap()];
    let mut n = 0;
    for part in body.split(".route(\"").skip(1) {
        let path = &part[..part.find('"').unwrap()];
        n += 1;
        if ["/healthz", "/metrics", "/login", "/setup"].contains(&path) {
            continue;
        }
        let action = if path.starts_with("/updates") {
            "check"
        } else {
            "restart"
        };
        let concrete = path.replace("{name}", "nginx").replace("{action}", action);
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
    // Browsers send the page's own origin on its form posts only when the
    // referrer policy allows it ("no-referrer" makes them send "null",
    // which the same-origin check refuses).
    let (_, headers, _) = send(&app, "GET", "/login", None, "", &[]).await;
    assert_eq!(headers.get(header::REFERRER_POLICY).unwrap(), "same-origin");
    assert_eq!(headers.get(header::X_FRAME_OPTIONS).unwrap(), "DENY");
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

#[tokio::test]
async fn ssh_changes_are_the_operators_and_audited() {
    let app = app(true);
    let (tok, csrf) = login_as(&app, "operator");
    let post = |body: String| {
        let app = &app;
        let tok = tok.clone();
        async move { send(app, "POST", "/settings/ssh", Some(&tok), &body, &[]).await }
    };
    let (_, _, page) = send(&app, "GET", "/settings", Some(&tok), "", &[]).await;
    assert!(
        page.contains("SSH is <strong>off</strong>") && page.contains("Turn SSH on"),
        "{page}"
    );
    let (status, headers, _) = post(format!("csrf={csrf}&action=add&key=ssh-ed25519+AAAA+x")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers[header::LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/settings?msg=done")
    );
    let (_, headers, _) = post(format!("csrf={csrf}&action=enable")).await;
    assert!(
        headers[header::LOCATION].to_str().unwrap().contains("without+a+key"),
        "the backend's refusal reaches the page"
    );
    assert_eq!(
        post(format!("csrf={csrf}&action=reboot")).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        post("action=disable".into()).await.0,
        StatusCode::FORBIDDEN,
        "no CSRF token"
    );
    assert_eq!(
        *app.backend.actions.lock().unwrap(),
        ["ssh AddKey(\"ssh-ed25519 AAAA x\") by operator"]
    );
    let (_, _, audit) = send(&app, "GET", "/api/v1/audit", Some(&tok), "", &[]).await;
    assert!(
        audit.contains("add SSH key") && audit.contains("turn SSH on"),
        "{audit}"
    );
    assert!(
        !audit.contains("AAAA"),
        "the audit log names keys, never carries them: {audit}"
    );
}

/// Members: the viewer reads them, the operator changes them; a new
/// secret is shown in the answer only (never in a URL, never cached) and
/// never reaches the audit log.
#[tokio::test]
async fn members_are_the_operators_and_a_new_secret_is_shown_once() {
    let app = app(true);
    let (vtok, vcsrf) = login_as(&app, "viewer");
    let (_, _, page) = send(&app, "GET", "/members", Some(&vtok), "", &[]).await;
    assert!(
        page.contains("coop-a") && page.contains("participants ? / 50"),
        "{page}"
    );
    // This month's usage beside the limits, as the node counted it.
    assert!(page.contains("This month (2026-11, UTC)"), "{page}");
    for want in [
        "meeting hours 1.5<",
        "participant hours 10.0<",
        "peak participants 31 / 50<",
    ] {
        assert!(page.contains(want), "{want}: {page}");
    }
    assert!(!page.contains("Add member"), "no forms for the viewer");
    let add = form(&[("csrf", &vcsrf), ("action", "add"), ("slug", "coop-b"), ("name", "B")]);
    assert_eq!(
        send(&app, "POST", "/members", Some(&vtok), &add, &[]).await.0,
        StatusCode::FORBIDDEN
    );
    let (tok, csrf) = login_as(&app, "operator");
    let (_, _, page) = send(&app, "GET", "/members", Some(&tok), "", &[]).await;
    assert!(page.contains("Add member") && page.contains("value=\"240\""), "{page}");
    let add = form(&[
        ("csrf", &csrf),
        ("action", "add"),
        ("slug", "coop-b"),
        ("name", "B"),
        ("rooms", "3"),
    ]);
    let (status, headers, page) = send(&app, "POST", "/members", Some(&tok), &add, &[]).await;
    assert_eq!(status, StatusCode::OK, "answered, not redirected: {page}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(page.contains("id=\"secret-value\">s3cret-shown-once<"), "{page}");
    let (_, _, again) = send(&app, "GET", "/members", Some(&tok), "", &[]).await;
    assert!(!again.contains("s3cret-shown-once"), "shown once");
    // A limit that is not a number, and a removal without the tick: said,
    // nothing done.
    let bad = form(&[
        ("csrf", &csrf),
        ("action", "set"),
        ("slug", "coop-a"),
        ("rooms", "many"),
    ]);
    let (status, headers, _) = send(&app, "POST", "/members", Some(&tok), &bad, &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        location(&headers).contains("not+a+whole+number"),
        "{}",
        location(&headers)
    );
    let rm = form(&[("csrf", &csrf), ("action", "remove"), ("slug", "coop-a")]);
    let (_, headers, _) = send(&app, "POST", "/members", Some(&tok), &rm, &[]).await;
    assert!(location(&headers).contains("confirm"), "{}", location(&headers));
    let rm = form(&[
        ("csrf", &csrf),
        ("action", "remove"),
        ("slug", "coop-a"),
        ("confirm", "yes"),
    ]);
    send(&app, "POST", "/members", Some(&tok), &rm, &[]).await;
    assert_eq!(
        *app.backend.actions.lock().unwrap(),
        ["add member coop-b", "remove member coop-a"]
    );
    let (_, _, audit) = send(&app, "GET", "/api/v1/audit", Some(&tok), "", &[]).await;
    assert!(
        audit.contains("add member") && audit.contains("remove member"),
        "{audit}"
    );
    assert!(!audit.contains("s3cret-shown-once"), "{audit}");
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn location(h: &HeaderMap) -> String {
    h.get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Changing a password takes the operator's current one: an unattended
/// session is not enough, and wrong guesses count like failed logins.
#[tokio::test]
async fn a_password_change_needs_the_current_password() {
    let app = app(true);
    let (tok, csrf) = login_as(&app, "operator");
    let change = |current: &'static str| {
        form(&[
            ("csrf", &csrf),
            ("account", "viewer"),
            ("current", current),
            ("password", "Another-pass-123"),
            ("password2", "Another-pass-123"),
        ])
    };
    for current in ["", "wrong-Operator-pass-1234", VIEW] {
        let (status, h, _) = send(&app, "POST", "/settings/password", Some(&tok), &change(current), &[]).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(
            location(&h).contains("current+password+is+not+right"),
            "{current:?}: {}",
            location(&h)
        );
    }
    // The viewer's password is unchanged: its old one still logs in.
    let ip = IpAddr::from([127, 0, 0, 2]);
    let hash = app
        .auth
        .lock()
        .unwrap()
        .begin_login("viewer", ip, now())
        .unwrap()
        .unwrap();
    assert!(auth::verify_password(VIEW, &hash));
    app.auth.lock().unwrap().abandon_login("viewer", ip);
    let (_, _, page) = send(&app, "GET", "/audit", Some(&tok), "", &[]).await;
    assert_eq!(
        page.matches("refused: the current password is not right").count(),
        3,
        "each refusal is audited"
    );
    // The failures count toward the operator's lockout (10 in all).
    for _ in 0..7 {
        send(
            &app,
            "POST",
            "/settings/password",
            Some(&tok),
            &change("nope-nope-nope"),
            &[],
        )
        .await;
    }
    let (_, h, _) = send(&app, "POST", "/settings/password", Some(&tok), &change(OP), &[]).await;
    assert!(location(&h).contains("locked"), "{}", location(&h));

    // A fresh node: the right current password changes it.
    let app = self::app(true);
    let (tok, csrf) = login_as(&app, "operator");
    let body = form(&[
        ("csrf", &csrf),
        ("account", "viewer"),
        ("current", OP),
        ("password", "Another-pass-123"),
        ("password2", "Another-pass-123"),
    ]);
    let (_, h, _) = send(&app, "POST", "/settings/password", Some(&tok), &body, &[]).await;
    assert!(location(&h).contains("password+was+changed"), "{}", location(&h));
    let hash = app
        .auth
        .lock()
        .unwrap()
        .begin_login("viewer", ip, now())
        .unwrap()
        .unwrap();
    assert!(auth::verify_password("Another-pass-123", &hash));
}

/// A setup error keeps the code typed (not the passwords) and the page
/// states every rule the check enforces.
#[tokio::test]
async fn a_setup_error_keeps_the_code_and_states_the_rules() {
    let app = app(false);
    let code = app.auth.lock().unwrap().setup_code().unwrap().to_string();
    let body = form(&[
        ("code", &code),
        ("operator", "My-password-1234"),
        ("operator2", "My-password-1234"),
        ("viewer", VIEW),
        ("viewer2", VIEW),
    ]);
    let (status, _, page) = send(&app, "POST", "/setup", None, &body, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("must not contain &#34;password&#34;"), "{page}");
    assert!(page.contains(&format!("value=\"{code}\"")), "the code is kept");
    assert!(
        !page.contains("My-password-1234") && !page.contains(VIEW),
        "no password is echoed"
    );
    // Every rule check_strength enforces is stated, the refused word too.
    let rules = auth::password_rules();
    for w in auth::FORBIDDEN_WORDS {
        assert!(rules.contains(w), "{w}");
    }
    let text = page
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'");
    assert!(text.contains(&rules), "the rules are on the page");
    let (_, _, fresh) = send(&app, "GET", "/setup", None, "", &[]).await;
    assert!(fresh.contains("value=\"\""), "an empty code field at first");
}

/// An enrollment error keeps the ops URL (not the token); success is said
/// once, by the page's state line.
#[tokio::test]
async fn enrollment_keeps_the_ops_url_and_says_things_once() {
    let app = app(true);
    let (tok, csrf) = login_as(&app, "operator");
    let body = form(&[
        ("csrf", &csrf),
        ("ops", "https://unreachable.example:9443"),
        ("token", "tok-secret"),
    ]);
    let (_, h, _) = send(&app, "POST", "/enrollment", Some(&tok), &body, &[]).await;
    let to = location(&h);
    assert!(!to.contains("tok-secret"));
    let (_, _, page) = send(&app, "GET", &to, Some(&tok), "", &[]).await;
    assert!(page.contains("value=\"https://unreachable.example:9443\""), "{page}");
    assert!(page.contains("does not answer"));
    let body = form(&[("csrf", &csrf), ("ops", "https://ops.example:9443"), ("token", "tok")]);
    let (_, h, _) = send(&app, "POST", "/enrollment", Some(&tok), &body, &[]).await;
    assert_eq!(location(&h), "/enrollment");
    // The header names the account once.
    let (_, _, page) = send(&app, "GET", "/", Some(&tok), "", &[]).await;
    assert!(page.contains(r#"<span id="who">operator</span>"#), "{page}");
}
