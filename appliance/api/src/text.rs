//! Plain-text rendering of the status for the terminal.

use std::fmt::Write;

use crate::Status;

/// Bytes in binary units, as people read disk and memory sizes.
pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Seconds as "3d 4h 5m", "4h 5m 6s" or "6s".
pub fn format_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

fn rate(bytes_per_s: Option<f64>) -> String {
    match bytes_per_s {
        None => "-".into(),
        Some(b) => {
            let bits = b * 8.0;
            if bits >= 1e9 {
                format!("{:.2} Gb/s", bits / 1e9)
            } else if bits >= 1e6 {
                format!("{:.2} Mb/s", bits / 1e6)
            } else {
                format!("{:.1} kb/s", bits / 1e3)
            }
        }
    }
}

fn pct(r: Option<f64>) -> String {
    r.map(|r| format!("{:.1} %", r * 100.0)).unwrap_or_else(|| "-".into())
}

/// The table printed by `appliance services`.
pub fn services_table(sv: &crate::ServicesStatus) -> String {
    let mut o = String::new();
    o.push_str("SERVICE                  STATE       UNIT STATE             HEALTH    RESTARTS  LAST FAILURE\n");
    for s in &sv.services {
        let health = if s.checks.is_empty() {
            "-".to_string()
        } else if s.checks.iter().all(|c| c.ok != Some(false)) {
            "ok".to_string()
        } else {
            "failing".to_string()
        };
        let unit_state = format!("{}/{}", s.active_state, s.sub_state);
        let last = s
            .last_failure
            .as_ref()
            .map(|f| f.reason.clone())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            o,
            "{:<24} {:<11} {:<22} {:<9} {:>8}  {last}",
            s.name, s.state, unit_state, health, s.restarts
        );
    }
    if let Some(e) = &sv.error {
        let _ = writeln!(o, "error: {e}");
    }
    o
}

pub(crate) fn render(st: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "node      {}", st.node.name);
    let _ = writeln!(o, "version   {}", st.node.version);
    let _ = writeln!(o, "uptime    {}", format_duration(st.node.uptime_seconds));
    let _ = writeln!(o, "hardware  {} ({})", st.hardware.profile, st.hardware.reason);
    let _ = writeln!(o, "health    {}", st.health.summary);
    if let Some(m) = &st.monitor {
        let load = m
            .cpu
            .load
            .map(|l| format!(", load {:.2} {:.2} {:.2}", l[0], l[1], l[2]))
            .unwrap_or_default();
        let _ = writeln!(o, "cpu       {} of {} cores{load}", pct(m.cpu.usage), m.cpu.cores.len());
        if let Some(mem) = &m.memory {
            let _ = writeln!(
                o,
                "memory    {} of {} used ({})",
                format_bytes(mem.used_bytes),
                format_bytes(mem.total_bytes),
                pct(mem.used_ratio())
            );
        }
        for f in &m.filesystems {
            let _ = writeln!(
                o,
                "disk      {} {} of {} used ({})",
                f.path,
                format_bytes(f.used_bytes),
                format_bytes(f.size_bytes),
                pct(f.used_ratio())
            );
        }
        for i in m.network.iter().filter(|i| !i.loopback) {
            let state = match i.up {
                Some(true) => "up",
                Some(false) => "down",
                None => "unknown",
            };
            let speed = i.speed_mbps.map(|s| format!(" {s} Mb/s")).unwrap_or_default();
            let _ = writeln!(
                o,
                "network   {} {state}{speed}, in {}, out {}",
                i.name,
                rate(i.rx_rate),
                rate(i.tx_rate)
            );
        }
    } else {
        let _ = writeln!(o, "monitor   no sample yet");
    }
    if st.sensors.is_empty() {
        let _ = writeln!(o, "sensors   none found");
    }
    for s in &st.sensors {
        let limits = match (s.warn, s.critical) {
            (Some(w), Some(c)) => format!(" (warn {w}, critical {c})"),
            (Some(w), None) => format!(" (warn {w})"),
            (None, Some(c)) => format!(" (critical {c})"),
            (None, None) => String::new(),
        };
        let _ = writeln!(o, "sensor    {} {:.1} °C {}{limits}", s.sensor, s.celsius, s.severity);
    }
    if let Some(b) = &st.bbb {
        match &b.error {
            None => {
                let _ = writeln!(o, "bbb       {} meetings, {} participants", b.meetings, b.participants);
            }
            Some(e) => {
                let _ = writeln!(o, "bbb       unreachable: {e}");
            }
        }
    }
    if let Some(sv) = &st.services {
        let up = sv.services.iter().filter(|s| s.up).count();
        let _ = writeln!(o, "services  {up} of {} up (recipe {})", sv.services.len(), sv.recipe);
        for s in sv.services.iter().filter(|s| !s.up || s.state != "ok") {
            let _ = writeln!(
                o,
                "service   {} {} ({}/{}){}",
                s.name,
                s.state,
                s.active_state,
                s.sub_state,
                s.detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
            );
        }
    }
    match &st.enrollment {
        Some(e) => {
            let _ = writeln!(o, "ops       enrolled with {} as {}", e.ops, e.node);
        }
        None => {
            let _ = writeln!(o, "ops       not enrolled");
        }
    }
    if let Some(r) = &st.reports {
        let _ = writeln!(
            o,
            "reports   {} waiting{}",
            r.queued,
            r.refused
                .as_ref()
                .map(|e| format!(", refused by ops: {e}"))
                .or_else(|| r.send_error.as_ref().map(|e| format!(", last problem: {e}")))
                .unwrap_or_default()
        );
    }
    if let Some(u) = &st.update {
        let mut line = format!("update    channel {}", u.channel);
        if let Some(p) = &u.probation {
            line.push_str(&format!(", {p} on probation"));
        } else if let Some(a) = &u.available {
            line.push_str(&format!(", {a} available"));
        } else if u.last_check.is_some() {
            line.push_str(", up to date");
        }
        if let Some(r) = &u.last_result {
            line.push_str(&format!(", last: {} {}", r.version, r.result.replace('_', " ")));
        }
        if let Some(e) = &u.error {
            line.push_str(&format!(", problem: {e}"));
        }
        let _ = writeln!(o, "{line}");
    }
    if st.alerts.is_empty() {
        let _ = writeln!(o, "alerts    none");
    }
    for a in &st.alerts {
        let _ = writeln!(o, "alert     {}: {}", a.severity, a.reason);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(64 * 1024 * 1024 * 1024), "64.0 GiB");
        assert_eq!(format_duration(59.9), "59s");
        assert_eq!(format_duration(3725.0), "1h 2m 5s");
        assert_eq!(format_duration(90061.0), "1d 1h 1m");
        assert_eq!(rate(Some(125_000.0)), "1.00 Mb/s");
        assert_eq!(rate(None), "-");
    }
}
