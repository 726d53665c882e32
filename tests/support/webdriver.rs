//! A small W3C WebDriver client for Debian's Chromium through chromedriver:
//! enough to fill forms, click, read pages and take screenshots.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::{free_port, wait_for};

/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(self.addr, "DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    // chromedriver keeps connections open whatever the request says, so
    // read by Content-Length instead of to the end.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(len) = len {
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
    }
    let r = crate::tls::parse_response(&buf)?;
    let v: Value = serde_json::from_str(&r.body).map_err(|e| format!("{e}: {}", r.body))?;
    if r.status >= 400 {
        return Err(format!("{method} {path}: {} {}", r.status, v["value"]["message"]));
    }
    Ok(v["value"].clone())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that accepts the
    /// admin page's self-signed certificate.
    pub fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("chromedriver", Duration::from_secs(20), || {
            call(addr, "GET", "/status", None).map(|_| ())
        });
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--disable-quic", "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}});
        let v = call(addr, "POST", "/session", Some(&caps)).expect("a Chromium session");
        let session = v["sessionId"].as_str().expect("session id").to_string();
        Browser {
            driver,
            addr,
            session,
            _profile: profile,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(
            self.addr,
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        )
        .unwrap_or_else(|e| panic!("webdriver: {e}"))
    }

    pub fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// Waits until the browser is at `url` and the page has loaded (a click
    /// that submits a form may return before the new page is there).
    pub fn wait_url(&self, url: &str) {
        wait_for(&format!("the browser at {url}"), Duration::from_secs(20), || {
            let now = self.url();
            let ready = self.eval("return document.readyState").as_str() == Some("complete");
            if now == url && ready { Ok(()) } else { Err(now) }
        });
    }

    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.cmd(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many elements match a CSS selector.
    pub fn count(&self, css: &str) -> usize {
        self.find_all(css).len()
    }

    fn one(&self, css: &str) -> String {
        self.find_all(css)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element {css} on {}", self.url()))
    }

    pub fn fill(&self, css: &str, text: &str) {
        let e = self.one(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.cmd("POST", &format!("/element/{e}/value"), Some(json!({ "text": text })));
    }

    pub fn select(&self, css: &str, value: &str) {
        self.click(&format!("{css} option[value='{value}']"));
    }

    pub fn click(&self, css: &str) {
        let e = self.one(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    pub fn text(&self, css: &str) -> String {
        let e = self.one(css);
        self.cmd("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs JavaScript in the page and returns its result.
    pub fn eval(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
    }

    /// Saves what a person sees at a desktop (1280x900) and at a phone
    /// (390x844, emulated as a mobile device) as `dir/NAME-desktop.png`
    /// and `dir/NAME-phone.png`. Returns the two paths.
    pub fn screenshots(&self, dir: &Path, name: &str) -> [PathBuf; 2] {
        let shot = |w: u32, h: u32, mobile: bool, tag: &str| {
            self.cmd(
                "POST",
                "/goog/cdp/execute",
                Some(json!({"cmd": "Emulation.setDeviceMetricsOverride",
                            "params": {"width": w, "height": h, "deviceScaleFactor": 1, "mobile": mobile}})),
            );
            let b64 = self.cmd("GET", "/screenshot", None);
            let png = base64::engine::general_purpose::STANDARD
                .decode(b64.as_str().unwrap_or_default())
                .expect("base64 screenshot");
            std::fs::create_dir_all(dir).unwrap();
            let p = dir.join(format!("{name}-{tag}.png"));
            std::fs::write(&p, png).unwrap();
            p
        };
        let out = [shot(1280, 900, false, "desktop"), shot(390, 844, true, "phone")];
        self.cmd(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.clearDeviceMetricsOverride", "params": {}})),
        );
        out
    }

    /// Saves a PNG of the viewport (full page height) to `dir/name.png`.
    pub fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        // Grow the window to the page so the picture shows all of it.
        let h = self
            .eval("return document.documentElement.scrollHeight")
            .as_u64()
            .unwrap_or(1000)
            .clamp(600, 8000);
        self.cmd("POST", "/window/rect", Some(json!({ "width": 1280, "height": h })));
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("base64 screenshot");
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join(format!("{name}.png"));
        std::fs::write(&p, png).unwrap();
        p
    }
}
