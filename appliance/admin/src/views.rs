//! Page models and their askama templates (`templates/`). Everything a
//! template shows is computed here, so templates stay plain markup and
//! askama escapes every value.

use std::collections::BTreeMap;

use appliance_api::{Status, format_bytes, format_duration};
use askama::Template;

use crate::auth::{Role, Session};
use crate::graph::{self, Line, Threshold};
use crate::{Backend, LogLine, LogQuery, Window};

pub struct Link {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// The header every page shares.
pub struct Nav {
    pub node: String,
    pub version: String,
    pub user: String,
    pub role: &'static str,
    pub operator: bool,
    pub csrf: String,
    pub health: &'static str,
    pub links: Vec<Link>,
}

const LINKS: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/hardware", "Hardware"),
    ("/services", "Services"),
    ("/meetings", "Meetings"),
    ("/members", "Members"),
    ("/logs", "Logs"),
    ("/updates", "Updates"),
    ("/enrollment", "Enrollment"),
    ("/audit", "Audit"),
    ("/settings", "Settings"),
];

fn nav(s: &Session, st: &Status, active: &str) -> Nav {
    Nav {
        node: st.node.name.clone(),
        version: st.node.version.clone(),
        user: s.user.clone(),
        // "operator (operator)" says nothing twice.
        role: if s.user == s.role.as_str() { "" } else { s.role.as_str() },
        operator: s.role == Role::Operator,
        csrf: s.csrf.clone(),
        health: st.health.status.as_str(),
        links: LINKS
            .iter()
            .map(|(href, label)| Link {
                href,
                label,
                current: *href == active,
            })
            .collect(),
    }
}

fn render(t: impl Template) -> String {
    t.render()
        .unwrap_or_else(|e| format!("<!doctype html><title>error</title><p>page could not be rendered: {e}</p>"))
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    title: &'a str,
    text: &'a str,
}

pub fn message_page(title: &str, text: &str) -> String {
    render(Message { title, text })
}

#[derive(Template)]
#[template(path = "login.html")]
struct Login<'a> {
    error: Option<&'a str>,
    note: Option<&'a str>,
}

pub fn login(error: Option<&str>, note: Option<&str>) -> String {
    render(Login { error, note })
}

#[derive(Template)]
#[template(path = "setup.html")]
struct Setup<'a> {
    error: Option<&'a str>,
    code: &'a str,
    rules: String,
}

/// `code`: what was typed last time, kept after an error.
pub fn setup(error: Option<&str>, code: &str) -> String {
    render(Setup {
        error,
        code,
        rules: crate::auth::password_rules(),
    })
}

pub struct Figure {
    pub label: &'static str,
    pub value: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    nav: Nav,
    reasons: Vec<String>,
    figures: Vec<Figure>,
    meetings: String,
    services: String,
    failing: Vec<String>,
    enrollment: String,
    updates: String,
}

fn pct(r: Option<f64>) -> String {
    r.map(|r| format!("{:.0} %", r * 100.0)).unwrap_or_else(|| "–".into())
}

