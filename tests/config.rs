//! Bad config and runtime failures: exit code 2 and one line naming the
//! file, the key and what is wrong; a clear error for what only shows at
//! runtime (port in use).

use std::fs;
use std::path::Path;
use std::process::Command;

use appliance_e2e::{Box_, Setup, Supervisor, bin, free_port, repo_root};

/// Runs `appliance run` on a config and returns (exit code, stderr).
fn run_with(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(bin("appliance"))
        .args(["run", "--config"])
        .arg(config)
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn config_with(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("bad.toml");
    let profiles = repo_root().join("hw-profiles");
    fs::write(
        &p,
        format!(
            "[hardware]\nprofiles_dir = {:?}\n\n{body}",
            profiles.display().to_string()
        ),
    )
    .unwrap();
    p
}

#[test]
fn bad_configs_exit_2_with_one_line_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[monitor]\nintervall = \"1s\"\n",
            "monitor.intervall: unknown field `intervall`",
        ),
        (
            "[node]\ntimezone = \"Europe/Amsterdamm\"\n",
            "node.timezone: \"Europe/Amsterdamm\" is not a known time zone",
        ),
        (
            "[monitor]\ninterval = 1\n",
            "monitor.interval: invalid type: integer `1`",
        ),
        (
            "[monitor]\ninterval = \"10ms\"\n",
            "monitor.interval: 10ms is outside 100ms..60s",
        ),
        (
            "[monitor]\nsysfs_root = \"/nonexistent/sys\"\n",
            "monitor.sysfs_root: /nonexistent/sys is not a readable directory",
        ),
        (
            "[monitor]\nprocfs_root = \"/tmp\"\n",
            "monitor.procfs_root: /tmp/stat is not readable",
        ),
        (
            "[admin]\nlisten = \"8443\"\n",
            "admin.listen: invalid socket address syntax",
        ),
        (
            "[bbb]\nurl = \"http://x/api\"\nsecret = \"0123456789\"\n",
            "bbb.url: \"http://x/api\" must end with /bigbluebutton/api",
        ),
        (
            "[hardware]\nprofile = \"cray-1\"\n",
            "hardware.profile: \"cray-1\" is not one of auto,",
        ),
        (
            "[alerts.cpu]\nwarn = 0.9\ncritical = 0.5\nfor = \"1s\"\n",
            "alerts.cpu.warn: 0.9 is above critical (0.5)",
        ),
        ("[log]\nlevel = \"loud\"\n", "log.level: \"loud\" is not one of"),
    ];
    for (body, want) in cases {
        // `[hardware]` is already in the file: merge instead of repeating it.
        let body = body.replace("[hardware]\n", "");
        let p = config_with(dir.path(), &body);
        let (code, stderr) = run_with(&p);
        assert_eq!(code, Some(2), "{body:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{body:?}: one line, got {stderr:?}");
        assert!(
            stderr.starts_with(&format!("error: {}: ", p.display())),
            "{body:?}: {stderr}"
        );
        assert!(stderr.contains(want), "{body:?}: {stderr:?} should contain {want:?}");
    }
}

#[test]
fn missing_file_and_bad_profiles_dir() {
    let (code, stderr) = run_with(Path::new("/nonexistent/appliance.toml"));
    assert_eq!(code, Some(2));
    assert_eq!(
        stderr.trim(),
        "error: /nonexistent/appliance.toml: cannot read: No such file or directory (os error 2)"
    );

    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    fs::create_dir(&profiles).unwrap();
    fs::write(
        profiles.join("broken.toml"),
        "name = \"broken\"\ndescription = \"x\"\nfans = 3\n",
    )
    .unwrap();
    let p = dir.path().join("c.toml");
    fs::write(
        &p,
        format!("[hardware]\nprofiles_dir = {:?}\n", profiles.display().to_string()),
    )
    .unwrap();
    let (code, stderr) = run_with(&p);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("hardware.profiles_dir: ") && stderr.contains("broken.toml: fans: unknown field `fans`"),
        "{stderr}"
    );
}

