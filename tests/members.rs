//! Member organisations through the node's BBB API gateway, end to end:
//! the real supervisor (`appliance run` with `[gateway]`), its CLI
//! (`appliance members ...`) and the BBB stand-in behind it on a virtual
//! clock. Each call is signed as a front end signs it, with the member's
//! own secret, and checked against what BBB itself (the stand-in, asked
//! with BBB's secret) holds.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use appliance_bbb::{Algorithm, checksum, encode_query};
use appliance_e2e::{Box_, Kill, Setup, Supervisor, bin, free_port, http_get, http_post, repo_root, wait_for};

const T: Duration = Duration::from_secs(20);
const BBB_SECRET: &str = "bbb-own-secret-0123456789";
const START: i64 = 1_800_000_000;

struct Node {
    s: Supervisor,
    gateway: SocketAddr,
    bbb: SocketAddr,
    _standin: Kill,
    _box: Box_,
}

fn node() -> Node {
    let port = free_port();
    let bbb: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(bin("bbb-standin"))
        .args(["--listen", &bbb.to_string(), "--secret", BBB_SECRET])
        .args(["--virtual-clock", &START.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let standin = Kill(child);
    wait_for("the stand-in", T, || http_get(bbb, "/bigbluebutton/api").map(|_| ()));
    let gateway: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let b = Box_::recorded("no-sensors");
    let extra = format!(
        "[bbb]\nurl = \"http://{bbb}/bigbluebutton/api\"\nsecret = \"{BBB_SECRET}\"\npoll_interval = \"1s\"\n\n[gateway]\nlisten = \"{gateway}\"\n"
    );
    let s = Supervisor::start(Setup {
        sysfs_root: &b.path("sys"),
        procfs_root: &b.path("proc"),
        extra: &extra,
    });
    wait_for("the gateway", T, || http_get(gateway, "/bigbluebutton/api").map(|_| ()));
    Node {
        s,
        gateway,
        bbb,
        _standin: standin,
        _box: b,
    }
}

/// The query a front end sends: its parameters and the checksum made with
/// its secret.
fn signed(call: &str, params: &[(&str, &str)], secret: &str, algo: Algorithm) -> String {
    let q = encode_query(params);
    let sum = checksum(algo, call, &q, secret);
    if q.is_empty() {
        format!("/bigbluebutton/api/{call}?checksum={sum}")
    } else {
        format!("/bigbluebutton/api/{call}?{q}&checksum={sum}")
    }
}

/// One XML element's text (the first).
fn field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].to_string())
}

fn all(xml: &str, name: &str) -> Vec<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|p| p.split(&close).next())
        .map(str::to_string)
        .collect()
}

impl Node {
    fn members(&self, args: &[&str]) -> String {
        let mut a = vec!["members"];
        a.extend_from_slice(args);
        let out = self.s.cli(&a);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "appliance members {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Adds a member and returns its secret (printed once).
    fn add(&self, slug: &str, limits: &[&str]) -> String {
        let mut a = vec!["add", slug, "--name", slug];
        a.extend_from_slice(limits);
        let out = self.members(&a);
        secret_of(&out)
    }

    /// A call through the gateway: (HTTP status, body).
    fn call(&self, call: &str, params: &[(&str, &str)], secret: &str) -> (u16, String) {
        http_get(self.gateway, &signed(call, params, secret, Algorithm::Sha1)).unwrap()
    }

    /// The same call made to BBB itself with its own secret.
    fn bbb(&self, call: &str, params: &[(&str, &str)]) -> String {
        http_get(self.bbb, &signed(call, params, BBB_SECRET, Algorithm::Sha256))
            .unwrap()
            .1
    }

    fn key(&self, call: &str, params: &[(&str, &str)], secret: &str) -> String {
        let (status, body) = self.call(call, params, secret);
        assert_eq!(status, 200, "{call}: BBB answers errors with 200: {body}");
        field(&body, "messageKey").unwrap_or_default()
    }

    fn advance(&self, to: i64) {
        let (status, body) = http_post(self.bbb, &format!("/standin/advance?to={to}")).unwrap();
        assert_eq!(status, 200, "{body}");
    }
}

/// A POST with a form body, as some front ends send calls.
fn post_form(addr: SocketAddr, path: &str, form: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let r = appliance_e2e::tls::parse_response(&buf).unwrap();
    (r.status, r.body)
}

fn secret_of(out: &str) -> String {
    let s = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("no secret in {out:?}"))
        .to_string();
    assert_eq!(s.len(), 48, "{s}");
    s
}

