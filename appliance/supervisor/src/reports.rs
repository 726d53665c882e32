//! Enrollment with global ops and usage reports that are never lost and
//! never counted twice.
//!
//! - After every BBB poll the accumulator is written (durably) to
//!   `usage.json` with the next sequence number, so a kill -9 loses at most
//!   the poll in flight, and that interval is charged by the next poll.
//! - A report is written to the outbox (durably) before the accumulator is
//!   reset; on start, a report newer than the accumulator's sequence number
//!   means the reset did not happen, and it is done then.
//! - The sender only sends reports below the persisted sequence number, so
//!   a report is never acknowledged (and deleted) before the accumulator
//!   that produced it has been reset.
//! - Ops stores reports by (node, sequence number): a resend after a lost
//!   answer is acknowledged, not counted again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use appliance_usage::protocol::{EnrollResponse, ErrorBody};
use appliance_usage::{Accumulator, Ack, EnrollRequest, NodeKey, Period, Report, Resources, Seen, Token};
use serde::{Deserialize, Serialize};

use appliance_services::checks::error_chain;

use crate::outbox::{Outbox, write_durable};
use crate::state::{Shared, lock};

/// What `enrollment.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrollment {
    pub ops: String,
    pub fingerprint: String,
    pub node: String,
    pub node_id: String,
    pub enrolled_at: i64,
    pub report_interval_secs: u64,
    pub reports_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct UsageFile {
    next_seq: u64,
    acc: Accumulator,
}

/// Settings of the usage reports (`[usage]` in the config).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Overrides the interval ops asks for.
    pub report_interval: Option<Duration>,
    pub max_gap: Duration,
    pub max_reports: usize,
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// The node's usage accounting and outbox.
#[derive(Debug)]
pub struct Engine {
    dir: PathBuf,
    file: UsageFile,
    pub outbox: Outbox,
    settings: Settings,
    last_report: Instant,
    last_report_unix: i64,
    /// Set while the disk refuses our writes (full, read-only).
    pub write_error: Option<String>,
    /// The sender's last error and last success.
    pub send_error: Option<String>,
    pub last_success: Option<f64>,
    /// Resource figures since the last report.
    resources: ResourceAcc,
}

