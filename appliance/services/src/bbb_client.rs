//! The one place the node calls BBB's API over the network: a signed
//! `getMeetings`, for the health check and the meeting poller alike.
//!
//! A signed URL carries a checksum that lets anyone repeat the call, for
//! ever. So the errors made here never hold the URL or its query: they are
//! built from typed parts (a status, a cause without URL), and nothing
//! downstream can print what was never put in.

use std::time::{Duration, UNIX_EPOCH};

use crate::checks::error_chain;

/// Why a `getMeetings` failed. None of these holds the request's URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BbbFailure {
    #[error("the request failed: {0}")]
    Request(String),
    #[error("BBB answered HTTP {0}")]
    Status(u16),
    #[error("reading BBB's answer failed: {0}")]
    Body(String),
    #[error("{0}")]
    Answer(String),
    #[error("the BBB secret cannot be read: {0}")]
    Secret(String),
}

/// BBB's answer to `getMeetings`: its clock (the HTTP `Date`, if it sent
/// one) and the meetings.
#[derive(Debug, Clone)]
pub struct Meetings {
    pub date: Option<i64>,
    pub meetings: Vec<appliance_bbb::Meeting>,
}

/// A signed `getMeetings` against `base` (ending in `/bigbluebutton/api`).
pub async fn get_meetings(
    http: &reqwest::Client,
    base: &str,
    secret: &str,
    timeout: Duration,
) -> Result<Meetings, BbbFailure> {
    let url = appliance_bbb::signed_url(base, "getMeetings", &[], secret, appliance_bbb::Algorithm::Sha256);
    let res = http
        .get(&url)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| BbbFailure::Request(error_chain(&e.without_url())))?;
    if !res.status().is_success() {
        return Err(BbbFailure::Status(res.status().as_u16()));
    }
    let date = res
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64);
    let body = res
        .text()
        .await
        .map_err(|e| BbbFailure::Body(error_chain(&e.without_url())))?;
    let meetings = appliance_bbb::xml::parse_get_meetings(&body).map_err(|e| BbbFailure::Answer(e.to_string()))?;
    Ok(Meetings { date, meetings })
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// How a fake BBB misbehaves.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        Reset,
        Truncated,
        BadXml,
        Error500,
        Slow,
        ChunkCut,
    }

    async fn fake(fault: Fault) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                match fault {
                    Fault::Reset => {
                        // Close with unread data: the peer sees a reset.
                        let _ = s.set_zero_linger();
                        drop(s);
                    }
                    Fault::Truncated => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n<response><returncode>SUCCESS")
                            .await;
                    }
                    Fault::BadXml => {
                        let body = "<response><returncode>SUCC";
                        let _ = s
                            .write_all(
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                            )
                            .await;
                    }
                    Fault::Error500 => {
                        let _ = s.write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n").await;
                    }
                    Fault::Slow => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Fault::ChunkCut => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n<respo")
                            .await;
                    }
                }
            }
        });
        format!("http://{addr}/bigbluebutton/api")
    }

    #[tokio::test]
    async fn no_failure_shows_the_signed_url() {
        let http = reqwest::Client::new();
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            drop(l);
            format!("http://{a}/bigbluebutton/api")
        };
        let mut cases = vec![("refused", refused)];
        for f in [
            Fault::Reset,
            Fault::Truncated,
            Fault::BadXml,
            Fault::Error500,
            Fault::Slow,
            Fault::ChunkCut,
        ] {
            cases.push((Box::leak(format!("{f:?}").into_boxed_str()), fake(f).await));
        }
        for (name, base) in cases {
            let err = get_meetings(&http, &base, "a-secret-of-this-node", Duration::from_millis(500))
                .await
                .expect_err(name);
            let text = format!("{err} {err:?}");
            assert!(
                !text.contains("checksum") && !text.contains("getMeetings?") && !text.contains("a-secret"),
                "{name}: {text}"
            );
            assert!(!text.is_empty(), "{name}");
        }
    }
}
