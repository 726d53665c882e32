//! Self-signed TLS certificates for the node's admin page and for global
//! ops: generated on first start and kept in a state dir, or installed by
//! an operator; renewed when they near their end. Their SHA-256
//! fingerprint is what people compare (the console) and what enrollment
//! tokens pin (ops), so nobody has to trust on first use.
#![forbid(unsafe_code)]

pub mod server;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("certificate {}: {what}", path.display())]
    Certificate { path: PathBuf, what: String },
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Where a certificate installed from the admin page is kept (in the
/// certificate directory of the state dir).
pub const INSTALLED_CERT: &str = "installed-cert.pem";
pub const INSTALLED_KEY: &str = "installed-key.pem";

/// How long a generated certificate is valid: browsers refuse more than
/// 398 days even for certificates they are told to accept.
pub const VALIDITY: Duration = Duration::from_secs(397 * 86400);
/// Renew a generated certificate this long before it expires.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86400);

/// Where the certificate and key live, and facts about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Uppercase hex pairs joined by colons, as browsers show it.
    pub fingerprint_sha256: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Whether it was made by us (and so is ours to renew).
    pub generated: bool,
}

/// Formats a digest the way browsers show certificate fingerprints.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Reads a PEM certificate and returns its fingerprint and expiry.
pub fn inspect(cert_path: &Path) -> Result<(String, i64), Error> {
    let pem_text = fs::read(cert_path).map_err(|e| Error::io(cert_path, e))?;
    inspect_pem(&pem_text).map_err(|what| Error::Certificate {
        path: cert_path.to_path_buf(),
        what,
    })
}

/// The SHA-256 fingerprint and expiry (unix seconds) of the first
/// certificate in PEM text, read from memory (to check a certificate
/// before anything is written).
pub fn inspect_pem(pem_text: &[u8]) -> Result<(String, i64), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok((fingerprint(&pem.contents), cert.validity().not_after.timestamp()))
}

/// Suffix of a certificate pair being installed, beside the one in use.
const NEXT: &str = "next";

/// Puts an operator's certificate and key in place of the installed pair
/// as one step, as far as files allow: both are written beside it first
/// (`*.next`), then renamed over it, key first. A crash before the renames
/// leaves the old pair; one between them is finished on the next start
/// (see [`finish_install`]), so the pair on disk always belongs together.
/// Check the pair before calling this: it writes what it is given.
pub fn install_pair(dir: &Path, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (cert, key) = (dir.join(INSTALLED_CERT), dir.join(INSTALLED_KEY));
    let (cert_next, key_next) = (cert.with_extension(NEXT), key.with_extension(NEXT));
    write_atomic(&key_next, key_pem, 0o600)?;
    write_atomic(&cert_next, cert_pem, 0o644)?;
    finish_install(dir)
}

