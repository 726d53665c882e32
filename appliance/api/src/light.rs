//! The traffic light: one verdict over everything a city cares about, with
//! its reasons in plain words. The monitor, the service runtime and the
//! reports task raise their own alerts; [`node_alerts`] adds what only the
//! whole status shows (BBB answering, enrollment, report delivery, the
//! certificate, updates), and [`apply`] folds them into the status. The
//! admin page, `/api/v1/status`, the console, `appliance status`, the
//! `appliance_health_status` metric and systemd's `STATUS=` all read the
//! result, so they cannot disagree.
//!
//! A check that cannot run is never "ok": no sample yet, BBB not asked
//! yet are warnings, not silence. (systemd out of reach is the service
//! runtime's own alert.)

use appliance_monitor::health::summarize;

use crate::{Alert, Severity, Status};

/// A certificate this close to its end is a warning: time enough for
/// someone to install a new one.
pub const CERTIFICATE_WARN_SECS: f64 = 21.0 * 86400.0;
/// Ops out of reach for a while is normal (reports wait on the node);
/// this long without a delivered report is not.
pub const REPORTS_LATE_SECS: f64 = 24.0 * 3600.0;
/// Update checks failing for this long need a look.
pub const UPDATE_CHECK_LATE_SECS: f64 = 24.0 * 3600.0;
/// A rolled-back or failed update stays on the light this long; the
/// Updates page keeps it after that.
pub const UPDATE_RESULT_SHOWN_SECS: f64 = 7.0 * 86400.0;

/// An alert about the node as a whole: no value or thresholds, no start
/// time of its own.
pub fn alert(id: &str, severity: Severity, reason: String) -> Alert {
    Alert {
        id: id.into(),
        severity,
        reason,
        since: None,
        value: None,
        warn: None,
        critical: None,
    }
}

/// "3 days", "5 hours", "12 minutes": how long, for a sentence.
fn span(secs: f64) -> String {
    let s = secs.max(0.0);
    let (n, unit) = if s >= 2.0 * 86400.0 {
        (s / 86400.0, "days")
    } else if s >= 2.0 * 3600.0 {
        (s / 3600.0, "hours")
    } else {
        (s / 60.0, "minutes")
    };
    format!("{:.0} {unit}", n.floor())
}

/// The alerts only the whole status shows. `now` is Unix seconds.
pub fn node_alerts(st: &Status, now: f64) -> Vec<Alert> {
    let mut out = Vec::new();
    if st.monitor.is_none() {
        out.push(alert(
            "monitor",
            Severity::Warning,
            "no hardware sample has been taken yet: CPU, memory, disks and temperatures are not watched".into(),
        ));
    }
    if let Some(b) = &st.bbb
        && !b.up
    {
        out.push(match &b.error {
            Some(e) => alert(
                "bbb",
                Severity::Critical,
                format!("BigBlueButton does not answer, so no meeting can start or be joined: {e}"),
            ),
            None => alert(
                "bbb",
                Severity::Warning,
                "BigBlueButton has not been asked yet whether it answers".into(),
            ),
        });
    }
    match &st.enrollment {
        None => out.push(alert(
            "enrollment",
            Severity::Warning,
            "not enrolled with global ops: usage is not reported and updates are not announced".into(),
        )),
        Some(e) => {
            if let Some(r) = &st.reports
                && let Some(err) = &r.send_error
            {
                let since = r.last_success.unwrap_or(e.since).max(e.since);
                if now - since > REPORTS_LATE_SECS {
                    out.push(alert(
                        "reports",
                        Severity::Warning,
                        format!(
                            "no usage report has reached global ops for {}; {} wait on the node: {err}",
                            span(now - since),
                            r.queued
                        ),
                    ));
                }
            }
        }
    }
    if let Some(c) = &st.certificate {
        let left = c.not_after as f64 - now;
        if left <= 0.0 {
            out.push(alert(
                "certificate",
                Severity::Critical,
                format!(
                    "the admin page's certificate expired {} ago: browsers refuse it",
                    span(-left)
                ),
            ));
        } else if left < CERTIFICATE_WARN_SECS {
            out.push(alert(
                "certificate",
                Severity::Warning,
                format!("the admin page's certificate expires in {}", span(left)),
            ));
        }
    }
    if let Some(u) = &st.update {
        if let Some(e) = &u.error {
            let late = u.last_check.is_none_or(|t| now - t > UPDATE_CHECK_LATE_SECS);
            if late {
                let when = match u.last_check {
                    Some(t) => format!("for {}", span(now - t)),
                    None => "since the supervisor started".into(),
                };
                out.push(alert(
                    "update-check",
                    Severity::Warning,
                    format!("updates could not be checked {when}: {e}"),
                ));
            }
        }
        let results = [
            ("update-result", "firmware", u.last_result.as_ref()),
            (
                "os-update-result",
                "OS",
                u.os.as_ref().and_then(|o| o.last_result.as_ref()),
            ),
        ];
        for (id, what, r) in results {
            if let Some(r) = r
                && r.result != "installed"
                && now - r.at < UPDATE_RESULT_SHOWN_SECS
            {
                let verb = match r.result.as_str() {
                    "rolled_back" => "was rolled back",
                    "failed" => "failed",
                    other => other,
                };
                let mut reason = format!("{what} update {} {verb}", r.version);
                if !r.reason.is_empty() {
                    reason.push_str(": ");
                    reason.push_str(&r.reason);
                }
                out.push(alert(id, Severity::Warning, reason));
            }
        }
    }
    out
}

