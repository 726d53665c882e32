//! The supervisor's config file: TOML, every key known, every value
//! checked before anything starts. A bad file gives one line naming the
//! file, the key and what is wrong (exit code 2).
//!
//! Relative paths are taken relative to the config file's directory, so
//! `examples/dev.toml` works from any working directory.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use appliance_monitor::{AlertConfig, HwProfile, profile};
use appliance_services::{CheckKind, Recipe};
use serde::Deserialize;

/// Where `appliance` looks for its config when not told otherwise.
pub const DEFAULT_PATH: &str = "/etc/appliance/appliance.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node: NodeConfig,
    #[serde(default)]
    pub monitor: MonitorConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub control: ControlConfig,
    pub bbb: Option<BbbConfig>,
    /// The BBB API gateway for member organisations; off without a
    /// `listen` address.
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub services: ServicesConfig,
    #[serde(default)]
    pub usage: UsageConfig,
    #[serde(default)]
    pub hardware: HardwareConfig,
    #[serde(default)]
    pub alerts: AlertConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Signed updates of the supervisor; off without `[update] root`.
    #[serde(default)]
    pub update: UpdateConfig,
    /// The file this was read from (not a key).
    #[serde(skip)]
    pub path: PathBuf,
    /// The hardware profiles found in `hardware.profiles_dir` (not a key).
    #[serde(skip)]
    pub profiles: Vec<HwProfile>,
    /// The recipe named by `services.recipe`, loaded and checked (not a key).
    #[serde(skip)]
    pub recipe: Option<Recipe>,
}

/// Usage reports to global ops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// How often a report is made; ops's request (5 minutes) when unset.
    #[serde(with = "opt_duration")]
    pub report_interval: Option<Duration>,
    /// The longest time between two polls still charged; longer is a gap.
    /// Three BBB poll intervals when unset.
    #[serde(with = "opt_duration")]
    pub max_gap: Option<Duration>,
    /// Reports kept while ops is unreachable before old ones are merged
    /// (8640: 30 days of 5-minute reports).
    pub max_reports: usize,
    /// First and longest wait between delivery attempts.
    #[serde(with = "appliance_monitor::serde_duration")]
    pub retry_min: Duration,
    #[serde(with = "appliance_monitor::serde_duration")]
    pub retry_max: Duration,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            report_interval: None,
            max_gap: None,
            max_reports: 8640,
            retry_min: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
        }
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?} ({e}); write e.g. \"1s\", \"5m\"")))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// The TUF root.json this node trusts first (shipped with the image).
    /// Updates are off while unset.
    pub root: Option<PathBuf>,
    /// The repository's base URL (holding `metadata/` and `targets/`);
    /// ops's `/updates/` once enrolled when unset.
    pub repository: Option<String>,
    pub channel: String,
    /// How often to look for a release; a random tenth is added or taken
    /// away each time so that a fleet does not ask at once.
    #[serde(with = "appliance_monitor::serde_duration")]
    pub check_interval: Duration,
    /// Local time, HH:MM-HH:MM (may cross midnight).
    pub window: String,
    /// The zone `window` is read in (e.g. Europe/London).
    pub timezone: String,
    /// Download cap in bytes per second (0: none).
    pub max_bytes_per_second: u64,
    /// The longest a download may take, retries included.
    #[serde(with = "appliance_monitor::serde_duration")]
    pub download_deadline: Duration,
    /// How long a new version has to pass its health checks.
    #[serde(with = "appliance_monitor::serde_duration")]
    pub health_deadline: Duration,
    /// Installed versions; `<state_dir>/releases` when unset.
    pub releases_dir: Option<PathBuf>,
    /// OS updates (A/B root slots); the image's paths by default.
    pub os: crate::os_update::OsConfig,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            root: None,
            repository: None,
            channel: "stable".into(),
            check_interval: Duration::from_secs(4 * 3600),
            window: "02:00-05:00".into(),
            timezone: "UTC".into(),
            max_bytes_per_second: 0,
            download_deadline: Duration::from_secs(3600),
            health_deadline: Duration::from_secs(120),
            releases_dir: None,
            os: crate::os_update::OsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicesConfig {
    /// The recipe whose services the supervisor keeps healthy through
    /// systemd. Without one, no service is managed.
    pub recipe: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Shown on the console and the admin page; the hostname when unset.
    pub name: Option<String>,
    pub state_dir: PathBuf,
    /// The IANA time zone the admin page shows times in ("Europe/London");
    /// the system's when unset.
    pub timezone: Option<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            state_dir: "/var/lib/appliance".into(),
            timezone: None,
        }
    }
}