fn create(id: &str) -> Vec<(&str, &str)> {
    vec![
        ("meetingID", id),
        ("name", id),
        ("attendeePW", "ap"),
        ("moderatorPW", "mp"),
    ]
}

fn join<'a>(id: &'a str, user: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("meetingID", id),
        ("fullName", user),
        ("userID", user),
        ("role", "VIEWER"),
        ("redirect", "false"),
    ]
}

#[test]
fn members_are_isolated_from_each_other_by_their_own_secrets() {
    let n = node();
    // No members yet: BBB's shared secret works through the gateway, as
    // before members existed.
    assert_eq!(n.key("create", &create("legacy"), BBB_SECRET), "");
    assert!(
        n.call("getMeetings", &[], BBB_SECRET)
            .1
            .contains("<meetingID>legacy</meetingID>")
    );
    assert!(n.members(&["list"]).contains("no members"));

    let a = n.add("coop-a", &[]);
    let b = n.add("coop-b", &[]);
    let list = n.members(&["list"]);
    assert!(list.contains("coop-a") && list.contains("coop-b"), "{list}");
    assert!(!list.contains(&a), "list never shows a secret");

    // Both create "room1": two meetings in BBB, each answer naming the
    // front end's own id.
    for (s, who) in [(&a, "coop-a"), (&b, "coop-b")] {
        let (_, body) = n.call("create", &create("room1"), s);
        assert_eq!(field(&body, "returncode").as_deref(), Some("SUCCESS"), "{body}");
        assert_eq!(field(&body, "meetingID").as_deref(), Some("room1"), "{who}: {body}");
    }
    let (_, only_b) = n.call("create", &create("b-only"), &b);
    assert_eq!(field(&only_b, "returncode").as_deref(), Some("SUCCESS"));
    let inside = n.bbb("getMeetings", &[]);
    let mut ids = all(&inside, "meetingID");
    ids.sort();
    assert_eq!(ids, ["coop-a~room1", "coop-b~b-only", "coop-b~room1", "legacy"]);

    // Each lists its own meetings only, under its own ids.
    let (_, la) = n.call("getMeetings", &[], &a);
    assert_eq!(all(&la, "meetingID"), ["room1"], "{la}");
    assert_eq!(all(&la, "member"), ["coop-a"], "{la}");
    let (_, lb) = n.call("getMeetings", &[], &b);
    let mut ib = all(&lb, "meetingID");
    ib.sort();
    assert_eq!(ib, ["b-only", "room1"]);
    // Joining, asking about or ending the other's meeting: BBB's errors.
    assert_eq!(n.key("join", &join("b-only", "eve"), &a), "invalidMeetingIdentifier");
    assert_eq!(n.key("getMeetingInfo", &[("meetingID", "b-only")], &a), "notFound");
    let (_, running) = n.call("isMeetingRunning", &[("meetingID", "b-only")], &a);
    assert_eq!(field(&running, "running").as_deref(), Some("false"), "{running}");
    assert_eq!(n.key("end", &[("meetingID", "b-only")], &a), "notFound");
    assert!(n.bbb("getMeetings", &[]).contains("coop-b~b-only"), "still running");
    // Their own: fine.
    assert_eq!(n.key("join", &join("room1", "ann"), &a), "successfullyJoined");
    let (_, info) = n.call("getMeetingInfo", &[("meetingID", "room1")], &a);
    assert_eq!(field(&info, "participantCount").as_deref(), Some("1"), "{info}");
    assert_eq!(field(&info, "meetingID").as_deref(), Some("room1"));
    assert_eq!(n.key("end", &[("meetingID", "b-only")], &b), "sentEndMeetingRequest");
    // User data whose name bbb-web would write as an element that is not
    // XML: dropped, so nobody's list (nor the usage poller's) breaks; user
    // data with a proper name goes on.
    let mut odd = join("room1", "mallory");
    odd.extend([("userdata-1", "x"), ("userdata-bbb_auto_join_audio", "true")]);
    assert_eq!(n.key("join", &odd, &a), "successfullyJoined");
    let inside = n.bbb("getMeetings", &[]);
    assert!(
        inside.contains("<bbb_auto_join_audio>true</bbb_auto_join_audio>") && !inside.contains("<1>"),
        "{inside}"
    );
    let (_, lb) = n.call("getMeetings", &[], &b);
    assert_eq!(all(&lb, "meetingID"), ["room1"], "b reads its list: {lb}");

    // With members, BBB's own secret and unknown ones are refused.
    assert_eq!(n.key("getMeetings", &[], BBB_SECRET), "checksumError");
    assert_eq!(n.key("create", &create("x1"), BBB_SECRET), "checksumError");
    assert_eq!(n.key("getMeetings", &[], "not-a-secret"), "checksumError");
    // Every algorithm bbb-web accepts.
    for algo in Algorithm::ALL {
        let (_, body) = http_get(n.gateway, &signed("getMeetings", &[], &a, algo)).unwrap();
        assert_eq!(all(&body, "meetingID"), ["room1"], "{algo:?}");
    }
    // A call the gateway cannot scope.
    assert_eq!(
        n.key("getRecordingTextTracks", &[("recordID", "r")], &a),
        "unsupportedRequest"
    );

    // A front end that tags its meeting as another member's is still its
    // own member's.
    let mut forged = create("forged");
    forged.push(("meta_member", "coop-b"));
    forged.push(("meta_Member", "coop-b"));
    assert_eq!(n.key("create", &forged, &a), "");
    let inside = n.bbb("getMeetingInfo", &[("meetingID", "coop-a~forged")]);
    assert_eq!(all(&inside, "member"), ["coop-a"], "{inside}");

    // A form body is outside the checksum, and bbb-web reads parameters
    // from it: the gateway passes none on, so it cannot make a's meeting a
    // breakout room of b's (charged to b).
    let parent_b = field(
        &n.bbb("getMeetingInfo", &[("meetingID", "coop-b~room1")]),
        "internalMeetingID",
    )
    .unwrap();
    let (_, made) = post_form(
        n.gateway,
        &signed("create", &create("sneak"), &a, Algorithm::Sha1),
        &format!("isBreakout=true&parentMeetingID={parent_b}&meta_Member=coop-b"),
    );
    assert_eq!(field(&made, "returncode").as_deref(), Some("SUCCESS"), "{made}");
    let inside = n.bbb("getMeetingInfo", &[("meetingID", "coop-a~sneak")]);
    assert_eq!(field(&inside, "isBreakout").as_deref(), Some("false"), "{inside}");
    assert_eq!(all(&inside, "member"), ["coop-a"]);

    // Rotation: both secrets work during the overlap, the old one fails
    // after it; a revoked one fails at once.
    let own = ["forged", "room1", "sneak"].len();
    let out = n.members(&["rotate-secret", "coop-a", "--overlap", "2s"]);
    let a2 = secret_of(&out);
    assert_eq!(all(&n.call("getMeetings", &[], &a2).1, "meetingID").len(), own);
    assert_eq!(
        all(&n.call("getMeetings", &[], &a).1, "meetingID").len(),
        own,
        "the old one still works"
    );
    wait_for("the overlap to end", T, || {
        match n.key("getMeetings", &[], &a).as_str() {
            "checksumError" => Ok(()),
            k => Err(format!("old secret still accepted ({k:?})")),
        }
    });
    assert_eq!(all(&n.call("getMeetings", &[], &a2).1, "meetingID").len(), own);
    let out = n.members(&["rotate-secret", "coop-b", "--overlap", "1h"]);
    let b2 = secret_of(&out);
    n.members(&["revoke-secret", "coop-b", "1"]);
    assert_eq!(n.key("getMeetings", &[], &b), "checksumError", "revoked");
    assert_eq!(n.key("getMeetings", &[], &b2), "");
    // A removed member's secrets stop at once.
    let out = n.s.cli(&["members", "remove", "coop-b"]);
    assert!(!out.status.success(), "removal needs --yes");
    n.members(&["remove", "coop-b", "--yes"]);
    assert_eq!(n.key("getMeetings", &[], &b2), "checksumError");

    // Every change is in the audit log, without a secret.
    let audit = std::fs::read_to_string(n.s.state_dir.join("admin/audit.jsonl")).unwrap_or_default();
    for what in [
        "add member",
        "rotate member secret",
        "revoke member secret",
        "remove member",
    ] {
        assert!(audit.contains(what), "{what}: {audit}");
    }
    assert!(
        !audit.contains(&a) && !audit.contains(&a2),
        "no secret in the audit log"
    );
    // And the members survive a restart.
    let list = n.members(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v[0]["slug"], "coop-a");
    assert!(!list.contains(&a2));
}

