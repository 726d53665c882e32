//! `appliance run`: the supervisor in the foreground.
//!
//! Order matters: everything that can fail because of the box (state dir,
//! certificate, ports) is set up before systemd hears READY=1, and the
//! first sample is taken before the servers answer, so the first scrape
//! already has data.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::BufWriter;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use appliance_monitor::collector::Collector;
use appliance_monitor::{Alerts, History, Roots, Severity, Snapshot, StatVfs};

use crate::config::Config;
use crate::control;
use crate::state::{Identity, Live, Shared, lock};

const HISTORY_FILE: &str = "history.bin";
const HISTORY_MAX_SERIES: usize = 256;

pub fn run(cfg: Config) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let started = Instant::now();
    let started_unix = unix_now();
    let state_dir = cfg.node.state_dir.clone();
    fs::create_dir_all(&state_dir).with_context(|| format!("node.state_dir {}", state_dir.display()))?;
    // Only the service's user and group may look inside: the control
    // socket's access control rests on this.
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o750))
        .with_context(|| format!("node.state_dir {}", state_dir.display()))?;

    let (hw, detection) = cfg.detect_profile().context("hardware profile")?;
    let hw = hw.clone();
    log::info!("hardware profile {}: {}", hw.name, detection.reason);

    let history = load_history(&state_dir.join(HISTORY_FILE));

    let node = cfg.node_name();
    let operator_cert = cfg.admin.tls_cert.as_deref().zip(cfg.admin.tls_key.as_deref());
    let mut names = vec![
        node.clone(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    names.dedup();
    let cert = appliance_admin::tls::ensure(&state_dir.join("tls"), operator_cert, &names, SystemTime::now())
        .context("admin TLS certificate")?;
    log::info!("admin certificate SHA-256 fingerprint {}", cert.fingerprint_sha256);

    let admin_listener = std::net::TcpListener::bind(cfg.admin.listen)
        .with_context(|| format!("admin.listen {}: cannot listen", cfg.admin.listen))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let socket_path = cfg.control_socket();
    let control_listener = runtime.block_on(async { control::bind(&socket_path) })?;

    let auth = appliance_admin::auth::Auth::open(&state_dir.join("admin")).context("admin accounts")?;
    if auth.setup_pending() {
        // The code itself is shown on the console only, never logged.
        log::info!("admin page setup is pending: use the setup code shown by `appliance console`");
    }
    let audit = appliance_admin::audit::AuditLog::open(&state_dir.join("admin"));
    let members = Arc::new(crate::members::Store::open(&state_dir).context("member organisations")?);
    let gateway_listener = match cfg.gateway.listen {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("gateway: cannot listen on {addr} ([gateway] listen)"))?,
        ),
        None => None,
    };
    let tls = runtime
        .block_on(appliance_admin::tls_config(&cert))
        .context("admin TLS certificate")?;
    let version = crate::update::running_version(&cfg).to_string();
    let (reports, reports_task) = crate::reports::task(
        &state_dir,
        &version,
        cfg.report_settings(),
        Arc::new(crate::reports::SystemClock),
    );

    let mut collector = Collector::new(
        Roots {
            sys: cfg.monitor.sysfs_root.clone(),
            proc: cfg.monitor.procfs_root.clone(),
        },
        cfg.monitor.filesystems.clone(),
        Box::new(StatVfs),
    );
    let (command_tx, command_rx) = tokio::sync::mpsc::channel(8);
    let (update_tx, update_rx) = tokio::sync::mpsc::channel(4);
    let shared = Arc::new(Shared {
        id: Identity {
            node,
            version,
            started_unix,
            started,
            profile: hw,
            detection,
            timezone: cfg.node.timezone_name(),
            limits: cfg.alerts.clone(),
        },
        live: std::sync::Mutex::new(Live::default()),
        history: std::sync::Mutex::new(history),
        stall_after: cfg.monitor.interval * 5 + Duration::from_secs(10),
        services: std::sync::Mutex::new(None),
        service_commands: cfg.recipe.is_some().then_some(command_tx),
        // Configured but not asked yet: the light says so until the first poll.
        bbb: std::sync::Mutex::new(cfg.bbb.is_some().then(appliance_api::BbbStatus::default)),
        config_path: cfg.path.clone(),
        state_dir: state_dir.clone(),
        cert: std::sync::Mutex::new(cert),
        tls: std::sync::Mutex::new(Some(tls)),
        auth: Arc::new(std::sync::Mutex::new(auth)),
        audit: Arc::new(audit),
        admin_port: cfg.admin.listen,
        reports,
        update: std::sync::Mutex::new(None),
        update_requests: cfg.update.root.is_some().then_some(update_tx),
        members,
    });

    let mut sampler = Sampler::new(shared.clone(), cfg.clone());
    sampler.round(&mut collector);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let sampler_thread = std::thread::Builder::new()
        .name("sampler".into())
        .spawn(move || sampler.run(collector, stop_rx))
        .context("starting the sampler thread")?;

    let (restart_tx, restart_rx) = tokio::sync::mpsc::channel(1);
    let background = Background {
        cfg: cfg.clone(),
        restart: restart_tx,
        update_requests: update_rx,
        commands: command_rx,
        reports: reports_task,
    };
    let result = runtime.block_on(serve(
        shared.clone(),
        admin_listener,
        gateway_listener,
        control_listener,
        background,
        restart_rx,
    ));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    drop(stop_tx);
    let _ = sampler_thread.join();
    let _ = fs::remove_file(&socket_path);
    runtime.shutdown_timeout(Duration::from_secs(5));
    log::info!("stopped");
    result
}

