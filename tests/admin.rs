//! The admin page over real HTTPS with the real supervisor: first-boot
//! setup with the console's code, login, roles, the setup code's single
//! use, and no secret in logs or the support bundle.

use std::io::Read;
use std::time::Duration;

use appliance_e2e::tls::{Response, https_request};
use appliance_e2e::{Box_, Setup, Supervisor, wait_for};

const OP: &str = "Operator-pass-1234";
const VIEW: &str = "viewer pass phrase 99";

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn post(s: &Supervisor, path: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Response {
    let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded".to_string())];
    if let Some(c) = cookie {
        headers.push(("Cookie", format!("appliance_session={c}")));
    }
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    https_request(
        s.addr,
        "POST",
        path,
        s.cert_fingerprint().as_deref(),
        &h,
        &body.join("&"),
    )
    .unwrap()
}

fn get(s: &Supervisor, path: &str, cookie: &str) -> Response {
    let c = format!("appliance_session={cookie}");
    https_request(
        s.addr,
        "GET",
        path,
        s.cert_fingerprint().as_deref(),
        &[("Cookie", &c)],
        "",
    )
    .unwrap()
}

fn session_of(r: &Response) -> String {
    let c = r.header("set-cookie").expect("a session cookie");
    c.split(';')
        .next()
        .unwrap()
        .strip_prefix("appliance_session=")
        .unwrap()
        .to_string()
}

fn console(s: &Supervisor) -> String {
    let out = s.cli(&["console", "--once"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn setup_login_roles_and_no_secrets_anywhere() {
    let b = Box_::recorded("intel-coretemp-nvme");
    let s = Supervisor::start(Setup {
        sysfs_root: &b.path("sys"),
        procfs_root: &b.path("proc"),
        extra: "",
    });

    // The console shows the URL, the fingerprint and the setup code.
    let screen = console(&s);
    let code = screen
        .lines()
        .find_map(|l| l.strip_prefix("Setup code   "))
        .expect("a setup code on the console")
        .to_string();
    assert!(
        screen.contains(&format!("Admin page   https://{}/", s.addr)),
        "{screen}"
    );
    let fp = s.cert_fingerprint().unwrap();
    assert!(
        screen.contains(&fp.split(':').take(8).collect::<Vec<_>>().join(":")),
        "{screen}"
    );

    // Before setup everything leads to the setup page.
    let r = https_request(s.addr, "GET", "/", s.cert_fingerprint().as_deref(), &[], "").unwrap();
    assert_eq!((r.status, r.header("location")), (303, Some("/setup")));
    // A wrong code is refused and changes nothing.
    let form = |code: &str| {
        vec![
            ("code", code.to_string()),
            ("operator", OP.into()),
            ("operator2", OP.into()),
            ("viewer", VIEW.into()),
            ("viewer2", VIEW.into()),
        ]
    };
    let f: Vec<(&str, String)> = form("AAAAA-AAAAA");
    let r = post(
        &s,
        "/setup",
        None,
        &f.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
    );
    assert_eq!(r.status, 403);
    assert!(r.body.contains("the setup code is not right"));
    // Weak passwords are refused with the reason.
    let r = post(
        &s,
        "/setup",
        None,
        &[
            ("code", &code),
            ("operator", "short"),
            ("operator2", "short"),
            ("viewer", VIEW),
            ("viewer2", VIEW),
        ],
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("at least 12 characters"), "{}", r.body);
    // The right code, typed in lower case without the dash.
    let typed = code.replace('-', "").to_lowercase();
    let f = form(&typed);
    let r = post(
        &s,
        "/setup",
        None,
        &f.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
    );
    assert_eq!((r.status, r.header("location")), (303, Some("/login?done=1")));
    // Single use: the same code again does nothing.
    let f = form(&code);
    let r = post(
        &s,
        "/setup",
        None,
        &f.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
    );
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    let screen = console(&s);
    assert!(
        screen.contains("Setup        done") && !screen.contains(&code),
        "{screen}"
    );

    // Operator and viewer log in.
    let r = post(&s, "/login", None, &[("user", "operator"), ("password", OP)]);
    assert_eq!(r.status, 303);
    let op = session_of(&r);
    let r = post(&s, "/login", None, &[("user", "viewer"), ("password", VIEW)]);
    let viewer = session_of(&r);
    let r = get(&s, "/api/v1/session", &op);
    let sess: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(sess["role"], "operator");
    let csrf = sess["csrf"].as_str().unwrap().to_string();
    let r = get(&s, "/api/v1/status", &viewer);
    assert_eq!(r.status, 200);
    let st: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(st["hardware"]["profile"], "dell-poweredge-r650");
    // The overview is light: no external assets, well under 200 KB.
    let r = get(&s, "/", &viewer);
    assert_eq!(r.status, 200);
    assert!(r.body.len() < 200 * 1024, "{} bytes", r.body.len());
    assert!(
        !r.body.contains("src=\"http") && !r.body.contains("href=\"http"),
        "no external assets"
    );
    // Hardware graphs have data points from the history.
    let b2 = wait_for("graph points", Duration::from_secs(20), || {
        let r = get(&s, "/hardware", &viewer);
        if r.body.contains("<polyline") {
            Ok(r.body)
        } else {
            Err("no polyline yet".into())
        }
    });
    assert!(
        b2.contains("Temperature coretemp/Package id 0") && b2.contains("critical 95 °C"),
        "thresholds drawn"
    );

    // Viewer: no bundle, no changes.
    assert_eq!(get(&s, "/support-bundle", &viewer).status, 403);
    let r = post(
        &s,
        "/settings/password",
        Some(&viewer),
        &[
            ("csrf", "x"),
            ("account", "viewer"),
            ("password", "Another-pass-123"),
            ("password2", "Another-pass-123"),
        ],
    );
    assert_eq!(r.status, 403);

    // The operator's support bundle holds no secret.
    let r = https_request(
        s.addr,
        "GET",
        "/support-bundle",
        s.cert_fingerprint().as_deref(),
        &[("Cookie", &format!("appliance_session={op}"))],
        "",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/gzip"));
    // The test client reads bodies as text; fetch the raw bytes again.
    let raw = raw_get(&s, "/support-bundle", &op);
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut tar).unwrap();
    let text = String::from_utf8_lossy(&tar);
    for name in [
        "status.json",
        "config.toml",
        "supervisor.log",
        "hw-profile.toml",
        "audit.jsonl",
    ] {
        assert!(text.contains(&format!("support-bundle/{name}")), "{name} in the bundle");
    }
    for secret in [
        OP,
        VIEW,
        code.as_str(),
        typed.as_str(),
        op.as_str(),
        viewer.as_str(),
        csrf.as_str(),
    ] {
        assert!(!text.contains(secret), "the bundle holds a secret");
    }
    assert!(text.contains("\"action\":\"setup\""), "the audit log is in the bundle");

    // Logout ends the session.
    let r = post(&s, "/logout", Some(&op), &[("csrf", &csrf)]);
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    assert_eq!(get(&s, "/api/v1/status", &op).status, 401);

    // No secret in the supervisor's log, nor in the audit log on disk.
    let log = s.log_text();
    let audit = std::fs::read_to_string(s.state_dir.join("admin/audit.jsonl")).unwrap();
    for secret in [
        OP,
        VIEW,
        code.as_str(),
        typed.as_str(),
        op.as_str(),
        viewer.as_str(),
        csrf.as_str(),
    ] {
        assert!(!log.contains(secret), "a secret in the log");
        assert!(!audit.contains(secret), "a secret in the audit log");
    }
    assert!(audit.contains("\"action\":\"login\"") && audit.contains("\"action\":\"logout\""));
}

/// GET returning the raw body bytes (for binary downloads).
fn raw_get(s: &Supervisor, path: &str, cookie: &str) -> Vec<u8> {
    let r = appliance_e2e::tls::https_raw(
        s.addr,
        "GET",
        path,
        s.cert_fingerprint().as_deref(),
        &[("Cookie", &format!("appliance_session={cookie}"))],
        "",
    )
    .unwrap();
    r.1
}