impl NodeConfig {
    /// The zone's IANA name: the configured one, else the system's, else
    /// UTC (a box whose /etc/localtime is missing or not a named zone).
    pub fn timezone_name(&self) -> String {
        if let Some(z) = &self.timezone {
            return z.clone();
        }
        jiff::tz::TimeZone::try_system()
            .ok()
            .and_then(|z| z.iana_name().map(str::to_string))
            .unwrap_or_else(|| "UTC".into())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    #[serde(with = "appliance_monitor::serde_duration")]
    pub interval: Duration,
    pub sysfs_root: PathBuf,
    pub procfs_root: PathBuf,
    /// Paths whose filesystem usage is watched. BBB keeps recordings under
    /// /var/bigbluebutton, the usual thing to fill a disk.
    pub filesystems: Vec<PathBuf>,
    /// How often the graph history is written to the state dir.
    #[serde(with = "appliance_monitor::serde_duration")]
    pub history_save_interval: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval: Duration::from_secs(1),
            sysfs_root: "/sys".into(),
            procfs_root: "/proc".into(),
            filesystems: vec!["/".into(), "/var/bigbluebutton".into()],
            history_save_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// A certificate the operator installed; both or neither. Without
    /// them a self-signed one is made in the state dir.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "0.0.0.0:8443".parse().expect("valid literal"),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The BBB API gateway (docs/operator-guide.md, "Members"): nginx sends
/// `/bigbluebutton/api` here; the gateway checks each member's secret and
/// passes the call on to `[bbb] url` signed with BBB's own secret.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Plain HTTP, so a loopback address: nginx terminates TLS.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// The local control socket; `<state_dir>/control.sock` when unset.
    pub socket: Option<PathBuf>,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BbbConfig {
    /// BBB's API base, ending in `/bigbluebutton/api`.
    pub url: String,
    /// The shared secret, or `secret_file` naming a file that holds it
    /// (what `appliance firstboot` writes); exactly one of the two.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// How often meetings are counted with getMeetings.
    #[serde(default = "default_poll", with = "appliance_monitor::serde_duration")]
    pub poll_interval: Duration,
    /// The metadata key (without `meta_`, lower case as BBB returns it)
    /// naming a meeting's member organisation.
    #[serde(default = "default_member_key")]
    pub member_key: String,
    /// bbb-web's properties file, where `appliance firstboot` replaces a
    /// default secret.
    #[serde(default = "default_properties")]
    pub properties: PathBuf,
}

fn default_poll() -> Duration {
    Duration::from_secs(30)
}

fn default_member_key() -> String {
    "member".into()
}

fn default_properties() -> PathBuf {
    "/etc/bigbluebutton/bbb-web.properties".into()
}

impl BbbConfig {
    /// The secret, read from `secret_file` when that is how it is given.
    pub fn secret(&self) -> Result<String, String> {
        match (&self.secret, &self.secret_file) {
            (Some(s), _) => Ok(s.clone()),
            (None, Some(f)) => fs::read_to_string(f)
                .map_err(|e| format!("cannot read {}: {e}", f.display()))
                .map(|t| t.lines().next().unwrap_or_default().trim().to_string()),
            (None, None) => Err("neither secret nor secret_file is set".into()),
        }
    }
}

// The secret must never reach a log line, even through `{:?}`.
impl fmt::Debug for BbbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BbbConfig")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardwareConfig {
    /// `auto` to detect from DMI, or a profile name.
    pub profile: String,
    pub profiles_dir: PathBuf,
}

impl Default for HardwareConfig {
    fn default() -> Self {
        HardwareConfig {
            profile: "auto".into(),
            profiles_dir: "/usr/share/appliance/hw-profiles".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// off, error, warn, info, debug or trace.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

/// A config problem: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub what: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.what)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.what)
        }
    }
}

impl Config {
    /// The hardware profile of this machine (by DMI, or the one the config
    /// names) and why it was chosen.
    pub fn detect_profile(&self) -> Result<(&HwProfile, profile::Detection), appliance_monitor::Error> {
        let dmi = appliance_monitor::sysfs::read_dmi(&self.monitor.sysfs_root);
        let forced = (self.hardware.profile != "auto").then_some(self.hardware.profile.as_str());
        let d = profile::detect(&self.profiles, &dmi, forced)?;
        let p = self
            .profiles
            .iter()
            .find(|p| p.name == d.profile)
            .expect("detect returns one of the profiles");
        Ok((p, d))
    }

