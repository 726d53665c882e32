//! Global ops: issues enrollment tokens, enrolls nodes, receives their
//! signed usage reports exactly once, and answers how much each member
//! organisation used per node and month.
//!
//! Endpoints (HTTPS, ops's own certificate, pinned by the nodes through
//! the fingerprint in their enrollment token):
//! - `POST /api/v1/enroll`: [`appliance_usage::EnrollRequest`] →
//!   [`appliance_usage::EnrollResponse`].
//! - `POST /api/v1/reports`: [`appliance_usage::Envelope`] →
//!   [`appliance_usage::Ack`].
//! - `GET /healthz`.
//!
//! Errors are `{"error": "sentence"}` with a status per [`store::Refusal`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

pub mod store;
pub mod validate;

use appliance_usage::protocol::{EnrollResponse, ErrorBody};
use appliance_usage::{EnrollRequest, Envelope};
use store::{Refusal, Store};
use validate::Limits;

/// `appliance-ops` config (TOML, every key known).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where ops listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The URL nodes reach ops at; tokens carry it.
    pub public_url: String,
    /// The database and the certificate live here.
    pub state_dir: PathBuf,
    /// How often nodes should report.
    #[serde(default = "default_report", with = "humantime_serde_compat")]
    pub report_interval: Duration,
    /// How long a new enrollment token is valid.
    #[serde(default = "default_token_ttl", with = "humantime_serde_compat")]
    pub token_ttl: Duration,
    /// Extra names for ops's self-signed certificate (its host names).
    #[serde(default)]
    pub certificate_names: Vec<String>,
    /// More participants than this at once on one node is impossible:
    /// reports that claim more are refused (see docs/ops.md).
    #[serde(default = "default_max_participants")]
    pub max_participants: u32,
    /// How far a node's clock may run ahead of ops's before its reports
    /// count as future-dated.
    #[serde(default = "default_clock_skew", with = "humantime_serde_compat")]
    pub clock_skew: Duration,
    /// A TUF repository made with `appliance-ops release`, served at
    /// `/updates/metadata/` and `/updates/targets/` (static files; any web
    /// server or CDN could serve the same directory).
    #[serde(default)]
    pub update_repository: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:9443".parse().expect("valid literal")
}
fn default_report() -> Duration {
    Duration::from_secs(300)
}
fn default_token_ttl() -> Duration {
    Duration::from_secs(7 * 86400)
}
fn default_max_participants() -> u32 {
    // Ten times what BBB's own documentation says one server holds (about
    // 200): a bound on the impossible, not a licence limit.
    2000
}
fn default_clock_skew() -> Duration {
    Duration::from_secs(600)
}

/// Durations as people write them ("5m", "7d").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?} ({e})")))
    }
}

impl Config {
    /// Reads and checks a config file; errors are one line naming the file
    /// and the key.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let de = toml::Deserializer::parse(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
        let mut c: Config = serde_path_to_error::deserialize(de)
            .map_err(|e| format!("{}: {}: {}", path.display(), e.path(), e.inner().message()))?;
        if !c.public_url.starts_with("https://") {
            return Err(format!(
                "{}: public_url: {:?} must start with https://",
                path.display(),
                c.public_url
            ));
        }
        c.public_url = c.public_url.trim_end_matches('/').to_string();
        if c.state_dir.is_relative() {
            let base = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            c.state_dir = base.join(&c.state_dir);
        }
        if let Some(r) = c.update_repository.as_mut()
            && r.is_relative()
        {
            let base = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            *r = base.join(&*r);
        }
        if c.report_interval < Duration::from_secs(1) {
            return Err(format!("{}: report_interval: must be at least 1s", path.display()));
        }
        if !(1..=1_000_000).contains(&c.max_participants) {
            return Err(format!(
                "{}: max_participants: {} must be from 1 to 1000000",
                path.display(),
                c.max_participants
            ));
        }
        if c.clock_skew > Duration::from_secs(86_400) {
            return Err(format!("{}: clock_skew: must be at most 1d", path.display()));
        }
        Ok(c)
    }

    /// What a report may claim.
    pub fn limits(&self) -> Limits {
        Limits {
            max_participants: self.max_participants,
            clock_skew: self.clock_skew.as_secs() as i64,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("ops.db")
    }

    /// The certificate ops serves, made on first use; its fingerprint goes
    /// into every token.
    pub fn certificate(&self) -> Result<appliance_certs::CertInfo, appliance_certs::Error> {
        let host = self
            .public_url
            .trim_start_matches("https://")
            .split(['/', ':'])
            .next()
            .unwrap_or("localhost")
            .to_string();
        let mut names = vec![host, "localhost".to_string(), "127.0.0.1".to_string()];
        names.extend(self.certificate_names.iter().cloned());
        names.sort();
        names.dedup();
        appliance_certs::ensure(&self.state_dir.join("tls"), None, &names, std::time::SystemTime::now())
    }
}