pub fn overview(s: &Session, st: &Status) -> String {
    let mut figures = vec![Figure {
        label: "Uptime",
        value: format_duration(st.node.uptime_seconds),
    }];
    if let Some(m) = &st.monitor {
        figures.push(Figure {
            label: "CPU",
            value: format!("{} of {} cores", pct(m.cpu.usage), m.cpu.cores.len()),
        });
        if let Some(mem) = &m.memory {
            figures.push(Figure {
                label: "Memory",
                value: format!(
                    "{} of {} ({})",
                    format_bytes(mem.used_bytes),
                    format_bytes(mem.total_bytes),
                    pct(mem.used_ratio())
                ),
            });
        }
        for f in &m.filesystems {
            figures.push(Figure {
                label: "Disk",
                value: format!(
                    "{}: {} used of {}",
                    f.path,
                    pct(f.used_ratio()),
                    format_bytes(f.size_bytes)
                ),
            });
        }
        if let Some(up) = st
            .hardware
            .uplink
            .as_ref()
            .and_then(|u| m.network.iter().find(|i| &i.name == u))
        {
            let rate = |b: Option<f64>| {
                b.map(|b| format!("{}/s", crate::format_bits(b * 8.0)))
                    .unwrap_or_else(|| "–".into())
            };
            figures.push(Figure {
                label: "Uplink",
                value: format!("{}: in {}, out {}", up.name, rate(up.rx_rate), rate(up.tx_rate)),
            });
        }
    }
    if let Some(hot) = st.sensors.iter().max_by(|a, b| a.celsius.total_cmp(&b.celsius)) {
        figures.push(Figure {
            label: "Hottest sensor",
            value: format!("{} at {:.1} °C", hot.sensor, hot.celsius),
        });
    }
    figures.push(Figure {
        label: "Hardware",
        value: format!("{} ({})", st.hardware.description, st.hardware.profile),
    });
    let meetings = match &st.bbb {
        None => "BigBlueButton is not configured on this node.".to_string(),
        Some(b) if b.up => format!("{} meetings running, {} participants", b.meetings, b.participants),
        Some(b) => format!("BigBlueButton does not answer: {}", b.error.clone().unwrap_or_default()),
    };
    let (services, failing) = match &st.services {
        None => ("No services are managed (no recipe configured).".to_string(), vec![]),
        Some(sv) => {
            let up = sv.services.iter().filter(|x| x.up).count();
            let failing = sv
                .services
                .iter()
                .filter(|x| !x.up || x.state != "ok")
                .map(|x| {
                    format!(
                        "{}: {}{}",
                        x.name,
                        x.state,
                        x.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
                    )
                })
                .collect();
            (format!("{up} of {} services up", sv.services.len()), failing)
        }
    };
    render(Overview {
        nav: nav(s, st, "/"),
        reasons: st.health.reasons.clone(),
        figures,
        meetings,
        services,
        failing,
        enrollment: match &st.enrollment {
            Some(e) => format!("Enrolled with {} as {}.", e.ops, e.node),
            None => "Not enrolled with global ops yet.".into(),
        },
        updates: match &st.update {
            None => format!(
                "Firmware {}. Automatic updates are not set up on this node.",
                st.node.version
            ),
            Some(u) => match (&u.probation, &u.available, &u.error) {
                (Some(p), _, _) => format!("Firmware {p} is on probation."),
                (_, _, Some(e)) => format!("Firmware {}. The last update check failed: {e}", u.running),
                (_, Some(a), _) => format!("Firmware {}. {a} is available.", u.running),
                _ => format!("Firmware {}, channel {}. Up to date.", u.running, u.channel),
            },
        },
    })
}

pub struct WindowLink {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "hardware.html")]
struct Hardware {
    nav: Nav,
    windows: Vec<WindowLink>,
    window: &'static str,
    zone: String,
    charts: Vec<String>,
    notes: Vec<String>,
}

/// Warn and critical lines for a ratio rule, scaled to the graph's unit
/// (`full` is what a ratio of 1 is: total memory, link capacity).
fn ratio_lines(l: Option<&appliance_monitor::health::Limits>, full: f64) -> Vec<Threshold> {
    let Some(l) = l else { return vec![] };
    [("warn", l.warn), ("critical", l.critical)]
        .into_iter()
        .filter_map(|(kind, v)| {
            v.map(|v| Threshold {
                label: kind.into(),
                value: v * full,
                kind,
            })
        })
        .collect()
}

/// The node's time zone for the graphs; UTC if the name is unknown here.
pub fn zone_of(st: &Status) -> jiff::tz::TimeZone {
    jiff::tz::TimeZone::get(&st.node.timezone).unwrap_or(jiff::tz::TimeZone::UTC)
}

