//! OS updates on the node (`appliance os ...`), wired from the config to
//! `appliance_update::os`.
//!
//! The supervisor runs unprivileged and cannot write a disk, so the work
//! is split by privilege:
//! - the supervisor decides *when*: after each update check it plans the
//!   OS release too and, inside the window and with no meeting running,
//!   starts `appliance-os-update.service`; once a slot is installed it
//!   starts `appliance-os-reboot.service` under the same conditions (polkit
//!   lets its user start those two units and nothing else of ours);
//! - `appliance os apply` (root, that unit) verifies the repository with its
//!   own trusted metadata (a compromised supervisor cannot feed it a slot),
//!   downloads, writes the other slot and its boot entry with three tries;
//! - at boot, `appliance os boot-check` (root) records a fall-back or an
//!   interrupted write, and `appliance os wait-healthy` (root, ordered before
//!   `boot-complete.target`) commits a trial boot once the supervisor's
//!   health checks pass, so `systemd-bless-boot` keeps the slot; if they do
//!   not pass in time the unit fails and reboots the box, and after three
//!   tries systemd-boot goes back to the old slot by itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use appliance_api::OsUpdateView;
use appliance_update::download::{Downloader, Limits};
use appliance_update::install::Releases;
use appliance_update::os::{self, AtBoot, Layout, OsInstaller, OsState, Slot, Step};
use appliance_update::policy::{Decision, NodeView, Plan, plan};
use appliance_update::repo::{Expiry, Trust, Verified};
use appliance_update::transport::HttpTransport;
use jiff::Timestamp;
use semver::Version;

use crate::config::Config;
use crate::state::{Shared, lock};

/// The root unit that writes the other slot (`appliance os apply`).
pub const UPDATE_UNIT: &str = "appliance-os-update.service";
/// The unit that reboots into an installed slot.
pub const REBOOT_UNIT: &str = "appliance-os-reboot.service";

/// What the running image is: `build-info` (recipe, OS version) and the
/// slot the initramfs booted.
#[derive(Debug, Clone)]
pub struct System {
    pub recipe: String,
    pub version: Version,
    pub booted: Slot,
}

/// `None` when this is not an A/B image (a developer's machine, a test):
/// then there are no OS updates.
pub fn system(cfg: &Config) -> Result<Option<System>> {
    let o = &cfg.update.os;
    if !o.run_dir.join("boot-slot").exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&o.build_info).with_context(|| format!("reading {}", o.build_info.display()))?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .with_context(|| format!("{}: no {k}=", o.build_info.display()))
    };
    let version: Version = field("os_version")?.parse().context("os_version")?;
    Ok(Some(System {
        recipe: field("recipe")?.to_string(),
        version,
        booted: os::booted_slot(&o.run_dir)?,
    }))
}

pub fn installer(cfg: &Config, sys: &System) -> Result<OsInstaller> {
    let o = &cfg.update.os;
    Ok(OsInstaller {
        layout: Layout::of_boot_disk(&o.run_dir, Path::new("/sys/class/block"), &o.esp)?,
        state_dir: o.state_dir.clone(),
        recipe: sys.recipe.clone(),
        running: sys.version.clone(),
        booted: sys.booted,
        write_rate: std::env::var("APPLIANCE_OS_WRITE_RATE")
            .ok()
            .and_then(|r| r.parse().ok()),
        // Without a profile the new entry has none: better than no update
        // (and no health gate) at all; `appliance hw boot` says why.
        kernel_params: match cfg.detect_profile() {
            Ok((p, _)) => p.boot.kernel_params.clone(),
            Err(e) => {
                log::warn!("hardware profile: {e}; the new slot's entry gets no profile kernel parameters");
                Vec::new()
            }
        },
    })
}

/// The node's rollout position, shared with the supervisor's releases.
fn position(cfg: &Config) -> u16 {
    Releases::new(cfg.releases_dir())
        .read_state(&crate::update::built_as())
        .map(|s| s.position)
        .unwrap_or(0)
}

pub fn os_plan(cfg: &Config, sys: &System, v: &Verified, state: &OsState, now: Timestamp) -> Plan {
    let floor = state
        .floor
        .clone()
        .filter(|f| *f > sys.version)
        .unwrap_or_else(|| sys.version.clone());
    plan(
        &v.manifest.os_view(&sys.recipe),
        &NodeView {
            running: &sys.version,
            floor: &floor,
            channel: &cfg.update.channel,
            position: position(cfg),
            bad: &state.bad,
            now,
        },
    )
}