#[test]
fn limits_refuse_rooms_and_people_and_cap_the_duration() {
    let n = node();
    let a = n.add("coop-a", &["--rooms", "2", "--participants", "3", "--duration", "1h"]);
    let b = n.add("coop-b", &[]);

    // Rooms: two at once; a third is refused, an existing one is not.
    assert_eq!(n.key("create", &create("r1"), &a), "");
    let mut long = create("r2");
    long.push(("duration", "600"));
    long.push(("maxParticipants", "0"));
    let (_, body) = n.call("create", &long, &a);
    assert_eq!(field(&body, "duration").as_deref(), Some("60"), "capped: {body}");
    let (_, refused) = n.call("create", &create("r3"), &a);
    assert_eq!(field(&refused, "returncode").as_deref(), Some("FAILED"), "{refused}");
    assert_eq!(field(&refused, "messageKey").as_deref(), Some("maxConcurrent"));
    assert!(
        field(&refused, "message").unwrap().contains("2 meetings at once"),
        "a sentence for a person: {refused}"
    );
    assert_eq!(n.key("create", &create("r1"), &a), "duplicateWarning");
    assert_eq!(
        n.key("create", &create("r3"), &b),
        "",
        "another member is not limited by it"
    );
    let inside = n.bbb("getMeetingInfo", &[("meetingID", "coop-a~r2")]);
    assert_eq!(
        field(&inside, "maxUsers").as_deref(),
        Some("3"),
        "BBB's own check as backstop"
    );

    // Participants: three at once over all its meetings.
    assert_eq!(n.key("join", &join("r1", "u1"), &a), "successfullyJoined");
    assert_eq!(n.key("join", &join("r2", "u2"), &a), "successfullyJoined");
    // A breakout room of r1, made by BBB itself, joined by BBB's own link:
    // it counts toward coop-a.
    let parent = field(
        &n.bbb("getMeetingInfo", &[("meetingID", "coop-a~r1")]),
        "internalMeetingID",
    )
    .unwrap();
    let made = n.bbb(
        "create",
        &[
            ("meetingID", "r1-room-1"),
            ("name", "r1 (Room 1)"),
            ("isBreakout", "true"),
            ("parentMeetingID", &parent),
            ("sequence", "1"),
        ],
    );
    assert_eq!(field(&made, "returncode").as_deref(), Some("SUCCESS"), "{made}");
    let breakout_join = |user: &str| {
        let (_, body) = http_get(
            n.gateway,
            &signed("join", &join("r1-room-1", user), BBB_SECRET, Algorithm::Sha256),
        )
        .unwrap();
        field(&body, "messageKey").unwrap_or_default()
    };
    assert_eq!(breakout_join("u3"), "successfullyJoined");
    let (_, full) = n.call("join", &join("r1", "u4"), &a);
    assert_eq!(
        field(&full, "messageKey").as_deref(),
        Some("maxParticipantsReached"),
        "{full}"
    );
    assert!(field(&full, "message").unwrap().contains("3 participants at once"));
    assert_eq!(breakout_join("u5"), "maxParticipantsReached", "via a breakout room too");
    // In a browser: back to the front end's error page, as BBB does.
    let mut browser = join("r1", "u6");
    browser.retain(|(k, _)| *k != "redirect");
    browser.push(("errorRedirectUrl", "https://frontend.example/error"));
    let (status, _) = n.call("join", &browser, &a);
    assert_eq!(status, 302);
    let r1 = n.bbb("getMeetingInfo", &[("meetingID", "coop-a~r1")]);
    assert_eq!(all(&r1, "userID"), ["u1"], "nobody refused got in: {r1}");
    // A place frees up when someone leaves.
    http_post(n.bbb, "/standin/leave?meetingID=coop-a~r1&userID=u1").unwrap();
    assert_eq!(n.key("join", &join("r1", "u4"), &a), "successfullyJoined");
    // Member b's people do not count toward a.
    assert_eq!(n.key("join", &join("r3", "v1"), &b), "successfullyJoined");

    // Duration: r2 ends at its capped hour on BBB's clock; r1 (no duration
    // asked) got the cap as well.
    n.advance(START + 3599);
    assert_eq!(n.key("getMeetingInfo", &[("meetingID", "r2")], &a), "");
    n.advance(START + 3600);
    assert_eq!(n.key("getMeetingInfo", &[("meetingID", "r2")], &a), "notFound");
    assert_eq!(n.key("getMeetingInfo", &[("meetingID", "r1")], &a), "notFound");
    assert_eq!(n.key("getMeetingInfo", &[("meetingID", "r3")], &b), "", "b has no cap");
    // With its rooms free again, a may create.
    assert_eq!(n.key("create", &create("r4"), &a), "");
}

