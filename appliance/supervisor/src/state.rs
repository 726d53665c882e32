//! The supervisor's shared state: written by the sampler thread once per
//! interval, read by the admin server, the control socket and the
//! watchdog. Locks are held only to copy or swap, never across I/O.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use appliance_api::{BbbStatus, Hardware, Node, Sensor, ServicesStatus, Status};
use appliance_monitor::health::temperature_thresholds;
use appliance_monitor::{Alert, Detection, Health, History, HwProfile, Severity, Snapshot};
use appliance_services::runtime::Command;
use std::path::PathBuf;

use appliance_admin::audit::AuditLog;
use appliance_admin::auth::Auth;
use appliance_admin::tls::CertInfo;
use axum_server::tls_rustls::RustlsConfig;
use tokio::sync::mpsc;

/// Facts fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node: String,
    pub version: String,
    pub started_unix: f64,
    pub started: Instant,
    pub profile: HwProfile,
    pub detection: Detection,
    /// `[node] timezone`, resolved.
    pub timezone: String,
    /// `[alerts]`: the thresholds the graphs draw.
    pub limits: appliance_monitor::health::AlertConfig,
}

/// What changes every sample.
#[derive(Debug, Default)]
pub struct Live {
    pub snapshot: Option<Arc<Snapshot>>,
    pub alerts: Vec<Alert>,
    /// When the sampler last finished a round.
    pub last_tick: Option<Instant>,
}

#[derive(Debug)]
pub struct Shared {
    pub id: Identity,
    pub live: Mutex<Live>,
    pub history: Mutex<History>,
    /// How stale the sampler may get before the supervisor counts as stuck.
    pub stall_after: Duration,
    /// Published by the service runtime; `None` without a recipe.
    pub services: Mutex<Option<ServicesStatus>>,
    /// Operator commands to the service runtime.
    pub service_commands: Option<mpsc::Sender<Command>>,
    /// Published by the BBB poller; `None` without `[bbb]`.
    pub bbb: Mutex<Option<BbbStatus>>,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    /// The admin certificate in use, and the live TLS config to swap it.
    pub cert: Mutex<CertInfo>,
    pub tls: Mutex<Option<RustlsConfig>>,
    pub auth: Arc<Mutex<Auth>>,
    pub audit: Arc<AuditLog>,
    /// The admin page's address, for the URL on the console.
    pub admin_port: std::net::SocketAddr,
    /// The reports task: usage accounting, the outbox, the enrollment.
    pub reports: crate::reports::Handle,
    /// Published by the update task; `None` while updates are off.
    pub update: Mutex<Option<appliance_api::UpdateView>>,
    /// Operator requests to the update task (check now, install now,
    /// restart into what an offline install switched to).
    pub update_requests: Option<mpsc::Sender<crate::update::Request>>,
    /// The member organisations (their secrets and limits).
    pub members: Arc<crate::members::Store>,
}

