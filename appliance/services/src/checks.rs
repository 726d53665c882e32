//! Health checks: thin, real probes. Each returns an [`Outcome`]; none
//! panics or hangs past its timeout.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance_monitor::Severity;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::recipe::CheckKind;

/// The result of one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub severity: Severity,
    pub detail: String,
}

impl Outcome {
    fn ok(detail: impl Into<String>) -> Outcome {
        Outcome {
            severity: Severity::Ok,
            detail: detail.into(),
        }
    }
    fn fail(detail: impl Into<String>) -> Outcome {
        Outcome {
            severity: Severity::Critical,
            detail: detail.into(),
        }
    }
    pub fn is_ok(&self) -> bool {
        self.severity == Severity::Ok
    }
}

/// Where BBB's API is and its secret, for the signed `bbb` check.
#[derive(Clone)]
pub struct BbbTarget {
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for BbbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BbbTarget")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// What the probes share.
#[derive(Debug, Clone)]
pub struct Context {
    pub http: reqwest::Client,
    pub bbb: Option<BbbTarget>,
}

impl Context {
    pub fn new(bbb: Option<BbbTarget>) -> Context {
        // Health checks probe local services, often on self-signed
        // certificates: what matters is that they answer.
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .no_proxy()
            .build()
            .expect("building an HTTP client with static settings");
        Context { http, bbb }
    }
}

impl CheckKind {
    /// Whether a failure of this check should restart its service.
    /// Certificates and disks need a person, not a restart.
    pub fn restarts(&self) -> bool {
        !matches!(self, CheckKind::Tls { .. } | CheckKind::Disk { .. })
    }
}

/// Runs one check with its timeout.
pub async fn run(kind: &CheckKind, timeout: Duration, ctx: &Context) -> Outcome {
    match tokio::time::timeout(timeout, probe(kind, timeout, ctx)).await {
        Ok(o) => o,
        Err(_) => Outcome::fail(format!("no answer within {}", humantime::format_duration(timeout))),
    }
}

async fn probe(kind: &CheckKind, timeout: Duration, ctx: &Context) -> Outcome {
    match kind {
        CheckKind::Http {
            url,
            expect_status,
            expect_body,
        } => http(ctx, url, *expect_status, expect_body.as_deref(), timeout).await,
        CheckKind::Tcp { address } => match TcpStream::connect(address.as_str()).await {
            Ok(_) => Outcome::ok("connected"),
            Err(e) => Outcome::fail(format!("connect {address}: {e}")),
        },
        CheckKind::Redis { address } => redis_ping(address).await,
        CheckKind::Bbb => match &ctx.bbb {
            None => Outcome::fail("no [bbb] url and secret in the config"),
            Some(b) => bbb(ctx, b, timeout).await,
        },
        CheckKind::Tls {
            address,
            warn_days,
            critical_days,
        } => tls_expiry(address, *warn_days, *critical_days).await,
        CheckKind::Disk { path, min_free_ratio } => disk(path, *min_free_ratio),
    }
}

async fn http(ctx: &Context, url: &str, status: u16, body: Option<&str>, timeout: Duration) -> Outcome {
    let res = match ctx.http.get(url).timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) => return Outcome::fail(format!("GET {url}: {}", error_chain(&e))),
    };
    let got = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    if got != status {
        return Outcome::fail(format!("GET {url}: status {got}, expected {status}"));
    }
    match body {
        Some(b) if !text.contains(b) => Outcome::fail(format!("GET {url}: body lacks {b:?}")),
        _ => Outcome::ok(format!("status {got}")),
    }
}

async fn redis_ping(address: &str) -> Outcome {
    let stream = match TcpStream::connect(address).await {
        Ok(s) => s,
        Err(e) => return Outcome::fail(format!("connect {address}: {e}")),
    };
    let mut stream = BufReader::new(stream);
    if let Err(e) = stream.get_mut().write_all(b"PING\r\n").await {
        return Outcome::fail(format!("redis {address}: {e}"));
    }
    let mut line = String::new();
    match stream.read_line(&mut line).await {
        Ok(_) if line.trim_end() == "+PONG" => Outcome::ok("PONG"),
        Ok(_) => Outcome::fail(format!("redis {address} answered {:?}", line.trim_end())),
        Err(e) => Outcome::fail(format!("redis {address}: {e}")),
    }
}

async fn bbb(ctx: &Context, b: &BbbTarget, timeout: Duration) -> Outcome {
    match crate::bbb_client::get_meetings(&ctx.http, &b.url, &b.secret, timeout).await {
        Ok(m) => Outcome::ok(format!("{} meetings", m.meetings.len())),
        Err(e) => Outcome::fail(format!("getMeetings: {e}")),
    }
}

