//! Helpers for the end-to-end tests: find (and build) the real binaries,
//! start the supervisor with a config of the test's making, talk to it
//! over HTTPS and its control socket, and wait for conditions with a
//! deadline instead of sleeping.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

pub mod release;
pub mod tls;
pub mod webdriver;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Path of a workspace binary, built first so a test never runs a stale one.
pub fn bin(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(repo_root())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build --workspace --bins failed");
    });
    let p = target_dir().join("debug").join(name);
    assert!(p.exists(), "{} missing after build", p.display());
    p
}

/// A free TCP port on loopback (released for the caller to bind).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` until it returns `Some` or `timeout` passes; panics with
/// `what` and the last value seen on timeout.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Copies a directory tree, keeping symlinks as symlinks (the recorded
/// sysfs trees have dangling `device` links on purpose).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        let dest = to.join(e.file_name());
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(e.path()).unwrap(), &dest).unwrap();
        } else if ft.is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A recorded box from appliance/monitor/tests/data, copied so the test
/// can change sensor values while the supervisor runs.
pub struct Box_ {
    pub dir: tempfile::TempDir,
}

impl Box_ {
    pub fn recorded(name: &str) -> Box_ {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&repo_root().join("appliance/monitor/tests/data").join(name), dir.path());
        Box_ { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Replaces a file atomically, as the kernel's files change: a reader
    /// never sees half a value.
    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let tmp = p.with_extension("tmp-write");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &p).unwrap();
    }
}

/// A running `appliance run`, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Supervisor {
    pub child: Option<Child>,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub addr: SocketAddr,
    pub log: PathBuf,
    _dir: Arc<tempfile::TempDir>,
}

/// The pieces of a test config that vary.
pub struct Setup<'a> {
    pub sysfs_root: &'a Path,
    pub procfs_root: &'a Path,
    /// Extra TOML appended to the generated config.
    pub extra: &'a str,
}

impl Supervisor {
    /// Writes a config into a fresh temp dir and starts the supervisor on it,
    /// returning once the admin server answers /healthz.
    pub fn start(setup: Setup<'_>) -> Supervisor {
        Self::start_env(setup, &[])
    }

    /// Like [`Supervisor::start`], with extra environment variables.
    pub fn start_env(setup: Setup<'_>, env: &[(&str, &str)]) -> Supervisor {
        Self::start_full(setup, env, None)
    }

    /// Like [`Supervisor::start`], with the state dir where the test says
    /// (e.g. on a small filesystem of its own).
    pub fn start_in(setup: Setup<'_>, state_dir: &Path) -> Supervisor {
        Self::start_full(setup, &[], Some(state_dir))
    }

    fn start_full(setup: Setup<'_>, env: &[(&str, &str)], state: Option<&Path>) -> Supervisor {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let state_dir = state.map(Path::to_path_buf).unwrap_or_else(|| dir.path().join("state"));
        let port = free_port();
        let config = dir.path().join("appliance.toml");
        // The watched filesystem is the host's (the test's temp dir), whose
        // fill is the host's business: a CI box with a fuller disk must not
        // turn every node yellow. Disk alerts are off unless a test sets them.
        let disk_alerts = if setup.extra.contains("alerts.disk") || setup.extra.contains("disk =") {
            ""
        } else {
            "[alerts.disk]\nfor = \"0s\"\n\n"
        };
        let text = format!(
            "[node]\nname = \"test-node\"\nstate_dir = {state:?}\n\n\
             [monitor]\ninterval = \"200ms\"\nsysfs_root = {sys:?}\nprocfs_root = {proc:?}\nfilesystems = [{fs:?}]\nhistory_save_interval = \"1s\"\n\n\
             [admin]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [hardware]\nprofiles_dir = {profiles:?}\n\n{disk_alerts}{extra}\n",
            state = state_dir.display().to_string(),
            sys = setup.sysfs_root.display().to_string(),
            proc = setup.procfs_root.display().to_string(),
            fs = dir.path().display().to_string(),
            profiles = repo_root().join("hw-profiles").display().to_string(),
            extra = setup.extra,
        );
        fs::write(&config, text).unwrap();
        Self::start_with_env(
            config,
            state_dir,
            format!("127.0.0.1:{port}").parse().unwrap(),
            dir,
            env,
        )
    }

