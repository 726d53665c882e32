//! Usage reports end to end: the real `appliance-ops`, the real supervisor
//! and the BBB stand-in playing a scripted day of meetings on a virtual
//! clock (BBB's clock, seen through its HTTP Date header). After the day,
//! `appliance-ops usage --month --csv` must equal the script's ground truth
//! to the participant-second: with no faults, and under each fault in its
//! own test (ops down, 20+ SIGKILLs, connections cut mid-request, a full
//! disk, BBB unreachable). Nothing lost, nothing counted twice.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use appliance_e2e::{Box_, Setup, Supervisor, bin, free_port, http_get, wait_for};

/// 2026-11-02 00:00:00 UTC.
const DAY_START: i64 = 1_793_577_600;
const STEP: i64 = 600;
const STEPS: i64 = 144;
const SECRET: &str = "usage-test-secret-123";
const T: Duration = Duration::from_secs(60);

// --- the scripted day and its ground truth -------------------------------------

#[derive(Clone, Debug)]
enum Ev {
    Create {
        id: &'static str,
        member: Option<&'static str>,
        parent: Option<&'static str>,
    },
    Join {
        id: &'static str,
        user: String,
    },
    Leave {
        id: &'static str,
        user: String,
    },
    End {
        id: &'static str,
    },
}

/// (step, event): meetings of three members, breakout rooms, one meeting
/// without a member tag, joins and leaves spread over the day.
fn day() -> Vec<(i64, Ev)> {
    use Ev::*;
    let mut ev = Vec::new();
    let mut join = |step: i64, id: &'static str, users: std::ops::Range<u32>| {
        for u in users {
            ev.push((
                step,
                Join {
                    id,
                    user: format!("{id}-u{u}"),
                },
            ));
        }
    };
    let _ = &mut join;
    let mut v: Vec<(i64, Ev)> = Vec::new();
    // coop-a: a stand-up 09:00-09:40 and a board meeting 14:00-16:20 with two breakout rooms.
    v.push((
        54,
        Create {
            id: "a-standup",
            member: Some("coop-a"),
            parent: None,
        },
    ));
    for u in 0..4 {
        v.push((
            54 + i64::from(u % 2),
            Join {
                id: "a-standup",
                user: format!("a-standup-u{u}"),
            },
        ));
    }
    v.push((58, End { id: "a-standup" }));
    v.push((
        84,
        Create {
            id: "a-board",
            member: Some("coop-a"),
            parent: None,
        },
    ));
    for u in 0..6 {
        v.push((
            84,
            Join {
                id: "a-board",
                user: format!("a-board-u{u}"),
            },
        ));
    }
    v.push((
        87,
        Create {
            id: "a-room1",
            member: None,
            parent: Some("a-board"),
        },
    ));
    v.push((
        87,
        Create {
            id: "a-room2",
            member: None,
            parent: Some("a-board"),
        },
    ));
    for u in 0..3 {
        v.push((
            87,
            Join {
                id: "a-room1",
                user: format!("a-room1-u{u}"),
            },
        ));
        v.push((
            88,
            Join {
                id: "a-room2",
                user: format!("a-room2-u{u}"),
            },
        ));
    }
    v.push((91, End { id: "a-room1" }));
    v.push((92, End { id: "a-room2" }));
    v.push((
        93,
        Leave {
            id: "a-board",
            user: "a-board-u5".into(),
        },
    ));
    v.push((98, End { id: "a-board" }));
    // coop-b: a class 10:00-12:00, people trickling in and out, a breakout room.
    v.push((
        60,
        Create {
            id: "b-class",
            member: Some("coop-b"),
            parent: None,
        },
    ));
    for u in 0..12 {
        v.push((
            60 + i64::from(u / 3),
            Join {
                id: "b-class",
                user: format!("b-class-u{u}"),
            },
        ));
    }
    v.push((
        66,
        Create {
            id: "b-room",
            member: None,
            parent: Some("b-class"),
        },
    ));
    for u in 0..5 {
        v.push((
            66,
            Join {
                id: "b-room",
                user: format!("b-room-u{u}"),
            },
        ));
    }
    v.push((70, End { id: "b-room" }));
    for u in 0..4 {
        v.push((
            68 + i64::from(u),
            Leave {
                id: "b-class",
                user: format!("b-class-u{u}"),
            },
        ));
    }
    v.push((72, End { id: "b-class" }));
    // coop-c: a choir in the evening, twice; the second reuses the id.
    v.push((
        114,
        Create {
            id: "c-choir",
            member: Some("coop-c"),
            parent: None,
        },
    ));
    for u in 0..8 {
        v.push((
            114 + i64::from(u % 3),
            Join {
                id: "c-choir",
                user: format!("c-choir-u{u}"),
            },
        ));
    }
    v.push((126, End { id: "c-choir" }));
    v.push((
        130,
        Create {
            id: "c-choir",
            member: Some("coop-c"),
            parent: None,
        },
    ));
    v.push((
        131,
        Join {
            id: "c-choir",
            user: "c-late".into(),
        },
    ));
    v.push((
        131,
        Join {
            id: "c-choir",
            user: "c-later".into(),
        },
    ));
    v.push((140, End { id: "c-choir" }));
    // A meeting nobody tagged with a member.
    v.push((
        78,
        Create {
            id: "x-test",
            member: None,
            parent: None,
        },
    ));
    v.push((
        78,
        Join {
            id: "x-test",
            user: "x-1".into(),
        },
    ));
    v.push((
        79,
        Join {
            id: "x-test",
            user: "x-2".into(),
        },
    ));
    v.push((80, End { id: "x-test" }));
    v
}

