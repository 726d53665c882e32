//! Installing an operator's certificate for the admin page: checked
//! (parses, not expired, key matches), stored in the state dir, and put in
//! service at once without a restart.

use std::sync::Arc;

use appliance_admin::tls::{self, CertInfo};

use crate::state::{Shared, lock};

pub use tls::server::server_config;

/// Checks an operator's certificate and key completely (they parse, belong
/// together, are not expired) before anything is written, so a refused
/// upload leaves the certificate in use, on disk too, as it was.
pub fn check(cert_pem: &str, key_pem: &str, now: i64) -> Result<(rustls::ServerConfig, String, i64), String> {
    let cfg = server_config(cert_pem, key_pem)?;
    let (fp, not_after) = tls::inspect_pem(cert_pem.as_bytes())?;
    if not_after <= now {
        return Err("the certificate has expired".into());
    }
    Ok((cfg, fp, not_after))
}

pub fn install(s: &Shared, cert_pem: &str, key_pem: &str) -> Result<String, appliance_api::ActionError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (cfg, fp, not_after) = check(cert_pem, key_pem, now).map_err(appliance_api::ActionError::Invalid)?;
    let dir = s.state_dir.join("tls");
    tls::install_pair(&dir, cert_pem.as_bytes(), key_pem.as_bytes())
        .map_err(|e| appliance_api::ActionError::Failed(e.to_string()))?;
    if let Some(tls) = lock(&s.tls).as_ref() {
        tls.reload_from_config(Arc::new(cfg));
    }
    *lock(&s.cert) = CertInfo {
        cert_path: dir.join(tls::INSTALLED_CERT),
        key_path: dir.join(tls::INSTALLED_KEY),
        fingerprint_sha256: fp.clone(),
        not_after,
        generated: false,
    };
    log::info!("admin certificate replaced by the operator's (SHA-256 {fp})");
    Ok(format!("certificate installed; its SHA-256 fingerprint is {fp}"))
}
