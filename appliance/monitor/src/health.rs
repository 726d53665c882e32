//! Which alert rules apply to a sample, their values, and the node's
//! overall health (the traffic light) with its reasons.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::alerts::{self, AlertState, Rule, Severity, Unit};
use crate::collector::{Snapshot, pick_uplink};
use crate::profile::HwProfile;

/// Thresholds of one kind of alert, as the config gives them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub warn: Option<f64>,
    pub critical: Option<f64>,
    /// How long a threshold must be exceeded before the alert fires.
    #[serde(rename = "for", with = "crate::serde_duration")]
    pub for_: Duration,
    /// How far below a threshold the value must fall to clear it.
    #[serde(default)]
    pub hysteresis: f64,
}

/// Temperature thresholds come from the hardware profile (or the driver);
/// the config sets only timing and hysteresis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperatureLimits {
    #[serde(rename = "for", with = "crate::serde_duration")]
    pub for_: Duration,
    pub hysteresis: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    pub cpu: Limits,
    pub memory: Limits,
    pub disk: Limits,
    pub bandwidth: Limits,
    pub temperature: TemperatureLimits,
}

impl Default for AlertConfig {
    fn default() -> Self {
        let l = |warn, critical, secs| Limits {
            warn: Some(warn),
            critical: Some(critical),
            for_: Duration::from_secs(secs),
            hysteresis: 0.05,
        };
        AlertConfig {
            // BBB's FAQ: audio degrades once the CPU passes 80 %.
            cpu: l(0.80, 0.95, 60),
            memory: l(0.85, 0.95, 60),
            disk: Limits {
                hysteresis: 0.01,
                ..l(0.85, 0.95, 0)
            },
            bandwidth: l(0.80, 0.95, 60),
            temperature: TemperatureLimits {
                for_: Duration::from_secs(60),
                hysteresis: 5.0,
            },
        }
    }
}

impl AlertConfig {
    /// Checks the values serde cannot: ranges and ordering. Returns the key
    /// and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, l) in [
            ("cpu", &self.cpu),
            ("memory", &self.memory),
            ("disk", &self.disk),
            ("bandwidth", &self.bandwidth),
        ] {
            for (k, v) in [("warn", l.warn), ("critical", l.critical)] {
                if let Some(v) = v {
                    if !(0.0..=1.0).contains(&v) {
                        return Err((
                            format!("alerts.{name}.{k}"),
                            format!("{v} is not a ratio between 0 and 1"),
                        ));
                    }
                }
            }
            if let (Some(w), Some(c)) = (l.warn, l.critical) {
                if w > c {
                    return Err((format!("alerts.{name}.warn"), format!("{w} is above critical ({c})")));
                }
            }
            if !(0.0..=1.0).contains(&l.hysteresis) {
                return Err((
                    format!("alerts.{name}.hysteresis"),
                    "must be a ratio between 0 and 1".into(),
                ));
            }
        }
        if !(0.0..=50.0).contains(&self.temperature.hysteresis) {
            return Err((
                "alerts.temperature.hysteresis".into(),
                "must be between 0 and 50 °C".into(),
            ));
        }
        Ok(())
    }
}

/// An alert as the status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: String,
    pub severity: Severity,
    pub reason: String,
    /// Unix time the current severity was entered.
    pub since: Option<f64>,
    pub value: Option<f64>,
    pub warn: Option<f64>,
    pub critical: Option<f64>,
}

/// The traffic light and why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: Severity,
    /// One line for the console and systemd's STATUS=.
    pub summary: String,
    /// Worst first.
    pub reasons: Vec<String>,
}

/// Alert states across samples.
/// Alert timing runs on a monotonic clock so a wall-clock step (NTP's
/// first sync on a box without a battery) cannot fire or clear alerts;
/// `since` is shown as wall-clock time through the last known offset.
#[derive(Debug, Default)]
pub struct Alerts {
    states: BTreeMap<String, (Rule, AlertState)>,
    unix_minus_mono: f64,
}

impl Alerts {
    /// Evaluates every rule that applies to `snap`; `now` is monotonic
    /// seconds. Alerts whose subject
    /// vanished (an unplugged disk's sensor) are dropped once they are ok,
    /// and kept while they are not, so a problem cannot hide by vanishing.
    pub fn evaluate(&mut self, snap: &Snapshot, profile: &HwProfile, cfg: &AlertConfig, now: f64) {
        self.unix_minus_mono = snap.timestamp - now;
        let observed = rules_for(snap, profile, cfg);
        let mut seen = std::collections::BTreeSet::new();
        for (rule, value) in observed {
            seen.insert(rule.id.clone());
            let entry = self
                .states
                .entry(rule.id.clone())
                .or_insert_with(|| (rule.clone(), AlertState::default()));
            entry.0 = rule;
            entry.1 = alerts::step(&entry.0, &entry.1, value, now);
        }
        self.states.retain(|id, (rule, state)| {
            if seen.contains(id) {
                return true;
            }
            *state = alerts::step(rule, state, None, now);
            state.severity != Severity::Ok
        });
    }