/// Completes an install a crash interrupted: once the next certificate is
/// written, its key was written before it, so the pair is renamed into
/// place (the key may be there already); a lone next key is an install
/// that never finished and goes.
pub fn finish_install(dir: &Path) -> Result<(), Error> {
    let (cert, key) = (dir.join(INSTALLED_CERT), dir.join(INSTALLED_KEY));
    let (cert_next, key_next) = (cert.with_extension(NEXT), key.with_extension(NEXT));
    if cert_next.exists() {
        if key_next.exists() {
            fs::rename(&key_next, &key).map_err(|e| Error::io(&key, e))?;
        }
        fs::rename(&cert_next, &cert).map_err(|e| Error::io(&cert, e))?;
    } else if key_next.exists() {
        fs::remove_file(&key_next).map_err(|e| Error::io(&key_next, e))?;
    }
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Uses the operator's certificate when both paths are given, else makes
/// sure a generated one exists in `dir` and is not about to expire.
pub fn ensure(
    dir: &Path,
    operator: Option<(&Path, &Path)>,
    names: &[String],
    now: SystemTime,
) -> Result<CertInfo, Error> {
    if let Some((cert, key)) = operator {
        let (fp, not_after) = inspect(cert)?;
        fs::metadata(key).map_err(|e| Error::io(key, e))?;
        return Ok(CertInfo {
            cert_path: cert.into(),
            key_path: key.into(),
            fingerprint_sha256: fp,
            not_after,
            generated: false,
        });
    }
    // A certificate installed from the admin page wins over a generated one.
    if dir.exists() {
        finish_install(dir)?;
    }
    let (icert, ikey) = (dir.join(INSTALLED_CERT), dir.join(INSTALLED_KEY));
    if icert.exists() && ikey.exists() {
        match inspect(&icert) {
            Ok((fp, not_after)) => {
                return Ok(CertInfo {
                    cert_path: icert,
                    key_path: ikey,
                    fingerprint_sha256: fp,
                    not_after,
                    generated: false,
                });
            }
            Err(e) => log::warn!("installed admin certificate unusable ({e}): using a generated one"),
        }
    }
    let cert_path = dir.join("admin-cert.pem");
    let key_path = dir.join("admin-key.pem");
    let now_unix = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    if cert_path.exists() && key_path.exists() {
        match inspect(&cert_path) {
            Ok((fp, not_after)) if not_after - now_unix > RENEW_BEFORE.as_secs() as i64 => {
                return Ok(CertInfo {
                    cert_path,
                    key_path,
                    fingerprint_sha256: fp,
                    not_after,
                    generated: true,
                });
            }
            Ok(_) => log::info!(
                "admin certificate {} expires within 30 days: making a new one",
                cert_path.display()
            ),
            Err(e) => log::warn!("admin certificate unusable ({e}): making a new one"),
        }
    }
    generate(dir, &cert_path, &key_path, names, now_unix)
}

fn generate(dir: &Path, cert_path: &Path, key_path: &Path, names: &[String], now_unix: i64) -> Result<CertInfo, Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cert_err = |what: String| Error::Certificate {
        path: cert_path.to_path_buf(),
        what,
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| cert_err(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| cert_err(e.to_string()))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "appliance".into()),
    );
    dn.push(rcgen::DnType::OrganizationName, "city node admin page (self-signed)");
    params.distinguished_name = dn;
    // A day of slack for clocks that are a little behind.
    params.not_before =
        time::OffsetDateTime::from_unix_timestamp(now_unix - 86400).map_err(|e| cert_err(e.to_string()))?;
    let not_after = now_unix + VALIDITY.as_secs() as i64;
    params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).map_err(|e| cert_err(e.to_string()))?;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).map_err(|e| cert_err(e.to_string()))?;
    // The key first, created 0600 so it is never readable by others, not
    // even between create and chmod.
    write_atomic(key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_atomic(cert_path, cert.pem().as_bytes(), 0o644)?;
    let fp = fingerprint(cert.der());
    log::info!("generated admin certificate {} (SHA-256 {fp})", cert_path.display());
    Ok(CertInfo {
        cert_path: cert_path.into(),
        key_path: key_path.into(),
        fingerprint_sha256: fp,
        not_after,
        generated: true,
    })
}