pub fn hardware(s: &Session, st: &Status, b: &dyn Backend, window: Window, now: u64) -> String {
    let windows = [
        ("/hardware?window=hour", Window::Hour),
        ("/hardware?window=day", Window::Day),
        ("/hardware?window=week", Window::Week),
    ]
    .into_iter()
    .map(|(href, w)| WindowLink {
        href,
        label: w.label(),
        current: w == window,
    })
    .collect();
    let axis = graph::Axis::ending(now, window.seconds(), zone_of(st));
    let series = b.series();
    let line = |name: &str, label: &str| Line {
        label: label.to_string(),
        points: b.history(name, window),
    };
    let limits = st.limits.as_ref();
    let mut charts = Vec::new();
    let mut notes = Vec::new();
    charts.push(graph::chart(
        "CPU usage",
        "%",
        &[line("cpu", "CPU")],
        &ratio_lines(limits.map(|l| &l.cpu), 1.0),
        &axis,
    ));
    let mem_total = st.monitor.as_ref().and_then(|m| m.memory.map(|m| m.total_bytes as f64));
    charts.push(graph::chart(
        &match mem_total {
            Some(t) => format!("Memory used (of {})", format_bytes(t as u64)),
            None => "Memory used".into(),
        },
        "B",
        &[line("memory_used_bytes", "used")],
        &mem_total
            .map(|t| ratio_lines(limits.map(|l| &l.memory), t))
            .unwrap_or_default(),
        &axis,
    ));
    let mut disks: Vec<&str> = series.iter().filter_map(|s| s.strip_prefix("disk:")).collect();
    disks.sort();
    for d in disks {
        charts.push(graph::chart(
            &format!("Disk use {d}"),
            "%",
            &[line(&format!("disk:{d}"), d)],
            &ratio_lines(limits.map(|l| &l.disk), 1.0),
            &axis,
        ));
    }
    // Interfaces that are up, and the uplink even when down: a down
    // virtual interface's flat line says nothing.
    let net = st.monitor.as_ref().map(|m| m.network.as_slice()).unwrap_or_default();
    let mut ifaces: Vec<&str> = series
        .iter()
        .filter_map(|s| s.strip_prefix("net_rx:"))
        .filter(|i| st.hardware.uplink.as_deref() == Some(*i) || net.iter().any(|n| n.name == *i && n.up == Some(true)))
        .collect();
    ifaces.sort_by_key(|i| (st.hardware.uplink.as_deref() != Some(*i), i.to_string()));
    for i in ifaces {
        let uplink = st.hardware.uplink.as_deref() == Some(i);
        let cap = st.hardware.uplink_capacity_mbps.filter(|_| uplink);
        let title = match cap {
            Some(c) => format!("Bandwidth {i} (uplink, {} Mbit/s)", c),
            None if uplink => format!("Bandwidth {i} (uplink, capacity unknown)"),
            None => format!("Bandwidth {i}"),
        };
        // The bandwidth alert compares the busier direction with the
        // capacity, in bits: in bytes per second, that is capacity / 8.
        let th = cap
            .map(|c| ratio_lines(limits.map(|l| &l.bandwidth), c as f64 * 1e6 / 8.0))
            .unwrap_or_default();
        charts.push(graph::chart(
            &title,
            "B/s",
            &[line(&format!("net_rx:{i}"), "in"), line(&format!("net_tx:{i}"), "out")],
            &th,
            &axis,
        ));
    }
    if st.sensors.is_empty() {
        notes.push(
            "This box shows no temperature sensors (none found under /sys/class/hwmon or thermal zones), so temperatures are not graphed or watched. A hardware profile can name the module that provides them."
                .into(),
        );
    }
    for sensor in &st.sensors {
        let mut th = Vec::new();
        if let Some(w) = sensor.warn {
            th.push(Threshold {
                label: "warn".into(),
                value: w,
                kind: "warn",
            });
        }
        if let Some(c) = sensor.critical {
            th.push(Threshold {
                label: "critical".into(),
                value: c,
                kind: "critical",
            });
        }
        charts.push(graph::chart(
            &format!("Temperature {}", sensor.sensor),
            "°C",
            &[line(&format!("temp:{}", sensor.sensor), &sensor.sensor)],
            &th,
            &axis,
        ));
    }
    render(Hardware {
        nav: nav(s, st, "/hardware"),
        windows,
        window: window.label(),
        zone: format!("{} ({})", st.node.timezone, axis.zone()),
        charts,
        notes,
    })
}

