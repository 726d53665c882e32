//! The real supervisor against recorded sysfs/procfs trees: exact values in
//! /metrics and `appliance status --json`, alert states with hysteresis,
//! sensors that vanish, appear and return garbage, counter resets.

use std::time::Duration;

use appliance_e2e::{Box_, Setup, Supervisor, metric, wait_for};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn start(b: &Box_, extra: &str) -> Supervisor {
    Supervisor::start(Setup {
        sysfs_root: &b.path("sys"),
        procfs_root: &b.path("proc"),
        extra,
    })
}

/// Waits until `/metrics` shows `series` equal to `want`.
fn wait_metric(s: &Supervisor, series: &str, want: f64) -> String {
    wait_for(&format!("{series} = {want}"), T, || {
        let m = s.metrics();
        match metric(&m, series) {
            Some(v) if v == want => Ok(m),
            other => Err(format!("{other:?}")),
        }
    })
}

fn sensor<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["sensors"].as_array()?.iter().find(|s| s["sensor"] == name)
}

#[test]
fn intel_box_exact_values() {
    let b = Box_::recorded("intel-coretemp-nvme");
    let s = start(&b, "");

    let m = s.metrics();
    let exact = [
        ("appliance_build_info{version=\"0.1.0\"}", 1.0),
        ("appliance_hardware_profile_info{profile=\"dell-poweredge-r650\"}", 1.0),
        ("appliance_temperature_celsius{sensor=\"coretemp/Package id 0\"}", 45.0),
        ("appliance_temperature_celsius{sensor=\"coretemp/Core 0\"}", 42.0),
        ("appliance_temperature_celsius{sensor=\"coretemp/Core 4\"}", 43.0),
        ("appliance_temperature_celsius{sensor=\"nvme/Composite\"}", 37.85),
        ("appliance_temperature_celsius{sensor=\"nvme/Sensor 2\"}", 41.85),
        ("appliance_temperature_celsius{sensor=\"acpitz/temp1\"}", 27.8),
        ("appliance_temperature_celsius{sensor=\"acpitz/thermal_zone0\"}", 27.8),
        (
            "appliance_temperature_celsius{sensor=\"x86_pkg_temp/thermal_zone1\"}",
            45.0,
        ),
        // Profile thresholds win over the driver's own (90/100 for coretemp).
        (
            "appliance_temperature_warn_celsius{sensor=\"coretemp/Package id 0\"}",
            85.0,
        ),
        (
            "appliance_temperature_critical_celsius{sensor=\"coretemp/Package id 0\"}",
            95.0,
        ),
        ("appliance_temperature_warn_celsius{sensor=\"nvme/Composite\"}", 70.0),
        ("appliance_memory_total_bytes", 67108864000.0),
        ("appliance_memory_used_bytes", 16777216000.0),
        ("appliance_memory_available_bytes", 50331648000.0),
        ("appliance_swap_used_bytes", 0.0),
        ("appliance_load_average{period=\"1m\"}", 0.52),
        ("appliance_load_average{period=\"15m\"}", 0.58),
        ("appliance_cpus", 4.0),
        ("appliance_cpu_pressure_ratio", 0.0125),
        ("appliance_cpu_throttles_total{kind=\"core\"}", 3.0),
        ("appliance_cpu_throttles_total{kind=\"package\"}", 5.0),
        (
            "appliance_network_receive_bytes_total{device=\"eno12399np0\"}",
            500000000000.0,
        ),
        (
            "appliance_network_transmit_bytes_total{device=\"eno12399np0\"}",
            2000000000000.0,
        ),
        ("appliance_network_receive_errors_total{device=\"eno12399np0\"}", 3.0),
        ("appliance_network_receive_drops_total{device=\"eno12399np0\"}", 120.0),
        ("appliance_network_transmit_drops_total{device=\"eno12399np0\"}", 7.0),
        ("appliance_network_up{device=\"eno12399np0\"}", 1.0),
        ("appliance_network_up{device=\"eno12409np1\"}", 0.0),
        ("appliance_network_speed_bytes{device=\"eno12399np0\"}", 1.25e9),
        // Not enrolled with ops: yellow (the light's own table test covers green).
        ("appliance_health_status", 1.0),
    ];
    for (series, want) in exact {
        assert_eq!(metric(&m, series), Some(want), "{series}\n{m}");
    }
    // Garbage limits are dropped, not shown as thresholds.
    assert_eq!(
        metric(&m, "appliance_temperature_critical_celsius{sensor=\"acpitz/temp1\"}"),
        None
    );
    assert_eq!(
        metric(
            &m,
            "appliance_temperature_critical_celsius{sensor=\"acpitz/thermal_zone0\"}"
        ),
        Some(95.0),
        "from the profile"
    );
    // A link whose speed reads -1 has no speed sample.
    assert_eq!(
        metric(&m, "appliance_network_speed_bytes{device=\"eno12409np1\"}"),
        None
    );
    // The families product.md names are all declared.
    for name in [
        "appliance_cpu_usage_ratio",
        "appliance_service_up",
        "appliance_service_restarts_total",
        "appliance_bbb_meetings",
        "appliance_bbb_participants",
    ] {
        assert!(m.contains(&format!("# TYPE {name} ")), "{name} missing");
    }

    // CPU usage needs two samples: advance the counters by a known step.
    // total +400 jiffies, idle +100: usage 0.75. cpu0 fully busy, cpu1 idle.
    let stat = std::fs::read_to_string(b.path("proc/stat")).unwrap();
    let bumped: String = stat
        .lines()
        .map(|l| {
            let mut f: Vec<String> = l.split_whitespace().map(str::to_string).collect();
            let add = |f: &mut Vec<String>, i: usize, d: u64| f[i] = (f[i].parse::<u64>().unwrap() + d).to_string();
            match f.first().map(String::as_str) {
                Some("cpu") => {
                    add(&mut f, 1, 300);
                    add(&mut f, 4, 100);
                }
                Some("cpu0") => add(&mut f, 1, 200),
                Some("cpu1") => add(&mut f, 4, 200),
                _ => {}
            }
            f.join(" ") + "\n"
        })
        .collect();
    b.write("proc/stat", &bumped);
    let m = wait_metric(&s, "appliance_cpu_usage_ratio", 0.75);
    assert_eq!(metric(&m, "appliance_cpu_core_usage_ratio{cpu=\"0\"}"), Some(1.0));
    assert_eq!(metric(&m, "appliance_cpu_core_usage_ratio{cpu=\"1\"}"), Some(0.0));

    let st = s.status_json();
    assert_eq!(st["node"]["name"], "test-node");
    assert_eq!(st["hardware"]["profile"], "dell-poweredge-r650");
    assert_eq!(
        st["hardware"]["reason"],
        "sys_vendor=\"Dell Inc.\" matches \"Dell Inc.\", product_name=\"PowerEdge R650\" matches \"PowerEdge R650\""
    );
    assert_eq!(st["hardware"]["uplink"], "eno12399np0");
    assert_only_unenrolled(&st);
    let pkg = sensor(&st, "coretemp/Package id 0").expect("package sensor");
    assert_eq!(
        (pkg["celsius"].as_f64(), pkg["warn"].as_f64(), pkg["critical"].as_f64()),
        (Some(45.0), Some(85.0), Some(95.0))
    );
    assert_eq!(pkg["severity"], "ok");
    assert_eq!(st["sensors"].as_array().unwrap().len(), 11, "9 hwmon + 2 thermal zones");
    assert_eq!(st["monitor"]["memory"]["used_bytes"], 16777216000u64);
    assert_eq!(st["monitor"]["host_uptime_seconds"], 86400.0);
    // The 256 °C and THERMAL_TEMP_INVALID trip points are reported, not used.
    assert_eq!(
        st["monitor"]["problems"].as_array().unwrap().len(),
        3,
        "{}",
        st["monitor"]["problems"]
    );

    // The human form carries the same facts.
    let out = s.cli(&["status"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("hardware  dell-poweredge-r650"), "{text}");
    assert!(
        text.contains("sensor    coretemp/Package id 0 45.0 °C ok (warn 85, critical 95)"),
        "{text}"
    );
    assert!(text.contains("memory    15.6 GiB of 62.5 GiB used (25.0 %)"), "{text}");
}

#[test]
fn amd_box_names_duplicate_chips_and_skips_virtual_uplinks() {
    let b = Box_::recorded("amd-k10temp");
    let s = start(&b, "");
    let m = s.metrics();
    for (series, want) in [
        (
            "appliance_hardware_profile_info{profile=\"hpe-proliant-dl325-gen10-plus\"}",
            1.0,
        ),
        ("appliance_temperature_celsius{sensor=\"k10temp/Tctl\"}", 52.75),
        ("appliance_temperature_celsius{sensor=\"k10temp/Tccd1\"}", 48.5),
        ("appliance_temperature_celsius{sensor=\"k10temp/Tccd4\"}", 49.125),
        ("appliance_temperature_celsius{sensor=\"nvme:nvme0/Composite\"}", 36.85),
        ("appliance_temperature_celsius{sensor=\"nvme:nvme1/Composite\"}", 39.85),
        ("appliance_temperature_warn_celsius{sensor=\"k10temp/Tctl\"}", 80.0),
        ("appliance_temperature_critical_celsius{sensor=\"k10temp/Tctl\"}", 90.0),
        ("appliance_memory_used_bytes", 33554432000.0),
        ("appliance_cpus", 8.0),
        (
            "appliance_network_receive_bytes_total{device=\"ens1f0np0\"}",
            1200000000000.0,
        ),
        ("appliance_network_receive_drops_total{device=\"ens1f0np0\"}", 42.0),
    ] {
        assert_eq!(metric(&m, series), Some(want), "{series}");
    }
    assert!(
        !m.contains("appliance_cpu_throttles_total{"),
        "no throttle counters on this box"
    );
    let st = s.status_json();
    assert_eq!(st["hardware"]["uplink"], "ens1f0np0");
    assert_only_unenrolled(&st);
    // Tctl has no driver limits; the profile supplies them.
    let tctl = sensor(&st, "k10temp/Tctl").unwrap();
    assert_eq!(
        (tctl["warn"].as_f64(), tctl["critical"].as_f64()),
        (Some(80.0), Some(90.0))
    );
}

#[test]
fn box_without_sensors() {
    let b = Box_::recorded("no-sensors");
    let s = start(&b, "");
    let m = s.metrics();
    assert_eq!(
        metric(&m, "appliance_hardware_profile_info{profile=\"qemu\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&m, "appliance_memory_used_bytes"), Some(1048576000.0));
    assert_eq!(metric(&m, "appliance_sensor_problems"), Some(0.0));
    assert!(!m.contains("appliance_temperature_celsius{"), "no temperature samples");
    assert!(
        m.contains("# TYPE appliance_temperature_celsius gauge"),
        "the family is still declared"
    );
    let st = s.status_json();
    assert_eq!(st["sensors"], Value::Array(vec![]));
    assert_only_unenrolled(&st);
    let text = String::from_utf8(s.cli(&["status"]).stdout).unwrap();
    assert!(text.contains("sensors   none found"), "{text}");
}

/// Severity of the package temperature alert, and the value the supervisor
/// last read, from one status document (both come from the same sample).
/// These nodes are never enrolled: the light is yellow for that, and for
/// nothing else.
fn assert_only_unenrolled(st: &Value) {
    assert_eq!(st["health"]["status"], "warning", "{st}");
    assert_eq!(
        st["health"]["reasons"],
        serde_json::json!(["not enrolled with global ops: usage is not reported and updates are not announced"])
    );
    let ids: Vec<&str> = st["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, ["enrollment"]);
}

fn package_alert(s: &Supervisor) -> (String, f64) {
    let st = s.status_json();
    let celsius = sensor(&st, "coretemp/Package id 0")
        .and_then(|x| x["celsius"].as_f64())
        .unwrap_or(f64::NAN);
    let sev = st["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "temperature:coretemp/Package id 0")
        .map(|a| a["severity"].as_str().unwrap().to_string())
        .unwrap_or_else(|| "ok".into());
    (sev, celsius)
}

/// Sets the package temperature and waits until the supervisor has read it;
/// returns the alert severity in that same sample.
fn set_package(b: &Box_, s: &Supervisor, celsius: f64) -> String {
    b.write(
        "sys/class/hwmon/hwmon2/temp1_input",
        &format!("{}\n", (celsius * 1000.0) as i64),
    );
    wait_for(&format!("package at {celsius}"), T, || {
        let (sev, c) = package_alert(s);
        if c == celsius {
            Ok(sev)
        } else {
            Err(format!("read {c}"))
        }
    })
}

#[test]
fn temperature_alert_warns_then_critical_then_back_with_hysteresis() {
    let b = Box_::recorded("intel-coretemp-nvme");
    // Profile: warn 85, critical 95. Hysteresis 5 °C, minimum duration 1 s.
    let s = start(&b, "[alerts]\ntemperature = { for = \"1s\", hysteresis = 5.0 }\n");
    assert_eq!(set_package(&b, &s, 84.0), "ok");

    // Above warn: not at once, only after the minimum duration.
    let t0 = std::time::Instant::now();
    let first = set_package(&b, &s, 87.0);
    assert!(
        first == "ok" || t0.elapsed() >= Duration::from_secs(1),
        "warned before 1 s had passed"
    );
    wait_for("warning", T, || match package_alert(&s).0.as_str() {
        "warning" => Ok(()),
        other => Err(other.to_string()),
    });
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "warning fired after {:?}, before the 1 s minimum",
        t0.elapsed()
    );
    let st = s.status_json();
    assert_eq!(st["health"]["status"], "warning");
    assert_eq!(
        st["health"]["reasons"],
        serde_json::json!([
            "not enrolled with global ops: usage is not reported and updates are not announced",
            "coretemp/Package id 0 temperature is 87.0 °C, above the warning threshold of 85.0 °C"
        ]),
        "equal severity: sorted by alert id"
    );
    assert_eq!(metric(&s.metrics(), "appliance_health_status"), Some(1.0));

    set_package(&b, &s, 96.0);
    wait_for("critical", T, || match package_alert(&s).0.as_str() {
        "critical" => Ok(()),
        other => Err(other.to_string()),
    });
    let m = s.metrics();
    assert_eq!(metric(&m, "appliance_health_status"), Some(2.0));
    assert_eq!(
        metric(
            &m,
            "appliance_alert_active{alert=\"temperature:coretemp/Package id 0\",severity=\"critical\"}"
        ),
        Some(1.0)
    );

    // Back down: hysteresis keeps each level until 5 °C below its threshold.
    assert_eq!(set_package(&b, &s, 92.0), "critical", "92 > 95 - 5");
    assert_eq!(set_package(&b, &s, 90.5), "critical", "90.5 > 90");
    assert_eq!(
        set_package(&b, &s, 89.0),
        "warning",
        "below 90: critical clears, warning holds"
    );
    assert_eq!(set_package(&b, &s, 81.0), "warning", "81 > 85 - 5");
    assert_eq!(set_package(&b, &s, 79.0), "ok", "below 80: clear");
    let st = s.status_json();
    assert_only_unenrolled(&st);
    assert_eq!(
        metric(&s.metrics(), "appliance_health_status"),
        Some(1.0),
        "the node is not enrolled: yellow, not green"
    );
    let log = s.log_text();
    assert!(log.contains("alert temperature:coretemp/Package id 0: coretemp/Package id 0 temperature is 96.0 °C, above the critical threshold"), "{log}");
    assert!(log.contains("alert temperature:coretemp/Package id 0 cleared"), "{log}");
}

#[test]
fn sensors_vanish_appear_and_return_garbage() {
    let b = Box_::recorded("intel-coretemp-nvme");
    let s = start(&b, "");
    wait_metric(&s, "appliance_temperature_celsius{sensor=\"nvme/Composite\"}", 37.85);

    // The NVMe drive is pulled: its chip directory vanishes.
    std::fs::remove_dir_all(b.path("sys/class/hwmon/hwmon1")).unwrap();
    wait_for("nvme sensors to vanish", T, || {
        let m = s.metrics();
        if m.contains("sensor=\"nvme/") {
            Err("still there".into())
        } else {
            Ok(())
        }
    });
    // A core sensor returns garbage, another reads as an I/O error would.
    b.write("sys/class/hwmon/hwmon2/temp2_input", "not-a-number\n");
    b.write("sys/class/hwmon/hwmon2/temp3_input", "0\n");
    let m = wait_metric(&s, "appliance_sensor_problems", 5.0);
    assert_eq!(
        metric(&m, "appliance_temperature_celsius{sensor=\"coretemp/Core 0\"}"),
        None
    );
    assert_eq!(
        metric(&m, "appliance_temperature_celsius{sensor=\"coretemp/Core 1\"}"),
        None
    );
    assert_eq!(
        metric(&m, "appliance_temperature_celsius{sensor=\"coretemp/Package id 0\"}"),
        Some(45.0)
    );
    let st = s.status_json();
    let problems = st["monitor"]["problems"].to_string();
    assert!(problems.contains("not a number"), "{problems}");
    assert!(problems.contains("implausible reading 0"), "{problems}");
    // The garbage is logged once, not every second.
    let log = s.log_text();
    assert_eq!(log.matches("temp2_input: not a number").count(), 1, "{log}");

    // A new drive appears as a new chip.
    let d = b.path("sys/class/hwmon/hwmon7");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("name"), "drivetemp\n").unwrap();
    std::fs::write(d.join("temp1_input"), "33000\n").unwrap();
    wait_metric(&s, "appliance_temperature_celsius{sensor=\"drivetemp/temp1\"}", 33.0);
    // Every sensor gone at once (a container, or sysfs unmounted).
    std::fs::remove_dir_all(b.path("sys/class/hwmon")).unwrap();
    std::fs::remove_dir_all(b.path("sys/class/thermal")).unwrap();
    wait_for("no temperatures", T, || {
        let m = s.metrics();
        if m.contains("appliance_temperature_celsius{") {
            Err("still some".into())
        } else {
            Ok(())
        }
    });
    assert_eq!(s.get("/healthz").unwrap().status, 200);
}

#[test]
fn network_counters_survive_reset_and_give_rates() {
    let b = Box_::recorded("intel-coretemp-nvme");
    let s = start(&b, "");
    let dev = std::fs::read_to_string(b.path("proc/net/dev")).unwrap();
    // The NIC driver reloads: its counters restart near zero.
    let reset = dev.replace("500000000000", "1000");
    assert_ne!(reset, dev);
    b.write("proc/net/dev", &reset);
    wait_metric(
        &s,
        "appliance_network_receive_bytes_total{device=\"eno12399np0\"}",
        500000001000.0,
    );
    // Garbage line for one interface: the others are still read.
    let garbage = reset.replace("eno12409np1:", "eno12409np1: x y z");
    b.write("proc/net/dev", &garbage);
    let m = wait_for("eno12409np1 gone", T, || {
        let m = s.metrics();
        if m.contains("device=\"eno12409np1\"") {
            Err("still there".into())
        } else {
            Ok(m)
        }
    });
    assert_eq!(
        metric(&m, "appliance_network_receive_bytes_total{device=\"eno12399np0\"}"),
        Some(500000001000.0)
    );
}

#[test]
fn history_and_certificate_survive_a_restart() {
    let b = Box_::recorded("no-sensors");
    let mut s = start(&b, "");
    let fp = s.cert_fingerprint().unwrap();
    wait_for("history saved", T, || {
        if s.state_dir.join("history.bin").exists() {
            Ok(())
        } else {
            Err("no file".into())
        }
    });
    assert_eq!(s.stop(), Some(0), "clean exit on SIGTERM");
    assert!(!s.state_dir.join("control.sock").exists(), "socket removed on exit");
    let mode = std::fs::metadata(&s.state_dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o750);
    let key_mode = std::fs::metadata(s.state_dir.join("tls/admin-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let dir = s.config.parent().unwrap().to_path_buf();
    let s2 = Supervisor::start_with(
        s.config.clone(),
        s.state_dir.clone(),
        s.addr,
        std::sync::Arc::new(tempfile::TempDir::new_in(&dir).unwrap()),
    );
    assert_eq!(s2.cert_fingerprint().unwrap(), fp, "same certificate after restart");
    let log = s2.log_text();
    assert!(
        log.contains("graph history: ") && log.contains(" series from "),
        "{log}"
    );
    let sock = std::fs::metadata(s2.state_dir.join("control.sock")).unwrap();
    assert_eq!(sock.permissions().mode() & 0o777, 0o660);
}

/// systemd's notify protocol, spoken to a datagram socket of the test's:
/// READY=1 once serving, STATUS= with the one-line health, and watchdog
/// pings while the sampler runs.
#[test]
fn notifies_systemd_ready_status_and_watchdog() {
    let b = Box_::recorded("no-sensors");
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let s = Supervisor::start_env(
        Setup {
            sysfs_root: &b.path("sys"),
            procfs_root: &b.path("proc"),
            extra: "",
        },
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = String::new();
    wait_for("READY, STATUS and two watchdog pings", T, || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
        let ok = seen.contains("READY=1")
            && seen.contains("STATUS=warning: not enrolled with global ops")
            && seen.matches("WATCHDOG=1").count() >= 2;
        if ok { Ok(()) } else { Err(seen.clone()) }
    });
    drop(s);
}
