//! The contract between the admin page (and the control socket) and the
//! supervisor: what the admin server may ask ([`Backend`]), the requests
//! and answers it carries, and why an action was not done
//! ([`crate::ActionError`]). The admin crate depends on this and on
//! nothing of the supervisor's; the supervisor implements it.

use std::future::Future;
use std::pin::Pin;

use appliance_monitor::history::Window;
use serde::{Deserialize, Serialize};

use crate::{ActionError, Status};

/// A future a [`Backend`] returns for slow work (systemd, the journal).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the admin server needs from the supervisor.
pub trait Backend: Send + Sync + 'static {
    /// The Prometheus exposition of the latest sample.
    fn metrics(&self) -> String;
    /// Whether the supervisor's main loop is alive.
    fn alive(&self) -> bool;
    fn status(&self) -> Status;
    /// Names of the series the graphs can show.
    fn series(&self) -> Vec<String>;
    fn history(&self, series: &str, window: Window) -> Vec<(u64, Option<f32>)>;
    /// Restart or reset a service; the answer is a sentence for people.
    fn service_action(&self, name: String, action: ServiceAction) -> BoxFuture<'_, Result<String, ActionError>>;
    /// Log lines of the supervisor or of a recipe unit.
    fn logs(&self, query: LogQuery) -> BoxFuture<'_, Result<Vec<LogLine>, ActionError>>;
    /// Files for the support bundle, already free of secrets.
    fn support_files(&self) -> Vec<(String, Vec<u8>)>;
    /// Enrolls the node with global ops (a token from `appliance-ops token create`).
    fn enroll(&self, ops: String, token: String) -> BoxFuture<'_, Result<String, ActionError>>;
    /// Installs an operator's certificate and key (PEM) for the admin page.
    fn install_certificate(&self, cert_pem: String, key_pem: String) -> Result<String, ActionError>;
    /// Fingerprint and expiry of the admin certificate in use.
    fn certificate(&self) -> CertificateView;
    /// Asks the update task to check now, or to check and install now
    /// (outside the window, during meetings). The answer is a sentence.
    fn update_action(&self, action: UpdateAction) -> Result<String, ActionError>;
    /// SSH for operators: off unless an operator turns it on with a key.
    fn ssh(&self) -> SshView;
    /// Adds or removes a key, turns SSH on or off; `by` is the account
    /// that asked. The answer is a sentence.
    fn ssh_action(&self, action: SshAction, by: String) -> BoxFuture<'_, Result<String, ActionError>>;
    /// The member organisations, without their secrets.
    fn members(&self) -> Vec<appliance_members::MemberView>;
    /// A change to the members; the outcome carries a new secret, once.
    fn members_action(&self, action: appliance_members::Action) -> Result<appliance_members::Outcome, ActionError>;
}

/// SSH as the Settings page shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshView {
    /// This system has an SSH server to turn on (the node image does).
    pub available: bool,
    pub enabled: bool,
    pub keys: Vec<SshKeyView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshKeyView {
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    pub kind: String,
    pub comment: String,
    pub added_by: String,
    /// Unix seconds.
    pub added_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshAction {
    /// A public key line, as in a `.pub` file.
    AddKey(String),
    /// By fingerprint.
    RemoveKey(String),
    Enable,
    Disable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateAction {
    Check,
    Install,
}

impl UpdateAction {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateAction::Check => "check",
            UpdateAction::Install => "install",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceAction {
    Restart,
    Reset,
}

impl ServiceAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Restart => "restart",
            ServiceAction::Reset => "reset",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogQuery {
    /// `None` or "appliance" for the supervisor itself, else a unit.
    pub unit: Option<String>,
    /// Only lines containing this text (case-insensitive).
    pub contains: Option<String>,
    /// At most this many lines, newest last.
    pub limit: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Unix seconds.
    pub at: f64,
    pub unit: String,
    /// syslog priority: 0 emergency ... 7 debug.
    pub priority: u8,
    pub message: String,
}

/// The admin page's certificate, as the Settings page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateView {
    /// SHA-256 of the certificate, colon-separated hex.
    pub fingerprint_sha256: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Made by the node itself (not installed by an operator).
    pub generated: bool,
}
