//! The local control API: HTTP on a Unix socket in the state dir, used by
//! `appliance status` and the other CLI commands on the box.
//!
//! Who may talk to it is decided by the filesystem: the socket is mode
//! 0660 inside a 0750 state dir, so only root and the service's user and
//! group can connect. Endpoints:
//! - `GET /v1/status`: the status document as JSON.
//! - `GET /v1/services`: the recipe's services as JSON.
//! - `GET /v1/console`: what the console screen shows, setup code included
//!   (which is why this socket is for root and the service group only).
//! - `POST /v1/services/{name}/restart`, `POST /v1/services/{name}/reset`:
//!   operator commands; the answer is a sentence.
//! - `GET /v1/members`: the member organisations (no secrets);
//!   `POST /v1/members` with an `appliance_members::Action`: a change,
//!   audited; the answer is an `Outcome` (a new secret, shown once).

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use appliance_api::ServiceAction;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::state::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/services", get(services))
        .route("/v1/console", get(console))
        .route("/v1/enroll", post(enroll))
        .route("/v1/services/{name}/{action}", post(service_command))
        .route("/v1/update/{action}", post(update_command))
        .route("/v1/members", get(members).post(members_change))
        .with_state(shared)
}

async fn status(State(s): State<Arc<Shared>>) -> axum::Json<appliance_api::Status> {
    axum::Json(s.status())
}

async fn services(State(s): State<Arc<Shared>>) -> Response {
    match crate::state::lock(&s.services).clone() {
        Some(sv) => axum::Json(sv).into_response(),
        None => (StatusCode::NOT_FOUND, "no recipe is configured ([services] recipe)\n").into_response(),
    }
}

async fn service_command(State(s): State<Arc<Shared>>, UrlPath((name, action)): UrlPath<(String, String)>) -> Response {
    let act = match action.as_str() {
        "restart" => ServiceAction::Restart,
        "reset" => ServiceAction::Reset,
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}: restart or reset\n"),
            )
                .into_response();
        }
    };
    let res = crate::backend::service_action(&s, name.clone(), act).await;
    // Who: whoever may open the socket (root or the service's group).
    audit(&s, format!("service {action}"), name, &res);
    answer(res)
}

async fn update_command(State(s): State<Arc<Shared>>, UrlPath(action): UrlPath<String>) -> Response {
    let res = match action.as_str() {
        "check" => crate::update::request(&s, appliance_api::UpdateAction::Check),
        "apply" => crate::update::request(&s, appliance_api::UpdateAction::Install),
        "restart" => match &s.update_requests {
            None => Err(appliance_api::ActionError::Unavailable(
                "updates are not set up ([update] root)".into(),
            )),
            Some(tx) => tx
                .try_send(crate::update::Request::Restart(
                    "an operator installed another version".into(),
                ))
                .map(|()| "restarting into the installed version".to_string())
                .map_err(|_| appliance_api::ActionError::Conflict("the update task is busy; try again".into())),
        },
        other => {
            return (
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}: check, apply or restart\n"),
            )
                .into_response();
        }
    };
    audit(&s, format!("update {action}"), String::new(), &res);
    answer(res)
}

/// Records a command given on the socket. Who: whoever may open it (root
/// or the service's group).
fn audit<T>(
    s: &Shared,
    action: impl Into<String>,
    target: impl Into<String>,
    res: &Result<T, appliance_api::ActionError>,
) {
    s.audit.record(&appliance_admin::audit::Entry {
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        user: "local (control socket)".into(),
        from: "this node".into(),
        action: action.into(),
        target: target.into(),
        outcome: res.as_ref().map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
    });
}

/// The member organisations, without their secrets.
async fn members(State(s): State<Arc<Shared>>) -> axum::Json<Vec<appliance_members::MemberView>> {
    axum::Json(s.members.current().views(unix_now()))
}

/// A change to the members; the answer carries a new secret, once.
async fn members_change(
    State(s): State<Arc<Shared>>,
    axum::Json(a): axum::Json<appliance_members::Action>,
) -> Response {
    let res = s.members.act(&a, unix_now());
    audit(&s, a.verb(), a.slug(), &res);
    match res {
        Ok(out) => axum::Json(out).into_response(),
        Err(e) => answer(Err(e)),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The socket's answer: the sentence, with the status the error's kind
/// calls for.
fn answer(res: Result<String, appliance_api::ActionError>) -> Response {
    match res {
        Ok(msg) => (StatusCode::OK, format!("{msg}\n")).into_response(),
        Err(e) => (
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            format!("{e}\n"),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct EnrollBody {
    ops: String,
    token: String,
    #[serde(default)]
    force: bool,
}

async fn enroll(State(s): State<Arc<Shared>>, axum::Json(b): axum::Json<EnrollBody>) -> Response {
    let res = s
        .reports
        .enroll(&s.state_dir, &b.ops, &b.token, b.force, &s.node_facts())
        .await
        .map_err(|e| e.action_error());
    audit(&s, "enroll", b.ops.clone(), &res);
    answer(res)
}

/// What the console shows, for `appliance console`.
async fn console(State(s): State<Arc<Shared>>) -> axum::Json<crate::console::Info> {
    let st = s.status();
    let cert = crate::state::lock(&s.cert).clone();
    axum::Json(crate::console::Info {
        node: st.node.name,
        version: st.node.version,
        health: st.health.status.as_str().to_string(),
        summary: st.health.summary,
        reasons: st.health.reasons,
        fingerprint: cert.fingerprint_sha256,
        setup_code: crate::state::lock(&s.auth).setup_code().map(str::to_string),
        enrollment: match s.reports.state().enrollment.as_ref() {
            Some(e) => format!("enrolled with {} as {}", e.ops, e.node),
            None => "not enrolled with global ops".into(),
        },
        admin_port: s.admin_port.port(),
        admin_ip: Some(s.admin_port.ip()).filter(|ip| !ip.is_unspecified()),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {}: another supervisor is already running", path.display())]
    InUse { path: PathBuf },
    #[error("control socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot reach the supervisor at {} ({source}); is `appliance run` running, and may you read its state dir?", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("{message}")]
    Refused { status: u16, message: String },
    #[error("supervisor at {} answered badly: {what}", path.display())]
    Protocol { path: PathBuf, what: String },
}

/// Binds the socket, replacing a stale one left by a crash but refusing to
/// steal it from a supervisor that still answers.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io_err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(io_err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err)?;
    Ok(listener)
}

/// GETs `uri` from the supervisor behind `socket` and returns the body.
pub async fn get_body(socket: &Path, uri: &str) -> Result<Vec<u8>, ControlError> {
    request(socket, "GET", uri).await
}

/// Sends a request with an empty body and returns the answer's body; a
/// non-success status is an error carrying the body's sentence.
pub async fn request(socket: &Path, method: &str, uri: &str) -> Result<Vec<u8>, ControlError> {
    request_with(socket, method, uri, Vec::new()).await
}

/// Like [`request`], with a JSON body.
pub async fn request_with(socket: &Path, method: &str, uri: &str, body: Vec<u8>) -> Result<Vec<u8>, ControlError> {
    let proto = |what: String| ControlError::Protocol {
        path: socket.to_path_buf(),
        what,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ControlError::Connect {
            path: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| proto(e.to_string()))?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header(hyper::header::HOST, "appliance")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .map_err(|e| proto(e.to_string()))?;
    let res = sender.send_request(req).await.map_err(|e| proto(e.to_string()))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| proto(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(proto(format!("{status}: {}", String::from_utf8_lossy(&body).trim())));
    }
    Ok(body.to_vec())
}