#[derive(Debug, Default)]
struct ResourceAcc {
    cpu_sum: f64,
    cpu_n: u64,
    cpu_max: Option<f64>,
    rx_start: std::collections::BTreeMap<String, u64>,
    rx_last: std::collections::BTreeMap<String, u64>,
    tx_start: std::collections::BTreeMap<String, u64>,
    tx_last: std::collections::BTreeMap<String, u64>,
    max_temp: Option<f64>,
    disk_max: Option<f64>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn key_path(state: &Path) -> PathBuf {
    state.join("identity/node.pk8")
}

/// The node's identity key, made (0600) the first time.
pub fn load_or_create_key(state: &Path) -> Result<NodeKey, String> {
    let p = key_path(state);
    match std::fs::read(&p) {
        Ok(b) => NodeKey::from_pkcs8(&b).map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = p.parent().expect("has a parent");
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let b = NodeKey::generate().map_err(|e| e.to_string())?;
            write_durable(&p, &b).map_err(|e| format!("{}: {e}", p.display()))?;
            log::info!("made this node's identity key {}", p.display());
            NodeKey::from_pkcs8(&b).map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

pub fn load_enrollment(state: &Path) -> Option<Enrollment> {
    serde_json::from_slice(&std::fs::read(state.join("enrollment.json")).ok()?).ok()
}

impl Engine {
    /// Opens the accounting state and the outbox, finishing a report that a
    /// crash interrupted.
    pub fn open(state: &Path, settings: Settings) -> Result<Engine, String> {
        let dir = state.join("usage");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let outbox = Outbox::open(&dir.join("outbox")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("usage.json");
        let mut file: UsageFile = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                format!(
                    "{}: damaged ({e}); move it aside to start counting afresh",
                    path.display()
                )
            })?,
            Err(_) => UsageFile {
                next_seq: 1,
                acc: Accumulator::default(),
            },
        };
        if let Some(max) = outbox.max_seq() {
            if max >= file.next_seq {
                log::info!("report {max} was written before a restart; its usage is not counted again");
                file.acc.reset_after();
                file.next_seq = max + 1;
                write_durable(&path, &serde_json::to_vec(&file).unwrap_or_default())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        Ok(Engine {
            dir,
            file,
            outbox,
            settings,
            last_report: Instant::now(),
            last_report_unix: unix_now(),
            write_error: None,
            send_error: None,
            last_success: None,
            resources: ResourceAcc::default(),
        })
    }

    fn persist(&mut self) {
        let path = self.dir.join("usage.json");
        match write_durable(&path, &serde_json::to_vec(&self.file).unwrap_or_default()) {
            Ok(()) => {
                if self.write_error.take().is_some() {
                    log::info!("usage state can be written again");
                }
            }
            Err(e) => self.disk_error(format!("{}: {e}", path.display())),
        }
    }

    fn disk_error(&mut self, e: String) {
        if self.write_error.as_deref() != Some(e.as_str()) {
            log::error!("usage accounting cannot write to disk: {e}; counting goes on in memory");
        }
        self.write_error = Some(e);
    }

    /// A successful poll: BBB's time and what it saw.
    pub fn observe(&mut self, at: i64, seen: Vec<Seen>) {
        self.file.acc.observe(at, seen, self.settings.max_gap.as_secs() as i64);
        self.persist();
    }

    /// A poll that failed.
    pub fn failed(&mut self) {
        self.file.acc.failed();
        self.persist();
    }

    /// Takes a sample's resource figures into the next report.
    pub fn sample(&mut self, snap: &appliance_monitor::Snapshot, uplink: Option<&str>) {
        let r = &mut self.resources;
        if let Some(u) = snap.cpu.usage {
            r.cpu_sum += u;
            r.cpu_n += 1;
            r.cpu_max = Some(r.cpu_max.map_or(u, |m| m.max(u)));
        }
        if let Some(i) = uplink.and_then(|u| snap.network.iter().find(|i| i.name == u)) {
            r.rx_start.entry(i.name.clone()).or_insert(i.rx_bytes);
            r.tx_start.entry(i.name.clone()).or_insert(i.tx_bytes);
            r.rx_last.insert(i.name.clone(), i.rx_bytes);
            r.tx_last.insert(i.name.clone(), i.tx_bytes);
        }
        if let Some(t) = snap.temperatures.iter().map(|t| t.celsius).reduce(f64::max) {
            r.max_temp = Some(r.max_temp.map_or(t, |m| m.max(t)));
        }
        if let Some(d) = snap.filesystems.iter().filter_map(|f| f.used_ratio()).reduce(f64::max) {
            r.disk_max = Some(r.disk_max.map_or(d, |m| m.max(d)));
        }
    }

    fn take_resources(&mut self) -> Resources {
        let r = std::mem::take(&mut self.resources);
        let delta = |start: &std::collections::BTreeMap<String, u64>,
                     last: &std::collections::BTreeMap<String, u64>| {
            last.iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(*start.get(k).unwrap_or(v))))
                .collect()
        };
        Resources {
            cpu_avg: (r.cpu_n > 0).then(|| r.cpu_sum / r.cpu_n as f64),
            cpu_max: r.cpu_max,
            rx_bytes: delta(&r.rx_start, &r.rx_last),
            tx_bytes: delta(&r.tx_start, &r.tx_last),
            max_temperature: r.max_temp,
            disk_used_ratio_max: r.disk_max,
        }
    }

    /// The sequence number below which reports may be sent.
    pub fn next_seq(&self) -> u64 {
        self.file.next_seq
    }

    /// Writes a report when one is due; returns whether one was written.
    pub fn maybe_report(
        &mut self,
        enrollment: &Enrollment,
        key: &NodeKey,
        firmware: &str,
        health: String,
        services: String,
    ) -> bool {
        let interval = self
            .settings
            .report_interval
            .unwrap_or(Duration::from_secs(enrollment.report_interval_secs.max(1)));
        if self.last_report.elapsed() < interval {
            return false;
        }
        let mut acc = self.file.acc.clone();
        let period = acc.close().unwrap_or(Period {
            from: self.last_report_unix,
            to: unix_now(),
            members: Default::default(),
            meetings: Default::default(),
            gaps: Default::default(),
        });
        let seq = self.file.next_seq;
        let report = Report::from_period(
            &enrollment.node_id,
            seq,
            firmware,
            &period,
            self.take_resources(),
            health,
            services,
        );
        let env = key.seal(&report);
        if let Err(e) = self.outbox.put(&env, seq) {
            self.disk_error(format!("writing report {seq}: {e}"));
            return false;
        }
        self.file.acc = acc;
        self.file.next_seq = seq + 1;
        self.persist();
        self.last_report = Instant::now();
        self.last_report_unix = period.to;
        if let Err(e) = self.outbox.bound(self.settings.max_reports, key) {
            self.disk_error(format!("merging old reports: {e}"));
        }
        true
    }
}

/// What a send attempt came to.
enum Sent {
    Acked,
    /// Ops answered with a refusal (revoked, bad signature): a person must act.
    Refused(String),
    /// Ops was not reached, or the answer was lost.
    Failed(String),
}

pub fn ops_client(fingerprint: &str) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(appliance_certs::pinned_client_config(fingerprint))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())
}

