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

/// The stand-in's script for events at `at` seconds after its virtual start.
fn script_toml(events: &[(i64, Ev)]) -> String {
    let mut s = String::new();
    for (at, e) in events {
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

/// Events at step `k` happen `k * STEP` seconds after the virtual start.
fn in_seconds(events: &[(i64, Ev)]) -> Vec<(i64, Ev)> {
    events.iter().map(|(k, e)| (k * STEP, e.clone())).collect()
}

/// Usage per UTC month and member.
type Months = BTreeMap<String, BTreeMap<String, Row>>;

/// The ground truth, straight from the script, by UTC month. BBB's clock
/// is stepped through the instants `times`; the state after the events at
/// `times[k]` (events at `start + at`) holds over `[times[k], times[k+1])`
/// and is charged there, cut at month boundaries: meeting-seconds for main
/// meetings, participant-seconds for all. Intervals in `skip` are charged
/// to nobody (a failed poll in them); a poll at `times[k]` counts for the
/// peak of its month unless `k` is in `unseen` (no successful poll then).
/// A meeting counts in each month it had seconds in, and its longest is
/// its time within that month.
fn truth_months(events: &[(i64, Ev)], start: i64, times: &[i64], skip: &[usize], unseen: &[usize]) -> Months {
    struct M {
        member: String,
        parent: Option<&'static str>,
        users: Vec<String>,
        instance: u32,
    }
    let month = |t: i64| appliance_usage::Month::of(t).to_string();
    let mut live: BTreeMap<&'static str, M> = BTreeMap::new();
    let mut instances: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut out: Months = BTreeMap::new();
    // (month, meeting, instance) -> (member, seconds)
    let mut per_meeting: BTreeMap<(String, String, u32), (String, u64)> = BTreeMap::new();
    let mut applied = 0;
    let mut sorted: Vec<&(i64, Ev)> = events.iter().collect();
    sorted.sort_by_key(|(at, _)| *at);
    for (k, &t) in times.iter().enumerate() {
        while applied < sorted.len() && start + sorted[applied].0 <= t {
            match &sorted[applied].1 {
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
            applied += 1;
        }
        let mut now: BTreeMap<String, u64> = BTreeMap::new();
        for m in live.values().filter(|m| !m.users.is_empty()) {
            *now.entry(m.member.clone()).or_default() += m.users.len() as u64;
        }
        if !unseen.contains(&k) {
            for (member, n) in now {
                let r = out.entry(month(t)).or_default().entry(member).or_default();
                r.peak = r.peak.max(n);
            }
        }
        let Some(&next) = times.get(k + 1) else { break };
        if skip.contains(&k) {
            continue;
        }
        // The interval, cut at the month boundary inside it (if any).
        let cut = appliance_usage::month::month_end(t).min(next);
        for (from, to) in [(t, cut), (cut, next)] {
            if to <= from {
                continue;
            }
            let secs = (to - from) as u64;
            for (id, m) in live.iter().filter(|(_, m)| !m.users.is_empty()) {
                let r = out.entry(month(from)).or_default().entry(m.member.clone()).or_default();
                r.participant_seconds += m.users.len() as u64 * secs;
                if m.parent.is_none() {
                    r.meeting_seconds += secs;
                    per_meeting
                        .entry((month(from), id.to_string(), m.instance))
                        .or_insert_with(|| (m.member.clone(), 0))
                        .1 += secs;
                }
            }
        }
    }
    for ((month, _, _), (member, secs)) in per_meeting {
        let r = out.get_mut(&month).unwrap().get_mut(&member).unwrap();
        r.meetings += 1;
        r.longest = r.longest.max(secs);
    }
    out
}

/// The scripted day's ground truth (all in November; events in seconds),
/// with steps in `skip` charged to nobody and steps in `unseen` not
/// counting for peaks.
fn truth(events: &[(i64, Ev)], skip: &[i64], unseen: &[i64]) -> BTreeMap<String, Row> {
    let times: Vec<i64> = (0..=STEPS).map(|k| DAY_START + k * STEP).collect();
    let idx = |v: &[i64]| v.iter().map(|k| *k as usize).collect::<Vec<_>>();
    truth_months(events, DAY_START, &times, &idx(skip), &idx(unseen))
        .remove("2026-11")
        .unwrap_or_default()
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

    /// The port `serve` listens on (from the config).
    fn listen_port(&self) -> u16 {
        let text = fs::read_to_string(&self.config).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
            .unwrap()
            .trim_end_matches('"')
            .parse()
            .unwrap()
    }

    /// `appliance-ops nodes --json`.
    fn nodes_json(&self) -> serde_json::Value {
        let out = self.cli(&["nodes", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The CSV rows of `usage --month`, header left out.
    fn usage_rows(&self, month: &str) -> String {
        let out = self.cli(&["usage", "--month", month, "--csv"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
            .join("\n")
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
        self.usage_in("2026-11")
    }

    /// `appliance-ops usage --month MONTH --csv`, for the one test node.
    fn usage_in(&self, month: &str) -> BTreeMap<String, Row> {
        let out = self.cli(&["usage", "--month", month, "--csv"]);
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
    /// The stand-in on a virtual clock starting at `start`.
    fn start(script: &Path, start: i64) -> StandIn {
        let port = free_port();
        let child = Command::new(bin("bbb-standin"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--secret",
                SECRET,
                "--virtual-clock",
                &start.to_string(),
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

/// What a scenario varies.
struct Scenario<'a> {
    /// Where the node keeps its state (default: a temp dir).
    state_dir: Option<&'a Path>,
    /// BBB's virtual clock at the start.
    start: i64,
    /// The script: events in seconds after `start`.
    events: Vec<(i64, Ev)>,
    /// More `[usage]` settings.
    usage: &'a str,
}

fn world(state_dir: Option<&Path>) -> World {
    world_with(Scenario {
        state_dir,
        start: DAY_START,
        events: in_seconds(&day()),
        usage: "",
    })
}

fn world_with(sc: Scenario<'_>) -> World {
    let events = sc.events;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.toml");
    fs::write(&script, script_toml(&events)).unwrap();
    let ops_port = free_port();
    let proxy = Proxy::start(ops_port);
    let ops = Ops::new(ops_port, proxy.port);
    let bbb = StandIn::start(&script, sc.start);
    let b = Box_::recorded("no-sensors");
    let extra = format!(
        "[bbb]\nurl = \"http://{}/bigbluebutton/api\"\nsecret = \"{SECRET}\"\npoll_interval = \"100ms\"\n\n\
         [usage]\nreport_interval = \"1s\"\nmax_gap = \"2h\"\nretry_min = \"100ms\"\nretry_max = \"1s\"\n{}\n",
        bbb.addr, sc.usage
    );
    let setup = Setup {
        sysfs_root: &b.path("sys"),
        procfs_root: &b.path("proc"),
        extra: &extra,
    };
    let node = match sc.state_dir {
        None => Supervisor::start(setup),
        Some(sd) => Supervisor::start_in(setup, sd),
    };
    let w = World {
        ops,
        proxy,
        bbb,
        node,
        events,
        _dir: dir,
        _box: b,
    };
    w.enroll(&[]);
    w
}

impl World {
    /// `appliance enroll` with a new token from ops.
    fn enroll(&self, extra: &[&str]) {
        let token = self.ops.token("test-node");
        let ops = format!("https://127.0.0.1:{}", self.proxy.port);
        let mut args = vec!["enroll", "--ops", &ops, "--token", &token];
        args.extend_from_slice(extra);
        let out = self.node.cli(&args);
        assert!(out.status.success(), "enroll: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("enrolled with https://127.0.0.1:"));
    }

    /// Waits until ops has `want` for `month` and the node's queue is empty.
    fn wait_for_usage(&self, month: &str, want: &BTreeMap<String, Row>) {
        wait_for(
            &format!("ops usage of {month} to equal the ground truth"),
            Duration::from_secs(90),
            || {
                let got = self.ops.usage_in(month);
                let queued = self.node.status_json()["reports"]["queued"]
                    .as_u64()
                    .unwrap_or(u64::MAX);
                if &got == want && queued == 0 {
                    Ok(())
                } else {
                    Err(format!("queued {queued}\ngot  {got:?}\nwant {want:?}"))
                }
            },
        );
    }

    fn finish(&self, skip: &[i64], unseen: &[i64]) {
        self.bbb.step_to(DAY_START + STEPS * STEP);
        let want = truth(&self.events, skip, unseen);
        assert_eq!(want.len(), 4, "three members and the unassigned meeting");
        self.wait_for_usage("2026-11", &want);
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

/// The same day, made by the members' own front ends through the node's
/// BBB API gateway, each with its own secret: create, join and end signed
/// by the member; breakout rooms made and joined by BBB itself (its own
/// secret, through the gateway as its join links go); the meeting nobody
/// tagged is made by coop-c's front end, which tags it as coop-a's. Ops's
/// `usage --month --csv` must equal the ground truth in which every
/// meeting belongs to the member whose secret made it, and list the member
/// that used nothing.
#[test]
fn a_day_through_the_gateway_is_charged_to_the_secret_not_the_tag() {
    use appliance_bbb::{Algorithm, checksum, encode_query};
    let gw_port = free_port();
    let gateway: SocketAddr = format!("127.0.0.1:{gw_port}").parse().unwrap();
    let gateway_conf = format!("\n[gateway]\nlisten = \"{gateway}\"\n");
    let w = world_with(Scenario {
        state_dir: None,
        start: DAY_START,
        events: vec![],
        usage: &gateway_conf,
    });
    wait_for("the gateway", T, || http_get(gateway, "/bigbluebutton/api").map(|_| ()));
    let mut secrets: BTreeMap<&str, String> = BTreeMap::new();
    // coop-d is a member that uses nothing all day: ops lists it with zeros.
    for m in ["coop-a", "coop-b", "coop-c", "coop-d"] {
        let out = w.node.cli(&["members", "add", m, "--name", m]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let secret = text.lines().find_map(|l| l.strip_prefix("secret: ")).unwrap();
        secrets.insert(m, secret.to_string());
    }
    let events = in_seconds(&day());
    // Who makes each main meeting, and the truth that follows from it.
    let maker = |member: Option<&'static str>| member.unwrap_or("coop-c");
    let truth_events: Vec<(i64, Ev)> = events
        .iter()
        .map(|(t, e)| match e {
            Ev::Create {
                id,
                member,
                parent: None,
            } => (
                *t,
                Ev::Create {
                    id,
                    member: Some(maker(*member)),
                    parent: None,
                },
            ),
            e => (*t, e.clone()),
        })
        .collect();
    let signed = |call: &str, params: &[(&str, &str)], secret: &str| {
        let q = encode_query(params);
        format!(
            "/bigbluebutton/api/{call}?{q}&checksum={}",
            checksum(Algorithm::Sha1, call, &q, secret)
        )
    };
    let answer_ok = |addr: SocketAddr, path: String, what: &str| {
        let (status, body) = http_get(addr, &path).unwrap();
        assert!(status == 200 && body.contains("SUCCESS"), "{what}: {status} {body}");
        body
    };
    // meeting id -> (member, parent) as the events made them.
    let mut owner: BTreeMap<&str, (&str, Option<&str>)> = BTreeMap::new();
    let scoped = |owner: &BTreeMap<&str, (&str, Option<&str>)>, id: &str| -> String {
        match owner[id] {
            (m, None) => format!("{m}~{id}"),
            (_, Some(_)) => id.to_string(),
        }
    };
    for k in 1..=STEPS {
        let t = DAY_START + k * STEP;
        w.bbb.post(&format!("/standin/advance?to={t}"));
        // Within a step, what goes away first: a poll in the middle then
        // sees no more people than before or after the step.
        let mut now: Vec<&Ev> = events
            .iter()
            .filter(|(at, _)| *at == k * STEP)
            .map(|(_, e)| e)
            .collect();
        now.sort_by_key(|e| match e {
            Ev::Leave { .. } | Ev::End { .. } => 0,
            Ev::Create { .. } => 1,
            Ev::Join { .. } => 2,
        });
        for e in now {
            match e {
                Ev::Create {
                    id,
                    member,
                    parent: None,
                } => {
                    let m = maker(*member);
                    owner.insert(id, (m, None));
                    let mut p = vec![("meetingID", *id), ("name", *id)];
                    if member.is_none() {
                        p.push(("meta_member", "coop-a"));
                    }
                    answer_ok(gateway, signed("create", &p, &secrets[m]), id);
                }
                Ev::Create {
                    id,
                    parent: Some(parent),
                    ..
                } => {
                    let (m, _) = owner[parent];
                    owner.insert(id, (m, Some(parent)));
                    let info = answer_ok(
                        w.bbb.addr,
                        signed("getMeetingInfo", &[("meetingID", &format!("{m}~{parent}"))], SECRET),
                        parent,
                    );
                    let internal = info
                        .split("<internalMeetingID>")
                        .nth(1)
                        .and_then(|x| x.split('<').next())
                        .unwrap()
                        .to_string();
                    let p = [
                        ("meetingID", *id),
                        ("name", *id),
                        ("isBreakout", "true"),
                        ("parentMeetingID", internal.as_str()),
                    ];
                    answer_ok(w.bbb.addr, signed("create", &p, SECRET), id);
                }
                Ev::Join { id, user } => {
                    let p = [
                        ("meetingID", *id),
                        ("fullName", user.as_str()),
                        ("userID", user.as_str()),
                        ("role", "VIEWER"),
                        ("redirect", "false"),
                    ];
                    let secret = match owner[id] {
                        (m, None) => secrets[m].as_str(),
                        (_, Some(_)) => SECRET,
                    };
                    answer_ok(gateway, signed("join", &p, secret), id);
                }
                Ev::Leave { id, user } => {
                    let q = encode_query(&[("meetingID", &scoped(&owner, id)), ("userID", user)]);
                    w.bbb.post(&format!("/standin/leave?{q}"));
                }
                Ev::End { id } => match owner[id] {
                    (m, None) => {
                        answer_ok(gateway, signed("end", &[("meetingID", id)], &secrets[m]), id);
                    }
                    (_, Some(_)) => {
                        answer_ok(w.bbb.addr, signed("end", &[("meetingID", id)], SECRET), id);
                    }
                },
            }
        }
        // Counted only now: the gateway made no getMeetings since, so the
        // next one is the supervisor's poll, which sees this step whole.
        let before = w.bbb.polls();
        wait_for(&format!("a poll at {t}"), T, || {
            if w.bbb.polls() > before {
                Ok(())
            } else {
                Err("no poll yet".into())
            }
        });
    }
    let mut want = truth(&truth_events, &[], &[]);
    assert_eq!(
        want.keys().map(String::as_str).collect::<Vec<_>>(),
        ["coop-a", "coop-b", "coop-c"],
        "nothing unassigned: every meeting is its maker's"
    );
    want.insert("coop-d".into(), Row::default());
    w.wait_for_usage("2026-11", &want);
    // The node's own count of the month (the Members page's) is the same.
    let month = &w.node.status_json()["reports"]["this_month"];
    assert_eq!(month["month"], "2026-11", "{month}");
    for (member, row) in &want {
        let on_node = month["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["member"] == member.as_str());
        let n = |k: &str| on_node.map_or(0, |m| m[k].as_u64().unwrap());
        assert_eq!(
            (n("meeting_seconds"), n("participant_seconds"), n("peak_participants")),
            (row.meeting_seconds, row.participant_seconds, row.peak),
            "{member} on the node: {month}"
        );
    }
}

#[test]
fn ops_down_for_a_stretch() {
    let mut w = world(None);
    let ops_port = w.ops.listen_port();
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
    fs::write(&script, script_toml(&in_seconds(&events))).unwrap();
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
    // Revoked: reports are refused, and the node says so. Without BBB the
    // node still reports (empty periods with its health and resources).
    let out = ops.cli(&["revoke", "--node", "test-node"]);
    assert!(out.status.success());
    let st = node.status_json();
    assert_eq!(st["enrollment"]["node"], "test-node");
    wait_for("the node to show ops's refusal", T, || {
        let st = node.status_json();
        let alerts = st["alerts"].to_string();
        if alerts.contains("usage-refused")
            && alerts.contains("is revoked at ops")
            && st["reports"]["queued"].as_u64() >= Some(1)
        {
            Ok(())
        } else {
            Err(format!("{alerts} {}", st["reports"]))
        }
    });
    let (_, err) = enroll(&ops.token("test-node"), &["--force"]);
    assert!(err.contains("node \"test-node\" is revoked at ops"), "{err}");
}

// --- month boundaries, replaced disks, hostile reports -----------------------------

/// 2026-10-31 22:00:00 UTC: two hours before November.
const EVE: i64 = 1_793_484_000;
/// Seven minutes: midnight falls inside the interval from step 17
/// (23:59:00) to step 18 (00:06:00), so an interval is cut there.
const EVE_STEP: i64 = 420;
const EVE_STEPS: i64 = 44;

/// Builds a script in steps; users of meeting `id` are `id-uN`.
#[derive(Default)]
struct Script(Vec<(i64, Ev)>);

impl Script {
    fn create(&mut self, step: i64, id: &'static str, member: Option<&'static str>, parent: Option<&'static str>) {
        self.0.push((step, Ev::Create { id, member, parent }));
    }
    fn join(&mut self, step: i64, id: &'static str, users: std::ops::Range<u32>) {
        for u in users {
            self.0.push((
                step,
                Ev::Join {
                    id,
                    user: format!("{id}-u{u}"),
                },
            ));
        }
    }
    fn leave(&mut self, step: i64, id: &'static str, user: u32) {
        self.0.push((
            step,
            Ev::Leave {
                id,
                user: format!("{id}-u{user}"),
            },
        ));
    }
    fn end(&mut self, step: i64, id: &'static str) {
        self.0.push((step, Ev::End { id }));
    }
    /// The events in seconds after the start.
    fn seconds(&self, step: i64) -> Vec<(i64, Ev)> {
        self.0.iter().map(|(k, e)| (k * step, e.clone())).collect()
    }
}

/// The last night of October: a board meeting and its breakout room and
/// an untagged meeting run across midnight; one meeting only in October,
/// one only in November.
fn night() -> Script {
    let mut s = Script::default();
    s.create(1, "b-eve", Some("coop-b"), None);
    s.join(1, "b-eve", 0..6);
    s.leave(6, "b-eve", 0);
    s.end(12, "b-eve");
    s.create(2, "a-night", Some("coop-a"), None);
    s.join(2, "a-night", 0..4);
    s.join(5, "a-night", 4..7);
    s.create(15, "a-room", None, Some("a-night"));
    s.join(15, "a-room", 0..4);
    s.create(16, "x-mid", None, None);
    s.join(16, "x-mid", 0..3);
    s.leave(19, "a-night", 6);
    s.end(19, "x-mid");
    s.end(20, "a-room");
    s.create(22, "c-late", Some("coop-c"), None);
    s.join(22, "c-late", 0..4);
    s.join(25, "c-late", 4..5);
    s.end(30, "a-night");
    s.end(38, "c-late");
    s
}

#[test]
fn a_meeting_across_the_first_is_billed_to_each_month_exactly() {
    let script = night();
    // Merging is forced (at most 3 queued reports) while ops is down.
    let mut w = world_with(Scenario {
        state_dir: None,
        start: EVE,
        events: script.seconds(EVE_STEP),
        usage: "max_reports = 3",
    });
    let ops_port = w.ops.listen_port();
    let times: Vec<i64> = (0..=EVE_STEPS).map(|k| EVE + k * EVE_STEP).collect();
    let want = truth_months(&w.events, EVE, &times, &[], &[]);
    // The script does what this test is about.
    assert_eq!(want.keys().collect::<Vec<_>>(), ["2026-10", "2026-11"]);
    for (month, member) in [
        ("2026-10", "coop-a"),
        ("2026-11", "coop-a"),
        ("2026-10", "unassigned"),
        ("2026-11", "unassigned"),
    ] {
        assert_eq!(want[month][member].meetings, 1, "{month} {member}");
    }
    assert!(want["2026-10"].contains_key("coop-b") && !want["2026-11"].contains_key("coop-b"));
    assert!(want["2026-11"].contains_key("coop-c") && !want["2026-10"].contains_key("coop-c"));

    // Ops is down from 22:56 to 01:58; the supervisor is killed five
    // times, twice on either side of midnight.
    let kills = [12, 17, 18, 24, 31];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    for k in 1..=EVE_STEPS {
        let t = EVE + k * EVE_STEP;
        if k == 8 {
            w.ops.stop();
        }
        if k == 34 {
            let st = w.node.status_json();
            let queued = st["reports"]["queued"].as_u64().unwrap();
            assert!(
                (2..=3).contains(&queued),
                "reports of both months queue, merged down to 3 but not across the 1st: {queued}"
            );
            w.ops.start(ops_port);
        }
        if kills.contains(&k) {
            w.bbb.post(&format!("/standin/advance?to={t}"));
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(seed % 250));
            w.node.kill9();
            w.node.restart();
        }
        w.bbb.step_to(t);
    }
    w.wait_for_usage("2026-10", &want["2026-10"]);
    w.wait_for_usage("2026-11", &want["2026-11"]);
    // It stays exact: later reports add nothing twice.
    let n = w.node.status_json()["reports"]["last_success"].as_f64().unwrap_or(0.0);
    wait_for("another report acknowledged", T, || {
        if w.node.status_json()["reports"]["last_success"].as_f64().unwrap_or(0.0) > n {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    assert_eq!(w.ops.usage_in("2026-10"), want["2026-10"]);
    assert_eq!(w.ops.usage_in("2026-11"), want["2026-11"]);
    let nodes = w.ops.nodes_json();
    assert_eq!(nodes[0]["refusals"], 0, "{nodes}");
}

#[test]
fn a_replaced_disk_and_a_lost_usage_state_lose_nothing() {
    let mut w = world(None);
    let times = |to: i64| (0..=to).map(|k| DAY_START + k * STEP).collect::<Vec<_>>();
    let so_far = |to: i64| {
        truth_months(&w.events, DAY_START, &times(to), &[], &[])
            .remove("2026-11")
            .unwrap()
    };
    // Steps 72-78 and 98-114 are quiet: nothing runs while the disk is out.
    for k in 1..=75 {
        w.bbb.step_to(DAY_START + k * STEP);
    }
    w.wait_for_usage("2026-11", &so_far(75));

    // The disk is swapped: a new, empty one in the same box.
    w.node.kill9();
    fs::remove_dir_all(&w.node.state_dir).unwrap();
    w.node.restart();
    assert!(w.node.status_json()["enrollment"].is_null());
    w.enroll(&[]);
    for k in 76..=102 {
        w.bbb.step_to(DAY_START + k * STEP);
    }
    w.wait_for_usage("2026-11", &so_far(102));
    let nodes = w.ops.nodes_json();
    assert_eq!(nodes.as_array().unwrap().len(), 1, "the node is listed once: {nodes}");
    assert_eq!(
        (nodes[0]["epoch"].as_u64(), nodes[0]["refusals"].as_u64()),
        (Some(2), Some(0))
    );

    // The usage state alone is lost (moved aside after damage, say) while
    // the enrollment stays: its numbers could repeat ones ops has, so the
    // node holds its reports back and says so until it enrolls again.
    w.node.kill9();
    fs::remove_dir_all(w.node.state_dir.join("usage")).unwrap();
    w.node.restart();
    for k in 103..=106 {
        w.bbb.step_to(DAY_START + k * STEP);
    }
    let st = w.node.status_json();
    let alerts = st["alerts"].to_string();
    assert!(
        alerts.contains("usage-state") && alerts.contains("enroll again"),
        "{alerts}"
    );
    assert_eq!(st["health"]["status"], "critical");
    assert_eq!(st["reports"]["queued"], 0, "nothing is numbered meanwhile");
    w.enroll(&["--force"]);
    for k in 107..STEPS {
        w.bbb.step_to(DAY_START + k * STEP);
    }
    w.finish(&[], &[]);
    let nodes = w.ops.nodes_json();
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(
        (nodes[0]["epoch"].as_u64(), nodes[0]["refusals"].as_u64()),
        (Some(3), Some(0))
    );
    assert!(!w.node.status_json()["alerts"].to_string().contains("usage-state"));
}

#[test]
fn hostile_reports_are_refused_with_reasons_and_the_month_stays_readable() {
    use appliance_usage::protocol::{EnrollResponse, MeetingLine, MemberLine};
    use appliance_usage::{EnrollRequest, Envelope, MemberUsage, NodeKey, Report, Resources};

    let port = free_port();
    let ops = Ops::new(port, port);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let fp = appliance_e2e::tls::pem_fingerprint(&ops.config.parent().unwrap().join("state/tls/admin-cert.pem"));
    let post = |path: &str, body: String| {
        let r = appliance_e2e::tls::https_request(
            addr,
            "POST",
            path,
            fp.as_deref(),
            &[("Content-Type", "application/json")],
            &body,
        )
        .unwrap();
        (r.status, r.body)
    };
    // Two nodes enroll as a node would, with keys of their own.
    let enroll = |name: &str| {
        let t = appliance_usage::Token::decode(&ops.token(name)).unwrap();
        let key = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
        let req = EnrollRequest {
            secret: t.secret,
            node: name.into(),
            public_key: key.public_key(),
            version: "0.1.0".into(),
            facts: BTreeMap::new(),
        };
        let (status, body) = post("/api/v1/enroll", serde_json::to_string(&req).unwrap());
        assert_eq!(status, 200, "{body}");
        let r: EnrollResponse = serde_json::from_str(&body).unwrap();
        (key, r.node_id)
    };
    let (honest, honest_id) = enroll("honest-node");
    let (hostile, hostile_id) = enroll("hostile-node");
    // 2026-11-10 10:00 UTC.
    let t0 = DAY_START + 8 * 86_400 + 10 * 3600;
    let report = |id: &str, seq: u64, from: i64, to: i64, participants: u64| Report {
        node_id: id.into(),
        epoch: 1,
        seq_from: seq,
        seq_to: seq,
        from,
        to,
        firmware: "0.1.0".into(),
        usage: vec![MemberLine {
            member: "coop-a".into(),
            usage: MemberUsage {
                meeting_seconds: (to - from) as u64,
                participant_seconds: participants * (to - from) as u64,
                peak_participants: participants as u32,
            },
        }],
        meetings: vec![MeetingLine {
            id: format!("{id}-m"),
            member: "coop-a".into(),
            seconds: (to - from) as u64,
        }],
        gaps: vec![],
        resources: Resources::default(),
        health: "ok".into(),
        services: String::new(),
        update: None,
        members: vec![],
    };
    let send = |key: &NodeKey, r: &Report| post("/api/v1/reports", serde_json::to_string(&key.seal(r)).unwrap());
    assert_eq!(send(&honest, &report(&honest_id, 1, t0, t0 + 300, 7)).0, 200);
    let good = report(&hostile_id, 1, t0, t0 + 300, 3);
    assert_eq!(send(&hostile, &good).0, 200);
    let want = ops.usage_rows("2026-11");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut overflowing = report(&hostile_id, 2, t0 + 300, t0 + 301, 1);
    overflowing.usage[0].usage.meeting_seconds = i64::MAX as u64;
    overflowing.meetings[0].seconds = i64::MAX as u64;
    let impossible = report(&hostile_id, 3, t0 + 600, t0 + 900, 1_000_000);
    let future = report(&hostile_id, 4, now + 86_400, now + 86_700, 2);
    let overlapping = report(&hostile_id, 5, t0 + 100, t0 + 400, 2);
    let conflicting = report(&hostile_id, 1, t0, t0 + 300, 4);
    let b = appliance_usage::Month::parse("2026-11").unwrap().start();
    let across = report(&hostile_id, 6, b - 120, b + 120, 2);
    let forged = {
        let mut e: Envelope = hostile.seal(&report(&hostile_id, 7, t0 + 1200, t0 + 1500, 2));
        e.report = e
            .report
            .replace("\"participant_seconds\":600", "\"participant_seconds\":900");
        e
    };
    let cases: Vec<(&str, (u16, String), u16, &str)> = vec![
        (
            "2^63-1 meeting-seconds in one second",
            send(&hostile, &overflowing),
            422,
            "claims 9223372036854775807 s in a period of 1 s",
        ),
        (
            "a million participants",
            send(&hostile, &impossible),
            422,
            "participant-seconds",
        ),
        ("a day ahead", send(&hostile, &future), 422, "ahead of ops's clock"),
        (
            "time counted already",
            send(&hostile, &overlapping),
            409,
            "that time was counted already",
        ),
        (
            "another report 1",
            send(&hostile, &conflicting),
            409,
            "differs from the report 1 stored before",
        ),
        ("across the 1st", send(&hostile, &across), 422, "spans a month boundary"),
        (
            "tampered after signing",
            post("/api/v1/reports", serde_json::to_string(&forged).unwrap()),
            403,
            "signature does not verify",
        ),
    ];
    for (name, (status, body), want_status, reason) in &cases {
        assert_eq!(status, want_status, "{name}: {body}");
        assert!(body.contains(reason), "{name}: {body}");
    }
    // The month is still readable, and nobody's figures moved.
    let out = ops.cli(&["usage", "--month", "2026-11", "--csv"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ops.usage_rows("2026-11"), want);
    assert!(want.contains("honest-node,coop-a,1,300,2100,7,300"), "{want}");
    assert!(want.contains("hostile-node,coop-a,1,300,900,3,300"), "{want}");
    // Ops sees the refusals of the signed reports (the tampered one could
    // come from anyone and does not count against the node).
    let nodes = ops.nodes_json();
    let hostile_row = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "hostile-node")
        .unwrap();
    let signed = cases.len() as u64 - 1;
    assert_eq!(hostile_row["refusals"], signed);
    assert!(
        hostile_row["last_refusal"]
            .as_str()
            .unwrap()
            .contains("spans a month boundary"),
        "{hostile_row}"
    );
    let text = String::from_utf8(ops.cli(&["nodes"]).stdout).unwrap();
    assert!(
        text.contains(&format!("refused: node hostile-node had {signed} report(s) refused")),
        "{text}"
    );
    assert!(!text.contains("refused: node honest-node"), "{text}");
    // Text a node sends cannot drive the terminal of whoever reads it.
    let mut beat = report(&honest_id, 2, t0 + 300, t0 + 300, 0);
    beat.usage.clear();
    beat.meetings.clear();
    beat.health = "\u{1b}[2J\u{1b}[Hall is well\nforged-node ok".into();
    assert_eq!(send(&honest, &beat).0, 200);
    let text = String::from_utf8(ops.cli(&["nodes"]).stdout).unwrap();
    assert!(!text.contains('\u{1b}') && !text.contains("\nforged-node"), "{text:?}");
    assert!(text.contains("\\u{1b}[2J"), "{text}");
    // Ops's files are its own.
    use std::os::unix::fs::PermissionsExt;
    let state = ops.config.parent().unwrap().join("state");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("ops.db")), 0o600);
}

#[test]
fn a_usage_state_restored_from_a_backup_is_refused_not_counted_twice() {
    let mut w = world(None);
    for k in 1..=60 {
        w.bbb.step_to(DAY_START + k * STEP);
    }
    // A backup of the state dir, taken now (files are replaced atomically).
    let usage = w.node.state_dir.join("usage/usage.json");
    let backup = fs::read(&usage).unwrap();
    for k in 61..=75 {
        w.bbb.step_to(DAY_START + k * STEP);
    }
    let times: Vec<i64> = (0..=75).map(|k| DAY_START + k * STEP).collect();
    let so_far = truth_months(&w.events, DAY_START, &times, &[], &[])
        .remove("2026-11")
        .unwrap();
    w.wait_for_usage("2026-11", &so_far);
    // The disk is restored from that backup: its ledger reports time (and
    // numbers) that ops has.
    w.node.kill9();
    fs::remove_dir_all(w.node.state_dir.join("usage/outbox")).unwrap();
    fs::write(&usage, &backup).unwrap();
    w.node.restart();
    w.bbb.step_to(DAY_START + 76 * STEP);
    wait_for("the node to show ops's refusal", T, || {
        let st = w.node.status_json();
        let alerts = st["alerts"].to_string();
        if alerts.contains("usage-refused") && (alerts.contains("counted already") || alerts.contains("differs from")) {
            Ok(())
        } else {
            Err(format!("{alerts} {}", st["reports"]))
        }
    });
    assert!(
        w.node.status_json()["reports"]["queued"].as_u64() >= Some(1),
        "the refused report stays queued"
    );
    assert_eq!(w.ops.usage_in("2026-11"), so_far, "nothing was counted twice");
    assert!(w.ops.nodes_json()[0]["refusals"].as_u64() >= Some(1));
    // The runbook (docs/ops.md): move usage/ aside, enroll again.
    w.node.kill9();
    fs::rename(w.node.state_dir.join("usage"), w.node.state_dir.join("usage.refused")).unwrap();
    w.node.restart();
    w.enroll(&["--force"]);
    for k in 77..STEPS {
        w.bbb.step_to(DAY_START + k * STEP);
    }
    w.finish(&[], &[]);
    assert!(!w.node.status_json()["alerts"].to_string().contains("usage-refused"));
}