fn script_toml(events: &[(i64, Ev)]) -> String {
    let mut s = String::new();
    for (step, e) in events {
        let at = step * STEP;
        match e {
            Ev::Create { id, member, parent } => {
                s.push_str(&format!(
                    "[[event]]\nat = {at}\naction = \"create\"\nmeeting = \"{id}\"\n"
                ));
                if let Some(m) = member {
                    s.push_str(&format!("meta = {{ member = \"{m}\" }}\n"));
                }
                if let Some(p) = parent {
                    s.push_str(&format!("parent = \"{p}\"\n"));
                }
            }
            Ev::Join { id, user } => s.push_str(&format!(
                "[[event]]\nat = {at}\naction = \"join\"\nmeeting = \"{id}\"\nuser = \"{user}\"\n"
            )),
            Ev::Leave { id, user } => s.push_str(&format!(
                "[[event]]\nat = {at}\naction = \"leave\"\nmeeting = \"{id}\"\nuser = \"{user}\"\n"
            )),
            Ev::End { id } => s.push_str(&format!("[[event]]\nat = {at}\naction = \"end\"\nmeeting = \"{id}\"\n")),
        }
    }
    s
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Row {
    meetings: u64,
    meeting_seconds: u64,
    participant_seconds: u64,
    peak: u64,
    longest: u64,
}

/// The ground truth, straight from the script: at each step the state
/// after its events holds until the next step. Steps in `skip` are charged
/// to nobody (an interval with a failed poll in it), and steps in `unseen`
/// (no successful poll) do not count for peaks.
fn truth(events: &[(i64, Ev)], skip: &[i64], unseen: &[i64]) -> BTreeMap<String, Row> {
    struct M {
        member: String,
        parent: Option<&'static str>,
        users: Vec<String>,
        instance: u32,
    }
    let mut live: BTreeMap<&'static str, M> = BTreeMap::new();
    let mut instances: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut per_meeting: BTreeMap<(String, u32), (String, u64)> = BTreeMap::new();
    for step in 0..STEPS {
        for (_, e) in events.iter().filter(|(s, _)| *s == step) {
            match e {
                Ev::Create { id, member, parent } => {
                    let member = match parent {
                        Some(p) => live[p].member.clone(),
                        None => member.map(str::to_string).unwrap_or_else(|| "unassigned".into()),
                    };
                    let n = instances.entry(id).or_insert(0);
                    *n += 1;
                    live.insert(
                        id,
                        M {
                            member,
                            parent: *parent,
                            users: vec![],
                            instance: *n,
                        },
                    );
                }
                Ev::Join { id, user } => live.get_mut(id).unwrap().users.push(user.clone()),
                Ev::Leave { id, user } => live.get_mut(id).unwrap().users.retain(|u| u != user),
                Ev::End { id } => {
                    live.remove(id);
                    live.retain(|_, m| m.parent != Some(*id));
                }
            }
        }
        let mut now: BTreeMap<String, u64> = BTreeMap::new();
        for (id, m) in &live {
            if m.users.is_empty() {
                continue;
            }
            *now.entry(m.member.clone()).or_default() += m.users.len() as u64;
            if skip.contains(&step) {
                continue;
            }
            let r = rows.entry(m.member.clone()).or_default();
            r.participant_seconds += m.users.len() as u64 * STEP as u64;
            if m.parent.is_none() {
                r.meeting_seconds += STEP as u64;
                per_meeting
                    .entry((id.to_string(), m.instance))
                    .or_insert_with(|| (m.member.clone(), 0))
                    .1 += STEP as u64;
            }
        }
        for (member, n) in now {
            let r = rows.entry(member).or_default();
            if !unseen.contains(&step) {
                r.peak = r.peak.max(n);
            }
        }
    }
    for ((_, _), (member, secs)) in per_meeting {
        let r = rows.get_mut(&member).unwrap();
        r.meetings += 1;
        r.longest = r.longest.max(secs);
    }
    rows
}

// --- global ops, the proxy in front of it, the stand-in ---------------------------

struct Ops {
    child: Option<Child>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ops {
    fn new(listen: u16, public_port: u16) -> Ops {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ops.toml");
        fs::write(
            &config,
            format!("listen = \"127.0.0.1:{listen}\"\npublic_url = \"https://127.0.0.1:{public_port}\"\nstate_dir = \"state\"\nreport_interval = \"1s\"\n"),
        )
        .unwrap();
        let mut o = Ops {
            child: None,
            config,
            _dir: dir,
        };
        o.start(listen);
        o
    }

    fn start(&mut self, listen: u16) {
        let child = Command::new(bin("appliance-ops"))
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let fp =
            || appliance_e2e::tls::pem_fingerprint(&self.config.parent().unwrap().join("state/tls/admin-cert.pem"));
        wait_for("ops /healthz", T, || {
            let r = appliance_e2e::tls::https_get(
                format!("127.0.0.1:{listen}").parse().unwrap(),
                "/healthz",
                fp().as_deref(),
            )?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("{}", r.status))
            }
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("appliance-ops"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn token(&self, node: &str) -> String {
        let out = self.cli(&["token", "create", "--node", node]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string()
    }

    fn usage(&self) -> BTreeMap<String, Row> {
        let out = self.cli(&["usage", "--month", "2026-11", "--csv"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("node,member,meetings,meeting_seconds,participant_seconds,peak_participants,longest_meeting_seconds")
        );
        lines
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                assert_eq!(f[0], "test-node");
                let n = |i: usize| f[i].parse::<u64>().unwrap();
                (
                    f[1].to_string(),
                    Row {
                        meetings: n(2),
                        meeting_seconds: n(3),
                        participant_seconds: n(4),
                        peak: n(5),
                        longest: n(6),
                    },
                )
            })
            .collect()
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy in front of ops that can cut connections: in the middle of
/// a request (ops gets half of it), or after ops answered (the node never
/// hears the acknowledgement).
#[derive(Clone)]
struct Proxy {
    port: u16,
    /// 0 pass, 1 cut requests midway, 2 drop answers; for the next `left` connections.
    mode: Arc<AtomicUsize>,
    left: Arc<AtomicUsize>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    cuts: Arc<AtomicUsize>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = Proxy {
            port: l.local_addr().unwrap().port(),
            mode: Arc::default(),
            left: Arc::default(),
            live: Arc::default(),
            cuts: Arc::default(),
        };
        let pc = p.clone();
        std::thread::spawn(move || {
            for client in l.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mode = if pc.left.load(Ordering::SeqCst) > 0 {
                    pc.left.fetch_sub(1, Ordering::SeqCst);
                    pc.mode.load(Ordering::SeqCst)
                } else {
                    0
                };
                pc.live.lock().unwrap().push(client.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let cuts = pc.cuts.clone();
                std::thread::spawn(move || pump(client, server, if mode == 1 { Some(700) } else { None }, &cuts));
                let cuts = pc.cuts.clone();
                std::thread::spawn(move || pump(s2, c2, if mode == 2 { Some(0) } else { None }, &cuts));
            }
        });
        p
    }

    /// The next `n` connections are cut in `mode`; open ones are closed so
    /// the node must connect again.
    fn cut_next(&self, n: usize, mode: usize) {
        self.mode.store(mode, Ordering::SeqCst);
        self.left.store(n, Ordering::SeqCst);
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Copies `from` to `to`; with `limit`, stops after that many bytes
/// (of a connection's first burst) and closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, limit: Option<usize>, cuts: &AtomicUsize) {
    let mut buf = [0u8; 8192];
    let mut sent = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(l) = limit {
            // Past the TLS handshake (a few KB), cut a request in flight.
            if sent + n > l.max(1) && sent > 0 || l == 0 {
                cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

struct StandIn {
    child: Child,
    addr: SocketAddr,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl StandIn {
    fn start(script: &Path) -> StandIn {
        let port = free_port();
        let child = Command::new(bin("bbb-standin"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--secret",
                SECRET,
                "--virtual-clock",
                &DAY_START.to_string(),
                "--script",
            ])
            .arg(script)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_for("stand-in", T, || http_get(addr, "/bigbluebutton/api").map(|_| ()));
        StandIn { child, addr }
    }

    fn post(&self, path: &str) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut b = String::new();
        let _ = s.read_to_string(&mut b);
        assert!(b.starts_with("HTTP/1.1 200"), "{b}");
    }

    fn polls(&self) -> u64 {
        let (_, body) = http_get(self.addr, "/standin/calls").unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix("getMeetings "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Moves BBB's clock and waits until the supervisor has polled after it.
    fn step_to(&self, t: i64) {
        self.post(&format!("/standin/advance?to={t}"));
        let before = self.polls();
        wait_for(&format!("a poll at {t}"), T, || {
            if self.polls() > before {
                Ok(())
            } else {
                Err("no poll yet".into())
            }
        });
    }
}

// --- the scenario ------------------------------------------------------------------

struct World {
    ops: Ops,
    proxy: Proxy,
    bbb: StandIn,
    node: Supervisor,
    events: Vec<(i64, Ev)>,
    _dir: tempfile::TempDir,
    _box: Box_,
}

fn world(state_dir: Option<&Path>) -> World {
    let events = day();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("day.toml");
    fs::write(&script, script_toml(&events)).unwrap();
    let ops_port = free_port();
    let proxy = Proxy::start(ops_port);
    let ops = Ops::new(ops_port, proxy.port);
    let bbb = StandIn::start(&script);
    let b = Box_::recorded("no-sensors");
    let extra = format!(
        "[bbb]\nurl = \"http://{}/bigbluebutton/api\"\nsecret = \"{SECRET}\"\npoll_interval = \"100ms\"\n\n\
         [usage]\nreport_interval = \"1s\"\nmax_gap = \"2h\"\nretry_min = \"100ms\"\nretry_max = \"1s\"\n",
        bbb.addr
    );
    let node = match state_dir {
        None => Supervisor::start(Setup {
            sysfs_root: &b.path("sys"),
            procfs_root: &b.path("proc"),
            extra: &extra,
        }),
        Some(sd) => Supervisor::start_in(
            Setup {
                sysfs_root: &b.path("sys"),
                procfs_root: &b.path("proc"),
                extra: &extra,
            },
            sd,
        ),
    };
    let token = ops.token("test-node");
    let out = node.cli(&[
        "enroll",
        "--ops",
        &format!("https://127.0.0.1:{}", proxy.port),
        "--token",
        &token,
    ]);
    assert!(out.status.success(), "enroll: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("enrolled with https://127.0.0.1:"));
    World {
        ops,
        proxy,
        bbb,
        node,
        events,
        _dir: dir,
        _box: b,
    }
}

impl World {
    fn finish(&self, skip: &[i64], unseen: &[i64]) {
        self.bbb.step_to(DAY_START + STEPS * STEP);
        let want = truth(&self.events, skip, unseen);
        assert_eq!(want.len(), 4, "three members and the unassigned meeting");
        wait_for(
            "ops usage to equal the script's ground truth",
            Duration::from_secs(90),
            || {
                let got = self.ops.usage();
                let queued = self.node.status_json()["reports"]["queued"]
                    .as_u64()
                    .unwrap_or(u64::MAX);
                if got == want && queued == 0 {
                    Ok(())
                } else {
                    Err(format!("queued {queued}\ngot  {got:?}\nwant {want:?}"))
                }
            },
        );
        // And it stays equal: a later report adds nothing twice.
        let n = self.node.status_json()["reports"]["last_success"]
            .as_f64()
            .unwrap_or(0.0);
        wait_for("another report acknowledged", T, || {
            if self.node.status_json()["reports"]["last_success"]
                .as_f64()
                .unwrap_or(0.0)
                > n
            {
                Ok(())
            } else {
                Err("not yet".into())
            }
        });
        assert_eq!(self.ops.usage(), want);
    }
}

#[test]
fn a_scripted_day_is_counted_exactly() {
    let w = world(None);
    for k in 1..STEPS {
        w.bbb.step_to(DAY_START + k * STEP);
    }
    w.finish(&[], &[]);
    let nodes = String::from_utf8(w.ops.cli(&["nodes"]).stdout).unwrap();
    assert!(nodes.contains("test-node") && nodes.contains("0.1.0"), "{nodes}");
    // The human form of the usage.
    let text = String::from_utf8(w.ops.cli(&["usage", "--month", "2026-11"]).stdout).unwrap();
    assert!(text.contains("coop-a") && text.contains("unassigned"), "{text}");
}

#[test]
fn ops_down_for_a_stretch() {
    let mut w = world(None);
    let ops_port = {
        let text = fs::read_to_string(&w.ops.config).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
            .unwrap()
            .trim_end_matches('"')
            .parse::<u16>()
            .unwrap()
    };
    for k in 1..STEPS {
        if k == 30 {
            w.ops.stop();
        }
        if k == 100 {
            let queued = w.node.status_json()["reports"]["queued"].as_u64().unwrap();
            assert!(queued >= 5, "reports queue while ops is down: {queued}");
            w.ops.start(ops_port);
        }
        w.bbb.step_to(DAY_START + k * STEP);
    }
    w.finish(&[], &[]);
}

#[test]
fn twenty_kills_lose_nothing() {
    let mut w = world(None);
    // A fixed pseudo-random sequence, so a failure can be replayed.
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut kills = 0;
    for k in 1..STEPS {
        let t = DAY_START + k * STEP;
        if k % 6 == 0 {
            // Kill at a random moment: before the next poll, right after it,
            // or while a report is being written or sent.
            w.bbb.post(&format!("/standin/advance?to={t}"));
            std::thread::sleep(Duration::from_millis(rnd() % 250));
            w.node.kill9();
            kills += 1;
            w.node.restart();
            w.bbb.step_to(t);
        } else {
            w.bbb.step_to(t);
        }
    }
    assert!(kills >= 20, "{kills} kills");
    w.finish(&[], &[]);
}

#[test]
fn connections_cut_mid_request() {
    let w = world(None);
    for k in 1..STEPS {
        match k {
            20 | 60 | 100 => w.proxy.cut_next(3, 1),
            40 | 80 | 120 => w.proxy.cut_next(3, 2),
            _ => {}
        }
        w.bbb.step_to(DAY_START + k * STEP);
    }
    assert!(w.proxy.cuts.load(Ordering::SeqCst) >= 6, "connections were cut");
    w.finish(&[], &[]);
}

#[test]
fn bbb_unreachable_is_a_gap() {
    let w = world(None);
    let down = 88..96; // 14:40 to 16:00: during the board meeting
    for k in 1..STEPS {
        if k == down.start {
            w.bbb.post("/standin/fail?on=1");
        }
        if k == down.end {
            w.bbb.post("/standin/fail?on=0");
        }
        if down.contains(&k) {
            // No successful poll happens; move the clock and wait for a failed one.
            w.bbb.post(&format!("/standin/advance?to={}", DAY_START + k * STEP));
            let before = w.bbb.polls();
            wait_for("a failed poll", T, || {
                if w.bbb.polls() > before {
                    Ok(())
                } else {
                    Err("no poll".into())
                }
            });
        } else {
            w.bbb.step_to(DAY_START + k * STEP);
        }
    }
    // Intervals from the last good poll (step 87) to the first after (96).
    let skip: Vec<i64> = (87..96).collect();
    let unseen: Vec<i64> = down.clone().collect();
    w.finish(&skip, &unseen);
    let text = String::from_utf8(w.ops.cli(&["usage", "--month", "2026-11"]).stdout).unwrap();
    assert!(
        text.contains(
            "gap: node test-node could not count usage from 2026-11-02 14:30:00 UTC to 2026-11-02 16:00:00 UTC"
        ),
        "{text}"
    );
}

#[test]
fn a_full_disk_loses_nothing_already_written() {
    // The supervisor's state on a small filesystem of its own.
    let mnt = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(
        st.success(),
        "this test mounts a tmpfs and needs root (CI runs as root)"
    );
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _u = Umount(mnt.path().to_path_buf());
    let w = world(Some(&mnt.path().join("state")));
    let ballast = mnt.path().join("ballast");
    for k in 1..STEPS {
        if k == 40 {
            // Fill the disk to the last byte.
            let mut f = fs::File::create(&ballast).unwrap();
            let chunk = vec![0u8; 64 * 1024];
            while f.write_all(&chunk).is_ok() {}
            let small = vec![0u8; 512];
            while f.write_all(&small).is_ok() {}
            let _ = f.sync_all();
        }
        if k == 70 {
            let st = w.node.status_json();
            assert_eq!(st["health"]["status"], "critical", "{}", st["health"]);
            assert!(
                st["alerts"].to_string().contains("usage reports cannot be written"),
                "{}",
                st["alerts"]
            );
            fs::remove_file(&ballast).unwrap();
        }
        w.bbb.step_to(DAY_START + k * STEP);
    }
    w.finish(&[], &[]);
}

#[test]
fn enrollment_is_refused_with_clear_reasons() {
    let events = day();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("day.toml");
    fs::write(&script, script_toml(&events)).unwrap();
    let ops_port = free_port();
    let ops = Ops::new(ops_port, ops_port);
    let b = Box_::recorded("no-sensors");
    let node = Supervisor::start(Setup {
        sysfs_root: &b.path("sys"),
        procfs_root: &b.path("proc"),
        extra: "",
    });
    let url = format!("https://127.0.0.1:{ops_port}");
    let enroll = |token: &str, extra: &[&str]| {
        let mut args = vec!["enroll", "--ops", &url, "--token", token];
        args.extend_from_slice(extra);
        let out = node.cli(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    };
    // Forged: a token ops never issued.
    let real = appliance_usage::Token::decode(&ops.token("test-node")).unwrap();
    let forged = appliance_usage::Token {
        secret: "00".repeat(32),
        ..real.clone()
    }
    .encode();
    let (code, err) = enroll(&forged, &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("ops refused the enrollment: unknown enrollment token"),
        "{err}"
    );
    // Not a token at all.
    assert!(enroll("hello", &[]).1.contains("not an enrollment token"));
    // Expired.
    let out = ops.cli(&["token", "create", "--node", "test-node", "--expires", "0s"]);
    let expired = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let (_, err) = enroll(&expired, &[]);
    assert!(
        err.contains("ops refused the enrollment: this enrollment token expired on"),
        "{err}"
    );
    // Ops's certificate must be the one the token names.
    let wrong_fp = appliance_usage::Token {
        fp: "AA:".repeat(31) + "AA",
        ..real.clone()
    }
    .encode();
    let (_, err) = enroll(&wrong_fp, &[]);
    assert!(
        err.contains("presented a certificate that is not the one the token names"),
        "{err}"
    );
    // A token for another node.
    let other = ops.token("another-node");
    assert!(
        enroll(&other, &[])
            .1
            .contains("this enrollment token is for node \"another-node\", not \"test-node\"")
    );
    // The right token works once.
    let (code, err) = enroll(&real.encode(), &[]);
    assert_eq!(code, Some(0), "{err}");
    let (_, err) = enroll(&real.encode(), &["--force"]);
    assert!(err.contains("this enrollment token was already used"), "{err}");
    // Enrolling again without --force is refused by the node itself.
    let (_, err) = enroll(&ops.token("test-node"), &[]);
    assert!(
        err.contains("already enrolled with") && err.contains("--force"),
        "{err}"
    );
    // A token for another ops.
    let (_, err) = {
        let out = node.cli(&[
            "enroll",
            "--ops",
            "https://elsewhere:9443",
            "--token",
            &ops.token("test-node"),
        ]);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    assert!(err.contains("the token is for ops"), "{err}");
    // Revoked: reports are refused, and the node says so.
    let out = ops.cli(&["revoke", "--node", "test-node"]);
    assert!(out.status.success());
    // The node only reports with BBB configured; its status shows enrollment.
    let st = node.status_json();
    assert_eq!(st["enrollment"]["node"], "test-node");
    let (_, err) = enroll(&ops.token("test-node"), &["--force"]);
    assert!(err.contains("node \"test-node\" is revoked at ops"), "{err}");
}
