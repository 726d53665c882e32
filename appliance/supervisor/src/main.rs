//! `appliance`: the supervisor daemon and the CLI on the box.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad config or usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use appliance_monitor::collector::Collector;
use appliance_monitor::{Roots, StatVfs, profile};
use appliance_supervisor::config::{self, Config};
use appliance_supervisor::{control, logging, os_update, run, state, update};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "appliance",
    version,
    about = "Supervisor of a city node running BigBlueButton"
)]
struct Cli {
    /// The config file.
    #[arg(long, global = true, env = "APPLIANCE_CONFIG", default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the supervisor in the foreground.
    Run {
        /// Run even as root. The supervisor needs no privileges (the image
        /// runs it as user appliance); root is refused unless asked for.
        #[arg(long, env = "APPLIANCE_ALLOW_ROOT")]
        allow_root: bool,
    },
    /// Show node, version, uptime, hardware, sensors and alerts.
    Status {
        /// Print the status document as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Hardware profiles.
    Hw {
        #[command(subcommand)]
        command: HwCommand,
    },
    /// SSH for operators (turned on and off on the admin page's Settings).
    Ssh {
        #[command(subcommand)]
        command: SshCommand,
    },
    /// The recipe's services: list them, or restart or reset one.
    Services {
        #[command(subcommand)]
        command: Option<ServicesCommand>,
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The console screen for tty1 and the serial port: node, firmware,
    /// addresses, admin URL, certificate fingerprint, setup code, health.
    /// Redraws when something changes.
    Console {
        /// Print the screen once and exit.
        #[arg(long)]
        once: bool,
        /// Add a QR code of the admin URL (for a screen with room for it).
        #[arg(long)]
        qr: bool,
    },
    /// Enroll this node with global ops, using a token from
    /// `appliance-ops token create`.
    Enroll {
        /// Ops's URL (the token names it too; they must agree).
        #[arg(long)]
        ops: String,
        #[arg(long)]
        token: String,
        /// Enroll again although already enrolled.
        #[arg(long)]
        force: bool,
    },
    /// Member organisations: each calls BBB through the node's gateway
    /// with its own secret, within its limits.
    Members {
        #[command(subcommand)]
        command: MembersCommand,
    },
    /// First-boot duties, run as root before BBB starts: replace BBB's
    /// default shared secret and write it where the supervisor reads it.
    Firstboot,
    /// Signed updates of the supervisor.
    Update {
        #[command(subcommand)]
        command: UpdateCommand,
    },
    /// As root, on a box started from the USB stick: write the city node
    /// to an internal disk (asks which, and for an explicit confirmation,
    /// on the terminal), then reboot from it.
    Install {
        /// The disk to install to (e.g. vda), without asking; needs --yes.
        #[arg(long, requires = "yes")]
        target: Option<String>,
        /// Confirms --target: everything on it is erased.
        #[arg(long)]
        yes: bool,
        /// Do not reboot afterwards.
        #[arg(long)]
        no_reboot: bool,
    },
    /// OS updates of an A/B image (the root slots): the root side, run by
    /// the image's units; the supervisor decides when.
    Os {
        #[command(subcommand)]
        command: OsCommand,
    },
}

/// A member's limits on the command line; each left out is "no limit"
/// on add and "unchanged" on set.
#[derive(clap::Args, Debug, Default)]
struct LimitArgs {
    /// Participants in all its meetings at once.
    #[arg(long)]
    participants: Option<u32>,
    /// Meetings (rooms) at once.
    #[arg(long)]
    rooms: Option<u32>,
    /// Longest meeting, e.g. 90m or 4h.
    #[arg(long)]
    duration: Option<humantime::Duration>,
}

#[derive(Subcommand)]
enum MembersCommand {
    /// List the members, their limits and their secrets' ids.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a member; prints its first secret, once.
    Add {
        /// Short name: lower-case letters, digits and dashes (e.g. coop-a).
        slug: String,
        /// The organisation's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Change a member's name or limits.
    Set {
        slug: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Drop these limits (participants, rooms, duration).
        #[arg(long, value_delimiter = ',')]
        unlimited: Vec<String>,
    },
    /// A new secret for a member, printed once; its current secrets keep
    /// working for the overlap.
    RotateSecret {
        slug: String,
        /// How long the current secrets keep working (0s: stop at once).
        #[arg(long, default_value = "7d")]
        overlap: humantime::Duration,
    },
    /// Stop one of a member's secrets at once.
    RevokeSecret { slug: String, id: u32 },
    /// Remove a member: its secrets stop working at once.
    Remove {
        slug: String,
        /// Confirms the removal.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum OsCommand {
    /// The OS this box runs, its slot, an update under way, the last result.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// As root (appliance-os-update.service): verify the repository,
    /// download the OS release for this node and write it to the other
    /// slot with a boot entry that has three tries.
    Apply,
    /// As root, at every boot: record an OS update that fell back to this
    /// slot, or a write that was cut short.
    BootCheck,
    /// As root, before boot-complete.target: on a trial boot, wait for the
    /// supervisor's health checks and keep the slot; fail after the
    /// deadline (the unit then reboots).
    WaitHealthy {
        /// Overrides [update.os] health_deadline.
        #[arg(long)]
        deadline: Option<humantime::Duration>,
    },
    /// Prints a slot's boot entry (image/build writes the factory one with
    /// this, so the build and OS updates write the same format).
    BootEntry {
        #[arg(long)]
        recipe: String,
        #[arg(long)]
        version: semver::Version,
        #[arg(long)]
        slot: String,
        #[arg(long)]
        generation: u64,
        #[arg(long)]
        roothash: String,
        #[arg(long)]
        hash_offset: u64,
    },
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// Verify the repository and say what would be installed.
    Check {
        /// A copy of the repository (a USB stick): the directory holding
        /// metadata/ and targets/.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Accept expired metadata (only with --from; signatures, hashes
        /// and the version floor still hold).
        #[arg(long, requires = "from")]
        allow_expired: bool,
        #[arg(long)]
        json: bool,
    },
    /// Download, verify, unpack and switch to the release for this node.
    Apply {
        #[arg(long)]
        from: Option<PathBuf>,
        #[arg(long, requires = "from")]
        allow_expired: bool,
        /// Install now, outside the maintenance window.
        #[arg(long)]
        now: bool,
    },
    /// Installed versions, the version on probation, the last result.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Return to the previous version and mark the one on probation bad.
    Rollback {
        #[arg(long, default_value = "rolled back by an operator")]
        reason: String,
        /// For the unit's OnFailure=: exit 1 when nothing is on probation.
        #[arg(long)]
        after_failure: bool,
    },
    /// For the unit's ExecStartPre=: count the start of a version on
    /// probation, and switch back once it started too often.
    BeforeStart,
}

#[derive(Subcommand)]
enum ServicesCommand {
    /// Restart a service now, then the services that depend on it.
    Restart { name: String },
    /// Clear a service's crash-loop state so the supervisor manages it again.
    Reset { name: String },
}

#[derive(Subcommand)]
enum SshCommand {
    /// Whether SSH is on, and the keys, by fingerprint.
    Status,
    /// The keys sshd may accept for USER (its AuthorizedKeysCommand): none
    /// while SSH is off, and none for anyone but root.
    AuthorizedKeys { user: String },
}

#[derive(Subcommand)]
enum HwCommand {
    /// Show which hardware profile matches this machine, and why.
    Detect,
    /// Apply the profile's [boot] section: load its kernel modules and
    /// write its kernel parameters into the boot entries (root; run by
    /// appliance-hw-boot.service at every start).
    Boot,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no config: image/build runs it on the build host.
    if let Command::Os {
        command:
            OsCommand::BootEntry {
                recipe,
                version,
                slot,
                generation,
                roothash,
                hash_offset,
            },
    } = &cli.command
    {
        let Some(slot) = appliance_update::os::Slot::parse(slot) else {
            eprintln!("error: --slot must be a or b");
            return ExitCode::from(2);
        };
        print!(
            "{}",
            appliance_update::os::entry_text(recipe, version, slot, *generation, roothash, *hash_offset, &[])
        );
        return ExitCode::SUCCESS;
    }
    // Before anything is read or written.
    if let Command::Run { allow_root: false } = cli.command
        && nix::unistd::geteuid().is_root()
    {
        eprintln!(
            "error: appliance run refuses to run as root: it needs no privileges. Run it as an unprivileged user (scripts/dev does), or pass --allow-root."
        );
        return ExitCode::from(2);
    }
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Run { .. } => {
            logging::init(cfg.log_level());
            run::run(cfg)
        }
        Command::Status { json } => status(&cfg.control_socket(), json),
        Command::Hw {
            command: HwCommand::Detect,
        } => hw_detect(&cfg),
        Command::Hw {
            command: HwCommand::Boot,
        } => hw_boot(&cfg),
        Command::Ssh {
            command: SshCommand::AuthorizedKeys { user },
        } => {
            use appliance_supervisor::ssh;
            ssh::load(&ssh::state_path(&cfg.node.state_dir))
                .map(|s| print!("{}", s.authorized_keys(&user)))
                .map_err(Into::into)
        }
        Command::Ssh {
            command: SshCommand::Status,
        } => {
            let v = appliance_supervisor::ssh::view(&cfg.node.state_dir);
            println!(
                "ssh       {}{}",
                if v.enabled { "on" } else { "off" },
                if v.available {
                    ""
                } else {
                    " (no SSH server the node manages here)"
                }
            );
            for k in v.keys {
                println!(
                    "key       {} {} {} (added by {})",
                    k.fingerprint, k.kind, k.comment, k.added_by
                );
            }
            Ok(())
        }
        Command::Services { command, json } => services(&cfg.control_socket(), command, json),
        Command::Firstboot => firstboot(&cfg),
        Command::Console { once, qr } => console(&cfg, once, qr),
        Command::Enroll { ops, token, force } => enroll(&cfg.control_socket(), ops, token, force),
        Command::Members { command } => members(&cfg.control_socket(), command),
        Command::Update { command } => {
            logging::init(cfg.log_level());
            if let Err(e) = update::act_as_state_owner(&cfg) {
                eprintln!("error: {e:#}");
                return ExitCode::from(1);
            }
            match command {
                UpdateCommand::Check {
                    from,
                    allow_expired,
                    json,
                } => update::check(&cfg, from.as_deref(), allow_expired, json),
                UpdateCommand::Apply {
                    from,
                    allow_expired,
                    now,
                } => update::apply(&cfg, from.as_deref(), now, allow_expired),
                UpdateCommand::Status { json } => update::status(&cfg, json),
                UpdateCommand::Rollback { reason, after_failure } => update::rollback(&cfg, &reason, after_failure),
                UpdateCommand::BeforeStart => update::before_start(&cfg),
            }
        }
        Command::Install { target, yes, no_reboot } => install(&cfg, target, yes, no_reboot),
        Command::Os { command } => {
            logging::init(cfg.log_level());
            match command {
                OsCommand::Status { json } => os_update::status(&cfg, json),
                OsCommand::Apply => os_update::apply(&cfg),
                OsCommand::BootCheck => os_update::boot_check(&cfg),
                OsCommand::WaitHealthy { deadline } => {
                    os_update::wait_healthy(&cfg, deadline.map_or(cfg.update.os.health_deadline, Into::into))
                }
                OsCommand::BootEntry { .. } => unreachable!("handled before the config is read"),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn status(socket: &Path, json: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = rt.block_on(control::get_body(socket, "/v1/status"))?;
    if json {
        println!("{}", String::from_utf8_lossy(&body));
    } else {
        let st: appliance_api::Status = serde_json::from_slice(&body)?;
        print!("{}", st.to_text());
    }
    Ok(())
}

fn services(socket: &Path, command: Option<ServicesCommand>, json: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (method, uri) = match &command {
        None => ("GET", "/v1/services".to_string()),
        Some(ServicesCommand::Restart { name }) => ("POST", format!("/v1/services/{}/restart", path_segment(name))),
        Some(ServicesCommand::Reset { name }) => ("POST", format!("/v1/services/{}/reset", path_segment(name))),
    };
    let body = rt.block_on(control::request(socket, method, &uri))?;
    if command.is_some() || json {
        print!("{}", String::from_utf8_lossy(&body));
        if json {
            println!();
        }
    } else {
        let sv: appliance_api::ServicesStatus = serde_json::from_slice(&body)?;
        print!("{}", appliance_api::services_table(&sv));
    }
    Ok(())
}

/// Service names are letters, digits and `-_.@`; anything else is
/// percent-encoded so it cannot change the request path.
fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn members(socket: &Path, command: MembersCommand) -> anyhow::Result<()> {
    use appliance_members::{Action, Limits, MemberView, Outcome};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let minutes = |d: humantime::Duration| -> anyhow::Result<u32> {
        let m = d.as_secs().div_ceil(60);
        u32::try_from(m).map_err(|_| anyhow::anyhow!("--duration {d} is too long"))
    };
    let action = match command {
        MembersCommand::List { json } => {
            let body = rt.block_on(control::get_body(socket, "/v1/members"))?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let list: Vec<MemberView> = serde_json::from_slice(&body)?;
            if list.is_empty() {
                println!("no members: BBB's shared secret works as before (docs/operator-guide.md, \"Members\")");
            }
            let lim = |v: Option<u32>| v.map_or("-".to_string(), |n| n.to_string());
            for m in list {
                let secrets: Vec<String> = m
                    .secrets
                    .iter()
                    .map(|s| match s.expires {
                        Some(e) => format!(
                            "{} (until {})",
                            s.id,
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.max(0) as u64)
                            )
                        ),
                        None => s.id.to_string(),
                    })
                    .collect();
                println!(
                    "{:<20} {:<30} participants {:>5}  rooms {:>4}  minutes {:>5}  secrets {}",
                    m.slug,
                    m.name,
                    lim(m.limits.participants),
                    lim(m.limits.rooms),
                    lim(m.limits.duration_minutes),
                    secrets.join(", ")
                );
            }
            return Ok(());
        }
        MembersCommand::Add { slug, name, limits } => Action::Add {
            slug,
            name,
            limits: Limits {
                participants: limits.participants,
                rooms: limits.rooms,
                duration_minutes: limits.duration.map(minutes).transpose()?,
            },
        },
        MembersCommand::Set {
            slug,
            name,
            limits,
            unlimited,
        } => {
            let views: Vec<MemberView> =
                serde_json::from_slice(&rt.block_on(control::get_body(socket, "/v1/members"))?)?;
            let current = views
                .iter()
                .find(|m| m.slug == slug)
                .ok_or_else(|| anyhow::anyhow!("no member {slug:?}"))?
                .limits;
            let mut l = Limits {
                participants: limits.participants.or(current.participants),
                rooms: limits.rooms.or(current.rooms),
                duration_minutes: limits.duration.map(minutes).transpose()?.or(current.duration_minutes),
            };
            for u in &unlimited {
                match u.as_str() {
                    "participants" => l.participants = None,
                    "rooms" => l.rooms = None,
                    "duration" => l.duration_minutes = None,
                    other => anyhow::bail!("--unlimited {other:?}: participants, rooms or duration"),
                }
            }
            Action::Set {
                slug,
                name,
                limits: Some(l),
            }
        }
        MembersCommand::RotateSecret { slug, overlap } => Action::RotateSecret {
            slug,
            overlap_secs: i64::try_from(overlap.as_secs()).unwrap_or(i64::MAX),
        },
        MembersCommand::RevokeSecret { slug, id } => Action::RevokeSecret { slug, id },
        MembersCommand::Remove { slug, yes } => {
            if !yes {
                anyhow::bail!("removing {slug} stops its front end at once; add --yes to confirm");
            }
            Action::Remove { slug }
        }
    };
    let body = serde_json::to_vec(&action)?;
    let out: Outcome =
        serde_json::from_slice(&rt.block_on(control::request_with(socket, "POST", "/v1/members", body))?)?;
    println!("{}", out.message);
    if let Some(secret) = out.secret {
        println!("secret: {secret}");
    }
    Ok(())
}

fn enroll(socket: &Path, ops: String, token: String, force: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = serde_json::to_vec(&serde_json::json!({ "ops": ops, "token": token, "force": force }))?;
    let out = rt.block_on(control::request_with(socket, "POST", "/v1/enroll", body))?;
    print!("{}", String::from_utf8_lossy(&out));
    Ok(())
}

fn console(cfg: &Config, once: bool, with_qr: bool) -> anyhow::Result<()> {
    use appliance_supervisor::console;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let socket = cfg.control_socket();
    let screen = || {
        let info = rt.block_on(control::get_body(&socket, "/v1/console"));
        let (info, err) = match info {
            Ok(body) => (serde_json::from_slice::<console::Info>(&body).ok(), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let ifaces = console::interfaces(&cfg.monitor.sysfs_root);
        console::render_with(
            info.as_ref(),
            &cfg.node_name(),
            env!("CARGO_PKG_VERSION"),
            &ifaces,
            err.as_deref(),
            with_qr,
        )
    };
    if once {
        print!("{}", screen());
        return Ok(());
    }
    let mut last = String::new();
    loop {
        let s = screen();
        if s != last {
            // Clear the screen and draw from the top left.
            print!("\x1b[H\x1b[2J{s}");
            use std::io::Write;
            let _ = std::io::stdout().flush();
            last = s;
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

fn firstboot(cfg: &Config) -> anyhow::Result<()> {
    let Some(b) = &cfg.bbb else {
        println!("nothing to do: no [bbb] section in {}", cfg.path.display());
        return Ok(());
    };
    let msg = appliance_supervisor::firstboot::run(&b.properties, b.secret_file.as_deref())?;
    println!("{msg}");
    Ok(())
}

fn install(cfg: &Config, target: Option<String>, yes: bool, no_reboot: bool) -> anyhow::Result<()> {
    use appliance_supervisor::installer;
    let run_dir = &cfg.update.os.run_dir;
    let read = |f: &str| std::fs::read_to_string(run_dir.join(f)).map(|s| s.trim().to_string());
    let (Ok(boot_disk), Ok(slot)) = (read("boot-disk"), read("boot-slot")) else {
        anyhow::bail!("this system was not started from a city node image: nothing to install from");
    };
    // The image's partitions up to the end of slot B, and 1 GiB of data.
    let sys = Path::new("/sys/block").join(&boot_disk);
    let part3 = std::fs::read_dir(&sys)?
        .flatten()
        .find(|e| std::fs::read_to_string(e.path().join("partition")).is_ok_and(|n| n.trim() == "3"))
        .ok_or_else(|| anyhow::anyhow!("{boot_disk} has no partition 3"))?
        .path();
    let num = |f: &str| {
        std::fs::read_to_string(part3.join(f))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let min_bytes = (num("start") + num("size")) * 512 + (1 << 30);
    let disks = installer::candidates(Path::new("/sys/block"), &boot_disk, min_bytes);
    let chosen = match target {
        Some(t) if yes => {
            if !disks.iter().any(|d| d.name == t) {
                anyhow::bail!(
                    "{t} cannot take the image (disks that can: {})",
                    disks.iter().map(|d| d.name.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            Some(t)
        }
        Some(_) => unreachable!("clap requires --yes with --target"),
        None => {
            let stdin = std::io::stdin();
            installer::dialogue(&disks, &mut stdin.lock(), &mut std::io::stdout())?
        }
    };
    let Some(target) = chosen else {
        // The console screen takes over this terminal (its unit waits for
        // this flag to go).
        let _ = std::fs::remove_file(run_dir.join("installer"));
        return Ok(());
    };
    let lock = std::fs::File::create(run_dir.join("install.lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| anyhow::anyhow!("an installation is already under way (on the other console)"))?;
    let started = std::time::Instant::now();
    println!("Installing to {target}. This takes a few minutes; do not switch the box off.");
    installer::install(
        &boot_disk,
        &slot,
        &target,
        Path::new("/usr/share/factory/var"),
        &mut |s: &str| println!("{s}"),
    )?;
    println!(
        "Done in {:.0} s. Remove the USB stick: the box now starts from {target}.",
        started.elapsed().as_secs_f64()
    );
    if !no_reboot {
        println!("Rebooting in 10 seconds.");
        std::thread::sleep(std::time::Duration::from_secs(10));
        std::process::Command::new("systemctl").arg("reboot").status()?;
    }
    Ok(())
}

/// Loaded, or built into the kernel (a built-in module without
/// parameters has no /sys/module entry). sysfs and modules.builtin name a
/// module with `_` where its file name may have `-`.
fn module_loaded(cfg: &Config, name: &str) -> bool {
    let name = name.replace('-', "_");
    if cfg.monitor.sysfs_root.join("module").join(&name).exists() {
        return true;
    }
    let release = std::fs::read_to_string(cfg.monitor.procfs_root.join("sys/kernel/osrelease")).unwrap_or_default();
    std::fs::read_to_string(Path::new("/lib/modules").join(release.trim()).join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Path::new(l).file_name()?.to_str()?.strip_suffix(".ko"))
        .any(|m| m.replace('-', "_") == name)
}

/// The command line this kernel was started with.
fn running_cmdline(cfg: &Config) -> String {
    std::fs::read_to_string(cfg.monitor.procfs_root.join("cmdline")).unwrap_or_default()
}

fn hw_boot(cfg: &Config) -> anyhow::Result<()> {
    use anyhow::Context;
    let (p, d) = cfg.detect_profile()?;
    println!("hardware profile {}: {}", p.name, d.reason);
    let mut failed = Vec::new();
    for m in &p.boot.modules {
        let out = std::process::Command::new("modprobe")
            .arg("--")
            .arg(m)
            .output()
            .context("running modprobe")?;
        if out.status.success() {
            println!("module {m}: loaded");
        } else {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            println!("module {m}: NOT loaded: {why}");
            failed.push(m.as_str());
        }
    }
    let params = &p.boot.kernel_params;
    if !params.is_empty() {
        let missing = profile::missing_params(params, &running_cmdline(cfg));
        match os_update::system(cfg)? {
            Some(sys) => {
                let changed = os_update::installer(cfg, &sys)?.add_kernel_params(params)?;
                for e in &changed {
                    println!("boot entry {e}: kernel parameters added");
                }
                if missing.is_empty() {
                    println!("kernel parameters {}: in effect", params.join(" "));
                } else {
                    println!(
                        "kernel parameters {}: in the boot entries; in effect from the next start",
                        missing.join(" ")
                    );
                }
            }
            None if missing.is_empty() => println!("kernel parameters {}: in effect", params.join(" ")),
            None => println!(
                "kernel parameters {}: not in effect, and this is not a city node image: add them to the boot loader's command line",
                missing.join(" ")
            ),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "the hardware profile {} needs kernel module(s) {} that could not be loaded: its sensors are not watched",
            p.name,
            failed.join(", ")
        );
    }
    Ok(())
}

fn hw_detect(cfg: &Config) -> anyhow::Result<()> {
    let (p, d) = cfg.detect_profile()?;
    let dmi: Vec<(String, String)> = d.dmi.clone().into_iter().collect();
    println!("profile   {}", p.name);
    println!("          {}", p.description);
    println!("reason    {}", d.reason);
    for (k, v) in &dmi {
        println!("dmi       {k} = {v:?}");
    }
    if dmi.is_empty() {
        println!(
            "dmi       none readable under {}",
            cfg.monitor.sysfs_root.join("class/dmi/id").display()
        );
    }
    let others: Vec<&str> = cfg
        .profiles
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| *n != p.name)
        .collect();
    println!("others    {}", others.join(", "));
    for m in &p.boot.modules {
        let state = if module_loaded(cfg, m) {
            "loaded"
        } else {
            "not loaded (appliance-hw-boot.service loads it at start)"
        };
        println!("module    {m}: {state}");
    }
    let cmdline = running_cmdline(cfg);
    let missing = profile::missing_params(&p.boot.kernel_params, &cmdline);
    for k in &p.boot.kernel_params {
        let state = if missing.contains(&k.as_str()) {
            "not in effect yet (appliance-hw-boot.service writes it into the boot entries; in effect from the next start)"
        } else {
            "in effect"
        };
        println!("kernel    {k}: {state}");
    }
    let mut c = Collector::new(
        Roots {
            sys: cfg.monitor.sysfs_root.clone(),
            proc: cfg.monitor.procfs_root.clone(),
        },
        vec![],
        Box::new(StatVfs),
    );
    let snap = c.sample(0.0, 0.0);
    let sensors = state::sensors(p, &snap, &[]);
    if sensors.is_empty() {
        println!("sensors   none found");
    }
    for s in sensors {
        let w = s.warn.map(|v| format!("{v}")).unwrap_or_else(|| "-".into());
        let c = s.critical.map(|v| format!("{v}")).unwrap_or_else(|| "-".into());
        println!("sensor    {} {:.1} °C (warn {w}, critical {c})", s.sensor, s.celsius);
    }
    for r in p.sensors.iter().filter(|r| r.required) {
        if !snap.temperatures.iter().any(|t| r.matches(&t.chip, &t.label)) {
            println!("missing   {}/{} (required by the profile)", r.chip, r.label);
        }
    }
    Ok(())
}