/// What runs beside the servers: the reports task, the BBB poller and the
/// service runtime.
struct Background {
    cfg: Config,
    /// The update task asks for a restart (into another version) here.
    restart: tokio::sync::mpsc::Sender<String>,
    update_requests: tokio::sync::mpsc::Receiver<crate::update::Request>,
    commands: tokio::sync::mpsc::Receiver<appliance_services::runtime::Command>,
    reports: crate::reports::Task,
}

impl Background {
    fn spawn(self, shared: Arc<Shared>) {
        tokio::spawn(self.reports.run());
        tokio::spawn(crate::update::task(
            self.cfg.clone(),
            shared.clone(),
            self.restart.clone(),
            self.update_requests,
        ));
        let (meetings_tx, meetings_rx) = tokio::sync::watch::channel(false);
        if let Some(b) = self.cfg.bbb.clone() {
            tokio::spawn(crate::bbb::poll(b, shared.clone(), meetings_tx));
        }
        if let Some(recipe) = self.cfg.recipe.clone() {
            let target = self.cfg.bbb.as_ref().and_then(|b| {
                b.secret().ok().map(|secret| appliance_services::checks::BbbTarget {
                    url: b.url.clone(),
                    secret,
                })
            });
            tokio::spawn(run_services(recipe, target, shared, self.commands, meetings_rx));
        }
    }
}

/// Connects to systemd (retrying while D-Bus is not there yet) and runs
/// the service runtime.
async fn run_services(
    recipe: appliance_services::Recipe,
    bbb: Option<appliance_services::checks::BbbTarget>,
    shared: Arc<Shared>,
    commands: tokio::sync::mpsc::Receiver<appliance_services::runtime::Command>,
    meetings: tokio::sync::watch::Receiver<bool>,
) {
    use appliance_services::runtime::{Runtime, ServicesStatus};
    let mut commands = commands;
    let mut logged = false;
    let mgr = loop {
        match appliance_services::systemd::Systemd::connect().await {
            Ok(m) => break m,
            Err(e) => {
                if !logged {
                    log::error!("cannot reach systemd over D-Bus ({e}); retrying every 5 s");
                    logged = true;
                }
                let alert = appliance_monitor::Alert {
                    id: "service-manager".into(),
                    severity: Severity::Critical,
                    reason: format!("cannot manage services: {e}"),
                    since: None,
                    value: None,
                    warn: None,
                    critical: None,
                };
                // The recipe's services are still listed, in an unknown state,
                // so the pages show what is not being watched.
                let services = recipe
                    .services
                    .iter()
                    .map(|x| appliance_services::runtime::ServiceView {
                        name: x.name.clone(),
                        unit: x.unit.clone(),
                        core: x.core,
                        load_state: "unknown".into(),
                        active_state: "unknown".into(),
                        sub_state: "unknown".into(),
                        up: false,
                        state: "unknown".into(),
                        detail: Some("systemd cannot be reached".into()),
                        restarts: 0,
                        systemd_restarts: 0,
                        last_failure: None,
                        checks: vec![],
                    })
                    .collect();
                *lock(&shared.services) = Some(ServicesStatus {
                    recipe: recipe.name.clone(),
                    services,
                    error: Some(e.to_string()),
                    alerts: vec![alert],
                    ..ServicesStatus::default()
                });
                // Operators get an answer while we wait, not a hang.
                let retry = tokio::time::sleep(Duration::from_secs(5));
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        _ = &mut retry => break,
                        cmd = commands.recv() => match cmd {
                            Some(
                                appliance_services::runtime::Command::Restart { reply, .. }
                                | appliance_services::runtime::Command::Reset { reply, .. },
                            ) => {
                                let _ = reply.send(Err(appliance_services::runtime::CommandError::NotRunning(e.to_string())));
                            }
                            None => return,
                        },
                    }
                }
            }
        }
    };
    log::info!(
        "managing the {} services of recipe {} through systemd",
        recipe.services.len(),
        recipe.name
    );
    let ctx = appliance_services::checks::Context::new(bbb);
    let publish_to = shared.clone();
    Runtime::new(recipe, mgr, ctx)
        .run(commands, meetings, move |st| {
            *lock(&publish_to.services) = Some(st);
        })
        .await;
}