/// HTTP status for each refusal (no catch-all: a new refusal must choose).
pub fn status_of(r: &Refusal) -> StatusCode {
    match r {
        Refusal::UnknownToken => StatusCode::FORBIDDEN,
        Refusal::UsedToken(_) => StatusCode::CONFLICT,
        Refusal::ExpiredToken(_) => StatusCode::GONE,
        Refusal::WrongNode { .. } => StatusCode::FORBIDDEN,
        Refusal::Revoked(_) => StatusCode::FORBIDDEN,
        Refusal::UnknownNode(_) => StatusCode::FORBIDDEN,
        Refusal::UnknownEpoch { .. } => StatusCode::FORBIDDEN,
        Refusal::RetiredEpoch { .. } => StatusCode::FORBIDDEN,
        Refusal::BadSignature(_) => StatusCode::FORBIDDEN,
        Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
        Refusal::Overlap(_, _) => StatusCode::CONFLICT,
        Refusal::Conflict { .. } => StatusCode::CONFLICT,
        Refusal::PeriodOverlap { .. } => StatusCode::CONFLICT,
        Refusal::Implausible(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Refusal::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn refuse(r: Refusal) -> Response {
    (status_of(&r), Json(ErrorBody { error: r.to_string() })).into_response()
}

#[derive(Clone)]
pub struct OpsState {
    pub store: Arc<Mutex<Store>>,
    pub report_interval: Duration,
    pub limits: Limits,
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpsState")
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The largest report body ops takes.
pub const REPORT_BODY_LIMIT: usize = 32 << 20;

pub fn router(state: OpsState, update_repository: Option<&std::path::Path>) -> Router {
    let mut r = Router::new();
    if let Some(dir) = update_repository {
        // Static files with Range support (nodes resume downloads); no
        // directory listings, nothing outside the two folders.
        r = r
            .nest_service(
                "/updates/metadata",
                tower_http::services::ServeDir::new(dir.join("metadata")),
            )
            .nest_service(
                "/updates/targets",
                tower_http::services::ServeDir::new(dir.join("targets")),
            );
    }
    r.route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/enroll", post(enroll))
        .route(
            "/api/v1/reports",
            // A month of merged reports with every meeting and gap kept
            // fits; axum's default (2 MiB) might not.
            post(report).layer(axum::extract::DefaultBodyLimit::max(REPORT_BODY_LIMIT)),
        )
        .with_state(state)
}

async fn enroll(State(st): State<OpsState>, body: axum::body::Bytes) -> Response {
    let req: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(Refusal::Malformed(e.to_string())),
    };
    let store = st.store.clone();
    let name = req.node.clone();
    let res =
        tokio::task::spawn_blocking(move || store.lock().unwrap_or_else(|e| e.into_inner()).enroll(&req, now())).await;
    match res {
        Ok(Ok((id, epoch))) => {
            log::info!("enrolled node {name} as {id} (enrollment {epoch})");
            Json(EnrollResponse {
                node_id: id,
                node: name,
                epoch,
                report_interval_secs: st.report_interval.as_secs(),
                reports_path: "/api/v1/reports".into(),
                updates_url: None,
            })
            .into_response()
        }
        Ok(Err(r)) => {
            log::warn!("refused enrollment of {name}: {r}");
            refuse(r)
        }
        Err(e) => refuse(Refusal::Storage(e.to_string())),
    }
}

async fn report(State(st): State<OpsState>, body: axum::body::Bytes) -> Response {
    let env: Envelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return refuse(Refusal::Malformed(e.to_string())),
    };
    let store = st.store.clone();
    let limits = st.limits;
    let res = tokio::task::spawn_blocking(move || {
        store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ingest(&env, now(), limits)
    })
    .await;
    match res {
        Ok(Ok(ack)) => Json(ack).into_response(),
        Ok(Err(r)) => {
            log::warn!("refused a report: {r}");
            refuse(r)
        }
        Err(e) => refuse(Refusal::Storage(e.to_string())),
    }
}
