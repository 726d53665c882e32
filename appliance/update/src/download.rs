//! Fetching a target: resumable across restarts (a Range request into a
//! staging file named by the target's hash), bounded (never more bytes
//! than the signed length, an overall deadline, a bandwidth cap), retried
//! with backoff on what a real network does (dropped connections, 503s),
//! and verified in full (length and SHA-256 from the signed targets
//! metadata) before the file is handed out under its final name.
//!
//! A `.part` file is never used for anything but resuming: whatever it
//! holds (a torn write after a power cut, bytes from a lying server) is
//! re-hashed, and a mismatch at the end deletes it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::UpdateError;
use crate::repo::TargetFile;

/// No release of the supervisor comes near this; a signed length above it
/// is a mistake or an attack on the disk.
pub const MAX_TARGET_BYTES: u64 = 2 << 30;

#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes per second; `None` for no cap.
    pub rate: Option<u64>,
    /// The whole download, retries included.
    pub deadline: Duration,
    /// First pause after a failed attempt; doubled up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            rate: None,
            deadline: Duration::from_secs(3600),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Progress, for the Updates page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub have: u64,
    pub total: u64,
    pub attempts: u32,
}

/// A test hook: the process aborts (a crash) once this many bytes of the
/// target are on disk. Set through `APPLIANCE_UPDATE_FAIL_AT_BYTE`
/// only by the crash tests.
fn fail_at_byte() -> Option<u64> {
    std::env::var("APPLIANCE_UPDATE_FAIL_AT_BYTE").ok()?.parse().ok()
}

#[derive(Debug, Clone)]
pub struct Downloader {
    client: reqwest::Client,
    limits: Limits,
}

enum Attempt {
    Done,
    /// Worth another try (dropped connection, 5xx); the reason is kept
    /// for the error if the deadline passes.
    Retry(String),
}

impl Downloader {
    pub fn new(client: reqwest::Client, limits: Limits) -> Downloader {
        Downloader { client, limits }
    }

    /// Where a verified target lives in `staging`.
    pub fn verified_path(staging: &Path, t: &TargetFile) -> PathBuf {
        staging.join(format!("{}.verified", hex::encode(t.sha256)))
    }

    fn part_path(staging: &Path, t: &TargetFile) -> PathBuf {
        staging.join(format!("{}.part", hex::encode(t.sha256)))
    }