fn describe(p: &Plan) -> String {
    let mut out = match &p.decision {
        Decision::UpToDate => "OS up to date\n".to_string(),
        Decision::Waiting { release, at } => format!("OS {} is available to this node from {at}\n", release.version),
        Decision::Install { release, .. } => format!("OS {} is available\n", release.version),
    };
    for s in &p.skipped {
        out.push_str(&format!("  passed over: OS {s}\n"));
    }
    out
}

/// `appliance os apply` (root): verify, download, write the other slot.
pub fn apply(cfg: &Config) -> Result<()> {
    let Some(sys) = system(cfg)? else {
        bail!("this system was not booted from an A/B image: no OS updates here");
    };
    let Some(root) = &cfg.update.root else {
        bail!("updates are not set up: [update] root names no trusted root.json");
    };
    let root = std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
    let (source, client) = crate::update::source(cfg, None)?;
    let o = &cfg.update.os;
    let trust = Trust::new(root, o.state_dir.join("tuf"));
    let inst = installer(cfg, &sys)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _lock = appliance_update::repo::lock_dir(&o.state_dir)?;
    let verified = rt.block_on(async {
        let _trust_lock = trust.lock()?;
        tokio::time::timeout(
            appliance_update::updater::Updater::REFRESH_DEADLINE,
            trust.refresh(&source, HttpTransport::new(client.clone()), Expiry::Enforce),
        )
        .await
        .unwrap_or_else(|_| {
            Err(appliance_update::UpdateError::Unreachable(
                "the metadata did not arrive in time".into(),
            ))
        })
    })?;
    let state = inst.read_state()?;
    let p = os_plan(cfg, &sys, &verified, &state, Timestamp::now());
    let Decision::Install { release, .. } = &p.decision else {
        print!("running OS {} (slot {}); {}", sys.version, sys.booted, describe(&p));
        return Ok(());
    };
    let result = (|| -> Result<Slot> {
        let target = verified
            .targets
            .get(&release.target)
            .with_context(|| format!("{} is not in the verified targets", release.target))?;
        let limits = Limits {
            rate: (cfg.update.max_bytes_per_second > 0).then_some(cfg.update.max_bytes_per_second),
            deadline: cfg.update.download_deadline,
            ..Limits::default()
        };
        let staging = o.state_dir.join("staging");
        let downloader = Downloader::new(client, limits);
        println!("downloading OS {} ({} bytes)", release.version, target.length);
        let bundle = rt.block_on(downloader.fetch(target, &staging, &|_| {}))?;
        println!("writing OS {} to slot {}", release.version, sys.booted.other());
        let slot = inst.install(&bundle, &release.version, Timestamp::now())?;
        Downloader::clean_staging(&staging, target);
        // The bundle is no longer needed once the slot holds it.
        let _ = std::fs::remove_file(&bundle);
        Ok(slot)
    })();
    match result {
        Ok(slot) => {
            println!(
                "OS {} is in slot {slot}; it boots at the next restart, with {} tries",
                release.version,
                os::TRIES
            );
            Ok(())
        }
        Err(e) => {
            // Recorded, so that the supervisor shows it and does not start
            // the same install again before its next regular check.
            let mut s = inst.read_state().unwrap_or_default();
            s.pending = None;
            s.last = Some(appliance_update::install::Outcome {
                at: Timestamp::now(),
                version: release.version.clone(),
                result: appliance_update::install::Result_::Failed,
                reason: format!("{e:#}"),
            });
            if let Err(w) = inst.write_state(&s) {
                log::error!("os: recording the failed install: {w}");
            }
            Err(e)
        }
    }
}

/// `appliance os boot-check` (root, every boot, before the supervisor).
pub fn boot_check(cfg: &Config) -> Result<()> {
    let Some(sys) = system(cfg)? else {
        println!("not an A/B image: nothing to check");
        return Ok(());
    };
    let inst = installer(cfg, &sys)?;
    let verdict = inst.boot_check(Timestamp::now())?;
    let s = inst.read_state()?;
    match verdict {
        AtBoot::Nothing => println!("OS {} in slot {}", sys.version, sys.booted),
        AtBoot::AwaitingReboot => println!(
            "OS {} in slot {}; an installed update waits for a reboot",
            sys.version, sys.booted
        ),
        AtBoot::Trial => println!(
            "OS {} in slot {}: a trial boot, kept once healthy",
            sys.version, sys.booted
        ),
        AtBoot::Interrupted | AtBoot::FellBack => {
            if let Some(l) = &s.last {
                println!("OS {}: {}", l.version, l.reason);
            }
        }
    }
    Ok(())
}

