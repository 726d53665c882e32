//! The admin page in a real headless Chromium (Debian's `chromium`, driven
//! through `chromedriver`): first-boot setup with the console's code,
//! operator login, every page (screenshots in target/screenshots/), graphs
//! with data points, the viewer without restart buttons, logout.
//!
//! Needs the Debian packages chromium and chromium-driver, which
//! scripts/test installs; ignored by a plain `cargo test`.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use appliance_e2e::webdriver::Browser;
use appliance_e2e::{Box_, Setup, Supervisor, bin, free_port, http_get, repo_root, wait_for};

const OP: &str = "Operator-pass-1234";
const VIEW: &str = "viewer pass phrase 99";
const T: Duration = Duration::from_secs(30);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let _bbb = Kill(
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
    let extra = format!(
        "[bbb]\nurl = \"http://127.0.0.1:{bbb_port}/bigbluebutton/api\"\nsecret = \"{secret}\"\npoll_interval = \"1s\"\n[services]\nrecipe = {:?}\n",
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
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.as_str())],
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
    br.screenshot(&shots, "03-overview");

    br.go(&format!("{base}/hardware"));
    let points = br.eval("return Array.from(document.querySelectorAll('polyline')).map(p => p.points.numberOfItems).reduce((a, b) => a + b, 0)");
    assert!(points.as_u64().unwrap_or(0) >= 10, "graph points: {points}");
    assert!(br.count("line.th.critical") >= 1, "critical thresholds drawn");
    assert!(br.source().contains("Temperature coretemp/Package id 0"));
    br.screenshot(&shots, "04-hardware");

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
    br.screenshot(&shots, "05-services");

    br.go(&format!("{base}/meetings"));
    let src = br.source();
    assert!(src.contains("city-of-amsterdam") && src.contains("buurthuis-noord"));
    assert!(
        src.contains("breakout room of council"),
        "breakouts under their parent's member"
    );
    br.screenshot(&shots, "06-meetings");

    for (path, name) in [
        ("/logs", "07-logs"),
        ("/updates", "08-updates"),
        ("/enrollment", "09-enrollment"),
        ("/audit", "10-audit"),
        ("/settings", "11-settings"),
    ] {
        br.go(&format!("{base}{path}"));
        assert_eq!(br.url(), format!("{base}{path}"));
        br.screenshot(&shots, name);
    }
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
    br.go(&format!("{base}/services"));
    assert_eq!(br.count("#services tbody tr"), 7);
    assert_eq!(
        br.count("button.restart") + br.count("button.reset"),
        0,
        "no buttons for the viewer"
    );
    br.screenshot(&shots, "12-services-viewer");
    // Even a hand-made form post is refused.
    br.eval(
        "const f = document.createElement('form'); f.method = 'post'; f.action = '/services/nginx/restart'; \
         const i = document.createElement('input'); i.name = 'csrf'; i.value = 'x'; f.appendChild(i); \
         document.body.appendChild(f); f.submit(); return 1;",
    );
    br.wait_url(&format!("{base}/services/nginx/restart"));
    assert!(br.source().contains("only the operator may change things"));
    br.go(&format!("{base}/settings"));
    assert_eq!(br.count("form[action='/settings/password']"), 0);
    br.click("#logout");
    br.wait_url(&format!("{base}/login"));

    let n = fs::read_dir(&shots).unwrap().count();
    assert_eq!(n, 12, "screenshots in {}", shots.display());
}