#[test]
fn port_in_use_is_a_clear_runtime_error() {
    let b = Box_::recorded("no-sensors");
    let s = Supervisor::start(Setup {
        sysfs_root: &b.path("sys"),
        procfs_root: &b.path("proc"),
        extra: "",
    });
    // A second supervisor on the same port, with its own state dir.
    let dir = tempfile::tempdir().unwrap();
    let text = fs::read_to_string(&s.config).unwrap().replace(
        &format!("state_dir = {:?}", s.state_dir.display().to_string()),
        &format!("state_dir = {:?}", dir.path().join("state").display().to_string()),
    );
    let p = dir.path().join("second.toml");
    fs::write(&p, text).unwrap();
    let (code, stderr) = run_with(&p);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: admin.listen {}: cannot listen: Address already in use",
            s.addr
        )),
        "{stderr}"
    );

    // A second supervisor on the same state dir (but another port) must not
    // steal the first one's control socket.
    let port = free_port();
    let text = fs::read_to_string(&s.config)
        .unwrap()
        .replace(&s.addr.port().to_string(), &port.to_string());
    let p2 = dir.path().join("third.toml");
    fs::write(&p2, text).unwrap();
    let (code, stderr) = run_with(&p2);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("another supervisor is already running"), "{stderr}");
    assert_eq!(
        s.status_json()["node"]["name"],
        "test-node",
        "first supervisor still answers"
    );
}

#[test]
fn status_without_a_running_supervisor_says_so() {
    let b = Box_::recorded("no-sensors");
    let mut s = Supervisor::start(Setup {
        sysfs_root: &b.path("sys"),
        procfs_root: &b.path("proc"),
        extra: "",
    });
    s.stop();
    let out = s.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the supervisor at") && err.contains("is `appliance run` running"),
        "{err}"
    );
}

#[test]
fn hw_detect_explains_its_choice() {
    let b = Box_::recorded("amd-k10temp");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    fs::write(
        &p,
        format!(
            "[monitor]\nsysfs_root = {:?}\nprocfs_root = {:?}\n[hardware]\nprofiles_dir = {:?}\n",
            b.path("sys").display().to_string(),
            b.path("proc").display().to_string(),
            repo_root().join("hw-profiles").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(bin("appliance"))
        .arg("--config")
        .arg(&p)
        .args(["hw", "detect"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("profile   hpe-proliant-dl325-gen10-plus\n"), "{text}");
    assert!(text.contains("reason    sys_vendor=\"HPE\" matches \"HPE\", product_name=\"ProLiant DL325 Gen10 Plus\" matches \"ProLiant DL325 Gen10 Plus\""), "{text}");
    assert!(
        text.contains("sensor    k10temp/Tctl 52.8 °C (warn 80, critical 90)")
            || text.contains("sensor    k10temp/Tctl 52.7 °C (warn 80, critical 90)"),
        "{text}"
    );
}

/// The supervisor needs no privileges: as root it refuses to start unless
/// asked (`--allow-root`, or APPLIANCE_ALLOW_ROOT, which the workspace's
/// .cargo/config.toml sets for tests).
#[test]
fn root_is_refused_unless_asked_for() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root here: nothing to refuse");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    fs::write(
        &good,
        format!(
            "[node]\nstate_dir = {:?}\n",
            dir.path().join("state").display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(bin("appliance"))
        .args(["run", "--config"])
        .arg(&good)
        .env_remove("APPLIANCE_ALLOW_ROOT")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refuses to run as root") && err.contains("--allow-root"),
        "{err}"
    );
    assert!(!dir.path().join("state").exists(), "refused before touching anything");
    // Asked for: it goes on (to the config's own error, here).
    let cfg = config_with(dir.path(), "[monitor]\ninterval = \"10ms\"\n");
    let out = Command::new(bin("appliance"))
        .args(["run", "--allow-root", "--config"])
        .arg(&cfg)
        .env_remove("APPLIANCE_ALLOW_ROOT")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("monitor.interval: 10ms is outside"), "{err}");
}
