//! The admin HTTPS server.
//!
//! Endpoints:
//! - `GET /healthz`: `ok` while the supervisor's main loop is alive; no login.
//! - `GET /metrics`: Prometheus text format; no login, so a city's own
//!   Prometheus can scrape it.
//! - everything else: not found for now; the login-protected pages and
//!   `/api/v1/` come with the admin page.
//!
//! The server only turns HTTP into calls on a [`Backend`] and back; it
//! never reads sensors, systemd or files itself.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub mod tls;

pub use appliance_api::Status;

/// What the admin server needs from the supervisor.
pub trait Backend: Send + Sync + 'static {
    /// The Prometheus exposition of the latest sample.
    fn metrics(&self) -> String;
    /// Whether the supervisor's main loop is alive.
    fn alive(&self) -> bool;
    fn status(&self) -> Status;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate {}: {what}", path.display())]
    Certificate { path: PathBuf, what: String },
    #[error("admin server on {addr}: {source}")]
    Serve { addr: String, source: std::io::Error },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The admin router.
pub fn router(backend: Arc<dyn Backend>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(backend)
        .layer(axum::middleware::map_response(security_headers))
}

async fn healthz(State(b): State<Arc<dyn Backend>>) -> Response {
    if b.alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "main loop stalled\n").into_response()
    }
}

async fn metrics(State(b): State<Arc<dyn Backend>>) -> Response {
    let body = b.metrics();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

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
    res
}

/// Serves `router` over TLS on an already bound listener until `shutdown`
/// resolves. Binding is the caller's job so that "port in use" is reported
/// before anything else starts.
pub async fn serve(
    listener: std::net::TcpListener,
    cert: &tls::CertInfo,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert.cert_path, &cert.key_path)
        .await
        .map_err(|e| Error::Certificate {
            path: cert.cert_path.clone(),
            what: e.to_string(),
        })?;
    listener.set_nonblocking(true).map_err(|e| Error::Serve {
        addr: addr.clone(),
        source: e,
    })?;
    let handle = axum_server::Handle::new();
    let h2 = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h2.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    axum_server::from_tcp_rustls(listener, config)
        .map_err(|e| Error::Serve {
            addr: addr.clone(),
            source: e,
        })?
        .handle(handle)
        .serve(router.into_make_service())
        .await
        .map_err(|e| Error::Serve { addr, source: e })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    struct Fake(bool);
    impl Backend for Fake {
        fn metrics(&self) -> String {
            "appliance_build_info{version=\"1\"} 1\n".into()
        }
        fn alive(&self) -> bool {
            self.0
        }
        fn status(&self) -> Status {
            unreachable!("not used by these routes")
        }
    }

    async fn get(alive: bool, path: &str) -> (StatusCode, String, Option<String>) {
        let res = router(Arc::new(Fake(alive)))
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let ct = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(res.headers().get(header::X_CONTENT_TYPE_OPTIONS).unwrap(), "nosniff");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap(), ct)
    }

    #[tokio::test]
    async fn routes() {
        assert_eq!(get(true, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get(true, "/healthz").await.1, "ok\n");
        assert_eq!(get(false, "/healthz").await.0, StatusCode::SERVICE_UNAVAILABLE);
        let (s, body, ct) = get(true, "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body, "appliance_build_info{version=\"1\"} 1\n");
        assert_eq!(ct.as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
        assert_eq!(get(true, "/admin").await.0, StatusCode::NOT_FOUND);
    }
}
