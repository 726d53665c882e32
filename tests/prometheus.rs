//! `/metrics` by the book, checked with Prometheus's own tools: promtool's
//! linter passes on a live exposition, and a real Prometheus scraping a
//! real supervisor answers every query of the Grafana dashboard we ship
//! (examples/grafana-dashboard.json) with data.
//!
//! promtool and prometheus come from Debian's `prometheus` package, which
//! scripts/test unpacks into target/tools/ (`ensure_promtool` in
//! scripts/lib.sh); ignored by a plain `cargo test`.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use appliance_e2e::{Box_, Kill, Setup, Supervisor, bin, free_port, http_get, repo_root, wait_for};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn tool(name: &str) -> PathBuf {
    let p = repo_root().join("target/tools/usr/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/test, or `. scripts/lib.sh; ensure_promtool`",
        p.display()
    );
    p
}

const MEETINGS: &str = r#"
[[event]]
at = 0
action = "create"
meeting = "council"
name = "Council"
meta = { member = "city" }
[[event]]
at = 0
action = "join"
meeting = "council"
user = "clerk"
"#;

/// A supervisor on a recorded box's sensors, this machine's /proc, BBB
/// (the stand-in) and the lab recipe, so that every family has samples.
fn node(dir: &std::path::Path) -> (Supervisor, Kill, Box_) {
    let script = dir.join("meetings.toml");
    fs::write(&script, MEETINGS).unwrap();
    let port = free_port();
    let standin = Kill(
        Command::new(bin("bbb-standin"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--secret",
                "prom-secret-1234",
                "--script",
            ])
            .arg(&script)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("stand-in", T, || http_get(addr, "/bigbluebutton/api").map(|_| ()));
    let b = Box_::recorded("intel-coretemp-nvme");
    let extra = format!(
        "[bbb]\nurl = \"http://127.0.0.1:{port}/bigbluebutton/api\"\nsecret = \"prom-secret-1234\"\npoll_interval = \"1s\"\n[services]\nrecipe = {:?}\n",
        repo_root().join("recipes/lab.toml").display().to_string()
    );
    let bus = format!("unix:path={}", dir.join("no-bus").display());
    let s = Supervisor::start_env(
        Setup {
            sysfs_root: &b.path("sys"),
            // This machine's own /proc, so CPU counters move between scrapes.
            procfs_root: std::path::Path::new("/proc"),
            extra: &extra,
        },
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.as_str())],
    );
    wait_for("BBB polled", T, || {
        if s.status_json()["bbb"]["up"] == true {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    (s, standin, b)
}

#[test]
#[ignore = "needs promtool from Debian's prometheus package; run by scripts/test"]
fn metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _standin, _box) = node(dir.path());
    let m = s.metrics();
    for family in [
        "appliance_cpu_seconds_total",
        "appliance_service_up",
        "appliance_temperature_celsius",
        "appliance_bbb_meetings",
    ] {
        assert!(
            m.contains(&format!("\n{family}{{")) || m.contains(&format!("\n{family} ")),
            "{family} has samples"
        );
    }
    assert!(m.contains("# TYPE appliance_cpu_seconds_total counter"));
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{m}"
    );
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(prom: SocketAddr, expr: &str) -> Result<Vec<Value>, String> {
    let (status, body) = http_get(prom, &format!("/api/v1/query?query={}", encode(expr)))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    if status != 200 || v["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

#[test]
#[ignore = "needs prometheus from Debian's prometheus package; run by scripts/test"]
fn every_grafana_panel_query_returns_data() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _standin, _box) = node(dir.path());
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: city-node\n    scheme: https\n    tls_config:\n      insecure_skip_verify: true\n    static_configs:\n      - targets: ['{}']\n",
            s.addr
        ),
    )
    .unwrap();
    let _prom = Kill(
        Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let prom: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // rate() needs two scrapes inside its range; wait for a few.
    wait_for("three scrapes of the node", T, || {
        let r = query(prom, "count_over_time(up{job=\"city-node\"}[1m])")?;
        let n: f64 = r
            .first()
            .and_then(|x| x["value"][1].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let up = query(prom, "up{job=\"city-node\"}")?;
        if n >= 3.0 && up.first().and_then(|x| x["value"][1].as_str()) == Some("1") {
            Ok(())
        } else {
            Err(format!("{n} scrapes, up: {up:?}"))
        }
    });
    let dash: Value =
        serde_json::from_str(&fs::read_to_string(repo_root().join("examples/grafana-dashboard.json")).unwrap())
            .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "a dashboard worth the name");
    let mut checked = 0;
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            // Grafana fills the template variable; here every node is "all".
            let expr = t["expr"].as_str().unwrap().replace("$instance", ".*");
            let result = query(prom, &expr).unwrap_or_else(|e| panic!("panel {:?}: {expr}: {e}", p["title"]));
            assert!(!result.is_empty(), "panel {:?}: {expr} returned no data", p["title"]);
            checked += 1;
        }
    }
    assert!(checked >= 15, "{checked} queries");
    // The instance variable's own query finds the node.
    let q = dash["templating"]["list"][1]["query"].as_str().unwrap();
    assert_eq!(q, "label_values(appliance_build_info, instance)");
    let r = query(prom, "appliance_build_info").unwrap();
    assert_eq!(r[0]["metric"]["instance"], s.addr.to_string());
}
