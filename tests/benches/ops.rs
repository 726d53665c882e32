//! Benchmarks of usage reporting, side by side with what bounds them:
//!
//! 1. Ops ingest: 10,000 enrolled nodes each send a signed report to the
//!    real `appliance-ops serve` (release build) over HTTPS, 64 at a time.
//!    Beside it, the same 10,000 reports' rows inserted straight into
//!    SQLite, one fsynced transaction each, without HTTP, TLS or signature
//!    checks: the storage floor.
//! 2. Outbox drain: a node that was offline for 7 days holds 2,016 reports
//!    (one per 5 minutes); the real supervisor (release) delivers them to
//!    ops; the time until its queue is empty.
//!
//! Run: `cargo bench -p appliance-e2e --bench ops` (prints a table; the
//! figures go into docs/performance.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use appliance_e2e::{Box_, Kill, free_port, repo_root, wait_for};
use appliance_usage::protocol::{MeetingLine, MemberLine, Resources};
use appliance_usage::{EnrollRequest, MemberUsage, NodeKey, Report};

const NODES: usize = 10_000;
const CONCURRENCY: usize = 64;
const OFFLINE_REPORTS: u64 = 2016;

fn release_bins() -> PathBuf {
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "appliance-ops",
            "-p",
            "appliance-supervisor",
        ])
        .current_dir(repo_root())
        .status()
        .unwrap();
    assert!(st.success());
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("release")
}

fn report(node_id: &str, seq: u64, from: i64) -> Report {
    Report {
        node_id: node_id.into(),
        epoch: 1,
        seq_from: seq,
        seq_to: seq,
        from,
        to: from + 300,
        firmware: "0.1.0".into(),
        usage: (0..3)
            .map(|m| MemberLine {
                member: format!("coop-{m}"),
                usage: MemberUsage {
                    meeting_seconds: 300,
                    participant_seconds: 300 * (m + 3),
                    peak_participants: (m + 3) as u32,
                },
            })
            .collect(),
        meetings: (0..3)
            .map(|m| MeetingLine {
                id: format!("{node_id}-{seq}-{m}"),
                member: format!("coop-{m}"),
                seconds: 300,
            })
            .collect(),
        gaps: vec![],
        resources: Resources {
            cpu_avg: Some(0.2),
            cpu_max: Some(0.5),
            ..Resources::default()
        },
        health: "ok".into(),
        services: "22 of 22 services up".into(),
        update: None,
        members: vec![],
    }
}

fn ops_config(dir: &Path, port: u16) -> PathBuf {
    let c = dir.join("ops.toml");
    std::fs::write(
        &c,
        format!("listen = \"127.0.0.1:{port}\"\npublic_url = \"https://127.0.0.1:{port}\"\nstate_dir = \"state\"\n"),
    )
    .unwrap();
    c
}