pub struct ServiceRow {
    pub name: String,
    pub unit: String,
    pub state: String,
    pub state_class: &'static str,
    pub unit_state: String,
    pub health: String,
    pub restarts: u64,
    pub last_failure: String,
}

#[derive(Template)]
#[template(path = "services.html")]
struct Services<'a> {
    nav: Nav,
    rows: Vec<ServiceRow>,
    note: String,
    msg: Option<&'a str>,
}

pub fn services(s: &Session, st: &Status, msg: Option<&str>) -> String {
    let (rows, note) = match &st.services {
        None => (
            vec![],
            "No services are managed on this node: no recipe is configured.".to_string(),
        ),
        Some(sv) => {
            let rows = sv
                .services
                .iter()
                .map(|x| {
                    let failing: Vec<String> = x
                        .checks
                        .iter()
                        .filter(|c| c.ok == Some(false))
                        .map(|c| format!("{}: {}", c.check, c.detail))
                        .collect();
                    ServiceRow {
                        name: x.name.clone(),
                        unit: x.unit.clone(),
                        state: x.state.clone(),
                        state_class: match x.state.as_str() {
                            "ok" if x.up => "ok",
                            "failed" => "critical",
                            _ => "warning",
                        },
                        unit_state: format!("{}/{}", x.active_state, x.sub_state),
                        health: if x.checks.is_empty() {
                            "unit state only".into()
                        } else if failing.is_empty() {
                            "ok".into()
                        } else {
                            failing.join("; ")
                        },
                        restarts: x.restarts,
                        last_failure: x
                            .last_failure
                            .as_ref()
                            .map(|f| f.reason.clone())
                            .unwrap_or_else(|| "–".into()),
                    }
                })
                .collect();
            (
                rows,
                sv.error
                    .clone()
                    .map(|e| format!("Cannot manage services: {e}"))
                    .unwrap_or_default(),
            )
        }
    };
    render(Services {
        nav: nav(s, st, "/services"),
        rows,
        note,
        msg,
    })
}

pub struct MeetingRow {
    pub name: String,
    pub participants: u32,
    pub moderators: u32,
    pub video: u32,
    pub kind: String,
}

pub struct MemberGroup {
    pub member: String,
    pub participants: u32,
    pub meetings: Vec<MeetingRow>,
}

#[derive(Template)]
#[template(path = "meetings.html")]
struct Meetings {
    nav: Nav,
    note: String,
    groups: Vec<MemberGroup>,
}

pub fn meetings(s: &Session, st: &Status) -> String {
    let mut groups: BTreeMap<String, MemberGroup> = BTreeMap::new();
    let note = match &st.bbb {
        None => "BigBlueButton is not configured on this node.".to_string(),
        Some(b) if !b.up => format!("BigBlueButton does not answer: {}", b.error.clone().unwrap_or_default()),
        Some(b) => {
            for m in b.list.iter().filter(|m| m.running) {
                let g = groups.entry(m.member.clone()).or_insert_with(|| MemberGroup {
                    member: m.member.clone(),
                    participants: 0,
                    meetings: vec![],
                });
                g.participants += m.participants;
                g.meetings.push(MeetingRow {
                    name: m.name.clone(),
                    participants: m.participants,
                    moderators: m.moderators,
                    video: m.video,
                    kind: match &m.parent {
                        Some(p) => format!("breakout room of {p}"),
                        None => "meeting".into(),
                    },
                });
            }
            format!("{} meetings running, {} participants.", b.meetings, b.participants)
        }
    };
    render(Meetings {
        nav: nav(s, st, "/meetings"),
        note,
        groups: groups.into_values().collect(),
    })
}

