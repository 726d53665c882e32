//! The JSON API under `/api/v1/` (docs/api.md).

use super::*;

pub(super) async fn api_session(ctx: Ctx, State(st): State<AdminState>) -> Response {
    let s = viewer!(ctx, st);
    Json(serde_json::json!({ "user": s.user, "role": s.role, "csrf": s.csrf })).into_response()
}

/// How long a serialised status is reused: the figures change once per
/// sample (a second), and dashboards poll this route hard.
pub(super) const STATUS_CACHE: std::time::Duration = std::time::Duration::from_millis(250);

pub(super) async fn api_status(ctx: Ctx, State(st): State<AdminState>) -> Response {
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

pub(super) async fn api_services(ctx: Ctx, State(st): State<AdminState>) -> Response {
    viewer!(ctx, st);
    Json(st.backend.status().services).into_response()
}

pub(super) async fn api_service_action(
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

pub(super) async fn api_series(ctx: Ctx, State(st): State<AdminState>) -> Response {
    viewer!(ctx, st);
    Json(st.backend.series()).into_response()
}

#[derive(Deserialize)]
pub(super) struct HistoryQuery {
    series: String,
    window: Option<Window>,
}

pub(super) async fn api_history(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<HistoryQuery>) -> Response {
    viewer!(ctx, st);
    let window = q.window.unwrap_or(Window::Hour);
    let points = st.backend.history(&q.series, window);
    Json(serde_json::json!({ "series": q.series, "window": window, "points": points })).into_response()
}

pub(super) async fn api_meetings(ctx: Ctx, State(st): State<AdminState>) -> Response {
    viewer!(ctx, st);
    Json(st.backend.status().bbb).into_response()
}

pub(super) async fn api_logs(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<LogsQuery>) -> Response {
    viewer!(ctx, st);
    match st.backend.logs(q.to_query()).await {
        Ok(l) => Json(l).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct AuditQuery {
    before: Option<usize>,
    limit: Option<usize>,
}

/// One page of the audit log, newest first (`?before=N&limit=M`, at most
/// 500 a page), and the failed-login windows.
pub(super) async fn api_audit(ctx: Ctx, State(st): State<AdminState>, Query(q): Query<AuditQuery>) -> Response {
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