/// Adds [`node_alerts`] to `st.alerts` (which hold the monitor's, the
/// services' and the reports' own) and sets `st.health` from all of them.
pub fn apply(st: &mut Status, now: f64) {
    let extra = node_alerts(st, now);
    st.alerts.retain(|a| !extra.iter().any(|x| x.id == a.id));
    st.alerts.extend(extra);
    st.alerts
        .sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
    st.health = summarize(&st.alerts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        BbbStatus, CertificateView, EnrollmentView, Hardware, Health, Node, OsUpdateView, ReportsView, ServicesStatus,
        Snapshot, UpdateResultView, UpdateView,
    };

    const NOW: f64 = 1_800_000_000.0;
    const DAY: f64 = 86400.0;

    /// A node where everything is fine: sampled, BBB answering, enrolled,
    /// reports delivered, a fresh certificate, updates checked.
    fn fine() -> Status {
        Status {
            node: Node {
                name: "n".into(),
                version: "1.0.0".into(),
                started_at: NOW - DAY,
                uptime_seconds: DAY,
                timezone: "UTC".into(),
            },
            hardware: Hardware {
                profile: "p".into(),
                description: "d".into(),
                reason: "r".into(),
                uplink: None,
                uplink_capacity_mbps: None,
            },
            health: Health::default(),
            alerts: vec![],
            sensors: vec![],
            monitor: Some(Snapshot::default()),
            services: Some(ServicesStatus::default()),
            bbb: Some(BbbStatus {
                up: true,
                last_ok: Some(NOW),
                ..BbbStatus::default()
            }),
            enrollment: Some(EnrollmentView {
                ops: "https://ops".into(),
                node: "n".into(),
                node_id: "id".into(),
                since: NOW - 30.0 * DAY,
            }),
            reports: Some(ReportsView {
                last_success: Some(NOW - 60.0),
                ..ReportsView::default()
            }),
            update: Some(UpdateView {
                running: "1.0.0".into(),
                last_check: Some(NOW - 3600.0),
                ..UpdateView::default()
            }),
            certificate: Some(CertificateView {
                fingerprint_sha256: "AA".into(),
                not_after: (NOW + 300.0 * DAY) as i64,
                generated: true,
            }),
            limits: None,
        }
    }

    fn result(version: &str, result: &str, reason: &str, at: f64) -> UpdateResultView {
        UpdateResultView {
            version: version.into(),
            result: result.into(),
            reason: reason.into(),
            at,
        }
    }

    /// Each case changes one thing of a fine node; the light must say
    /// exactly this colour and these reasons.
    #[test]
    fn the_light_and_its_reasons() {
        type Case = (&'static str, fn(&mut Status), Severity, &'static [&'static str]);
        let cases: &[Case] = &[
            ("all fine", |_| {}, Severity::Ok, &[]),
            (
                "BBB does not answer",
                |s| {
                    let b = s.bbb.as_mut().unwrap();
                    b.up = false;
                    b.error = Some("request failed: connection refused".into());
                },
                Severity::Critical,
                &[
                    "BigBlueButton does not answer, so no meeting can start or be joined: request failed: connection refused",
                ],
            ),
            (
                "BBB not asked yet",
                |s| s.bbb = Some(BbbStatus::default()),
                Severity::Warning,
                &["BigBlueButton has not been asked yet whether it answers"],
            ),
            ("no BBB configured", |s| s.bbb = None, Severity::Ok, &[]),
            (
                "no sample yet",
                |s| s.monitor = None,
                Severity::Warning,
                &["no hardware sample has been taken yet: CPU, memory, disks and temperatures are not watched"],
            ),
            (
                "not enrolled",
                |s| s.enrollment = None,
                Severity::Warning,
                &["not enrolled with global ops: usage is not reported and updates are not announced"],
            ),
            (
                "ops out of reach for an hour: reports wait, still fine",
                |s| {
                    let r = s.reports.as_mut().unwrap();
                    r.send_error = Some("connection refused".into());
                    r.last_success = Some(NOW - 3600.0);
                },
                Severity::Ok,
                &[],
            ),
            (
                "ops out of reach for three days",
                |s| {
                    let r = s.reports.as_mut().unwrap();
                    r.send_error = Some("connection refused".into());
                    r.last_success = Some(NOW - 3.0 * DAY);
                    r.queued = 72;
                },
                Severity::Warning,
                &["no usage report has reached global ops for 3 days; 72 wait on the node: connection refused"],
            ),
            (
                "never delivered since enrolling two days ago",
                |s| {
                    s.enrollment.as_mut().unwrap().since = NOW - 2.5 * DAY;
                    let r = s.reports.as_mut().unwrap();
                    r.send_error = Some("timed out".into());
                    r.last_success = None;
                    r.queued = 3;
                },
                Severity::Warning,
                &["no usage report has reached global ops for 2 days; 3 wait on the node: timed out"],
            ),
            (
                "certificate expires in ten days",
                |s| s.certificate.as_mut().unwrap().not_after = (NOW + 10.0 * DAY) as i64,
                Severity::Warning,
                &["the admin page's certificate expires in 10 days"],
            ),
            (
                "certificate expired",
                |s| s.certificate.as_mut().unwrap().not_after = (NOW - 3.0 * 3600.0) as i64,
                Severity::Critical,
                &["the admin page's certificate expired 3 hours ago: browsers refuse it"],
            ),
            (
                "update check failing for two days",
                |s| {
                    let u = s.update.as_mut().unwrap();
                    u.error = Some("repository unreachable".into());
                    u.last_check = Some(NOW - 2.0 * DAY);
                },
                Severity::Warning,
                &["updates could not be checked for 2 days: repository unreachable"],
            ),
            (
                "update check failed once, checked this morning",
                |s| {
                    let u = s.update.as_mut().unwrap();
                    u.error = Some("repository unreachable".into());
                    u.last_check = Some(NOW - 5.0 * 3600.0);
                },
                Severity::Ok,
                &[],
            ),
            (
                "update check never worked",
                |s| {
                    let u = s.update.as_mut().unwrap();
                    u.error = Some("metadata expired".into());
                    u.last_check = None;
                },
                Severity::Warning,
                &["updates could not be checked since the supervisor started: metadata expired"],
            ),
            (
                "firmware rolled back yesterday",
                |s| {
                    s.update.as_mut().unwrap().last_result =
                        Some(result("1.1.0", "rolled_back", "BBB does not answer", NOW - DAY));
                },
                Severity::Warning,
                &["firmware update 1.1.0 was rolled back: BBB does not answer"],
            ),
            (
                "firmware rolled back a month ago",
                |s| {
                    s.update.as_mut().unwrap().last_result =
                        Some(result("1.1.0", "rolled_back", "x", NOW - 30.0 * DAY));
                },
                Severity::Ok,
                &[],
            ),
            (
                "OS fell back, firmware installed",
                |s| {
                    let u = s.update.as_mut().unwrap();
                    u.last_result = Some(result("1.0.0", "installed", "", NOW - DAY));
                    u.os = Some(OsUpdateView {
                        last_result: Some(result(
                            "0.6.0",
                            "rolled_back",
                            "booted slot A after three tries",
                            NOW - 3600.0,
                        )),
                        ..OsUpdateView::default()
                    });
                },
                Severity::Warning,
                &["OS update 0.6.0 was rolled back: booted slot A after three tries"],
            ),
            (
                "worst first: a dead BBB before a missing enrollment",
                |s| {
                    s.enrollment = None;
                    s.bbb.as_mut().unwrap().up = false;
                    s.bbb.as_mut().unwrap().error = Some("timeout".into());
                },
                Severity::Critical,
                &[
                    "BigBlueButton does not answer, so no meeting can start or be joined: timeout",
                    "not enrolled with global ops: usage is not reported and updates are not announced",
                ],
            ),
        ];
        for (name, change, want, reasons) in cases {
            let mut st = fine();
            change(&mut st);
            apply(&mut st, NOW);
            assert_eq!(st.health.status, *want, "{name}: {:?}", st.health);
            assert_eq!(st.health.reasons, *reasons, "{name}");
        }
    }

    #[test]
    fn alerts_already_raised_are_kept_and_applying_twice_changes_nothing() {
        let mut st = fine();
        st.enrollment = None;
        st.alerts.push(alert(
            "service:nginx",
            Severity::Critical,
            "service nginx failed: x".into(),
        ));
        apply(&mut st, NOW);
        let once = st.clone();
        apply(&mut st, NOW);
        assert_eq!(st, once);
        assert_eq!(st.health.status, Severity::Critical);
        assert_eq!(st.health.summary, "critical: service nginx failed: x (+1 more)");
    }
}
