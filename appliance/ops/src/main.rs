//! `appliance-ops`: the global-ops program.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 bad config or usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use appliance_ops::store::{Store, utc};
use appliance_ops::{Config, OpsState};
use appliance_usage::Month;
use appliance_usage::Token;
use clap::{Parser, Subcommand};

mod release;

#[derive(Parser)]
#[command(
    name = "appliance-ops",
    version,
    about = "Global ops for city nodes: enrollment, usage reports, usage by member organisation"
)]
struct Cli {
    #[arg(
        long,
        global = true,
        env = "APPLIANCE_OPS_CONFIG",
        default_value = "/etc/appliance-ops/ops.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve enrollment and reports over HTTPS in the foreground.
    Serve,
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Every node: version, last report, health, enrolled since, refused reports.
    Nodes {
        /// The same as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Usage of one month, per node and member organisation.
    Usage {
        /// YYYY-MM (UTC).
        #[arg(long)]
        month: String,
        /// One CSV row per node and member.
        #[arg(long)]
        csv: bool,
    },
    /// Refuse a node's reports from now on.
    Revoke {
        #[arg(long)]
        node: String,
    },
    /// The signed update repository (needs no ops config).
    Release {
        #[command(subcommand)]
        command: release::ReleaseCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// A single-use token for a node; printed alone on the last line.
    Create {
        #[arg(long)]
        node: String,
        /// How long it stays valid (default from the config, 7d).
        #[arg(long)]
        expires: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    if let Command::Release { command } = cli.command {
        return match release::run(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                if e.downcast_ref::<Usage>().is_some() {
                    ExitCode::from(2)
                } else {
                    ExitCode::from(1)
                }
            }
        };
    }
    let cfg = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cli.command, cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// A usage mistake (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Opens the database; the state dir is ops's alone (0700) and the
/// database files are 0600: they hold every node's key and report.
fn open(cfg: &Config) -> Result<Store> {
    use std::os::unix::fs::PermissionsExt;
    let dir = &cfg.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("state_dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("state_dir {}", dir.display()))?;
    let store = Store::open(&cfg.db_path()).map_err(|e| anyhow::anyhow!("{}: {e}", cfg.db_path().display()))?;
    for suffix in ["", "-wal", "-shm"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", cfg.db_path().display()));
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .with_context(|| p.display().to_string())?;
        }
    }
    Ok(store)
}

/// Text a node sent (health, version, member names), as a terminal may
/// show it: control characters escaped, so none can move the cursor,
/// clear the screen or forge a line.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

fn run(cmd: Command, cfg: Config) -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cmd {
        Command::Release { .. } => unreachable!("handled before the config is read"),
        Command::Serve => serve(cfg),
        Command::Token {
            command: TokenCommand::Create { node, expires },
        } => {
            if node.is_empty()
                || node.len() > 64
                || !node.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(Usage(format!("--node {node:?}: use 1 to 64 letters, digits, - _ .")).into());
            }
            let ttl = match expires {
                Some(e) => humantime::parse_duration(&e).map_err(|err| Usage(format!("--expires {e:?}: {err}")))?,
                None => cfg.token_ttl,
            };
            let cert = cfg.certificate().context("ops certificate")?;
            let store = open(&cfg)?;
            let secret = store
                .create_token(&node, now(), ttl.as_secs() as i64)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let token = Token {
                v: 1,
                ops: cfg.public_url.clone(),
                fp: cert.fingerprint_sha256,
                node: node.clone(),
                secret,
            };
            println!(
                "enrollment token for node {node}, valid until {}, usable once:",
                utc(now() + ttl.as_secs() as i64)
            );
            println!("{}", token.encode());
            Ok(())
        }
        Command::Nodes { json } => {
            let store = open(&cfg)?;
            let nodes = store.nodes().map_err(|e| anyhow::anyhow!("{e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
                return Ok(());
            }
            println!(
                "{:<20} {:<10} {:<24} {:<24} {:<7} {:<8} {:<8} {:<33} HEALTH",
                "NODE", "VERSION", "ENROLLED", "LAST REPORT", "EPOCH", "REVOKED", "REFUSED", "ID"
            );
            for n in &nodes {
                println!(
                    "{:<20} {:<10} {:<24} {:<24} {:<7} {:<8} {:<8} {:<33} {}",
                    n.name,
                    printable(&n.version),
                    utc(n.enrolled),
                    n.last_report.map(utc).unwrap_or_else(|| "never".into()),
                    n.epoch,
                    if n.revoked { "yes" } else { "no" },
                    n.refusals,
                    n.id,
                    printable(n.health.as_deref().unwrap_or_default())
                );
            }
            for n in &nodes {
                let Some(u) = &n.update else { continue };
                let mut line = format!(
                    "update: node {} follows {} at rollout position {} of 10000",
                    n.name,
                    printable(&u.channel),
                    u.position
                );
                if let Some(p) = &u.probation {
                    line.push_str(&format!("; {} on probation", printable(p)));
                }
                if let Some(r) = &u.last_result {
                    line.push_str(&format!("; last update {}", printable(r)));
                }
                if let Some(e) = &u.error {
                    line.push_str(&format!("; problem: {}", printable(e)));
                }
                println!("{line}");
                if let Some(v) = &u.os_version {
                    let mut line = format!("os: node {} runs OS {}", n.name, printable(v));
                    if let Some(p) = &u.os_pending {
                        line.push_str(&format!("; pending {}", printable(p)));
                    }
                    if let Some(r) = &u.os_last_result {
                        line.push_str(&format!("; last OS update {}", printable(r)));
                    }
                    println!("{line}");
                }
            }
            for n in nodes.iter().filter(|n| n.refusals > 0) {
                println!(
                    "refused: node {} had {} report(s) refused; the last on {}: {}",
                    n.name,
                    n.refusals,
                    n.last_refusal_at.map(utc).unwrap_or_default(),
                    printable(n.last_refusal.as_deref().unwrap_or_default())
                );
            }
            Ok(())
        }
        Command::Usage { month, csv } => {
            let m = Month::parse(&month)
                .filter(|m| (1970..=9999).contains(&m.year))
                .ok_or_else(|| Usage(format!("--month {month:?}: expected YYYY-MM")))?;
            let store = open(&cfg)?;
            let usage = store.usage(m).map_err(|e| anyhow::anyhow!("{e}"))?;
            // A node whose stored rows cannot be summed is left out and
            // named; every other node's figures are exact.
            for (node, why) in &usage.left_out {
                eprintln!("warning: node {node} is left out of {month}: its stored figures cannot be summed ({why})");
            }
            let rows = usage.rows;
            if csv {
                println!(
                    "node,member,meetings,meeting_seconds,participant_seconds,peak_participants,longest_meeting_seconds"
                );
                for r in rows {
                    println!(
                        "{},{},{},{},{},{},{}",
                        csv_field(&r.node),
                        csv_field(&printable(&r.member)),
                        r.meetings,
                        r.meeting_seconds,
                        r.participant_seconds,
                        r.peak_participants,
                        r.longest_meeting_seconds
                    );
                }
            } else {
                println!("usage in {month} (UTC)");
                println!(
                    "{:<20} {:<24} {:>8} {:>16} {:>20} {:>6} {:>16}",
                    "NODE", "MEMBER", "MEETINGS", "MEETING-MINUTES", "PARTICIPANT-MINUTES", "PEAK", "LONGEST (MIN)"
                );
                for r in rows {
                    println!(
                        "{:<20} {:<24} {:>8} {:>16.1} {:>20.1} {:>6} {:>16.1}",
                        r.node,
                        printable(&r.member),
                        r.meetings,
                        r.meeting_seconds as f64 / 60.0,
                        r.participant_seconds as f64 / 60.0,
                        r.peak_participants,
                        r.longest_meeting_seconds as f64 / 60.0
                    );
                }
                for (node, from, to, reason) in store.gaps(m).map_err(|e| anyhow::anyhow!("{e}"))? {
                    println!(
                        "gap: node {node} could not count usage from {} to {} ({})",
                        utc(from),
                        utc(to),
                        reason.describe()
                    );
                }
                for (node, why) in &usage.left_out {
                    println!("left out: node {node}: its stored figures cannot be summed ({why})");
                }
            }
            Ok(())
        }
        Command::Revoke { node } => {
            let store = open(&cfg)?;
            if !store.revoke(&node).map_err(|e| anyhow::anyhow!("{e}"))? {
                bail!("no node named {node:?}");
            }
            println!("node {node} revoked: its reports are refused from now on");
            Ok(())
        }
    }
}

/// CSV quoting for names that contain a comma or a quote.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn serve(cfg: Config) -> Result<()> {
    let cert = cfg.certificate().context("ops certificate")?;
    log::info!("ops certificate SHA-256 fingerprint {}", cert.fingerprint_sha256);
    let store = open(&cfg)?;
    let listener =
        std::net::TcpListener::bind(cfg.listen).with_context(|| format!("listen {}: cannot listen", cfg.listen))?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let tls = appliance_certs::server::tls_from_files(&cert.cert_path, &cert.key_path)
            .map_err(|e| anyhow::anyhow!("ops certificate: {e}"))?;
        let app = appliance_ops::router(
            OpsState {
                store: Arc::new(Mutex::new(store)),
                report_interval: cfg.report_interval,
                limits: cfg.limits(),
            },
            cfg.update_repository.as_deref(),
        );
        log::info!(
            "global ops listening on https://{} (public URL {})",
            cfg.listen,
            cfg.public_url
        );
        let handle = axum_server::Handle::new();
        let h = handle.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            h.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
        });
        // Connection limits and timeouts as on the nodes' admin page.
        appliance_certs::server::serve(
            listener,
            tls,
            app,
            appliance_certs::server::Limits::for_this_process(),
            handle,
        )
        .await?;
        Ok::<_, anyhow::Error>(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_text_cannot_drive_the_terminal() {
        assert_eq!(printable("ok"), "ok");
        assert_eq!(printable("\u{1b}[2J\nfake row"), "\\u{1b}[2J\\nfake row");
        assert_eq!(csv_field(&printable("a,b\nc")), "\"a,b\\nc\"");
    }
}