    /// Reads, parses and validates `path`, including the filesystem facts
    /// the supervisor depends on (sensor roots readable, profiles valid).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |key: &str, what: String| ConfigError {
            file: path.to_path_buf(),
            key: key.to_string(),
            what,
        };
        let text = fs::read_to_string(path).map_err(|e| err("", format!("cannot read: {e}")))?;
        let mut cfg = Self::parse(&text).map_err(|(key, what)| err(&key, what))?;
        cfg.path = path.to_path_buf();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        cfg.resolve_paths(&base);
        cfg.validate().map_err(|(key, what)| err(&key, what))?;
        Ok(cfg)
    }

    /// Parses TOML text; errors are (key, what).
    pub fn parse(text: &str) -> Result<Config, (String, String)> {
        let de = toml::Deserializer::parse(text).map_err(|e| (location(text, e.span()), e.message().to_string()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let key = if path == "." {
                location(text, inner.span())
            } else {
                path
            };
            (key, inner.message().to_string())
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.node.state_dir);
        abs(&mut self.monitor.sysfs_root);
        abs(&mut self.monitor.procfs_root);
        self.monitor.filesystems.iter_mut().for_each(abs);
        abs(&mut self.hardware.profiles_dir);
        if let Some(p) = &mut self.admin.tls_cert {
            abs(p);
        }
        if let Some(p) = &mut self.admin.tls_key {
            abs(p);
        }
        if let Some(p) = &mut self.control.socket {
            abs(p);
        }
        if let Some(p) = &mut self.services.recipe {
            abs(p);
        }
        if let Some(p) = &mut self.update.root {
            abs(p);
        }
        if let Some(p) = &mut self.update.releases_dir {
            abs(p);
        }
        if let Some(b) = &mut self.bbb {
            if let Some(p) = &mut b.secret_file {
                abs(p);
            }
            abs(&mut b.properties);
        }
    }

    fn validate(&mut self) -> Result<(), (String, String)> {
        let e = |k: &str, w: String| Err((k.to_string(), w));
        if let Some(name) = &self.node.name {
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return e("node.name", "must be 1 to 64 printable characters".into());
            }
        }
        let iv = self.monitor.interval;
        if iv < Duration::from_millis(100) || iv > Duration::from_secs(60) {
            return e(
                "monitor.interval",
                format!("{} is outside 100ms..60s", humantime::format_duration(iv)),
            );
        }
        if self.monitor.history_save_interval < Duration::from_secs(1) {
            return e("monitor.history_save_interval", "must be at least 1s".into());
        }
        readable_dir(&self.monitor.sysfs_root).map_err(|w| ("monitor.sysfs_root".to_string(), w))?;
        readable_dir(&self.monitor.procfs_root).map_err(|w| ("monitor.procfs_root".to_string(), w))?;
        let stat = self.monitor.procfs_root.join("stat");
        if let Err(err) = fs::read_to_string(&stat) {
            return e(
                "monitor.procfs_root",
                format!("{} is not readable ({err}): not a procfs tree?", stat.display()),
            );
        }
        match (&self.admin.tls_cert, &self.admin.tls_key) {
            (Some(_), None) => {
                return e("admin.tls_key", "must be set together with admin.tls_cert".into());
            }
            (None, Some(_)) => {
                return e("admin.tls_cert", "must be set together with admin.tls_key".into());
            }
            _ => {}
        }
        if let Some(b) = &self.bbb {
            let u = b.url.trim_end_matches('/');
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return e("bbb.url", format!("{:?} must start with http:// or https://", b.url));
            }
            if !u.ends_with("/bigbluebutton/api") {
                return e("bbb.url", format!("{:?} must end with /bigbluebutton/api", b.url));
            }
            match (&b.secret, &b.secret_file) {
                (Some(_), Some(_)) => {
                    return e(
                        "bbb.secret_file",
                        "set either bbb.secret or bbb.secret_file, not both".into(),
                    );
                }
                (None, None) => return e("bbb.secret", "set bbb.secret or bbb.secret_file".into()),
                (Some(s), None) if s.trim().len() < 8 => {
                    return e("bbb.secret", "must be at least 8 characters".into());
                }
                _ => {}
            }
            if b.poll_interval < Duration::from_millis(100) {
                return e("bbb.poll_interval", "must be at least 100ms".into());
            }
        }
        if let Some(l) = self.gateway.listen {
            if self.bbb.is_none() {
                return e(
                    "gateway.listen",
                    "the gateway needs [bbb] (where to pass calls on)".into(),
                );
            }
            if !l.ip().is_loopback() {
                return e(
                    "gateway.listen",
                    format!("{l} is not a loopback address: the gateway speaks plain HTTP behind nginx"),
                );
            }
        }
        if let Some(z) = &self.node.timezone
            && let Err(err) = jiff::tz::TimeZone::get(z)
        {
            return e("node.timezone", format!("{z:?} is not a known time zone ({err})"));
        }
        if let Err(w) = appliance_update::manifest::check_channel(&self.update.channel) {
            return e("update.channel", w.to_string());
        }
        if let Err(w) = appliance_update::window::Window::parse(&self.update.window, &self.update.timezone) {
            let key = if matches!(w, appliance_update::window::WindowError::Zone(_)) {
                "update.timezone"
            } else {
                "update.window"
            };
            return e(key, w.to_string());
        }
        if self.update.check_interval < Duration::from_secs(60) {
            return e("update.check_interval", "must be at least 1m".into());
        }
        if let Some(r) = &self.update.repository
            && !(r.starts_with("https://") || r.starts_with("file://"))
        {
            return e(
                "update.repository",
                format!("{r:?} must start with https:// or file://"),
            );
        }
        if let Some(root) = &self.update.root
            && let Err(err) = fs::read(root)
        {
            return e("update.root", format!("{} is not readable: {err}", root.display()));
        }
        if self.log.level.parse::<log::LevelFilter>().is_err() {
            return e(
                "log.level",
                format!(
                    "{:?} is not one of off, error, warn, info, debug, trace",
                    self.log.level
                ),
            );
        }
        if self.usage.max_reports < 2 {
            return e("usage.max_reports", "must be at least 2".into());
        }
        if self.usage.retry_min.is_zero() || self.usage.retry_min > self.usage.retry_max {
            return e("usage.retry_min", "must be above 0 and at most usage.retry_max".into());
        }
        if self.usage.report_interval.is_some_and(|d| d < Duration::from_secs(1)) {
            return e("usage.report_interval", "must be at least 1s".into());
        }
        self.alerts.validate()?;
        if let Some(r) = &self.services.recipe {
            let recipe = Recipe::load(r).map_err(|err| ("services.recipe".to_string(), err.to_string()))?;
            if recipe
                .services
                .iter()
                .any(|s| s.checks.iter().any(|c| c.kind == CheckKind::Bbb))
                && self.bbb.is_none()
            {
                return e(
                    "services.recipe",
                    format!("{} has bbb checks but the config has no [bbb] section", r.display()),
                );
            }
            self.recipe = Some(recipe);
        }
        self.profiles = profile::load_dir(&self.hardware.profiles_dir)
            .map_err(|err| ("hardware.profiles_dir".to_string(), err.to_string()))?;
        if self.hardware.profile != "auto" && !self.profiles.iter().any(|p| p.name == self.hardware.profile) {
            let names: Vec<&str> = self.profiles.iter().map(|p| p.name.as_str()).collect();
            return e(
                "hardware.profile",
                format!("{:?} is not one of auto, {}", self.hardware.profile, names.join(", ")),
            );
        }
        Ok(())
    }

    pub fn node_name(&self) -> String {
        self.node.name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "appliance".into())
        })
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.update
            .releases_dir
            .clone()
            .unwrap_or_else(|| self.node.state_dir.join("releases"))
    }

    pub fn control_socket(&self) -> PathBuf {
        self.control
            .socket
            .clone()
            .unwrap_or_else(|| self.node.state_dir.join("control.sock"))
    }

    pub fn report_settings(&self) -> crate::reports::Settings {
        let poll = self
            .bbb
            .as_ref()
            .map(|b| b.poll_interval)
            .unwrap_or(Duration::from_secs(30));
        crate::reports::Settings {
            report_interval: self.usage.report_interval,
            max_gap: self.usage.max_gap.unwrap_or(poll * 3),
            max_reports: self.usage.max_reports,
            retry_min: self.usage.retry_min,
            retry_max: self.usage.retry_max,
        }
    }

    pub fn log_level(&self) -> log::LevelFilter {
        self.log.level.parse().unwrap_or(log::LevelFilter::Info)
    }
}