async fn serve(
    shared: Arc<Shared>,
    admin_listener: std::net::TcpListener,
    gateway_listener: Option<std::net::TcpListener>,
    control_listener: tokio::net::UnixListener,
    background: Background,
    mut restart: tokio::sync::mpsc::Receiver<String>,
) -> Result<()> {
    let background_bbb = background.cfg.bbb.clone();
    background.spawn(shared.clone());
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let addr = admin_listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let admin = appliance_admin::router(appliance_admin::AdminState::new(
        Arc::new(crate::backend::Backend(shared.clone())),
        shared.auth.clone(),
        shared.audit.clone(),
    ));
    let tls = lock(&shared.tls).clone().expect("TLS config set at start");
    let admin_task = tokio::spawn({
        let rx = shutdown_rx.clone();
        async move { appliance_admin::serve(admin_listener, tls, admin, wait(rx)).await }
    });
    // Expired sessions and old failure counts are dropped now and then.
    tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut t = tokio::time::interval(Duration::from_secs(300));
            loop {
                t.tick().await;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                lock(&shared.auth).sweep(now);
            }
        }
    });
    let control_task = tokio::spawn({
        let rx = shutdown_rx.clone();
        let app = control::router(shared.clone());
        async move {
            axum::serve(control_listener, app)
                .with_graceful_shutdown(wait(rx))
                .await
        }
    });
    tokio::spawn(watchdog(shared.clone()));
    if let (Some(l), Some(b)) = (gateway_listener, background_bbb.as_ref()) {
        let secret = b
            .secret()
            .map_err(|e| anyhow::anyhow!("gateway: the BBB secret: {e}"))?;
        let g = crate::gateway::Gateway::new(shared.members.clone(), &b.url, secret, &b.member_key);
        l.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(l)?;
        log::info!(
            "BBB API gateway on http://{}/bigbluebutton/api ({} members)",
            l.local_addr()?,
            shared.members.current().members.len()
        );
        let rx = shutdown_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(l, crate::gateway::router(Arc::new(g)))
                .with_graceful_shutdown(wait(rx))
                .await
            {
                log::error!("gateway stopped: {e}");
            }
        });
    }

    log::info!("admin page on https://{addr}/ ; control socket ready");
    let summary = shared.status().health.summary;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&summary)]);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut admin_task = admin_task;
    let outcome = tokio::select! {
        _ = term.recv() => { log::info!("SIGTERM: stopping"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { log::info!("SIGINT: stopping"); Ok(()) }
        // A non-zero exit, so that systemd (Restart=on-failure) starts
        // whatever releases/current now names.
        Some(why) = restart.recv() => Err(anyhow::anyhow!("restarting: {why}")),
        r = &mut admin_task => match r {
            Ok(Ok(())) => Err(anyhow::anyhow!("admin server stopped unexpectedly")),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(anyhow::anyhow!("admin server task failed: {e}")),
        },
    };
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(6), control_task).await;
    outcome
}

/// Pings systemd's watchdog only while the sampler keeps going, so a hung
/// supervisor is restarted instead of showing stale figures.
async fn watchdog(shared: Arc<Shared>) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let mut tick = tokio::time::interval(timeout / 2);
    let mut warned = false;
    loop {
        tick.tick().await;
        if shared.alive() {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            warned = false;
        } else if !warned {
            log::error!("sampler stalled: withholding the watchdog ping");
            warned = true;
        }
    }
}

