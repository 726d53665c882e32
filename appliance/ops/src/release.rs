//! `appliance-ops release ...`: the update repository, for global ops.
//!
//! These commands need no ops config: `keygen` and `sign-root` run on an
//! offline machine that holds the root keys; the others on the machine
//! holding the online keys (targets, snapshot, timestamp) and the
//! repository directory. See docs/updates.md for the runbook.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use appliance_update::manifest::{Release, Wave};
use appliance_update::publish::{Published, Publisher, RootSpec, generate_key, public_key_path, role, sign_root};
use clap::Subcommand;
use jiff::{SignedDuration, Timestamp};
use semver::Version;

use crate::Usage;

#[derive(Subcommand)]
pub enum ReleaseCommand {
    /// A new Ed25519 key (PKCS#8, 0600) and its public half beside it.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Signs a root (offline): version 1, or the next after --previous,
    /// then signed by the previous root's keys too.
    SignRoot {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        previous: Option<PathBuf>,
        /// Public (or private) key files of the root role.
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        root_threshold: u64,
        #[arg(long = "targets-key", required = true)]
        targets_keys: Vec<PathBuf>,
        #[arg(long, default_value_t = 1)]
        targets_threshold: u64,
        #[arg(long = "snapshot-key", required = true)]
        snapshot_keys: Vec<PathBuf>,
        #[arg(long = "timestamp-key", required = true)]
        timestamp_keys: Vec<PathBuf>,
        /// How long the root holds (e.g. 365d).
        #[arg(long, default_value = "365d")]
        expires: String,
        /// Private root keys at hand (new and, when rotating, previous).
        #[arg(long = "sign", required = true)]
        signers: Vec<PathBuf>,
    },
    /// Starts a repository from a signed root.
    Init {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        root: PathBuf,
        /// Online keys (targets, snapshot, timestamp).
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
    },
    /// Publishes a release of the supervisor.
    Add {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        version: Version,
        #[arg(long, default_value = "stable")]
        channel: String,
        /// The supervisor as a .tar.gz holding `appliance`.
        #[arg(long)]
        tarball: PathBuf,
        /// The oldest version it may be installed over.
        #[arg(long)]
        min_from: Option<Version>,
        /// START=PERCENT, e.g. 2026-12-01T02:00:00Z=10; repeat for later
        /// waves. None: everyone at once.
        #[arg(long = "wave")]
        waves: Vec<String>,
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Publishes an OS image: the bundle `image/build RECIPE` writes
    /// beside the image (`target/images/RECIPE.os.tar`), for the nodes
    /// built from that recipe. Its os.json must name the recipe and version.
    AddOs {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long, default_value = "stable")]
        channel: String,
        #[arg(long)]
        min_from: Option<Version>,
        #[arg(long = "wave")]
        waves: Vec<String>,
        #[arg(long, default_value = "")]
        notes: String,
    },
    /// Sets (or clears) a channel's signed ceiling: nodes above it move
    /// down to the newest release at or below it.
    Ceiling {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        channel: String,
        #[arg(long, conflicts_with = "clear")]
        max_version: Option<Version>,
        #[arg(long)]
        clear: bool,
    },
    /// Re-signs the timestamp (a daily cron job); snapshot and targets too
    /// when they would expire within 14 days.
    Timestamp {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
    },
    /// Publishes a root made with `sign-root --previous` and re-signs the
    /// online roles with the given keys.
    RotateRoot {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        root: PathBuf,
    },
    /// What is published: releases, versions and expiry of each role.
    List {
        #[arg(long)]
        repo: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn parse_wave(s: &str) -> Result<Wave> {
    let (start, pct) = s.rsplit_once('=').ok_or_else(|| {
        Usage(format!(
            "--wave {s:?}: write START=PERCENT, e.g. 2026-12-01T02:00:00Z=10"
        ))
    })?;
    let start: Timestamp = start
        .parse()
        .map_err(|e| Usage(format!("--wave {s:?}: start {start:?}: {e}")))?;
    let fleet_percent: u8 = pct
        .trim_end_matches('%')
        .parse()
        .map_err(|_| Usage(format!("--wave {s:?}: percent {pct:?} is not 1 to 100")))?;
    Ok(Wave { start, fleet_percent })
}

fn print(p: &Published, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(p)?);
        return Ok(());
    }
    println!(
        "metadata: root v{}, targets v{}, snapshot v{}, timestamp v{}",
        p.versions.root, p.versions.targets, p.versions.snapshot, p.versions.timestamp
    );
    for (role, at) in &p.expires {
        println!("  {role:<9} expires {at}");
    }
    if p.manifest.releases.is_empty() {
        println!("no releases");
    }
    for r in &p.manifest.releases {
        let size = p.targets.get(&r.target).copied().unwrap_or(0);
        let waves = if r.waves.is_empty() {
            "everyone at once".to_string()
        } else {
            r.waves
                .iter()
                .map(|w| format!("{}% from {}", w.fleet_percent, w.start))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<10} {:<8} {:<32} {:>10} bytes  from {}  {}",
            r.version.to_string(),
            r.channel,
            r.target,
            size,
            r.min_from.as_ref().map_or("any".to_string(), |v| v.to_string()),
            waves
        );
    }
    for (recipe, releases) in &p.manifest.os {
        for r in releases {
            let size = p.targets.get(&r.target).copied().unwrap_or(0);
            println!(
                "OS {:<7} {:<10} {:<8} {:<32} {:>10} bytes",
                recipe,
                r.version.to_string(),
                r.channel,
                r.target,
                size
            );
        }
    }
    for (c, v) in &p.manifest.max_version {
        println!("channel {c}: signed ceiling {v}");
    }
    Ok(())
}

