//! Enrollment with global ops: the node's identity key, made here and
//! nowhere else; the exchange with ops, pinned to the certificate the token
//! names; and `enrollment.json`. The reports task owns the enrollment once
//! made (see `reports.rs`); this module only talks to ops and to files.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance_services::checks::error_chain;
use appliance_usage::protocol::{EnrollResponse, ErrorBody};
use appliance_usage::{EnrollRequest, NodeKey, Token};
use serde::{Deserialize, Serialize};

use crate::outbox::{read_if_exists, write_durable};

/// What `enrollment.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub ops: String,
    pub fingerprint: String,
    pub node: String,
    pub node_id: String,
    /// Which enrollment of this node name at ops (reports carry it).
    /// Files from before epochs were enrollment 1 (ops migrated them so).
    #[serde(default = "first_epoch")]
    pub epoch: u64,
    pub enrolled_at: i64,
    pub report_interval_secs: u64,
    pub reports_path: String,
}

fn first_epoch() -> u64 {
    1
}

/// Why enrolling did not work; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{0}")]
    BadToken(#[from] appliance_usage::protocol::Error),
    #[error("the token is for ops {token}, not {given}")]
    OtherOps { token: String, given: String },
    #[error("already enrolled with {ops} as node {node} ({node_id}); enroll again with --force")]
    AlreadyEnrolled { ops: String, node: String, node_id: String },
    #[error("this node's identity key {}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("ops at {ops} presented a certificate that is not the one the token names ({chain}): not enrolling")]
    PinMismatch { ops: String, chain: String },
    #[error("cannot reach ops at {ops}: {chain}")]
    Unreachable { ops: String, chain: String },
    #[error("ops refused the enrollment: {0}")]
    Refused(String),
    #[error("ops answered nonsense: {0}")]
    Nonsense(String),
    #[error("enrolled, but cannot save the enrollment: {0}")]
    Save(String),
    #[error("the supervisor's reports task is not running")]
    TaskGone,
}

impl EnrollError {
    /// The kind of failure, for the admin page and the control socket.
    pub fn action_error(&self) -> appliance_api::ActionError {
        use appliance_api::ActionError as A;
        let m = self.to_string();
        match self {
            EnrollError::BadToken(_) | EnrollError::OtherOps { .. } | EnrollError::Refused(_) => A::Invalid(m),
            EnrollError::AlreadyEnrolled { .. } => A::Conflict(m),
            // A certificate other than the token's: someone may be in
            // between; nothing was sent.
            EnrollError::PinMismatch { .. } => A::Invalid(m),
            EnrollError::Unreachable { .. } | EnrollError::TaskGone => A::Unavailable(m),
            EnrollError::Key { .. } | EnrollError::Nonsense(_) | EnrollError::Save(_) => A::Failed(m),
        }
    }
}

fn key_path(state: &Path) -> PathBuf {
    state.join("identity/node.pk8")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The node's identity key if it has one. Only enrollment makes one.
pub fn load_key(state: &Path) -> Result<Option<NodeKey>, String> {
    let p = key_path(state);
    read_if_exists(&p)?
        .map(|b| NodeKey::from_pkcs8(&b).map_err(|e| format!("{}: {e}", p.display())))
        .transpose()
}

/// The identity key for an enrollment: the existing one (re-enrolling the
/// same box keeps its key, so its queued reports stay deliverable), or a
/// new one, returned with its PKCS#8 bytes to be saved (0600) only once ops
/// has accepted it: a key ops never saw must not sign reports.
fn key_for_enrollment(state: &Path) -> Result<(NodeKey, Option<Vec<u8>>), EnrollError> {
    let path = key_path(state);
    let err = |reason: String| EnrollError::Key {
        path: path.clone(),
        reason,
    };
    if let Some(k) = load_key(state).map_err(err)? {
        return Ok((k, None));
    }
    let b = NodeKey::generate().map_err(|e| err(e.to_string()))?;
    let k = NodeKey::from_pkcs8(&b).map_err(|e| err(e.to_string()))?;
    Ok((k, Some(b)))
}

fn save_key(state: &Path, pkcs8: &[u8]) -> Result<(), EnrollError> {
    let path = key_path(state);
    let err = |reason: String| EnrollError::Key {
        path: path.clone(),
        reason: format!("enrolled, but the key cannot be saved ({reason}): enroll again"),
    };
    let dir = path.parent().expect("has a parent");
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    write_durable(&path, pkcs8).map_err(|e| err(e.to_string()))?;
    log::info!("made this node's identity key {}", path.display());
    Ok(())
}

/// `enrollment.json`, if the node is enrolled. A file that exists but
/// cannot be read is an error, not "not enrolled".
pub fn load(state: &Path) -> Result<Option<Enrollment>, String> {
    let p = state.join("enrollment.json");
    read_if_exists(&p)?
        .map(|b| serde_json::from_slice(&b).map_err(|e| format!("{}: damaged ({e})", p.display())))
        .transpose()
}

pub fn save(state: &Path, e: &Enrollment) -> Result<(), String> {
    let p = state.join("enrollment.json");
    write_durable(&p, &serde_json::to_vec_pretty(e).unwrap_or_default())
        .map_err(|err| format!("{}: {err}", p.display()))
}

/// A TLS client for ops that trusts exactly the certificate `fingerprint`.
pub fn ops_client(fingerprint: &str) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(appliance_certs::pinned_client_config(fingerprint))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())
}

