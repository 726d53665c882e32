//! Service management against real systemd: builds the lab image
//! (`image/build lab`), boots it in QEMU (`image/boot`), and drives the
//! supervisor inside it through SSH and the forwarded admin port.
//!
//! Needs root, apt and the Debian mirror (image/build installs what it
//! needs), so it is `#[ignore]`d for a plain `cargo test`; `scripts/test`
//! (and CI) runs it with `--include-ignored`. One boot serves all the
//! scenarios, each of which leaves the stack healthy for the next.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use appliance_e2e::release::{Repo, remaster_os_bundle};
use appliance_e2e::{bin, free_port, metric, repo_root, tls, wait_for};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

struct Vm {
    qemu: Child,
    ssh_port: u16,
    admin_port: u16,
    key: PathBuf,
    console: PathBuf,
    /// The VM's own disk: a copy of the image, written to (`--persist`),
    /// so that a killed QEMU can be started again on the same disk.
    disk: PathBuf,
    hostfwd: String,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// Starts QEMU on `disk` (image/boot --persist), which keeps what the VM
/// wrote across a power cycle.
/// Every ssh into the VM. ConnectTimeout bounds the connect and the banner;
/// the ServerAlive pair bounds a session whose guest went away mid-command
/// (a reboot while the test asks for the boot id): QEMU's user network keeps
/// the host's end open, nothing tells ssh, and it would wait for hours while
/// the guest, rebooted, never hears from the test again.
const SSH_OPTS: &[&str] = &[
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=5",
    "-o",
    "ServerAliveInterval=5",
    "-o",
    "ServerAliveCountMax=4",
];

fn start_qemu(disk: &Path, ssh_port: u16, admin_port: u16, console: &Path, hostfwd: &str) -> Child {
    Command::new(repo_root().join("image/boot"))
        .arg("--persist")
        .arg(disk)
        .env("APPLIANCE_SSH_PORT", ssh_port.to_string())
        .env("APPLIANCE_ADMIN_PORT", admin_port.to_string())
        .env("APPLIANCE_CONSOLE_LOG", console)
        .env("APPLIANCE_VM_HOSTFWD", hostfwd)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The VM's disk: a sparse copy of the image, 4 GiB larger (as a server's
/// disk is larger than the image: the data partition grows into it).
fn vm_disk(image: &Path) -> PathBuf {
    let dir = repo_root().join("target/vm-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("lab.img");
    assert!(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&disk)
            .status()
            .unwrap()
            .success()
    );
    std::fs::copy(image.with_extension("img.info"), disk.with_extension("img.info")).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(f.metadata().unwrap().len() + 4096 * 1024 * 1024).unwrap();
    disk
}

impl Vm {
    /// Kills QEMU (a power cut) and starts it again on the same disk.
    fn power_cycle(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        self.qemu = start_qemu(&self.disk, self.ssh_port, self.admin_port, &self.console, &self.hostfwd);
    }

    /// This boot's id; changes with every boot.
    fn boot_id(&self) -> Option<String> {
        match self.sh("cat /proc/sys/kernel/random/boot_id") {
            (0, id) if !id.trim().is_empty() => Some(id.trim().to_string()),
            _ => None,
        }
    }

    /// Waits for a boot other than `old` to come up to a running supervisor.
    fn wait_rebooted(&self, old: &str, what: &str, within: Duration) -> String {
        let id = wait_for(what, within, || match self.boot_id() {
            Some(id) if id != old => Ok(id),
            Some(_) => Err("still the old boot".into()),
            None => Err("no SSH".into()),
        });
        wait_for(
            "the supervisor after the reboot",
            Duration::from_secs(300),
            || match self.sh("systemctl is-active appliance.service") {
                (0, _) => Ok(()),
                (_, s) => Err(s),
            },
        );
        id
    }

    /// Runs a shell command in the VM as root; returns (exit code, stdout).
    fn sh(&self, cmd: &str) -> (i32, String) {
        let out = Command::new("ssh")
            .args(["-i"])
            .arg(&self.key)
            .args(["-p", &self.ssh_port.to_string()])
            .args(SSH_OPTS)
            .args(["root@127.0.0.1", cmd])
            .output()
            .expect("running ssh");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Like `sh`, but the command must succeed.
    fn run(&self, cmd: &str) -> String {
        let (code, out) = self.sh(cmd);
        assert_eq!(
            code,
            0,
            "in the VM: {cmd}\n{out}\nconsole tail:\n{}",
            self.console_tail()
        );
        out
    }

    fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// One systemd property of a unit, read from systemd itself.
    fn prop(&self, unit: &str, p: &str) -> String {
        self.run(&format!("systemctl show -p {p} --value {unit}"))
            .trim()
            .to_string()
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.run("appliance status --json")).expect("status JSON")
    }

    /// The status, or why not (the supervisor may be restarting).
    fn try_status(&self) -> Result<Value, String> {
        match self.sh("appliance status --json") {
            (0, out) => serde_json::from_str(&out).map_err(|e| e.to_string()),
            (c, _) => Err(format!("appliance status exited {c}")),
        }
    }

    /// A call of BBB's API on the stand-in in the VM, signed with the
    /// node's own secret (SHA-1, as bbb-web accepts).
    fn bbb(&self, call: &str, query: &str) -> String {
        self.run(&format!(
            "q='{query}'; c=$(printf '%s%s%s' {call} \"$q\" \"$(cat /var/lib/appliance-secrets/bbb-secret)\" | sha1sum | cut -c1-40); \
             curl -s \"http://127.0.0.1:8090/bigbluebutton/api/{call}?${{q:+$q&}}checksum=$c\""
        ))
    }

    /// Asks the supervisor's update task to check now.
    fn check_updates(&self) {
        self.run("curl -sf --unix-socket /var/lib/appliance/control.sock -X POST http://node/v1/update/check");
    }

    fn services(&self) -> Value {
        serde_json::from_str(&self.run("appliance services --json")).expect("services JSON")
    }

    fn metrics(&self) -> String {
        let r = tls::https_get(
            format!("127.0.0.1:{}", self.admin_port).parse().unwrap(),
            "/metrics",
            None,
        )
        .unwrap();
        assert_eq!(r.status, 200);
        r.body
    }
}

fn service<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// Builds the lab image, trusting `repo`'s update root (as a cooperative
/// bakes its own root into the images it ships).
fn build_image(repo: &Repo) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "appliance-supervisor",
            "-p",
            "appliance-bbb-standin",
        ])
        .current_dir(repo_root())
        .status()
        .unwrap();
    assert!(st.success(), "release build failed");
    // Any time of day, and a short health deadline for the bad releases.
    let settings = repo.p("update-settings.toml");
    std::fs::write(
        &settings,
        "window = \"00:00-23:59\"\nhealth_deadline = \"45s\"\nos.health_deadline = \"45s\"\n",
    )
    .unwrap();
    let out = Command::new(repo_root().join("image/build"))
        .arg("lab")
        .env("APPLIANCE_IMAGE_UPDATE_ROOT", repo.p("root.json"))
        .env("APPLIANCE_IMAGE_UPDATE_SETTINGS", &settings)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "image/build lab failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(stdout.lines().last().expect("image path on the last line").trim())
}