/// The sampling loop's own state, kept across rounds.
struct Sampler {
    shared: Arc<Shared>,
    cfg: Config,
    alerts: Alerts,
    last_alerts: BTreeMap<String, Severity>,
    known_problems: BTreeSet<String>,
    last_summary: String,
    last_save: Instant,
    samples: u64,
}

impl Sampler {
    fn new(shared: Arc<Shared>, cfg: Config) -> Sampler {
        Sampler {
            shared,
            cfg,
            alerts: Alerts::default(),
            last_alerts: BTreeMap::new(),
            known_problems: BTreeSet::new(),
            last_summary: String::new(),
            last_save: Instant::now(),
            samples: 0,
        }
    }

    fn run(mut self, mut collector: Collector, stop: mpsc::Receiver<()>) {
        let interval = self.cfg.monitor.interval;
        let mut next = Instant::now() + interval;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match stop.recv_timeout(wait) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => break,
            }
            self.round(&mut collector);
            next += interval;
            // After a stall (suspend, overload) skip missed rounds instead
            // of sampling in a burst.
            let now = Instant::now();
            if next < now {
                next = now + interval;
            }
            if self.last_save.elapsed() >= self.cfg.monitor.history_save_interval {
                self.save_history();
            }
        }
        self.save_history();
    }

    fn round(&mut self, collector: &mut Collector) {
        let mono = self.shared.id.started.elapsed().as_secs_f64();
        let snap = collector.sample(mono, unix_now());
        self.alerts
            .evaluate(&snap, &self.shared.id.profile, &self.cfg.alerts, mono);
        let active = self.alerts.active();

        let now_alerts: BTreeMap<String, Severity> = active.iter().map(|a| (a.id.clone(), a.severity)).collect();
        for a in &active {
            if self.last_alerts.get(&a.id) != Some(&a.severity) {
                match a.severity {
                    Severity::Critical => log::error!("alert {}: {}", a.id, a.reason),
                    _ => log::warn!("alert {}: {}", a.id, a.reason),
                }
            }
        }
        for id in self.last_alerts.keys().filter(|id| !now_alerts.contains_key(*id)) {
            log::info!("alert {id} cleared");
        }
        self.last_alerts = now_alerts;
        self.log_problems(&snap);
        record_history(&mut lock(&self.shared.history), &snap);
        let snap = Arc::new(snap);
        {
            let mut live = lock(&self.shared.live);
            live.snapshot = Some(snap.clone());
            live.alerts = active;
            live.last_tick = Some(Instant::now());
        }
        // systemd's STATUS= and the reports carry the whole node's light,
        // the same one the admin page shows.
        let status = self.shared.status();
        let summary = status.health.summary.clone();
        let services = status.services.as_ref().map(|sv| {
            format!(
                "{} of {} services up",
                sv.services.iter().filter(|x| x.up).count(),
                sv.services.len()
            )
        });
        // The OS state changes under the supervisor (boot-check, the root
        // update unit, wait-healthy): read again every ten samples.
        self.samples += 1;
        if self.samples % 10 == 1
            && let Some(u) = lock(&self.shared.update).as_mut()
        {
            let available = u.os.as_ref().and_then(|o| o.available.clone());
            u.os = crate::os_update::view(&self.cfg).map(|mut o| {
                o.available = available;
                o
            });
        }
        let update = lock(&self.shared.update)
            .as_ref()
            .map(|u| appliance_usage::UpdateReport {
                channel: u.channel.clone(),
                position: u.position,
                probation: u.probation.clone(),
                last_result: u.last_result.as_ref().map(|r| {
                    let mut s = format!("{} {}", r.version, r.result);
                    if !r.reason.is_empty() {
                        s.push_str(": ");
                        s.push_str(&r.reason);
                    }
                    s
                }),
                error: u.error.clone(),
                os_version: u
                    .os
                    .as_ref()
                    .map(|o| format!("{} (slot {})", o.running, o.slot.to_uppercase())),
                os_pending: u.os.as_ref().and_then(|o| o.pending.clone()),
                os_last_result: u.os.as_ref().and_then(|o| o.last_result.as_ref()).map(|r| {
                    let mut s = format!("{} {}", r.version, r.result);
                    if !r.reason.is_empty() {
                        s.push_str(": ");
                        s.push_str(&r.reason);
                    }
                    s
                }),
            });
        let mut sample = report_sample(
            &snap,
            &self.shared.id.profile.uplink.interface,
            summary.clone(),
            services.unwrap_or_default(),
        );
        sample.update = update;
        let mut members: Vec<String> = self
            .shared
            .members
            .current()
            .members
            .iter()
            .map(|m| m.slug.clone())
            .collect();
        members.sort();
        sample.members = members;
        self.shared.reports.sample(sample);
        if summary != self.last_summary {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&summary)]);
            self.last_summary = summary;
        }
    }

    /// Logs each unreadable or implausible file once, not every second.
    fn log_problems(&mut self, snap: &Snapshot) {
        let now: BTreeSet<String> = snap
            .problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.what))
            .collect();
        for p in now.difference(&self.known_problems) {
            log::warn!("sensor problem: {p}");
        }
        self.known_problems = now;
    }

    fn save_history(&mut self) {
        self.last_save = Instant::now();
        let path = self.cfg.node.state_dir.join(HISTORY_FILE);
        // Saving takes milliseconds; holding the lock avoids copying the
        // whole history (the largest thing in memory) just to write it.
        let h = lock(&self.shared.history);
        if let Err(e) = save_history(&path, &h) {
            log::warn!("saving graph history to {}: {e:#}", path.display());
        }
    }
}

