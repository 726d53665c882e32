//! The service runtime: runs the recipe's health checks on their
//! intervals, follows unit state from the service manager, applies the
//! restart policy, carries out restart plans in dependency order, and
//! publishes what it sees.
//!
//! One task owns all state; checks, unit changes, operator commands and
//! finished restart plans reach it as messages, so there are no locks and
//! the order of events is the order they are handled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use appliance_monitor::{Alert, Severity};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::checks::{self, Context, Outcome};
use crate::policy::{self, Decision, History, Observation, UnitActivity};
use crate::recipe::{CheckSpec, Recipe};
use crate::systemd::{ServiceManager, UnitStatus};

/// A check as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckView {
    pub check: String,
    /// `None` until it has run once.
    pub ok: Option<bool>,
    pub detail: String,
    pub consecutive_failures: u32,
    pub threshold: u32,
}

/// A service as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub unit: String,
    pub core: bool,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// Active, and no health check over its failure threshold.
    pub up: bool,
    /// What the supervisor is doing about it: ok, restarting, waiting,
    /// deferred, failed (gave up), stopped (by an operator), unknown.
    pub state: String,
    pub detail: Option<String>,
    /// Restarts made by the supervisor.
    pub restarts: u64,
    /// Restarts made by systemd itself (Restart=).
    pub systemd_restarts: u32,
    pub last_failure: Option<Failure>,
    pub checks: Vec<CheckView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Unix seconds.
    pub at: f64,
    pub reason: String,
}

/// Everything the runtime publishes after each event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServicesStatus {
    pub recipe: String,
    pub services: Vec<ServiceView>,
    /// Checks of the node rather than of a service (disks).
    pub checks: Vec<CheckView>,
    pub alerts: Vec<Alert>,
    /// Set while the service manager cannot be reached.
    pub error: Option<String>,
}

/// What an operator can ask for (CLI, admin page).
#[derive(Debug)]
pub enum Command {
    Restart {
        name: String,
        reply: oneshot::Sender<Result<String, CommandError>>,
    },
    Reset {
        name: String,
        reply: oneshot::Sender<Result<String, CommandError>>,
    },
}

/// Why an operator's command was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("no service named {name:?}; the recipe has: {known}")]
    UnknownService { name: String, known: String },
    #[error("{0} is already being restarted")]
    Busy(String),
    #[error("{0}")]
    Failed(String),
    #[error("the service runtime is not running: {0}")]
    NotRunning(String),
}

#[derive(Debug, Default)]
struct CheckState {
    last: Option<Outcome>,
    consecutive: u32,
}

#[derive(Debug, Default)]
struct Svc {
    status: UnitStatus,
    history: History,
    checks: Vec<CheckState>,
    /// A restart plan that includes this service is running.
    busy: bool,
    decision: Option<Decision>,
    /// The invocation we last accounted for; a different one means the unit
    /// was started by someone else (systemd's Restart=, an admin).
    known_invocation: String,
}

/// Where a check result belongs.
#[derive(Debug, Clone, Copy)]
enum Target {
    Service(usize, usize),
    Node(usize),
}

enum Event {
    Unit(String),
    Check(Target, Outcome),
    PlanDone {
        names: Vec<String>,
        first_counted: bool,
        result: Result<(), String>,
    },
}

pub struct Runtime<M: ServiceManager> {
    recipe: Arc<Recipe>,
    mgr: Arc<M>,
    ctx: Context,
    svcs: Vec<Svc>,
    node_checks: Vec<CheckState>,
    started: Instant,
    error: Option<String>,
    alert_since: BTreeMap<String, f64>,
}