fn info(image: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(image.with_extension("img.info")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_default()
        .to_string()
}

#[test]
#[ignore = "builds and boots a VM: needs root and the Debian mirror; run by scripts/test"]
fn services_are_kept_healthy_by_the_supervisor_under_real_systemd() {
    let repo = Repo::new();
    let image = build_image(&repo);
    let key = PathBuf::from(info(&image, "ssh_key"));
    assert!(key.exists(), "test key {}", key.display());
    // For working on the installer alone: the scenarios before it take
    // three quarters of an hour under TCG.
    if std::env::var("APPLIANCE_VM_ONLY").as_deref() == Ok("installer") {
        usb_installer(&image, &key);
        return;
    }
    let (ssh_port, admin_port) = (free_port(), free_port());
    // Two more ports into the VM: nginx's default site on 80, which the lab
    // recipe's [firewall] declares, and its health endpoint on 8081, which
    // it does not.
    let (declared_port, undeclared_port) = (free_port(), free_port());
    let console = repo_root().join("target/vm-test-console.log");
    let _ = std::fs::remove_file(&console);
    let disk = vm_disk(&image);
    let hostfwd = format!("tcp:127.0.0.1:{declared_port}-:80,tcp:127.0.0.1:{undeclared_port}-:8081");
    let started = Instant::now();
    let qemu = start_qemu(&disk, ssh_port, admin_port, &console, &hostfwd);
    let mut vm = Vm {
        qemu,
        ssh_port,
        admin_port,
        key,
        console,
        disk,
        hostfwd,
    };

    // --- boot ------------------------------------------------------------
    let addr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_for(
        "the supervisor's /healthz in the VM",
        Duration::from_secs(300),
        || match tls::https_get(addr, "/healthz", None) {
            Ok(r) if r.status == 200 && r.body == "ok\n" => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e),
        },
    );
    let boot_to_ready = started.elapsed();
    eprintln!(
        "VM: boot to supervisor ready (healthz ok) in {:.1} s",
        boot_to_ready.as_secs_f64()
    );
    wait_for("ssh into the VM", T, || match vm.sh("true") {
        (0, _) => Ok(()),
        (c, o) => Err(format!("{c} {o}")),
    });
    eprintln!(
        "VM: systemd-analyze: {}",
        vm.run("systemd-analyze time | head -n1").trim()
    );
    let score = vm.run("systemd-analyze security appliance.service | tail -n1");
    eprintln!("VM: {}", score.trim());
    assert!(score.contains("OK") || score.contains("SAFE"), "{score}");
    assert_eq!(vm.prop("appliance.service", "ActiveState"), "active");
    assert_eq!(vm.prop("appliance.service", "User"), "appliance");
    hardened_image(&vm, &image, declared_port, undeclared_port);
    gateway_behind_nginx(&vm, declared_port);

    // The console screen, on the serial port in place of a login prompt,
    // shows the admin URL, the certificate fingerprint and the setup code.
    let screen = vm.run("appliance console --once");
    let setup_code = screen
        .lines()
        .find_map(|l| l.strip_prefix("Setup code   "))
        .expect("setup code")
        .to_string();
    let fp_start = screen
        .lines()
        .skip_while(|l| !l.starts_with("Certificate"))
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    wait_for("the console screen on the serial port", T, || {
        let log = std::fs::read_to_string(&vm.console).unwrap_or_default();
        if log.contains(&format!("Setup code   {setup_code}"))
            && log.contains(&fp_start)
            && log.contains("Admin page   https://10.0.2.15:8443/")
        {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    assert_eq!(vm.prop("appliance-console@ttyS0.service", "ActiveState"), "active");

    // Every lab service comes up healthy, the bbb check included (which
    // needs the secret appliance-firstboot made for this box).
    let s = wait_for("all lab services up", Duration::from_secs(120), || {
        let s = vm.services();
        let down: Vec<String> = s["services"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["up"] != true || v["state"] != "ok")
            .map(|v| format!("{}={}/{}", v["name"], v["state"], v["active_state"]))
            .collect();
        if down.is_empty() { Ok(s) } else { Err(down.join(" ")) }
    });
    assert_eq!(s["services"].as_array().unwrap().len(), 7);
    assert_eq!(
        vm.run("stat -c '%a %U:%G' /var/lib/appliance-secrets/bbb-secret")
            .trim(),
        "640 root:appliance"
    );
    let m = vm.metrics();
    assert_eq!(metric(&m, "appliance_service_up{service=\"redis-server\"}"), Some(1.0));
    wait_for("BBB stand-in polled", T, || {
        match metric(&vm.metrics(), "appliance_bbb_up") {
            Some(1.0) => Ok(()),
            o => Err(format!("{o:?}")),
        }
    });

    // --- redis-server killed with SIGKILL: restarted by the supervisor -----
    // Timed on the VM's own monotonic clock (systemd's timestamps), so the
    // SSH round trips of this test do not count. The time is a figure for
    // docs/performance.md, not an assertion: under TCG it follows the
    // host's speed (1.5 s on a quiet host, 6.8 s on a busy one with an
    // 82 s boot), and speed is measured, not asserted, here.
    let pid = vm.prop("redis-server", "MainPID");
    let killed_at: f64 = vm
        .run(&format!("cut -d' ' -f1 /proc/uptime; kill -9 {pid}"))
        .trim()
        .parse()
        .unwrap();
    let entered = wait_for("redis back", Duration::from_secs(30), || {
        let (new, state) = (
            vm.prop("redis-server", "MainPID"),
            vm.prop("redis-server", "ActiveState"),
        );
        if new != pid && new != "0" && state == "active" && vm.run("redis-cli ping").trim() == "PONG" {
            Ok(vm.prop("redis-server", "ActiveEnterTimestampMonotonic"))
        } else {
            Err(format!("pid {new} {state}"))
        }
    });
    let back = entered.parse::<f64>().unwrap() / 1e6 - killed_at;
    eprintln!(
        "VM: redis-server active again {back:.2} s after SIGKILL (systemd NRestarts={})",
        vm.prop("redis-server", "NRestarts")
    );
    assert_eq!(
        vm.prop("redis-server", "NRestarts"),
        "0",
        "the supervisor restarted it, not systemd"
    );
    assert!(back > 0.0, "active again after the kill ({back:.2} s)");
    wait_for("supervisor sees redis up", T, || {
        if service(&vm.services(), "redis-server")["up"] == true {
            Ok(())
        } else {
            Err("down".into())
        }
    });

    // --- nginx health check fails (500): restart after the threshold -------
    let inv = vm.prop("nginx", "InvocationID");
    // The check that the reload broke it runs in the same SSH session: a
    // second session takes seconds under TCG, by which time the supervisor
    // may already be restarting nginx (nothing listens for a moment).
    let t0 = Instant::now();
    assert_eq!(
        vm.run(
            "printf 'return 500 \"broken\\\\n\";\\n' > /var/lib/lab/health.conf && systemctl reload nginx \
             && curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8081/health"
        ),
        "500"
    );
    let s = wait_for("nginx restarted by the supervisor", T, || {
        let s = vm.services();
        if service(&s, "nginx")["restarts"].as_u64().unwrap_or(0) >= 1 {
            Ok(s)
        } else {
            Err(service(&s, "nginx").to_string())
        }
    });
    let after = t0.elapsed();
    assert_ne!(vm.prop("nginx", "InvocationID"), inv, "systemd started a new nginx");
    // Three failed checks one second apart come before the restart.
    assert!(
        after >= Duration::from_secs(2),
        "restarted after {after:?}, before 3 failed checks"
    );
    let nginx = service(&s, "nginx");
    assert!(
        nginx["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("status 500, expected 200"),
        "{nginx}"
    );
    vm.run("printf 'return 200 \"ok\\\\n\";\\n' > /var/lib/lab/health.conf && systemctl reload nginx");
    vm.run("appliance services reset nginx");
    wait_for("nginx healthy again", T, || {
        let n = service(&vm.services(), "nginx").clone();
        if n["up"] == true && n["state"] == "ok" {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });

    // --- a crash loop: the supervisor gives up and stops restarting ---------
    vm.run("mkdir -p /run/lab && touch /run/lab/crash-lab-crashloop && systemctl kill lab-crashloop");
    let s = wait_for("gave up on lab-crashloop", Duration::from_secs(120), || {
        let s = vm.services();
        if service(&s, "lab-crashloop")["state"] == "failed" {
            Ok(s)
        } else {
            Err(service(&s, "lab-crashloop").to_string())
        }
    });
    let gave_up_at = service(&s, "lab-crashloop")["restarts"].as_u64().unwrap();
    assert_eq!(gave_up_at, 4, "crash_loop_restarts = 4 in recipes/lab.toml");
    let st = vm.status();
    assert_eq!(st["health"]["status"], "critical");
    let alert = st["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "service:lab-crashloop")
        .unwrap()
        .clone();
    assert_eq!(alert["severity"], "critical");
    assert!(
        alert["reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 4 restarts within 2m"),
        "{alert}"
    );
    assert_eq!(vm.prop("lab-crashloop", "ActiveState"), "failed");
    // Ten more seconds of supervision: no further restart.
    let up0 = st["node"]["uptime_seconds"].as_f64().unwrap();
    wait_for("10 s of supervision", T, || {
        let up = vm.status()["node"]["uptime_seconds"].as_f64().unwrap();
        if up > up0 + 10.0 { Ok(()) } else { Err(format!("{up}")) }
    });
    assert_eq!(
        service(&vm.services(), "lab-crashloop")["restarts"].as_u64(),
        Some(gave_up_at),
        "no restart after giving up"
    );
    assert_eq!(vm.prop("lab-crashloop", "ActiveState"), "failed");
    let m = vm.metrics();
    assert_eq!(
        metric(&m, "appliance_service_failed{service=\"lab-crashloop\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&m, "appliance_health_status"), Some(2.0));
    // The operator fixes the cause and resets it.
    vm.run("rm /run/lab/crash-lab-crashloop");
    assert!(
        vm.run("appliance services reset lab-crashloop")
            .starts_with("lab-crashloop reset")
    );
    wait_for("lab-crashloop up after reset", T, || {
        let v = service(&vm.services(), "lab-crashloop").clone();
        if v["up"] == true && v["state"] == "ok" {
            Ok(())
        } else {
            Err(v.to_string())
        }
    });

    // --- freeswitch dies: it is restarted, then what depends on it ---------
    let fs0 = vm.prop("lab-freeswitch", "ActiveEnterTimestampMonotonic");
    let esl0 = vm.prop("lab-fsesl", "ActiveEnterTimestampMonotonic");
    vm.run("systemctl kill -s KILL lab-freeswitch");
    let (fs1, esl1) = wait_for("freeswitch and fsesl restarted", T, || {
        let fs1 = vm.prop("lab-freeswitch", "ActiveEnterTimestampMonotonic");
        let esl1 = vm.prop("lab-fsesl", "ActiveEnterTimestampMonotonic");
        let active =
            vm.prop("lab-fsesl", "ActiveState") == "active" && vm.prop("lab-freeswitch", "ActiveState") == "active";
        if fs1 != fs0 && esl1 != esl0 && active {
            Ok((fs1, esl1))
        } else {
            Err(format!("{fs1} {esl1}"))
        }
    });
    let (fs1, esl1): (u64, u64) = (fs1.parse().unwrap(), esl1.parse().unwrap());
    assert!(esl1 > fs1, "fsesl ({esl1}) must start after freeswitch ({fs1})");
    let s = vm.services();
    assert_eq!(service(&s, "lab-freeswitch")["restarts"], 1);
    assert_eq!(service(&s, "lab-fsesl")["restarts"], 1);
    assert_eq!(
        service(&s, "lab-fsesl")["last_failure"]["reason"],
        "restarted after lab-freeswitch"
    );

    // An operator restart runs the same chain, through the CLI.
    assert_eq!(
        vm.run("appliance services restart lab-freeswitch").trim(),
        "restarting lab-freeswitch, then lab-fsesl"
    );
    wait_for("chain restarted by the operator", T, || {
        let s = vm.services();
        if service(&s, "lab-fsesl")["restarts"] == 2 && service(&s, "lab-fsesl")["state"] == "ok" {
            Ok(())
        } else {
            Err(service(&s, "lab-fsesl").to_string())
        }
    });
    // Units outside the recipe are refused by polkit.
    let (code, _) = vm.sh("runuser -u appliance -- systemctl --no-ask-password restart ssh");
    assert_ne!(
        code, 0,
        "the supervisor's user must not manage units outside the recipe"
    );

    let m = vm.metrics();
    assert_eq!(
        metric(&m, "appliance_service_restarts_total{service=\"lab-freeswitch\"}"),
        Some(2.0)
    );

    // The admin page: setup with the console's code, then a unit's journal
    // through the Logs API (the supervisor reads it as group systemd-journal).
    let form = format!(
        "code={setup_code}&operator=Operator-pass-1234&operator2=Operator-pass-1234&viewer=Viewer-pass-5678&viewer2=Viewer-pass-5678"
    );
    let ct = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = tls::https_request(addr, "POST", "/setup", None, &ct, &form).unwrap();
    assert_eq!((r.status, r.header("location")), (303, Some("/login?done=1")));
    let r = tls::https_request(
        addr,
        "POST",
        "/login",
        None,
        &ct,
        "user=operator&password=Operator-pass-1234",
    )
    .unwrap();
    assert_eq!(r.status, 303);
    let cookie = r.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    let r = tls::https_request(
        addr,
        "GET",
        "/api/v1/logs?unit=nginx.service&limit=50",
        None,
        &[("Cookie", &cookie)],
        "",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let lines: Value = serde_json::from_str(&r.body).unwrap();
    assert!(!lines.as_array().unwrap().is_empty(), "nginx's journal: {}", r.body);
    assert!(lines.as_array().unwrap().iter().all(|l| l["unit"] == "nginx.service"));
    let screen = vm.run("appliance console --once");
    assert!(screen.contains("Setup        done") && !screen.contains(&setup_code));
    operator_ssh(&vm, addr, &cookie);
    // For working on the first part alone (about a quarter of the run).
    if std::env::var("APPLIANCE_VM_ONLY").as_deref() == Ok("base") {
        return;
    }

    // Global ops, on the host (10.0.2.2 from the VM), serving the update
    // repository the image trusts; the node enrolls with it.
    let ops = Ops::start(&repo.p("repo"));
    let token = ops.cli(&["token", "create", "--node", "lab-vm"]);
    let token = token.lines().last().unwrap().trim().to_string();
    vm.run(&format!(
        "appliance enroll --ops https://10.0.2.2:{} --token {token}",
        ops.port
    ));
    signed_updates(&vm, addr, &repo, &ops);
    os_updates(&mut vm, &image, &repo, &ops);
    // One VM at a time: TCG has two cores.
    let key = vm.key.clone();
    drop(vm);
    usb_installer(&image, &key);
    eprintln!("VM: whole scenario in {:.0} s", started.elapsed().as_secs_f64());
}

/// SSH for operators, from the admin page: a key added and SSH turned on
/// lets that key in (as root, no forwarding), audited; turned off, sshd
/// stops and its port closes; turned on again, it is back. (The test image
/// also lets in root with the test key, which is how this test talks to
/// the VM.)
fn operator_ssh(vm: &Vm, addr: std::net::SocketAddr, cookie: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("operator");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "operator@city"])
        .arg("-f")
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let session = tls::https_request(addr, "GET", "/api/v1/session", None, &[("Cookie", cookie)], "").unwrap();
    let csrf = serde_json::from_str::<Value>(&session.body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_string();
    let post = |form: &str| {
        let body = format!("csrf={csrf}&{form}");
        let r = tls::https_request(
            addr,
            "POST",
            "/settings/ssh",
            None,
            &[
                ("Cookie", cookie),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            &body,
        )
        .unwrap();
        assert_eq!(r.status, 303, "{form}: {}", r.body);
        r.header("location").unwrap_or_default().to_string()
    };
    let as_operator = |cmd: &str| {
        Command::new("ssh")
            .arg("-i")
            .arg(&key)
            .args(["-p", &vm.ssh_port.to_string()])
            .args(SSH_OPTS)
            .args(["-o", "IdentitiesOnly=yes", "root@127.0.0.1", cmd])
            .output()
            .unwrap()
    };
    // Before: the operator's key is not let in.
    assert!(!as_operator("true").status.success());
    let encoded: String = public
        .trim()
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let to = post(&format!("action=add&key={encoded}"));
    assert!(to.contains("added"), "{to}");
    // Added, but SSH is still off for operators' keys.
    assert_eq!(vm.run("appliance ssh authorized-keys root"), "");
    let to = post("action=enable");
    assert!(to.contains("SSH+is+on") || to.contains("SSH%20is%20on"), "{to}");
    let out = as_operator("id -u");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    let keys = vm.run("appliance ssh authorized-keys root");
    assert!(keys.starts_with("restrict,pty ssh-ed25519 "), "{keys}");
    assert_eq!(vm.run("appliance ssh authorized-keys appliance"), "", "root only");
    let r = tls::https_request(addr, "GET", "/api/v1/audit", None, &[("Cookie", cookie)], "").unwrap();
    assert!(
        r.body.contains("add SSH key") && r.body.contains("turn SSH on"),
        "{}",
        r.body
    );
    assert!(!r.body.contains("AAAA"), "the audit names keys by fingerprint only");
    // Off: sshd stops, so nobody gets in (the test key neither).
    post("action=disable");
    wait_for("sshd to stop", T, || match as_operator("true").status.success() {
        false => Ok(()),
        true => Err("still let in".into()),
    });
    assert_ne!(vm.sh("true").0, 0, "sshd is down");
    // On again from the admin page: back.
    post("action=enable");
    wait_for("sshd back", T, || match vm.sh("true") {
        (0, _) => Ok(()),
        (c, o) => Err(format!("{c} {o}")),
    });
    assert!(as_operator("true").status.success());
}

/// What the hardened image promises, checked on the running VM: a
/// read-only root verified by dm-verity, the data partition on /var grown to
/// the disk, the box's own machine-id and secrets, no failed unit, the
/// hardening sysctls, and a firewall that answers only on declared ports.
fn hardened_image(vm: &Vm, image: &Path, declared_port: u16, undeclared_port: u16) {
    // Root: the verity device, squashfs, read-only; a write fails.
    assert_eq!(
        vm.run("findmnt -no SOURCE,FSTYPE / | tr -s ' '").trim(),
        "/dev/mapper/root squashfs"
    );
    assert!(vm.run("findmnt -no OPTIONS /").split(',').any(|o| o == "ro"));
    let (code, _) = vm.sh("touch /usr/bin/planted 2>&1");
    assert_ne!(code, 0, "the root file system must refuse writes");
    let verity = vm.run("veritysetup status root");
    assert!(verity.contains("type:        VERITY"), "{verity}");
    assert!(verity.contains("status:      verified"), "{verity}");
    assert!(
        verity.contains(&format!("root hash:   {}", info(image, "roothash"))),
        "the slot is checked against the build's root hash: {verity}"
    );
    let table = vm.run("dmsetup table root");
    assert!(table.contains(" verity "), "{table}");
    let cmdline = vm.run("cat /proc/cmdline");
    assert!(cmdline.contains("appliance.slot=a"), "{cmdline}");
    assert_eq!(vm.run("cat /run/appliance/boot-slot").trim(), "a");

    // The qemu hardware profile's [boot]: its module loaded, its kernel
    // parameter written into the boot entry for the next start (the VM's
    // first start had the build's entry), and `hw detect` telling which.
    assert_eq!(vm.run("systemctl is-active appliance-hw-boot.service").trim(), "active");
    assert_eq!(vm.sh("test -d /sys/module/drivetemp").0, 0, "drivetemp loaded");
    let entry = vm.run("cat /efi/loader/entries/appliance-a.conf");
    let options = entry.lines().find(|l| l.starts_with("options ")).unwrap_or_default();
    assert!(options.ends_with(" mitigations=auto"), "{entry}");
    let detect = vm.run("appliance hw detect");
    assert!(detect.contains("profile   qemu"), "{detect}");
    assert!(detect.contains("module    drivetemp: loaded"), "{detect}");
    let in_effect = cmdline.split_whitespace().any(|w| w == "mitigations=auto");
    let said = if in_effect {
        "kernel    mitigations=auto: in effect"
    } else {
        "kernel    mitigations=auto: not in effect yet"
    };
    assert!(detect.contains(said), "{detect}");

    // /var: the data partition, grown at first boot into the larger disk
    // image/boot gives the VM (4 GiB more than the image).
    let var = vm.run("findmnt -no SOURCE,FSTYPE /var | tr -s ' '");
    assert!(var.trim().ends_with(" ext4"), "{var}");
    let disk_mib: u64 = vm
        .run("echo $(( $(cat /sys/class/block/$(cat /run/appliance/boot-disk)/size) / 2048 ))")
        .trim()
        .parse()
        .unwrap();
    let var_mib: u64 = vm.run("df -m --output=size /var | tail -n1").trim().parse().unwrap();
    let image_mib = std::fs::metadata(image).unwrap().len() / 1048576;
    assert!(
        disk_mib >= image_mib + 4000,
        "the VM's disk is {disk_mib} MiB, the image {image_mib}"
    );
    assert!(
        var_mib + 256 + 2 * 768 + 400 > disk_mib,
        "/var is {var_mib} MiB on a {disk_mib} MiB disk: not grown to fill it"
    );
    eprintln!("VM: /var grown to {var_mib} MiB on a {disk_mib} MiB disk (image {image_mib} MiB)");

    // The box's own identity, kept on the data partition.
    let id = vm.run("cat /etc/machine-id").trim().to_string();
    assert_eq!(id.len(), 32, "{id}");
    assert_eq!(vm.run("cat /var/lib/machine-id").trim(), id);
    // Secrets are made on the box, never shipped: the root holds none.
    assert_eq!(
        vm.run("find / -xdev \\( -name 'bbb-secret*' -o -name '*.key' -o -name 'ssh_host_*' \\) | head")
            .trim(),
        ""
    );
    // The ESP, mounted by systemd-gpt-auto-generator, holds slot A's entry.
    assert!(vm.run("ls /efi/loader/entries/").contains("appliance-a.conf"));

    // Nothing failed on the way up (a read-only root breaks units that
    // write below /).
    assert_eq!(vm.run("systemctl --failed --no-legend --plain").trim(), "");
    for (key, want) in [
        ("kernel.kptr_restrict", "2"),
        ("kernel.dmesg_restrict", "1"),
        ("kernel.unprivileged_bpf_disabled", "1"),
        ("kernel.yama.ptrace_scope", "2"),
        ("fs.protected_regular", "2"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.tcp_syncookies", "1"),
    ] {
        assert_eq!(vm.run(&format!("sysctl -n {key}")).trim(), want, "{key}");
    }

    // The firewall: made from the recipe, inbound policy drop.
    let rules = vm.run("nft list table inet appliance");
    assert!(rules.contains("policy drop"), "{rules}");
    assert!(rules.contains("tcp dport { 22, 80, 3478, 8443 } accept"), "{rules}");
    // nginx answers on both ports inside the VM ...
    assert_eq!(
        vm.run("curl -s -o /dev/null -w '%{http_code}' http://10.0.2.15:8081/health"),
        "200"
    );
    // ... but from outside only on the declared one.
    let ask = |port: u16| -> Result<String, String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(b"GET /health HTTP/1.0\r\nHost: node\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    let declared = wait_for("nginx on the declared port 80 from the host", T, || {
        match ask(declared_port) {
            Ok(r) if r.starts_with("HTTP/1.1 ") => Ok(r),
            Ok(r) => Err(format!("answer {r:?}")),
            Err(e) => Err(e),
        }
    });
    assert!(declared.starts_with("HTTP/1.1 404"), "{declared}");
    let undeclared = ask(undeclared_port).unwrap_or_default();
    assert!(
        !undeclared.contains("HTTP/"),
        "port 8081 is not in the recipe's [firewall] but answered: {undeclared:?}"
    );
}

/// From the host through nginx on the declared port 80, as a member's front
/// end calls the node: BBB's API path reaches the supervisor's gateway
/// (the image's `[gateway]` and the recipe's nginx route), which passes
/// calls on to the stand-in. BBB's shared secret works while the node has
/// no members; then a member's own secret makes a meeting that BBB holds
/// under the member's scope, and BBB's secret is refused.
fn gateway_behind_nginx(vm: &Vm, port: u16) {
    use appliance_bbb::{Algorithm, checksum, encode_query};
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let bbb_secret = vm.run("cat /var/lib/appliance-secrets/bbb-secret").trim().to_string();
    let call = |name: &str, params: &[(&str, &str)], secret: &str| -> String {
        let q = encode_query(params);
        let path = format!(
            "/bigbluebutton/api/{name}?{q}&checksum={}",
            checksum(Algorithm::Sha1, name, &q, secret)
        );
        wait_for(&format!("{name} through nginx"), T, || {
            match appliance_e2e::http_get(addr, &path) {
                Ok((200, body)) => Ok(body),
                Ok((status, body)) => Err(format!("{status} {body}")),
                Err(e) => Err(e),
            }
        })
    };
    let listed = call("getMeetings", &[], &bbb_secret);
    assert!(
        listed.contains("<returncode>SUCCESS</returncode>"),
        "no members: BBB's secret works: {listed}"
    );
    let out = vm.run("appliance members add coop-a --name 'Co-op A' --rooms 2");
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("{out}"))
        .trim()
        .to_string();
    let created = call("create", &[("meetingID", "lab-room"), ("name", "Lab room")], &secret);
    assert!(created.contains("<meetingID>lab-room</meetingID>"), "{created}");
    let inside = vm.bbb("getMeetings", "");
    assert!(
        inside.contains("<meetingID>coop-a~lab-room</meetingID>"),
        "the member's meeting, scoped inside BBB: {inside}"
    );
    let refused = call("getMeetings", &[], &bbb_secret);
    assert!(refused.contains("<messageKey>checksumError</messageKey>"), "{refused}");
    let ended = call("end", &[("meetingID", "lab-room")], &secret);
    assert!(ended.contains("<returncode>SUCCESS</returncode>"), "{ended}");
    vm.run("appliance members remove coop-a --yes");
    wait_for("no meeting left in the stand-in", T, || {
        let m = vm.bbb("getMeetings", "");
        if m.contains("<meetingID>") { Err(m) } else { Ok(()) }
    });
}

/// `appliance-ops serve` on the host, reached from the VM at 10.0.2.2.
struct Ops {
    child: Child,
    config: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Ops {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ops {
    fn start(repository: &Path) -> Ops {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("ops.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\npublic_url = \"https://10.0.2.2:{port}\"\nstate_dir = \"state\"\nreport_interval = \"5s\"\nupdate_repository = {:?}\n",
                repository.display().to_string()
            ),
        )
        .unwrap();
        let child = Command::new(bin("appliance-ops"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ops = Ops {
            child,
            config,
            port,
            _dir: dir,
        };
        let cert = ops.config.parent().unwrap().join("state/tls/admin-cert.pem");
        wait_for("ops /healthz", T, || {
            let r = tls::https_get(
                format!("127.0.0.1:{port}").parse().unwrap(),
                "/healthz",
                tls::pem_fingerprint(&cert).as_deref(),
            )?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(r.status.to_string())
            }
        });
        ops
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(bin("appliance-ops"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "appliance-ops {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// What ops knows of the VM's updates (from its reports).
    fn node_update(&self) -> Value {
        let nodes: Value = serde_json::from_str(&self.cli(&["nodes", "--json"])).unwrap();
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "lab-vm")
            .map(|n| n["update"].clone())
            .unwrap_or(Value::Null)
    }
}

/// Global ops publishes releases; the node takes each inside its window and
/// never during a meeting, keeps a good one, takes back one that does not
/// start and one that starts but fails its health checks, marks both bad,
/// does not retry them, and reports each result to ops.
fn signed_updates(vm: &Vm, addr: std::net::SocketAddr, repo: &Repo, ops: &Ops) {
    let t0 = Instant::now();
    // The image trusts the repository's root (build_image): once enrolled,
    // the node's updates come from this ops.
    vm.check_updates();
    let st = wait_for("the supervisor with updates on", T, || match vm.try_status() {
        Ok(s) if !s["update"].is_null() => Ok(s),
        Ok(s) => Err(s["update"].to_string()),
        Err(e) => Err(e),
    });
    let first = st["update"]["running"].as_str().unwrap().to_string();
    assert_eq!(
        first,
        env!("CARGO_PKG_VERSION"),
        "the image's own supervisor is the first release"
    );
    assert_eq!(vm.run("readlink /var/lib/appliance/releases/current").trim(), first);
    let release_bin = std::fs::read(repo_root().join("target/release/appliance")).unwrap();

    // A meeting runs: 0.2.0 is found but waits.
    vm.bbb("create", "meetingID=board&name=Board");
    vm.bbb("join", "meetingID=board&fullName=Alice&role=MODERATOR");
    wait_for("the meeting seen", T, || match vm.try_status() {
        Ok(s) if s["bbb"]["meetings"] == 1 => Ok(()),
        Ok(s) => Err(s["bbb"].to_string()),
        Err(e) => Err(e),
    });
    repo.add("0.2.0", &release_bin);
    vm.check_updates();
    wait_for("0.2.0 found and held back by the meeting", T, || {
        let waiting = vm.sh("journalctl -u appliance --no-pager | grep -c 'updates: waiting: 1 meetings running'");
        match vm.try_status() {
            Ok(s) if s["update"]["available"] == "0.2.0" && waiting.1.trim() != "0" => Ok(()),
            Ok(s) => Err(format!("{} / {}", s["update"], waiting.1)),
            Err(e) => Err(e),
        }
    });
    assert_eq!(
        vm.status()["update"]["running"],
        first.as_str(),
        "nothing installed during the meeting"
    );
    // The meeting ends: it is installed, starts, passes its checks.
    vm.bbb("end", "meetingID=board");
    vm.check_updates();
    let st = wait_for("0.2.0 installed and committed", Duration::from_secs(300), || {
        match vm.try_status() {
            Ok(s)
                if s["update"]["running"] == "0.2.0"
                    && s["update"]["probation"].is_null()
                    && s["update"]["last_result"]["result"] == "installed" =>
            {
                Ok(s)
            }
            Ok(s) => Err(s["update"].to_string()),
            Err(e) => Err(e),
        }
    });
    assert_eq!(st["node"]["version"], "0.2.0");
    assert_eq!(st["update"]["previous"], first.as_str());
    let r = tls::https_get(addr, "/healthz", None).unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok\n"),
        "the new version serves the admin page"
    );
    eprintln!(
        "VM: 0.2.0 installed after the meeting, committed, {:.0} s into the update scenario",
        t0.elapsed().as_secs_f64()
    );

    // 0.3.0 exits at once: counted before each start, taken back after three.
    repo.add("0.3.0", b"#!/bin/sh\necho 'this release does not start' >&2\nexit 1\n");
    vm.check_updates();
    let rolled_back = |v: &str, why: &str| {
        wait_for(&format!("{v} rolled back"), Duration::from_secs(300), || {
            match vm.try_status() {
                Ok(s)
                    if s["update"]["running"] == "0.2.0"
                        && s["update"]["bad"].as_array().unwrap().iter().any(|b| b == v)
                        && s["update"]["last_result"]["version"] == v
                        && s["update"]["last_result"]["result"] == "rolled_back" =>
                {
                    Ok(s)
                }
                Ok(s) => Err(s["update"].to_string()),
                Err(e) => Err(e),
            }
        });
        let st = vm.status();
        let reason = st["update"]["last_result"]["reason"].as_str().unwrap().to_string();
        assert!(reason.contains(why), "{v}: {reason}");
        // Reported to ops.
        wait_for(&format!("ops to hear of {v}"), T, || {
            let u = ops.node_update();
            match u["last_result"].as_str() {
                Some(r) if r.starts_with(&format!("{v} rolled_back")) => Ok(()),
                _ => Err(u.to_string()),
            }
        });
    };
    rolled_back("0.3.0", "started 3 times");
    eprintln!(
        "VM: 0.3.0 (exits at start) rolled back, {:.0} s in",
        t0.elapsed().as_secs_f64()
    );

    // 0.4.0 starts but BBB refuses it (a wrong secret): its health checks
    // fail and it takes itself back.
    let wrapper = b"#!/bin/sh\n# Starts the real supervisor with a BBB secret that BBB refuses.\nhere=\"$(dirname \"$(readlink -f \"$0\")\")\"\nsed 's|^secret_file = .*|secret = \"not-the-secret-0000\"|' /etc/appliance/appliance.toml > /var/lib/appliance/wrong-secret.toml\nexec \"$here/appliance.real\" run --config /var/lib/appliance/wrong-secret.toml\n";
    repo.add_files(
        "0.4.0",
        &[("appliance", wrapper, 0o755), ("appliance.real", &release_bin, 0o755)],
    );
    vm.check_updates();
    // (The first check to fail names it: the recipe's BBB service check or
    // the BBB poll, both refused the same secret.)
    rolled_back("0.4.0", "health checks did not pass within 45s");
    eprintln!(
        "VM: 0.4.0 (fails its health checks) rolled back, {:.0} s in",
        t0.elapsed().as_secs_f64()
    );

    // Neither is tried again.
    let before = vm.status()["update"]["last_check"].as_f64().unwrap_or(0.0);
    vm.check_updates();
    let st = wait_for("another check", T, || match vm.try_status() {
        Ok(s) if s["update"]["last_check"].as_f64().unwrap_or(0.0) > before => Ok(s),
        Ok(s) => Err(s["update"].to_string()),
        Err(e) => Err(e),
    });
    assert_eq!(st["update"]["running"], "0.2.0");
    assert!(st["update"]["probation"].is_null());
    let passed: Vec<String> = st["update"]["passed_over"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for v in ["0.3.0", "0.4.0"] {
        assert!(
            passed
                .iter()
                .any(|p| p.starts_with(&format!("{v} failed on this node before"))),
            "{passed:?}"
        );
    }
    eprintln!("VM: signed updates scenario in {:.0} s", t0.elapsed().as_secs_f64());
}

/// `appliance os status --json` in the VM, or why not (it may be rebooting).
fn os_status(vm: &Vm) -> Result<Value, String> {
    match vm.sh("appliance os status --json") {
        (0, out) => serde_json::from_str(&out).map_err(|e| e.to_string()),
        (c, out) => Err(format!("exit {c}: {out}")),
    }
}

fn entries(vm: &Vm) -> String {
    vm.run("ls /efi/loader/entries | sort | tr '\\n' ' '")
        .trim()
        .to_string()
}

/// OS updates, A/B: global ops publishes an OS image; the node writes it to
/// the other slot, reboots into it and keeps it once healthy. A broken one
/// (its supervisor never becomes healthy) uses up its three tries and the
/// boot loader goes back by itself; the node reports it. A power cut while
/// writing leaves a node that boots the old slot and tries again.
fn os_updates(vm: &mut Vm, image: &Path, repo: &Repo, ops: &Ops) {
    let t0 = Instant::now();
    let bundle = PathBuf::from(info(image, "os_bundle"));
    let dir = repo_root().join("target/vm-test");
    let first = info(image, "os_version");
    let st = os_status(vm).unwrap();
    assert_eq!(
        (st["running"].as_str(), st["slot"].as_str()),
        (Some(first.as_str()), Some("a"))
    );
    assert_eq!(entries(vm), "appliance-a.conf");

    // --- 0.5.0: written to slot B, booted, kept -------------------------
    let good = dir.join("os-0.5.0.tar");
    remaster_os_bundle(&bundle, &good, "0.5.0", "true");
    repo.add_os(&good);
    let boot0 = vm.boot_id().unwrap();
    let started = Instant::now();
    vm.check_updates();
    let boot1 = vm.wait_rebooted(&boot0, "the reboot into OS 0.5.0", Duration::from_secs(900));
    let installed_in = started.elapsed();
    let st = wait_for(
        "OS 0.5.0 kept after its health checks",
        Duration::from_secs(600),
        || match os_status(vm) {
            Ok(s) if s["running"] == "0.5.0" && s["pending"].is_null() && s["last_result"]["result"] == "installed" => {
                Ok(s)
            }
            Ok(s) => Err(s.to_string()),
            Err(e) => Err(e),
        },
    );
    assert_eq!(st["slot"], "b");
    assert!(vm.run("veritysetup status root").contains("data device: /dev/vda3"));
    // The entry the update wrote carried the hardware profile's parameter.
    let cmdline = vm.run("cat /proc/cmdline");
    assert!(cmdline.split_whitespace().any(|w| w == "mitigations=auto"), "{cmdline}");
    // systemd-bless-boot dropped the counter: the slot is known good.
    wait_for("slot B's entry blessed", T, || match entries(vm).as_str() {
        "appliance-a.conf appliance-b.conf" => Ok(()),
        other => Err(other.to_string()),
    });
    eprintln!(
        "VM: OS 0.5.0 published to running from slot B in {:.0} s (download, write, check, reboot); kept {:.0} s into the OS scenario",
        installed_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    wait_for("ops to hear of OS 0.5.0", T, || {
        let u = ops.node_update();
        match (u["os_version"].as_str(), u["os_last_result"].as_str()) {
            (Some(v), Some(r)) if v == "0.5.0 (slot B)" && r.starts_with("0.5.0 installed") => Ok(()),
            _ => Err(u.to_string()),
        }
    });

    // --- 0.6.0: never healthy; the boot loader goes back to slot B --------
    let broken = dir.join("os-0.6.0.tar");
    remaster_os_bundle(
        &bundle,
        &broken,
        "0.6.0",
        r#"sed -i 's|^secret_file = .*|secret = "not-the-secret-0000"|' etc/appliance/appliance.toml"#,
    );
    repo.add_os(&broken);
    let started = Instant::now();
    vm.check_updates();
    vm.wait_rebooted(&boot1, "the reboot into OS 0.6.0", Duration::from_secs(900));
    let st = wait_for(
        "OS 0.6.0 given up and slot B booted again",
        Duration::from_secs(1800),
        || match os_status(vm) {
            Ok(s)
                if s["slot"] == "b"
                    && s["last_result"]["version"] == "0.6.0"
                    && s["last_result"]["result"] == "rolled_back" =>
            {
                Ok(s)
            }
            Ok(s) => Err(s.to_string()),
            Err(e) => Err(e),
        },
    );
    assert_eq!(st["running"], "0.5.0");
    assert!(st["bad"].as_array().unwrap().iter().any(|v| v == "0.6.0"), "{st}");
    let reason = st["last_result"]["reason"].as_str().unwrap();
    assert!(reason.contains("did not come up healthy in 3 boots"), "{reason}");
    // Three tries used, none left: systemd-boot's own counter.
    assert_eq!(entries(vm), "appliance-a+0-3.conf appliance-b.conf");
    eprintln!(
        "VM: OS 0.6.0 (never healthy) fell back to slot B by itself in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    wait_for("ops to hear of OS 0.6.0", T, || {
        let u = ops.node_update();
        match u["os_last_result"].as_str() {
            Some(r) if r.starts_with("0.6.0 rolled_back") => Ok(()),
            _ => Err(u.to_string()),
        }
    });
    // --- 0.7.0: the power goes while slot A is written --------------------
    let next = dir.join("os-0.7.0.tar");
    remaster_os_bundle(&bundle, &next, "0.7.0", "true");
    repo.add_os(&next);
    // Slow the write down (1 MB/s) for this boot only, so the cut lands in
    // the middle of it.
    vm.run(
        "mkdir -p /run/systemd/system/appliance-os-update.service.d && \
         printf '[Service]\\nEnvironment=APPLIANCE_OS_WRITE_RATE=1000000\\n' > /run/systemd/system/appliance-os-update.service.d/slow.conf && \
         systemctl daemon-reload",
    );
    let boot2 = vm.boot_id().unwrap();
    vm.check_updates();
    wait_for("slot A being written", Duration::from_secs(600), || {
        let state = vm.sh("cat /var/lib/appliance-os/state.json").1;
        let log = vm.sh("journalctl -u appliance-os-update --no-pager -b").1;
        if state.contains("\"step\": \"writing\"") && log.contains("writing OS 0.7.0 to slot A") {
            Ok(())
        } else {
            Err(state)
        }
    });
    vm.power_cycle();
    vm.wait_rebooted(&boot2, "the boot after the power cut", Duration::from_secs(600));
    let st = os_status(vm).unwrap();
    assert_eq!(
        (st["running"].as_str(), st["slot"].as_str()),
        (Some("0.5.0"), Some("b")),
        "{st}"
    );
    assert_eq!(st["last_result"]["version"], "0.7.0");
    assert_eq!(st["last_result"]["result"], "failed");
    assert!(
        st["last_result"]["reason"].as_str().unwrap().contains("cut short"),
        "{st}"
    );
    assert!(
        !st["bad"].as_array().unwrap().iter().any(|v| v == "0.7.0"),
        "not held against it: {st}"
    );
    // The half-written slot has no entry: nothing can boot it.
    assert_eq!(entries(vm), "appliance-b.conf");
    // Tried again (an operator's check; on its own at the next interval).
    vm.check_updates();
    // (Installed, then the supervisor reboots into it within half a minute.)
    wait_for("OS 0.7.0 written again", Duration::from_secs(900), || {
        match os_status(vm) {
            Ok(s)
                if s["pending"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("0.7.0 in slot A (installed")) =>
            {
                Ok(())
            }
            Ok(s) if s["running"] == "0.7.0" && s["slot"] == "a" => Ok(()),
            Ok(s) => Err(s.to_string()),
            Err(e) => Err(e),
        }
    });
    eprintln!("VM: OS update scenario in {:.0} s", t0.elapsed().as_secs_f64());
}

/// Installing a box: the image, plugged in as a USB stick beside an empty
/// internal disk, offers on the serial console to install itself; once the
/// disk is named and "ERASE vda" typed, it writes the disk and the box
/// starts from it, with its own identity.
fn usb_installer(image: &Path, key: &Path) {
    let t0 = Instant::now();
    let dir = repo_root().join("target/vm-test");
    std::fs::create_dir_all(&dir).unwrap();
    let internal = dir.join("internal.img");
    let _ = std::fs::remove_file(&internal);
    let _ = std::fs::remove_file(internal.with_extension("img.vars"));
    let sock = dir.join("serial.sock");
    let console = repo_root().join("target/vm-install-console.log");
    // QEMU appends to the log: an old run's lines would answer the waits.
    let _ = std::fs::remove_file(&console);
    let (ssh_port, admin_port) = (free_port(), free_port());
    let qemu = Command::new(repo_root().join("image/boot"))
        .arg(image)
        .env("APPLIANCE_VM_INSTALL_TO", &internal)
        .env("APPLIANCE_VM_SERIAL_SOCKET", &sock)
        .env("APPLIANCE_SSH_PORT", ssh_port.to_string())
        .env("APPLIANCE_ADMIN_PORT", admin_port.to_string())
        .env("APPLIANCE_CONSOLE_LOG", &console)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let vm = Vm {
        qemu,
        ssh_port,
        admin_port,
        key: key.to_path_buf(),
        console: console.clone(),
        disk: internal.clone(),
        hostfwd: String::new(),
    };
    let log = || std::fs::read_to_string(&console).unwrap_or_default();
    let tail = || {
        let l = log();
        let lines: Vec<&str> = l.lines().rev().take(12).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    wait_for(
        "the installer's question on the serial console",
        Duration::from_secs(600),
        || {
            if log().contains("Type the name of the disk to install to") {
                Ok(())
            } else {
                Err(format!("not yet; the console ends with:\n{}", tail()))
            }
        },
    );
    // It runs from the stick (sda, removable) and offers the internal disk.
    assert_eq!(vm.run("cat /run/appliance/boot-disk").trim(), "sda");
    let offered = log();
    assert!(offered.contains("  vda  8.0 GiB"), "{offered}");
    assert!(!offered.contains("  sda  "), "the stick itself is not offered");
    let stick_id = vm.run("cat /etc/machine-id").trim().to_string();
    let stick_secret = vm.run("cat /var/lib/appliance-secrets/bbb-secret").trim().to_string();
    let boot0 = vm.boot_id().unwrap();

    use std::io::Write;
    let mut serial = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    // Once connected, QEMU sends the console here as well as to the log: a
    // reader that never reads fills the socket, and then the guest's serial
    // port stalls (the echo of what was typed, then the installer itself).
    let mut drain = serial.try_clone().unwrap();
    std::thread::spawn(move || std::io::copy(&mut drain, &mut std::io::sink()));
    serial.write_all(b"vda\n").unwrap();
    wait_for("the confirmation question", T, || {
        if log().contains("Type ERASE vda to confirm") {
            Ok(())
        } else {
            Err(format!("not yet; the console ends with:\n{}", tail()))
        }
    });
    serial.write_all(b"ERASE vda\n").unwrap();
    let started = Instant::now();
    wait_for("the installation", Duration::from_secs(900), || {
        let l = log();
        if l.contains("Remove the USB stick: the box now starts from vda") {
            Ok(())
        } else if l.contains("Error") || l.contains("error:") {
            Err(format!("failed? the console ends with:\n{}", tail()))
        } else {
            Err(format!("not yet; the console ends with:\n{}", tail()))
        }
    });
    let written_in = started.elapsed();
    vm.wait_rebooted(
        &boot0,
        "the box starting from its internal disk",
        Duration::from_secs(900),
    );
    assert_eq!(vm.run("cat /run/appliance/boot-disk").trim(), "vda");
    // The ESP came from the stick, whose entry had the hardware profile's
    // parameter added at its start.
    let cmdline = vm.run("cat /proc/cmdline");
    assert!(cmdline.split_whitespace().any(|w| w == "mitigations=auto"), "{cmdline}");
    assert!(
        vm.sh("test -e /run/appliance/installer").0 != 0,
        "no installer on the internal disk"
    );
    assert_eq!(vm.run("findmnt -no SOURCE /var").trim(), "/dev/vda4");
    assert!(vm.run("veritysetup status root").contains("data device: /dev/vda2"));
    // Its own identity, not the stick's; its own partition UUIDs.
    wait_for("the installed box's first boot duties", T, || {
        match vm.sh("cat /var/lib/appliance-secrets/bbb-secret") {
            (0, s) if !s.trim().is_empty() => Ok(()),
            (_, s) => Err(s),
        }
    });
    assert_ne!(vm.run("cat /etc/machine-id").trim(), stick_id);
    assert_ne!(vm.run("cat /var/lib/appliance-secrets/bbb-secret").trim(), stick_secret);
    let uuids = vm.run("lsblk -rno PARTUUID /dev/vda1 /dev/sda1");
    let u: Vec<&str> = uuids.split_whitespace().collect();
    assert_eq!(u.len(), 2, "{uuids}");
    assert_ne!(u[0], u[1], "the installed ESP has its own UUID");
    let addr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_for(
        "the admin page of the installed box",
        Duration::from_secs(300),
        || match tls::https_get(addr, "/healthz", None) {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(r.status.to_string()),
            Err(e) => Err(e),
        },
    );
    eprintln!(
        "VM: USB installer wrote the internal disk in {:.0} s; whole installer scenario {:.0} s",
        written_in.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