/// What this node tells ops about itself.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub node: String,
    pub version: String,
    pub facts: std::collections::BTreeMap<String, String>,
}

/// Checks the token against the ops URL given.
pub fn check_token(ops: &str, token: &str) -> Result<(Token, String), EnrollError> {
    let t = Token::decode(token)?;
    let want = ops.trim().trim_end_matches('/').to_string();
    if t.ops.trim_end_matches('/') != want {
        return Err(EnrollError::OtherOps {
            token: t.ops.clone(),
            given: want,
        });
    }
    Ok((t, want))
}

/// Enrolls with ops at `ops` (already checked against the token): makes or
/// loads the identity key and asks ops, trusting only the certificate the
/// token names. Returns the enrollment and the key to sign reports with.
pub async fn exchange(
    state: &Path,
    token: &Token,
    ops: &str,
    me: &NodeFacts,
) -> Result<(Enrollment, NodeKey), EnrollError> {
    let (key, new_key) = key_for_enrollment(state)?;
    let client = ops_client(&token.fp).map_err(|chain| EnrollError::Unreachable {
        ops: ops.to_string(),
        chain,
    })?;
    let req = EnrollRequest {
        secret: token.secret.clone(),
        node: me.node.clone(),
        public_key: key.public_key(),
        version: me.version.clone(),
        facts: me.facts.clone(),
    };
    let body = serde_json::to_vec(&req).map_err(|e| EnrollError::Nonsense(e.to_string()))?;
    let res = client
        .post(format!("{ops}/api/v1/enroll"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let chain = error_chain(&e);
            if appliance_certs::is_pin_mismatch(&e) {
                EnrollError::PinMismatch {
                    ops: ops.to_string(),
                    chain,
                }
            } else {
                EnrollError::Unreachable {
                    ops: ops.to_string(),
                    chain,
                }
            }
        })?;
    let status = res.status();
    let body = res.bytes().await.map_err(|e| EnrollError::Unreachable {
        ops: ops.to_string(),
        chain: error_chain(&e),
    })?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(EnrollError::Refused(msg));
    }
    let r: EnrollResponse = serde_json::from_slice(&body).map_err(|e| EnrollError::Nonsense(e.to_string()))?;
    if let Some(pkcs8) = new_key {
        save_key(state, &pkcs8)?;
    }
    let enr = Enrollment {
        ops: ops.to_string(),
        fingerprint: token.fp.clone(),
        node: r.node,
        node_id: r.node_id,
        epoch: r.epoch,
        enrolled_at: unix_now(),
        report_interval_secs: r.report_interval_secs,
        reports_path: r.reports_path,
    };
    Ok((enr, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_file_means_not_enrolled() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(d.path()).unwrap(), None);
        assert!(load_key(d.path()).unwrap().is_none(), "no key is made by looking");
        assert!(!key_path(d.path()).exists());
        std::fs::write(d.path().join("enrollment.json"), "{not json").unwrap();
        assert!(load(d.path()).unwrap_err().contains("damaged"));
        // Files from before epochs are enrollment 1.
        std::fs::write(
            d.path().join("enrollment.json"),
            r#"{"ops":"https://o","fingerprint":"AA","node":"n","node_id":"i","enrolled_at":1,"report_interval_secs":300,"reports_path":"/r"}"#,
        )
        .unwrap();
        assert_eq!(load(d.path()).unwrap().unwrap().epoch, 1);
    }
}
