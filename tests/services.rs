//! The supervisor with the BBB API stand-in and a recipe, on this machine
//! (no systemd as PID 1, no system D-Bus): meeting counts from a real
//! signed getMeetings, the `bbb` health check, the first-boot secret duty,
//! and a clear critical alert when systemd cannot be reached. Management of
//! real units is tested in the VM (tests/vm.rs).

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use appliance_e2e::{Box_, Setup, Supervisor, bin, free_port, http_get, metric, wait_for};

const T: Duration = Duration::from_secs(30);

struct StandIn {
    child: Child,
    port: u16,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn standin(secret: &str, script: Option<&std::path::Path>) -> StandIn {
    let port = free_port();
    let mut cmd = Command::new(bin("bbb-standin"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--secret", secret])
        .stderr(Stdio::null());
    if let Some(s) = script {
        cmd.arg("--script").arg(s);
    }
    let child = cmd.spawn().unwrap();
    let s = StandIn { child, port };
    wait_for("the stand-in to answer", T, || {
        http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/bigbluebutton/api").map(|_| ())
    });
    s
}

const SCRIPT: &str = r#"
[[event]]
at = 0
action = "create"
meeting = "board"
meta = { member = "coop-a" }
[[event]]
at = 0
action = "join"
meeting = "board"
user = "ann"
moderator = true
[[event]]
at = 0
action = "join"
meeting = "board"
user = "bob"
[[event]]
at = 0
action = "create"
meeting = "empty"
[[event]]
at = 0
action = "create"
meeting = "team"
[[event]]
at = 0
action = "join"
meeting = "team"
user = "cy"
"#;

#[test]
fn meetings_are_counted_through_the_signed_api() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.toml");
    fs::write(&script, SCRIPT).unwrap();
    let secret = "lab-secret-0123456789";
    let bbb = standin(secret, Some(&script));
    let b = Box_::recorded("no-sensors");
    let extra = format!(
        "[bbb]\nurl = \"http://127.0.0.1:{}/bigbluebutton/api\"\nsecret = \"{secret}\"\npoll_interval = \"1s\"\n",
        bbb.port
    );
    let s = Supervisor::start(Setup {
        sysfs_root: &b.path("sys"),
        procfs_root: &b.path("proc"),
        extra: &extra,
    });
    let m = wait_for("meetings counted", T, || {
        let m = s.metrics();
        match metric(&m, "appliance_bbb_meetings") {
            Some(2.0) => Ok(m),
            other => Err(format!("{other:?}")),
        }
    });
    // "empty" has nobody in it: BBB says running=false, so it is not counted.
    assert_eq!(metric(&m, "appliance_bbb_participants"), Some(3.0));
    assert_eq!(metric(&m, "appliance_bbb_up"), Some(1.0));
    let st = s.status_json();
    assert_eq!(st["bbb"]["meetings"], 2);
    assert_eq!(st["bbb"]["error"], serde_json::Value::Null);
}

#[test]
fn a_wrong_secret_is_reported_not_counted() {
    let bbb = standin("the-right-secret-123", None);
    let b = Box_::recorded("no-sensors");
    let extra = format!(
        "[bbb]\nurl = \"http://127.0.0.1:{}/bigbluebutton/api\"\nsecret = \"not-the-secret\"\npoll_interval = \"1s\"\n",
        bbb.port
    );
    let s = Supervisor::start(Setup {
        sysfs_root: &b.path("sys"),
        procfs_root: &b.path("proc"),
        extra: &extra,
    });
    let st = wait_for("the error", T, || {
        let st = s.status_json();
        if st["bbb"]["error"].is_string() {
            Ok(st)
        } else {
            Err(st["bbb"].to_string())
        }
    });
    assert_eq!(
        st["bbb"]["error"],
        "BBB refused the call: checksumError: Checksums do not match"
    );
    let m = s.metrics();
    assert_eq!(metric(&m, "appliance_bbb_up"), Some(0.0));
    assert_eq!(metric(&m, "appliance_bbb_meetings"), None, "unknown, not zero");
}

#[test]
fn without_systemd_the_services_say_why() {
    let b = Box_::recorded("no-sensors");
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.toml");
    fs::write(
        &recipe,
        "name = \"mini\"\ndescription = \"d\"\n[[service]]\nname = \"redis-server\"\nunit = \"redis-server.service\"\n",
    )
    .unwrap();
    let extra = format!("[services]\nrecipe = {:?}\n", recipe.display().to_string());
    // A D-Bus address where nothing listens, so this holds on any machine.
    let bus = format!("unix:path={}", dir.path().join("no-bus").display());
    let s = Supervisor::start_env(
        Setup {
            sysfs_root: &b.path("sys"),
            procfs_root: &b.path("proc"),
            extra: &extra,
        },
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.as_str())],
    );
    let st = wait_for("the service-manager alert", T, || {
        let st = s.status_json();
        if st["health"]["status"] == "critical" {
            Ok(st)
        } else {
            Err(st["health"].to_string())
        }
    });
    let summary = st["health"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("critical: cannot manage services: systemd: "),
        "{summary}"
    );
    let out = s.cli(&["services"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("SERVICE "), "{text}");
    assert!(text.contains("error: systemd: "), "{text}");
    let out = s.cli(&["services", "restart", "redis-server"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the service runtime is not running"));
}

#[test]
fn firstboot_replaces_the_default_secret_once() {
    let dir = tempfile::tempdir().unwrap();
    let props = dir.path().join("bbb-web.properties");
    fs::write(
        &props,
        "bigbluebutton.web.serverURL=https://bbb.example\nsecuritySalt=330a8b08c3b4c61533e1d0c5ce1ac88f\n",
    )
    .unwrap();
    let secret_file = dir.path().join("bbb-secret");
    let b = Box_::recorded("no-sensors");
    let cfg = dir.path().join("c.toml");
    fs::write(
        &cfg,
        format!(
            "[monitor]\nsysfs_root = {:?}\nprocfs_root = {:?}\n[hardware]\nprofiles_dir = {:?}\n[bbb]\nurl = \"http://127.0.0.1:1/bigbluebutton/api\"\nsecret_file = {:?}\nproperties = {:?}\n",
            b.path("sys").display().to_string(),
            b.path("proc").display().to_string(),
            appliance_e2e::repo_root().join("hw-profiles").display().to_string(),
            secret_file.display().to_string(),
            props.display().to_string(),
        ),
    )
    .unwrap();
    let run = || {
        Command::new(bin("appliance"))
            .arg("--config")
            .arg(&cfg)
            .arg("firstboot")
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("replaced the default BBB secret"), "{said}");
    let secret = fs::read_to_string(&secret_file).unwrap().trim().to_string();
    assert_eq!(secret.len(), 48);
    let text = fs::read_to_string(&props).unwrap();
    assert!(text.contains(&format!("securitySalt={secret}\n")) && text.contains("serverURL=https://bbb.example"));
    assert!(!text.contains("330a8b08"));
    let out = run();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nothing to do: the BBB secret is already the node's own"
    );
    // The secret never appears in the supervisor's own output.
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&secret));
    let _ = Duration::ZERO;
}