/// `tests/frontend`'s packages (bigbluebutton-js from npm, exactly the
/// locked versions) installed under target/, once per lock file.
fn frontend_modules() -> std::path::PathBuf {
    let src = repo_root().join("tests/frontend");
    let dir = repo_root().join("target/frontend");
    let lock = std::fs::read(src.join("package-lock.json")).unwrap();
    if std::fs::read(dir.join("package-lock.json")).ok().as_ref() != Some(&lock)
        || !dir.join("node_modules/bigbluebutton-js").is_dir()
    {
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["package.json", "package-lock.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .expect("npm (scripts/test installs nodejs and npm)");
        assert!(out.status.success(), "npm ci: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir.join("node_modules")
}

#[test]
fn a_third_party_client_sees_only_its_members_meetings() {
    let modules = frontend_modules();
    let n = node();
    let a = n.add("coop-a", &[]);
    let b = n.add("coop-b", &[]);
    let out = Command::new("node")
        .arg(repo_root().join("tests/frontend/members.js"))
        .env("NODE_PATH", &modules)
        .env("GATEWAY", format!("http://{}/bigbluebutton", n.gateway))
        .env("SECRET_A", &a)
        .env("SECRET_B", &b)
        .env("BBB_SECRET", BBB_SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ok = |k: &str| {
        assert_eq!(r[k]["returncode"], "SUCCESS", "{k}: {}", r[k]);
    };
    let refused = |k: &str, key: &str| {
        assert_eq!(r[k]["returncode"], "FAILED", "{k}: {}", r[k]);
        assert_eq!(r[k]["messageKey"], key, "{k}");
    };
    for k in ["createA", "createB", "createBOnly"] {
        ok(k);
    }
    assert_eq!(
        r["createA"]["meetingID"], "room1",
        "each answer names the front end's own id"
    );
    assert_eq!(r["createB"]["meetingID"], "room1");
    assert_eq!(r["listA"]["meetings"], serde_json::json!(["room1"]));
    assert_eq!(r["listB"]["meetings"], serde_json::json!(["b-only", "room1"]));
    ok("joinOwn");
    ok("infoOwn");
    assert_eq!(r["infoOwn"]["participantCount"], 1);
    refused("joinOther", "invalidMeetingIdentifier");
    refused("infoOther", "notFound");
    assert_eq!(r["runningOther"]["running"], false);
    refused("endOther", "notFound");
    refused("listShared", "checksumError");
    assert_eq!(
        r["listBAfter"]["meetings"],
        serde_json::json!(["b-only", "room1"]),
        "a's end did not reach b's meeting"
    );
    // Inside BBB: two meetings named room1, one per member (b-only still
    // runs; both room1 ended into recordings).
    let inside = n.bbb("getMeetings", &[]);
    assert_eq!(all(&inside, "meetingID"), ["coop-b~b-only"]);
    ok("endA");
    ok("endB");
    // Recordings: each sees its own, under its own meeting id.
    for (k, count) in [("recA", 1), ("recB", 1)] {
        ok(k);
        let list = r[k]["recordings"].as_array().unwrap();
        assert_eq!(list.len(), count, "{k}: {}", r[k]);
        assert_eq!(list[0]["meetingID"], "room1", "{k}");
    }
    assert_ne!(
        r["recA"]["recordings"][0]["recordID"],
        r["recB"]["recordings"][0]["recordID"]
    );
    assert_eq!(
        r["recAOfB"]["messageKey"], "noRecordings",
        "b's recording by its id: {}",
        r["recAOfB"]
    );
    refused("publishOther", "notFound");
    refused("updateOther", "notFound");
    refused("deleteOther", "notFound");
    ok("publishOwn");
    assert_eq!(r["recAAfter"]["recordings"][0]["published"], false);
    assert_eq!(
        r["recBAfter"]["recordings"][0]["published"], true,
        "b's recording untouched: {}",
        r["recBAfter"]
    );
    let recs = all(&n.bbb("getRecordings", &[]), "recordID");
    assert_eq!(recs.len(), 2, "nothing deleted");
}