/// A sample's figures for the next usage report.
fn report_sample(s: &Snapshot, uplink: &str, health: String, services: String) -> crate::reports::Sample {
    crate::reports::Sample {
        cpu: s.cpu.usage,
        uplink: appliance_monitor::collector::pick_uplink(uplink, &s.network)
            .map(|i| (i.name.clone(), i.rx_bytes, i.tx_bytes)),
        max_temperature: s.temperatures.iter().map(|t| t.celsius).reduce(f64::max),
        disk_used_ratio_max: s.filesystems.iter().filter_map(|f| f.used_ratio()).reduce(f64::max),
        health,
        services,
        update: None,
        members: Vec::new(),
    }
}

/// What the graphs show: one series per figure, named by kind and subject.
pub fn record_history(h: &mut History, s: &Snapshot) {
    let t = s.timestamp as u64;
    if let Some(u) = s.cpu.usage {
        h.record("cpu", t, u);
    }
    if let Some(l) = s.cpu.load {
        h.record("load1", t, l[0]);
    }
    if let Some(m) = &s.memory {
        h.record("memory_used_bytes", t, m.used_bytes as f64);
    }
    for f in &s.filesystems {
        if let Some(r) = f.used_ratio() {
            h.record(&format!("disk:{}", f.path), t, r);
        }
    }
    for i in s.network.iter().filter(|i| !i.loopback) {
        if let Some(r) = i.rx_rate {
            h.record(&format!("net_rx:{}", i.name), t, r);
        }
        if let Some(r) = i.tx_rate {
            h.record(&format!("net_tx:{}", i.name), t, r);
        }
    }
    for temp in &s.temperatures {
        h.record(&format!("temp:{}", temp.sensor), t, temp.celsius);
    }
}

fn load_history(path: &Path) -> History {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return History::new(HISTORY_MAX_SERIES);
        }
        Err(e) => {
            log::warn!("graph history {}: {e}; starting empty", path.display());
            return History::new(HISTORY_MAX_SERIES);
        }
    };
    match History::load(std::io::BufReader::new(file), HISTORY_MAX_SERIES) {
        Ok(h) => {
            log::info!("graph history: {} series from {}", h.len(), path.display());
            h
        }
        Err(e) => {
            let aside = path.with_extension("bin.damaged");
            let _ = fs::rename(path, &aside);
            log::warn!(
                "graph history {}: {e}; kept it as {} and started empty",
                path.display(),
                aside.display()
            );
            History::new(HISTORY_MAX_SERIES)
        }
    }
}

fn save_history(path: &Path, h: &History) -> Result<()> {
    let tmp: PathBuf = path.with_extension("bin.tmp");
    let f = fs::File::create(&tmp).with_context(|| tmp.display().to_string())?;
    let mut w = BufWriter::new(f);
    h.save(&mut w).with_context(|| tmp.display().to_string())?;
    let f = w
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| tmp.display().to_string())?;
    f.sync_all().with_context(|| tmp.display().to_string())?;
    fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}

pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
