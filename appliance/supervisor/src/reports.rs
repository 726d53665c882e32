//! Usage reports that are never lost and never counted twice.
//!
//! One task owns everything billing rests on: the ledger (accumulator and
//! next report number, `usage/usage.json`), the outbox, the enrollment and
//! the node key, and the delivery to ops. Nothing else touches them: the
//! BBB poller and the sampler send it messages through a [`Handle`], and
//! everyone reads what it publishes ([`ReportsState`], a `watch`). There is
//! no lock to hold across an fsync; the file I/O runs in `block_in_place`.
//! What a report covers and when one is due are pure functions of the
//! ledger and `now` ([`appliance_usage::Ledger`]), with `now` from a
//! [`Clock`].
//!
//! The order of writes, which is what makes a crash at any moment safe:
//! - after every poll the ledger is written durably, so a kill -9 loses at
//!   most the poll in flight, and that interval is charged by the next;
//! - a report is written to the outbox (durably) before the ledger forgets
//!   its period; on start, a report at or past the ledger's next number
//!   means the forgetting did not happen, and it is done then;
//! - a report is only written while the ledger on disk is the one in
//!   memory (after a failed write, the ledger is written first);
//! - only reports below the persisted next number are sent, so none is
//!   acknowledged (and deleted) before the ledger that made it moved on;
//! - ops keys reports by (node, enrollment, number) and acknowledges a
//!   byte-identical resend, so a lost acknowledgement costs a resend only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance_services::checks::error_chain;
use appliance_usage::protocol::ErrorBody;
use appliance_usage::{Ack, Ledger, NodeKey, Report, Resources, Seen};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::enrollment::{self, EnrollError, Enrollment, NodeFacts};
use crate::outbox::{Entry, Outbox, read_if_exists, write_durable};

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

/// Time as the reports task plans with it: monotonic for "is a report
/// due" and backoff, wall-clock seconds for empty periods and the time of
/// the last acknowledgement. Usage itself is charged on BBB's clock (the
/// poll's `at`), not this one.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
    fn unix(&self) -> i64;
}

#[derive(Debug)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn unix(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
}

/// A BBB poll as the accounting needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// BBB answered at `at` (its clock), and these meetings were running.
    Ok { at: i64, seen: Vec<Seen> },
    /// BBB did not answer, or answered nonsense.
    Failed,
}

/// One sample's resource figures and the node's state then.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub cpu: Option<f64>,
    /// The uplink and its receive and transmit byte counters.
    pub uplink: Option<(String, u64, u64)>,
    pub max_temperature: Option<f64>,
    pub disk_used_ratio_max: Option<f64>,
    pub health: String,
    pub services: String,
    /// Where the node stands with updates, for ops.
    pub update: Option<appliance_usage::UpdateReport>,
    /// The member organisations' slugs, sorted.
    pub members: Vec<String>,
}

/// What the reports task publishes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportsState {
    pub enrollment: Option<Enrollment>,
    /// Reports written and not yet acknowledged.
    pub queued: u64,
    /// Unix time of the last acknowledgement.
    pub last_success: Option<f64>,
    /// Ops could not be reached (not the node's fault; reports wait).
    pub send_error: Option<String>,
    /// Ops refused the oldest report: it stays queued and a person must
    /// look (ops's reason is here).
    pub refused: Option<String>,
    /// Usage state or reports cannot be written (disk full, read-only).
    pub write_error: Option<String>,
    /// Usage state, the enrollment or the node key cannot be read: nothing
    /// is counted or sent until a person looks.
    pub state_error: Option<String>,
    /// Each member's usage so far in the month of the last poll.
    pub this_month: Option<appliance_api::MonthUsageView>,
}

enum Msg {
    Poll(Poll),
    Sample(Box<Sample>),
    Enrolled {
        enrollment: Enrollment,
        key: NodeKey,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// How others talk to the reports task.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Msg>,
    state: watch::Receiver<ReportsState>,
    /// A poll was dropped since the task last looked.
    dropped: Arc<AtomicBool>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reports::Handle")
    }
}

