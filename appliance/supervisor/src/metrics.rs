//! The Prometheus text exposition of `/metrics`, rendered from the latest
//! sample (never by reading sensors on scrape, so a scrape is cheap and
//! cannot stall on a slow sensor).

use std::fmt::Write;

use appliance_api::Status;

/// Builds an exposition: a family header, then its samples.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"");
                escape_label(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        if value.is_nan() {
            self.out.push_str("NaN");
        } else if value.is_infinite() {
            self.out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(self.out, "{value}");
        }
        self.out.push('\n');
    }

    /// A family with a single unlabelled sample, left out when unknown.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: Option<f64>) {
        self.family(name, kind, help);
        if let Some(v) = value {
            self.sample(name, &[], v);
        }
    }
}

fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Figures about the supervisor process itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads this process's figures from the real /proc (it is about this
    /// process, not the monitored box, so `procfs_root` does not apply).
    pub fn current() -> ProcessStats {
        let resident_bytes = std::fs::read_to_string("/proc/self/statm").ok().and_then(|t| {
            let pages: u64 = t.split_ascii_whitespace().nth(1)?.parse().ok()?;
            let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
                .ok()
                .flatten()? as u64;
            Some(pages * page)
        });
        let cpu_seconds = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .ok()
            .map(|u| {
                let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
                tv(u.user_time()) + tv(u.system_time())
            });
        ProcessStats {
            resident_bytes,
            cpu_seconds,
        }
    }
}

