//! The downloader against the faults a real network and real servers give:
//! a connection dropped after N bytes, Range ignored (200 instead of 206),
//! bursts of 503, a slow drip against the deadline, and a download
//! resumed by a new process from what the last one left.
//!
//! The server is a few lines of raw HTTP/1.1 over TCP, so each fault is
//! exactly the bytes on the wire the test asks for.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use appliance_update::UpdateError;
use appliance_update::download::{Downloader, Limits};
use appliance_update::repo::TargetFile;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// Close the connection after this many body bytes, on every request.
    DropAfter(usize),
    /// Answer every request with the whole file and 200.
    IgnoreRange,
    /// The first N requests get 503.
    Burst503(usize),
    /// Send this many bytes every 50 ms.
    Drip(usize),
}

struct Server {
    url: url::Url,
    requests: Arc<AtomicUsize>,
    ranges: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

async fn serve(body: Vec<u8>, fault: Fault) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let ranges = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (rq, rg) = (requests.clone(), ranges.clone());
    let body = Arc::new(body);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let n = rq.fetch_add(1, Ordering::SeqCst);
            let (body, rg) = (body.clone(), rg.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let range = head
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .map(|r| r.trim().to_string());
                rg.lock().unwrap().push(range.clone());
                if let Fault::Burst503(k) = fault
                    && n < k
                {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
                let start: usize = match (&fault, &range) {
                    (Fault::IgnoreRange, _) | (_, None) => 0,
                    (_, Some(r)) => r.trim_end_matches('-').parse().unwrap(),
                };
                let part = &body[start.min(body.len())..];
                let head = if start > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {start}-{}/{}\r\nconnection: close\r\n\r\n",
                        part.len(),
                        body.len() - 1,
                        body.len()
                    )
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        part.len()
                    )
                };
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                match fault {
                    Fault::DropAfter(k) => {
                        // Then the connection closes short of content-length,
                        // as when a link drops.
                        let _ = s.write_all(&part[..k.min(part.len())]).await;
                    }
                    Fault::Drip(k) => {
                        for c in part.chunks(k) {
                            if s.write_all(c).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    _ => {
                        let _ = s.write_all(part).await;
                    }
                }
            });
        }
    });
    Server {
        url: format!("http://{addr}/t").parse().unwrap(),
        requests,
        ranges,
    }
}

fn target(body: &[u8], url: &url::Url) -> TargetFile {
    TargetFile {
        name: "appliance-9.9.9.tar.gz".into(),
        length: body.len() as u64,
        sha256: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body)
            .as_ref()
            .try_into()
            .unwrap(),
        url: url.clone(),
    }
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn downloader(deadline: Duration) -> Downloader {
    Downloader::new(
        reqwest::Client::new(),
        Limits {
            rate: None,
            deadline,
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
        },
    )
}

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn a_dropped_connection_is_resumed_with_range_requests() {
    let b = body(1 << 20);
    let s = serve(b.clone(), Fault::DropAfter(100_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let got = downloader(Duration::from_secs(30))
        .fetch(&target(&b, &s.url), dir.path(), &|_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), b);
    let ranges = s.ranges.lock().unwrap().clone();
    // 1 MiB in pieces of about 100 kB: each request after the first asks
    // for the rest, from further on than the one before.
    assert!(ranges.len() >= 10, "{} requests", ranges.len());
    assert_eq!(ranges[0], None);
    let starts: Vec<u64> = ranges[1..]
        .iter()
        .map(|r| r.as_ref().unwrap().trim_end_matches('-').parse().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[1] > w[0]), "{starts:?}");
}

#[tokio::test]
async fn a_server_that_ignores_range_is_read_from_the_start_again() {
    let b = body(300_000);
    let t = target(&b, &"http://unused/".parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    // What a killed process left: the first 100,000 bytes, with one
    // wrong byte in them (a torn write).
    let mut left = b[..100_000].to_vec();
    left[5] ^= 1;
    std::fs::write(dir.path().join(format!("{}.part", hex::encode(t.sha256))), &left).unwrap();
    let s = serve(b.clone(), Fault::IgnoreRange).await;
    let got = downloader(Duration::from_secs(30))
        .fetch(
            &TargetFile {
                url: s.url.clone(),
                ..t
            },
            dir.path(),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), b, "the 200 body replaced what was there");
    assert_eq!(s.ranges.lock().unwrap().clone(), vec![Some("100000-".to_string())]);
}

#[tokio::test]
async fn a_burst_of_503_is_waited_out() {
    let b = body(50_000);
    let s = serve(b.clone(), Fault::Burst503(4)).await;
    let dir = tempfile::tempdir().unwrap();
    let got = downloader(Duration::from_secs(30))
        .fetch(&target(&b, &s.url), dir.path(), &|_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), b);
    assert_eq!(s.requests.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn a_slow_drip_stops_at_the_deadline_and_keeps_what_arrived() {
    let b = body(200_000);
    let s = serve(b.clone(), Fault::Drip(1000)).await;
    let dir = tempfile::tempdir().unwrap();
    let t = target(&b, &s.url);
    let e = downloader(Duration::from_millis(600))
        .fetch(&t, dir.path(), &|_| {})
        .await
        .unwrap_err();
    match &e {
        UpdateError::Unreachable(d) => assert!(d.contains("not complete within"), "{d}"),
        e => panic!("{e:?}"),
    }
    // What arrived is kept, as .part only, for the next try.
    let kept = names(dir.path());
    assert_eq!(kept, vec![format!("{}.part", hex::encode(t.sha256))]);
    let have = std::fs::metadata(dir.path().join(&kept[0])).unwrap().len();
    assert!(have > 0 && have < b.len() as u64, "{have}");
    // The next run, against a healthy server, takes only the rest.
    let s2 = serve(b.clone(), Fault::None).await;
    let got = downloader(Duration::from_secs(30))
        .fetch(
            &TargetFile {
                url: s2.url.clone(),
                ..t
            },
            dir.path(),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got).unwrap(), b);
    assert_eq!(s2.ranges.lock().unwrap().clone(), vec![Some(format!("{have}-"))]);
}

#[tokio::test]
async fn the_bandwidth_cap_paces_the_transfer() {
    let b = body(256 * 1024);
    let s = serve(b.clone(), Fault::None).await;
    let dir = tempfile::tempdir().unwrap();
    let d = Downloader::new(
        reqwest::Client::new(),
        Limits {
            rate: Some(512 * 1024),
            ..Limits::default()
        },
    );
    let started = std::time::Instant::now();
    d.fetch(&target(&b, &s.url), dir.path(), &|_| {}).await.unwrap();
    // 256 KiB at 512 KiB/s cannot take less than half a second (a lower
    // bound only: how long it does take is the machine's business).
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}
