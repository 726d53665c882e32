//! `bbb-standin`: serves the BBB API stand-in (see the library docs).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use appliance_bbb_standin::{Script, StandIn};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "bbb-standin",
    about = "Stand-in for BigBlueButton's API, for tests (BBB needs Ubuntu's BBB repository)"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: String,
    /// The shared secret.
    #[arg(long, conflicts_with = "secret_file")]
    secret: Option<String>,
    /// A file holding the shared secret (first line).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// A TOML timeline of meetings to play.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Play the script this many times faster than written.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Run a virtual clock starting at these unix seconds instead of
    /// playing the script in real time; tests move it with
    /// `POST /standin/advance?to=UNIX_SECONDS`.
    #[arg(long)]
    virtual_clock: Option<i64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let secret = match (cli.secret, cli.secret_file) {
        (Some(s), _) => s,
        (None, Some(f)) => std::fs::read_to_string(&f)
            .with_context(|| format!("reading {}", f.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        (None, None) => bail!("give --secret or --secret-file"),
    };
    if secret.is_empty() {
        bail!("the secret is empty");
    }
    let s = StandIn::new(secret);
    let script = match cli.script {
        Some(path) => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            Some(toml::from_str::<Script>(&text).with_context(|| format!("parsing {}", path.display()))?)
        }
        None => None,
    };
    match (cli.virtual_clock, script) {
        (Some(start), script) => s.virtual_clock(start, script.unwrap_or(Script { event: vec![] })),
        (None, Some(script)) => {
            let player = s.clone();
            tokio::spawn(async move { player.play(script, cli.speed).await });
        }
        (None, None) => {}
    }
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    eprintln!(
        "bbb-standin: BBB API stand-in on http://{}/bigbluebutton/api",
        listener.local_addr()?
    );
    axum::serve(listener, s.router()).await?;
    Ok(())
}
