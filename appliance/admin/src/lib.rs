//! The admin HTTPS server: the local admin page and its JSON API.
//!
//! Endpoints (all but the first four need a session; changes need the
//! operator role and a CSRF token):
//! - `GET /healthz`: `ok` while the supervisor's main loop is alive.
//! - `GET /metrics`: Prometheus text format, for a city's own Prometheus.
//! - `GET|POST /login`, `GET|POST /setup` (setup only until it is done).
//! - `POST /logout`.
//! - pages: `/` (overview), `/hardware`, `/services`, `/meetings`, `/logs`,
//!   `/updates`, `/enrollment`, `/audit`, `/settings`.
//! - operator actions: `POST /services/{name}/restart|reset`,
//!   `POST /settings/password`, `POST /settings/certificate`,
//!   `GET /support-bundle`.
//! - JSON: `/api/v1/...`, documented in docs/api.md.
//!
//! The server only turns HTTP into calls on a [`Backend`] and back; it
//! never reads sensors, systemd or the supervisor's files itself.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;

pub mod audit;
pub mod auth;
pub mod bundle;
pub mod graph;
pub mod hashing;
pub use appliance_certs as tls;
mod views;
mod web;

pub use web::{COOKIE, ROUTES};

pub use appliance_api::{ActionError, Backend, BoxFuture, CertificateView, LogLine, LogQuery, ServiceAction, Status};
pub use appliance_monitor::history::Window;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate {}: {what}", path.display())]
    Certificate { path: PathBuf, what: String },
    #[error(transparent)]
    Certs(#[from] appliance_certs::Error),
    #[error("admin server on {addr}: {source}")]
    Serve { addr: String, source: std::io::Error },
}

/// What every handler shares.
#[derive(Clone)]
pub struct AdminState {
    pub backend: Arc<dyn Backend>,
    pub auth: Arc<Mutex<auth::Auth>>,
    pub audit: Arc<audit::AuditLog>,
    /// The last serialised `/api/v1/status` and when it was made.
    pub status_cache: Arc<Mutex<Option<(std::time::Instant, axum::body::Bytes)>>>,
    /// Where passwords are hashed and checked, with bounded work.
    pub hasher: Arc<hashing::HashPool>,
}

impl AdminState {
    pub fn new(backend: Arc<dyn Backend>, auth: Arc<Mutex<auth::Auth>>, audit: Arc<audit::AuditLog>) -> AdminState {
        AdminState {
            backend,
            auth,
            audit,
            status_cache: Arc::default(),
            hasher: Arc::default(),
        }
    }
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminState")
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    web::router(state)
}

/// Serves `router` over TLS on an already bound listener until `shutdown`
/// resolves. Binding is the caller's job so that "port in use" is reported
/// before anything else starts. The certificate can be replaced while
/// serving through the returned [`CertReloader`].
pub async fn serve(
    listener: std::net::TcpListener,
    config: axum_server::tls_rustls::RustlsConfig,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let handle = axum_server::Handle::new();
    let h2 = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h2.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    let limits = tls::server::Limits::for_this_process();
    log::info!(
        "admin server: at most {} connections; idle ones closed after {} s",
        limits.max_connections,
        limits.idle.as_secs()
    );
    tls::server::serve(listener, config, router, limits, handle)
        .await
        .map_err(|e| Error::Serve { addr, source: e })
}

/// Loads the certificate for [`serve`]; keep the config to reload it.
pub async fn tls_config(cert: &tls::CertInfo) -> Result<axum_server::tls_rustls::RustlsConfig, Error> {
    tls::server::tls_from_files(&cert.cert_path, &cert.key_path).map_err(|what| Error::Certificate {
        path: cert.cert_path.clone(),
        what,
    })
}

/// Locks a mutex even if a thread panicked while holding it.
pub fn state_lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Short binary units for graph labels.
pub(crate) fn format_bytes_short(v: f64) -> String {
    appliance_api::format_bytes(v.max(0.0) as u64)
}

/// Bits per second in decimal units, as links are rated.
pub(crate) fn format_bits(bits: f64) -> String {
    if bits >= 1e9 {
        format!("{:.1} Gb", bits / 1e9)
    } else if bits >= 1e6 {
        format!("{:.1} Mb", bits / 1e6)
    } else {
        format!("{:.0} kb", bits / 1e3)
    }
}