fn start_ops(bins: &Path, config: &Path, port: u16) -> (Kill, String) {
    let child = Command::new(bins.join("appliance-ops"))
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let fp_path = config.parent().unwrap().join("state/tls/admin-cert.pem");
    let fp = wait_for("ops up", Duration::from_secs(30), || {
        let fp = appliance_e2e::tls::pem_fingerprint(&fp_path).ok_or("no cert yet")?;
        let r = appliance_e2e::tls::https_get(format!("127.0.0.1:{port}").parse().unwrap(), "/healthz", Some(&fp))?;
        if r.status == 200 { Ok(fp) } else { Err("not yet".into()) }
    });
    (Kill(child), fp)
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let bins = release_bins();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    // --- 1. ingest -------------------------------------------------------------
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = ops_config(dir.path(), port);
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    eprintln!("==> enrolling {NODES} nodes");
    let mut envelopes = Vec::with_capacity(NODES);
    {
        let mut store = appliance_ops::store::Store::open(&dir.path().join("state/ops.db")).unwrap();
        for i in 0..NODES {
            let key = NodeKey::from_pkcs8(&NodeKey::generate().unwrap()).unwrap();
            let name = format!("node-{i:05}");
            let secret = store.create_token(&name, now, 3600).unwrap();
            let (id, _) = store
                .enroll(
                    &EnrollRequest {
                        secret,
                        node: name,
                        public_key: key.public_key(),
                        version: "0.1.0".into(),
                        facts: BTreeMap::new(),
                    },
                    now,
                )
                .unwrap();
            // Periods on 5-minute marks never cross a month boundary.
            envelopes.push(key.seal(&report(&id, 1, now / 300 * 300 - 300)));
        }
    }
    let (ops, fp) = start_ops(&bins, &config, port);
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(appliance_certs::pinned_client_config(&fp))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/api/v1/reports");
    eprintln!("==> {NODES} reports, {CONCURRENCY} at a time");
    let envelopes = Arc::new(envelopes);
    let t0 = Instant::now();
    rt.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..CONCURRENCY {
            let (client, url, envs, next) = (client.clone(), url.clone(), envelopes.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= envs.len() {
                        break;
                    }
                    let body = serde_json::to_vec(&envs[i]).unwrap();
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let ingest = t0.elapsed();
    drop(ops);
    let stored = appliance_ops::store::Store::open(&dir.path().join("state/ops.db"))
        .unwrap()
        .report_count()
        .unwrap();
    assert_eq!(stored, NODES as u64);

    // The storage floor: the same rows, straight into SQLite.
    let floor_dir = tempfile::tempdir().unwrap();
    let db = rusqlite::Connection::open(floor_dir.path().join("floor.db")).unwrap();
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE reports (node_id TEXT, seq_to INTEGER, body TEXT, PRIMARY KEY (node_id, seq_to));
         CREATE TABLE usage (node_id TEXT, member TEXT, ms INTEGER, ps INTEGER, peak INTEGER);
         CREATE TABLE meetings (node_id TEXT, meeting_id TEXT, seconds INTEGER);",
    )
    .unwrap();
    let t0 = Instant::now();
    for (i, env) in envelopes.iter().enumerate() {
        let tx = db.unchecked_transaction().unwrap();
        let id = format!("n{i}");
        tx.execute(
            "INSERT INTO reports VALUES (?1, 1, ?2)",
            rusqlite::params![id, env.report],
        )
        .unwrap();
        for m in 0..3 {
            tx.execute(
                "INSERT INTO usage VALUES (?1, ?2, 300, 900, 3)",
                rusqlite::params![id, format!("coop-{m}")],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO meetings VALUES (?1, ?2, 300)",
                rusqlite::params![id, format!("m{m}")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    let floor = t0.elapsed();

    // --- 2. outbox drain ----------------------------------------------------------
    eprintln!("==> a node back after 7 days offline: {OFFLINE_REPORTS} reports");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = ops_config(dir.path(), port);
    let (ops, fp) = start_ops(&bins, &config, port);
    let token = {
        let out = Command::new(bins.join("appliance-ops"))
            .arg("--config")
            .arg(&config)
            .args(["token", "create", "--node", "bench-node"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string()
    };
    let b = Box_::recorded("no-sensors");
    let node_dir = tempfile::tempdir().unwrap();
    let state = node_dir.path().join("state");
    let admin_port = free_port();
    let node_cfg = node_dir.path().join("appliance.toml");
    std::fs::write(
        &node_cfg,
        format!(
            "[node]\nname = \"bench-node\"\nstate_dir = {:?}\n[monitor]\nsysfs_root = {:?}\nprocfs_root = {:?}\nfilesystems = []\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[hardware]\nprofiles_dir = {:?}\n[usage]\nreport_interval = \"1h\"\nretry_min = \"100ms\"\nretry_max = \"1s\"\n[log]\nlevel = \"warn\"\n",
            state.display().to_string(),
            b.path("sys").display().to_string(),
            b.path("proc").display().to_string(),
            repo_root().join("hw-profiles").display().to_string()
        ),
    )
    .unwrap();
    // Enroll once with the supervisor running, then stop it and fill its
    // outbox as 7 days without ops would have.
    let run = |args: &[&str]| {
        Command::new(bins.join("appliance"))
            .arg("--config")
            .arg(&node_cfg)
            .args(args)
            .output()
            .unwrap()
    };
    let sup = Kill(
        Command::new(bins.join("appliance"))
            .arg("--config")
            .arg(&node_cfg)
            .arg("run")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("node up", Duration::from_secs(30), || {
        if run(&["status"]).status.success() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    let out = run(&[
        "enroll",
        "--ops",
        &format!("https://127.0.0.1:{port}"),
        "--token",
        &token,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(sup);
    let key = NodeKey::from_pkcs8(&std::fs::read(state.join("identity/node.pk8")).unwrap()).unwrap();
    let enr: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("enrollment.json")).unwrap()).unwrap();
    let node_id = enr["node_id"].as_str().unwrap().to_string();
    let outbox = state.join("usage/outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    for seq in 1..=OFFLINE_REPORTS {
        let env = key.seal(&report(&node_id, seq, (now - 7 * 86400) / 300 * 300 + seq as i64 * 300));
        std::fs::write(
            outbox.join(format!("{seq:020}.json")),
            serde_json::to_vec(&env).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(
        state.join("usage/usage.json"),
        serde_json::to_vec(
            &serde_json::json!({"next_seq": OFFLINE_REPORTS + 1, "acc": appliance_usage::Accumulator::default()}),
        )
        .unwrap(),
    )
    .unwrap();
    let t0 = Instant::now();
    let _sup = Kill(
        Command::new(bins.join("appliance"))
            .arg("--config")
            .arg(&node_cfg)
            .arg("run")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the outbox to drain", Duration::from_secs(600), || {
        let left = std::fs::read_dir(&outbox).map(|d| d.count()).unwrap_or(usize::MAX);
        if left == 0 { Ok(()) } else { Err(format!("{left} left")) }
    });
    let drain = t0.elapsed();
    drop(ops);
    let stored = appliance_ops::store::Store::open(&dir.path().join("state/ops.db"))
        .unwrap()
        .report_count()
        .unwrap();
    assert_eq!(stored, OFFLINE_REPORTS);
    let _ = fp;

    println!();
    println!(
        "machine: {} CPUs",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!("{:<58}{:>12}", "", "reports/s");
    let ingest_rate = NODES as f64 / ingest.as_secs_f64();
    let floor_rate = NODES as f64 / floor.as_secs_f64();
    println!(
        "{:<58}{:>12.0}",
        format!(
            "ops ingest, {NODES} nodes, HTTPS + ed25519 + SQLite ({:.1} s)",
            ingest.as_secs_f64()
        ),
        ingest_rate
    );
    println!(
        "{:<58}{:>12.0}",
        format!(
            "SQLite alone, same rows, fsync per report ({:.1} s)",
            floor.as_secs_f64()
        ),
        floor_rate
    );
    println!("{:<58}{:>12.3}", "ratio ops / SQLite alone", ingest_rate / floor_rate);
    println!(
        "{:<58}{:>12.0}",
        format!(
            "outbox drain after 7 days offline: {OFFLINE_REPORTS} reports in {:.1} s",
            drain.as_secs_f64()
        ),
        OFFLINE_REPORTS as f64 / drain.as_secs_f64()
    );
}
