//! The service manager: systemd over D-Bus (never `systemctl` in a
//! subprocess), behind a small trait so the runtime is tested with an
//! in-memory one.
//!
//! State changes arrive as D-Bus signals: each unit's proxy caches its
//! properties and zbus updates them from `PropertiesChanged`, and the
//! runtime is woken by the `ActiveState` change stream instead of polling.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

/// What systemd says about a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// systemd's own restart count (Restart=), since the unit was loaded.
    pub n_restarts: u32,
    pub main_pid: u32,
    /// Changes with every start of the unit.
    pub invocation_id: String,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("systemd: {0}")]
pub struct ManagerError(pub String);

impl From<zbus::Error> for ManagerError {
    fn from(e: zbus::Error) -> Self {
        ManagerError(e.to_string())
    }
}

/// The operations the supervisor needs from a service manager.
pub trait ServiceManager: Send + Sync + 'static {
    fn status(&self, unit: &str) -> impl Future<Output = Result<UnitStatus, ManagerError>> + Send;
    fn restart(&self, unit: &str) -> impl Future<Output = Result<(), ManagerError>> + Send;
    fn start(&self, unit: &str) -> impl Future<Output = Result<(), ManagerError>> + Send;
    fn stop(&self, unit: &str) -> impl Future<Output = Result<(), ManagerError>> + Send;
    fn reset_failed(&self, unit: &str) -> impl Future<Output = Result<(), ManagerError>> + Send;
    /// Sends a unit's name on `tx` whenever its state changes.
    fn watch(
        &self,
        units: &[String],
        tx: mpsc::UnboundedSender<String>,
    ) -> impl Future<Output = Result<(), ManagerError>> + Send;
}

/// systemd on the system bus.
#[derive(Clone)]
pub struct Systemd {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    units: Arc<Mutex<BTreeMap<String, (UnitProxy<'static>, ServiceProxy<'static>)>>>,
}

impl std::fmt::Debug for Systemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Systemd")
    }
}

impl Systemd {
    pub async fn connect() -> Result<Systemd, ManagerError> {
        let conn = zbus::Connection::system().await?;
        let manager = ManagerProxy::new(&conn).await?;
        // Without Subscribe, systemd does not emit unit signals to us.
        manager.subscribe().await?;
        Ok(Systemd {
            conn,
            manager,
            units: Arc::default(),
        })
    }