    /// Removes everything in `staging` but `keep`'s verified file: older
    /// downloads and what abandoned ones left.
    pub fn clean_staging(staging: &Path, keep: &TargetFile) {
        let keep = Self::verified_path(staging, keep);
        if let Ok(rd) = std::fs::read_dir(staging) {
            for e in rd.flatten() {
                if e.path() != keep {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Fetches `t` into `staging` and returns the verified file. A verified
    /// file already there is re-checked, not fetched again.
    pub async fn fetch(
        &self,
        t: &TargetFile,
        staging: &Path,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<PathBuf, UpdateError> {
        if t.length > MAX_TARGET_BYTES {
            return Err(UpdateError::TooLarge(format!(
                "{} is listed at {} bytes; a node takes at most {MAX_TARGET_BYTES}",
                t.name, t.length
            )));
        }
        tokio::fs::create_dir_all(staging)
            .await
            .map_err(UpdateError::io(format!("creating {}", staging.display())))?;
        let done = Self::verified_path(staging, t);
        if done.exists() {
            if hash_file(&done, t.length + 1).await? == (t.length, t.sha256) {
                return Ok(done);
            }
            tokio::fs::remove_file(&done)
                .await
                .map_err(UpdateError::io(format!("removing {}", done.display())))?;
        }
        let part = Self::part_path(staging, t);
        let deadline = Instant::now() + self.limits.deadline;
        let mut pause = self.limits.backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = tokio::time::timeout_at(deadline, self.attempt(t, &part, attempts, progress)).await;
            match attempt {
                Ok(Ok(Attempt::Done)) => break,
                Ok(Ok(Attempt::Retry(why))) => {
                    if Instant::now() + pause >= deadline {
                        return Err(UpdateError::Unreachable(format!(
                            "{}: gave up at the deadline after {attempts} attempts; last: {why}",
                            t.name
                        )));
                    }
                    log::info!("update download of {}: {why}; again in {pause:?}", t.name);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.limits.max_backoff);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    let have = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
                    return Err(UpdateError::Unreachable(format!(
                        "{}: not complete within {:?} ({have} of {} bytes kept for the next try)",
                        t.name, self.limits.deadline, t.length
                    )));
                }
            }
        }
        // Everything is on disk: check all of it, from the file itself.
        let (len, sha) = hash_file(&part, t.length + 1).await?;
        if (len, sha) != (t.length, t.sha256) {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(UpdateError::Target {
                name: t.name.clone(),
                detail: format!(
                    "{len} bytes with sha256 {}, the signed metadata says {} bytes with sha256 {}; discarded",
                    hex::encode(sha),
                    t.length,
                    hex::encode(t.sha256)
                ),
            });
        }
        tokio::fs::rename(&part, &done)
            .await
            .map_err(UpdateError::io(format!("renaming to {}", done.display())))?;
        sync_dir(staging).await?;
        Ok(done)
    }

    async fn attempt(
        &self,
        t: &TargetFile,
        part: &Path,
        attempts: u32,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Attempt, UpdateError> {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .await
            .map_err(UpdateError::io(format!("opening {}", part.display())))?;
        let mut have = file
            .metadata()
            .await
            .map_err(UpdateError::io("stat of the staging file"))?
            .len();
        if have > t.length {
            file.set_len(0)
                .await
                .map_err(UpdateError::io("truncating the staging file"))?;
            have = 0;
        }
        if have == t.length {
            return Ok(Attempt::Done);
        }
        let fail_at = fail_at_byte();
        let mut stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, String>> + Send>> =
            match t.url.scheme() {
                "file" => {
                    let path = t
                        .url
                        .to_file_path()
                        .map_err(|()| UpdateError::Repository(format!("{} is not a local path", t.url)))?;
                    let mut f = tokio::fs::File::open(&path)
                        .await
                        .map_err(UpdateError::io(format!("opening {}", path.display())))?;
                    f.seek(std::io::SeekFrom::Start(have))
                        .await
                        .map_err(UpdateError::io(format!("seeking in {}", path.display())))?;
                    // Small reads under a bandwidth cap keep the pacing smooth.
                    let chunk = if self.limits.rate.is_some() {
                        16 * 1024
                    } else {
                        256 * 1024
                    };
                    Box::pin(tokio_util_like::read_stream(f, chunk))
                }
                "http" | "https" => {
                    let mut req = self.client.get(t.url.clone());
                    if have > 0 {
                        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
                    }
                    let resp = match req.send().await {
                        Ok(r) => r,
                        Err(e) => return Ok(Attempt::Retry(format!("request failed: {}", strip_url(&e)))),
                    };
                    let status = resp.status();
                    if status == reqwest::StatusCode::PARTIAL_CONTENT {
                        let starts = resp
                            .headers()
                            .get(reqwest::header::CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
                        if !starts {
                            file.set_len(0)
                                .await
                                .map_err(UpdateError::io("truncating the staging file"))?;
                            return Ok(Attempt::Retry("the server answered another range than asked".into()));
                        }
                    } else if status == reqwest::StatusCode::OK {
                        // Range ignored (or a fresh start): the body is the whole file.
                        if have > 0 {
                            file.set_len(0)
                                .await
                                .map_err(UpdateError::io("truncating the staging file"))?;
                            have = 0;
                        }
                    } else if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
                        file.set_len(0)
                            .await
                            .map_err(UpdateError::io("truncating the staging file"))?;
                        return Ok(Attempt::Retry("the server refused the range; starting over".into()));
                    } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                        return Ok(Attempt::Retry(format!("the server answered {status}")));
                    } else {
                        // Not there (yet): a CDN behind the metadata, a
                        // wrong base URL. Not a verification failure; the
                        // next check tries again.
                        return Err(UpdateError::Unreachable(format!(
                            "{}: the server answered {status}",
                            t.name
                        )));
                    }
                    Box::pin(resp.bytes_stream().map(|r| r.map_err(|e| strip_url(&e))))
                }
                other => {
                    return Err(UpdateError::Repository(format!("unsupported URL scheme {other:?}")));
                }
            };
        let started = Instant::now();
        let at_start = have;
        progress(Progress {
            have,
            total: t.length,
            attempts,
        });
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    file.flush()
                        .await
                        .map_err(UpdateError::io("writing the staging file"))?;
                    return Ok(Attempt::Retry(format!("the transfer broke off at byte {have}: {e}")));
                }
            };
            let room = t.length - have;
            if chunk.len() as u64 > room {
                // Endless data: keep what fits, refuse the rest.
                file.write_all(&chunk[..room as usize])
                    .await
                    .map_err(UpdateError::io("writing the staging file"))?;
                drop(file);
                let _ = tokio::fs::remove_file(part).await;
                return Err(UpdateError::TooLarge(format!(
                    "{}: the server sent more than the {} signed bytes; discarded",
                    t.name, t.length
                )));
            }
            let chunk = match fail_at {
                Some(n) if have + chunk.len() as u64 >= n => {
                    let keep = (n - have.min(n)) as usize;
                    file.write_all(&chunk[..keep])
                        .await
                        .map_err(UpdateError::io("writing"))?;
                    file.flush().await.map_err(UpdateError::io("writing"))?;
                    eprintln!("crash test: aborting at byte {n} of the download");
                    std::process::abort();
                }
                _ => chunk,
            };
            file.write_all(&chunk)
                .await
                .map_err(UpdateError::io(format!("writing {}", part.display())))?;
            have += chunk.len() as u64;
            progress(Progress {
                have,
                total: t.length,
                attempts,
            });
            if let Some(rate) = self.limits.rate {
                // Pace to the cap: the bytes of this attempt may not arrive
                // faster than `rate` allows since it started.
                let due = Duration::from_secs_f64((have - at_start) as f64 / rate.max(1) as f64);
                let elapsed = started.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
        }
        file.flush()
            .await
            .map_err(UpdateError::io("writing the staging file"))?;
        file.sync_all()
            .await
            .map_err(UpdateError::io("syncing the staging file"))?;
        if have < t.length && t.url.scheme() == "file" {
            // A file is what it is: no retry makes it longer.
            drop(file);
            let _ = tokio::fs::remove_file(part).await;
            return Err(UpdateError::Target {
                name: t.name.clone(),
                detail: format!(
                    "the file ends at byte {have}, the signed length is {}; discarded",
                    t.length
                ),
            });
        }
        if have < t.length {
            return Ok(Attempt::Retry(format!(
                "the transfer ended at byte {have} of {}",
                t.length
            )));
        }
        Ok(Attempt::Done)
    }
}

/// Length and SHA-256 of a file, reading at most `limit` bytes.
pub async fn hash_file(path: &Path, limit: u64) -> Result<(u64, [u8; 32]), UpdateError> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(UpdateError::io(format!("opening {}", path.display())))?;
    let mut f = f.take(limit);
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .map_err(UpdateError::io(format!("reading {}", path.display())))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        len += n as u64;
    }
    let digest = ctx.finish();
    Ok((len, digest.as_ref().try_into().expect("sha256 is 32 bytes")))
}

async fn sync_dir(d: &Path) -> Result<(), UpdateError> {
    let d = d.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&d).and_then(|f| f.sync_all()))
        .await
        .expect("sync does not panic")
        .map_err(UpdateError::io("syncing the staging directory"))
}

/// reqwest's errors name the URL; ours name the target instead.
fn strip_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "<target>");
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

mod tokio_util_like {
    use futures_util::Stream;
    use tokio::io::AsyncReadExt;

    /// A file as a stream of chunks, the same shape as an HTTP body.
    pub fn read_stream(f: tokio::fs::File, chunk: usize) -> impl Stream<Item = Result<bytes::Bytes, String>> + Send {
        futures_util::stream::unfold(Some(f), move |f| async move {
            let mut f = f?;
            let mut buf = vec![0u8; chunk];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), Some(f)))
                }
                Err(e) => Some((Err(e.to_string()), None)),
            }
        })
    }
}