fn readable_dir(p: &Path) -> Result<(), String> {
    match fs::read_dir(p) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{} is not a readable directory: {e}", p.display())),
    }
}

/// "line N" for a byte span, for syntax errors that have no key yet.
fn location(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> (String, String) {
        Config::parse(text).unwrap_err()
    }

    #[test]
    fn defaults_are_complete() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.monitor.interval, Duration::from_secs(1));
        assert_eq!(c.admin.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.monitor.sysfs_root, PathBuf::from("/sys"));
        assert!(c.bbb.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[monitor]\nintervall = \"1s\"\n",
                "monitor.intervall",
                "unknown field `intervall`",
            ),
            ("[monitor]\ninterval = 5\n", "monitor.interval", "invalid type"),
            (
                "[monitor]\ninterval = \"fast\"\n",
                "monitor.interval",
                "invalid duration \"fast\"",
            ),
            (
                "[admin]\nlisten = \"localhost\"\n",
                "admin.listen",
                "invalid socket address",
            ),
            (
                "[alerts.cpu]\nwarn = \"high\"\nfor = \"1s\"\n",
                "alerts.cpu.warn",
                "invalid type",
            ),
            ("colour = 1\n", "colour", "unknown field `colour`"),
            ("[monitor\n", "line 1", ""),
        ];
        for (text, key, what) in cases {
            let (k, w) = parse_err(text);
            assert_eq!(k, key, "{text:?}: {w}");
            assert!(w.contains(what), "{text:?}: {w:?} should contain {what:?}");
        }
    }

    #[test]
    fn bbb_secret_is_not_in_debug_output() {
        let c = Config::parse("[bbb]\nurl = \"http://x/bigbluebutton/api\"\nsecret = \"s3cr3t-value\"\n").unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }
}