impl Handle {
    /// Hands a poll to the accounting. Never waits: if the task is far
    /// behind, the poll is dropped and the task told so; it charges the
    /// interval around a dropped poll to nobody (a gap), never as usage it
    /// did not see.
    pub fn poll(&self, p: Poll) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Msg::Poll(p)) {
            self.dropped.store(true, Ordering::SeqCst);
            log::warn!("usage accounting is behind: a BBB poll was dropped");
        }
    }

    /// Hands a sample's resource figures to the next report (dropped when
    /// the task is behind: they are not billing figures).
    pub fn sample(&self, s: Sample) {
        let _ = self.tx.try_send(Msg::Sample(Box::new(s)));
    }

    pub fn state(&self) -> ReportsState {
        self.state.borrow().clone()
    }

    /// Enrolls with ops (`--force`: although already enrolled) and hands
    /// the enrollment and key to the task.
    pub async fn enroll(
        &self,
        state_dir: &Path,
        ops: &str,
        token: &str,
        force: bool,
        me: &NodeFacts,
    ) -> Result<String, EnrollError> {
        let (t, ops) = enrollment::check_token(ops, token)?;
        if let Some(e) = self.state().enrollment {
            if !force {
                return Err(EnrollError::AlreadyEnrolled {
                    ops: e.ops,
                    node: e.node,
                    node_id: e.node_id,
                });
            }
        }
        let (enr, key) = enrollment::exchange(state_dir, &t, &ops, me).await?;
        let said = format!(
            "enrolled with {ops} as node {} ({}, enrollment {})",
            enr.node, enr.node_id, enr.epoch
        );
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Enrolled {
                enrollment: enr,
                key,
                reply,
            })
            .await
            .map_err(|_| EnrollError::TaskGone)?;
        rx.await
            .map_err(|_| EnrollError::TaskGone)?
            .map_err(EnrollError::Save)?;
        log::info!("{said}");
        Ok(said)
    }
}

/// The reports task, not yet running (spawn [`Task::run`] on the runtime).
pub struct Task {
    owner: Owner,
    rx: mpsc::Receiver<Msg>,
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reports::Task")
    }
}

/// The task and its handle. Nothing is read from disk until it runs.
pub fn task(state_dir: &Path, firmware: &str, settings: Settings, clock: Arc<dyn Clock>) -> (Handle, Task) {
    let (tx, rx) = mpsc::channel(1024);
    let (publish, state) = watch::channel(ReportsState::default());
    let dropped = Arc::new(AtomicBool::new(false));
    let now = clock.now();
    let owner = Owner {
        dropped: dropped.clone(),
        sendable_below: 0,
        state_dir: state_dir.to_path_buf(),
        usage_dir: state_dir.join("usage"),
        firmware: firmware.to_string(),
        settings,
        clock,
        books: None,
        next_open: now,
        enrollment: None,
        key: None,
        resources: ResourceAcc::default(),
        health: String::new(),
        services: String::new(),
        update: None,
        members: Vec::new(),
        last_report: now,
        on_disk: false,
        failures: 0,
        next_attempt: now,
        client: None,
        ledger_error: None,
        identity_error: None,
        numbering_error: None,
        out: ReportsState::default(),
        publish,
    };
    (Handle { tx, state, dropped }, Task { owner, rx })
}

impl Task {
    pub async fn run(self) {
        let Task { mut owner, mut rx } = self;
        owner.start();
        let mut inflight: Option<JoinHandle<(Entry, Sent)>> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => owner.handle(m),
                    None => break,
                },
                r = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    match r {
                        Ok((entry, sent)) => owner.delivered(&entry, sent),
                        Err(e) => owner.delivered_nothing(format!("the sending task failed: {e}")),
                    }
                }
                _ = tick.tick() => {}
            }
            owner.step();
            if inflight.is_none() {
                inflight = owner.next_send();
            }
            owner.publish();
        }
    }
}

/// The ledger and the outbox, once they could be opened.
struct Books {
    ledger: Ledger,
    outbox: Outbox,
}