    pub fn start_with(
        config: PathBuf,
        state_dir: PathBuf,
        addr: SocketAddr,
        dir: Arc<tempfile::TempDir>,
    ) -> Supervisor {
        Self::start_with_env(config, state_dir, addr, dir, &[])
    }

    /// Like [`Supervisor::start_with`], with extra environment variables
    /// (e.g. a NOTIFY_SOCKET of the test's own).
    pub fn start_with_env(
        config: PathBuf,
        state_dir: PathBuf,
        addr: SocketAddr,
        dir: Arc<tempfile::TempDir>,
        env: &[(&str, &str)],
    ) -> Supervisor {
        let log = dir
            .path()
            .join(format!("supervisor-{}.log", Instant::now().elapsed().as_nanos()));
        let log_file = fs::File::create(&log).unwrap();
        // APPLIANCE_TEST_NOFILE: run under that open-file limit (prlimit).
        let mut cmd = match env.iter().find(|(k, _)| *k == "APPLIANCE_TEST_NOFILE") {
            Some((_, n)) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin("appliance"));
                c
            }
            None => Command::new(bin("appliance")),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap();
        let mut s = Supervisor {
            child: Some(child),
            config,
            state_dir,
            addr,
            log,
            _dir: dir,
        };
        wait_for("the admin server to answer /healthz", Duration::from_secs(30), || {
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("supervisor exited early with {status}; log:\n{}", s.log_text());
            }
            match s.get("/healthz") {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("status {}", r.status)),
                Err(e) => Err(e),
            }
        });
        s
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET over HTTPS, pinning the certificate to the one in the state dir.
    pub fn get(&self, path: &str) -> Result<tls::Response, String> {
        let pin = self.cert_fingerprint();
        tls::https_get(self.addr, path, pin.as_deref())
    }

    /// SHA-256 of the admin certificate the supervisor keeps in its state dir.
    /// A certificate the operator installed wins over the generated one,
    /// as on the box.
    pub fn cert_fingerprint(&self) -> Option<String> {
        let installed = self.state_dir.join("tls/installed-cert.pem");
        if installed.exists() {
            return tls::pem_fingerprint(&installed);
        }
        tls::pem_fingerprint(&self.state_dir.join("tls/admin-cert.pem"))
    }

    pub fn metrics(&self) -> String {
        let r = self.get("/metrics").expect("GET /metrics");
        assert_eq!(r.status, 200);
        r.body
    }

    /// `appliance status --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Runs `appliance --config <this config> ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("appliance"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// Kills the supervisor with SIGKILL, as a power cut or the OOM killer would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the supervisor again on the same config and state dir.
    pub fn restart(&mut self) {
        self.kill9();
        let again = Supervisor::start_with(
            self.config.clone(),
            self.state_dir.clone(),
            self.addr,
            self._dir.clone(),
        );
        let mut again = again;
        self.child = again.child.take();
        self.log = again.log.clone();
        drop(again); // its child is ours now; dropping it kills nothing
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("supervisor did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of one sample in a Prometheus exposition, by its exact
/// series text (name plus labels as rendered).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Minimal plain-HTTP GET for local services (no TLS).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let r = tls::parse_response(&buf)?;
    Ok((r.status, r.body))
}

/// Minimal plain-HTTP POST without a body, for local services' test hooks
/// (e.g. the stand-in's `/standin/advance`).
pub fn http_post(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let r = tls::parse_response(&buf)?;
    Ok((r.status, r.body))
}

/// A child process killed and reaped when the guard drops, so a failing
/// test leaves nothing running.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