pub struct UnitOption {
    pub value: String,
    pub selected: bool,
}

pub struct LogRow {
    pub time: String,
    pub unit: String,
    pub level: &'static str,
    pub message: String,
}

#[derive(Template)]
#[template(path = "logs.html")]
struct Logs {
    nav: Nav,
    units: Vec<UnitOption>,
    contains: String,
    limit: usize,
    rows: Vec<LogRow>,
    error: Option<String>,
}

fn time_of(at: f64) -> String {
    let t = at as u64;
    let (h, m, s) = (t / 3600 % 24, t / 60 % 60, t % 60);
    format!("{h:02}:{m:02}:{s:02}")
}

pub fn logs(s: &Session, st: &Status, q: &LogQuery, lines: Result<Vec<LogLine>, crate::ActionError>) -> String {
    let current = q.unit.clone().unwrap_or_else(|| "appliance".into());
    let mut units = vec!["appliance".to_string()];
    if let Some(sv) = &st.services {
        units.extend(sv.services.iter().map(|x| x.unit.clone()));
    }
    let units = units
        .into_iter()
        .map(|u| UnitOption {
            selected: u == current,
            value: u,
        })
        .collect();
    let (rows, error) = match lines {
        Ok(l) => (
            l.into_iter()
                .map(|l| LogRow {
                    time: time_of(l.at),
                    unit: l.unit,
                    level: match l.priority {
                        0..=3 => "error",
                        4 => "warning",
                        5 | 6 => "info",
                        _ => "debug",
                    },
                    message: l.message,
                })
                .collect(),
            None,
        ),
        Err(e) => (vec![], Some(e.to_string())),
    };
    render(Logs {
        nav: nav(s, st, "/logs"),
        units,
        contains: q.contains.clone().unwrap_or_default(),
        limit: q.limit,
        rows,
        error,
    })
}

#[derive(Template)]
#[template(path = "updates.html")]
struct Updates<'a> {
    nav: Nav,
    msg: Option<&'a str>,
    /// (label, value) rows; empty while updates are off.
    rows: Vec<(&'static str, String)>,
    passed_over: Vec<String>,
    error: Option<String>,
    enabled: bool,
}

pub fn updates(s: &Session, st: &Status, msg: Option<&str>) -> String {
    let Some(u) = &st.update else {
        return render(Updates {
            nav: nav(s, st, "/updates"),
            msg,
            rows: vec![],
            passed_over: vec![],
            error: None,
            enabled: false,
        });
    };
    let mut rows = vec![("Running", u.running.clone()), ("Channel", u.channel.clone())];
    rows.push((
        "State",
        match (&u.probation, &u.available, &u.downloading) {
            (Some(p), _, _) => format!("{p} is on probation: it becomes final once its health checks pass"),
            (None, Some(a), Some((have, total))) => {
                format!("downloading {a}: {} of {}", format_bytes(*have), format_bytes(*total))
            }
            (None, Some(a), None) => match u.available_from {
                Some(t) if t > u.last_check.unwrap_or(0.0) => {
                    format!("{a} is published; this node's turn comes {}", datetime(t))
                }
                _ => format!("{a} is available; it is installed in the next maintenance window while no meeting runs"),
            },
            (None, None, _) if u.last_check.is_some() => "up to date".to_string(),
            (None, None, _) => "not checked yet".to_string(),
        },
    ));
    rows.push(("Last check", u.last_check.map_or("never".into(), datetime)));
    rows.push((
        "Maintenance window",
        format!(
            "{}{}",
            u.window,
            u.next_window
                .map(|t| format!(" (next opens {})", datetime(t)))
                .unwrap_or_default()
        ),
    ));
    if let Some(r) = &u.last_result {
        let what = match r.result.as_str() {
            "installed" => "installed",
            "rolled_back" => "rolled back",
            "failed" => "failed before installing",
            other => other,
        };
        rows.push((
            "Last update",
            format!(
                "{} {what}, {}{}",
                r.version,
                datetime(r.at),
                if r.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", r.reason)
                }
            ),
        ));
    }
    if let Some(p) = &u.previous {
        rows.push(("Previous version (kept for rollback)", p.clone()));
    }
    if let Some(f) = &u.floor {
        rows.push((
            "Version floor",
            format!("{f}: nothing older is installed unless global ops signs a downgrade"),
        ));
    }
    if !u.bad.is_empty() {
        rows.push(("Never retried (failed here)", u.bad.join(", ")));
    }
    rows.push(("Rollout position", format!("{} of 10,000", u.position)));
    render(Updates {
        nav: nav(s, st, "/updates"),
        msg,
        rows,
        passed_over: u.passed_over.clone(),
        error: u.error.clone(),
        enabled: true,
    })
}