async fn send(client: &reqwest::Client, url: &str, e: &crate::outbox::Entry) -> Sent {
    let body = serde_json::to_vec(&e.envelope).unwrap_or_default();
    let res = match client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(err) => return Sent::Failed(error_chain(&err)),
    };
    let status = res.status();
    let body = res.bytes().await.unwrap_or_default();
    if status.is_success() {
        match serde_json::from_slice::<Ack>(&body) {
            Ok(a) if a.acked == e.seq_to => Sent::Acked,
            Ok(a) => Sent::Failed(format!("ops acknowledged {} instead of {}", a.acked, e.seq_to)),
            Err(err) => Sent::Failed(format!("ops answered nonsense: {err}")),
        }
    } else {
        let msg = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        if status.is_client_error() {
            Sent::Refused(format!("{status}: {msg}"))
        } else {
            Sent::Failed(format!("{status}: {msg}"))
        }
    }
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let f = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX);
    d.mul_f64(f)
}

/// Delivers the outbox to ops, in order, with exponential backoff and
/// jitter; runs for the life of the supervisor.
pub async fn deliver(shared: Arc<Shared>, wake: Arc<tokio::sync::Notify>) {
    let mut failures: u32 = 0;
    let mut client: Option<(String, reqwest::Client)> = None;
    loop {
        let Some(enr) = lock(&shared.enrollment).clone() else {
            let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
            continue;
        };
        let (head, settings) = {
            let Some(engine) = shared.usage.as_ref() else { return };
            let e = lock(engine);
            let next = e.next_seq();
            (e.outbox.head_below(next), e.settings.clone())
        };
        let Some(head) = head else {
            failures = 0;
            let _ = tokio::time::timeout(Duration::from_secs(5), wake.notified()).await;
            continue;
        };
        if client.as_ref().is_none_or(|(fp, _)| *fp != enr.fingerprint) {
            match ops_client(&enr.fingerprint) {
                Ok(c) => client = Some((enr.fingerprint.clone(), c)),
                Err(e) => {
                    log::error!("cannot make the ops client: {e}");
                    tokio::time::sleep(settings.retry_max).await;
                    continue;
                }
            }
        }
        let url = format!("{}{}", enr.ops, enr.reports_path);
        let outcome = send(&client.as_ref().expect("set above").1, &url, &head).await;
        let engine = shared.usage.as_ref().expect("checked above");
        match outcome {
            Sent::Acked => {
                let mut e = lock(engine);
                if let Err(err) = e.outbox.remove(&head) {
                    log::error!("report {} acknowledged but not removed: {err}", head.seq_to);
                }
                if e.send_error.take().is_some() {
                    log::info!("ops takes reports again");
                }
                e.last_success = Some(unix_now() as f64);
                failures = 0;
            }
            Sent::Refused(msg) | Sent::Failed(msg) => {
                {
                    let mut e = lock(engine);
                    if e.send_error.as_deref() != Some(msg.as_str()) {
                        log::warn!("sending report {} to {url}: {msg}; kept, will retry", head.seq_to);
                    }
                    e.send_error = Some(msg);
                }
                failures = failures.saturating_add(1);
                let backoff = settings
                    .retry_min
                    .saturating_mul(2u32.saturating_pow(failures.min(20) - 1))
                    .min(settings.retry_max);
                tokio::time::sleep(jitter(backoff)).await;
            }
        }
    }
}

