//! The admin page in a real headless Chromium (Debian's `chromium`, driven
//! through `chromedriver`): first-boot setup with the console's code,
//! operator login, every page for the operator and the viewer (screenshots
//! at 1280x900 and 390x844 in target/screenshots/), graphs over the whole
//! window with the configured thresholds and readable points, the viewer
//! without restart buttons, BBB going away on every surface, logout.
//!
//! Needs the Debian packages chromium and chromium-driver, which
//! scripts/test installs; ignored by a plain `cargo test`.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use appliance_e2e::webdriver::Browser;
use appliance_e2e::{Box_, Kill, Setup, Supervisor, bin, free_port, http_get, repo_root, wait_for};

const OP: &str = "Operator-pass-1234";
const VIEW: &str = "viewer pass phrase 99";
const T: Duration = Duration::from_secs(30);

const MEETINGS: &str = r#"
[[event]]
at = 0
action = "create"
meeting = "council"
name = "City council digital committee"
meta = { member = "city-of-amsterdam" }
[[event]]
at = 0
action = "join"
meeting = "council"
user = "alderman"
moderator = true
[[event]]
at = 0
action = "join"
meeting = "council"
user = "clerk"
[[event]]
at = 0
action = "create"
meeting = "council-room1"
name = "Breakout 1"
parent = "council"
[[event]]
at = 0
action = "join"
meeting = "council-room1"
user = "clerk2"
[[event]]
at = 0
action = "create"
meeting = "choir"
name = "Choir rehearsal"
meta = { member = "buurthuis-noord" }
[[event]]
at = 0
action = "join"
meeting = "choir"
user = "singer"
"#;