impl<M: ServiceManager> std::fmt::Debug for Runtime<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("recipe", &self.recipe.name)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl<M: ServiceManager> Runtime<M> {
    pub fn new(recipe: Recipe, mgr: M, ctx: Context) -> Runtime<M> {
        let svcs = recipe
            .services
            .iter()
            .map(|s| Svc {
                checks: s.checks.iter().map(|_| CheckState::default()).collect(),
                ..Svc::default()
            })
            .collect();
        let node_checks = recipe.checks.iter().map(|_| CheckState::default()).collect();
        Runtime {
            recipe: Arc::new(recipe),
            mgr: Arc::new(mgr),
            ctx,
            svcs,
            node_checks,
            started: Instant::now(),
            error: None,
            alert_since: BTreeMap::new(),
        }
    }

    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn mono_to_unix(&self, t: f64) -> f64 {
        unix_now() - (self.now() - t)
    }

    /// Runs until `commands` closes. `meetings` says whether BBB has
    /// meetings running; `publish` receives the status after every event.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        meetings: watch::Receiver<bool>,
        publish: impl Fn(ServicesStatus) + Send + 'static,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let (unit_tx, mut unit_rx) = mpsc::unbounded_channel::<String>();
        let units: Vec<String> = self.recipe.services.iter().map(|s| s.unit.clone()).collect();
        if let Err(e) = self.mgr.watch(&units, unit_tx).await {
            self.set_error(Some(format!("cannot follow unit changes: {e}")));
        }
        {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(u) = unit_rx.recv().await {
                    if tx.send(Event::Unit(u)).is_err() {
                        break;
                    }
                }
            });
        }
        self.spawn_checks(&tx);
        for i in 0..self.svcs.len() {
            self.refresh(i).await;
            self.svcs[i].known_invocation = self.svcs[i].status.invocation_id.clone();
        }
        publish(self.status(*meetings.borrow()));
        // A safety net under the signals: states are re-read from the
        // proxies' caches every few seconds.
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(Event::Unit(u)) => {
                        if let Some(i) = self.recipe.services.iter().position(|s| s.unit == u) {
                            self.refresh(i).await;
                        }
                    }
                    Some(Event::Check(t, o)) => self.record_check(t, o),
                    Some(Event::PlanDone { names, first_counted, result }) => self.plan_done(names, first_counted, result).await,
                    None => break,
                },
                cmd = commands.recv() => match cmd {
                    Some(c) => self.command(c, &tx).await,
                    None => break,
                },
                _ = tick.tick() => {
                    for i in 0..self.svcs.len() {
                        self.refresh(i).await;
                    }
                }
            }
            let meetings_running = *meetings.borrow();
            self.evaluate(meetings_running, &tx).await;
            publish(self.status(meetings_running));
        }
    }

    fn set_error(&mut self, e: Option<String>) {
        if e != self.error {
            match &e {
                Some(msg) => log::error!("service manager: {msg}"),
                None => log::info!("service manager reachable again"),
            }
        }
        self.error = e;
    }

    async fn refresh(&mut self, i: usize) {
        let unit = self.recipe.services[i].unit.clone();
        match self.mgr.status(&unit).await {
            Ok(st) => {
                self.svcs[i].status = st;
                self.set_error(None);
            }
            Err(e) => self.set_error(Some(e.to_string())),
        }
    }

    fn spawn_checks(&self, tx: &mpsc::UnboundedSender<Event>) {
        let mut all: Vec<(Target, CheckSpec)> = Vec::new();
        for (i, s) in self.recipe.services.iter().enumerate() {
            for (j, c) in s.checks.iter().enumerate() {
                all.push((Target::Service(i, j), c.clone()));
            }
        }
        for (j, c) in self.recipe.checks.iter().enumerate() {
            all.push((Target::Node(j), c.clone()));
        }
        for (target, spec) in all {
            let tx = tx.clone();
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(spec.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let o = checks::run(&spec.kind, spec.timeout, &ctx).await;
                    if tx.send(Event::Check(target, o)).is_err() {
                        break;
                    }
                }
            });
        }
    }

    fn record_check(&mut self, t: Target, o: Outcome) {
        let (state, spec, owner) = match t {
            Target::Service(i, j) => (
                &mut self.svcs[i].checks[j],
                &self.recipe.services[i].checks[j],
                self.recipe.services[i].name.as_str(),
            ),
            Target::Node(j) => (&mut self.node_checks[j], &self.recipe.checks[j], "node"),
        };
        if o.is_ok() {
            if state.consecutive >= spec.failures {
                log::info!("{owner}: check {} passes again", spec.kind.describe());
            }
            state.consecutive = 0;
        } else {
            state.consecutive = state.consecutive.saturating_add(1);
            if state.consecutive == spec.failures {
                log::warn!(
                    "{owner}: check {} failed {} times in a row: {}",
                    spec.kind.describe(),
                    spec.failures,
                    o.detail
                );
            }
        }
        state.last = Some(o);
    }

    /// The first restart-worthy check over its threshold.
    fn failed_check(&self, i: usize) -> Option<String> {
        let spec = &self.recipe.services[i];
        spec.checks.iter().zip(&self.svcs[i].checks).find_map(|(c, st)| {
            (c.kind.restarts() && st.consecutive >= c.failures).then(|| {
                let detail = st.last.as_ref().map(|o| o.detail.as_str()).unwrap_or("");
                format!("{}: {detail}", c.kind.describe())
            })
        })
    }

    async fn evaluate(&mut self, meetings_running: bool, tx: &mpsc::UnboundedSender<Event>) {
        if self.error.is_some() {
            return;
        }
        let now = self.now();
        for i in 0..self.svcs.len() {
            if self.svcs[i].busy {
                continue;
            }
            let spec = self.recipe.services[i].clone();
            // Started by someone else: what depends on it must follow.
            let inv = self.svcs[i].status.invocation_id.clone();
            let active = self.svcs[i].status.active_state == "active";
            if active && !inv.is_empty() && inv != self.svcs[i].known_invocation {
                let had = !self.svcs[i].known_invocation.is_empty();
                self.svcs[i].known_invocation = inv;
                let dependents: Vec<String> = self.recipe.restart_order(&spec.name).into_iter().skip(1).collect();
                if had && !dependents.is_empty() {
                    log::warn!(
                        "{} was restarted outside the supervisor; restarting what depends on it: {}",
                        spec.name,
                        dependents.join(", ")
                    );
                    self.start_plan(dependents, false, tx);
                    continue;
                }
            }
            let obs = Observation {
                unit: if self.svcs[i].status.load_state == "loaded" {
                    UnitActivity::from_systemd(&self.svcs[i].status.active_state)
                } else {
                    UnitActivity::Unknown
                },
                failed_check: self.failed_check(i),
                meetings_running,
            };
            let d = policy::decide(&self.recipe.policy, spec.core, &self.svcs[i].history, &obs, now);
            match &d {
                Decision::Restart { reason } => {
                    log::warn!("restarting {} ({}): {reason}", spec.name, spec.unit);
                    policy::record_restart(&self.recipe.policy, &mut self.svcs[i].history, reason, now);
                    let order = self.recipe.restart_order(&spec.name);
                    self.start_plan(order, true, tx);
                }
                Decision::GiveUp { reason } => {
                    log::error!("giving up on {} ({}): {reason}", spec.name, spec.unit);
                    self.svcs[i].history.gave_up = Some(reason.clone());
                    self.svcs[i].history.last_failure = Some((now, reason.clone()));
                }
                Decision::Defer { reason } if !matches!(self.svcs[i].decision, Some(Decision::Defer { .. })) => {
                    log::warn!("{}: {reason}", spec.name);
                }
                _ => {}
            }
            self.svcs[i].decision = Some(d);
        }
    }

    /// Restarts `names` one after the other, each after the previous is
    /// active again, in a task of its own.
    /// `first_counted`: the first service's restart was already counted
    /// when it was decided.
    fn start_plan(&mut self, names: Vec<String>, first_counted: bool, tx: &mpsc::UnboundedSender<Event>) {
        for n in &names {
            if let Some(i) = self.recipe.services.iter().position(|s| &s.name == n) {
                self.svcs[i].busy = true;
            }
        }
        let mgr = self.mgr.clone();
        let recipe = self.recipe.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let result = run_plan(&*mgr, &recipe, &names).await;
            let _ = tx.send(Event::PlanDone {
                names,
                first_counted,
                result,
            });
        });
    }

    async fn plan_done(&mut self, names: Vec<String>, first_counted: bool, result: Result<(), String>) {
        let now = self.now();
        if let Err(e) = &result {
            log::error!("restart of {} did not complete: {e}", names.join(", "));
        }
        for (k, n) in names.iter().enumerate() {
            let Some(i) = self.recipe.services.iter().position(|s| &s.name == n) else {
                continue;
            };
            self.refresh(i).await;
            let s = &mut self.svcs[i];
            s.busy = false;
            s.known_invocation = s.status.invocation_id.clone();
            // Checks start over: a restarted service gets a fresh chance.
            for c in &mut s.checks {
                c.consecutive = 0;
            }
            // The first of a plan was usually counted when it was decided;
            // the ones after it were restarted because of it.
            if k > 0 || !first_counted {
                s.history.restarts_total += 1;
                let cause = if first_counted {
                    names[0].clone()
                } else {
                    "a dependency".to_string()
                };
                s.history.last_failure = Some((now, format!("restarted after {cause}")));
            }
        }
    }

    async fn command(&mut self, c: Command, tx: &mpsc::UnboundedSender<Event>) {
        let known = || {
            self.recipe
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match c {
            Command::Restart { name, reply } => {
                let Some(i) = self.recipe.services.iter().position(|s| s.name == name) else {
                    let _ = reply.send(Err(CommandError::UnknownService { name, known: known() }));
                    return;
                };
                if self.svcs[i].busy {
                    let _ = reply.send(Err(CommandError::Busy(name)));
                    return;
                }
                let order = self.recipe.restart_order(&name);
                log::info!("operator restart of {name}: {}", order.join(" then "));
                self.svcs[i].history.restarts_total += 1;
                self.svcs[i].history.stopped_by_operator = false;
                self.start_plan(order.clone(), true, tx);
                let _ = reply.send(Ok(format!("restarting {}", order.join(", then "))));
            }
            Command::Reset { name, reply } => {
                let Some(i) = self.recipe.services.iter().position(|s| s.name == name) else {
                    let _ = reply.send(Err(CommandError::UnknownService { name, known: known() }));
                    return;
                };
                log::info!("operator reset of {name}");
                policy::reset(&mut self.svcs[i].history);
                for c in &mut self.svcs[i].checks {
                    c.consecutive = 0;
                }
                self.svcs[i].decision = None;
                let unit = self.recipe.services[i].unit.clone();
                let r = self.mgr.reset_failed(&unit).await;
                let _ = reply.send(match r {
                    Ok(()) => Ok(format!(
                        "{name} reset: the supervisor will restart it again when needed"
                    )),
                    Err(e) => Err(CommandError::Failed(format!(
                        "{name} reset, but clearing systemd's failed state failed: {e}"
                    ))),
                });
            }
        }
    }

    fn status(&mut self, meetings_running: bool) -> ServicesStatus {
        let _ = meetings_running;
        let mut alerts: Vec<(String, Severity, String)> = Vec::new();
        let mut services = Vec::new();
        for (i, spec) in self.recipe.services.iter().enumerate() {
            let s = &self.svcs[i];
            let failed = self.failed_check(i);
            let active = s.status.active_state == "active";
            let (state, detail) = if s.busy {
                ("restarting", None)
            } else {
                match &s.decision {
                    Some(Decision::GivenUp { reason } | Decision::GiveUp { reason }) => {
                        ("failed", Some(reason.clone()))
                    }
                    Some(Decision::Wait { reason, .. }) => {
                        ("waiting", Some(format!("{reason}; next restart after backoff")))
                    }
                    Some(Decision::Defer { reason }) => ("deferred", Some(reason.clone())),
                    Some(Decision::Restart { reason }) => ("restarting", Some(reason.clone())),
                    _ if s.history.stopped_by_operator => ("stopped", None),
                    _ if s.status.load_state != "loaded" && !s.status.load_state.is_empty() => {
                        ("unknown", Some(format!("unit {}", s.status.load_state)))
                    }
                    _ => ("ok", None),
                }
            };
            match state {
                "failed" => alerts.push((
                    format!("service:{}", spec.name),
                    Severity::Critical,
                    format!("service {} failed: {}", spec.name, detail.clone().unwrap_or_default()),
                )),
                "waiting" | "deferred" | "restarting" => alerts.push((
                    format!("service:{}", spec.name),
                    Severity::Warning,
                    format!(
                        "service {}: {}",
                        spec.name,
                        detail.clone().unwrap_or_else(|| "restarting".into())
                    ),
                )),
                _ => {}
            }
            let checks: Vec<CheckView> = spec
                .checks
                .iter()
                .zip(&s.checks)
                .map(|(c, st)| {
                    if !c.kind.restarts() {
                        if let Some(o) = st.last.as_ref().filter(|o| !o.is_ok()) {
                            alerts.push((format!("check:{}", c.kind.describe()), o.severity, o.detail.clone()));
                        }
                    }
                    check_view(c, st)
                })
                .collect();
            services.push(ServiceView {
                name: spec.name.clone(),
                unit: spec.unit.clone(),
                core: spec.core,
                load_state: s.status.load_state.clone(),
                active_state: s.status.active_state.clone(),
                sub_state: s.status.sub_state.clone(),
                up: active && failed.is_none(),
                state: state.to_string(),
                detail,
                restarts: s.history.restarts_total,
                systemd_restarts: s.status.n_restarts,
                last_failure: s.history.last_failure.as_ref().map(|(t, r)| Failure {
                    at: self.mono_to_unix(*t),
                    reason: r.clone(),
                }),
                checks,
            });
        }
        let node: Vec<CheckView> = self
            .recipe
            .checks
            .iter()
            .zip(&self.node_checks)
            .map(|(c, st)| {
                if let Some(o) = st.last.as_ref().filter(|o| !o.is_ok() && st.consecutive >= c.failures) {
                    alerts.push((format!("check:{}", c.kind.describe()), o.severity, o.detail.clone()));
                }
                check_view(c, st)
            })
            .collect();
        if let Some(e) = &self.error {
            alerts.push((
                "service-manager".into(),
                Severity::Critical,
                format!("cannot manage services: {e}"),
            ));
        }
        let now = unix_now();
        self.alert_since.retain(|id, _| alerts.iter().any(|(a, _, _)| a == id));
        let alerts = alerts
            .into_iter()
            .map(|(id, severity, reason)| {
                let since = *self.alert_since.entry(id.clone()).or_insert(now);
                Alert {
                    id,
                    severity,
                    reason,
                    since: Some(since),
                    value: None,
                    warn: None,
                    critical: None,
                }
            })
            .collect();
        ServicesStatus {
            recipe: self.recipe.name.clone(),
            services,
            checks: node,
            alerts,
            error: self.error.clone(),
        }
    }
}