struct Owner {
    /// Set by the handle when a poll could not be queued.
    dropped: Arc<AtomicBool>,
    /// The next number in the ledger on disk: only reports below it are
    /// sent (one acknowledged and deleted while a newer ledger was not yet
    /// on disk would be made again after a crash, differently).
    sendable_below: u64,
    state_dir: PathBuf,
    usage_dir: PathBuf,
    firmware: String,
    settings: Settings,
    clock: Arc<dyn Clock>,
    books: Option<Books>,
    /// When to try opening the books again after a failure.
    next_open: Instant,
    enrollment: Option<Enrollment>,
    key: Option<NodeKey>,
    resources: ResourceAcc,
    health: String,
    services: String,
    update: Option<appliance_usage::UpdateReport>,
    members: Vec<String>,
    last_report: Instant,
    /// The ledger file is the ledger in memory.
    on_disk: bool,
    failures: u32,
    next_attempt: Instant,
    client: Option<(String, reqwest::Client)>,
    /// Why the ledger cannot be opened, and why the node cannot sign.
    ledger_error: Option<String>,
    identity_error: Option<String>,
    /// Why the ledger may not number reports for this enrollment.
    numbering_error: Option<String>,
    out: ReportsState,
    publish: watch::Sender<ReportsState>,
}

/// File I/O from the task: off the async workers' hot path.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

const LEDGER_FILE: &str = "usage.json";