#[test]
#[ignore = "needs Debian's chromium and chromium-driver; run by scripts/test"]
fn admin_page_in_chromium() {
    let shots = repo_root().join("target/screenshots");
    let _ = fs::remove_dir_all(&shots);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("meetings.toml");
    fs::write(&script, MEETINGS).unwrap();
    let secret = "browser-test-secret-123";
    let bbb_port = free_port();
    let bbb = Kill(
        Command::new(bin("bbb-standin"))
            .args([
                "--listen",
                &format!("127.0.0.1:{bbb_port}"),
                "--secret",
                secret,
                "--script",
            ])
            .arg(&script)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("stand-in", T, || {
        http_get(format!("127.0.0.1:{bbb_port}").parse().unwrap(), "/bigbluebutton/api").map(|_| ())
    });

    let b = Box_::recorded("intel-coretemp-nvme");
    // Thresholds unlike the defaults, so the graphs must take them from
    // here.
    let extra = format!(
        "[bbb]\nurl = \"http://127.0.0.1:{bbb_port}/bigbluebutton/api\"\nsecret = \"{secret}\"\npoll_interval = \"1s\"\n[services]\nrecipe = {:?}\n\
         [alerts.cpu]\nwarn = 0.65\ncritical = 0.9\nfor = \"30s\"\n\
         [alerts.memory]\nwarn = 0.7\ncritical = 0.85\nfor = \"30s\"\n\
         [alerts.bandwidth]\nwarn = 0.5\ncritical = 0.75\nfor = \"30s\"\n",
        repo_root().join("recipes/lab.toml").display().to_string()
    );
    // No system D-Bus here: the services are listed but cannot be managed.
    let bus = format!("unix:path={}", dir.path().join("no-bus").display());
    let s = Supervisor::start_env(
        Setup {
            sysfs_root: &b.path("sys"),
            procfs_root: &b.path("proc"),
            extra: &extra,
        },
        // The node's zone is the system's (TZ here), not the machine's UTC.
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.as_str()), ("TZ", "Europe/Amsterdam")],
    );
    let base = format!("https://{}", s.addr);
    let screen = String::from_utf8(s.cli(&["console", "--once"]).stdout).unwrap();
    let code = screen
        .lines()
        .find_map(|l| l.strip_prefix("Setup code   "))
        .unwrap()
        .to_string();
    // Let the history hold a few samples for the graphs.
    wait_for("a few samples", T, || {
        let st = s.status_json();
        if st["node"]["uptime_seconds"].as_f64().unwrap_or(0.0) > 2.0 && st["bbb"]["up"] == true {
            Ok(())
        } else {
            Err("starting".into())
        }
    });

    let br = Browser::start();
    // First boot: everything leads to the setup page.
    br.go(&format!("{base}/"));
    assert_eq!(br.url(), format!("{base}/setup"));
    br.screenshot(&shots, "01-setup");
    br.fill("#code", &code);
    br.fill("#operator", OP);
    br.fill("#operator2", OP);
    br.fill("#viewer", VIEW);
    br.fill("#viewer2", VIEW);
    br.click("#setup");
    br.wait_url(&format!("{base}/login?done=1"));
    assert!(br.source().contains("Setup is done"));
    br.screenshot(&shots, "02-login");

    // Operator login.
    br.select("#user", "operator");
    br.fill("#password", OP);
    br.click("#login");
    br.wait_url(&format!("{base}/"));
    assert_eq!(
        br.text("#health-h"),
        "Health: critical",
        "systemd is unreachable here: critical, and it says why"
    );
    assert!(br.text("#reasons").contains("cannot manage services"));
    assert!(
        br.text("#meetings-now").contains("3 meetings running, 4 participants"),
        "{}",
        br.text("#meetings-now")
    );
    // The status as the page's own API gives it, opened in the browser
    // (the pages' CSP allows no script to fetch it).
    let api_status = || -> serde_json::Value {
        br.go(&format!("{base}/api/v1/status"));
        let body = br.eval("return document.body.innerText");
        serde_json::from_str(body.as_str().unwrap_or("null")).unwrap()
    };
    let st = api_status();
    assert_eq!(st["node"]["timezone"], "Europe/Amsterdam");

    // Graphs: the configured thresholds, in each graph's unit.
    br.go(&format!("{base}/hardware"));
    assert_eq!(br.text("h1"), "Hardware: Last hour");
    assert_eq!(br.text("#windows a.current"), "Last hour");
    let zone = br.text("#zone");
    assert!(
        zone.starts_with("Times in Europe/Amsterdam (CET)") || zone.starts_with("Times in Europe/Amsterdam (CEST)"),
        "{zone}"
    );
    let points = br.eval("return Array.from(document.querySelectorAll('polyline')).map(p => p.points.numberOfItems).reduce((a, b) => a + b, 0)");
    assert!(points.as_u64().unwrap_or(0) >= 10, "graph points: {points}");
    let lines_of = |title: &str| -> Vec<(String, f64)> {
        let v = br.eval(&format!(
            "const f = Array.from(document.querySelectorAll('figure.chart')).find(f => f.querySelector('figcaption').textContent.startsWith({title:?})); \
             return f ? Array.from(f.querySelectorAll('line.th')).map(l => [l.classList[1], Number(l.dataset.value)]) : null;"
        ));
        v.as_array()
            .unwrap_or_else(|| panic!("no chart {title:?}"))
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap()))
            .collect()
    };
    let close = |got: &[(String, f64)], want: &[(&str, f64)], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}: {got:?}");
        for ((k, v), (wk, wv)) in got.iter().zip(want) {
            assert_eq!(k, wk, "{what}");
            assert!((v - wv).abs() <= wv.abs() * 1e-6, "{what}: {v} != {wv}");
        }
    };
    close(&lines_of("CPU usage"), &[("warn", 0.65), ("critical", 0.9)], "CPU");
    let total = st["monitor"]["memory"]["total_bytes"].as_f64().unwrap();
    close(
        &lines_of("Memory used"),
        &[("warn", 0.7 * total), ("critical", 0.85 * total)],
        "memory",
    );
    let uplink = st["hardware"]["uplink"].as_str().expect("an uplink").to_string();
    let cap = st["hardware"]["uplink_capacity_mbps"]
        .as_f64()
        .expect("the uplink's capacity");
    let bytes = cap * 1e6 / 8.0;
    close(
        &lines_of(&format!("Bandwidth {uplink}")),
        &[("warn", 0.5 * bytes), ("critical", 0.75 * bytes)],
        "bandwidth",
    );
    let sensors = st["sensors"].as_array().unwrap();
    assert!(!sensors.is_empty());
    for sn in sensors {
        let name = sn["sensor"].as_str().unwrap();
        let mut want = vec![];
        if let Some(w) = sn["warn"].as_f64() {
            want.push(("warn", w));
        }
        if let Some(c) = sn["critical"].as_f64() {
            want.push(("critical", c));
        }
        close(&lines_of(&format!("Temperature {name}")), &want, name);
    }
    // Only interfaces that are up, or the uplink, get a graph.
    let down: Vec<String> = st["monitor"]["network"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["up"] != true && n["name"] != uplink.as_str())
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    for d in &down {
        assert!(
            !br.source().contains(&format!("Bandwidth {d}<")),
            "no graph for down {d}"
        );
    }

    // A young node's week: the axis spans the week, a note says where
    // the history starts. (The recorded box's CPU counters stand still,
    // so its CPU graph is empty; memory has data.)
    const MEMORY: &str = "Array.from(document.querySelectorAll('figure.chart')).find(f => f.querySelector('figcaption').textContent.startsWith('Memory used'))";
    br.go(&format!("{base}/hardware?window=week"));
    assert_eq!(br.text("#windows a.current"), "Last week");
    let note = br
        .eval(&format!("return {MEMORY}.querySelector('p.nodata').textContent"))
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(note.starts_with("No data before ") && note.contains("CET"), "{note}");
    let ticks = br.eval(&format!(
        "return Array.from({MEMORY}.querySelectorAll('text.tick')).map(t => t.textContent)"
    ));
    assert!(
        ticks.as_array().map(|a| a.len()).unwrap_or(0) >= 7,
        "a tick per day over the week: {ticks}"
    );
    let newest_x = br.eval(&format!(
        "const c = Array.from({MEMORY}.querySelectorAll('circle.pt')); return c.length ? Number(c[c.length - 1].getAttribute('cx')) : 0;"
    ));
    assert!(
        newest_x.as_f64().unwrap_or(0.0) > 600.0,
        "the data sit at the week's end: {newest_x}"
    );

    let shots_of = |role: &str| {
        for (path, name) in [
            ("/", "overview"),
            ("/hardware", "hardware"),
            ("/hardware?window=week", "hardware-week"),
            ("/services", "services"),
            ("/meetings", "meetings"),
            ("/members", "members"),
            ("/logs", "logs"),
            ("/updates", "updates"),
            ("/enrollment", "enrollment"),
            ("/audit", "audit"),
            ("/settings", "settings"),
        ] {
            br.go(&format!("{base}{path}"));
            assert_eq!(br.url(), format!("{base}{path}"));
            br.screenshots(&shots, &format!("{role}-{name}"));
        }
    };
    shots_of("operator");

    br.go(&format!("{base}/meetings"));
    let src = br.source();
    assert!(src.contains("city-of-amsterdam") && src.contains("buurthuis-noord"));
    assert!(
        src.contains("breakout room of council"),
        "breakouts under their parent's member"
    );

    br.go(&format!("{base}/services"));
    assert_eq!(
        br.count("button.restart"),
        7,
        "the operator has a restart button per lab service"
    );
    br.click("button[aria-label='Restart nginx']");
    wait_for("the answer", T, || {
        if br.count("#service-msg") == 1 {
            Ok(())
        } else {
            Err(br.url())
        }
    });
    assert!(
        br.text("#service-msg").contains("the service runtime is not running"),
        "{}",
        br.text("#service-msg")
    );

    br.go(&format!("{base}/audit"));
    let audit = br.text("#audit");
    assert!(audit.contains("service restart") && audit.contains("setup"), "{audit}");
    br.go(&format!("{base}/logs?unit=appliance&contains=admin"));
    assert!(br.count("#log tbody tr") >= 1, "the supervisor's own log lines");

    // Logout.
    br.click("#logout");
    br.wait_url(&format!("{base}/login"));
    br.go(&format!("{base}/services"));
    assert_eq!(br.url(), format!("{base}/login"), "logged out");

    // The viewer sees the services but no buttons, and cannot post.
    br.select("#user", "viewer");
    br.fill("#password", VIEW);
    br.click("#login");
    br.wait_url(&format!("{base}/"));
    assert_eq!(br.text("#who"), "viewer");
    br.go(&format!("{base}/services"));
    assert_eq!(br.count("#services tbody tr"), 7);
    assert_eq!(
        br.count("button.restart") + br.count("button.reset"),
        0,
        "no buttons for the viewer"
    );
    // The viewer reads a point's value: each point has its time and value
    // in its title (hover; no JavaScript needed).
    br.go(&format!("{base}/hardware"));
    let title = br
        .eval(&format!("return {MEMORY}.querySelector('circle.pt title').textContent"))
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (label, rest) = title.split_once(": ").unwrap_or_else(|| panic!("{title}"));
    let (value, at) = rest.split_once(" at ").unwrap_or_else(|| panic!("{title}"));
    assert_eq!(label, "used");
    // The point says what the status says, in the page's units.
    let used = st["monitor"]["memory"]["used_bytes"].as_f64().unwrap();
    let (num, unit) = value.split_once(' ').unwrap_or_else(|| panic!("{title}"));
    let num: f64 = num.parse().unwrap_or_else(|_| panic!("{title}"));
    let scale = match unit {
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => panic!("unit in {title}"),
    };
    assert!((num * scale - used).abs() <= 0.05 * scale, "{title} vs {used} bytes");
    assert!(at.len() == 5 && at.as_bytes()[2] == b':', "a local time: {title}");
    shots_of("viewer");
    // Even a hand-made form post is refused.
    br.go(&format!("{base}/services"));
    br.eval(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/services/nginx/restart'; \
         const i = document.createElement('input'); i.name = 'csrf'; i.value = 'x'; f.appendChild(i); \
         document.body.appendChild(f); f.submit(); return 1;",
    );
    br.wait_url(&format!("{base}/services/nginx/restart"));
    assert!(br.source().contains("only the operator may change things"));
    br.go(&format!("{base}/settings"));
    assert_eq!(br.count("form[action='/settings/password']"), 0);

    // BBB goes away: the light names it on the Overview, in the API and
    // on the console.
    drop(bbb);
    let reason = "BigBlueButton does not answer";
    let st = wait_for("the light to name BBB", T, || {
        let st = api_status();
        if st["health"]["reasons"].to_string().contains(reason) {
            Ok(st)
        } else {
            Err(st["health"].to_string())
        }
    });
    assert_eq!(st["health"]["status"], "critical");
    br.go(&format!("{base}/"));
    assert_eq!(br.text("#health-h"), "Health: critical");
    assert!(br.text("#reasons").contains(reason), "{}", br.text("#reasons"));
    br.screenshots(&shots, "viewer-overview-bbb-down");
    let screen = String::from_utf8(s.cli(&["console", "--once"]).stdout).unwrap();
    assert!(screen.contains(reason), "{screen}");
    br.click("#logout");
    br.wait_url(&format!("{base}/login"));

    let n = fs::read_dir(&shots).unwrap().count();
    assert_eq!(n, 2 + 2 * 11 * 2 + 2, "screenshots in {}", shots.display());
}
