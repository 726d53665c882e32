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

/// A supervisor whose setup is done, for the login tests.
fn set_up() -> (Box_, Supervisor) {
    let b = Box_::recorded("no-sensors");
    let s = Supervisor::start(Setup {
        sysfs_root: &b.path("sys"),
        procfs_root: &b.path("proc"),
        extra: "",
    });
    let code = console(&s)
        .lines()
        .find_map(|l| l.strip_prefix("Setup code   ").map(str::to_string))
        .expect("a setup code on the console");
    let r = post(
        &s,
        "/setup",
        None,
        &[
            ("code", &code),
            ("operator", OP),
            ("operator2", OP),
            ("viewer", VIEW),
            ("viewer2", VIEW),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    (b, s)
}

/// The supervisor's peak resident memory so far (VmHWM), in MiB.
fn peak_rss_mib(s: &Supervisor) -> f64 {
    let pid = s.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// `n` logins at once, as threads of their own; their statuses.
fn burst(s: &Supervisor, n: usize, form: impl Fn(usize) -> (String, String) + Sync) -> Vec<u16> {
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (user, pw) = form(i);
                sc.spawn(move || post(s, "/login", None, &[("user", &user), ("password", &pw)]).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Wrong logins one after the other until one is refused (429); how many
/// were checked and found wrong (401) on the way.
fn until_refused(s: &Supervisor, form: impl Fn(usize) -> (String, String)) -> usize {
    for i in 0..100 {
        let (user, pw) = form(i);
        match post(s, "/login", None, &[("user", &user), ("password", &pw)]).status {
            401 => {}
            429 => return i,
            other => panic!("status {other}"),
        }
    }
    panic!("never refused");
}

#[test]
fn a_burst_of_wrong_logins_checks_few_passwords_and_stays_small() {
    let (_b, s) = set_up();
    eprintln!("peak RSS {:.1} MiB before the burst", peak_rss_mib(&s));
    // 150 wrong operator passwords at once, before any is checked.
    let st = burst(&s, 150, |i| ("operator".into(), format!("wrong password {i}")));
    let peak = peak_rss_mib(&s);
    eprintln!("peak RSS {peak:.1} MiB during 150 wrong logins at once");
    assert!(peak < 256.0, "peak RSS {peak:.0} MiB during the burst");
    // At most 10 checked (the lockout: the 10th locks, 429); the others
    // refused before hashing (429) or for want of a hashing permit (503,
    // which gives its place back).
    let wrong = count(&st, 401);
    assert!((1..10).contains(&wrong), "{st:?}");
    assert_eq!(wrong + count(&st, 429) + count(&st, 503), 150, "{st:?}");
    // Exactly ten checks in all before the lock, however they arrived.
    let more = until_refused(&s, |i| ("operator".into(), format!("more wrong {i}")));
    assert_eq!(
        wrong + more,
        9,
        "wrong passwords checked before the tenth locked the account"
    );
    // The account is locked now: the right password is refused.
    let r = post(&s, "/login", None, &[("user", "operator"), ("password", OP)]);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("locked"), "{}", r.body);
    // The viewer's account is not.
    let r = post(&s, "/login", None, &[("user", "viewer"), ("password", VIEW)]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(s.get("/healthz").unwrap().status, 200);
}

#[test]
fn parallel_guesses_from_one_address_stop_at_its_limit() {
    let (_b, s) = set_up();
    // 60 guesses across made-up names at once: at most 30 checked per address.
    let st = burst(&s, 60, |i| (format!("user{i}"), "guess".into()));
    let wrong = count(&st, 401);
    assert!((1..=30).contains(&wrong), "{st:?}");
    assert_eq!(wrong + count(&st, 429) + count(&st, 503), 60, "{st:?}");
    let more = until_refused(&s, |i| (format!("later{i}"), "guess".into()));
    assert_eq!(wrong + more, 30, "checked from one address in all");
    // The address is blocked now, whatever the account.
    let r = post(&s, "/login", None, &[("user", "viewer"), ("password", VIEW)]);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(
        r.body.contains("too many failed logins from this address"),
        "{}",
        r.body
    );
}

/// A certificate for localhost valid from `from` to `to` (years), its key,
/// and its SHA-256 fingerprint.
fn certificate(from: i32, to: i32) -> (String, String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(to, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let fp = appliance_e2e::tls::fingerprint(cert.der());
    (cert.pem(), key.serialize_pem(), fp)
}

/// A form POST to a server pinned to the certificate `pin`.
fn post_pinned(s: &Supervisor, pin: &str, path: &str, cookie: &str, form: &[(&str, &str)]) -> Response {
    let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
    let c = format!("appliance_session={cookie}");
    https_request(
        s.addr,
        "POST",
        path,
        Some(pin),
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Cookie", &c)],
        &body.join("&"),
    )
    .unwrap()
}

#[test]
fn a_refused_certificate_leaves_the_installed_one_in_use_also_after_a_restart() {
    let (_b, mut s) = set_up();
    let r = post(&s, "/login", None, &[("user", "operator"), ("password", OP)]);
    let op = session_of(&r);
    let sess: serde_json::Value = serde_json::from_str(&get(&s, "/api/v1/session", &op).body).unwrap();
    let csrf = sess["csrf"].as_str().unwrap().to_string();
    let addr = s.addr;
    let served = |pin: &str| {
        https_request(addr, "GET", "/healthz", Some(pin), &[], "")
            .map(|r| r.status)
            .unwrap_or(0)
    };
    // The operator installs a certificate of the city's; it is served at once.
    let (cert, key, fp) = certificate(2025, 2035);
    let generated = s.cert_fingerprint().unwrap();
    let r = post_pinned(
        &s,
        &generated,
        "/settings/certificate",
        &op,
        &[("csrf", &csrf), ("certificate", &cert), ("key", &key)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.header("location").unwrap().contains("certificate+installed"),
        "{:?}",
        r.headers
    );
    assert_eq!(served(&fp), 200);
    // An expired one is refused, and changes nothing: not what is served,
    // not what is on disk.
    let (old_cert, old_key, old_fp) = certificate(2019, 2020);
    let r = post_pinned(
        &s,
        &fp,
        "/settings/certificate",
        &op,
        &[("csrf", &csrf), ("certificate", &old_cert), ("key", &old_key)],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.header("location").unwrap().contains("expired"), "{:?}", r.headers);
    assert_eq!(served(&fp), 200, "the installed certificate is still served");
    assert_eq!(served(&old_fp), 0, "the refused one is not");
    // Nor after a restart.
    s.restart();
    assert_eq!(served(&fp), 200, "the installed certificate is served after a restart");
}

#[test]
fn unauthenticated_traffic_neither_erases_nor_fills_the_audit_log() {
    let (_b, s) = set_up();
    // The operator is in, and does something that is audited.
    let r = post(&s, "/login", None, &[("user", "operator"), ("password", OP)]);
    let op = session_of(&r);
    let r = post(&s, "/login", None, &[("user", "operator"), ("password", OP)]);
    let other = session_of(&r);
    let sess: serde_json::Value = serde_json::from_str(&get(&s, "/api/v1/session", &other).body).unwrap();
    let r = post(&s, "/logout", Some(&other), &[("csrf", sess["csrf"].as_str().unwrap())]);
    assert_eq!(r.status, 303);
    // A name that would forge a log line.
    let r = post(
        &s,
        "/login",
        None,
        &[("user", "x\nERROR forged line"), ("password", "nope")],
    );
    assert_eq!(r.status, 401);
    // 5,000 attempts with 10 KB names, 8 at a time.
    let name = "n".repeat(10 * 1024);
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let name = name.clone();
                let s = &s;
                sc.spawn(move || {
                    (0..625)
                        .map(|_| post(s, "/login", None, &[("user", &name), ("password", "nope")]).status)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.len(), 5000);
    assert!(statuses.iter().all(|s| [401, 429, 503].contains(s)), "{statuses:?}");
    let size = std::fs::metadata(s.state_dir.join("admin/audit.jsonl")).unwrap().len();
    assert!(size < 10 << 20, "audit.jsonl is {size} bytes");
    // The operator's logout is still there.
    let r = get(&s, "/api/v1/audit?limit=500", &op);
    assert_eq!(r.status, 200, "{}", r.body);
    let page: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let entries = page["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "logout" && e["user"] == "operator"),
        "{entries:?}"
    );
    assert!(entries.len() < 10, "only what people who got in did: {entries:?}");
    // The attempts are counted, per address, with names cut short.
    let failed = page["failed_logins"].as_array().unwrap();
    let total: u64 = failed.iter().map(|w| w["attempts"].as_u64().unwrap()).sum();
    let busy = statuses.iter().filter(|s| **s == 503).count() as u64;
    assert_eq!(
        total + busy,
        5001,
        "every attempt that was not turned away busy is counted"
    );
    assert!(failed.iter().all(|w| w["users"].to_string().len() < 2000), "{failed:?}");
    // No forged line in the supervisor's log.
    let log = s.log_text();
    assert!(
        !log.lines().any(|l| l.starts_with("ERROR forged")),
        "a log line was forged:\n{log}"
    );
    assert!(log.contains("x\\nERROR forged line"), "{log}");
}

#[test]
fn idle_connections_cannot_starve_the_supervisor() {
    use std::sync::Arc;

    let b = Box_::recorded("no-sensors");
    // 1,024 open files, as a default `ulimit -n`.
    let s = Supervisor::start_env(
        Setup {
            sysfs_root: &b.path("sys"),
            procfs_root: &b.path("proc"),
            extra: "",
        },
        &[("APPLIANCE_TEST_NOFILE", "1024")],
    );
    let pid = s.child.as_ref().unwrap().id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")),
        "{limits}"
    );
    let fp = s.cert_fingerprint().unwrap();
    let config = Arc::new(appliance_certs::pinned_client_config(&fp));
    // 300 TLS connections that finish the handshake and then say nothing.
    let mut idle = Vec::new();
    for _ in 0..300 {
        let mut sock = std::net::TcpStream::connect(s.addr).unwrap();
        let mut conn = rustls::ClientConnection::new(config.clone(), "localhost".try_into().unwrap()).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        idle.push((conn, sock));
    }
    // The page still answers at once.
    let t0 = std::time::Instant::now();
    wait_for(
        "/healthz while 300 connections idle",
        Duration::from_secs(2),
        || match s.get("/healthz") {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e),
        },
    );
    eprintln!("/healthz answered in {:?} beside 300 idle connections", t0.elapsed());
    // The idle ones are closed by the server within a minute.
    for (_, sock) in &idle {
        sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    }
    let t0 = std::time::Instant::now();
    for (conn, sock) in &mut idle {
        let mut buf = [0u8; 64];
        let closed = loop {
            match conn.complete_io(sock) {
                Ok((0, 0)) => break true,
                Ok(_) => {
                    if conn.reader().read(&mut buf).is_ok_and(|n| n == 0) {
                        break true;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    break false;
                }
                Err(_) => break true,
            }
        };
        assert!(closed, "an idle connection was still open after {:?}", t0.elapsed());
    }
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "closed after {:?}",
        t0.elapsed()
    );
    let log = s.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
    assert_eq!(s.get("/healthz").unwrap().status, 200);
}