pub fn run(cmd: ReleaseCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(run_async(cmd))
}

async fn run_async(cmd: ReleaseCommand) -> Result<()> {
    match cmd {
        ReleaseCommand::Keygen { out } => {
            let id = generate_key(&out)?;
            println!("key {id}");
            println!(
                "private: {} (keep it where only its holders can read it)",
                out.display()
            );
            println!("public:  {}", public_key_path(&out).display());
            Ok(())
        }
        ReleaseCommand::SignRoot {
            out,
            previous,
            root_keys,
            root_threshold,
            targets_keys,
            targets_threshold,
            snapshot_keys,
            timestamp_keys,
            expires,
            signers,
        } => {
            let d = humantime::parse_duration(&expires).map_err(|e| Usage(format!("--expires {expires:?}: {e}")))?;
            let spec = RootSpec {
                root: role(&root_keys, root_threshold),
                targets: role(&targets_keys, targets_threshold),
                snapshot: role(&snapshot_keys, 1),
                timestamp: role(&timestamp_keys, 1),
                expires: Timestamp::now() + SignedDuration::try_from(d)?,
            };
            let prev = previous.as_deref().map(read).transpose()?;
            let bytes = sign_root(&spec, prev.as_deref(), &signers).await?;
            if out.exists() {
                bail!("{} exists; a root is never overwritten", out.display());
            }
            std::fs::write(&out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            println!(
                "root version {} written to {} ({} signatures)",
                v["signed"]["version"],
                out.display(),
                v["signatures"].as_array().map_or(0, |a| a.len())
            );
            Ok(())
        }
        ReleaseCommand::Init { repo, root, keys } => {
            let p = Publisher { dir: repo, keys }.init(&read(&root)?).await?;
            print(&p, false)
        }
        ReleaseCommand::Add {
            repo,
            keys,
            version,
            channel,
            tarball,
            min_from,
            waves,
            notes,
        } => {
            let waves = waves.iter().map(|w| parse_wave(w)).collect::<Result<Vec<_>>>()?;
            if !tarball.is_file() {
                return Err(Usage(format!("--tarball {}: not a file", tarball.display())).into());
            }
            let release = Release {
                target: format!("appliance-{version}.tar.gz"),
                version,
                channel,
                min_from,
                waves,
                notes,
            };
            let p = Publisher { dir: repo, keys }
                .add_release(release, &tarball, None)
                .await?;
            print(&p, false)
        }
        ReleaseCommand::AddOs {
            repo,
            keys,
            bundle,
            channel,
            min_from,
            waves,
            notes,
        } => {
            let waves = waves.iter().map(|w| parse_wave(w)).collect::<Result<Vec<_>>>()?;
            if !bundle.is_file() {
                return Err(Usage(format!("--bundle {}: not a file", bundle.display())).into());
            }
            let info = appliance_update::os::read_bundle_info(&bundle)?;
            let release = Release {
                target: format!("os-{}-{}.tar", info.recipe, info.version),
                version: info.version,
                channel,
                min_from,
                waves,
                notes,
            };
            let p = Publisher { dir: repo, keys }
                .add_os_release(&info.recipe, release, &bundle)
                .await?;
            print(&p, false)
        }
        ReleaseCommand::Ceiling {
            repo,
            keys,
            channel,
            max_version,
            clear,
        } => {
            if max_version.is_none() && !clear {
                return Err(Usage("give --max-version VERSION or --clear".into()).into());
            }
            let p = Publisher { dir: repo, keys }.set_ceiling(&channel, max_version).await?;
            print(&p, false)
        }
        ReleaseCommand::Timestamp { repo, keys } => {
            let p = Publisher { dir: repo, keys }.timestamp(Timestamp::now()).await?;
            print(&p, false)
        }
        ReleaseCommand::RotateRoot { repo, keys, root } => {
            let p = Publisher { dir: repo, keys }.rotate_root(&read(&root)?).await?;
            print(&p, false)
        }
        ReleaseCommand::List { repo, json } => {
            let p = Publisher {
                dir: repo,
                keys: vec![],
            }
            .list()
            .await?;
            print(&p, json)
        }
    }
}