#[derive(Template)]
#[template(path = "enrollment.html")]
struct Enrollment<'a> {
    nav: Nav,
    state: String,
    reports: String,
    enrolled: bool,
    msg: Option<&'a str>,
    /// The ops URL typed last time, kept after an error (the token is not).
    ops: &'a str,
}

pub fn enrollment(s: &Session, st: &Status, msg: Option<&str>, ops: &str) -> String {
    let (state, enrolled) = match &st.enrollment {
        Some(e) => (
            format!(
                "Enrolled with {} as node {} ({}) since {}.",
                e.ops,
                e.node,
                e.node_id,
                datetime(e.since)
            ),
            true,
        ),
        None => ("Not enrolled with global ops yet.".to_string(), false),
    };
    let reports = match &st.reports {
        None => "Usage accounting is not available on this node.".to_string(),
        Some(r) => {
            let last = r.last_success.map(datetime).unwrap_or_else(|| "never".into());
            let mut t = format!(
                "{} usage reports waiting to be sent; last acknowledged by ops: {last}.",
                r.queued
            );
            if let Some(e) = &r.refused {
                t.push_str(&format!(
                    " Global ops refuses the oldest report, which stays queued with the ones after it: {e}."
                ));
            }
            if let Some(e) = &r.send_error {
                t.push_str(&format!(" Last delivery problem: {e}."));
            }
            if let Some(e) = &r.write_error {
                t.push_str(&format!(" Reports cannot be written: {e}."));
            }
            if let Some(e) = &r.state_error {
                t.push_str(&format!(" Usage is not being counted or reported: {e}."));
            }
            t
        }
    };
    render(Enrollment {
        nav: nav(s, st, "/enrollment"),
        state,
        reports,
        enrolled,
        msg,
        ops,
    })
}

pub struct AuditRow {
    pub time: String,
    pub user: String,
    pub from: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct Audit {
    nav: Nav,
    rows: Vec<AuditRow>,
    failed: Vec<FailedRow>,
}

fn datetime(at: f64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at.max(0.0) as u64);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

pub struct FailedRow {
    pub from: String,
    pub since: String,
    pub last: String,
    pub attempts: u64,
    pub users: String,
    pub reason: String,
}

pub fn audit(
    s: &Session,
    st: &Status,
    entries: &[crate::audit::Entry],
    failed: &[crate::audit::FailedWindow],
) -> String {
    let rows = entries
        .iter()
        .rev()
        .map(|e| AuditRow {
            time: datetime(e.at),
            user: e.user.clone(),
            from: e.from.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            outcome: e.outcome.clone(),
        })
        .collect();
    let failed = failed
        .iter()
        .take(200)
        .map(|w| FailedRow {
            from: w.from.clone(),
            since: datetime(w.since),
            last: datetime(w.last),
            attempts: w.attempts,
            users: w.users.join(", "),
            reason: w.last_reason.clone(),
        })
        .collect();
    render(Audit {
        nav: nav(s, st, "/audit"),
        rows,
        failed,
    })
}

#[derive(Template)]
#[template(path = "settings.html")]
struct Settings<'a> {
    nav: Nav,
    fingerprint: String,
    expires: String,
    generated: bool,
    ssh: &'a appliance_api::SshView,
    /// (fingerprint, type, comment, added by, added when)
    ssh_keys: Vec<(String, String, String, String, String)>,
    msg: Option<&'a str>,
    rules: String,
}

