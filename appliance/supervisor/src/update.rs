//! The node's update commands (`appliance update check|apply|status|
//! rollback`), wired from the config to `appliance_update`.
//!
//! The version a process runs is the release directory it was started
//! from (`releases/VERSION/appliance`, as the signed manifest named it),
//! or the version it was built as when started from anywhere else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use appliance_update::download::{Downloader, Limits};
use appliance_update::install::{Releases, State};
use appliance_update::policy::Decision;
use appliance_update::repo::{Expiry, Source, Trust};
use appliance_update::updater::{Checked, Updater};
use appliance_update::window::Window;
use jiff::Timestamp;
use semver::Version;

use crate::config::Config;

pub const BUILT_AS: &str = env!("CARGO_PKG_VERSION");

fn built_as() -> Version {
    BUILT_AS.parse().expect("the crate version is semver")
}

/// The version this process runs as.
pub fn running_version(cfg: &Config) -> Version {
    let releases = cfg.releases_dir();
    let from_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.canonicalize().ok())
        .and_then(|exe| {
            let dir = exe.parent()?;
            let base = releases.canonicalize().ok()?;
            if dir.parent()? != base {
                return None;
            }
            dir.file_name()?.to_str()?.parse().ok()
        });
    from_exe.unwrap_or_else(built_as)
}

/// The version the supervisor runs (what `current` points at), for a
/// command run beside it.
fn installed_version(cfg: &Config) -> Version {
    Releases::new(cfg.releases_dir())
        .link("current")
        .unwrap_or_else(built_as)
}

/// Where updates come from: `--from DIR`, `[update] repository`, or ops
/// (with its pinned certificate) once enrolled.
fn source(cfg: &Config, from: Option<&Path>) -> Result<(Source, reqwest::Client)> {
    if let Some(dir) = from {
        if !dir.join("metadata").is_dir() {
            bail!(
                "{}: no metadata/ here; give the directory holding metadata/ and targets/",
                dir.display()
            );
        }
        return Ok((Source::dir(dir)?, reqwest::Client::new()));
    }
    let enrollment = crate::enrollment::load(&cfg.node.state_dir).map_err(anyhow::Error::msg)?;
    let base = match (&cfg.update.repository, &enrollment) {
        (Some(r), _) => r.clone(),
        (None, Some(e)) => format!("{}/updates/", e.ops.trim_end_matches('/')),
        (None, None) => bail!("no update repository: enroll with global ops, or set [update] repository"),
    };
    let url: url::Url = base.parse().with_context(|| format!("update repository {base:?}"))?;
    let client = match &enrollment {
        Some(e) if base.starts_with(e.ops.trim_end_matches('/')) => {
            // Long downloads: no overall timeout here, the downloader has
            // its own deadline.
            reqwest::Client::builder()
                .tls_backend_preconfigured(appliance_certs::pinned_client_config(&e.fingerprint))
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .no_proxy()
                .build()?
        }
        _ => reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()?,
    };
    Ok((Source::under(&url)?, client))
}

pub fn updater(cfg: &Config, from: Option<&Path>, running: Version) -> Result<Updater> {
    let Some(root) = &cfg.update.root else {
        bail!("updates are not set up: [update] root names no trusted root.json");
    };
    let root = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
    let (source, client) = source(cfg, from)?;
    let dir = cfg.node.state_dir.join("update");
    let releases = Releases::new(cfg.releases_dir());
    let state = releases.read_state(&running)?;
    let limits = Limits {
        rate: (cfg.update.max_bytes_per_second > 0).then_some(cfg.update.max_bytes_per_second),
        deadline: cfg.update.download_deadline,
        ..Limits::default()
    };
    Ok(Updater {
        trust: Trust::new(root, dir.join("tuf")),
        source,
        downloader: Downloader::new(client.clone(), limits),
        client,
        staging: dir.join("staging"),
        releases,
        running,
        channel: cfg.update.channel.clone(),
        position: state.position,
    })
}

fn expiry(allow_expired: bool) -> Expiry {
    if allow_expired { Expiry::Ignore } else { Expiry::Enforce }
}

fn last_check_path(cfg: &Config) -> PathBuf {
    cfg.node.state_dir.join("update").join("last-check.json")
}

fn describe(c: &Checked) -> String {
    let mut out = String::new();
    match &c.plan.decision {
        Decision::UpToDate => out.push_str("up to date\n"),
        Decision::Waiting { release, at } => {
            out.push_str(&format!("{} is available to this node from {at}\n", release.version))
        }
        Decision::Install { release, downgrade } => out.push_str(&format!(
            "{} is available{}\n",
            release.version,
            if *downgrade { " (a signed downgrade)" } else { "" }
        )),
    }
    for s in &c.plan.skipped {
        out.push_str(&format!("  passed over: {s}\n"));
    }
    out.push_str(&format!(
        "metadata: root v{}, targets v{}, snapshot v{}, timestamp v{}; valid until {}\n",
        c.versions.root, c.versions.targets, c.versions.snapshot, c.versions.timestamp, c.expires
    ));
    out
}

