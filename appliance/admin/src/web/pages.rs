//! The pages behind login, and the forms that change something: service
//! actions, enrollment, passwords, the certificate, the support bundle.

use super::*;

pub(super) async fn overview(ctx: Ctx, State(st): State<AdminState>) -> Response {
    let s = viewer!(ctx, st);
    Html(views::overview(&s, &st.backend.status())).into_response()
}

#[derive(Deserialize)]
pub(super) struct WindowQuery {
    window: Option<Window>,
}

pub(super) async fn hardware(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<WindowQuery>) -> Response {
    let s = viewer!(ctx, st);
    let window = q.window.unwrap_or(Window::Hour);
    Html(views::hardware(
        &s,
        &st.backend.status(),
        st.backend.as_ref(),
        window,
        now() as u64,
    ))
    .into_response()
}

pub(super) async fn services_page(
    ctx: Ctx,
    State(st): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = viewer!(ctx, st);
    Html(views::services(
        &s,
        &st.backend.status(),
        q.get("msg").map(String::as_str),
    ))
    .into_response()
}

pub(super) async fn service_form(
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
pub(super) async fn service_action(
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

pub(super) fn parse_action(a: &str) -> Option<ServiceAction> {
    match a {
        "restart" => Some(ServiceAction::Restart),
        "reset" => Some(ServiceAction::Reset),
        _ => None,
    }
}

pub(super) async fn meetings_page(ctx: Ctx, State(st): State<AdminState>) -> Response {
    let s = viewer!(ctx, st);
    Html(views::meetings(&s, &st.backend.status())).into_response()
}

#[derive(Deserialize, Default)]
pub(super) struct LogsQuery {
    unit: Option<String>,
    contains: Option<String>,
    limit: Option<usize>,
}

impl LogsQuery {
    pub(super) fn to_query(&self) -> LogQuery {
        LogQuery {
            unit: self.unit.clone().filter(|u| !u.is_empty()),
            contains: self.contains.clone().filter(|c| !c.is_empty()),
            limit: self.limit.unwrap_or(200).clamp(1, 2000),
        }
    }
}

pub(super) async fn logs_page(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<LogsQuery>) -> Response {
    let s = viewer!(ctx, st);
    let query = q.to_query();
    let lines = st.backend.logs(query.clone()).await;
    Html(views::logs(&s, &st.backend.status(), &query, lines)).into_response()
}

/// The Updates page's buttons: check now, install now (operator, CSRF,
/// audited either way).
pub(super) async fn update_form(
    ctx: Ctx,
    State(st): State<AdminState>,
    Path(action): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let s = match ctx.operator(&st, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => {
            let who = ctx.session.as_ref().map(|s| s.user.as_str()).unwrap_or("-");
            ctx.audit(&st, who, &format!("update {action}"), "", "refused");
            return r;
        }
    };
    let act = match action.as_str() {
        "check" => appliance_api::UpdateAction::Check,
        "install" => appliance_api::UpdateAction::Install,
        _ => return refuse(&ctx, &st, StatusCode::NOT_FOUND, "unknown action: check or install"),
    };
    let res = st.backend.update_action(act);
    let msg = match &res {
        Ok(m) => m.clone(),
        Err(e) => e.to_string(),
    };
    ctx.audit(
        &st,
        &s.user,
        &format!("update {}", act.as_str()),
        "",
        if res.is_ok() { "ok" } else { &msg },
    );
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("msg", &msg)
        .finish();
    Redirect::to(&format!("/updates?{q}")).into_response()
}

pub(super) async fn updates_page(
    ctx: Ctx,
    State(st): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = viewer!(ctx, st);
    Html(views::updates(
        &s,
        &st.backend.status(),
        q.get("msg").map(String::as_str),
    ))
    .into_response()
}

pub(super) async fn enrollment_page(
    ctx: Ctx,
    State(st): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = viewer!(ctx, st);
    Html(views::enrollment(
        &s,
        &st.backend.status(),
        q.get("msg").map(String::as_str),
        q.get("ops").map(String::as_str).unwrap_or(""),
    ))
    .into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct EnrollForm {
    csrf: Option<String>,
    ops: String,
    token: String,
}

pub(super) async fn enroll(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<EnrollForm>) -> Response {
    let s = match ctx.operator(&st, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let res = st.backend.enroll(f.ops.clone(), f.token).await;
    let outcome = res.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string());
    // The token is a secret: only the ops URL goes into the audit log.
    ctx.audit(&st, &s.user, "enroll", &f.ops, &outcome);
    match res {
        // The page's state line says where it is enrolled; once is enough.
        Ok(_) => Redirect::to("/enrollment").into_response(),
        Err(e) => {
            let q: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("msg", &e.to_string())
                .append_pair("ops", &f.ops)
                .finish();
            Redirect::to(&format!("/enrollment?{q}")).into_response()
        }
    }
}

pub(super) async fn audit_page(ctx: Ctx, State(st): State<AdminState>) -> Response {
    let s = viewer!(ctx, st);
    Html(views::audit(
        &s,
        &st.backend.status(),
        &st.audit.tail(500),
        &st.audit.failed_logins(),
    ))
    .into_response()
}

pub(super) async fn settings_page(
    ctx: Ctx,
    State(st): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = viewer!(ctx, st);
    Html(views::settings(
        &s,
        &st.backend.status(),
        &st.backend.certificate(),
        &st.backend.ssh(),
        q.get("msg").map(String::as_str),
    ))
    .into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct PasswordForm {
    csrf: Option<String>,
    account: String,
    /// The password of the operator asking: an unattended session is not
    /// enough to change one.
    current: String,
    password: String,
    password2: String,
}

pub(super) async fn change_password(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<PasswordForm>) -> Response {
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
    if let Err(e) = super::access::confirm_password(&st, &s.user, ctx.ip, f.current).await {
        ctx.audit(&st, &s.user, "change password", &f.account, &format!("refused: {e}"));
        return back(&e);
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
pub(super) struct CertForm {
    csrf: Option<String>,
    certificate: String,
    key: String,
}

pub(super) async fn install_certificate(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<CertForm>) -> Response {
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

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct SshForm {
    csrf: Option<String>,
    /// add, remove, enable, disable
    action: String,
    key: String,
    fingerprint: String,
}

pub(super) async fn ssh_form(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<SshForm>) -> Response {
    use appliance_api::SshAction;
    let s = match ctx.operator(&st, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (action, what, target) = match f.action.as_str() {
        "add" => (SshAction::AddKey(f.key), "add SSH key", String::new()),
        "remove" => (
            SshAction::RemoveKey(f.fingerprint.clone()),
            "remove SSH key",
            f.fingerprint,
        ),
        "enable" => (SshAction::Enable, "turn SSH on", String::new()),
        "disable" => (SshAction::Disable, "turn SSH off", String::new()),
        _ => return refuse(&ctx, &st, StatusCode::BAD_REQUEST, "unknown SSH action"),
    };
    let res = st.backend.ssh_action(action, s.user.clone()).await;
    // The audit names the key by fingerprint (in the answer), never the
    // key text itself.
    let outcome = match &res {
        Ok(m) => format!("ok: {m}"),
        Err(e) => e.to_string(),
    };
    ctx.audit(&st, &s.user, what, &target, &outcome);
    let msg = match res {
        Ok(m) => m,
        Err(e) => e.to_string(),
    };
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("msg", &msg)
        .finish();
    Redirect::to(&format!("/settings?{q}")).into_response()
}

pub(super) async fn members_page(
    ctx: Ctx,
    State(st): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = viewer!(ctx, st);
    Html(views::members(
        &s,
        &st.backend.status(),
        &st.backend.members(),
        q.get("msg").map(String::as_str),
        None,
    ))
    .into_response()
}

/// The members form: one `action` (add, set, rotate, revoke, remove) and
/// its fields; a limit left empty is "no limit".
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct MembersForm {
    csrf: Option<String>,
    action: String,
    slug: String,
    name: String,
    participants: String,
    rooms: String,
    duration_minutes: String,
    /// Days the current secrets keep working after a rotation.
    overlap_days: String,
    secret: String,
    confirm: String,
}

fn optional_number(field: &str, v: &str) -> Result<Option<u32>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u32>()
        .map(Some)
        .map_err(|_| format!("{field}: {v:?} is not a whole number (leave it empty for no limit)"))
}

impl MembersForm {
    fn action(&self) -> Result<appliance_members::Action, String> {
        use appliance_members::{Action, Limits};
        let limits = || -> Result<Limits, String> {
            Ok(Limits {
                participants: optional_number("participants", &self.participants)?,
                rooms: optional_number("rooms", &self.rooms)?,
                duration_minutes: optional_number("longest meeting", &self.duration_minutes)?,
            })
        };
        let slug = self.slug.trim().to_string();
        Ok(match self.action.as_str() {
            "add" => Action::Add {
                slug,
                name: self.name.clone(),
                limits: limits()?,
            },
            "set" => Action::Set {
                slug,
                name: Some(self.name.clone()).filter(|n| !n.trim().is_empty()),
                limits: Some(limits()?),
            },
            "rotate" => {
                let days = optional_number("overlap", &self.overlap_days)?.unwrap_or(7);
                Action::RotateSecret {
                    slug,
                    overlap_secs: i64::from(days) * 86_400,
                }
            }
            "revoke" => Action::RevokeSecret {
                slug,
                id: optional_number("secret", &self.secret)?.ok_or("which secret?")?,
            },
            "remove" if self.confirm == "yes" => Action::Remove { slug },
            "remove" => return Err("tick the box to confirm: the member's front end stops at once".into()),
            _ => return Err("unknown members action".into()),
        })
    }
}

pub(super) async fn members_form(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<MembersForm>) -> Response {
    let s = match ctx.operator(&st, f.csrf.as_deref()) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let back = |msg: &str| {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("msg", msg)
            .finish();
        Redirect::to(&format!("/members?{q}")).into_response()
    };
    let action = match f.action() {
        Ok(a) => a,
        Err(e) => return back(&e),
    };
    let res = st.backend.members_action(action.clone());
    let outcome = match &res {
        Ok(o) => format!("ok: {}", o.message),
        Err(e) => e.to_string(),
    };
    ctx.audit(&st, &s.user, action.verb(), action.slug(), &outcome);
    match res {
        // A new secret is shown in this answer only: never in a URL (a
        // redirect's would sit in the history), never stored by the browser.
        Ok(o) if o.secret.is_some() => {
            let mut r = Html(views::members(
                &s,
                &st.backend.status(),
                &st.backend.members(),
                Some(&o.message),
                o.secret.as_deref().map(|secret| (action.slug(), secret)),
            ))
            .into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Ok(o) => back(&o.message),
        Err(e) => back(&e.to_string()),
    }
}

pub(super) async fn support_bundle(ctx: Ctx, State(st): State<AdminState>) -> Response {
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
