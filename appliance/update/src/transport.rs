//! tough's `Transport` over our own HTTP client, so that metadata comes
//! through the same TLS setup (ops's pinned certificate, or the system's
//! roots for a CDN) and the same timeouts as everything else the node
//! fetches. tough bounds the sizes; the client bounds the time.

use futures_util::StreamExt;
use tough::{Transport, TransportError, TransportErrorKind, TransportStream};
use url::Url;

#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
}

impl HttpTransport {
    pub fn new(client: reqwest::Client) -> HttpTransport {
        HttpTransport { client }
    }
}

#[async_trait::async_trait]
impl Transport for HttpTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "http" | "https" => {}
            "file" => return tough::FilesystemTransport.fetch(url).await,
            _ => return Err(TransportError::new(TransportErrorKind::UnsupportedUrlScheme, url)),
        }
        let resp = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
            // S3-like stores answer 403 for a missing object; either way
            // tough needs "not found" to know the root chain ended.
            return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
        }
        if !status.is_success() {
            return Err(TransportError::new_with_cause(
                TransportErrorKind::Other,
                url,
                format!("the server answered {status}"),
            ));
        }
        let u = url.clone();
        let stream = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| TransportError::new_with_cause(TransportErrorKind::Other, u.clone(), e)));
        Ok(Box::pin(stream))
    }
}