    async fn proxies(&self, unit: &str) -> Result<(UnitProxy<'static>, ServiceProxy<'static>), ManagerError> {
        if let Some(p) = self.units.lock().unwrap_or_else(|e| e.into_inner()).get(unit) {
            return Ok(p.clone());
        }
        // LoadUnit, unlike GetUnit, also works for units not loaded yet.
        let path = self.manager.load_unit(unit.to_string()).await?;
        let u = UnitProxy::builder(&self.conn).path(path.clone()).build().await?;
        let s = ServiceProxy::builder(&self.conn).path(path).build().await?;
        self.units
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(unit.to_string(), (u.clone(), s.clone()));
        Ok((u, s))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ServiceManager for Systemd {
    async fn status(&self, unit: &str) -> Result<UnitStatus, ManagerError> {
        let (u, s) = self.proxies(unit).await?;
        Ok(UnitStatus {
            load_state: u.load_state().await?,
            active_state: u.active_state().await?,
            sub_state: u.sub_state().await?,
            invocation_id: hex(&u.invocation_id().await.unwrap_or_default()),
            n_restarts: s.n_restarts().await.unwrap_or(0),
            main_pid: s.main_pid().await.unwrap_or(0),
        })
    }

    async fn restart(&self, unit: &str) -> Result<(), ManagerError> {
        self.manager.restart_unit(unit.to_string(), "replace".into()).await?;
        Ok(())
    }

    async fn start(&self, unit: &str) -> Result<(), ManagerError> {
        self.manager.start_unit(unit.to_string(), "replace".into()).await?;
        Ok(())
    }

    async fn stop(&self, unit: &str) -> Result<(), ManagerError> {
        self.manager.stop_unit(unit.to_string(), "replace".into()).await?;
        Ok(())
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), ManagerError> {
        self.manager.reset_failed_unit(unit.to_string()).await?;
        Ok(())
    }

    async fn watch(&self, units: &[String], tx: mpsc::UnboundedSender<String>) -> Result<(), ManagerError> {
        for unit in units {
            let (u, _) = self.proxies(unit).await?;
            let mut changes = u.receive_active_state_changed().await;
            let tx1 = tx.clone();
            let name = unit.clone();
            tokio::spawn(async move {
                while changes.next().await.is_some() {
                    if tx1.send(name.clone()).is_err() {
                        break;
                    }
                }
            });
            // Sub-state changes (e.g. "auto-restart") matter too.
            let mut sub = u.receive_sub_state_changed().await;
            let tx2 = tx.clone();
            let name = unit.clone();
            tokio::spawn(async move {
                while sub.next().await.is_some() {
                    if tx2.send(name.clone()).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(())
    }
}

/// An in-memory service manager for tests: units change state when told
/// to, and `restart` starts a new invocation.
#[derive(Debug, Clone, Default)]
pub struct FakeManager {
    inner: Arc<Mutex<FakeInner>>,
}

#[derive(Debug, Default)]
struct FakeInner {
    units: BTreeMap<String, UnitStatus>,
    watchers: Vec<mpsc::UnboundedSender<String>>,
    /// Every operation, in order, e.g. "restart redis.service".
    pub log: Vec<String>,
    invocations: u64,
    /// Units that fail again right after each (re)start.
    crashing: Vec<String>,
}

impl FakeManager {
    pub fn with_units(units: &[&str]) -> FakeManager {
        let f = FakeManager::default();
        for u in units {
            f.set(u, "active", "running");
        }
        f
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets a unit's state, as if systemd reported a change.
    pub fn set(&self, unit: &str, active: &str, sub: &str) {
        let starting = {
            let g = self.lock();
            g.units
                .get(unit)
                .is_none_or(|st| st.active_state != "active" && st.active_state != "activating")
        };
        self.set_state(
            unit,
            active,
            sub,
            starting && (active == "active" || active == "activating"),
        );
    }

    fn set_state(&self, unit: &str, active: &str, sub: &str, new_invocation: bool) {
        let mut g = self.lock();
        g.invocations += 1;
        let inv = g.invocations;
        let st = g.units.entry(unit.to_string()).or_insert_with(|| UnitStatus {
            load_state: "loaded".into(),
            ..Default::default()
        });
        if new_invocation {
            st.invocation_id = format!("{inv:032x}");
        }
        st.active_state = active.into();
        st.sub_state = sub.into();
        g.watchers.retain(|w| w.send(unit.to_string()).is_ok());
    }

    /// Makes a unit fail right after every start.
    pub fn crash_on_start(&self, unit: &str) {
        self.lock().crashing.push(unit.to_string());
    }

    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    fn op(&self, what: &str, unit: &str) {
        self.lock().log.push(format!("{what} {unit}"));
    }

    /// A (re)start: a new invocation that is active, or fails at once for
    /// units told to crash.
    fn started(&self, unit: &str) {
        let crashing = self.lock().crashing.iter().any(|u| u == unit);
        if crashing {
            self.set_state(unit, "failed", "failed", true);
        } else {
            self.set_state(unit, "active", "running", true);
        }
    }
}

impl ServiceManager for FakeManager {
    async fn status(&self, unit: &str) -> Result<UnitStatus, ManagerError> {
        Ok(self.lock().units.get(unit).cloned().unwrap_or_else(|| UnitStatus {
            load_state: "not-found".into(),
            active_state: "inactive".into(),
            sub_state: "dead".into(),
            ..Default::default()
        }))
    }
    async fn restart(&self, unit: &str) -> Result<(), ManagerError> {
        self.op("restart", unit);
        self.started(unit);
        Ok(())
    }
    async fn start(&self, unit: &str) -> Result<(), ManagerError> {
        self.op("start", unit);
        self.started(unit);
        Ok(())
    }
    async fn stop(&self, unit: &str) -> Result<(), ManagerError> {
        self.op("stop", unit);
        self.set(unit, "inactive", "dead");
        Ok(())
    }
    async fn reset_failed(&self, unit: &str) -> Result<(), ManagerError> {
        self.op("reset-failed", unit);
        Ok(())
    }
    async fn watch(&self, _units: &[String], tx: mpsc::UnboundedSender<String>) -> Result<(), ManagerError> {
        self.lock().watchers.push(tx);
        Ok(())
    }
}
