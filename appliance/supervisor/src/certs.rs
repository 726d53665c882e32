//! Installing an operator's certificate for the admin page: checked
//! (parses, not expired, key matches), stored in the state dir, and put in
//! service at once without a restart.

use std::sync::Arc;

use appliance_admin::tls::{self, CertInfo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::state::{Shared, lock};

/// A rustls server config for a certificate chain and key, checking that
/// they belong together.
pub fn server_config(cert_pem: &str, key_pem: &str) -> Result<rustls::ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found in the PEM text".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the private key is not valid PEM: {e}"))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let ck = rustls::sign::CertifiedKey::new(certs.clone(), signing);
    ck.keys_match()
        .map_err(|_| "the private key does not belong to the certificate".to_string())?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key refused: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

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

pub fn install(s: &Shared, cert_pem: &str, key_pem: &str) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (cfg, fp, not_after) = check(cert_pem, key_pem, now)?;
    let dir = s.state_dir.join("tls");
    tls::install_pair(&dir, cert_pem.as_bytes(), key_pem.as_bytes()).map_err(|e| e.to_string())?;
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
