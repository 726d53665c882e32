//! Threshold alerts with a minimum duration and hysteresis.
//!
//! [`step`] is a pure function: the rule, the alert's previous state, the
//! current value and the time go in; the new state comes out. Time is
//! seconds on any monotonic clock the caller picks.
//!
//! - A level is entered only after the value has stayed at or above its
//!   threshold for the rule's `for_secs` without a break.
//! - A level is left as soon as the value drops below threshold minus
//!   hysteresis, so a reading hovering at the threshold does not flap.
//! - With no value (sensor gone for a moment) the level is kept and any
//!   pending escalation starts over.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Ok,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// 0, 1, 2: the value of `appliance_health_status`.
    pub fn as_number(self) -> u8 {
        self as u8
    }
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An "above threshold" rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Stable identifier, e.g. `temperature:coretemp/Package id 0`.
    pub id: String,
    /// What is measured, for people: `coretemp/Package id 0 temperature`.
    pub subject: String,
    pub warn: Option<f64>,
    pub critical: Option<f64>,
    pub hysteresis: f64,
    pub for_secs: f64,
    /// How values are shown: "°C", "%" (values are ratios) or plain.
    pub unit: Unit,
    /// A fixed sentence for the non-ok reason, when the generic "X is V,
    /// above T" would say nothing useful (e.g. a missing sensor).
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Celsius,
    Ratio,
    Plain,
}

impl Unit {
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Celsius => format!("{v:.1} °C"),
            Unit::Ratio => format!("{:.0} %", v * 100.0),
            Unit::Plain => format!("{v}"),
        }
    }
}

/// The state of one alert between steps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertState {
    pub severity: Severity,
    /// When the current severity was entered.
    pub since: Option<f64>,
    pub value: Option<f64>,
    /// When the value last rose to the warning / critical threshold
    /// without falling below it since.
    above_warn_since: Option<f64>,
    above_crit_since: Option<f64>,
}

impl AlertState {
    /// A sentence saying why this alert is in its severity.
    pub fn reason(&self, rule: &Rule) -> String {
        let threshold = match self.severity {
            Severity::Ok => return format!("{} is normal", rule.subject),
            Severity::Warning => rule.warn,
            Severity::Critical => rule.critical,
        };
        let value = self
            .value
            .map(|v| rule.unit.format(v))
            .unwrap_or_else(|| "no reading".into());
        match threshold {
            Some(t) => format!(
                "{} is {value}, above the {} threshold of {}",
                rule.subject,
                self.severity,
                rule.unit.format(t)
            ),
            None => format!("{} is {value}", rule.subject),
        }
    }
}

