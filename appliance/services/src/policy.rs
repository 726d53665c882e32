//! The restart policy, as a pure function of a service's history, what is
//! observed now, and the time.
//!
//! - A dead unit (inactive or failed while it should run) is restarted at
//!   once; a running unit whose health check failed `failures` times in a
//!   row is restarted too, unless it is a core BBB service and meetings are
//!   running (then the restart is deferred and an alert says why).
//! - Restarts back off exponentially: the wait before the next restart is
//!   `backoff_initial * 2^(restarts in the window)`, capped at `backoff_max`.
//! - A crash loop (`crash_loop_restarts` restarts within
//!   `crash_loop_window`) makes the supervisor give up: the service is
//!   `failed`, a critical alert is raised, and nothing more is done until an
//!   operator resets it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::recipe::PolicyConfig;

/// systemd's ActiveState, reduced to what the policy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitActivity {
    Active,
    /// Starting, reloading, or waiting to be restarted by systemd itself.
    Activating,
    Deactivating,
    Inactive,
    Failed,
    /// Not loaded (not installed) or the state could not be read.
    Unknown,
}

impl UnitActivity {
    pub fn from_systemd(active_state: &str) -> UnitActivity {
        match active_state {
            "active" | "reloading" | "refreshing" => UnitActivity::Active,
            "activating" => UnitActivity::Activating,
            "deactivating" => UnitActivity::Deactivating,
            "inactive" => UnitActivity::Inactive,
            "failed" => UnitActivity::Failed,
            _ => UnitActivity::Unknown,
        }
    }
}

/// What is observed about one service right now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub unit: UnitActivity,
    /// The first health check that has failed its threshold, with its reason.
    pub failed_check: Option<String>,
    /// Whether BBB has meetings running (as last known).
    pub meetings_running: bool,
}

/// The supervisor's view of one service, kept between evaluations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Times (seconds, monotonic) of the supervisor's restarts still inside
    /// the crash-loop window.
    pub recent_restarts: Vec<f64>,
    pub restarts_total: u64,
    /// Set when the supervisor gave up; cleared by an operator reset.
    pub gave_up: Option<String>,
    /// The latest failure and when (monotonic seconds).
    pub last_failure: Option<(f64, String)>,
    /// Operator stopped the service: leave it alone.
    pub stopped_by_operator: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Healthy, or not ours to touch.
    Leave,
    /// Restart now (and its dependents after it).
    Restart { reason: String },
    /// Unhealthy, but the next restart must wait for the backoff.
    Wait { until: f64, reason: String },
    /// Unhealthy, but meetings are running and the unit itself is alive.
    Defer { reason: String },
    /// Crash loop: stop restarting until an operator resets the service.
    GiveUp { reason: String },
    /// Already given up; nothing is done.
    GivenUp { reason: String },
}

/// The wait after `n` restarts in the window.
pub fn backoff(cfg: &PolicyConfig, n: usize) -> Duration {
    let factor = 2u32.saturating_pow(n.min(31) as u32);
    cfg.backoff_initial.saturating_mul(factor).min(cfg.backoff_max)
}

/// Decides what to do about one service. `core` marks a core BBB service.
pub fn decide(cfg: &PolicyConfig, core: bool, h: &History, obs: &Observation, now: f64) -> Decision {
    if let Some(r) = &h.gave_up {
        return Decision::GivenUp { reason: r.clone() };
    }
    if h.stopped_by_operator {
        return Decision::Leave;
    }
    let reason = match (obs.unit, &obs.failed_check) {
        // systemd is busy with it (starting, or its own Restart=): wait.
        (UnitActivity::Activating | UnitActivity::Deactivating, _) => return Decision::Leave,
        (UnitActivity::Inactive, _) => "unit is inactive".to_string(),
        (UnitActivity::Failed, _) => "unit failed".to_string(),
        (UnitActivity::Unknown, _) => return Decision::Leave,
        (UnitActivity::Active, None) => return Decision::Leave,
        (UnitActivity::Active, Some(check)) => {
            if core && cfg.protect_meetings && obs.meetings_running {
                return Decision::Defer {
                    reason: format!("health check failed ({check}); restart deferred while meetings are running"),
                };
            }
            format!("health check failed ({check})")
        }
    };
    let window = cfg.crash_loop_window.as_secs_f64();
    let recent: Vec<f64> = h.recent_restarts.iter().copied().filter(|t| now - t < window).collect();
    if recent.len() as u32 >= cfg.crash_loop_restarts {
        return Decision::GiveUp {
            reason: format!(
                "{reason}; gave up after {} restarts within {}: an operator must reset it",
                recent.len(),
                humantime::format_duration(cfg.crash_loop_window)
            ),
        };
    }
    if let Some(last) = recent.iter().copied().reduce(f64::max) {
        // The wait grows with the restarts before the last one.
        let until = last + backoff(cfg, recent.len() - 1).as_secs_f64();
        if now < until {
            return Decision::Wait { until, reason };
        }
    }
    Decision::Restart { reason }
}

/// Records that the supervisor restarted the service at `now`.
pub fn record_restart(cfg: &PolicyConfig, h: &mut History, reason: &str, now: f64) {
    let window = cfg.crash_loop_window.as_secs_f64();
    h.recent_restarts.retain(|t| now - t < window);
    h.recent_restarts.push(now);
    h.restarts_total += 1;
    h.last_failure = Some((now, reason.to_string()));
}