/// A member as the Members page shows it: limits beside what it uses now.
struct MemberRow {
    slug: String,
    name: String,
    /// (what, in use now, limit) with "-" for no limit.
    uses: Vec<(&'static str, String, String)>,
    /// Secret ids, with the end of an overlap.
    secrets: Vec<String>,
    /// (what, value) this month: meeting hours, participant hours, peak
    /// participants (against the participant limit).
    month: Vec<(&'static str, String)>,
    participants: String,
    rooms: String,
    duration: String,
}

#[derive(Template)]
#[template(path = "members.html")]
struct Members<'a> {
    nav: Nav,
    rows: Vec<MemberRow>,
    msg: Option<&'a str>,
    /// (member, secret) just made: shown in this answer only.
    new_secret: Option<(&'a str, &'a str)>,
    bbb_note: String,
    /// `YYYY-MM` of the month the usage column covers.
    month: String,
}

pub fn members(
    s: &Session,
    st: &Status,
    list: &[appliance_members::MemberView],
    msg: Option<&str>,
    new_secret: Option<(&str, &str)>,
) -> String {
    let opt = |v: Option<u32>| v.map_or("-".to_string(), |n| n.to_string());
    let field = |v: Option<u32>| v.map_or(String::new(), |n| n.to_string());
    let live = st.bbb.as_ref().filter(|b| b.up);
    let bbb_note = match &st.bbb {
        None => "BigBlueButton is not configured on this node: nothing is in use.".to_string(),
        Some(b) if !b.up => "BigBlueButton does not answer: what is in use now is unknown.".to_string(),
        Some(_) => String::new(),
    };
    let this_month = st.reports.as_ref().and_then(|r| r.this_month.as_ref());
    let hours = |secs: u64| format!("{:.1}", secs as f64 / 3600.0);
    let rows = list
        .iter()
        .map(|m| {
            let used = this_month.and_then(|t| t.members.iter().find(|u| u.member == m.slug));
            let (meeting_s, participant_s, peak) = used.map_or((0, 0, 0), |u| {
                (u.meeting_seconds, u.participant_seconds, u.peak_participants)
            });
            let mine = || live.into_iter().flat_map(|b| &b.list).filter(|x| x.member == m.slug);
            let rooms = mine().filter(|x| !x.breakout).count();
            let people: u32 = mine().map(|x| x.participants).sum();
            let unknown = live.is_none();
            let now = |n: String| if unknown { "?".to_string() } else { n };
            MemberRow {
                slug: m.slug.clone(),
                name: m.name.clone(),
                uses: vec![
                    ("participants", now(people.to_string()), opt(m.limits.participants)),
                    ("rooms", now(rooms.to_string()), opt(m.limits.rooms)),
                ],
                secrets: m
                    .secrets
                    .iter()
                    .map(|x| match x.expires {
                        Some(e) => format!("{} (until {})", x.id, datetime(e as f64)),
                        None => x.id.to_string(),
                    })
                    .collect(),
                month: vec![
                    ("meeting hours", hours(meeting_s)),
                    ("participant hours", hours(participant_s)),
                    ("peak participants", format!("{peak} / {}", opt(m.limits.participants))),
                ],
                participants: field(m.limits.participants),
                rooms: field(m.limits.rooms),
                duration: field(m.limits.duration_minutes),
            }
        })
        .collect();
    render(Members {
        nav: nav(s, st, "/members"),
        rows,
        msg,
        new_secret,
        bbb_note,
        month: this_month.map_or_else(|| "-".to_string(), |t| t.month.clone()),
    })
}

pub fn settings(
    s: &Session,
    st: &Status,
    cert: &crate::CertificateView,
    ssh: &appliance_api::SshView,
    msg: Option<&str>,
) -> String {
    render(Settings {
        nav: nav(s, st, "/settings"),
        fingerprint: cert.fingerprint_sha256.clone(),
        expires: datetime(cert.not_after as f64),
        generated: cert.generated,
        ssh,
        ssh_keys: ssh
            .keys
            .iter()
            .map(|k| {
                (
                    k.fingerprint.clone(),
                    k.kind.clone(),
                    k.comment.clone(),
                    k.added_by.clone(),
                    datetime(k.added_at as f64),
                )
            })
            .collect(),
        msg,
        rules: crate::auth::password_rules(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_with(update: Option<appliance_api::UpdateView>) -> Status {
        serde_json::from_value::<Status>(serde_json::json!({
            "node": {"name": "n", "version": "0.2.0", "started_at": 0.0, "uptime_seconds": 1.0},
            "hardware": {"profile": "p", "description": "d", "reason": "r", "uplink": null},
            "health": {"status": "ok", "summary": "", "reasons": []},
            "alerts": [], "sensors": [], "monitor": null, "services": null, "bbb": null
        }))
        .map(|mut s| {
            s.update = update;
            s
        })
        .unwrap()
    }

    #[test]
    fn the_updates_page_says_what_is_going_on_and_only_operators_get_buttons() {
        let viewer = Session {
            user: "viewer".into(),
            role: Role::Viewer,
            csrf: "c".into(),
        };
        let operator = Session {
            user: "operator".into(),
            role: Role::Operator,
            csrf: "c".into(),
        };
        let off = updates(&operator, &status_with(None), None);
        assert!(off.contains("not set up") && !off.contains("Check now"), "{off}");
        let u = appliance_api::UpdateView {
            running: "0.2.0".into(),
            channel: "stable".into(),
            previous: Some("0.1.0".into()),
            floor: Some("0.2.0".into()),
            bad: vec!["0.2.1".into()],
            position: 4711,
            last_check: Some(1_764_090_000.0),
            available: Some("0.3.0".into()),
            available_from: Some(1_764_200_000.0),
            passed_over: vec!["0.9.0 is for channel beta, this node follows another".into()],
            window: "02:00-05:00 Europe/London".into(),
            next_window: Some(1_764_120_000.0),
            last_result: Some(appliance_api::UpdateResultView {
                version: "0.2.1".into(),
                result: "rolled_back".into(),
                reason: "health checks did not pass within 2m: BBB does not answer".into(),
                at: 1_764_000_000.0,
            }),
            ..Default::default()
        };
        let st = status_with(Some(u));
        let page = updates(&viewer, &st, None);
        for want in [
            "0.3.0 is published; this node&#39;s turn comes 2025-11-26 23:33:20 UTC",
            "0.2.1 rolled back",
            "BBB does not answer",
            "02:00-05:00 Europe/London",
            "4711 of 10,000",
            "channel beta",
            "Never retried",
        ] {
            assert!(page.contains(want), "viewer page should say {want:?}:\n{page}");
        }
        assert!(!page.contains("Install now"), "a viewer gets no buttons");
        let page = updates(&operator, &st, Some("checking for updates now"));
        assert!(page.contains("Install now") && page.contains("checking for updates now"));
    }

    #[test]
    fn dates() {
        assert_eq!(datetime(0.0), "1970-01-01 00:00:00 UTC");
        assert_eq!(datetime(1_764_090_000.0), "2025-11-25 17:00:00 UTC");
    }
}
