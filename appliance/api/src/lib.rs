//! What the supervisor says about the node: the status document behind
//! `appliance status`, the control socket and `/api/v1/status`, its
//! plain-text rendering, and [`ActionError`], why an action was not done.
//! Data only: no I/O.

use serde::{Deserialize, Serialize};

pub use appliance_monitor::{Alert, Health, Severity, Snapshot};
pub use appliance_services::runtime::{CheckView, ServiceView, ServicesStatus};

mod contract;
mod error;
pub mod light;
mod text;

pub use contract::{
    Backend, BoxFuture, CertificateView, LogLine, LogQuery, ServiceAction, SshAction, SshKeyView, SshView, UpdateAction,
};
pub use error::ActionError;
pub use text::{format_bytes, format_duration, services_table};

/// Everything `appliance status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub node: Node,
    pub hardware: Hardware,
    pub health: Health,
    /// Alerts that are not ok, worst first.
    pub alerts: Vec<Alert>,
    /// Temperatures with the thresholds that apply to them.
    pub sensors: Vec<Sensor>,
    /// The latest sample; `None` until the first one is taken.
    pub monitor: Option<Snapshot>,
    /// The recipe's services; `None` when no recipe is configured.
    pub services: Option<ServicesStatus>,
    /// BBB's meetings as last polled; `None` without a `[bbb]` section.
    pub bbb: Option<BbbStatus>,
    /// The enrollment with global ops; `None` until enrolled.
    #[serde(default)]
    pub enrollment: Option<EnrollmentView>,
    /// The usage reports' queue.
    #[serde(default)]
    pub reports: Option<ReportsView>,
    /// Signed updates; `None` while `[update] root` is unset.
    #[serde(default)]
    pub update: Option<UpdateView>,
    /// The admin page's certificate; `None` where the caller does not know it.
    #[serde(default)]
    pub certificate: Option<CertificateView>,
    /// The alert thresholds in force (`[alerts]`), for the graphs' lines.
    #[serde(default)]
    pub limits: Option<appliance_monitor::health::AlertConfig>,
}

/// Updates of the supervisor, as the Updates page, `appliance status`,
/// metrics and reports to ops show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateView {
    /// The version this process runs.
    pub running: String,
    pub channel: String,
    pub previous: Option<String>,
    /// The version floor: nothing older is installed unless signed so.
    pub floor: Option<String>,
    /// Versions that failed here and are never retried.
    pub bad: Vec<String>,
    /// This node's place in rollouts, 0 to 9999.
    pub position: u16,
    /// The version on probation (running, not yet committed).
    pub probation: Option<String>,
    /// Unix time of the last successful check.
    pub last_check: Option<f64>,
    /// A release for this node: its version and from when (Unix time).
    pub available: Option<String>,
    pub available_from: Option<f64>,
    /// Why releases were passed over (channel, floor, wave, marked bad).
    #[serde(default)]
    pub passed_over: Vec<String>,
    /// The maintenance window and when it next opens (Unix time).
    pub window: String,
    pub next_window: Option<f64>,
    /// Bytes of the download in progress, and its size.
    pub downloading: Option<(u64, u64)>,
    pub last_result: Option<UpdateResultView>,
    /// The last check or install failed: why.
    pub error: Option<String>,
    /// OS updates, on an A/B image.
    #[serde(default)]
    pub os: Option<OsUpdateView>,
}

/// The OS image (A/B root slots) a node runs, and its updates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OsUpdateView {
    pub running: String,
    pub recipe: String,
    /// The slot booted: "a" or "b".
    pub slot: String,
    /// An OS update written to the other slot and not yet settled.
    pub pending: Option<String>,
    pub bad: Vec<String>,
    pub last_result: Option<UpdateResultView>,
    /// An OS release for this node.
    pub available: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateResultView {
    pub version: String,
    /// installed, rolled_back or failed.
    pub result: String,
    pub reason: String,
    pub at: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollmentView {
    pub ops: String,
    pub node: String,
    pub node_id: String,
    /// Unix time of the enrollment.
    pub since: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportsView {
    /// Reports written and not yet acknowledged by ops.
    pub queued: u64,
    /// Unix time of the last acknowledged report.
    pub last_success: Option<f64>,
    /// Ops could not be reached; reports wait.
    pub send_error: Option<String>,
    /// Ops refused the oldest report (its reason); it stays queued.
    #[serde(default)]
    pub refused: Option<String>,
    pub write_error: Option<String>,
    /// Usage state, enrollment or key cannot be read: nothing is counted.
    #[serde(default)]
    pub state_error: Option<String>,
    /// Each member's usage so far in the month of the last poll.
    #[serde(default)]
    pub this_month: Option<MonthUsageView>,
}

/// Each member's usage in one UTC month so far, as the node counted it
/// (reported or waiting to be; ops's sums are the bill).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthUsageView {
    /// `YYYY-MM`.
    pub month: String,
    pub members: Vec<MemberMonthView>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberMonthView {
    pub member: String,
    pub meeting_seconds: u64,
    pub participant_seconds: u64,
    pub peak_participants: u32,
}

/// What the last getMeetings said.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BbbStatus {
    /// Whether the last poll succeeded.
    pub up: bool,
    pub meetings: u32,
    pub participants: u32,
    /// Unix time of the last successful poll.
    pub last_ok: Option<f64>,
    pub error: Option<String>,
    /// The meetings of the last successful poll.
    #[serde(default)]
    pub list: Vec<MeetingView>,
}

/// A meeting as the admin page lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MeetingView {
    pub id: String,
    /// BBB's internal id: unique per meeting, even when `id` is reused.
    #[serde(default)]
    pub internal_id: String,
    pub name: String,
    /// The member organisation (from the meeting's metadata; breakout rooms
    /// take their parent's); "unassigned" when there is none.
    pub member: String,
    pub running: bool,
    pub participants: u32,
    pub moderators: u32,
    pub video: u32,
    pub breakout: bool,
    /// For breakout rooms: the parent meeting's id.
    pub parent: Option<String>,
    /// Epoch milliseconds.
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub version: String,
    /// Unix time the supervisor started.
    pub started_at: f64,
    pub uptime_seconds: f64,
    /// The IANA time zone pages show times in (`[node] timezone`).
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    pub profile: String,
    pub description: String,
    /// Why this profile was chosen.
    pub reason: String,
    pub uplink: Option<String>,
    /// The uplink's capacity: the profile's, else the link speed.
    #[serde(default)]
    pub uplink_capacity_mbps: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sensor {
    pub sensor: String,
    pub celsius: f64,
    pub warn: Option<f64>,
    pub critical: Option<f64>,
    pub severity: Severity,
}

impl Status {
    /// The human-readable form printed by `appliance status`.
    pub fn to_text(&self) -> String {
        text::render(self)
    }
}