/// Renders `/metrics` from a status.
pub fn render(st: &Status, process: ProcessStats) -> String {
    let mut e = Exposition {
        out: String::with_capacity(8192),
    };
    e.family(
        "appliance_build_info",
        "gauge",
        "Firmware version of the supervisor; always 1.",
    );
    e.sample("appliance_build_info", &[("version", &st.node.version)], 1.0);
    e.family(
        "appliance_hardware_profile_info",
        "gauge",
        "The hardware profile in use; always 1.",
    );
    e.sample(
        "appliance_hardware_profile_info",
        &[("profile", &st.hardware.profile)],
        1.0,
    );
    e.single(
        "appliance_up_seconds",
        "gauge",
        "Seconds since the supervisor started.",
        Some(st.node.uptime_seconds),
    );
    e.single(
        "appliance_health_status",
        "gauge",
        "Overall health: 0 ok, 1 warning, 2 critical.",
        Some(st.health.status.as_number() as f64),
    );
    e.family(
        "appliance_alert_active",
        "gauge",
        "Alerts that are not ok, by id and severity; always 1.",
    );
    for a in &st.alerts {
        e.sample(
            "appliance_alert_active",
            &[("alert", &a.id), ("severity", a.severity.as_str())],
            1.0,
        );
    }

    let m = st.monitor.as_ref();
    let cpu = m.map(|m| &m.cpu);
    e.single(
        "appliance_cpu_usage_ratio",
        "gauge",
        "Busy share of all CPUs over the last interval, 0 to 1.",
        cpu.and_then(|c| c.usage),
    );
    e.family(
        "appliance_cpu_seconds_total",
        "counter",
        "Seconds all CPUs spent in each mode since boot (node_exporter's node_cpu_seconds_total, summed over CPUs).",
    );
    if let Some(t) = st.monitor.as_ref().and_then(|m| m.cpu.times) {
        for (mode, secs) in t.seconds() {
            e.sample("appliance_cpu_seconds_total", &[("mode", mode)], secs);
        }
    }
    e.family(
        "appliance_cpu_core_usage_ratio",
        "gauge",
        "Busy share of each CPU over the last interval, 0 to 1.",
    );
    for c in cpu.map(|c| c.cores.as_slice()).unwrap_or_default() {
        if let Some(u) = c.usage {
            e.sample("appliance_cpu_core_usage_ratio", &[("cpu", &c.cpu.to_string())], u);
        }
    }
    e.single(
        "appliance_cpus",
        "gauge",
        "Number of online CPUs.",
        cpu.map(|c| c.cores.len() as f64),
    );
    e.family(
        "appliance_load_average",
        "gauge",
        "Load average over 1, 5 and 15 minutes.",
    );
    if let Some(l) = cpu.and_then(|c| c.load) {
        for (p, v) in ["1m", "5m", "15m"].iter().zip(l) {
            e.sample("appliance_load_average", &[("period", p)], v);
        }
    }
    e.single(
        "appliance_cpu_pressure_ratio",
        "gauge",
        "Share of the last 10 s in which some task waited for a CPU (PSI).",
        cpu.and_then(|c| c.pressure),
    );
    e.family(
        "appliance_cpu_throttles_total",
        "counter",
        "Thermal throttling events since boot, by kind (core, package).",
    );
    if let Some(t) = cpu.and_then(|c| c.throttles) {
        e.sample("appliance_cpu_throttles_total", &[("kind", "core")], t.core as f64);
        e.sample(
            "appliance_cpu_throttles_total",
            &[("kind", "package")],
            t.package as f64,
        );
    }

    let mem = m.and_then(|m| m.memory);
    e.single(
        "appliance_memory_total_bytes",
        "gauge",
        "Physical memory.",
        mem.map(|m| m.total_bytes as f64),
    );
    e.single(
        "appliance_memory_used_bytes",
        "gauge",
        "Memory used by programs: total minus available.",
        mem.map(|m| m.used_bytes as f64),
    );
    e.single(
        "appliance_memory_available_bytes",
        "gauge",
        "Memory available for new work without swapping.",
        mem.map(|m| m.available_bytes as f64),
    );
    e.single(
        "appliance_swap_total_bytes",
        "gauge",
        "Swap space.",
        mem.map(|m| m.swap_total_bytes as f64),
    );
    e.single(
        "appliance_swap_used_bytes",
        "gauge",
        "Swap space in use.",
        mem.map(|m| m.swap_used_bytes as f64),
    );

    let filesystems = m.map(|m| m.filesystems.as_slice()).unwrap_or_default();
    for (name, help, get) in [
        (
            "appliance_filesystem_size_bytes",
            "Size of the filesystem holding a watched path.",
            (|f: &appliance_monitor::collector::Filesystem| f.size_bytes) as fn(&_) -> u64,
        ),
        (
            "appliance_filesystem_used_bytes",
            "Used space of the filesystem holding a watched path.",
            |f| f.used_bytes,
        ),
        (
            "appliance_filesystem_available_bytes",
            "Space available to unprivileged users.",
            |f| f.available_bytes,
        ),
    ] {
        e.family(name, "gauge", help);
        for f in filesystems {
            let mp = f.mountpoint.as_deref().unwrap_or("");
            e.sample(name, &[("path", &f.path), ("mountpoint", mp)], get(f) as f64);
        }
    }

    let ifaces = m.map(|m| m.network.as_slice()).unwrap_or_default();
    type Get = fn(&appliance_monitor::collector::Interface) -> u64;
    let counters: [(&str, &str, Get); 8] = [
        ("appliance_network_receive_bytes_total", "Bytes received.", |i| {
            i.rx_bytes
        }),
        ("appliance_network_transmit_bytes_total", "Bytes sent.", |i| i.tx_bytes),
        ("appliance_network_receive_packets_total", "Packets received.", |i| {
            i.rx_packets
        }),
        ("appliance_network_transmit_packets_total", "Packets sent.", |i| {
            i.tx_packets
        }),
        ("appliance_network_receive_errors_total", "Receive errors.", |i| {
            i.rx_errors
        }),
        ("appliance_network_transmit_errors_total", "Transmit errors.", |i| {
            i.tx_errors
        }),
        (
            "appliance_network_receive_drops_total",
            "Received packets dropped.",
            |i| i.rx_drops,
        ),
        (
            "appliance_network_transmit_drops_total",
            "Packets dropped on sending.",
            |i| i.tx_drops,
        ),
    ];
    for (name, help, get) in counters {
        e.family(name, "counter", help);
        for i in ifaces {
            e.sample(name, &[("device", &i.name)], get(i) as f64);
        }
    }
    e.family(
        "appliance_network_up",
        "gauge",
        "Whether the interface's operational state is up (1) or not (0).",
    );
    for i in ifaces {
        if let Some(up) = i.up {
            e.sample(
                "appliance_network_up",
                &[("device", &i.name)],
                if up { 1.0 } else { 0.0 },
            );
        }
    }
    e.family(
        "appliance_network_speed_bytes",
        "gauge",
        "Negotiated link speed in bytes per second.",
    );
    for i in ifaces {
        if let Some(s) = i.speed_mbps {
            e.sample(
                "appliance_network_speed_bytes",
                &[("device", &i.name)],
                s as f64 * 125_000.0,
            );
        }
    }

    e.family(
        "appliance_temperature_celsius",
        "gauge",
        "Temperature of each sensor (hwmon chip/label or thermal zone).",
    );
    for s in &st.sensors {
        e.sample("appliance_temperature_celsius", &[("sensor", &s.sensor)], s.celsius);
    }
    e.family(
        "appliance_temperature_warn_celsius",
        "gauge",
        "Warning threshold in force for the sensor.",
    );
    for s in &st.sensors {
        if let Some(w) = s.warn {
            e.sample("appliance_temperature_warn_celsius", &[("sensor", &s.sensor)], w);
        }
    }
    e.family(
        "appliance_temperature_critical_celsius",
        "gauge",
        "Critical threshold in force for the sensor.",
    );
    for s in &st.sensors {
        if let Some(c) = s.critical {
            e.sample("appliance_temperature_critical_celsius", &[("sensor", &s.sensor)], c);
        }
    }
    e.single(
        "appliance_sensor_problems",
        "gauge",
        "Sensor or kernel files that could not be read or believed in the last sample.",
        m.map(|m| m.problems.len() as f64),
    );

    // Declared even without a recipe or [bbb], so dashboards and alert
    // rules can be written against stable names.
    let services = st.services.as_ref().map(|s| s.services.as_slice()).unwrap_or_default();
    e.family(
        "appliance_service_up",
        "gauge",
        "Whether each recipe service is active and healthy (1) or not (0).",
    );
    for s in services {
        e.sample(
            "appliance_service_up",
            &[("service", &s.name)],
            if s.up { 1.0 } else { 0.0 },
        );
    }
    e.family(
        "appliance_service_restarts_total",
        "counter",
        "Restarts of each recipe service by the supervisor.",
    );
    for s in services {
        e.sample(
            "appliance_service_restarts_total",
            &[("service", &s.name)],
            s.restarts as f64,
        );
    }
    e.family(
        "appliance_service_systemd_restarts",
        "gauge",
        "Restarts systemd itself made of each unit (NRestarts).",
    );
    for s in services {
        e.sample(
            "appliance_service_systemd_restarts",
            &[("service", &s.name)],
            s.systemd_restarts as f64,
        );
    }
    e.family(
        "appliance_service_failed",
        "gauge",
        "1 when the supervisor gave up on a service and waits for an operator reset.",
    );
    for s in services {
        e.sample(
            "appliance_service_failed",
            &[("service", &s.name)],
            if s.state == "failed" { 1.0 } else { 0.0 },
        );
    }
    let bbb = st.bbb.as_ref();
    e.single(
        "appliance_bbb_up",
        "gauge",
        "Whether BBB's API answered the last getMeetings (1) or not (0).",
        bbb.map(|b| if b.up { 1.0 } else { 0.0 }),
    );
    e.single(
        "appliance_bbb_meetings",
        "gauge",
        "Meetings running on BigBlueButton.",
        bbb.filter(|b| b.up).map(|b| b.meetings as f64),
    );
    e.single(
        "appliance_bbb_participants",
        "gauge",
        "Participants in all running meetings.",
        bbb.filter(|b| b.up).map(|b| b.participants as f64),
    );
    e.single(
        "appliance_enrolled",
        "gauge",
        "Whether the node is enrolled with global ops (1) or not (0).",
        Some(if st.enrollment.is_some() { 1.0 } else { 0.0 }),
    );
    let reports = st.reports.as_ref();
    e.single(
        "appliance_report_queue_depth",
        "gauge",
        "Usage reports written and not yet acknowledged by global ops.",
        reports.map(|r| r.queued as f64),
    );
    e.single(
        "appliance_report_last_success_timestamp_seconds",
        "gauge",
        "Unix time global ops last acknowledged a usage report.",
        reports.and_then(|r| r.last_success),
    );
    if let Some(u) = &st.update {
        e.family(
            "appliance_update_info",
            "gauge",
            "The running version, the update channel and the rollout position; always 1.",
        );
        let position = u.position.to_string();
        e.sample(
            "appliance_update_info",
            &[
                ("running", &u.running),
                ("channel", &u.channel),
                ("position", &position),
            ],
            1.0,
        );
        e.single(
            "appliance_update_available",
            "gauge",
            "Whether a release for this node is published (1) or not (0).",
            Some(if u.available.is_some() { 1.0 } else { 0.0 }),
        );
        e.single(
            "appliance_update_probation",
            "gauge",
            "Whether the running version is on probation (installed, not yet committed).",
            Some(if u.probation.is_some() { 1.0 } else { 0.0 }),
        );
        e.single(
            "appliance_update_last_check_timestamp_seconds",
            "gauge",
            "Unix time of the last successful check of the update repository.",
            u.last_check,
        );
        e.single(
            "appliance_update_check_error",
            "gauge",
            "Whether the last update check or install failed (1) or not (0).",
            Some(if u.error.is_some() { 1.0 } else { 0.0 }),
        );
        e.single(
            "appliance_update_versions_marked_bad",
            "gauge",
            "Versions that failed on this node and are never retried.",
            Some(u.bad.len() as f64),
        );
        if let Some(r) = &u.last_result {
            e.family(
                "appliance_update_last_result",
                "gauge",
                "The last update's outcome (installed, rolled_back, failed) with its version; always 1.",
            );
            e.sample(
                "appliance_update_last_result",
                &[("version", &r.version), ("result", &r.result)],
                1.0,
            );
            e.single(
                "appliance_update_last_result_timestamp_seconds",
                "gauge",
                "Unix time of the last update's outcome.",
                Some(r.at),
            );
        }
    }

    e.single(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of the supervisor.",
        process.resident_bytes.map(|b| b as f64),
    );
    e.single(
        "process_cpu_seconds_total",
        "counter",
        "CPU time used by the supervisor.",
        process.cpu_seconds,
    );
    e.single(
        "process_start_time_seconds",
        "gauge",
        "Unix time the supervisor started.",
        Some(st.node.started_at),
    );
    e.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_special_values_spelled() {
        let mut e = Exposition { out: String::new() };
        e.sample("m", &[("sensor", "a\"b\\c\nd"), ("x", "y")], 1.5);
        e.sample("m", &[], f64::NAN);
        e.sample("m", &[], f64::INFINITY);
        assert_eq!(e.out, "m{sensor=\"a\\\"b\\\\c\\nd\",x=\"y\"} 1.5\nm NaN\nm +Inf\n");
    }
}
