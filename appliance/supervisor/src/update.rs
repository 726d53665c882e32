//! The node's update commands (`appliance update check|apply|status|
//! rollback`), wired from the config to `appliance_update`.
//!
//! The version a process runs is the release directory it was started
//! from (`releases/VERSION/appliance`, as the signed manifest named it),
//! or the version it was built as when started from anywhere else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use appliance_api::{BbbStatus, ServicesStatus, UpdateResultView, UpdateView};
use appliance_update::download::{Downloader, Limits};
use appliance_update::install::{OnStart, Releases, State};
use appliance_update::policy::Decision;
use appliance_update::repo::{Expiry, Source, Trust};
use appliance_update::updater::{Checked, Updater};
use appliance_update::window::Window;
use jiff::Timestamp;
use semver::Version;

use crate::config::Config;
use crate::state::{Shared, lock};

pub const BUILT_AS: &str = env!("CARGO_PKG_VERSION");

pub(crate) fn built_as() -> Version {
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
pub(crate) fn source(cfg: &Config, from: Option<&Path>) -> Result<(Source, reqwest::Client)> {
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

/// Run as root, the commands act as the state directory's owner (the
/// supervisor's user), so that nothing they write is out of the
/// supervisor's reach afterwards.
pub fn act_as_state_owner(cfg: &Config) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(&cfg.node.state_dir) else {
        return Ok(());
    };
    if meta.uid() == 0 {
        return Ok(());
    }
    nix::unistd::setgroups(&[]).context("dropping supplementary groups")?;
    nix::unistd::setgid(nix::unistd::Gid::from_raw(meta.gid())).context("switching to the state dir's group")?;
    nix::unistd::setuid(nix::unistd::Uid::from_raw(meta.uid())).context("switching to the state dir's owner")?;
    Ok(())
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
    if !now {
        // Never during a meeting, unless told: the supervisor knows.
        if let Ok(body) = rt.block_on(crate::control::get_body(&cfg.control_socket(), "/v1/status"))
            && let Ok(st) = serde_json::from_slice::<appliance_api::Status>(&body)
            && let Some(b) = st.bbb.filter(|b| b.up && b.meetings > 0)
        {
            bail!(
                "{} meetings are running; installing restarts the supervisor. Use --now to install anyway",
                b.meetings
            );
        }
    }
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
            if let Ok(_lock) = u.releases.lock() {
                let _ = u.releases.prune();
            }
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

/// The unit's `ExecStartPre=`, run by the image's own binary before every
/// start: counts the starts of a version on trial and, past the limit,
/// switches back before this start (a release that exits at once never
/// gets to count itself). Never fails the start: any problem is printed.
pub fn before_start(cfg: &Config) -> Result<()> {
    use appliance_update::install::BeforeStart;
    let releases = Releases::new(cfg.releases_dir());
    let Some(current) = releases.link("current") else {
        return Ok(());
    };
    let _lock = releases.lock()?;
    let state = releases.read_state(&current)?;
    let (state, decision) = state.before_start(&current);
    match decision {
        BeforeStart::Nothing => Ok(()),
        BeforeStart::Counted { version, starts } => {
            releases.write_state(&state)?;
            println!("{version} is on probation: start {starts}");
            Ok(())
        }
        BeforeStart::RollBack { version, reason } => {
            releases.write_state(&state)?;
            let s = releases.roll_back(&state, &version, &reason, Timestamp::now())?;
            println!(
                "{version} {reason}: rolled back to {}; {version} is marked bad",
                releases.link("current").map_or("-".into(), |v| v.to_string())
            );
            print_state(&s);
            Ok(())
        }
    }
}

/// Run by known-good code (the image's binary, from the unit's
/// `OnFailure=`) or by an operator. With `after_failure`, having nothing
/// to roll back is an error (exit 1), so that the unit restarts nothing.
pub fn rollback(cfg: &Config, reason: &str, after_failure: bool) -> Result<()> {
    let releases = Releases::new(cfg.releases_dir());
    let running = installed_version(cfg);
    let state = releases.read_state(&running)?;
    let Some(p) = &state.pending else {
        if after_failure {
            bail!("no version on probation: the supervisor failed for another reason, nothing to roll back");
        }
        println!("no version on probation; nothing to roll back");
        return Ok(());
    };
    let version = p.version.clone();
    let _lock = releases.lock()?;
    let s = releases.roll_back(&state, &running, reason, Timestamp::now())?;
    println!(
        "rolled back from {version} to {}; {version} is marked bad",
        releases.link("current").map_or("-".into(), |v| v.to_string())
    );
    print_state(&s);
    Ok(())
}

// --- the supervisor's update task --------------------------------------

/// Pure: whether the node is healthy enough to keep a version on
/// probation. What counts is what a city cares about: the recipe's
/// services up and healthy, BBB answering; a check that cannot run (no
/// status yet) is not healthy.
pub fn probation_verdict(
    recipe: bool,
    services: Option<&ServicesStatus>,
    bbb_configured: bool,
    bbb: Option<&BbbStatus>,
) -> Result<(), String> {
    if recipe {
        let s = services.ok_or("the services' state is not known yet")?;
        if let Some(e) = &s.error {
            return Err(format!("systemd cannot be reached: {e}"));
        }
        let down: Vec<&str> = s
            .services
            .iter()
            .filter(|v| !(v.up && v.state == "ok"))
            .map(|v| v.name.as_str())
            .collect();
        if !down.is_empty() {
            return Err(format!("not healthy: {}", down.join(", ")));
        }
    }
    if bbb_configured {
        let b = bbb.ok_or("BBB has not been polled yet")?;
        if !b.up {
            return Err(format!(
                "BBB does not answer: {}",
                b.error.as_deref().unwrap_or("no answer")
            ));
        }
    }
    Ok(())
}

fn unix(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

fn view_of(cfg: &Config, running: &Version, releases: &Releases, state: &State) -> UpdateView {
    let window = Window::parse(&cfg.update.window, &cfg.update.timezone).ok();
    UpdateView {
        running: running.to_string(),
        channel: cfg.update.channel.clone(),
        previous: releases.link("previous").map(|v| v.to_string()),
        floor: state.floor.as_ref().map(|v| v.to_string()),
        bad: state.bad.iter().map(|v| v.to_string()).collect(),
        position: state.position,
        probation: state.pending.as_ref().map(|p| p.version.to_string()),
        window: window.as_ref().map(|w| w.describe().to_string()).unwrap_or_default(),
        next_window: window.map(|w| unix(w.next_open(Timestamp::now()))),
        last_result: state.last.as_ref().map(result_view),
        os: crate::os_update::view(cfg),
        ..UpdateView::default()
    }
}

pub(crate) fn result_view(l: &appliance_update::install::Outcome) -> UpdateResultView {
    UpdateResultView {
        version: l.version.to_string(),
        result: serde_json::to_value(l.result)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        reason: l.reason.clone(),
        at: unix(l.at),
    }
}

fn publish(shared: &Shared, f: impl FnOnce(&mut UpdateView)) {
    if let Some(v) = lock(&shared.update).as_mut() {
        f(v);
    }
}

/// Runs for the supervisor's lifetime: settles a version on probation
/// (commit after its health checks, or roll back), then checks for
/// releases every `check_interval` (with jitter) and installs one inside
/// the window while no meeting runs. A switch in either direction ends
/// with a message on `restart`: the supervisor exits and systemd starts
/// whatever `releases/current` now is.
/// What an operator can ask of the update task.
#[derive(Debug)]
pub enum Request {
    /// Check now.
    Check,
    /// Check and install now, outside the window and during meetings.
    ApplyNow,
    /// `current` was switched by `appliance update apply --from`: restart
    /// into it.
    Restart(String),
}

/// An operator's request from the admin page or the control socket.
pub fn request(shared: &Shared, action: appliance_api::UpdateAction) -> Result<String, appliance_api::ActionError> {
    use appliance_api::{ActionError, UpdateAction};
    let Some(tx) = &shared.update_requests else {
        return Err(ActionError::Unavailable(
            "updates are not set up on this node ([update] root)".into(),
        ));
    };
    let (req, said) = match action {
        UpdateAction::Check => (Request::Check, "checking for updates now"),
        UpdateAction::Install => (
            Request::ApplyNow,
            "checking, and installing a release for this node now if there is one",
        ),
    };
    tx.try_send(req)
        .map(|()| said.to_string())
        .map_err(|_| ActionError::Conflict("the update task is busy; try again in a minute".into()))
}

pub async fn task(
    cfg: Config,
    shared: Arc<Shared>,
    restart: tokio::sync::mpsc::Sender<String>,
    requests: tokio::sync::mpsc::Receiver<Request>,
) {
    if cfg.update.root.is_none() {
        return;
    }
    let running = running_version(&cfg);
    let releases = Releases::new(cfg.releases_dir());
    // A node imaged with this version starts its releases directory with
    // it, so that the first switch has something to come back to.
    if releases.link("current").is_none()
        && let Ok(exe) = std::env::current_exe()
        && let Err(e) = releases.adopt(&running, &exe)
    {
        log::error!("updates: adopting {running} as the first release: {e}");
    }
    let state = match releases.read_state(&running) {
        Ok(s) => s,
        Err(e) => {
            log::error!("updates: {e}");
            *lock(&shared.update) = Some(UpdateView {
                running: running.to_string(),
                channel: cfg.update.channel.clone(),
                error: Some(e.to_string()),
                ..UpdateView::default()
            });
            return;
        }
    };
    // Under the image's unit, `appliance update before-start` counted this
    // start already (it says so in the environment).
    let counted = std::env::var_os("APPLIANCE_STARTS_COUNTED").is_some();
    let (state, start) = state.on_start(&running, counted, Timestamp::now());
    if let Err(e) = releases.write_state(&state) {
        log::error!("updates: {e}");
        if let OnStart::Trial { version } = &start {
            // A trial whose starts cannot be counted could loop forever.
            let reason = format!("{version}: its start could not be recorded ({e})");
            roll_back(&cfg, &shared, &releases, &running, &reason, &restart).await;
            return;
        }
    }
    *lock(&shared.update) = Some(view_of(&cfg, &running, &releases, &state));
    match start {
        OnStart::Normal => {}
        OnStart::RolledBack { version } => {
            log::warn!(
                "updates: {version} did not pass its health checks before; {running} runs, {version} is marked bad"
            );
        }
        OnStart::Interrupted { version } => {
            log::warn!("updates: the switch to {version} was interrupted; staying on {running}");
        }
        OnStart::RollBack { version, reason } => {
            roll_back(
                &cfg,
                &shared,
                &releases,
                &running,
                &format!("{version} {reason}"),
                &restart,
            )
            .await;
            return;
        }
        OnStart::Trial { version } => {
            log::info!(
                "updates: {version} is on probation; committing once healthy (within {})",
                humantime::format_duration(cfg.update.health_deadline)
            );
            let deadline = tokio::time::Instant::now() + cfg.update.health_deadline;
            let mut good_in_a_row = 0;
            let mut last_reason = String::from("never checked");
            loop {
                let verdict = {
                    let services = lock(&shared.services).clone();
                    let bbb = lock(&shared.bbb).clone();
                    probation_verdict(cfg.recipe.is_some(), services.as_ref(), cfg.bbb.is_some(), bbb.as_ref())
                };
                match verdict {
                    Ok(()) => good_in_a_row += 1,
                    Err(why) => {
                        good_in_a_row = 0;
                        last_reason = why;
                    }
                }
                if good_in_a_row >= 3 {
                    let s = match releases.read_state(&running) {
                        Ok(s) => s.committed(&running, Timestamp::now()),
                        Err(e) => {
                            log::error!("updates: {e}");
                            break;
                        }
                    };
                    match releases.write_state(&s) {
                        Ok(()) => {
                            log::info!("updates: {version} passed its health checks and is committed");
                            if let Ok(_lock) = releases.lock() {
                                let _ = releases.prune();
                            }
                            *lock(&shared.update) = Some(view_of(&cfg, &running, &releases, &s));
                        }
                        Err(e) => log::error!("updates: committing {version}: {e}"),
                    }
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    let reason = format!(
                        "health checks did not pass within {}: {last_reason}",
                        humantime::format_duration(cfg.update.health_deadline)
                    );
                    roll_back(&cfg, &shared, &releases, &running, &reason, &restart).await;
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    check_loop(cfg, shared, running, restart, requests).await;
}

async fn roll_back(
    cfg: &Config,
    shared: &Shared,
    releases: &Releases,
    running: &Version,
    reason: &str,
    restart: &tokio::sync::mpsc::Sender<String>,
) {
    log::error!("updates: rolling back {running}: {reason}");
    // A CLI install may hold the lock for a while; the rollback waits for
    // it rather than leave a bad version running.
    let guard = loop {
        match releases.lock() {
            Err(appliance_update::UpdateError::Busy(_)) => tokio::time::sleep(Duration::from_secs(1)).await,
            other => break other,
        }
    };
    let result = guard.and_then(|_lock| {
        releases
            .read_state(running)
            .and_then(|s| releases.roll_back(&s, running, reason, Timestamp::now()))
    });
    match result {
        Ok(s) => {
            *lock(&shared.update) = Some(view_of(cfg, running, releases, &s));
            let _ = restart.send(format!("rolled back from {running}: {reason}")).await;
        }
        Err(e) => {
            log::error!("updates: the rollback failed: {e}");
            publish(shared, |v| v.error = Some(format!("rollback failed: {e}")));
        }
    }
}

fn jittered(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    let f = 0.9 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) * 0.2;
    d.mul_f64(f)
}

async fn check_loop(
    cfg: Config,
    shared: Arc<Shared>,
    running: Version,
    restart: tokio::sync::mpsc::Sender<String>,
    mut requests: tokio::sync::mpsc::Receiver<Request>,
) {
    // The first check soon after start (a node that was off catches up),
    // spread so a fleet restarted at once does not ask at once.
    let mut wait = jittered(Duration::from_secs(60)).min(cfg.update.check_interval);
    // The OS install this task started last, and when.
    let mut os_started = None;
    loop {
        // `asked`: an operator asked for this check (an OS install that
        // failed is then tried again at once, not at the next interval).
        let (force, asked) = tokio::select! {
            _ = tokio::time::sleep(wait) => (false, false),
            r = requests.recv() => match r {
                Some(Request::Check) => (false, true),
                Some(Request::ApplyNow) => (true, true),
                Some(Request::Restart(why)) => {
                    let _ = restart.send(why).await;
                    return;
                }
                None => (false, false),
            },
        };
        wait = jittered(cfg.update.check_interval);
        let updater = match updater(&cfg, None, running.clone()) {
            Ok(u) => u,
            Err(e) => {
                publish(&shared, |v| v.error = Some(format!("{e:#}")));
                continue;
            }
        };
        let (verified, checked) = match updater.check(Expiry::Enforce, Timestamp::now()).await {
            Ok(x) => x,
            Err(e) => {
                log::warn!("updates: check failed: {e}");
                publish(&shared, |v| v.error = Some(e.to_string()));
                continue;
            }
        };
        let _ = save_check(&cfg, &checked);
        publish(&shared, |v| {
            v.error = None;
            v.last_check = Some(unix(checked.at));
            v.passed_over = checked.plan.skipped.iter().map(|s| s.to_string()).collect();
            (v.available, v.available_from) = match &checked.plan.decision {
                Decision::UpToDate => (None, None),
                Decision::Waiting { release, at } => (Some(release.version.to_string()), Some(unix(*at))),
                Decision::Install { release, .. } => (Some(release.version.to_string()), Some(unix(checked.at))),
            };
        });
        // Inside the window, and never during a meeting.
        let window = match Window::parse(&cfg.update.window, &cfg.update.timezone) {
            Ok(w) => w,
            Err(e) => {
                publish(&shared, |v| v.error = Some(e.to_string()));
                continue;
            }
        };
        let meetings = || {
            lock(&shared.bbb)
                .as_ref()
                .map_or(0, |b| if b.up { b.meetings } else { 0 })
        };
        // The OS first: its root unit runs beside the supervisor, which
        // goes on (a supervisor release is a restart, an OS one a reboot).
        let allowed = force || (window.contains(Timestamp::now()) && meetings() == 0);
        if let Some(again) = crate::os_update::step(&cfg, &shared, &verified, allowed, asked, &mut os_started).await {
            wait = wait.min(again);
        }
        if !matches!(checked.plan.decision, Decision::Install { .. }) {
            continue;
        }
        if !force && (!window.contains(Timestamp::now()) || meetings() > 0) {
            let why = if meetings() > 0 {
                format!("waiting: {} meetings running", meetings())
            } else {
                format!("waiting for the window ({})", window.describe())
            };
            log::info!("updates: {why}");
            publish(&shared, |v| {
                v.next_window = Some(unix(window.next_open(Timestamp::now())))
            });
            // Look again soon rather than after a whole interval.
            wait = wait.min(Duration::from_secs(60));
            continue;
        }
        let sh = shared.clone();
        let progress = move |p: appliance_update::download::Progress| {
            publish(&sh, |v| v.downloading = Some((p.have, p.total)));
        };
        match updater
            .install(&verified, &checked.plan.decision, Timestamp::now(), &progress)
            .await
        {
            Ok(Some(v)) => {
                log::info!("updates: switched to {v}; restarting into it");
                publish(&shared, |view| {
                    view.downloading = None;
                    view.probation = Some(v.to_string());
                });
                let _ = restart.send(format!("switching to {v}")).await;
                return;
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!("updates: install failed: {e}");
                let releases = Releases::new(cfg.releases_dir());
                if let Ok(s) = releases.read_state(&running) {
                    *lock(&shared.update) = Some(view_of(&cfg, &running, &releases, &s));
                }
                publish(&shared, |v| v.error = Some(e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(states: &[(&str, bool, &str)]) -> ServicesStatus {
        let list: Vec<serde_json::Value> = states
            .iter()
            .map(|(n, up, st)| {
                serde_json::json!({
                    "name": n, "unit": format!("{n}.service"), "core": true, "load_state": "loaded",
                    "active_state": "active", "sub_state": "running", "up": up, "state": st,
                    "detail": null, "restarts": 0, "systemd_restarts": 0, "last_failure": null, "checks": []
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "recipe": "lab", "services": list, "checks": [], "alerts": [], "error": null
        }))
        .unwrap()
    }

    #[test]
    fn probation_needs_what_a_city_cares_about() {
        let bbb_up = BbbStatus {
            up: true,
            ..BbbStatus::default()
        };
        let bbb_down = BbbStatus {
            up: false,
            error: Some("connection refused".into()),
            ..BbbStatus::default()
        };
        let good = services(&[("nginx", true, "ok"), ("redis", true, "ok")]);
        let restarting = services(&[("nginx", true, "ok"), ("redis", false, "restarting")]);
        type Case<'a> = (
            bool,
            Option<&'a ServicesStatus>,
            bool,
            Option<&'a BbbStatus>,
            Result<(), &'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            (false, None, false, None, Ok(())),
            (true, Some(&good), true, Some(&bbb_up), Ok(())),
            (true, None, false, None, Err("not known yet")),
            (true, Some(&restarting), false, None, Err("not healthy: redis")),
            (false, None, true, None, Err("not been polled")),
            (
                false,
                None,
                true,
                Some(&bbb_down),
                Err("BBB does not answer: connection refused"),
            ),
        ];
        for (recipe, s, bbb_on, b, want) in cases {
            let got = probation_verdict(recipe, s, bbb_on, b);
            match (want, &got) {
                (Ok(()), Ok(())) => {}
                (Err(w), Err(e)) => assert!(e.contains(w), "{e:?} should say {w:?}"),
                (w, g) => panic!("want {w:?}, got {g:?}"),
            }
        }
    }
}