/// Enrolls this node with ops, pinned to the certificate the token names.
pub async fn enroll(shared: &Shared, ops: &str, token: &str, force: bool) -> Result<String, String> {
    let t = Token::decode(token).map_err(|e| e.to_string())?;
    let want = ops.trim().trim_end_matches('/');
    if t.ops.trim_end_matches('/') != want {
        return Err(format!("the token is for ops {}, not {want}", t.ops));
    }
    if let Some(e) = lock(&shared.enrollment).clone() {
        if !force {
            return Err(format!(
                "already enrolled with {} as node {} ({}); enroll again with --force",
                e.ops, e.node, e.node_id
            ));
        }
    }
    let key = load_or_create_key(&shared.state_dir)?;
    let client = ops_client(&t.fp)?;
    let mut facts = std::collections::BTreeMap::new();
    facts.insert("profile".to_string(), shared.id.profile.name.clone());
    for (k, v) in &shared.id.detection.dmi {
        facts.insert(k.clone(), v.clone());
    }
    let req = EnrollRequest {
        secret: t.secret.clone(),
        node: shared.id.node.clone(),
        public_key: key.public_key(),
        version: shared.id.version.clone(),
        facts,
    };
    let url = format!("{want}/api/v1/enroll");
    let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    let res = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| {
            let chain = error_chain(&e);
            if chain.contains(appliance_certs::PIN_MISMATCH) {
                format!(
                    "ops at {want} presented a certificate that is not the one the token names ({chain}): not enrolling"
                )
            } else {
                format!("cannot reach ops at {want}: {chain}")
            }
        })?;
    let status = res.status();
    let body = res.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(format!("ops refused the enrollment: {msg}"));
    }
    let r: EnrollResponse = serde_json::from_slice(&body).map_err(|e| format!("ops answered nonsense: {e}"))?;
    let enr = Enrollment {
        ops: want.to_string(),
        fingerprint: t.fp.clone(),
        node: r.node.clone(),
        node_id: r.node_id.clone(),
        enrolled_at: unix_now(),
        report_interval_secs: r.report_interval_secs,
        reports_path: r.reports_path,
    };
    write_durable(
        &shared.state_dir.join("enrollment.json"),
        &serde_json::to_vec_pretty(&enr).unwrap_or_default(),
    )
    .map_err(|e| format!("enrolled, but cannot save the enrollment: {e}"))?;
    *lock(&shared.enrollment) = Some(enr);
    log::info!("enrolled with {want} as node {} ({})", r.node, r.node_id);
    Ok(format!("enrolled with {want} as node {} ({})", r.node, r.node_id))
}