    /// Every alert that is not ok, worst first.
    pub fn active(&self) -> Vec<Alert> {
        let mut out: Vec<Alert> = self
            .states
            .values()
            .filter(|(_, s)| s.severity != Severity::Ok)
            .map(|(r, s)| Alert {
                id: r.id.clone(),
                severity: s.severity,
                reason: match (&r.message, s.severity) {
                    (Some(m), _) => m.clone(),
                    (None, _) => s.reason(r),
                },
                since: s.since.map(|t| t + self.unix_minus_mono),
                value: s.value,
                warn: r.warn,
                critical: r.critical,
            })
            .collect();
        out.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
        out
    }

    pub fn health(&self) -> Health {
        summarize(&self.active())
    }
}

/// The traffic light for a set of alerts (from any source), worst first.
pub fn summarize(alerts: &[Alert]) -> Health {
    let mut sorted: Vec<&Alert> = alerts.iter().filter(|a| a.severity != Severity::Ok).collect();
    sorted.sort_by(|a, b| b.severity.cmp(&a.severity).then_with(|| a.id.cmp(&b.id)));
    let status = sorted.first().map(|a| a.severity).unwrap_or_default();
    let summary = match sorted.len() {
        0 => "ok".to_string(),
        1 => format!("{status}: {}", sorted[0].reason),
        n => format!("{status}: {} (+{} more)", sorted[0].reason, n - 1),
    };
    Health {
        status,
        summary,
        reasons: sorted.into_iter().map(|a| a.reason.clone()).collect(),
    }
}

/// Thresholds for a temperature sensor: the profile's first matching rule,
/// else the driver's own limits when they make sense.
pub fn temperature_thresholds(
    profile: &HwProfile,
    chip: &str,
    label: &str,
    max: Option<f64>,
    crit: Option<f64>,
) -> (Option<f64>, Option<f64>) {
    if let Some(r) = profile.sensors.iter().find(|r| r.matches(chip, label)) {
        return (Some(r.warn), Some(r.critical));
    }
    match (max, crit) {
        (Some(m), Some(c)) if m < c => (Some(m), Some(c)),
        (Some(m), Some(_)) => (None, Some(m)),
        (m, c) => (m, c),
    }
}

