//! The local control API: HTTP on a Unix socket in the state dir, used by
//! `appliance status` and the other CLI commands on the box.
//!
//! Who may talk to it is decided by the filesystem: the socket is mode
//! 0660 inside a 0750 state dir, so only root and the service's user and
//! group can connect. Endpoints:
//! - `GET /v1/status`: the status document as JSON.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::state::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .with_state(shared)
}

async fn status(State(s): State<Arc<Shared>>) -> axum::Json<appliance_api::Status> {
    axum::Json(s.status())
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {}: another supervisor is already running", path.display())]
    InUse { path: PathBuf },
    #[error("control socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot reach the supervisor at {} ({source}); is `appliance run` running, and may you read its state dir?", path.display())]
    Connect { path: PathBuf, source: io::Error },
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
    let req = hyper::Request::get(uri)
        .header(hyper::header::HOST, "appliance")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| proto(e.to_string()))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| proto(e.to_string()))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| proto(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(proto(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    Ok(body.to_vec())
}
