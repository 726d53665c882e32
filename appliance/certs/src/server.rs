//! The HTTPS front door of the admin page and of global ops: a TLS server
//! config from PEM text, and a serve loop with limits, so that nobody who
//! can reach the port can hold the process's file descriptors or memory
//! by opening connections and saying nothing:
//!
//! - at most `max_connections` connections at once (more are closed on
//!   accept, before any TLS work), sized from the open-file limit so that
//!   the rest of the process (usage accounting, history, the outbox,
//!   /proc and /sys) always has descriptors left;
//! - a TLS handshake must finish within `handshake`, the first request
//!   arrive within `first_request`, and a kept-alive connection that sends
//!   no new request header within `idle` is closed;
//! - HTTP/1.1 only (no HTTP/2 connections that idle without a timeout).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept for everything but the web server.
pub const RESERVED_FDS: u64 = 256;
/// The most connections one server takes, however high the limit.
pub const MAX_CONNECTIONS: usize = 512;

/// How much a server lets its clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake: Duration,
    pub first_request: Duration,
    pub idle: Duration,
}

impl Limits {
    /// The limits for a process that may open `open_files` descriptors:
    /// [`RESERVED_FDS`] stay for the rest of it.
    pub fn for_open_files(open_files: u64) -> Limits {
        let spare = open_files.saturating_sub(RESERVED_FDS).max(16);
        Limits {
            max_connections: (spare as usize).min(MAX_CONNECTIONS),
            handshake: Duration::from_secs(10),
            first_request: Duration::from_secs(15),
            idle: Duration::from_secs(30),
        }
    }

    /// From this process's soft open-file limit.
    pub fn for_this_process() -> Limits {
        let soft = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(1024);
        Limits::for_open_files(soft)
    }
}

/// A rustls server config for a certificate chain and its key (checking
/// that they belong together), for HTTP/1.1.
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
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// [`server_config`] from files, ready to serve (and to swap later).
pub fn tls_from_files(cert: &std::path::Path, key: &std::path::Path) -> Result<RustlsConfig, String> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let cfg = server_config(&read(cert)?, &read(key)?).map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(RustlsConfig::from_config(Arc::new(cfg)))
}

/// Serves `app` over TLS on `listener` within `limits` until `handle`
/// shuts it down. Handlers see the client address (`ConnectInfo`).
pub async fn serve(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    app: Router,
    limits: Limits,
    handle: axum_server::Handle<SocketAddr>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let acceptor = RustlsAcceptor::new(tls)
        .handshake_timeout(limits.handshake)
        .acceptor(Limited {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
        });
    let mut server = axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .http1_only()
        .first_request_timeout(limits.first_request)
        .handle(handle);
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.idle)
        .keep_alive(true);
    server
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await
}

/// Takes a connection only while a permit is free; the permit goes with
/// the connection and is returned when it closes.
#[derive(Debug, Clone)]
struct Limited {
    permits: Arc<Semaphore>,
}

impl<I, S> Accept<I, S> for Limited
where
    I: Send + 'static,
    S: Send + 'static,
{
    type Stream = Held<I>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Held<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        std::future::ready(match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok((
                Held {
                    inner: stream,
                    _permit: permit,
                },
                service,
            )),
            Err(_) => Err(io::Error::other("too many connections")),
        })
    }
}

/// A connection with its permit.
#[derive(Debug)]
pub struct Held<I> {
    inner: I,
    _permit: OwnedSemaphorePermit,
}

impl<I: AsyncRead + Unpin> AsyncRead for Held<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Held<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_kept_for_the_rest_of_the_process() {
        let cases = [(1024, 512), (600, 344), (200, 16), (1 << 20, MAX_CONNECTIONS)];
        for (files, want) in cases {
            assert_eq!(Limits::for_open_files(files).max_connections, want, "{files}");
        }
        assert!(Limits::for_this_process().max_connections >= 16);
    }
}
