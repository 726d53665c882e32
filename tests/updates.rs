//! Updates end to end with the real binaries: a repository made with
//! `appliance-ops release`, a node applying it with `appliance update
//! apply`, and what crashes at every step of download and apply leave
//! behind.
//!
//! The invariant after any crash: `releases/current` names a complete
//! version whose `appliance` is byte for byte either the version that ran
//! before or the verified release, never anything else; and the next run
//! completes (resuming the download where it stopped).

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use appliance_e2e::release::{Repo, ops, release_binary};
use appliance_e2e::{Box_, bin, repo_root, wait_for};

const OLD: &[u8] = b"#!/bin/sh\necho 'the supervisor, version 0.1.0'\n";

struct Node {
    _box: Box_,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Node {
    /// A node whose installed supervisor is "0.1.0" (the `OLD` script), with
    /// updates from the repository's root and, optionally, a download cap.
    fn new(repo: &Repo, extra: &str) -> Node {
        let b = Box_::recorded("no-sensors");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("appliance.toml");
        // The maintenance window (UTC) is half a day away, whenever the
        // test runs: installing needs --now.
        let h = (utc_hour() + 12) % 24;
        let window = format!("{h:02}:00-{:02}:00", (h + 1) % 24);
        fs::write(
            &config,
            format!(
                "[node]\nname = \"n\"\nstate_dir = \"state\"\n\n[monitor]\nsysfs_root = {:?}\nprocfs_root = {:?}\n\n[hardware]\nprofiles_dir = {:?}\n\n[update]\nroot = {:?}\nwindow = {window:?}\n{extra}\n",
                b.path("sys").display().to_string(),
                b.path("proc").display().to_string(),
                repo_root().join("hw-profiles").display().to_string(),
                repo.s("root.json"),
            ),
        )
        .unwrap();
        let n = Node { _box: b, dir, config };
        let v1 = n.releases().join("0.1.0");
        fs::create_dir_all(&v1).unwrap();
        fs::write(v1.join("appliance"), OLD).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(v1.join("appliance"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("0.1.0", n.releases().join("current")).unwrap();
        n
    }

    fn releases(&self) -> PathBuf {
        self.dir.path().join("state/releases")
    }

    fn appliance(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("appliance"));
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("JOURNAL_STREAM").env_remove("APPLIANCE_UPDATE_CRASH_AT");
        c
    }

    fn apply(&self, repo: &Repo, env: &[(&str, &str)]) -> Output {
        self.appliance(&["update", "apply", "--now", "--from", &repo.s("repo")])
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn current(&self) -> String {
        fs::read_link(self.releases().join("current"))
            .unwrap()
            .display()
            .to_string()
    }

    /// The invariant: `current` is a complete version, byte for byte one
    /// that was meant to run.
    fn check(&self, allowed: &[(&str, &[u8])]) -> String {
        let cur = self.current();
        let binary = self.releases().join(&cur).join("appliance");
        let bytes = fs::read(&binary).unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let (_, want) = allowed.iter().find(|(v, _)| *v == cur).unwrap_or_else(|| {
            panic!(
                "current -> {cur}, which is none of {:?}",
                allowed.iter().map(|a| a.0).collect::<Vec<_>>()
            )
        });
        assert!(bytes == *want, "releases/{cur}/appliance is not the verified content");
        use std::os::unix::fs::PermissionsExt;
        assert_ne!(fs::metadata(&binary).unwrap().permissions().mode() & 0o111, 0);
        let out = Command::new(&binary).output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("version {cur}")));
        if let Ok(s) = fs::read(self.releases().join("state.json")) {
            serde_json::from_slice::<serde_json::Value>(&s).expect("state.json is whole");
        }
        cur
    }

    fn status(&self) -> serde_json::Value {
        let out = self.appliance(&["update", "status", "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_release_published_with_the_ops_tools_is_installed_on_probation() {
    let repo = Repo::new();
    let new = release_binary("0.2.0", 1000);
    repo.add("0.2.0", &new);
    let list = ops(&["release", "list", "--repo", &repo.s("repo"), "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list["manifest"]["releases"][0]["version"], "0.2.0");
    let ts = list["versions"]["timestamp"].as_u64().unwrap();
    // The cron job's command moves the timestamp on.
    let mut args = vec!["release", "timestamp", "--repo"];
    let r = repo.s("repo");
    args.push(&r);
    let keys = repo.online();
    args.extend(keys.iter().map(String::as_str));
    ops(&args);
    let list2: serde_json::Value =
        serde_json::from_slice(&ops(&["release", "list", "--repo", &repo.s("repo"), "--json"]).stdout).unwrap();
    assert_eq!(list2["versions"]["timestamp"].as_u64().unwrap(), ts + 1);

    let node = Node::new(&repo, "");
    let check = ok(&node
        .appliance(&["update", "check", "--from", &repo.s("repo")])
        .output()
        .unwrap());
    assert!(check.contains("0.2.0 is available"), "{check}");
    // Outside the window and without --now: refused, nothing changes.
    let out = node
        .appliance(&["update", "apply", "--from", &repo.s("repo")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside the maintenance window"));
    assert_eq!(node.current(), "0.1.0");
    let out = ok(&node.apply(&repo, &[]));
    assert!(out.contains("switched to 0.2.0"), "{out}");
    assert_eq!(node.check(&[("0.2.0", &new)]), "0.2.0");
    let st = node.status();
    assert_eq!(st["current"], "0.2.0");
    assert_eq!(st["previous"], "0.1.0");
    assert_eq!(st["state"]["pending"]["version"], "0.2.0");
    // While 0.2.0 is on probation nothing else is installed over it.
    let newer = release_binary("0.3.0", 1000);
    repo.add("0.3.0", &newer);
    let out = node.apply(&repo, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0.2.0 is on probation"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.check(&[("0.2.0", &new)]), "0.2.0");
    // A rollback (what the unit's OnFailure= runs) returns to 0.1.0 and
    // marks 0.2.0 bad: it is passed over from then on.
    let out = ok(&node
        .appliance(&["update", "rollback", "--reason", "test"])
        .output()
        .unwrap());
    assert!(out.contains("marked bad"), "{out}");
    assert_eq!(node.check(&[("0.1.0", OLD)]), "0.1.0");
    let check = ok(&node
        .appliance(&["update", "check", "--from", &repo.s("repo")])
        .output()
        .unwrap());
    assert!(
        check.contains("0.3.0 is available") && check.contains("0.2.0 failed on this node before"),
        "{check}"
    );
    let out = ok(&node.apply(&repo, &[]));
    assert!(out.contains("switched to 0.3.0"), "{out}");
    assert_eq!(node.check(&[("0.3.0", &newer)]), "0.3.0");
    assert_eq!(node.status()["state"]["bad"], serde_json::json!(["0.2.0"]));
}

fn utc_hour() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ((secs / 3600) % 24) as u32
}

/// A crash (abort) injected at each step of download and apply; then the
/// same command again, which must finish the job.
#[test]
fn a_crash_at_each_step_of_download_and_apply_leaves_one_runnable_version() {
    let repo = Repo::new();
    let new = release_binary("0.2.0", 64 * 1024);
    repo.add("0.2.0", &new);
    let total = repo.target_len("appliance-0.2.0.tar.gz");
    let mut points: Vec<(String, String)> = [1, total / 2, total - 1]
        .iter()
        .map(|n| ("APPLIANCE_UPDATE_FAIL_AT_BYTE".to_string(), n.to_string()))
        .collect();
    points.extend(
        [
            "unpack-started",
            "unpack-written",
            "unpacked",
            "pending-written",
            "previous-switched",
            "current-switched",
        ]
        .iter()
        .map(|s| ("APPLIANCE_UPDATE_CRASH_AT".to_string(), s.to_string())),
    );
    for (var, value) in &points {
        let node = Node::new(&repo, "");
        let out = node.apply(&repo, &[(var, value)]);
        assert!(!out.status.success(), "{var}={value}: the crash hook did not fire");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("crash test: aborting"),
            "{var}={value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cur = node.check(&[("0.1.0", OLD), ("0.2.0", &new)]);
        eprintln!("crash at {var}={value}: current -> {cur}");
        // Again, without a crash: it completes.
        let out = ok(&node.apply(&repo, &[]));
        assert!(
            out.contains("switched to 0.2.0") || cur == "0.2.0",
            "{var}={value}: {out}"
        );
        assert_eq!(node.check(&[("0.2.0", &new)]), "0.2.0", "{var}={value}");
        let st = node.status();
        assert_eq!(st["state"]["pending"]["version"], "0.2.0", "{var}={value}: {st}");
        assert_eq!(st["previous"], "0.1.0", "{var}={value}");
        // Nothing half-made is left beside the versions (the lock file
        // stays: it is how two update commands keep out of each other's way).
        let mut names: Vec<String> = fs::read_dir(node.releases())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".lock", "0.1.0", "0.2.0", "current", "previous", "state.json"],
            "{var}={value}"
        );
    }
}

/// A real SIGKILL at random moments of a throttled download, at least 50
/// times in the middle of it: each time the old version stays current,
/// and each next run resumes from what the last one left.
#[test]
fn sigkill_at_random_offsets_during_the_download_never_runs_unverified_bytes() {
    let repo = Repo::new();
    let new = release_binary("0.2.0", 2 << 20);
    repo.add("0.2.0", &new);
    let total = repo.target_len("appliance-0.2.0.tar.gz");
    assert!(total > 1 << 20, "the target should be large: {total}");
    // About 0.4 s for the whole target.
    let rate = total * 5 / 2;
    let node = Node::new(&repo, &format!("max_bytes_per_second = {rate}\n"));
    let staging = node.dir.path().join("state/update/staging");
    let part = || {
        fs::read_dir(&staging).ok().and_then(|rd| {
            rd.flatten()
                .find(|e| e.file_name().to_string_lossy().ends_with(".part"))
                .map(|e| e.metadata().unwrap().len())
        })
    };
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut mid, mut runs, mut offsets) = (0, 0, Vec::new());
    while mid < 50 {
        runs += 1;
        assert!(runs < 400, "only {mid} kills landed mid-download in {runs} runs");
        let before = part().unwrap_or(0);
        let mut child = node
            .appliance(&["update", "apply", "--now", "--from", &repo.s("repo")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Wait until this run has added to the staging file, then a random
        // moment more, then SIGKILL.
        let start = Instant::now();
        wait_for("the download to make progress", Duration::from_secs(30), || {
            if child.try_wait().unwrap().is_some() || part().unwrap_or(0) > before {
                Ok(())
            } else {
                Err(format!("part at {:?}", part()))
            }
        });
        let extra = Duration::from_millis(next() % 150);
        while start.elapsed() < extra && child.try_wait().unwrap().is_none() {
            std::thread::yield_now();
        }
        let _ = child.kill();
        let status = child.wait().unwrap();
        node.check(&[("0.1.0", OLD), ("0.2.0", &new)]);
        match part() {
            Some(n) if n > before && n < total && status.code().is_none() => {
                mid += 1;
                offsets.push(n);
            }
            _ => {}
        }
        if node.current() == "0.2.0" {
            // It finished before the kill: start over for more kills.
            fs::remove_dir_all(&staging).unwrap();
            fs::remove_dir_all(node.releases()).unwrap();
            let v1 = node.releases().join("0.1.0");
            fs::create_dir_all(&v1).unwrap();
            fs::write(v1.join("appliance"), OLD).unwrap();
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(v1.join("appliance"), fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::symlink("0.1.0", node.releases().join("current")).unwrap();
        }
    }
    offsets.sort_unstable();
    offsets.dedup();
    eprintln!(
        "{mid} SIGKILLs mid-download in {runs} runs, at {} distinct offsets from {} to {} of {total} bytes",
        offsets.len(),
        offsets[0],
        offsets[offsets.len() - 1]
    );
    assert!(offsets.len() >= 20, "offsets should vary: {offsets:?}");
    // The run after the last kill resumes and completes.
    let out = ok(&node.apply(&repo, &[]));
    assert!(out.contains("switched to 0.2.0"), "{out}");
    assert_eq!(node.check(&[("0.2.0", &new)]), "0.2.0");
}

/// The supervisor itself, started from `releases/current/appliance` with a
/// version on probation: committed once healthy; rolled back (marked bad,
/// `current` back, exit so systemd starts the old one) when its health
/// checks do not pass in time; rolled back at once after too many starts.
#[test]
fn a_version_on_probation_is_committed_when_healthy_and_rolled_back_when_not() {
    let repo = Repo::new();
    // Hard links of the real binary under three version names (the
    // directory name is the version a release runs as).
    let dir = tempfile::tempdir_in(repo_root().join("target")).unwrap();
    let releases = dir.path().join("state/releases");
    let install = |v: &str| {
        let to = releases.join(v).join("appliance");
        if !to.exists() {
            fs::create_dir_all(releases.join(v)).unwrap();
            if fs::hard_link(bin("appliance"), &to).is_err() {
                fs::copy(bin("appliance"), &to).unwrap();
            }
        }
    };
    let b = Box_::recorded("no-sensors");
    let port = appliance_e2e::free_port();
    let closed = appliance_e2e::free_port();
    let config = |extra: &str| {
        let c = dir.path().join("appliance.toml");
        fs::write(
            &c,
            format!(
                "[node]\nname = \"n\"\nstate_dir = \"state\"\n\n[monitor]\ninterval = \"200ms\"\nsysfs_root = {:?}\nprocfs_root = {:?}\n\n[admin]\nlisten = \"127.0.0.1:{port}\"\n\n[hardware]\nprofiles_dir = {:?}\n\n{extra}\n[update]\nroot = {:?}\nrepository = \"file://{}/\"\nhealth_deadline = \"4s\"\n",
                b.path("sys").display().to_string(),
                b.path("proc").display().to_string(),
                repo_root().join("hw-profiles").display().to_string(),
                repo.s("root.json"),
                repo.s("repo"),
            ),
        )
        .unwrap();
        c
    };
    let link = |name: &str, v: &str| {
        let p = releases.join(name);
        let _ = fs::remove_file(&p);
        std::os::unix::fs::symlink(v, &p).unwrap();
    };
    // What `appliance update apply` leaves for the next start (committing
    // prunes versions other than current and previous, so each part
    // installs its own).
    let put_state = |pending: &str, from: &str, starts: u32| {
        install(from);
        install(pending);
        fs::write(
            releases.join("state.json"),
            format!(
                r#"{{"position":1,"floor":"{from}","bad":[],"pending":{{"version":"{pending}","from":"{from}","since":"2026-11-30T02:00:00Z","starts":{starts}}}}}"#
            ),
        )
        .unwrap();
        link("previous", from);
        link("current", pending);
    };
    let state =
        || -> serde_json::Value { serde_json::from_slice(&fs::read(releases.join("state.json")).unwrap()).unwrap() };
    let start = |cfg: &PathBuf| {
        Command::new(releases.join("current/appliance"))
            .args(["run", "--config"])
            .arg(cfg)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.path().join("supervisor.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap()
    };
    let status = |cfg: &PathBuf| -> serde_json::Value {
        let out = Command::new(bin("appliance"))
            .args(["status", "--json", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    };

    // Healthy (nothing configured that could fail): committed.
    put_state("0.2.0", "0.1.0", 0);
    let healthy = config("");
    let mut child = start(&healthy);
    let st = wait_for("0.2.0 committed", Duration::from_secs(60), || {
        let s = state();
        if s["pending"].is_null() && s["last"]["result"] == "installed" {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    assert_eq!(st["floor"], "0.2.0");
    let s = wait_for("the status to show it", Duration::from_secs(30), || {
        let s = status(&healthy);
        if s["update"]["probation"].is_null() && s["update"]["last_result"]["result"] == "installed" {
            Ok(s)
        } else {
            Err(s["update"].to_string())
        }
    });
    assert_eq!(s["node"]["version"], "0.2.0");
    assert_eq!(s["update"]["running"], "0.2.0");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();

    // Unhealthy: BBB never answers. Rolled back, marked bad, and the
    // process ends with a failure so that systemd starts `current` again.
    put_state("0.3.0", "0.2.0", 0);
    let unhealthy = config(&format!(
        "[bbb]\nurl = \"http://127.0.0.1:{closed}/bigbluebutton/api\"\nsecret = \"0123456789\"\npoll_interval = \"1s\"\n"
    ));
    let mut child = start(&unhealthy);
    let code = wait_for(
        "the supervisor to exit after rolling back",
        Duration::from_secs(60),
        || match child.try_wait().unwrap() {
            Some(s) => Ok(s.code()),
            None => Err("running".into()),
        },
    );
    assert_eq!(code, Some(1), "a failure exit, for Restart=on-failure");
    let st = state();
    assert!(st["pending"].is_null(), "{st}");
    assert_eq!(st["bad"], serde_json::json!(["0.3.0"]));
    assert_eq!(st["last"]["result"], "rolled_back");
    assert!(
        st["last"]["reason"].as_str().unwrap().contains("BBB does not answer"),
        "{st}"
    );
    assert_eq!(fs::read_link(releases.join("current")).unwrap(), PathBuf::from("0.2.0"));
    // What systemd then starts is the previous version, running normally.
    let mut child = start(&healthy);
    let s = wait_for("0.2.0 running again", Duration::from_secs(60), || {
        let s = status(&healthy);
        if s["update"]["running"] == "0.2.0" {
            Ok(s)
        } else {
            Err(s["update"].to_string())
        }
    });
    assert!(s["update"]["probation"].is_null());
    assert_eq!(s["update"]["bad"], serde_json::json!(["0.3.0"]));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();

    // A version that died on each of its three starts (before it could
    // pass or fail its checks): the fourth start rolls it back at once.
    put_state("0.3.1", "0.2.0", 3);
    let mut child = start(&healthy);
    let code = wait_for("the loop breaker", Duration::from_secs(60), || {
        match child.try_wait().unwrap() {
            Some(s) => Ok(s.code()),
            None => Err("running".into()),
        }
    });
    assert_eq!(code, Some(1));
    let st = state();
    assert!(
        st["bad"].as_array().unwrap().contains(&serde_json::json!("0.3.1")),
        "{st}"
    );
    assert!(
        st["last"]["reason"].as_str().unwrap().contains("started 3 times"),
        "{st}"
    );
    assert_eq!(fs::read_link(releases.join("current")).unwrap(), PathBuf::from("0.2.0"));
}