/// Locks a mutex even if a thread panicked while holding it: the data
/// are plain values that stay consistent, and a monitoring daemon that
/// stops answering over one panic helps nobody.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// What this node tells ops when it enrolls.
    pub fn node_facts(&self) -> crate::enrollment::NodeFacts {
        let mut facts = std::collections::BTreeMap::new();
        facts.insert("profile".to_string(), self.id.profile.name.clone());
        for (k, v) in &self.id.detection.dmi {
            facts.insert(k.clone(), v.clone());
        }
        crate::enrollment::NodeFacts {
            node: self.id.node.clone(),
            version: self.id.version.clone(),
            facts,
        }
    }

    pub fn alive(&self) -> bool {
        let live = lock(&self.live);
        match live.last_tick {
            Some(t) => t.elapsed() <= self.stall_after,
            // Before the first sample: alive while still starting up.
            None => self.id.started.elapsed() <= self.stall_after,
        }
    }

    pub fn status(&self) -> Status {
        let (snapshot, mut alerts) = {
            let live = lock(&self.live);
            (live.snapshot.clone(), live.alerts.clone())
        };
        let services = lock(&self.services).clone();
        let bbb = lock(&self.bbb).clone();
        if let Some(sv) = &services {
            alerts.extend(sv.alerts.iter().cloned());
        }
        let rs = self.reports.state();
        let enrollment = rs.enrollment.clone().map(|e| appliance_api::EnrollmentView {
            ops: e.ops,
            node: e.node,
            node_id: e.node_id,
            since: e.enrolled_at as f64,
        });
        alerts.extend(report_alerts(&rs));
        let reports = Some(appliance_api::ReportsView {
            queued: rs.queued,
            last_success: rs.last_success,
            send_error: rs.send_error,
            refused: rs.refused,
            write_error: rs.write_error,
            state_error: rs.state_error,
            this_month: rs.this_month,
        });
        let sensors = snapshot
            .as_deref()
            .map(|s| sensors(&self.id.profile, s, &alerts))
            .unwrap_or_default();
        let uplink = snapshot
            .as_deref()
            .and_then(|s| appliance_monitor::collector::pick_uplink(&self.id.profile.uplink.interface, &s.network));
        let uplink_capacity_mbps = uplink
            .and_then(|i| self.id.profile.uplink.capacity_mbps.or(i.speed_mbps))
            .filter(|c| *c > 0);
        let uplink = uplink.map(|i| i.name.clone());
        let certificate = {
            let c = lock(&self.cert);
            appliance_api::CertificateView {
                fingerprint_sha256: c.fingerprint_sha256.clone(),
                not_after: c.not_after,
                generated: c.generated,
            }
        };
        let mut st = Status {
            node: Node {
                name: self.id.node.clone(),
                version: self.id.version.clone(),
                started_at: self.id.started_unix,
                uptime_seconds: self.id.started.elapsed().as_secs_f64(),
                timezone: self.id.timezone.clone(),
            },
            hardware: Hardware {
                profile: self.id.profile.name.clone(),
                description: self.id.profile.description.clone(),
                reason: self.id.detection.reason.clone(),
                uplink,
                uplink_capacity_mbps,
            },
            health: Health::default(),
            alerts,
            sensors,
            monitor: snapshot.map(|s| (*s).clone()),
            services,
            bbb,
            enrollment,
            reports,
            update: lock(&self.update).clone(),
            certificate: Some(certificate),
            limits: Some(self.id.limits.clone()),
        };
        appliance_api::light::apply(&mut st, crate::run::unix_now());
        st
    }
}

/// What the reports task's state means for the node's health. Ops being
/// unreachable is not the node's ill health (reports wait, nothing is
/// lost); usage that cannot be written or read, or reports ops refuses,
/// need a person.
pub fn report_alerts(r: &crate::reports::ReportsState) -> Vec<Alert> {
    use appliance_api::light::alert;
    let mut out = Vec::new();
    if let Some(e) = &r.write_error {
        out.push(alert(
            "usage-disk",
            Severity::Critical,
            format!("usage reports cannot be written: {e}"),
        ));
    }
    if let Some(e) = &r.state_error {
        out.push(alert(
            "usage-state",
            Severity::Critical,
            format!("usage is not being counted or reported: {e}"),
        ));
    }
    if let Some(e) = &r.refused {
        out.push(alert(
            "usage-refused",
            Severity::Warning,
            format!("global ops refuses this node's reports, which stay queued: {e}"),
        ));
    }
    out
}

/// Every temperature with the thresholds in force and its alert severity.
pub fn sensors(profile: &HwProfile, snap: &Snapshot, alerts: &[Alert]) -> Vec<Sensor> {
    snap.temperatures
        .iter()
        .map(|t| {
            let (warn, critical) = temperature_thresholds(profile, &t.chip, &t.label, t.max, t.crit);
            let id = format!("temperature:{}", t.sensor);
            let severity = alerts
                .iter()
                .find(|a| a.id == id)
                .map(|a| a.severity)
                .unwrap_or(Severity::Ok);
            Sensor {
                sensor: t.sensor.clone(),
                celsius: t.celsius,
                warn,
                critical,
                severity,
            }
        })
        .collect()
}