/// Advances one alert by one observation.
pub fn step(rule: &Rule, prev: &AlertState, value: Option<f64>, now: f64) -> AlertState {
    let mut next = prev.clone();
    let Some(v) = value.filter(|v| v.is_finite()) else {
        next.above_warn_since = None;
        next.above_crit_since = None;
        next.value = None;
        return next;
    };
    next.value = Some(v);
    let at_or_above = |t: Option<f64>| t.is_some_and(|t| v >= t);
    next.above_warn_since = if at_or_above(rule.warn) {
        prev.above_warn_since.or(Some(now))
    } else {
        None
    };
    next.above_crit_since = if at_or_above(rule.critical) {
        prev.above_crit_since.or(Some(now))
    } else {
        None
    };

    let held = |since: Option<f64>| since.is_some_and(|s| now - s >= rule.for_secs);
    // Staying in a level needs only threshold minus hysteresis.
    let stays = |t: Option<f64>| t.is_some_and(|t| v > t - rule.hysteresis);

    let crit = held(next.above_crit_since) || (prev.severity == Severity::Critical && stays(rule.critical));
    let warn = held(next.above_warn_since) || (prev.severity >= Severity::Warning && stays(rule.warn));
    // A rule with only a critical threshold holds "warning" through nothing.
    let severity = if crit {
        Severity::Critical
    } else if warn && rule.warn.is_some() {
        Severity::Warning
    } else {
        Severity::Ok
    };
    if severity != prev.severity {
        next.severity = severity;
        next.since = Some(now);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(for_secs: f64) -> Rule {
        Rule {
            id: "temperature:cpu".into(),
            subject: "cpu temperature".into(),
            warn: Some(80.0),
            critical: Some(90.0),
            hysteresis: 5.0,
            for_secs,
            unit: Unit::Celsius,
            message: None,
        }
    }

    /// Runs a series of (time, value) through `step` and returns the
    /// severity after each.
    fn run(rule: &Rule, series: &[(f64, Option<f64>)]) -> Vec<Severity> {
        let mut s = AlertState::default();
        series
            .iter()
            .map(|(t, v)| {
                s = step(rule, &s, *v, *t);
                s.severity
            })
            .collect()
    }

    use Severity::{Critical as C, Ok as O, Warning as W};

    #[test]
    fn table() {
        // (name, minimum duration, (time, value) series, severities after each)
        type Case<'a> = (&'a str, f64, &'a [(f64, Option<f64>)], &'a [Severity]);
        let cases: &[Case] = &[
            (
                "no duration: immediate levels",
                0.0,
                &[
                    (0.0, Some(70.0)),
                    (1.0, Some(80.0)),
                    (2.0, Some(95.0)),
                    (3.0, Some(70.0)),
                ],
                &[O, W, C, O],
            ),
            (
                "must hold for the duration",
                60.0,
                &[
                    (0.0, Some(85.0)),
                    (30.0, Some(85.0)),
                    (59.0, Some(85.0)),
                    (60.0, Some(85.0)),
                ],
                &[O, O, O, W],
            ),
            (
                "a dip restarts the duration",
                60.0,
                &[
                    (0.0, Some(85.0)),
                    (50.0, Some(70.0)),
                    (60.0, Some(85.0)),
                    (110.0, Some(85.0)),
                    (120.0, Some(85.0)),
                ],
                &[O, O, O, O, W],
            ),
            (
                "critical also needs the duration, warning on the way",
                10.0,
                &[
                    (0.0, Some(85.0)),
                    (10.0, Some(95.0)),
                    (15.0, Some(95.0)),
                    (20.0, Some(95.0)),
                ],
                &[O, W, W, C],
            ),
            (
                "a jump straight past critical escalates once both held",
                10.0,
                &[(0.0, Some(95.0)), (9.0, Some(95.0)), (10.0, Some(95.0))],
                &[O, O, C],
            ),
            (
                "hysteresis holds critical until below 85",
                0.0,
                &[
                    (0.0, Some(91.0)),
                    (1.0, Some(89.0)),
                    (2.0, Some(85.5)),
                    (3.0, Some(85.0)),
                    (4.0, Some(80.0)),
                ],
                &[C, C, C, W, W],
            ),
            (
                "hysteresis holds warning until below 75",
                0.0,
                &[(0.0, Some(81.0)), (1.0, Some(76.0)), (2.0, Some(75.0))],
                &[W, W, O],
            ),
            (
                "critical drops straight to ok",
                0.0,
                &[(0.0, Some(95.0)), (1.0, Some(20.0))],
                &[C, O],
            ),
            (
                "missing value keeps the level",
                0.0,
                &[(0.0, Some(95.0)), (1.0, None), (2.0, Some(f64::NAN)), (3.0, Some(60.0))],
                &[C, C, C, O],
            ),
            (
                "missing value restarts a pending escalation",
                10.0,
                &[
                    (0.0, Some(85.0)),
                    (5.0, None),
                    (10.0, Some(85.0)),
                    (19.0, Some(85.0)),
                    (20.0, Some(85.0)),
                ],
                &[O, O, O, O, W],
            ),
        ];
        for (name, for_secs, series, want) in cases {
            assert_eq!(&run(&rule(*for_secs), series), want, "{name}");
        }
    }

    #[test]
    fn critical_only_rule() {
        let r = Rule {
            warn: None,
            ..rule(0.0)
        };
        assert_eq!(
            run(
                &r,
                &[
                    (0.0, Some(85.0)),
                    (1.0, Some(90.0)),
                    (2.0, Some(86.0)),
                    (3.0, Some(84.0))
                ]
            ),
            [O, C, C, O]
        );
    }

    #[test]
    fn since_and_reason() {
        let r = rule(0.0);
        let s = step(&r, &AlertState::default(), Some(92.3), 7.0);
        assert_eq!(s.since, Some(7.0));
        assert_eq!(
            s.reason(&r),
            "cpu temperature is 92.3 °C, above the critical threshold of 90.0 °C"
        );
        let s2 = step(&r, &s, Some(93.0), 8.0);
        assert_eq!(s2.since, Some(7.0), "since moves only on a change of level");
        let ratio = Rule {
            unit: Unit::Ratio,
            warn: Some(0.8),
            critical: Some(0.95),
            subject: "CPU usage".into(),
            ..rule(0.0)
        };
        let s = step(&ratio, &AlertState::default(), Some(0.83), 0.0);
        assert_eq!(
            s.reason(&ratio),
            "CPU usage is 83 %, above the warning threshold of 80 %"
        );
    }
}