/// Opens the ledger and the outbox, finishing a report that a crash
/// interrupted. Only a missing `usage.json` starts afresh: a file that
/// cannot be read or parsed is an error a person must look at (counting
/// from zero would send reports ops already has, or lose a period).
fn open_books(dir: &Path) -> Result<Books, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let outbox = Outbox::open(&dir.join("outbox")).map_err(|e| format!("{}: {e}", dir.join("outbox").display()))?;
    let path = dir.join(LEDGER_FILE);
    let mut ledger: Ledger = match read_if_exists(&path)? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| {
            format!(
                "{}: damaged ({e}); nothing is counted until it is moved aside (then counting starts afresh and the node must enroll again)",
                path.display()
            )
        })?,
        None => Ledger::default(),
    };
    ledger.upgrade();
    if let Some(max) = outbox.max_seq() {
        let n = ledger.recover(max);
        if n > 0 {
            log::info!("report {max} was written before a restart; its usage is not counted again");
            write_durable(&path, &serde_json::to_vec(&ledger).unwrap_or_default())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(Books { ledger, outbox })
}

impl Owner {
    fn start(&mut self) {
        match enrollment::load(&self.state_dir) {
            Ok(e) => self.enrollment = e,
            Err(e) => self.identity_problem(e),
        }
        if let Some(e) = &self.enrollment {
            log::info!(
                "enrolled with {} as node {} ({}, enrollment {})",
                e.ops,
                e.node,
                e.node_id,
                e.epoch
            );
            match enrollment::load_key(&self.state_dir) {
                Ok(Some(k)) => self.key = Some(k),
                Ok(None) => self.identity_problem(format!(
                    "enrolled, but the identity key {} is gone: enroll again",
                    self.state_dir.join("identity/node.pk8").display()
                )),
                Err(e) => self.identity_problem(e),
            }
        }
        self.open();
        self.out.enrollment = self.enrollment.clone();
        self.publish();
    }

    fn identity_problem(&mut self, e: String) {
        log::error!("usage reports cannot be signed: {e}");
        self.identity_error = Some(e);
    }

    fn open(&mut self) {
        if self.books.is_some() || self.clock.now() < self.next_open {
            return;
        }
        let dir = self.usage_dir.clone();
        match blocking(|| open_books(&dir)) {
            Ok(b) => {
                if self.ledger_error.take().is_some() {
                    log::info!("usage accounting state can be read again");
                }
                self.out.queued = b.outbox.len() as u64;
                self.sendable_below = b.ledger.next_seq;
                self.books = Some(b);
                self.on_disk = true;
                self.reseal();
            }
            Err(e) => {
                if self.ledger_error.as_deref() != Some(e.as_str()) {
                    log::error!("usage accounting stopped: {e}");
                }
                self.ledger_error = Some(e);
                self.next_open = self.clock.now() + Duration::from_secs(30);
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Poll(p) => {
                let Some(b) = self.books.as_mut() else { return };
                let max_gap = self.settings.max_gap.as_secs() as i64;
                if self.dropped.swap(false, Ordering::SeqCst) {
                    b.ledger.acc.failed();
                }
                match p {
                    Poll::Ok { at, seen } => b.ledger.acc.observe(at, seen, max_gap),
                    Poll::Failed => b.ledger.acc.failed(),
                }
                self.persist();
            }
            Msg::Sample(s) => {
                self.resources.sample(&s);
                self.health = s.health;
                self.services = s.services;
                self.update = s.update;
                self.members = s.members;
            }
            Msg::Enrolled {
                enrollment: enr,
                key,
                reply,
            } => {
                // The ledger takes the new enrollment first. A crash before
                // enrollment.json is saved then leaves a first-time node
                // simply not enrolled (the next enrollment is adopted), not
                // a fresh ledger that refuses to number; either way nothing
                // is lost and enrolling again resolves it.
                if let Some(b) = self.books.as_mut() {
                    b.ledger.enrolled(enr.epoch);
                    self.numbering_error = None;
                    self.persist();
                }
                let dir = self.state_dir.clone();
                let saved = blocking(|| enrollment::save(&dir, &enr));
                if saved.is_ok() {
                    self.enrollment = Some(enr.clone());
                    self.key = Some(key);
                    self.out.enrollment = Some(enr);
                    // A new enrollment is a new start for delivery.
                    self.failures = 0;
                    self.next_attempt = self.clock.now();
                    self.out.refused = None;
                    self.out.send_error = None;
                    self.identity_error = None;
                    self.reseal();
                }
                let _ = reply.send(saved);
            }
        }
    }

    /// Queued reports follow the current enrollment (see [`Outbox::reseal`]).
    fn reseal(&mut self) {
        let (Some(b), Some(enr), Some(key)) = (self.books.as_ref(), self.enrollment.as_ref(), self.key.as_ref()) else {
            return;
        };
        match blocking(|| b.outbox.reseal(key, &enr.node_id, enr.epoch)) {
            Ok(0) => {}
            Ok(n) => log::info!(
                "{n} queued report(s) re-signed as reports of enrollment {} of node {}",
                enr.epoch,
                enr.node_id
            ),
            Err(e) => self.disk_error(format!("re-signing queued reports: {e}")),
        }
    }

    fn persist(&mut self) {
        let Some(b) = &self.books else { return };
        let path = self.usage_dir.join(LEDGER_FILE);
        let data = serde_json::to_vec(&b.ledger).unwrap_or_default();
        let next = b.ledger.next_seq;
        match blocking(|| write_durable(&path, &data)) {
            Ok(()) => {
                self.on_disk = true;
                self.sendable_below = next;
                if self.out.write_error.take().is_some() {
                    log::info!("usage state can be written again");
                }
            }
            Err(e) => {
                self.on_disk = false;
                self.disk_error(format!("{}: {e}", path.display()));
            }
        }
    }

    fn disk_error(&mut self, e: String) {
        if self.out.write_error.as_deref() != Some(e.as_str()) {
            log::error!("usage accounting cannot write to disk: {e}; counting goes on in memory");
        }
        self.out.write_error = Some(e);
    }

    fn interval(&self) -> Option<Duration> {
        let e = self.enrollment.as_ref()?;
        Some(
            self.settings
                .report_interval
                .unwrap_or(Duration::from_secs(e.report_interval_secs.max(1))),
        )
    }

    /// Writes every report that is due.
    fn step(&mut self) {
        self.open();
        let Some(interval) = self.interval() else { return };
        if self.key.is_none() || self.books.is_none() {
            return;
        }
        let epoch = self.enrollment.as_ref().map(|e| e.epoch).unwrap_or_default();
        let numbering = self.books.as_mut().map(|b| b.ledger.number_for(epoch));
        match numbering {
            Some(Ok(changed)) => {
                self.numbering_error = None;
                if changed {
                    self.persist();
                }
            }
            Some(Err(e)) => {
                if self.numbering_error.is_none() {
                    log::error!("usage reports are held back: {e}");
                }
                self.numbering_error = Some(e.to_string());
                return;
            }
            None => return,
        }
        if !self.on_disk {
            self.persist();
            if !self.on_disk {
                return;
            }
        }
        let mut wrote = false;
        loop {
            let now = self.clock.now();
            let since = now.saturating_duration_since(self.last_report);
            let (Some(b), Some(enr), Some(key)) = (self.books.as_mut(), self.enrollment.as_ref(), self.key.as_ref())
            else {
                return;
            };
            let Some(period) = b.ledger.due(since, interval, self.clock.unix()) else {
                break;
            };
            let seq = b.ledger.next_seq;
            let mut report = Report::from_period(
                &enr.node_id,
                if period.legacy { 0 } else { enr.epoch },
                seq,
                &self.firmware,
                &period,
                self.resources.take(),
                self.health.clone(),
                self.services.clone(),
            );
            report.update = self.update.clone();
            report.members = self.members.clone();
            let env = key.seal(&report);
            let outbox = &b.outbox;
            if let Err(e) = blocking(|| outbox.put(&env, seq)) {
                self.disk_error(format!("writing report {seq}: {e}"));
                break;
            }
            b.ledger.commit();
            self.last_report = now;
            wrote = true;
            self.persist();
            if !self.on_disk {
                break;
            }
        }
        if wrote {
            if let (Some(b), Some(key)) = (self.books.as_ref(), self.key.as_ref()) {
                let max = self.settings.max_reports;
                let merged = blocking(|| {
                    b.outbox.bound(max, key).inspect_err(|_| {
                        // A merge half done leaves a report inside another's
                        // range; sending both would be refused for good.
                        let _ = b.outbox.drop_contained();
                    })
                });
                self.out.queued = blocking(|| b.outbox.len()) as u64;
                if let Err(e) = merged {
                    self.disk_error(format!("merging old reports: {e}"));
                }
            }
        }
    }

    /// Starts sending the oldest report, when there is one and it is time.
    fn next_send(&mut self) -> Option<JoinHandle<(Entry, Sent)>> {
        let enr = self.enrollment.clone()?;
        let b = self.books.as_ref()?;
        if self.clock.now() < self.next_attempt {
            return None;
        }
        let next = self.sendable_below;
        let head = blocking(|| b.outbox.head_below(next))?;
        if self.client.as_ref().is_none_or(|(fp, _)| *fp != enr.fingerprint) {
            match enrollment::ops_client(&enr.fingerprint) {
                Ok(c) => self.client = Some((enr.fingerprint.clone(), c)),
                Err(e) => {
                    self.delivered_nothing(format!("cannot make the ops client: {e}"));
                    return None;
                }
            }
        }
        let client = self.client.as_ref().expect("set above").1.clone();
        let url = format!("{}{}", enr.ops, enr.reports_path);
        Some(tokio::spawn(async move {
            let sent = send(&client, &url, &head).await;
            (head, sent)
        }))
    }

    fn delivered(&mut self, head: &Entry, sent: Sent) {
        match sent {
            Sent::Acked => {
                if let Some(b) = &self.books {
                    match blocking(|| b.outbox.remove(head)) {
                        // Counting the directory again per report would make
                        // a long queue's drain quadratic.
                        Ok(()) => self.out.queued = self.out.queued.saturating_sub(1),
                        Err(err) => log::error!("report {} acknowledged but not removed: {err}", head.seq_to),
                    }
                }
                if self.out.send_error.take().is_some() || self.out.refused.take().is_some() {
                    log::info!("ops takes reports again");
                }
                self.out.last_success = Some(self.clock.unix() as f64);
                self.failures = 0;
                self.next_attempt = self.clock.now();
            }
            Sent::Refused(msg) => {
                if self.out.refused.as_deref() != Some(msg.as_str()) {
                    log::error!(
                        "global ops refuses report {} of this node: {msg}; it stays queued, and so do the ones after it",
                        head.seq_to
                    );
                }
                self.out.refused = Some(msg);
                self.out.send_error = None;
                self.back_off();
            }
            Sent::Failed(msg) => {
                if self.out.send_error.as_deref() != Some(msg.as_str()) {
                    log::warn!("sending report {} to ops: {msg}; kept, will retry", head.seq_to);
                }
                self.out.send_error = Some(msg);
                self.back_off();
            }
        }
    }

    fn delivered_nothing(&mut self, msg: String) {
        log::error!("usage reports: {msg}");
        self.out.send_error = Some(msg);
        self.back_off();
    }

    fn back_off(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let backoff = self
            .settings
            .retry_min
            .saturating_mul(2u32.saturating_pow(self.failures.min(20) - 1))
            .min(self.settings.retry_max);
        self.next_attempt = self.clock.now() + jitter(backoff);
    }

    fn publish(&mut self) {
        let problems: Vec<&str> = [&self.ledger_error, &self.identity_error, &self.numbering_error]
            .into_iter()
            .filter_map(|e| e.as_deref())
            .collect();
        self.out.state_error = (!problems.is_empty()).then(|| problems.join("; "));
        self.out.this_month = self.books.as_ref().map(|b| {
            // The month the counting is in: the last poll's (BBB's clock
            // drives the accounting), or today's before any poll.
            let at = b
                .ledger
                .acc
                .last
                .as_ref()
                .map_or_else(|| self.clock.unix(), |(t, _)| *t);
            let (month, members) = b.ledger.month_to_date(at);
            appliance_api::MonthUsageView {
                month: month.to_string(),
                members: members
                    .into_iter()
                    .map(|(member, u)| appliance_api::MemberMonthView {
                        member,
                        meeting_seconds: u.meeting_seconds,
                        participant_seconds: u.participant_seconds,
                        peak_participants: u.peak_participants,
                    })
                    .collect(),
            }
        });
        let new = self.out.clone();
        self.publish.send_if_modified(|s| {
            if *s == new {
                false
            } else {
                *s = new;
                true
            }
        });
    }
}

/// What a send attempt came to.
enum Sent {
    Acked,
    /// Ops answered with a refusal (4xx): a person must act.
    Refused(String),
    /// Ops was not reached, or the answer was lost or garbled.
    Failed(String),
}

async fn send(client: &reqwest::Client, url: &str, e: &Entry) -> Sent {
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

/// Resource figures since the last report.
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

impl ResourceAcc {
    fn sample(&mut self, s: &Sample) {
        if let Some(u) = s.cpu {
            self.cpu_sum += u;
            self.cpu_n += 1;
            self.cpu_max = Some(self.cpu_max.map_or(u, |m| m.max(u)));
        }
        if let Some((name, rx, tx)) = &s.uplink {
            self.rx_start.entry(name.clone()).or_insert(*rx);
            self.tx_start.entry(name.clone()).or_insert(*tx);
            self.rx_last.insert(name.clone(), *rx);
            self.tx_last.insert(name.clone(), *tx);
        }
        if let Some(t) = s.max_temperature {
            self.max_temp = Some(self.max_temp.map_or(t, |m| m.max(t)));
        }
        if let Some(d) = s.disk_used_ratio_max {
            self.disk_max = Some(self.disk_max.map_or(d, |m| m.max(d)));
        }
    }

    fn take(&mut self) -> Resources {
        let r = std::mem::take(self);
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
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use appliance_usage::Month;

    use super::*;

    /// A clock the test moves.
    struct Manual {
        base: Instant,
        offset: Mutex<Duration>,
        unix: i64,
    }

    impl Clock for Manual {
        fn now(&self) -> Instant {
            self.base + *self.offset.lock().unwrap()
        }
        fn unix(&self) -> i64 {
            self.unix
        }
    }

    fn settings() -> Settings {
        Settings {
            report_interval: Some(Duration::from_secs(300)),
            max_gap: Duration::from_secs(120),
            max_reports: 100,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(10),
        }
    }

    /// A state dir with an enrollment (number `epoch`) and its key.
    fn enrolled(dir: &Path, epoch: u64) -> NodeKey {
        let pk8 = NodeKey::generate().unwrap();
        std::fs::create_dir_all(dir.join("identity")).unwrap();
        std::fs::write(dir.join("identity/node.pk8"), &pk8).unwrap();
        let e = Enrollment {
            ops: "https://127.0.0.1:1".into(),
            fingerprint: "AA".into(),
            node: "n".into(),
            node_id: "id-1".into(),
            epoch,
            enrolled_at: 0,
            report_interval_secs: 300,
            reports_path: "/api/v1/reports".into(),
        };
        enrollment::save(dir, &e).unwrap();
        NodeKey::from_pkcs8(&pk8).unwrap()
    }

    fn seen(n: u32) -> Vec<Seen> {
        vec![Seen {
            id: "m".into(),
            member: "coop-a".into(),
            participants: n,
            breakout: false,
        }]
    }

    fn reports(dir: &Path, key: &NodeKey) -> Vec<Report> {
        Outbox::open(&dir.join("usage/outbox"))
            .unwrap()
            .list()
            .iter()
            .map(|e| e.envelope.open(&key.public_key()).unwrap())
            .collect()
    }

    // block_in_place needs the multi-threaded runtime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_month_is_reported_at_its_end_and_the_rest_at_the_interval() {
        let d = tempfile::tempdir().unwrap();
        let key = enrolled(d.path(), 1);
        let clock = Arc::new(Manual {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
            unix: 1_900_000_000,
        });
        let (_handle, task) = task(d.path(), "0.1.0", settings(), clock.clone());
        let mut o = task.owner;
        o.start();
        assert_eq!(o.out.state_error, None);
        // A fresh ledger on an enrolled node numbers nothing...
        let b = Month::parse("2026-11").unwrap().start();
        o.handle(Msg::Poll(Poll::Ok {
            at: b - 60,
            seen: seen(2),
        }));
        o.step();
        o.publish();
        assert!(
            o.out.state_error.as_deref().unwrap().contains("enroll again"),
            "{:?}",
            o.out
        );
        // ...until it is enrolled (again): then the waiting usage goes out.
        let (reply, _rx) = oneshot::channel();
        let pk8 = std::fs::read(d.path().join("identity/node.pk8")).unwrap();
        let mut enr = enrollment::load(d.path()).unwrap().unwrap();
        enr.epoch = 2;
        o.handle(Msg::Enrolled {
            enrollment: enr,
            key: NodeKey::from_pkcs8(&pk8).unwrap(),
            reply,
        });
        o.handle(Msg::Poll(Poll::Ok {
            at: b + 30,
            seen: seen(3),
        }));
        o.step();
        o.publish();
        assert_eq!(o.out.state_error, None);
        // October ended: reported at once, although the interval has not passed.
        let r = reports(d.path(), &key);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].from, r[0].to, r[0].epoch, r[0].seq_to), (b - 60, b, 2, 1));
        assert_eq!(r[0].usage[0].usage.participant_seconds, 120);
        o.handle(Msg::Poll(Poll::Ok {
            at: b + 90,
            seen: seen(3),
        }));
        o.step();
        assert_eq!(reports(d.path(), &key).len(), 1, "November waits for the interval");
        *clock.offset.lock().unwrap() = Duration::from_secs(300);
        o.step();
        let r = reports(d.path(), &key);
        assert_eq!(r.len(), 2);
        assert_eq!((r[1].from, r[1].to, r[1].seq_to), (b, b + 90, 2));
        assert_eq!(r[1].usage[0].usage.participant_seconds, 30 * 2 + 60 * 3);
        assert_eq!(o.out.queued, 2);
        // A poll the task never saw (dropped while it was behind) makes the
        // interval around it a gap, not usage.
        o.dropped.store(true, Ordering::SeqCst);
        *clock.offset.lock().unwrap() = Duration::from_secs(600);
        o.handle(Msg::Poll(Poll::Ok {
            at: b + 150,
            seen: seen(3),
        }));
        o.step();
        let r = reports(d.path(), &key);
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].usage[0].usage.participant_seconds, 0);
        assert_eq!((r[2].gaps[0].from, r[2].gaps[0].to), (b + 90, b + 150));
        // The ledger on disk moved on with them.
        let l: Ledger = serde_json::from_slice(&std::fs::read(d.path().join("usage/usage.json")).unwrap()).unwrap();
        assert_eq!((l.next_seq, l.epoch), (4, Some(2)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_damaged_ledger_stops_counting_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        enrolled(d.path(), 1);
        std::fs::create_dir_all(d.path().join("usage")).unwrap();
        std::fs::write(d.path().join("usage/usage.json"), "{\"next_seq\": 5, \"acc\"").unwrap();
        let clock = Arc::new(SystemClock);
        let (_handle, task) = task(d.path(), "0.1.0", settings(), clock);
        let mut o = task.owner;
        o.start();
        o.handle(Msg::Poll(Poll::Ok { at: 100, seen: seen(1) }));
        o.step();
        o.publish();
        let e = o.out.state_error.clone().unwrap();
        assert!(e.contains("usage.json: damaged") && e.contains("moved aside"), "{e}");
        assert_eq!(
            std::fs::read_to_string(d.path().join("usage/usage.json")).unwrap(),
            "{\"next_seq\": 5, \"acc\"",
            "the damaged file is left for a person"
        );
        assert!(!d.path().join("usage/outbox").read_dir().unwrap().any(|_| true));
        let alerts = crate::state::report_alerts(&o.out);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].severity, appliance_monitor::Severity::Critical);
    }
}