/// The rules that apply to a sample, each with its current value.
pub fn rules_for(snap: &Snapshot, profile: &HwProfile, cfg: &AlertConfig) -> Vec<(Rule, Option<f64>)> {
    let mut out = Vec::new();
    let ratio = |id: &str, subject: String, l: &Limits| Rule {
        id: id.to_string(),
        subject,
        warn: l.warn,
        critical: l.critical,
        hysteresis: l.hysteresis,
        for_secs: l.for_.as_secs_f64(),
        unit: Unit::Ratio,
        message: None,
    };
    out.push((ratio("cpu", "CPU usage".into(), &cfg.cpu), snap.cpu.usage));
    if let Some(m) = &snap.memory {
        out.push((ratio("memory", "memory use".into(), &cfg.memory), m.used_ratio()));
    }
    for f in &snap.filesystems {
        out.push((
            ratio(
                &format!("disk:{}", f.path),
                format!("disk use of {}", f.path),
                &cfg.disk,
            ),
            f.used_ratio(),
        ));
    }
    if let Some(up) = pick_uplink(&profile.uplink.interface, &snap.network) {
        let capacity = profile.uplink.capacity_mbps.or(up.speed_mbps).filter(|c| *c > 0);
        if let Some(cap) = capacity {
            let bits = up.rx_rate.zip(up.tx_rate).map(|(r, t)| r.max(t) * 8.0);
            let value = bits.map(|b| b / (cap as f64 * 1e6));
            out.push((
                ratio(
                    &format!("bandwidth:{}", up.name),
                    format!("uplink {} bandwidth", up.name),
                    &cfg.bandwidth,
                ),
                value,
            ));
        }
    }
    for t in &snap.temperatures {
        let (warn, critical) = temperature_thresholds(profile, &t.chip, &t.label, t.max, t.crit);
        if warn.is_none() && critical.is_none() {
            continue;
        }
        out.push((
            Rule {
                id: format!("temperature:{}", t.sensor),
                subject: format!("{} temperature", t.sensor),
                warn,
                critical,
                hysteresis: cfg.temperature.hysteresis,
                for_secs: cfg.temperature.for_.as_secs_f64(),
                unit: Unit::Celsius,
                message: None,
            },
            Some(t.celsius),
        ));
    }
    for r in profile.sensors.iter().filter(|r| r.required) {
        let present = snap.temperatures.iter().any(|t| r.matches(&t.chip, &t.label));
        out.push((
            Rule {
                id: format!("sensor-missing:{}/{}", r.chip, r.label),
                subject: format!("sensor {}/{}", r.chip, r.label),
                warn: Some(1.0),
                critical: None,
                hysteresis: 0.0,
                for_secs: 0.0,
                unit: Unit::Plain,
                message: Some(format!(
                    "sensor {}/{} that profile {} requires is missing: temperatures are not fully watched",
                    r.chip, r.label, profile.name
                )),
            },
            Some(if present { 0.0 } else { 1.0 }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::{Cpu, Memory};
    use crate::profile::{Capacity, DmiMatch, SensorRule, Uplink};
    use crate::sysfs::Temperature;

    fn profile() -> HwProfile {
        HwProfile {
            name: "test".into(),
            description: String::new(),
            sources: vec![],
            matches: DmiMatch::default(),
            sensors: vec![
                SensorRule {
                    chip: "coretemp".into(),
                    label: "Package id *".into(),
                    warn: 80.0,
                    critical: 90.0,
                    required: true,
                },
                SensorRule {
                    chip: "k10temp".into(),
                    label: "Tctl".into(),
                    warn: 80.0,
                    critical: 90.0,
                    required: false,
                },
            ],
            uplink: Uplink::default(),
            capacity: Capacity::default(),
            boot: Default::default(),
        }
    }

    fn temp(chip: &str, label: &str, c: f64, max: Option<f64>, crit: Option<f64>) -> Temperature {
        Temperature {
            sensor: format!("{chip}/{label}"),
            chip: chip.into(),
            label: label.into(),
            celsius: c,
            max,
            crit,
            trips: vec![],
        }
    }

    fn cfg() -> AlertConfig {
        let mut c = AlertConfig::default();
        c.temperature.for_ = Duration::ZERO;
        c.cpu.for_ = Duration::ZERO;
        c
    }

    #[test]
    fn thresholds_prefer_profile_then_driver() {
        let p = profile();
        assert_eq!(
            temperature_thresholds(&p, "coretemp", "Package id 0", Some(70.0), Some(100.0)),
            (Some(80.0), Some(90.0))
        );
        assert_eq!(
            temperature_thresholds(&p, "nvme", "Composite", Some(70.0), Some(85.0)),
            (Some(70.0), Some(85.0))
        );
        assert_eq!(temperature_thresholds(&p, "nvme", "Sensor 1", None, None), (None, None));
        assert_eq!(
            temperature_thresholds(&p, "x", "y", Some(90.0), Some(80.0)),
            (None, Some(90.0))
        );
    }

    #[test]
    fn health_names_the_worst_reason_and_missing_sensors() {
        let p = profile();
        let mut snap = Snapshot {
            cpu: Cpu {
                usage: Some(0.5),
                ..Cpu::default()
            },
            memory: Some(Memory {
                total_bytes: 100,
                used_bytes: 10,
                available_bytes: 90,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
            }),
            ..Snapshot::default()
        };
        let mut a = Alerts::default();
        a.evaluate(&snap, &p, &cfg(), 0.0);
        let h = a.health();
        assert_eq!(h.status, Severity::Warning);
        assert_eq!(
            h.reasons,
            ["sensor coretemp/Package id * that profile test requires is missing: temperatures are not fully watched"]
        );

        snap.temperatures = vec![temp("coretemp", "Package id 0", 91.0, None, None)];
        snap.cpu.usage = Some(0.85);
        a.evaluate(&snap, &p, &cfg(), 1.0);
        let h = a.health();
        assert_eq!(h.status, Severity::Critical);
        assert_eq!(
            h.reasons,
            [
                "coretemp/Package id 0 temperature is 91.0 °C, above the critical threshold of 90.0 °C",
                "CPU usage is 85 %, above the warning threshold of 80 %",
            ]
        );
        assert_eq!(
            h.summary,
            "critical: coretemp/Package id 0 temperature is 91.0 °C, above the critical threshold of 90.0 °C (+1 more)"
        );

        // The hot sensor vanishes: its alert stays until it is seen to be ok.
        snap.temperatures.clear();
        snap.cpu.usage = Some(0.1);
        a.evaluate(&snap, &p, &cfg(), 2.0);
        let ids: Vec<String> = a.active().into_iter().map(|x| x.id).collect();
        assert_eq!(
            ids,
            [
                "temperature:coretemp/Package id 0",
                "sensor-missing:coretemp/Package id *"
            ]
        );
        snap.temperatures = vec![temp("coretemp", "Package id 0", 40.0, None, None)];
        a.evaluate(&snap, &p, &cfg(), 3.0);
        assert_eq!(a.health().status, Severity::Ok);
        assert_eq!(a.health().summary, "ok");
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = AlertConfig::default();
        assert!(c.validate().is_ok());
        c.cpu.warn = Some(80.0);
        assert_eq!(c.validate().unwrap_err().0, "alerts.cpu.warn");
        c = AlertConfig::default();
        c.disk.warn = Some(0.99);
        assert_eq!(c.validate().unwrap_err().0, "alerts.disk.warn");
    }
}