/// The supervisor's health, read through its control socket: the same
/// checks a new supervisor version passes on probation.
async fn healthy_now(cfg: &Config) -> std::result::Result<(), String> {
    let socket = cfg.control_socket();
    let services: Option<appliance_api::ServicesStatus> = match crate::control::get_body(&socket, "/v1/services").await
    {
        Ok(b) => serde_json::from_slice(&b).ok(),
        Err(e) => return Err(format!("the supervisor does not answer: {e}")),
    };
    let status: appliance_api::Status = crate::control::get_body(&socket, "/v1/status")
        .await
        .map_err(|e| format!("the supervisor does not answer: {e}"))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))?;
    crate::update::probation_verdict(
        cfg.recipe.is_some(),
        services.as_ref(),
        cfg.bbb.is_some(),
        status.bbb.as_ref(),
    )
}

/// `appliance os wait-healthy` (root, before `boot-complete.target`):
/// on a trial boot, waits for three good health checks in a row and
/// commits; fails after `deadline` (the unit then reboots the box).
pub fn wait_healthy(cfg: &Config, deadline: Duration) -> Result<()> {
    // Its unit reboots the box when this fails: only a trial boot that
    // stays unhealthy may fail. Anything else wrong is said, not acted on
    // (a box must never reboot in a loop over a file it cannot read).
    let trial = system(cfg).and_then(|sys| {
        let Some(sys) = sys else { return Ok(None) };
        let inst = installer(cfg, &sys)?;
        let state = inst.read_state()?;
        let trial = state
            .pending
            .as_ref()
            .is_some_and(|p| p.step == Step::Installed && p.slot == sys.booted);
        Ok(trial.then_some((sys, inst)))
    });
    let (sys, inst) = match trial {
        Ok(Some(t)) => t,
        Ok(None) => {
            println!("not a trial boot: nothing to wait for");
            return Ok(());
        }
        Err(e) => {
            eprintln!("cannot tell whether this is a trial boot ({e:#}); not holding the boot");
            return Ok(());
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let until = std::time::Instant::now() + deadline;
    let mut good = 0;
    let mut why = String::from("never checked");
    while std::time::Instant::now() < until {
        match rt.block_on(healthy_now(cfg)) {
            Ok(()) => good += 1,
            Err(w) => {
                good = 0;
                why = w;
            }
        }
        if good >= 3 {
            let v = inst.commit(Timestamp::now())?;
            println!(
                "OS {} in slot {} passed its health checks: kept",
                v.map_or("-".into(), |v| v.to_string()),
                sys.booted
            );
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    bail!(
        "OS {} in slot {} did not pass its health checks within {}: {why}",
        sys.version,
        sys.booted,
        humantime::format_duration(deadline)
    )
}

/// For the admin page, the status and reports.
pub fn view(cfg: &Config) -> Option<OsUpdateView> {
    let sys = system(cfg).ok().flatten()?;
    let state = os::read_state(&cfg.update.os.state_dir).unwrap_or_default();
    Some(OsUpdateView {
        running: sys.version.to_string(),
        recipe: sys.recipe,
        slot: sys.booted.letter().to_string(),
        pending: state.pending.as_ref().map(|p| {
            format!(
                "{} in slot {} ({})",
                p.version,
                p.slot,
                if p.step == Step::Installed {
                    "installed, waits for a reboot"
                } else {
                    "being written"
                }
            )
        }),
        bad: state.bad.iter().map(|v| v.to_string()).collect(),
        last_result: state.last.as_ref().map(crate::update::result_view),
        available: None,
    })
}

/// `appliance os status`.
pub fn status(cfg: &Config, json: bool) -> Result<()> {
    let Some(v) = view(cfg) else {
        bail!("this system was not booted from an A/B image: no OS updates here");
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("OS {} ({}), slot {}", v.running, v.recipe, v.slot.to_uppercase());
    if let Some(p) = &v.pending {
        println!("pending: {p}");
    }
    if !v.bad.is_empty() {
        println!("marked bad (never retried): {}", v.bad.join(", "));
    }
    if let Some(l) = &v.last_result {
        println!("last result: OS {} {} {}", l.version, l.result, l.reason);
    }
    Ok(())
}

/// The supervisor's part, after each update check: start the root unit
/// that writes the other slot, or the reboot into an installed one, when
/// `allowed` (inside the window, no meeting, or an operator's "now").
pub async fn step(
    cfg: &Config,
    shared: &Arc<Shared>,
    verified: &Verified,
    allowed: bool,
    asked: bool,
    started: &mut Option<(String, std::time::Instant)>,
) -> Option<Duration> {
    let sys = match system(cfg) {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            log::warn!("os: {e:#}");
            return None;
        }
    };
    let state = os::read_state(&cfg.update.os.state_dir).unwrap_or_default();
    let p = os_plan(cfg, &sys, verified, &state, Timestamp::now());
    let available = match &p.decision {
        Decision::Install { release, .. } | Decision::Waiting { release, .. } => Some(release.version.to_string()),
        Decision::UpToDate => None,
    };
    let mut view = view(cfg);
    if let Some(v) = view.as_mut() {
        v.available = available;
    }
    if let Some(u) = lock(&shared.update).as_mut() {
        u.os = view;
    }
    let unit = match (&state.pending, &p.decision) {
        (Some(pd), _) if pd.step == Step::Installed && pd.slot != sys.booted => REBOOT_UNIT,
        // Being written: look again soon for the reboot.
        (Some(pd), _) if pd.step == Step::Writing => return Some(Duration::from_secs(30)),
        (Some(_), _) => return None,
        (None, Decision::Install { .. }) if unit_running(UPDATE_UNIT).await => {
            // Still downloading (nothing is pending before the write):
            // look again soon for the reboot.
            return Some(Duration::from_secs(30));
        }
        (None, Decision::Install { release, .. }) => {
            // A failed install is tried again at the next regular check
            // (or when an operator asks), not every half minute: each try
            // downloads the whole image.
            let failed_lately = state.last.as_ref().is_some_and(|l| {
                l.version == release.version
                    && l.result == appliance_update::install::Result_::Failed
                    && Timestamp::now().duration_since(l.at).unsigned_abs() < cfg.update.check_interval
            });
            // Started lately and nothing came of it (the unit failed before
            // it could record why): the same rule.
            let started_lately = started
                .as_ref()
                .is_some_and(|(v, at)| *v == release.version.to_string() && at.elapsed() < cfg.update.check_interval);
            if (failed_lately || started_lately) && !asked {
                log::info!(
                    "os: OS {} failed here lately; tried again at the next check",
                    release.version
                );
                return None;
            }
            *started = Some((release.version.to_string(), std::time::Instant::now()));
            UPDATE_UNIT
        }
        (None, _) => return None,
    };
    if !allowed {
        log::info!("os: {unit} waits for the window and for no meeting to run");
        return Some(Duration::from_secs(60));
    }
    log::info!("os: starting {unit}");
    match appliance_services::systemd::Systemd::connect().await {
        Ok(sd) => {
            use appliance_services::systemd::ServiceManager;
            if let Err(e) = sd.start(unit).await {
                log::warn!("os: starting {unit}: {e}");
            }
        }
        Err(e) => log::warn!("os: {e}"),
    }
    // Look again soon: the unit's result, then the reboot.
    Some(Duration::from_secs(30))
}

/// Whether systemd is running `unit` now (a oneshot is "activating"
/// until it is done).
async fn unit_running(unit: &str) -> bool {
    use appliance_services::systemd::ServiceManager;
    match appliance_services::systemd::Systemd::connect().await {
        Ok(sd) => sd
            .status(unit)
            .await
            .is_ok_and(|s| matches!(s.active_state.as_str(), "activating" | "active" | "reloading")),
        Err(_) => false,
    }
}

/// The config keys of OS updates, with the image's paths as defaults.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OsConfig {
    /// Root's directory: trusted metadata, downloads, `state.json`.
    pub state_dir: PathBuf,
    /// Where the ESP is mounted.
    pub esp: PathBuf,
    /// What the initramfs left: `boot-disk`, `boot-slot`.
    pub run_dir: PathBuf,
    /// The image's `build-info` (recipe, OS version).
    pub build_info: PathBuf,
    /// How long a trial boot has to pass its health checks.
    #[serde(with = "appliance_monitor::serde_duration")]
    pub health_deadline: Duration,
}

impl Default for OsConfig {
    fn default() -> Self {
        OsConfig {
            state_dir: "/var/lib/appliance-os".into(),
            esp: "/efi".into(),
            run_dir: "/run/appliance".into(),
            build_info: "/usr/share/appliance/build-info".into(),
            health_deadline: Duration::from_secs(600),
        }
    }
}