pub fn check(cfg: &Config, from: Option<&Path>, allow_expired: bool, json: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let u = updater(cfg, from, installed_version(cfg))?;
    let (_, checked) = rt.block_on(u.check(expiry(allow_expired), Timestamp::now()))?;
    save_check(cfg, &checked)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&checked)?);
    } else {
        print!("running {}; {}", u.running, describe(&checked));
    }
    Ok(())
}

fn save_check(cfg: &Config, c: &Checked) -> Result<()> {
    let p = last_check_path(cfg);
    std::fs::create_dir_all(p.parent().expect("in a dir"))?;
    std::fs::write(&p, serde_json::to_vec_pretty(c)?).with_context(|| p.display().to_string())
}

pub fn apply(cfg: &Config, from: Option<&Path>, now: bool, allow_expired: bool) -> Result<()> {
    let window = Window::parse(&cfg.update.window, &cfg.update.timezone)?;
    if !now && !window.contains(Timestamp::now()) {
        bail!(
            "outside the maintenance window ({}); next opens {}. Use --now to install anyway",
            window.describe(),
            window.next_open(Timestamp::now())
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let running = installed_version(cfg);
    let releases = Releases::new(cfg.releases_dir());
    if releases.link("current").is_none() {
        let exe = std::env::current_exe()?;
        releases.adopt(&running, &exe)?;
    }
    let u = updater(cfg, from, running)?;
    let (verified, checked) = rt.block_on(u.check(expiry(allow_expired), Timestamp::now()))?;
    save_check(cfg, &checked)?;
    let decision = checked.plan.decision.clone();
    if !matches!(decision, Decision::Install { .. }) {
        print!("nothing to install: {}", describe(&checked));
        return Ok(());
    }
    let progress = |p: appliance_update::download::Progress| {
        log::debug!("downloaded {} of {} bytes (attempt {})", p.have, p.total, p.attempts);
    };
    match rt.block_on(u.install(&verified, &decision, Timestamp::now(), &progress))? {
        Some(v) => {
            println!(
                "switched to {v} (from {}); it runs on probation at the supervisor's next start",
                u.running
            );
            let _ = u.releases.prune();
        }
        None => println!("nothing to install"),
    }
    Ok(())
}

pub fn status(cfg: &Config, json: bool) -> Result<()> {
    let releases = Releases::new(cfg.releases_dir());
    let running = installed_version(cfg);
    let state = releases.read_state(&running)?;
    let last_check: Option<Checked> = std::fs::read(last_check_path(cfg))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "current": releases.link("current").map(|v| v.to_string()),
                "previous": releases.link("previous").map(|v| v.to_string()),
                "state": state,
                "last_check": last_check,
            }))?
        );
        return Ok(());
    }
    println!(
        "current {}, previous {}",
        releases.link("current").map_or("-".into(), |v| v.to_string()),
        releases.link("previous").map_or("-".into(), |v| v.to_string())
    );
    print_state(&state);
    match last_check {
        Some(c) => print!("last check {}: {}", c.at, describe(&c)),
        None => println!("never checked"),
    }
    Ok(())
}

fn print_state(s: &State) {
    if let Some(f) = &s.floor {
        println!("version floor {f}");
    }
    if !s.bad.is_empty() {
        let bad: Vec<String> = s.bad.iter().map(|v| v.to_string()).collect();
        println!("marked bad (never retried): {}", bad.join(", "));
    }
    if let Some(p) = &s.pending {
        println!(
            "on probation: {} (from {}, since {}, {} starts)",
            p.version, p.from, p.since, p.starts
        );
    }
    if let Some(l) = &s.last {
        println!("last result: {} {:?} at {} {}", l.version, l.result, l.at, l.reason);
    }
}

/// Run by known-good code (the previous version, from the unit's
/// `OnFailure=`) or by the new version when its health checks fail.
pub fn rollback(cfg: &Config, reason: &str) -> Result<()> {
    let releases = Releases::new(cfg.releases_dir());
    let running = installed_version(cfg);
    let state = releases.read_state(&running)?;
    let Some(p) = &state.pending else {
        println!("no version on probation; nothing to roll back");
        return Ok(());
    };
    let version = p.version.clone();
    let s = releases.roll_back(&state, reason, Timestamp::now())?;
    println!(
        "rolled back from {version} to {}; {version} is marked bad",
        releases.link("current").map_or("-".into(), |v| v.to_string())
    );
    print_state(&s);
    Ok(())
}