fn check_view(c: &CheckSpec, st: &CheckState) -> CheckView {
    CheckView {
        check: c.kind.describe(),
        ok: st.last.as_ref().map(Outcome::is_ok),
        detail: st.last.as_ref().map(|o| o.detail.clone()).unwrap_or_default(),
        consecutive_failures: st.consecutive,
        threshold: c.failures,
    }
}

/// How long a restarted unit must stay inactive before that counts as its
/// outcome (and not a state the signals have not caught up with).
const INACTIVE_IS_FINAL: Duration = Duration::from_secs(2);

/// Restarts each service in order; each must be active before the next.
async fn run_plan<M: ServiceManager>(mgr: &M, recipe: &Recipe, names: &[String]) -> Result<(), String> {
    let timeout = recipe.policy.start_timeout;
    for n in names {
        let unit = &recipe.service(n).ok_or_else(|| format!("unknown service {n}"))?.unit;
        // A failed unit must have its failed state cleared, or systemd may
        // refuse to start it again (start rate limit).
        let _ = mgr.reset_failed(unit).await;
        // Every start gets a new invocation ID; waiting for one tells this
        // restart's outcome apart from the state it replaces (the property
        // cache may still show the old one for a moment).
        let before = mgr.status(unit).await.map(|s| s.invocation_id).unwrap_or_default();
        mgr.restart(unit).await.map_err(|e| format!("restart {unit}: {e}"))?;
        let deadline = Instant::now() + timeout;
        // The new invocation id can arrive (by signal) before the state
        // leaves the "inactive" that reset-failed left: only an inactive
        // state that lasts is an answer.
        let mut inactive_since: Option<Instant> = None;
        loop {
            let st = mgr.status(unit).await.map_err(|e| e.to_string())?;
            let new = !st.invocation_id.is_empty() && st.invocation_id != before;
            match st.active_state.as_str() {
                "active" if new => break,
                "failed" if new => return Err(format!("{unit} failed after restart")),
                "inactive" if new => {
                    if inactive_since.get_or_insert_with(Instant::now).elapsed() >= INACTIVE_IS_FINAL {
                        return Err(format!("{unit} is inactive after restart"));
                    }
                }
                _ => inactive_since = None,
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{unit} not active within {}",
                    humantime::format_duration(timeout)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        log::info!("{n} ({unit}) restarted and active");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systemd::FakeManager;

    const RECIPE: &str = r#"
name = "t"
description = "t"
[policy]
backoff_initial = "1s"
backoff_max = "4s"
crash_loop_restarts = 3
crash_loop_window = "1m"
start_timeout = "2s"
[[service]]
name = "freeswitch"
unit = "freeswitch.service"
core = true
[[service]]
name = "fsesl"
unit = "fsesl.service"
core = true
requires = ["freeswitch"]
[[service]]
name = "crashy"
unit = "crashy.service"
"#;

    struct Harness {
        fake: FakeManager,
        cmd: mpsc::Sender<Command>,
        status: watch::Receiver<ServicesStatus>,
        _meetings: watch::Sender<bool>,
    }

    fn start() -> Harness {
        let recipe = Recipe::parse(RECIPE).unwrap();
        let fake = FakeManager::with_units(&["freeswitch.service", "fsesl.service", "crashy.service"]);
        let rt = Runtime::new(recipe, fake.clone(), Context::new(None));
        let (cmd, cmd_rx) = mpsc::channel(4);
        let (m_tx, m_rx) = watch::channel(false);
        let (s_tx, status) = watch::channel(ServicesStatus::default());
        tokio::spawn(rt.run(cmd_rx, m_rx, move |s| {
            let _ = s_tx.send(s);
        }));
        Harness {
            fake,
            cmd,
            status,
            _meetings: m_tx,
        }
    }

    async fn wait_until(h: &mut Harness, what: &str, f: impl Fn(&ServicesStatus) -> bool) -> ServicesStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let s = h.status.borrow_and_update();
                if f(&s) {
                    return s.clone();
                }
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}: {:#?}", *h.status.borrow());
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), h.status.changed()).await;
        }
    }

    fn svc<'a>(s: &'a ServicesStatus, n: &str) -> &'a ServiceView {
        s.services.iter().find(|v| v.name == n).unwrap()
    }

    #[tokio::test]
    async fn dead_unit_is_restarted_with_its_dependents_after_it() {
        let mut h = start();
        wait_until(&mut h, "all up", |s| {
            s.services.len() == 3 && s.services.iter().all(|v| v.up)
        })
        .await;
        h.fake.set("freeswitch.service", "failed", "failed");
        let s = wait_until(&mut h, "both restarted", |s| {
            svc(s, "fsesl").restarts == 1 && svc(s, "freeswitch").up
        })
        .await;
        assert_eq!(svc(&s, "freeswitch").restarts, 1);
        let log = h.fake.log();
        let fs = log.iter().position(|l| l == "restart freeswitch.service").unwrap();
        let esl = log.iter().position(|l| l == "restart fsesl.service").unwrap();
        assert!(fs < esl, "freeswitch first: {log:?}");
        assert_eq!(
            svc(&s, "fsesl").last_failure.as_ref().unwrap().reason,
            "restarted after freeswitch"
        );
    }

    #[tokio::test]
    async fn crash_loop_gives_up_until_reset() {
        let mut h = start();
        wait_until(&mut h, "all up", |s| {
            s.services.len() == 3 && s.services.iter().all(|v| v.up)
        })
        .await;
        h.fake.crash_on_start("crashy.service");
        h.fake.set("crashy.service", "failed", "failed");
        let s = wait_until(&mut h, "gave up", |s| svc(s, "crashy").state == "failed").await;
        assert_eq!(svc(&s, "crashy").restarts, 3);
        let a = s.alerts.iter().find(|a| a.id == "service:crashy").unwrap();
        assert_eq!(a.severity, Severity::Critical);
        assert!(a.reason.contains("gave up after 3 restarts within 1m"), "{}", a.reason);
        let restarts = h.fake.log().iter().filter(|l| *l == "restart crashy.service").count();
        assert_eq!(restarts, 3);

        let (tx, rx) = oneshot::channel();
        h.cmd
            .send(Command::Reset {
                name: "crashy".into(),
                reply: tx,
            })
            .await
            .unwrap();
        assert!(rx.await.unwrap().unwrap().starts_with("crashy reset"));
        // After the reset it tries again (and will give up again).
        wait_until(&mut h, "tries again", |s| svc(s, "crashy").restarts > 3).await;

        let (tx, rx) = oneshot::channel();
        h.cmd
            .send(Command::Restart {
                name: "nope".into(),
                reply: tx,
            })
            .await
            .unwrap();
        let e = rx.await.unwrap().unwrap_err();
        assert!(matches!(e, CommandError::UnknownService { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "no service named \"nope\"; the recipe has: freeswitch, fsesl, crashy"
        );
    }

    #[tokio::test]
    async fn outside_restart_of_a_dependency_restarts_dependents() {
        let mut h = start();
        wait_until(&mut h, "all up", |s| {
            s.services.len() == 3 && s.services.iter().all(|v| v.up)
        })
        .await;
        // systemd restarted freeswitch on its own: a new invocation.
        h.fake.set("freeswitch.service", "failed", "failed");
        h.fake.set("freeswitch.service", "activating", "auto-restart");
        h.fake.set("freeswitch.service", "active", "running");
        let s = wait_until(&mut h, "fsesl restarted", |s| svc(s, "fsesl").restarts == 1).await;
        assert_eq!(svc(&s, "freeswitch").restarts, 0, "not restarted by us");
        assert!(!h.fake.log().contains(&"restart freeswitch.service".to_string()));
    }

    #[tokio::test]
    async fn operator_restart_runs_the_chain() {
        let mut h = start();
        wait_until(&mut h, "all up", |s| {
            s.services.len() == 3 && s.services.iter().all(|v| v.up)
        })
        .await;
        let (tx, rx) = oneshot::channel();
        h.cmd
            .send(Command::Restart {
                name: "freeswitch".into(),
                reply: tx,
            })
            .await
            .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), "restarting freeswitch, then fsesl");
        wait_until(&mut h, "chain done", |s| {
            svc(s, "fsesl").restarts == 1 && svc(s, "freeswitch").state == "ok"
        })
        .await;
        assert_eq!(
            h.fake
                .log()
                .iter()
                .filter(|l| l.starts_with("restart"))
                .cloned()
                .collect::<Vec<_>>(),
            ["restart freeswitch.service", "restart fsesl.service"]
        );
    }
}