/// Writes a small state file so that a crash leaves either the old or the
/// new content, and the new content is on disk when this returns (file and
/// directory fsynced). Used for keys, certificates and the node's other
/// small state files, with the mode they need from the start.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_keeps_and_renews() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["node-1".to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = ensure(dir.path(), None, &names, t0).unwrap();
        assert!(a.generated);
        assert_eq!(a.fingerprint_sha256.len(), 32 * 3 - 1);
        assert_eq!(a.not_after, 1_800_000_000 + 397 * 86400);
        let mode = fs::metadata(&a.key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let b = ensure(dir.path(), None, &names, t0 + Duration::from_secs(86400)).unwrap();
        assert_eq!(a.fingerprint_sha256, b.fingerprint_sha256, "kept across restarts");

        let late = t0 + VALIDITY - RENEW_BEFORE + Duration::from_secs(1);
        let c = ensure(dir.path(), None, &names, late).unwrap();
        assert_ne!(a.fingerprint_sha256, c.fingerprint_sha256, "renewed near expiry");
    }

    #[test]
    fn garbage_certificate_is_replaced_but_operator_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("admin-cert.pem"), "not a cert").unwrap();
        fs::write(dir.path().join("admin-key.pem"), "not a key").unwrap();
        let now = SystemTime::now();
        assert!(ensure(dir.path(), None, &["x".into()], now).is_ok());
        let bad = dir.path().join("op.pem");
        fs::write(&bad, "junk").unwrap();
        let e = ensure(dir.path(), Some((&bad, &bad)), &[], now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("op.pem") && e.contains("not a PEM certificate"), "{e}");
    }

    #[test]
    fn an_install_is_one_step_even_across_a_crash() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        install_pair(dir, b"CERT 1", b"KEY 1").unwrap();
        let read = |n: &str| fs::read_to_string(dir.join(n)).unwrap_or_default();
        assert_eq!(
            (read(INSTALLED_CERT), read(INSTALLED_KEY)),
            ("CERT 1".into(), "KEY 1".into())
        );
        // Crash after writing the next pair, before any rename: finished.
        write_atomic(&dir.join(INSTALLED_KEY).with_extension(NEXT), b"KEY 2", 0o600).unwrap();
        write_atomic(&dir.join(INSTALLED_CERT).with_extension(NEXT), b"CERT 2", 0o644).unwrap();
        finish_install(dir).unwrap();
        assert_eq!(
            (read(INSTALLED_CERT), read(INSTALLED_KEY)),
            ("CERT 2".into(), "KEY 2".into())
        );
        // Crash between the renames (the key is in place): finished.
        fs::rename(dir.join(INSTALLED_CERT), dir.join(INSTALLED_CERT).with_extension(NEXT)).unwrap();
        fs::write(dir.join(INSTALLED_CERT), "CERT 1").unwrap();
        finish_install(dir).unwrap();
        assert_eq!(
            (read(INSTALLED_CERT), read(INSTALLED_KEY)),
            ("CERT 2".into(), "KEY 2".into())
        );
        // Crash after writing only the next key: the old pair stays.
        write_atomic(&dir.join(INSTALLED_KEY).with_extension(NEXT), b"KEY 3", 0o600).unwrap();
        finish_install(dir).unwrap();
        assert_eq!(
            (read(INSTALLED_CERT), read(INSTALLED_KEY)),
            ("CERT 2".into(), "KEY 2".into())
        );
        assert!(!dir.join(INSTALLED_KEY).with_extension(NEXT).exists());
        assert_eq!(
            fs::metadata(dir.join(INSTALLED_KEY)).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

/// A TLS client configuration that trusts exactly one certificate: the
/// one with this SHA-256 fingerprint (as enrollment tokens carry it). No
/// certificate authority is involved, and no trust on first use.
pub fn pinned_client_config(fingerprint: &str) -> rustls::ClientConfig {
    client_config(Some(fingerprint.to_ascii_uppercase()))
}

/// A TLS client configuration that accepts any certificate: only for
/// reading a server's certificate (its expiry), never for trusting it.
pub fn any_certificate_client_config() -> rustls::ClientConfig {
    client_config(None)
}

fn client_config(fingerprint: Option<String>) -> rustls::ClientConfig {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(Pinned { fingerprint, provider }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

/// The server's certificate is not the pinned one. Carried inside the TLS
/// error, so callers recognise it by type ([`is_pin_mismatch`]), not by
/// reading a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("certificate {got} does not match the pinned fingerprint {want}")]
pub struct PinMismatch {
    pub got: String,
    pub want: String,
}

/// Whether `e`, or any error it wraps (through a TLS or I/O error too), is
/// a [`PinMismatch`].
pub fn is_pin_mismatch(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<PinMismatch>().is_some() {
            return true;
        }
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) =
            err.downcast_ref::<rustls::Error>()
        {
            let inner: &(dyn std::error::Error + 'static) = &*o.0;
            if is_pin_mismatch(inner) {
                return true;
            }
        }
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if is_pin_mismatch(inner) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

#[derive(Debug)]
struct Pinned {
    /// `None` accepts any certificate.
    fingerprint: Option<String>,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        match &self.fingerprint {
            Some(want) if *want != got => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(std::sync::Arc::new(PinMismatch {
                    got,
                    want: want.clone(),
                })),
            ))),
            _ => Ok(rustls::client::danger::ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