/// An operator's reset: forget the crash loop and the backoff.
pub fn reset(h: &mut History) {
    h.gave_up = None;
    h.recent_restarts.clear();
    h.stopped_by_operator = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(60),
            crash_loop_restarts: 3,
            crash_loop_window: Duration::from_secs(600),
            protect_meetings: true,
            start_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = cfg();
        let got: Vec<u64> = (0..6).map(|n| backoff(&c, n).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 60, 60, 60]);
        assert_eq!(backoff(&c, 10_000).as_secs(), 60, "no overflow");
    }

    fn obs(unit: UnitActivity, check: Option<&str>, meetings: bool) -> Observation {
        Observation {
            unit,
            failed_check: check.map(str::to_string),
            meetings_running: meetings,
        }
    }

    fn kind(d: &Decision) -> &'static str {
        match d {
            Decision::Leave => "leave",
            Decision::Restart { .. } => "restart",
            Decision::Wait { .. } => "wait",
            Decision::Defer { .. } => "defer",
            Decision::GiveUp { .. } => "give-up",
            Decision::GivenUp { .. } => "given-up",
        }
    }

    use UnitActivity::*;

    #[test]
    fn decision_table() {
        let fresh = History::default();
        let restarted_at = |ts: &[f64]| History {
            recent_restarts: ts.to_vec(),
            ..History::default()
        };
        // (name, core, history, observation, now, expected)
        type Case<'a> = (&'a str, bool, History, Observation, f64, &'a str);
        let cases: Vec<Case> = vec![
            ("healthy", false, fresh.clone(), obs(Active, None, false), 0.0, "leave"),
            (
                "starting",
                false,
                fresh.clone(),
                obs(Activating, None, false),
                0.0,
                "leave",
            ),
            (
                "not installed",
                false,
                fresh.clone(),
                obs(Unknown, None, false),
                0.0,
                "leave",
            ),
            (
                "dead unit",
                false,
                fresh.clone(),
                obs(Failed, None, false),
                0.0,
                "restart",
            ),
            (
                "inactive unit",
                false,
                fresh.clone(),
                obs(Inactive, None, false),
                0.0,
                "restart",
            ),
            (
                "failed check",
                false,
                fresh.clone(),
                obs(Active, Some("http"), false),
                0.0,
                "restart",
            ),
            (
                "failed check, core, meetings",
                true,
                fresh.clone(),
                obs(Active, Some("http"), true),
                0.0,
                "defer",
            ),
            (
                "failed check, not core, meetings",
                false,
                fresh.clone(),
                obs(Active, Some("http"), true),
                0.0,
                "restart",
            ),
            (
                "dead core unit during meetings is still restarted",
                true,
                fresh.clone(),
                obs(Failed, None, true),
                0.0,
                "restart",
            ),
            (
                "core, no meetings",
                true,
                fresh.clone(),
                obs(Active, Some("http"), false),
                0.0,
                "restart",
            ),
            (
                "backoff after one restart: wait 10 s",
                false,
                restarted_at(&[100.0]),
                obs(Failed, None, false),
                105.0,
                "wait",
            ),
            (
                "backoff after one restart: then restart",
                false,
                restarted_at(&[100.0]),
                obs(Failed, None, false),
                110.0,
                "restart",
            ),
            (
                "backoff after two: 20 s",
                false,
                restarted_at(&[100.0, 110.0]),
                obs(Failed, None, false),
                125.0,
                "wait",
            ),
            (
                "backoff after two: then restart",
                false,
                restarted_at(&[100.0, 110.0]),
                obs(Failed, None, false),
                130.0,
                "restart",
            ),
            (
                "crash loop: third failure within window",
                false,
                restarted_at(&[100.0, 110.0, 130.0]),
                obs(Failed, None, false),
                200.0,
                "give-up",
            ),
            (
                "old restarts leave the window",
                false,
                restarted_at(&[0.0, 10.0, 30.0]),
                obs(Failed, None, false),
                700.0,
                "restart",
            ),
            (
                "given up stays given up",
                false,
                History {
                    gave_up: Some("x".into()),
                    ..History::default()
                },
                obs(Failed, None, false),
                0.0,
                "given-up",
            ),
            (
                "operator stop is respected",
                false,
                History {
                    stopped_by_operator: true,
                    ..History::default()
                },
                obs(Inactive, None, false),
                0.0,
                "leave",
            ),
        ];
        for (name, core, h, o, now, want) in cases {
            assert_eq!(kind(&decide(&cfg(), core, &h, &o, now)), want, "{name}");
        }
    }

    #[test]
    fn protect_meetings_can_be_turned_off() {
        let c = PolicyConfig {
            protect_meetings: false,
            ..cfg()
        };
        let d = decide(&c, true, &History::default(), &obs(Active, Some("http"), true), 0.0);
        assert_eq!(kind(&d), "restart");
    }

    #[test]
    fn a_crash_loop_run_gives_up_then_reset_restarts() {
        let c = cfg();
        let mut h = History::default();
        let mut now = 0.0;
        let mut restarts = 0;
        // The unit dies again right after every restart.
        loop {
            match decide(&c, false, &h, &obs(Failed, None, false), now) {
                Decision::Restart { reason } => {
                    record_restart(&c, &mut h, &reason, now);
                    restarts += 1;
                }
                Decision::Wait { until, .. } => now = until,
                Decision::GiveUp { reason } => {
                    assert!(reason.contains("gave up after 3 restarts within 10m"), "{reason}");
                    h.gave_up = Some(reason);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(restarts, 3);
        assert_eq!(now, 30.0, "restarts at 0, 10, 30");
        assert_eq!(
            kind(&decide(&c, false, &h, &obs(Failed, None, false), now + 1000.0)),
            "given-up"
        );
        reset(&mut h);
        assert_eq!(kind(&decide(&c, false, &h, &obs(Failed, None, false), now)), "restart");
        assert_eq!(h.restarts_total, 3);
    }
}