async fn tls_expiry(address: &str, warn_days: u32, critical_days: u32) -> Outcome {
    // Any certificate: this check reads the expiry date, it does not decide trust.
    let config = appliance_certs::any_certificate_client_config();
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
        .unwrap_or("localhost");
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| rustls::pki_types::ServerName::try_from("localhost").expect("static name"));
    let tcp = match TcpStream::connect(address).await {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                severity: Severity::Warning,
                detail: format!("cannot read the certificate at {address}: {e}"),
            };
        }
    };
    let tls = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            return Outcome {
                severity: Severity::Warning,
                detail: format!("TLS handshake with {address}: {e}"),
            };
        }
    };
    let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned()) else {
        return Outcome {
            severity: Severity::Warning,
            detail: format!("{address} sent no certificate"),
        };
    };
    let not_after = match x509_parser::parse_x509_certificate(&cert) {
        Ok((_, c)) => c.validity().not_after.timestamp(),
        Err(e) => {
            return Outcome {
                severity: Severity::Warning,
                detail: format!("{address}: unreadable certificate: {e}"),
            };
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    expiry_outcome(address, (not_after - now) as f64 / 86400.0, warn_days, critical_days)
}

/// How worrying a certificate's remaining days are.
pub fn expiry_outcome(address: &str, days_left: f64, warn_days: u32, critical_days: u32) -> Outcome {
    let detail = if days_left < 0.0 {
        format!("certificate at {address} expired {:.0} days ago", -days_left)
    } else {
        format!("certificate at {address} expires in {days_left:.0} days")
    };
    let severity = if days_left <= critical_days as f64 {
        Severity::Critical
    } else if days_left <= warn_days as f64 {
        Severity::Warning
    } else {
        Severity::Ok
    };
    Outcome { severity, detail }
}

fn disk(path: &str, min_free_ratio: f64) -> Outcome {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let frsize = s.fragment_size() as f64;
            let avail = s.blocks_available() as f64 * frsize;
            let used = (s.blocks() as f64 - s.blocks_free() as f64) * frsize;
            disk_outcome(path, avail, used, min_free_ratio)
        }
        // A path not created yet (no recording made) holds nothing.
        Err(nix::errno::Errno::ENOENT) => Outcome::ok(format!("{path} does not exist yet")),
        Err(e) => Outcome::fail(format!("statvfs {path}: {e}")),
    }
}

/// Free share of a filesystem against its minimum.
pub fn disk_outcome(path: &str, avail: f64, used: f64, min_free_ratio: f64) -> Outcome {
    let total = avail + used;
    let free = if total > 0.0 { avail / total } else { 1.0 };
    let detail = format!(
        "{path}: {:.1} % free, minimum {:.1} %",
        free * 100.0,
        min_free_ratio * 100.0
    );
    if free < min_free_ratio {
        Outcome::fail(detail)
    } else {
        Outcome::ok(detail)
    }
}

/// An error with its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn expiry_and_disk_levels() {
        let cases = [
            (30.0, Severity::Ok),
            (14.0, Severity::Warning),
            (4.0, Severity::Warning),
            (3.0, Severity::Critical),
            (-2.0, Severity::Critical),
        ];
        for (days, want) in cases {
            assert_eq!(expiry_outcome("x:443", days, 14, 3).severity, want, "{days}");
        }
        assert_eq!(
            expiry_outcome("x:443", -2.0, 14, 3).detail,
            "certificate at x:443 expired 2 days ago"
        );
        assert!(disk_outcome("/", 5.0, 95.0, 0.10).severity == Severity::Critical);
        assert!(disk_outcome("/", 15.0, 85.0, 0.10).is_ok());
        assert_eq!(
            disk_outcome("/", 15.0, 85.0, 0.10).detail,
            "/: 15.0 % free, minimum 10.0 %"
        );
    }

    /// A fake redis that answers one line, to test the probe's parsing over
    /// a real socket.
    async fn fake_redis(reply: &'static [u8]) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
        });
        addr
    }

    #[tokio::test]
    async fn tcp_redis_and_timeouts() {
        let ctx = Context::new(None);
        let ok = fake_redis(b"+PONG\r\n").await;
        assert!(
            run(&CheckKind::Redis { address: ok }, Duration::from_secs(2), &ctx)
                .await
                .is_ok()
        );
        let auth = fake_redis(b"-NOAUTH Authentication required.\r\n").await;
        let o = run(
            &CheckKind::Redis { address: auth.clone() },
            Duration::from_secs(2),
            &ctx,
        )
        .await;
        assert_eq!(
            o.detail,
            format!("redis {auth} answered \"-NOAUTH Authentication required.\"")
        );
        // Nothing listens on a port we just released.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(
            !run(&CheckKind::Tcp { address: closed }, Duration::from_secs(2), &ctx)
                .await
                .is_ok()
        );
        // A listener that never answers: the timeout ends the probe.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let o = run(&CheckKind::Redis { address: addr }, Duration::from_millis(300), &ctx).await;
        assert_eq!(o.detail, "no answer within 300ms");
        assert_eq!(
            run(&CheckKind::Bbb, Duration::from_secs(1), &ctx).await.detail,
            "no [bbb] url and secret in the config"
        );
    }
}
