//! Getting in: the login and setup pages, password checks within the
//! limits (see `crate::hashing` and `crate::auth`), logout.

use super::*;

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct LoginForm {
    user: String,
    password: String,
}

pub(super) async fn login_page(
    ctx: Ctx,
    State(st): State<AdminState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
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
pub(super) fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| auth::hash_password("not a real account password").unwrap_or_default())
}

/// A reserved login attempt (see [`auth::Auth::begin_login`]): given back
/// if the request ends before its check does (the client went away, or no
/// hashing permit was free).
pub(super) struct Attempt {
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

    fn finish_check(mut self, ok: bool) -> Result<(), AuthError> {
        self.finished = true;
        crate::state_lock(&self.auth).finish_check(&self.user, self.ip, ok, now())
    }
}

/// Checks a logged-in user's current password (before a change) under the
/// login limits: wrong guesses count toward the lockout like failed logins.
pub(super) async fn confirm_password(st: &AdminState, user: &str, ip: IpAddr, pw: String) -> Result<(), String> {
    let hash = crate::state_lock(&st.auth)
        .begin_login(user, ip, now())
        .map_err(|e| e.to_string())?;
    let attempt = Attempt {
        auth: st.auth.clone(),
        user: user.to_string(),
        ip,
        finished: false,
    };
    let ok = st
        .hasher
        .run(move || hash.as_deref().is_some_and(|h| auth::verify_password(&pw, h)))
        .await
        .map_err(|e| e.to_string())?;
    match attempt.finish_check(ok) {
        Ok(()) => Ok(()),
        Err(AuthError::BadCredentials) => Err("the current password is not right".into()),
        Err(e) => Err(e.to_string()),
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
pub(super) fn busy(page: String) -> Response {
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, Html(page)).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(crate::hashing::RETRY_AFTER_SECS));
    r
}

pub(super) async fn login(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<LoginForm>) -> Response {
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
pub(super) struct SetupForm {
    code: String,
    operator: String,
    operator2: String,
    viewer: String,
    viewer2: String,
}

pub(super) async fn setup_page(State(st): State<AdminState>) -> Response {
    if !crate::state_lock(&st.auth).setup_pending() {
        return Redirect::to("/login").into_response();
    }
    Html(views::setup(None, "")).into_response()
}

pub(super) async fn setup(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<SetupForm>) -> Response {
    // The code is typed back in for another try; the passwords never are.
    let fail = |msg: &str, status: StatusCode| (status, Html(views::setup(Some(msg), &f.code))).into_response();
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
        Err(e) => return busy(views::setup(Some(&e.to_string()), &f.code)),
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
pub(super) struct CsrfForm {
    pub(super) csrf: Option<String>,
}

pub(super) async fn logout(ctx: Ctx, State(st): State<AdminState>, Form(f): Form<CsrfForm>) -> Response {
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
